//! host_check on the real /dev/kvm of this machine.

use std::time::Instant;

use polyvisor_vmm::host::host_check;
use polyvisor_vmm::TrapStrategy;

#[test]
fn host_check_reports_the_strategy_and_cpl3() {
    // Once to warm the page cache and the KVM module paths, then measured.
    let _ = host_check();
    let started = Instant::now();
    let report = host_check();
    let took = started.elapsed();
    println!("{report}");
    assert_eq!(report.api_version, 12);
    let probe = report.probe.as_ref().expect("probe ran");
    assert!(report.interrupt_delivery_verified, "{probe:#?}");
    assert_eq!(probe.ended, "completed", "{probe:#?}");
    if report.caps.xen_intercept() {
        assert_eq!(report.strategy, TrapStrategy::XenIntercept);
    } else {
        // These development hosts: the write-protect trap at CPL 0; at CPL 3 the host kernel
        // answers at least one of the instructions itself.
        assert_eq!(report.strategy, TrapStrategy::WriteProtect, "{probe:#?}");
        assert!(probe.cpl0_vmcall.trapped() && probe.cpl0_vmmcall.trapped());
        assert!(!report.cpl3_trappable, "{probe:#?}");
        let text = report.to_string();
        assert!(text.contains("CPL 3 hypercalls       cannot be trapped"), "{text}");
    }
    assert!(took.as_millis() < 50, "host_check took {took:?}");
}
