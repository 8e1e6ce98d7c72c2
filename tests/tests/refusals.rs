//! How each ABI answers a call the engine refuses: disabled, unknown, wrong ring, denied.
//! The expectations are the ABIs' documented answers (docs/abi/*.md, docs/architecture.md).

use polyvisor_config::{Config, Selector};
use polyvisor_core::{CallSelector, Exception, HypervisorMode};
use polyvisor_tests::{Answer, Bench, ABIS};

const UD: Answer = Answer::Fault(Exception::InvalidOpcode);

fn neg(errno: u64) -> Answer {
    Answer::Returned(errno.wrapping_neg())
}

fn enabled() -> Config {
    let mut c = Config::default();
    c.hypervisor.hypercalls_enabled = true;
    c
}

/// A number no ABI uses.
const UNKNOWN: u64 = 0x7ff0;

#[test]
fn hypercalls_are_disabled_by_default() {
    for abi in ABIS {
        let bench = Bench::new(abi, Config::default());
        let expected = match abi.mode {
            HypervisorMode::Bhyve | HypervisorMode::Hyperv => UD,
            HypervisorMode::Kvm => neg(1000),
            HypervisorMode::Xen => neg(38),
        };
        let n = bench.number(abi.kernel_call);
        assert_eq!(bench.call(n, 0), expected, "{}", abi.mode);
        assert!(bench.engine.rows().iter().all(|r| !r.permitted), "{}", abi.mode);
    }
}

#[test]
fn enabling_them_lets_the_call_through() {
    for abi in ABIS {
        let bench = Bench::new(abi, enabled());
        let n = bench.number(abi.kernel_call);
        let answer = bench.call(n, 0);
        let expected = match abi.mode {
            // Reserved, unimplemented: the review's #UD, but only once enabled.
            HypervisorMode::Bhyve => UD,
            HypervisorMode::Kvm | HypervisorMode::Hyperv => Answer::Returned(0),
            // xen_version(XENVER_version): 4.17 by default.
            HypervisorMode::Xen => Answer::Returned(4 << 16 | 17),
        };
        assert_eq!(answer, expected, "{}", abi.mode);
    }
}

#[test]
fn unknown_calls() {
    for abi in ABIS {
        let bench = Bench::new(abi, enabled());
        let expected = match abi.mode {
            HypervisorMode::Bhyve => UD,
            HypervisorMode::Kvm => neg(1000),
            // HV_STATUS_INVALID_HYPERCALL_CODE
            HypervisorMode::Hyperv => Answer::Returned(2),
            HypervisorMode::Xen => neg(38),
        };
        assert_eq!(bench.call(UNKNOWN, 0), expected, "{}", abi.mode);
        assert_eq!(bench.engine.refusals().snapshot().1, 1, "{}: counted as unknown", abi.mode);
    }
}

#[test]
fn ring_violations() {
    for abi in ABIS {
        let bench = Bench::new(abi, enabled());
        let n = bench.number(abi.kernel_call);
        let expected = match abi.mode {
            // HYPERCALL_RET_ERROR, no fault.
            HypervisorMode::Bhyve => Answer::Returned(1),
            HypervisorMode::Kvm | HypervisorMode::Xen => neg(1),
            HypervisorMode::Hyperv => UD,
        };
        assert_eq!(bench.call(n, 3), expected, "{}", abi.mode);
    }
}

#[test]
fn calls_denied_by_config() {
    for abi in ABIS {
        let mut config = enabled();
        config.hypervisor.deny = vec![Selector(CallSelector::Name(abi.kernel_call.into()))];
        let bench = Bench::new(abi, config);
        let n = bench.number(abi.kernel_call);
        let expected = match abi.mode {
            HypervisorMode::Bhyve => UD,
            HypervisorMode::Kvm | HypervisorMode::Xen => neg(1),
            // HV_STATUS_ACCESS_DENIED
            HypervisorMode::Hyperv => Answer::Returned(6),
        };
        assert_eq!(bench.call(n, 0), expected, "{}", abi.mode);
        let row = bench.engine.rows().into_iter().find(|r| r.number == n).unwrap();
        assert_eq!(row.counters.denied, 1, "{}", abi.mode);
        assert!(!row.permitted, "{}", abi.mode);
    }
}
