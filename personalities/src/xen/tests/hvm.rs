//! `__HYPERVISOR_hvm_op`.

use std::sync::atomic::Ordering;

use polyvisor_core::testing::Effect;
use polyvisor_core::{ExitReason, Next};

use crate::xen::abi::errno::*;
use crate::xen::testutil::{e, e32, Vm};

const NR: u64 = 34;
const ARG: u64 = 0x6000;
const SELF: u16 = 0x7ff0;

fn param(domid: u16, index: u32, value: u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&domid.to_le_bytes());
    s[2..4].copy_from_slice(&[0x5a, 0x5a]); // pad: preserved by get
    s[4..8].copy_from_slice(&index.to_le_bytes());
    s[8..].copy_from_slice(&value.to_le_bytes());
    s
}

fn set(vm: &Vm, index: u32, value: u64) -> u64 {
    vm.write(ARG, &param(SELF, index, value));
    vm.rax64(NR, &[0, ARG])
}

fn get(vm: &Vm, index: u32) -> Result<u64, u64> {
    vm.write(ARG, &param(SELF, index, 0xdead));
    match vm.rax64(NR, &[1, ARG]) {
        0 => Ok(vm.u64_at(ARG + 8)),
        err => Err(err),
    }
}

#[test]
fn unset_params_read_as_zero() {
    let vm = Vm::new();
    // CALLBACK_IRQ, ACPI_IOPORTS_LOCATION, VM_GENERATION_ID_ADDR, ALTP2M, VM86_TSS,
    // VM86_TSS_SIZED.
    for index in [0, 19, 34, 35, 15, 37] {
        assert_eq!(get(&vm, index), Ok(0), "param {index}");
    }
    // get rewrites the whole struct: domid, pad and index come back as they were.
    assert_eq!(vm.read(ARG, 8), param(SELF, 37, 0)[..8]);
    // x87 FIP width starts at 8.
    assert_eq!(get(&vm, 36), Ok(8));
    // The PV platform's rings and channels, set before the guest starts.
    assert_eq!(get(&vm, 1), Ok(0xfe), "STORE_PFN");
    assert_eq!(get(&vm, 2), Ok(1), "STORE_EVTCHN");
    assert_eq!(get(&vm, 17), Ok(0xff), "CONSOLE_PFN");
    assert_eq!(get(&vm, 18), Ok(2), "CONSOLE_EVTCHN");
}

#[test]
fn guest_settable_params() {
    let vm = Vm::new();
    let via = (2u64 << 56) | 0xf3; // vector callback 0xf3
    assert_eq!(set(&vm, 0, via), 0);
    assert_eq!(get(&vm, 0), Ok(via));
    assert_eq!(set(&vm, 2, 5), 0);
    assert_eq!(set(&vm, 18, 6), 0);
    assert_eq!(set(&vm, 34, 0x1234), 0);
    assert_eq!((get(&vm, 2), get(&vm, 18), get(&vm, 34)), (Ok(5), Ok(6), Ok(0x1234)));
    assert_eq!(set(&vm, 36, 4), 0);
    assert_eq!(get(&vm, 36), Ok(4));
    assert_eq!(set(&vm, 36, 5), e(EINVAL));
    assert_eq!(set(&vm, 36, 0), 0);
    // No emulated PM timer: the ACPI port location cannot move.
    assert_eq!(set(&vm, 19, 1), e(ENODEV));
    assert_eq!(get(&vm, 19), Ok(0));
}

#[test]
fn vm86_tss_becomes_the_sized_param() {
    let vm = Vm::new();
    assert_eq!(set(&vm, 15, 0xfe000), 0);
    assert_eq!(get(&vm, 15), Ok(0xfe000));
    assert_eq!(get(&vm, 37), Ok((128 << 32) | 0xfe000));
    assert_eq!(vm.xen().state.param(37), (1 << 63) | (128 << 32) | 0xfe000);
    // Sized: capped at the largest useful TSS.
    assert_eq!(set(&vm, 37, (0x10_0000 << 32) | 0x1000), 0);
    assert_eq!(get(&vm, 37), Ok(((104 + 32 + 8192 + 1) << 32) | 0x1000));
    // Too small or above 4 GiB: Xen crashes the domain that asked.
    vm.write(ARG, &param(SELF, 37, (100 << 32) | 0x1000));
    assert!(matches!(vm.call64(NR, &[0, ARG]).next, Next::Exit(ExitReason::Crash(_))));
    vm.write(ARG, &param(SELF, 15, 0x1_0000_0000));
    assert!(matches!(vm.call64(NR, &[0, ARG]).next, Next::Exit(ExitReason::Crash(_))));
}

#[test]
fn params_the_guest_may_not_touch() {
    let vm = Vm::new();
    // Set: STORE_PFN, CONSOLE_PFN, IDENT_PT, ACPI_S_STATE, HPET_ENABLED, MCA_CAP.
    for index in [1, 17, 12, 14, 11, 38] {
        assert_eq!(set(&vm, index, 1), e(EPERM), "set {index}");
    }
    assert_eq!(get(&vm, 1), Ok(0xfe), "refused set stored nothing");
    assert_eq!(set(&vm, 35, 1), e(EEXIST), "ALTP2M is read-only");
    // Get: IDENT_PT, TIMER_MODE, VIRIDIAN, MCA_CAP, IOREQ_PFN.
    for index in [12, 10, 9, 38, 5] {
        assert_eq!(get(&vm, index), Err(e(EPERM)), "get {index}");
    }
    // Deprecated both ways.
    for index in [4, 13, 20, 21, 22, 23, 24, 25, 26, 30] {
        assert_eq!(set(&vm, index, 1), e(EINVAL), "set {index}");
        assert_eq!(get(&vm, index), Err(e(EINVAL)), "get {index}");
    }
    // Out of range, then the domain.
    assert_eq!(set(&vm, 39, 1), e(EINVAL));
    assert_eq!(get(&vm, u32::MAX), Err(e(EINVAL)));
    vm.write(ARG, &param(0, 0, 1));
    assert_eq!(vm.rax64(NR, &[0, ARG]), e(ESRCH));
    assert_eq!(vm.rax64(NR, &[1, ARG]), e(ESRCH));
    vm.write(ARG, &param(1, 2, 9));
    assert_eq!(vm.rax64(NR, &[0, ARG]), 0, "own domid works");
    assert_eq!(vm.rax64(NR, &[1, 0x20_0000 - 8]), e(EFAULT));
    assert_eq!(vm.rax32(NR, &[0, 0xffff_fff8]), e32(EFAULT));
}

#[test]
fn callback_irq_latches_the_shared_info_layout() {
    let vm = Vm::new();
    // Map shared_info from 64-bit code, then set CALLBACK_IRQ from 32-bit code.
    let mut x = [0u8; 24];
    x[..2].copy_from_slice(&SELF.to_le_bytes());
    x[16..].copy_from_slice(&0x100u64.to_le_bytes());
    vm.write(0x5000, &x);
    assert_eq!(vm.rax64(12, &[7, 0x5000]), 0);
    assert!(!vm.xen().state.shinfo_compat.load(Ordering::Relaxed));
    vm.write(ARG, &param(SELF, 0, 1));
    assert_eq!(vm.rax32(NR, &[0, ARG]), 0);
    assert!(vm.xen().state.shinfo_compat.load(Ordering::Relaxed));
    assert_eq!(vm.u32_at(0x10_0000 + 2304), 2, "wallclock written in the compat place");
}

#[test]
fn upcall_vector() {
    let vm = Vm::new();
    let req = |vcpu: u32, vector: u8| {
        let mut s = [0u8; 8];
        s[..4].copy_from_slice(&vcpu.to_le_bytes());
        s[4] = vector;
        vm.write(ARG, &s);
        vm.rax64(NR, &[23, ARG])
    };
    assert_eq!(req(1, 0xf3), 0);
    assert_eq!(vm.xen().state.vcpu(1).unwrap().upcall_vector.load(Ordering::Relaxed), 0xf3);
    assert_eq!(vm.platform.take(), vec![Effect::Interrupt(1, 0xf3)]);
    assert_eq!(req(0, 0x0f), e(EINVAL));
    assert_eq!(req(2, 0xf3), e(ENOENT));
    assert_eq!(req(u32::MAX, 0x10), e(ENOENT));
    assert_eq!(req(0, 0x10), 0);
    assert_eq!(vm.rax64(NR, &[23, 0x20_0000 - 4]), e(EFAULT));
}

#[test]
fn get_time_pagetable_dying_and_unknown() {
    let vm = Vm::new();
    vm.platform.set_now(123_456_789);
    assert_eq!(vm.rax64(NR, &[10, ARG]), 0);
    assert_eq!(vm.u64_at(ARG), 123_456_789);
    assert_eq!(vm.rax64(NR, &[10, 0x20_0000]), e(EFAULT));
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&SELF.to_le_bytes());
    vm.write(ARG, &s);
    assert_eq!(vm.rax64(NR, &[9, ARG]), e(EINVAL), "HAP: not supported");
    vm.write(ARG, &[3, 0]);
    assert_eq!(vm.rax64(NR, &[9, ARG]), e(ESRCH));
    // set_pci_intx_level .. flush_tlbs, get_mem_type, xentrace, altp2m, and a 64-bit op
    // whose low half is set_param.
    for op in [2, 3, 4, 5, 11, 15, 24, 25, 0x1_0000_0000] {
        assert_eq!(vm.rax64(NR, &[op, ARG]), e(ENOSYS), "op {op:#x}");
    }
}
