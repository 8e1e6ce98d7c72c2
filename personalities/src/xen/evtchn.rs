//! Event channels, 2-level ABI (`xen/include/public/event_channel.h`, `xen/common/event_channel.c`,
//! `xen/common/event_2l.c`), the way QEMU's Xen emulation serves them
//! (`hw/i386/kvm/xen_evtchn.c`): the VMM is domain 0, the backend end of every channel a VMM
//! service (XenStore, the PV console, a loopback pair) holds.
//!
//! Delivery writes the guest's shared_info and `vcpu_info` with atomic operations, as Xen's
//! `evtchn_2l_set_pending` does: set the port's `evtchn_pending` bit; if it was clear and the
//! port's `evtchn_mask` bit is clear, set the word's bit in the target vCPU's
//! `evtchn_pending_sel`; if that was clear, set `evtchn_upcall_pending` and, if that was
//! clear, kick the vCPU: its `HVMOP_set_evtchn_upcall_vector` vector, else the
//! `HVM_PARAM_CALLBACK_IRQ` vector (type 2), goes to [`Platform::interrupt`], and a vCPU
//! blocked in `SCHEDOP_block`/`SCHEDOP_poll` is woken. A newly pending port also wakes
//! vCPUs blocked in `SCHEDOP_poll` (masked or not), as `evtchn_check_pollers` does.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use polyvisor_core::{GuestMemoryMmap, Platform};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileMemory};

use super::abi::evtchn::*;
use super::abi::params::{
    HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT, HVM_PARAM_CALLBACK_TYPE_VECTOR,
};
use super::abi::virq::NR_VIRQS;
use super::state::State;

/// Domain 0: the VMM, which holds the backend end of its services' channels.
pub const DOMID_BACKEND: u16 = 0;

/// Backend (domain 0) ports of the VMM's services.
pub mod backend {
    /// XenStore: bound at boot to guest port [`super::XENSTORE_PORT`].
    pub const XENSTORE: u32 = 1;
    /// The PV console: bound at boot to guest port [`super::CONSOLE_PORT`].
    pub const CONSOLE: u32 = 2;
    /// The loopback pair: an event sent on the channel bound to one is raised on the channel
    /// bound to the other.
    pub const LOOP_A: u32 = 3;
    /// The other end of the loopback pair.
    pub const LOOP_B: u32 = 4;
    /// Backend ports that exist.
    pub const COUNT: u32 = 5;
}

/// The guest port bound at boot to XenStore (`HVM_PARAM_STORE_EVTCHN`).
pub const XENSTORE_PORT: u32 = 1;
/// The guest port bound at boot to the PV console (`HVM_PARAM_CONSOLE_EVTCHN`).
pub const CONSOLE_PORT: u32 = 2;

/// What a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `ECS_FREE`.
    Free,
    /// `ECS_UNBOUND`: waits for `remote_dom` to bind it.
    Unbound {
        /// The domain allowed to bind it.
        remote_dom: u16,
    },
    /// `ECS_INTERDOMAIN`: joined to `remote_port` of `remote_dom` (this domain for a loop in
    /// the guest, [`DOMID_BACKEND`] for a VMM service).
    Interdomain {
        /// The other end's domain.
        remote_dom: u16,
        /// The other end's port.
        remote_port: u32,
    },
    /// `ECS_VIRQ`.
    Virq(u32),
    /// `ECS_IPI`.
    Ipi,
}

/// One port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// What it is bound to.
    pub binding: Binding,
    /// The vCPU it notifies.
    pub vcpu: u32,
}

/// What a send asks of the VMM once the table is unlocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Nothing (an unbound port drops the event).
    Nothing,
    /// Raise this guest port.
    Guest(u32),
    /// A VMM service's backend port was notified.
    Backend(u32),
}

/// The domain's port table.
#[derive(Debug)]
pub struct Table {
    ports: Vec<Channel>,
    /// `virqs[vcpu][virq]`: the bound port, 0 when none.
    virqs: Vec<[u32; NR_VIRQS as usize]>,
    /// The guest port each backend port is bound to, 0 when none.
    backends: [u32; backend::COUNT as usize],
    /// This domain's id.
    domid: u16,
}

impl Table {
    /// A table for `vcpus` vCPUs of domain `domid`, with XenStore and the console bound.
    pub fn new(vcpus: u32, domid: u16) -> Self {
        let free = Channel { binding: Binding::Free, vcpu: 0 };
        let mut t = Table {
            ports: vec![free; NR_PORTS as usize],
            virqs: vec![[0; NR_VIRQS as usize]; vcpus as usize],
            backends: [0; backend::COUNT as usize],
            domid,
        };
        for (port, be) in [(XENSTORE_PORT, backend::XENSTORE), (CONSOLE_PORT, backend::CONSOLE)] {
            t.set(port, Binding::Interdomain { remote_dom: DOMID_BACKEND, remote_port: be }, 0);
            t.set_backend(be, port);
        }
        t
    }

    /// Port `port`, if it is in range.
    pub fn get(&self, port: u32) -> Option<Channel> {
        self.ports.get(port as usize).copied()
    }

    fn set(&mut self, port: u32, binding: Binding, vcpu: u32) {
        if let Some(c) = self.ports.get_mut(port as usize) {
            *c = Channel { binding, vcpu };
        }
    }

    fn set_backend(&mut self, be: u32, port: u32) {
        if let Some(b) = self.backends.get_mut(be as usize) {
            *b = port;
        }
    }

    /// The guest port backend port `be` is bound to.
    pub fn backend_port(&self, be: u32) -> Option<u32> {
        self.backends.get(be as usize).copied().filter(|&p| p != 0)
    }

    /// The lowest free port (port 0 is never used, as in Xen); `-ENOSPC` when none.
    fn free_port(&self) -> Result<u32, u64> {
        (1..NR_PORTS)
            .find(|&p| self.get(p).is_some_and(|c| c.binding == Binding::Free))
            .ok_or(super::abi::errno::ENOSPC)
    }

    /// A port that exists and is not free; else `-EINVAL`.
    fn used(&self, port: u32) -> Result<Channel, u64> {
        match self.get(port) {
            Some(c) if c.binding != Binding::Free => Ok(c),
            _ => Err(super::abi::errno::EINVAL),
        }
    }

    fn own(&self, dom: u16) -> u16 {
        if dom == super::abi::DOMID_SELF {
            self.domid
        } else {
            dom
        }
    }

    /// `EVTCHNOP_alloc_unbound`: a port `remote_dom` may bind.
    pub fn alloc_unbound(&mut self, remote_dom: u16) -> Result<u32, u64> {
        let port = self.free_port()?;
        let remote_dom = self.own(remote_dom);
        self.set(port, Binding::Unbound { remote_dom }, 0);
        Ok(port)
    }

    /// `EVTCHNOP_bind_interdomain`: a new port joined to `remote_port` of `remote_dom` (this
    /// domain, or the VMM's backend ports).
    pub fn bind_interdomain(&mut self, remote_dom: u16, remote_port: u32) -> Result<u32, u64> {
        use super::abi::errno::{EINVAL, ESRCH};
        let remote_dom = self.own(remote_dom);
        if remote_dom == DOMID_BACKEND {
            if !(backend::LOOP_A..backend::COUNT).contains(&remote_port)
                && remote_port != backend::XENSTORE
                && remote_port != backend::CONSOLE
            {
                return Err(EINVAL);
            }
            if self.backend_port(remote_port).is_some() {
                return Err(EINVAL);
            }
            let port = self.free_port()?;
            self.set(port, Binding::Interdomain { remote_dom, remote_port }, 0);
            self.set_backend(remote_port, port);
            return Ok(port);
        }
        if remote_dom != self.domid {
            return Err(ESRCH);
        }
        match self.get(remote_port).map(|c| c.binding) {
            Some(Binding::Unbound { remote_dom: r }) if r == self.domid => {}
            _ => return Err(EINVAL),
        }
        let port = self.free_port()?;
        let vcpu = self.get(remote_port).map_or(0, |c| c.vcpu);
        self.set(port, Binding::Interdomain { remote_dom, remote_port }, 0);
        self.set(remote_port, Binding::Interdomain { remote_dom, remote_port: port }, vcpu);
        Ok(port)
    }

    /// `EVTCHNOP_bind_virq`. The caller checked `vcpu`.
    pub fn bind_virq(&mut self, virq: u32, vcpu: u32) -> Result<u32, u64> {
        use super::abi::errno::{EEXIST, ENOENT};
        check_virq(virq, vcpu)?;
        let slot = self
            .virqs
            .get(vcpu as usize)
            .and_then(|v| v.get(virq as usize))
            .copied()
            .ok_or(ENOENT)?;
        if slot != 0 {
            return Err(EEXIST);
        }
        let port = self.free_port()?;
        self.set(port, Binding::Virq(virq), vcpu);
        if let Some(s) = self.virqs.get_mut(vcpu as usize).and_then(|v| v.get_mut(virq as usize)) {
            *s = port;
        }
        Ok(port)
    }

    /// `EVTCHNOP_bind_ipi`. The caller checked `vcpu`.
    pub fn bind_ipi(&mut self, vcpu: u32) -> Result<u32, u64> {
        let port = self.free_port()?;
        self.set(port, Binding::Ipi, vcpu);
        Ok(port)
    }

    /// `EVTCHNOP_bind_vcpu`: per-vCPU VIRQs stay where they are (`-EINVAL`).
    pub fn bind_vcpu(&mut self, port: u32, vcpu: u32) -> Result<(), u64> {
        let c = self.used(port)?;
        match c.binding {
            Binding::Virq(v) if super::abi::virq::is_per_vcpu(v) => Err(super::abi::errno::EINVAL),
            Binding::Ipi => Err(super::abi::errno::EINVAL),
            _ => {
                self.set(port, c.binding, vcpu);
                Ok(())
            }
        }
    }

    /// `EVTCHNOP_close`. A loop in the guest leaves its other end unbound (to this domain), a
    /// backend port becomes free to bind again.
    pub fn close(&mut self, port: u32) -> Result<(), u64> {
        let c = self.used(port)?;
        match c.binding {
            Binding::Interdomain { remote_dom: DOMID_BACKEND, remote_port } => {
                self.set_backend(remote_port, 0);
            }
            Binding::Interdomain { remote_port, .. } => {
                if let Some(other) = self.get(remote_port) {
                    let binding = Binding::Unbound { remote_dom: self.domid };
                    self.set(remote_port, binding, other.vcpu);
                }
            }
            Binding::Virq(virq) => {
                // Wherever it was bound: bind_vcpu moves a global VIRQ's port, not its slot
                // (evtchn_close looks on every vCPU).
                for slots in &mut self.virqs {
                    if let Some(s) = slots.get_mut(virq as usize).filter(|s| **s == port) {
                        *s = 0;
                    }
                }
            }
            Binding::Free | Binding::Unbound { .. } | Binding::Ipi => {}
        }
        self.set(port, Binding::Free, 0);
        Ok(())
    }

    /// `EVTCHNOP_send`: what to notify. VIRQ ports cannot be sent on (`-EINVAL`).
    pub fn send(&self, port: u32) -> Result<Notify, u64> {
        let c = self.used(port)?;
        Ok(match c.binding {
            Binding::Interdomain { remote_dom: DOMID_BACKEND, remote_port } => {
                Notify::Backend(remote_port)
            }
            Binding::Interdomain { remote_port, .. } => Notify::Guest(remote_port),
            Binding::Ipi => Notify::Guest(port),
            Binding::Unbound { .. } => Notify::Nothing,
            Binding::Virq(_) | Binding::Free => return Err(super::abi::errno::EINVAL),
        })
    }

    /// The port bound to `virq` on `vcpu`.
    pub fn virq_port(&self, vcpu: u32, virq: u32) -> Option<u32> {
        self.virqs.get(vcpu as usize)?.get(virq as usize).copied().filter(|&p| p != 0)
    }

    /// `EVTCHNOP_status`: `(status, vcpu, union word 0, union word 1)`.
    pub fn status(&self, port: u32) -> Result<(u32, u32, u32, u32), u64> {
        let c = self.get(port).ok_or(super::abi::errno::EINVAL)?;
        Ok(match c.binding {
            Binding::Free => (EVTCHNSTAT_closed, c.vcpu, 0, 0),
            Binding::Unbound { remote_dom } => {
                (EVTCHNSTAT_unbound, c.vcpu, u32::from(remote_dom), 0)
            }
            Binding::Interdomain { remote_dom, remote_port } => {
                (EVTCHNSTAT_interdomain, c.vcpu, u32::from(remote_dom), remote_port)
            }
            Binding::Virq(virq) => (EVTCHNSTAT_virq, c.vcpu, virq, 0),
            Binding::Ipi => (EVTCHNSTAT_ipi, c.vcpu, 0, 0),
        })
    }
}

/// The checks `evtchn_bind_virq` makes before it looks the vCPU up: a VIRQ past
/// `NR_VIRQS`, or a global VIRQ on a vCPU other than 0, is `-EINVAL`.
pub fn check_virq(virq: u32, vcpu: u32) -> Result<(), u64> {
    if virq >= NR_VIRQS || (!super::abi::virq::is_per_vcpu(virq) && vcpu != 0) {
        Err(super::abi::errno::EINVAL)
    } else {
        Ok(())
    }
}

/// Where the 2-level bitmaps sit in shared_info: `(evtchn_pending, evtchn_mask, bits per
/// word)` (`struct shared_info`, native and compat).
const fn bitmaps(compat: bool) -> (u64, u64, u32) {
    if compat {
        (2048, 2176, 32)
    } else {
        (2048, 2560, 64)
    }
}

/// Offset of `evtchn_pending_sel` in `vcpu_info`.
const fn pending_sel(compat: bool) -> u64 {
    if compat {
        4
    } else {
        8
    }
}

/// An atomic bit operation on the guest word at `gpa` (`width` 32 or 64 bits, naturally
/// aligned); returns the bit's old value, or `None` when the word is not RAM.
fn word_bit(memory: &GuestMemoryMmap, gpa: u64, width: u32, bit: u32, set: bool) -> Option<bool> {
    let len = (width / 8) as usize;
    let slice = memory.get_slice(GuestAddress(gpa), len).ok()?;
    if width == 32 {
        let w = slice.get_atomic_ref::<AtomicU32>(0).ok()?;
        let m = 1u32 << (bit % 32);
        let old =
            if set { w.fetch_or(m, Ordering::SeqCst) } else { w.fetch_and(!m, Ordering::SeqCst) };
        Some(old & m != 0)
    } else {
        let w = slice.get_atomic_ref::<AtomicU64>(0).ok()?;
        let m = 1u64 << (bit % 64);
        let old =
            if set { w.fetch_or(m, Ordering::SeqCst) } else { w.fetch_and(!m, Ordering::SeqCst) };
        Some(old & m != 0)
    }
}

/// Reads one bit of the guest word at `gpa`.
fn test_bit(memory: &GuestMemoryMmap, gpa: u64, width: u32, bit: u32) -> Option<bool> {
    let slice = memory.get_slice(GuestAddress(gpa), (width / 8) as usize).ok()?;
    if width == 32 {
        let w = slice.get_atomic_ref::<AtomicU32>(0).ok()?;
        Some(w.load(Ordering::SeqCst) & (1 << (bit % 32)) != 0)
    } else {
        let w = slice.get_atomic_ref::<AtomicU64>(0).ok()?;
        Some(w.load(Ordering::SeqCst) & (1 << (bit % 64)) != 0)
    }
}

/// The guest address of the bitmap word holding `port` and the bit in it.
fn locate(state: &State, which_mask: bool, port: u32) -> Option<(u64, u32, u32)> {
    let base = state.shared_info_gpa()?;
    let compat = state.shinfo_compat.load(Ordering::Acquire);
    let (pending, mask, bits) = bitmaps(compat);
    let off = if which_mask { mask } else { pending };
    let word = u64::from(port / bits) * u64::from(bits / 8);
    Some((base + off + word, bits, port % bits))
}

/// Whether `port` is pending in shared_info.
pub fn is_pending(state: &State, memory: &GuestMemoryMmap, port: u32) -> bool {
    locate(state, false, port)
        .and_then(|(gpa, bits, bit)| test_bit(memory, gpa, bits, bit))
        .unwrap_or(false)
}

/// The upcall route of `vcpu`: its own vector, else the domain's callback vector.
fn upcall_vector(state: &State, vcpu: u32) -> Option<u8> {
    let own = state.vcpu(vcpu).map_or(0, |v| v.upcall_vector.load(Ordering::Acquire));
    if own != 0 {
        return Some(own);
    }
    let via = state.param(HVM_PARAM_CALLBACK_IRQ);
    (via >> HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT == HVM_PARAM_CALLBACK_TYPE_VECTOR)
        .then_some(via as u8)
        .filter(|&v| v != 0)
}

/// Whether `vcpu` has events to deliver: `evtchn_upcall_pending` set and an upcall route
/// (Xen's `hvm_local_events_need_delivery` for the callback vector).
pub fn events_need_delivery(state: &State, memory: &GuestMemoryMmap, vcpu: u32) -> bool {
    let Some(info) = state.vcpu_info_gpa(vcpu) else {
        return false;
    };
    let pending = memory
        .get_slice(GuestAddress(info), 1)
        .ok()
        .and_then(|s| s.get_atomic_ref::<AtomicU8>(0).ok().map(|b| b.load(Ordering::SeqCst)))
        .unwrap_or(0);
    pending != 0 && upcall_vector(state, vcpu).is_some()
}

/// `vcpu_mark_events_pending`: sets `evtchn_upcall_pending` and, on its 0 -> 1 edge, kicks.
fn mark_events_pending(
    state: &State,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    vcpu: u32,
) {
    let Some(info) = state.vcpu_info_gpa(vcpu) else {
        return;
    };
    let was = memory
        .get_slice(GuestAddress(info), 1)
        .ok()
        .and_then(|s| s.get_atomic_ref::<AtomicU8>(0).ok().map(|b| b.swap(1, Ordering::SeqCst)));
    if was != Some(0) {
        return;
    }
    if let Some(vector) = upcall_vector(state, vcpu) {
        let _ = platform.interrupt(vcpu, vector);
    }
    wake_blocked(state, platform, vcpu);
}

/// Wakes `vcpu` if it is blocked in `SCHEDOP_block` or `SCHEDOP_poll`.
fn wake_blocked(state: &State, platform: &dyn Platform, vcpu: u32) {
    // SeqCst: ordered after the pending bit's or flag's update (see sched.rs's poll).
    if state.vcpu(vcpu).is_some_and(|v| v.blocked.swap(false, Ordering::SeqCst)) {
        let _ = platform.wake(vcpu);
    }
}

/// `evtchn_2l_set_pending` of `port` for `vcpu`.
pub fn set_pending(
    state: &State,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    port: u32,
    vcpu: u32,
) {
    let Some((gpa, bits, bit)) = locate(state, false, port) else {
        return;
    };
    if word_bit(memory, gpa, bits, bit, true) != Some(false) {
        return;
    }
    let masked = locate(state, true, port)
        .and_then(|(m, bits, bit)| test_bit(memory, m, bits, bit))
        .unwrap_or(true);
    if !masked {
        raise_selector(state, memory, platform, port, vcpu);
    }
    // evtchn_check_pollers: every vCPU blocked in a poll looks again.
    for v in 0..state.vcpus.len() as u32 {
        if state.vcpu(v).is_some_and(|s| s.polling.load(Ordering::SeqCst)) {
            wake_blocked(state, platform, v);
        }
    }
}

/// Sets the selector bit of `port`'s word in `vcpu`'s `vcpu_info`; on its 0 -> 1 edge marks
/// events pending.
fn raise_selector(
    state: &State,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    port: u32,
    vcpu: u32,
) {
    let Some(info) = state.vcpu_info_gpa(vcpu) else {
        return;
    };
    let compat = state.shinfo_compat.load(Ordering::Acquire);
    let (_, _, bits) = bitmaps(compat);
    let sel = info + pending_sel(compat);
    if word_bit(memory, sel, bits, port / bits, true) == Some(false) {
        mark_events_pending(state, memory, platform, vcpu);
    }
}

/// `evtchn_2l_unmask`: clears the mask bit; a pending port is then delivered.
pub fn unmask(
    state: &State,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    port: u32,
    vcpu: u32,
) {
    let Some((m, bits, bit)) = locate(state, true, port) else {
        return;
    };
    if word_bit(memory, m, bits, bit, false) == Some(true) && is_pending(state, memory, port) {
        raise_selector(state, memory, platform, port, vcpu);
    }
}

/// Clears `port`'s pending bit (a closed port, `evtchn_port_clear_pending`).
pub fn clear_pending(state: &State, memory: &GuestMemoryMmap, port: u32) {
    if let Some((gpa, bits, bit)) = locate(state, false, port) {
        let _ = word_bit(memory, gpa, bits, bit, false);
    }
}

/// Raises guest port `port` on the vCPU it is bound to, if it is still bound (to a
/// channel, a VIRQ or an IPI). The check and the delivery are made under the table's lock,
/// which `EVTCHNOP_close` holds while it frees the port and clears its pending bit: a port
/// closed at the same moment (another vCPU, the timer thread, a VMM backend) is either
/// raised before the close clears it or not raised at all (Xen holds the channel's lock
/// around `evtchn_port_set_pending`, and `evtchn_close` takes it).
pub fn raise(state: &State, memory: &GuestMemoryMmap, platform: &dyn Platform, port: u32) {
    if let Ok(t) = state.evtchn.lock() {
        raise_locked(&t, state, memory, platform, port);
    }
}

/// [`raise`] with the table already locked.
fn raise_locked(
    t: &Table,
    state: &State,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    port: u32,
) {
    let bound = |c: &Channel| {
        matches!(c.binding, Binding::Interdomain { .. } | Binding::Virq(_) | Binding::Ipi)
    };
    if let Some(c) = t.get(port).filter(bound) {
        set_pending(state, memory, platform, port, c.vcpu);
    }
}

/// Raises the guest port backend port `be` is bound to, if any (looked up and raised under
/// one hold of the table's lock).
pub fn raise_backend(state: &State, memory: &GuestMemoryMmap, platform: &dyn Platform, be: u32) {
    if let Ok(t) = state.evtchn.lock() {
        if let Some(port) = t.backend_port(be) {
            raise_locked(&t, state, memory, platform, port);
        }
    }
}

/// `send_guest_vcpu_virq`: raises the port bound to `virq` on `vcpu`, if any, under the
/// table's lock.
pub fn send_virq(
    state: &State,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    vcpu: u32,
    virq: u32,
) {
    if let Ok(t) = state.evtchn.lock() {
        if let Some(port) = t.virq_port(vcpu, virq) {
            set_pending(state, memory, platform, port, vcpu);
        }
    }
}
