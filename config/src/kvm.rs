use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use strum::{Display, EnumIter, EnumString, VariantNames};

/// A KVM paravirtual feature bit of CPUID 0x40000001 EAX (Linux's KVM_FEATURE_* names).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Display, EnumString, EnumIter, VariantNames, Serialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // the names are the spec's
pub enum KvmFeature {
    Clocksource,
    NopIoDelay,
    Clocksource2,
    AsyncPf,
    StealTime,
    PvEoi,
    PvUnhalt,
    PvTlbFlush,
    AsyncPfVmexit,
    PvSendIpi,
    PollControl,
    PvSchedYield,
    AsyncPfInt,
    MsiExtDestId,
    HcMapGpaRange,
    MigrationControl,
    ClocksourceStableBit,
}

impl KvmFeature {
    /// The bit number in CPUID 0x40000001 EAX.
    pub const fn bit(self) -> u32 {
        match self {
            KvmFeature::Clocksource => 0,
            KvmFeature::NopIoDelay => 1,
            KvmFeature::Clocksource2 => 3,
            KvmFeature::AsyncPf => 4,
            KvmFeature::StealTime => 5,
            KvmFeature::PvEoi => 6,
            KvmFeature::PvUnhalt => 7,
            KvmFeature::PvTlbFlush => 9,
            KvmFeature::AsyncPfVmexit => 10,
            KvmFeature::PvSendIpi => 11,
            KvmFeature::PollControl => 12,
            KvmFeature::PvSchedYield => 13,
            KvmFeature::AsyncPfInt => 14,
            KvmFeature::MsiExtDestId => 15,
            KvmFeature::HcMapGpaRange => 16,
            KvmFeature::MigrationControl => 17,
            KvmFeature::ClocksourceStableBit => 24,
        }
    }
}

/// A feature is named by its `KVM_FEATURE_*` name in snake case; anything else (a bit
/// number, say) is refused with the list of names.
impl<'de> Deserialize<'de> for KvmFeature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = KvmFeature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a KVM feature name, one of {}", KvmFeature::VARIANTS.join(", "))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KvmFeature, E> {
                KvmFeature::from_str(v).map_err(|_| E::unknown_variant(v, KvmFeature::VARIANTS))
            }
        }
        d.deserialize_any(Name)
    }
}

/// `[kvm]`: options of the KVM personality.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvmConfig {
    /// Feature bits to advertise; absent: every feature polyvisor backs on this host.
    #[serde(default)]
    pub features: Option<Vec<KvmFeature>>,
    /// KVM_HINTS_REALTIME (CPUID 0x40000001 EDX bit 0).
    #[serde(default)]
    pub hints_realtime: bool,
    /// How many distinct ranges the KVM_HC_MAP_GPA_RANGE attribute map of one VM may hold;
    /// a declaration that would need more is refused with -KVM_E2BIG.
    #[serde(default = "default_max_gpa_ranges", deserialize_with = "max_gpa_ranges")]
    pub max_gpa_ranges: u32,
}

/// The default bound of the KVM_HC_MAP_GPA_RANGE map: room for a fragmented guest, a few
/// hundred KiB of host memory at most.
pub const DEFAULT_MAX_GPA_RANGES: u32 = 4096;
/// The smallest and largest accepted `max_gpa_ranges`.
pub const MAX_GPA_RANGES_LIMITS: (u32, u32) = (1, 1 << 20);

fn default_max_gpa_ranges() -> u32 {
    DEFAULT_MAX_GPA_RANGES
}

fn max_gpa_ranges<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    let v = i64::deserialize(d)?;
    let (min, max) = MAX_GPA_RANGES_LIMITS;
    u32::try_from(v).ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
        D::Error::custom(format!("max_gpa_ranges must be between {min} and {max}, not {v}"))
    })
}

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig { features: None, hints_realtime: false, max_gpa_ranges: DEFAULT_MAX_GPA_RANGES }
    }
}
