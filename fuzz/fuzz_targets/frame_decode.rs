//! See `raft_fuzz::frame_decode` (fuzz/harness) for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::frame_decode::run(data);
});
