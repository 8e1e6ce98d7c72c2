//! `__HYPERVISOR_sched_op`.

use polyvisor_core::testing::Effect;
use polyvisor_core::{ExitReason, Gpr, Next};

use crate::xen::abi::errno::*;
use crate::xen::testutil::{e, e32, Vm};

const NR: u64 = 29;
const ARG: u64 = 0x6000;

fn shutdown(vm: &Vm, reason: u32) -> Next {
    vm.write(ARG, &reason.to_le_bytes());
    vm.call64(NR, &[2, ARG]).next
}

#[test]
fn yield_yields() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(NR, &[0, 0]), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Yield(0, None)]);
}

#[test]
fn block_halts_with_events_enabled() {
    let vm = Vm::new();
    let o = vm.call64(NR, &[1, 0]);
    assert_eq!(o.next, Next::Halt);
    assert_eq!(o.writes.get(Gpr::Rax), Some(0));
    // With shared_info at frame 0x10, vCPU 0's upcall mask is cleared on block.
    vm.write(0x100, &[0u8; 24]);
    vm.write(0x100, &[0xf0, 0x7f]);
    vm.write(0x100 + 4, &0u32.to_le_bytes());
    vm.write(0x100 + 16, &0x10u64.to_le_bytes());
    assert_eq!(vm.rax64(12, &[7, 0x100]), 0);
    vm.write(0x10_001, &[1]);
    assert_eq!(vm.call32(NR, &[1, 0]).next, Next::Halt);
    assert_eq!(vm.read(0x10_001, 1), [0]);
}

#[test]
fn shutdown_reasons_end_the_vm() {
    let vm = Vm::new();
    assert_eq!(shutdown(&vm, 0), Next::Exit(ExitReason::Poweroff(0)));
    assert_eq!(shutdown(&vm, 1), Next::Exit(ExitReason::Reboot));
    assert!(
        matches!(shutdown(&vm, 2), Next::Exit(ExitReason::Other(s)) if s.contains("SHUTDOWN_suspend"))
    );
    assert!(
        matches!(shutdown(&vm, 3), Next::Exit(ExitReason::Crash(s)) if s.contains("SHUTDOWN_crash"))
    );
    assert!(
        matches!(shutdown(&vm, 4), Next::Exit(ExitReason::Other(s)) if s.contains("SHUTDOWN_watchdog"))
    );
    assert!(
        matches!(shutdown(&vm, 5), Next::Exit(ExitReason::Other(s)) if s.contains("SHUTDOWN_soft_reset"))
    );
    assert!(matches!(shutdown(&vm, 77), Next::Exit(ExitReason::Other(s)) if s.contains("77")));
    // The reason is a u8: 0x100 is poweroff.
    assert_eq!(shutdown(&vm, 0x100), Next::Exit(ExitReason::Poweroff(0)));
    // 32-bit callers pass the same struct.
    vm.write(ARG, &1u32.to_le_bytes());
    assert_eq!(vm.call32(NR, &[2, ARG]).next, Next::Exit(ExitReason::Reboot));
}

#[test]
fn shutdown_code_latches_the_reported_reason() {
    let vm = Vm::new();
    vm.write(ARG, &3u32.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[5, ARG]), 0);
    // A second latch does not replace the first.
    vm.write(ARG, &1u32.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[5, ARG]), 0);
    assert!(matches!(shutdown(&vm, 0), Next::Exit(ExitReason::Crash(_))));
}

#[test]
fn shutdown_with_bad_pointer_is_efault() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(NR, &[2, 0x20_0000]), e(EFAULT));
    assert_eq!(vm.rax64(NR, &[5, 0x1f_fffe]), e(EFAULT));
    assert_eq!(vm.rax32(NR, &[2, 0xffff_ffff]), e32(EFAULT));
}

/// Writes a native `struct sched_poll` at ARG.
fn poll64(vm: &Vm, ports: u64, nr: u32, timeout: u64) -> polyvisor_core::Outcome {
    let mut s = [0u8; 24];
    s[..8].copy_from_slice(&ports.to_le_bytes());
    s[8..12].copy_from_slice(&nr.to_le_bytes());
    s[16..].copy_from_slice(&timeout.to_le_bytes());
    vm.write(ARG, &s);
    vm.call64(NR, &[3, ARG])
}

#[test]
fn poll_validates_then_halts_until_the_timeout() {
    let vm = Vm::new();
    vm.write(0x7000, &[1, 0, 0, 0, 2, 0, 0, 0]);
    vm.platform.set_now(1_000);
    // No timeout: halt until woken.
    let o = poll64(&vm, 0x7000, 2, 0);
    assert_eq!((o.next, o.writes.get(Gpr::Rax)), (Next::Halt, Some(0)));
    assert!(vm.platform.halts().is_empty());
    // A future timeout bounds the halt.
    let o = poll64(&vm, 0x7000, 2, 5_000);
    assert_eq!(o.next, Next::Halt);
    assert_eq!(vm.platform.halts(), vec![(0, 5_000)]);
    // A past timeout returns at once.
    assert_eq!(crate::xen::testutil::rax(&poll64(&vm, 0x7000, 1, 999)), 0);
    // Zero ports is a plain timed sleep.
    assert_eq!(poll64(&vm, 0, 0, 2_000).next, Next::Halt);
}

#[test]
fn poll_without_a_platform_timer_returns_at_once() {
    let mut vm = Vm::new();
    vm.platform.halt_log = None;
    assert_eq!(crate::xen::testutil::rax(&poll64(&vm, 0, 0, 5_000)), 0);
    assert_eq!(poll64(&vm, 0, 0, 0).next, Next::Halt);
}

#[test]
fn poll_refusals() {
    let vm = Vm::new();
    assert_eq!(crate::xen::testutil::rax(&poll64(&vm, 0x7000, 129, 0)), e(EINVAL));
    assert_eq!(crate::xen::testutil::rax(&poll64(&vm, 0x20_0000, 1, 0)), e(EFAULT));
    assert_eq!(crate::xen::testutil::rax(&poll64(&vm, 0x20_0000 - 8, 4, 0)), e(EFAULT));
    assert_eq!(vm.rax64(NR, &[3, 0x20_0000 - 16]), e(EFAULT));
    assert_eq!(poll64(&vm, 0x7000, 128, 0).next, Next::Halt);
}

#[test]
fn poll_compat_layout() {
    let vm = Vm::new();
    vm.platform.set_now(10);
    // { u32 ports; u32 nr_ports; u64 timeout } — 16 bytes.
    let mut s = [0u8; 16];
    s[..4].copy_from_slice(&0x7000u32.to_le_bytes());
    s[4..8].copy_from_slice(&1u32.to_le_bytes());
    s[8..].copy_from_slice(&777u64.to_le_bytes());
    vm.write(ARG, &s);
    assert_eq!(vm.call32(NR, &[3, ARG]).next, Next::Halt);
    assert_eq!(vm.platform.halts(), vec![(0, 777)]);
    s[4..8].copy_from_slice(&200u32.to_le_bytes());
    vm.write(ARG, &s);
    assert_eq!(vm.rax32(NR, &[3, ARG]), e32(EINVAL));
}

#[test]
fn remote_shutdown_pin_override_watchdog_and_unknown() {
    let vm = Vm::new();
    vm.write(ARG, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(vm.rax64(NR, &[4, ARG]), e(EPERM), "own domain: not its device model");
    vm.write(ARG, &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(vm.rax64(NR, &[4, ARG]), e(ESRCH));
    vm.write(ARG, &[0xf0, 0x7f, 0, 0, 0, 0, 0, 0]);
    assert_eq!(vm.rax64(NR, &[4, ARG]), e(ESRCH), "DOMID_SELF is not a domain id");
    assert_eq!(vm.rax64(NR, &[4, 0x20_0000]), e(EFAULT));
    assert_eq!(vm.rax64(NR, &[7, ARG]), e(EPERM));
    assert_eq!(vm.rax64(NR, &[6, ARG]), e(ENOSYS));
    assert_eq!(vm.rax64(NR, &[8, ARG]), e(ENOSYS));
    assert_eq!(vm.rax64(NR, &[0xffff_ffff, ARG]), e(ENOSYS));
}
