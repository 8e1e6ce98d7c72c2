/* polyvisor test-guest runtime: ELF64 direct entry (64-bit long mode, CPL 0).
 * In:  RDI = GPA of struct hvm_start_info, RSI = vCPU index, interrupts off,
 *      paging on with the VMM's identity map, RSP = a VMM stack (not used).
 * Does: own stack per vCPU, own page tables (rt_pml4: identity 4 GiB, U/S set),
 *       CR4.SMEP/SMAP off, then rt_start(si, vcpu) which loads GDT/TSS/IDT. */
#include "rt_layout.h"

    .code64
    .section .text.entry, "ax"
    .globl _start
_start:
    testl %esi, %esi            /* vCPU 0 notes the TSC at its first instructions */
    jnz 6f
    rdtsc
    movl %eax, rt_start_tsc(%rip)
    movl %edx, rt_start_tsc+4(%rip)
6:  cli
    cld
    movl $RT_BOOT_ELF64, rt_boot_protocol(%rip)

/* rt_entry64_common: RDI = start info, RSI = vCPU index, long mode, any stack. */
    .globl rt_entry64_common
rt_entry64_common:
    movl %esi, %esi
    movl %edi, %edi             /* start info is below 4 GiB */
    cmpq $RT_MAX_VCPUS, %rsi
    jae 2f
    movq %rsi, %rax
    shlq $RT_VCPU_AREA_SHIFT, %rax
    leaq rt_vcpu_area + RT_KSTACK_SIZE(%rax), %rsp
    movl $rt_pml4, %eax
    movq %rax, %cr3
    movq %cr4, %rax
    andq $~((1 << 20) | (1 << 21)), %rax   /* SMEP, SMAP: ring-3 pages are used at CPL 0 */
    orq $0x20, %rax                         /* PAE */
    movq %rax, %cr4
    xorl %ebp, %ebp
    call rt_start
    movl $RT_EXIT_RETURNED, %eax
    jmp 3f
2:  leaq rt_msg_bad_vcpu(%rip), %rsi      /* no stack: print with a loop */
    movl $0xE9, %edx
4:  movb (%rsi), %al
    testb %al, %al
    jz 5f
    outb %al, %dx
    incq %rsi
    jmp 4b
5:  movl $RT_EXIT_BAD_VCPU, %eax
3:  outl %eax, $0xF4
1:  cli
    hlt
    jmp 1b

    .section .rodata
rt_msg_bad_vcpu:
    .asciz "rt: vCPU index >= RT_MAX_VCPUS, exiting with status 0xD1\n"

    .section .note.GNU-stack, "", @progbits
