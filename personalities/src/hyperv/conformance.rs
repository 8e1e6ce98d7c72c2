//! Table-driven conformance: the peer expectations of docs/abi/hyperv.md's sources (KVM's
//! `tools/testing/selftests/kvm/x86/hyperv_features.c` stages, written as facts) and the MSR
//! gating rules, each checked under several CPUID configurations with the privileges,
//! features and recommendations on and off. Every row says what it expects as a function of
//! what CPUID shows, so one table serves every configuration.

use polyvisor_core::{Exception, MsrRead, MsrWrite, Next};
use vm_memory::{Bytes, GuestAddress};

use super::abi::*;
use super::cpuid::Identity;
use super::tests::{config, is_ud, st, Vm, IN, OUT};

/// What a call must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status(u16),
    Ud,
}
use Expect::{Status, Ud};

fn gated(open: bool, then: Expect) -> Expect {
    if open {
        then
    } else {
        Status(HV_STATUS_ACCESS_DENIED)
    }
}

fn rec(id: &Identity, bits: u32) -> bool {
    id.recommends(bits)
}

const FAST: u64 = HV_HYPERCALL_FAST_BIT;

/// (label, input value, expectation). Slow calls get a zeroed input page at IN and an output
/// page at OUT; fast calls get zero registers (and zero XMM registers).
type Row = (&'static str, u64, fn(&Identity) -> Expect);

const CALLS: &[Row] = &[
    ("unknown code 0xbeef", 0xbeef, |_| Status(HV_STATUS_INVALID_HYPERCALL_CODE)),
    ("PostMessage: no privilege, then no SynIC", 0x5c, |id| {
        gated(id.has_privilege(HV_POST_MESSAGES), Status(HV_STATUS_INVALID_HYPERCALL_INPUT))
    }),
    ("SignalEvent: no privilege, then no SynIC", 0x5d, |id| {
        gated(id.has_privilege(HV_SIGNAL_EVENTS), Status(HV_STATUS_INVALID_HYPERCALL_INPUT))
    }),
    ("ResetDebugSession needs Debugging", 0x6b, |id| {
        gated(id.has_privilege(HV_DEBUGGING), Status(HV_STATUS_SUCCESS))
    }),
    ("FlushVirtualAddressSpace needs the remote flush recommendation", 0x2, |id| {
        gated(rec(id, HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED), Status(HV_STATUS_SUCCESS))
    }),
    ("FlushVirtualAddressSpaceEx also needs ExProcessorMasks", 0x13, |id| {
        gated(
            rec(id, HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED | HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED),
            Status(HV_STATUS_SUCCESS),
        )
    }),
    ("FlushVirtualAddressList with one rep", 0x3 | 1 << 32, |id| {
        gated(rec(id, HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED), Status(HV_STATUS_SUCCESS))
    }),
    ("SendSyntheticClusterIpi with vector 0", 0xb, |id| {
        gated(rec(id, HV_X64_CLUSTER_IPI_RECOMMENDED), Status(HV_STATUS_INVALID_HYPERCALL_INPUT))
    }),
    ("SendSyntheticClusterIpiEx with nothing in the sparse banks", 0x15, |id| {
        gated(
            rec(id, HV_X64_CLUSTER_IPI_RECOMMENDED | HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED),
            Status(HV_STATUS_SUCCESS),
        )
    }),
    ("NotifyLongSpinWait needs a retry count", 0x8, |id| {
        gated(
            id.spinlock_retries != 0 && id.spinlock_retries != u32::MAX,
            Status(HV_STATUS_SUCCESS),
        )
    }),
    ("fast FlushVirtualAddressSpace is an XMM call", 0x2 | FAST, |id| {
        if !rec(id, HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED) {
            Status(HV_STATUS_ACCESS_DENIED)
        } else if id.has_feature(HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE) {
            Status(HV_STATUS_SUCCESS)
        } else {
            Ud
        }
    }),
    ("HvExtCallQueryCapabilities needs EnableExtendedHypercalls", 0x8001, |id| {
        gated(id.has_privilege(HV_ENABLE_EXTENDED_HYPERCALLS), Status(HV_STATUS_SUCCESS))
    }),
    ("fast HvExtCallQueryCapabilities", 0x8001 | FAST, |id| {
        gated(id.has_privilege(HV_ENABLE_EXTENDED_HYPERCALLS), Status(HV_STATUS_INVALID_PARAMETER))
    }),
    ("a reserved input-value bit, after the gate", 0x8001 | 1 << 44, |id| {
        gated(
            id.has_privilege(HV_ENABLE_EXTENDED_HYPERCALLS),
            Status(HV_STATUS_INVALID_HYPERCALL_INPUT),
        )
    }),
];

/// (MSR, whether CPUID makes it available, whether a write of 0 is allowed).
type MsrRow = (u32, fn(&Identity) -> bool, bool);

const MSRS: &[MsrRow] = &[
    (HV_X64_MSR_GUEST_OS_ID, |id| id.has_privilege(HV_MSR_HYPERCALL_AVAILABLE), true),
    (HV_X64_MSR_HYPERCALL, |id| id.has_privilege(HV_MSR_HYPERCALL_AVAILABLE), true),
    (HV_X64_MSR_VP_INDEX, |id| id.has_privilege(HV_MSR_VP_INDEX_AVAILABLE), false),
    (HV_X64_MSR_RESET, |id| id.has_privilege(HV_MSR_RESET_AVAILABLE), true),
    (HV_X64_MSR_VP_RUNTIME, |id| id.has_privilege(HV_MSR_VP_RUNTIME_AVAILABLE), false),
    (HV_X64_MSR_TIME_REF_COUNT, |id| id.has_privilege(HV_MSR_TIME_REF_COUNT_AVAILABLE), false),
    (HV_X64_MSR_REFERENCE_TSC, |id| id.has_privilege(HV_MSR_REFERENCE_TSC_AVAILABLE), true),
    (HV_X64_MSR_TSC_FREQUENCY, |id| id.has_privilege(HV_ACCESS_FREQUENCY_MSRS), false),
    (HV_X64_MSR_APIC_FREQUENCY, |id| id.has_privilege(HV_ACCESS_FREQUENCY_MSRS), false),
    (HV_X64_MSR_CRASH_P0, |id| id.has_feature(HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE), true),
    (HV_X64_MSR_CRASH_CTL, |id| id.has_feature(HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE), true),
    // Never available here: SynIC EOM, STIMER0_CONFIG, EOI, VP_ASSIST_PAGE, SYNDBG_STATUS,
    // TSC_INVARIANT_CONTROL.
    (0x4000_0084, |_| false, true),
    (0x4000_00b0, |_| false, true),
    (0x4000_0070, |_| false, true),
    (0x4000_0073, |_| false, true),
    (0x4000_00f3, |_| false, true),
    (0x4000_0118, |_| false, true),
];

/// A CPUID configuration: (name, privileges, features, recommendations, spinlock retries).
type Cpuid = (&'static str, Option<u64>, Option<u32>, Option<u32>, u32);

const CONFIGS: &[Cpuid] = &[
    ("defaults", None, None, None, 0xfff),
    (
        "bare minimum (hypercall MSRs and VP index only)",
        Some(HV_MSR_HYPERCALL_AVAILABLE | HV_MSR_VP_INDEX_AVAILABLE),
        Some(0),
        Some(0),
        0,
    ),
    (
        "never notify, flush without Ex",
        Some(HV_MSR_HYPERCALL_AVAILABLE | HV_MSR_VP_INDEX_AVAILABLE | HV_POST_MESSAGES),
        Some(HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE),
        Some(HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED),
        u32::MAX,
    ),
    (
        "Ex alone, IPIs, SynIC-less messaging",
        Some(
            HV_MSR_HYPERCALL_AVAILABLE
                | HV_MSR_VP_INDEX_AVAILABLE
                | HV_SIGNAL_EVENTS
                | HV_DEBUGGING
                | HV_MSR_TIME_REF_COUNT_AVAILABLE,
        ),
        Some(HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE),
        Some(HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED | HV_X64_CLUSTER_IPI_RECOMMENDED),
        1,
    ),
    (
        "everything backed or answerable",
        Some(super::tests::ALL_PRIVILEGES),
        Some(
            HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE
                | HV_X64_HYPERCALL_MSR_LOCK_AVAILABLE
                | HV_FEATURE_FREQUENCY_MSRS_AVAILABLE
                | HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE
                | HV_FEATURE_EXT_GVA_RANGES_FLUSH,
        ),
        Some(super::tests::ALL_RECOMMENDATIONS),
        0x10,
    ),
];

fn vm_for(cpuid: &Cpuid) -> Vm {
    let &(_, privileges, features, recommendations, spin) = cpuid;
    let vm = Vm::new(&config(|c| {
        c.hyperv.privileges = privileges;
        c.hyperv.features = features;
        c.hyperv.recommendations = recommendations;
        c.hyperv.spinlock_retries = spin;
    }));
    *vm.rec().xmm.lock().unwrap() = Some([0; 6]);
    vm
}

#[test]
fn hypercall_expectations_under_every_configuration() {
    let mut checked = 0;
    for cpuid in CONFIGS {
        let vm = vm_for(cpuid);
        vm.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, super::tests::LINUX_OS_ID);
        if vm.engine.personality().id.has_privilege(HV_MSR_HYPERCALL_AVAILABLE) {
            vm.wrmsr(0, HV_X64_MSR_HYPERCALL, super::tests::HC_PAGE | 1);
        }
        let id = vm.engine.personality().id.clone();
        for &(label, control, expect) in CALLS {
            vm.mem.write_slice(&[0u8; 4096], GuestAddress(IN)).unwrap();
            let (input, output) = if control & FAST == 0 { (IN, OUT) } else { (0, 0) };
            let got = vm.call(control, input, output);
            let want = expect(&id);
            match want {
                Ud => assert!(is_ud(&got), "{}: {label}: want #UD, got {got:?}", cpuid.0),
                Status(s) => assert_eq!(st(&got), s, "{}: {label}: {got:?}", cpuid.0),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, CONFIGS.len() * CALLS.len());
}

#[test]
fn msr_expectations_under_every_configuration() {
    for cpuid in CONFIGS {
        let vm = vm_for(cpuid);
        let id = vm.engine.personality().id.clone();
        for &(msr, available, writable) in MSRS {
            let (r, w) = (vm.rdmsr(0, msr), vm.wrmsr(0, msr, 0));
            if available(&id) {
                assert!(matches!(r, MsrRead::Value(_)), "{}: rdmsr {msr:#x}", cpuid.0);
                let want = if writable { MsrWrite::Done } else { MsrWrite::Gp };
                assert_eq!(w, want, "{}: wrmsr {msr:#x}", cpuid.0);
            } else {
                assert_eq!(r, MsrRead::Gp, "{}: rdmsr {msr:#x}", cpuid.0);
                assert_eq!(w, MsrWrite::Gp, "{}: wrmsr {msr:#x}", cpuid.0);
            }
        }
    }
}

#[test]
fn hypercalls_without_the_page_are_ud_in_every_configuration() {
    for cpuid in CONFIGS {
        let vm = vm_for(cpuid);
        for &(label, control, _) in CALLS {
            let o = vm.call(control, IN, OUT);
            assert_eq!(o.next, Next::Inject(Exception::InvalidOpcode), "{}: {label}", cpuid.0);
        }
    }
}
