//! Engine-level tests of the kvm personality: build and feature choice, CPUID, every table
//! row and refusal, 32-bit callers, bad guest pointers, multi-vCPU effects and kvmclock.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use polyvisor_config::{Config, HypervisorMode, KvmFeature, Selector};
use polyvisor_core::testing::{memory, snapshot, Effect, RecordingPlatform};
use polyvisor_core::{
    CallSelector, CpuMode, Dispatch, Engine, Gpr, GuestMemoryMmap, MsrContext, MsrRead, MsrWrite,
    Next, Outcome, Platform, PlatformError, Registers,
};
use vm_memory::{Bytes, GuestAddress};

use super::abi::*;
use super::pvclock::{PvclockVcpuTimeInfo, PvclockWallClock};
use super::*;
use crate::BuildError;

// ------------------------------------------------------------------------ helpers

fn config(features: Option<Vec<KvmFeature>>) -> Config {
    let mut c = Config::default();
    c.hypervisor.mode = HypervisorMode::Kvm;
    c.hypervisor.hypercalls_enabled = true;
    c.vm.vcpus = 4;
    c.kvm.features = features;
    c
}

fn engine_with(c: &Config, host: &HostFacts) -> Arc<Engine<KvmPersonality>> {
    build_engine(c, host).unwrap()
}

/// Every backed feature, hypercalls on, 4 vCPUs, a nominal host.
fn engine() -> Arc<Engine<KvmPersonality>> {
    engine_with(&config(None), &HostFacts::nominal())
}

fn unbacked(c: &Config, host: &HostFacts) -> String {
    match build_engine(c, host) {
        Err(BuildError::Unbacked { section, message }) => {
            assert_eq!(section, "kvm");
            message
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

struct Vm {
    mem: GuestMemoryMmap,
    platform: RecordingPlatform,
}

impl Vm {
    fn new(vcpus: u32) -> Self {
        Vm { mem: memory(0x10_0000), platform: RecordingPlatform::new(vcpus) }
    }
}

/// One hypercall: RAX = number, RBX RCX RDX RSI = args, on `vcpu` at `cpl` in `mode`.
#[allow(clippy::too_many_arguments)]
fn hc_full(
    e: &Engine<KvmPersonality>,
    vm: &Vm,
    vcpu: u32,
    cpl: u8,
    mode: CpuMode,
    nr: u64,
    args: [u64; 4],
) -> Outcome {
    let mut v = snapshot(Registers {
        rax: nr,
        rbx: args[0],
        rcx: args[1],
        rdx: args[2],
        rsi: args[3],
        rdi: 0xdead,
        ..Default::default()
    });
    v.vcpu = vcpu;
    v.cpl = cpl;
    v.mode = mode;
    e.hypercall(&v, &vm.mem, &vm.platform)
}

/// A 64-bit CPL 0 call on vCPU 0; returns RAX.
fn hc(e: &Engine<KvmPersonality>, vm: &Vm, nr: u64, args: [u64; 4]) -> u64 {
    rax(&hc_full(e, vm, 0, 0, CpuMode::Long64, nr, args))
}

fn rax(o: &Outcome) -> u64 {
    assert_eq!(o.next, Next::Advance, "KVM always completes the instruction");
    assert_eq!(o.writes.iter().count(), 1, "only RAX changes: {o:?}");
    o.writes.get(Gpr::Rax).unwrap()
}

fn err(code: u64) -> u64 {
    negated(code)
}

fn err32(code: u64) -> u64 {
    negated(code) & 0xffff_ffff
}

fn feature_bits(fs: &[KvmFeature]) -> u32 {
    fs.iter().fold(0, |b, f| b | 1 << f.bit())
}

// ------------------------------------------------------------ build and features

const DEFAULT_FEATURES: &[KvmFeature] = &[
    KvmFeature::Clocksource,
    KvmFeature::NopIoDelay,
    KvmFeature::Clocksource2,
    KvmFeature::PvUnhalt,
    KvmFeature::PvSendIpi,
    KvmFeature::PollControl,
    KvmFeature::PvSchedYield,
    KvmFeature::HcMapGpaRange,
    KvmFeature::ClocksourceStableBit,
];

#[test]
fn cpuid_signature_and_default_features() {
    let e = engine();
    let leaves = e.cpuid(0);
    assert_eq!(leaves.len(), 2);
    let sig = leaves[0];
    assert_eq!(sig.function, 0x4000_0000);
    assert_eq!(sig.eax, 0x4000_0001, "highest leaf");
    assert_eq!(
        (sig.ebx, sig.ecx, sig.edx),
        (0x4b4d_564b, 0x564b_4d56, 0x4d),
        "KVMKVMKVM\\0\\0\\0 as cpuid.rst spells it"
    );
    let f = leaves[1];
    assert_eq!(f.function, 0x4000_0001);
    assert_eq!(f.eax, feature_bits(DEFAULT_FEATURES));
    assert_eq!(f.eax, 0x0101_388b);
    assert_eq!((f.ebx, f.ecx, f.edx), (0, 0, 0));
    assert_eq!(e.cpuid(3), leaves, "every vCPU sees the same leaves");
}

#[test]
fn cpuid_is_explained_bit_by_bit() {
    let mut c = config(None);
    c.kvm.hints_realtime = true;
    let e = engine_with(&c, &HostFacts::nominal());
    let leaves = e.cpuid(0);
    let sig = e.explain_cpuid(&leaves[0]).join("\n");
    assert!(sig.contains("KVMKVMKVM") && sig.contains("0x40000001"), "{sig}");
    let lines = e.explain_cpuid(&leaves[1]);
    assert_eq!(lines.len(), DEFAULT_FEATURES.len() + 1, "{lines:#?}");
    assert!(lines[2].contains("bit  3 KVM_FEATURE_CLOCKSOURCE2: kvmclock"), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("KVM_FEATURE_PV_SEND_IPI: KVM_HC_SEND_IPI")));
    assert!(lines.iter().any(|l| l.contains("bit 24 KVM_FEATURE_CLOCKSOURCE_STABLE_BIT")));
    assert!(lines.last().unwrap().contains("KVM_HINTS_REALTIME"));
    let none = engine_with(&config(Some(vec![])), &HostFacts::nominal());
    assert_eq!(none.explain_cpuid(&none.cpuid(0)[1]), vec!["EAX = 0: no paravirtual features"]);
}

#[test]
fn hints_realtime_sets_edx_bit_0() {
    let mut c = config(None);
    c.kvm.hints_realtime = true;
    let e = engine_with(&c, &HostFacts::nominal());
    assert_eq!(e.cpuid(0)[1].edx, 1);
}

#[test]
fn configured_features_are_exactly_advertised() {
    let want = [KvmFeature::PvSendIpi, KvmFeature::NopIoDelay];
    let e = engine_with(&config(Some(want.to_vec())), &HostFacts::nominal());
    assert_eq!(e.cpuid(0)[1].eax, feature_bits(&want));
    assert_eq!(
        e.personality().features().iter().collect::<Vec<_>>(),
        vec![KvmFeature::NopIoDelay, KvmFeature::PvSendIpi]
    );
    let e = engine_with(&config(Some(vec![])), &HostFacts::nominal());
    assert_eq!(e.cpuid(0)[1].eax, 0);
}

#[test]
fn kvmclock_needs_a_known_stable_tsc() {
    let clock =
        [KvmFeature::Clocksource, KvmFeature::Clocksource2, KvmFeature::ClocksourceStableBit];
    let no_khz = HostFacts { tsc_khz: None, ..HostFacts::nominal() };
    let zero_khz = HostFacts { tsc_khz: Some(0), ..HostFacts::nominal() };
    let unstable = HostFacts { stable_tsc: false, ..HostFacts::nominal() };
    for (host, why) in [
        (no_khz, "does not report it"),
        (zero_khz, "does not report it"),
        (unstable, "not constant"),
    ] {
        // By default the clock bits are simply left out ...
        let e = engine_with(&config(None), &host);
        let eax = e.cpuid(0)[1].eax;
        assert_eq!(eax & feature_bits(&clock), 0, "{why}");
        assert_eq!(eax, feature_bits(DEFAULT_FEATURES) & !feature_bits(&clock));
        // ... and asking for one is refused, naming it and why.
        for f in clock {
            let message = unbacked(&config(Some(vec![f, KvmFeature::PvUnhalt])), &host);
            assert!(message.contains(&f.to_string()), "{message}");
            assert!(message.contains(why), "{message}");
            assert!(!message.contains("pv_unhalt"), "{message}");
        }
    }
}

#[test]
fn unbacked_features_are_refused_with_their_reason() {
    for (f, why) in [
        (KvmFeature::AsyncPf, "page-fault"),
        (KvmFeature::AsyncPfVmexit, "page-fault"),
        (KvmFeature::AsyncPfInt, "page-fault"),
        (KvmFeature::StealTime, "run-delay"),
        (KvmFeature::PvEoi, "EOI"),
        (KvmFeature::PvTlbFlush, "steal time"),
        (KvmFeature::MsiExtDestId, "extended destination ID"),
        (KvmFeature::MigrationControl, "migrat"),
    ] {
        let message = unbacked(&config(Some(vec![f])), &HostFacts::nominal());
        assert!(message.contains(&format!("{f}: ")), "{message}");
        assert!(message.contains(why), "{f}: {message}");
        let err = build(&config(Some(vec![f])), &HostFacts::nominal()).err().unwrap().to_string();
        assert!(err.starts_with("[kvm] "), "{err}");
    }
    // Several at once are all named.
    let message = unbacked(
        &config(Some(vec![KvmFeature::StealTime, KvmFeature::PvEoi])),
        &HostFacts::nominal(),
    );
    assert!(message.contains("steal_time") && message.contains("pv_eoi"));
}

#[test]
fn hypercall_features_follow_the_policy() {
    let calls = [
        KvmFeature::PvUnhalt,
        KvmFeature::PvSendIpi,
        KvmFeature::PvSchedYield,
        KvmFeature::HcMapGpaRange,
    ];
    // Hypercalls off: the bits that need them are not offered, and asking is refused.
    let mut off = config(None);
    off.hypervisor.hypercalls_enabled = false;
    let e = engine_with(&off, &HostFacts::nominal());
    assert_eq!(e.cpuid(0)[1].eax & feature_bits(&calls), 0);
    assert_ne!(e.cpuid(0)[1].eax & 1 << 3, 0, "kvmclock needs no hypercall");
    for f in calls {
        off.kvm.features = Some(vec![f]);
        let message = unbacked(&off, &HostFacts::nominal());
        assert!(message.contains("hypercalls_enabled is false"), "{message}");
    }
    // A denied call takes its feature with it.
    let mut deny = config(None);
    deny.hypervisor.deny = vec![Selector(CallSelector::Name("KVM_HC_SEND_IPI".into()))];
    let e = engine_with(&deny, &HostFacts::nominal());
    assert_eq!(e.cpuid(0)[1].eax & 1 << 11, 0);
    assert_ne!(e.cpuid(0)[1].eax & 1 << 7, 0);
    deny.kvm.features = Some(vec![KvmFeature::PvSendIpi]);
    let message = unbacked(&deny, &HostFacts::nominal());
    assert!(message.contains("KVM_HC_SEND_IPI") && message.contains("allow/deny"));
    // So does an allow list without it.
    let mut allow = config(None);
    allow.hypervisor.allow = Some(vec![Selector(CallSelector::Number(KVM_HC_KICK_CPU))]);
    let e = engine_with(&allow, &HostFacts::nominal());
    assert_eq!(e.cpuid(0)[1].eax & feature_bits(&calls), feature_bits(&[KvmFeature::PvUnhalt]));
}

#[test]
fn policy_naming_an_unknown_call_is_refused() {
    let mut c = config(None);
    c.hypervisor.deny = vec![Selector(CallSelector::Name("KVM_HC_WARP".into()))];
    let e = build_engine(&c, &HostFacts::nominal()).err().unwrap();
    assert!(matches!(e, BuildError::Policy(_)));
    assert!(e.to_string().contains("KVM_HC_SEND_IPI"), "{e}");
}

#[test]
fn build_through_the_crate_entry_point() {
    let d = crate::build(&config(None), &HostFacts::nominal()).unwrap();
    assert_eq!(d.mode(), HypervisorMode::Kvm);
}

#[test]
fn table_rows_are_kernel_only_and_named_as_the_header() {
    let rows = engine().rows();
    let names: Vec<(u64, &str, bool)> =
        rows.iter().map(|r| (r.number, r.name, r.implemented)).collect();
    assert_eq!(
        names,
        vec![
            (1, "KVM_HC_VAPIC_POLL_IRQ", true),
            (2, "KVM_HC_MMU_OP", false),
            (3, "KVM_HC_FEATURES", false),
            (4, "KVM_HC_PPC_MAP_MAGIC_PAGE", false),
            (5, "KVM_HC_KICK_CPU", true),
            (6, "KVM_HC_MIPS_GET_CLOCK_FREQ", false),
            (7, "KVM_HC_MIPS_EXIT_VM", false),
            (8, "KVM_HC_MIPS_CONSOLE_OUTPUT", false),
            (9, "KVM_HC_CLOCK_PAIRING", true),
            (10, "KVM_HC_SEND_IPI", true),
            (11, "KVM_HC_SCHED_YIELD", true),
            (12, "KVM_HC_MAP_GPA_RANGE", true),
        ]
    );
    assert!(rows.iter().all(|r| r.rings == "0" && r.permitted));
}

// ----------------------------------------------------------------------- refusals

#[test]
fn disabled_hypercalls_answer_as_unknown_ones() {
    let mut c = config(Some(vec![]));
    c.hypervisor.hypercalls_enabled = false;
    let e = engine_with(&c, &HostFacts::nominal());
    let vm = Vm::new(4);
    for nr in [KVM_HC_VAPIC_POLL_IRQ, KVM_HC_KICK_CPU, 999] {
        assert_eq!(hc(&e, &vm, nr, [0; 4]), err(KVM_ENOSYS));
        // KVM checks CPL before the number.
        let o = hc_full(&e, &vm, 0, 3, CpuMode::Long64, nr, [0; 4]);
        assert_eq!(rax(&o), err(KVM_EPERM));
    }
    assert!(vm.platform.take().is_empty());
    assert_eq!(e.refusals().snapshot(), (6, 0, 0));
}

#[test]
fn unknown_and_other_architecture_numbers() {
    let e = engine();
    let vm = Vm::new(4);
    for nr in [0, 2, 3, 4, 6, 7, 8, 13, 1000, u64::MAX] {
        assert_eq!(hc(&e, &vm, nr, [0; 4]), err(KVM_ENOSYS), "nr {nr}");
        let o = hc_full(&e, &vm, 0, 3, CpuMode::Long64, nr, [0; 4]);
        assert_eq!(rax(&o), err(KVM_EPERM), "nr {nr} from ring 3");
    }
}

#[test]
fn user_mode_callers_get_eperm_for_every_row() {
    let e = engine();
    let vm = Vm::new(4);
    for row in e.rows() {
        for cpl in [1, 2, 3] {
            let o = hc_full(&e, &vm, 0, cpl, CpuMode::Long64, row.number, [0; 4]);
            assert_eq!(rax(&o), err(KVM_EPERM), "{} at CPL {cpl}", row.name);
            let o = hc_full(&e, &vm, 0, cpl, CpuMode::Protected32, row.number, [0; 4]);
            assert_eq!(rax(&o), err32(KVM_EPERM), "{} at CPL {cpl}", row.name);
        }
    }
    assert!(vm.platform.take().is_empty(), "no effect reached");
    // Real mode has no rings.
    let o = hc_full(&e, &vm, 0, 3, CpuMode::Real, KVM_HC_VAPIC_POLL_IRQ, [0; 4]);
    assert_eq!(rax(&o), 0);
}

#[test]
fn denied_calls_get_eperm() {
    let mut c = config(Some(vec![KvmFeature::NopIoDelay]));
    c.hypervisor.deny = vec![
        Selector(CallSelector::Name("kvm_hc_vapic_poll_irq".into())),
        Selector(CallSelector::Number(KVM_HC_CLOCK_PAIRING)),
    ];
    let e = engine_with(&c, &HostFacts::nominal());
    let vm = Vm::new(4);
    assert_eq!(hc(&e, &vm, KVM_HC_VAPIC_POLL_IRQ, [0; 4]), err(KVM_EPERM));
    assert_eq!(hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [0x1000, 0, 0, 0]), err(KVM_EPERM));
    assert_eq!(vm.mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0);
    assert_eq!(e.rows()[0].counters.denied, 1);
}

#[test]
fn calls_without_their_feature_bit_are_unknown() {
    let e = engine_with(&config(Some(vec![])), &HostFacts::nominal());
    let vm = Vm::new(4);
    for (nr, args) in [
        (KVM_HC_KICK_CPU, [0, 1, 0, 0]),
        (KVM_HC_SEND_IPI, [1, 0, 0, 0x20]),
        (KVM_HC_SCHED_YIELD, [1, 0, 0, 0]),
        (KVM_HC_MAP_GPA_RANGE, [0, 1, 0, 0]),
    ] {
        assert_eq!(hc(&e, &vm, nr, args), err(KVM_ENOSYS), "nr {nr}");
    }
    assert!(vm.platform.take().is_empty());
    // No feature bit gates these two.
    assert_eq!(hc(&e, &vm, KVM_HC_VAPIC_POLL_IRQ, [0; 4]), 0);
    assert_eq!(hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [0x1000, 0, 0, 0]), 0);
}

// ------------------------------------------------------------------ the codec

#[test]
fn thirty_two_bit_callers_have_32_bit_numbers_and_results() {
    let e = engine();
    let vm = Vm::new(4);
    // The high half of RAX is ignored outside 64-bit mode: this is VAPIC_POLL_IRQ.
    let nr = 0xffff_ffff_0000_0001;
    assert_eq!(hc(&e, &vm, nr, [0; 4]), err(KVM_ENOSYS));
    for mode in [CpuMode::Protected32, CpuMode::Real] {
        assert_eq!(rax(&hc_full(&e, &vm, 0, 0, mode, nr, [0; 4])), 0);
        // Errors come back as 32-bit negative numbers.
        assert_eq!(rax(&hc_full(&e, &vm, 0, 0, mode, 77, [0; 4])), 0xffff_fc18, "-KVM_ENOSYS");
    }
}

// --------------------------------------------------------------- VAPIC_POLL_IRQ

#[test]
fn vapic_poll_irq_returns_zero() {
    let e = engine();
    let vm = Vm::new(4);
    assert_eq!(hc(&e, &vm, KVM_HC_VAPIC_POLL_IRQ, [9, 9, 9, 9]), 0);
    assert!(vm.platform.take().is_empty());
    assert_eq!(e.rows()[0].counters.calls, 1);
}

// --------------------------------------------------------------------- KICK_CPU

#[test]
fn kick_cpu_wakes_the_target_and_yields_to_it() {
    let e = engine();
    let vm = Vm::new(4);
    let o = hc_full(&e, &vm, 1, 0, CpuMode::Long64, KVM_HC_KICK_CPU, [0, 2, 0, 0]);
    assert_eq!(rax(&o), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Wake(2), Effect::Yield(1, Some(2))]);
    // a0 (flags) is reserved and ignored.
    assert_eq!(hc(&e, &vm, KVM_HC_KICK_CPU, [u64::MAX, 3, 0, 0]), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Wake(3), Effect::Yield(0, Some(3))]);
}

#[test]
fn kick_cpu_edge_targets() {
    let e = engine();
    let vm = Vm::new(4);
    // Unknown APIC id: nothing happens, and still 0 (kvm_pv_kick_cpu_op has no error).
    assert_eq!(hc(&e, &vm, KVM_HC_KICK_CPU, [0, 4, 0, 0]), 0);
    assert_eq!(hc(&e, &vm, KVM_HC_KICK_CPU, [0, u64::MAX, 0, 0]), 0);
    assert!(vm.platform.take().is_empty());
    // Kicking oneself latches the wake-up but yields to no one.
    assert_eq!(hc(&e, &vm, KVM_HC_KICK_CPU, [0, 0, 0, 0]), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Wake(0)]);
    // The kick takes a1 as an int (low 32 bits), the yield as unsigned long.
    assert_eq!(hc(&e, &vm, KVM_HC_KICK_CPU, [0, 0x1_0000_0002, 0, 0]), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Wake(2)]);
    // A 32-bit caller's a1 is truncated before anything else.
    let o = hc_full(&e, &vm, 0, 0, CpuMode::Protected32, KVM_HC_KICK_CPU, [0, 0x1_0000_0002, 0, 0]);
    assert_eq!(rax(&o), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Wake(2), Effect::Yield(0, Some(2))]);
}

// ---------------------------------------------------------------------- SEND_IPI

const FIXED: u64 = APIC_DM_FIXED;

#[test]
fn send_ipi_delivers_the_vector_to_every_addressed_vcpu() {
    let e = engine();
    let vm = Vm::new(4);
    let o = hc_full(&e, &vm, 0, 0, CpuMode::Long64, KVM_HC_SEND_IPI, [0b1110, 0, 0, FIXED | 0xf3]);
    assert_eq!(rax(&o), 3);
    assert_eq!(
        vm.platform.take(),
        vec![Effect::Interrupt(1, 0xf3), Effect::Interrupt(2, 0xf3), Effect::Interrupt(3, 0xf3)]
    );
    // From the lowest id a2, including the sender itself; absent ids are skipped.
    assert_eq!(hc(&e, &vm, KVM_HC_SEND_IPI, [0b1111, 0, 2, 0x40]), 2);
    assert_eq!(vm.platform.take(), vec![Effect::Interrupt(2, 0x40), Effect::Interrupt(3, 0x40)]);
    // Nobody addressed, or a2 beyond every APIC id.
    assert_eq!(hc(&e, &vm, KVM_HC_SEND_IPI, [0, 0, 0, 0x40]), 0);
    assert_eq!(hc(&e, &vm, KVM_HC_SEND_IPI, [u64::MAX, u64::MAX, 1000, 0x40]), 0);
    assert!(vm.platform.take().is_empty());
}

#[test]
fn send_ipi_cluster_is_64_in_long_mode_and_32_otherwise() {
    let e = engine();
    // A platform with enough APIC ids to see both words.
    let vm = Vm::new(100);
    let args = [0xffff_ffff_0000_0001, 0b101, 0, 0x30];
    let o = hc_full(&e, &vm, 0, 0, CpuMode::Long64, KVM_HC_SEND_IPI, args);
    assert_eq!(rax(&o), 32 + 1 + 2);
    let effects = vm.platform.take();
    assert_eq!(effects[0], Effect::Interrupt(0, 0x30));
    assert_eq!(effects[1], Effect::Interrupt(32, 0x30));
    assert_eq!(effects[32], Effect::Interrupt(63, 0x30));
    assert_eq!(&effects[33..], &[Effect::Interrupt(64, 0x30), Effect::Interrupt(66, 0x30)]);
    // 32-bit: each word holds 32 ids (the high half is truncated away) and a1 starts at 32.
    let o = hc_full(&e, &vm, 0, 0, CpuMode::Protected32, KVM_HC_SEND_IPI, args);
    assert_eq!(rax(&o), 3);
    assert_eq!(
        vm.platform.take(),
        vec![Effect::Interrupt(0, 0x30), Effect::Interrupt(32, 0x30), Effect::Interrupt(34, 0x30)]
    );
    // a2 too is truncated for a 32-bit caller.
    let o = hc_full(
        &e,
        &vm,
        0,
        0,
        CpuMode::Protected32,
        KVM_HC_SEND_IPI,
        [1, 0, 0xffff_ffff_0000_0005, 0x30],
    );
    assert_eq!(rax(&o), 1);
    assert_eq!(vm.platform.take(), vec![Effect::Interrupt(5, 0x30)]);
}

#[test]
fn send_ipi_lowest_id_is_a_u32_that_wraps_as_in_kvm() {
    let e = engine();
    let vm = Vm::new(100);
    // KVM's `u32 min` drops a2's high half even in 64-bit mode ...
    assert_eq!(hc(&e, &vm, KVM_HC_SEND_IPI, [1, 0, 0x7_0000_0009, 0x30]), 1);
    assert_eq!(vm.platform.take(), vec![Effect::Interrupt(9, 0x30)]);
    // ... and `min += cluster_size` wraps: 0xfffffff0 + 64 = 0x30.
    assert_eq!(hc(&e, &vm, KVM_HC_SEND_IPI, [1, 1 << 4, 0xffff_fff0, 0x30]), 1);
    assert_eq!(vm.platform.take(), vec![Effect::Interrupt(0x34, 0x30)]);
}

#[test]
fn send_ipi_refuses_logical_mode_and_shorthands() {
    let e = engine();
    let vm = Vm::new(4);
    for icr in [
        APIC_DEST_MASK | 0x30,
        0x4_0000 | 0x30, // self
        0x8_0000 | 0x30, // all including self
        0xc_0000 | 0x30, // all excluding self
    ] {
        assert_eq!(hc(&e, &vm, KVM_HC_SEND_IPI, [0b11, 0, 0, icr]), err(KVM_EINVAL));
        let o = hc_full(&e, &vm, 0, 0, CpuMode::Protected32, KVM_HC_SEND_IPI, [1, 0, 0, icr]);
        assert_eq!(rax(&o), err32(KVM_EINVAL));
    }
    assert!(vm.platform.take().is_empty());
    // The ICR's high half (xAPIC destination field) is not checked.
    assert_eq!(hc(&e, &vm, KVM_HC_SEND_IPI, [1, 0, 0, 0xff00_0000_0000_0030]), 1);
}

#[test]
fn send_ipi_delivery_modes() {
    let e = engine();
    let vm = Vm::new(4);
    let send = |icr: u64| hc(&e, &vm, KVM_HC_SEND_IPI, [0b110, 0, 0, icr]);
    // Lowest priority is delivered like fixed.
    assert_eq!(send(APIC_DM_LOWEST | 0x51), 2);
    assert_eq!(vm.platform.take(), vec![Effect::Interrupt(1, 0x51), Effect::Interrupt(2, 0x51)]);
    // Level-triggered: delivered when asserted, dropped when deasserted.
    assert_eq!(send(APIC_INT_LEVELTRIG | APIC_INT_ASSERT | 0x52), 2);
    assert_eq!(vm.platform.take().len(), 2);
    assert_eq!(send(APIC_INT_LEVELTRIG | 0x52), 0);
    // Edge-triggered ignores the level bit.
    assert_eq!(send(0x53), 2);
    assert_eq!(vm.platform.take().len(), 2);
    // Remote read is KVM's kick.
    assert_eq!(send(APIC_DM_REMRD), 2);
    assert_eq!(vm.platform.take(), vec![Effect::Wake(1), Effect::Wake(2)]);
    // What the platform cannot deliver is not counted.
    for mode in [APIC_DM_SMI, APIC_DM_NMI, APIC_DM_INIT, APIC_DM_STARTUP, APIC_DM_EXTINT] {
        assert_eq!(send(mode | 0x99), 0, "mode {mode:#x}");
    }
    assert!(vm.platform.take().is_empty());
}

#[test]
fn apic_ids_go_through_the_platform() {
    let e = engine();
    let mem = memory(0x1000);
    // APIC ids are 10 * vCPU index and vCPU 2 refuses interrupts.
    let p = RecordingPlatform::new(4)
        .with_apic_ids(vec![0, 10, 20, 30])
        .failing_interrupts(2, PlatformError::Failed("APIC disabled".into()));
    let call = |vcpu: u32, nr: u64, args: [u64; 4]| {
        let mut v = snapshot(Registers {
            rax: nr,
            rbx: args[0],
            rcx: args[1],
            rdx: args[2],
            rsi: args[3],
            ..Default::default()
        });
        v.vcpu = vcpu;
        rax(&e.hypercall(&v, &mem, &p))
    };
    // APIC ids 10, 20, 30 are vCPUs 1, 2, 3; vCPU 2 refuses the interrupt.
    let bitmap = 1 << 0 | 1 << 10 | 1 << 20 | 1 << 30 | 1 << 5;
    assert_eq!(call(0, KVM_HC_SEND_IPI, [bitmap, 0, 0, 0x61]), 3);
    assert_eq!(
        p.take(),
        vec![Effect::Interrupt(0, 0x61), Effect::Interrupt(1, 0x61), Effect::Interrupt(3, 0x61)]
    );
    assert_eq!(call(1, KVM_HC_KICK_CPU, [0, 30, 0, 0]), 0);
    assert_eq!(p.take(), vec![Effect::Wake(3), Effect::Yield(1, Some(3))]);
    assert_eq!(call(0, KVM_HC_KICK_CPU, [0, 3, 0, 0]), 0);
    assert_eq!(call(0, KVM_HC_SCHED_YIELD, [3, 0, 0, 0]), 0);
    assert!(p.take().is_empty(), "APIC id 3 is nobody here");
    assert_eq!(call(0, KVM_HC_SCHED_YIELD, [20, 0, 0, 0]), 0);
    assert_eq!(p.take(), vec![Effect::Yield(0, Some(2))]);
}

// ------------------------------------------------------------------- SCHED_YIELD

#[test]
fn sched_yield_yields_to_the_named_vcpu() {
    let e = engine();
    let vm = Vm::new(4);
    let o = hc_full(&e, &vm, 2, 0, CpuMode::Long64, KVM_HC_SCHED_YIELD, [3, 0, 0, 0]);
    assert_eq!(rax(&o), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Yield(2, Some(3))]);
    // Unknown, self, or beyond 32 bits: no yield, still 0 (kvm_sched_yield).
    for target in [4, 0, 0x1_0000_0001, u64::MAX] {
        assert_eq!(hc(&e, &vm, KVM_HC_SCHED_YIELD, [target, 0, 0, 0]), 0);
    }
    assert!(vm.platform.take().is_empty());
    // 32-bit: a0 truncated.
    let o =
        hc_full(&e, &vm, 0, 0, CpuMode::Protected32, KVM_HC_SCHED_YIELD, [0x1_0000_0001, 0, 0, 0]);
    assert_eq!(rax(&o), 0);
    assert_eq!(vm.platform.take(), vec![Effect::Yield(0, Some(1))]);
}

// ----------------------------------------------------------------- CLOCK_PAIRING

fn read_pairing(mem: &GuestMemoryMmap, gpa: u64) -> (i64, i64, u64, [u8; 40]) {
    let mut raw = [0u8; 64];
    mem.read_slice(&mut raw, GuestAddress(gpa)).unwrap();
    let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
    let mut rest = [0u8; 40];
    rest.copy_from_slice(&raw[24..64]);
    (word(0) as i64, word(8) as i64, word(16), rest)
}

#[test]
fn clock_pairing_writes_wall_clock_and_tsc() {
    let e = engine();
    let vm = Vm::new(4);
    vm.platform.now_ns.store(123_456_789, Ordering::Relaxed);
    vm.mem.write_slice(&[0xff; 64], GuestAddress(0x2000)).unwrap();
    assert_eq!(hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [0x2000, 0, 0, 0]), 0);
    let (sec, nsec, tsc, rest) = read_pairing(&vm.mem, 0x2000);
    assert_eq!((sec, nsec, tsc), (1_700_000_000, 0, 123_456_789));
    assert_eq!(rest, [0; 40], "flags and pad are zero");
    // Unaligned structures are fine.
    assert_eq!(hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [0x3003, 0, 0, 0]), 0);
    assert_eq!(read_pairing(&vm.mem, 0x3003).2, 123_456_789);
}

#[test]
fn clock_pairing_errors() {
    let e = engine();
    let vm = Vm::new(4);
    let size = 0x10_0000u64;
    // Only the wall clock.
    for clock_type in [1, 2, u64::MAX] {
        assert_eq!(
            hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [0x2000, clock_type, 0, 0]),
            err(KVM_EOPNOTSUPP)
        );
    }
    // Bad guest addresses: beyond RAM, straddling its end, wrapping.
    for gpa in [size, size - 63, size - 1, u64::MAX - 10, u64::MAX] {
        assert_eq!(
            hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [gpa, 0, 0, 0]),
            err(KVM_EFAULT),
            "gpa {gpa:#x}"
        );
    }
    // A refused structure leaves RAM as it was, also the part inside RAM.
    vm.mem.write_slice(&[0xa5; 63], GuestAddress(size - 63)).unwrap();
    for gpa in [size - 63, size - 32, size - 1] {
        assert_eq!(hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [gpa, 0, 0, 0]), err(KVM_EFAULT));
        let mut tail = [0u8; 63];
        vm.mem.read_slice(&mut tail, GuestAddress(size - 63)).unwrap();
        assert_eq!(tail, [0xa5; 63], "gpa {gpa:#x} wrote into RAM");
    }
    // The last 64 bytes of RAM are fine.
    assert_eq!(hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [size - 64, 0, 0, 0]), 0);
    // 32-bit: the address is truncated, the error too.
    let o = hc_full(
        &e,
        &vm,
        0,
        0,
        CpuMode::Protected32,
        KVM_HC_CLOCK_PAIRING,
        [0xdead_0000_0000_4000, 0, 0, 0],
    );
    assert_eq!(rax(&o), 0);
    assert_eq!(read_pairing(&vm.mem, 0x4000).0, 1_700_000_000);
    let o =
        hc_full(&e, &vm, 0, 0, CpuMode::Protected32, KVM_HC_CLOCK_PAIRING, [0xffff_fff0, 0, 0, 0]);
    assert_eq!(rax(&o), err32(KVM_EFAULT));
}

#[test]
fn clock_pairing_needs_a_stable_tsc() {
    let host = HostFacts { stable_tsc: false, ..HostFacts::nominal() };
    let e = engine_with(&config(None), &host);
    let vm = Vm::new(4);
    assert_eq!(hc(&e, &vm, KVM_HC_CLOCK_PAIRING, [0x2000, 0, 0, 0]), err(KVM_EOPNOTSUPP));
    assert_eq!(vm.mem.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 0);
}

// ----------------------------------------------------------------- MAP_GPA_RANGE

const ENC: u64 = KVM_MAP_GPA_RANGE_ENCRYPTED;
const SZ_2M: u64 = KVM_MAP_GPA_RANGE_PAGE_SZ_2M;
const SZ_1G: u64 = KVM_MAP_GPA_RANGE_PAGE_SZ_1G;

/// A VM with 4 GiB + 2 MiB of (sparse, never touched) RAM, so 1G pages fit.
fn big_vm() -> Vm {
    Vm { mem: memory((4 << 30) + (2 << 20)), platform: RecordingPlatform::new(4) }
}

#[test]
fn map_gpa_range_validation_table() {
    let e = engine();
    let vm = big_vm();
    let ram = (4u64 << 30) + (2 << 20);
    let pages = ram / 4096;
    #[rustfmt::skip]
    let table: &[(&str, u64, u64, u64, u64)] = &[
        // what,                          gpa,             npages,        attrs,        answer
        ("one 4K page",                   0x1000,          1,             ENC,          0),
        ("plaintext",                     0x1000,          1,             0,            0),
        ("all of RAM",                    0,               pages,         ENC,          0),
        ("last page",                     ram - 4096,      1,             0,            0),
        ("2M pages",                      2 << 20,         1024,          SZ_2M | ENC,  0),
        ("1G page",                       1 << 30,         1 << 18,       SZ_1G,        0),
        // KVM's own checks.
        ("unaligned gpa",                 0x1001,          1,             0,            KVM_EINVAL),
        ("gpa off by 2K",                 0x800,           1,             0,            KVM_EINVAL),
        ("zero pages",                    0x1000,          0,             0,            KVM_EINVAL),
        ("gfn wraps",                     0x1000,          u64::MAX,      0,            KVM_EINVAL),
        ("gfn wraps exactly",             0x1000,          (1 << 52) - 1, 0,            KVM_EINVAL),
        // Bytes wrap though the gfn does not.
        ("byte end wraps",                !0xfff, 1,           0,            KVM_EINVAL),
        ("length overflows",              0,               1 << 53,       0,            KVM_EINVAL),
        // Attributes.
        ("reserved bit 5",                0x1000,          1,             1 << 5,       KVM_EINVAL),
        ("reserved bit 63",               0x1000,          1,             1 << 63,      KVM_EINVAL),
        ("page size 3",                   0x1000,          1,             3,            KVM_EINVAL),
        ("page size 15",                  0x1000,          1,             0xf | ENC,    KVM_EINVAL),
        // Alignment to the declared page size, start and length.
        ("2M start unaligned",            0x1000,          512,           SZ_2M,        KVM_EINVAL),
        ("2M length unaligned",           2 << 20,         511,           SZ_2M,        KVM_EINVAL),
        ("1G start unaligned",            2 << 20,         1 << 18,       SZ_1G,        KVM_EINVAL),
        ("1G length unaligned",           1 << 30,         512,           SZ_1G,        KVM_EINVAL),
        // Guest memory.
        ("beyond RAM",                    ram,             1,             0,            KVM_EINVAL),
        ("straddles RAM end",             ram - 4096,      2,             0,            KVM_EINVAL),
        ("far beyond RAM",                1 << 50,         1,             0,            KVM_EINVAL),
        ("one page too many",             0,               pages + 1,     0,            KVM_EINVAL),
    ];
    for (what, gpa, npages, attrs, answer) in table {
        let want = if *answer == 0 { 0 } else { err(*answer) };
        assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [*gpa, *npages, *attrs, 0]), want, "{what}");
    }
    assert!(vm.platform.take().is_empty());
}

#[test]
fn map_gpa_range_records_and_answers_queries() {
    let e = engine();
    let vm = Vm::new(4);
    let kvm = e.personality();
    assert_eq!(kvm.gpa_attributes(0x5000), None);
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0, 0x100, ENC, 0]), 0);
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0x5000, 2, 0, 0]), 0);
    assert!(kvm.gpa_attributes(0x4fff).unwrap().encrypted());
    assert!(!kvm.gpa_attributes(0x5000).unwrap().encrypted());
    assert!(!kvm.gpa_attributes(0x6fff).unwrap().encrypted());
    assert!(kvm.gpa_attributes(0x7000).unwrap().encrypted());
    assert_eq!(kvm.gpa_attributes(0x10_0000), None);
    assert_eq!(kvm.gpa_ranges().len(), 3);
    let report = kvm.gpa_map_report();
    assert!(report.starts_with("KVM_HC_MAP_GPA_RANGE: 3 range(s) declared (at most 4096)"));
    assert!(report.contains("0x000000005000-0x000000006fff plaintext, 4K pages"), "{report}");
    // Failed calls change nothing.
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0x5000, 1, 1 << 5, 0]), err(KVM_EINVAL));
    assert!(!kvm.gpa_attributes(0x5000).unwrap().encrypted());
}

#[test]
fn the_end_of_vm_report_lists_the_map() {
    let mut c = config(None);
    c.kvm.max_gpa_ranges = 100;
    let e = engine_with(&c, &HostFacts::nominal());
    let d: Arc<dyn Dispatch> = e.clone();
    assert!(d.report().is_empty(), "nothing declared, nothing to say");
    let vm = Vm::new(4);
    for i in 0..40 {
        assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [i * 0x2000, 1, ENC, 0]), 0);
    }
    let report = d.report();
    assert_eq!(report[0], "kvm: KVM_HC_MAP_GPA_RANGE map holds 40 range(s) (at most 100)");
    assert_eq!(report[1], "kvm: 0x000000000000-0x000000000fff encrypted, 4K pages");
    assert_eq!(report.len(), 1 + 32 + 1);
    assert_eq!(report[33], "kvm: ... 8 more");
    assert_eq!(e.personality().gpa_map_report().lines().count(), 41);
}

#[test]
fn map_gpa_range_32_bit_callers() {
    let e = engine();
    let vm = Vm::new(4);
    // gpa and attrs are truncated: the high halves would otherwise be errors.
    let o = hc_full(
        &e,
        &vm,
        0,
        0,
        CpuMode::Protected32,
        KVM_HC_MAP_GPA_RANGE,
        [0xffff_0000_0000_8000, 0x1_0000_0001, 0x8000_0000_0000_0010, 0],
    );
    assert_eq!(rax(&o), 0);
    assert!(e.personality().gpa_attributes(0x8000).unwrap().encrypted());
    assert_eq!(e.personality().gpa_attributes(0x9000), None);
    let o = hc_full(&e, &vm, 0, 0, CpuMode::Protected32, KVM_HC_MAP_GPA_RANGE, [0x8001, 1, 0, 0]);
    assert_eq!(rax(&o), err32(KVM_EINVAL));
}

#[test]
fn map_gpa_range_full_map_is_e2big() {
    let mut c = config(None);
    c.kvm.max_gpa_ranges = 2;
    let e = engine_with(&c, &HostFacts::nominal());
    let vm = Vm::new(4);
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0x0000, 1, ENC, 0]), 0);
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0x2000, 1, ENC, 0]), 0);
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0x4000, 1, ENC, 0]), err(KVM_E2BIG));
    assert_eq!(e.personality().gpa_attributes(0x4000), None);
    // Filling the hole merges and frees room.
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0x1000, 1, ENC, 0]), 0);
    assert_eq!(hc(&e, &vm, KVM_HC_MAP_GPA_RANGE, [0x4000, 1, ENC, 0]), 0);
    assert_eq!(e.rows()[11].counters.errors, 1);
}

// ---------------------------------------------------------------------- kvmclock

/// A platform whose TSC runs at `khz` kHz on a settable nanosecond clock, with a wall clock
/// that runs with it.
fn clock(khz: u64) -> RecordingPlatform {
    RecordingPlatform::new(4).with_tsc_khz(khz).running_wall_clock()
}

fn clock_engine(khz: u64) -> Arc<Engine<KvmPersonality>> {
    let host = HostFacts { tsc_khz: Some(khz), ..HostFacts::nominal() };
    engine_with(&config(None), &host)
}

fn ctx<'a>(vcpu: u32, mem: &'a GuestMemoryMmap, p: &'a dyn Platform) -> MsrContext<'a> {
    MsrContext { vcpu, memory: mem, platform: p }
}

fn time_info(mem: &GuestMemoryMmap, gpa: u64) -> PvclockVcpuTimeInfo {
    let mut raw = [0u8; 32];
    mem.read_slice(&mut raw, GuestAddress(gpa)).unwrap();
    PvclockVcpuTimeInfo::from_bytes(&raw)
}

fn wall_clock(mem: &GuestMemoryMmap, gpa: u64) -> PvclockWallClock {
    let mut raw = [0u8; 12];
    mem.read_slice(&mut raw, GuestAddress(gpa)).unwrap();
    PvclockWallClock::from_bytes(&raw)
}

#[test]
fn msr_ranges_cover_kvms_range_and_the_old_clock() {
    assert_eq!(engine().msr_ranges(), vec![(0x11, 0x12), (0x4b56_4d00, 0x4b56_4dff)]);
}

#[test]
fn system_time_new_fills_the_vcpu_page() {
    let e = clock_engine(1_000_000);
    let mem = memory(0x10000);
    let p = clock(1_000_000);
    p.set_now(5_000_000_000);
    let c = ctx(1, &mem, &p);
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME_NEW, 0x2000 | 1), MsrWrite::Done);
    let info = time_info(&mem, 0x2000);
    assert_eq!(info.version, 2, "even after the update");
    assert_eq!(info.tsc_timestamp, 5_000_000_000);
    assert_eq!(info.system_time, 5_000_000_000);
    assert_eq!((info.tsc_to_system_mul, info.tsc_shift), (0x8000_0000, 1));
    assert_eq!(info.flags, PVCLOCK_TSC_STABLE_BIT);
    assert_eq!(e.read_msr(&c, MSR_KVM_SYSTEM_TIME_NEW), MsrRead::Value(0x2001));
    assert_eq!(e.personality().kvmclock_msr(1), Some(0x2001));
    // Other vCPUs have their own MSR.
    assert_eq!(e.read_msr(&ctx(0, &mem, &p), MSR_KVM_SYSTEM_TIME_NEW), MsrRead::Value(0));
    // Later the guest's formula gives the platform's time.
    p.set_now(7_500_000_123);
    assert_eq!(info.guest_time(p.guest_tsc()), 7_500_000_123);
    assert_eq!(e.personality().kvmclock_now(&p), Some(7_500_000_123));
    // Registering again (or a refresh) bumps the version by two.
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME_NEW, 0x2000 | 1), MsrWrite::Done);
    assert_eq!(time_info(&mem, 0x2000).version, 4);
    assert!(e.personality().refresh_kvmclock(1, &mem, &p));
    assert_eq!(time_info(&mem, 0x2000).version, 6);
    assert!(!e.personality().refresh_kvmclock(0, &mem, &p), "not enabled");
    assert!(!e.personality().refresh_kvmclock(99, &mem, &p));
}

#[test]
fn all_vcpus_share_one_reference() {
    let e = clock_engine(2_500_000);
    let mem = memory(0x10000);
    let p = clock(2_500_000);
    p.tsc_base.store(777_777, Ordering::Relaxed);
    p.set_now(1_000);
    e.write_msr(&ctx(0, &mem, &p), MSR_KVM_SYSTEM_TIME_NEW, 0x1000 | 1);
    p.set_now(9_000_000);
    e.write_msr(&ctx(3, &mem, &p), MSR_KVM_SYSTEM_TIME_NEW, 0x1040 | 1);
    let (a, b) = (time_info(&mem, 0x1000), time_info(&mem, 0x1040));
    assert_eq!((a.tsc_timestamp, a.system_time), (b.tsc_timestamp, b.system_time));
    // Both read the same, monotonic time from the same TSC.
    let mut last = 0;
    for ns in [9_000_001, 10_000_000, 1_000_000_000, 3_600_000_000_000] {
        p.set_now(ns);
        let tsc = p.guest_tsc();
        assert_eq!(a.guest_time(tsc), b.guest_time(tsc));
        assert!(a.guest_time(tsc) >= last);
        last = a.guest_time(tsc);
    }
}

#[test]
fn kvmclock_advances_at_the_tsc_rate() {
    for khz in [1_000_000, 2_500_000, 3_000_000, 2_111_111] {
        let e = clock_engine(khz);
        let mem = memory(0x10000);
        let p = clock(khz);
        p.set_now(123_456);
        e.write_msr(&ctx(0, &mem, &p), MSR_KVM_SYSTEM_TIME_NEW, 0x3000 | 1);
        let info = time_info(&mem, 0x3000);
        let start = info.guest_time(p.guest_tsc());
        p.set_now(123_456 + 1_000_000_000);
        let second = info.guest_time(p.guest_tsc()) - start;
        let ppm = (second as f64 - 1e9).abs() / 1e3;
        assert!(ppm < 1.0, "{khz} kHz: one second measured as {second} ns");
    }
}

#[test]
fn old_system_time_msr_gets_no_stable_bit() {
    let e = engine();
    let mem = memory(0x10000);
    let p = clock(1_000_000);
    let c = ctx(0, &mem, &p);
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME, 0x2000 | 1), MsrWrite::Done);
    let info = time_info(&mem, 0x2000);
    assert_eq!(info.version, 2);
    assert_eq!(info.flags, 0);
    // Both MSRs name the same per-vCPU value.
    assert_eq!(e.read_msr(&c, MSR_KVM_SYSTEM_TIME), MsrRead::Value(0x2001));
    assert_eq!(e.read_msr(&c, MSR_KVM_SYSTEM_TIME_NEW), MsrRead::Value(0x2001));
}

#[test]
fn system_time_keeps_the_guest_stopped_flag_and_steps_over_junk() {
    let e = engine();
    let mem = memory(0x10000);
    let p = clock(1_000_000);
    // The guest left an odd version and PVCLOCK_GUEST_STOPPED in the page.
    mem.write_obj(41u32, GuestAddress(0x2000)).unwrap();
    mem.write_obj(PVCLOCK_GUEST_STOPPED, GuestAddress(0x2000 + 29)).unwrap();
    e.write_msr(&ctx(0, &mem, &p), MSR_KVM_SYSTEM_TIME_NEW, 0x2001);
    let info = time_info(&mem, 0x2000);
    assert_eq!(info.version, 44);
    assert_eq!(info.flags, PVCLOCK_TSC_STABLE_BIT | PVCLOCK_GUEST_STOPPED);
}

#[test]
fn system_time_disabled_or_outside_ram() {
    let e = engine();
    let mem = memory(0x10000);
    let p = clock(1_000_000);
    let c = ctx(0, &mem, &p);
    // Without the enable bit: recorded, nothing written.
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME_NEW, 0x2000), MsrWrite::Done);
    assert_eq!(time_info(&mem, 0x2000), PvclockVcpuTimeInfo::default());
    assert_eq!(e.read_msr(&c, MSR_KVM_SYSTEM_TIME_NEW), MsrRead::Value(0x2000));
    // Outside RAM, straddling its end, absurd: accepted (as KVM does), nothing written,
    // nothing breaks.
    for gpa in [0x10000, 0xfff0, !1, 0x8000_0000_0000_0000] {
        assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME_NEW, gpa | 1), MsrWrite::Done);
        assert_eq!(e.read_msr(&c, MSR_KVM_SYSTEM_TIME_NEW), MsrRead::Value(gpa | 1));
    }
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0xfff0)).unwrap(), 0);
    // Misaligned but inside RAM: KVM takes it, so do we.
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME_NEW, 0x3003), MsrWrite::Done);
    assert_eq!(time_info(&mem, 0x3002).version, 2);
}

#[test]
fn wall_clock_is_the_time_at_kvmclock_zero() {
    let e = engine();
    let mem = memory(0x10000);
    let p = clock(1_000_000);
    p.set_now(5_250_000_000);
    let c = ctx(2, &mem, &p);
    for msr in [MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_WALL_CLOCK] {
        assert_eq!(e.write_msr(&c, msr, 0x4000), MsrWrite::Done);
        let wc = wall_clock(&mem, 0x4000);
        // Wall now is 1_700_000_005.25 s and kvmclock 5.25 s: boot was at 1_700_000_000.
        assert_eq!((wc.sec, wc.nsec), (1_700_000_000, 0));
        assert_eq!(wc.version % 2, 0);
        // Per VM: any vCPU reads it back through either MSR.
        assert_eq!(e.read_msr(&ctx(0, &mem, &p), MSR_KVM_WALL_CLOCK_NEW), MsrRead::Value(0x4000));
        assert_eq!(e.read_msr(&ctx(3, &mem, &p), MSR_KVM_WALL_CLOCK), MsrRead::Value(0x4000));
    }
    assert_eq!(wall_clock(&mem, 0x4000).version, 4);
    // GPA 0 only records; outside RAM is ignored.
    assert_eq!(e.write_msr(&c, MSR_KVM_WALL_CLOCK_NEW, 0), MsrWrite::Done);
    assert_eq!(e.write_msr(&c, MSR_KVM_WALL_CLOCK_NEW, 0xffff_fff8), MsrWrite::Done);
    assert_eq!(e.read_msr(&c, MSR_KVM_WALL_CLOCK_NEW), MsrRead::Value(0xffff_fff8));
}

#[test]
fn wall_clock_uses_the_shared_reference() {
    let e = clock_engine(3_000_000);
    let mem = memory(0x10000);
    let p = clock(3_000_000);
    p.set_now(1_000_000_000);
    e.write_msr(&ctx(0, &mem, &p), MSR_KVM_SYSTEM_TIME_NEW, 0x1001);
    p.set_now(61_000_000_500);
    e.write_msr(&ctx(0, &mem, &p), MSR_KVM_WALL_CLOCK_NEW, 0x2000);
    let wc = wall_clock(&mem, 0x2000);
    let info = time_info(&mem, 0x1000);
    // wall(boot) + kvmclock(now) = wall(now), to the nanosecond the scale allows.
    let boot = u128::from(wc.sec) * 1_000_000_000 + u128::from(wc.nsec);
    let now = boot + u128::from(info.guest_time(p.guest_tsc()));
    let want = 1_700_000_061u128 * 1_000_000_000 + 500;
    assert!(now.abs_diff(want) <= 1, "{now} vs {want}");
}

#[test]
fn poll_control_msr() {
    let e = engine();
    let mem = memory(0x1000);
    let p = RecordingPlatform::new(4);
    let c = ctx(1, &mem, &p);
    assert_eq!(e.read_msr(&c, MSR_KVM_POLL_CONTROL), MsrRead::Value(1), "on after reset");
    assert_eq!(e.write_msr(&c, MSR_KVM_POLL_CONTROL, 0), MsrWrite::Done);
    assert_eq!(e.read_msr(&c, MSR_KVM_POLL_CONTROL), MsrRead::Value(0));
    assert_eq!(e.read_msr(&ctx(0, &mem, &p), MSR_KVM_POLL_CONTROL), MsrRead::Value(1), "per vCPU");
    for bad in [2, 3, 1 << 63] {
        assert_eq!(e.write_msr(&c, MSR_KVM_POLL_CONTROL, bad), MsrWrite::Gp);
    }
}

#[test]
fn msrs_without_their_feature_are_gp() {
    let e = engine_with(&config(Some(vec![KvmFeature::Clocksource2])), &HostFacts::nominal());
    let mem = memory(0x10000);
    let p = RecordingPlatform::new(4);
    let c = ctx(0, &mem, &p);
    for msr in [MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME, MSR_KVM_POLL_CONTROL] {
        assert_eq!(e.read_msr(&c, msr), MsrRead::Gp, "{msr:#x}");
        assert_eq!(e.write_msr(&c, msr, 0x2001), MsrWrite::Gp, "{msr:#x}");
    }
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 0);
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME_NEW, 0x2001), MsrWrite::Done);

    let e = engine_with(&config(Some(vec![KvmFeature::Clocksource])), &HostFacts::nominal());
    for msr in [MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW] {
        assert_eq!(e.read_msr(&c, msr), MsrRead::Gp, "{msr:#x}");
        assert_eq!(e.write_msr(&c, msr, 0x3001), MsrWrite::Gp, "{msr:#x}");
    }
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME, 0x3001), MsrWrite::Done);
}

#[test]
fn other_kvm_msrs_are_gp_and_the_rest_not_ours() {
    let e = engine();
    let mem = memory(0x1000);
    let p = RecordingPlatform::new(4);
    let c = ctx(0, &mem, &p);
    for msr in [
        MSR_KVM_ASYNC_PF_EN,
        MSR_KVM_STEAL_TIME,
        MSR_KVM_PV_EOI_EN,
        MSR_KVM_ASYNC_PF_INT,
        MSR_KVM_ASYNC_PF_ACK,
        MSR_KVM_MIGRATION_CONTROL,
        0x4b56_4d09,
        0x4b56_4dff,
    ] {
        assert_eq!(e.read_msr(&c, msr), MsrRead::Gp, "{msr:#x}");
        assert_eq!(e.write_msr(&c, msr, 1), MsrWrite::Gp, "{msr:#x}");
    }
    for msr in [0x10, 0x13, 0x4b56_4cff, 0x4b56_4e00, 0x4000_0000] {
        assert_eq!(e.read_msr(&c, msr), MsrRead::NotMine, "{msr:#x}");
        assert_eq!(e.write_msr(&c, msr, 1), MsrWrite::NotMine, "{msr:#x}");
    }
}

#[test]
fn msr_from_an_unknown_vcpu_is_gp() {
    let e = engine();
    let mem = memory(0x10000);
    let p = RecordingPlatform::new(8);
    let c = ctx(4, &mem, &p);
    assert_eq!(e.write_msr(&c, MSR_KVM_SYSTEM_TIME_NEW, 0x2001), MsrWrite::Gp);
    assert_eq!(e.read_msr(&c, MSR_KVM_SYSTEM_TIME_NEW), MsrRead::Gp);
    assert_eq!(e.read_msr(&c, MSR_KVM_POLL_CONTROL), MsrRead::Gp);
    assert_eq!(e.write_msr(&c, MSR_KVM_POLL_CONTROL, 0), MsrWrite::Gp);
    // The wall clock is per VM.
    assert_eq!(e.write_msr(&c, MSR_KVM_WALL_CLOCK_NEW, 0x3000), MsrWrite::Done);
}

#[test]
fn kvmclock_msrs_work_with_hypercalls_off() {
    let mut c = config(None);
    c.hypervisor.hypercalls_enabled = false;
    let e = engine_with(&c, &HostFacts::nominal());
    let mem = memory(0x10000);
    let p = clock(1_000_000);
    assert_eq!(e.write_msr(&ctx(0, &mem, &p), MSR_KVM_SYSTEM_TIME_NEW, 0x2001), MsrWrite::Done);
    assert_eq!(time_info(&mem, 0x2000).version, 2);
}

// ------------------------------------------------------------------- fuzz-ish

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn mode() -> impl Strategy<Value = CpuMode> {
        prop_oneof![Just(CpuMode::Long64), Just(CpuMode::Protected32), Just(CpuMode::Real)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any registers, any caller: the instruction completes, only RAX changes, and a
        /// 32-bit caller only ever sees a 32-bit RAX.
        #[test]
        fn any_hypercall_completes_with_rax_only(
            nr in prop_oneof![0u64..14, any::<u64>()],
            args in any::<[u64; 4]>(),
            small_args in any::<[u16; 4]>(),
            use_small in any::<bool>(),
            cpl in 0u8..4,
            mode in mode(),
            vcpu in 0u32..4,
        ) {
            let e = engine();
            let vm = Vm::new(4);
            let args = if use_small { small_args.map(u64::from) } else { args };
            let o = hc_full(&e, &vm, vcpu, cpl, mode, nr, args);
            let value = rax(&o);
            if mode != CpuMode::Long64 {
                prop_assert!(value <= 0xffff_ffff);
            }
            if cpl != 0 && mode != CpuMode::Real {
                prop_assert_eq!(value, mode.truncate(err(KVM_EPERM)));
                prop_assert!(vm.platform.take().is_empty());
            }
        }

        /// Any write to any KVM MSR at any address never panics, and reading it back gives
        /// the value or #GP.
        #[test]
        fn any_kvm_msr_write_is_safe(
            index in 0u32..0x100,
            old in any::<bool>(),
            value in any::<u64>(),
            vcpu in 0u32..6,
        ) {
            let e = engine();
            let mem = memory(0x4000);
            let p = clock(2_500_000);
            let msr = if old { 0x11 + index % 2 } else { MSR_KVM_RANGE_FIRST + index };
            let c = ctx(vcpu, &mem, &p);
            match e.write_msr(&c, msr, value) {
                MsrWrite::Done => prop_assert!(matches!(e.read_msr(&c, msr), MsrRead::Value(_))),
                MsrWrite::Gp => {}
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
