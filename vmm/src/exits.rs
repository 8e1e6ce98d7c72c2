//! Exit handling as a free function ([`handle_exit`]) over a [`VcpuBackend`] and the VM's
//! services ([`VmServices`]), so tests can feed it fake exits without KVM.
//!
//! No panic is reachable from guest data here: the module denies unwrap/expect/panic and
//! indexing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use polyvisor_core::{Dispatch, MsrContext, MsrRead, MsrWrite, Platform};

use crate::devices::{Console, PortWrite, Ports};
use crate::end::VmEnd;
use crate::memory::GuestMem;
use crate::trap::{self, TrapConfig};
use crate::vcpu::{Exit, VcpuBackend, VcpuError};

/// Counters of one vCPU's exits.
#[derive(Debug, Default)]
pub struct Stats {
    /// Every exit.
    pub exits: AtomicU64,
    /// Port I/O exits.
    pub io: AtomicU64,
    /// Hypercalls dispatched.
    pub hypercalls: AtomicU64,
    /// Guest writes to protected pages applied by the VMM.
    pub protected_writes: AtomicU64,
    /// MSR exits.
    pub msrs: AtomicU64,
    /// Halts (HLT or halting hypercalls).
    pub halts: AtomicU64,
    /// Pages protected lazily after a spinning hypercall was found.
    pub lazy_protects: AtomicU64,
    /// External interrupts injected.
    pub interrupts: AtomicU64,
    /// Kicks (EINTR) seen.
    pub kicks: AtomicU64,
    /// Completion runs: `KVM_RUN` with `immediate_exit` to finish a pending emulation before
    /// the VMM answers (see `trap::complete_pending`).
    pub completions: AtomicU64,
    /// Nanoseconds spent in those completion runs.
    pub completion_ns: AtomicU64,
    /// Calls resumed at the return address on the stack: the VMM performed the `ret` that
    /// followed the call instruction (hypercall pages; `trap::page_return`).
    pub page_returns: AtomicU64,
}

/// A point-in-time copy of [`Stats`], summed over vCPUs in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StatsSnapshot {
    /// Every exit.
    pub exits: u64,
    /// Port I/O exits.
    pub io: u64,
    /// Hypercalls dispatched.
    pub hypercalls: u64,
    /// Guest writes to protected pages applied by the VMM.
    pub protected_writes: u64,
    /// MSR exits.
    pub msrs: u64,
    /// Halts.
    pub halts: u64,
    /// Pages protected lazily.
    pub lazy_protects: u64,
    /// External interrupts injected.
    pub interrupts: u64,
    /// Kicks seen.
    pub kicks: u64,
    /// Completion runs.
    pub completions: u64,
    /// Nanoseconds spent in completion runs.
    pub completion_ns: u64,
    /// Calls resumed at their return address.
    pub page_returns: u64,
}

impl Stats {
    /// Adds this vCPU's counters to `total`.
    pub fn add_to(&self, total: &mut StatsSnapshot) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        total.exits += l(&self.exits);
        total.io += l(&self.io);
        total.hypercalls += l(&self.hypercalls);
        total.protected_writes += l(&self.protected_writes);
        total.msrs += l(&self.msrs);
        total.halts += l(&self.halts);
        total.lazy_protects += l(&self.lazy_protects);
        total.interrupts += l(&self.interrupts);
        total.kicks += l(&self.kicks);
        total.completions += l(&self.completions);
        total.completion_ns += l(&self.completion_ns);
        total.page_returns += l(&self.page_returns);
    }
}

/// Width of a [`Histogram`] bucket.
pub const BUCKET_NS: u64 = 100;
/// Buckets of a [`Histogram`]: 0 to 102.4 us; the last one also holds everything longer.
pub const BUCKETS: usize = 1024;

/// Durations in 100 ns buckets (relaxed atomics: one vCPU writes, reports read).
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Counts one duration.
    pub fn record(&self, ns: u64) {
        let i = usize::try_from(ns / BUCKET_NS).unwrap_or(usize::MAX).min(BUCKETS - 1);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn add_to(&self, counts: &mut [u64], sum: &mut u64) {
        for (t, c) in counts.iter_mut().zip(self.counts.iter()) {
            *t += c.load(Ordering::Relaxed);
        }
        *sum += self.sum_ns.load(Ordering::Relaxed);
    }
}

/// Summary of a [`Histogram`] (percentiles are bucket midpoints: +-50 ns).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct TimeStats {
    /// Durations counted.
    pub count: u64,
    /// Mean, ns.
    pub mean_ns: f64,
    /// Median, ns.
    pub median_ns: f64,
    /// 99th percentile, ns (102,400 or more means "off the scale").
    pub p99_ns: f64,
}

impl TimeStats {
    fn from_counts(counts: &[u64], sum_ns: u64) -> Self {
        let count: u64 = counts.iter().sum();
        let pct = |p: u64| {
            let rank = (p * count).div_ceil(100).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return (i as u64 * BUCKET_NS) as f64 + BUCKET_NS as f64 / 2.0;
                }
            }
            f64::NAN
        };
        if count == 0 {
            return TimeStats::default();
        }
        TimeStats {
            count,
            mean_ns: sum_ns as f64 / count as f64,
            median_ns: pct(50),
            p99_ns: pct(99),
        }
    }
}

/// What kind of exit a timed exit was, for [`ExitTiming`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Port I/O.
    Io,
    /// An exit that dispatched a hypercall.
    Hypercall,
    /// Anything else.
    Other,
}

impl ExitKind {
    fn slot(self) -> usize {
        match self {
            ExitKind::Io => 0,
            ExitKind::Hypercall => 1,
            ExitKind::Other => 2,
        }
    }
}

/// Where one vCPU's time went, per exit kind, with `RunOptions::exit_timing` (two clock
/// reads per exit): the `KVM_RUN` that ended in the exit, and the user-space time from the
/// exit to the next `KVM_RUN`; plus every completion run.
#[derive(Debug, Default)]
pub struct ExitTiming {
    run: [Histogram; 3],
    user: [Histogram; 3],
    completion: Histogram,
}

/// Time spent on exits of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct ExitTimes {
    /// Inside the `KVM_RUN` calls that ended in these exits (guest time since the previous
    /// exit, the exit itself and the entry before it).
    pub kvm_run: TimeStats,
    /// In user space from each such exit to the next `KVM_RUN` (handling, completion runs,
    /// interrupt delivery).
    pub user: TimeStats,
}

/// [`ExitTiming`] summed over vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct ExitTimingSnapshot {
    /// Port I/O exits.
    pub io: ExitTimes,
    /// Exits that dispatched a hypercall.
    pub hypercall: ExitTimes,
    /// Other exits.
    pub other: ExitTimes,
    /// Completion runs (`KVM_RUN` with `immediate_exit`).
    pub completion: TimeStats,
}

impl ExitTiming {
    /// Counts an exit of `kind` whose `KVM_RUN` took `ns`.
    pub fn add_run(&self, kind: ExitKind, ns: u64) {
        if let Some(h) = self.run.get(kind.slot()) {
            h.record(ns);
        }
    }

    /// Counts the user-space time after an exit of `kind`.
    pub fn add_user(&self, kind: ExitKind, ns: u64) {
        if let Some(h) = self.user.get(kind.slot()) {
            h.record(ns);
        }
    }

    /// Counts a completion run.
    pub fn add_completion(&self, ns: u64) {
        self.completion.record(ns);
    }

    /// Sums the timings of several vCPUs.
    pub fn summarise<'a>(all: impl Iterator<Item = &'a ExitTiming> + Clone) -> ExitTimingSnapshot {
        let stats = |pick: &dyn Fn(&'a ExitTiming) -> Option<&'a Histogram>| {
            let mut counts = vec![0u64; BUCKETS];
            let mut sum = 0;
            for h in all.clone().filter_map(pick) {
                h.add_to(&mut counts, &mut sum);
            }
            TimeStats::from_counts(&counts, sum)
        };
        let times = |kind: ExitKind| ExitTimes {
            kvm_run: stats(&|t| t.run.get(kind.slot())),
            user: stats(&|t| t.user.get(kind.slot())),
        };
        ExitTimingSnapshot {
            io: times(ExitKind::Io),
            hypercall: times(ExitKind::Hypercall),
            other: times(ExitKind::Other),
            completion: stats(&|t| Some(&t.completion)),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run again.
    Continue,
    /// Park until woken (HLT, or a halting hypercall).
    Halt,
    /// End the VM.
    End(VmEnd),
}

/// What the exit handler needs from the VM. Implemented by the real VM and by test fakes.
pub trait VmServices: Sync {
    /// Effects for handlers.
    fn platform(&self) -> &dyn Platform;
    /// Guest memory and overlays.
    fn mem(&self) -> &GuestMem;
    /// The engine.
    fn dispatch(&self) -> &dyn Dispatch;
    /// The console.
    fn console(&self) -> &Console;
    /// The port bus.
    fn ports(&self) -> &Ports;
    /// The trap configuration.
    fn trap(&self) -> &TrapConfig;
    /// vCPU `vcpu`'s counters.
    fn stats(&self, vcpu: u32) -> &Stats;
    /// Whether the watchdog asked vCPU `vcpu` to look for a spinning hypercall (clears it).
    fn take_spin_check(&self, vcpu: u32) -> bool;
    /// Protects the RAM page of `gpa` now (all other vCPUs held outside the guest meanwhile).
    fn protect_page_now(&self, vcpu: u32, gpa: u64) -> Result<bool, String>;
    /// The bytes the kernel image had at `gpa`, if it is inside a loaded segment.
    fn original_bytes(&self, gpa: u64) -> Option<[u8; 3]>;
    /// vCPU `vcpu`'s exit timing, when the run times exits.
    fn exit_timing(&self, _vcpu: u32) -> Option<&ExitTiming> {
        None
    }
}

/// Handles one exit of vCPU `vcpu`.
pub fn handle_exit(
    exit: Exit,
    vcpu: u32,
    backend: &mut dyn VcpuBackend,
    vm: &dyn VmServices,
) -> Result<Action, VcpuError> {
    let stats = vm.stats(vcpu);
    bump(&stats.exits);
    match exit {
        Exit::Interrupted => {
            bump(&stats.kicks);
            if vm.take_spin_check(vcpu) {
                return trap::write_protect::on_spin_check(vm, backend, vcpu);
            }
            Ok(Action::Continue)
        }
        Exit::IoOut { port, size, count } => {
            bump(&stats.io);
            let result = vm.ports().write(vm.console(), vcpu, port, size, backend.io_data());
            match result {
                PortWrite::Done => Ok(Action::Continue),
                PortWrite::Exit(status) => Ok(Action::End(VmEnd::ExitPort(status))),
                PortWrite::Unhandled => {
                    let value = le(backend.io_data());
                    let access = format!(
                        "port write: out {port:#x} ({size} byte{s} x {count}) = {value:#x}",
                        s = if size == 1 { "" } else { "s" }
                    );
                    Ok(Action::End(VmEnd::Unhandled { vcpu, access, dump: dump(backend) }))
                }
            }
        }
        Exit::IoIn { port, size, count } => {
            bump(&stats.io);
            if vm.ports().read(port, size, backend.io_data()) {
                Ok(Action::Continue)
            } else {
                let access = format!(
                    "port read: in {port:#x} ({size} byte{s} x {count})",
                    s = if size == 1 { "" } else { "s" }
                );
                Ok(Action::End(VmEnd::Unhandled { vcpu, access, dump: dump(backend) }))
            }
        }
        Exit::MmioWrite { gpa, len, data } => {
            trap::write_protect::on_mmio_write(vm, backend, vcpu, gpa, len, data)
        }
        Exit::MmioRead { gpa, len } => {
            let n = usize::from(len.min(8));
            let mut buf = [0u8; 8];
            let served = buf.get_mut(..n).is_some_and(|b| vm.mem().read_visible(gpa, b));
            if served {
                // Only during a layout change could RAM be unmapped; serve it from memory.
                backend.complete_mmio_read(buf.get(..n).unwrap_or(&[]));
                return Ok(Action::Continue);
            }
            Ok(Action::End(VmEnd::Unhandled {
                vcpu,
                access: format!("MMIO read of {len} bytes at {gpa:#x} (no device there)"),
                dump: dump(backend),
            }))
        }
        Exit::RdMsr { index } => {
            bump(&stats.msrs);
            let ctx = MsrContext { vcpu, memory: vm.mem().ram(), platform: vm.platform() };
            match vm.dispatch().read_msr(&ctx, index) {
                MsrRead::Value(v) => backend.complete_msr(false, v),
                MsrRead::Gp | MsrRead::NotMine => backend.complete_msr(true, 0),
            }
            Ok(Action::Continue)
        }
        Exit::WrMsr { index, data } => {
            bump(&stats.msrs);
            let ctx = MsrContext { vcpu, memory: vm.mem().ram(), platform: vm.platform() };
            match vm.dispatch().write_msr(&ctx, index, data) {
                MsrWrite::Done => backend.complete_msr(false, 0),
                MsrWrite::Gp | MsrWrite::NotMine => backend.complete_msr(true, 0),
                MsrWrite::Exit(reason) => {
                    backend.complete_msr(false, 0);
                    return Ok(Action::End(VmEnd::Guest(reason)));
                }
            }
            Ok(Action::Continue)
        }
        Exit::XenHcall { .. } => trap::xen_intercept::on_hcall(vm, backend, vcpu),
        Exit::Hlt => {
            bump(&stats.halts);
            Ok(Action::Halt)
        }
        Exit::IrqWindowOpen => Ok(Action::Continue),
        Exit::Shutdown => Ok(Action::End(VmEnd::TripleFault { vcpu, dump: dump(backend) })),
        Exit::InternalError { suberror, data, ndata } => {
            let kind = match suberror {
                1 => "emulation failure",
                2 => "simultaneous exceptions",
                3 => "delivery event failure",
                4 => "unexpected exit during event delivery",
                _ => "internal error",
            };
            let n = usize::try_from(ndata).unwrap_or(0).min(data.len());
            let what =
                format!("{kind} (suberror {suberror}, data {:x?})", data.get(..n).unwrap_or(&[]));
            Ok(Action::End(VmEnd::InternalError { vcpu, what, dump: dump(backend) }))
        }
        Exit::FailEntry { reason } => Ok(Action::End(VmEnd::InternalError {
            vcpu,
            what: format!("VM entry failed (hardware reason {reason:#x})"),
            dump: dump(backend),
        })),
        Exit::SystemEvent { kind } => Ok(Action::End(match kind {
            1 => VmEnd::Guest(polyvisor_core::ExitReason::Poweroff(0)),
            2 => VmEnd::Guest(polyvisor_core::ExitReason::Reboot),
            3 => VmEnd::Guest(polyvisor_core::ExitReason::Crash("KVM_SYSTEM_EVENT_CRASH".into())),
            other => VmEnd::InternalError {
                vcpu,
                what: format!("system event {other}"),
                dump: dump(backend),
            },
        })),
        Exit::Other(reason) => Ok(Action::End(VmEnd::InternalError {
            vcpu,
            what: format!("unexpected exit reason {reason}"),
            dump: dump(backend),
        })),
    }
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(data) {
        *d = *s;
    }
    u64::from_le_bytes(b)
}

fn seg(name: &str, s: &kvm_segment) -> String {
    format!(
        "{name}={:04x} base={:x} limit={:x} type={:x} dpl={} l={} db={}",
        s.selector, s.base, s.limit, s.type_, s.dpl, s.l, s.db
    )
}

/// A register dump for fatal ends (best effort: ioctl failures are reported in it).
pub fn dump(backend: &mut dyn VcpuBackend) -> String {
    let mut out = String::new();
    match backend.regs() {
        Ok(r) => {
            let _ = write!(out, "{}", format_regs(&r));
        }
        Err(e) => {
            let _ = writeln!(out, "registers unavailable: {e}");
        }
    }
    match backend.sregs() {
        Ok(s) => {
            let _ = write!(out, "{}", format_sregs(&s));
        }
        Err(e) => {
            let _ = writeln!(out, "special registers unavailable: {e}");
        }
    }
    out
}

/// General registers, four to a line.
pub fn format_regs(r: &kvm_regs) -> String {
    format!(
        "rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}\n\
         rsi={:016x} rdi={:016x} rbp={:016x} rsp={:016x}\n\
         r8 ={:016x} r9 ={:016x} r10={:016x} r11={:016x}\n\
         r12={:016x} r13={:016x} r14={:016x} r15={:016x}\n\
         rip={:016x} rflags={:08x}\n",
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rbp,
        r.rsp,
        r.r8,
        r.r9,
        r.r10,
        r.r11,
        r.r12,
        r.r13,
        r.r14,
        r.r15,
        r.rip,
        r.rflags
    )
}

/// Special registers.
pub fn format_sregs(s: &kvm_sregs) -> String {
    format!(
        "cr0={:x} cr2={:x} cr3={:x} cr4={:x} efer={:x}\n{}\n{}\n{}\ngdt={:x}/{:x} idt={:x}/{:x}\n",
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        seg("cs", &s.cs),
        seg("ss", &s.ss),
        seg("tr", &s.tr),
        s.gdt.base,
        s.gdt.limit,
        s.idt.base,
        s.idt.limit
    )
}

#[cfg(test)]
#[path = "exits_tests.rs"]
mod tests;
