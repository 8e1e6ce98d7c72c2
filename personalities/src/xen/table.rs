//! The hypercall table: the calls an HVM guest may make (the `hvm64`/`hvm32` columns of
//! `xen/include/hypercall-defs.c`), numbered by `__HYPERVISOR_*` in
//! `xen/include/public/xen.h`. Every HVM hypercall from CPL > 0 is `-EPERM`
//! (`hvm_hypercall`, `xen/arch/x86/hvm/hypercall.c`), so every row is ring 0 only. Rows
//! without a handler answer `-ENOSYS`; numbers without a row (the PV-only calls) too.

use polyvisor_core::{HypercallRow, Rings};

use super::abi::nr;
use super::calls;
use super::Xen;

const fn row(
    number: u64,
    name: &'static str,
    handler: Option<fn(&Xen, &mut polyvisor_core::Call<'_>) -> polyvisor_core::Reply>,
    summary: &'static str,
) -> HypercallRow<Xen> {
    HypercallRow { number, name, rings: Rings::KERNEL, handler, summary }
}

/// The table, sorted by number.
pub const TABLE: &[HypercallRow<Xen>] = &[
    row(nr::platform_op, "__HYPERVISOR_platform_op", None, "not implemented: -ENOSYS"),
    row(
        nr::memory_op,
        "__HYPERVISOR_memory_op",
        Some(calls::memory::memory_op),
        "shared_info mapping, memory map, reservations",
    ),
    row(nr::multicall, "__HYPERVISOR_multicall", None, "not implemented: -ENOSYS"),
    row(
        nr::set_timer_op,
        "__HYPERVISOR_set_timer_op",
        Some(calls::timer::set_timer_op),
        "the single-shot timer (VIRQ_TIMER)",
    ),
    row(
        nr::xen_version,
        "__HYPERVISOR_xen_version",
        Some(calls::version::xen_version),
        "version, strings, features, page size",
    ),
    row(
        nr::console_io,
        "__HYPERVISOR_console_io",
        Some(calls::console::console_io),
        "write to and read from the VM console",
    ),
    row(nr::grant_table_op, "__HYPERVISOR_grant_table_op", None, "not implemented: -ENOSYS"),
    row(nr::vm_assist, "__HYPERVISOR_vm_assist", None, "not implemented: -ENOSYS"),
    row(
        nr::vcpu_op,
        "__HYPERVISOR_vcpu_op",
        Some(calls::vcpu::vcpu_op),
        "vcpu_info placement, is_up, single-shot timer",
    ),
    row(nr::mmuext_op, "__HYPERVISOR_mmuext_op", None, "not implemented: -ENOSYS"),
    row(nr::xsm_op, "__HYPERVISOR_xsm_op", None, "not implemented: -ENOSYS"),
    row(
        nr::sched_op,
        "__HYPERVISOR_sched_op",
        Some(calls::sched::sched_op),
        "yield, block, poll, shutdown",
    ),
    row(
        nr::event_channel_op,
        "__HYPERVISOR_event_channel_op",
        Some(calls::evtchn::event_channel_op),
        "2-level event channels: VMM backends, VIRQs, IPIs",
    ),
    row(nr::physdev_op, "__HYPERVISOR_physdev_op", None, "not implemented: -ENOSYS"),
    row(
        nr::hvm_op,
        "__HYPERVISOR_hvm_op",
        Some(calls::hvm::hvm_op),
        "HVM parameters, upcall vector, time",
    ),
    row(nr::sysctl, "__HYPERVISOR_sysctl", None, "not implemented: -ENOSYS"),
    row(nr::domctl, "__HYPERVISOR_domctl", None, "not implemented: -ENOSYS"),
    row(nr::argo_op, "__HYPERVISOR_argo_op", None, "not implemented: -ENOSYS"),
    row(nr::xenpmu_op, "__HYPERVISOR_xenpmu_op", None, "not implemented: -ENOSYS"),
    row(nr::dm_op, "__HYPERVISOR_dm_op", None, "not implemented: -ENOSYS"),
    row(nr::hypfs_op, "__HYPERVISOR_hypfs_op", None, "not implemented: -ENOSYS"),
    row(
        nr::paging_domctl_cont,
        "__HYPERVISOR_arch_1",
        None,
        "paging_domctl_cont, not implemented: -ENOSYS",
    ),
];
