//! Command-line interface: parsing with clap, one module per subcommand.

mod bench_cmd;
mod config_cmd;
mod exit;
mod run_cmd;
mod selftest_cmd;
mod tables;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use polyvisor_config::{Config, ConfigError, HypervisorMode, LoadedConfig};

/// polyvisor: a VMM on Linux KVM that shows its guests another hypervisor's face —
/// bhyve, KVM, Hyper-V or Xen.
#[derive(Debug, Parser)]
#[command(name = "polyvisor", version, propagate_version = true)]
#[command(
    about = "A VMM on Linux KVM that shows its guests another hypervisor's face: bhyve, KVM, Hyper-V or Xen"
)]
#[command(after_help = "Exit status: see `docs/cli.md`; 0 means success, 2 a usage error, \
                        3 an invalid configuration.")]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a VM and run it to its end; the exit status is the guest's (docs/cli.md).
    Run(run_cmd::RunArgs),
    /// What this host's KVM can do: trap strategy and its evidence, MSR exits, modes.
    HostCheck(run_cmd::HostCheckArgs),
    /// Print the CPUID leaves a mode shows its guests, decoded.
    Cpuid(tables::CpuidArgs),
    /// Print a mode's hypercall table: number, name, rings, and whether it is enabled.
    Hypercalls(tables::HypercallsArgs),
    /// Check or show configuration files.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Measure hypercall round trips against the port-I/O floor, dispatch-only cost,
    /// start-up, memory and SMP throughput on this host (docs/performance.md).
    Bench(bench_cmd::BenchArgs),
    /// Run the cross-personality matrix on this host: every behaviour in every mode, as a
    /// table of pass / FAIL / n/a; exit status 1 on any failure (docs/testing.md).
    Selftest(selftest_cmd::SelftestArgs),
}

/// Options shared by commands that read a configuration.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConfigArgs {
    /// Configuration file (TOML); without it the built-in defaults apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Hypervisor mode, overriding the configuration's.
    #[arg(long, short = 'm', value_name = "MODE")]
    mode: Option<HypervisorMode>,
    /// Turn hypercalls on, overriding the configuration (they are off by default).
    #[arg(long)]
    enable_hypercalls: bool,
}

impl ConfigArgs {
    /// Loads the configuration and applies the command-line overrides.
    pub(crate) fn load(&self) -> Result<LoadedConfig, ConfigError> {
        let mut loaded = match &self.config {
            Some(path) => Config::load(path)?,
            None => LoadedConfig::builtin(),
        };
        if let Some(mode) = self.mode {
            loaded.config.hypervisor.mode = mode;
        }
        if self.enable_hypercalls {
            loaded.config.hypervisor.hypercalls_enabled = true;
        }
        Ok(loaded)
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run_cmd::run_vm(&args),
        Command::HostCheck(args) => run_cmd::host_check_cmd(&args).code(),
        Command::Cpuid(args) => tables::cpuid(&args).code(),
        Command::Hypercalls(args) => tables::hypercalls(&args).code(),
        Command::Config(cmd) => config_cmd::run(&cmd).code(),
        Command::Bench(args) => bench_cmd::bench(&args).code(),
        Command::Selftest(args) => selftest_cmd::selftest(&args).code(),
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
}
