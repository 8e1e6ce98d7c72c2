//! `polyvisor bench`: what a hypercall costs on this host, measured side by side.
//!
//! Per mode, one VM runs the `bench64` guest (`tests/guests/guests/bench.c`), which times
//! each operation with RDTSC in a loop that interleaves them: a port write the VMM answers
//! (the *floor*: the cheapest exit to user space there is), the ABI's cheapest real call and
//! a call that reads or writes guest memory, each behind the same timing instructions. The
//! guest sorts its samples and prints a summary per operation; the VMM converts cycles with
//! the guest TSC frequency. The same VM then runs the throughput phases on its one vCPU (an
//! empty loop, port writes, the cheapest call), and a second VM runs them on two vCPUs at
//! once. With [`BenchOptions::compare_eager`] a third VM repeats the latency loop with the
//! write-protect trap completing KVM's emulation with a `KVM_RUN` of its own before every
//! answer, as it first did ([`RunOptions::eager_completion`]).
//!
//! Around the first VM of each mode, which runs as `polyvisor run` does (host check
//! included): start-up, from the call of [`run()`] to the guest's first instruction (vCPU
//! 0's first `KVM_RUN` plus what the guest TSC says passed until the runtime's first
//! instruction) and to its first port write; and peak RSS beyond guest RAM: the peak
//! resident set is reset (`/proc/self/clear_refs` = 5) before the run and read (`VmHWM`)
//! after it, and the guest RAM resident at the end ([`RunReport::guest_ram_resident`], by
//! `mincore`) is subtracted. Guest RAM only grows during a run, so what remains is the
//! process's peak minus the guest pages: the VMM's own memory (binary, heap, stacks,
//! `kvm_run` pages).
//!
//! In-process, without a VM: the dispatch-only cost of the same calls, on a register
//! snapshot with a quiet [`RecordingPlatform`], timed in batches.
//!
//! [`RecordingPlatform`]: polyvisor_core::testing::RecordingPlatform

mod dispatch;
mod guest;
mod proc;
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use polyvisor_config::{Config, HypervisorMode, LoadedConfig};

use crate::host::{host_check, HostReport};
use crate::run::{run, RunOptions, RunReport, VmmError};

use proc::{
    cpu_model, host_ticks, kvm_flavour, load_average, own_ticks, status_kib, TICKS_PER_SEC,
};

pub use dispatch::dispatch_only;
pub use guest::{parse_console, Parsed};
pub use report::*;

/// The guest image.
pub const GUEST: &str = "bench64";

/// How many times the throughput phases run in each VM (the medians are reported).
pub const THROUGHPUT_ROUNDS: u32 = 3;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Modes, in order.
    pub modes: Vec<HypervisorMode>,
    /// Latency samples per operation.
    pub iterations: u32,
    /// Calls per vCPU in the throughput runs.
    pub throughput_calls: u32,
    /// Calls per measured call in the dispatch-only loop.
    pub dispatch_iterations: u32,
    /// Also run the latency loop with the eager completion (the trap as it first was).
    pub compare_eager: bool,
    /// Each VM's time limit.
    pub timeout: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            modes: vec![
                HypervisorMode::Bhyve,
                HypervisorMode::Kvm,
                HypervisorMode::Hyperv,
                HypervisorMode::Xen,
            ],
            iterations: 5000,
            throughput_calls: 5000,
            dispatch_iterations: 100_000,
            compare_eager: true,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Why the benchmark could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The guest image is missing from this build.
    #[error("the {GUEST} guest is not built into this binary")]
    NoGuest,
    /// A VM could not run.
    #[error("{mode}: {source}")]
    Vmm {
        /// The mode.
        mode: HypervisorMode,
        /// Why.
        source: VmmError,
    },
    /// The guest failed or printed something unexpected.
    #[error("{mode}: {what}\n{console}")]
    Guest {
        /// The mode.
        mode: HypervisorMode,
        /// What went wrong.
        what: String,
        /// The guest's console.
        console: String,
    },
    /// The dispatch-only loop could not be set up.
    #[error("{mode}: dispatch-only: {what}")]
    Dispatch {
        /// The mode.
        mode: HypervisorMode,
        /// What went wrong.
        what: String,
    },
    /// KVM is not usable here.
    #[error("KVM is not usable: {0}")]
    Host(String),
}

/// The calls of a mode: (name, description) of the cheapest call and of the memory call.
pub fn calls(mode: HypervisorMode) -> [(&'static str, &'static str); 2] {
    match mode {
        HypervisorMode::Bhyve => [
            ("bhyve_prototype", "HYPERCALL_PROTOTYPE (rax=0)"),
            ("bhyve_dtrace_probe", "HYPERCALL_DTRACE_PROBE, 5 u64 args read"),
        ],
        HypervisorMode::Kvm => [
            ("kvm_vapic_poll_irq", "KVM_HC_VAPIC_POLL_IRQ (rax=1)"),
            ("kvm_clock_pairing", "KVM_HC_CLOCK_PAIRING, 64 bytes written"),
        ],
        HypervisorMode::Hyperv => [
            ("hyperv_notify_long_spin_wait", "HvCallNotifyLongSpinWait, fast, hypercall page"),
            ("hyperv_flush_va_space", "HvCallFlushVirtualAddressSpace, slow, input page read"),
        ],
        HypervisorMode::Xen => [
            ("xen_version", "xen_version(XENVER_version) (rax=17)"),
            ("xen_extraversion", "xen_version(XENVER_extraversion), 16 bytes written"),
        ],
    }
}

/// Runs the benchmark. `progress` gets a line before each step.
pub fn run_bench(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let image = polyvisor_guests::image(GUEST).ok_or(BenchError::NoGuest)?;
    let load_average = load_average();
    let host = host_check();
    if let Some(e) = &host.kvm_error {
        return Err(BenchError::Host(e.clone()));
    }
    let tsc_khz = host.tsc_khz.filter(|k| *k > 0).unwrap_or(1_000_000);
    let mut modes = Vec::new();
    for &mode in &options.modes {
        modes.push(bench_mode(mode, options, &host, tsc_khz, image, progress)?);
    }
    let info = HostInfo {
        cpu_model: cpu_model(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        kvm_flavour: kvm_flavour(),
        kvm_api: host.api_version,
        trap: host.strategy.to_string(),
        tsc_khz,
        load_average,
    };
    let targets = targets(&modes);
    Ok(BenchReport {
        host: info,
        parameters: Parameters {
            iterations: options.iterations,
            throughput_calls: options.throughput_calls,
            dispatch_iterations: options.dispatch_iterations,
            compare_eager: options.compare_eager,
        },
        modes,
        targets,
    })
}

struct VmRun {
    report: RunReport,
    console: String,
    memory: MemoryUse,
    cpu: CpuShare,
}

/// The configuration `bench64` runs under in `mode`: hypercalls on, `vcpus`, `cmdline`, and
/// for Hyper-V the remote-flush recommendation its memory call needs. Also used by the soak
/// test and the fuzz seed recorder.
pub fn vm_config(
    mode: HypervisorMode,
    vcpus: u32,
    cmdline: String,
    host: &HostReport,
) -> LoadedConfig {
    let mut c = Config::default();
    c.hypervisor.mode = mode;
    c.hypervisor.hypercalls_enabled = true;
    c.vm.vcpus = vcpus;
    c.vm.cmdline = cmdline;
    if mode == HypervisorMode::Hyperv {
        // The memory call is a flush; the VMM backs it (Platform::flush_guest_tlb).
        let backing = polyvisor_personalities::hyperv::cpuid::Backing::new(&host.facts(), &c);
        c.hyperv.recommendations = Some(
            backing.default_recommendations()
                | polyvisor_personalities::hyperv::abi::HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED,
        );
    }
    LoadedConfig { config: c, path: None, source: String::new() }
}

fn run_vm(
    mode: HypervisorMode,
    config: &LoadedConfig,
    image: &[u8],
    options: RunOptions,
) -> Result<VmRun, BenchError> {
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_kib("VmRSS").unwrap_or(0);
    let (own0, (host0, steal0), wall0) = (own_ticks(), host_ticks(), Instant::now());
    let report = run(
        config,
        RunOptions { capture_console: true, kernel_override: Some(image.to_vec()), ..options },
    )
    .map_err(|source| BenchError::Vmm { mode, source })?;
    let wall = wall0.elapsed().as_secs_f64();
    let (host1, steal1) = host_ticks();
    let own = own_ticks().saturating_sub(own0);
    let (host, steal) = (host1.saturating_sub(host0), steal1.saturating_sub(steal0));
    let cpus = |ticks: u64| ratio(ticks as f64 / TICKS_PER_SEC, wall);
    let cpu = CpuShare {
        wall_ms: wall * 1e3,
        this_process_cpus: cpus(own),
        other_processes_cpus: cpus(host.saturating_sub(own)),
        steal_cpus: cpus(steal),
    };
    let peak = status_kib("VmHWM").unwrap_or(0);
    let guest = report.guest_ram_resident.unwrap_or(0) / 1024;
    let console = report.console_text();
    if report.exit_status != 0 {
        return Err(BenchError::Guest {
            mode,
            what: format!("the guest failed: {}", report.message.trim_end()),
            console,
        });
    }
    let memory = MemoryUse {
        guest_ram_mib: config.config.vm.memory_mib,
        rss_before_kib: rss_before,
        peak_rss_kib: peak,
        guest_resident_kib: guest,
        beyond_guest_kib: peak.saturating_sub(guest),
        added_beyond_guest_kib: i64::try_from(peak).unwrap_or(i64::MAX)
            - i64::try_from(rss_before).unwrap_or(0)
            - i64::try_from(guest).unwrap_or(0),
        peak_reset,
    };
    Ok(VmRun { report, console, memory, cpu })
}

fn bench_mode(
    mode: HypervisorMode,
    options: &BenchOptions,
    host: &HostReport,
    tsc_khz: u64,
    image: &[u8],
    progress: &mut dyn FnMut(&str),
) -> Result<ModeReport, BenchError> {
    let n = options.iterations;
    let t = options.throughput_calls;
    let names = calls(mode);

    progress(&format!(
        "{mode}: {n} round trips of each call and of port I/O, {t} calls on one vCPU"
    ));
    // The first VM of the mode runs as `polyvisor run` does: run() probes the host itself.
    let cmdline = format!("mode={mode} n={n} tput={t} cpus=1 rounds={THROUGHPUT_ROUNDS}");
    let main = run_vm(
        mode,
        &vm_config(mode, 1, cmdline, host),
        image,
        RunOptions { exit_timing: true, timeout: Some(options.timeout), ..RunOptions::default() },
    )?;
    let parsed = parse_console(mode, &main.console, tsc_khz, &names)?;

    let mut eager_round_trips = Vec::new();
    let mut eager_vmm_time = None;
    if options.compare_eager {
        progress(&format!("{mode}: the same round trips with the eager completion"));
        let cmdline = format!("mode={mode} n={n} tput=0 cpus=1");
        let eager = run_vm(
            mode,
            &vm_config(mode, 1, cmdline, host),
            image,
            RunOptions {
                exit_timing: true,
                eager_completion: true,
                host: Some(host.clone()),
                timeout: Some(options.timeout),
                ..RunOptions::default()
            },
        )?;
        eager_round_trips = parse_console(mode, &eager.console, tsc_khz, &names)?.round_trips;
        eager_vmm_time = Some(vmm_time(&eager.report));
    }

    progress(&format!("{mode}: {t} calls on each of two vCPUs"));
    let cmdline = format!("mode={mode} n=0 tput={t} cpus=2 rounds={THROUGHPUT_ROUNDS}");
    let smp = run_vm(
        mode,
        &vm_config(mode, 2, cmdline, host),
        image,
        RunOptions {
            host: Some(host.clone()),
            timeout: Some(options.timeout),
            ..RunOptions::default()
        },
    )?;
    let two = parse_console(mode, &smp.console, tsc_khz, &names)?.throughput;
    let rate = |kind: &str| -> Result<Rate, BenchError> {
        let get = |map: &BTreeMap<(String, u32), Vec<f64>>, n: u32| {
            map.get(&(kind.to_string(), n)).filter(|v| !v.is_empty()).cloned()
        };
        match (get(&parsed.throughput, 1), get(&two, 2)) {
            (Some(one_rounds), Some(two_rounds)) => {
                let (one, two) = (median(&one_rounds), median(&two_rounds));
                Ok(Rate {
                    one_vcpu_per_sec: one,
                    two_vcpus_per_sec: two,
                    scaling: ratio(two, one),
                    one_vcpu_rounds: one_rounds,
                    two_vcpus_rounds: two_rounds,
                })
            }
            _ => Err(BenchError::Guest {
                mode,
                what: format!("no {kind} throughput line"),
                console: format!("{}{}", main.console, smp.console),
            }),
        }
    };
    let throughput = Throughput {
        calls_per_vcpu: u64::from(t),
        hypercall: rate("hypercall")?,
        port_io: rate("port_io")?,
        spin: rate("spin")?,
        one_vcpu_run_cpu: main.cpu,
        two_vcpu_run_cpu: smp.cpu,
    };

    progress(&format!("{mode}: dispatch-only, {} calls each", options.dispatch_iterations));
    let dispatch_only = dispatch_only(mode, &host.facts(), options.dispatch_iterations)?;

    let startup = &main.report.startup;
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let tsc_ms = |from: Option<u64>, to: Option<u64>| match (from, to) {
        (Some(a), Some(b)) if a != 0 && b != 0 => b.wrapping_sub(a) as i64 as f64 / tsc_khz as f64,
        _ => f64::NAN,
    };
    let first_entry_ms = ms(startup.first_entry);
    Ok(ModeReport {
        mode,
        round_trips: parsed.round_trips,
        eager_round_trips,
        vmm_time: vmm_time(&main.report),
        eager_vmm_time,
        dispatch_only,
        throughput,
        startup: StartupTime {
            host_check_ms: ms(startup.host_check),
            steps_ms: startup
                .steps
                .iter()
                .map(|(name, d)| ((*name).to_string(), d.as_secs_f64() * 1e3))
                .collect(),
            first_entry_ms,
            first_instruction_ms: first_entry_ms
                + tsc_ms(startup.first_entry_tsc, parsed.tsc_start),
            guest_setup_ms: tsc_ms(parsed.tsc_start, parsed.tsc_main),
            first_port_write_ms: ms(startup.first_port_io),
        },
        memory: main.memory,
    })
}

fn vmm_time(r: &RunReport) -> VmmTime {
    VmmTime {
        exits: r.exit_timing.unwrap_or_default(),
        completions_per_hypercall: ratio(r.stats.completions as f64, r.stats.hypercalls as f64),
        page_returns_per_hypercall: ratio(r.stats.page_returns as f64, r.stats.hypercalls as f64),
    }
}

/// The median of some values (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match (v.get(n / 2), n % 2) {
        (Some(m), 1) => *m,
        (Some(hi), _) => v.get(n / 2 - 1).map_or(*hi, |lo| (lo + hi) / 2.0),
        (None, _) => f64::NAN,
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }
}
