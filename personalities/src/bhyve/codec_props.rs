//! Properties of the bhyve convention (docs/abi/bhyve.md): maximum values, 32-bit truncation
//! of errors as of values, and the refusals for every caller.

use polyvisor_core::testing::snapshot;
use polyvisor_core::{CpuMode, Gpr, Next, Outcome, Refusal, Registers, Reply};
use proptest::prelude::*;

use super::codec::{decode, encode, refuse};
use crate::codec_strategies::{all_ones, any_mode as mode, any_refusal as refusal};

#[test]
fn all_ones_registers_decode_to_the_maximum_at_each_width() {
    let mut v = snapshot(all_ones());
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
