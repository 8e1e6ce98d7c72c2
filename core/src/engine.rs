use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::counters::{bump, CallCounters, CounterSnapshot, RefusalCounters};
use crate::cpuid::CpuidLeaf;
use crate::mode::HypervisorMode;
use crate::msr::{MsrContext, MsrRead, MsrWrite};
use crate::outcome::Outcome;
use crate::personality::{Call, Personality, Refusal, Reply};
use crate::platform::Platform;
use crate::policy::{CallSelector, Policy, PolicyError};
use crate::regs::{CpuMode, VcpuSnapshot};
use crate::trace::{CallTrace, TraceEvent, TraceKind, TraceSink, Verdict};
use crate::GuestMemoryMmap;

/// A table row as tools display it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowInfo {
    /// The ABI's call number.
    pub number: u64,
    /// The spec's name.
    pub name: &'static str,
    /// The rings allowed, e.g. "0,3".
    pub rings: String,
    /// Whether this implementation serves the call.
    pub implemented: bool,
    /// Whether the policy permits it (global switch, allow and deny lists).
    pub permitted: bool,
    /// What the call does here.
    pub summary: &'static str,
    /// Counters so far.
    pub counters: CounterSnapshot,
}

/// The object-safe face of an [`Engine`], which the VMM holds without knowing the personality.
pub trait Dispatch: Send + Sync {
    /// The personality's mode.
    fn mode(&self) -> HypervisorMode;
    /// Runs one trapped hypercall through the engine.
    fn hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome;
    /// Routes an RDMSR.
    fn read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead;
    /// Routes a WRMSR.
    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite;
    /// The synthetic MSR ranges to send to user space.
    fn msr_ranges(&self) -> Vec<(u32, u32)>;
    /// The hypervisor CPUID leaves for one vCPU.
    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf>;
    /// What a leaf means, per the personality.
    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String>;
    /// The personality's end-of-run report lines.
    fn report(&self) -> Vec<String>;
    /// The table with policy and counters, for tools and reports.
    fn rows(&self) -> Vec<RowInfo>;
    /// Refusal counters.
    fn refusals(&self) -> &RefusalCounters;
    /// Sends every hypercall and synthetic-MSR access from now on to `sink` as a
    /// [`TraceEvent`]. Only one sink can be installed; returns `false` if one was already
    /// there (or this dispatcher does not trace).
    fn set_trace_sink(&self, sink: Arc<dyn TraceSink>) -> bool {
        let _ = sink;
        false
    }
    /// vCPU `vcpu`'s halt has ended; see [`Personality::halt_ended`] for when the VMM calls
    /// it. The default does nothing.
    fn halt_ended(&self, vcpu: u32) {
        let _ = vcpu;
    }
}

/// The dispatch engine for one VM and one personality.
pub struct Engine<P: Personality> {
    personality: Arc<P>,
    enabled: bool,
    /// `(number, row index)` sorted by number, for the lookup.
    index: Box<[(u64, usize)]>,
    permitted: Box<[bool]>,
    counters: Box<[CallCounters]>,
    refusals: RefusalCounters,
    /// Set once when tracing is asked for; unset, the hot path pays one branch.
    trace: OnceLock<Arc<dyn TraceSink>>,
}

impl<P: Personality> Engine<P> {
    /// Builds the engine, resolving the policy's names and numbers against the table.
    pub fn new(personality: Arc<P>, policy: &Policy) -> Result<Self, PolicyError> {
        let table = personality.table();
        let mut index: Vec<(u64, usize)> =
            table.iter().enumerate().map(|(i, row)| (row.number, i)).collect();
        index.sort_unstable();
        let resolve = |list: &'static str, sel: &CallSelector| -> Result<usize, PolicyError> {
            let found = table.iter().position(|row| match sel {
                CallSelector::Name(n) => row.name.eq_ignore_ascii_case(n),
                CallSelector::Number(n) => row.number == *n,
            });
            found.ok_or_else(|| PolicyError {
                list,
                selector: sel.clone(),
                mode: personality.mode(),
                known: table.iter().map(|r| r.name).collect::<Vec<_>>().join(", "),
            })
        };
        let mut permitted = vec![policy.allow.is_none(); table.len()];
        for sel in policy.allow.iter().flatten() {
            if let Some(slot) = permitted.get_mut(resolve("allow", sel)?) {
                *slot = true;
            }
        }
        for sel in &policy.deny {
            if let Some(slot) = permitted.get_mut(resolve("deny", sel)?) {
                *slot = false;
            }
        }
        let counters = table.iter().map(|_| CallCounters::default()).collect();
        Ok(Engine {
            enabled: policy.hypercalls_enabled && personality.hypercalls_possible(),
            personality,
            index: index.into_boxed_slice(),
            permitted: permitted.into_boxed_slice(),
            counters,
            refusals: RefusalCounters::default(),
            trace: OnceLock::new(),
        })
    }

    /// The personality this engine serves.
    pub fn personality(&self) -> &Arc<P> {
        &self.personality
    }

    /// Whether hypercalls are served at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn row_index(&self, number: u64) -> Option<usize> {
        self.index
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .and_then(|i| self.index.get(i))
            .map(|(_, row)| *row)
    }

    /// The flow; the verdict goes to `verdict`. Inlined into both callers so the untraced path
    /// stays what it was before tracing existed: its verdict stores are dead and vanish, and
    /// the outcome is built in the caller's return slot (a returned `(Outcome, Verdict)` pair
    /// cost a copy of the outcome per call).
    #[inline(always)]
    fn run(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
        verdict: &mut Verdict,
    ) -> Outcome {
        let p = &*self.personality;
        if !self.enabled {
            bump(&self.refusals.disabled);
            *verdict = Verdict::Disabled;
            return p.refuse(vcpu, Refusal::Disabled);
        }
        let input = match p.decode(vcpu) {
            Ok(input) => input,
            Err(answer) => {
                bump(&self.refusals.malformed);
                *verdict = Verdict::Malformed;
                return answer;
            }
        };
        let number = input.number;
        let Some(i) = self.row_index(number) else {
            bump(&self.refusals.unknown);
            *verdict = Verdict::Unknown;
            return p.refuse(vcpu, Refusal::Unknown { number });
        };
        let (Some(row), Some(counters)) = (p.table().get(i), self.counters.get(i)) else {
            bump(&self.refusals.unknown);
            *verdict = Verdict::Unknown;
            return p.refuse(vcpu, Refusal::Unknown { number });
        };
        if !self.permitted.get(i).copied().unwrap_or(false) {
            bump(&counters.denied);
            *verdict = Verdict::Denied;
            return p.refuse(vcpu, Refusal::Denied { number });
        }
        // Real mode has no rings; every caller there counts as ring 0.
        let cpl = if vcpu.mode == CpuMode::Real { 0 } else { vcpu.cpl };
        if !row.rings.allows(cpl) {
            bump(&counters.wrong_ring);
            *verdict = Verdict::WrongRing;
            return p.refuse(vcpu, Refusal::WrongRing { number, cpl });
        }
        let Some(handler) = row.handler else {
            bump(&self.refusals.unknown);
            *verdict = Verdict::Unimplemented;
            return p.refuse(vcpu, Refusal::Unimplemented { number });
        };
        let mut call = Call { input, vcpu, memory, platform };
        let reply = handler(p, &mut call);
        bump(&counters.calls);
        *verdict = Verdict::Ok;
        if matches!(reply, Reply::Error(_)) || matches!(&reply, Reply::Outcome(o) if o.is_fault()) {
            bump(&counters.errors);
            *verdict = Verdict::Error;
        }
        p.encode(vcpu, reply)
    }

    /// [`Engine::run`] with a trace event: the call is described before it runs (a handler
    /// may change what its pointers point at), timed when the sink asks for it, and its
    /// result named after.
    #[cold]
    fn run_traced(
        &self,
        sink: &dyn TraceSink,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        let p = &*self.personality;
        let call = p.trace_call(vcpu, memory, platform);
        let mut verdict = Verdict::Ok;
        let (start, outcome) = timed(sink, || self.run(vcpu, memory, platform, &mut verdict));
        let elapsed_ns = elapsed_ns(start);
        sink.record(TraceEvent {
            time_ns: 0,
            vcpu: vcpu.vcpu,
            kind: TraceKind::Hypercall,
            cpl: Some(vcpu.cpl),
            cpu_mode: Some(vcpu.mode.to_string()),
            instruction: Some(vcpu.instruction.to_string()),
            call,
            verdict,
            result: p.trace_result(vcpu, &outcome),
            elapsed_ns,
        });
        outcome
    }

    /// Records one synthetic-MSR access.
    #[cold]
    fn record_msr(
        &self,
        sink: &dyn TraceSink,
        access: MsrAccess,
        elapsed_ns: Option<u64>,
        verdict: Verdict,
        result: String,
    ) {
        let name = self.personality.msr_name(access.msr).unwrap_or(crate::trace::UNKNOWN);
        let mut call = CallTrace::new(u64::from(access.msr), name);
        if let Some(value) = access.value {
            call = call.hex("value", value);
        }
        sink.record(TraceEvent {
            time_ns: 0,
            vcpu: access.vcpu,
            kind: if access.value.is_some() { TraceKind::Wrmsr } else { TraceKind::Rdmsr },
            cpl: None,
            cpu_mode: None,
            instruction: None,
            call,
            verdict,
            result,
            elapsed_ns,
        });
    }
}

/// One MSR access as a trace records it; `value` is the written value for WRMSR.
#[derive(Clone, Copy)]
struct MsrAccess {
    vcpu: u32,
    msr: u32,
    value: Option<u64>,
}

/// Runs `f`, noting the start time when the sink wants calls timed.
fn timed<T>(sink: &dyn TraceSink, f: impl FnOnce() -> T) -> (Option<Instant>, T) {
    let start = sink.timed().then(Instant::now);
    (start, f())
}

fn elapsed_ns(start: Option<Instant>) -> Option<u64> {
    start.map(|s| u64::try_from(s.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// An RDMSR answer as a trace shows it.
fn msr_read_text(read: MsrRead) -> (Verdict, String) {
    match read {
        MsrRead::Value(v) => (Verdict::Ok, format!("{v:#x}")),
        MsrRead::Gp => (Verdict::Error, "#GP".to_string()),
        MsrRead::NotMine => (Verdict::Unknown, "#GP".to_string()),
    }
}

/// A WRMSR answer as a trace shows it.
fn msr_write_text(write: &MsrWrite) -> (Verdict, String) {
    match write {
        MsrWrite::Done => (Verdict::Ok, "ok".to_string()),
        MsrWrite::Gp => (Verdict::Error, "#GP".to_string()),
        MsrWrite::Exit(reason) => {
            (Verdict::Ok, format!("exit {}", crate::trace::describe_exit(reason)))
        }
        MsrWrite::NotMine => (Verdict::Unknown, "#GP".to_string()),
    }
}

impl<P: Personality> Dispatch for Engine<P> {
    fn mode(&self) -> HypervisorMode {
        self.personality.mode()
    }

    fn hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        match self.trace.get() {
            None => self.run(vcpu, memory, platform, &mut Verdict::Ok),
            Some(sink) => self.run_traced(&**sink, vcpu, memory, platform),
        }
    }

    fn read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        let Some(sink) = self.trace.get() else {
            return self.personality.read_msr(ctx, msr);
        };
        let (start, read) = timed(&**sink, || self.personality.read_msr(ctx, msr));
        let elapsed = elapsed_ns(start);
        let (verdict, text) = msr_read_text(read);
        let access = MsrAccess { vcpu: ctx.vcpu, msr, value: None };
        self.record_msr(&**sink, access, elapsed, verdict, text);
        read
    }

    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        let Some(sink) = self.trace.get() else {
            return self.personality.write_msr(ctx, msr, value);
        };
        let (start, write) = timed(&**sink, || self.personality.write_msr(ctx, msr, value));
        let elapsed = elapsed_ns(start);
        let (verdict, text) = msr_write_text(&write);
        let access = MsrAccess { vcpu: ctx.vcpu, msr, value: Some(value) };
        self.record_msr(&**sink, access, elapsed, verdict, text);
        write
    }

    fn msr_ranges(&self) -> Vec<(u32, u32)> {
        self.personality.msr_ranges().to_vec()
    }

    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf> {
        self.personality.cpuid(vcpu)
    }

    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String> {
        self.personality.explain_cpuid(leaf)
    }

    fn report(&self) -> Vec<String> {
        self.personality.report()
    }

    fn rows(&self) -> Vec<RowInfo> {
        self.personality
            .table()
            .iter()
            .zip(self.permitted.iter())
            .zip(self.counters.iter())
            .map(|((row, permitted), counters)| RowInfo {
                number: row.number,
                name: row.name,
                rings: row.rings.describe(),
                implemented: row.handler.is_some(),
                permitted: self.enabled && *permitted,
                summary: row.summary,
                counters: counters.snapshot(),
            })
            .collect()
    }

    fn refusals(&self) -> &RefusalCounters {
        &self.refusals
    }

    fn set_trace_sink(&self, sink: Arc<dyn TraceSink>) -> bool {
        self.trace.set(sink).is_ok()
    }

    fn halt_ended(&self, vcpu: u32) {
        self.personality.halt_ended(vcpu);
    }
}

impl RefusalCounters {
    /// `(disabled, unknown, malformed)` so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.disabled.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
