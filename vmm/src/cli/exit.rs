//! Process exit statuses, documented in docs/cli.md.

/// What a command ends with (other than `run`, whose status is the guest's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Success.
    Ok,
    /// The command ran and failed (1): a benchmark guest gave a wrong answer, a file could
    /// not be written.
    Failed,
    /// A usage error (2), as clap reports its own.
    Usage,
    /// The configuration is invalid (3).
    BadConfig,
    /// The personality cannot be built from this configuration on this host (4).
    Unsupported,
    /// The kernel image cannot be read or booted (5).
    BadKernel,
    /// KVM is unavailable or failed (6).
    HostFailure,
}

impl Status {
    /// The process exit status.
    pub(crate) fn code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Failed => 1,
            Status::Usage => 2,
            Status::BadConfig => 3,
            Status::Unsupported => 4,
            Status::BadKernel => 5,
            Status::HostFailure => 6,
        }
    }
}

/// Prints an error the way every command does and returns its status.
pub(crate) fn fail(status: Status, message: impl std::fmt::Display) -> Status {
    eprintln!("polyvisor: {message}");
    status
}
