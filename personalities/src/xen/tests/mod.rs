//! Engine-level tests of the xen personality: every table row and sub-operation, both
//! conventions, every refusal kind and bad guest pointers.

mod codec;
mod codec_props;
mod console;
mod cpuid;
mod evtchn;
mod hvm;
mod hypercall_page;
mod memory;
mod robustness;
mod sched;
mod vcpu;
mod version;
