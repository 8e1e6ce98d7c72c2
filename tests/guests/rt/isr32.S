/* polyvisor test-guest runtime, 32-bit: IDT stubs, unwinding, ring 3, hypercall stubs.
 * Data segments: DS/ES/FS/GS always hold the flat ring-3 data selector (usable at CPL 0
 * and CPL 3, so iret to CPL 3 never nulls them); SS is RT_SEL_KDATA at CPL 0. */
#include "rt_layout.h"

    .code32
    .text

.macro ISR vec
    .balign 16
    .if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushl $0
    .endif
    pushl $\vec
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
    pushal
    cld
    movl %esp, %ebx
    pushl %esp              /* struct trap_frame * */
    call rt_trap
    movl %ebx, %esp
    testl %eax, %eax
    jnz 1f
    popal
    addl $8, %esp
    testl $3, 4(%esp)       /* returning to CPL 3? */
    jnz 2f
    /* Return to CPL 0 without iret: KVM's instruction emulator cannot emulate a
     * protected-mode iret, and PVM hosts emulate this mode. Same CPL, same CS:
     * rewrite [eip, cs, eflags] into [eflags, eip] and use popfl; ret. */
    pushl %eax              /* eax, eip, cs, eflags */
    movl 4(%esp), %eax      /* eip */
    xchgl %eax, 12(%esp)    /* eax, eip, cs, eip ; %eax = eflags */
    movl %eax, 8(%esp)      /* eax, eip, eflags, eip */
    popl %eax               /* eip, eflags, eip */
    addl $4, %esp           /* eflags, eip */
    popfl
    ret
2:  iret                    /* to CPL 3 (not emulated on PVM hosts: see README) */
1:  /* unwind to the resume record in %eax */
    movl %eax, %esp
    movl $RT_SEL_KDATA, %eax
    movl %eax, %ss
    jmp rt_unwind_resume

/* ---------------------------------------------------------------- unwind */
/* int rt_unwind_call(ureg *slot, rt_fn_t fn, ureg arg, ureg *result)   (cdecl)
 * Resume record: [0] code [1] result ptr [2] slot [3] previous *slot [4] eflags
 *                [5..8] edi esi ebp ebx [9] return address */
    .globl rt_unwind_call
rt_unwind_call:
    pushl %ebx
    pushl %ebp
    pushl %esi
    pushl %edi
    pushfl
    movl 24(%esp), %edi     /* slot */
    pushl (%edi)            /* previous */
    pushl %edi
    pushl 44(%esp)          /* result pointer (4th arg) */
    pushl $0                /* code */
    movl %esp, (%edi)
    /* args now: slot 40(%esp), fn 44, arg 48, result 52 */
    pushl 48(%esp)          /* arg */
    call *48(%esp)          /* fn */
    addl $4, %esp
    movl 4(%esp), %ecx
    testl %ecx, %ecx
    jz 1f
    movl %eax, (%ecx)
1:  movl $0, (%esp)
    .globl rt_unwind_resume
rt_unwind_resume:
    popl %eax               /* code */
    popl %ecx               /* result ptr */
    popl %edi               /* slot */
    popl %esi               /* previous value */
    movl %esi, (%edi)
    popfl
    popl %edi
    popl %esi
    popl %ebp
    popl %ebx
    ret

/* ---------------------------------------------------------------- ring 3 */
/* ureg rt_ring3_enter(struct rt_ring3_ctx *ctx)  (cdecl)
 * Uses sysexit rather than iret (which KVM's emulator cannot do in protected mode, see
 * above): CS = SYSENTER_CS + 16 = RT_SEL_UCODE, SS = SYSENTER_CS + 24 = RT_SEL_UDATA,
 * EIP = EDX, ESP = ECX. IOPL 3 and IF are kept from the caller's EFLAGS. */
    .globl rt_ring3_enter
rt_ring3_enter:
    movl 4(%esp), %eax
    pushfl
    orl $0x3000, (%esp)     /* IOPL 3 */
    popfl
    movl 0(%eax), %edi      /* fn */
    movl 4(%eax), %esi      /* arg */
    movl 8(%eax), %ecx      /* user stack */
    movl $rt_ring3_tramp, %edx
    sysexit

rt_ring3_tramp:             /* CPL 3 */
    subl $12, %esp
    pushl %esi
    call *%edi
    addl $16, %esp
    .globl rt_ring3_return
rt_ring3_return:
    int $RT_RING3_RETURN_VECTOR
    ud2

/* ------------------------------------------------------------- hypercalls */
/* struct hc_regs { eax, ebx, ecx, edx, esi, edi, ebp }  (eax holds the pointer) */
.macro HC_LOAD
    movl 4(%eax), %ebx
    movl 8(%eax), %ecx
    movl 12(%eax), %edx
    movl 16(%eax), %esi
    movl 20(%eax), %edi
    movl 24(%eax), %ebp
    movl 0(%eax), %eax
.endm

/* expects (%esp) = regs pointer; pops it */
.macro HC_STORE
    xchgl %eax, (%esp)
    movl %ebx, 4(%eax)
    movl %ecx, 8(%eax)
    movl %edx, 12(%eax)
    movl %esi, 16(%eax)
    movl %edi, 20(%eax)
    movl %ebp, 24(%eax)
    popl %ebx
    movl %ebx, 0(%eax)
.endm

.macro SAVE_CALLEE
    pushl %ebx
    pushl %ebp
    pushl %esi
    pushl %edi
.endm

.macro RESTORE_CALLEE
    popl %edi
    popl %esi
    popl %ebp
    popl %ebx
.endm

    .globl rt_hc_raw_vmcall
rt_hc_raw_vmcall:
    SAVE_CALLEE
    movl 20(%esp), %eax
    pushl %eax
    HC_LOAD
    .byte 0x0f, 0x01, 0xc1  /* vmcall */
    HC_STORE
    RESTORE_CALLEE
    xorl %eax, %eax
    ret

    .globl rt_hc_raw_vmmcall
rt_hc_raw_vmmcall:
    SAVE_CALLEE
    movl 20(%esp), %eax
    pushl %eax
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
    movl 20(%esp), %eax
    pushl 4(%eax)           /* target, at 4(%esp) below */
    movl 0(%eax), %eax
    pushl %eax              /* regs pointer */
    HC_LOAD
    call *4(%esp)
    HC_STORE
    addl $4, %esp
    RESTORE_CALLEE
    xorl %eax, %eax
    ret

/* ---------------------------------------------------------------- tables */
/* void rt_load_tables(gdt_ptr, idt_ptr, u16 tss_sel)  (cdecl) */
    .globl rt_load_tables
rt_load_tables:
    movl 4(%esp), %eax
    lgdt (%eax)
    movl 8(%esp), %eax
    lidt (%eax)
    ljmp $RT_SEL_KCODE, $1f
1:  movl $RT_SEL_KDATA, %eax
    movl %eax, %ss
    movl $RT_SEL_UDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %fs
    movl %eax, %gs
    movl 12(%esp), %eax
    ltr %ax
    movl $0x174, %ecx       /* IA32_SYSENTER_CS, for sysexit in rt_ring3_enter */
    movl $RT_SEL_KCODE, %eax
    xorl %edx, %edx
    wrmsr
    ret

    .section .note.GNU-stack, "", @progbits
