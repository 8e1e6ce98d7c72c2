/* kvm_abi: checks polyvisor's kvm personality from the inside (docs/abi/kvm.md): CPUID, every
 * row of the hypercall table from ring 0 and ring 3, every error answer, bad guest addresses,
 * the KVM_HC_MAP_GPA_RANGE validation table, self-directed KICK_CPU / SEND_IPI /
 * SCHED_YIELD, and KVM's MSRs. Build it as a 64-bit image (full register width) and as a
 * 32-bit PVH image (32-bit callers: every value and answer at 32 bits, -1000 reads as
 * 0xfffffc18). One line per check; exit status 0 only if every check passed, 1 otherwise.
 *
 * Cmdline:
 *   expect=enabled     (default) VMM config: [hypervisor] hypercalls_enabled = true,
 *                      [kvm] features absent
 *   expect=disabled    VMM config: hypercalls off (the default config)
 *   expect=deny        hypercalls on, [hypervisor] deny = ["KVM_HC_VAPIC_POLL_IRQ",
 *                      "KVM_HC_SEND_IPI"]
 *   expect=nofeatures  hypercalls on, [kvm] features = []
 *   features=0xN       also check CPUID 0x40000001 EAX is exactly N
 *   insn=vmcall|vmmcall  the instruction for "native" calls (default: by CPU vendor)
 *   selfkick_hlt=0     skip "a kick before HLT makes HLT return" (hangs a VMM that loses it)
 *   eoi=x2apic|xapic   (runtime) how the self-IPIs are acknowledged, as the VMM needs
 *
 * After an `enabled` run the host's end-of-run report should hold the lines this guest prints
 * as "expect host report: ..." (the KVM_HC_MAP_GPA_RANGE map).
 */
#include "kvm_common.h"

enum scenario { ENABLED, DISABLED, DENY, NOFEATURES };
static enum scenario sc = ENABLED;

static const char *const scenario_name[] = {"enabled", "disabled", "deny", "nofeatures"};

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
    check(r[3] == 0 || r[3] == 1, "CPUID 0x40000001 EDX holds at most KVM_HINTS_REALTIME");
    check((r[0] & ~KVM_BACKABLE_FEATURES) == 0,
          "only backable feature bits are shown (extra: 0x%x)", r[0] & ~KVM_BACKABLE_FEATURES);
    switch (sc) {
    case ENABLED:
        check((r[0] & KVM_HYPERCALL_FEATURES) == KVM_HYPERCALL_FEATURES,
              "PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD, HC_MAP_GPA_RANGE shown (EAX 0x%x)", r[0]);
        check((r[0] >> KVM_FEATURE_NOP_IO_DELAY) & 1, "NOP_IO_DELAY shown");
        break;
    case DISABLED:
        check((r[0] & KVM_HYPERCALL_FEATURES) == 0,
              "no hypercall-backed bit shown with hypercalls off (EAX 0x%x)", r[0]);
        break;
    case DENY:
        check(!((r[0] >> KVM_FEATURE_PV_SEND_IPI) & 1), "PV_SEND_IPI hidden: its call is denied");
        check((r[0] >> KVM_FEATURE_PV_UNHALT) & 1, "PV_UNHALT still shown");
        break;
    case NOFEATURES:
        check(r[0] == 0, "features = [] shows EAX = 0 (got 0x%x)", r[0]);
        break;
    }
    u64 want;
    char buf[24];
    if (cmdline_get("features", buf, sizeof buf) >= 0 && parse_u64(buf, &want))
        check(r[0] == (u32)want, "CPUID 0x40000001.EAX = 0x%x as configured (got 0x%x)", (u32)want,
              r[0]);
    /* Clock bits come and go together: they need a known, stable TSC. */
    u32 clock = r[0] & ((1u << 0) | (1u << 3) | (1u << 24));
    if (sc != NOFEATURES)
        check(clock == 0 || clock == ((1u << 0) | (1u << 3) | (1u << 24)),
              "kvmclock bits 0, 3, 24 all or none (got 0x%x)", clock);
}

/* ------------------------------------------------------- refusal scenarios */

static const ureg every_number[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1000, 0xffffffff};

static void check_ring3(void)
{
    /* KVM checks CPL before the number: ring 3 gets -KVM_EPERM for everything. */
    for (unsigned i = 0; i < ARRAY_SIZE(every_number); i++)
        for (int insn = VMCALL; insn <= VMMCALL; insn++) {
            char what[64];
            gsnprintf(what, sizeof what, "number %lu, %s at CPL 3", (unsigned long)every_number[i],
                      insn_name[insn]);
            expect(hc3(insn, every_number[i], 0, 0, 0, 0), KVM_ERR(KVM_EPERM), what);
        }
}

static void check_all_unknown(void)
{
    for (unsigned i = 0; i < ARRAY_SIZE(every_number); i++)
        for (int insn = VMCALL; insn <= VMMCALL; insn++) {
            char what[72];
            gsnprintf(what, sizeof what, "hypercalls off: number %lu, %s at CPL 0",
                      (unsigned long)every_number[i], insn_name[insn]);
            expect(hc_with(insn, every_number[i], 0, 0, 0, 0), KVM_ERR(KVM_ENOSYS), what);
        }
    check_ring3();
}

/* ------------------------------------------------------------ simple rows */

static void check_vapic_poll_irq(void)
{
    ureg want = sc == DENY ? KVM_ERR(KVM_EPERM) : 0;
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        char what[64];
        gsnprintf(what, sizeof what, "KVM_HC_VAPIC_POLL_IRQ, %s%s", insn_name[insn],
                  sc == DENY ? " (denied)" : "");
        expect(hc_with(insn, KVM_HC_VAPIC_POLL_IRQ, 1, 2, 3, 4), want, what);
    }
}

static void check_unknown_numbers(void)
{
    static const ureg numbers[] = {0, 2, 3, 4, 6, 7, 8, 13, 1000, 0xffffffff};
    for (unsigned i = 0; i < ARRAY_SIZE(numbers); i++) {
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

/* Calls whose feature bit is not shown answer -KVM_ENOSYS. */
static void check_featureless_calls(void)
{
    u32 me = my_apic_id();
    expect(hc(KVM_HC_KICK_CPU, 0, me, 0, 0), KVM_ERR(KVM_ENOSYS), "KICK_CPU without PV_UNHALT");
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, 0xf0), KVM_ERR(KVM_ENOSYS),
           "SEND_IPI without PV_SEND_IPI");
    expect(hc(KVM_HC_SCHED_YIELD, me, 0, 0, 0), KVM_ERR(KVM_ENOSYS),
           "SCHED_YIELD without PV_SCHED_YIELD");
    expect(hc(KVM_HC_MAP_GPA_RANGE, 0x200000, 1, 0, 0), KVM_ERR(KVM_ENOSYS),
           "MAP_GPA_RANGE without HC_MAP_GPA_RANGE");
}

/* --------------------------------------------------------------- KICK_CPU */

static void check_kick_cpu(void)
{
    u32 me = my_apic_id();
    expect(hc(KVM_HC_KICK_CPU, 0, 0xfe, 0, 0), 0, "KICK_CPU of an absent APIC id (0xfe)");
    expect(hc(KVM_HC_KICK_CPU, ~(ureg)0, 0xfd, 0, 0), 0, "KICK_CPU flags a0 are ignored");
    expect(hc(KVM_HC_KICK_CPU, 0, me, 0, 0), 0, "KICK_CPU of myself");
    if (cmdline_get_u64("selfkick_hlt", 1)) {
        /* The kick is latched (KVM's pv_unhalted): HLT with interrupts off returns at once. A
         * VMM that loses it hangs here until its timeout. */
        gprintf("%s: cli; hlt after kicking myself (hangs if the kick was lost)\n", GUEST_NAME);
        cli();
        hlt();
        check(true, "HLT returned after a kick that came before it");
    }
}

/* --------------------------------------------------------------- SEND_IPI */

#define VEC_SELF 0xf0
#define VEC_LOWEST 0xf1

/* Opens the interrupt window briefly and waits for `vector` to arrive `want` times. */
static bool wait_irq(unsigned vector, u32 want)
{
    unsigned me = this_vcpu();
    for (u32 spin = 0; spin < 10000000 && irq_count(me, vector) < want; spin++) {
        sti();
        pause();
        cli();
    }
    return irq_count(me, vector) >= want;
}

static void check_send_ipi(void)
{
    u32 me = my_apic_id();
    unsigned v = this_vcpu();
    u32 before = irq_count(v, VEC_SELF);

    /* Bit 0 of a0 is APIC id a2. */
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DM_FIXED | VEC_SELF), 1,
           "SEND_IPI fixed to myself reaches 1 vCPU");
    check(wait_irq(VEC_SELF, before + 1), "the vector 0x%x arrived (count %u -> %u)", VEC_SELF,
          before, irq_count(v, VEC_SELF));

    /* Lowest priority is delivered like fixed. */
    u32 lb = irq_count(v, VEC_LOWEST);
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_DM_LOWEST | VEC_LOWEST), 1,
           "SEND_IPI lowest-priority to myself");
    check(wait_irq(VEC_LOWEST, lb + 1), "lowest-priority vector arrived");

    /* a1 starts `cluster` ids after a2: 64 in 64-bit mode, 32 in 32-bit mode, and a2 + cluster
     * wraps in 32 bits (KVM's `u32 min += cluster_size`): a2 = my id - cluster reaches me
     * through bit 0 of a1, whatever my id. */
    const u32 cluster = RT_64BIT ? 64 : 32;
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 0, 1, (ureg)(u32)(me - cluster), VEC_SELF), 1,
           RT_64BIT ? "SEND_IPI through a1, a2 = my id - 64 (cluster 64, u32 wrap)"
                    : "SEND_IPI through a1, a2 = my id - 32 (cluster 32, u32 wrap)");
    check(wait_irq(VEC_SELF, before + 1), "... and the vector arrived");
    /* The other cluster size must miss (no vCPU has that id). */
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 0, 1, (ureg)(u32)(me - (RT_64BIT ? 32 : 64)), VEC_SELF), 0,
           "SEND_IPI through a1 with the wrong cluster size reaches nobody");
#if RT_64BIT
    /* KVM's `u32 min`: the high half of a2 is dropped. */
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 1, 0, 0x700000000ull | me, VEC_SELF), 1,
           "SEND_IPI with a2 = 0x7_0000_0000 | my id (u32 min)");
    check(wait_irq(VEC_SELF, before + 1), "... and the vector arrived");
#endif

    /* Nobody addressed. */
    expect(hc(KVM_HC_SEND_IPI, 0, 0, me, VEC_SELF), 0, "SEND_IPI with empty bitmaps");
    expect(hc(KVM_HC_SEND_IPI, 1, 1, 0xfff0, VEC_SELF), 0, "SEND_IPI to absent APIC ids");

    /* Refused ICRs. */
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
    before = irq_count(v, VEC_SELF);
    expect(hc(KVM_HC_SEND_IPI, 1, 0, me, APIC_INT_LEVELTRIG | VEC_SELF), 0,
           "SEND_IPI level-triggered with the level deasserted is dropped");
    wait_irq(VEC_SELF, before + 1);
    check(irq_count(v, VEC_SELF) == before, "... and no vector arrived");
}

/* ------------------------------------------------------------ SCHED_YIELD */

static void check_sched_yield(void)
{
    expect(hc(KVM_HC_SCHED_YIELD, my_apic_id(), 0, 0, 0), 0, "SCHED_YIELD to myself");
    expect(hc(KVM_HC_SCHED_YIELD, 0xfe, 0, 0, 0), 0, "SCHED_YIELD to an absent APIC id");
}

/* ---------------------------------------------------------- CLOCK_PAIRING */

static struct kvm_clock_pairing pairing __aligned(64);
static u8 unaligned_pairing[sizeof(struct kvm_clock_pairing) + 8];

static void check_clock_pairing(const struct hvm_start_info *si)
{
    bool stable = has_feature(KVM_FEATURE_CLOCKSOURCE_STABLE_BIT);
    memset(&pairing, 0xff, sizeof pairing);
    u64 t0 = rdtsc_ordered();
    struct answer a = hc(KVM_HC_CLOCK_PAIRING, gpa(&pairing), KVM_CLOCK_PAIRING_WALLCLOCK, 0, 0);
    u64 t1 = rdtsc_ordered();
    if (!stable && a.vec == 0 && a.rax == KVM_ERR(KVM_EOPNOTSUPP)) {
        check(true, "CLOCK_PAIRING -> -KVM_EOPNOTSUPP (no stable TSC shown)");
        return;
    }
    expect(a, 0, "CLOCK_PAIRING wall clock");
    check(pairing.sec > 1600000000 && pairing.nsec >= 0 && pairing.nsec < 1000000000,
          "pairing holds a plausible wall clock (sec %lld nsec %lld)", (long long)pairing.sec,
          (long long)pairing.nsec);
    check(pairing.tsc >= t0 && pairing.tsc <= t1, "pairing TSC within the call (%llu in %llu..%llu)",
          (unsigned long long)pairing.tsc, (unsigned long long)t0, (unsigned long long)t1);
    bool zero = pairing.flags == 0;
    for (unsigned i = 0; i < ARRAY_SIZE(pairing.pad); i++)
        zero = zero && pairing.pad[i] == 0;
    check(zero, "pairing flags and pad are 0");
    expect(hc(KVM_HC_CLOCK_PAIRING, gpa(unaligned_pairing + 3), 0, 0, 0), 0,
           "CLOCK_PAIRING to an unaligned structure");

    expect(hc(KVM_HC_CLOCK_PAIRING, gpa(&pairing), 1, 0, 0), KVM_ERR(KVM_EOPNOTSUPP),
           "CLOCK_PAIRING clock type 1");
    expect(hc(KVM_HC_CLOCK_PAIRING, gpa(&pairing), ~(ureg)0, 0, 0), KVM_ERR(KVM_EOPNOTSUPP),
           "CLOCK_PAIRING clock type -1");
    u64 end = ram_end(si);
    if (end && (RT_64BIT || end < 0x100000000ull)) {
        expect(hc(KVM_HC_CLOCK_PAIRING, (ureg)end, 0, 0, 0), KVM_ERR(KVM_EFAULT),
               "CLOCK_PAIRING at the end of RAM");
        expect(hc(KVM_HC_CLOCK_PAIRING, (ureg)(end - 32), 0, 0, 0), KVM_ERR(KVM_EFAULT),
               "CLOCK_PAIRING straddling the end of RAM");
        expect(hc(KVM_HC_CLOCK_PAIRING, (ureg)(end - 64), 0, 0, 0), 0,
               "CLOCK_PAIRING in the last 64 bytes of RAM");
    }
    expect(hc(KVM_HC_CLOCK_PAIRING, ~(ureg)0 - 8, 0, 0, 0), KVM_ERR(KVM_EFAULT),
           "CLOCK_PAIRING at an address that wraps");
}

/* ---------------------------------------------------------- MAP_GPA_RANGE */

#define SZ_2M KVM_MAP_GPA_RANGE_PAGE_SZ_2M
#define SZ_1G KVM_MAP_GPA_RANGE_PAGE_SZ_1G
#define ENC KVM_MAP_GPA_RANGE_ENCRYPTED

static void report_line(u64 start, u64 end, const char *what)
{
    gprintf("%s: expect host report: kvm: 0x%012llx-0x%012llx %s\n", GUEST_NAME,
            (unsigned long long)start, (unsigned long long)(end - 1), what);
}

static void check_map_gpa_range(const struct hvm_start_info *si)
{
    const u64 base = 0x400000; /* 4 MiB: 2M-aligned, inside any RAM of 8 MiB and more */
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
    bool last = RT_64BIT || end <= 0x100000000ull;
    if (last && is_ram(si, end - 0x1000, 0x1000))
        expect(hc(KVM_HC_MAP_GPA_RANGE, (ureg)(end - 0x1000), 1, 0, 0), 0,
               "MAP_GPA_RANGE the last page of RAM");

    /* The validation table (docs/abi/kvm.md). */
    static const struct {
        const char *what;
        u64 gpa, npages, attrs;
    } bad[] = {
        {"unaligned GPA", 0x400001, 1, 0},
        {"GPA off by 2K", 0x400800, 1, 0},
        {"zero pages", 0x400000, 0, 0},
        {"reserved attribute bit 5", 0x400000, 1, 1 << 5},
        {"page-size encoding 3", 0x400000, 1, 3},
        {"page-size encoding 15", 0x400000, 1, 0xf | ENC},
        {"2M start not 2M-aligned", 0x401000, 512, SZ_2M},
        {"2M length not a multiple of 2M", 0x600000, 511, SZ_2M},
        {"1G start not 1G-aligned", 0x400000, 1 << 18, SZ_1G},
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
#endif
    if (last) {
        expect(hc(KVM_HC_MAP_GPA_RANGE, (ureg)end, 1, 0, 0), KVM_ERR(KVM_EINVAL),
               "MAP_GPA_RANGE beyond RAM");
        expect(hc(KVM_HC_MAP_GPA_RANGE, (ureg)(end - 0x1000), 2, 0, 0), KVM_ERR(KVM_EINVAL),
               "MAP_GPA_RANGE straddling the end of RAM");
    }

    report_line(base, base + 0x1000, "encrypted, 4K pages");
    report_line(base + 0x1000, base + 0x2000, "plaintext, 4K pages");
    report_line(base + 0x200000, base + 0x400000, "encrypted, 2M pages");
    if (last && is_ram(si, end - 0x1000, 0x1000))
        report_line(end - 0x1000, end, "plaintext, 4K pages");
}

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
        check(wrmsr_safe(MSR_KVM_POLL_CONTROL, 0) == 0, "WRMSR MSR_KVM_POLL_CONTROL <- 0");
        expect_read(MSR_KVM_POLL_CONTROL, 0, "MSR_KVM_POLL_CONTROL");
        expect_gp_write(MSR_KVM_POLL_CONTROL, 2, "MSR_KVM_POLL_CONTROL (reserved bit 1)");
        check(wrmsr_safe(MSR_KVM_POLL_CONTROL, 1) == 0, "WRMSR MSR_KVM_POLL_CONTROL <- 1");
    } else {
        expect_gp_read(MSR_KVM_POLL_CONTROL, "MSR_KVM_POLL_CONTROL without its feature");
    }

    if ((f >> KVM_FEATURE_CLOCKSOURCE2) & 1) {
        expect_read(MSR_KVM_SYSTEM_TIME_NEW, 0, "MSR_KVM_SYSTEM_TIME_NEW before use");
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1) == 0,
              "WRMSR MSR_KVM_SYSTEM_TIME_NEW <- page | enable");
        expect_read(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1, "MSR_KVM_SYSTEM_TIME_NEW");
        check(pvti.version != 0 && (pvti.version & 1) == 0, "time info version even (%u)",
              pvti.version);
        check(wrmsr_safe(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc)) == 0, "WRMSR MSR_KVM_WALL_CLOCK_NEW");
        expect_read(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc), "MSR_KVM_WALL_CLOCK_NEW");
        check(wc.version != 0 && (wc.version & 1) == 0 && wc.sec > 1600000000,
              "wall clock version %u, sec %u", wc.version, wc.sec);
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, 0) == 0, "WRMSR MSR_KVM_SYSTEM_TIME_NEW <- 0");
    } else {
        expect_gp_read(MSR_KVM_SYSTEM_TIME_NEW, "MSR_KVM_SYSTEM_TIME_NEW without CLOCKSOURCE2");
        expect_gp_write(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc), "MSR_KVM_WALL_CLOCK_NEW");
    }
    if ((f >> KVM_FEATURE_CLOCKSOURCE) & 1) {
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME, gpa(&pvti) | 1) == 0, "WRMSR MSR_KVM_SYSTEM_TIME");
        check(!(pvti.flags & PVCLOCK_TSC_STABLE_BIT),
              "the deprecated MSR's page has no PVCLOCK_TSC_STABLE_BIT (flags 0x%x)", pvti.flags);
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME, 0) == 0, "WRMSR MSR_KVM_SYSTEM_TIME <- 0");
    } else {
        expect_gp_read(MSR_KVM_SYSTEM_TIME, "MSR_KVM_SYSTEM_TIME without CLOCKSOURCE");
    }
}

/* -------------------------------------------------------------------- main */

int guest_main(const struct hvm_start_info *si)
{
    char buf[16];
    if (cmdline_get("expect", buf, sizeof buf) >= 0) {
        if (!strcmp(buf, "disabled"))
            sc = DISABLED;
        else if (!strcmp(buf, "deny"))
            sc = DENY;
        else if (!strcmp(buf, "nofeatures"))
            sc = NOFEATURES;
        else if (strcmp(buf, "enabled"))
            panic("unknown expect=%s", buf);
    }
    choose_insn();
    gprintf("%s: kvm personality checks (%s, %s callers), expect=%s, native %s, APIC id %u\n",
            GUEST_NAME, rt_boot_protocol_name(), RT_64BIT ? "64-bit" : "32-bit",
            scenario_name[sc], insn_name[native_insn], my_apic_id());

    check_cpuid();
    switch (sc) {
    case DISABLED:
        check_all_unknown();
        break;
    case NOFEATURES:
        check_vapic_poll_irq();
        check_featureless_calls();
        check_ring3();
        break;
    case DENY:
        check_vapic_poll_irq();
        expect(hc(KVM_HC_SEND_IPI, 1, 0, my_apic_id(), 0xf0), KVM_ERR(KVM_EPERM),
               "SEND_IPI denied");
        check_kick_cpu();
        check_ring3();
        break;
    case ENABLED:
        check_vapic_poll_irq();
        check_unknown_numbers();
        check_ring3();
        check_sched_yield();
        check_send_ipi();
        check_clock_pairing(si);
        check_map_gpa_range(si);
        check_kick_cpu();
        break;
    }
    check_msrs();
    check(current_cpl() == 0, "back at CPL 0 after every call");
    return finish();
}
