//! Properties of KVM's convention (docs/abi/kvm.md, "Refusals"): every refusal's code for every
//! caller, negation and 32-bit truncation of errors, maximum values.

use polyvisor_core::testing::snapshot;
use polyvisor_core::{CpuMode, Gpr, Next, Refusal, Registers};
use proptest::prelude::*;

use super::abi;
use super::codec::{decode, encode, error, refusal_code, refuse};

fn mode() -> impl Strategy<Value = CpuMode> {
    prop_oneof![Just(CpuMode::Long64), Just(CpuMode::Protected32), Just(CpuMode::Real)]
}

fn refusal() -> impl Strategy<Value = Refusal> {
    (any::<u64>(), 0u8..4).prop_flat_map(|(number, cpl)| {
        prop_oneof![
            Just(Refusal::Disabled),
            Just(Refusal::Unknown { number }),
            Just(Refusal::Unimplemented { number }),
            Just(Refusal::Denied { number }),
            Just(Refusal::WrongRing { number, cpl }),
        ]
    })
}

#[test]
fn all_ones_registers_decode_to_the_maximum_at_each_width() {
    let ones = Registers {
        rax: u64::MAX,
        rbx: u64::MAX,
        rcx: u64::MAX,
        rdx: u64::MAX,
        rsi: u64::MAX,
        ..Default::default()
    };
    let mut v = snapshot(ones);
    assert_eq!(decode(&v).number, u64::MAX);
    assert_eq!(decode(&v).args, [u64::MAX, u64::MAX, u64::MAX, u64::MAX, 0, 0]);
    v.mode = CpuMode::Protected32;
    let m = 0xffff_ffff;
    assert_eq!(decode(&v).number, m);
    assert_eq!(decode(&v).args, [m, m, m, m, 0, 0]);
}

proptest! {
    /// x86.c: CPL first (user mode gets -KVM_EPERM for anything), a configuration "no" is
    /// -KVM_EPERM, the rest -KVM_ENOSYS; real mode counts as ring 0.
    #[test]
    fn every_refusal_has_its_code_for_every_caller(r in refusal(), m in mode(), cpl in 0u8..4) {
        let mut v = snapshot(Registers::default());
        v.mode = m;
        v.cpl = cpl;
        let user = m != CpuMode::Real && cpl != 0;
        let want = match r {
            Refusal::Denied { .. } | Refusal::WrongRing { .. } => abi::KVM_EPERM,
            _ if user => abi::KVM_EPERM,
            _ => abi::KVM_ENOSYS,
        };
        prop_assert_eq!(refusal_code(&v, r), want);
        let o = refuse(&v, r);
        prop_assert_eq!(o.next, Next::Advance, "no refusal faults");
        prop_assert_eq!(
            o.writes.iter().collect::<Vec<_>>(),
            vec![(Gpr::Rax, m.truncate(want.wrapping_neg()))]
        );
    }

    #[test]
    fn errors_are_negated_then_truncated(code in 0u64..=4096, m in mode()) {
        let mut v = snapshot(Registers::default());
        v.mode = m;
        let o = encode(&v, error(code));
        let rax = o.writes.get(Gpr::Rax).unwrap();
        prop_assert_eq!(rax, m.truncate(code.wrapping_neg()));
        // The guest reads the code back by negating at its own width.
        prop_assert_eq!(m.truncate(rax.wrapping_neg()), code);
    }
}
