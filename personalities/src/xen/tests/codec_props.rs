//! Properties of the HVM conventions (docs/abi/xen.md, "Calling conventions") beyond the
//! round trip in codec.rs: real mode uses the 32-bit convention, errors truncate like values,
//! maximum values, structure word sizes.

use polyvisor_core::testing::snapshot;
use polyvisor_core::{CpuMode, Gpr, Outcome, Registers, Reply};
use proptest::prelude::*;

use crate::codec_strategies::all_ones;
use crate::xen::codec::{decode, encode, Width};

#[test]
fn all_ones_registers_decode_to_the_maximum_at_each_width() {
    let mut v = snapshot(all_ones());
    assert_eq!(decode(&v).number, u64::MAX);
    assert_eq!(decode(&v).args, [u64::MAX; 6]);
    for m in [CpuMode::Protected32, CpuMode::Real] {
        v.mode = m;
        assert_eq!(decode(&v).number, 0xffff_ffff);
        assert_eq!(decode(&v).args, [0xffff_ffff; 6]);
    }
    assert_eq!((Width::W64.word(), Width::W32.word()), (8, 4));
}

proptest! {
    #[test]
    fn real_mode_decodes_like_protected_mode(r in proptest::array::uniform8(any::<u64>())) {
        let regs = Registers {
            rax: r[0], rbx: r[1], rcx: r[2], rdx: r[3], rsi: r[4], rdi: r[5], rbp: r[6],
            r10: r[7], ..Default::default()
        };
        let mut real = snapshot(regs);
        real.mode = CpuMode::Real;
        let mut prot = snapshot(regs);
        prot.mode = CpuMode::Protected32;
        prop_assert_eq!(Width::of(&real), Width::W32);
        prop_assert_eq!(decode(&real), decode(&prot));
    }

    #[test]
    fn errors_truncate_like_values_and_outcomes_pass_through(value: u64, long: bool) {
        let mut v = snapshot(Registers::default());
        v.mode = if long { CpuMode::Long64 } else { CpuMode::Protected32 };
        let want = if long { value } else { value & 0xffff_ffff };
        prop_assert_eq!(encode(&v, Reply::Error(value)), Outcome::ret(Gpr::Rax, want));
        prop_assert_eq!(encode(&v, Reply::Value(value)), Outcome::ret(Gpr::Rax, want));
        let o = Outcome::invalid_opcode();
        prop_assert_eq!(encode(&v, Reply::Outcome(o.clone())), o);
    }
}
