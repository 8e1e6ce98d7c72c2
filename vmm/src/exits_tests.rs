//! Exit handling fed with fake exits (Firecracker style): no KVM needed.

use std::collections::VecDeque;
use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_run, kvm_segment, kvm_sregs};
use polyvisor_config::InstructionChoice;
use polyvisor_core::testing::RecordingPlatform;
use polyvisor_core::{Dispatch, Exception, HypercallInstruction, Platform};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::{Console, ConsoleSink, Ports};
use crate::memory::{GuestMem, Layout};
use crate::testing::{test_engine, TestPersonality};
use crate::trap::{TrapConfig, TrapStrategy};
use crate::vcpu::{Exit, InterruptWindow, VcpuBackend, VcpuError};

/// How the fake completes a pending exit when run with `immediate_exit`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// The emulator's patch write: nothing changes.
    Mmio,
    /// KVM's Xen completion: RAX = result, RIP += 3.
    Xen,
}

struct FakeVcpu {
    regs: kvm_regs,
    sregs: kvm_sregs,
    exits: VecDeque<Exit>,
    pending: Pending,
    xen_result: u64,
    immediate: bool,
    injected: Vec<Exception>,
    msr: Option<(bool, u64)>,
    io: Vec<u8>,
    runs: usize,
    /// Exits the completion run produces before it returns EINTR.
    completion_exits: VecDeque<Exit>,
    /// What `defers_mmio_write_completion` answers.
    defers: bool,
}

impl FakeVcpu {
    /// 32-bit protected mode, paging off, CPL 0, RIP at 0x100000.
    fn new() -> Self {
        let code = kvm_segment {
            limit: 0xffff_ffff,
            selector: 0x18,
            type_: 11,
            present: 1,
            db: 1,
            s: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment { selector: 0x10, type_: 3, ..code };
        let sregs = kvm_sregs { cs: code, ss: data, ds: data, cr0: 0x11, ..Default::default() };
        FakeVcpu {
            regs: kvm_regs { rip: 0x10_0000, rflags: 2, ..Default::default() },
            sregs,
            exits: VecDeque::new(),
            pending: Pending::None,
            xen_result: 0,
            immediate: false,
            injected: Vec::new(),
            msr: None,
            io: Vec::new(),
            runs: 0,
            completion_exits: VecDeque::new(),
            defers: false,
        }
    }
}

impl VcpuBackend for FakeVcpu {
    fn run(&mut self) -> Result<Exit, VcpuError> {
        self.runs += 1;
        if self.immediate {
            if let Some(exit) = self.completion_exits.pop_front() {
                return Ok(exit);
            }
            if self.pending == Pending::Xen {
                self.regs.rax = self.xen_result;
                self.regs.rip += 3;
            }
            self.pending = Pending::None;
            return Ok(Exit::Interrupted);
        }
        let exit = self.exits.pop_front().unwrap_or(Exit::Hlt);
        self.pending = match exit {
            Exit::MmioWrite { .. } => Pending::Mmio,
            Exit::XenHcall { .. } => Pending::Xen,
            _ => Pending::None,
        };
        Ok(exit)
    }
    fn io_data(&mut self) -> &mut [u8] {
        &mut self.io
    }
    fn complete_mmio_read(&mut self, _data: &[u8]) {}
    fn complete_msr(&mut self, error: bool, data: u64) {
        self.msr = Some((error, data));
    }
    fn complete_xen_hcall(&mut self, result: u64) {
        self.xen_result = result;
    }
    fn regs(&mut self) -> Result<kvm_regs, VcpuError> {
        Ok(self.regs)
    }
    fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), VcpuError> {
        self.regs = *regs;
        Ok(())
    }
    fn sregs(&mut self) -> Result<kvm_sregs, VcpuError> {
        Ok(self.sregs)
    }
    fn inject_exception(&mut self, exception: Exception) -> Result<(), VcpuError> {
        self.injected.push(exception);
        Ok(())
    }
    fn inject_interrupt(&mut self, _vector: u8) -> Result<(), VcpuError> {
        Ok(())
    }
    fn interrupt_window(&self) -> InterruptWindow {
        InterruptWindow::default()
    }
    fn request_interrupt_window(&mut self, _on: bool) {}
    fn set_immediate_exit(&mut self, on: bool) {
        self.immediate = on;
    }
    fn flush_tlb(&mut self) -> Result<(), VcpuError> {
        Ok(())
    }
    fn defers_mmio_write_completion(&self) -> bool {
        self.defers
    }
}

struct FakeVm {
    mem: GuestMem,
    personality: Arc<TestPersonality>,
    dispatch: Arc<dyn Dispatch>,
    platform: RecordingPlatform,
    console: Console,
    ports: Ports,
    trap: TrapConfig,
    stats: Stats,
    /// What the kernel image had: (GPA, bytes).
    original: Option<(u64, [u8; 3])>,
}

impl FakeVm {
    fn new(strategy: TrapStrategy, instruction: InstructionChoice) -> Self {
        let (personality, dispatch) = test_engine();
        FakeVm {
            mem: GuestMem::new(4 << 20).unwrap(),
            personality,
            dispatch,
            platform: RecordingPlatform::new(1),
            console: Console::new(ConsoleSink::Capture(Vec::new()), 1),
            ports: Ports::default(),
            trap: TrapConfig {
                strategy,
                instruction,
                native: HypercallInstruction::Vmcall,
                defer_completion: true,
            },
            stats: Stats::default(),
            original: None,
        }
    }
    fn code(&self, gpa: u64, bytes: &[u8]) {
        self.mem.ram().write_slice(bytes, GuestAddress(gpa)).unwrap();
    }
}

impl VmServices for FakeVm {
    fn platform(&self) -> &dyn Platform {
        &self.platform
    }
    fn mem(&self) -> &GuestMem {
        &self.mem
    }
    fn dispatch(&self) -> &dyn Dispatch {
        &*self.dispatch
    }
    fn console(&self) -> &Console {
        &self.console
    }
    fn ports(&self) -> &Ports {
        &self.ports
    }
    fn trap(&self) -> &TrapConfig {
        &self.trap
    }
    fn stats(&self, _vcpu: u32) -> &Stats {
        &self.stats
    }
    fn take_spin_check(&self, _vcpu: u32) -> bool {
        false
    }
    fn protect_page_now(&self, _vcpu: u32, _gpa: u64) -> Result<bool, String> {
        Ok(true)
    }
    fn original_bytes(&self, gpa: u64) -> Option<[u8; 3]> {
        self.original.filter(|(g, _)| *g == gpa).map(|(_, b)| b)
    }
}

fn patch_write(gpa: u64) -> Exit {
    let mut data = [0u8; 8];
    data[..3].copy_from_slice(&[0x0f, 0x01, 0xc1]);
    Exit::MmioWrite { gpa, len: 3, data }
}

#[test]
fn write_protect_hypercall_is_dispatched_with_the_original_instruction() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.code(0x10_0000, &HypercallInstruction::Vmmcall.bytes());
    let mut v = FakeVcpu::new();
    v.regs.rax = crate::testing::calls::INC;
    v.regs.rbx = 41;
    let action = handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(v.regs.rax, 42);
    assert_eq!(v.regs.rip, 0x10_0003);
    assert_eq!(v.runs, 1, "one completion run");
    // The emulator patched to VMCALL; the engine saw the guest's VMMCALL.
    assert_eq!(vm.personality.last_instruction.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The patch was not applied to memory.
    let mut b = [0u8; 3];
    vm.mem.ram().read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(b, HypercallInstruction::Vmmcall.bytes());
}

#[test]
fn a_patch_split_across_pages_is_one_hypercall() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.code(0x10_0ffe, &HypercallInstruction::Vmmcall.bytes());
    let mut v = FakeVcpu::new();
    v.regs.rip = 0x10_0ffe;
    v.regs.rax = crate::testing::calls::INC;
    v.regs.rbx = 1;
    let mut first = [0u8; 8];
    first[..2].copy_from_slice(&[0x0f, 0x01]);
    let mut second = [0u8; 8];
    second[0] = 0xc1;
    v.completion_exits.push_back(Exit::MmioWrite { gpa: 0x10_1000, len: 1, data: second });
    let a = handle_exit(Exit::MmioWrite { gpa: 0x10_0ffe, len: 2, data: first }, 0, &mut v, &vm)
        .unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(v.regs.rax, 2);
    assert_eq!(v.regs.rip, 0x10_1001);
    let mut b = [0u8; 3];
    vm.mem.ram().read_slice(&mut b, GuestAddress(0x10_0ffe)).unwrap();
    assert_eq!(b, HypercallInstruction::Vmmcall.bytes(), "the original bytes stay");
}

#[test]
fn a_hypercall_encoding_written_elsewhere_is_a_guest_write() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.code(0x10_0000, &[0x90, 0x90, 0x90]);
    let mut v = FakeVcpu::new();
    let action = handle_exit(patch_write(0x10_2000), 0, &mut v, &vm).unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(v.regs.rip, 0x10_0000);
    let mut b = [0u8; 3];
    vm.mem.ram().read_slice(&mut b, GuestAddress(0x10_2000)).unwrap();
    assert_eq!(b, [0x0f, 0x01, 0xc1], "applied to RAM");
    assert_eq!(vm.personality.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_plain_write_to_protected_ram_is_applied_without_completion() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    let mut v = FakeVcpu::new();
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&[1, 2, 3, 4]);
    let action =
        handle_exit(Exit::MmioWrite { gpa: 0x10_0800, len: 4, data }, 0, &mut v, &vm).unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(v.runs, 0);
    let w: u32 = vm.mem.ram().read_obj(GuestAddress(0x10_0800)).unwrap();
    assert_eq!(w, 0x0403_0201);
}

#[test]
fn a_write_to_an_overlay_is_gp_with_registers_rolled_back() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    let mut layout = Layout::new(32);
    layout.set_overlay(&vm.mem, 1, Some((0x20_0000, &[0xc3]))).unwrap();
    let mut v = FakeVcpu::new();
    let before = v.regs;
    let mut data = [0u8; 8];
    data[0] = 0x90;
    let exit = Exit::MmioWrite { gpa: 0x20_0010, len: 1, data };
    let action = handle_exit(exit, 0, &mut v, &vm).unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(v.injected, vec![Exception::GeneralProtection(0)]);
    assert_eq!(v.regs.rip, before.rip);
    let mut b = [0u8; 1];
    assert!(vm.mem.read_visible(0x20_0010, &mut b));
    assert_eq!(b, [0], "the overlay is unchanged");
}

#[test]
fn the_other_instruction_is_ud_when_one_is_chosen() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Vmcall);
    vm.code(0x10_0000, &HypercallInstruction::Vmmcall.bytes());
    let mut v = FakeVcpu::new();
    let action = handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(v.injected, vec![Exception::InvalidOpcode]);
    assert_eq!(v.regs.rip, 0x10_0000, "RIP stays on the instruction");
}

#[test]
fn outcomes_retry_halt_exit_and_inject() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.code(0x10_0000, &HypercallInstruction::Vmcall.bytes());
    let mut v = FakeVcpu::new();
    v.regs.rax = crate::testing::calls::RETRY;
    v.regs.rbx = 2;
    assert_eq!(handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap(), Action::Continue);
    assert_eq!(v.regs.rip, 0x10_0000, "retry re-executes");
    v.regs.rax = crate::testing::calls::HALT;
    assert_eq!(handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap(), Action::Halt);
    assert_eq!(v.regs.rip, 0x10_0003);
    v.regs.rip = 0x10_0000;
    v.regs.rax = crate::testing::calls::POWEROFF;
    v.regs.rbx = 5;
    let a = handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!(a, Action::End(VmEnd::Guest(polyvisor_core::ExitReason::Poweroff(5))));
    v.regs.rip = 0x10_0000;
    v.regs.rax = crate::testing::calls::UD;
    assert_eq!(handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap(), Action::Continue);
    assert_eq!(v.injected, vec![Exception::InvalidOpcode]);
    assert_eq!(v.regs.rip, 0x10_0000);
}

#[test]
fn xen_intercept_completion_then_outcome() {
    let vm = FakeVm::new(TrapStrategy::XenIntercept, InstructionChoice::Auto);
    vm.code(0x10_0000, &HypercallInstruction::Vmcall.bytes());
    let mut v = FakeVcpu::new();
    v.regs.rax = crate::testing::calls::ADD;
    v.regs.rbx = 40;
    v.regs.rcx = 2;
    v.sregs.ss.dpl = 3; // the intercept traps every CPL
    let exit = Exit::XenHcall { longmode: false, cpl: 3, input: 1, params: [0; 6] };
    v.exits.push_back(exit);
    let first = v.run().unwrap();
    let a = handle_exit(first, 0, &mut v, &vm).unwrap();
    assert_eq!(a, Action::Continue);
    // ADD is kernel-only: the test personality refuses CPL 3 with -1.
    assert_eq!(v.regs.rax, 0xffff_ffff);
    assert_eq!(v.regs.rip, 0x10_0003);
    assert_eq!(vm.personality.last_cpl.load(std::sync::atomic::Ordering::Relaxed), 3);
    // Retry: KVM's completion skipped the instruction; the VMM puts RIP back.
    v.regs.rip = 0x10_0000;
    v.regs.rax = crate::testing::calls::RETRY;
    v.regs.rbx = 2;
    v.sregs.ss.dpl = 0;
    v.exits.push_back(exit);
    let again = v.run().unwrap();
    handle_exit(again, 0, &mut v, &vm).unwrap();
    assert_eq!(v.regs.rip, 0x10_0000);
    assert_eq!(v.regs.rax, crate::testing::calls::RETRY, "RAX restored");
}

#[test]
fn xen_intercept_reports_the_instruction_the_image_had() {
    let mut vm = FakeVm::new(TrapStrategy::XenIntercept, InstructionChoice::Auto);
    // KVM rewrote the guest's VMMCALL to the native VMCALL before intercepting it.
    vm.code(0x10_0000, &HypercallInstruction::Vmcall.bytes());
    vm.original = Some((0x10_0000, HypercallInstruction::Vmmcall.bytes()));
    let mut v = FakeVcpu::new();
    v.regs.rax = crate::testing::calls::INC;
    v.exits.push_back(Exit::XenHcall { longmode: false, cpl: 0, input: 0, params: [0; 6] });
    let first = v.run().unwrap();
    handle_exit(first, 0, &mut v, &vm).unwrap();
    assert_eq!(v.regs.rax, 1);
    assert_eq!(vm.personality.last_instruction.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn xen_exit_decoding_from_a_kvm_run_image() {
    // kvm_run is plain data; build one as KVM would fill it.
    let mut run = kvm_run { exit_reason: crate::kvm::KVM_EXIT_XEN, ..Default::default() };
    let mut xen =
        kvm_bindings::kvm_xen_exit { type_: crate::kvm::KVM_EXIT_XEN_HCALL, ..Default::default() };
    xen.u.hcall = kvm_bindings::kvm_xen_exit__bindgen_ty_1__bindgen_ty_1 {
        longmode: 1,
        cpl: 3,
        input: 0x1d,
        result: 0,
        params: [1, 2, 3, 4, 5, 6],
    };
    run.__bindgen_anon_1.xen = xen;
    let exit = crate::vcpu::xen_exit_from_run(&run).unwrap();
    assert_eq!(
        exit,
        Exit::XenHcall { longmode: true, cpl: 3, input: 0x1d, params: [1, 2, 3, 4, 5, 6] }
    );
    crate::vcpu::set_xen_result(&mut run, 0x55);
    // SAFETY: the `xen` arm was written above.
    let result = unsafe { run.__bindgen_anon_1.xen.u.hcall.result };
    assert_eq!(result, 0x55);
    xen.type_ = 7;
    run.__bindgen_anon_1.xen = xen;
    assert!(crate::vcpu::xen_exit_from_run(&run).is_err());
}

#[test]
fn unknown_ports_end_with_a_dump_and_msrs_route() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    let mut v = FakeVcpu::new();
    v.io = vec![0x42];
    let a = handle_exit(Exit::IoOut { port: 0x80, size: 1, count: 1 }, 0, &mut v, &vm).unwrap();
    match a {
        Action::End(VmEnd::Unhandled { access, dump, .. }) => {
            assert!(access.contains("out 0x80"), "{access}");
            assert!(dump.contains("rip=0000000000100000"), "{dump}");
        }
        other => panic!("{other:?}"),
    }
    v.io = vec![7, 0, 0, 0];
    let a = handle_exit(Exit::IoOut { port: 0xf4, size: 4, count: 1 }, 0, &mut v, &vm).unwrap();
    assert_eq!(a, Action::End(VmEnd::ExitPort(7)));
    handle_exit(Exit::RdMsr { index: 0x4000_0006 }, 0, &mut v, &vm).unwrap();
    assert_eq!(v.msr, Some((true, 0)));
    handle_exit(Exit::WrMsr { index: 0x4000_0005, data: 9 }, 0, &mut v, &vm).unwrap();
    assert_eq!(v.msr, Some((false, 0)));
    handle_exit(Exit::RdMsr { index: 0x4000_0005 }, 0, &mut v, &vm).unwrap();
    assert_eq!(v.msr, Some((false, 9)));
    let a = handle_exit(Exit::Shutdown, 0, &mut v, &vm).unwrap();
    assert!(matches!(a, Action::End(VmEnd::TripleFault { .. })));
    let a =
        handle_exit(Exit::InternalError { suberror: 1, data: [0; 4], ndata: 0 }, 0, &mut v, &vm)
            .unwrap();
    assert!(matches!(a, Action::End(VmEnd::InternalError { .. })));
}

#[test]
fn a_deferring_backend_is_answered_from_the_exit_without_a_completion_run() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.code(0x10_0000, &HypercallInstruction::Vmcall.bytes());
    let mut v = FakeVcpu::new();
    v.defers = true;
    v.regs.rax = crate::testing::calls::INC;
    v.regs.rbx = 41;
    let action = handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!((v.regs.rax, v.regs.rip), (42, 0x10_0003));
    assert_eq!(v.runs, 0, "the next ordinary run completes the emulation");
    assert_eq!(vm.stats.completions.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(vm.stats.hypercalls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_deferring_backend_still_completes_before_an_injection() {
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.code(0x10_0000, &HypercallInstruction::Vmcall.bytes());
    let mut v = FakeVcpu::new();
    v.defers = true;
    v.regs.rax = crate::testing::calls::UD;
    assert_eq!(handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap(), Action::Continue);
    assert_eq!(v.runs, 1, "one completion run before KVM_SET_VCPU_EVENTS");
    assert_eq!(v.injected, vec![Exception::InvalidOpcode]);
    assert_eq!(v.regs.rip, 0x10_0000);
    assert_eq!(vm.stats.completions.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_split_patch_or_the_eager_choice_completes_first() {
    // The instruction crosses a page: the patch is two writes.
    let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.code(0x10_0ffe, &HypercallInstruction::Vmmcall.bytes());
    let mut v = FakeVcpu::new();
    v.defers = true;
    v.regs.rip = 0x10_0ffe;
    v.regs.rax = crate::testing::calls::INC;
    let mut first = [0u8; 8];
    first[..2].copy_from_slice(&[0x0f, 0x01]);
    let mut second = [0u8; 8];
    second[0] = 0xc1;
    v.completion_exits.push_back(Exit::MmioWrite { gpa: 0x10_1000, len: 1, data: second });
    handle_exit(Exit::MmioWrite { gpa: 0x10_0ffe, len: 2, data: first }, 0, &mut v, &vm).unwrap();
    assert_eq!(v.runs, 2);
    assert_eq!((v.regs.rax, v.regs.rip), (1, 0x10_1001));

    // RunOptions::eager_completion.
    let mut vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
    vm.trap.defer_completion = false;
    vm.code(0x10_0000, &HypercallInstruction::Vmcall.bytes());
    let mut v = FakeVcpu::new();
    v.defers = true;
    v.regs.rax = crate::testing::calls::INC;
    handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!((v.runs, v.regs.rax, v.regs.rip), (1, 1, 0x10_0003));
}

#[test]
fn the_vmm_performs_the_ret_that_follows_a_call_in_a_page() {
    // 32-bit flat, paging off: `vmcall; ret` at 0x10_0000, the return address on the stack.
    let setup = |tail: u8| {
        let vm = FakeVm::new(TrapStrategy::WriteProtect, InstructionChoice::Auto);
        let mut code = HypercallInstruction::Vmcall.bytes().to_vec();
        code.push(tail);
        vm.code(0x10_0000, &code);
        vm.mem.ram().write_obj(0x10_2468u32, GuestAddress(0x8000)).unwrap();
        let mut v = FakeVcpu::new();
        v.regs.rax = crate::testing::calls::INC;
        v.regs.rsp = 0x8000;
        (vm, v)
    };
    let (vm, mut v) = setup(0xc3);
    handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!((v.regs.rax, v.regs.rip, v.regs.rsp), (1, 0x10_2468, 0x8004));
    assert_eq!(vm.stats.page_returns.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Not a ret after the call: the guest goes on after the instruction.
    let (vm, mut v) = setup(0x90);
    handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!((v.regs.rip, v.regs.rsp), (0x10_0003, 0x8000));

    // Single-stepping: the guest runs its ret itself.
    let (vm, mut v) = setup(0xc3);
    v.regs.rflags |= 1 << 8;
    handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!((v.regs.rip, v.regs.rsp), (0x10_0003, 0x8000));

    // A retried call stays on its instruction.
    let (vm, mut v) = setup(0xc3);
    v.regs.rax = crate::testing::calls::RETRY;
    v.regs.rbx = 2;
    handle_exit(patch_write(0x10_0000), 0, &mut v, &vm).unwrap();
    assert_eq!((v.regs.rip, v.regs.rsp), (0x10_0000, 0x8000));
}
