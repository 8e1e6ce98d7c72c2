//! Dispatch-only cost: decode + policy + handler + encode on a register snapshot, no VM.
//! Each mode's cheapest real call, and one that touches guest memory.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use polyvisor_config::Config;
use polyvisor_core::testing::{memory, snapshot, RecordingPlatform};
use polyvisor_core::{HypervisorMode, MsrContext, Registers};
use polyvisor_personalities::{build, HostFacts};
use strum::IntoEnumIterator;

/// The cheapest real call of each ABI, as registers.
fn cheapest(mode: HypervisorMode) -> Registers {
    match mode {
        // HYPERCALL_PROTOTYPE
        HypervisorMode::Bhyve => Registers { rax: 0, ..Default::default() },
        // KVM_HC_VAPIC_POLL_IRQ
        HypervisorMode::Kvm => Registers { rax: 1, ..Default::default() },
        // HvCallNotifyLongSpinWait, fast
        HypervisorMode::Hyperv => Registers { rcx: 0x1_0008, rdx: 1, ..Default::default() },
        // xen_version(XENVER_version)
        HypervisorMode::Xen => Registers { rax: 17, rdi: 0, ..Default::default() },
    }
}

fn dispatch(c: &mut Criterion) {
    let mem = memory(16 << 20);
    let platform = RecordingPlatform::quiet(2);
    for mode in HypervisorMode::iter() {
        let mut config = Config::default();
        config.hypervisor.mode = mode;
        config.hypervisor.hypercalls_enabled = true;
        let Ok(engine) = build(&config, &HostFacts::nominal()) else { continue };
        if mode == HypervisorMode::Hyperv {
            // A Hyper-V guest may call only after GUEST_OS_ID and the hypercall page are set.
            let ctx = MsrContext { vcpu: 0, memory: &mem, platform: &platform };
            engine.write_msr(&ctx, 0x4000_0000, 0x8100_0000_0000_0000);
            engine.write_msr(&ctx, 0x4000_0001, 0x10_0000 | 1);
        }
        let vcpu = snapshot(cheapest(mode));
        assert!(
            !engine.hypercall(&vcpu, &mem, &platform).is_fault(),
            "{mode}: the call must succeed"
        );
        c.bench_function(&format!("dispatch/{mode}/cheapest"), |b| {
            b.iter(|| engine.hypercall(black_box(&vcpu), &mem, &platform))
        });
    }
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
