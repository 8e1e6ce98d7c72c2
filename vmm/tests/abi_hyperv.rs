//! The hyperv personality under real guests (tests/guests `hyperv_features*`, `hyperv_linux*`):
//! the conformance guest reads its expectations from CPUID, so the same program runs under
//! several `[hyperv]` configurations; the host checks that it passed, that it checked enough,
//! and what the VMM saw (per-call counters, refusals, the debug channel's files, the end).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use polyvisor_config::{Config, HypervisorMode, LoadedConfig};
use polyvisor_core::{CallSelector, ExitReason};
use polyvisor_vmm::{run, HostReport, RunOptions, RunReport, VmEnd};

mod common;
use common::cpl3_fate as fate;

/// The host check, once for the whole file (the probe VM is not free).
fn host() -> &'static HostReport {
    static HOST: OnceLock<HostReport> = OnceLock::new();
    HOST.get_or_init(polyvisor_vmm::host_check)
}

/// The command-line words that tell the guest what CPL-3 calls do here.
fn cpl3_words(image: &str) -> String {
    let probe = host().probe.clone().expect("the host probe ran");
    let b32 = image.ends_with("pvh32");
    format!(
        "cpl3_vmcall={} cpl3_vmmcall={}",
        fate(probe.cpl3_vmcall, b32, true),
        fate(probe.cpl3_vmmcall, b32, false)
    )
}

/// A hyperv VM with hypercalls on, 64 MiB, `vcpus`, the guest's command line.
fn config(vcpus: u32, cmdline: &str, edit: impl FnOnce(&mut Config)) -> LoadedConfig {
    let mut c = Config::default();
    c.hypervisor.mode = HypervisorMode::Hyperv;
    c.hypervisor.hypercalls_enabled = true;
    c.vm.vcpus = vcpus;
    c.vm.memory_mib = 64;
    c.vm.cmdline = cmdline.to_string();
    edit(&mut c);
    LoadedConfig { config: c, path: None, source: String::new() }
}

fn run_image(image: &str, cfg: &LoadedConfig) -> RunReport {
    let bytes = polyvisor_guests::image(image).unwrap_or_else(|| panic!("no guest {image}"));
    run(
        cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(bytes.to_vec()),
            timeout: Some(Duration::from_secs(30)),
            host: Some(host().clone()),
            ..RunOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{image}: {e}"))
}

fn show(r: &RunReport) -> String {
    format!("--- console ---\n{}--- end ---\n{r}", r.console_text())
}

/// Lines `<guest>: <key> <value>` as (key, value).
fn tagged<'a>(text: &'a str, key: &str) -> Vec<(&'a str, u64)> {
    text.lines()
        .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.strip_prefix(key))
        .filter_map(|rest| {
            let rest = rest.trim();
            let (name, n) = rest.rsplit_once(' ').unwrap_or(("", rest));
            Some((name, n.parse().ok()?))
        })
        .collect()
}

fn one(text: &str, key: &str) -> u64 {
    match tagged(text, key).as_slice() {
        [(_, n)] => *n,
        other => panic!("want one `{key}` line, got {other:?}\n{text}"),
    }
}

/// The guest's verdict: no FAIL line, at least `min_ok` ok lines, its own total agreeing.
fn assert_checks(r: &RunReport, min_ok: usize) -> usize {
    let text = r.console_text();
    let fails: Vec<&str> = text.lines().filter(|l| l.contains(": FAIL ")).collect();
    assert!(fails.is_empty(), "failed checks:\n{}\n{}", fails.join("\n"), show(r));
    let ok = text.lines().filter(|l| l.contains(": ok   ")).count();
    assert!(ok >= min_ok, "only {ok} checks ran (want >= {min_ok})\n{}", show(r));
    assert!(
        text.lines().any(|l| l.ends_with(&format!(": {ok} ok, 0 failed"))
            || l.ends_with(&format!(": {ok} ok, 0 failed before the end"))),
        "the guest's total disagrees with {ok} ok lines\n{}",
        show(r)
    );
    ok
}

/// What the guest counted against the engine's counters: calls per handler, decoder
/// refusals (#UD before any lookup), unknown codes, refusals while disabled, denied calls.
fn assert_counters(r: &RunReport) {
    let text = r.console_text();
    let counted = tagged(&text, "count ");
    assert_eq!(counted.len(), 13, "one count line per call\n{text}");
    for (name, n) in counted {
        let row = r.rows.iter().find(|row| row.name == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(row.counters.calls, n, "{name}: calls the VMM served vs the guest's\n{r}");
    }
    let (disabled, unknown, malformed) = r.refusals;
    assert_eq!(malformed, one(&text, "decoder-refusals"), "decoder #UDs\n{r}");
    assert_eq!(unknown, one(&text, "unknown-codes"), "unknown codes\n{r}");
    assert_eq!(disabled, one(&text, "disabled-refusals"), "refused while disabled\n{r}");
    let denied: u64 = r.rows.iter().map(|row| row.counters.denied).sum();
    assert_eq!(denied, one(&text, "denied-calls"), "denied by the policy\n{r}");
}

fn features(image: &str, vcpus: u32, words: &str, edit: impl FnOnce(&mut Config)) -> RunReport {
    // The guest compares CPUID's maximum VP count with the vCPUs it was given.
    let cmdline = format!("vcpus={vcpus} {words} {}", cpl3_words(image));
    let r = run_image(image, &config(vcpus, cmdline.trim(), edit));
    println!("{}", show(&r));
    r
}

/// Checks that exist only when the host backs the reference TSC page and the frequency MSRs
/// (a known, stable TSC): the minimum counts below allow for a host without them.
const HOST_DEPENDENT: usize = 12;

/// Privileges beyond the defaults: PostMessages, SignalEvents, Debugging.
const EXTRA_PRIVILEGES: u64 = (1 << 36) | (1 << 37) | (1 << 43);
/// Features beyond the defaults: guest debugging, XMM input, extended GVA ranges.
const EXTRA_FEATURES: u32 = (1 << 1) | (1 << 4) | (1 << 14);
/// Every recommendation this VMM backs (its `flush_guest_tlb` serves the remote flush).
const ALL_RECOMMENDATIONS: u32 = 0xc24;

/// A scratch folder for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("polyvisor-abi-hyperv-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// The defaults plus every extra the personality backs, a debug channel through `dir`.
fn extras(c: &mut Config, dir: &Path, host_bytes: &[u8]) {
    let defaults =
        polyvisor_personalities::hyperv::cpuid::Backing::new(&host().facts(), &Config::default());
    c.hyperv.privileges = Some(defaults.default_privileges() | EXTRA_PRIVILEGES);
    c.hyperv.features = Some(defaults.default_features() | EXTRA_FEATURES);
    c.hyperv.recommendations = Some(ALL_RECOMMENDATIONS);
    let input = dir.join("debug.in");
    std::fs::write(&input, host_bytes).expect("debug input");
    c.hyperv.debug_output = Some(dir.join("debug.out"));
    c.hyperv.debug_input = Some(input);
}

const HOST_BYTES: &str = "kd-from-the-host";
const GUEST_BYTES: &str = "polyvisor: bytes from the guest debugger\n";

fn extra_run(image: &str, name: &str, min_ok: usize) {
    let dir = scratch(name);
    let r = features(image, 2, &format!("debug_in={HOST_BYTES}"), |c| {
        extras(c, &dir, HOST_BYTES.as_bytes())
    });
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_checks(&r, min_ok);
    assert_counters(&r);
    // Guest bytes reached the host, and the host's came back (the guest echoes them).
    let out = std::fs::read(dir.join("debug.out")).expect("debug output written");
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("{GUEST_BYTES}echo: {HOST_BYTES}\n"),
        "the debug channel's output file"
    );
    let served = |name: &str| r.rows.iter().find(|row| row.name == name).unwrap().counters;
    assert_eq!(served("HvCallRetrieveDebugData").errors, 6, "five error rows and NO_DATA");
    assert!(r.stats.interrupts >= 6, "IPIs injected: {:?}", r.stats);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

// ------------------------------------------------------------------------------------------
// The conformance guest under several CPUID configurations

#[test]
fn defaults_64bit_two_vcpus() {
    let r = features("hyperv_features64", 2, "", |_| {});
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_checks(&r, 195 - HOST_DEPENDENT);
    assert_counters(&r);
}

#[test]
fn defaults_32bit_two_vcpus() {
    let r = features("hyperv_features_pvh32", 2, "", |_| {});
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_checks(&r, 195 - HOST_DEPENDENT);
    assert_counters(&r);
}

/// Only AccessHypercallMsrs and AccessVpIndex, no features, no recommendations, no spinlock
/// notification: every other MSR is a #GP and every gated call ACCESS_DENIED.
fn minimal(c: &mut Config) {
    c.hyperv.privileges = Some((1 << 5) | (1 << 6));
    c.hyperv.features = Some(0);
    c.hyperv.recommendations = Some(0);
    c.hyperv.spinlock_retries = 0xffff_ffff;
}

#[test]
fn minimal_privileges_64bit() {
    let r = features("hyperv_features64", 1, "", minimal);
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_checks(&r, 162);
    assert_counters(&r);
    let text = r.console_text();
    assert!(text.contains("ok   MSR 0x40000020 hidden: #GP"), "{text}");
    assert!(text.contains("ok   FlushSpace VP 0: gated"), "{text}");
}

#[test]
fn minimal_privileges_32bit() {
    let r = features("hyperv_features_pvh32", 1, "", minimal);
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_checks(&r, 162);
    assert_counters(&r);
}

#[test]
fn extra_privileges_64bit() {
    extra_run("hyperv_features64", "extra64", 220 - HOST_DEPENDENT);
}

#[test]
fn extra_privileges_32bit() {
    extra_run("hyperv_features_pvh32", "extra32", 218 - HOST_DEPENDENT);
}

#[test]
fn hypercalls_disabled_every_call_is_ud() {
    let r = features("hyperv_features64", 1, "expect=disabled", |c| {
        c.hypervisor.hypercalls_enabled = false;
    });
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_checks(&r, 182 - HOST_DEPENDENT);
    assert_counters(&r);
    assert!(r.refusals.0 >= 90, "{r}");
}

#[test]
fn a_denied_call_answers_access_denied() {
    let r = features("hyperv_features64", 1, "deny=0x8", |c| {
        c.hypervisor.deny =
            vec![polyvisor_config::Selector(CallSelector::Name("HvCallNotifyLongSpinWait".into()))];
    });
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_checks(&r, 189 - HOST_DEPENDENT);
    assert_counters(&r);
    let spin = r.rows.iter().find(|row| row.name == "HvCallNotifyLongSpinWait").unwrap();
    assert_eq!((spin.counters.denied, spin.counters.calls), (3, 0), "{r}");
}

#[test]
fn crash_ctl_ends_the_vm_with_the_crash_parameters() {
    let r = features("hyperv_features64", 1, "end=crash", |_| {});
    assert_checks(&r, 191 - HOST_DEPENDENT);
    match &r.end {
        VmEnd::Guest(ExitReason::Crash(msg)) => {
            assert!(msg.contains("P0=0x11 P1=0x22 P2=0x33 P3=0x44 P4=0x55"), "{msg}")
        }
        other => panic!("want a crash end, got {other:?}\n{}", show(&r)),
    }
    assert_eq!(r.exit_status, polyvisor_vmm::end::STATUS_CRASH);
}

#[test]
fn reset_msr_ends_the_vm_as_a_reboot() {
    let dir = scratch("reset32");
    let r =
        features("hyperv_features_pvh32", 2, &format!("end=reset debug_in={HOST_BYTES}"), |c| {
            extras(c, &dir, HOST_BYTES.as_bytes())
        });
    assert_checks(&r, 219 - HOST_DEPENDENT);
    assert_eq!(r.end, VmEnd::Guest(ExitReason::Reboot), "{}", show(&r));
    assert_eq!(r.exit_status, polyvisor_vmm::end::STATUS_REBOOT);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

// ------------------------------------------------------------------------------------------
// A Linux-style start-up, then Linux's hypercall wrappers through the page

fn linux(image: &str, edit: impl FnOnce(&mut Config)) -> RunReport {
    let r = run_image(image, &config(2, "", edit));
    println!("{}", show(&r));
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    r
}

fn calls(r: &RunReport, name: &str) -> u64 {
    r.rows.iter().find(|row| row.name == name).map_or(0, |row| row.counters.calls)
}

#[test]
fn linux_style_init_then_calls_through_the_page() {
    let r = linux("hyperv_linux64", |_| {});
    assert_checks(&r, 19 - 4);
    // The IPI hooks and hv_query_ext_cap; no flush without the recommendation.
    assert_eq!(calls(&r, "HvCallSendSyntheticClusterIpi"), 1, "{r}");
    assert_eq!(calls(&r, "HvCallSendSyntheticClusterIpiEx"), 1, "{r}");
    assert_eq!(calls(&r, "HvExtCallQueryCapabilities"), 1, "{r}");
    assert_eq!(calls(&r, "HvCallFlushVirtualAddressSpace"), 0, "{r}");
    assert_eq!(r.refusals, (0, 0, 0), "{r}");
}

#[test]
fn linux_style_init_with_the_remote_flush() {
    let r = linux("hyperv_linux64", |c| c.hyperv.recommendations = Some(ALL_RECOMMENDATIONS));
    assert_checks(&r, 22 - 4);
    assert_eq!(calls(&r, "HvCallFlushVirtualAddressSpace"), 2, "{r}");
    // 300 ranges: 256 per exit, so hv_do_rep_hypercall's one call takes two.
    assert_eq!(calls(&r, "HvCallFlushVirtualAddressList"), 2, "{r}");
}

#[test]
fn linux_style_init_32bit() {
    let r = linux("hyperv_linux_pvh32", |c| c.hyperv.recommendations = Some(ALL_RECOMMENDATIONS));
    assert_checks(&r, 22 - 4);
    assert_eq!(calls(&r, "HvCallFlushVirtualAddressList"), 2, "{r}");
    assert_eq!(calls(&r, "HvCallSendSyntheticClusterIpi"), 1, "{r}");
}
