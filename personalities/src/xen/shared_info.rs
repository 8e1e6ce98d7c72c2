//! The shared_info page and `vcpu_info` areas (`xen/include/public/xen.h`,
//! `xen/include/public/arch-x86/xen.h`), kept in guest RAM.
//!
//! Layouts, native (64-bit) and compat (32-bit) — `xen_ulong_t` is 8 or 4 bytes:
//! - `struct vcpu_info` (64 bytes both): `evtchn_upcall_pending` u8 @0, `evtchn_upcall_mask`
//!   u8 @1, `evtchn_pending_sel` @8 (native) / @4 (compat), `arch` @16 / @8, `time` @32.
//! - `struct vcpu_time_info` (32 bytes): `version` @0, `tsc_timestamp` @8, `system_time` @16,
//!   `tsc_to_system_mul` @24, `tsc_shift` (i8) @28, `flags` @29.
//! - `struct shared_info`: `vcpu_info[32]` @0; `evtchn_pending` @2048 (512 / 128 bytes),
//!   `evtchn_mask` @2560 / @2176; `wc_version` @3072 / @2304, `wc_sec` +4, `wc_nsec` +8;
//!   `wc_sec_hi` @3084 (native) / `arch.wc_sec_hi` @2340 (compat, after six 4-byte arch
//!   fields).
//!
//! Time follows Xen's HVM `update_vcpu_system_time`: system time is nanoseconds since the VM
//! started ([`Platform::monotonic_ns`]), sampled together with the guest TSC, scaled by
//! `set_time_scale` (`xen/arch/x86/time.c`). The wallclock is the host's time at system
//! time 0 (`update_domain_wallclock_time`).

use polyvisor_core::{GuestMemoryMmap, Platform};
use vm_memory::{Bytes, GuestAddress};

use super::guest::le;

/// `XEN_LEGACY_MAX_VCPUS`: vCPUs with a `vcpu_info` slot in shared_info.
pub const LEGACY_MAX_VCPUS: u32 = 32;
/// `sizeof(struct vcpu_info)` on x86, both layouts.
pub const VCPU_INFO_LEN: u64 = 64;
/// Offset of `time` in `vcpu_info`.
const TIME_OFFSET: u64 = 32;
/// Offset of `evtchn_upcall_mask` in `vcpu_info`.
pub const UPCALL_MASK_OFFSET: u64 = 1;
/// `XEN_PVCLOCK_TSC_STABLE_BIT`.
const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;

/// Where the wallclock fields sit: `(wc_version, wc_sec_hi)` offsets; `wc_sec` and `wc_nsec`
/// follow `wc_version`.
const fn wallclock_offsets(compat: bool) -> (u64, u64) {
    if compat {
        (2304, 2340)
    } else {
        (3072, 3084)
    }
}

/// `struct time_scale` for a tick rate: `(tsc_to_system_mul, tsc_shift)`, Xen's
/// `set_time_scale`. `None` for a zero rate.
pub fn time_scale(ticks_per_sec: u64) -> Option<(u32, i8)> {
    const NS: u64 = 1_000_000_000;
    if ticks_per_sec == 0 {
        return None;
    }
    let mut tps64 = ticks_per_sec;
    let mut shift: i8 = 0;
    while tps64 > NS * 2 {
        tps64 >>= 1;
        shift -= 1;
    }
    let mut tps32 = u32::try_from(tps64).ok()?;
    while tps32 <= NS as u32 {
        tps32 <<= 1;
        shift += 1;
    }
    // div_frac(NS, tps32): (NS << 32) / tps32, which fits because NS < tps32.
    let mul = u32::try_from((NS << 32) / u64::from(tps32)).ok()?;
    Some((mul, shift))
}

/// What the time fields are filled from.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Guest TSC frequency in kHz, if known.
    pub tsc_khz: Option<u64>,
    /// Whether the TSC is constant and invariant (sets `XEN_PVCLOCK_TSC_STABLE_BIT`).
    pub stable_tsc: bool,
}

/// The guest TSC and the system time read together: of three tries (TSC, clock, TSC), the one
/// whose two TSC reads are closest, with the TSC halfway between them. A thread preempted
/// between two reads would otherwise pair a TSC with a later time, and every pvclock reading
/// would be off by the delay.
pub fn sample_tsc_and_time(platform: &dyn Platform) -> (u64, u64) {
    let mut best: Option<(u64, u64, u64)> = None;
    for _ in 0..3 {
        let before = platform.guest_tsc();
        let ns = platform.monotonic_ns();
        let after = platform.guest_tsc();
        let gap = after.wrapping_sub(before);
        if best.is_none_or(|(g, _, _)| gap < g) {
            best = Some((gap, before.wrapping_add(gap / 2), ns));
        }
    }
    best.map_or((0, 0), |(_, tsc, ns)| (tsc, ns))
}

/// Writes a fresh `vcpu_time_info` at `gpa` with the version protocol (odd while updating).
pub fn write_time_info(memory: &GuestMemoryMmap, platform: &dyn Platform, clock: Clock, gpa: u64) {
    let at = |off: u64| GuestAddress(gpa.wrapping_add(off));
    let version = memory.read_obj::<u32>(at(0)).unwrap_or(0);
    let odd = version.wrapping_add(1) | 1;
    let (mul, shift) =
        clock.tsc_khz.and_then(|khz| time_scale(khz.saturating_mul(1000))).unwrap_or((0, 0));
    let mut t = [0u8; 32];
    le::put(&mut t, 0, &odd.to_le_bytes());
    let (tsc, ns) = sample_tsc_and_time(platform);
    le::put(&mut t, 8, &tsc.to_le_bytes());
    le::put(&mut t, 16, &ns.to_le_bytes());
    le::put(&mut t, 24, &mul.to_le_bytes());
    le::put(&mut t, 28, &shift.to_le_bytes());
    let flags = if clock.stable_tsc { XEN_PVCLOCK_TSC_STABLE_BIT } else { 0 };
    le::put(&mut t, 29, &[flags]);
    // The area was checked by the caller; a failure here leaves the guest's old contents.
    let _ = memory.write_obj(odd, at(0));
    let _ = memory.write_slice(&t, at(0));
    let _ = memory.write_obj(odd.wrapping_add(1), at(0));
}

/// Refreshes the time in the `vcpu_info` at `gpa`.
pub fn write_vcpu_time(memory: &GuestMemoryMmap, platform: &dyn Platform, clock: Clock, gpa: u64) {
    write_time_info(memory, platform, clock, gpa.wrapping_add(TIME_OFFSET));
}

/// The host wall-clock time at system time 0: `(seconds, nanoseconds)` since the epoch.
pub fn boot_wallclock(platform: &dyn Platform) -> (u64, u32) {
    const NS: u128 = 1_000_000_000;
    let (sec, nsec) = platform.wall_clock();
    let now = u128::from(sec.max(0).unsigned_abs()) * NS + u128::from(nsec);
    let boot = now.saturating_sub(u128::from(platform.monotonic_ns()));
    (u64::try_from(boot / NS).unwrap_or(u64::MAX), u32::try_from(boot % NS).unwrap_or(0))
}

/// Writes the wallclock fields of the shared_info page at `base` in the given layout.
pub fn write_wallclock(memory: &GuestMemoryMmap, platform: &dyn Platform, base: u64, compat: bool) {
    let (wc_version, wc_sec_hi) = wallclock_offsets(compat);
    let at = |off: u64| GuestAddress(base.wrapping_add(off));
    let (sec, nsec) = boot_wallclock(platform);
    let version = memory.read_obj::<u32>(at(wc_version)).unwrap_or(0);
    let odd = version.wrapping_add(1) | 1;
    let _ = memory.write_obj(odd, at(wc_version));
    let _ = memory.write_obj(sec as u32, at(wc_version + 4));
    let _ = memory.write_obj(nsec, at(wc_version + 8));
    let _ = memory.write_obj((sec >> 32) as u32, at(wc_sec_hi));
    let _ = memory.write_obj(odd.wrapping_add(1), at(wc_version));
}

/// Fills a new `vcpu_info` area at `gpa` as Xen's `vcpu_info_populate` and
/// `map_guest_area` do: a copy of the old area (or zeros with the upcall masked when there
/// was none), every event selector bit and the upcall flag set ("the domain will get a
/// spurious event, but it can cope"), then fresh time.
pub fn populate_vcpu_info(
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    clock: Clock,
    gpa: u64,
    old: Option<u64>,
    compat: bool,
) {
    let mut info = [0u8; VCPU_INFO_LEN as usize];
    match old {
        Some(old) => {
            if memory.read_slice(&mut info, GuestAddress(old)).is_err() {
                info = [0u8; VCPU_INFO_LEN as usize];
                le::put(&mut info, UPCALL_MASK_OFFSET as usize, &[1]);
            }
        }
        None => le::put(&mut info, UPCALL_MASK_OFFSET as usize, &[1]),
    }
    if compat {
        le::put(&mut info, 4, &u32::MAX.to_le_bytes());
    } else {
        le::put(&mut info, 8, &u64::MAX.to_le_bytes());
    }
    le::put(&mut info, 0, &[1]);
    let _ = memory.write_slice(&info, GuestAddress(gpa));
    write_vcpu_time(memory, platform, clock, gpa);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Xen's conversion: ns = ((ticks << shift) * mul) >> 32.
    fn to_ns(ticks: u64, (mul, shift): (u32, i8)) -> u64 {
        let t = if shift >= 0 { ticks << shift } else { ticks >> -shift };
        ((u128::from(t) * u128::from(mul)) >> 32) as u64
    }

    #[test]
    fn time_scale_matches_xen() {
        // 1 GHz: tps32 is doubled once to 2e9, mul = 2^31.
        assert_eq!(time_scale(1_000_000_000), Some((0x8000_0000, 1)));
        // 3 GHz: halved to 1.5e9, mul = 2/3 * 2^32.
        assert_eq!(time_scale(3_000_000_000), Some((0xaaaa_aaaa, -1)));
        assert_eq!(time_scale(0), None);
        for hz in
            [1_000_000u64, 25_000_000, 999_999_999, 2_000_000_000, 2_899_999_000, 4_700_000_000]
        {
            let scale = time_scale(hz).unwrap();
            let ns = to_ns(hz, scale);
            assert!(
                (999_999_000..=1_000_000_000).contains(&ns),
                "{hz} Hz: one second of ticks is {ns} ns ({scale:?})"
            );
        }
    }

    #[test]
    fn wallclock_offsets_per_layout() {
        assert_eq!(wallclock_offsets(false), (3072, 3084));
        assert_eq!(wallclock_offsets(true), (2304, 2340));
    }
}
