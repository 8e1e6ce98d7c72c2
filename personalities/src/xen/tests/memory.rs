//! `__HYPERVISOR_memory_op`.

use std::sync::atomic::Ordering;

use crate::xen::abi::errno::*;
use crate::xen::testutil::{e, e32, regions, Vm};

const NR: u64 = 12;
const ARG: u64 = 0x6000;
const SELF: u16 = 0x7ff0;

/// A native `struct xen_add_to_physmap`.
fn xatp64(domid: u16, space: u32, idx: u64, gpfn: u64) -> [u8; 24] {
    let mut s = [0u8; 24];
    s[..2].copy_from_slice(&domid.to_le_bytes());
    s[4..8].copy_from_slice(&space.to_le_bytes());
    s[8..16].copy_from_slice(&idx.to_le_bytes());
    s[16..].copy_from_slice(&gpfn.to_le_bytes());
    s
}

/// A compat `struct xen_add_to_physmap`.
fn xatp32(domid: u16, space: u32, idx: u32, gpfn: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&domid.to_le_bytes());
    s[4..8].copy_from_slice(&space.to_le_bytes());
    s[8..12].copy_from_slice(&idx.to_le_bytes());
    s[12..].copy_from_slice(&gpfn.to_le_bytes());
    s
}

fn map64(vm: &Vm, domid: u16, space: u32, idx: u64, gpfn: u64) -> u64 {
    vm.write(ARG, &xatp64(domid, space, idx, gpfn));
    vm.rax64(NR, &[7, ARG])
}

#[test]
fn maximum_ram_page_and_reservations() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(NR, &[2, 0]), 0x200);
    assert_eq!(vm.rax32(NR, &[2, 0]), 0x200);
    assert_eq!(vm.rax64(NR, &[2 | (1 << 6), 0]), e(EINVAL), "no continuation");
    for (domid, answer) in [(SELF, 0x200), (1, 0x200), (0, e(ESRCH)), (2, e(ESRCH))] {
        vm.write(ARG, &domid.to_le_bytes());
        assert_eq!(vm.rax64(NR, &[3, ARG]), answer, "current, domid {domid:#x}");
        assert_eq!(vm.rax64(NR, &[4, ARG]), answer, "maximum, domid {domid:#x}");
    }
    vm.write(ARG, &SELF.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[14, ARG]), 0x1ff, "maximum_gpfn");
    assert_eq!(vm.rax64(NR, &[3 | (5 << 6), ARG]), e(EINVAL));
    assert_eq!(vm.rax64(NR, &[3, 0x20_0000]), e(EFAULT));
    assert_eq!(vm.rax32(NR, &[4, 0xffff_ffff]), e32(EFAULT));
}

#[test]
fn reservation_counts_every_region() {
    let vm = Vm::new().with_memory(regions(&[
        (0, 0xa0000),
        (0x10_0000, 0x10_0000),
        (0x20_0000, 0x8000),
    ]));
    vm.write(ARG, &SELF.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[3, ARG]), 0xa0 + 0x100 + 8);
    assert_eq!(vm.rax64(NR, &[2, 0]), 0x208);
    assert_eq!(vm.rax64(NR, &[14, ARG]), 0x207);
}

#[test]
fn shared_info_is_zeroed_and_filled() {
    let vm = Vm::new();
    vm.platform.set_now(5_000_000_000); // 5 s after start; wall clock 1_700_000_000 s
    vm.fill(0x10_0000, 4096, 0xaa);
    assert_eq!(map64(&vm, SELF, 0, 0, 0x100), 0);
    let page = vm.read(0x10_0000, 4096);
    // wc_version even, wc_sec = boot time (1_699_999_995), wc_nsec 0, wc_sec_hi 0.
    assert_eq!(vm.u32_at(0x10_0000 + 3072), 2);
    assert_eq!(vm.u32_at(0x10_0000 + 3076), 1_699_999_995);
    assert_eq!(vm.u32_at(0x10_0000 + 3080), 0);
    assert_eq!(vm.u32_at(0x10_0000 + 3084), 0);
    // Both vCPUs' time: version 2, tsc_timestamp = TSC now, system_time = 5 s,
    // 1 GHz scale (mul 2^31, shift 1), TSC_STABLE flag.
    for v in 0..2u64 {
        let t = 0x10_0000 + v * 64 + 32;
        assert_eq!(vm.u32_at(t), 2, "vcpu {v}");
        assert_eq!(vm.u64_at(t + 8), 5_000_000_000);
        assert_eq!(vm.u64_at(t + 16), 5_000_000_000);
        assert_eq!(vm.u32_at(t + 24), 0x8000_0000);
        assert_eq!(vm.read(t + 28, 4), [1, 1, 0, 0]);
        // Pending/mask/selector zero.
        assert_eq!(vm.read(0x10_0000 + v * 64, 32), [0; 32]);
    }
    // Everything else is zero: no 0xAA left.
    assert!(!page.contains(&0xaa));
    assert_eq!(vm.xen().state.shared_info_gpa(), Some(0x10_0000));
}

#[test]
fn time_pairs_the_clock_with_the_closest_tsc_reads() {
    let vm = Vm::new();
    vm.platform.set_now(7_000);
    // Three tries of (TSC, clock, TSC): gaps 9900, 10, 1000; the second wins, with the TSC
    // halfway between its reads.
    vm.platform.tsc_script.lock().unwrap().extend([100, 10_000, 20_000, 20_010, 30_000, 31_000]);
    assert_eq!(map64(&vm, SELF, 0, 0, 0x100), 0);
    assert_eq!(vm.u64_at(0x10_0000 + 32 + 8), 20_005);
    assert_eq!(vm.u64_at(0x10_0000 + 32 + 16), 7_000);
}

#[test]
fn shared_info_moves_with_its_contents() {
    let vm = Vm::new();
    assert_eq!(map64(&vm, 1, 0, 0, 0x100), 0);
    vm.write(0x10_0000 + 2560, &[0xff; 8]); // evtchn_mask[0]
    vm.fill(0x18_0000, 4096, 0xaa);
    assert_eq!(map64(&vm, SELF, 0, 0, 0x180), 0);
    assert_eq!(vm.read(0x18_0000 + 2560, 8), [0xff; 8]);
    assert_eq!(vm.u32_at(0x18_0000 + 3072), 4, "wallclock rewritten");
    // Mapping again at the same frame keeps the page.
    assert_eq!(map64(&vm, SELF, 0, 0, 0x180), 0);
    assert_eq!(vm.read(0x18_0000 + 2560, 8), [0xff; 8]);
}

#[test]
fn compat_callers_get_the_compat_layout() {
    let vm = Vm::new();
    vm.platform.set_now(1_000_000_000);
    vm.write(ARG, &xatp32(SELF, 0, 0, 0x100));
    assert_eq!(vm.rax32(NR, &[7, ARG]), 0);
    assert!(vm.xen().state.shinfo_compat.load(Ordering::Relaxed));
    assert_eq!(vm.u32_at(0x10_0000 + 2304), 2);
    assert_eq!(vm.u32_at(0x10_0000 + 2308), 1_699_999_999);
    assert_eq!(vm.u32_at(0x10_0000 + 3072), 0, "nothing at the native offset");
    // Compat idx != 0 is refused like native.
    vm.write(ARG, &xatp32(SELF, 0, 1, 0x100));
    assert_eq!(vm.rax32(NR, &[7, ARG]), e32(EINVAL));
}

#[test]
fn add_to_physmap_refusals() {
    let vm = Vm::new();
    assert_eq!(map64(&vm, SELF, 0, 1, 0x100), e(EINVAL), "shared_info idx 1");
    assert_eq!(map64(&vm, SELF, 0, 0, 0x200), e(EINVAL), "frame past RAM");
    assert_eq!(map64(&vm, SELF, 0, 0, u64::MAX), e(EINVAL), "INVALID_GFN");
    assert_eq!(map64(&vm, 0, 0, 0, 0x100), e(ESRCH), "another domain");
    assert_eq!(map64(&vm, SELF, 1, 0, 0x100), e(EINVAL), "no grant frames");
    assert_eq!(map64(&vm, SELF, 2, 0x50, 0x100), e(EOPNOTSUPP), "gmfn");
    assert_eq!(map64(&vm, SELF, 3, 0x50, 0x100), e(EOPNOTSUPP), "gmfn_range");
    assert_eq!(map64(&vm, SELF, 4, 0, 0x100), e(ENOSYS), "gmfn_foreign");
    assert_eq!(map64(&vm, 0, 4, 0, 0x100), e(ENOSYS), "foreign before domain lookup");
    assert_eq!(map64(&vm, SELF, 5, 0, 0x100), e(EACCES), "dev_mmio");
    assert_eq!(map64(&vm, SELF, 6, 0, 0x100), e(EINVAL), "unknown space");
    vm.write(ARG, &xatp64(SELF, 0, 0, 0x100));
    assert_eq!(vm.rax64(NR, &[7 | (0x1_0000 << 6), ARG]), e(EDOM));
    assert_eq!(vm.rax64(NR, &[7, 0x20_0000 - 16]), e(EFAULT));
    assert_eq!(vm.xen().state.shared_info_gpa(), None);
}

#[test]
fn memory_map_native() {
    let vm = Vm::new().with_memory(regions(&[
        (0, 0x9_f000),
        (0x10_0000, 0x10_0000),
        (0x20_0000, 0x10_0000),
        (0x1_0000_0000, 0x1_0000),
    ]));
    // struct xen_memory_map { u32 nr_entries; u64 buffer @8 }
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&8u32.to_le_bytes());
    m[8..].copy_from_slice(&0x7000u64.to_le_bytes());
    vm.write(ARG, &m);
    vm.fill(0x7000, 200, 0xaa);
    assert_eq!(vm.rax64(NR, &[9, ARG]), 0);
    assert_eq!(vm.u32_at(ARG), 3, "contiguous regions merge");
    assert_eq!(vm.u64_at(ARG + 8), 0x7000, "buffer untouched");
    let entry = |i: u64| {
        let at = 0x7000 + i * 20;
        (vm.u64_at(at), vm.u64_at(at + 8), vm.u32_at(at + 16))
    };
    assert_eq!(entry(0), (0, 0x9_f000, 1));
    assert_eq!(entry(1), (0x10_0000, 0x20_0000, 1));
    assert_eq!(entry(2), (0x1_0000_0000, 0x1_0000, 1));
    assert_eq!(vm.read(0x7000 + 60, 1), [0xaa], "packed, 20 bytes each");
    // A smaller buffer gets the first entries.
    vm.write(ARG, &1u32.to_le_bytes());
    vm.fill(0x7000, 200, 0xaa);
    assert_eq!(vm.rax64(NR, &[9, ARG]), 0);
    assert_eq!(vm.u32_at(ARG), 1);
    assert_eq!(vm.read(0x7000 + 20, 1), [0xaa]);
    // Zero entries asked: zero written.
    vm.write(ARG, &0u32.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[9, ARG]), 0);
    assert_eq!(vm.u32_at(ARG), 0);
}

#[test]
fn memory_map_is_the_vmms_boot_map() {
    let mut vm = Vm::new();
    vm.platform.memory_map = Some(vec![(0, 0x10_0000, 2), (0x10_0000, 0x10_0000, 1)]);
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&8u32.to_le_bytes());
    m[8..].copy_from_slice(&0x7000u64.to_le_bytes());
    vm.write(ARG, &m);
    assert_eq!(vm.rax64(NR, &[9, ARG]), 0);
    assert_eq!(vm.u32_at(ARG), 2);
    let entry = |i: u64| {
        let at = 0x7000 + i * 20;
        (vm.u64_at(at), vm.u64_at(at + 8), vm.u32_at(at + 16))
    };
    assert_eq!(entry(0), (0, 0x10_0000, 2), "reserved ranges included");
    assert_eq!(entry(1), (0x10_0000, 0x10_0000, 1));
    // Reservations still count every page of guest memory.
    vm.write(ARG, &0x7ff0u16.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[3, ARG]), 512);
    // An empty map from the VMM: derived from guest memory.
    vm.platform.memory_map = Some(Vec::new());
    vm.write(ARG, &m);
    assert_eq!(vm.rax64(NR, &[9, ARG]), 0);
    assert_eq!(vm.u32_at(ARG), 1);
    assert_eq!((vm.u64_at(0x7000), vm.u64_at(0x7008), vm.u32_at(0x7010)), (0, 0x20_0000, 1));
}

#[test]
fn memory_map_compat_and_faults() {
    let vm = Vm::new();
    // { u32 nr_entries; u32 buffer }
    let mut m = [0u8; 8];
    m[..4].copy_from_slice(&4u32.to_le_bytes());
    m[4..].copy_from_slice(&0x7000u32.to_le_bytes());
    vm.write(ARG, &m);
    assert_eq!(vm.rax32(NR, &[9, ARG]), 0);
    assert_eq!(vm.u32_at(ARG), 1);
    assert_eq!((vm.u64_at(0x7000), vm.u64_at(0x7008), vm.u32_at(0x7010)), (0, 0x20_0000, 1));
    // Bad buffer, bad struct.
    m[4..].copy_from_slice(&0x20_0000u32.to_le_bytes());
    vm.write(ARG, &m);
    assert_eq!(vm.rax32(NR, &[9, ARG]), e32(EFAULT));
    assert_eq!(vm.rax64(NR, &[9, 0x20_0000 - 8]), e(EFAULT));
}

#[test]
fn other_commands_are_enosys() {
    let vm = Vm::new();
    // increase/decrease_reservation, machphys_mfn_list, populate_physmap, exchange,
    // machphys_mapping (HVM: ENOSYS), set_memory_map, remove_from_physmap, batch, 63.
    for op in [0, 1, 5, 6, 11, 12, 13, 15, 23, 63] {
        assert_eq!(vm.rax64(NR, &[op, ARG]), e(ENOSYS), "op {op}");
    }
}
