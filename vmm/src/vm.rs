//! The running VM: state shared by the vCPU threads ([`VmShared`]), the vCPU loop, halting and
//! waking, interrupt delivery, layout changes with every vCPU held outside the guest, the
//! watchdog, and the VM's end.
//!
//! Interrupts are delivered from user space (`KVM_INTERRUPT` when the guest's interrupt
//! window is open, otherwise `request_interrupt_window`), which works the same on PVM and on
//! VMX/SVM without an in-kernel irqchip; HLT then exits to user space and parks the thread.
//!
//! The hot path (exit -> dispatch -> resume) takes no lock: per-vCPU atomics only. Locks are
//! taken to park and wake, to change the memory layout, and for console lines.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use polyvisor_core::{Dispatch, Platform};

use crate::devices::{Console, Ports};
use crate::end::VmEnd;
use crate::exits::{bump, handle_exit, Action, ExitKind, ExitTiming, Stats, VmServices};
use crate::kvm as rawkvm;
use crate::memory::{GuestMem, Layout, MemoryError};
use crate::trap::{TrapConfig, TrapStrategy};
use crate::vcpu::{Exit, KvmVcpu, VcpuBackend, VcpuState};

#[derive(Debug, Default)]
struct Park {
    parked: bool,
    /// Counted in `VmShared::parked` (an unbounded halt).
    counted: bool,
}

/// What every thread may know about one vCPU.
#[derive(Debug)]
pub struct VcpuShared {
    index: u32,
    pending: [AtomicU64; 4],
    wake_flag: AtomicBool,
    park: Mutex<Park>,
    park_cv: Condvar,
    interruptible: AtomicBool,
    in_run: AtomicBool,
    state: AtomicU8,
    spin_check: AtomicBool,
    flush_tlb: AtomicBool,
    /// `KVM_RUN` calls that returned.
    runs: AtomicU64,
    /// `Platform::halt_until` for the halt being started: monotonic ns, 0 = none.
    halt_deadline: AtomicU64,
    kick: Mutex<Option<libc::pthread_t>>,
    /// Counters.
    pub stats: Stats,
    /// Where the time went (only with `RunOptions::exit_timing`).
    pub timing: Option<Box<ExitTiming>>,
}

impl VcpuShared {
    fn new(index: u32, timed: bool) -> Self {
        VcpuShared {
            index,
            pending: Default::default(),
            wake_flag: AtomicBool::new(false),
            park: Mutex::new(Park::default()),
            park_cv: Condvar::new(),
            interruptible: AtomicBool::new(true),
            in_run: AtomicBool::new(false),
            state: AtomicU8::new(VcpuState::Created as u8),
            spin_check: AtomicBool::new(false),
            flush_tlb: AtomicBool::new(false),
            runs: AtomicU64::new(0),
            halt_deadline: AtomicU64::new(0),
            kick: Mutex::new(None),
            stats: Stats::default(),
            timing: timed.then(Box::default),
        }
    }

    /// The vCPU's state.
    pub fn state(&self) -> VcpuState {
        VcpuState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, s: VcpuState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    fn has_pending(&self) -> bool {
        self.pending.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }

    /// Takes the highest pending vector (x86 priority: the higher vector first).
    fn take_highest(&self) -> Option<u8> {
        for (word_index, word) in self.pending.iter().enumerate().rev() {
            let mut current = word.load(Ordering::Acquire);
            while current != 0 {
                let bit = 63 - current.leading_zeros();
                let next = current & !(1u64 << bit);
                match word.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return u8::try_from(word_index * 64 + bit as usize).ok(),
                    Err(actual) => current = actual,
                }
            }
        }
        None
    }

    fn post(&self, vector: u8) {
        let v = usize::from(vector);
        if let Some(word) = self.pending.get(v / 64) {
            word.fetch_or(1u64 << (v % 64), Ordering::AcqRel);
        }
    }
}

/// How probe events are recorded.
#[derive(Debug)]
pub enum ProbeSink {
    /// JSON lines appended to a file (`[bhyve] probe_log`).
    File(std::fs::File),
    /// The log (tracing, target `polyvisor::probe`).
    Log,
}

/// Everything the vCPU threads share.
pub struct VmShared {
    pub(crate) vm: VmFd,
    pub(crate) mem: GuestMem,
    pub(crate) layout: Mutex<Layout>,
    pub(crate) vcpus: Box<[VcpuShared]>,
    pub(crate) dispatch: Arc<dyn Dispatch>,
    pub(crate) console: Console,
    pub(crate) ports: Ports,
    pub(crate) trap: TrapConfig,
    stopping: AtomicBool,
    end: Mutex<Option<VmEnd>>,
    end_cv: Condvar,
    pause_requested: AtomicBool,
    pause: Mutex<()>,
    pause_cv: Condvar,
    parked: AtomicU32,
    pub(crate) start: Instant,
    pub(crate) tsc_offset: AtomicI64,
    pub(crate) tsc_khz: Option<u64>,
    pub(crate) probe_sink: Mutex<ProbeSink>,
    /// The probe sink is the log (it never changes after the VM is built).
    pub(crate) probe_to_log: bool,
    /// The kernel's segments as loaded (GPA, file bytes), to undo KVM's patching.
    original: Vec<(u64, Vec<u8>)>,
    /// The host side of the guest debug channel, when configured.
    pub(crate) debug_channel: Option<crate::debug_channel::DebugChannel>,
    /// When vCPU 0 first entered `KVM_RUN`.
    pub(crate) first_entry: OnceLock<Instant>,
    /// When vCPU 0's first port-I/O exit returned to the VMM.
    pub(crate) first_port_io: OnceLock<Instant>,
    /// The guest TSC at vCPU 0's first entry.
    pub(crate) first_entry_tsc: OnceLock<u64>,
    /// Host timers personalities armed (`Platform::set_timer`).
    pub(crate) timers: crate::timers::Timers,
}

impl std::fmt::Debug for VmShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmShared")
            .field("vcpus", &self.vcpus.len())
            .field("trap", &self.trap)
            .finish_non_exhaustive()
    }
}

/// The parts a VM is built from.
pub struct VmParts {
    /// The VM fd.
    pub vm: VmFd,
    /// Guest memory.
    pub mem: GuestMem,
    /// The layout KVM has.
    pub layout: Layout,
    /// vCPU count.
    pub vcpus: u32,
    /// The engine.
    pub dispatch: Arc<dyn Dispatch>,
    /// The console.
    pub console: Console,
    /// The trap.
    pub trap: TrapConfig,
    /// `KVM_GET_TSC_KHZ`.
    pub tsc_khz: Option<u64>,
    /// Where probe events go.
    pub probe_sink: ProbeSink,
    /// The kernel's segments (GPA, file bytes).
    pub original: Vec<(u64, Vec<u8>)>,
    /// The guest debug channel's host side (`[hyperv] debug_output`/`debug_input`).
    pub debug_channel: Option<crate::debug_channel::DebugChannel>,
    /// Time every exit into [`VcpuShared::timing`].
    pub exit_timing: bool,
}

impl VmShared {
    /// Assembles the shared state.
    pub fn new(p: VmParts) -> Self {
        VmShared {
            vm: p.vm,
            mem: p.mem,
            layout: Mutex::new(p.layout),
            vcpus: (0..p.vcpus).map(|i| VcpuShared::new(i, p.exit_timing)).collect(),
            dispatch: p.dispatch,
            console: p.console,
            ports: Ports::default(),
            trap: p.trap,
            stopping: AtomicBool::new(false),
            end: Mutex::new(None),
            end_cv: Condvar::new(),
            pause_requested: AtomicBool::new(false),
            pause: Mutex::new(()),
            pause_cv: Condvar::new(),
            parked: AtomicU32::new(0),
            start: Instant::now(),
            tsc_offset: AtomicI64::new(0),
            tsc_khz: p.tsc_khz,
            probe_to_log: matches!(p.probe_sink, ProbeSink::Log),
            probe_sink: Mutex::new(p.probe_sink),
            original: p.original,
            debug_channel: p.debug_channel,
            first_entry: OnceLock::new(),
            first_port_io: OnceLock::new(),
            first_entry_tsc: OnceLock::new(),
            timers: crate::timers::Timers::default(),
        }
    }

    pub(crate) fn vcpu(&self, index: u32) -> Option<&VcpuShared> {
        self.vcpus.get(index as usize)
    }

    /// Whether the VM is ending.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Ends the VM (the first end wins), wakes and kicks every vCPU.
    pub fn end_vm(&self, end: VmEnd) {
        if let Ok(mut slot) = self.end.lock() {
            if slot.is_none() {
                *slot = Some(end);
            }
        }
        self.stopping.store(true, Ordering::Release);
        self.end_cv.notify_all();
        self.timers.notify();
        if let Ok(_g) = self.pause.lock() {
            self.pause_cv.notify_all();
        }
        for v in self.vcpus.iter() {
            if let Ok(_p) = v.park.lock() {
                v.park_cv.notify_all();
            }
            self.kick(v.index);
        }
    }

    /// The end, once there is one.
    pub fn end_reason(&self) -> Option<VmEnd> {
        self.end.lock().ok().and_then(|e| e.clone())
    }

    /// Waits up to `timeout` for the VM to end; returns whether it has.
    pub fn wait_end(&self, timeout: Duration) -> bool {
        let Ok(guard) = self.end.lock() else {
            return true;
        };
        match self.end_cv.wait_timeout_while(guard, timeout, |e| e.is_none()) {
            Ok((g, _)) => g.is_some(),
            Err(_) => true,
        }
    }

    /// Kicks vCPU `index` out of `KVM_RUN` (no-op when its thread is not running).
    pub fn kick(&self, index: u32) {
        if let Some(v) = self.vcpu(index) {
            if let Ok(k) = v.kick.lock() {
                if let Some(thread) = *k {
                    rawkvm::kick_thread(thread);
                }
            }
        }
    }

    fn unpark(&self, v: &VcpuShared) -> bool {
        let Ok(mut p) = v.park.lock() else {
            return false;
        };
        if p.parked {
            p.parked = false;
            if p.counted {
                p.counted = false;
                self.parked.fetch_sub(1, Ordering::AcqRel);
            }
            v.park_cv.notify_one();
            true
        } else {
            false
        }
    }

    /// Wakes vCPU `target` from a halt (or makes its next halt return at once).
    pub fn wake_vcpu(&self, target: u32) -> Option<bool> {
        let v = self.vcpu(target)?;
        v.wake_flag.store(true, Ordering::Release);
        Some(self.unpark(v))
    }

    /// Queues interrupt `vector` for vCPU `target`; wakes it if it halted with interrupts on,
    /// else kicks it so the vector is injected at its next entry.
    pub fn post_interrupt(&self, target: u32, vector: u8) -> bool {
        let Some(v) = self.vcpu(target) else {
            return false;
        };
        v.post(vector);
        if v.interruptible.load(Ordering::Acquire) && self.unpark(v) {
            return true;
        }
        if v.in_run.load(Ordering::Acquire) {
            self.kick(target);
        }
        true
    }

    /// Parks vCPU `index` until it is woken, an interrupt arrives (when `interruptible`) or
    /// the VM ends. Ends the VM if this leaves every vCPU parked.
    fn park(&self, index: u32, interruptible: bool) {
        let Some(v) = self.vcpu(index) else {
            return;
        };
        let Ok(mut p) = v.park.lock() else {
            return;
        };
        // The bound is this halt's, however it ends (even at once).
        let deadline = v.halt_deadline.swap(0, Ordering::AcqRel);
        if v.wake_flag.load(Ordering::Acquire) || (interruptible && v.has_pending()) {
            drop(p);
            self.halt_ended(v);
            return;
        }
        v.interruptible.store(interruptible, Ordering::Release);
        if deadline != 0 {
            // A bounded halt: the VMM wakes it, so it never counts as halted for good.
            v.set_state(VcpuState::Halted);
            p.parked = true;
            while p.parked && !self.stopping() {
                let now = self.now_ns();
                if now >= deadline {
                    break;
                }
                p = match v.park_cv.wait_timeout(p, Duration::from_nanos(deadline - now)) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
            p.parked = false;
            drop(p);
            self.halt_ended(v);
            return;
        }
        p.parked = true;
        p.counted = true;
        v.set_state(VcpuState::Halted);
        let parked = self.parked.fetch_add(1, Ordering::AcqRel) + 1;
        if parked as usize >= self.vcpus.len() {
            drop(p);
            self.end_if_all_halted();
            let Ok(again) = v.park.lock() else {
                return;
            };
            p = again;
        }
        while p.parked && !self.stopping() {
            p = match v.park_cv.wait(p) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
        if p.parked {
            p.parked = false;
            if p.counted {
                p.counted = false;
                self.parked.fetch_sub(1, Ordering::AcqRel);
            }
        }
        drop(p);
        self.halt_ended(v);
    }

    /// The end of a halt of `v`, however it ended, before the vCPU runs again. Two steps in
    /// this order: (1) `Dispatch::halt_ended` clears the personality's marks that make an
    /// event wake `v` (Xen's blocked/polling), (2) the wake latched for the halt is forgotten.
    /// An event on another thread tests the mark, then latches a wake (`wake_vcpu`):
    /// - it tests after (1): the mark is clear, nothing is latched, the next halt sleeps;
    /// - it tests before (1) and latches before (2): (2) forgets it, the halt is over anyway;
    /// - it tests before (1) and latches after (2): the next halt returns at once, a spurious
    ///   wakeup (as an HLT may have) left to this narrow window;
    /// - a wake for the next halt needs the mark that halt's call sets, on this thread after
    ///   (2), so (2) never forgets it: no wakeup is lost.
    ///
    /// In the other order an event between (2) and (1) would latch a wake for a halt that is
    /// over. Called without the park lock, so the hook cannot deadlock against a wake.
    fn halt_ended(&self, v: &VcpuShared) {
        self.dispatch.halt_ended(v.index);
        v.wake_flag.store(false, Ordering::Release);
        v.interruptible.store(true, Ordering::Release);
        v.set_state(VcpuState::Running);
    }

    /// Ends the VM if every vCPU is halted for good: no vCPU can run and no armed host timer
    /// can wake one.
    pub(crate) fn end_if_all_halted(&self) {
        if (self.parked.load(Ordering::Acquire) as usize) < self.vcpus.len()
            || self.timers.any_armed()
        {
            return;
        }
        let detail = self
            .vcpus
            .iter()
            .map(|v| {
                format!(
                    "vCPU {} halted with interrupts {}",
                    v.index,
                    if v.interruptible.load(Ordering::Relaxed) { "enabled" } else { "disabled" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        self.end_vm(VmEnd::AllHalted { detail });
    }

    /// Changes the memory layout with every vCPU held outside `KVM_RUN`. `f` edits the
    /// layout and says whether anything changed.
    pub fn change_layout<F>(&self, f: F) -> Result<bool, MemoryError>
    where
        F: FnOnce(&mut Layout, &GuestMem) -> Result<bool, MemoryError>,
    {
        let Ok(mut layout) = self.layout.lock() else {
            return Ok(false);
        };
        if !f(&mut layout, &self.mem)? {
            return Ok(false);
        }
        if let Ok(_g) = self.pause.lock() {
            self.pause_requested.store(true, Ordering::SeqCst);
        }
        for v in self.vcpus.iter() {
            let mut rounds = 0u32;
            while v.in_run.load(Ordering::SeqCst) && !self.stopping() {
                if rounds.is_multiple_of(20) {
                    self.kick(v.index);
                }
                rounds = rounds.wrapping_add(1);
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        let result = layout.apply(&self.mem, &self.vm);
        if let Ok(_g) = self.pause.lock() {
            self.pause_requested.store(false, Ordering::SeqCst);
            self.pause_cv.notify_all();
        }
        result.map(|_| true)
    }

    fn wait_unpaused(&self, v: &VcpuShared) {
        v.set_state(VcpuState::Paused);
        if let Ok(mut g) = self.pause.lock() {
            while self.pause_requested.load(Ordering::SeqCst) && !self.stopping() {
                g = match self.pause_cv.wait(g) {
                    Ok(g) => g,
                    Err(_) => break,
                };
            }
        }
        v.set_state(VcpuState::Running);
    }

    /// Injects the highest pending interrupt if the window is open, else asks for the window.
    fn deliver_interrupts(
        &self,
        v: &VcpuShared,
        backend: &mut dyn VcpuBackend,
    ) -> Result<(), crate::vcpu::VcpuError> {
        if !v.has_pending() {
            backend.request_interrupt_window(false);
            return Ok(());
        }
        let w = backend.interrupt_window();
        if w.ready && w.if_flag {
            if let Some(vector) = v.take_highest() {
                backend.inject_interrupt(vector)?;
                bump(&v.stats.interrupts);
            }
            backend.request_interrupt_window(v.has_pending());
        } else {
            backend.request_interrupt_window(true);
        }
        Ok(())
    }

    /// The vCPU thread's body: run, handle exits, park, until the VM ends.
    pub fn run_vcpu(&self, index: u32, mut backend: KvmVcpu) {
        let Some(v) = self.vcpu(index) else {
            return;
        };
        rawkvm::set_kick_target(backend.kvm_run_ptr());
        rawkvm::set_current_vcpu(Some((index, rawkvm::RawVcpu(backend.fd().as_raw_fd()))));
        if let Ok(mut k) = v.kick.lock() {
            *k = Some(rawkvm::current_thread());
        }
        v.set_state(VcpuState::Running);
        // Whatever ends this thread (even a panic in a handler) ends the VM: never a hang.
        let _guard = EndOnDrop { vm: self, index };
        let end = self.vcpu_loop(v, &mut backend);
        if let Some(end) = end {
            self.end_vm(end);
        }
        self.console.flush(Some(index));
        if let Ok(mut k) = v.kick.lock() {
            *k = None;
        }
        rawkvm::set_kick_target(std::ptr::null_mut());
        rawkvm::set_current_vcpu(None);
        v.set_state(VcpuState::Exited);
    }

    fn vcpu_loop(&self, v: &VcpuShared, backend: &mut KvmVcpu) -> Option<VmEnd> {
        // vCPU 0 notes its first entry and its first port-I/O exit (start-up time); with exit
        // timing every run is timed. Otherwise the loop reads no clock.
        let mut first = v.index == 0;
        let mut awaiting_io = first;
        let mut last_exit: Option<(ExitKind, Instant)> = None;
        loop {
            backend.set_immediate_exit(false);
            if self.stopping() {
                return None;
            }
            v.in_run.store(true, Ordering::SeqCst);
            if self.pause_requested.load(Ordering::SeqCst) {
                v.in_run.store(false, Ordering::SeqCst);
                self.wait_unpaused(v);
                continue;
            }
            if v.flush_tlb.swap(false, Ordering::SeqCst) {
                if let Err(e) = backend.flush_tlb() {
                    v.in_run.store(false, Ordering::SeqCst);
                    return Some(VmEnd::VmmFailure(format!("vCPU {}: {e}", v.index)));
                }
            }
            if let Err(e) = self.deliver_interrupts(v, backend) {
                v.in_run.store(false, Ordering::SeqCst);
                return Some(VmEnd::VmmFailure(format!("vCPU {}: {e}", v.index)));
            }
            let timing = v.timing.as_deref();
            let timed = timing.is_some() || awaiting_io;
            if first {
                let _ = self.first_entry_tsc.set(self.tsc_now());
            }
            let entered = timed.then(Instant::now);
            if let (Some(t), Some(now), Some((kind, at))) = (timing, entered, last_exit.take()) {
                t.add_user(kind, nanos(now.saturating_duration_since(at)));
            }
            let exit = backend.run();
            let exited = timed.then(Instant::now);
            v.in_run.store(false, Ordering::SeqCst);
            v.runs.fetch_add(1, Ordering::SeqCst);
            if first {
                first = false;
                if let Some(a) = entered {
                    let _ = self.first_entry.set(a);
                }
            }
            let exit = match exit {
                Ok(exit) => exit,
                Err(e) => return Some(VmEnd::VmmFailure(format!("vCPU {}: {e}", v.index))),
            };
            if awaiting_io && matches!(exit, Exit::IoOut { .. } | Exit::IoIn { .. }) {
                awaiting_io = false;
                if let Some(b) = exited {
                    let _ = self.first_port_io.set(b);
                }
            }
            let before = timing.map(|_| {
                let io = matches!(exit, Exit::IoOut { .. } | Exit::IoIn { .. });
                (io, v.stats.hypercalls.load(Ordering::Relaxed))
            });
            let action = handle_exit(exit, v.index, backend, self);
            if let (Some(t), Some((is_io, calls_before)), Some(a), Some(b)) =
                (timing, before, entered, exited)
            {
                let kind = if v.stats.hypercalls.load(Ordering::Relaxed) != calls_before {
                    ExitKind::Hypercall
                } else if is_io {
                    ExitKind::Io
                } else {
                    ExitKind::Other
                };
                t.add_run(kind, nanos(b.saturating_duration_since(a)));
                last_exit = Some((kind, b));
            }
            if !matches!(action, Ok(Action::Halt)) {
                v.halt_deadline.store(0, Ordering::Relaxed);
            }
            match action {
                Ok(Action::Continue) => {}
                Ok(Action::Halt) => {
                    self.console.flush(Some(v.index));
                    let interruptible = backend.interrupt_window().if_flag;
                    self.park(v.index, interruptible);
                }
                Ok(Action::End(end)) => return Some(end),
                Err(e) => return Some(VmEnd::VmmFailure(format!("vCPU {}: {e}", v.index))),
            }
        }
    }

    /// The watchdog and timeout, run by the thread that started the VM until the VM ends.
    pub fn supervise(&self, timeout: Option<Duration>) {
        const TICK: Duration = Duration::from_millis(10);
        let n = self.vcpus.len();
        let mut last_exits = vec![0u64; n];
        let mut still = vec![0u32; n];
        let mut threshold = vec![2u32; n];
        let mut protects = vec![0u64; n];
        loop {
            if self.wait_end(TICK) {
                return;
            }
            if let Some(t) = timeout {
                if self.start.elapsed() >= t {
                    self.end_vm(VmEnd::Timeout(t));
                    return;
                }
            }
            if self.trap.strategy != TrapStrategy::WriteProtect {
                continue;
            }
            for (i, v) in self.vcpus.iter().enumerate() {
                let (Some(last), Some(s), Some(th), Some(pr)) = (
                    last_exits.get_mut(i),
                    still.get_mut(i),
                    threshold.get_mut(i),
                    protects.get_mut(i),
                ) else {
                    continue;
                };
                let exits = v.stats.exits.load(Ordering::Relaxed);
                let lazy = v.stats.lazy_protects.load(Ordering::Relaxed);
                if lazy != *pr {
                    *pr = lazy;
                    *th = 2;
                }
                if exits == *last && v.in_run.load(Ordering::Relaxed) {
                    *s += 1;
                    if *s >= *th {
                        *s = 0;
                        *th = (*th * 2).min(64);
                        v.spin_check.store(true, Ordering::Release);
                        self.kick(v.index);
                    }
                } else {
                    *s = 0;
                }
                *last = exits;
            }
        }
    }

    /// Nanoseconds since the VM started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Bounds the next halt of vCPU `index`.
    pub fn set_halt_deadline(&self, index: u32, deadline_ns: u64) -> bool {
        self.vcpu(index).is_some_and(|v| {
            v.halt_deadline.store(deadline_ns.max(1), Ordering::Release);
            true
        })
    }

    /// Makes vCPU `target` flush its TLB before it next enters the guest, and waits until it
    /// is out of the guest if it is in it now.
    pub fn request_tlb_flush(&self, target: u32) -> bool {
        let Some(v) = self.vcpu(target) else {
            return false;
        };
        v.flush_tlb.store(true, Ordering::SeqCst);
        if v.in_run.load(Ordering::SeqCst) {
            let generation = v.runs.load(Ordering::SeqCst);
            let mut rounds = 0u32;
            while v.in_run.load(Ordering::SeqCst)
                && v.runs.load(Ordering::SeqCst) == generation
                && !self.stopping()
            {
                if rounds.is_multiple_of(20) {
                    self.kick(target);
                }
                rounds = rounds.wrapping_add(1);
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        true
    }

    /// The guest TSC now: host RDTSC plus the offset measured at start.
    pub fn tsc_now(&self) -> u64 {
        let host = read_tsc();
        host.wrapping_add_signed(self.tsc_offset.load(Ordering::Relaxed))
    }
}

struct EndOnDrop<'a> {
    vm: &'a VmShared,
    index: u32,
}

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        if !self.vm.stopping() {
            let how = if std::thread::panicking() { "panicked" } else { "stopped" };
            self.vm.end_vm(VmEnd::VmmFailure(format!("the thread of vCPU {} {how}", self.index)));
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// RDTSC on the host.
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86-64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl VmServices for VmShared {
    fn platform(&self) -> &dyn Platform {
        self
    }
    fn mem(&self) -> &GuestMem {
        &self.mem
    }
    fn dispatch(&self) -> &dyn Dispatch {
        &*self.dispatch
    }
    fn console(&self) -> &Console {
        &self.console
    }
    fn ports(&self) -> &Ports {
        &self.ports
    }
    fn trap(&self) -> &TrapConfig {
        &self.trap
    }
    fn stats(&self, vcpu: u32) -> &Stats {
        match self.vcpu(vcpu) {
            Some(v) => &v.stats,
            None => &FALLBACK_STATS,
        }
    }
    fn take_spin_check(&self, vcpu: u32) -> bool {
        self.vcpu(vcpu).is_some_and(|v| v.spin_check.swap(false, Ordering::AcqRel))
    }
    fn protect_page_now(&self, _vcpu: u32, gpa: u64) -> Result<bool, String> {
        self.change_layout(|layout, mem| {
            if layout.is_protected(gpa) {
                return Ok(false);
            }
            layout.protect(mem, gpa & !0xfff, 0x1000)
        })
        .map_err(|e| e.to_string())
    }
    fn exit_timing(&self, vcpu: u32) -> Option<&ExitTiming> {
        self.vcpu(vcpu).and_then(|v| v.timing.as_deref())
    }
    fn original_bytes(&self, gpa: u64) -> Option<[u8; 3]> {
        self.original.iter().find_map(|(start, data)| {
            let off = usize::try_from(gpa.checked_sub(*start)?).ok()?;
            let b = data.get(off..off.checked_add(3)?)?;
            Some([*b.first()?, *b.get(1)?, *b.get(2)?])
        })
    }
}

static FALLBACK_STATS: Stats = Stats {
    exits: AtomicU64::new(0),
    io: AtomicU64::new(0),
    hypercalls: AtomicU64::new(0),
    protected_writes: AtomicU64::new(0),
    msrs: AtomicU64::new(0),
    halts: AtomicU64::new(0),
    lazy_protects: AtomicU64::new(0),
    interrupts: AtomicU64::new(0),
    kicks: AtomicU64::new(0),
    completions: AtomicU64::new(0),
    completion_ns: AtomicU64::new(0),
    page_returns: AtomicU64::new(0),
};
