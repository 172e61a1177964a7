//! WAL recovery reads whatever a crash (or a bad disk) left behind: it must
//! return a clear error or a consistent state, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_driver_std::wal::{Wal, WalOptions};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wal-0000000000000001.log");
    let mut bytes = b"RAFTWAL\0\x01\0\0\0\0\0\0\0".to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(&path, &bytes).expect("write");
    if let Ok((_, state, _)) = Wal::open(dir.path(), WalOptions::default()) {
        for (i, e) in state.entries.iter().enumerate() {
            assert_eq!(e.index, i as u64 + 1, "recovered log must be contiguous");
        }
    }
});
