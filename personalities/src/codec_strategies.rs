//! What the calling-convention property tests (`<mode>/codec_props.rs`) share: any caller's
//! mode, any refusal, and registers at their maximum.

use polyvisor_core::{CpuMode, Refusal, Registers};
use proptest::prelude::*;

/// 64-bit, 32-bit protected and real-mode callers.
pub(crate) fn any_mode() -> impl Strategy<Value = CpuMode> {
    prop_oneof![Just(CpuMode::Long64), Just(CpuMode::Protected32), Just(CpuMode::Real)]
}

/// Every kind of refusal the engine hands a personality.
pub(crate) fn any_refusal() -> impl Strategy<Value = Refusal> {
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

/// Every general-purpose register all ones.
pub(crate) fn all_ones() -> Registers {
    let m = u64::MAX;
    Registers {
        rax: m,
        rbx: m,
        rcx: m,
        rdx: m,
        rsi: m,
        rdi: m,
        rbp: m,
        r8: m,
        r9: m,
        r10: m,
        r11: m,
        ..Default::default()
    }
}
