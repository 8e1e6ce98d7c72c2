//! KVM's CPUID leaves (`Documentation/virt/kvm/x86/cpuid.rst`,
//! `arch/x86/include/uapi/asm/kvm_para.h`): the signature leaf and the feature leaf.

use polyvisor_core::CpuidLeaf;

use super::abi;
use super::features::{self, FeatureSet};

/// The leaves every vCPU sees: `KVM_CPUID_SIGNATURE` with the highest leaf in EAX
/// (cpuid.rst: "0 on old hosts means the same") and `KVM_CPUID_FEATURES` with the feature
/// bits in EAX and the hints in EDX; EBX and ECX are 0.
pub(super) fn leaves(features: FeatureSet, hints: u32) -> Vec<CpuidLeaf> {
    vec![
        CpuidLeaf::signature(abi::KVM_CPUID_SIGNATURE, abi::KVM_CPUID_FEATURES, abi::KVM_SIGNATURE),
        CpuidLeaf::new(abi::KVM_CPUID_FEATURES, features.bits(), 0, 0, hints),
    ]
}

/// What a leaf means, one line per fact, for `polyvisor cpuid`.
pub(super) fn explain(shown: &CpuidLeaf) -> Vec<String> {
    match shown.function {
        abi::KVM_CPUID_SIGNATURE => vec![format!(
            "signature \"KVMKVMKVM\\0\\0\\0\", highest hypervisor leaf {:#x}",
            shown.eax
        )],
        abi::KVM_CPUID_FEATURES => {
            let mut lines: Vec<String> = (0..32)
                .filter(|bit| shown.eax & (1 << bit) != 0)
                .map(|bit| match features::by_bit(bit) {
                    Some(f) => format!(
                        "EAX bit {bit:2} {}: {}",
                        features::spec_name(f),
                        features::served_by(f)
                    ),
                    None => format!("EAX bit {bit:2}: not a KVM feature bit"),
                })
                .collect();
            if shown.eax == 0 {
                lines.push("EAX = 0: no paravirtual features".to_string());
            }
            if shown.edx & (1 << abi::KVM_HINTS_REALTIME) != 0 {
                lines.push(
                    "EDX bit  0 KVM_HINTS_REALTIME: the configuration promises vCPUs are never \
                     preempted for long"
                        .to_string(),
                );
            }
            lines
        }
        _ => Vec::new(),
    }
}
