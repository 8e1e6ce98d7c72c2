//! Numbers of the Xen public interface, spelled as the headers spell them. Every group names
//! the header it comes from (paths in xen-project/xen).
//!
//! Constants keep the headers' spelling (`XENVER_get_features`, `SCHEDOP_shutdown`) so they can
//! be held against the source.

/// Xen error numbers, `xen/include/public/errno.h`. Hypercalls return them negated.
#[allow(missing_docs)] // the names are the header's
pub mod errno {
    pub const EPERM: u64 = 1;
    pub const ENOENT: u64 = 2;
    pub const ESRCH: u64 = 3;
    pub const ENXIO: u64 = 6;
    pub const E2BIG: u64 = 7;
    pub const EACCES: u64 = 13;
    pub const EFAULT: u64 = 14;
    pub const EBUSY: u64 = 16;
    pub const EEXIST: u64 = 17;
    pub const ENODEV: u64 = 19;
    pub const EINVAL: u64 = 22;
    pub const ENOSPC: u64 = 28;
    pub const EDOM: u64 = 33;
    pub const ENOSYS: u64 = 38;
    pub const ENODATA: u64 = 61;
    pub const ETIME: u64 = 62;
    pub const EOPNOTSUPP: u64 = 95;
    pub const ENOBUFS: u64 = 105;
}

/// `-errno` as it is placed in RAX.
pub const fn neg(errno: u64) -> u64 {
    errno.wrapping_neg()
}

/// Hypercall numbers, `xen/include/public/xen.h` (`__HYPERVISOR_*`).
#[allow(missing_docs)]
pub mod nr {
    pub const platform_op: u64 = 7;
    pub const memory_op: u64 = 12;
    pub const multicall: u64 = 13;
    pub const set_timer_op: u64 = 15;
    pub const xen_version: u64 = 17;
    pub const console_io: u64 = 18;
    pub const grant_table_op: u64 = 20;
    pub const vm_assist: u64 = 21;
    /// The PV-only iret; its hypercall-page stub is `ud2` for HVM guests.
    pub const iret: u64 = 23;
    pub const vcpu_op: u64 = 24;
    pub const mmuext_op: u64 = 26;
    pub const xsm_op: u64 = 27;
    pub const sched_op: u64 = 29;
    pub const event_channel_op: u64 = 32;
    pub const physdev_op: u64 = 33;
    pub const hvm_op: u64 = 34;
    pub const sysctl: u64 = 35;
    pub const domctl: u64 = 36;
    pub const argo_op: u64 = 39;
    pub const xenpmu_op: u64 = 40;
    pub const dm_op: u64 = 41;
    pub const hypfs_op: u64 = 42;
    /// `__HYPERVISOR_arch_1`, x86's `paging_domctl_cont` (`xen/include/hypercall-defs.c`).
    pub const paging_domctl_cont: u64 = 49;
}

/// `domid_t` values, `xen/include/public/xen.h`.
pub const DOMID_SELF: u16 = 0x7ff0;

/// x86 page size.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// `xen/include/public/version.h` sub-operations and sizes.
#[allow(missing_docs)]
pub mod version {
    pub const XENVER_version: u32 = 0;
    pub const XENVER_extraversion: u32 = 1;
    pub const XENVER_compile_info: u32 = 2;
    pub const XENVER_capabilities: u32 = 3;
    pub const XENVER_changeset: u32 = 4;
    pub const XENVER_platform_parameters: u32 = 5;
    pub const XENVER_get_features: u32 = 6;
    pub const XENVER_pagesize: u32 = 7;
    pub const XENVER_guest_handle: u32 = 8;
    pub const XENVER_commandline: u32 = 9;
    pub const XENVER_build_id: u32 = 10;
    pub const XENVER_extraversion2: u32 = 11;
    pub const XENVER_capabilities2: u32 = 12;
    pub const XENVER_changeset2: u32 = 13;
    pub const XENVER_commandline2: u32 = 14;

    /// `xen_extraversion_t`: `char[16]`.
    pub const EXTRAVERSION_LEN: usize = 16;
    /// `struct xen_compile_info` field sizes: compiler, compile_by, compile_domain,
    /// compile_date.
    pub const COMPILE_INFO_FIELDS: [usize; 4] = [64, 16, 32, 32];
    /// `xen_capabilities_info_t`: `char[1024]`.
    pub const CAPABILITIES_LEN: usize = 1024;
    /// `xen_changeset_info_t`: `char[64]`.
    pub const CHANGESET_LEN: usize = 64;
    /// `xen_domain_handle_t`: `uint8_t[16]` (`xen.h`).
    pub const HANDLE_LEN: usize = 16;
}

/// `xen/include/public/features.h` bit numbers of `XENVER_get_features` sub-map 0.
#[allow(missing_docs)]
pub mod features {
    pub const XENFEAT_writable_page_tables: u32 = 0;
    pub const XENFEAT_auto_translated_physmap: u32 = 2;
    pub const XENFEAT_hvm_callback_vector: u32 = 8;
    pub const XENFEAT_hvm_safe_pvclock: u32 = 9;
    pub const XENFEAT_not_direct_mapped: u32 = 16;
}

/// `xen/include/public/xen.h` console_io commands.
#[allow(missing_docs)]
pub mod console {
    pub const CONSOLEIO_write: u32 = 0;
    pub const CONSOLEIO_read: u32 = 1;
}

/// `xen/include/public/sched.h` commands and shutdown reasons.
#[allow(missing_docs)]
pub mod sched {
    pub const SCHEDOP_yield: u32 = 0;
    pub const SCHEDOP_block: u32 = 1;
    pub const SCHEDOP_shutdown: u32 = 2;
    pub const SCHEDOP_poll: u32 = 3;
    pub const SCHEDOP_remote_shutdown: u32 = 4;
    pub const SCHEDOP_shutdown_code: u32 = 5;
    pub const SCHEDOP_watchdog: u32 = 6;
    pub const SCHEDOP_pin_override: u32 = 7;

    pub const SHUTDOWN_poweroff: u8 = 0;
    pub const SHUTDOWN_reboot: u8 = 1;
    pub const SHUTDOWN_suspend: u8 = 2;
    pub const SHUTDOWN_crash: u8 = 3;
    pub const SHUTDOWN_watchdog: u8 = 4;
    pub const SHUTDOWN_soft_reset: u8 = 5;
    /// `SHUTDOWN_CODE_INVALID` (`xen/include/xen/sched.h`: `~0` in a `u8`).
    pub const SHUTDOWN_CODE_INVALID: u8 = 0xff;

    /// do_poll's "fairly arbitrary limit" on `nr_ports` (`xen/common/sched/core.c`).
    pub const POLL_MAX_PORTS: u32 = 128;
}

/// `xen/include/public/memory.h` commands and map spaces.
#[allow(missing_docs)]
pub mod memory {
    pub const XENMEM_maximum_ram_page: u64 = 2;
    pub const XENMEM_current_reservation: u64 = 3;
    pub const XENMEM_maximum_reservation: u64 = 4;
    pub const XENMEM_add_to_physmap: u64 = 7;
    pub const XENMEM_memory_map: u64 = 9;
    pub const XENMEM_maximum_gpfn: u64 = 14;

    /// `MEMOP_EXTENT_SHIFT`: the command's bits above this carry a continuation's extent.
    pub const MEMOP_EXTENT_SHIFT: u32 = 6;
    /// `MEMOP_CMD_MASK`.
    pub const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;

    pub const XENMAPSPACE_shared_info: u32 = 0;
    pub const XENMAPSPACE_grant_table: u32 = 1;
    pub const XENMAPSPACE_gmfn: u32 = 2;
    pub const XENMAPSPACE_gmfn_range: u32 = 3;
    pub const XENMAPSPACE_gmfn_foreign: u32 = 4;
    pub const XENMAPSPACE_dev_mmio: u32 = 5;

    /// `struct e820entry` (packed: u64 addr, u64 size, u32 type).
    pub const E820_ENTRY_LEN: usize = 20;
    /// E820 type of usable RAM.
    pub const E820_RAM: u32 = 1;
}

/// `xen/include/public/hvm/hvm_op.h` commands.
#[allow(missing_docs)]
pub mod hvm {
    pub const HVMOP_set_param: u64 = 0;
    pub const HVMOP_get_param: u64 = 1;
    pub const HVMOP_pagetable_dying: u64 = 9;
    pub const HVMOP_get_time: u64 = 10;
    pub const HVMOP_set_evtchn_upcall_vector: u64 = 23;

    /// The lowest vector `HVMOP_set_evtchn_upcall_vector` accepts (`xen/arch/x86/hvm/hvm.c`).
    pub const MIN_UPCALL_VECTOR: u8 = 0x10;
}

/// `xen/include/public/hvm/params.h` indices.
#[allow(missing_docs)]
pub mod params {
    pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
    pub const HVM_PARAM_STORE_PFN: u32 = 1;
    pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
    pub const HVM_PARAM_PAE_ENABLED: u32 = 4;
    pub const HVM_PARAM_DM_DOMAIN: u32 = 13;
    pub const HVM_PARAM_VM86_TSS: u32 = 15;
    pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
    pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
    pub const HVM_PARAM_ACPI_IOPORTS_LOCATION: u32 = 19;
    pub const HVM_PARAM_MEMORY_EVENT_CR0: u32 = 20;
    pub const HVM_PARAM_MEMORY_EVENT_CR3: u32 = 21;
    pub const HVM_PARAM_MEMORY_EVENT_CR4: u32 = 22;
    pub const HVM_PARAM_MEMORY_EVENT_INT3: u32 = 23;
    pub const HVM_PARAM_NESTEDHVM: u32 = 24;
    pub const HVM_PARAM_MEMORY_EVENT_SINGLE_STEP: u32 = 25;
    pub const HVM_PARAM_BUFIOREQ_EVTCHN: u32 = 26;
    pub const HVM_PARAM_MEMORY_EVENT_MSR: u32 = 30;
    pub const HVM_PARAM_VM_GENERATION_ID_ADDR: u32 = 34;
    pub const HVM_PARAM_ALTP2M: u32 = 35;
    pub const HVM_PARAM_X87_FIP_WIDTH: u32 = 36;
    pub const HVM_PARAM_VM86_TSS_SIZED: u32 = 37;
    pub const HVM_NR_PARAMS: u32 = 39;

    /// `HVM_PARAM_CALLBACK_IRQ` bits 63:56: the delivery type; type 2 is a vector in
    /// bits 7:0 (`HVM_PARAM_CALLBACK_TYPE_VECTOR`).
    pub const HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT: u32 = 56;
    pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2;

    /// `VM86_TSS_UPDATED` (`xen/arch/x86/include/asm/hvm/support.h`).
    pub const VM86_TSS_UPDATED: u64 = 1 << 63;
    /// `sizeof(struct tss32)` (`xen/arch/x86/include/asm/hvm/hvm.h`).
    pub const TSS32_LEN: u64 = 104;
}

/// `xen/include/public/vcpu.h` commands and flags.
#[allow(missing_docs)]
pub mod vcpu {
    pub const VCPUOP_is_up: u32 = 3;
    pub const VCPUOP_set_singleshot_timer: u32 = 8;
    pub const VCPUOP_stop_singleshot_timer: u32 = 9;
    pub const VCPUOP_register_vcpu_info: u32 = 10;
    pub const VCPU_SSHOTTMR_future: u32 = 1 << 0;
}

/// `xen/include/public/arch-x86/cpuid.h`.
#[allow(missing_docs)]
pub mod cpuid {
    pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;
    pub const XEN_CPUID_MAX_NUM_LEAVES: u32 = 5;
    /// "XenVMMXenVMM" as EBX, ECX, EDX.
    pub const SIGNATURE: &[u8; 12] = b"XenVMMXenVMM";
    pub const XEN_CPUID_HOST_TSC_RELIABLE: u32 = 1 << 1;
    pub const XEN_CPUID_TSC_MODE_NEVER_EMULATE: u32 = 2;
    pub const XEN_HVM_CPUID_VCPU_ID_PRESENT: u32 = 1 << 3;
    pub const XEN_HVM_CPUID_DOMID_PRESENT: u32 = 1 << 4;
    /// The hypercall-page MSR leaf B+2 names (`xen/arch/x86/msr.c`, no Viridian).
    pub const HYPERCALL_PAGE_MSR: u32 = 0x4000_0000;
}

/// `xen/include/public/event_channel.h` commands, channel states and limits.
#[allow(missing_docs)]
pub mod evtchn {
    pub const EVTCHNOP_bind_interdomain: u32 = 0;
    pub const EVTCHNOP_bind_virq: u32 = 1;
    pub const EVTCHNOP_bind_pirq: u32 = 2;
    pub const EVTCHNOP_close: u32 = 3;
    pub const EVTCHNOP_send: u32 = 4;
    pub const EVTCHNOP_status: u32 = 5;
    pub const EVTCHNOP_alloc_unbound: u32 = 6;
    pub const EVTCHNOP_bind_ipi: u32 = 7;
    pub const EVTCHNOP_bind_vcpu: u32 = 8;
    pub const EVTCHNOP_unmask: u32 = 9;
    pub const EVTCHNOP_reset: u32 = 10;
    pub const EVTCHNOP_init_control: u32 = 11;
    pub const EVTCHNOP_expand_array: u32 = 12;
    pub const EVTCHNOP_set_priority: u32 = 13;
    pub const EVTCHNOP_reset_cont: u32 = 14;

    pub const EVTCHNSTAT_closed: u32 = 0;
    pub const EVTCHNSTAT_unbound: u32 = 1;
    pub const EVTCHNSTAT_interdomain: u32 = 2;
    pub const EVTCHNSTAT_pirq: u32 = 3;
    pub const EVTCHNSTAT_virq: u32 = 4;
    pub const EVTCHNSTAT_ipi: u32 = 5;

    /// `EVTCHN_2L_NR_CHANNELS` of the compat (32-bit) layout, `xen/include/public/xen.h`:
    /// 32 * 32 ports. Both layouts get this many here (the native limit is 4096), which
    /// bounds the port table.
    pub const NR_PORTS: u32 = 1024;
}

/// `xen/include/public/xen.h` virtual IRQs.
#[allow(missing_docs)]
pub mod virq {
    pub const VIRQ_TIMER: u32 = 0;
    pub const VIRQ_DEBUG: u32 = 1;
    pub const VIRQ_CONSOLE: u32 = 2;
    pub const VIRQ_DOM_EXC: u32 = 3;
    pub const VIRQ_XENOPROF: u32 = 7;
    pub const VIRQ_XENPMU: u32 = 13;
    pub const NR_VIRQS: u32 = 24;

    /// Per-vCPU VIRQs (`virq_is_global` is false for them, `xen/common/event_channel.c`).
    pub const fn is_per_vcpu(virq: u32) -> bool {
        matches!(virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENOPROF | VIRQ_XENPMU)
    }
}
