//! The `dispatch` target: a whole VM's worth of hypercalls and MSR accesses through the real
//! engine and personality, against a recording platform and guest memory of any size and
//! contents.

use polyvisor_config::{Config, InstructionChoice, Selector};
use polyvisor_core::call_log::{CallLog, Op};
use polyvisor_core::testing::{Effect, RecordingPlatform};
use polyvisor_core::{
    CallSelector, Dispatch, GuestMemoryMmap, HypervisorMode, MsrContext, MsrRead, MsrWrite,
};
use polyvisor_personalities::HostFacts;
use vm_memory::{Bytes, GuestAddress};

use crate::allowed::{allowed, MAX_EFFECTS_PER_OP, MAX_EFFECT_BYTES_PER_OP};

/// The configuration a log's policy byte selects:
///
/// - bits 0-1: 0 every call permitted, 1 `deny` the log's row, 2 `allow` only that row,
///   3 hypercalls off (the default configuration);
/// - bits 2-3: `[host] instruction`: 1 `vmcall`, 2 `vmmcall`, otherwise `auto`;
/// - bit 4: `[bhyve] cpuid_leaf = "freebsd15"`.
fn config(log: &CallLog, row_number: Option<u64>) -> Config {
    let mut c = Config::default();
    c.hypervisor.mode = log.mode;
    c.vm.vcpus = log.vcpus;
    c.hypervisor.hypercalls_enabled = log.policy & 3 != 3;
    let selector = row_number.map(|n| vec![Selector(CallSelector::Number(n))]);
    match log.policy & 3 {
        1 => c.hypervisor.deny = selector.unwrap_or_default(),
        2 => c.hypervisor.allow = selector,
        _ => {}
    }
    c.host.instruction = match (log.policy >> 2) & 3 {
        1 => InstructionChoice::Vmcall,
        2 => InstructionChoice::Vmmcall,
        _ => InstructionChoice::Auto,
    };
    if log.policy & 0x10 != 0 {
        c.bhyve.cpuid_leaf = polyvisor_config::BhyveLeaf::Freebsd15;
    }
    c
}

/// Every hypercall the engine has counted: rows' calls, denials and ring violations plus the
/// refusals without a row.
fn counted(engine: &dyn Dispatch) -> u64 {
    let rows: u64 = engine
        .rows()
        .iter()
        .map(|r| r.counters.calls + r.counters.denied + r.counters.wrong_ring)
        .sum();
    let (disabled, unknown, malformed) = engine.refusals().snapshot();
    rows + disabled + unknown + malformed
}

fn check_effects(effects: &[Effect]) {
    assert!(effects.len() <= MAX_EFFECTS_PER_OP, "{} effects from one operation", effects.len());
    let bytes: usize = effects
        .iter()
        .map(|e| match e {
            Effect::Console(_, b) | Effect::DebugPost(_, b) => b.len(),
            Effect::Overlay(_, Some((_, b))) => b.len(),
            _ => 0,
        })
        .sum();
    assert!(bytes <= MAX_EFFECT_BYTES_PER_OP, "{bytes} bytes of effects from one operation");
    for e in effects {
        if let Effect::Overlay(_, Some((gpa, b))) = e {
            assert!(gpa % 4096 == 0 && b.len() == 4096, "overlay of {} bytes at {gpa:#x}", b.len());
        }
    }
}

fn in_ranges(ranges: &[(u32, u32)], msr: u32) -> bool {
    ranges.iter().any(|&(first, last)| (first..=last).contains(&msr))
}

fn build(log: &CallLog) -> Option<std::sync::Arc<dyn Dispatch>> {
    let host = HostFacts::nominal();
    // The row the policy names, by number, from the permissive table.
    let rows = polyvisor_personalities::build(&config(log, None), &host).ok()?.rows();
    let number = rows.get(usize::from(log.row) % rows.len().max(1)).map(|r| r.number);
    match polyvisor_personalities::build(&config(log, number), &host) {
        Ok(engine) => Some(engine),
        // bhyve's FreeBSD 15 leaf with hypercalls on is a configuration the personality
        // refuses with an error; anything else is a finding.
        Err(e) => {
            assert!(log.mode == HypervisorMode::Bhyve, "{} cannot be built: {e}", log.mode);
            None
        }
    }
}

/// Runs one [`CallLog`] (any bytes) through the engine, checking the invariants of
/// docs/fuzzing.md after every operation. An MSR outside the personality's ranges (the VMM
/// may still pass one KVM does not know) is answered as not its own or #GP, never a value.
pub fn dispatch(data: &[u8]) {
    let log = CallLog::decode(data);
    let Some(engine) = build(&log) else {
        return;
    };
    let size = usize::try_from(log.pages).unwrap_or(1) * 4096;
    let Ok(memory) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]) else {
        return;
    };
    let platform = RecordingPlatform::new(log.vcpus);
    let ranges = engine.msr_ranges();
    let mut served = counted(&*engine);
    for op in &log.ops {
        match op {
            // Out of range is vm-memory's error, as it is for a handler.
            Op::Memory { gpa, bytes } => {
                let _ = memory.write_slice(bytes, GuestAddress(*gpa));
            }
            Op::Hypercall(vcpu) => {
                let out = engine.hypercall(vcpu, &memory, &platform);
                if let Err(why) = allowed(log.mode, vcpu, &out) {
                    panic!("outcome outside the ABI: {why} for {vcpu:?}");
                }
                let now = counted(&*engine);
                assert_eq!(now, served + 1, "one hypercall, one count");
                served = now;
            }
            Op::ReadMsr { vcpu, msr } => {
                let ctx = MsrContext { vcpu: *vcpu, memory: &memory, platform: &platform };
                let r = engine.read_msr(&ctx, *msr);
                if !in_ranges(&ranges, *msr) {
                    assert!(matches!(r, MsrRead::NotMine | MsrRead::Gp), "RDMSR {msr:#x}: {r:?}");
                }
            }
            Op::WriteMsr { vcpu, msr, value } => {
                let ctx = MsrContext { vcpu: *vcpu, memory: &memory, platform: &platform };
                let w = engine.write_msr(&ctx, *msr, *value);
                if !in_ranges(&ranges, *msr) {
                    assert!(matches!(w, MsrWrite::NotMine | MsrWrite::Gp), "WRMSR {msr:#x}: {w:?}");
                }
                if matches!(w, MsrWrite::Exit(_)) {
                    assert_eq!(log.mode, HypervisorMode::Hyperv, "WRMSR {msr:#x} ended the VM");
                }
                assert_eq!(counted(&*engine), served, "an MSR access is not a hypercall");
            }
        }
        check_effects(&platform.take());
    }
}
