//! Fuzz target `console_ring`: see `polyvisor_fuzz::console_ring` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| polyvisor_fuzz::console_ring(data));
