use std::sync::Arc;

use crate::GuestMemoryMmap;

/// What a host timer runs when it fires ([`Platform::set_timer`]): the VMM calls it from a
/// thread of its own with its platform and the guest's memory.
pub type TimerCallback = Arc<dyn Fn(&dyn Platform, &GuestMemoryMmap) + Send + Sync>;

/// A failure of a VMM effect, reported back to the handler that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The VMM cannot provide this effect on this host or in this configuration.
    #[error("not supported by this VMM: {0}")]
    Unsupported(&'static str),
    /// No vCPU has that index.
    #[error("no vCPU {0}")]
    NoSuchVcpu(u32),
    /// The effect was attempted and failed.
    #[error("{0}")]
    Failed(String),
}

/// One probe a guest fired through a hypercall (bhyve's DTRACE_PROBE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeEvent<'a> {
    /// The id PROBE_CREATE returned.
    pub probe_id: u64,
    /// The probe's name as the guest registered it.
    pub name: &'a str,
    /// The five arguments the guest passed.
    pub args: [u64; 5],
    /// The guest's thread id.
    pub thread: u64,
    /// The vCPU that fired the probe.
    pub vcpu: u32,
    /// Nanoseconds since the VM started.
    pub timestamp_ns: u64,
}

/// Effects the VMM provides to handlers. Implemented by polyvisor-vmm for real VMs and by
/// recording fakes in tests and fuzzers. Every method may be called from any vCPU thread.
pub trait Platform: Sync {
    /// Writes guest bytes to the VM console.
    fn console_write(&self, vcpu: u32, bytes: &[u8]);

    /// Reads pending host input for the guest; returns how many bytes were placed (0 when none
    /// is pending or no input is attached).
    fn console_read(&self, buf: &mut [u8]) -> usize;

    /// Number of vCPUs in the VM.
    fn vcpu_count(&self) -> u32;

    /// The vCPU whose APIC id is `apic_id`, if any. vCPU n has APIC id n unless the VMM says
    /// otherwise.
    fn vcpu_by_apic_id(&self, apic_id: u32) -> Option<u32> {
        (apic_id < self.vcpu_count()).then_some(apic_id)
    }

    /// The calling vCPU gives up its time slice, optionally in favour of `target`.
    fn yield_now(&self, vcpu: u32, target: Option<u32>);

    /// Wakes vCPU `target` if it is halted. Returns whether it was halted.
    fn wake(&self, target: u32) -> Result<bool, PlatformError>;

    /// Delivers external interrupt `vector` to vCPU `target`, waking it if it is halted.
    fn interrupt(&self, target: u32, vector: u8) -> Result<(), PlatformError>;

    /// Nanoseconds since the VM started; monotonic.
    fn monotonic_ns(&self) -> u64;

    /// Host wall-clock time: seconds and nanoseconds since the Unix epoch.
    fn wall_clock(&self) -> (i64, u32);

    /// The guest's time-stamp counter now, as RDTSC in the guest would read it.
    fn guest_tsc(&self) -> u64;

    /// The guest TSC frequency in kHz, when known and constant.
    fn tsc_khz(&self) -> Option<u64>;

    /// Records a probe a guest fired.
    fn probe_fired(&self, event: &ProbeEvent<'_>);

    /// Shows the guest a one-page, read-only, VMM-owned overlay at `gpa` (a hypercall page),
    /// replacing the RAM underneath; `None` removes it and the RAM is visible again. `slot`
    /// names the overlay within the personality (one per page kind and vCPU).
    fn map_overlay(&self, slot: u32, placement: Option<(u64, &[u8])>) -> Result<(), PlatformError>;

    /// Tells the VMM that guest RAM in `[gpa, gpa + len)` holds hypercall instructions that
    /// must trap (a hypercall page written into RAM).
    fn protect_code(&self, gpa: u64, len: u64) -> Result<(), PlatformError>;

    /// Makes vCPU `target` drop every guest-virtual translation it has cached (its TLB), so
    /// that once this returns `target` runs no more guest code with a translation cached
    /// before the call (Hyper-V's HvCallFlushVirtualAddressSpace/List). A VMM typically kicks
    /// the vCPU out of guest mode and has it flush before it re-enters.
    fn flush_guest_tlb(&self, _target: u32) -> Result<(), PlatformError> {
        Err(PlatformError::Unsupported("guest TLB flush"))
    }

    /// Sends guest bytes to the host side of the guest debug channel (Hyper-V's
    /// HvCallPostDebugData); returns how many bytes were taken. An empty `bytes` only asks
    /// whether the channel exists.
    fn debug_post(&self, _vcpu: u32, _bytes: &[u8]) -> Result<usize, PlatformError> {
        Err(PlatformError::Unsupported("guest debug channel"))
    }

    /// Takes bytes the host side of the guest debug channel has for the guest (Hyper-V's
    /// HvCallRetrieveDebugData); returns how many were placed in `buf` (0 when none wait).
    fn debug_retrieve(&self, _vcpu: u32, _buf: &mut [u8]) -> Result<usize, PlatformError> {
        Err(PlatformError::Unsupported("guest debug channel"))
    }

    /// XMM0..XMM5 of the calling vCPU `vcpu`, for hypercalls that pass input in XMM registers
    /// (Hyper-V's XMM fast hypercalls). Called only from that vCPU's own exit.
    fn read_xmm(&self, _vcpu: u32) -> Result<[u128; 6], PlatformError> {
        Err(PlatformError::Unsupported("XMM register access"))
    }

    /// Translates guest linear address `gva` of vCPU `vcpu` (which must be the vCPU making the
    /// current call) to a guest physical address through the vCPU's current paging mode, as
    /// a supervisor access would; `write` asks for a writable mapping. ABIs whose hypercall
    /// arguments are guest virtual addresses (Xen HVM/PVH) need this; a KVM VMM answers it
    /// with `KVM_TRANSLATE`. The default says the VMM cannot translate, and callers then treat
    /// addresses as physical (right for guests running with paging off or identity-mapped).
    fn translate_gva(&self, vcpu: u32, gva: u64, write: bool) -> Result<u64, PlatformError> {
        let _ = (vcpu, gva, write);
        Err(PlatformError::Unsupported("translate_gva"))
    }

    /// Bounds the halt that the outcome being returned for vCPU `vcpu` starts (`Next::Halt`):
    /// if the vCPU is still halted when [`Platform::monotonic_ns`] reaches `deadline_ns`, the
    /// VMM wakes it. The bound ends with that halt, whatever ends it. The default says the
    /// VMM has no such timer; callers then return instead of halting.
    fn halt_until(&self, vcpu: u32, deadline_ns: u64) -> Result<(), PlatformError> {
        let _ = (vcpu, deadline_ns);
        Err(PlatformError::Unsupported("halt_until"))
    }

    /// The memory map the VMM gave the guest at boot (the E820 map it passes in PVH's
    /// `hvm_start_info`), as `(address, length, E820 type)` in address order: type 1 RAM,
    /// 2 reserved. ABIs that let the guest ask for its memory map (Xen's `XENMEM_memory_map`)
    /// answer with it, so both sources agree. The default says the VMM gave none; callers
    /// then derive a map from guest memory.
    fn memory_map(&self) -> Option<Vec<(u64, u64, u32)>> {
        None
    }

    /// Arms host timer `id` (a number the personality chooses) to run `fire` once
    /// [`Platform::monotonic_ns`] reaches `deadline_ns`, replacing what `id` had armed; `None`
    /// disarms it. Callbacks run on a VMM thread, never on the vCPU that armed them, and may
    /// arm timers again. While a timer is armed, every vCPU halted is not the VM's end: the
    /// timer may wake one. The default says the VMM has no host timers.
    fn set_timer(&self, id: u32, timer: Option<(u64, TimerCallback)>) -> Result<(), PlatformError> {
        let _ = (id, timer);
        Err(PlatformError::Unsupported("host timers"))
    }
}
