//! The few KVM ioctls kvm-ioctls does not wrap, in its style, and the vCPU kick signal.
//!
//! Every wrapper has one `unsafe` block under a `// SAFETY:` comment.

use std::cell::Cell;
use std::sync::Once;

use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::{
    kvm_fpu, kvm_interrupt, kvm_run, kvm_sregs, kvm_translation, kvm_xen_hvm_config, KVMIO,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

mod nr {
    #![allow(missing_docs)]
    use super::*;
    ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
    ioctl_iow_nr!(KVM_XEN_HVM_CONFIG, KVMIO, 0x7a, kvm_xen_hvm_config);
    ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
    ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
}
use nr::{KVM_GET_FPU, KVM_GET_SREGS, KVM_INTERRUPT, KVM_TRANSLATE, KVM_XEN_HVM_CONFIG};

/// A vCPU fd known only by number (the vCPU thread's own, for Platform calls that a handler
/// makes on the vCPU that trapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawVcpu(pub RawFd);

impl AsRawFd for RawVcpu {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// `KVM_GET_FPU` on a vCPU fd (XMM registers among others).
pub fn get_fpu(vcpu: RawVcpu) -> Result<kvm_fpu, errno::Error> {
    let mut fpu = kvm_fpu::default();
    // SAFETY: `vcpu` is a vCPU fd kept open by the thread that set it; KVM writes exactly one
    // `kvm_fpu` to the pointer, valid for the call. The return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(&vcpu, KVM_GET_FPU(), &mut fpu) };
    if ret == 0 {
        Ok(fpu)
    } else {
        Err(errno::Error::last())
    }
}

/// `KVM_GET_SREGS` on a vCPU fd (the control registers a page walk needs).
pub fn get_sregs(vcpu: RawVcpu) -> Result<kvm_sregs, errno::Error> {
    let mut sregs = kvm_sregs::default();
    // SAFETY: `vcpu` is a vCPU fd kept open by the thread that set it; KVM writes exactly one
    // `kvm_sregs` to the pointer, valid for the call. The return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(&vcpu, KVM_GET_SREGS(), &mut sregs) };
    if ret == 0 {
        Ok(sregs)
    } else {
        Err(errno::Error::last())
    }
}

/// `KVM_TRANSLATE`: a guest linear address through the vCPU's current paging.
pub fn translate(vcpu: RawVcpu, gva: u64) -> Result<kvm_translation, errno::Error> {
    let mut t = kvm_translation { linear_address: gva, ..Default::default() };
    // SAFETY: `vcpu` is a vCPU fd kept open by the thread that set it; KVM reads and writes
    // one `kvm_translation` through the pointer, valid for the call. The return is checked.
    let ret = unsafe { ioctl_with_mut_ref(&vcpu, KVM_TRANSLATE(), &mut t) };
    if ret == 0 {
        Ok(t)
    } else {
        Err(errno::Error::last())
    }
}

/// `KVM_CAP_XEN_HVM`.
pub const KVM_CAP_XEN_HVM: u32 = 38;
/// `KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL` in KVM_CAP_XEN_HVM's bitmap.
pub const KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL: u32 = 1 << 1;
/// `KVM_CAP_SYNC_REGS`.
pub const KVM_CAP_SYNC_REGS: u32 = 74;
/// `KVM_CAP_X86_USER_SPACE_MSR`.
pub const KVM_CAP_X86_USER_SPACE_MSR: u32 = 188;
/// `KVM_CAP_X86_MSR_FILTER`.
pub const KVM_CAP_X86_MSR_FILTER: u32 = 189;
/// `KVM_CAP_DISABLE_QUIRKS2`.
pub const KVM_CAP_DISABLE_QUIRKS2: u32 = 213;
/// `KVM_CAP_NR_MEMSLOTS`.
pub const KVM_CAP_NR_MEMSLOTS: u32 = 10;
/// `KVM_X86_QUIRK_FIX_HYPERCALL_INSN`.
pub const KVM_X86_QUIRK_FIX_HYPERCALL_INSN: u64 = 1 << 5;
/// `KVM_EXIT_XEN`.
pub const KVM_EXIT_XEN: u32 = 34;
/// `KVM_EXIT_XEN_HCALL`.
pub const KVM_EXIT_XEN_HCALL: u32 = 1;

/// Queues external interrupt `vector` on a vCPU without an in-kernel irqchip
/// (`KVM_INTERRUPT`). Must be called from the vCPU's own thread, between runs.
///
/// # Example
///
/// ```no_run
/// # use kvm_ioctls::Kvm;
/// let kvm = Kvm::new().unwrap();
/// let vm = kvm.create_vm().unwrap();
/// let vcpu = vm.create_vcpu(0).unwrap();
/// polyvisor_vmm::kvm::interrupt(&vcpu, 0x20).unwrap();
/// ```
pub fn interrupt(vcpu: &VcpuFd, vector: u8) -> Result<(), errno::Error> {
    let irq = kvm_interrupt { irq: u32::from(vector) };
    // SAFETY: `vcpu` is a vCPU fd; KVM reads exactly one `kvm_interrupt` from the pointer,
    // which is valid for the duration of the call. The return value is checked.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(errno::Error::last())
    }
}

/// Configures KVM's Xen HVM support (`KVM_XEN_HVM_CONFIG`); with
/// [`KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL`] every VMCALL/VMMCALL exits as `KVM_EXIT_XEN`.
///
/// # Example
///
/// ```no_run
/// # use kvm_ioctls::Kvm;
/// let kvm = Kvm::new().unwrap();
/// let vm = kvm.create_vm().unwrap();
/// let cfg = kvm_bindings::kvm_xen_hvm_config {
///     flags: polyvisor_vmm::kvm::KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL,
///     msr: 0x4fff_ff00,
///     ..Default::default()
/// };
/// let _ = polyvisor_vmm::kvm::xen_hvm_config(&vm, &cfg);
/// ```
pub fn xen_hvm_config(vm: &VmFd, config: &kvm_xen_hvm_config) -> Result<(), errno::Error> {
    // SAFETY: `vm` is a VM fd; KVM reads exactly one `kvm_xen_hvm_config` from the pointer,
    // which is valid for the duration of the call. The return value is checked.
    let ret = unsafe { ioctl_with_ref(vm, KVM_XEN_HVM_CONFIG(), config) };
    if ret == 0 {
        Ok(())
    } else {
        Err(errno::Error::last())
    }
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, for the kick signal handler.
    static KICK_TARGET: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
    /// The vCPU this thread runs: (index, fd).
    static CURRENT_VCPU: Cell<Option<(u32, RawVcpu)>> = const { Cell::new(None) };
}

/// Records (or clears) the vCPU this thread runs.
pub fn set_current_vcpu(v: Option<(u32, RawVcpu)>) {
    CURRENT_VCPU.with(|c| c.set(v));
}

/// The vCPU fd of vCPU `index` if this thread runs it.
pub fn current_vcpu(index: u32) -> Option<RawVcpu> {
    CURRENT_VCPU.with(Cell::get).filter(|(i, _)| *i == index).map(|(_, fd)| fd)
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let target = KICK_TARGET.with(Cell::get);
    if !target.is_null() {
        // SAFETY: the pointer was registered by this very thread for the `kvm_run` mapping of
        // the vCPU it runs, and is cleared before that mapping goes away. A volatile byte
        // store is async-signal-safe; KVM reads the flag on its next entry.
        unsafe { std::ptr::addr_of_mut!((*target).immediate_exit).write_volatile(1) };
    }
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

/// Installs the kick handler once per process (without SA_RESTART, so KVM_RUN returns EINTR).
pub fn install_kick_handler() -> Result<(), errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
    });
    result
}

/// Registers (or with null clears) this thread's `kvm_run` as the kick target.
pub fn set_kick_target(run: *mut kvm_run) {
    KICK_TARGET.with(|t| t.set(run));
}

/// Sends the kick signal to a thread.
pub fn kick_thread(thread: libc::pthread_t) -> bool {
    // SAFETY: `thread` is a live, unjoined thread: callers hold the vCPU's kick lock, under
    // which the thread clears its handle before it exits.
    unsafe { libc::pthread_kill(thread, kick_signal()) == 0 }
}

/// The calling thread's pthread handle.
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}
