use crate::regs::Gpr;

/// At most this many registers change on one hypercall return.
pub const MAX_REGISTER_WRITES: usize = 8;

/// Register updates to apply on return, held inline so the hot path never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterWrites {
    regs: [Option<Gpr>; MAX_REGISTER_WRITES],
    values: [u64; MAX_REGISTER_WRITES],
}

impl RegisterWrites {
    /// No register changes.
    pub const fn none() -> Self {
        RegisterWrites { regs: [None; MAX_REGISTER_WRITES], values: [0; MAX_REGISTER_WRITES] }
    }

    /// One register write.
    pub fn one(reg: Gpr, value: u64) -> Self {
        let mut writes = Self::none();
        writes.push(reg, value);
        writes
    }

    /// Adds (or replaces) a register write. Returns `false` when the fixed capacity is full,
    /// which is a personality bug, never a guest's doing.
    pub fn push(&mut self, reg: Gpr, value: u64) -> bool {
        let slot = self.regs.iter().position(|r| *r == Some(reg) || r.is_none());
        match slot.and_then(|i| Some((self.regs.get_mut(i)?, self.values.get_mut(i)?))) {
            Some((r, v)) => {
                *r = Some(reg);
                *v = value;
                true
            }
            None => false,
        }
    }

    /// The writes in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = (Gpr, u64)> + '_ {
        self.regs.iter().zip(self.values.iter()).map_while(|(r, v)| r.map(|r| (r, *v)))
    }

    /// The value written to `reg`, if any.
    pub fn get(&self, reg: Gpr) -> Option<u64> {
        self.iter().find(|(r, _)| *r == reg).map(|(_, v)| v)
    }

    /// Whether there are no writes.
    pub fn is_empty(&self) -> bool {
        self.regs.first().is_none_or(Option::is_none)
    }
}

/// An exception the VMM injects into the guest instead of completing the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exception {
    /// #UD, vector 6.
    InvalidOpcode,
    /// #GP, vector 13, with its error code.
    GeneralProtection(u32),
}

impl Exception {
    /// The exception's vector.
    pub const fn vector(self) -> u8 {
        match self {
            Exception::InvalidOpcode => 6,
            Exception::GeneralProtection(_) => 13,
        }
    }

    /// The error code pushed with the exception, if it has one.
    pub const fn error_code(self) -> Option<u32> {
        match self {
            Exception::InvalidOpcode => None,
            Exception::GeneralProtection(code) => Some(code),
        }
    }

    /// The mnemonic the manuals use.
    pub const fn mnemonic(self) -> &'static str {
        match self {
            Exception::InvalidOpcode => "#UD",
            Exception::GeneralProtection(_) => "#GP",
        }
    }
}

/// Why the guest asked for the VM to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// An orderly power-off, with the guest's status code.
    Poweroff(u32),
    /// The guest asked for a reboot.
    Reboot,
    /// The guest reported a crash; the text says what it left behind.
    Crash(String),
    /// Any other end the personality names.
    Other(String),
}

/// What happens to the vCPU after the registers are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Skip the hypercall instruction and resume.
    Advance,
    /// Leave RIP on the instruction so the guest executes it again (rep continuation).
    Retry,
    /// Inject an exception with RIP on the instruction, as the hardware would.
    Inject(Exception),
    /// Skip the instruction, then park the vCPU until it is woken (by an interrupt, an event
    /// or another vCPU).
    Halt,
    /// End the VM.
    Exit(ExitReason),
}

/// The engine's answer for one trapped instruction: register updates, then what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Registers to write before resuming.
    pub writes: RegisterWrites,
    /// What the vCPU does after that.
    pub next: Next,
}

impl Outcome {
    /// Write `value` to `reg` and skip the instruction: the common successful return.
    pub fn ret(reg: Gpr, value: u64) -> Self {
        Outcome { writes: RegisterWrites::one(reg, value), next: Next::Advance }
    }

    /// Inject an exception; no register changes.
    pub fn inject(exception: Exception) -> Self {
        Outcome { writes: RegisterWrites::none(), next: Next::Inject(exception) }
    }

    /// Inject #UD.
    pub fn invalid_opcode() -> Self {
        Self::inject(Exception::InvalidOpcode)
    }

    /// End the VM.
    pub fn exit(reason: ExitReason) -> Self {
        Outcome { writes: RegisterWrites::none(), next: Next::Exit(reason) }
    }

    /// Whether this outcome is a fault or an end rather than a completed call.
    pub fn is_fault(&self) -> bool {
        matches!(self.next, Next::Inject(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_bound() {
        let mut w = RegisterWrites::none();
        assert!(w.push(Gpr::Rax, 1));
        assert!(w.push(Gpr::Rax, 2));
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![(Gpr::Rax, 2)]);
        for reg in [Gpr::Rbx, Gpr::Rcx, Gpr::Rdx, Gpr::Rsi, Gpr::Rdi, Gpr::R8, Gpr::R9] {
            assert!(w.push(reg, 7));
        }
        assert!(!w.push(Gpr::R10, 7), "capacity is fixed");
        assert_eq!(w.get(Gpr::R9), Some(7));
        assert_eq!(w.get(Gpr::R10), None);
    }

    #[test]
    fn exception_vectors() {
        assert_eq!(Exception::InvalidOpcode.vector(), 6);
        assert_eq!(Exception::GeneralProtection(0).vector(), 13);
        assert_eq!(Exception::GeneralProtection(0).error_code(), Some(0));
        assert_eq!(Exception::InvalidOpcode.error_code(), None);
    }
}
