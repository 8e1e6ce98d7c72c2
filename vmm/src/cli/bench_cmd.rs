//! `polyvisor bench`: hypercall round trips against the port-I/O floor, dispatch-only cost,
//! start-up, memory and SMP throughput on this host (docs/performance.md).

use std::path::PathBuf;
use std::time::Duration;

use polyvisor_config::HypervisorMode;
use polyvisor_vmm::bench::{run_bench, BenchError, BenchOptions};

use super::exit::{fail, Status};

/// Arguments of `polyvisor bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// A mode to measure (repeat for several); without it, all four.
    #[arg(long, short = 'm', value_name = "MODE")]
    mode: Vec<HypervisorMode>,
    /// Round trips timed per call (and per port write), at most 20000.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    iterations: u32,
    /// Calls per vCPU in the throughput runs; default: the iterations.
    #[arg(long, value_name = "N")]
    throughput_calls: Option<u32>,
    /// Calls per measured call in the in-process dispatch-only loop.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    dispatch_iterations: u32,
    /// Skip the comparison runs with the eager completion (a completion KVM_RUN per call).
    #[arg(long)]
    no_compare: bool,
    /// Print the results as JSON on standard output instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the results as JSON to FILE (the table is still printed).
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// Each VM's time limit, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
}

pub(crate) fn bench(args: &BenchArgs) -> Status {
    if !(1..=20_000).contains(&args.iterations) {
        return fail(Status::Usage, "--iterations must be between 1 and 20000");
    }
    let defaults = BenchOptions::default();
    let options = BenchOptions {
        modes: if args.mode.is_empty() { defaults.modes } else { args.mode.clone() },
        iterations: args.iterations,
        throughput_calls: args.throughput_calls.unwrap_or(args.iterations).max(1),
        dispatch_iterations: args.dispatch_iterations.max(1),
        compare_eager: !args.no_compare,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let report = match run_bench(&options, &mut |step| eprintln!("polyvisor bench: {step}")) {
        Ok(r) => r,
        Err(e) => {
            let status = match e {
                BenchError::Vmm { .. } | BenchError::Host(_) => Status::HostFailure,
                _ => Status::Failed,
            };
            return fail(status, e);
        }
    };
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => return fail(Status::Failed, e),
    };
    if let Some(path) = &args.json_file {
        if let Err(e) = std::fs::write(path, format!("{json}\n")) {
            return fail(Status::Failed, format!("cannot write {}: {e}", path.display()));
        }
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{report}");
    }
    Status::Ok
}
