//! Test scaffolding: an engine over the personality, a recording platform that logs bounded
//! halts, and call helpers for both conventions.

use std::sync::Arc;

use polyvisor_config::XenConfig;
use polyvisor_core::testing::{memory, snapshot, RecordingPlatform};
use polyvisor_core::{
    CpuMode, Dispatch, Engine, Gpr, GuestMemoryMmap, MsrContext, Outcome, Policy, Registers,
    VcpuSnapshot,
};
use vm_memory::{Bytes, GuestAddress};

use super::abi::neg;
use super::Xen;
use crate::HostFacts;

/// Guest RAM size of the default test VM.
pub const RAM: usize = 2 << 20;

/// A VM: engine, RAM and platform.
pub struct Vm {
    pub engine: Engine<Xen>,
    pub mem: GuestMemoryMmap,
    /// Logs `halt_until` calls (see [`RecordingPlatform::halts`]).
    pub platform: RecordingPlatform,
}

/// `-errno` as a 64-bit caller sees it.
pub fn e(errno: u64) -> u64 {
    neg(errno)
}

/// `-errno` as a 32-bit caller sees it.
pub fn e32(errno: u64) -> u64 {
    neg(errno) & 0xffff_ffff
}

impl Vm {
    /// 2 MiB of RAM at 0, two vCPUs, Xen 4.17, everything permitted.
    pub fn new() -> Self {
        Vm::build(XenConfig::default(), Policy::permissive(), HostFacts::nominal())
    }

    /// A VM showing Xen `version`.
    pub fn version(version: &str) -> Self {
        let config = XenConfig { version: version.into(), ..XenConfig::default() };
        Vm::build(config, Policy::permissive(), HostFacts::nominal())
    }

    pub fn build(config: XenConfig, policy: Policy, host: HostFacts) -> Self {
        let xen = Xen::new(&config, 2, host);
        Vm {
            engine: Engine::new(Arc::new(xen), &policy).unwrap(),
            mem: memory(RAM),
            platform: RecordingPlatform::new(2).logging_halts(),
        }
    }

    pub fn with_memory(mut self, mem: GuestMemoryMmap) -> Self {
        self.mem = mem;
        self
    }

    pub fn xen(&self) -> &Xen {
        self.engine.personality()
    }

    /// Runs a snapshot.
    pub fn run(&self, v: &VcpuSnapshot) -> Outcome {
        self.engine.hypercall(v, &self.mem, &self.platform)
    }

    /// A 64-bit ring-0 call on vCPU 0.
    pub fn call64(&self, nr: u64, args: &[u64]) -> Outcome {
        self.run(&snap64(nr, args))
    }

    /// A 32-bit ring-0 call on vCPU 0.
    pub fn call32(&self, nr: u64, args: &[u64]) -> Outcome {
        self.run(&snap32(nr, args))
    }

    /// RAX after a 64-bit call that must complete and advance.
    pub fn rax64(&self, nr: u64, args: &[u64]) -> u64 {
        rax(&self.call64(nr, args))
    }

    /// EAX after a 32-bit call.
    pub fn rax32(&self, nr: u64, args: &[u64]) -> u64 {
        rax(&self.call32(nr, args))
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(gpa)).unwrap();
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        buf
    }

    pub fn fill(&self, gpa: u64, len: usize, byte: u8) {
        self.write(gpa, &vec![byte; len]);
    }

    pub fn u32_at(&self, gpa: u64) -> u32 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    pub fn u64_at(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    pub fn msr(&self) -> MsrContext<'_> {
        MsrContext { vcpu: 0, memory: &self.mem, platform: &self.platform }
    }
}

/// RAX of a completed call (which must advance).
pub fn rax(o: &Outcome) -> u64 {
    assert_eq!(o.next, polyvisor_core::Next::Advance, "{o:?}");
    o.writes.get(Gpr::Rax).expect("RAX written")
}

/// A 64-bit ring-0 snapshot: number in RAX, arguments in RDI RSI RDX R10 R8 R9.
pub fn snap64(nr: u64, args: &[u64]) -> VcpuSnapshot {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    snapshot(Registers {
        rax: nr,
        rdi: a(0),
        rsi: a(1),
        rdx: a(2),
        r10: a(3),
        r8: a(4),
        r9: a(5),
        ..Default::default()
    })
}

/// A 32-bit ring-0 snapshot: number in EAX, arguments in EBX ECX EDX ESI EDI EBP.
pub fn snap32(nr: u64, args: &[u64]) -> VcpuSnapshot {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    let mut v = snapshot(Registers {
        rax: nr,
        rbx: a(0),
        rcx: a(1),
        rdx: a(2),
        rsi: a(3),
        rdi: a(4),
        rbp: a(5),
        ..Default::default()
    });
    v.mode = CpuMode::Protected32;
    v
}

/// Guest memory made of `(start, len)` regions.
pub fn regions(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
    let ranges: Vec<_> = ranges.iter().map(|(s, l)| (GuestAddress(*s), *l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}
