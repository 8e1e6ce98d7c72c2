//! `__HYPERVISOR_sched_op` (`do_sched_op`, `xen/common/sched/core.c`).
//!
//! - `SCHEDOP_yield`: the vCPU yields; 0.
//! - `SCHEDOP_block`: events are enabled (the vCPU's `evtchn_upcall_mask` cleared, as
//!   `vcpu_block_enable_events` does); with `evtchn_upcall_pending` set and an upcall vector
//!   it returns 0 at once, else the vCPU halts until an interrupt, a wake or an event.
//! - `SCHEDOP_shutdown(struct sched_shutdown { u32 reason })`: the VM ends. The reason is
//!   truncated to 8 bits and replaced by a reason latched earlier with
//!   `SCHEDOP_shutdown_code` (`domain_shutdown`, `xen/common/domain.c`); see
//!   [`exit_reason`] for what each becomes.
//! - `SCHEDOP_poll(struct sched_poll)`: `nr_ports > 128` is `-EINVAL`, an unreadable port
//!   array `-EFAULT`, a port past the table `-EINVAL`; a pending port returns 0 at once,
//!   else the vCPU halts until an event becomes pending (any port: an early return is a
//!   spurious wakeup), the absolute `timeout` (system time, ns; 0 = none) or an interrupt.
//!   A timeout
//!   already past returns 0 at once, and so does any timeout the VMM cannot time
//!   ([`Platform::halt_until`](polyvisor_core::Platform::halt_until) unsupported): an
//!   early return is a spurious wakeup, which poll callers handle.
//! - `SCHEDOP_remote_shutdown`: `-EPERM` for this domain (XSM_DM_PRIV), `-ESRCH` for others.
//! - `SCHEDOP_shutdown_code`: latches the reason a later shutdown reports; 0.
//! - `SCHEDOP_pin_override`: `-EPERM` (hardware domain only).
//! - `SCHEDOP_watchdog` and unknown commands: `-ENOSYS`.

use std::sync::atomic::Ordering;

use polyvisor_core::{Call, ExitReason, Gpr, Next, Outcome, RegisterWrites, Reply};
use vm_memory::{Bytes, GuestAddress};

use super::{err, int_arg, ok};
use crate::xen::abi::errno::{EINVAL, ENOSYS, EPERM, ESRCH};
use crate::xen::abi::evtchn::NR_PORTS;
use crate::xen::abi::sched::*;
use crate::xen::codec::Width;
use crate::xen::evtchn;
use crate::xen::guest::{le, Fault, Guest};
use crate::xen::shared_info::UPCALL_MASK_OFFSET;
use crate::xen::Xen;

/// How a shutdown reason ends the VM.
pub fn exit_reason(reason: u8) -> ExitReason {
    match reason {
        SHUTDOWN_poweroff => ExitReason::Poweroff(0),
        SHUTDOWN_reboot => ExitReason::Reboot,
        SHUTDOWN_crash => {
            ExitReason::Crash("Xen SHUTDOWN_crash: the guest reported a crash".into())
        }
        SHUTDOWN_suspend => {
            ExitReason::Other("Xen SHUTDOWN_suspend: the guest suspended itself".into())
        }
        SHUTDOWN_watchdog => ExitReason::Other("Xen SHUTDOWN_watchdog".into()),
        SHUTDOWN_soft_reset => ExitReason::Other("Xen SHUTDOWN_soft_reset".into()),
        other => ExitReason::Other(format!("Xen shutdown with unknown reason {other}")),
    }
}

/// `RAX = 0`, then halt.
fn halt(width: Width) -> Reply {
    Reply::Outcome(Outcome {
        writes: RegisterWrites::one(Gpr::Rax, width.truncate(0)),
        next: Next::Halt,
    })
}

fn poll(xen: &Xen, call: &Call<'_>, arg: u64) -> Result<Reply, Fault> {
    let g = Guest::of(call);
    // struct sched_poll { XEN_GUEST_HANDLE(evtchn_port_t) ports; unsigned int nr_ports;
    // uint64_t timeout; }: 24 bytes native, 16 compat (4-byte handle, packed u64).
    let (ports, nr_ports, timeout) = match g.width {
        Width::W64 => {
            let raw = g.read_array::<24>(arg)?;
            (le::u64_at(&raw, 0), le::u32_at(&raw, 8), le::u64_at(&raw, 16))
        }
        Width::W32 => {
            let raw = g.read_array::<16>(arg)?;
            (u64::from(le::u32_at(&raw, 0)), le::u32_at(&raw, 4), le::u64_at(&raw, 8))
        }
    };
    if nr_ports > POLL_MAX_PORTS {
        return Ok(err(EINVAL));
    }
    g.check(ports, nr_ports as usize * 4, false)?;
    let me = xen.state.vcpu(call.vcpu.vcpu);
    // Poll first, then look: an event raised in between wakes the halt that follows. SeqCst
    // on both sides (these stores and the pending bits' loads here; the pending bits'
    // fetch_or and the flags' loads in evtchn::set_pending): with a Release store the load
    // that follows could be done first (x86's store buffer), both sides would miss each
    // other and the poll would sleep through the event.
    if let Some(v) = me {
        v.polling.store(true, Ordering::SeqCst);
        v.blocked.store(true, Ordering::SeqCst);
    }
    let mut any = false;
    for i in 0..u64::from(nr_ports) {
        let port = le::u32_at(&g.read_array::<4>(ports.wrapping_add(i * 4))?, 0);
        if port >= NR_PORTS {
            unblock(xen, call);
            return Ok(err(EINVAL));
        }
        any |= evtchn::is_pending(&xen.state, call.memory, port);
    }
    if any {
        unblock(xen, call);
        return Ok(ok(0));
    }
    if timeout == 0 {
        return Ok(halt(g.width));
    }
    if timeout <= call.platform.monotonic_ns() {
        unblock(xen, call);
        return Ok(ok(0));
    }
    Ok(match call.platform.halt_until(call.vcpu.vcpu, timeout) {
        Ok(()) => halt(g.width),
        Err(_) => {
            unblock(xen, call);
            ok(0)
        }
    })
}

/// The caller is no longer blocked or polling (a halt that ended, or none started).
fn unblock(xen: &Xen, call: &Call<'_>) {
    if let Some(v) = xen.state.vcpu(call.vcpu.vcpu) {
        v.unblock();
    }
}

fn run(xen: &Xen, call: &Call<'_>) -> Result<Reply, Fault> {
    let cmd = int_arg(call.arg(0));
    let arg = call.arg(1);
    let g = Guest::of(call);
    let vcpu = call.vcpu.vcpu;
    // A block or poll that halted has ended by now (the VMM's `halt_ended` cleared the marks
    // already; this covers a VMM that does not call it).
    unblock(xen, call);
    Ok(match cmd {
        SCHEDOP_yield => {
            call.platform.yield_now(vcpu, None);
            ok(0)
        }
        SCHEDOP_block => {
            if let Some(info) = xen.state.vcpu_info_gpa(vcpu) {
                let mask = GuestAddress(info.wrapping_add(UPCALL_MASK_OFFSET));
                let _ = call.memory.write_obj(0u8, mask);
            }
            // SeqCst against the upcall flag's swap in evtchn::mark_events_pending (see poll).
            if let Some(v) = xen.state.vcpu(vcpu) {
                v.blocked.store(true, Ordering::SeqCst);
            }
            // vcpu_block: events waiting for delivery end the block at once.
            if evtchn::events_need_delivery(&xen.state, call.memory, vcpu) {
                unblock(xen, call);
                return Ok(ok(0));
            }
            halt(g.width)
        }
        SCHEDOP_shutdown => {
            let reason = le::u32_at(&g.read_array::<4>(arg)?, 0) as u8;
            let latched = xen.state.shutdown_code.load(Ordering::Acquire);
            let reason = if latched == SHUTDOWN_CODE_INVALID { reason } else { latched };
            Reply::Outcome(Outcome::exit(exit_reason(reason)))
        }
        SCHEDOP_poll => poll(xen, call, arg)?,
        SCHEDOP_remote_shutdown => {
            // struct sched_remote_shutdown { domid_t domain_id; unsigned int reason; }
            let raw = g.read_array::<8>(arg)?;
            if le::u16_at(&raw, 0) == xen.domid {
                err(EPERM)
            } else {
                err(ESRCH)
            }
        }
        SCHEDOP_shutdown_code => {
            let reason = le::u32_at(&g.read_array::<4>(arg)?, 0) as u8;
            let _ = xen.state.shutdown_code.compare_exchange(
                SHUTDOWN_CODE_INVALID,
                reason,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            ok(0)
        }
        SCHEDOP_pin_override => err(EPERM),
        _ => err(ENOSYS),
    })
}

/// The `__HYPERVISOR_sched_op` handler.
pub fn sched_op(xen: &Xen, call: &mut Call<'_>) -> Reply {
    run(xen, call).unwrap_or_else(Reply::from)
}
