//! Properties of the bhyve convention (docs/abi/bhyve.md): maximum values, 32-bit truncation
//! of errors as of values, and the refusals for every caller.

use polyvisor_core::testing::snapshot;
use polyvisor_core::{CpuMode, Gpr, Next, Outcome, Refusal, Registers, Reply};
use proptest::prelude::*;

use super::codec::{decode, encode, refuse};

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
        rdi: u64::MAX,
        rsi: u64::MAX,
        rdx: u64::MAX,
        rcx: u64::MAX,
        r8: u64::MAX,
        r9: u64::MAX,
        ..Default::default()
    };
    let mut v = snapshot(ones);
    let input = decode(&v);
    assert_eq!(input.number, u64::MAX);
    assert_eq!(input.args, [u64::MAX; 6]);
    v.mode = CpuMode::Protected32;
    let input = decode(&v);
    let m = 0xffff_ffff;
    assert_eq!(input.number, m);
    assert_eq!(input.args, [m, m, m, m, 0, 0], "R8 and R9 do not exist outside long mode");
}

proptest! {
    #[test]
    fn errors_truncate_like_values_and_outcomes_pass_through(value: u64, m in mode()) {
        let mut v = snapshot(Registers::default());
        v.mode = m;
        prop_assert_eq!(encode(&v, Reply::Error(value)), encode(&v, Reply::Value(value)));
        prop_assert_eq!(encode(&v, Reply::Error(value)).writes.get(Gpr::Rax), Some(m.truncate(value)));
        let o = Outcome::invalid_opcode();
        prop_assert_eq!(encode(&v, Reply::Outcome(o.clone())), o);
    }

    #[test]
    fn only_a_wrong_ring_answers_without_a_fault(r in refusal(), m in mode(), cpl in 0u8..4) {
        let mut v = snapshot(Registers::default());
        v.mode = m;
        v.cpl = cpl;
        let o = refuse(&v, r);
        if let Refusal::WrongRing { .. } = r {
            prop_assert_eq!(o.next, Next::Advance);
            prop_assert_eq!(o.writes.iter().collect::<Vec<_>>(), vec![(Gpr::Rax, 1)]);
        } else {
            prop_assert_eq!(o, Outcome::invalid_opcode());
        }
    }
}
