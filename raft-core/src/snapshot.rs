//! Snapshots and log compaction (Raft paper §7, Figure 13; thesis §5).
//!
//! The core never holds a snapshot's bytes. The driver takes snapshots of
//! its state machine and reports them ([`Event::SnapshotTaken`]); the core
//! then compacts its log and asks for the stored log to follow the snapshot
//! ([`Persist::snapshot`]). A leader whose follower needs compacted entries
//! names its snapshot in an InstallSnapshot message; the follower's driver
//! fetches the bytes from the leader's driver (by reference: the transfer,
//! its chunking and its resumption are the driver's), restores the state
//! machine and reports [`Event::SnapshotInstalled`]; the follower adopts the
//! snapshot as its log prefix, keeping the entries after it if its log
//! agrees there (Figure 13, receiver rule 6) and discarding the log if not
//! (rule 7), and acknowledges once the switch is durable.
//!
//! [`Event::SnapshotTaken`]: crate::Event::SnapshotTaken
//! [`Event::SnapshotInstalled`]: crate::Event::SnapshotInstalled
//! [`Persist::snapshot`]: crate::Persist::snapshot

use crate::event::Action;
use crate::message::{InstallSnapshot, MessageBody};
use crate::node::Node;
use crate::types::{Index, NodeId, SnapshotMeta};

impl Node {
    /// `Event::SnapshotTaken`: the driver snapshotted the state machine at
    /// applied index `index`.
    pub(crate) fn snapshot_taken(&mut self, index: Index) {
        let newer = self.snapshot.as_ref().is_none_or(|m| index > m.last_included_index);
        let Some(meta) = self.snapshot_meta_at(index).filter(|_| newer) else {
            self.stats.dropped_bad_snapshot += 1;
            return;
        };
        self.record_snapshot(meta);
        // Keep a trailing window so that a follower a little behind still
        // catches up from the log.
        self.log.compact_to(index.saturating_sub(self.config.snapshot_trailing_entries));
    }

    /// The leader offers follower `i` its newest snapshot (and waits).
    pub(crate) fn send_snapshot(&mut self, i: usize) {
        let Some(meta) = self.snapshot.clone() else { return };
        let pr = &mut self.progress[i];
        pr.become_snapshot(meta.last_included_index);
        let to = pr.id;
        self.send(to, MessageBody::InstallSnapshot(InstallSnapshot { meta }));
    }

    /// InstallSnapshot receiver (Figure 13), by reference.
    pub(crate) fn install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if !self.heard_from_leader(from) {
            return;
        }
        if meta.last_included_index <= self.commit_index || self.installing.is_some() {
            // We hold that prefix already (committed entries match every
            // later leader's log), or an install is under way: answer with
            // what we hold, which also tells the leader we are alive.
            self.matched_index = self.matched_index.max(self.commit_index);
            self.send_ack(true);
            return;
        }
        self.installing = Some(meta.clone());
        self.out.push(Action::InstallSnapshot { from, meta });
    }

    /// `Event::SnapshotInstalled`: the driver restored the state machine
    /// from `meta` and stored the snapshot durably.
    pub(crate) fn snapshot_installed(&mut self, meta: SnapshotMeta) {
        let (index, term) = (meta.last_included_index, meta.last_included_term);
        if self.installing.take().is_none() || index <= self.applied_index || term == 0 || term > self.hard_state.term {
            self.stats.dropped_bad_snapshot += 1;
            return;
        }
        if self.log.matches(index, term) {
            // Rule 6: our log agrees at the snapshot's end; keep what follows.
            self.log.compact_to(index);
        } else {
            // Rule 7: discard the whole log.
            self.discard_log_for_snapshot(index, term);
        }
        self.record_snapshot(meta);
        // The configuration is the snapshot's, or a newer one in the log
        // kept after it (rule 6).
        self.recompute_membership();
        // The snapshot holds committed state only.
        self.commit_index = self.commit_index.max(index);
        self.leader_commit = self.leader_commit.max(index);
        self.matched_index = self.matched_index.max(index);
        self.applied_index = index;
        // The acknowledgement goes out once the switch is durable
        // (`after_persisted`), like any other.
    }

    /// `Event::SnapshotAborted`: the install failed; apply what we have.
    pub(crate) fn snapshot_aborted(&mut self) {
        if self.installing.take().is_none() {
            self.stats.dropped_bad_snapshot += 1;
        }
    }

    /// Makes `meta` the node's snapshot and asks for the stored log to
    /// follow it.
    fn record_snapshot(&mut self, meta: SnapshotMeta) {
        let newer = self.snapshot.as_ref().is_none_or(|m| meta.last_included_index > m.last_included_index);
        if newer {
            self.snapshot = Some(meta.clone());
        }
        self.persist_snapshot(meta);
    }
}
