//! Process exit statuses, documented in docs/cli.md.

use std::process::ExitCode;

/// What a command ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Success.
    Ok,
    /// The configuration is invalid (3).
    BadConfig,
    /// The personality cannot be built from this configuration on this host (4).
    Unsupported,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> Self {
        ExitCode::from(match s {
            Status::Ok => 0,
            Status::BadConfig => 3,
            Status::Unsupported => 4,
        })
    }
}

/// Prints an error the way every command does and returns its status.
pub(crate) fn fail(status: Status, message: impl std::fmt::Display) -> Status {
    eprintln!("polyvisor: {message}");
    status
}
