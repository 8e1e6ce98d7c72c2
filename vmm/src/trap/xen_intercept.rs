//! The Xen-intercept trap (VMX/SVM hosts whose kernel has `CONFIG_KVM_XEN`).
//!
//! `KVM_XEN_HVM_CONFIG` with `KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL` and a non-zero MSR sends
//! every VMCALL/VMMCALL, at any CPL, to user space as `KVM_EXIT_XEN` (kvm-ioctls reports it
//! as `VcpuExit::Unsupported(34)`; the backend decodes `kvm_run` itself, see
//! [`crate::vcpu::xen_exit_from_run`]). KVM's payload reads the Xen ABI's registers; the VMM
//! reads the real registers for every other ABI.
//!
//! Completion: KVM writes `result` to RAX and skips the instruction on the next `KVM_RUN`.
//! To apply an arbitrary outcome (other registers, #UD, re-execution), the VMM completes the
//! exit first with `result` = the caller's RAX and `immediate_exit` set, puts RIP and RAX
//! back, and then applies the outcome exactly as the write-protect trap does.
//!
//! **Untested on hardware**: the development hosts are PVM-based without `CONFIG_KVM_XEN`.
//! The decoding and the completion sequence are unit-tested against a `kvm_run` image and a
//! backend that mimics KVM's completion.

use polyvisor_core::HypercallInstruction;

use crate::exits::{handle_exit, Action, VmServices};
use crate::trap::{complete_pending, rip_gpa, serve};
use crate::vcpu::{VcpuBackend, VcpuError};

/// The MSR given to `KVM_XEN_HVM_CONFIG` (it must be non-zero for the intercept to work;
/// KVM then writes a Xen hypercall page when the guest writes this MSR). Chosen far from the
/// synthetic MSRs of every personality.
pub const XEN_CONFIG_MSR: u32 = 0x4fff_ff00;

/// Handles a `KVM_EXIT_XEN` hypercall exit.
pub fn on_hcall(
    vm: &dyn VmServices,
    backend: &mut dyn VcpuBackend,
    vcpu: u32,
) -> Result<Action, VcpuError> {
    let before = backend.regs()?;
    backend.complete_xen_hcall(before.rax);
    if let Some(other) = complete_pending(backend, vm, vcpu)? {
        return handle_exit(other, vcpu, backend, vm);
    }
    let mut regs = backend.regs()?;
    let sregs = backend.sregs()?;
    // Undo KVM's completion: RIP back on the instruction, the caller's RAX.
    regs.rip = before.rip;
    regs.rax = before.rax;
    let mut bytes = [0u8; 3];
    let gpa = rip_gpa(vm, &regs, &sregs).filter(|gpa| vm.mem().read_visible(*gpa, &mut bytes));
    let now = HypercallInstruction::from_bytes(bytes);
    // With the quirk on, KVM rewrites the other vendor's instruction to the native one
    // before intercepting it; the kernel image still says what the guest wrote.
    let original =
        gpa.and_then(|g| vm.original_bytes(g)).and_then(HypercallInstruction::from_bytes);
    let insn = match (now, original) {
        (Some(n), Some(o)) if n == vm.trap().native && o != n => o,
        (Some(n), _) => n,
        (None, _) => vm.trap().native,
    };
    serve(vm, backend, vcpu, regs, &sregs, insn)
}
