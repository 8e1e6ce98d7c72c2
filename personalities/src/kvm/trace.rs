//! KVM's calls and MSRs in a trace: the argument names of
//! `Documentation/virt/kvm/x86/hypercalls.rst`, results as `-KVM_E*` (`kvm_para.h`).

use polyvisor_core::trace::{describe_outcome, negated_errno, num, signed_result};
use polyvisor_core::{CallTrace, Gpr, Outcome, VcpuSnapshot};

use super::{abi, calls, codec};

/// The error codes KVM's hypercalls return, negated (`include/uapi/linux/kvm_para.h`).
const ERRNO: &[(u64, &str)] = {
    use super::abi::*;
    polyvisor_core::constant_names![
        KVM_ENOSYS,
        KVM_EFAULT,
        KVM_EINVAL,
        KVM_E2BIG,
        KVM_EPERM,
        KVM_EOPNOTSUPP
    ]
};

/// The call in `vcpu`'s registers with `hypercalls.rst`'s argument names.
pub(super) fn call(vcpu: &VcpuSnapshot) -> CallTrace {
    let input = codec::decode(vcpu);
    let [a0, a1, a2, a3, ..] = input.args;
    let named = |name: &str| CallTrace::new(input.number, name);
    match input.number {
        abi::KVM_HC_VAPIC_POLL_IRQ => named("KVM_HC_VAPIC_POLL_IRQ"),
        abi::KVM_HC_KICK_CPU => named("KVM_HC_KICK_CPU").hex("flags", a0).num("apicid", a1),
        abi::KVM_HC_CLOCK_PAIRING => {
            let clock = match a1 {
                abi::KVM_CLOCK_PAIRING_WALLCLOCK => "KVM_CLOCK_PAIRING_WALLCLOCK".to_string(),
                other => num(other),
            };
            named("KVM_HC_CLOCK_PAIRING").hex("pa", a0).arg("clock_type", clock)
        }
        abi::KVM_HC_SEND_IPI => {
            let mut c = named("KVM_HC_SEND_IPI").hex("bitmap", a0);
            if a1 != 0 {
                c = c.hex("bitmap_high", a1);
            }
            c.num("min", a2).hex("icr", a3)
        }
        abi::KVM_HC_SCHED_YIELD => named("KVM_HC_SCHED_YIELD").num("apicid", a0),
        abi::KVM_HC_MAP_GPA_RANGE => named("KVM_HC_MAP_GPA_RANGE")
            .hex("gpa", a0)
            .num("npages", a1)
            .arg("attrs", gpa_attrs(a2)),
        n => CallTrace::raw(calls::TABLE, n, &input.args[..4]),
    }
}

/// `KVM_MAP_GPA_RANGE_*` attributes by name, reserved bits in hex.
fn gpa_attrs(attrs: u64) -> String {
    let size = match attrs & abi::KVM_MAP_GPA_RANGE_PAGE_SZ_MASK {
        abi::KVM_MAP_GPA_RANGE_PAGE_SZ_4K => "PAGE_SZ_4K".to_string(),
        abi::KVM_MAP_GPA_RANGE_PAGE_SZ_2M => "PAGE_SZ_2M".to_string(),
        abi::KVM_MAP_GPA_RANGE_PAGE_SZ_1G => "PAGE_SZ_1G".to_string(),
        other => format!("PAGE_SZ_{other:#x}"),
    };
    let state =
        if attrs & abi::KVM_MAP_GPA_RANGE_ENCRYPTED != 0 { "ENCRYPTED" } else { "DECRYPTED" };
    let mut text = format!("{size}|{state}");
    let reserved = attrs & abi::KVM_MAP_GPA_RANGE_RESERVED;
    if reserved != 0 {
        text.push_str(&format!("|{reserved:#x}"));
    }
    text
}

/// RAX as KVM's signed result: `-KVM_EPERM`, or the value.
pub(super) fn result(vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
    describe_outcome(outcome, Gpr::Rax, |v| negated_errno(signed_result(vcpu.mode, v), ERRNO))
}

/// The names of KVM's MSRs (`arch/x86/include/uapi/asm/kvm_para.h`).
pub(super) fn msr_name(msr: u32) -> Option<&'static str> {
    Some(match msr {
        abi::MSR_KVM_WALL_CLOCK => "MSR_KVM_WALL_CLOCK",
        abi::MSR_KVM_SYSTEM_TIME => "MSR_KVM_SYSTEM_TIME",
        abi::MSR_KVM_WALL_CLOCK_NEW => "MSR_KVM_WALL_CLOCK_NEW",
        abi::MSR_KVM_SYSTEM_TIME_NEW => "MSR_KVM_SYSTEM_TIME_NEW",
        abi::MSR_KVM_ASYNC_PF_EN => "MSR_KVM_ASYNC_PF_EN",
        abi::MSR_KVM_STEAL_TIME => "MSR_KVM_STEAL_TIME",
        abi::MSR_KVM_PV_EOI_EN => "MSR_KVM_PV_EOI_EN",
        abi::MSR_KVM_POLL_CONTROL => "MSR_KVM_POLL_CONTROL",
        abi::MSR_KVM_ASYNC_PF_INT => "MSR_KVM_ASYNC_PF_INT",
        abi::MSR_KVM_ASYNC_PF_ACK => "MSR_KVM_ASYNC_PF_ACK",
        abi::MSR_KVM_MIGRATION_CONTROL => "MSR_KVM_MIGRATION_CONTROL",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyvisor_core::testing::snapshot;
    use polyvisor_core::{CpuMode, Registers};

    fn regs(rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64) -> VcpuSnapshot {
        snapshot(Registers { rax, rbx, rcx, rdx, rsi, ..Default::default() })
    }

    #[test]
    fn calls_by_name() {
        let c = call(&regs(abi::KVM_HC_SEND_IPI, 3, 0, 0, 0xfe));
        assert_eq!(c.to_string(), "KVM_HC_SEND_IPI(bitmap=0x3, min=0, icr=0xfe)");
        let c = call(&regs(abi::KVM_HC_MAP_GPA_RANGE, 0x10_0000, 2, 0x11, 0));
        assert_eq!(
            c.to_string(),
            "KVM_HC_MAP_GPA_RANGE(gpa=0x100000, npages=2, attrs=PAGE_SZ_2M|ENCRYPTED)"
        );
        let c = call(&regs(abi::KVM_HC_MMU_OP, 1, 0, 0, 0));
        assert_eq!(c.to_string(), "KVM_HC_MMU_OP(a0=0x1)");
        assert_eq!(call(&regs(77, 0, 0, 0, 0)).to_string(), "unknown()");
    }

    #[test]
    fn results_are_negated_kvm_errnos() {
        let mut v = regs(0, 0, 0, 0, 0);
        let out = Outcome::ret(Gpr::Rax, abi::negated(abi::KVM_ENOSYS));
        assert_eq!(result(&v, &out), "-KVM_ENOSYS");
        v.mode = CpuMode::Protected32;
        let out = Outcome::ret(Gpr::Rax, abi::negated(abi::KVM_EPERM) & 0xffff_ffff);
        assert_eq!(result(&v, &out), "-KVM_EPERM");
        assert_eq!(result(&v, &Outcome::ret(Gpr::Rax, 2)), "2");
        assert_eq!(msr_name(abi::MSR_KVM_POLL_CONTROL), Some("MSR_KVM_POLL_CONTROL"));
        assert_eq!(msr_name(0x10), None);
    }
}
