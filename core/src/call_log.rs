//! A recorded sequence of engine inputs — guest memory contents, hypercall register
//! snapshots, MSR accesses — in a compact binary form. It is the input format of the dispatch
//! fuzzer (`fuzz/`, docs/fuzzing.md) and what the seed recorder writes from the test guests'
//! real calls, so a seed is a replayable trace of a real guest.
//!
//! [`CallLog::decode`] is total: every byte string is a log (short fields read as zero,
//! unknown tags wrap), so a fuzzer's mutations always reach the engine.
//!
//! Layout, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | mode: 0 bhyve, 1 KVM, 2 Hyper-V, 3 Xen (modulo 4) |
//! | 1 | policy: what the fuzzer does with the configuration (see `fuzz/src/lib.rs`) |
//! | 1 | row: the table row the policy names |
//! | 1 | vCPUs minus one (modulo [`MAX_VCPUS`]) |
//! | 4 | guest memory in 4 KiB pages (clamped to 1..=[`MAX_PAGES`]) |
//! | ... | operations until the input ends or [`MAX_OPS`] were read |
//!
//! Each operation starts with a tag (modulo 4): 0 memory (`gpa` u64, `len` u16 at most
//! [`MAX_CHUNK`], the bytes), 1 hypercall (`vcpu`, `cpl`, `mode`, `instruction` one byte
//! each, then RAX..R15, RIP, RFLAGS as 18 u64), 2 RDMSR (`vcpu` u8, `msr` u32), 3 WRMSR
//! (`vcpu` u8, `msr` u32, `value` u64).

use crate::mode::HypervisorMode;
use crate::regs::{CpuMode, HypercallInstruction, Registers, VcpuSnapshot};

/// At most this many vCPUs in a log.
pub const MAX_VCPUS: u32 = 4;
/// At most this much guest memory, in 4 KiB pages (256 MiB; mapped lazily).
pub const MAX_PAGES: u32 = 65536;
/// At most this many operations are decoded from one input.
pub const MAX_OPS: usize = 64;
/// At most this many bytes in one memory operation.
pub const MAX_CHUNK: usize = 4096;

/// One recorded input to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Guest memory contents at `gpa` (written before the next operation).
    Memory {
        /// Where.
        gpa: u64,
        /// What (at most [`MAX_CHUNK`] bytes).
        bytes: Vec<u8>,
    },
    /// A trapped hypercall.
    Hypercall(VcpuSnapshot),
    /// An RDMSR of a routed MSR.
    ReadMsr {
        /// The vCPU.
        vcpu: u32,
        /// The MSR.
        msr: u32,
    },
    /// A WRMSR of a routed MSR.
    WriteMsr {
        /// The vCPU.
        vcpu: u32,
        /// The MSR.
        msr: u32,
        /// The value written.
        value: u64,
    },
}

/// A VM set-up and the operations made in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLog {
    /// The personality.
    pub mode: HypervisorMode,
    /// The configuration variant (interpreted by the fuzzer).
    pub policy: u8,
    /// The table row the policy names.
    pub row: u8,
    /// vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// Guest memory in 4 KiB pages, 1..=[`MAX_PAGES`].
    pub pages: u32,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

const MODES: [HypervisorMode; 4] =
    [HypervisorMode::Bhyve, HypervisorMode::Kvm, HypervisorMode::Hyperv, HypervisorMode::Xen];
const CPU_MODES: [CpuMode; 3] = [CpuMode::Long64, CpuMode::Protected32, CpuMode::Real];

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => 0,
        }
    }
    fn le(&mut self, n: usize) -> u64 {
        (0..n).fold(0u64, |v, i| v | (u64::from(self.u8()) << (8 * i)))
    }
    fn u16(&mut self) -> u16 {
        u16::try_from(self.le(2)).unwrap_or(u16::MAX)
    }
    fn u32(&mut self) -> u32 {
        u32::try_from(self.le(4)).unwrap_or(u32::MAX)
    }
    fn u64(&mut self) -> u64 {
        self.le(8)
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        head.to_vec()
    }
}

fn pick<T: Copy>(table: &[T], byte: u8) -> Option<T> {
    table.get(usize::from(byte) % table.len().max(1)).copied()
}

fn regs_list(r: &Registers) -> [u64; 18] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ]
}

impl CallLog {
    /// Reads a log from any bytes (total: see the module documentation).
    pub fn decode(bytes: &[u8]) -> CallLog {
        let mut r = Reader { bytes };
        let mode = pick(&MODES, r.u8()).unwrap_or(HypervisorMode::Bhyve);
        let policy = r.u8();
        let row = r.u8();
        let vcpus = u32::from(r.u8()) % MAX_VCPUS + 1;
        let pages = r.u32().clamp(1, MAX_PAGES);
        let mut ops = Vec::new();
        while !r.bytes.is_empty() && ops.len() < MAX_OPS {
            let op = match r.u8() % 4 {
                0 => {
                    let gpa = r.u64();
                    let len = usize::from(r.u16()).min(MAX_CHUNK);
                    Op::Memory { gpa, bytes: r.take(len) }
                }
                1 => {
                    let vcpu = u32::from(r.u8()) % vcpus;
                    let cpl = r.u8() & 3;
                    let cpu_mode = pick(&CPU_MODES, r.u8()).unwrap_or(CpuMode::Long64);
                    let instruction = if r.u8() & 1 == 0 {
                        HypercallInstruction::Vmcall
                    } else {
                        HypercallInstruction::Vmmcall
                    };
                    let mut v = [0u64; 18];
                    for x in v.iter_mut() {
                        *x = r.u64();
                    }
                    let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags] =
                        v;
                    let regs = Registers {
                        rax,
                        rbx,
                        rcx,
                        rdx,
                        rsi,
                        rdi,
                        rbp,
                        rsp,
                        r8,
                        r9,
                        r10,
                        r11,
                        r12,
                        r13,
                        r14,
                        r15,
                        rip,
                        rflags,
                    };
                    Op::Hypercall(VcpuSnapshot { vcpu, regs, cpl, mode: cpu_mode, instruction })
                }
                2 => Op::ReadMsr { vcpu: u32::from(r.u8()) % vcpus, msr: r.u32() },
                _ => Op::WriteMsr { vcpu: u32::from(r.u8()) % vcpus, msr: r.u32(), value: r.u64() },
            };
            ops.push(op);
        }
        CallLog { mode, policy, row, vcpus, pages, ops }
    }

    /// Writes the log so that [`CallLog::decode`] reads it back (memory chunks longer than
    /// [`MAX_CHUNK`] are split; operations beyond [`MAX_OPS`] are dropped by the reader).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let index = |m: HypervisorMode| MODES.iter().position(|x| *x == m).unwrap_or(0);
        out.push(u8::try_from(index(self.mode)).unwrap_or(0));
        out.push(self.policy);
        out.push(self.row);
        out.push(u8::try_from(self.vcpus.clamp(1, MAX_VCPUS) - 1).unwrap_or(0));
        out.extend_from_slice(&self.pages.to_le_bytes());
        for op in &self.ops {
            match op {
                Op::Memory { gpa, bytes } => {
                    for (i, chunk) in bytes.chunks(MAX_CHUNK).enumerate() {
                        out.push(0);
                        let at = gpa.wrapping_add((i * MAX_CHUNK) as u64);
                        out.extend_from_slice(&at.to_le_bytes());
                        out.extend_from_slice(
                            &u16::try_from(chunk.len()).unwrap_or(u16::MAX).to_le_bytes(),
                        );
                        out.extend_from_slice(chunk);
                    }
                }
                Op::Hypercall(s) => {
                    out.push(1);
                    out.push(u8::try_from(s.vcpu).unwrap_or(0));
                    out.push(s.cpl);
                    let m = CPU_MODES.iter().position(|x| *x == s.mode).unwrap_or(0);
                    out.push(u8::try_from(m).unwrap_or(0));
                    out.push(u8::from(s.instruction == HypercallInstruction::Vmmcall));
                    for v in regs_list(&s.regs) {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Op::ReadMsr { vcpu, msr } => {
                    out.push(2);
                    out.push(u8::try_from(*vcpu).unwrap_or(0));
                    out.extend_from_slice(&msr.to_le_bytes());
                }
                Op::WriteMsr { vcpu, msr, value } => {
                    out.push(3);
                    out.push(u8::try_from(*vcpu).unwrap_or(0));
                    out.extend_from_slice(&msr.to_le_bytes());
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CallLog {
        let regs =
            Registers { rax: 18, rdi: 0x1234_5678_9abc, rip: 0x10_0000, ..Registers::default() };
        CallLog {
            mode: HypervisorMode::Xen,
            policy: 7,
            row: 3,
            vcpus: 2,
            pages: 16384,
            ops: vec![
                Op::Memory { gpa: 0x20_0000, bytes: vec![0xaa; 100] },
                Op::Hypercall(VcpuSnapshot {
                    vcpu: 1,
                    regs,
                    cpl: 3,
                    mode: CpuMode::Protected32,
                    instruction: HypercallInstruction::Vmmcall,
                }),
                Op::ReadMsr { vcpu: 0, msr: 0x4000_0000 },
                Op::WriteMsr { vcpu: 1, msr: 0x4000_0001, value: u64::MAX },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let log = sample();
        assert_eq!(CallLog::decode(&log.encode()), log);
    }

    #[test]
    fn long_memory_is_split_and_reads_back_in_chunks() {
        let log = CallLog {
            ops: vec![Op::Memory { gpa: 0x1000, bytes: vec![1; MAX_CHUNK + 10] }],
            ..sample()
        };
        let back = CallLog::decode(&log.encode());
        assert_eq!(
            back.ops,
            vec![
                Op::Memory { gpa: 0x1000, bytes: vec![1; MAX_CHUNK] },
                Op::Memory { gpa: 0x1000 + MAX_CHUNK as u64, bytes: vec![1; 10] },
            ]
        );
    }

    #[test]
    fn any_bytes_decode_within_bounds() {
        assert_eq!(CallLog::decode(&[]).ops, vec![]);
        assert_eq!(CallLog::decode(&[]).pages, 1);
        let junk: Vec<u8> =
            (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let log = CallLog::decode(&junk);
        assert!(log.ops.len() <= MAX_OPS);
        assert!((1..=MAX_VCPUS).contains(&log.vcpus));
        assert!((1..=MAX_PAGES).contains(&log.pages));
        for op in &log.ops {
            match op {
                Op::Memory { bytes, .. } => assert!(bytes.len() <= MAX_CHUNK),
                Op::Hypercall(s) => assert!(s.vcpu < log.vcpus && s.cpl <= 3),
                Op::ReadMsr { vcpu, .. } | Op::WriteMsr { vcpu, .. } => {
                    assert!(*vcpu < log.vcpus)
                }
            }
        }
    }
}
