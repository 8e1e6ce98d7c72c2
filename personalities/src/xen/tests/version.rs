//! `__HYPERVISOR_xen_version`: every sub-op, padding, both layouts, bad pointers and
//! guest-linear addresses.

use polyvisor_config::XenConfig;
use polyvisor_core::{PlatformError, Policy};

use crate::xen::abi::errno::*;
use crate::xen::testutil::{e, e32, Vm};
use crate::HostFacts;

const NR: u64 = 17;
const BUF: u64 = 0x4000;

/// Runs sub-op `cmd` with a buffer pre-filled with 0xAA; returns RAX and the buffer.
fn sub(vm: &Vm, cmd: u64, len: usize) -> (u64, Vec<u8>) {
    vm.fill(BUF, len + 64, 0xaa);
    let r = vm.rax64(NR, &[cmd, BUF]);
    (r, vm.read(BUF, len + 64))
}

fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(len, 0);
    v
}

#[test]
fn version() {
    assert_eq!(Vm::new().rax64(NR, &[0, 0]), 0x0004_0011);
    assert_eq!(Vm::version("4.21").rax64(NR, &[0]), 0x0004_0015);
    assert_eq!(Vm::version("65535.65535").rax32(NR, &[0]), 0xffff_ffff);
}

#[test]
fn extraversion_is_padded_to_16() {
    let (r, buf) = sub(&Vm::new(), 1, 16);
    assert_eq!(r, 0);
    assert_eq!(&buf[..16], &padded(".0", 16)[..]);
    assert!(buf[16..].iter().all(|b| *b == 0xaa), "exactly 16 bytes written");
    let config = XenConfig { extraversion: "-polyvisor.123".into(), ..XenConfig::default() };
    let vm = Vm::build(config, Policy::permissive(), HostFacts::nominal());
    let (_, buf) = sub(&vm, 1, 16);
    assert_eq!(&buf[..16], &padded("-polyvisor.123", 16)[..]);
}

#[test]
fn compile_info_layout() {
    let (r, buf) = sub(&Vm::new(), 2, 144);
    assert_eq!(r, 0);
    assert_eq!(&buf[..64], &padded("polyvisor", 64)[..], "compiler[64]");
    assert_eq!(&buf[64..80], &padded("polyvisor", 16)[..], "compile_by[16]");
    assert_eq!(&buf[80..112], &[0u8; 32][..], "compile_domain[32]");
    assert_eq!(&buf[112..144], &[0u8; 32][..], "compile_date[32]");
    assert!(buf[144..].iter().all(|b| *b == 0xaa));
}

#[test]
fn capabilities_and_changeset() {
    let vm = Vm::new();
    let (r, buf) = sub(&vm, 3, 1024);
    assert_eq!(r, 0);
    assert_eq!(&buf[..1024], &padded("hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ", 1024)[..]);
    assert!(buf[1024..].iter().all(|b| *b == 0xaa));
    let (r, buf) = sub(&vm, 4, 64);
    assert_eq!(r, 0);
    assert_eq!(&buf[..64], &padded("unavailable", 64)[..]);
    assert!(buf[64..].iter().all(|b| *b == 0xaa));
}

#[test]
fn platform_parameters_width_follows_caller() {
    let vm = Vm::new();
    vm.fill(BUF, 16, 0xaa);
    assert_eq!(vm.rax64(NR, &[5, BUF]), 0);
    assert_eq!(vm.read(BUF, 9), [0, 0, 0, 0, 0, 0, 0, 0, 0xaa]);
    vm.fill(BUF, 16, 0xaa);
    assert_eq!(vm.rax32(NR, &[5, BUF]), 0);
    assert_eq!(vm.read(BUF, 5), [0, 0, 0, 0, 0xaa]);
}

#[test]
fn get_features() {
    let vm = Vm::new();
    vm.write(BUF, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(vm.rax64(NR, &[6, BUF]), 0);
    assert_eq!(vm.u32_at(BUF), 0);
    // writable_page_tables, auto_translated_physmap, hvm_safe_pvclock (stable 1 GHz TSC),
    // not_direct_mapped.
    assert_eq!(vm.u32_at(BUF + 4), (1 << 0) | (1 << 2) | (1 << 9) | (1 << 16));
    // Without a known stable TSC the pvclock is not advertised.
    let host = HostFacts { stable_tsc: false, ..HostFacts::nominal() };
    let vm2 = Vm::build(XenConfig::default(), Policy::permissive(), host);
    vm2.write(BUF, &[0; 8]);
    assert_eq!(vm2.rax32(NR, &[6, BUF]), 0);
    assert_eq!(vm2.u32_at(BUF + 4), (1 << 0) | (1 << 2) | (1 << 16));
    // Only sub-map 0 exists; the buffer is left alone.
    vm.write(BUF, &[1, 0, 0, 0, 0x55, 0x55, 0x55, 0x55]);
    assert_eq!(vm.rax64(NR, &[6, BUF]), e(EINVAL));
    assert_eq!(vm.u32_at(BUF + 4), 0x5555_5555);
}

#[test]
fn pagesize_wants_a_null_argument() {
    let vm = Vm::new();
    assert_eq!(vm.rax64(NR, &[7, 0]), 4096);
    assert_eq!(vm.rax32(NR, &[7, 0]), 4096);
    assert_eq!(vm.rax64(NR, &[7, BUF]), e(EINVAL));
}

#[test]
fn guest_handle_is_sixteen_zero_bytes() {
    let (r, buf) = sub(&Vm::new(), 8, 16);
    assert_eq!(r, 0);
    assert_eq!(&buf[..16], &[0u8; 16]);
    assert!(buf[16..].iter().all(|b| *b == 0xaa));
}

#[test]
fn commandline_is_denied_to_a_domu() {
    let (r, buf) = sub(&Vm::new(), 9, 1024);
    assert_eq!(r, 0);
    assert_eq!(&buf[..9], b"<denied>\0");
    assert!(buf[9..].iter().all(|b| *b == 0xaa), "strlen + 1 bytes only");
}

#[test]
fn build_id_is_privileged() {
    let vm = Vm::new();
    vm.write(BUF, &64u32.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[10, BUF]), e(EPERM));
    assert_eq!(vm.rax64(NR, &[10, 0]), e(EPERM));
    assert_eq!(Vm::version("4.20").rax64(NR, &[10, 0]), e(EPERM));
}

#[test]
fn varbuf_sub_ops_exist_from_4_20() {
    let old = Vm::new();
    for cmd in 11..=14 {
        assert_eq!(old.rax64(NR, &[cmd, 0]), e(ENOSYS), "4.17 has no sub-op {cmd}");
    }
    let vm = Vm::version("4.20");
    // Size requests.
    assert_eq!(vm.rax64(NR, &[11, 0]), 2);
    assert_eq!(vm.rax64(NR, &[12, 0]), 46);
    assert_eq!(vm.rax64(NR, &[13, 0]), 11);
    assert_eq!(vm.rax64(NR, &[14, 0]), e(EPERM));
    // A buffer that fits gets the bytes, without NUL, after the length.
    vm.fill(BUF, 64, 0xaa);
    vm.write(BUF, &32u32.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[13, BUF]), 11);
    assert_eq!(&vm.read(BUF + 4, 12), b"unavailable\xaa");
    assert_eq!(vm.u32_at(BUF), 32, "len is not rewritten");
    // Too small.
    vm.write(BUF, &10u32.to_le_bytes());
    assert_eq!(vm.rax32(NR, &[13, BUF]), e32(ENOBUFS));
    vm.fill(BUF, 64, 0xaa);
    vm.write(BUF, &2u32.to_le_bytes());
    assert_eq!(vm.rax64(NR, &[11, BUF]), 2);
    assert_eq!(&vm.read(BUF + 4, 3), b".0\xaa");
    assert_eq!(vm.rax64(NR, &[11, 0x20_0000]), e(EFAULT));
}

#[test]
fn unknown_sub_ops_are_enosys() {
    let vm = Vm::new();
    for cmd in [15, 16, 0x7fff_ffff, 0xffff_ffff] {
        assert_eq!(vm.rax64(NR, &[cmd, BUF]), e(ENOSYS), "{cmd}");
    }
}

#[test]
fn bad_pointers_are_efault() {
    let vm = Vm::new();
    // Past the end of RAM, straddling it, and wrapping the address space.
    for ptr in [0x20_0000, 0x20_0000 - 4, u64::MAX - 3] {
        for cmd in [1, 2, 3, 4, 5, 6, 8, 9] {
            assert_eq!(vm.rax64(NR, &[cmd, ptr]), e(EFAULT), "cmd {cmd} ptr {ptr:#x}");
        }
    }
    // A 32-bit caller's buffer may not wrap past 4 GiB.
    assert_eq!(vm.rax32(NR, &[3, 0xffff_fff0]), e32(EFAULT));
}

#[test]
fn pointers_are_guest_linear_addresses() {
    // Kernel-style mapping: linear 0xffff_8000_0000_0000 + x is physical x, with the two
    // pages at linear offsets 0x4000 and 0x5000 swapped, and 0x6000 read-only.
    const BASE: u64 = 0xffff_8000_0000_0000;
    let mut vm = Vm::new();
    vm.platform.translate = Some(Box::new(|gva, write| {
        let off = gva.checked_sub(BASE).ok_or(PlatformError::Failed("unmapped".into()))?;
        if off >= 0x20_0000 {
            return Err(PlatformError::Failed("unmapped".into()));
        }
        if write && off >> 12 == 6 {
            return Err(PlatformError::Failed("read-only".into()));
        }
        Ok(match off >> 12 {
            4 => off + 0x1000,
            5 => off - 0x1000,
            _ => off,
        })
    }));
    vm.fill(0x3000, 0x4000, 0xaa);
    // capabilities (1024 bytes) at linear 0x4e00: 0x200 bytes land at physical 0x5e00, the
    // next 0x200 at physical 0x4000.
    assert_eq!(vm.rax64(NR, &[3, BASE + 0x4e00]), 0);
    let caps = padded("hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ", 1024);
    assert_eq!(vm.read(0x5e00, 0x200), &caps[..0x200]);
    assert_eq!(vm.read(0x4000, 0x200), &caps[0x200..]);
    assert!(vm.read(0x4e00, 0x200).iter().all(|b| *b == 0xaa));
    // Unmapped and read-only destinations fault; reads of read-only pages work.
    assert_eq!(vm.rax64(NR, &[3, 0x4000]), e(EFAULT));
    assert_eq!(vm.rax64(NR, &[1, BASE + 0x6000]), e(EFAULT));
    vm.write(0x6000, &[0; 8]);
    assert_eq!(vm.rax64(NR, &[6, BASE + 0x6000]), e(EFAULT), "get_features writes back");
    assert_eq!(vm.rax64(NR, &[1, BASE + 0x7000]), 0);
    assert_eq!(&vm.read(0x7000, 3), b".0\0");
}
