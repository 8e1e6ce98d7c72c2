//! # polyvisor-vmm — the KVM backend
//!
//! The only crate that talks to /dev/kvm: VM and vCPU setup, the boot protocols (ELF64 direct
//! and PVH), hypercall trap strategies chosen by a probe VM, minimal devices, the [`Platform`]
//! handlers use, and the library API the `polyvisor` command calls:
//!
//! - [`run()`]: boot a configured VM and run it to its end ([`RunOptions`], [`RunReport`]);
//! - [`host_check`]: what this host's KVM offers ([`HostReport`], printable);
//! - [`bench::run_bench`]: hypercall round trips against the port-I/O floor and the other
//!   numbers of `polyvisor bench` (`docs/performance.md`);
//! - [`selftest::run_matrix`]: the cross-personality matrix of `polyvisor selftest`
//!   (`docs/testing.md`);
//! - [`parse_kernel`]: the pure, bounds-checked ELF reader (a fuzz target).
//!
//! See `docs/host-support.md` for the strategies, the host facts behind them, the boot
//! contract and the exit-status mapping.
//!
//! [`Platform`]: polyvisor_core::Platform
#![deny(missing_docs)]
// No panic reachable from guest data: the exit path (and everything else here) may not
// unwrap, expect, panic or index unchecked.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod bench;
pub mod boot;
pub mod console_input;
pub mod cpuid;
pub mod debug_channel;
pub mod devices;
pub mod end;
pub mod exits;
pub mod host;
pub mod kvm;
pub mod loader;
pub mod memory;
pub mod paging;
pub mod platform;
pub mod run;
pub mod selftest;
pub mod tables;
pub mod testing;
pub mod timers;
pub mod trace;
pub mod trap;
pub mod vcpu;
pub mod vm;

pub use end::VmEnd;
pub use host::{host_check, HostReport};
pub use loader::{parse_kernel, KernelImage, LoadError};
pub use run::{run, BootKind, RunOptions, RunReport, Startup, VmmError};
pub use trace::{TraceFormat, TraceOptions, TraceOutput};
pub use trap::TrapStrategy;
