//! The cross-personality matrix (vmm/src/selftest/, docs/testing.md) in every mode on real
//! KVM, a deliberately broken personality failing exactly its cells, and `polyvisor selftest`
//! as a user runs it.

mod common;
use common::polyvisor;

use std::sync::{Arc, OnceLock};

use polyvisor_config::HypervisorMode;
use polyvisor_core::{
    CpuidLeaf, Dispatch, DispatchLayer, Gpr, GuestMemoryMmap, Outcome, Platform, VcpuSnapshot,
};
use polyvisor_vmm::selftest::{
    plan, run_matrix, Behaviour, DispatchWrapper, Matrix, SelftestOptions, Verdict,
};
use polyvisor_vmm::{host_check, HostReport};

fn host() -> HostReport {
    static HOST: OnceLock<HostReport> = OnceLock::new();
    HOST.get_or_init(host_check).clone()
}

fn matrix(modes: &[HypervisorMode], wrap: Option<DispatchWrapper>) -> Matrix {
    let options = SelftestOptions {
        modes: modes.to_vec(),
        host: Some(host()),
        wrap,
        ..SelftestOptions::default()
    };
    run_matrix(&options, &mut |_| {}).expect("KVM is here")
}

/// Cells whose ABI has no such call: not applicable on every host.
const ABI_NOT_APPLICABLE: &[(HypervisorMode, Behaviour)] = &[
    (HypervisorMode::Bhyve, Behaviour::Console),
    (HypervisorMode::Bhyve, Behaviour::Yield),
    (HypervisorMode::Bhyve, Behaviour::Shutdown),
    (HypervisorMode::Bhyve, Behaviour::Time),
    (HypervisorMode::Bhyve, Behaviour::Wake),
    (HypervisorMode::Kvm, Behaviour::Console),
    (HypervisorMode::Kvm, Behaviour::Shutdown),
];

/// Whether this host may make a cell not applicable (docs/testing.md).
fn host_may_skip(host: &HostReport, mode: HypervisorMode, b: Behaviour) -> bool {
    let no_cpl3 = plan::cpl3_instruction(host).is_none();
    let no_kvmclock = !host.stable_tsc || host.tsc_khz.is_none();
    (b == Behaviour::Ring && no_cpl3)
        || (mode == HypervisorMode::Kvm
            && no_kvmclock
            && matches!(b, Behaviour::Time | Behaviour::BadPointer | Behaviour::Caller32))
}

fn show(m: &Matrix) -> String {
    let mut s = m.to_string();
    for c in m.cells.iter().filter(|c| c.console.is_some()) {
        s.push_str(&format!(
            "--- {} {} ---\n{}",
            c.mode,
            c.behaviour,
            c.console.as_deref().unwrap_or("")
        ));
    }
    s
}

#[test]
fn every_personality_passes_every_applicable_behaviour() {
    let host = host();
    let m = matrix(&SelftestOptions::default().modes, None);
    assert_eq!(m.cells.len(), 4 * Behaviour::ALL.len());
    assert_eq!(m.failures(), 0, "{}", show(&m));
    for c in &m.cells {
        let key = (c.mode, c.behaviour);
        match &c.verdict {
            Verdict::NotApplicable(why) => assert!(
                ABI_NOT_APPLICABLE.contains(&key) || host_may_skip(&host, c.mode, c.behaviour),
                "{} {} is not applicable: {why}",
                c.mode,
                c.behaviour
            ),
            Verdict::Pass => {
                assert!(!ABI_NOT_APPLICABLE.contains(&key), "{} {}", c.mode, c.behaviour);
                assert!(c.ok_lines >= 1, "{} {}: no ok line", c.mode, c.behaviour);
                assert_eq!(c.trap, Some(host.strategy), "{} {}", c.mode, c.behaviour);
            }
            Verdict::Fail(why) => panic!("{} {}: {why}", c.mode, c.behaviour),
        }
    }
}

/// A personality that answers every call with number 0x7ff0 (the matrix's unknown number)
/// with 0 instead of the ABI's refusal, and shows a wrong CPUID signature: the rest is the
/// real personality.
struct Broken {
    inner: Arc<dyn Dispatch>,
    break_unknown: bool,
    break_identity: bool,
}

impl DispatchLayer for Broken {
    fn inner(&self) -> &dyn Dispatch {
        &*self.inner
    }
    fn layer_hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        let number = vcpu.regs.rax & 0xffff_ffff;
        if self.break_unknown && number == 0x7ff0 {
            return Outcome::ret(Gpr::Rax, 0);
        }
        self.inner.hypercall(vcpu, memory, platform)
    }
    fn layer_cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf> {
        let mut leaves = self.inner.cpuid(vcpu);
        if self.break_identity {
            for l in leaves.iter_mut().filter(|l| l.function == 0x4000_0000) {
                l.ebx ^= 0x20;
            }
        }
        leaves
    }
}

fn failed(m: &Matrix) -> Vec<(HypervisorMode, Behaviour)> {
    m.cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
        .map(|c| (c.mode, c.behaviour))
        .collect()
}

#[test]
fn a_broken_personality_fails_exactly_its_cells() {
    // Xen answers the unknown number with 0: the unknown cells fail (64-bit and 32-bit).
    let wrap: DispatchWrapper = Arc::new(|_, inner| {
        Arc::new(Broken { inner, break_unknown: true, break_identity: false }) as Arc<dyn Dispatch>
    });
    let m = matrix(&[HypervisorMode::Xen], Some(wrap));
    assert_eq!(
        failed(&m),
        [(HypervisorMode::Xen, Behaviour::Unknown), (HypervisorMode::Xen, Behaviour::Caller32)],
        "{}",
        show(&m)
    );
    let unknown = m.cell(HypervisorMode::Xen, Behaviour::Unknown).unwrap();
    let Verdict::Fail(why) = &unknown.verdict else { unreachable!() };
    assert!(why.contains("FAIL an unknown number -> -ENOSYS"), "{why}");
    assert!(m.to_string().contains("unknown       FAIL"), "{m}");

    // KVM shows a wrong signature: every cell that checks the identity fails.
    let wrap: DispatchWrapper = Arc::new(|_, inner| {
        Arc::new(Broken { inner, break_unknown: false, break_identity: true }) as Arc<dyn Dispatch>
    });
    let m = matrix(&[HypervisorMode::Kvm], Some(wrap));
    let want: Vec<_> = [Behaviour::Identity, Behaviour::Caller32]
        .into_iter()
        .filter(|b| !host_may_skip(&host(), HypervisorMode::Kvm, *b))
        .map(|b| (HypervisorMode::Kvm, b))
        .collect();
    assert_eq!(failed(&m), want, "{}", show(&m));
}

#[test]
fn the_hyperv_console_is_its_debug_channel_and_leaves_no_files() {
    let options = SelftestOptions {
        modes: vec![HypervisorMode::Hyperv],
        behaviours: vec![Behaviour::Console],
        host: Some(host()),
        ..SelftestOptions::default()
    };
    let m = run_matrix(&options, &mut |_| {}).expect("KVM is here");
    let cell = m.cell(HypervisorMode::Hyperv, Behaviour::Console).unwrap();
    assert_eq!(cell.verdict, Verdict::Pass, "{}", show(&m));
    assert_eq!(cell.ok_lines, 11, "{}", show(&m));
    let dir = cell.scratch.as_ref().expect("the cell had a scratch folder");
    assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn the_command_prints_the_table_and_its_status() {
    let (code, out, err) = polyvisor(&["selftest", "--mode", "xen"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("polyvisor selftest: trap strategy "), "{out}");
    assert!(out.contains("behaviour     xen"), "{out}");
    assert!(out.contains("console       pass"), "{out}");
    assert!(out.contains("13 cells: 13 pass, 0 fail, 0 not applicable"), "{out}");

    let (code, out, err) =
        polyvisor(&["selftest", "--mode", "bhyve", "--behaviour", "console", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cell = &json["cells"][0];
    assert_eq!(cell["mode"], "bhyve", "{out}");
    assert_eq!(cell["behaviour"], "console", "{out}");
    assert_eq!(cell["verdict"], "not-applicable", "{out}");

    let (code, _, err) = polyvisor(&["selftest", "--behaviour", "teleport"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown behaviour \"teleport\""), "{err}");
}
