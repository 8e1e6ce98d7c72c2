//! bhyve's CPUID leaves: the signature leaf and 0x40000001, whose EAX means "hypercalls
//! enabled" in the review and "MSI extended destination id" in stock FreeBSD 15.

use polyvisor_config::BhyveLeaf;
use polyvisor_core::CpuidLeaf;

/// `CPUID_VM_SIGNATURE` (FreeBSD `sys/amd64/vmm/x86.c`): the signature leaf.
pub const CPUID_VM_SIGNATURE: u32 = 0x4000_0000;
/// `CPUID_BHYVE_FEATURES` (FreeBSD 15 `x86.c`; `CPUID_4000_0001` in the review's `x86.c`).
pub const CPUID_BHYVE_FEATURES: u32 = 0x4000_0001;
/// `CPUID_VM_HIGH`: the highest hypervisor leaf, in EAX of the signature leaf (0x40000001 in
/// both the review's and FreeBSD 15's `x86.c`).
pub const CPUID_VM_HIGH: u32 = CPUID_BHYVE_FEATURES;
/// `bhyve_id` (`x86.c`): the twelve signature bytes in EBX, ECX, EDX.
pub const BHYVE_SIGNATURE: &[u8; 12] = b"bhyve bhyve ";
/// `CPUID_BHYVE_FEAT_EXT_DEST_ID` (FreeBSD 15 `x86.c`, Linux `arch/x86/kernel/cpu/bhyve.c`):
/// EAX bit 0 of 0x40000001, MSI extended destination id.
pub const CPUID_BHYVE_FEAT_EXT_DEST_ID: u32 = 1 << 0;
/// What EAX of 0x40000001 holds in review mode when hypercalls are enabled: 1, the value of
/// the `hw.vmm.hypercalls_enabled` sysctl that the review's `cpuid_bhyve_hypercall_enabled()`
/// copies into EAX (the test plan sets it to 1). It is bit 0, the bit FreeBSD 15 and Linux
/// read as [`CPUID_BHYVE_FEAT_EXT_DEST_ID`].
pub const HYPERCALLS_ENABLED_EAX: u32 = 1;

/// The leaves a bhyve guest sees. Both vCPUs see the same; nothing is per-vCPU.
pub fn leaves(leaf: BhyveLeaf, hypercalls_enabled: bool) -> Vec<CpuidLeaf> {
    let features = match leaf {
        BhyveLeaf::Review if hypercalls_enabled => HYPERCALLS_ENABLED_EAX,
        BhyveLeaf::Review => 0,
        BhyveLeaf::Freebsd15 => CPUID_BHYVE_FEAT_EXT_DEST_ID,
    };
    vec![
        CpuidLeaf::signature(CPUID_VM_SIGNATURE, CPUID_VM_HIGH, BHYVE_SIGNATURE),
        CpuidLeaf::new(CPUID_BHYVE_FEATURES, features, 0, 0, 0),
    ]
}

/// What a leaf means, one line per fact.
pub fn explain(leaf: BhyveLeaf, hypercalls_enabled: bool, shown: &CpuidLeaf) -> Vec<String> {
    match shown.function {
        CPUID_VM_SIGNATURE => vec![
            format!(
                "signature {:?}, highest hypervisor leaf {:#x}",
                String::from_utf8_lossy(&shown.signature_bytes()),
                shown.eax
            ),
            "leaves above 0x40000001 are not clamped to it as bhyve does; KVM's out-of-range \
             rule answers them"
                .to_string(),
        ],
        CPUID_BHYVE_FEATURES => match leaf {
            BhyveLeaf::Review => {
                let mut lines = vec![format!(
                    "EAX={:#x}: hypercalls {} (review meaning: non-zero when enabled)",
                    shown.eax,
                    if hypercalls_enabled { "enabled" } else { "disabled" }
                )];
                if shown.eax & CPUID_BHYVE_FEAT_EXT_DEST_ID != 0 {
                    lines.push(
                        "bit 0 is CPUID_BHYVE_FEAT_EXT_DEST_ID to FreeBSD 15 and Linux guests: \
                         they will also believe MSI extended destination ids are available"
                            .to_string(),
                    );
                }
                lines
            }
            BhyveLeaf::Freebsd15 => vec![
                format!("EAX={:#x}: CPUID_BHYVE_FEAT_EXT_DEST_ID (stock FreeBSD 15)", shown.eax),
                "hypercalls are refused in this mode (VMCALL/VMMCALL raise #UD)".to_string(),
            ],
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(leaves: &[CpuidLeaf], function: u32) -> CpuidLeaf {
        *leaves.iter().find(|l| l.function == function).unwrap()
    }

    #[test]
    fn signature_leaf_is_stock_bhyve() {
        for (leaf, enabled) in [
            (BhyveLeaf::Review, false),
            (BhyveLeaf::Review, true),
            (BhyveLeaf::Freebsd15, false),
            (BhyveLeaf::Freebsd15, true),
        ] {
            let l = leaves(leaf, enabled);
            assert_eq!(l.len(), 2);
            let sig = find(&l, 0x4000_0000);
            assert_eq!(sig.eax, 0x4000_0001, "highest leaf");
            assert_eq!((sig.ebx, sig.ecx, sig.edx), (0x7679_6862, 0x6862_2065, 0x2065_7679));
            assert_eq!(&sig.signature_bytes(), b"bhyve bhyve ");
            assert!(!sig.indexed);
        }
    }

    #[test]
    fn review_leaf_says_whether_hypercalls_are_enabled() {
        assert_eq!(
            find(&leaves(BhyveLeaf::Review, true), 0x4000_0001),
            CpuidLeaf::new(0x4000_0001, 1, 0, 0, 0)
        );
        assert_eq!(
            find(&leaves(BhyveLeaf::Review, false), 0x4000_0001),
            CpuidLeaf::new(0x4000_0001, 0, 0, 0, 0)
        );
    }

    #[test]
    fn freebsd15_leaf_is_ext_dest_id_only() {
        for enabled in [false, true] {
            assert_eq!(
                find(&leaves(BhyveLeaf::Freebsd15, enabled), 0x4000_0001),
                CpuidLeaf::new(0x4000_0001, CPUID_BHYVE_FEAT_EXT_DEST_ID, 0, 0, 0)
            );
        }
    }

    #[test]
    fn the_collision_is_explained() {
        let l = find(&leaves(BhyveLeaf::Review, true), 0x4000_0001);
        let text = explain(BhyveLeaf::Review, true, &l).join("\n");
        assert!(text.contains("enabled") && text.contains("EXT_DEST_ID"), "{text}");
        let l = find(&leaves(BhyveLeaf::Review, false), 0x4000_0001);
        let text = explain(BhyveLeaf::Review, false, &l).join("\n");
        assert!(text.contains("disabled") && !text.contains("EXT_DEST_ID"), "{text}");
        let l = find(&leaves(BhyveLeaf::Freebsd15, true), 0x4000_0001);
        let text = explain(BhyveLeaf::Freebsd15, true, &l).join("\n");
        assert!(text.contains("EXT_DEST_ID") && text.contains("#UD"), "{text}");
        let sig = find(&leaves(BhyveLeaf::Review, true), 0x4000_0000);
        assert!(explain(BhyveLeaf::Review, true, &sig)[0].contains("\"bhyve bhyve \""));
        assert!(explain(BhyveLeaf::Review, true, &CpuidLeaf::new(1, 0, 0, 0, 0)).is_empty());
    }
}
