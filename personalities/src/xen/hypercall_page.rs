//! The hypercall page and its MSR.
//!
//! A write of a page's GPA to MSR 0x40000000 (`guest_wrmsr_xen`, `xen/arch/x86/msr.c`) fills
//! that page of guest RAM: 0xCC everywhere (`init_hypercall_page`,
//! `xen/arch/x86/domain.c`), then 128 stubs of 32 bytes, `b8 <nr:imm32>` (mov $nr,%eax), the
//! host's VMCALL or VMMCALL, `c3` (ret); stub 23 (iret) is `0f 0b` (ud2)
//! (`vmx_init_hypercall_page` / `svm_init_hypercall_page`). A non-zero page index (bits 11:0)
//! or a frame that is not RAM is #GP. Reads return 0. The page is ordinary guest RAM, so the
//! VMM is asked to make calls through it trap ([`Platform::protect_code`]).

use polyvisor_core::{HypercallInstruction, MsrContext, MsrWrite, PlatformError};
use vm_memory::{Bytes, GuestAddress};

use super::abi::{nr, PAGE_SIZE};
use super::guest::le;

/// Bytes in one stub.
pub const STUB_LEN: usize = 32;
/// Bytes in the page.
pub const PAGE_LEN: usize = PAGE_SIZE as usize;

/// The page's contents for a host whose hypercall instruction is `instruction`.
pub fn contents(instruction: HypercallInstruction) -> [u8; PAGE_LEN] {
    let mut page = [0xccu8; PAGE_LEN];
    for (i, stub) in (0u32..).zip(page.chunks_exact_mut(STUB_LEN)) {
        if u64::from(i) == nr::iret {
            le::put(stub, 0, &[0x0f, 0x0b]); // ud2
            continue;
        }
        le::put(stub, 0, &[0xb8]); // mov $nr, %eax
        le::put(stub, 1, &i.to_le_bytes());
        le::put(stub, 5, &instruction.bytes());
        le::put(stub, 8, &[0xc3]); // ret
    }
    page
}

/// A WRMSR of the hypercall-page MSR.
pub fn write(ctx: &MsrContext<'_>, instruction: HypercallInstruction, value: u64) -> MsrWrite {
    if value & (PAGE_SIZE - 1) != 0 {
        // "wrmsr hypercall page index %#x unsupported"
        return MsrWrite::Gp;
    }
    let page = contents(instruction);
    if ctx.memory.write_slice(&page, GuestAddress(value)).is_err() {
        // "Bad GMFN"
        return MsrWrite::Gp;
    }
    match ctx.platform.protect_code(value, PAGE_SIZE) {
        // A VMM whose trap needs no protection (an intercept) declines; the page works.
        Ok(()) | Err(PlatformError::Unsupported(_)) => MsrWrite::Done,
        // Calls through the page would not trap: refuse the write as Xen refuses a page it
        // cannot set up.
        Err(_) => MsrWrite::Gp,
    }
}
