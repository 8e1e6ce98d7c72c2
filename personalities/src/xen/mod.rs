//! The xen personality: Xen's HVM/PVH hypercall ABI as an unprivileged HVM domain sees it.
//!
//! - [`cpuid`]: leaves 0x40000000..0x40000005.
//! - [`hypercall_page`]: the page installed through MSR 0x40000000.
//! - [`codec`]: the 64-bit and 32-bit register conventions.
//! - [`table`]: every hypercall an HVM guest may make (`hvm64`/`hvm32` columns of
//!   `xen/include/hypercall-defs.c`), all ring 0 only.
//! - [`calls`]: the handlers; [`guest`]: guest buffers at linear addresses;
//!   [`shared_info`]: the shared page and `vcpu_info` areas; [`state`]: what is remembered.
//!
//! Refusals answer as Xen answers a call it does not have: unknown, unimplemented and
//! disabled calls `-ENOSYS`; calls the configuration denies `-EPERM` (what XSM answers);
//! CPL > 0 `-EPERM` (`hvm_hypercall`). docs/abi/xen.md has the whole interface.

// Constants keep the Xen headers' spelling (XENVER_get_features), also in patterns.
#![allow(non_upper_case_globals)]

pub mod abi;
pub mod calls;
pub mod codec;
pub mod cpuid;
pub mod evtchn;
pub mod guest;
pub mod hypercall_page;
pub mod pv;
pub mod ring;
pub mod shared_info;
pub mod state;
pub mod table;
mod trace;
pub mod xenstore;

#[cfg(test)]
mod testutil;

use std::sync::Arc;

use polyvisor_config::{Config, XenConfig};
use polyvisor_core::{
    CallInput, CallTrace, CpuidLeaf, Dispatch, Engine, GuestMemoryMmap, HypercallRow,
    HypervisorMode, MsrContext, MsrRead, MsrWrite, Outcome, Personality, Platform, Refusal, Reply,
    VcpuSnapshot,
};

use crate::{BuildError, HostFacts};
use abi::errno::{ENOSYS, EPERM};
use abi::neg;
use shared_info::Clock;
use state::State;

/// Builds the xen engine from a configuration.
pub fn build(config: &Config, host: &HostFacts) -> Result<Arc<dyn Dispatch>, BuildError> {
    let mut xen = Xen::new(&config.xen, config.vm.vcpus, *host);
    let memory_kib = u64::from(config.vm.memory_mib) * 1024;
    xen.state = Arc::new(State::new(config.vm.vcpus, config.xen.domid, memory_kib));
    let engine = Engine::new(Arc::new(xen), &config.hypervisor.policy())?;
    Ok(Arc::new(engine))
}

/// The Xen personality for one VM.
#[derive(Debug)]
pub struct Xen {
    /// `(major, minor)` shown by CPUID and `XENVER_version`.
    pub version: (u16, u16),
    /// `XENVER_extraversion`, NUL-padded.
    pub extraversion: [u8; abi::version::EXTRAVERSION_LEN],
    /// The domain id the guest is told (CPUID B+4 ECX) and accepted besides `DOMID_SELF`.
    pub domid: u16,
    /// What the host offers.
    pub host: HostFacts,
    /// Domain and vCPU state, shared with the host timers' callbacks.
    pub state: Arc<State>,
}

impl Xen {
    /// A personality for a VM of `vcpus` vCPUs.
    pub fn new(config: &XenConfig, vcpus: u32, host: HostFacts) -> Self {
        let mut extraversion = [0u8; abi::version::EXTRAVERSION_LEN];
        // The config allows at most 15 bytes, so the string stays NUL-terminated.
        for (dst, src) in extraversion
            .iter_mut()
            .take(abi::version::EXTRAVERSION_LEN - 1)
            .zip(config.extraversion.bytes())
        {
            *dst = src;
        }
        Xen {
            version: config.version_numbers(),
            extraversion,
            domid: config.domid,
            host,
            state: Arc::new(State::new(vcpus, config.domid, 0)),
        }
    }

    /// Whether the configured version is `major.minor` or later: behaviour that changed
    /// between Xen releases follows the release the guest is shown.
    pub fn at_least(&self, major: u16, minor: u16) -> bool {
        self.version >= (major, minor)
    }

    /// Whether `domid` names this domain: `DOMID_SELF` or its own id
    /// (`rcu_lock_domain_by_any_id`).
    pub fn is_self(&self, domid: u16) -> bool {
        domid == abi::DOMID_SELF || domid == self.domid
    }

    /// What time fields are filled from.
    pub fn clock(&self, platform: &dyn Platform) -> Clock {
        Clock {
            tsc_khz: platform.tsc_khz().or(self.host.tsc_khz),
            stable_tsc: self.host.stable_tsc,
        }
    }

    /// Whether the pvclock in `vcpu_info` can be trusted (`XENFEAT_hvm_safe_pvclock`): a
    /// known, stable TSC rate makes one sample valid for good.
    pub fn safe_pvclock(&self) -> bool {
        self.host.stable_tsc && self.host.tsc_khz.is_some_and(|k| k > 0)
    }
}

impl Personality for Xen {
    fn mode(&self) -> HypervisorMode {
        HypervisorMode::Xen
    }

    fn table(&self) -> &[HypercallRow<Self>] {
        table::TABLE
    }

    fn decode(&self, vcpu: &VcpuSnapshot) -> Result<CallInput, Outcome> {
        Ok(codec::decode(vcpu))
    }

    fn encode(&self, vcpu: &VcpuSnapshot, reply: Reply) -> Outcome {
        codec::encode(vcpu, reply)
    }

    fn refuse(&self, vcpu: &VcpuSnapshot, refusal: Refusal) -> Outcome {
        let errno = match refusal {
            Refusal::Disabled | Refusal::Unknown { .. } | Refusal::Unimplemented { .. } => ENOSYS,
            Refusal::Denied { .. } | Refusal::WrongRing { .. } => EPERM,
        };
        codec::encode(vcpu, Reply::Error(neg(errno)))
    }

    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf> {
        cpuid::leaves(self, vcpu)
    }

    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String> {
        cpuid::explain(leaf)
    }

    fn msr_ranges(&self) -> &[(u32, u32)] {
        &[(abi::cpuid::HYPERCALL_PAGE_MSR, abi::cpuid::HYPERCALL_PAGE_MSR)]
    }

    fn read_msr(&self, _ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        match msr {
            // "Write hypercall page MSR. Read as zero."
            abi::cpuid::HYPERCALL_PAGE_MSR => MsrRead::Value(0),
            _ => MsrRead::NotMine,
        }
    }

    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        match msr {
            abi::cpuid::HYPERCALL_PAGE_MSR => {
                hypercall_page::write(ctx, self.host.instruction, value)
            }
            _ => MsrWrite::NotMine,
        }
    }

    fn trace_call(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> CallTrace {
        trace::call(vcpu, memory, platform)
    }

    fn trace_result(&self, vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
        trace::result(vcpu, outcome)
    }

    fn msr_name(&self, msr: u32) -> Option<&'static str> {
        trace::msr_name(msr)
    }

    /// A `SCHEDOP_block` or `SCHEDOP_poll` that halted has ended (by its timeout, an
    /// interrupt or a wake): the vCPU is no longer blocked, so an event from now on does not
    /// wake it (which the VMM would remember and end the vCPU's next halt with at once).
    fn halt_ended(&self, vcpu: u32) {
        if let Some(v) = self.state.vcpu(vcpu) {
            v.unblock();
        }
    }
}

#[cfg(test)]
mod tests;
