#![no_main]
// See cc_ci_fuzz::trigger_command for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cc_ci_fuzz::trigger_command(data));
