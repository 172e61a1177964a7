//! See `raft_fuzz::core_events` (fuzz/harness) for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::core_events::run(data);
});
