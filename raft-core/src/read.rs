//! Linearizable reads without writing the log (thesis §6.4): ReadIndex on
//! the leader, follower reads through the leader, and opt-in leader leases.
//!
//! A read must see every write that completed before it started. Serving it
//! from the state machine once it has applied the leader's commit index is
//! enough, provided that commit index was current: that the node was still
//! the leader when the read arrived (no newer leader had committed
//! anything) and that it knew everything committed before it led.
//!
//! - **ReadIndex.** The read's index is the leader's commit index when it
//!   arrives, raised to the first entry of the leader's term (its no-op):
//!   until that commits, the leader may not know what its predecessors
//!   committed (§6.4 step 1). The leader then confirms it still leads with a
//!   *read round*: a [`MessageBody::ReadRound`] with a fresh sequence number
//!   to every voter, each answering [`MessageBody::ReadRoundAck`] in the same
//!   term. Once a quorum (of each half of a joint configuration) has
//!   answered a round sent after the read arrived, no newer leader existed
//!   at the time it was sent: electing one takes a quorum in a newer term,
//!   and the acknowledging quorum would have had to be in it. Reads that
//!   arrive while a round is in flight share the next one, so a round costs
//!   one message per voter however many reads it serves.
//! - **Follower reads.** A follower asks its leader with
//!   [`MessageBody::ReadIndex`]; the leader runs the same confirmation and
//!   answers [`MessageBody::ReadIndexResponse`] with the index, and the
//!   follower serves the read once it has applied that far itself.
//! - **Leases** ([`crate::Config::lease_reads`]). A follower that heard from
//!   its leader refuses to vote for anyone else for an election timeout
//!   (CheckQuorum, thesis §4.2.3), so a quorum that acknowledged a round
//!   sent at leader tick `t` guarantees no new leader before roughly
//!   `t + election_ticks` on the followers' clocks. The leader then answers
//!   reads at once until `t + lease_ticks` on its own clock, where
//!   `lease_ticks` is the election timeout less one tick (a tick's
//!   granularity) less [`crate::Config::max_clock_drift_ticks`]. That is only
//!   safe while clocks really drift less than the bound; a leadership
//!   transfer (whose election overrides CheckQuorum) ends the lease for the
//!   rest of the term, and a restarted node (which forgot whom it heard
//!   from) refuses votes for an election timeout after it starts.
//!
//! Every read is answered exactly once: [`Action::ReadReady`] (after the
//! `Apply` that brings the state machine to its index, in the same step's
//! actions) or [`Action::ReadRejected`].

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use crate::event::{Action, Role};
use crate::message::{MessageBody, ReadIndexResponse};
use crate::node::Node;
use crate::types::{Index, NodeId};

/// Read rounds a leader keeps in flight. With one, a read arriving just
/// after a round left waits for it and then for a whole round of its own;
/// with two it usually waits for one round, and each round still serves
/// every read that arrived while the others were in flight. Measured on
/// raftkv (docs/benchmarks.md): about 15% more reads per second than one.
const MAX_READ_ROUNDS_IN_FLIGHT: u64 = 2;

/// Why a read was not served. A read never takes effect, so every one of
/// these may be retried at once (at the named leader, if there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// This node cannot serve reads now: it does not lead and knows no
    /// leader to ask (or the one it asked no longer leads).
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The node's role, term or leader changed before the read was
    /// confirmed.
    LeaderChanged,
    /// Not confirmed within two election timeouts (the leader could not
    /// reach a quorum, or the messages were lost).
    Timeout,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotLeader { leader: Some(id) } => write!(f, "not the leader; try node {id}"),
            ReadError::NotLeader { leader: None } => f.write_str("no leader known"),
            ReadError::LeaderChanged => f.write_str("the leader changed before the read was confirmed"),
            ReadError::Timeout => f.write_str("the leader could not confirm the read in time"),
        }
    }
}

/// How this node's reads were served (since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reads this leader confirmed with a read round (its own and followers').
    pub by_round: u64,
    /// Reads this leader answered from its lease.
    pub by_lease: u64,
    /// Reads released to this node's driver (`Action::ReadReady`).
    pub released: u64,
    /// Reads refused (`Action::ReadRejected`).
    pub rejected: u64,
}

/// A read waiting for the leader to confirm it still leads.
#[derive(Clone, Copy, Debug)]
struct Unconfirmed {
    ctx: u64,
    /// `None`: a read of this node's own client; else the follower that
    /// asked.
    from: Option<NodeId>,
    /// The read round whose quorum confirms it.
    round: u64,
    /// The read index.
    index: Index,
    deadline: u64,
}

/// A read that knows its index and waits for this node to apply it.
#[derive(Clone, Copy, Debug)]
struct Ready {
    ctx: u64,
    index: Index,
    deadline: u64,
}

/// A read this follower forwarded to its leader, in the request `batch`.
#[derive(Clone, Copy, Debug)]
struct Forwarded {
    ctx: u64,
    batch: u64,
    deadline: u64,
}

/// The read state of one node.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reads {
    /// Ticks since the node started (for deadlines and the lease).
    clock: u64,
    /// Leader: the last read round sent in this term (0: none).
    seq_sent: u64,
    /// Leader: the highest round a quorum acknowledged.
    seq_confirmed: u64,
    /// Leader: `(round, clock when sent)` of rounds not yet confirmed.
    rounds: VecDeque<(u64, u64)>,
    /// Leader: the lease holds while `clock < lease_until`.
    lease_until: u64,
    /// Leader: a leadership transfer was started; no lease this term.
    lease_off: bool,
    /// Leader: index of the first entry of its term.
    term_start: Index,
    /// Follower: the highest read round seen from the current leader.
    leader_seq: u64,
    unconfirmed: VecDeque<Unconfirmed>,
    forwarded: VecDeque<Forwarded>,
    /// Follower: the last read request sent to the leader, the highest one
    /// answered, and when the last was sent (numbered from a nonce, see
    /// `reads_start`).
    fwd_sent: u64,
    fwd_answered: u64,
    fwd_sent_at: u64,
    ready: Vec<Ready>,
    stats: ReadStats,
}

impl Node {
    /// Ticks after which an unanswered read is refused.
    fn read_timeout(&self) -> u64 {
        2 * u64::from(self.config.election_ticks)
    }

    /// How long a confirmed round keeps the lease: an election timeout less
    /// a tick of granularity and the configured drift bound.
    fn lease_ticks(&self) -> u64 {
        let e = u64::from(self.config.election_ticks);
        e.saturating_sub(1 + u64::from(self.config.max_clock_drift_ticks))
    }

    /// `Event::ReadIndex`.
    pub(crate) fn read_index(&mut self, ctx: u64) {
        let deadline = self.reads.clock + self.read_timeout();
        match (self.role, self.leader) {
            (Role::Leader, _) => self.leader_read(ctx, None),
            (Role::Follower, Some(_)) => {
                let batch = self.reads.fwd_sent + 1;
                self.reads.forwarded.push_back(Forwarded { ctx, batch, deadline });
                if self.reads.fwd_answered == self.reads.fwd_sent {
                    // No request in flight: ask now. Otherwise this read
                    // goes with the next request, sent when the one in flight
                    // is answered (or retried after half an election timeout).
                    self.send_read_request();
                }
            }
            (_, leader) => {
                self.reject_read_action(Action::ReadRejected { ctx, error: ReadError::NotLeader { leader } })
            }
        }
    }

    /// A read at this leader, from its own client (`from: None`) or a follower.
    fn leader_read(&mut self, ctx: u64, from: Option<NodeId>) {
        let index = self.commit_index.max(self.reads.term_start);
        let deadline = self.reads.clock + self.read_timeout();
        if self.lease_valid() && self.commit_index >= self.reads.term_start {
            self.reads.stats.by_lease += 1;
            self.serve_read(ctx, from, index, deadline);
            return;
        }
        let round = self.reads.seq_sent + 1;
        self.reads.unconfirmed.push_back(Unconfirmed { ctx, from, round, index, deadline });
        if self.reads.seq_sent - self.reads.seq_confirmed < MAX_READ_ROUNDS_IN_FLIGHT {
            // Room for a round: start this one now. Otherwise it starts when
            // one in flight is confirmed (or at the next heartbeat), shared
            // by every read that arrives meanwhile.
            self.start_read_round();
        }
    }

    fn lease_valid(&self) -> bool {
        self.config.lease_reads && !self.reads.lease_off && self.reads.clock < self.reads.lease_until
    }

    /// The read's index is known: serve it here once applied, or tell the
    /// follower that asked.
    fn serve_read(&mut self, ctx: u64, from: Option<NodeId>, index: Index, deadline: u64) {
        match from {
            None => self.reads.ready.push(Ready { ctx, index, deadline }),
            Some(to) => {
                let body = MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index: Some(index) });
                self.send(to, body);
            }
        }
    }

    /// Sends a new read round to every other voter.
    pub(crate) fn start_read_round(&mut self) {
        self.reads.seq_sent += 1;
        let seq = self.reads.seq_sent;
        self.reads.rounds.push_back((seq, self.reads.clock));
        // `progress` holds every other member: no list of voters to build.
        for i in 0..self.progress.len() {
            let to = self.progress[i].id;
            if self.membership.is_voter(to) {
                self.send(to, MessageBody::ReadRound { seq });
            }
        }
        // A leader that is the only voter confirms its own round.
        self.update_read_confirmation();
    }

    /// Leader heartbeat: a new round if reads wait for one (the one in
    /// flight may have been lost) or to renew the lease.
    pub(crate) fn read_heartbeat(&mut self) {
        // Reads keep their round: a later round confirms them just as well,
        // and moving them would starve them whenever a round takes longer
        // than a heartbeat interval to come back.
        let confirmed = self.reads.seq_confirmed;
        if self.reads.unconfirmed.iter().any(|r| r.round > confirmed) || self.config.lease_reads {
            self.start_read_round();
        }
    }

    /// A follower's answer to read round `seq`.
    pub(crate) fn read_round_ack(&mut self, from: NodeId, seq: u64) {
        if self.role != Role::Leader {
            self.stats.ignored_unexpected += 1;
            return;
        }
        if seq > self.reads.seq_sent {
            self.stats.dropped_malformed += 1;
            return;
        }
        let Some(pr) = self.progress.iter_mut().find(|p| p.id == from) else { return };
        pr.recent_active = true;
        pr.quiet_ticks = 0;
        if seq > pr.read_seq {
            pr.read_seq = seq;
            self.update_read_confirmation();
        }
    }

    /// Recomputes the highest round a quorum of the configuration in force
    /// acknowledged, and releases what it confirms.
    pub(crate) fn update_read_confirmation(&mut self) {
        let me = self.config.id;
        let sent = self.reads.seq_sent;
        let mut scratch = core::mem::take(&mut self.match_scratch);
        let progress = &self.progress;
        let confirmed = self.membership.committed_index(&mut scratch, |id| {
            if id == me { sent } else { progress.iter().find(|p| p.id == id).map_or(0, |p| p.read_seq) }
        });
        // Emptied (capacity kept) so that no stale numbers stay in the node's state.
        scratch.clear();
        self.match_scratch = scratch;
        if confirmed <= self.reads.seq_confirmed {
            return;
        }
        self.reads.seq_confirmed = confirmed;
        while let Some(&(seq, sent_at)) = self.reads.rounds.front() {
            if seq > confirmed {
                break;
            }
            self.reads.rounds.pop_front();
            if seq == confirmed {
                self.reads.lease_until = self.reads.lease_until.max(sent_at + self.lease_ticks());
            }
        }
        self.release_confirmed_reads();
        let waiting = self.reads.unconfirmed.back().is_some_and(|r| r.round > self.reads.seq_sent);
        if waiting {
            self.start_read_round();
        }
    }

    /// Serves the confirmed reads whose index the leader knows committed
    /// (reads that came before its first commit wait for it).
    pub(crate) fn release_confirmed_reads(&mut self) {
        if self.role != Role::Leader || self.commit_index < self.reads.term_start {
            return;
        }
        while let Some(r) = self.reads.unconfirmed.front().copied() {
            if r.round > self.reads.seq_confirmed {
                break;
            }
            self.reads.unconfirmed.pop_front();
            self.reads.stats.by_round += 1;
            self.serve_read(r.ctx, r.from, r.index, r.deadline);
        }
    }

    /// `ReadIndex` from a follower.
    pub(crate) fn read_index_request(&mut self, from: NodeId, ctx: u64) {
        if self.role == Role::Leader {
            self.leader_read(ctx, Some(from));
        } else {
            self.send(from, MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index: None }));
        }
    }

    /// Asks the leader for a read index for every forwarded read: one
    /// message however many reads wait.
    fn send_read_request(&mut self) {
        let Some(leader) = self.leader else { return };
        // Every waiting read is in this request or an earlier one (a read
        // takes the number of the next request when it arrives), and an
        // answer covers its request and every earlier one.
        let batch = self.reads.fwd_sent + 1;
        self.reads.fwd_sent = batch;
        self.reads.fwd_sent_at = self.reads.clock;
        self.send(leader, MessageBody::ReadIndex(crate::message::ReadIndex { ctx: batch }));
    }

    /// The leader's answer to this follower's read request `resp.ctx`: it
    /// covers every read forwarded in that request or an earlier one.
    pub(crate) fn read_index_response(&mut self, from: NodeId, resp: ReadIndexResponse) {
        let (answered, sent) = (self.reads.fwd_answered, self.reads.fwd_sent);
        if self.leader != Some(from) || resp.ctx <= answered || resp.ctx > sent {
            // Not ours (another incarnation's), already answered, or not from
            // our leader.
            self.stats.ignored_unexpected += 1;
            return;
        }
        let upto = resp.ctx;
        self.reads.fwd_answered = upto;
        let mut done = Vec::new();
        self.reads.forwarded.retain(|r| {
            if r.batch <= upto {
                done.push(*r);
            }
            r.batch > upto
        });
        for r in done {
            match resp.index {
                Some(index) => self.reads.ready.push(Ready { ctx: r.ctx, index, deadline: r.deadline }),
                None => self.reject_read_action(Action::ReadRejected {
                    ctx: r.ctx,
                    error: ReadError::NotLeader { leader: None },
                }),
            }
        }
        if !self.reads.forwarded.is_empty() && self.reads.fwd_answered == self.reads.fwd_sent {
            self.send_read_request();
        }
    }

    /// Half an election timeout without an answer: the request (or its
    /// answer) may have been lost; ask again (answers to the older requests
    /// still count).
    fn retry_read_requests(&mut self) {
        let r = &self.reads;
        let patience = u64::from(self.config.election_ticks / 2).max(u64::from(self.config.heartbeat_ticks));
        if self.role == Role::Follower && !r.forwarded.is_empty() && r.clock.saturating_sub(r.fwd_sent_at) >= patience {
            self.send_read_request();
        }
    }

    /// Seeds the follower's request numbers with a per-incarnation nonce
    /// (from the node's seed, which differs per incarnation): an answer to a
    /// request of an earlier incarnation, delayed across a restart in the
    /// same term, can then never release a read of this one.
    pub(crate) fn reads_start(&mut self, seed: u64) {
        let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        // Below 2^62, low 32 bits clear: counting up from it never wraps.
        let nonce = ((x ^ (x >> 31)) >> 34) << 32;
        self.reads.fwd_sent = nonce;
        self.reads.fwd_answered = nonce;
    }

    /// `ReadRound` from the leader of our term: answer it. (The caller
    /// has checked it comes from the leader, restarting our timer.)
    pub(crate) fn read_round(&mut self, from: NodeId, seq: u64) {
        self.reads.leader_seq = self.reads.leader_seq.max(seq);
        self.send(from, MessageBody::ReadRoundAck { seq: self.reads.leader_seq });
    }

    /// A tick for the read clock: refuse reads past their deadline.
    pub(crate) fn tick_reads(&mut self) {
        self.reads.clock += 1;
        let now = self.reads.clock;
        let mut expired = Vec::new();
        self.reads.unconfirmed.retain(|r| {
            let keep = r.deadline > now;
            if !keep && r.from.is_none() {
                expired.push(r.ctx);
            }
            keep
        });
        self.reads.forwarded.retain(|r| {
            let keep = r.deadline > now;
            if !keep {
                expired.push(r.ctx);
            }
            keep
        });
        self.reads.ready.retain(|r| {
            let keep = r.deadline > now;
            if !keep {
                expired.push(r.ctx);
            }
            keep
        });
        for ctx in expired {
            self.reject_read_action(Action::ReadRejected { ctx, error: ReadError::Timeout });
        }
        self.retry_read_requests();
    }

    /// The role, term or leader changed: reads not yet confirmed cannot be
    /// (a new leader starts its own rounds). Reads that know their index
    /// stay: that index was correct when confirmed, and applying up to it
    /// later still shows every write that completed before the read.
    pub(crate) fn reads_after_role_change(&mut self) {
        for r in core::mem::take(&mut self.reads.unconfirmed) {
            match r.from {
                None => self.reject_read_action(Action::ReadRejected { ctx: r.ctx, error: ReadError::LeaderChanged }),
                Some(to) => {
                    let body = MessageBody::ReadIndexResponse(ReadIndexResponse { ctx: r.ctx, index: None });
                    self.send(to, body);
                }
            }
        }
        for r in core::mem::take(&mut self.reads.forwarded) {
            self.reject_read_action(Action::ReadRejected { ctx: r.ctx, error: ReadError::LeaderChanged });
        }
    }

    /// This node became leader; `noop` is the index of its term's first
    /// entry. Rounds restart from 1 (followers reset what they echo when
    /// their term changes).
    pub(crate) fn reads_begin_term(&mut self, noop: Index) {
        let r = &mut self.reads;
        r.seq_sent = 0;
        r.seq_confirmed = 0;
        r.rounds.clear();
        r.lease_until = 0;
        r.lease_off = false;
        r.term_start = noop;
    }

    /// The term changed: what the previous leader's rounds were numbered
    /// does not carry over.
    pub(crate) fn reads_new_term(&mut self) {
        self.reads.leader_seq = 0;
    }

    /// Whether a node that started (or restarted) less than an election
    /// timeout ago must refuse votes: with leases, a vote it gives may
    /// break the promise it made before a crash to a leader it has
    /// forgotten.
    pub(crate) fn in_restart_quiet(&self) -> bool {
        self.config.lease_reads && self.reads.clock < u64::from(self.config.election_ticks)
    }

    /// Releases every read whose index this node has applied, after the
    /// step's `Apply`.
    pub(crate) fn release_applied_reads(&mut self) {
        if self.reads.ready.is_empty() {
            return;
        }
        let applied = self.applied_index;
        let out = &mut self.out;
        let before = self.reads.ready.len();
        self.reads.ready.retain(|r| {
            let done = r.index <= applied;
            if done {
                out.push(Action::ReadReady { ctx: r.ctx, index: r.index });
            }
            !done
        });
        self.reads.stats.released += (before - self.reads.ready.len()) as u64;
    }

    /// The configuration changed under a leader: confirmations and the
    /// lease are recomputed for its members (conservatively: the lease
    /// restarts from the next round they all can confirm).
    pub(crate) fn reads_after_membership_change(&mut self) {
        self.reads.lease_until = 0;
        self.reads.rounds.clear();
        self.update_read_confirmation();
    }

    /// A leadership transfer is starting the target's election: its votes
    /// override CheckQuorum, so no lease may be trusted for this term.
    pub(crate) fn end_lease(&mut self) {
        self.reads.lease_off = true;
    }

    fn reject_read_action(&mut self, action: Action) {
        self.reads.stats.rejected += 1;
        self.out.push(action);
    }

    /// Reads waiting for an answer or for the apply that releases them.
    pub fn pending_reads(&self) -> usize {
        self.reads.unconfirmed.len() + self.reads.forwarded.len() + self.reads.ready.len()
    }

    /// How this node's reads were served.
    pub fn read_stats(&self) -> ReadStats {
        self.reads.stats
    }

    /// Whether this leader holds a read lease right now.
    pub fn has_lease(&self) -> bool {
        self.role == Role::Leader && self.lease_valid()
    }
}
