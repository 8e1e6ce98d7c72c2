//! Shared ring pages (XenStore's `xenstore_domain_interface`, the console's
//! `xencons_interface`) as the VMM sees them: [`RingAccess`] is one 4 KiB page, in guest
//! memory ([`GuestPage`]) or in a plain byte buffer (unit tests, fuzzers). Every access is
//! bounds-checked; an access past the page fails instead of touching anything.

use std::sync::atomic::{fence, Ordering};

use polyvisor_core::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::abi::PAGE_SIZE;

/// A ring's contents are not what the protocol allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// A producer index more than the ring's size ahead of its consumer index.
    Index,
    /// A message the protocol forbids (an oversized XenStore message).
    Protocol,
    /// The page cannot be read or written.
    Fault,
}

/// One ring page.
pub trait RingAccess {
    /// Fills `buf` from `offset` in the page; false (and `buf` untouched) if out of range.
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool;
    /// Writes `buf` at `offset` in the page; false (and nothing written) if out of range.
    fn write(&mut self, offset: usize, buf: &[u8]) -> bool;

    /// The little-endian `u32` at `offset`: a ring index (or control field). Accesses that
    /// follow are not moved before it (the `rmb()`/`mb()` after reading an index in
    /// `io/ring.h` users: the data a producer index covers is read after it, and a consumer
    /// index is read before the space it frees is overwritten).
    fn read_u32(&self, offset: usize) -> Result<u32, RingError> {
        let mut b = [0u8; 4];
        let ok = self.read(offset, &mut b);
        fence(Ordering::Acquire);
        if ok {
            Ok(u32::from_le_bytes(b))
        } else {
            Err(RingError::Fault)
        }
    }

    /// Stores a little-endian `u32` at `offset`: a ring index (or control field). Accesses
    /// before it are not moved after it (the `wmb()`/`mb()` before publishing an index: the
    /// data is written, or read, before the other side sees the index move).
    fn write_u32(&mut self, offset: usize, value: u32) -> Result<(), RingError> {
        fence(Ordering::Release);
        if self.write(offset, &value.to_le_bytes()) {
            Ok(())
        } else {
            Err(RingError::Fault)
        }
    }
}

const PAGE: usize = PAGE_SIZE as usize;

fn in_page(offset: usize, len: usize) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= PAGE)
}

/// A ring page in guest memory at `gpa`.
#[derive(Debug, Clone, Copy)]
pub struct GuestPage<'a> {
    /// Guest memory.
    pub memory: &'a GuestMemoryMmap,
    /// The page's guest physical address.
    pub gpa: u64,
}

impl RingAccess for GuestPage<'_> {
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        in_page(offset, buf.len())
            && self
                .memory
                .read_slice(buf, GuestAddress(self.gpa.wrapping_add(offset as u64)))
                .is_ok()
    }
    fn write(&mut self, offset: usize, buf: &[u8]) -> bool {
        in_page(offset, buf.len())
            && self
                .memory
                .write_slice(buf, GuestAddress(self.gpa.wrapping_add(offset as u64)))
                .is_ok()
    }
}

impl RingAccess for [u8] {
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        match self.get(offset..offset.saturating_add(buf.len())) {
            Some(src) if in_page(offset, buf.len()) => {
                buf.copy_from_slice(src);
                true
            }
            _ => false,
        }
    }
    fn write(&mut self, offset: usize, buf: &[u8]) -> bool {
        if !in_page(offset, buf.len()) {
            return false;
        }
        match self.get_mut(offset..offset.saturating_add(buf.len())) {
            Some(dst) => {
                dst.copy_from_slice(buf);
                true
            }
            None => false,
        }
    }
}

/// Bytes waiting between `cons` and `prod` in a ring of `size` bytes (a power of two);
/// [`RingError::Index`] when the producer is more than `size` ahead.
pub fn used(cons: u32, prod: u32, size: u32) -> Result<u32, RingError> {
    let n = prod.wrapping_sub(cons);
    if n > size {
        Err(RingError::Index)
    } else {
        Ok(n)
    }
}

/// The pieces of `len` bytes at free-running index `idx` in a ring of `size` bytes (a power
/// of two): `(offset in the ring, offset in the buffer, length)`, split at the wrap.
fn pieces(size: u32, idx: u32, len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let off = (idx.wrapping_add(done as u32) & (size - 1)) as usize;
        let n = (size as usize - off).min(len - done);
        let piece = (off, done, n);
        done += n;
        Some(piece)
    })
}

/// Copies `out.len()` bytes from the ring data area at `data` (of `size` bytes) starting at
/// free-running index `idx`.
pub fn copy_out(
    ring: &(impl RingAccess + ?Sized),
    data: usize,
    size: u32,
    idx: u32,
    out: &mut [u8],
) -> Result<(), RingError> {
    for (off, at, n) in pieces(size, idx, out.len()) {
        let dst = out.get_mut(at..at + n).ok_or(RingError::Fault)?;
        if !ring.read(data + off, dst) {
            return Err(RingError::Fault);
        }
    }
    Ok(())
}

/// Copies `bytes` into the ring data area at `data` (of `size` bytes) from free-running index
/// `idx`.
pub fn copy_in(
    ring: &mut (impl RingAccess + ?Sized),
    data: usize,
    size: u32,
    idx: u32,
    bytes: &[u8],
) -> Result<(), RingError> {
    for (off, at, n) in pieces(size, idx, bytes.len()) {
        let src = bytes.get(at..at + n).ok_or(RingError::Fault)?;
        if !ring.write(data + off, src) {
            return Err(RingError::Fault);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_past_the_page_fail() {
        let mut page = vec![0u8; PAGE];
        let mut b = [0u8; 4];
        assert!(!page[..].read(PAGE - 2, &mut b));
        assert!(!page[..].write(usize::MAX - 1, &b));
        assert!(page[..].write(PAGE - 4, &[1, 2, 3, 4]));
        assert_eq!(page[..].read_u32(PAGE - 4), Ok(0x0403_0201));
        let mut short = [0u8; 8];
        assert!(!short[..].write(6, &b));
    }

    #[test]
    fn copies_wrap_and_indices_are_checked() {
        let mut page = vec![0u8; PAGE];
        copy_in(&mut page[..], 0, 16, 14, b"abcd").unwrap();
        assert_eq!(&page[14..16], b"ab");
        assert_eq!(&page[0..2], b"cd");
        let mut out = [0u8; 4];
        copy_out(&page[..], 0, 16, 14, &mut out).unwrap();
        assert_eq!(&out, b"abcd");
        assert_eq!(used(u32::MAX, 3, 16), Ok(4));
        assert_eq!(used(0, 17, 16), Err(RingError::Index));
        assert_eq!(used(5, 4, 16), Err(RingError::Index));
    }
}
