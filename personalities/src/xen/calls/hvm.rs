//! `__HYPERVISOR_hvm_op` (`do_hvm_op`, `xen/arch/x86/hvm/hvm.c`). The command is an
//! `unsigned long`.
//!
//! - `HVMOP_set_param` / `HVMOP_get_param` (`struct xen_hvm_param { domid_t domid; u16 pad;
//!   u32 index; u64 value; }`): `index >= HVM_NR_PARAMS` is `-EINVAL`, another domain
//!   `-ESRCH`; then Xen's `hvm_allow_set_param` / `hvm_allow_get_param` for the domain
//!   itself: deprecated parameters `-EINVAL`, `ALTP2M` set `-EEXIST`, parameters the guest
//!   may not touch `-EPERM`. Values follow `hvm_set_param` / `hvm_get_param`; parameters
//!   nobody set read as 0. STORE_PFN, STORE_EVTCHN, CONSOLE_PFN and CONSOLE_EVTCHN are set
//!   before the guest starts, as a toolstack does: they name the PV platform's rings and
//!   channels ([`crate::xen::pv`]); reading STORE_PFN also fills the XenStore ring's
//!   `server_features`, as xenstored has by then. `HVM_PARAM_CALLBACK_IRQ` of type 2 (a vector) is the
//!   upcall of vCPUs without their own vector.
//! - `HVMOP_set_evtchn_upcall_vector` (`{ u32 vcpu; u8 vector; }`): vector below 0x10
//!   `-EINVAL`, unknown vCPU `-ENOENT`; recorded, and the vector is raised once on that vCPU
//!   as `hvm_assert_evtchn_irq` does.
//! - `HVMOP_get_time` (`{ u64 now; }`): system time in ns.
//! - `HVMOP_pagetable_dying`: `-EINVAL` for this domain (only shadow paging uses it),
//!   `-ESRCH` for others.
//! - Everything else: `-ENOSYS`.

use std::sync::atomic::Ordering;

use polyvisor_core::{Call, ExitReason, Outcome, Reply};

use super::{err, ok};
use crate::xen::abi::errno::{EEXIST, EINVAL, ENODEV, ENOENT, ENOSYS, EPERM, ESRCH};
use crate::xen::abi::hvm::*;
use crate::xen::abi::params::*;
use crate::xen::codec::Width;
use crate::xen::guest::{le, Fault, Guest};
use crate::xen::shared_info::write_wallclock;
use crate::xen::Xen;

/// Parameters Xen no longer accepts (`-EINVAL` both ways).
const fn deprecated(index: u32) -> bool {
    matches!(
        index,
        HVM_PARAM_PAE_ENABLED
            | HVM_PARAM_DM_DOMAIN
            | HVM_PARAM_MEMORY_EVENT_CR0
            | HVM_PARAM_MEMORY_EVENT_CR3
            | HVM_PARAM_MEMORY_EVENT_CR4
            | HVM_PARAM_MEMORY_EVENT_INT3
            | HVM_PARAM_NESTEDHVM
            | HVM_PARAM_MEMORY_EVENT_SINGLE_STEP
            | HVM_PARAM_BUFIOREQ_EVTCHN
            | HVM_PARAM_MEMORY_EVENT_MSR
    )
}

/// `hvm_allow_set_param` for the domain itself.
fn allow_set(index: u32) -> Result<(), u64> {
    match index {
        HVM_PARAM_CALLBACK_IRQ
        | HVM_PARAM_VM86_TSS
        | HVM_PARAM_VM86_TSS_SIZED
        | HVM_PARAM_ACPI_IOPORTS_LOCATION
        | HVM_PARAM_VM_GENERATION_ID_ADDR
        | HVM_PARAM_STORE_EVTCHN
        | HVM_PARAM_CONSOLE_EVTCHN
        | HVM_PARAM_X87_FIP_WIDTH => Ok(()),
        HVM_PARAM_ALTP2M => Err(EEXIST),
        i if deprecated(i) => Err(EINVAL),
        _ => Err(EPERM),
    }
}

/// `hvm_allow_get_param` for the domain itself.
fn allow_get(index: u32) -> Result<(), u64> {
    match index {
        HVM_PARAM_CALLBACK_IRQ
        | HVM_PARAM_VM86_TSS
        | HVM_PARAM_VM86_TSS_SIZED
        | HVM_PARAM_ACPI_IOPORTS_LOCATION
        | HVM_PARAM_VM_GENERATION_ID_ADDR
        | HVM_PARAM_STORE_PFN
        | HVM_PARAM_STORE_EVTCHN
        | HVM_PARAM_CONSOLE_PFN
        | HVM_PARAM_CONSOLE_EVTCHN
        | HVM_PARAM_ALTP2M
        | HVM_PARAM_X87_FIP_WIDTH => Ok(()),
        i if deprecated(i) => Err(EINVAL),
        _ => Err(EPERM),
    }
}

/// `domain_crash` of the caller, which Xen does for a bad VM86 TSS of its own.
fn crash(what: &str) -> Reply {
    Reply::Outcome(Outcome::exit(ExitReason::Crash(format!("Xen domain_crash: {what}"))))
}

/// `hvm_set_param`'s value checks; returns the `(index, value)` to store.
fn set_value(xen: &Xen, call: &Call<'_>, index: u32, value: u64) -> Result<(u32, u64), Reply> {
    match index {
        HVM_PARAM_CALLBACK_IRQ => {
            // hvm_latch_shinfo_size: the caller's mode decides the shared_info layout, and
            // the wallclock is rewritten in it.
            let compat = Width::of(call.vcpu) == Width::W32;
            xen.state.shinfo_compat.store(compat, Ordering::Release);
            if let Some(base) = xen.state.shared_info_gpa() {
                write_wallclock(call.memory, call.platform, base, compat);
            }
            Ok((index, value))
        }
        // No emulated ACPI PM timer here (has_vpm() is false, as for PVH).
        HVM_PARAM_ACPI_IOPORTS_LOCATION => Err(err(ENODEV)),
        HVM_PARAM_X87_FIP_WIDTH if !matches!(value, 0 | 4 | 8) => Err(err(EINVAL)),
        HVM_PARAM_VM86_TSS => {
            // "Hardware would silently truncate high bits."
            if value != u64::from(value as u32) {
                return Err(crash("HVM_PARAM_VM86_TSS above 4 GiB"));
            }
            // Old hvmloader binaries hardcode the size to 128 bytes.
            let sized = if value != 0 { value | (128 << 32) | VM86_TSS_UPDATED } else { value };
            Ok((HVM_PARAM_VM86_TSS_SIZED, sized))
        }
        HVM_PARAM_VM86_TSS_SIZED => {
            let size = value >> 32;
            if size < TSS32_LEN {
                return Err(crash("HVM_PARAM_VM86_TSS_SIZED smaller than a TSS"));
            }
            // Capped at a TSS, the interrupt redirection bitmap and a full I/O bitmap.
            let max = TSS32_LEN + 0x100 / 8 + 0x10000 / 8 + 1;
            let value = if size > max { u64::from(value as u32) | (max << 32) } else { value };
            Ok((index, value | VM86_TSS_UPDATED))
        }
        _ => Ok((index, value)),
    }
}

/// `hvm_get_param`'s special readings.
fn get_value(xen: &Xen, index: u32) -> u64 {
    match index {
        HVM_PARAM_VM86_TSS => u64::from(xen.state.param(HVM_PARAM_VM86_TSS_SIZED) as u32),
        HVM_PARAM_VM86_TSS_SIZED => xen.state.param(index) & !VM86_TSS_UPDATED,
        _ => xen.state.param(index),
    }
}

fn param(xen: &Xen, call: &Call<'_>, set: bool, arg: u64) -> Result<Reply, Fault> {
    let g = Guest::of(call);
    let mut raw = g.read_array::<16>(arg)?;
    let domid = le::u16_at(&raw, 0);
    let index = le::u32_at(&raw, 4);
    let value = le::u64_at(&raw, 8);
    if index >= HVM_NR_PARAMS {
        return Ok(err(EINVAL));
    }
    if !xen.is_self(domid) {
        return Ok(err(ESRCH));
    }
    if set {
        if let Err(e) = allow_set(index) {
            return Ok(err(e));
        }
        return Ok(match set_value(xen, call, index, value) {
            Ok((index, value)) => {
                xen.state.set_param(index, value);
                ok(0)
            }
            Err(answer) => answer,
        });
    }
    if let Err(e) = allow_get(index) {
        return Ok(err(e));
    }
    if index == HVM_PARAM_STORE_PFN {
        crate::xen::pv::announce_store(call.memory);
    }
    le::put(&mut raw, 8, &get_value(xen, index).to_le_bytes());
    g.write(arg, &raw)?;
    Ok(ok(0))
}

fn run(xen: &Xen, call: &Call<'_>) -> Result<Reply, Fault> {
    let op = call.arg(0);
    let arg = call.arg(1);
    let g = Guest::of(call);
    Ok(match op {
        HVMOP_set_param => param(xen, call, true, arg)?,
        HVMOP_get_param => param(xen, call, false, arg)?,
        HVMOP_set_evtchn_upcall_vector => {
            let raw = g.read_array::<8>(arg)?;
            let vcpu = le::u32_at(&raw, 0);
            let vector = raw.get(4).copied().unwrap_or(0);
            if vector < MIN_UPCALL_VECTOR {
                return Ok(err(EINVAL));
            }
            let Some(state) = xen.state.vcpu(vcpu) else {
                return Ok(err(ENOENT));
            };
            if vcpu >= call.platform.vcpu_count() {
                return Ok(err(ENOENT));
            }
            state.upcall_vector.store(vector, Ordering::Release);
            let _ = call.platform.interrupt(vcpu, vector);
            ok(0)
        }
        HVMOP_get_time => {
            g.write(arg, &call.platform.monotonic_ns().to_le_bytes())?;
            ok(0)
        }
        HVMOP_pagetable_dying => {
            // struct xen_hvm_pagetable_dying { domid_t domid; u16 pad[3]; u64 gpa; }
            let raw = g.read_array::<16>(arg)?;
            if xen.is_self(le::u16_at(&raw, 0)) {
                err(EINVAL)
            } else {
                err(ESRCH)
            }
        }
        _ => err(ENOSYS),
    })
}

/// The `__HYPERVISOR_hvm_op` handler.
pub fn hvm_op(xen: &Xen, call: &mut Call<'_>) -> Reply {
    run(xen, call).unwrap_or_else(Reply::from)
}
