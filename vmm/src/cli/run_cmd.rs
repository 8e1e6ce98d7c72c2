//! `polyvisor run` and `polyvisor host-check`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use polyvisor_vmm::trace::stats_table;
use polyvisor_vmm::{
    host_check, run, RunOptions, TraceFormat, TraceOptions, TraceOutput, VmmError,
};

use super::exit::{fail, Status};
use super::ConfigArgs;

/// Arguments of `polyvisor run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Configuration file (TOML); without it the built-in defaults boot the built-in guest.
    #[arg(value_name = "CONFIG")]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Kernel image (ELF), overriding `[vm] kernel`.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Kernel command line, overriding `[vm] cmdline`.
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// Host input for the guest console (a file, a FIFO, or - for standard input), overriding
    /// `[vm] console_input`.
    #[arg(long, value_name = "FILE")]
    console_input: Option<PathBuf>,
    /// Number of vCPUs, overriding `[vm] vcpus`.
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Stop the VM after this many seconds, overriding `[vm] timeout_secs`.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Print only the guest's console and errors: no summary at the end.
    #[arg(long, short)]
    quiet: bool,
    /// Print every hypercall and synthetic-MSR access to standard error, decoded in the
    /// mode's names (docs/tracing.md). FILTER narrows it: comma-separated call names or
    /// numbers, `msr`, `vcpu=N`.
    #[arg(
        long,
        value_name = "FILTER",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    trace: Option<String>,
    /// Write the trace to FILE instead of standard error (implies --trace).
    #[arg(long, value_name = "FILE")]
    trace_file: Option<PathBuf>,
    /// Trace format: `text` lines or `json` lines (implies --trace).
    #[arg(long, value_enum, value_name = "FORMAT")]
    trace_format: Option<TraceFormat>,
    /// Print a table per call when the VM ends: count, errors, refusals, and the engine's
    /// time (median, p99).
    #[arg(long)]
    stats: bool,
    /// Statistics format: `text` (a table) or `json` (implies --stats).
    #[arg(long, value_enum, value_name = "FORMAT")]
    stats_format: Option<StatsFormat>,
}

/// How `--stats` prints its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum StatsFormat {
    /// A table, one row per call.
    #[default]
    Text,
    /// The same rows as a JSON array.
    Json,
}

impl RunArgs {
    /// The trace the flags ask for.
    fn trace(&self) -> Option<TraceOptions> {
        if self.trace.is_none() && self.trace_file.is_none() && self.trace_format.is_none() {
            return None;
        }
        Some(TraceOptions {
            filter: self.trace.clone().unwrap_or_default(),
            output: match &self.trace_file {
                Some(path) => TraceOutput::File(path.clone()),
                None => TraceOutput::Stderr,
            },
            format: self.trace_format.unwrap_or_default(),
        })
    }
}

pub(crate) fn run_vm(args: &RunArgs) -> i32 {
    let mut config_args = args.config.clone();
    if let Some(file) = &args.config_file {
        if config_args.config.is_some() {
            return fail(Status::Usage, "give the configuration once: as CONFIG or as --config")
                .code();
        }
        config_args.config = Some(file.clone());
    }
    let mut loaded = match config_args.load() {
        Ok(l) => l,
        Err(e) => return fail(Status::BadConfig, e).code(),
    };
    let vm = &mut loaded.config.vm;
    if let Some(kernel) = &args.kernel {
        // A kernel given on the command line is relative to the current folder.
        vm.kernel = Some(std::path::absolute(kernel).unwrap_or_else(|_| kernel.clone()));
    }
    if let Some(input) = &args.console_input {
        vm.console_input = Some(if input.as_os_str() == "-" {
            input.clone()
        } else {
            std::path::absolute(input).unwrap_or_else(|_| input.clone())
        });
    }
    if let Some(cmdline) = &args.cmdline {
        vm.cmdline = cmdline.clone();
    }
    if let Some(n) = args.vcpus {
        if !(1..=64).contains(&n) {
            return fail(Status::Usage, format!("--vcpus must be between 1 and 64, not {n}"))
                .code();
        }
        vm.vcpus = n;
    }
    let options = RunOptions {
        timeout: args.timeout.map(Duration::from_secs),
        trace: args.trace(),
        stats: args.stats || args.stats_format.is_some(),
        ..RunOptions::default()
    };
    match run(&loaded, options) {
        Ok(report) => {
            let _ = std::io::stdout().flush();
            if !args.quiet || report.end.is_fault() {
                eprintln!("polyvisor: {}", report.message);
            }
            if !args.quiet {
                let calls: u64 = report.rows.iter().map(|r| r.counters.calls).sum();
                let (disabled, unknown, malformed) = report.refusals;
                eprintln!(
                    "polyvisor: mode {}, trap {}, boot {:?}: {calls} hypercalls served, {} refused, in {:.3} s",
                    loaded.config.hypervisor.mode,
                    report.trap,
                    report.boot,
                    disabled + unknown + malformed
                        + report.rows.iter().map(|r| r.counters.denied + r.counters.wrong_ring).sum::<u64>(),
                    report.elapsed.as_secs_f64()
                );
                for line in &report.report {
                    eprintln!("polyvisor: {line}");
                }
            }
            if let Some(rows) = &report.call_stats {
                match args.stats_format.unwrap_or_default() {
                    StatsFormat::Text => eprint!("{}", stats_table(rows)),
                    StatsFormat::Json => match serde_json::to_string_pretty(rows) {
                        Ok(text) => eprintln!("{text}"),
                        Err(e) => eprintln!("polyvisor: statistics: {e}"),
                    },
                }
            }
            report.exit_status
        }
        Err(VmmError::Personality { source, .. }) => {
            let (status, message) = super::tables::located(&loaded, source);
            fail(status, message).code()
        }
        Err(e) => {
            let status = match &e {
                VmmError::NoTrap { .. } | VmmError::TrapUnavailable { .. } => Status::Unsupported,
                VmmError::KernelRead { .. } | VmmError::Load { .. } | VmmError::Boot { .. } => {
                    Status::BadKernel
                }
                VmmError::Trace(_) => Status::Usage,
                _ => Status::HostFailure,
            };
            fail(status, e).code()
        }
    }
}

/// Arguments of `polyvisor host-check`.
#[derive(Debug, clap::Args)]
pub(crate) struct HostCheckArgs {
    /// Print JSON instead of the report.
    #[arg(long)]
    json: bool,
}

pub(crate) fn host_check_cmd(args: &HostCheckArgs) -> Status {
    let report = host_check();
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(Status::HostFailure, e),
        }
    } else {
        print!("{report}");
    }
    if report.kvm_error.is_some() {
        Status::HostFailure
    } else {
        Status::Ok
    }
}
