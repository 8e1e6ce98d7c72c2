/* polyvisor test-guest runtime, 64-bit: IDT stubs, unwinding, ring 3, hypercall stubs. */
#include "rt_layout.h"

    .code64
    .text

/* ------------------------------------------------------------- IDT stubs */
/* Vectors that push an error code: 8, 10-14, 17, 21, 29, 30. */
.macro ISR vec
    .balign 16
    .if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq $0
    .endif
    pushq $\vec
    jmp rt_isr_common
.endm

    .balign 16
    .globl rt_isr_stubs
rt_isr_stubs:
    .altmacro
    .set vec, 0
    .rept 256
    ISR %vec
    .set vec, vec + 1
    .endr
    .noaltmacro

rt_isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    movq %rsp, %rbx
    andq $-16, %rsp
    call rt_trap
    movq %rbx, %rsp
    testq %rax, %rax
    jnz 1f
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
1:  /* unwind to the resume record in %rax (see rt_unwind_call) */
    movq %rax, %rsp
    movl $RT_SEL_KDATA, %eax
    movl %eax, %ss
    movl %eax, %ds
    movl %eax, %es
    jmp rt_unwind_resume

/* ---------------------------------------------------------------- unwind */
/* int rt_unwind_call(ureg *slot, rt_fn_t fn, ureg arg, ureg *result)
 * Resume record (at the stack pointer stored in *slot):
 *   [0] code  [1] result ptr  [2] slot  [3] previous *slot  [4] rflags
 *   [5..10] r15 r14 r13 r12 rbp rbx  [11] return address */
    .globl rt_unwind_call
rt_unwind_call:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushfq
    pushq (%rdi)
    pushq %rdi
    pushq %rcx
    pushq $0
    movq %rsp, (%rdi)
    movq %rsi, %rax
    movq %rdx, %rdi
    call *%rax
    movq 8(%rsp), %rcx
    testq %rcx, %rcx
    jz 1f
    movq %rax, (%rcx)
1:  movq $0, (%rsp)
    .globl rt_unwind_resume
rt_unwind_resume:
    popq %rax           /* code */
    popq %rcx           /* result ptr */
    popq %rdi           /* slot */
    popq %rsi           /* previous value */
    movq %rsi, (%rdi)
    popfq
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret

/* ---------------------------------------------------------------- ring 3 */
/* ureg rt_ring3_enter(struct rt_ring3_ctx *ctx): never returns normally; the ring-3
 * trampoline ends with int $RT_RING3_RETURN_VECTOR, whose handler unwinds. */
    .globl rt_ring3_enter
rt_ring3_enter:
    movq 16(%rdi), %rax     /* user stack top */
    pushq $RT_SEL_UDATA     /* ss */
    pushq %rax              /* rsp */
    pushfq
    orq $0x3000, (%rsp)     /* IOPL 3: ring-3 code may use port I/O (console) */
    pushq $RT_SEL_UCODE     /* cs */
    leaq rt_ring3_tramp(%rip), %rax
    pushq %rax              /* rip */
    movq 8(%rdi), %rsi      /* arg */
    movq 0(%rdi), %rdx      /* fn */
    iretq

rt_ring3_tramp:             /* CPL 3 */
    movq %rsi, %rdi
    call *%rdx
    .globl rt_ring3_return
rt_ring3_return:
    int $RT_RING3_RETURN_VECTOR
    ud2

/* ------------------------------------------------------------- hypercalls */
/* struct hc_regs { rax, rbx, rcx, rdx, rsi, rdi, r8, r9, r10, r11 } */
.macro HC_LOAD
    movq 0(%rdi), %rax
    movq 8(%rdi), %rbx
    movq 16(%rdi), %rcx
    movq 24(%rdi), %rdx
    movq 32(%rdi), %rsi
    movq 48(%rdi), %r8
    movq 56(%rdi), %r9
    movq 64(%rdi), %r10
    movq 72(%rdi), %r11
    movq 40(%rdi), %rdi
.endm

/* expects (%rsp) = regs pointer; leaves the output rdi popped */
.macro HC_STORE
    xchgq %rdi, (%rsp)
    movq %rax, 0(%rdi)
    movq %rbx, 8(%rdi)
    movq %rcx, 16(%rdi)
    movq %rdx, 24(%rdi)
    movq %rsi, 32(%rdi)
    movq %r8, 48(%rdi)
    movq %r9, 56(%rdi)
    movq %r10, 64(%rdi)
    movq %r11, 72(%rdi)
    popq %rax
    movq %rax, 40(%rdi)
.endm

.macro SAVE_CALLEE
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
.endm

.macro RESTORE_CALLEE
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
.endm

/* ureg rt_hc_raw_vmcall(struct hc_regs *r) */
    .globl rt_hc_raw_vmcall
rt_hc_raw_vmcall:
    SAVE_CALLEE
    pushq %rdi
    HC_LOAD
    .byte 0x0f, 0x01, 0xc1  /* vmcall */
    HC_STORE
    RESTORE_CALLEE
    xorl %eax, %eax
    ret

/* ureg rt_hc_raw_vmmcall(struct hc_regs *r) */
    .globl rt_hc_raw_vmmcall
rt_hc_raw_vmmcall:
    SAVE_CALLEE
    pushq %rdi
    HC_LOAD
    .byte 0x0f, 0x01, 0xd9  /* vmmcall */
    HC_STORE
    RESTORE_CALLEE
    xorl %eax, %eax
    ret

/* ureg rt_hc_raw_via(struct rt_hc_via_ctx *c): c->regs, c->target */
    .globl rt_hc_raw_via
rt_hc_raw_via:
    SAVE_CALLEE
    subq $8, %rsp           /* keep the callee's stack 16-byte aligned */
    pushq 8(%rdi)           /* target, at 8(%rsp) below */
    movq 0(%rdi), %rdi
    pushq %rdi              /* regs pointer */
    HC_LOAD
    call *8(%rsp)
    HC_STORE
    addq $16, %rsp
    RESTORE_CALLEE
    xorl %eax, %eax
    ret

/* ---------------------------------------------------------------- tables */
/* void rt_load_tables(gdt_ptr, idt_ptr, u16 tss_sel) */
    .globl rt_load_tables
rt_load_tables:
    lgdt (%rdi)
    lidt (%rsi)
    pushq $RT_SEL_KCODE
    leaq 1f(%rip), %rax
    pushq %rax
    lretq
1:  movl $RT_SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    ltr %dx
    ret

    .section .note.GNU-stack, "", @progbits
