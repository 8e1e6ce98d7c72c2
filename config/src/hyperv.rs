use std::path::PathBuf;

use serde::de::Error;
use serde::{Deserialize, Deserializer, Serialize};
use strum::{Display, EnumString, VariantNames};

/// What a guest write of 1 to HV_X64_MSR_RESET does.
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
pub enum ResetAction {
    /// End the VM with the reboot status.
    #[default]
    Exit,
    /// Reset the VM and boot it again.
    Reset,
}

/// `[hyperv]`: options of the Hyper-V personality.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HypervConfig {
    /// The 12-byte vendor id in CPUID 0x40000000 EBX:ECX:EDX.
    #[serde(default = "default_vendor", deserialize_with = "vendor_id")]
    pub vendor_id: String,
    /// Build number (CPUID 0x40000002 EAX).
    #[serde(default = "default_build")]
    pub build: u32,
    /// Major version (CPUID 0x40000002 EBX bits 31:16).
    #[serde(default = "default_major")]
    pub version_major: u16,
    /// Minor version (CPUID 0x40000002 EBX bits 15:0).
    #[serde(default)]
    pub version_minor: u16,
    /// Partition privilege mask (CPUID 0x40000003 EBX:EAX); absent: everything backed.
    #[serde(default)]
    pub privileges: Option<u64>,
    /// Feature bits in CPUID 0x40000003 EDX; absent: everything backed.
    #[serde(default)]
    pub features: Option<u32>,
    /// Implementation recommendations in CPUID 0x40000004 EAX; absent: everything backed.
    #[serde(default)]
    pub recommendations: Option<u32>,
    /// Spinlock retries before NotifyLongSpinWait (0xFFFFFFFF: never notify).
    #[serde(default = "default_spin")]
    pub spinlock_retries: u32,
    /// What HV_X64_MSR_RESET does.
    #[serde(default)]
    pub reset: ResetAction,
    /// The host side of the guest debug channel, guest to host: the bytes the guest sends
    /// with HvCallPostDebugData are appended to this file (created if missing). Setting it
    /// makes the Debugging privilege available. Relative paths are relative to the config
    /// file.
    #[serde(default, deserialize_with = "debug_path")]
    pub debug_output: Option<PathBuf>,
    /// The host side of the guest debug channel, host to guest: HvCallRetrieveDebugData hands
    /// out this file's bytes in order, each once, never waiting (a file that grows, or a
    /// FIFO, feeds the guest while it runs). Absent: the guest never receives data.
    #[serde(default, deserialize_with = "debug_path")]
    pub debug_input: Option<PathBuf>,
}

/// A debug channel path: present means a file, so it must name one.
fn debug_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    crate::range::file_path(d, "a debug channel path", "for no channel")
}

fn default_vendor() -> String {
    "Microsoft Hv".to_string()
}
fn default_build() -> u32 {
    0x3839
}
fn default_major() -> u16 {
    10
}
fn default_spin() -> u32 {
    0xfff
}

fn vendor_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.len() > 12 || !s.is_ascii() {
        return Err(D::Error::custom(format!(
            "vendor_id must be 1 to 12 ASCII characters (padded with spaces to 12), not {s:?}"
        )));
    }
    Ok(s)
}

impl Default for HypervConfig {
    fn default() -> Self {
        HypervConfig {
            vendor_id: default_vendor(),
            build: default_build(),
            version_major: default_major(),
            version_minor: 0,
            privileges: None,
            features: None,
            recommendations: None,
            spinlock_retries: default_spin(),
            reset: ResetAction::Exit,
            debug_output: None,
            debug_input: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn no_debug_channel_by_default() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!((c.hyperv.debug_output, c.hyperv.debug_input), (None, None));
    }

    #[test]
    fn debug_channel_paths_parse_and_round_trip() {
        let text = "[hyperv]\ndebug_output = \"kd-out.bin\"\ndebug_input = \"kd-in.bin\"\n";
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.hyperv.debug_output, Some(PathBuf::from("kd-out.bin")));
        assert_eq!(c.hyperv.debug_input, Some(PathBuf::from("kd-in.bin")));
        assert_eq!(Config::parse(&c.to_toml(), "round-trip").unwrap(), c);
    }

    #[test]
    fn empty_debug_paths_are_refused_where_they_are() {
        for (text, column) in
            [("[hyperv]\ndebug_output = \" \"\n", 16), ("[hyperv]\ndebug_input = \"\"\n", 15)]
        {
            match Config::parse(text, "t.toml") {
                Err(crate::ConfigError::Invalid { line, column: c, message, .. }) => {
                    assert_eq!((line, c), (2, column), "{message}");
                    assert!(message.contains("must name a file"), "{message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
