//! The write-protect trap (hosts such as PVM, and any KVM whose VMCALL/VMMCALL is emulated).
//!
//! With `KVM_X86_QUIRK_FIX_HYPERCALL_INSN` on, KVM's emulator "fixes" a hypercall
//! instruction by writing the host's native encoding over it and re-executing. When the code
//! lies in a read-only memslot that write cannot land: it exits as `KVM_EXIT_MMIO` (write,
//! 3 bytes, `0f 01 c1` or `0f 01 d9`, at the GPA of RIP). That exit *is* the hypercall:
//!
//! 1. Before anything is applied, note the exit and the original bytes in memory.
//! 2. Complete the pending emulation: `immediate_exit = 1`, `KVM_RUN` returns EINTR with RIP
//!    still on the instruction and nothing written.
//! 3. Read the registers, check that the write landed exactly at the GPA of RIP and that the
//!    bytes there are a hypercall instruction; build the snapshot, dispatch, apply.
//!
//! Step 2 costs a whole `KVM_RUN` per call (about as much as the exit itself on PVM hosts).
//! When the patch is one write (the instruction does not cross a page) it is skipped: the
//! registers at the MMIO exit are already final (the emulator's write-back ran before the
//! exit), and the completion KVM runs at the next entry only retires the write, after it has
//! loaded the registers the VMM wrote. So the call is answered straight from the MMIO exit
//! and the next ordinary `KVM_RUN` resumes the guest after the instruction
//! ([`TrapConfig::defer_completion`](crate::trap::TrapConfig::defer_completion)). Split
//! patches and #UD/#GP injections still complete first.
//!
//! Any other write to a read-only slot is the guest's own: applied to RAM by the VMM (so
//! self-patching guests keep working), or, for a VMM-owned overlay page, answered with
//! #GP(0) with the vCPU's registers rolled back to the faulting instruction.
//!
//! Guests whose code shares pages with data (one RWX segment) are covered two ways: pages of
//! executable segments that contain a hypercall encoding are protected at load time, and a
//! watchdog kicks a vCPU that stops exiting; if its RIP is on a hypercall instruction in an
//! unprotected RAM page (KVM patching and re-executing it forever), that page is protected
//! and the vCPU resumes into the trap ([`on_spin_check`]).
//!
//! Calls at CPL 3 never reach user space on PVM hosts (the host kernel answers VMMCALL with
//! -KVM_EPERM and raises #UD for VMCALL itself); this strategy traps CPL 0 only.

use polyvisor_core::{Exception, HypercallInstruction, Next};

use crate::end::VmEnd;
use crate::exits::{bump, handle_exit, Action, VmServices};
use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::trap::{
    answer, apply_outcome, complete_pending, dispatch, rip_gpa, rip_linear, serve, translate_linear,
};
use crate::vcpu::{Exit, VcpuBackend, VcpuError};

/// Whether an MMIO write could be the emulator's whole hypercall patch.
pub fn is_patch_candidate(len: u8, data: &[u8; 8]) -> Option<HypercallInstruction> {
    if len != 3 {
        return None;
    }
    HypercallInstruction::from_bytes([data[0], data[1], data[2]])
}

/// Whether `data` is the part of a hypercall encoding that starts at byte `offset` (the
/// emulator splits its patch write where the instruction crosses a page).
pub fn is_patch_fragment(offset: usize, data: &[u8]) -> bool {
    [HypercallInstruction::Vmcall, HypercallInstruction::Vmmcall].iter().any(|insn| {
        let enc = insn.bytes();
        offset + data.len() <= enc.len()
            && !data.is_empty()
            && data.iter().enumerate().all(|(i, b)| enc.get(offset + i) == Some(b))
    })
}

/// The instruction at RIP: its bytes' guest-physical addresses (through the guest's page
/// tables; an instruction may cross a page) and the bytes themselves.
fn instruction_at_rip(
    vm: &dyn VmServices,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> Option<([u64; 3], [u8; 3])> {
    let first = rip_gpa(vm, regs, sregs)?;
    let mut gpas = [first, first + 1, first + 2];
    if first & 0xfff > 0xffd {
        // Crosses a page: translate the bytes on the next page separately.
        let linear = rip_linear(regs, sregs);
        for (k, g) in gpas.iter_mut().enumerate().skip(1) {
            let at = linear.wrapping_add(k as u64);
            *g = translate_linear(vm, sregs, at)?;
        }
    }
    let mut bytes = [0u8; 3];
    if gpas == [first, first + 1, first + 2] && first & 0xfff <= 0xffd {
        // Within one page: one read.
        if !vm.mem().read_visible(first, &mut bytes) {
            return None;
        }
        return Some((gpas, bytes));
    }
    for (b, g) in bytes.iter_mut().zip(gpas) {
        let mut one = [0u8; 1];
        if !vm.mem().read_visible(g, &mut one) {
            return None;
        }
        *b = one[0];
    }
    Some((gpas, bytes))
}

/// Handles `KVM_EXIT_MMIO` writes: hypercall patches, guest writes to protected RAM, writes
/// to overlays, and writes to nothing.
pub fn on_mmio_write(
    vm: &dyn VmServices,
    backend: &mut dyn VcpuBackend,
    vcpu: u32,
    gpa: u64,
    len: u8,
    data: [u8; 8],
) -> Result<Action, VcpuError> {
    let mem = vm.mem();
    let overlay = mem.overlay_at(gpa).is_some();
    let payload = data.get(..usize::from(len.min(8))).unwrap_or(&[]);
    if !overlay && !mem.is_ram(gpa) {
        return Ok(Action::End(VmEnd::Unhandled {
            vcpu,
            access: format!(
                "MMIO write of {len} bytes at {gpa:#x} = {payload:02x?} (no device there)"
            ),
            dump: crate::exits::dump(backend),
        }));
    }
    // Before anything is applied: the registers, and the original bytes of the instruction
    // at RIP. A write is the emulator's patch when it lands on those bytes, they are a
    // hypercall instruction, and it writes (part of) a hypercall encoding there.
    let before = backend.regs()?;
    let sregs = backend.sregs()?;
    let at_rip = instruction_at_rip(vm, &before, &sregs);
    let insn = at_rip.and_then(|(gpas, bytes)| {
        let insn = HypercallInstruction::from_bytes(bytes)?;
        let offset = gpas.iter().position(|g| *g == gpa)?;
        is_patch_fragment(offset, payload).then_some(insn)
    });
    let Some(insn) = insn else {
        // The guest's own write.
        if overlay {
            // A VMM-owned read-only page: #GP(0) at the writing instruction.
            if let Some(other) = complete_pending(backend, vm, vcpu)? {
                return handle_exit(other, vcpu, backend, vm);
            }
            backend.set_regs(&before)?;
            backend.inject_exception(Exception::GeneralProtection(0))?;
            return Ok(Action::Continue);
        }
        mem.write_ram(gpa, payload);
        bump(&vm.stats(vcpu).protected_writes);
        return Ok(Action::Continue);
    };
    // The hypercall. When the patch is one write (the instruction does not cross a page)
    // and the backend lets the next run finish the emulation after our register writes,
    // answer now: one KVM_RUN per call instead of two.
    let single = len == 3 && at_rip.is_some_and(|(gpas, _)| gpas == [gpa, gpa + 1, gpa + 2]);
    if single && vm.trap().defer_completion && backend.defers_mmio_write_completion() {
        return serve_deferred(vm, backend, vcpu, before, &sregs, insn, gpa);
    }
    // Otherwise complete the emulation without applying the patch (swallowing the rest of it
    // when the instruction crosses a page), then dispatch.
    for _ in 0..3 {
        match complete_pending(backend, vm, vcpu)? {
            None => {
                let regs = backend.regs()?;
                if regs.rip != before.rip {
                    // KVM moved on; nothing to answer.
                    return Ok(Action::Continue);
                }
                let sregs = backend.sregs()?;
                return serve(vm, backend, vcpu, regs, &sregs, insn);
            }
            Some(Exit::MmioWrite { gpa: g, len: l, data: d })
                if at_rip.is_some_and(|(gpas, _)| {
                    gpas.iter().position(|x| *x == g).is_some_and(|off| {
                        is_patch_fragment(off, d.get(..usize::from(l.min(8))).unwrap_or(&[]))
                    })
                }) => {}
            Some(other) => return handle_exit(other, vcpu, backend, vm),
        }
    }
    Ok(Action::End(VmEnd::InternalError {
        vcpu,
        what: "the emulator kept writing after a hypercall patch".into(),
        dump: crate::exits::dump(backend),
    }))
}

/// Answers a call from its MMIO exit, before KVM's pending emulation is completed: the
/// emulator's patch is a single write to read-only memory, whose completion in the next
/// `KVM_RUN` only retires that write, after KVM has loaded the registers written here
/// (`KVM_CAP_SYNC_REGS`' dirty registers or `KVM_SET_REGS`), and RIP at the exit is already
/// on the instruction. An outcome that injects an exception completes the emulation first,
/// so `KVM_SET_VCPU_EVENTS` never meets a pending one.
fn serve_deferred(
    vm: &dyn VmServices,
    backend: &mut dyn VcpuBackend,
    vcpu: u32,
    regs: kvm_regs,
    sregs: &kvm_sregs,
    insn: HypercallInstruction,
    insn_gpa: u64,
) -> Result<Action, VcpuError> {
    let mode = crate::trap::cpu_mode(sregs, regs.rflags);
    let outcome = dispatch(vm, vcpu, &regs, sregs, insn);
    if matches!(outcome.next, Next::Inject(_)) {
        if let Some(other) = complete_pending(backend, vm, vcpu)? {
            // Not expected for a single write; answer the call, then handle what came.
            apply_outcome(backend, regs, mode, outcome, None)?;
            return handle_exit(other, vcpu, backend, vm);
        }
    }
    answer(vm, backend, vcpu, regs, sregs, outcome, Some(insn_gpa))
}

/// The watchdog kicked this vCPU because it stopped exiting: if it is spinning on a
/// hypercall instruction in an unprotected RAM page, protect the page (restoring the
/// original encoding if KVM already rewrote it) so the next execution traps.
pub fn on_spin_check(
    vm: &dyn VmServices,
    backend: &mut dyn VcpuBackend,
    vcpu: u32,
) -> Result<Action, VcpuError> {
    let regs = backend.regs()?;
    let sregs = backend.sregs()?;
    let Some(gpa) = rip_gpa(vm, &regs, &sregs) else {
        return Ok(Action::Continue);
    };
    let mem = vm.mem();
    let mut now = [0u8; 3];
    if !mem.is_ram(gpa) || mem.overlay_at(gpa).is_some() || !mem.read_visible(gpa, &mut now) {
        return Ok(Action::Continue);
    }
    if HypercallInstruction::from_bytes(now).is_none() {
        return Ok(Action::Continue);
    }
    // KVM rewrote the call to the host's encoding; put back what the image had.
    if let Some(orig) = vm.original_bytes(gpa) {
        if orig != now && HypercallInstruction::from_bytes(orig).is_some() {
            mem.write_ram(gpa, &orig);
        }
    }
    match vm.protect_page_now(vcpu, gpa) {
        Ok(true) => {
            bump(&vm.stats(vcpu).lazy_protects);
            tracing::debug!(vcpu, gpa, "protected a page with a spinning hypercall");
            Ok(Action::Continue)
        }
        Ok(false) => Ok(Action::Continue),
        Err(e) => Ok(Action::End(VmEnd::VmmFailure(format!(
            "cannot protect the page of a hypercall at {gpa:#x}: {e}"
        )))),
    }
}

/// Scans executable, writable segment bytes for hypercall encodings; returns the GPAs of the
/// pages that hold one (these are protected at load time).
pub fn pages_with_hypercalls(gpa: u64, bytes: &[u8]) -> Vec<u64> {
    let mut pages = Vec::new();
    for (i, w) in bytes.windows(3).enumerate() {
        if let [a, b, c] = w {
            if HypercallInstruction::from_bytes([*a, *b, *c]).is_some() {
                // Both pages when the encoding straddles a page boundary.
                for at in [gpa + i as u64, gpa + i as u64 + 2] {
                    let page = at & !0xfff;
                    if pages.last() != Some(&page) {
                        pages.push(page);
                    }
                }
            }
        }
    }
    pages.dedup();
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        let mut d = [0u8; 8];
        d[..3].copy_from_slice(&[0x0f, 0x01, 0xc1]);
        assert_eq!(is_patch_candidate(3, &d), Some(HypercallInstruction::Vmcall));
        assert_eq!(is_patch_candidate(4, &d), None);
        d[2] = 0xd9;
        assert_eq!(is_patch_candidate(3, &d), Some(HypercallInstruction::Vmmcall));
        d[2] = 0x00;
        assert_eq!(is_patch_candidate(3, &d), None);
    }

    #[test]
    fn scan_finds_pages() {
        let mut code = vec![0x90u8; 0x3000];
        code[0x10..0x13].copy_from_slice(&[0x0f, 0x01, 0xd9]);
        code[0x1ffe..0x2001].copy_from_slice(&[0x0f, 0x01, 0xc1]);
        assert_eq!(pages_with_hypercalls(0x10_0000, &code), vec![0x10_0000, 0x10_1000, 0x10_2000]);
        assert!(pages_with_hypercalls(0x10_0000, &[0x0f, 0x01]).is_empty());
    }
}
