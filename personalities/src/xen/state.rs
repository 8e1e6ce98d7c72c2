//! What the personality remembers about the domain and its vCPUs. Everything is an atomic:
//! handlers run on any vCPU thread and the hot path takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use super::abi::params::*;
use super::abi::sched::SHUTDOWN_CODE_INVALID;
use super::abi::PAGE_SIZE;
use super::evtchn::{Table, CONSOLE_PORT, XENSTORE_PORT};
use super::pv::{PvConsole, CONSOLE_PFN, XENSTORE_PFN};
use super::shared_info::{LEGACY_MAX_VCPUS, VCPU_INFO_LEN};
use super::xenstore::XenStore;

/// "Not set" for GFN and GPA slots.
pub const NONE: u64 = u64::MAX;

/// Per-vCPU state.
#[derive(Debug)]
pub struct VcpuState {
    /// GPA of the `vcpu_info` registered with `VCPUOP_register_vcpu_info`, or [`NONE`].
    pub vcpu_info: AtomicU64,
    /// The `HVMOP_set_evtchn_upcall_vector` vector, 0 when unset.
    pub upcall_vector: AtomicU8,
    /// The single-shot timer's deadline (system time, ns), 0 when stopped; it raises
    /// `VIRQ_TIMER` when it fires. A timer callback fires only while its deadline is still
    /// this one (it swaps it for 0), so a callback taken before a stop or re-arm is dropped.
    pub singleshot_deadline: AtomicU64,
    /// Halted in `SCHEDOP_block` or `SCHEDOP_poll`: an event wakes it.
    pub blocked: AtomicBool,
    /// Halted in `SCHEDOP_poll`: any newly pending port wakes it.
    pub polling: AtomicBool,
}

impl VcpuState {
    /// No longer blocked or polling: the halt ended, or none started. SeqCst like the marks'
    /// stores in `sched_op` (see its poll): an event that swaps `blocked` after this finds it
    /// clear and wakes nothing.
    pub fn unblock(&self) {
        self.polling.store(false, Ordering::SeqCst);
        self.blocked.store(false, Ordering::SeqCst);
    }

    fn new() -> Self {
        VcpuState {
            vcpu_info: AtomicU64::new(NONE),
            upcall_vector: AtomicU8::new(0),
            singleshot_deadline: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            polling: AtomicBool::new(false),
        }
    }
}

/// Per-domain state.
#[derive(Debug)]
pub struct State {
    /// GFN where `XENMEM_add_to_physmap` placed shared_info, or [`NONE`].
    pub shared_info_gfn: AtomicU64,
    /// Whether shared_info has the 32-bit (compat) layout, latched from the caller's mode as
    /// Xen's `hvm_latch_shinfo_size` does.
    pub shinfo_compat: AtomicBool,
    /// The reason latched by `SCHEDOP_shutdown_code`.
    pub shutdown_code: AtomicU8,
    /// The HVM parameters (`d->arch.hvm.params`); unset ones read as 0 as in Xen.
    pub params: [AtomicU64; HVM_NR_PARAMS as usize],
    /// One entry per vCPU.
    pub vcpus: Box<[VcpuState]>,
    /// The event channel ports.
    pub evtchn: Mutex<Table>,
    /// The XenStore the VMM serves.
    pub xenstore: Mutex<XenStore>,
    /// The PV console's backend state.
    pub console: Mutex<PvConsole>,
}

impl State {
    /// A fresh domain `domid` with `vcpus` vCPUs and `memory_kib` of RAM (for XenStore's
    /// `memory/target`), its XenStore and console rings and channels in place.
    pub fn new(vcpus: u32, domid: u16, memory_kib: u64) -> Self {
        let state = State {
            shared_info_gfn: AtomicU64::new(NONE),
            shinfo_compat: AtomicBool::new(false),
            shutdown_code: AtomicU8::new(SHUTDOWN_CODE_INVALID),
            params: std::array::from_fn(|i| {
                // x87_fip_width starts at 8, Xen's value on CPUs with FPCSDS (domain.c).
                let fip = i == HVM_PARAM_X87_FIP_WIDTH as usize;
                AtomicU64::new(if fip { 8 } else { 0 })
            }),
            vcpus: (0..vcpus).map(|_| VcpuState::new()).collect(),
            evtchn: Mutex::new(Table::new(vcpus, domid)),
            xenstore: Mutex::new(XenStore::introduce(domid, vcpus, memory_kib)),
            console: Mutex::new(PvConsole::default()),
        };
        // What a toolstack sets before the domain starts (libxl's HVM params).
        state.set_param(HVM_PARAM_STORE_PFN, XENSTORE_PFN);
        state.set_param(HVM_PARAM_STORE_EVTCHN, u64::from(XENSTORE_PORT));
        state.set_param(HVM_PARAM_CONSOLE_PFN, CONSOLE_PFN);
        state.set_param(HVM_PARAM_CONSOLE_EVTCHN, u64::from(CONSOLE_PORT));
        state
    }

    /// vCPU `id`'s state, if it exists.
    pub fn vcpu(&self, id: u32) -> Option<&VcpuState> {
        self.vcpus.get(usize::try_from(id).ok()?)
    }

    /// The GPA of shared_info, if mapped.
    pub fn shared_info_gpa(&self) -> Option<u64> {
        let gfn = self.shared_info_gfn.load(Ordering::Acquire);
        (gfn != NONE).then(|| gfn.wrapping_mul(PAGE_SIZE))
    }

    /// Where vCPU `id`'s `vcpu_info` lives now: the registered area, else its slot in
    /// shared_info (vCPUs below `XEN_LEGACY_MAX_VCPUS`, once shared_info is mapped).
    pub fn vcpu_info_gpa(&self, id: u32) -> Option<u64> {
        let registered = self.vcpu(id)?.vcpu_info.load(Ordering::Acquire);
        if registered != NONE {
            return Some(registered);
        }
        (id < LEGACY_MAX_VCPUS)
            .then(|| self.shared_info_gpa())
            .flatten()
            .map(|base| base.wrapping_add(u64::from(id) * VCPU_INFO_LEN))
    }

    /// The value of HVM parameter `index`.
    pub fn param(&self, index: u32) -> u64 {
        self.params.get(index as usize).map_or(0, |p| p.load(Ordering::Relaxed))
    }

    /// Sets HVM parameter `index`.
    pub fn set_param(&self, index: u32, value: u64) {
        if let Some(p) = self.params.get(index as usize) {
            p.store(value, Ordering::Relaxed);
        }
    }
}
