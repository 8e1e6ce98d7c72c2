//! # polyvisor-core — the dispatch engine
//!
//! One engine serves every hypervisor personality. A trap strategy in the VMM turns a guest's
//! VMCALL/VMMCALL into a [`VcpuSnapshot`]; [`Engine::hypercall`] runs it through the fixed
//! flow — global switch, the personality's decode, table lookup, per-call allow/deny, ring
//! check, handler, the personality's encode — and returns an [`Outcome`] the VMM applies.
//! Synthetic MSR accesses take the same road through [`Dispatch::read_msr`] and
//! [`Dispatch::write_msr`].
//!
//! The crate knows nothing of KVM, threads or I/O: effects a handler needs (console, wake a
//! vCPU, deliver an interrupt, time) go through the [`Platform`] trait the VMM implements, and
//! guest memory is reached only through vm-memory's bounds-checked [`GuestMemory`].
//!
//! [`GuestMemory`]: vm_memory::GuestMemory
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod call_log;
mod counters;
mod cpuid;
mod engine;
mod layer;
mod mode;
mod msr;
mod outcome;
mod personality;
mod platform;
mod policy;
mod regs;
mod table;
pub mod testing;
pub mod trace;

pub use counters::{CallCounters, CounterSnapshot, RefusalCounters};
pub use cpuid::{CpuidLeaf, SIGNATURE_SCAN};
pub use engine::{Dispatch, Engine, RowInfo};
pub use layer::DispatchLayer;
pub use mode::HypervisorMode;
pub use msr::{MsrContext, MsrRead, MsrWrite};
pub use outcome::{Exception, ExitReason, Next, Outcome, RegisterWrites};
pub use personality::{Call, CallInput, Personality, Refusal, Reply};
pub use platform::{Platform, PlatformError, ProbeEvent, TimerCallback};
pub use policy::{CallSelector, Policy, PolicyError};
pub use regs::{CpuMode, Gpr, HypercallInstruction, Registers, VcpuSnapshot};
pub use table::{HypercallRow, Rings};
pub use trace::{CallStats, CallTrace, StatsRow, TraceEvent, TraceKind, TraceSink, Verdict};

/// Guest memory as the engine sees it: vm-memory's mmap-backed regions, bounds-checked.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
