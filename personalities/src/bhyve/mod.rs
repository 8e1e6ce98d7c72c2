//! The bhyve personality: the hypercall interface of the FreeBSD review "Bhyve hypercall
//! implementation" (VMCALL/VMMCALL, RAX = number, System V argument registers, an explicit
//! ring per call, #UD when disabled), with its DTrace calls served for real: a guest's DTrace
//! registers probes and fires them, and the host records each event through
//! [`Platform::probe_fired`](polyvisor_core::Platform::probe_fired).
//!
//! CPUID shows stock bhyve's signature; leaf 0x40000001 has the review's meaning ("hypercalls
//! enabled") or, with `[bhyve] cpuid_leaf = "freebsd15"`, stock FreeBSD 15's (MSI extended
//! destination id), in which case every hypercall is refused. docs/abi/bhyve.md is the
//! interface as implemented, with its sources.

pub mod abi;
mod codec;
#[cfg(test)]
mod codec_props;
pub mod cpuid;
mod probe_log;
mod probes;
mod table;
#[cfg(test)]
mod tests;
mod trace;

use std::sync::Arc;

use polyvisor_config::{BhyveLeaf, Config};
use polyvisor_core::{
    CallInput, CallTrace, CpuidLeaf, Dispatch, Engine, GuestMemoryMmap, HypercallRow,
    HypervisorMode, Outcome, Personality, Platform, PolicyError, Refusal, Reply, VcpuSnapshot,
};

pub use probe_log::probe_event_json;
pub use probes::ProbeError;
pub use table::TABLE;

use crate::{BuildError, HostFacts};
use probes::ProbeRegistry;

/// The bhyve personality of one VM: its CPUID choice, whether hypercalls are on, and the
/// probes its guest created.
#[derive(Debug)]
pub struct Bhyve {
    leaf: BhyveLeaf,
    hypercalls_enabled: bool,
    probes: ProbeRegistry,
}

impl Bhyve {
    /// A personality showing `leaf` at CPUID 0x40000001. `hypercalls_enabled` is the global
    /// switch (`[hypervisor] hypercalls_enabled`), which review mode advertises there.
    pub fn new(leaf: BhyveLeaf, hypercalls_enabled: bool) -> Self {
        Bhyve { leaf, hypercalls_enabled, probes: ProbeRegistry::default() }
    }

    /// The personality a configuration describes.
    pub fn from_config(config: &Config) -> Self {
        Self::new(config.bhyve.cpuid_leaf, config.hypervisor.hypercalls_enabled)
    }

    /// The engine for a configuration, with its concrete type (the VMM uses [`build`]).
    pub fn engine(config: &Config) -> Result<Engine<Bhyve>, PolicyError> {
        Engine::new(Arc::new(Self::from_config(config)), &config.hypervisor.policy())
    }

    /// `(id, name, times fired)` for every probe the guest created, by id.
    pub fn probe_counts(&self) -> Vec<(u64, String, u64)> {
        self.probes.counts()
    }
}

/// Builds the bhyve engine from a configuration.
pub fn build(config: &Config, _host: &HostFacts) -> Result<Arc<dyn Dispatch>, BuildError> {
    Ok(Arc::new(Bhyve::engine(config)?))
}

impl Personality for Bhyve {
    fn mode(&self) -> HypervisorMode {
        HypervisorMode::Bhyve
    }

    fn table(&self) -> &[HypercallRow<Self>] {
        TABLE
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

    /// Stock FreeBSD 15's leaf has no way to say "hypercalls available" (its bit 0 means
    /// something else), so in that mode every call gets the disabled answer.
    fn hypercalls_possible(&self) -> bool {
        self.leaf == BhyveLeaf::Review
    }

    fn cpuid(&self, _vcpu: u32) -> Vec<CpuidLeaf> {
        cpuid::leaves(self.leaf, self.hypercalls_enabled)
    }

    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String> {
        cpuid::explain(self.leaf, self.hypercalls_enabled, leaf)
    }

    /// A summary line, then one line per probe that fired, with its count (a guest may create
    /// up to 4096 probes; the silent ones are only counted). Nothing when the guest made none.
    fn report(&self) -> Vec<String> {
        let counts = self.probe_counts();
        if counts.is_empty() {
            return Vec::new();
        }
        let fired: Vec<_> = counts.iter().filter(|(_, _, n)| *n > 0).collect();
        let mut lines = vec![format!(
            "bhyve: {} guest DTrace probes created, {} fired",
            counts.len(),
            fired.len()
        )];
        lines.extend(
            fired.iter().map(|(id, name, n)| format!("bhyve probe {id} {name:?}: fired {n} times")),
        );
        lines
    }

    fn trace_call(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        _platform: &dyn Platform,
    ) -> CallTrace {
        trace::call(vcpu, memory)
    }

    fn trace_result(&self, vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
        trace::result(vcpu, outcome)
    }
}
