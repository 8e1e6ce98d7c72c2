use crate::platform::Platform;
use crate::GuestMemoryMmap;

/// What an MSR handler may touch.
pub struct MsrContext<'a> {
    /// The vCPU that made the access.
    pub vcpu: u32,
    /// Guest memory, bounds-checked.
    pub memory: &'a GuestMemoryMmap,
    /// Effects the VMM provides.
    pub platform: &'a dyn Platform,
}

/// The answer to an RDMSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrRead {
    /// The MSR's value.
    Value(u64),
    /// Inject #GP(0).
    Gp,
    /// Not one of this personality's MSRs: the VMM applies its default (#GP).
    NotMine,
}

/// The answer to a WRMSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsrWrite {
    /// Accepted.
    Done,
    /// Inject #GP(0).
    Gp,
    /// Accepted, and the write ends the VM (a reset or crash MSR).
    Exit(crate::ExitReason),
    /// Not one of this personality's MSRs: the VMM applies its default (#GP).
    NotMine,
}
