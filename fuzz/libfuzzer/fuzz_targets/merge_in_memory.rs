#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::run("merge_in_memory", data));
