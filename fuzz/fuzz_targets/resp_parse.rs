//! See `raft_fuzz::resp_parse` (fuzz/harness) for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::resp_parse::run(data);
});
