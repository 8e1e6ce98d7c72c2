//! `polyvisor run --trace` on real KVM: one guest per mode runs with tracing on, under a
//! configuration that gives successes, errors and policy refusals (denied, disabled, wrong
//! ring where this host traps a CPL-3 call); the decoded lines are compared with the golden
//! files in `vmm/tests/golden/trace/<mode>.txt` (`POLYVISOR_BLESS=1` rewrites them, see
//! docs/tracing.md). The JSON-lines form parses and round-trips through `TraceEvent`, and the
//! statistics agree with the engine's counters.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use polyvisor_config::LoadedConfig;
use polyvisor_core::{TraceEvent, TraceKind, Verdict};
use polyvisor_vmm::host::HostReport;
use polyvisor_vmm::trap::probe::CallFate;
use polyvisor_vmm::{run, RunOptions, RunReport, TraceFormat, TraceOptions, TraceOutput, VmEnd};

mod common;
use common::cpl3_fate as fate;

fn host() -> &'static HostReport {
    static HOST: OnceLock<HostReport> = OnceLock::new();
    HOST.get_or_init(polyvisor_vmm::host_check)
}

/// Whether this host brings a CPL-3 VMMCALL to the VMM (the goldens were recorded on such a
/// host: docs/host-support.md); elsewhere the ring-3 lines differ and the test says so.
fn cpl3_vmmcall_trapped() -> bool {
    host().probe.as_ref().is_some_and(|p| p.cpl3_vmmcall.trapped())
}

/// One traced run: the mode's guest, its configuration and the least `ok` lines it prints.
struct Case {
    mode: &'static str,
    image: &'static str,
    /// What the run shows, for the golden file's section header.
    scenario: &'static str,
    /// Added to the `[hypervisor]` section.
    hypervisor: &'static str,
    cmdline: String,
    min_ok: usize,
}

/// What a traced run left.
struct Traced {
    report: RunReport,
    lines: Vec<String>,
}

fn run_case(case: &Case, format: TraceFormat, filter: &str) -> Traced {
    let text = format!(
        "[hypervisor]\nmode = \"{}\"\n{}\n[vm]\nmemory_mib = 64\nvcpus = 1\ncmdline = \"{}\"\n",
        case.mode, case.hypervisor, case.cmdline
    );
    let cfg = LoadedConfig::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let bytes = polyvisor_guests::image(case.image).expect("the guest is built");
    let report = run(
        &cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(bytes.to_vec()),
            timeout: Some(Duration::from_secs(20)),
            host: Some(host().clone()),
            trace: Some(TraceOptions {
                filter: filter.to_string(),
                output: TraceOutput::Capture,
                format,
            }),
            stats: true,
            ..RunOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.image));
    let lines = report.trace.clone();
    println!("== {} [{}]\n{}\n{report}", case.image, case.cmdline, lines.join("\n"));
    Traced { report, lines }
}

/// The guest's own verdict: exit status 0, no FAIL line, at least `min_ok` passed checks.
fn assert_guest_passed(case: &Case, r: &RunReport) {
    let console = r.console_text();
    let context = || format!("--- console ---\n{console}--- end ---\n{r}");
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", context());
    let failed: Vec<&str> = console.lines().filter(|l| l.contains("FAIL")).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", context());
    let ok = console.lines().filter(|l| l.contains("[ok]") || l.contains(" ok ")).count();
    assert!(ok >= case.min_ok, "only {ok} ok lines (want >= {})\n{}", case.min_ok, context());
}

/// Host-dependent parts of a trace line made stable: values read from clocks and the TSC.
fn normalize(line: &str) -> String {
    const CLOCKS: [&str; 4] = [
        "HV_X64_MSR_TIME_REF_COUNT",
        "HV_X64_MSR_VP_RUNTIME",
        "HV_X64_MSR_TSC_FREQUENCY",
        "HV_X64_MSR_REFERENCE_TSC",
    ];
    if CLOCKS.iter().any(|c| line.contains(&format!(" {c}("))) && line.contains("RDMSR") {
        if let Some((head, _)) = line.rsplit_once(" -> ") {
            return format!("{head} -> <clock>");
        }
    }
    line.to_string()
}

fn golden_path(mode: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/trace/{mode}.txt"))
}

/// Compares the runs' lines with the mode's golden file (one `## image: cmdline` section per
/// run), or rewrites it under `POLYVISOR_BLESS=1`.
fn assert_golden(mode: &str, runs: &[(&Case, &[String])]) {
    let mut got = String::new();
    for (case, lines) in runs {
        got.push_str(&format!(
            "## {} [{}]: {}\n",
            case.image,
            case.hypervisor.replace('\n', "; "),
            case.scenario
        ));
        // A guest that polls a clock until it moves reads it a varying number of times.
        let mut last = String::new();
        for line in lines.iter().map(|l| normalize(l)) {
            if !(line == last && line.contains("<clock>")) {
                got.push_str(&line);
                got.push('\n');
            }
            last = line;
        }
    }
    let path = golden_path(mode);
    if std::env::var_os("POLYVISOR_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (POLYVISOR_BLESS=1 writes it)", path.display()));
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        let show = |t: &str| t.lines().skip(first).take(3).collect::<Vec<_>>().join("\n");
        panic!(
            "{mode}: the trace differs from {} at line {}:\n--- got ---\n{}\n--- want ---\n{}\n\
             (POLYVISOR_BLESS=1 rewrites the golden file after a deliberate change)",
            path.display(),
            first + 1,
            show(&got),
            show(&want)
        );
    }
}

/// The traces of a mode's cases agree with its golden file and with the engine's counters.
fn traced_golden(cases: &[Case]) -> Vec<String> {
    assert!(cpl3_vmmcall_trapped(), "the goldens assume a host that traps a CPL-3 VMMCALL");
    let runs: Vec<Traced> = cases.iter().map(traced).collect();
    let sections: Vec<(&Case, &[String])> =
        cases.iter().zip(&runs).map(|(c, t)| (c, t.lines.as_slice())).collect();
    assert_golden(cases[0].mode, &sections);
    runs.into_iter().flat_map(|t| t.lines).collect()
}

/// One case's trace, checked against the guest's verdict and the engine's counters.
fn traced(case: &Case) -> Traced {
    let t = run_case(case, TraceFormat::Text, "");
    assert_guest_passed(case, &t.report);
    assert!(!t.lines.is_empty(), "no trace lines");
    // Every call the engine counted is a line; the statistics say the same.
    let served: u64 = t.report.rows.iter().map(|r| r.counters.calls).sum();
    let refused: u64 =
        t.report.rows.iter().map(|r| r.counters.denied + r.counters.wrong_ring).sum();
    let (disabled, unknown, malformed) = t.report.refusals;
    let is_msr = |l: &&String| l.contains(" RDMSR ") || l.contains(" WRMSR ");
    let hypercall_lines = t.lines.iter().filter(|l| !is_msr(l)).count() as u64;
    assert_eq!(hypercall_lines, served + refused + disabled + unknown + malformed);
    let stats = t.report.call_stats.as_ref().expect("statistics were asked for");
    let counted: u64 =
        stats.iter().filter(|s| s.kind == TraceKind::Hypercall).map(|s| s.count).sum();
    assert_eq!(counted, hypercall_lines, "{stats:#?}");
    t
}

fn bhyve() -> Case {
    Case {
        mode: "bhyve",
        image: "bhyve64",
        scenario: "successes, errors, denied, unimplemented, unknown, wrong ring at CPL 3",
        hypervisor: "hypercalls_enabled = true\ndeny = [\"HYPERCALL_DTRACE_PROBE\"]",
        cmdline: "expect=deny_probe insn=both cpl3=vmmcall limit=0 vcpus=1".into(),
        min_ok: 60,
    }
}

fn bhyve_disabled() -> Case {
    Case {
        scenario: "hypercalls disabled",
        hypervisor: "hypercalls_enabled = false",
        cmdline: "expect=disabled insn=both cpl3=vmmcall limit=0 vcpus=1".into(),
        min_ok: 20,
        ..bhyve()
    }
}

#[test]
fn bhyve_trace_matches_golden() {
    let lines = traced_golden(&[bhyve(), bhyve_disabled()]);
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("-> #UD [refused: hypercalls disabled]"));
    assert!(has("HYPERCALL_DTRACE_PROBE_CREATE(name=\"guest:bhyve:main:one\")"));
    assert!(has("-> #UD [refused: denied by configuration]"));
    assert!(has("cpl3 64-bit VMMCALL #1 HYPERCALL_DTRACE_PROBE_CREATE"));
    assert!(has("-> HYPERCALL_RET_ERROR [refused: wrong ring]"));
}

/// `kvm_abi`'s words for a CPL-3 instruction: the engine answers it (`abi`) or the host does.
fn kvm_cpl3(fate: CallFate) -> &'static str {
    if fate.trapped() {
        "abi"
    } else {
        "host"
    }
}

fn kvm_case() -> Case {
    const DENY: &str = "hypercalls_enabled = true\n\
                        deny = [\"KVM_HC_VAPIC_POLL_IRQ\", \"KVM_HC_SEND_IPI\", 12]";
    let p = host().probe.as_ref().expect("the probe VM ran");
    let facts = host().facts();
    // The feature bits the personality advertises under this policy (CPUID 0x40000001 EAX).
    let text = format!("[hypervisor]\nmode = \"kvm\"\n{DENY}\n");
    let cfg = LoadedConfig::parse_str(&text).unwrap();
    let engine = polyvisor_personalities::build(&cfg.config, &facts).unwrap();
    let features = engine.cpuid(0).iter().find(|l| l.function == 0x4000_0001).unwrap().eax;
    Case {
        mode: "kvm",
        image: "kvm_abi64",
        scenario: "successes, errors, denied, unknown, wrong ring at CPL 3, kvmclock MSRs",
        hypervisor: DENY,
        cmdline: format!(
            "expect=deny deny=1,10,12 features={features:#x} cpl3_vmcall={} cpl3_vmmcall={} \
             pairing={}",
            kvm_cpl3(p.cpl3_vmcall),
            kvm_cpl3(p.cpl3_vmmcall),
            if facts.stable_tsc { "ok" } else { "eopnotsupp" }
        ),
        min_ok: 90,
    }
}

#[test]
fn kvm_trace_matches_golden() {
    let lines = traced_golden(&[kvm_case()]);
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("KVM_HC_SEND_IPI(bitmap="));
    assert!(has("-> -KVM_EPERM [refused: denied by configuration]"));
    assert!(has("cpl3 64-bit VMMCALL"));
    assert!(has("[refused: wrong ring]"));
    assert!(has("WRMSR 0x4b564d01 MSR_KVM_SYSTEM_TIME_NEW"));
}

fn hyperv_case() -> Case {
    let p = host().probe.as_ref().expect("the probe VM ran");
    Case {
        mode: "hyperv",
        image: "hyperv_features64",
        scenario: "successes, status errors, denied, #UD from the decoder, synthetic MSRs",
        hypervisor: "hypercalls_enabled = true\ndeny = [\"HvCallNotifyLongSpinWait\"]",
        cmdline: format!(
            "deny=0x8 cpl3_vmcall={} cpl3_vmmcall={}",
            fate(p.cpl3_vmcall, false, true),
            fate(p.cpl3_vmmcall, false, false)
        ),
        min_ok: 170,
    }
}

#[test]
fn hyperv_trace_matches_golden() {
    let lines = traced_golden(&[hyperv_case()]);
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("HvCallNotifyLongSpinWait("));
    assert!(has("-> HV_STATUS_ACCESS_DENIED [refused: denied by configuration]"));
    assert!(has("WRMSR 0x40000001 HV_X64_MSR_HYPERCALL(value="));
    assert!(has("HvCallFlushVirtualAddressList(rep "));
    assert!(has("flags=ALL_PROCESSORS"));
    assert!(has("-> #UD [refused: malformed call]"));
}

/// `xen_abi`'s words for this host (vmm/tests/abi_xen.rs `host_words`), without the clock:
/// the guest's wall-clock check is skipped.
fn xen_words() -> String {
    let h = host();
    let p = h.probe.as_ref().expect("the probe VM ran");
    let token = |f: CallFate| match f {
        f if f.trapped() => "a-1".to_string(),
        CallFate::AnsweredByHost(rax) => format!("a{}", i64::from(rax as u32 as i32)),
        CallFate::InvalidOpcode => "f6".to_string(),
        _ => "any".to_string(),
    };
    let mut words = format!("mem_mib=64 stable={}", u8::from(h.stable_tsc));
    if let Some(khz) = h.tsc_khz {
        words.push_str(&format!(" tsc_khz={khz}"));
    }
    words + &format!(" r3vmcall={} r3vmmcall={}", token(p.cpl3_vmcall), token(p.cpl3_vmmcall))
}

fn xen_case() -> Case {
    Case {
        mode: "xen",
        image: "xen_abi64",
        scenario: "sub-ops, errors, denied, unimplemented, wrong ring at CPL 3",
        hypervisor: "hypercalls_enabled = true\ndeny = [\"__HYPERVISOR_console_io\", 24]",
        cmdline: format!("expect=deny {}", xen_words()),
        min_ok: 200,
    }
}

#[test]
fn xen_trace_matches_golden() {
    let lines = traced_golden(&[xen_case()]);
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("sched_op(SCHEDOP_shutdown, reason=poweroff)") || has("SCHEDOP_"));
    assert!(has("xen_version(XENVER_"));
    assert!(has("hvm_op(HVMOP_"));
    assert!(has("-> -EPERM [refused: denied by configuration]"));
    assert!(has("-> -EPERM [refused: wrong ring]"));
    assert!(has("-> -ENOSYS [refused: not implemented]"));
}

/// JSON lines parse, round-trip through `TraceEvent`, carry a timestamp, and print as the
/// text lines of the same run.
#[test]
fn json_lines_parse_and_round_trip() {
    let case = bhyve();
    let text = run_case(&case, TraceFormat::Text, "").lines;
    let json = run_case(&case, TraceFormat::Json, "").lines;
    assert_eq!(json.len(), text.len());
    for (j, t) in json.iter().zip(&text) {
        let event: TraceEvent = serde_json::from_str(j).unwrap_or_else(|e| panic!("{e}: {j}"));
        assert!(event.time_ns > 1_600_000_000_000_000_000, "a Unix time in ns: {j}");
        assert!(event.elapsed_ns.is_some(), "statistics were on: {j}");
        let again: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(again, serde_json::from_str::<serde_json::Value>(j).unwrap());
        assert_eq!(&event.to_string(), t);
    }
    let denied = json.iter().filter(|j| j.contains("\"verdict\":\"denied\"")).count();
    assert!(denied >= 3, "{json:#?}");
}

/// A filter narrows the trace to named calls and to a vCPU; the statistics still count all.
#[test]
fn filter_narrows_the_trace() {
    let case = bhyve();
    let t = run_case(&case, TraceFormat::Text, "PROBE_CREATE,0,vcpu=0");
    assert!(!t.lines.is_empty());
    assert!(
        t.lines
            .iter()
            .all(|l| l.contains("HYPERCALL_DTRACE_PROBE_CREATE(")
                || l.contains("HYPERCALL_PROTOTYPE(")),
        "{:#?}",
        t.lines
    );
    let stats = t.report.call_stats.unwrap();
    assert!(stats.iter().any(|s| s.name == "HYPERCALL_DTRACE_RESERVED1" && s.refused > 0));
    let none = run_case(&case, TraceFormat::Text, "vcpu=1");
    assert!(none.lines.is_empty(), "{:#?}", none.lines);
}

fn polyvisor(args: &[&str]) -> (i32, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_polyvisor")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The command line: text to standard error, JSON lines to a file, statistics as JSON, and a
/// filter naming no call is a usage error listing the mode's calls.
#[test]
fn cli_trace_and_stats() {
    let (code, stdout, stderr) =
        polyvisor(&["run", "--mode", "xen", "--enable-hypercalls", "--trace", "-q", "--stats"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("default guest done"), "the console stays on stdout: {stdout}");
    assert!(
        stderr.contains("vcpu0 cpl0 64-bit VMCALL #17 xen_version(XENVER_version) -> 0x40011"),
        "{stderr}"
    );
    assert!(stderr.contains("hypercall xen_version (17)"), "{stderr}");

    let file = std::env::temp_dir().join(format!("polyvisor-trace-{}.jsonl", std::process::id()));
    let path = file.to_str().unwrap();
    let (code, _, stderr) = polyvisor(&[
        "run",
        "--mode",
        "xen",
        "--enable-hypercalls",
        "-q",
        "--trace=xen_version",
        "--trace-file",
        path,
        "--trace-format",
        "json",
        "--stats-format",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let events: Vec<TraceEvent> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!((events[0].call.name.as_str(), events[0].verdict), ("xen_version", Verdict::Ok));
    let stats: Vec<polyvisor_core::StatsRow> = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].count, stats[0].errors), (1, 0));

    let (code, _, stderr) = polyvisor(&["run", "--mode", "kvm", "--trace=KVM_HC_NOPE"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("\"KVM_HC_NOPE\" is not a kvm hypercall"), "{stderr}");
    assert!(stderr.contains("KVM_HC_SEND_IPI"), "{stderr}");
}

/// Xen's event channels and timer in a trace: the PV-platform guest's sub-ops are named and
/// their structures read. Not a golden file: how often the guest polls while it waits for a
/// timer or the host's input depends on timing.
#[test]
fn xen_event_channels_are_decoded() {
    let case = Case {
        mode: "xen",
        image: "xen_pv_pvh64",
        scenario: "event channels, VIRQ_TIMER, XenStore and console rings",
        hypervisor: "hypercalls_enabled = true",
        cmdline: String::new(),
        min_ok: 60,
    };
    let t = run_case(&case, TraceFormat::Text, "event_channel_op,set_timer_op,vcpu_op");
    assert_guest_passed(&case, &t.report);
    let has = |s: &str| t.lines.iter().any(|l| l.contains(s));
    for want in [
        "event_channel_op(EVTCHNOP_bind_virq, virq=VIRQ_TIMER, vcpu=0) -> 0",
        "event_channel_op(EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=",
        "event_channel_op(EVTCHNOP_send, port=",
        "event_channel_op(EVTCHNOP_unmask, port=",
        "event_channel_op(EVTCHNOP_close, port=",
        "set_timer_op(timeout=",
    ] {
        assert!(has(want), "no line with {want:?}:\n{}", t.lines.join("\n"));
    }
    // The filter kept only the named calls.
    assert!(t.lines.iter().all(|l| {
        ["event_channel_op(", "set_timer_op(", "vcpu_op("].iter().any(|c| l.contains(c))
    }));
}
