/* rtcheck: self-test of the guest runtime's mechanisms (fault recovery, software
 * interrupts, ring 3, SMP mailbox). The checks do not depend on the hypervisor; what does
 * depend on it is only printed. Exit status 0 when every check passed, 1 otherwise.
 *
 * Cmdline:
 *   hc=vmcall|vmmcall|both  also make a CPL 0 hypercall (RAX=hc_rax, default 0) and print
 *                           the result (answer or fault vector)
 *   hc_rax=N                RAX for those hypercalls
 *   ring3_hc=1              also execute VMCALL and VMMCALL at CPL 3 and print what happened
 *   vcpus=N                 expect N vCPUs: wait for the APs and run checks on each
 *   irqs=N                  sti; hlt until N interrupts (vector >= 32) arrived, from the VMM
 *   swint=1                 also test `int $0x40` at CPL 0 (PVM hosts cannot emulate it)
 *   fatal=ud                end with an unrecovered #UD (exercises the fatal path: 0xE6)
 */
#include "guest.h"

static ureg do_ud2(ureg arg)
{
    (void)arg;
    __asm__ volatile("ud2");
    return 1;
}

static ureg do_div0(ureg arg)
{
    u32 zero = (u32)arg, q;
    __asm__ volatile("xorl %%edx, %%edx; divl %1" : "=a"(q) : "r"(zero), "a"(7u) : "edx");
    return q;
}

static ureg do_ok(ureg arg)
{
    return arg * 2;
}

static ureg do_nested(ureg arg)
{
    (void)arg;
    int inner = try_call(do_ud2, 0, NULL);
    return (ureg)inner + 100;
}

static ureg ring3_basic(ureg arg)
{
    return (current_cpl() << 16) | arg;
}

static ureg ring3_print(ureg arg)
{
    u32 r[4];
    cpuid(0, 0, r);
    gprintf("%s:   (ring 3) hello from CPL %u, cpuid(0).eax=0x%x\n", GUEST_NAME, current_cpl(), r[0]);
    return arg;
}

static ureg ring3_hlt(ureg arg)
{
    (void)arg;
    hlt();
    return 0;
}

static ureg ring3_vmcall(ureg arg)
{
    struct hc_regs r = {0};
#if RT_64BIT
    r.rax = arg;
    hypercall_vmcall_raw(&r);
    return r.rax;
#else
    r.eax = arg;
    hypercall_vmcall_raw(&r);
    return r.eax;
#endif
}

static ureg ring3_vmmcall(ureg arg)
{
    struct hc_regs r = {0};
#if RT_64BIT
    r.rax = arg;
    hypercall_vmmcall_raw(&r);
    return r.rax;
#else
    r.eax = arg;
    hypercall_vmmcall_raw(&r);
    return r.eax;
#endif
}

static void report_hc(const char *where, const char *insn, int vec, ureg rax)
{
    if (vec)
        gprintf("%s: %s %s -> faulted with %s (vector %u)\n", GUEST_NAME, where, insn,
                vector_name((unsigned)vec), vec == RT_FAULT_DE ? 0 : (unsigned)vec);
    else
        gprintf("%s: %s %s -> rax=0x%llx (%lld)\n", GUEST_NAME, where, insn, (u64)rax,
                (s64)(sreg)rax);
}

/* Runs on an AP through the mailbox. */
static ureg ap_work(ureg arg)
{
    unsigned me = this_vcpu();
    int ud = try_call(do_ud2, 0, NULL);
    ureg r3 = 0;
    int r3v = run_in_ring3(ring3_basic, arg, &r3);
    bool ok = ud == VEC_UD && r3v == 0 && r3 == ((3u << 16) | arg) &&
              rt_cpus[me].vec_count[VEC_UD] >= 1 && rt_cpus[me].last_fault.vector == VEC_UD;
    return ok ? 0x1000 + me : 0xbad;
}

void guest_ap_main(unsigned vcpu)
{
    (void)vcpu;
    ap_mailbox_loop();
}

int guest_main(const struct hvm_start_info *si)
{
    struct rt_cpu *c = this_cpu();
    ureg res = 0;
    int v;

    gprintf("%s: runtime self-test (%s), cmdline \"%s\"\n", GUEST_NAME, rt_boot_protocol_name(),
            cmdline());
    check(si != NULL && si->magic == HVM_START_MAGIC, "start info magic");
    check(this_vcpu() == 0 && c->online, "BSP is vCPU 0 and online");
    check(current_cpl() == 0, "running at CPL 0");
#if RT_64BIT
    {
        extern char rt_pml4[];
        check(read_cr3() == (ureg)(uptr)rt_pml4, "own page tables loaded");
        check((read_cr4() & (3u << 20)) == 0, "SMEP/SMAP off");
    }
#endif

    /* library */
    {
        char buf[96];
        u64 n = 0;
        gsnprintf(buf, sizeof buf, "%5d|%-5d|%05u|%x|%08llx|%lld|%llu|%s|%c|%p|%%", -42, 7, 42u,
                  0xbeefu, 0x123456789abcULL, -1234567890123LL, 18446744073709551615ULL, "str",
                  'z', (void *)0x1000);
        check(!strcmp(buf, "  -42|7    |00042|beef|123456789abc|-1234567890123|"
                           "18446744073709551615|str|z|0x1000|%"),
              "gsnprintf formats");
        if (strcmp(buf, "  -42|7    |00042|beef|123456789abc|-1234567890123|"
                        "18446744073709551615|str|z|0x1000|%"))
            gprintf("%s:   got \"%s\"\n", GUEST_NAME, buf);
        check(parse_u64("0x1F", &n) && n == 31 && parse_u64("1000", &n) && n == 1000 &&
                  !parse_u64("12a", &n),
              "parse_u64");
        check(gsnprintf(buf, 4, "%s", "abcdef") == 6 && !strcmp(buf, "abc"), "gsnprintf truncates");
    }

    /* fault recovery */
    v = try_call(do_ok, 21, &res);
    check(v == 0 && res == 42, "try_call without fault returns the value");
    v = try_call(do_ud2, 0, NULL);
    check(v == VEC_UD && c->last_fault.vector == VEC_UD && c->last_fault.cpl == 0,
          "try_call: ud2 -> #UD recovered");
    check(c->try_slot == 0, "try slot cleared after recovery");
    v = try_call(do_div0, 0, NULL);
    check(v == RT_FAULT_DE, "try_call: div by zero -> #DE reported as RT_FAULT_DE");
    v = try_call(do_nested, 0, &res);
    check(v == 0 && res == 100 + VEC_UD, "nested try_call");
    {
        u64 val = 0;
        int r = rdmsr_safe(0x10, &val); /* TSC: architectural */
        check(r == 0 && val != 0, "rdmsr_safe(IA32_TSC) succeeds");
        r = rdmsr_safe(0xdeadbeef, &val);
        gprintf("%s: info: rdmsr_safe(0xdeadbeef) -> %s\n", GUEST_NAME,
                r ? vector_name((unsigned)r) : "no fault");
    }

    /* software interrupts at CPL 0 (opt-in: a PVM host cannot emulate them) */
    if (cmdline_has("swint")) {
        __asm__ volatile("int $0x40");
        __asm__ volatile("int $0x40");
        __asm__ volatile("int $0xff");
        check(irq_count(0, 0x40) == 2 && irq_count(0, 0xff) == 1 && c->last_irq == 0xff,
              "int 0x40 / 0xff counted, resumed");
    }

    /* external interrupts: wait (sti; hlt) for N of them, whatever the VMM sends */
    unsigned nirq = (unsigned)cmdline_get_u64("irqs", 0);
    if (nirq) {
        u32 before = c->irq_total;
        for (u64 spins = 0; c->irq_total - before < nirq && spins < 1000000; spins++)
            sti_hlt();
        cli();
        gprintf("%s: %u interrupt(s) taken, last vector 0x%x (count %u)\n", GUEST_NAME,
                c->irq_total - before, c->last_irq, irq_count(0, c->last_irq));
        check(c->irq_total - before >= nirq, "external interrupts counted and resumed (iret)");
    }

    /* ring 3 */
    for (int i = 0; i < 3; i++) {
        res = 0;
        v = run_in_ring3(ring3_basic, 7 + i, &res);
        if (v || res != ((3u << 16) | (ureg)(7 + i)))
            gprintf("%s:   run_in_ring3 -> %d, result 0x%lx, fault at 0x%lx err 0x%lx\n", GUEST_NAME, v, (unsigned long)res, (unsigned long)c->last_fault.ip, (unsigned long)c->last_fault.error);
        check(v == 0 && res == ((3u << 16) | (ureg)(7 + i)), "run_in_ring3 returns at CPL 3");
    }
    check(current_cpl() == 0 && c->ring3_slot == 0, "back at CPL 0, ring-3 slot cleared");
    v = run_in_ring3(ring3_print, 5, &res);
    if (v)
        gprintf("%s:   ring-3 print -> %s at 0x%lx err 0x%lx\n", GUEST_NAME, vector_name((unsigned)v),
                (unsigned long)c->last_fault.ip, (unsigned long)c->last_fault.error);
    check(v == 0 && res == 5, "ring 3 can print and run cpuid");
    v = run_in_ring3((rt_fn_t)do_ud2, 0, &res);
    check(v == VEC_UD && c->last_fault.cpl == 3, "ring-3 ud2 -> #UD ends the ring-3 run");
    v = run_in_ring3(ring3_hlt, 0, &res);
    check(v == VEC_GP, "ring-3 hlt -> #GP ends the ring-3 run");
    v = run_in_ring3(ring3_basic, 1, &res);
    check(v == 0 && res == ((3u << 16) | 1), "ring 3 works again after faults");

    /* hypercalls: printed, not checked (their outcome is the hypervisor's) */
    char hc[16];
    if (cmdline_get("hc", hc, sizeof hc) >= 0) {
        ureg rax = (ureg)cmdline_get_u64("hc_rax", 0);
        struct hc_regs r = {0};
        if (!strcmp(hc, "vmcall") || !strcmp(hc, "both")) {
#if RT_64BIT
            r.rax = rax;
            v = hypercall_vmcall(&r);
            report_hc("CPL 0", "VMCALL", v, r.rax);
#else
            r.eax = rax;
            v = hypercall_vmcall(&r);
            report_hc("CPL 0", "VMCALL", v, r.eax);
#endif
        }
        if (!strcmp(hc, "vmmcall") || !strcmp(hc, "both")) {
            memset(&r, 0, sizeof r);
#if RT_64BIT
            r.rax = rax;
            v = hypercall_vmmcall(&r);
            report_hc("CPL 0", "VMMCALL", v, r.rax);
#else
            r.eax = rax;
            v = hypercall_vmmcall(&r);
            report_hc("CPL 0", "VMMCALL", v, r.eax);
#endif
        }
        check(current_cpl() == 0 && c->try_slot == 0, "hypercall returned to CPL 0");
    }
    if (cmdline_has("ring3_hc")) {
        ureg rax = (ureg)cmdline_get_u64("hc_rax", 0);
        v = run_in_ring3(ring3_vmcall, rax, &res);
        report_hc("CPL 3", "VMCALL", v, res);
        v = run_in_ring3(ring3_vmmcall, rax, &res);
        report_hc("CPL 3", "VMMCALL", v, res);
        v = run_in_ring3(ring3_basic, 2, &res);
        check(v == 0 && res == ((3u << 16) | 2), "ring 3 works after ring-3 hypercalls");
    }

    /* SMP */
    unsigned want = (unsigned)cmdline_get_u64("vcpus", 1);
    if (want > RT_MAX_VCPUS)
        want = RT_MAX_VCPUS;
    if (want > 1) {
        unsigned got = wait_for_aps(want - 1, 50000000);
        check(got == want - 1, "all APs reported ready");
        for (unsigned i = 1; i < want; i++) {
            ureg r = 0;
            int rc = ap_call(i, ap_work, i, &r, 50000000);
            gprintf("%s: vCPU %u: ap_call -> rc %d result 0x%lx\n", GUEST_NAME, i, rc, (unsigned long)r);
            check(rc == 0 && r == 0x1000 + i, "AP ran fault recovery and ring 3");
        }
        check(vcpus_online() == want, "vcpus_online() counts every vCPU");
    }

    if (cmdline_has("fatal")) {
        gprintf("%s: ending with an unrecovered #UD (expect exit status 0xE6)\n", GUEST_NAME);
        __asm__ volatile("ud2");
    }

    return check_summary();
}
