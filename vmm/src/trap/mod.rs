//! Hypercall trap strategies: how a guest's VMCALL/VMMCALL becomes a [`VcpuSnapshot`] the
//! engine can dispatch, and how the engine's [`Outcome`] is applied to the vCPU.
//!
//! - [`TrapStrategy::XenIntercept`]: KVM's Xen hypercall intercept (VMX/SVM hosts with
//!   `CONFIG_KVM_XEN`): every VMCALL/VMMCALL at any CPL exits as `KVM_EXIT_XEN`.
//!   See [`xen_intercept`]; untested on hardware (these development hosts lack it).
//! - [`TrapStrategy::WriteProtect`]: guest code and hypercall pages in read-only memslots;
//!   KVM's emulator rewrites a hypercall instruction before re-executing it, and that patch
//!   write to read-only memory exits as MMIO. See [`write_protect`]. CPL 0 only.
//! - [`TrapStrategy::None`]: no trap; personalities with hypercalls enabled are refused.
//!
//! The strategy is chosen at start-up by running a tiny probe VM ([`probe`]).

pub mod probe;
pub mod write_protect;
pub mod xen_intercept;

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Instant;

use kvm_bindings::{kvm_regs, kvm_sregs};
use polyvisor_config::InstructionChoice;
use polyvisor_core::{
    CpuMode, Exception, Gpr, HypercallInstruction, Next, Outcome, Registers, VcpuSnapshot,
};

use crate::end::VmEnd;
use crate::exits::{bump, Action, VmServices};
use crate::paging::{self, PagingRegs};
use crate::vcpu::{VcpuBackend, VcpuError};

/// How hypercall instructions reach the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrapStrategy {
    /// `KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL`: every call, any CPL, exits as `KVM_EXIT_XEN`.
    XenIntercept,
    /// Read-only code slots: the emulator's patch write is the trap (CPL 0 only).
    WriteProtect,
    /// No trap.
    None,
}

impl fmt::Display for TrapStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrapStrategy::XenIntercept => "xen-intercept",
            TrapStrategy::WriteProtect => "write-protect",
            TrapStrategy::None => "none",
        })
    }
}

impl TrapStrategy {
    /// Whether calls made at CPL 3 reach the VMM with this strategy.
    pub fn traps_cpl3(self) -> bool {
        matches!(self, TrapStrategy::XenIntercept)
    }
}

/// The trap as configured for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrapConfig {
    /// The strategy.
    pub strategy: TrapStrategy,
    /// Which instructions the guest may use.
    pub instruction: InstructionChoice,
    /// The host CPU's own instruction (what KVM patches calls to).
    pub native: HypercallInstruction,
    /// Write-protect: answer a call straight from its MMIO exit and let the next `KVM_RUN`
    /// finish KVM's pending emulation, instead of a completion `KVM_RUN` first (see
    /// [`write_protect`]). On by default; off only to measure the difference.
    pub defer_completion: bool,
}

impl TrapConfig {
    /// Whether `insn` is accepted; the other one raises #UD, as on real hardware.
    pub fn accepts(&self, insn: HypercallInstruction) -> bool {
        match self.instruction {
            InstructionChoice::Auto => true,
            InstructionChoice::Vmcall => insn == HypercallInstruction::Vmcall,
            InstructionChoice::Vmmcall => insn == HypercallInstruction::Vmmcall,
        }
    }
}

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_VM: u64 = 1 << 17;

/// The execution mode from CR0.PE, EFER.LMA, CS.L and RFLAGS.VM.
pub fn cpu_mode(sregs: &kvm_sregs, rflags: u64) -> CpuMode {
    if sregs.cr0 & CR0_PE == 0 || rflags & RFLAGS_VM != 0 {
        CpuMode::Real
    } else if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        CpuMode::Long64
    } else {
        CpuMode::Protected32
    }
}

/// The CPL: SS.DPL in protected mode (CS.DPL differs for conforming code), 0 in real mode.
pub fn cpl(sregs: &kvm_sregs, rflags: u64) -> u8 {
    match cpu_mode(sregs, rflags) {
        CpuMode::Real => {
            if rflags & RFLAGS_VM != 0 {
                3
            } else {
                0
            }
        }
        _ => sregs.ss.dpl & 3,
    }
}

/// The linear address of RIP.
pub fn rip_linear(regs: &kvm_regs, sregs: &kvm_sregs) -> u64 {
    match cpu_mode(sregs, regs.rflags) {
        CpuMode::Long64 => regs.rip,
        _ => sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff,
    }
}

/// The guest-physical address of RIP, by a walk of the guest's page tables.
pub fn rip_gpa(vm: &dyn VmServices, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<u64> {
    translate_linear(vm, sregs, rip_linear(regs, sregs))
}

/// The registers a page walk needs.
pub fn paging_regs(sregs: &kvm_sregs) -> PagingRegs {
    PagingRegs { cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer }
}

/// A guest linear address through the vCPU's paging, read from guest memory.
pub fn translate_linear(vm: &dyn VmServices, sregs: &kvm_sregs, linear: u64) -> Option<u64> {
    let pr = paging_regs(sregs);
    let mem = vm.mem();
    let read8 = |gpa: u64| {
        let mut b = [0u8; 8];
        mem.read_visible(gpa, &mut b).then(|| u64::from_le_bytes(b))
    };
    paging::translate(&pr, linear, &read8)
}

/// The registers as the engine sees them.
pub fn registers(r: &kvm_regs) -> Registers {
    Registers {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rbp: r.rbp,
        rsp: r.rsp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn set_gpr(r: &mut kvm_regs, reg: Gpr, v: u64) {
    let slot = match reg {
        Gpr::Rax => &mut r.rax,
        Gpr::Rbx => &mut r.rbx,
        Gpr::Rcx => &mut r.rcx,
        Gpr::Rdx => &mut r.rdx,
        Gpr::Rsi => &mut r.rsi,
        Gpr::Rdi => &mut r.rdi,
        Gpr::Rbp => &mut r.rbp,
        Gpr::Rsp => &mut r.rsp,
        Gpr::R8 => &mut r.r8,
        Gpr::R9 => &mut r.r9,
        Gpr::R10 => &mut r.r10,
        Gpr::R11 => &mut r.r11,
        Gpr::R12 => &mut r.r12,
        Gpr::R13 => &mut r.r13,
        Gpr::R14 => &mut r.r14,
        Gpr::R15 => &mut r.r15,
    };
    *slot = v;
}

/// The snapshot the engine dispatches.
pub fn snapshot(
    vcpu: u32,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    instruction: HypercallInstruction,
) -> VcpuSnapshot {
    VcpuSnapshot {
        vcpu,
        regs: registers(regs),
        cpl: cpl(sregs, regs.rflags),
        mode: cpu_mode(sregs, regs.rflags),
        instruction,
    }
}

/// Dispatches a trapped call: `regs` are the vCPU's registers with RIP on the instruction
/// and no pending emulation. Applies the outcome.
pub fn serve(
    vm: &dyn VmServices,
    backend: &mut dyn VcpuBackend,
    vcpu: u32,
    regs: kvm_regs,
    sregs: &kvm_sregs,
    instruction: HypercallInstruction,
) -> Result<Action, VcpuError> {
    let mode = cpu_mode(sregs, regs.rflags);
    let outcome = dispatch(vm, vcpu, &regs, sregs, instruction);
    apply_outcome(backend, regs, mode, outcome)
}

/// The engine's answer to a trapped call (RIP on the instruction): the instruction the
/// configuration does not accept is #UD, as on real hardware; anything else is dispatched.
pub fn dispatch(
    vm: &dyn VmServices,
    vcpu: u32,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    instruction: HypercallInstruction,
) -> Outcome {
    if !vm.trap().accepts(instruction) {
        return Outcome::inject(Exception::InvalidOpcode);
    }
    bump(&vm.stats(vcpu).hypercalls);
    let snap = snapshot(vcpu, regs, sregs, instruction);
    crate::platform::with_caller(vcpu, paging_regs(sregs), snap.cpl, || {
        vm.dispatch().hypercall(&snap, vm.mem().ram(), vm.platform())
    })
}

/// Applies an outcome to a vCPU whose RIP is on the hypercall instruction.
pub fn apply_outcome(
    backend: &mut dyn VcpuBackend,
    mut regs: kvm_regs,
    mode: CpuMode,
    outcome: Outcome,
) -> Result<Action, VcpuError> {
    let at = regs.rip;
    let next = match mode {
        CpuMode::Long64 => at.wrapping_add(HypercallInstruction::LEN),
        _ => at.wrapping_add(HypercallInstruction::LEN) & 0xffff_ffff,
    };
    for (reg, value) in outcome.writes.iter() {
        set_gpr(&mut regs, reg, value);
    }
    match outcome.next {
        Next::Advance => {
            regs.rip = next;
            backend.set_regs(&regs)?;
            Ok(Action::Continue)
        }
        Next::Retry => {
            regs.rip = at;
            backend.set_regs(&regs)?;
            Ok(Action::Continue)
        }
        Next::Inject(exception) => {
            regs.rip = at;
            backend.set_regs(&regs)?;
            backend.inject_exception(exception)?;
            Ok(Action::Continue)
        }
        Next::Halt => {
            regs.rip = next;
            backend.set_regs(&regs)?;
            Ok(Action::Halt)
        }
        Next::Exit(reason) => {
            regs.rip = next;
            backend.set_regs(&regs)?;
            Ok(Action::End(VmEnd::Guest(reason)))
        }
    }
}

/// Runs the vCPU once with `immediate_exit` set, which completes a pending emulation (an
/// MMIO write or a Xen hypercall) without entering the guest. Returns `None` when KVM
/// returned EINTR as expected, or the exit the completion produced instead. Counts the run
/// and its duration in vCPU `vcpu`'s stats (`completions`, `completion_ns`).
pub fn complete_pending(
    backend: &mut dyn VcpuBackend,
    vm: &dyn VmServices,
    vcpu: u32,
) -> Result<Option<crate::vcpu::Exit>, VcpuError> {
    let started = Instant::now();
    backend.set_immediate_exit(true);
    let r = backend.run();
    backend.set_immediate_exit(false);
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let stats = vm.stats(vcpu);
    bump(&stats.completions);
    stats.completion_ns.fetch_add(ns, Ordering::Relaxed);
    if let Some(t) = vm.exit_timing(vcpu) {
        t.add_completion(ns);
    }
    match r? {
        crate::vcpu::Exit::Interrupted => Ok(None),
        other => Ok(Some(other)),
    }
}
