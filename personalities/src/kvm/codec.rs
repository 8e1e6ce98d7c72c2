//! KVM's hypercall register convention (`Documentation/virt/kvm/x86/hypercalls.rst`; Linux
//! `arch/x86/kvm/x86.c`, `kvm_emulate_hypercall`):
//!
//! * RAX = number, RBX RCX RDX RSI = a0..a3, the result in RAX; nothing else changes.
//! * Outside 64-bit mode the number, the arguments and the result are truncated to 32 bits
//!   (`if (!op_64_bit) { nr &= 0xFFFFFFFF; a0 &= ... }`, `ret = (u32)ret`).
//! * CPL != 0 is answered `-KVM_EPERM` before the number is looked at, so a user-mode caller
//!   gets `-KVM_EPERM` even for a number KVM does not know.
//! * An unknown number is answered `-KVM_ENOSYS`.

use polyvisor_core::{CallInput, CpuMode, Gpr, Outcome, Refusal, Reply, VcpuSnapshot};

use super::abi;

/// Reads the call: never malformed, every register pattern is a call.
pub(super) fn decode(vcpu: &VcpuSnapshot) -> CallInput {
    CallInput {
        number: vcpu.arg(Gpr::Rax),
        args: [
            vcpu.arg(Gpr::Rbx),
            vcpu.arg(Gpr::Rcx),
            vcpu.arg(Gpr::Rdx),
            vcpu.arg(Gpr::Rsi),
            0,
            0,
        ],
    }
}

/// Writes a reply to RAX, truncated for 32-bit callers.
pub(super) fn encode(vcpu: &VcpuSnapshot, reply: Reply) -> Outcome {
    match reply {
        Reply::Value(v) | Reply::Error(v) => Outcome::ret(Gpr::Rax, vcpu.mode.truncate(v)),
        Reply::Outcome(o) => o,
    }
}

/// The error code for a refused call (not yet negated).
pub(super) fn refusal_code(vcpu: &VcpuSnapshot, refusal: Refusal) -> u64 {
    // The engine counts real mode as ring 0; so does KVM's `get_cpl` there.
    let user = vcpu.mode != CpuMode::Real && vcpu.cpl != 0;
    match refusal {
        // A configuration "no" and the ring check: -KVM_EPERM.
        Refusal::Denied { .. } | Refusal::WrongRing { .. } => abi::KVM_EPERM,
        // KVM checks CPL before the number: user mode gets -KVM_EPERM for anything.
        _ if user => abi::KVM_EPERM,
        // Hypercalls off: every number is as unknown as one KVM never heard of.
        Refusal::Disabled | Refusal::Unknown { .. } | Refusal::Unimplemented { .. } => {
            abi::KVM_ENOSYS
        }
    }
}

/// The ABI's answer to a refused call: the negated code in RAX, instruction completed.
pub(super) fn refuse(vcpu: &VcpuSnapshot, refusal: Refusal) -> Outcome {
    encode(vcpu, Reply::Error(abi::negated(refusal_code(vcpu, refusal))))
}

/// An error reply: the negated code.
pub(super) fn error(code: u64) -> Reply {
    Reply::Error(abi::negated(code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyvisor_core::testing::snapshot;
    use polyvisor_core::{Next, Registers};
    use proptest::prelude::*;

    fn regs(rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64) -> Registers {
        Registers { rax, rbx, rcx, rdx, rsi, rdi: 0xd1d1, r8: 0x8888, ..Default::default() }
    }

    #[test]
    fn decode_takes_rax_and_rbx_rcx_rdx_rsi() {
        let v = snapshot(regs(12, 1, 2, 3, 4));
        assert_eq!(decode(&v), CallInput { number: 12, args: [1, 2, 3, 4, 0, 0] });
    }

    #[test]
    fn refusal_codes() {
        let mut v = snapshot(Registers::default());
        let n = 99;
        let all = [
            Refusal::Disabled,
            Refusal::Unknown { number: n },
            Refusal::Unimplemented { number: n },
            Refusal::Denied { number: n },
            Refusal::WrongRing { number: n, cpl: 3 },
        ];
        let at_cpl0: Vec<u64> = all.iter().map(|r| refusal_code(&v, *r)).collect();
        assert_eq!(
            at_cpl0,
            vec![abi::KVM_ENOSYS, abi::KVM_ENOSYS, abi::KVM_ENOSYS, abi::KVM_EPERM, abi::KVM_EPERM]
        );
        for cpl in [1, 2, 3] {
            v.cpl = cpl;
            assert!(all.iter().all(|r| refusal_code(&v, *r) == abi::KVM_EPERM));
        }
        v.mode = CpuMode::Real;
        assert_eq!(refusal_code(&v, Refusal::Disabled), abi::KVM_ENOSYS);
    }

    #[test]
    fn errors_are_negated_and_truncated_for_32_bit_callers() {
        let mut v = snapshot(Registers::default());
        let o = refuse(&v, Refusal::Disabled);
        assert_eq!(o.writes.get(Gpr::Rax), Some((-1000i64) as u64));
        assert_eq!(o.next, Next::Advance);
        v.mode = CpuMode::Protected32;
        let o = refuse(&v, Refusal::Disabled);
        assert_eq!(o.writes.get(Gpr::Rax), Some(0xffff_fc18));
        assert_eq!(encode(&v, error(abi::KVM_EINVAL)).writes.get(Gpr::Rax), Some(0xffff_ffea));
    }

    proptest! {
        #[test]
        fn thirty_two_bit_callers_see_32_bit_values(
            rax in any::<u64>(), rbx in any::<u64>(), rcx in any::<u64>(),
            rdx in any::<u64>(), rsi in any::<u64>(), value in any::<u64>(),
            real in any::<bool>(),
        ) {
            let mut v = snapshot(regs(rax, rbx, rcx, rdx, rsi));
            let wide = decode(&v);
            prop_assert_eq!(wide.number, rax);
            prop_assert_eq!(wide.args, [rbx, rcx, rdx, rsi, 0, 0]);
            prop_assert_eq!(encode(&v, Reply::Value(value)), Outcome::ret(Gpr::Rax, value));

            v.mode = if real { CpuMode::Real } else { CpuMode::Protected32 };
            let narrow = decode(&v);
            let m = 0xffff_ffffu64;
            prop_assert_eq!(narrow.number, rax & m);
            prop_assert_eq!(narrow.args, [rbx & m, rcx & m, rdx & m, rsi & m, 0, 0]);
            let o = encode(&v, Reply::Value(value));
            prop_assert_eq!(o.writes.get(Gpr::Rax), Some(value & m));
            prop_assert_eq!(o.writes.iter().count(), 1, "only RAX changes");
        }
    }
}
