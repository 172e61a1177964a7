//! See `raft_fuzz::wal_recover` (fuzz/harness) for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::wal_recover::run(data);
});
