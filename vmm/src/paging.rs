//! Guest page walks: linear address -> guest-physical address, read from guest memory.
//!
//! Used to find the GPA of RIP (the write-protect trap checks that the emulator's patch write
//! lands exactly there). Covers paging off, 32-bit paging (4 KiB and 4 MiB pages), PAE and
//! 4-level long-mode paging (4 KiB, 2 MiB and 1 GiB pages). 5-level paging is reported as
//! untranslatable.

/// The control registers a walk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagingRegs {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const CR0_WP: u64 = 1 << 16;

/// Whether a supervisor write to `linear` is allowed by the guest's page tables: every
/// paging-structure entry on the way has R/W set, or CR0.WP is clear (supervisor writes then
/// ignore R/W). `None` when `linear` is not mapped. `KVM_TRANSLATE` cannot answer this: x86
/// KVM reports every valid translation as writeable.
pub fn supervisor_writable(
    regs: &PagingRegs,
    linear: u64,
    read8: &dyn Fn(u64) -> Option<u64>,
) -> Option<bool> {
    let t = walk(regs, linear, read8)?;
    Some(regs.cr0 & CR0_PG == 0 || regs.cr0 & CR0_WP == 0 || t.writable)
}

/// A translation with the permissions every level of the walk granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address.
    pub gpa: u64,
    /// R/W set at every level (paging off: true).
    pub writable: bool,
    /// U/S set at every level (paging off: true).
    pub user: bool,
}

/// Translates `linear` to a guest-physical address. `read8` reads a little-endian u64 at a
/// GPA (`None` when outside memory); 32-bit entries use the low half.
pub fn translate(
    regs: &PagingRegs,
    linear: u64,
    read8: &dyn Fn(u64) -> Option<u64>,
) -> Option<u64> {
    walk(regs, linear, read8).map(|t| t.gpa)
}

/// Like [`translate`], with the R/W and U/S bits of the walk.
pub fn walk(
    regs: &PagingRegs,
    linear: u64,
    read8: &dyn Fn(u64) -> Option<u64>,
) -> Option<Translation> {
    let mut writable = true;
    let mut user = true;
    let mut note = |entry: u64| {
        writable &= entry & RW != 0;
        user &= entry & US != 0;
    };
    let gpa = if regs.cr0 & CR0_PG == 0 {
        linear & 0xffff_ffff
    } else if regs.efer & EFER_LMA != 0 {
        if regs.cr4 & CR4_LA57 != 0 {
            return None;
        }
        let mut table = regs.cr3 & ADDR_MASK;
        let mut found = None;
        for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
            let index = (linear >> shift) & 0x1ff;
            let entry = read8(table + index * 8)?;
            if entry & PRESENT == 0 {
                return None;
            }
            note(entry);
            if level == 1 || (entry & PS != 0 && (level == 2 || level == 3)) {
                let mask = (1u64 << shift) - 1;
                found = Some((entry & ADDR_MASK & !mask) | (linear & mask));
                break;
            }
            table = entry & ADDR_MASK;
        }
        found?
    } else if regs.cr4 & CR4_PAE != 0 {
        let linear = linear & 0xffff_ffff;
        // PDPTEs carry no R/W or U/S bits.
        let pdpte = read8((regs.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8)?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = read8((pdpte & ADDR_MASK) + ((linear >> 21) & 0x1ff) * 8)?;
        if pde & PRESENT == 0 {
            return None;
        }
        note(pde);
        if pde & PS != 0 {
            (pde & ADDR_MASK & !0x1f_ffff) | (linear & 0x1f_ffff)
        } else {
            let pte = read8((pde & ADDR_MASK) + ((linear >> 12) & 0x1ff) * 8)?;
            if pte & PRESENT == 0 {
                return None;
            }
            note(pte);
            (pte & ADDR_MASK) | (linear & 0xfff)
        }
    } else {
        let linear = linear & 0xffff_ffff;
        let pde = read8((regs.cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4)? & 0xffff_ffff;
        if pde & PRESENT == 0 {
            return None;
        }
        note(pde);
        if pde & PS != 0 && regs.cr4 & CR4_PSE != 0 {
            // 4 MiB page; bits 20:13 hold physical address bits 39:32 (PSE-36).
            let high = ((pde >> 13) & 0xff) << 32;
            high | (pde & 0xffc0_0000) | (linear & 0x3f_ffff)
        } else {
            let pte = read8((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4)? & 0xffff_ffff;
            if pte & PRESENT == 0 {
                return None;
            }
            note(pte);
            (pte & 0xffff_f000) | (linear & 0xfff)
        }
    };
    Some(Translation { gpa, writable, user })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn mem(entries: &[(u64, u64)]) -> impl Fn(u64) -> Option<u64> {
        let m: HashMap<u64, u64> = entries.iter().copied().collect();
        move |gpa| Some(m.get(&gpa).copied().unwrap_or(0))
    }

    #[test]
    fn paging_off_is_identity() {
        let r = PagingRegs::default();
        assert_eq!(translate(&r, 0x12_3456, &mem(&[])), Some(0x12_3456));
    }

    #[test]
    fn long_mode_2m_and_4k() {
        let r =
            PagingRegs { cr0: CR0_PG | 1, cr3: 0x2000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };
        // PML4[0] -> 0x3000; PDPT[0] -> 0x4000; PD[1] = 2 MiB page at 0x60_0000;
        // PD[2] -> PT 0x5000; PT[3] = 0x9000.
        let m = mem(&[
            (0x2000, 0x3003),
            (0x3000, 0x4003),
            (0x4008, 0x60_0083),
            (0x4010, 0x5003),
            (0x5018, 0x9003),
        ]);
        assert_eq!(translate(&r, 0x20_1234, &m), Some(0x60_1234));
        assert_eq!(translate(&r, 0x40_3abc, &m), Some(0x9abc));
        assert_eq!(translate(&r, 0x80_0000, &m), None);
    }

    #[test]
    fn supervisor_writes_follow_rw_at_every_level_and_cr0_wp() {
        const WP: u64 = 1 << 16;
        let r = PagingRegs {
            cr0: CR0_PG | WP | 1,
            cr3: 0x2000,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        };
        // PD[1] = 2 MiB page, writable; PD[2] -> PT: PT[3] read-only, PT[4] writable; PML4[1]
        // read-only above a writable PDPT/PD/PT.
        let m = mem(&[
            (0x2000, 0x3003),
            (0x2008, 0x6001),
            (0x3000, 0x4003),
            (0x4008, 0x60_0083),
            (0x4010, 0x5003),
            (0x5018, 0x9001),
            (0x5020, 0xa003),
            (0x6000, 0x7003),
            (0x7000, 0x8003),
            (0x8000, 0xb003),
        ]);
        assert_eq!(supervisor_writable(&r, 0x20_1234, &m), Some(true));
        assert_eq!(supervisor_writable(&r, 0x40_3abc, &m), Some(false));
        assert_eq!(supervisor_writable(&r, 0x40_4abc, &m), Some(true));
        assert_eq!(supervisor_writable(&r, 0x80_0000_0000, &m), Some(false), "PML4E read-only");
        assert_eq!(supervisor_writable(&r, 0x80_0000, &m), None, "not mapped");
        // CR0.WP clear: supervisor writes ignore R/W.
        let no_wp = PagingRegs { cr0: CR0_PG | 1, ..r };
        assert_eq!(supervisor_writable(&no_wp, 0x40_3abc, &m), Some(true));
        // Paging off: everything is writable.
        assert_eq!(supervisor_writable(&PagingRegs::default(), 0x1234, &m), Some(true));
    }

    #[test]
    fn supervisor_writes_32bit_and_pae() {
        let r = PagingRegs { cr0: CR0_PG | (1 << 16) | 1, cr3: 0x2000, cr4: CR4_PSE, efer: 0 };
        // PDE[1] 4 MiB writable, PDE[2] 4 MiB read-only, PDE[3] -> PT with PT[0] read-only.
        let m =
            mem(&[(0x2004, 0x40_0083), (0x2008, 0x80_0081), (0x200c, 0x3003), (0x3000, 0x9001)]);
        assert_eq!(supervisor_writable(&r, 0x40_1234, &m), Some(true));
        assert_eq!(supervisor_writable(&r, 0x80_1234, &m), Some(false));
        assert_eq!(supervisor_writable(&r, 0xc0_0123, &m), Some(false));
        // PAE: PDPTEs have no R/W bit; the PDE decides.
        let pae = PagingRegs { cr0: CR0_PG | (1 << 16) | 1, cr3: 0x2000, cr4: CR4_PAE, efer: 0 };
        let m = mem(&[(0x2000, 0x3001), (0x3000, 0x20_0083), (0x3008, 0x40_0081)]);
        assert_eq!(supervisor_writable(&pae, 0x1234, &m), Some(true));
        assert_eq!(supervisor_writable(&pae, 0x20_1234, &m), Some(false));
    }

    #[test]
    fn walks_report_rw_and_us_of_every_level() {
        let r =
            PagingRegs { cr0: CR0_PG | 1, cr3: 0x2000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };
        // PD[1]: a 2 MiB page, read-only; PD[2] -> PT with a user-writable page.
        let m = mem(&[
            (0x2000, 0x3007),
            (0x3000, 0x4007),
            (0x4008, 0x60_0085),
            (0x4010, 0x5007),
            (0x5018, 0x9007),
            (0x5020, 0xa003),
        ]);
        let ro = walk(&r, 0x20_1234, &m).unwrap();
        assert_eq!((ro.gpa, ro.writable, ro.user), (0x60_1234, false, true));
        let rw = walk(&r, 0x40_3abc, &m).unwrap();
        assert_eq!((rw.gpa, rw.writable, rw.user), (0x9abc, true, true));
        let kernel = walk(&r, 0x40_4000, &m).unwrap();
        assert_eq!((kernel.gpa, kernel.writable, kernel.user), (0xa000, true, false));
        let off = walk(&PagingRegs::default(), 0x1234, &m).unwrap();
        assert!(off.writable && off.user);
    }

    #[test]
    fn legacy_32bit_pse() {
        let r = PagingRegs { cr0: CR0_PG | 1, cr3: 0x2000, cr4: CR4_PSE, efer: 0 };
        let m = mem(&[(0x2000 + 4, 0x40_0083)]);
        assert_eq!(translate(&r, 0x40_1234, &m), Some(0x40_1234));
    }
}
