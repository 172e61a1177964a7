//! A simulated disk: writes stay volatile until an fsync completes, and a
//! crash loses every write that was not yet synced.

use std::collections::VecDeque;

use raft_core::{Persist, PersistedState};

/// One node's stable storage.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    durable: PersistedState,
    /// Writes issued but not yet synced, oldest first.
    pending: VecDeque<Persist>,
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
        last
    }

    /// A crash: every unsynced write is gone.
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    /// What a restarting node loads.
    pub fn durable(&self) -> &PersistedState {
        &self.durable
    }
}

/// Applies one write to a persisted state, exactly as a WAL replay would.
pub fn apply(state: &mut PersistedState, p: &Persist) {
    if let Some(hs) = p.hard_state {
        state.hard_state = hs;
    }
    if let Some(from) = p.truncate_from {
        state.entries.retain(|e| e.index < from);
    }
    state.entries.extend(p.entries.iter().cloned());
}
