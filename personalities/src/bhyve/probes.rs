//! Guest-fired DTrace probes: the per-VM probe registry and the reads of guest memory that
//! PROBE_CREATE and PROBE make.
//!
//! Pointers are guest-physical addresses read through vm-memory, so a bad pointer is an
//! error answer, never a host-side fault. The registry is created lazily; firing a probe
//! takes no lock (an id indexes a fixed slot array whose name is set once), creating one
//! takes a mutex that only PROBE_CREATE uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use vm_memory::{Bytes, GuestAddress};

use super::abi::{DTRACE_IDNONE, MAX_PROBES, MAX_PROBE_NAME, PROBE_ARGS};
use polyvisor_core::GuestMemoryMmap;

/// Why PROBE_CREATE or PROBE refused; every one answers `HYPERCALL_RET_ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The pointer is 0 (the author's `hypercall_copy_arg` refuses NULL), or the range
    /// overflows the address space.
    #[error("null or wrapping guest pointer")]
    BadPointer,
    /// Part of the range is not guest RAM.
    #[error("guest memory not readable")]
    Unreadable,
    /// The name length is 0.
    #[error("empty probe name")]
    Empty,
    /// The name is longer than the bound.
    #[error("probe name longer than {MAX_PROBE_NAME} bytes")]
    TooLong,
    /// The name is not UTF-8.
    #[error("probe name is not UTF-8")]
    NotUtf8,
    /// The name holds NUL or another control character.
    #[error("probe name holds a control character")]
    ControlCharacter,
    /// The VM already has [`MAX_PROBES`] probes.
    #[error("the VM already has {MAX_PROBES} probes")]
    Full,
    /// No probe has that id.
    #[error("no probe has that id")]
    UnknownId,
}

/// Reads and checks a probe name of `len` bytes at guest-physical `ptr` into `buf`.
pub fn read_probe_name<'b>(
    memory: &GuestMemoryMmap,
    ptr: u64,
    len: u64,
    buf: &'b mut [u8; MAX_PROBE_NAME],
) -> Result<&'b str, ProbeError> {
    if len == 0 {
        return Err(ProbeError::Empty);
    }
    let n = usize::try_from(len).map_err(|_| ProbeError::TooLong)?;
    let dst = buf.get_mut(..n).ok_or(ProbeError::TooLong)?;
    if ptr == 0 || ptr.checked_add(len).is_none() {
        return Err(ProbeError::BadPointer);
    }
    memory.read_slice(dst, GuestAddress(ptr)).map_err(|_| ProbeError::Unreadable)?;
    let name = std::str::from_utf8(dst).map_err(|_| ProbeError::NotUtf8)?;
    if name.chars().any(char::is_control) {
        return Err(ProbeError::ControlCharacter);
    }
    Ok(name)
}

/// Reads the [`PROBE_ARGS`] little-endian u64 arguments at guest-physical `ptr`.
pub fn read_probe_args(
    memory: &GuestMemoryMmap,
    ptr: u64,
) -> Result<[u64; PROBE_ARGS], ProbeError> {
    const BYTES: usize = PROBE_ARGS * 8;
    if ptr == 0 || ptr.checked_add(BYTES as u64).is_none() {
        return Err(ProbeError::BadPointer);
    }
    let mut raw = [0u8; BYTES];
    memory.read_slice(&mut raw, GuestAddress(ptr)).map_err(|_| ProbeError::Unreadable)?;
    let mut args = [0u64; PROBE_ARGS];
    for (arg, bytes) in args.iter_mut().zip(raw.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        *arg = u64::from_le_bytes(word);
    }
    Ok(args)
}

#[derive(Debug, Default)]
struct Slot {
    name: OnceLock<Box<str>>,
    fired: AtomicU64,
}

/// One VM's probes: ids 1..=[`MAX_PROBES`] in creation order, names unique.
#[derive(Default)]
pub struct ProbeRegistry {
    slots: OnceLock<Box<[Slot]>>,
    by_name: Mutex<HashMap<Box<str>, u64>>,
}

impl std::fmt::Debug for ProbeRegistry {
    // The slot array has 4096 entries: show how many are in use instead.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let created =
            self.slots.get().map_or(0, |s| s.iter().take_while(|s| s.name.get().is_some()).count());
        f.debug_struct("ProbeRegistry").field("created", &created).finish()
    }
}

/// A registered probe as PROBE finds it.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: &'a str,
    fired: &'a AtomicU64,
}

impl Probe<'_> {
    /// Counts one firing.
    pub fn count(&self) {
        self.fired.fetch_add(1, Ordering::Relaxed);
    }
}

impl ProbeRegistry {
    /// Registers `name` and returns its id; a name already registered returns its existing id
    /// (as a DTrace provider looks a probe up before creating it), using no new slot.
    pub fn create(&self, name: &str) -> Result<u64, ProbeError> {
        // A panic while holding the lock cannot leave the map inconsistent (insert is last).
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = by_name.get(name) {
            return Ok(*id);
        }
        let index = by_name.len();
        let slots = self.slots.get_or_init(|| (0..MAX_PROBES).map(|_| Slot::default()).collect());
        let slot = slots.get(index).ok_or(ProbeError::Full)?;
        // Set before the id is handed out, so a PROBE with this id always finds the name.
        slot.name.set(name.into()).map_err(|_| ProbeError::Full)?;
        let id = u64::try_from(index).map_err(|_| ProbeError::Full)?.wrapping_add(1);
        by_name.insert(name.into(), id);
        Ok(id)
    }

    /// The probe with `id`, without locking.
    pub fn get(&self, id: u64) -> Result<Probe<'_>, ProbeError> {
        if id == DTRACE_IDNONE {
            return Err(ProbeError::UnknownId);
        }
        let index = id.checked_sub(1).ok_or(ProbeError::UnknownId)?;
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get()?.get(i))
            .ok_or(ProbeError::UnknownId)?;
        let name = slot.name.get().ok_or(ProbeError::UnknownId)?;
        Ok(Probe { id, name, fired: &slot.fired })
    }

    /// `(id, name, times fired)` for every probe, by id.
    pub fn counts(&self) -> Vec<(u64, String, u64)> {
        let Some(slots) = self.slots.get() else {
            return Vec::new();
        };
        slots
            .iter()
            .zip(1u64..)
            .map_while(|(slot, id)| {
                slot.name.get().map(|n| (id, n.to_string(), slot.fired.load(Ordering::Relaxed)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use polyvisor_core::testing::memory;

    use super::*;

    fn name_at(mem: &GuestMemoryMmap, ptr: u64, len: u64) -> Result<String, ProbeError> {
        let mut buf = [0u8; MAX_PROBE_NAME];
        read_probe_name(mem, ptr, len, &mut buf).map(str::to_string)
    }

    #[test]
    fn names_are_read_and_checked() {
        let mem = memory(0x2000);
        mem.write_slice(b"io:::start", GuestAddress(0x100)).unwrap();
        assert_eq!(name_at(&mem, 0x100, 10).unwrap(), "io:::start");
        assert_eq!(name_at(&mem, 0x100, 2).unwrap(), "io", "the length is exact");
        mem.write_slice("pröbe".as_bytes(), GuestAddress(0x200)).unwrap();
        assert_eq!(name_at(&mem, 0x200, 6).unwrap(), "pröbe", "UTF-8 is fine");
        let full = [b'x'; MAX_PROBE_NAME];
        mem.write_slice(&full, GuestAddress(0x300)).unwrap();
        assert_eq!(name_at(&mem, 0x300, 128).unwrap().len(), 128, "128 bytes fit");
    }

    #[test]
    fn bad_names_and_pointers_are_errors() {
        let mem = memory(0x2000);
        mem.write_slice(b"ok\0no\x07\xff\xfe", GuestAddress(0x100)).unwrap();
        assert_eq!(name_at(&mem, 0x100, 0), Err(ProbeError::Empty));
        assert_eq!(name_at(&mem, 0x100, 129), Err(ProbeError::TooLong));
        assert_eq!(name_at(&mem, 0x100, u64::MAX), Err(ProbeError::TooLong));
        assert_eq!(name_at(&mem, 0x100, 3), Err(ProbeError::ControlCharacter), "NUL");
        assert_eq!(name_at(&mem, 0x103, 3), Err(ProbeError::ControlCharacter), "BEL");
        assert_eq!(name_at(&mem, 0x106, 2), Err(ProbeError::NotUtf8));
        assert_eq!(name_at(&mem, 0, 4), Err(ProbeError::BadPointer), "NULL");
        assert_eq!(name_at(&mem, u64::MAX - 2, 4), Err(ProbeError::BadPointer), "wraps");
        assert_eq!(name_at(&mem, 0x2000, 4), Err(ProbeError::Unreadable), "past the end");
        assert_eq!(name_at(&mem, 0x1ffe, 4), Err(ProbeError::Unreadable), "straddles the end");
        assert_eq!(name_at(&mem, 0x1_0000_0000, 4), Err(ProbeError::Unreadable), "far away");
    }

    #[test]
    fn args_are_five_little_endian_words() {
        let mem = memory(0x2000);
        for i in 0..5u64 {
            mem.write_obj(0x1000 + i, GuestAddress(0x400 + 8 * i)).unwrap();
        }
        assert_eq!(read_probe_args(&mem, 0x400), Ok([0x1000, 0x1001, 0x1002, 0x1003, 0x1004]));
        assert_eq!(read_probe_args(&mem, 0x2000 - 40), Ok([0; 5]), "ends exactly at the end");
        assert_eq!(read_probe_args(&mem, 0x2000 - 39), Err(ProbeError::Unreadable));
        assert_eq!(read_probe_args(&mem, 0x2000), Err(ProbeError::Unreadable));
        assert_eq!(read_probe_args(&mem, 0), Err(ProbeError::BadPointer));
        assert_eq!(read_probe_args(&mem, u64::MAX - 8), Err(ProbeError::BadPointer));
    }

    #[test]
    fn ids_start_at_one_and_names_are_unique() {
        let r = ProbeRegistry::default();
        assert_eq!(format!("{r:?}"), "ProbeRegistry { created: 0 }");
        assert!(r.counts().is_empty());
        assert_eq!(r.get(1).map(|p| p.id), Err(ProbeError::UnknownId), "nothing yet");
        assert_eq!(r.create("a"), Ok(1));
        assert_eq!(r.create("b"), Ok(2));
        assert_eq!(r.create("a"), Ok(1), "the existing id");
        assert_eq!(r.get(0).map(|p| p.id), Err(ProbeError::UnknownId), "DTRACE_IDNONE");
        assert_eq!(r.get(3).map(|p| p.id), Err(ProbeError::UnknownId));
        assert_eq!(r.get(u64::MAX).map(|p| p.id), Err(ProbeError::UnknownId));
        let b = r.get(2).unwrap();
        assert_eq!(b.name, "b");
        b.count();
        b.count();
        assert_eq!(r.counts(), vec![(1, "a".to_string(), 0), (2, "b".to_string(), 2)]);
        assert_eq!(format!("{r:?}"), "ProbeRegistry { created: 2 }");
    }

    #[test]
    fn the_registry_is_bounded() {
        let r = ProbeRegistry::default();
        for i in 0..MAX_PROBES {
            assert_eq!(r.create(&format!("p{i}")), Ok(i as u64 + 1));
        }
        assert_eq!(r.create("one too many"), Err(ProbeError::Full));
        assert_eq!(r.create("p7"), Ok(8), "existing names still resolve when full");
        assert_eq!(r.get(4096).unwrap().name, "p4095");
        assert_eq!(r.get(4097).map(|p| p.id), Err(ProbeError::UnknownId));
        assert_eq!(r.counts().len(), MAX_PROBES);
    }

    #[test]
    fn concurrent_creators_agree_on_ids() {
        let r = ProbeRegistry::default();
        let ids: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..50).map(|i| r.create(&format!("n{i}")).unwrap()).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "every thread got the same ids");
        assert_eq!(r.counts().len(), 50);
        for (id, name, _) in r.counts() {
            assert_eq!(r.create(&name), Ok(id));
        }
    }
}
