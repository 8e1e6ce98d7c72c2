//! Dispatch-only cost: decode + policy + handler + encode on a register snapshot, no VM.
//! Each mode's cheapest real call; and the same call traced into a sink that drops the events
//! (`cheapest_traced`: describing the call and its result, without output) and timed for
//! statistics (`cheapest_stats`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use polyvisor_config::Config;
use polyvisor_core::testing::{memory, snapshot, RecordingPlatform};
use polyvisor_core::{CallStats, HypervisorMode, MsrContext, TraceEvent, TraceSink};
use polyvisor_personalities::{build, HostFacts};
use strum::IntoEnumIterator;

mod common;
use common::cheapest;

/// A sink that keeps nothing, or only the statistics.
struct Drop {
    stats: Option<CallStats>,
}

impl TraceSink for Drop {
    fn timed(&self) -> bool {
        self.stats.is_some()
    }
    fn record(&self, event: TraceEvent) {
        if let Some(s) = &self.stats {
            s.add(&event);
        }
        black_box(event);
    }
}

fn dispatch(c: &mut Criterion) {
    let mem = memory(16 << 20);
    let platform = RecordingPlatform::quiet(2);
    for (mode, sink) in HypervisorMode::iter().flat_map(|m| {
        [
            (m, None),
            (m, Some(Drop { stats: None })),
            (m, Some(Drop { stats: Some(CallStats::default()) })),
        ]
    }) {
        let mut config = Config::default();
        config.hypervisor.mode = mode;
        config.hypervisor.hypercalls_enabled = true;
        let Ok(engine) = build(&config, &HostFacts::nominal()) else { continue };
        let name = match &sink {
            None => "cheapest",
            Some(Drop { stats: None }) => "cheapest_traced",
            Some(Drop { stats: Some(_) }) => "cheapest_stats",
        };
        if let Some(sink) = sink {
            engine.set_trace_sink(std::sync::Arc::new(sink));
        }
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
        c.bench_function(&format!("dispatch/{mode}/{name}"), |b| {
            b.iter(|| engine.hypercall(black_box(&vcpu), &mem, &platform))
        });
    }
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
