//! Both conventions, truncation, and every refusal kind.

use polyvisor_config::XenConfig;
use polyvisor_core::{CallSelector, CpuMode, Dispatch, Gpr, Next, Personality, Policy, Registers};
use proptest::prelude::*;

use crate::xen::abi::errno::*;
use crate::xen::codec::{decode, encode, Width};
use crate::xen::testutil::{e, e32, rax, snap32, snap64, Vm};
use crate::HostFacts;

const XEN_VERSION: u64 = 17;

#[test]
fn sixty_four_bit_convention() {
    let v = snap64(17, &[1, 2, 3, 4, 5, 6]);
    let input = decode(&v);
    assert_eq!(input.number, 17);
    assert_eq!(input.args, [1, 2, 3, 4, 5, 6]);
    // Full-width registers stay full width.
    let v = snap64(u64::MAX, &[u64::MAX - 1]);
    assert_eq!(decode(&v).number, u64::MAX);
    assert_eq!(decode(&v).args[0], u64::MAX - 1);
}

#[test]
fn thirty_two_bit_convention_truncates() {
    let v = snap32(0xdead_beef_0000_0011, &[0x1_0000_0001, 0x2_0000_0002, 3, 4, 5, 0x6_0000_0006]);
    let input = decode(&v);
    assert_eq!(input.number, 17);
    assert_eq!(input.args, [1, 2, 3, 4, 5, 6]);
    // Results are 32 bits wide.
    let o = encode(&v, polyvisor_core::Reply::Error(e(ENOSYS)));
    assert_eq!(o.writes.get(Gpr::Rax), Some(0xffff_ffda));
    // Real mode uses the 32-bit convention too.
    let mut r = v;
    r.mode = CpuMode::Real;
    assert_eq!(Width::of(&r), Width::W32);
}

#[test]
fn version_through_both_conventions() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(XEN_VERSION, &[0]), 0x0004_0011);
    assert_eq!(vm.rax32(XEN_VERSION, &[0]), 0x0004_0011);
    // The sub-op is an int: high register bits are not part of it.
    assert_eq!(vm.rax64(XEN_VERSION, &[0xffff_ffff_0000_0000]), 0x0004_0011);
    // A 64-bit caller's number is the whole of RAX.
    assert_eq!(vm.rax64(0x1_0000_0011, &[0]), e(ENOSYS));
    // A 32-bit caller's number is EAX.
    assert_eq!(vm.rax32(0x1_0000_0011, &[0]), 0x0004_0011);
}

#[test]
fn errors_are_negated_errno_at_the_callers_width() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(XEN_VERSION, &[99]), 0xffff_ffff_ffff_ffda);
    assert_eq!(vm.rax32(XEN_VERSION, &[99]), 0xffff_ffda);
    assert_eq!(e32(EFAULT), 0xffff_fff2);
}

#[test]
fn disabled_is_enosys() {
    let vm = Vm::build(XenConfig::default(), Policy::default(), HostFacts::nominal());
    assert_eq!(vm.rax64(XEN_VERSION, &[0]), e(ENOSYS));
    assert_eq!(vm.rax32(XEN_VERSION, &[0]), e32(ENOSYS));
    assert_eq!(vm.engine.refusals().snapshot(), (2, 0, 0));
}

#[test]
fn unknown_and_pv_only_numbers_are_enosys() {
    let vm = Vm::new();
    // set_trap_table, mmu_update, iret, set_segment_base, callback_op, kexec_op, tmem_op,
    // arch_0 (mca), numbers past the table.
    for nr in [0, 1, 6, 23, 25, 30, 37, 38, 48, 55, 64, 1000, u64::MAX] {
        assert_eq!(vm.rax64(nr, &[]), e(ENOSYS), "nr {nr}");
    }
}

#[test]
fn unimplemented_rows_are_enosys() {
    let vm = Vm::new();
    for nr in [7, 13, 20, 21, 26, 27, 33, 35, 36, 39, 40, 41, 42, 49] {
        assert_eq!(vm.rax64(nr, &[]), e(ENOSYS), "nr {nr}");
        assert_eq!(vm.rax32(nr, &[]), e32(ENOSYS), "nr {nr}");
    }
}

#[test]
fn denied_is_eperm() {
    let policy = Policy {
        hypercalls_enabled: true,
        allow: None,
        deny: vec![CallSelector::Name("__HYPERVISOR_console_io".into()), CallSelector::Number(17)],
    };
    let vm = Vm::build(XenConfig::default(), policy, HostFacts::nominal());
    assert_eq!(vm.rax64(18, &[0, 1, 0x1000]), e(EPERM));
    assert_eq!(vm.rax32(17, &[0]), e32(EPERM));
    assert!(vm.platform.take().is_empty());
    // Others still work.
    assert_eq!(vm.rax64(34, &[10, 0x1000]), 0);
}

#[test]
fn allow_list_by_name() {
    let policy = Policy {
        hypercalls_enabled: true,
        allow: Some(vec![CallSelector::Name("__HYPERVISOR_xen_version".into())]),
        deny: vec![],
    };
    let vm = Vm::build(XenConfig::default(), policy, HostFacts::nominal());
    assert_eq!(vm.rax64(17, &[0]), 0x0004_0011);
    assert_eq!(vm.rax64(29, &[0]), e(EPERM));
}

#[test]
fn cpl_above_zero_is_eperm_except_in_real_mode() {
    let vm = Vm::new();
    for cpl in [1, 2, 3] {
        let mut v = snap64(XEN_VERSION, &[0]);
        v.cpl = cpl;
        assert_eq!(rax(&vm.run(&v)), e(EPERM), "cpl {cpl}");
        let mut v = snap32(XEN_VERSION, &[0]);
        v.cpl = cpl;
        assert_eq!(rax(&vm.run(&v)), e32(EPERM), "cpl {cpl}");
    }
    let mut v = snap32(XEN_VERSION, &[0]);
    v.cpl = 3;
    v.mode = CpuMode::Real;
    assert_eq!(rax(&vm.run(&v)), 0x0004_0011);
}

#[test]
fn every_row_is_ring_zero_only_and_sorted() {
    let vm = Vm::new();
    let rows = vm.engine.rows();
    assert_eq!(rows.len(), 22);
    assert!(rows.iter().all(|r| r.rings == "0"));
    let table = vm.xen().table();
    assert!(table.windows(2).all(|w| w[0].number < w[1].number));
    let implemented: Vec<_> = rows.iter().filter(|r| r.implemented).map(|r| r.number).collect();
    assert_eq!(implemented, vec![12, 15, 17, 18, 24, 29, 32, 34]);
    assert!(rows.iter().all(|r| r.name.starts_with("__HYPERVISOR_")));
}

#[test]
fn build_through_the_crate_entry_point() {
    let mut config = polyvisor_config::Config::default();
    config.hypervisor.mode = polyvisor_core::HypervisorMode::Xen;
    let engine = crate::build(&config, &HostFacts::nominal()).unwrap();
    assert_eq!(engine.mode(), polyvisor_core::HypervisorMode::Xen);
    assert_eq!(engine.cpuid(0)[0].function, 0x4000_0000);
    config.hypervisor.deny = vec![polyvisor_config::Selector(CallSelector::Name("nope".into()))];
    let err = crate::build(&config, &HostFacts::nominal()).err().unwrap();
    assert!(err.to_string().contains("__HYPERVISOR_sched_op"), "{err}");
}

proptest! {
    #[test]
    fn decode_encode_round_trip(regs in proptest::array::uniform16(any::<u64>()), long in any::<bool>(), value in any::<u64>()) {
        let r = Registers {
            rax: regs[0], rbx: regs[1], rcx: regs[2], rdx: regs[3], rsi: regs[4],
            rdi: regs[5], rbp: regs[6], rsp: regs[7], r8: regs[8], r9: regs[9],
            r10: regs[10], r11: regs[11], r12: regs[12], r13: regs[13], r14: regs[14],
            r15: regs[15], ..Default::default()
        };
        let mut v = polyvisor_core::testing::snapshot(r);
        v.mode = if long { CpuMode::Long64 } else { CpuMode::Protected32 };
        let input = decode(&v);
        let mask = if long { u64::MAX } else { 0xffff_ffff };
        let expected = if long {
            [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9]
        } else {
            [r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp]
        };
        prop_assert_eq!(input.number, r.rax & mask);
        prop_assert_eq!(input.args, expected.map(|x| x & mask));
        let o = encode(&v, polyvisor_core::Reply::Value(value));
        prop_assert_eq!(o.next, Next::Advance);
        prop_assert_eq!(o.writes.iter().collect::<Vec<_>>(), vec![(Gpr::Rax, value & mask)]);
    }
}
