//! The data the protocol reasons about: log entries, hard state, ids.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's identity. `0` is reserved and never a valid id.
pub type NodeId = u64;
/// A Raft term. Term `0` is the term before any election.
pub type Term = u64;
/// A log index. Index `0` is the empty-log sentinel; the first entry is `1`.
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// An application command; `data` goes to the state machine.
    Normal,
    /// The empty entry a new leader appends so that it can commit entries of
    /// earlier terms (Raft paper §5.4.2 / thesis §3.6.2). Applied as a no-op.
    Noop,
    /// A cluster configuration: `data` is [`crate::Membership::encode`]. It
    /// takes effect when appended (thesis §4.1); the state machine applies it
    /// as a no-op.
    Config,
}

/// One log entry. The payload is reference-counted (`Bytes`), so the entry
/// travels from `Propose` through `Persist`, `Send` and `Apply` without its
/// bytes ever being copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The position of the entry in the log.
    pub index: Index,
    /// Whether this is an application command or an internal entry.
    pub kind: EntryKind,
    /// The application payload (empty for internal entries).
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for in message-size limits (payload plus a
    /// fixed overhead for the header).
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 24
    }
}

/// The state that must survive a crash before the node may act on it:
/// `currentTerm` and `votedFor` of the Raft paper (Figure 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term the node has seen.
    pub term: Term,
    /// The candidate that received this node's vote in `term`, if any.
    pub vote: Option<NodeId>,
}

/// What a snapshot stands for (thesis §5.1): the state machine after
/// applying every entry up to and including `last_included_index`, and the
/// configuration in force there. The snapshot's bytes are the driver's; the
/// core only ever handles this description of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot includes.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// The configuration in force at `last_included_index` (the newest
    /// configuration entry at or before it), so that a node restored from
    /// the snapshot knows its cluster without the entries it covers.
    pub membership: crate::Membership,
}

/// The last entry a node's log held durably before its disk lost synced
/// entries (see [`crate::Node::begin_repair`]). The driver records the
/// synced end of its log as it syncs, and keeps this mark durably (beside
/// the hard state) from the moment it finds a loss until
/// [`crate::Node::repairing`] returns `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Repair {
    /// Index of the last synced entry before the loss (every entry the node
    /// may have acknowledged lies at or below it).
    pub lost_through: Index,
    /// Term of that entry.
    pub last_term: Term,
}

impl Repair {
    /// Whether a durable log ending at (`last_index`, `last_term`) is at
    /// least as up to date as the lost one (Raft's order: last term first,
    /// then length): the repair is over. The core and the driver's WAL both
    /// decide by this, so they agree on when the durable mark goes.
    pub fn covered_by(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term, self.lost_through)
    }

    /// The more demanding of two marks (the one fewer logs cover).
    pub fn max(self, other: Repair) -> Repair {
        if other.covered_by(self.lost_through, self.last_term) { other } else { self }
    }
}

/// Everything a driver loads from stable storage to restart a node with
/// [`crate::Node::restore`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// The last durable hard state.
    pub hard_state: HardState,
    /// The snapshot the stored log follows (the one named by the newest
    /// durable [`crate::Persist::snapshot`]), whose image the driver has
    /// restored into the state machine before stepping the node; `None`
    /// for a log that starts at index 1.
    pub snapshot: Option<SnapshotMeta>,
    /// The durable log after the snapshot: contiguous from
    /// `last_included_index + 1` (from 1 without a snapshot).
    pub entries: alloc::vec::Vec<Entry>,
}

impl PersistedState {
    /// The index of the last entry the stored log holds: its last entry, or
    /// the snapshot's last included index when no entry follows the
    /// snapshot, or `0` for an empty log without a snapshot. The next
    /// appended entry must have index `last_index() + 1`.
    pub fn last_index(&self) -> Index {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => e.index,
            (None, Some(m)) => m.last_included_index,
            (None, None) => 0,
        }
    }

    /// Records that the stored log now follows the snapshot `meta` (the
    /// meaning of [`crate::Persist::snapshot`]): every entry with index
    /// `<= meta.last_included_index` goes, because the snapshot covers it.
    /// The entries after it are kept only if they still continue the
    /// snapshot (the first one is `last_included_index + 1`); otherwise
    /// (a log that started after the snapshot's end, which happens when an
    /// older snapshot is followed) they are all deleted too, since they
    /// would leave a hole. Either way `self.entries` is contiguous from
    /// `last_included_index + 1` afterwards, as [`crate::Node::restore`]
    /// requires.
    ///
    /// This is the rule every store of a [`crate::Persist`] applies (the
    /// simulator's disk and the std driver's WAL replay both call it), so
    /// that they cannot disagree on what a marker means.
    pub fn follow_snapshot(&mut self, meta: SnapshotMeta) {
        let base = meta.last_included_index;
        self.entries.retain(|e| e.index > base);
        if self.entries.first().is_some_and(|e| e.index != base + 1) {
            self.entries.clear();
        }
        self.snapshot = Some(meta);
    }

    /// Deletes every stored entry with index `>= from` (the meaning of
    /// [`crate::Persist::truncate_from`]); an index past the end deletes
    /// nothing. The snapshot is not affected.
    pub fn truncate_from(&mut self, from: Index) {
        let keep = self.entries.partition_point(|e| e.index < from);
        self.entries.truncate(keep);
    }

    /// Applies one whole [`crate::Persist`] to this stored state, in the
    /// order its fields are documented: the hard state, then the snapshot
    /// marker ([`PersistedState::follow_snapshot`]), then the truncation
    /// ([`PersistedState::truncate_from`]), then the appended entries.
    ///
    /// It does not check that the entries follow the log (the core only
    /// emits ones that do); a store that must defend against bad writes
    /// checks them against [`PersistedState::last_index`] first.
    pub fn apply(&mut self, p: &crate::Persist) {
        if let Some(hs) = p.hard_state {
            self.hard_state = hs;
        }
        if let Some(meta) = &p.snapshot {
            self.follow_snapshot(meta.clone());
        }
        if let Some(from) = p.truncate_from {
            self.truncate_from(from);
        }
        self.entries.extend(p.entries.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;
    use crate::Persist;

    fn entries(term: Term, range: core::ops::RangeInclusive<Index>) -> Vec<Entry> {
        range.map(|index| Entry { term, index, kind: EntryKind::Normal, data: Bytes::new() }).collect()
    }

    fn meta(index: Index, term: Term) -> SnapshotMeta {
        SnapshotMeta {
            last_included_index: index,
            last_included_term: term,
            membership: crate::Membership::new(vec![1, 2, 3]),
        }
    }

    fn state(range: core::ops::RangeInclusive<Index>) -> PersistedState {
        PersistedState { entries: entries(1, range), ..PersistedState::default() }
    }

    #[test]
    fn follow_snapshot_keeps_the_entries_after_it() {
        let mut s = state(1..=10);
        s.follow_snapshot(meta(4, 1));
        assert_eq!(s.entries, entries(1, 5..=10));
        assert_eq!(s.snapshot, Some(meta(4, 1)));
        assert_eq!(s.last_index(), 10);
    }

    #[test]
    fn follow_snapshot_past_the_end_empties_the_log() {
        let mut s = state(1..=3);
        s.follow_snapshot(meta(7, 2));
        assert!(s.entries.is_empty());
        assert_eq!(s.last_index(), 7);
        // Exactly at the end: nothing remains either.
        let mut s = state(1..=3);
        s.follow_snapshot(meta(3, 1));
        assert!(s.entries.is_empty());
        assert_eq!(s.last_index(), 3);
    }

    #[test]
    fn follow_an_older_snapshot_clears_entries_that_would_leave_a_hole() {
        let mut s = state(11..=20);
        s.snapshot = Some(meta(10, 1));
        // The log no longer continues a snapshot ending at 5.
        s.follow_snapshot(meta(5, 1));
        assert!(s.entries.is_empty());
        assert_eq!((s.snapshot.clone(), s.last_index()), (Some(meta(5, 1)), 5));
        // A newer one that the log continues keeps the rest.
        let mut s = state(11..=20);
        s.snapshot = Some(meta(10, 1));
        s.follow_snapshot(meta(15, 1));
        assert_eq!(s.entries, entries(1, 16..=20));
    }

    #[test]
    fn truncate_from_is_by_index_not_position() {
        let mut s = state(11..=20);
        s.snapshot = Some(meta(10, 1));
        s.truncate_from(15);
        assert_eq!(s.entries, entries(1, 11..=14));
        s.truncate_from(100);
        assert_eq!(s.entries, entries(1, 11..=14));
        s.truncate_from(3);
        assert!(s.entries.is_empty());
        assert_eq!(s.last_index(), 10);
        assert_eq!(PersistedState::default().last_index(), 0);
    }

    #[test]
    fn apply_orders_hard_state_marker_truncation_entries() {
        let mut s = state(1..=10);
        let hs = HardState { term: 3, vote: Some(2) };
        // The marker first (keeping 7..=10), then the truncation from 9,
        // then the new entries: 7, 8, then term 3's 9..=11.
        s.apply(&Persist {
            seq: 1,
            hard_state: Some(hs),
            snapshot: Some(meta(6, 1)),
            truncate_from: Some(9),
            entries: entries(3, 9..=11),
        });
        let mut expected = entries(1, 7..=8);
        expected.extend(entries(3, 9..=11));
        assert_eq!(s, PersistedState { hard_state: hs, snapshot: Some(meta(6, 1)), entries: expected });
        // Without a marker or a hard state, those stay as they were.
        s.apply(&Persist {
            seq: 2,
            hard_state: None,
            snapshot: None,
            truncate_from: None,
            entries: entries(3, 12..=12),
        });
        assert_eq!((s.hard_state, s.snapshot.clone(), s.last_index()), (hs, Some(meta(6, 1)), 12));
    }
}
