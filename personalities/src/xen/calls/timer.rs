//! `__HYPERVISOR_set_timer_op(u64 timeout)` (`do_set_timer_op`, `xen/common/sched/core.c`):
//! the calling vCPU's single-shot timer, shared with `VCPUOP_set_singleshot_timer`. 0 stops
//! it; any other value is an absolute system time (ns) at which `VIRQ_TIMER` is raised (a time
//! already past fires at once). 32-bit callers pass the time in two halves (EBX low, ECX
//! high). Xen's Linux workaround: a timeout negative as an `s_time_t`, or 2^50 ns (about 13
//! days) or more ahead, fires in 100 ms instead ("older guests also set a long timeout when
//! they have *no* pending timers at all"). Returns 0.

use polyvisor_core::{Call, Reply, VcpuSnapshot};

use super::ok;
use crate::xen::codec::Width;
use crate::xen::pv;
use crate::xen::Xen;

/// The `__HYPERVISOR_set_timer_op` handler.
pub fn set_timer_op(xen: &Xen, call: &mut Call<'_>) -> Reply {
    let timeout = timeout(call.vcpu, &call.input.args);
    let vcpu = call.vcpu.vcpu;
    if timeout == 0 {
        pv::stop_singleshot(&xen.state, call.platform, vcpu);
    } else {
        let deadline = huge_timeout_workaround(timeout, call.platform.monotonic_ns());
        pv::arm_singleshot(&xen.state, call.memory, call.platform, vcpu, deadline);
    }
    ok(0)
}

/// The absolute timeout a `set_timer_op` caller passes: one register, or two 32-bit halves.
pub(crate) fn timeout(vcpu: &VcpuSnapshot, args: &[u64]) -> u64 {
    let arg = |i: usize| args.get(i).copied().unwrap_or(0);
    match Width::of(vcpu) {
        Width::W64 => arg(0),
        Width::W32 => (arg(0) & 0xffff_ffff) | (arg(1) << 32),
    }
}

/// `do_set_timer_op`'s deadline for `timeout` at system time `now`: a timeout with bit 63
/// set (negative), or `offset >> 50` nonzero, becomes `now + 100 ms`.
fn huge_timeout_workaround(timeout: u64, now: u64) -> u64 {
    const HUNDRED_MS: u64 = 100_000_000;
    let offset = timeout.saturating_sub(now);
    if timeout >> 63 != 0 || offset >> 50 != 0 {
        now.saturating_add(HUNDRED_MS)
    } else {
        timeout
    }
}
