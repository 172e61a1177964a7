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
    /// The voters of the configuration in force at `last_included_index`
    /// (sorted). Membership changes will add to this, not change it.
    pub voters: alloc::vec::Vec<NodeId>,
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
