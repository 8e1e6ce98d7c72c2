//! `__HYPERVISOR_vcpu_op(int cmd, unsigned int vcpuid, void *arg)` (`do_vcpu_op` /
//! `common_vcpu_op`, `xen/common/domain.c`). A `vcpuid` that names no vCPU is `-ENOENT`
//! for every command.
//!
//! - `VCPUOP_is_up`: 1 (every vCPU the VM has counts as up; the VMM does not report which
//!   APs the guest has started).
//! - `VCPUOP_register_vcpu_info` (`struct vcpu_register_vcpu_info { u64 mfn; u32 offset;
//!   u32 rsvd; }`): places the vCPU's `vcpu_info` at `mfn * 4096 + offset`, filled as
//!   [`populate_vcpu_info`] says. Checks follow the release shown: since Xen 4.18
//!   (`map_guest_area`) an address overflowing the frame is `-EINVAL`, a second registration
//!   `-EBUSY`, an area crossing the page or misaligned (8 bytes native, 4 compat) `-ENXIO`,
//!   a frame that is not RAM `-EINVAL`; before 4.18 (`map_vcpu_info`) `offset > 4032` or
//!   misaligned is `-ENXIO`, a second registration `-EINVAL`, a bad frame `-EINVAL`.
//! - `VCPUOP_set_singleshot_timer` (`{ u64 timeout_abs_ns; u32 flags; }`) and
//!   `VCPUOP_stop_singleshot_timer`: only for the calling vCPU (else `-EINVAL`). When the
//!   deadline passes `VIRQ_TIMER` is raised on the vCPU (a host timer,
//!   [`pv::arm_singleshot`]); a deadline already past raises it at once. Before Xen 4.18 `VCPU_SSHOTTMR_future` with a deadline already
//!   past is `-ETIME`; from 4.18 the flag is ignored (commit 19c6cbd909).
//! - Everything else: `-ENOSYS`.

use std::sync::atomic::Ordering;

use polyvisor_core::{Call, Reply};

use super::{err, int_arg, ok};
use crate::xen::abi::errno::{EBUSY, EINVAL, ENOENT, ENOSYS, ENXIO, ETIME};
use crate::xen::abi::vcpu::*;
use crate::xen::abi::{PAGE_SHIFT, PAGE_SIZE};
use crate::xen::codec::Width;
use crate::xen::guest::{is_ram_frame, le, Fault, Guest};
use crate::xen::pv;
use crate::xen::shared_info::{populate_vcpu_info, VCPU_INFO_LEN};
use crate::xen::state::NONE;
use crate::xen::Xen;

/// Checks a `vcpu_register_vcpu_info` request; the area's GPA or the errno.
fn placement(xen: &Xen, call: &Call<'_>, mfn: u64, offset: u32, taken: bool) -> Result<u64, u64> {
    let compat = xen.state.shinfo_compat.load(Ordering::Acquire);
    let align: u64 = if compat { 4 } else { 8 };
    let offset = u64::from(offset);
    if xen.at_least(4, 18) {
        let gaddr = (mfn << PAGE_SHIFT).wrapping_add(offset);
        if gaddr == u64::MAX || gaddr >> PAGE_SHIFT != mfn {
            return Err(EINVAL);
        }
        if taken {
            return Err(EBUSY);
        }
        let last = gaddr.wrapping_add(VCPU_INFO_LEN - 1);
        if last >> PAGE_SHIFT != mfn || gaddr % align != 0 {
            return Err(ENXIO);
        }
        if !is_ram_frame(call.memory, mfn) {
            return Err(EINVAL);
        }
        Ok(gaddr)
    } else {
        if offset > PAGE_SIZE - VCPU_INFO_LEN || offset % align != 0 {
            return Err(ENXIO);
        }
        if taken {
            return Err(EINVAL);
        }
        if !is_ram_frame(call.memory, mfn) {
            return Err(EINVAL);
        }
        Ok((mfn << PAGE_SHIFT) + offset)
    }
}

fn register_vcpu_info(xen: &Xen, call: &Call<'_>, id: u32, arg: u64) -> Result<Reply, Fault> {
    let g = Guest::of(call);
    let raw = g.read_array::<16>(arg)?;
    let (mfn, offset) = (le::u64_at(&raw, 0), le::u32_at(&raw, 8));
    let Some(vcpu) = xen.state.vcpu(id) else {
        return Ok(err(ENOENT));
    };
    let taken = vcpu.vcpu_info.load(Ordering::Acquire) != NONE;
    let gpa = match placement(xen, call, mfn, offset, taken) {
        Ok(gpa) => gpa,
        Err(e) => return Ok(err(e)),
    };
    let old = xen.state.vcpu_info_gpa(id);
    if vcpu.vcpu_info.compare_exchange(NONE, gpa, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Another vCPU registered it meanwhile.
        return Ok(err(if xen.at_least(4, 18) { EBUSY } else { EINVAL }));
    }
    let compat = xen.state.shinfo_compat.load(Ordering::Acquire);
    populate_vcpu_info(call.memory, call.platform, xen.clock(call.platform), gpa, old, compat);
    Ok(ok(0))
}

fn set_singleshot_timer(xen: &Xen, call: &Call<'_>, id: u32, arg: u64) -> Result<Reply, Fault> {
    let g = Guest::of(call);
    // struct vcpu_set_singleshot_timer: 16 bytes native, 12 compat (u64 4-byte aligned).
    let mut raw = [0u8; 16];
    let len = if g.width == Width::W64 { 16 } else { 12 };
    g.read(arg, raw.get_mut(..len).ok_or(Fault)?)?;
    let timeout = le::u64_at(&raw, 0);
    let flags = le::u32_at(&raw, 8);
    let now = call.platform.monotonic_ns();
    if !xen.at_least(4, 18) && flags & VCPU_SSHOTTMR_future != 0 && timeout < now {
        return Ok(err(ETIME));
    }
    pv::arm_singleshot(&xen.state, call.memory, call.platform, id, timeout);
    Ok(ok(0))
}

fn run(xen: &Xen, call: &Call<'_>) -> Result<Reply, Fault> {
    let cmd = int_arg(call.arg(0));
    let id = int_arg(call.arg(1));
    let arg = call.arg(2);
    if id >= call.platform.vcpu_count() || xen.state.vcpu(id).is_none() {
        return Ok(err(ENOENT));
    }
    let current = id == call.vcpu.vcpu;
    Ok(match cmd {
        VCPUOP_is_up => ok(1),
        VCPUOP_register_vcpu_info => register_vcpu_info(xen, call, id, arg)?,
        VCPUOP_set_singleshot_timer | VCPUOP_stop_singleshot_timer if !current => err(EINVAL),
        VCPUOP_set_singleshot_timer => set_singleshot_timer(xen, call, id, arg)?,
        VCPUOP_stop_singleshot_timer => {
            pv::stop_singleshot(&xen.state, call.platform, id);
            ok(0)
        }
        _ => err(ENOSYS),
    })
}

/// The `__HYPERVISOR_vcpu_op` handler.
pub fn vcpu_op(xen: &Xen, call: &mut Call<'_>) -> Reply {
    run(xen, call).unwrap_or_else(Reply::from)
}
