//! `polyvisor selftest`: one behaviour, every personality, on this host.
//!
//! The matrix ([`plan`]) holds, for every (mode, behaviour) cell, a guest scenario
//! (`tests/guests/guests/matrix_<mode>.c`, embedded in the binary through polyvisor-guests)
//! that checks the ABI's documented answer itself and prints one `ok`/`FAIL` line per check,
//! plus the host-side facts (counters, exit status, console, end message) the run must show.
//! [`run_matrix`] runs the cells and gives a verdict for each; `cargo test` and the command run
//! the same code. docs/testing.md explains how to add a behaviour or a personality.

pub mod plan;
mod table;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polyvisor_config::{Config, HypervisorMode, LoadedConfig, Selector};
use polyvisor_core::{CallSelector, Dispatch};
use polyvisor_personalities::hyperv::abi::{HV_DEBUGGING, HV_X64_GUEST_DEBUGGING_AVAILABLE};
use polyvisor_personalities::hyperv::cpuid::Backing;
use polyvisor_personalities::HostFacts;

use crate::host::{host_check, HostReport};
use crate::run::{run, BootKind, RunOptions, RunReport};
use crate::trap::TrapStrategy;
pub use plan::{Behaviour, HostFact, Plan, Scenario};

/// Replaces a cell's engine, e.g. with one that breaks a behaviour on purpose (tests).
pub type DispatchWrapper =
    Arc<dyn Fn(HypervisorMode, Arc<dyn Dispatch>) -> Arc<dyn Dispatch> + Send + Sync>;

/// What to run.
#[derive(Clone)]
pub struct SelftestOptions {
    /// The columns.
    pub modes: Vec<HypervisorMode>,
    /// The rows.
    pub behaviours: Vec<Behaviour>,
    /// Each run's time limit.
    pub timeout: Duration,
    /// A host check to reuse instead of probing again.
    pub host: Option<HostReport>,
    /// Wraps each cell's engine (tests: a deliberately broken personality).
    pub wrap: Option<DispatchWrapper>,
}

impl Default for SelftestOptions {
    fn default() -> Self {
        SelftestOptions {
            modes: vec![
                HypervisorMode::Bhyve,
                HypervisorMode::Kvm,
                HypervisorMode::Hyperv,
                HypervisorMode::Xen,
            ],
            behaviours: Behaviour::ALL.to_vec(),
            timeout: Duration::from_secs(20),
            host: None,
            wrap: None,
        }
    }
}

impl std::fmt::Debug for SelftestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelftestOptions")
            .field("modes", &self.modes)
            .field("behaviours", &self.behaviours)
            .field("timeout", &self.timeout)
            .field("wrap", &self.wrap.is_some())
            .finish_non_exhaustive()
    }
}

/// A cell's verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "kebab-case")]
pub enum Verdict {
    /// The guest saw the documented answer and the host the expected facts.
    Pass,
    /// Something differed: the first difference.
    Fail(String),
    /// The cell does not apply to this ABI or host, and why.
    NotApplicable(String),
}

/// One cell's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    /// The column.
    pub mode: HypervisorMode,
    /// The row.
    pub behaviour: Behaviour,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The guest image that ran.
    pub image: Option<&'static str>,
    /// The trap strategy the run used.
    pub trap: Option<TrapStrategy>,
    /// The guest's `ok` lines.
    pub ok_lines: usize,
    /// Wall time of the cell, milliseconds.
    pub millis: u64,
    /// The guest's console when the cell failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
    /// The scratch folder of the cell's debug channel files, removed when the cell ended.
    #[serde(skip)]
    pub scratch: Option<PathBuf>,
}

/// The whole matrix.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Matrix {
    /// The host's trap strategy (`trap = "auto"`).
    pub trap: TrapStrategy,
    /// What CPL 3 calls do on this host.
    pub cpl3: String,
    /// The columns run.
    pub modes: Vec<HypervisorMode>,
    /// The rows run.
    pub behaviours: Vec<Behaviour>,
    /// Every cell, row by row.
    pub cells: Vec<Cell>,
}

impl Matrix {
    /// The cell of `mode` and `behaviour`.
    pub fn cell(&self, mode: HypervisorMode, behaviour: Behaviour) -> Option<&Cell> {
        self.cells.iter().find(|c| c.mode == mode && c.behaviour == behaviour)
    }

    /// How many cells failed.
    pub fn failures(&self) -> usize {
        self.cells.iter().filter(|c| matches!(c.verdict, Verdict::Fail(_))).count()
    }
}

/// Why the matrix could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    /// KVM cannot be used here.
    #[error("KVM is not available: {0}")]
    Kvm(String),
}

/// Runs the matrix; `progress` hears about each cell as it ends.
pub fn run_matrix(
    options: &SelftestOptions,
    progress: &mut dyn FnMut(&Cell),
) -> Result<Matrix, SelftestError> {
    let host = options.host.clone().unwrap_or_else(host_check);
    if let Some(e) = &host.kvm_error {
        return Err(SelftestError::Kvm(e.clone()));
    }
    let mut cells = Vec::with_capacity(options.behaviours.len() * options.modes.len());
    for &behaviour in &options.behaviours {
        for &mode in &options.modes {
            let cell = run_cell(mode, behaviour, &host, options);
            progress(&cell);
            cells.push(cell);
        }
    }
    Ok(Matrix {
        trap: host.strategy,
        cpl3: host.cpl3_summary(),
        modes: options.modes.clone(),
        behaviours: options.behaviours.clone(),
        cells,
    })
}

/// The configuration of a scenario.
pub fn config_for(mode: HypervisorMode, s: &Scenario, cmdline: String) -> LoadedConfig {
    let mut c = Config::default();
    c.hypervisor.mode = mode;
    c.hypervisor.hypercalls_enabled = s.hypercalls;
    if let Some(name) = s.deny {
        c.hypervisor.deny = vec![Selector(CallSelector::Name(name.to_string()))];
    }
    c.vm.vcpus = s.vcpus;
    c.vm.memory_mib = 64;
    c.vm.cmdline = cmdline;
    LoadedConfig { config: c, path: None, source: String::new() }
}

/// The guest's command line for a cell on this host.
pub fn cmdline(behaviour: Behaviour, host: &HostReport) -> String {
    let insn = host.instruction().to_string().to_lowercase();
    let cpl3 = plan::cpl3_instruction(host).unwrap_or("vmmcall");
    format!("scenario={} insn={insn} cpl3={cpl3}", behaviour.name())
}

/// Runs one cell.
pub fn run_cell(
    mode: HypervisorMode,
    behaviour: Behaviour,
    host: &HostReport,
    options: &SelftestOptions,
) -> Cell {
    let started = Instant::now();
    let mut cell = Cell {
        mode,
        behaviour,
        verdict: Verdict::Pass,
        image: None,
        trap: None,
        ok_lines: 0,
        millis: 0,
        console: None,
        scratch: None,
    };
    let scenario = match plan::plan(mode, behaviour, host) {
        Plan::Run(s) => s,
        Plan::NotApplicable(why) => {
            cell.verdict = Verdict::NotApplicable(why);
            return cell;
        }
    };
    cell.image = Some(scenario.image);
    let mut config = config_for(mode, &scenario, cmdline(behaviour, host));
    let scratch = match scenario.debug_channel.map(DebugScratch::create).transpose() {
        Ok(scratch) => scratch,
        Err(why) => {
            cell.verdict = Verdict::Fail(why);
            return cell;
        }
    };
    if let Some(s) = &scratch {
        s.configure(&mut config.config, &host.facts());
        cell.scratch = Some(s.dir.clone());
    }
    let result = execute(&config, &scenario, host, options);
    // Read before the folder goes with `scratch`.
    let debug_output = scratch.as_ref().and_then(|s| std::fs::read(s.output()).ok());
    drop(scratch);
    cell.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Err(why) => cell.verdict = Verdict::Fail(why),
        Ok(report) => {
            let console = report.console_text();
            cell.trap = Some(report.trap);
            cell.ok_lines = ok_lines(&console, scenario.image);
            let seen =
                Seen { report: &report, console: &console, debug_output: debug_output.as_deref() };
            cell.verdict = verdict(&scenario, &seen);
            if matches!(cell.verdict, Verdict::Fail(_)) {
                cell.console = Some(console);
            }
        }
    }
    cell
}

/// The Hyper-V debug channel's files for one cell: a fresh folder under the system's
/// temporary directory (the selftest runs from an installed binary), removed on drop.
struct DebugScratch {
    dir: PathBuf,
}

impl DebugScratch {
    /// A new folder whose `debug.in` holds `input`.
    fn create(input: &str) -> Result<DebugScratch, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("polyvisor-selftest-{}-{n}", std::process::id()));
        // create_dir, not create_dir_all: a folder that exists already is not ours.
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create the scratch folder {}: {e}", dir.display()))?;
        let scratch = DebugScratch { dir };
        let input_path = scratch.input();
        std::fs::write(&input_path, input)
            .map_err(|e| format!("cannot write {}: {e}", input_path.display()))?;
        Ok(scratch)
    }

    fn input(&self) -> PathBuf {
        self.dir.join("debug.in")
    }

    fn output(&self) -> PathBuf {
        self.dir.join("debug.out")
    }

    /// Points `[hyperv] debug_output`/`debug_input` here and shows the Debugging privilege
    /// and the guest debugging feature on top of the defaults (docs/abi/hyperv.md).
    fn configure(&self, c: &mut Config, host: &HostFacts) {
        let defaults = Backing::new(host, c);
        c.hyperv.privileges = Some(defaults.default_privileges() | HV_DEBUGGING);
        c.hyperv.features = Some(defaults.default_features() | HV_X64_GUEST_DEBUGGING_AVAILABLE);
        c.hyperv.debug_output = Some(self.output());
        c.hyperv.debug_input = Some(self.input());
    }
}

impl Drop for DebugScratch {
    fn drop(&mut self) {
        // Best effort: a folder left behind is named after this process.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn execute(
    config: &LoadedConfig,
    scenario: &Scenario,
    host: &HostReport,
    options: &SelftestOptions,
) -> Result<RunReport, String> {
    let image = polyvisor_guests::image(scenario.image)
        .ok_or_else(|| format!("no guest image {} in this build", scenario.image))?;
    let dispatch = match &options.wrap {
        Some(wrap) => {
            let mode = config.config.hypervisor.mode;
            let engine = polyvisor_personalities::build(&config.config, &host.facts())
                .map_err(|e| format!("cannot build the {mode} personality: {e}"))?;
            Some(wrap(mode, engine))
        }
        None => None,
    };
    run(
        config,
        RunOptions {
            capture_console: true,
            kernel_override: Some(image.to_vec()),
            dispatch,
            timeout: Some(options.timeout),
            host: Some(host.clone()),
            ..RunOptions::default()
        },
    )
    .map_err(|e| format!("cannot run: {e}"))
}

/// The guest's lines that start with `image` and then `tag`.
fn tagged<'a>(console: &'a str, image: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> {
    console.lines().filter(move |l| {
        l.strip_prefix(image).and_then(|r| r.strip_prefix(": ")).is_some_and(|r| r.starts_with(tag))
    })
}

fn ok_lines(console: &str, image: &str) -> usize {
    tagged(console, image, "ok   ").count()
}

/// What one run left for the verdict.
pub struct Seen<'a> {
    /// The run's report.
    pub report: &'a RunReport,
    /// The guest's console.
    pub console: &'a str,
    /// The debug channel's output file, if the cell had one and it was written.
    pub debug_output: Option<&'a [u8]>,
}

/// The verdict of one run: exit status, no `FAIL` line, every `ok` line, the host facts.
pub fn verdict(scenario: &Scenario, seen: &Seen<'_>) -> Verdict {
    let (report, console) = (seen.report, seen.console);
    if let Some(line) = tagged(console, scenario.image, "FAIL ").next() {
        return Verdict::Fail(format!("the guest says: {}", line.trim()));
    }
    if report.exit_status != scenario.exit_status {
        let end = report.message.lines().next().unwrap_or("");
        return Verdict::Fail(format!(
            "exit status {}, want {} ({end})",
            report.exit_status, scenario.exit_status
        ));
    }
    let ok = ok_lines(console, scenario.image);
    if ok != scenario.ok_lines {
        return Verdict::Fail(format!(
            "{ok} ok lines, want {}: the guest skipped or added checks",
            scenario.ok_lines
        ));
    }
    for fact in &scenario.host {
        if let Err(why) = holds(fact, seen) {
            return Verdict::Fail(format!("host: {why}"));
        }
    }
    Verdict::Pass
}

fn holds(fact: &HostFact, seen: &Seen<'_>) -> Result<(), String> {
    let (report, console) = (seen.report, seen.console);
    let row = |name: &str| {
        report
            .rows
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.counters)
            .ok_or_else(|| format!("no row {name} in the hypercall table"))
    };
    let at_least = |what: String, n: u64| {
        if n >= 1 {
            Ok(())
        } else {
            Err(format!("{what}: none counted"))
        }
    };
    let (disabled, unknown, malformed) = report.refusals;
    match fact {
        HostFact::Calls(name) => at_least(format!("{name} calls"), row(name)?.calls),
        HostFact::Errors(name) => at_least(format!("{name} errors"), row(name)?.errors),
        HostFact::Denied(name) => at_least(format!("{name} denials"), row(name)?.denied),
        HostFact::WrongRing(name) => {
            at_least(format!("{name} ring violations"), row(name)?.wrong_ring)
        }
        HostFact::RefusedDisabled => at_least("calls refused as disabled".into(), disabled),
        HostFact::RefusedUnknown => at_least("calls refused as unknown".into(), unknown),
        HostFact::RefusedMalformed => at_least("calls refused as malformed".into(), malformed),
        HostFact::Msrs => at_least("synthetic MSR exits".into(), report.stats.msrs),
        HostFact::Interrupts => at_least("injected interrupts".into(), report.stats.interrupts),
        HostFact::NoHypercalls => match report.stats.hypercalls {
            0 => Ok(()),
            n => Err(format!("{n} hypercalls reached the VMM, want none")),
        },
        HostFact::Console(text) => match console.contains(text) {
            true => Ok(()),
            false => Err(format!("the console lacks {:?}", text.trim_end())),
        },
        HostFact::EndMessage(text) => match report.message.contains(text) {
            true => Ok(()),
            false => Err(format!("the end message lacks {text:?}: {}", report.message)),
        },
        HostFact::DebugOutput(parts) => {
            let want = parts.concat();
            match seen.debug_output {
                None => Err("the debug channel's output file was not written".into()),
                Some(got) if got == want.as_bytes() => Ok(()),
                Some(got) => Err(format!(
                    "the debug channel's output file holds {:?}, want {want:?}",
                    String::from_utf8_lossy(got)
                )),
            }
        }
        HostFact::PvhBoot => match report.boot {
            BootKind::Pvh => Ok(()),
            BootKind::Elf64 => Err("booted ELF64 direct, want PVH".into()),
        },
    }
}
