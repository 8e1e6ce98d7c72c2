//! Golden files: what each mode shows a guest — its CPUID leaves and its hypercall table, with
//! hypercalls off (the default) and on — is kept under `tests/golden/`, so any change to it
//! is a reviewed diff. The host is the nominal one (`HostFacts::nominal()`: VMCALL, a stable
//! 1 GHz TSC), so the files do not depend on the machine. `POLYVISOR_BLESS=1 cargo test -p
//! polyvisor-vmm --test golden` rewrites them (docs/testing.md).

use std::path::PathBuf;

use polyvisor_config::{Config, HypervisorMode};
use polyvisor_personalities::{build_mode, HostFacts};
use polyvisor_vmm::tables::{cpuid_table, hypercall_table};

const MODES: [HypervisorMode; 4] =
    [HypervisorMode::Bhyve, HypervisorMode::Kvm, HypervisorMode::Hyperv, HypervisorMode::Xen];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

/// The file's expected content: the table with hypercalls off, then on.
fn render(mode: HypervisorMode, what: &str) -> String {
    let host = HostFacts::nominal();
    let mut out = format!(
        "# polyvisor {what} --mode {mode}, nominal host (VMCALL, stable 1 GHz TSC).\n\
         # Generated: POLYVISOR_BLESS=1 cargo test -p polyvisor-vmm --test golden\n"
    );
    for enabled in [false, true] {
        let mut config = Config::default();
        config.hypervisor.hypercalls_enabled = enabled;
        let engine = build_mode(mode, &config, &host).expect("the default configuration builds");
        let flag = if enabled { " --enable-hypercalls" } else { "" };
        out.push_str(&format!("\n## polyvisor {what} --mode {mode}{flag}\n"));
        out.push_str(&match what {
            "cpuid" => cpuid_table(&*engine, 0),
            _ => hypercall_table(&*engine),
        });
    }
    out
}

fn compare(what: &str) {
    let bless = std::env::var_os("POLYVISOR_BLESS").is_some_and(|v| v == "1");
    let mut differ = Vec::new();
    for mode in MODES {
        let path = golden_dir().join(format!("{mode}-{what}.txt"));
        let want = render(mode, what);
        if bless {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .map_or(have.lines().count().min(want.lines().count()), |i| i)
                + 1;
            differ.push(format!(
                "{} differs from line {line}:\n  file: {}\n  now:  {}",
                path.display(),
                have.lines().nth(line - 1).unwrap_or("(end of file)"),
                want.lines().nth(line - 1).unwrap_or("(end of output)")
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "what a guest sees changed; review it and rewrite the files with POLYVISOR_BLESS=1:\n{}",
        differ.join("\n")
    );
}

#[test]
fn cpuid_tables_match_the_golden_files() {
    compare("cpuid");
}

#[test]
fn hypercall_tables_match_the_golden_files() {
    compare("hypercalls");
}
