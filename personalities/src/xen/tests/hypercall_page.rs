use polyvisor_config::XenConfig;
use polyvisor_core::testing::{Effect, RecordingPlatform};
use polyvisor_core::{Dispatch, HypercallInstruction, MsrRead, MsrWrite, PlatformError, Policy};

use crate::xen::hypercall_page::contents;
use crate::xen::testutil::{regions, Vm};
use crate::HostFacts;

/// The page as Xen writes it, spelled out byte by byte.
fn expected(instr: [u8; 3]) -> Vec<u8> {
    let mut page = vec![0xccu8; 4096];
    for i in 0..128usize {
        let stub = &mut page[i * 32..i * 32 + 32];
        if i == 23 {
            stub[0] = 0x0f;
            stub[1] = 0x0b;
            continue;
        }
        stub[..9].copy_from_slice(&[0xb8, i as u8, 0, 0, 0, instr[0], instr[1], instr[2], 0xc3]);
    }
    page
}

#[test]
fn page_contents_are_byte_exact() {
    assert_eq!(contents(HypercallInstruction::Vmcall).to_vec(), expected([0x0f, 0x01, 0xc1]));
    assert_eq!(contents(HypercallInstruction::Vmmcall).to_vec(), expected([0x0f, 0x01, 0xd9]));
    let page = contents(HypercallInstruction::Vmcall);
    // Spot checks against the layout: sched_op's stub, the iret ud2 and the fill after it.
    assert_eq!(&page[29 * 32..29 * 32 + 10], &[0xb8, 29, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xc3, 0xcc]);
    assert_eq!(&page[23 * 32..23 * 32 + 3], &[0x0f, 0x0b, 0xcc]);
    assert!(page[23 * 32 + 2..24 * 32].iter().all(|b| *b == 0xcc));
    assert_eq!(&page[127 * 32..127 * 32 + 5], &[0xb8, 127, 0, 0, 0]);
}

#[test]
fn msr_write_fills_ram_and_protects_it() {
    let vm = Vm::new();
    vm.fill(0x5000, 4096, 0);
    assert_eq!(vm.engine.write_msr(&vm.msr(), 0x4000_0000, 0x5000), MsrWrite::Done);
    assert_eq!(vm.read(0x5000, 4096), expected([0x0f, 0x01, 0xc1]));
    assert_eq!(vm.platform.take(), vec![Effect::ProtectCode(0x5000, 4096)]);
    // Rewriting elsewhere works again; the old page stays RAM.
    assert_eq!(vm.engine.write_msr(&vm.msr(), 0x4000_0000, 0x9000), MsrWrite::Done);
    assert_eq!(vm.read(0x9000, 4096), expected([0x0f, 0x01, 0xc1]));
}

#[test]
fn amd_hosts_get_vmmcall() {
    let host = HostFacts { instruction: HypercallInstruction::Vmmcall, ..HostFacts::nominal() };
    let vm = Vm::build(XenConfig::default(), Policy::permissive(), host);
    assert_eq!(vm.engine.write_msr(&vm.msr(), 0x4000_0000, 0x3000), MsrWrite::Done);
    assert_eq!(vm.read(0x3000, 4096), expected([0x0f, 0x01, 0xd9]));
}

#[test]
fn nonzero_page_index_is_gp_and_touches_nothing() {
    let vm = Vm::new();
    vm.fill(0x5000, 4096, 0x11);
    for value in [0x5001, 0x5800, 0x5fff] {
        assert_eq!(vm.engine.write_msr(&vm.msr(), 0x4000_0000, value), MsrWrite::Gp);
    }
    assert!(vm.read(0x5000, 4096).iter().all(|b| *b == 0x11));
    assert!(vm.platform.take().is_empty());
}

#[test]
fn frame_outside_ram_is_gp() {
    let vm = Vm::new();
    for value in [0x20_0000, 0x1_0000_0000, 0xffff_ffff_ffff_f000] {
        assert_eq!(vm.engine.write_msr(&vm.msr(), 0x4000_0000, value), MsrWrite::Gp);
    }
    // A page straddling the end of a region is not RAM either.
    let vm = Vm::new().with_memory(regions(&[(0, 0x1800)]));
    assert_eq!(vm.engine.write_msr(&vm.msr(), 0x4000_0000, 0x1000), MsrWrite::Gp);
}

#[test]
fn reads_are_zero_and_other_msrs_are_not_ours() {
    let vm = Vm::new();
    vm.engine.write_msr(&vm.msr(), 0x4000_0000, 0x5000);
    assert_eq!(vm.engine.read_msr(&vm.msr(), 0x4000_0000), MsrRead::Value(0));
    assert_eq!(vm.engine.read_msr(&vm.msr(), 0x4000_0001), MsrRead::NotMine);
    assert_eq!(vm.engine.write_msr(&vm.msr(), 0x4000_0001, 0), MsrWrite::NotMine);
    assert_eq!(vm.engine.msr_ranges(), vec![(0x4000_0000, 0x4000_0000)]);
}

#[test]
fn protection_failure_is_gp_but_unsupported_is_fine() {
    let vm = Vm::new();
    for (error, answer) in [
        (PlatformError::Unsupported("no need"), MsrWrite::Done),
        (PlatformError::Failed("no slot".into()), MsrWrite::Gp),
    ] {
        let platform = RecordingPlatform::new(1).failing_protect_code(error);
        let ctx = polyvisor_core::MsrContext { vcpu: 0, memory: &vm.mem, platform: &platform };
        assert_eq!(vm.engine.write_msr(&ctx, 0x4000_0000, 0x4000), answer);
    }
}
