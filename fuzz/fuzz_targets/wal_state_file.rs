//! The WAL's state file (`raft-state`) is read from a disk that may have
//! damaged it: opening a WAL beside any bytes in it must refuse them with a
//! clear error or recover a consistent state, never panic, and never report
//! a repair the log already covers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_driver_std::wal::{Wal, WalOptions};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    // A log with one synced entry, then the fuzzed state file beside it.
    {
        let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).expect("open an empty WAL");
        let entry = raft_core::Entry {
            term: 1,
            index: 1,
            kind: raft_core::EntryKind::Normal,
            data: raft_core::Bytes::from_static(b"x"),
        };
        let hard_state = Some(raft_core::HardState { term: 1, vote: Some(1) });
        let persist = raft_core::Persist { seq: 1, hard_state, snapshot: None, truncate_from: None, entries: vec![entry] };
        wal.write(&persist).expect("write");
        wal.sync().expect("sync");
    }
    std::fs::write(dir.path().join("raft-state"), data).expect("write state file");
    if let Ok((_, state, report)) = Wal::open(dir.path(), WalOptions::default()) {
        assert!(state.hard_state.term >= 1, "the term went back");
        if let Some(r) = report.repair {
            assert!(!r.covered_by(state.last_index(), state.entries.last().map_or(0, |e| e.term)));
        }
    }
});
