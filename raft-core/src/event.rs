//! What goes into [`crate::Node::step`] and what comes out of it.

use alloc::vec::Vec;
use bytes::Bytes;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::message::Message;
use crate::read::ReadError;
use crate::types::{Entry, HardState, Index, NodeId, SnapshotMeta, Term};

/// An input to the state machine. The driver owns time, the network and the
/// disk, and reports each happening as one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// One logical clock tick. All timeouts are counted in ticks.
    Tick,
    /// A message arrived from peer `from` (as identified by the transport).
    Message {
        /// The sending peer.
        from: NodeId,
        /// The message itself (untrusted).
        message: Message,
    },
    /// Append a command to the replicated log (leader only). The result is
    /// an [`Action::Proposed`] or an [`Action::ProposeRejected`].
    Propose {
        /// The command.
        data: Bytes,
    },
    /// Append several commands at once; cheaper than one `Propose` each.
    /// Same results as `Propose` (one action for the whole batch); an empty
    /// batch produces none.
    ProposeBatch {
        /// The commands, in order.
        data: Vec<Bytes>,
    },
    /// Every [`Action::Persist`] with `seq <= self.seq` is durable.
    Persisted {
        /// The highest durable persist sequence number.
        seq: u64,
    },
    /// Start an election now (skipping PreVote), as if the election timer
    /// fired. Used by tests and operators.
    Campaign,
    /// The driver has taken a snapshot of the state machine as of applied
    /// index `index` and stored it durably. The core compacts its log up to
    /// there (keeping `Config::snapshot_trailing_entries` for slow
    /// followers) and asks, with a [`Persist::snapshot`], for the stored log
    /// to follow it. Ignored (and counted) unless `index` is applied and
    /// newer than the current snapshot.
    SnapshotTaken {
        /// The applied index the snapshot was taken at.
        index: Index,
    },
    /// Answer to [`Action::InstallSnapshot`]: the driver fetched the
    /// snapshot `meta` describes, stored it durably and restored the state
    /// machine from it. The core adopts it as its log prefix.
    SnapshotInstalled {
        /// The snapshot installed (the one the action asked for).
        meta: SnapshotMeta,
    },
    /// Answer to [`Action::InstallSnapshot`]: the fetch failed and the
    /// state machine was not touched. Applying resumes; the leader will
    /// offer a snapshot again.
    SnapshotAborted,
    /// Change the cluster's membership (leader only). The result is an
    /// [`Action::ChangeProposed`] or an [`Action::ChangeRejected`]; the change
    /// is done when the entry at the proposed index commits (for a joint
    /// change: when the `C_new` entry the leader appends after it commits,
    /// which [`Action::MembershipChanged`] reports like every change).
    ChangeMembership {
        /// What to change.
        change: MembershipChange,
        /// New [`Membership::context`] to replicate with the change; `None`
        /// keeps the current one.
        context: Option<Bytes>,
    },
    /// Hand leadership to voter `to` (leader only; thesis §3.10): the leader
    /// stops accepting proposals, brings `to` up to date and tells it to
    /// campaign at once. If `to` has not won within an election timeout the
    /// transfer is abandoned and proposals resume. Refused with an
    /// [`Action::TransferRejected`].
    TransferLeadership {
        /// The voter to lead next.
        to: NodeId,
    },
    /// A linearizable read, served without writing the log (see the
    /// `read` module docs): on a leader by ReadIndex or its lease, on a
    /// follower through its leader. Answered exactly once, by an
    /// [`Action::ReadReady`] or an [`Action::ReadRejected`] with the same
    /// `ctx`.
    ReadIndex {
        /// The driver's id for this read (unique among its pending reads).
        ctx: u64,
    },
}

/// The node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Probing with PreVote whether an election could succeed.
    PreCandidate,
    /// Campaigning for votes in its term.
    Candidate,
    /// The leader of its term.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(name)
    }
}

/// A write the driver must make durable, then acknowledge with
/// [`Event::Persisted`]. Writes must become durable in `seq` order (a later
/// write never survives a crash that loses an earlier one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persist {
    /// Monotonic per node incarnation; echo it in [`Event::Persisted`].
    pub seq: u64,
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// If set, first record that the stored log now follows this snapshot
    /// (whose image the driver already stored durably): entries up to its
    /// `last_included_index` may be deleted, and a restart loads this
    /// snapshot. Written atomically with the rest of this write.
    pub snapshot: Option<SnapshotMeta>,
    /// If set, then delete every stored entry with index `>=` this.
    pub truncate_from: Option<Index>,
    /// Then append these entries (contiguous, following the stored log).
    pub entries: Vec<Entry>,
}

/// Why a proposal was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is its best guess of who is.
    NotLeader {
        /// The leader this node last heard from in its current term.
        leader: Option<NodeId>,
    },
    /// The leader holds more uncommitted entries than its configured limit
    /// (checked once per proposal or batch); retry later.
    Backpressure,
    /// A leadership transfer is under way (proposals pause for at most an
    /// election timeout); retry, at the new leader if it changed.
    TransferInProgress,
    /// One command is larger than `Config::max_entry_bytes`; it would never
    /// fit a message to the followers. Nothing was appended.
    EntryTooLarge {
        /// The command's size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(id) } => write!(f, "not the leader; try node {id}"),
            ProposeError::NotLeader { leader: None } => f.write_str("not the leader; no leader known"),
            ProposeError::Backpressure => f.write_str("too many uncommitted entries; retry later"),
            ProposeError::TransferInProgress => f.write_str("leadership is being transferred; retry shortly"),
            ProposeError::EntryTooLarge { size, max } => {
                write!(f, "entry of {size} bytes exceeds the {max}-byte limit")
            }
        }
    }
}

/// An output of the state machine: something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to peer `to`. Delivery may fail, be delayed, reordered
    /// or duplicated: the protocol tolerates all of it.
    Send {
        /// The destination peer.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Make this write durable, then report [`Event::Persisted`].
    Persist(Persist),
    /// Apply these committed entries to the state machine, in order.
    Apply {
        /// Contiguous committed entries, starting right after the last
        /// applied index.
        entries: Vec<Entry>,
    },
    /// The proposal was appended at `first_index..=last_index`.
    Proposed {
        /// Index of the first entry of the proposal.
        first_index: Index,
        /// Index of the last entry of the proposal.
        last_index: Index,
        /// The leader's term the entries were created in.
        term: Term,
    },
    /// The proposal was refused; nothing was appended.
    ProposeRejected {
        /// Why.
        error: ProposeError,
    },
    /// This follower needs the snapshot `meta` from peer `from` (its
    /// leader): fetch it (the transfer is the driver's: chunked, resumable),
    /// store it durably, restore the state machine from it, then report
    /// [`Event::SnapshotInstalled`], or [`Event::SnapshotAborted`] without
    /// touching the state machine. No `Apply` comes until then.
    InstallSnapshot {
        /// The peer that holds the snapshot.
        from: NodeId,
        /// Which snapshot.
        meta: SnapshotMeta,
    },
    /// A membership change was appended at `index` (answer to
    /// [`Event::ChangeMembership`]); `membership` is now in force.
    ChangeProposed {
        /// Index of the configuration entry.
        index: Index,
        /// The leader's term.
        term: Term,
        /// The configuration the entry holds.
        membership: Membership,
    },
    /// The membership change was refused; nothing changed.
    ChangeRejected {
        /// Why.
        error: MembershipError,
    },
    /// The leadership transfer was refused; nothing changed.
    TransferRejected {
        /// Why.
        error: MembershipError,
    },
    /// The configuration in force on this node changed: a configuration
    /// entry was appended (or truncated away, falling back to an earlier
    /// one), or a snapshot brought one. Connect to new members, drop
    /// removed ones. `index` is the entry's (0 for the configuration the
    /// node was created with).
    MembershipChanged {
        /// The configuration now in force.
        membership: Membership,
        /// Where it comes from in the log.
        index: Index,
    },
    /// The read `ctx` may be served now: the state machine has applied
    /// `index` with the `Apply` actions before this one. Serve it after
    /// applying those and before applying any that follow.
    ReadReady {
        /// The read's `ctx`.
        ctx: u64,
        /// The read index it was confirmed at.
        index: Index,
    },
    /// The read `ctx` was not served (it never takes effect; retry).
    ReadRejected {
        /// The read's `ctx`.
        ctx: u64,
        /// Why.
        error: ReadError,
    },
    /// The node's role, term or known leader changed (for logs and metrics).
    RoleChanged {
        /// The new role.
        role: Role,
        /// The current term.
        term: Term,
        /// The known leader, if any.
        leader: Option<NodeId>,
    },
}
