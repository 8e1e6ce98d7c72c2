//! Properties of the TLFS register convention (docs/abi/hyperv.md, "Hypercall convention"):
//! reserved bits of the input value, maximum field values, the result value in RAX or
//! EDX:EAX, and the rep continuation.

use polyvisor_core::testing::snapshot;
use polyvisor_core::{CpuMode, Gpr, Next, Registers};
use proptest::prelude::*;

use super::abi::{HV_HYPERCALL_REP_START_MASK, HV_HYPERCALL_RSVD_MASK, HV_STATUS_SUCCESS};
use super::codec::{continuation, result, result_value, Control};

fn narrow() -> polyvisor_core::VcpuSnapshot {
    let mut v = snapshot(Registers::default());
    v.mode = CpuMode::Protected32;
    v
}

/// The 64-bit value a 32-bit caller reads from EDX:EAX after an outcome.
fn edx_eax(o: &polyvisor_core::Outcome) -> u64 {
    o.writes.get(Gpr::Rdx).unwrap() << 32 | o.writes.get(Gpr::Rax).unwrap()
}

#[test]
fn the_all_ones_input_value_has_every_field_at_its_maximum() {
    let c = Control(u64::MAX);
    assert_eq!(c.code(), 0xffff);
    assert!(c.fast());
    assert_eq!(c.var_header(), 0x3ff);
    assert_eq!(c.rep_count(), 0xfff);
    assert_eq!(c.rep_start(), 0xfff);
    assert!(c.reserved());
    assert!(!Control(!HV_HYPERCALL_RSVD_MASK).reserved());
}

proptest! {
    /// RsvdZ: bits 31:27, 47:44 and 63:60; any one of them set is reserved, none set is not.
    #[test]
    fn reserved_bits_are_exactly_the_rsvdz_fields(raw: u64, bit in prop::sample::select(
        (27..=31).chain(44..=47).chain(60..=63).collect::<Vec<u32>>()
    )) {
        prop_assert_eq!(Control(raw).reserved(), raw & HV_HYPERCALL_RSVD_MASK != 0);
        prop_assert!(Control((raw & !HV_HYPERCALL_RSVD_MASK) | 1 << bit).reserved());
        prop_assert!(!Control(raw & !HV_HYPERCALL_RSVD_MASK).reserved());
    }

    #[test]
    fn with_rep_start_keeps_12_bits_and_every_other_field(raw: u64, start: u16) {
        let c = Control(raw).with_rep_start(start);
        prop_assert_eq!(c.rep_start(), start & 0xfff);
        prop_assert_eq!(c.0 & !HV_HYPERCALL_REP_START_MASK, raw & !HV_HYPERCALL_REP_START_MASK);
    }

    #[test]
    fn result_values_round_trip_status_and_reps(status: u16, reps: u16) {
        let v = result_value(status, reps);
        prop_assert_eq!(v & 0xffff, u64::from(status));
        prop_assert_eq!(Control(v).rep_count(), reps & 0xfff, "reps completed sit in 43:32");
        prop_assert_eq!(v >> 44, 0, "nothing above the rep count");
    }

    /// 64-bit callers get the value in RAX alone; 32-bit callers in EDX:EAX, 32 bits each.
    #[test]
    fn the_result_is_rax_or_edx_eax(value: u64) {
        let wide = result(&snapshot(Registers::default()), value);
        prop_assert_eq!(&wide.next, &Next::Advance);
        prop_assert_eq!(wide.writes.iter().collect::<Vec<_>>(), vec![(Gpr::Rax, value)]);
        let o = result(&narrow(), value);
        prop_assert_eq!(&o.next, &Next::Advance);
        prop_assert!(o.writes.iter().all(|(_, v)| v <= 0xffff_ffff), "32-bit halves");
        prop_assert_eq!(edx_eax(&o), value);
    }

    /// TLFS "Hypercall Continuation": RIP stays; the input value carries the new start index
    /// (RCX, or EDX:EAX for 32-bit callers), 64-bit RAX the progress so far.
    #[test]
    fn a_continuation_resumes_at_the_reps_done(raw: u64, done in 0u16..0x1000) {
        let c = Control(raw);
        let wide = continuation(&snapshot(Registers::default()), c, done);
        prop_assert_eq!(&wide.next, &Next::Retry);
        prop_assert_eq!(wide.writes.get(Gpr::Rcx), Some(c.with_rep_start(done).0));
        prop_assert_eq!(wide.writes.get(Gpr::Rax), Some(result_value(HV_STATUS_SUCCESS, done)));
        let o = continuation(&narrow(), c, done);
        prop_assert_eq!(&o.next, &Next::Retry);
        prop_assert_eq!(Control(edx_eax(&o)).rep_start(), done);
        prop_assert_eq!(edx_eax(&o), c.with_rep_start(done).0);
    }
}
