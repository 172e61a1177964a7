//! Golden tests of WAL format versions 1 to 3: the committed files in
//! `tests/golden/wal-v1-*.bin`, `wal-v2-*.bin` and `wal-v3-*.bin` are decoded and compared
//! with the expected core values, and the values are encoded and compared
//! with the files. Version 2 only added the snapshot record, so the v1
//! record files are also what this build writes for those records; the v1
//! segment is written by this build with a v3 header and otherwise
//! identical bytes, and is still read and appended to as it is. Version 3
//! changed the snapshot marker's payload and added Config entries: the v2
//! marker segment is only read (this build writes markers as v3).
//!
//! Every field of every case has a value no other field of the case has,
//! and the integers span one-, two-, three- and ten-byte varints, so an
//! encoder that swaps two fields or changes an integer encoding cannot
//! produce the same bytes by accident.

use std::fs;

use raft_core::{Bytes, Entry, EntryKind, HardState, Membership, Persist, PersistedState, SnapshotMeta};
use tempfile::TempDir;

use super::format::{
    RecordKind, SEGMENT_HEADER_LEN, append_record, parse_record, segment_file_name, segment_header, segment_header_for,
};
use super::record::{Decoded, Record, WalEntriesV1, WalSnapshotV3, WalTruncateV1, decode_record};
use super::{Wal, WalError, WalHealth, WalOptions, inspect};
use crate::golden;

const SEGMENT_HEADER: &str = "wal-v1-segment-header.bin";
const HARD_STATE: &str = "wal-v1-record-hard-state.bin";
const HARD_STATE_NO_VOTE: &str = "wal-v1-record-hard-state-no-vote.bin";
const TRUNCATE: &str = "wal-v1-record-truncate.bin";
const ENTRIES: &str = "wal-v1-record-entries.bin";
const SEGMENT: &str = "wal-v1-segment.bin";
const SEGMENT_V2_SNAPSHOT: &str = "wal-v2-segment-snapshot.bin";
const SEGMENT_V3_SNAPSHOT: &str = "wal-v3-segment-snapshot.bin";

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
    decode_record(kind, raw.payload, super::WAL_FORMAT_VERSION).expect("valid payload")
}

#[test]
fn wal_golden_files_are_exactly_the_tested_cases() {
    let mut names: Vec<&str> = record_cases(&golden_entries()).iter().map(|(name, ..)| *name).collect();
    names.extend([SEGMENT_HEADER, SEGMENT, SEGMENT_V2_SNAPSHOT, SEGMENT_V3_SNAPSHOT]);
    golden::assert_complete("wal-", &names);
}

#[test]
fn wal_golden_segment_header() {
    let committed = golden::check(SEGMENT_HEADER, &segment_header_for(1));
    // Spelled out as well, so that the constants it is built from cannot
    // drift together with the file.
    assert_eq!(committed, b"RAFTWAL\0\x01\0\0\0\0\0\0\0");
    // What this build writes into new segments (pinned by the v3 segment
    // golden file as well).
    assert_eq!(segment_header(), *b"RAFTWAL\0\x03\0\0\0\0\0\0\0");
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
    bytes[13] = 3;
    recrc(&mut bytes);
    let raw = parse_record(&bytes, 0).unwrap();
    let err = decode_record(RecordKind::Entries, raw.payload, super::WAL_FORMAT_VERSION).unwrap_err();
    assert!(err.to_string().contains("entry 1000 has unknown kind 3"), "{err}");

    // Through recovery: refused as corruption at the record's offset.
    let dir = TempDir::new().unwrap();
    let mut segment = segment_header().to_vec();
    segment.extend_from_slice(&bytes);
    fs::write(dir.path().join(segment_file_name(1)), &segment).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { offset: 16, reason, .. } if reason.contains("unknown kind 3")),
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
    // A new segment is of the current version; every record after the
    // header has the same bytes in all versions.
    assert_eq!(written[..SEGMENT_HEADER_LEN], segment_header());
    let mut as_v1 = segment_header_for(1).to_vec();
    as_v1.extend_from_slice(&written[SEGMENT_HEADER_LEN..]);
    golden::check(SEGMENT, &as_v1)
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

/// A version-1 directory keeps working: appended to in place (the segment
/// stays version 1), and a snapshot marker starts a version-2 segment.
#[test]
fn wal_golden_v1_segment_is_appended_to_and_then_followed_by_v2() {
    let (_, mut expected) = segment_history();
    let committed = check_segment();
    let dir = TempDir::new().unwrap();
    let v1 = dir.path().join(segment_file_name(1));
    fs::write(&v1, &committed).unwrap();
    let (mut wal, state, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state, expected);
    let more = vec![entry(2, 4, EntryKind::Normal, b"c")];
    wal.write(&Persist { seq: 1, hard_state: None, snapshot: None, truncate_from: None, entries: more.clone() })
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let appended = fs::read(&v1).unwrap();
    assert_eq!(appended[..committed.len()], committed[..], "appended, not rewritten");
    assert_eq!(appended[8], 1, "still a version-1 segment");
    expected.entries.extend(more);
    let (mut wal, state, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state, expected);

    let snapshot =
        SnapshotMeta { last_included_index: 2, last_included_term: 2, membership: Membership::new(vec![1, 2]) };
    wal.write(&Persist {
        seq: 2,
        hard_state: None,
        snapshot: Some(snapshot.clone()),
        truncate_from: None,
        entries: vec![],
    })
    .unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(fs::read(dir.path().join(segment_file_name(2))).unwrap()[8], 3);
    let (_, state, report) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    expected.follow_snapshot(snapshot);
    assert_eq!(state, expected);
    assert_eq!((report.segments, report.snapshot_index, report.first_index), (2, 2, 3));
}

/// A Snapshot record in a version-1 segment is corruption: version 1 has
/// no record kind 4, whatever the bytes after it say.
#[test]
fn wal_golden_snapshot_record_in_a_v1_segment_is_refused() {
    let snapshot =
        WalSnapshotV3 { last_included_index: 2, last_included_term: 1, membership: Membership::new(vec![1]).encode() };
    let mut v2 = segment_header().to_vec();
    append_record(&mut v2, &Record::HardState(HardState { term: 1, vote: None }.into())).unwrap();
    let marker_at = v2.len();
    append_record(&mut v2, &Record::Snapshot(&snapshot)).unwrap();
    let mut v1 = v2.clone();
    v1[..SEGMENT_HEADER_LEN].copy_from_slice(&segment_header_for(1));

    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join(segment_file_name(1)), &v1).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    match &err {
        WalError::Corrupt { offset, reason, .. } => {
            assert_eq!(*offset as usize, marker_at);
            assert!(reason.contains("Snapshot record (kind 4) in a version-1 segment"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // The same records in a current segment are fine.
    fs::write(dir.path().join(segment_file_name(1)), &v2).unwrap();
    let (_, state, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state.snapshot.map(|m| m.last_included_index), Some(2));
}

/// A segment of `version` holding records whose kind-and-payload bytes are
/// `bodies`, framed by hand (little-endian length, CRC-32C over the length
/// bytes, the kind and the payload), so that a golden file is checked
/// against bytes written out in the test rather than by the encoder.
fn spell_segment(version: u8, bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = b"RAFTWAL\0".to_vec();
    out.extend_from_slice(&[version, 0, 0, 0, 0, 0, 0, 0]);
    for body in bodies {
        let len = u8::try_from(body.len()).expect("short records").to_le_bytes()[0];
        out.extend_from_slice(&[len, 0, 0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[len, 0, 0, 0]), body);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// The history of the v2 golden segment: entries 1..=2, then a snapshot
/// through 300 (installed from a leader, past this log's end) with a new
/// hard state and two entries after it. Only the second segment (the one
/// the marker opened) is the golden file. Version 2 markers held a voter
/// list, read back as a configuration of those voters.
fn snapshot_segment_history_v2() -> PersistedState {
    let meta = SnapshotMeta {
        last_included_index: 300,
        last_included_term: 2,
        membership: Membership::new(vec![1, 2, 70_000]),
    };
    let after = vec![entry(3, 301, EntryKind::Normal, b"x"), entry(3, 302, EntryKind::Noop, b"")];
    PersistedState { hard_state: HardState { term: 3, vote: Some(2) }, snapshot: Some(meta), entries: after }
}

/// Version 2, a segment a marker opened (written by an earlier build; this
/// build writes markers as version 3, so the file is only read):
///
/// ```text
/// header    52 41 46 54 57 41 4c 00 | 02 00 00 00 | 00 00 00 00
/// HardState 04 00 00 00 | crc | 01 | term 3: 03 | vote Some(2): 01 02
/// Snapshot  0a 00 00 00 | crc | 04 | last_included_index 300: ac 02
///           | last_included_term 2: 02 | voters: count 3: 03, 1: 01,
///           2: 02, 70000: f0 a2 04
/// Entries   0d 00 00 00 | crc | 03 | count 2: 02
///           | term 3: 03 | index 301: ad 02 | kind normal: 00 | data: 01 78
///           | term 3: 03 | index 302: ae 02 | kind noop: 01 | data: 00
/// ```
#[test]
fn wal_golden_v2_segment_with_snapshot_is_replayed_and_appended_to() {
    let committed = fs::read(golden::dir().join(SEGMENT_V2_SNAPSHOT)).expect("committed v2 segment");
    let spelled = spell_segment(
        2,
        &[
            &[0x01, 0x03, 0x01, 0x02],
            &[0x04, 0xac, 0x02, 0x02, 0x03, 0x01, 0x02, 0xf0, 0xa2, 0x04],
            &[0x03, 0x02, 0x03, 0xad, 0x02, 0x00, 0x01, 0x78, 0x03, 0xae, 0x02, 0x01, 0x00],
        ],
    );
    assert_eq!(committed, spelled);

    let replay_dir = TempDir::new().unwrap();
    fs::write(replay_dir.path().join(segment_file_name(2)), &committed).unwrap();
    let (mut wal, state, report) = Wal::open(replay_dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state, snapshot_segment_history_v2());
    assert_eq!(
        (report.records, report.snapshot_index, report.snapshot_term, report.first_index, report.last_index),
        (3, 300, 2, 301, 302)
    );
    // Appended to in place, a Config entry included (version 3 entries are
    // read from segments of any version).
    let config = Membership { learners: vec![4], ..Membership::new(vec![1, 2, 70_000]) };
    let more = vec![Entry { term: 3, index: 303, kind: EntryKind::Config, data: config.encode() }];
    wal.write(&Persist { seq: 1, hard_state: None, snapshot: None, truncate_from: None, entries: more.clone() })
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state, _) = Wal::open(replay_dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state.entries.last(), more.last());
}

/// The history of the v3 golden segment: entries 1..=2, then a snapshot
/// through 300 whose configuration is joint, with learners and a context,
/// with a new hard state and, after it, a Config entry and a normal one.
fn snapshot_segment_history_v3() -> (Vec<Persist>, PersistedState) {
    let membership = Membership {
        voters: vec![1, 2, 70_000],
        outgoing: vec![1, 2, 3],
        learners: vec![9],
        context: Bytes::from_static(b"ctx"),
    };
    let meta = SnapshotMeta { last_included_index: 300, last_included_term: 2, membership };
    let leave_joint = Membership::new(vec![1, 2, 70_000]);
    let after = vec![
        Entry { term: 3, index: 301, kind: EntryKind::Config, data: leave_joint.encode() },
        entry(3, 302, EntryKind::Normal, b"x"),
    ];
    let hard_state = HardState { term: 3, vote: Some(2) };
    let persists = vec![
        Persist {
            seq: 1,
            hard_state: Some(HardState { term: 1, vote: Some(1) }),
            snapshot: None,
            truncate_from: None,
            entries: vec![entry(1, 1, EntryKind::Noop, b""), entry(1, 2, EntryKind::Normal, b"a")],
        },
        Persist {
            seq: 2,
            hard_state: Some(hard_state),
            snapshot: Some(meta.clone()),
            truncate_from: None,
            entries: after.clone(),
        },
    ];
    (persists, PersistedState { hard_state, snapshot: Some(meta), entries: after })
}

/// Version 3, a segment a marker opened:
///
/// ```text
/// header    52 41 46 54 57 41 4c 00 | 03 00 00 00 | 00 00 00 00
/// HardState 04 00 00 00 | crc | 01 | term 3: 03 | vote Some(2): 01 02
/// Snapshot  16 00 00 00 | crc | 04 | last_included_index 300: ac 02
///           | last_included_term 2: 02 | membership: length 17: 11,
///           version 01, voters 03 01 02 f0 a2 04, outgoing 03 01 02 03,
///           learners 01 09, context 03 "ctx"
/// Entries   17 00 00 00 | crc | 03 | count 2: 02
///           | term 3: 03 | index 301: ad 02 | kind config: 02 | data: 0a
///             01 03 01 02 f0 a2 04 00 00 00
///           | term 3: 03 | index 302: ae 02 | kind normal: 00 | data: 01 78
/// ```
#[test]
fn wal_golden_v3_segment_with_snapshot_written_and_replayed() {
    let (persists, expected) = snapshot_segment_history_v3();
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for p in &persists {
        wal.write(p).unwrap();
    }
    wal.sync().unwrap();
    assert_eq!(wal.segments_deleted(), 1);
    drop(wal);
    let written = fs::read(dir.path().join(segment_file_name(2))).unwrap();
    let committed = golden::check(SEGMENT_V3_SNAPSHOT, &written);

    let mut snapshot = vec![0x04, 0xac, 0x02, 0x02, 17, 0x01, 0x03, 0x01, 0x02, 0xf0, 0xa2, 0x04];
    snapshot.extend_from_slice(&[0x03, 0x01, 0x02, 0x03, 0x01, 0x09, 0x03, b'c', b't', b'x']);
    let mut entries = vec![0x03, 0x02, 0x03, 0xad, 0x02, 0x02, 0x0a, 0x01, 0x03, 0x01, 0x02, 0xf0, 0xa2, 0x04];
    entries.extend_from_slice(&[0x00, 0x00, 0x00, 0x03, 0xae, 0x02, 0x00, 0x01, 0x78]);
    assert_eq!(committed, spell_segment(3, &[&[0x01, 0x03, 0x01, 0x02], &snapshot, &entries]));

    let replay_dir = TempDir::new().unwrap();
    fs::write(replay_dir.path().join(segment_file_name(2)), &committed).unwrap();
    let (_, state, report) = Wal::open(replay_dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state, expected);
    assert_eq!((report.records, report.snapshot_index, report.first_index, report.last_index), (3, 300, 301, 302));
}

/// A Config entry whose configuration does not decode is refused as
/// corruption, and a write of one is refused before it reaches the disk.
#[test]
fn wal_golden_config_entry_that_does_not_decode_is_refused() {
    let bad = vec![Entry { term: 1, index: 1, kind: EntryKind::Config, data: Bytes::from_static(b"\x01\x00") }];
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let persist = Persist { seq: 1, hard_state: None, snapshot: None, truncate_from: None, entries: bad.clone() };
    let err = wal.write(&persist).unwrap_err();
    assert!(err.to_string().contains("config entry 1 does not decode"), "{err}");
    drop(wal);
    // Written behind the WAL's back: refused on replay, naming the entry.
    let mut segment = segment_header().to_vec();
    append_record(&mut segment, &Record::Entries(WalEntriesV1(&bad))).unwrap();
    fs::write(dir.path().join(segment_file_name(1)), &segment).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(matches!(&err, WalError::Corrupt { reason, .. } if reason.contains("configuration at index 1")), "{err:?}");
}

/// A segment whose header names another version is refused, naming the
/// file, the version found and the versions supported, and is left as it
/// was (an old binary must not "repair" a newer binary's file).
#[test]
fn wal_golden_segment_of_unknown_version_is_refused_untouched() {
    let committed = check_segment();
    for found in [0u32, 4, 0x0100_0000] {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = committed.clone();
        bytes[8..12].copy_from_slice(&found.to_le_bytes());
        fs::write(&path, &bytes).unwrap();

        let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
        match &err {
            WalError::UnsupportedVersion { file, found: f, supported } => {
                assert_eq!((file, *f, *supported), (&path, found, &[1u32, 2, 3][..]));
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        let message = err.to_string();
        for needle in [path.display().to_string(), format!("version {found}"), "version(s) [1, 2, 3]".into()] {
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
