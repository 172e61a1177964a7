//! The leader's view of each follower: `matchIndex` and `nextIndex` of the
//! Raft paper, plus the flow-control state that decides when to send.

use alloc::collections::VecDeque;

use crate::types::{Index, NodeId};

/// How the leader is currently replicating to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's log position is unknown: send one AppendEntries at a
    /// time and wait for its answer before sending more.
    Probe,
    /// The follower's log is known to match through `match_index`: stream
    /// batches optimistically, up to the in-flight limit.
    Replicate,
    /// The follower needs entries the leader compacted away: it was offered
    /// the snapshot ending at `pending_snapshot`; nothing else is sent
    /// until it acknowledges that far (the offer is repeated once per
    /// heartbeat, and doubles as one).
    Snapshot,
}

/// Replication progress of one follower, kept by the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The follower.
    pub id: NodeId,
    /// Highest index known to be replicated and durable on the follower.
    pub match_index: Index,
    /// Index of the next entry to send.
    pub next_index: Index,
    /// Probe or Replicate.
    pub state: ProgressState,
    /// In Probe: a probe is outstanding, wait for its answer or a heartbeat.
    pub(crate) probe_sent: bool,
    /// In Replicate: last index of each AppendEntries not yet acknowledged.
    pub(crate) inflight: VecDeque<Index>,
    /// The follower has answered since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// The highest commit index sent to the follower.
    pub(crate) commit_sent: Index,
    /// A gap probe was sent in this heartbeat interval (at most one).
    pub(crate) gap_probe_sent: bool,
    /// Heartbeat rounds in a row without progress while entries were
    /// outstanding.
    pub(crate) stalled_rounds: u8,
    /// `match_index` at the previous heartbeat round.
    pub(crate) match_at_heartbeat: Index,
    /// In Snapshot: the last index of the snapshot offered.
    pub pending_snapshot: Index,
    /// Leader ticks since the follower last answered (saturating): a
    /// learner is promoted only if it answered within an election timeout.
    pub(crate) quiet_ticks: u32,
    /// The highest read round the follower acknowledged this term.
    pub(crate) read_seq: u64,
}

impl Progress {
    pub(crate) fn new(id: NodeId, next_index: Index) -> Progress {
        Progress {
            id,
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: true,
            commit_sent: 0,
            gap_probe_sent: false,
            stalled_rounds: 0,
            match_at_heartbeat: 0,
            pending_snapshot: 0,
            quiet_ticks: 0,
            read_seq: 0,
        }
    }

    /// Records a successful acknowledgement; returns whether it was news.
    pub(crate) fn ack(&mut self, match_index: Index) -> bool {
        let advanced = match_index > self.match_index;
        if advanced {
            self.match_index = match_index;
        }
        self.next_index = self.next_index.max(match_index + 1);
        while self.inflight.front().is_some_and(|&last| last <= match_index) {
            self.inflight.pop_front();
        }
        if self.state != ProgressState::Replicate {
            self.become_replicate();
        }
        advanced
    }

    /// The follower lost entries it had acknowledged and now holds the log
    /// only through `holds`: lower `match_index` to that (the one place it
    /// ever goes down) and probe from there.
    pub(crate) fn regress(&mut self, holds: Index) {
        self.match_index = self.match_index.min(holds);
        self.match_at_heartbeat = self.match_at_heartbeat.min(holds);
        self.commit_sent = self.commit_sent.min(holds);
        self.become_probe(holds + 1);
    }

    pub(crate) fn become_probe(&mut self, next_index: Index) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Offers the snapshot ending at `index` and waits for it.
    pub(crate) fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.probe_sent = false;
        self.inflight.clear();
    }

    fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Whether the leader should hold back further AppendEntries.
    pub(crate) fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= max_inflight,
            ProgressState::Snapshot => true,
        }
    }
}
