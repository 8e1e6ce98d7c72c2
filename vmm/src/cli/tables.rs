//! `polyvisor cpuid` and `polyvisor hypercalls`: what a mode shows a guest, as tables.

use std::sync::Arc;

use polyvisor_config::LoadedConfig;
use polyvisor_core::{CpuidLeaf, Dispatch, RowInfo};
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
    polyvisor_personalities::build(&loaded.config, host).map_err(|e| match e {
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
    })
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

/// The printable part of a signature, or None when it is not text.
fn signature_text(leaf: &CpuidLeaf) -> Option<String> {
    let bytes = leaf.signature_bytes();
    bytes.iter().all(|b| *b == 0 || b.is_ascii_graphic() || *b == b' ').then(|| {
        bytes
            .iter()
            .map(|b| if *b == 0 { "\\0".to_string() } else { char::from(*b).to_string() })
            .collect()
    })
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
    println!("CPUID leaves shown in mode {} (vCPU {}):", engine.mode(), args.vcpu);
    println!("{:<14} {:<10} {:<10} {:<10} {:<10}", "leaf", "eax", "ebx", "ecx", "edx");
    for leaf in &leaves {
        let name = if leaf.indexed {
            format!("{:#010x}.{}", leaf.function, leaf.index)
        } else {
            format!("{:#010x}", leaf.function)
        };
        println!(
            "{name:<14} {:#010x} {:#010x} {:#010x} {:#010x}",
            leaf.eax, leaf.ebx, leaf.ecx, leaf.edx
        );
        let mut meaning = engine.explain_cpuid(leaf);
        if meaning.is_empty() && leaf.function & 0xff == 0 {
            if let Some(text) = signature_text(leaf) {
                meaning.push(format!("signature \"{text}\", highest leaf {:#010x}", leaf.eax));
            }
        }
        for line in meaning {
            println!("    {line}");
        }
    }
    Status::Ok
}

fn print_rows(rows: &[RowInfo]) {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<8} {:<width$} {:<6} {:<12} {:<8} summary",
        "number", "name", "rings", "implemented", "enabled"
    );
    for r in rows {
        println!(
            "{:<8} {:<width$} {:<6} {:<12} {:<8} {}",
            format!("{:#x}", r.number),
            r.name,
            r.rings,
            if r.implemented { "yes" } else { "no" },
            if r.permitted { "yes" } else { "no" },
            r.summary
        );
    }
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
    println!("Hypercalls of mode {}:", engine.mode());
    print_rows(&rows);
    if !rows.iter().any(|r| r.permitted) {
        println!("(hypercalls are disabled: set [hypervisor] hypercalls_enabled = true, or pass --enable-hypercalls)");
    }
    Status::Ok
}
