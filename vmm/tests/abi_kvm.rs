//! The kvm personality checked from inside real guests (tests/guests/guests/kvm_*.c,
//! docs/abi/kvm.md): every hypercall row at CPL 0 and CPL 3, 64-bit, 32-bit and
//! compatibility-mode callers, the MSRs, kvmclock (monotonic, at the TSC's rate within 1% over
//! a second), and KICK_CPU / SEND_IPI between vCPUs, under the configurations the ABI page
//! describes: hypercalls enabled, disabled, some calls denied, an explicit feature list, and a
//! host without a stable TSC.
//!
//! Each guest checks every expectation itself (`<name>: ok   ...` / `<name>: FAIL ...`, then
//! `N ok, M failed`); a test passes when the guest exits 0, printed no `FAIL`, printed at
//! least a minimum number of `ok` lines, and the host-side facts agree (the engine's counters,
//! its end-of-run report of the `KVM_HC_MAP_GPA_RANGE` map, its attribute queries, the VMM's
//! exit counters).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use polyvisor_config::LoadedConfig;
use polyvisor_core::{CounterSnapshot, Dispatch, Engine};
use polyvisor_personalities::kvm::{build_engine, KvmPersonality};
use polyvisor_personalities::{BuildError, HostFacts};
use polyvisor_vmm::trap::probe::CallFate;
use polyvisor_vmm::{run, HostReport, RunOptions, RunReport, VmEnd, VmmError};

/// The host check, once for the whole file (the probe VM takes a while).
fn host() -> &'static HostReport {
    static HOST: OnceLock<HostReport> = OnceLock::new();
    HOST.get_or_init(polyvisor_vmm::host_check)
}

/// The same host, but claiming its TSC is not stable (no kvmclock can be backed).
fn host_without_stable_tsc() -> HostReport {
    let mut h = host().clone();
    h.stable_tsc = false;
    h
}

/// A VM configuration.
struct Setup<'a> {
    /// Lines under `[hypervisor]` (besides `mode = "kvm"`).
    hypervisor: &'a str,
    /// Lines under `[kvm]`.
    kvm: &'a str,
    vcpus: u32,
}

const ENABLED: Setup<'static> =
    Setup { hypervisor: "hypercalls_enabled = true", kvm: "", vcpus: 1 };

struct Run {
    report: RunReport,
    engine: Arc<Engine<KvmPersonality>>,
    console: String,
}

impl Run {
    fn row(&self, number: u64) -> CounterSnapshot {
        self.report
            .rows
            .iter()
            .find(|r| r.number == number)
            .unwrap_or_else(|| panic!("no row {number}"))
            .counters
    }

    /// Lines of the guest's console that start with `<image>: <prefix>`, without it.
    fn lines_after(&self, image: &str, prefix: &str) -> Vec<String> {
        let p = format!("{image}: {prefix}");
        self.console.lines().filter_map(|l| l.strip_prefix(&p)).map(str::to_string).collect()
    }

    fn show(&self) -> String {
        format!("--- console ---\n{}--- end ---\n{}", self.console, self.report)
    }
}

fn config(setup: &Setup<'_>, cmdline: &str) -> LoadedConfig {
    let text = format!(
        "[hypervisor]\nmode = \"kvm\"\n{}\n[vm]\nmemory_mib = 64\nvcpus = {}\n[kvm]\n{}\n",
        setup.hypervisor, setup.vcpus, setup.kvm
    );
    let mut cfg = LoadedConfig::parse_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    cfg.config.vm.cmdline = cmdline.to_string();
    cfg
}

/// Boots test guest `image` under the kvm personality built from `setup` for `host`, and
/// keeps the engine for host-side queries.
fn run_kvm(image: &str, setup: &Setup<'_>, cmdline: &str, host: &HostReport) -> Run {
    let cfg = config(setup, cmdline);
    let engine = build_engine(&cfg.config, &host.facts()).expect("the kvm personality builds");
    let dispatch: Arc<dyn Dispatch> = engine.clone();
    let bytes = polyvisor_guests::image(image).unwrap_or_else(|| panic!("no guest {image}"));
    let report = run(
        &cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(bytes.to_vec()),
            dispatch: Some(dispatch),
            timeout: Some(Duration::from_secs(20)),
            host: Some(host.clone()),
            ..RunOptions::default()
        },
    )
    .expect("the VM runs");
    let console = report.console_text();
    let r = Run { report, engine, console };
    println!("== {image} [{cmdline}]\n{}", r.show());
    r
}

/// The guest's verdict: exit status 0, no FAIL line, at least `min_ok` ok lines, and its
/// own count agreeing with the lines. Returns the number of ok lines.
fn assert_guest_passed(r: &Run, image: &str, min_ok: usize) -> usize {
    assert_eq!(r.report.end, VmEnd::ExitPort(0), "{image}: {}", r.show());
    assert_eq!(r.report.exit_status, 0);
    let fails: Vec<&str> = r.console.lines().filter(|l| l.contains(": FAIL ")).collect();
    assert!(fails.is_empty(), "{image}: {fails:#?}\n{}", r.show());
    let ok = r.console.lines().filter(|l| l.starts_with(&format!("{image}: ok   "))).count();
    assert!(ok >= min_ok, "{image}: only {ok} ok lines, want at least {min_ok}\n{}", r.show());
    assert!(
        r.console.contains(&format!("{image}: {ok} ok, 0 failed")),
        "{image}: the guest's own count differs from {ok} ok lines\n{}",
        r.show()
    );
    ok
}

// ------------------------------------------------------------------ expectations

const NOP_IO_DELAY: u32 = 1 << 1;
const POLL_CONTROL: u32 = 1 << 12;
/// CLOCKSOURCE, CLOCKSOURCE2, CLOCKSOURCE_STABLE_BIT.
const CLOCK_BITS: u32 = (1 << 0) | (1 << 3) | (1 << 24);
/// (call number, feature bit) of the hypercall-backed features.
const CALL_BITS: [(u64, u32); 4] = [(5, 7), (10, 11), (11, 13), (12, 16)];

fn clock_backed(facts: &HostFacts) -> bool {
    facts.stable_tsc && facts.tsc_khz.is_some_and(|k| k > 0)
}

/// CPUID 0x40000001.EAX with `[kvm] features` absent (docs/abi/kvm.md, "Feature bits").
fn default_features(facts: &HostFacts, hypercalls: bool, denied: &[u64]) -> u32 {
    let mut f = NOP_IO_DELAY | POLL_CONTROL;
    if clock_backed(facts) {
        f |= CLOCK_BITS;
    }
    for (nr, bit) in CALL_BITS {
        if hypercalls && !denied.contains(&nr) {
            f |= 1 << bit;
        }
    }
    f
}

/// The probe's verdict on a CPL-3 instruction: `abi` when it reaches the VMM, else `host`.
fn cpl3_mode(fate: CallFate) -> &'static str {
    if fate.trapped() {
        "abi"
    } else {
        "host"
    }
}

/// What the guest's `describe()` prints for an answer the host kernel gave.
fn describe_fate(fate: CallFate) -> Option<String> {
    match fate {
        CallFate::AnsweredByHost(rax) => {
            // The probe keeps EAX; a 64-bit guest sees it sign-extended.
            let s = i64::from(rax as u32 as i32);
            Some(if s < 0 && s > -2000 { format!("RAX=-{}", -s) } else { format!("RAX={rax:#x}") })
        }
        CallFate::InvalidOpcode => Some("#UD".into()),
        _ => None,
    }
}

/// The cmdline words for ring-3 calls on this host.
fn cpl3_args() -> String {
    let p = host().probe.as_ref().expect("the probe VM ran");
    format!("cpl3_vmcall={} cpl3_vmmcall={}", cpl3_mode(p.cpl3_vmcall), cpl3_mode(p.cpl3_vmmcall))
}

/// The ring-3 rows: the instructions this host traps reached the engine's ring check once per
/// number and instruction; the others were answered by the host kernel exactly as the probe
/// saw (64-bit) or by one of the host's own answers (32-bit, which the probe does not try),
/// and never reached the engine.
fn assert_cpl3(r: &Run, image: &str, bits64: bool) {
    let p = host().probe.as_ref().expect("the probe VM ran");
    let trapped = u64::from(p.cpl3_vmcall.trapped()) + u64::from(p.cpl3_vmmcall.trapped());
    for number in 1..=12 {
        assert_eq!(r.row(number).wrong_ring, trapped, "{image}: row {number}\n{}", r.show());
    }
    let host_lines = r.lines_after(image, "host: ");
    for (insn, fate) in [("VMCALL", p.cpl3_vmcall), ("VMMCALL", p.cpl3_vmmcall)] {
        let seen: Vec<&String> =
            host_lines.iter().filter(|l| l.contains(&format!(", {insn} at CPL 3"))).collect();
        if fate.trapped() {
            assert!(seen.is_empty(), "{image}: {insn} is trapped here: {seen:?}");
            continue;
        }
        assert_eq!(seen.len(), 16, "{image}: {insn} at CPL 3: {host_lines:#?}");
        for line in seen {
            let got = line.rsplit(" -> ").next().unwrap_or_default();
            if bits64 {
                let want = describe_fate(fate).unwrap_or_else(|| panic!("probe saw {fate:?}"));
                assert_eq!(got, want, "{image}: {line} (probe: {fate})");
            } else {
                assert!(["RAX=-1", "#GP", "#UD"].contains(&got), "{image}: {line}");
            }
        }
    }
}

/// The attribute map as the guest declared it, seen from the host: the engine's end-of-run
/// report equals the lines the guest predicted, and the personality's queries agree.
fn assert_gpa_map(r: &Run, image: &str, limit: usize) {
    let expected: Vec<String> = r.lines_after(image, "expect host report: ");
    assert!(expected.len() >= 3, "{image}: {expected:?}");
    let mut want = vec![format!(
        "kvm: KVM_HC_MAP_GPA_RANGE map holds {} range(s) (at most {limit})",
        expected.len()
    )];
    want.extend(expected);
    assert_eq!(r.engine.report(), want, "{image}\n{}", r.show());
    let kvm = r.engine.personality();
    let at = |gpa: u64| kvm.gpa_attributes(gpa).map(|a| (a.encrypted(), a.page_size()));
    assert_eq!(at(0x40_0000), Some((true, Some(4 << 10))));
    assert_eq!(at(0x40_1000), Some((false, Some(4 << 10))));
    assert_eq!(at(0x40_2fff), Some((false, Some(4 << 10))));
    assert_eq!(at(0x40_3000), None);
    assert_eq!(at(0x60_0000), Some((true, Some(2 << 20))));
    assert_eq!(at(0x7f_ffff), Some((true, Some(2 << 20))));
    assert_eq!(at(0x80_0000), None);
    assert_eq!(at(0x3ff_f000), Some((false, Some(4 << 10))), "the last page of 64 MiB");
}

fn enabled_cmdline() -> String {
    let facts = host().facts();
    format!(
        "expect=enabled features={:#x} hints=0 {} pairing={}",
        default_features(&facts, true, &[]),
        cpl3_args(),
        if facts.stable_tsc { "ok" } else { "eopnotsupp" }
    )
}

// ------------------------------------------------------------------------ tests

/// Hypercalls on, every backed feature: every row from a 64-bit caller and from
/// compatibility mode, ring 3 as this host lets it through, the map and the MSRs.
#[test]
fn abi_enabled_64bit_and_compat_callers() {
    let image = "kvm_abi64";
    let r = run_kvm(image, &ENABLED, &enabled_cmdline(), host());
    assert_guest_passed(&r, image, 138);
    assert_cpl3(&r, image, true);
    assert_gpa_map(&r, image, 4096);
    assert!(r.console.contains("calls from compatibility mode"), "{}", r.show());
    for number in [1, 5, 9, 10, 11, 12] {
        let c = r.row(number);
        assert!(c.calls > 0 && c.denied == 0, "row {number}: {c:?}");
    }
    // Refused SEND_IPI ICRs, bad pairings and invalid ranges are counted as errors.
    for number in [9, 10, 12] {
        assert!(r.row(number).errors > 0, "row {number}: {:?}", r.row(number));
    }
    // The self-kicks made `cli; hlt` return: two halts that did not end the run.
    assert!(r.report.stats.halts >= 2, "{:?}", r.report.stats);
    assert!(r.report.stats.interrupts >= 6, "{:?}", r.report.stats);
}

/// The same from a 32-bit protected-mode caller: -1000 reads 0xfffffc18, SEND_IPI's cluster
/// is 32; and a bounded map (`max_gpa_ranges = 4`) refuses a fifth range with -KVM_E2BIG.
#[test]
fn abi_enabled_32bit_callers_and_a_full_map() {
    let image = "kvm_abi_pvh32";
    let setup = Setup { kvm: "max_gpa_ranges = 4", ..ENABLED };
    let r = run_kvm(image, &setup, &format!("{} max_ranges=4", enabled_cmdline()), host());
    assert_guest_passed(&r, image, 124);
    assert_cpl3(&r, image, false);
    assert_gpa_map(&r, image, 4);
    let full = "kvm_abi_pvh32: ok   MAP_GPA_RANGE a new range when the map is full";
    assert!(r.console.contains(full), "{}", r.show());
}

/// Hypercalls off (the default): every number is unknown at CPL 0 (-KVM_ENOSYS, also from
/// compatibility mode), ring 3 gets -KVM_EPERM, and CPUID shows only the features that need
/// no hypercall; the MSRs still work.
#[test]
fn abi_disabled() {
    let facts = host().facts();
    let cmdline = format!(
        "expect=disabled features={:#x} {}",
        default_features(&facts, false, &[]),
        cpl3_args()
    );
    let setup = Setup { hypervisor: "hypercalls_enabled = false", kvm: "", vcpus: 1 };
    for (image, min_ok) in [("kvm_abi64", 85), ("kvm_abi_pvh32", 83)] {
        let r = run_kvm(image, &setup, &cmdline, host());
        assert_guest_passed(&r, image, min_ok);
        let (disabled, _, _) = r.report.refusals;
        assert!(disabled >= 34, "{image}: {:?}", r.report.refusals);
        assert!(r.report.rows.iter().all(|row| row.counters.calls == 0 && !row.permitted));
        assert!(r.engine.report().is_empty(), "{:?}", r.engine.report());
    }
}

/// Denied calls answer -KVM_EPERM (both instructions, and from compatibility mode) and the
/// feature bit of a denied call disappears; the calls left permitted keep working.
#[test]
fn abi_deny() {
    let facts = host().facts();
    let denied = [1, 10, 12];
    let cmdline = format!(
        "expect=deny deny=1,10,12 features={:#x} {} pairing={}",
        default_features(&facts, true, &denied),
        cpl3_args(),
        if facts.stable_tsc { "ok" } else { "eopnotsupp" }
    );
    let setup = Setup {
        hypervisor: "hypercalls_enabled = true\n\
                     deny = [\"KVM_HC_VAPIC_POLL_IRQ\", \"KVM_HC_SEND_IPI\", 12]",
        kvm: "",
        vcpus: 1,
    };
    for (image, min_ok) in [("kvm_abi64", 94), ("kvm_abi_pvh32", 88)] {
        let r = run_kvm(image, &setup, &cmdline, host());
        assert_guest_passed(&r, image, min_ok);
        for number in denied {
            let c = r.row(number);
            assert!(c.denied >= 2 && c.calls == 0, "{image}: row {number}: {c:?}");
        }
        for number in [5, 9, 11] {
            assert!(r.row(number).calls > 0, "{image}: row {number}: {:?}", r.row(number));
        }
        assert!(r.engine.report().is_empty(), "nothing was declared: {:?}", r.engine.report());
    }
}

/// An explicit `[kvm] features` list shows exactly those bits: calls whose bit is missing
/// answer -KVM_ENOSYS, MSRs whose bit is missing raise #GP, `hints_realtime` sets EDX.
#[test]
fn abi_explicit_feature_lists() {
    // (the [kvm] lines, EAX, the hints, the minimum ok lines for the 64-bit and 32-bit image)
    let cases: [(&str, u32, &str, [usize; 2]); 2] = [
        (
            "features = [\"pv_unhalt\", \"pv_sched_yield\", \"nop_io_delay\"]\nhints_realtime = true",
            (1 << 7) | (1 << 13) | NOP_IO_DELAY,
            "hints=1",
            [79, 73],
        ),
        ("features = []", 0, "hints=0", [74, 68]),
    ];
    for (kvm, eax, hints, min_ok) in cases {
        let setup = Setup { kvm, ..ENABLED };
        let cmdline = format!(
            "expect=list features={eax:#x} {hints} {} pairing={}",
            cpl3_args(),
            if host().stable_tsc { "ok" } else { "eopnotsupp" }
        );
        for (image, min_ok) in ["kvm_abi64", "kvm_abi_pvh32"].into_iter().zip(min_ok) {
            let r = run_kvm(image, &setup, &cmdline, host());
            assert_guest_passed(&r, image, min_ok);
            assert_eq!(r.engine.personality().features().bits(), eax, "{kvm}");
            // The hidden calls are permitted by the policy but answer -KVM_ENOSYS: the
            // handler ran and failed.
            for (number, bit) in CALL_BITS {
                let c = r.row(number);
                if eax & (1 << bit) == 0 {
                    assert!(c.calls > 0 && c.errors == c.calls, "{image} row {number}: {c:?}");
                }
            }
        }
    }
}

/// A host whose TSC is not stable: no kvmclock bit, CLOCK_PAIRING answers -KVM_EOPNOTSUPP,
/// kvmclock's MSRs raise #GP, and asking for a clock feature stops the build.
#[test]
fn abi_and_kvmclock_without_a_stable_tsc() {
    let unstable = host_without_stable_tsc();
    let facts = unstable.facts();
    let eax = default_features(&facts, true, &[]);
    assert_eq!(eax & CLOCK_BITS, 0);
    let cmdline =
        format!("expect=enabled features={eax:#x} hints=0 {} pairing=eopnotsupp", cpl3_args());
    let r = run_kvm("kvm_abi64", &ENABLED, &cmdline, &unstable);
    assert_guest_passed(&r, "kvm_abi64", 120);
    let r = run_kvm("kvm_clock64", &ENABLED, "", &unstable);
    assert_guest_passed(&r, "kvm_clock64", 4);
    assert!(r.console.contains("CLOCKSOURCE2 not shown"), "{}", r.show());

    let cfg = config(&Setup { kvm: "features = [\"clocksource2\"]", ..ENABLED }, "");
    match build_engine(&cfg.config, &facts) {
        Err(BuildError::Unbacked { section: "kvm", message }) => {
            assert!(message.contains("clocksource2"), "{message}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("clocksource2 built on a host without a stable TSC"),
    }
    let err = run(&cfg, RunOptions { host: Some(unstable.clone()), ..RunOptions::default() })
        .expect_err("refused");
    assert!(matches!(err, VmmError::Personality { .. }), "{err}");
}

fn tsc_khz_arg() -> String {
    host().tsc_khz.map(|k| format!("tsc_khz={k}")).unwrap_or_default()
}

/// kvmclock through MSR 0x4b564d01: the page and its versions, monotonic readings for a
/// second, a rate equal to the TSC's and to the host's wall clock within 1% over that second,
/// the wall clock, unaligned and out-of-RAM registrations, the deprecated MSR.
#[test]
fn kvmclock_is_monotonic_and_runs_at_the_tsc_rate() {
    assert!(clock_backed(&host().facts()), "this host backs kvmclock: {:?}", host().facts());
    for (image, min_ok) in [("kvm_clock64", 27), ("kvm_clock_pvh32", 27)] {
        let r = run_kvm(image, &ENABLED, &tsc_khz_arg(), host());
        assert_guest_passed(&r, image, min_ok);
        for what in ["at the TSC's rate within 1%", "at the host wall clock's rate within 1%"] {
            assert!(r.console.contains(what), "{image}: {what}\n{}", r.show());
        }
        assert!(r.row(9).calls >= 3, "{:?}", r.row(9));
        assert!(r.report.stats.msrs >= 11, "{:?}", r.report.stats);
        assert!(r.report.elapsed >= Duration::from_secs(1));
        // The guest ended by switching both system-time MSRs off (they share one value).
        assert_eq!(r.engine.personality().kvmclock_msr(0), Some(0));
    }
}

/// Several vCPUs: KICK_CPU wakes a vCPU from `cli; hlt`, a kick made before the halt is
/// latched (by KICK_CPU and by a REMRD SEND_IPI), SEND_IPI delivers to every addressed vCPU's
/// IDT and answers how many took it, SCHED_YIELD names another vCPU, and kvmclock readings
/// alternating between vCPUs never go backwards.
#[test]
fn smp_kick_cpu_and_send_ipi() {
    for (image, vcpus) in [("kvm_smp64", 2), ("kvm_smp64", 4), ("kvm_smp_pvh32", 3)] {
        let setup = Setup { vcpus, ..ENABLED };
        let r = run_kvm(image, &setup, &format!("vcpus={vcpus} {}", tsc_khz_arg()), host());
        assert_guest_passed(&r, image, 26 + vcpus as usize);
        assert_eq!(r.row(5).calls, 2, "KICK_CPU: {:?}", r.row(5));
        assert_eq!(r.row(10).calls, 3, "SEND_IPI: {:?}", r.row(10));
        assert_eq!(r.row(10).errors, 0);
        assert!(r.row(11).calls >= 1, "SCHED_YIELD: {:?}", r.row(11));
        let s = &r.report.stats;
        // vCPU 1 halted five times; the IPIs were injected into every vCPU.
        assert!(s.halts >= 5, "{s:?}");
        assert!(s.interrupts > u64::from(vcpus), "{s:?}");
    }
}
