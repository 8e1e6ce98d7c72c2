//! The hyperv personality: Microsoft Hyper-V as the Top Level Functional Specification (TLFS)
//! describes it — CPUID 0x40000000..0x40000006, the Hv#1 synthetic MSRs (guest OS id,
//! hypercall page overlay, VP index, run time, reference counter and TSC page, frequencies,
//! reset, crash) and the hypercall interface with its status codes, rep continuation and the
//! 64-bit and 32-bit register conventions. docs/abi/hyperv.md describes the interface as
//! implemented, with sources.
//!
//! Files: [`abi`] (constants), [`cpuid`] (identity and backed masks), [`codec`] (register
//! convention), [`msr`] (synthetic MSRs), [`calls`] (hypercall table and handlers).

pub mod abi;
pub mod calls;
pub mod codec;
pub mod cpuid;
pub mod msr;
mod trace;

#[cfg(test)]
mod codec_props;
#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use polyvisor_config::{Config, ResetAction};
use polyvisor_core::{
    CallInput, CallTrace, CpuMode, CpuidLeaf, Dispatch, Engine, GuestMemoryMmap,
    HypercallInstruction, HypercallRow, HypervisorMode, MsrContext, MsrRead, MsrWrite, Outcome,
    Personality, Platform, Refusal, Reply, VcpuSnapshot,
};

use crate::{BuildError, HostFacts};
use abi::*;
use cpuid::{Backing, Identity};
use msr::{PartitionMsrs, VpMsrs};

/// The Hyper-V personality for one VM.
#[derive(Debug)]
pub struct HyperV {
    /// What CPUID shows, and so what is permitted.
    pub(crate) id: Identity,
    /// The instruction in the hypercall page.
    instruction: HypercallInstruction,
    /// The overlay page shown at the HYPERCALL MSR's GPA.
    hypercall_page: Box<[u8]>,
    /// TscScale of the reference TSC page, when the page is backed.
    tsc_scale: Option<u64>,
    /// The TSC frequency for HV_X64_MSR_TSC_FREQUENCY.
    tsc_khz: Option<u64>,
    /// Partition-wide MSR state.
    msrs: PartitionMsrs,
    /// Per-VP state, one per configured vCPU.
    vps: Box<[VpMsrs]>,
}

/// The synthetic MSR range this personality owns.
const MSR_RANGES: &[(u32, u32)] = &[(HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_LAST)];

impl HyperV {
    /// Builds the personality, refusing configurations that ask for what is not backed.
    pub fn new(config: &Config, host: &HostFacts) -> Result<Self, BuildError> {
        if config.hyperv.reset == ResetAction::Reset {
            return Err(BuildError::Unbacked {
                section: "hyperv",
                message: "reset = \"reset\" needs the VMM to reset and reboot the VM in place, \
                          which it cannot do yet; use reset = \"exit\" (the VM ends with the \
                          reboot status)"
                    .to_string(),
            });
        }
        let backing = Backing::new(host, config);
        let id = Identity::new(config, backing)?;
        let vcpus = usize::try_from(config.vm.vcpus).unwrap_or(1);
        Ok(HyperV {
            instruction: host.instruction,
            hypercall_page: msr::hypercall_page(host.instruction.bytes()),
            tsc_scale: if backing.reference_tsc {
                host.tsc_khz.and_then(msr::tsc_scale)
            } else {
                None
            },
            tsc_khz: host.tsc_khz.filter(|k| *k > 0),
            msrs: PartitionMsrs::default(),
            vps: (0..vcpus).map(|_| VpMsrs::default()).collect(),
            id,
        })
    }

    /// The instruction the hypercall page holds.
    pub fn instruction(&self) -> HypercallInstruction {
        self.instruction
    }

    /// The identity shown in CPUID.
    pub fn identity(&self) -> &Identity {
        &self.id
    }
}

impl Personality for HyperV {
    fn mode(&self) -> HypervisorMode {
        HypervisorMode::Hyperv
    }

    fn table(&self) -> &[HypercallRow<Self>] {
        calls::TABLE
    }

    /// TLFS "Legal Hypercall Environments": CPL 0 in protected or long mode, else #UD; and a
    /// hypercall is made through the enabled hypercall page (KVM: no guest OS id, no Hyper-V
    /// hypercall), else #UD.
    fn decode(&self, vcpu: &VcpuSnapshot) -> Result<CallInput, Outcome> {
        if vcpu.cpl != 0 || vcpu.mode == CpuMode::Real || !self.msrs.hypercall_enabled() {
            return Err(Outcome::invalid_opcode());
        }
        Ok(codec::read_input(vcpu))
    }

    fn encode(&self, vcpu: &VcpuSnapshot, reply: Reply) -> Outcome {
        match reply {
            Reply::Value(v) | Reply::Error(v) => codec::result(vcpu, v),
            Reply::Outcome(o) => o,
        }
    }

    /// Disabled: #UD, as KVM answers a hypercall when Hyper-V hypercalls are off. Unknown
    /// codes: HV_STATUS_INVALID_HYPERCALL_CODE. Denied by the configuration:
    /// HV_STATUS_ACCESS_DENIED. A ring other than 0: #UD.
    fn refuse(&self, vcpu: &VcpuSnapshot, refusal: Refusal) -> Outcome {
        let code = match refusal {
            Refusal::Disabled | Refusal::WrongRing { .. } => return Outcome::invalid_opcode(),
            Refusal::Unknown { .. } | Refusal::Unimplemented { .. } => {
                HV_STATUS_INVALID_HYPERCALL_CODE
            }
            Refusal::Denied { .. } => HV_STATUS_ACCESS_DENIED,
        };
        codec::result(vcpu, u64::from(code))
    }

    fn cpuid(&self, _vcpu: u32) -> Vec<CpuidLeaf> {
        self.id.leaves()
    }

    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String> {
        cpuid::explain(leaf)
    }

    fn msr_ranges(&self) -> &[(u32, u32)] {
        MSR_RANGES
    }

    fn read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        self.msr_read(ctx, msr)
    }

    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        self.msr_write(ctx, msr, value)
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

    fn msr_name(&self, msr: u32) -> Option<&'static str> {
        trace::msr_name(msr)
    }
}

/// Builds the hyperv personality alone (tests and tools that want its state).
pub fn personality(config: &Config, host: &HostFacts) -> Result<Arc<HyperV>, BuildError> {
    Ok(Arc::new(HyperV::new(config, host)?))
}

/// Builds the hyperv engine from a configuration.
pub fn build(config: &Config, host: &HostFacts) -> Result<Arc<dyn Dispatch>, BuildError> {
    let engine = Engine::new(personality(config, host)?, &config.hypervisor.policy())?;
    Ok(Arc::new(engine))
}
