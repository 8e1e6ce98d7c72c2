//! Engine tests through a small test personality whose answers are all distinct, so each
//! assertion shows which step of the flow produced the outcome.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use crate::testing::{memory, snapshot, Effect, RecordingPlatform};
use crate::*;

struct TestAbi;

const DISABLED: u64 = 0xd15a;
const UNKNOWN: u64 = 0x0404;
const DENIED: u64 = 0xde41;
const RING: u64 = 0x7114;
const UNIMPLEMENTED: u64 = 0x0111;
const MALFORMED_FLAG: u64 = 1 << 63;

fn ping(_: &TestAbi, call: &mut Call<'_>) -> Reply {
    Reply::Value(call.arg(0) + 1)
}

fn read_u64(_: &TestAbi, call: &mut Call<'_>) -> Reply {
    match call.memory.read_obj::<u64>(GuestAddress(call.arg(0))) {
        Ok(v) => Reply::Value(v),
        Err(_) => Reply::Error(u64::MAX),
    }
}

fn say(_: &TestAbi, call: &mut Call<'_>) -> Reply {
    call.platform.console_write(call.vcpu.vcpu, b"hi");
    Reply::Value(0)
}

const TABLE: &[HypercallRow<TestAbi>] = &[
    HypercallRow {
        number: 0,
        name: "PING",
        rings: Rings::KERNEL_AND_USER,
        handler: Some(ping),
        summary: "",
    },
    HypercallRow {
        number: 1,
        name: "READ",
        rings: Rings::KERNEL,
        handler: Some(read_u64),
        summary: "",
    },
    HypercallRow { number: 2, name: "RESERVED", rings: Rings::KERNEL, handler: None, summary: "" },
    HypercallRow { number: 9, name: "SAY", rings: Rings::KERNEL, handler: Some(say), summary: "" },
];

impl Personality for TestAbi {
    fn mode(&self) -> HypervisorMode {
        HypervisorMode::Bhyve
    }
    fn table(&self) -> &[HypercallRow<Self>] {
        TABLE
    }
    fn decode(&self, v: &VcpuSnapshot) -> Result<CallInput, Outcome> {
        if v.regs.rax & MALFORMED_FLAG != 0 {
            return Err(Outcome::inject(Exception::GeneralProtection(0)));
        }
        Ok(CallInput { number: v.arg(Gpr::Rax), args: [v.arg(Gpr::Rdi), 0, 0, 0, 0, 0] })
    }
    fn encode(&self, _: &VcpuSnapshot, reply: Reply) -> Outcome {
        match reply {
            Reply::Value(v) | Reply::Error(v) => Outcome::ret(Gpr::Rax, v),
            Reply::Outcome(o) => o,
        }
    }
    fn refuse(&self, _: &VcpuSnapshot, refusal: Refusal) -> Outcome {
        let code = match refusal {
            Refusal::Disabled => DISABLED,
            Refusal::Unknown { .. } => UNKNOWN,
            Refusal::Unimplemented { .. } => UNIMPLEMENTED,
            Refusal::Denied { .. } => DENIED,
            Refusal::WrongRing { .. } => RING,
        };
        Outcome::ret(Gpr::Rax, code)
    }
    fn cpuid(&self, _: u32) -> Vec<CpuidLeaf> {
        vec![CpuidLeaf::signature(0x4000_0000, 0x4000_0000, b"TestTestTest")]
    }
    fn msr_ranges(&self) -> &[(u32, u32)] {
        &[(0x4000_0000, 0x4000_0001)]
    }
    fn read_msr(&self, _: &MsrContext<'_>, msr: u32) -> MsrRead {
        match msr {
            0x4000_0000 => MsrRead::Value(42),
            0x4000_0001 => MsrRead::Gp,
            _ => MsrRead::NotMine,
        }
    }
    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        match msr {
            0x4000_0000 => {
                ctx.platform.console_write(ctx.vcpu, &value.to_le_bytes());
                MsrWrite::Done
            }
            0x4000_0001 => MsrWrite::Gp,
            _ => MsrWrite::NotMine,
        }
    }
}

fn engine(policy: Policy) -> Engine<TestAbi> {
    Engine::new(Arc::new(TestAbi), &policy).unwrap()
}

fn call(engine: &Engine<TestAbi>, rax: u64, rdi: u64, cpl: u8) -> Outcome {
    let mem = memory(0x10000);
    let platform = RecordingPlatform::new(1);
    let mut v = snapshot(Registers { rax, rdi, ..Default::default() });
    v.cpl = cpl;
    engine.hypercall(&v, &mem, &platform)
}

fn rax(o: &Outcome) -> Option<u64> {
    o.writes.get(Gpr::Rax)
}

#[test]
fn disabled_by_default() {
    let e = engine(Policy::default());
    assert!(!e.enabled());
    let o = call(&e, 0, 1, 0);
    assert_eq!(rax(&o), Some(DISABLED));
    assert_eq!(e.refusals().snapshot(), (1, 0, 0));
    assert!(e.rows().iter().all(|r| !r.permitted));
}

#[test]
fn enabled_call_reaches_handler_and_counts() {
    let e = engine(Policy::permissive());
    let o = call(&e, 0, 41, 0);
    assert_eq!(o, Outcome::ret(Gpr::Rax, 42));
    assert_eq!(e.rows()[0].counters.calls, 1);
    assert_eq!(e.rows()[0].counters.errors, 0);
}

#[test]
fn unknown_and_unimplemented_numbers() {
    let e = engine(Policy::permissive());
    assert_eq!(rax(&call(&e, 3, 0, 0)), Some(UNKNOWN));
    assert_eq!(rax(&call(&e, u64::MAX >> 1, 0, 0)), Some(UNKNOWN));
    assert_eq!(rax(&call(&e, 2, 0, 0)), Some(UNIMPLEMENTED));
    assert_eq!(e.refusals().snapshot(), (0, 3, 0));
}

#[test]
fn ring_violation_is_refused_before_the_handler() {
    let e = engine(Policy::permissive());
    assert_eq!(rax(&call(&e, 1, 0, 3)), Some(RING));
    assert_eq!(rax(&call(&e, 1, 0, 1)), Some(RING));
    assert_eq!(rax(&call(&e, 0, 1, 3)), Some(2), "PING allows ring 3");
    let rows = e.rows();
    assert_eq!(rows[1].counters.wrong_ring, 2);
    assert_eq!(rows[1].counters.calls, 0);
}

#[test]
fn real_mode_counts_as_ring_zero() {
    let e = engine(Policy::permissive());
    let mem = memory(0x1000);
    let platform = RecordingPlatform::new(1);
    let mut v = snapshot(Registers { rax: 1, rdi: 0, ..Default::default() });
    v.cpl = 3;
    v.mode = CpuMode::Real;
    assert_eq!(rax(&e.hypercall(&v, &mem, &platform)), Some(0));
}

#[test]
fn denied_by_name_or_number() {
    let e = engine(Policy {
        hypercalls_enabled: true,
        allow: None,
        deny: vec![CallSelector::Name("read".into()), CallSelector::Number(9)],
    });
    assert_eq!(rax(&call(&e, 1, 0, 0)), Some(DENIED));
    assert_eq!(rax(&call(&e, 9, 0, 0)), Some(DENIED));
    assert_eq!(rax(&call(&e, 0, 0, 0)), Some(1));
    assert_eq!(e.rows()[1].counters.denied, 1);
}

#[test]
fn allow_list_permits_only_its_calls_and_deny_wins() {
    let e = engine(Policy {
        hypercalls_enabled: true,
        allow: Some(vec![CallSelector::Name("PING".into()), CallSelector::Number(9)]),
        deny: vec![CallSelector::Number(9)],
    });
    assert_eq!(rax(&call(&e, 0, 0, 0)), Some(1));
    assert_eq!(rax(&call(&e, 1, 0, 0)), Some(DENIED));
    assert_eq!(rax(&call(&e, 9, 0, 0)), Some(DENIED));
}

#[test]
fn policy_with_unknown_name_is_an_error() {
    let err = Engine::new(
        Arc::new(TestAbi),
        &Policy {
            hypercalls_enabled: true,
            allow: None,
            deny: vec![CallSelector::Name("NOPE".into())],
        },
    )
    .err()
    .unwrap();
    let text = err.to_string();
    assert!(text.contains("\"NOPE\""), "{text}");
    assert!(text.contains("PING, READ, RESERVED, SAY"), "{text}");
}

#[test]
fn malformed_input_is_the_decoders_answer() {
    let e = engine(Policy::permissive());
    let o = call(&e, MALFORMED_FLAG, 0, 0);
    assert_eq!(o.next, Next::Inject(Exception::GeneralProtection(0)));
    assert_eq!(e.refusals().snapshot(), (0, 0, 1));
}

#[test]
fn guest_pointer_errors_are_the_abis_error() {
    let e = engine(Policy::permissive());
    let mem = memory(0x1000);
    mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x800)).unwrap();
    let platform = RecordingPlatform::new(1);
    let v = snapshot(Registers { rax: 1, rdi: 0x800, ..Default::default() });
    assert_eq!(rax(&e.hypercall(&v, &mem, &platform)), Some(0x1122_3344_5566_7788));
    for bad in [0xffc, 0x1000, u64::MAX - 3] {
        let v = snapshot(Registers { rax: 1, rdi: bad, ..Default::default() });
        assert_eq!(rax(&e.hypercall(&v, &mem, &platform)), Some(u64::MAX), "pointer {bad:#x}");
    }
    assert_eq!(e.rows()[1].counters.errors, 3);
}

#[test]
fn handlers_reach_the_platform() {
    let e = engine(Policy::permissive());
    let mem = memory(0x1000);
    let platform = RecordingPlatform::new(1);
    let v = snapshot(Registers { rax: 9, ..Default::default() });
    e.hypercall(&v, &mem, &platform);
    assert_eq!(platform.take(), vec![Effect::Console(0, b"hi".to_vec())]);
}

#[test]
fn thirty_two_bit_callers_are_truncated() {
    let e = engine(Policy::permissive());
    let mem = memory(0x1000);
    let platform = RecordingPlatform::new(1);
    let mut v = snapshot(Registers {
        rax: 0x7fff_ffff_0000_0000,
        rdi: 0xaaaa_aaaa_0000_0004,
        ..Default::default()
    });
    v.mode = CpuMode::Protected32;
    assert_eq!(rax(&e.hypercall(&v, &mem, &platform)), Some(5));
}

#[test]
fn msr_routing() {
    let e = engine(Policy::default());
    let mem = memory(0x1000);
    let platform = RecordingPlatform::new(1);
    let ctx = MsrContext { vcpu: 0, memory: &mem, platform: &platform };
    assert_eq!(e.read_msr(&ctx, 0x4000_0000), MsrRead::Value(42));
    assert_eq!(e.read_msr(&ctx, 0x4000_0001), MsrRead::Gp);
    assert_eq!(e.read_msr(&ctx, 0x10), MsrRead::NotMine);
    assert_eq!(e.write_msr(&ctx, 0x4000_0000, 7), MsrWrite::Done);
    assert_eq!(e.write_msr(&ctx, 0x4000_0001, 7), MsrWrite::Gp);
    assert_eq!(e.write_msr(&ctx, 0x10, 7), MsrWrite::NotMine);
    assert_eq!(platform.take(), vec![Effect::Console(0, 7u64.to_le_bytes().to_vec())]);
    assert_eq!(e.msr_ranges(), vec![(0x4000_0000, 0x4000_0001)]);
}

#[test]
fn counters_are_shared_across_threads() {
    let e = Arc::new(engine(Policy::permissive()));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let e = Arc::clone(&e);
            s.spawn(move || {
                for _ in 0..1000 {
                    call(&e, 0, 0, 0);
                }
            });
        }
    });
    assert_eq!(e.rows()[0].counters.calls, 4000);
}

/// A sink that keeps what it gets.
#[derive(Default)]
struct Keep {
    timed: bool,
    events: std::sync::Mutex<Vec<TraceEvent>>,
}

impl TraceSink for Keep {
    fn timed(&self) -> bool {
        self.timed
    }
    fn record(&self, event: TraceEvent) {
        self.events.lock().unwrap().push(event);
    }
}

#[test]
fn trace_sink_sees_every_call_with_its_verdict() {
    let policy = Policy { deny: vec![CallSelector::Name("SAY".into())], ..Policy::permissive() };
    let e = engine(policy);
    let sink = Arc::new(Keep { timed: true, ..Keep::default() });
    assert!(e.set_trace_sink(sink.clone()));
    assert!(!e.set_trace_sink(sink.clone()), "one sink per engine");
    // The outcomes are those of an untraced engine.
    assert_eq!(call(&e, 0, 41, 0), Outcome::ret(Gpr::Rax, 42));
    assert_eq!(rax(&call(&e, 1, 0, 3)), Some(RING));
    assert_eq!(rax(&call(&e, 9, 0, 0)), Some(DENIED));
    assert_eq!(rax(&call(&e, 2, 0, 0)), Some(UNIMPLEMENTED));
    assert_eq!(rax(&call(&e, 77, 0, 0)), Some(UNKNOWN));
    assert_eq!(rax(&call(&e, 1, 1 << 40, 0)), Some(u64::MAX));
    call(&e, MALFORMED_FLAG, 0, 0);
    let mem = memory(0x1000);
    let platform = RecordingPlatform::new(1);
    let ctx = MsrContext { vcpu: 0, memory: &mem, platform: &platform };
    assert_eq!(e.read_msr(&ctx, 0x4000_0001), MsrRead::Gp);
    assert_eq!(e.write_msr(&ctx, 0x4000_0000, 5), MsrWrite::Done);

    let events = sink.events.lock().unwrap();
    let got: Vec<(TraceKind, &str, Verdict)> =
        events.iter().map(|ev| (ev.kind, ev.call.name.as_str(), ev.verdict)).collect();
    use TraceKind::*;
    assert_eq!(
        got,
        vec![
            (Hypercall, "PING", Verdict::Ok),
            (Hypercall, "READ", Verdict::WrongRing),
            (Hypercall, "SAY", Verdict::Denied),
            (Hypercall, "RESERVED", Verdict::Unimplemented),
            (Hypercall, "unknown", Verdict::Unknown),
            (Hypercall, "READ", Verdict::Error),
            (Hypercall, "unknown", Verdict::Malformed),
            (Rdmsr, "unknown", Verdict::Error),
            (Wrmsr, "unknown", Verdict::Ok),
        ]
    );
    assert_eq!(events[0].to_string(), "vcpu0 cpl0 64-bit VMCALL #0 PING(a0=0x29) -> 0x2a");
    assert_eq!(events[6].result, "#GP");
    assert!(events.iter().all(|ev| ev.elapsed_ns.is_some()), "timed when the sink asks");
    let stats = CallStats::default();
    events.iter().for_each(|ev| stats.add(ev));
    let read = stats.rows().into_iter().find(|r| r.name == "READ").unwrap();
    assert_eq!((read.count, read.errors, read.refused), (2, 1, 1));
}

#[test]
fn untimed_sink_gets_no_times_and_disabled_calls_are_traced() {
    let e = engine(Policy::default());
    let sink = Arc::new(Keep::default());
    e.set_trace_sink(sink.clone());
    assert_eq!(rax(&call(&e, 0, 1, 0)), Some(DISABLED));
    let events = sink.events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].verdict, Verdict::Disabled);
    assert_eq!(events[0].call.name, "PING", "the call is named even when refused");
    assert_eq!(events[0].elapsed_ns, None);
}

/// Remembers the halts the VMM said ended.
#[derive(Default)]
struct Halts(std::sync::Mutex<Vec<u32>>);

impl Personality for Halts {
    fn mode(&self) -> HypervisorMode {
        HypervisorMode::Xen
    }
    fn table(&self) -> &[HypercallRow<Self>] {
        &[]
    }
    fn decode(&self, v: &VcpuSnapshot) -> Result<CallInput, Outcome> {
        Ok(CallInput { number: v.arg(Gpr::Rax), args: [0; 6] })
    }
    fn encode(&self, _: &VcpuSnapshot, _: Reply) -> Outcome {
        Outcome::ret(Gpr::Rax, 0)
    }
    fn refuse(&self, _: &VcpuSnapshot, _: Refusal) -> Outcome {
        Outcome::ret(Gpr::Rax, 0)
    }
    fn cpuid(&self, _: u32) -> Vec<CpuidLeaf> {
        Vec::new()
    }
    fn halt_ended(&self, vcpu: u32) {
        self.0.lock().unwrap().push(vcpu);
    }
}

#[test]
fn halt_ended_reaches_the_personality() {
    let halts = Arc::new(Halts::default());
    let dispatch: Arc<dyn Dispatch> =
        Arc::new(Engine::new(halts.clone(), &Policy::permissive()).unwrap());
    dispatch.halt_ended(1);
    dispatch.halt_ended(0);
    assert_eq!(*halts.0.lock().unwrap(), vec![1, 0]);
    // A personality without the hook takes it as a no-op.
    Dispatch::halt_ended(&engine(Policy::permissive()), 0);
}

/// A layer that answers number 0 itself and leaves the rest to the engine below.
struct AnswersZero(Arc<dyn Dispatch>);

impl DispatchLayer for AnswersZero {
    fn inner(&self) -> &dyn Dispatch {
        &*self.0
    }
    fn layer_hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        if vcpu.regs.rax == 0 {
            return Outcome::ret(Gpr::Rax, 7);
        }
        self.0.hypercall(vcpu, memory, platform)
    }
}

#[test]
fn a_layer_overrides_what_it_changes_and_forwards_the_rest() {
    let halts = Arc::new(Halts::default());
    let below: Arc<dyn Dispatch> =
        Arc::new(Engine::new(halts.clone(), &Policy::permissive()).unwrap());
    let layer: Arc<dyn Dispatch> = Arc::new(AnswersZero(below));
    let mem = memory(0x1000);
    let platform = RecordingPlatform::new(1);
    let at =
        |rax| layer.hypercall(&snapshot(Registers { rax, ..Default::default() }), &mem, &platform);
    assert_eq!(at(0), Outcome::ret(Gpr::Rax, 7));
    assert_eq!(at(5), Outcome::ret(Gpr::Rax, 0), "the engine's answer");
    assert_eq!(layer.refusals().unknown.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Methods with default bodies in `Dispatch` reach the engine too.
    layer.halt_ended(3);
    assert_eq!(*halts.0.lock().unwrap(), vec![3]);
    assert!(layer.set_trace_sink(Arc::new(Keep::default())));
    assert!(!layer.set_trace_sink(Arc::new(Keep::default())), "the engine's one sink is set");
    assert_eq!(layer.mode(), HypervisorMode::Xen);
}
