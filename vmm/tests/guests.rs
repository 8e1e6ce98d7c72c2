//! The backend under real guests (tests/guests `vmmtest*`) with the test personality.

mod common;

use std::time::{Duration, Instant};

use common::{config, run_guest, run_image, show};
use polyvisor_config::InstructionChoice;
use polyvisor_vmm::{TrapStrategy, VmEnd};

fn lines(r: &polyvisor_vmm::RunReport) -> String {
    r.console_text()
}

fn passes(name: &str, test: &str, vcpus: u32) -> polyvisor_vmm::RunReport {
    let (r, _) = run_guest(name, vcpus, &format!("test={test}"));
    assert_eq!(r.end, VmEnd::ExitPort(0), "{name} {test}: {}", show(&r));
    assert!(lines(&r).contains("done: ok"), "{name} {test}: {}", show(&r));
    r
}

#[test]
fn raw_hypercalls_at_cpl0_separate_segments() {
    let r = passes("vmmtest64", "hcall", 1);
    let t = lines(&r);
    assert!(t.contains("VMCALL inc(41) = 42 fault=0"), "{t}");
    assert!(t.contains("VMMCALL inc(41) = 42 fault=0"), "{t}");
    assert_eq!(r.trap, TrapStrategy::WriteProtect);
    assert!(r.stats.hypercalls >= 7, "{:?}", r.stats);
    let summary = r.to_string();
    println!("{summary}");
    assert!(summary.contains("exit status 0"), "{summary}");
    assert!(summary.contains(" inc "), "{summary}");
}

#[test]
fn raw_hypercalls_at_cpl0_single_rwx_segment() {
    let r = passes("vmmtest_rwx64", "hcall", 1);
    let t = lines(&r);
    assert!(t.contains("VMCALL inc(41) = 42 fault=0"), "{t}");
    assert!(t.contains("VMMCALL add(40,2) = 42 fault=0"), "{t}");
}

#[test]
fn raw_hypercalls_in_32bit_protected_mode() {
    let r = passes("vmmtest_pvh32", "hcall", 1);
    assert!(lines(&r).contains("VMCALL inc(41) = 42 fault=0"));
}

#[test]
fn personality_cpuid_leaves_per_vcpu() {
    let r = passes("vmmtest64", "cpuid", 2);
    let t = lines(&r);
    assert!(t.contains("sig=\"PolyvisorTst\""), "{t}");
    assert!(t.contains("on vCPU 1: eax=1 rc=0"), "{t}");
}

#[test]
fn synthetic_msrs_reach_the_personality() {
    let (r, p) = run_guest("vmmtest64", 1, "test=msr");
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_eq!(*p.msr_writes.lock().unwrap(), vec![(0, 0x1234_5678_9abc)]);
    let (r, _) = run_guest("vmmtest64", 1, "test=msr poweroff");
    assert_eq!(r.end, VmEnd::Guest(polyvisor_core::ExitReason::Poweroff(9)), "{}", show(&r));
    assert_eq!(r.exit_status, 9);
}

#[test]
fn ud_lands_in_the_guest_handler() {
    let r = passes("vmmtest64", "ud", 1);
    let t = lines(&r);
    assert!(t.contains("ud call: fault=6"), "{t}");
    assert!(t.contains("VMMCALL inc(1) = 2 fault=0"), "{t}");
}

#[test]
fn instruction_choice_makes_the_other_one_ud() {
    let image = polyvisor_guests::image("vmmtest64").unwrap();
    let mut cfg = config(1, "test=ud");
    cfg.config.host.instruction = InstructionChoice::Vmcall;
    let (r, _) = run_image(image, &cfg);
    let t = lines(&r);
    assert!(t.contains("VMMCALL inc(1) = fffffffffffffffe fault=6"), "{}", show(&r));
    assert!(t.contains("VMCALL inc(1) = 2 fault=0"), "{t}");
}

#[test]
fn cpl3_calls_show_the_hosts_behaviour() {
    let host = polyvisor_vmm::host_check();
    let probe = host.probe.clone().unwrap();
    let (r, p) = run_guest("vmmtest64", 1, "test=cpl3");
    let t = lines(&r);
    println!("{t}\n{}", host.cpl3_summary());
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    use polyvisor_vmm::trap::probe::CallFate;
    for (insn, fate) in [("VMMCALL", probe.cpl3_vmmcall), ("VMCALL", probe.cpl3_vmcall)] {
        let line = t
            .lines()
            .find(|l| l.contains(&format!("cpl3 {insn} inc_user(41)")))
            .unwrap_or_else(|| panic!("no line for {insn}: {t}"));
        match fate {
            // Trapped: the engine served it and saw CPL 3.
            CallFate::TrappedAsMmio | CallFate::TrappedAsXen => {
                assert!(line.ends_with("fault=0 rax=2a"), "{line}");
            }
            CallFate::AnsweredByHost(_) => {
                assert!(line.ends_with("fault=0 rax=ffffffffffffffff"), "{line}");
            }
            CallFate::InvalidOpcode => assert!(line.contains("fault=6"), "{line}"),
            other => panic!("probe saw {other:?}"),
        }
    }
    if probe.cpl3_vmmcall.trapped() || probe.cpl3_vmcall.trapped() {
        assert_eq!(p.last_cpl.load(std::sync::atomic::Ordering::Relaxed), 3);
    }
    assert!(!host.cpl3_trappable);
}

#[test]
fn interrupt_wakes_a_halted_vcpu() {
    let r = passes("vmmtest64", "irq", 2);
    let t = lines(&r);
    assert!(t.contains("vCPU 1 woke with vector 0x40"), "{t}");
    assert!(r.stats.interrupts >= 1 && r.stats.halts >= 1, "{:?}", r.stats);
}

#[test]
fn interrupt_reaches_a_running_vcpu() {
    let r = passes("vmmtest_pvh32", "irq", 2);
    assert!(lines(&r).contains("vCPU 1 woke with vector 0x40"), "{}", show(&r));
    let r = passes("vmmtest64", "irqspin", 2);
    assert!(lines(&r).contains("vCPU 1 woke with vector 0x40"), "{}", show(&r));
    assert!(r.stats.interrupts >= 1, "{:?}", r.stats);
}

#[test]
fn halting_hypercall_is_woken_by_another_vcpu() {
    passes("vmmtest64", "halt", 2);
}

#[test]
fn code_in_data_pages_and_self_patching_text() {
    for name in ["vmmtest64", "vmmtest_rwx64"] {
        let r = passes(name, "code", 1);
        assert!(lines(&r).contains("hypercall from a data page = 7 fault=0"), "{}", show(&r));
        assert!(r.stats.lazy_protects >= 1, "{name}: {:?}", r.stats);
    }
}

#[test]
fn overlays_trap_calls_refuse_writes_and_restore_ram() {
    let r = passes("vmmtest64", "overlay", 1);
    assert!(lines(&r).contains("call through the overlay = 100 fault=0"), "{}", show(&r));
}

#[test]
fn platform_translate_xmm_bounded_halt_and_tlb_flush() {
    let t0 = Instant::now();
    let r = passes("vmmtest64", "platform", 1);
    assert!(t0.elapsed() >= Duration::from_millis(20));
    let t = lines(&r);
    assert!(t.contains("xmm1 = 1122334455667788 fault=0"), "{t}");
    let r = passes("vmmtest_pvh32", "platform", 1);
    assert!(lines(&r).contains("bounded halt returned 0"));
}

#[test]
fn probe_events_go_to_the_probe_log_as_json_lines() {
    let dir = std::env::temp_dir().join(format!("polyvisor-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("probes.jsonl");
    let _ = std::fs::remove_file(&log);
    let image = polyvisor_guests::image("vmmtest64").unwrap();
    let mut cfg = config(1, "test=platform");
    cfg.config.bhyve.probe_log = Some(log.clone());
    let (r, _) = run_image(image, &cfg);
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    let text = std::fs::read_to_string(&log).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["probe_id"], 5);
    assert_eq!(v["name"], "test:::probe");
    assert_eq!(v["args"][0], 77);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_tsc_matches_the_platform() {
    let (r, _) = run_guest("vmmtest64", 1, "test=tsc");
    let t = lines(&r);
    let line = t.lines().find(|l| l.contains("tsc guest_before=")).expect("tsc line");
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let n = nums.len();
    let (a, host, b) = (nums[n - 3], nums[n - 2], nums[n - 1]);
    println!("{line} (host RDTSC now {})", polyvisor_vmm::vm::read_tsc());
    assert!(a <= host && host <= b, "{line}");
}

#[test]
fn poweroff_hypercall_sets_the_exit_status() {
    let (r, _) = run_guest("vmmtest64", 1, "test=poweroff");
    assert_eq!(r.exit_status, 7, "{}", show(&r));
}

#[test]
fn triple_fault_ends_the_run_quickly_with_a_dump() {
    let t0 = Instant::now();
    let (r, _) = run_guest("vmmtest64", 1, "test=triple");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(matches!(r.end, VmEnd::TripleFault { .. }), "{}", show(&r));
    assert_eq!(r.exit_status, polyvisor_vmm::end::STATUS_TRIPLE_FAULT);
    assert!(r.message.contains("triple-faulted") && r.message.contains("rip="), "{}", r.message);
}

#[test]
fn unknown_port_ends_the_run_quickly_with_a_dump() {
    let t0 = Instant::now();
    let (r, _) = run_guest("vmmtest64", 1, "test=badport");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(matches!(r.end, VmEnd::Unhandled { .. }), "{}", show(&r));
    assert!(r.message.contains("out 0x80") && r.message.contains("rip="), "{}", r.message);
    assert_eq!(r.exit_status, polyvisor_vmm::end::STATUS_UNHANDLED);
}

#[test]
fn every_vcpu_halted_ends_the_run() {
    let t0 = Instant::now();
    let (r, _) = run_guest("vmmtest64", 1, "test=allhalt");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(matches!(r.end, VmEnd::AllHalted { .. }), "{}", show(&r));
}

#[test]
fn timeout_ends_a_spinning_guest() {
    let image = polyvisor_guests::image("vmmtest64").unwrap();
    let cfg = config(1, "test=hang");
    let (p, engine) = polyvisor_vmm::testing::test_engine();
    drop(p);
    let r = polyvisor_vmm::run(
        &cfg,
        polyvisor_vmm::RunOptions {
            capture_console: true,
            kernel_override: Some(image.to_vec()),
            dispatch: Some(engine),
            timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.end, VmEnd::Timeout(Duration::from_millis(300)));
    assert_eq!(r.exit_status, 124);
}

#[test]
fn bench_hypercall_vs_port_io() {
    let (r, _) = run_guest("vmmtest64", 1, "test=bench count=3000");
    let t = lines(&r);
    println!("{t}{:?} in {:?}", r.stats, r.elapsed);
    assert!(t.contains("bench n=3000"), "{}", show(&r));
}

#[test]
fn trap_choices_the_host_lacks_are_refused_with_the_reason() {
    use polyvisor_config::TrapStrategyChoice;
    let image = polyvisor_guests::image("vmmtest64").unwrap();
    let (_, engine) = polyvisor_vmm::testing::test_engine();
    let mut cfg = config(1, "test=ud");
    cfg.config.host.trap = TrapStrategyChoice::XenIntercept;
    let host = polyvisor_vmm::host_check();
    let err = polyvisor_vmm::run(
        &cfg,
        polyvisor_vmm::RunOptions {
            kernel_override: Some(image.to_vec()),
            dispatch: Some(engine.clone()),
            ..Default::default()
        },
    );
    if host.strategy != TrapStrategy::XenIntercept {
        let e = err.expect_err("no Xen intercept here").to_string();
        assert!(e.contains("CONFIG_KVM_XEN"), "{e}");
    }
    // No trap at all: refused while hypercalls are enabled...
    cfg.config.host.trap = TrapStrategyChoice::None;
    let e = polyvisor_vmm::run(
        &cfg,
        polyvisor_vmm::RunOptions {
            kernel_override: Some(image.to_vec()),
            dispatch: Some(engine.clone()),
            ..Default::default()
        },
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains("needs a hypercall trap"), "{e}");
    // ...and with hypercalls off the guest's calls raise #UD (the quirk is turned off).
    cfg.config.hypervisor.hypercalls_enabled = false;
    let (r, _) = run_image(image, &cfg);
    assert_eq!(r.trap, TrapStrategy::None);
    assert!(lines(&r).contains("VMCALL inc(1) = fffffffffffffffe fault=6"), "{}", show(&r));
}

#[test]
fn smp_hypercalls_while_the_layout_changes() {
    for name in ["vmmtest64", "vmmtest_pvh32"] {
        let r = passes(name, "smp", 4);
        println!("{}{:?}", lines(&r), r.stats);
        assert!(r.stats.hypercalls >= 6000, "{name}: {:?}", r.stats);
    }
}
