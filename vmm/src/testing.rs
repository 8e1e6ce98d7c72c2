//! Test support: an ELF image builder for hand-assembled guests, and a small test
//! personality (an [`Engine`] with its own table) for backend tests that do not depend on the
//! real personalities.
//!
//! The test personality's ABI: RAX = call number, RBX RCX RDX RSI = arguments, result in RAX.
//! Refusals return `u64::MAX` (-1) in RAX. CPUID 0x40000000 is "PolyvisorTst" with max leaf
//! 0x40000001, whose EAX is the vCPU index. MSRs 0x40000000-0x400000ff go to user space:
//! writes of 0x40000005 are recorded (read it back from 0x40000005), 0x40000006 reads #GP,
//! a write of 0x40000007 powers off with the written status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use polyvisor_core::{
    Call, CallInput, CpuidLeaf, Dispatch, Engine, ExitReason, Gpr, HypercallRow, HypervisorMode,
    MsrContext, MsrRead, MsrWrite, Next, Outcome, Personality, Policy, Refusal, RegisterWrites,
    Reply, Rings, VcpuSnapshot,
};
use vm_memory::{Bytes, GuestAddress};

use crate::loader::ElfClass;

/// Builds an ELF image: class, e_machine, entry, segments as (paddr = vaddr, memsz, file
/// bytes, p_flags), and an optional PVH entry note.
pub fn elf(
    class: ElfClass,
    machine: u16,
    entry: u64,
    segs: &[(u64, u64, &[u8], u32)],
    pvh: Option<u32>,
) -> Vec<u8> {
    fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
        if let Some(dst) = out.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    let is64 = class == ElfClass::Elf64;
    let eh = if is64 { 64 } else { 52 };
    let ph = if is64 { 56 } else { 32 };
    let nph = segs.len() + usize::from(pvh.is_some());
    let mut note = Vec::new();
    if let Some(e) = pvh {
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&e.to_le_bytes());
    }
    let mut data_off = eh + ph * nph;
    let mut out = vec![0u8; data_off];
    put(&mut out, 0, &[0x7f, b'E', b'L', b'F', if is64 { 2 } else { 1 }, 1, 1]);
    put(&mut out, 16, &2u16.to_le_bytes());
    put(&mut out, 18, &machine.to_le_bytes());
    put(&mut out, 20, &1u32.to_le_bytes());
    if is64 {
        put(&mut out, 24, &entry.to_le_bytes());
        put(&mut out, 32, &(eh as u64).to_le_bytes());
        put(&mut out, 52, &(eh as u16).to_le_bytes());
        put(&mut out, 54, &(ph as u16).to_le_bytes());
        put(&mut out, 56, &(nph as u16).to_le_bytes());
    } else {
        put(&mut out, 24, &(entry as u32).to_le_bytes());
        put(&mut out, 28, &(eh as u32).to_le_bytes());
        put(&mut out, 40, &(eh as u16).to_le_bytes());
        put(&mut out, 42, &(ph as u16).to_le_bytes());
        put(&mut out, 44, &(nph as u16).to_le_bytes());
    }
    let mut entries: Vec<(u32, u32, u64, u64, u64, u64)> = Vec::new();
    let mut blobs = Vec::new();
    for (paddr, memsz, data, flags) in segs {
        entries.push((1, *flags, data_off as u64, *paddr, data.len() as u64, *memsz));
        blobs.extend_from_slice(data);
        data_off += data.len();
    }
    if pvh.is_some() {
        entries.push((4, 4, data_off as u64, 0, note.len() as u64, 0));
        blobs.extend_from_slice(&note);
    }
    for (i, (kind, flags, off, paddr, filesz, memsz)) in entries.into_iter().enumerate() {
        let o = eh + i * ph;
        if is64 {
            put(&mut out, o, &kind.to_le_bytes());
            put(&mut out, o + 4, &flags.to_le_bytes());
            put(&mut out, o + 8, &off.to_le_bytes());
            put(&mut out, o + 16, &paddr.to_le_bytes());
            put(&mut out, o + 24, &paddr.to_le_bytes());
            put(&mut out, o + 32, &filesz.to_le_bytes());
            put(&mut out, o + 40, &memsz.to_le_bytes());
        } else {
            put(&mut out, o, &kind.to_le_bytes());
            put(&mut out, o + 4, &(off as u32).to_le_bytes());
            put(&mut out, o + 8, &(paddr as u32).to_le_bytes());
            put(&mut out, o + 12, &(paddr as u32).to_le_bytes());
            put(&mut out, o + 16, &(filesz as u32).to_le_bytes());
            put(&mut out, o + 20, &(memsz as u32).to_le_bytes());
            put(&mut out, o + 24, &flags.to_le_bytes());
        }
    }
    out.extend_from_slice(&blobs);
    out
}

/// The test personality. See the module documentation for its ABI.
#[derive(Debug, Default)]
pub struct TestPersonality {
    /// Values written to MSR 0x40000005, in order.
    pub msr_writes: Mutex<Vec<(u32, u64)>>,
    /// Calls served.
    pub calls: AtomicU64,
    /// CPL of the last call the engine passed to a handler.
    pub last_cpl: AtomicU64,
    /// Instruction of the last call (0 VMCALL, 1 VMMCALL).
    pub last_instruction: AtomicU64,
    retries: AtomicU64,
}

/// Call numbers of the test personality.
pub mod calls {
    /// Returns RBX + 1.
    pub const INC: u64 = 0;
    /// Returns RBX + RCX.
    pub const ADD: u64 = 1;
    /// Writes RCX bytes at GPA RBX to the console.
    pub const PRINT: u64 = 2;
    /// Halts the vCPU until woken; returns 0.
    pub const HALT: u64 = 3;
    /// Powers off with status RBX.
    pub const POWEROFF: u64 = 4;
    /// Re-executes until it was called RBX times in a row; returns the count.
    pub const RETRY: u64 = 5;
    /// Raises #UD.
    pub const UD: u64 = 6;
    /// Sends vector RCX to vCPU RBX; returns 0.
    pub const INTERRUPT: u64 = 7;
    /// Wakes vCPU RBX; returns 1 if it was halted.
    pub const WAKE: u64 = 8;
    /// Returns the platform's guest TSC.
    pub const TSC: u64 = 9;
    /// Maps a one-page overlay at GPA RBX holding `vmcall; ret` (RBX = 0: removes it).
    pub const OVERLAY: u64 = 10;
    /// Protects the code range RBX..RBX+RCX.
    pub const PROTECT: u64 = 11;
    /// Returns RBX + 1, allowed from CPL 3 too.
    pub const INC_USER: u64 = 12;
    /// Returns the CPL the engine saw.
    pub const CPL: u64 = 13;
    /// Returns `Platform::translate_gva(RBX)` (or -1).
    pub const TRANSLATE: u64 = 14;
    /// Returns the low 64 bits of XMM register RBX (0..5) via `Platform::read_xmm`.
    pub const XMM: u64 = 15;
    /// Halts, bounded by `Platform::halt_until(now + RBX ns)`; returns 0.
    pub const HALT_FOR: u64 = 16;
    /// `Platform::flush_guest_tlb(RBX)`; returns 0.
    pub const FLUSH_TLB: u64 = 17;
    /// Fires probe RBX named "test:::probe" with arguments RCX, RDX, RSI, RDI, R8.
    pub const PROBE: u64 = 18;
    /// A handler bug: panics (the VMM must end the VM, not hang).
    pub const PANIC: u64 = 19;
}

fn inc(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    Reply::Value(c.arg(0).wrapping_add(1))
}
fn add(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    Reply::Value(c.arg(0).wrapping_add(c.arg(1)))
}
fn print(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    let len = c.arg(1).min(4096) as usize;
    let mut buf = vec![0u8; len];
    match c.memory.read_slice(&mut buf, GuestAddress(c.arg(0))) {
        Ok(()) => {
            c.platform.console_write(c.vcpu.vcpu, &buf);
            Reply::Value(len as u64)
        }
        Err(_) => Reply::Error(u64::MAX - 13),
    }
}
fn halt(_: &TestPersonality, _: &mut Call<'_>) -> Reply {
    Reply::Outcome(Outcome { writes: RegisterWrites::one(Gpr::Rax, 0), next: Next::Halt })
}
fn poweroff(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    Reply::Outcome(Outcome::exit(ExitReason::Poweroff(c.arg(0) as u32)))
}
fn retry(p: &TestPersonality, c: &mut Call<'_>) -> Reply {
    let n = p.retries.fetch_add(1, Ordering::Relaxed) + 1;
    if n < c.arg(0) {
        Reply::Outcome(Outcome { writes: RegisterWrites::none(), next: Next::Retry })
    } else {
        p.retries.store(0, Ordering::Relaxed);
        Reply::Value(n)
    }
}
fn ud(_: &TestPersonality, _: &mut Call<'_>) -> Reply {
    Reply::Outcome(Outcome::invalid_opcode())
}
fn interrupt(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    match c.platform.interrupt(c.arg(0) as u32, c.arg(1) as u8) {
        Ok(()) => Reply::Value(0),
        Err(_) => Reply::Error(u64::MAX - 21),
    }
}
fn wake(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    match c.platform.wake(c.arg(0) as u32) {
        Ok(b) => Reply::Value(u64::from(b)),
        Err(_) => Reply::Error(u64::MAX - 21),
    }
}
fn tsc(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    Reply::Value(c.platform.guest_tsc())
}
fn overlay(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    let placement = c.arg(0);
    let page = [0x0f, 0x01, 0xc1, 0xc3]; // vmcall; ret
    let r = if placement == 0 {
        c.platform.map_overlay(0, None)
    } else {
        c.platform.map_overlay(0, Some((placement, &page)))
    };
    match r {
        Ok(()) => Reply::Value(0),
        Err(_) => Reply::Error(u64::MAX - 21),
    }
}
fn protect(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    match c.platform.protect_code(c.arg(0), c.arg(1)) {
        Ok(()) => Reply::Value(0),
        Err(_) => Reply::Error(u64::MAX - 21),
    }
}
fn cpl(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    Reply::Value(u64::from(c.vcpu.cpl))
}
fn translate(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    match c.platform.translate_gva(c.vcpu.vcpu, c.arg(0), false) {
        Ok(gpa) => Reply::Value(gpa),
        Err(_) => Reply::Error(u64::MAX),
    }
}
fn xmm(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    match c.platform.read_xmm(c.vcpu.vcpu) {
        Ok(regs) => Reply::Value(regs.get(c.arg(0) as usize).map_or(u64::MAX, |x| *x as u64)),
        Err(_) => Reply::Error(u64::MAX),
    }
}
fn halt_for(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    let deadline = c.platform.monotonic_ns().saturating_add(c.arg(0));
    match c.platform.halt_until(c.vcpu.vcpu, deadline) {
        Ok(()) => halt(&TestPersonality::default(), c),
        Err(_) => Reply::Error(u64::MAX),
    }
}
fn flush_tlb(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    match c.platform.flush_guest_tlb(c.arg(0) as u32) {
        Ok(()) => Reply::Value(0),
        Err(_) => Reply::Error(u64::MAX),
    }
}

fn probe(_: &TestPersonality, c: &mut Call<'_>) -> Reply {
    c.platform.probe_fired(&polyvisor_core::ProbeEvent {
        probe_id: c.arg(0),
        name: "test:::probe",
        args: [c.arg(1), c.arg(2), c.arg(3), c.arg(4), c.arg(5)],
        thread: 0,
        vcpu: c.vcpu.vcpu,
        timestamp_ns: c.platform.monotonic_ns(),
    });
    Reply::Value(0)
}

#[allow(clippy::panic)]
fn panics(_: &TestPersonality, _: &mut Call<'_>) -> Reply {
    panic!("the test personality's PANIC call")
}

static TABLE: [HypercallRow<TestPersonality>; 20] = [
    row(calls::INC, "inc", Rings::KERNEL, inc),
    row(calls::ADD, "add", Rings::KERNEL, add),
    row(calls::PRINT, "print", Rings::KERNEL, print),
    row(calls::HALT, "halt", Rings::KERNEL, halt),
    row(calls::POWEROFF, "poweroff", Rings::KERNEL, poweroff),
    row(calls::RETRY, "retry", Rings::KERNEL, retry),
    row(calls::UD, "ud", Rings::KERNEL, ud),
    row(calls::INTERRUPT, "interrupt", Rings::KERNEL, interrupt),
    row(calls::WAKE, "wake", Rings::KERNEL, wake),
    row(calls::TSC, "tsc", Rings::KERNEL, tsc),
    row(calls::OVERLAY, "overlay", Rings::KERNEL, overlay),
    row(calls::PROTECT, "protect", Rings::KERNEL, protect),
    row(calls::INC_USER, "inc_user", Rings::KERNEL_AND_USER, inc),
    row(calls::CPL, "cpl", Rings::KERNEL_AND_USER, cpl),
    row(calls::TRANSLATE, "translate", Rings::KERNEL, translate),
    row(calls::XMM, "xmm", Rings::KERNEL, xmm),
    row(calls::HALT_FOR, "halt_for", Rings::KERNEL, halt_for),
    row(calls::FLUSH_TLB, "flush_tlb", Rings::KERNEL, flush_tlb),
    row(calls::PROBE, "probe", Rings::KERNEL, probe),
    row(calls::PANIC, "panic", Rings::KERNEL, panics),
];

const fn row(
    number: u64,
    name: &'static str,
    rings: Rings,
    handler: fn(&TestPersonality, &mut Call<'_>) -> Reply,
) -> HypercallRow<TestPersonality> {
    HypercallRow { number, name, rings, handler: Some(handler), summary: "test call" }
}

impl Personality for TestPersonality {
    fn mode(&self) -> HypervisorMode {
        HypervisorMode::Kvm
    }
    fn table(&self) -> &[HypercallRow<Self>] {
        &TABLE
    }
    fn decode(&self, v: &VcpuSnapshot) -> Result<CallInput, Outcome> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.last_cpl.store(u64::from(v.cpl), Ordering::Relaxed);
        self.last_instruction.store(
            u64::from(v.instruction == polyvisor_core::HypercallInstruction::Vmmcall),
            Ordering::Relaxed,
        );
        Ok(CallInput {
            number: v.arg(Gpr::Rax),
            args: [
                v.arg(Gpr::Rbx),
                v.arg(Gpr::Rcx),
                v.arg(Gpr::Rdx),
                v.arg(Gpr::Rsi),
                v.arg(Gpr::Rdi),
                v.arg(Gpr::R8),
            ],
        })
    }
    fn encode(&self, v: &VcpuSnapshot, reply: Reply) -> Outcome {
        match reply {
            Reply::Value(x) | Reply::Error(x) => Outcome::ret(Gpr::Rax, v.mode.truncate(x)),
            Reply::Outcome(o) => o,
        }
    }
    fn refuse(&self, v: &VcpuSnapshot, _: Refusal) -> Outcome {
        Outcome::ret(Gpr::Rax, v.mode.truncate(u64::MAX))
    }
    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf> {
        vec![
            CpuidLeaf::signature(0x4000_0000, 0x4000_0001, b"PolyvisorTst"),
            CpuidLeaf::new(0x4000_0001, vcpu, 0x1234_5678, 0, 0),
        ]
    }
    fn msr_ranges(&self) -> &[(u32, u32)] {
        &[(0x4000_0000, 0x4000_00ff)]
    }
    fn read_msr(&self, _: &MsrContext<'_>, msr: u32) -> MsrRead {
        match msr {
            0x4000_0005 => MsrRead::Value(
                self.msr_writes.lock().ok().and_then(|w| w.last().map(|(_, v)| *v)).unwrap_or(0),
            ),
            0x4000_0006 => MsrRead::Gp,
            _ => MsrRead::NotMine,
        }
    }
    fn write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        match msr {
            0x4000_0005 => {
                if let Ok(mut w) = self.msr_writes.lock() {
                    w.push((ctx.vcpu, value));
                }
                MsrWrite::Done
            }
            0x4000_0007 => MsrWrite::Exit(ExitReason::Poweroff(value as u32)),
            _ => MsrWrite::NotMine,
        }
    }
}

/// The test personality and the engine around it (hypercalls enabled, nothing denied).
pub fn test_engine() -> (Arc<TestPersonality>, Arc<dyn Dispatch>) {
    let p = Arc::new(TestPersonality::default());
    match Engine::new(p.clone(), &Policy::permissive()) {
        Ok(e) => (p, Arc::new(e)),
        Err(_) => unreachable_engine(),
    }
}

#[allow(clippy::panic)]
fn unreachable_engine() -> ! {
    panic!("the test table has no policy entries to fail on")
}
