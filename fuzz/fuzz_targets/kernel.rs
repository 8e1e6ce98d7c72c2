//! Fuzz target `kernel`: see `polyvisor_fuzz::kernel` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| polyvisor_fuzz::kernel(data));
