//! `__HYPERVISOR_set_timer_op(u64 timeout)` (`do_set_timer_op`, `xen/common/sched/core.c`):
//! the calling vCPU's single-shot timer, shared with `VCPUOP_set_singleshot_timer`. 0 stops
//! it; any other value is an absolute system time (ns) at which `VIRQ_TIMER` is raised (a time
//! already past fires at once). 32-bit callers pass the time in two halves (EBX low, ECX
//! high). Returns 0.

use polyvisor_core::{Call, Reply};

use super::ok;
use crate::xen::codec::Width;
use crate::xen::pv;
use crate::xen::Xen;

/// The `__HYPERVISOR_set_timer_op` handler.
pub fn set_timer_op(xen: &Xen, call: &mut Call<'_>) -> Reply {
    let timeout = match Width::of(call.vcpu) {
        Width::W64 => call.arg(0),
        Width::W32 => (call.arg(0) & 0xffff_ffff) | (call.arg(1) << 32),
    };
    let vcpu = call.vcpu.vcpu;
    if timeout == 0 {
        pv::stop_singleshot(&xen.state, call.platform, vcpu);
    } else {
        pv::arm_singleshot(&xen.state, call.memory, call.platform, vcpu, timeout);
    }
    ok(0)
}
