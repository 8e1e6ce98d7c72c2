use serde::{Deserialize, Serialize};
use strum::{Display, EnumIter, EnumString, VariantNames};

/// A KVM paravirtual feature bit of CPUID 0x40000001 EAX (Linux's KVM_FEATURE_* names).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Display,
    EnumString,
    EnumIter,
    VariantNames,
    Deserialize,
    Serialize,
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

/// `[kvm]`: options of the KVM personality.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvmConfig {
    /// Feature bits to advertise; absent: every feature polyvisor backs on this host.
    #[serde(default)]
    pub features: Option<Vec<KvmFeature>>,
    /// KVM_HINTS_REALTIME (CPUID 0x40000001 EDX bit 0).
    #[serde(default)]
    pub hints_realtime: bool,
}
