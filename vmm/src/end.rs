//! How a VM ends, and the process exit status for each end.
//!
//! | end | exit status |
//! |---|---|
//! | test-exit port: `out 0xF4, eax` | `eax` (values above 255 become 255) |
//! | personality poweroff N | N (above 255: 255) |
//! | personality reboot request | 248 (polyvisor does not reset; the run ends, and a wrapper that wants a reboot can start it again) |
//! | personality crash report | 250 |
//! | other personality-named end | 249 |
//! | triple fault (`KVM_EXIT_SHUTDOWN`) | 251 |
//! | KVM internal error, emulation failure, failed entry | 252 |
//! | unhandled port or MMIO access | 253 |
//! | every vCPU halted with nothing left to wake it | 254 |
//! | run timeout | 124 (as timeout(1)) |
//! | a VMM failure during the run (an ioctl failed) | 255 |

use std::fmt;
use std::time::Duration;

use polyvisor_core::ExitReason;

/// Exit status for a reboot the guest asked for: distinct, so a wrapper can tell it from a
/// poweroff and start the VM again.
pub const STATUS_REBOOT: i32 = 248;
/// Exit status for a crash the guest reported.
pub const STATUS_CRASH: i32 = 250;
/// Exit status for another personality-named end.
pub const STATUS_OTHER: i32 = 249;
/// Exit status for a triple fault.
pub const STATUS_TRIPLE_FAULT: i32 = 251;
/// Exit status for KVM internal errors.
pub const STATUS_INTERNAL: i32 = 252;
/// Exit status for an access no device answers.
pub const STATUS_UNHANDLED: i32 = 253;
/// Exit status when every vCPU halted for good.
pub const STATUS_ALL_HALTED: i32 = 254;
/// Exit status for the run timeout.
pub const STATUS_TIMEOUT: i32 = 124;
/// Exit status for a VMM failure.
pub const STATUS_VMM_FAILURE: i32 = 255;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest wrote its status to the test-exit port.
    ExitPort(u32),
    /// The personality ended the VM for the guest (poweroff, reboot, crash, ...).
    Guest(ExitReason),
    /// A triple fault (`KVM_EXIT_SHUTDOWN`) on a vCPU.
    TripleFault {
        /// The vCPU.
        vcpu: u32,
        /// Its registers.
        dump: String,
    },
    /// KVM could not go on (internal error, emulation failure, failed entry, unknown exit).
    InternalError {
        /// The vCPU.
        vcpu: u32,
        /// What KVM said.
        what: String,
        /// Its registers.
        dump: String,
    },
    /// A port or MMIO access no device answers.
    Unhandled {
        /// The vCPU.
        vcpu: u32,
        /// The access, e.g. "out 0x80 (1 byte) = 0x1".
        access: String,
        /// Its registers.
        dump: String,
    },
    /// Every vCPU is halted and nothing can wake any of them.
    AllHalted {
        /// What each vCPU was doing.
        detail: String,
    },
    /// The run timeout expired.
    Timeout(Duration),
    /// The VMM itself failed (an ioctl on the vCPU path).
    VmmFailure(String),
}

impl VmEnd {
    /// The process exit status for this end (see the module documentation).
    pub fn exit_status(&self) -> i32 {
        let clamp = |v: u32| i32::try_from(v.min(255)).unwrap_or(255);
        match self {
            VmEnd::ExitPort(v) => clamp(*v),
            VmEnd::Guest(ExitReason::Poweroff(n)) => clamp(*n),
            VmEnd::Guest(ExitReason::Reboot) => STATUS_REBOOT,
            VmEnd::Guest(ExitReason::Crash(_)) => STATUS_CRASH,
            VmEnd::Guest(ExitReason::Other(_)) => STATUS_OTHER,
            VmEnd::TripleFault { .. } => STATUS_TRIPLE_FAULT,
            VmEnd::InternalError { .. } => STATUS_INTERNAL,
            VmEnd::Unhandled { .. } => STATUS_UNHANDLED,
            VmEnd::AllHalted { .. } => STATUS_ALL_HALTED,
            VmEnd::Timeout(_) => STATUS_TIMEOUT,
            VmEnd::VmmFailure(_) => STATUS_VMM_FAILURE,
        }
    }

    /// Whether the end is a fault of the guest or the host rather than an orderly exit.
    pub fn is_fault(&self) -> bool {
        !matches!(
            self,
            VmEnd::ExitPort(_) | VmEnd::Guest(ExitReason::Poweroff(_) | ExitReason::Reboot)
        )
    }

    /// The register dump, for ends that carry one.
    pub fn dump(&self) -> Option<&str> {
        match self {
            VmEnd::TripleFault { dump, .. }
            | VmEnd::InternalError { dump, .. }
            | VmEnd::Unhandled { dump, .. } => Some(dump),
            _ => None,
        }
    }
}

impl fmt::Display for VmEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmEnd::ExitPort(v) => {
                write!(f, "the guest exited through port 0xf4 with status {v} ({v:#x})")
            }
            VmEnd::Guest(ExitReason::Poweroff(n)) => {
                write!(f, "the guest powered off with status {n}")
            }
            VmEnd::Guest(ExitReason::Reboot) => {
                write!(f, "the guest asked for a reboot; the run ends")
            }
            VmEnd::Guest(ExitReason::Crash(text)) => {
                write!(f, "the guest reported a crash: {text}")
            }
            VmEnd::Guest(ExitReason::Other(text)) => write!(f, "the guest ended the VM: {text}"),
            VmEnd::TripleFault { vcpu, .. } => {
                write!(f, "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN)")
            }
            VmEnd::InternalError { vcpu, what, .. } => {
                write!(f, "vCPU {vcpu}: KVM internal error: {what}")
            }
            VmEnd::Unhandled { vcpu, access, .. } => write!(f, "vCPU {vcpu}: unhandled {access}"),
            VmEnd::AllHalted { detail } => {
                write!(f, "every vCPU is halted and nothing can wake them ({detail})")
            }
            VmEnd::Timeout(d) => write!(f, "the run timed out after {:.1} s", d.as_secs_f64()),
            VmEnd::VmmFailure(text) => write!(f, "VMM failure: {text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct_for_faults() {
        assert_eq!(VmEnd::ExitPort(7).exit_status(), 7);
        assert_eq!(VmEnd::ExitPort(0x1234).exit_status(), 255);
        assert_eq!(VmEnd::Guest(ExitReason::Poweroff(3)).exit_status(), 3);
        let faults = [
            VmEnd::Guest(ExitReason::Crash(String::new())).exit_status(),
            VmEnd::Guest(ExitReason::Other(String::new())).exit_status(),
            STATUS_TRIPLE_FAULT,
            STATUS_INTERNAL,
            STATUS_UNHANDLED,
            STATUS_ALL_HALTED,
            STATUS_TIMEOUT,
            STATUS_VMM_FAILURE,
        ];
        let mut sorted = faults.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), faults.len());
        assert!(faults.iter().all(|s| *s != 0));
    }
}
