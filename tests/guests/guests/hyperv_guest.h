/* hyperv_guest.h: what the Hyper-V test guests share (hyperv_features.c, hyperv_linux.c):
 * TLFS constants (Linux include/hyperv/hvgdk_mini.h names), the configuration read from
 * CPUID 0x40000003/0x40000004, one-line checks and the hypercall wrappers for both register
 * conventions (64-bit RCX/RDX/R8, 32-bit EDX:EAX/EBX:ECX/EDI:ESI).
 */
#ifndef HYPERV_GUEST_H
#define HYPERV_GUEST_H

#include "guest.h"

/* ------------------------------------------------------------ synthetic MSRs */
#define HV_X64_MSR_GUEST_OS_ID 0x40000000u
#define HV_X64_MSR_HYPERCALL 0x40000001u
#define HV_X64_MSR_VP_INDEX 0x40000002u
#define HV_X64_MSR_RESET 0x40000003u
#define HV_X64_MSR_VP_RUNTIME 0x40000010u
#define HV_X64_MSR_TIME_REF_COUNT 0x40000020u
#define HV_X64_MSR_REFERENCE_TSC 0x40000021u
#define HV_X64_MSR_TSC_FREQUENCY 0x40000022u
#define HV_X64_MSR_APIC_FREQUENCY 0x40000023u
#define HV_X64_MSR_EOI 0x40000070u
#define HV_X64_MSR_ICR 0x40000071u
#define HV_X64_MSR_TPR 0x40000072u
#define HV_X64_MSR_VP_ASSIST_PAGE 0x40000073u
#define HV_X64_MSR_SCONTROL 0x40000080u
#define HV_X64_MSR_SVERSION 0x40000081u
#define HV_X64_MSR_SIEFP 0x40000082u
#define HV_X64_MSR_SIMP 0x40000083u
#define HV_X64_MSR_EOM 0x40000084u
#define HV_X64_MSR_SINT0 0x40000090u
#define HV_X64_MSR_SINT15 0x4000009fu
#define HV_X64_MSR_STIMER0_CONFIG 0x400000b0u
#define HV_X64_MSR_STIMER3_COUNT 0x400000b7u
#define HV_X64_MSR_SYNDBG_CONTROL 0x400000f1u
#define HV_X64_MSR_SYNDBG_OPTIONS 0x400000ffu
#define HV_X64_MSR_CRASH_P0 0x40000100u
#define HV_X64_MSR_CRASH_P4 0x40000104u
#define HV_X64_MSR_CRASH_CTL 0x40000105u
#define HV_X64_MSR_TSC_INVARIANT_CONTROL 0x40000118u

#define HV_X64_MSR_HYPERCALL_ENABLE 1ull
#define HV_X64_MSR_HYPERCALL_LOCKED 2ull
#define HV_CRASH_CTL_CRASH_NOTIFY (1ull << 63)

/* ------------------------------------------------------------ hypercalls */
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE 0x0002
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST 0x0003
#define HVCALL_NOTIFY_LONG_SPIN_WAIT 0x0008
#define HVCALL_SEND_IPI 0x000b
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX 0x0013
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX 0x0014
#define HVCALL_SEND_IPI_EX 0x0015
#define HVCALL_POST_MESSAGE 0x005c
#define HVCALL_SIGNAL_EVENT 0x005d
#define HVCALL_POST_DEBUG_DATA 0x0069
#define HVCALL_RETRIEVE_DEBUG_DATA 0x006a
#define HVCALL_RESET_DEBUG_SESSION 0x006b
#define HV_EXT_CALL_QUERY_CAPABILITIES 0x8001

#define HV_HYPERCALL_FAST_BIT (1ull << 16)
#define HV_HYPERCALL_VARHEAD(n) ((u64)(n) << 17)
#define HV_HYPERCALL_REP_COUNT(n) ((u64)(n) << 32)
#define HV_HYPERCALL_REP_START(n) ((u64)(n) << 48)

#define HV_FLUSH_ALL_PROCESSORS 1ull
#define HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES 2ull
#define HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY 4ull
#define HV_FLUSH_USE_EXTENDED_RANGE_FORMAT 8ull
#define HV_GENERIC_SET_SPARSE_4K 0ull
#define HV_GENERIC_SET_ALL 1ull

/* ------------------------------------------------------------ status codes */
#define HV_STATUS_SUCCESS 0
#define HV_STATUS_INVALID_HYPERCALL_CODE 2
#define HV_STATUS_INVALID_HYPERCALL_INPUT 3
#define HV_STATUS_INVALID_ALIGNMENT 4
#define HV_STATUS_INVALID_PARAMETER 5
#define HV_STATUS_ACCESS_DENIED 6
#define HV_STATUS_OPERATION_DENIED 8
#define HV_STATUS_INSUFFICIENT_BUFFERS 0x13
#define HV_STATUS_NO_DATA 0x1b

/* ------------------------------------------------------------ CPUID bits */
/* Privileges, 0x40000003 EBX:EAX as one 64-bit mask (bit 32 = EBX bit 0). */
#define P_VP_RUNTIME 0
#define P_TIME_REF_COUNT 1
#define P_SYNIC 2
#define P_STIMER 3
#define P_APIC_MSRS 4
#define P_HYPERCALL 5
#define P_VP_INDEX 6
#define P_RESET 7
#define P_REFERENCE_TSC 9
#define P_FREQUENCY 11
#define P_POST_MESSAGES 36
#define P_SIGNAL_EVENTS 37
#define P_DEBUGGING 43
#define P_EXTENDED_HYPERCALLS 52
/* Features, 0x40000003 EDX. */
#define F_GUEST_DEBUGGING 1
#define F_XMM_INPUT 4
#define F_FREQUENCY_MSRS 8
#define F_CRASH_MSRS 10
#define F_EXT_GVA_RANGES 14
#define F_HYPERCALL_LOCK 18
/* Recommendations, 0x40000004 EAX. */
#define R_REMOTE_FLUSH 2
#define R_RELAXED_TIMING 5
#define R_CLUSTER_IPI 10
#define R_EX_PROCESSOR_MASKS 11

/* Linux's guest OS id: open source (bit 63), Linux (0x01 << 56), version in bits 31:16. */
#define LINUX_OS_ID ((0x8100ull << 48) | (0x060c00ull << 16))

/* ------------------------------------------------------------ the configuration */
struct hv_cfg {
    u32 max_leaf;
    u64 priv;
    u32 features, recommendations, spin_retries, max_vp;
};
static struct hv_cfg cfg;

static inline void read_cfg(void)
{
    u32 r[4];
    cpuid(0x40000000, 0, r);
    cfg.max_leaf = r[0];
    cpuid(0x40000003, 0, r);
    cfg.priv = ((u64)r[1] << 32) | r[0];
    cfg.features = r[3];
    cpuid(0x40000004, 0, r);
    cfg.recommendations = r[0];
    cfg.spin_retries = r[1];
    cpuid(0x40000005, 0, r);
    cfg.max_vp = r[0];
}

static inline bool has_priv(unsigned bit) { return (cfg.priv >> bit) & 1; }
static inline bool has_feature(unsigned bit) { return (cfg.features >> bit) & 1; }
static inline bool recommends(unsigned bit) { return (cfg.recommendations >> bit) & 1; }

/* AMD and Hygon use VMMCALL, the others VMCALL: what the hypercall page should hold. */
static inline bool amd_like(void)
{
    u32 r[4];
    cpuid(0, 0, r);
    return r[1] == 0x68747541 /* "Auth" */ || r[1] == 0x6f677948 /* "Hygo" */;
}

/* ------------------------------------------------------------ checks */
static inline void info(const char *fmt, ...) __printf(1, 2);
static inline void info(const char *fmt, ...)
{
    char line[320];
    va_list ap;
    va_start(ap, fmt);
    gvsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    gprintf("%s: info %s\n", GUEST_NAME, line);
}

static inline u64 gpa(const volatile void *p) { return (u64)(uptr)p; }

static inline const char *vec_name(int v)
{
    switch (v) {
    case 0:
        return "no fault";
    case VEC_UD:
        return "#UD";
    case VEC_GP:
        return "#GP";
    default:
        return "another fault";
    }
}

/* ------------------------------------------------------------ hypercalls */
/* What a hypercall did: the fault vector (0 = none), the result value, and whether every
 * register other than the result (and, in 64-bit mode, RCX) came back unchanged. */
struct answer {
    int vec;
    u64 value;
    bool others_kept;
    u64 control_after; /* RCX (64-bit) or EDX:EAX (32-bit) after the call */
};

static inline u16 status_of(struct answer a) { return (u16)(a.value & 0xffff); }
static inline u32 reps_of(struct answer a) { return (u32)(a.value >> 32) & 0xfff; }

enum via { VIA_PAGE, VIA_VMCALL, VIA_VMMCALL };

/* The hypercall page in use (set by the program). */
static const volatile void *hc_page_at;

static inline struct answer hv_call_via(enum via how, u64 control, u64 in, u64 out)
{
    struct hc_regs r, before;
    struct answer a;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rcx = control;
    r.rdx = in;
    r.r8 = out;
    r.rbx = 0xb0b0b0b0b0b0b0b0ull;
    r.rsi = 0x5151515151515151ull;
    r.rdi = 0xd1d1d1d1d1d1d1d1ull;
    r.r9 = 0x9999999999999999ull;
    r.r10 = 0x1010101010101010ull;
    r.r11 = 0x1111111111111111ull;
#else
    r.edx = (u32)(control >> 32);
    r.eax = (u32)control;
    r.ebx = (u32)(in >> 32);
    r.ecx = (u32)in;
    r.edi = (u32)(out >> 32);
    r.esi = (u32)out;
    r.ebp = 0xb9b9b9b9u;
#endif
    before = r;
    if (how == VIA_PAGE)
        a.vec = hypercall_via((const void *)hc_page_at, &r);
    else if (how == VIA_VMCALL)
        a.vec = hypercall_vmcall(&r);
    else
        a.vec = hypercall_vmmcall(&r);
#if RT_64BIT
    a.value = r.rax;
    a.control_after = r.rcx;
    a.others_kept = r.rbx == before.rbx && r.rdx == before.rdx && r.rsi == before.rsi &&
                    r.rdi == before.rdi && r.r8 == before.r8 && r.r9 == before.r9 &&
                    r.r10 == before.r10 && r.r11 == before.r11;
#else
    a.value = ((u64)r.edx << 32) | r.eax;
    a.control_after = a.value;
    a.others_kept = r.ebx == before.ebx && r.ecx == before.ecx && r.esi == before.esi &&
                    r.edi == before.edi && r.ebp == before.ebp;
#endif
    return a;
}

static inline struct answer hv_call(u64 control, u64 in, u64 out)
{
    return hv_call_via(VIA_PAGE, control, in, out);
}

/* ------------------------------------------------------------ XMM registers */
/* XMM fast input needs SSE: CR4.OSFXSR, CR0.EM clear. */
static inline void enable_sse(void)
{
    ureg cr0 = read_cr0(), cr4 = read_cr4();
    cr0 = (cr0 & ~(ureg)4) | 2;         /* EM off, MP on */
    cr4 |= (ureg)(1u << 9) | (1u << 10); /* OSFXSR, OSXMMEXCPT */
    __asm__ volatile("mov %0, %%cr0" ::"r"(cr0) : "memory");
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr4) : "memory");
}

/* Loads XMM0..XMM5 from 12 quadwords (low half first). The runtime is built with
 * -mgeneral-regs-only, so nothing else touches these registers between here and a call. */
static inline void set_xmm(const u64 q[12])
{
    __asm__ volatile("movdqu 0(%0), %%xmm0\n\t"
                     "movdqu 16(%0), %%xmm1\n\t"
                     "movdqu 32(%0), %%xmm2\n\t"
                     "movdqu 48(%0), %%xmm3\n\t"
                     "movdqu 64(%0), %%xmm4\n\t"
                     "movdqu 80(%0), %%xmm5\n\t" ::"r"(q)
                     : "memory");
}

/* ------------------------------------------------------------ the reference TSC page */
struct tsc_page {
    volatile u32 sequence;
    u32 reserved;
    volatile u64 scale;
    volatile s64 offset;
};

/* (a * b) >> 64 without 128-bit arithmetic (the 32-bit flavour has none). */
static inline u64 mul_hi64(u64 a, u64 b)
{
    u64 a_lo = a & 0xffffffffu, a_hi = a >> 32, b_lo = b & 0xffffffffu, b_hi = b >> 32;
    u64 lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
    u64 mid = (lo_lo >> 32) + (hi_lo & 0xffffffffu) + (lo_hi & 0xffffffffu);
    return hi_hi + (hi_lo >> 32) + (lo_hi >> 32) + (mid >> 32);
}

/* Linux's hv_read_tsc_page_tsc(): the time in 100 ns units from the page and a TSC value,
 * retrying while the sequence changes; false when the sequence says "use the MSR". */
static inline bool tsc_page_time(const struct tsc_page *p, u64 tsc, u64 *time)
{
    for (;;) {
        u32 seq = p->sequence;
        if (seq == 0)
            return false;
        barrier();
        u64 scale = p->scale;
        s64 offset = p->offset;
        barrier();
        if (p->sequence == seq) {
            *time = mul_hi64(tsc, scale) + (u64)offset;
            return true;
        }
    }
}

#endif
