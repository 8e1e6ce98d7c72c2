//! Soak: a million hypercalls across the four personalities, with the VMM's memory flat and
//! every counter exact (docs/reliability.md). The full run is not part of `cargo test`:
//!
//! ```sh
//! cargo test -p polyvisor-vmm --test soak -- --ignored --nocapture
//! POLYVISOR_SOAK_CALLS=4000000 cargo test --release -p polyvisor-vmm --test soak -- --ignored --nocapture
//! ```
//!
//! Each mode boots `bench64` (one vCPU) making `calls / 4` of its cheapest hypercall in a
//! loop (its throughput phase) after one cheapest and one memory-touching call it checks.
//! While it runs, a thread samples the process's resident set (`VmRSS`) every 10 ms: from
//! a quarter of the run (the warm-up point) to its end it may grow by at most 1 MiB, and
//! from the end of the first mode's run to the end of the last by at most 1 MiB. The
//! engine's counters must equal the calls the guest made and the hypercall exits the VMM saw.
//! A small run of the same checks (without the memory bound) is part of `cargo test`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polyvisor_core::HypervisorMode;
use polyvisor_vmm::bench::{vm_config, GUEST};
use polyvisor_vmm::host::host_check;
use polyvisor_vmm::{run, RunOptions, RunReport};
use strum::IntoEnumIterator;

/// How far the resident set may grow, in KiB.
const FLAT_KIB: u64 = 1024;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Samples `VmRSS` until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Duration, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), samples.clone());
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                v.lock().unwrap().push((t0.elapsed(), status_kib("VmRSS:")));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler { stop, samples, thread: Some(thread) }
    }

    /// (RSS at a quarter of the run, the largest RSS after it), in KiB.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let samples = self.samples.lock().unwrap();
        let end = samples.last().map_or(Duration::ZERO, |s| s.0);
        let warm_at = samples.iter().position(|s| s.0 * 4 >= end).unwrap_or(0);
        let warm = samples[warm_at].1;
        let peak = samples[warm_at..].iter().map(|s| s.1).max().unwrap_or(warm);
        (warm, peak)
    }
}

/// Calls `bench64` makes before its measured ones: bhyve creates the probe its memory call
/// fires (HYPERCALL_DTRACE_PROBE_CREATE).
fn setup_calls(mode: HypervisorMode) -> u64 {
    u64::from(mode == HypervisorMode::Bhyve)
}

/// One mode's run: the report, the memory at warm-up and its peak after.
fn soak_mode(mode: HypervisorMode, calls: u64, host: &polyvisor_vmm::HostReport) -> RunReport {
    let cmdline = format!("mode={mode} n=0 tput={calls} cpus=1 rounds=1");
    let sampler = Sampler::start();
    let r = run(
        &vm_config(mode, 1, cmdline, host),
        RunOptions {
            capture_console: true,
            kernel_override: Some(polyvisor_guests::image(GUEST).unwrap().to_vec()),
            host: Some(host.clone()),
            timeout: Some(Duration::from_secs(1200)),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let (warm, peak) = sampler.finish();
    let console = r.console_text();
    assert_eq!(r.exit_status, 0, "{mode}: {}\n{console}", r.message);
    assert!(console.contains("answer name=") && !console.contains("ok=0"), "{console}");
    // The guest made `calls` cheapest calls after its set-up and the two it checked; every
    // one was counted once by the engine and was one hypercall exit for the VMM.
    let served: u64 = r.rows.iter().map(|row| row.counters.calls).sum();
    let refused: u64 = r
        .rows
        .iter()
        .map(|row| row.counters.denied + row.counters.wrong_ring + row.counters.errors)
        .sum::<u64>()
        + r.refusals.0
        + r.refusals.1
        + r.refusals.2;
    assert_eq!(served, calls + 2 + setup_calls(mode), "{mode}: {:?}", r.rows);
    assert_eq!(refused, 0, "{mode}: {:?} {:?}", r.rows, r.refusals);
    assert_eq!(r.stats.hypercalls, served, "{mode}: the VMM's exits and the engine agree");
    println!(
        "soak {mode:<6}: {served} calls in {:.1} s; VmRSS {warm} KiB at a quarter, peak {peak} \
         KiB after (+{} KiB)",
        r.elapsed.as_secs_f64(),
        peak.saturating_sub(warm)
    );
    if calls >= 100_000 {
        assert!(peak <= warm + FLAT_KIB, "{mode}: VmRSS grew from {warm} to {peak} KiB");
    }
    r
}

fn soak(total: u64) {
    let host = host_check();
    let mut first_end = None;
    for mode in HypervisorMode::iter() {
        soak_mode(mode, total / 4, &host);
        let rss = status_kib("VmRSS:");
        let first = *first_end.get_or_insert(rss);
        println!("soak {mode:<6}: VmRSS {rss} KiB after the run (first: {first} KiB)");
        if total >= 400_000 {
            assert!(rss <= first + FLAT_KIB, "VmRSS grew from {first} to {rss} KiB across modes");
        }
    }
    println!("soak: {total} hypercalls, VmHWM {} KiB", status_kib("VmHWM:"));
}

#[test]
fn a_short_soak_counts_every_call_exactly() {
    soak(8_000);
}

#[test]
#[ignore = "a million hypercalls: run on purpose (docs/reliability.md)"]
fn a_million_hypercalls_keep_memory_flat_and_counters_exact() {
    let total = std::env::var("POLYVISOR_SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    soak(total);
}
