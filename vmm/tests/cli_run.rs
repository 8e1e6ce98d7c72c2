//! `polyvisor run` and `polyvisor host-check` as a user runs them: the built-in guest in every
//! mode, asserting what the guest printed.

mod common;
use common::polyvisor;

#[test]
fn default_run_boots_the_builtin_guest_with_hypercalls_off() {
    let (code, out, err) = polyvisor(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("signature \"bhyve bhyve\""), "{out}");
    assert!(out.contains("VMCALL faulted with #UD: hypercalls are disabled"), "{out}");
    assert!(err.contains("0 hypercalls served, 1 refused"), "{err}");
}

#[test]
fn every_mode_answers_the_builtin_guests_hypercall() {
    let cases = [
        ("bhyve", "-> bhyve", "answer:    rax = 0x0 (0)"),
        ("kvm", "-> KVM", "answer:    rax = 0x0 (0)"),
        ("hyperv", "-> Hyper-V", "HV_STATUS_SUCCESS"),
        ("xen", "-> Xen", "(Xen version 4.17)"),
    ];
    for (mode, identity, answer) in cases {
        let (code, out, err) = polyvisor(&["run", "--mode", mode, "--enable-hypercalls"]);
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert!(out.contains(identity), "{mode}: {out}");
        assert!(out.contains(answer), "{mode}: {out}");
        assert!(err.contains("1 hypercalls served, 0 refused"), "{mode}: {err}");
    }
}

#[test]
fn run_with_a_bad_kernel_is_a_kernel_error() {
    let dir = std::env::temp_dir().join(format!("polyvisor-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.elf");
    std::fs::write(&empty, b"").unwrap();
    let (code, _, err) = polyvisor(&["run", "--kernel", empty.to_str().unwrap()]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("empty.elf"), "{err}");
}

/// A policy name the mode lacks, or a feature the host cannot back, is a configuration error
/// for `run` as for `config check`: status 3 and the place in the file.
#[test]
fn run_locates_a_policy_name_the_mode_lacks() {
    let dir = std::env::temp_dir().join(format!("polyvisor-cli-run-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("deny.toml");
    std::fs::write(
        &file,
        "[hypervisor]\nmode = \"xen\"\nhypercalls_enabled = true\n\
         deny = [\"__HYPERVISOR_console_io\", \"no_such_call\"]\n",
    )
    .unwrap();
    let (code, _, err) = polyvisor(&["run", file.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("deny.toml:4:36:") && err.contains("\"no_such_call\""), "{err}");
    let (check, _, check_err) = polyvisor(&["config", "check", file.to_str().unwrap()]);
    assert_eq!((check, check_err.trim()), (code, err.trim()));
}

#[test]
fn host_check_reports_the_trap_and_the_cpl3_limit() {
    let (code, out, err) = polyvisor(&["host-check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hypercall trap"), "{out}");
    assert!(out.contains("CPL 3 hypercalls"), "{out}");
    for mode in ["bhyve", "kvm", "hyperv", "xen"] {
        assert!(out.contains(&format!("    {mode}")), "{out}");
    }
    let (code, json, _) = polyvisor(&["host-check", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v.is_object(), "{json}");
}
