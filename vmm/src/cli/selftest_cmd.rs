//! `polyvisor selftest`: the cross-personality matrix on this host (docs/testing.md).

use std::time::Duration;

use polyvisor_config::HypervisorMode;
use polyvisor_vmm::selftest::{run_matrix, Behaviour, SelftestOptions, Verdict};

use super::exit::{fail, Status};

/// Arguments of `polyvisor selftest`.
#[derive(Debug, clap::Args)]
pub(crate) struct SelftestArgs {
    /// A mode (column) to test; repeat for several. Without it, all four.
    #[arg(long, short = 'm', value_name = "MODE")]
    mode: Vec<HypervisorMode>,
    /// A behaviour (row) to test; repeat for several. Without it, all of them.
    #[arg(long, short = 'b', value_name = "BEHAVIOUR", value_parser = parse_behaviour)]
    behaviour: Vec<Behaviour>,
    /// Print the matrix as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Print each failing guest's console after the table.
    #[arg(long)]
    verbose: bool,
    /// Each VM's time limit, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    timeout: u64,
}

fn parse_behaviour(s: &str) -> Result<Behaviour, String> {
    Behaviour::from_name(s).ok_or_else(|| {
        let names: Vec<_> = Behaviour::ALL.iter().map(|b| b.name()).collect();
        format!("unknown behaviour {s:?}; one of: {}", names.join(", "))
    })
}

pub(crate) fn selftest(args: &SelftestArgs) -> Status {
    let defaults = SelftestOptions::default();
    let options = SelftestOptions {
        modes: if args.mode.is_empty() { defaults.modes } else { args.mode.clone() },
        behaviours: if args.behaviour.is_empty() {
            defaults.behaviours
        } else {
            args.behaviour.clone()
        },
        timeout: Duration::from_secs(args.timeout.max(1)),
        ..defaults
    };
    let matrix = match run_matrix(&options, &mut |_| {}) {
        Ok(m) => m,
        Err(e) => return fail(Status::HostFailure, e),
    };
    if args.json {
        match serde_json::to_string_pretty(&matrix) {
            Ok(j) => println!("{j}"),
            Err(e) => return fail(Status::Failed, e),
        }
    } else {
        print!("{matrix}");
        if args.verbose {
            for c in matrix.cells.iter().filter(|c| matches!(c.verdict, Verdict::Fail(_))) {
                println!("--- {} {} console ---", c.mode, c.behaviour);
                print!("{}", c.console.as_deref().unwrap_or(""));
            }
        }
    }
    if matrix.failures() > 0 {
        Status::Failed
    } else {
        Status::Ok
    }
}
