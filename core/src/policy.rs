use std::fmt;

/// A hypercall named in an allow or deny list: by the spec's name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallSelector {
    /// The name as the personality's table spells it (case-insensitive).
    Name(String),
    /// The ABI's call number.
    Number(u64),
}

impl fmt::Display for CallSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallSelector::Name(n) => write!(f, "{n:?}"),
            CallSelector::Number(n) => write!(f, "{n:#x}"),
        }
    }
}

/// Which hypercalls a VM may make.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// The global switch; off unless the configuration turns it on.
    pub hypercalls_enabled: bool,
    /// When set, only these calls are permitted.
    pub allow: Option<Vec<CallSelector>>,
    /// These calls are refused even when allowed.
    pub deny: Vec<CallSelector>,
}

impl Policy {
    /// Everything enabled, nothing denied: convenient for tests and benchmarks.
    pub fn permissive() -> Self {
        Policy { hypercalls_enabled: true, allow: None, deny: Vec::new() }
    }
}

/// A policy that names a call the personality does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{list} names {selector}, which is not a {mode} hypercall; the {mode} hypercalls are: {known}"
)]
pub struct PolicyError {
    /// "allow" or "deny".
    pub list: &'static str,
    /// The offending entry.
    pub selector: CallSelector,
    /// The personality's mode.
    pub mode: crate::HypervisorMode,
    /// The valid names, comma-separated.
    pub known: String,
}
