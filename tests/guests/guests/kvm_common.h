/* kvm_common.h: what the kvm_*.c test guests share: the ABI's numbers (Linux
 * include/uapi/linux/kvm_para.h, arch/x86/include/uapi/asm/kvm_para.h,
 * arch/x86/include/asm/pvclock-abi.h, apicdef.h), one-line checks, hypercalls at CPL 0 and 3
 * with KVM's convention (RAX = number, RBX RCX RDX RSI = a0..a3, result in RAX), the pvclock
 * reader, APIC ids and the RAM map. Interface: docs/abi/kvm.md.
 */
#ifndef KVM_COMMON_H
#define KVM_COMMON_H

#include "guest.h"

/* ------------------------------------------------------------------ numbers */
#define KVM_CPUID_SIGNATURE 0x40000000u
#define KVM_CPUID_FEATURES 0x40000001u

#define KVM_FEATURE_CLOCKSOURCE 0
#define KVM_FEATURE_NOP_IO_DELAY 1
#define KVM_FEATURE_CLOCKSOURCE2 3
#define KVM_FEATURE_PV_UNHALT 7
#define KVM_FEATURE_PV_SEND_IPI 11
#define KVM_FEATURE_POLL_CONTROL 12
#define KVM_FEATURE_PV_SCHED_YIELD 13
#define KVM_FEATURE_HC_MAP_GPA_RANGE 16
#define KVM_FEATURE_CLOCKSOURCE_STABLE_BIT 24
/* Every bit polyvisor can back (docs/abi/kvm.md, "Feature bits"). */
#define KVM_BACKABLE_FEATURES                                                                    \
    ((1u << 0) | (1u << 1) | (1u << 3) | (1u << 7) | (1u << 11) | (1u << 12) | (1u << 13) |     \
     (1u << 16) | (1u << 24))
/* The bits that need a hypercall. */
#define KVM_HYPERCALL_FEATURES ((1u << 7) | (1u << 11) | (1u << 13) | (1u << 16))

#define KVM_HC_VAPIC_POLL_IRQ 1
#define KVM_HC_MMU_OP 2
#define KVM_HC_KICK_CPU 5
#define KVM_HC_CLOCK_PAIRING 9
#define KVM_HC_SEND_IPI 10
#define KVM_HC_SCHED_YIELD 11
#define KVM_HC_MAP_GPA_RANGE 12

#define KVM_ENOSYS 1000
#define KVM_EFAULT 14
#define KVM_EINVAL 22
#define KVM_E2BIG 7
#define KVM_EPERM 1
#define KVM_EOPNOTSUPP 95

#define MSR_KVM_WALL_CLOCK 0x11u
#define MSR_KVM_SYSTEM_TIME 0x12u
#define MSR_KVM_WALL_CLOCK_NEW 0x4b564d00u
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01u
#define MSR_KVM_ASYNC_PF_EN 0x4b564d02u
#define MSR_KVM_STEAL_TIME 0x4b564d03u
#define MSR_KVM_PV_EOI_EN 0x4b564d04u
#define MSR_KVM_POLL_CONTROL 0x4b564d05u
#define MSR_KVM_MIGRATION_CONTROL 0x4b564d08u

#define PVCLOCK_TSC_STABLE_BIT (1 << 0)
#define PVCLOCK_GUEST_STOPPED (1 << 1)

#define KVM_CLOCK_PAIRING_WALLCLOCK 0

#define KVM_MAP_GPA_RANGE_PAGE_SZ_4K 0
#define KVM_MAP_GPA_RANGE_PAGE_SZ_2M 1
#define KVM_MAP_GPA_RANGE_PAGE_SZ_1G 2
#define KVM_MAP_GPA_RANGE_ENCRYPTED (1 << 4)

#define APIC_DM_FIXED 0x000
#define APIC_DM_LOWEST 0x100
#define APIC_DM_REMRD 0x300
#define APIC_DM_NMI 0x400
#define APIC_DEST_LOGICAL 0x800
#define APIC_INT_ASSERT 0x4000
#define APIC_INT_LEVELTRIG 0x8000
#define APIC_DEST_SELF 0x40000
#define APIC_DEST_ALLINC 0x80000
#define APIC_DEST_ALLBUT 0xc0000

struct kvm_clock_pairing {
    s64 sec;
    s64 nsec;
    u64 tsc;
    u32 flags;
    u32 pad[9];
};

struct pvclock_vcpu_time_info {
    u32 version;
    u32 pad0;
    u64 tsc_timestamp;
    u64 system_time;
    u32 tsc_to_system_mul;
    s8 tsc_shift;
    u8 flags;
    u8 pad[2];
} __attribute__((packed));

struct pvclock_wall_clock {
    u32 version;
    u32 sec;
    u32 nsec;
} __attribute__((packed));

/* -KVM_Exxx as the guest sees it in RAX: negated, at the native width (a 32-bit caller
 * reads -1000 as 0xfffffc18). */
#define KVM_ERR(code) ((ureg)(-(sreg)(code)))

/* ------------------------------------------------------------------- checks */
/* ----------------------------------------------------------------- hypercalls */
enum insn { VMCALL = 0, VMMCALL = 1 };
static const char *const insn_name[2] = {"VMCALL", "VMMCALL"};
static enum insn native_insn = VMCALL;

/* The instruction a KVM guest patches in: VMMCALL on AMD/Hygon, else VMCALL; cmdline
 * insn=vmcall|vmmcall overrides. */
static inline void choose_insn(void)
{
    u32 r[4];
    char vendor[13], buf[16];
    cpuid(0, 0, r);
    memcpy(vendor, &r[1], 4);
    memcpy(vendor + 4, &r[3], 4);
    memcpy(vendor + 8, &r[2], 4);
    vendor[12] = 0;
    native_insn = (!strcmp(vendor, "AuthenticAMD") || !strcmp(vendor, "HygonGenuine")) ? VMMCALL
                                                                                       : VMCALL;
    if (cmdline_get("insn", buf, sizeof buf) >= 0)
        native_insn = !strcmp(buf, "vmmcall") ? VMMCALL : VMCALL;
}

/* What a hypercall did: the fault vector (0 = none), the registers afterwards. */
struct answer {
    int vec;
    ureg rax;
    struct hc_regs after;
};

#if RT_64BIT
#define HC_NR(r) ((r).rax)
#else
#define HC_NR(r) ((r).eax)
#endif

/* Loads KVM's registers; every other register gets a recognisable value so that a clobber
 * shows ("No other registers will be clobbered", hypercalls.rst). */
static inline void kvm_load(struct hc_regs *r, ureg nr, ureg a0, ureg a1, ureg a2, ureg a3)
{
    memset(r, 0, sizeof *r);
#if RT_64BIT
    r->rax = nr;
    r->rbx = a0;
    r->rcx = a1;
    r->rdx = a2;
    r->rsi = a3;
    r->rdi = 0xd1d1d1d1d1d1d1d1ull;
    r->r8 = 0x8888888888888888ull;
    r->r9 = 0x9999999999999999ull;
    r->r10 = 0x1010101010101010ull;
    r->r11 = 0x1111111111111111ull;
#else
    r->eax = nr;
    r->ebx = a0;
    r->ecx = a1;
    r->edx = a2;
    r->esi = a3;
    r->edi = 0xd1d1d1d1;
    r->ebp = 0xb0b0b0b0;
#endif
}

/* Whether every register but RAX is as loaded. */
static inline bool only_rax_changed(const struct hc_regs *before, const struct hc_regs *after)
{
    struct hc_regs a = *after, b = *before;
    HC_NR(a) = 0;
    HC_NR(b) = 0;
    return !memcmp(&a, &b, sizeof a);
}

/* A hypercall at CPL 0 with fault recovery. */
static inline struct answer hc_with(enum insn insn, ureg nr, ureg a0, ureg a1, ureg a2, ureg a3)
{
    struct hc_regs r, before;
    kvm_load(&r, nr, a0, a1, a2, a3);
    before = r;
    struct answer a;
    memset(&a, 0, sizeof a);
    a.vec = insn == VMMCALL ? hypercall_vmmcall(&r) : hypercall_vmcall(&r);
    a.after = r;
    a.rax = a.vec ? 0 : HC_NR(r);
    if (!a.vec && !only_rax_changed(&before, &r))
        a.vec = -1; /* reported as a clobber */
    return a;
}

static inline struct answer hc(ureg nr, ureg a0, ureg a1, ureg a2, ureg a3)
{
    return hc_with(native_insn, nr, a0, a1, a2, a3);
}

/* A hypercall at CPL 3: the parameters travel in a global the ring-3 code reads. */
static volatile struct {
    enum insn insn;
    ureg nr, a0, a1, a2, a3;
} r3;

static ureg ring3_call(ureg unused)
{
    (void)unused;
    struct hc_regs r;
    kvm_load(&r, r3.nr, r3.a0, r3.a1, r3.a2, r3.a3);
    if (r3.insn == VMMCALL)
        hypercall_vmmcall_raw(&r); /* a fault ends the ring-3 run with its vector */
    else
        hypercall_vmcall_raw(&r);
    return HC_NR(r);
}

static inline struct answer hc3(enum insn insn, ureg nr, ureg a0, ureg a1, ureg a2, ureg a3)
{
    r3.insn = insn;
    r3.nr = nr;
    r3.a0 = a0;
    r3.a1 = a1;
    r3.a2 = a2;
    r3.a3 = a3;
    ureg res = 0;
    struct answer a;
    memset(&a, 0, sizeof a);
    a.vec = run_in_ring3(ring3_call, 0, &res);
    a.rax = a.vec ? 0 : res;
    return a;
}

static inline void describe(const struct answer *a, char *buf, size_t len)
{
    if (a->vec == -1)
        gsnprintf(buf, len, "a register other than RAX changed");
    else if (a->vec)
        gsnprintf(buf, len, "%s", vector_name((unsigned)a->vec));
    else if ((sreg)a->rax < 0 && (sreg)a->rax > -2000)
        gsnprintf(buf, len, "RAX=-%ld", -(long)(sreg)a->rax);
    else
        gsnprintf(buf, len, "RAX=0x%lx", (unsigned long)a->rax);
}

/* Checks that a call completed without a fault, changed only RAX, and answered `want`. */
static inline void expect(struct answer a, ureg want, const char *what)
{
    char got[64], wanted[32];
    describe(&a, got, sizeof got);
    if ((sreg)want < 0 && (sreg)want > -2000)
        gsnprintf(wanted, sizeof wanted, "-%ld", -(long)(sreg)want);
    else
        gsnprintf(wanted, sizeof wanted, "%lu", (unsigned long)want);
    check(a.vec == 0 && a.rax == want, "%s -> %s (got %s)", what, wanted, got);
}

/* ------------------------------------------------------------------- CPUID */
static inline u32 kvm_features(void)
{
    u32 r[4];
    cpuid(KVM_CPUID_FEATURES, 0, r);
    return r[0];
}

static inline bool has_feature(unsigned bit)
{
    return (kvm_features() >> bit) & 1;
}

/* This vCPU's APIC id: the x2APIC id of leaf 0xB when there is one, else the initial APIC
 * id of leaf 1 (EBX bits 31:24). */
static inline u32 my_apic_id(void)
{
    u32 r[4];
    cpuid(0, 0, r);
    if (r[0] >= 0xb) {
        cpuid(0xb, 0, r);
        if (r[1] != 0)
            return r[3];
    }
    cpuid(1, 0, r);
    return r[1] >> 24;
}

/* ---------------------------------------------------------------- memory */
static inline ureg gpa(const volatile void *p)
{
    return (ureg)(uptr)p;
}

/* Highest end of guest RAM from the memory map, 0 if unknown. */
static inline u64 ram_end(const struct hvm_start_info *si)
{
    return rt_ram_end(si);
}

/* Whether [addr, addr + len) is inside one RAM entry of the memory map. */
static inline bool is_ram(const struct hvm_start_info *si, u64 addr, u64 len)
{
    if (!si || si->version < 1 || !si->memmap_paddr)
        return false;
    const struct hvm_memmap_table_entry *e =
        (const struct hvm_memmap_table_entry *)(uptr)si->memmap_paddr;
    for (u32 i = 0; i < si->memmap_entries; i++)
        if (e[i].type == 1 && addr >= e[i].addr && addr + len <= e[i].addr + e[i].size)
            return true;
    return false;
}

/* ---------------------------------------------------------------- kvmclock */

/* pvclock_scale_delta (arch/x86/include/asm/pvclock.h): shift, then (delta * mul) >> 32,
 * written with 32x32 multiplies so the 32-bit flavour needs no libgcc. */
static inline u64 pvclock_scale(u64 delta, u32 mul, s8 shift)
{
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    u64 lo = (u64)(u32)delta * mul;
    u64 hi = (delta >> 32) * (u64)mul;
    return (lo >> 32) + hi;
}

static inline u64 rdtsc_ordered(void)
{
    __asm__ volatile("lfence" ::: "memory");
    return rdtsc();
}

/* ------------------------------------------------------------------ time */

/* The TSC frequency in kHz for timeouts and rate checks: cmdline tsc_khz=N (the host passes
 * KVM_GET_TSC_KHZ), else CPUID 0x15 (crystal * ratio), else CPUID 0x16 (base MHz), else 0. */
static inline u64 tsc_khz_known(const char **source)
{
    u64 khz = cmdline_get_u64("tsc_khz", 0);
    u32 r[4];
    const char *src = "cmdline tsc_khz";
    if (!khz) {
        cpuid(0, 0, r);
        u32 max = r[0];
        if (max >= 0x15) {
            cpuid(0x15, 0, r);
            if (r[0] && r[1] && r[2]) {
                u64 rem;
                khz = udiv64((u64)r[2] * r[1], (u64)r[0] * 1000, &rem);
                src = "CPUID 0x15";
            }
        }
        if (!khz && max >= 0x16) {
            cpuid(0x16, 0, r);
            khz = (u64)(r[0] & 0xffff) * 1000;
            src = "CPUID 0x16";
        }
    }
    if (source)
        *source = khz ? src : "unknown";
    return khz;
}

/* TSC ticks for `ms` milliseconds, for timeouts only: with an unknown frequency 3 GHz is
 * assumed (a slower TSC makes the wait longer, never shorter than asked on faster ones up to
 * 3 GHz). RDTSC may exit to the host here (~20 us), so loops bounded by time, not by a spin
 * count, stay short whatever an iteration costs. */
static inline u64 tsc_ticks_ms(u64 ms)
{
    static u64 khz;
    if (!khz) {
        khz = tsc_khz_known(NULL);
        if (!khz)
            khz = 3000000;
    }
    return ms * khz;
}

static inline u64 deadline_ms(u64 ms)
{
    return rdtsc() + tsc_ticks_ms(ms);
}

static inline bool past(u64 deadline)
{
    return rdtsc() >= deadline;
}

/* Reads kvmclock from a time-info page with the version protocol (msr.rst): retries while
 * the version is odd or changed. Optionally returns the TSC used and the flags. */
static inline u64 pvclock_read(const volatile struct pvclock_vcpu_time_info *p, u64 *tsc_out,
                               u8 *flags_out)
{
    u32 version;
    u64 tsc, t;
    u8 flags;
    do {
        version = p->version;
        __asm__ volatile("lfence" ::: "memory");
        tsc = rdtsc();
        t = p->system_time +
            pvclock_scale(tsc - p->tsc_timestamp, p->tsc_to_system_mul, p->tsc_shift);
        flags = p->flags;
        __asm__ volatile("lfence" ::: "memory");
    } while ((version & 1) || version != p->version);
    if (tsc_out)
        *tsc_out = tsc;
    if (flags_out)
        *flags_out = flags;
    return t;
}

/* kvmclock time at a given TSC, from a page known to be stable. */
static inline u64 pvclock_at(const volatile struct pvclock_vcpu_time_info *p, u64 tsc)
{
    return p->system_time +
           pvclock_scale(tsc - p->tsc_timestamp, p->tsc_to_system_mul, p->tsc_shift);
}

/* Busy-waits about `ns` nanoseconds of kvmclock time. */
static inline void pvclock_delay(const volatile struct pvclock_vcpu_time_info *p, u64 ns)
{
    u64 start = pvclock_read(p, NULL, NULL);
    while (pvclock_read(p, NULL, NULL) - start < ns)
        pause();
}

#endif
