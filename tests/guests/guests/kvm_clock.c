/* kvm_clock: checks kvmclock as polyvisor's kvm personality serves it (docs/abi/kvm.md,
 * "kvmclock"; Linux Documentation/virt/kvm/x86/msr.rst): the time-info page and its version
 * protocol, monotonic readings, a rate that matches the TSC's (ticks / tsc_khz) and the
 * host's wall clock (measured with KVM_HC_CLOCK_PAIRING, an independent host clock) within 1%
 * over a second, the wall-clock
 * structure, and the address rules (unaligned accepted, outside RAM ignored without a fault).
 * Build as a 64-bit image and as a 32-bit PVH image. Exit status 0 only if every check
 * passed, 1 otherwise.
 *
 * Needs a host with a known, stable TSC (CPUID 0x40000001 bits 3 and 24); without them the
 * guest checks that kvmclock's MSRs raise #GP and passes. Hypercalls must be enabled for the
 * rate and wall-clock comparisons (KVM_HC_CLOCK_PAIRING); otherwise they are skipped.
 *
 * Cmdline:
 *   reads=N     monotonicity: N back-to-back readings (default 5000; RDTSC may exit to the
 *               host, ~20 us each), on top of every reading taken during the rate measurement
 *   seconds=N   how long the rate is measured (default 1)
 *   tsc_khz=N   the guest TSC frequency (the host passes KVM_GET_TSC_KHZ); else CPUID
 *               0x15/0x16; kvmclock must advance at TSC ticks / tsc_khz within 1%
 */
#include "kvm_common.h"

static struct pvclock_vcpu_time_info pvti __aligned(64);
static struct pvclock_vcpu_time_info pvti_old __aligned(64);
static u8 unaligned_page[64] __aligned(64);
static struct pvclock_wall_clock wc __aligned(64);
static struct kvm_clock_pairing cp0 __aligned(64), cp1 __aligned(64);

static u64 ns_of(const struct kvm_clock_pairing *p)
{
    return (u64)p->sec * 1000000000ull + (u64)p->nsec;
}

static bool pairing(struct kvm_clock_pairing *p)
{
    struct answer a = hc(KVM_HC_CLOCK_PAIRING, gpa(p), KVM_CLOCK_PAIRING_WALLCLOCK, 0, 0);
    return a.vec == 0 && a.rax == 0;
}

static void check_without_kvmclock(void)
{
    u64 v;
    check(rdmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, &v) == VEC_GP,
          "no CLOCKSOURCE2: RDMSR MSR_KVM_SYSTEM_TIME_NEW -> #GP");
    check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1) == VEC_GP,
          "no CLOCKSOURCE2: WRMSR MSR_KVM_SYSTEM_TIME_NEW -> #GP");
    check(wrmsr_safe(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc)) == VEC_GP,
          "no CLOCKSOURCE2: WRMSR MSR_KVM_WALL_CLOCK_NEW -> #GP");
    check(pvti.version == 0 && wc.version == 0, "nothing was written");
}

static void check_page(void)
{
    check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1) == 0,
          "WRMSR MSR_KVM_SYSTEM_TIME_NEW <- page | KVM_MSR_ENABLED");
    gprintf("%s: time info: version %u tsc_timestamp %llu system_time %llu mul 0x%x shift %d "
            "flags 0x%x\n",
            GUEST_NAME, pvti.version, (unsigned long long)pvti.tsc_timestamp,
            (unsigned long long)pvti.system_time, pvti.tsc_to_system_mul, pvti.tsc_shift,
            pvti.flags);
    check(pvti.version != 0 && (pvti.version & 1) == 0, "version is even after the update (%u)",
          pvti.version);
    check(pvti.tsc_to_system_mul != 0, "tsc_to_system_mul is set");
    check(pvti.tsc_shift >= -32 && pvti.tsc_shift <= 32, "tsc_shift is sane (%d)", pvti.tsc_shift);
    bool stable_bit = has_feature(KVM_FEATURE_CLOCKSOURCE_STABLE_BIT);
    check(!stable_bit || (pvti.flags & PVCLOCK_TSC_STABLE_BIT),
          "PVCLOCK_TSC_STABLE_BIT set (CPUID bit 24 shown)");
    check(pvti.tsc_timestamp <= rdtsc(), "tsc_timestamp is not in the future");
    u64 v = 0;
    check(rdmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, &v) == 0 && v == (gpa(&pvti) | 1),
          "RDMSR MSR_KVM_SYSTEM_TIME_NEW returns what was written");
    u32 before = pvti.version;
    bool wrote = wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti) | 1) == 0;
    u32 after = pvti.version;
    check(wrote && after == before + 2, "registering again advances the version by 2 (%u -> %u)",
          before, after);
}

static void check_monotonic(void)
{
    u64 n = cmdline_get_u64("reads", 5000);
    u64 last = pvclock_read(&pvti, NULL, NULL), first = last, backwards = 0;
    for (u64 i = 0; i < n; i++) {
        u64 t = pvclock_read(&pvti, NULL, NULL);
        if (t < last)
            backwards++;
        last = t;
    }
    check(backwards == 0, "%llu readings never go backwards (%llu did)", (unsigned long long)n,
          (unsigned long long)backwards);
    check(last > first, "kvmclock advances (%llu -> %llu ns)", (unsigned long long)first,
          (unsigned long long)last);
}

static u64 ppm_of(u64 a, u64 b)
{
    u64 diff = a > b ? a - b : b - a, rem;
    return udiv64(diff * 1000000ull, b ? b : 1, &rem);
}

/* Over `seconds` (busy, reading kvmclock all the time, every reading >= the one before), the
 * kvmclock time between two KVM_HC_CLOCK_PAIRING instants must match both the host's wall
 * clock and the TSC ticks at the TSC's frequency, within 1%. */
static void check_rate(void)
{
    const char *source;
    u64 khz = tsc_khz_known(&source);
    bool have_pairing = pairing(&cp0);
    u64 tsc0 = have_pairing ? cp0.tsc : rdtsc_ordered();
    u64 seconds = cmdline_get_u64("seconds", 1);
    u64 start = pvclock_read(&pvti, NULL, NULL), last = start, reads = 0, backwards = 0;
    while (last - start < seconds * 1000000000ull) {
        u64 t = pvclock_read(&pvti, NULL, NULL);
        if (t < last)
            backwards++;
        else
            last = t;
        reads++;
    }
    check(backwards == 0, "%llu readings over %llu s never went backwards (%llu did)",
          (unsigned long long)reads, (unsigned long long)seconds,
          (unsigned long long)backwards);
    if (have_pairing)
        check(pairing(&cp1), "second KVM_HC_CLOCK_PAIRING");
    u64 tsc1 = have_pairing ? cp1.tsc : rdtsc_ordered();
    u64 kvm = pvclock_at(&pvti, tsc1) - pvclock_at(&pvti, tsc0);
    check(kvm >= seconds * 1000000000ull, "the measurement lasted %llu ns of kvmclock time",
          (unsigned long long)kvm);
    if (khz) {
        u64 rem, ticks = tsc1 - tsc0;
        u64 tsc_ns = udiv64(ticks * 1000ull, khz, &rem) * 1000ull + udiv64(rem * 1000ull, khz, &rem);
        u64 ppm = ppm_of(kvm, tsc_ns);
        gprintf("%s: %llu TSC ticks at %llu kHz (%s) = %llu ns; kvmclock %llu ns (%llu ppm)\n",
                GUEST_NAME, (unsigned long long)ticks, (unsigned long long)khz, source,
                (unsigned long long)tsc_ns, (unsigned long long)kvm, (unsigned long long)ppm);
        check(ppm <= 10000, "kvmclock advances at the TSC's rate within 1%% (%llu ppm)",
              (unsigned long long)ppm);
    } else {
        check(false, "the TSC frequency is known (pass tsc_khz=N)");
    }
    if (!have_pairing) {
        gprintf("%s: KVM_HC_CLOCK_PAIRING unavailable: the wall-clock rate check is skipped\n",
                GUEST_NAME);
        return;
    }
    u64 wall = ns_of(&cp1) - ns_of(&cp0);
    u64 ppm = ppm_of(kvm, wall);
    gprintf("%s: host wall clock %llu ns; kvmclock %llu ns (%llu ppm)\n", GUEST_NAME,
            (unsigned long long)wall, (unsigned long long)kvm, (unsigned long long)ppm);
    check(ppm <= 10000, "kvmclock advances at the host wall clock's rate within 1%% (%llu ppm)",
          (unsigned long long)ppm);
}

/* wall clock at kvmclock zero + kvmclock now = host wall clock now (within 10 ms). */
static void check_wall_clock(void)
{
    check(wrmsr_safe(MSR_KVM_WALL_CLOCK_NEW, gpa(&wc)) == 0, "WRMSR MSR_KVM_WALL_CLOCK_NEW");
    check(wc.version != 0 && (wc.version & 1) == 0, "wall clock version is even (%u)",
          wc.version);
    check(wc.nsec < 1000000000u, "wall clock nsec < 1e9 (%u)", wc.nsec);
    u64 v = 0;
    check(rdmsr_safe(MSR_KVM_WALL_CLOCK_NEW, &v) == 0 && v == gpa(&wc),
          "RDMSR MSR_KVM_WALL_CLOCK_NEW returns what was written");
    if (!pairing(&cp0))
        return;
    u64 boot = (u64)wc.sec * 1000000000ull + wc.nsec;
    u64 guest_now = boot + pvclock_at(&pvti, cp0.tsc);
    u64 host_now = ns_of(&cp0);
    u64 diff = guest_now > host_now ? guest_now - host_now : host_now - guest_now;
    check(diff < 10000000ull, "wall clock + kvmclock = the host's wall clock (off by %llu ns)",
          (unsigned long long)diff);
}

static void check_addresses(const struct hvm_start_info *si)
{
    /* Not 4-byte aligned: KVM takes it, and so does polyvisor. */
    volatile struct pvclock_vcpu_time_info *odd =
        (volatile struct pvclock_vcpu_time_info *)(unaligned_page + 2);
    check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(odd) | 1) == 0,
          "an unaligned time-info page is accepted");
    check(odd->version != 0 && (odd->version & 1) == 0 && odd->tsc_to_system_mul != 0,
          "... and filled (version %u)", odd->version);
    /* Outside RAM: recorded, nothing written, no fault. */
    u64 end = ram_end(si);
    if (end && (RT_64BIT || end < 0xfffff000ull)) {
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, end | 1) == 0,
              "a time-info page beyond RAM is accepted without #GP");
        u64 v = 0;
        int vec = rdmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, &v);
        check(vec == 0 && v == (end | 1), "... and read back (0x%llx)", (unsigned long long)v);
    }
    /* Disabling: the value is kept, the page is left alone. */
    check(wrmsr_safe(MSR_KVM_SYSTEM_TIME_NEW, gpa(&pvti)) == 0, "WRMSR without the enable bit");
    u32 before = pvti.version;
    pvclock_delay(&pvti, 1000000);
    check(pvti.version == before, "a disabled page is not updated");
    /* The deprecated MSR: same structure, no PVCLOCK_TSC_STABLE_BIT. */
    if (has_feature(KVM_FEATURE_CLOCKSOURCE)) {
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME, gpa(&pvti_old) | 1) == 0,
              "WRMSR MSR_KVM_SYSTEM_TIME (0x12)");
        check((pvti_old.version & 1) == 0 && pvti_old.version != 0 &&
                  !(pvti_old.flags & PVCLOCK_TSC_STABLE_BIT),
              "the 0x12 page is filled without PVCLOCK_TSC_STABLE_BIT (flags 0x%x)",
              pvti_old.flags);
        check(wrmsr_safe(MSR_KVM_SYSTEM_TIME, 0) == 0, "WRMSR MSR_KVM_SYSTEM_TIME <- 0");
    }
}

int guest_main(const struct hvm_start_info *si)
{
    choose_insn();
    gprintf("%s: kvmclock checks (%s, %s), CPUID 0x40000001.EAX = 0x%x\n", GUEST_NAME,
            rt_boot_protocol_name(), RT_64BIT ? "64-bit" : "32-bit", kvm_features());
    if (!has_feature(KVM_FEATURE_CLOCKSOURCE2)) {
        gprintf("%s: KVM_FEATURE_CLOCKSOURCE2 not shown (no stable TSC on this host?)\n",
                GUEST_NAME);
        check_without_kvmclock();
        return check_summary();
    }
    check_page();
    check_monotonic();
    check_rate();
    check_wall_clock();
    check_addresses(si);
    return check_summary();
}
