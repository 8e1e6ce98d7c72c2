//! `polyvisor cpuid` and `polyvisor hypercalls`: what a mode shows a guest, as tables.

use std::sync::Arc;

use polyvisor_config::LoadedConfig;
use polyvisor_core::Dispatch;
use polyvisor_personalities::{BuildError, HostFacts};

use super::exit::{fail, Status};
use super::ConfigArgs;

/// Arguments of `polyvisor cpuid`.
#[derive(Debug, clap::Args)]
pub(crate) struct CpuidArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The vCPU whose leaves to show (leaves can carry per-vCPU ids).
    #[arg(long, default_value_t = 0)]
    vcpu: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `polyvisor hypercalls`.
#[derive(Debug, clap::Args)]
pub(crate) struct HypercallsArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Builds the configured personality's engine; errors are located in the config file.
pub(crate) fn build_engine(
    loaded: &LoadedConfig,
    host: &HostFacts,
) -> Result<Arc<dyn Dispatch>, (Status, String)> {
    polyvisor_personalities::build(&loaded.config, host).map_err(|e| located(loaded, e))
}

/// A build error with its place in the configuration file: a name the allow or deny list
/// cannot resolve, or a feature the host cannot back, is a configuration error (status 3).
pub(crate) fn located(loaded: &LoadedConfig, e: BuildError) -> (Status, String) {
    match e {
        BuildError::Policy(p) => {
            let list = if p.list == "allow" {
                loaded.config.hypervisor.allow.as_deref().unwrap_or(&[])
            } else {
                &loaded.config.hypervisor.deny[..]
            };
            let index = list.iter().position(|s| s.0 == p.selector);
            let err = loaded.error_at(&["hypervisor", p.list], index, p.to_string());
            (Status::BadConfig, err.to_string())
        }
        BuildError::Unbacked { section, ref message } => {
            (Status::BadConfig, loaded.error_at(&[section], None, message.clone()).to_string())
        }
        other @ BuildError::NotImplemented(_) => (Status::Unsupported, other.to_string()),
    }
}

/// This host's facts (TSC rate, native hypercall instruction) when KVM is here, so the tables
/// show what a guest would see on it; nominal facts otherwise, with a note.
pub(crate) fn host_facts() -> HostFacts {
    let report = polyvisor_vmm::host_check();
    if report.kvm_error.is_none() {
        report.facts()
    } else {
        eprintln!("polyvisor: note: KVM is not available; showing nominal host facts (1 GHz TSC)");
        HostFacts::nominal()
    }
}

fn engine_for(args: &ConfigArgs) -> Result<Arc<dyn Dispatch>, Status> {
    let loaded = args.load().map_err(|e| fail(Status::BadConfig, e))?;
    build_engine(&loaded, &host_facts()).map_err(|(status, msg)| fail(status, msg))
}

pub(crate) fn cpuid(args: &CpuidArgs) -> Status {
    let engine = match engine_for(&args.config) {
        Ok(e) => e,
        Err(status) => return status,
    };
    let leaves = engine.cpuid(args.vcpu);
    if args.json {
        let rows: Vec<_> = leaves
            .iter()
            .map(|l| {
                serde_json::json!({
                    "function": format!("{:#010x}", l.function),
                    "index": l.indexed.then_some(l.index),
                    "eax": format!("{:#010x}", l.eax),
                    "ebx": format!("{:#010x}", l.ebx),
                    "ecx": format!("{:#010x}", l.ecx),
                    "edx": format!("{:#010x}", l.edx),
                    "meaning": engine.explain_cpuid(l),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Status::Ok;
    }
    print!("{}", polyvisor_vmm::tables::cpuid_table(&*engine, args.vcpu));
    Status::Ok
}

pub(crate) fn hypercalls(args: &HypercallsArgs) -> Status {
    let engine = match engine_for(&args.config) {
        Ok(e) => e,
        Err(status) => return status,
    };
    let rows = engine.rows();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Status::Ok;
    }
    print!("{}", polyvisor_vmm::tables::hypercall_table(&*engine));
    Status::Ok
}
