//! KVM's synthetic MSRs (`Documentation/virt/kvm/x86/msr.rst`), served in user space:
//! kvmclock (`MSR_KVM_WALL_CLOCK_NEW`, `MSR_KVM_SYSTEM_TIME_NEW` and the deprecated 0x11/0x12)
//! and `MSR_KVM_POLL_CONTROL`. Every other MSR of KVM's range answers #GP, as KVM does for a
//! feature the guest's CPUID does not offer (`kvm_get_msr_common` / `kvm_set_msr_common` in
//! `arch/x86/kvm/x86.c`, `guest_pv_has`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use polyvisor_config::KvmFeature;
use polyvisor_core::{GuestMemoryMmap, MsrContext, MsrRead, MsrWrite, Platform};

use super::abi;
use super::pvclock::{self, ClockReference, PvclockVcpuTimeInfo, PvclockWallClock, TimeScale};
use super::KvmPersonality;

/// The MSR ranges the VMM must send to user space: KVM's whole custom range, so the host
/// kernel never serves a KVM MSR behind the personality's back, and the two deprecated
/// kvmclock MSRs.
pub(super) const MSR_RANGES: &[(u32, u32)] = &[
    (abi::MSR_KVM_WALL_CLOCK, abi::MSR_KVM_SYSTEM_TIME),
    (abi::MSR_KVM_RANGE_FIRST, abi::MSR_KVM_RANGE_LAST),
];

/// kvmclock and poll-control state of one VM.
#[derive(Debug)]
pub(super) struct KvmClock {
    /// TSC-to-nanoseconds scale; `Some` when the host backs kvmclock.
    scale: Option<TimeScale>,
    /// The VM's one (TSC, ns) pair, taken when the guest first asks for the clock.
    reference: OnceLock<ClockReference>,
    /// The last value written to `MSR_KVM_WALL_CLOCK(_NEW)`: the GPA (per VM).
    wall_clock: AtomicU64,
    vcpus: Box<[VcpuClock]>,
}

#[derive(Debug)]
struct VcpuClock {
    /// The last value written to `MSR_KVM_SYSTEM_TIME(_NEW)`: GPA | `KVM_MSR_ENABLED`.
    system_time: AtomicU64,
    /// Whether the page was registered through the deprecated MSR 0x12.
    old_msr: AtomicBool,
    /// `MSR_KVM_POLL_CONTROL`, 1 after reset (`kvm_arch_vcpu_postcreate`).
    poll_control: AtomicU64,
}

impl KvmClock {
    /// State for `vcpus` vCPUs; `scale` is `None` when kvmclock is not backed.
    pub(super) fn new(vcpus: u32, scale: Option<TimeScale>) -> Self {
        KvmClock {
            scale,
            reference: OnceLock::new(),
            wall_clock: AtomicU64::new(0),
            vcpus: (0..vcpus)
                .map(|_| VcpuClock {
                    system_time: AtomicU64::new(0),
                    old_msr: AtomicBool::new(false),
                    poll_control: AtomicU64::new(1),
                })
                .collect(),
        }
    }

    fn reference(&self, platform: &dyn Platform) -> ClockReference {
        *self.reference.get_or_init(|| ClockReference {
            tsc: platform.guest_tsc(),
            ns: platform.monotonic_ns(),
        })
    }

    /// kvmclock time now, as the guest computes it.
    pub(super) fn now(&self, platform: &dyn Platform) -> Option<u64> {
        let scale = self.scale?;
        Some(self.reference(platform).at(scale, platform.guest_tsc()))
    }

    /// The value last written to vCPU `vcpu`'s system-time MSR.
    pub(super) fn system_time_msr(&self, vcpu: u32) -> Option<u64> {
        let v = self.vcpus.get(usize::try_from(vcpu).ok()?)?;
        Some(v.system_time.load(Ordering::Acquire))
    }

    /// Rewrites vCPU `vcpu`'s clock page if it is enabled (after a pause, for instance).
    /// Returns whether a page was written.
    pub(super) fn refresh(
        &self,
        vcpu: u32,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> bool {
        let Some(v) = usize::try_from(vcpu).ok().and_then(|i| self.vcpus.get(i)) else {
            return false;
        };
        let value = v.system_time.load(Ordering::Acquire);
        if value & abi::KVM_MSR_ENABLED == 0 {
            return false;
        }
        self.write_time_info(
            value & !abi::KVM_MSR_ENABLED,
            v.old_msr.load(Ordering::Acquire),
            memory,
            platform,
        )
    }

    /// Fills the guest's `pvclock_vcpu_time_info` at `gpa`. Every vCPU gets the same
    /// reference pair, so readings agree across vCPUs. A page registered through the
    /// deprecated MSR gets no `PVCLOCK_TSC_STABLE_BIT`, as KVM disables its master clock
    /// for such guests (`boot_vcpu_runs_old_kvmclock` in `x86.c`).
    fn write_time_info(
        &self,
        gpa: u64,
        old_msr: bool,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> bool {
        let Some(scale) = self.scale else {
            return false;
        };
        let reference = self.reference(platform);
        // PVCLOCK_GUEST_STOPPED belongs to the guest once set; keep it (kvm_setup_guest_pvclock).
        let stopped = pvclock::guest_flags(memory, gpa).unwrap_or(0) & abi::PVCLOCK_GUEST_STOPPED;
        let stable = if old_msr { 0 } else { abi::PVCLOCK_TSC_STABLE_BIT };
        let mut bytes = PvclockVcpuTimeInfo {
            version: 0,
            tsc_timestamp: reference.tsc,
            system_time: reference.ns,
            tsc_to_system_mul: scale.mul,
            tsc_shift: scale.shift,
            flags: stable | stopped,
        }
        .to_bytes();
        pvclock::publish(memory, gpa, &mut bytes).is_ok()
    }

    /// `kvm_write_system_time`: remember the value (per vCPU); with the enable bit, fill the
    /// page. KVM accepts any address and silently leaves the clock off when it is not RAM;
    /// so does this.
    fn write_system_time(&self, ctx: &MsrContext<'_>, value: u64, old_msr: bool) -> MsrWrite {
        let Some(v) = usize::try_from(ctx.vcpu).ok().and_then(|i| self.vcpus.get(i)) else {
            return MsrWrite::Gp;
        };
        v.system_time.store(value, Ordering::Release);
        v.old_msr.store(old_msr, Ordering::Release);
        if value & abi::KVM_MSR_ENABLED != 0 {
            self.write_time_info(value & !abi::KVM_MSR_ENABLED, old_msr, ctx.memory, ctx.platform);
        }
        MsrWrite::Done
    }

    /// `kvm_write_wall_clock`: remember the GPA (per VM) and fill `pvclock_wall_clock` with
    /// the wall-clock time at kvmclock zero: now minus kvmclock now. GPA 0 only records;
    /// an address outside RAM is ignored, as in KVM.
    fn write_wall_clock(&self, ctx: &MsrContext<'_>, gpa: u64) -> MsrWrite {
        self.wall_clock.store(gpa, Ordering::Release);
        if gpa == 0 {
            return MsrWrite::Done;
        }
        let Some(kvmclock_ns) = self.now(ctx.platform) else {
            return MsrWrite::Done;
        };
        let (sec, nsec) = ctx.platform.wall_clock();
        let wall_ns = i128::from(sec) * i128::from(pvclock::NSEC_PER_SEC) + i128::from(nsec);
        let boot_ns = (wall_ns - i128::from(kvmclock_ns)).max(0);
        let ns_per_sec = i128::from(pvclock::NSEC_PER_SEC);
        let mut bytes = PvclockWallClock {
            version: 0,
            // Truncated to 32 bits as Linux does ("overflow in 2106 guest time").
            sec: (boot_ns / ns_per_sec) as u32,
            nsec: (boot_ns % ns_per_sec) as u32,
        }
        .to_bytes();
        let _ = pvclock::publish(ctx.memory, gpa, &mut bytes);
        MsrWrite::Done
    }
}

impl KvmPersonality {
    /// RDMSR of a KVM MSR: the value last written, or #GP when the guest's CPUID does not
    /// offer the MSR's feature.
    pub(super) fn read_kvm_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        let clock = &self.clock;
        let per_vcpu = usize::try_from(ctx.vcpu).ok().and_then(|i| clock.vcpus.get(i));
        let value = match msr {
            abi::MSR_KVM_WALL_CLOCK if self.has(KvmFeature::Clocksource) => {
                Some(clock.wall_clock.load(Ordering::Acquire))
            }
            abi::MSR_KVM_WALL_CLOCK_NEW if self.has(KvmFeature::Clocksource2) => {
                Some(clock.wall_clock.load(Ordering::Acquire))
            }
            abi::MSR_KVM_SYSTEM_TIME if self.has(KvmFeature::Clocksource) => {
                per_vcpu.map(|v| v.system_time.load(Ordering::Acquire))
            }
            abi::MSR_KVM_SYSTEM_TIME_NEW if self.has(KvmFeature::Clocksource2) => {
                per_vcpu.map(|v| v.system_time.load(Ordering::Acquire))
            }
            abi::MSR_KVM_POLL_CONTROL if self.has(KvmFeature::PollControl) => {
                per_vcpu.map(|v| v.poll_control.load(Ordering::Acquire))
            }
            m if is_ours(m) => None,
            _ => return MsrRead::NotMine,
        };
        value.map_or(MsrRead::Gp, MsrRead::Value)
    }

    /// WRMSR of a KVM MSR.
    pub(super) fn write_kvm_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        let clock = &self.clock;
        match msr {
            abi::MSR_KVM_WALL_CLOCK if self.has(KvmFeature::Clocksource) => {
                clock.write_wall_clock(ctx, value)
            }
            abi::MSR_KVM_WALL_CLOCK_NEW if self.has(KvmFeature::Clocksource2) => {
                clock.write_wall_clock(ctx, value)
            }
            abi::MSR_KVM_SYSTEM_TIME if self.has(KvmFeature::Clocksource) => {
                clock.write_system_time(ctx, value, true)
            }
            abi::MSR_KVM_SYSTEM_TIME_NEW if self.has(KvmFeature::Clocksource2) => {
                clock.write_system_time(ctx, value, false)
            }
            // "only enable bit supported" (kvm_set_msr_common).
            abi::MSR_KVM_POLL_CONTROL if self.has(KvmFeature::PollControl) => {
                match usize::try_from(ctx.vcpu).ok().and_then(|i| clock.vcpus.get(i)) {
                    Some(v) if value & !1 == 0 => {
                        v.poll_control.store(value, Ordering::Release);
                        MsrWrite::Done
                    }
                    _ => MsrWrite::Gp,
                }
            }
            m if is_ours(m) => MsrWrite::Gp,
            _ => MsrWrite::NotMine,
        }
    }
}

fn is_ours(msr: u32) -> bool {
    MSR_RANGES.iter().any(|(first, last)| (*first..=*last).contains(&msr))
}
