//! `__HYPERVISOR_console_io`.

use polyvisor_core::testing::Effect;
use polyvisor_core::{Gpr, Next};

use crate::xen::abi::errno::*;
use crate::xen::testutil::{e, e32, Vm};

const NR: u64 = 18;
const BUF: u64 = 0x8000;

fn console_bytes(effects: &[Effect]) -> Vec<u8> {
    effects
        .iter()
        .flat_map(|e| match e {
            Effect::Console(0, b) => b.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn write_goes_to_the_console_and_returns_zero() {
    let vm = Vm::new();
    vm.write(BUF, b"hello, xen\n");
    assert_eq!(vm.rax64(NR, &[0, 11, BUF]), 0);
    assert_eq!(console_bytes(&vm.platform.take()), b"hello, xen\n");
    assert_eq!(vm.rax32(NR, &[0, 5, BUF]), 0);
    assert_eq!(console_bytes(&vm.platform.take()), b"hello");
    // Nothing to write.
    assert_eq!(vm.rax64(NR, &[0, 0, 0]), 0);
    assert!(vm.platform.take().is_empty());
    // count is an unsigned int: the high half of RSI is not part of it.
    assert_eq!(vm.rax64(NR, &[0, 0x1_0000_0002, BUF]), 0);
    assert_eq!(console_bytes(&vm.platform.take()), b"he");
}

#[test]
fn long_writes_continue_by_re_executing() {
    let vm = Vm::new();
    let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    vm.write(BUF, &text);
    let o = vm.call64(NR, &[0, 10_000, BUF]);
    assert_eq!(o.next, Next::Retry);
    assert_eq!(o.writes.get(Gpr::Rsi), Some(10_000 - 4096));
    assert_eq!(o.writes.get(Gpr::Rdx), Some(BUF + 4096));
    assert_eq!(o.writes.get(Gpr::Rax), None, "RAX still holds the number");
    assert_eq!(console_bytes(&vm.platform.take()), &text[..4096]);
    // The guest re-executes with the advanced registers.
    let o = vm.call64(NR, &[0, 10_000 - 4096, BUF + 4096]);
    assert_eq!(o.next, Next::Retry);
    let rest = vm.rax64(NR, &[0, 10_000 - 8192, BUF + 8192]);
    assert_eq!(rest, 0);
    assert_eq!(console_bytes(&vm.platform.take()), &text[4096..]);
    // 32-bit callers continue in ECX and EDX.
    let o = vm.call32(NR, &[0, 5000, BUF]);
    assert_eq!(o.next, Next::Retry);
    assert_eq!(o.writes.get(Gpr::Rcx), Some(5000 - 4096));
    assert_eq!(o.writes.get(Gpr::Rdx), Some(BUF + 4096));
}

#[test]
fn write_from_a_bad_buffer_is_efault() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(NR, &[0, 16, 0x20_0000]), e(EFAULT));
    assert_eq!(vm.rax32(NR, &[0, 16, 0xffff_fff8]), e32(EFAULT));
    assert!(vm.platform.take().is_empty());
    // A buffer running off the end of RAM faults.
    vm.write(0x20_0000 - 4, b"tail");
    assert_eq!(vm.rax64(NR, &[0, 300, 0x20_0000 - 4]), e(EFAULT));
}

#[test]
fn read_returns_pending_input() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(NR, &[1, 16, BUF]), 0, "nothing pending");
    vm.platform.input.lock().unwrap().extend_from_slice(b"typed");
    vm.fill(BUF, 16, 0xaa);
    assert_eq!(vm.rax64(NR, &[1, 3, BUF]), 3);
    assert_eq!(vm.read(BUF, 4), b"typ\xaa");
    vm.fill(BUF, 16, 0xaa);
    assert_eq!(vm.rax32(NR, &[1, 16, BUF]), 2);
    assert_eq!(vm.read(BUF, 3), b"ed\xaa");
    assert_eq!(vm.rax64(NR, &[1, 16, BUF]), 0);
}

#[test]
fn read_is_bounded_per_call() {
    let vm = Vm::new();
    vm.platform.input.lock().unwrap().extend(std::iter::repeat_n(b'x', 5000));
    assert_eq!(vm.rax64(NR, &[1, 0x7fff_ffff, BUF]), 4096);
    assert_eq!(vm.rax64(NR, &[1, 0x7fff_ffff, BUF]), 5000 - 4096);
}

#[test]
fn read_refusals() {
    let vm = Vm::new();
    vm.platform.input.lock().unwrap().extend_from_slice(b"keep");
    assert_eq!(vm.rax64(NR, &[1, 0x8000_0000, BUF]), e(E2BIG));
    assert_eq!(vm.rax32(NR, &[1, 0xffff_ffff, BUF]), e32(E2BIG));
    assert_eq!(vm.rax64(NR, &[1, 16, 0x20_0000]), e(EFAULT));
    // The failed reads consumed nothing.
    assert_eq!(vm.rax64(NR, &[1, 16, BUF]), 4);
    assert_eq!(vm.read(BUF, 4), b"keep");
}

#[test]
fn unknown_commands_are_enosys() {
    let vm = Vm::new();
    for cmd in [2, 3, 0xffff_ffff] {
        assert_eq!(vm.rax64(NR, &[cmd, 1, BUF]), e(ENOSYS));
    }
}
