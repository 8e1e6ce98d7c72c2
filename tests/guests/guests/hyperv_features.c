/* hyperv_features: checks polyvisor's hyperv personality from the inside
 * (docs/abi/hyperv.md): CPUID, MSR gating by the advertised bits, the Linux-style set-up order
 * (reference TSC page, VP_INDEX, GUEST_OS_ID, HYPERCALL), the hypercall page overlay
 * (contents, #GP on writes, RAM back when disabled), the hypercall status codes the KVM
 * selftest hyperv_features.c expects, rep continuation, a synthetic IPI to itself and #UD from
 * ring 3. Build it as a 64-bit image and as a 32-bit PVH image (the EDX:EAX convention).
 * One line per check; exit status 0 only if every check passed, 1 otherwise.
 *
 * Cmdline:
 *   eoi=x2apic|xapic    (runtime) needed for the self-IPI check to be repeatable
 *   expect=default      (default) VMM config: [hypervisor] mode = "hyperv",
 *                       hypercalls_enabled = true, no [hyperv] masks
 *   expect=disabled     VMM config: mode = "hyperv", hypercalls off: every call is #UD
 *   flush=denied        the VMM has no Platform::flush_guest_tlb: flushes answer
 *                       HV_STATUS_OPERATION_DENIED (8) instead of SUCCESS
 *   end=crash           finish by reporting a crash through the crash MSRs (the VM ends with
 *                       "crash ... P0=0x11 ... P4=0x55" instead of exit status 0)
 *   end=reset           finish by writing 1 to HV_X64_MSR_RESET (the VM ends as "reboot")
 */
#include "guest.h"

#define HV_X64_MSR_GUEST_OS_ID 0x40000000u
#define HV_X64_MSR_HYPERCALL 0x40000001u
#define HV_X64_MSR_VP_INDEX 0x40000002u
#define HV_X64_MSR_RESET 0x40000003u
#define HV_X64_MSR_VP_RUNTIME 0x40000010u
#define HV_X64_MSR_TIME_REF_COUNT 0x40000020u
#define HV_X64_MSR_REFERENCE_TSC 0x40000021u
#define HV_X64_MSR_TSC_FREQUENCY 0x40000022u
#define HV_X64_MSR_APIC_FREQUENCY 0x40000023u
#define HV_X64_MSR_EOI 0x40000070u
#define HV_X64_MSR_VP_ASSIST_PAGE 0x40000073u
#define HV_X64_MSR_SCONTROL 0x40000080u
#define HV_X64_MSR_STIMER0_CONFIG 0x400000b0u
#define HV_X64_MSR_CRASH_P0 0x40000100u
#define HV_X64_MSR_CRASH_CTL 0x40000105u

#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE 0x0002
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST 0x0003
#define HVCALL_NOTIFY_LONG_SPIN_WAIT 0x0008
#define HVCALL_SEND_IPI 0x000b
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX 0x0013
#define HVCALL_SEND_IPI_EX 0x0015
#define HVCALL_POST_MESSAGE 0x005c
#define HVCALL_SIGNAL_EVENT 0x005d
#define HVCALL_RESET_DEBUG_SESSION 0x006b
#define HV_EXT_CALL_QUERY_CAPABILITIES 0x8001
#define HV_HYPERCALL_FAST_BIT (1ull << 16)

#define HV_STATUS_SUCCESS 0
#define HV_STATUS_INVALID_HYPERCALL_CODE 2
#define HV_STATUS_INVALID_HYPERCALL_INPUT 3
#define HV_STATUS_INVALID_ALIGNMENT 4
#define HV_STATUS_INVALID_PARAMETER 5
#define HV_STATUS_ACCESS_DENIED 6
#define HV_STATUS_OPERATION_DENIED 8

#define LINUX_OS_ID (0x8100ull << 48)
#define IPI_VECTOR 0x41

static unsigned passed, failed;
static u32 priv_lo, priv_hi, features, recommendations, spin_retries;
static bool want_disabled, flush_denied;

static u8 hc_page[4096] __aligned(4096);
static u8 tsc_page[4096] __aligned(4096);
static u8 in_page[4096] __aligned(4096);
static u8 out_page[4096] __aligned(4096);

static void check(bool ok, const char *fmt, ...) __printf(2, 3);
static void check(bool ok, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    gvsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (ok)
        passed++;
    else
        failed++;
    gprintf("%s: [%s] %s\n", GUEST_NAME, ok ? "ok" : "FAIL", line);
}

/* What a hypercall did: the fault vector (0 = none) and the result value. */
struct answer {
    int vec;
    u64 value;
};

static u16 status(struct answer a) { return (u16)(a.value & 0xffff); }
static u32 reps_done(struct answer a) { return (u32)(a.value >> 32) & 0xfff; }

/* A call through the hypercall page with the TLFS register mapping of this width. */
static struct answer hv_call(u64 control, u64 in, u64 out)
{
    struct hc_regs r;
    struct answer a;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rcx = control;
    r.rdx = in;
    r.r8 = out;
    a.vec = hypercall_via(hc_page, &r);
    a.value = r.rax;
#else
    r.edx = (u32)(control >> 32);
    r.eax = (u32)control;
    r.ebx = (u32)(in >> 32);
    r.ecx = (u32)in;
    r.edi = (u32)(out >> 32);
    r.esi = (u32)out;
    a.vec = hypercall_via(hc_page, &r);
    a.value = ((u64)r.edx << 32) | r.eax;
#endif
    return a;
}

static u64 gpa(const void *p) { return (u64)(uptr)p; }

/* The host CPU's own instruction (AMD and Hygon: VMMCALL), as the hypercall page holds it. */
static bool amd_like(void)
{
    u32 r[4];
    cpuid(0, 0, r);
    return r[1] == 0x68747541 /* "Auth" */ || r[1] == 0x6f677948 /* "Hygo" */;
}

/* The same call made with the bare instruction, not through the page: to see the
 * hypervisor's own #UD when the page is not enabled (the RAM under it holds ud2). */
static struct answer direct_call(u64 control, u64 in, u64 out)
{
    struct hc_regs r;
    struct answer a;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rcx = control;
    r.rdx = in;
    r.r8 = out;
#else
    r.edx = (u32)(control >> 32);
    r.eax = (u32)control;
    r.ecx = (u32)in;
    r.esi = (u32)out;
#endif
    a.vec = amd_like() ? hypercall_vmmcall(&r) : hypercall_vmcall(&r);
#if RT_64BIT
    a.value = r.rax;
#else
    a.value = ((u64)r.edx << 32) | r.eax;
#endif
    return a;
}

static bool has_priv(unsigned bit) { return bit < 32 ? (priv_lo >> bit) & 1 : (priv_hi >> (bit - 32)) & 1; }

static void expect_status(const char *what, struct answer a, u16 want)
{
    if (want_disabled) {
        check(a.vec == VEC_UD, "%s: #UD with hypercalls disabled (vector %d)", what, a.vec);
        return;
    }
    check(a.vec == 0 && status(a) == want, "%s: status %u (want %u, vector %d)", what,
          a.vec ? 0xffff : status(a), want, a.vec);
}

static void check_cpuid(void)
{
    u32 r[4];
    char sig[13];
    cpuid(1, 0, r);
    check((r[2] >> 31) & 1, "CPUID.1:ECX[31] hypervisor present");
    cpuid(0x40000000, 0, r);
    memcpy(sig, &r[1], 12);
    sig[12] = 0;
    check(strcmp(sig, "Microsoft Hv") == 0, "vendor \"%s\"", sig);
    check(r[0] >= 0x40000005 && r[0] <= 0x4000ffff, "max leaf %#x in Linux's range", r[0]);
    cpuid(0x40000001, 0, r);
    check(r[0] == 0x31237648, "interface Hv#1 (%#x)", r[0]);
    cpuid(0x40000003, 0, r);
    priv_lo = r[0];
    priv_hi = r[1];
    features = r[3];
    check((priv_lo & 0x60) == 0x60, "privileges %#x:%#x include hypercall MSRs and VP index",
          priv_hi, priv_lo);
    cpuid(0x40000004, 0, r);
    recommendations = r[0];
    spin_retries = r[1];
    cpuid(0x40000005, 0, r);
    check(r[0] >= vcpus_online(), "max VPs %u", r[0]);
}

/* Every MSR of the table: available exactly when its bit is shown; read-only ones #GP on
 * writes. */
static void check_msr_gating(void)
{
    static const struct {
        u32 msr;
        int priv;    /* privilege bit, or -1 */
        int feature; /* EDX feature bit, or -1 */
        bool writable;
    } msrs[] = {
        {HV_X64_MSR_VP_INDEX, 6, -1, false},      {HV_X64_MSR_VP_RUNTIME, 0, -1, false},
        {HV_X64_MSR_TIME_REF_COUNT, 1, -1, false}, {HV_X64_MSR_TSC_FREQUENCY, 11, -1, false},
        {HV_X64_MSR_APIC_FREQUENCY, 11, -1, false}, {HV_X64_MSR_CRASH_P0, -1, 10, true},
        {HV_X64_MSR_EOI, 4, -1, true},            {HV_X64_MSR_VP_ASSIST_PAGE, 4, -1, true},
        {HV_X64_MSR_SCONTROL, 2, -1, true},       {HV_X64_MSR_STIMER0_CONFIG, 3, -1, true},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(msrs); i++) {
        bool avail = msrs[i].priv >= 0 ? has_priv(msrs[i].priv)
                                       : (features >> msrs[i].feature) & 1;
        u64 v;
        int rv = rdmsr_safe(msrs[i].msr, &v);
        check(avail ? rv == 0 : rv == VEC_GP, "rdmsr %#x: %s (vector %d)", msrs[i].msr,
              avail ? "readable" : "#GP", rv);
        if (avail && !msrs[i].writable) {
            int wv = wrmsr_safe(msrs[i].msr, v);
            check(wv == VEC_GP, "wrmsr %#x read-only: #GP (vector %d)", msrs[i].msr, wv);
        }
    }
    if (has_priv(6))
        check(rdmsr(HV_X64_MSR_VP_INDEX) == this_vcpu(), "VP_INDEX = vCPU index");
}

static ureg write_overlay(ureg at)
{
    ((volatile u8 *)hc_page)[at] = 0x90;
    return 0;
}

static u64 time_ref_count(void) { return rdmsr(HV_X64_MSR_TIME_REF_COUNT); }

/* Linux's order: reference TSC page, VP_INDEX, GUEST_OS_ID, read then write HYPERCALL. */
static void set_up(void)
{
    memset(hc_page, 0x0f, sizeof hc_page); /* 0f 0b = ud2 pairs: the RAM under the overlay */
    for (unsigned i = 1; i < sizeof hc_page; i += 2)
        hc_page[i] = 0x0b;
    struct answer early = direct_call(HV_EXT_CALL_QUERY_CAPABILITIES, 0, gpa(out_page));
    check(early.vec == VEC_UD, "a call before the page is enabled: #UD (vector %d)", early.vec);

    if (has_priv(9)) {
        wrmsr(HV_X64_MSR_REFERENCE_TSC, gpa(tsc_page) | 1);
        u32 seq = *(volatile u32 *)tsc_page;
        check(seq != 0 && seq != 0xffffffff, "reference TSC page sequence %u", seq);
    }
    check(rdmsr(HV_X64_MSR_VP_INDEX) == 0, "VP_INDEX 0 on the BSP");
    /* Enabling without an OS id leaves the enable bit clear. */
    wrmsr(HV_X64_MSR_HYPERCALL, gpa(hc_page) | 1);
    check((rdmsr(HV_X64_MSR_HYPERCALL) & 1) == 0, "no enable without a guest OS id");
    wrmsr(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID);
    check(rdmsr(HV_X64_MSR_GUEST_OS_ID) == LINUX_OS_ID, "GUEST_OS_ID reads back");
    u64 hc = rdmsr(HV_X64_MSR_HYPERCALL);
    wrmsr(HV_X64_MSR_HYPERCALL, (hc & 0xffe) | gpa(hc_page) | 1);
    check(rdmsr(HV_X64_MSR_HYPERCALL) == (gpa(hc_page) | 1), "HYPERCALL enabled");

    const u8 *p = hc_page;
    bool vmcall = p[0] == 0x0f && p[1] == 0x01 && p[2] == 0xc1 && p[3] == 0xc3;
    bool vmmcall = p[0] == 0x0f && p[1] == 0x01 && p[2] == 0xd9 && p[3] == 0xc3;
    check(vmcall || vmmcall, "page holds vmcall;ret or vmmcall;ret (%02x %02x %02x %02x)", p[0],
          p[1], p[2], p[3]);
    check(p[4] == 0xcc && p[4095] == 0xcc, "rest of the page is int3");
    ureg ignored;
    int v = try_call(write_overlay, 100, &ignored);
    check(v == VEC_GP, "a write to the overlay is #GP (vector %d)", v);
}

static void check_calls(void)
{
    bool rec_flush = (recommendations >> 2) & 1, rec_ipi = (recommendations >> 10) & 1;
    bool rec_ex = (recommendations >> 11) & 1;
    u16 flush_ok = flush_denied ? HV_STATUS_OPERATION_DENIED : HV_STATUS_SUCCESS;

    expect_status("code 0xbeef", hv_call(0xbeef, 0, 0), HV_STATUS_INVALID_HYPERCALL_CODE);
    expect_status("PostMessage", hv_call(HVCALL_POST_MESSAGE, gpa(in_page), 0),
                  has_priv(36) ? HV_STATUS_INVALID_HYPERCALL_INPUT : HV_STATUS_ACCESS_DENIED);
    expect_status("SignalEvent", hv_call(HVCALL_SIGNAL_EVENT, gpa(in_page), 0),
                  has_priv(37) ? HV_STATUS_INVALID_HYPERCALL_INPUT : HV_STATUS_ACCESS_DENIED);
    expect_status("ResetDebugSession", hv_call(HVCALL_RESET_DEBUG_SESSION, 0, gpa(out_page)),
                  has_priv(43) ? HV_STATUS_SUCCESS : HV_STATUS_ACCESS_DENIED);
    memset(in_page, 0, sizeof in_page);
    expect_status("FlushVirtualAddressSpace", hv_call(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, gpa(in_page), 0),
                  rec_flush ? flush_ok : HV_STATUS_ACCESS_DENIED);
    expect_status("FlushVirtualAddressSpaceEx",
                  hv_call(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX, gpa(in_page), 0),
                  rec_flush && rec_ex ? flush_ok : HV_STATUS_ACCESS_DENIED);
    expect_status("SendSyntheticClusterIpi vector 0", hv_call(HVCALL_SEND_IPI, gpa(in_page), 0),
                  rec_ipi ? HV_STATUS_INVALID_HYPERCALL_INPUT : HV_STATUS_ACCESS_DENIED);
    expect_status("SendSyntheticClusterIpiEx, empty set", hv_call(HVCALL_SEND_IPI_EX, gpa(in_page), 0),
                  rec_ipi && rec_ex ? HV_STATUS_SUCCESS : HV_STATUS_ACCESS_DENIED);
    expect_status("NotifyLongSpinWait",
                  hv_call(HVCALL_NOTIFY_LONG_SPIN_WAIT | HV_HYPERCALL_FAST_BIT, 1, 0),
                  spin_retries != 0 && spin_retries != 0xffffffff ? HV_STATUS_SUCCESS
                                                                 : HV_STATUS_ACCESS_DENIED);
    if (!want_disabled && rec_flush && !((features >> 4) & 1)) {
        struct answer a = hv_call(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE | HV_HYPERCALL_FAST_BIT, 0, 0);
        check(a.vec == VEC_UD, "fast flush without XMM input: #UD (vector %d)", a.vec);
    }
    *(volatile u64 *)out_page = ~0ull;
    expect_status("HvExtCallQueryCapabilities", hv_call(HV_EXT_CALL_QUERY_CAPABILITIES, 0, gpa(out_page)),
                  has_priv(52) ? HV_STATUS_SUCCESS : HV_STATUS_ACCESS_DENIED);
    if (!want_disabled && has_priv(52)) {
        check(*(volatile u64 *)out_page == 0, "no extended capabilities");
        expect_status("fast HvExtCallQueryCapabilities",
                      hv_call(HV_EXT_CALL_QUERY_CAPABILITIES | HV_HYPERCALL_FAST_BIT, 0, 0),
                      HV_STATUS_INVALID_PARAMETER);
        expect_status("reserved bit 63", hv_call(HV_EXT_CALL_QUERY_CAPABILITIES | 1ull << 63, 0, gpa(out_page)),
                      HV_STATUS_INVALID_HYPERCALL_INPUT);
        expect_status("rep count on a simple call",
                      hv_call(HV_EXT_CALL_QUERY_CAPABILITIES | 1ull << 32, 0, gpa(out_page)),
                      HV_STATUS_INVALID_HYPERCALL_INPUT);
        expect_status("misaligned output GPA", hv_call(HV_EXT_CALL_QUERY_CAPABILITIES, 0, gpa(out_page) + 4),
                      HV_STATUS_INVALID_ALIGNMENT);
        expect_status("output GPA outside RAM",
                      hv_call(HV_EXT_CALL_QUERY_CAPABILITIES, 0, 0xfffffffff000ull),
                      HV_STATUS_INVALID_ALIGNMENT);
    }
    if (!want_disabled && rec_flush) {
        /* 500 reps need two exits; the continuation is invisible through the page. */
        u64 *in = (u64 *)in_page;
        in[0] = 0;
        in[1] = 0;
        in[2] = 1; /* VP 0 */
        for (unsigned i = 0; i < 500; i++)
            in[3 + i] = 0x400000 + 0x1000 * i;
        struct answer a = hv_call(HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST | 500ull << 32, gpa(in_page), 0);
        if (flush_denied)
            check(a.vec == 0 && status(a) == HV_STATUS_OPERATION_DENIED,
                  "FlushVirtualAddressList without a VMM flush: OPERATION_DENIED (%u)", status(a));
        else
            check(a.vec == 0 && status(a) == 0 && reps_done(a) == 500,
                  "FlushVirtualAddressList 500 reps: status %u, reps completed %u", status(a),
                  reps_done(a));
    }
}

static volatile u32 ipi_seen;
static void on_ipi(struct trap_frame *f)
{
    (void)f;
    __atomic_add_fetch(&ipi_seen, 1, __ATOMIC_SEQ_CST);
}

static void check_self_ipi(void)
{
    if (want_disabled || !((recommendations >> 10) & 1))
        return;
    set_irq_handler(IPI_VECTOR, on_ipi);
#if RT_64BIT
    struct hc_regs r;
    memset(&r, 0, sizeof r);
    r.rcx = HVCALL_SEND_IPI | HV_HYPERCALL_FAST_BIT;
    r.rdx = IPI_VECTOR;
    r.r8 = 1ull << this_vcpu();
    int v = hypercall_via(hc_page, &r);
    u16 st = (u16)r.rax;
#else
    struct hc_regs r;
    memset(&r, 0, sizeof r);
    r.eax = HVCALL_SEND_IPI | HV_HYPERCALL_FAST_BIT;
    r.ecx = IPI_VECTOR;
    r.esi = 1u << this_vcpu();
    int v = hypercall_via(hc_page, &r);
    u16 st = (u16)r.eax;
#endif
    for (unsigned spins = 0; !ipi_seen && spins < 1000000; spins++) {
        sti();
        pause();
        cli();
    }
    check(v == 0 && st == 0 && ipi_seen == 1, "self IPI %#x: status %u, delivered %u",
          IPI_VECTOR, st, ipi_seen);
}

static ureg ring3_call(ureg unused)
{
    (void)unused;
    struct hc_regs r;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rcx = HV_EXT_CALL_QUERY_CAPABILITIES;
#else
    r.eax = HV_EXT_CALL_QUERY_CAPABILITIES;
#endif
    hypercall_via(hc_page, &r);
    return 1;
}

static void check_time(void)
{
    if (!has_priv(1))
        return;
    u64 a = time_ref_count();
    for (volatile unsigned i = 0; i < 100000; i++)
        ;
    u64 b = time_ref_count();
    check(b >= a, "TIME_REF_COUNT monotonic (%llu -> %llu)", a, b);
    if (has_priv(9)) {
        volatile u32 *seq = (volatile u32 *)tsc_page;
        u64 scale = *(volatile u64 *)(tsc_page + 8);
        s64 offset = *(volatile s64 *)(tsc_page + 16);
        u64 tsc = rdtsc();
        u64 msr = time_ref_count();
        /* (tsc * scale) >> 64 without 128-bit arithmetic. */
        u64 hi_hi = (tsc >> 32) * (scale >> 32), lo_lo = (tsc & 0xffffffff) * (scale & 0xffffffff);
        u64 hi_lo = (tsc >> 32) * (scale & 0xffffffff), lo_hi = (tsc & 0xffffffff) * (scale >> 32);
        u64 mid = (lo_lo >> 32) + (hi_lo & 0xffffffff) + (lo_hi & 0xffffffff);
        u64 page = hi_hi + (hi_lo >> 32) + (lo_hi >> 32) + (mid >> 32) + (u64)offset;
        u64 diff = msr > page ? msr - page : page - msr;
        check(*seq != 0 && diff < 10000, "reference TSC page within 1 ms of the MSR (%llu vs %llu)",
              page, msr);
    }
}

static void finish(void)
{
    char end[16];
    if (cmdline_get("end", end, sizeof end) < 0)
        return;
    if (!strcmp(end, "crash") && ((features >> 10) & 1)) {
        gprintf("%s: expect host report: crash with P0=0x11 .. P4=0x55\n", GUEST_NAME);
        for (unsigned i = 0; i < 5; i++)
            wrmsr(HV_X64_MSR_CRASH_P0 + i, 0x11 * (i + 1));
        wrmsr(HV_X64_MSR_CRASH_CTL, 1ull << 63);
    } else if (!strcmp(end, "reset") && has_priv(7)) {
        gprintf("%s: expect host report: reboot\n", GUEST_NAME);
        wrmsr(HV_X64_MSR_RESET, 1);
    }
    check(false, "end=%s should have ended the VM", end);
}

int guest_main(const struct hvm_start_info *si)
{
    char buf[16];
    (void)si;
    want_disabled = cmdline_get("expect", buf, sizeof buf) >= 0 && !strcmp(buf, "disabled");
    flush_denied = cmdline_get("flush", buf, sizeof buf) >= 0 && !strcmp(buf, "denied");
    gprintf("%s: hyperv personality checks (%s)\n", GUEST_NAME, rt_boot_protocol_name());

    check_cpuid();
    check_msr_gating();
    set_up();
    check_calls();
    check_self_ipi();
    ureg result;
    int v = run_in_ring3(ring3_call, 0, &result);
    check(v == VEC_UD, "a hypercall from ring 3 is #UD (vector %d)", v);
    check_time();

    /* Disabling the page restores the RAM underneath and makes calls #UD again. */
    wrmsr(HV_X64_MSR_HYPERCALL, gpa(hc_page));
    check(hc_page[0] == 0x0f && hc_page[1] == 0x0b, "RAM under the page is back (%02x %02x)",
          hc_page[0], hc_page[1]);
    struct answer a = direct_call(HV_EXT_CALL_QUERY_CAPABILITIES, 0, gpa(out_page));
    check(a.vec == VEC_UD, "a call after disabling the page: #UD (vector %d)", a.vec);

    finish();
    gprintf("%s: %u passed, %u failed\n", GUEST_NAME, passed, failed);
    return failed ? 1 : 0;
}
