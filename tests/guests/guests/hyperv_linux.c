/* hyperv_linux: a Linux-style Hyper-V start-up, in Linux's order, then Linux's own hypercall
 * wrappers through the page (docs/abi/hyperv.md).
 *
 * 1. ms_hyperv_platform() (arch/x86/kernel/cpu/mshyperv.c): CPUID.1:ECX[31], leaf
 *    0x40000000 in 0x40000005..0x4000FFFF with "Microsoft Hv", and the hypercall and VP
 *    index privileges.
 * 2. ms_hyperv_init_platform(): features, hints, limits; TSC and APIC frequency MSRs when
 *    shown; the reference TSC clocksource (hv_init_tsc_clocksource, drivers/clocksource/
 *    hyperv_timer.c: read the MSR, set enable and the page number) — before the guest OS id.
 * 3. hyperv_init() (arch/x86/hyperv/hv_init.c): hv_cpu_init() on every CPU (VP_INDEX, then
 *    the VP assist page, which is not shown here: the write is a #GP Linux survives), then
 *    GUEST_OS_ID, then read HYPERCALL and write it back with enable and the page number.
 * 4. Calls as Linux makes them (include/asm-generic/mshyperv.h, arch/x86/include/asm/
 *    mshyperv.h): hv_query_ext_cap, the IPI hooks of arch/x86/hyperv/hv_apic.c (fast
 *    16-byte SendSyntheticClusterIpi, SendSyntheticClusterIpiEx through hv_do_rep_hypercall),
 *    hyperv_flush_tlb_multi (arch/x86/hyperv/mmu.c) when the remote flush is recommended,
 *    and the clocksource reads.
 * Built as a 64-bit image and as a 32-bit PVH image (Linux's i386 wrappers).
 */
#include "hyperv_guest.h"

#define HV_IPI_VECTOR 0xf3 /* like Linux's CALL_FUNCTION_VECTOR range */

static u8 hv_hypercall_pg[4096] __aligned(4096);
static struct tsc_page tsc_pg __aligned(4096);
static u8 hyperv_pcpu_input_arg[4096] __aligned(4096);
static u8 hyperv_pcpu_output_arg[4096] __aligned(4096);
static const void *hv_hypercall_pg_ptr; /* NULL until the page is enabled, as in Linux */

static volatile u32 hv_vp_index[RT_MAX_VCPUS];
static volatile int vp_assist_fault[RT_MAX_VCPUS];
static volatile u32 cpu_init_go, cpu_init_done, ipis[RT_MAX_VCPUS];

/* ------------------------------------------------------------------ Linux's wrappers */
static u64 hv_do_hypercall(u64 control, void *input, void *output)
{
    u64 input_address = input ? gpa(input) : 0;
    u64 output_address = output ? gpa(output) : 0;
    u64 hv_status;
    if (!hv_hypercall_pg_ptr)
        return ~0ull;
#if RT_64BIT
    __asm__ volatile("mov %[output_address], %%r8\n\t"
                     "call *%[pg]"
                     : "=a"(hv_status), "+c"(control), "+d"(input_address)
                     : [output_address] "r"(output_address), [pg] "m"(hv_hypercall_pg_ptr)
                     : "cc", "memory", "r8", "r9", "r10", "r11");
#else
    u32 input_address_hi = (u32)(input_address >> 32), input_address_lo = (u32)input_address;
    u32 output_address_hi = (u32)(output_address >> 32), output_address_lo = (u32)output_address;
    __asm__ volatile("call *%[pg]"
                     : "=A"(hv_status), "+c"(input_address_lo)
                     : "A"(control), "b"(input_address_hi), "D"(output_address_hi),
                       "S"(output_address_lo), [pg] "m"(hv_hypercall_pg_ptr)
                     : "cc", "memory");
#endif
    return hv_status;
}

static u64 hv_do_fast_hypercall16(u16 code, u64 input1, u64 input2)
{
    u64 hv_status, control = (u64)code | HV_HYPERCALL_FAST_BIT;
#if RT_64BIT
    __asm__ volatile("mov %[input2], %%r8\n\t"
                     "call *%[pg]"
                     : "=a"(hv_status), "+c"(control), "+d"(input1)
                     : [input2] "r"(input2), [pg] "m"(hv_hypercall_pg_ptr)
                     : "cc", "r8", "r9", "r10", "r11");
#else
    u32 input1_hi = (u32)(input1 >> 32), input1_lo = (u32)input1;
    u32 input2_hi = (u32)(input2 >> 32), input2_lo = (u32)input2;
    __asm__ volatile("call *%[pg]"
                     : "=A"(hv_status), "+c"(input1_lo)
                     : "A"(control), "b"(input1_hi), "D"(input2_hi), "S"(input2_lo),
                       [pg] "m"(hv_hypercall_pg_ptr)
                     : "cc");
#endif
    return hv_status;
}

static bool hv_result_success(u64 status) { return (status & 0xffff) == HV_STATUS_SUCCESS; }
static u16 hv_repcomp(u64 status) { return (u16)((status >> 32) & 0xfff); }

static u64 hv_do_rep_hypercall(u16 code, u16 rep_count, u16 varhead_size, void *input,
                               void *output)
{
    u64 control = code, status;
    u16 rep_comp;
    control |= (u64)varhead_size << 17;
    control |= (u64)rep_count << 32;
    do {
        status = hv_do_hypercall(control, input, output);
        if (!hv_result_success(status))
            return status;
        rep_comp = hv_repcomp(status);
        control &= ~(0xfffull << 48);
        control |= (u64)rep_comp << 48;
    } while (rep_comp < rep_count);
    return status;
}

/* ------------------------------------------------------------------ the clocksources */
static u64 read_hv_clock_msr(void) { return rdmsr(HV_X64_MSR_TIME_REF_COUNT); }

static bool tsc_clocksource;

/* hv_read_reference_counter(): the page when it is valid, else the MSR. */
static u64 hv_read_reference_counter(void)
{
    u64 t;
    if (tsc_clocksource && tsc_page_time(&tsc_pg, rdtsc(), &t))
        return t;
    return read_hv_clock_msr();
}

/* ------------------------------------------------------------------ per-CPU init */
/* hv_cpu_init(): VP_INDEX, then the VP assist page (not shown here: #GP). */
static void hv_cpu_init(unsigned cpu)
{
    u64 msr_vp_index = 0xffffffffu;
    if (rdmsr_safe(HV_X64_MSR_VP_INDEX, &msr_vp_index) != 0)
        msr_vp_index = 0xfffffffeu;
    hv_vp_index[cpu] = (u32)msr_vp_index;
    /* Linux: wrmsrl(HV_X64_MSR_VP_ASSIST_PAGE, page | enable). */
    vp_assist_fault[cpu] = wrmsr_safe(HV_X64_MSR_VP_ASSIST_PAGE, 0x7000ull | 1);
}

static void on_ipi(struct trap_frame *f)
{
    (void)f;
    __atomic_add_fetch(&ipis[this_vcpu()], 1, __ATOMIC_SEQ_CST);
}

void guest_ap_main(unsigned vcpu)
{
    while (!__atomic_load_n(&cpu_init_go, __ATOMIC_ACQUIRE))
        pause();
    hv_cpu_init(vcpu);
    __atomic_add_fetch(&cpu_init_done, 1, __ATOMIC_SEQ_CST);
    for (;;)
        sti_hlt();
}

/* ------------------------------------------------------------------ the steps */
static bool ms_hyperv_platform(void)
{
    u32 r[4];
    char sig[13];
    cpuid(1, 0, r);
    check((r[2] >> 31) & 1, "X86_FEATURE_HYPERVISOR");
    cpuid(0x40000000, 0, r);
    memcpy(sig, &r[1], 12);
    sig[12] = 0;
    bool ok = r[0] >= 0x40000005 && r[0] <= 0x4000ffff && !memcmp(sig, "Microsoft Hv", 12);
    check(ok, "ms_hyperv_platform: Microsoft Hv, max leaf in range|0x%x \"%s\"", r[0], sig);
    cpuid(0x40000003, 0, r);
    bool needed = (r[0] & (1u << P_HYPERCALL)) && (r[0] & (1u << P_VP_INDEX));
    check(needed, "AccessHypercallMsrs and AccessVpIndex|0x%x", r[0]);
    return ok && needed;
}

static void ms_hyperv_init_platform(void)
{
    read_cfg();
    gprintf("%s: Hyper-V: privilege flags low 0x%x, high 0x%x, hints 0x%x, misc 0x%x\n",
            GUEST_NAME, (u32)cfg.priv, (u32)(cfg.priv >> 32), cfg.recommendations, cfg.features);
    u32 r[4];
    cpuid(0x40000005, 0, r);
    gprintf("%s: Hyper-V: max %u virtual processors, %u logical processors\n", GUEST_NAME,
            r[0], r[1]);
    check(r[0] >= vcpus_online(), "max_vp_index covers the CPUs|%u", r[0]);
    if (has_priv(P_FREQUENCY) && has_feature(F_FREQUENCY_MSRS)) {
        u64 tsc_hz = rdmsr(HV_X64_MSR_TSC_FREQUENCY);
        u64 apic_hz = rdmsr(HV_X64_MSR_APIC_FREQUENCY);
        gprintf("%s: Hyper-V: TSC %llu kHz, LAPIC timer period %llu (HZ=1000)\n", GUEST_NAME,
                udiv64(tsc_hz, 1000, NULL), udiv64(apic_hz, 1000, NULL));
        check(tsc_hz > 0 && apic_hz == 1000000000ull, "hv_get_tsc_khz, APIC frequency");
    }
    /* hv_init_tsc_clocksource(), before the guest OS id. */
    if (has_priv(P_REFERENCE_TSC)) {
        u64 tsc_msr = rdmsr(HV_X64_MSR_REFERENCE_TSC);
        tsc_msr = (tsc_msr & 0xffe) | gpa(&tsc_pg) | 1;
        wrmsr(HV_X64_MSR_REFERENCE_TSC, tsc_msr);
        u64 t;
        tsc_clocksource = tsc_page_time(&tsc_pg, rdtsc(), &t);
        check(tsc_clocksource, "hyperv_clocksource_tsc_page registered|sequence %u",
              tsc_pg.sequence);
        check(rdmsr(HV_X64_MSR_GUEST_OS_ID) == 0, "reference TSC set up before the guest OS id");
    } else if (has_priv(P_TIME_REF_COUNT)) {
        info("hyperv_clocksource_msr (no TSC page shown)");
    }
}

static void hyperv_init(void)
{
    /* hv_cpu_init() on every online CPU (cpuhp_setup_state). */
    hv_cpu_init(0);
    __atomic_store_n(&cpu_init_go, 1, __ATOMIC_RELEASE);
    unsigned others = vcpus_online() - 1;
    for (u64 s = 0; __atomic_load_n(&cpu_init_done, __ATOMIC_ACQUIRE) < others && s < 50000000ull;
         s++)
        pause();
    for (unsigned cpu = 0; cpu < vcpus_online(); cpu++) {
        check(hv_vp_index[cpu] == cpu, "hv_vp_index[%u] = %u|got %u", cpu, cpu, hv_vp_index[cpu]);
        check(vp_assist_fault[cpu] == (has_priv(P_APIC_MSRS) ? 0 : VEC_GP),
              "CPU %u: VP assist page write #GP (not shown), survived|%s", cpu,
              vec_name(vp_assist_fault[cpu]));
    }
    /* Setup the hypercall page and enable hypercalls. */
    wrmsr(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID);
    u64 hypercall_msr = rdmsr(HV_X64_MSR_HYPERCALL);
    check(!(hypercall_msr & 1), "HYPERCALL off before Linux enables it|0x%llx", hypercall_msr);
    hypercall_msr = (hypercall_msr & 0xffe) | gpa(hv_hypercall_pg) | 1;
    wrmsr(HV_X64_MSR_HYPERCALL, hypercall_msr);
    check(rdmsr(HV_X64_MSR_HYPERCALL) == hypercall_msr, "hypercall page enabled|0x%llx",
          rdmsr(HV_X64_MSR_HYPERCALL));
    hv_hypercall_pg_ptr = hv_hypercall_pg;
    const u8 *p = hv_hypercall_pg;
    check(p[0] == 0x0f && p[1] == 0x01 && (p[2] == 0xc1 || p[2] == 0xd9) && p[3] == 0xc3,
          "the page holds the hypercall sequence|%02x %02x %02x %02x", p[0], p[1], p[2], p[3]);
}

/* hv_query_ext_cap() (drivers/hv/hv_common.c). */
static void query_ext_cap(void)
{
    if (!has_priv(P_EXTENDED_HYPERCALLS)) {
        info("no EnableExtendedHypercalls: hv_query_ext_cap not used");
        return;
    }
    u64 *cap = (u64 *)hyperv_pcpu_output_arg;
    *cap = ~0ull;
    u64 status = hv_do_hypercall(HV_EXT_CALL_QUERY_CAPABILITIES, NULL, cap);
    check(hv_result_success(status) && *cap == 0, "hv_query_ext_cap|status 0x%llx, caps 0x%llx",
          status, *cap);
}

static bool wait_ipi(unsigned cpu, u32 want)
{
    return wait_count(&ipis[cpu], want, cpu, 20000000ull);
}

/* hv_apic.c: __send_ipi_mask (fast, 16 bytes) and __send_ipi_mask_ex (rep wrapper). */
static void send_ipis(void)
{
    if (!recommends(R_CLUSTER_IPI)) {
        info("no SyntheticClusterIpi recommendation: Linux keeps native IPIs");
        return;
    }
    gprintf("%s: Hyper-V: Using IPI hypercalls\n", GUEST_NAME);
    set_irq_handler(HV_IPI_VECTOR, on_ipi);
    unsigned target = vcpus_online() > 1 ? 1 : 0;
    if (hv_vp_index[target] >= 64) {
        check(false, "a VP index for CPU %u", target);
        return;
    }
    u64 status = hv_do_fast_hypercall16(HVCALL_SEND_IPI, HV_IPI_VECTOR, 1ull << hv_vp_index[target]);
    bool got = wait_ipi(target, 1);
    check(hv_result_success(status) && got, "__send_ipi_mask to CPU %u|status 0x%llx", target,
          status);
    if (!recommends(R_EX_PROCESSOR_MASKS))
        return;
    /* hv_send_ipi_all: the "all" format, no banks. */
    u8 *arg = hyperv_pcpu_input_arg;
    memset(arg, 0, 32);
    *(u32 *)arg = HV_IPI_VECTOR;
    ((u64 *)arg)[1] = HV_GENERIC_SET_ALL;
    ((u64 *)arg)[2] = 0;
    u32 before0 = ipis[0], before1 = ipis[target];
    status = hv_do_rep_hypercall(HVCALL_SEND_IPI_EX, 0, 0, arg, NULL);
    got = wait_ipi(0, before0 + 1) && wait_ipi(target, before1 + (target ? 1 : 0));
    check(hv_result_success(status) && got, "__send_ipi_mask_ex to all CPUs|status 0x%llx",
          status);
}

/* hyperv_flush_tlb_multi() (arch/x86/hyperv/mmu.c). */
struct hv_tlb_flush {
    u64 address_space;
    u64 flags;
    u64 processor_mask;
    u64 gva_list[];
};

static void flush_tlb_multi(void)
{
    if (!recommends(R_REMOTE_FLUSH)) {
        info("no remote TLB flush recommendation: Linux flushes with IPIs");
        return;
    }
    gprintf("%s: Hyper-V: Using hypercall for remote TLB flush\n", GUEST_NAME);
    struct hv_tlb_flush *flush = (struct hv_tlb_flush *)hyperv_pcpu_input_arg;
    u64 cpus = 0;
    for (unsigned cpu = 0; cpu < vcpus_online(); cpu++)
        if (hv_vp_index[cpu] < 64)
            cpus |= 1ull << hv_vp_index[cpu];
    /* A whole address space (info->end == TLB_FLUSH_ALL). */
    flush->address_space = read_cr3() & ~0xfffull;
    flush->flags = HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY;
    flush->processor_mask = cpus;
    u64 status = hv_do_hypercall(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, flush, NULL);
    check(hv_result_success(status), "flush: address space|status 0x%llx", status);
    /* Kernel mappings: no mm, all address spaces, every processor. */
    flush->address_space = 0;
    flush->flags = HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES | HV_FLUSH_ALL_PROCESSORS;
    flush->processor_mask = 0;
    status = hv_do_hypercall(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, flush, NULL);
    check(hv_result_success(status), "flush: kernel, all processors|status 0x%llx", status);
    /* A range: fill_gva_list() packs up to 4096 pages per entry. 700 entries of one page
     * each would not fit, so Linux passes at most (PAGE_SIZE - 24) / 8 = 509. */
    flush->address_space = read_cr3() & ~0xfffull;
    flush->flags = 0;
    flush->processor_mask = cpus;
    u16 gva_n = 0;
    for (u64 cur = 0x40000000ull; gva_n < 300; cur += 0x2000, gva_n++)
        flush->gva_list[gva_n] = cur | 1; /* two pages */
    status = hv_do_rep_hypercall(HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, gva_n, 0, flush, NULL);
    check(hv_result_success(status) && hv_repcomp(status) == gva_n,
          "flush: a list of %u ranges|status 0x%llx, reps %u", gva_n, status, hv_repcomp(status));
}

static void clocks(void)
{
    if (!has_priv(P_TIME_REF_COUNT) && !tsc_clocksource)
        return;
    u64 prev = hv_read_reference_counter();
    bool mono = true;
    for (unsigned i = 0; i < 100; i++) {
        u64 now = hv_read_reference_counter();
        mono = mono && now >= prev;
        prev = now;
    }
    check(mono, "hv_read_reference_counter monotonic|last %llu", prev);
    if (tsc_clocksource && has_priv(P_TIME_REF_COUNT)) {
        u64 a = 0, b = 0;
        u64 t0 = rdtsc();
        u64 msr = read_hv_clock_msr();
        u64 t1 = rdtsc();
        bool ok = tsc_page_time(&tsc_pg, t0, &a) && tsc_page_time(&tsc_pg, t1, &b);
        check(ok && msr + 10 >= a && msr <= b + 10,
              "read_hv_clock_tsc agrees with read_hv_clock_msr|%llu <= %llu <= %llu", a, msr, b);
    }
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    gprintf("%s: Linux-style Hyper-V start-up (%s)\n", GUEST_NAME, rt_boot_protocol_name());
    if (!ms_hyperv_platform()) {
        check_summary();
        return 1;
    }
    gprintf("%s: Hypervisor detected: Microsoft Hyper-V\n", GUEST_NAME);
    ms_hyperv_init_platform();
    hyperv_init();
    query_ext_cap();
    send_ipis();
    flush_tlb_multi();
    clocks();
    return check_summary();
}
