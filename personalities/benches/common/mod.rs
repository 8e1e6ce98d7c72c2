//! What the dispatch benchmark and `examples/dispatch_loop.rs` share.

use polyvisor_core::{HypervisorMode, Registers};

/// The cheapest real call of each ABI, as registers.
pub fn cheapest(mode: HypervisorMode) -> Registers {
    match mode {
        // HYPERCALL_PROTOTYPE
        HypervisorMode::Bhyve => Registers { rax: 0, ..Default::default() },
        // KVM_HC_VAPIC_POLL_IRQ
        HypervisorMode::Kvm => Registers { rax: 1, ..Default::default() },
        // HvCallNotifyLongSpinWait, fast
        HypervisorMode::Hyperv => Registers { rcx: 0x1_0008, rdx: 1, ..Default::default() },
        // xen_version(XENVER_version)
        HypervisorMode::Xen => Registers { rax: 17, rdi: 0, ..Default::default() },
    }
}
