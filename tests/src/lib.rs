//! # polyvisor-tests — one behaviour, every personality
//!
//! Each ABI is described once here: how a guest makes a call in it, and how to read the
//! answer it got. Suites in `tests/` then state a behaviour once and the answer each ABI's
//! documentation gives, and run it against every personality.
#![deny(missing_docs)]

use std::sync::Arc;

use polyvisor_config::Config;
use polyvisor_core::testing::{memory, snapshot, RecordingPlatform};
use polyvisor_core::{
    Dispatch, Exception, Gpr, GuestMemoryMmap, HypervisorMode, MsrContext, Next, Outcome,
    Registers, VcpuSnapshot,
};
use polyvisor_personalities::{build, HostFacts};

/// What a guest observed after one hypercall instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The instruction faulted with this exception.
    Fault(Exception),
    /// The call returned; this is the ABI's result register (RAX).
    Returned(u64),
    /// Anything else (halt, retry, end of the VM).
    Other,
}

impl Answer {
    /// Reads an outcome the way the guest sees it.
    pub fn of(outcome: &Outcome) -> Answer {
        match &outcome.next {
            Next::Inject(e) => Answer::Fault(*e),
            Next::Advance => Answer::Returned(outcome.writes.get(Gpr::Rax).unwrap_or(u64::MAX)),
            _ => Answer::Other,
        }
    }
}

/// One ABI as a guest uses it.
#[derive(Debug, Clone, Copy)]
pub struct Abi {
    /// The personality.
    pub mode: HypervisorMode,
    /// The spec's name of a harmless call every guest may make from ring 0 only.
    pub kernel_call: &'static str,
}

/// Every ABI polyvisor implements.
pub const ABIS: [Abi; 4] = [
    Abi { mode: HypervisorMode::Bhyve, kernel_call: "HYPERCALL_DTRACE_RESERVED1" },
    Abi { mode: HypervisorMode::Kvm, kernel_call: "KVM_HC_VAPIC_POLL_IRQ" },
    Abi { mode: HypervisorMode::Hyperv, kernel_call: "HvCallNotifyLongSpinWait" },
    Abi { mode: HypervisorMode::Xen, kernel_call: "__HYPERVISOR_xen_version" },
];

/// A VM-less machine for one personality: its engine, guest memory and a recording platform.
pub struct Bench {
    /// The ABI.
    pub abi: Abi,
    /// The engine as the VMM holds it.
    pub engine: Arc<dyn Dispatch>,
    /// 16 MiB of guest memory.
    pub memory: GuestMemoryMmap,
    /// Effects the handlers asked for.
    pub platform: RecordingPlatform,
}

impl Bench {
    /// Builds the personality under `config` (its mode is set from `abi`) and does what a
    /// guest of that ABI must do before its first call (Hyper-V: guest OS id and hypercall page).
    pub fn new(abi: Abi, mut config: Config) -> Bench {
        config.hypervisor.mode = abi.mode;
        let engine = match build(&config, &HostFacts::nominal()) {
            Ok(e) => e,
            Err(e) => unreachable!("{}: cannot build: {e}", abi.mode),
        };
        let bench =
            Bench { abi, engine, memory: memory(16 << 20), platform: RecordingPlatform::new(2) };
        if abi.mode == HypervisorMode::Hyperv {
            let ctx = MsrContext { vcpu: 0, memory: &bench.memory, platform: &bench.platform };
            bench.engine.write_msr(&ctx, 0x4000_0000, 0x8100_0000_0000_0000);
            bench.engine.write_msr(&ctx, 0x4000_0001, 0x20_0000 | 1);
        }
        bench
    }

    /// The number of a call by its table name.
    pub fn number(&self, name: &str) -> u64 {
        match self.engine.rows().iter().find(|r| r.name == name) {
            Some(r) => r.number,
            None => unreachable!("{}: no call named {name}", self.abi.mode),
        }
    }

    /// Registers for call `number` with harmless arguments, by the ABI's convention.
    pub fn registers(&self, number: u64) -> Registers {
        match self.abi.mode {
            // Hyper-V: the call code in RCX, fast (bit 16); NotifyLongSpinWait's one argument.
            HypervisorMode::Hyperv => {
                Registers { rcx: number | 1 << 16, rdx: 1, ..Default::default() }
            }
            // The others: the number in RAX; a zero first argument (xen_version: XENVER_version).
            _ => Registers { rax: number, ..Default::default() },
        }
    }

    /// Makes call `number` from privilege level `cpl` and returns what the guest observes.
    pub fn call(&self, number: u64, cpl: u8) -> Answer {
        let mut vcpu: VcpuSnapshot = snapshot(self.registers(number));
        vcpu.cpl = cpl;
        Answer::of(&self.engine.hypercall(&vcpu, &self.memory, &self.platform))
    }
}
