//! `host_check`: what this host's KVM offers, shown by capabilities and by a probe VM.

use std::fmt;
use std::time::Instant;

use kvm_ioctls::Kvm;
use polyvisor_config::{Config, TrapStrategyChoice};
use polyvisor_core::{HypercallInstruction, HypervisorMode};
use polyvisor_personalities::{BuildError, HostFacts};
use strum::IntoEnumIterator;

use crate::kvm as rawkvm;
use crate::trap::probe::{run_probe, CallFate, ProbeReport};
use crate::trap::TrapStrategy;

/// The KVM capabilities that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Caps {
    /// KVM_CAP_X86_USER_SPACE_MSR.
    pub user_space_msr: bool,
    /// KVM_CAP_X86_MSR_FILTER.
    pub msr_filter: bool,
    /// KVM_CAP_SYNC_REGS bitmap.
    pub sync_regs: u32,
    /// KVM_CAP_XEN_HVM bitmap.
    pub xen_hvm: u32,
    /// KVM_CAP_DISABLE_QUIRKS2 bitmap.
    pub disable_quirks2: u32,
    /// KVM_CAP_READONLY_MEM.
    pub readonly_mem: bool,
    /// KVM_CAP_NR_MEMSLOTS.
    pub memslots: u32,
}

impl Caps {
    /// Reads the capabilities from the system fd.
    pub fn read(kvm: &Kvm) -> Self {
        let c = |cap: u32| kvm.check_extension_raw(libc::c_ulong::from(cap)).max(0);
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        Caps {
            user_space_msr: c(rawkvm::KVM_CAP_X86_USER_SPACE_MSR) > 0,
            msr_filter: c(rawkvm::KVM_CAP_X86_MSR_FILTER) > 0,
            sync_regs: u(c(rawkvm::KVM_CAP_SYNC_REGS)),
            xen_hvm: u(c(rawkvm::KVM_CAP_XEN_HVM)),
            disable_quirks2: u(c(rawkvm::KVM_CAP_DISABLE_QUIRKS2)),
            readonly_mem: c(81) > 0,
            memslots: u(c(rawkvm::KVM_CAP_NR_MEMSLOTS)),
        }
    }

    /// Whether REGS and SREGS can travel in `kvm_run`.
    pub fn sync_regs_usable(&self) -> bool {
        let want = kvm_bindings::KVM_SYNC_X86_REGS | kvm_bindings::KVM_SYNC_X86_SREGS;
        self.sync_regs & want == want
    }

    /// Whether the Xen hypercall intercept exists.
    pub fn xen_intercept(&self) -> bool {
        self.xen_hvm & rawkvm::KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL != 0
    }
}

/// One personality's verdict on this host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PersonalityVerdict {
    /// The mode.
    pub mode: HypervisorMode,
    /// Whether it can run here with hypercalls enabled.
    pub runs: bool,
    /// Why or how.
    pub note: String,
}

/// What `host_check` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostReport {
    /// KVM_GET_API_VERSION.
    pub api_version: i32,
    /// Capabilities.
    pub caps: Caps,
    /// CPUID vendor string of the host.
    pub vendor: String,
    /// Why KVM could not be used at all, if it could not.
    pub kvm_error: Option<String>,
    /// The host CPU's native hypercall instruction (by vendor).
    pub vendor_instruction: &'static str,
    /// The probe VM's observations (`None` when it could not run, see `probe_error`).
    pub probe: Option<ProbeReport>,
    /// Why the probe could not run.
    pub probe_error: Option<String>,
    /// The strategy `trap = "auto"` picks.
    pub strategy: TrapStrategy,
    /// Whether calls at CPL 3 reach the VMM.
    pub cpl3_trappable: bool,
    /// How interrupts are delivered, and whether the probe saw it work.
    pub interrupt_delivery: &'static str,
    /// Whether the probe's injected interrupt reached the guest's handler.
    pub interrupt_delivery_verified: bool,
    /// The guest TSC frequency in kHz.
    pub tsc_khz: Option<u64>,
    /// Whether the host TSC is invariant (CPUID 0x80000007 EDX bit 8).
    pub stable_tsc: bool,
    /// Which personalities can run here.
    pub personalities: Vec<PersonalityVerdict>,
    /// How long the check took, microseconds.
    pub micros: u64,
}

fn host_cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The host's CPU vendor string.
pub fn host_vendor() -> String {
    let (_, b, c, d) = host_cpuid(0);
    let mut s = Vec::with_capacity(12);
    for w in [b, d, c] {
        s.extend_from_slice(&w.to_le_bytes());
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// VMMCALL on AMD and Hygon, VMCALL elsewhere.
pub fn vendor_instruction(vendor: &str) -> HypercallInstruction {
    if vendor == "AuthenticAMD" || vendor == "HygonGenuine" {
        HypercallInstruction::Vmmcall
    } else {
        HypercallInstruction::Vmcall
    }
}

/// Whether the host's TSC is invariant.
pub fn host_stable_tsc() -> bool {
    let (max_ext, ..) = host_cpuid(0x8000_0000);
    max_ext >= 0x8000_0007 && host_cpuid(0x8000_0007).3 & (1 << 8) != 0
}

/// Picks the strategy the probe supports best.
pub fn strategy_from_probe(probe: Option<&ProbeReport>) -> TrapStrategy {
    let Some(p) = probe else {
        return TrapStrategy::None;
    };
    if p.cpl0_vmcall == CallFate::TrappedAsXen && p.cpl0_vmmcall == CallFate::TrappedAsXen {
        TrapStrategy::XenIntercept
    } else if p.cpl0_vmcall == CallFate::TrappedAsMmio || p.cpl0_vmmcall == CallFate::TrappedAsMmio
    {
        TrapStrategy::WriteProtect
    } else {
        TrapStrategy::None
    }
}

impl HostReport {
    /// The instruction hypercall pages should use: the one the probe saw trap (preferring the
    /// encoding KVM patches to), else the vendor's.
    pub fn instruction(&self) -> HypercallInstruction {
        let vendor = vendor_instruction(&self.vendor);
        let Some(p) = &self.probe else {
            return vendor;
        };
        if let Some(native) = p.patched_instruction() {
            let fate = match native {
                HypercallInstruction::Vmcall => p.cpl0_vmcall,
                HypercallInstruction::Vmmcall => p.cpl0_vmmcall,
            };
            if fate.trapped() {
                return native;
            }
        }
        if p.cpl0_vmcall.trapped() && !p.cpl0_vmmcall.trapped() {
            return HypercallInstruction::Vmcall;
        }
        if p.cpl0_vmmcall.trapped() && !p.cpl0_vmcall.trapped() {
            return HypercallInstruction::Vmmcall;
        }
        vendor
    }

    /// What happens to hypercalls made at CPL 3, in words.
    pub fn cpl3_summary(&self) -> String {
        let Some(p) = &self.probe else {
            return "unknown (the probe VM did not run)".into();
        };
        match (p.cpl3_vmcall.trapped(), p.cpl3_vmmcall.trapped()) {
            (true, true) => "trapped (VMCALL and VMMCALL)".into(),
            (false, false) => format!(
                "cannot be trapped on this host: VMCALL {}; VMMCALL {}",
                p.cpl3_vmcall, p.cpl3_vmmcall
            ),
            (true, false) => format!(
                "cannot be trapped reliably on this host: only VMCALL is trapped; VMMCALL {}",
                p.cpl3_vmmcall
            ),
            (false, true) => format!(
                "cannot be trapped reliably on this host: only VMMCALL is trapped; VMCALL {}",
                p.cpl3_vmcall
            ),
        }
    }

    /// The facts personalities build from.
    pub fn facts(&self) -> HostFacts {
        HostFacts {
            instruction: self.instruction(),
            tsc_khz: self.tsc_khz,
            stable_tsc: self.stable_tsc,
        }
    }

    /// What the host lacks for a strategy, for refusals.
    pub fn lacks(&self, strategy: TrapStrategy) -> String {
        match strategy {
            TrapStrategy::XenIntercept => format!(
                "this host lacks KVM's Xen hypercall intercept (KVM_CAP_XEN_HVM = {:#x}, needs bit \
                 KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL; the host kernel is built without CONFIG_KVM_XEN \
                 or is not VMX/SVM)",
                self.caps.xen_hvm
            ),
            TrapStrategy::WriteProtect => format!(
                "the probe VM saw no hypercall patch write to read-only memory (CPL 0 VMCALL: {}, \
                 VMMCALL: {})",
                self.probe
                    .as_ref()
                    .map_or("-".to_string(), |p| p.cpl0_vmcall.to_string()),
                self.probe
                    .as_ref()
                    .map_or("-".to_string(), |p| p.cpl0_vmmcall.to_string())
            ),
            TrapStrategy::None => String::new(),
        }
    }

    /// Resolves a configured choice against this host.
    pub fn select(&self, choice: TrapStrategyChoice) -> Result<TrapStrategy, String> {
        match choice {
            TrapStrategyChoice::Auto => Ok(self.strategy),
            TrapStrategyChoice::None => Ok(TrapStrategy::None),
            TrapStrategyChoice::XenIntercept => {
                if self.strategy == TrapStrategy::XenIntercept {
                    Ok(TrapStrategy::XenIntercept)
                } else {
                    Err(self.lacks(TrapStrategy::XenIntercept))
                }
            }
            TrapStrategyChoice::WriteProtect => {
                let works = self.probe.as_ref().is_some_and(|p| {
                    p.cpl0_vmcall == CallFate::TrappedAsMmio
                        || p.cpl0_vmmcall == CallFate::TrappedAsMmio
                });
                // With the Xen intercept active the probe ran without read-only code; trust the
                // capability less than an observation and refuse.
                if works {
                    Ok(TrapStrategy::WriteProtect)
                } else {
                    Err(self.lacks(TrapStrategy::WriteProtect))
                }
            }
        }
    }
}

fn verdicts(strategy: TrapStrategy, facts: &HostFacts) -> Vec<PersonalityVerdict> {
    let mut config = Config::default();
    config.hypervisor.hypercalls_enabled = true;
    HypervisorMode::iter()
        .map(|mode| {
            let built = polyvisor_personalities::build_mode(mode, &config, facts);
            let (runs, note) = match (&built, strategy) {
                (Err(BuildError::NotImplemented(_)), _) => {
                    (false, "not implemented yet in this build".to_string())
                }
                (Err(e), _) => (false, e.to_string()),
                (Ok(_), TrapStrategy::XenIntercept) => {
                    (true, "runs; hypercalls trapped at every CPL".to_string())
                }
                (Ok(_), TrapStrategy::WriteProtect) => (
                    true,
                    "runs; hypercalls trapped at CPL 0 (CPL 3 calls are not reliably trapped \
                     here; see above)"
                        .to_string(),
                ),
                (Ok(_), TrapStrategy::None) => (
                    false,
                    "only with hypercalls disabled: this host has no hypercall trap".to_string(),
                ),
            };
            PersonalityVerdict { mode, runs, note }
        })
        .collect()
}

/// Checks the host: capabilities, a probe VM, the strategy it supports, time, personalities.
/// Without a usable `/dev/kvm` the report says so (`kvm_error`) and finds no strategy.
pub fn host_check() -> HostReport {
    let started = Instant::now();
    match Kvm::new() {
        Ok(kvm) => check_with(&kvm, started),
        Err(e) => {
            let vendor = host_vendor();
            let facts = HostFacts {
                instruction: vendor_instruction(&vendor),
                tsc_khz: None,
                stable_tsc: host_stable_tsc(),
            };
            HostReport {
                api_version: 0,
                caps: Caps::default(),
                vendor_instruction: vendor_instruction(&vendor).into(),
                vendor,
                kvm_error: Some(format!("cannot open /dev/kvm: {e}")),
                probe: None,
                probe_error: None,
                strategy: TrapStrategy::None,
                cpl3_trappable: false,
                interrupt_delivery: "none (no KVM)",
                interrupt_delivery_verified: false,
                tsc_khz: None,
                stable_tsc: facts.stable_tsc,
                personalities: verdicts(TrapStrategy::None, &facts),
                micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            }
        }
    }
}

pub(crate) fn check_with(kvm: &Kvm, started: Instant) -> HostReport {
    let caps = Caps::read(kvm);
    let vendor = host_vendor();
    let (probe, probe_error) = match run_probe(kvm, caps.xen_intercept()) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let strategy = strategy_from_probe(probe.as_ref());
    let cpl3_trappable =
        probe.as_ref().is_some_and(|p| p.cpl3_vmcall.trapped() && p.cpl3_vmmcall.trapped());
    let mut report = HostReport {
        api_version: kvm.get_api_version(),
        caps,
        vendor_instruction: vendor_instruction(&vendor).into(),
        vendor,
        kvm_error: None,
        interrupt_delivery:
            "user-space injection (KVM_INTERRUPT + interrupt windows, no in-kernel irqchip)",
        interrupt_delivery_verified: probe.as_ref().is_some_and(|p| p.interrupt_injection),
        tsc_khz: probe.as_ref().and_then(|p| p.tsc_khz),
        stable_tsc: host_stable_tsc(),
        probe,
        probe_error,
        strategy,
        cpl3_trappable,
        personalities: Vec::new(),
        micros: 0,
    };
    report.personalities = verdicts(strategy, &report.facts());
    report.micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    report
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "polyvisor host check")?;
        if let Some(e) = &self.kvm_error {
            writeln!(f, "  KVM                    unavailable: {e}")?;
        }
        writeln!(f, "  KVM API version        {}", self.api_version)?;
        writeln!(
            f,
            "  host CPU               {} (native hypercall instruction: {})",
            self.vendor, self.vendor_instruction
        )?;
        writeln!(f, "  hypercall trap         {}", self.strategy)?;
        match &self.probe {
            Some(p) => {
                writeln!(
                    f,
                    "    probe VM ({} us, code {}, Xen intercept {})",
                    p.micros,
                    if p.readonly_code { "in a read-only memslot" } else { "in RAM" },
                    if p.xen_intercept_configured { "on" } else { "off" }
                )?;
                writeln!(f, "      CPL 0 VMCALL       {}", p.cpl0_vmcall)?;
                writeln!(f, "      CPL 0 VMMCALL      {}", p.cpl0_vmmcall)?;
                writeln!(f, "      CPL 3 VMMCALL      {}", p.cpl3_vmmcall)?;
                writeln!(f, "      CPL 3 VMCALL       {}", p.cpl3_vmcall)?;
                if let Some(native) = p.patched_to {
                    writeln!(f, "      KVM patches calls to {native}")?;
                }
            }
            None => writeln!(
                f,
                "    probe VM failed: {}",
                self.probe_error.as_deref().unwrap_or("unknown")
            )?,
        }
        writeln!(f, "  CPL 3 hypercalls       {}", self.cpl3_summary())?;
        writeln!(f, "  hypercall pages use    {}", self.instruction())?;
        writeln!(
            f,
            "  Xen intercept          {} (KVM_CAP_XEN_HVM = {:#x})",
            yes(self.caps.xen_intercept()),
            self.caps.xen_hvm
        )?;
        writeln!(
            f,
            "  MSR exits              {} (user-space MSR {}, MSR filter {})",
            yes(self.caps.user_space_msr && self.caps.msr_filter),
            yes(self.caps.user_space_msr),
            yes(self.caps.msr_filter)
        )?;
        writeln!(
            f,
            "  sync regs              {} (KVM_CAP_SYNC_REGS = {:#x})",
            yes(self.caps.sync_regs_usable()),
            self.caps.sync_regs
        )?;
        writeln!(
            f,
            "  interrupt delivery     {} ({})",
            self.interrupt_delivery,
            if self.interrupt_delivery_verified {
                "verified by the probe"
            } else {
                "NOT seen working by the probe"
            }
        )?;
        writeln!(
            f,
            "  TSC                    {} kHz, {}",
            self.tsc_khz.map_or("unknown".to_string(), |k| k.to_string()),
            if self.stable_tsc { "invariant" } else { "not invariant" }
        )?;
        writeln!(f, "  personalities")?;
        for p in &self.personalities {
            writeln!(f, "    {:<8} {}", p.mode.to_string(), p.note)?;
        }
        write!(f, "  (checked in {:.1} ms)", self.micros as f64 / 1000.0)
    }
}
