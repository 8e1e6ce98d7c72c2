/* kvm_smp: the kvm personality across two vCPUs (docs/abi/kvm.md): vCPU 1 halts and vCPU 0
 *   - wakes it from `cli; hlt` with KVM_HC_KICK_CPU (only a kick can end that HLT),
 *   - kicks it *before* it halts, and its next `cli; hlt` must return at once (the kick is
 *     latched, KVM's pv_unhalted: Linux's PV spinlocks depend on it),
 *   - sends it an IPI with KVM_HC_SEND_IPI while it sits in `sti; hlt`; its IDT handler
 *     counts the vector, and the call answers 1 (then 2 for both vCPUs at once),
 *   - yields to it with KVM_HC_SCHED_YIELD,
 * and both vCPUs read kvmclock in turn, each reading after the other's: with
 * PVCLOCK_TSC_STABLE_BIT the readings must never go backwards across vCPUs.
 * A step that is not delivered hangs until the VMM's timeout (set one, e.g. 30 s), or fails
 * after `spins` pause loops where the guest can tell.
 *
 * VMM config: [vm] vcpus = 2, [hypervisor] hypercalls_enabled = true, [kvm] features absent.
 * Cmdline: eoi=x2apic|xapic as the VMM's interrupt path needs; spins=N (default 200000000).
 * Build as a 64-bit image and as a 32-bit PVH image. Exit status 0 only if every check
 * passed.
 */
#include "kvm_common.h"

#define VEC_IPI 0xf2
#define PINGPONG_ROUNDS 10000

enum cmd {
    CMD_NONE,
    CMD_HLT_CLI,   /* cli; hlt once (only a kick ends it) */
    CMD_LATCHED,   /* wait for `go`, then cli; hlt once (a kick came before) */
    CMD_HLT_STI,   /* sti; hlt until an IPI arrives */
    CMD_PINGPONG,  /* alternate kvmclock readings with vCPU 0 */
    CMD_EXIT,
};

static volatile u32 ap_cmd;       /* enum cmd, written by vCPU 0 */
static volatile u32 ap_seq;       /* bumped by vCPU 0 with each command */
static volatile u32 ap_done_seq;  /* the last command vCPU 1 finished */
static volatile u32 ap_halting;   /* vCPU 1 is about to execute HLT */
static volatile u32 ap_go;        /* CMD_LATCHED: the kick has been made */
static volatile u32 ap_wakeups;   /* HLTs vCPU 1 came back from */
static volatile u32 ap_apic_id = 0xffffffffu;
static volatile u32 ap_clock_ok = 1;

static struct pvclock_vcpu_time_info pvti[2] __aligned(64);
static volatile u64 pp_last;      /* the last kvmclock reading, either vCPU */
static volatile u32 pp_turn;      /* whose turn: 0 or 1 */
static volatile u32 pp_backwards;

static u64 spins;

static bool wait_for(volatile u32 *p, u32 want)
{
    for (u64 i = 0; i < spins; i++) {
        if (__atomic_load_n(p, __ATOMIC_ACQUIRE) == want)
            return true;
        pause();
    }
    return false;
}

static void pingpong(unsigned me)
{
    for (u32 round = 0; round < PINGPONG_ROUNDS; round++) {
        while (__atomic_load_n(&pp_turn, __ATOMIC_ACQUIRE) != me)
            pause();
        u64 t = pvclock_read(&pvti[me], NULL, NULL);
        if (t < pp_last)
            pp_backwards++;
        pp_last = t;
        __atomic_store_n(&pp_turn, 1 - me, __ATOMIC_RELEASE);
    }
}

void guest_ap_main(unsigned vcpu)
{
    if (vcpu != 1) {
        for (;;)
            sti_hlt();
    }
    if (has_feature(KVM_FEATURE_CLOCKSOURCE2))
        ap_clock_ok = wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti[1]) | 1) == 0;
    __atomic_store_n(&ap_apic_id, my_apic_id(), __ATOMIC_RELEASE);
    u32 seen = 0;
    for (;;) {
        while (__atomic_load_n(&ap_seq, __ATOMIC_ACQUIRE) == seen)
            pause();
        seen = ap_seq;
        switch (ap_cmd) {
        case CMD_HLT_CLI:
            cli();
            __atomic_store_n(&ap_halting, 1, __ATOMIC_RELEASE);
            hlt();
            break;
        case CMD_LATCHED:
            while (!__atomic_load_n(&ap_go, __ATOMIC_ACQUIRE))
                pause();
            cli();
            __atomic_store_n(&ap_halting, 1, __ATOMIC_RELEASE);
            hlt();
            break;
        case CMD_HLT_STI: {
            u32 before = irq_count(1, VEC_IPI);
            __atomic_store_n(&ap_halting, 1, __ATOMIC_RELEASE);
            while (irq_count(1, VEC_IPI) == before)
                sti_hlt();
            cli();
            break;
        }
        case CMD_PINGPONG:
            pingpong(1);
            break;
        case CMD_EXIT:
            cli();
            for (;;)
                hlt();
        }
        __atomic_store_n(&ap_halting, 0, __ATOMIC_RELEASE);
        __atomic_add_fetch(&ap_wakeups, 1, __ATOMIC_ACQ_REL);
        __atomic_store_n(&ap_done_seq, seen, __ATOMIC_RELEASE);
    }
}

static u32 post(enum cmd cmd)
{
    ap_cmd = cmd;
    return __atomic_add_fetch(&ap_seq, 1, __ATOMIC_ACQ_REL);
}

/* Lets vCPU 1 reach its HLT: it says so just before, then give it a little time. */
static bool let_it_halt(void)
{
    bool ok = wait_for(&ap_halting, 1);
    if (has_feature(KVM_FEATURE_CLOCKSOURCE2))
        pvclock_delay(&pvti[0], 10000000); /* 10 ms */
    else
        for (u32 i = 0; i < 1000000; i++)
            pause();
    return ok;
}

static void check_kick_from_cli_hlt(u32 ap)
{
    u32 seq = post(CMD_HLT_CLI);
    check(let_it_halt(), "vCPU 1 reached `cli; hlt`");
    check(ap_done_seq != seq, "vCPU 1 is still halted before the kick");
    expect(hc(KVM_HC_KICK_CPU, 0, ap, 0, 0), 0, "KICK_CPU of vCPU 1");
    check(wait_for(&ap_done_seq, seq), "the kick woke vCPU 1 from `cli; hlt`");
}

static void check_latched_kick(u32 ap)
{
    ap_go = 0;
    u32 seq = post(CMD_LATCHED);
    for (u32 i = 0; i < 100000; i++)
        pause(); /* vCPU 1 is spinning on `go`, not halted */
    expect(hc(KVM_HC_KICK_CPU, 0, ap, 0, 0), 0, "KICK_CPU of a running vCPU 1");
    __atomic_store_n(&ap_go, 1, __ATOMIC_RELEASE);
    check(wait_for(&ap_done_seq, seq),
          "vCPU 1's next `cli; hlt` returned: the earlier kick was latched");
}

static void check_ipi(u32 me, u32 ap)
{
    u32 before = irq_count(1, VEC_IPI);
    u32 seq = post(CMD_HLT_STI);
    check(let_it_halt(), "vCPU 1 reached `sti; hlt`");
    /* Bit (ap - min) of a0, min = the lower of the two ids. */
    u32 min = me < ap ? me : ap;
    expect(hc(KVM_HC_SEND_IPI, (ureg)1 << (ap - min), 0, min, APIC_DM_FIXED | VEC_IPI), 1,
           "SEND_IPI to vCPU 1 reaches 1 vCPU");
    check(wait_for(&ap_done_seq, seq), "vCPU 1 woke from `sti; hlt`");
    check(irq_count(1, VEC_IPI) == before + 1, "vCPU 1's IDT counted vector 0x%x once (%u -> %u)",
          VEC_IPI, before, irq_count(1, VEC_IPI));

    /* Both at once: vCPU 0 takes its copy when it opens its interrupt window. */
    if (ap - min < 8 * sizeof(ureg) && me - min < 8 * sizeof(ureg)) {
        u32 mine = irq_count(0, VEC_IPI);
        before = irq_count(1, VEC_IPI);
        seq = post(CMD_HLT_STI);
        let_it_halt();
        ureg bitmap = ((ureg)1 << (ap - min)) | ((ureg)1 << (me - min));
        expect(hc(KVM_HC_SEND_IPI, bitmap, 0, min, VEC_IPI), 2, "SEND_IPI to both vCPUs");
        check(wait_for(&ap_done_seq, seq), "vCPU 1 woke");
        for (u64 i = 0; i < spins && irq_count(0, VEC_IPI) == mine; i++) {
            sti();
            pause();
            cli();
        }
        check(irq_count(0, VEC_IPI) == mine + 1 && irq_count(1, VEC_IPI) == before + 1,
              "each vCPU counted the vector once");
    }
}

static void check_pingpong(void)
{
    if (!has_feature(KVM_FEATURE_CLOCKSOURCE2) ||
        !has_feature(KVM_FEATURE_CLOCKSOURCE_STABLE_BIT)) {
        gprintf("%s: kvmclock with PVCLOCK_TSC_STABLE_BIT not shown: cross-vCPU check skipped\n",
                GUEST_NAME);
        return;
    }
    check(ap_clock_ok, "vCPU 1 registered its kvmclock page");
    check(pvti[0].flags & pvti[1].flags & PVCLOCK_TSC_STABLE_BIT,
          "both pages carry PVCLOCK_TSC_STABLE_BIT");
    pp_turn = 0;
    pp_last = 0;
    pp_backwards = 0;
    u32 seq = post(CMD_PINGPONG);
    pingpong(0);
    check(wait_for(&ap_done_seq, seq), "vCPU 1 finished the alternation");
    check(pp_backwards == 0, "%u alternating readings on two vCPUs never went backwards (%u did)",
          2 * PINGPONG_ROUNDS, pp_backwards);
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    choose_insn();
    spins = cmdline_get_u64("spins", 200000000);
    gprintf("%s: kvm personality, two vCPUs (%s, %s)\n", GUEST_NAME, rt_boot_protocol_name(),
            RT_64BIT ? "64-bit" : "32-bit");
    if (!wait_for_aps(1, spins)) {
        check(false, "vCPU 1 came up (run with [vm] vcpus = 2)");
        return finish();
    }
    for (u64 i = 0; i < spins && ap_apic_id == 0xffffffffu; i++)
        pause();
    check(ap_apic_id != 0xffffffffu, "vCPU 1 published its APIC id");
    u32 me = my_apic_id(), ap = ap_apic_id;
    gprintf("%s: APIC ids: vCPU 0 = %u, vCPU 1 = %u\n", GUEST_NAME, me, ap);
    if (has_feature(KVM_FEATURE_CLOCKSOURCE2))
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti[0]) | 1) == 0,
              "vCPU 0 registered its kvmclock page");
    u32 f = kvm_features();
    check((f & KVM_HYPERCALL_FEATURES) == KVM_HYPERCALL_FEATURES,
          "PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD shown (EAX 0x%x)", f);

    check_kick_from_cli_hlt(ap);
    check_latched_kick(ap);
    check_ipi(me, ap);
    expect(hc(KVM_HC_SCHED_YIELD, ap, 0, 0, 0), 0, "SCHED_YIELD to vCPU 1");
    check_pingpong();
    check(ap_wakeups >= 4, "vCPU 1 came back %u times", ap_wakeups);
    post(CMD_EXIT);
    return finish();
}
