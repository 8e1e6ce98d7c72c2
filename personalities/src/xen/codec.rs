//! The HVM calling conventions (`hvm_hypercall` in `xen/arch/x86/hvm/hypercall.c`).
//!
//! 64-bit callers (long mode): number in RAX, arguments in RDI, RSI, RDX, R10, R8 (R9 sixth),
//! result in RAX. Everyone else uses the 32-bit ("compat") convention: number in EAX,
//! arguments in EBX, ECX, EDX, ESI, EDI (EBP sixth), result in EAX, all 32 bits wide.

use polyvisor_core::{CallInput, CpuMode, Gpr, Outcome, Reply, VcpuSnapshot};

/// The caller's convention, which also decides the layout of pointer-sized fields
/// (`xen_ulong_t`, `xen_pfn_t`, guest handles) in the structures it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// Long mode: native 64-bit structures.
    W64,
    /// Protected, real or virtual-8086 mode: Xen's compat (32-bit) structures.
    W32,
}

impl Width {
    /// The convention of a trapped vCPU.
    pub fn of(vcpu: &VcpuSnapshot) -> Width {
        match vcpu.mode {
            CpuMode::Long64 => Width::W64,
            CpuMode::Protected32 | CpuMode::Real => Width::W32,
        }
    }

    /// Bytes in a pointer, `unsigned long`, `xen_ulong_t` or `xen_pfn_t`.
    pub const fn word(self) -> usize {
        match self {
            Width::W64 => 8,
            Width::W32 => 4,
        }
    }

    /// The registers carrying arguments 1 to 6.
    pub const fn arg_regs(self) -> [Gpr; 6] {
        match self {
            Width::W64 => [Gpr::Rdi, Gpr::Rsi, Gpr::Rdx, Gpr::R10, Gpr::R8, Gpr::R9],
            Width::W32 => [Gpr::Rbx, Gpr::Rcx, Gpr::Rdx, Gpr::Rsi, Gpr::Rdi, Gpr::Rbp],
        }
    }

    /// A value as the caller's result register holds it.
    pub const fn truncate(self, value: u64) -> u64 {
        match self {
            Width::W64 => value,
            Width::W32 => value & 0xffff_ffff,
        }
    }
}

/// Reads the number and arguments by the caller's convention.
pub fn decode(vcpu: &VcpuSnapshot) -> CallInput {
    let width = Width::of(vcpu);
    let regs = width.arg_regs();
    CallInput {
        number: width.truncate(vcpu.regs.get(Gpr::Rax)),
        args: regs.map(|r| width.truncate(vcpu.regs.get(r))),
    }
}

/// Puts a reply in RAX (EAX for 32-bit callers) and skips the instruction.
pub fn encode(vcpu: &VcpuSnapshot, reply: Reply) -> Outcome {
    match reply {
        Reply::Value(v) | Reply::Error(v) => Outcome::ret(Gpr::Rax, Width::of(vcpu).truncate(v)),
        Reply::Outcome(o) => o,
    }
}
