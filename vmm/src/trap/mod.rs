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
    let outcome = dispatch(vm, vcpu, &regs, sregs, instruction);
    answer(vm, backend, vcpu, regs, sregs, outcome, None)
}

/// Applies a dispatched call's outcome (RIP on the instruction), performing a hypercall
/// page's `ret` where [`page_return`] allows, and counts it. `insn_gpa` as for
/// [`page_return`].
pub fn answer(
    vm: &dyn VmServices,
    backend: &mut dyn VcpuBackend,
    vcpu: u32,
    regs: kvm_regs,
    sregs: &kvm_sregs,
    outcome: Outcome,
    insn_gpa: Option<u64>,
) -> Result<Action, VcpuError> {
    let mode = cpu_mode(sregs, regs.rflags);
    let ret = page_return(vm, &regs, sregs, &outcome, insn_gpa);
    if ret.is_some() {
        bump(&vm.stats(vcpu).page_returns);
    }
    let action = apply_outcome(backend, regs, mode, outcome, ret)?;
    if action == Action::Halt {
        // A halting hypercall counts as a halt, as HLT does.
        bump(&vm.stats(vcpu).halts);
    }
    Ok(action)
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

const RFLAGS_TF: u64 = 1 << 8;
const CR4_CET: u64 = 1 << 23;
const RET: u8 = 0xc3;

/// Where a call resumes when the instruction after it is a `ret`, as in hypercall pages
/// (Hyper-V's `vmcall; ret`, Xen's `mov $nr, %eax; vmcall; ret`): the VMM performs that
/// `ret` itself, popping the return address, so the guest does not execute it. That saves
/// nothing measurable on VMX/SVM, and one emulated instruction (about 0.7 us) on hosts that
/// emulate every guest instruction (PVM). Returns the new (RIP, RSP), or `None` whenever
/// anything is unusual and the guest should run the `ret` itself: an outcome other than a
/// plain advance, or one that writes RSP; single-stepping (TF) or CET; a 16-bit or
/// unreadable stack, or one crossing a page; a return address outside CS or not canonical.
/// `insn_gpa` is the guest-physical address of the call instruction when the caller knows
/// it (saves a page walk).
pub fn page_return(
    vm: &dyn VmServices,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    outcome: &Outcome,
    insn_gpa: Option<u64>,
) -> Option<(u64, u64)> {
    if !matches!(outcome.next, Next::Advance)
        || outcome.writes.get(Gpr::Rsp).is_some()
        || regs.rflags & RFLAGS_TF != 0
        || sregs.cr4 & CR4_CET != 0
    {
        return None;
    }
    let mode = cpu_mode(sregs, regs.rflags);
    let (width, stack) = match mode {
        CpuMode::Long64 => (8u64, regs.rsp),
        CpuMode::Protected32 if sregs.ss.db == 1 && sregs.cs.l == 0 => {
            let esp = regs.rsp & 0xffff_ffff;
            // The 4 bytes popped must lie inside SS (expand-up).
            if esp + 3 > u64::from(sregs.ss.limit) {
                return None;
            }
            (4, sregs.ss.base.wrapping_add(esp) & 0xffff_ffff)
        }
        _ => return None,
    };
    // The byte after the call instruction, in the same page.
    let after = rip_linear(regs, sregs).checked_add(HypercallInstruction::LEN)?;
    if after & 0xfff == 0 {
        return None;
    }
    let mut byte = [0u8; 1];
    let gpa = match insn_gpa {
        // Same page offset as RIP: the instruction does not cross a page.
        Some(g) if (after & 0xfff).checked_sub(HypercallInstruction::LEN) == Some(g & 0xfff) => {
            g + HypercallInstruction::LEN
        }
        _ => translate_linear(vm, sregs, after)?,
    };
    if !vm.mem().read_visible(gpa, &mut byte) || byte != [RET] {
        return None;
    }
    if stack & 0xfff > 0x1000 - width {
        return None;
    }
    let mut raw = [0u8; 8];
    let slot = raw.get_mut(..usize::try_from(width).ok()?)?;
    if !vm.mem().read_visible(translate_linear(vm, sregs, stack)?, slot) {
        return None;
    }
    let target = u64::from_le_bytes(raw);
    match mode {
        CpuMode::Long64 => {
            // Canonical (48-bit; LA57 guests are not walked at all).
            let canonical = ((target as i64) << 16 >> 16) as u64 == target;
            canonical.then_some((target, regs.rsp.wrapping_add(8)))
        }
        _ => (target <= u64::from(sregs.cs.limit))
            .then_some((target, (regs.rsp.wrapping_add(4)) & 0xffff_ffff)),
    }
}

/// Applies an outcome to a vCPU whose RIP is on the hypercall instruction. `ret` is where
/// an advancing call resumes instead of after the instruction (see [`page_return`]).
pub fn apply_outcome(
    backend: &mut dyn VcpuBackend,
    mut regs: kvm_regs,
    mode: CpuMode,
    outcome: Outcome,
    ret: Option<(u64, u64)>,
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
            match ret {
                Some((rip, rsp)) => {
                    regs.rip = rip;
                    regs.rsp = rsp;
                }
                None => regs.rip = next,
            }
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
