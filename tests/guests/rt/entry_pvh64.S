/* polyvisor test-guest runtime: PVH entry that switches to 64-bit long mode itself
 * (as Linux's PVH entry does) and continues in the 64-bit runtime.
 * In:  32-bit flat protected mode, paging off, EBX = GPA of struct hvm_start_info,
 *      ESI = vCPU index, interrupts off, no stack.
 * Does: boot GDT, CR4.PAE, CR3 = rt_pml4, EFER.LME, CR0.PG, far jump to 64-bit code,
 *       then rt_entry64_common (entry64.S) with RDI = start info, RSI = vCPU index. */
#include "rt_layout.h"

    .section .note.Xen, "a"
    .balign 4
    .long 4                     /* name size */
    .long 4                     /* desc size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .section .rodata
    .balign 16
rt_boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code, accessed */
    .quad 0x00cf93000000ffff    /* 0x10: flat data, accessed */
rt_boot_gdt_end:
rt_boot_gdt_ptr:
    .word rt_boot_gdt_end - rt_boot_gdt - 1
    .long rt_boot_gdt

    .code32
    .section .text.entry, "ax"
    .globl pvh_start32
pvh_start32:
    testl %esi, %esi            /* vCPU 0 notes the TSC at its first instructions */
    jnz 6f
    rdtsc
    movl %eax, rt_start_tsc
    movl %edx, rt_start_tsc+4
6:  cli
    cld
    movl $RT_BOOT_PVH64, rt_boot_protocol
    lgdt rt_boot_gdt_ptr
    movl $RT_SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %cr4, %eax
    andl $~((1 << 20) | (1 << 21)), %eax
    orl $0x20, %eax             /* PAE */
    movl %eax, %cr4
    movl $rt_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmp $RT_SEL_KCODE, $1f
    .code64
1:  movl %ebx, %edi
    jmp rt_entry64_common

    .section .note.GNU-stack, "", @progbits
