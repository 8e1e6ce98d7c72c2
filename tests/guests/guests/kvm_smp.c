/* kvm_smp: the kvm personality across several vCPUs (docs/abi/kvm.md): vCPU 1 halts and
 * vCPU 0
 *   - wakes it from `cli; hlt` with KVM_HC_KICK_CPU (only a kick can end that HLT),
 *   - kicks it *before* it halts, and its next `cli; hlt` must return at once (the kick is
 *     latched, KVM's pv_unhalted: Linux's PV spinlocks depend on it),
 *   - does the same with KVM_HC_SEND_IPI in APIC_DM_REMRD mode (a kick by IPI),
 *   - sends it an IPI with KVM_HC_SEND_IPI while it sits in `sti; hlt`; its IDT handler
 *     counts the vector, and the call answers 1,
 *   - sends one IPI to every vCPU at once (the answer is the vCPU count; each IDT counts the
 *     vector once; vCPUs 2.. sit in `sti; hlt` all along),
 *   - yields to it with KVM_HC_SCHED_YIELD,
 * and both vCPUs read kvmclock in turn, each reading after the other's: with
 * PVCLOCK_TSC_STABLE_BIT the readings must never go backwards across vCPUs.
 * A step that is not delivered fails after `wait_ms` (vCPU 1 then stays halted; the VMM's
 * "every vCPU halted" or its timeout ends the run).
 *
 * VMM config: [vm] vcpus = 2 or more, [hypervisor] hypercalls_enabled = true, [kvm] features
 * absent. Cmdline: vcpus=N (default 2: the vCPUs to expect), wait_ms=N (default 2000),
 * tsc_khz=N (for the timeouts), eoi=... as the VMM's interrupt path needs.
 * Exit status 0 only if every check passed.
 */
#include "kvm_common.h"

#define VEC_IPI 0xf2
#define PINGPONG_ROUNDS 200

enum cmd {
    CMD_NONE,
    CMD_HLT_CLI,  /* cli; hlt once (only a kick ends it) */
    CMD_LATCHED,  /* wait for `go`, then cli; hlt once (a kick came before) */
    CMD_HLT_STI,  /* sti; hlt until an IPI arrives */
    CMD_PINGPONG, /* alternate kvmclock readings with vCPU 0 */
    CMD_EXIT,
};

static volatile u32 ap_cmd;      /* enum cmd, written by vCPU 0 */
static volatile u32 ap_seq;      /* bumped by vCPU 0 with each command */
static volatile u32 ap_done_seq; /* the last command vCPU 1 finished */
static volatile u32 ap_halting;  /* vCPU 1 is about to execute HLT */
static volatile u32 ap_go;       /* CMD_LATCHED: the kick has been made */
static volatile u32 ap_wakeups;  /* HLTs vCPU 1 came back from */
static volatile u32 apic_ids[RT_MAX_VCPUS] = {[0 ... RT_MAX_VCPUS - 1] = 0xffffffffu};
static volatile u32 ap_clock_ok = 1;

static struct pvclock_vcpu_time_info pvti[2] __aligned(64);
static volatile u64 pp_last;  /* the last kvmclock reading, either vCPU */
static volatile u32 pp_turn;  /* whose turn: 0 or 1 */
static volatile u32 pp_backwards;
static volatile u32 pp_stalled;

static u64 wait_ms = 2000;

static bool wait_for(volatile u32 *p, u32 want)
{
    u64 deadline = deadline_ms(wait_ms);
    while (__atomic_load_n(p, __ATOMIC_ACQUIRE) != want)
        if (past(deadline))
            return false;
    return true;
}

/* Alternates kvmclock readings with the other vCPU. While it waits for its turn a vCPU yields
 * to the other with KVM_HC_SCHED_YIELD, as a PV spinlock would: on a busy host the two vCPU
 * threads may share one CPU, and spinning would wait for the scheduler's tick each round. */
static void pingpong(unsigned me)
{
    u32 other = apic_ids[1 - me];
    for (u32 round = 0; round < PINGPONG_ROUNDS; round++) {
        u64 deadline = deadline_ms(wait_ms);
        while (__atomic_load_n(&pp_turn, __ATOMIC_ACQUIRE) != me) {
            if (past(deadline)) {
                pp_stalled = 1; /* the other vCPU stopped answering */
                return;
            }
            hc(KVM_HC_SCHED_YIELD, other, 0, 0, 0);
        }
        u64 t = pvclock_read(&pvti[me], NULL, NULL);
        if (t < pp_last)
            pp_backwards++;
        pp_last = t;
        __atomic_store_n(&pp_turn, 1 - me, __ATOMIC_RELEASE);
    }
}

void guest_ap_main(unsigned vcpu)
{
    __atomic_store_n(&apic_ids[vcpu], my_apic_id(), __ATOMIC_RELEASE);
    if (vcpu != 1) {
        /* Counts whatever IPIs arrive (the runtime counts every vector). */
        for (;;)
            sti_hlt();
    }
    if (has_feature(KVM_FEATURE_CLOCKSOURCE2))
        ap_clock_ok = wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti[1]) | 1) == 0;
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
    ap_halting = 0;
    ap_cmd = cmd;
    return __atomic_add_fetch(&ap_seq, 1, __ATOMIC_ACQ_REL);
}

/* Lets vCPU 1 reach its HLT: it says so just before, then give it 10 ms. */
static bool let_it_halt(void)
{
    bool ok = wait_for(&ap_halting, 1);
    u64 deadline = deadline_ms(10);
    while (!past(deadline))
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

/* A kick made while vCPU 1 runs: its next `cli; hlt` returns at once. `by_ipi`: the kick is
 * a KVM_HC_SEND_IPI with APIC_DM_REMRD instead of KVM_HC_KICK_CPU. */
static void check_latched_kick(u32 me, u32 ap, bool by_ipi)
{
    ap_go = 0;
    u32 seq = post(CMD_LATCHED);
    u64 deadline = deadline_ms(5);
    while (!past(deadline))
        pause(); /* vCPU 1 is spinning on `go`, not halted */
    check(ap_done_seq != seq, "vCPU 1 waits for `go`");
    if (by_ipi) {
        u32 min = me < ap ? me : ap;
        expect(hc(KVM_HC_SEND_IPI, (ureg)1 << (ap - min), 0, min, APIC_DM_REMRD), 1,
               "SEND_IPI APIC_DM_REMRD (a kick) to a running vCPU 1");
    } else {
        expect(hc(KVM_HC_KICK_CPU, 0, ap, 0, 0), 0, "KICK_CPU of a running vCPU 1");
    }
    __atomic_store_n(&ap_go, 1, __ATOMIC_RELEASE);
    check(wait_for(&ap_done_seq, seq),
          by_ipi ? "vCPU 1's next `cli; hlt` returned: the earlier REMRD IPI was latched"
                 : "vCPU 1's next `cli; hlt` returned: the earlier kick was latched");
}

static void check_ipi(u32 me, u32 ap)
{
    u32 before = irq_count(1, VEC_IPI);
    u32 seq = post(CMD_HLT_STI);
    check(let_it_halt(), "vCPU 1 reached `sti; hlt`");
    check(ap_done_seq != seq, "vCPU 1 is still halted before the IPI");
    /* Bit (ap - min) of a0, min = the lower of the two ids. */
    u32 min = me < ap ? me : ap;
    expect(hc(KVM_HC_SEND_IPI, (ureg)1 << (ap - min), 0, min, APIC_DM_FIXED | VEC_IPI), 1,
           "SEND_IPI to vCPU 1 reaches 1 vCPU");
    check(wait_for(&ap_done_seq, seq), "vCPU 1 woke from `sti; hlt`");
    u32 after = irq_count(1, VEC_IPI);
    check(after == before + 1, "vCPU 1's IDT counted vector 0x%x once (%u -> %u)", VEC_IPI,
          before, after);
}

/* One SEND_IPI to every vCPU: vCPU 1 in `sti; hlt`, vCPUs 2.. in their idle `sti; hlt`,
 * vCPU 0 (the caller) when it opens its interrupt window. */
static void check_ipi_all(unsigned n)
{
    u32 min = 0xffffffffu, max = 0;
    for (unsigned v = 0; v < n; v++) {
        min = apic_ids[v] < min ? apic_ids[v] : min;
        max = apic_ids[v] > max ? apic_ids[v] : max;
    }
    if (max - min >= 8 * sizeof(ureg)) {
        check(false, "APIC ids %u..%u fit one bitmap", min, max);
        return;
    }
    ureg bitmap = 0;
    u32 before[RT_MAX_VCPUS];
    for (unsigned v = 0; v < n; v++) {
        bitmap |= (ureg)1 << (apic_ids[v] - min);
        before[v] = irq_count(v, VEC_IPI);
    }
    u32 seq = post(CMD_HLT_STI);
    let_it_halt();
    char what[64];
    gsnprintf(what, sizeof what, "SEND_IPI to all %u vCPUs", n);
    expect(hc(KVM_HC_SEND_IPI, bitmap, 0, min, VEC_IPI), n, what);
    check(wait_for(&ap_done_seq, seq), "vCPU 1 woke");
    u64 deadline = deadline_ms(wait_ms);
    while (irq_count(0, VEC_IPI) == before[0] && !past(deadline)) {
        sti();
        pause();
        cli();
    }
    for (unsigned v = 2; v < n; v++)
        while (irq_count(v, VEC_IPI) == before[v] && !past(deadline))
            pause();
    for (unsigned v = 0; v < n; v++) {
        u32 now = irq_count(v, VEC_IPI);
        check(now == before[v] + 1, "vCPU %u's IDT counted the vector once (%u -> %u)", v,
              before[v], now);
    }
}

/* Returns the number of commands vCPU 1 ran (0 or 1). */
static u32 check_pingpong(void)
{
    if (!has_feature(KVM_FEATURE_CLOCKSOURCE2) ||
        !has_feature(KVM_FEATURE_CLOCKSOURCE_STABLE_BIT)) {
        gprintf("%s: kvmclock with PVCLOCK_TSC_STABLE_BIT not shown: cross-vCPU check skipped\n",
                GUEST_NAME);
        return 0;
    }
    check(ap_clock_ok, "vCPU 1 registered its kvmclock page");
    check(pvti[0].flags & pvti[1].flags & PVCLOCK_TSC_STABLE_BIT,
          "both pages carry PVCLOCK_TSC_STABLE_BIT");
    check(pvti[0].tsc_timestamp == pvti[1].tsc_timestamp &&
              pvti[0].system_time == pvti[1].system_time,
          "both pages carry the same reference pair (master clock)");
    if (ap_done_seq != ap_seq) {
        check(false, "vCPU 1 is free for the alternation (it is stuck in an earlier command)");
        return 0;
    }
    pp_turn = 0;
    pp_last = 0;
    pp_backwards = 0;
    pp_stalled = 0;
    u32 seq = post(CMD_PINGPONG);
    pingpong(0);
    check(wait_for(&ap_done_seq, seq) && !pp_stalled, "vCPU 1 finished the alternation");
    check(pp_backwards == 0, "%u alternating readings on two vCPUs never went backwards (%u did)",
          2 * PINGPONG_ROUNDS, pp_backwards);
    return 1;
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    choose_insn();
    wait_ms = cmdline_get_u64("wait_ms", 2000);
    unsigned n = (unsigned)cmdline_get_u64("vcpus", 2);
    gprintf("%s: kvm personality, %u vCPUs (%s, %s)\n", GUEST_NAME, n, rt_boot_protocol_name(),
            RT_64BIT ? "64-bit" : "32-bit");
    if (n < 2 || n > RT_MAX_VCPUS) {
        check(false, "vcpus=%u is between 2 and %u", n, RT_MAX_VCPUS);
        return check_summary();
    }
    apic_ids[0] = my_apic_id();
    if (wait_for_aps(n - 1, 2000000000ull) < n - 1) {
        check(false, "%u APs came up (run with [vm] vcpus = %u)", n - 1, n);
        return check_summary();
    }
    bool ids = true;
    for (unsigned v = 1; v < n && ids; v++) {
        u64 deadline = deadline_ms(wait_ms);
        while (__atomic_load_n(&apic_ids[v], __ATOMIC_ACQUIRE) == 0xffffffffu && !past(deadline))
            pause();
        ids = apic_ids[v] != 0xffffffffu;
    }
    check(ids, "every AP published its APIC id");
    u32 me = apic_ids[0], ap = apic_ids[1];
    gprintf("%s: APIC ids: vCPU 0 = %u, vCPU 1 = %u\n", GUEST_NAME, me, ap);
    if (has_feature(KVM_FEATURE_CLOCKSOURCE2))
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti[0]) | 1) == 0,
              "vCPU 0 registered its kvmclock page");
    u32 f = kvm_features();
    check((f & KVM_HYPERCALL_FEATURES) == KVM_HYPERCALL_FEATURES,
          "PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD shown (EAX 0x%x)", f);

    check_kick_from_cli_hlt(ap);
    check_latched_kick(me, ap, false);
    check_latched_kick(me, ap, true);
    check_ipi(me, ap);
    check_ipi_all(n);
    expect(hc(KVM_HC_SCHED_YIELD, ap, 0, 0, 0), 0, "SCHED_YIELD to vCPU 1");
    u32 commands = 5 + check_pingpong();
    u32 wakeups = ap_wakeups;
    check(wakeups == commands, "vCPU 1 came back from %u of %u commands", wakeups, commands);
    post(CMD_EXIT);
    return check_summary();
}
