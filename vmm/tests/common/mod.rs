//! Shared helpers for the backend's integration tests (real /dev/kvm).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use polyvisor_config::{Config, LoadedConfig};
use polyvisor_vmm::testing::{test_engine, TestPersonality};
use polyvisor_vmm::trap::probe::CallFate;
use polyvisor_vmm::{run, RunOptions, RunReport};

/// A config: `vcpus`, 64 MiB, hypercalls enabled, a command line.
pub fn config(vcpus: u32, cmdline: &str) -> LoadedConfig {
    let mut c = Config::default();
    c.vm.vcpus = vcpus;
    c.vm.memory_mib = 64;
    c.vm.cmdline = cmdline.to_string();
    c.hypervisor.hypercalls_enabled = true;
    LoadedConfig { config: c, path: None, source: String::new() }
}

/// Runs `image` with the test personality; returns the report and the personality.
pub fn run_image(image: &[u8], cfg: &LoadedConfig) -> (RunReport, Arc<TestPersonality>) {
    let (p, engine) = test_engine();
    let report = run(
        cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(image.to_vec()),
            dispatch: Some(engine),
            timeout: Some(Duration::from_secs(20)),
            ..RunOptions::default()
        },
    )
    .expect("the VM runs");
    (report, p)
}

/// Runs guest `name` from polyvisor-guests.
pub fn run_guest(name: &str, vcpus: u32, cmdline: &str) -> (RunReport, Arc<TestPersonality>) {
    let image = polyvisor_guests::image(name).unwrap_or_else(|| panic!("no guest {name}"));
    run_image(image, &config(vcpus, cmdline))
}

/// Prints the console and the end for a failing assertion's context.
pub fn show(r: &RunReport) -> String {
    format!("--- console ---\n{}--- end ---\n{}\n{:?}", r.console_text(), r.message, r.stats)
}

/// Runs the `polyvisor` binary: (exit status, standard output, standard error).
pub fn polyvisor(args: &[&str]) -> (i32, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_polyvisor")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a CPL-3 instruction does on this host, as the guest's `cpl3_*=` words say it: the
/// probe measured 64-bit guests; a 32-bit CPL-3 VMCALL that the host kernel answers in 64-bit
/// mode raises #GP instead (measured, tests/guests/README.md "CPL-3 hypercalls on this host").
pub fn cpl3_fate(f: CallFate, bits32: bool, vmcall: bool) -> &'static str {
    match f {
        CallFate::TrappedAsMmio | CallFate::TrappedAsXen => "trap",
        CallFate::AnsweredByHost(_) if bits32 && vmcall => "gp",
        CallFate::AnsweredByHost(_) => "host",
        CallFate::InvalidOpcode => "ud",
        other => panic!("the host probe saw a CPL-3 call {other}"),
    }
}
