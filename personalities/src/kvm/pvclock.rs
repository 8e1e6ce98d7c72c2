//! kvmclock arithmetic and the two guest structures it fills.
//!
//! The guest computes time as (`msr.rst`, `MSR_KVM_SYSTEM_TIME_NEW`; Linux
//! `arch/x86/include/asm/pvclock.h`, `pvclock_scale_delta` / `__pvclock_read_cycles`):
//!
//! ```text
//! delta = tsc - tsc_timestamp
//! delta = tsc_shift >= 0 ? delta << tsc_shift : delta >> -tsc_shift
//! time  = system_time + ((delta * tsc_to_system_mul) >> 32)
//! ```
//!
//! so the host's only job is to pick `tsc_to_system_mul`/`tsc_shift` for the TSC frequency
//! (Linux `arch/x86/kvm/x86.c`, `kvm_get_time_scale`) and a consistent
//! (`tsc_timestamp`, `system_time`) pair.

use std::sync::atomic::{fence, Ordering};

use polyvisor_core::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// Nanoseconds per second: the rate `system_time` counts at.
pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// A fixed-point TSC-to-nanoseconds conversion: `tsc_to_system_mul` and `tsc_shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeScale {
    /// `tsc_to_system_mul`: a 32.32 fraction, applied after the shift.
    pub mul: u32,
    /// `tsc_shift`: a left shift when positive, a right shift when negative.
    pub shift: i8,
}

impl TimeScale {
    /// The scale that turns ticks of `base_hz` into ticks of `scaled_hz`, as
    /// `kvm_get_time_scale(scaled_hz, base_hz, &shift, &mul)` computes it: shift `base_hz`
    /// right until it fits in 32 bits and is below twice `scaled_hz`, then left (or
    /// `scaled_hz` right) until it exceeds `scaled_hz`; the multiplier is
    /// `(scaled << 32) / base`, which is below 2^32 because `scaled < base`.
    ///
    /// `None` when either rate is zero (no conversion exists).
    pub fn new(scaled_hz: u64, base_hz: u64) -> Option<TimeScale> {
        if scaled_hz == 0 || base_hz == 0 {
            return None;
        }
        let mut shift: i32 = 0;
        let mut tps64 = base_hz;
        let mut scaled64 = scaled_hz;
        while tps64 > scaled64.saturating_mul(2) || tps64 & 0xffff_ffff_0000_0000 != 0 {
            tps64 >>= 1;
            shift -= 1;
        }
        let mut tps32 = tps64 as u32; // fits: the loop above cleared the high half
        while u64::from(tps32) <= scaled64 || scaled64 & 0xffff_ffff_0000_0000 != 0 {
            if scaled64 & 0xffff_ffff_0000_0000 != 0 || tps32 & 0x8000_0000 != 0 {
                scaled64 >>= 1;
            } else {
                tps32 <<= 1;
            }
            shift += 1;
        }
        // div_frac: (scaled64 << 32) / tps32; scaled64 < tps32 so the quotient fits 32 bits.
        let mul = (u128::from(scaled64) << 32)
            .checked_div(u128::from(tps32))
            .and_then(|q| u32::try_from(q).ok())?;
        Some(TimeScale { mul, shift: i8::try_from(shift).ok()? })
    }

    /// The conversion kvmclock needs for a TSC of `tsc_khz`: TSC ticks to nanoseconds.
    pub fn for_tsc_khz(tsc_khz: u64) -> Option<TimeScale> {
        TimeScale::new(NSEC_PER_SEC, tsc_khz.checked_mul(1000)?)
    }

    /// `pvclock_scale_delta`: shift first, then the 64x32 multiply keeping bits 95:32.
    pub fn scale(self, delta: u64) -> u64 {
        let shifted = match self.shift {
            s if s >= 0 => delta.checked_shl(u32::from(s.unsigned_abs())).unwrap_or(0),
            s => delta.checked_shr(u32::from(s.unsigned_abs())).unwrap_or(0),
        };
        // As the guest's `mulq; shrd $32`: the low 64 bits of the 96-bit product >> 32.
        ((u128::from(shifted) * u128::from(self.mul)) >> 32) as u64
    }
}

/// A (TSC, kvmclock nanoseconds) pair taken at one instant. All vCPUs share one so that
/// readings on different vCPUs agree (KVM's "master clock", `pvclock_update_vm_gtod_copy`
/// in `x86.c`), which is what `PVCLOCK_TSC_STABLE_BIT` promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReference {
    /// The guest TSC at the reference instant.
    pub tsc: u64,
    /// kvmclock time (nanoseconds since the VM started) at the reference instant.
    pub ns: u64,
}

impl ClockReference {
    /// kvmclock time at guest TSC `tsc`, as the guest would compute it.
    pub fn at(self, scale: TimeScale, tsc: u64) -> u64 {
        self.ns.wrapping_add(scale.scale(tsc.saturating_sub(self.tsc)))
    }
}

/// `struct pvclock_vcpu_time_info` (`pvclock-abi.h`, `msr.rst`): 32 packed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PvclockVcpuTimeInfo {
    /// `version`: odd while an update is in progress.
    pub version: u32,
    /// `tsc_timestamp`.
    pub tsc_timestamp: u64,
    /// `system_time`, nanoseconds.
    pub system_time: u64,
    /// `tsc_to_system_mul`.
    pub tsc_to_system_mul: u32,
    /// `tsc_shift`.
    pub tsc_shift: i8,
    /// `flags` (`PVCLOCK_*`).
    pub flags: u8,
}

impl PvclockVcpuTimeInfo {
    /// Size of the structure in guest memory.
    pub const SIZE: usize = 32;

    /// The guest layout: version @0, pad0 @4, tsc_timestamp @8, system_time @16,
    /// tsc_to_system_mul @24, tsc_shift @28, flags @29, pad @30.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, 0, &self.version.to_le_bytes());
        put(&mut b, 8, &self.tsc_timestamp.to_le_bytes());
        put(&mut b, 16, &self.system_time.to_le_bytes());
        put(&mut b, 24, &self.tsc_to_system_mul.to_le_bytes());
        put(&mut b, 28, &self.tsc_shift.to_le_bytes());
        put(&mut b, 29, &[self.flags]);
        b
    }

    /// Parses the guest layout.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        PvclockVcpuTimeInfo {
            version: u32::from_le_bytes(take(b, 0)),
            tsc_timestamp: u64::from_le_bytes(take(b, 8)),
            system_time: u64::from_le_bytes(take(b, 16)),
            tsc_to_system_mul: u32::from_le_bytes(take(b, 24)),
            tsc_shift: i8::from_le_bytes(take(b, 28)),
            flags: u8::from_le_bytes(take(b, 29)),
        }
    }

    /// What a guest reading this structure computes at TSC `tsc`.
    pub fn guest_time(&self, tsc: u64) -> u64 {
        let scale = TimeScale { mul: self.tsc_to_system_mul, shift: self.tsc_shift };
        self.system_time.wrapping_add(scale.scale(tsc.wrapping_sub(self.tsc_timestamp)))
    }
}

/// `struct pvclock_wall_clock` (`pvclock-abi.h`, `msr.rst`): 12 packed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PvclockWallClock {
    /// `version`: odd while an update is in progress.
    pub version: u32,
    /// `sec`: wall-clock seconds at kvmclock time zero (Linux stores it as u32: "overflow
    /// in 2106").
    pub sec: u32,
    /// `nsec`.
    pub nsec: u32,
}

impl PvclockWallClock {
    /// Size of the structure in guest memory.
    pub const SIZE: usize = 12;

    /// The guest layout.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, 0, &self.version.to_le_bytes());
        put(&mut b, 4, &self.sec.to_le_bytes());
        put(&mut b, 8, &self.nsec.to_le_bytes());
        b
    }

    /// Parses the guest layout.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        PvclockWallClock {
            version: u32::from_le_bytes(take(b, 0)),
            sec: u32::from_le_bytes(take(b, 4)),
            nsec: u32::from_le_bytes(take(b, 8)),
        }
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn take<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = buf.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// A guest structure could not be read or written (its address is not guest RAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAddress;

/// Publishes `bytes` (at most 32; the first four are the version field) at `gpa` with the
/// version protocol KVM uses (`kvm_setup_guest_pvclock` / `kvm_write_wall_clock` in
/// `x86.c`): read the guest's version, make it even if it is junk, write it odd, write the
/// structure, write it even again. Returns the final (even) version.
pub fn publish(memory: &GuestMemoryMmap, gpa: u64, bytes: &mut [u8]) -> Result<u32, BadAddress> {
    let addr = GuestAddress(gpa);
    // The whole structure must be guest RAM before anything is written.
    let mut buf = [0u8; PvclockVcpuTimeInfo::SIZE];
    let probe = buf.get_mut(..bytes.len()).ok_or(BadAddress)?;
    memory.read_slice(probe, addr).map_err(|_| BadAddress)?;
    let mut version = u32::from_le_bytes(take(probe, 0));
    if version & 1 != 0 {
        version = version.wrapping_add(1); // first write over junk
    }
    let odd = version.wrapping_add(1);
    let even = odd.wrapping_add(1);
    memory.write_slice(&odd.to_le_bytes(), addr).map_err(|_| BadAddress)?;
    fence(Ordering::Release);
    put(bytes, 0, &odd.to_le_bytes());
    memory.write_slice(bytes, addr).map_err(|_| BadAddress)?;
    fence(Ordering::Release);
    memory.write_slice(&even.to_le_bytes(), addr).map_err(|_| BadAddress)?;
    Ok(even)
}

/// Reads the `flags` byte of a guest `pvclock_vcpu_time_info`, if the address is RAM.
pub fn guest_flags(memory: &GuestMemoryMmap, gpa: u64) -> Option<u8> {
    let addr = GuestAddress(gpa).0.checked_add(29)?;
    memory.read_obj::<u8>(GuestAddress(addr)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyvisor_core::testing::memory;
    use proptest::prelude::*;

    /// Nanoseconds a guest computes for `ticks` TSC ticks at `tsc_khz`, against the truth.
    fn ppm_error(tsc_khz: u64, ticks: u64) -> f64 {
        let scale = TimeScale::for_tsc_khz(tsc_khz).unwrap();
        let got = scale.scale(ticks) as f64;
        let want = ticks as f64 * 1e6 / tsc_khz as f64;
        ((got - want) / want).abs() * 1e6
    }

    #[test]
    fn kvm_scales_for_common_frequencies() {
        // Worked by hand from kvm_get_time_scale: 1 GHz needs one left shift and 1/2;
        // 2.5 GHz one right shift and 0.8; 3 GHz one right shift and 2/3.
        assert_eq!(
            TimeScale::for_tsc_khz(1_000_000),
            Some(TimeScale { mul: 0x8000_0000, shift: 1 })
        );
        assert_eq!(
            TimeScale::for_tsc_khz(2_500_000),
            Some(TimeScale { mul: 0xcccc_cccc, shift: -1 })
        );
        assert_eq!(
            TimeScale::for_tsc_khz(3_000_000),
            Some(TimeScale { mul: 0xaaaa_aaaa, shift: -1 })
        );
    }

    #[test]
    fn scaled_time_is_within_one_ppm() {
        for khz in [
            1_000_000,
            2_500_000,
            3_000_000,
            1_000,
            33_333,
            999_999,
            2_099_999,
            4_700_000,
            10_000_000,
            100_000_000,
        ] {
            let hz = khz * 1000;
            for seconds in [1, 60, 3600, 86_400] {
                let err = ppm_error(khz, hz * seconds);
                assert!(err < 1.0, "{khz} kHz over {seconds} s: {err} ppm");
            }
        }
    }

    #[test]
    fn exact_for_one_gigahertz() {
        let s = TimeScale::for_tsc_khz(1_000_000).unwrap();
        for t in [0, 1, 999, 1_000_000_007, u64::MAX >> 2] {
            assert_eq!(s.scale(t), t);
        }
    }

    #[test]
    fn zero_rates_have_no_scale() {
        assert_eq!(TimeScale::new(NSEC_PER_SEC, 0), None);
        assert_eq!(TimeScale::new(0, 1), None);
        assert_eq!(TimeScale::for_tsc_khz(u64::MAX), None, "kHz * 1000 overflows");
    }

    #[test]
    fn extreme_rates_still_give_a_scale() {
        for (scaled, base) in [(1, u64::MAX), (u64::MAX, 1), (u64::MAX, u64::MAX), (1, 1)] {
            let s = TimeScale::new(scaled, base).unwrap();
            // The guest's formula never panics on any delta.
            let _ = s.scale(u64::MAX);
        }
    }

    proptest! {
        #[test]
        fn scale_is_monotonic(khz in 1_000u64..20_000_000, a in any::<u64>(), b in any::<u64>()) {
            let s = TimeScale::for_tsc_khz(khz).unwrap();
            let (lo, hi) = if a <= b { (a >> 8, b >> 8) } else { (b >> 8, a >> 8) };
            prop_assert!(s.scale(lo) <= s.scale(hi));
        }

        #[test]
        fn structures_round_trip(version in any::<u32>(), tsc in any::<u64>(), sys in any::<u64>(),
                                 mul in any::<u32>(), shift in any::<i8>(), flags in any::<u8>()) {
            let info = PvclockVcpuTimeInfo { version, tsc_timestamp: tsc, system_time: sys,
                                             tsc_to_system_mul: mul, tsc_shift: shift, flags };
            prop_assert_eq!(PvclockVcpuTimeInfo::from_bytes(&info.to_bytes()), info);
            let wc = PvclockWallClock { version, sec: mul, nsec: version ^ mul };
            prop_assert_eq!(PvclockWallClock::from_bytes(&wc.to_bytes()), wc);
        }
    }

    #[test]
    fn layout_matches_pvclock_abi() {
        let b = PvclockVcpuTimeInfo {
            version: 0x0403_0201,
            tsc_timestamp: 0x1817_1615_1413_1211,
            system_time: 0x2827_2625_2423_2221,
            tsc_to_system_mul: 0x3433_3231,
            tsc_shift: -2,
            flags: 0x5a,
        }
        .to_bytes();
        assert_eq!(&b[0..4], &[1, 2, 3, 4]);
        assert_eq!(&b[4..8], &[0; 4], "pad0");
        assert_eq!(b[8], 0x11);
        assert_eq!(b[16], 0x21);
        assert_eq!(&b[24..28], &[0x31, 0x32, 0x33, 0x34]);
        assert_eq!(b[28], 0xfe);
        assert_eq!(b[29], 0x5a);
        assert_eq!(&b[30..32], &[0, 0], "pad");
    }

    #[test]
    fn publish_follows_the_version_protocol() {
        let mem = memory(0x2000);
        let mut bytes = PvclockWallClock { version: 0, sec: 7, nsec: 9 }.to_bytes();
        assert_eq!(publish(&mem, 0x100, &mut bytes), Ok(2));
        assert_eq!(publish(&mem, 0x100, &mut bytes), Ok(4));
        // An odd version left by the guest is junk: step over it.
        mem.write_obj(7u32, GuestAddress(0x100)).unwrap();
        assert_eq!(publish(&mem, 0x100, &mut bytes), Ok(10));
        let mut raw = [0u8; PvclockWallClock::SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x100)).unwrap();
        let wc = PvclockWallClock::from_bytes(&raw);
        assert_eq!((wc.version, wc.sec, wc.nsec), (10, 7, 9));
    }

    #[test]
    fn publish_refuses_addresses_outside_ram_without_writing() {
        let mem = memory(0x1000);
        mem.write_obj(0x5555_5555u32, GuestAddress(0xff8)).unwrap();
        let mut bytes = [0u8; PvclockWallClock::SIZE];
        for gpa in [0xff8, 0x1000, u64::MAX - 3, u64::MAX] {
            assert_eq!(publish(&mem, gpa, &mut bytes), Err(BadAddress), "{gpa:#x}");
        }
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0xff8)).unwrap(),
            0x5555_5555,
            "a straddling structure is not half written"
        );
        assert_eq!(guest_flags(&mem, u64::MAX), None);
    }
}
