//! Hostile inputs: any registers and any memory contents give an answer, never a panic.

use polyvisor_core::{CpuMode, Dispatch, MsrWrite, Next};
use proptest::prelude::*;

use crate::xen::testutil::{snap32, snap64, Vm};

const NUMBERS: [u64; 10] = [12, 15, 17, 18, 24, 29, 32, 34, 7, 1000];

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
    fn any_ring_contents_are_answered(
        store in proptest::collection::vec(any::<u8>(), 4096),
        console in proptest::collection::vec(any::<u8>(), 4096),
        sane in any::<bool>(),
    ) {
        let vm = Vm::new();
        vm.write(0xfe000, &store);
        vm.write(0xff000, &console);
        if sane {
            // Indices in range, so the bytes are parsed as messages.
            vm.write(0xfe000 + 2048, &0u32.to_le_bytes());
            vm.write(0xfe000 + 2052, &(u32::from(store[0]) * 4).to_le_bytes());
            vm.write(0xfe000 + 2068, &0u32.to_le_bytes());
        }
        for port in [1u32, 2, 1] {
            vm.write(0x1000, &port.to_le_bytes());
            // EVTCHNOP_send answers 0 whatever the rings hold.
            prop_assert_eq!(vm.rax64(32, &[4, 0x1000]), 0);
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
