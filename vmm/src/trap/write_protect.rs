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

use polyvisor_core::{Exception, HypercallInstruction};

use crate::end::VmEnd;
use crate::exits::{bump, handle_exit, Action, VmServices};
use crate::trap::{complete_pending, rip_gpa, serve};
use crate::vcpu::{VcpuBackend, VcpuError};

/// Whether an MMIO write could be the emulator's hypercall patch.
pub fn is_patch_candidate(len: u8, data: &[u8; 8]) -> Option<HypercallInstruction> {
    if len != 3 {
        return None;
    }
    HypercallInstruction::from_bytes([data[0], data[1], data[2]])
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
    let candidate = is_patch_candidate(len, &data);
    if candidate.is_none() && !overlay {
        if mem.is_ram(gpa) && mem.write_ram(gpa, payload) {
            bump(&vm.stats(vcpu).protected_writes);
            return Ok(Action::Continue);
        }
        return Ok(Action::End(VmEnd::Unhandled {
            vcpu,
            access: format!(
                "MMIO write of {len} bytes at {gpa:#x} = {payload:02x?} (no device there)"
            ),
            dump: crate::exits::dump(backend),
        }));
    }
    // The original bytes, before the emulation is completed.
    let mut original = [0u8; 3];
    let have_original = mem.read_visible(gpa, &mut original);
    let before = backend.regs()?;
    if let Some(other) = complete_pending(backend)? {
        // Not a lone patch write: the instruction goes on with more exits. Treat this write
        // as the guest's own and handle what came next.
        if !overlay && mem.is_ram(gpa) {
            mem.write_ram(gpa, payload);
            bump(&vm.stats(vcpu).protected_writes);
        }
        return handle_exit(other, vcpu, backend, vm);
    }
    let regs = backend.regs()?;
    let sregs = backend.sregs()?;
    if candidate.is_some() && have_original && regs.rip == before.rip {
        if let Some(insn) = HypercallInstruction::from_bytes(original) {
            if rip_gpa(vm, &regs, &sregs) == Some(gpa) {
                return serve(vm, backend, vcpu, regs, &sregs, insn);
            }
        }
    }
    if overlay {
        // A guest write to a VMM-owned read-only page: #GP(0) at the writing instruction.
        backend.set_regs(&before)?;
        backend.inject_exception(Exception::GeneralProtection(0))?;
        return Ok(Action::Continue);
    }
    if mem.is_ram(gpa) && mem.write_ram(gpa, payload) {
        bump(&vm.stats(vcpu).protected_writes);
        return Ok(Action::Continue);
    }
    Ok(Action::End(VmEnd::Unhandled {
        vcpu,
        access: format!("MMIO write of {len} bytes at {gpa:#x} = {payload:02x?} (no device there)"),
        dump: crate::exits::dump(backend),
    }))
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
