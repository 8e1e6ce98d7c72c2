//! The matrix itself: for every (mode, behaviour) cell, the guest scenario that checks the
//! ABI's documented answer (docs/abi/*.md) and the host-side facts that must hold afterwards,
//! or why the cell does not apply. To add a behaviour: a [`Behaviour`] variant, a scenario in
//! each `tests/guests/guests/matrix_<mode>.c`, and an arm in each mode's function below
//! (docs/testing.md).

use polyvisor_config::HypervisorMode;

use crate::host::HostReport;
use crate::trap::probe::ProbeReport;

/// One behaviour every personality is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// The hypervisor's identity through CPUID (at CPL 0).
    Identity,
    /// Hypercalls are off by default: the ABI's answer for that.
    Disabled,
    /// With hypercalls enabled a harmless call goes through.
    Enabled,
    /// A number the ABI does not have.
    Unknown,
    /// A ring-0 call made from CPL 3.
    Ring,
    /// A call the configuration denies.
    Denied,
    /// Console output through the ABI.
    Console,
    /// Giving up the CPU through the ABI.
    Yield,
    /// Ending the VM with a status through the ABI.
    Shutdown,
    /// The ABI's time source.
    Time,
    /// Waking or interrupting a second vCPU.
    Wake,
    /// A guest pointer outside RAM: the ABI's error, no fault, the host unharmed.
    BadPointer,
    /// A 32-bit caller (PVH boot, protected mode).
    Caller32,
}

impl Behaviour {
    /// Every behaviour, in table order.
    pub const ALL: [Behaviour; 13] = [
        Behaviour::Identity,
        Behaviour::Disabled,
        Behaviour::Enabled,
        Behaviour::Unknown,
        Behaviour::Ring,
        Behaviour::Denied,
        Behaviour::Console,
        Behaviour::Yield,
        Behaviour::Shutdown,
        Behaviour::Time,
        Behaviour::Wake,
        Behaviour::BadPointer,
        Behaviour::Caller32,
    ];

    /// The name in tables, JSON and the guests' `scenario=`.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Identity => "identity",
            Behaviour::Disabled => "disabled",
            Behaviour::Enabled => "enabled",
            Behaviour::Unknown => "unknown",
            Behaviour::Ring => "ring",
            Behaviour::Denied => "denied",
            Behaviour::Console => "console",
            Behaviour::Yield => "yield",
            Behaviour::Shutdown => "shutdown",
            Behaviour::Time => "time",
            Behaviour::Wake => "wake",
            Behaviour::BadPointer => "bad-pointer",
            Behaviour::Caller32 => "caller32",
        }
    }

    /// The behaviour called `name`.
    pub fn from_name(name: &str) -> Option<Behaviour> {
        Behaviour::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl std::fmt::Display for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Something the host must have seen after a cell's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFact {
    /// The row called so had at least one served call.
    Calls(&'static str),
    /// ... at least one call that answered an error.
    Errors(&'static str),
    /// ... at least one call refused by the configuration.
    Denied(&'static str),
    /// ... at least one call from a ring it does not allow.
    WrongRing(&'static str),
    /// At least one call refused because hypercalls are disabled.
    RefusedDisabled,
    /// At least one call refused as unknown.
    RefusedUnknown,
    /// At least one call the personality rejected before its table (Hyper-V: CPL 3 and the
    /// disabled page).
    RefusedMalformed,
    /// At least one synthetic MSR access reached the VMM.
    Msrs,
    /// At least one interrupt was injected.
    Interrupts,
    /// No hypercall reached the VMM.
    NoHypercalls,
    /// The console holds this text (written by the ABI, not by the guest's port).
    Console(&'static str),
    /// The end message holds this text.
    EndMessage(&'static str),
    /// The debug channel's output file (`[hyperv] debug_output`) holds exactly these parts,
    /// one after the other.
    DebugOutput(&'static [&'static str]),
    /// The VM booted through PVH.
    PvhBoot,
}

/// How to run one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The guest image (`polyvisor_guests::image`).
    pub image: &'static str,
    /// `[hypervisor] hypercalls_enabled`.
    pub hypercalls: bool,
    /// A call name for `[hypervisor] deny`.
    pub deny: Option<&'static str>,
    /// `[vm] vcpus`.
    pub vcpus: u32,
    /// The exit status the run must end with.
    pub exit_status: i32,
    /// The exact number of `ok` lines the guest prints when it checks everything.
    pub ok_lines: usize,
    /// What the host must have seen.
    pub host: Vec<HostFact>,
    /// The Hyper-V debug channel with a host side, holding these bytes for the guest to
    /// retrieve: the run sets `[hyperv] debug_output` and `debug_input` to files in a fresh
    /// folder under the system's temporary directory (removed afterwards) and shows the
    /// Debugging privilege and the guest debugging feature (docs/abi/hyperv.md).
    pub debug_channel: Option<&'static str>,
}

/// A cell's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run this.
    Run(Scenario),
    /// The cell does not apply, and why.
    NotApplicable(String),
}

/// The guest of `mode`: the 64-bit image, or the 32-bit PVH one.
fn image(mode: HypervisorMode, bits32: bool) -> &'static str {
    match (mode, bits32) {
        (HypervisorMode::Bhyve, false) => "matrix_bhyve64",
        (HypervisorMode::Bhyve, true) => "matrix_bhyve_pvh32",
        (HypervisorMode::Kvm, false) => "matrix_kvm64",
        (HypervisorMode::Kvm, true) => "matrix_kvm_pvh32",
        (HypervisorMode::Hyperv, false) => "matrix_hyperv64",
        (HypervisorMode::Hyperv, true) => "matrix_hyperv_pvh32",
        (HypervisorMode::Xen, false) => "matrix_xen64",
        (HypervisorMode::Xen, true) => "matrix_xen_pvh32",
    }
}

/// The harmless ring-0 call each ABI's scenarios make (the `kernel_call` of polyvisor-tests).
pub fn kernel_call(mode: HypervisorMode) -> &'static str {
    match mode {
        HypervisorMode::Bhyve => "HYPERCALL_PROTOTYPE",
        HypervisorMode::Kvm => "KVM_HC_VAPIC_POLL_IRQ",
        HypervisorMode::Hyperv => "HvCallNotifyLongSpinWait",
        HypervisorMode::Xen => "__HYPERVISOR_xen_version",
    }
}

/// A 64-bit run with hypercalls on, one vCPU, status 0.
fn scenario(mode: HypervisorMode, ok_lines: usize, host: Vec<HostFact>) -> Scenario {
    Scenario {
        image: image(mode, false),
        hypercalls: true,
        deny: None,
        vcpus: 1,
        exit_status: 0,
        ok_lines,
        host,
        debug_channel: None,
    }
}

fn enabled(mode: HypervisorMode, ok_lines: usize, host: Vec<HostFact>) -> Plan {
    Plan::Run(scenario(mode, ok_lines, host))
}

fn na(why: &str) -> Plan {
    Plan::NotApplicable(why.to_string())
}

/// What a mode's cell runs. `host` decides the cells that depend on it (CPL 3 trapping, a
/// stable TSC).
pub fn plan(mode: HypervisorMode, behaviour: Behaviour, host: &HostReport) -> Plan {
    match mode {
        HypervisorMode::Bhyve => bhyve(behaviour, host),
        HypervisorMode::Kvm => kvm(behaviour, host),
        HypervisorMode::Hyperv => hyperv(behaviour, host),
        HypervisorMode::Xen => xen(behaviour, host),
    }
}

// Cells every ABI has in the same shape: only the guest's count of checks and the rows differ.

/// CPUID at CPL 0 with the default configuration: no call may reach the VMM.
fn identity(mode: HypervisorMode, ok_lines: usize) -> Plan {
    Plan::Run(Scenario {
        hypercalls: false,
        ..scenario(mode, ok_lines, vec![HostFact::NoHypercalls])
    })
}

/// The kernel call with the default configuration.
fn disabled(mode: HypervisorMode) -> Plan {
    Plan::Run(Scenario { hypercalls: false, ..scenario(mode, 1, vec![HostFact::RefusedDisabled]) })
}

/// The kernel call denied by `[hypervisor] deny`.
fn denied(mode: HypervisorMode, ok_lines: usize) -> Plan {
    let call = kernel_call(mode);
    Plan::Run(Scenario {
        deny: Some(call),
        ..scenario(mode, ok_lines, vec![HostFact::Denied(call)])
    })
}

/// A ring-0 call from CPL 3 with the instruction this host traps there; `fact` proves the VMM
/// (not the host kernel) answered.
fn ring(mode: HypervisorMode, host: &HostReport, ok_lines: usize, fact: HostFact) -> Plan {
    if cpl3_instruction(host).is_none() {
        return Plan::NotApplicable(format!(
            "this host answers CPL 3 calls itself ({}); the ring rules are proven by the engine \
             tests",
            host.cpl3_summary()
        ));
    }
    enabled(mode, ok_lines, vec![fact])
}

/// The 32-bit PVH image: identity, the kernel call, an unknown number and bad pointers (the
/// errors counted on `bad_pointer_row`).
fn caller32(mode: HypervisorMode, ok_lines: usize, bad_pointer_row: &'static str) -> Plan {
    let facts = vec![
        HostFact::PvhBoot,
        HostFact::Calls(kernel_call(mode)),
        HostFact::RefusedUnknown,
        HostFact::Errors(bad_pointer_row),
    ];
    Plan::Run(Scenario { image: image(mode, true), ..scenario(mode, ok_lines, facts) })
}

const NO_STABLE_TSC_PAIRING: &str = "this host's TSC is not stable (or its rate unknown): \
     KVM_HC_CLOCK_PAIRING answers -KVM_EOPNOTSUPP before it reads its pointer";

fn bhyve(behaviour: Behaviour, host: &HostReport) -> Plan {
    use Behaviour as B;
    use HostFact as F;
    const MODE: HypervisorMode = HypervisorMode::Bhyve;
    const NONE: &str = "the bhyve hypercall ABI (FreeBSD review) has no such call";
    const PROBE_CREATE: &str = "HYPERCALL_DTRACE_PROBE_CREATE";
    match behaviour {
        B::Identity => identity(MODE, 3),
        B::Disabled => disabled(MODE),
        B::Enabled => enabled(MODE, 2, vec![F::Calls("HYPERCALL_PROTOTYPE")]),
        B::Unknown => enabled(MODE, 1, vec![F::RefusedUnknown]),
        B::Ring => ring(MODE, host, 1, F::WrongRing("HYPERCALL_DTRACE_RESERVED1")),
        B::Denied => denied(MODE, 1),
        B::Console => na(&format!("{NONE} (console output)")),
        B::Yield => na(&format!("{NONE} (yield)")),
        B::Shutdown => na(&format!("{NONE} (shutdown)")),
        B::Time => na(&format!("{NONE} (time source)")),
        B::Wake => na(&format!("{NONE} (inter-vCPU wake-up)")),
        B::BadPointer => enabled(MODE, 5, vec![F::Errors(PROBE_CREATE)]),
        B::Caller32 => caller32(MODE, 10, PROBE_CREATE),
    }
}

fn kvm(behaviour: Behaviour, host: &HostReport) -> Plan {
    use Behaviour as B;
    use HostFact as F;
    const MODE: HypervisorMode = HypervisorMode::Kvm;
    const PAIRING: &str = "KVM_HC_CLOCK_PAIRING";
    let kvmclock = kvmclock_backed(host);
    match behaviour {
        B::Identity => identity(MODE, 2),
        B::Disabled => disabled(MODE),
        B::Enabled => enabled(MODE, 1, vec![F::Calls("KVM_HC_VAPIC_POLL_IRQ")]),
        B::Unknown => enabled(MODE, 1, vec![F::RefusedUnknown]),
        B::Ring => ring(MODE, host, 1, F::WrongRing("KVM_HC_VAPIC_POLL_IRQ")),
        B::Denied => denied(MODE, 1),
        B::Console => na("KVM's paravirtual ABI has no console call"),
        B::Yield => enabled(MODE, 2, vec![F::Calls("KVM_HC_SCHED_YIELD")]),
        B::Shutdown => na("KVM's paravirtual ABI has no shutdown call"),
        B::Time if kvmclock => enabled(MODE, 5, vec![F::Msrs]),
        B::Time => na("kvmclock needs a stable TSC of known rate; this host has none"),
        B::Wake => {
            Plan::Run(Scenario { vcpus: 2, ..scenario(MODE, 4, vec![F::Calls("KVM_HC_KICK_CPU")]) })
        }
        B::BadPointer | B::Caller32 if !kvmclock => na(NO_STABLE_TSC_PAIRING),
        B::BadPointer => enabled(MODE, 5, vec![F::Errors(PAIRING), F::Calls(PAIRING)]),
        B::Caller32 => caller32(MODE, 10, PAIRING),
    }
}

fn hyperv(behaviour: Behaviour, host: &HostReport) -> Plan {
    use Behaviour as B;
    use HostFact as F;
    const MODE: HypervisorMode = HypervisorMode::Hyperv;
    const SPIN: &str = "HvCallNotifyLongSpinWait";
    const QUERY: &str = "HvExtCallQueryCapabilities";
    match behaviour {
        B::Identity => identity(MODE, 3),
        B::Disabled => disabled(MODE),
        B::Enabled | B::Yield => enabled(MODE, 2, vec![F::Calls(SPIN)]),
        B::Unknown => enabled(MODE, 2, vec![F::RefusedUnknown]),
        // Hyper-V checks the CPL before its table: a malformed refusal, not a row's.
        B::Ring => ring(MODE, host, 2, F::RefusedMalformed),
        B::Denied => denied(MODE, 2),
        // Hyper-V's byte channel from guest to host is the debug channel.
        B::Console => Plan::Run(Scenario {
            debug_channel: Some(HYPERV_DEBUG_INPUT),
            ..scenario(
                MODE,
                11,
                vec![
                    F::Calls("HvCallPostDebugData"),
                    F::Calls("HvCallRetrieveDebugData"),
                    F::DebugOutput(&[HYPERV_DEBUG_POSTED, HYPERV_DEBUG_INPUT]),
                ],
            )
        }),
        B::Shutdown => Plan::Run(Scenario {
            exit_status: 250,
            ..scenario(MODE, 2, vec![F::EndMessage("P0=0x4d41545249580000")])
        }),
        B::Time => enabled(MODE, 3, vec![F::Msrs, F::NoHypercalls]),
        B::Wake => Plan::Run(Scenario {
            vcpus: 2,
            ..scenario(MODE, 5, vec![F::Calls("HvCallSendSyntheticClusterIpi"), F::Interrupts])
        }),
        B::BadPointer => enabled(MODE, 6, vec![F::Errors(QUERY)]),
        B::Caller32 => caller32(MODE, 12, QUERY),
    }
}

/// What matrix_hyperv.c posts first with HvCallPostDebugData.
pub const HYPERV_DEBUG_POSTED: &str = "matrix_hyperv: posted with HvCallPostDebugData\n";
/// What the Hyper-V console cell's `[hyperv] debug_input` holds: matrix_hyperv.c retrieves it
/// with HvCallRetrieveDebugData, checks it and posts it back.
pub const HYPERV_DEBUG_INPUT: &str = "host: retrieved with HvCallRetrieveDebugData\n";

/// What matrix_xen.c writes with CONSOLEIO_write.
pub const XEN_CONSOLE_MARKER: &str = "matrix_xen: written with CONSOLEIO_write\n";

fn xen(behaviour: Behaviour, host: &HostReport) -> Plan {
    use Behaviour as B;
    use HostFact as F;
    const MODE: HypervisorMode = HypervisorMode::Xen;
    const CONSOLE_IO: &str = "__HYPERVISOR_console_io";
    const SCHED_OP: &str = "__HYPERVISOR_sched_op";
    const HVM_OP: &str = "__HYPERVISOR_hvm_op";
    match behaviour {
        B::Identity => identity(MODE, 3),
        B::Disabled => disabled(MODE),
        B::Enabled => enabled(MODE, 1, vec![F::Calls("__HYPERVISOR_xen_version")]),
        B::Unknown => enabled(MODE, 1, vec![F::RefusedUnknown]),
        B::Ring => ring(MODE, host, 1, F::WrongRing("__HYPERVISOR_xen_version")),
        B::Denied => denied(MODE, 1),
        B::Console => enabled(MODE, 1, vec![F::Calls(CONSOLE_IO), F::Console(XEN_CONSOLE_MARKER)]),
        B::Yield => enabled(MODE, 1, vec![F::Calls(SCHED_OP)]),
        B::Shutdown => Plan::Run(Scenario {
            exit_status: 248,
            ..scenario(MODE, 3, vec![F::Calls(SCHED_OP), F::EndMessage("reboot")])
        }),
        B::Time => enabled(MODE, 4, vec![F::Calls(HVM_OP)]),
        B::Wake => Plan::Run(Scenario {
            vcpus: 2,
            ..scenario(MODE, 3, vec![F::Calls(HVM_OP), F::Interrupts])
        }),
        B::BadPointer => enabled(MODE, 4, vec![F::Errors(CONSOLE_IO), F::Errors(HVM_OP)]),
        B::Caller32 => caller32(MODE, 10, CONSOLE_IO),
    }
}

/// The instruction a CPL 3 call reaches the VMM with on this host (VMMCALL preferred), if any.
pub fn cpl3_instruction(host: &HostReport) -> Option<&'static str> {
    let probe: &ProbeReport = host.probe.as_ref()?;
    if probe.cpl3_vmmcall.trapped() {
        Some("vmmcall")
    } else if probe.cpl3_vmcall.trapped() {
        Some("vmcall")
    } else {
        None
    }
}

/// Whether kvmclock (and KVM_HC_CLOCK_PAIRING) is backed here: a stable TSC of known rate.
fn kvmclock_backed(host: &HostReport) -> bool {
    host.stable_tsc && host.tsc_khz.is_some_and(|k| k > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Caps;
    use crate::trap::probe::CallFate;
    use crate::trap::TrapStrategy;

    const MODES: [HypervisorMode; 4] =
        [HypervisorMode::Bhyve, HypervisorMode::Kvm, HypervisorMode::Hyperv, HypervisorMode::Xen];

    /// A host like the development hosts, or one without a CPL 3 trap and a stable TSC.
    fn host(cpl3_vmmcall: CallFate, stable_tsc: bool) -> HostReport {
        HostReport {
            api_version: 12,
            caps: Caps::default(),
            vendor: "GenuineIntel".into(),
            kvm_error: None,
            vendor_instruction: "VMCALL",
            probe: Some(ProbeReport {
                xen_intercept_configured: false,
                readonly_code: true,
                cpl0_vmcall: CallFate::TrappedAsMmio,
                cpl0_vmmcall: CallFate::TrappedAsMmio,
                cpl3_vmmcall,
                cpl3_vmcall: CallFate::NotReached,
                patched_to: Some("VMCALL"),
                interrupt_injection: true,
                tsc_khz: Some(2_000_000),
                ended: String::new(),
                exits: Vec::new(),
                micros: 0,
            }),
            probe_error: None,
            strategy: TrapStrategy::WriteProtect,
            cpl3_trappable: false,
            interrupt_delivery: "KVM_INTERRUPT",
            interrupt_delivery_verified: true,
            tsc_khz: Some(2_000_000),
            stable_tsc,
            personalities: Vec::new(),
            micros: 0,
        }
    }

    #[test]
    fn behaviour_names_round_trip_and_are_unique() {
        for b in Behaviour::ALL {
            assert_eq!(Behaviour::from_name(b.name()), Some(b));
            assert_eq!(b.to_string(), b.name());
        }
        assert_eq!(Behaviour::from_name("teleport"), None);
    }

    #[test]
    fn every_planned_cell_names_a_built_guest_a_row_and_counts_its_checks() {
        let host = host(CallFate::TrappedAsMmio, true);
        let config = polyvisor_config::Config::default();
        for mode in MODES {
            let engine = polyvisor_personalities::build_mode(mode, &config, &host.facts()).unwrap();
            let rows = engine.rows();
            for b in Behaviour::ALL {
                let Plan::Run(s) = plan(mode, b, &host) else { continue };
                assert!(polyvisor_guests::image(s.image).is_some(), "{mode} {b}: {}", s.image);
                assert_eq!(s.image.ends_with("_pvh32"), b == Behaviour::Caller32, "{mode} {b}");
                assert!(s.ok_lines >= 1, "{mode} {b}: a cell must check something");
                for fact in &s.host {
                    if let HostFact::Calls(n)
                    | HostFact::Errors(n)
                    | HostFact::Denied(n)
                    | HostFact::WrongRing(n) = fact
                    {
                        assert!(rows.iter().any(|r| r.name == *n), "{mode} {b}: no row {n}");
                    }
                }
                if let Some(n) = s.deny {
                    assert!(rows.iter().any(|r| r.name == n), "{mode} {b}: no row {n}");
                }
            }
        }
    }

    #[test]
    fn host_dependent_cells_say_why_they_do_not_apply() {
        let poor = host(CallFate::NotReached, false);
        for mode in MODES {
            let Plan::NotApplicable(why) = plan(mode, Behaviour::Ring, &poor) else {
                panic!("{mode}: ring planned without a CPL 3 trap")
            };
            assert!(why.contains("CPL 3"), "{why}");
        }
        for b in [Behaviour::Time, Behaviour::BadPointer, Behaviour::Caller32] {
            assert!(matches!(plan(HypervisorMode::Kvm, b, &poor), Plan::NotApplicable(_)), "{b}");
        }
        let rich = host(CallFate::TrappedAsMmio, true);
        assert_eq!(cpl3_instruction(&rich), Some("vmmcall"));
        assert!(matches!(plan(HypervisorMode::Kvm, Behaviour::Time, &rich), Plan::Run(_)));
        // ABIs without the call never run the cell, whatever the host.
        for (mode, b) in [
            (HypervisorMode::Bhyve, Behaviour::Console),
            (HypervisorMode::Bhyve, Behaviour::Wake),
            (HypervisorMode::Kvm, Behaviour::Shutdown),
        ] {
            assert!(matches!(plan(mode, b, &rich), Plan::NotApplicable(_)), "{mode} {b}");
        }
    }

    #[test]
    fn only_the_hyperv_console_opens_the_debug_channel() {
        let host = host(CallFate::TrappedAsMmio, true);
        for mode in MODES {
            for b in Behaviour::ALL {
                let Plan::Run(s) = plan(mode, b, &host) else { continue };
                let console = (mode, b) == (HypervisorMode::Hyperv, Behaviour::Console);
                assert_eq!(s.debug_channel.is_some(), console, "{mode} {b}");
                let checks_output = s.host.iter().any(|f| matches!(f, HostFact::DebugOutput(_)));
                assert_eq!(checks_output, console, "{mode} {b}");
            }
        }
    }
}
