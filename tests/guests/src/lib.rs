//! Test guest images for polyvisor.
//!
//! The guests are freestanding C programs (runtime in `rt/`, programs in `guests/`) that
//! `build.rs` compiles with the system C compiler (`$CC`, default `gcc`). Each image is an
//! ELF file linked at 1 MiB; see `README.md` in this crate for the boot contract, the
//! runtime API and the list of guests.

/// Every guest image as `(name, ELF bytes)`, in the order of [`NAMES`].
const TABLE: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Names of all guest images, accepted by [`image`].
///
/// Naming convention: `*_pvh32` boots via PVH and stays in 32-bit protected mode,
/// `*_pvh64` boots via PVH and switches to long mode, `*_rwx64` is an ELF64 direct image
/// with a single RWX segment, every other name is an ELF64 direct image with separate
/// text / rodata / data segments.
pub const NAMES: &[&str] = include!(concat!(env!("OUT_DIR"), "/names.rs"));

/// The default guest (ELF64 direct boot): detects the hypervisor through CPUID, prints its
/// identity and features, makes one harmless hypercall in its ABI and exits with status 0.
pub const DEFAULT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.elf"));

/// The ELF image of the guest called `name`, or `None` if there is no such guest.
#[must_use]
pub fn image(name: &str) -> Option<&'static [u8]> {
    TABLE.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

#[cfg(test)]
mod tests {
    use super::{image, DEFAULT, NAMES};

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    struct Phdr {
        kind: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    }

    /// Minimal ELF program-header reader for the checks below.
    fn phdrs(b: &[u8]) -> (bool, u16, u64, Vec<Phdr>) {
        assert_eq!(&b[..4], b"\x7fELF");
        let is64 = b[4] == 2;
        let machine = u16_at(b, 18);
        let (entry, phoff, phentsize, phnum) = if is64 {
            (u64_at(b, 24), u64_at(b, 32), u16_at(b, 54), u16_at(b, 56))
        } else {
            (u64::from(u32_at(b, 24)), u64::from(u32_at(b, 28)), u16_at(b, 42), u16_at(b, 44))
        };
        let mut out = Vec::new();
        for i in 0..u64::from(phnum) {
            let o = usize::try_from(phoff + i * u64::from(phentsize)).unwrap();
            out.push(if is64 {
                Phdr {
                    kind: u32_at(b, o),
                    flags: u32_at(b, o + 4),
                    offset: u64_at(b, o + 8),
                    vaddr: u64_at(b, o + 16),
                    paddr: u64_at(b, o + 24),
                    filesz: u64_at(b, o + 32),
                    memsz: u64_at(b, o + 40),
                }
            } else {
                Phdr {
                    kind: u32_at(b, o),
                    offset: u64::from(u32_at(b, o + 4)),
                    vaddr: u64::from(u32_at(b, o + 8)),
                    paddr: u64::from(u32_at(b, o + 12)),
                    filesz: u64::from(u32_at(b, o + 16)),
                    memsz: u64::from(u32_at(b, o + 20)),
                    flags: u32_at(b, o + 24),
                }
            });
        }
        (is64, machine, entry, out)
    }

    /// The PVH entry from a Xen note (name "Xen", type 18), if any.
    fn pvh_entry(b: &[u8], ph: &[Phdr]) -> Option<u32> {
        for p in ph.iter().filter(|p| p.kind == PT_NOTE) {
            let mut o = usize::try_from(p.offset).unwrap();
            let end = o + usize::try_from(p.filesz).unwrap();
            while o + 12 <= end {
                let (namesz, descsz, kind) = (u32_at(b, o), u32_at(b, o + 4), u32_at(b, o + 8));
                let name_off = o + 12;
                let desc_off = name_off + (namesz as usize).next_multiple_of(4);
                if &b[name_off..name_off + namesz as usize] == b"Xen\0" && kind == 18 {
                    return Some(u32_at(b, desc_off));
                }
                o = desc_off + (descsz as usize).next_multiple_of(4);
            }
        }
        None
    }

    #[test]
    fn every_name_has_an_image_and_default_is_listed() {
        assert!(NAMES.contains(&"default"));
        assert_eq!(image("default"), Some(DEFAULT));
        for name in NAMES {
            assert!(image(name).is_some(), "{name}");
        }
        assert!(image("no-such-guest").is_none());
    }

    #[test]
    fn images_follow_the_boot_contract() {
        for name in NAMES {
            let b = image(name).unwrap();
            let (is64, machine, entry, ph) = phdrs(b);
            let pvh32 = name.ends_with("_pvh32");
            let pvh = pvh32 || name.ends_with("_pvh64");
            let rwx = name.ends_with("_rwx64");
            assert_eq!(is64, !pvh32, "{name}: ELF class");
            assert_eq!(machine, if pvh32 { 3 } else { 62 }, "{name}: e_machine");
            let loads: Vec<&Phdr> = ph.iter().filter(|p| p.kind == PT_LOAD).collect();
            for p in &loads {
                assert_eq!(p.vaddr, p.paddr, "{name}: identity-linked");
                assert!(p.paddr >= 0x10_0000, "{name}: loaded at or above 1 MiB");
                assert!(p.memsz >= p.filesz, "{name}");
                assert_eq!(p.paddr % 0x1000, 0, "{name}: page-aligned segment");
            }
            let in_text = loads
                .iter()
                .any(|p| p.flags & 1 != 0 && (p.vaddr..p.vaddr + p.memsz).contains(&entry));
            assert!(in_text, "{name}: entry {entry:#x} in an executable segment");
            if rwx {
                assert_eq!(loads.len(), 1, "{name}: one segment");
                assert_eq!(loads[0].flags, 7, "{name}: RWX");
            } else {
                assert_eq!(loads.len(), 3, "{name}: text, rodata, data");
                assert_eq!(loads.iter().map(|p| p.flags).collect::<Vec<_>>(), [5, 4, 6], "{name}");
            }
            match pvh_entry(b, &ph) {
                Some(e) => {
                    assert!(pvh, "{name}: unexpected PVH note");
                    let e = u64::from(e);
                    assert!(
                        loads
                            .iter()
                            .any(|p| p.flags & 1 != 0 && (p.vaddr..p.vaddr + p.memsz).contains(&e)),
                        "{name}"
                    );
                }
                None => assert!(!pvh, "{name}: PVH note missing"),
            }
        }
    }
}
