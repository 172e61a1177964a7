//! Replaying segments into a [`PersistedState`], and telling a torn tail
//! (cut it, the write was never acknowledged) from corruption (refuse: the
//! damaged or following records may have been acknowledged).

use std::fs;
use std::path::{Path, PathBuf};

use raft_core::{Index, NodeId, PersistedState, Term};
use serde::Serialize;

use super::WalError;
use super::format::{
    BadHeader, BadRecord, RecordKind, SEGMENT_HEADER_LEN, SUPPORTED_WAL_VERSIONS, check_segment_header,
    find_valid_record_after, is_torn_header, parse_record, parse_segment_file_name,
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
    /// What replay found (up to the corruption, if any).
    pub wal: RecoveryReport,
}

/// A segment file found in the directory.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub seq: u64,
    pub path: PathBuf,
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
}

/// The WAL's segment files in sequence order. Other files are ignored.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let io = |e| WalError::io("list directory", dir, e);
    let mut segments = Vec::new();
    for dirent in fs::read_dir(dir).map_err(io)? {
        let dirent = dirent.map_err(io)?;
        let name = dirent.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_file_name) {
            segments.push(Segment { seq, path: dirent.path() });
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
    };
    let count = segments.len();
    for (i, seg) in segments.into_iter().enumerate() {
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
        match replay_segment(&seg.path, &data, is_last, &mut replay.state, &mut replay.report) {
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
    let report = &mut replay.report;
    report.segments = replay.segments.len() as u64;
    report.first_index = replay.state.entries.first().map_or(0, |e| e.index);
    report.last_index = replay.state.entries.last().map_or(0, |e| e.index);
    report.term = replay.state.hard_state.term;
    report.vote = replay.state.hard_state.vote;
    Ok(replay)
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
    state: &mut PersistedState,
    report: &mut RecoveryReport,
) -> Result<SegmentEnd, WalError> {
    let corrupt =
        |offset: usize, reason: String| WalError::Corrupt { file: path.to_path_buf(), offset: offset as u64, reason };

    match check_segment_header(data) {
        Ok(_version) => {}
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
    }
    report.bytes += SEGMENT_HEADER_LEN as u64;

    let mut off = SEGMENT_HEADER_LEN;
    while off < data.len() {
        let rec = match parse_record(data, off) {
            Ok(rec) => rec,
            Err(bad) => return classify_bad_record(data, off, &bad, is_last).map_err(|r| corrupt(off, r)),
        };
        apply_record(rec.kind, rec.payload, state).map_err(|r| corrupt(off, r))?;
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

fn apply_record(kind: u8, payload: &[u8], state: &mut PersistedState) -> Result<(), String> {
    let Some(kind) = RecordKind::from_byte(kind) else {
        return Err(format!("unknown record kind {kind} (written by a newer version?)"));
    };
    match decode_record(kind, payload).map_err(|e| e.to_string())? {
        Decoded::HardState(hs) => state.hard_state = hs,
        Decoded::Truncate { from } => {
            // `from` past the end deletes nothing; entries are 1-based and
            // contiguous, so entry `i` sits at position `i - 1`.
            state.entries.truncate((from - 1).try_into().unwrap_or(usize::MAX));
        }
        Decoded::Entries(entries) => {
            let mut last = state.entries.last().map_or(0, |e| e.index);
            for e in &entries {
                if e.index != last + 1 {
                    return Err(format!("entry index {} does not follow last index {last}", e.index));
                }
                last = e.index;
            }
            state.entries.extend(entries);
        }
    }
    Ok(())
}
