use std::path::PathBuf;

use serde::{Deserialize, Serialize};
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
    /// Where guest-fired DTrace probe events go, as JSON lines; absent: the log.
    #[serde(default)]
    pub probe_log: Option<PathBuf>,
}
