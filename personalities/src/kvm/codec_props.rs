//! Properties of KVM's convention (docs/abi/kvm.md, "Refusals"): every refusal's code for every
//! caller, negation and 32-bit truncation of errors, maximum values.

use polyvisor_core::testing::snapshot;
use polyvisor_core::{CpuMode, Gpr, Next, Refusal, Registers};
use proptest::prelude::*;

use super::abi;
use super::codec::{decode, encode, error, refusal_code, refuse};
use crate::codec_strategies::{all_ones, any_mode as mode, any_refusal as refusal};

#[test]
fn all_ones_registers_decode_to_the_maximum_at_each_width() {
    let mut v = snapshot(all_ones());
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
