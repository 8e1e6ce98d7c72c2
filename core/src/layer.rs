//! A [`Dispatch`] wrapped around another: override what the layer changes, and everything
//! else — including methods added to [`Dispatch`] later, such as the trace sink and
//! `halt_ended` — reaches the inner dispatcher without being written out again.

use std::sync::Arc;

use crate::counters::RefusalCounters;
use crate::cpuid::CpuidLeaf;
use crate::engine::{Dispatch, RowInfo};
use crate::mode::HypervisorMode;
use crate::msr::{MsrContext, MsrRead, MsrWrite};
use crate::outcome::Outcome;
use crate::platform::Platform;
use crate::regs::VcpuSnapshot;
use crate::trace::TraceSink;
use crate::GuestMemoryMmap;

/// A layer over an inner [`Dispatch`] (a recorder, a fault injector, a filter). Every
/// method's default passes the call on; a layer overrides the ones it changes, and the
/// blanket implementation makes it a [`Dispatch`] that forwards the rest.
pub trait DispatchLayer: Send + Sync {
    /// The dispatcher below this layer.
    fn inner(&self) -> &dyn Dispatch;
    /// One trapped hypercall ([`Dispatch::hypercall`]).
    fn layer_hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        self.inner().hypercall(vcpu, memory, platform)
    }
    /// An RDMSR ([`Dispatch::read_msr`]).
    fn layer_read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        self.inner().read_msr(ctx, msr)
    }
    /// A WRMSR ([`Dispatch::write_msr`]).
    fn layer_write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        self.inner().write_msr(ctx, msr, value)
    }
    /// The CPUID leaves of one vCPU ([`Dispatch::cpuid`]).
    fn layer_cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf> {
        self.inner().cpuid(vcpu)
    }
}

impl<L: DispatchLayer> Dispatch for L {
    fn mode(&self) -> HypervisorMode {
        self.inner().mode()
    }
    fn hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        self.layer_hypercall(vcpu, memory, platform)
    }
    fn read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        self.layer_read_msr(ctx, msr)
    }
    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        self.layer_write_msr(ctx, msr, value)
    }
    fn msr_ranges(&self) -> Vec<(u32, u32)> {
        self.inner().msr_ranges()
    }
    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf> {
        self.layer_cpuid(vcpu)
    }
    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String> {
        self.inner().explain_cpuid(leaf)
    }
    fn report(&self) -> Vec<String> {
        self.inner().report()
    }
    fn rows(&self) -> Vec<RowInfo> {
        self.inner().rows()
    }
    fn refusals(&self) -> &RefusalCounters {
        self.inner().refusals()
    }
    fn set_trace_sink(&self, sink: Arc<dyn TraceSink>) -> bool {
        self.inner().set_trace_sink(sink)
    }
    fn halt_ended(&self, vcpu: u32) {
        self.inner().halt_ended(vcpu)
    }
}
