/* vmmtest: the KVM backend's test guest (vmmtest64, vmmtest_rwx64, vmmtest_pvh32).
 * Speaks the test personality of polyvisor_vmm::testing (RAX = call number, RBX RCX = args,
 * result in RAX; refusals -1). Cmdline `test=NAME` picks the scenario; every line starts with
 * the image name. Exit status 0 = the scenario's own checks passed (the Rust test asserts the
 * printed values too). */
#include "guest.h"

/* Call numbers (polyvisor_vmm::testing::calls). */
#define T_INC 0
#define T_ADD 1
#define T_HALT 3
#define T_POWEROFF 4
#define T_RETRY 5
#define T_UD 6
#define T_INTERRUPT 7
#define T_WAKE 8
#define T_TSC 9
#define T_OVERLAY 10
#define T_INC_USER 12
#define T_CPL 13
#define T_TRANSLATE 14
#define T_XMM 15
#define T_HALT_FOR 16
#define T_FLUSH_TLB 17
#define T_PROBE 18

#if RT_64BIT
#define R_AX rax
#define R_BX rbx
#define R_CX rcx
#else
#define R_AX eax
#define R_BX ebx
#define R_CX ecx
#endif

#define SAY(...) gprintf(GUEST_NAME ": " __VA_ARGS__)

static int failures;
#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            SAY("CHECK FAILED: %s (line %d)\n", #cond, __LINE__);                            \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

/* One call through VMCALL (vmm = 0) or VMMCALL (vmm = 1); *fault = vector or 0. */
static ureg call(int vmm, ureg nr, ureg a, ureg b, int *fault)
{
    struct hc_regs r;
    memset(&r, 0, sizeof(r));
    r.R_AX = nr;
    r.R_BX = a;
    r.R_CX = b;
    int f = vmm ? hypercall_vmmcall(&r) : hypercall_vmcall(&r);
    if (fault)
        *fault = f;
    return f ? (ureg)-2 : r.R_AX;
}

static const char *insn_name(int vmm) { return vmm ? "VMMCALL" : "VMCALL"; }

/* ------------------------------------------------------------------ hcall */
static int t_hcall(void)
{
    for (int vmm = 0; vmm < 2; vmm++) {
        int f;
        ureg v = call(vmm, T_INC, 41, 0, &f);
        SAY("%s inc(41) = %lu fault=%d\n", insn_name(vmm), (unsigned long)v, f);
        CHECK(f == 0 && v == 42);
        v = call(vmm, T_ADD, 40, 2, &f);
        SAY("%s add(40,2) = %lu fault=%d\n", insn_name(vmm), (unsigned long)v, f);
        CHECK(f == 0 && v == 42);
    }
    int f;
    ureg v = call(0, T_RETRY, 3, 0, &f);
    SAY("retry(3) = %lu fault=%d\n", (unsigned long)v, f);
    CHECK(f == 0 && v == 3);
    v = call(0, 0x777, 0, 0, &f);
    SAY("unknown call = %lx fault=%d\n", (unsigned long)v, f);
    CHECK(f == 0 && v == (ureg)-1);
    v = call(0, T_CPL, 0, 0, &f);
    SAY("cpl seen by the engine = %lu\n", (unsigned long)v);
    CHECK(f == 0 && v == 0);
    return failures;
}

/* ------------------------------------------------------------------- bench */

static int t_bench(void)
{
    u64 n = cmdline_get_u64("count", 2000);
    u64 t0 = rdtsc();
    for (u64 i = 0; i < n; i++)
        call(0, T_INC, i, 0, 0);
    u64 t1 = rdtsc();
    for (u64 i = 0; i < n; i++)
        outb(0x3ff, (u8)i); /* COM1 scratch register: a handled port exit, no output */
    u64 t2 = rdtsc();
    struct hc_regs r;
    for (u64 i = 0; i < n; i++) {
        memset(&r, 0, sizeof(r));
        r.R_AX = T_INC;
        hypercall_vmcall_raw(&r);
    }
    u64 t3 = rdtsc();
#if RT_64BIT
    __asm__ volatile("1: xorl %%eax, %%eax\n\t.byte 0x0f, 0x01, 0xc1\n\tdecq %%rcx\n\tjnz 1b"
                     : : "c"(n) : "rax", "rbx", "memory");
#endif
    u64 t4 = rdtsc();
    u64 rem;
    /* The same trap with no C around it: a bare VMCALL loop. */
    SAY("bench inline_vmcall_loop_cycles=%llu\n", (unsigned long long)udiv64(t4 - t3, n, &rem));

    SAY("bench n=%llu hypercall_cycles=%llu pio_cycles=%llu raw_hypercall_cycles=%llu\n",
        (unsigned long long)n, (unsigned long long)udiv64(t1 - t0, n, &rem),
        (unsigned long long)udiv64(t2 - t1, n, &rem), (unsigned long long)udiv64(t3 - t2, n, &rem));
    return 0;
}

/* ------------------------------------------------------------------- cpuid */
static ureg ap_leaf(ureg arg)
{
    u32 r[4];
    (void)arg;
    cpuid(0x40000001, 0, r);
    return r[0];
}

static int t_cpuid(void)
{
    u32 r[4];
    char sig[13];
    cpuid(0x40000000, 0, r);
    memcpy(sig, &r[1], 12);
    sig[12] = 0;
    SAY("cpuid 0x40000000 max=%x sig=\"%s\"\n", r[0], sig);
    CHECK(strcmp(sig, "PolyvisorTst") == 0);
    cpuid(0x40000001, 0, r);
    SAY("cpuid 0x40000001 on vCPU 0: eax=%u ebx=%x\n", r[0], r[1]);
    CHECK(r[0] == 0 && r[1] == 0x12345678);
    if (vcpus_online() > 1 || wait_for_aps(1, 50000000)) {
        ureg v = 99;
        int rc = ap_call(1, ap_leaf, 0, &v, 100000000ull);
        SAY("cpuid 0x40000001 on vCPU 1: eax=%lu rc=%d\n", (unsigned long)v, rc);
        CHECK(rc == 0 && v == 1);
    }
    return failures;
}

/* --------------------------------------------------------------------- msr */
static int t_msr(void)
{
    int f = wrmsr_safe(0x40000005, 0x123456789abcull);
    SAY("wrmsr 0x40000005 fault=%d\n", f);
    CHECK(f == 0);
    u64 v = 0;
    f = rdmsr_safe(0x40000005, &v);
    SAY("rdmsr 0x40000005 = %llx fault=%d\n", (unsigned long long)v, f);
    CHECK(f == 0 && v == 0x123456789abcull);
    f = rdmsr_safe(0x40000006, &v);
    SAY("rdmsr 0x40000006 fault=%d\n", f);
    CHECK(f == VEC_GP);
    f = rdmsr_safe(0x400000aa, &v);
    SAY("rdmsr 0x400000aa (not the personality's) fault=%d\n", f);
    CHECK(f == VEC_GP);
    if (cmdline_has("poweroff")) {
        SAY("writing 0x40000007 = 9\n");
        wrmsr(0x40000007, 9);
        SAY("still running after the poweroff MSR\n");
        return 1;
    }
    return failures;
}

/* ---------------------------------------------------------------------- ud */
static int t_ud(void)
{
    int f;
    call(0, T_UD, 0, 0, &f);
    SAY("ud call: fault=%d (%s) at ip=%lx\n", f, vector_name(f), (unsigned long)this_cpu()->last_fault.ip);
    CHECK(f == VEC_UD);
    u32 before = irq_count(0, VEC_UD);
    call(0, T_UD, 0, 0, &f);
    SAY("ud handler count %u -> %u\n", before, irq_count(0, VEC_UD));
    CHECK(irq_count(0, VEC_UD) == before + 1);
    /* With [host] instruction = "vmcall", VMMCALL raises #UD. */
    ureg v = call(1, T_INC, 1, 0, &f);
    SAY("VMMCALL inc(1) = %lx fault=%d\n", (unsigned long)v, f);
    v = call(0, T_INC, 1, 0, &f);
    SAY("VMCALL inc(1) = %lx fault=%d\n", (unsigned long)v, f);
    return failures;
}

/* ------------------------------------------------------------------- ring 3 */
static ureg ring3_call(ureg vmm)
{
    struct hc_regs r;
    memset(&r, 0, sizeof(r));
    r.R_AX = T_INC_USER;
    r.R_BX = 41;
    if (vmm)
        hypercall_vmmcall_raw(&r);
    else
        hypercall_vmcall_raw(&r);
    return r.R_AX;
}

static int t_cpl3(void)
{
    for (int vmm = 1; vmm >= 0; vmm--) {
        ureg v = 0;
        int f = run_in_ring3(ring3_call, vmm, &v);
        SAY("cpl3 %s inc_user(41): fault=%d rax=%lx\n", insn_name(vmm), f, (unsigned long)v);
    }
    return 0;
}

/* ------------------------------------------------------------------- irq */
static volatile u32 ap_halting, ap_woke, ap_vector;

static void on_irq(struct trap_frame *f)
{
    ap_vector = (u32)f->vector;
}

static volatile u32 smp_done, smp_errors;

static void smp_ap(unsigned vcpu)
{
    u32 errors = 0;
    for (ureg i = 0; i < 2000; i++) {
        int f;
        ureg v = call(i & 1, T_ADD, i, vcpu, &f);
        if (f || v != i + vcpu)
            errors++;
    }
    __atomic_add_fetch(&smp_errors, errors, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&smp_done, 1, __ATOMIC_SEQ_CST);
    for (;;)
        sti_hlt();
}

void guest_ap_main(unsigned vcpu)
{
    char test[32];
    if (cmdline_get("test", test, sizeof(test)) >= 0 && strcmp(test, "smp") == 0)
        smp_ap(vcpu);
    bool spin = vcpu == 1 && cmdline_get("test", test, sizeof(test)) >= 0 && !strcmp(test, "irqspin");
    if (!spin && (vcpu != 1 || cmdline_get("test", test, sizeof(test)) < 0 || strcmp(test, "irq") != 0))
        ap_mailbox_loop();
    __atomic_store_n(&ap_halting, 1, __ATOMIC_SEQ_CST);
    if (spin) {
        /* Running, not halted: the VMM must kick it and inject at the next window. */
        sti();
        while (!ap_vector)
            pause();
    } else {
        /* Halt with interrupts on until the VMM delivers something. */
        while (!ap_vector)
            sti_hlt();
    }
    cli();
    SAY("vCPU 1 woke with vector 0x%x (count %u)\n", ap_vector, irq_count(1, ap_vector));
    __atomic_store_n(&ap_woke, 1, __ATOMIC_SEQ_CST);
    for (;;)
        sti_hlt();
}

static int t_irq(void)
{
    set_irq_handler(0x40, on_irq);
    if (!wait_for_aps(1, 100000000ull)) {
        SAY("vCPU 1 did not come up\n");
        return 1;
    }
    while (!__atomic_load_n(&ap_halting, __ATOMIC_SEQ_CST))
        pause();
    for (volatile int i = 0; i < 100000; i++)
        pause(); /* give it time to reach hlt */
    int f;
    ureg v = call(0, T_INTERRUPT, 1, 0x40, &f);
    SAY("interrupt(1, 0x40) = %lu fault=%d\n", (unsigned long)v, f);
    u64 spins = 0;
    while (!__atomic_load_n(&ap_woke, __ATOMIC_SEQ_CST) && spins < 2000000000ull) {
        pause();
        spins++;
    }
    CHECK(ap_woke && ap_vector == 0x40);
    SAY("irq done\n");
    return failures;
}

/* -------------------------------------------------------------- halt/wake */
static ureg do_wake(ureg target)
{
    for (volatile int i = 0; i < 200000; i++)
        pause();
    int f;
    return call(0, T_WAKE, target, 0, &f);
}

static ureg noop(ureg a) { return a; }

static int t_halt(void)
{
    if (!wait_for_aps(1, 100000000ull))
        return 1;
    /* vCPU 1 wakes vCPU 0 from the halting hypercall (posted without waiting). */
    static volatile ureg woke;
    ureg dummy;
    if (ap_call(1, noop, 1, &dummy, 100000000ull) != 0) /* sync: vCPU 1 is in its loop */
        return 1;
    ap_call(1, do_wake, 0, (ureg *)&woke, 0);
    int f;
    ureg v = call(0, T_HALT, 0, 0, &f);
    SAY("halt returned %lu fault=%d\n", (unsigned long)v, f);
    CHECK(f == 0 && v == 0);
    return failures;
}

/* ---------------------------------------------- code in data, self-patching */
static u8 jit[64] __aligned(4096);

__attribute__((noinline)) static int patchme(void)
{
    __asm__ volatile("" ::: "memory");
    return 1;
}

static int t_code(void)
{
    /* A hypercall in a page the VMM never protected: found by the watchdog. */
    static const u8 stub[] = {0x0f, 0x01, 0xd9, 0xc3}; /* vmmcall; ret */
    memcpy(jit, stub, sizeof(stub));
    struct hc_regs r;
    memset(&r, 0, sizeof(r));
    r.R_AX = T_INC;
    r.R_BX = 6;
    int f = hypercall_via(jit, &r);
    SAY("hypercall from a data page = %lu fault=%d\n", (unsigned long)r.R_AX, f);
    CHECK(f == 0 && r.R_AX == 7);
    SAY("stub bytes now %x %x %x\n", jit[0], jit[1], jit[2]);
    /* Self-patching text: mov eax, 2; ret over patchme(). */
    u8 *p = (u8 *)(uptr)patchme;
    static const u8 two[] = {0xb8, 0x02, 0x00, 0x00, 0x00, 0xc3};
    for (unsigned i = 0; i < sizeof(two); i++)
        ((volatile u8 *)p)[i] = two[i];
    int v = patchme();
    SAY("patched text returns %d\n", v);
    CHECK(v == 2);
    return failures;
}

/* ----------------------------------------------------------------- overlay */
static ureg write_byte(ureg addr)
{
    *(volatile u8 *)addr = 0x90;
    return 0;
}

static int t_overlay(void)
{
    const ureg at = 0x800000;
    memset((void *)at, 0xab, 16);
    int f;
    ureg v = call(0, T_OVERLAY, at, 0, &f);
    SAY("overlay map = %lu fault=%d\n", (unsigned long)v, f);
    struct hc_regs r;
    memset(&r, 0, sizeof(r));
    r.R_AX = T_INC;
    r.R_BX = 99;
    f = hypercall_via((const void *)at, &r);
    SAY("call through the overlay = %lu fault=%d\n", (unsigned long)r.R_AX, f);
    CHECK(f == 0 && r.R_AX == 100);
    ureg res;
    f = try_call(write_byte, at, &res);
    SAY("write to the overlay: fault=%d (%s) error=%lx\n", f, vector_name(f),
        (unsigned long)this_cpu()->last_fault.error);
    CHECK(f == VEC_GP);
    v = call(0, T_OVERLAY, 0, 0, &f);
    SAY("overlay removed = %lu; RAM shows %x\n", (unsigned long)v, *(volatile u8 *)at);
    CHECK(*(volatile u8 *)at == 0xab);
    f = try_call(write_byte, at, &res);
    CHECK(f == 0 && *(volatile u8 *)at == 0x90);
    return failures;
}

/* ------------------------------------------------- platform services */
static int t_platform(void)
{
    int f;
    static u8 probe_page[4096] __aligned(4096);
    ureg va = (ureg)(uptr)probe_page;
    ureg gpa = call(0, T_TRANSLATE, va, 0, &f);
    SAY("translate %lx -> %lx fault=%d\n", (unsigned long)va, (unsigned long)gpa, f);
    CHECK(f == 0 && gpa == va); /* identity map (or paging off) */
#if RT_64BIT
    u64 x = 0x1122334455667788ull;
    ureg cr4 = read_cr4() | 0x600; /* OSFXSR | OSXMMEXCPT: SSE on */
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
    static u64 buf[2] __aligned(16);
    buf[0] = x;
    buf[1] = 0;
    /* movdqu: also emulable by KVM (PVM hosts may emulate it); the C code never uses XMM. */
    __asm__ volatile("movdqu (%0), %%xmm1" ::"r"(buf) : "memory");
    ureg got = call(0, T_XMM, 1, 0, &f);
    SAY("xmm1 = %lx fault=%d\n", (unsigned long)got, f);
    CHECK(f == 0 && got == x);
#endif
    u64 t0 = rdtsc();
    ureg v = call(0, T_HALT_FOR, 20000000, 0, &f); /* 20 ms */
    u64 t1 = rdtsc();
    SAY("bounded halt returned %lu fault=%d after %llu cycles\n", (unsigned long)v, f,
        (unsigned long long)(t1 - t0));
    CHECK(f == 0 && v == 0);
    v = call(0, T_FLUSH_TLB, 0, 0, &f);
    SAY("flush own TLB = %lu fault=%d\n", (unsigned long)v, f);
    CHECK(f == 0 && v == 0);
    v = call(0, T_PROBE, 5, 77, &f);
    CHECK(f == 0 && v == 0);
    return failures;
}

/* --------------------------------------------------------------------- smp */
/* Every AP makes hypercalls while vCPU 0 keeps moving an overlay (each move changes the
 * memslots with every other vCPU held outside the guest). */
static int t_smp(void)
{
    unsigned aps = vcpus_online() - 1;
    aps = wait_for_aps(3, 100000000ull);
    u32 moves = 0, bad = 0;
    while (__atomic_load_n(&smp_done, __ATOMIC_SEQ_CST) < aps) {
        ureg at = 0x800000 + (moves % 4) * 0x1000;
        int f;
        call(0, T_OVERLAY, at, 0, &f);
        struct hc_regs r;
        memset(&r, 0, sizeof(r));
        r.R_AX = T_INC;
        r.R_BX = moves;
        f = hypercall_via((const void *)at, &r);
        if (f || r.R_AX != moves + 1)
            bad++;
        moves++;
    }
    int f;
    call(0, T_OVERLAY, 0, 0, &f);
    SAY("smp: %u APs done, %u AP errors, %u overlay moves, %u bad\n", aps, smp_errors, moves, bad);
    CHECK(aps == 3 && smp_errors == 0 && bad == 0 && moves > 0);
    return failures;
}

/* --------------------------------------------------------------------- tsc */
static int t_tsc(void)
{
    u64 a = rdtsc();
    int f;
    u64 host = call(0, T_TSC, 0, 0, &f);
    u64 b = rdtsc();
    SAY("tsc guest_before=%llu platform=%llu guest_after=%llu\n", (unsigned long long)a,
        (unsigned long long)host, (unsigned long long)b);
    return 0;
}

/* ---------------------------------------------------------------- endings */
static int t_triple(void)
{
    struct {
        u16 limit;
        uptr base;
    } __attribute__((packed)) empty = {0, 0};
    SAY("loading an empty IDT and faulting\n");
    __asm__ volatile("lidt %0; ud2" ::"m"(empty));
    return 1;
}

static int t_badport(void)
{
    SAY("writing port 0x80\n");
    outb(0x80, 0x42);
    return 1;
}

static int t_poweroff(void)
{
    int f;
    call(0, T_POWEROFF, 7, 0, &f);
    return 1;
}

static int t_hang(void)
{
    SAY("spinning\n");
    for (;;)
        pause();
    return 1;
}

static int t_allhalt(void)
{
    SAY("halting with interrupts off\n");
    cli();
    for (;;)
        hlt();
    return 1;
}

int guest_main(const struct hvm_start_info *si)
{
    char test[32];
    (void)si;
    if (cmdline_get("test", test, sizeof(test)) < 0) {
        SAY("no test= on the command line\n");
        return 2;
    }
    SAY("test %s (%s)\n", test, rt_boot_protocol_name());
    int rc;
    if (!strcmp(test, "hcall"))
        rc = t_hcall();
    else if (!strcmp(test, "bench"))
        rc = t_bench();
    else if (!strcmp(test, "cpuid"))
        rc = t_cpuid();
    else if (!strcmp(test, "msr"))
        rc = t_msr();
    else if (!strcmp(test, "ud"))
        rc = t_ud();
    else if (!strcmp(test, "cpl3"))
        rc = t_cpl3();
    else if (!strcmp(test, "irq") || !strcmp(test, "irqspin"))
        rc = t_irq();
    else if (!strcmp(test, "halt"))
        rc = t_halt();
    else if (!strcmp(test, "code"))
        rc = t_code();
    else if (!strcmp(test, "overlay"))
        rc = t_overlay();
    else if (!strcmp(test, "smp"))
        rc = t_smp();
    else if (!strcmp(test, "platform"))
        rc = t_platform();
    else if (!strcmp(test, "tsc"))
        rc = t_tsc();
    else if (!strcmp(test, "triple"))
        rc = t_triple();
    else if (!strcmp(test, "badport"))
        rc = t_badport();
    else if (!strcmp(test, "poweroff"))
        rc = t_poweroff();
    else if (!strcmp(test, "hang"))
        rc = t_hang();
    else if (!strcmp(test, "allhalt"))
        rc = t_allhalt();
    else {
        SAY("unknown test %s\n", test);
        rc = 2;
    }
    SAY("done: %s\n", rc ? "FAILED" : "ok");
    return rc;
}
