//! The devices, minimal and real: the debug console on port 0xE9, a 16550 COM1 transmitter at
//! 0x3F8, and the test-exit port 0xF4. Everything else on the port bus is unhandled (the VM
//! ends with a register dump).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// The Bochs/QEMU debug console port.
pub const DEBUG_PORT: u16 = 0xe9;
/// COM1's base port.
pub const COM1: u16 = 0x3f8;
/// The test-exit port: `out 0xF4, eax` ends the VM with status `eax`.
pub const EXIT_PORT: u16 = 0xf4;

const LINE_MAX: usize = 1024;

/// Where console output goes.
#[derive(Debug)]
pub enum ConsoleSink {
    /// The process's standard output.
    Stdout,
    /// A file.
    File(File),
    /// Kept in memory (tests, `RunOptions::capture_console`).
    Capture(Vec<u8>),
}

/// The VM console: per-vCPU line buffers (so lines of different vCPUs do not interleave
/// mid-line) in front of one sink, and a limit on the guest bytes passed on.
#[derive(Debug)]
pub struct Console {
    out: Mutex<Output>,
    lines: Box<[Mutex<Vec<u8>>]>,
    input: crate::console_input::ConsoleInput,
    /// Guest bytes passed on at most (0: no limit).
    limit: u64,
}

/// The sink and what went into it.
#[derive(Debug)]
struct Output {
    sink: ConsoleSink,
    /// Guest bytes passed on.
    passed: u64,
    /// Guest bytes dropped past the limit.
    dropped: u64,
    /// Whether the last byte written ended a line.
    at_line_start: bool,
}

impl Output {
    fn write(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else {
            return;
        };
        self.at_line_start = last == b'\n';
        match &mut self.sink {
            ConsoleSink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            }
            ConsoleSink::File(f) => {
                let _ = f.write_all(bytes);
            }
            ConsoleSink::Capture(v) => v.extend_from_slice(bytes),
        }
    }
}

impl Console {
    /// A console for `vcpus` vCPUs writing to `sink`, with no limit.
    pub fn new(sink: ConsoleSink, vcpus: u32) -> Self {
        Console {
            out: Mutex::new(Output { sink, passed: 0, dropped: 0, at_line_start: true }),
            lines: (0..vcpus.max(1)).map(|_| Mutex::new(Vec::with_capacity(LINE_MAX))).collect(),
            input: crate::console_input::ConsoleInput::default(),
            limit: 0,
        }
    }

    /// The same console with host input for the guest.
    pub fn with_input(self, input: crate::console_input::ConsoleInput) -> Self {
        Console { input, ..self }
    }

    /// The same console passing on at most `bytes` of guest output (`[vm] console_limit_kib`;
    /// 0: no limit). The rest is dropped after one note saying so.
    pub fn with_limit(self, bytes: u64) -> Self {
        Console { limit: bytes, ..self }
    }

    /// Guest bytes dropped past the limit so far.
    pub fn dropped(&self) -> u64 {
        self.out.lock().map(|o| o.dropped).unwrap_or(0)
    }

    /// Moves waiting host input into `buf`; returns how many bytes (0 when none wait).
    pub fn read(&self, buf: &mut [u8]) -> usize {
        self.input.read(buf)
    }

    /// Guest bytes to the sink, as far as the limit lets them.
    fn emit(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let Ok(mut out) = self.out.lock() else {
            return;
        };
        let room = match self.limit {
            0 => bytes.len(),
            limit => usize::try_from(limit.saturating_sub(out.passed)).unwrap_or(usize::MAX),
        };
        let (keep, drop) = bytes.split_at(room.min(bytes.len()));
        out.write(keep);
        out.passed += keep.len() as u64;
        if !drop.is_empty() {
            if out.dropped == 0 {
                let note = format!(
                    "{}[polyvisor: the guest's console output reached the limit of {} KiB \
                     ([vm] console_limit_kib); the rest is dropped]\n",
                    if out.at_line_start { "" } else { "\n" },
                    self.limit / 1024
                );
                out.write(note.as_bytes());
            }
            out.dropped += drop.len() as u64;
        }
    }

    /// Guest output from vCPU `vcpu`; complete lines go to the sink.
    pub fn write(&self, vcpu: u32, bytes: &[u8]) {
        let Some(line) = self.lines.get(vcpu as usize) else {
            self.emit(bytes);
            return;
        };
        let Ok(mut line) = line.lock() else {
            return;
        };
        for &b in bytes {
            line.push(b);
            if b == b'\n' || line.len() >= LINE_MAX {
                self.emit(&line);
                line.clear();
            }
        }
    }

    /// Writes out every partial line (at halts and at the VM's end).
    pub fn flush(&self, vcpu: Option<u32>) {
        for (i, line) in self.lines.iter().enumerate() {
            if vcpu.is_some_and(|v| v as usize != i) {
                continue;
            }
            if let Ok(mut line) = line.lock() {
                self.emit(&line);
                line.clear();
            }
        }
    }

    /// A line from the VMM itself (messages about the VM's end), after the guest's output;
    /// not counted against the limit.
    pub fn vmm_line(&self, text: &str) {
        self.flush(None);
        if let Ok(mut out) = self.out.lock() {
            out.write(text.as_bytes());
        }
    }

    /// The captured output, if capturing.
    pub fn take_capture(&self) -> Option<Vec<u8>> {
        self.flush(None);
        let mut out = self.out.lock().ok()?;
        match &mut out.sink {
            ConsoleSink::Capture(v) => Some(std::mem::take(v)),
            _ => None,
        }
    }
}

/// The 16550's registers that a transmit-only driver touches.
#[derive(Debug, Default)]
pub struct Serial {
    ier: AtomicU8,
    fcr: AtomicU8,
    lcr: AtomicU8,
    mcr: AtomicU8,
    scr: AtomicU8,
    dll: AtomicU8,
    dlm: AtomicU8,
}

const LCR_DLAB: u8 = 0x80;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;

impl Serial {
    /// A write to COM1 + `offset`; returns the byte to transmit, if any.
    pub fn write(&self, offset: u16, value: u8) -> Option<u8> {
        let dlab = self.lcr.load(Ordering::Relaxed) & LCR_DLAB != 0;
        match (offset, dlab) {
            (0, false) => return Some(value),
            (0, true) => self.dll.store(value, Ordering::Relaxed),
            (1, false) => self.ier.store(value & 0x0f, Ordering::Relaxed),
            (1, true) => self.dlm.store(value, Ordering::Relaxed),
            (2, _) => self.fcr.store(value, Ordering::Relaxed),
            (3, _) => self.lcr.store(value, Ordering::Relaxed),
            (4, _) => self.mcr.store(value & 0x1f, Ordering::Relaxed),
            (7, _) => self.scr.store(value, Ordering::Relaxed),
            _ => {} // LSR and MSR are read-only
        }
        None
    }

    /// A read of COM1 + `offset`. There is no receiver: RBR reads 0 and LSR never has DR.
    pub fn read(&self, offset: u16) -> u8 {
        let dlab = self.lcr.load(Ordering::Relaxed) & LCR_DLAB != 0;
        match (offset, dlab) {
            (0, false) => 0,
            (0, true) => self.dll.load(Ordering::Relaxed),
            (1, false) => self.ier.load(Ordering::Relaxed),
            (1, true) => self.dlm.load(Ordering::Relaxed),
            // IIR: no interrupt pending; FIFOs enabled bits mirror FCR bit 0.
            (2, _) => {
                if self.fcr.load(Ordering::Relaxed) & 1 != 0 {
                    0xc1
                } else {
                    0x01
                }
            }
            (3, _) => self.lcr.load(Ordering::Relaxed),
            (4, _) => self.mcr.load(Ordering::Relaxed),
            (5, _) => LSR_THRE | LSR_TEMT,
            (6, _) => {
                let mcr = self.mcr.load(Ordering::Relaxed);
                if mcr & MCR_LOOP != 0 {
                    // Loopback: CTS<-RTS, DSR<-DTR, RI<-OUT1, DCD<-OUT2.
                    ((mcr & 0x02) << 3)
                        | ((mcr & 0x01) << 5)
                        | ((mcr & 0x04) << 4)
                        | ((mcr & 0x08) << 4)
                } else {
                    0xb0 // DCD, DSR, CTS
                }
            }
            (7, _) => self.scr.load(Ordering::Relaxed),
            _ => 0xff,
        }
    }
}

/// What a port write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortWrite {
    /// Handled.
    Done,
    /// The test-exit device: end the VM with this status.
    Exit(u32),
    /// No device here.
    Unhandled,
}

/// The port bus.
#[derive(Debug, Default)]
pub struct Ports {
    /// COM1.
    pub serial: Serial,
}

fn le_value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(data) {
        *d = *s;
    }
    u32::from_le_bytes(b)
}

impl Ports {
    /// `out` of `size`-byte elements (`data.len() / size` of them).
    pub fn write(
        &self,
        console: &Console,
        vcpu: u32,
        port: u16,
        size: u8,
        data: &[u8],
    ) -> PortWrite {
        match port {
            DEBUG_PORT => {
                // Each element's low byte is a character.
                let step = usize::from(size.max(1));
                for chunk in data.chunks(step) {
                    if let Some(b) = chunk.first() {
                        console.write(vcpu, std::slice::from_ref(b));
                    }
                }
                PortWrite::Done
            }
            p if (COM1..COM1 + 8).contains(&p) => {
                let step = usize::from(size.max(1));
                for chunk in data.chunks(step) {
                    if let Some(&b) = chunk.first() {
                        if let Some(tx) = self.serial.write(p - COM1, b) {
                            console.write(vcpu, &[tx]);
                        }
                    }
                }
                PortWrite::Done
            }
            EXIT_PORT => {
                PortWrite::Exit(le_value(data.get(..usize::from(size.min(4))).unwrap_or(data)))
            }
            _ => PortWrite::Unhandled,
        }
    }

    /// `in`: fills `data`; returns `false` when no device answers.
    pub fn read(&self, port: u16, size: u8, data: &mut [u8]) -> bool {
        match port {
            DEBUG_PORT => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = 0xe9; // Bochs convention: the port reads as its own number
                }
                true
            }
            p if (COM1..COM1 + 8).contains(&p) => {
                let step = usize::from(size.max(1));
                data.fill(0);
                for chunk in data.chunks_mut(step) {
                    if let Some(b) = chunk.first_mut() {
                        *b = self.serial.read(p - COM1);
                    }
                }
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_keeps_lines_whole() {
        let c = Console::new(ConsoleSink::Capture(Vec::new()), 2);
        c.write(0, b"hel");
        c.write(1, b"other\n");
        c.write(0, b"lo\n");
        assert_eq!(c.take_capture().unwrap(), b"other\nhello\n");
    }

    #[test]
    fn console_output_stops_at_the_limit_with_one_note() {
        let c = Console::new(ConsoleSink::Capture(Vec::new()), 1).with_limit(2048);
        for _ in 0..100 {
            c.write(0, &[b'x'; 100]);
        }
        c.vmm_line("the end\n");
        let out = String::from_utf8(c.take_capture().unwrap()).unwrap();
        assert_eq!(out.matches('x').count(), 2048, "{out}");
        assert_eq!(out.matches("limit of 2 KiB").count(), 1, "{out}");
        assert!(out.ends_with("dropped]\nthe end\n"), "{out}");
        assert_eq!(c.dropped(), 100 * 100 - 2048);
    }

    #[test]
    fn serial_transmits_and_answers_a_driver() {
        let p = Ports::default();
        let c = Console::new(ConsoleSink::Capture(Vec::new()), 1);
        let mut b = [0u8; 1];
        assert!(p.read(COM1 + 5, 1, &mut b));
        assert_eq!(b[0] & 0x60, 0x60);
        // Set the divisor: DLAB writes do not transmit.
        assert_eq!(p.write(&c, 0, COM1 + 3, 1, &[0x80]), PortWrite::Done);
        p.write(&c, 0, COM1, 1, &[1]);
        p.write(&c, 0, COM1 + 3, 1, &[0x03]);
        p.write(&c, 0, COM1, 1, b"A");
        p.write(&c, 0, DEBUG_PORT, 1, b"B\n");
        assert_eq!(c.take_capture().unwrap(), b"AB\n");
        assert_eq!(p.write(&c, 0, EXIT_PORT, 4, &[7, 0, 0, 0]), PortWrite::Exit(7));
        assert_eq!(p.write(&c, 0, 0x80, 1, &[0]), PortWrite::Unhandled);
        assert!(!p.read(0x61, 1, &mut b));
    }
}
