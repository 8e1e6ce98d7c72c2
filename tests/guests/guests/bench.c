/* bench: the guest of `polyvisor bench` (bench64, ELF64 direct, CPL 0).
 *
 * Times hypercalls of one ABI against the port-I/O floor, each call separately with RDTSC,
 * and reports a summary per call that the host parses (`vmm/src/bench.rs`). Every output
 * line starts with "bench64: ".
 *
 * Cmdline:
 *   mode=bhyve|kvm|hyperv|xen   the ABI (the VMM's [hypervisor] mode, hypercalls enabled;
 *                               hyperv also needs the remote TLB flush recommendation)
 *   n=N                         latency samples per call (default 1000, at most 20000);
 *                               0 skips the latency phase
 *   tput=N                      throughput: every online vCPU makes N of the cheapest calls
 *                               at once; 0 (default) skips it
 *   cpus=N                      the vCPUs the throughput phase waits for (default 1)
 *   rounds=R                    throughput phases repeated R times (default 1, at most 9)
 *   insn=vmcall|vmmcall         the instruction for direct calls (default by CPU vendor)
 *
 * Latency phase: per iteration, one port write to the COM1 scratch register (a port exit
 * the VMM answers with one store: the floor), then the mode's cheapest call, then its
 * memory-touching call. Interleaving the three makes host noise hit all of them alike. Each
 * is timed by the same instructions around its exiting instruction,
 *   lfence; rdtsc; mov %eax, %r12d; mov %edx, %r13d; mov A, %rax; mov D, %rdx;
 *   EXIT; lfence; rdtsc
 * (EXIT = out, VMCALL/VMMCALL, or `call` into the Hyper-V hypercall page), so that the
 * operations differ only in EXIT: on hosts that emulate every guest instruction (PVM runs
 * a guest kernel that is not PVM-aware that way, at ~0.4 us an instruction) any other
 * difference would be counted in. The samples (cycles) are sorted in guest memory and
 * summarised as:
 *   bench64: sample name=NAME n=N min=C p50=C p90=C p99=C max=C mean=C
 * then the same for `timing_only` (the timing instructions with no EXIT between them: what
 * every sample above includes besides its exit) and, in Hyper-V mode, `call_ret` (EXIT = a
 * `call` to a `ret`: what going through the hypercall page adds before its VMCALL).
 * Before that, each call's answer is checked once:
 *   bench64: answer name=NAME value=0x... ok=1
 * The very first thing guest_main does is a port write (the start-up marker), after reading
 * the TSC; it reports that TSC and the one the runtime read at the image's first
 * instructions (rt_start_tsc) as
 *   bench64: tsc_main=T tsc_start=S ...
 * Throughput phase: every online vCPU at once runs an empty loop (16 iterations per call,
 * no exits), then tput=N port writes, then N cheapest calls, each timed by the BSP, all of
 * it `rounds` times:
 *   bench64: tput kind=spin|port_io|hypercall vcpus=V round=I ops=TOTAL cycles=C
 * Exit status 0, or 1 when a call gave a wrong answer (the line says which).
 */
#include "guest.h"

#define SAY(...) gprintf(GUEST_NAME ": " __VA_ARGS__)

#define FLOOR_PORT 0x3ff /* COM1 scratch register: handled in the VMM, no output */
#define MAX_SAMPLES 20000

enum mode { M_BHYVE, M_KVM, M_HYPERV, M_XEN };

static enum mode mode;
static bool use_vmmcall;

/* Samples of the three measured operations (cycles, saturated to 32 bits). */
static u32 s_floor[MAX_SAMPLES], s_cheap[MAX_SAMPLES], s_mem[MAX_SAMPLES];
/* The timing instructions alone (no exit), and for Hyper-V a `call` into a `ret`: what the
 * hypercall page adds to a call before any exit. */
static u32 s_timing[MAX_SAMPLES], s_call_ret[MAX_SAMPLES];
static const u8 ret_stub[16] __aligned(16) = {0xc3};

/* Memory the memory-touching calls read or write. */
static u8 hv_page[4096] __aligned(4096);   /* Hyper-V hypercall page (filled by the VMM) */
static u8 hv_input[4096] __aligned(4096);  /* Hyper-V input page */
static u64 probe_args[5] __aligned(64);    /* bhyve DTRACE_PROBE arguments */
static u8 pairing[64] __aligned(64);       /* struct kvm_clock_pairing */
static char extraversion[16] __aligned(16); /* XENVER_extraversion buffer */
static const char probe_name[] = "polyvisor:bench:probe";
static u64 probe_id;

static inline u64 tsc(void)
{
    u32 lo, hi;
    __asm__ volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi)::"memory");
    return ((u64)hi << 32) | lo;
}

static inline void floor_exit(void)
{
    __asm__ volatile("outb %%al, %%dx" ::"a"(0), "d"(FLOOR_PORT) : "memory");
}

/* A direct call: RAX, RDI, RSI, RDX, RBX, RCX in; RAX out. Every other register is
 * preserved by the VMM, so nothing else is clobbered. */
static inline u64 direct(u64 rax, u64 rdi, u64 rsi, u64 rdx, u64 rbx, u64 rcx)
{
    if (use_vmmcall)
        __asm__ volatile(".byte 0x0f, 0x01, 0xd9"
                         : "+a"(rax), "+D"(rdi), "+S"(rsi), "+d"(rdx), "+b"(rbx), "+c"(rcx)
                         :
                         : "memory");
    else
        __asm__ volatile(".byte 0x0f, 0x01, 0xc1"
                         : "+a"(rax), "+D"(rdi), "+S"(rsi), "+d"(rdx), "+b"(rbx), "+c"(rcx)
                         :
                         : "memory");
    return rax;
}

/* A direct call that also answers in RDI (bhyve PROBE_CREATE). */
static u64 direct_rdi(u64 rax, u64 *rdi, u64 rsi)
{
    u64 rdx = 0, rbx = 0, rcx = 0, d = *rdi;
    if (use_vmmcall)
        __asm__ volatile(".byte 0x0f, 0x01, 0xd9"
                         : "+a"(rax), "+D"(d), "+S"(rsi), "+d"(rdx), "+b"(rbx), "+c"(rcx)
                         :
                         : "memory");
    else
        __asm__ volatile(".byte 0x0f, 0x01, 0xc1"
                         : "+a"(rax), "+D"(d), "+S"(rsi), "+d"(rdx), "+b"(rbx), "+c"(rcx)
                         :
                         : "memory");
    *rdi = d;
    return rax;
}

/* A Hyper-V call through the hypercall page (RCX control, RDX input, R8 output; RAX status). */
static inline u64 hv_call(u64 control, u64 in, u64 out)
{
    u64 rax;
    register u64 r8 __asm__("r8") = out;
    __asm__ volatile("call *%[page]"
                     : "=a"(rax), "+c"(control), "+d"(in), "+r"(r8)
                     : [page] "r"(hv_page)
                     : "memory", "r9", "r10", "r11");
    return rax;
}

/* ------------------------------------------------------------- timed exits */

/* One timed exit: RAX and RDX are loaded after the first RDTSC (which clobbers them), every
 * other argument before it. Returns the cycles between the two RDTSCs. */
#define TIMED_EXIT(name, insn)                                                               \
    static u64 name(u64 rax, u64 rdx, u64 rdi, u64 rsi, u64 rbx, u64 rcx, u64 r8v,          \
                    const void *target)                                                      \
    {                                                                                        \
        register u64 a __asm__("r14") = rax;                                                 \
        register u64 d __asm__("r15") = rdx;                                                 \
        register u64 r8 __asm__("r8") = r8v;                                                 \
        register const void *t __asm__("r10") = target;                                     \
        register u64 lo0 __asm__("r12");                                                    \
        register u64 hi0 __asm__("r13");                                                     \
        u64 lo1, hi1;                                                                        \
        __asm__ volatile("lfence\n\trdtsc\n\t"                                               \
                         "mov %%eax, %%r12d\n\tmov %%edx, %%r13d\n\t"                        \
                         "mov %[a], %%rax\n\tmov %[d], %%rdx\n\t" insn "\n\t"                \
                         "lfence\n\trdtsc"                                                   \
                         : "=&a"(lo1), "=&d"(hi1), "=&r"(lo0), "=&r"(hi0), "+D"(rdi),        \
                           "+S"(rsi), "+b"(rbx), "+c"(rcx), "+r"(r8)                         \
                         : [a] "r"(a), [d] "r"(d), "r"(t)                                    \
                         : "memory", "r9", "r11");                                           \
        return (((hi1 & 0xffffffffull) << 32) | (lo1 & 0xffffffffull)) -                     \
               (((hi0 & 0xffffffffull) << 32) | (lo0 & 0xffffffffull));                      \
    }

TIMED_EXIT(timed_out, "outb %%al, %%dx")
TIMED_EXIT(timed_vmcall, ".byte 0x0f, 0x01, 0xc1")
TIMED_EXIT(timed_vmmcall, ".byte 0x0f, 0x01, 0xd9")
TIMED_EXIT(timed_page, "call *%%r10")
TIMED_EXIT(timed_nothing, "")

static u64 time_floor(void) { return timed_out(0, FLOOR_PORT, 0, 0, 0, 0, 0, 0); }

/* The cheapest (mem = false) or the memory call, timed. */
static u64 time_call(bool mem)
{
    if (mode == M_HYPERV) /* RCX control, RDX input, R8 output */
        return mem ? timed_page(0, (u64)(uptr)hv_input, 0, 0, 0, 0x0002, 0, hv_page)
                   : timed_page(0, 1, 0, 0, 0, 0x0008 | (1ull << 16), 0, hv_page);
    u64 rax = 0, rdx = 0, rdi = 0, rsi = 0, rbx = 0;
    switch (mode) {
    case M_BHYVE:
        if (mem) {
            rax = 2, rdi = probe_id, rsi = (u64)(uptr)probe_args, rdx = 7;
        }
        break;
    case M_KVM:
        rax = mem ? 9 : 1;
        if (mem)
            rbx = (u64)(uptr)pairing;
        break;
    case M_XEN:
        rax = 17;
        if (mem)
            rdi = 1, rsi = (u64)(uptr)extraversion;
        break;
    default:
        break;
    }
    return use_vmmcall ? timed_vmmcall(rax, rdx, rdi, rsi, rbx, 0, 0, 0)
                       : timed_vmcall(rax, rdx, rdi, rsi, rbx, 0, 0, 0);
}

static u64 cheap_call(void)
{
    switch (mode) {
    case M_BHYVE:
        return direct(0, 0, 0, 0, 0, 0); /* HYPERCALL_PROTOTYPE */
    case M_KVM:
        return direct(1, 0, 0, 0, 0, 0); /* KVM_HC_VAPIC_POLL_IRQ */
    case M_HYPERV:
        return hv_call(0x0008 | (1ull << 16), 1, 0); /* HvCallNotifyLongSpinWait, fast */
    case M_XEN:
        return direct(17, 0, 0, 0, 0, 0); /* xen_version(XENVER_version) */
    }
    return ~0ull;
}

static u64 mem_call(void)
{
    switch (mode) {
    case M_BHYVE: /* HYPERCALL_DTRACE_PROBE(id, args, thread) */
        return direct(2, probe_id, (u64)(uptr)probe_args, 7, 0, 0);
    case M_KVM: /* KVM_HC_CLOCK_PAIRING(&pairing, KVM_CLOCK_PAIRING_WALLCLOCK) */
        return direct(9, 0, 0, 0, (u64)(uptr)pairing, 0);
    case M_HYPERV: /* HvCallFlushVirtualAddressSpace, slow form: the input page is read */
        return hv_call(0x0002, (u64)(uptr)hv_input, 0);
    case M_XEN: /* xen_version(XENVER_extraversion, buf) */
        return direct(17, 1, (u64)(uptr)extraversion, 0, 0, 0);
    }
    return ~0ull;
}

static const char *const cheap_name[] = {"bhyve_prototype", "kvm_vapic_poll_irq",
                                         "hyperv_notify_long_spin_wait", "xen_version"};
static const char *const mem_name[] = {"bhyve_dtrace_probe", "kvm_clock_pairing",
                                       "hyperv_flush_va_space", "xen_extraversion"};

/* Whether an answer is the call's success. */
static bool answer_ok(bool mem, u64 v)
{
    switch (mode) {
    case M_BHYVE:
    case M_KVM:
        return v == 0;
    case M_HYPERV:
        return (v & 0xffff) == 0; /* HV_STATUS_SUCCESS */
    case M_XEN:
        return mem ? v == 0 : (s64)v > 0; /* version = major << 16 | minor */
    }
    return false;
}

/* Mode set-up: what a guest of that ABI does before its first call. 0 or an error text. */
static const char *setup(void)
{
    switch (mode) {
    case M_BHYVE: {
        /* HYPERCALL_DTRACE_PROBE_CREATE(name, len): RAX = 0 and RDI = the id */
        u64 rdi = (u64)(uptr)probe_name;
        u64 rax = direct_rdi(1, &rdi, sizeof probe_name - 1);
        if (rax != 0)
            return "HYPERCALL_DTRACE_PROBE_CREATE failed";
        probe_id = rdi;
        for (unsigned i = 0; i < 5; i++)
            probe_args[i] = 0x1111111111111111ull * (i + 1);
        return 0;
    }
    case M_HYPERV: {
        if (wrmsr_safe(0x40000000u, 0x8100000050504f4cull)) /* GUEST_OS_ID */
            return "wrmsr HV_X64_MSR_GUEST_OS_ID faulted";
        for (unsigned i = 0; i < sizeof hv_page; i += 2) {
            hv_page[i] = 0x0f; /* ud2 until the VMM fills the page */
            hv_page[i + 1] = 0x0b;
        }
        if (wrmsr_safe(0x40000001u, (u64)(uptr)hv_page | 1)) /* HYPERCALL, enabled */
            return "wrmsr HV_X64_MSR_HYPERCALL faulted";
        if (hv_page[0] == 0x0f && hv_page[1] == 0x0b)
            return "the hypercall page was not filled";
        /* AddressSpace 0, Flags 0, ProcessorMask naming only VP 63, which does not exist
         * here: the input block is read and checked, and no TLB is flushed. */
        memset(hv_input, 0, sizeof hv_input);
        ((u64 *)hv_input)[2] = 1ull << 63;
        return 0;
    }
    default:
        return 0;
    }
}

/* ------------------------------------------------------------- statistics */

static void sort_u32(u32 *a, u64 n)
{
    /* Heapsort: in place, O(n log n), no recursion. */
    if (n < 2)
        return;
    for (u64 start = n / 2; start-- > 0;) {
        u64 root = start;
        for (;;) {
            u64 child = 2 * root + 1;
            if (child >= n)
                break;
            if (child + 1 < n && a[child] < a[child + 1])
                child++;
            if (a[root] >= a[child])
                break;
            u32 t = a[root];
            a[root] = a[child];
            a[child] = t;
            root = child;
        }
    }
    for (u64 end = n - 1; end > 0; end--) {
        u32 t = a[0];
        a[0] = a[end];
        a[end] = t;
        u64 root = 0;
        for (;;) {
            u64 child = 2 * root + 1;
            if (child >= end)
                break;
            if (child + 1 < end && a[child] < a[child + 1])
                child++;
            if (a[root] >= a[child])
                break;
            t = a[root];
            a[root] = a[child];
            a[child] = t;
            root = child;
        }
    }
}

/* The nearest-rank percentile p (0..100) of sorted a[0..n). */
static u32 pct(const u32 *a, u64 n, u64 p)
{
    u64 rem;
    u64 rank = udiv64(p * n + 99, 100, &rem); /* ceil(p * n / 100) */
    if (rank == 0)
        rank = 1;
    if (rank > n)
        rank = n;
    return a[rank - 1];
}

static void summarise(const char *name, u32 *a, u64 n)
{
    u64 sum = 0, rem;
    for (u64 i = 0; i < n; i++)
        sum += a[i];
    sort_u32(a, n);
    SAY("sample name=%s n=%llu min=%u p50=%u p90=%u p99=%u max=%u mean=%llu\n", name,
        (unsigned long long)n, a[0], pct(a, n, 50), pct(a, n, 90), pct(a, n, 99), a[n - 1],
        (unsigned long long)udiv64(sum, n, &rem));
}

static u32 sat(u64 v) { return v > 0xffffffffull ? 0xffffffffu : (u32)v; }

/* ------------------------------------------------------------- throughput */

/* n cheapest calls in a tight loop: only the loop and the argument loads around each call. */
static void call_loop(u64 n)
{
    if (!n)
        return;
    if (mode == M_HYPERV) {
        __asm__ volatile("1: mov $0x10008, %%ecx\n\tmov $1, %%edx\n\tcall *%[page]\n\t"
                         "dec %[n]\n\tjnz 1b"
                         : [n] "+r"(n)
                         : [page] "r"(hv_page)
                         : "rax", "rcx", "rdx", "r8", "r9", "r10", "r11", "memory");
        return;
    }
    u64 nr = mode == M_BHYVE ? 0 : mode == M_KVM ? 1 : 17;
    if (use_vmmcall)
        __asm__ volatile("1: mov %[nr], %%rax\n\txor %%edi, %%edi\n\t.byte 0x0f, 0x01, 0xd9\n\t"
                         "dec %[n]\n\tjnz 1b"
                         : [n] "+r"(n)
                         : [nr] "r"(nr)
                         : "rax", "rdi", "memory");
    else
        __asm__ volatile("1: mov %[nr], %%rax\n\txor %%edi, %%edi\n\t.byte 0x0f, 0x01, 0xc1\n\t"
                         "dec %[n]\n\tjnz 1b"
                         : [n] "+r"(n)
                         : [nr] "r"(nr)
                         : "rax", "rdi", "memory");
}

/* n port writes (exits the VMM answers with one store) in a tight loop. */
static void pio_loop(u64 n)
{
    if (n)
        __asm__ volatile("1: outb %%al, %%dx\n\tdec %[n]\n\tjnz 1b"
                         : [n] "+r"(n)
                         : "a"(0), "d"(FLOOR_PORT)
                         : "memory");
}

/* n iterations of an empty loop: guest execution with no exit at all. */
static void spin_loop(u64 n)
{
    if (n)
        __asm__ volatile("1: dec %[n]\n\tjnz 1b" : [n] "+r"(n));
}

/* The throughput phases, run by every vCPU at once: 1 = spin (no exits), 2 = port I/O
 * exits, 3 = the cheapest hypercall; `rounds=R` times over (steps 1..R*PHASES). */
#define PHASES 3
#define MAX_ROUNDS 9
static const char *const phase_name[PHASES + 1] = {"", "spin", "port_io", "hypercall"};
static volatile u32 tput_step, tput_steps, tput_done[MAX_ROUNDS * PHASES + 1];
static u64 tput_calls;

/* Spin iterations per call: about as long as a call on hosts that emulate the guest. */
#define SPINS_PER_CALL 16

static void run_phase(u32 k)
{
    if (k == 1)
        spin_loop(tput_calls * SPINS_PER_CALL);
    else if (k == 2)
        pio_loop(tput_calls);
    else
        call_loop(tput_calls);
}

void guest_ap_main(unsigned vcpu)
{
    (void)vcpu;
    for (u32 step = 1;; step++) {
        while (__atomic_load_n(&tput_step, __ATOMIC_ACQUIRE) < step)
            pause();
        if (step > tput_steps)
            break;
        run_phase((step - 1) % PHASES + 1);
        __atomic_fetch_add(&tput_done[step], 1, __ATOMIC_ACQ_REL);
    }
    for (;;)
        sti_hlt();
}

/* Every vCPU (`cpus=N` on the command line) runs each phase at once; the BSP times from
 * releasing the APs to the last one finishing. */
static int throughput(void)
{
    unsigned want = (unsigned)cmdline_get_u64("cpus", 1);
    unsigned aps = want > 1 ? wait_for_aps(want - 1, 1ull << 32) : 0;
    if (aps + 1 != want) {
        SAY("error: %u of %u vCPUs came online\n", aps + 1, want);
        return 1;
    }
    u64 rounds = cmdline_get_u64("rounds", 1);
    if (rounds < 1)
        rounds = 1;
    if (rounds > MAX_ROUNDS)
        rounds = MAX_ROUNDS;
    tput_steps = (u32)rounds * PHASES; /* published by the release of the first step */
    for (u32 step = 1; step <= tput_steps; step++) {
        u32 k = (step - 1) % PHASES + 1;
        u64 t0 = tsc();
        __atomic_store_n(&tput_step, step, __ATOMIC_RELEASE);
        run_phase(k);
        while (__atomic_load_n(&tput_done[step], __ATOMIC_ACQUIRE) < aps)
            pause();
        u64 t1 = tsc();
        u64 ops = tput_calls * (k == 1 ? SPINS_PER_CALL : 1) * (aps + 1);
        SAY("tput kind=%s vcpus=%u round=%u ops=%llu cycles=%llu\n", phase_name[k], aps + 1,
            (step - 1) / PHASES + 1, (unsigned long long)ops, (unsigned long long)(t1 - t0));
    }
    __atomic_store_n(&tput_step, tput_steps + 1, __ATOMIC_RELEASE); /* the APs stop */
    return 0;
}

/* ------------------------------------------------------------------- main */

int guest_main(const struct hvm_start_info *si)
{
    u64 t_main = tsc();
    floor_exit(); /* the start-up marker: the VM's first exit */
    (void)si;
    char buf[16], insn[16];

    if (cmdline_get("mode", buf, sizeof buf) < 0) {
        SAY("error: no mode= on the command line\n");
        return 1;
    }
    if (!strcmp(buf, "bhyve"))
        mode = M_BHYVE;
    else if (!strcmp(buf, "kvm"))
        mode = M_KVM;
    else if (!strcmp(buf, "hyperv"))
        mode = M_HYPERV;
    else if (!strcmp(buf, "xen"))
        mode = M_XEN;
    else {
        SAY("error: unknown mode \"%s\"\n", buf);
        return 1;
    }
    u32 r[4];
    cpuid(0, 0, r);
    use_vmmcall = r[1] == 0x68747541 /* "Auth" */ || r[1] == 0x6f677948 /* "Hygo" */;
    if (cmdline_get("insn", insn, sizeof insn) >= 0)
        use_vmmcall = !strcmp(insn, "vmmcall");
    u64 n = cmdline_get_u64("n", 1000);
    if (n > MAX_SAMPLES)
        n = MAX_SAMPLES;
    tput_calls = cmdline_get_u64("tput", 0);
    SAY("tsc_main=%llu tsc_start=%llu mode=%s insn=%s n=%llu tput=%llu vcpus=%u\n",
        (unsigned long long)t_main, (unsigned long long)rt_start_tsc, buf, use_vmmcall ? "vmmcall" : "vmcall", (unsigned long long)n,
        (unsigned long long)tput_calls, vcpus_online());

    const char *err = setup();
    if (err) {
        SAY("error: %s\n", err);
        return 1;
    }
    int bad = 0;
    u64 v = cheap_call();
    SAY("answer name=%s value=0x%llx ok=%d\n", cheap_name[mode], (unsigned long long)v,
        answer_ok(false, v));
    bad += !answer_ok(false, v);
    v = mem_call();
    SAY("answer name=%s value=0x%llx ok=%d\n", mem_name[mode], (unsigned long long)v,
        answer_ok(true, v));
    bad += !answer_ok(true, v);
    if (bad)
        return 1;

    if (n) {
        for (u64 i = 0; i < n; i++) {
            s_floor[i] = sat(time_floor());
            s_cheap[i] = sat(time_call(false));
            s_mem[i] = sat(time_call(true));
            s_timing[i] = sat(timed_nothing(0, 0, 0, 0, 0, 0, 0, 0));
            if (mode == M_HYPERV)
                s_call_ret[i] = sat(timed_page(0, 0, 0, 0, 0, 0, 0, ret_stub));
        }
        summarise("port_io", s_floor, n);
        summarise(cheap_name[mode], s_cheap, n);
        summarise(mem_name[mode], s_mem, n);
        summarise("timing_only", s_timing, n);
        if (mode == M_HYPERV)
            summarise("call_ret", s_call_ret, n);
    }
    if (tput_calls && throughput())
        return 1;
    SAY("done\n");
    return 0;
}
