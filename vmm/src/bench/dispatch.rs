//! Dispatch-only cost: the engine alone on register snapshots, in-process, with a quiet
//! `RecordingPlatform` (as `personalities/benches/dispatch.rs` does with criterion).

use std::hint::black_box;
use std::time::Instant;

use polyvisor_config::{Config, HypervisorMode};
use polyvisor_core::testing::{memory, snapshot, RecordingPlatform};
use polyvisor_core::{Dispatch, Gpr, GuestMemoryMmap, MsrContext, Registers};
use polyvisor_personalities::HostFacts;
use vm_memory::{Bytes, GuestAddress};

use super::{calls, BenchError, DispatchCost};

const HV_PAGE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;

/// The registers of a mode's two calls, after whatever set-up the ABI needs, made on
/// `engine` in `mem`.
fn dispatch_setup(
    mode: HypervisorMode,
    engine: &dyn Dispatch,
    mem: &GuestMemoryMmap,
    platform: &RecordingPlatform,
) -> Result<[Registers; 2], String> {
    let put = |gpa: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(gpa)).map_err(|e| format!("guest memory: {e}"))
    };
    let r = Registers::default;
    Ok(match mode {
        HypervisorMode::Bhyve => {
            let name = b"polyvisor:bench:probe";
            put(DATA, name)?;
            let create = Registers { rax: 1, rdi: DATA, rsi: name.len() as u64, ..r() };
            let out = engine.hypercall(&snapshot(create), mem, platform);
            let id = out.writes.get(Gpr::Rdi).ok_or("PROBE_CREATE gave no id")?;
            let args: Vec<u8> = (1..=5u64).flat_map(|i| (i * 0x1111).to_le_bytes()).collect();
            put(DATA + 0x100, &args)?;
            [
                Registers { rax: 0, ..r() },
                Registers { rax: 2, rdi: id, rsi: DATA + 0x100, rdx: 7, ..r() },
            ]
        }
        HypervisorMode::Kvm => {
            [Registers { rax: 1, ..r() }, Registers { rax: 9, rbx: DATA, rcx: 0, ..r() }]
        }
        HypervisorMode::Hyperv => {
            let ctx = MsrContext { vcpu: 0, memory: mem, platform };
            engine.write_msr(&ctx, 0x4000_0000, 0x8100_0000_5050_4f4c);
            engine.write_msr(&ctx, 0x4000_0001, HV_PAGE | 1);
            // AddressSpace 0, Flags 0, ProcessorMask naming only VP 63 (none here).
            put(DATA, &[0u8; 16])?;
            put(DATA + 16, &(1u64 << 63).to_le_bytes())?;
            [
                Registers { rcx: 0x1_0008, rdx: 1, ..r() },
                Registers { rcx: 0x0002, rdx: DATA, r8: 0, ..r() },
            ]
        }
        HypervisorMode::Xen => {
            [Registers { rax: 17, rdi: 0, ..r() }, Registers { rax: 17, rdi: 1, rsi: DATA, ..r() }]
        }
    })
}

/// Whether an answer in RAX is the call's success (as bench.c checks it).
fn answer_ok(mode: HypervisorMode, memory_call: bool, rax: u64) -> bool {
    match mode {
        HypervisorMode::Bhyve | HypervisorMode::Kvm => rax == 0,
        HypervisorMode::Hyperv => rax & 0xffff == 0,
        HypervisorMode::Xen => {
            if memory_call {
                rax == 0
            } else {
                (rax as i64) > 0
            }
        }
    }
}

/// Dispatch-only cost of a mode's two calls: the engine alone on a register snapshot,
/// `iterations` calls each, timed in batches of 100; median and p99 over the batches.
pub fn dispatch_only(
    mode: HypervisorMode,
    facts: &HostFacts,
    iterations: u32,
) -> Result<Vec<DispatchCost>, BenchError> {
    const BATCH: u32 = 100;
    let fail = |what: String| BenchError::Dispatch { mode, what };
    let mut config = Config::default();
    config.hypervisor.mode = mode;
    config.hypervisor.hypercalls_enabled = true;
    if mode == HypervisorMode::Hyperv {
        let backing = polyvisor_personalities::hyperv::cpuid::Backing::new(facts, &config);
        config.hyperv.recommendations = Some(
            backing.default_recommendations()
                | polyvisor_personalities::hyperv::abi::HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED,
        );
    }
    let engine = polyvisor_personalities::build(&config, facts).map_err(|e| fail(e.to_string()))?;
    let mem = memory(4 << 20);
    let platform = RecordingPlatform::quiet(1);
    let regs = dispatch_setup(mode, &*engine, &mem, &platform).map_err(fail)?;
    let batches = (iterations / BATCH).max(1);
    let mut out = Vec::new();
    for (i, (regs, (name, _))) in regs.iter().zip(calls(mode)).enumerate() {
        let vcpu = snapshot(*regs);
        let first = engine.hypercall(&vcpu, &mem, &platform);
        let rax = first.writes.get(Gpr::Rax).unwrap_or(u64::MAX);
        if first.is_fault() || !answer_ok(mode, i == 1, rax) {
            return Err(fail(format!("{name} does not succeed: {first:?}")));
        }
        let mut per_call = Vec::with_capacity(batches as usize);
        for _ in 0..batches {
            let t = Instant::now();
            for _ in 0..BATCH {
                black_box(engine.hypercall(black_box(&vcpu), &mem, &platform));
            }
            per_call.push(t.elapsed().as_nanos() as f64 / f64::from(BATCH));
        }
        per_call.sort_by(f64::total_cmp);
        out.push(DispatchCost {
            name: name.to_string(),
            median_ns: percentile(&per_call, 50),
            p99_ns: percentile(&per_call, 99),
        });
    }
    Ok(out)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    let n = sorted.len();
    let rank = (p * n).div_ceil(100).clamp(1, n.max(1));
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::BenchOptions;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), 50.0);
        assert_eq!(percentile(&v, 99), 99.0);
        assert_eq!(percentile(&[7.0], 99), 7.0);
        assert!(percentile(&[], 50).is_nan());
    }

    #[test]
    fn every_mode_dispatches_its_two_calls() {
        for mode in BenchOptions::default().modes {
            let costs = dispatch_only(mode, &HostFacts::nominal(), 200).unwrap();
            assert_eq!(costs.len(), 2, "{mode}");
            assert!(costs.iter().all(|c| c.median_ns > 0.0), "{mode}: {costs:?}");
        }
    }
}
