/* hyperv_features: polyvisor's hyperv personality checked from the inside (docs/abi/hyperv.md).
 *
 * The configuration is read from CPUID (0x40000003 privileges and features, 0x40000004
 * recommendations and spinlock retries, 0x40000005 VPs) and every expectation is derived from
 * it, so the same program checks any [hyperv] configuration: MSR gating (#GP when not
 * advertised, #GP on writes to read-only MSRs), TIME_REF_COUNT and the reference TSC page,
 * the hypercall page overlay (contents, #GP on writes, moved, disabled, RAM underneath back,
 * GUEST_OS_ID rules, the locked bit), a table of hypercalls with every error the interface
 * defines (reserved bits, header and rep shape, alignment, page crossing, GPAs outside RAM,
 * per-call parameters) and their privilege/recommendation gates, rep continuation, synthetic
 * IPIs to this and another vCPU, the debug channel, and CPL 3 callers. Built as a 64-bit image
 * and as a 32-bit PVH image (EDX:EAX, EBX:ECX, EDI:ESI).
 *
 * One line per check ("ok" or "FAIL"; details only for failures); then "count <call> <n>"
 * lines with the calls that reached each handler (the host compares them with its counters),
 * "decoder-refusals <n>", "unknown-codes <n>", "disabled-refusals <n>", "denied-calls <n>",
 * and the totals. Exit status 0 only if every check passed.
 *
 * Cmdline (what CPUID cannot say):
 *   expect=disabled       [hypervisor] hypercalls_enabled = false: every call is #UD
 *   deny=0xCODE           that call is in [hypervisor] deny: ACCESS_DENIED
 *   debug_in=TEXT         the bytes the host's debug_input holds (absent: none)
 *   cpl3_vmcall=F, cpl3_vmmcall=F   what a CPL-3 VMCALL/VMMCALL does on this host
 *                         (host_check): trap (the VMM sees it: the interface's #UD),
 *                         host (the host kernel answers: result -1), ud, gp
 *   end=crash             finish with a crash report (CRASH_P0..P4 = 0x11..0x55, CRASH_CTL)
 *   end=reset             finish by writing 1 to HV_X64_MSR_RESET
 */
#include "hyperv_guest.h"

/* The vCPUs the VM was given: `vcpus=` from the host, else those started so far. Counting
 * started vCPUs alone races with the second one coming up. */
static unsigned configured_vcpus(void)
{
    return (unsigned)cmdline_get_u64("vcpus", vcpus_online());
}

#define IPI_BASE 0x40
#define NO_RAM_GPA 0xf0000000ull    /* below 4 GiB, not RAM, not the APIC */
#define HIGH_GPA 0x100003000ull     /* above 4 GiB: the high halves of the 32-bit pairs */
#define HOLE_PAGE_GPA 0xe0000000ull /* a hole where the hypercall page can still be shown */

static u8 page_a[4096] __aligned(4096);
static u8 page_b[4096] __aligned(4096);
static struct tsc_page tsc_page_mem __aligned(4096);
static u8 in_buf[8192] __aligned(4096);
static u8 out_buf[8192] __aligned(4096);

static bool disabled;         /* expect=disabled */
static u32 denied_code = ~0u; /* deny=0xCODE */
static bool page_on;          /* the hypercall page is enabled */
static u8 page_insn;          /* 0xc1 (VMCALL) or 0xd9 (VMMCALL), what the page holds */

/* What the guest expects the host to have counted. */
static u32 decoder_refusals, unknown_codes, disabled_refusals, denied_calls;
static const u16 counted_codes[] = {
    HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST,
    HVCALL_NOTIFY_LONG_SPIN_WAIT,       HVCALL_SEND_IPI,
    HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX, HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    HVCALL_SEND_IPI_EX,                 HVCALL_POST_MESSAGE,
    HVCALL_SIGNAL_EVENT,                HVCALL_POST_DEBUG_DATA,
    HVCALL_RETRIEVE_DEBUG_DATA,         HVCALL_RESET_DEBUG_SESSION,
    HV_EXT_CALL_QUERY_CAPABILITIES,
};
static const char *const counted_names[] = {
    "HvCallFlushVirtualAddressSpace",   "HvCallFlushVirtualAddressList",
    "HvCallNotifyLongSpinWait",         "HvCallSendSyntheticClusterIpi",
    "HvCallFlushVirtualAddressSpaceEx", "HvCallFlushVirtualAddressListEx",
    "HvCallSendSyntheticClusterIpiEx",  "HvCallPostMessage",
    "HvCallSignalEvent",                "HvCallPostDebugData",
    "HvCallRetrieveDebugData",          "HvCallResetDebugSession",
    "HvExtCallQueryCapabilities",
};
static u32 handled[ARRAY_SIZE(counted_codes)];

static int code_index(u16 code)
{
    for (unsigned i = 0; i < ARRAY_SIZE(counted_codes); i++)
        if (counted_codes[i] == code)
            return (int)i;
    return -1;
}

/* Books a call that reached the VMM at CPL 0: which counter the host bumps. `dispatches` is
 * how many times the handler runs (more than 1 for a rep call that continues). */
static void book(u64 control, u32 dispatches)
{
    u16 code = (u16)control;
    int i = code_index(code);
    if (disabled)
        disabled_refusals++;
    else if (!page_on)
        decoder_refusals++;
    else if (i < 0)
        unknown_codes++;
    else if (code == denied_code)
        denied_calls++; /* counted as denied, not as a call */
    else
        handled[i] += dispatches;
}

/* ------------------------------------------------------------------- expectations */
#define EXP_UD (-1)

static void expect_answer(const char *what, struct answer a, int want, int want_reps)
{
    if (want == EXP_UD) {
        check(a.vec == VEC_UD, "%s: #UD|got %s, value 0x%llx", what, vec_name(a.vec), a.value);
        return;
    }
    bool ok = a.vec == 0 && status_of(a) == (u16)want && a.others_kept;
    if (want_reps >= 0)
        ok = ok && reps_of(a) == (u32)want_reps;
    check(ok, "%s|status 0x%x reps %u, want 0x%x reps %d; %s; other registers %s", what,
          status_of(a), reps_of(a), want, want_reps, vec_name(a.vec),
          a.others_kept ? "kept" : "CHANGED");
}

/* ------------------------------------------------------------------- the call table */
typedef bool (*gate_fn)(void);
static bool g_none(void) { return true; }
static bool g_flush(void) { return recommends(R_REMOTE_FLUSH); }
static bool g_flush_ex(void) { return g_flush() && recommends(R_EX_PROCESSOR_MASKS); }
static bool g_ipi(void) { return recommends(R_CLUSTER_IPI); }
static bool g_ipi_ex(void) { return g_ipi() && recommends(R_EX_PROCESSOR_MASKS); }
static bool g_spin(void) { return cfg.spin_retries != 0 && cfg.spin_retries != 0xffffffffu; }
static bool g_post(void) { return has_priv(P_POST_MESSAGES); }
static bool g_signal(void) { return has_priv(P_SIGNAL_EVENTS); }
static bool g_debug(void) { return has_priv(P_DEBUGGING); }
static bool g_ext(void) { return has_priv(P_EXTENDED_HYPERCALLS); }

static u64 *in64(void) { return (u64 *)in_buf; }

/* Input blocks (in_buf is zeroed before each). */
static void s_none(void) {}
static void s_mask_vp0(void) { in64()[2] = 1; }
static void s_flags(u64 f) { in64()[1] = f; }
static void s_all_cpus(void) { s_flags(HV_FLUSH_ALL_PROCESSORS); }
static void s_non_global(void) { s_flags(HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY); }
static void s_ext_range(void) { s_flags(HV_FLUSH_USE_EXTENDED_RANGE_FORMAT); }
static void s_list_two(void) { in64()[3] = 0x400000; in64()[4] = 0x401000; }
static void s_set_all(void) { in64()[2] = HV_GENERIC_SET_ALL; }
static void s_set_bank0_vp0(void) { in64()[3] = 1; in64()[4] = 1; }
static void s_set_bank_no_hdr(void) { in64()[3] = 1; }
static void s_set_format2(void) { in64()[2] = 2; }
static void s_ipi(u32 vector, u8 vtl, u64 mask)
{
    *(u32 *)in_buf = vector;
    in_buf[4] = vtl;
    in64()[1] = mask;
}
static void s_ipi_v0(void) {}
static void s_ipi_v0f(void) { s_ipi(0x0f, 0, 0); }
static void s_ipi_v100(void) { s_ipi(0x100, 0, 0); }
static void s_ipi_vtl1(void) { s_ipi(IPI_BASE + 15, 1, 0); }
static void s_ipi_empty(void) { s_ipi(IPI_BASE + 15, 0, 0); }
static void s_ipi_padding(void) { s_ipi(IPI_BASE + 15, 0, 0); in_buf[5] = in_buf[6] = in_buf[7] = 0xa5; }
static void s_ipi_absent_vp(void) { s_ipi(IPI_BASE + 15, 0, 1ull << 40); }
static void s_ipiex_all_v0(void) { in64()[1] = HV_GENERIC_SET_ALL; }
static void s_ipiex_bank_no_hdr(void) { in64()[2] = 1; }
static void s_ipiex_format2(void) { in64()[1] = 2; }
static void s_debug_count(u32 n) { *(u32 *)in_buf = n; }
static void s_debug_4089(void) { s_debug_count(4089); }
static void s_debug_16(void) { s_debug_count(16); }
static void s_debug_64(void) { s_debug_count(64); }
static void s_debug_16_at_end(void) { *(u32 *)(in_buf + 4096 - 8) = 16; }

enum base { B_NONE, B_IN, B_OUT, B_ABS };
#define NONE B_NONE, 0
#define IN(o) B_IN, (o)
#define OUT(o) B_OUT, (o)
#define ABS(a) B_ABS, (a)

struct row {
    const char *name;
    u64 control;
    void (*setup)(void);
    enum base in_base;
    u64 in_off;
    enum base out_base;
    u64 out_off;
    gate_fn gate;
    int want;            /* status when the gate is open, or EXP_UD */
    int (*want_fn)(void); /* overrides `want` when the answer depends on a feature */
    int reps;            /* reps completed, -1 = not a rep call */
};

static int w_fast_flush(void) { return has_feature(F_XMM_INPUT) ? HV_STATUS_SUCCESS : EXP_UD; }
static int w_ext_range(void)
{
    return has_feature(F_EXT_GVA_RANGES) ? HV_STATUS_SUCCESS : HV_STATUS_INVALID_PARAMETER;
}

#define FAST HV_HYPERCALL_FAST_BIT
#define HDR(n) HV_HYPERCALL_VARHEAD(n)
#define REPS(n) HV_HYPERCALL_REP_COUNT(n)
#define START(n) HV_HYPERCALL_REP_START(n)
#define S_OK HV_STATUS_SUCCESS
#define S_CODE HV_STATUS_INVALID_HYPERCALL_CODE
#define S_INPUT HV_STATUS_INVALID_HYPERCALL_INPUT
#define S_ALIGN HV_STATUS_INVALID_ALIGNMENT
#define S_PARAM HV_STATUS_INVALID_PARAMETER

static const struct row rows[] = {
    /* Unknown codes: INVALID_HYPERCALL_CODE whatever the other bits hold. */
    {"unknown code 0xbeef", 0xbeef, s_none, NONE, NONE, g_none, S_CODE, 0, -1},
    {"unknown code 0xbeef, fast, reserved bits", 0xbeef | FAST | 1ull << 63, s_none, NONE, NONE,
     g_none, S_CODE, 0, -1},
    {"code 0x1 not provided", 0x0001, s_none, IN(0), NONE, g_none,
     S_CODE, 0, -1},
    {"code 0x46 not provided", 0x0046, s_none, NONE, OUT(0), g_none, S_CODE,
     0, -1},
    {"code 0x8002 not provided", 0x8002, s_none, NONE, OUT(0), g_none, S_CODE, 0, -1},

    /* HvCallFlushSpace: simple, {AddressSpace, Flags, ProcessorMask}. */
    {"FlushSpace VP 0", 0x0002, s_mask_vp0, IN(0), NONE, g_flush, S_OK, 0, -1},
    {"FlushSpace all processors", 0x0002, s_all_cpus, IN(0), NONE, g_flush, S_OK,
     0, -1},
    {"FlushSpace non-global only", 0x0002, s_non_global, IN(0), NONE, g_flush,
     S_OK, 0, -1},
    {"FlushSpace flag 3: invalid", 0x0002, s_ext_range, IN(0), NONE,
     g_flush, S_PARAM, 0, -1},
    {"FlushSpace reserved bit 27", 0x0002 | 1ull << 27, s_mask_vp0, IN(0), NONE,
     g_flush, S_INPUT, 0, -1},
    {"FlushSpace nested bit 31", 0x0002 | 1ull << 31, s_mask_vp0, IN(0), NONE,
     g_flush, S_INPUT, 0, -1},
    {"FlushSpace reserved bit 44", 0x0002 | 1ull << 44, s_mask_vp0, IN(0), NONE,
     g_flush, S_INPUT, 0, -1},
    {"FlushSpace reserved bit 63", 0x0002 | 1ull << 63, s_mask_vp0, IN(0), NONE,
     g_flush, S_INPUT, 0, -1},
    {"FlushSpace var header", 0x0002 | HDR(1), s_mask_vp0, IN(0),
     NONE, g_flush, S_INPUT, 0, -1},
    {"FlushSpace rep count", 0x0002 | REPS(1), s_mask_vp0, IN(0), NONE,
     g_flush, S_INPUT, 0, -1},
    {"FlushSpace rep start", 0x0002 | START(1), s_mask_vp0, IN(0), NONE,
     g_flush, S_INPUT, 0, -1},
    {"FlushSpace misaligned", 0x0002, s_none, IN(4), NONE, g_flush,
     S_ALIGN, 0, -1},
    {"FlushSpace crosses page", 0x0002, s_none, IN(4096 - 8), NONE,
     g_flush, S_ALIGN, 0, -1},
    {"FlushSpace in outside RAM", 0x0002, s_none, ABS(NO_RAM_GPA), NONE,
     g_flush, S_ALIGN, 0, -1},
    {"FlushSpace in above 4 GiB", 0x0002, s_none, ABS(HIGH_GPA), NONE, g_flush,
     S_ALIGN, 0, -1},
    {"fast FlushSpace (XMM)", 0x0002 | FAST, s_none, NONE, NONE, g_flush, 0,
     w_fast_flush, -1},

    /* HvCallFlushList: rep, one GVA range per rep after the 24-byte header. */
    {"FlushList 1 rep", 0x0003 | REPS(1), s_list_two, IN(0), NONE, g_flush, S_OK,
     0, 1},
    {"FlushList reps 1..2 (start 1)", 0x0003 | REPS(2) | START(1), s_list_two,
     IN(0), NONE, g_flush, S_OK, 0, 2},
    {"FlushList no rep count", 0x0003, s_list_two, IN(0), NONE, g_flush,
     S_INPUT, 0, -1},
    {"FlushList start index = count", 0x0003 | REPS(2) | START(2), s_list_two,
     IN(0), NONE, g_flush, S_INPUT, 0, -1},
    {"FlushList var header", 0x0003 | REPS(1) | HDR(1), s_list_two,
     IN(0), NONE, g_flush, S_INPUT, 0, -1},
    {"FlushList non-global: invalid", 0x0003 | REPS(1), s_non_global,
     IN(0), NONE, g_flush, S_PARAM, 0, -1},
    {"FlushList extended range format", 0x0003 | REPS(1), s_ext_range, IN(0),
     NONE, g_flush, 0, w_ext_range, -1},
    {"FlushList 510 ranges cross page", 0x0003 | REPS(510), s_none,
     IN(0), NONE, g_flush, S_ALIGN, 0, -1},
    {"FlushList 1000 ranges: no page fits", 0x0003 | REPS(1000), s_none,
     IN(0), NONE, g_flush, S_ALIGN, 0, -1},
    {"FlushList in outside RAM", 0x0003 | REPS(1), s_none, ABS(NO_RAM_GPA),
     NONE, g_flush, S_ALIGN, 0, -1},

    /* HvCallNotifyLongSpinWait: advisory, always SUCCESS; the input is not read. */
    {"NotifyLongSpinWait fast", 0x0008 | FAST, s_none, ABS(1), NONE, g_spin, S_OK, 0, -1},
    {"NotifyLongSpinWait slow, no input", 0x0008, s_none, NONE, NONE, g_spin, S_OK, 0, -1},
    {"NotifyLongSpinWait rep count", 0x0008 | REPS(1), s_none, NONE, NONE, g_spin,
     S_INPUT, 0, -1},

    /* HvCallIpi: {Vector, TargetVtl, pad, ProcessorMask}. */
    {"Ipi vector 0", 0x000b, s_ipi_v0, IN(0), NONE, g_ipi, S_INPUT, 0, -1},
    {"Ipi vector 0xf", 0x000b, s_ipi_v0f, IN(0), NONE, g_ipi, S_INPUT, 0, -1},
    {"Ipi vector 0x100", 0x000b, s_ipi_v100, IN(0), NONE, g_ipi, S_INPUT, 0,
     -1},
    {"Ipi target VTL 1", 0x000b, s_ipi_vtl1, IN(0), NONE, g_ipi, S_INPUT, 0,
     -1},
    {"Ipi empty mask", 0x000b, s_ipi_empty, IN(0), NONE, g_ipi, S_OK, 0, -1},
    {"Ipi padding ignored", 0x000b, s_ipi_padding, IN(0), NONE, g_ipi, S_OK,
     0, -1},
    {"Ipi to an absent VP", 0x000b, s_ipi_absent_vp, IN(0), NONE, g_ipi,
     S_OK, 0, -1},
    {"Ipi misaligned", 0x000b, s_none, IN(4), NONE, g_ipi, S_ALIGN, 0,
     -1},
    {"Ipi var header", 0x000b | HDR(1), s_ipi_empty, IN(0), NONE,
     g_ipi, S_INPUT, 0, -1},
    {"Ipi rep count", 0x000b | REPS(1), s_ipi_empty, IN(0), NONE,
     g_ipi, S_INPUT, 0, -1},

    /* HvCallFlushSpaceEx: {AddressSpace, Flags, HV_VP_SET}. */
    {"FlushSpaceEx empty sparse set", 0x0013, s_none, IN(0), NONE, g_flush_ex,
     S_OK, 0, -1},
    {"FlushSpaceEx all VPs", 0x0013, s_set_all, IN(0), NONE, g_flush_ex, S_OK, 0,
     -1},
    {"FlushSpaceEx bank 0 = VP 0", 0x0013 | HDR(1), s_set_bank0_vp0, IN(0), NONE,
     g_flush_ex, S_OK, 0, -1},
    {"FlushSpaceEx bank, no header size", 0x0013, s_set_bank_no_hdr, IN(0),
     NONE, g_flush_ex, S_INPUT, 0, -1},
    {"FlushSpaceEx header size, no bank", 0x0013 | HDR(1), s_none, IN(0), NONE,
     g_flush_ex, S_INPUT, 0, -1},
    {"FlushSpaceEx set format 2", 0x0013, s_set_format2, IN(0), NONE, g_flush_ex,
     S_PARAM, 0, -1},
    {"FlushSpaceEx crosses page", 0x0013, s_none, IN(4096 - 24), NONE,
     g_flush_ex, S_ALIGN, 0, -1},
    {"fast FlushSpaceEx (XMM)", 0x0013 | FAST, s_none, NONE, NONE,
     g_flush_ex, 0, w_fast_flush, -1},

    /* HvCallFlushListEx: HV_VP_SET, then the ranges. */
    {"FlushListEx all VPs, 1 rep", 0x0014 | REPS(1), s_set_all, IN(0), NONE,
     g_flush_ex, S_OK, 0, 1},
    {"FlushListEx no rep count", 0x0014, s_set_all, IN(0), NONE,
     g_flush_ex, S_INPUT, 0, -1},

    /* HvCallIpiEx: {Vector, TargetVtl, pad, HV_VP_SET}. */
    {"IpiEx empty sparse set", 0x0015, s_none, IN(0), NONE, g_ipi_ex, S_OK,
     0, -1},
    {"IpiEx all VPs, vector 0", 0x0015, s_ipiex_all_v0, IN(0), NONE,
     g_ipi_ex, S_INPUT, 0, -1},
    {"IpiEx bank, no header size", 0x0015, s_ipiex_bank_no_hdr, IN(0),
     NONE, g_ipi_ex, S_INPUT, 0, -1},
    {"IpiEx set format 2", 0x0015, s_ipiex_format2, IN(0), NONE, g_ipi_ex,
     S_PARAM, 0, -1},
    {"IpiEx rep count", 0x0015 | REPS(1), s_none, IN(0), NONE,
     g_ipi_ex, S_INPUT, 0, -1},
    {"fast IpiEx (XMM), empty set", 0x0015 | FAST, s_none, NONE, NONE,
     g_ipi_ex, 0, w_fast_flush, -1},

    /* HvCallPostMessage / HvCallSignalEvent: no SynIC. */
    {"PostMessage: no SynIC", 0x005c, s_none, IN(0), NONE, g_post, S_INPUT, 0, -1},
    {"PostMessage misaligned", 0x005c, s_none, IN(4), NONE, g_post, S_ALIGN, 0, -1},
    {"PostMessage block crosses page", 0x005c, s_none, IN(4096 - 128), NONE, g_post,
     S_ALIGN, 0, -1},
    {"PostMessage in above 4 GiB", 0x005c, s_none, ABS(HIGH_GPA), NONE, g_post, S_ALIGN, 0,
     -1},
    {"PostMessage rep count", 0x005c | REPS(1), s_none, IN(0), NONE, g_post, S_INPUT, 0,
     -1},
    {"SignalEvent: no SynIC", 0x005d, s_none, IN(0), NONE, g_signal, S_INPUT, 0, -1},
    {"SignalEvent misaligned", 0x005d, s_none, IN(4), NONE, g_signal, S_ALIGN, 0, -1},
    {"SignalEvent fast: no SynIC", 0x005d | FAST, s_none, NONE, NONE, g_signal, S_INPUT, 0, -1},

    /* The debug calls' error answers (the channel itself is checked on its own). */
    {"PostDebugData count 4089", 0x0069, s_debug_4089, IN(0), OUT(0), g_debug, S_PARAM, 0, -1},
    {"PostDebugData fast", 0x0069 | FAST, s_none, NONE, NONE, g_debug, S_PARAM, 0, -1},
    {"PostDebugData out overlaps in", 0x0069, s_debug_16, IN(0), IN(8), g_debug,
     S_PARAM, 0, -1},
    {"PostDebugData data crosses page", 0x0069, s_debug_16_at_end, IN(4096 - 8), OUT(0), g_debug,
     S_ALIGN, 0, -1},
    {"PostDebugData out misaligned", 0x0069, s_none, IN(0), OUT(2), g_debug, S_ALIGN, 0, -1},
    {"RetrieveDebugData count 4089", 0x006a, s_debug_4089, IN(0), OUT(0), g_debug, S_PARAM, 0,
     -1},
    {"RetrieveDebugData fast", 0x006a | FAST, s_none, NONE, NONE, g_debug, S_PARAM, 0, -1},
    {"RetrieveDebugData out overlaps in", 0x006a, s_debug_64, IN(0), IN(8), g_debug,
     S_PARAM, 0, -1},
    {"RetrieveDebugData out crosses page", 0x006a, s_debug_64, IN(0), OUT(4096 - 16),
     g_debug, S_ALIGN, 0, -1},
    {"RetrieveDebugData rep count", 0x006a | REPS(1), s_debug_64, IN(0), OUT(0), g_debug,
     S_INPUT, 0, -1},
    {"ResetDebugSession", 0x006b, s_none, NONE, OUT(0), g_debug, S_OK, 0, -1},
    {"ResetDebugSession fast", 0x006b | FAST, s_none, NONE, NONE, g_debug, S_OK, 0, -1},
    {"ResetDebugSession out misaligned", 0x006b, s_none, NONE, OUT(4), g_debug, S_ALIGN, 0,
     -1},

    /* ExtQueryCaps: output u64. */
    {"ExtQueryCaps", 0x8001, s_none, NONE, OUT(0), g_ext, S_OK, 0, -1},
    {"ExtQueryCaps fast", 0x8001 | FAST, s_none, NONE, NONE, g_ext, S_PARAM, 0,
     -1},
    {"ExtQueryCaps out misaligned", 0x8001, s_none, NONE, OUT(4), g_ext,
     S_ALIGN, 0, -1},
    {"ExtQueryCaps out outside RAM", 0x8001, s_none, NONE, ABS(NO_RAM_GPA),
     g_ext, S_ALIGN, 0, -1},
    {"ExtQueryCaps out above 4 GiB", 0x8001, s_none, NONE, ABS(HIGH_GPA), g_ext,
     S_ALIGN, 0, -1},
    {"ExtQueryCaps reserved bit 63", 0x8001 | 1ull << 63, s_none, NONE, OUT(0),
     g_ext, S_INPUT, 0, -1},
    {"ExtQueryCaps reserved bit 30", 0x8001 | 1ull << 30, s_none, NONE, OUT(0),
     g_ext, S_INPUT, 0, -1},
    {"ExtQueryCaps rep count", 0x8001 | REPS(1), s_none, NONE, OUT(0),
     g_ext, S_INPUT, 0, -1},
    {"ExtQueryCaps var header", 0x8001 | HDR(1), s_none, NONE, OUT(0),
     g_ext, S_INPUT, 0, -1},
};

static u64 resolve(enum base b, u64 off)
{
    switch (b) {
    case B_IN:
        return gpa(in_buf) + off;
    case B_OUT:
        return gpa(out_buf) + off;
    case B_ABS:
        return off;
    default:
        return 0;
    }
}

/* Zero XMM0..XMM5 before fast calls so an XMM block reads as zeros. */
static const u64 zero_xmm[12];

/* The expected answer of `control` given the gate, the deny list and the switch. */
static int gated_want(u64 control, bool gate_open, int open_want)
{
    if (disabled || !page_on)
        return EXP_UD;
    if (code_index((u16)control) < 0)
        return HV_STATUS_INVALID_HYPERCALL_CODE;
    if ((u16)control == denied_code)
        return HV_STATUS_ACCESS_DENIED;
    return gate_open ? open_want : HV_STATUS_ACCESS_DENIED;
}

static void run_table(void)
{
    for (unsigned i = 0; i < ARRAY_SIZE(rows); i++) {
        const struct row *r = &rows[i];
        /* Only the bytes a call can read or write (guest memory operations are slow on some
         * hosts); the page-crossing rows use the end of the first page. */
        memset(in_buf, 0, 64);
        memset(in_buf + 4096 - 128, 0, 128);
        memset(out_buf, 0xff, 32);
        memset(out_buf + 4096 - 16, 0xff, 16);
        r->setup();
        if (has_feature(F_XMM_INPUT))
            set_xmm(zero_xmm);
        bool open = r->gate();
        int open_want = r->want_fn ? r->want_fn() : r->want;
        int want = gated_want(r->control, open, open_want);
        int reps = want == HV_STATUS_SUCCESS ? r->reps : (want == EXP_UD ? -1 : 0);
        struct answer a =
            hv_call(r->control, resolve(r->in_base, r->in_off), resolve(r->out_base, r->out_off));
        book(r->control, 1);
        char what[160];
        gsnprintf(what, sizeof what, "%s%s", r->name, open ? "" : ": gated");
        expect_answer(what, a, want, reps);
        if (want != HV_STATUS_SUCCESS)
            continue;
        /* What successful calls wrote. */
        u16 code = (u16)r->control;
        if (code == HV_EXT_CALL_QUERY_CAPABILITIES)
            check(*(u64 *)out_buf == 0, "HvExtCallQueryCapabilities: no extended call|0x%llx",
                  *(u64 *)out_buf);
        if (code == HVCALL_RESET_DEBUG_SESSION && !(r->control & FAST)) {
            bool zero = true;
            for (unsigned b = 0; b < 24; b++)
                zero = zero && out_buf[b] == 0;
            check(zero && out_buf[24] == 0xff,
                  "ResetDebugSession: 24 zero bytes");
        }
        if (!(r->control & FAST) && r->out_base == B_NONE)
            check(out_buf[0] == 0xff, "%s: no output", r->name);
    }
}

/* ------------------------------------------------------------------- CPUID */
static void check_cpuid(void)
{
    u32 r[4];
    char sig[13];
    cpuid(1, 0, r);
    check((r[2] >> 31) & 1, "CPUID.1:ECX[31] hypervisor present");
    cpuid(0x40000000, 0, r);
    memcpy(sig, &r[1], 12);
    sig[12] = 0;
    check(strcmp(sig, "Microsoft Hv") == 0, "vendor Microsoft Hv|\"%s\"", sig);
    check(r[0] == 0x40000006, "max leaf 0x40000006|0x%x",
          r[0]);
    cpuid(0x40000001, 0, r);
    check(r[0] == 0x31237648 && r[1] == 0 && r[2] == 0 && r[3] == 0, "interface Hv#1|0x%x",
          r[0]);
    cpuid(0x40000002, 0, r);
    info("version: build 0x%x, %u.%u", r[0], r[1] >> 16, r[1] & 0xffff);
    check(r[0] != 0 && r[2] == 0 && r[3] == 0, "0x40000002: a build, no service pack");
    info("privileges 0x%llx, features 0x%x, recommendations 0x%x, spinlock retries 0x%x, "
         "max VPs %u",
         cfg.priv, cfg.features, cfg.recommendations, cfg.spin_retries, cfg.max_vp);
    /* Only what is backed is ever shown (docs/abi/hyperv.md "What is shown"). */
    const u64 backed_priv = 1ull << P_VP_RUNTIME | 1ull << P_TIME_REF_COUNT |
                            1ull << P_HYPERCALL | 1ull << P_VP_INDEX | 1ull << P_RESET |
                            1ull << P_REFERENCE_TSC | 1ull << P_FREQUENCY |
                            1ull << P_POST_MESSAGES | 1ull << P_SIGNAL_EVENTS |
                            1ull << P_DEBUGGING | 1ull << P_EXTENDED_HYPERCALLS;
    const u32 backed_features = 1u << F_GUEST_DEBUGGING | 1u << F_XMM_INPUT |
                                1u << F_FREQUENCY_MSRS | 1u << F_CRASH_MSRS |
                                1u << F_EXT_GVA_RANGES | 1u << F_HYPERCALL_LOCK;
    const u32 backed_recs = 1u << R_REMOTE_FLUSH | 1u << R_RELAXED_TIMING | 1u << R_CLUSTER_IPI |
                            1u << R_EX_PROCESSOR_MASKS;
    check(!(cfg.priv & ~backed_priv), "no unbacked privilege shown|0x%llx",
          cfg.priv & ~backed_priv);
    check(!(cfg.features & ~backed_features), "no unbacked feature shown|0x%x",
          cfg.features & ~backed_features);
    check(!(cfg.recommendations & ~backed_recs), "no unbacked recommendation|0x%x",
          cfg.recommendations & ~backed_recs);
    cpuid(0x40000004, 0, r);
    check((r[2] & 0x7f) == 0 && r[3] == 0, "0x40000004 ECX/EDX: nothing claimed");
    cpuid(0x40000005, 0, r);
    check(r[0] == configured_vcpus() && r[1] == 0, "max VPs = the vCPUs|%u vs %u", r[0],
          configured_vcpus());
    cpuid(0x40000006, 0, r);
    check(r[0] == 0 && r[1] == 0 && r[2] == 0 && r[3] == 0, "0x40000006 all 0");
}

/* ------------------------------------------------------------------- MSRs */
struct msr_row {
    u32 msr;
    int priv, feature; /* the gate: a privilege bit, a feature bit, or neither (-1: never) */
    bool writable;
};

static const struct msr_row msrs[] = {
    {HV_X64_MSR_GUEST_OS_ID, P_HYPERCALL, -1, true},
    {HV_X64_MSR_HYPERCALL, P_HYPERCALL, -1, true},
    {HV_X64_MSR_VP_INDEX, P_VP_INDEX, -1, false},
    {HV_X64_MSR_RESET, P_RESET, -1, true},
    {HV_X64_MSR_VP_RUNTIME, P_VP_RUNTIME, -1, false},
    {HV_X64_MSR_TIME_REF_COUNT, P_TIME_REF_COUNT, -1, false},
    {HV_X64_MSR_REFERENCE_TSC, P_REFERENCE_TSC, -1, true},
    {HV_X64_MSR_TSC_FREQUENCY, P_FREQUENCY, -1, false},
    {HV_X64_MSR_APIC_FREQUENCY, P_FREQUENCY, -1, false},
    {HV_X64_MSR_CRASH_P0, -1, F_CRASH_MSRS, true},
    {HV_X64_MSR_CRASH_P4, -1, F_CRASH_MSRS, true},
    {HV_X64_MSR_CRASH_CTL, -1, F_CRASH_MSRS, true},
    /* Never shown here: APIC-access MSRs, VP assist, SynIC, synthetic timers, syndbg,
     * TSC invariant control, and the rest of the range. */
    {HV_X64_MSR_EOI, -1, -1, false},
    {HV_X64_MSR_ICR, -1, -1, false},
    {HV_X64_MSR_TPR, -1, -1, false},
    {HV_X64_MSR_VP_ASSIST_PAGE, -1, -1, false},
    {HV_X64_MSR_SCONTROL, -1, -1, false},
    {HV_X64_MSR_SVERSION, -1, -1, false},
    {HV_X64_MSR_SIEFP, -1, -1, false},
    {HV_X64_MSR_SIMP, -1, -1, false},
    {HV_X64_MSR_EOM, -1, -1, false},
    {HV_X64_MSR_SINT0, -1, -1, false},
    {HV_X64_MSR_SINT15, -1, -1, false},
    {HV_X64_MSR_STIMER0_CONFIG, -1, -1, false},
    {HV_X64_MSR_STIMER3_COUNT, -1, -1, false},
    {HV_X64_MSR_SYNDBG_CONTROL, -1, -1, false},
    {HV_X64_MSR_SYNDBG_OPTIONS, -1, -1, false},
    {0x40000106u, -1, -1, false},
    {HV_X64_MSR_TSC_INVARIANT_CONTROL, -1, -1, false},
};

static bool msr_shown(const struct msr_row *m)
{
    if (m->priv >= 0)
        return has_priv((unsigned)m->priv);
    if (m->feature >= 0)
        return has_feature((unsigned)m->feature);
    return false;
}

static void check_msr_gating(void)
{
    for (unsigned i = 0; i < ARRAY_SIZE(msrs); i++) {
        const struct msr_row *m = &msrs[i];
        bool shown = msr_shown(m);
        u64 v = 0;
        int rv = rdmsr_safe(m->msr, &v);
        /* Writing 0 is harmless for every writable one (RESET acts only on 1, CRASH_CTL only
         * on bit 63, GUEST_OS_ID/HYPERCALL/REFERENCE_TSC start at 0). */
        int wv = wrmsr_safe(m->msr, 0);
        int want_w = shown && m->writable ? 0 : VEC_GP;
        check(rv == (shown ? 0 : VEC_GP) && wv == want_w,
              "MSR 0x%x %s|read %s, write %s; want %s, %s", m->msr,
              shown ? (m->writable ? "rw" : "ro: write #GP") : "hidden: #GP",
              vec_name(rv), vec_name(wv), shown ? "no fault" : "#GP", vec_name(want_w));
    }
}

static void check_msr_values(void)
{
    u64 v;
    if (has_priv(P_VP_INDEX))
        check(rdmsr(HV_X64_MSR_VP_INDEX) == 0, "VP_INDEX 0 on the BSP");
    if (has_priv(P_RESET)) {
        check(rdmsr(HV_X64_MSR_RESET) == 0, "RESET reads 0");
        check(wrmsr_safe(HV_X64_MSR_RESET, 2) == 0, "RESET: a write of 2 is ignored");
    }
    if (has_feature(F_CRASH_MSRS)) {
        check(rdmsr(HV_X64_MSR_CRASH_CTL) == HV_CRASH_CTL_CRASH_NOTIFY,
              "CRASH_CTL reads CrashNotify|0x%llx", rdmsr(HV_X64_MSR_CRASH_CTL));
        wrmsr(HV_X64_MSR_CRASH_P0 + 2, 0x1234);
        check(rdmsr(HV_X64_MSR_CRASH_P0 + 2) == 0x1234, "CRASH_P2 holds a value");
        check(wrmsr_safe(HV_X64_MSR_CRASH_CTL, 1ull << 62) == 0,
              "CRASH_CTL bit 62 alone: no end");
    }
    if (has_priv(P_FREQUENCY)) {
        v = rdmsr(HV_X64_MSR_APIC_FREQUENCY);
        check(v == 1000000000ull, "APIC_FREQUENCY 1 GHz|%llu", v);
    }
}

/* ------------------------------------------------------------------- time */
static u64 first_ref_count;

static u64 ref_count(void) { return rdmsr(HV_X64_MSR_TIME_REF_COUNT); }

/* TSC cycles per 100 ns unit: measured against TIME_REF_COUNT over about 20 ms and compared
 * with TSC_FREQUENCY when it is shown. */
static void check_time_ref_count(void)
{
    if (!has_priv(P_TIME_REF_COUNT))
        return;
    check(first_ref_count > 0 && first_ref_count < 50000000ull,
          "TIME_REF_COUNT starts near 0|%llu x 100 ns at guest_main",
          first_ref_count);
    u64 prev = ref_count();
    bool mono = prev >= first_ref_count;
    for (unsigned i = 0; i < 200; i++) {
        u64 now = ref_count();
        mono = mono && now >= prev;
        prev = now;
    }
    check(mono, "TIME_REF_COUNT monotonic|last %llu", prev);
    if (!has_priv(P_FREQUENCY))
        return;
    u64 hz = rdmsr(HV_X64_MSR_TSC_FREQUENCY);
    check(hz > 10000000ull, "TSC_FREQUENCY plausible|%llu Hz", hz);
    /* Each MSR read is bracketed by two TSC reads, so a vCPU preempted around an exit only
     * widens the bracket: the counter's interval must lie within the TSC's, give or take 1%. */
    u64 t0a = rdtsc(), r0 = ref_count(), t0b = rdtsc();
    u64 cycles_20ms = udiv64(hz, 50, NULL);
    while (rdtsc() - t0b < cycles_20ms)
        pause();
    u64 t1a = rdtsc(), r1 = ref_count(), t1b = rdtsc();
    u64 per_unit = udiv64(hz, 10000000, NULL); /* TSC cycles per 100 ns, rounded down */
    u64 shortest = udiv64(t1a - t0b, per_unit + 1, NULL), longest = udiv64(t1b - t0a, per_unit, NULL);
    u64 ref_units = r1 - r0;
    check(ref_units * 100 >= shortest * 99 && ref_units * 99 <= longest * 100,
          "TIME_REF_COUNT runs at TSC_FREQUENCY|%llu units, the TSC says %llu..%llu",
          ref_units, shortest, longest);
}

static void check_reference_tsc(void)
{
    if (!has_priv(P_REFERENCE_TSC))
        return;
    struct tsc_page *p = &tsc_page_mem;
    u64 at = gpa(p);
    check(wrmsr_safe(HV_X64_MSR_REFERENCE_TSC, at | 1 | 2) == VEC_GP,
          "REFERENCE_TSC reserved bit 1: #GP");
    check(wrmsr_safe(HV_X64_MSR_REFERENCE_TSC, (1ull << 52) | 1) == VEC_GP,
          "REFERENCE_TSC beyond 52 GPA bits: #GP");
    check(wrmsr_safe(HV_X64_MSR_REFERENCE_TSC, NO_RAM_GPA | 1) == VEC_GP,
          "REFERENCE_TSC page outside RAM: #GP");
    wrmsr(HV_X64_MSR_REFERENCE_TSC, at | 1);
    check(rdmsr(HV_X64_MSR_REFERENCE_TSC) == (at | 1), "REFERENCE_TSC reads back");
    u32 seq = p->sequence;
    check(seq != 0 && seq != 0xffffffffu && p->scale != 0, "TSC page published|sequence %u",
          seq);
    /* The MSR read between two page readings must lie between them (1 us = 10 units). */
    bool agree = true;
    u64 worst = 0, before = 0, msr = 0, after = 0;
    for (unsigned i = 0; i < 50 && agree; i++) {
        u64 t0 = rdtsc();
        msr = ref_count();
        u64 t1 = rdtsc();
        agree = tsc_page_time(p, t0, &before) && tsc_page_time(p, t1, &after) &&
                msr + 10 >= before && msr <= after + 10;
        u64 gap = after - before;
        worst = gap > worst ? gap : worst;
        if (i == 25) {
            u64 s = rdtsc();
            while (rdtsc() - s < 20000000ull)
                pause();
        }
    }
    check(agree, "TIME_REF_COUNT within 1 us of the TSC page|page %llu <= MSR %llu <= page "
          "%llu, widest read %llu units", before, msr, after, worst);
    wrmsr(HV_X64_MSR_REFERENCE_TSC, at | 1);
    u32 seq2 = p->sequence;
    check(seq2 != seq && seq2 != 0 && seq2 != 0xffffffffu,
          "TSC page re-enabled: new sequence|%u -> %u", seq, seq2);
    u64 t_page = 0;
    tsc_page_time(p, rdtsc(), &t_page);
    wrmsr(HV_X64_MSR_REFERENCE_TSC, at);
    check(rdmsr(HV_X64_MSR_REFERENCE_TSC) == at && p->sequence == seq2,
          "TSC page disabled, left as it was|MSR 0x%llx", rdmsr(HV_X64_MSR_REFERENCE_TSC));
    u64 t_msr = ref_count();
    check(t_msr >= t_page, "TIME_REF_COUNT not back after disable|"
          "%llu -> %llu", t_page, t_msr);
    /* Published again for the rest of the run (Linux keeps it). */
    wrmsr(HV_X64_MSR_REFERENCE_TSC, at | 1);
}

/* ------------------------------------------------------------------- the hypercall page */
static void fill_pattern(u8 *page, u8 seed)
{
    for (unsigned i = 0; i < 4096; i += 2) {
        page[i] = 0x0f; /* ud2 pairs, so a stray call into the RAM traps */
        page[i + 1] = 0x0b;
    }
    page[100] = seed;
    page[4095] = seed;
}

static bool has_pattern(const volatile u8 *page, u8 seed)
{
    return page[0] == 0x0f && page[1] == 0x0b && page[100] == seed && page[4095] == seed &&
           page[2048] == 0x0f;
}

static bool is_overlay(const volatile u8 *p)
{
    bool rest = true;
    for (unsigned i = 4; i < 4096; i++)
        rest = rest && p[i] == 0xcc;
    return p[0] == 0x0f && p[1] == 0x01 && p[2] == page_insn && p[3] == 0xc3 && rest;
}

static volatile u8 *write_target;
static ureg do_write(ureg at)
{
    write_target[at] = 0x90;
    return 0;
}

static int try_write(volatile u8 *page, unsigned at)
{
    ureg ignored;
    write_target = page;
    return try_call(do_write, at, &ignored);
}

/* A call with the bare instruction the page holds (not through the page). */
static struct answer direct(u64 control, u64 in, u64 out)
{
    return hv_call_via(page_insn == 0xd9 ? VIA_VMMCALL : VIA_VMCALL, control, in, out);
}

static void write_hypercall(u64 value, bool now_on)
{
    wrmsr(HV_X64_MSR_HYPERCALL, value);
    page_on = now_on;
}

static void check_hypercall_page(void)
{
    page_insn = amd_like() ? 0xd9 : 0xc1;
    if (!has_priv(P_HYPERCALL))
        return;
    fill_pattern(page_a, 0xa1);
    fill_pattern(page_b, 0xb2);

    /* Before the page: no hypercall at all. */
    struct answer a = direct(HV_EXT_CALL_QUERY_CAPABILITIES, 0, gpa(out_buf));
    book(HV_EXT_CALL_QUERY_CAPABILITIES, 1);
    check(a.vec == VEC_UD, "call before the page: #UD|%s", vec_name(a.vec));

    /* Without a guest OS id the enable bit stays clear (TLFS; KVM ignores it). */
    check(rdmsr(HV_X64_MSR_GUEST_OS_ID) == 0, "GUEST_OS_ID starts at 0");
    write_hypercall(gpa(page_a) | 1, false);
    check(rdmsr(HV_X64_MSR_HYPERCALL) == gpa(page_a) && has_pattern(page_a, 0xa1),
          "no guest OS id: enable ignored|HYPERCALL 0x%llx",
          rdmsr(HV_X64_MSR_HYPERCALL));

    wrmsr(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID);
    check(rdmsr(HV_X64_MSR_GUEST_OS_ID) == LINUX_OS_ID, "GUEST_OS_ID reads back");
    check(wrmsr_safe(HV_X64_MSR_HYPERCALL, gpa(page_a) | 1 | 0x10) == VEC_GP,
          "HYPERCALL reserved bit 4: #GP");
    check(wrmsr_safe(HV_X64_MSR_HYPERCALL, (1ull << 52) | 1) == VEC_GP,
          "HYPERCALL beyond 52 GPA bits: #GP");
    if (!has_feature(F_HYPERCALL_LOCK))
        check(wrmsr_safe(HV_X64_MSR_HYPERCALL, gpa(page_a) | 1 | 2) == VEC_GP,
              "locked bit without the lock feature: #GP");
    check(!(rdmsr(HV_X64_MSR_HYPERCALL) & 1), "refused writes: page still off");

    /* Enabled at A: the overlay replaces the RAM. */
    u64 hc = rdmsr(HV_X64_MSR_HYPERCALL);
    write_hypercall((hc & 0xffe) | gpa(page_a) | 1, true);
    hc_page_at = page_a;
    check(rdmsr(HV_X64_MSR_HYPERCALL) == (gpa(page_a) | 1), "HYPERCALL enabled at page A");
    check(is_overlay(page_a), "overlay holds %s; ret; int3...|%02x %02x %02x %02x %02x",
          page_insn == 0xd9 ? "vmmcall" : "vmcall", page_a[0], page_a[1], page_a[2], page_a[3],
          page_a[4]);
    int v = try_write(page_a, 200);
    check(v == VEC_GP && page_a[200] == 0xcc, "write to the overlay: #GP|%s",
          vec_name(v));
    a = hv_call(0xbeef, 0, 0);
    book(0xbeef, 1);
    expect_answer("a call through page A", a, disabled ? EXP_UD : HV_STATUS_INVALID_HYPERCALL_CODE,
                  -1);
    /* The instruction works outside the page too, both encodings at CPL 0. */
    a = hv_call_via(VIA_VMCALL, 0xbeef, 0, 0);
    book(0xbeef, 1);
    expect_answer("VMCALL outside the page", a, disabled ? EXP_UD : HV_STATUS_INVALID_HYPERCALL_CODE,
                  -1);
    a = hv_call_via(VIA_VMMCALL, 0xbeef, 0, 0);
    book(0xbeef, 1);
    expect_answer("VMMCALL outside the page", a,
                  disabled ? EXP_UD : HV_STATUS_INVALID_HYPERCALL_CODE, -1);

    /* Moved to B: A's RAM is back, B shows the overlay. */
    write_hypercall(gpa(page_b) | 1, true);
    hc_page_at = page_b;
    check(has_pattern(page_a, 0xa1) && is_overlay(page_b),
          "moved to B: A's RAM back, B overlaid");
    v = try_write(page_a, 300);
    check(v == 0 && page_a[300] == 0x90, "page A writable again");
    page_a[300] = 0x0f;
    v = try_write(page_b, 300);
    check(v == VEC_GP, "write to the moved overlay: #GP|%s", vec_name(v));
    a = hv_call(0xbeef, 0, 0);
    book(0xbeef, 1);
    expect_answer("a call through page B", a, disabled ? EXP_UD : HV_STATUS_INVALID_HYPERCALL_CODE,
                  -1);

    /* Disabled: B's RAM is back and calls are #UD again. */
    write_hypercall(gpa(page_b), false);
    check(has_pattern(page_b, 0xb2) && rdmsr(HV_X64_MSR_HYPERCALL) == gpa(page_b),
          "disabled: B's RAM back|%02x %02x", page_b[0], page_b[1]);
    a = direct(0xbeef, 0, 0);
    book(0xbeef, 1);
    check(a.vec == VEC_UD, "call with the page off: #UD|%s", vec_name(a.vec));

    /* In a hole (no RAM): shown there too. Moved away before anything reads the hole. */
    write_hypercall(HOLE_PAGE_GPA | 1, true);
    hc_page_at = (const volatile void *)(uptr)HOLE_PAGE_GPA;
    check(is_overlay((const volatile u8 *)(uptr)HOLE_PAGE_GPA), "the page shown in a hole");
    a = hv_call(0xbeef, 0, 0);
    book(0xbeef, 1);
    expect_answer("a call through the page in a hole", a,
                  disabled ? EXP_UD : HV_STATUS_INVALID_HYPERCALL_CODE, -1);

    /* GUEST_OS_ID = 0 disables the page. */
    write_hypercall(gpa(page_a) | 1, true);
    hc_page_at = page_a;
    wrmsr(HV_X64_MSR_GUEST_OS_ID, 0);
    page_on = false;
    check(rdmsr(HV_X64_MSR_HYPERCALL) == gpa(page_a) && has_pattern(page_a, 0xa1),
          "GUEST_OS_ID = 0 disables the page|HYPERCALL 0x%llx",
          rdmsr(HV_X64_MSR_HYPERCALL));
    a = direct(0xbeef, 0, 0);
    book(0xbeef, 1);
    check(a.vec == VEC_UD, "call after GUEST_OS_ID = 0: #UD|%s", vec_name(a.vec));
    write_hypercall(gpa(page_a) | 1, false);
    check(!(rdmsr(HV_X64_MSR_HYPERCALL) & 1), "enable ignored while the id is 0");

    /* Back on at A for the rest of the run. */
    wrmsr(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID);
    write_hypercall(gpa(page_a) | 1, true);
    check(is_overlay(page_a), "re-enabled at page A");
}

/* The locked bit (last: nothing can change the MSR afterwards). */
static void check_lock(void)
{
    if (!has_priv(P_HYPERCALL) || !has_feature(F_HYPERCALL_LOCK))
        return;
    wrmsr(HV_X64_MSR_HYPERCALL, gpa(page_a) | 1 | 2);
    check(rdmsr(HV_X64_MSR_HYPERCALL) == (gpa(page_a) | 3), "HYPERCALL locked|0x%llx",
          rdmsr(HV_X64_MSR_HYPERCALL));
    int v1 = wrmsr_safe(HV_X64_MSR_HYPERCALL, gpa(page_b) | 1);
    int v2 = wrmsr_safe(HV_X64_MSR_HYPERCALL, 0);
    check(v1 == VEC_GP && v2 == VEC_GP && rdmsr(HV_X64_MSR_HYPERCALL) == (gpa(page_a) | 3),
          "locked: move/disable #GP|%s, %s", vec_name(v1),
          vec_name(v2));
    struct answer a = hv_call(0xbeef, 0, 0);
    book(0xbeef, 1);
    expect_answer("calls still work through the locked page", a,
                  disabled ? EXP_UD : HV_STATUS_INVALID_HYPERCALL_CODE, -1);
}

/* ------------------------------------------------------------------- rep continuation */
static void check_continuation(void)
{
    if (disabled || !page_on || !g_flush())
        return;
    /* The largest list one page holds: 509 ranges after the 24-byte header. The VMM does 256
     * per exit, so the call continues once: RIP stays on the instruction and the rep start
     * index is updated in the input value. In 64-bit mode RCX shows it afterwards; in 32-bit
     * mode EDX:EAX is both input and result, and had the guest been resumed after the first
     * chunk it would read the updated input value (code 3 = a failure status) as the result,
     * so SUCCESS with 509 reps is the proof there. The host counts two dispatches. */
    u64 *in = in64();
    in[0] = 0;
    in[1] = 0;
    in[2] = 1ull << 0;
    for (unsigned i = 0; i < 509; i++)
        in[3 + i] = 0x400000ull + 0x1000ull * i;
    u64 control = HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST | REPS(509);
    struct answer a = hv_call(control, gpa(in_buf), 0);
    book(control, 2);
    check(a.vec == 0 && status_of(a) == 0 && reps_of(a) == 509 && a.others_kept,
          "509-range list, 2 exits|status 0x%x, reps completed %u",
          status_of(a), reps_of(a));
#if RT_64BIT
    check(a.control_after == (control | START(256)),
          "RCX rep start 256: re-executed|0x%llx",
          a.control_after);
#endif
    /* From a start index: the reps completed are the total, not those done now. */
    control = HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST | REPS(509) | START(200);
    a = hv_call(control, gpa(in_buf), 0);
    book(control, 2);
    check(a.vec == 0 && status_of(a) == 0 && reps_of(a) == 509,
          "from start 200: reps = total|status 0x%x, reps completed %u", status_of(a),
          reps_of(a));
#if RT_64BIT
    check(a.control_after == (HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST | REPS(509) | START(456)),
          "continued at 456|0x%llx", a.control_after);
#endif
    /* The bare instruction continues the same way. */
    control = HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST | REPS(300);
    a = direct(control, gpa(in_buf), 0);
    book(control, 2);
    check(a.vec == 0 && status_of(a) == 0 && reps_of(a) == 300,
          "bare instruction, 300 reps|status 0x%x, reps completed %u", status_of(a),
          reps_of(a));
    /* The Ex form: an all-VPs set (format, empty bank mask), then the ranges. */
    in[0] = in[1] = in[3] = 0;
    in[2] = HV_GENERIC_SET_ALL;
    control = HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX | REPS(400);
    a = hv_call(control, gpa(in_buf), 0);
    book(control, 2);
    if (g_flush_ex())
        check(a.vec == 0 && status_of(a) == 0 && reps_of(a) == 400,
              "ListEx 400 ranges|status 0x%x, reps completed %u",
              status_of(a), reps_of(a));
    else {
        handled[code_index(HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX)] -= 1;
        expect_answer("FlushVirtualAddressListEx without ExProcessorMasks", a,
                      HV_STATUS_ACCESS_DENIED, 0);
    }
}

/* ------------------------------------------------------------------- IPIs */
static volatile u32 ipi_seen[RT_MAX_VCPUS][16];
static volatile u32 ap_vp_index = 0xffffffffu, ap_up;

static void on_ipi(struct trap_frame *f)
{
    unsigned v = (unsigned)f->vector - IPI_BASE;
    if (v < 16)
        __atomic_add_fetch(&ipi_seen[this_vcpu()][v], 1, __ATOMIC_SEQ_CST);
}

void guest_ap_main(unsigned vcpu)
{
    u64 v = 0xffffffffu;
    if (vcpu == 1) {
        if (rdmsr_safe(HV_X64_MSR_VP_INDEX, &v) != 0)
            v = 0xfffffffeu;
        ap_vp_index = (u32)v;
        __atomic_store_n(&ap_up, 1, __ATOMIC_RELEASE);
    }
    for (;;)
        sti_hlt();
}

static bool wait_ipi(unsigned vcpu, unsigned idx, u32 want)
{
    return wait_count(&ipi_seen[vcpu][idx], want, vcpu, 20000000ull);
}

static void check_ipis(void)
{
    if (disabled || !page_on || !g_ipi())
        return;
    for (unsigned v = IPI_BASE; v < IPI_BASE + 16; v++)
        set_irq_handler(v, on_ipi);
    /* To this vCPU, fast: RDX = vector, R8 = mask. */
    struct answer a = hv_call(HVCALL_SEND_IPI | FAST, IPI_BASE + 1, 1ull << this_vcpu());
    book(HVCALL_SEND_IPI, 1);
    bool got = wait_ipi(0, 1, 1);
    check(a.vec == 0 && status_of(a) == 0 && got && ipi_seen[0][1] == 1,
          "fast IPI to VP 0 delivered|status 0x%x, handler ran %u time(s)",
          status_of(a), ipi_seen[0][1]);
    if (configured_vcpus() < 2) {
        info("one vCPU: IPIs to another VP not checked");
        return;
    }
    for (u64 s = 0; !ap_up && s < 50000000ull; s++)
        pause();
    if (has_priv(P_VP_INDEX))
        check(ap_vp_index == 1, "VP_INDEX 1 on vCPU 1|%u", ap_vp_index);
    /* To vCPU 1, fast. */
    a = hv_call(HVCALL_SEND_IPI | FAST, IPI_BASE + 2, 1ull << 1);
    book(HVCALL_SEND_IPI, 1);
    got = wait_ipi(1, 2, 1);
    check(a.vec == 0 && status_of(a) == 0 && got && ipi_seen[0][2] == 0,
          "fast IPI to VP 1 delivered there only|%u, %u",
          ipi_seen[1][2], ipi_seen[0][2]);
    /* To vCPU 1, from memory. */
    memset(in_buf, 0, 64);
    s_ipi(IPI_BASE + 3, 0, 1ull << 1);
    a = hv_call(HVCALL_SEND_IPI, gpa(in_buf), 0);
    book(HVCALL_SEND_IPI, 1);
    got = wait_ipi(1, 3, 1);
    check(a.vec == 0 && status_of(a) == 0 && got, "IPI (memory) to VP 1 delivered");
    if (!g_ipi_ex())
        return;
    /* Ex, sparse: bank 0 = VP 1. */
    memset(in_buf, 0, 64);
    *(u32 *)in_buf = IPI_BASE + 4;
    in64()[1] = HV_GENERIC_SET_SPARSE_4K;
    in64()[2] = 1;
    in64()[3] = 1ull << 1;
    a = hv_call(HVCALL_SEND_IPI_EX | HDR(1), gpa(in_buf), 0);
    book(HVCALL_SEND_IPI_EX, 1);
    got = wait_ipi(1, 4, 1);
    check(a.vec == 0 && status_of(a) == 0 && got && ipi_seen[0][4] == 0,
          "IpiEx sparse {VP 1} delivered|status 0x%x", status_of(a));
    /* Ex, all VPs: both handlers run. */
    memset(in_buf, 0, 64);
    *(u32 *)in_buf = IPI_BASE + 5;
    in64()[1] = HV_GENERIC_SET_ALL;
    a = hv_call(HVCALL_SEND_IPI_EX, gpa(in_buf), 0);
    book(HVCALL_SEND_IPI_EX, 1);
    bool got1 = wait_ipi(1, 5, 1), got0 = wait_ipi(0, 5, 1);
    check(a.vec == 0 && status_of(a) == 0 && got0 && got1,
          "IpiEx all VPs: both delivered");
    /* Ex, fast with XMM input: RDX = vector, R8 = format, XMM0 = {valid mask, bank 0}. */
    if (has_feature(F_XMM_INPUT)) {
        u64 x[12] = {1, 1ull << 1};
        set_xmm(x);
        a = hv_call(HVCALL_SEND_IPI_EX | FAST | HDR(1), IPI_BASE + 6, HV_GENERIC_SET_SPARSE_4K);
        book(HVCALL_SEND_IPI_EX, 1);
        got = wait_ipi(1, 6, 1);
        check(a.vec == 0 && status_of(a) == 0 && got && ipi_seen[0][6] == 0,
              "fast IpiEx, set in XMM0, delivered|status 0x%x",
              status_of(a));
        /* And the XMM flush: RDX address space, R8 flags, XMM0 low = processor mask. */
        if (g_flush()) {
            u64 m[12] = {1ull << 1};
            set_xmm(m);
            a = hv_call(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE | FAST, 0, 0);
            book(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, 1);
            expect_answer("fast flush, mask in XMM0", a,
                          HV_STATUS_SUCCESS, -1);
        }
    }
}

/* ------------------------------------------------------------------- debug channel */
static const char guest_debug_bytes[] = "polyvisor: bytes from the guest debugger\n";

static struct answer debug_post(const char *bytes, u32 n)
{
    memset(in_buf, 0, 8);
    *(u32 *)in_buf = n;
    memcpy(in_buf + 8, bytes, n);
    *(u32 *)out_buf = 0xffffffffu;
    struct answer a = hv_call(HVCALL_POST_DEBUG_DATA, gpa(in_buf), gpa(out_buf));
    book(HVCALL_POST_DEBUG_DATA, 1);
    return a;
}

static struct answer debug_retrieve(u32 n)
{
    memset(in_buf, 0, 16);
    *(u32 *)in_buf = n;
    in64()[1] = 1000000; /* Timeout: ignored, the call never waits */
    memset(out_buf, 0xee, 8 + 72);
    struct answer a = hv_call(HVCALL_RETRIEVE_DEBUG_DATA, gpa(in_buf), gpa(out_buf));
    book(HVCALL_RETRIEVE_DEBUG_DATA, 1);
    return a;
}

static void check_debug_channel(void)
{
    if (disabled || !page_on)
        return;
    if (!g_debug()) {
        struct answer a = debug_post("x", 1);
        expect_answer("PostDebugData without Debugging", a, HV_STATUS_ACCESS_DENIED, -1);
        return;
    }
    char expect[128];
    int n_in = cmdline_get("debug_in", expect, sizeof expect);
    if (n_in < 0)
        n_in = 0;
    u32 n = sizeof guest_debug_bytes - 1;
    struct answer a = debug_post(guest_debug_bytes, n);
    check(a.vec == 0 && status_of(a) == 0 && *(u32 *)out_buf == 0,
          "PostDebugData %u bytes|status 0x%x, pending %u", n, status_of(a), *(u32 *)out_buf);
    a = debug_post("", 0);
    check(a.vec == 0 && status_of(a) == 0 && *(u32 *)out_buf == 0,
          "PostDebugData 0 bytes|status 0x%x", status_of(a));
    a = debug_retrieve(0);
    check(a.vec == 0 && status_of(a) == 0 && *(u32 *)out_buf == 0,
          "RetrieveDebugData 0 bytes|status 0x%x", status_of(a));
    /* The host's bytes, 5 first, then the rest. */
    char got[128];
    u32 have = 0;
    if (n_in > 0) {
        a = debug_retrieve(5);
        u32 r = *(u32 *)out_buf, rem = *(u32 *)(out_buf + 4);
        check(a.vec == 0 && status_of(a) == 0 && r == 5 && rem == 0 &&
                  memcmp(out_buf + 8, expect, 5) == 0 && out_buf[13] == 0xee,
              "RetrieveDebugData 5: host bytes|status 0x%x, retrieved %u, "
              "remaining %u", status_of(a), r, rem);
        memcpy(got, out_buf + 8, 5);
        have = 5;
        a = debug_retrieve(64);
        r = *(u32 *)out_buf;
        rem = *(u32 *)(out_buf + 4);
        u32 want = (u32)n_in - 5;
        check(a.vec == 0 && status_of(a) == 0 && r == want && rem == 64 - want &&
                  memcmp(out_buf + 8, expect + 5, want) == 0,
              "RetrieveDebugData 64: the rest|retrieved %u, want %u, "
              "remaining %u", r, want, rem);
        if (r <= sizeof got - have) {
            memcpy(got + have, out_buf + 8, r);
            have += r;
        }
    }
    a = debug_retrieve(64);
    check(a.vec == 0 && status_of(a) == HV_STATUS_NO_DATA && *(u32 *)out_buf == 0,
          "RetrieveDebugData, none left: NO_DATA|0x%x, retrieved %u",
          status_of(a), *(u32 *)out_buf);
    /* Echo what came in, so the host sees the round trip. */
    char echo[160];
    int len = 0;
    for (const char *s = "echo: "; *s; s++)
        echo[len++] = *s;
    memcpy(echo + len, got, have);
    len += (int)have;
    echo[len++] = '\n';
    a = debug_post(echo, (u32)len);
    check(a.vec == 0 && status_of(a) == 0, "PostDebugData echo|%u host bytes", have);
}

/* ------------------------------------------------------------------- CPL 3 */
/* What a CPL-3 instruction does on this host (cmdline cpl3_vmcall= / cpl3_vmmcall=). */
enum fate { FATE_UNKNOWN, FATE_TRAP, FATE_HOST, FATE_UD, FATE_GP };

static enum fate fate_of(const char *key)
{
    char v[16];
    if (cmdline_get(key, v, sizeof v) < 0)
        return FATE_UNKNOWN;
    if (!strcmp(v, "trap"))
        return FATE_TRAP;
    if (!strcmp(v, "host"))
        return FATE_HOST;
    if (!strcmp(v, "ud"))
        return FATE_UD;
    if (!strcmp(v, "gp"))
        return FATE_GP;
    return FATE_UNKNOWN;
}

static ureg r3_control;
static enum via r3_how;

/* Runs at CPL 3: a valid call (HvExtCallQueryCapabilities); a fault ends the ring-3 run. */
static ureg r3_call(ureg unused)
{
    (void)unused;
    struct hc_regs r;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rcx = r3_control;
    r.r8 = gpa(out_buf);
    r.rax = 0x77;
#else
    r.eax = (u32)r3_control;
    r.esi = (u32)gpa(out_buf);
#endif
    if (r3_how == VIA_PAGE)
        hypercall_via((const void *)hc_page_at, &r);
    else if (r3_how == VIA_VMCALL)
        hypercall_vmcall(&r);
    else
        hypercall_vmmcall(&r);
#if RT_64BIT
    return r.rax;
#else
    return r.eax;
#endif
}

static void ring3_case(const char *what, enum via how, enum fate fate)
{
    r3_control = HV_EXT_CALL_QUERY_CAPABILITIES;
    r3_how = how;
    ureg result = 0;
    int v = run_in_ring3(r3_call, 0, &result);
    switch (fate) {
    case FATE_TRAP:
        /* The VMM saw it: the interface's answer to CPL != 0 is #UD. */
        if (disabled)
            disabled_refusals++;
        else
            decoder_refusals++;
        check(v == VEC_UD, "CPL 3 %s trapped: #UD|%s", what, vec_name(v));
        break;
    case FATE_HOST:
        check(v == 0 && result == (ureg)-1,
              "CPL 3 %s: host kernel answers -1|%s, 0x%lx", what,
              vec_name(v), (unsigned long)result);
        break;
    case FATE_UD:
        check(v == VEC_UD, "CPL 3 %s: #UD from the host|%s", what, vec_name(v));
        break;
    case FATE_GP:
        check(v == VEC_GP, "CPL 3 %s: #GP from the host|%s", what, vec_name(v));
        break;
    default:
        check(false, "CPL 3 %s: no cpl3_* fate on the command line", what);
    }
}

static void check_ring3(void)
{
    if (!page_on)
        return;
    enum fate vmcall = fate_of("cpl3_vmcall"), vmmcall = fate_of("cpl3_vmmcall");
    ring3_case("VMMCALL", VIA_VMMCALL, vmmcall);
    ring3_case("VMCALL", VIA_VMCALL, vmcall);
    ring3_case("call through the page", VIA_PAGE, page_insn == 0xd9 ? vmmcall : vmcall);
    /* CPL 0 still works afterwards. */
    struct answer a = hv_call(0xbeef, 0, 0);
    book(0xbeef, 1);
    expect_answer("CPL 0 after the CPL-3 calls", a,
                  disabled ? EXP_UD : HV_STATUS_INVALID_HYPERCALL_CODE, -1);
}

/* ------------------------------------------------------------------- the end */
static void report_counts(void)
{
    for (unsigned i = 0; i < ARRAY_SIZE(counted_codes); i++)
        gprintf("%s: count %s %u\n", GUEST_NAME, counted_names[i], handled[i]);
    gprintf("%s: decoder-refusals %u\n", GUEST_NAME, decoder_refusals);
    gprintf("%s: unknown-codes %u\n", GUEST_NAME, unknown_codes);
    gprintf("%s: disabled-refusals %u\n", GUEST_NAME, disabled_refusals);
    gprintf("%s: denied-calls %u\n", GUEST_NAME, denied_calls);
}

static void finish(void)
{
    char end[16];
    if (cmdline_get("end", end, sizeof end) < 0)
        return;
    if (!strcmp(end, "crash")) {
        check(has_feature(F_CRASH_MSRS), "crash MSRs shown for end=crash");
        check_summary_with(" before the end");
        for (unsigned i = 0; i < 5; i++)
            wrmsr(HV_X64_MSR_CRASH_P0 + i, 0x11ull * (i + 1));
        wrmsr(HV_X64_MSR_CRASH_CTL, HV_CRASH_CTL_CRASH_NOTIFY);
    } else if (!strcmp(end, "reset")) {
        check(has_priv(P_RESET), "RESET shown for end=reset");
        check_summary_with(" before the end");
        wrmsr(HV_X64_MSR_RESET, 1);
    }
    check(false, "end=%s should have ended the VM", end);
}

int guest_main(const struct hvm_start_info *si)
{
    char buf[16];
    (void)si;
    read_cfg();
    if (has_priv(P_TIME_REF_COUNT))
        first_ref_count = ref_count();
    disabled = cmdline_get("expect", buf, sizeof buf) >= 0 && !strcmp(buf, "disabled");
    if (cmdline_get("deny", buf, sizeof buf) >= 0) {
        u64 code;
        if (parse_u64(buf, &code))
            denied_code = (u32)code;
    }
    gprintf("%s: hyperv personality checks (%s)%s\n", GUEST_NAME, rt_boot_protocol_name(),
            disabled ? ", hypercalls disabled" : "");
    enable_sse();

    check_cpuid();
    check_msr_gating();
    check_msr_values();
    check_time_ref_count();
    check_reference_tsc();
    check_hypercall_page();
    if (page_on)
        run_table();
    check_continuation();
    check_ipis();
    check_debug_channel();
    check_ring3();
    check_lock();
    report_counts();
    finish();
    return check_summary();
}
