//! `__HYPERVISOR_console_io` (`do_console_io`, `xen/drivers/char/console.c`).
//!
//! - `CONSOLEIO_write(count, buffer)`: the bytes go to the VM console as they are; returns 0.
//!   Xen copies 127 bytes at a time and, when preemption is due, re-issues the hypercall with
//!   the rest (`hypercall_create_continuation`). Here one trap writes at most
//!   [`WRITE_PER_TRAP`] bytes; the rest is a continuation the same way: the count and buffer
//!   registers are advanced and the instruction runs again.
//! - `CONSOLEIO_read(count, buffer)`: up to `count` pending input bytes (at most
//!   [`READ_PER_CALL`] per call); returns how many, 0 when none. `count > INT_MAX` is
//!   `-E2BIG`.
//!
//! Release builds of Xen refuse console_io to unprivileged domains (`xsm_console_io`: only
//! the console domain, or any domain's writes on a debug build); here it is served, and
//! `deny = ["__HYPERVISOR_console_io"]` gives the release answer, `-EPERM`.

use polyvisor_core::{Call, Next, Outcome, RegisterWrites, Reply};

use super::{err, int_arg, ok};
use crate::xen::abi::console::*;
use crate::xen::abi::errno::{E2BIG, ENOSYS};
use crate::xen::guest::{Fault, Guest};
use crate::xen::Xen;

/// Bytes copied per step.
const CHUNK: usize = 256;
/// Bytes one trap writes before continuing with a re-executed hypercall.
pub const WRITE_PER_TRAP: u32 = 4096;
/// Bytes one read returns at most.
pub const READ_PER_CALL: u32 = 4096;

fn write(call: &Call<'_>, count: u32, buffer: u64) -> Result<Reply, Fault> {
    let g = Guest::of(call);
    let mut chunk = [0u8; CHUNK];
    let mut left = count;
    let mut at = buffer;
    let mut written = 0u32;
    while left > 0 {
        if written >= WRITE_PER_TRAP {
            // Continuation: arguments 2 (count) and 3 (buffer) advanced, RAX still holds the
            // hypercall number, RIP stays on the instruction.
            let [_, count_reg, buffer_reg, ..] = g.width.arg_regs();
            let mut writes = RegisterWrites::none();
            writes.push(count_reg, u64::from(left));
            writes.push(buffer_reg, g.width.truncate(at));
            return Ok(Reply::Outcome(Outcome { writes, next: Next::Retry }));
        }
        let n = left.min(CHUNK as u32);
        let bytes = chunk.get_mut(..n as usize).ok_or(Fault)?;
        g.read(at, bytes)?;
        call.platform.console_write(call.vcpu.vcpu, bytes);
        left -= n;
        written += n;
        at = at.wrapping_add(u64::from(n));
    }
    Ok(ok(0))
}

fn read(call: &Call<'_>, count: u32, buffer: u64) -> Result<Reply, Fault> {
    if count > i32::MAX as u32 {
        return Ok(err(E2BIG));
    }
    let g = Guest::of(call);
    let want = count.min(READ_PER_CALL);
    let mut chunk = [0u8; CHUNK];
    let mut done = 0u32;
    while done < want {
        let n = (want - done).min(CHUNK as u32) as usize;
        let dst = buffer.checked_add(u64::from(done)).ok_or(Fault)?;
        // Check the destination before taking input, so a bad buffer loses nothing.
        g.check(dst, n, true)?;
        let room = chunk.get_mut(..n).ok_or(Fault)?;
        let got = call.platform.console_read(room).min(n);
        if got == 0 {
            break;
        }
        g.write(dst, room.get(..got).ok_or(Fault)?)?;
        done += got as u32;
        if got < n {
            break;
        }
    }
    Ok(ok(u64::from(done)))
}

/// The `__HYPERVISOR_console_io` handler.
pub fn console_io(_xen: &Xen, call: &mut Call<'_>) -> Reply {
    let cmd = int_arg(call.arg(0));
    let count = int_arg(call.arg(1));
    let buffer = call.arg(2);
    let answer = match cmd {
        CONSOLEIO_write => write(call, count, buffer),
        CONSOLEIO_read => read(call, count, buffer),
        _ => Ok(err(ENOSYS)),
    };
    answer.unwrap_or_else(Reply::from)
}
