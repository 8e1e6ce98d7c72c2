//! Fuzz target `config`: see `polyvisor_fuzz::config` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| polyvisor_fuzz::config(data));
