//! `__HYPERVISOR_vcpu_op`.

use std::sync::atomic::Ordering;

use polyvisor_core::Next;

use crate::xen::abi::errno::*;
use crate::xen::testutil::{e, e32, snap64, Vm};

const NR: u64 = 24;
const ARG: u64 = 0x6000;

fn info(mfn: u64, offset: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&mfn.to_le_bytes());
    s[8..12].copy_from_slice(&offset.to_le_bytes());
    s
}

fn register(vm: &Vm, vcpu: u64, mfn: u64, offset: u32) -> u64 {
    vm.write(ARG, &info(mfn, offset));
    vm.rax64(NR, &[10, vcpu, ARG])
}

#[test]
fn is_up() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(NR, &[3, 0, 0]), 1);
    assert_eq!(vm.rax32(NR, &[3, 1, 0]), 1);
    assert_eq!(vm.rax64(NR, &[3, 2, 0]), e(ENOENT));
    assert_eq!(vm.rax32(NR, &[3, 0xffff_ffff, 0]), e32(ENOENT));
    // vcpuid is an unsigned int.
    assert_eq!(vm.rax64(NR, &[3, 0x1_0000_0001, 0]), 1);
}

#[test]
fn register_vcpu_info_fills_the_new_area() {
    let vm = Vm::new();
    vm.platform.set_now(42);
    vm.fill(0x9000, 4096, 0xaa);
    assert_eq!(register(&vm, 1, 9, 0x40), 0);
    let at = 0x9040;
    assert_eq!(vm.xen().state.vcpu_info_gpa(1), Some(at));
    // No earlier vcpu_info (shared_info not mapped): zeros with the upcall masked, then
    // every selector bit and the pending flag set, then time.
    assert_eq!(
        vm.read(at, 16),
        [1, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(vm.read(at + 16, 16), [0; 16]);
    assert_eq!(vm.u32_at(at + 32), 2);
    assert_eq!(vm.u64_at(at + 48), 42, "system_time");
    assert_eq!(vm.read(at + 64, 1), [0xaa], "64 bytes only");
    assert_eq!(vm.read(at - 1, 1), [0xaa]);
}

#[test]
fn register_copies_the_shared_info_slot() {
    let vm = Vm::new();
    let mut x = [0u8; 24];
    x[..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    x[16..].copy_from_slice(&0x100u64.to_le_bytes());
    vm.write(0x5000, &x);
    assert_eq!(vm.rax64(12, &[7, 0x5000]), 0);
    vm.write(0x10_0000 + 64 + 1, &[0]); // vCPU 1 unmasked in its slot
    vm.write(0x10_0000 + 64 + 16, &[0x77; 8]); // arch.cr2
    assert_eq!(register(&vm, 1, 9, 0), 0);
    assert_eq!(vm.read(0x9000, 2), [1, 0], "pending set, mask copied");
    assert_eq!(vm.read(0x9010, 8), [0x77; 8]);
    // Blocking now clears the mask in the registered area, not in the old slot.
    vm.write(0x9001, &[1]);
    let mut v = snap64(29, &[1, 0]);
    v.vcpu = 1;
    assert_eq!(vm.run(&v).next, Next::Halt);
    assert_eq!(vm.read(0x9001, 1), [0]);
}

#[test]
fn register_checks_since_4_18() {
    let vm = Vm::version("4.18");
    assert_eq!(register(&vm, 0, 9, 4096 - 32), e(ENXIO), "crosses the page");
    assert_eq!(register(&vm, 0, 9, 4), e(ENXIO), "misaligned");
    assert_eq!(register(&vm, 0, 9, 4096), e(EINVAL), "offset leaves the frame");
    assert_eq!(register(&vm, 0, u64::MAX >> 12, 4095), e(EINVAL), "all-ones address");
    assert_eq!(register(&vm, 0, 1 << 60, 0), e(EINVAL), "frame overflows");
    assert_eq!(register(&vm, 0, 0x200, 0), e(EINVAL), "not RAM");
    assert_eq!(register(&vm, 2, 9, 0), e(ENOENT), "no vCPU 2");
    assert_eq!(register(&vm, 0, 9, 4096 - 64), 0);
    assert_eq!(register(&vm, 0, 10, 0), e(EBUSY), "once per vCPU");
    assert_eq!(vm.rax64(NR, &[10, 1, 0x20_0000 - 8]), e(EFAULT));
}

#[test]
fn register_checks_before_4_18() {
    let vm = Vm::new(); // 4.17
    assert_eq!(register(&vm, 0, 9, 4096 - 32), e(ENXIO));
    assert_eq!(register(&vm, 0, 9, 4096), e(ENXIO));
    assert_eq!(register(&vm, 0, 9, 12), e(ENXIO));
    assert_eq!(register(&vm, 0, 0x200, 0), e(EINVAL));
    assert_eq!(register(&vm, 0, 9, 8), 0);
    assert_eq!(register(&vm, 0, 10, 0), e(EINVAL), "second registration");
}

#[test]
fn compat_alignment_is_four() {
    let vm = Vm::version("4.19");
    let mut x = [0u8; 16];
    x[..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    x[12..].copy_from_slice(&0x100u32.to_le_bytes());
    vm.write(0x5000, &x);
    assert_eq!(vm.rax32(12, &[7, 0x5000]), 0, "compat shared_info");
    vm.write(ARG, &info(9, 4));
    assert_eq!(vm.rax32(NR, &[10, 0, ARG]), 0);
    assert_eq!(vm.read(0x9004, 8), [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], "u32 selector");
}

fn timer(vm: &Vm, vcpu: u64, timeout: u64, flags: u32) -> u64 {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&timeout.to_le_bytes());
    s[8..12].copy_from_slice(&flags.to_le_bytes());
    vm.write(ARG, &s);
    vm.rax64(NR, &[8, vcpu, ARG])
}

#[test]
fn singleshot_timer_is_recorded() {
    let vm = Vm::new();
    vm.platform.set_now(1_000);
    assert_eq!(timer(&vm, 0, 5_000, 0), 0);
    let deadline =
        |v: u32| vm.xen().state.vcpu(v).unwrap().singleshot_deadline.load(Ordering::Relaxed);
    assert_eq!(deadline(0), 5_000);
    assert_eq!(timer(&vm, 1, 5_000, 0), e(EINVAL), "only for the calling vCPU");
    assert_eq!(vm.rax64(NR, &[9, 1, 0]), e(EINVAL));
    assert_eq!(vm.rax64(NR, &[9, 0, 0]), 0);
    assert_eq!(deadline(0), 0);
    assert_eq!(timer(&vm, 3, 5_000, 0), e(ENOENT));
    assert_eq!(vm.rax64(NR, &[8, 0, 0x20_0000 - 8]), e(EFAULT));
    // Compat struct is 12 bytes: it may end exactly at the end of RAM.
    vm.write(0x20_0000 - 12, &[0; 12]);
    assert_eq!(vm.rax32(NR, &[8, 0, 0x20_0000 - 12]), 0);
    assert_eq!(vm.rax64(NR, &[8, 0, 0x20_0000 - 12]), e(EFAULT));
}

#[test]
fn sshottmr_future_depends_on_the_release() {
    let old = Vm::new(); // 4.17
    old.platform.set_now(1_000);
    assert_eq!(timer(&old, 0, 999, 1), e(ETIME));
    assert_eq!(timer(&old, 0, 999, 0), 0, "without the flag the timer just fires");
    assert_eq!(timer(&old, 0, 1_001, 1), 0);
    let new = Vm::version("4.18");
    new.platform.set_now(1_000);
    assert_eq!(timer(&new, 0, 999, 1), 0, "the flag is ignored since 4.18");
}

#[test]
fn other_commands_are_enosys() {
    let vm = Vm::new();
    // initialise, up, down, get_runstate_info, runstate area, periodic timers, send_nmi,
    // get_physid, time area, phys areas.
    for cmd in [0, 1, 2, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16] {
        assert_eq!(vm.rax64(NR, &[cmd, 0, ARG]), e(ENOSYS), "cmd {cmd}");
    }
}
