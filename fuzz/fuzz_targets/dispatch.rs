//! Fuzz target `dispatch`: see `polyvisor_fuzz::dispatch` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| polyvisor_fuzz::dispatch(data));
