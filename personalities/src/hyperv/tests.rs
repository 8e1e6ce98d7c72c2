//! Unit tests of the hyperv personality through the engine: CPUID, MSRs, the codec and every
//! table row.

use std::sync::Arc;

use polyvisor_config::{Config, HypervisorMode, ResetAction};
use polyvisor_core::testing::{memory, snapshot, Effect, RecordingPlatform};
use polyvisor_core::{
    CpuMode, Dispatch, Engine, Exception, ExitReason, Gpr, HypercallInstruction, MsrContext,
    MsrRead, MsrWrite, Next, Outcome, Platform, PlatformError, Registers, VcpuSnapshot,
};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::abi::*;
use super::codec::Control;
use super::{personality, HyperV};
use crate::{BuildError, HostFacts};

pub(super) const HC_PAGE: u64 = 0x10_0000; // beyond RAM: the overlay needs no RAM
pub(super) const IN: u64 = 0x2000;
pub(super) const OUT: u64 = 0x3000;
pub(super) const RAM: usize = 0x10000;
pub(super) const LINUX_OS_ID: u64 = 0x8100 << 48;

/// Every recommendation allowed: the defaults plus the remote TLB flush, as a VMM that
/// implements `Platform::flush_guest_tlb` would configure it.
pub(super) const ALL_RECOMMENDATIONS: u32 = 0xc24;

/// A hyperv VM with hypercalls on, 4 vCPUs and the flush recommendation opted in.
pub(super) fn config(edit: impl FnOnce(&mut Config)) -> Config {
    defaults(|c| {
        c.hyperv.recommendations = Some(ALL_RECOMMENDATIONS);
        edit(c)
    })
}

/// A hyperv VM with hypercalls on, 4 vCPUs, a debug channel (the recording platform's) and
/// every other `[hyperv]` key at its default.
pub(super) fn defaults(edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.hypervisor.mode = HypervisorMode::Hyperv;
    c.hypervisor.hypercalls_enabled = true;
    c.hyperv.debug_output = Some("debug.out".into());
    c.vm.vcpus = 4;
    edit(&mut c);
    c
}

/// A VM: engine, memory and a recording platform (or a bare one without the optional effects).
pub(super) struct Vm {
    pub engine: Engine<HyperV>,
    pub mem: polyvisor_core::GuestMemoryMmap,
    pub platform: RecordingPlatform,
}

impl Vm {
    pub fn new(c: &Config) -> Vm {
        Vm::with_host(c, &HostFacts::nominal())
    }
    pub fn with_host(c: &Config, host: &HostFacts) -> Vm {
        let p = personality(c, host).unwrap();
        Vm {
            engine: Engine::new(p, &c.hypervisor.policy()).unwrap(),
            mem: memory(RAM),
            platform: RecordingPlatform::new(c.vm.vcpus),
        }
    }
    /// The VM on a VMM that provides only the required effects: no TLB flush, debug channel,
    /// XMM access or host timers.
    pub fn bare(mut self) -> Vm {
        self.platform = RecordingPlatform::new(4).bare();
        self
    }
    pub fn rec(&self) -> &RecordingPlatform {
        &self.platform
    }
    pub fn take(&self) -> Vec<Effect> {
        self.rec().take()
    }
    fn ctx(&self, vcpu: u32) -> MsrContext<'_> {
        MsrContext { vcpu, memory: &self.mem, platform: &self.platform }
    }
    pub fn rdmsr(&self, vcpu: u32, msr: u32) -> MsrRead {
        self.engine.read_msr(&self.ctx(vcpu), msr)
    }
    pub fn wrmsr(&self, vcpu: u32, msr: u32, value: u64) -> MsrWrite {
        self.engine.write_msr(&self.ctx(vcpu), msr, value)
    }
    pub fn val(&self, vcpu: u32, msr: u32) -> u64 {
        match self.rdmsr(vcpu, msr) {
            MsrRead::Value(v) => v,
            other => panic!("rdmsr {msr:#x}: {other:?}"),
        }
    }
    /// Linux's order (hv_init.c): reference TSC page, VP_INDEX, GUEST_OS_ID, HYPERCALL.
    pub fn enable(&self) {
        if self.engine.personality().id.has_privilege(HV_MSR_REFERENCE_TSC_AVAILABLE) {
            assert_eq!(self.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 0x4000 | 1), MsrWrite::Done);
        }
        assert_eq!(self.val(0, HV_X64_MSR_VP_INDEX), 0);
        assert_eq!(self.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID), MsrWrite::Done);
        assert_eq!(self.val(0, HV_X64_MSR_HYPERCALL), 0);
        assert_eq!(self.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 1), MsrWrite::Done);
        self.take();
    }
    pub fn call_snap(&self, v: &VcpuSnapshot) -> Outcome {
        self.engine.hypercall(v, &self.mem, &self.platform)
    }
    /// A 64-bit CPL 0 call on vCPU 0.
    pub fn call(&self, control: u64, input: u64, output: u64) -> Outcome {
        self.call_snap(&snap64(control, input, output))
    }
}

pub(super) fn snap64(control: u64, input: u64, output: u64) -> VcpuSnapshot {
    snapshot(Registers {
        rcx: control,
        rdx: input,
        r8: output,
        rax: 0xdead_beef_dead_beef,
        ..Default::default()
    })
}

/// The result value a 64-bit call left in RAX after completing.
pub(super) fn rax(o: &Outcome) -> u64 {
    assert_eq!(o.next, Next::Advance, "{o:?}");
    o.writes.get(Gpr::Rax).unwrap()
}

pub(super) fn st(o: &Outcome) -> u16 {
    (rax(o) & 0xffff) as u16
}

pub(super) fn is_ud(o: &Outcome) -> bool {
    o.next == Next::Inject(Exception::InvalidOpcode) && o.writes.is_empty()
}

fn fast(code: u16) -> u64 {
    u64::from(code) | HV_HYPERCALL_FAST_BIT
}

fn rep(code: u16, count: u64, start: u64) -> u64 {
    u64::from(code) | count << 32 | start << 48
}

fn var(code: u16, qwords: u64) -> u64 {
    u64::from(code) | qwords << 17
}

fn put(vm: &Vm, gpa: u64, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        vm.mem.write_obj(*w, GuestAddress(gpa + 8 * i as u64)).unwrap();
    }
}

const DEFAULT_PRIVILEGES: u64 = HV_MSR_VP_RUNTIME_AVAILABLE
    | HV_MSR_TIME_REF_COUNT_AVAILABLE
    | HV_MSR_HYPERCALL_AVAILABLE
    | HV_MSR_VP_INDEX_AVAILABLE
    | HV_MSR_RESET_AVAILABLE
    | HV_MSR_REFERENCE_TSC_AVAILABLE
    | HV_ACCESS_FREQUENCY_MSRS
    | HV_ENABLE_EXTENDED_HYPERCALLS;
const DEFAULT_FEATURES: u32 = HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE
    | HV_X64_HYPERCALL_MSR_LOCK_AVAILABLE
    | HV_FEATURE_FREQUENCY_MSRS_AVAILABLE;

fn default_vm() -> Vm {
    let vm = Vm::new(&config(|_| {}));
    vm.enable();
    vm
}

/// Every privilege this implementation backs or answers.
pub(super) const ALL_PRIVILEGES: u64 = HV_MSR_VP_RUNTIME_AVAILABLE
    | HV_MSR_TIME_REF_COUNT_AVAILABLE
    | HV_MSR_HYPERCALL_AVAILABLE
    | HV_MSR_VP_INDEX_AVAILABLE
    | HV_MSR_RESET_AVAILABLE
    | HV_MSR_REFERENCE_TSC_AVAILABLE
    | HV_ACCESS_FREQUENCY_MSRS
    | HV_POST_MESSAGES
    | HV_SIGNAL_EVENTS
    | HV_DEBUGGING
    | HV_ENABLE_EXTENDED_HYPERCALLS;

fn everything() -> Config {
    config(|c| {
        c.hyperv.privileges = Some(ALL_PRIVILEGES);
        c.hyperv.features = Some(
            HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE
                | HV_X64_HYPERCALL_MSR_LOCK_AVAILABLE
                | HV_FEATURE_FREQUENCY_MSRS_AVAILABLE
                | HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE
                | HV_FEATURE_EXT_GVA_RANGES_FLUSH
                | HV_X64_GUEST_DEBUGGING_AVAILABLE,
        );
    })
}

// ------------------------------------------------------------------------------------------
// CPUID

#[test]
fn cpuid_default_identity() {
    let vm = Vm::new(&defaults(|_| {}));
    let leaves = vm.engine.cpuid(0);
    let leaf = |f: u32| *leaves.iter().find(|l| l.function == f).unwrap();
    let l0 = leaf(0x4000_0000);
    assert_eq!(&l0.signature_bytes(), b"Microsoft Hv");
    assert_eq!((l0.ebx, l0.ecx, l0.edx), (0x7263_694D, 0x666F_736F, 0x7648_2074));
    // Linux's ms_hyperv_platform(): max leaf within 0x40000005..=0x4000FFFF.
    assert!((0x4000_0005..=0x4000_ffff).contains(&l0.eax));
    assert_eq!(l0.eax, 0x4000_0006);
    assert_eq!(leaf(0x4000_0001).eax, 0x3123_7648);
    assert_eq!((leaf(0x4000_0002).eax, leaf(0x4000_0002).ebx), (0x3839, 0x000A_0000));
    let f = leaf(0x4000_0003);
    // Linux requires AccessHypercallMsrs and AccessVpIndex.
    assert_eq!(f.eax & 0x60, 0x60);
    assert_eq!(u64::from(f.eax) | u64::from(f.ebx) << 32, DEFAULT_PRIVILEGES);
    assert_eq!(f.edx, DEFAULT_FEATURES);
    let r = leaf(0x4000_0004);
    // The remote flush recommendation (bit 2) is opt-in: it needs the VMM's flush.
    assert_eq!(r.eax, (1 << 5) | (1 << 10) | (1 << 11));
    let flush = Vm::new(&config(|_| {}));
    assert_eq!(flush.engine.cpuid(0)[4].eax, ALL_RECOMMENDATIONS);
    assert_eq!(r.ebx, 0xfff);
    assert_eq!(leaf(0x4000_0005).eax, 4, "max VPs = configured vCPUs");
    assert_eq!(leaf(0x4000_0006), polyvisor_core::CpuidLeaf::new(0x4000_0006, 0, 0, 0, 0));
    assert_eq!(leaves.len(), 7);
}

#[test]
fn cpuid_vendor_and_version_are_configurable() {
    let vm = Vm::new(&config(|c| {
        c.hyperv.vendor_id = "polyvisor".into();
        c.hyperv.build = 7;
        c.hyperv.version_major = 6;
        c.hyperv.version_minor = 3;
        c.hyperv.spinlock_retries = 0xffff_ffff;
    }));
    let leaves = vm.engine.cpuid(1);
    assert_eq!(&leaves[0].signature_bytes(), b"polyvisor   ");
    assert_eq!((leaves[2].eax, leaves[2].ebx), (7, 0x0006_0003));
    assert_eq!(leaves[4].ebx, 0xffff_ffff);
}

fn unbacked(c: &Config, host: &HostFacts) -> String {
    match personality(c, host).map(|_| ()) {
        Err(e @ BuildError::Unbacked { .. }) => e.to_string(),
        other => panic!("expected Unbacked, got {other:?}"),
    }
}

#[test]
fn unbacked_masks_are_refused_naming_the_bit() {
    let host = HostFacts::nominal();
    let msg = unbacked(&config(|c| c.hyperv.privileges = Some(0x64)), &host);
    assert!(msg.contains("bit 2 (AccessSynicRegs)") && msg.starts_with("[hyperv]"), "{msg}");
    let msg = unbacked(&config(|c| c.hyperv.privileges = Some(0x60 | 1 << 44)), &host);
    assert!(msg.contains("bit 44 (CpuManagement)"), "{msg}");
    let msg = unbacked(&config(|c| c.hyperv.features = Some(1 << 15)), &host);
    assert!(msg.contains("bit 15 (XMM hypercall output)"), "{msg}");
    let msg = unbacked(&config(|c| c.hyperv.recommendations = Some(1 << 3)), &host);
    assert!(msg.contains("bit 3 (APIC access MSRs)"), "{msg}");
    // The reference TSC page needs a known, stable TSC.
    let unstable = HostFacts { stable_tsc: false, ..host };
    let c = config(|c| c.hyperv.privileges = Some(0x60 | HV_MSR_REFERENCE_TSC_AVAILABLE));
    let msg = unbacked(&c, &unstable);
    assert!(msg.contains("AccessPartitionReferenceTsc") && msg.contains("stable"), "{msg}");
    let unknown = HostFacts { tsc_khz: None, ..host };
    let c = config(|c| c.hyperv.privileges = Some(0x60 | HV_ACCESS_FREQUENCY_MSRS));
    assert!(unbacked(&c, &unknown).contains("AccessFrequencyRegs"));
    let msg = unbacked(&config(|c| c.hyperv.reset = ResetAction::Reset), &host);
    assert!(msg.contains("reset = \"reset\"") && msg.contains("exit"), "{msg}");
    // Debugging and guest debugging need the debug channel's host side.
    let no_channel = |edit: fn(&mut Config)| {
        config(|c| {
            c.hyperv.debug_output = None;
            c.hyperv.debug_input = Some("debug.in".into());
            edit(c);
        })
    };
    let msg = unbacked(&no_channel(|c| c.hyperv.privileges = Some(0x60 | HV_DEBUGGING)), &host);
    assert!(msg.contains("bit 43 (Debugging)") && msg.contains("debug_output"), "{msg}");
    let c = no_channel(|c| c.hyperv.features = Some(HV_X64_GUEST_DEBUGGING_AVAILABLE));
    let msg = unbacked(&c, &host);
    assert!(msg.contains("bit 1 (guest debugging)") && msg.contains("debug_output"), "{msg}");
    assert!(personality(&no_channel(|_| {}), &host).is_ok(), "the defaults need no channel");
    // Through the crate's entry point too.
    let c = config(|c| c.hyperv.privileges = Some(1 << 3));
    assert!(matches!(crate::build(&c, &host).map(|_| ()), Err(BuildError::Unbacked { .. })));
    assert!(crate::build(&config(|_| {}), &host).is_ok());
}

#[test]
fn unknown_or_unstable_tsc_hides_what_depends_on_it() {
    for host in [
        HostFacts { stable_tsc: false, ..HostFacts::nominal() },
        HostFacts { tsc_khz: None, ..HostFacts::nominal() },
        HostFacts { tsc_khz: Some(9_000), ..HostFacts::nominal() },
    ] {
        let vm = Vm::with_host(&config(|_| {}), &host);
        let f = vm.engine.cpuid(0)[3];
        assert_eq!(u64::from(f.eax) & HV_MSR_REFERENCE_TSC_AVAILABLE, 0, "{host:?}");
        assert_eq!(vm.rdmsr(0, HV_X64_MSR_REFERENCE_TSC), MsrRead::Gp);
        if host.tsc_khz.is_none() {
            assert_eq!(u64::from(f.eax) & HV_ACCESS_FREQUENCY_MSRS, 0);
            assert_eq!(f.edx & HV_FEATURE_FREQUENCY_MSRS_AVAILABLE, 0);
            assert_eq!(vm.rdmsr(0, HV_X64_MSR_TSC_FREQUENCY), MsrRead::Gp);
        }
    }
}

// ------------------------------------------------------------------------------------------
// MSRs

#[test]
fn hypercall_page_needs_a_guest_os_id_then_overlays() {
    let vm = Vm::new(&config(|_| {}));
    // Enable before an OS id: accepted, but the enable bit stays 0 and nothing is mapped.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 1), MsrWrite::Done);
    assert_eq!(vm.val(0, HV_X64_MSR_HYPERCALL), HC_PAGE);
    assert!(vm.take().is_empty());
    assert!(is_ud(&vm.call(0x8001, 0, OUT)), "no page, no hypercalls");
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID), MsrWrite::Done);
    assert_eq!(vm.val(1, HV_X64_MSR_GUEST_OS_ID), LINUX_OS_ID, "partition-wide");
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 1), MsrWrite::Done);
    assert_eq!(vm.val(2, HV_X64_MSR_HYPERCALL), HC_PAGE | 1);
    let effects = vm.take();
    let [Effect::Overlay(0, Some((gpa, page)))] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(*gpa, HC_PAGE);
    assert_eq!(page.len(), 4096);
    assert_eq!(&page[..4], &[0x0f, 0x01, 0xc1, 0xc3], "vmcall; ret");
    assert!(page[4..].iter().all(|b| *b == 0xcc));
    assert_eq!(st(&vm.call(0x8001, 0, OUT)), HV_STATUS_SUCCESS);
    // Rewriting the same page does not remap it.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 1), MsrWrite::Done);
    assert!(vm.take().is_empty());
    // Moving it: the old overlay goes (RAM comes back), then the new one appears.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, 0x5000 | 1), MsrWrite::Done);
    let effects = vm.take();
    assert_eq!(effects.len(), 2);
    assert_eq!(effects[0], Effect::Overlay(0, None));
    assert!(matches!(&effects[1], Effect::Overlay(0, Some((0x5000, _)))));
    // Disabling removes it.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, 0x5000), MsrWrite::Done);
    assert_eq!(vm.take(), vec![Effect::Overlay(0, None)]);
    assert!(is_ud(&vm.call(0x8001, 0, OUT)));
}

#[test]
fn amd_hosts_get_vmmcall_in_the_page() {
    let host = HostFacts { instruction: HypercallInstruction::Vmmcall, ..HostFacts::nominal() };
    let vm = Vm::with_host(&config(|_| {}), &host);
    vm.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, 1);
    vm.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 1);
    let Effect::Overlay(_, Some((_, page))) = &vm.take()[0] else { panic!() };
    assert_eq!(&page[..4], &[0x0f, 0x01, 0xd9, 0xc3]);
}

#[test]
fn zeroing_the_guest_os_id_disables_the_page() {
    let vm = default_vm();
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, 0), MsrWrite::Done);
    assert_eq!(vm.take(), vec![Effect::Overlay(0, None)]);
    assert_eq!(vm.val(0, HV_X64_MSR_HYPERCALL), HC_PAGE);
    assert!(is_ud(&vm.call(0x8001, 0, OUT)));
}

#[test]
fn hypercall_msr_lock_reserved_bits_and_bounds() {
    let vm = default_vm();
    for bad in [HC_PAGE | 1 | 1 << 2, HC_PAGE | 1 | 0x800, 1 << 52 | 1, u64::MAX] {
        assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, bad), MsrWrite::Gp, "{bad:#x}");
    }
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 3), MsrWrite::Done);
    assert_eq!(vm.val(0, HV_X64_MSR_HYPERCALL), HC_PAGE | 3);
    // Locked: no more writes, not even the same value.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, 0x5000 | 1), MsrWrite::Gp);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 3), MsrWrite::Gp);
    assert_eq!(vm.val(0, HV_X64_MSR_HYPERCALL), HC_PAGE | 3);
    // Without HypercallMsrLockAvailable the locked bit is reserved.
    let vm = Vm::new(&config(|c| c.hyperv.features = Some(0)));
    vm.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, 1);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, HC_PAGE | 3), MsrWrite::Gp);
}

#[test]
fn failing_overlay_is_a_gp() {
    let vm = Vm::new(&config(|_| {}));
    let p = RecordingPlatform::new(4).failing_overlays(PlatformError::Unsupported("overlays"));
    let ctx = MsrContext { vcpu: 0, memory: &vm.mem, platform: &p };
    assert_eq!(vm.engine.write_msr(&ctx, HV_X64_MSR_GUEST_OS_ID, 1), MsrWrite::Done);
    assert_eq!(vm.engine.write_msr(&ctx, HV_X64_MSR_HYPERCALL, HC_PAGE | 1), MsrWrite::Gp);
    assert_eq!(vm.engine.read_msr(&ctx, HV_X64_MSR_HYPERCALL), MsrRead::Value(0));
}

#[test]
fn msr_gating_follows_the_advertised_bits() {
    // Each MSR, its gate, and whether writes are allowed.
    let cases: &[(u32, u64, u32, bool)] = &[
        (HV_X64_MSR_GUEST_OS_ID, HV_MSR_HYPERCALL_AVAILABLE, 0, true),
        (HV_X64_MSR_HYPERCALL, HV_MSR_HYPERCALL_AVAILABLE, 0, true),
        (HV_X64_MSR_VP_INDEX, HV_MSR_VP_INDEX_AVAILABLE, 0, false),
        (HV_X64_MSR_RESET, HV_MSR_RESET_AVAILABLE, 0, true),
        (HV_X64_MSR_VP_RUNTIME, HV_MSR_VP_RUNTIME_AVAILABLE, 0, false),
        (HV_X64_MSR_TIME_REF_COUNT, HV_MSR_TIME_REF_COUNT_AVAILABLE, 0, false),
        (HV_X64_MSR_REFERENCE_TSC, HV_MSR_REFERENCE_TSC_AVAILABLE, 0, true),
        (HV_X64_MSR_TSC_FREQUENCY, HV_ACCESS_FREQUENCY_MSRS, 0, false),
        (HV_X64_MSR_APIC_FREQUENCY, HV_ACCESS_FREQUENCY_MSRS, 0, false),
        (HV_X64_MSR_CRASH_P0, 0, HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE, true),
        (HV_X64_MSR_CRASH_P4, 0, HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE, true),
        (HV_X64_MSR_CRASH_CTL, 0, HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE, true),
    ];
    for &(msr, privilege, feature, writable) in cases {
        // Off: #GP both ways.
        let off = Vm::new(&config(|c| {
            c.hyperv.privileges = Some(DEFAULT_PRIVILEGES & !privilege);
            c.hyperv.features = Some(DEFAULT_FEATURES & !feature);
        }));
        if privilege != 0 || feature != 0 {
            assert_eq!(off.rdmsr(0, msr), MsrRead::Gp, "read {msr:#x} off");
            assert_eq!(off.wrmsr(0, msr, 0), MsrWrite::Gp, "write {msr:#x} off");
        }
        // On: readable; writable only where the TLFS says so.
        let on = Vm::new(&config(|_| {}));
        assert!(matches!(on.rdmsr(0, msr), MsrRead::Value(_)), "read {msr:#x} on");
        let w = on.wrmsr(0, msr, 0);
        if writable {
            assert_eq!(w, MsrWrite::Done, "write {msr:#x} on");
        } else {
            assert_eq!(w, MsrWrite::Gp, "read-only {msr:#x}");
        }
    }
    // Unadvertised MSRs of the range: SynIC, STIMER, APIC access, VP assist, syndbg.
    let vm = Vm::new(&config(|_| {}));
    for msr in [0x4000_0070, 0x4000_0073, 0x4000_0080, 0x4000_0090, 0x4000_00b0, 0x4000_00f1] {
        assert_eq!(vm.rdmsr(0, msr), MsrRead::Gp, "{msr:#x}");
        assert_eq!(vm.wrmsr(0, msr, 0), MsrWrite::Gp, "{msr:#x}");
    }
    assert_eq!(vm.engine.msr_ranges(), vec![(0x4000_0000, 0x4000_0118)]);
}

#[test]
fn vp_index_is_the_vcpu_index() {
    let vm = Vm::new(&config(|_| {}));
    for v in 0..4 {
        assert_eq!(vm.val(v, HV_X64_MSR_VP_INDEX), u64::from(v));
    }
    assert_eq!(vm.rdmsr(4, HV_X64_MSR_VP_INDEX), MsrRead::Gp, "beyond the configured vCPUs");
    assert_eq!(vm.rdmsr(4, HV_X64_MSR_VP_RUNTIME), MsrRead::Gp);
    assert_eq!(vm.wrmsr(1, HV_X64_MSR_VP_INDEX, 1), MsrWrite::Gp);
}

#[test]
fn time_ref_count_and_vp_runtime_count_100ns_from_zero() {
    let vm = Vm::new(&config(|c| {
        c.hyperv.privileges = Some(0x63 | HV_ACCESS_FREQUENCY_MSRS);
    }));
    assert_eq!(vm.val(0, HV_X64_MSR_TIME_REF_COUNT), 0, "0 at partition start");
    vm.rec().now_ns.store(12_345, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(vm.val(0, HV_X64_MSR_TIME_REF_COUNT), 123);
    assert_eq!(vm.val(2, HV_X64_MSR_VP_RUNTIME), 123);
    // A clock that steps back is not followed.
    vm.rec().now_ns.store(5_000, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(vm.val(0, HV_X64_MSR_TIME_REF_COUNT), 123);
    assert_eq!(vm.val(2, HV_X64_MSR_VP_RUNTIME), 123);
    assert_eq!(vm.val(1, HV_X64_MSR_VP_RUNTIME), 50, "per VP");
    assert_eq!(vm.val(0, HV_X64_MSR_TSC_FREQUENCY), 1_000_000_000);
    assert_eq!(vm.val(0, HV_X64_MSR_APIC_FREQUENCY), 1_000_000_000);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_TIME_REF_COUNT, 1), MsrWrite::Gp);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_VP_RUNTIME, 1), MsrWrite::Gp);
}

fn read_tsc_page(vm: &Vm, gpa: u64) -> (u32, u64, u64) {
    let seq: u32 = vm.mem.read_obj(GuestAddress(gpa)).unwrap();
    let scale: u64 = vm.mem.read_obj(GuestAddress(gpa + 8)).unwrap();
    let offset: u64 = vm.mem.read_obj(GuestAddress(gpa + 16)).unwrap();
    (seq, scale, offset)
}

fn page_time(vm: &Vm, gpa: u64) -> u64 {
    let (_, scale, offset) = read_tsc_page(vm, gpa);
    super::msr::tsc_to_ref(vm.rec().guest_tsc(), scale).wrapping_add(offset)
}

#[test]
fn reference_tsc_page_agrees_with_time_ref_count() {
    use std::sync::atomic::Ordering::Relaxed;
    let vm = Vm::new(&config(|_| {}));
    vm.rec().now_ns.store(7_000_000, Relaxed);
    assert_eq!(vm.val(0, HV_X64_MSR_TIME_REF_COUNT), 70_000);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 0x4000 | 1), MsrWrite::Done);
    assert_eq!(vm.val(1, HV_X64_MSR_REFERENCE_TSC), 0x4000 | 1);
    let (seq, scale, _) = read_tsc_page(&vm, 0x4000);
    assert_eq!(seq, 1);
    // 1 GHz: 2^64 * 10^7 / 10^9.
    assert_eq!(scale, ((1u128 << 64) / 100) as u64);
    for now in [7_000_000u64, 7_000_100, 9_999_999, 123_456_789_000] {
        vm.rec().now_ns.store(now, Relaxed);
        let msr = vm.val(0, HV_X64_MSR_TIME_REF_COUNT);
        let page = page_time(&vm, 0x4000);
        assert!(msr.abs_diff(page) <= 10, "within 1 us: msr {msr} page {page}");
        assert!(msr.abs_diff(now / 100) <= 10);
    }
    // Re-publishing gets a new sequence; disabling falls back to the clock, monotonic.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 0x5000 | 1), MsrWrite::Done);
    assert_eq!(read_tsc_page(&vm, 0x5000).0, 2);
    let before = vm.val(0, HV_X64_MSR_TIME_REF_COUNT);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 0x5000), MsrWrite::Done);
    assert!(vm.val(0, HV_X64_MSR_TIME_REF_COUNT) >= before);
    // Reserved bits, a page outside RAM, or beyond the GPA space: #GP.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 0x4000 | 3), MsrWrite::Gp);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 0x20_0000 | 1), MsrWrite::Gp);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 1 << 60 | 1), MsrWrite::Gp);
}

#[test]
fn tsc_scale_bounds() {
    assert_eq!(super::msr::tsc_scale(0), None);
    assert_eq!(super::msr::tsc_scale(10_000), None, "10 MHz overflows the scale");
    assert_eq!(super::msr::tsc_scale(10_001).map(|s| s > 0), Some(true));
    assert_eq!(super::msr::tsc_scale(1_000_000), Some(((1u128 << 64) / 100) as u64));
}

#[test]
fn reset_and_crash_msrs_end_the_vm() {
    let vm = Vm::new(&config(|_| {}));
    assert_eq!(vm.val(0, HV_X64_MSR_RESET), 0);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_RESET, 0), MsrWrite::Done);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_RESET, 2), MsrWrite::Done);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_RESET, 1), MsrWrite::Exit(ExitReason::Reboot));
    assert_eq!(vm.val(0, HV_X64_MSR_CRASH_CTL), HV_CRASH_CTL_CRASH_NOTIFY);
    for i in 0..5 {
        assert_eq!(vm.wrmsr(0, HV_X64_MSR_CRASH_P0 + i, 0x1000 + u64::from(i)), MsrWrite::Done);
        assert_eq!(vm.val(1, HV_X64_MSR_CRASH_P0 + i), 0x1000 + u64::from(i));
    }
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_CRASH_CTL, 0), MsrWrite::Done);
    let MsrWrite::Exit(ExitReason::Crash(text)) =
        vm.wrmsr(0, HV_X64_MSR_CRASH_CTL, HV_CRASH_CTL_CRASH_NOTIFY)
    else {
        panic!()
    };
    assert!(text.contains("P0=0x1000") && text.contains("P4=0x1004"), "{text}");
}

// ------------------------------------------------------------------------------------------
// Refusals and the input value

#[test]
fn disabled_unknown_denied_and_wrong_mode() {
    // Engine switch off: #UD even with the page enabled.
    let off = Vm::new(&config(|c| c.hypervisor.hypercalls_enabled = false));
    off.enable();
    assert!(is_ud(&off.call(0x8001, 0, OUT)));
    let vm = default_vm();
    assert_eq!(st(&vm.call(0xbeef, 0, 0)), HV_STATUS_INVALID_HYPERCALL_CODE);
    assert_eq!(st(&vm.call(0x0001, 0, 0)), HV_STATUS_INVALID_HYPERCALL_CODE);
    // Code validity comes before the reserved-bit check.
    assert_eq!(st(&vm.call(0xbeef | 1 << 63, 0, 0)), HV_STATUS_INVALID_HYPERCALL_CODE);
    let denied = Vm::new(&config(|c| {
        c.hypervisor.deny = vec![polyvisor_config::Selector(polyvisor_core::CallSelector::Name(
            "HvExtCallQueryCapabilities".into(),
        ))]
    }));
    denied.enable();
    assert_eq!(st(&denied.call(0x8001, 0, OUT)), HV_STATUS_ACCESS_DENIED);
    for (cpl, mode) in
        [(3, CpuMode::Long64), (1, CpuMode::Long64), (3, CpuMode::Protected32), (0, CpuMode::Real)]
    {
        let mut v = snap64(0x8001, 0, OUT);
        v.cpl = cpl;
        v.mode = mode;
        assert!(is_ud(&vm.call_snap(&v)), "cpl {cpl} {mode}");
        let mut unknown = v;
        unknown.regs.rcx = 0xbeef;
        assert!(is_ud(&vm.call_snap(&unknown)), "unknown code at cpl {cpl} {mode}");
    }
}

#[test]
fn reserved_bits_rep_and_header_checks() {
    let vm = default_vm();
    let ext = u64::from(HV_EXT_CALL_QUERY_CAPABILITIES);
    for bit in (27..32).chain(44..48).chain(60..64) {
        assert_eq!(
            st(&vm.call(ext | 1 << bit, 0, OUT)),
            HV_STATUS_INVALID_HYPERCALL_INPUT,
            "bit {bit}"
        );
    }
    // A rep count or start on a simple call.
    assert_eq!(st(&vm.call(ext | 1 << 32, 0, OUT)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    assert_eq!(st(&vm.call(ext | 1 << 48, 0, OUT)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    // A variable header where none is taken.
    assert_eq!(st(&vm.call(ext | 1 << 17, 0, OUT)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    let ipi = var(HVCALL_SEND_IPI, 1);
    assert_eq!(st(&vm.call(ipi, IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    // A rep call without a rep count, or with the start index not below the count.
    let list = HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST;
    assert_eq!(st(&vm.call(rep(list, 0, 0), IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    assert_eq!(st(&vm.call(rep(list, 2, 2), IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    assert_eq!(st(&vm.call(rep(list, 2, 5), IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    // The privilege gate comes before the reserved bits (KVM's order).
    let vm = Vm::new(&config(|c| c.hyperv.privileges = Some(0x60)));
    vm.enable();
    assert_eq!(st(&vm.call(ext | 1 << 63, 0, OUT)), HV_STATUS_ACCESS_DENIED);
}

#[test]
fn bad_gpas_are_invalid_alignment() {
    let vm = default_vm();
    let ext = u64::from(HV_EXT_CALL_QUERY_CAPABILITIES);
    for out in [OUT + 4, OUT + 0xffc, RAM as u64, u64::MAX - 7, 0x1_0000_0000] {
        assert_eq!(st(&vm.call(ext, 0, out)), HV_STATUS_INVALID_ALIGNMENT, "{out:#x}");
    }
    let flush = u64::from(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE);
    // 24 bytes starting 16 bytes before the page end cross the page.
    for input in [IN + 1, IN + 0xff0, RAM as u64 - 8, !7] {
        assert_eq!(st(&vm.call(flush, input, 0)), HV_STATUS_INVALID_ALIGNMENT, "{input:#x}");
    }
    assert!(vm.take().is_empty());
    // The same block one qword earlier fits.
    assert_eq!(st(&vm.call(flush, IN + 0xfe8, 0)), HV_STATUS_SUCCESS);
}

#[test]
fn thirty_two_bit_convention() {
    let vm = default_vm();
    vm.mem.write_obj(0xffu64, GuestAddress(OUT)).unwrap();
    // EDX:EAX input value, EBX:ECX input GPA, EDI:ESI output GPA; upper halves ignored.
    let mut v = snapshot(Registers {
        rax: 0xffff_ffff_0000_8001,
        rdx: 0xaaaa_aaaa_0000_0000,
        rbx: 0xbbbb_bbbb_0000_0000,
        rcx: 0xcccc_cccc_0000_0000 | IN,
        rdi: 0xdddd_dddd_0000_0000,
        rsi: 0xeeee_eeee_0000_0000 | OUT,
        ..Default::default()
    });
    v.mode = CpuMode::Protected32;
    let o = vm.call_snap(&v);
    assert_eq!(o.next, Next::Advance);
    assert_eq!(o.writes.get(Gpr::Rax), Some(0));
    assert_eq!(o.writes.get(Gpr::Rdx), Some(0));
    assert_eq!(vm.mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), 0);
    // The result's high half (reps completed) lands in EDX.
    v.regs.rax = 0xbeef;
    let o = vm.call_snap(&v);
    assert_eq!(o.writes.get(Gpr::Rax), Some(u64::from(HV_STATUS_INVALID_HYPERCALL_CODE)));
    assert_eq!(o.writes.get(Gpr::Rdx), Some(0));
    // A high GPA half in EBX/EDI is part of the address: out of memory.
    v.regs.rax = 0x8001;
    v.regs.rdi = 1;
    assert_eq!(vm.call_snap(&v).writes.get(Gpr::Rax), Some(u64::from(HV_STATUS_INVALID_ALIGNMENT)));
    // Reserved bits in EDX (input value bits 63:60).
    v.regs.rdi = 0;
    v.regs.rdx = 0xf000_0000;
    assert_eq!(
        vm.call_snap(&v).writes.get(Gpr::Rax),
        Some(u64::from(HV_STATUS_INVALID_HYPERCALL_INPUT))
    );
    // Fast IPI: EBX:ECX vector, EDI:ESI mask.
    let mut ipi = snapshot(Registers {
        rax: fast(HVCALL_SEND_IPI),
        rcx: 0x41,
        rsi: 0b10,
        ..Default::default()
    });
    ipi.mode = CpuMode::Protected32;
    assert_eq!(vm.call_snap(&ipi).writes.get(Gpr::Rax), Some(0));
    assert_eq!(vm.take(), vec![Effect::Interrupt(1, 0x41)]);
}

// ------------------------------------------------------------------------------------------
// Calls

#[test]
fn notify_long_spin_wait_yields() {
    let vm = default_vm();
    let mut v = snap64(fast(HVCALL_NOTIFY_LONG_SPIN_WAIT), 10, 0);
    v.vcpu = 2;
    assert_eq!(st(&vm.call_snap(&v)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::Yield(2, None)]);
    assert_eq!(
        st(&vm.call(u64::from(HVCALL_NOTIFY_LONG_SPIN_WAIT), 0x7, 0)),
        HV_STATUS_SUCCESS,
        "advisory: the slow form's input is not read"
    );
    for retries in [0, u32::MAX] {
        let vm = Vm::new(&config(|c| c.hyperv.spinlock_retries = retries));
        vm.enable();
        assert_eq!(st(&vm.call(fast(HVCALL_NOTIFY_LONG_SPIN_WAIT), 1, 0)), 6);
        assert!(vm.take().is_empty());
    }
}

#[test]
fn flush_space_targets_and_flags() {
    let vm = default_vm();
    let space = u64::from(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE);
    put(&vm, IN, &[0x1000, 0, 0b1010]);
    assert_eq!(st(&vm.call(space, IN, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::FlushTlb(1), Effect::FlushTlb(3)]);
    // Bits for VPs that do not exist are ignored.
    put(&vm, IN, &[0, HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY, 1 << 40 | 1]);
    assert_eq!(st(&vm.call(space, IN, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::FlushTlb(0)]);
    // ALL_PROCESSORS, or a zero mask (KVM's Windows Server 2012 workaround): everyone.
    for (flags, mask) in [(HV_FLUSH_ALL_PROCESSORS, 0b1), (0, 0)] {
        put(&vm, IN, &[0, flags, mask]);
        assert_eq!(st(&vm.call(space, IN, 0)), HV_STATUS_SUCCESS);
        assert_eq!(vm.take().len(), 4);
    }
    // Reserved flags, and the extended range format which only the List forms take.
    for flags in [1 << 4, HV_FLUSH_USE_EXTENDED_RANGE_FORMAT, 1 << 63] {
        put(&vm, IN, &[0, flags, 1]);
        assert_eq!(st(&vm.call(space, IN, 0)), HV_STATUS_INVALID_PARAMETER);
    }
    assert!(vm.take().is_empty());
    // A VMM that cannot flush: never a false success.
    let bare = Vm::new(&config(|_| {})).bare();
    bare.enable();
    put(&bare, IN, &[0, 0, 1]);
    assert_eq!(st(&bare.call(space, IN, 0)), HV_STATUS_OPERATION_DENIED);
}

#[test]
fn flush_list_reps_and_continuation() {
    let vm = default_vm();
    let list = HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST;
    put(&vm, IN, &[0, 0, 0b1]);
    // 3 reps, all at once: reps completed = count.
    let o = vm.call(rep(list, 3, 0), IN, 0);
    assert_eq!(rax(&o), 3 << 32);
    assert_eq!(vm.take(), vec![Effect::FlushTlb(0)]);
    // NON_GLOBAL_MAPPINGS_ONLY is invalid for the List form; the extended format needs its
    // feature bit.
    for flags in [HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY, HV_FLUSH_USE_EXTENDED_RANGE_FORMAT] {
        put(&vm, IN, &[0, flags, 1]);
        assert_eq!(st(&vm.call(rep(list, 1, 0), IN, 0)), HV_STATUS_INVALID_PARAMETER);
    }
    let ext = Vm::new(&everything());
    ext.enable();
    put(&ext, IN, &[0, HV_FLUSH_USE_EXTENDED_RANGE_FORMAT, 1]);
    assert_eq!(rax(&ext.call(rep(list, 1, 0), IN, 0)), 1 << 32);
    // 500 reps (24 + 4000 bytes fit the page): 256 now, the rest on re-execution.
    put(&vm, IN, &[0, 0, 0b11]);
    let control = rep(list, 500, 0);
    let o = vm.call(control, IN, 0);
    assert_eq!(o.next, Next::Retry);
    assert_eq!(o.writes.get(Gpr::Rcx), Some(rep(list, 500, 256)));
    assert_eq!(o.writes.get(Gpr::Rax), Some(256 << 32));
    assert_eq!(vm.take(), vec![Effect::FlushTlb(0), Effect::FlushTlb(1)]);
    let o = vm.call(rep(list, 500, 256), IN, 0);
    assert_eq!(rax(&o), 500 << 32, "reps completed is the total");
    assert_eq!(vm.take().len(), 2);
    // 510 reps do not fit the page.
    assert_eq!(st(&vm.call(rep(list, 510, 0), IN, 0)), HV_STATUS_INVALID_ALIGNMENT);
    // The 32-bit form updates EDX:EAX with the new start index and leaves RIP alone.
    let mut v = snapshot(Registers {
        rax: control & 0xffff_ffff,
        rdx: control >> 32,
        rcx: IN,
        ..Default::default()
    });
    v.mode = CpuMode::Protected32;
    let o = vm.call_snap(&v);
    assert_eq!(o.next, Next::Retry);
    assert_eq!(o.writes.get(Gpr::Rdx), Some(rep(list, 500, 256) >> 32));
    assert_eq!(o.writes.get(Gpr::Rax), Some(control & 0xffff_ffff));
    // A failing flush reports the reps completed before it.
    let bare = Vm::new(&config(|_| {})).bare();
    bare.enable();
    put(&bare, IN, &[0, 0, 1]);
    let o = bare.call(rep(list, 300, 256), IN, 0);
    assert_eq!(rax(&o), u64::from(HV_STATUS_OPERATION_DENIED) | 256 << 32);
}

#[test]
fn flush_ex_processor_sets() {
    let vm = default_vm();
    let space_ex = HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX;
    // Sparse, bank 0 only: VPs 2 and 3.
    put(&vm, IN, &[0, 0, HV_GENERIC_SET_SPARSE_4K, 0b1, 0b1100]);
    assert_eq!(st(&vm.call(var(space_ex, 1), IN, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::FlushTlb(2), Effect::FlushTlb(3)]);
    // Banks 1 and 3 name no VP of this VM.
    put(&vm, IN, &[0, 0, HV_GENERIC_SET_SPARSE_4K, 0b1010, u64::MAX, u64::MAX]);
    assert_eq!(st(&vm.call(var(space_ex, 2), IN, 0)), HV_STATUS_SUCCESS);
    assert!(vm.take().is_empty());
    // The header size must count the banks exactly.
    for qwords in [0, 1, 3] {
        assert_eq!(
            st(&vm.call(var(space_ex, qwords), IN, 0)),
            HV_STATUS_INVALID_HYPERCALL_INPUT,
            "{qwords}"
        );
    }
    // All VPs; an unknown format.
    put(&vm, IN, &[0, 0, HV_GENERIC_SET_ALL, 0]);
    assert_eq!(st(&vm.call(var(space_ex, 0), IN, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take().len(), 4);
    put(&vm, IN, &[0, 0, 2, 0]);
    assert_eq!(st(&vm.call(var(space_ex, 0), IN, 0)), HV_STATUS_INVALID_PARAMETER);
    // ListEx: reps after the variable header.
    let list_ex = HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX;
    put(&vm, IN, &[0, 0, HV_GENERIC_SET_SPARSE_4K, 1, 0b1, 0x1000, 0x2000]);
    let o = vm.call(rep(list_ex, 2, 0) | 1 << 17, IN, 0);
    assert_eq!(rax(&o), 2 << 32);
    assert_eq!(vm.take(), vec![Effect::FlushTlb(0)]);
}

#[test]
fn xmm_fast_flush_needs_the_feature_and_the_vmm() {
    let vm = default_vm();
    let space = fast(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE);
    assert!(is_ud(&vm.call(space, 0, 0)), "XMM input not advertised");
    let vm = Vm::new(&everything());
    vm.enable();
    assert_eq!(st(&vm.call(space, 0, 0)), HV_STATUS_OPERATION_DENIED, "VMM cannot read XMM");
    // XMM0 low quadword: the processor mask.
    *vm.rec().xmm.lock().unwrap() = Some([0b100 | (7u128 << 64), 0, 0, 0, 0, 0]);
    assert_eq!(st(&vm.call(space, 0x1000, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::FlushTlb(2)]);
    // Ex: XMM0 = {format, valid banks}, XMM1 low = bank 0.
    let ex = fast(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX) | 1 << 17;
    *vm.rec().xmm.lock().unwrap() = Some([1u128 << 64, 0b11, 0, 0, 0, 0]);
    assert_eq!(st(&vm.call(ex, 0, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::FlushTlb(0), Effect::FlushTlb(1)]);
    // List: GVAs follow in the XMM halves; more than fit is an input error.
    let list = fast(HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST);
    *vm.rec().xmm.lock().unwrap() = Some([1, 0, 0, 0, 0, 0]);
    assert_eq!(rax(&vm.call(list | 11 << 32, 0, 0)), 11 << 32);
    assert_eq!(st(&vm.call(list | 12 << 32, 0, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
}

#[test]
fn send_ipi_plain_and_ex() {
    let vm = default_vm();
    let ipi = u64::from(HVCALL_SEND_IPI);
    // Fast: RDX = vector (and TargetVtl), R8 = mask.
    assert_eq!(st(&vm.call(fast(HVCALL_SEND_IPI), 0xef, 0b1001)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::Interrupt(0, 0xef), Effect::Interrupt(3, 0xef)]);
    // Padding is ignored; a target VTL other than 0 or a vector outside 0x10..=0xFF is not.
    assert_eq!(st(&vm.call(fast(HVCALL_SEND_IPI), 0xff00_0000_0030, 1)), 0);
    assert_eq!(vm.take(), vec![Effect::Interrupt(0, 0x30)]);
    for rdx in [0x0f, 0x100, 0, 0x1_0000_0030] {
        assert_eq!(
            st(&vm.call(fast(HVCALL_SEND_IPI), rdx, 1)),
            HV_STATUS_INVALID_HYPERCALL_INPUT,
            "{rdx:#x}"
        );
    }
    // Slow: {vector, vtl, padding, mask}; VPs beyond the VM are ignored.
    put(&vm, IN, &[0x40, 1 << 1 | 1 << 63]);
    assert_eq!(st(&vm.call(ipi, IN, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::Interrupt(1, 0x40)]);
    assert_eq!(st(&vm.call(ipi, IN + 4, 0)), HV_STATUS_INVALID_ALIGNMENT);
    // Ex: {vector, vtl, padding, HV_VP_SET}.
    let ex = HVCALL_SEND_IPI_EX;
    put(&vm, IN, &[0x50, HV_GENERIC_SET_SPARSE_4K, 1, 0b110]);
    assert_eq!(st(&vm.call(var(ex, 1), IN, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::Interrupt(1, 0x50), Effect::Interrupt(2, 0x50)]);
    put(&vm, IN, &[0x50, HV_GENERIC_SET_ALL, 0]);
    assert_eq!(st(&vm.call(var(ex, 0), IN, 0)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take().len(), 4);
    put(&vm, IN, &[0x5, HV_GENERIC_SET_ALL, 0]);
    assert_eq!(st(&vm.call(var(ex, 0), IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    put(&vm, IN, &[0x50, 7, 0]);
    assert_eq!(st(&vm.call(var(ex, 0), IN, 0)), HV_STATUS_INVALID_PARAMETER);
    put(&vm, IN, &[0x50, 0, 0b11, 1, 1]);
    assert_eq!(st(&vm.call(var(ex, 1), IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    // Ex fast passes the set in XMM registers: #UD without XMM input.
    assert!(is_ud(&vm.call(fast(ex), 0x50, HV_GENERIC_SET_ALL)));
    assert!(vm.take().is_empty());
}

#[test]
fn post_message_and_signal_event_without_synic() {
    let vm = default_vm();
    assert_eq!(st(&vm.call(u64::from(HVCALL_POST_MESSAGE), IN, 0)), 6);
    assert_eq!(st(&vm.call(fast(HVCALL_SIGNAL_EVENT), 1, 0)), 6);
    let vm = Vm::new(&everything());
    vm.enable();
    let post = u64::from(HVCALL_POST_MESSAGE);
    let signal = u64::from(HVCALL_SIGNAL_EVENT);
    assert_eq!(st(&vm.call(post, IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    assert_eq!(st(&vm.call(signal, IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
    assert_eq!(st(&vm.call(fast(HVCALL_SIGNAL_EVENT), 1, 0)), 3);
    assert_eq!(st(&vm.call(post, IN + 0xf08, 0)), HV_STATUS_INVALID_ALIGNMENT);
    assert_eq!(st(&vm.call(signal, IN + 2, 0)), HV_STATUS_INVALID_ALIGNMENT);
    assert_eq!(st(&vm.call(post | 1 << 32, IN, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT);
}

#[test]
fn ext_query_capabilities() {
    let vm = default_vm();
    let ext = u64::from(HV_EXT_CALL_QUERY_CAPABILITIES);
    vm.mem.write_obj(u64::MAX, GuestAddress(OUT)).unwrap();
    assert_eq!(rax(&vm.call(ext, 0, OUT)), 0);
    assert_eq!(vm.mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), 0);
    assert_eq!(st(&vm.call(fast(HV_EXT_CALL_QUERY_CAPABILITIES), 0, 0)), 5);
    let off = Vm::new(&config(|c| c.hyperv.privileges = Some(0x63)));
    off.enable();
    assert_eq!(st(&off.call(ext, 0, OUT)), HV_STATUS_ACCESS_DENIED);
}

#[test]
fn debug_channel() {
    let vm = Vm::new(&everything());
    vm.enable();
    let post = u64::from(HVCALL_POST_DEBUG_DATA);
    vm.mem.write_obj(5u32, GuestAddress(IN)).unwrap();
    vm.mem.write_slice(b"hello", GuestAddress(IN + 8)).unwrap();
    vm.mem.write_obj(0xffff_ffffu32, GuestAddress(OUT)).unwrap();
    assert_eq!(st(&vm.call(post, IN, OUT)), HV_STATUS_SUCCESS);
    assert_eq!(vm.take(), vec![Effect::DebugPost(0, b"hello".to_vec())]);
    assert_eq!(vm.mem.read_obj::<u32>(GuestAddress(OUT)).unwrap(), 0, "nothing pending");
    // Too much data, data crossing the page, overlapping blocks, the fast form.
    vm.mem.write_obj(4089u32, GuestAddress(IN)).unwrap();
    assert_eq!(st(&vm.call(post, IN, OUT)), HV_STATUS_INVALID_PARAMETER);
    vm.mem.write_obj(8u32, GuestAddress(IN + 0xff8)).unwrap();
    assert_eq!(st(&vm.call(post, IN + 0xff8, OUT)), HV_STATUS_INVALID_ALIGNMENT);
    vm.mem.write_obj(8u32, GuestAddress(IN)).unwrap();
    assert_eq!(st(&vm.call(post, IN, IN + 8)), HV_STATUS_INVALID_PARAMETER);
    assert_eq!(st(&vm.call(fast(HVCALL_POST_DEBUG_DATA), IN, OUT)), 5);
    // Retrieve: nothing waiting, then bytes.
    let retrieve = u64::from(HVCALL_RETRIEVE_DEBUG_DATA);
    put(&vm, IN, &[16, 0]);
    assert_eq!(st(&vm.call(retrieve, IN, OUT)), HV_STATUS_NO_DATA);
    assert_eq!(vm.mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), 16 << 32);
    vm.rec().debug_input.lock().unwrap().extend_from_slice(b"go");
    assert_eq!(st(&vm.call(retrieve, IN, OUT)), HV_STATUS_SUCCESS);
    assert_eq!(vm.mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), 2 | 14 << 32);
    let mut got = [0u8; 2];
    vm.mem.read_slice(&mut got, GuestAddress(OUT + 8)).unwrap();
    assert_eq!(&got, b"go");
    put(&vm, IN, &[4096, 0]);
    assert_eq!(st(&vm.call(retrieve, IN, OUT)), HV_STATUS_INVALID_PARAMETER);
    // Reset: zero connection info.
    let reset = u64::from(HVCALL_RESET_DEBUG_SESSION);
    put(&vm, OUT, &[u64::MAX; 3]);
    assert_eq!(st(&vm.call(reset, 0, OUT)), HV_STATUS_SUCCESS);
    assert_eq!(vm.mem.read_obj::<[u64; 3]>(GuestAddress(OUT)).unwrap(), [0; 3]);
    // No channel in the VMM.
    let bare = Vm::new(&everything()).bare();
    bare.enable();
    put(&bare, IN, &[1, 0]);
    assert_eq!(st(&bare.call(post, IN, OUT)), HV_STATUS_OPERATION_DENIED);
    assert_eq!(st(&bare.call(retrieve, IN, OUT)), HV_STATUS_OPERATION_DENIED);
    assert_eq!(st(&bare.call(reset, 0, OUT)), HV_STATUS_OPERATION_DENIED);
    // Without the Debugging privilege.
    let vm = default_vm();
    assert_eq!(st(&vm.call(post, IN, OUT)), HV_STATUS_ACCESS_DENIED);
}

#[test]
fn linux_init_order_then_calls_succeed() {
    let vm = Vm::new(&config(|_| {}));
    // 1. reference TSC page, before the guest OS id.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_REFERENCE_TSC, 0x4000 | 1), MsrWrite::Done);
    assert_eq!(read_tsc_page(&vm, 0x4000).0, 1);
    // 2. per CPU: VP_INDEX.
    for v in 0..4 {
        assert_eq!(vm.val(v, HV_X64_MSR_VP_INDEX), u64::from(v));
    }
    // 3. guest OS id; 4. read then write HYPERCALL.
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID | 6 << 16), MsrWrite::Done);
    let hc = vm.val(0, HV_X64_MSR_HYPERCALL);
    assert_eq!(vm.wrmsr(0, HV_X64_MSR_HYPERCALL, hc | HC_PAGE | 1), MsrWrite::Done);
    let effects = vm.take();
    assert!(matches!(&effects[..], [Effect::Overlay(0, Some((HC_PAGE, _)))]));
    // Calls now work from any vCPU.
    let mut v = snap64(fast(HVCALL_SEND_IPI), 0x31, 0b1);
    v.vcpu = 3;
    assert_eq!(st(&vm.call_snap(&v)), HV_STATUS_SUCCESS);
    put(&vm, IN, &[0, HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES, 0b10]);
    assert_eq!(st(&vm.call(u64::from(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE), IN, 0)), 0);
    assert_eq!(vm.take(), vec![Effect::Interrupt(0, 0x31), Effect::FlushTlb(1)]);
}

#[test]
fn rows_and_counters() {
    let vm = default_vm();
    let rows = vm.engine.rows();
    assert_eq!(rows.len(), 13);
    assert!(rows.iter().all(|r| r.rings == "0" && r.implemented && r.permitted));
    assert!(rows.iter().any(|r| r.name == "HvCallNotifyLongSpinWait" && r.number == 8));
    vm.call(0x8001, 0, OUT);
    let row = vm.engine.rows().into_iter().find(|r| r.number == 0x8001).unwrap();
    assert_eq!(row.counters.calls, 1);
    assert_eq!(vm.engine.mode(), polyvisor_core::HypervisorMode::Hyperv);
}

// ------------------------------------------------------------------------------------------
// Codec properties

proptest! {
    #[test]
    fn control_fields_round_trip(code: u16, fast_bit: bool, hdr in 0u64..1024, count in 0u64..4096, start in 0u64..4096) {
        let raw = u64::from(code) | u64::from(fast_bit) << 16 | hdr << 17 | count << 32 | start << 48;
        let c = Control(raw);
        prop_assert_eq!(c.code(), code);
        prop_assert_eq!(c.fast(), fast_bit);
        prop_assert_eq!(u64::from(c.var_header()), hdr);
        prop_assert_eq!(u64::from(c.rep_count()), count);
        prop_assert_eq!(u64::from(c.rep_start()), start);
        prop_assert!(!c.reserved());
        let moved = c.with_rep_start(7);
        prop_assert_eq!(moved.rep_start(), 7);
        prop_assert_eq!(moved.0 & !super::abi::HV_HYPERCALL_REP_START_MASK, raw & !super::abi::HV_HYPERCALL_REP_START_MASK);
    }

    #[test]
    fn thirty_two_bit_decoding_matches_sixty_four(control: u64, input: u64, output: u64, junk: u32) {
        let wide = snap64(control, input, output);
        let mut narrow = snapshot(Registers {
            rax: u64::from(junk) << 32 | (control & 0xffff_ffff),
            rdx: control >> 32,
            rbx: input >> 32,
            rcx: u64::from(junk) << 32 | (input & 0xffff_ffff),
            rdi: output >> 32,
            rsi: output & 0xffff_ffff,
            ..Default::default()
        });
        narrow.mode = CpuMode::Protected32;
        prop_assert_eq!(super::codec::read_input(&wide), super::codec::read_input(&narrow));
    }

    #[test]
    fn any_registers_any_memory_never_panic(control: u64, input: u64, output: u64, words in proptest::collection::vec(any::<u64>(), 8), code in prop::sample::select(vec![2u64, 3, 8, 0xb, 0x13, 0x14, 0x15, 0x5c, 0x5d, 0x69, 0x6a, 0x6b, 0x8001])) {
        let vm = Vm::new(&everything());
        vm.enable();
        *vm.rec().xmm.lock().unwrap() = Some([u128::MAX; 6]);
        put(&vm, IN, &words);
        put(&vm, IN + 0xfc0, &words);
        let control = (control & !0xffff) | code;
        for (n, (i, o)) in [(input, output), (IN, OUT), (IN + 0xfc0, OUT + (input & 0xff8))].into_iter().enumerate() {
            let mut v = snap64(control, i, o);
            if n == 2 {
                // The same registers as a 32-bit caller.
                v.mode = CpuMode::Protected32;
                v.regs.rax = control & 0xffff_ffff;
                v.regs.rdx = control >> 32;
                v.regs.rcx = i & 0xffff_ffff;
                v.regs.rsi = o & 0xffff_ffff;
            }
            let out = vm.call_snap(&v);
            let finished = matches!(out.next, Next::Advance | Next::Retry | Next::Inject(Exception::InvalidOpcode));
            prop_assert!(finished, "{:?}", out);
        }
    }
}

#[test]
fn engine_is_shareable() {
    let vm = default_vm();
    let shared: Arc<dyn Dispatch> = Arc::new(vm.engine);
    assert_eq!(shared.cpuid(0).len(), 7);
}

#[test]
fn the_documented_example_config_builds() {
    let doc = include_str!("../../../docs/config.md");
    let section = doc.find("## `[hyperv]`").unwrap();
    let start = section + doc[section..].find("```toml\n").unwrap() + 8;
    let len = doc[start..].find("```").unwrap();
    let c = Config::parse(&doc[start..start + len], "docs/config.md").unwrap();
    let vm = Vm::new(&c);
    let f = vm.engine.cpuid(0)[3];
    assert_eq!((f.eax, f.ebx, f.edx), (0x62, 0, 0));
    assert_eq!(vm.engine.cpuid(0)[4].ebx, u32::MAX);
    // The default recommendations the page states.
    let d = Vm::new(&defaults(|_| {}));
    assert_eq!(d.engine.cpuid(0)[4].eax, 0xc20);
    // The debug channel example: the defaults plus Debugging, with a host side.
    let next = start + len + 3;
    let start2 = next + doc[next..].find("```toml\n").unwrap() + 8;
    let len2 = doc[start2..].find("```").unwrap();
    let c = Config::parse(&doc[start2..start2 + len2], "docs/config.md").unwrap();
    assert!(c.hyperv.debug_output.is_some() && c.hyperv.debug_input.is_some());
    let vm = Vm::new(&c);
    let f = vm.engine.cpuid(0)[3];
    let privileges = u64::from(f.eax) | u64::from(f.ebx) << 32;
    assert_eq!(privileges, DEFAULT_PRIVILEGES | HV_DEBUGGING);
}

#[test]
fn every_refusal_kind_has_its_answer() {
    use polyvisor_core::{Personality, Refusal};
    let vm = default_vm();
    let p = vm.engine.personality();
    let v = snap64(0, 0, 0);
    assert!(is_ud(&p.refuse(&v, Refusal::Disabled)));
    assert!(is_ud(&p.refuse(&v, Refusal::WrongRing { number: 2, cpl: 3 })));
    for r in [Refusal::Unknown { number: 9 }, Refusal::Unimplemented { number: 9 }] {
        assert_eq!(st(&p.refuse(&v, r)), HV_STATUS_INVALID_HYPERCALL_CODE);
    }
    assert_eq!(st(&p.refuse(&v, Refusal::Denied { number: 2 })), HV_STATUS_ACCESS_DENIED);
    // 32-bit callers get the status in EDX:EAX.
    let mut v32 = v;
    v32.mode = CpuMode::Protected32;
    let o = p.refuse(&v32, Refusal::Denied { number: 2 });
    assert_eq!(o.writes.get(Gpr::Rax), Some(6));
    assert_eq!(o.writes.get(Gpr::Rdx), Some(0));
    assert_eq!(p.instruction(), HypercallInstruction::Vmcall);
    assert_eq!(p.identity().max_vcpus, 4);
}

#[test]
fn polyvisor_cpuid_explains_the_leaves() {
    let vm = default_vm();
    let text = vm
        .engine
        .cpuid(0)
        .iter()
        .flat_map(|l| vm.engine.explain_cpuid(l))
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "vendor \"Microsoft Hv\", highest leaf 0x40000006",
        "interface \"Hv#1\"",
        "version 10.0",
        "EAX bit  5 AccessHypercallMsrs",
        "EAX bit  6 AccessVpIndex",
        "EAX bit 10 SyntheticClusterIpi",
        "spinlock retries before HvCallNotifyLongSpinWait: 4095",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
}
