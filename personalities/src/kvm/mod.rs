//! The kvm personality: Linux KVM's paravirtual ABI, served by polyvisor in user space.
//!
//! A guest sees what a Linux guest sees under KVM (see `docs/abi/kvm.md` for the whole
//! interface with its sources):
//!
//! * CPUID 0x40000000 "KVMKVMKVM\0\0\0" and 0x40000001 with the feature bits polyvisor
//!   really backs ([`features`]), chosen by `[kvm] features` or, by default, every backed
//!   one;
//! * the hypercalls of `include/uapi/linux/kvm_para.h` with KVM's register convention and
//!   error answers (`codec.rs`, `calls.rs`);
//! * kvmclock and poll control on KVM's MSRs (`msr.rs`, [`pvclock`]);
//! * the attribute map `KVM_HC_MAP_GPA_RANGE` keeps, per VM ([`gpa_map`]).

pub mod abi;
mod calls;
mod codec;
mod cpuid;
pub mod features;
pub mod gpa_map;
mod msr;
pub mod pvclock;
mod trace;

#[cfg(test)]
mod codec_props;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use polyvisor_config::{Config, KvmFeature};
use polyvisor_core::{
    CallInput, CallTrace, CpuidLeaf, Dispatch, Engine, GuestMemoryMmap, HypercallRow,
    HypervisorMode, MsrContext, MsrRead, MsrWrite, Outcome, Personality, Platform, Refusal, Reply,
    VcpuSnapshot,
};

use crate::{BuildError, HostFacts};
use features::{Backing, FeatureSet};
use gpa_map::{GpaAttributes, GpaMap, GpaRange};
use msr::KvmClock;
use pvclock::TimeScale;

/// How many ranges of the attribute map the end-of-VM report lists.
const REPORT_RANGES: usize = 32;

/// The KVM personality of one VM.
#[derive(Debug)]
pub struct KvmPersonality {
    features: FeatureSet,
    /// CPUID 0x40000001 EDX.
    hints: u32,
    /// Whether the host TSC is constant and invariant (`KVM_HC_CLOCK_PAIRING`).
    stable_tsc: bool,
    clock: KvmClock,
    gpa_map: GpaMap,
}

impl KvmPersonality {
    /// A personality advertising `features`, for `vcpus` vCPUs. `tsc_khz` and `stable_tsc`
    /// are the host's (see [`HostFacts`]); the caller has checked the features are backed.
    pub fn new(
        features: FeatureSet,
        hints_realtime: bool,
        vcpus: u32,
        host: &HostFacts,
        max_gpa_ranges: usize,
    ) -> Self {
        let scale = match (host.tsc_khz, host.stable_tsc) {
            (Some(khz), true) => TimeScale::for_tsc_khz(khz),
            _ => None,
        };
        KvmPersonality {
            features,
            hints: u32::from(hints_realtime) << abi::KVM_HINTS_REALTIME,
            stable_tsc: host.stable_tsc,
            clock: KvmClock::new(vcpus, scale),
            gpa_map: GpaMap::new(max_gpa_ranges),
        }
    }

    /// The advertised feature bits (CPUID 0x40000001 EAX).
    pub fn features(&self) -> FeatureSet {
        self.features
    }

    fn has(&self, feature: KvmFeature) -> bool {
        self.features.has(feature)
    }

    /// The attributes the guest declared with `KVM_HC_MAP_GPA_RANGE` for the page holding
    /// `gpa`, or `None` if it never declared any.
    pub fn gpa_attributes(&self, gpa: u64) -> Option<GpaAttributes> {
        self.gpa_map.get(gpa)
    }

    /// Every declared range, in address order.
    pub fn gpa_ranges(&self) -> Vec<GpaRange> {
        self.gpa_map.ranges()
    }

    /// The attribute map as text for the end-of-VM report: one line per range.
    pub fn gpa_map_report(&self) -> String {
        let ranges = self.gpa_map.ranges();
        let mut text = format!(
            "KVM_HC_MAP_GPA_RANGE: {} range(s) declared (at most {})\n",
            ranges.len(),
            self.gpa_map.limit()
        );
        for r in ranges {
            text.push_str(&format!("  {r}\n"));
        }
        text
    }

    /// The last value vCPU `vcpu` wrote to its system-time MSR (GPA | enable bit).
    pub fn kvmclock_msr(&self, vcpu: u32) -> Option<u64> {
        self.clock.system_time_msr(vcpu)
    }

    /// kvmclock time now, as the guest computes it; `None` when kvmclock is not backed.
    pub fn kvmclock_now(&self, platform: &dyn Platform) -> Option<u64> {
        self.clock.now(platform)
    }

    /// Rewrites vCPU `vcpu`'s kvmclock page if the guest enabled one: the VMM may call this
    /// whenever it wants the page refreshed (the ABI allows updates at any time). Returns
    /// whether a page was written.
    pub fn refresh_kvmclock(
        &self,
        vcpu: u32,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> bool {
        self.clock.refresh(vcpu, memory, platform)
    }
}

impl Personality for KvmPersonality {
    fn mode(&self) -> HypervisorMode {
        HypervisorMode::Kvm
    }

    fn table(&self) -> &[HypercallRow<Self>] {
        calls::TABLE
    }

    fn decode(&self, vcpu: &VcpuSnapshot) -> Result<CallInput, Outcome> {
        Ok(codec::decode(vcpu))
    }

    fn encode(&self, vcpu: &VcpuSnapshot, reply: Reply) -> Outcome {
        codec::encode(vcpu, reply)
    }

    fn refuse(&self, vcpu: &VcpuSnapshot, refusal: Refusal) -> Outcome {
        codec::refuse(vcpu, refusal)
    }

    fn cpuid(&self, _vcpu: u32) -> Vec<CpuidLeaf> {
        cpuid::leaves(self.features, self.hints)
    }

    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String> {
        cpuid::explain(leaf)
    }

    /// The `KVM_HC_MAP_GPA_RANGE` map, when the guest declared anything: a summary line and
    /// the first ranges (all of them: [`KvmPersonality::gpa_map_report`]).
    fn report(&self) -> Vec<String> {
        let ranges = self.gpa_map.ranges();
        if ranges.is_empty() {
            return Vec::new();
        }
        let mut lines = vec![format!(
            "kvm: KVM_HC_MAP_GPA_RANGE map holds {} range(s) (at most {})",
            ranges.len(),
            self.gpa_map.limit()
        )];
        lines.extend(ranges.iter().take(REPORT_RANGES).map(|r| format!("kvm: {r}")));
        if ranges.len() > REPORT_RANGES {
            lines.push(format!("kvm: ... {} more", ranges.len() - REPORT_RANGES));
        }
        lines
    }

    fn msr_ranges(&self) -> &[(u32, u32)] {
        msr::MSR_RANGES
    }

    fn read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        self.read_kvm_msr(ctx, msr)
    }

    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        self.write_kvm_msr(ctx, msr, value)
    }

    fn trace_call(
        &self,
        vcpu: &VcpuSnapshot,
        _memory: &GuestMemoryMmap,
        _platform: &dyn Platform,
    ) -> CallTrace {
        trace::call(vcpu)
    }

    fn trace_result(&self, vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
        trace::result(vcpu, outcome)
    }

    fn msr_name(&self, msr: u32) -> Option<&'static str> {
        trace::msr_name(msr)
    }
}

/// Builds the kvm engine from a configuration.
pub fn build(config: &Config, host: &HostFacts) -> Result<Arc<dyn Dispatch>, BuildError> {
    Ok(build_engine(config, host)?)
}

/// Builds the kvm engine with its type, for a VMM that wants the personality's own queries
/// ([`KvmPersonality::gpa_map_report`], [`KvmPersonality::refresh_kvmclock`]) through
/// [`Engine::personality`].
///
/// Refused: a policy naming a call this personality does not have, and a `[kvm] features`
/// entry polyvisor cannot back on this host or under this policy
/// ([`BuildError::Unbacked`] naming each feature and why).
pub fn build_engine(
    config: &Config,
    host: &HostFacts,
) -> Result<Arc<Engine<KvmPersonality>>, BuildError> {
    let policy = config.hypervisor.policy();
    let limit = usize::try_from(config.kvm.max_gpa_ranges).unwrap_or(usize::MAX);
    let vcpus = config.vm.vcpus;
    // The table does not depend on the features: resolve the policy once to learn which
    // calls it lets through.
    let probe = Engine::new(
        Arc::new(KvmPersonality::new(FeatureSet::empty(), false, vcpus, host, limit)),
        &policy,
    )?;
    let rows = probe.rows();
    let permitted = |number: u64| rows.iter().any(|r| r.number == number && r.permitted);
    let backing =
        Backing { host, hypercalls_enabled: policy.hypercalls_enabled, permitted: &permitted };
    let features = features::select(config.kvm.features.as_deref(), &backing)
        .map_err(|message| BuildError::Unbacked { section: "kvm", message })?;
    let kvm = KvmPersonality::new(features, config.kvm.hints_realtime, vcpus, host, limit);
    Ok(Arc::new(Engine::new(Arc::new(kvm), &policy)?))
}
