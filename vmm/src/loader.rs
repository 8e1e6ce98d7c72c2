//! The kernel loader: a bounds-checked ELF reader that never panics on hostile input.
//!
//! [`parse_kernel`] is a pure function over the file's bytes (a fuzz target can call it as
//! it is). It accepts ELFCLASS64 EM_X86_64 images (ELF64 direct boot, and PVH when they carry
//! a XEN_ELFNOTE_PHYS32_ENTRY note) and ELFCLASS32 images (EM_386 or EM_X86_64) with a PVH
//! note. Every `PT_LOAD` segment must lie in guest RAM at or above 1 MiB (the VMM owns the
//! low megabyte), and no two segments may overlap.

use std::fmt;
use std::ops::Range;

/// Guest-physical address where guest images may start: the VMM owns everything below.
pub const KERNEL_MIN_GPA: u64 = 0x10_0000;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u32 = 1;
const ET_EXEC: u16 = 2;
/// e_machine of 32-bit x86.
pub const EM_386: u16 = 3;
/// e_machine of x86-64.
pub const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PN_XNUM: u16 = 0xffff;
/// The Xen ELF note that carries the PVH 32-bit entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// At most this many program headers are read (a bound on work, far above real kernels).
pub const MAX_PHDRS: usize = 256;

/// Why a kernel file cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file is empty.
    #[error("the kernel file is empty")]
    Empty,
    /// The file ends before a structure it declares.
    #[error("the kernel file is truncated: {what} needs bytes {start:#x}..{end:#x} but the file has {len:#x}")]
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// Not an ELF file.
    #[error("not an ELF file (the first bytes are {0:02x?}, not 7f 45 4c 46)")]
    NotElf([u8; 4]),
    /// Neither ELFCLASS32 nor ELFCLASS64.
    #[error("unsupported ELF class {0} (expected 1 = ELFCLASS32 or 2 = ELFCLASS64)")]
    BadClass(u8),
    /// Big-endian or unknown data encoding.
    #[error("unsupported ELF data encoding {0} (x86 images are little-endian, 1)")]
    BadEncoding(u8),
    /// Unknown ELF version.
    #[error("unsupported ELF version {0}")]
    BadVersion(u32),
    /// Not an executable (relocatable objects and shared objects are not loaded).
    #[error("ELF type {0} is not ET_EXEC (2): link the kernel as a static executable")]
    NotExecutable(u16),
    /// A machine this VMM cannot run.
    #[error("ELF machine {machine} ({class}) is not x86: expected EM_X86_64 (62){also}", also = if *class == ElfClass::Elf32 { " or EM_386 (3)" } else { "" })]
    WrongMachine {
        /// e_machine.
        machine: u16,
        /// The file's class.
        class: ElfClass,
    },
    /// The program header table is malformed.
    #[error("bad program header table: {0}")]
    BadProgramHeaders(String),
    /// No `PT_LOAD` segment.
    #[error("the image has no loadable (PT_LOAD) segment")]
    NoSegments,
    /// A segment's file bytes lie outside the file.
    #[error("segment {index}: file bytes {start:#x}..{end:#x} lie outside the {len:#x}-byte file")]
    SegmentOutsideFile {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// A segment whose file size exceeds its memory size.
    #[error("segment {index}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}")]
    FileLargerThanMemory {
        /// Program header index.
        index: usize,
        /// p_filesz.
        filesz: u64,
        /// p_memsz.
        memsz: u64,
    },
    /// A segment outside guest RAM.
    #[error("segment {index}: {start:#x}..{end:#x} lies outside guest RAM (0..{ram:#x})")]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// First guest-physical byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Guest RAM size.
        ram: u64,
    },
    /// A segment in the VMM's low megabyte.
    #[error("segment {index}: {start:#x}..{end:#x} reaches below 1 MiB, which the VMM owns (GDT, page tables, start info, stacks); link the image at or above 0x100000")]
    SegmentInLowMemory {
        /// Program header index.
        index: usize,
        /// First guest-physical byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Two segments share memory.
    #[error("segments {first} ({first_range}) and {second} ({second_range}) overlap")]
    SegmentsOverlap {
        /// The lower program header index.
        first: usize,
        /// Its range.
        first_range: GpaRange,
        /// The other index.
        second: usize,
        /// Its range.
        second_range: GpaRange,
    },
    /// The entry point is not inside an executable segment.
    #[error("the entry point {0:#x} is not inside a loaded executable segment")]
    EntryOutsideSegments(u64),
    /// The PVH note's entry is not inside a loaded segment.
    #[error(
        "the PVH entry {0:#x} (XEN_ELFNOTE_PHYS32_ENTRY) is not inside a loaded executable segment"
    )]
    PvhEntryOutsideSegments(u64),
    /// A malformed note.
    #[error("malformed ELF note in program header {0}")]
    BadNote(usize),
}

/// A guest-physical range, printed as `0x..-0x..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl fmt::Display for GpaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end)
    }
}

/// ELF class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    /// ELFCLASS32.
    Elf32,
    /// ELFCLASS64.
    Elf64,
}

impl fmt::Display for ElfClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElfClass::Elf32 => "ELFCLASS32",
            ElfClass::Elf64 => "ELFCLASS64",
        })
    }
}

/// One loadable segment, with its file bytes copied out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Program header index.
    pub index: usize,
    /// Guest-physical load address (p_paddr).
    pub gpa: u64,
    /// Virtual address (p_vaddr).
    pub vaddr: u64,
    /// Bytes in memory (p_memsz); the tail past `data` is zeroed (.bss).
    pub memsz: u64,
    /// The file bytes (p_filesz of them).
    pub data: Vec<u8>,
    /// Executable (PF_X).
    pub executable: bool,
    /// Writable (PF_W).
    pub writable: bool,
}

impl Segment {
    /// The guest-physical range the segment occupies.
    pub fn range(&self) -> Range<u64> {
        self.gpa..self.gpa.saturating_add(self.memsz)
    }
}

/// A parsed, validated kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// The ELF class.
    pub class: ElfClass,
    /// e_machine.
    pub machine: u16,
    /// The 64-bit entry as a guest-physical address (ELF64 images only).
    pub entry64: Option<u64>,
    /// The PVH 32-bit entry from the XEN_ELFNOTE_PHYS32_ENTRY note, if any.
    pub pvh_entry: Option<u32>,
    /// PT_LOAD segments sorted by address.
    pub segments: Vec<Segment>,
}

/// Little-endian reads that fail instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn slice(&self, what: &'static str, start: u64, len: u64) -> Result<&[u8], LoadError> {
        let total = self.bytes.len() as u64;
        let end = start.checked_add(len).ok_or(LoadError::Truncated {
            what,
            start,
            end: u64::MAX,
            len: total,
        })?;
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        range.and_then(|(s, e)| self.bytes.get(s..e)).ok_or(LoadError::Truncated {
            what,
            start,
            end,
            len: total,
        })
    }

    fn u8(&self, what: &'static str, at: u64) -> Result<u8, LoadError> {
        Ok(self.array::<1>(what, at)?[0])
    }
    fn u16(&self, what: &'static str, at: u64) -> Result<u16, LoadError> {
        Ok(u16::from_le_bytes(self.array(what, at)?))
    }
    fn u32(&self, what: &'static str, at: u64) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array(what, at)?))
    }
    fn u64(&self, what: &'static str, at: u64) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array(what, at)?))
    }
    fn array<const N: usize>(&self, what: &'static str, at: u64) -> Result<[u8; N], LoadError> {
        let s = self.slice(what, at, N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
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

/// Parses and validates a kernel image for a guest with `ram_size` bytes of RAM at GPA 0.
///
/// Pure and total: any input gives `Ok` or a [`LoadError`] that says what is wrong.
pub fn parse_kernel(bytes: &[u8], ram_size: u64) -> Result<KernelImage, LoadError> {
    if bytes.is_empty() {
        return Err(LoadError::Empty);
    }
    let r = Reader { bytes };
    let magic: [u8; 4] = match r.array("the ELF magic", 0) {
        Ok(m) => m,
        Err(_) => {
            let mut m = [0u8; 4];
            for (d, s) in m.iter_mut().zip(bytes) {
                *d = *s;
            }
            if ELF_MAGIC.starts_with(bytes) {
                return Err(LoadError::Truncated {
                    what: "the ELF header",
                    start: 0,
                    end: 52,
                    len: bytes.len() as u64,
                });
            }
            return Err(LoadError::NotElf(m));
        }
    };
    if magic != ELF_MAGIC {
        return Err(LoadError::NotElf(magic));
    }
    let class = match r.u8("the ELF header", 4)? {
        ELFCLASS32 => ElfClass::Elf32,
        ELFCLASS64 => ElfClass::Elf64,
        other => return Err(LoadError::BadClass(other)),
    };
    let header_len = if class == ElfClass::Elf64 { 64 } else { 52 };
    r.slice("the ELF header", 0, header_len)?;
    let encoding = r.u8("the ELF header", 5)?;
    if encoding != ELFDATA2LSB {
        return Err(LoadError::BadEncoding(encoding));
    }
    let e_type = r.u16("the ELF header", 16)?;
    let machine = r.u16("the ELF header", 18)?;
    let version = r.u32("the ELF header", 20)?;
    if version != EV_CURRENT {
        return Err(LoadError::BadVersion(version));
    }
    if e_type != ET_EXEC {
        return Err(LoadError::NotExecutable(e_type));
    }
    let machine_ok = match class {
        ElfClass::Elf64 => machine == EM_X86_64,
        ElfClass::Elf32 => machine == EM_X86_64 || machine == EM_386,
    };
    if !machine_ok {
        return Err(LoadError::WrongMachine { machine, class });
    }
    let (entry, phoff, phentsize, phnum) = match class {
        ElfClass::Elf64 => (
            r.u64("the ELF header", 24)?,
            r.u64("the ELF header", 32)?,
            r.u16("the ELF header", 54)?,
            r.u16("the ELF header", 56)?,
        ),
        ElfClass::Elf32 => (
            u64::from(r.u32("the ELF header", 24)?),
            u64::from(r.u32("the ELF header", 28)?),
            r.u16("the ELF header", 42)?,
            r.u16("the ELF header", 44)?,
        ),
    };
    let want_entsize: u16 = if class == ElfClass::Elf64 { 56 } else { 32 };
    if phnum == 0 {
        return Err(LoadError::NoSegments);
    }
    if phnum == PN_XNUM || usize::from(phnum) > MAX_PHDRS {
        return Err(LoadError::BadProgramHeaders(format!(
            "{phnum} program headers (at most {MAX_PHDRS} are accepted)"
        )));
    }
    if phentsize != want_entsize {
        return Err(LoadError::BadProgramHeaders(format!(
            "e_phentsize is {phentsize}, expected {want_entsize} for {class}"
        )));
    }
    let table_len = u64::from(phnum) * u64::from(phentsize);
    r.slice("the program header table", phoff, table_len)?;

    let mut phdrs = Vec::with_capacity(usize::from(phnum));
    for i in 0..u64::from(phnum) {
        let o = phoff + i * u64::from(phentsize);
        let what = "a program header";
        phdrs.push(match class {
            ElfClass::Elf64 => Phdr {
                kind: r.u32(what, o)?,
                flags: r.u32(what, o + 4)?,
                offset: r.u64(what, o + 8)?,
                vaddr: r.u64(what, o + 16)?,
                paddr: r.u64(what, o + 24)?,
                filesz: r.u64(what, o + 32)?,
                memsz: r.u64(what, o + 40)?,
            },
            ElfClass::Elf32 => Phdr {
                kind: r.u32(what, o)?,
                offset: u64::from(r.u32(what, o + 4)?),
                vaddr: u64::from(r.u32(what, o + 8)?),
                paddr: u64::from(r.u32(what, o + 12)?),
                filesz: u64::from(r.u32(what, o + 16)?),
                memsz: u64::from(r.u32(what, o + 20)?),
                flags: r.u32(what, o + 24)?,
            },
        });
    }

    let mut segments = Vec::new();
    let mut pvh_entry = None;
    let file_len = bytes.len() as u64;
    for (index, p) in phdrs.iter().enumerate() {
        if p.kind == PT_NOTE {
            if let Some(e) = find_pvh_note(&r, index, p.offset, p.filesz)? {
                pvh_entry = Some(e);
            }
            continue;
        }
        if p.kind != PT_LOAD || p.memsz == 0 {
            continue;
        }
        if p.filesz > p.memsz {
            return Err(LoadError::FileLargerThanMemory {
                index,
                filesz: p.filesz,
                memsz: p.memsz,
            });
        }
        let data = r.slice("a segment", p.offset, p.filesz).map_err(|_| {
            LoadError::SegmentOutsideFile {
                index,
                start: p.offset,
                end: p.offset.saturating_add(p.filesz),
                len: file_len,
            }
        })?;
        let end = p.paddr.checked_add(p.memsz);
        match end {
            Some(end) if end <= ram_size => {
                if p.paddr < KERNEL_MIN_GPA {
                    return Err(LoadError::SegmentInLowMemory { index, start: p.paddr, end });
                }
            }
            _ => {
                return Err(LoadError::SegmentOutsideRam {
                    index,
                    start: p.paddr,
                    end: end.unwrap_or(u64::MAX),
                    ram: ram_size,
                })
            }
        }
        segments.push(Segment {
            index,
            gpa: p.paddr,
            vaddr: p.vaddr,
            memsz: p.memsz,
            data: data.to_vec(),
            executable: p.flags & PF_X != 0,
            writable: p.flags & PF_W != 0,
        });
    }
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    segments.sort_by_key(|s| s.gpa);
    for pair in segments.windows(2) {
        if let [a, b] = pair {
            if b.gpa < a.gpa.saturating_add(a.memsz) {
                let (first, second) = if a.index < b.index { (a, b) } else { (b, a) };
                return Err(LoadError::SegmentsOverlap {
                    first: first.index,
                    first_range: GpaRange { start: first.gpa, end: first.gpa + first.memsz },
                    second: second.index,
                    second_range: GpaRange { start: second.gpa, end: second.gpa + second.memsz },
                });
            }
        }
    }
    let in_exec = |gpa: u64| segments.iter().any(|s| s.executable && s.range().contains(&gpa));
    let entry64 = if class == ElfClass::Elf64 {
        // e_entry is virtual; the VMM identity-maps RAM, so run it at its physical address.
        let phys = segments
            .iter()
            .filter(|s| s.executable)
            .find(|s| entry >= s.vaddr && entry - s.vaddr < s.memsz)
            .map(|s| entry - s.vaddr + s.gpa);
        match phys {
            Some(p) => Some(p),
            None if pvh_entry.is_some() => None,
            None => return Err(LoadError::EntryOutsideSegments(entry)),
        }
    } else {
        None
    };
    if let Some(e) = pvh_entry {
        if !in_exec(u64::from(e)) {
            return Err(LoadError::PvhEntryOutsideSegments(u64::from(e)));
        }
    }
    Ok(KernelImage { class, machine, entry64, pvh_entry, segments })
}

/// Walks the notes of one PT_NOTE segment for XEN_ELFNOTE_PHYS32_ENTRY.
fn find_pvh_note(
    r: &Reader<'_>,
    index: usize,
    offset: u64,
    size: u64,
) -> Result<Option<u32>, LoadError> {
    let notes = r.slice("a note segment", offset, size).map_err(|_| LoadError::BadNote(index))?;
    let n = Reader { bytes: notes };
    let mut at = 0u64;
    let len = notes.len() as u64;
    while at + 12 <= len {
        let namesz = u64::from(n.u32("a note", at)?);
        let descsz = u64::from(n.u32("a note", at + 4)?);
        let kind = n.u32("a note", at + 8)?;
        let name_at = at + 12;
        let desc_at =
            name_at.checked_add(namesz.next_multiple_of(4)).ok_or(LoadError::BadNote(index))?;
        let next =
            desc_at.checked_add(descsz.next_multiple_of(4)).ok_or(LoadError::BadNote(index))?;
        if next > len {
            return Err(LoadError::BadNote(index));
        }
        let name = n.slice("a note", name_at, namesz)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && (name == b"Xen\0" || name == b"Xen") {
            // The descriptor is a 32-bit address (some linkers emit it as 64-bit).
            return match descsz {
                4 => Ok(Some(n.u32("a note", desc_at)?)),
                8 => u32::try_from(n.u64("a note", desc_at)?)
                    .map(Some)
                    .map_err(|_| LoadError::BadNote(index)),
                _ => Err(LoadError::BadNote(index)),
            };
        }
        at = next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::elf;

    const RAM: u64 = 16 << 20;

    fn good64() -> Vec<u8> {
        elf(
            ElfClass::Elf64,
            EM_X86_64,
            0x10_0000,
            &[(0x10_0000, 0x1000, &[0x90, 0xf4], 5), (0x10_1000, 0x2000, &[1, 2, 3], 6)],
            None,
        )
    }

    #[test]
    fn parses_a_good_elf64() {
        let k = parse_kernel(&good64(), RAM).unwrap();
        assert_eq!(k.class, ElfClass::Elf64);
        assert_eq!(k.entry64, Some(0x10_0000));
        assert_eq!(k.pvh_entry, None);
        assert_eq!(k.segments.len(), 2);
        assert!(k.segments[0].executable && !k.segments[0].writable);
        assert!(k.segments[1].writable);
        assert_eq!(k.segments[1].data, vec![1, 2, 3]);
    }

    #[test]
    fn parses_pvh32() {
        let img = elf(
            ElfClass::Elf32,
            EM_386,
            0x10_0000,
            &[(0x10_0000, 0x1000, &[0xf4], 7)],
            Some(0x10_0000),
        );
        let k = parse_kernel(&img, RAM).unwrap();
        assert_eq!(k.class, ElfClass::Elf32);
        assert_eq!(k.pvh_entry, Some(0x10_0000));
        assert_eq!(k.entry64, None);
    }

    #[test]
    fn rejects_bad_files_with_clear_errors() {
        assert_eq!(parse_kernel(&[], RAM), Err(LoadError::Empty));
        assert!(matches!(parse_kernel(b"MZ\x90\x00hello", RAM), Err(LoadError::NotElf(_))));
        let good = good64();
        for cut in [3, 20, 63, 64 + 56, good.len() - 1] {
            let e = parse_kernel(&good[..cut], RAM).unwrap_err();
            assert!(
                matches!(e, LoadError::Truncated { .. } | LoadError::SegmentOutsideFile { .. }),
                "cut {cut}: {e}"
            );
        }
        let arm = elf(ElfClass::Elf64, 183, 0x10_0000, &[(0x10_0000, 16, &[0], 5)], None);
        let e = parse_kernel(&arm, RAM).unwrap_err();
        assert!(matches!(e, LoadError::WrongMachine { machine: 183, .. }));
        assert!(e.to_string().contains("EM_X86_64"));
        let big = elf(ElfClass::Elf64, EM_X86_64, 0x10_0000, &[(0x10_0000, RAM, &[0], 5)], None);
        assert!(matches!(parse_kernel(&big, RAM), Err(LoadError::SegmentOutsideRam { .. })));
        let low = elf(ElfClass::Elf64, EM_X86_64, 0x8000, &[(0x8000, 16, &[0], 5)], None);
        assert!(matches!(parse_kernel(&low, RAM), Err(LoadError::SegmentInLowMemory { .. })));
        let overlap = elf(
            ElfClass::Elf64,
            EM_X86_64,
            0x10_0000,
            &[(0x10_0000, 0x2000, &[0], 5), (0x10_1000, 0x1000, &[0], 6)],
            None,
        );
        let e = parse_kernel(&overlap, RAM).unwrap_err();
        assert!(matches!(e, LoadError::SegmentsOverlap { .. }), "{e}");
        let wrap = elf(ElfClass::Elf64, EM_X86_64, 0x10_0000, &[(u64::MAX - 4, 16, &[0], 5)], None);
        assert!(matches!(parse_kernel(&wrap, RAM), Err(LoadError::SegmentOutsideRam { .. })));
        let noentry = elf(ElfClass::Elf64, EM_X86_64, 0x50_0000, &[(0x10_0000, 16, &[0], 5)], None);
        assert!(matches!(parse_kernel(&noentry, RAM), Err(LoadError::EntryOutsideSegments(_))));
    }

    #[test]
    fn never_panics_on_mutations() {
        let good = good64();
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            let mut img = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % img.len();
                img[i] = (seed >> 32) as u8;
            }
            let _ = parse_kernel(&img, RAM);
            let cut = (seed as usize >> 8) % img.len();
            let _ = parse_kernel(&img[..cut], RAM);
        }
    }
}
