//! `polyvisor config check|show`.

use std::path::{Path, PathBuf};

use polyvisor_config::Config;

use super::exit::{fail, Status};
use super::tables::{build_engine, host_facts};

/// Configuration subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file: syntax, types, ranges, hypercall names; nothing runs.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print a configuration with every default filled in.
    Show {
        /// The file to show; without it, the built-in defaults.
        file: Option<PathBuf>,
    },
}

pub(crate) fn run(cmd: &ConfigCommand) -> Status {
    match cmd {
        ConfigCommand::Check { file } => check(file),
        ConfigCommand::Show { file } => show(file.as_ref()),
    }
}

fn check(file: &Path) -> Status {
    let loaded = match Config::load(file) {
        Ok(l) => l,
        Err(e) => return fail(Status::BadConfig, e),
    };
    if let Some(kernel) = &loaded.config.vm.kernel {
        let path = loaded.resolve(kernel);
        if let Err(e) = std::fs::metadata(&path) {
            let msg = format!("kernel {}: {e}", path.display());
            return fail(Status::BadConfig, loaded.error_at(&["vm", "kernel"], None, msg));
        }
    }
    // Building the personality checks what only it knows: hypercall names, backed features.
    match build_engine(&loaded, &host_facts()) {
        Ok(_) => {}
        Err((Status::Unsupported, msg)) => {
            println!("{}: valid (note: {msg})", file.display());
            return Status::Ok;
        }
        Err((status, msg)) => return fail(status, msg),
    }

    println!("{}: valid (mode {})", file.display(), loaded.config.hypervisor.mode);
    Status::Ok
}

fn show(file: Option<&PathBuf>) -> Status {
    let config = match file.map(|f| Config::load(f)).transpose() {
        Ok(l) => l.map(|l| l.config).unwrap_or_default(),
        Err(e) => return fail(Status::BadConfig, e),
    };
    print!("{}", config.to_toml());
    Status::Ok
}
