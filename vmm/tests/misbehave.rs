//! Guests that misbehave on purpose (`misbehave64`, tests/guests/guests/misbehave.c) end
//! cleanly: a clear message, the documented exit status (docs/host-support.md), bounded
//! console output, and within the configured timeout. docs/reliability.md lists them.

use std::time::{Duration, Instant};

use polyvisor_config::{Config, LoadedConfig};
use polyvisor_core::HypervisorMode;
use polyvisor_vmm::end::{STATUS_ALL_HALTED, STATUS_TIMEOUT, STATUS_TRIPLE_FAULT};
use polyvisor_vmm::{run, RunOptions, RunReport, VmEnd};

mod common;

const GUEST: &str = "misbehave64";
/// The console limit the flood tests set, in KiB.
const LIMIT_KIB: u32 = 8;
/// What a run may take beyond its timeout (VM set-up and tear-down).
const SLACK: Duration = Duration::from_secs(3);

fn config(mode: HypervisorMode, vcpus: u32, scenario: &str) -> LoadedConfig {
    let mut c = Config::default();
    c.hypervisor.mode = mode;
    c.hypervisor.hypercalls_enabled = true;
    c.vm.vcpus = vcpus;
    c.vm.memory_mib = 32;
    c.vm.cmdline = format!("do={scenario}");
    c.vm.console_limit_kib = LIMIT_KIB;
    LoadedConfig { config: c, path: None, source: String::new() }
}

/// Runs a scenario with `timeout`; asserts it ended within it and that the guest started it.
fn misbehave(mode: HypervisorMode, vcpus: u32, scenario: &str, timeout: Duration) -> RunReport {
    let t0 = Instant::now();
    let r = run(
        &config(mode, vcpus, scenario),
        RunOptions {
            capture_console: true,
            kernel_override: Some(polyvisor_guests::image(GUEST).unwrap().to_vec()),
            timeout: Some(timeout),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let took = t0.elapsed();
    let console = r.console_text();
    assert!(took < timeout + SLACK, "{scenario}: took {took:?} with a {timeout:?} timeout");
    assert!(console.contains(&format!("{GUEST}: ok   started {scenario}")), "{console}");
    assert!(!console.contains("FAIL"), "{console}");
    r
}

#[test]
fn a_triple_fault_ends_with_251_and_a_register_dump() {
    let r = misbehave(HypervisorMode::Kvm, 1, "triple", Duration::from_secs(10));
    assert!(matches!(r.end, VmEnd::TripleFault { vcpu: 0, .. }), "{}", r.message);
    assert_eq!(r.exit_status, STATUS_TRIPLE_FAULT);
    assert!(r.message.contains("triple-faulted") && r.message.contains("rip="), "{}", r.message);
}

#[test]
fn a_guest_spinning_without_exits_ends_at_the_timeout_with_124() {
    let timeout = Duration::from_millis(700);
    let r = misbehave(HypervisorMode::Xen, 1, "spin", timeout);
    assert_eq!(r.end, VmEnd::Timeout(timeout), "{}", r.message);
    assert_eq!(r.exit_status, STATUS_TIMEOUT);
    assert!(r.message.contains("timed out after 0.7 s"), "{}", r.message);
}

#[test]
fn halting_forever_with_interrupts_off_ends_with_254_on_one_and_two_vcpus() {
    for vcpus in [1, 2] {
        let r = misbehave(HypervisorMode::Hyperv, vcpus, "halt", Duration::from_secs(10));
        assert!(matches!(r.end, VmEnd::AllHalted { .. }), "{vcpus} vCPUs: {}", r.message);
        assert_eq!(r.exit_status, STATUS_ALL_HALTED);
        assert!(r.message.contains("every vCPU is halted"), "{}", r.message);
        // Long before the timeout: nothing can wake them, and the VMM knows it.
        assert!(r.elapsed < Duration::from_secs(5), "{vcpus} vCPUs: {:?}", r.elapsed);
    }
}

/// A flood is cut at the limit with one note, and the run still ends at its timeout.
fn flood(mode: HypervisorMode, scenario: &str) {
    let timeout = Duration::from_millis(1500);
    let r = misbehave(mode, 1, scenario, timeout);
    assert_eq!(r.end, VmEnd::Timeout(timeout), "{scenario}: {}", r.message);
    assert_eq!(r.exit_status, STATUS_TIMEOUT);
    let console = r.console.clone().unwrap();
    let limit = LIMIT_KIB as usize * 1024;
    let note = format!("reached the limit of {LIMIT_KIB} KiB ([vm] console_limit_kib)");
    let text = String::from_utf8_lossy(&console);
    assert_eq!(text.matches(&note).count(), 1, "{scenario}: {text}");
    // The guest's bytes, its start line, the note and the VMM's own lines: nothing more.
    assert!(console.len() < limit + 512, "{scenario}: {} bytes passed", console.len());
    assert!(r.message.contains("the console dropped"), "{scenario}: {}", r.message);
    assert!(r.message.contains("console_limit_kib = 8"), "{scenario}: {}", r.message);
}

#[test]
fn a_console_flood_on_port_e9_is_cut_at_the_limit() {
    flood(HypervisorMode::Bhyve, "flood_e9");
}

#[test]
fn a_console_flood_on_com1_is_cut_at_the_limit() {
    flood(HypervisorMode::Kvm, "flood_com1");
}

#[test]
fn a_console_flood_through_xen_console_io_is_cut_at_the_limit() {
    flood(HypervisorMode::Xen, "flood_xen");
}

/// The command a user runs: `--timeout` ends a spinning guest, with the message on standard
/// error and status 124, and the process exits.
#[test]
fn polyvisor_run_ends_a_spinning_guest_at_its_timeout() {
    let dir = std::env::temp_dir().join(format!("polyvisor-misbehave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("misbehave64.elf");
    std::fs::write(&kernel, polyvisor_guests::image(GUEST).unwrap()).unwrap();
    let t0 = Instant::now();
    let (status, stdout, stderr) = common::polyvisor(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "do=spin",
        "--timeout",
        "1",
        "--mode",
        "kvm",
    ]);
    let took = t0.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, STATUS_TIMEOUT, "{stdout}{stderr}");
    assert!(stdout.contains("ok   started spin"), "{stdout}");
    assert!(stderr.contains("the run timed out after 1.0 s"), "{stderr}");
    assert!(took < Duration::from_secs(1) + SLACK, "{took:?}");
}
