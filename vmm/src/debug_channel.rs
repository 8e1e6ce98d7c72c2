//! The host side of the guest debug channel (Hyper-V's HvCallPostDebugData /
//! HvCallRetrieveDebugData, `Platform::debug_post` / `debug_retrieve`), configured with
//! `[hyperv] debug_output` and `debug_input`.
//!
//! Guest to host: every posted byte is appended to the output file at once (no buffering), so
//! a reader (`tail -f`, a FIFO's reader) sees it as soon as the call returns. Host to guest:
//! the input file is read from where the last retrieve stopped, without ever waiting — at
//! its end (or an empty FIFO) the guest gets nothing, and bytes appended later are handed out
//! by later calls.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use polyvisor_core::PlatformError;

/// The two files of a debug channel.
#[derive(Debug)]
pub struct DebugChannel {
    output: Mutex<File>,
    input: Option<Mutex<File>>,
}

impl DebugChannel {
    /// Opens the output for appending (created if missing; a FIFO waits for its reader) and
    /// the input, if any, for non-blocking reads.
    pub fn open(
        output: &Path,
        input: Option<&Path>,
    ) -> Result<Self, (&'static str, std::io::Error)> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)
            .map_err(|e| ("debug channel output", e))?;
        let input = match input {
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p)
                    .map_err(|e| ("debug channel input", e))?,
            )),
            None => None,
        };
        Ok(DebugChannel { output: Mutex::new(out), input })
    }

    /// Appends `bytes` to the output; all of them are taken, or the call fails.
    pub fn post(&self, bytes: &[u8]) -> Result<usize, PlatformError> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let mut out = self
            .output
            .lock()
            .map_err(|_| PlatformError::Failed("debug channel output lock poisoned".into()))?;
        out.write_all(bytes)
            .map_err(|e| PlatformError::Failed(format!("debug channel output: {e}")))?;
        Ok(bytes.len())
    }

    /// Fills `buf` from the input as far as bytes are there now; returns how many.
    pub fn retrieve(&self, buf: &mut [u8]) -> Result<usize, PlatformError> {
        let Some(input) = &self.input else {
            return Ok(0);
        };
        let mut f = input
            .lock()
            .map_err(|_| PlatformError::Failed("debug channel input lock poisoned".into()))?;
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
            match f.read(rest) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    if got > 0 {
                        break;
                    }
                    return Err(PlatformError::Failed(format!("debug channel input: {e}")));
                }
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("polyvisor-debug-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn posted_bytes_are_appended_and_input_is_handed_out_once() {
        let dir = scratch("files");
        let (out, inp) = (dir.join("out"), dir.join("in"));
        std::fs::write(&out, b"old:").unwrap();
        std::fs::write(&inp, b"hello").unwrap();
        let c = DebugChannel::open(&out, Some(&inp)).unwrap();
        assert_eq!(c.post(b"abc").unwrap(), 3);
        assert_eq!(c.post(b"").unwrap(), 0);
        assert_eq!(c.post(b"de").unwrap(), 2);
        assert_eq!(std::fs::read(&out).unwrap(), b"old:abcde");
        let mut buf = [0u8; 3];
        assert_eq!(c.retrieve(&mut buf).unwrap(), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(c.retrieve(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(c.retrieve(&mut buf).unwrap(), 0, "nothing left: no waiting");
        // Bytes appended later are handed out by later calls.
        OpenOptions::new().append(true).open(&inp).unwrap().write_all(b"!").unwrap();
        assert_eq!(c.retrieve(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'!');
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_input_means_no_data_and_missing_files_are_named() {
        let dir = scratch("none");
        let c = DebugChannel::open(&dir.join("out"), None).unwrap();
        assert_eq!(c.retrieve(&mut [0u8; 8]).unwrap(), 0);
        let e = DebugChannel::open(&dir.join("out"), Some(&dir.join("missing"))).unwrap_err();
        assert_eq!(e.0, "debug channel input");
        let e = DebugChannel::open(&dir.join("no/such/dir/out"), None).unwrap_err();
        assert_eq!(e.0, "debug channel output");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_fifo_gives_nothing_without_waiting() {
        let dir = scratch("fifo");
        let fifo = dir.join("in.fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let c = DebugChannel::open(&dir.join("out"), Some(&fifo)).unwrap();
        assert_eq!(c.retrieve(&mut [0u8; 8]).unwrap(), 0);
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"kd").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(c.retrieve(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"kd");
        assert_eq!(c.retrieve(&mut buf).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
