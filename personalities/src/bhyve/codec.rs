//! The review's calling convention: RAX = number; arguments in RDI, RSI, RDX, RCX, R8, R9
//! (System V order, `bhyve_handle_hypercall` in the author's `vmm.c`); result in RAX.
//! 32-bit callers use the same registers at 32 bits (EAX, EDI, ESI, EDX, ECX); their
//! results are truncated to 32 bits.

use polyvisor_core::{CallInput, CpuMode, Gpr, Outcome, Refusal, Reply, VcpuSnapshot};

use super::abi::{rax_of, HYPERCALL_MAX_ARGS, HYPERCALL_RET_ERROR};

/// The argument registers in order (`arg_regs[]` in the author's `bhyve_handle_hypercall`).
pub const ARG_REGS: [Gpr; HYPERCALL_MAX_ARGS] =
    [Gpr::Rdi, Gpr::Rsi, Gpr::Rdx, Gpr::Rcx, Gpr::R8, Gpr::R9];

/// Reads the call number and the six arguments at the caller's width. R8 and R9 exist only
/// in 64-bit mode, so a 32-bit caller's fifth and sixth arguments read as 0 rather than as
/// whatever those registers last held in long mode.
pub fn decode(vcpu: &VcpuSnapshot) -> CallInput {
    let mut args = [0u64; HYPERCALL_MAX_ARGS];
    for (slot, reg) in args.iter_mut().zip(ARG_REGS) {
        let exists = vcpu.mode == CpuMode::Long64 || !matches!(reg, Gpr::R8 | Gpr::R9);
        *slot = if exists { vcpu.arg(reg) } else { 0 };
    }
    CallInput { number: vcpu.arg(Gpr::Rax), args }
}

/// A handler's value or error goes to RAX at the caller's width; the instruction is skipped.
pub fn encode(vcpu: &VcpuSnapshot, reply: Reply) -> Outcome {
    match reply {
        Reply::Value(v) | Reply::Error(v) => Outcome::ret(Gpr::Rax, vcpu.mode.truncate(v)),
        Reply::Outcome(o) => o,
    }
}

/// The review's answers to refused calls: a caller in the wrong ring gets
/// `HYPERCALL_RET_ERROR` in RAX and continues (the author's `vm_handle_hypercall` ring
/// check); everything else raises #UD: disabled (the review: "hypercalls are by default
/// disabled"), out of range or unimplemented (the final revision: "Unimplemented hypercalls
/// now cause an #UD fault"), and calls the configuration denies.
pub fn refuse(_vcpu: &VcpuSnapshot, refusal: Refusal) -> Outcome {
    match refusal {
        Refusal::WrongRing { .. } => Outcome::ret(Gpr::Rax, rax_of(HYPERCALL_RET_ERROR)),
        Refusal::Disabled
        | Refusal::Unknown { .. }
        | Refusal::Unimplemented { .. }
        | Refusal::Denied { .. } => Outcome::invalid_opcode(),
    }
}

#[cfg(test)]
mod tests {
    use polyvisor_core::testing::snapshot;
    use polyvisor_core::{Exception, HypercallInstruction, Next, Registers};
    use proptest::prelude::*;

    use super::*;

    fn regs() -> Registers {
        Registers {
            rax: 0xaaaa_aaaa_0000_0002,
            rdi: 0x1111_1111_8000_0001,
            rsi: 0x2222_2222_0000_0002,
            rdx: 0x3333_3333_0000_0003,
            rcx: 0x4444_4444_0000_0004,
            r8: 0x5555_5555_0000_0005,
            r9: 0x6666_6666_0000_0006,
            rbx: 0x7777,
            ..Default::default()
        }
    }

    #[test]
    fn long_mode_reads_all_six_registers_in_system_v_order() {
        let input = decode(&snapshot(regs()));
        assert_eq!(input.number, 0xaaaa_aaaa_0000_0002);
        assert_eq!(
            input.args,
            [
                0x1111_1111_8000_0001,
                0x2222_2222_0000_0002,
                0x3333_3333_0000_0003,
                0x4444_4444_0000_0004,
                0x5555_5555_0000_0005,
                0x6666_6666_0000_0006
            ]
        );
    }

    #[test]
    fn thirty_two_bit_callers_are_truncated_and_have_no_r8_r9() {
        for mode in [CpuMode::Protected32, CpuMode::Real] {
            let mut v = snapshot(regs());
            v.mode = mode;
            let input = decode(&v);
            assert_eq!(input.number, 2);
            assert_eq!(input.args, [0x8000_0001, 2, 3, 4, 0, 0], "{mode}");
        }
    }

    #[test]
    fn instruction_does_not_change_the_decoding() {
        let mut v = snapshot(regs());
        let a = decode(&v);
        v.instruction = HypercallInstruction::Vmmcall;
        assert_eq!(decode(&v), a);
    }

    #[test]
    fn results_are_truncated_for_32_bit_callers() {
        let mut v = snapshot(regs());
        assert_eq!(encode(&v, Reply::Value(u64::MAX)), Outcome::ret(Gpr::Rax, u64::MAX));
        v.mode = CpuMode::Protected32;
        assert_eq!(encode(&v, Reply::Value(u64::MAX)), Outcome::ret(Gpr::Rax, 0xffff_ffff));
        assert_eq!(encode(&v, Reply::Error(1)), Outcome::ret(Gpr::Rax, 1));
        let o = Outcome::invalid_opcode();
        assert_eq!(encode(&v, Reply::Outcome(o.clone())), o);
    }

    #[test]
    fn refusals() {
        let v = snapshot(regs());
        let ud = Outcome::inject(Exception::InvalidOpcode);
        assert_eq!(refuse(&v, Refusal::Disabled), ud);
        assert_eq!(refuse(&v, Refusal::Unknown { number: 7 }), ud);
        assert_eq!(refuse(&v, Refusal::Unimplemented { number: 3 }), ud);
        assert_eq!(refuse(&v, Refusal::Denied { number: 0 }), ud);
        let ring = refuse(&v, Refusal::WrongRing { number: 1, cpl: 3 });
        assert_eq!(ring, Outcome::ret(Gpr::Rax, 1));
        assert_eq!(ring.next, Next::Advance, "no fault: RIP moves past the instruction");
    }

    fn mode() -> impl Strategy<Value = CpuMode> {
        prop_oneof![Just(CpuMode::Long64), Just(CpuMode::Protected32), Just(CpuMode::Real)]
    }

    proptest! {
        #[test]
        fn decode_reads_each_register_at_the_callers_width(
            rax: u64, rdi: u64, rsi: u64, rdx: u64, rcx: u64, r8: u64, r9: u64, rbx: u64,
            m in mode(),
        ) {
            let mut v = snapshot(Registers { rax, rdi, rsi, rdx, rcx, r8, r9, rbx, ..Default::default() });
            v.mode = m;
            let input = decode(&v);
            let w = |x: u64| if m == CpuMode::Long64 { x } else { x & 0xffff_ffff };
            let wide = |x: u64| if m == CpuMode::Long64 { x } else { 0 };
            prop_assert_eq!(input.number, w(rax));
            prop_assert_eq!(input.args, [w(rdi), w(rsi), w(rdx), w(rcx), wide(r8), wide(r9)]);
        }

        #[test]
        fn encode_round_trips_at_the_callers_width(value: u64, m in mode()) {
            let mut v = snapshot(Registers::default());
            v.mode = m;
            let out = encode(&v, Reply::Value(value));
            prop_assert_eq!(out.next, Next::Advance);
            prop_assert_eq!(out.writes.get(Gpr::Rax), Some(m.truncate(value)));
            prop_assert_eq!(out.writes.iter().count(), 1);
        }
    }
}
