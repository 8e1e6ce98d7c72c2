//! # polyvisor-personalities — the faces polyvisor can show a guest
//!
//! One folder per hypervisor: `bhyve/` (the FreeBSD review's hypercall interface), `kvm/`
//! (Linux KVM's paravirtual ABI), `hyperv/` (Microsoft's TLFS) and `xen/` (HVM/PVH). Each is a
//! [`Personality`](polyvisor_core::Personality): a hypercall table with explicit rings, a
//! register codec, CPUID leaves and synthetic MSRs. [`build`] turns a configuration into the
//! engine the VMM drives. Nothing here needs /dev/kvm: another VMM can embed these as they are.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod bhyve;
#[cfg(test)]
mod codec_strategies;
pub mod hyperv;
pub mod kvm;
pub mod xen;

use std::sync::Arc;

use polyvisor_config::Config;
use polyvisor_core::{Dispatch, HypercallInstruction, HypervisorMode, PolicyError};

/// What the host offers that decides what a personality may advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// The instruction hypercall pages are filled with (the host CPU's native one).
    pub instruction: HypercallInstruction,
    /// The guest TSC frequency in kHz, when known.
    pub tsc_khz: Option<u64>,
    /// Whether the TSC is constant and invariant, so TSC-based clocks are trustworthy.
    pub stable_tsc: bool,
}

impl HostFacts {
    /// Facts for tools and tests that run without a VM: VMCALL, a 1 GHz stable TSC.
    pub fn nominal() -> Self {
        HostFacts {
            instruction: HypercallInstruction::Vmcall,
            tsc_khz: Some(1_000_000),
            stable_tsc: true,
        }
    }
}

/// Why a personality could not be built from a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The allow or deny list names a call the personality does not have.
    #[error("[hypervisor] {0}")]
    Policy(#[from] PolicyError),
    /// The configuration asks for something the personality cannot back on this host.
    #[error("[{section}] {message}")]
    Unbacked {
        /// The config section.
        section: &'static str,
        /// What was asked and why it cannot be had.
        message: String,
    },
    /// The mode exists in the configuration but has no implementation yet.
    #[error("hypervisor mode \"{0}\" is not implemented yet")]
    NotImplemented(HypervisorMode),
}

/// Builds the engine for the configured mode.
pub fn build(config: &Config, host: &HostFacts) -> Result<Arc<dyn Dispatch>, BuildError> {
    build_mode(config.hypervisor.mode, config, host)
}

/// Builds the engine for `mode`, taking everything else from `config`.
pub fn build_mode(
    mode: HypervisorMode,
    config: &Config,
    host: &HostFacts,
) -> Result<Arc<dyn Dispatch>, BuildError> {
    match mode {
        HypervisorMode::Bhyve => bhyve::build(config, host),
        HypervisorMode::Kvm => kvm::build(config, host),
        HypervisorMode::Hyperv => hyperv::build(config, host),
        HypervisorMode::Xen => xen::build(config, host),
    }
}
