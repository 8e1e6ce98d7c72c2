//! [`Platform`] for real VMs: the effects handlers ask for.

use std::cell::Cell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use polyvisor_core::{Platform, PlatformError, ProbeEvent, TimerCallback};

use crate::paging::{self, PagingRegs};
use crate::vm::{ProbeSink, VmShared};

impl VmShared {
    /// Whether the guest's page tables forbid a supervisor write to `gva` (x86
    /// `KVM_TRANSLATE` always reports `writeable`, so the tables are walked here).
    fn mapped_read_only(&self, fd: crate::kvm::RawVcpu, gva: u64) -> bool {
        let Ok(sregs) = crate::kvm::get_sregs(fd) else {
            return false;
        };
        let regs = crate::paging::PagingRegs {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        };
        let read8 = |gpa: u64| {
            let mut b = [0u8; 8];
            self.mem.read_visible(gpa, &mut b).then(|| u64::from_le_bytes(b))
        };
        crate::paging::supervisor_writable(&regs, gva, &read8) == Some(false)
    }
}

thread_local! {
    /// The vCPU whose hypercall this thread is dispatching: (index, paging registers, CPL).
    static CALLER: Cell<Option<(u32, PagingRegs, u8)>> = const { Cell::new(None) };
}

/// Clears [`CALLER`] when the dispatch ends, however it ends.
struct CallerGuard;

impl Drop for CallerGuard {
    fn drop(&mut self) {
        CALLER.with(|c| c.set(None));
    }
}

/// Runs `f` (the dispatch of a call vCPU `vcpu` made) with that vCPU's paging registers
/// (from the exit's special registers) and CPL known, so that
/// [`Platform::translate_gva`] walks the guest's page tables in user space instead of asking
/// KVM (`KVM_TRANSLATE` costs about as much as an exit on PVM hosts).
pub(crate) fn with_caller<R>(vcpu: u32, paging: PagingRegs, cpl: u8, f: impl FnOnce() -> R) -> R {
    CALLER.with(|c| c.set(Some((vcpu, paging, cpl))));
    let _guard = CallerGuard;
    f()
}

const CR0_WP: u64 = 1 << 16;

impl Platform for VmShared {
    fn console_write(&self, vcpu: u32, bytes: &[u8]) {
        self.console.write(vcpu, bytes);
    }

    fn console_read(&self, buf: &mut [u8]) -> usize {
        self.console.read(buf)
    }

    fn vcpu_count(&self) -> u32 {
        u32::try_from(self.vcpus.len()).unwrap_or(u32::MAX)
    }

    fn yield_now(&self, _vcpu: u32, _target: Option<u32>) {
        std::thread::yield_now();
    }

    fn wake(&self, target: u32) -> Result<bool, PlatformError> {
        self.wake_vcpu(target).ok_or(PlatformError::NoSuchVcpu(target))
    }

    fn interrupt(&self, target: u32, vector: u8) -> Result<(), PlatformError> {
        if self.post_interrupt(target, vector) {
            Ok(())
        } else {
            Err(PlatformError::NoSuchVcpu(target))
        }
    }

    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn wall_clock(&self) -> (i64, u32) {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            Err(_) => (0, 0),
        }
    }

    fn guest_tsc(&self) -> u64 {
        self.tsc_now()
    }

    fn tsc_khz(&self) -> Option<u64> {
        self.tsc_khz
    }

    fn probe_fired(&self, event: &ProbeEvent<'_>) {
        // Nobody listens: skip the JSON (an allocation) and the sink's lock.
        if self.probe_to_log && !tracing::enabled!(target: "polyvisor::probe", tracing::Level::INFO)
        {
            return;
        }
        let line = polyvisor_personalities::bhyve::probe_event_json(event);
        if let Ok(mut sink) = self.probe_sink.lock() {
            match &mut *sink {
                ProbeSink::File(f) => {
                    let _ = writeln!(f, "{line}");
                }
                ProbeSink::Log => tracing::info!(target: "polyvisor::probe", "{line}"),
            }
        }
    }

    fn map_overlay(&self, slot: u32, placement: Option<(u64, &[u8])>) -> Result<(), PlatformError> {
        self.change_layout(|layout, mem| {
            layout.set_overlay(mem, slot, placement)?;
            Ok(true)
        })
        .map(|_| ())
        .map_err(|e| PlatformError::Failed(e.to_string()))
    }

    fn flush_guest_tlb(&self, target: u32) -> Result<(), PlatformError> {
        if self.request_tlb_flush(target) {
            Ok(())
        } else {
            Err(PlatformError::NoSuchVcpu(target))
        }
    }

    fn debug_post(&self, _vcpu: u32, bytes: &[u8]) -> Result<usize, PlatformError> {
        match &self.debug_channel {
            Some(c) => c.post(bytes),
            None => Err(PlatformError::Unsupported("guest debug channel ([hyperv] debug_output)")),
        }
    }

    fn debug_retrieve(&self, _vcpu: u32, buf: &mut [u8]) -> Result<usize, PlatformError> {
        match &self.debug_channel {
            Some(c) => c.retrieve(buf),
            None => Err(PlatformError::Unsupported("guest debug channel ([hyperv] debug_output)")),
        }
    }

    fn read_xmm(&self, vcpu: u32) -> Result<[u128; 6], PlatformError> {
        let fd = crate::kvm::current_vcpu(vcpu)
            .ok_or(PlatformError::Unsupported("XMM registers of a vCPU other than the caller"))?;
        let fpu = crate::kvm::get_fpu(fd)
            .map_err(|e| PlatformError::Failed(format!("KVM_GET_FPU: {e}")))?;
        let mut out = [0u128; 6];
        for (o, x) in out.iter_mut().zip(fpu.xmm.iter()) {
            *o = u128::from_le_bytes(*x);
        }
        Ok(out)
    }

    fn translate_gva(&self, vcpu: u32, gva: u64, write: bool) -> Result<u64, PlatformError> {
        if let Some((_, regs, cpl)) = CALLER.with(Cell::get).filter(|(v, _, _)| *v == vcpu) {
            let read8 = |gpa: u64| {
                let mut b = [0u8; 8];
                self.mem.read_visible(gpa, &mut b).then(|| u64::from_le_bytes(b))
            };
            let t = paging::walk(&regs, gva, &read8)
                .ok_or_else(|| PlatformError::Failed(format!("{gva:#x} is not mapped")))?;
            if cpl == 3 && !t.user {
                return Err(PlatformError::Failed(format!("{gva:#x} is a supervisor page")));
            }
            // Supervisor writes ignore R/W unless CR0.WP is set.
            if write && !t.writable && (cpl == 3 || regs.cr0 & CR0_WP != 0) {
                return Err(PlatformError::Failed(format!("{gva:#x} is mapped read-only")));
            }
            return Ok(t.gpa);
        }
        let fd = crate::kvm::current_vcpu(vcpu)
            .ok_or(PlatformError::Unsupported("translating for a vCPU other than the caller"))?;
        let t = crate::kvm::translate(fd, gva)
            .map_err(|e| PlatformError::Failed(format!("KVM_TRANSLATE: {e}")))?;
        if t.valid == 0 {
            return Err(PlatformError::Failed(format!("{gva:#x} is not mapped")));
        }
        if write && (t.writeable == 0 || self.mapped_read_only(fd, gva)) {
            return Err(PlatformError::Failed(format!("{gva:#x} is mapped read-only")));
        }
        Ok(t.physical_address)
    }

    fn halt_until(&self, vcpu: u32, deadline_ns: u64) -> Result<(), PlatformError> {
        if self.set_halt_deadline(vcpu, deadline_ns) {
            Ok(())
        } else {
            Err(PlatformError::NoSuchVcpu(vcpu))
        }
    }

    fn set_timer(&self, id: u32, timer: Option<(u64, TimerCallback)>) -> Result<(), PlatformError> {
        self.timers.set(id, timer);
        Ok(())
    }

    fn memory_map(&self) -> Option<Vec<(u64, u64, u32)>> {
        Some(crate::boot::e820_map(self.mem.ram_size()))
    }

    fn protect_code(&self, gpa: u64, len: u64) -> Result<(), PlatformError> {
        if self.trap.strategy != crate::trap::TrapStrategy::WriteProtect {
            // The other strategies trap hypercalls wherever they are.
            return Ok(());
        }
        self.change_layout(|layout, mem| layout.protect(mem, gpa, len))
            .map(|_| ())
            .map_err(|e| PlatformError::Failed(e.to_string()))
    }
}
