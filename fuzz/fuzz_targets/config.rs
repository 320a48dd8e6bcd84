#![no_main]
// See cc_ci_fuzz::config for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cc_ci_fuzz::config(data));
