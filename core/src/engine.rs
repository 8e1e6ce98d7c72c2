use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::counters::{bump, CallCounters, CounterSnapshot, RefusalCounters};
use crate::cpuid::CpuidLeaf;
use crate::mode::HypervisorMode;
use crate::msr::{MsrContext, MsrRead, MsrWrite};
use crate::outcome::Outcome;
use crate::personality::{Call, Personality, Refusal, Reply};
use crate::platform::Platform;
use crate::policy::{CallSelector, Policy, PolicyError};
use crate::regs::{CpuMode, VcpuSnapshot};
use crate::GuestMemoryMmap;

/// A table row as tools display it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowInfo {
    /// The ABI's call number.
    pub number: u64,
    /// The spec's name.
    pub name: &'static str,
    /// The rings allowed, e.g. "0,3".
    pub rings: String,
    /// Whether this implementation serves the call.
    pub implemented: bool,
    /// Whether the policy permits it (global switch, allow and deny lists).
    pub permitted: bool,
    /// What the call does here.
    pub summary: &'static str,
    /// Counters so far.
    pub counters: CounterSnapshot,
}

/// The object-safe face of an [`Engine`], which the VMM holds without knowing the personality.
pub trait Dispatch: Send + Sync {
    /// The personality's mode.
    fn mode(&self) -> HypervisorMode;
    /// Runs one trapped hypercall through the engine.
    fn hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome;
    /// Routes an RDMSR.
    fn read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead;
    /// Routes a WRMSR.
    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite;
    /// The synthetic MSR ranges to send to user space.
    fn msr_ranges(&self) -> Vec<(u32, u32)>;
    /// The hypervisor CPUID leaves for one vCPU.
    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf>;
    /// What a leaf means, per the personality.
    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String>;
    /// The personality's end-of-run report lines.
    fn report(&self) -> Vec<String>;
    /// The table with policy and counters, for tools and reports.
    fn rows(&self) -> Vec<RowInfo>;
    /// Refusal counters.
    fn refusals(&self) -> &RefusalCounters;
}

/// The dispatch engine for one VM and one personality.
pub struct Engine<P: Personality> {
    personality: Arc<P>,
    enabled: bool,
    /// `(number, row index)` sorted by number, for the lookup.
    index: Box<[(u64, usize)]>,
    permitted: Box<[bool]>,
    counters: Box<[CallCounters]>,
    refusals: RefusalCounters,
}

impl<P: Personality> Engine<P> {
    /// Builds the engine, resolving the policy's names and numbers against the table.
    pub fn new(personality: Arc<P>, policy: &Policy) -> Result<Self, PolicyError> {
        let table = personality.table();
        let mut index: Vec<(u64, usize)> =
            table.iter().enumerate().map(|(i, row)| (row.number, i)).collect();
        index.sort_unstable();
        let resolve = |list: &'static str, sel: &CallSelector| -> Result<usize, PolicyError> {
            let found = table.iter().position(|row| match sel {
                CallSelector::Name(n) => row.name.eq_ignore_ascii_case(n),
                CallSelector::Number(n) => row.number == *n,
            });
            found.ok_or_else(|| PolicyError {
                list,
                selector: sel.clone(),
                mode: personality.mode(),
                known: table.iter().map(|r| r.name).collect::<Vec<_>>().join(", "),
            })
        };
        let mut permitted = vec![policy.allow.is_none(); table.len()];
        for sel in policy.allow.iter().flatten() {
            if let Some(slot) = permitted.get_mut(resolve("allow", sel)?) {
                *slot = true;
            }
        }
        for sel in &policy.deny {
            if let Some(slot) = permitted.get_mut(resolve("deny", sel)?) {
                *slot = false;
            }
        }
        let counters = table.iter().map(|_| CallCounters::default()).collect();
        Ok(Engine {
            enabled: policy.hypercalls_enabled && personality.hypercalls_possible(),
            personality,
            index: index.into_boxed_slice(),
            permitted: permitted.into_boxed_slice(),
            counters,
            refusals: RefusalCounters::default(),
        })
    }

    /// The personality this engine serves.
    pub fn personality(&self) -> &Arc<P> {
        &self.personality
    }

    /// Whether hypercalls are served at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn row_index(&self, number: u64) -> Option<usize> {
        self.index
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .and_then(|i| self.index.get(i))
            .map(|(_, row)| *row)
    }

    fn run(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        let p = &*self.personality;
        if !self.enabled {
            bump(&self.refusals.disabled);
            return p.refuse(vcpu, Refusal::Disabled);
        }
        let input = match p.decode(vcpu) {
            Ok(input) => input,
            Err(answer) => {
                bump(&self.refusals.malformed);
                return answer;
            }
        };
        let number = input.number;
        let Some(i) = self.row_index(number) else {
            bump(&self.refusals.unknown);
            return p.refuse(vcpu, Refusal::Unknown { number });
        };
        let (Some(row), Some(counters)) = (p.table().get(i), self.counters.get(i)) else {
            bump(&self.refusals.unknown);
            return p.refuse(vcpu, Refusal::Unknown { number });
        };
        if !self.permitted.get(i).copied().unwrap_or(false) {
            bump(&counters.denied);
            return p.refuse(vcpu, Refusal::Denied { number });
        }
        // Real mode has no rings; every caller there counts as ring 0.
        let cpl = if vcpu.mode == CpuMode::Real { 0 } else { vcpu.cpl };
        if !row.rings.allows(cpl) {
            bump(&counters.wrong_ring);
            return p.refuse(vcpu, Refusal::WrongRing { number, cpl });
        }
        let Some(handler) = row.handler else {
            bump(&self.refusals.unknown);
            return p.refuse(vcpu, Refusal::Unimplemented { number });
        };
        let mut call = Call { input, vcpu, memory, platform };
        let reply = handler(p, &mut call);
        bump(&counters.calls);
        if matches!(reply, Reply::Error(_)) || matches!(&reply, Reply::Outcome(o) if o.is_fault()) {
            bump(&counters.errors);
        }
        p.encode(vcpu, reply)
    }
}

impl<P: Personality> Dispatch for Engine<P> {
    fn mode(&self) -> HypervisorMode {
        self.personality.mode()
    }

    fn hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        self.run(vcpu, memory, platform)
    }

    fn read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        self.personality.read_msr(ctx, msr)
    }

    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        self.personality.write_msr(ctx, msr, value)
    }

    fn msr_ranges(&self) -> Vec<(u32, u32)> {
        self.personality.msr_ranges().to_vec()
    }

    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf> {
        self.personality.cpuid(vcpu)
    }

    fn explain_cpuid(&self, leaf: &CpuidLeaf) -> Vec<String> {
        self.personality.explain_cpuid(leaf)
    }

    fn report(&self) -> Vec<String> {
        self.personality.report()
    }

    fn rows(&self) -> Vec<RowInfo> {
        self.personality
            .table()
            .iter()
            .zip(self.permitted.iter())
            .zip(self.counters.iter())
            .map(|((row, permitted), counters)| RowInfo {
                number: row.number,
                name: row.name,
                rings: row.rings.describe(),
                implemented: row.handler.is_some(),
                permitted: self.enabled && *permitted,
                summary: row.summary,
                counters: counters.snapshot(),
            })
            .collect()
    }

    fn refusals(&self) -> &RefusalCounters {
        &self.refusals
    }
}

impl RefusalCounters {
    /// `(disabled, unknown, malformed)` so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.disabled.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
