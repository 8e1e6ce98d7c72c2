//! # polyvisor-config — TOML in, a typed and validated [`Config`] out
//!
//! Every error names the file, line and column of the offending value and, for choices, the
//! valid ones. Unknown keys are errors. Nothing starts on a bad config.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

mod bhyve;
mod error;
mod hyperv;
mod kvm;
mod locate;
mod range;
mod xen;

use std::path::{Path, PathBuf};

pub use bhyve::{BhyveConfig, BhyveLeaf};
pub use error::ConfigError;
pub use hyperv::{HypervConfig, ResetAction};
pub use kvm::{KvmConfig, KvmFeature};
pub use polyvisor_core::HypervisorMode;
use polyvisor_core::{CallSelector, Policy};
use serde::{Deserialize, Deserializer, Serialize};
use strum::{Display, EnumString, VariantNames};
pub use xen::XenConfig;

/// A whole polyvisor configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which hypervisor the guest sees and which hypercalls it may make.
    #[serde(default)]
    pub hypervisor: HypervisorConfig,
    /// The virtual machine: memory, vCPUs, kernel, boot protocol.
    #[serde(default)]
    pub vm: VmConfig,
    /// How the host traps hypercalls.
    #[serde(default)]
    pub host: HostConfig,
    /// bhyve personality options.
    #[serde(default)]
    pub bhyve: BhyveConfig,
    /// KVM personality options.
    #[serde(default)]
    pub kvm: KvmConfig,
    /// Hyper-V personality options.
    #[serde(default)]
    pub hyperv: HypervConfig,
    /// Xen personality options.
    #[serde(default)]
    pub xen: XenConfig,
}

/// `[hypervisor]`: the hypervisor-mode tunable and the hypercall policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HypervisorConfig {
    /// The personality: "bhyve", "kvm", "hyperv" or "xen".
    #[serde(default = "default_mode")]
    pub mode: HypervisorMode,
    /// The global switch. Hypercalls are an attack surface: off unless turned on.
    #[serde(default)]
    pub hypercalls_enabled: bool,
    /// When present, only these hypercalls (names or numbers) are permitted.
    #[serde(default)]
    pub allow: Option<Vec<Selector>>,
    /// These hypercalls (names or numbers) are refused.
    #[serde(default)]
    pub deny: Vec<Selector>,
}

fn default_mode() -> HypervisorMode {
    HypervisorMode::Bhyve
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            mode: default_mode(),
            hypercalls_enabled: false,
            allow: None,
            deny: Vec::new(),
        }
    }
}

impl HypervisorConfig {
    /// The engine policy this section describes.
    pub fn policy(&self) -> Policy {
        let conv = |list: &[Selector]| list.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
        Policy {
            hypercalls_enabled: self.hypercalls_enabled,
            allow: self.allow.as_deref().map(conv),
            deny: conv(&self.deny),
        }
    }
}

/// A hypercall named in an allow or deny list: a name string or a non-negative number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "SelectorRepr")]
pub struct Selector(pub CallSelector);

#[derive(Serialize)]
#[serde(untagged)]
enum SelectorRepr {
    Number(u64),
    Name(String),
}

impl From<Selector> for SelectorRepr {
    fn from(s: Selector) -> Self {
        match s.0 {
            CallSelector::Name(n) => SelectorRepr::Name(n),
            CallSelector::Number(n) => SelectorRepr::Number(n),
        }
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Validated per element, so an error points at the element itself.
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) if !s.trim().is_empty() => Ok(Selector(CallSelector::Name(s))),
            toml::Value::Integer(n) if n >= 0 => {
                Ok(Selector(CallSelector::Number(n.unsigned_abs())))
            }
            other => Err(D::Error::custom(format!(
                "a hypercall is named by its name (a non-empty string) or its number (an integer >= 0), not {other}"
            ))),
        }
    }
}

/// How the kernel is entered.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Display,
    EnumString,
    VariantNames,
    Deserialize,
    Serialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the image has a PVH entry note, else ELF64 direct.
    #[default]
    Auto,
    /// 64-bit ELF entry in long mode set up by the VMM.
    Elf64,
    /// Xen's PVH: 32-bit entry from the XEN_ELFNOTE_PHYS32_ENTRY note.
    Pvh,
}

/// `[vm]`: the machine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    #[serde(default = "default_memory", deserialize_with = "range::memory_mib")]
    pub memory_mib: u32,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus", deserialize_with = "range::vcpus")]
    pub vcpus: u32,
    /// The kernel image (ELF). Relative paths are relative to the config file. Absent: the
    /// built-in default guest.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// How to enter the kernel.
    #[serde(default)]
    pub boot: BootProtocol,
    /// The kernel command line.
    #[serde(default, deserialize_with = "range::cmdline")]
    pub cmdline: String,
    /// Where the VM console goes: absent for standard output, or a file path.
    #[serde(default)]
    pub console: Option<PathBuf>,
    /// Host input for the guest's console (Xen's `CONSOLEIO_read`): a file, a FIFO, or `-`
    /// for standard input. Absent: the guest reads nothing.
    #[serde(default)]
    pub console_input: Option<PathBuf>,
    /// Seconds the VM may run before it is stopped (0: no limit).
    #[serde(default, deserialize_with = "range::timeout")]
    pub timeout_secs: u32,
    /// Guest console output passed on, in KiB (0: no limit); past it the output is dropped,
    /// with a note, so a guest flooding its console cannot fill the host's disk or terminal.
    #[serde(default = "default_console_limit", deserialize_with = "range::console_limit")]
    pub console_limit_kib: u32,
}

fn default_memory() -> u32 {
    128
}
fn default_vcpus() -> u32 {
    1
}
fn default_console_limit() -> u32 {
    16 * 1024
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: default_memory(),
            vcpus: default_vcpus(),
            kernel: None,
            boot: BootProtocol::Auto,
            cmdline: String::new(),
            console: None,
            console_input: None,
            timeout_secs: 0,
            console_limit_kib: default_console_limit(),
        }
    }
}

/// Which trap turns guest hypercall instructions into exits the VMM handles.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Display,
    EnumString,
    VariantNames,
    Deserialize,
    Serialize,
)]
#[strum(serialize_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
pub enum TrapStrategyChoice {
    /// Probe the host at start-up and take the best strategy it offers.
    #[default]
    Auto,
    /// KVM's Xen hypercall intercept (VMX/SVM hosts with CONFIG_KVM_XEN).
    XenIntercept,
    /// Guest code in read-only memslots; the emulator's patch write is the trap.
    WriteProtect,
    /// No trap: personalities that need one are refused.
    None,
}

/// Which hypercall instruction the guest may use.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Display,
    EnumString,
    VariantNames,
    Deserialize,
    Serialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum InstructionChoice {
    /// Both VMCALL and VMMCALL are accepted; hypercall pages use the host CPU's own.
    #[default]
    Auto,
    /// Only VMCALL; VMMCALL raises #UD as on Intel hardware.
    Vmcall,
    /// Only VMMCALL; VMCALL raises #UD as on AMD hardware.
    Vmmcall,
}

/// `[host]`: trapping.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The trap strategy.
    #[serde(default)]
    pub trap: TrapStrategyChoice,
    /// The hypercall instruction(s) accepted.
    #[serde(default)]
    pub instruction: InstructionChoice,
}

/// A parsed config together with where it came from, so relative paths resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
    /// The text it was parsed from, so later checks can point at a value.
    pub source: String,
}

impl LoadedConfig {
    /// Parses TOML text that did not come from a file.
    pub fn parse_str(text: &str) -> Result<Self, ConfigError> {
        Ok(LoadedConfig {
            config: Config::parse(text, "<config>")?,
            path: None,
            source: text.to_string(),
        })
    }

    /// The built-in default configuration (no file).
    pub fn builtin() -> Self {
        LoadedConfig { config: Config::default(), path: None, source: String::new() }
    }

    fn origin(&self) -> String {
        self.path.as_deref().map_or_else(|| "<config>".to_string(), |p| p.display().to_string())
    }

    /// An error located at the value under `keys` (and array element `index`), for checks
    /// that need more than one value or the host. Falls back to the nearest enclosing key
    /// that exists, then to the start of the file.
    pub fn error_at(
        &self,
        keys: &[&str],
        index: Option<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = locate::locate(&self.source, keys, index).unwrap_or((1, 1));
        ConfigError::Invalid { origin: self.origin(), line, column, message: message.into() }
    }

    /// Resolves a path from the config relative to the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match self.path.as_deref().and_then(Path::parent) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| ConfigError::from_toml(origin, text, &e))
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let config = Config::parse(&text, &path.display().to_string())?;
        Ok(LoadedConfig { config, path: Some(path.to_path_buf()), source: text })
    }

    /// The configuration as commented-free TOML (what `polyvisor config show` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
