//! Fakes for exercising personalities without a VM: a [`RecordingPlatform`] that remembers
//! every effect a handler asked for, snapshot builders and small guest memories. Used by unit
//! tests, benchmarks and fuzzers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vm_memory::GuestAddress;

use crate::platform::{Platform, PlatformError, ProbeEvent, TimerCallback};
use crate::regs::{CpuMode, HypercallInstruction, Registers, VcpuSnapshot};
use crate::GuestMemoryMmap;

/// An effect a handler asked the platform for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Console output.
    Console(u32, Vec<u8>),
    /// A yield, with its optional target.
    Yield(u32, Option<u32>),
    /// A wake of the given vCPU.
    Wake(u32),
    /// An interrupt to (vCPU, vector).
    Interrupt(u32, u8),
    /// A probe: id, name, args, thread, vCPU.
    Probe(u64, String, [u64; 5], u64, u32),
    /// An overlay placed (slot, gpa, contents) or removed (slot, None).
    Overlay(u32, Option<(u64, Vec<u8>)>),
    /// A code range to protect.
    ProtectCode(u64, u64),
    /// A guest TLB flush of the given vCPU.
    FlushTlb(u32),
    /// Bytes posted on the debug channel by a vCPU.
    DebugPost(u32, Vec<u8>),
    /// A host timer armed (id, deadline) or disarmed (id, None).
    Timer(u32, Option<u64>),
}

/// A host timer armed on a [`RecordingPlatform`], run by [`RecordingPlatform::fire_due`].
#[derive(Clone)]
pub struct ArmedTimer {
    /// The personality's timer id.
    pub id: u32,
    /// When it fires (monotonic ns).
    pub deadline_ns: u64,
    /// What it runs.
    pub fire: TimerCallback,
}

impl std::fmt::Debug for ArmedTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmedTimer")
            .field("id", &self.id)
            .field("deadline_ns", &self.deadline_ns)
            .finish_non_exhaustive()
    }
}

/// A [`Platform`] that records effects and answers time queries from a settable clock.
#[derive(Debug)]
pub struct RecordingPlatform {
    /// Effects in call order.
    pub effects: Mutex<Vec<Effect>>,
    /// vCPUs in the pretend VM.
    pub vcpus: u32,
    /// The clock, in nanoseconds since start; tests advance it.
    pub now_ns: AtomicU64,
    /// TSC frequency in kHz (None: unknown).
    pub tsc_khz: Option<u64>,
    /// Bytes `console_read` hands out.
    pub input: Mutex<Vec<u8>>,
    /// Whether effects are recorded (benchmarks turn it off so the fake costs nothing).
    pub recording: bool,
    /// Bytes `debug_retrieve` hands out.
    pub debug_input: Mutex<Vec<u8>>,
    /// What `read_xmm` answers (None: unsupported).
    pub xmm: Mutex<Option<[u128; 6]>>,
    /// Host timers armed with `set_timer`.
    pub timers: Mutex<Vec<ArmedTimer>>,
}

impl RecordingPlatform {
    /// A platform with `vcpus` vCPUs, a 1 GHz TSC and the clock at zero.
    pub fn new(vcpus: u32) -> Self {
        RecordingPlatform {
            effects: Mutex::new(Vec::new()),
            vcpus,
            now_ns: AtomicU64::new(0),
            tsc_khz: Some(1_000_000),
            input: Mutex::new(Vec::new()),
            recording: true,
            debug_input: Mutex::new(Vec::new()),
            xmm: Mutex::new(None),
            timers: Mutex::new(Vec::new()),
        }
    }

    /// A platform that records nothing: for benchmarks, where the fake must cost nothing.
    pub fn quiet(vcpus: u32) -> Self {
        RecordingPlatform { recording: false, ..Self::new(vcpus) }
    }

    fn record(&self, effect: Effect) {
        if !self.recording {
            return;
        }
        if let Ok(mut effects) = self.effects.lock() {
            effects.push(effect);
        }
    }

    /// The effects recorded so far.
    pub fn take(&self) -> Vec<Effect> {
        self.effects.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }

    /// Runs (and disarms) every timer whose deadline the clock has reached, as the VMM's
    /// timer thread would; returns how many ran.
    pub fn fire_due(&self, memory: &GuestMemoryMmap) -> usize {
        let now = self.now_ns.load(Ordering::Relaxed);
        let due: Vec<ArmedTimer> = match self.timers.lock() {
            Ok(mut t) => {
                let (due, keep): (Vec<ArmedTimer>, Vec<ArmedTimer>) =
                    t.drain(..).partition(|t| t.deadline_ns <= now);
                *t = keep;
                due
            }
            Err(_) => Vec::new(),
        };
        for t in &due {
            (t.fire)(self, memory);
        }
        due.len()
    }

    /// The deadline timer `id` is armed for, if it is.
    pub fn timer_deadline(&self, id: u32) -> Option<u64> {
        let t = self.timers.lock().ok()?;
        t.iter().find(|t| t.id == id).map(|t| t.deadline_ns)
    }

    fn check(&self, vcpu: u32) -> Result<(), PlatformError> {
        if vcpu < self.vcpus {
            Ok(())
        } else {
            Err(PlatformError::NoSuchVcpu(vcpu))
        }
    }
}

impl Platform for RecordingPlatform {
    fn console_write(&self, vcpu: u32, bytes: &[u8]) {
        self.record(Effect::Console(vcpu, bytes.to_vec()));
    }
    fn console_read(&self, buf: &mut [u8]) -> usize {
        let Ok(mut input) = self.input.lock() else {
            return 0;
        };
        let n = buf.len().min(input.len());
        for (dst, src) in buf.iter_mut().zip(input.drain(..n)) {
            *dst = src;
        }
        n
    }
    fn vcpu_count(&self) -> u32 {
        self.vcpus
    }
    fn yield_now(&self, vcpu: u32, target: Option<u32>) {
        self.record(Effect::Yield(vcpu, target));
    }
    fn wake(&self, target: u32) -> Result<bool, PlatformError> {
        self.check(target)?;
        self.record(Effect::Wake(target));
        Ok(true)
    }
    fn interrupt(&self, target: u32, vector: u8) -> Result<(), PlatformError> {
        self.check(target)?;
        self.record(Effect::Interrupt(target, vector));
        Ok(())
    }
    fn monotonic_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }
    fn wall_clock(&self) -> (i64, u32) {
        (1_700_000_000, 0)
    }
    fn guest_tsc(&self) -> u64 {
        // A 1 GHz TSC: one tick per nanosecond.
        self.now_ns.load(Ordering::Relaxed)
    }
    fn tsc_khz(&self) -> Option<u64> {
        self.tsc_khz
    }
    fn probe_fired(&self, e: &ProbeEvent<'_>) {
        self.record(Effect::Probe(e.probe_id, e.name.to_string(), e.args, e.thread, e.vcpu));
    }
    fn map_overlay(&self, slot: u32, placement: Option<(u64, &[u8])>) -> Result<(), PlatformError> {
        self.record(Effect::Overlay(slot, placement.map(|(gpa, bytes)| (gpa, bytes.to_vec()))));
        Ok(())
    }
    fn protect_code(&self, gpa: u64, len: u64) -> Result<(), PlatformError> {
        self.record(Effect::ProtectCode(gpa, len));
        Ok(())
    }
    fn flush_guest_tlb(&self, target: u32) -> Result<(), PlatformError> {
        self.check(target)?;
        self.record(Effect::FlushTlb(target));
        Ok(())
    }
    fn debug_post(&self, vcpu: u32, bytes: &[u8]) -> Result<usize, PlatformError> {
        if !bytes.is_empty() {
            self.record(Effect::DebugPost(vcpu, bytes.to_vec()));
        }
        Ok(bytes.len())
    }
    fn debug_retrieve(&self, _vcpu: u32, buf: &mut [u8]) -> Result<usize, PlatformError> {
        let Ok(mut input) = self.debug_input.lock() else {
            return Ok(0);
        };
        let n = buf.len().min(input.len());
        for (dst, src) in buf.iter_mut().zip(input.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
    fn set_timer(&self, id: u32, timer: Option<(u64, TimerCallback)>) -> Result<(), PlatformError> {
        self.record(Effect::Timer(id, timer.as_ref().map(|(d, _)| *d)));
        if let Ok(mut t) = self.timers.lock() {
            t.retain(|t| t.id != id);
            if let Some((deadline_ns, fire)) = timer {
                t.push(ArmedTimer { id, deadline_ns, fire });
            }
        }
        Ok(())
    }
    fn read_xmm(&self, _vcpu: u32) -> Result<[u128; 6], PlatformError> {
        self.xmm
            .lock()
            .ok()
            .and_then(|x| *x)
            .ok_or(PlatformError::Unsupported("XMM register access"))
    }
}

/// Guest memory of `size` bytes at GPA 0.
pub fn memory(size: usize) -> GuestMemoryMmap {
    match GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]) {
        Ok(m) => m,
        // Test-only helper: an anonymous mapping of a test's size does not fail.
        Err(e) => unreachable!("cannot map {size} bytes of test memory: {e}"),
    }
}

/// A 64-bit CPL 0 VMCALL snapshot on vCPU 0 with the given registers.
pub fn snapshot(regs: Registers) -> VcpuSnapshot {
    VcpuSnapshot {
        vcpu: 0,
        regs,
        cpl: 0,
        mode: CpuMode::Long64,
        instruction: HypercallInstruction::Vmcall,
    }
}
