//! CPUID 0x40000000..0x40000006 and the masks behind them: which privileges, features and
//! recommendations this implementation backs, and the check that refuses a configuration asking
//! for one it does not.

use polyvisor_config::{Config, ResetAction};
use polyvisor_core::CpuidLeaf;

use super::abi::*;
use crate::{BuildError, HostFacts};

/// The highest hypervisor leaf shown (TLFS: at least 0x40000005; Linux's ms_hyperv_platform()
/// refuses Hyper-V outside 0x40000005..0x4000FFFF).
pub const MAX_LEAF: u32 = HYPERV_CPUID_HARDWARE_FEATURES;

/// A TSC slower than this cannot be described by the reference TSC page: its scale
/// (2^64 * 10^7 / Hz) would not fit in 64 bits.
pub const MIN_TSC_KHZ_FOR_PAGE: u64 = 10_000;

/// What the host and configuration make possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backing {
    /// The reference TSC page can be published: TSC frequency known, above 10 MHz, stable.
    pub reference_tsc: bool,
    /// The TSC frequency is known, so HV_X64_MSR_TSC_FREQUENCY can answer.
    pub frequencies: bool,
    /// HV_X64_MSR_RESET has an action (only `reset = "exit"` today).
    pub reset: bool,
    /// The debug channel has a host side (`[hyperv] debug_output`).
    pub debug_channel: bool,
}

impl Backing {
    /// Decides the backing from host facts and the configuration.
    pub fn new(host: &HostFacts, config: &Config) -> Self {
        Backing {
            reference_tsc: host.stable_tsc
                && host.tsc_khz.is_some_and(|k| k > MIN_TSC_KHZ_FOR_PAGE),
            frequencies: host.tsc_khz.is_some_and(|k| k > 0),
            reset: config.hyperv.reset == ResetAction::Exit,
            debug_channel: config.hyperv.debug_output.is_some(),
        }
    }

    /// Privileges implemented here and shown by default.
    pub fn default_privileges(self) -> u64 {
        let mut p = HV_MSR_VP_RUNTIME_AVAILABLE
            | HV_MSR_TIME_REF_COUNT_AVAILABLE
            | HV_MSR_HYPERCALL_AVAILABLE
            | HV_MSR_VP_INDEX_AVAILABLE
            | HV_ENABLE_EXTENDED_HYPERCALLS;
        if self.reset {
            p |= HV_MSR_RESET_AVAILABLE;
        }
        if self.reference_tsc {
            p |= HV_MSR_REFERENCE_TSC_AVAILABLE;
        }
        if self.frequencies {
            p |= HV_ACCESS_FREQUENCY_MSRS;
        }
        p
    }

    /// Privileges a configuration may ask for: the default ones plus those whose calls have an
    /// honest answer here without being useful by default (PostMessages and SignalEvents answer
    /// "no SynIC"; Debugging needs the debug channel's host side, `[hyperv] debug_output`).
    pub fn allowed_privileges(self) -> u64 {
        let mut p = self.default_privileges() | HV_POST_MESSAGES | HV_SIGNAL_EVENTS;
        if self.debug_channel {
            p |= HV_DEBUGGING;
        }
        p
    }

    /// Features implemented here and shown by default.
    pub fn default_features(self) -> u32 {
        let mut f = HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE | HV_X64_HYPERCALL_MSR_LOCK_AVAILABLE;
        if self.frequencies {
            f |= HV_FEATURE_FREQUENCY_MSRS_AVAILABLE;
        }
        f
    }

    /// Features a configuration may ask for. XMM input needs the VMM's
    /// `Platform::read_xmm`; the extended GVA range format is accepted because every flush
    /// here is a full flush; guest debugging goes with the Debugging privilege and so needs
    /// the debug channel.
    pub fn allowed_features(self) -> u32 {
        let mut f = self.default_features()
            | HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE
            | HV_FEATURE_EXT_GVA_RANGES_FLUSH;
        if self.debug_channel {
            f |= HV_X64_GUEST_DEBUGGING_AVAILABLE;
        }
        f
    }

    /// Recommendations shown by default: the IPI hypercalls and the Ex processor sets are
    /// served through the VMM's required `Platform::interrupt`; relaxed timing is simply true
    /// of a VM whose vCPUs are host threads.
    pub fn default_recommendations(self) -> u32 {
        HV_X64_RELAXED_TIMING_RECOMMENDED
            | HV_X64_CLUSTER_IPI_RECOMMENDED
            | HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED
    }

    /// Recommendations a configuration may ask for: the defaults plus the remote TLB flush
    /// hypercalls, which need the VMM's optional `Platform::flush_guest_tlb` (without it they
    /// answer HV_STATUS_OPERATION_DENIED, so they are not recommended by default).
    pub fn allowed_recommendations(self) -> u32 {
        self.default_recommendations() | HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED
    }
}

/// Names of privilege bits (TLFS hv_partition_privilege_mask), for error messages.
fn privilege_name(bit: u32) -> &'static str {
    match bit {
        0 => "AccessVpRunTimeReg",
        1 => "AccessPartitionReferenceCounter",
        2 => "AccessSynicRegs",
        3 => "AccessSyntheticTimerRegs",
        4 => "AccessIntrCtrlRegs",
        5 => "AccessHypercallMsrs",
        6 => "AccessVpIndex",
        7 => "AccessResetReg",
        8 => "AccessStatsReg",
        9 => "AccessPartitionReferenceTsc",
        10 => "AccessGuestIdleReg",
        11 => "AccessFrequencyRegs",
        12 => "AccessDebugRegs",
        13 => "AccessReenlightenmentControls",
        15 => "AccessTscInvariantControls",
        32 => "CreatePartitions",
        33 => "AccessPartitionId",
        34 => "AccessMemoryPool",
        35 => "AdjustMessageBuffers",
        36 => "PostMessages",
        37 => "SignalEvents",
        38 => "CreatePort",
        39 => "ConnectPort",
        40 => "AccessStats",
        43 => "Debugging",
        44 => "CpuManagement",
        48 => "AccessVsm",
        49 => "AccessVpRegisters",
        52 => "EnableExtendedHypercalls",
        53 => "StartVirtualProcessor",
        _ => "reserved",
    }
}

/// Names of CPUID 0x40000003 EDX bits (TLFS "Hypervisor Feature Identification").
fn feature_name(bit: u32) -> &'static str {
    match bit {
        0 => "MWAIT (deprecated)",
        1 => "guest debugging",
        2 => "performance monitor",
        3 => "CPU dynamic partitioning",
        4 => "XMM hypercall input",
        5 => "guest idle state",
        6 => "hypervisor sleep state",
        7 => "NUMA distance query",
        8 => "timer frequency MSRs",
        9 => "synthetic machine checks",
        10 => "guest crash MSRs",
        11 => "debug MSRs",
        12 => "NPIEP",
        13 => "DisableHypervisorAvailable",
        14 => "ExtendedGvaRangesForFlushVirtualAddressListAvailable",
        15 => "XMM hypercall output",
        17 => "SintPollingModeAvailable",
        18 => "HypercallMsrLockAvailable",
        19 => "direct synthetic timers",
        _ => "reserved",
    }
}

/// Names of CPUID 0x40000004 EAX bits (TLFS "Implementation Recommendations").
fn recommendation_name(bit: u32) -> &'static str {
    match bit {
        0 => "address space switch hypercall",
        1 => "local TLB flush hypercall",
        2 => "remote TLB flush hypercall",
        3 => "APIC access MSRs",
        4 => "reset MSR",
        5 => "relaxed timing",
        6 => "DMA remapping",
        7 => "interrupt remapping",
        9 => "deprecating AutoEOI",
        10 => "SyntheticClusterIpi",
        11 => "ExProcessorMasks",
        12 => "nested hypervisor",
        14 => "enlightened VMCS",
        _ => "reserved",
    }
}

/// Why a privilege the implementation knows cannot be had on this host.
fn privilege_reason(bit: u32, backing: Backing) -> &'static str {
    match 1u64 << bit {
        HV_MSR_REFERENCE_TSC_AVAILABLE if !backing.reference_tsc => {
            "the host TSC frequency is unknown, below 10 MHz or not stable"
        }
        HV_ACCESS_FREQUENCY_MSRS if !backing.frequencies => "the host TSC frequency is unknown",
        HV_MSR_RESET_AVAILABLE if !backing.reset => {
            "HV_X64_MSR_RESET has no action with reset = \"reset\""
        }
        HV_DEBUGGING if !backing.debug_channel => {
            "the debug channel has no host side: set [hyperv] debug_output"
        }
        _ => "this implementation does not provide it",
    }
}

/// Refuses the first requested bit outside `allowed`.
fn check_mask(
    key: &str,
    requested: u64,
    allowed: u64,
    name: fn(u32) -> &'static str,
    reason: &dyn Fn(u32) -> &'static str,
) -> Result<(), BuildError> {
    let extra = requested & !allowed;
    if extra == 0 {
        return Ok(());
    }
    let bit = extra.trailing_zeros();
    Err(BuildError::Unbacked {
        section: "hyperv",
        message: format!(
            "{key} = {requested:#x} asks for bit {bit} ({}), which is not backed: {}; \
             allowed bits here: {allowed:#x}",
            name(bit),
            reason(bit)
        ),
    })
}

/// The identity a guest sees in CPUID, resolved from configuration and host at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The 12-byte vendor id, space padded.
    pub vendor: [u8; 12],
    /// Build number (0x40000002 EAX).
    pub build: u32,
    /// Major << 16 | minor (0x40000002 EBX).
    pub version: u32,
    /// HV_PARTITION_PRIVILEGE_MASK (0x40000003 EBX:EAX).
    pub privileges: u64,
    /// 0x40000003 EDX.
    pub features: u32,
    /// 0x40000004 EAX.
    pub recommendations: u32,
    /// 0x40000004 EBX.
    pub spinlock_retries: u32,
    /// 0x40000005 EAX: the configured vCPU count.
    pub max_vcpus: u32,
}

impl Identity {
    /// Resolves and checks the identity.
    pub fn new(config: &Config, backing: Backing) -> Result<Self, BuildError> {
        let hv = &config.hyperv;
        let privileges = hv.privileges.unwrap_or(backing.default_privileges());
        check_mask(
            "privileges",
            privileges,
            backing.allowed_privileges(),
            privilege_name,
            &|bit| privilege_reason(bit, backing),
        )?;
        let features = hv.features.unwrap_or(backing.default_features());
        check_mask(
            "features",
            u64::from(features),
            u64::from(backing.allowed_features()),
            feature_name,
            &|bit| match 1u32 << bit {
                HV_FEATURE_FREQUENCY_MSRS_AVAILABLE => "the host TSC frequency is unknown",
                HV_X64_GUEST_DEBUGGING_AVAILABLE => {
                    "the debug channel has no host side: set [hyperv] debug_output"
                }
                _ => "this implementation does not provide it",
            },
        )?;
        let recommendations = hv.recommendations.unwrap_or(backing.default_recommendations());
        check_mask(
            "recommendations",
            u64::from(recommendations),
            u64::from(backing.allowed_recommendations()),
            recommendation_name,
            &|_| "this implementation does not provide it",
        )?;
        let mut vendor = [b' '; 12];
        for (dst, src) in vendor.iter_mut().zip(hv.vendor_id.bytes()) {
            *dst = src;
        }
        Ok(Identity {
            vendor,
            build: hv.build,
            version: u32::from(hv.version_major) << 16 | u32::from(hv.version_minor),
            privileges,
            features,
            recommendations,
            spinlock_retries: hv.spinlock_retries,
            max_vcpus: config.vm.vcpus,
        })
    }

    /// Whether a privilege bit is shown.
    pub fn has_privilege(&self, bit: u64) -> bool {
        self.privileges & bit == bit
    }

    /// Whether a feature bit is shown.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.features & bit == bit
    }

    /// Whether a recommendation bit is shown.
    pub fn recommends(&self, bit: u32) -> bool {
        self.recommendations & bit == bit
    }

    /// The leaves 0x40000000..=0x40000006.
    pub fn leaves(&self) -> Vec<CpuidLeaf> {
        // Truncation to 32-bit halves is the ABI: EAX holds bits 31:0, EBX bits 63:32.
        let (priv_lo, priv_hi) = (self.privileges as u32, (self.privileges >> 32) as u32);
        vec![
            CpuidLeaf::signature(HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS, MAX_LEAF, &self.vendor),
            CpuidLeaf::new(HYPERV_CPUID_INTERFACE, HV_INTERFACE_SIGNATURE, 0, 0, 0),
            // ECX service pack 0, EDX service branch/number 0.
            CpuidLeaf::new(HYPERV_CPUID_VERSION, self.build, self.version, 0, 0),
            CpuidLeaf::new(HYPERV_CPUID_FEATURES, priv_lo, priv_hi, 0, self.features),
            // ECX 6:0 ImplementedPhysicalAddressBits: 0 = not reported (the VMM owns
            // CPUID 0x80000008).
            CpuidLeaf::new(
                HYPERV_CPUID_ENLIGHTMENT_INFO,
                self.recommendations,
                self.spinlock_retries,
                0,
                0,
            ),
            // Max virtual processors = the VM's vCPUs; 0 = "not exposed" for the others.
            CpuidLeaf::new(HYPERV_CPUID_IMPLEMENT_LIMITS, self.max_vcpus, 0, 0, 0),
            // Hardware features in use on the host are not visible from here: none claimed.
            CpuidLeaf::new(HYPERV_CPUID_HARDWARE_FEATURES, 0, 0, 0, 0),
        ]
    }
}

/// The names of the set bits of `value`, bit `offset` first, by `name`.
fn set_bits(value: u64, offset: u32, width: u32, name: fn(u32) -> &'static str) -> Vec<String> {
    (0..width)
        .filter(|b| value >> b & 1 != 0)
        .map(|b| format!("bit {:2} {}", b, name(b + offset)))
        .collect()
}

/// What a leaf means, for `polyvisor cpuid`.
pub fn explain(leaf: &CpuidLeaf) -> Vec<String> {
    let mut lines = Vec::new();
    match leaf.function {
        HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS => lines.push(format!(
            "vendor \"{}\", highest leaf {:#010x}",
            String::from_utf8_lossy(&leaf.signature_bytes()),
            leaf.eax
        )),
        HYPERV_CPUID_INTERFACE => lines.push(if leaf.eax == HV_INTERFACE_SIGNATURE {
            "interface \"Hv#1\": the TLFS interface (GUEST_OS_ID, HYPERCALL, VP_INDEX MSRs)".into()
        } else {
            format!("interface {:#010x}", leaf.eax)
        }),
        HYPERV_CPUID_VERSION => lines.push(format!(
            "build {}, version {}.{}, service pack {}, branch {} number {}",
            leaf.eax,
            leaf.ebx >> 16,
            leaf.ebx & 0xffff,
            leaf.ecx,
            leaf.edx >> 24,
            leaf.edx & 0xff_ffff
        )),
        HYPERV_CPUID_FEATURES => {
            lines.extend(
                set_bits(leaf.eax.into(), 0, 32, privilege_name)
                    .into_iter()
                    .map(|l| format!("EAX {l}")),
            );
            lines.extend(
                set_bits(leaf.ebx.into(), 32, 32, privilege_name)
                    .into_iter()
                    .map(|l| format!("EBX {l}")),
            );
            lines.extend(
                set_bits(leaf.edx.into(), 0, 32, feature_name)
                    .into_iter()
                    .map(|l| format!("EDX {l}")),
            );
        }
        HYPERV_CPUID_ENLIGHTMENT_INFO => {
            lines.extend(
                set_bits(leaf.eax.into(), 0, 32, recommendation_name)
                    .into_iter()
                    .map(|l| format!("EAX {l}")),
            );
            lines.push(match leaf.ebx {
                u32::MAX => "spinlock retries: never notify".to_string(),
                n => format!("spinlock retries before HvCallNotifyLongSpinWait: {n}"),
            });
        }
        HYPERV_CPUID_IMPLEMENT_LIMITS => {
            lines.push(format!("at most {} virtual and {} logical processors", leaf.eax, leaf.ebx))
        }
        HYPERV_CPUID_HARDWARE_FEATURES => {
            lines.push(format!("hardware features in use: {:#x}", leaf.eax));
        }
        _ => {}
    }
    lines
}
