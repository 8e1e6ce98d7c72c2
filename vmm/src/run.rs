//! The library entry point the CLI calls: [`run`] a configured VM to its end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_segment;
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};
use polyvisor_config::{BootProtocol, LoadedConfig};
use polyvisor_core::{Dispatch, RowInfo, StatsRow};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::{self, EntryState, Seg};
use crate::console_input::ConsoleInput;
use crate::devices::{Console, ConsoleSink};
use crate::end::VmEnd;
use crate::exits::{ExitTiming, ExitTimingSnapshot, StatsSnapshot};
use crate::host::{check_with, Caps, HostReport};
use crate::kvm as rawkvm;
use crate::loader::{parse_kernel, ElfClass, KernelImage, LoadError};
use crate::memory::{GuestMem, Layout, MemoryError};
use crate::trace::{TraceOptions, VmTrace};
use crate::trap::write_protect::pages_with_hypercalls;
use crate::trap::xen_intercept::XEN_CONFIG_MSR;
use crate::trap::{TrapConfig, TrapStrategy};
use crate::vcpu::KvmVcpu;
use crate::vm::{ProbeSink, VmParts, VmShared};

/// Why a VM could not be run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    Kvm(kvm_ioctls::Error),
    /// The kernel file could not be read.
    #[error("cannot read the kernel {path}: {source}")]
    KernelRead {
        /// The path.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The kernel image is unusable.
    #[error("kernel {origin}: {source}")]
    Load {
        /// Where the image came from.
        origin: String,
        /// What is wrong with it.
        source: LoadError,
    },
    /// The boot protocol asked for does not fit the image.
    #[error("kernel {origin}: {message}")]
    Boot {
        /// Where the image came from.
        origin: String,
        /// What does not fit.
        message: String,
    },
    /// The low memory could not be laid out.
    #[error(transparent)]
    Layout(#[from] boot::BootError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The personality could not be built.
    #[error("cannot build the {mode} personality: {source}")]
    Personality {
        /// The mode.
        mode: polyvisor_core::HypervisorMode,
        /// Why.
        source: polyvisor_personalities::BuildError,
    },
    /// The configured trap strategy is not available here.
    #[error("[host] trap = \"{choice}\" is not available: {lacks}")]
    TrapUnavailable {
        /// The choice.
        choice: String,
        /// What the host lacks.
        lacks: String,
    },
    /// Hypercalls are enabled but this host (or the configuration) has no trap.
    #[error("the {mode} personality needs a hypercall trap ([hypervisor] hypercalls_enabled = true) but {lacks}")]
    NoTrap {
        /// The personality.
        mode: polyvisor_core::HypervisorMode,
        /// What is missing.
        lacks: String,
    },
    /// A KVM setup ioctl failed.
    #[error("{op}: {source}")]
    Setup {
        /// The operation.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// CPUID could not be built.
    #[error(transparent)]
    Cpuid(#[from] crate::cpuid::CpuidError),
    /// A file (console, probe log) could not be opened.
    #[error("cannot open {what} {path}: {source}")]
    File {
        /// What it is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The trace cannot be set up: a filter naming a call the mode does not have, or a trace
    /// file that cannot be created.
    #[error("{0}")]
    Trace(String),
}

fn setup(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Setup { op, source }
}

/// Options a caller (the CLI, tests) adds to the configuration.
#[derive(Default)]
pub struct RunOptions {
    /// Keep the console output in [`RunReport::console`] instead of writing it out.
    pub capture_console: bool,
    /// Boot these bytes instead of `[vm] kernel`.
    pub kernel_override: Option<Vec<u8>>,
    /// Use this engine instead of building the configured personality (tests, embedders).
    pub dispatch: Option<Arc<dyn Dispatch>>,
    /// Overrides `[vm] timeout_secs`.
    pub timeout: Option<Duration>,
    /// A host check to reuse instead of probing again.
    pub host: Option<HostReport>,
    /// Time every exit ([`RunReport::exit_timing`]): two clock reads per exit.
    pub exit_timing: bool,
    /// Write-protect: complete KVM's pending emulation with a `KVM_RUN` of its own before
    /// answering every call, as the trap first did ([`TrapConfig::defer_completion`] off).
    /// For measurements only: it costs a `KVM_RUN` per call.
    pub eager_completion: bool,
    /// Trace every hypercall and synthetic-MSR access (`polyvisor run --trace`).
    pub trace: Option<TraceOptions>,
    /// Gather per-call statistics ([`RunReport::call_stats`]): the engine times each call.
    pub stats: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("capture_console", &self.capture_console)
            .field("kernel_override", &self.kernel_override.as_ref().map(Vec::len))
            .field("dispatch", &self.dispatch.is_some())
            .field("timeout", &self.timeout)
            .field("exit_timing", &self.exit_timing)
            .field("eager_completion", &self.eager_completion)
            .field("trace", &self.trace)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Which boot protocol was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootKind {
    /// ELF64 direct (long mode).
    Elf64,
    /// PVH (32-bit entry).
    Pvh,
}

/// How a run went.
#[derive(Debug)]
pub struct RunReport {
    /// Why the VM ended.
    pub end: VmEnd,
    /// The process exit status for that end.
    pub exit_status: i32,
    /// A human-readable account of the end, with a register dump for faults.
    pub message: String,
    /// Console output, when captured.
    pub console: Option<Vec<u8>>,
    /// The hypercall table with counters.
    pub rows: Vec<RowInfo>,
    /// Refusals without a row: (disabled, unknown, malformed).
    pub refusals: (u64, u64, u64),
    /// The personality's end-of-run report (`Dispatch::report()`, e.g. bhyve's probe
    /// counts); empty when it has nothing to say.
    pub report: Vec<String>,
    /// Exit counters summed over vCPUs.
    pub stats: StatsSnapshot,
    /// The trap strategy used.
    pub trap: TrapStrategy,
    /// The boot protocol used.
    pub boot: BootKind,
    /// Pages of guest RAM shown read-only at the end.
    pub protected_pages: usize,
    /// Wall time of the run (from the vCPUs' start).
    pub elapsed: Duration,
    /// How long the VM took to get going.
    pub startup: Startup,
    /// Bytes of guest RAM resident in host memory at the end (see
    /// [`GuestMem::resident_bytes`]).
    pub guest_ram_resident: Option<u64>,
    /// Where the vCPUs' time went, with [`RunOptions::exit_timing`].
    pub exit_timing: Option<ExitTimingSnapshot>,
    /// The trace lines, when [`TraceOutput::Capture`] was asked for.
    pub trace: Vec<String>,
    /// Per-call statistics, with [`RunOptions::stats`].
    pub call_stats: Option<Vec<StatsRow>>,
}

/// Start-up times, each from the moment [`run()`] was called.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Startup {
    /// How long the host check (the probe VM) took, when `run()` made one.
    pub host_check: Option<Duration>,
    /// The end of each set-up step: `host check`, `personality`, `kernel`, `KVM_CREATE_VM`,
    /// `VM config`, `guest memory`, `memslots`, `vCPUs`, `threads`.
    pub steps: Vec<(&'static str, Duration)>,
    /// The guest TSC when vCPU 0 first entered `KVM_RUN` (compare with a TSC the guest
    /// reads to split the boot into VMM and guest time).
    pub first_entry_tsc: Option<u64>,
    /// vCPU 0 entered `KVM_RUN` for the first time.
    pub first_entry: Option<Duration>,
    /// vCPU 0's first port-I/O exit reached the VMM: the guest ran from its entry point to
    /// its first port write (other exits, such as watchdog kicks, may come before it).
    pub first_port_io: Option<Duration>,
}

impl std::fmt::Display for RunReport {
    /// The end, the exit status and the counters, for the end of a run.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.message.trim_end())?;
        writeln!(
            f,
            "exit status {} after {:.3} s ({} boot, trap {}, {} protected pages)",
            self.exit_status,
            self.elapsed.as_secs_f64(),
            match self.boot {
                BootKind::Elf64 => "ELF64 direct",
                BootKind::Pvh => "PVH",
            },
            self.trap,
            self.protected_pages
        )?;
        let s = &self.stats;
        writeln!(
            f,
            "exits {}: port I/O {}, hypercalls {}, MSRs {}, halts {}, interrupts {}, \
             writes to protected pages {}, lazily protected pages {}",
            s.exits,
            s.io,
            s.hypercalls,
            s.msrs,
            s.halts,
            s.interrupts,
            s.protected_writes,
            s.lazy_protects
        )?;
        let (disabled, unknown, malformed) = self.refusals;
        if disabled + unknown + malformed > 0 {
            writeln!(
                f,
                "refused: {disabled} while disabled, {unknown} unknown, {malformed} malformed"
            )?;
        }
        for row in self.rows.iter().filter(|r| {
            let c = &r.counters;
            c.calls + c.denied + c.wrong_ring > 0
        }) {
            let c = &row.counters;
            writeln!(
                f,
                "  {:>6} {:<28} calls {} errors {} denied {} wrong ring {}",
                row.number, row.name, c.calls, c.errors, c.denied, c.wrong_ring
            )?;
        }
        for line in &self.report {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

impl RunReport {
    /// The console output as text (lossy).
    pub fn console_text(&self) -> String {
        self.console.as_deref().map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default()
    }
}

/// Boots the configured VM and runs it to its end. With no kernel configured, boots
/// `polyvisor_guests::DEFAULT`.
pub fn run(config: &LoadedConfig, options: RunOptions) -> Result<RunReport, VmmError> {
    let called = Instant::now();
    let kvm = Kvm::new().map_err(VmmError::Kvm)?;
    let cfg = &config.config;
    let mut host_check = None;
    let mut steps = Vec::with_capacity(10);
    let mut step = |name: &'static str| steps.push((name, called.elapsed()));
    let host = match options.host.clone() {
        Some(h) => h,
        None => {
            let t = Instant::now();
            let h = check_with(&kvm, t);
            host_check = Some(t.elapsed());
            step("host check");
            h
        }
    };
    let strategy = host
        .select(cfg.host.trap)
        .map_err(|lacks| VmmError::TrapUnavailable { choice: cfg.host.trap.to_string(), lacks })?;
    let mode = cfg.hypervisor.mode;
    if strategy == TrapStrategy::None && cfg.hypervisor.hypercalls_enabled {
        let lacks = if host.strategy == TrapStrategy::None {
            format!(
                "this host has no hypercall trap: {}; and {}",
                host.lacks(TrapStrategy::XenIntercept),
                host.lacks(TrapStrategy::WriteProtect)
            )
        } else {
            "[host] trap = \"none\" turns the trap off".to_string()
        };
        return Err(VmmError::NoTrap { mode, lacks });
    }
    let facts = host.facts();
    let dispatch = match options.dispatch.clone() {
        Some(d) => d,
        None => polyvisor_personalities::build(cfg, &facts)
            .map_err(|source| VmmError::Personality { mode, source })?,
    };
    let tracer = install_trace(&*dispatch, &options)?;

    // The kernel.
    let (bytes, origin): (std::borrow::Cow<'_, [u8]>, String) =
        match (&options.kernel_override, &cfg.vm.kernel) {
            (Some(b), _) => (b.as_slice().into(), "(given bytes)".into()),
            (None, Some(p)) => {
                let path = config.resolve(p);
                let b = std::fs::read(&path)
                    .map_err(|source| VmmError::KernelRead { path: path.clone(), source })?;
                (b.into(), path.display().to_string())
            }
            (None, None) => (polyvisor_guests::DEFAULT.into(), "(built-in default guest)".into()),
        };
    let ram_size = u64::from(cfg.vm.memory_mib) << 20;
    step("personality");
    let image = parse_kernel(&bytes, ram_size)
        .map_err(|source| VmmError::Load { origin: origin.clone(), source })?;
    let boot_kind = choose_boot(&image, cfg.vm.boot, &origin)?;

    // Memory, devices, the VM.
    step("kernel");
    let vm = kvm.create_vm().map_err(setup("KVM_CREATE_VM"))?;
    step("KVM_CREATE_VM");
    let caps = host.caps;
    // Before any memslot: KVM_X86_SET_MSR_FILTER waits for an SRCU grace period, which is
    // expedited only while the VM's SRCU is idle; right after the memslot updates' grace
    // periods it takes a normal one (about 15 ms here instead of 0.05).
    configure_vm(&vm, &caps, strategy, &dispatch.msr_ranges())?;
    step("VM config");
    let mem = GuestMem::new(ram_size)?;
    boot::write_low_memory(mem.ram(), ram_size, cfg.vm.vcpus, &cfg.vm.cmdline)?;
    let mut layout = Layout::new(caps.memslots as usize);
    load_segments(&mem, &image)?;
    if strategy == TrapStrategy::WriteProtect {
        protect_code(&mem, &mut layout, &image)?;
    }
    step("guest memory");
    layout.apply(&mem, &vm)?;
    step("memslots");

    let vcpus = create_vcpus(&kvm, &vm, &caps, &*dispatch, &image, boot_kind, cfg.vm.vcpus)?;
    step("vCPUs");
    let tsc_khz = vcpus
        .first()
        .and_then(|v| v.fd().get_tsc_khz().ok())
        .map(u64::from)
        .filter(|k| *k > 0)
        .or(host.tsc_khz);
    let tsc_offset = vcpus.first().map(|v| tsc_offset(v.fd())).unwrap_or(0);

    let input = match &cfg.vm.console_input {
        Some(p) if p.as_os_str() == "-" => ConsoleInput::open(p),
        Some(p) => ConsoleInput::open(&config.resolve(p)),
        None => Ok(ConsoleInput::default()),
    }
    .map_err(|source| VmmError::File {
        what: "console input",
        path: cfg.vm.console_input.clone().unwrap_or_default(),
        source,
    })?;
    let sink = if options.capture_console {
        ConsoleSink::Capture(Vec::new())
    } else if let Some(p) = &cfg.vm.console {
        let path = config.resolve(p);
        let f = std::fs::File::create(&path).map_err(|source| VmmError::File {
            what: "console file",
            path,
            source,
        })?;
        ConsoleSink::File(f)
    } else {
        ConsoleSink::Stdout
    };
    let probe_sink = match &cfg.bhyve.probe_log {
        Some(p) => {
            let path = config.resolve(p);
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| VmmError::File { what: "probe log", path, source })?;
            ProbeSink::File(f)
        }
        None => ProbeSink::Log,
    };
    let debug_channel = open_debug_channel(config)?;
    let shared = Arc::new(VmShared::new(VmParts {
        vm,
        mem,
        layout,
        vcpus: cfg.vm.vcpus,
        dispatch: dispatch.clone(),
        console: Console::new(sink, cfg.vm.vcpus)
            .with_input(input)
            .with_limit(u64::from(cfg.vm.console_limit_kib) * 1024),
        trap: TrapConfig {
            strategy,
            instruction: cfg.host.instruction,
            native: facts.instruction,
            defer_completion: !options.eager_completion,
        },
        tsc_khz,
        probe_sink,
        original: image.segments.iter().map(|s| (s.gpa, s.data.clone())).collect(),
        debug_channel,
        exit_timing: options.exit_timing,
    }));
    shared.tsc_offset.store(tsc_offset, std::sync::atomic::Ordering::Relaxed);

    rawkvm::install_kick_handler().map_err(setup("sigaction"))?;
    let timeout = options.timeout.or_else(|| {
        (cfg.vm.timeout_secs > 0).then(|| Duration::from_secs(u64::from(cfg.vm.timeout_secs)))
    });
    let started = Instant::now();
    let mut threads = Vec::with_capacity(vcpus.len());
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let s = shared.clone();
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let t = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || s.run_vcpu(index, vcpu));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                shared.end_vm(VmEnd::VmmFailure(format!("cannot start vCPU {i}: {e}")));
                for t in threads {
                    let _ = t.join();
                }
                return Err(VmmError::Thread(e));
            }
        }
    }
    let timer_thread = {
        let s = shared.clone();
        std::thread::Builder::new().name("timers".into()).spawn(move || s.run_timers())
    };
    if let Err(e) = &timer_thread {
        shared.end_vm(VmEnd::VmmFailure(format!("cannot start the timer thread: {e}")));
    }
    step("threads");
    shared.supervise(timeout);
    if let Ok(t) = timer_thread {
        let _ = t.join();
    }
    for t in threads {
        if t.join().is_err() {
            shared.end_vm(VmEnd::VmmFailure("a vCPU thread panicked".into()));
        }
    }
    let elapsed = started.elapsed();
    let end = shared
        .end_reason()
        .unwrap_or_else(|| VmEnd::VmmFailure("the VM stopped without a reason".into()));
    let mut message = end.to_string();
    if let Some(d) = end.dump() {
        message.push('\n');
        message.push_str(d);
    }
    let dropped = shared.console.dropped();
    if dropped > 0 {
        message.push_str(&format!(
            "\nthe console dropped {dropped} bytes of guest output past [vm] console_limit_kib \
             = {}",
            cfg.vm.console_limit_kib
        ));
    }
    let mut stats = StatsSnapshot::default();
    for v in shared.vcpus.iter() {
        v.stats.add_to(&mut stats);
    }
    let protected_pages = shared.layout.lock().map(|l| l.protected_pages()).unwrap_or(0);
    let since_called = |t: Option<&Instant>| t.map(|t| t.saturating_duration_since(called));
    let startup = Startup {
        host_check,
        steps,
        first_entry_tsc: shared.first_entry_tsc.get().copied(),
        first_entry: since_called(shared.first_entry.get()),
        first_port_io: since_called(shared.first_port_io.get()),
    };
    let exit_timing = options
        .exit_timing
        .then(|| ExitTiming::summarise(shared.vcpus.iter().filter_map(|v| v.timing.as_deref())));
    let console = shared.console.take_capture();
    shared.console.flush(None);
    Ok(RunReport {
        exit_status: end.exit_status(),
        end,
        message,
        console,
        rows: dispatch.rows(),
        refusals: dispatch.refusals().snapshot(),
        report: dispatch.report(),
        stats,
        trap: strategy,
        boot: boot_kind,
        protected_pages,
        elapsed,
        startup,
        guest_ram_resident: shared.mem.resident_bytes(),
        exit_timing,
        trace: tracer.as_ref().map(|t| t.finish()).unwrap_or_default(),
        call_stats: tracer.and_then(|t| t.stats()),
    })
}

/// Gives the engine a trace sink when tracing or statistics are asked for.
fn install_trace(
    dispatch: &dyn Dispatch,
    options: &RunOptions,
) -> Result<Option<Arc<VmTrace>>, VmmError> {
    if options.trace.is_none() && !options.stats {
        return Ok(None);
    }
    let sink =
        VmTrace::new(options.trace.as_ref(), options.stats, dispatch.mode(), &dispatch.rows())
            .map_err(VmmError::Trace)?;
    let sink = Arc::new(sink);
    if !dispatch.set_trace_sink(sink.clone()) {
        return Err(VmmError::Trace(
            "this engine cannot be traced (it has a trace sink already, or does not trace)".into(),
        ));
    }
    Ok(Some(sink))
}

/// Opens the guest debug channel's files (`[hyperv] debug_output`, `debug_input`) for a
/// hyperv VM that has one.
fn open_debug_channel(
    config: &LoadedConfig,
) -> Result<Option<crate::debug_channel::DebugChannel>, VmmError> {
    let cfg = &config.config;
    let Some(out) = &cfg.hyperv.debug_output else {
        return Ok(None);
    };
    if cfg.hypervisor.mode != polyvisor_core::HypervisorMode::Hyperv {
        return Ok(None);
    }
    let out = config.resolve(out);
    let input = cfg.hyperv.debug_input.as_ref().map(|p| config.resolve(p));
    crate::debug_channel::DebugChannel::open(&out, input.as_deref()).map(Some).map_err(
        |(what, source)| {
            let path = if what.ends_with("input") { input.unwrap_or_default() } else { out };
            VmmError::File { what, path, source }
        },
    )
}

/// Picks the boot protocol for an image.
pub fn choose_boot(
    image: &KernelImage,
    wanted: BootProtocol,
    origin: &str,
) -> Result<BootKind, VmmError> {
    let err =
        |message: &str| VmmError::Boot { origin: origin.to_string(), message: message.to_string() };
    match wanted {
        BootProtocol::Pvh => match image.pvh_entry {
            Some(_) => Ok(BootKind::Pvh),
            None => Err(err("boot = \"pvh\" but the image has no XEN_ELFNOTE_PHYS32_ENTRY note")),
        },
        BootProtocol::Elf64 => match (image.class, image.entry64) {
            (ElfClass::Elf64, Some(_)) => Ok(BootKind::Elf64),
            (ElfClass::Elf64, None) => Err(err(
                "boot = \"elf64\" but the entry point is not in a loaded executable segment",
            )),
            (ElfClass::Elf32, _) => Err(err(
                "boot = \"elf64\" needs an ELFCLASS64 image; this one is ELFCLASS32 (use PVH)",
            )),
        },
        BootProtocol::Auto => {
            if image.pvh_entry.is_some() {
                Ok(BootKind::Pvh)
            } else if image.entry64.is_some() {
                Ok(BootKind::Elf64)
            } else {
                Err(err("an ELFCLASS32 image needs a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"))
            }
        }
    }
}

fn load_segments(mem: &GuestMem, image: &KernelImage) -> Result<(), VmmError> {
    for s in &image.segments {
        let fail = |e: vm_memory::GuestMemoryError| {
            VmmError::Memory(MemoryError::Allocate {
                size: s.memsz,
                reason: format!("loading segment {} at {:#x}: {e}", s.index, s.gpa),
            })
        };
        mem.ram().write_slice(&s.data, GuestAddress(s.gpa)).map_err(fail)?;
        // Zero .bss explicitly (fresh anonymous memory is zero, but say what the ELF says).
        let bss = s.memsz - s.data.len() as u64;
        let mut at = s.gpa + s.data.len() as u64;
        let zeros = [0u8; 4096];
        let mut left = bss;
        while left > 0 {
            let n = left.min(4096);
            mem.ram()
                .write_slice(zeros.get(..n as usize).unwrap_or(&[]), GuestAddress(at))
                .map_err(fail)?;
            at += n;
            left -= n;
        }
    }
    Ok(())
}

/// Write-protect: read-only executable segments are protected whole; in writable executable
/// segments (RWX) only the pages that hold a hypercall encoding are (the watchdog finds the
/// rest).
fn protect_code(mem: &GuestMem, layout: &mut Layout, image: &KernelImage) -> Result<(), VmmError> {
    for s in image.segments.iter().filter(|s| s.executable) {
        if s.writable {
            for page in pages_with_hypercalls(s.gpa, &s.data) {
                layout.protect(mem, page, 0x1000)?;
            }
        } else {
            layout.protect(mem, s.gpa, s.memsz)?;
        }
    }
    Ok(())
}

fn configure_vm(
    vm: &VmFd,
    caps: &Caps,
    strategy: TrapStrategy,
    msr_ranges: &[(u32, u32)],
) -> Result<(), VmmError> {
    match strategy {
        TrapStrategy::XenIntercept => {
            let cfg = kvm_bindings::kvm_xen_hvm_config {
                flags: rawkvm::KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL,
                msr: XEN_CONFIG_MSR,
                ..Default::default()
            };
            rawkvm::xen_hvm_config(vm, &cfg).map_err(setup("KVM_XEN_HVM_CONFIG"))?;
        }
        TrapStrategy::None => {
            // No trap: let the guest see #UD rather than spin on a call KVM keeps patching.
            if caps.disable_quirks2 & rawkvm::KVM_X86_QUIRK_FIX_HYPERCALL_INSN as u32 != 0 {
                let cap = kvm_bindings::kvm_enable_cap {
                    cap: rawkvm::KVM_CAP_DISABLE_QUIRKS2,
                    args: [rawkvm::KVM_X86_QUIRK_FIX_HYPERCALL_INSN, 0, 0, 0],
                    ..Default::default()
                };
                vm.enable_cap(&cap).map_err(setup("KVM_CAP_DISABLE_QUIRKS2"))?;
            }
        }
        TrapStrategy::WriteProtect => {}
    }
    if caps.user_space_msr {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: rawkvm::KVM_CAP_X86_USER_SPACE_MSR,
            args: [
                u64::from(
                    kvm_bindings::KVM_MSR_EXIT_REASON_FILTER
                        | kvm_bindings::KVM_MSR_EXIT_REASON_UNKNOWN,
                ),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        vm.enable_cap(&cap).map_err(setup("KVM_CAP_X86_USER_SPACE_MSR"))?;
    }
    if caps.msr_filter && !msr_ranges.is_empty() {
        // Denied ranges (bitmap of zeros) exit to user space with reason FILTER.
        const CHUNK: u32 = 0x3000; // KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8
        let zeros = vec![0u8; (CHUNK / 8) as usize];
        let mut ranges = Vec::new();
        for &(first, last) in msr_ranges {
            let mut base = first;
            loop {
                let count = (last - base).saturating_add(1).min(CHUNK);
                ranges.push(MsrFilterRange {
                    flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                    base,
                    msr_count: count,
                    bitmap: &zeros,
                });
                match base.checked_add(count) {
                    Some(next) if next <= last && next > base => base = next,
                    _ => break,
                }
            }
        }
        vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
            .map_err(setup("KVM_X86_SET_MSR_FILTER"))?;
    }
    Ok(())
}

fn kvm_seg(s: &Seg) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: 1,
        dpl: 0,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.s),
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn set_entry(fd: &VcpuFd, e: &EntryState) -> Result<(), VmmError> {
    let mut sregs = fd.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
    sregs.cs = kvm_seg(&e.cs);
    let data = kvm_seg(&e.data);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_seg(&e.tr);
    sregs.gdt.base = boot::GDT_GPA;
    sregs.gdt.limit = (boot::gdt_entries().len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = e.cr0;
    sregs.cr3 = e.cr3;
    sregs.cr4 = e.cr4;
    sregs.efer = e.efer;
    fd.set_sregs(&sregs).map_err(setup("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: e.rip,
        rsp: e.rsp,
        rdi: e.rdi,
        rsi: e.rsi,
        rbx: e.rbx,
        rflags: 2,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(setup("KVM_SET_REGS"))
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    caps: &Caps,
    dispatch: &dyn Dispatch,
    image: &KernelImage,
    boot_kind: BootKind,
    count: u32,
) -> Result<Vec<KvmVcpu>, VmmError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(setup("KVM_GET_SUPPORTED_CPUID"))?;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let fd = vm.create_vcpu(u64::from(i)).map_err(setup("KVM_CREATE_VCPU"))?;
        let cpuid = crate::cpuid::build(supported.as_slice(), &dispatch.cpuid(i), i)?;
        fd.set_cpuid2(&cpuid).map_err(setup("KVM_SET_CPUID2"))?;
        let entry = match (boot_kind, image.entry64, image.pvh_entry) {
            (BootKind::Elf64, Some(e), _) => boot::elf64_entry(e, i),
            (BootKind::Pvh, _, Some(e)) => boot::pvh_entry(e, i),
            _ => {
                return Err(VmmError::Boot {
                    origin: "kernel".into(),
                    message: "no entry point for the chosen protocol".into(),
                })
            }
        };
        set_entry(&fd, &entry)?;
        out.push(KvmVcpu::new(fd, caps.sync_regs_usable()));
    }
    Ok(out)
}

/// Guest TSC minus host TSC, from MSR IA32_TSC read between two RDTSCs. The read is a system
/// call that a busy host can preempt, and the midpoint of a wide bracket can be off by many
/// microseconds, so the narrowest of several brackets is kept (it errs by at most half its
/// width: well under a microsecond on an idle core).
fn tsc_offset(fd: &VcpuFd) -> i64 {
    const SAMPLES: usize = 16;
    let Ok(mut msrs) = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: 0x10,
        ..Default::default()
    }]) else {
        return 0;
    };
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..SAMPLES {
        let before = crate::vm::read_tsc();
        let n = fd.get_msrs(&mut msrs).unwrap_or(0);
        let after = crate::vm::read_tsc();
        if n != 1 {
            continue;
        }
        let guest = msrs.as_slice().first().map_or(0, |e| e.data);
        let width = after.wrapping_sub(before);
        let host = before.wrapping_add(width / 2);
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, guest.wrapping_sub(host) as i64));
        }
    }
    best.map_or(0, |(_, offset)| offset)
}
