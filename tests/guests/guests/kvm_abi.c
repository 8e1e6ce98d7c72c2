/* kvm_abi: checks polyvisor's kvm personality from the inside (docs/abi/kvm.md): CPUID, every
 * row of the hypercall table from ring 0 and ring 3, every error answer, bad guest addresses,
 * the KVM_HC_MAP_GPA_RANGE validation table, self-directed KICK_CPU / SEND_IPI /
 * SCHED_YIELD, KVM's MSRs, and (64-bit image) calls made from compatibility mode, where the
 * number, the arguments and the answer are 32 bits wide whatever the upper register halves
 * hold. Built as a 64-bit image and as a 32-bit PVH image (32-bit callers: every value and
 * answer at 32 bits, -1000 reads as 0xfffffc18). One line per check; exit status 0 only if
 * every check passed, 1 otherwise.
 *
 * Cmdline (the host test passes what its VMM config implies):
 *   expect=enabled     (default) [hypervisor] hypercalls_enabled = true, [kvm] features
 *                      absent: every hypercall-backed bit must be shown
 *   expect=disabled    hypercalls off: every number answers -KVM_ENOSYS at CPL 0, no
 *                      hypercall-backed bit is shown
 *   expect=deny        some calls denied (deny=...): they answer -KVM_EPERM at CPL 0 and the
 *                      feature bit of a denied call is hidden
 *   expect=list        an explicit [kvm] features list: each feature-gated call works when its
 *                      bit is shown and answers -KVM_ENOSYS when it is not
 *   deny=1,10          the denied call numbers (decimal, comma-separated)
 *   features=0xN       CPUID 0x40000001.EAX must be exactly N
 *   hints=N            CPUID 0x40000001.EDX must be exactly N (KVM_HINTS_REALTIME)
 *   pairing=ok|eopnotsupp  what KVM_HC_CLOCK_PAIRING answers (the host's TSC is stable or
 *                      not; default: by CPUID bit 24)
 *   max_ranges=N       [kvm] max_gpa_ranges = N, and N equals the ranges this guest declares:
 *                      one more isolated range must answer -KVM_E2BIG
 *   cpl3_vmcall=abi|host, cpl3_vmmcall=abi|host
 *                      abi (default): the instruction at CPL 3 reaches the VMM, so check the
 *                      ABI's -KVM_EPERM; host: this host answers it without the VMM (see
 *                      docs/host-support.md): print what happened as "host: ..." lines, for
 *                      the host test to compare with host_check()
 *   insn=vmcall|vmmcall  the instruction for "native" calls (default: by CPU vendor)
 *   selfkick_hlt=0     skip "a kick before HLT makes HLT return" (hangs a VMM that loses it)
 *
 * Lines "expect host report: ..." are the end-of-VM report lines the host's engine must give
 * for the KVM_HC_MAP_GPA_RANGE map.
 */
#include "kvm_common.h"

enum scenario { ENABLED, DISABLED, DENY, LIST };
static enum scenario sc = ENABLED;
static const char *const scenario_name[] = {"enabled", "disabled", "deny", "list"};

static bool denied[64];
static bool cpl3_abi[2] = {true, true};

/* ------------------------------------------------------------------ CPUID */

static void check_cpuid(void)
{
    u32 r[4];
    cpuid(KVM_CPUID_SIGNATURE, 0, r);
    check(r[0] == 0x40000001, "CPUID 0x40000000.EAX = 0x40000001 (got 0x%x)", r[0]);
    check(r[1] == 0x4b4d564b && r[2] == 0x564b4d56 && r[3] == 0x4d,
          "CPUID 0x40000000 signature \"KVMKVMKVM\\0\\0\\0\" (got %08x %08x %08x)", r[1], r[2],
          r[3]);
    cpuid(KVM_CPUID_FEATURES, 0, r);
    gprintf("%s: CPUID 0x40000001 = %08x %08x %08x %08x\n", GUEST_NAME, r[0], r[1], r[2], r[3]);
    check(r[1] == 0 && r[2] == 0, "CPUID 0x40000001 EBX = ECX = 0");
    check((r[0] & ~KVM_BACKABLE_FEATURES) == 0,
          "only backable feature bits are shown (extra: 0x%x)", r[0] & ~KVM_BACKABLE_FEATURES);
    switch (sc) {
    case ENABLED:
        check((r[0] & KVM_HYPERCALL_FEATURES) == KVM_HYPERCALL_FEATURES,
              "PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD, HC_MAP_GPA_RANGE shown (EAX 0x%x)", r[0]);
        check((r[0] >> KVM_FEATURE_NOP_IO_DELAY) & 1, "NOP_IO_DELAY shown");
        check((r[0] >> KVM_FEATURE_POLL_CONTROL) & 1, "POLL_CONTROL shown");
        break;
    case DISABLED:
        check((r[0] & KVM_HYPERCALL_FEATURES) == 0,
              "no hypercall-backed bit shown with hypercalls off (EAX 0x%x)", r[0]);
        check((r[0] >> KVM_FEATURE_NOP_IO_DELAY) & 1, "NOP_IO_DELAY still shown");
        check((r[0] >> KVM_FEATURE_POLL_CONTROL) & 1, "POLL_CONTROL still shown");
        break;
    case DENY: {
        static const struct {
            unsigned nr, bit;
            const char *name;
        } gated[] = {
            {KVM_HC_KICK_CPU, KVM_FEATURE_PV_UNHALT, "PV_UNHALT"},
            {KVM_HC_SEND_IPI, KVM_FEATURE_PV_SEND_IPI, "PV_SEND_IPI"},
            {KVM_HC_SCHED_YIELD, KVM_FEATURE_PV_SCHED_YIELD, "PV_SCHED_YIELD"},
            {KVM_HC_MAP_GPA_RANGE, KVM_FEATURE_HC_MAP_GPA_RANGE, "HC_MAP_GPA_RANGE"},
        };
        for (unsigned i = 0; i < ARRAY_SIZE(gated); i++) {
            bool shown = (r[0] >> gated[i].bit) & 1;
            if (denied[gated[i].nr])
                check(!shown, "%s hidden: call %u is denied", gated[i].name, gated[i].nr);
            else
                check(shown, "%s shown: call %u is permitted", gated[i].name, gated[i].nr);
        }
        break;
    }
    case LIST:
        break;
    }
    u64 want;
    char buf[24];
    if (cmdline_get("features", buf, sizeof buf) >= 0 && parse_u64(buf, &want))
        check(r[0] == (u32)want, "CPUID 0x40000001.EAX = 0x%x as configured (got 0x%x)",
              (u32)want, r[0]);
    else
        check(r[3] == 0 || r[3] == 1, "CPUID 0x40000001 EDX holds at most KVM_HINTS_REALTIME");
    if (cmdline_get("hints", buf, sizeof buf) >= 0 && parse_u64(buf, &want))
        check(r[3] == (u32)want, "CPUID 0x40000001.EDX = 0x%x as configured (got 0x%x)",
              (u32)want, r[3]);
    /* Clock bits come and go together: they need a known, stable TSC. */
    u32 clock = r[0] & ((1u << 0) | (1u << 3) | (1u << 24));
    if (sc != LIST)
        check(clock == 0 || clock == ((1u << 0) | (1u << 3) | (1u << 24)),
              "kvmclock bits 0, 3, 24 all or none (got 0x%x)", clock);
    /* Every vCPU sees the same leaves; the leaf does not depend on the subleaf. */
    u32 again[4];
    cpuid(KVM_CPUID_FEATURES, 7, again);
    check(!memcmp(r, again, sizeof r), "CPUID 0x40000001 ignores ECX");
}

/* ------------------------------------------------------------ ring 3 */

static const ureg every_number[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1000, 0xffffffff};

/* KVM checks CPL before the number: ring 3 gets -KVM_EPERM for everything. Where this host
 * answers an instruction itself (cpl3_<insn>=host), the guest prints what it saw instead. */
static void check_ring3(void)
{
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        char first[64] = "";
        bool same = true;
        for (unsigned i = 0; i < ARRAY_SIZE(every_number); i++) {
            char what[64];
            gsnprintf(what, sizeof what, "number %lu, %s at CPL 3",
                      (unsigned long)every_number[i], insn_name[insn]);
            struct answer a = hc3(insn, every_number[i], 1, 2, 3, 4);
            if (cpl3_abi[insn]) {
                expect(a, KVM_ERR(KVM_EPERM), what);
                continue;
            }
            char got[64];
            describe(&a, got, sizeof got);
            gprintf("%s: host: %s -> %s\n", GUEST_NAME, what, got);
            if (!i)
                memcpy(first, got, sizeof first);
            else if (strcmp(first, got))
                same = false;
        }
        if (!cpl3_abi[insn])
            check(same, "%s at CPL 3 answered the same for every number (%s)", insn_name[insn],
                  first);
    }
    check(current_cpl() == 0, "back at CPL 0 after the ring-3 calls");
}

/* ------------------------------------------------------- refusal scenarios */

static void check_all_unknown(void)
{
    for (unsigned i = 0; i < ARRAY_SIZE(every_number); i++)
        for (int insn = VMCALL; insn <= VMMCALL; insn++) {
            char what[72];
            gsnprintf(what, sizeof what, "hypercalls off: number %lu, %s at CPL 0",
                      (unsigned long)every_number[i], insn_name[insn]);
            expect(hc_with(insn, every_number[i], 0, 0, 0, 0), KVM_ERR(KVM_ENOSYS), what);
        }
    /* With arguments that would make the calls do something. */
    expect(hc(KVM_HC_SEND_IPI, 1, 0, my_apic_id(), 0xf0), KVM_ERR(KVM_ENOSYS),
           "hypercalls off: SEND_IPI to myself");
    expect(hc(KVM_HC_MAP_GPA_RANGE, 0x400000, 1, 0, 0), KVM_ERR(KVM_ENOSYS),
           "hypercalls off: MAP_GPA_RANGE of a RAM page");
}

/* A call that is denied answers -KVM_EPERM with either instruction. */
static bool check_denied(unsigned nr, const char *name)
{
    if (!denied[nr])
        return false;
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        char what[64];
        gsnprintf(what, sizeof what, "%s (denied), %s", name, insn_name[insn]);
        expect(hc_with(insn, nr, 1, my_apic_id(), my_apic_id(), 0xf0), KVM_ERR(KVM_EPERM), what);
    }
    return true;
}

/* A feature-gated call whose bit is not shown answers -KVM_ENOSYS (KVM's guest_pv_has). */
static bool check_hidden(unsigned nr, unsigned bit, const char *name)
{
    if (has_feature(bit))
        return false;
    expect(hc(nr, 0x400000, 1, my_apic_id(), 0xf0), KVM_ERR(KVM_ENOSYS), name);
    return true;
}

/* ------------------------------------------------------------ simple rows */

static void check_vapic_poll_irq(void)
{
    if (check_denied(KVM_HC_VAPIC_POLL_IRQ, "KVM_HC_VAPIC_POLL_IRQ"))
        return;
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        char what[64];
        gsnprintf(what, sizeof what, "KVM_HC_VAPIC_POLL_IRQ, %s", insn_name[insn]);
        expect(hc_with(insn, KVM_HC_VAPIC_POLL_IRQ, 1, 2, 3, 4), 0, what);
    }
}

static void check_unknown_numbers(void)
{
    static const ureg numbers[] = {0, 2, 3, 4, 6, 7, 8, 13, 14, 1000, 0xffffffff};
    for (unsigned i = 0; i < ARRAY_SIZE(numbers); i++) {
        if (numbers[i] < ARRAY_SIZE(denied) && denied[numbers[i]])
            continue;
        char what[48];
        gsnprintf(what, sizeof what, "unknown number %lu", (unsigned long)numbers[i]);
        expect(hc(numbers[i], 0, 0, 0, 0), KVM_ERR(KVM_ENOSYS), what);
    }
#if RT_64BIT
    /* 64-bit callers: all of RAX is the number. */
    expect(hc(0x100000000ull | KVM_HC_VAPIC_POLL_IRQ, 0, 0, 0, 0), KVM_ERR(KVM_ENOSYS),
           "RAX = 0x100000001 is not VAPIC_POLL_IRQ in 64-bit mode");
#endif
}

/* --------------------------------------------------------------- KICK_CPU */

static void check_kick_cpu(void)
{
    if (check_denied(KVM_HC_KICK_CPU, "KVM_HC_KICK_CPU") ||
        check_hidden(KVM_HC_KICK_CPU, KVM_FEATURE_PV_UNHALT, "KICK_CPU without PV_UNHALT"))
        return;
    u32 me = my_apic_id();
    expect(hc(KVM_HC_KICK_CPU, 0, 0xfe, 0, 0), 0, "KICK_CPU of an absent APIC id (0xfe)");
    expect(hc(KVM_HC_KICK_CPU, ~(ureg)0, 0xfd, 0, 0), 0, "KICK_CPU flags a0 are ignored");
    expect(hc(KVM_HC_KICK_CPU, 0, me, 0, 0), 0, "KICK_CPU of myself");
    if (cmdline_get_u64("selfkick_hlt", 1)) {
        /* The kick is latched (KVM's pv_unhalted): HLT with interrupts off returns at once. A
         * VMM that loses it ends the run ("every vCPU is halted") or hangs to its timeout. */
        gprintf("%s: cli; hlt after kicking myself (ends the run if the kick was lost)\n",
                GUEST_NAME);
        cli();
        hlt();
        check(true, "HLT returned after a kick that came before it");
    }
}

/* --------------------------------------------------------------- SEND_IPI */

#define VEC_SELF 0xf0
#define VEC_LOWEST 0xf1

/* Opens the interrupt window briefly, again and again, until `vector` has arrived `want`
 * times or `ms` milliseconds passed. */
static bool wait_irq(unsigned vector, u32 want, u64 ms)
{
    unsigned me = this_vcpu();
    u64 deadline = deadline_ms(ms);
    while (irq_count(me, vector) < want && !past(deadline)) {
        sti();
        pause();
        cli();
    }
    return irq_count(me, vector) >= want;
}

static void expect_vector(unsigned vector, u32 before, const char *what)
{
    bool ok = wait_irq(vector, before + 1, 1000);
    u32 now = irq_count(this_vcpu(), vector);
    check(ok && now == before + 1, "%s: vector 0x%x arrived once (count %u -> %u)", what, vector,
          before, now);
}

static void expect_no_vector(unsigned vector, u32 before, const char *what)
{
    wait_irq(vector, before + 1, 20);
    u32 now = irq_count(this_vcpu(), vector);
    check(now == before, "%s: vector 0x%x did not arrive (count %u -> %u)", what, vector, before,
          now);
}

static void check_send_ipi(void)
{
    if (check_denied(KVM_HC_SEND_IPI, "KVM_HC_SEND_IPI") ||
        check_hidden(KVM_HC_SEND_IPI, KVM_FEATURE_PV_SEND_IPI, "SEND_IPI without PV_SEND_IPI"))
        return;
    u32 me = my_apic_id();
    unsigned v = this_vcpu();
    u32 before = irq_count(v, VEC_SELF);

    /* Bit 0 of a0 is APIC id a2. */
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DM_FIXED | VEC_SELF), 1,
           "SEND_IPI fixed to myself reaches 1 vCPU");
    expect_vector(VEC_SELF, before, "fixed");

    /* Lowest priority is delivered like fixed. */
    before = irq_count(v, VEC_LOWEST);
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DM_LOWEST | VEC_LOWEST), 1,
           "SEND_IPI lowest-priority to myself");
    expect_vector(VEC_LOWEST, before, "lowest priority");

    /* A level-triggered IPI with the level asserted is delivered. */
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_INT_LEVELTRIG | APIC_INT_ASSERT | VEC_SELF), 1,
           "SEND_IPI level-triggered, asserted");
    expect_vector(VEC_SELF, before, "level asserted");

    /* a1 starts `cluster` ids after a2: 64 in 64-bit mode, 32 in 32-bit mode, and a2 + cluster
     * wraps in 32 bits (KVM's `u32 min += cluster_size`): a2 = my id - cluster reaches me
     * through bit 0 of a1, whatever my id. */
    const u32 cluster = RT_64BIT ? 64 : 32;
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 0, 1, (ureg)(u32)(me - cluster), VEC_SELF), 1,
           RT_64BIT ? "SEND_IPI through a1, a2 = my id - 64 (cluster 64, u32 wrap)"
                    : "SEND_IPI through a1, a2 = my id - 32 (cluster 32, u32 wrap)");
    expect_vector(VEC_SELF, before, "through a1");
    /* The other cluster size must miss (no vCPU has that id). */
    expect(hc(KVM_HC_SEND_IPI, 0, 1, (ureg)(u32)(me - (RT_64BIT ? 32 : 64)), VEC_SELF), 0,
           "SEND_IPI through a1 with the wrong cluster size reaches nobody");
    /* Only min + cluster wraps, never min + i: a cluster whose first id is above every APIC id
     * reaches nobody (lapic.c: `if (min > map->max_apic_id) return 0;`), even where
     * min + 63 (or 31) would wrap around to my id. */
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, (ureg)1 << (cluster - 1), 0, (ureg)(u32)(me - (cluster - 1)),
              VEC_SELF),
           0, "SEND_IPI whose a0 cluster starts above every APIC id reaches nobody");
    expect_no_vector(VEC_SELF, before, "cluster above every APIC id");
#if RT_64BIT
    /* KVM's `u32 min`: the high half of a2 is dropped. */
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 1, 0, 0x700000000ull | me, VEC_SELF), 1,
           "SEND_IPI with a2 = 0x7_0000_0000 | my id (u32 min)");
    expect_vector(VEC_SELF, before, "u32 min");
#endif

    /* Nobody addressed. */
    expect(hc(KVM_HC_SEND_IPI, 0, 0, me, VEC_SELF), 0, "SEND_IPI with empty bitmaps");
    expect(hc(KVM_HC_SEND_IPI, 1, 1, 0xfff0, VEC_SELF), 0, "SEND_IPI to absent APIC ids");

    /* Refused ICRs: nothing is delivered. */
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DEST_LOGICAL | VEC_SELF), KVM_ERR(KVM_EINVAL),
           "SEND_IPI logical destination");
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DEST_SELF | VEC_SELF), KVM_ERR(KVM_EINVAL),
           "SEND_IPI shorthand self");
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DEST_ALLINC | VEC_SELF), KVM_ERR(KVM_EINVAL),
           "SEND_IPI shorthand all-including-self");
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DEST_ALLBUT | VEC_SELF), KVM_ERR(KVM_EINVAL),
           "SEND_IPI shorthand all-excluding-self");

    /* Delivery modes polyvisor does not deliver, and a deasserted level IPI. */
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DM_NMI), 0,
           "SEND_IPI NMI is not delivered here (docs/abi/kvm.md)");
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_INT_LEVELTRIG | VEC_SELF), 0,
           "SEND_IPI level-triggered with the level deasserted is dropped");
    expect_no_vector(VEC_SELF, before, "refused and dropped IPIs");

    /* APIC_DM_REMRD is a kick: latched like KICK_CPU. */
    if (cmdline_get_u64("selfkick_hlt", 1)) {
        expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DM_REMRD), 1,
               "SEND_IPI APIC_DM_REMRD (a kick) to myself");
        cli();
        hlt();
        check(true, "HLT returned after a SEND_IPI kick that came before it");
    }
}

/* ------------------------------------------------------------ SCHED_YIELD */

static void check_sched_yield(void)
{
    if (check_denied(KVM_HC_SCHED_YIELD, "KVM_HC_SCHED_YIELD") ||
        check_hidden(KVM_HC_SCHED_YIELD, KVM_FEATURE_PV_SCHED_YIELD,
                     "SCHED_YIELD without PV_SCHED_YIELD"))
        return;
    expect(hc(KVM_HC_SCHED_YIELD, my_apic_id(), 0, 0, 0), 0, "SCHED_YIELD to myself");
    expect(hc(KVM_HC_SCHED_YIELD, 0xfe, 0, 0, 0), 0, "SCHED_YIELD to an absent APIC id");
    expect(hc(KVM_HC_SCHED_YIELD, ~(ureg)0, 0, 0, 0), 0, "SCHED_YIELD to APIC id ~0");
}

/* ---------------------------------------------------------- CLOCK_PAIRING */

static struct kvm_clock_pairing pairing __aligned(64);
static u8 unaligned_pairing[sizeof(struct kvm_clock_pairing) + 8];

static void check_clock_pairing(const struct hvm_start_info *si)
{
    if (check_denied(KVM_HC_CLOCK_PAIRING, "KVM_HC_CLOCK_PAIRING"))
        return;
    char buf[16];
    bool works = has_feature(KVM_FEATURE_CLOCKSOURCE_STABLE_BIT);
    if (cmdline_get("pairing", buf, sizeof buf) >= 0)
        works = !strcmp(buf, "ok");
    memset(&pairing, 0xa5, sizeof pairing);
    if (!works) {
        expect(hc(KVM_HC_CLOCK_PAIRING, gpa(&pairing), KVM_CLOCK_PAIRING_WALLCLOCK, 0, 0),
               KVM_ERR(KVM_EOPNOTSUPP), "CLOCK_PAIRING without a stable host TSC");
        check(pairing.flags == 0xa5a5a5a5, "... wrote nothing");
        return;
    }
    u64 t0 = rdtsc_ordered();
    struct answer a = hc(KVM_HC_CLOCK_PAIRING, gpa(&pairing), KVM_CLOCK_PAIRING_WALLCLOCK, 0, 0);
    u64 t1 = rdtsc_ordered();
    expect(a, 0, "CLOCK_PAIRING wall clock");
    check(pairing.sec > 1600000000 && pairing.nsec >= 0 && pairing.nsec < 1000000000,
          "pairing holds a plausible wall clock (sec %lld nsec %lld)", (long long)pairing.sec,
          (long long)pairing.nsec);
    check(pairing.tsc >= t0 && pairing.tsc <= t1,
          "pairing TSC within the call (%llu in %llu..%llu)", (unsigned long long)pairing.tsc,
          (unsigned long long)t0, (unsigned long long)t1);
    bool zero = pairing.flags == 0;
    for (unsigned i = 0; i < ARRAY_SIZE(pairing.pad); i++)
        zero = zero && pairing.pad[i] == 0;
    check(zero, "pairing flags and pad are 0");
    memset(unaligned_pairing, 0xa5, sizeof unaligned_pairing);
    expect(hc(KVM_HC_CLOCK_PAIRING, gpa(unaligned_pairing + 3), 0, 0, 0), 0,
           "CLOCK_PAIRING to an unaligned structure");
    struct kvm_clock_pairing copy;
    memcpy(&copy, unaligned_pairing + 3, sizeof copy);
    check(copy.sec >= pairing.sec && copy.flags == 0 && unaligned_pairing[2] == 0xa5 &&
              unaligned_pairing[3 + sizeof copy] == 0xa5,
          "... filled exactly its 64 bytes");

    memset(&pairing, 0xa5, sizeof pairing);
    expect(hc(KVM_HC_CLOCK_PAIRING, gpa(&pairing), 1, 0, 0), KVM_ERR(KVM_EOPNOTSUPP),
           "CLOCK_PAIRING clock type 1");
    expect(hc(KVM_HC_CLOCK_PAIRING, gpa(&pairing), ~(ureg)0, 0, 0), KVM_ERR(KVM_EOPNOTSUPP),
           "CLOCK_PAIRING clock type -1");
    check(pairing.flags == 0xa5a5a5a5, "refused pairings wrote nothing");
    u64 end = ram_end(si);
    if (end && (RT_64BIT || end < 0x100000000ull)) {
        expect(hc(KVM_HC_CLOCK_PAIRING, (ureg)end, 0, 0, 0), KVM_ERR(KVM_EFAULT),
               "CLOCK_PAIRING at the end of RAM");
        volatile u8 *tail = (volatile u8 *)(uptr)(end - 32);
        tail[0] = 0x5a;
        expect(hc(KVM_HC_CLOCK_PAIRING, (ureg)(end - 32), 0, 0, 0), KVM_ERR(KVM_EFAULT),
               "CLOCK_PAIRING straddling the end of RAM");
        check(tail[0] == 0x5a, "... wrote nothing");
        expect(hc(KVM_HC_CLOCK_PAIRING, (ureg)(end - 64), 0, 0, 0), 0,
               "CLOCK_PAIRING in the last 64 bytes of RAM");
    }
    expect(hc(KVM_HC_CLOCK_PAIRING, ~(ureg)0 - 8, 0, 0, 0), KVM_ERR(KVM_EFAULT),
           "CLOCK_PAIRING at an address that wraps");
#if RT_64BIT
    expect(hc(KVM_HC_CLOCK_PAIRING, 0x100000000000ull, 0, 0, 0), KVM_ERR(KVM_EFAULT),
           "CLOCK_PAIRING at GPA 16 TiB");
#endif
}

/* ---------------------------------------------------------- MAP_GPA_RANGE */

#define SZ_2M KVM_MAP_GPA_RANGE_PAGE_SZ_2M
#define SZ_1G KVM_MAP_GPA_RANGE_PAGE_SZ_1G
#define ENC KVM_MAP_GPA_RANGE_ENCRYPTED
#define MAP_BASE 0x400000ull /* 4 MiB: 2M-aligned, inside any RAM of 8 MiB and more */

static void report_line(u64 start, u64 end, const char *what)
{
    gprintf("%s: expect host report: kvm: 0x%012llx-0x%012llx %s\n", GUEST_NAME,
            (unsigned long long)start, (unsigned long long)(end - 1), what);
}

static void check_compat_map(void);

static void check_map_gpa_range(const struct hvm_start_info *si)
{
    if (check_denied(KVM_HC_MAP_GPA_RANGE, "KVM_HC_MAP_GPA_RANGE") ||
        check_hidden(KVM_HC_MAP_GPA_RANGE, KVM_FEATURE_HC_MAP_GPA_RANGE,
                     "MAP_GPA_RANGE without HC_MAP_GPA_RANGE"))
        return;
    const u64 base = MAP_BASE;
    u64 end = ram_end(si);
    if (!end || !is_ram(si, base, 0x400000)) {
        check(false, "MAP_GPA_RANGE needs RAM at 4..8 MiB in the memory map");
        return;
    }
    /* Valid declarations (the map only records them). */
    expect(hc(KVM_HC_MAP_GPA_RANGE, base, 1, ENC, 0), 0, "MAP_GPA_RANGE one encrypted 4K page");
    expect(hc(KVM_HC_MAP_GPA_RANGE, base + 0x1000, 1, 0, 0), 0,
           "MAP_GPA_RANGE the next page plaintext");
    expect(hc(KVM_HC_MAP_GPA_RANGE, base + 0x200000, 512, SZ_2M | ENC, 0), 0,
           "MAP_GPA_RANGE one 2M page");
    bool last = (RT_64BIT || end <= 0x100000000ull) && is_ram(si, end - 0x1000, 0x1000);
    if (last)
        expect(hc(KVM_HC_MAP_GPA_RANGE, (ureg)(end - 0x1000), 1, 0, 0), 0,
               "MAP_GPA_RANGE the last page of RAM");

    /* A full map refuses a new range but still takes one that extends an existing one. */
    u64 limit = cmdline_get_u64("max_ranges", 0);
    if (limit)
        expect(hc(KVM_HC_MAP_GPA_RANGE, base + 0x100000, 1, ENC, 0), KVM_ERR(KVM_E2BIG),
               "MAP_GPA_RANGE a new range when the map is full (max_gpa_ranges)");
    expect(hc(KVM_HC_MAP_GPA_RANGE, base + 0x2000, 1, 0, 0), 0,
           "MAP_GPA_RANGE a page that extends the plaintext range");

    /* The validation table (docs/abi/kvm.md). */
    static const struct {
        const char *what;
        u64 gpa, npages, attrs;
    } bad[] = {
        {"unaligned GPA", MAP_BASE + 1, 1, 0},
        {"GPA off by 2K", MAP_BASE + 0x800, 1, 0},
        {"zero pages", MAP_BASE, 0, 0},
        {"reserved attribute bit 5", MAP_BASE, 1, 1 << 5},
        {"reserved attribute bit 31", MAP_BASE, 1, 1ull << 31},
        {"page-size encoding 3", MAP_BASE, 1, 3},
        {"page-size encoding 15", MAP_BASE, 1, 0xf | ENC},
        {"2M start not 2M-aligned", MAP_BASE + 0x1000, 512, SZ_2M},
        {"2M length not a multiple of 2M", MAP_BASE + 0x200000, 511, SZ_2M},
        {"1G start not 1G-aligned", MAP_BASE, 1 << 18, SZ_1G},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++) {
        char what[80];
        gsnprintf(what, sizeof what, "MAP_GPA_RANGE %s", bad[i].what);
        expect(hc(KVM_HC_MAP_GPA_RANGE, (ureg)bad[i].gpa, (ureg)bad[i].npages,
                  (ureg)bad[i].attrs, 0),
               KVM_ERR(KVM_EINVAL), what);
    }
#if RT_64BIT
    expect(hc(KVM_HC_MAP_GPA_RANGE, base, ~0ull, 0, 0), KVM_ERR(KVM_EINVAL),
           "MAP_GPA_RANGE page count that wraps the page number");
    expect(hc(KVM_HC_MAP_GPA_RANGE, 0xfffffffffffff000ull, 1, 0, 0), KVM_ERR(KVM_EINVAL),
           "MAP_GPA_RANGE whose end wraps 64 bits");
    expect(hc(KVM_HC_MAP_GPA_RANGE, base, 1, 1ull << 63, 0), KVM_ERR(KVM_EINVAL),
           "MAP_GPA_RANGE reserved attribute bit 63");
    expect(hc(KVM_HC_MAP_GPA_RANGE, base, 1ull << 40, 0, 0), KVM_ERR(KVM_EINVAL),
           "MAP_GPA_RANGE 2^40 pages (beyond RAM)");
#endif
    if (last) {
        expect(hc(KVM_HC_MAP_GPA_RANGE, (ureg)end, 1, 0, 0), KVM_ERR(KVM_EINVAL),
               "MAP_GPA_RANGE beyond RAM");
        expect(hc(KVM_HC_MAP_GPA_RANGE, (ureg)(end - 0x1000), 2, 0, 0), KVM_ERR(KVM_EINVAL),
               "MAP_GPA_RANGE straddling the end of RAM");
    }
    check_compat_map();

    report_line(base, base + 0x1000, "encrypted, 4K pages");
    report_line(base + 0x1000, base + 0x3000, "plaintext, 4K pages");
    report_line(base + 0x200000, base + 0x400000, "encrypted, 2M pages");
    if (last)
        report_line(end - 0x1000, end, "plaintext, 4K pages");
}

/* ------------------------------------------- compatibility mode (64-bit) */

#if RT_64BIT
/* kvm_compat_call(r, vmmcall): loads RAX RBX RCX RDX RSI from r with all 64 bits, switches
 * to compatibility mode (the runtime's ring-0 32-bit code selector 0x28), executes VMCALL or
 * VMMCALL there, comes back to 64-bit mode and stores the five registers, all 64 bits.
 * Interrupts are off throughout; no stack is used in compatibility mode. The upper register
 * halves survive the mode switches (the hardware keeps them), so the VMM sees a 32-bit
 * caller with junk in the upper halves, which KVM ignores (x86.c: `if (!op_64_bit)`). */
void kvm_compat_call(struct hc_regs *r, int vmmcall);
__asm__(".pushsection .text\n"
        ".globl kvm_compat_call\n"
        "kvm_compat_call:\n"
        "  push %rbx\n"
        "  push %rbp\n"
        "  pushfq\n"
        "  cli\n"
        "  mov %rdi, %rbp\n"
        "  lea kvm_far_vmcall(%rip), %r11\n"
        "  lea kvm_far_vmmcall(%rip), %r10\n"
        "  test %esi, %esi\n"
        "  cmovnz %r10, %r11\n"
        "  mov 0(%rbp), %rax\n"
        "  mov 8(%rbp), %rbx\n"
        "  mov 16(%rbp), %rcx\n"
        "  mov 24(%rbp), %rdx\n"
        "  mov 32(%rbp), %rsi\n"
        "  ljmpl *(%r11)\n"
        ".code32\n"
        "kvm_compat_vmcall:\n"
        "  vmcall\n"
        "  ljmpl *kvm_far_long\n"
        "kvm_compat_vmmcall:\n"
        "  vmmcall\n"
        "  ljmpl *kvm_far_long\n"
        ".code64\n"
        "kvm_compat_back:\n"
        "  mov %rax, 0(%rbp)\n"
        "  mov %rbx, 8(%rbp)\n"
        "  mov %rcx, 16(%rbp)\n"
        "  mov %rdx, 24(%rbp)\n"
        "  mov %rsi, 32(%rbp)\n"
        "  popfq\n"
        "  pop %rbp\n"
        "  pop %rbx\n"
        "  ret\n"
        ".popsection\n"
        ".pushsection .rodata\n"
        ".balign 8\n"
        "kvm_far_vmcall: .long kvm_compat_vmcall\n"
        "  .word 0x28\n"
        ".balign 8\n"
        "kvm_far_vmmcall: .long kvm_compat_vmmcall\n"
        "  .word 0x28\n"
        ".balign 8\n"
        "kvm_far_long: .long kvm_compat_back\n"
        "  .word 0x08\n"
        ".popsection\n");

/* One call from compatibility mode: RAX must read `want` with all 64 bits (the upper half
 * zero: KVM writes `(u32)ret`), RBX RCX RDX RSI unchanged with all 64 bits. */
static void expect_compat(enum insn insn, u64 nr, u64 a0, u64 a1, u64 a2, u64 a3, u64 want,
                          const char *what)
{
    struct hc_regs r;
    memset(&r, 0, sizeof r);
    r.rax = nr;
    r.rbx = a0;
    r.rcx = a1;
    r.rdx = a2;
    r.rsi = a3;
    kvm_compat_call(&r, insn == VMMCALL);
    check(r.rax == want && r.rbx == a0 && r.rcx == a1 && r.rdx == a2 && r.rsi == a3,
          "compat %s: %s -> RAX 0x%llx (got RAX 0x%llx%s)", insn_name[insn], what,
          (unsigned long long)want, (unsigned long long)r.rax,
          (r.rbx == a0 && r.rcx == a1 && r.rdx == a2 && r.rsi == a3)
              ? ""
              : ", an argument register changed");
}

#define HI(x) ((u64)(x) << 32)
#define ERR32(code) ((u64)(u32)(-(s32)(code)))

static void check_compat(void)
{
    gprintf("%s: calls from compatibility mode (a 32-bit code segment in long mode)\n",
            GUEST_NAME);
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        if (sc == DISABLED) {
            expect_compat(insn, HI(0xdead) | KVM_HC_VAPIC_POLL_IRQ, 0, 0, 0, 0,
                          ERR32(KVM_ENOSYS), "hypercalls off, VAPIC_POLL_IRQ");
            continue;
        }
        expect_compat(insn, HI(0xdead) | KVM_HC_VAPIC_POLL_IRQ, HI(1), HI(2), HI(3), HI(4),
                      denied[KVM_HC_VAPIC_POLL_IRQ] ? ERR32(KVM_EPERM) : 0,
                      "RAX = 0xdead_00000001 is VAPIC_POLL_IRQ (number truncated)");
        expect_compat(insn, HI(1) | 13, 0, 0, 0, 0, ERR32(KVM_ENOSYS),
                      "unknown number 0x1_0000000d");
    }
}

static void check_compat_ipi(void)
{
    if (sc == DISABLED || denied[KVM_HC_SEND_IPI] || !has_feature(KVM_FEATURE_PV_SEND_IPI))
        return;
    /* Truncated a1 = 1 with cluster 32 reaches a2 + 32 = me; a 64-bit reading (a0 = 0 after
     * its high half, a1 bit 0 at a2 + 64) would reach nobody. */
    u32 me = my_apic_id();
    u32 before = irq_count(this_vcpu(), VEC_SELF);
    expect_compat(native_insn, HI(0xffff) | KVM_HC_SEND_IPI, HI(1), HI(0xffffffff) | 1,
                  HI(0xabcd) | (u32)(me - 32), HI(0xffffffff) | VEC_SELF, 1,
                  "SEND_IPI with junk upper halves: cluster 32, reaches me");
    expect_vector(VEC_SELF, before, "compat SEND_IPI");
}

static void check_compat_map(void)
{
    /* a0 high half dropped (a 64-bit reading is far beyond RAM), a1 = 0x1_00000001 -> one
     * page, a2 bit 63 dropped -> plaintext 4K: re-declares a plaintext page, the map is
     * unchanged. */
    expect_compat(native_insn, HI(0xffffffff) | KVM_HC_MAP_GPA_RANGE,
                  HI(0xffff0000) | (MAP_BASE + 0x1000), HI(1) | 1, 1ull << 63, HI(7), 0,
                  "MAP_GPA_RANGE with junk upper halves declares one plaintext page");
}
#else
static void check_compat(void) {}
static void check_compat_ipi(void) {}
static void check_compat_map(void) {}
#endif

/* ------------------------------------------------------------------- MSRs */

static struct pvclock_vcpu_time_info pvti __aligned(64);
static struct pvclock_wall_clock wc __aligned(64);

static void expect_gp_read(u32 msr, const char *name)
{
    u64 v = 0;
    int vec = rdmsr_safe(msr, &v);
    check(vec == VEC_GP, "RDMSR %s (0x%x) -> #GP (got %s)", name, msr,
          vec ? vector_name((unsigned)vec) : "no fault");
}

static void expect_gp_write(u32 msr, u64 value, const char *name)
{
    int vec = wrmsr_safe(msr, value);
    check(vec == VEC_GP, "WRMSR %s (0x%x) <- 0x%llx -> #GP (got %s)", name, msr,
          (unsigned long long)value, vec ? vector_name((unsigned)vec) : "no fault");
}

static void expect_read(u32 msr, u64 want, const char *name)
{
    u64 v = 0;
    int vec = rdmsr_safe(msr, &v);
    check(vec == 0 && v == want, "RDMSR %s (0x%x) = 0x%llx (got %s 0x%llx)", name, msr,
          (unsigned long long)want, vec ? vector_name((unsigned)vec) : "no fault",
          (unsigned long long)v);
}

static void expect_write(u32 msr, u64 value, const char *name)
{
    int vec = wrmsr_safe(msr, value);
    check(vec == 0, "WRMSR %s (0x%x) <- 0x%llx (got %s)", name, msr, (unsigned long long)value,
          vec ? vector_name((unsigned)vec) : "no fault");
}

static void check_msrs(void)
{
    u32 f = kvm_features();
    /* Never backed: #GP whatever the features say. */
    expect_gp_read(MSR_KVM_ASYNC_PF_EN, "MSR_KVM_ASYNC_PF_EN");
    expect_gp_write(MSR_KVM_ASYNC_PF_EN, 0, "MSR_KVM_ASYNC_PF_EN");
    expect_gp_write(MSR_KVM_STEAL_TIME, gpa(&pvti) | 1, "MSR_KVM_STEAL_TIME");
    expect_gp_write(MSR_KVM_PV_EOI_EN, 0, "MSR_KVM_PV_EOI_EN");
    expect_gp_read(MSR_KVM_MIGRATION_CONTROL, "MSR_KVM_MIGRATION_CONTROL");
    expect_gp_read(0x4b564dffu, "the last MSR of KVM's range");

    if ((f >> KVM_FEATURE_POLL_CONTROL) & 1) {
        expect_read(MSR_KVM_POLL_CONTROL, 1, "MSR_KVM_POLL_CONTROL after reset");
        expect_write(MSR_KVM_POLL_CONTROL, 0, "MSR_KVM_POLL_CONTROL");
        expect_read(MSR_KVM_POLL_CONTROL, 0, "MSR_KVM_POLL_CONTROL");
        expect_gp_write(MSR_KVM_POLL_CONTROL, 2, "MSR_KVM_POLL_CONTROL (reserved bit 1)");
        expect_read(MSR_KVM_POLL_CONTROL, 0, "MSR_KVM_POLL_CONTROL after the refused write");
        expect_write(MSR_KVM_POLL_CONTROL, 1, "MSR_KVM_POLL_CONTROL");
    } else {
        expect_gp_read(MSR_KVM_POLL_CONTROL, "MSR_KVM_POLL_CONTROL without its feature");
        expect_gp_write(MSR_KVM_POLL_CONTROL, 1, "MSR_KVM_POLL_CONTROL without its feature");
    }

    if ((f >> KVM_FEATURE_CLOCKSOURCE2) & 1) {
        expect_read(MSR_KVM_SYSTEM_TIME_NEW, 0, "MSR_KVM_SYSTEM_TIME_NEW before use");
        expect_write(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1, "MSR_KVM_SYSTEM_TIME_NEW");
        expect_read(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1, "MSR_KVM_SYSTEM_TIME_NEW");
        u32 version = pvti.version;
        check(version != 0 && (version & 1) == 0 && (pvti.flags & PVCLOCK_TSC_STABLE_BIT),
              "time info version even (%u), PVCLOCK_TSC_STABLE_BIT (flags 0x%x)", version,
              pvti.flags);
        expect_write(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc), "MSR_KVM_WALL_CLOCK_NEW");
        expect_read(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc), "MSR_KVM_WALL_CLOCK_NEW");
        check(wc.version != 0 && (wc.version & 1) == 0 && wc.sec > 1600000000,
              "wall clock version %u, sec %u", wc.version, wc.sec);
        expect_write(MSR_KVM_SYSTEM_TIME_NEW, 0, "MSR_KVM_SYSTEM_TIME_NEW");
    } else {
        expect_gp_read(MSR_KVM_SYSTEM_TIME_NEW, "MSR_KVM_SYSTEM_TIME_NEW without CLOCKSOURCE2");
        expect_gp_write(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1,
                        "MSR_KVM_SYSTEM_TIME_NEW without CLOCKSOURCE2");
        expect_gp_write(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc), "MSR_KVM_WALL_CLOCK_NEW");
    }
    if ((f >> KVM_FEATURE_CLOCKSOURCE) & 1) {
        memset(&pvti, 0, sizeof pvti);
        expect_write(MSR_KVM_SYSTEM_TIME, gpa(&pvti) | 1, "MSR_KVM_SYSTEM_TIME");
        u8 flags = pvti.flags;
        check(pvti.version != 0 && !(flags & PVCLOCK_TSC_STABLE_BIT),
              "the deprecated MSR's page has no PVCLOCK_TSC_STABLE_BIT (flags 0x%x)", flags);
        expect_write(MSR_KVM_SYSTEM_TIME, 0, "MSR_KVM_SYSTEM_TIME");
    } else {
        expect_gp_read(MSR_KVM_SYSTEM_TIME, "MSR_KVM_SYSTEM_TIME without CLOCKSOURCE");
        expect_gp_write(MSR_KVM_WALL_CLOCK, gpa(&wc), "MSR_KVM_WALL_CLOCK without CLOCKSOURCE");
    }
    if (!((f >> KVM_FEATURE_CLOCKSOURCE2) & 1) && !((f >> KVM_FEATURE_CLOCKSOURCE) & 1))
        check(pvti.version == 0 && wc.version == 0, "refused kvmclock MSRs wrote nothing");
}

/* -------------------------------------------------------------------- main */

static void parse_cmdline(void)
{
    char buf[64];
    if (cmdline_get("expect", buf, sizeof buf) >= 0) {
        if (!strcmp(buf, "disabled"))
            sc = DISABLED;
        else if (!strcmp(buf, "deny"))
            sc = DENY;
        else if (!strcmp(buf, "list"))
            sc = LIST;
        else if (strcmp(buf, "enabled"))
            panic("unknown expect=%s", buf);
    }
    if (cmdline_get("deny", buf, sizeof buf) >= 0) {
        char *p = buf;
        while (*p) {
            char *q = p;
            while (*q && *q != ',')
                q++;
            char c = *q;
            *q = 0;
            u64 n;
            if (!parse_u64(p, &n) || n >= ARRAY_SIZE(denied))
                panic("bad deny=%s", p);
            denied[n] = true;
            p = c ? q + 1 : q;
        }
    }
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        char key[16];
        gsnprintf(key, sizeof key, "cpl3_%s", insn == VMCALL ? "vmcall" : "vmmcall");
        if (cmdline_get(key, buf, sizeof buf) >= 0)
            cpl3_abi[insn] = strcmp(buf, "host") != 0;
    }
}

int guest_main(const struct hvm_start_info *si)
{
    parse_cmdline();
    choose_insn();
    gprintf("%s: kvm personality checks (%s, %s callers), expect=%s, native %s, APIC id %u\n",
            GUEST_NAME, rt_boot_protocol_name(), RT_64BIT ? "64-bit" : "32-bit",
            scenario_name[sc], insn_name[native_insn], my_apic_id());

    check_cpuid();
    if (sc == DISABLED) {
        check_all_unknown();
    } else {
        check_vapic_poll_irq();
        check_unknown_numbers();
        check_sched_yield();
        check_send_ipi();
        check_clock_pairing(si);
        check_map_gpa_range(si);
        check_kick_cpu();
        check_compat_ipi();
    }
    check_compat();
    check_ring3();
    check_msrs();
    check(current_cpl() == 0, "back at CPL 0 after every call");
    return check_summary();
}
