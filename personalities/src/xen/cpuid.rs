//! The Xen CPUID leaves, `cpuid_hypervisor_leaves` in `xen/arch/x86/cpuid.c` with the
//! layout of `xen/include/public/arch-x86/cpuid.h`, at base 0x40000000 (no Viridian leaves).

use polyvisor_core::CpuidLeaf;

use super::abi::cpuid::*;
use super::shared_info::time_scale;
use super::Xen;

const B: u32 = XEN_CPUID_FIRST_LEAF;

/// A leaf with sub-leaves selected by ECX.
fn sub(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidLeaf {
    CpuidLeaf { index, indexed: true, ..CpuidLeaf::new(function, eax, ebx, ecx, edx) }
}

/// The leaves vCPU `vcpu` sees.
pub fn leaves(xen: &Xen, vcpu: u32) -> Vec<CpuidLeaf> {
    let (major, minor) = xen.version;
    let khz = xen.host.tsc_khz.and_then(|k| u32::try_from(k).ok());
    let (mul, shift) =
        xen.host.tsc_khz.and_then(|k| time_scale(k.saturating_mul(1000))).unwrap_or((0, 0));
    let reliable = if xen.host.stable_tsc { XEN_CPUID_HOST_TSC_RELIABLE } else { 0 };
    vec![
        // B+0: the largest leaf (Xen's default limit) and "XenVMMXenVMM".
        CpuidLeaf::signature(B, B + XEN_CPUID_MAX_NUM_LEAVES, SIGNATURE),
        // B+1: version.
        CpuidLeaf::new(B + 1, (u32::from(major) << 16) | u32::from(minor), 0, 0, 0),
        // B+2: one hypercall page, its MSR; no feature bits for HVM.
        CpuidLeaf::new(B + 2, 1, HYPERCALL_PAGE_MSR, 0, 0),
        // B+3 sub-leaf 0: TSC not emulated, host TSC reliable when stable, RDTSCP bit not
        // claimed; mode "never emulate" (the guest reads the hardware TSC); guest kHz;
        // incarnation 0.
        sub(B + 3, 0, reliable, XEN_CPUID_TSC_MODE_NEVER_EMULATE, khz.unwrap_or(0), 0),
        // Sub-leaf 1: offset 0, the TSC-to-ns scale of the pvclock.
        sub(B + 3, 1, 0, 0, mul, i32::from(shift) as u32),
        // Sub-leaf 2: the physical TSC kHz (the guest's; never a host-only value).
        sub(B + 3, 2, khz.unwrap_or(0), 0, 0, 0),
        // B+4 sub-leaf 0: HVM features: the vCPU id in EBX, the domid in ECX.
        sub(
            B + 4,
            0,
            XEN_HVM_CPUID_VCPU_ID_PRESENT | XEN_HVM_CPUID_DOMID_PRESENT,
            vcpu,
            u32::from(xen.domid),
            0,
        ),
        // B+5: PV-only parameters, empty for HVM.
        sub(B + 5, 0, 0, 0, 0, 0),
    ]
}

/// The HVM feature bits of B+4 EAX, as `arch-x86/cpuid.h` names them.
const HVM_FEATURES: [(u32, &str); 7] = [
    (1 << 0, "XEN_HVM_CPUID_APIC_ACCESS_VIRT"),
    (1 << 1, "XEN_HVM_CPUID_X2APIC_VIRT"),
    (1 << 2, "XEN_HVM_CPUID_IOMMU_MAPPINGS"),
    (XEN_HVM_CPUID_VCPU_ID_PRESENT, "XEN_HVM_CPUID_VCPU_ID_PRESENT: the vCPU id is in EBX"),
    (XEN_HVM_CPUID_DOMID_PRESENT, "XEN_HVM_CPUID_DOMID_PRESENT: the domain id is in ECX"),
    (1 << 5, "XEN_HVM_CPUID_EXT_DEST_ID"),
    (1 << 6, "XEN_HVM_CPUID_UPCALL_VECTOR"),
];

/// What a leaf means, for `polyvisor cpuid`.
pub fn explain(leaf: &CpuidLeaf) -> Vec<String> {
    match (leaf.function.wrapping_sub(B), leaf.index) {
        (0, _) => vec![format!(
            "signature \"{}\", highest leaf {:#010x}",
            String::from_utf8_lossy(&leaf.signature_bytes()),
            leaf.eax
        )],
        (1, _) => vec![format!("Xen version {}.{}", leaf.eax >> 16, leaf.eax & 0xffff)],
        (2, _) => vec![format!(
            "{} hypercall page(s), installed by writing its address to MSR {:#010x}",
            leaf.eax, leaf.ebx
        )],
        (3, 0) => vec![
            format!(
                "TSC mode {}{}",
                leaf.ebx,
                if leaf.ebx == XEN_CPUID_TSC_MODE_NEVER_EMULATE { " (never emulate)" } else { "" }
            ),
            format!("host TSC reliable: {}", leaf.eax & XEN_CPUID_HOST_TSC_RELIABLE != 0),
            format!("guest TSC {} kHz", leaf.ecx),
        ],
        (3, 1) => vec![format!("pvclock scale: mul {:#x}, shift {}", leaf.ecx, leaf.edx as i32)],
        (3, 2) => vec![format!("physical TSC {} kHz", leaf.eax)],
        (4, 0) => HVM_FEATURES
            .iter()
            .filter(|(bit, _)| leaf.eax & bit != 0)
            .map(|(_, name)| (*name).to_string())
            .chain(
                (leaf.eax & XEN_HVM_CPUID_VCPU_ID_PRESENT != 0)
                    .then(|| format!("vCPU id {}", leaf.ebx)),
            )
            .chain(
                (leaf.eax & XEN_HVM_CPUID_DOMID_PRESENT != 0)
                    .then(|| format!("domain id {}", leaf.ecx)),
            )
            .collect(),
        (5, _) => vec!["PV-only parameters: empty for HVM guests".to_string()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod explain_tests {
    use super::*;
    use crate::HostFacts;
    use polyvisor_config::XenConfig;

    #[test]
    fn every_leaf_is_explained() {
        let xen = Xen::new(&XenConfig::default(), 4, HostFacts::nominal());
        let leaves = leaves(&xen, 3);
        for leaf in &leaves {
            assert!(!explain(leaf).is_empty(), "{leaf:?}");
        }
        let text = leaves.iter().flat_map(explain).collect::<Vec<_>>().join("\n");
        assert!(text.contains("signature \"XenVMMXenVMM\""), "{text}");
        assert!(text.contains("Xen version 4.17"), "{text}");
        assert!(text.contains("MSR 0x40000000"), "{text}");
        assert!(text.contains("vCPU id 3"), "{text}");
        assert!(text.contains("XEN_HVM_CPUID_DOMID_PRESENT"), "{text}");
    }
}
