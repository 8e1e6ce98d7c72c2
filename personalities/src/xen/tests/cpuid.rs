use polyvisor_config::XenConfig;
use polyvisor_core::{CpuidLeaf, Dispatch, Policy};

use crate::xen::testutil::Vm;
use crate::HostFacts;

fn leaf(leaves: &[CpuidLeaf], function: u32, index: u32) -> CpuidLeaf {
    *leaves
        .iter()
        .find(|l| l.function == function && (!l.indexed || l.index == index))
        .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
}

#[test]
fn signature_and_limits() {
    let vm = Vm::new();
    let leaves = vm.engine.cpuid(0);
    let l0 = leaf(&leaves, 0x4000_0000, 0);
    assert_eq!(l0.eax, 0x4000_0005, "Xen's default limit: base + 5");
    assert_eq!((l0.ebx, l0.ecx, l0.edx), (0x566e_6558, 0x6558_4d4d, 0x4d4d_566e));
    assert_eq!(&l0.signature_bytes(), b"XenVMMXenVMM");
    // Every leaf up to the limit exists, and nothing beyond it.
    for f in 0x4000_0000..=0x4000_0005 {
        assert!(leaves.iter().any(|l| l.function == f), "{f:#x}");
    }
    assert!(leaves.iter().all(|l| l.function <= 0x4000_0005));
    assert_eq!(
        leaf(&leaves, 0x4000_0005, 0),
        CpuidLeaf { indexed: true, ..CpuidLeaf::new(0x4000_0005, 0, 0, 0, 0) }
    );
}

#[test]
fn version_leaf_follows_config() {
    assert_eq!(leaf(&Vm::new().engine.cpuid(0), 0x4000_0001, 0).eax, 0x0004_0011);
    let vm = Vm::version("4.19");
    let l1 = leaf(&vm.engine.cpuid(0), 0x4000_0001, 0);
    assert_eq!((l1.eax, l1.ebx, l1.ecx, l1.edx), (0x0004_0013, 0, 0, 0));
}

#[test]
fn hypercall_page_leaf() {
    let l2 = leaf(&Vm::new().engine.cpuid(0), 0x4000_0002, 0);
    assert_eq!((l2.eax, l2.ebx, l2.ecx, l2.edx), (1, 0x4000_0000, 0, 0));
}

#[test]
fn time_leaf_from_host_facts() {
    // HostFacts::nominal: 1 GHz, stable.
    let leaves = Vm::new().engine.cpuid(0);
    let s0 = leaf(&leaves, 0x4000_0003, 0);
    assert!(s0.indexed);
    assert_eq!((s0.eax, s0.ebx, s0.ecx, s0.edx), (0b010, 2, 1_000_000, 0));
    let s1 = leaf(&leaves, 0x4000_0003, 1);
    assert_eq!((s1.eax, s1.ebx, s1.ecx, s1.edx), (0, 0, 0x8000_0000, 1));
    let s2 = leaf(&leaves, 0x4000_0003, 2);
    assert_eq!((s2.eax, s2.ebx, s2.ecx, s2.edx), (1_000_000, 0, 0, 0));

    // 3 GHz: a negative shift is sign-extended in EDX, as Xen stores an int.
    let host = HostFacts { tsc_khz: Some(3_000_000), ..HostFacts::nominal() };
    let vm = Vm::build(XenConfig::default(), Policy::permissive(), host);
    let s1 = leaf(&vm.engine.cpuid(0), 0x4000_0003, 1);
    assert_eq!((s1.ecx, s1.edx), (0xaaaa_aaaa, 0xffff_ffff));

    // Unknown, unstable TSC: no reliability bit, no frequency, no scale.
    let host = HostFacts { tsc_khz: None, stable_tsc: false, ..HostFacts::nominal() };
    let vm = Vm::build(XenConfig::default(), Policy::permissive(), host);
    let leaves = vm.engine.cpuid(0);
    let s0 = leaf(&leaves, 0x4000_0003, 0);
    assert_eq!((s0.eax, s0.ecx), (0, 0));
    assert_eq!(leaf(&leaves, 0x4000_0003, 1).ecx, 0);
    assert_eq!(leaf(&leaves, 0x4000_0003, 2).eax, 0);
}

#[test]
fn hvm_leaf_names_vcpu_and_domain() {
    let config = XenConfig { domid: 7, ..XenConfig::default() };
    let vm = Vm::build(config, Policy::permissive(), HostFacts::nominal());
    for vcpu in [0, 1] {
        let l4 = leaf(&vm.engine.cpuid(vcpu), 0x4000_0004, 0);
        assert!(l4.indexed && l4.index == 0);
        // VCPU_ID_PRESENT | DOMID_PRESENT, nothing this VMM does not back.
        assert_eq!(l4.eax, (1 << 3) | (1 << 4));
        assert_eq!((l4.ebx, l4.ecx, l4.edx), (vcpu, 7, 0));
    }
}

#[test]
fn leaves_are_the_same_when_hypercalls_are_off() {
    let vm = Vm::build(XenConfig::default(), Policy::default(), HostFacts::nominal());
    assert_eq!(vm.engine.cpuid(1), Vm::new().engine.cpuid(1));
}
