//! The synthetic MSRs (TLFS hypercall-interface "Reporting the Guest OS Identity" and
//! "Establishing the Hypercall Interface", TLFS timers, KVM `arch/x86/kvm/hyperv.c`
//! `kvm_hv_get_msr`/`kvm_hv_set_msr_pw`, openvmm `vm/hv1/hv1_emulator/src/hv.rs`).
//!
//! Partition-wide MSRs live in atomics so reads take no lock; writes that move the hypercall
//! overlay or publish the reference TSC page take one mutex so two vCPUs cannot interleave
//! them. Per-VP state is an array sized by the configured vCPU count.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use polyvisor_core::{ExitReason, MsrContext, MsrRead, MsrWrite, Platform};
use vm_memory::{Bytes, GuestAddress};

use super::abi::*;
use super::HyperV;

/// The overlay slot of the hypercall page (one per partition).
pub const HYPERCALL_PAGE_SLOT: u32 = 0;

/// The APIC timer frequency HV_X64_MSR_APIC_FREQUENCY reports: 1 GHz, KVM's in-kernel local
/// APIC bus frequency (`APIC_BUS_FREQUENCY` = 1e9 / `APIC_BUS_CYCLE_NS_DEFAULT` with a 1 ns
/// cycle, arch/x86/kvm/lapic.h). A VMM that changes KVM_CAP_X86_APIC_BUS_CYCLES_NS must agree.
pub const APIC_FREQUENCY_HZ: u64 = 1_000_000_000;

/// GPA space bound for the overlay pages: 52 bits, the architectural MAXPHYADDR limit. TLFS:
/// moving the hypercall page beyond the GPA space is a #GP on the MSR write.
const GPA_BITS: u32 = 52;

/// Partition-wide MSR state.
#[derive(Debug, Default)]
pub struct PartitionMsrs {
    guest_os_id: AtomicU64,
    hypercall: AtomicU64,
    reference_tsc: AtomicU64,
    /// The sequence last published in the reference TSC page; 0 = none (use the MSR).
    tsc_sequence: AtomicU32,
    /// The last sequence ever published, so a republished page gets a new one.
    last_sequence: AtomicU32,
    /// The published TscOffset, as the bits of an i64.
    tsc_offset: AtomicU64,
    /// The largest TIME_REF_COUNT handed out, so the count never goes back.
    ref_floor: AtomicU64,
    crash: [AtomicU64; 5],
    writes: std::sync::Mutex<()>,
}

/// Per-VP MSR state.
#[derive(Debug, Default)]
pub struct VpMsrs {
    /// The largest VP_RUNTIME handed out to this VP.
    runtime_floor: AtomicU64,
}

/// The hypercall page contents: the host's hypercall instruction, `ret`, then `int3` so a stray
/// jump into the page traps (as openvmm fills it).
pub fn hypercall_page(instruction: [u8; 3]) -> Box<[u8]> {
    let mut page = vec![0xccu8; HV_HYP_PAGE_SIZE as usize].into_boxed_slice();
    for (dst, src) in page.iter_mut().zip(instruction.iter().chain([0xc3u8].iter())) {
        *dst = *src;
    }
    page
}

impl PartitionMsrs {
    /// Whether the hypercall page is enabled (which implies a non-zero guest OS id).
    pub fn hypercall_enabled(&self) -> bool {
        self.hypercall.load(Ordering::Acquire) & HV_X64_MSR_HYPERCALL_ENABLE != 0
    }
}

/// Which privilege or feature an MSR needs (KVM `hv_check_msr_access`).
enum Gate {
    Privilege(u64),
    Feature(u32),
}

fn gate(msr: u32) -> Option<Gate> {
    Some(match msr {
        HV_X64_MSR_GUEST_OS_ID | HV_X64_MSR_HYPERCALL => {
            Gate::Privilege(HV_MSR_HYPERCALL_AVAILABLE)
        }
        HV_X64_MSR_VP_INDEX => Gate::Privilege(HV_MSR_VP_INDEX_AVAILABLE),
        HV_X64_MSR_RESET => Gate::Privilege(HV_MSR_RESET_AVAILABLE),
        HV_X64_MSR_VP_RUNTIME => Gate::Privilege(HV_MSR_VP_RUNTIME_AVAILABLE),
        HV_X64_MSR_TIME_REF_COUNT => Gate::Privilege(HV_MSR_TIME_REF_COUNT_AVAILABLE),
        HV_X64_MSR_REFERENCE_TSC => Gate::Privilege(HV_MSR_REFERENCE_TSC_AVAILABLE),
        HV_X64_MSR_TSC_FREQUENCY | HV_X64_MSR_APIC_FREQUENCY => {
            Gate::Privilege(HV_ACCESS_FREQUENCY_MSRS)
        }
        HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_CTL => {
            Gate::Feature(HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE)
        }
        _ => return None,
    })
}

impl HyperV {
    /// Whether `msr` exists here and its privilege or feature is advertised.
    fn msr_available(&self, msr: u32) -> bool {
        match gate(msr) {
            Some(Gate::Privilege(bit)) => self.id.has_privilege(bit),
            Some(Gate::Feature(bit)) => self.id.has_feature(bit),
            None => false,
        }
    }

    /// TIME_REF_COUNT: 100 ns units since the partition started. With the reference TSC page
    /// published it is computed from the page's scale and offset, as KVM's
    /// `get_time_ref_counter` does, so the MSR and the page agree; otherwise from the VM's
    /// monotonic clock. Never goes back.
    pub fn time_ref_count(&self, platform: &dyn Platform) -> u64 {
        let state = &self.msrs;
        let raw = match self.tsc_scale {
            Some(scale) if state.tsc_sequence.load(Ordering::Acquire) != 0 => {
                let offset = state.tsc_offset.load(Ordering::Acquire);
                tsc_to_ref(platform.guest_tsc(), scale).wrapping_add(offset)
            }
            _ => platform.monotonic_ns() / 100,
        };
        let prev = state.ref_floor.fetch_max(raw, Ordering::AcqRel);
        prev.max(raw)
    }

    /// VP_RUNTIME: the VMM does not report per-vCPU run time, so a VP counts as running since
    /// the partition started (monotonic_ns in 100 ns units), never going back.
    fn vp_runtime(&self, vcpu: u32, platform: &dyn Platform) -> Option<u64> {
        let vp = self.vps.get(usize::try_from(vcpu).ok()?)?;
        let raw = platform.monotonic_ns() / 100;
        let prev = vp.runtime_floor.fetch_max(raw, Ordering::AcqRel);
        Some(prev.max(raw))
    }

    /// Handles an RDMSR of the Hv#1 range.
    pub fn msr_read(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        if !self.msr_available(msr) {
            return MsrRead::Gp;
        }
        let state = &self.msrs;
        let value = match msr {
            HV_X64_MSR_GUEST_OS_ID => state.guest_os_id.load(Ordering::Acquire),
            HV_X64_MSR_HYPERCALL => state.hypercall.load(Ordering::Acquire),
            // The VP index is the vCPU index; KVM's default too (kvm_hv_get_vpindex).
            HV_X64_MSR_VP_INDEX if ctx.vcpu < self.id.max_vcpus => u64::from(ctx.vcpu),
            HV_X64_MSR_RESET => 0,
            HV_X64_MSR_VP_RUNTIME => match self.vp_runtime(ctx.vcpu, ctx.platform) {
                Some(v) => v,
                None => return MsrRead::Gp,
            },
            HV_X64_MSR_TIME_REF_COUNT => self.time_ref_count(ctx.platform),
            HV_X64_MSR_REFERENCE_TSC => state.reference_tsc.load(Ordering::Acquire),
            HV_X64_MSR_TSC_FREQUENCY => match self.tsc_khz {
                Some(khz) => khz.saturating_mul(1000),
                None => return MsrRead::Gp,
            },
            HV_X64_MSR_APIC_FREQUENCY => APIC_FREQUENCY_HZ,
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
                let i = (msr - HV_X64_MSR_CRASH_P0) as usize;
                match state.crash.get(i) {
                    Some(p) => p.load(Ordering::Acquire),
                    None => return MsrRead::Gp,
                }
            }
            // The capabilities: CrashNotify only (no crash message page, bit 62).
            HV_X64_MSR_CRASH_CTL => HV_CRASH_CTL_CRASH_NOTIFY,
            _ => return MsrRead::Gp,
        };
        MsrRead::Value(value)
    }

    /// Handles a WRMSR of the Hv#1 range.
    pub fn msr_write(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        if !self.msr_available(msr) {
            return MsrWrite::Gp;
        }
        match msr {
            HV_X64_MSR_GUEST_OS_ID => self.write_guest_os_id(ctx, value),
            HV_X64_MSR_HYPERCALL => self.write_hypercall(ctx, value),
            HV_X64_MSR_REFERENCE_TSC => self.write_reference_tsc(ctx, value),
            // KVM resets on a write of exactly 1 and ignores other values.
            HV_X64_MSR_RESET if value == 1 => MsrWrite::Exit(ExitReason::Reboot),
            HV_X64_MSR_RESET => MsrWrite::Done,
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
                let i = (msr - HV_X64_MSR_CRASH_P0) as usize;
                match self.msrs.crash.get(i) {
                    Some(p) => {
                        p.store(value, Ordering::Release);
                        MsrWrite::Done
                    }
                    None => MsrWrite::Gp,
                }
            }
            HV_X64_MSR_CRASH_CTL if value & HV_CRASH_CTL_CRASH_NOTIFY != 0 => {
                let p: Vec<String> = self
                    .msrs
                    .crash
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("P{i}={:#x}", p.load(Ordering::Acquire)))
                    .collect();
                MsrWrite::Exit(ExitReason::Crash(format!(
                    "Hyper-V guest crash notification (HV_X64_MSR_CRASH_CTL): {}",
                    p.join(" ")
                )))
            }
            HV_X64_MSR_CRASH_CTL => MsrWrite::Done,
            // VP_INDEX, VP_RUNTIME, TIME_REF_COUNT, TSC_FREQUENCY, APIC_FREQUENCY are read-only.
            _ => MsrWrite::Gp,
        }
    }

    fn write_guest_os_id(&self, ctx: &MsrContext<'_>, value: u64) -> MsrWrite {
        let state = &self.msrs;
        let Ok(_guard) = state.writes.lock() else {
            return MsrWrite::Gp;
        };
        state.guest_os_id.store(value, Ordering::Release);
        // TLFS: zeroing the guest OS id disables the hypercall page.
        let hypercall = state.hypercall.load(Ordering::Acquire);
        if value == 0 && hypercall & HV_X64_MSR_HYPERCALL_ENABLE != 0 {
            if ctx.platform.map_overlay(HYPERCALL_PAGE_SLOT, None).is_err() {
                return MsrWrite::Gp;
            }
            state.hypercall.store(hypercall & !HV_X64_MSR_HYPERCALL_ENABLE, Ordering::Release);
        }
        MsrWrite::Done
    }

    fn write_hypercall(&self, ctx: &MsrContext<'_>, value: u64) -> MsrWrite {
        let state = &self.msrs;
        let Ok(_guard) = state.writes.lock() else {
            return MsrWrite::Gp;
        };
        let old = state.hypercall.load(Ordering::Acquire);
        let lock_available = self.id.has_feature(HV_X64_HYPERCALL_MSR_LOCK_AVAILABLE);
        // openvmm: a locked MSR, or a value with RsvdP bits 11:2 set, is a #GP; the locked bit
        // only exists when HypercallMsrLockAvailable is shown.
        if old & HV_X64_MSR_HYPERCALL_LOCKED != 0
            || value & HV_X64_MSR_HYPERCALL_RSVD != 0
            || (!lock_available && value & HV_X64_MSR_HYPERCALL_LOCKED != 0)
            || value >> GPA_BITS != 0
        {
            return MsrWrite::Gp;
        }
        let mut value = value;
        // TLFS: without a guest OS id "the enable bit will remain zero even if a one is
        // written to it" (KVM ignores such a write).
        if state.guest_os_id.load(Ordering::Acquire) == 0 {
            value &= !HV_X64_MSR_HYPERCALL_ENABLE;
        }
        let gpa = value & !(HV_HYP_PAGE_SIZE - 1);
        let was_on = old & HV_X64_MSR_HYPERCALL_ENABLE != 0;
        let is_on = value & HV_X64_MSR_HYPERCALL_ENABLE != 0;
        let old_gpa = old & !(HV_HYP_PAGE_SIZE - 1);
        if was_on && (!is_on || gpa != old_gpa) {
            // Remove the old overlay first so the RAM under it is visible again.
            if ctx.platform.map_overlay(HYPERCALL_PAGE_SLOT, None).is_err() {
                return MsrWrite::Gp;
            }
            state.hypercall.store(old & !HV_X64_MSR_HYPERCALL_ENABLE, Ordering::Release);
        }
        if is_on
            && (!was_on || gpa != old_gpa)
            && ctx
                .platform
                .map_overlay(HYPERCALL_PAGE_SLOT, Some((gpa, &self.hypercall_page)))
                .is_err()
        {
            return MsrWrite::Gp;
        }
        state.hypercall.store(value, Ordering::Release);
        MsrWrite::Done
    }

    fn write_reference_tsc(&self, ctx: &MsrContext<'_>, value: u64) -> MsrWrite {
        let state = &self.msrs;
        let Ok(_guard) = state.writes.lock() else {
            return MsrWrite::Gp;
        };
        // openvmm: RsvdP bits 11:1 set is a #GP; so is a page beyond the GPA space.
        if value & HV_X64_MSR_TSC_REFERENCE_RSVD != 0 || value >> GPA_BITS != 0 {
            return MsrWrite::Gp;
        }
        if value & HV_X64_MSR_TSC_REFERENCE_ENABLE != 0 {
            let gpa = value & !(HV_HYP_PAGE_SIZE - 1);
            if !self.publish_tsc_page(ctx, gpa) {
                // openvmm: a page that cannot be written is a #GP.
                return MsrWrite::Gp;
            }
        } else {
            // KVM: a disabled page means TIME_REF_COUNT comes from the clock again.
            state.tsc_sequence.store(0, Ordering::Release);
        }
        state.reference_tsc.store(value, Ordering::Release);
        MsrWrite::Done
    }

    /// Writes {TscSequence, Reserved1, TscScale, TscOffset} (hvgdk_mini.h
    /// `struct ms_hyperv_tsc_page`) into guest RAM at `gpa`: sequence 0 first so a reader
    /// retries, then scale and offset, then a new sequence that is neither 0 nor 0xFFFFFFFF.
    /// The offset continues the TIME_REF_COUNT timeline: time = ((tsc * scale) >> 64) + offset.
    fn publish_tsc_page(&self, ctx: &MsrContext<'_>, gpa: u64) -> bool {
        let state = &self.msrs;
        let mem = ctx.memory;
        let Some(page_end) = gpa.checked_add(24) else {
            return false;
        };
        if page_end > gpa.saturating_add(HV_HYP_PAGE_SIZE)
            || mem.write_obj(0u32, GuestAddress(gpa)).is_err()
        {
            return false;
        }
        let Some(scale) = self.tsc_scale else {
            // Sequence 0: "use the MSR instead".
            state.tsc_sequence.store(0, Ordering::Release);
            return true;
        };
        let now = self.time_ref_count(ctx.platform);
        let tsc = ctx.platform.guest_tsc();
        let offset = now.wrapping_sub(tsc_to_ref(tsc, scale));
        let (Some(scale_gpa), Some(offset_gpa)) = (gpa.checked_add(8), gpa.checked_add(16)) else {
            return false;
        };
        if mem.write_obj(scale, GuestAddress(scale_gpa)).is_err()
            || mem.write_obj(offset, GuestAddress(offset_gpa)).is_err()
        {
            return false;
        }
        // KVM's kvm_hv_setup_tsc_page: the sequence skips 0 and 0xFFFFFFFF.
        let mut seq = state.last_sequence.load(Ordering::Acquire).wrapping_add(1);
        if seq == 0 || seq == u32::MAX {
            seq = 1;
        }
        state.last_sequence.store(seq, Ordering::Release);
        if mem.write_obj(seq, GuestAddress(gpa)).is_err() {
            return false;
        }
        state.tsc_offset.store(offset, Ordering::Release);
        state.tsc_sequence.store(seq, Ordering::Release);
        true
    }
}

/// (tsc * scale) >> 64: the reference TSC page's conversion to 100 ns units.
pub fn tsc_to_ref(tsc: u64, scale: u64) -> u64 {
    ((u128::from(tsc) * u128::from(scale)) >> 64) as u64
}

/// The TscScale for a TSC of `khz`: 2^64 * 10^7 / Hz = 2^64 * 10^4 / kHz. None when it would
/// not fit (a TSC at or below 10 MHz).
pub fn tsc_scale(khz: u64) -> Option<u64> {
    if khz == 0 {
        return None;
    }
    u64::try_from((10_000u128 << 64) / u128::from(khz)).ok()
}
