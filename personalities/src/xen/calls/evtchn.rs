//! `__HYPERVISOR_event_channel_op(int cmd, void *arg)` (`do_event_channel_op`,
//! `xen/common/event_channel.c`); the ports and their delivery are in
//! [`crate::xen::evtchn`]. A `dom` field must name this domain (`DOMID_SELF` or its id),
//! else `-EPERM` for domain 0 and `-ESRCH` for any other; ports past the table or not in use
//! `-EINVAL`; unknown vCPUs `-ENOENT`.
//!
//! - `EVTCHNOP_alloc_unbound({dom, remote_dom, OUT port})`, `EVTCHNOP_bind_interdomain(
//!   {remote_dom, remote_port, OUT local_port})`: remote domain 0 is the VMM (its backend
//!   ports: XenStore 1, console 2, loopback pair 3/4), this domain a loop in the guest.
//! - `EVTCHNOP_bind_virq({virq, vcpu, OUT port})`, `EVTCHNOP_bind_ipi({vcpu, OUT port})`,
//!   `EVTCHNOP_bind_vcpu({port, vcpu})`, `EVTCHNOP_close({port})`, `EVTCHNOP_send({port})`,
//!   `EVTCHNOP_status({dom, port, OUT status, vcpu, u})`, `EVTCHNOP_unmask({port})`.
//! - `EVTCHNOP_bind_pirq`: `-EPERM` (no physical IRQs are passed through).
//! - `EVTCHNOP_reset`, `reset_cont`: `-ENOSYS`; the FIFO ABI (`init_control`,
//!   `expand_array`, `set_priority`): `-ENOSYS`, so guests stay on the 2-level ABI, as under
//!   QEMU.

use polyvisor_core::{Call, Reply};

use super::{err, int_arg, ok};
use crate::xen::abi::errno::{EINVAL, ENOENT, ENOSYS, EPERM, ESRCH};
use crate::xen::abi::evtchn::*;
use crate::xen::evtchn::{self, Notify};
use crate::xen::guest::{le, Fault, Guest};
use crate::xen::pv;
use crate::xen::Xen;

/// The answer for a `dom` field that is not this domain: domain 0 exists but is not ours to
/// act for (XSM, `-EPERM`); any other domain does not exist (`-ESRCH`).
fn other_domain(dom: u16) -> u64 {
    if dom == evtchn::DOMID_BACKEND {
        EPERM
    } else {
        ESRCH
    }
}

fn check_vcpu(xen: &Xen, call: &Call<'_>, vcpu: u32) -> Result<(), u64> {
    if vcpu < call.platform.vcpu_count() && xen.state.vcpu(vcpu).is_some() {
        Ok(())
    } else {
        Err(ENOENT)
    }
}

/// Runs `f` on the port table; a poisoned lock is `-EINVAL`.
fn table<R>(xen: &Xen, f: impl FnOnce(&mut evtchn::Table) -> Result<R, u64>) -> Result<R, u64> {
    let mut t = xen.state.evtchn.lock().map_err(|_| EINVAL)?;
    f(&mut t)
}

/// Writes the `u32` result field at `off` of the argument structure.
fn put_port(g: &Guest<'_>, arg: u64, off: u64, port: u32) -> Result<(), Fault> {
    g.write(arg.wrapping_add(off), &port.to_le_bytes())
}

fn run(xen: &Xen, call: &Call<'_>) -> Result<Result<u64, u64>, Fault> {
    let cmd = int_arg(call.arg(0));
    let arg = call.arg(1);
    let g = Guest::of(call);
    let st = &xen.state;
    Ok(match cmd {
        EVTCHNOP_alloc_unbound => {
            let raw = g.read_array::<8>(arg)?;
            let dom = le::u16_at(&raw, 0);
            if !xen.is_self(dom) {
                return Ok(Err(other_domain(dom)));
            }
            let remote = le::u16_at(&raw, 2);
            match table(xen, |t| t.alloc_unbound(remote)) {
                Ok(port) => put_port(&g, arg, 4, port).map(|()| Ok(0))?,
                Err(e) => Err(e),
            }
        }
        EVTCHNOP_bind_interdomain => {
            let raw = g.read_array::<12>(arg)?;
            let (remote_dom, remote_port) = (le::u16_at(&raw, 0), le::u32_at(&raw, 4));
            match table(xen, |t| t.bind_interdomain(remote_dom, remote_port)) {
                Ok(port) => {
                    put_port(&g, arg, 8, port)?;
                    // Xen raises the local port when binding (evtchn_bind_interdomain).
                    evtchn::raise(st, call.memory, call.platform, port);
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        }
        EVTCHNOP_bind_virq => {
            let raw = g.read_array::<12>(arg)?;
            let (virq, vcpu) = (le::u32_at(&raw, 0), le::u32_at(&raw, 4));
            let bound = evtchn::check_virq(virq, vcpu)
                .and_then(|()| check_vcpu(xen, call, vcpu))
                .and_then(|()| table(xen, |t| t.bind_virq(virq, vcpu)));
            match bound {
                Ok(port) => put_port(&g, arg, 8, port).map(|()| Ok(0))?,
                Err(e) => Err(e),
            }
        }
        EVTCHNOP_bind_ipi => {
            let raw = g.read_array::<8>(arg)?;
            let vcpu = le::u32_at(&raw, 0);
            match check_vcpu(xen, call, vcpu).and_then(|()| table(xen, |t| t.bind_ipi(vcpu))) {
                Ok(port) => put_port(&g, arg, 4, port).map(|()| Ok(0))?,
                Err(e) => Err(e),
            }
        }
        EVTCHNOP_bind_vcpu => {
            let raw = g.read_array::<8>(arg)?;
            let (port, vcpu) = (le::u32_at(&raw, 0), le::u32_at(&raw, 4));
            check_vcpu(xen, call, vcpu)
                .and_then(|()| table(xen, |t| t.bind_vcpu(port, vcpu)))
                .map(|()| 0)
        }
        EVTCHNOP_close => {
            let port = le::u32_at(&g.read_array::<4>(arg)?, 0);
            // The pending bit is cleared under the table's lock, which evtchn::raise holds
            // while it checks the port and sets the bit: the two cannot interleave.
            table(xen, |t| {
                t.close(port)?;
                evtchn::clear_pending(st, call.memory, port);
                Ok(0)
            })
        }
        EVTCHNOP_send => {
            let port = le::u32_at(&g.read_array::<4>(arg)?, 0);
            match table(xen, |t| t.send(port)) {
                Ok(Notify::Nothing) => Ok(0),
                Ok(Notify::Guest(p)) => {
                    evtchn::raise(st, call.memory, call.platform, p);
                    Ok(0)
                }
                Ok(Notify::Backend(be)) => {
                    pv::backend_notified(st, call.memory, call.platform, be, call.vcpu.vcpu);
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        }
        EVTCHNOP_status => {
            let mut raw = g.read_array::<24>(arg)?;
            let dom = le::u16_at(&raw, 0);
            if !xen.is_self(dom) {
                return Ok(Err(other_domain(dom)));
            }
            let port = le::u32_at(&raw, 4);
            match table(xen, |t| t.status(port)) {
                Ok((status, vcpu, a, b)) => {
                    le::put(&mut raw, 8, &status.to_le_bytes());
                    le::put(&mut raw, 12, &vcpu.to_le_bytes());
                    le::put(&mut raw, 16, &a.to_le_bytes());
                    le::put(&mut raw, 20, &b.to_le_bytes());
                    g.write(arg, &raw)?;
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        }
        EVTCHNOP_unmask => {
            let port = le::u32_at(&g.read_array::<4>(arg)?, 0);
            match table(xen, |t| t.get(port).ok_or(EINVAL)) {
                Ok(c) => {
                    evtchn::unmask(st, call.memory, call.platform, port, c.vcpu);
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        }
        EVTCHNOP_bind_pirq => Err(EPERM),
        _ => Err(ENOSYS),
    })
}

/// The `__HYPERVISOR_event_channel_op` handler.
pub fn event_channel_op(xen: &Xen, call: &mut Call<'_>) -> Reply {
    match run(xen, call) {
        Ok(Ok(v)) => ok(v),
        Ok(Err(e)) => err(e),
        Err(f) => Reply::from(f),
    }
}
