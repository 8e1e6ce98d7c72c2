use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use strum::{Display, EnumString, VariantNames};

/// What CPUID 0x40000001 shows a bhyve guest.
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
pub enum BhyveLeaf {
    /// The review's meaning: EAX non-zero when hypercalls are enabled.
    #[default]
    Review,
    /// Stock FreeBSD 15: EAX bit 0 is EXT_DEST_ID; no hypercalls (all refused).
    Freebsd15,
}

/// `[bhyve]`: options of the bhyve personality.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BhyveConfig {
    /// Which meaning CPUID 0x40000001 has.
    #[serde(default)]
    pub cpuid_leaf: BhyveLeaf,
    /// Where guest-fired DTrace probe events go, as JSON lines; absent: the log. Relative
    /// paths are relative to the config file.
    #[serde(default, deserialize_with = "probe_log")]
    pub probe_log: Option<PathBuf>,
}

/// A probe log path: present means a file, so it must name one.
fn probe_log<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    crate::range::file_path(d, "probe_log", "to send probe events to the log")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn defaults_are_the_review_leaf_and_the_log() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.bhyve.cpuid_leaf, BhyveLeaf::Review);
        assert_eq!(c.bhyve.probe_log, None);
    }

    #[test]
    fn bhyve_section_parses_and_round_trips() {
        let text = "[bhyve]\ncpuid_leaf = \"freebsd15\"\nprobe_log = \"probes.jsonl\"\n";
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.bhyve.cpuid_leaf, BhyveLeaf::Freebsd15);
        assert_eq!(c.bhyve.probe_log, Some(PathBuf::from("probes.jsonl")));
        assert_eq!(Config::parse(&c.to_toml(), "round-trip").unwrap(), c);
    }
}
