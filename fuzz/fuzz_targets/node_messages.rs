//! See `raft_fuzz::node_messages` (fuzz/harness) for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::node_messages::run(data);
});
