//! What each ABI allows a hypercall's outcome to be, and the work bound per operation.
//!
//! | ABI | registers written | next |
//! |---|---|---|
//! | bhyve | RAX, RDI (PROBE_CREATE's id) | advance, #UD |
//! | KVM | RAX | advance |
//! | Hyper-V | RAX, RCX, RDX (the result value; a rep continuation's control) | advance, retry (rep continuation), #UD |
//! | Xen | RAX, and a continuation's argument registers (RDI RSI RDX R10 R8 R9; 32-bit EBX ECX EDX ESI EDI EBP) | advance, retry (console_io continuation), halt (SCHEDOP_block, SCHEDOP_poll), end the VM (SCHEDOP_shutdown, domain crash) |
//!
//! Callers in 32-bit protected or real mode only ever get 32-bit values back; no ABI injects
//! #GP from a hypercall. Sources: docs/abi/<mode>.md.

use polyvisor_core::{CpuMode, Exception, Gpr, HypervisorMode, Next, Outcome, VcpuSnapshot};

/// At most this many platform effects (console writes, interrupts, wakes, overlays, ...) come
/// from one hypercall or MSR access: the largest legitimate one is a Hyper-V IPI or TLB flush
/// to every vCPU of a 64-vCPU set, or a Xen console write in 256-byte pieces (16 of them).
pub const MAX_EFFECTS_PER_OP: usize = 128;
/// At most this many bytes leave the guest through effects of one operation (a Xen console
/// write is continued after 4 KiB; a hypercall page overlay is 4 KiB).
pub const MAX_EFFECT_BYTES_PER_OP: usize = 16 * 1024;

/// Whether `out` is an answer `mode`'s ABI allows for the call in `vcpu`; `Err` says why not.
pub fn allowed(mode: HypervisorMode, vcpu: &VcpuSnapshot, out: &Outcome) -> Result<(), String> {
    let xen_args: &[Gpr] = match vcpu.mode {
        CpuMode::Long64 => &[Gpr::Rdi, Gpr::Rsi, Gpr::Rdx, Gpr::R10, Gpr::R8, Gpr::R9],
        _ => &[Gpr::Rbx, Gpr::Rcx, Gpr::Rdx, Gpr::Rsi, Gpr::Rdi, Gpr::Rbp],
    };
    let regs: &[Gpr] = match mode {
        HypervisorMode::Bhyve => &[Gpr::Rax, Gpr::Rdi],
        HypervisorMode::Kvm => &[Gpr::Rax],
        HypervisorMode::Hyperv => &[Gpr::Rax, Gpr::Rcx, Gpr::Rdx],
        HypervisorMode::Xen => &[Gpr::Rax],
    };
    for (reg, value) in out.writes.iter() {
        let xen_continuation =
            mode == HypervisorMode::Xen && out.next == Next::Retry && xen_args.contains(&reg);
        if !regs.contains(&reg) && !xen_continuation {
            return Err(format!("{mode} wrote {reg} = {value:#x}"));
        }
        if vcpu.mode != CpuMode::Long64 && value > u64::from(u32::MAX) {
            return Err(format!("{mode} gave a {} caller {reg} = {value:#x}", vcpu.mode));
        }
    }
    use HypervisorMode::{Bhyve, Hyperv, Xen};
    let next_ok = matches!(
        (&out.next, mode),
        (Next::Advance, _)
            | (Next::Inject(Exception::InvalidOpcode), Bhyve | Hyperv)
            | (Next::Retry, Hyperv | Xen)
            | (Next::Halt | Next::Exit(_), Xen)
    );
    if next_ok {
        Ok(())
    } else {
        Err(format!("{mode} answered {:?}", out.next))
    }
}
