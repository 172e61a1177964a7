//! `wal_recover`: whatever a crash or a bad disk leaves in a node's data directory. The first
//! byte picks the file under attack:
//! - 0: a WAL segment of fuzzed records after a valid (or, rarely, another version's) header.
//!   Recovery returns a contiguous log or a clear error, never a panic; a segment of a version
//!   this build cannot read is refused untouched.
//! - 1: the state file (`raft-state`) beside a log holding one synced entry: refused clearly or
//!   recovered with a term that never goes back and no repair the log already covers.
//! - 2: a snapshot file: refused, or decoded to a snapshot that re-encodes to the same file.
//! - 3: a real WAL written through [`Wal`] (entries, terms and batches from the input, every write
//!   synced and the synced mark kept current), whose segments are then damaged (bytes flipped,
//!   cut, garbage appended). Recovery either refuses with an error, or returns every written
//!   entry unchanged, or returns a prefix of them while reporting that synced entries were lost
//!   (a repair mark beyond what it returned). Never a record that differs from what was written,
//!   never a shorter log in silence.

use arbitrary::Unstructured;
use raft_core::{Bytes, Entry, EntryKind, HardState, Persist, SnapshotMeta};
use raft_driver_std::snapshot_file;
use raft_driver_std::wal::{SUPPORTED_WAL_VERSIONS, WAL_FORMAT_VERSION, Wal, WalError, WalOptions};

/// Runs one input; returns the entries recovered (or, for snapshot files, the bytes decoded).
pub fn run(data: &[u8]) -> u64 {
    let Some((&selector, rest)) = data.split_first() else { return 0 };
    match selector % 4 {
        0 => segment(selector, rest),
        1 => state_file(rest),
        2 => snapshot(rest),
        _ => damaged(rest),
    }
}

fn segment(selector: u8, records: &[u8]) -> u64 {
    let version = if selector < 0xF0 { WAL_FORMAT_VERSION } else { u32::from(selector & 0x0F) };
    let dir = crate::scratch_dir();
    let path = dir.path().join("wal-0000000000000001.log");
    let mut bytes = b"RAFTWAL\0".to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(records);
    std::fs::write(&path, &bytes).expect("write");
    match Wal::open(dir.path(), WalOptions::default()) {
        Ok((_, state, _)) => {
            assert!(SUPPORTED_WAL_VERSIONS.contains(&version), "version {version} must be refused");
            let base = state.snapshot.as_ref().map_or(0, |m| m.last_included_index);
            for (i, e) in state.entries.iter().enumerate() {
                assert_eq!(e.index, base + i as u64 + 1, "recovered log must be contiguous after its snapshot");
            }
            state.entries.len() as u64
        }
        Err(WalError::UnsupportedVersion { found, .. }) => {
            assert_eq!(found, version);
            assert!(!SUPPORTED_WAL_VERSIONS.contains(&version));
            assert_eq!(std::fs::read(&path).expect("read"), bytes, "refused segment left untouched");
            0
        }
        Err(_) => 0,
    }
}

fn state_file(data: &[u8]) -> u64 {
    let dir = crate::scratch_dir();
    {
        let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).expect("open an empty WAL");
        let entry = Entry { term: 1, index: 1, kind: EntryKind::Normal, data: Bytes::from_static(b"x") };
        let hard_state = Some(HardState { term: 1, vote: Some(1) });
        let persist = Persist { seq: 1, hard_state, snapshot: None, truncate_from: None, entries: vec![entry] };
        wal.write(&persist).expect("write");
        wal.sync().expect("sync");
    }
    std::fs::write(dir.path().join("raft-state"), data).expect("write state file");
    let Ok((_, state, report)) = Wal::open(dir.path(), WalOptions::default()) else { return 0 };
    assert!(state.hard_state.term >= 1, "the term went back");
    if let Some(r) = report.repair {
        assert!(!r.covered_by(state.last_index(), state.entries.last().map_or(0, |e| e.term)));
    }
    state.entries.len() as u64
}

fn snapshot(data: &[u8]) -> u64 {
    let path = std::path::Path::new("fuzz.snap");
    let decoded = snapshot_file::decode(path, data);
    let reached = decoded.as_ref().map_or(0, |(_, image)| image.len() as u64);
    if let Ok((meta, image)) = decoded {
        let again = snapshot_file::encode(&meta, &image);
        let (meta2, image2) = snapshot_file::decode(path, &again).expect("a file we encoded decodes");
        assert_eq!((meta2, image2), (meta, image));
    }
    // And an image framed as a valid file decodes to itself.
    let meta =
        SnapshotMeta { last_included_index: 5, last_included_term: 1, membership: raft_core::Membership::new(vec![1]) };
    let file = snapshot_file::encode(&meta, data);
    let (decoded, image) = snapshot_file::decode(path, &file).expect("a file we framed decodes");
    assert_eq!((decoded, &image[..]), (meta, data));
    reached
}

fn damaged(data: &[u8]) -> u64 {
    let mut u = Unstructured::new(data);
    let dir = crate::scratch_dir();
    // Small segments, so that damage can hit a closed segment as well as the open one.
    let options = WalOptions { state_file_interval: std::time::Duration::ZERO, ..WalOptions::default() }
        .with_segment_size(u.int_in_range(64..=512).unwrap_or(256));
    let written = write_log(&mut u, dir.path(), &options);
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    if segments.is_empty() {
        return 0;
    }
    let mut damage = 0;
    while !u.is_empty() && damage < 4 {
        let Ok(i) = u.choose_index(segments.len()) else { break };
        let mut bytes = std::fs::read(&segments[i]).expect("read segment");
        match u.int_in_range(0u8..=2).unwrap_or(0) {
            0 if !bytes.is_empty() => {
                let at = u.choose_index(bytes.len()).unwrap_or(0);
                bytes[at] ^= u.int_in_range(1u8..=255).unwrap_or(1);
            }
            1 => bytes.truncate(u.choose_index(bytes.len() + 1).unwrap_or(0)),
            _ => {
                let len = u.int_in_range(1..=32).unwrap_or(1);
                bytes.extend_from_slice(u.bytes(len).unwrap_or(b"\0"));
            }
        }
        std::fs::write(&segments[i], &bytes).expect("write segment");
        damage += 1;
    }
    let Ok((_, state, report)) = Wal::open(dir.path(), options) else { return 0 };
    assert!(state.entries.len() <= written.len(), "recovery invented entries");
    for (got, want) in state.entries.iter().zip(&written) {
        assert_eq!(got, want, "recovery returned an entry that differs from the one written");
    }
    if state.entries.len() < written.len() {
        let lost = written.last().expect("written");
        let kept = state.entries.last().map_or((0, 0), |e| (e.index, e.term));
        let repair = report.repair.unwrap_or_else(|| {
            panic!("synced entries {}..={} lost without a word ({report:?})", kept.0 + 1, lost.index)
        });
        assert!(!repair.covered_by(kept.0, kept.1), "the repair mark {repair:?} is covered by what survived");
    }
    state.entries.len() as u64
}

/// Writes and syncs a log of up to 40 entries in batches, terms rising; returns what it wrote.
fn write_log(u: &mut Unstructured<'_>, dir: &std::path::Path, options: &WalOptions) -> Vec<Entry> {
    let (mut wal, _, _) = Wal::open(dir, options.clone()).expect("open an empty WAL");
    let (mut entries, mut term, mut seq) = (Vec::new(), 1, 0);
    while entries.len() < 40 && !u.is_empty() {
        let batch = u.int_in_range(1..=5).unwrap_or(1);
        if u.ratio(1, 4).unwrap_or(false) {
            term += 1;
        }
        let mut new = Vec::new();
        for _ in 0..batch {
            let len = u.int_in_range(0..=48).unwrap_or(0);
            let data = Bytes::from(u.bytes(len).unwrap_or_default().to_vec());
            let index = entries.len() as u64 + new.len() as u64 + 1;
            new.push(Entry { term, index, kind: EntryKind::Normal, data });
        }
        seq += 1;
        let hard_state = Some(HardState { term, vote: Some(1) });
        let persist = Persist { seq, hard_state, snapshot: None, truncate_from: None, entries: new.clone() };
        wal.write(&persist).expect("write");
        wal.sync().expect("sync");
        entries.extend(new);
    }
    entries
}
