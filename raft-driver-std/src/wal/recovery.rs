//! Replaying segments into a [`PersistedState`], and telling a torn tail
//! (cut it, the write was never acknowledged) from corruption (refuse: the
//! damaged or following records may have been acknowledged).
//!
//! Segments that a snapshot marker made obsolete are deleted by the writer
//! (oldest first), so the first segment may start with entries at some
//! index `j > 1`. Replay accepts that provisionally, as a gap `1..j-1` it
//! does not see; by the end a snapshot marker must cover the gap, or a
//! segment was lost and the WAL is refused as corrupt.
//!
//! Markers are applied with the shared rule
//! ([`PersistedState::follow_snapshot`]), except for one that is older than
//! the gap: the deleted segments held the entries between it and the first
//! replayed one, so the log does continue that snapshot, and its entries
//! stay (a later marker, the one whose deletion made the gap, covers it).
//! The writer only writes markers of increasing index, which is what makes
//! that reading exact.

use std::fs;
use std::path::{Path, PathBuf};

use raft_core::{Index, NodeId, PersistedState, Term};
use serde::Serialize;

use super::WalError;
use super::format::{
    BadHeader, BadRecord, FIRST_VERSION_WITH_SNAPSHOT, RecordKind, SEGMENT_HEADER_LEN, SUPPORTED_WAL_VERSIONS,
    check_segment_header, find_valid_record_after, is_torn_header, parse_record, parse_segment_file_name,
};
use super::record::{Decoded, decode_record};

/// What recovery found in the WAL directory; returned by
/// [`Wal::open`](super::Wal::open) and embedded in [`InspectReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Segment files replayed.
    pub segments: u64,
    /// Valid records replayed.
    pub records: u64,
    /// Valid bytes replayed (segment headers and records).
    pub bytes: u64,
    /// Bytes of the torn tail that were cut off (or, for
    /// [`inspect`](super::inspect), that would be cut off on open).
    pub torn_tail_bytes: u64,
    /// The segment file that had the torn tail, if any.
    pub torn_tail_file: Option<String>,
    /// Index of the first entry in the log, `0` when the log is empty.
    pub first_index: Index,
    /// Index of the last entry in the log, `0` when the log is empty.
    pub last_index: Index,
    /// The persisted current term.
    pub term: Term,
    /// The persisted vote in `term`.
    pub vote: Option<NodeId>,
    /// Last included index of the snapshot the log follows (the newest
    /// snapshot marker), `0` when there is none.
    pub snapshot_index: Index,
    /// Term of that entry, `0` when there is no snapshot.
    pub snapshot_term: Term,
    /// The segments lost the hard state record the state file holds
    /// (their term or vote was older): the state file's was used.
    pub hard_state_restored: bool,
    /// The disk lost synced log entries (the log ends before the synced
    /// mark of the state file), or lost them earlier and the node is not
    /// yet repaired: the last entry the log held before.
    pub repair: Option<raft_core::Repair>,
}

/// The overall state of a WAL directory, as seen by [`inspect`](super::inspect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalHealth {
    /// Every byte replays cleanly.
    Ok,
    /// The last write was cut short by a crash; opening the WAL will cut
    /// the partial record away. No acknowledged data is affected.
    TornTail,
    /// Damage that recovery refuses to repair automatically (the `error` says
    /// what and where).
    Corrupt,
    /// A segment written in a format version this build cannot read (by a
    /// newer release, most likely): not damage, and nothing was read from
    /// it. The node refuses to start until a build that reads it runs.
    UnsupportedVersion,
    /// The disk lost synced data: the log ends before the synced mark of
    /// the state file, or the segments hold an older term or vote than it.
    /// The node starts (with the state file's hard state), says so loudly,
    /// and does not vote for a candidate behind the lost log, nor campaign,
    /// until its peers have repaired it.
    LostSynced,
}

impl WalHealth {
    /// Whether a node would refuse to open this WAL.
    pub fn refuses_to_open(self) -> bool {
        matches!(self, WalHealth::Corrupt | WalHealth::UnsupportedVersion)
    }
}

/// The read-only health report printed by `raftkv inspect --data-dir DIR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InspectReport {
    /// The WAL directory inspected.
    pub dir: String,
    /// Whether the WAL would open, be repaired on open, or be refused.
    pub health: WalHealth,
    /// The corruption (or unsupported version) message when the WAL would be refused.
    pub error: Option<String>,
    /// The file holding the corruption or the unsupported header.
    pub corrupt_file: Option<String>,
    /// The byte offset of the corruption within `corrupt_file`.
    pub corrupt_offset: Option<u64>,
    /// Last included index of the snapshot the log follows, `0` when none
    /// (the same as `wal.snapshot_index`, here for a quick look).
    pub snapshot_index: Index,
    /// Term of that entry, `0` when there is no snapshot.
    pub snapshot_term: Term,
    /// What replay found (up to the corruption, if any).
    pub wal: RecoveryReport,
    /// The configuration the log (or its snapshot) holds, with the index of
    /// its entry; `None` when it holds none yet (the first configuration is
    /// the one the node is started with).
    pub membership: Option<MembershipSummary>,
}

/// A configuration, for [`InspectReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MembershipSummary {
    /// The voters (`C_new` while joint).
    pub voters: Vec<raft_core::NodeId>,
    /// The outgoing voters while joint (`C_old`), else empty.
    pub outgoing: Vec<raft_core::NodeId>,
    /// The learners.
    pub learners: Vec<raft_core::NodeId>,
    /// The index of the entry (or snapshot) it comes from.
    pub index: Index,
}

/// A segment file found in the directory.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    /// The highest entry index written into the segment (even if a later
    /// truncation deleted it), `0` if it holds no entries. Filled in by
    /// replay; what segment deletion decides by.
    pub max_index: Index,
}

/// How to repair a torn tail found in the last segment.
#[derive(Debug)]
pub(super) enum TornTail {
    /// Cut the file to `keep` bytes (the end of its last valid record).
    Cut { path: PathBuf, keep: u64 },
    /// The crash happened while the segment was being created: its header
    /// is incomplete and it holds no records. Delete it.
    Remove { path: PathBuf, seq: u64 },
}

/// Everything replay learned.
#[derive(Debug)]
pub(super) struct Replay {
    pub state: PersistedState,
    pub report: RecoveryReport,
    /// The segments that stay (a torn-header segment is not among them).
    pub segments: Vec<Segment>,
    pub tail: Option<TornTail>,
    /// Set when replay stopped at corruption; `state` and `report` then
    /// describe what came before it.
    pub corruption: Option<WalError>,
    /// The sequence number of the segment holding the newest snapshot
    /// marker (the one `state.snapshot` comes from), if any.
    pub snapshot_segment: Option<u64>,
}

/// The log being rebuilt, plus what replay needs to check it.
#[derive(Debug, Default)]
struct Log {
    state: PersistedState,
    /// The index `state.entries` follow: the snapshot's last included
    /// index, or one less than the first entry replayed when that is
    /// higher (entries `covered + 1 ..= floor` were in deleted segments:
    /// the gap); `None` while nothing says (no entry replayed yet).
    floor: Option<Index>,
}

impl Log {
    /// The last included index of the snapshot replayed so far, `0` if none.
    fn covered(&self) -> Index {
        self.state.snapshot.as_ref().map_or(0, |m| m.last_included_index)
    }

    /// The index the next entry must have, minus one (`None` if unknown).
    fn last(&self) -> Option<Index> {
        self.state.entries.last().map(|e| e.index).or(self.floor)
    }
}

/// The WAL's segment files in sequence order. Other files are ignored.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let io = |e| WalError::io("list directory", dir, e);
    let mut segments = Vec::new();
    for dirent in fs::read_dir(dir).map_err(io)? {
        let dirent = dirent.map_err(io)?;
        let name = dirent.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_file_name) {
            segments.push(Segment { seq, path: dirent.path(), max_index: 0 });
        }
    }
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

/// Replays every segment in `dir` without modifying anything.
///
/// I/O errors are returned as `Err`; corruption is returned inside the
/// [`Replay`] so that `inspect` can still show what precedes it.
pub(super) fn replay(dir: &Path) -> Result<Replay, WalError> {
    let segments = list_segments(dir)?;
    let mut replay = Replay {
        state: PersistedState::default(),
        report: RecoveryReport::default(),
        segments: Vec::with_capacity(segments.len()),
        tail: None,
        corruption: None,
        snapshot_segment: None,
    };
    let mut log = Log::default();
    let count = segments.len();
    for (i, mut seg) in segments.into_iter().enumerate() {
        if let Some(prev) = replay.segments.last()
            && seg.seq != prev.seq + 1
        {
            // A missing segment is lost data, whatever the others contain.
            replay.corruption = Some(WalError::Corrupt {
                file: seg.path,
                offset: 0,
                reason: format!("segment {} is missing (found {} after {})", prev.seq + 1, seg.seq, prev.seq),
            });
            break;
        }
        let data = fs::read(&seg.path).map_err(|e| WalError::io("read", &seg.path, e))?;
        let is_last = i + 1 == count;
        let mut found = SegmentFound::default();
        let end = replay_segment(&seg.path, &data, is_last, &mut log, &mut replay.report, &mut found);
        seg.max_index = found.max_index;
        if found.snapshot && !matches!(end, Err(_) | Ok(SegmentEnd::TornHeader)) {
            replay.snapshot_segment = Some(seg.seq);
        }
        match end {
            Ok(SegmentEnd::Clean) => replay.segments.push(seg),
            Ok(SegmentEnd::Torn { keep }) => {
                replay.report.torn_tail_bytes = (data.len() - keep) as u64;
                replay.report.torn_tail_file = Some(seg.path.display().to_string());
                replay.tail = Some(TornTail::Cut { path: seg.path.clone(), keep: keep as u64 });
                replay.segments.push(seg);
            }
            Ok(SegmentEnd::TornHeader) => {
                replay.report.torn_tail_bytes = data.len() as u64;
                replay.report.torn_tail_file = Some(seg.path.display().to_string());
                replay.tail = Some(TornTail::Remove { path: seg.path, seq: seg.seq });
            }
            Err(e) => {
                replay.corruption = Some(e);
                break;
            }
        }
    }
    if replay.corruption.is_none()
        && let Some(first) = replay.segments.first()
    {
        replay.corruption = check_log_start(&first.path, &log).err();
    }
    replay.state = log.state;
    let report = &mut replay.report;
    report.segments = replay.segments.len() as u64;
    report.first_index = replay.state.entries.first().map_or(0, |e| e.index);
    report.last_index = replay.state.entries.last().map_or(0, |e| e.index);
    report.term = replay.state.hard_state.term;
    report.vote = replay.state.hard_state.vote;
    let snapshot = replay.state.snapshot.as_ref();
    report.snapshot_index = snapshot.map_or(0, |m| m.last_included_index);
    report.snapshot_term = snapshot.map_or(0, |m| m.last_included_term);
    Ok(replay)
}

/// The log may start after index 1 only if a snapshot covers everything
/// before it: otherwise segments holding entries were lost (deleted by
/// hand, or a bug). `first` is the first segment replayed.
fn check_log_start(first: &Path, log: &Log) -> Result<(), WalError> {
    let start = log.floor.map_or(1, |f| f + 1);
    if start <= log.covered() + 1 {
        return Ok(());
    }
    let reason = match &log.state.snapshot {
        None => format!("entries start at {start} but no snapshot covers 1..{}: a segment was lost", start - 1),
        Some(m) => format!(
            "entries start at {start} but the snapshot covers only 1..{}: a segment was lost",
            m.last_included_index
        ),
    };
    Err(WalError::Corrupt { file: first.to_path_buf(), offset: 0, reason })
}

/// What replay noticed in one segment, for segment deletion.
#[derive(Debug, Default)]
struct SegmentFound {
    /// The highest entry index in it, `0` if none.
    max_index: Index,
    /// Whether it holds a snapshot marker.
    snapshot: bool,
}

/// How a segment's replay ended (corruption is the `Err` case).
enum SegmentEnd {
    /// Every byte was valid.
    Clean,
    /// Valid up to `keep`; the rest is a torn tail.
    Torn { keep: usize },
    /// The header itself is torn; the segment holds nothing.
    TornHeader,
}

fn replay_segment(
    path: &Path,
    data: &[u8],
    is_last: bool,
    log: &mut Log,
    report: &mut RecoveryReport,
    found: &mut SegmentFound,
) -> Result<SegmentEnd, WalError> {
    let corrupt =
        |offset: usize, reason: String| WalError::Corrupt { file: path.to_path_buf(), offset: offset as u64, reason };

    let version = match check_segment_header(data) {
        Ok(version) => version,
        // Segments are created with their header fsynced before any record
        // is written, so only the newest one can have a torn header.
        Err(BadHeader::NotASegment) if is_last && is_torn_header(data) => return Ok(SegmentEnd::TornHeader),
        Err(BadHeader::NotASegment) => return Err(corrupt(0, "not a WAL segment (bad or incomplete header)".into())),
        Err(BadHeader::UnsupportedVersion { found }) => {
            return Err(WalError::UnsupportedVersion {
                file: path.to_path_buf(),
                found,
                supported: SUPPORTED_WAL_VERSIONS,
            });
        }
        Err(BadHeader::Reserved { found }) => {
            return Err(corrupt(12, format!("reserved header field is {found:#010x}, expected 0")));
        }
    };
    report.bytes += SEGMENT_HEADER_LEN as u64;

    let mut off = SEGMENT_HEADER_LEN;
    let mut position = RecordPosition { version, ordinal: 0, after_hard_state: false };
    while off < data.len() {
        let rec = match parse_record(data, off) {
            Ok(rec) => rec,
            Err(bad) => return classify_bad_record(data, off, &bad, is_last).map_err(|r| corrupt(off, r)),
        };
        apply_record(rec.kind, rec.payload, &position, log, found).map_err(|r| corrupt(off, r))?;
        position.after_hard_state = rec.kind == RecordKind::HardState as u8;
        position.ordinal += 1;
        report.records += 1;
        report.bytes += (rec.end - off) as u64;
        off = rec.end;
    }
    Ok(SegmentEnd::Clean)
}

/// Decides whether an invalid record at `off` is a torn tail (`Ok`) or
/// corruption (`Err(reason)`).
fn classify_bad_record(data: &[u8], off: usize, bad: &BadRecord, is_last: bool) -> Result<SegmentEnd, String> {
    if !is_last {
        // Rotation fsyncs a segment before creating the next one, so a
        // crash can never leave a non-last segment short.
        return Err(format!("{bad} in a segment that is not the last"));
    }
    match find_valid_record_after(data, off) {
        None => Ok(SegmentEnd::Torn { keep: off }),
        Some(next) => Err(format!("{bad}, but a valid record follows at offset {next}")),
    }
}

/// Where in its segment a record sits.
struct RecordPosition {
    /// The segment's format version.
    version: u32,
    /// How many records precede it in the segment.
    ordinal: u64,
    /// Whether the record just before it is a `HardState`.
    after_hard_state: bool,
}

fn apply_record(
    kind: u8,
    payload: &[u8],
    position: &RecordPosition,
    log: &mut Log,
    found: &mut SegmentFound,
) -> Result<(), String> {
    let Some(kind) = RecordKind::from_byte(kind) else {
        return Err(format!("unknown record kind {kind} (written by a newer version?)"));
    };
    if kind == RecordKind::Snapshot {
        if position.version < FIRST_VERSION_WITH_SNAPSHOT {
            return Err(format!(
                "Snapshot record (kind {}) in a version-{} segment: that kind exists only from version                  {FIRST_VERSION_WITH_SNAPSHOT}",
                kind as u8, position.version
            ));
        }
        // The writer puts a marker only right after the `HardState` that
        // opens a fresh segment; segment deletion relies on that segment
        // being self-contained for the hard state.
        if position.ordinal != 1 || !position.after_hard_state {
            return Err("Snapshot record that is not the second record of its segment, after a HardState".into());
        }
    }
    match decode_record(kind, payload, position.version).map_err(|e| e.to_string())? {
        Decoded::HardState(hs) => log.state.hard_state = hs,
        Decoded::Truncate { from } => {
            // `from` past the end deletes nothing.
            log.state.truncate_from(from);
            // A truncation below the first replayed entry reaches into the
            // gap (or down to the snapshot): the log now ends there.
            if let Some(floor) = log.floor
                && from - 1 < floor
            {
                log.floor = Some((from - 1).max(log.covered()));
            }
        }
        Decoded::Entries(entries) => {
            let Some(first) = entries.first() else { return Ok(()) };
            let mut last = match log.last() {
                Some(last) => last,
                // The first entries replayed: past 1 (or past the snapshot)
                // when older segments were deleted. Provisionally fine: the
                // gap is checked at the end.
                None => {
                    let base = first.index.checked_sub(1).ok_or("entry index 0 (indexes start at 1)")?;
                    if base < log.covered() {
                        return Err(format!(
                            "entry index {} is covered by the snapshot through {}",
                            first.index,
                            log.covered()
                        ));
                    }
                    log.floor = Some(base);
                    base
                }
            };
            for e in &entries {
                if e.index != last + 1 {
                    return Err(format!("entry index {} does not follow last index {last}", e.index));
                }
                last = e.index;
            }
            found.max_index = found.max_index.max(last);
            log.state.entries.extend(entries);
        }
        Decoded::Snapshot(meta) => {
            let (covered, index) = (log.covered(), meta.last_included_index);
            found.snapshot = true;
            match log.floor {
                // No entry replayed yet, so nothing to keep or drop (the
                // rule only records the snapshot), and nothing says yet
                // where the log ends: the entries that follow will.
                None => log.state.follow_snapshot(meta),
                // Older than the gap: the log continues it (see the module
                // docs); the gap is still to be covered.
                Some(floor) if floor > covered && floor > index && index >= covered => {
                    log.state.snapshot = Some(meta);
                }
                Some(_) => {
                    // The shared rule (`raft-core`), as the simulator's
                    // disk applies it.
                    log.state.follow_snapshot(meta);
                    log.floor = Some(index);
                }
            }
        }
    }
    Ok(())
}
