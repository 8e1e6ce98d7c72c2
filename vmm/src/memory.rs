//! Guest RAM and its memslot layout.
//!
//! RAM is one anonymous mapping at GPA 0 (vm-memory's [`GuestMemoryMmap`]). KVM sees it through
//! memslots computed by [`compute_slots`]: RAM is split around
//! - *protected* pages: RAM shown read-only (`KVM_MEM_READONLY`) so that the emulator's
//!   hypercall patch write, and any other guest write, exits to the VMM; and
//! - *overlays*: one VMM-owned page shown read-only in place of whatever is underneath
//!   (hypercall pages); removing an overlay shows the RAM again.
//!
//! Changing the layout while vCPUs run is done by the caller with every vCPU outside
//! `KVM_RUN` (see `vm::VmShared::change_layout`), because KVM cannot split a slot atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use polyvisor_core::GuestMemoryMmap;

/// Page size of every protection and overlay.
pub const PAGE: u64 = 0x1000;
/// At most this many overlays exist at once.
pub const MAX_OVERLAYS: usize = 64;
// `GuestMem::overlay_used` has one bit per overlay.
const _: () = assert!(MAX_OVERLAYS <= 64);

/// Why a layout could not be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the RAM mapping.
    #[error("cannot allocate {size:#x} bytes of guest RAM: {reason}")]
    Allocate {
        /// Requested size.
        size: u64,
        /// vm-memory's reason.
        reason: String,
    },
    /// KVM refused a memslot.
    #[error("KVM_SET_USER_MEMORY_REGION (slot {slot}, {gpa:#x}+{size:#x}, {flags}): {source}")]
    SetRegion {
        /// Slot id.
        slot: u32,
        /// First GPA.
        gpa: u64,
        /// Size.
        size: u64,
        /// "read-only" or "read-write".
        flags: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// A range outside RAM or not page-aligned where it must be.
    #[error("{what} {gpa:#x}+{len:#x} is not inside guest RAM (0..{ram:#x})")]
    OutsideRam {
        /// What was asked.
        what: &'static str,
        /// First GPA.
        gpa: u64,
        /// Length.
        len: u64,
        /// RAM size.
        ram: u64,
    },
    /// An overlay placement that cannot be honoured.
    #[error("overlay slot {slot}: {reason}")]
    Overlay {
        /// The personality's overlay slot.
        slot: u32,
        /// Why.
        reason: String,
    },
    /// Too many memslots for this host.
    #[error("the layout needs {needed} memslots; this host allows {max}")]
    TooManySlots {
        /// Slots needed.
        needed: usize,
        /// KVM_CAP_NR_MEMSLOTS.
        max: usize,
    },
}

/// One memslot as KVM will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotSpec {
    /// First guest-physical byte.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of the first byte.
    pub host: u64,
    /// `KVM_MEM_READONLY`.
    pub readonly: bool,
}

/// Computes the memslots for RAM of `ram_size` bytes at host address `ram_host`, with
/// `protected` RAM page numbers shown read-only and `overlays` (GPA, host address of the
/// page) replacing whatever lies underneath. Overlays win over protection. Pure.
pub fn compute_slots(
    ram_size: u64,
    ram_host: u64,
    protected: &BTreeSet<u64>,
    overlays: &[(u64, u64)],
) -> Vec<SlotSpec> {
    let overlay_pages: BTreeMap<u64, u64> =
        overlays.iter().map(|(gpa, host)| (gpa / PAGE, *host)).collect();
    let ram_pages = ram_size / PAGE;
    // Special intervals in page numbers: (first, end, kind) with kind None = RO RAM, Some(host)
    // = overlay page.
    let mut special: Vec<(u64, u64, Option<u64>)> = Vec::new();
    for &page in protected.iter().filter(|p| **p < ram_pages) {
        if overlay_pages.contains_key(&page) {
            continue;
        }
        match special.last_mut() {
            Some((_, end, None)) if *end == page => *end += 1,
            _ => special.push((page, page + 1, None)),
        }
    }
    for (&page, &host) in &overlay_pages {
        special.push((page, page + 1, Some(host)));
    }
    special.sort_unstable_by_key(|s| s.0);

    let mut out = Vec::new();
    let mut cursor = 0u64;
    let ram_gap = |out: &mut Vec<SlotSpec>, from: u64, to: u64| {
        let to = to.min(ram_pages);
        if from < to {
            out.push(SlotSpec {
                gpa: from * PAGE,
                size: (to - from) * PAGE,
                host: ram_host + from * PAGE,
                readonly: false,
            });
        }
    };
    for (first, end, kind) in special {
        ram_gap(&mut out, cursor, first);
        out.push(match kind {
            None => SlotSpec {
                gpa: first * PAGE,
                size: (end - first) * PAGE,
                host: ram_host + first * PAGE,
                readonly: true,
            },
            Some(host) => SlotSpec { gpa: first * PAGE, size: PAGE, host, readonly: true },
        });
        cursor = cursor.max(end);
    }
    ram_gap(&mut out, cursor, ram_pages);
    out
}

/// Guest RAM and the overlay pages: shared by every vCPU thread; lookups take no lock.
pub struct GuestMem {
    ram: GuestMemoryMmap,
    ram_size: u64,
    ram_host: u64,
    /// Backing for overlays: page `i` belongs to overlay index `i`.
    overlay_mem: GuestMemoryMmap,
    overlay_host: u64,
    /// GPA + 1 of each overlay index that is mapped (0: free).
    overlay_gpas: Box<[AtomicU64]>,
    /// Bit i: overlay index i may be mapped (set before its GPA is published, cleared after
    /// it is withdrawn), so lookups on the exit path only look at those.
    overlay_used: AtomicU64,
}

impl std::fmt::Debug for GuestMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMem").field("ram_size", &self.ram_size).finish_non_exhaustive()
    }
}

fn host_base(mem: &GuestMemoryMmap, size: u64) -> Result<u64, MemoryError> {
    mem.get_host_address(GuestAddress(0))
        .map(|p| p as u64)
        .map_err(|e| MemoryError::Allocate { size, reason: e.to_string() })
}

impl GuestMem {
    /// Allocates RAM of `ram_size` bytes (a multiple of the page size) and the overlay pages.
    pub fn new(ram_size: u64) -> Result<Self, MemoryError> {
        let alloc = |size: u64| {
            let len = usize::try_from(size)
                .map_err(|e| MemoryError::Allocate { size, reason: e.to_string() })?;
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)])
                .map_err(|e| MemoryError::Allocate { size, reason: e.to_string() })
        };
        let ram = alloc(ram_size)?;
        let ram_host = host_base(&ram, ram_size)?;
        let overlay_size = MAX_OVERLAYS as u64 * PAGE;
        let overlay_mem = alloc(overlay_size)?;
        let overlay_host = host_base(&overlay_mem, overlay_size)?;
        Ok(GuestMem {
            ram,
            ram_size,
            ram_host,
            overlay_mem,
            overlay_host,
            overlay_gpas: (0..MAX_OVERLAYS).map(|_| AtomicU64::new(0)).collect(),
            overlay_used: AtomicU64::new(0),
        })
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// RAM size in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// The overlay index mapped at the page of `gpa`, if any.
    pub fn overlay_at(&self, gpa: u64) -> Option<usize> {
        let want = (gpa & !(PAGE - 1)).wrapping_add(1);
        let mut used = self.overlay_used.load(Ordering::Acquire);
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            if self.overlay_gpas.get(i).is_some_and(|g| g.load(Ordering::Acquire) == want) {
                return Some(i);
            }
        }
        None
    }

    /// Whether `gpa` is guest RAM.
    pub fn is_ram(&self, gpa: u64) -> bool {
        gpa < self.ram_size
    }

    /// Reads what the guest sees at `gpa` (an overlay if one is mapped there, else RAM).
    /// Returns `false` if the bytes are not all readable.
    pub fn read_visible(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.overlay_at(gpa) {
            Some(i) => {
                let off = gpa & (PAGE - 1);
                if off + buf.len() as u64 > PAGE {
                    return false;
                }
                self.overlay_mem.read_slice(buf, GuestAddress(i as u64 * PAGE + off)).is_ok()
            }
            None => self.ram.read_slice(buf, GuestAddress(gpa)).is_ok(),
        }
    }

    /// Bytes of guest RAM resident in host memory now (`mincore` over the RAM mapping), or
    /// `None` if the kernel would not say. Touched pages count; pages never written (or read)
    /// by the guest, KVM or the VMM do not.
    pub fn resident_bytes(&self) -> Option<u64> {
        let len = usize::try_from(self.ram_size).ok()?;
        let pages = len.div_ceil(PAGE as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: `ram_host..ram_host + ram_size` is the page-aligned RAM mapping this value
        // owns (it stays mapped while `&self` lives); mincore only reads the page tables and
        // writes one byte per page into `vec`, which has exactly that many bytes. The return
        // value is checked.
        let r = unsafe {
            libc::mincore(self.ram_host as *mut libc::c_void, len, vec.as_mut_ptr().cast())
        };
        (r == 0).then(|| vec.iter().filter(|b| **b & 1 != 0).count() as u64 * PAGE)
    }

    /// Writes guest RAM (a write the guest made to a protected page).
    pub fn write_ram(&self, gpa: u64, data: &[u8]) -> bool {
        self.ram.write_slice(data, GuestAddress(gpa)).is_ok()
    }
}

/// The memslot layout KVM currently has, and the protections and overlays it should have.
/// Lives under the VM's layout mutex (never taken on the hypercall path).
#[derive(Debug)]
pub struct Layout {
    /// Personality slot -> overlay index.
    overlay_index: BTreeMap<u32, usize>,
    protected: BTreeSet<u64>,
    applied: Vec<(u32, SlotSpec)>,
    free_ids: Vec<u32>,
    next_id: u32,
    max_slots: usize,
}

impl Layout {
    /// An empty layout; `max_slots` is KVM_CAP_NR_MEMSLOTS.
    pub fn new(max_slots: usize) -> Self {
        Layout {
            overlay_index: BTreeMap::new(),
            protected: BTreeSet::new(),
            applied: Vec::new(),
            free_ids: Vec::new(),
            next_id: 0,
            max_slots: max_slots.max(8),
        }
    }

    /// Whether the page of `gpa` is protected RAM.
    pub fn is_protected(&self, gpa: u64) -> bool {
        self.protected.contains(&(gpa / PAGE))
    }

    /// Number of protected pages.
    pub fn protected_pages(&self) -> usize {
        self.protected.len()
    }

    /// Marks RAM in `[gpa, gpa + len)` read-only (whole pages). Returns whether anything
    /// changed. Takes effect at the next [`Layout::apply`].
    pub fn protect(&mut self, mem: &GuestMem, gpa: u64, len: u64) -> Result<bool, MemoryError> {
        let end = gpa.checked_add(len).filter(|e| *e <= mem.ram_size && len > 0);
        let Some(end) = end else {
            return Err(MemoryError::OutsideRam {
                what: "code range",
                gpa,
                len,
                ram: mem.ram_size,
            });
        };
        let mut changed = false;
        for page in gpa / PAGE..end.div_ceil(PAGE) {
            changed |= self.protected.insert(page);
        }
        Ok(changed)
    }

    /// Places (or with `None` removes) the overlay of personality slot `slot`. The page shows
    /// `bytes` (at most one page; the rest is zero). Takes effect at the next apply.
    pub fn set_overlay(
        &mut self,
        mem: &GuestMem,
        slot: u32,
        placement: Option<(u64, &[u8])>,
    ) -> Result<(), MemoryError> {
        let err = |reason: String| MemoryError::Overlay { slot, reason };
        match placement {
            None => {
                if let Some(i) = self.overlay_index.remove(&slot) {
                    if let Some(g) = mem.overlay_gpas.get(i) {
                        g.store(0, Ordering::Release);
                    }
                    mem.overlay_used.fetch_and(!(1u64 << i), Ordering::AcqRel);
                }
                Ok(())
            }
            Some((gpa, bytes)) => {
                if gpa % PAGE != 0 {
                    return Err(err(format!("GPA {gpa:#x} is not page-aligned")));
                }
                if gpa.checked_add(PAGE).is_none() {
                    return Err(err(format!("GPA {gpa:#x} is out of range")));
                }
                if bytes.len() as u64 > PAGE {
                    return Err(err(format!("{} bytes do not fit one page", bytes.len())));
                }
                let taken = self.overlay_index.iter().filter(|(s, _)| **s != slot).any(|(_, i)| {
                    mem.overlay_gpas.get(*i).is_some_and(|g| g.load(Ordering::Relaxed) == gpa + 1)
                });
                if taken {
                    return Err(err(format!("another overlay is already mapped at {gpa:#x}")));
                }
                let index = match self.overlay_index.get(&slot) {
                    Some(i) => *i,
                    None => {
                        let used: BTreeSet<usize> = self.overlay_index.values().copied().collect();
                        let free = (0..MAX_OVERLAYS).find(|i| !used.contains(i));
                        let Some(i) = free else {
                            return Err(err(format!(
                                "at most {MAX_OVERLAYS} overlays can be mapped"
                            )));
                        };
                        self.overlay_index.insert(slot, i);
                        i
                    }
                };
                let Some(g) = mem.overlay_gpas.get(index) else {
                    return Err(err("overlay index out of range".into()));
                };
                // Hide the page while its contents change, then publish the GPA.
                g.store(0, Ordering::Release);
                let mut page = vec![0u8; PAGE as usize];
                if let Some(dst) = page.get_mut(..bytes.len()) {
                    dst.copy_from_slice(bytes);
                }
                mem.overlay_mem
                    .write_slice(&page, GuestAddress(index as u64 * PAGE))
                    .map_err(|e| err(e.to_string()))?;
                mem.overlay_used.fetch_or(1u64 << index, Ordering::AcqRel);
                g.store(gpa + 1, Ordering::Release);
                Ok(())
            }
        }
    }

    /// The slots the current protections and overlays call for.
    pub fn wanted(&self, mem: &GuestMem) -> Vec<SlotSpec> {
        let overlays: Vec<(u64, u64)> = self
            .overlay_index
            .values()
            .filter_map(|i| {
                let g = mem.overlay_gpas.get(*i)?.load(Ordering::Relaxed);
                (g != 0).then(|| (g - 1, mem.overlay_host + *i as u64 * PAGE))
            })
            .collect();
        compute_slots(mem.ram_size, mem.ram_host, &self.protected, &overlays)
    }

    /// Makes KVM's memslots match [`Layout::wanted`]: removes the slots that changed, then
    /// adds the new ones. The caller guarantees no vCPU is inside `KVM_RUN`. Returns the
    /// number of memslot ioctls made.
    pub fn apply(&mut self, mem: &GuestMem, vm: &VmFd) -> Result<usize, MemoryError> {
        let wanted = self.wanted(mem);
        if wanted.len() > self.max_slots {
            return Err(MemoryError::TooManySlots { needed: wanted.len(), max: self.max_slots });
        }
        let mut changes = 0;
        let mut kept = Vec::with_capacity(wanted.len());
        for (id, spec) in std::mem::take(&mut self.applied) {
            if wanted.contains(&spec) {
                kept.push((id, spec));
            } else {
                set_region(vm, id, SlotSpec { size: 0, ..spec })?;
                self.free_ids.push(id);
                changes += 1;
            }
        }
        for spec in wanted {
            if kept.iter().any(|(_, s)| *s == spec) {
                continue;
            }
            let id = self.free_ids.pop().unwrap_or_else(|| {
                self.next_id += 1;
                self.next_id - 1
            });
            set_region(vm, id, spec)?;
            kept.push((id, spec));
            changes += 1;
        }
        kept.sort_by_key(|(_, s)| s.gpa);
        self.applied = kept;
        Ok(changes)
    }

    /// The slots KVM has now, for reports.
    pub fn applied(&self) -> Vec<SlotSpec> {
        self.applied.iter().map(|(_, s)| *s).collect()
    }
}

fn set_region(vm: &VmFd, slot: u32, spec: SlotSpec) -> Result<(), MemoryError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: if spec.readonly { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: spec.gpa,
        memory_size: spec.size,
        userspace_addr: spec.host,
    };
    // SAFETY: `spec.host` points into a mapping owned by the `Layout` (RAM or overlay pages)
    // that covers `spec.size` bytes and outlives the VM: the layout is dropped only after
    // the VM fd (and with it every vCPU) is gone.
    unsafe { vm.set_user_memory_region(region) }.map_err(|source| MemoryError::SetRegion {
        slot,
        gpa: spec.gpa,
        size: spec.size,
        flags: if spec.readonly { "read-only" } else { "read-write" },
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(list: &[u64]) -> BTreeSet<u64> {
        list.iter().copied().collect()
    }

    #[test]
    fn plain_ram_is_one_slot() {
        let s = compute_slots(0x40_0000, 0x1000_0000, &BTreeSet::new(), &[]);
        assert_eq!(
            s,
            vec![SlotSpec { gpa: 0, size: 0x40_0000, host: 0x1000_0000, readonly: false }]
        );
    }

    #[test]
    fn protection_splits_and_merges() {
        let s = compute_slots(0x40_0000, 0x1000_0000, &pages(&[0x100, 0x101, 0x103]), &[]);
        let got: Vec<(u64, u64, bool)> = s.iter().map(|s| (s.gpa, s.size, s.readonly)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0x10_0000, false),
                (0x10_0000, 0x2000, true),
                (0x10_2000, 0x1000, false),
                (0x10_3000, 0x1000, true),
                (0x10_4000, 0x40_0000 - 0x10_4000, false),
            ]
        );
        assert_eq!(s[3].host, 0x1000_0000 + 0x10_3000);
    }

    #[test]
    fn overlays_replace_ram_and_protection() {
        let s = compute_slots(
            0x40_0000,
            0x1000_0000,
            &pages(&[0x100, 0x101]),
            &[(0x10_1000, 0x7000_0000), (0x80_0000, 0x7000_1000)],
        );
        let got: Vec<(u64, u64, u64, bool)> =
            s.iter().map(|s| (s.gpa, s.size, s.host, s.readonly)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0x10_0000, 0x1000_0000, false),
                (0x10_0000, 0x1000, 0x1010_0000, true),
                (0x10_1000, 0x1000, 0x7000_0000, true),
                (0x10_2000, 0x40_0000 - 0x10_2000, 0x1010_2000, false),
                (0x80_0000, 0x1000, 0x7000_1000, true),
            ]
        );
        // Removing the overlay restores RAM.
        let back = compute_slots(0x40_0000, 0x1000_0000, &BTreeSet::new(), &[]);
        assert_eq!(back.len(), 1);
    }

    #[test]
    fn overlay_bookkeeping() {
        let m = GuestMem::new(0x40_0000).unwrap();
        let mut l = Layout::new(32);
        l.set_overlay(&m, 7, Some((0x20_0000, &[0x0f, 0x01, 0xc1]))).unwrap();
        let mut b = [0u8; 3];
        assert!(m.read_visible(0x20_0000, &mut b));
        assert_eq!(b, [0x0f, 0x01, 0xc1]);
        assert!(l.set_overlay(&m, 8, Some((0x20_0000, &[]))).is_err());
        assert!(l.set_overlay(&m, 8, Some((0x20_0001, &[]))).is_err());
        l.set_overlay(&m, 7, Some((0x30_0000, &[0xc3]))).unwrap();
        assert_eq!(m.overlay_at(0x20_0000), None);
        assert!(m.overlay_at(0x30_0fff).is_some());
        assert_eq!(l.wanted(&m).len(), 3);
        l.set_overlay(&m, 7, None).unwrap();
        assert_eq!(l.wanted(&m).len(), 1);
        assert!(l.protect(&m, 0x3f_f000, 0x2000).is_err());
        assert!(l.protect(&m, 0x10_0000, 1).unwrap());
        assert!(!l.protect(&m, 0x10_0000, 1).unwrap());
    }
}
