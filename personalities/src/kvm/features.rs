//! Which `KVM_FEATURE_*` bits of CPUID 0x40000001 EAX polyvisor can back, and the choice of
//! the advertised set from `[kvm] features`.
//!
//! Every bit is decided here, once, with the reason when it cannot be had. A bit is
//! advertised only when the guest gets exactly what the bit promises (`cpuid.rst`: "Before
//! enabling a particular paravirtualization, the appropriate feature bit should be checked").

use polyvisor_config::KvmFeature;
use strum::IntoEnumIterator;

use super::abi;
use crate::HostFacts;

/// The advertised feature bits: CPUID 0x40000001 EAX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeatureSet(u32);

impl FeatureSet {
    /// No features.
    pub const fn empty() -> Self {
        FeatureSet(0)
    }

    /// The set holding exactly these features.
    pub fn of(features: &[KvmFeature]) -> Self {
        FeatureSet(features.iter().fold(0, |bits, f| bits | (1 << f.bit())))
    }

    /// Whether `feature` is advertised.
    pub const fn has(self, feature: KvmFeature) -> bool {
        self.0 & (1 << feature.bit()) != 0
    }

    /// The bits as CPUID 0x40000001 EAX carries them.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The advertised features, in bit order.
    pub fn iter(self) -> impl Iterator<Item = KvmFeature> {
        KvmFeature::iter().filter(move |f| self.has(*f))
    }
}

/// The header's name of a feature: `KVM_FEATURE_` and the name in capitals.
pub fn spec_name(feature: KvmFeature) -> String {
    format!("KVM_FEATURE_{}", feature.to_string().to_ascii_uppercase())
}

/// The feature with this bit of CPUID 0x40000001 EAX, if any.
pub fn by_bit(bit: u32) -> Option<KvmFeature> {
    KvmFeature::iter().find(|f| f.bit() == bit)
}

/// What serves a feature here, in a few words.
pub fn served_by(feature: KvmFeature) -> &'static str {
    match feature {
        KvmFeature::Clocksource => "kvmclock on MSRs 0x11/0x12",
        KvmFeature::Clocksource2 => "kvmclock on MSRs 0x4b564d00/0x4b564d01",
        KvmFeature::ClocksourceStableBit => "PVCLOCK_TSC_STABLE_BIT in kvmclock pages is valid",
        KvmFeature::NopIoDelay => "no I/O delays needed",
        KvmFeature::PollControl => "MSR_KVM_POLL_CONTROL (0x4b564d05)",
        KvmFeature::PvUnhalt => "KVM_HC_KICK_CPU",
        KvmFeature::PvSendIpi => "KVM_HC_SEND_IPI",
        KvmFeature::PvSchedYield => "KVM_HC_SCHED_YIELD",
        KvmFeature::HcMapGpaRange => "KVM_HC_MAP_GPA_RANGE",
        _ => "not served by polyvisor",
    }
}

/// What the choice of features depends on besides the configuration.
pub(super) struct Backing<'a> {
    /// The host's TSC facts (kvmclock).
    pub host: &'a HostFacts,
    /// Whether the global hypercall switch is on.
    pub hypercalls_enabled: bool,
    /// Whether the policy lets a given hypercall number through.
    pub permitted: &'a dyn Fn(u64) -> bool,
}

impl Backing<'_> {
    /// `Ok` when polyvisor backs `feature` here, else why not.
    pub fn check(&self, feature: KvmFeature) -> Result<(), String> {
        match feature {
            KvmFeature::Clocksource
            | KvmFeature::Clocksource2
            | KvmFeature::ClocksourceStableBit => self.kvmclock(),
            // The guest stops writing port 0x80 for I/O delays; nothing to serve.
            KvmFeature::NopIoDelay => Ok(()),
            // The MSR is served (`msr.rst`); host-side halt polling is a hint polyvisor is
            // free to ignore, and it never polls.
            KvmFeature::PollControl => Ok(()),
            KvmFeature::PvUnhalt => self.call(abi::KVM_HC_KICK_CPU, "KVM_HC_KICK_CPU"),
            KvmFeature::PvSendIpi => self.call(abi::KVM_HC_SEND_IPI, "KVM_HC_SEND_IPI"),
            KvmFeature::PvSchedYield => self.call(abi::KVM_HC_SCHED_YIELD, "KVM_HC_SCHED_YIELD"),
            KvmFeature::HcMapGpaRange => {
                self.call(abi::KVM_HC_MAP_GPA_RANGE, "KVM_HC_MAP_GPA_RANGE")
            }
            KvmFeature::AsyncPf | KvmFeature::AsyncPfVmexit | KvmFeature::AsyncPfInt => {
                Err("asynchronous page faults need the host's page-fault path to park and resume \
                 guest tasks; polyvisor does not provide them"
                    .into())
            }
            KvmFeature::StealTime => {
                Err("steal time needs the host scheduler's run-delay accounting per vCPU; \
                 polyvisor does not provide it"
                    .into())
            }
            KvmFeature::PvEoi => {
                Err("PV EOI needs the local APIC to consult the guest's EOI flag on every \
                 interrupt; polyvisor's interrupt path does not"
                    .into())
            }
            KvmFeature::PvTlbFlush => {
                Err("PV TLB flush needs steal time's `preempted` flag; polyvisor does not provide \
                 steal time"
                    .into())
            }
            KvmFeature::MsiExtDestId => {
                Err("the VMM's interrupt path does not decode the extended destination ID in MSI \
                 address bits 11:5"
                    .into())
            }
            KvmFeature::MigrationControl => {
                Err("MSR_KVM_MIGRATION_CONTROL is for migrating guests with encrypted memory; \
                 polyvisor neither migrates nor encrypts guest memory"
                    .into())
            }
        }
    }

    fn kvmclock(&self) -> Result<(), String> {
        match (self.host.tsc_khz, self.host.stable_tsc) {
            (Some(khz), true) if khz > 0 => Ok(()),
            (Some(khz), _) if khz > 0 => {
                Err("kvmclock computes time from TSC deltas and this host's TSC is not constant \
                 and invariant"
                    .into())
            }
            _ => {
                Err("kvmclock needs the guest TSC frequency and this host does not report it"
                    .into())
            }
        }
    }

    fn call(&self, number: u64, name: &str) -> Result<(), String> {
        if !self.hypercalls_enabled {
            Err(format!(
                "it is served by the hypercall {name}, and [hypervisor] hypercalls_enabled is \
                 false"
            ))
        } else if !(self.permitted)(number) {
            Err(format!(
                "it is served by the hypercall {name}, which [hypervisor] allow/deny does not \
                 permit"
            ))
        } else {
            Ok(())
        }
    }
}

/// The features to advertise: the configured list when there is one (every entry must be
/// backed), else every feature polyvisor backs here.
pub(super) fn select(
    configured: Option<&[KvmFeature]>,
    backing: &Backing<'_>,
) -> Result<FeatureSet, String> {
    match configured {
        None => Ok(FeatureSet::of(
            &KvmFeature::iter().filter(|f| backing.check(*f).is_ok()).collect::<Vec<_>>(),
        )),
        Some(list) => {
            let refused: Vec<String> = list
                .iter()
                .filter_map(|f| backing.check(*f).err().map(|why| format!("{f}: {why}")))
                .collect();
            if refused.is_empty() {
                Ok(FeatureSet::of(list))
            } else {
                Err(format!(
                    "features asks for what polyvisor cannot back here: {}",
                    refused.join("; ")
                ))
            }
        }
    }
}
