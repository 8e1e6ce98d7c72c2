//! Hostile inputs: any registers and any memory contents give an answer, never a panic.

use polyvisor_core::{CpuMode, Dispatch, MsrWrite, Next};
use proptest::prelude::*;

use crate::xen::testutil::{snap32, snap64, Vm};

const NUMBERS: [u64; 8] = [12, 17, 18, 24, 29, 34, 7, 1000];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_call_is_answered(
        nr in proptest::sample::select(NUMBERS.to_vec()),
        cmd in prop_oneof![0u64..32, any::<u64>()],
        args in proptest::array::uniform5(prop_oneof![0u64..0x20_0000, any::<u64>()]),
        page in proptest::collection::vec(any::<u8>(), 64),
        long in any::<bool>(),
    ) {
        let vm = Vm::new();
        // Whatever the pointers name, make plausible structures there too.
        for a in args {
            if a < 0x20_0000 - 64 {
                vm.write(a, &page);
            }
        }
        let all = [cmd, args[0], args[1], args[2], args[3], args[4]];
        let v = if long { snap64(nr, &all) } else { snap32(nr, &all) };
        let o = vm.run(&v);
        match o.next {
            Next::Advance => {
                let r = o.writes.get(polyvisor_core::Gpr::Rax).unwrap();
                if v.mode != CpuMode::Long64 {
                    prop_assert!(r <= u64::from(u32::MAX));
                }
            }
            Next::Retry | Next::Halt | Next::Exit(_) => {}
            Next::Inject(x) => prop_assert!(false, "no hypercall injects: {x:?}"),
        }
    }

    #[test]
    fn any_msr_write_is_answered(value in any::<u64>()) {
        let vm = Vm::new();
        let w = vm.engine.write_msr(&vm.msr(), 0x4000_0000, value);
        let ok = value % 4096 == 0 && value < 0x20_0000;
        prop_assert_eq!(w, if ok { MsrWrite::Done } else { MsrWrite::Gp });
    }
}
