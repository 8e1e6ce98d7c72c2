//! The numbers of Linux KVM's paravirtual ABI, spelled as the Linux headers spell them.
//!
//! Sources: `include/uapi/linux/kvm_para.h` (hypercall numbers, error codes),
//! `arch/x86/include/uapi/asm/kvm_para.h` (CPUID leaves, feature bits, MSRs,
//! `struct kvm_clock_pairing`, `KVM_MAP_GPA_RANGE_*`), `arch/x86/include/asm/pvclock-abi.h`
//! (`PVCLOCK_*` flags), `arch/x86/include/asm/apicdef.h` (ICR fields) and
//! `Documentation/virt/kvm/x86/{cpuid,hypercalls,msr}.rst`.

// ----------------------------------------------------------------------------- CPUID

/// `KVM_CPUID_SIGNATURE`: the signature leaf (`arch/x86/include/uapi/asm/kvm_para.h`).
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// `KVM_CPUID_FEATURES`: the feature leaf; EAX holds feature bits, EDX hints.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// The twelve signature bytes in EBX, ECX, EDX: "KVMKVMKVM\0\0\0" (`cpuid.rst`).
pub const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// `KVM_HINTS_REALTIME`: CPUID 0x40000001 EDX bit 0, "guest checks this feature bit to
/// determine that vCPUs are never preempted for an unlimited time" (`cpuid.rst`).
pub const KVM_HINTS_REALTIME: u32 = 0;

// ------------------------------------------------------------------------ hypercalls

/// `KVM_HC_VAPIC_POLL_IRQ` (`include/uapi/linux/kvm_para.h`).
pub const KVM_HC_VAPIC_POLL_IRQ: u64 = 1;
/// `KVM_HC_MMU_OP`: deprecated, removed from x86 KVM.
pub const KVM_HC_MMU_OP: u64 = 2;
/// `KVM_HC_FEATURES`: PowerPC only.
pub const KVM_HC_FEATURES: u64 = 3;
/// `KVM_HC_PPC_MAP_MAGIC_PAGE`: PowerPC only.
pub const KVM_HC_PPC_MAP_MAGIC_PAGE: u64 = 4;
/// `KVM_HC_KICK_CPU`.
pub const KVM_HC_KICK_CPU: u64 = 5;
/// `KVM_HC_MIPS_GET_CLOCK_FREQ`: MIPS only.
pub const KVM_HC_MIPS_GET_CLOCK_FREQ: u64 = 6;
/// `KVM_HC_MIPS_EXIT_VM`: MIPS only.
pub const KVM_HC_MIPS_EXIT_VM: u64 = 7;
/// `KVM_HC_MIPS_CONSOLE_OUTPUT`: MIPS only.
pub const KVM_HC_MIPS_CONSOLE_OUTPUT: u64 = 8;
/// `KVM_HC_CLOCK_PAIRING`.
pub const KVM_HC_CLOCK_PAIRING: u64 = 9;
/// `KVM_HC_SEND_IPI`.
pub const KVM_HC_SEND_IPI: u64 = 10;
/// `KVM_HC_SCHED_YIELD`.
pub const KVM_HC_SCHED_YIELD: u64 = 11;
/// `KVM_HC_MAP_GPA_RANGE`.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;

// ------------------------------------------------------------------- error answers

/// `KVM_ENOSYS` (`include/uapi/linux/kvm_para.h`): unknown or unavailable call.
pub const KVM_ENOSYS: u64 = 1000;
/// `KVM_EFAULT` = `EFAULT`: a guest address could not be written.
pub const KVM_EFAULT: u64 = 14;
/// `KVM_EINVAL` = `EINVAL`: invalid arguments.
pub const KVM_EINVAL: u64 = 22;
/// `KVM_E2BIG` = `E2BIG`: here, the GPA attribute map is full.
pub const KVM_E2BIG: u64 = 7;
/// `KVM_EPERM` = `EPERM`: caller not at CPL 0, or the call is denied by configuration.
pub const KVM_EPERM: u64 = 1;
/// `KVM_EOPNOTSUPP` (95): clock pairing without a usable TSC, or an unknown clock type.
pub const KVM_EOPNOTSUPP: u64 = 95;

/// The value an error takes in RAX: KVM returns errors negated (`x86.c`,
/// `kvm_emulate_hypercall`: `ret = -KVM_EPERM` ...).
pub const fn negated(code: u64) -> u64 {
    code.wrapping_neg()
}

// ----------------------------------------------------------------------------- MSRs

/// `MSR_KVM_WALL_CLOCK` (0x11): the deprecated wall-clock MSR, gated on
/// `KVM_FEATURE_CLOCKSOURCE` (`msr.rst`).
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
/// `MSR_KVM_SYSTEM_TIME` (0x12): the deprecated system-time MSR, gated on
/// `KVM_FEATURE_CLOCKSOURCE` (`msr.rst`).
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
/// First MSR of the range reserved for KVM's custom MSRs (`msr.rst`).
pub const MSR_KVM_RANGE_FIRST: u32 = 0x4b56_4d00;
/// Last MSR of the range reserved for KVM's custom MSRs (`msr.rst`).
pub const MSR_KVM_RANGE_LAST: u32 = 0x4b56_4dff;
/// `MSR_KVM_WALL_CLOCK_NEW`, gated on `KVM_FEATURE_CLOCKSOURCE2`.
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// `MSR_KVM_SYSTEM_TIME_NEW`, gated on `KVM_FEATURE_CLOCKSOURCE2`.
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// `MSR_KVM_ASYNC_PF_EN` (not served: #GP).
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
/// `MSR_KVM_STEAL_TIME` (not served: #GP).
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
/// `MSR_KVM_PV_EOI_EN` (not served: #GP).
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// `MSR_KVM_POLL_CONTROL`, gated on `KVM_FEATURE_POLL_CONTROL`.
pub const MSR_KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
/// `MSR_KVM_ASYNC_PF_INT` (not served: #GP).
pub const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
/// `MSR_KVM_ASYNC_PF_ACK` (not served: #GP).
pub const MSR_KVM_ASYNC_PF_ACK: u32 = 0x4b56_4d07;
/// `MSR_KVM_MIGRATION_CONTROL` (not served: #GP).
pub const MSR_KVM_MIGRATION_CONTROL: u32 = 0x4b56_4d08;
/// `KVM_MSR_ENABLED`: bit 0 of `MSR_KVM_SYSTEM_TIME(_NEW)` enables the clock page.
pub const KVM_MSR_ENABLED: u64 = 1;

// ------------------------------------------------------------------------- pvclock

/// `PVCLOCK_TSC_STABLE_BIT` (`pvclock-abi.h`): readings across vCPUs are monotonic.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// `PVCLOCK_GUEST_STOPPED` (`pvclock-abi.h`): set by the host, cleared by the guest.
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

// ------------------------------------------------------------------- clock pairing

/// `KVM_CLOCK_PAIRING_WALLCLOCK`: the only clock type (host `CLOCK_REALTIME`).
pub const KVM_CLOCK_PAIRING_WALLCLOCK: u64 = 0;

// ------------------------------------------------------------------- MAP_GPA_RANGE

/// `KVM_MAP_GPA_RANGE_PAGE_SZ_4K` (attrs bits 3:0 = 0).
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_4K: u64 = 0;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_2M` (attrs bits 3:0 = 1).
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_2M: u64 = 1;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_1G` (attrs bits 3:0 = 2).
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_1G: u64 = 2;
/// The page-size field of the attributes, bits 3:0 (`hypercalls.rst`).
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0xf;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED` = `KVM_MAP_GPA_RANGE_ENC_STAT(1)`: bit 4.
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// Bits 63:5 of the attributes are reserved and must be zero (`hypercalls.rst`).
pub const KVM_MAP_GPA_RANGE_RESERVED: u64 = !0x1f;
/// The 4 KiB page the page count of `KVM_HC_MAP_GPA_RANGE` is measured in.
pub const PAGE_SIZE: u64 = 4096;

// ---------------------------------------------------------------- ICR (apicdef.h)

/// `APIC_VECTOR_MASK`: ICR bits 7:0.
pub const APIC_VECTOR_MASK: u64 = 0xff;
/// `APIC_MODE_MASK`: the delivery mode, ICR bits 10:8.
pub const APIC_MODE_MASK: u64 = 0x700;
/// `APIC_DM_FIXED`.
pub const APIC_DM_FIXED: u64 = 0x000;
/// `APIC_DM_LOWEST`: lowest priority; KVM's `__apic_accept_irq` handles it like fixed.
pub const APIC_DM_LOWEST: u64 = 0x100;
/// `APIC_DM_SMI`.
pub const APIC_DM_SMI: u64 = 0x200;
/// `APIC_DM_REMRD`: KVM uses it as the "kick" (sets `pv_unhalted`, wakes the vCPU).
pub const APIC_DM_REMRD: u64 = 0x300;
/// `APIC_DM_NMI`.
pub const APIC_DM_NMI: u64 = 0x400;
/// `APIC_DM_INIT`.
pub const APIC_DM_INIT: u64 = 0x500;
/// `APIC_DM_STARTUP`.
pub const APIC_DM_STARTUP: u64 = 0x600;
/// `APIC_DM_EXTINT`.
pub const APIC_DM_EXTINT: u64 = 0x700;
/// `APIC_DEST_MASK` (bit 11): logical destination mode.
pub const APIC_DEST_MASK: u64 = 0x800;
/// `APIC_INT_ASSERT` (bit 14): the level.
pub const APIC_INT_ASSERT: u64 = 0x4000;
/// `APIC_INT_LEVELTRIG` (bit 15): level-triggered.
pub const APIC_INT_LEVELTRIG: u64 = 0x8000;
/// `APIC_SHORT_MASK` (bits 19:18): destination shorthand.
pub const APIC_SHORT_MASK: u64 = 0xc_0000;
