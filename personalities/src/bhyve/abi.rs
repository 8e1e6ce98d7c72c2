//! The numbers of the bhyve hypercall ABI, spelled as the review's header spells them.
//!
//! Source of the call numbers and return codes: the author's
//! `sys/amd64/include/bhyve_hypercall.h` (dstolfa/freebsd, the revision with the DTrace
//! rows); of the argument count: `HYPERCALL_MAX_ARGS` in the author's `sys/amd64/vmm/vmm.c`.
//! docs/abi/bhyve.md lists every source.

/// `HYPERCALL_PROTOTYPE` (0): returns `HYPERCALL_RET_SUCCESS`; a "ping" from ring 0 or 3.
pub const HYPERCALL_PROTOTYPE: u64 = 0;
/// `HYPERCALL_DTRACE_PROBE_CREATE` (1): registers a guest DTrace probe by name.
pub const HYPERCALL_DTRACE_PROBE_CREATE: u64 = 1;
/// `HYPERCALL_DTRACE_PROBE` (2): fires a registered probe (id, pointer to 5 args, thread).
pub const HYPERCALL_DTRACE_PROBE: u64 = 2;
/// `HYPERCALL_DTRACE_RESERVED1` (3): reserved for DTrace, not implemented.
pub const HYPERCALL_DTRACE_RESERVED1: u64 = 3;
/// `HYPERCALL_DTRACE_RESERVED2` (4): reserved for DTrace, not implemented.
pub const HYPERCALL_DTRACE_RESERVED2: u64 = 4;
/// `HYPERCALL_DTRACE_RESERVED3` (5): reserved for DTrace, not implemented.
pub const HYPERCALL_DTRACE_RESERVED3: u64 = 5;
/// `HYPERCALL_DTRACE_RESERVED4` (6): reserved for DTrace, not implemented.
pub const HYPERCALL_DTRACE_RESERVED4: u64 = 6;
/// `HYPERCALL_INDEX_MAX` (7): the first number that is not a hypercall.
pub const HYPERCALL_INDEX_MAX: u64 = 7;

/// `HYPERCALL_RET_SUCCESS` (0).
pub const HYPERCALL_RET_SUCCESS: i64 = 0;
/// `HYPERCALL_RET_ERROR` (1): a failed call, and the answer to a caller in the wrong ring.
pub const HYPERCALL_RET_ERROR: i64 = 1;
/// `HYPERCALL_RET_NOT_IMPL` (-1). The author's dispatcher returned it for numbers without a
/// handler; the review's final revision raises #UD for those instead, which is what this
/// implementation does, so no call ever returns it. Kept so the header's three codes exist.
pub const HYPERCALL_RET_NOT_IMPL: i64 = -1;

/// A return code as RAX holds it: the C `int` sign-extended to the register.
pub const fn rax_of(code: i64) -> u64 {
    // Two's complement reinterpretation on purpose: -1 is all ones, as in the guest's RAX.
    code as u64
}

/// `HYPERCALL_MAX_ARGS` (vmm.c): RDI, RSI, RDX, RCX, R8, R9.
pub const HYPERCALL_MAX_ARGS: usize = 6;

/// DTrace's `DTRACE_IDNONE` (`sys/dtrace.h`): no probe. Probe ids start at 1, as DTrace's do.
pub const DTRACE_IDNONE: u64 = 0;

/// Longest probe name PROBE_CREATE accepts, in bytes. Room for a
/// "provider:module:function:name" description of ordinary length; together with
/// [`MAX_PROBES`] it bounds what a guest can make the host store to 512 KiB per VM.
pub const MAX_PROBE_NAME: usize = 128;

/// Most probes one VM may create. The author's HyperTrace sizes its provider table at 4096
/// (`HASH_SIZE` in `sys/cddl/dev/hypertrace/hypertrace.c`) and notes that a guest must not
/// be able to fill the host's tables; past this, PROBE_CREATE answers `HYPERCALL_RET_ERROR`.
pub const MAX_PROBES: usize = 4096;

/// Number of probe arguments PROBE reads through its pointer (`dt_probe_args[5]` in the
/// author's `hc_handle_dtrace_probe`, cadets/freebsd-old `sys/amd64/vmm/vmm.c`).
pub const PROBE_ARGS: usize = 5;
