//! `__HYPERVISOR_xen_version` (`do_xen_version`, `xen/common/kernel.c`), answered as an
//! unprivileged domain sees it under Xen's default XSM policy (`xsm_xen_version`,
//! `xen/include/xsm/dummy.h`): version, platform_parameters and get_features always;
//! extraversion, compile_info, capabilities, changeset, pagesize and guest_handle as "must
//! always be accessible"; commandline, build_id and commandline2 are privileged, so the
//! command line reads as `"<denied>"` and the others fail with `-EPERM`.
//!
//! Strings are fixed and NUL-padded to their full size: nothing comes from the host.

use polyvisor_core::{Call, Reply};

use super::{err, int_arg, ok};
use crate::xen::abi::errno::{EINVAL, ENOBUFS, ENOSYS, EPERM};
use crate::xen::abi::features::*;
use crate::xen::abi::version::*;
use crate::xen::abi::PAGE_SIZE;
use crate::xen::guest::{le, Fault, Guest};
use crate::xen::Xen;

/// `xen_cap_info` of an x86 Xen with HVM and without PV (`init_xen_cap_info`,
/// `xen/arch/x86/setup.c`), trailing space included.
pub const CAPABILITIES: &str = "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ";
/// `XEN_CHANGESET` of a build without source-control information (`xen/build.mk`).
pub const CHANGESET: &str = "unavailable";
/// `xen_deny()` (`xen/common/version.c`).
pub const DENIED: &str = "<denied>";
/// `xen_compile_info` strings: compiler, compile_by, compile_domain, compile_date.
pub const COMPILE_INFO: [&str; 4] = ["polyvisor", "polyvisor", "", ""];

/// The `XENVER_get_features` sub-map 0 this personality backs.
pub fn features(xen: &Xen) -> u32 {
    let mut map = (1 << XENFEAT_writable_page_tables)
        | (1 << XENFEAT_auto_translated_physmap)
        | (1 << XENFEAT_not_direct_mapped);
    if xen.safe_pvclock() {
        map |= 1 << XENFEAT_hvm_safe_pvclock;
    }
    map
}

/// Writes `s` NUL-padded to `N` bytes at `gva`.
fn put_padded<const N: usize>(g: &Guest<'_>, gva: u64, s: &[u8]) -> Result<Reply, Fault> {
    let mut buf = [0u8; N];
    // Keep the last byte NUL, as safe_strcpy does.
    for (dst, src) in buf.iter_mut().take(N - 1).zip(s) {
        *dst = *src;
    }
    g.write(gva, &buf)?;
    Ok(ok(0))
}

/// The `xen_varbuf` sub-operations (`xenver_varbuf_op`): a NULL handle asks for the size;
/// otherwise the string (no NUL) follows the `u32 len` header if it fits.
fn varbuf(g: &Guest<'_>, gva: u64, s: &[u8]) -> Result<Reply, Fault> {
    let size = s.len() as u64;
    if gva == 0 {
        return Ok(ok(size));
    }
    let len = u32::from_le_bytes(g.read_array::<4>(gva)?);
    if size > u64::from(len) {
        return Ok(err(ENOBUFS));
    }
    g.write(gva.checked_add(4).ok_or(Fault)?, s)?;
    Ok(ok(size))
}

fn run(xen: &Xen, call: &Call<'_>) -> Result<Reply, Fault> {
    let cmd = int_arg(call.arg(0));
    let arg = call.arg(1);
    let g = Guest::of(call);
    // The varbuf forms arrived in Xen 4.20.
    let varbuf_ops = xen.at_least(4, 20);
    Ok(match cmd {
        XENVER_version => {
            let (major, minor) = xen.version;
            ok((u64::from(major) << 16) | u64::from(minor))
        }
        XENVER_extraversion => put_padded::<EXTRAVERSION_LEN>(&g, arg, &xen.extraversion)?,
        XENVER_compile_info => {
            let mut info = [0u8; 144];
            let mut at = 0;
            for (size, s) in COMPILE_INFO_FIELDS.into_iter().zip(COMPILE_INFO) {
                let n = s.len().min(size - 1);
                le::put(&mut info, at, s.as_bytes().get(..n).unwrap_or_default());
                at += size;
            }
            g.write(arg, &info)?;
            ok(0)
        }
        XENVER_capabilities => put_padded::<CAPABILITIES_LEN>(&g, arg, CAPABILITIES.as_bytes())?,
        XENVER_changeset => put_padded::<CHANGESET_LEN>(&g, arg, CHANGESET.as_bytes())?,
        XENVER_platform_parameters => {
            // virt_start is 0 for HVM callers; xen_ulong_t is 4 bytes for compat callers.
            let zero = [0u8; 8];
            g.write(arg, zero.get(..g.width.word()).unwrap_or(&zero))?;
            ok(0)
        }
        XENVER_get_features => {
            let fi = g.read_array::<8>(arg)?;
            let idx = le::u32_at(&fi, 0);
            if idx != 0 {
                return Ok(err(EINVAL));
            }
            let mut out = [0u8; 8];
            le::put(&mut out, 0, &idx.to_le_bytes());
            le::put(&mut out, 4, &features(xen).to_le_bytes());
            g.write(arg, &out)?;
            ok(0)
        }
        // "arg == NULL; returns host memory page size."
        XENVER_pagesize if arg != 0 => err(EINVAL),
        XENVER_pagesize => ok(PAGE_SIZE),
        XENVER_guest_handle => {
            g.write(arg, &[0u8; HANDLE_LEN])?;
            ok(0)
        }
        XENVER_commandline => {
            // Denied: strlen(xen_deny()) + 1 bytes, not the full xen_commandline_t.
            let mut buf = [0u8; DENIED.len() + 1];
            le::put(&mut buf, 0, DENIED.as_bytes());
            g.write(arg, &buf)?;
            ok(0)
        }
        XENVER_build_id => err(EPERM),
        XENVER_commandline2 if varbuf_ops => err(EPERM),
        XENVER_extraversion2 if varbuf_ops => {
            let n = xen.extraversion.iter().position(|b| *b == 0).unwrap_or(EXTRAVERSION_LEN);
            varbuf(&g, arg, xen.extraversion.get(..n).unwrap_or_default())?
        }
        XENVER_capabilities2 if varbuf_ops => varbuf(&g, arg, CAPABILITIES.as_bytes())?,
        XENVER_changeset2 if varbuf_ops => varbuf(&g, arg, CHANGESET.as_bytes())?,
        _ => err(ENOSYS),
    })
}

/// The `__HYPERVISOR_xen_version` handler.
pub fn xen_version(xen: &Xen, call: &mut Call<'_>) -> Reply {
    run(xen, call).unwrap_or_else(Reply::from)
}
