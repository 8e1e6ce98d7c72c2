//! What `polyvisor bench` reports: the numbers (serialised as JSON), the targets and the
//! table.

use polyvisor_config::HypervisorMode;
use serde::Serialize;

use super::calls;
use crate::exits::ExitTimingSnapshot;

/// Everything measured, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The machine.
    pub host: HostInfo,
    /// The parameters.
    pub parameters: Parameters,
    /// Per mode.
    pub modes: Vec<ModeReport>,
    /// The targets of the benchmark, each with its measurement.
    pub targets: Vec<Target>,
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// `model name` in /proc/cpuinfo.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// Which KVM: "PVM (kvm_pvm)", "VMX (kvm_intel)", "SVM (kvm_amd)" or "unknown".
    pub kvm_flavour: String,
    /// KVM API version.
    pub kvm_api: i32,
    /// The hypercall trap the VMs used.
    pub trap: String,
    /// Guest TSC frequency.
    pub tsc_khz: u64,
    /// /proc/loadavg (1, 5, 15 minutes) when the benchmark started: other work on the host.
    pub load_average: [f64; 3],
}

/// The parameters of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    /// Latency samples per operation.
    pub iterations: u32,
    /// Calls per vCPU in the throughput runs.
    pub throughput_calls: u32,
    /// Dispatch-only calls per measured call.
    pub dispatch_iterations: u32,
    /// Whether the eager-completion runs were made.
    pub compare_eager: bool,
}

/// One mode's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// The mode.
    pub mode: HypervisorMode,
    /// Round trips measured by the guest, from the default (deferred-completion) run: the
    /// port-I/O floor first, then the cheapest call, the memory call, the timing
    /// instructions alone (`timing_only`) and, for Hyper-V, a call into a `ret` (`call_ret`).
    pub round_trips: Vec<RoundTrip>,
    /// The same loop with the eager completion, when measured.
    pub eager_round_trips: Vec<RoundTrip>,
    /// What the VMM saw of the default run's exits.
    pub vmm_time: VmmTime,
    /// The same for the eager run, when measured.
    pub eager_vmm_time: Option<VmmTime>,
    /// In-process dispatch-only cost of the two calls.
    pub dispatch_only: Vec<DispatchCost>,
    /// Throughput of the cheapest call.
    pub throughput: Throughput,
    /// Start-up of the default run.
    pub startup: StartupTime,
    /// Memory of the default run.
    pub memory: MemoryUse,
}

/// One operation's round trip as the guest timed it.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTrip {
    /// Short name (`port_io`, `bhyve_prototype`, ...).
    pub name: String,
    /// What it is.
    pub what: String,
    /// Samples.
    pub samples: u64,
    /// Fastest, ns.
    pub min_ns: f64,
    /// Median, ns.
    pub median_ns: f64,
    /// 90th percentile, ns.
    pub p90_ns: f64,
    /// 99th percentile, ns.
    pub p99_ns: f64,
    /// Slowest, ns.
    pub max_ns: f64,
    /// Mean, ns.
    pub mean_ns: f64,
    /// Median over the floor's median in the same run.
    pub median_vs_floor: f64,
    /// p99 over the floor's p99 in the same run.
    pub p99_vs_floor: f64,
    /// The median ratio with the timing instructions (`timing_only`'s median) taken out of
    /// both: what the exits alone compare as. Equal to `median_vs_floor` where instructions
    /// cost nothing; larger where the host emulates them.
    pub net_median_vs_floor: f64,
}

/// The VMM's view of the exits of a run (`RunOptions::exit_timing`).
#[derive(Debug, Clone, Serialize)]
pub struct VmmTime {
    /// Per exit kind: time inside `KVM_RUN` and in user space; completion runs.
    pub exits: ExitTimingSnapshot,
    /// Completion runs per hypercall (0 with the deferred completion).
    pub completions_per_hypercall: f64,
    /// Calls resumed at their return address by the VMM (the `ret` of a hypercall page),
    /// per hypercall.
    pub page_returns_per_hypercall: f64,
}

/// Dispatch-only cost of one call.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchCost {
    /// The call's short name.
    pub name: String,
    /// Median over batches of the per-call time, ns.
    pub median_ns: f64,
    /// 99th percentile over batches, ns.
    pub p99_ns: f64,
}

/// Operations per second with one vCPU and with two.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    /// One vCPU, per second (median of the rounds).
    pub one_vcpu_per_sec: f64,
    /// Two vCPUs together, per second (median of the rounds).
    pub two_vcpus_per_sec: f64,
    /// Two over one.
    pub scaling: f64,
    /// Each round's rate with one vCPU.
    pub one_vcpu_rounds: Vec<f64>,
    /// Each round's rate with two vCPUs.
    pub two_vcpus_rounds: Vec<f64>,
}

/// Throughput of every vCPU working at once, with one vCPU and with two.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Calls (and port writes) per vCPU.
    pub calls_per_vcpu: u64,
    /// The cheapest hypercall.
    pub hypercall: Rate,
    /// Port writes answered in the VMM: the same loop with the floor's exit.
    pub port_io: Rate,
    /// An empty loop with no exit (iterations per second): how guest execution itself scales
    /// on this host.
    pub spin: Rate,
    /// CPU time during the one-vCPU run (latency and throughput phases).
    pub one_vcpu_run_cpu: CpuShare,
    /// CPU time during the two-vCPU run (its boot and the throughput phases).
    pub two_vcpu_run_cpu: CpuShare,
}

/// Where the host's CPU time went during a run (/proc/self/stat and /proc/stat, in clock
/// ticks of 10 ms: coarse for short runs).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuShare {
    /// Wall time of the run, ms.
    pub wall_ms: f64,
    /// CPUs this process used on average (user + system time over wall time).
    pub this_process_cpus: f64,
    /// CPUs every other process used on average.
    pub other_processes_cpus: f64,
    /// CPUs taken by the hypervisor this host runs on (/proc/stat steal) on average.
    pub steal_cpus: f64,
}

/// Start-up of a VM, from the call of `run()`.
#[derive(Debug, Clone, Serialize)]
pub struct StartupTime {
    /// The host check (probe VM) `run()` makes first, ms.
    pub host_check_ms: f64,
    /// The end of each set-up step in `run()`, ms.
    pub steps_ms: Vec<(String, f64)>,
    /// To vCPU 0's first `KVM_RUN`, ms.
    pub first_entry_ms: f64,
    /// To the guest's first instruction, ms: the first entry plus what the guest TSC says
    /// passed from that entry to the runtime's first instructions. The start-up.
    pub first_instruction_ms: f64,
    /// The guest runtime's own set-up, from its first instruction to `guest_main`, by the
    /// guest TSC, ms.
    pub guest_setup_ms: f64,
    /// To the guest's first port write (the first instruction of `guest_main`), as the
    /// VMM saw the exit, ms.
    pub first_port_write_ms: f64,
}

/// Memory of a VM run.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryUse {
    /// Configured guest RAM, MiB.
    pub guest_ram_mib: u32,
    /// Process RSS before the run, KiB.
    pub rss_before_kib: u64,
    /// Peak process RSS during the run (VmHWM after a reset), KiB.
    pub peak_rss_kib: u64,
    /// Guest RAM resident at the end, KiB.
    pub guest_resident_kib: u64,
    /// Peak RSS minus guest RAM resident: the process's memory beyond guest RAM, KiB.
    pub beyond_guest_kib: u64,
    /// What the run added beyond guest RAM: peak - before - guest resident, KiB.
    pub added_beyond_guest_kib: i64,
    /// Whether the peak could be reset before the run (else VmHWM is the process's).
    pub peak_reset: bool,
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub what: String,
    /// The target, as text.
    pub target: String,
    /// The measurement, as text.
    pub measured: String,
    /// Met.
    pub met: bool,
}

pub(super) fn targets(modes: &[ModeReport]) -> Vec<Target> {
    let mut out = Vec::new();
    for m in modes {
        let names = calls(m.mode);
        let calls: Vec<&RoundTrip> =
            m.round_trips.iter().filter(|r| names.iter().any(|(n, _)| *n == r.name)).collect();
        let worst = calls.iter().map(|r| r.median_vs_floor).fold(0.0, f64::max);
        out.push(Target {
            what: format!("{} hypercall round trip / port-I/O floor (median)", m.mode),
            target: "<= 1.15x".into(),
            measured: calls
                .iter()
                .map(|r| format!("{:.2}x {}", r.median_vs_floor, r.name))
                .collect::<Vec<_>>()
                .join(", "),
            met: !calls.is_empty() && worst <= 1.15,
        });
    }
    // dispatch_only holds the cheapest call first, then the memory call (see `calls`).
    for (which, what) in [(0, "cheapest call"), (1, "memory-touching call")] {
        let worst = modes
            .iter()
            .filter_map(|m| m.dispatch_only.get(which).map(|d| (m.mode, d)))
            .max_by(|a, b| a.1.median_ns.total_cmp(&b.1.median_ns));
        if let Some((mode, d)) = worst {
            out.push(Target {
                what: format!("dispatch-only, {what} (median, slowest mode)"),
                target: "<= 100 ns".into(),
                measured: format!("{:.0} ns ({mode} {})", d.median_ns, d.name),
                met: d.median_ns <= 100.0,
            });
        }
    }
    let worst_start = modes
        .iter()
        .max_by(|a, b| a.startup.first_instruction_ms.total_cmp(&b.startup.first_instruction_ms));
    if let Some(m) = worst_start {
        out.push(Target {
            what: "start to first guest instruction (slowest mode)".into(),
            target: "<= 15 ms".into(),
            measured: format!(
                "{:.2} ms ({}; host check {:.2} ms of it)",
                m.startup.first_instruction_ms, m.mode, m.startup.host_check_ms
            ),
            met: m.startup.first_instruction_ms <= 15.0,
        });
    }
    let worst_rss = modes.iter().max_by_key(|m| m.memory.beyond_guest_kib);
    if let Some(m) = worst_rss {
        out.push(Target {
            what: "peak RSS beyond guest RAM (largest)".into(),
            target: "<= 16 MiB".into(),
            measured: format!("{:.1} MiB ({})", m.memory.beyond_guest_kib as f64 / 1024.0, m.mode),
            met: m.memory.beyond_guest_kib <= 16 * 1024,
        });
    }
    let worst_scaling = modes
        .iter()
        .min_by(|a, b| a.throughput.hypercall.scaling.total_cmp(&b.throughput.hypercall.scaling));
    if let Some(m) = worst_scaling {
        let t = &m.throughput;
        out.push(Target {
            what: "hypercall throughput, 2 vCPUs / 1 vCPU (lowest)".into(),
            target: ">= 1.8x".into(),
            measured: format!(
                "{:.2}x ({}; same run: port I/O {:.2}x, guest code without exits {:.2}x)",
                t.hypercall.scaling, m.mode, t.port_io.scaling, t.spin.scaling
            ),
            met: t.hypercall.scaling >= 1.8,
        });
    }
    out
}

impl std::fmt::Display for BenchReport {
    /// The table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.host;
        writeln!(f, "polyvisor bench")?;
        writeln!(
            f,
            "host: {}, {} CPUs, kernel {}, KVM {} (API {}), trap {}, TSC {} kHz, load {:.2} {:.2} {:.2}",
            h.cpu_model,
            h.cpus,
            h.kernel,
            h.kvm_flavour,
            h.kvm_api,
            h.trap,
            h.tsc_khz,
            h.load_average[0],
            h.load_average[1],
            h.load_average[2]
        )?;
        let p = &self.parameters;
        writeln!(
            f,
            "{} round trips per call, {} calls per vCPU for throughput, {} dispatch-only calls",
            p.iterations, p.throughput_calls, p.dispatch_iterations
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "round trips (guest RDTSC)          median      p99   median/floor  p99/floor  net of timing"
        )?;
        for m in &self.modes {
            writeln!(f, "{}", m.mode)?;
            for r in &m.round_trips {
                write_trip(f, r, "")?;
            }
            let names = calls(m.mode);
            let shown =
                |r: &&RoundTrip| r.name == "port_io" || names.iter().any(|(n, _)| *n == r.name);
            for r in m.eager_round_trips.iter().filter(shown) {
                write_trip(f, r, " [eager]")?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "inside the VMM (median per exit)          KVM_RUN   user space   completion run"
        )?;
        for m in &self.modes {
            for (tag, t) in [("", Some(&m.vmm_time)), (" [eager]", m.eager_vmm_time.as_ref())] {
                let Some(t) = t else { continue };
                let e = &t.exits;
                writeln!(
                    f,
                    "  {:<8} port I/O exit{:<8}     {:>10} {:>12}",
                    m.mode.to_string(),
                    tag,
                    us(e.io.kvm_run.median_ns),
                    us(e.io.user.median_ns)
                )?;
                writeln!(
                    f,
                    "  {:<8} hypercall exit{:<8}    {:>10} {:>12} {:>16}{}",
                    "",
                    tag,
                    us(e.hypercall.kvm_run.median_ns),
                    us(e.hypercall.user.median_ns),
                    if t.completions_per_hypercall > 0.0 {
                        us(e.completion.median_ns)
                    } else {
                        "none".into()
                    },
                    if t.page_returns_per_hypercall > 0.0 {
                        format!(
                            "   (the page's ret done by the VMM: {:.2} per call)",
                            t.page_returns_per_hypercall
                        )
                    } else {
                        String::new()
                    }
                )?;
            }
        }
        writeln!(f)?;
        writeln!(f, "dispatch only (in-process, median / p99 per call)")?;
        for m in &self.modes {
            for d in &m.dispatch_only {
                writeln!(
                    f,
                    "  {:<8} {:<30} {:>6.0} ns {:>6.0} ns",
                    m.mode, d.name, d.median_ns, d.p99_ns
                )?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "throughput, all vCPUs at once         1 vCPU        2 vCPUs      2/1   (median of {} rounds)",
            super::THROUGHPUT_ROUNDS
        )?;
        for m in &self.modes {
            let t = &m.throughput;
            let (c1, c2) = (&t.one_vcpu_run_cpu, &t.two_vcpu_run_cpu);
            writeln!(
                f,
                "  {:<8} CPUs used: 1-vCPU run {:.2} (others {:.2}, stolen {:.2}), \
                 2-vCPU run {:.2} (others {:.2}, stolen {:.2})",
                m.mode.to_string(),
                c1.this_process_cpus,
                c1.other_processes_cpus,
                c1.steal_cpus,
                c2.this_process_cpus,
                c2.other_processes_cpus,
                c2.steal_cpus
            )?;
            for (what, r) in [
                ("cheapest hypercall", &t.hypercall),
                ("port I/O exit", &t.port_io),
                ("no exit (loop turns)", &t.spin),
            ] {
                writeln!(
                    f,
                    "  {:<8} {:<21} {:>10.0}/s {:>12.0}/s  {:>5.2}x",
                    m.mode.to_string(),
                    what,
                    r.one_vcpu_per_sec,
                    r.two_vcpus_per_sec,
                    r.scaling
                )?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "start-up (from run(), ms)  host check   first KVM_RUN   first guest insn   (runtime set-up)   first port write"
        )?;
        for m in &self.modes {
            let s = &m.startup;
            writeln!(
                f,
                "  {:<8} {:>19.2} {:>15.2} {:>18.2} {:>18.2} {:>18.2}",
                m.mode.to_string(),
                s.host_check_ms,
                s.first_entry_ms,
                s.first_instruction_ms,
                s.guest_setup_ms,
                s.first_port_write_ms
            )?;
            let steps: Vec<String> =
                s.steps_ms.iter().map(|(n, t)| format!("{n} {t:.2}")).collect();
            writeln!(f, "           set-up steps end at: {}", steps.join(", "))?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "memory (KiB)        RSS before   peak RSS   guest RAM resident   beyond guest RAM"
        )?;
        for m in &self.modes {
            let r = &m.memory;
            writeln!(
                f,
                "  {:<8} {:>17} {:>10} {:>20} {:>18}{}",
                m.mode,
                r.rss_before_kib,
                r.peak_rss_kib,
                r.guest_resident_kib,
                r.beyond_guest_kib,
                if r.peak_reset { "" } else { " (peak not reset)" }
            )?;
        }
        writeln!(f)?;
        writeln!(f, "targets")?;
        for t in &self.targets {
            writeln!(
                f,
                "  [{}] {}: {} (target {})",
                if t.met { "met" } else { "NOT met" },
                t.what,
                t.measured,
                t.target
            )?;
        }
        Ok(())
    }
}

fn us(ns: f64) -> String {
    format!("{:.2} us", ns / 1e3)
}

fn write_trip(f: &mut std::fmt::Formatter<'_>, r: &RoundTrip, tag: &str) -> std::fmt::Result {
    writeln!(
        f,
        "  {:<32} {:>8} {:>8}   {:>10.2}x {:>9.2}x {:>8.2}x",
        format!("{}{tag}", r.name),
        us(r.median_ns),
        us(r.p99_ns),
        r.median_vs_floor,
        r.p99_vs_floor,
        r.net_median_vs_floor
    )
}
