//! The VMM's low megabyte and the vCPUs' first state: GDT, identity page tables,
//! `hvm_start_info` with its e820 map and command line, per-vCPU boot stacks, and the
//! register values for the two boot protocols.
//!
//! Layout below 1 MiB (the guest image links at or above 1 MiB):
//!
//! | GPA | contents |
//! |---|---|
//! | `0x1000` | GDT: null, `0x08` 64-bit code, `0x10` flat data, `0x18` 32-bit flat code, `0x20` TSS |
//! | `0x1800` | a 104-byte TSS (for PVH's "tr: 32-bit TSS" and for valid task state) |
//! | `0x2000` | PML4, `0x3000` PDPT, `0x4000..` page directories (2 MiB pages) |
//! | `0x50000` | `hvm_start_info`, `0x50100` its e820 memory map |
//! | `0x51000` | command line (NUL-terminated) |
//! | `0x60000..0xA0000` | boot stacks, 4 KiB per vCPU (vCPU i's top at `0x61000 + i * 0x1000`) |
//! | `0xFE000`, `0xFF000` | left to the Xen personality: its XenStore and PV console rings (docs/abi/xen.md) |

use vm_memory::{Bytes, GuestAddress};

use polyvisor_core::GuestMemoryMmap;

/// Where the GDT lives.
pub const GDT_GPA: u64 = 0x1000;
/// Where the TSS lives.
pub const TSS_GPA: u64 = 0x1800;
/// Where the PML4 lives.
pub const PML4_GPA: u64 = 0x2000;
/// Where the PDPT lives.
pub const PDPT_GPA: u64 = 0x3000;
/// Where the first page directory lives.
pub const PD_GPA: u64 = 0x4000;
/// Where `hvm_start_info` lives.
pub const START_INFO_GPA: u64 = 0x5_0000;
/// Where the e820 map lives.
pub const MEMMAP_GPA: u64 = 0x5_0100;
/// Where the command line lives.
pub const CMDLINE_GPA: u64 = 0x5_1000;
/// Bytes reserved for the command line (including the NUL).
pub const CMDLINE_MAX: usize = 0x1000;
/// The first boot stack's base.
pub const STACKS_GPA: u64 = 0x6_0000;
/// Bytes of boot stack per vCPU.
pub const STACK_SIZE: u64 = 0x1000;
/// The end of the VMM-owned area.
pub const LOW_END: u64 = 0x10_0000;
/// At most this many vCPUs have a boot stack.
pub const MAX_VCPUS: u32 = ((0xA_0000 - STACKS_GPA) / STACK_SIZE) as u32;
/// At most this much RAM is supported: the identity map's page directories (2 MiB pages)
/// must fit between `PD_GPA` and `START_INFO_GPA`.
pub const MAX_MAPPED: u64 = ((START_INFO_GPA - PD_GPA) / 0x1000) << 30;

/// Selector of the 64-bit code segment.
pub const SEL_CODE64: u16 = 0x08;
/// Selector of the flat data segment.
pub const SEL_DATA: u16 = 0x10;
/// Selector of the 32-bit flat code segment.
pub const SEL_CODE32: u16 = 0x18;
/// Selector of the TSS.
pub const SEL_TSS: u16 = 0x20;

/// The PVH start-info magic.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// e820 RAM.
pub const E820_RAM: u32 = 1;
/// e820 reserved.
pub const E820_RESERVED: u32 = 2;

/// The GDT's descriptors, in order (the TSS takes two slots).
pub fn gdt_entries() -> [u64; 6] {
    let tss_base = TSS_GPA;
    let tss_limit = 0x67u64;
    let tss_low = tss_limit
        | ((tss_base & 0xff_ffff) << 16)
        | (0x89u64 << 40)
        | (((tss_base >> 24) & 0xff) << 56);
    [
        0,
        0x00af_9b00_0000_ffff, // 0x08: 64-bit code, DPL 0, accessed
        0x00cf_9300_0000_ffff, // 0x10: flat 32-bit data, accessed
        0x00cf_9b00_0000_ffff, // 0x18: flat 32-bit code, accessed
        tss_low,               // 0x20: TSS (available)
        tss_base >> 32,
    ]
}

/// Why the low megabyte could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Guest memory refused a write.
    #[error("writing the {what} at {gpa:#x}: {source}")]
    Memory {
        /// What was being written.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// vm-memory's reason.
        source: vm_memory::GuestMemoryError,
    },
    /// Too many vCPUs for the boot stacks.
    #[error("{0} vCPUs requested; the boot layout has stacks for at most {MAX_VCPUS}")]
    TooManyVcpus(u32),
    /// RAM too small or too large.
    #[error(
        "guest RAM of {0:#x} bytes is not supported: it must be at least 2 MiB and at most 76 GiB"
    )]
    BadRamSize(u64),
    /// The command line does not fit.
    #[error("the command line is {0} bytes; at most {max} fit", max = CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    gpa: u64,
    bytes: &[u8],
) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(gpa)).map_err(|source| BootError::Memory {
        what,
        gpa,
        source,
    })
}

/// The e820 map the guest sees: the low megabyte reserved, RAM from 1 MiB to the end.
pub fn e820_map(ram_size: u64) -> Vec<(u64, u64, u32)> {
    vec![(0, LOW_END, E820_RESERVED), (LOW_END, ram_size.saturating_sub(LOW_END), E820_RAM)]
}

/// Number of page directories the identity map needs (at least the first 4 GiB).
pub fn page_directories(ram_size: u64) -> u64 {
    ram_size.div_ceil(1 << 30).max(4)
}

/// Writes the VMM's structures into the low megabyte.
pub fn write_low_memory(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    vcpus: u32,
    cmdline: &str,
) -> Result<(), BootError> {
    if !(2 << 20..=MAX_MAPPED).contains(&ram_size) {
        return Err(BootError::BadRamSize(ram_size));
    }
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(BootError::TooManyVcpus(vcpus));
    }
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    // GDT and TSS.
    let gdt: Vec<u8> = gdt_entries().iter().flat_map(|d| d.to_le_bytes()).collect();
    write(mem, "GDT", GDT_GPA, &gdt)?;
    let mut tss = [0u8; 104];
    // I/O map base beyond the limit: no I/O permission bitmap.
    tss[102..104].copy_from_slice(&104u16.to_le_bytes());
    write(mem, "TSS", TSS_GPA, &tss)?;

    // Identity map: PML4[0] -> PDPT; PDPT[i] -> PD i; PD entries 2 MiB pages (P|RW|PS|A|D).
    write(mem, "PML4", PML4_GPA, &(PDPT_GPA | 0x3).to_le_bytes())?;
    let pds = page_directories(ram_size);
    let mut pdpt = Vec::with_capacity(pds as usize * 8);
    for i in 0..pds {
        pdpt.extend_from_slice(&((PD_GPA + i * 0x1000) | 0x3).to_le_bytes());
    }
    write(mem, "PDPT", PDPT_GPA, &pdpt)?;
    let mut pd = Vec::with_capacity(4096);
    for i in 0..pds {
        pd.clear();
        for j in 0..512u64 {
            let addr = ((i * 512) + j) << 21;
            pd.extend_from_slice(&(addr | 0xe3).to_le_bytes());
        }
        write(mem, "page directory", PD_GPA + i * 0x1000, &pd)?;
    }

    // Command line.
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    write(mem, "command line", CMDLINE_GPA, &cl)?;

    // e820 map: struct hvm_memmap_table_entry { u64 addr, size; u32 type, reserved; }.
    let map = e820_map(ram_size);
    let mut mm = Vec::with_capacity(map.len() * 24);
    for (addr, size, kind) in &map {
        mm.extend_from_slice(&addr.to_le_bytes());
        mm.extend_from_slice(&size.to_le_bytes());
        mm.extend_from_slice(&kind.to_le_bytes());
        mm.extend_from_slice(&0u32.to_le_bytes());
    }
    write(mem, "memory map", MEMMAP_GPA, &mm)?;

    // struct hvm_start_info, version 1.
    let mut si = [0u8; 56];
    si[0..4].copy_from_slice(&HVM_START_MAGIC.to_le_bytes());
    si[4..8].copy_from_slice(&1u32.to_le_bytes());
    // flags 0, nr_modules 0, modlist_paddr 0
    si[24..32].copy_from_slice(&CMDLINE_GPA.to_le_bytes());
    // rsdp_paddr 0
    si[40..48].copy_from_slice(&MEMMAP_GPA.to_le_bytes());
    si[48..52].copy_from_slice(&(map.len() as u32).to_le_bytes());
    write(mem, "hvm_start_info", START_INFO_GPA, &si)?;
    Ok(())
}

/// The boot stack top of vCPU `index` (16-byte aligned).
pub fn stack_top(index: u32) -> u64 {
    STACKS_GPA + (u64::from(index) + 1) * STACK_SIZE
}

/// A segment register as the vCPU's first state wants it (neutral of KVM's struct).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Selector.
    pub selector: u16,
    /// Type field.
    pub type_: u8,
    /// Code/data (1) or system (0).
    pub s: bool,
    /// 64-bit code.
    pub l: bool,
    /// 32-bit default operand size.
    pub db: bool,
    /// Base.
    pub base: u64,
    /// Limit (bytes).
    pub limit: u32,
}

/// The vCPU state a boot protocol starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RDI (ELF64: start info).
    pub rdi: u64,
    /// RSI (vCPU index).
    pub rsi: u64,
    /// RBX (PVH: start info).
    pub rbx: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// CS.
    pub cs: Seg,
    /// DS, ES, FS, GS, SS.
    pub data: Seg,
    /// TR.
    pub tr: Seg,
}

fn flat(selector: u16, type_: u8, l: bool, db: bool) -> Seg {
    Seg { selector, type_, s: true, l, db, base: 0, limit: 0xffff_ffff }
}

fn tss_seg() -> Seg {
    Seg {
        selector: SEL_TSS,
        type_: 11, // busy 32/64-bit TSS
        s: false,
        l: false,
        db: false,
        base: TSS_GPA,
        limit: 0x67,
    }
}

/// ELF64 direct: long mode, paging on with the identity map, CS 64-bit, RDI = start info,
/// RSI = vCPU index.
pub fn elf64_entry(entry: u64, index: u32) -> EntryState {
    EntryState {
        rip: entry,
        rsp: stack_top(index),
        rdi: START_INFO_GPA,
        rsi: u64::from(index),
        rbx: 0,
        cr0: 0x8000_0033, // PG | NE | ET | MP | PE
        cr3: PML4_GPA,
        cr4: 0x20,   // PAE
        efer: 0x500, // LMA | LME
        cs: flat(SEL_CODE64, 11, true, false),
        data: flat(SEL_DATA, 3, false, true),
        tr: tss_seg(),
    }
}

/// PVH: flat 32-bit protected mode, paging off, EBX = start info, ESI = vCPU index.
pub fn pvh_entry(entry: u32, index: u32) -> EntryState {
    EntryState {
        rip: u64::from(entry),
        rsp: 0,
        rdi: 0,
        rsi: u64::from(index),
        rbx: START_INFO_GPA,
        cr0: 0x11, // ET | PE
        cr3: 0,
        cr4: 0,
        efer: 0,
        cs: flat(SEL_CODE32, 11, false, true),
        data: flat(SEL_DATA, 3, false, true),
        tr: tss_seg(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_memory_layout_is_consistent() {
        let mem = polyvisor_core::testing::memory(8 << 20);
        write_low_memory(&mem, 8 << 20, 2, "console=e9").unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(START_INFO_GPA)).unwrap();
        assert_eq!(magic, HVM_START_MAGIC);
        let cmd: u64 = mem.read_obj(GuestAddress(START_INFO_GPA + 24)).unwrap();
        assert_eq!(cmd, CMDLINE_GPA);
        let entries: u32 = mem.read_obj(GuestAddress(START_INFO_GPA + 48)).unwrap();
        assert_eq!(entries, 2);
        let pd0: u64 = mem.read_obj(GuestAddress(PD_GPA + 8)).unwrap();
        assert_eq!(pd0, (1 << 21) | 0xe3);
        assert!(stack_top(MAX_VCPUS - 1) <= 0xA_0000);
        assert_eq!(stack_top(0) % 16, 0);
        assert!(PD_GPA + page_directories(MAX_MAPPED) * 0x1000 <= START_INFO_GPA);
        assert!(write_low_memory(&mem, 8 << 20, MAX_VCPUS + 1, "").is_err());
    }
}
