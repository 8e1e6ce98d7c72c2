/*
 * polyvisor test-guest runtime: constants shared by C and assembly.
 * Only preprocessor definitions here (this file is included from .S files).
 */
#ifndef RT_LAYOUT_H
#define RT_LAYOUT_H

/* Highest number of vCPUs the runtime supports (index 0 .. RT_MAX_VCPUS-1). */
#define RT_MAX_VCPUS 8

/*
 * Per-vCPU area (one 32 KiB block per vCPU, array `rt_vcpu_area` in .bss):
 *   [0x0000, 0x4000)  kernel (CPL 0) stack, initial stack of the vCPU
 *   [0x4000, 0x6000)  trap stack: TSS RSP0/ESP0, used on CPL 3 -> CPL 0 transitions
 *   [0x6000, 0x8000)  user (CPL 3) stack used by run_in_ring3()
 * The runtime finds the current vCPU from the stack pointer, so code that takes
 * exceptions or uses fault recovery must run on these stacks.
 */
#define RT_VCPU_AREA_SHIFT 15
#define RT_VCPU_AREA_SIZE  (1 << RT_VCPU_AREA_SHIFT)
#define RT_KSTACK_SIZE 0x4000
#define RT_TSTACK_TOP  0x6000
#define RT_USTACK_TOP  (0x8000 - 16)

/* GDT selectors (same numbers in the 32-bit and 64-bit flavours). */
#define RT_SEL_KCODE   0x08 /* ring 0 code: 64-bit (64-bit flavours) or 32-bit */
#define RT_SEL_KDATA   0x10 /* ring 0 flat data */
#define RT_SEL_UCODE   0x1b /* ring 3 code (0x18 | RPL 3), same bitness as KCODE */
#define RT_SEL_UDATA   0x23 /* ring 3 flat data (0x20 | RPL 3) */
#define RT_SEL_KCODE32 0x28 /* ring 0 32-bit code (compatibility) */
#define RT_SEL_TSS0    0x30 /* TSS of vCPU i is RT_SEL_TSS0 + 16 * i */
#define RT_GDT_ENTRIES (6 + 2 * RT_MAX_VCPUS)

/* Software interrupt that ends a run_in_ring3() call (DPL 3 gate). */
#define RT_RING3_RETURN_VECTOR 0x80

/* Boot protocols, value of rt_boot_protocol. */
#define RT_BOOT_ELF64 1 /* ELF64 direct: entered in 64-bit long mode */
#define RT_BOOT_PVH32 2 /* PVH, stays in 32-bit protected mode (paging off) */
#define RT_BOOT_PVH64 3 /* PVH, switches itself to 64-bit long mode */

/* Exit statuses used by the runtime itself (port 0xF4). */
#define RT_EXIT_PANIC        0xD0 /* panic() / GUEST_ASSERT failure */
#define RT_EXIT_BAD_VCPU     0xD1 /* vCPU index >= RT_MAX_VCPUS */
#define RT_EXIT_DOUBLE_FATAL 0xD2 /* fault while reporting a fatal fault */
#define RT_EXIT_BAD_STACK    0xD3 /* trap taken on a stack the runtime does not own */
#define RT_EXIT_RETURNED     0xD4 /* internal: rt_start returned (cannot happen) */
#define RT_EXIT_EXCEPTION    0xE0 /* + vector: unexpected exception 0..31 */

/* Exception vectors. */
#define VEC_DE 0
#define VEC_DB 1
#define VEC_NMI 2
#define VEC_BP 3
#define VEC_OF 4
#define VEC_BR 5
#define VEC_UD 6
#define VEC_NM 7
#define VEC_DF 8
#define VEC_TS 10
#define VEC_NP 11
#define VEC_SS 12
#define VEC_GP 13
#define VEC_PF 14
#define VEC_MF 16
#define VEC_AC 17
#define VEC_MC 18
#define VEC_XM 19
#define VEC_VE 20
#define VEC_CP 21

#endif
