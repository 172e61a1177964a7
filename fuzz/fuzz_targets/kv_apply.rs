//! See `raft_fuzz::kv_apply` (fuzz/harness) for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::kv_apply::run(data);
});
