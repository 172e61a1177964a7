//! The messages Raft peers exchange. All of them carry the sender's term;
//! the sender's id comes from the transport (`Event::Message::from`).

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, SnapshotMeta, Term};

/// A message between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender's current term (for a pre-vote request: the term it would
    /// campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The RPCs of the Raft paper plus PreVote (thesis §9.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// RequestVote (or its pre-vote probe).
    RequestVote(RequestVote),
    /// Reply to [`MessageBody::RequestVote`].
    RequestVoteResponse(RequestVoteResponse),
    /// AppendEntries; with no entries it is a heartbeat.
    AppendEntries(AppendEntries),
    /// Reply to [`MessageBody::AppendEntries`] (and to
    /// [`MessageBody::InstallSnapshot`]).
    AppendEntriesResponse(AppendEntriesResponse),
    /// InstallSnapshot (Raft paper Figure 13), by reference: the leader
    /// names the snapshot and the follower's driver fetches its bytes. The
    /// follower answers with an `AppendEntriesResponse::Success` once the
    /// snapshot is installed and durable (or at once if it already holds
    /// that prefix).
    InstallSnapshot(InstallSnapshot),
    /// Leadership transfer (thesis §3.10): the leader tells an up-to-date
    /// voter to start a real election now, skipping PreVote.
    TimeoutNow,
    /// A follower asks its leader for a read index (thesis §6.4.1).
    ReadIndex(ReadIndex),
    /// The leader's answer to [`MessageBody::ReadIndex`].
    ReadIndexResponse(ReadIndexResponse),
    /// The leader confirms it still leads before serving reads: every voter
    /// that is still in the leader's term answers with a
    /// [`MessageBody::ReadRoundAck`] (see `read.rs`). It also counts as
    /// hearing from the leader, like a heartbeat.
    ReadRound {
        /// The round's number, increasing within the leader's term.
        seq: u64,
    },
    /// Answer to [`MessageBody::ReadRound`].
    ReadRoundAck {
        /// The highest round received from this term's leader.
        seq: u64,
    },
}

/// A follower's request for a read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndex {
    /// The follower's id for the read, echoed in the answer.
    pub ctx: u64,
}

/// The leader's answer to a [`ReadIndex`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The request's `ctx`.
    pub ctx: u64,
    /// The index the follower must apply before serving the read; `None`:
    /// the node asked does not lead (any more).
    pub index: Option<Index>,
}

/// InstallSnapshot RPC arguments: the snapshot to fetch from the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// The snapshot.
    pub meta: SnapshotMeta,
}

/// RequestVote RPC arguments (Figure 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// True for a PreVote probe: no term changes, no vote recorded.
    pub pre_vote: bool,
    /// True for an election started by a leadership transfer: voters that
    /// still hear from the (handing-over) leader vote anyway instead of
    /// ignoring it under CheckQuorum's lease (thesis §4.2.3).
    pub transfer: bool,
    /// Index of the candidate's last log entry.
    pub last_log_index: Index,
    /// Term of the candidate's last log entry.
    pub last_log_term: Term,
}

/// RequestVote RPC results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteResponse {
    /// Echoes the request's `pre_vote`.
    pub pre_vote: bool,
    /// True means the vote (or pre-vote) was granted.
    pub granted: bool,
}

/// AppendEntries RPC arguments (Figure 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// Index of the entry immediately preceding `entries`.
    pub prev_log_index: Index,
    /// Term of the entry at `prev_log_index`.
    pub prev_log_term: Term,
    /// Entries to store, contiguous from `prev_log_index + 1`.
    pub entries: Vec<Entry>,
    /// The leader's commit index, never beyond the last index this message
    /// covers (`prev_log_index + entries.len()`), so the follower can adopt
    /// it without trusting anything beyond what it just verified.
    pub leader_commit: Index,
}

/// AppendEntries RPC results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendEntriesResponse {
    /// The follower's log matches the leader's through `match_index`, and
    /// those entries are durable on the follower.
    Success {
        /// Highest index known to match the leader's log and be persisted.
        match_index: Index,
    },
    /// The follower's log does not contain the entry at `prev_log_index`
    /// with `prev_log_term`. The hint lets the leader skip a whole term per
    /// round trip (thesis §5.3, "fast log backtracking").
    Reject {
        /// The `prev_log_index` that was rejected.
        rejected_index: Index,
        /// The follower's term at `rejected_index`, or `None` if its log is
        /// shorter than that.
        conflict_term: Option<Term>,
        /// The first index of `conflict_term` in the follower's log, or the
        /// follower's last index + 1 when `conflict_term` is `None`.
        ///
        /// (The answer to an AppendEntries from an older term only carries
        /// the newer term, so the stale leader steps down; its fields are 0.)
        conflict_index: Index,
    },
}
