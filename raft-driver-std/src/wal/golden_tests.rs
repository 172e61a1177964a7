//! Golden tests of WAL format version 1: the committed files in
//! `tests/golden/wal-v1-*.bin` are decoded and compared with the expected
//! core values, and the values are encoded and compared with the files.
//!
//! Every field of every case has a value no other field of the case has,
//! and the integers span one-, two-, three- and ten-byte varints, so an
//! encoder that swaps two fields or changes an integer encoding cannot
//! produce the same bytes by accident.

use std::fs;

use raft_core::{Bytes, Entry, EntryKind, HardState, Persist, PersistedState};
use tempfile::TempDir;

use super::format::{RecordKind, append_record, parse_record, segment_file_name, segment_header};
use super::record::{Decoded, Record, WalEntriesV1, WalTruncateV1, decode_record};
use super::{Wal, WalError, WalHealth, WalOptions, inspect};
use crate::golden;

const SEGMENT_HEADER: &str = "wal-v1-segment-header.bin";
const HARD_STATE: &str = "wal-v1-record-hard-state.bin";
const HARD_STATE_NO_VOTE: &str = "wal-v1-record-hard-state-no-vote.bin";
const TRUNCATE: &str = "wal-v1-record-truncate.bin";
const ENTRIES: &str = "wal-v1-record-entries.bin";
const SEGMENT: &str = "wal-v1-segment.bin";

fn entry(term: u64, index: u64, kind: EntryKind, data: &'static [u8]) -> Entry {
    Entry { term, index, kind, data: Bytes::from_static(data) }
}

/// Normal and Noop entries, with empty and non-empty data.
fn golden_entries() -> Vec<Entry> {
    vec![
        entry(7, 1000, EntryKind::Normal, b"SET k v"),
        entry(8, 1001, EntryKind::Noop, b""),
        entry(9, 1002, EntryKind::Normal, b""),
        entry(10, 1003, EntryKind::Noop, b"\x00\xff"),
    ]
}

/// One record case: the file, the record to encode, what decoding yields.
fn record_cases(entries: &[Entry]) -> Vec<(&'static str, Record<'_>, Decoded)> {
    let hs = HardState { term: 300, vote: Some(70_000) };
    let hs_no_vote = HardState { term: u64::MAX, vote: None };
    vec![
        (HARD_STATE, Record::HardState(hs.into()), Decoded::HardState(hs)),
        (HARD_STATE_NO_VOTE, Record::HardState(hs_no_vote.into()), Decoded::HardState(hs_no_vote)),
        (TRUNCATE, Record::Truncate(WalTruncateV1 { from: 129 }), Decoded::Truncate { from: 129 }),
        (ENTRIES, Record::Entries(WalEntriesV1(entries)), Decoded::Entries(entries.to_vec())),
    ]
}

/// Decodes one complete framed record.
fn decode_framed(bytes: &[u8]) -> Decoded {
    let raw = parse_record(bytes, 0).expect("valid framing and CRC");
    assert_eq!(raw.end, bytes.len(), "exactly one record");
    let kind = RecordKind::from_byte(raw.kind).expect("known record kind");
    decode_record(kind, raw.payload).expect("valid payload")
}

#[test]
fn wal_golden_files_are_exactly_the_tested_cases() {
    let mut names: Vec<&str> = record_cases(&golden_entries()).iter().map(|(name, ..)| *name).collect();
    names.extend([SEGMENT_HEADER, SEGMENT]);
    golden::assert_complete("wal-", &names);
}

#[test]
fn wal_golden_segment_header() {
    let committed = golden::check(SEGMENT_HEADER, &segment_header());
    // Spelled out as well, so that the constants it is built from cannot
    // drift together with the file.
    assert_eq!(committed, b"RAFTWAL\0\x01\0\0\0\0\0\0\0");
}

/// Encodes `record` with its framing and checks it against `name`;
/// returns the committed bytes.
fn check_record(name: &str, record: &Record<'_>) -> Vec<u8> {
    let mut encoded = Vec::new();
    append_record(&mut encoded, record).unwrap();
    golden::check(name, &encoded)
}

#[test]
fn wal_golden_records_decode_and_encode() {
    let entries = golden_entries();
    for (name, record, expected) in record_cases(&entries) {
        let committed = check_record(name, &record);
        assert_eq!(committed[8], record.kind() as u8, "{name}: kind byte");
        assert_eq!(decode_framed(&committed), expected, "{name}");
    }
}

/// Recomputes the CRC of the framed record in `bytes` after a patch.
fn recrc(bytes: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..4]), &bytes[8..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The layout is the documented one (docs/formats.md walks through this
/// record), and a kind byte no version defines is an error, not a default.
#[test]
fn wal_golden_entries_record_with_unknown_entry_kind_is_refused() {
    let entries = golden_entries();
    let mut bytes = check_record(ENTRIES, &Record::Entries(WalEntriesV1(&entries)));
    // len (4) crc (4) record kind (1) | count 4 (1) | term 7 (1), index
    // 1000 (2: e8 07), entry kind (1) ...
    assert_eq!(bytes[8..14], [RecordKind::Entries as u8, 4, 7, 0xe8, 0x07, 0]);
    bytes[13] = 2;
    recrc(&mut bytes);
    let raw = parse_record(&bytes, 0).unwrap();
    let err = decode_record(RecordKind::Entries, raw.payload).unwrap_err();
    assert!(err.to_string().contains("entry 1000 has unknown kind 2"), "{err}");

    // Through recovery: refused as corruption at the record's offset.
    let dir = TempDir::new().unwrap();
    let mut segment = segment_header().to_vec();
    segment.extend_from_slice(&bytes);
    fs::write(dir.path().join(segment_file_name(1)), &segment).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { offset: 16, reason, .. } if reason.contains("unknown kind 2")),
        "{err:?}"
    );
}

/// The history the golden segment holds: a vote, entries, then a new term
/// that truncates and replaces the last entry.
fn segment_history() -> (Vec<Persist>, PersistedState) {
    let first = vec![entry(1, 1, EntryKind::Noop, b""), entry(1, 2, EntryKind::Normal, b"a")];
    let second = vec![entry(2, 2, EntryKind::Normal, b"bb"), entry(2, 3, EntryKind::Normal, b"")];
    let persists = vec![
        Persist {
            seq: 1,
            hard_state: Some(HardState { term: 1, vote: Some(2) }),
            snapshot: None,
            truncate_from: None,
            entries: first,
        },
        Persist {
            seq: 2,
            hard_state: Some(HardState { term: 2, vote: None }),
            snapshot: None,
            truncate_from: Some(2),
            entries: second.clone(),
        },
    ];
    let mut entries = vec![entry(1, 1, EntryKind::Noop, b"")];
    entries.extend(second);
    (persists, PersistedState { hard_state: HardState { term: 2, vote: None }, snapshot: None, entries })
}

/// Writes the golden history with [`Wal::write`] (what really goes to
/// disk, not just what the record encoder produces in isolation), checks
/// the segment against the committed file and returns the committed bytes.
fn check_segment() -> Vec<u8> {
    let (persists, _) = segment_history();
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for persist in &persists {
        wal.write(persist).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let written = fs::read(dir.path().join(segment_file_name(1))).unwrap();
    golden::check(SEGMENT, &written)
}

#[test]
fn wal_golden_segment_written_and_replayed() {
    let (_, expected) = segment_history();
    let committed = check_segment();

    let replay_dir = TempDir::new().unwrap();
    fs::write(replay_dir.path().join(segment_file_name(1)), &committed).unwrap();
    let (_, state, report) = Wal::open(replay_dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state, expected);
    // hard state, entries, hard state, truncate, entries
    assert_eq!((report.records, report.bytes, report.torn_tail_bytes), (5, committed.len() as u64, 0));
}

/// A segment whose header names another version is refused, naming the
/// file, the version found and the versions supported, and is left as it
/// was (an old binary must not "repair" a newer binary's file).
#[test]
fn wal_golden_segment_of_unknown_version_is_refused_untouched() {
    let committed = check_segment();
    for found in [0u32, 2, 0x0100_0000] {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = committed.clone();
        bytes[8..12].copy_from_slice(&found.to_le_bytes());
        fs::write(&path, &bytes).unwrap();

        let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
        match &err {
            WalError::UnsupportedVersion { file, found: f, supported } => {
                assert_eq!((file, *f, *supported), (&path, found, &[1u32][..]));
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        let message = err.to_string();
        for needle in [path.display().to_string(), format!("version {found}"), "version(s) [1]".into()] {
            assert!(message.contains(&needle), "{message:?} lacks {needle:?}");
        }
        assert_eq!(fs::read(&path).unwrap(), bytes, "refused segment must not be modified");
        let report = inspect(dir.path()).unwrap();
        assert_eq!((report.health, report.corrupt_offset), (WalHealth::UnsupportedVersion, Some(8)));
        assert!(report.health.refuses_to_open());
        assert_eq!(report.error, Some(message));
    }
}

#[test]
fn wal_golden_segment_with_nonzero_reserved_field_is_refused() {
    let mut bytes = check_segment();
    bytes[12] = 1;
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join(segment_file_name(1)), &bytes).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { offset: 12, .. }), "{err:?}");
}
