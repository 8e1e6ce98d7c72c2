//! Host input for the guest's console: bytes from a file, a FIFO or standard input, handed
//! to the guest through `Platform::console_read` (Xen's `CONSOLEIO_read`).

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// At most this much input waits for the guest; a reader of a stream pauses while it is full.
pub const INPUT_MAX: usize = 64 * 1024;

/// Bytes waiting for the guest.
#[derive(Debug, Clone, Default)]
pub struct ConsoleInput {
    pending: Arc<Mutex<VecDeque<u8>>>,
}

impl ConsoleInput {
    /// Input that is all there from the start (tests, embedders); at most [`INPUT_MAX`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let take = bytes.len().min(INPUT_MAX);
        let input = ConsoleInput::default();
        if let Ok(mut p) = input.pending.lock() {
            p.extend(bytes.iter().take(take));
        }
        input
    }

    /// Opens `path` for input: `-` is standard input. A regular file is read at once (its first
    /// [`INPUT_MAX`] bytes), so the guest finds it all from its first read; a stream (standard
    /// input, a FIFO, a terminal) is read by a thread as bytes arrive.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if path == Path::new("-") {
            return Ok(Self::stream(std::io::stdin()));
        }
        let file = std::fs::File::open(path)?;
        if file.metadata()?.is_file() {
            let mut bytes = Vec::new();
            file.take(INPUT_MAX as u64).read_to_end(&mut bytes)?;
            return Ok(Self::from_bytes(&bytes));
        }
        Ok(Self::stream(file))
    }

    fn stream(mut source: impl Read + Send + 'static) -> Self {
        let input = ConsoleInput::default();
        let pending = Arc::clone(&input.pending);
        // Detached: it ends at the stream's end, or blocks in read until the process ends.
        let spawned = std::thread::Builder::new().name("console-input".into()).spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                let room = pending.lock().map(|p| INPUT_MAX.saturating_sub(p.len())).unwrap_or(0);
                if room == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let want = room.min(chunk.len());
                match source.read(chunk.get_mut(..want).unwrap_or(&mut [])) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut p) = pending.lock() {
                            p.extend(chunk.iter().take(n));
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the console input reader: {e}");
        }
        input
    }

    /// Moves waiting bytes into `buf`; returns how many (0 when none wait). Never blocks on
    /// the source.
    pub fn read(&self, buf: &mut [u8]) -> usize {
        let Ok(mut p) = self.pending.lock() else { return 0 };
        let n = buf.len().min(p.len());
        for (dst, src) in buf.iter_mut().zip(p.drain(..n)) {
            *dst = src;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_handed_out_in_order_once() {
        let input = ConsoleInput::from_bytes(b"hello");
        let mut buf = [0u8; 3];
        assert_eq!(input.read(&mut buf), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(input.read(&mut buf), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(input.read(&mut buf), 0);
    }

    #[test]
    fn a_regular_file_is_there_at_once_and_bounded() {
        let path = std::env::temp_dir().join(format!("polyvisor-input-{}", std::process::id()));
        std::fs::write(&path, vec![b'x'; INPUT_MAX + 10]).unwrap();
        let input = ConsoleInput::open(&path).unwrap();
        let mut buf = vec![0u8; INPUT_MAX + 10];
        assert_eq!(input.read(&mut buf), INPUT_MAX);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_stream_arrives_through_the_reader() {
        let input = ConsoleInput::stream(std::io::Cursor::new(b"streamed".to_vec()));
        let mut got = Vec::new();
        for _ in 0..200 {
            let mut buf = [0u8; 16];
            let n = input.read(&mut buf);
            got.extend_from_slice(&buf[..n]);
            if got.len() == 8 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, b"streamed");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        assert!(ConsoleInput::open(Path::new("/nonexistent/input")).is_err());
    }
}
