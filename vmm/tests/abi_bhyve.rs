//! The bhyve personality from the inside: the `bhyve64` (ELF64 direct, 64-bit callers) and
//! `bhyve_pvh32` (PVH, 32-bit callers) guests (tests/guests/guests/bhyve.c) check every row
//! of the hypercall table, CPUID, the refusals and the DTrace calls against the configuration
//! they are told about, and print what the host must have recorded. These tests run them on
//! real KVM under each configuration and compare that with what the host really recorded:
//! the hypercall counters, the end-of-run report (`Dispatch::report()`) and the probe log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use polyvisor_config::LoadedConfig;
use polyvisor_vmm::host::{host_check, HostReport};
use polyvisor_vmm::trap::probe::CallFate;
use polyvisor_vmm::{run, RunOptions, RunReport, VmEnd};

const IMAGES: [&str; 2] = ["bhyve64", "bhyve_pvh32"];
const NAME_ONE: &str = "guest:bhyve:main:one";
const NAME_TWO: &str = "guest:bhyve:main:two";
const ARGS: [u64; 5] = [10, 20, 30, 0x8000_0000_0000_0001, 50];

/// This host, probed once for the whole file.
fn host() -> &'static HostReport {
    static HOST: OnceLock<HostReport> = OnceLock::new();
    HOST.get_or_init(host_check)
}

/// `cpl3=` for the guest: the instructions this host brings to the VMM at CPL 3.
fn cpl3_trapped() -> (bool, bool) {
    let p = host().probe.as_ref();
    (p.is_some_and(|p| p.cpl3_vmcall.trapped()), p.is_some_and(|p| p.cpl3_vmmcall.trapped()))
}

/// The least number of passed checks a run must print: `cpl0` (64-bit image, 32-bit image)
/// for what does not depend on the host, plus the 11 numbers of the ring-3 sweep for each
/// instruction this host traps at CPL 3.
fn min_ok(image: &str, cpl0: (usize, usize)) -> usize {
    let (vmcall, vmmcall) = cpl3_trapped();
    let base = if image == "bhyve64" { cpl0.0 } else { cpl0.1 };
    base + 11 * (usize::from(vmcall) + usize::from(vmmcall))
}

fn cpl3_arg() -> &'static str {
    match cpl3_trapped() {
        (true, true) => "both",
        (true, false) => "vmcall",
        (false, true) => "vmmcall",
        (false, false) => "none",
    }
}

/// The VMM configuration a guest `expect=` scenario stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Enabled,
    Disabled,
    /// `[bhyve] cpuid_leaf = "freebsd15"`, with `hypercalls_enabled` as given.
    Freebsd15 {
        hypercalls_enabled: bool,
    },
    DenyProbe,
}

impl Scenario {
    fn expect(self) -> &'static str {
        match self {
            Scenario::Enabled => "enabled",
            Scenario::Disabled => "disabled",
            Scenario::Freebsd15 { .. } => "freebsd15",
            Scenario::DenyProbe => "deny_probe",
        }
    }
}

/// One guest run.
#[derive(Clone, Copy, Debug)]
struct Setup {
    image: &'static str,
    scenario: Scenario,
    /// `[host] instruction` and the guest's `insn=`.
    insn: &'static str,
    limit: bool,
    vcpus: u32,
}

impl Setup {
    fn new(image: &'static str, scenario: Scenario) -> Self {
        Setup { image, scenario, insn: "auto", limit: false, vcpus: 1 }
    }

    fn cmdline(&self) -> String {
        format!(
            "expect={} insn={} cpl3={} limit={} vcpus={}",
            self.scenario.expect(),
            if self.insn == "auto" { "both" } else { self.insn },
            cpl3_arg(),
            u8::from(self.limit),
            self.vcpus
        )
    }

    fn toml(&self, probe_log: &std::path::Path) -> String {
        let (enabled, leaf, deny) = match self.scenario {
            Scenario::Enabled => (true, "review", ""),
            Scenario::Disabled => (false, "review", ""),
            Scenario::Freebsd15 { hypercalls_enabled } => (hypercalls_enabled, "freebsd15", ""),
            Scenario::DenyProbe => (true, "review", "\"HYPERCALL_DTRACE_PROBE\""),
        };
        format!(
            "[hypervisor]\nmode = \"bhyve\"\nhypercalls_enabled = {enabled}\ndeny = [{deny}]\n\n\
             [vm]\nmemory_mib = 64\nvcpus = {}\ncmdline = \"{}\"\n\n\
             [bhyve]\ncpuid_leaf = \"{leaf}\"\nprobe_log = '{}'\n\n\
             [host]\ninstruction = \"{}\"\n",
            self.vcpus,
            self.cmdline(),
            probe_log.display(),
            self.insn
        )
    }
}

/// A scratch file path unique to this process and call.
fn scratch(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("polyvisor-abi-bhyve-{}-{n}-{what}", std::process::id()))
}

/// What one run left behind.
struct Ran {
    setup: Setup,
    report: RunReport,
    console: String,
    /// The probe log, one JSON value per line.
    events: Vec<serde_json::Value>,
}

impl Ran {
    fn context(&self) -> String {
        format!("{:?}\n--- console ---\n{}--- end ---\n{}", self.setup, self.console, self.report)
    }

    /// The guest's lines that start with `prefix` (after "<image>: "), without it.
    fn lines(&self, prefix: &str) -> Vec<&str> {
        let lead = format!("{}: {prefix}", self.setup.image);
        self.console.lines().filter_map(|l| l.strip_prefix(lead.as_str())).collect()
    }

    fn ok_lines(&self) -> usize {
        self.lines("ok   ").len()
    }

    /// Whether the guest passed a check whose text starts with `what`.
    fn passed(&self, what: &str) -> bool {
        self.lines("ok   ").iter().any(|l| l.starts_with(what))
    }
}

fn run_setup(setup: Setup) -> Ran {
    let log = scratch("probes.jsonl");
    let _ = std::fs::remove_file(&log);
    let cfg = LoadedConfig::parse_str(&setup.toml(&log)).expect("the config parses");
    let image = polyvisor_guests::image(setup.image).expect("the guest is built");
    let report = run(
        &cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(image.to_vec()),
            timeout: Some(Duration::from_secs(30)),
            host: Some(host().clone()),
            ..RunOptions::default()
        },
    )
    .expect("the VM runs");
    let text = std::fs::read_to_string(&log).expect("the probe log exists");
    let _ = std::fs::remove_file(&log);
    let events = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let console = report.console_text();
    let ran = Ran { setup, report, console, events };
    println!("{:?}: {} ok lines, {:.3} s", setup, ran.ok_lines(), ran.report.elapsed.as_secs_f64());
    for line in ran.lines("limit loop: ") {
        println!("{}: the 4093 PROBE_CREATE calls of the limit loop took {line}", setup.image);
    }
    ran
}

/// `key=value` words as a map.
fn words(s: &str) -> BTreeMap<&str, &str> {
    s.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

fn number(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// What every run must show: the guest passed every check (and made at least `min_ok`), and
/// the host recorded exactly what the guest says it must have.
fn assert_common(r: &Ran, min_ok: usize) {
    let ctx = r.context();
    assert_eq!(r.report.end, VmEnd::ExitPort(0), "{ctx}");
    assert_eq!(r.report.exit_status, 0, "{ctx}");
    assert!(!r.console.contains(": FAIL "), "{ctx}");
    assert!(r.ok_lines() >= min_ok, "only {} ok lines, want {min_ok}\n{ctx}", r.ok_lines());
    let summary = format!("{} ok, 0 failed", r.ok_lines());
    assert_eq!(r.lines("").last().copied(), Some(summary.as_str()), "{ctx}");

    // The counters.
    let counters = r.lines("expect host counters: ");
    assert_eq!(counters.len(), 1, "{ctx}");
    let c = words(counters[0]);
    assert_eq!(r.report.stats.hypercalls, number(c["hypercalls"]), "dispatched\n{ctx}");
    let (disabled, unknown, malformed) = r.report.refusals;
    assert_eq!(disabled, number(c["disabled"]), "refused while disabled\n{ctx}");
    assert_eq!(unknown, number(c["unknown"]), "refused as unknown\n{ctx}");
    assert_eq!(malformed, 0, "{ctx}");
    assert_eq!(r.report.rows.len(), 7, "{ctx}");
    for row in &r.report.rows {
        let want = r.lines(&format!("expect host row {}: ", row.number));
        assert_eq!(want.len(), 1, "row {}\n{ctx}", row.number);
        let w = words(want[0]);
        let got = &row.counters;
        assert_eq!(
            (got.calls, got.errors, got.denied, got.wrong_ring),
            (number(w["calls"]), number(w["errors"]), number(w["denied"]), number(w["wrong_ring"])),
            "row {} {} (calls, errors, denied, wrong ring)\n{ctx}",
            row.number,
            row.name
        );
    }

    // The end-of-run report.
    let n = r.lines("expect host report lines: ");
    assert_eq!(n.len(), 1, "{ctx}");
    let want: Vec<&str> = r.lines("expect host report: ");
    assert_eq!(want.len() as u64, number(n[0]), "{ctx}");
    assert_eq!(r.report.report, want, "{ctx}");

    // The probe log: every event the guest saw answered SUCCESS, in order, nothing else.
    let want = r.lines("expect probe event: ");
    assert_eq!(r.events.len(), want.len(), "probe events\n{ctx}");
    let end_ns = u64::try_from(r.report.elapsed.as_nanos()).unwrap() + 100_000_000;
    let mut last_ts = 0;
    for (e, w) in r.events.iter().zip(&want) {
        let (id_name, name) = w.split_once(" name=").unwrap();
        let w = words(id_name);
        let obj = e.as_object().expect("an object");
        assert_eq!(obj.len(), 6, "{e}");
        assert_eq!(e["probe_id"].as_u64(), Some(number(w["id"])), "{e}\n{ctx}");
        let name = name.strip_prefix('"').and_then(|n| n.strip_suffix('"'));
        assert_eq!(e["name"].as_str(), name, "{e}");
        assert_eq!(e["thread"].as_u64(), Some(number(w["thread"])), "{e}\n{ctx}");
        assert_eq!(e["vcpu"].as_u64(), Some(number(w["vcpu"])), "{e}\n{ctx}");
        let args: Vec<u64> =
            e["args"].as_array().unwrap().iter().map(|a| a.as_u64().unwrap()).collect();
        assert_eq!(args, ARGS, "{e}");
        let ts = e["timestamp_ns"].as_u64().unwrap();
        assert!(ts > 0 && ts >= last_ts && ts < end_ns, "timestamp {ts} after {last_ts}\n{ctx}");
        last_ts = ts;
    }

    // What an instruction the host does not trap at CPL 3 did (64-bit: the probe VM's finding).
    for line in r.lines("host: ") {
        println!("{}: host: {line}", r.setup.image);
        let fate = host().probe.as_ref().map(|p| {
            if line.starts_with("VMCALL ") {
                p.cpl3_vmcall
            } else {
                p.cpl3_vmmcall
            }
        });
        assert!(fate.is_some_and(|f| !f.trapped()), "{line}\n{ctx}");
        if r.setup.image == "bhyve64" {
            let got = line.split(" -> ").nth(1).unwrap_or("");
            match fate {
                Some(CallFate::AnsweredByHost(v)) => {
                    let rax =
                        got.split_whitespace().next().unwrap_or("").trim_start_matches("rax=");
                    assert_eq!(number(rax) as u32 as u64, v, "{line}");
                }
                Some(CallFate::InvalidOpcode) => assert!(got.starts_with("#UD"), "{line}"),
                _ => {}
            }
        }
    }
}

/// The ring rules from ring 3 with VMMCALL, where the host brings it to the VMM: PROTOTYPE
/// succeeds, the DTrace rows answer ERROR (and count as wrong ring).
fn assert_ring3_rules(r: &Ran) {
    let ctx = r.context();
    if !cpl3_trapped().1 {
        println!(
            "VMMCALL at CPL 3 is not trapped on this host: ring 3 checked by engine tests only"
        );
        return;
    }
    if r.setup.insn == "vmcall" {
        assert!(r.passed("number 0x0, VMMCALL at CPL 3 -> #UD (refused instruction)"), "{ctx}");
        return;
    }
    assert!(r.passed("number 0x0, VMMCALL at CPL 3 -> RAX=0 (served)"), "{ctx}");
    for nr in 1..=6 {
        let denied = r.setup.scenario == Scenario::DenyProbe && nr == 2;
        let want = if denied { "#UD (denied by the config)" } else { "RAX=1 (ring 0 only)" };
        assert!(r.passed(&format!("number {nr:#x}, VMMCALL at CPL 3 -> {want}")), "{nr}\n{ctx}");
        if !denied {
            assert!(r.report.rows[nr].counters.wrong_ring >= 1, "{ctx}");
        }
    }
    assert!(r.passed("refused PROBE_CREATE leaves RDI alone"), "{ctx}");
}

/// The probe events every enabled run must have, whatever the guest says.
fn assert_enabled_events(r: &Ran) {
    let ctx = r.context();
    let want = if r.setup.limit { 4 } else { 3 };
    assert_eq!(r.events.len(), want, "{ctx}");
    let e = &r.events[0];
    assert_eq!((e["probe_id"].as_u64(), e["name"].as_str()), (Some(1), Some(NAME_ONE)), "{e}");
    assert_eq!((e["thread"].as_u64(), e["vcpu"].as_u64()), (Some(0x1001), Some(0)), "{e}");
    let two = &r.events[2];
    let thread = if r.setup.image == "bhyve64" { 0x7000_0000_0000_1002 } else { 0x1002 };
    assert_eq!((two["probe_id"].as_u64(), two["name"].as_str()), (Some(2), Some(NAME_TWO)));
    assert_eq!(two["thread"].as_u64(), Some(thread), "RDX at the caller's width: {two}");
    assert_eq!(two["vcpu"].as_u64(), Some(u64::from(r.setup.vcpus - 1)), "{two}");
    let created = if r.setup.limit { 4096 } else { 3 };
    let fired = if r.setup.limit { 3 } else { 2 };
    assert_eq!(
        r.report.report.first().map(String::as_str),
        Some(format!("bhyve: {created} guest DTrace probes created, {fired} fired").as_str()),
        "{ctx}"
    );
    assert!(
        r.report.report.contains(&format!("bhyve probe 1 \"{NAME_ONE}\": fired 2 times")),
        "{ctx}"
    );
}

/// Nothing served: every call was refused as disabled, nothing counted on a row, no probes.
fn assert_all_refused(r: &Ran) {
    let ctx = r.context();
    assert!(r.report.stats.hypercalls > 0, "{ctx}");
    assert_eq!(r.report.refusals, (r.report.stats.hypercalls, 0, 0), "{ctx}");
    for row in &r.report.rows {
        let c = &row.counters;
        assert_eq!(c.calls + c.errors + c.denied + c.wrong_ring, 0, "{}\n{ctx}", row.name);
    }
    assert!(r.report.report.is_empty(), "{ctx}");
    assert!(r.events.is_empty(), "{ctx}");
}

#[test]
fn enabled_every_row_from_both_rings_with_both_instructions_and_the_probe_limit() {
    for image in IMAGES {
        let r = run_setup(Setup { limit: true, vcpus: 2, ..Setup::new(image, Scenario::Enabled) });
        assert_common(&r, min_ok(image, (56, 53)));
        assert_ring3_rules(&r);
        assert_enabled_events(&r);
        assert!(r.passed("the last probe has id 4096"), "{}", r.context());
        assert!(r.passed("PROBE_CREATE of a 4097th probe"), "{}", r.context());
        assert!(r.report.report.contains(&"bhyve probe 4096 \"limit:4096\": fired 1 times".into()));
    }
}

#[test]
fn enabled_with_only_one_instruction_accepted() {
    for image in IMAGES {
        for insn in ["vmcall", "vmmcall"] {
            let r = run_setup(Setup { insn, ..Setup::new(image, Scenario::Enabled) });
            assert_common(&r, min_ok(image, (49, 46)));
            assert_ring3_rules(&r);
            assert_enabled_events(&r);
            let other = if insn == "vmcall" { "VMMCALL" } else { "VMCALL" };
            assert!(
                r.passed(&format!("number 0x0, {other} at CPL 0 -> #UD (refused instruction)")),
                "{}",
                r.context()
            );
        }
    }
}

#[test]
fn disabled_every_call_is_ud() {
    for image in IMAGES {
        let r = run_setup(Setup::new(image, Scenario::Disabled));
        assert_common(&r, min_ok(image, (29, 27)));
        assert!(
            r.passed("CPUID 0x40000001.EAX = 0 (review: hypercalls disabled)"),
            "{}",
            r.context()
        );
        assert_all_refused(&r);
    }
}

#[test]
fn freebsd15_leaf_shows_ext_dest_id_and_every_call_is_ud() {
    for image in IMAGES {
        for hypercalls_enabled in [true, false] {
            let r = run_setup(Setup::new(image, Scenario::Freebsd15 { hypercalls_enabled }));
            assert_common(&r, min_ok(image, (29, 27)));
            assert!(
                r.passed("CPUID 0x40000001.EAX = 1 (FreeBSD 15: EXT_DEST_ID)"),
                "{}",
                r.context()
            );
            assert_all_refused(&r);
        }
    }
}

#[test]
fn a_call_denied_by_the_config_is_ud_from_both_rings() {
    for image in IMAGES {
        let r = run_setup(Setup::new(image, Scenario::DenyProbe));
        assert_common(&r, min_ok(image, (50, 47)));
        assert_ring3_rules(&r);
        let ctx = r.context();
        let probe = &r.report.rows[2].counters;
        assert_eq!((probe.calls, probe.errors, probe.wrong_ring), (0, 0, 0), "{ctx}");
        assert!(probe.denied >= 4, "{ctx}");
        assert!(r.report.rows[1].counters.calls >= 3, "PROBE_CREATE still served\n{ctx}");
        assert!(r.events.is_empty(), "{ctx}");
        assert_eq!(r.report.report, vec!["bhyve: 3 guest DTrace probes created, 0 fired"], "{ctx}");
    }
}

/// The guest's checks can fail: told "enabled" while the VMM has hypercalls off, it reports
/// FAIL lines and exits 1.
#[test]
fn the_guest_notices_a_configuration_it_was_not_told_about() {
    let setup = Setup::new("bhyve64", Scenario::Disabled);
    let log = scratch("probes.jsonl");
    let text = setup.toml(&log).replace("expect=disabled", "expect=enabled");
    let cfg = LoadedConfig::parse_str(&text).unwrap();
    let r = run(
        &cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(polyvisor_guests::image("bhyve64").unwrap().to_vec()),
            timeout: Some(Duration::from_secs(30)),
            host: Some(host().clone()),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let _ = std::fs::remove_file(&log);
    let console = r.console_text();
    assert_eq!(r.exit_status, 1, "{console}");
    assert!(console.contains("FAIL CPUID 0x40000001.EAX = 1"), "{console}");
    assert!(console.contains("FAIL number 0x0, VMCALL at CPL 0 -> RAX=0 (served)"), "{console}");
}

/// `polyvisor run` prints the personality's report (the probe counts) at the end.
#[test]
fn the_cli_prints_the_probe_counts() {
    let setup = Setup::new("bhyve64", Scenario::Enabled);
    let (config, kernel, log) = (scratch("bhyve.toml"), scratch("bhyve64.elf"), scratch("p.jsonl"));
    std::fs::write(&config, setup.toml(&log)).unwrap();
    std::fs::write(&kernel, polyvisor_guests::image("bhyve64").unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_polyvisor"))
        .arg("run")
        .arg(&config)
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .unwrap();
    let events = std::fs::read_to_string(&log).unwrap_or_default();
    for f in [&config, &kernel, &log] {
        let _ = std::fs::remove_file(f);
    }
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("polyvisor: bhyve: 3 guest DTrace probes created, 2 fired\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("polyvisor: bhyve probe 2 \"{NAME_TWO}\": fired 1 times\n")),
        "{stderr}"
    );
    assert_eq!(events.lines().count(), 3, "{events}");
}
