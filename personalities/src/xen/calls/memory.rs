//! `__HYPERVISOR_memory_op` (`do_memory_op`, `xen/common/memory.c`; `arch_memory_op`,
//! `xen/arch/x86/mm.c`; `hvm_memory_op`, `xen/arch/x86/hvm/hypercall.c`).
//!
//! The command is an `unsigned long`: bits 5:0 select the operation, the bits above carry a
//! continuation's start extent (`MEMOP_EXTENT_SHIFT`). The domain's RAM is the VMM's guest
//! memory: each region (contiguous ones merged) is one E820 RAM entry and counts towards the
//! reservation. Only this domain exists: `DOMID_SELF` or its own id, anything else `-ESRCH`.
//!
//! - `XENMEM_maximum_ram_page`: one past the highest RAM frame (Xen reports the host's; here
//!   the VM is the machine). A start extent is `-EINVAL`.
//! - `XENMEM_current_reservation`, `XENMEM_maximum_reservation` (`struct
//!   xen_memory_domain`): RAM pages; `XENMEM_maximum_gpfn`: the highest RAM frame.
//! - `XENMEM_add_to_physmap` (`struct xen_add_to_physmap`): `XENMAPSPACE_shared_info` with
//!   `idx` 0 places the shared_info page at `gpfn`, which must be RAM here (Xen can also
//!   map it over a hole): it is zeroed the first time, moved with its contents later, and
//!   filled with the wallclock and each vCPU's time. The layout (native or compat) is latched
//!   from the caller's mode. `XENMAPSPACE_grant_table` is `-EINVAL` (no grant frames),
//!   `gmfn`/`gmfn_range` `-EOPNOTSUPP` (RAM frames cannot be moved), `gmfn_foreign`
//!   `-ENOSYS`, `dev_mmio` `-EACCES`, other spaces `-EINVAL`.
//! - `XENMEM_memory_map` (`struct xen_memory_map`): up to `nr_entries` E820 entries
//!   (20 bytes each), `nr_entries` set to the number written. The entries are the memory
//!   map the VMM gave the guest at boot ([`Platform::memory_map`], reserved ranges
//!   included), or one RAM entry per guest memory region when it gave none.
//!
//! [`Platform::memory_map`]: polyvisor_core::Platform::memory_map
//! - `XENMEM_machphys_mapping` and everything else: `-ENOSYS`.

use std::sync::atomic::Ordering;

use polyvisor_core::{Call, Reply};
use vm_memory::{Bytes, GuestAddress};

use super::{err, ok};
use crate::xen::abi::errno::{EACCES, EDOM, EINVAL, ENOSYS, EOPNOTSUPP, ESRCH};
use crate::xen::abi::memory::*;
use crate::xen::abi::{PAGE_SHIFT, PAGE_SIZE};
use crate::xen::codec::Width;
use crate::xen::guest::{is_ram_frame, le, ram_ranges, Fault, Guest};
use crate::xen::shared_info::{write_vcpu_time, write_wallclock, LEGACY_MAX_VCPUS, VCPU_INFO_LEN};
use crate::xen::state::NONE;
use crate::xen::Xen;

/// One past the highest RAM frame.
fn ram_end_frame(call: &Call<'_>) -> u64 {
    ram_ranges(call.memory)
        .map(|(start, len)| start.saturating_add(len) >> PAGE_SHIFT)
        .max()
        .unwrap_or(0)
}

/// RAM pages.
fn ram_pages(call: &Call<'_>) -> u64 {
    ram_ranges(call.memory).map(|(_, len)| len >> PAGE_SHIFT).fold(0u64, u64::saturating_add)
}

/// Places shared_info at frame `gfn` and fills it.
pub fn map_shared_info(xen: &Xen, call: &Call<'_>, gfn: u64, compat: bool) {
    let memory = call.memory;
    let base = gfn << PAGE_SHIFT;
    let old = xen.state.shared_info_gfn.swap(gfn, Ordering::AcqRel);
    let mut page = [0u8; PAGE_SIZE as usize];
    if old != NONE && old != gfn {
        // The page moves with its contents (event masks and pending bits stay).
        if memory.read_slice(&mut page, GuestAddress(old << PAGE_SHIFT)).is_err() {
            page = [0u8; PAGE_SIZE as usize];
        }
    }
    if old != gfn {
        // The frame was checked to be RAM.
        let _ = memory.write_slice(&page, GuestAddress(base));
    }
    xen.state.shinfo_compat.store(compat, Ordering::Release);
    write_wallclock(memory, call.platform, base, compat);
    let clock = xen.clock(call.platform);
    let slots = call.platform.vcpu_count().min(LEGACY_MAX_VCPUS);
    for id in 0..slots {
        let registered =
            xen.state.vcpu(id).is_some_and(|v| v.vcpu_info.load(Ordering::Acquire) != NONE);
        if !registered {
            let slot = base + u64::from(id) * VCPU_INFO_LEN;
            write_vcpu_time(memory, call.platform, clock, slot);
        }
    }
}

fn add_to_physmap(xen: &Xen, call: &Call<'_>, start_extent: u64, arg: u64) -> Result<Reply, Fault> {
    if start_extent != u64::from(start_extent as u16) {
        return Ok(err(EDOM));
    }
    let g = Guest::of(call);
    // struct xen_add_to_physmap { domid_t domid; uint16_t size; unsigned int space;
    // xen_ulong_t idx; xen_pfn_t gpfn; }: 24 bytes native, 16 compat.
    let (domid, space, idx, gpfn) = match g.width {
        Width::W64 => {
            let raw = g.read_array::<24>(arg)?;
            let gpfn = le::u64_at(&raw, 16);
            (le::u16_at(&raw, 0), le::u32_at(&raw, 4), le::u64_at(&raw, 8), gpfn)
        }
        Width::W32 => {
            let raw = g.read_array::<16>(arg)?;
            let gpfn = u64::from(le::u32_at(&raw, 12));
            let idx = u64::from(le::u32_at(&raw, 8));
            (le::u16_at(&raw, 0), le::u32_at(&raw, 4), idx, gpfn)
        }
    };
    if space == XENMAPSPACE_gmfn_foreign {
        return Ok(err(ENOSYS));
    }
    if !xen.is_self(domid) {
        return Ok(err(ESRCH));
    }
    if space == XENMAPSPACE_dev_mmio {
        return Ok(err(EACCES));
    }
    Ok(match space {
        XENMAPSPACE_shared_info if idx != 0 => err(EINVAL),
        XENMAPSPACE_shared_info if !is_ram_frame(call.memory, gpfn) => err(EINVAL),
        XENMAPSPACE_shared_info => {
            map_shared_info(xen, call, gpfn, g.width == Width::W32);
            ok(0)
        }
        XENMAPSPACE_gmfn | XENMAPSPACE_gmfn_range => err(EOPNOTSUPP),
        // XENMAPSPACE_grant_table: no grant frames exist; other spaces are unknown.
        _ => err(EINVAL),
    })
}

/// The domain's E820 map: the one the VMM gave the guest at boot (PVH's `hvm_start_info`
/// memory map, so both sources agree, as with Xen's toolstack-set `d->arch.e820`), else one
/// RAM entry per guest memory region.
fn e820(call: &Call<'_>) -> Vec<(u64, u64, u32)> {
    match call.platform.memory_map() {
        Some(map) if !map.is_empty() => map,
        _ => ram_ranges(call.memory).map(|(start, len)| (start, len, E820_RAM)).collect(),
    }
}

fn memory_map(call: &Call<'_>, arg: u64) -> Result<Reply, Fault> {
    let g = Guest::of(call);
    // struct xen_memory_map { unsigned int nr_entries; XEN_GUEST_HANDLE(void) buffer; }:
    // 16 bytes native (handle at 8), 8 compat (handle at 4).
    let mut image = [0u8; 16];
    let len = 2 * g.width.word();
    let header = image.get_mut(..len).ok_or(Fault)?;
    g.read(arg, header)?;
    let nr_entries = le::u32_at(header, 0);
    let buffer = le::word_at(header, g.width.word(), g.width.word());
    let map = e820(call);
    if map.is_empty() {
        // "Backwards compatibility": a domain without a memory map.
        return Ok(err(ENOSYS));
    }
    let n = (nr_entries as usize).min(map.len());
    for (i, (start, size, kind)) in map.into_iter().take(n).enumerate() {
        let mut entry = [0u8; E820_ENTRY_LEN];
        le::put(&mut entry, 0, &start.to_le_bytes());
        le::put(&mut entry, 8, &size.to_le_bytes());
        le::put(&mut entry, 16, &kind.to_le_bytes());
        let at = (i as u64)
            .checked_mul(E820_ENTRY_LEN as u64)
            .and_then(|off| buffer.checked_add(off))
            .ok_or(Fault)?;
        g.write(at, &entry)?;
    }
    le::put(header, 0, &(n as u32).to_le_bytes());
    g.write(arg, header)?;
    Ok(ok(0))
}

fn run(xen: &Xen, call: &Call<'_>) -> Result<Reply, Fault> {
    let cmd = call.arg(0);
    let op = cmd & MEMOP_CMD_MASK;
    let start_extent = cmd >> MEMOP_EXTENT_SHIFT;
    let arg = call.arg(1);
    let g = Guest::of(call);
    Ok(match op {
        XENMEM_maximum_ram_page if start_extent != 0 => err(EINVAL),
        XENMEM_maximum_ram_page => ok(ram_end_frame(call)),
        XENMEM_current_reservation | XENMEM_maximum_reservation | XENMEM_maximum_gpfn => {
            if start_extent != 0 {
                return Ok(err(EINVAL));
            }
            // struct xen_memory_domain { domid_t domid; }
            let domid = le::u16_at(&g.read_array::<2>(arg)?, 0);
            if !xen.is_self(domid) {
                return Ok(err(ESRCH));
            }
            match op {
                XENMEM_maximum_gpfn => ok(ram_end_frame(call).saturating_sub(1)),
                _ => ok(ram_pages(call)),
            }
        }
        XENMEM_add_to_physmap => add_to_physmap(xen, call, start_extent, arg)?,
        XENMEM_memory_map => memory_map(call, arg)?,
        _ => err(ENOSYS),
    })
}

/// The `__HYPERVISOR_memory_op` handler.
pub fn memory_op(xen: &Xen, call: &mut Call<'_>) -> Reply {
    run(xen, call).unwrap_or_else(Reply::from)
}
