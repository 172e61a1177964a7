//! Snapshots in the driver: the policy that takes them, the background
//! thread that encodes and writes them, installing one fetched from the
//! leader, restoring from one at restart, and deleting what they replace.
//!
//! # Taking one
//!
//! When the entries (or bytes) applied since the last snapshot reach the
//! [`SnapshotPolicy`], the node thread captures [`StateMachine::snapshot`]
//! (cheap by the trait's contract) and hands it to a background thread,
//! which encodes it and writes the snapshot file (temp file, fsync, rename,
//! directory fsync). Only then does the node step
//! [`Event::SnapshotTaken`]: the core compacts its in-memory log and asks,
//! with a [`Persist::snapshot`](raft_core::Persist::snapshot) marker, for
//! the WAL to follow the snapshot; once that marker is durable the WAL
//! deletes the segments wholly before it and this module deletes the older
//! snapshot files. At every point a crash leaves a WAL whose newest marker
//! names a file that is complete on disk.
//!
//! # Installing one
//!
//! `Action::InstallSnapshot` starts a fetch thread
//! ([`Transport::fetch_snapshot`](crate::transport::Transport::fetch_snapshot));
//! the file it brings is checked (magic, version, CRC, and the metadata the
//! core asked for), restored into the state machine, and reported with
//! [`Event::SnapshotInstalled`]. Anything else is reported with
//! [`Event::SnapshotAborted`] and changes nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use raft_core::{Event, Index, NodeId, SnapshotMeta, Term};
use serde::Serialize;

use super::driver::Driver;
use super::{DriverError, Input};
use crate::failpoint::fail_point;
use crate::snapshot_file::{self, SnapshotFileError, snapshot_file_name};
use crate::state_machine::{SnapshotImage, StateMachine};

/// When the driver takes a snapshot: whichever bound is reached first,
/// counted in applied entries since the last snapshot (taken, installed or
/// restored). A bound of 0 is off; both 0 never snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Entries applied. Default 100,000 (etcd's default `snapshot-count`).
    pub every_entries: u64,
    /// Bytes of applied commands. Default 16 MiB, so the in-memory log and
    /// the WAL stay a small multiple of that whatever the entry size.
    pub every_bytes: u64,
    /// Entries kept in memory before the snapshot point, so that a follower
    /// a little behind catches up from the log rather than by a snapshot
    /// transfer (`raft_core::Config::snapshot_trailing_entries`). Default 1024.
    pub trailing_entries: u64,
}

impl SnapshotPolicy {
    /// Whether a snapshot is due after `entries` commands holding `bytes`
    /// bytes were applied since the last one. The simulator asks the same.
    pub fn is_due(&self, entries: u64, bytes: u64) -> bool {
        let by_entries = self.every_entries > 0 && entries >= self.every_entries;
        let by_bytes = self.every_bytes > 0 && bytes >= self.every_bytes;
        by_entries || by_bytes
    }
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { every_entries: 100_000, every_bytes: 16 * 1024 * 1024, trailing_entries: 1024 }
    }
}

/// What the driver did with snapshots (in [`Status`](super::Status)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotStats {
    /// Last included index of the newest snapshot this node holds (0: none).
    pub index: Index,
    /// Its last included term.
    pub term: Term,
    /// Its file's size in bytes.
    pub file_bytes: u64,
    /// Snapshots taken by this process.
    pub taken: u64,
    /// Snapshots installed from a leader by this process.
    pub installed: u64,
    /// Snapshot writes, fetches or installs that failed.
    pub failed: u64,
    /// How long the last snapshot write took, encoding included (ms).
    pub last_write_ms: u64,
    /// Entries applied since the newest snapshot.
    pub entries_since: u64,
    /// Command bytes applied since the newest snapshot.
    pub bytes_since: u64,
}

/// The driver's snapshot bookkeeping.
pub(super) struct Snapshots {
    pub(super) dir: PathBuf,
    policy: SnapshotPolicy,
    /// A write in progress: the entry and byte counters at its capture.
    writing: Option<(u64, u64)>,
    /// A fetch in progress.
    fetching: bool,
    /// The persist seq of the newest marker not yet known durable, and its
    /// index: once durable, older snapshot files can go.
    marker: Option<(u64, Index)>,
    pub(super) stats: SnapshotStats,
}

impl Snapshots {
    pub(super) fn new(dir: PathBuf, policy: SnapshotPolicy, restored: Option<(&SnapshotMeta, u64)>) -> Snapshots {
        let mut stats = SnapshotStats::default();
        if let Some((meta, file_bytes)) = restored {
            stats.index = meta.last_included_index;
            stats.term = meta.last_included_term;
            stats.file_bytes = file_bytes;
        }
        Snapshots { dir, policy, writing: None, fetching: false, marker: None, stats }
    }

    /// Counts one applied command.
    pub(super) fn applied(&mut self, bytes: usize) {
        self.stats.entries_since += 1;
        self.stats.bytes_since += bytes as u64;
    }

    fn due(&self) -> bool {
        self.policy.is_due(self.stats.entries_since, self.stats.bytes_since) && self.writing.is_none() && !self.fetching
    }

    /// A `Persist` carrying a marker was submitted with `seq`.
    pub(super) fn marker_submitted(&mut self, seq: u64, meta: &SnapshotMeta) {
        self.marker = Some((seq, meta.last_included_index));
    }

    /// Everything up to `durable_seq` is durable: if that includes the
    /// newest marker, the snapshot files before it are garbage.
    pub(super) fn durable(&mut self, durable_seq: u64) {
        if let Some((seq, index)) = self.marker
            && seq <= durable_seq
        {
            self.marker = None;
            delete_files(&self.dir, |i| i < index);
        }
    }
}

/// Deletes the complete snapshot files whose index `doomed` picks.
fn delete_files(dir: &Path, doomed: impl Fn(Index) -> bool) {
    for (index, path) in snapshot_file::list_dir(dir).unwrap_or_default() {
        if doomed(index) {
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(file = %path.display(), "old snapshot deleted"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot delete old snapshot"),
            }
        }
    }
}

/// Deletes leftover temp and partial files (at startup, when no write or
/// fetch can be running).
fn delete_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.filter_map(Result::ok) {
        if e.file_name().to_str().is_some_and(snapshot_file::is_leftover_file_name) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// At startup: restores `state_machine` from the snapshot the WAL's newest
/// marker names, and clears out every other snapshot file. Returns the
/// file's size. A missing or damaged file is an error naming it: starting
/// from the log alone would silently lose the state the snapshot holds.
pub(super) fn restore_at_start<S: StateMachine>(
    dir: &Path,
    snapshot: Option<&SnapshotMeta>,
    state_machine: &mut S,
) -> Result<u64, DriverError> {
    fs::create_dir_all(dir).map_err(DriverError::Io)?;
    delete_leftovers(dir);
    let Some(meta) = snapshot else {
        // Files newer than no marker were never made the log's start.
        delete_files(dir, |_| true);
        return Ok(0);
    };
    let index = meta.last_included_index;
    let path = dir.join(snapshot_file_name(index));
    let (file_meta, image) = snapshot_file::read(&path).map_err(DriverError::Snapshot)?;
    if &file_meta != meta {
        let reason = format!("holds {file_meta:?}, but the WAL's snapshot record says {meta:?}");
        return Err(DriverError::Snapshot(SnapshotFileError::Corrupt { file: path, reason }));
    }
    state_machine.restore(&image).map_err(|e| DriverError::Restore { file: path.clone(), error: e })?;
    // Older ones are covered; newer ones were written but never recorded.
    delete_files(dir, |i| i != index);
    tracing::info!(
        event = "snapshot_restored",
        index,
        term = meta.last_included_term,
        bytes = image.len(),
        "state machine restored from snapshot"
    );
    Ok(fs::metadata(&path).map_or(0, |m| m.len()))
}

impl<S: StateMachine> Driver<S> {
    /// Takes a snapshot if the policy says it is time.
    pub(super) fn maybe_snapshot(&mut self) {
        if !self.snapshots.due() || self.node.installing_snapshot().is_some() {
            return;
        }
        let index = self.node.applied_index();
        let newer = self.node.snapshot().is_none_or(|m| index > m.last_included_index);
        let Some(meta) = self.node.snapshot_meta_at(index).filter(|_| newer) else {
            return;
        };
        let image = self.state_machine.snapshot();
        let dir = self.snapshots.dir.clone();
        let inputs = self.self_inputs.clone();
        let stats = &self.snapshots.stats;
        self.snapshots.writing = Some((stats.entries_since, stats.bytes_since));
        let started = Instant::now();
        let spawned = std::thread::Builder::new().name(format!("raft-snapshot-{}", self.node.id())).spawn(move || {
            let bytes = image.encode();
            let result = snapshot_file::write(&dir, &meta, &bytes)
                .map(|path| fs::metadata(path).map_or(0, |m| m.len()))
                .map_err(|e| e.to_string());
            let _ = inputs.send(Input::SnapshotWritten { meta, result, started });
        });
        if let Err(e) = spawned {
            self.snapshots.writing = None;
            self.snapshots.stats.failed += 1;
            tracing::error!(node = self.node.id(), error = %e, "cannot start the snapshot thread");
        }
    }

    /// The background write finished.
    pub(super) fn snapshot_written(
        &mut self,
        meta: SnapshotMeta,
        result: Result<u64, String>,
        started: Instant,
    ) -> Result<(), DriverError> {
        let (captured_entries, captured_bytes) = self.snapshots.writing.take().unwrap_or_default();
        let stats = &mut self.snapshots.stats;
        let file_bytes = match result {
            Ok(bytes) => bytes,
            Err(error) => {
                stats.failed += 1;
                // Counted from here again, so a full disk is retried at the policy's pace.
                stats.entries_since = 0;
                stats.bytes_since = 0;
                tracing::error!(event = "snapshot_write_failed", node = self.node.id(), index = meta.last_included_index, %error, "snapshot write failed");
                return Ok(());
            }
        };
        fail_point("snapshot-before-taken");
        let index = meta.last_included_index;
        stats.last_write_ms = started.elapsed().as_millis() as u64;
        // What was applied since the capture counts towards the next one.
        stats.entries_since -= captured_entries.min(stats.entries_since);
        stats.bytes_since -= captured_bytes.min(stats.bytes_since);
        self.step(Event::SnapshotTaken { index })?;
        // The core ignores a snapshot older than one installed meanwhile; the
        // file then goes with the next durable marker.
        if self.node.snapshot().is_some_and(|m| m.last_included_index == index) {
            let stats = &mut self.snapshots.stats;
            stats.taken += 1;
            stats.index = index;
            stats.term = meta.last_included_term;
            stats.file_bytes = file_bytes;
            tracing::info!(
                event = "snapshot_taken",
                node = self.node.id(),
                index,
                file_bytes,
                ms = stats.last_write_ms,
                "snapshot taken"
            );
        }
        Ok(())
    }

    /// `Action::InstallSnapshot`: fetch `meta`'s snapshot from `from` on a
    /// thread of its own.
    pub(super) fn fetch_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        let transport = Arc::clone(&self.transport);
        let dir = self.snapshots.dir.clone();
        let inputs = self.self_inputs.clone();
        self.snapshots.fetching = true;
        tracing::info!(
            event = "snapshot_fetch_started",
            node = self.node.id(),
            from,
            index = meta.last_included_index,
            "fetching snapshot"
        );
        let spawned = std::thread::Builder::new().name(format!("raft-fetch-{}", self.node.id())).spawn(move || {
            let result = transport.fetch_snapshot(from, meta.last_included_index, &dir).map_err(|e| e.to_string());
            let _ = inputs.send(Input::SnapshotFetched { from, meta, result });
        });
        if let Err(e) = spawned {
            tracing::error!(node = self.node.id(), error = %e, "cannot start the snapshot fetch thread");
            self.snapshots.fetching = false;
            self.snapshots.stats.failed += 1;
            self.followups.push(Event::SnapshotAborted);
        }
    }

    /// The fetch finished: install the file, or abort.
    pub(super) fn snapshot_fetched(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        result: Result<PathBuf, String>,
    ) -> Result<(), DriverError> {
        self.snapshots.fetching = false;
        let index = meta.last_included_index;
        match result.and_then(|path| self.install(&meta, &path).map(|()| path)) {
            Ok(path) => {
                let stats = &mut self.snapshots.stats;
                stats.installed += 1;
                stats.index = index;
                stats.term = meta.last_included_term;
                stats.file_bytes = fs::metadata(path).map_or(0, |m| m.len());
                stats.entries_since = 0;
                stats.bytes_since = 0;
                tracing::info!(event = "snapshot_installed", node = self.node.id(), from, index, "snapshot installed");
                self.step(Event::SnapshotInstalled { meta })
            }
            Err(error) => {
                self.snapshots.stats.failed += 1;
                tracing::warn!(event = "snapshot_install_aborted", node = self.node.id(), from, index, %error, "snapshot install aborted");
                self.step(Event::SnapshotAborted)
            }
        }
    }

    /// Checks the fetched file and restores the state machine from it. On
    /// error the file is deleted and the state machine is untouched.
    fn install(&mut self, meta: &SnapshotMeta, path: &Path) -> Result<(), String> {
        fail_point("install-before-restore");
        let checked = snapshot_file::read(path).map_err(|e| e.to_string()).and_then(|(file_meta, image)| {
            if &file_meta != meta {
                return Err(format!("{} holds {file_meta:?}, not the {meta:?} asked for", path.display()));
            }
            self.state_machine.restore(&image).map_err(|e| e.to_string())
        });
        if checked.is_err() {
            let _ = fs::remove_file(path);
        }
        fail_point("install-after-restore");
        checked
    }
}
