//! The guest runtime's own self-test passes on this backend (every boot flavour, 4 vCPUs).

mod common;

use common::{run_guest, show};
use polyvisor_vmm::VmEnd;

#[test]
fn runtime_self_test_passes_on_every_flavour() {
    for name in ["rtcheck64", "rtcheck_rwx64", "rtcheck_pvh64", "rtcheck_pvh32"] {
        let (r, _) = run_guest(name, 4, "hc=both ring3_hc vcpus=4");
        println!("{}", r.console_text());
        assert_eq!(r.end, VmEnd::ExitPort(0), "{name}: {}", show(&r));
    }
}
