//! Fakes for exercising personalities without a VM: a [`RecordingPlatform`] that remembers
//! every effect a handler asked for, snapshot builders and small guest memories. Used by unit
//! tests, benchmarks and fuzzers.

use std::collections::VecDeque;
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

/// A probe a guest fired, as a [`RecordingPlatform`] keeps it: the whole [`ProbeEvent`],
/// timestamp included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedProbe {
    /// The id PROBE_CREATE returned.
    pub probe_id: u64,
    /// The probe's name.
    pub name: String,
    /// The five arguments.
    pub args: [u64; 5],
    /// The guest's thread id.
    pub thread: u64,
    /// The vCPU that fired it.
    pub vcpu: u32,
    /// Nanoseconds since the VM started, as the platform's clock said.
    pub timestamp_ns: u64,
}

/// A guest linear-to-physical translation a test gives [`RecordingPlatform::translate_gva`]:
/// `(gva, write)` to a GPA or an error.
pub type Translate = Box<dyn Fn(u64, bool) -> Result<u64, PlatformError> + Send + Sync>;

/// A [`Platform`] that records effects and answers time queries from a settable clock.
///
/// Tests shape it with builder-style setters ([`RecordingPlatform::bare`],
/// [`RecordingPlatform::with_tsc_khz`], [`RecordingPlatform::failing_interrupts`], ...) rather
/// than wrapping it in a platform of their own.
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
    /// Added to the guest TSC: a TSC that did not start at zero.
    pub tsc_base: AtomicU64,
    /// TSC values `guest_tsc` answers first, in order, before the clock's.
    pub tsc_script: Mutex<VecDeque<u64>>,
    /// Whether the wall clock runs with [`RecordingPlatform::now_ns`] (else it stays at its
    /// start, 1_700_000_000 s).
    pub wall_clock_runs: bool,
    /// Whole probe events, timestamps included, in call order (see [`Effect::Probe`]).
    pub probes: Mutex<Vec<RecordedProbe>>,
    /// `halt_until` calls (vCPU, deadline); `None`: `halt_until` is unsupported.
    pub halt_log: Option<Mutex<Vec<(u32, u64)>>>,
    /// How `translate_gva` translates; `None`: unsupported.
    pub translate: Option<Translate>,
    /// What `memory_map` answers.
    pub memory_map: Option<Vec<(u64, u64, u32)>>,
    /// The APIC id of each vCPU, by index; `None`: vCPU n has APIC id n.
    pub apic_ids: Option<Vec<u32>>,
    /// vCPUs whose `interrupt` fails, and how.
    pub interrupt_errors: Vec<(u32, PlatformError)>,
    /// When set, how `map_overlay` fails.
    pub overlay_error: Option<PlatformError>,
    /// When set, how `protect_code` fails.
    pub protect_error: Option<PlatformError>,
    /// Whether only the required effects are provided: `flush_guest_tlb`, `debug_post`,
    /// `debug_retrieve`, `read_xmm` and `set_timer` then answer as the trait's defaults do
    /// (unsupported), as a VMM without them would.
    pub required_only: bool,
}

impl std::fmt::Debug for RecordingPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingPlatform")
            .field("effects", &self.effects)
            .field("vcpus", &self.vcpus)
            .field("now_ns", &self.now_ns)
            .field("tsc_khz", &self.tsc_khz)
            .field("recording", &self.recording)
            .field("required_only", &self.required_only)
            .finish_non_exhaustive()
    }
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
            tsc_base: AtomicU64::new(0),
            tsc_script: Mutex::new(VecDeque::new()),
            wall_clock_runs: false,
            probes: Mutex::new(Vec::new()),
            halt_log: None,
            translate: None,
            memory_map: None,
            apic_ids: None,
            interrupt_errors: Vec::new(),
            overlay_error: None,
            protect_error: None,
            required_only: false,
        }
    }

    /// Only the required effects: the optional ones a VMM may lack answer unsupported.
    pub fn bare(self) -> Self {
        RecordingPlatform { required_only: true, ..self }
    }

    /// The clock starts at `ns`.
    pub fn at(self, ns: u64) -> Self {
        self.set_now(ns);
        self
    }

    /// A TSC of `khz` kHz: `guest_tsc` counts at that rate and `tsc_khz` says so.
    pub fn with_tsc_khz(self, khz: u64) -> Self {
        RecordingPlatform { tsc_khz: Some(khz), ..self }
    }

    /// The wall clock runs with the monotonic clock (from 1_700_000_000 s at zero).
    pub fn running_wall_clock(self) -> Self {
        RecordingPlatform { wall_clock_runs: true, ..self }
    }

    /// `halt_until` is supported and logged (see [`RecordingPlatform::halts`]).
    pub fn logging_halts(self) -> Self {
        RecordingPlatform { halt_log: Some(Mutex::new(Vec::new())), ..self }
    }

    /// `translate_gva` translates with `translate`.
    pub fn translating(self, translate: Translate) -> Self {
        RecordingPlatform { translate: Some(translate), ..self }
    }

    /// `memory_map` answers `map`.
    pub fn with_memory_map(self, map: Vec<(u64, u64, u32)>) -> Self {
        RecordingPlatform { memory_map: Some(map), ..self }
    }

    /// vCPU n has APIC id `ids[n]`.
    pub fn with_apic_ids(self, ids: Vec<u32>) -> Self {
        RecordingPlatform { apic_ids: Some(ids), ..self }
    }

    /// `interrupt` to vCPU `target` fails with `error`.
    pub fn failing_interrupts(mut self, target: u32, error: PlatformError) -> Self {
        self.interrupt_errors.push((target, error));
        self
    }

    /// `map_overlay` fails with `error`.
    pub fn failing_overlays(self, error: PlatformError) -> Self {
        RecordingPlatform { overlay_error: Some(error), ..self }
    }

    /// `protect_code` fails with `error`.
    pub fn failing_protect_code(self, error: PlatformError) -> Self {
        RecordingPlatform { protect_error: Some(error), ..self }
    }

    /// Sets the clock to `ns`.
    pub fn set_now(&self, ns: u64) {
        self.now_ns.store(ns, Ordering::Relaxed);
    }

    /// The `halt_until` calls so far (none when halts are not logged).
    pub fn halts(&self) -> Vec<(u32, u64)> {
        self.halt_log.as_ref().and_then(|h| h.lock().ok().map(|h| h.clone())).unwrap_or_default()
    }

    /// The probe events recorded so far, timestamps included.
    pub fn take_probes(&self) -> Vec<RecordedProbe> {
        self.probes.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
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
    fn vcpu_by_apic_id(&self, apic_id: u32) -> Option<u32> {
        match &self.apic_ids {
            Some(ids) => {
                let index = ids.iter().position(|id| *id == apic_id)?;
                u32::try_from(index).ok().filter(|v| *v < self.vcpus)
            }
            None => (apic_id < self.vcpus).then_some(apic_id),
        }
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
        if let Some((_, error)) = self.interrupt_errors.iter().find(|(t, _)| *t == target) {
            return Err(error.clone());
        }
        self.record(Effect::Interrupt(target, vector));
        Ok(())
    }
    fn monotonic_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }
    fn wall_clock(&self) -> (i64, u32) {
        if !self.wall_clock_runs {
            return (1_700_000_000, 0);
        }
        let ns = self.now_ns.load(Ordering::Relaxed);
        let secs = i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX);
        (1_700_000_000_i64.saturating_add(secs), (ns % 1_000_000_000) as u32)
    }
    fn guest_tsc(&self) -> u64 {
        if let Some(tsc) = self.tsc_script.lock().ok().and_then(|mut s| s.pop_front()) {
            return tsc;
        }
        // `tsc_khz` ticks per millisecond (1 GHz, one per nanosecond, when unknown).
        let ns = u128::from(self.now_ns.load(Ordering::Relaxed));
        let ticks = ns * u128::from(self.tsc_khz.unwrap_or(1_000_000)) / 1_000_000;
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
        self.tsc_base.load(Ordering::Relaxed).wrapping_add(ticks)
    }
    fn tsc_khz(&self) -> Option<u64> {
        self.tsc_khz
    }
    fn probe_fired(&self, e: &ProbeEvent<'_>) {
        self.record(Effect::Probe(e.probe_id, e.name.to_string(), e.args, e.thread, e.vcpu));
        if self.recording {
            if let Ok(mut probes) = self.probes.lock() {
                probes.push(RecordedProbe {
                    probe_id: e.probe_id,
                    name: e.name.to_string(),
                    args: e.args,
                    thread: e.thread,
                    vcpu: e.vcpu,
                    timestamp_ns: e.timestamp_ns,
                });
            }
        }
    }
    fn map_overlay(&self, slot: u32, placement: Option<(u64, &[u8])>) -> Result<(), PlatformError> {
        if let Some(error) = &self.overlay_error {
            return Err(error.clone());
        }
        self.record(Effect::Overlay(slot, placement.map(|(gpa, bytes)| (gpa, bytes.to_vec()))));
        Ok(())
    }
    fn protect_code(&self, gpa: u64, len: u64) -> Result<(), PlatformError> {
        if let Some(error) = &self.protect_error {
            return Err(error.clone());
        }
        self.record(Effect::ProtectCode(gpa, len));
        Ok(())
    }
    fn flush_guest_tlb(&self, target: u32) -> Result<(), PlatformError> {
        if self.required_only {
            return Err(PlatformError::Unsupported("guest TLB flush"));
        }
        self.check(target)?;
        self.record(Effect::FlushTlb(target));
        Ok(())
    }
    fn debug_post(&self, vcpu: u32, bytes: &[u8]) -> Result<usize, PlatformError> {
        if self.required_only {
            return Err(PlatformError::Unsupported("guest debug channel"));
        }
        if !bytes.is_empty() {
            self.record(Effect::DebugPost(vcpu, bytes.to_vec()));
        }
        Ok(bytes.len())
    }
    fn debug_retrieve(&self, _vcpu: u32, buf: &mut [u8]) -> Result<usize, PlatformError> {
        if self.required_only {
            return Err(PlatformError::Unsupported("guest debug channel"));
        }
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
        if self.required_only {
            return Err(PlatformError::Unsupported("host timers"));
        }
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
        let xmm = if self.required_only { None } else { self.xmm.lock().ok().and_then(|x| *x) };
        xmm.ok_or(PlatformError::Unsupported("XMM register access"))
    }
    fn translate_gva(&self, _vcpu: u32, gva: u64, write: bool) -> Result<u64, PlatformError> {
        match &self.translate {
            Some(translate) => translate(gva, write),
            None => Err(PlatformError::Unsupported("translate_gva")),
        }
    }
    fn halt_until(&self, vcpu: u32, deadline_ns: u64) -> Result<(), PlatformError> {
        let halts = self.halt_log.as_ref().ok_or(PlatformError::Unsupported("halt_until"))?;
        if let Ok(mut h) = halts.lock() {
            h.push((vcpu, deadline_ns));
        }
        Ok(())
    }
    fn memory_map(&self) -> Option<Vec<(u64, u64, u32)>> {
        self.memory_map.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_answers_as_before_the_hooks() {
        let p = RecordingPlatform::new(2);
        p.set_now(1_234);
        assert_eq!(p.guest_tsc(), 1_234, "a 1 GHz TSC from zero");
        assert_eq!(p.wall_clock(), (1_700_000_000, 0));
        assert_eq!(p.halt_until(0, 5), Err(PlatformError::Unsupported("halt_until")));
        assert_eq!(
            p.translate_gva(0, 0x1000, false),
            Err(PlatformError::Unsupported("translate_gva"))
        );
        assert_eq!(p.memory_map(), None);
        assert_eq!((p.vcpu_by_apic_id(1), p.vcpu_by_apic_id(2)), (Some(1), None));
        assert_eq!(p.flush_guest_tlb(1), Ok(()));
        assert_eq!(p.interrupt(1, 0x20), Ok(()));
        assert_eq!(p.take(), vec![Effect::FlushTlb(1), Effect::Interrupt(1, 0x20)]);
    }

    #[test]
    fn hooks_change_only_what_they_name() {
        let p = RecordingPlatform::new(4)
            .at(2_000_000_000)
            .with_tsc_khz(2_500_000)
            .running_wall_clock()
            .logging_halts()
            .with_apic_ids(vec![0, 10, 20, 30])
            .failing_interrupts(2, PlatformError::Failed("off".into()))
            .bare();
        p.tsc_base.store(7, Ordering::Relaxed);
        assert_eq!(p.guest_tsc(), 5_000_000_007);
        p.tsc_script.lock().unwrap().push_back(3);
        assert_eq!((p.guest_tsc(), p.guest_tsc()), (3, 5_000_000_007));
        assert_eq!(p.wall_clock(), (1_700_000_002, 0));
        assert_eq!(p.halt_until(1, 9), Ok(()));
        assert_eq!(p.halts(), vec![(1, 9)]);
        assert_eq!((p.vcpu_by_apic_id(20), p.vcpu_by_apic_id(2)), (Some(2), None));
        assert_eq!(p.interrupt(2, 0x20), Err(PlatformError::Failed("off".into())));
        assert_eq!(p.interrupt(3, 0x20), Ok(()));
        assert!(matches!(p.flush_guest_tlb(0), Err(PlatformError::Unsupported(_))));
        assert!(matches!(p.set_timer(0, None), Err(PlatformError::Unsupported(_))));
        assert_eq!(p.take(), vec![Effect::Interrupt(3, 0x20)]);
    }
}
