//! Runs one mode's cheapest hypercall through the engine N times, for counting instructions
//! with `valgrind --tool=callgrind` (docs/tracing.md, "Cost with tracing off"): the count does
//! not depend on what else the machine is doing, so two builds compare exactly.
//!
//! `cargo run --release -p polyvisor-personalities --example dispatch_loop -- MODE N`

use std::hint::black_box;
use std::process::ExitCode;

use polyvisor_config::Config;
use polyvisor_core::testing::{memory, snapshot, RecordingPlatform};
use polyvisor_core::HypervisorMode;
use polyvisor_personalities::{build, HostFacts};

#[path = "../benches/common/mod.rs"]
mod common;
use common::cheapest;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(count)) = (
        args.first().and_then(|m| m.parse::<HypervisorMode>().ok()),
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: dispatch_loop bhyve|kvm|hyperv|xen COUNT");
        return ExitCode::from(2);
    };
    let mut config = Config::default();
    config.hypervisor.mode = mode;
    config.hypervisor.hypercalls_enabled = true;
    let engine = match build(&config, &HostFacts::nominal()) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("dispatch_loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mem = memory(16 << 20);
    let platform = RecordingPlatform::quiet(2);
    let vcpu = snapshot(cheapest(mode));
    for _ in 0..count {
        black_box(engine.hypercall(black_box(&vcpu), &mem, &platform));
    }
    ExitCode::SUCCESS
}
