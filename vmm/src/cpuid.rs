//! The CPUID a vCPU sees: the host's supported leaves (`KVM_GET_SUPPORTED_CPUID`) without the
//! host's own hypervisor range (0x40000000-0x4FFFFFFF), with the personality's leaves for this
//! vCPU installed and the vCPU's APIC id in the topology leaves. One function per edit, each
//! citing the manual; testable from literal tables.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use polyvisor_core::CpuidLeaf;

/// Why the CPUID table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuidError {
    /// More entries than KVM accepts.
    #[error("the CPUID table would have {0} entries; KVM accepts at most {KVM_MAX_CPUID_ENTRIES}")]
    TooMany(usize),
}

/// The hypervisor CPUID range a VMM owns.
pub const HYPERVISOR_RANGE: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4fff_ffff;

/// Drops the host's hypervisor leaves: the guest must see only the personality's.
pub fn remove_host_hypervisor_leaves(entries: &mut Vec<kvm_cpuid_entry2>) {
    entries.retain(|e| !HYPERVISOR_RANGE.contains(&e.function));
}

/// CPUID.01H:EBX bits 31:24 are the initial APIC id (SDM Vol. 2A, CPUID, Table 3-8);
/// CPUID.0BH/1FH:EDX is the x2APIC id of the current logical processor (SDM Vol. 2A).
pub fn set_apic_id(entries: &mut [kvm_cpuid_entry2], apic_id: u32) {
    for e in entries.iter_mut() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | ((apic_id & 0xff) << 24),
            0xb | 0x1f => e.edx = apic_id,
            _ => {}
        }
    }
}

/// Installs the personality's leaves, replacing any entry with the same function and index.
pub fn install_leaves(entries: &mut Vec<kvm_cpuid_entry2>, leaves: &[CpuidLeaf]) {
    for leaf in leaves {
        entries
            .retain(|e| !(e.function == leaf.function && (!leaf.indexed || e.index == leaf.index)));
        entries.push(kvm_cpuid_entry2 {
            function: leaf.function,
            index: if leaf.indexed { leaf.index } else { 0 },
            flags: if leaf.indexed { KVM_CPUID_FLAG_SIGNIFCANT_INDEX } else { 0 },
            eax: leaf.eax,
            ebx: leaf.ebx,
            ecx: leaf.ecx,
            edx: leaf.edx,
            ..Default::default()
        });
    }
}

/// The full table for vCPU `vcpu` (APIC id = vCPU index).
pub fn build(
    supported: &[kvm_cpuid_entry2],
    leaves: &[CpuidLeaf],
    vcpu: u32,
) -> Result<CpuId, CpuidError> {
    let mut entries = supported.to_vec();
    remove_host_hypervisor_leaves(&mut entries);
    set_apic_id(&mut entries, vcpu);
    install_leaves(&mut entries, leaves);
    if entries.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(CpuidError::TooMany(entries.len()));
    }
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooMany(entries.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(function: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, eax, ..Default::default() }
    }

    #[test]
    fn host_leaves_out_personality_in() {
        let supported = vec![e(0, 0xd), e(1, 0), e(0x4000_0000, 0x4000_0001), e(0x4000_0001, 7)];
        let leaves = [CpuidLeaf::signature(0x4000_0000, 0x4000_0010, b"bhyve bhyve ")];
        let c = build(&supported, &leaves, 3).unwrap();
        let s = c.as_slice();
        assert!(s.iter().all(|x| x.function != 0x4000_0001));
        let sig = s.iter().find(|x| x.function == 0x4000_0000).unwrap();
        assert_eq!(sig.eax, 0x4000_0010);
        assert_eq!(sig.ebx, u32::from_le_bytes(*b"bhyv"));
        let one = s.iter().find(|x| x.function == 1).unwrap();
        assert_eq!(one.ebx >> 24, 3);
    }
}
