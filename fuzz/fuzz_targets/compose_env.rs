#![no_main]
// See cc_ci_fuzz::compose_env for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cc_ci_fuzz::compose_env(data));
