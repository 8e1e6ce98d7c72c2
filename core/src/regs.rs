use strum::{Display, EnumIter, IntoStaticStr};

/// The general-purpose registers a hypercall convention can read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Display, EnumIter, IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
#[allow(missing_docs)] // the register names are their own documentation
pub enum Gpr {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    Rsp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

/// General-purpose registers plus RIP and RFLAGS, as read from a trapped vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl Registers {
    /// The value of one general-purpose register.
    pub fn get(&self, reg: Gpr) -> u64 {
        match reg {
            Gpr::Rax => self.rax,
            Gpr::Rbx => self.rbx,
            Gpr::Rcx => self.rcx,
            Gpr::Rdx => self.rdx,
            Gpr::Rsi => self.rsi,
            Gpr::Rdi => self.rdi,
            Gpr::Rbp => self.rbp,
            Gpr::Rsp => self.rsp,
            Gpr::R8 => self.r8,
            Gpr::R9 => self.r9,
            Gpr::R10 => self.r10,
            Gpr::R11 => self.r11,
            Gpr::R12 => self.r12,
            Gpr::R13 => self.r13,
            Gpr::R14 => self.r14,
            Gpr::R15 => self.r15,
        }
    }

    /// Sets one general-purpose register.
    pub fn set(&mut self, reg: Gpr, value: u64) {
        let slot = match reg {
            Gpr::Rax => &mut self.rax,
            Gpr::Rbx => &mut self.rbx,
            Gpr::Rcx => &mut self.rcx,
            Gpr::Rdx => &mut self.rdx,
            Gpr::Rsi => &mut self.rsi,
            Gpr::Rdi => &mut self.rdi,
            Gpr::Rbp => &mut self.rbp,
            Gpr::Rsp => &mut self.rsp,
            Gpr::R8 => &mut self.r8,
            Gpr::R9 => &mut self.r9,
            Gpr::R10 => &mut self.r10,
            Gpr::R11 => &mut self.r11,
            Gpr::R12 => &mut self.r12,
            Gpr::R13 => &mut self.r13,
            Gpr::R14 => &mut self.r14,
            Gpr::R15 => &mut self.r15,
        };
        *slot = value;
    }
}

/// The execution mode of the trapping vCPU, which decides register widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Display, IntoStaticStr)]
pub enum CpuMode {
    /// 64-bit long mode (CS.L = 1).
    #[strum(serialize = "64-bit")]
    Long64,
    /// Protected mode or compatibility mode with 32-bit operands.
    #[strum(serialize = "32-bit")]
    Protected32,
    /// Real mode (CR0.PE = 0) or virtual-8086 mode.
    #[strum(serialize = "real")]
    Real,
}

impl CpuMode {
    /// Truncates a register value to the width this mode's callers pass.
    pub fn truncate(self, value: u64) -> u64 {
        match self {
            CpuMode::Long64 => value,
            CpuMode::Protected32 | CpuMode::Real => value & 0xffff_ffff,
        }
    }
}

/// The instruction the guest executed to make the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Display, IntoStaticStr)]
pub enum HypercallInstruction {
    /// Intel's `0f 01 c1`.
    #[strum(serialize = "VMCALL")]
    Vmcall,
    /// AMD's `0f 01 d9`.
    #[strum(serialize = "VMMCALL")]
    Vmmcall,
}

impl HypercallInstruction {
    /// The instruction's encoding; both are three bytes long.
    pub const fn bytes(self) -> [u8; 3] {
        match self {
            HypercallInstruction::Vmcall => [0x0f, 0x01, 0xc1],
            HypercallInstruction::Vmmcall => [0x0f, 0x01, 0xd9],
        }
    }

    /// Length of the instruction in bytes: what RIP advances by on completion.
    pub const LEN: u64 = 3;

    /// Recognises an encoding.
    pub fn from_bytes(bytes: [u8; 3]) -> Option<Self> {
        match bytes {
            [0x0f, 0x01, 0xc1] => Some(HypercallInstruction::Vmcall),
            [0x0f, 0x01, 0xd9] => Some(HypercallInstruction::Vmmcall),
            _ => None,
        }
    }
}

/// Everything the engine knows about a vCPU at the moment of a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuSnapshot {
    /// Index of the vCPU (0-based, as the VMM created them).
    pub vcpu: u32,
    /// Registers at the hypercall instruction (RIP points at it).
    pub regs: Registers,
    /// Current privilege level, 0..=3.
    pub cpl: u8,
    /// Execution mode, which decides register widths.
    pub mode: CpuMode,
    /// The instruction that trapped.
    pub instruction: HypercallInstruction,
}

impl VcpuSnapshot {
    /// A register read at the width of the caller's mode.
    pub fn arg(&self, reg: Gpr) -> u64 {
        self.mode.truncate(self.regs.get(reg))
    }
}
