//! The PV platform's VMM side: where the ring pages live, the PV console ring
//! (`xen/include/public/io/console.h`), what a notification of a backend port does, and the
//! host timers (the single-shot timer's `VIRQ_TIMER`, console input).
//!
//! Ring pages: XenStore at PFN [`XENSTORE_PFN`] and the console at [`CONSOLE_PFN`], the last
//! two pages below 1 MiB. The VMM's E820 map marks the low megabyte reserved and puts nothing
//! there (vmm/src/boot.rs), so the guest does not use them as RAM, yet they are ordinary
//! guest memory both sides reach (QEMU likewise puts them in a reserved "special area",
//! `XEN_SPECIAL_AREA_ADDR`). `HVM_PARAM_STORE_PFN`/`CONSOLE_PFN` name them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use polyvisor_core::{GuestMemoryMmap, Platform, TimerCallback};

use super::abi::virq::VIRQ_TIMER;
use super::abi::PAGE_SIZE;
use super::evtchn::{self, backend};
use super::ring::{self, GuestPage, RingAccess, RingError};
use super::state::State;

/// The XenStore ring's frame (`HVM_PARAM_STORE_PFN`).
pub const XENSTORE_PFN: u64 = 0xfe;
/// The console ring's frame (`HVM_PARAM_CONSOLE_PFN`).
pub const CONSOLE_PFN: u64 = 0xff;

/// Host timer ids: vCPU `n`'s single-shot timer is `n`; the console's input poll this one.
pub const CONSOLE_TIMER: u32 = 0x1_0000;
/// How often host input is looked for once the guest uses the PV console.
pub const CONSOLE_POLL_NS: u64 = 10_000_000;

/// `struct xencons_interface`: `char in[1024]; char out[2048]; XENCONS_RING_IDX in_cons,
/// in_prod, out_cons, out_prod;`.
pub mod cons {
    /// Offset and size of `in` (host to guest).
    pub const IN: usize = 0;
    /// `sizeof(in)`.
    pub const IN_SIZE: u32 = 1024;
    /// Offset of `out` (guest to host).
    pub const OUT: usize = 1024;
    /// `sizeof(out)`.
    pub const OUT_SIZE: u32 = 2048;
    /// Offset of `in_cons`.
    pub const IN_CONS: usize = 3072;
    /// Offset of `in_prod`.
    pub const IN_PROD: usize = 3076;
    /// Offset of `out_cons`.
    pub const OUT_CONS: usize = 3080;
    /// Offset of `out_prod`.
    pub const OUT_PROD: usize = 3084;
}

/// The console backend's state.
#[derive(Debug, Default)]
pub struct PvConsole {
    /// The guest has notified the console port: it uses the ring, which then takes host input.
    pub connected: bool,
    /// The input poll timer is armed.
    pub polling: bool,
    /// Malformed ring indices seen.
    pub protocol_errors: u64,
}

/// Drains the guest's output: the bytes between `out_cons` and `out_prod` are appended to
/// `out` and `out_cons` advances to `out_prod`. A producer more than `sizeof(out)` ahead is
/// [`RingError::Index`]: nothing is taken and `out_cons` is set to `out_prod` (what was there
/// is dropped, the ring usable again). Returns how many bytes were taken.
pub fn drain_output(
    ring: &mut (impl RingAccess + ?Sized),
    out: &mut Vec<u8>,
) -> Result<usize, RingError> {
    let c = ring.read_u32(cons::OUT_CONS)?;
    let p = ring.read_u32(cons::OUT_PROD)?;
    let n = match ring::used(c, p, cons::OUT_SIZE) {
        Ok(n) => n as usize,
        Err(e) => {
            ring.write_u32(cons::OUT_CONS, p)?;
            return Err(e);
        }
    };
    let start = out.len();
    out.resize(start + n, 0);
    ring::copy_out(ring, cons::OUT, cons::OUT_SIZE, c, out.get_mut(start..).unwrap_or(&mut []))?;
    ring.write_u32(cons::OUT_CONS, p)?;
    Ok(n)
}

/// Free bytes in the guest's input ring; [`RingError::Index`] when `in_prod - in_cons` is
/// more than `sizeof(in)`.
pub fn input_room(ring: &(impl RingAccess + ?Sized)) -> Result<usize, RingError> {
    input_indices(ring).map(|(room, _)| room)
}

/// `(free bytes, in_prod)` of the input ring, each index read once: the guest can rewrite
/// them at any time, and the room must be measured from the producer index written at.
fn input_indices(ring: &(impl RingAccess + ?Sized)) -> Result<(usize, u32), RingError> {
    let c = ring.read_u32(cons::IN_CONS)?;
    let p = ring.read_u32(cons::IN_PROD)?;
    Ok(((cons::IN_SIZE - ring::used(c, p, cons::IN_SIZE)?) as usize, p))
}

/// Puts as much of `bytes` as fits into the guest's input ring and advances `in_prod`;
/// returns how many. Malformed indices are [`RingError::Index`] and nothing is written.
pub fn push_input(ring: &mut (impl RingAccess + ?Sized), bytes: &[u8]) -> Result<usize, RingError> {
    let (room, p) = input_indices(ring)?;
    let n = room.min(bytes.len());
    ring::copy_in(ring, cons::IN, cons::IN_SIZE, p, bytes.get(..n).unwrap_or(&[]))?;
    ring.write_u32(cons::IN_PROD, p.wrapping_add(n as u32))?;
    Ok(n)
}

fn console_page(memory: &GuestMemoryMmap) -> GuestPage<'_> {
    GuestPage { memory, gpa: CONSOLE_PFN * PAGE_SIZE }
}

/// Whether the guest's console port is bound (not closed since boot or since it was bound
/// again).
fn console_bound(state: &State) -> bool {
    state.evtchn.lock().is_ok_and(|t| t.backend_port(backend::CONSOLE).is_some())
}

/// Moves waiting host input into the console ring; raises the console port if any moved.
/// While the guest's console port is closed the input is held in the host's queue (for
/// `CONSOLEIO_read`, or the ring once the port is bound and notified again).
pub fn console_input(state: &State, memory: &GuestMemoryMmap, platform: &dyn Platform) {
    if !console_bound(state) {
        return;
    }
    let mut page = console_page(memory);
    let room = match input_room(&page) {
        Ok(r) => r,
        Err(_) => {
            if let Ok(mut c) = state.console.lock() {
                c.protocol_errors += 1;
            }
            return;
        }
    };
    if room == 0 {
        return;
    }
    let mut buf = [0u8; cons::IN_SIZE as usize];
    let got = platform.console_read(buf.get_mut(..room).unwrap_or(&mut []));
    if got == 0 {
        return;
    }
    if push_input(&mut page, buf.get(..got).unwrap_or(&[])).is_ok_and(|n| n > 0) {
        evtchn::raise_backend(state, memory, platform, backend::CONSOLE);
    }
}

/// The guest notified the console: its output goes to the VM console, host input comes in,
/// and from the first notification on, input is looked for every [`CONSOLE_POLL_NS`].
fn console_notified(
    state: &Arc<State>,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    vcpu: u32,
) {
    let mut out = Vec::new();
    let mut page = console_page(memory);
    let drained = drain_output(&mut page, &mut out);
    let arm = match state.console.lock() {
        Ok(mut c) => {
            c.connected = true;
            if drained.is_err() {
                c.protocol_errors += 1;
            }
            !std::mem::replace(&mut c.polling, true)
        }
        Err(_) => false,
    };
    if !out.is_empty() {
        platform.console_write(vcpu, &out);
    }
    if drained.is_ok_and(|n| n > 0) {
        evtchn::raise_backend(state, memory, platform, backend::CONSOLE);
    }
    console_input(state, memory, platform);
    if arm && arm_console_poll(state, platform).is_err() {
        if let Ok(mut c) = state.console.lock() {
            c.polling = false;
        }
    }
}

fn arm_console_poll(state: &Arc<State>, platform: &dyn Platform) -> Result<(), ()> {
    let st = Arc::clone(state);
    let fire: TimerCallback = Arc::new(move |p: &dyn Platform, m: &GuestMemoryMmap| {
        // The guest closed its console port: the poll stops, until a notification on a port
        // bound to the console again arms it (console_notified). Checked and recorded under
        // the console's lock, which console_notified holds while it looks at `polling`.
        let go_on = st.console.lock().is_ok_and(|mut c| {
            let bound = console_bound(&st);
            c.polling = bound;
            bound
        });
        if go_on {
            console_input(&st, m, p);
            let _ = arm_console_poll(&st, p);
        }
    });
    let at = platform.monotonic_ns().saturating_add(CONSOLE_POLL_NS);
    platform.set_timer(CONSOLE_TIMER, Some((at, fire))).map_err(|_| ())
}

/// The XenStore ring as xenstored leaves it at introduction: `server_features` filled in.
/// Done when the guest asks where the ring is (`HVM_PARAM_STORE_PFN`), the first moment it
/// can look; the VMM writes nothing into guest memory before the guest runs.
pub fn announce_store(memory: &GuestMemoryMmap) {
    let mut page = GuestPage { memory, gpa: XENSTORE_PFN * PAGE_SIZE };
    let _ = super::xenstore::announce(&mut page);
}

/// The guest sent on a channel whose other end is VMM backend port `be`.
pub fn backend_notified(
    state: &Arc<State>,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    be: u32,
    vcpu: u32,
) {
    match be {
        backend::XENSTORE => {
            let mut page = GuestPage { memory, gpa: XENSTORE_PFN * PAGE_SIZE };
            let notify = match state.xenstore.lock() {
                Ok(mut xs) => xs.process_ring(&mut page).notify,
                Err(_) => false,
            };
            if notify {
                evtchn::raise_backend(state, memory, platform, backend::XENSTORE);
            }
        }
        backend::CONSOLE => console_notified(state, memory, platform, vcpu),
        backend::LOOP_A => evtchn::raise_backend(state, memory, platform, backend::LOOP_B),
        backend::LOOP_B => evtchn::raise_backend(state, memory, platform, backend::LOOP_A),
        _ => {}
    }
}

/// Arms vCPU `vcpu`'s single-shot timer for `deadline` (system time, ns): when it passes,
/// `VIRQ_TIMER` is raised (`vcpu_singleshot_timer_fn`). A deadline already past fires now.
/// Without host timers the deadline is only recorded.
pub fn arm_singleshot(
    state: &Arc<State>,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    vcpu: u32,
    deadline: u64,
) {
    let Some(v) = state.vcpu(vcpu) else {
        return;
    };
    if deadline <= platform.monotonic_ns() {
        v.singleshot_deadline.store(0, Ordering::Release);
        let _ = platform.set_timer(vcpu, None);
        evtchn::send_virq(state, memory, platform, vcpu, VIRQ_TIMER);
        return;
    }
    v.singleshot_deadline.store(deadline, Ordering::Release);
    let st = Arc::clone(state);
    // Fires only while `deadline` is still the armed one: the timer thread may have taken
    // this callback off its list just before the vCPU stopped or re-armed the timer, and a
    // stale callback must not raise VIRQ_TIMER for a timer that no longer expires then.
    let fire: TimerCallback = Arc::new(move |p: &dyn Platform, m: &GuestMemoryMmap| {
        let armed = st.vcpu(vcpu).is_some_and(|v| {
            v.singleshot_deadline
                .compare_exchange(deadline, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if armed {
            evtchn::send_virq(&st, m, p, vcpu, VIRQ_TIMER);
        }
    });
    let _ = platform.set_timer(vcpu, Some((deadline, fire)));
}

/// Stops vCPU `vcpu`'s single-shot timer.
pub fn stop_singleshot(state: &State, platform: &dyn Platform, vcpu: u32) {
    if let Some(v) = state.vcpu(vcpu) {
        v.singleshot_deadline.store(0, Ordering::Release);
    }
    let _ = platform.set_timer(vcpu, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Vec<u8> {
        vec![0u8; PAGE_SIZE as usize]
    }

    #[test]
    fn output_is_drained_across_the_wrap() {
        let mut p = page();
        p[..].write_u32(cons::OUT_CONS, 2046).unwrap();
        p[..].write_u32(cons::OUT_PROD, 2050).unwrap();
        p[cons::OUT + 2046..cons::OUT + 2048].copy_from_slice(b"he");
        p[cons::OUT..cons::OUT + 2].copy_from_slice(b"y!");
        let mut out = Vec::new();
        assert_eq!(drain_output(&mut p[..], &mut out), Ok(4));
        assert_eq!(out, b"hey!");
        assert_eq!(p[..].read_u32(cons::OUT_CONS), Ok(2050));
        assert_eq!(drain_output(&mut p[..], &mut out), Ok(0));
    }

    #[test]
    fn a_producer_past_the_ring_is_an_index_error_and_resets() {
        let mut p = page();
        p[..].write_u32(cons::OUT_PROD, 2049).unwrap();
        let mut out = Vec::new();
        assert_eq!(drain_output(&mut p[..], &mut out), Err(RingError::Index));
        assert!(out.is_empty());
        assert_eq!(p[..].read_u32(cons::OUT_CONS), Ok(2049));
        // A consumer ahead of the producer is as bad.
        p[..].write_u32(cons::OUT_CONS, 10).unwrap();
        p[..].write_u32(cons::OUT_PROD, 5).unwrap();
        assert_eq!(drain_output(&mut p[..], &mut out), Err(RingError::Index));
    }

    #[test]
    fn input_fills_what_is_free_and_refuses_bad_indices() {
        let mut p = page();
        p[..].write_u32(cons::IN_CONS, 0).unwrap();
        p[..].write_u32(cons::IN_PROD, 1020).unwrap();
        assert_eq!(push_input(&mut p[..], b"abcdefgh"), Ok(4));
        assert_eq!(&p[1020..1024], b"abcd");
        assert_eq!(p[..].read_u32(cons::IN_PROD), Ok(1024));
        assert_eq!(push_input(&mut p[..], b"x"), Ok(0));
        p[..].write_u32(cons::IN_PROD, 1025).unwrap();
        assert_eq!(push_input(&mut p[..], b"x"), Err(RingError::Index));
        assert_eq!(p[..].read_u32(cons::IN_PROD), Ok(1025));
    }

    /// A page whose `in_prod` the guest rewrites to 1000 right after the VMM first reads it.
    struct Racing {
        page: std::cell::RefCell<Vec<u8>>,
    }

    impl RingAccess for Racing {
        fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
            let ok = self.page.borrow()[..].read(offset, buf);
            if offset == cons::IN_PROD {
                self.page.borrow_mut()[cons::IN_PROD..cons::IN_PROD + 4]
                    .copy_from_slice(&1000u32.to_le_bytes());
            }
            ok
        }
        fn write(&mut self, offset: usize, buf: &[u8]) -> bool {
            self.page.get_mut()[..].write(offset, buf)
        }
    }

    #[test]
    fn input_reads_each_index_once() {
        let mut ring = Racing { page: std::cell::RefCell::new(page()) };
        assert_eq!(push_input(&mut ring, &[b'x'; 100]), Ok(100));
        // The room was measured from in_prod 0: the bytes go there, and in_prod never ends
        // up more than sizeof(in) ahead of in_cons.
        let p = ring.page.get_mut();
        assert_eq!(p[..].read_u32(cons::IN_PROD), Ok(100));
        assert_eq!(&p[..100], &[b'x'; 100]);
    }
}
