/* polyvisor test-guest runtime: static identity page tables for the 64-bit flavours.
 * 4 GiB identity map with 2 MiB pages, every level Present | Writable | User, with the
 * Accessed (and, on leaves, Dirty) bits preset so the CPU never writes to the tables
 * (they may sit in memory the VMM maps read-only). 0xC0000000-0xFFFFFFFF (MMIO hole:
 * APIC, IOAPIC, ...) is mapped cache-disabled. */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl rt_pml4
rt_pml4:
    .quad rt_pdpt + 0x27        /* P | RW | US | A */
    .fill 511, 8, 0
    .globl rt_pdpt
rt_pdpt:
    .quad rt_pd + 0x0000 + 0x27
    .quad rt_pd + 0x1000 + 0x27
    .quad rt_pd + 0x2000 + 0x27
    .quad rt_pd + 0x3000 + 0x27
    .fill 508, 8, 0
    .globl rt_pd
rt_pd:
    .set addr, 0
    .rept 1536
    .quad addr + 0xE7           /* P | RW | US | A | D | PS */
    .set addr, addr + 0x200000
    .endr
    .rept 512
    .quad addr + 0xF7           /* ... | PCD */
    .set addr, addr + 0x200000
    .endr

    .section .note.GNU-stack, "", @progbits
