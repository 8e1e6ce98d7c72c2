//! The guest runtime's own self-test passes on this backend (every boot flavour, 4 vCPUs): exit
//! status 0, no `FAIL` line, at least a minimum number of `ok` lines and its own count agreeing.

mod common;

use common::{run_guest, show};
use polyvisor_vmm::VmEnd;

#[test]
fn runtime_self_test_passes_on_every_flavour() {
    for name in ["rtcheck64", "rtcheck_rwx64", "rtcheck_pvh64", "rtcheck_pvh32"] {
        let (r, _) = run_guest(name, 4, "hc=both ring3_hc vcpus=4");
        println!("{}", r.console_text());
        assert_eq!(r.end, VmEnd::ExitPort(0), "{name}: {}", show(&r));
        let text = r.console_text();
        assert!(!text.contains(": FAIL "), "{name}: {}", show(&r));
        let ok = text.lines().filter(|l| l.starts_with(&format!("{name}: ok   "))).count();
        assert!(ok >= 25, "{name}: only {ok} ok lines\n{}", show(&r));
        assert!(text.contains(&format!("{name}: {ok} ok, 0 failed")), "{name}: {}", show(&r));
    }
}
