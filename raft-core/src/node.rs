//! The Raft node: state, the `step` entry point and persistence tracking.
//!
//! The protocol rules live in [`crate::election`] (RequestVote, PreVote,
//! CheckQuorum) and [`crate::replication`] (AppendEntries, commit). This file
//! holds what they share: the node's state, dispatch on term then role (the
//! shape of etcd's `Step`), and the bookkeeping that keeps the node from
//! acting on anything the driver has not yet made durable.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::config::{Config, ConfigError};
use crate::event::{Action, Event, Persist, Role};
use crate::log::RaftLog;
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::progress::Progress;
use crate::stats::Stats;
use crate::types::{Entry, EntryKind, HardState, Index, NodeId, PersistedState, Repair, SnapshotMeta, Term};

/// A leadership transfer under way (thesis §3.10).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    /// The voter that is to lead next.
    pub(crate) to: NodeId,
    /// Leader ticks since the transfer began; it is abandoned after an
    /// election timeout.
    pub(crate) elapsed: u32,
}

/// A write handed to the driver and not yet acknowledged.
#[derive(Clone, Copy, Debug)]
struct InflightWrite {
    seq: u64,
    /// The log prefix that is durable once this write is: the last index at
    /// the time of the write, lowered by any later truncation.
    last_index: Index,
    hard_state: HardState,
}

/// What this step has to persist; flushed as at most one `Persist` action.
#[derive(Clone, Debug, Default)]
struct PendingWrite {
    hard_state_dirty: bool,
    snapshot: Option<SnapshotMeta>,
    truncate_from: Option<Index>,
    entries: Vec<Entry>,
}

/// The node's random generator (election timeouts, read nonces), whose `Debug` shows its whole
/// state, seed and position, so that two nodes that print alike draw alike (rand_chacha's own
/// `Debug` shows neither; the exhaustive explorer tells states apart by their `Debug` text).
#[derive(Clone)]
pub(crate) struct Rng(pub(crate) ChaCha8Rng);

impl core::fmt::Debug for Rng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let seed = self.0.get_seed();
        let (a, b) = seed.split_at(16);
        let half = |h: &[u8]| u128::from_le_bytes(h.try_into().unwrap_or_default());
        write!(f, "Rng({:032x}{:032x}@{})", half(a), half(b), self.0.get_word_pos())
    }
}

/// One Raft server. See the crate docs for the driver loop.
#[derive(Clone, Debug)]
pub struct Node {
    pub(crate) config: Config,
    pub(crate) rng: Rng,
    /// `currentTerm` and `votedFor`, as the node currently believes them.
    pub(crate) hard_state: HardState,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) log: RaftLog,
    pub(crate) commit_index: Index,
    pub(crate) applied_index: Index,
    /// The newest snapshot this node has (taken or installed): what it
    /// offers followers whose next entry was compacted away.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// A snapshot being installed by the driver ([`Action::InstallSnapshot`]);
    /// nothing is applied until it ends.
    pub(crate) installing: Option<SnapshotMeta>,
    /// The configuration in force: the newest in the log (committed or not),
    /// else the snapshot's, else the one the node was created with.
    pub(crate) membership: Membership,
    /// Index of the entry `membership` comes from (0: not from the log).
    pub(crate) membership_index: Index,
    /// A leadership transfer this leader is carrying out.
    pub(crate) transfer: Option<Transfer>,
    /// Reads in progress and the leader's read rounds.
    pub(crate) reads: crate::read::Reads,

    // Persistence: what the driver has confirmed durable.
    next_persist_seq: u64,
    inflight_writes: VecDeque<InflightWrite>,
    pending_write: PendingWrite,
    pub(crate) persisted_index: Index,
    pub(crate) persisted_hard_state: HardState,

    // Timers, in ticks.
    pub(crate) election_elapsed: u32,
    pub(crate) randomized_election_ticks: u32,
    pub(crate) heartbeat_elapsed: u32,

    // Candidate state: (voter, granted) for this round.
    pub(crate) votes: Vec<(NodeId, bool)>,
    /// A vote granted in this term whose reply waits for the vote to be durable.
    pub(crate) vote_reply_pending: Option<NodeId>,

    // Follower state. `matched_index` and `acked_index` are reset on every
    // term change; `leader_commit` is not: a commit index, once learned, stays
    // true, and it is only ever used capped by `matched_index`.
    /// Highest index verified to match the current leader's log.
    pub(crate) matched_index: Index,
    /// Highest commit index learned from the leader, never beyond what was
    /// verified to match.
    pub(crate) leader_commit: Index,
    /// Highest `match_index` acknowledged to the current leader.
    pub(crate) acked_index: Index,
    /// Set while the node is repaired after its disk lost synced log
    /// entries through this index ([`Node::begin_repair`]).
    pub(crate) repair: Option<Repair>,

    // Leader state: one entry per other member (voters and learners), by id.
    pub(crate) progress: Vec<Progress>,

    pub(crate) stats: Stats,
    pub(crate) out: Vec<Action>,
    /// Reused by the commit rule so counting a quorum allocates nothing.
    pub(crate) match_scratch: Vec<Index>,
}

impl Node {
    /// Creates a node with an empty log, for a brand-new cluster member.
    ///
    /// `seed` feeds the election-timeout jitter; give each node its own.
    pub fn new(config: Config, seed: u64) -> Result<Node, ConfigError> {
        Node::restore(config, PersistedState::default(), seed)
    }

    /// Restarts a node from the state its driver loaded from disk.
    ///
    /// Fails if the configuration is invalid or the persisted state is
    /// inconsistent (a log with gaps or terms from the future).
    pub fn restore(config: Config, persisted: PersistedState, seed: u64) -> Result<Node, ConfigError> {
        let config = config.validate()?;
        let PersistedState { hard_state, snapshot, entries } = persisted;
        validate_persisted_log(&hard_state, snapshot.as_ref(), &entries)?;
        let (base, base_term) = snapshot.as_ref().map_or((0, 0), |m| (m.last_included_index, m.last_included_term));
        let log = RaftLog::after(base, base_term, entries);
        let persisted_index = log.last_index();
        let mut node = Node {
            membership: Membership::new(config.voters.clone()),
            membership_index: 0,
            transfer: None,
            reads: crate::read::Reads::default(),
            rng: Rng(ChaCha8Rng::seed_from_u64(seed)),
            hard_state,
            role: Role::Follower,
            leader: None,
            log,
            // The state machine was restored from the snapshot: everything
            // it covers is committed and applied.
            commit_index: base,
            applied_index: base,
            snapshot,
            installing: None,
            next_persist_seq: 1,
            inflight_writes: VecDeque::new(),
            pending_write: PendingWrite::default(),
            persisted_index,
            persisted_hard_state: hard_state,
            election_elapsed: 0,
            randomized_election_ticks: config.election_ticks,
            heartbeat_elapsed: 0,
            votes: Vec::new(),
            vote_reply_pending: None,
            matched_index: 0,
            leader_commit: 0,
            acked_index: 0,
            repair: None,
            progress: Vec::new(),
            stats: Stats::default(),
            out: Vec::new(),
            match_scratch: Vec::new(),
            config,
        };
        let (membership, membership_index) = node.membership_at(node.log.last_index());
        node.membership = membership;
        node.membership_index = membership_index;
        node.reads_start(seed);
        node.reset_election_timer();
        Ok(node)
    }

    /// Feeds one event and returns what the driver must do.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.step_into(event, &mut out);
        out
    }

    /// Like [`Node::step`] but appends the actions to a caller-owned buffer,
    /// so a hot loop reuses one action vector instead of allocating one per
    /// event.
    pub fn step_into(&mut self, event: Event, out: &mut Vec<Action>) {
        core::mem::swap(&mut self.out, out);
        let before = (self.role, self.hard_state.term, self.leader);
        match event {
            Event::Tick => self.tick(),
            Event::Message { from, message } => self.step_message(from, message),
            Event::Propose { data } => self.propose_one(data),
            Event::ProposeBatch { data } => self.propose_batch(data),
            Event::Persisted { seq } => self.on_persisted(seq),
            Event::Campaign => self.campaign_now(),
            Event::SnapshotTaken { index } => self.snapshot_taken(index),
            Event::SnapshotInstalled { meta } => self.snapshot_installed(meta),
            Event::SnapshotAborted => self.snapshot_aborted(),
            Event::ChangeMembership { change, context } => self.change_membership(change, context),
            Event::TransferLeadership { to } => self.transfer_leadership(to),
            Event::ReadIndex { ctx } => self.read_index(ctx),
        }
        self.flush_persist();
        self.maybe_apply();
        self.release_applied_reads();
        self.check_repaired();
        if before != (self.role, self.hard_state.term, self.leader) {
            self.reads_after_role_change();
            let (role, term, leader) = (self.role, self.hard_state.term, self.leader);
            self.out.push(Action::RoleChanged { role, term, leader });
        }
        core::mem::swap(&mut self.out, out);
    }

    fn tick(&mut self) {
        self.tick_reads();
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// Dispatch on term first, then on message type: the order of Figure 2's
    /// "rules for all servers".
    fn step_message(&mut self, from: NodeId, message: Message) {
        // Messages from nodes outside our configuration are accepted: a node
        // that lags behind a membership change hears from members it does
        // not know yet (a new leader among them). Who may connect at all is
        // the transport's business.
        if from == self.config.id || from == 0 {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        if !message_is_well_formed(&message) {
            self.stats.dropped_malformed += 1;
            return;
        }
        if message.term > self.hard_state.term && !self.step_higher_term(from, &message) {
            return;
        }
        if message.term < self.hard_state.term {
            self.step_lower_term(from, &message);
            return;
        }
        let term = message.term;
        match message.body {
            MessageBody::RequestVote(req) => self.request_vote(from, term, req),
            MessageBody::RequestVoteResponse(resp) => self.request_vote_response(from, term, resp),
            MessageBody::AppendEntries(req) => self.append_entries(from, req),
            MessageBody::AppendEntriesResponse(resp) => self.append_entries_response(from, resp),
            MessageBody::InstallSnapshot(req) => self.install_snapshot(from, req.meta),
            MessageBody::TimeoutNow => self.timeout_now(from),
            MessageBody::ReadIndex(req) => self.read_index_request(from, req.ctx),
            MessageBody::ReadIndexResponse(resp) => self.read_index_response(from, resp),
            MessageBody::ReadRound { seq } => {
                if self.heard_from_leader(from) {
                    self.read_round(from, seq);
                }
            }
            MessageBody::ReadRoundAck { seq } => self.read_round_ack(from, seq),
        }
    }

    /// A message from a newer term. Returns whether to go on processing it.
    fn step_higher_term(&mut self, from: NodeId, message: &Message) -> bool {
        match &message.body {
            MessageBody::RequestVote(req) => {
                // A candidate outside our configuration is most likely a
                // server that was removed without learning it (it no longer
                // hears from the leader, times out, campaigns): ignore it
                // while a leader is alive, whatever the settings (thesis
                // §4.2.3). Ignoring a vote request is always safe.
                let stranger = !self.membership.is_voter(from);
                let in_lease = self.in_leader_lease()
                    || ((req.pre_vote || stranger) && self.heard_from_leader_recently())
                    || self.in_restart_quiet();
                if in_lease && !req.transfer {
                    // A leader is alive: a candidate that could not hear it
                    // must not depose it (thesis §4.2.3). For pre-votes this
                    // holds whether or not CheckQuorum is on (§9.6).
                    self.stats.dropped_in_lease += 1;
                    return false;
                }
                if req.pre_vote {
                    // PreVote never changes terms.
                    return true;
                }
                self.become_follower(message.term, None);
            }
            MessageBody::RequestVoteResponse(resp) if resp.pre_vote && resp.granted => {
                // A granted pre-vote carries the term we would campaign in.
            }
            MessageBody::AppendEntries(_) | MessageBody::InstallSnapshot(_) | MessageBody::ReadRound { .. } => {
                self.become_follower(message.term, Some(from))
            }
            _ => self.become_follower(message.term, None),
        }
        true
    }

    fn step_lower_term(&mut self, from: NodeId, message: &Message) {
        self.stats.dropped_stale_term += 1;
        match &message.body {
            // A stale leader (e.g. one that was partitioned) is told the new
            // term so it steps down; with PreVote/CheckQuorum nothing else
            // would tell it (etcd-io/raft does the same).
            MessageBody::AppendEntries(_) | MessageBody::InstallSnapshot(_) => self.send(
                from,
                MessageBody::AppendEntriesResponse(crate::message::AppendEntriesResponse::Reject {
                    rejected_index: 0,
                    conflict_term: None,
                    conflict_index: 0,
                }),
            ),
            // Figure 2: "reply false if term < currentTerm", with our term, so
            // a stale candidate catches up. Without it a candidate whose peer
            // never writes to it (a voter that, lagging behind a membership
            // change, does not count it as a voter) could stay a term behind
            // that peer forever, and neither would ever win.
            MessageBody::RequestVote(req) => self.send(
                from,
                MessageBody::RequestVoteResponse(crate::message::RequestVoteResponse {
                    pre_vote: req.pre_vote,
                    granted: false,
                }),
            ),
            // A stale leader's read round, a stale follower's read request:
            // the answer carries our term, which deposes the one and tells
            // the other to drop what it forwarded.
            MessageBody::ReadRound { .. } => self.send(from, MessageBody::ReadRoundAck { seq: 0 }),
            MessageBody::ReadIndex(req) => self.send(
                from,
                MessageBody::ReadIndexResponse(crate::message::ReadIndexResponse { ctx: req.ctx, index: None }),
            ),
            _ => {}
        }
    }

    /// Steps down (or stays) a follower; a new term clears the vote.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.hard_state.term {
            self.hard_state = HardState { term, vote: None };
            self.pending_write.hard_state_dirty = true;
            self.vote_reply_pending = None;
            self.matched_index = 0;
            self.acked_index = 0;
            self.reads_new_term();
        }
        // Figure 2: the timer restarts on hearing from a leader (or granting
        // a vote, see `request_vote`), and when leaving candidacy or
        // leadership. A follower that merely learns a newer term from a vote
        // request it refuses keeps counting: otherwise a candidate with a
        // stale log could keep the up-to-date nodes from ever timing out.
        if self.role != Role::Follower || leader.is_some() {
            self.reset_election_timer();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.transfer = None;
    }

    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let min = self.config.election_ticks;
        self.randomized_election_ticks = min + (self.rng.0.next_u32() % min);
    }

    /// Sends a message stamped with the current term.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.hard_state.term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.out.push(Action::Send { to, message: Message { term, body } });
    }

    /// The voters of both halves of the configuration other than this node,
    /// in id order.
    pub(crate) fn other_voters(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let mut ids: Vec<NodeId> =
            self.membership.voters.iter().chain(&self.membership.outgoing).copied().filter(|&id| id != me).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// True if this node votes in the configuration it holds.
    pub(crate) fn is_voter(&self) -> bool {
        self.membership.is_voter(self.config.id)
    }

    // ----- membership --------------------------------------------------

    /// The configuration in force at `upto`: the newest configuration entry
    /// at or before it among the entries held, else the snapshot's, else
    /// the configuration the node was created with.
    pub(crate) fn membership_at(&self, upto: Index) -> (Membership, Index) {
        let held = self.log.slice(self.log.offset() + 1, upto.min(self.log.last_index()));
        for e in held.iter().rev() {
            if e.kind == EntryKind::Config {
                // Config entries are checked when they enter the log (from
                // a peer, a proposal or the disk), so this decodes.
                if let Ok(m) = Membership::decode(&e.data) {
                    return (m, e.index);
                }
            }
        }
        match &self.snapshot {
            Some(meta) => (meta.membership.clone(), meta.last_included_index),
            None => (Membership::new(self.config.voters.clone()), 0),
        }
    }

    /// Makes `membership` the configuration in force, telling the driver,
    /// and (as leader) tracking progress for exactly its members.
    pub(crate) fn set_membership(&mut self, membership: Membership, index: Index) {
        if membership == self.membership && index == self.membership_index {
            return;
        }
        let changed = membership != self.membership;
        self.membership = membership;
        self.membership_index = index;
        if changed {
            self.out.push(Action::MembershipChanged { membership: self.membership.clone(), index });
        }
        if self.role == Role::Leader {
            self.sync_progress();
            self.reads_after_membership_change();
        }
    }

    /// Re-derives the configuration after the log lost entries (truncation
    /// or a snapshot install).
    pub(crate) fn recompute_membership(&mut self) {
        let (m, i) = self.membership_at(self.log.last_index());
        self.set_membership(m, i);
    }

    /// One progress tracker per member other than this node, in id order;
    /// new members start probing at the end of the log.
    pub(crate) fn sync_progress(&mut self) {
        let me = self.config.id;
        let next = self.log.last_index() + 1;
        let members = self.membership.members();
        self.progress.retain(|p| members.binary_search(&p.id).is_ok());
        for id in members {
            if id != me && !self.progress.iter().any(|p| p.id == id) {
                self.progress.push(Progress::new(id, next));
            }
        }
        self.progress.sort_unstable_by_key(|p| p.id);
        if let Some(t) = self.transfer
            && !self.membership.is_voter(t.to)
        {
            self.transfer = None;
        }
    }

    /// The match index the leader counts for `id`: its own durable index
    /// for itself, the acknowledged one for a follower.
    pub(crate) fn matched(&self, id: NodeId) -> Index {
        if id == self.config.id {
            return self.persisted_index;
        }
        self.progress.iter().find(|p| p.id == id).map_or(0, |p| p.match_index)
    }

    /// True while this follower has heard from a live leader within the
    /// minimum election timeout.
    pub(crate) fn in_leader_lease(&self) -> bool {
        self.config.check_quorum && self.heard_from_leader_recently()
    }

    /// A leader (possibly this node) was heard from within the minimum
    /// election timeout.
    pub(crate) fn heard_from_leader_recently(&self) -> bool {
        self.leader.is_some() && self.election_elapsed < self.config.election_ticks
    }

    /// The current hard state has been acknowledged durable.
    pub(crate) fn hard_state_durable(&self) -> bool {
        self.persisted_hard_state == self.hard_state
    }

    // ----- persistence -------------------------------------------------

    pub(crate) fn mark_hard_state_dirty(&mut self) {
        self.pending_write.hard_state_dirty = true;
    }

    /// Appends entries to the log and to this step's write.
    pub(crate) fn append_to_log(&mut self, entries: Vec<Entry>) {
        self.log.append(&entries);
        // A configuration takes effect as soon as it is in the log.
        if let Some(e) = entries.iter().rev().find(|e| e.kind == EntryKind::Config)
            && let Ok(m) = Membership::decode(&e.data)
        {
            self.set_membership(m, e.index);
        }
        if self.pending_write.entries.is_empty() {
            self.pending_write.entries = entries;
        } else {
            self.pending_write.entries.extend(entries);
        }
    }

    pub(crate) fn push_to_log(&mut self, entry: Entry) {
        self.pending_write.entries.push(entry.clone());
        self.log.push(entry);
    }

    /// Removes entries `>= from`, and forgets their durability: a write that
    /// completes later only covers the prefix that survived.
    pub(crate) fn truncate_log(&mut self, from: Index) {
        self.log.truncate_from(from);
        let keep = from - 1;
        self.persisted_index = self.persisted_index.min(keep);
        for w in &mut self.inflight_writes {
            w.last_index = w.last_index.min(keep);
        }
        self.pending_write.entries.retain(|e| e.index < from);
        let t = self.pending_write.truncate_from.map_or(from, |t| t.min(from));
        self.pending_write.truncate_from = Some(t);
        if self.membership_index >= from {
            // The configuration in force was truncated away: the previous
            // one is in force again.
            self.recompute_membership();
        }
    }

    /// This step's write records that the stored log follows `meta`.
    pub(crate) fn persist_snapshot(&mut self, meta: SnapshotMeta) {
        self.pending_write.snapshot = Some(meta);
    }

    /// The log does not agree with a snapshot ending at (`index`, `term`):
    /// discard all of it. Only the committed prefix of what was durable is
    /// still durable truth (it is also the snapshot's prefix); everything
    /// else must be deleted from the stored log too.
    pub(crate) fn discard_log_for_snapshot(&mut self, index: Index, term: Term) {
        let keep = self.persisted_index.min(self.commit_index);
        self.log.reset_to(index, term);
        self.persisted_index = keep;
        for w in &mut self.inflight_writes {
            w.last_index = w.last_index.min(keep);
        }
        self.pending_write.entries.clear();
        self.pending_write.truncate_from = Some(index + 1);
    }

    fn flush_persist(&mut self) {
        let w = &mut self.pending_write;
        if !w.hard_state_dirty && w.snapshot.is_none() && w.truncate_from.is_none() && w.entries.is_empty() {
            return;
        }
        let seq = self.next_persist_seq;
        self.next_persist_seq += 1;
        let hard_state = w.hard_state_dirty.then_some(self.hard_state);
        let persist = Persist {
            seq,
            hard_state,
            snapshot: w.snapshot.take(),
            truncate_from: w.truncate_from.take(),
            entries: core::mem::take(&mut w.entries),
        };
        w.hard_state_dirty = false;
        self.inflight_writes.push_back(InflightWrite {
            seq,
            last_index: self.log.last_index(),
            hard_state: self.hard_state,
        });
        self.out.push(Action::Persist(persist));
    }

    fn on_persisted(&mut self, seq: u64) {
        if seq >= self.next_persist_seq {
            self.stats.dropped_bad_persisted += 1;
            return;
        }
        let mut newest = None;
        while self.inflight_writes.front().is_some_and(|w| w.seq <= seq) {
            newest = self.inflight_writes.pop_front();
        }
        let Some(w) = newest else { return };
        self.persisted_index = self.persisted_index.max(w.last_index).min(self.log.last_index());
        self.persisted_hard_state = w.hard_state;
        self.after_persisted();
    }

    fn after_persisted(&mut self) {
        match self.role {
            Role::Leader => self.maybe_commit(),
            Role::Candidate => self.tally_votes(),
            Role::PreCandidate => {}
            Role::Follower => {
                self.send_vote_reply_if_durable();
                self.advance_follower_commit();
                self.send_ack_if_news();
            }
        }
    }

    fn maybe_apply(&mut self) {
        if self.installing.is_some() {
            // The state machine is being replaced; what it would apply now
            // may be covered by the snapshot, and must not race its restore.
            return;
        }
        let upto = self.commit_index.min(self.persisted_index);
        if upto <= self.applied_index {
            return;
        }
        let entries = self.log.slice(self.applied_index + 1, upto).to_vec();
        self.applied_index = upto;
        self.out.push(Action::Apply { entries });
    }

    // ----- accessors ---------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The node's role in its current term.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.hard_state.term
    }

    /// The current hard state (possibly not yet durable).
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The hard state the driver has confirmed durable.
    pub fn persisted_hard_state(&self) -> HardState {
        self.persisted_hard_state
    }

    /// The leader this node knows of in its current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Highest index known committed.
    pub fn commit_index(&self) -> Index {
        self.commit_index
    }

    /// Highest index handed to the driver in an `Apply` action.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// Highest index the driver has confirmed durable.
    pub fn persisted_index(&self) -> Index {
        self.persisted_index
    }

    /// The driver found that this node's disk lost log entries it had
    /// synced (and so may have acknowledged): a segment shorter than its
    /// synced length, a record below the synced mark that fails its check.
    /// `lost` names the last entry the log held durably before the loss.
    /// Call it after [`Node::restore`], before the first step, and again
    /// after every restart with the same mark until [`Node::repairing`] says
    /// the repair is over; the driver keeps the mark durably meanwhile.
    ///
    /// Why: entries this node acknowledged may be committed *because* it
    /// acknowledged them. Voting with the shortened log could elect a
    /// candidate that lacks them (Protocol-Aware Recovery, Alagappan et al.,
    /// FAST 2018, shows lost logs breaking Raft this way). Raft's vote rule
    /// (§5.4.1) needs only the voter's last entry: a candidate at least as
    /// up to date as a log holding a committed entry holds that entry. So
    /// the node judges candidates against the *lost* last entry as well as
    /// its present one, which keeps every promise its lost log made, and
    /// never campaigns (its own vote would rest on the short log). It still
    /// follows a leader and acknowledges what it now durably holds; the
    /// leader notices that it holds less than it acknowledged and resends
    /// the rest ([`crate::Stats::follower_regressions`]).
    ///
    /// The repair is over once the durable log's last entry is at least as
    /// up to date as the lost one: from then on the present log alone is
    /// the stricter judge. Until then a majority of the others can still
    /// elect a leader as usual. With more than one node of a majority
    /// losing synced data at once, committed entries may be gone from every
    /// copy and no protocol can keep its guarantees. The hard state (term
    /// and vote) is not covered: a node that lost it must rejoin as a new
    /// member.
    pub fn begin_repair(&mut self, lost: Repair) {
        if lost.lost_through == 0 {
            return;
        }
        self.repair = Some(self.repair.map_or(lost, |r| r.max(lost)));
        if self.role != Role::Follower {
            let term = self.hard_state.term;
            self.become_follower(term, None);
        }
        self.check_repaired();
    }

    /// `Some` while the node is being repaired (see [`Node::begin_repair`]):
    /// it never campaigns and judges candidates against its lost log too.
    /// `None` once repaired; the driver then drops its durable mark.
    pub fn repairing(&self) -> Option<Repair> {
        self.repair
    }

    /// Whether a candidate whose log ends at (`last_index`, `last_term`)
    /// is at least as up to date as the log this node lost.
    pub(crate) fn up_to_date_with_lost_log(&self, last_index: Index, last_term: Term) -> bool {
        self.repair.is_none_or(|r| r.covered_by(last_index, last_term))
    }

    /// Ends the repair once the durable log's last entry is at least as up
    /// to date as the lost one.
    fn check_repaired(&mut self) {
        if let Some(r) = self.repair {
            let durable = self.persisted_index;
            if r.covered_by(durable, self.log.term(durable).unwrap_or(0)) {
                self.repair = None;
            }
        }
    }

    /// Index of the last log entry (durable or not).
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// Term of the last log entry.
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// The term of the entry at `index`, if the log holds it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// The log entries held in memory: from [`Node::first_index`] on.
    pub fn entries(&self) -> &[Entry] {
        self.log.entries()
    }

    /// The entry at `index`, if the log holds it in memory.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Index of the first entry held in memory (earlier ones were compacted
    /// into a snapshot).
    pub fn first_index(&self) -> Index {
        self.log.offset() + 1
    }

    /// The newest snapshot this node has taken or installed.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// What a snapshot of the state machine as of `index` stands for: the
    /// entry's term and the configuration in force there. `None` unless the
    /// entry at `index` is applied and held in memory, and this node knows
    /// that configuration (a joining node does not before the entry that
    /// added it). A driver writes this
    /// into its snapshot file before reporting [`crate::Event::SnapshotTaken`]
    /// for `index`, which records exactly this.
    pub fn snapshot_meta_at(&self, index: Index) -> Option<SnapshotMeta> {
        if index == 0 || index > self.applied_index {
            return None;
        }
        let last_included_term = self.log.term(index)?;
        let (membership, _) = self.membership_at(index);
        if membership.validate().is_err() {
            // A node that joined with no configuration and has applied
            // entries from before the one that added it: it cannot name
            // the configuration in force there (a snapshot claiming none
            // would not restore). It snapshots once it holds that entry.
            return None;
        }
        Some(SnapshotMeta { last_included_index: index, last_included_term, membership })
    }

    /// The snapshot being installed, if any.
    pub fn installing_snapshot(&self) -> Option<&SnapshotMeta> {
        self.installing.as_ref()
    }

    /// The voters of the configuration in force (`C_new` while joint), sorted.
    pub fn voters(&self) -> &[NodeId] {
        &self.membership.voters
    }

    /// The configuration in force (the newest in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Index of the log entry the configuration in force comes from (0 for
    /// the one the node was created with; a snapshot's last index for one
    /// that came with a snapshot). The configuration is committed once
    /// [`Node::commit_index`] reaches it.
    pub fn membership_index(&self) -> Index {
        self.membership_index
    }

    /// The voter a leadership transfer under way hands over to.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.to)
    }

    /// The node's settings (its `voters` are the first configuration; the
    /// one in force is [`Node::membership`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters of refused input.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The leader's replication progress for `peer` (leaders only).
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.iter().find(|p| p.id == peer)
    }
}

fn validate_persisted_log(
    hard_state: &HardState,
    snapshot: Option<&SnapshotMeta>,
    entries: &[Entry],
) -> Result<(), ConfigError> {
    if hard_state.term > MAX_TERM {
        return Err(ConfigError::CorruptState("term is impossibly large"));
    }
    let (base, mut prev_term) = match snapshot {
        None => (0, 1),
        Some(m) => {
            if m.last_included_index == 0 || m.last_included_term == 0 || m.last_included_term > hard_state.term {
                return Err(ConfigError::CorruptState("snapshot index or term is 0 or exceeds the persisted term"));
            }
            if m.membership.validate().is_err() {
                return Err(ConfigError::CorruptState("the snapshot's configuration is malformed"));
            }
            (m.last_included_index, m.last_included_term)
        }
    };
    for (i, e) in entries.iter().enumerate() {
        if e.index != base + i as Index + 1 {
            return Err(ConfigError::CorruptState("log is not contiguous from the snapshot (or index 1)"));
        }
        if e.term < prev_term || e.term > hard_state.term {
            return Err(ConfigError::CorruptState("log terms are 0, decrease, or exceed the persisted term"));
        }
        if e.kind == EntryKind::Config && Membership::decode(&e.data).is_err() {
            return Err(ConfigError::CorruptState("a configuration entry does not decode"));
        }
        prev_term = e.term;
    }
    Ok(())
}

/// Structural checks that need no state: a message that fails them cannot
/// come from a correct peer.
/// The largest term a peer may claim. Terms grow by about one per election,
/// so nothing near `u64::MAX` can come from a correct peer; refusing such
/// terms keeps `term + 1` from ever overflowing (a hostile `u64::MAX` would
/// otherwise wrap the whole cluster's term back to 0).
pub(crate) const MAX_TERM: Term = u64::MAX / 2;

fn message_is_well_formed(message: &Message) -> bool {
    if message.term == 0 || message.term > MAX_TERM {
        return false;
    }
    match &message.body {
        MessageBody::RequestVote(req) => {
            req.last_log_term <= message.term && (req.last_log_index == 0) == (req.last_log_term == 0)
        }
        MessageBody::RequestVoteResponse(_) => true,
        MessageBody::AppendEntries(req) => {
            if req.prev_log_term > message.term || (req.prev_log_index == 0 && req.prev_log_term != 0) {
                return false;
            }
            let Some(last) = req.prev_log_index.checked_add(req.entries.len() as Index) else {
                return false;
            };
            if req.leader_commit > last {
                return false;
            }
            // Every entry has a term of at least 1 (term 0 has no leader).
            let mut term = req.prev_log_term.max(1);
            for (i, e) in req.entries.iter().enumerate() {
                if e.index != req.prev_log_index + 1 + i as Index || e.term < term || e.term > message.term {
                    return false;
                }
                if e.kind == EntryKind::Config && Membership::decode(&e.data).is_err() {
                    return false;
                }
                term = e.term;
            }
            true
        }
        MessageBody::AppendEntriesResponse(_) => true,
        MessageBody::InstallSnapshot(req) => {
            let m = &req.meta;
            m.last_included_index > 0
                && m.last_included_term > 0
                && m.last_included_term <= message.term
                && m.membership.validate().is_ok()
        }
        MessageBody::TimeoutNow
        | MessageBody::ReadIndex(_)
        | MessageBody::ReadIndexResponse(_)
        | MessageBody::ReadRound { .. }
        | MessageBody::ReadRoundAck { .. } => true,
    }
}
