//! `polyvisor run --trace` and `--stats`: the engine's [`TraceSink`] for a real VM — a
//! filter, text or JSON-lines output, and per-call statistics printed when the VM ends
//! (`docs/tracing.md`).

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use polyvisor_core::{
    CallStats, HypervisorMode, RowInfo, StatsRow, TraceEvent, TraceKind, TraceSink,
};

/// How trace lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TraceFormat {
    /// One stable line per event, without times (`docs/tracing.md`).
    #[default]
    Text,
    /// One JSON object per line ([`TraceEvent`]), with a timestamp.
    Json,
}

/// Where trace lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TraceOutput {
    /// Standard error (the guest console keeps standard output).
    #[default]
    Stderr,
    /// A file, created or truncated.
    File(PathBuf),
    /// Kept in [`RunReport::trace`](crate::RunReport::trace) (tests, embedders).
    Capture,
}

/// What to trace and where.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// The filter text (`docs/tracing.md`); empty traces everything.
    pub filter: String,
    /// Where the lines go.
    pub output: TraceOutput,
    /// Text or JSON lines.
    pub format: TraceFormat,
}

/// Which events a trace shows, from `--trace=FILTER`: comma-separated call names or numbers,
/// `msr` for every synthetic-MSR access, `vcpu=N` for one vCPU's events. Calls and `msr`
/// widen what is shown (none named: everything); `vcpu=` narrows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceFilter {
    /// Hypercall numbers to show; `None` when neither calls nor `msr` were named.
    calls: Option<Vec<u64>>,
    /// Whether MSR accesses are shown (when calls are named).
    msr: bool,
    /// vCPUs to show; empty for all.
    vcpus: Vec<u32>,
}

impl TraceFilter {
    /// Parses `text` against the mode's table. A name matches a row's name (ignoring case)
    /// or, when only one row ends with it, the row's last words (`sched_op` for
    /// `__HYPERVISOR_sched_op`, `SEND_IPI` for `KVM_HC_SEND_IPI`).
    pub fn parse(text: &str, mode: HypervisorMode, rows: &[RowInfo]) -> Result<Self, String> {
        let mut filter = TraceFilter::default();
        let mut calls = Vec::new();
        let mut named = false;
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some(v) = term.strip_prefix("vcpu=") {
                let n = v.parse().map_err(|_| format!("--trace: {term:?}: not a vCPU number"))?;
                filter.vcpus.push(n);
            } else if term.eq_ignore_ascii_case("msr") {
                filter.msr = true;
                named = true;
            } else {
                calls.push(resolve(term, mode, rows)?);
                named = true;
            }
        }
        filter.calls = named.then_some(calls);
        Ok(filter)
    }

    /// Whether the filter lets `event` through.
    pub fn shows(&self, event: &TraceEvent) -> bool {
        let vcpu = self.vcpus.is_empty() || self.vcpus.contains(&event.vcpu);
        let what = match (&self.calls, event.kind) {
            (None, _) => true,
            (Some(calls), TraceKind::Hypercall) => calls.contains(&event.call.number),
            (Some(_), TraceKind::Rdmsr | TraceKind::Wrmsr) => self.msr,
        };
        vcpu && what
    }
}

/// A filter term as a call number.
fn resolve(term: &str, mode: HypervisorMode, rows: &[RowInfo]) -> Result<u64, String> {
    let number = match term.strip_prefix("0x").or_else(|| term.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => term.parse().ok(),
    };
    if let Some(n) = number {
        return Ok(n);
    }
    if let Some(row) = rows.iter().find(|r| r.name.eq_ignore_ascii_case(term)) {
        return Ok(row.number);
    }
    let tail = format!("_{}", term.to_ascii_lowercase());
    let matches: Vec<&RowInfo> =
        rows.iter().filter(|r| r.name.to_ascii_lowercase().ends_with(&tail)).collect();
    match matches.as_slice() {
        [row] => Ok(row.number),
        [] => Err(format!(
            "--trace: {term:?} is not a {mode} hypercall; the {mode} hypercalls are: {}; \
             other terms: msr, vcpu=N, a call number",
            rows.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
        )),
        many => Err(format!(
            "--trace: {term:?} matches several {mode} hypercalls: {}",
            many.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The sink a VM's engine sends events to: the filtered trace and the statistics.
pub struct VmTrace {
    trace: Option<(TraceFilter, TraceFormat, Mutex<Writer>)>,
    stats: Option<CallStats>,
}

enum Writer {
    Stderr,
    File(std::io::BufWriter<std::fs::File>),
    Capture(Vec<String>),
}

impl std::fmt::Debug for VmTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmTrace")
            .field("trace", &self.trace.as_ref().map(|(filter, format, _)| (filter, format)))
            .field("stats", &self.stats.is_some())
            .finish()
    }
}

impl VmTrace {
    /// A sink tracing as `trace` says (if given) and gathering statistics if `stats`.
    /// `rows` and `mode` resolve the filter; a bad filter or an unwritable file is an error
    /// message.
    pub fn new(
        trace: Option<&TraceOptions>,
        stats: bool,
        mode: HypervisorMode,
        rows: &[RowInfo],
    ) -> Result<Self, String> {
        let trace = match trace {
            None => None,
            Some(t) => {
                let filter = TraceFilter::parse(&t.filter, mode, rows)?;
                let writer = match &t.output {
                    TraceOutput::Stderr => Writer::Stderr,
                    TraceOutput::Capture => Writer::Capture(Vec::new()),
                    TraceOutput::File(path) => std::fs::File::create(path)
                        .map(|f| Writer::File(std::io::BufWriter::new(f)))
                        .map_err(|e| {
                            format!("cannot create the trace file {}: {e}", path.display())
                        })?,
                };
                Some((filter, t.format, Mutex::new(writer)))
            }
        };
        Ok(VmTrace { trace, stats: stats.then(CallStats::default) })
    }

    /// The statistics table so far, when statistics are on.
    pub fn stats(&self) -> Option<Vec<StatsRow>> {
        self.stats.as_ref().map(CallStats::rows)
    }

    /// Flushes the trace file and returns the captured lines (empty unless capturing).
    pub fn finish(&self) -> Vec<String> {
        let Some((_, _, writer)) = &self.trace else {
            return Vec::new();
        };
        let Ok(mut w) = writer.lock() else {
            return Vec::new();
        };
        match &mut *w {
            Writer::File(f) => {
                let _ = f.flush();
                Vec::new()
            }
            Writer::Capture(lines) => std::mem::take(lines),
            Writer::Stderr => Vec::new(),
        }
    }
}

impl TraceSink for VmTrace {
    fn timed(&self) -> bool {
        self.stats.is_some()
    }

    fn record(&self, mut event: TraceEvent) {
        if let Some(stats) = &self.stats {
            stats.add(&event);
        }
        let Some((filter, format, writer)) = &self.trace else {
            return;
        };
        if !filter.shows(&event) {
            return;
        }
        let line = match format {
            TraceFormat::Text => event.to_string(),
            TraceFormat::Json => {
                event.time_ns = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                serde_json::to_string(&event).unwrap_or_default()
            }
        };
        let Ok(mut w) = writer.lock() else {
            return;
        };
        match &mut *w {
            Writer::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Writer::File(f) => {
                let _ = writeln!(f, "{line}");
            }
            Writer::Capture(lines) => lines.push(line),
        }
    }
}

/// A duration in nanoseconds, in the unit that suits it.
fn duration(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

/// The statistics as a table: one row per call, hypercalls first.
pub fn stats_table(rows: &[StatsRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<40} {:>8} {:>7} {:>8} {:>10} {:>10}",
        "kind", "call", "count", "errors", "refused", "median", "p99"
    );
    for r in rows {
        let name = match r.kind {
            TraceKind::Hypercall => format!("{} ({})", r.name, r.number),
            TraceKind::Rdmsr | TraceKind::Wrmsr => format!("{} ({:#x})", r.name, r.number),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<40} {:>8} {:>7} {:>8} {:>10} {:>10}",
            r.kind.as_str(),
            name,
            r.count,
            r.errors,
            r.refused,
            duration(r.median_ns),
            duration(r.p99_ns)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyvisor_core::{CallTrace, CounterSnapshot, Verdict};

    fn rows() -> Vec<RowInfo> {
        ["__HYPERVISOR_sched_op", "__HYPERVISOR_console_io", "__HYPERVISOR_vcpu_op"]
            .iter()
            .zip([29u64, 18, 24])
            .map(|(name, number)| RowInfo {
                number,
                name,
                rings: "0".into(),
                implemented: true,
                permitted: true,
                summary: "",
                counters: CounterSnapshot::default(),
            })
            .collect()
    }

    fn event(vcpu: u32, kind: TraceKind, number: u64) -> TraceEvent {
        TraceEvent {
            time_ns: 0,
            vcpu,
            kind,
            cpl: None,
            cpu_mode: None,
            instruction: None,
            call: CallTrace::new(number, "x"),
            verdict: Verdict::Ok,
            result: "0".into(),
            elapsed_ns: None,
        }
    }

    #[test]
    fn filters_by_name_number_msr_and_vcpu() {
        let mode = HypervisorMode::Xen;
        let f = TraceFilter::parse("", mode, &rows()).unwrap();
        assert!(f.shows(&event(3, TraceKind::Wrmsr, 0)));
        let f = TraceFilter::parse("sched_op, 0x12", mode, &rows()).unwrap();
        assert!(f.shows(&event(0, TraceKind::Hypercall, 29)));
        assert!(f.shows(&event(0, TraceKind::Hypercall, 18)));
        assert!(!f.shows(&event(0, TraceKind::Hypercall, 24)));
        assert!(!f.shows(&event(0, TraceKind::Rdmsr, 0x4000_0000)));
        let f = TraceFilter::parse("__HYPERVISOR_VCPU_OP,msr,vcpu=1", mode, &rows()).unwrap();
        assert!(f.shows(&event(1, TraceKind::Hypercall, 24)));
        assert!(f.shows(&event(1, TraceKind::Rdmsr, 0)));
        assert!(!f.shows(&event(0, TraceKind::Hypercall, 24)));
        let f = TraceFilter::parse("vcpu=0", mode, &rows()).unwrap();
        assert!(f.shows(&event(0, TraceKind::Rdmsr, 0)));
        assert!(!f.shows(&event(2, TraceKind::Hypercall, 29)));
    }

    #[test]
    fn unknown_names_list_the_modes_calls() {
        let e = TraceFilter::parse("sched_opp", HypervisorMode::Xen, &rows()).unwrap_err();
        assert!(e.contains("\"sched_opp\" is not a xen hypercall"), "{e}");
        assert!(e.contains("__HYPERVISOR_console_io"), "{e}");
        let e = TraceFilter::parse("op", HypervisorMode::Xen, &rows()).unwrap_err();
        assert!(e.contains("matches several"), "{e}");
        assert!(TraceFilter::parse("vcpu=x", HypervisorMode::Xen, &rows()).is_err());
    }

    #[test]
    fn stats_table_has_a_row_per_call() {
        let r = StatsRow {
            kind: TraceKind::Hypercall,
            name: "sched_op".into(),
            number: 29,
            count: 3,
            errors: 1,
            refused: 0,
            median_ns: 1500,
            p99_ns: 25_000,
        };
        let t = stats_table(&[r]);
        let line = t.lines().nth(1).unwrap();
        assert!(line.starts_with("hypercall sched_op (29)"), "{t}");
        assert!(line.ends_with("1.5 us    25.0 us"), "{t}");
    }
}
