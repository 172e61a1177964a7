//! The crash-safe write-ahead log: where [`raft_core::Persist`] actions
//! become durable, and where [`PersistedState`] comes from on restart.
//!
//! The log is a directory of segment files (`wal-0000000000000001.log`,
//! ...), each a header followed by CRC-protected records of four kinds:
//! a new hard state, a truncation, a batch of entries, and a snapshot
//! marker. Records are only ever appended; a truncation is a record too, so
//! a crash in the middle of one can never damage entries written earlier.
//!
//! # Snapshot markers and segment deletion
//!
//! A [`Persist`] with `snapshot: Some(meta)` (the driver has stored the
//! snapshot image durably; the log now follows it) closes the current
//! segment and starts a new one whose first records are the current hard
//! state and then the marker; the write's truncation and entries follow as
//! usual. So a marker only ever opens a fresh segment (format version 2),
//! and that segment is self-contained for the hard state. What a marker
//! does to the stored log is `raft-core`'s rule,
//! [`PersistedState::follow_snapshot`], which the simulator's disk applies
//! too.
//!
//! After each successful [`Wal::sync`] (the marker is then durable), the
//! segments that come before the newest marker's segment and hold no entry
//! after the snapshot's last included index are deleted, oldest first, so
//! what remains is always a suffix of the sequence (a gap is corruption on
//! replay). Each deletion is made durable (directory fsync) before the next
//! one, so that no crash can persist a later deletion without an earlier
//! one. A file that cannot be deleted is logged and retried at the next
//! sync (nothing on disk is in doubt: the WAL just keeps a file it no longer
//! needs); a failed directory fsync poisons the WAL like any fsync failure.
//! Deletion never happens on [`Wal::open`]: a marker read back there may
//! still sit unsynced in the page cache of a process that crashed.
//!
//! # The format is this module's, and versioned
//!
//! What is on disk must stay readable across releases, while `raft-core`'s
//! types must stay free to evolve. So the bytes are never "whatever serde
//! makes of the core types today": the `record` submodule defines the
//! payload types the WAL owns (`WalHardStateV1`, `WalTruncateV1`,
//! `WalEntryV1`, `WalSnapshotV3`) and converts them to and from the core
//! types explicitly;
//! the `format` submodule frames them. Every segment header carries the
//! format version ([`WAL_FORMAT_VERSION`]); a segment of a version this
//! build does not know ([`SUPPORTED_WAL_VERSIONS`]) is refused with
//! [`WalError::UnsupportedVersion`] and left untouched, never misread.
//! Golden files in `tests/golden/` pin every byte, and `docs/formats.md`
//! describes the layout and when the version changes.
//!
//! Writes go through [`Wal::write`] (buffered, cheap) and become durable
//! with [`Wal::sync`] (one fsync for everything written since the last).
//! [`WalWriter`] runs that pair on its own thread with group commit, which
//! is what the driver uses.
//!
//! Version 2 only added the snapshot record: a version-1 segment is still
//! read, and appended to, as it is (its other records have the same bytes).
//! Version 3 added Config entries and a snapshot marker that carries the
//! whole configuration; older segments are still read and appended to.
//!
//! On [`Wal::open`] every segment is replayed. A record cut short by a
//! crash at the very end of the log (a "torn tail") was never acknowledged,
//! so it is cut off and reported. Anything else that fails its checks is
//! refused with [`WalError::Corrupt`]: guessing could silently lose
//! acknowledged entries or votes, which breaks Raft's safety.

mod format;
#[cfg(test)]
mod golden_tests;
mod record;
mod recovery;
mod state_file;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use raft_core::{Entry, HardState, Index, Persist, PersistedState, Repair, SnapshotMeta, Term};
pub use state_file::STATE_FILE_VERSION;
use state_file::StateFileV1;

use format::{SEGMENT_HEADER_LEN, append_record, segment_file_name, segment_header};
pub use format::{SUPPORTED_WAL_VERSIONS, WAL_FORMAT_VERSION};
use record::{Record, WalEntriesV1, WalSnapshotV3, WalTruncateV1};
pub use recovery::{InspectReport, MembershipSummary, RecoveryReport, WalHealth};
pub use writer::{WalHistograms, WalMonitor, WalWriter, WalWriterStats};

/// Default size at which a segment is closed and a new one started.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;

/// Buffered bytes beyond which [`Wal::write`] hands them to the kernel
/// early, so that a huge group does not hold them all in memory.
const FLUSH_THRESHOLD: usize = 1024 * 1024;

/// Upper bound for the entries of one `Entries` record (estimated with
/// [`raft_core::Entry::size_bytes`]); larger batches are split so records
/// stay well below the segment size and the 4 GiB record limit.
const MAX_ENTRIES_RECORD: u64 = 1024 * 1024;

/// Tuning for a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed once adding a record would take it past this
    /// many bytes (a single larger record still gets a segment of its own).
    pub segment_size: u64,
    /// How long the synced mark in the state file (`raft-state`) may lag
    /// the log: after a sync, the file is rewritten if this much time
    /// passed since it last was (and always when the hard state changed).
    /// Synced entries newer than the mark can be lost without recovery
    /// noticing; zero closes that window at the price of a rename and two
    /// more fsyncs per sync. Default 100 ms.
    pub state_file_interval: Duration,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_size: DEFAULT_SEGMENT_SIZE, state_file_interval: Duration::from_millis(100) }
    }
}

impl WalOptions {
    /// These options with `segment_size` replaced.
    pub fn with_segment_size(mut self, segment_size: u64) -> Self {
        self.segment_size = segment_size;
        self
    }
}

/// Everything that can go wrong with the WAL.
#[derive(Debug)]
pub enum WalError {
    /// An operating-system call failed.
    Io {
        /// What the WAL was doing (e.g. `"fsync"`).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The WAL holds damage that recovery will not repair automatically
    /// because doing so could lose acknowledged data.
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the damaged record (or header field) in `file`.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment was written in a format version this build cannot read
    /// (typically by a newer release, after a downgrade). Nothing was
    /// modified: run a build that supports `found`.
    UnsupportedVersion {
        /// The segment file.
        file: PathBuf,
        /// The version in its header.
        found: u32,
        /// The versions this build reads ([`SUPPORTED_WAL_VERSIONS`]).
        supported: &'static [u32],
    },
    /// A [`Persist`] that would break the log's invariants (e.g. entries
    /// that do not follow the stored log). Nothing of it was written.
    InvalidWrite {
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fsync failed, so what is on disk is unknown.
    /// Retrying an fsync after a failure can report success for lost data
    /// (Linux drops the dirty pages), so the WAL refuses all further work;
    /// reopen it (restart the node) to recover from what is durable.
    Poisoned,
    /// The [`WalWriter`] thread has exited (after an error, or a panic in
    /// its callback).
    WriterStopped,
}

impl WalError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> WalError {
        WalError::Io { op, path: path.to_path_buf(), source }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { op, path, source } => write!(f, "WAL {op} failed for {}: {source}", path.display()),
            WalError::Corrupt { file, offset, reason } => {
                write!(f, "corrupt WAL segment {} at byte offset {offset}: {reason}", file.display())
            }
            WalError::UnsupportedVersion { file, found, supported } => write!(
                f,
                "WAL segment {} has format version {found}, but this build reads only version(s) {supported:?}; \
                 it was probably written by a newer release",
                file.display()
            ),
            WalError::InvalidWrite { reason } => write!(f, "invalid WAL write: {reason}"),
            WalError::Poisoned => f.write_str("WAL is unusable after an earlier I/O error; restart to recover"),
            WalError::WriterStopped => f.write_str("WAL writer thread has stopped"),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An open write-ahead log, positioned at the end of its newest segment.
///
/// Only the tail (current segment, hard state, last index, snapshot) and a
/// short record per closed segment (its highest entry index, for deletion)
/// are kept in memory; the entries themselves are handed to the caller by
/// [`Wal::open`].
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// The segment being appended to.
    file: File,
    seg_seq: u64,
    seg_path: PathBuf,
    /// Length of the current segment including `buf`.
    seg_len: u64,
    /// Encoded records not yet handed to the kernel.
    buf: Vec<u8>,
    /// What the log holds once everything written so far is replayed;
    /// used to validate writes before they reach the disk.
    hard_state: HardState,
    /// The index the next entry must follow (the last entry, or the
    /// snapshot's last included index when none follows it).
    last_index: Index,
    /// The newest snapshot marker written (including unsynced writes).
    snapshot: Option<SnapshotMeta>,
    /// The segment holding that marker.
    snapshot_seg: Option<u64>,
    /// The segments before the current one, oldest first.
    closed: VecDeque<ClosedSegment>,
    /// The highest entry index written into the current segment, `0` if none.
    seg_max_index: Index,
    segments_deleted: u64,
    fsyncs: u64,
    poisoned: bool,
    /// Where each run of equal terms starts in the log, oldest first (the
    /// term of the last entry is the synced mark's).
    term_runs: Vec<(Index, Term)>,
    /// What the state file holds (`None` before the first write).
    state: Option<StateFileV1>,
    /// When the state file was last written.
    state_written: Instant,
    /// A loss of synced entries not yet repaired (kept in the state file).
    repair: Option<Repair>,
}

/// A segment before the current one: a candidate for deletion.
#[derive(Debug)]
struct ClosedSegment {
    seq: u64,
    path: PathBuf,
    /// The highest entry index written into it, `0` if none.
    max_index: Index,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segment", &self.seg_path)
            .field("segment_len", &self.seg_len)
            .field("buffered", &self.buf.len())
            .field("hard_state", &self.hard_state)
            .field("last_index", &self.last_index)
            .field("snapshot_index", &self.snapshot_index())
            .field("closed_segments", &self.closed.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and replays it.
    ///
    /// Returns the WAL ready for appending, the state to pass to
    /// `Node::restore`, and what recovery found. A torn tail is cut off
    /// (and the cut fsynced) before this returns; corruption is refused
    /// with [`WalError::Corrupt`], and a segment of a format version this
    /// build cannot read with [`WalError::UnsupportedVersion`]; in both
    /// cases nothing is modified.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, PersistedState, RecoveryReport), WalError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| WalError::io("create directory", &dir, e))?;
        let replay = recovery::replay(&dir)?;
        if let Some(corruption) = replay.corruption {
            return Err(corruption);
        }
        repair_torn_tail(&dir, &replay)?;
        let mut segments = replay.segments;
        let current = segments.pop();
        let (file, seg_seq, seg_path, seg_len, seg_max_index, fsyncs) = match current {
            Some(seg) => {
                // Appended to whatever its version: records other than the
                // snapshot marker (which always opens a new segment) have
                // the same bytes in every version.
                let file =
                    OpenOptions::new().append(true).open(&seg.path).map_err(|e| WalError::io("open", &seg.path, e))?;
                let seg_len = file.metadata().map_err(|e| WalError::io("stat", &seg.path, e))?.len();
                (file, seg.seq, seg.path, seg_len, seg.max_index, 0)
            }
            None => {
                let seq = match &replay.tail {
                    // Reuse the number of a removed torn segment, so that a
                    // log that starts later than 1 keeps its numbering.
                    Some(recovery::TornTail::Remove { seq, .. }) => *seq,
                    _ => 1,
                };
                let (file, seg_path, fsyncs) = create_segment(&dir, seq)?;
                (file, seq, seg_path, SEGMENT_HEADER_LEN as u64, 0, fsyncs)
            }
        };
        let closed =
            segments.into_iter().map(|s| ClosedSegment { seq: s.seq, path: s.path, max_index: s.max_index }).collect();
        let mut state = replay.state;
        let mut report = replay.report;
        let saved = state_file::read(&dir)?;
        let repair = check_against_state_file(&dir, saved.as_ref(), &mut state, &mut report);
        let mut term_runs: Vec<(Index, Term)> = Vec::new();
        for e in &state.entries {
            if term_runs.last().is_none_or(|&(_, t)| t != e.term) {
                term_runs.push((e.index, e.term));
            }
        }
        let mut wal = Wal {
            dir,
            options,
            file,
            seg_seq,
            seg_path,
            seg_len,
            buf: Vec::with_capacity(64 * 1024),
            hard_state: state.hard_state,
            last_index: state.last_index(),
            snapshot: state.snapshot.clone(),
            snapshot_seg: replay.snapshot_segment,
            closed,
            seg_max_index,
            segments_deleted: 0,
            fsyncs,
            poisoned: false,
            term_runs,
            state: saved,
            state_written: Instant::now(),
            repair,
        };
        if report.hard_state_restored {
            // The segments lost the hard state record: write it again.
            let hs = wal.hard_state;
            wal.append(&Record::HardState(hs.into()))?;
        }
        // Once per start: records a loss found now, and gives a data
        // directory of an older build its state file.
        wal.flush_buf()?;
        wal.fsync_segment()?;
        wal.write_state_file(wal.state_now())?;
        Ok((wal, state, report))
    }

    /// Appends `persist` to the log buffer; it is durable only after the
    /// next successful [`Wal::sync`].
    ///
    /// The write is validated first (truncation index, entries following
    /// the log), and an invalid one is refused without writing anything.
    /// Records are written in the order hard state, snapshot marker,
    /// truncation, entries: any prefix of them that survives a crash is
    /// itself a valid log. A snapshot marker first moves to a new segment,
    /// which starts with the hard state (after this write's) and the marker.
    pub fn write(&mut self, persist: &Persist) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        self.check_write(persist)?;
        if let Some(meta) = &persist.snapshot {
            self.start_snapshot_segment(persist.hard_state.unwrap_or(self.hard_state), meta)?;
        } else if let Some(hs) = persist.hard_state
            && hs != self.hard_state
        {
            self.append(&Record::HardState(hs.into()))?;
            self.hard_state = hs;
        }
        let floor = self.snapshot_index();
        if let Some(from) = persist.truncate_from
            && from <= self.last_index
            && self.last_index > floor
        {
            // A truncation that deletes nothing (past the end, or of a log
            // that holds no entry after the snapshot) needs no record. One
            // reaching into the snapshot deletes the same as one from just
            // after it, which is what is written: replay after segment
            // deletion may not see the snapshot it would be cut short by.
            let from = from.max(floor + 1);
            if let Some(saved) = self.state.filter(|s| s.synced_index >= from) {
                // Lower the synced mark first: a crash after the cut but
                // before the next state file must not look like a loss.
                let lowered = StateFileV1 { synced_index: from - 1, synced_term: self.term_at(from - 1), ..saved };
                self.write_state_file(lowered)?;
            }
            self.append(&Record::Truncate(WalTruncateV1 { from }))?;
            self.last_index = from - 1;
            self.term_runs.retain(|&(start, _)| start < from);
        }
        self.append_entries(&persist.entries)?;
        if self.buf.len() >= FLUSH_THRESHOLD {
            self.flush_buf()?;
        }
        Ok(())
    }

    /// Refuses a write that would break the log's invariants (or that
    /// recovery would refuse to read back).
    fn check_write(&self, persist: &Persist) -> Result<(), WalError> {
        let invalid = |reason: String| Err(WalError::InvalidWrite { reason });
        if let Some(HardState { vote: Some(0), .. }) = persist.hard_state {
            return invalid("vote for node id 0 (reserved)".into());
        }
        let mut last = self.last_index;
        let mut floor = self.snapshot_index();
        if let Some(meta) = &persist.snapshot {
            // What recovery refuses to read back (see `WalSnapshotV3`).
            if meta.last_included_index == 0 {
                return invalid("snapshot marker through index 0 (indexes start at 1)".into());
            }
            if let Err(e) = meta.membership.validate() {
                return invalid(format!("snapshot marker with an invalid configuration: {e}"));
            }
            // The core only ever moves its snapshot forward; replay after
            // segment deletion relies on that (see `recovery`).
            if meta.last_included_index < floor {
                return invalid(format!(
                    "snapshot marker through index {} is older than the one the log follows (through {floor})",
                    meta.last_included_index
                ));
            }
            last = last_index_after_marker(last, floor, meta.last_included_index);
            floor = meta.last_included_index;
        }
        if let Some(from) = persist.truncate_from {
            if from == 0 {
                return invalid("truncate_from is 0 (indexes start at 1)".into());
            }
            last = last.min(from - 1).max(floor);
        }
        for e in &persist.entries {
            if e.index != last + 1 {
                return invalid(format!("entry index {} does not follow last index {last}", e.index));
            }
            if e.kind == raft_core::EntryKind::Config
                && let Err(err) = raft_core::Membership::decode(&e.data)
            {
                return invalid(format!("config entry {} does not decode: {err}", e.index));
            }
            last = e.index;
        }
        Ok(())
    }

    /// Appends `entries` as one or more `Entries` records: big batches are
    /// split so that a record never dwarfs a segment.
    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        let chunk_limit = (self.options.segment_size / 4).clamp(1, MAX_ENTRIES_RECORD);
        let mut rest = entries;
        while !rest.is_empty() {
            let mut n = 0;
            let mut size = 0u64;
            while n < rest.len() && (n == 0 || size < chunk_limit) {
                size += rest[n].size_bytes() as u64;
                n += 1;
            }
            self.append(&Record::Entries(WalEntriesV1(&rest[..n])))?;
            for e in &rest[..n] {
                if self.term_runs.last().is_none_or(|&(_, t)| t != e.term) {
                    self.term_runs.push((e.index, e.term));
                }
            }
            self.last_index = rest[n - 1].index;
            // `append` may have moved to a new segment: the record is in
            // the current one either way.
            self.seg_max_index = self.seg_max_index.max(self.last_index);
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Closes the current segment and starts one with the hard state `hs`
    /// and the marker `meta` as its first records (never split by a
    /// rotation, however small the segment size), and applies the marker
    /// rule to the tracked log.
    fn start_snapshot_segment(&mut self, hs: HardState, meta: &SnapshotMeta) -> Result<(), WalError> {
        if let Err(e) = self.flush_buf().and_then(|()| self.rotate()) {
            self.poisoned = true;
            return Err(e);
        }
        let marker = WalSnapshotV3::from(meta);
        for record in [Record::HardState(hs.into()), Record::Snapshot(&marker)] {
            let len = append_record(&mut self.buf, &record).map_err(|reason| WalError::InvalidWrite { reason })?;
            self.seg_len += len as u64;
        }
        self.hard_state = hs;
        self.last_index = last_index_after_marker(self.last_index, self.snapshot_index(), meta.last_included_index);
        let covered = meta.last_included_index;
        if self.last_index == covered {
            // The log after the marker is empty: no run continues.
            self.term_runs.clear();
        } else {
            // Keep the run the marker falls in and the ones after it.
            let keep_from = self.term_runs.iter().rposition(|&(start, _)| start <= covered).unwrap_or(0);
            self.term_runs.drain(..keep_from);
        }
        self.snapshot = Some(meta.clone());
        self.snapshot_seg = Some(self.seg_seq);
        Ok(())
    }

    /// Makes everything written so far durable: flushes the buffer and
    /// fsyncs the current segment (`fdatasync`: the data and the file size,
    /// not timestamps). Segment creation fsyncs the directory itself.
    ///
    /// Then deletes the segments the newest snapshot marker made obsolete
    /// (see the module docs); a failed directory fsync there is an error
    /// (and poisons the WAL), a file that cannot be deleted is only logged
    /// and retried at the next sync.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        self.flush_buf()?;
        self.fsync_segment()?;
        self.after_sync_state()?;
        self.delete_obsolete_segments()
    }

    /// The term of the entry at `index` (`index` at or after the snapshot).
    fn term_at(&self, index: Index) -> Term {
        if let Some(m) = &self.snapshot
            && index <= m.last_included_index
        {
            return m.last_included_term;
        }
        self.term_runs.iter().rev().find(|&&(start, _)| start <= index).map_or(0, |&(_, t)| t)
    }

    /// The state file for what is durable now (call right after an fsync).
    fn state_now(&self) -> StateFileV1 {
        StateFileV1 {
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            synced_index: self.last_index,
            synced_term: self.term_at(self.last_index),
            repair: self.repair.map(|r| (r.lost_through, r.last_term)),
        }
    }

    /// After an fsync: ends a repair the durable log now covers (the same
    /// rule as the core's, [`Repair::covered_by`]) and rewrites the state
    /// file when the hard state or the repair changed, or the synced mark
    /// is older than [`WalOptions::state_file_interval`].
    fn after_sync_state(&mut self) -> Result<(), WalError> {
        let last_term = self.term_at(self.last_index);
        if self.repair.is_some_and(|r| r.covered_by(self.last_index, last_term)) {
            tracing::info!(dir = %self.dir.display(), last_index = self.last_index, "WAL: the log lost on disk is repaired");
            self.repair = None;
        }
        let next = self.state_now();
        let due = match self.state {
            None => true,
            Some(s) if s == next => false,
            Some(s) => {
                s.hard_state() != self.hard_state
                    || s.repair != next.repair
                    || self.state_written.elapsed() >= self.options.state_file_interval
            }
        };
        if due { self.write_state_file(next) } else { Ok(()) }
    }

    fn write_state_file(&mut self, next: StateFileV1) -> Result<(), WalError> {
        match state_file::write(&self.dir, &next) {
            Ok(fsyncs) => {
                self.fsyncs += fsyncs;
                self.state = Some(next);
                self.state_written = Instant::now();
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// A loss of synced entries found on open (or earlier) and not yet
    /// repaired: hand it to [`raft_core::Node::begin_repair`].
    pub fn repair(&self) -> Option<Repair> {
        self.repair
    }

    /// Deletes, oldest first, every closed segment before the newest
    /// marker's segment whose entries the snapshot covers; stops at the
    /// first one that does not qualify, so that what remains is a suffix.
    /// Call only once the marker is durable.
    fn delete_obsolete_segments(&mut self) -> Result<(), WalError> {
        let (Some(marker_seg), Some(covered)) = (self.snapshot_seg, self.snapshot.as_ref()) else {
            return Ok(());
        };
        let covered = covered.last_included_index;
        while let Some(seg) = self.closed.front() {
            if seg.seq >= marker_seg || seg.max_index > covered {
                break;
            }
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                // Already gone (by hand): the goal is reached all the same.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // The file is intact and replays fine: keeping it costs
                    // only disk space, so retry at the next sync rather
                    // than stop the node.
                    tracing::warn!(file = %seg.path.display(), error = %e, "cannot delete obsolete WAL segment; will retry");
                    return Ok(());
                }
            }
            // Durable before the next deletion: a crash must never keep a
            // file while losing a later one (that gap would be corruption).
            self.fsyncs += 1;
            if let Err(e) = sync_dir(&self.dir) {
                self.poisoned = true;
                return Err(e);
            }
            tracing::debug!(file = %seg.path.display(), covered, "obsolete WAL segment deleted");
            self.closed.pop_front();
            self.segments_deleted += 1;
        }
        Ok(())
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hard state the log holds (including unsynced writes).
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The index of the last entry (including unsynced writes), `0` if none.
    pub fn last_index(&self) -> Index {
        self.last_index
    }

    /// The segment file currently appended to.
    pub fn current_segment(&self) -> &Path {
        &self.seg_path
    }

    /// The last included index of the snapshot the log follows (the newest
    /// marker written, including unsynced writes), `0` if none.
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |m| m.last_included_index)
    }

    /// The snapshot the log follows (the newest marker written, including
    /// unsynced writes), if any.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// How many obsolete segments this `Wal` has deleted since it was opened.
    pub fn segments_deleted(&self) -> u64 {
        self.segments_deleted
    }

    /// How many fsyncs this `Wal` has issued (files and directory), for
    /// metrics and for tests that check group commit.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs
    }

    /// Encodes one record at the end of the buffer, moving to a new segment
    /// first if the record would overflow the current one.
    fn append(&mut self, record: &Record<'_>) -> Result<(), WalError> {
        let start = self.buf.len();
        let len = append_record(&mut self.buf, record).map_err(|reason| WalError::InvalidWrite { reason })? as u64;
        let has_records = self.seg_len > SEGMENT_HEADER_LEN as u64;
        if has_records && self.seg_len + len > self.options.segment_size {
            // Records never straddle segments: the earlier records go to the
            // old segment, this one starts the new segment.
            let result = self.write_out(start).and_then(|()| self.rotate());
            if let Err(e) = result {
                self.poisoned = true;
                return Err(e);
            }
            self.buf.drain(..start);
        }
        self.seg_len += len;
        Ok(())
    }

    /// Closes the current segment (durably) and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        // The old segment must be complete on disk before the new one
        // exists: recovery treats damage in a non-last segment as
        // corruption, never as a torn tail.
        self.fsync_segment()?;
        let seq = self.seg_seq + 1;
        let (file, path, fsyncs) = create_segment(&self.dir, seq)?;
        self.file = file;
        let old_path = std::mem::replace(&mut self.seg_path, path);
        self.closed.push_back(ClosedSegment { seq: self.seg_seq, path: old_path, max_index: self.seg_max_index });
        self.seg_seq = seq;
        self.seg_len = SEGMENT_HEADER_LEN as u64;
        self.seg_max_index = 0;
        self.fsyncs += fsyncs;
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<(), WalError> {
        let n = self.buf.len();
        self.write_out(n)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes `buf[..n]` to the current segment (the caller drops it from
    /// the buffer). Poisons the WAL on failure: a partial write leaves the
    /// file in an unknown state.
    fn write_out(&mut self, n: usize) -> Result<(), WalError> {
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf[..n]) {
            self.poisoned = true;
            return Err(WalError::io("write", &self.seg_path, e));
        }
        Ok(())
    }

    fn fsync_segment(&mut self) -> Result<(), WalError> {
        self.fsyncs += 1;
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(WalError::io("fsync", &self.seg_path, e));
        }
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Hand complete buffered records to the kernel (no fsync): they were
        // never acknowledged, but keeping them costs nothing and helps
        // post-mortem inspection. Errors are moot at this point.
        if !self.poisoned {
            let _ = self.file.write_all(&self.buf);
        }
    }
}

/// Where the stored log ends after a snapshot marker through `covered`,
/// for a log that holds entries `floor + 1 ..= last` (`floor` the previous
/// snapshot's index, or 0): the rule of
/// [`PersistedState::follow_snapshot`] keeps the entries after `covered`
/// only if they continue it, and otherwise leaves none, so the log then
/// ends at `covered`.
fn last_index_after_marker(last: Index, floor: Index, covered: Index) -> Index {
    if floor <= covered && covered < last { last } else { covered }
}

/// Compares what replay found with the state file (if there is one): a
/// hard state newer in the file means the segments lost its record (the
/// file's is used, and `report` says so); a log less up to date than the
/// synced mark means the disk lost synced entries. Both are logged as
/// errors. Returns the loss to repair, merged with one the file still
/// records, unless the log already covers it.
fn check_against_state_file(
    dir: &Path,
    saved: Option<&StateFileV1>,
    state: &mut PersistedState,
    report: &mut RecoveryReport,
) -> Option<Repair> {
    let saved = saved?;
    let (wal_hs, file_hs) = (state.hard_state, saved.hard_state());
    if file_hs.term > wal_hs.term || (file_hs.term == wal_hs.term && wal_hs.vote.is_none() && file_hs.vote.is_some()) {
        tracing::error!(
            dir = %dir.display(),
            wal = ?wal_hs,
            state_file = ?file_hs,
            "WAL lost synced data: the segments hold an older term or vote than the state file; using the state file's"
        );
        state.hard_state = file_hs;
        report.term = file_hs.term;
        report.vote = file_hs.vote;
        report.hard_state_restored = true;
    }
    let last = state.last_index();
    let last_term = state.entries.last().map(|e| e.term).or(state.snapshot.as_ref().map(|m| m.last_included_term));
    let last_term = last_term.unwrap_or(0);
    let mut repair = saved.repair();
    let synced = Repair { lost_through: saved.synced_index, last_term: saved.synced_term };
    if saved.synced_index > 0 && !synced.covered_by(last, last_term) {
        tracing::error!(
            dir = %dir.display(),
            synced_index = saved.synced_index,
            synced_term = saved.synced_term,
            last_index = last,
            last_term,
            "WAL lost synced data: the log ends before the entries it had synced; the node will not vote for a \
             candidate behind the lost log, nor campaign, until its peers repair it"
        );
        repair = Some(repair.map_or(synced, |r| r.max(synced)));
    }
    let repair = repair.filter(|r| !r.covered_by(last, last_term));
    report.repair = repair;
    repair
}

/// Cuts off (or removes) the torn tail replay found, durably, before any
/// new record goes after it.
fn repair_torn_tail(dir: &Path, replay: &recovery::Replay) -> Result<(), WalError> {
    match &replay.tail {
        Some(recovery::TornTail::Cut { path, keep }) => {
            let f = OpenOptions::new().write(true).open(path).map_err(|e| WalError::io("open", path, e))?;
            f.set_len(*keep).map_err(|e| WalError::io("truncate torn tail of", path, e))?;
            // The cut must be durable before new records go after it:
            // otherwise a crash could resurrect the torn bytes between
            // valid records, which the next recovery would call corrupt.
            f.sync_all().map_err(|e| WalError::io("fsync", path, e))?;
            tracing::warn!(file = %path.display(), bytes = replay.report.torn_tail_bytes, "WAL torn tail cut");
        }
        Some(recovery::TornTail::Remove { path, .. }) => {
            fs::remove_file(path).map_err(|e| WalError::io("remove torn segment", path, e))?;
            sync_dir(dir)?;
            tracing::warn!(file = %path.display(), "WAL segment with torn header removed");
        }
        None => {}
    }
    Ok(())
}

/// Creates segment `seq` with its header, and makes both the file and its
/// directory entry durable before any record goes in (so a crash can only
/// tear the header of the newest segment). Returns the fsyncs issued.
fn create_segment(dir: &Path, seq: u64) -> Result<(File, PathBuf, u64), WalError> {
    let path = dir.join(segment_file_name(seq));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| WalError::io("create segment", &path, e))?;
    file.write_all(&segment_header()).map_err(|e| WalError::io("write", &path, e))?;
    file.sync_all().map_err(|e| WalError::io("fsync", &path, e))?;
    sync_dir(dir)?;
    Ok((file, path, 2))
}

/// fsyncs a directory, making file creations and removals in it durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| WalError::io("fsync directory", dir, e))
}

/// Reports the state and health of the WAL in `dir` without modifying
/// anything (a torn tail is reported, not cut). Used by
/// `raftkv inspect --data-dir DIR`.
///
/// Corruption is not an error here but part of the report; only a failure
/// to read the directory or a segment is.
pub fn inspect(dir: impl AsRef<Path>) -> Result<InspectReport, WalError> {
    let dir = dir.as_ref();
    // Fail clearly on a missing directory instead of reporting an empty log.
    fs::metadata(dir).map_err(|e| WalError::io("stat", dir, e))?;
    let replay = recovery::replay(dir)?;
    let (health, error, corrupt_file, corrupt_offset) = match &replay.corruption {
        Some(e @ WalError::Corrupt { file, offset, .. }) => {
            (WalHealth::Corrupt, Some(e.to_string()), Some(file.display().to_string()), Some(*offset))
        }
        // Refused (the node will not start), but named for what it is: a
        // segment from another format version, pointing at the header's
        // version field.
        Some(e @ WalError::UnsupportedVersion { file, .. }) => {
            (WalHealth::UnsupportedVersion, Some(e.to_string()), Some(file.display().to_string()), Some(8))
        }
        Some(e) => (WalHealth::Corrupt, Some(e.to_string()), None, None),
        None => {
            let saved = state_file::read(dir)?;
            let (mut state, mut report) = (replay.state.clone(), replay.report.clone());
            let lost = check_against_state_file(dir, saved.as_ref(), &mut state, &mut report).is_some()
                || report.hard_state_restored;
            if lost {
                (WalHealth::LostSynced, None, None, None)
            } else if replay.tail.is_some() {
                (WalHealth::TornTail, None, None, None)
            } else {
                (WalHealth::Ok, None, None, None)
            }
        }
    };
    // The core's own rule for which configuration is in force (newest entry, else the snapshot's).
    let membership = raft_core::Node::restore(raft_core::Config::new(1, Vec::new()), replay.state.clone(), 0)
        .ok()
        .filter(|n| n.membership_index() > 0)
        .map(|n| {
            let m = n.membership();
            MembershipSummary {
                voters: m.voters.clone(),
                outgoing: m.outgoing.clone(),
                learners: m.learners.clone(),
                index: n.membership_index(),
            }
        });
    Ok(InspectReport {
        membership,
        dir: dir.display().to_string(),
        health,
        error,
        corrupt_file,
        corrupt_offset,
        snapshot_index: replay.report.snapshot_index,
        snapshot_term: replay.report.snapshot_term,
        wal: replay.report,
    })
}
