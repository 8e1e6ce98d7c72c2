//! The vCPU backend: a narrow trait ([`VcpuBackend`]) with neutral exits ([`Exit`]) that the
//! exit handler drives, its KVM implementation ([`KvmVcpu`], with `KVM_CAP_SYNC_REGS` on the
//! hot path where available), and the vCPU's state as an explicit enum ([`VcpuState`]).
//!
//! Tests drive the exit handler with a fake backend and fake exits; nothing in the exit path
//! needs `/dev/kvm`.

use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
use kvm_ioctls::{VcpuExit, VcpuFd};
use polyvisor_core::Exception;

use crate::kvm;

/// A failure of a vCPU ioctl.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// An ioctl failed.
    #[error("{op}: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// KVM reported an exit the backend cannot describe.
    #[error("malformed exit: {0}")]
    Malformed(&'static str),
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl { op, source }
}

/// A vCPU exit, owned and neutral of kvm-ioctls' borrowed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `KVM_RUN` returned EINTR: a kick, or `immediate_exit`.
    Interrupted,
    /// `out`: the data is read with [`VcpuBackend::io_data`].
    IoOut {
        /// Port.
        port: u16,
        /// Bytes per access (1, 2 or 4).
        size: u8,
        /// Accesses (more than one for `rep outs`).
        count: u32,
    },
    /// `in`: the answer is written with [`VcpuBackend::io_data`].
    IoIn {
        /// Port.
        port: u16,
        /// Bytes per access.
        size: u8,
        /// Accesses.
        count: u32,
    },
    /// A write to a GPA with no writable memory (a read-only slot or no slot).
    MmioWrite {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes (at most 8).
        len: u8,
        /// The data, little-endian.
        data: [u8; 8],
    },
    /// A read from a GPA with no memory; answer with [`VcpuBackend::complete_mmio_read`].
    MmioRead {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes (at most 8).
        len: u8,
    },
    /// RDMSR sent to user space; answer with [`VcpuBackend::complete_msr`].
    RdMsr {
        /// MSR index.
        index: u32,
    },
    /// WRMSR sent to user space; answer with [`VcpuBackend::complete_msr`].
    WrMsr {
        /// MSR index.
        index: u32,
        /// Value written.
        data: u64,
    },
    /// `KVM_EXIT_XEN` of type `KVM_EXIT_XEN_HCALL` (the Xen intercept).
    XenHcall {
        /// 64-bit caller.
        longmode: bool,
        /// CPL of the caller.
        cpl: u8,
        /// RAX.
        input: u64,
        /// KVM's view of the Xen parameters.
        params: [u64; 6],
    },
    /// HLT with no in-kernel irqchip.
    Hlt,
    /// The interrupt window asked for is open.
    IrqWindowOpen,
    /// Triple fault.
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError {
        /// Suberror (1: emulation failure).
        suberror: u32,
        /// The first data words.
        data: [u64; 4],
        /// How many are valid.
        ndata: u32,
    },
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent {
        /// Event type (1 shutdown, 2 reset, 3 crash).
        kind: u32,
    },
    /// Any other exit reason.
    Other(u32),
}

impl Exit {
    /// A short name for counters and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Exit::Interrupted => "interrupted",
            Exit::IoOut { .. } => "io-out",
            Exit::IoIn { .. } => "io-in",
            Exit::MmioWrite { .. } => "mmio-write",
            Exit::MmioRead { .. } => "mmio-read",
            Exit::RdMsr { .. } => "rdmsr",
            Exit::WrMsr { .. } => "wrmsr",
            Exit::XenHcall { .. } => "xen-hcall",
            Exit::Hlt => "hlt",
            Exit::IrqWindowOpen => "irq-window",
            Exit::Shutdown => "shutdown",
            Exit::InternalError { .. } => "internal-error",
            Exit::FailEntry { .. } => "fail-entry",
            Exit::SystemEvent { .. } => "system-event",
            Exit::Other(_) => "other",
        }
    }
}

/// What KVM said about interrupt injection at the last exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterruptWindow {
    /// `ready_for_interrupt_injection`.
    pub ready: bool,
    /// `if_flag`: RFLAGS.IF.
    pub if_flag: bool,
}

/// The narrow interface the exit handler needs from a vCPU.
pub trait VcpuBackend {
    /// Enters the guest until the next exit.
    fn run(&mut self) -> Result<Exit, VcpuError>;
    /// The data area of the last port I/O exit (`size * count` bytes).
    fn io_data(&mut self) -> &mut [u8];
    /// Answers the last MMIO read.
    fn complete_mmio_read(&mut self, data: &[u8]);
    /// Answers the last RDMSR/WRMSR: `error` injects #GP; `data` is the RDMSR value.
    fn complete_msr(&mut self, error: bool, data: u64);
    /// Sets the result of the last Xen hypercall exit.
    fn complete_xen_hcall(&mut self, result: u64);
    /// The general registers.
    fn regs(&mut self) -> Result<kvm_regs, VcpuError>;
    /// Writes the general registers (applied before the next run).
    fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), VcpuError>;
    /// The special registers.
    fn sregs(&mut self) -> Result<kvm_sregs, VcpuError>;
    /// Injects an exception, delivered through the guest's IDT at the next run.
    fn inject_exception(&mut self, exception: Exception) -> Result<(), VcpuError>;
    /// Queues an external interrupt (only when the window is open).
    fn inject_interrupt(&mut self, vector: u8) -> Result<(), VcpuError>;
    /// The interrupt window at the last exit.
    fn interrupt_window(&self) -> InterruptWindow;
    /// Asks for an exit as soon as the guest can take an interrupt.
    fn request_interrupt_window(&mut self, on: bool);
    /// Sets `immediate_exit`: the next run only completes pending I/O and returns EINTR.
    fn set_immediate_exit(&mut self, on: bool);
    /// Drops the guest's cached translations before the next entry (rewriting the special
    /// registers makes KVM reset the MMU context and flush).
    fn flush_tlb(&mut self) -> Result<(), VcpuError>;
    /// Whether, after an MMIO write exit, registers written now are loaded by the next run
    /// *before* it completes the pending write, and that completion changes no register. True
    /// for KVM: `KVM_RUN` applies dirty sync registers, then `complete_emulated_mmio`, which
    /// for a write only retires the fragment. Lets the write-protect trap answer a call from
    /// its MMIO exit without a completion run.
    fn defers_mmio_write_completion(&self) -> bool {
        false
    }
}

/// The vCPU thread's state (Firecracker's explicit state machine, reduced to what this VMM
/// needs). Stored in the shared per-vCPU block for reports and the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    /// Created, not yet running.
    Created = 0,
    /// Inside or around `KVM_RUN`.
    Running = 1,
    /// Parked after HLT or a halting hypercall, until woken.
    Halted = 2,
    /// Held outside `KVM_RUN` while the memory layout changes.
    Paused = 3,
    /// The thread has finished.
    Exited = 4,
}

impl VcpuState {
    /// From the stored byte.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => VcpuState::Running,
            2 => VcpuState::Halted,
            3 => VcpuState::Paused,
            4 => VcpuState::Exited,
            _ => VcpuState::Created,
        }
    }
}

/// A KVM vCPU with sync-regs caching.
pub struct KvmVcpu {
    fd: VcpuFd,
    sync: bool,
    /// The sync area holds the registers of the last exit (and our edits).
    fresh: bool,
    io_len: usize,
    io_offset: usize,
    /// `ready_for_interrupt_injection` and `if_flag` at the last exit.
    window: InterruptWindow,
}

impl std::fmt::Debug for KvmVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVcpu").field("sync", &self.sync).finish()
    }
}

impl KvmVcpu {
    /// Wraps a vCPU fd; `sync_regs` enables `KVM_CAP_SYNC_REGS` for REGS and SREGS.
    pub fn new(mut fd: VcpuFd, sync_regs: bool) -> Self {
        if sync_regs {
            let run = fd.get_kvm_run();
            run.kvm_valid_regs = u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
        }
        KvmVcpu {
            fd,
            sync: sync_regs,
            fresh: false,
            io_len: 0,
            io_offset: 0,
            window: InterruptWindow::default(),
        }
    }

    /// The fd, for setup ioctls.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The `kvm_run` mapping (for the kick signal target).
    pub fn kvm_run_ptr(&mut self) -> *mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// Flushes sync-area edits through ioctls so setup ioctls see a consistent state.
    fn flush(&mut self) -> Result<(), VcpuError> {
        let run = self.fd.get_kvm_run();
        if self.sync && run.kvm_dirty_regs & u64::from(KVM_SYNC_X86_REGS) != 0 {
            // SAFETY: reading the `regs` arm of the sync-regs union, which KVM documents as
            // always laid out for x86 when KVM_CAP_SYNC_REGS is enabled.
            let regs = unsafe { run.s.regs.regs };
            run.kvm_dirty_regs &= !u64::from(KVM_SYNC_X86_REGS);
            self.fd.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        }
        Ok(())
    }
}

impl VcpuBackend for KvmVcpu {
    fn run(&mut self) -> Result<Exit, VcpuError> {
        self.io_len = 0;
        let result = self.fd.run();
        let exit = match result {
            Ok(exit) => Some(exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => {
                self.fresh = false;
                return Err(VcpuError::Ioctl { op: "KVM_RUN", source: e });
            }
        };
        let mut io = None;
        let converted = match exit {
            None => Exit::Interrupted,
            Some(VcpuExit::IoOut(port, data)) => {
                io = Some(data.len());
                Exit::IoOut { port, size: 0, count: 0 }
            }
            Some(VcpuExit::IoIn(port, data)) => {
                io = Some(data.len());
                Exit::IoIn { port, size: 0, count: 0 }
            }
            Some(VcpuExit::MmioWrite(gpa, data)) => {
                let mut d = [0u8; 8];
                for (dst, src) in d.iter_mut().zip(data.iter()) {
                    *dst = *src;
                }
                Exit::MmioWrite { gpa, len: data.len().min(8) as u8, data: d }
            }
            Some(VcpuExit::MmioRead(gpa, data)) => {
                Exit::MmioRead { gpa, len: data.len().min(8) as u8 }
            }
            Some(VcpuExit::X86Rdmsr(m)) => Exit::RdMsr { index: m.index },
            Some(VcpuExit::X86Wrmsr(m)) => Exit::WrMsr { index: m.index, data: m.data },
            Some(VcpuExit::Hlt) => Exit::Hlt,
            Some(VcpuExit::IrqWindowOpen) => Exit::IrqWindowOpen,
            Some(VcpuExit::Shutdown) => Exit::Shutdown,
            Some(VcpuExit::InternalError) => Exit::Other(kvm_bindings::KVM_EXIT_INTERNAL_ERROR),
            Some(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry { reason },
            Some(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent { kind },
            Some(VcpuExit::Intr) => Exit::Interrupted,
            Some(VcpuExit::Unsupported(r)) => Exit::Other(r),
            Some(_) => Exit::Other(u32::MAX),
        };
        self.fresh = self.sync;
        let run = self.fd.get_kvm_run();
        self.window = InterruptWindow {
            ready: run.ready_for_interrupt_injection != 0,
            if_flag: run.if_flag != 0,
        };
        let converted = match converted {
            Exit::IoOut { port, .. } | Exit::IoIn { port, .. } => {
                // SAFETY: exit_reason is KVM_EXIT_IO, so the `io` arm of the union is live.
                let raw = unsafe { run.__bindgen_anon_1.io };
                self.io_offset = usize::try_from(raw.data_offset).unwrap_or(0);
                self.io_len = io.unwrap_or(0);
                let (size, count) = (raw.size, raw.count);
                if raw.direction == kvm_bindings::KVM_EXIT_IO_OUT as u8 {
                    Exit::IoOut { port, size, count }
                } else {
                    Exit::IoIn { port, size, count }
                }
            }
            Exit::Other(kvm_bindings::KVM_EXIT_INTERNAL_ERROR) => {
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR: the `internal` arm is live.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let mut data = [0u64; 4];
                for (d, s) in data.iter_mut().zip(internal.data.iter()) {
                    *d = *s;
                }
                Exit::InternalError { suberror: internal.suberror, data, ndata: internal.ndata }
            }
            Exit::Other(kvm::KVM_EXIT_XEN) => xen_exit_from_run(run)?,
            Exit::Other(u32::MAX) => Exit::Other(run.exit_reason),
            other => other,
        };
        Ok(converted)
    }

    fn io_data(&mut self) -> &mut [u8] {
        let run_size = self.fd.get_kvm_run() as *mut kvm_run as *mut u8;
        if self.io_len == 0 {
            return &mut [];
        }
        // SAFETY: for a KVM_EXIT_IO exit, KVM places `size * count` bytes at `data_offset`
        // inside the vCPU's kvm_run mapping (which is at least a page and lives as long as
        // the fd); `io_len` is that product as kvm-ioctls computed it for this exit, and the
        // returned borrow is tied to `&mut self`, so no other access aliases it.
        unsafe { std::slice::from_raw_parts_mut(run_size.add(self.io_offset), self.io_len) }
    }

    fn complete_mmio_read(&mut self, data: &[u8]) {
        let run = self.fd.get_kvm_run();
        // SAFETY: called only after a KVM_EXIT_MMIO read, when the `mmio` arm is live; the
        // data array is 8 bytes and we copy at most that.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        for (dst, src) in mmio.data.iter_mut().zip(data) {
            *dst = *src;
        }
    }

    fn complete_msr(&mut self, error: bool, data: u64) {
        let run = self.fd.get_kvm_run();
        // SAFETY: called only after a KVM_EXIT_X86_RDMSR/WRMSR exit, when the `msr` arm is
        // live.
        let msr = unsafe { &mut run.__bindgen_anon_1.msr };
        msr.error = u8::from(error);
        msr.data = data;
    }

    fn complete_xen_hcall(&mut self, result: u64) {
        let run = self.fd.get_kvm_run();
        set_xen_result(run, result);
    }

    fn regs(&mut self) -> Result<kvm_regs, VcpuError> {
        if self.fresh {
            let run = self.fd.get_kvm_run();
            // SAFETY: with KVM_CAP_SYNC_REGS enabled for REGS, KVM stored the registers in
            // the `regs` arm at the last exit (or we wrote them there ourselves).
            return Ok(unsafe { run.s.regs.regs });
        }
        self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), VcpuError> {
        if self.fresh {
            let run = self.fd.get_kvm_run();
            // Writing the `regs` arm of the sync area (a plain Copy field, so safe); KVM
            // applies it at the next KVM_RUN because the dirty bit is set.
            run.s.regs.regs = *regs;
            run.kvm_dirty_regs |= u64::from(KVM_SYNC_X86_REGS);
            return Ok(());
        }
        self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))
    }

    fn sregs(&mut self) -> Result<kvm_sregs, VcpuError> {
        if self.fresh {
            let run = self.fd.get_kvm_run();
            // SAFETY: KVM stored the special registers in the sync area at the last exit
            // (KVM_SYNC_X86_SREGS is among the valid bits); we never edit them there.
            return Ok(unsafe { run.s.regs.sregs });
        }
        self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
    }

    fn inject_exception(&mut self, exception: Exception) -> Result<(), VcpuError> {
        self.flush()?;
        let mut events = self.fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.pending = 0;
        events.exception.nr = exception.vector();
        events.exception.has_error_code = u8::from(exception.error_code().is_some());
        events.exception.error_code = exception.error_code().unwrap_or(0);
        events.flags = 0;
        self.fd.set_vcpu_events(&events).map_err(ioctl("KVM_SET_VCPU_EVENTS"))
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result<(), VcpuError> {
        kvm::interrupt(&self.fd, vector).map_err(ioctl("KVM_INTERRUPT"))
    }

    fn interrupt_window(&self) -> InterruptWindow {
        self.window
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.fd.get_kvm_run().request_interrupt_window = u8::from(on);
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    fn defers_mmio_write_completion(&self) -> bool {
        true
    }

    fn flush_tlb(&mut self) -> Result<(), VcpuError> {
        self.flush()?;
        let sregs = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        self.fd.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        self.fresh = false;
        Ok(())
    }
}

/// Decodes a `KVM_EXIT_XEN` exit from a `kvm_run` image.
pub fn xen_exit_from_run(run: &kvm_run) -> Result<Exit, VcpuError> {
    // SAFETY: exit_reason is KVM_EXIT_XEN, so the `xen` arm of the union is live; the
    // `hcall` arm is the only one of `kvm_xen_exit.u`.
    let xen = unsafe { run.__bindgen_anon_1.xen };
    if xen.type_ != kvm::KVM_EXIT_XEN_HCALL {
        return Err(VcpuError::Malformed("KVM_EXIT_XEN of an unknown type"));
    }
    // SAFETY: type is KVM_EXIT_XEN_HCALL, whose payload is the `hcall` arm.
    let h = unsafe { xen.u.hcall };
    Ok(Exit::XenHcall {
        longmode: h.longmode != 0,
        cpl: (h.cpl & 3) as u8,
        input: h.input,
        params: h.params,
    })
}

/// Sets the result of a `KVM_EXIT_XEN` hypercall exit in a `kvm_run` image.
pub fn set_xen_result(run: &mut kvm_run, result: u64) {
    // Only meaningful for a KVM_EXIT_XEN / KVM_EXIT_XEN_HCALL exit, whose payload is the
    // `hcall` arm; writing a plain Copy union field is safe.
    run.__bindgen_anon_1.xen.u.hcall.result = result;
}
