//! Guest buffers named by hypercall arguments.
//!
//! Xen HVM hypercall arguments are guest *linear* addresses (`copy_from_guest` is
//! `hvm_copy_from_guest_linear`), so every access is split at 4 KiB page boundaries and each
//! page translated by [`Platform::translate_gva`] (QEMU's Xen emulation does the same with
//! `KVM_TRANSLATE`, `target/i386/kvm/xen-emu.c` `kvm_gva_rw`). A VMM that cannot translate
//! leaves addresses as they are, which is right for guests running with paging off or
//! identity-mapped. Frame numbers (GFNs such as `xen_add_to_physmap.gpfn`) are physical and do
//! not come through here. Any failure is `-EFAULT`.

use polyvisor_core::{Call, GuestMemoryMmap, Platform, PlatformError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::abi::PAGE_SIZE;
use super::codec::Width;

/// A guest access failed: the hypercall answers `-EFAULT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault;

/// The calling vCPU's view of guest memory.
pub struct Guest<'a> {
    memory: &'a GuestMemoryMmap,
    platform: &'a dyn Platform,
    vcpu: u32,
    /// The caller's convention (structure layouts).
    pub width: Width,
}

impl<'a> Guest<'a> {
    /// The view of the vCPU making `call`.
    pub fn of(call: &Call<'a>) -> Self {
        Guest {
            memory: call.memory,
            platform: call.platform,
            vcpu: call.vcpu.vcpu,
            width: Width::of(call.vcpu),
        }
    }

    /// The guest physical address of linear address `gva`.
    fn gpa(&self, gva: u64, write: bool) -> Result<u64, Fault> {
        match self.platform.translate_gva(self.vcpu, gva, write) {
            Ok(gpa) => Ok(gpa),
            Err(PlatformError::Unsupported(_)) => Ok(gva),
            Err(_) => Err(Fault),
        }
    }

    /// Calls `each(gpa, offset, len)` for the page-bounded pieces of `[gva, gva + len)`.
    fn pieces(
        &self,
        gva: u64,
        len: usize,
        write: bool,
        mut each: impl FnMut(u64, usize, usize) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        let len64 = u64::try_from(len).map_err(|_| Fault)?;
        // The whole range must exist in the caller's address space, without wrapping.
        let end = gva.checked_add(len64).ok_or(Fault)?;
        if self.width == Width::W32 && end > 1 << 32 {
            return Err(Fault);
        }
        let mut done = 0usize;
        while done < len {
            let at = gva.wrapping_add(done as u64);
            let in_page = PAGE_SIZE - (at % PAGE_SIZE);
            let n = usize::try_from(in_page).unwrap_or(usize::MAX).min(len - done);
            let gpa = self.gpa(at, write)?;
            each(gpa, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// Fills `buf` from guest linear address `gva`.
    pub fn read(&self, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let memory = self.memory;
        self.pieces(gva, buf.len(), false, |gpa, off, n| {
            let dst = buf.get_mut(off..off + n).ok_or(Fault)?;
            memory.read_slice(dst, GuestAddress(gpa)).map_err(|_| Fault)
        })
    }

    /// Writes `buf` to guest linear address `gva`.
    pub fn write(&self, gva: u64, buf: &[u8]) -> Result<(), Fault> {
        let memory = self.memory;
        self.pieces(gva, buf.len(), true, |gpa, off, n| {
            let src = buf.get(off..off + n).ok_or(Fault)?;
            memory.write_slice(src, GuestAddress(gpa)).map_err(|_| Fault)
        })
    }

    /// Whether `[gva, gva + len)` is mapped (writable when `write`) and backed by RAM, without
    /// touching it: Xen's `guest_handle_okay`.
    pub fn check(&self, gva: u64, len: usize, write: bool) -> Result<(), Fault> {
        let memory = self.memory;
        self.pieces(gva, len, write, |gpa, _, n| {
            if memory.check_range(GuestAddress(gpa), n) {
                Ok(())
            } else {
                Err(Fault)
            }
        })
    }

    /// A fixed-size structure read from `gva`.
    pub fn read_array<const N: usize>(&self, gva: u64) -> Result<[u8; N], Fault> {
        let mut buf = [0u8; N];
        self.read(gva, &mut buf)?;
        Ok(buf)
    }
}

/// Little-endian field access on a structure image, bounds-checked (a short image reads as
/// zero and ignores writes, which cannot happen with the fixed layouts used here).
pub mod le {
    /// `u16` at `off`.
    pub fn u16_at(buf: &[u8], off: usize) -> u16 {
        let mut b = [0u8; 2];
        if let Some(src) = buf.get(off..off + 2) {
            b.copy_from_slice(src);
        }
        u16::from_le_bytes(b)
    }

    /// `u32` at `off`.
    pub fn u32_at(buf: &[u8], off: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(src) = buf.get(off..off + 4) {
            b.copy_from_slice(src);
        }
        u32::from_le_bytes(b)
    }

    /// `u64` at `off`.
    pub fn u64_at(buf: &[u8], off: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(src) = buf.get(off..off + 8) {
            b.copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    }

    /// A pointer-sized field (`width` bytes) at `off`.
    pub fn word_at(buf: &[u8], off: usize, width: usize) -> u64 {
        if width == 4 {
            u64::from(u32_at(buf, off))
        } else {
            u64_at(buf, off)
        }
    }

    /// Stores `bytes` at `off`.
    pub fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
        if let Some(dst) = buf.get_mut(off..off + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
}

/// RAM as the guest's memory map shows it: the VMM's memory regions, contiguous ones merged,
/// in address order. Yields `(start, length)`.
pub fn ram_ranges(memory: &GuestMemoryMmap) -> impl Iterator<Item = (u64, u64)> + '_ {
    use vm_memory::GuestMemoryRegion;
    let mut regions = memory.iter().map(|r| (r.start_addr().0, r.len())).peekable();
    std::iter::from_fn(move || {
        let (start, mut len) = regions.next()?;
        while let Some(&(next, more)) = regions.peek() {
            if start.checked_add(len) != Some(next) {
                break;
            }
            len = len.saturating_add(more);
            regions.next();
        }
        Some((start, len))
    })
}

/// Whether the 4 KiB frame `gfn` is guest RAM.
pub fn is_ram_frame(memory: &GuestMemoryMmap, gfn: u64) -> bool {
    gfn.checked_mul(PAGE_SIZE)
        .is_some_and(|gpa| memory.check_range(GuestAddress(gpa), PAGE_SIZE as usize))
}
