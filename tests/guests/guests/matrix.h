/* matrix.h: what the matrix guests (matrix_<mode>.c) share. Each guest runs one behaviour of
 * polyvisor's cross-personality matrix (vmm/src/selftest/, docs/testing.md), chosen by
 * `scenario=` on the command line, checks its ABI's documented answer itself with the
 * runtime's check_*() lines and ends with check_summary().
 *
 * Cmdline (set by the host from its plan and host_check()):
 *   scenario=NAME       identity disabled enabled unknown ring denied console yield shutdown
 *                       time wake bad-pointer caller32
 *   insn=vmcall|vmmcall the instruction for CPL 0 calls (the one this host traps)
 *   cpl3=vmcall|vmmcall the instruction for the CPL 3 call (the one this host traps there)
 */
#ifndef MATRIX_H
#define MATRIX_H

#include "guest.h"

enum mx_insn { MX_VMCALL = 0, MX_VMMCALL = 1 };

static enum mx_insn mx_insn0 = MX_VMCALL;
static enum mx_insn mx_insn3 = MX_VMMCALL;
static char mx_scenario[24];

static inline enum mx_insn mx_parse_insn(const char *key, enum mx_insn dflt)
{
    char buf[16];
    if (cmdline_get(key, buf, sizeof buf) < 0)
        return dflt;
    return strcmp(buf, "vmmcall") ? MX_VMCALL : MX_VMMCALL;
}

/* Reads the command line and announces the scenario. */
static inline void mx_init(void)
{
    if (cmdline_get("scenario", mx_scenario, sizeof mx_scenario) < 0)
        mx_scenario[0] = 0;
    mx_insn0 = mx_parse_insn("insn", MX_VMCALL);
    mx_insn3 = mx_parse_insn("cpl3", MX_VMMCALL);
    gprintf("%s: scenario %s (%s boot, %u-bit)\n", GUEST_NAME, mx_scenario,
            rt_boot_protocol_name(), RT_64BIT ? 64 : 32);
}

static inline bool mx_is(const char *name)
{
    return !strcmp(mx_scenario, name);
}

/* An unknown scenario is a failure, not a silent pass. */
static inline int mx_unknown_scenario(void)
{
    check_true("scenario known", false, "\"%s\"", mx_scenario);
    return check_summary();
}

/* The hypercall instruction at CPL 0 with fault recovery: 0 or the vector. */
static inline int mx_call(struct hc_regs *r)
{
    return mx_insn0 == MX_VMMCALL ? hypercall_vmmcall(r) : hypercall_vmcall(r);
}

/* The same at CPL 3 with the cpl3= instruction. */
static struct hc_regs mx_r3;

static ureg mx_ring3_fn(ureg unused)
{
    (void)unused;
    if (mx_insn3 == MX_VMMCALL)
        hypercall_vmmcall_raw(&mx_r3); /* a fault ends the ring-3 run with its vector */
    else
        hypercall_vmcall_raw(&mx_r3);
    return 0;
}

static inline int mx_call_ring3(struct hc_regs *r)
{
    ureg unused = 0;
    mx_r3 = *r;
    int vec = run_in_ring3(mx_ring3_fn, 0, &unused);
    if (!vec)
        *r = mx_r3;
    return vec;
}

/* CPUID leaf `leaf`: EAX (the highest leaf) and the 12-byte signature in EBX ECX EDX. */
static inline void mx_check_signature(u32 leaf, const char *want, u32 max_leaf)
{
    u32 r[4];
    char sig[13];
    cpuid(leaf, 0, r);
    memcpy(sig, &r[1], 4);
    memcpy(sig + 4, &r[2], 4);
    memcpy(sig + 8, &r[3], 4);
    sig[12] = 0;
    char shown[13];
    for (int i = 0; i < 12; i++)
        shown[i] = (sig[i] >= 0x20 && sig[i] < 0x7f) ? sig[i] : '.';
    shown[12] = 0;
    check_true("CPUID 0x40000000 signature", !memcmp(sig, want, 12), "\"%s\"", shown);
    check_eq("CPUID 0x40000000 EAX, the highest leaf", r[0], max_leaf);
}

/* Highest end of RAM in the memory map (0 if unknown). */
static inline u64 mx_ram_end(void)
{
    return rt_ram_end(rt_start_info);
}

/* Spins `n` pauses: a little guest time for a clock to advance. */
static inline void mx_spin(unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        pause();
}

/* A clock read twice around mx_spin(): it advanced, and it counts from the VM's start
 * (below `limit`, 60 s in its units). */
static inline void mx_check_clock(const char *name, u64 t0, u64 t1, u64 limit)
{
    char what[96];
    gsnprintf(what, sizeof what, "%s advances", name);
    check_true(what, t1 > t0, "%llu then %llu", t0, t1);
    gsnprintf(what, sizeof what, "%s counts from the VM's start (below 60 s)", name);
    check_true(what, t1 < limit, "%llu", t1);
}

/* ------------------------------------------------------------ a second vCPU */
/* vCPU 1 waits: with `vector` 0 in `cli; hlt` (only a wake can end it), otherwise in
 * `sti; hlt` until that vector arrived. Then it says so and idles. */
static volatile u32 mx_ap_go, mx_ap_ready, mx_ap_woken, mx_ap_vector;

void guest_ap_main(unsigned vcpu)
{
    if (vcpu == 1) {
        while (!__atomic_load_n(&mx_ap_go, __ATOMIC_ACQUIRE))
            pause();
        u32 vector = __atomic_load_n(&mx_ap_vector, __ATOMIC_ACQUIRE);
        __atomic_store_n(&mx_ap_ready, 1, __ATOMIC_RELEASE);
        if (vector) {
            while (!irq_count(1, vector))
                sti_hlt();
        } else {
            cli();
            hlt();
        }
        __atomic_store_n(&mx_ap_woken, 1, __ATOMIC_RELEASE);
    }
    for (;;)
        sti_hlt();
}

/* Spins up to `spins` pauses for `*flag`; whether it was set. */
static inline bool mx_wait_flag(volatile u32 *flag, u64 spins)
{
    for (u64 i = 0; i < spins; i++) {
        if (__atomic_load_n(flag, __ATOMIC_ACQUIRE))
            return true;
        pause();
    }
    return __atomic_load_n(flag, __ATOMIC_ACQUIRE) != 0;
}

/* Sets up the wait of vCPU 1 (before it starts waiting) and checks that it is waiting.
 * Every pause is emulated on some hosts (~0.3 us), so 10M spins bound a wait to seconds. */
static inline bool mx_ap_waiting(u32 vector)
{
    __atomic_store_n(&mx_ap_vector, vector, __ATOMIC_RELEASE);
    __atomic_store_n(&mx_ap_go, 1, __ATOMIC_RELEASE);
    bool up = wait_for_aps(1, 10000000ull) == 1 && mx_wait_flag(&mx_ap_ready, 10000000ull);
    check_true("vCPU 1 is up and waiting", up, "not up");
    /* Give it time to reach its hlt (a wake before it is latched anyway). */
    mx_spin(2000);
    return up;
}

static inline void mx_check_ap_woken(void)
{
    bool woken = mx_wait_flag(&mx_ap_woken, 10000000ull);
    check_true("vCPU 1 woke up", woken, "still waiting");
}

#endif
