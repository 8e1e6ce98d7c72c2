/* xen_hc.h: what the Xen test guests (xen_*.c) share: the Xen public-interface numbers and
 * structures they use, leaf discovery and a hypercall wrapper that goes through the hypercall
 * page or a raw VMCALL/VMMCALL. Structures are written with C types that give Xen's native
 * layout in the 64-bit flavours and its compat layout in the 32-bit one (4-byte `unsigned
 * long` and pointers, 4-byte-aligned `u64`), as the headers do. Sources: xen-project/xen
 * xen/include/public/{xen.h,version.h,sched.h,memory.h,hvm/hvm_op.h,hvm/params.h,vcpu.h,
 * errno.h,arch-x86/cpuid.h}. The guests run identity-mapped (or with paging off), so a
 * pointer is both the linear and the physical address, except where xen_abi maps pages at a
 * high virtual address on purpose (hypercall pointers are linear addresses).
 */
#ifndef XEN_HC_H
#define XEN_HC_H

#include "guest.h"

/* xen.h */
#define __HYPERVISOR_memory_op 12
#define __HYPERVISOR_set_timer_op 15
#define __HYPERVISOR_xen_version 17
#define __HYPERVISOR_console_io 18
#define __HYPERVISOR_iret 23
#define __HYPERVISOR_vcpu_op 24
#define __HYPERVISOR_sched_op 29
#define __HYPERVISOR_event_channel_op 32
#define __HYPERVISOR_hvm_op 34
#define DOMID_SELF 0x7ff0
#define CONSOLEIO_write 0
#define CONSOLEIO_read 1

/* errno.h */
#define XEN_EPERM 1
#define XEN_ENOENT 2
#define XEN_ESRCH 3
#define XEN_ENXIO 6
#define XEN_E2BIG 7
#define XEN_EACCES 13
#define XEN_EFAULT 14
#define XEN_EBUSY 16
#define XEN_EEXIST 17
#define XEN_ENODEV 19
#define XEN_EINVAL 22
#define XEN_EDOM 33
#define XEN_ENOSYS 38
#define XEN_ETIME 62
#define XEN_EOPNOTSUPP 95
#define XEN_ENOBUFS 105

/* version.h */
#define XENVER_version 0
#define XENVER_extraversion 1
#define XENVER_compile_info 2
#define XENVER_capabilities 3
#define XENVER_changeset 4
#define XENVER_platform_parameters 5
#define XENVER_get_features 6
#define XENVER_pagesize 7
#define XENVER_guest_handle 8
#define XENVER_commandline 9
#define XENVER_build_id 10
#define XENVER_extraversion2 11
#define XENVER_capabilities2 12
#define XENVER_changeset2 13
#define XENVER_commandline2 14
struct xen_feature_info {
    u32 submap_idx;
    u32 submap;
};
struct xen_compile_info {
    char compiler[64];
    char compile_by[16];
    char compile_domain[32];
    char compile_date[32];
};
#define XENFEAT_writable_page_tables 0
#define XENFEAT_auto_translated_physmap 2
#define XENFEAT_hvm_callback_vector 8
#define XENFEAT_hvm_safe_pvclock 9
#define XENFEAT_not_direct_mapped 16

/* sched.h */
#define SCHEDOP_yield 0
#define SCHEDOP_block 1
#define SCHEDOP_shutdown 2
#define SCHEDOP_poll 3
#define SCHEDOP_remote_shutdown 4
#define SCHEDOP_shutdown_code 5
#define SHUTDOWN_poweroff 0
#define SHUTDOWN_reboot 1
#define SHUTDOWN_suspend 2
#define SHUTDOWN_crash 3
#define SHUTDOWN_watchdog 4
#define SHUTDOWN_soft_reset 5
struct sched_shutdown {
    u32 reason;
};
struct sched_poll {
    u32 *ports; /* XEN_GUEST_HANDLE(evtchn_port_t) */
    unsigned int nr_ports;
    u64 timeout;
};

/* memory.h */
#define XENMEM_maximum_ram_page 2
#define XENMEM_current_reservation 3
#define XENMEM_maximum_reservation 4
#define XENMEM_add_to_physmap 7
#define XENMEM_memory_map 9
#define XENMEM_maximum_gpfn 14
#define XENMAPSPACE_shared_info 0
struct xen_add_to_physmap {
    u16 domid;
    u16 size;
    unsigned int space;
    unsigned long idx;  /* xen_ulong_t */
    unsigned long gpfn; /* xen_pfn_t */
};
struct xen_memory_map {
    unsigned int nr_entries;
    void *buffer;
};
struct e820entry {
    u64 addr;
    u64 size;
    u32 type;
} __attribute__((packed));

/* hvm/hvm_op.h, hvm/params.h */
#define HVMOP_set_param 0
#define HVMOP_get_param 1
#define HVMOP_get_time 10
#define HVMOP_set_evtchn_upcall_vector 23
struct xen_hvm_param {
    u16 domid;
    u16 pad;
    u32 index;
    u64 value;
};
struct xen_hvm_evtchn_upcall_vector {
    u32 vcpu;
    u8 vector;
};
#define HVM_PARAM_CALLBACK_IRQ 0
#define HVM_PARAM_STORE_PFN 1
#define HVM_PARAM_STORE_EVTCHN 2
#define HVM_PARAM_CONSOLE_PFN 17
#define HVM_PARAM_CONSOLE_EVTCHN 18
#define HVM_NR_PARAMS 39

/* vcpu.h */
#define VCPUOP_up 1
#define VCPUOP_is_up 3
#define VCPUOP_set_singleshot_timer 8
#define VCPUOP_stop_singleshot_timer 9
#define VCPUOP_register_vcpu_info 10
#define VCPU_SSHOTTMR_future 1
struct vcpu_register_vcpu_info {
    u64 mfn;
    u32 offset;
    u32 rsvd;
};
struct vcpu_set_singleshot_timer {
    u64 timeout_abs_ns;
    u32 flags;
};

/* xen.h: shared_info and vcpu_info (x86) */
struct vcpu_time_info {
    u32 version;
    u32 pad0;
    u64 tsc_timestamp;
    u64 system_time;
    u32 tsc_to_system_mul;
    s8 tsc_shift;
    u8 flags;
    u8 pad1[2];
};
struct vcpu_info {
    u8 evtchn_upcall_pending;
    u8 evtchn_upcall_mask;
    unsigned long evtchn_pending_sel;
#if RT_64BIT
    unsigned long arch_cr2, arch_pad;
#else
    unsigned long arch_cr2, arch_pad[5];
#endif
    struct vcpu_time_info time;
};
struct shared_info {
    struct vcpu_info vcpu_info[32];
    unsigned long evtchn_pending[sizeof(unsigned long) * 8];
    unsigned long evtchn_mask[sizeof(unsigned long) * 8];
    u32 wc_version;
    u32 wc_sec;
    u32 wc_nsec;
#if RT_64BIT
    u32 wc_sec_hi;
#endif
};

/* The native (64-bit) and compat (32-bit) sizes the personality expects. */
#define XEN_SIZE(native, compat) (RT_64BIT ? (native) : (compat))
_Static_assert(sizeof(struct sched_poll) == XEN_SIZE(24, 16), "sched_poll");
_Static_assert(sizeof(struct xen_add_to_physmap) == XEN_SIZE(24, 16), "xen_add_to_physmap");
_Static_assert(sizeof(struct xen_memory_map) == XEN_SIZE(16, 8), "xen_memory_map");
_Static_assert(sizeof(struct vcpu_set_singleshot_timer) == XEN_SIZE(16, 12), "singleshot");
_Static_assert(sizeof(struct xen_hvm_param) == 16, "xen_hvm_param");
_Static_assert(sizeof(struct xen_hvm_evtchn_upcall_vector) == 8, "upcall_vector");
_Static_assert(sizeof(struct e820entry) == 20, "e820entry");
_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info");
_Static_assert(__builtin_offsetof(struct shared_info, wc_version) == XEN_SIZE(3072, 2304),
               "shared_info.wc_version");

/* arch-x86/cpuid.h */
#define XEN_HVM_CPUID_VCPU_ID_PRESENT (1u << 3)
#define XEN_HVM_CPUID_DOMID_PRESENT (1u << 4)

/* ------------------------------------------------------------ discovery */

/* The Xen leaf base, scanning like Linux's xen_cpuid_base(); 0 if none. */
static inline u32 xen_cpuid_base(void)
{
    for (u32 base = 0x40000000; base < 0x40010000; base += 0x100) {
        u32 r[4];
        cpuid(base, 0, r);
        if (r[1] == 0x566e6558 && r[2] == 0x65584d4d && r[3] == 0x4d4d566e &&
            r[0] - base >= 2)
            return base;
    }
    return 0;
}

/* ------------------------------------------------------------ hypercalls */

enum xen_via { XEN_VIA_PAGE, XEN_VIA_VMCALL, XEN_VIA_VMMCALL };

static u8 xen_hypercall_page[4096] __aligned(4096);
static enum xen_via xen_via = XEN_VIA_VMCALL;

/* A fault instead of an answer is reported as this value minus the vector. */
#define XEN_FAULTED (-10000L)

/* A hypercall with up to five arguments at CPL 0; returns RAX (EAX sign-extended), or
   XEN_FAULTED - vector when the instruction faulted. */
static inline long xen_hypercall(ureg nr, ureg a1, ureg a2, ureg a3, ureg a4, ureg a5)
{
    struct hc_regs r;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rax = nr;
    r.rdi = a1;
    r.rsi = a2;
    r.rdx = a3;
    r.r10 = a4;
    r.r8 = a5;
#else
    r.eax = nr;
    r.ebx = a1;
    r.ecx = a2;
    r.edx = a3;
    r.esi = a4;
    r.edi = a5;
#endif
    int vec;
    if (xen_via == XEN_VIA_PAGE && nr < 128)
        vec = hypercall_via(xen_hypercall_page + nr * 32, &r);
    else if (xen_via == XEN_VIA_VMMCALL)
        vec = hypercall_vmmcall(&r);
    else
        vec = hypercall_vmcall(&r);
    if (vec)
        return XEN_FAULTED - vec;
#if RT_64BIT
    return (long)r.rax;
#else
    return (long)(s32)r.eax;
#endif
}

#define HC2(nr, a, b) xen_hypercall(nr, (ureg)(a), (ureg)(b), 0, 0, 0)
#define HC3(nr, a, b, c) xen_hypercall(nr, (ureg)(a), (ureg)(b), (ureg)(c), 0, 0)
#define PTR(p) ((ureg)(uptr)(p))

/* The instruction for code that must issue its own hypercall instruction (an `sti` right
   before it): the raw one named by xen_via, or for the page the instruction written in it. */
static inline enum xen_via xen_raw_insn(void)
{
    if (xen_via != XEN_VIA_PAGE)
        return xen_via;
    return xen_hypercall_page[7] == 0xd9 ? XEN_VIA_VMMCALL : XEN_VIA_VMCALL;
}

/* `sti` immediately followed by the hypercall instruction, then `cli`: the call starts with
   interrupts enabled but none can be taken before it (the STI shadow), as `sti; hlt`. For
   SCHEDOP_block and an untimed SCHEDOP_poll, which must wake on an interrupt. */
static inline long xen_sti_hypercall2(ureg nr, ureg a1, ureg a2)
{
    ureg ax = nr;
#if RT_64BIT
    if (xen_raw_insn() == XEN_VIA_VMMCALL)
        __asm__ volatile("sti; vmmcall; cli" : "+a"(ax) : "D"(a1), "S"(a2) : "memory", "cc");
    else
        __asm__ volatile("sti; vmcall; cli" : "+a"(ax) : "D"(a1), "S"(a2) : "memory", "cc");
    return (long)ax;
#else
    if (xen_raw_insn() == XEN_VIA_VMMCALL)
        __asm__ volatile("sti; vmmcall; cli" : "+a"(ax) : "b"(a1), "c"(a2) : "memory", "cc");
    else
        __asm__ volatile("sti; vmcall; cli" : "+a"(ax) : "b"(a1), "c"(a2) : "memory", "cc");
    return (long)(s32)ax;
#endif
}

/* ------------------------------------------------------------------ time */

/* The guest TSC rate Xen's time leaf reports (base+3.0 ECX), kHz; 0 if none. */
static inline u32 xen_tsc_khz(void)
{
    u32 r[4];
    cpuid(0x40000003, 0, r);
    return r[2];
}

/* Microseconds in `ticks` of a `khz` TSC. */
static inline u64 tsc_to_us(u64 ticks, u32 khz)
{
    return khz ? udiv64(ticks * 1000, khz, NULL) : 0;
}

/* pvclock scaling (Xen's scale_delta): ((delta << shift) * mul) >> 32. */
static inline u64 xen_scale_delta(u64 delta, u32 mul, s8 shift)
{
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    u64 lo = (delta & 0xffffffffull) * mul;
    u64 hi = (delta >> 32) * mul;
    return hi + (lo >> 32);
}

/* The CPU's own hypercall instruction: VMMCALL on AMD and Hygon, VMCALL elsewhere. */
static inline enum xen_via xen_native_insn(void)
{
    static enum xen_via known;
    static bool done;
    if (done)
        return known;
    u32 r[4];
    cpuid(0, 0, r);
    bool amd = (r[1] == 0x68747541 && r[3] == 0x69746e65 && r[2] == 0x444d4163) || /* AuthenticAMD */
               (r[1] == 0x6f677948 && r[3] == 0x6e65476e && r[2] == 0x656e6975);   /* HygonGenuine */
    known = amd ? XEN_VIA_VMMCALL : XEN_VIA_VMCALL;
    done = true;
    return known;
}

/* ------------------------------------------------------------------ checks */

/* The runtime's check() prints the lines and counts them (guest.h); these name its counts. */
#define xen_passed checks_passed_so_far()
#define xen_failed checks_failed_so_far()

static inline long xen_console_write(const char *s, unsigned n)
{
    struct hc_regs r;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rax = __HYPERVISOR_console_io;
    r.rdi = CONSOLEIO_write;
    r.rsi = n;
    r.rdx = PTR(s);
#else
    r.eax = __HYPERVISOR_console_io;
    r.ebx = CONSOLEIO_write;
    r.ecx = n;
    r.edx = PTR(s);
#endif
    int vec = xen_native_insn() == XEN_VIA_VMMCALL ? hypercall_vmmcall(&r) : hypercall_vmcall(&r);
    if (vec)
        return -1;
#if RT_64BIT
    return (long)r.rax;
#else
    return (long)(s32)r.eax;
#endif
}

/* A check_set_output() writer for when console_io is expected to work: check lines go out with
   CONSOLEIO_write through the CPU's own instruction, one hypercall per line instead of one
   port write per byte, as a Xen guest's console does; a refused write falls back to the port. */
static inline bool xen_check_write(const char *line, size_t n)
{
    return xen_console_write(line, (unsigned)n) == 0;
}

/* Checks that a call answered `want` (a value or -XEN_Exxx). */
#define EXPECT(call, want, ...)                                                              \
    do {                                                                                     \
        long got_ = (call);                                                                  \
        long want_ = (long)(want);                                                           \
        char what_[160];                                                                     \
        gsnprintf(what_, sizeof what_, __VA_ARGS__);                                         \
        check(got_ == want_, "%s -> %ld (got %ld)", what_, want_, got_);                     \
    } while (0)

#endif
