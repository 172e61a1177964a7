//! WAL tests: round trips, segment rotation, crash recovery, corruption,
//! group commit, and a model-based property test.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use raft_core::{Bytes, Entry, EntryKind, HardState, Persist, PersistedState, SnapshotMeta};
use tempfile::TempDir;

use super::format::{RECORD_HEADER_LEN, RecordKind, SEGMENT_HEADER_LEN, parse_record, segment_header};
use super::recovery::{list_segments, replay};
use super::*;

fn entry(term: u64, index: u64, data: &[u8]) -> Entry {
    Entry { term, index, kind: EntryKind::Normal, data: Bytes::copy_from_slice(data) }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i, format!("entry {i} of term {term}").as_bytes())).collect()
}

fn persist(seq: u64, hard_state: Option<HardState>, truncate_from: Option<u64>, entries: Vec<Entry>) -> Persist {
    Persist { seq, hard_state, snapshot: None, truncate_from, entries }
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_included_index: index,
        last_included_term: term,
        membership: raft_core::Membership::new(vec![1, 2, 3]),
    }
}

/// A write carrying a snapshot marker.
fn marker(seq: u64, hard_state: Option<HardState>, snapshot: SnapshotMeta, entries: Vec<Entry>) -> Persist {
    Persist { seq, hard_state, snapshot: Some(snapshot), truncate_from: None, entries }
}

fn hs(term: u64, vote: Option<u64>) -> HardState {
    HardState { term, vote }
}

fn tiny(segment_size: u64) -> WalOptions {
    WalOptions::default().with_segment_size(segment_size)
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    list_segments(dir).unwrap().into_iter().map(|s| s.path).collect()
}

fn reopen(dir: &Path, options: WalOptions) -> (Wal, PersistedState, RecoveryReport) {
    Wal::open(dir, options).unwrap_or_else(|e| panic!("reopen failed: {e}"))
}

/// Copies every segment of `from` into a fresh directory.
fn copy_dir(from: &Path) -> TempDir {
    let to = TempDir::new().unwrap();
    for p in segment_paths(from) {
        fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
    }
    to
}

#[test]
fn wal_round_trip_hard_state_and_entries() {
    let dir = TempDir::new().unwrap();
    let (mut wal, state, report) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(state, PersistedState::default());
    assert_eq!((report.records, report.torn_tail_bytes), (0, 0));

    wal.write(&persist(1, Some(hs(3, Some(2))), None, entries(3, 1..=10))).unwrap();
    wal.write(&persist(2, None, None, vec![Entry { kind: EntryKind::Noop, ..entry(3, 11, b"") }])).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (mut wal, state, report) = reopen(dir.path(), WalOptions::default());
    assert_eq!(state.hard_state, hs(3, Some(2)));
    assert_eq!(state.entries.len(), 11);
    assert_eq!(state.entries[..10], entries(3, 1..=10)[..]);
    assert_eq!(state.entries[10].kind, EntryKind::Noop);
    assert_eq!((report.first_index, report.last_index, report.term, report.vote), (1, 11, 3, Some(2)));
    assert_eq!((report.segments, report.records, report.torn_tail_bytes), (1, 3, 0));
    assert_eq!(report.bytes, fs::metadata(wal.current_segment()).unwrap().len());

    wal.write(&persist(1, Some(hs(4, None)), None, vec![])).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state, _) = reopen(dir.path(), WalOptions::default());
    assert_eq!(state.hard_state, hs(4, None));
    assert_eq!(state.entries.len(), 11);
}

#[test]
fn wal_truncate_and_reappend_across_segments() {
    let dir = TempDir::new().unwrap();
    let opts = tiny(200);
    let (mut wal, _, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    for i in 1..=40 {
        wal.write(&persist(i, Some(hs(1, Some(1))), None, entries(1, i..=i))).unwrap();
    }
    wal.sync().unwrap();
    let before = segment_paths(dir.path()).len();
    assert!(before > 5, "expected many segments, got {before}");

    // Entries 5..=40 span most segments; the truncation must remove them
    // all even though they live in files written long ago.
    wal.write(&persist(41, Some(hs(2, Some(3))), Some(5), entries(2, 5..=8))).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.last_index(), 8);
    drop(wal);

    let (mut wal, state, report) = reopen(dir.path(), opts.clone());
    let mut expected = entries(1, 1..=4);
    expected.extend(entries(2, 5..=8));
    assert_eq!(state.entries, expected);
    assert_eq!(state.hard_state, hs(2, Some(3)));
    assert_eq!(report.segments as usize, segment_paths(dir.path()).len());

    // Truncate to before everything, then grow past several segments again.
    wal.write(&persist(1, None, Some(1), entries(3, 1..=3))).unwrap();
    for i in 4..=30 {
        wal.write(&persist(i, None, None, entries(3, i..=i))).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let (_, state, _) = reopen(dir.path(), opts);
    assert_eq!(state.entries, entries(3, 1..=30));
}

#[test]
fn wal_reopen_after_many_writes() {
    let dir = TempDir::new().unwrap();
    let opts = tiny(16 * 1024);
    let mut next = 1u64;
    for round in 0..4u64 {
        let (mut wal, state, report) = reopen(dir.path(), opts.clone());
        assert_eq!(state.entries.len() as u64, next - 1);
        assert_eq!(report.last_index, next - 1);
        assert_eq!(state.hard_state.term, round);
        wal.write(&persist(1, Some(hs(round + 1, Some(1))), None, vec![])).unwrap();
        for seq in 0..500 {
            let batch = entries(round + 1, next..=next + seq % 3);
            next += batch.len() as u64;
            wal.write(&persist(seq + 2, None, None, batch)).unwrap();
            if seq % 50 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
    }
    let (_, state, _) = reopen(dir.path(), opts);
    assert!(segment_paths(dir.path()).len() > 4);
    for (i, e) in state.entries.iter().enumerate() {
        assert_eq!(e.index, i as u64 + 1);
    }
}

/// Writes some history plus one final record; returns the directory, the
/// state before the final record, the segment length before it, and the
/// full segment bytes.
fn history_with_final_record() -> (TempDir, PersistedState, usize, Vec<u8>) {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(&persist(1, Some(hs(1, Some(1))), None, entries(1, 1..=3))).unwrap();
    wal.write(&persist(2, Some(hs(2, None)), Some(3), entries(2, 3..=5))).unwrap();
    wal.sync().unwrap();
    let before_len = fs::metadata(wal.current_segment()).unwrap().len() as usize;
    wal.write(&persist(3, None, None, entries(2, 6..=8))).unwrap();
    wal.sync().unwrap();
    let seg = wal.current_segment().to_path_buf();
    drop(wal);
    let full = fs::read(&seg).unwrap();
    let mut expected = entries(1, 1..=2);
    expected.extend(entries(2, 3..=5));
    (dir, PersistedState { hard_state: hs(2, None), snapshot: None, entries: expected }, before_len, full)
}

#[test]
fn wal_torn_tail_at_every_offset_recovers_earlier_records() {
    let (src, expected, before_len, full) = history_with_final_record();
    let name = segment_paths(src.path())[0].file_name().unwrap().to_owned();
    for cut in before_len..full.len() {
        let dir = TempDir::new().unwrap();
        let seg = dir.path().join(&name);
        fs::write(&seg, &full[..cut]).unwrap();

        // inspect reports the torn tail but must not repair it.
        let report = inspect(dir.path()).unwrap();
        let torn = (cut - before_len) as u64;
        let health = if torn == 0 { WalHealth::Ok } else { WalHealth::TornTail };
        assert_eq!(report.health, health, "cut at {cut}");
        assert_eq!(report.wal.torn_tail_bytes, torn);
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, cut);

        let (mut wal, state, report) = reopen(dir.path(), WalOptions::default());
        assert_eq!(state, expected, "cut at {cut}");
        assert_eq!(report.torn_tail_bytes, torn);
        assert_eq!(report.torn_tail_file.is_some(), torn > 0);
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, before_len);

        // The log continues cleanly after the cut.
        wal.write(&persist(1, None, None, entries(7, 6..=6))).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, state, report) = reopen(dir.path(), WalOptions::default());
        assert_eq!(state.entries.last().unwrap().term, 7);
        assert_eq!(report.torn_tail_bytes, 0);
    }
}

#[test]
fn wal_garbage_or_zeros_after_last_record_is_a_torn_tail() {
    let (src, _, _, full) = history_with_final_record();
    let seg = segment_paths(src.path())[0].clone();
    for junk in [vec![0u8; 4096], vec![0xFF; 100], vec![0x03; 9]] {
        let dir = copy_dir(src.path());
        let path = dir.path().join(seg.file_name().unwrap());
        let mut bytes = full.clone();
        bytes.extend_from_slice(&junk);
        fs::write(&path, &bytes).unwrap();
        let (_, state, report) = reopen(dir.path(), WalOptions::default());
        assert_eq!(state.entries.len(), 8);
        assert_eq!(report.torn_tail_bytes, junk.len() as u64);
    }

    // A bad checksum in the very last record is a torn tail too: nothing
    // valid follows it, so it cannot have been acknowledged after anything.
    let dir = copy_dir(src.path());
    let path = dir.path().join(seg.file_name().unwrap());
    let mut bytes = full.clone();
    *bytes.last_mut().unwrap() ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let (_, state, report) = reopen(dir.path(), WalOptions::default());
    assert_eq!(state.entries.len(), 5);
    assert!(report.torn_tail_bytes > 0);
}

/// Record start offsets of a segment with only valid records.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while off < bytes.len() {
        offsets.push(off);
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += RECORD_HEADER_LEN + len;
    }
    offsets
}

#[test]
fn wal_flipped_byte_in_middle_record_is_refused_with_file_and_offset() {
    let (src, _, _, full) = history_with_final_record();
    let seg_name = segment_paths(src.path())[0].file_name().unwrap().to_owned();
    let offsets = record_offsets(&full);
    assert!(offsets.len() >= 4);
    let victim = offsets[1];
    // Flip a payload byte, a CRC byte and a length byte in turn.
    for at in [victim + RECORD_HEADER_LEN + 1, victim + 5, victim] {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(&seg_name);
        let mut bytes = full.clone();
        bytes[at] ^= 0x10;
        fs::write(&path, &bytes).unwrap();

        let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
        match &err {
            WalError::Corrupt { file, offset, .. } => {
                assert_eq!(file, &path);
                assert_eq!(*offset as usize, victim, "flip at {at}: {err}");
            }
            other => panic!("expected corruption, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("offset {victim}")), "{msg}");
        // Refusing must not modify anything.
        assert_eq!(fs::read(&path).unwrap(), bytes);

        let report = inspect(dir.path()).unwrap();
        assert_eq!(report.health, WalHealth::Corrupt);
        assert_eq!(report.corrupt_offset, Some(victim as u64));
        assert_eq!(report.corrupt_file, Some(path.display().to_string()));
        assert_eq!(report.wal.records, 1, "replay stops at the damage");
    }
}

#[test]
fn wal_damage_in_a_non_last_segment_is_refused() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), tiny(150)).unwrap();
    for i in 1..=20 {
        wal.write(&persist(i, None, None, entries(1, i..=i))).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let segs = segment_paths(dir.path());
    assert!(segs.len() >= 3);

    // Even a cut at the very end of an earlier segment is corruption:
    // rotation made that segment durable before the next one existed.
    let first = &segs[0];
    let len = fs::metadata(first).unwrap().len();
    fs::OpenOptions::new().write(true).open(first).unwrap().set_len(len - 1).unwrap();
    let err = Wal::open(dir.path(), tiny(150)).unwrap_err();
    assert!(matches!(&err, WalError::Corrupt { file, .. } if file == first), "{err}");

    // A missing segment is lost data.
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), tiny(150)).unwrap();
    for i in 1..=20 {
        wal.write(&persist(i, None, None, entries(1, i..=i))).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    fs::remove_file(&segment_paths(dir.path())[1]).unwrap();
    let err = Wal::open(dir.path(), tiny(150)).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn wal_torn_segment_header_is_removed() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(&persist(1, Some(hs(5, Some(5))), None, entries(5, 1..=2))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    // A crash while creating segment 2: only part of its header made it.
    let torn = dir.path().join("wal-0000000000000002.log");
    fs::write(&torn, &segment_header()[..7]).unwrap();
    assert_eq!(inspect(dir.path()).unwrap().health, WalHealth::TornTail);

    let (mut wal, state, report) = reopen(dir.path(), WalOptions::default());
    assert!(!torn.exists());
    assert_eq!(report.torn_tail_bytes, 7);
    assert_eq!(state.entries.len(), 2);
    wal.write(&persist(2, None, None, entries(5, 3..=3))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(reopen(dir.path(), WalOptions::default()).1.entries.len(), 3);

    // A full-length header that is wrong is not a crash artefact.
    fs::write(&torn, b"NOTAWAL!garbagegarbage").unwrap();
    assert!(matches!(Wal::open(dir.path(), WalOptions::default()), Err(WalError::Corrupt { offset: 0, .. })));
}

#[test]
fn wal_invalid_writes_are_refused_without_writing() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(&persist(1, None, None, entries(1, 1..=3))).unwrap();
    let gap = wal.write(&persist(2, Some(hs(9, None)), None, entries(1, 5..=5))).unwrap_err();
    assert!(matches!(gap, WalError::InvalidWrite { .. }), "{gap}");
    assert!(matches!(wal.write(&persist(3, None, Some(0), vec![])), Err(WalError::InvalidWrite { .. })));
    // Recovery refuses a vote for node 0, so writing one must fail too.
    let zero_vote = wal.write(&persist(3, Some(hs(9, Some(0))), None, entries(1, 4..=4))).unwrap_err();
    assert!(matches!(zero_vote, WalError::InvalidWrite { .. }), "{zero_vote}");
    // Truncating past the end deletes nothing; entries must still follow.
    wal.write(&persist(4, None, Some(10), entries(1, 4..=4))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state, _) = reopen(dir.path(), WalOptions::default());
    assert_eq!(state, PersistedState { hard_state: HardState::default(), snapshot: None, entries: entries(1, 1..=4) });
}

#[test]
fn wal_large_batch_is_split_and_oversized_records_get_own_segment() {
    let dir = TempDir::new().unwrap();
    let opts = tiny(1000);
    let (mut wal, _, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let mut batch: Vec<Entry> = (1..=50).map(|i| entry(1, i, &[i as u8; 40])).collect();
    batch.push(entry(1, 51, &[7; 5000]));
    wal.write(&persist(1, None, None, batch.clone())).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state, report) = reopen(dir.path(), opts);
    assert_eq!(state.entries, batch);
    assert!(report.records > 2, "batch should be split, got {} records", report.records);
}

#[test]
fn wal_inspect_is_read_only_and_serializes() {
    let (src, _, _, full) = history_with_final_record();
    let seg = segment_paths(src.path())[0].clone();
    fs::write(&seg, &full[..full.len() - 3]).unwrap();
    let report = inspect(src.path()).unwrap();
    assert_eq!(fs::read(&seg).unwrap().len(), full.len() - 3);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["health"], "torn_tail");
    assert_eq!(json["wal"]["term"], 2);
    assert_eq!(json["wal"]["vote"], serde_json::Value::Null);
    assert_eq!(json["wal"]["first_index"], 1);
    assert_eq!(json["wal"]["last_index"], 5);
    assert!(inspect(src.path().join("missing")).is_err());
}

#[test]
fn wal_writer_group_commits_and_reports_seqs_in_order() {
    let dir = TempDir::new().unwrap();
    let (wal, _, _) = Wal::open(dir.path(), tiny(64 * 1024)).unwrap();
    let fsyncs_at_open = wal.fsync_count();
    let reported = Arc::new(Mutex::new(Vec::new()));
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let sink = Arc::clone(&reported);
    let writer = WalWriter::spawn(wal, 1024, move |r: Result<u64, &WalError>| {
        let seq = r.expect("no WAL errors");
        let first = {
            let mut v = sink.lock().unwrap();
            v.push(seq);
            v.len() == 1
        };
        if first {
            // Hold the writer (as a slow fsync would) while more queue up.
            release_rx.recv().unwrap();
        }
    })
    .unwrap();

    const N: u64 = 500;
    writer.submit(persist(1, Some(hs(1, Some(1))), None, entries(1, 1..=1))).unwrap();
    for seq in 2..=N {
        writer.submit(persist(seq, None, None, entries(1, seq..=seq))).unwrap();
    }
    release_tx.send(()).unwrap();
    let wal = writer.shutdown().unwrap();

    let seqs = reported.lock().unwrap().clone();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), N);
    let group_fsyncs = wal.fsync_count() - fsyncs_at_open;
    assert!(group_fsyncs < N / 10, "{group_fsyncs} fsyncs for {N} writes");
    assert!(seqs.len() <= 2, "queued writes should share a group: {seqs:?}");
    drop(wal);
    let (_, state, _) = reopen(dir.path(), WalOptions::default());
    assert_eq!(state.entries.len() as u64, N);
}

#[test]
fn wal_writer_stats_and_error_stop() {
    let dir = TempDir::new().unwrap();
    let (wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&errors);
    let writer = WalWriter::spawn(wal, 4, move |r: Result<u64, &WalError>| {
        if let Err(e) = r {
            sink.lock().unwrap().push(e.to_string());
        }
    })
    .unwrap();
    writer.submit(persist(1, None, None, entries(1, 1..=2))).unwrap();
    // Wait for the first group so the stats are deterministic.
    while writer.stats().durable_seq < 1 {
        std::thread::yield_now();
    }
    let stats = writer.stats();
    assert_eq!((stats.persists, stats.groups, stats.durable_seq), (1, 1, 1));
    // A write that does not follow the log stops the writer.
    writer.submit(persist(2, None, None, entries(1, 9..=9))).unwrap();
    let err = writer.shutdown().unwrap_err();
    assert!(matches!(err, WalError::InvalidWrite { .. }));
    assert_eq!(errors.lock().unwrap().len(), 1);
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Op {
    Write {
        hard_state: Option<(u64, Option<u64>)>,
        /// A snapshot marker this far behind the log's end (or up to 2 past it).
        snapshot_back: Option<u64>,
        truncate_back: Option<u64>,
        count: u64,
        data_len: usize,
    },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            proptest::option::of((0u64..5, proptest::option::of(1u64..4))),
            proptest::option::weighted(0.12, 0u64..10),
            proptest::option::weighted(0.3, 0u64..12),
            0u64..5,
            0usize..60,
        )
            .prop_map(|(hard_state, snapshot_back, truncate_back, count, data_len)| Op::Write {
                hard_state,
                snapshot_back,
                truncate_back,
                count,
                data_len
            }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_in_memory_model(segment_size in 64u64..1500, ops in proptest::collection::vec(op_strategy(), 1..60)) {
        let dir = TempDir::new().unwrap();
        let opts = tiny(segment_size);
        let (mut wal, _, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        let mut model = PersistedState::default();
        for (seq, op) in ops.into_iter().enumerate() {
            match op {
                Op::Write { hard_state, snapshot_back, truncate_back, count, data_len } => {
                    let hard_state = hard_state.map(|(term, vote)| hs(term, vote));
                    let last = model.last_index();
                    let base = model.snapshot.as_ref().map_or(0, |m| m.last_included_index);
                    // Never older than the current one (the core only moves
                    // forward), sometimes past the end of the log.
                    let snapshot = snapshot_back.map(|b| meta((last + 2).saturating_sub(b).max(base).max(1), 1));
                    // From 1 up to one past the end (which deletes nothing).
                    let truncate_from = truncate_back.map(|b| (last + 1).saturating_sub(b).max(1));
                    let mut p = Persist { seq: seq as u64, hard_state, snapshot, truncate_from, entries: vec![] };
                    // The model is the shared rule itself: where does the
                    // log end once the marker and truncation are applied?
                    let mut after = model.clone();
                    after.apply(&p);
                    let start = after.last_index() + 1;
                    let term = after.hard_state.term;
                    p.entries = (start..start + count).map(|i| entry(term, i, &vec![i as u8; data_len])).collect();
                    model.apply(&p);
                    wal.write(&p).unwrap();
                }
                Op::Reopen => {
                    wal.sync().unwrap();
                    drop(wal);
                    let (w, state, _) = reopen(dir.path(), opts.clone());
                    prop_assert_eq!(&state, &model);
                    wal = w;
                }
            }
            prop_assert_eq!(wal.last_index(), model.last_index());
        }
        wal.sync().unwrap();
        let deleted = wal.segments_deleted();
        drop(wal);
        let (_, state, report) = reopen(dir.path(), opts);
        prop_assert_eq!(report.torn_tail_bytes, 0);
        prop_assert_eq!(report.last_index, model.entries.last().map_or(0, |e| e.index));
        prop_assert_eq!(report.snapshot_index, model.snapshot.as_ref().map_or(0, |m| m.last_included_index));
        // What was deleted is gone from the directory, and nothing needed was.
        prop_assert!(segment_paths(dir.path()).len() as u64 >= 1);
        if deleted > 0 {
            prop_assert!(list_segments(dir.path()).unwrap()[0].seq > 1);
        }
        prop_assert_eq!(state, model);
    }
}

/// The records of a segment: kind bytes in order.
fn record_kinds(bytes: &[u8]) -> Vec<u8> {
    record_offsets(bytes).into_iter().map(|off| parse_record(bytes, off).unwrap().kind).collect()
}

#[test]
fn wal_snapshot_marker_then_reopen_follows_the_snapshot() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(&persist(1, Some(hs(2, Some(1))), None, entries(2, 1..=10))).unwrap();
    let before = wal.current_segment().to_path_buf();
    wal.write(&marker(2, Some(hs(3, None)), meta(6, 2), entries(3, 11..=12))).unwrap();
    assert_eq!((wal.snapshot_index(), wal.last_index(), wal.hard_state()), (6, 12, hs(3, None)));
    assert_eq!(wal.snapshot(), Some(&meta(6, 2)));
    // The marker opened a fresh segment: hard state, marker, then entries.
    assert_ne!(wal.current_segment(), before);
    wal.sync().unwrap();
    let bytes = fs::read(wal.current_segment()).unwrap();
    assert_eq!(bytes[8], 3, "a marker segment is version 3");
    assert_eq!(
        record_kinds(&bytes),
        [RecordKind::HardState as u8, RecordKind::Snapshot as u8, RecordKind::Entries as u8]
    );
    // Segment 1 holds entries 7..=10, which follow the snapshot: kept.
    assert_eq!(wal.segments_deleted(), 0);
    assert_eq!(segment_paths(dir.path()).len(), 2);
    drop(wal);

    let (mut wal, state, report) = reopen(dir.path(), WalOptions::default());
    let mut expected = entries(2, 7..=10);
    expected.extend(entries(3, 11..=12));
    assert_eq!(
        state,
        PersistedState { hard_state: hs(3, None), snapshot: Some(meta(6, 2)), entries: expected.clone() }
    );
    assert_eq!((report.snapshot_index, report.snapshot_term, report.first_index, report.last_index), (6, 2, 7, 12));
    assert_eq!((wal.snapshot_index(), wal.last_index()), (6, 12));

    // Entries after the marker, written after a reopen, replay too.
    wal.write(&persist(1, None, None, entries(3, 13..=14))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state, _) = reopen(dir.path(), WalOptions::default());
    expected.extend(entries(3, 13..=14));
    assert_eq!(state.entries, expected);
    let json = serde_json::to_value(inspect(dir.path()).unwrap()).unwrap();
    assert_eq!((json["snapshot_index"].as_u64(), json["wal"]["snapshot_term"].as_u64()), (Some(6), Some(2)));
}

#[test]
fn wal_marker_and_its_hard_state_are_never_split_by_a_tiny_segment_size() {
    let dir = TempDir::new().unwrap();
    let opts = tiny(20);
    let (mut wal, _, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    wal.write(&persist(1, Some(hs(4, Some(3))), None, entries(4, 1..=3))).unwrap();
    wal.write(&marker(2, None, meta(2, 4), entries(4, 4..=5))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let with_marker: Vec<Vec<u8>> = segment_paths(dir.path())
        .iter()
        .map(|p| record_kinds(&fs::read(p).unwrap()))
        .filter(|kinds| kinds.contains(&(RecordKind::Snapshot as u8)))
        .collect();
    assert_eq!(with_marker, [vec![RecordKind::HardState as u8, RecordKind::Snapshot as u8]]);
    let (_, state, _) = reopen(dir.path(), opts);
    let mut expected = entries(4, 3..=3);
    expected.extend(entries(4, 4..=5));
    assert_eq!(state, PersistedState { hard_state: hs(4, Some(3)), snapshot: Some(meta(2, 4)), entries: expected });
}

#[test]
fn wal_marker_past_the_end_empties_the_log_and_writes_are_checked_against_it() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(&persist(1, Some(hs(1, None)), None, entries(1, 1..=3))).unwrap();
    // A snapshot installed from the leader, past the end of this log.
    let err = wal.write(&marker(2, Some(hs(2, None)), meta(10, 2), entries(2, 4..=4))).unwrap_err();
    assert!(err.to_string().contains("entry index 4 does not follow last index 10"), "{err}");
    wal.write(&marker(2, Some(hs(2, None)), meta(10, 2), vec![])).unwrap();
    assert_eq!((wal.last_index(), wal.snapshot_index()), (10, 10));
    // A truncation into the snapshot deletes nothing there is.
    wal.write(&persist(3, None, Some(5), entries(2, 11..=12))).unwrap();
    // Refused: older than the current snapshot, through 0, voter 0.
    let zero_voter = raft_core::Membership { voters: vec![0, 1], ..Default::default() };
    for bad in [meta(9, 2), meta(0, 2), SnapshotMeta { membership: zero_voter, ..meta(11, 2) }] {
        let err = wal.write(&marker(4, None, bad.clone(), vec![])).unwrap_err();
        assert!(matches!(err, WalError::InvalidWrite { .. }), "{bad:?}: {err}");
    }
    assert_eq!(wal.snapshot_index(), 10);
    wal.sync().unwrap();
    // Segment 1 (entries up to 3) is covered by the snapshot through 10.
    assert_eq!(wal.segments_deleted(), 1);
    assert_eq!(segment_paths(dir.path()), [wal.current_segment().to_path_buf()]);
    drop(wal);
    let (_, state, report) = reopen(dir.path(), WalOptions::default());
    assert_eq!(
        state,
        PersistedState { hard_state: hs(2, None), snapshot: Some(meta(10, 2)), entries: entries(2, 11..=12) }
    );
    assert_eq!((report.segments, report.first_index, report.snapshot_index), (1, 11, 10));
}

/// Writes `1..=n` one entry per write into segments of `size` bytes and
/// returns the Wal, with each segment's highest entry index as replay sees it.
fn many_segments(dir: &Path, size: u64, n: u64) -> (Wal, Vec<(PathBuf, u64)>) {
    let (mut wal, _, _) = Wal::open(dir, tiny(size)).unwrap();
    wal.write(&persist(0, Some(hs(5, Some(2))), None, vec![])).unwrap();
    for i in 1..=n {
        wal.write(&persist(i, None, None, entries(5, i..=i))).unwrap();
    }
    wal.sync().unwrap();
    let segs = replay(dir).unwrap().segments.into_iter().map(|s| (s.path, s.max_index)).collect();
    (wal, segs)
}

#[test]
fn wal_segments_covered_by_a_snapshot_are_deleted_and_the_rest_kept() {
    let dir = TempDir::new().unwrap();
    let (mut wal, before) = many_segments(dir.path(), 200, 40);
    assert!(before.len() > 5, "{before:?}");
    wal.write(&marker(41, None, meta(25, 5), entries(5, 41..=41))).unwrap();
    // Nothing is deleted before the marker is durable.
    assert_eq!(segment_paths(dir.path()).len(), before.len() + 1);
    wal.sync().unwrap();

    let gone: Vec<&PathBuf> = before.iter().filter(|(_, max)| *max <= 25).map(|(p, _)| p).collect();
    let kept: Vec<PathBuf> = before.iter().filter(|(_, max)| *max > 25).map(|(p, _)| p.clone()).collect();
    assert!(gone.len() >= 2 && !kept.is_empty(), "{before:?}");
    for p in &gone {
        assert!(!p.exists(), "{} should be deleted", p.display());
    }
    let mut expected_files = kept;
    expected_files.push(wal.current_segment().to_path_buf());
    assert_eq!(segment_paths(dir.path()), expected_files);
    assert_eq!(wal.segments_deleted(), gone.len() as u64);
    // Deleting again is a no-op.
    wal.sync().unwrap();
    assert_eq!(wal.segments_deleted(), gone.len() as u64);
    drop(wal);

    let (mut wal, state, report) = reopen(dir.path(), tiny(200));
    assert_eq!(
        state,
        PersistedState { hard_state: hs(5, Some(2)), snapshot: Some(meta(25, 5)), entries: entries(5, 26..=41) }
    );
    assert_eq!((report.first_index, report.last_index, report.snapshot_index), (26, 41, 25));
    assert_eq!(wal.segments_deleted(), 0, "open deletes nothing");

    // A later marker past everything makes every segment before it obsolete,
    // including the earlier marker's.
    wal.write(&marker(1, None, meta(41, 5), vec![])).unwrap();
    wal.sync().unwrap();
    assert_eq!(segment_paths(dir.path()), [wal.current_segment().to_path_buf()]);
    drop(wal);
    let (_, state, _) = reopen(dir.path(), tiny(200));
    assert_eq!(state, PersistedState { hard_state: hs(5, Some(2)), snapshot: Some(meta(41, 5)), entries: vec![] });
}

#[test]
fn wal_hard_state_survives_deletion_of_the_segment_that_held_it() {
    let dir = TempDir::new().unwrap();
    let (mut wal, before) = many_segments(dir.path(), 200, 30);
    // Only segment 1 holds the hard state record.
    let first = before[0].0.clone();
    assert!(record_kinds(&fs::read(&first).unwrap()).contains(&(RecordKind::HardState as u8)));
    assert!(
        before[1..].iter().all(|(p, _)| !record_kinds(&fs::read(p).unwrap()).contains(&(RecordKind::HardState as u8)))
    );
    wal.write(&marker(31, None, meta(30, 5), vec![])).unwrap();
    wal.sync().unwrap();
    assert!(!first.exists());
    drop(wal);
    let (_, state, report) = reopen(dir.path(), tiny(200));
    assert_eq!(state.hard_state, hs(5, Some(2)));
    assert_eq!((report.term, report.vote), (5, Some(2)));
}

/// A marker older than the first replayed entry (its entries sat in the
/// deleted segments) must not make replay drop the entries after it.
#[test]
fn wal_older_marker_after_deleted_segments_keeps_the_log() {
    let dir = TempDir::new().unwrap();
    let opts = WalOptions::default();
    let (mut wal, _, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    wal.write(&persist(1, Some(hs(1, None)), None, entries(1, 1..=10))).unwrap(); // segment 1
    wal.write(&marker(2, None, meta(1, 1), vec![])).unwrap(); // segment 2
    wal.write(&marker(3, None, meta(2, 1), vec![])).unwrap(); // segment 3
    // Segment 1 holds 1..=10 (> 2): kept, so nothing is deleted yet.
    wal.sync().unwrap();
    assert_eq!(wal.segments_deleted(), 0);
    wal.write(&persist(4, None, None, entries(1, 11..=20))).unwrap(); // segment 3
    wal.write(&marker(5, None, meta(5, 1), vec![])).unwrap(); // segment 4
    wal.write(&persist(6, None, None, entries(1, 21..=22))).unwrap();
    wal.write(&marker(7, None, meta(12, 1), vec![])).unwrap(); // segment 5
    wal.sync().unwrap();
    // Segment 1 (up to 10) and 2 (no entries) are covered by 12; segment 3
    // holds 11..=20, so it stays. Replay then sees entries from 11, and a
    // marker through 5 after them: the log continues that snapshot (6..=10
    // were in segment 1), so 11..=20 must stay until the marker through 12.
    assert_eq!(wal.segments_deleted(), 2);
    drop(wal);
    let (_, state, report) = reopen(dir.path(), opts);
    assert_eq!(
        state,
        PersistedState { hard_state: hs(1, None), snapshot: Some(meta(12, 1)), entries: entries(1, 13..=22) }
    );
    assert_eq!(report.segments, 3);
}

#[test]
fn wal_lost_segments_are_refused() {
    // A middle segment deleted by hand: a gap in the sequence.
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = many_segments(dir.path(), 200, 40);
    wal.write(&marker(41, None, meta(25, 5), vec![])).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let remaining = segment_paths(dir.path());
    assert!(remaining.len() >= 3);
    let copy = copy_dir(dir.path());
    fs::remove_file(copy.path().join(remaining[1].file_name().unwrap())).unwrap();
    let err = Wal::open(copy.path(), tiny(200)).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    // The first remaining segment (entries 26..) deleted by hand: what
    // follows the snapshot is gone, which the next entries show.
    let copy = copy_dir(dir.path());
    fs::remove_file(copy.path().join(remaining[0].file_name().unwrap())).unwrap();
    let err = Wal::open(copy.path(), tiny(200)).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { reason, .. } if reason.contains("the snapshot covers only 1..25")),
        "{err}"
    );

    // Leading segments deleted by hand, no snapshot at all.
    let dir = TempDir::new().unwrap();
    let (wal, before) = many_segments(dir.path(), 200, 40);
    drop(wal);
    for (p, _) in &before[..2] {
        fs::remove_file(p).unwrap();
    }
    let start = before[1].1 + 1;
    let err = Wal::open(dir.path(), tiny(200)).unwrap_err();
    match &err {
        WalError::Corrupt { file, reason, .. } => {
            assert_eq!(file, &before[2].0);
            let expected =
                format!("entries start at {start} but no snapshot covers 1..{}: a segment was lost", start - 1);
            assert!(reason.contains(&expected), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(inspect(dir.path()).unwrap().health, WalHealth::Corrupt);
}

#[test]
fn wal_torn_tail_right_after_marker_rotation_recovers_the_state_before_it() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(&persist(1, Some(hs(2, Some(1))), None, entries(2, 1..=5))).unwrap();
    wal.sync().unwrap();
    wal.write(&marker(2, None, meta(4, 2), entries(2, 6..=6))).unwrap();
    wal.sync().unwrap();
    let seg = wal.current_segment().to_path_buf();
    drop(wal);
    let full = fs::read(&seg).unwrap();
    let offsets = record_offsets(&full);
    assert_eq!(offsets.len(), 3);
    let before = PersistedState { hard_state: hs(2, Some(1)), snapshot: None, entries: entries(2, 1..=5) };
    // Anywhere before the marker record is complete: the state before it.
    for cut in SEGMENT_HEADER_LEN..offsets[2] {
        let copy = copy_dir(dir.path());
        let path = copy.path().join(seg.file_name().unwrap());
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut as u64).unwrap();
        let (mut wal, state, report) = reopen(copy.path(), WalOptions::default());
        assert_eq!(state, before, "cut at {cut}");
        assert_eq!(report.snapshot_index, 0);
        assert_eq!(wal.last_index(), 5);
        // And the log goes on from there.
        wal.write(&persist(3, None, None, entries(3, 6..=6))).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(reopen(copy.path(), WalOptions::default()).1.entries.len(), 6);
    }
    // Only the entries after the marker torn: the marker holds.
    let copy = copy_dir(dir.path());
    let path = copy.path().join(seg.file_name().unwrap());
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(full.len() as u64 - 1).unwrap();
    let (_, state, _) = reopen(copy.path(), WalOptions::default());
    assert_eq!(
        state,
        PersistedState { hard_state: hs(2, Some(1)), snapshot: Some(meta(4, 2)), entries: entries(2, 5..=5) }
    );
}

#[test]
fn wal_snapshot_record_out_of_place_is_refused() {
    // A marker segment with its records swapped: never written that way.
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(&marker(1, Some(hs(1, None)), meta(3, 1), vec![])).unwrap();
    wal.sync().unwrap();
    let seg = wal.current_segment().to_path_buf();
    drop(wal);
    let bytes = fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    let mut swapped = bytes[..SEGMENT_HEADER_LEN].to_vec();
    swapped.extend_from_slice(&bytes[offsets[1]..]);
    swapped.extend_from_slice(&bytes[offsets[0]..offsets[1]]);
    fs::write(&seg, &swapped).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { offset: 16, reason, .. } if reason.contains("not the second record")),
        "{err}"
    );
}

#[test]
fn wal_writer_reports_segments_deleted() {
    let dir = TempDir::new().unwrap();
    let (wal, before) = many_segments(dir.path(), 200, 20);
    let writer = WalWriter::spawn(wal, 4, |r: Result<u64, &WalError>| {
        r.expect("no WAL errors");
    })
    .unwrap();
    writer.submit(marker(21, None, meta(20, 5), vec![])).unwrap();
    while writer.stats().durable_seq < 21 {
        std::thread::yield_now();
    }
    assert_eq!(writer.stats().segments_deleted, before.len() as u64);
    let wal = writer.shutdown().unwrap();
    assert_eq!(wal.segments_deleted(), before.len() as u64);
}

// ----- disks that lose synced data (issue 18) --------------------------------------------------

/// Every sync writes the state file, so the synced mark is exact.
fn exact_mark() -> WalOptions {
    WalOptions { state_file_interval: std::time::Duration::ZERO, ..WalOptions::default() }
}

/// A WAL holding hard state (3, vote 2) and entries 1..=10 of term 3, each synced on its own;
/// returns the directory and the segment's length after entry 5.
fn synced_history() -> (TempDir, u64) {
    let dir = TempDir::new().unwrap();
    let (mut wal, _, _) = reopen(dir.path(), exact_mark());
    wal.write(&persist(1, Some(hs(3, Some(2))), None, Vec::new())).unwrap();
    let mut after_five = 0;
    for i in 1..=10 {
        wal.write(&persist(i + 1, None, None, entries(3, i..=i))).unwrap();
        wal.sync().unwrap();
        if i == 5 {
            after_five = fs::metadata(wal.current_segment()).unwrap().len();
        }
    }
    (dir, after_five)
}

fn cut_segment(dir: &Path, len: u64) {
    let path = segment_paths(dir).pop().unwrap();
    fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// A segment cut at a record boundary used to recover as a clean, shorter log with no word said:
/// the entries it lost were synced and may have been acknowledged. The state file's synced mark
/// shows the loss, and recovery hands it on for repair.
#[test]
fn wal_a_segment_cut_at_a_record_boundary_is_a_loss() {
    let (dir, after_five) = synced_history();
    cut_segment(dir.path(), after_five);
    let (_, state, report) = reopen(dir.path(), exact_mark());
    assert_eq!(state.entries.len(), 5);
    assert_eq!(report.repair, Some(raft_core::Repair { lost_through: 10, last_term: 3 }));
    assert!(!report.hard_state_restored);
    let health = inspect(dir.path()).unwrap();
    assert_eq!(health.health, WalHealth::LostSynced);
}

/// Cut to its 16-byte header, a segment used to recover as `health ok` with the term and vote
/// forgotten (a node that forgets its vote can vote twice in a term). The state file keeps them.
#[test]
fn wal_a_segment_cut_to_its_header_keeps_term_and_vote() {
    let (dir, _) = synced_history();
    cut_segment(dir.path(), SEGMENT_HEADER_LEN as u64);
    let (_, state, report) = reopen(dir.path(), exact_mark());
    assert_eq!(state.hard_state, hs(3, Some(2)));
    assert!(report.hard_state_restored);
    assert_eq!(report.repair, Some(raft_core::Repair { lost_through: 10, last_term: 3 }));
    // And it is written back: the next open finds it in the segments.
    let (_, state, report) = reopen(dir.path(), exact_mark());
    assert_eq!(state.hard_state, hs(3, Some(2)));
    assert!(!report.hard_state_restored);
}

/// A torn tail of writes never synced is cut as before: not a loss.
#[test]
fn wal_an_unsynced_torn_tail_is_not_a_loss() {
    let (dir, _) = synced_history();
    {
        let (mut wal, _, _) = reopen(dir.path(), exact_mark());
        wal.write(&persist(20, None, None, entries(3, 11..=12))).unwrap();
        // Dropped without a sync: the bytes reach the file, unsynced.
    }
    let len = fs::metadata(segment_paths(dir.path()).pop().unwrap()).unwrap().len();
    cut_segment(dir.path(), len - 3);
    let (_, state, report) = reopen(dir.path(), exact_mark());
    assert_eq!(state.last_index(), 10, "entry 11 survives whole, 12 is torn");
    assert!(report.torn_tail_bytes > 0 && report.repair.is_none(), "{report:?}");
}

/// The repair mark outlives restarts until the durable log covers the lost one, and then goes.
#[test]
fn wal_the_repair_mark_lasts_until_the_log_covers_the_loss() {
    let (dir, after_five) = synced_history();
    cut_segment(dir.path(), after_five);
    let lost = Some(raft_core::Repair { lost_through: 10, last_term: 3 });
    let (wal, _, report) = reopen(dir.path(), exact_mark());
    assert_eq!((report.repair, wal.repair()), (lost, lost));
    drop(wal);
    let (mut wal, _, report) = reopen(dir.path(), exact_mark());
    assert_eq!(report.repair, lost, "forgotten across a restart");
    wal.write(&persist(1, None, None, entries(3, 6..=9))).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.repair(), lost, "repaired one entry short");
    wal.write(&persist(2, None, None, entries(3, 10..=10))).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.repair(), None);
    drop(wal);
    assert_eq!(reopen(dir.path(), exact_mark()).2.repair, None);
}

/// A truncation lowers the mark before it is written: a log cut by a new leader (and a crash before
/// its entries were synced) is no loss.
#[test]
fn wal_a_truncation_is_not_a_loss() {
    let (dir, _) = synced_history();
    {
        let (mut wal, _, _) = reopen(dir.path(), exact_mark());
        wal.write(&persist(1, Some(hs(4, None)), Some(6), entries(4, 6..=6))).unwrap();
        wal.sync().unwrap();
        wal.write(&persist(2, None, Some(3), Vec::new())).unwrap();
        // Crash before the sync: the truncation may or may not be on disk; either is fine.
    }
    let (_, state, report) = reopen(dir.path(), exact_mark());
    assert_eq!(report.repair, None, "{state:?}");
}

/// A damaged state file is refused, never ignored.
#[test]
fn wal_a_damaged_state_file_is_refused() {
    let (dir, _) = synced_history();
    let path = dir.path().join("raft-state");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();
    let err = Wal::open(dir.path(), exact_mark()).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}
