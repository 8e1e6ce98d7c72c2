/* polyvisor test-guest runtime: declarations shared by the runtime's own files only. */
#ifndef RT_INTERNAL_H
#define RT_INTERNAL_H

#include "guest.h"

/* One per vCPU, see rt_layout.h. */
struct rt_vcpu_area {
    u8 bytes[RT_VCPU_AREA_SIZE];
};
extern struct rt_vcpu_area rt_vcpu_area[RT_MAX_VCPUS];

/* Pseudo-descriptor for lgdt/lidt. */
struct rt_desc_ptr {
    u16 limit;
    ureg base;
} __attribute__((packed));

/* isr*.S */
extern char rt_isr_stubs[]; /* 256 stubs, 16 bytes apart */
void rt_load_tables(const struct rt_desc_ptr *gdt, const struct rt_desc_ptr *idt, u16 tss_sel);
/* Saves callee-saved registers and flags, publishes a resume record in *slot (the previous
   value is restored on the way out), calls fn(arg) and stores its value in *result.
   Returns 0, or the code the trap handler put in the record when it unwound to it. */
int rt_unwind_call(ureg *slot, rt_fn_t fn, ureg arg, ureg *result);
/* fn for rt_unwind_call: iret to CPL 3 running ctx->fn(ctx->arg) on ctx->stack. */
struct rt_ring3_ctx {
    ureg fn;
    ureg arg;
    ureg stack;
};
ureg rt_ring3_enter(ureg ctx);
extern char rt_ring3_return[]; /* the trampoline's int $RT_RING3_RETURN_VECTOR */
ureg rt_hc_raw_vmcall(ureg regs);
ureg rt_hc_raw_vmmcall(ureg regs);
struct rt_hc_via_ctx {
    ureg regs;
    ureg target;
};
ureg rt_hc_raw_via(ureg ctx);

/* trap.c */
ureg rt_trap(struct trap_frame *f);
/* entry: called by the entry stubs on the vCPU's own kernel stack, interrupts off. */
__noreturn void rt_start(const struct hvm_start_info *si, unsigned vcpu);

/* lib.c */
void rt_console_init(void);

#endif
