//! # polyvisor-fuzz — what the fuzz targets run
//!
//! Each target in `fuzz_targets/` is one line that calls a function here, so the harnesses
//! can also be driven by ordinary tests and by a replay of a crash file
//! (`cargo fuzz run <target> <file>`). The invariants are checked with `assert!`: a failed
//! check is a crash libFuzzer reports and minimises like any panic in the code under test.
//!
//! | target | input | invariants |
//! |---|---|---|
//! | `dispatch` | a [`CallLog`]: personality, policy variant, vCPUs, guest memory size, then memory contents, hypercalls (any registers, CPL, CPU mode, instruction) and MSR accesses | no panic; guest memory only through vm-memory; every outcome one its ABI allows ([`allowed`]); the counters move by exactly one per hypercall; effects per operation bounded ([`MAX_EFFECTS_PER_OP`], [`MAX_EFFECT_BYTES_PER_OP`]); an MSR outside the personality's ranges is #GP or not its own, never a value |
//! | `config` | TOML text | no panic; an error carries `file:line:column` inside the text; a parsed config renders to TOML that parses back to the same config; the engine builds or refuses with an error |
//! | `xenstore` | page writes, raw messages, reconnections and well-formed requests (transactions, watches) through the XenStore ring ([`rings`]) | no panic; indices consistent, at most one ring of answers per call; a bad index or oversized message ends in the documented ring error and a stopped connection; answers well-formed with their request's `req_id`/`tx_id`, in order; watches, transactions, nodes and bytes within their limits |
//! | `console_ring` | page writes, drains, pushes and a frontend's own output and input on the PV console ring | no panic; a drain takes exactly the bytes between the indices (at most `sizeof(out)`) and moves only `out_cons`; a push writes `min(room, len)` bytes and moves only `in_prod`; bad indices are `RingError::Index` |
//! | `kernel` | RAM size (4 bytes, 4 KiB pages) + an image | no panic; an image that parses has its segments inside RAM above 1 MiB, sorted and disjoint, with the file bytes no longer than the memory size, and every entry inside an executable segment; the boot choice names an entry the image has or says why not |
//!
//! A new target is one file in `fuzz_targets/` plus a `[[bin]]` entry in Cargo.toml, calling
//! its parser and asserting its own invariants.
#![deny(missing_docs)]

mod allowed;
mod dispatch;
mod parsers;
pub mod rings;

pub use allowed::{allowed, MAX_EFFECTS_PER_OP, MAX_EFFECT_BYTES_PER_OP};
pub use dispatch::dispatch;
pub use parsers::{config, kernel};
pub use polyvisor_core::call_log::CallLog;
pub use rings::{console_ring, xenstore};
