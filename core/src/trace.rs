//! Hypercall and synthetic-MSR tracing: the event the engine hands an optional
//! [`TraceSink`], the decoded call a personality describes, and per-call statistics.
//!
//! With no sink installed the engine pays one branch per call; with one, it asks the
//! personality to describe the call in its ABI's names ([`Personality::trace_call`],
//! [`Personality::trace_result`], [`Personality::msr_name`]) and passes the event on.
//!
//! [`Personality::trace_call`]: crate::Personality::trace_call
//! [`Personality::trace_result`]: crate::Personality::trace_result
//! [`Personality::msr_name`]: crate::Personality::msr_name

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::outcome::{ExitReason, Next, Outcome};
use crate::regs::{CpuMode, Gpr};
use crate::table::HypercallRow;

/// One decoded argument: `name=value`, or a bare value when `name` is `None` (a sub-op name,
/// a rep range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceArg {
    /// The argument's name in the ABI, if it is shown with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The value as the ABI names it (a constant's name, or a number).
    pub value: String,
}

/// A call as its personality describes it: number, name and arguments in the ABI's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallTrace {
    /// The call number (hypercall number, call code, or MSR index).
    pub number: u64,
    /// The call's name as the spec spells it (`sched_op`, `HvCallSendIpi`, `KVM_HC_SEND_IPI`).
    pub name: String,
    /// The decoded arguments, in order.
    #[serde(default)]
    pub args: Vec<TraceArg>,
}

impl CallTrace {
    /// A call with no arguments yet.
    pub fn new(number: u64, name: impl Into<String>) -> Self {
        CallTrace { number, name: name.into(), args: Vec::new() }
    }

    /// Adds `name=value`.
    #[must_use]
    pub fn arg(mut self, name: &str, value: impl fmt::Display) -> Self {
        self.args.push(TraceArg { name: Some(name.to_string()), value: value.to_string() });
        self
    }

    /// Adds `name=0x...`.
    #[must_use]
    pub fn hex(self, name: &str, value: u64) -> Self {
        self.arg(name, format_args!("{value:#x}"))
    }

    /// Adds `name=N` for a count or an index: decimal when small, hex otherwise ([`num`]).
    #[must_use]
    pub fn num(self, name: &str, value: u64) -> Self {
        self.arg(name, num(value))
    }

    /// Adds a bare value (a sub-op name, a rep range).
    #[must_use]
    pub fn item(mut self, value: impl fmt::Display) -> Self {
        self.args.push(TraceArg { name: None, value: value.to_string() });
        self
    }

    /// The call named by `table` (or `"unknown"`) with `args` raw as `a0=0x..`; trailing
    /// zero arguments are left out. The default description of [`Personality::trace_call`].
    ///
    /// [`Personality::trace_call`]: crate::Personality::trace_call
    pub fn raw<P: ?Sized>(table: &[HypercallRow<P>], number: u64, args: &[u64]) -> Self {
        let name = row_name(table, number).unwrap_or(UNKNOWN);
        let used = args.iter().rposition(|a| *a != 0).map_or(0, |i| i + 1);
        let mut call = CallTrace::new(number, name);
        for (i, a) in args.iter().take(used).enumerate() {
            call = call.hex(&format!("a{i}"), *a);
        }
        call
    }
}

/// A number as traces show counts, indices and call numbers: decimal below 0x10000, hex
/// above (an all-ones value reads better as `0xffffffffffffffff`).
pub fn num(value: u64) -> String {
    if value < 0x1_0000 {
        value.to_string()
    } else {
        format!("{value:#x}")
    }
}

/// The name of a call number no row has.
pub const UNKNOWN: &str = "unknown";

/// The name of `number` in a table sorted by number.
pub fn row_name<P: ?Sized>(table: &[HypercallRow<P>], number: u64) -> Option<&'static str> {
    table
        .binary_search_by_key(&number, |r| r.number)
        .ok()
        .and_then(|i| table.get(i))
        .map(|r| r.name)
}

impl fmt::Display for CallTrace {
    /// `name(arg, name=value, ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.name)?;
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match &a.name {
                Some(n) => write!(f, "{n}={}", a.value)?,
                None => f.write_str(&a.value)?,
            }
        }
        f.write_str(")")
    }
}

/// What the engine decided about one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The handler ran and succeeded (an MSR access was served).
    Ok,
    /// The handler ran and answered an error or a fault (an MSR access got #GP).
    Error,
    /// Refused: hypercalls are disabled for this VM.
    Disabled,
    /// Refused: no row has this number (an MSR the personality does not serve).
    Unknown,
    /// Refused: the row is reserved without an implementation.
    Unimplemented,
    /// Refused: the configuration denies the call.
    Denied,
    /// Refused: the caller's ring may not make the call.
    WrongRing,
    /// Refused: the personality's decoder rejected the registers.
    Malformed,
}

impl Verdict {
    /// Whether the engine refused the call before any handler ran.
    pub fn is_refusal(self) -> bool {
        !matches!(self, Verdict::Ok | Verdict::Error)
    }

    /// Whether the access failed, by the handler or by a refusal.
    pub fn is_error(self) -> bool {
        self != Verdict::Ok
    }

    /// The policy decision in words, for text traces; `None` when a handler ran.
    pub fn refusal_text(self) -> Option<&'static str> {
        match self {
            Verdict::Ok | Verdict::Error => None,
            Verdict::Disabled => Some("refused: hypercalls disabled"),
            Verdict::Unknown => Some("refused: unknown call"),
            Verdict::Unimplemented => Some("refused: not implemented"),
            Verdict::Denied => Some("refused: denied by configuration"),
            Verdict::WrongRing => Some("refused: wrong ring"),
            Verdict::Malformed => Some("refused: malformed call"),
        }
    }
}

/// Which kind of access an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A VMCALL or VMMCALL.
    Hypercall,
    /// An RDMSR of a synthetic MSR.
    Rdmsr,
    /// A WRMSR of a synthetic MSR.
    Wrmsr,
}

impl TraceKind {
    /// `hypercall`, `rdmsr`, `wrmsr`.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::Hypercall => "hypercall",
            TraceKind::Rdmsr => "rdmsr",
            TraceKind::Wrmsr => "wrmsr",
        }
    }
}

/// One traced hypercall or synthetic-MSR access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Nanoseconds since the Unix epoch when the sink received the event (0 when the sink
    /// does not stamp events).
    #[serde(default)]
    pub time_ns: u64,
    /// The vCPU index.
    pub vcpu: u32,
    /// Hypercall, RDMSR or WRMSR.
    pub kind: TraceKind,
    /// The caller's privilege level (hypercalls only; MSR accesses are CPL 0 by the hardware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpl: Option<u8>,
    /// The caller's execution mode: `64-bit`, `32-bit` or `real` (hypercalls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_mode: Option<String>,
    /// `VMCALL` or `VMMCALL` (hypercalls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// The call, decoded by the personality.
    pub call: CallTrace,
    /// What the engine decided.
    pub verdict: Verdict,
    /// The result in the ABI's terms (`-ENOSYS`, `HV_STATUS_ACCESS_DENIED`, `#UD`, `0x1`).
    pub result: String,
    /// The engine's time for the call, when statistics are on (see [`TraceSink::timed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ns: Option<u64>,
}

impl fmt::Display for TraceEvent {
    /// The text trace line: stable (no time), one line per event.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vcpu{}", self.vcpu)?;
        match self.kind {
            TraceKind::Hypercall => {
                if let Some(cpl) = self.cpl {
                    write!(f, " cpl{cpl}")?;
                }
                if let Some(mode) = &self.cpu_mode {
                    write!(f, " {mode}")?;
                }
                if let Some(insn) = &self.instruction {
                    write!(f, " {insn}")?;
                }
                write!(f, " #{} {}", num(self.call.number), self.call)?;
            }
            TraceKind::Rdmsr | TraceKind::Wrmsr => {
                let insn = if self.kind == TraceKind::Rdmsr { "RDMSR" } else { "WRMSR" };
                write!(f, " {insn} {:#x} {}", self.call.number, self.call)?;
            }
        }
        write!(f, " -> {}", self.result)?;
        if let Some(text) = self.verdict.refusal_text() {
            write!(f, " [{text}]")?;
        }
        Ok(())
    }
}

/// Where the engine sends trace events. Installed once per engine
/// ([`Dispatch::set_trace_sink`](crate::Dispatch::set_trace_sink)); called from every vCPU
/// thread.
pub trait TraceSink: Send + Sync {
    /// Whether the engine should time each call ([`TraceEvent::elapsed_ns`]); without it
    /// nothing is timed.
    fn timed(&self) -> bool {
        false
    }

    /// Receives one event.
    fn record(&self, event: TraceEvent);
}

/// The usual result text for an outcome: an injected exception's mnemonic, the VM's end, a
/// halt or a continuation, with `value` naming what the ABI's result register `reg` holds.
pub fn describe_outcome(outcome: &Outcome, reg: Gpr, value: impl Fn(u64) -> String) -> String {
    let written = outcome.writes.get(reg).map(&value);
    match (&outcome.next, written) {
        (Next::Inject(e), _) => e.mnemonic().to_string(),
        (Next::Exit(reason), _) => format!("exit {}", describe_exit(reason)),
        (Next::Halt, Some(v)) => format!("{v}, halt"),
        (Next::Halt, None) => "halt".to_string(),
        (Next::Retry, Some(v)) => format!("{v}, continue"),
        (Next::Retry, None) => "continue".to_string(),
        (Next::Advance, Some(v)) => v,
        (Next::Advance, None) => "done".to_string(),
    }
}

/// An end of the VM in words.
pub fn describe_exit(reason: &ExitReason) -> String {
    match reason {
        ExitReason::Poweroff(code) => format!("poweroff({code})"),
        ExitReason::Reboot => "reboot".to_string(),
        ExitReason::Crash(text) => format!("crash({text})"),
        ExitReason::Other(text) => format!("({text})"),
    }
}

/// A table of `(value, "NAME")` pairs for constants in scope, each spelled once: what
/// [`negated_errno`] and the personalities' sub-op tables look names up in.
///
/// ```
/// const EPERM: u32 = 1;
/// const ENOENT: u64 = 2;
/// const NAMES: &[(u64, &str)] = polyvisor_core::constant_names![EPERM, ENOENT];
/// assert_eq!(NAMES, &[(1, "EPERM"), (2, "ENOENT")]);
/// ```
#[macro_export]
macro_rules! constant_names {
    ($($name:ident),* $(,)?) => {
        &[$(($name as u64, stringify!($name))),*]
    };
}

/// `-NAME` for a negated error code found in `names`, else the value as a signed number.
pub fn negated_errno(value: i64, names: &[(u64, &str)]) -> String {
    let found =
        (value < 0).then(|| names.iter().find(|(code, _)| *code == value.unsigned_abs())).flatten();
    match found {
        Some((_, name)) => format!("-{name}"),
        None if (-4096..0).contains(&value) => format!("-{}", value.unsigned_abs()),
        None if value >= 0 => num(value.unsigned_abs()),
        None => format!("{value:#x}"),
    }
}

/// A result register as the caller's signed `long`: sign-extended from 32 bits for callers
/// outside long mode.
pub fn signed_result(mode: CpuMode, value: u64) -> i64 {
    match mode {
        CpuMode::Long64 => value as i64,
        CpuMode::Protected32 | CpuMode::Real => i64::from(value as u32 as i32),
    }
}

/// One row of the statistics table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRow {
    /// Hypercall, RDMSR or WRMSR.
    pub kind: TraceKind,
    /// The call's name.
    pub name: String,
    /// The call number (or MSR index).
    pub number: u64,
    /// Accesses seen.
    pub count: u64,
    /// Of those, errors and faults the handler answered.
    pub errors: u64,
    /// Of those, refusals by the engine (disabled, unknown, denied, wrong ring, malformed).
    pub refused: u64,
    /// Median engine time in nanoseconds.
    pub median_ns: u64,
    /// 99th-percentile engine time in nanoseconds.
    pub p99_ns: u64,
}

#[derive(Debug, Default)]
struct Samples {
    number: u64,
    count: u64,
    errors: u64,
    refused: u64,
    times: Vec<u64>,
}

/// Statistics for each call: counts and the engine's time, gathered from trace events.
#[derive(Debug, Default)]
pub struct CallStats {
    rows: Mutex<BTreeMap<(TraceKind, String), Samples>>,
}

/// Most time samples kept per call: past this, counts go on and the percentiles are those of
/// the first samples (a VM that makes millions of calls must not grow the host's memory
/// without bound).
pub const MAX_SAMPLES: usize = 1 << 20;

impl CallStats {
    /// Adds one event.
    pub fn add(&self, event: &TraceEvent) {
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        let s = rows.entry((event.kind, event.call.name.clone())).or_default();
        s.number = event.call.number;
        if event.verdict.is_refusal() {
            s.refused += 1;
        } else if event.verdict == Verdict::Error {
            s.errors += 1;
        }
        s.count += 1;
        if let (Some(t), true) = (event.elapsed_ns, s.times.len() < MAX_SAMPLES) {
            s.times.push(t);
        }
    }

    /// The table, hypercalls first, then by name.
    pub fn rows(&self) -> Vec<StatsRow> {
        let Ok(rows) = self.rows.lock() else {
            return Vec::new();
        };
        rows.iter()
            .map(|((kind, name), s)| {
                let mut times = s.times.clone();
                times.sort_unstable();
                StatsRow {
                    kind: *kind,
                    name: name.clone(),
                    number: s.number,
                    count: s.count,
                    errors: s.errors,
                    refused: s.refused,
                    median_ns: percentile(&times, 50),
                    p99_ns: percentile(&times, 99),
                }
            })
            .collect()
    }
}

/// The `pct`th percentile of sorted samples (nearest rank); 0 for none.
pub fn percentile(sorted: &[u64], pct: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len() as u64;
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    usize::try_from(rank - 1).ok().and_then(|i| sorted.get(i)).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Exception;

    fn event(verdict: Verdict, elapsed: u64) -> TraceEvent {
        TraceEvent {
            time_ns: 0,
            vcpu: 0,
            kind: TraceKind::Hypercall,
            cpl: Some(0),
            cpu_mode: Some("64-bit".into()),
            instruction: Some("VMCALL".into()),
            call: CallTrace::new(29, "sched_op").item("SCHEDOP_yield"),
            verdict,
            result: "0".into(),
            elapsed_ns: Some(elapsed),
        }
    }

    #[test]
    fn text_lines() {
        let e = event(Verdict::Ok, 5);
        assert_eq!(e.to_string(), "vcpu0 cpl0 64-bit VMCALL #29 sched_op(SCHEDOP_yield) -> 0");
        let mut e = event(Verdict::WrongRing, 5);
        e.result = "-EPERM".into();
        e.cpl = Some(3);
        assert_eq!(
            e.to_string(),
            "vcpu0 cpl3 64-bit VMCALL #29 sched_op(SCHEDOP_yield) -> -EPERM [refused: wrong ring]"
        );
        let m = TraceEvent {
            kind: TraceKind::Wrmsr,
            cpl: None,
            cpu_mode: None,
            instruction: None,
            call: CallTrace::new(0x4000_0001, "HV_X64_MSR_HYPERCALL").hex("value", 0x1001),
            result: "ok".into(),
            ..event(Verdict::Ok, 0)
        };
        assert_eq!(
            m.to_string(),
            "vcpu0 WRMSR 0x40000001 HV_X64_MSR_HYPERCALL(value=0x1001) -> ok"
        );
    }

    #[test]
    fn json_round_trips() {
        let e = event(Verdict::Denied, 7);
        let text = serde_json::to_string(&e).unwrap();
        let back: TraceEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn raw_description_trims_trailing_zeros() {
        let table: &[HypercallRow<()>] = &[];
        let c = CallTrace::raw(table, 5, &[1, 0, 2, 0, 0, 0]);
        assert_eq!(c.to_string(), "unknown(a0=0x1, a1=0x0, a2=0x2)");
    }

    #[test]
    fn outcomes_and_errnos() {
        let hex = |v: u64| format!("{v:#x}");
        assert_eq!(describe_outcome(&Outcome::invalid_opcode(), Gpr::Rax, hex), "#UD");
        assert_eq!(
            describe_outcome(&Outcome::inject(Exception::GeneralProtection(0)), Gpr::Rax, hex),
            "#GP"
        );
        assert_eq!(describe_outcome(&Outcome::ret(Gpr::Rax, 3), Gpr::Rax, hex), "0x3");
        assert_eq!(
            describe_outcome(&Outcome::exit(ExitReason::Poweroff(0)), Gpr::Rax, hex),
            "exit poweroff(0)"
        );
        let names = [(38, "ENOSYS")];
        assert_eq!(negated_errno(-38, &names), "-ENOSYS");
        assert_eq!(negated_errno(-5, &names), "-5");
        assert_eq!(negated_errno(7, &names), "7");
    }

    #[test]
    fn stats_median_and_p99() {
        let stats = CallStats::default();
        for t in 1..=100 {
            stats.add(&event(Verdict::Ok, t));
        }
        stats.add(&event(Verdict::Error, 1000));
        stats.add(&event(Verdict::Denied, 0));
        let rows = stats.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.count, r.errors, r.refused), (102, 1, 1));
        assert_eq!(r.median_ns, 50);
        assert_eq!(r.p99_ns, 100);
        assert_eq!(percentile(&[], 50), 0);
    }
}
