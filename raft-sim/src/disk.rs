//! A simulated disk: writes stay volatile until an fsync completes, and a
//! crash loses every write that was not yet synced.

use std::collections::{BTreeMap, VecDeque};

use raft_core::{Bytes, Index, Persist, PersistedState, Term};

/// One node's stable storage: the log (writes stay volatile until synced)
/// and snapshot images (written durably at once, as a driver fsyncs a
/// snapshot file and its directory before reporting it).
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    durable: PersistedState,
    /// Writes issued but not yet synced, oldest first.
    pending: VecDeque<Persist>,
    /// Snapshot images by last included index.
    images: BTreeMap<Index, Bytes>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Queues a write; it is lost if the node crashes before `sync`.
    pub fn write(&mut self, persist: Persist) {
        self.pending.push_back(persist);
    }

    /// Number of writes waiting for an fsync.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// Makes the oldest `count` pending writes durable (all of them if
    /// `count` is `None`) and returns the highest seq now durable.
    pub fn sync(&mut self, count: Option<usize>) -> Option<u64> {
        let n = count.unwrap_or(self.pending.len()).min(self.pending.len());
        let mut last = None;
        for p in self.pending.drain(..n) {
            apply(&mut self.durable, &p);
            last = Some(p.seq);
        }
        // Images older than the one the durable log follows are no longer
        // needed by any restart.
        let base = self.durable.snapshot.as_ref().map_or(0, |m| m.last_included_index);
        self.images.retain(|&i, _| i >= base);
        last
    }

    /// A crash: every unsynced write is gone.
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    /// The disk loses synced log entries: only the first `keep` entries
    /// after the snapshot survive (the snapshot and hard state, kept
    /// apart and redundantly, do). Returns the log's last index before the
    /// loss if anything was lost.
    pub fn lose_synced(&mut self, keep: usize) -> Option<Index> {
        if keep >= self.durable.entries.len() {
            return None;
        }
        let before = self.durable.last_index();
        self.durable.entries.truncate(keep);
        Some(before)
    }

    /// What a restarting node loads.
    pub fn durable(&self) -> &PersistedState {
        &self.durable
    }

    /// Stores a snapshot image durably. Older images are deleted once a
    /// durable write makes the log follow a newer one (see [`SimDisk::sync`]).
    pub fn store_image(&mut self, index: Index, image: Bytes) {
        self.images.insert(index, image);
    }

    /// The image of the snapshot ending at `index`, if this disk has it.
    pub fn image(&self, index: Index) -> Option<&Bytes> {
        self.images.get(&index)
    }

    /// Whether the durable state holds entry (`index`, `term`): in the log,
    /// or as the durable snapshot's last entry, or (for an earlier index)
    /// inside the durable snapshot, whose contents other checks judge.
    pub fn durably_holds(&self, index: Index, term: Term) -> bool {
        if let Some(m) = &self.durable.snapshot {
            if index < m.last_included_index {
                return true;
            }
            if index == m.last_included_index {
                return term == m.last_included_term;
            }
        }
        self.durable_term(index) == Some(term)
    }

    /// The term of the durable log entry at `index` (not counting the
    /// snapshot), if there is one.
    pub fn durable_term(&self, index: Index) -> Option<Term> {
        let base = self.durable.snapshot.as_ref().map_or(0, |m| m.last_included_index);
        let pos = index.checked_sub(base + 1)?;
        self.durable.entries.get(usize::try_from(pos).ok()?).map(|e| e.term)
    }
}

/// Applies one write to a persisted state, exactly as a WAL replay would:
/// the rule is [`PersistedState::apply`] in `raft-core`, shared with the std
/// driver's WAL so that the two cannot disagree on what a write means.
pub fn apply(state: &mut PersistedState, p: &Persist) {
    state.apply(p);
}
