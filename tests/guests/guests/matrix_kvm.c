/* matrix_kvm: the KVM column of polyvisor's cross-personality matrix (docs/testing.md).
 * The answers are docs/abi/kvm.md's: RAX number, RBX RCX RDX RSI arguments, RAX result,
 * negated errors (-KVM_ENOSYS for disabled and unknown calls, -KVM_EPERM for denied calls and
 * CPL 3 callers, -KVM_EFAULT for a bad pointer), kvmclock as the time source, KVM_HC_KICK_CPU
 * to wake a halted vCPU, KVM_HC_SCHED_YIELD to yield. KVM has no console or shutdown call.
 * Scenarios: see matrix.h.
 */
/* kvm_common.h's own check() and helpers other guests use are not needed here. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "kvm_common.h"
#include "matrix.h"

#define UNKNOWN_NUMBER 0x7ff0

static struct answer call(ureg nr, ureg a0, ureg a1)
{
    return hc_with(mx_insn0 == MX_VMMCALL ? VMMCALL : VMCALL, nr, a0, a1, 0, 0);
}

static void expect_rax(const char *what, struct answer a, ureg want)
{
    if (a.vec == -1)
        check_true(what, false, "a register other than RAX changed");
    else if (a.vec)
        check_fault(what, a.vec, 0);
    else
        check_eq(what, a.rax, want);
}

static void identity(void)
{
    mx_check_signature(KVM_CPUID_SIGNATURE, "KVMKVMKVM\0\0\0", KVM_CPUID_FEATURES);
}

static struct kvm_clock_pairing pairing;

static void bad_pointers(void)
{
    u64 end = mx_ram_end();
    check_true("RAM end known", end != 0, "no memory map");
    expect_rax("CLOCK_PAIRING straddling the end of RAM -> -KVM_EFAULT",
               call(KVM_HC_CLOCK_PAIRING, (ureg)(end - 8), KVM_CLOCK_PAIRING_WALLCLOCK),
               KVM_ERR(KVM_EFAULT));
    expect_rax("CLOCK_PAIRING beyond RAM -> -KVM_EFAULT",
               call(KVM_HC_CLOCK_PAIRING, (ureg)(end + 0x10000), KVM_CLOCK_PAIRING_WALLCLOCK),
               KVM_ERR(KVM_EFAULT));
    expect_rax("CLOCK_PAIRING into RAM afterwards -> 0",
               call(KVM_HC_CLOCK_PAIRING, gpa(&pairing), KVM_CLOCK_PAIRING_WALLCLOCK), 0);
    check_true("CLOCK_PAIRING wrote the TSC", pairing.tsc != 0, "0");
}

static struct pvclock_vcpu_time_info clock __aligned(64);

static void time_source(void)
{
    check_true("KVM_FEATURE_CLOCKSOURCE2 shown", has_feature(KVM_FEATURE_CLOCKSOURCE2),
               "features 0x%x", kvm_features());
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, gpa(&clock) | 1);
    check_true("the kvmclock page is published (even, non-zero version)",
               clock.version && !(clock.version & 1), "version %u", clock.version);
    check_eq("the kvmclock page says PVCLOCK_TSC_STABLE_BIT", clock.flags & PVCLOCK_TSC_STABLE_BIT,
             PVCLOCK_TSC_STABLE_BIT);
    u64 t0 = pvclock_read(&clock, NULL, NULL);
    mx_spin(20000);
    mx_check_clock("kvmclock", t0, pvclock_read(&clock, NULL, NULL), 60000000000ull);
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    mx_init();
    if (mx_is("identity")) {
        identity();
    } else if (mx_is("disabled")) {
        expect_rax("KVM_HC_VAPIC_POLL_IRQ while disabled -> -KVM_ENOSYS",
                   call(KVM_HC_VAPIC_POLL_IRQ, 0, 0), KVM_ERR(KVM_ENOSYS));
    } else if (mx_is("enabled")) {
        expect_rax("KVM_HC_VAPIC_POLL_IRQ -> 0", call(KVM_HC_VAPIC_POLL_IRQ, 0, 0), 0);
    } else if (mx_is("unknown")) {
        expect_rax("an unknown number -> -KVM_ENOSYS", call(UNKNOWN_NUMBER, 0, 0),
                   KVM_ERR(KVM_ENOSYS));
    } else if (mx_is("ring")) {
        struct hc_regs r;
        kvm_load(&r, KVM_HC_VAPIC_POLL_IRQ, 0, 0, 0, 0);
        int vec = mx_call_ring3(&r);
        struct answer a = {vec, vec ? 0 : HC_NR(r), r};
        expect_rax("KVM_HC_VAPIC_POLL_IRQ from CPL 3 -> -KVM_EPERM", a, KVM_ERR(KVM_EPERM));
    } else if (mx_is("denied")) {
        expect_rax("KVM_HC_VAPIC_POLL_IRQ denied by the config -> -KVM_EPERM",
                   call(KVM_HC_VAPIC_POLL_IRQ, 0, 0), KVM_ERR(KVM_EPERM));
    } else if (mx_is("yield")) {
        check_true("KVM_FEATURE_PV_SCHED_YIELD shown", has_feature(KVM_FEATURE_PV_SCHED_YIELD),
                   "features 0x%x", kvm_features());
        expect_rax("KVM_HC_SCHED_YIELD to APIC id 0 -> 0", call(KVM_HC_SCHED_YIELD, 0, 0), 0);
    } else if (mx_is("time")) {
        time_source();
    } else if (mx_is("wake")) {
        check_true("KVM_FEATURE_PV_UNHALT shown", has_feature(KVM_FEATURE_PV_UNHALT),
                   "features 0x%x", kvm_features());
        if (mx_ap_waiting(0)) {
            expect_rax("KVM_HC_KICK_CPU of APIC id 1 -> 0", call(KVM_HC_KICK_CPU, 0, 1), 0);
            mx_check_ap_woken();
        }
    } else if (mx_is("bad-pointer")) {
        bad_pointers();
    } else if (mx_is("caller32")) {
        check_eq("a 32-bit caller", RT_64BIT, 0);
        identity();
        expect_rax("KVM_HC_VAPIC_POLL_IRQ -> 0", call(KVM_HC_VAPIC_POLL_IRQ, 0, 0), 0);
        expect_rax("an unknown number -> -KVM_ENOSYS at 32 bits (0xfffffc18)",
                   call(UNKNOWN_NUMBER, 0, 0), 0xfffffc18u);
        bad_pointers();
    } else {
        return mx_unknown_scenario();
    }
    return check_summary();
}
