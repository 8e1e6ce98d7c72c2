//! The probe VM: a tiny guest run at start-up that shows, by what actually happens, how this
//! host treats hypercall instructions and interrupt injection. The trap strategy is chosen
//! from these observations, never from names or version strings.
//!
//! The guest (64-bit, its code in a read-only memslot unless the Xen intercept is on):
//! 1. CPL 0: `VMCALL`, then `VMMCALL`, each with RAX = 0x1234, reporting RAX on a port;
//!    a trapped call is answered with RAX = 0x5678.
//! 2. `sti; hlt`: the VMM injects vector 0x20 with `KVM_INTERRUPT`; the handler reports.
//! 3. CPL 3 (ports allowed by the TSS I/O bitmap): `VMMCALL`, then `VMCALL`, reporting RAX;
//!    a #UD handler reports the faulting RIP.
//!
//! A deadline kicks the probe vCPU after 100 ms so the probe can never hang.

use std::fmt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_xen_hvm_config};
use kvm_ioctls::{Kvm, VcpuExit};
use polyvisor_core::HypercallInstruction;
use vm_memory::{Bytes, GuestAddress};

use crate::kvm as rawkvm;
use crate::memory::{GuestMem, Layout, PAGE};
use crate::trap::xen_intercept::XEN_CONFIG_MSR;

const CODE: u64 = 0x10_0000;
const DATA: u64 = 0x10_1000;
const IDT: u64 = 0x10_2000;
const PML4: u64 = 0x10_3000;
const RAM: u64 = 2 << 20;
const TRAPPED_RAX: u64 = 0x5678;
/// TSS limit: 104 bytes, a 4-byte I/O bitmap and its 0xff terminator.
const TSS_LIMIT: u64 = 104 + 4;
const DEADLINE: Duration = Duration::from_millis(100);

/// The four call sites: (offset in the code page, ring, instruction).
const SITES: [(u64, u8, HypercallInstruction); 4] = [
    (0x0d, 0, HypercallInstruction::Vmcall),
    (0x17, 0, HypercallInstruction::Vmmcall),
    (0x205, 3, HypercallInstruction::Vmmcall),
    (0x20f, 3, HypercallInstruction::Vmcall),
];

/// What happened to one hypercall instruction in the probe guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "fate", content = "value")]
pub enum CallFate {
    /// The call was not reached.
    NotReached,
    /// Exited to user space as an MMIO write of the patched instruction (write-protect).
    TrappedAsMmio,
    /// Exited to user space as `KVM_EXIT_XEN` (the Xen intercept).
    TrappedAsXen,
    /// The host kernel answered it itself: RAX afterwards.
    AnsweredByHost(u64),
    /// The guest took #UD.
    InvalidOpcode,
    /// `KVM_RUN` did not return until the deadline kick (the call spun in the kernel).
    Spun,
}

impl CallFate {
    /// Whether the VMM saw the call.
    pub fn trapped(self) -> bool {
        matches!(self, CallFate::TrappedAsMmio | CallFate::TrappedAsXen)
    }
}

impl fmt::Display for CallFate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallFate::NotReached => f.write_str("not reached"),
            CallFate::TrappedAsMmio => f.write_str("trapped (MMIO write of the patched bytes)"),
            CallFate::TrappedAsXen => f.write_str("trapped (KVM_EXIT_XEN)"),
            CallFate::AnsweredByHost(rax) => {
                write!(f, "answered by the host kernel (EAX = {:#x} = {})", rax, *rax as u32 as i32)
            }
            CallFate::InvalidOpcode => f.write_str("#UD delivered to the guest"),
            CallFate::Spun => f.write_str("spun in the kernel until kicked"),
        }
    }
}

/// What the probe VM observed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeReport {
    /// Whether the Xen intercept was configured for the probe.
    pub xen_intercept_configured: bool,
    /// Whether the code page was in a read-only memslot.
    pub readonly_code: bool,
    /// VMCALL at CPL 0.
    pub cpl0_vmcall: CallFate,
    /// VMMCALL at CPL 0.
    pub cpl0_vmmcall: CallFate,
    /// VMMCALL at CPL 3.
    pub cpl3_vmmcall: CallFate,
    /// VMCALL at CPL 3.
    pub cpl3_vmcall: CallFate,
    /// The encoding KVM wrote in its patch write (the host's native instruction).
    pub patched_to: Option<&'static str>,
    /// Whether an interrupt injected with `KVM_INTERRUPT` reached the guest's handler.
    pub interrupt_injection: bool,
    /// `KVM_GET_TSC_KHZ` of the probe vCPU.
    pub tsc_khz: Option<u64>,
    /// How the run ended.
    pub ended: String,
    /// The exits seen, in order (the evidence).
    pub exits: Vec<String>,
    /// Time the probe took, microseconds.
    pub micros: u64,
}

impl ProbeReport {
    fn fate_mut(&mut self, site: usize) -> Option<&mut CallFate> {
        match site {
            0 => Some(&mut self.cpl0_vmcall),
            1 => Some(&mut self.cpl0_vmmcall),
            2 => Some(&mut self.cpl3_vmmcall),
            3 => Some(&mut self.cpl3_vmcall),
            _ => None,
        }
    }

    /// The instruction KVM patches calls to, when it showed it.
    pub fn patched_instruction(&self) -> Option<HypercallInstruction> {
        match self.patched_to {
            Some("VMCALL") => Some(HypercallInstruction::Vmcall),
            Some("VMMCALL") => Some(HypercallInstruction::Vmmcall),
            _ => None,
        }
    }
}

/// Why the probe could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// An ioctl failed.
    #[error("probe VM: {op}: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// Memory setup failed.
    #[error("probe VM: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    /// Guest memory write failed.
    #[error("probe VM: writing guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

fn io(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ProbeError {
    move |source| ProbeError::Ioctl { op, source }
}

fn code_page() -> Vec<u8> {
    let mut c = vec![0xf4u8; PAGE as usize];
    let main: &[u8] = &[
        0x0f, 0x01, 0x1c, 0x25, 0x00, 0x10, 0x10, 0x00, // lidt [0x101000]
        0xb8, 0x34, 0x12, 0x00, 0x00, // mov eax, 0x1234
        0x0f, 0x01, 0xc1, // 0x0d: vmcall
        0xe7, 0x10, // out 0x10, eax
        0xb8, 0x34, 0x12, 0x00, 0x00, // mov eax, 0x1234
        0x0f, 0x01, 0xd9, // 0x17: vmmcall
        0xe7, 0x11, // out 0x11, eax
        0xfb, // sti
        0xf4, // hlt
        0xfa, // cli
        0xe6, 0x17, // out 0x17, al
        0x6a, 0x2b, // push 0x2b (user SS)
        0x68, 0x00, 0x00, 0x1f, 0x00, // push 0x1f0000 (user RSP)
        0x68, 0x02, 0x00, 0x00, 0x00, // push 0x2 (RFLAGS)
        0x6a, 0x33, // push 0x33 (user CS)
        0x68, 0x00, 0x02, 0x10, 0x00, // push 0x100200
        0x48, 0xcf, // iretq
    ];
    let irq: &[u8] = &[0xe6, 0x12, 0x48, 0xcf]; // out 0x12, al; iretq
    let ud: &[u8] = &[
        0x48, 0x8b, 0x04, 0x24, // mov rax, [rsp]
        0xe7, 0x16, // out 0x16, eax
        0x48, 0x83, 0x04, 0x24, 0x03, // add qword [rsp], 3
        0x48, 0xcf, // iretq
    ];
    let user: &[u8] = &[
        0xb8, 0x34, 0x12, 0x00, 0x00, // mov eax, 0x1234
        0x0f, 0x01, 0xd9, // 0x205: vmmcall
        0xe7, 0x13, // out 0x13, eax
        0xb8, 0x34, 0x12, 0x00, 0x00, // mov eax, 0x1234
        0x0f, 0x01, 0xc1, // 0x20f: vmcall
        0xe7, 0x15, // out 0x15, eax
        0xe6, 0x18, // out 0x18, al
        0xeb, 0xfe, // jmp $
    ];
    for (at, bytes) in [(0usize, main), (0x100, irq), (0x120, ud), (0x200, user)] {
        if let Some(dst) = c.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    c
}

fn gate(handler: u64, dpl: u8) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    e[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    e[5] = 0x8e | (dpl << 5);
    e[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    e[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    e
}

fn write_guest(mem: &GuestMem) -> Result<(), ProbeError> {
    let ram = mem.ram();
    ram.write_slice(&code_page(), GuestAddress(CODE))?;
    // IDTR at DATA: limit, base.
    let mut idtr = [0u8; 10];
    idtr[0..2].copy_from_slice(&0xfffu16.to_le_bytes());
    idtr[2..10].copy_from_slice(&IDT.to_le_bytes());
    ram.write_slice(&idtr, GuestAddress(DATA))?;
    // GDT at DATA + 0x100: kernel code/data, user data (0x28), user code (0x30), TSS (0x38).
    let tss = DATA + 0x200;
    let gdt: [u64; 9] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0,
        0,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
        TSS_LIMIT | ((tss & 0xff_ffff) << 16) | (0x89u64 << 40) | (((tss >> 24) & 0xff) << 56),
        tss >> 32,
    ];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.write_slice(&bytes, GuestAddress(DATA + 0x100))?;
    // TSS with RSP0 and an I/O permission bitmap that opens ports 0x00-0x1f to CPL 3.
    let mut t = [0u8; TSS_LIMIT as usize + 1];
    t[4..12].copy_from_slice(&0x1e_0000u64.to_le_bytes()); // RSP0
    t[102..104].copy_from_slice(&104u16.to_le_bytes());
    if let Some(last) = t.last_mut() {
        *last = 0xff; // the bitmap's terminator
    }
    ram.write_slice(&t, GuestAddress(tss))?;
    ram.write_slice(&gate(CODE + 0x120, 0), GuestAddress(IDT + 6 * 16))?;
    ram.write_slice(&gate(CODE + 0x100, 0), GuestAddress(IDT + 0x20 * 16))?;
    // Identity map of the first 1 GiB, user-accessible: PML4 -> PDPT -> PD of 2 MiB pages.
    ram.write_slice(&((PML4 + 0x1000) | 7).to_le_bytes(), GuestAddress(PML4))?;
    ram.write_slice(&((PML4 + 0x2000) | 7).to_le_bytes(), GuestAddress(PML4 + 0x1000))?;
    ram.write_slice(&0x87u64.to_le_bytes(), GuestAddress(PML4 + 0x2000))?;
    Ok(())
}

fn seg(selector: u16, type_: u8, l: u8, db: u8, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l,
        g: 1,
        ..Default::default()
    }
}

/// Runs the probe VM on `kvm`. `xen_intercept` asks for the Xen intercept to be configured
/// (when the capability says it exists).
pub fn run_probe(kvm: &Kvm, xen_intercept: bool) -> Result<ProbeReport, ProbeError> {
    let started = Instant::now();
    let vm = kvm.create_vm().map_err(io("KVM_CREATE_VM"))?;
    let mut report = ProbeReport {
        xen_intercept_configured: false,
        readonly_code: false,
        cpl0_vmcall: CallFate::NotReached,
        cpl0_vmmcall: CallFate::NotReached,
        cpl3_vmmcall: CallFate::NotReached,
        cpl3_vmcall: CallFate::NotReached,
        patched_to: None,
        interrupt_injection: false,
        tsc_khz: None,
        ended: String::new(),
        exits: Vec::new(),
        micros: 0,
    };
    if xen_intercept {
        let cfg = kvm_xen_hvm_config {
            flags: rawkvm::KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL,
            msr: XEN_CONFIG_MSR,
            ..Default::default()
        };
        match rawkvm::xen_hvm_config(&vm, &cfg) {
            Ok(()) => report.xen_intercept_configured = true,
            Err(e) => report.exits.push(format!("KVM_XEN_HVM_CONFIG failed: {e}")),
        }
    }
    let mem = GuestMem::new(RAM)?;
    let mut layout = Layout::new(32);
    if !report.xen_intercept_configured {
        layout.protect(&mem, CODE, PAGE)?;
        report.readonly_code = true;
    }
    write_guest(&mem)?;
    if let Err(e) = layout.apply(&mem, &vm) {
        // No read-only memslots: run with plain RAM and see what happens.
        report.exits.push(format!("read-only memslot refused: {e}"));
        report.readonly_code = false;
        layout = Layout::new(32);
        layout.apply(&mem, &vm)?;
    }
    let mut vcpu = vm.create_vcpu(0).map_err(io("KVM_CREATE_VCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(io("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(io("KVM_SET_CPUID2"))?;
    report.tsc_khz = vcpu.get_tsc_khz().ok().map(u64::from).filter(|k| *k > 0);
    let mut sregs = vcpu.get_sregs().map_err(io("KVM_GET_SREGS"))?;
    sregs.cs = seg(0x08, 11, 1, 0, 0);
    let data = seg(0x10, 3, 0, 1, 0);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: DATA + 0x200,
        limit: TSS_LIMIT as u32,
        selector: 0x38,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = DATA + 0x100;
    sregs.gdt.limit = 0x47;
    sregs.cr0 = 0x8005_0033;
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20;
    sregs.efer = 0x500;
    vcpu.set_sregs(&sregs).map_err(io("KVM_SET_SREGS"))?;
    let regs =
        kvm_bindings::kvm_regs { rip: CODE, rflags: 2, rsp: 0x1f_8000, ..Default::default() };
    vcpu.set_regs(&regs).map_err(io("KVM_SET_REGS"))?;

    // The deadline: kick this thread out of KVM_RUN if the guest stops exiting.
    rawkvm::install_kick_handler().map_err(io("sigaction"))?;
    rawkvm::set_kick_target(vcpu.get_kvm_run());
    let me = rawkvm::current_thread();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let deadline = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(DEADLINE) {
            rawkvm::kick_thread(me);
        }
    });

    let site_at = |rip: u64| SITES.iter().position(|(off, _, _)| CODE + off == rip);
    let mut irq_pending = false;
    for _ in 0..64 {
        let exit = vcpu.run();
        let mut complete_mmio = None;
        let mut stop = true;
        match exit {
            Err(e) if e.errno() == libc::EINTR => {
                vcpu.set_kvm_immediate_exit(0);
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                report.exits.push(format!("kicked at the deadline, rip={rip:#x}"));
                if let Some(f) = site_at(rip).and_then(|s| report.fate_mut(s)) {
                    *f = CallFate::Spun;
                }
                report.ended = "deadline".into();
            }
            Err(e) => {
                report.exits.push(format!("KVM_RUN failed: {e}"));
                report.ended = format!("KVM_RUN failed: {e}");
            }
            Ok(VcpuExit::MmioWrite(gpa, data)) => {
                let n = data.len();
                let mut b = [0u8; 3];
                if n == 3 {
                    b.copy_from_slice(data);
                }
                let cpl = vcpu.get_sregs().map(|s| s.cs.dpl).unwrap_or(0xff);
                report
                    .exits
                    .push(format!("mmio-write gpa={gpa:#x} len={n} data={b:02x?} cpl={cpl}"));
                if let Some(insn) = HypercallInstruction::from_bytes(b) {
                    report.patched_to = Some(insn.into());
                }
                complete_mmio = site_at(gpa);
                stop = complete_mmio.is_none();
                if stop {
                    report.ended = "unexpected MMIO write".into();
                }
            }
            Ok(VcpuExit::Unsupported(rawkvm::KVM_EXIT_XEN)) => {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                report.exits.push(format!("xen-hcall rip={rip:#x}"));
                if let Some(f) = site_at(rip).and_then(|s| report.fate_mut(s)) {
                    *f = CallFate::TrappedAsXen;
                }
                crate::vcpu::set_xen_result(vcpu.get_kvm_run(), TRAPPED_RAX);
                stop = false;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut b = [0u8; 4];
                for (d, s) in b.iter_mut().zip(data) {
                    *d = *s;
                }
                let value = u64::from(u32::from_le_bytes(b));
                report.exits.push(format!("io-out port={port:#x} value={value:#x}"));
                stop = false;
                let after = |site: usize, report: &mut ProbeReport| {
                    if let Some(f) = report.fate_mut(site) {
                        if *f == CallFate::NotReached {
                            *f = if value == TRAPPED_RAX {
                                CallFate::TrappedAsMmio
                            } else {
                                CallFate::AnsweredByHost(value)
                            };
                        }
                    }
                };
                match port {
                    0x10 => after(0, &mut report),
                    0x11 => after(1, &mut report),
                    0x13 => after(2, &mut report),
                    0x15 => after(3, &mut report),
                    0x12 => report.interrupt_injection = true,
                    0x16 => {
                        let site = site_at(value);
                        if let Some(f) = site.and_then(|s| report.fate_mut(s)) {
                            *f = CallFate::InvalidOpcode;
                        }
                    }
                    0x17 => {}
                    0x18 => {
                        report.ended = "completed".into();
                        stop = true;
                    }
                    _ => {
                        report.ended = format!("unexpected port {port:#x}");
                        stop = true;
                    }
                }
            }
            Ok(VcpuExit::Hlt) => {
                report.exits.push("hlt".into());
                irq_pending = true;
                stop = false;
            }
            Ok(VcpuExit::IrqWindowOpen) => {
                report.exits.push("irq-window-open".into());
                stop = false;
            }
            Ok(other) => {
                let name = format!("{other:?}");
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                report.exits.push(format!("{name} rip={rip:#x}"));
                report.ended = name;
            }
        }
        if let Some(site) = complete_mmio {
            // Complete the pending emulation, then answer the call.
            vcpu.set_kvm_immediate_exit(1);
            let r = vcpu.run().map(|exit| format!("{exit:?}"));
            vcpu.set_kvm_immediate_exit(0);
            match r {
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => {
                    report.ended = format!("completing the emulation failed: {e}");
                    break;
                }
                Ok(exit) => {
                    report.ended = format!("completing the emulation gave an exit: {exit}");
                    break;
                }
            }
            let mut regs = vcpu.get_regs().map_err(io("KVM_GET_REGS"))?;
            if let Some(f) = report.fate_mut(site) {
                *f = CallFate::TrappedAsMmio;
            }
            regs.rip += 3;
            regs.rax = TRAPPED_RAX;
            vcpu.set_regs(&regs).map_err(io("KVM_SET_REGS"))?;
        }
        if stop {
            break;
        }
        if irq_pending {
            let run = vcpu.get_kvm_run();
            if run.ready_for_interrupt_injection != 0 && run.if_flag != 0 {
                run.request_interrupt_window = 0;
                match rawkvm::interrupt(&vcpu, 0x20) {
                    Ok(()) => report.exits.push("KVM_INTERRUPT 0x20".into()),
                    Err(e) => report.exits.push(format!("KVM_INTERRUPT failed: {e}")),
                }
                irq_pending = false;
            } else {
                run.request_interrupt_window = 1;
            }
        }
    }
    let _ = done_tx.send(());
    let _ = deadline.join();
    rawkvm::set_kick_target(std::ptr::null_mut());
    if report.ended.is_empty() {
        report.ended = "exit budget used up".into();
    }
    report.micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_hold_the_instructions() {
        let c = code_page();
        for (off, _, insn) in SITES {
            let o = off as usize;
            assert_eq!(&c[o..o + 3], &insn.bytes(), "site {off:#x}");
        }
        assert_eq!(&c[0x100..0x104], &[0xe6, 0x12, 0x48, 0xcf]);
    }
}
