/* matrix_hyperv: the Hyper-V column of polyvisor's cross-personality matrix
 * (docs/testing.md). The answers are docs/abi/hyperv.md's: calls through the hypercall page
 * after the guest OS id (64-bit: RCX input value, RDX/R8 parameters, RAX result; 32-bit:
 * EDX:EAX, EBX:ECX, EDI:ESI), #UD while disabled and from CPL 3, HV_STATUS_* for unknown,
 * denied and bad-pointer calls, HvCallNotifyLongSpinWait to yield, TIME_REF_COUNT as the time
 * source, HvCallSendSyntheticClusterIpi to interrupt another vCPU, the crash MSRs to end the
 * VM with a report, and the debug channel as its console: HvCallPostDebugData to the host's
 * `[hyperv] debug_output`, HvCallRetrieveDebugData from its `debug_input` (gated by the
 * Debugging privilege). Scenarios: see matrix.h.
 */
#include "hyperv_guest.h"
#include "matrix.h"

#define UNKNOWN_CODE 0x7ff0
#define WAKE_VECTOR 0xf3
/* The crash parameters the host finds in the end message. */
#define CRASH_P0 0x4d41545249580000ull /* "MATRIX" */

static u8 page[4096] __aligned(4096);
static u64 out_block[512] __aligned(4096);
static u8 debug_in[4096] __aligned(4096);
static u8 debug_out[4096] __aligned(4096);

/* The host's selftest plan (vmm/src/selftest/plan.rs HYPERV_DEBUG_POSTED and
 * HYPERV_DEBUG_INPUT) expects exactly these bytes. */
static const char debug_posted[] = "matrix_hyperv: posted with HvCallPostDebugData\n";
static const char debug_host_bytes[] = "host: retrieved with HvCallRetrieveDebugData\n";
#define DEBUG_ASK 64

/* hv_init: guest OS id, then the hypercall page (TLFS "Establishing the Hypercall
 * Interface"). */
static void setup_page(void)
{
    wrmsr(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID);
    wrmsr(HV_X64_MSR_HYPERCALL, gpa(page) | HV_X64_MSR_HYPERCALL_ENABLE);
    check_eq("HV_X64_MSR_HYPERCALL enabled", rdmsr(HV_X64_MSR_HYPERCALL) & 1, 1);
    hc_page_at = page;
}

static void expect_status(const char *what, struct answer a, u16 want)
{
    if (a.vec)
        check_fault(what, a.vec, 0);
    else
        check_eq(what, status_of(a), want);
}

static u64 spin_wait(void)
{
    return HVCALL_NOTIFY_LONG_SPIN_WAIT | HV_HYPERCALL_FAST_BIT;
}

static void identity(void)
{
    mx_check_signature(0x40000000, "Microsoft Hv", 0x40000006);
    u32 r[4];
    cpuid(0x40000001, 0, r);
    check_eq("CPUID 0x40000001 EAX: the interface \"Hv#1\"", r[0], 0x31237648);
}

static void bad_pointers(void)
{
    u64 end = mx_ram_end();
    check_true("RAM end known", end != 0, "no memory map");
    u64 code = HV_EXT_CALL_QUERY_CAPABILITIES;
    expect_status("HvExtCallQueryCapabilities output beyond RAM -> HV_STATUS_INVALID_ALIGNMENT",
                  hv_call(code, 0, end + 0x10000), HV_STATUS_INVALID_ALIGNMENT);
    expect_status("HvExtCallQueryCapabilities output misaligned -> HV_STATUS_INVALID_ALIGNMENT",
                  hv_call(code, 0, gpa(out_block) + 4), HV_STATUS_INVALID_ALIGNMENT);
    out_block[0] = ~0ull;
    expect_status("HvExtCallQueryCapabilities into RAM afterwards -> HV_STATUS_SUCCESS",
                  hv_call(code, 0, gpa(out_block)), HV_STATUS_SUCCESS);
    check_eq("HvExtCallQueryCapabilities wrote 0", out_block[0], 0);
}

/* HvCallPostDebugData: input {Count u32, Options u32, Data[Count]}, output {PendingCount u32}
 * (docs/abi/hyperv.md "Debug channel"). */
static void debug_post(const char *what, const void *bytes, u32 n)
{
    memset(debug_in, 0, 8);
    *(u32 *)debug_in = n;
    memcpy(debug_in + 8, bytes, n);
    *(u32 *)debug_out = 0xffffffffu;
    char line[96];
    gsnprintf(line, sizeof line, "HvCallPostDebugData %s -> HV_STATUS_SUCCESS", what);
    expect_status(line, hv_call(HVCALL_POST_DEBUG_DATA, gpa(debug_in), gpa(debug_out)),
                  HV_STATUS_SUCCESS);
    gsnprintf(line, sizeof line, "HvCallPostDebugData %s: PendingCount 0", what);
    check_eq(line, *(u32 *)debug_out, 0);
}

/* HvCallRetrieveDebugData for DEBUG_ASK bytes: input {Count u32, Options u32, Timeout u64},
 * output {RetrievedCount u32, RemainingCount u32, Data[]}; the status. */
static struct answer debug_retrieve(void)
{
    memset(debug_in, 0, 16);
    *(u32 *)debug_in = DEBUG_ASK;
    memset(debug_out, 0xee, 8 + DEBUG_ASK);
    return hv_call(HVCALL_RETRIEVE_DEBUG_DATA, gpa(debug_in), gpa(debug_out));
}

/* The console: bytes out through the debug channel, the host's bytes in and back out. */
static void console(void)
{
    read_cfg();
    check_true("Debugging privilege shown (0x40000003 EBX 11)", has_priv(P_DEBUGGING), "0x%llx",
               cfg.priv);
    check_true("guest debugging shown (0x40000003 EDX 1)", has_feature(F_GUEST_DEBUGGING), "0x%x",
               cfg.features);
    debug_post("of the guest's bytes", debug_posted, sizeof debug_posted - 1);
    u32 n = sizeof debug_host_bytes - 1;
    expect_status("HvCallRetrieveDebugData -> HV_STATUS_SUCCESS", debug_retrieve(),
                  HV_STATUS_SUCCESS);
    u32 got = *(u32 *)debug_out;
    check_eq("HvCallRetrieveDebugData RetrievedCount: the host's bytes", got, n);
    char back[DEBUG_ASK];
    memcpy(back, debug_out + 8, sizeof back);
    check_true("HvCallRetrieveDebugData: the host's bytes",
               got == n && !memcmp(back, debug_host_bytes, n), "%u bytes", got);
    expect_status("HvCallRetrieveDebugData, none left -> HV_STATUS_NO_DATA", debug_retrieve(),
                  HV_STATUS_NO_DATA);
    if (got <= sizeof back)
        debug_post("of the host's bytes back", back, got);
}

static void time_source(void)
{
    read_cfg();
    check_true("AccessPartitionReferenceCounter shown", has_priv(P_TIME_REF_COUNT), "0x%llx",
               cfg.priv);
    u64 t0 = rdmsr(HV_X64_MSR_TIME_REF_COUNT);
    mx_spin(20000);
    /* 100 ns units */
    mx_check_clock("TIME_REF_COUNT", t0, rdmsr(HV_X64_MSR_TIME_REF_COUNT), 600000000ull);
}

static void shutdown(void)
{
    read_cfg();
    check_true("GuestCrashMsrsAvailable shown", has_feature(F_CRASH_MSRS), "0x%x", cfg.features);
    check_eq("CRASH_CTL offers CrashNotify", rdmsr(HV_X64_MSR_CRASH_CTL) >> 63, 1);
    wrmsr(HV_X64_MSR_CRASH_P0, CRASH_P0);
    for (u32 i = 1; i <= 4; i++)
        wrmsr(HV_X64_MSR_CRASH_P0 + i, i);
    gprintf("%s: reporting a crash: the VM ends here with the crash status\n", GUEST_NAME);
    wrmsr(HV_X64_MSR_CRASH_CTL, HV_CRASH_CTL_CRASH_NOTIFY);
    check_true("the VM ended at the CRASH_CTL write", false, "still running");
}

static void wake(void)
{
    read_cfg();
    check_true("UseClusterIpi recommended", recommends(R_CLUSTER_IPI), "0x%x",
               cfg.recommendations);
    if (!mx_ap_waiting(WAKE_VECTOR))
        return;
    /* Fast: RDX = {u32 Vector, u8 TargetVtl, pad}, R8 = ProcessorMask (TLFS). */
    expect_status("HvCallSendSyntheticClusterIpi to VP 1 -> HV_STATUS_SUCCESS",
                  hv_call(HVCALL_SEND_IPI | HV_HYPERCALL_FAST_BIT, WAKE_VECTOR, 1ull << 1),
                  HV_STATUS_SUCCESS);
    mx_check_ap_woken();
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    mx_init();
    if (mx_is("identity")) {
        identity();
        return check_summary();
    }
    if (mx_is("disabled")) {
        /* No page is filled while disabled: the instruction itself. */
        (void)wrmsr_safe(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID);
        struct answer a = hv_call_via(mx_insn0 == MX_VMMCALL ? VIA_VMMCALL : VIA_VMCALL,
                                      spin_wait(), 1, 0);
        check_fault("HvCallNotifyLongSpinWait while disabled -> #UD", a.vec, VEC_UD);
        return check_summary();
    }
    if (mx_is("time")) {
        time_source();
        return check_summary();
    }
    if (mx_is("shutdown")) {
        shutdown();
        return check_summary();
    }
    setup_page();
    if (mx_is("enabled") || mx_is("yield")) {
        expect_status("HvCallNotifyLongSpinWait -> HV_STATUS_SUCCESS", hv_call(spin_wait(), 1, 0),
                      HV_STATUS_SUCCESS);
    } else if (mx_is("unknown")) {
        expect_status("an unknown call code -> HV_STATUS_INVALID_HYPERCALL_CODE",
                      hv_call(UNKNOWN_CODE | HV_HYPERCALL_FAST_BIT, 0, 0),
                      HV_STATUS_INVALID_HYPERCALL_CODE);
    } else if (mx_is("ring")) {
        struct hc_regs r;
        memset(&r, 0, sizeof r);
#if RT_64BIT
        r.rcx = spin_wait();
        r.rdx = 1;
#else
        r.eax = (u32)spin_wait();
        r.ecx = 1;
#endif
        check_fault("HvCallNotifyLongSpinWait from CPL 3 -> #UD", mx_call_ring3(&r), VEC_UD);
    } else if (mx_is("denied")) {
        expect_status("HvCallNotifyLongSpinWait denied by the config -> HV_STATUS_ACCESS_DENIED",
                      hv_call(spin_wait(), 1, 0), HV_STATUS_ACCESS_DENIED);
    } else if (mx_is("console")) {
        console();
    } else if (mx_is("wake")) {
        wake();
    } else if (mx_is("bad-pointer")) {
        bad_pointers();
    } else if (mx_is("caller32")) {
        check_eq("a 32-bit caller", RT_64BIT, 0);
        identity();
        expect_status("HvCallNotifyLongSpinWait -> HV_STATUS_SUCCESS", hv_call(spin_wait(), 1, 0),
                      HV_STATUS_SUCCESS);
        expect_status("an unknown call code -> HV_STATUS_INVALID_HYPERCALL_CODE",
                      hv_call(UNKNOWN_CODE | HV_HYPERCALL_FAST_BIT, 0, 0),
                      HV_STATUS_INVALID_HYPERCALL_CODE);
        bad_pointers();
    } else {
        return mx_unknown_scenario();
    }
    return check_summary();
}
