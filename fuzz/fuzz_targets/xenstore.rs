//! Fuzz target `xenstore`: see `polyvisor_fuzz::xenstore` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| polyvisor_fuzz::xenstore(data));
