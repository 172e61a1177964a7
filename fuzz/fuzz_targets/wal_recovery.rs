//! WAL recovery reads whatever a crash (or a bad disk) left behind: it must
//! return a clear error or a consistent state, never panic.
//!
//! The first byte picks the segment header's format version (mostly the
//! supported one, sometimes another, which must be refused as unsupported
//! without touching the file); the rest follows the header as records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_driver_std::wal::{SUPPORTED_WAL_VERSIONS, WAL_FORMAT_VERSION, Wal, WalError, WalOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, records)) = data.split_first() else { return };
    let version = if selector < 0xF0 { WAL_FORMAT_VERSION } else { u32::from(selector & 0x0F) };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wal-0000000000000001.log");
    let mut bytes = b"RAFTWAL\0".to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(records);
    std::fs::write(&path, &bytes).expect("write");
    match Wal::open(dir.path(), WalOptions::default()) {
        Ok((_, state, _)) => {
            assert!(SUPPORTED_WAL_VERSIONS.contains(&version), "version {version} must be refused");
            // Contiguous, right after the snapshot the log follows (if any).
            let base = state.snapshot.as_ref().map_or(0, |m| m.last_included_index);
            for (i, e) in state.entries.iter().enumerate() {
                assert_eq!(e.index, base + i as u64 + 1, "recovered log must be contiguous after its snapshot");
            }
        }
        Err(WalError::UnsupportedVersion { found, .. }) => {
            assert_eq!(found, version);
            assert!(!SUPPORTED_WAL_VERSIONS.contains(&version));
            assert_eq!(std::fs::read(&path).expect("read"), bytes, "refused segment left untouched");
        }
        Err(_) => {}
    }
});
