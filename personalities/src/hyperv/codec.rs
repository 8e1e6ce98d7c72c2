//! The hypercall register convention (TLFS "Hypercall Inputs"/"Hypercall Outputs"): the input
//! value, where it and the two GPAs live in 64-bit and 32-bit mode, and how the result value and
//! a rep continuation are written back.

use polyvisor_core::{CallInput, CpuMode, Gpr, Next, Outcome, RegisterWrites, VcpuSnapshot};

use super::abi::*;

/// A hypercall input value (the "control" word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control(pub u64);

impl Control {
    /// Bits 15:0.
    pub fn code(self) -> u16 {
        (self.0 & HV_HYPERCALL_CODE_MASK) as u16
    }
    /// Bit 16.
    pub fn fast(self) -> bool {
        self.0 & HV_HYPERCALL_FAST_BIT != 0
    }
    /// Bits 26:17, in qwords.
    pub fn var_header(self) -> u16 {
        ((self.0 & HV_HYPERCALL_VARHEAD_MASK) >> HV_HYPERCALL_VARHEAD_OFFSET) as u16
    }
    /// Bits 43:32.
    pub fn rep_count(self) -> u16 {
        ((self.0 >> HV_HYPERCALL_REP_COMP_OFFSET) & 0xfff) as u16
    }
    /// Bits 59:48.
    pub fn rep_start(self) -> u16 {
        ((self.0 >> HV_HYPERCALL_REP_START_OFFSET) & 0xfff) as u16
    }
    /// Whether a RsvdZ bit is set.
    pub fn reserved(self) -> bool {
        self.0 & HV_HYPERCALL_RSVD_MASK != 0
    }
    /// The same input value with another rep start index.
    pub fn with_rep_start(self, start: u16) -> Control {
        Control(
            (self.0 & !HV_HYPERCALL_REP_START_MASK)
                | (u64::from(start & 0xfff) << HV_HYPERCALL_REP_START_OFFSET),
        )
    }
}

/// Whether the caller uses the 64-bit register mapping: EFER.LMA and CS.L, which the snapshot's
/// mode reports as `Long64`.
fn is_64(vcpu: &VcpuSnapshot) -> bool {
    vcpu.mode == CpuMode::Long64
}

/// Two 32-bit registers as one 64-bit value, `hi:lo`.
fn pair(vcpu: &VcpuSnapshot, hi: Gpr, lo: Gpr) -> u64 {
    (vcpu.regs.get(hi) & 0xffff_ffff) << 32 | (vcpu.regs.get(lo) & 0xffff_ffff)
}

/// Reads the input value, input GPA (or first fast parameter) and output GPA (or second):
/// RCX, RDX, R8 in 64-bit mode; EDX:EAX, EBX:ECX, EDI:ESI in 32-bit mode. The call number
/// the engine looks up is the call code.
pub fn read_input(vcpu: &VcpuSnapshot) -> CallInput {
    let (control, input, output) = if is_64(vcpu) {
        (vcpu.regs.rcx, vcpu.regs.rdx, vcpu.regs.r8)
    } else {
        (
            pair(vcpu, Gpr::Rdx, Gpr::Rax),
            pair(vcpu, Gpr::Rbx, Gpr::Rcx),
            pair(vcpu, Gpr::Rdi, Gpr::Rsi),
        )
    };
    CallInput {
        number: u64::from(Control(control).code()),
        args: [control, input, output, 0, 0, 0],
    }
}

/// Writes a hypercall result value: RAX in 64-bit mode, EDX:EAX in 32-bit mode; then skips the
/// instruction.
pub fn result(vcpu: &VcpuSnapshot, value: u64) -> Outcome {
    let mut writes = RegisterWrites::none();
    if is_64(vcpu) {
        writes.push(Gpr::Rax, value);
    } else {
        writes.push(Gpr::Rdx, value >> 32);
        writes.push(Gpr::Rax, value & 0xffff_ffff);
    }
    Outcome { writes, next: Next::Advance }
}

/// A result value: status in bits 15:0, reps completed in 43:32.
pub fn result_value(status: u16, reps_completed: u16) -> u64 {
    u64::from(status) | (u64::from(reps_completed & 0xfff) << HV_HYPERCALL_REP_COMP_OFFSET)
}

/// A rep call that stopped early to bound its time (TLFS "Hypercall Continuation"): RIP stays
/// on the instruction and the input value's rep start index says where to resume. 64-bit: RCX
/// gets the new input value and RAX the progress so far; 32-bit: EDX:EAX is both input and
/// result, so it gets the new input value.
pub fn continuation(vcpu: &VcpuSnapshot, control: Control, done: u16) -> Outcome {
    let next = control.with_rep_start(done);
    let mut writes = RegisterWrites::none();
    if is_64(vcpu) {
        writes.push(Gpr::Rcx, next.0);
        writes.push(Gpr::Rax, result_value(HV_STATUS_SUCCESS, done));
    } else {
        writes.push(Gpr::Rdx, next.0 >> 32);
        writes.push(Gpr::Rax, next.0 & 0xffff_ffff);
    }
    Outcome { writes, next: Next::Retry }
}
