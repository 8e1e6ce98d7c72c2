//! The hypercall table and its handlers.
//!
//! Every handler starts with [`prologue`], which applies the checks in KVM's
//! `kvm_hv_hypercall` order (arch/x86/kvm/hyperv.c): the privilege gate
//! (HV_STATUS_ACCESS_DENIED, `hv_check_hypercall_access`), reserved input-value bits
//! (HV_STATUS_INVALID_HYPERCALL_INPUT), XMM fast input not advertised (#UD), then the call's
//! shape — rep count and start index for rep/simple calls, a variable header only where the
//! call takes one (HV_STATUS_INVALID_HYPERCALL_INPUT, TLFS "Hypercall Inputs"). The call code
//! itself was checked before: the engine answers an unknown code with
//! HV_STATUS_INVALID_HYPERCALL_CODE before any handler runs.

use polyvisor_core::{Call, HypercallRow, Outcome, Reply, Rings};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::abi::*;
use super::codec::{continuation, result_value, Control};
use super::HyperV;

/// At most this many reps are processed per exit; a longer rep call continues by re-execution
/// (TLFS "Hypercall Continuation": the hypervisor returns within about 50 us).
pub const REPS_PER_EXIT: u16 = 256;

/// Bytes of XMM-register input beyond RDX and R8 (XMM0..XMM5).
const XMM_BYTES: usize = 96;

/// A status as a handler reply: SUCCESS is a value, anything else an error.
pub fn status(s: u16) -> Reply {
    if s == HV_STATUS_SUCCESS {
        Reply::Value(0)
    } else {
        Reply::Error(u64::from(s))
    }
}

/// Simple or rep (TLFS "Hypercall Classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Simple,
    Rep,
}

/// What the prologue checks for one call.
struct Spec {
    /// The privilege/recommendation gate; `false` answers HV_STATUS_ACCESS_DENIED.
    gate: fn(&HyperV) -> bool,
    class: Class,
    /// Whether the call accepts a variable header.
    var_header: bool,
    /// Whether the fast form passes input in XMM registers (KVM `is_xmm_fast_hypercall`).
    xmm_fast: bool,
}

/// The decoded input value and GPAs.
#[derive(Debug, Clone, Copy)]
struct Hc {
    control: Control,
    input: u64,
    output: u64,
}

fn prologue(p: &HyperV, call: &Call<'_>, spec: &Spec) -> Result<Hc, Reply> {
    let hc = Hc { control: Control(call.arg(0)), input: call.arg(1), output: call.arg(2) };
    if !(spec.gate)(p) {
        return Err(status(HV_STATUS_ACCESS_DENIED));
    }
    if hc.control.reserved() {
        return Err(status(HV_STATUS_INVALID_HYPERCALL_INPUT));
    }
    // TLFS "XMM Fast Hypercall Input": use without the feature bit is a #UD.
    if hc.control.fast() && spec.xmm_fast && !p.id.has_feature(HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE)
    {
        return Err(Reply::Outcome(Outcome::invalid_opcode()));
    }
    let (count, start) = (hc.control.rep_count(), hc.control.rep_start());
    let shape_ok = match spec.class {
        // A rep count or start index on a simple call.
        Class::Simple => count == 0 && start == 0,
        // No rep count on a rep call, or a start index not below the count.
        Class::Rep => count != 0 && start < count,
    };
    if !shape_ok || (!spec.var_header && hc.control.var_header() != 0) {
        return Err(status(HV_STATUS_INVALID_HYPERCALL_INPUT));
    }
    Ok(hc)
}

/// Checks a memory parameter block (TLFS "Alignment Requirements"): 8-byte aligned, not
/// crossing a page, inside the GPA space (guest memory); anything else is
/// HV_STATUS_INVALID_ALIGNMENT.
fn check_block(call: &Call<'_>, gpa: u64, len: u64) -> Result<(), Reply> {
    check_block_shape(gpa, len)?;
    if usize::try_from(len).is_ok_and(|l| call.memory.check_range(GuestAddress(gpa), l.max(1))) {
        Ok(())
    } else {
        Err(status(HV_STATUS_INVALID_ALIGNMENT))
    }
}

/// The alignment half of [`check_block`]: 8-byte aligned and not crossing a page.
fn check_block_shape(gpa: u64, len: u64) -> Result<(), Reply> {
    let in_page = (gpa & (HV_HYP_PAGE_SIZE - 1)).checked_add(len);
    if gpa & 7 == 0 && in_page.is_some_and(|end| end <= HV_HYP_PAGE_SIZE) {
        Ok(())
    } else {
        Err(status(HV_STATUS_INVALID_ALIGNMENT))
    }
}

/// Words of a memory input block read up front: every fixed header here fits.
const HEAD_WORDS: usize = 4;

/// A call's input parameter block: guest memory (checked) or registers (fast calls: RDX, R8,
/// then XMM0..XMM5 low half first when XMM input is used).
enum Input {
    /// In guest memory; a block of at most [`HEAD_WORDS`] words is read once, up front
    /// (`head_len` bytes of `head`), so its words cost no further guest-memory access.
    Memory {
        gpa: u64,
        head: [u64; HEAD_WORDS],
        head_len: usize,
    },
    Registers {
        words: [u64; 14],
        len: usize,
    },
}

impl Input {
    /// The input of a call whose block is `len` bytes.
    fn new(call: &Call<'_>, hc: &Hc, len: u64, xmm: bool) -> Result<Input, Reply> {
        if !hc.control.fast() {
            let mut head = [0u64; HEAD_WORDS];
            let small = usize::try_from(len)
                .ok()
                .filter(|l| *l > 0 && l.is_multiple_of(8) && *l <= HEAD_WORDS * 8);
            let Some(head_len) = small else {
                check_block(call, hc.input, len)?;
                return Ok(Input::Memory { gpa: hc.input, head, head_len: 0 });
            };
            // The read is the check that the block is guest memory.
            check_block_shape(hc.input, len)?;
            let mut bytes = [0u8; HEAD_WORDS * 8];
            let dst =
                bytes.get_mut(..head_len).ok_or_else(|| status(HV_STATUS_INVALID_ALIGNMENT))?;
            call.memory
                .read_slice(dst, GuestAddress(hc.input))
                .map_err(|_| status(HV_STATUS_INVALID_ALIGNMENT))?;
            for (w, chunk) in head.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                *w = u64::from_le_bytes(b);
            }
            return Ok(Input::Memory { gpa: hc.input, head, head_len });
        }
        let mut words = [hc.input, hc.output, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut avail = 16usize;
        if xmm {
            let Ok(regs) = call.platform.read_xmm(call.vcpu.vcpu) else {
                // XMM input is advertised but the VMM cannot read the registers.
                return Err(status(HV_STATUS_OPERATION_DENIED));
            };
            for (i, reg) in regs.iter().enumerate() {
                // Low quadword first: the block is laid out as in memory.
                if let Some(w) = words.get_mut(2 + 2 * i) {
                    *w = *reg as u64;
                }
                if let Some(w) = words.get_mut(3 + 2 * i) {
                    *w = (*reg >> 64) as u64;
                }
            }
            avail += XMM_BYTES;
        }
        // A block larger than the registers hold cannot be passed fast (KVM
        // kvm_get_sparse_vp_set/kvm_hv_get_tlb_flush_entries answer this input error).
        if usize::try_from(len).map_or(true, |l| l > avail) {
            return Err(status(HV_STATUS_INVALID_HYPERCALL_INPUT));
        }
        Ok(Input::Registers { words, len: avail })
    }

    /// The 8 bytes at `offset` of the block.
    fn u64_at(&self, call: &Call<'_>, offset: u64) -> Result<u64, Reply> {
        match self {
            Input::Memory { head, head_len, .. }
                if offset.is_multiple_of(8)
                    && offset.checked_add(8).is_some_and(|e| e <= *head_len as u64) =>
            {
                usize::try_from(offset / 8)
                    .ok()
                    .and_then(|i| head.get(i).copied())
                    .ok_or_else(|| status(HV_STATUS_INVALID_ALIGNMENT))
            }
            Input::Memory { gpa, .. } => gpa
                .checked_add(offset)
                .and_then(|a| call.memory.read_obj::<u64>(GuestAddress(a)).ok())
                .ok_or_else(|| status(HV_STATUS_INVALID_ALIGNMENT)),
            Input::Registers { words, len } => usize::try_from(offset / 8)
                .ok()
                .filter(|i| i * 8 < *len)
                .and_then(|i| words.get(i).copied())
                .ok_or_else(|| status(HV_STATUS_INVALID_HYPERCALL_INPUT)),
        }
    }
}

/// A processor set resolved to the VM's vCPUs (at most 64 here: the configuration's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Targets {
    All,
    Mask(u64),
}

impl Targets {
    /// The vCPU indexes this set names that exist: below both the configured count and the
    /// VMM's count.
    fn iter(self, p: &HyperV, call: &Call<'_>) -> impl Iterator<Item = u32> {
        let n = p.id.max_vcpus.min(call.platform.vcpu_count()).min(64);
        (0..n).filter(move |i| match self {
            Targets::All => true,
            Targets::Mask(m) => m & (1u64 << i) != 0,
        })
    }
}

/// Reads an HV_VP_SET (TLFS datatypes/hv_vp_set) at `offset`: format, valid bank mask, then
/// one bank per set bit, which the variable header size must count exactly (KVM:
/// HV_STATUS_INVALID_HYPERCALL_INPUT). Formats other than 0 (sparse) and 1 (all) are
/// HV_STATUS_INVALID_PARAMETER. Returns the set and the bytes it takes.
fn read_vp_set(call: &Call<'_>, hc: &Hc, input: &Input, offset: u64) -> Result<Targets, Reply> {
    let format = input.u64_at(call, offset)?;
    let valid = input.u64_at(call, offset + 8)?;
    if u32::from(hc.control.var_header()) != valid.count_ones() {
        return Err(status(HV_STATUS_INVALID_HYPERCALL_INPUT));
    }
    match format {
        HV_GENERIC_SET_ALL => Ok(Targets::All),
        HV_GENERIC_SET_SPARSE_4K => {
            // Only bank 0 (VPs 0..63) can name a vCPU here; every bank is still read so a bad
            // block is reported.
            let mut mask = 0;
            let mut next = offset + 16;
            for bank in 0..64u32 {
                if valid & (1u64 << bank) == 0 {
                    continue;
                }
                let contents = input.u64_at(call, next)?;
                if bank == 0 {
                    mask = contents;
                }
                next += 8;
            }
            Ok(Targets::Mask(mask))
        }
        _ => Err(status(HV_STATUS_INVALID_PARAMETER)),
    }
}

fn gate_flush(p: &HyperV) -> bool {
    p.id.recommends(HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED)
}
fn gate_flush_ex(p: &HyperV) -> bool {
    gate_flush(p) && p.id.recommends(HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED)
}
fn gate_ipi(p: &HyperV) -> bool {
    p.id.recommends(HV_X64_CLUSTER_IPI_RECOMMENDED)
}
fn gate_ipi_ex(p: &HyperV) -> bool {
    gate_ipi(p) && p.id.recommends(HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED)
}
/// KVM: NotifyLongSpinWait needs a spinlock retry count that is neither 0 nor "never".
fn gate_spin(p: &HyperV) -> bool {
    p.id.spinlock_retries != 0 && p.id.spinlock_retries != u32::MAX
}
fn gate_post(p: &HyperV) -> bool {
    p.id.has_privilege(HV_POST_MESSAGES)
}
fn gate_signal(p: &HyperV) -> bool {
    p.id.has_privilege(HV_SIGNAL_EVENTS)
}
fn gate_debug(p: &HyperV) -> bool {
    p.id.has_privilege(HV_DEBUGGING)
}
fn gate_ext(p: &HyperV) -> bool {
    p.id.has_privilege(HV_ENABLE_EXTENDED_HYPERCALLS)
}

/// Asks the VMM to flush each target's TLB. A VMM that cannot is answered with
/// HV_STATUS_OPERATION_DENIED, never a false success (Linux then falls back to IPIs).
fn flush_targets(p: &HyperV, call: &Call<'_>, targets: Targets) -> Result<(), Reply> {
    for t in targets.iter(p, call) {
        if call.platform.flush_guest_tlb(t).is_err() {
            return Err(status(HV_STATUS_OPERATION_DENIED));
        }
    }
    Ok(())
}

/// HvCallFlushVirtualAddressSpace/List and their Ex forms (TLFS hypercalls/
/// HvCallFlushVirtualAddress*). Input: AddressSpace, Flags, then a ProcessorMask (plain) or an
/// HV_VP_SET (Ex), then for the List forms one GVA range per rep. Every flush here is a full
/// flush of the targets, which covers any address space and range list.
fn flush(p: &HyperV, call: &mut Call<'_>, ex: bool, list: bool) -> Reply {
    let spec = Spec {
        gate: if ex { gate_flush_ex } else { gate_flush },
        class: if list { Class::Rep } else { Class::Simple },
        var_header: ex,
        xmm_fast: true,
    };
    let hc = match prologue(p, call, &spec) {
        Ok(hc) => hc,
        Err(r) => return r,
    };
    let header = if ex { 32 + 8 * u64::from(hc.control.var_header()) } else { 24 };
    let reps = u64::from(hc.control.rep_count());
    let input = match Input::new(call, &hc, header + 8 * reps, true) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let run = || -> Result<Reply, Reply> {
        let flags = input.u64_at(call, 8)?;
        let mut allowed = HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES;
        if list {
            // The extended range format exists only when advertised; non-global-only "does
            // not make sense for this call and is treated as an invalid option".
            if p.id.has_feature(HV_FEATURE_EXT_GVA_RANGES_FLUSH) {
                allowed |= HV_FLUSH_USE_EXTENDED_RANGE_FORMAT;
            }
        } else {
            allowed |= HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY;
        }
        if flags & !allowed != 0 {
            return Err(status(HV_STATUS_INVALID_PARAMETER));
        }
        let targets = if ex {
            match read_vp_set(call, &hc, &input, 16)? {
                _ if flags & HV_FLUSH_ALL_PROCESSORS != 0 => Targets::All,
                t => t,
            }
        } else {
            let mask = input.u64_at(call, 16)?;
            // KVM: a zero mask without HV_FLUSH_ALL_PROCESSORS counts as all processors
            // (a Windows Server 2012 guest relies on it); a larger set is always safe.
            if flags & HV_FLUSH_ALL_PROCESSORS != 0 || mask == 0 {
                Targets::All
            } else {
                Targets::Mask(mask)
            }
        };
        if !list {
            flush_targets(p, call, targets)?;
            return Ok(status(HV_STATUS_SUCCESS));
        }
        // The reps: each GVA range is read (all of them lie in the checked block; "invalid
        // GVAs are ignored"). At most REPS_PER_EXIT per exit, then continue.
        let (start, count) = (hc.control.rep_start(), hc.control.rep_count());
        let end = count.min(start.saturating_add(REPS_PER_EXIT));
        for rep in start..end {
            input.u64_at(call, header + 8 * u64::from(rep))?;
        }
        if let Err(e) = flush_targets(p, call, targets) {
            return Err(match e {
                Reply::Error(s) => Reply::Error(s | (u64::from(start) << 32)),
                other => other,
            });
        }
        if end < count {
            return Ok(Reply::Outcome(continuation(call.vcpu, hc.control, end)));
        }
        Ok(Reply::Value(result_value(HV_STATUS_SUCCESS, count)))
    };
    run().unwrap_or_else(|e| e)
}

fn flush_space(p: &HyperV, call: &mut Call<'_>) -> Reply {
    flush(p, call, false, false)
}
fn flush_list(p: &HyperV, call: &mut Call<'_>) -> Reply {
    flush(p, call, false, true)
}
fn flush_space_ex(p: &HyperV, call: &mut Call<'_>) -> Reply {
    flush(p, call, true, false)
}
fn flush_list_ex(p: &HyperV, call: &mut Call<'_>) -> Reply {
    flush(p, call, true, true)
}

/// HvCallNotifyLongSpinWait (TLFS): advisory, the only answer is SUCCESS; the caller yields.
fn notify_long_spin_wait(p: &HyperV, call: &mut Call<'_>) -> Reply {
    let spec = Spec { gate: gate_spin, class: Class::Simple, var_header: false, xmm_fast: false };
    if let Err(r) = prologue(p, call, &spec) {
        return r;
    }
    call.platform.yield_now(call.vcpu.vcpu, None);
    status(HV_STATUS_SUCCESS)
}

/// HvCallSendSyntheticClusterIpi and its Ex form (TLFS): {Vector u32, TargetVtl u8, padding,
/// ProcessorMask u64} or {Vector, TargetVtl, padding, HV_VP_SET}. Fast plain form: RDX holds
/// Vector and TargetVtl, R8 the mask.
fn send_ipi(p: &HyperV, call: &mut Call<'_>, ex: bool) -> Reply {
    let spec = Spec {
        gate: if ex { gate_ipi_ex } else { gate_ipi },
        class: Class::Simple,
        var_header: ex,
        xmm_fast: ex,
    };
    let hc = match prologue(p, call, &spec) {
        Ok(hc) => hc,
        Err(r) => return r,
    };
    let len = if ex { 24 + 8 * u64::from(hc.control.var_header()) } else { 16 };
    let input = match Input::new(call, &hc, len, ex) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let run = || -> Result<Reply, Reply> {
        let first = input.u64_at(call, 0)?;
        let targets = if ex {
            let t = read_vp_set(call, &hc, &input, 8)?;
            // KVM (and its hyperv_features selftest): an empty sparse set succeeds before the
            // vector is looked at.
            if t == Targets::Mask(0) && hc.control.var_header() == 0 {
                return Ok(status(HV_STATUS_SUCCESS));
            }
            t
        } else {
            Targets::Mask(input.u64_at(call, 8)?)
        };
        let vector = first as u32;
        // Only VTL 0 exists; the three padding bytes are ignored as the TLFS says of padding.
        let target_vtl = (first >> 32) & 0xff;
        if target_vtl != 0 || !(HV_IPI_LOW_VECTOR..=HV_IPI_HIGH_VECTOR).contains(&vector) {
            // KVM answers a vector outside 0x10..=0xFF with an input error.
            return Err(status(HV_STATUS_INVALID_HYPERCALL_INPUT));
        }
        for t in targets.iter(p, call) {
            if call.platform.interrupt(t, vector as u8).is_err() {
                return Err(status(HV_STATUS_OPERATION_DENIED));
            }
        }
        Ok(status(HV_STATUS_SUCCESS))
    };
    run().unwrap_or_else(|e| e)
}

fn send_ipi_plain(p: &HyperV, call: &mut Call<'_>) -> Reply {
    send_ipi(p, call, false)
}
fn send_ipi_ex(p: &HyperV, call: &mut Call<'_>) -> Reply {
    send_ipi(p, call, true)
}

/// HvCallPostMessage / HvCallSignalEvent without a SynIC: with the privilege, a well-formed
/// call finds no connection. KVM answers HV_STATUS_INVALID_HYPERCALL_INPUT when the SynIC is
/// not active (its hyperv_features selftest expects it); a misplaced input block is
/// HV_STATUS_INVALID_ALIGNMENT first.
fn no_synic(p: &HyperV, call: &mut Call<'_>, gate: fn(&HyperV) -> bool, len: u64) -> Reply {
    let spec = Spec { gate, class: Class::Simple, var_header: false, xmm_fast: false };
    let hc = match prologue(p, call, &spec) {
        Ok(hc) => hc,
        Err(r) => return r,
    };
    if !hc.control.fast() {
        if let Err(r) = check_block(call, hc.input, len) {
            return r;
        }
    }
    status(HV_STATUS_INVALID_HYPERCALL_INPUT)
}

/// HvCallPostMessage: a 256-byte input block.
fn post_message(p: &HyperV, call: &mut Call<'_>) -> Reply {
    no_synic(p, call, gate_post, 256)
}
/// HvCallSignalEvent: an 8-byte input block.
fn signal_event(p: &HyperV, call: &mut Call<'_>) -> Reply {
    no_synic(p, call, gate_signal, 8)
}

/// HvExtCallQueryCapabilities (TLFS): output is a u64 bitmask of the extended hypercalls
/// available; none beyond this one are, so 0. KVM: the fast form is
/// HV_STATUS_INVALID_PARAMETER.
fn ext_query_capabilities(p: &HyperV, call: &mut Call<'_>) -> Reply {
    let spec = Spec { gate: gate_ext, class: Class::Simple, var_header: false, xmm_fast: false };
    let hc = match prologue(p, call, &spec) {
        Ok(hc) => hc,
        Err(r) => return r,
    };
    if hc.control.fast() {
        return status(HV_STATUS_INVALID_PARAMETER);
    }
    if let Err(r) = check_block(call, hc.output, 8) {
        return r;
    }
    match call.memory.write_obj(0u64, GuestAddress(hc.output)) {
        Ok(()) => status(HV_STATUS_SUCCESS),
        Err(_) => status(HV_STATUS_INVALID_ALIGNMENT),
    }
}

/// The largest debug payload: a page less the 8-byte header (QEMU hw/hyperv/hyperv.c).
pub const DEBUG_DATA_MAX: usize = (HV_HYP_PAGE_SIZE - 8) as usize;

/// The debug calls' common checks: gate, shape, and the slow form only for Post/Retrieve
/// (KVM: fast is HV_STATUS_INVALID_PARAMETER).
fn debug_prologue(p: &HyperV, call: &Call<'_>, fast_ok: bool) -> Result<Hc, Reply> {
    let spec = Spec { gate: gate_debug, class: Class::Simple, var_header: false, xmm_fast: false };
    let hc = prologue(p, call, &spec)?;
    if hc.control.fast() && !fast_ok {
        return Err(status(HV_STATUS_INVALID_PARAMETER));
    }
    Ok(hc)
}

/// Whether two blocks overlap (TLFS: input and output lists "cannot overlap").
fn overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// The Count field (low half of the first qword) of a debug-data input block at `input`,
/// bounded by [`DEBUG_DATA_MAX`].
fn debug_count(call: &Call<'_>, input: u64) -> Result<usize, Reply> {
    let head = call
        .memory
        .read_obj::<u64>(GuestAddress(input))
        .map_err(|_| status(HV_STATUS_INVALID_ALIGNMENT))?;
    let count = (head & 0xffff_ffff) as usize;
    if count > DEBUG_DATA_MAX {
        return Err(status(HV_STATUS_INVALID_PARAMETER));
    }
    Ok(count)
}

/// HvCallPostDebugData: input {Count u32, Options u32, Data[Count]}, output {PendingCount
/// u32}. The bytes go to the VMM's debug channel; what it does not take is pending and the
/// status is HV_STATUS_INSUFFICIENT_BUFFERS (QEMU `hyperv_hcall_post_dbg_data`).
fn post_debug_data(p: &HyperV, call: &mut Call<'_>) -> Reply {
    let run = || -> Result<Reply, Reply> {
        let hc = debug_prologue(p, call, false)?;
        check_block(call, hc.input, 8)?;
        check_block(call, hc.output, 8)?;
        let count = debug_count(call, hc.input)?;
        let len = 8 + count as u64;
        check_block(call, hc.input, len)?;
        if overlap(hc.input, len, hc.output, 8) {
            return Err(status(HV_STATUS_INVALID_PARAMETER));
        }
        let mut buf = [0u8; DEBUG_DATA_MAX];
        let data = buf.get_mut(..count).unwrap_or_default();
        call.memory
            .read_slice(data, GuestAddress(hc.input + 8))
            .map_err(|_| status(HV_STATUS_INVALID_ALIGNMENT))?;
        let taken = call
            .platform
            .debug_post(call.vcpu.vcpu, data)
            .map_err(|_| status(HV_STATUS_OPERATION_DENIED))?
            .min(count);
        let pending = (count - taken) as u32;
        call.memory
            .write_obj(pending, GuestAddress(hc.output))
            .map_err(|_| status(HV_STATUS_INVALID_ALIGNMENT))?;
        Ok(status(if pending == 0 { HV_STATUS_SUCCESS } else { HV_STATUS_INSUFFICIENT_BUFFERS }))
    };
    run().unwrap_or_else(|e| e)
}

/// HvCallRetrieveDebugData: input {Count u32, Options u32, Timeout u64}, output
/// {RetrievedCount u32, RemainingCount u32, Data[]}. Never waits: with nothing pending the
/// answer is HV_STATUS_NO_DATA with RetrievedCount 0 (QEMU `hyperv_hcall_retreive_dbg_data`).
fn retrieve_debug_data(p: &HyperV, call: &mut Call<'_>) -> Reply {
    let run = || -> Result<Reply, Reply> {
        let hc = debug_prologue(p, call, false)?;
        check_block(call, hc.input, 16)?;
        let count = debug_count(call, hc.input)?;
        let out_len = 8 + count as u64;
        check_block(call, hc.output, out_len)?;
        if overlap(hc.input, 16, hc.output, out_len) {
            return Err(status(HV_STATUS_INVALID_PARAMETER));
        }
        let mut buf = [0u8; DEBUG_DATA_MAX];
        let data = buf.get_mut(..count).unwrap_or_default();
        let got = call
            .platform
            .debug_retrieve(call.vcpu.vcpu, data)
            .map_err(|_| status(HV_STATUS_OPERATION_DENIED))?
            .min(count);
        let retrieved = data.get(..got).unwrap_or_default();
        let counts = (got as u64) | (((count - got) as u64) << 32);
        call.memory
            .write_obj(counts, GuestAddress(hc.output))
            .and_then(|()| call.memory.write_slice(retrieved, GuestAddress(hc.output + 8)))
            .map_err(|_| status(HV_STATUS_INVALID_ALIGNMENT))?;
        Ok(status(if got == 0 && count != 0 { HV_STATUS_NO_DATA } else { HV_STATUS_SUCCESS }))
    };
    run().unwrap_or_else(|e| e)
}

/// HvCallResetDebugSession: output {HostIp u32, TargetIp u32, HostPort u16, TargetPort u16,
/// HostMac[6], TargetMac[6]} (QEMU `struct hyperv_reset_debug_session_output`). The channel
/// is not a network: all zero. Answers HV_STATUS_OPERATION_DENIED when the VMM has no channel.
fn reset_debug_session(p: &HyperV, call: &mut Call<'_>) -> Reply {
    let run = || -> Result<Reply, Reply> {
        let hc = debug_prologue(p, call, true)?;
        if !hc.control.fast() {
            check_block(call, hc.output, 24)?;
        }
        call.platform
            .debug_post(call.vcpu.vcpu, &[])
            .map_err(|_| status(HV_STATUS_OPERATION_DENIED))?;
        if !hc.control.fast() {
            call.memory
                .write_slice(&[0u8; 24], GuestAddress(hc.output))
                .map_err(|_| status(HV_STATUS_INVALID_ALIGNMENT))?;
        }
        Ok(status(HV_STATUS_SUCCESS))
    };
    run().unwrap_or_else(|e| e)
}

/// The Hyper-V hypercall table: every call is kernel-only (TLFS "Legal Hypercall
/// Environments": CPL 0 in protected or long mode; the decoder answers other callers with #UD
/// before the lookup).
pub const TABLE: &[HypercallRow<HyperV>] = &[
    HypercallRow {
        number: HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE as u64,
        name: "HvCallFlushVirtualAddressSpace",
        rings: Rings::KERNEL,
        handler: Some(flush_space),
        summary: "flush the TLBs of a processor mask (the VMM's flush_guest_tlb)",
    },
    HypercallRow {
        number: HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST as u64,
        name: "HvCallFlushVirtualAddressList",
        rings: Rings::KERNEL,
        handler: Some(flush_list),
        summary: "flush GVA ranges (as full flushes), 256 reps per exit",
    },
    HypercallRow {
        number: HVCALL_NOTIFY_LONG_SPIN_WAIT as u64,
        name: "HvCallNotifyLongSpinWait",
        rings: Rings::KERNEL,
        handler: Some(notify_long_spin_wait),
        summary: "yield the calling vCPU",
    },
    HypercallRow {
        number: HVCALL_SEND_IPI as u64,
        name: "HvCallSendSyntheticClusterIpi",
        rings: Rings::KERNEL,
        handler: Some(send_ipi_plain),
        summary: "send a fixed interrupt to a processor mask",
    },
    HypercallRow {
        number: HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX as u64,
        name: "HvCallFlushVirtualAddressSpaceEx",
        rings: Rings::KERNEL,
        handler: Some(flush_space_ex),
        summary: "flush the TLBs of an HV_VP_SET",
    },
    HypercallRow {
        number: HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX as u64,
        name: "HvCallFlushVirtualAddressListEx",
        rings: Rings::KERNEL,
        handler: Some(flush_list_ex),
        summary: "flush GVA ranges on an HV_VP_SET, 256 reps per exit",
    },
    HypercallRow {
        number: HVCALL_SEND_IPI_EX as u64,
        name: "HvCallSendSyntheticClusterIpiEx",
        rings: Rings::KERNEL,
        handler: Some(send_ipi_ex),
        summary: "send a fixed interrupt to an HV_VP_SET",
    },
    HypercallRow {
        number: HVCALL_POST_MESSAGE as u64,
        name: "HvCallPostMessage",
        rings: Rings::KERNEL,
        handler: Some(post_message),
        summary: "no SynIC: answers that no connection exists",
    },
    HypercallRow {
        number: HVCALL_SIGNAL_EVENT as u64,
        name: "HvCallSignalEvent",
        rings: Rings::KERNEL,
        handler: Some(signal_event),
        summary: "no SynIC: answers that no connection exists",
    },
    HypercallRow {
        number: HVCALL_POST_DEBUG_DATA as u64,
        name: "HvCallPostDebugData",
        rings: Rings::KERNEL,
        handler: Some(post_debug_data),
        summary: "send guest bytes to the host debug channel",
    },
    HypercallRow {
        number: HVCALL_RETRIEVE_DEBUG_DATA as u64,
        name: "HvCallRetrieveDebugData",
        rings: Rings::KERNEL,
        handler: Some(retrieve_debug_data),
        summary: "take host bytes from the debug channel",
    },
    HypercallRow {
        number: HVCALL_RESET_DEBUG_SESSION as u64,
        name: "HvCallResetDebugSession",
        rings: Rings::KERNEL,
        handler: Some(reset_debug_session),
        summary: "report the debug channel's (empty) connection info",
    },
    HypercallRow {
        number: HV_EXT_CALL_QUERY_CAPABILITIES as u64,
        name: "HvExtCallQueryCapabilities",
        rings: Rings::KERNEL,
        handler: Some(ext_query_capabilities),
        summary: "report the extended hypercalls available (none)",
    },
];
