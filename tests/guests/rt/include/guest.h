/*
 * polyvisor test-guest runtime: the public API for guest programs.
 *
 * A guest defines `int guest_main(const struct hvm_start_info *si)` (runs on vCPU 0, its
 * return value becomes the VM's exit status) and optionally
 * `void guest_ap_main(unsigned vcpu)` (runs on every other vCPU).
 * See tests/guests/README.md for the boot contract and the whole API.
 *
 * The same API exists in the 64-bit flavours (ELF64 direct, PVH -> long mode) and the
 * 32-bit flavour (PVH, protected mode). `ureg` is the native register width.
 * No system headers are used (the runtime is built with -nostdinc).
 */
#ifndef GUEST_H
#define GUEST_H

#include "rt_layout.h"

/* ---------------------------------------------------------------- types */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;
typedef unsigned long uptr;  /* pointer-sized (ILP32 and LP64) */
typedef unsigned long ureg;  /* native register width */
typedef long sreg;
typedef unsigned long size_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_end(ap) __builtin_va_end(ap)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define __aligned(n) __attribute__((aligned(n)))
#define __noreturn __attribute__((noreturn))
#define __weak __attribute__((weak))
#define __printf(a, b) __attribute__((format(printf, a, b)))

#if defined(__x86_64__)
#define RT_64BIT 1
#else
#define RT_64BIT 0
#endif

/* ------------------------------------------------- boot information (PVH) */
#define HVM_START_MAGIC 0x336ec578u /* "xEn3" */

/* PVH start info, version 1 (Xen public/arch-x86/hvm/start_info.h layout). */
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;   /* version >= 1 */
    u32 memmap_entries; /* version >= 1 */
    u32 reserved;
};

/* One entry of the memory map (memmap_paddr), E820 types (1 = RAM). */
struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

/* The highest end of RAM (E820 type 1) in the memory map of `si`; 0 if it has none. */
u64 rt_ram_end(const struct hvm_start_info *si);

/* Entry points the guest provides. */
int guest_main(const struct hvm_start_info *si);
void guest_ap_main(unsigned vcpu); /* weak default: sti; hlt forever */

/* Start info as given to the BSP (NULL if the magic was wrong). */
extern const struct hvm_start_info *rt_start_info;
/* Which entry path booted this image: RT_BOOT_ELF64 / RT_BOOT_PVH32 / RT_BOOT_PVH64. */
extern volatile u32 rt_boot_protocol;
/* The TSC vCPU 0 read at the image's first instructions (before the runtime's set-up). */
extern volatile u64 rt_start_tsc;
const char *rt_boot_protocol_name(void);

/* --------------------------------------------------------- port I/O, CPU */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }
/* Atomic "sti; hlt": an interrupt pending at the sti wakes the hlt. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline void cpuid(u32 leaf, u32 subleaf, u32 out[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf));
}
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
/* Raw MSR access: faults are NOT recovered (use rdmsr_safe / wrmsr_safe for that). */
static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline ureg read_flags(void)
{
    ureg f;
    __asm__ volatile("pushf; pop %0" : "=r"(f));
    return f;
}
static inline ureg read_sp(void)
{
    ureg sp;
    __asm__ volatile("mov %%esp, %k0" : "=r"(sp)); /* low 32 bits; stacks are below 4 GiB */
    return sp;
}
static inline unsigned current_cpl(void)
{
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3;
}
static inline ureg read_cr0(void) { ureg v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline ureg read_cr2(void) { ureg v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline ureg read_cr3(void) { ureg v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline ureg read_cr4(void) { ureg v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }

/* ------------------------------------------------------------- console */
/* Writes go to the debug port 0xE9 (default) and/or COM1 0x3F8 (cmdline console=e9|com1|both). */
void console_putc(char c);
void console_write(const char *s, size_t n);
void console_puts(const char *s); /* no newline added */
/* printf subset: %s %c %d %i %u %x %X %p %%, flags '-' '0', width, length l / ll / z.
   One call is written atomically with respect to other vCPUs (max 512 bytes per call). */
int gprintf(const char *fmt, ...) __printf(1, 2);
int gvprintf(const char *fmt, va_list ap);
int gsnprintf(char *buf, size_t size, const char *fmt, ...) __printf(3, 4);
int gvsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* Ends the VM: `out 0xF4, eax` with the status (the "test exit device"). */
__noreturn void exit_vm(u32 status);
/* Prints "PANIC: ..." and exits with RT_EXIT_PANIC (0xD0). */
__noreturn void panic(const char *fmt, ...) __printf(1, 2);
#define GUEST_ASSERT(cond)                                                                   \
    do {                                                                                     \
        if (!(cond))                                                                         \
            panic("assertion failed: %s (%s:%d)", #cond, __FILE__, __LINE__);               \
    } while (0)

/* -------------------------------------------------------------- checks */
/* One line per check: "<guest>: ok   <what>" or "<guest>: FAIL <what>: got X want Y".
   Each returns whether the check passed. check_summary() prints "<guest>: N ok, M failed"
   and returns the exit status: 0 when every check passed and at least one ran, else 1. */
bool check_eq(const char *what, u64 got, u64 want);            /* values, printed in hex */
bool check_true(const char *what, bool ok, const char *got_fmt, ...) __printf(3, 4);
bool check_fault(const char *what, int got_vector, int want_vector); /* 0 = no fault */
/* Free text: "<what>|<details>", the details (after the first '|', optional) printed only on
   failure ("FAIL <what>: <details>"), so that passing lines stay short. */
bool check(bool ok, const char *fmt, ...) __printf(2, 3);
u32 checks_passed_so_far(void);
u32 checks_failed_so_far(void);
int check_summary(void);
/* check_summary() with formatted text after "M failed" on the same line. */
int check_summary_with(const char *fmt, ...) __printf(1, 2);
/* Check lines go to `write` (whole lines, newline included) instead of the console while it
   returns true; false (or NULL) falls back to the console. */
typedef bool (*check_output_fn)(const char *line, size_t len);
void check_set_output(check_output_fn write);

/* ------------------------------------------------------------- strings */
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
/* 64-bit unsigned division that needs no libgcc (the 32-bit flavour has none). */
u64 udiv64(u64 n, u64 d, u64 *rem);
/* Parses decimal or 0x-hex; returns false if `s` is not entirely a number. */
bool parse_u64(const char *s, u64 *out);

/* ------------------------------------------------------------- cmdline */
/* The command line (start_info.cmdline_paddr), "" if none. */
const char *cmdline(void);
/* Finds `key=value` (or a bare `key`, value "") among space-separated words.
   Copies the value NUL-terminated into buf (truncated to len-1) and returns the full
   value length, or -1 if the key is absent. */
int cmdline_get(const char *key, char *buf, size_t len);
bool cmdline_has(const char *key);
/* Numeric value of key (decimal or 0x hex), or dflt if absent/invalid. */
u64 cmdline_get_u64(const char *key, u64 dflt);

/* ------------------------------------------- exceptions and interrupts */
/* What the last exception (vector 0..31) on a vCPU was. */
struct rt_fault {
    u32 vector;
    u32 cpl;    /* privilege level the fault came from */
    ureg ip;    /* RIP/EIP of the faulting instruction (or next one, for traps) */
    ureg error; /* error code, 0 for vectors without one */
    ureg cr2;   /* for #PF */
    u32 count;  /* total exceptions seen on this vCPU */
};

/* Per-vCPU runtime state (rt_cpus[vcpu]). */
struct rt_cpu {
    u32 index;
    volatile u32 online;
    volatile u32 vec_count[256]; /* every vector taken: exceptions, IRQs, software ints */
    volatile u32 last_vector;    /* last vector of any kind */
    volatile u32 last_irq;       /* last vector >= 32 (0 if none yet) */
    volatile u32 irq_total;      /* number of vectors >= 32 taken */
    struct rt_fault last_fault;
    /* internal: fault-recovery and ring-3 return records (see rt_unwind_call) */
    ureg try_slot;
    ureg ring3_slot;
    u32 in_fatal;
};
extern struct rt_cpu rt_cpus[RT_MAX_VCPUS];

/* Index of the vCPU running this code (derived from the stack pointer). */
unsigned this_vcpu(void);
static inline struct rt_cpu *this_cpu(void) { return &rt_cpus[this_vcpu()]; }
static inline u32 irq_count(unsigned vcpu, unsigned vector) { return rt_cpus[vcpu].vec_count[vector & 255]; }
const char *vector_name(unsigned vector); /* "#UD", "#GP", "IRQ" ... */

/* Register snapshot of an interrupted context (as pushed by the IDT stubs). */
#if RT_64BIT
struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error;
    u64 ip, cs, flags, sp, ss;
};
#else
struct trap_frame {
    u32 edi, esi, ebp, esp_unused, ebx, edx, ecx, eax; /* pusha */
    u32 vector, error;
    u32 ip, cs, flags;
    u32 sp, ss; /* only valid when cs & 3 == 3 */
};
#endif

/* Optional handler for a vector >= 32 (called after counting, before the automatic EOI). */
typedef void (*irq_handler_t)(struct trap_frame *f);
void set_irq_handler(unsigned vector, irq_handler_t fn);

/* Fault recovery: result codes are 0 = no fault, else the exception vector.
   Vector 0 (#DE) is reported as RT_FAULT_DE so that 0 always means "no fault". */
#define RT_FAULT_DE 256
typedef ureg (*rt_fn_t)(ureg arg);
/* Calls fn(arg) at CPL 0; any exception 0..31 raised inside (at any depth) unwinds back
   here and returns its vector (details in this_cpu()->last_fault). Nests.
   At CPL 3 it simply calls fn (a fault there ends the run_in_ring3() call). */
int try_call(rt_fn_t fn, ureg arg, ureg *result);
int rdmsr_safe(u32 msr, u64 *val);
int wrmsr_safe(u32 msr, u64 val);

/* APIC EOI per the cmdline option eoi=none|x2apic|xapic (default none):
   x2apic writes MSR 0x80B (falling back to xAPIC MMIO if the write faults),
   xapic writes 0 to 0xFEE000B0. Called automatically after every vector >= 32
   (except RT_RING3_RETURN_VECTOR) unless the mode is none. */
enum rt_eoi_mode { EOI_NONE = 0, EOI_X2APIC = 1, EOI_XAPIC = 2 };
extern volatile u32 rt_eoi_mode;
void apic_eoi(void);

/* ----------------------------------------------------------- hypercalls */
/* Every register is loaded from the struct before the instruction and stored back
   after it. The functions return 0, or the vector of the exception the call raised
   (e.g. VEC_UD) with registers left unchanged. At CPL 3 a fault instead ends the
   run_in_ring3() call with that vector. */
#if RT_64BIT
struct hc_regs {
    u64 rax, rbx, rcx, rdx, rsi, rdi, r8, r9, r10, r11;
};
#else
struct hc_regs {
    u32 eax, ebx, ecx, edx, esi, edi, ebp;
};
#endif
int hypercall_vmcall(struct hc_regs *r);  /* 0f 01 c1 */
int hypercall_vmmcall(struct hc_regs *r); /* 0f 01 d9 */
/* `call *target` with the registers loaded (hypercall pages: Xen page + 32*nr, Hyper-V page). */
int hypercall_via(const void *target, struct hc_regs *r);
/* Raw versions without fault recovery (a fault is fatal at CPL 0). */
void hypercall_vmcall_raw(struct hc_regs *r);
void hypercall_vmmcall_raw(struct hc_regs *r);
void hypercall_via_raw(const void *target, struct hc_regs *r);

/* --------------------------------------------------------------- ring 3 */
/* Runs fn(arg) at CPL 3 (own ring-3 code/data selectors, the vCPU's user stack, IOPL 3 so
   port I/O such as gprintf works, IF as in the caller) and comes back to CPL 0 through
   `int 0x80`. Returns 0 and *result = fn's return value, or the vector of the exception
   that ended the ring-3 run (details in this_cpu()->last_fault; RT_FAULT_DE for #DE). */
int run_in_ring3(rt_fn_t fn, ureg arg, ureg *result);

/* ------------------------------------------------------------------ SMP */
/* ap_ready[v] becomes 1 when vCPU v (v >= 1) has loaded the runtime's tables and is
   about to call guest_ap_main(v). */
extern volatile u32 ap_ready[RT_MAX_VCPUS];
/* Number of vCPUs that reached the runtime (including the BSP). */
unsigned vcpus_online(void);
/* Spins until `n` APs are ready or `max_spins` pause iterations passed;
   returns the number of ready APs. */
unsigned wait_for_aps(unsigned n, u64 max_spins);
/* Spins until *count reaches `want` or `max_spins` iterations passed; returns whether it
   did. A count that vCPU `vcpu`'s interrupt handler raises needs that vCPU's interrupts:
   when `vcpu` is this one, each spin opens an interrupt window (sti; pause; cli). */
bool wait_count(const volatile u32 *count, u32 want, unsigned vcpu, u64 max_spins);
/* Mailbox: an AP that runs ap_mailbox_loop() (e.g. from its guest_ap_main) executes
   functions posted with ap_call(). ap_call waits for completion (up to max_spins pauses)
   and returns 0 on success, -1 on timeout or a vCPU not running the loop. */
__noreturn void ap_mailbox_loop(void);
int ap_call(unsigned vcpu, rt_fn_t fn, ureg arg, ureg *result, u64 max_spins);

#endif
