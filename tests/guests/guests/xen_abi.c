/* xen_abi: checks polyvisor's xen personality from the inside (docs/abi/xen.md): the CPUID
 * leaves, the hypercall page, both calling conventions, every refusal (disabled, unknown,
 * unimplemented, denied, CPL 3), every implemented sub-operation of xen_version,
 * console_io, sched_op, memory_op, hvm_op and vcpu_op with good and bad arguments and
 * pointers, interrupts (the upcall vector, SCHEDOP_block and SCHEDOP_poll woken by one), timed
 * polls measured with the TSC, and buffers at a virtual address that is not identity-mapped.
 * Built as xen_abi_pvh64 (PVH, then long mode; also bootable ELF64 direct), xen_abi64 (ELF64
 * direct) and xen_abi_pvh32 (32-bit: compat structures, results in EAX). One line per check;
 * exit status (port 0xF4) 0 only if every check passed, 1 otherwise.
 *
 * Cmdline (what the VMM was configured with, and host facts the guest cannot know):
 *   expect=enabled       (default) [hypervisor] mode = "xen", hypercalls_enabled = true,
 *                        [host] instruction = "auto" (raw VMCALL and VMMCALL both checked)
 *   expect=disabled      hypercalls off: every call -ENOSYS
 *   expect=deny          as enabled, plus deny = ["__HYPERVISOR_console_io", 24]: console_io
 *                        and vcpu_op -EPERM, the rest served
 *   version=4.17 domid=1 extra=.0    the [xen] keys configured
 *   via=page|vmcall|vmmcall          how the checks call (default page)
 *   mem_mib=N            [vm] memory_mib (reservations, maximum_ram_page)
 *   now=S                the host's Unix time just before the run (the wallclock)
 *   tsc_khz=K stable=0|1 the host facts behind the time leaf and XENFEAT_hvm_safe_pvclock
 *   r3vmcall=T r3vmmcall=T   what a CPL-3 VMCALL / VMMCALL gives on this host (host_check's
 *                        probe): `a<N>` the answer N (a-1 = -EPERM, from the personality or
 *                        the host kernel), `f<V>` exception vector V, `any` print only. Default
 *                        a-1 for both (the ABI's answer)
 *   nocheck=ring3        skip the CPL 3 calls altogether
 * With two or more vCPUs, vCPU 1 serves interrupts for the block and poll checks and checks
 * its own CPUID leaf.
 */
#include "xen_hc.h"

enum scenario { ENABLED, DISABLED, DENY };

static enum scenario sc = ENABLED;
static u32 want_version = 0x40011;
static u32 domid = 1;
static char want_extra[16] = ".0";
static u64 mem_pages;      /* [vm] memory_mib in pages, 0 if not given */
static u64 host_now;       /* Unix seconds, 0 if not given */
static u32 host_khz;       /* tsc_khz=, 0 if not given */
static int host_stable = -1;
static u64 ram_top;        /* end of the highest RAM range of the start info's memory map */
static const struct hvm_start_info *start_info;

static u8 buf[8192] __aligned(4096);
static u8 page2[4096] __aligned(4096);
static u8 shinfo[4096] __aligned(4096);
static u8 vinfo_page[4096] __aligned(4096);
static struct e820entry e820[16];

#define UPCALL_VECTOR 0xf3

static bool at_least(u32 major, u32 minor)
{
    return want_version >= (major << 16 | minor);
}

/* A pointer just below the end of RAM such that `len` bytes run past it, or 0 if unknown. */
static ureg past_ram(unsigned len)
{
    if (!ram_top || ram_top > 0xC0000000ull)
        return 0;
    return (ureg)(ram_top - len / 2);
}

static bool all(const u8 *p, size_t n, u8 v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return false;
    return true;
}

/* `s` at `p`, then NULs up to `size` bytes. */
static bool padded(const u8 *p, const char *s, size_t size)
{
    size_t n = strlen(s);
    return n < size && !memcmp(p, s, n) && all(p + n, size - n, 0);
}

static const char *fault_name(int vec)
{
    return vec ? vector_name((unsigned)vec) : "no fault";
}

/* ---------------------------------------------------------- shared with vCPU 1 */

static volatile u32 upcalls, upcall_vector_seen, upcall_vcpu_seen;
static void upcall(struct trap_frame *f)
{
    upcalls++;
    upcall_vector_seen = (u32)f->vector;
    upcall_vcpu_seen = this_vcpu();
}

/* vCPU 1 halts until vCPU 0 wakes it with an interrupt (its own upcall vector, AP_VECTOR),
   then, if `ap_go` changed, waits `ap_delay_ns` in a timed SCHEDOP_poll and sets vCPU 0's
   upcall vector (which raises it once on vCPU 0), and publishes the answer. It never spins:
   the host's cores are shared. */
#define AP_VECTOR 0xf4
static volatile u32 ap_go, ap_done;
static volatile u64 ap_delay_ns;
static volatile long ap_answer, ap_poll_answer;
static volatile u32 ap_leaf4[3];
static volatile u32 ap_serving;

static u64 xen_now(void);

void guest_ap_main(unsigned vcpu)
{
    cli();
    if (vcpu != 1) {
        for (;;)
            sti_hlt();
    }
    u32 r[4];
    cpuid(0x40000004, 0, r);
    ap_leaf4[0] = r[0];
    ap_leaf4[1] = r[1];
    ap_leaf4[2] = r[2];
    __atomic_store_n(&ap_serving, 1, __ATOMIC_RELEASE);
    u32 seen = 0;
    for (;;) {
        u32 go = __atomic_load_n(&ap_go, __ATOMIC_ACQUIRE);
        if (go == seen) {
            sti_hlt();
            cli();
            continue;
        }
        seen = go;
        static u32 port = 1;
        struct sched_poll p = {&port, 1, xen_now() + ap_delay_ns};
        ap_poll_answer = HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p));
        struct xen_hvm_evtchn_upcall_vector uv = {0, UPCALL_VECTOR};
        ap_answer = HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv));
        __atomic_store_n(&ap_done, go, __ATOMIC_RELEASE);
    }
}

/* ------------------------------------------------------------------ CPUID */

static void check_cpuid(void)
{
    u32 r[4];
    u32 base = xen_cpuid_base();
    check(base == 0x40000000, "Xen leaves at 0x40000000 (got 0x%x)", base);
    cpuid(0x40000000, 0, r);
    check(r[0] == 0x40000005 && r[1] == 0x566e6558 && r[2] == 0x65584d4d && r[3] == 0x4d4d566e,
          "base+0 = 0x40000005, \"XenVMMXenVMM\" (got 0x%x)", r[0]);
    cpuid(0x40000001, 0, r);
    check(r[0] == want_version && !r[1] && !r[2] && !r[3],
          "base+1 = version 0x%x, 0, 0, 0 (got 0x%x, %u, %u, %u)", want_version, r[0], r[1], r[2],
          r[3]);
    cpuid(0x40000002, 0, r);
    check(r[0] == 1 && r[1] == 0x40000000 && !r[2] && !r[3],
          "base+2 = 1 page, MSR 0x40000000, 0, 0 (got %u, 0x%x, %u, %u)", r[0], r[1], r[2], r[3]);

    u32 t0[4], t1[4], t2[4], t3[4];
    cpuid(0x40000003, 0, t0);
    cpuid(0x40000003, 1, t1);
    cpuid(0x40000003, 2, t2);
    cpuid(0x40000003, 3, t3);
    gprintf("%s: time leaf: flags 0x%x, mode %u, %u kHz; mul 0x%x shift %d\n", GUEST_NAME, t0[0],
            t0[1], t0[2], t1[2], (int)t1[3]);
    check(t0[1] == 2 && t0[3] == 0, "base+3.0: TSC mode 2 (never emulated), incarnation 0");
    if (host_stable >= 0)
        check(t0[0] == (host_stable ? 2u : 0u),
              "base+3.0 EAX = 0x%x (HOST_TSC_RELIABLE iff the host TSC is stable) (got 0x%x)",
              host_stable ? 2u : 0u, t0[0]);
    if (host_khz)
        check(t0[2] == host_khz, "base+3.0 ECX = the TSC rate, %u kHz (got %u)", host_khz, t0[2]);
    check(t2[0] == t0[2] && !t2[1] && !t2[2] && !t2[3], "base+3.2 = the TSC kHz again, 0, 0, 0");
    check(!t1[0] && !t1[1], "base+3.1: TSC offset 0");
    /* One millisecond of TSC ticks scales to 1 ms of system time (within 0.1%). */
    u64 ns = xen_scale_delta(t0[2], t1[2], (s8)t1[3]);
    check(t0[2] && ns > 999000 && ns < 1001000,
          "base+3.1 mul/shift scale %u ticks (1 ms) to %llu ns", t0[2], ns);
    check(!t3[0] && !t3[1] && !t3[2] && !t3[3], "base+3.3 reads as zero");
    cpuid(0x40000004, 0, r);
    check(r[0] == 0x18 && r[1] == 0 && r[2] == domid && r[3] == 0,
          "base+4 = VCPU_ID|DOMID present, vCPU 0, domid %u (got 0x%x, %u, %u)", domid, r[0],
          r[1], r[2]);
    cpuid(0x40000004, 1, r);
    check(!r[0] && !r[1] && !r[2] && !r[3], "base+4.1 reads as zero");
    cpuid(0x40000005, 0, r);
    check(!r[0] && !r[1] && !r[2] && !r[3], "base+5 is empty for HVM");
}

/* ------------------------------------------------------------- the page */

static void check_page(enum xen_via native)
{
    u64 v = 1;
    int vec = rdmsr_safe(0x40000000, &v);
    check(vec == 0 && v == 0, "rdmsr 0x40000000 reads 0 (got %s, 0x%llx)", fault_name(vec), v);
    memset(xen_hypercall_page, 0, sizeof xen_hypercall_page);
    static const u32 indexes[] = {1, 0x800, 0xfff};
    for (unsigned i = 0; i < ARRAY_SIZE(indexes); i++) {
        vec = wrmsr_safe(0x40000000, PTR(xen_hypercall_page) | indexes[i]);
        check(vec == VEC_GP, "wrmsr with page index 0x%x -> #GP (got %s)", indexes[i],
              fault_name(vec));
    }
    check(all(xen_hypercall_page, 4096, 0), "nothing written for a refused page index");
    if (ram_top && ram_top <= 0xFFFFF000ull) {
        vec = wrmsr_safe(0x40000000, ram_top);
        check(vec == VEC_GP, "wrmsr with a frame past RAM -> #GP (got %s)", fault_name(vec));
    }
    vec = wrmsr_safe(0x40000000, PTR(xen_hypercall_page));
    check(vec == 0, "wrmsr 0x40000000 = the page -> no fault (got %s)", fault_name(vec));
    const u8 *p = xen_hypercall_page;
    u8 insn = native == XEN_VIA_VMMCALL ? 0xd9 : 0xc1;
    unsigned good = 0;
    for (unsigned i = 0; i < 128; i++) {
        const u8 *s = p + i * 32;
        bool ok;
        if (i == __HYPERVISOR_iret)
            ok = s[0] == 0x0f && s[1] == 0x0b && all(s + 2, 30, 0xcc);
        else
            ok = s[0] == 0xb8 && s[1] == i && !s[2] && !s[3] && !s[4] && s[5] == 0x0f &&
                 s[6] == 0x01 && s[7] == insn && s[8] == 0xc3 && all(s + 9, 23, 0xcc);
        good += ok;
    }
    check(good == 128, "128 stubs: mov $nr,%%eax; %s; ret; 0xCC fill, ud2 at 23 (%u good)",
          native == XEN_VIA_VMMCALL ? "vmmcall" : "vmcall", good);
    v = 1;
    vec = rdmsr_safe(0x40000000, &v);
    check(vec == 0 && v == 0, "rdmsr 0x40000000 still reads 0 after the write");
}

/* ---------------------------------------------------- refusals, conventions */

static unsigned disabled_calls;
static void check_disabled(void)
{
    static const unsigned numbers[] = {12, 17, 18, 24, 29, 34, 32, 0, 99};
    enum xen_via saved = xen_via;
    static const enum xen_via ways[] = {XEN_VIA_PAGE, XEN_VIA_VMCALL, XEN_VIA_VMMCALL};
    static const char *names[] = {"page", "VMCALL", "VMMCALL"};
    for (unsigned w = 0; w < ARRAY_SIZE(ways); w++) {
        xen_via = ways[w];
        for (unsigned i = 0; i < ARRAY_SIZE(numbers); i++) {
            EXPECT(HC2(numbers[i], 0, 0), -XEN_ENOSYS, "hypercalls off: number %u through %s",
                   numbers[i], names[w]);
            disabled_calls++;
        }
    }
    xen_via = saved;
    gprintf("%s: %u calls made while disabled\n", GUEST_NAME, disabled_calls);
}

/* The registers after a call through `xen_via`, every one but the number and the first
   argument set to a marker. */
static bool call_keeps_registers(void)
{
    struct hc_regs r, before;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rax = __HYPERVISOR_xen_version;
    r.rdi = XENVER_version;
    r.rbx = 0x1111111111111111ull;
    r.rcx = 0x2222222222222222ull;
    r.rdx = 0x3333333333333333ull;
    r.rsi = 0x4444444444444444ull;
    r.r8 = 0x5555555555555555ull;
    r.r9 = 0x6666666666666666ull;
    r.r10 = 0x7777777777777777ull;
    r.r11 = 0x8888888888888888ull;
#else
    r.eax = __HYPERVISOR_xen_version;
    r.ebx = XENVER_version;
    r.ecx = 0x22222222;
    r.edx = 0x33333333;
    r.esi = 0x44444444;
    r.edi = 0x55555555;
    r.ebp = 0x66666666;
#endif
    before = r;
    int vec;
    if (xen_via == XEN_VIA_PAGE)
        vec = hypercall_via(xen_hypercall_page + __HYPERVISOR_xen_version * 32, &r);
    else if (xen_via == XEN_VIA_VMMCALL)
        vec = hypercall_vmmcall(&r);
    else
        vec = hypercall_vmcall(&r);
#if RT_64BIT
    bool ok = !vec && r.rax == want_version;
    before.rax = r.rax;
#else
    bool ok = !vec && r.eax == want_version;
    before.eax = r.eax;
#endif
    return ok && !memcmp(&r, &before, sizeof r);
}

/* --- CPL 3 */

static enum xen_via ring3_how;
static volatile long ring3_answer;
static ureg ring3_version(ureg unused)
{
    (void)unused;
    struct hc_regs r;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rax = __HYPERVISOR_xen_version;
#else
    r.eax = __HYPERVISOR_xen_version;
#endif
    if (ring3_how == XEN_VIA_PAGE)
        hypercall_via_raw(xen_hypercall_page + 17 * 32, &r);
    else if (ring3_how == XEN_VIA_VMMCALL)
        hypercall_vmmcall_raw(&r);
    else
        hypercall_vmcall_raw(&r);
#if RT_64BIT
    ring3_answer = (long)r.rax;
#else
    ring3_answer = (long)(s32)r.eax;
#endif
    return 0;
}

/* What the host test expects a CPL-3 call with `insn` to give (r3vmcall= / r3vmmcall=). */
static void ring3_expectation(enum xen_via insn, char *tok, size_t len)
{
    const char *key = insn == XEN_VIA_VMMCALL ? "r3vmmcall" : "r3vmcall";
    if (cmdline_get(key, tok, len) < 0) {
        tok[0] = 'a';
        tok[1] = '-';
        tok[2] = '1';
        tok[3] = 0;
    }
}

static void check_ring3(void)
{
    static const enum xen_via ways[] = {XEN_VIA_VMCALL, XEN_VIA_VMMCALL, XEN_VIA_PAGE};
    for (unsigned i = 0; i < ARRAY_SIZE(ways); i++) {
        ring3_how = ways[i];
        enum xen_via insn = ways[i];
        if (insn == XEN_VIA_PAGE)
            insn = xen_hypercall_page[7] == 0xd9 ? XEN_VIA_VMMCALL : XEN_VIA_VMCALL;
        const char *name = ways[i] == XEN_VIA_PAGE
                               ? (insn == XEN_VIA_VMMCALL ? "the page (VMMCALL)" : "the page (VMCALL)")
                               : (insn == XEN_VIA_VMMCALL ? "VMMCALL" : "VMCALL");
        char tok[24];
        ring3_expectation(insn, tok, sizeof tok);
        ring3_answer = 12345;
        ureg res;
        int vec = run_in_ring3(ring3_version, 0, &res);
        char seen[32];
        if (vec)
            gsnprintf(seen, sizeof seen, "f%d", vec);
        else
            gsnprintf(seen, sizeof seen, "a%ld", ring3_answer);
        gprintf("%s: xen_version at CPL 3 through %s: %s%s (host expects %s)\n", GUEST_NAME, name,
                vec ? "fault " : "answer ", vec ? vector_name((unsigned)vec) : seen + 1, tok);
        if (strcmp(tok, "any"))
            check(!strcmp(seen, tok), "xen_version at CPL 3 through %s -> %s (got %s)", name, tok,
                  seen);
    }
    check(current_cpl() == 0, "back at CPL 0 after the CPL 3 calls");
}

static void check_conventions(void)
{
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_version, 0), want_version, "XENVER_version");
    check(call_keeps_registers(), "only %s changes (every other register as it was)",
          RT_64BIT ? "RAX" : "EAX");
    enum xen_via saved = xen_via;
    static const enum xen_via raws[] = {XEN_VIA_VMCALL, XEN_VIA_VMMCALL, XEN_VIA_PAGE};
    static const char *names[] = {"raw VMCALL", "raw VMMCALL", "the page"};
    for (unsigned i = 0; i < ARRAY_SIZE(raws); i++) {
        xen_via = raws[i];
        EXPECT(HC2(__HYPERVISOR_xen_version, 0, 0), want_version, "%s: XENVER_version", names[i]);
        check(call_keeps_registers(), "%s: only the result register changes", names[i]);
    }
    xen_via = saved;
    /* PV-only and unknown numbers, unimplemented rows. */
    static const unsigned unknown[] = {0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 14, 16, 19, 22, 23,
                                       25, 28, 30, 31, 37, 38, 43, 48, 50, 63, 99, 127};
    for (unsigned i = 0; i < ARRAY_SIZE(unknown); i++) {
        /* Through the page, iret's stub is ud2. */
        bool ud2 = xen_via == XEN_VIA_PAGE && unknown[i] == __HYPERVISOR_iret;
        EXPECT(HC2(unknown[i], 0, 0), ud2 ? XEN_FAULTED - VEC_UD : -XEN_ENOSYS,
               "number %u (not an HVM hypercall%s)", unknown[i], ud2 ? ", page stub: #UD" : "");
    }
    static const unsigned unimplemented[] = {7, 13, 20, 21, 26, 27, 33, 35, 36, 39, 40, 41, 42, 49};
    for (unsigned i = 0; i < ARRAY_SIZE(unimplemented); i++)
        EXPECT(HC2(unimplemented[i], 0, 0), -XEN_ENOSYS, "number %u (not implemented)",
               unimplemented[i]);
    /* A number past the page (128 and more) through a raw instruction. */
    xen_via = saved == XEN_VIA_PAGE ? XEN_VIA_VMCALL : saved;
    EXPECT(HC2(200, 0, 0), -XEN_ENOSYS, "number 200");
#if RT_64BIT
    /* All of RAX is the number; an int argument is 32 bits, an unsigned long all 64. */
    EXPECT(xen_hypercall(0x100000011ull, 0, 0, 0, 0, 0), -XEN_ENOSYS, "RAX = 0x100000011");
    xen_via = saved;
    EXPECT(HC2(__HYPERVISOR_xen_version, 0xffffffff00000000ul, 0), want_version,
           "xen_version with cmd 0xffffffff00000000 (an int: 0)");
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page | (1ul << 40), 0), -XEN_EINVAL,
           "memory_op cmd with bit 40 set (an unsigned long: a start extent)");
#endif
    xen_via = saved;
}

/* --------------------------------------------------------------- xen_version */

static long xv(unsigned cmd, void *arg)
{
    return HC2(__HYPERVISOR_xen_version, cmd, PTR(arg));
}

/* A xen_varbuf sub-op (4.20+): size, too small, exact. */
static void check_varbuf(unsigned cmd, const char *name, const char *want)
{
    long n = (long)strlen(want);
    if (!at_least(4, 20)) {
        EXPECT(xv(cmd, NULL), -XEN_ENOSYS, "%s before Xen 4.20", name);
        EXPECT(xv(cmd, buf), -XEN_ENOSYS, "%s with a buffer before Xen 4.20", name);
        return;
    }
    EXPECT(xv(cmd, NULL), n, "%s(NULL): the length", name);
    memset(buf, 0xaa, 2048);
    *(u32 *)buf = (u32)n - 1;
    EXPECT(xv(cmd, buf), -XEN_ENOBUFS, "%s with len %ld", name, n - 1);
    check(buf[4] == 0xaa, "%s: nothing written when too small", name);
    *(u32 *)buf = (u32)n;
    EXPECT(xv(cmd, buf), n, "%s with len %ld", name, n);
    check(*(u32 *)buf == (u32)n && !memcmp(buf + 4, want, (size_t)n) && buf[4 + n] == 0xaa,
          "%s: \"%s\" after len, no NUL", name, want);
}

static void check_version(void)
{
    EXPECT(xv(XENVER_version, NULL), want_version, "XENVER_version");
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_extraversion, buf), 0, "XENVER_extraversion");
    check(padded(buf, want_extra, 16) && buf[16] == 0xaa,
          "extraversion \"%s\" NUL-padded to 16 bytes", want_extra);
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_compile_info, buf), 0, "XENVER_compile_info");
    struct xen_compile_info *ci = (struct xen_compile_info *)buf;
    check(padded((u8 *)ci->compiler, "polyvisor", 64) &&
              padded((u8 *)ci->compile_by, "polyvisor", 16) &&
              all((u8 *)ci->compile_domain, 32, 0) && all((u8 *)ci->compile_date, 32, 0) &&
              buf[144] == 0xaa,
          "compile_info: compiler[64], compile_by[16] \"polyvisor\", domain[32], date[32] "
          "empty, all NUL-padded, 144 bytes");
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_capabilities, buf), 0, "XENVER_capabilities");
    check(padded(buf, "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ", 1024) &&
              buf[1024] == 0xaa,
          "capabilities: HVM-only string NUL-padded to 1024");
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_changeset, buf), 0, "XENVER_changeset");
    check(padded(buf, "unavailable", 64) && buf[64] == 0xaa,
          "changeset: \"unavailable\" NUL-padded to 64");
    memset(buf, 0xaa, 16);
    EXPECT(xv(XENVER_platform_parameters, buf), 0, "XENVER_platform_parameters");
    check(all(buf, sizeof(ureg), 0) && buf[sizeof(ureg)] == 0xaa, "virt_start = 0, %u bytes",
          (unsigned)sizeof(ureg));
    struct xen_feature_info fi = {0, 0xffffffff};
    EXPECT(xv(XENVER_get_features, &fi), 0, "XENVER_get_features(0)");
    u32 want_feat = 1u << XENFEAT_writable_page_tables | 1u << XENFEAT_auto_translated_physmap |
                    1u << XENFEAT_not_direct_mapped;
    if (host_stable == 1 && host_khz)
        want_feat |= 1u << XENFEAT_hvm_safe_pvclock;
    if (host_stable >= 0)
        check(fi.submap_idx == 0 && fi.submap == want_feat,
              "features 0x%x: writable_page_tables, auto_translated_physmap, not_direct_mapped"
              "%s (got 0x%x)", want_feat, want_feat & 0x200 ? ", hvm_safe_pvclock" : "",
              fi.submap);
    check(!(fi.submap & (1u << XENFEAT_hvm_callback_vector)) && !(fi.submap & (1u << 10)),
          "no hvm_callback_vector, no hvm_pirqs (no event channels)");
    fi.submap_idx = 1;
    EXPECT(xv(XENVER_get_features, &fi), -XEN_EINVAL, "XENVER_get_features(1)");
    EXPECT(xv(XENVER_pagesize, NULL), 4096, "XENVER_pagesize(NULL)");
    EXPECT(xv(XENVER_pagesize, buf), -XEN_EINVAL, "XENVER_pagesize(non-NULL)");
    memset(buf, 0xaa, 32);
    EXPECT(xv(XENVER_guest_handle, buf), 0, "XENVER_guest_handle");
    check(all(buf, 16, 0) && buf[16] == 0xaa, "guest handle: 16 zero bytes");
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_commandline, buf), 0, "XENVER_commandline");
    check(!memcmp(buf, "<denied>", 9) && buf[9] == 0xaa, "command line \"<denied>\" to a domU");
    memset(buf, 0xaa, 64);
    EXPECT(xv(XENVER_build_id, buf), -XEN_EPERM, "XENVER_build_id (privileged)");
    check_varbuf(XENVER_extraversion2, "XENVER_extraversion2", want_extra);
    check_varbuf(XENVER_capabilities2, "XENVER_capabilities2",
                 "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ");
    check_varbuf(XENVER_changeset2, "XENVER_changeset2", "unavailable");
    EXPECT(xv(XENVER_commandline2, buf), at_least(4, 20) ? -XEN_EPERM : -XEN_ENOSYS,
           "XENVER_commandline2");
    EXPECT(xv(15, buf), -XEN_ENOSYS, "xen_version sub-op 15");
    EXPECT(xv(0x7fffffff, buf), -XEN_ENOSYS, "xen_version sub-op 0x7fffffff");
    ureg bad = past_ram(16);
    if (bad)
        EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_extraversion, bad), -XEN_EFAULT,
               "XENVER_extraversion into the end of RAM");
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_capabilities, (ureg)-16), -XEN_EFAULT,
           "XENVER_capabilities at a wrapping pointer");
}

/* ----------------------------------------------------------------- console */

static void check_console(void)
{
    static const char line[] = GUEST_NAME ": a line through CONSOLEIO_write\n";
    if (sc == DENY) {
        EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof line - 1, PTR(line)),
               -XEN_EPERM, "CONSOLEIO_write denied by the configuration");
        EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 16, PTR(buf)), -XEN_EPERM,
               "CONSOLEIO_read denied by the configuration");
        EXPECT(HC3(__HYPERVISOR_console_io, 2, 0, 0), -XEN_EPERM,
               "console_io command 2 denied by the configuration");
        return;
    }
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof line - 1, PTR(line)), 0,
           "CONSOLEIO_write");
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, 0, 0), 0, "CONSOLEIO_write of nothing");
    /* 5000 bytes: more than one trap writes (4096), so it continues by re-executing. The host
       test checks the text arrived whole. */
    static char big[5001];
    for (unsigned i = 0; i < 5000; i++)
        big[i] = i % 100 == 99 ? '\n' : (char)('a' + i % 26);
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, 5000, PTR(big)), 0,
           "CONSOLEIO_write of 5000 bytes (50 lines of letters above)");
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, 64, (ureg)-32), -XEN_EFAULT,
           "CONSOLEIO_write from a wrapping pointer");
    /* console_in=TEXT: the host attached TEXT as console input ([vm] console_input); the
       first read returns exactly it. Then (or without input) a read returns 0 and writes
       nothing. */
    char want_in[48];
    if (cmdline_get("console_in", want_in, sizeof want_in) >= 0) {
        long n = (long)strlen(want_in);
        memset(buf, 0xaa, 128);
        EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 64, PTR(buf)), n,
               "CONSOLEIO_read returns the host's input");
        check(strncmp((const char *)buf, want_in, (size_t)n) == 0 && all(buf + n, 128 - n, 0xaa),
              "CONSOLEIO_read wrote exactly the host's bytes");
    }
    memset(buf, 0xaa, 128);
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 64, PTR(buf)), 0,
           "CONSOLEIO_read with no input pending");
    check(all(buf, 128, 0xaa), "CONSOLEIO_read wrote nothing");
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 0, 0), 0, "CONSOLEIO_read of 0 bytes");
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 16, (ureg)-8), -XEN_EFAULT,
           "CONSOLEIO_read into a wrapping pointer");
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 0x80000000u, PTR(buf)), -XEN_E2BIG,
           "CONSOLEIO_read of more than INT_MAX");
    EXPECT(HC3(__HYPERVISOR_console_io, 2, 1, PTR(buf)), -XEN_ENOSYS, "console_io command 2");
}

/* ------------------------------------------------------------------ sched_op */

static u64 xen_now(void)
{
    u64 now = 0;
    HC2(__HYPERVISOR_hvm_op, HVMOP_get_time, PTR(&now));
    return now;
}

static u32 ports[2] = {1, 2};

static void check_sched_basic(void)
{
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0), 0, "SCHEDOP_yield");
    struct sched_poll p = {ports, 129, 0};
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), -XEN_EINVAL, "poll of 129 ports");
    p.nr_ports = 2;
    p.ports = (u32 *)(uptr)-4;
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), -XEN_EFAULT,
           "poll with a wrapping port array");
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, (ureg)-8), -XEN_EFAULT,
           "poll with a wrapping sched_poll");
    p.ports = ports;
    p.timeout = 1; /* long past */
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), 0, "poll with a past timeout");
    struct {
        u16 domid;
        u32 reason;
    } rs = {(u16)domid, 0};
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, PTR(&rs)), -XEN_EPERM,
           "SCHEDOP_remote_shutdown of itself");
    rs.domid = 0;
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, PTR(&rs)), -XEN_ESRCH,
           "SCHEDOP_remote_shutdown of domain 0");
    rs.domid = DOMID_SELF;
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, PTR(&rs)), -XEN_ESRCH,
           "SCHEDOP_remote_shutdown of DOMID_SELF");
    EXPECT(HC2(__HYPERVISOR_sched_op, 6, PTR(buf)), -XEN_ENOSYS, "SCHEDOP_watchdog");
    EXPECT(HC2(__HYPERVISOR_sched_op, 7, PTR(buf)), -XEN_EPERM, "SCHEDOP_pin_override");
    EXPECT(HC2(__HYPERVISOR_sched_op, 99, 0), -XEN_ENOSYS, "sched_op command 99");
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (ureg)-2), -XEN_EFAULT,
           "SCHEDOP_shutdown with a wrapping pointer");
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_shutdown_code, (ureg)-2), -XEN_EFAULT,
           "SCHEDOP_shutdown_code with a wrapping pointer");
}

/* A timed poll halts until its deadline: measured with the TSC and with system time. */
static void check_timed_poll(void)
{
    u32 khz = xen_tsc_khz();
    const u64 wait_ns = 20000000; /* 20 ms */
    struct sched_poll p = {ports, 2, 0};
    cli();
    u64 tsc0 = rdtsc();
    u64 t0 = xen_now();
    p.timeout = t0 + wait_ns;
    long rc = HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p));
    u64 tsc1 = rdtsc();
    u64 t1 = xen_now();
    u64 us = tsc_to_us(tsc1 - tsc0, khz);
    gprintf("%s: a poll with a 20 ms timeout took %llu us by the TSC, %llu us of system time\n",
            GUEST_NAME, us, udiv64(t1 - t0, 1000, NULL));
    check(rc == 0, "poll with a 20 ms timeout -> 0 (got %ld)", rc);
    check(t1 >= p.timeout, "it returned at or after its deadline in system time");
    check(khz && us >= 19900 && us < 1000000,
          "the guest TSC saw it wait ~20 ms (%llu us, at %u kHz)", us, khz);
}

/* Starts vCPU 1's timer: in `ms` milliseconds it raises the upcall vector on vCPU 0. vCPU 1 is
   woken by its own upcall vector. */
static void ap_kick_after(u32 ms)
{
    ap_delay_ns = (u64)ms * 1000000;
    __atomic_store_n(&ap_go, ap_go + 1, __ATOMIC_RELEASE);
    struct xen_hvm_evtchn_upcall_vector uv = {1, AP_VECTOR};
    long rc = HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv));
    if (rc)
        gprintf("%s: waking vCPU 1 failed: %ld\n", GUEST_NAME, rc);
}

static bool ap_finished(void)
{
    u64 start = rdtsc(), limit = (u64)xen_tsc_khz() * 2000;
    while (__atomic_load_n(&ap_done, __ATOMIC_ACQUIRE) != ap_go && rdtsc() - start < limit)
        pause();
    return __atomic_load_n(&ap_done, __ATOMIC_ACQUIRE) == ap_go;
}

/* Waits with interrupts enabled until `n` upcalls arrived (at most `ms`), then `quiet_ms` more
   to see that no other comes. */
static void wait_upcalls(unsigned n, u32 ms, u32 quiet_ms)
{
    u32 khz = xen_tsc_khz();
    u64 start = rdtsc();
    sti();
    while (upcalls < n && rdtsc() - start < (u64)khz * ms)
        pause();
    start = rdtsc();
    while (rdtsc() - start < (u64)khz * quiet_ms)
        pause();
    cli();
}

/* A halt that must wake on an interrupt: vCPU 1 raises one 20 ms after it starts. */
static void check_woken(const char *what, ureg cmd, ureg arg)
{
    u32 khz = xen_tsc_khz();
    cli();
    upcalls = 0;
    u64 tsc0 = rdtsc();
    ap_kick_after(20);
    long rc = xen_sti_hypercall2(__HYPERVISOR_sched_op, cmd, arg);
    u64 tsc1 = rdtsc();
    u64 us = tsc_to_us(tsc1 - tsc0, khz);
    wait_upcalls(1, 500, 5);
    gprintf("%s: %s returned after %llu us\n", GUEST_NAME, what, us);
    check(rc == 0, "%s -> 0 (got %ld)", what, rc);
    check(us >= 19900 && us < 1020000,
          "%s halted until vCPU 1 raised an interrupt 20 ms later (%llu us)", what, us);
    check(ap_finished() && ap_answer == 0 && ap_poll_answer == 0,
          "vCPU 1 woken by its own upcall vector, its timed poll and "
          "HVMOP_set_evtchn_upcall_vector for vCPU 0 -> 0 (%ld, %ld)", ap_poll_answer, ap_answer);
    check(upcalls == 1 && upcall_vector_seen == UPCALL_VECTOR && upcall_vcpu_seen == 0,
          "vector 0x%x reached vCPU 0's IDT handler once (%u times, vector 0x%x)", UPCALL_VECTOR,
          upcalls, upcall_vector_seen);
}

static unsigned interrupts_expected;

static void check_sched_smp(void)
{
    struct vcpu_info *vi = (struct vcpu_info *)(vinfo_page + 64);
    vi->evtchn_upcall_mask = 1;
    /* Events already pending would end the block at once (vcpu_block): none are. */
    vi->evtchn_upcall_pending = 0;
    check_woken("SCHEDOP_block", SCHEDOP_block, 0);
    check(vi->evtchn_upcall_mask == 0, "SCHEDOP_block cleared evtchn_upcall_mask in vcpu_info");
    static struct sched_poll p;
    p.ports = ports;
    p.nr_ports = 1;
    p.timeout = 0;
    check_woken("SCHEDOP_poll without a timeout", SCHEDOP_poll, PTR(&p));
    /* Two on vCPU 0, two that woke vCPU 1. */
    interrupts_expected += 4;
}

/* ----------------------------------------------------------------- memory_op */

static void check_memory(void)
{
    long max_page = HC2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page, 0);
    check(max_page == (long)(ram_top >> 12), "XENMEM_maximum_ram_page = 0x%lx, the end of RAM "
          "(got 0x%lx)", (long)(ram_top >> 12), max_page);
    if (mem_pages)
        check((u64)max_page == mem_pages, "maximum_ram_page = [vm] memory_mib in pages (%llu)",
              mem_pages);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page | (1 << 6), 0), -XEN_EINVAL,
           "XENMEM_maximum_ram_page with a start extent");
    u16 id = DOMID_SELF;
    long cur = HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, PTR(&id));
    if (mem_pages)
        check((u64)cur == mem_pages, "current reservation = %llu pages, all guest memory (got "
              "%ld)", mem_pages, cur);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_reservation, PTR(&id)), cur,
           "maximum reservation = current (%ld pages)", cur);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_gpfn, PTR(&id)), max_page - 1,
           "XENMEM_maximum_gpfn = the last RAM frame");
    id = (u16)domid;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, PTR(&id)), cur,
           "current reservation by own domid");
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_reservation, PTR(&id)), cur,
           "maximum reservation by own domid");
    id = 0;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, PTR(&id)), -XEN_ESRCH,
           "current reservation of domain 0");
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, (ureg)-1), -XEN_EFAULT,
           "current reservation at a wrapping pointer");

    /* The memory map is the VM's e820, the one in the start info. */
    struct xen_memory_map map = {ARRAY_SIZE(e820), e820};
    memset(e820, 0xaa, sizeof e820);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_memory_map, PTR(&map)), 0, "XENMEM_memory_map");
    const struct hvm_memmap_table_entry *si =
        start_info ? (const struct hvm_memmap_table_entry *)(uptr)start_info->memmap_paddr : 0;
    u32 si_n = si ? start_info->memmap_entries : 0;
    bool same = si_n > 0 && map.nr_entries == si_n;
    for (unsigned i = 0; i < map.nr_entries && i < ARRAY_SIZE(e820); i++) {
        gprintf("%s: XENMEM_memory_map %u: %016llx-%016llx type %u\n", GUEST_NAME, i,
                e820[i].addr, e820[i].addr + e820[i].size - 1, e820[i].type);
        same = same && i < si_n && e820[i].addr == si[i].addr && e820[i].size == si[i].size &&
               e820[i].type == si[i].type;
    }
    check(same, "XENMEM_memory_map = the start info's memory map (%u entries, got %u)", si_n,
          map.nr_entries);
    map.nr_entries = 1;
    memset(e820, 0xaa, sizeof e820);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_memory_map, PTR(&map)), 0,
           "XENMEM_memory_map with room for 1");
    check(map.nr_entries == 1 && si_n && e820[0].addr == si[0].addr &&
              e820[0].type == si[0].type && ((u8 *)e820)[20] == 0xaa,
          "the first 20-byte entry written, nr_entries 1");
    map.nr_entries = 8;
    map.buffer = (void *)(uptr)-8;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_memory_map, PTR(&map)), -XEN_EFAULT,
           "XENMEM_memory_map into a wrapping buffer");

    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 1,
                                   (unsigned long)(PTR(shinfo) >> 12)};
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), -XEN_EINVAL,
           "add_to_physmap shared_info idx 1");
    static const struct {
        unsigned space;
        long answer;
        const char *name;
    } spaces[] = {{1, -XEN_EINVAL, "grant_table"},        {2, -XEN_EOPNOTSUPP, "gmfn"},
                  {3, -XEN_EOPNOTSUPP, "gmfn_range"},     {4, -XEN_ENOSYS, "gmfn_foreign"},
                  {5, -XEN_EACCES, "dev_mmio"},           {9, -XEN_EINVAL, "space 9"}};
    for (unsigned i = 0; i < ARRAY_SIZE(spaces); i++) {
        x.space = spaces[i].space;
        x.idx = 0;
        EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), spaces[i].answer,
               "add_to_physmap %s", spaces[i].name);
    }
    x.space = XENMAPSPACE_shared_info;
    x.domid = 0;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), -XEN_ESRCH,
           "add_to_physmap for domain 0");
    x.domid = DOMID_SELF;
    x.gpfn = (unsigned long)(ram_top >> 12);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), -XEN_EINVAL,
           "add_to_physmap shared_info past RAM");
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap | (0x10000ul << 6), PTR(&x)),
           -XEN_EDOM, "add_to_physmap with a start extent past 16 bits");
    x.gpfn = (unsigned long)(PTR(shinfo) >> 12);
    memset(shinfo, 0xaa, sizeof shinfo);
    u64 before = xen_now();
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), 0,
           "add_to_physmap shared_info");
    u64 after = xen_now();
    struct shared_info *s = (struct shared_info *)shinfo;
#if RT_64BIT
    u32 sec_hi = s->wc_sec_hi;
#else
    u32 sec_hi = *(u32 *)(shinfo + 2340); /* arch.wc_sec_hi in the compat layout */
#endif
    check(s->wc_version == 2 && s->wc_nsec < 1000000000u && sec_hi == 0,
          "wallclock written once (version %u), nsec < 1e9, sec_hi 0", s->wc_version);
    if (host_now)
        check(s->wc_sec + 5 >= host_now && s->wc_sec <= host_now + 60,
              "wallclock %u s: when the VM started (host said %llu s before the run)", s->wc_sec,
              host_now);
    else
        check(s->wc_sec > 1600000000u, "wallclock %u s since 1970", s->wc_sec);
    struct vcpu_time_info *t = &s->vcpu_info[0].time;
    u32 l1[4];
    cpuid(0x40000003, 1, l1);
    check(t->version == 2 && t->tsc_to_system_mul == l1[2] && t->tsc_shift == (s8)l1[3],
          "vcpu_info[0].time: version 2, the time leaf's mul/shift");
    check(t->system_time >= before && t->system_time <= after,
          "vcpu_info[0].time.system_time (%llu) sampled during the call", t->system_time);
    if (host_stable >= 0)
        check(t->flags == (host_stable ? 1 : 0), "time flags: TSC_STABLE iff the TSC is stable");
    /* The pvclock gives the system time HVMOP_get_time gives: read between two of those
       (within 0.2 ms: how well the VMM samples TSC and clock together). */
    u64 hv0 = xen_now();
    u64 now_pv = t->system_time + xen_scale_delta(rdtsc() - t->tsc_timestamp,
                                                   t->tsc_to_system_mul, t->tsc_shift);
    u64 hv1 = xen_now();
    check(now_pv + 200000 >= hv0 && now_pv <= hv1 + 200000,
          "pvclock (%llu ns) between two HVMOP_get_time (%llu, %llu ns)", now_pv, hv0, hv1);
    bool others = true;
    for (unsigned v = 1; v < 32; v++)
        if (v >= vcpus_online())
            others = others && s->vcpu_info[v].time.version == 0;
        else
            others = others && s->vcpu_info[v].time.version == 2;
    check(others && s->evtchn_mask[0] == 0 && s->evtchn_pending[0] == 0 &&
              s->vcpu_info[0].evtchn_upcall_pending == 0,
          "time set for each of %u vCPUs, the rest of the page zeroed", vcpus_online());
    /* Moving it keeps the event masks. */
    s->evtchn_mask[0] = 0x5a;
    x.gpfn = (unsigned long)(PTR(page2) >> 12);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), 0,
           "add_to_physmap shared_info at another frame");
    check(((struct shared_info *)page2)->evtchn_mask[0] == 0x5a, "event masks moved with it");
    x.gpfn = (unsigned long)(PTR(shinfo) >> 12);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), 0,
           "add_to_physmap shared_info back at the first frame");
    check(s->evtchn_mask[0] == 0x5a && s->wc_version == 6 && s->vcpu_info[0].time.version == 6,
          "moved back with the masks; wallclock and time rewritten at each mapping (version 6, "
          "got %u and %u)", s->wc_version, s->vcpu_info[0].time.version);
    EXPECT(HC2(__HYPERVISOR_memory_op, 12, 0), -XEN_ENOSYS, "XENMEM_machphys_mapping");
    EXPECT(HC2(__HYPERVISOR_memory_op, 6, PTR(buf)), -XEN_ENOSYS, "XENMEM_populate_physmap");
}

/* -------------------------------------------------------------------- hvm_op */

static long param(unsigned op, u16 dom, u32 index, u64 *value)
{
    struct xen_hvm_param p = {dom, 0, index, *value};
    long rc = HC2(__HYPERVISOR_hvm_op, op, PTR(&p));
    *value = p.value;
    return rc;
}

static void check_hvm(void)
{
    /* Unset parameters read 0; the PV platform's rings and channels are set at boot
       (xen_pv checks them in use). */
    static const u32 want[][2] = {{HVM_PARAM_STORE_PFN, 0xfe},  {HVM_PARAM_STORE_EVTCHN, 1},
                                  {HVM_PARAM_CONSOLE_PFN, 0xff}, {HVM_PARAM_CONSOLE_EVTCHN, 2},
                                  {HVM_PARAM_CALLBACK_IRQ, 0},   {19, 0},
                                  {35, 0}};
    for (unsigned i = 0; i < ARRAY_SIZE(want); i++) {
        u64 v = 0x1234;
        long rc = param(HVMOP_get_param, DOMID_SELF, want[i][0], &v);
        check(rc == 0 && v == want[i][1], "get_param %u -> 0, value %u (got %ld, %llu)", want[i][0],
              want[i][1], rc, v);
    }
    u64 v = 0;
    EXPECT(param(HVMOP_get_param, DOMID_SELF, 36, &v), 0, "get_param X87_FIP_WIDTH");
    check(v == 8, "X87_FIP_WIDTH starts at 8 (got %llu)", v);
    v = 1;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, HVM_PARAM_STORE_PFN, &v), -XEN_EPERM,
           "set_param STORE_PFN");
    EXPECT(param(HVMOP_set_param, DOMID_SELF, HVM_PARAM_CONSOLE_PFN, &v), -XEN_EPERM,
           "set_param CONSOLE_PFN");
    v = 7;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, HVM_PARAM_STORE_EVTCHN, &v), 0,
           "set_param STORE_EVTCHN");
    v = 0;
    EXPECT(param(HVMOP_get_param, (u16)domid, HVM_PARAM_STORE_EVTCHN, &v), 0,
           "get_param STORE_EVTCHN by own domid");
    check(v == 7, "STORE_EVTCHN reads back 7 (got %llu)", v);
    v = 4;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 36, &v), 0, "set_param X87_FIP_WIDTH 4");
    v = 3;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 36, &v), -XEN_EINVAL, "set_param X87_FIP_WIDTH 3");
    v = 0;
    EXPECT(param(HVMOP_get_param, DOMID_SELF, 36, &v), 0, "get_param X87_FIP_WIDTH again");
    check(v == 4, "X87_FIP_WIDTH reads back 4 (got %llu)", v);
    v = 1;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 35, &v), -XEN_EEXIST, "set_param ALTP2M");
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 4, &v), -XEN_EINVAL, "set_param PAE_ENABLED");
    EXPECT(param(HVMOP_get_param, DOMID_SELF, 4, &v), -XEN_EINVAL, "get_param PAE_ENABLED");
    EXPECT(param(HVMOP_get_param, DOMID_SELF, 12, &v), -XEN_EPERM, "get_param IDENT_PT");
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 12, &v), -XEN_EPERM, "set_param IDENT_PT");
    EXPECT(param(HVMOP_get_param, DOMID_SELF, HVM_NR_PARAMS, &v), -XEN_EINVAL, "get_param 39");
    EXPECT(param(HVMOP_get_param, 0, 1, &v), -XEN_ESRCH, "get_param of domain 0");
    EXPECT(param(HVMOP_set_param, 0, 2, &v), -XEN_ESRCH, "set_param of domain 0");
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 19, &v), -XEN_ENODEV,
           "set_param ACPI_IOPORTS_LOCATION (no PM timer)");
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_get_param, (ureg)-8), -XEN_EFAULT,
           "get_param at a wrapping pointer");
    /* A get writes the whole structure back. */
    struct xen_hvm_param p = {DOMID_SELF, 0x5a5a, HVM_PARAM_STORE_EVTCHN, 0};
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_get_param, PTR(&p)), 0, "get_param with pad set");
    check(p.domid == DOMID_SELF && p.pad == 0x5a5a && p.index == 2 && p.value == 7,
          "get_param writes domid, pad and index back as read");
    u64 t0 = xen_now(), t1 = xen_now();
    check(t1 >= t0 && t0 > 0, "HVMOP_get_time: %llu then %llu ns", t0, t1);
    struct {
        u16 domid;
        u16 pad[3];
        u64 gpa;
    } dying = {DOMID_SELF, {0, 0, 0}, ~0ull};
    EXPECT(HC2(__HYPERVISOR_hvm_op, 9, PTR(&dying)), -XEN_EINVAL,
           "HVMOP_pagetable_dying (HAP: unsupported)");
    dying.domid = 0;
    EXPECT(HC2(__HYPERVISOR_hvm_op, 9, PTR(&dying)), -XEN_ESRCH, "HVMOP_pagetable_dying of dom0");

    /* The upcall vector: refused below 0x10 and for a vCPU that does not exist; set, it is
       raised once and reaches the IDT handler when interrupts are enabled. */
    struct xen_hvm_evtchn_upcall_vector uv = {0, 0x0f};
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), -XEN_EINVAL,
           "upcall vector 0x0f");
    uv.vector = UPCALL_VECTOR;
    uv.vcpu = 99;
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), -XEN_ENOENT,
           "upcall vector for vCPU 99");
    uv.vcpu = vcpus_online();
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), -XEN_ENOENT,
           "upcall vector for vCPU %u (one past the last)", uv.vcpu);
    cli();
    upcalls = 0;
    uv.vcpu = 0;
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), 0,
           "upcall vector 0x%x for vCPU 0", UPCALL_VECTOR);
    unsigned early = upcalls;
    wait_upcalls(1, 500, 20);
    check(early == 0, "not taken while interrupts are disabled");
    check(upcalls == 1 && upcall_vector_seen == UPCALL_VECTOR && upcall_vcpu_seen == 0,
          "vector 0x%x reached vCPU 0's IDT handler exactly once (%u times)", UPCALL_VECTOR,
          upcalls);
    interrupts_expected++;
    EXPECT(HC2(__HYPERVISOR_hvm_op, 5, 0), -XEN_ENOSYS, "HVMOP_flush_tlbs");
    EXPECT(HC2(__HYPERVISOR_hvm_op, 99, 0), -XEN_ENOSYS, "hvm_op 99");
}

/* -------------------------------------------------------------------- vcpu_op */

static void check_vcpu(void)
{
    long up = sc == DENY ? -XEN_EPERM : 1;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0, 0), up, "VCPUOP_is_up(0)");
    if (sc == DENY) {
        EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(buf)), -XEN_EPERM,
               "VCPUOP_register_vcpu_info denied by number");
        EXPECT(HC3(__HYPERVISOR_vcpu_op, 99, 0, 0), -XEN_EPERM, "vcpu_op 99 denied by number");
        return;
    }
    for (unsigned v = 1; v < vcpus_online(); v++)
        EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_is_up, v, 0), 1, "VCPUOP_is_up(%u)", v);
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_is_up, vcpus_online(), 0), -XEN_ENOENT,
           "VCPUOP_is_up(%u), one past the last", vcpus_online());
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 99, 0), -XEN_ENOENT, "VCPUOP_is_up(99)");
#if RT_64BIT
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0x100000000ul, 0), 1,
           "VCPUOP_is_up(0x100000000): the vCPU is an unsigned int, 0");
#endif
    struct vcpu_register_vcpu_info info = {PTR(vinfo_page) >> 12, 4096 - 32, 0};
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), -XEN_ENXIO,
           "register_vcpu_info crossing the page");
    info.offset = 2;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), -XEN_ENXIO,
           "register_vcpu_info misaligned");
    info.offset = 4096;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)),
           at_least(4, 18) ? -XEN_EINVAL : -XEN_ENXIO, "register_vcpu_info offset 4096");
    info.mfn = ram_top >> 12;
    info.offset = 64;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), -XEN_EINVAL,
           "register_vcpu_info in a frame past RAM");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, (ureg)-8), -XEN_EFAULT,
           "register_vcpu_info at a wrapping pointer");
    info.mfn = PTR(vinfo_page) >> 12;
    memset(vinfo_page, 0xaa, sizeof vinfo_page);
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), 0,
           "register_vcpu_info at +64");
    struct vcpu_info *vi = (struct vcpu_info *)(vinfo_page + 64);
    const struct shared_info *s = (const struct shared_info *)shinfo;
    check(vi->evtchn_upcall_pending == 1 && vi->evtchn_pending_sel == ~0ul &&
              vi->evtchn_upcall_mask == s->vcpu_info[0].evtchn_upcall_mask,
          "vcpu_info: a spurious event pending (selector all ones), the mask copied");
    check(!(vi->time.version & 1) && vi->time.version > s->vcpu_info[0].time.version &&
              vi->time.tsc_to_system_mul == s->vcpu_info[0].time.tsc_to_system_mul &&
              vi->time.system_time >= s->vcpu_info[0].time.system_time,
          "vcpu_info: the old time copied and written again (version %u after %u)",
          vi->time.version, s->vcpu_info[0].time.version);
    check(all(vinfo_page, 64, 0xaa) && all(vinfo_page + 128, 4096 - 128, 0xaa),
          "only the 64 bytes at the offset written");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)),
           at_least(4, 18) ? -XEN_EBUSY : -XEN_EINVAL, "register_vcpu_info again");

    struct vcpu_set_singleshot_timer t = {1, VCPU_SSHOTTMR_future};
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, PTR(&t)),
           at_least(4, 18) ? 0 : -XEN_ETIME, "singleshot timer in the past with FUTURE");
    t.flags = 0;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, PTR(&t)), 0,
           "singleshot timer in the past without FUTURE");
    t.timeout_abs_ns = xen_now() + 1000000000ull;
    t.flags = VCPU_SSHOTTMR_future;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, PTR(&t)), 0,
           "singleshot timer in 1 s");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_stop_singleshot_timer, 0, 0), 0,
           "stop singleshot timer");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_stop_singleshot_timer, 0, 0), 0,
           "stop singleshot timer again");
    if (vcpus_online() > 1) {
        EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_stop_singleshot_timer, 1, 0), -XEN_EINVAL,
               "stop vCPU 1's timer");
        EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 1, PTR(&t)), -XEN_EINVAL,
               "set vCPU 1's timer");
    }
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 99, PTR(&t)), -XEN_ENOENT,
           "set vCPU 99's timer");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, (ureg)-8), -XEN_EFAULT,
           "singleshot timer at a wrapping pointer");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_up, 0, 0), -XEN_ENOSYS, "VCPUOP_up");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, 99, 0, 0), -XEN_ENOSYS, "vcpu_op 99");
}

/* ----------------------------------------------- a buffer that is not identity-mapped */

/* Pages seen at TX_VA: page 0 is tx_pages[1], page 1 is tx_pages[0] (the physical order
   reversed, so a buffer across the boundary is split), page 2 is not mapped, page 3 is
   tx_pages[2] read-only. */
static u8 tx_pages[3][4096] __aligned(4096);

static inline void write_cr3(ureg v) { __asm__ volatile("mov %0, %%cr3" ::"r"(v) : "memory"); }
static inline void write_cr0(ureg v) { __asm__ volatile("mov %0, %%cr0" ::"r"(v) : "memory"); }
#define CR0_WP (1ul << 16)

#if RT_64BIT
#define TX_VA 0x8000000000ull /* PML4 slot 1: 512 GiB, far above the identity map */
extern u64 rt_pml4[512];
static u64 tx_pdpt[512] __aligned(4096), tx_pd[512] __aligned(4096), tx_pt[512] __aligned(4096);

static bool tx_map(void)
{
    tx_pt[0] = PTR(tx_pages[1]) | 0x63; /* P RW A D */
    tx_pt[1] = PTR(tx_pages[0]) | 0x63;
    tx_pt[3] = PTR(tx_pages[2]) | 0x61; /* P A: read-only */
    tx_pd[0] = PTR(tx_pt) | 0x23;
    tx_pdpt[0] = PTR(tx_pd) | 0x23;
    rt_pml4[1] = PTR(tx_pdpt) | 0x23;
    write_cr3(read_cr3());
    return true;
}

static void tx_unmap(void)
{
    rt_pml4[1] = 0;
    write_cr3(read_cr3());
}
#else
#define TX_VA 0x80000000u /* 2 GiB: no RAM there, so physically it is nothing */
/* 32-bit paging: 4 MiB identity pages everywhere but the 4 MiB at TX_VA. */
static u32 tx_pgdir[1024] __aligned(4096), tx_pt[1024] __aligned(4096);
static ureg saved_cr4;

static inline void write_cr4(ureg v) { __asm__ volatile("mov %0, %%cr4" ::"r"(v) : "memory"); }

static ureg tx_paging_on(ureg unused)
{
    (void)unused;
    write_cr0(read_cr0() | 0x80000000u);
    return 0;
}

/* Turns paging on; false (paging still off) if the host refused it. */
static bool tx_map(void)
{
    for (u32 i = 0; i < 1024; i++)
        tx_pgdir[i] = (i << 22) | 0xe3; /* P RW A D PS */
    tx_pt[0] = PTR(tx_pages[1]) | 0x63;
    tx_pt[1] = PTR(tx_pages[0]) | 0x63;
    tx_pt[3] = PTR(tx_pages[2]) | 0x61;
    tx_pgdir[TX_VA >> 22] = PTR(tx_pt) | 0x23;
    saved_cr4 = read_cr4();
    write_cr4(saved_cr4 | 0x10); /* PSE */
    write_cr3(PTR(tx_pgdir));
    ureg res;
    int vec = try_call(tx_paging_on, 0, &res);
    if (vec) {
        write_cr4(saved_cr4);
        write_cr3(0);
        gprintf("%s: enabling 32-bit paging faulted with %s\n", GUEST_NAME,
                vector_name((unsigned)vec));
        return false;
    }
    return true;
}

static void tx_unmap(void)
{
    write_cr0(read_cr0() & ~0x80000000u);
    write_cr4(saved_cr4);
    write_cr3(0);
}
#endif

static void check_translation(void)
{
    cli();
    memset(tx_pages, 0xaa, sizeof tx_pages);
    /* paging32=refused: the host test knows this host's KVM refuses paging outside long mode
       (PVM: #GP on the write to CR0.PG), so a 32-bit guest cannot map anything. */
    char how[16] = "";
    bool refused_here = cmdline_get("paging32", how, sizeof how) >= 0 && !strcmp(how, "refused");
    if (!tx_map()) {
        check(!RT_64BIT && refused_here,
              "paging refused by this host, as the host test expected: no virtual-address "
              "checks in a 32-bit guest here");
        return;
    }
    check(RT_64BIT || !refused_here, "paging turned on, as the host test expected");
    check(read_cr0() >> 31, "paging on, 0x%lx mapped to non-contiguous frames",
          (unsigned long)TX_VA);
    /* A write across the two pages lands in both frames, in virtual order. */
    ureg at = (ureg)TX_VA + 4096 - 100;
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_capabilities, at), 0,
           "XENVER_capabilities into 0x%lx (1024 bytes across two pages)", (unsigned long)at);
    static const char caps[] = "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ";
    char got[1024];
    memcpy(got, tx_pages[1] + 3996, 100);
    memcpy(got + 100, tx_pages[0], 924);
    check(padded((u8 *)got, caps, 1024) && tx_pages[1][3995] == 0xaa && tx_pages[0][924] == 0xaa,
          "the bytes are in the frames the page tables name");
    /* A structure read and written across the boundary. */
    struct xen_hvm_param p = {DOMID_SELF, 0, HVM_PARAM_STORE_EVTCHN, 0};
    memcpy(tx_pages[1] + 4088, &p, 8);
    memcpy(tx_pages[0], (u8 *)&p + 8, 8);
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_get_param, (ureg)TX_VA + 4088), 0,
           "HVMOP_get_param with the structure split across the pages");
    u64 value;
    memcpy(&value, tx_pages[0], 8);
    check(value == 7, "its value (STORE_EVTCHN = 7) in the second frame (got %llu)", value);
    /* Reading from the mapping: a console line, and from the read-only page. */
    static const char msg[] = GUEST_NAME ": console line from a high virtual address\n";
    memcpy(tx_pages[1] + 16, msg, sizeof msg - 1);
    long cw = sc == DENY ? -XEN_EPERM : 0;
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof msg - 1, (ureg)TX_VA + 16), cw,
           "CONSOLEIO_write from 0x%lx", (unsigned long)TX_VA + 16);
    static const char ro[] = GUEST_NAME ": console line from a read-only page\n";
    memcpy(tx_pages[2], ro, sizeof ro - 1);
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof ro - 1, (ureg)TX_VA + 3 * 4096), cw,
           "CONSOLEIO_write from the read-only page");
    /* Unmapped: -EFAULT, and nothing written to the pages before it. */
    memset(tx_pages, 0xaa, sizeof tx_pages);
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_extraversion, (ureg)TX_VA + 2 * 4096), -XEN_EFAULT,
           "XENVER_extraversion into an unmapped page");
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_capabilities, (ureg)TX_VA + 2 * 4096 - 512),
           -XEN_EFAULT, "XENVER_capabilities running into an unmapped page");
    check(!memcmp(tx_pages[0] + 3584, caps, 46) && all(tx_pages[0] + 3584 + 46, 512 - 46, 0) &&
              tx_pages[0][3583] == 0xaa,
          "the 512 bytes before the unmapped page were written (Xen copies page by page too)");
    /* Writing into the read-only page: with CR0.WP set it is refused as Xen's copy_to_guest
       refuses it (its page walk is the guest's supervisor access); with CR0.WP clear a
       supervisor write ignores R/W, there as here. */
    ureg cr0 = read_cr0();
    write_cr0(cr0 | CR0_WP);
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_extraversion, (ureg)TX_VA + 3 * 4096),
           -XEN_EFAULT, "XENVER_extraversion into a read-only page, CR0.WP set");
    check(all(tx_pages[2], 4096, 0xaa), "the read-only page was not written");
    write_cr0(cr0 & ~CR0_WP);
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_extraversion, (ureg)TX_VA + 3 * 4096), 0,
           "XENVER_extraversion into a read-only page, CR0.WP clear");
    check(padded(tx_pages[2], want_extra, 16), "written through the read-only mapping");
    write_cr0(cr0);
    memset(tx_pages[2], 0xaa, 4096);
    tx_unmap();
    /* The same call at the frame's identity address works as before. */
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_extraversion, PTR(tx_pages[2])), 0,
           "XENVER_extraversion at the identity address again");
    check(padded(tx_pages[2], want_extra, 16), "written there");
}

int guest_main(const struct hvm_start_info *si)
{
    char arg[24];
    start_info = si;
    if (cmdline_get("expect", arg, sizeof arg) >= 0) {
        if (!strcmp(arg, "disabled"))
            sc = DISABLED;
        else if (!strcmp(arg, "deny"))
            sc = DENY;
        else if (strcmp(arg, "enabled"))
            panic("unknown expect=%s", arg);
    }
    if (cmdline_get("version", arg, sizeof arg) >= 0) {
        char *dot = arg;
        u64 major, minor;
        while (*dot && *dot != '.')
            dot++;
        if (*dot)
            *dot++ = 0;
        if (!parse_u64(arg, &major) || !parse_u64(dot, &minor))
            panic("bad version");
        want_version = (u32)(major << 16 | minor);
    }
    if (cmdline_get("extra", arg, sizeof arg) >= 0)
        memcpy(want_extra, arg, sizeof want_extra - 1);
    domid = (u32)cmdline_get_u64("domid", 1);
    mem_pages = cmdline_get_u64("mem_mib", 0) * 256;
    host_now = cmdline_get_u64("now", 0);
    host_khz = (u32)cmdline_get_u64("tsc_khz", 0);
    if (cmdline_has("stable"))
        host_stable = cmdline_get_u64("stable", 0) ? 1 : 0;
    enum xen_via native = xen_native_insn();
    xen_via = XEN_VIA_PAGE;
    if (cmdline_get("via", arg, sizeof arg) >= 0)
        xen_via = !strcmp(arg, "vmcall")    ? XEN_VIA_VMCALL
                  : !strcmp(arg, "vmmcall") ? XEN_VIA_VMMCALL
                                            : XEN_VIA_PAGE;
    if (si && si->version >= 1) {
        const struct hvm_memmap_table_entry *e =
            (const struct hvm_memmap_table_entry *)(uptr)si->memmap_paddr;
        for (u32 i = 0; i < si->memmap_entries; i++)
            if (e[i].type == 1 && e[i].addr + e[i].size > ram_top)
                ram_top = e[i].addr + e[i].size;
    }
    set_irq_handler(UPCALL_VECTOR, upcall);
    if (sc == ENABLED)
        check_set_output(xen_check_write);
    gprintf("%s: xen personality checks (%s, %s callers), expect=%s, Xen %u.%u, via %s\n",
            GUEST_NAME, rt_boot_protocol_name(), RT_64BIT ? "64-bit" : "32-bit",
            sc == ENABLED ? "enabled" : sc == DISABLED ? "disabled" : "deny",
            want_version >> 16, want_version & 0xffff,
            xen_via == XEN_VIA_PAGE ? "the page" : xen_via == XEN_VIA_VMCALL ? "VMCALL" : "VMMCALL");
    check(ram_top > 0, "the start info has a memory map (RAM ends at 0x%llx)", ram_top);

    check_cpuid();
    check_page(native);
    if (sc == DISABLED) {
        check_disabled();
    } else {
        bool smp = false;
        if (vcpus_online() > 1 || cmdline_get_u64("vcpus", 1) > 1) {
            wait_for_aps(1, 100000000);
            u64 start = rdtsc();
            while (!__atomic_load_n(&ap_serving, __ATOMIC_ACQUIRE) &&
                   rdtsc() - start < (u64)xen_tsc_khz() * 2000)
                pause();
            smp = ap_serving;
            check(smp && ap_leaf4[0] == 0x18 && ap_leaf4[1] == 1 && ap_leaf4[2] == domid,
                  "vCPU 1 reads base+4: vCPU id 1, domid %u (got 0x%x, %u, %u)", domid,
                  ap_leaf4[0], ap_leaf4[1], ap_leaf4[2]);
        }
        check_conventions();
        if (!cmdline_has("nocheck"))
            check_ring3();
        check_version();
        check_console();
        check_sched_basic();
        check_timed_poll();
        check_memory();
        check_hvm();
        check_vcpu();
        if (smp && sc != DENY)
            check_sched_smp();
        check_translation();
        check(current_cpl() == 0, "back at CPL 0 after every call");
        gprintf("%s: %u upcall interrupts raised\n", GUEST_NAME, interrupts_expected);
    }
    return check_summary();
}
