//! `polyvisor config check` and the table commands, run as a user runs them.

mod common;
use common::polyvisor;

fn check(text: &str) -> (i32, String) {
    let dir = tempdir();
    let path = dir.join("vm.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = polyvisor(&["config", "check", path.to_str().unwrap()]);
    (code, format!("{out}{err}").replace(&dir.display().to_string(), "DIR"))
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "polyvisor-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Ten and more kinds of bad configuration, each refused with status 3 and a message that
/// starts with the file, line and column of the offending value.
#[test]
fn config_check_rejects_bad_configs_with_locations() {
    let cases: &[(&str, &str)] = &[
        ("[hypervisor]\nmode = \"vmware\"\n", "DIR/vm.toml:2:8: unknown value `vmware`"),
        ("[vm]\nmemroy = 3\n", "DIR/vm.toml:2:1: unknown key `memroy`"),
        ("[hypervisr]\n", "DIR/vm.toml:1:2: unknown key `hypervisr`"),
        ("[hypervisor]\nhypercalls_enabled = 1\n", "DIR/vm.toml:2:22: invalid type"),
        ("[vm]\nmemory_mib = 0\n", "DIR/vm.toml:2:14: memory_mib must be between 2 and 65536"),
        ("[vm]\nvcpus = 65\n", "DIR/vm.toml:2:9: vcpus must be between 1 and 64"),
        ("[vm]\nboot = \"bios\"\n", "DIR/vm.toml:2:8: unknown value `bios`"),
        ("[host]\ntrap = \"int3\"\n", "DIR/vm.toml:2:8: unknown value `int3`"),
        ("[host]\ninstruction = \"sysenter\"\n", "DIR/vm.toml:2:15: unknown value `sysenter`"),
        ("[hypervisor]\ndeny = [-5]\n", "DIR/vm.toml:2:8: a hypercall is named by"),
        ("[vm]\nkernel = \"nope.elf\"\n", "DIR/vm.toml:2:10: kernel DIR/nope.elf: No such file"),
        ("[xen]\ndomid = 70000\n", "DIR/vm.toml:2:9: domid must be between 1 and 32751"),
        ("[hyperv]\nvendor_id = \"\"\n", "DIR/vm.toml:2:13: vendor_id must be 1 to 12"),
        ("[vm\n", "DIR/vm.toml:1:4: unclosed table"),
    ];
    for (text, expected) in cases {
        let (code, out) = check(text);
        assert_eq!(code, 3, "{text:?}: {out}");
        assert!(out.contains(expected), "{text:?}: got {out:?}, want {expected:?}");
    }
}

#[test]
fn config_check_accepts_the_examples() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = polyvisor(&["config", "check", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            assert!(out.contains("valid"), "{out}");
            seen += 1;
        }
    }
    assert!(seen >= 4, "one example per mode, found {seen}");
}

#[test]
fn missing_config_file_is_a_config_error() {
    let (code, _, err) = polyvisor(&["config", "check", "/nonexistent/vm.toml"]);
    assert_eq!(code, 3);
    assert!(err.contains("/nonexistent/vm.toml: No such file"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = polyvisor(&["cpuid", "--mode", "vmware"]);
    assert_eq!(code, 2);
    assert!(err.contains("vmware"), "{err}");
}
