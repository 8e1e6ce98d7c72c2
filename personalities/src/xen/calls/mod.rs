//! The hypercall handlers, one file per hypercall. Each handler takes the arguments as the
//! C prototype in `xen/include/hypercall-defs.c` types them (an `int` or `unsigned int`
//! argument is the low 32 bits of its register even for 64-bit callers) and answers with
//! Xen's return value or negated errno.

pub mod console;
pub mod evtchn;
pub mod hvm;
pub mod memory;
pub mod sched;
pub mod timer;
pub mod vcpu;
pub mod version;

use polyvisor_core::Reply;

use super::abi::errno::EFAULT;
use super::abi::neg;
use super::guest::Fault;

/// `-errno`.
pub fn err(errno: u64) -> Reply {
    Reply::Error(neg(errno))
}

/// Success with `value`.
pub fn ok(value: u64) -> Reply {
    Reply::Value(value)
}

impl From<Fault> for Reply {
    fn from(_: Fault) -> Reply {
        err(EFAULT)
    }
}

/// The low 32 bits of an argument: an `int` or `unsigned int` parameter.
pub fn int_arg(value: u64) -> u32 {
    value as u32
}
