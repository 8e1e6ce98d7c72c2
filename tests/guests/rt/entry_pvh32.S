/* polyvisor test-guest runtime: PVH entry that stays in 32-bit protected mode.
 * In:  32-bit flat protected mode, paging off, EBX = GPA of struct hvm_start_info,
 *      ESI = vCPU index, interrupts off, no stack.
 * Does: own stack per vCPU, then rt_start(si, vcpu) which loads GDT/TSS/IDT.
 * Paging stays off (ring-3 code can reach all memory). */
#include "rt_layout.h"

    .section .note.Xen, "a"
    .balign 4
    .long 4                     /* name size */
    .long 4                     /* desc size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .code32
    .section .text.entry, "ax"
    .globl _start
    .globl pvh_start32
_start:
pvh_start32:
    testl %esi, %esi            /* vCPU 0 notes the TSC at its first instructions */
    jnz 6f
    rdtsc
    movl %eax, rt_start_tsc
    movl %edx, rt_start_tsc+4
6:  cli
    cld
    cmpl $RT_MAX_VCPUS, %esi
    jae 2f
    movl %esi, %eax
    shll $RT_VCPU_AREA_SHIFT, %eax
    leal rt_vcpu_area + RT_KSTACK_SIZE(%eax), %esp
    movl $RT_BOOT_PVH32, rt_boot_protocol
    xorl %ebp, %ebp
    subl $8, %esp
    pushl %esi
    pushl %ebx
    call rt_start
    movl $RT_EXIT_RETURNED, %eax
    jmp 3f
2:  movl $rt_msg_bad_vcpu, %esi          /* no stack: print with a loop */
    movl $0xE9, %edx
4:  movb (%esi), %al
    testb %al, %al
    jz 5f
    outb %al, %dx
    incl %esi
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
