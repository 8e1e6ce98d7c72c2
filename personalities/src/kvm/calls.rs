//! The hypercall table: one row per number of `include/uapi/linux/kvm_para.h`, every row
//! kernel-only (KVM answers any CPL != 0 with `-KVM_EPERM`), and the handlers.
//!
//! As KVM does with `KVM_CAP_ENFORCE_PV_FEATURE_CPUID` (`guest_pv_has` in
//! `kvm_emulate_hypercall`), a call whose feature bit the guest was not shown answers
//! `-KVM_ENOSYS`.

use polyvisor_config::KvmFeature;
use polyvisor_core::{Call, CpuMode, HypercallRow, Reply, Rings};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::abi;
use super::codec::error;
use super::gpa_map::GpaAttributes;
use super::KvmPersonality;

type Row = HypercallRow<KvmPersonality>;

/// The table, sorted by number.
pub(super) const TABLE: &[Row] = &[
    Row {
        number: abi::KVM_HC_VAPIC_POLL_IRQ,
        name: "KVM_HC_VAPIC_POLL_IRQ",
        rings: Rings::KERNEL,
        handler: Some(vapic_poll_irq),
        summary: "exit so pending interrupts are checked on re-entry; returns 0",
    },
    Row {
        number: abi::KVM_HC_MMU_OP,
        name: "KVM_HC_MMU_OP",
        rings: Rings::KERNEL,
        handler: None,
        summary: "deprecated and removed from x86 KVM: -KVM_ENOSYS",
    },
    Row {
        number: abi::KVM_HC_FEATURES,
        name: "KVM_HC_FEATURES",
        rings: Rings::KERNEL,
        handler: None,
        summary: "PowerPC only (x86 enumerates with CPUID): -KVM_ENOSYS",
    },
    Row {
        number: abi::KVM_HC_PPC_MAP_MAGIC_PAGE,
        name: "KVM_HC_PPC_MAP_MAGIC_PAGE",
        rings: Rings::KERNEL,
        handler: None,
        summary: "PowerPC only: -KVM_ENOSYS",
    },
    Row {
        number: abi::KVM_HC_KICK_CPU,
        name: "KVM_HC_KICK_CPU",
        rings: Rings::KERNEL,
        handler: Some(kick_cpu),
        summary: "wake the vCPU with APIC id a1 from HLT, then yield to it; returns 0",
    },
    Row {
        number: abi::KVM_HC_MIPS_GET_CLOCK_FREQ,
        name: "KVM_HC_MIPS_GET_CLOCK_FREQ",
        rings: Rings::KERNEL,
        handler: None,
        summary: "MIPS only: -KVM_ENOSYS",
    },
    Row {
        number: abi::KVM_HC_MIPS_EXIT_VM,
        name: "KVM_HC_MIPS_EXIT_VM",
        rings: Rings::KERNEL,
        handler: None,
        summary: "MIPS only: -KVM_ENOSYS",
    },
    Row {
        number: abi::KVM_HC_MIPS_CONSOLE_OUTPUT,
        name: "KVM_HC_MIPS_CONSOLE_OUTPUT",
        rings: Rings::KERNEL,
        handler: None,
        summary: "MIPS only: -KVM_ENOSYS",
    },
    Row {
        number: abi::KVM_HC_CLOCK_PAIRING,
        name: "KVM_HC_CLOCK_PAIRING",
        rings: Rings::KERNEL,
        handler: Some(clock_pairing),
        summary: "write host wall clock and the guest TSC of one instant to struct kvm_clock_pairing at a0",
    },
    Row {
        number: abi::KVM_HC_SEND_IPI,
        name: "KVM_HC_SEND_IPI",
        rings: Rings::KERNEL,
        handler: Some(send_ipi),
        summary: "send the ICR a3 to the APIC ids in bitmap a0:a1 from a2; returns how many took it",
    },
    Row {
        number: abi::KVM_HC_SCHED_YIELD,
        name: "KVM_HC_SCHED_YIELD",
        rings: Rings::KERNEL,
        handler: Some(sched_yield),
        summary: "yield to the vCPU with APIC id a0; returns 0",
    },
    Row {
        number: abi::KVM_HC_MAP_GPA_RANGE,
        name: "KVM_HC_MAP_GPA_RANGE",
        rings: Rings::KERNEL,
        handler: Some(map_gpa_range),
        summary: "record attributes a2 for a1 4K pages at GPA a0; returns 0",
    },
];

/// `KVM_HC_VAPIC_POLL_IRQ`: the exit itself is the point; pending interrupts are injected
/// on re-entry. Returns 0.
fn vapic_poll_irq(_: &KvmPersonality, _: &mut Call<'_>) -> Reply {
    Reply::Value(0)
}

/// `KVM_HC_KICK_CPU` (`kvm_pv_kick_cpu_op` + `kvm_sched_yield` in `x86.c`): a0 is
/// reserved flags (ignored, as KVM ignores it), a1 the APIC id. KVM passes a1 as `int` to
/// the kick (low 32 bits) and as `unsigned long` to the yield. The kick is KVM's
/// `APIC_DM_REMRD` delivery, which wakes a halted vCPU or makes its next HLT return at once;
/// here it is [`Platform::wake`](polyvisor_core::Platform::wake). The yield is skipped for an
/// unknown target or the caller itself. An unknown APIC id is not an error: 0, as in KVM.
fn kick_cpu(kvm: &KvmPersonality, call: &mut Call<'_>) -> Reply {
    if !kvm.has(KvmFeature::PvUnhalt) {
        return error(abi::KVM_ENOSYS);
    }
    let apic_id = call.arg(1);
    let platform = call.platform;
    // `kvm_pv_kick_cpu_op(struct kvm *kvm, int apicid)`: the low 32 bits.
    if let Some(target) = platform.vcpu_by_apic_id(apic_id as u32) {
        let _ = platform.wake(target);
    }
    yield_to(call, apic_id);
    Reply::Value(0)
}

/// `kvm_sched_yield`: yield to the vCPU with `apic_id`, unless it is unknown or the caller.
fn yield_to(call: &Call<'_>, apic_id: u64) {
    let target = u32::try_from(apic_id).ok().and_then(|id| call.platform.vcpu_by_apic_id(id));
    if let Some(target) = target.filter(|t| *t != call.vcpu.vcpu) {
        call.platform.yield_now(call.vcpu.vcpu, Some(target));
    }
}

/// `KVM_HC_SCHED_YIELD`: a0 is the APIC id of a preempted vCPU. Returns 0 whether or not
/// there was anyone to yield to.
fn sched_yield(kvm: &KvmPersonality, call: &mut Call<'_>) -> Reply {
    if !kvm.has(KvmFeature::PvSchedYield) {
        return error(abi::KVM_ENOSYS);
    }
    yield_to(call, call.arg(0));
    Reply::Value(0)
}

/// Size of `struct kvm_clock_pairing`: s64 sec, s64 nsec, u64 tsc, u32 flags, u32 pad[9].
const KVM_CLOCK_PAIRING_SIZE: usize = 64;

/// `KVM_HC_CLOCK_PAIRING` (`kvm_pv_clock_pairing` in `x86.c`): a0 the GPA of
/// `struct kvm_clock_pairing`, a1 the clock type. Only `KVM_CLOCK_PAIRING_WALLCLOCK`;
/// `-KVM_EOPNOTSUPP` for another type or when the host TSC is not stable; `-KVM_EFAULT`
/// when the structure is not guest RAM. The TSC is read on both sides of the wall clock and
/// the midpoint paired with it.
fn clock_pairing(kvm: &KvmPersonality, call: &mut Call<'_>) -> Reply {
    if call.arg(1) != abi::KVM_CLOCK_PAIRING_WALLCLOCK || !kvm.stable_tsc {
        return error(abi::KVM_EOPNOTSUPP);
    }
    let platform = call.platform;
    let before = platform.guest_tsc();
    let (sec, nsec) = platform.wall_clock();
    let after = platform.guest_tsc();
    let tsc = before.wrapping_add(after.wrapping_sub(before) / 2);
    let mut s = [0u8; KVM_CLOCK_PAIRING_SIZE];
    for (at, bytes) in
        [(0, sec.to_le_bytes()), (8, i64::from(nsec).to_le_bytes()), (16, tsc.to_le_bytes())]
    {
        if let Some(dst) = s.get_mut(at..at + 8) {
            dst.copy_from_slice(&bytes);
        }
    }
    // flags (offset 24) and pad stay 0. All 64 bytes must be RAM before anything is written:
    // `write_slice` would write the part that fits and then fail.
    let at = GuestAddress(call.arg(0));
    if !GuestMemoryBackend::check_range(call.memory, at, KVM_CLOCK_PAIRING_SIZE) {
        return error(abi::KVM_EFAULT);
    }
    match call.memory.write_slice(&s, at) {
        Ok(()) => Reply::Value(0),
        Err(_) => error(abi::KVM_EFAULT),
    }
}

/// `KVM_HC_SEND_IPI` (`kvm_pv_send_ipi` / `__pv_send_ipi` in `arch/x86/kvm/lapic.c`).
///
/// a0/a1 are two bitmaps of APIC ids: bit i of a0 is APIC id a2 + i, bit i of a1 is
/// a2 + cluster + i, where cluster is 64 in 64-bit mode and 32 otherwise (the callers'
/// `unsigned long`). a2 is `u32` in KVM (so truncated even for 64-bit callers) and
/// a2 + cluster wraps in 32 bits. a3 is the ICR: a logical destination (bit 11) or any
/// shorthand (bits 19:18) is `-KVM_EINVAL`. Each addressed vCPU gets the ICR's delivery as
/// `__apic_accept_irq` would:
///
/// * fixed and lowest priority: the vector as an external interrupt
///   ([`Platform::interrupt`](polyvisor_core::Platform::interrupt)), except a level-triggered
///   ICR with the level deasserted, which KVM drops;
/// * `APIC_DM_REMRD`: a kick ([`Platform::wake`](polyvisor_core::Platform::wake));
/// * NMI, SMI, INIT, SIPI, ExtINT: not delivered (the platform has no such effects) and not
///   counted.
///
/// Returns the number of vCPUs that took the interrupt.
fn send_ipi(kvm: &KvmPersonality, call: &mut Call<'_>) -> Reply {
    if !kvm.has(KvmFeature::PvSendIpi) {
        return error(abi::KVM_ENOSYS);
    }
    let icr = call.arg(3);
    if icr & (abi::APIC_DEST_MASK | abi::APIC_SHORT_MASK) != 0 {
        return error(abi::KVM_EINVAL);
    }
    // `int cluster_size = op_64_bit ? 64 : 32;`
    let cluster: u32 = if call.vcpu.mode == CpuMode::Long64 { 64 } else { 32 };
    // `u32 min`: the high half of a2 is dropped even for a 64-bit caller.
    let min = call.arg(2) as u32;
    let low = deliver(call, call.arg(0), min, icr);
    let high = deliver(call, call.arg(1), min.wrapping_add(cluster), icr);
    Reply::Value(low.saturating_add(high))
}

/// Delivers `icr` to every APIC id `base + i` for the set bits i of `bitmap`.
fn deliver(call: &Call<'_>, bitmap: u64, base: u32, icr: u64) -> u64 {
    let platform = call.platform;
    let mut count = 0u64;
    let mut bits = bitmap;
    while bits != 0 {
        let i = bits.trailing_zeros();
        bits &= bits - 1;
        let Some(target) = base.checked_add(i).and_then(|id| platform.vcpu_by_apic_id(id)) else {
            continue;
        };
        let accepted = match icr & abi::APIC_MODE_MASK {
            abi::APIC_DM_FIXED | abi::APIC_DM_LOWEST => {
                let level_deasserted =
                    icr & abi::APIC_INT_LEVELTRIG != 0 && icr & abi::APIC_INT_ASSERT == 0;
                !level_deasserted
                    && platform.interrupt(target, (icr & abi::APIC_VECTOR_MASK) as u8).is_ok()
            }
            abi::APIC_DM_REMRD => platform.wake(target).is_ok(),
            // APIC_DM_SMI, APIC_DM_NMI, APIC_DM_INIT, APIC_DM_STARTUP, APIC_DM_EXTINT.
            _ => false,
        };
        count += u64::from(accepted);
    }
    count
}

/// `KVM_HC_MAP_GPA_RANGE`: a0 the GPA, a1 the number of 4K pages, a2 the attributes.
///
/// KVM itself refuses (`-KVM_EINVAL`) a GPA that is not 4K-aligned, a zero count and a
/// page count whose end wraps (`kvm_emulate_hypercall`); the rest it leaves to user space.
/// This user space also refuses, with `-KVM_EINVAL`: reserved attribute bits 63:5 or a
/// page-size encoding other than 0/1/2 (`hypercalls.rst`: "reserved (must be zero)"); a GPA
/// or length not aligned to the declared page size; a range that is not entirely guest RAM.
/// A range that would overflow the bounded map is `-KVM_E2BIG` and changes nothing.
fn map_gpa_range(kvm: &KvmPersonality, call: &mut Call<'_>) -> Reply {
    if !kvm.has(KvmFeature::HcMapGpaRange) {
        return error(abi::KVM_ENOSYS);
    }
    let (gpa, npages, raw_attrs) = (call.arg(0), call.arg(1), call.arg(2));
    match check_range(call, gpa, npages, raw_attrs) {
        Ok((end, attrs)) => match kvm.gpa_map.set(gpa, end, attrs) {
            Ok(()) => Reply::Value(0),
            Err(_) => error(abi::KVM_E2BIG),
        },
        Err(code) => error(code),
    }
}

/// Validates a `KVM_HC_MAP_GPA_RANGE` request; the exclusive end and the attributes.
fn check_range(
    call: &Call<'_>,
    gpa: u64,
    npages: u64,
    raw_attrs: u64,
) -> Result<(u64, GpaAttributes), u64> {
    let einval = abi::KVM_EINVAL;
    // KVM's own checks: `!PAGE_ALIGNED(gpa) || !npages || gfn + npages <= gfn`.
    let gfn = gpa / abi::PAGE_SIZE;
    if gpa & (abi::PAGE_SIZE - 1) != 0 || npages == 0 || gfn.checked_add(npages).is_none() {
        return Err(einval);
    }
    let attrs = GpaAttributes::from_raw(raw_attrs).ok_or(einval)?;
    let len = npages.checked_mul(abi::PAGE_SIZE).ok_or(einval)?;
    let end = gpa.checked_add(len).ok_or(einval)?;
    let page = attrs.page_size().ok_or(einval)?;
    // Page sizes are powers of two.
    let page_mask = page - 1;
    if gpa & page_mask != 0 || len & page_mask != 0 {
        return Err(einval);
    }
    let len = usize::try_from(len).map_err(|_| einval)?;
    if !GuestMemoryBackend::check_range(call.memory, GuestAddress(gpa), len) {
        return Err(einval);
    }
    Ok((end, attrs))
}
