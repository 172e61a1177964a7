//! Leader election: timeouts, PreVote, RequestVote, CheckQuorum
//! (Raft paper §5.2 and §5.4.1; thesis §4.2.3, §6.2 and §9.6).

use crate::event::Role;
use crate::message::{MessageBody, RequestVote, RequestVoteResponse};
use crate::node::Node;
use crate::types::{Entry, EntryKind, NodeId, Term};

impl Node {
    /// A follower or candidate tick: start an election when the randomized
    /// timeout passes without hearing from a leader.
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        // A learner, a removed node or one still waiting to join never
        // starts an election (thesis §4.2.1, §4.2.3); nor does a node whose
        // state machine is being replaced by a snapshot (its commit index
        // would jump when the install ends).
        if self.election_elapsed >= self.randomized_election_ticks && self.can_campaign() {
            self.campaign(self.config.pre_vote, false);
        }
    }

    /// A leader tick: heartbeats, and CheckQuorum once per election timeout.
    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
            self.read_heartbeat();
        }
        for p in &mut self.progress {
            p.quiet_ticks = p.quiet_ticks.saturating_add(1);
        }
        if let Some(t) = &mut self.transfer {
            t.elapsed += 1;
            if t.elapsed >= self.config.election_ticks {
                // The target did not win in time: lead on, accept proposals.
                self.transfer = None;
            }
        }
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // We cannot reach a majority: a newer leader may exist.
                // Stop claiming leadership so clients go elsewhere.
                let term = self.hard_state.term;
                self.become_follower(term, None);
            }
        }
    }

    /// Whether a quorum of the configuration answered since the last round
    /// (this node counts only where it votes); starts a new round.
    fn quorum_recently_active(&mut self) -> bool {
        let me = self.config.id;
        let progress = &self.progress;
        let active =
            self.membership.has_quorum(|id| id == me || progress.iter().any(|p| p.id == id && p.recent_active));
        for p in &mut self.progress {
            p.recent_active = false;
        }
        active
    }

    /// `Event::Campaign`: an immediate real election, skipping PreVote.
    pub(crate) fn campaign_now(&mut self) {
        // With leases, a follower that hears from a leader has promised not
        // to help elect another for an election timeout; campaigning would
        // vote for itself.
        if self.config.lease_reads && self.in_leader_lease() {
            self.stats.ignored_unexpected += 1;
            return;
        }
        if self.role != Role::Leader && self.can_campaign() {
            self.campaign(false, false);
        }
    }

    /// `TimeoutNow` from the leader handing over to us: campaign at once,
    /// skipping PreVote, with votes that override CheckQuorum's lease.
    pub(crate) fn timeout_now(&mut self, from: NodeId) {
        if self.role == Role::Leader || !self.can_campaign() {
            self.stats.ignored_unexpected += 1;
            return;
        }
        let _ = from;
        self.campaign(false, true);
    }

    /// A voter of its configuration with no snapshot install under way.
    ///
    /// Also a node that a configuration *not yet known committed* removes,
    /// if it voted in the configuration before that one: it may hold the
    /// only copy of the newest log (a leader that appended its own removal
    /// and then lost its quorum), and the remaining voters of a joint
    /// configuration may need its vote. Forbidding it would deadlock the
    /// cluster (found by the simulator: seed 47642 of `run --seeds 10000..50000`).
    /// Elected, it leads without counting itself, commits
    /// the change and steps down (thesis §4.2.2).
    fn can_campaign(&self) -> bool {
        // A node repairing a lost log would vote for itself on the short one.
        if self.installing.is_some() || self.repair.is_some() {
            return false;
        }
        if self.is_voter() {
            return true;
        }
        self.membership_index > self.commit_index
            && self.membership_at(self.membership_index - 1).0.is_voter(self.config.id)
    }

    /// Starts a PreVote round (`pre = true`) or a real election; `transfer`
    /// marks one a leadership transfer asked for.
    fn campaign(&mut self, pre: bool, transfer: bool) {
        if self.hard_state.term >= crate::node::MAX_TERM {
            // Unreachable from well-formed input (such terms are refused);
            // never let a term wrap around.
            return;
        }
        self.votes.clear();
        self.reset_election_timer();
        self.leader = None;
        let term = if pre {
            self.role = Role::PreCandidate;
            self.hard_state.term + 1
        } else {
            self.role = Role::Candidate;
            self.hard_state.term += 1;
            self.hard_state.vote = Some(self.config.id);
            self.vote_reply_pending = None;
            self.matched_index = 0;
            self.acked_index = 0;
            self.reads_new_term();
            self.mark_hard_state_dirty();
            self.hard_state.term
        };
        let req = RequestVote {
            pre_vote: pre,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        for to in self.other_voters() {
            self.send_with_term(to, term, MessageBody::RequestVote(req));
        }
        self.tally_votes();
    }

    /// RequestVote receiver (Figure 2), with PreVote's variant.
    pub(crate) fn request_vote(&mut self, from: NodeId, term: Term, req: RequestVote) {
        let hs = self.hard_state;
        let can_vote =
            hs.vote == Some(from) || (hs.vote.is_none() && self.leader.is_none()) || (req.pre_vote && term > hs.term);
        let mut granted = can_vote && self.log.is_up_to_date(req.last_log_index, req.last_log_term);
        if granted && !self.up_to_date_with_lost_log(req.last_log_index, req.last_log_term) {
            // Our disk lost entries we may have acknowledged; the candidate
            // must be as up to date as the log we had.
            self.stats.votes_refused_in_repair += 1;
            granted = false;
        }
        if req.pre_vote {
            // A granted pre-vote echoes the candidate's future term so it can
            // count it; a refusal carries ours so it can catch up.
            let reply_term = if granted { term } else { hs.term };
            let body = MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote: true, granted });
            self.send_with_term(from, reply_term, body);
            return;
        }
        if !granted {
            let body = MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote: false, granted: false });
            self.send(from, body);
            return;
        }
        if hs.vote.is_none() {
            self.hard_state.vote = Some(from);
            self.mark_hard_state_dirty();
        }
        // Granting a vote restarts our timer, so we don't compete with the
        // candidate we just voted for.
        self.reset_election_timer();
        self.vote_reply_pending = Some(from);
        self.send_vote_reply_if_durable();
    }

    /// Replies to a granted vote once the vote is on disk: a node that
    /// crashed after replying but before persisting could vote twice.
    pub(crate) fn send_vote_reply_if_durable(&mut self) {
        let Some(to) = self.vote_reply_pending else { return };
        if self.hard_state.vote != Some(to) {
            self.vote_reply_pending = None;
            return;
        }
        if self.hard_state_durable() {
            self.vote_reply_pending = None;
            self.send(to, MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote: false, granted: true }));
        }
    }

    pub(crate) fn request_vote_response(&mut self, from: NodeId, term: Term, resp: RequestVoteResponse) {
        let expected = match self.role {
            Role::PreCandidate => {
                resp.pre_vote
                    && ((resp.granted && term == self.hard_state.term + 1)
                        || (!resp.granted && term == self.hard_state.term))
            }
            Role::Candidate => !resp.pre_vote && term == self.hard_state.term,
            _ => false,
        };
        if !expected {
            self.stats.ignored_unexpected += 1;
            return;
        }
        if !self.votes.iter().any(|&(id, _)| id == from) {
            self.votes.push((from, resp.granted));
        }
        self.tally_votes();
    }

    /// Counts votes; our own counts only once durable (for a real election).
    pub(crate) fn tally_votes(&mut self) {
        let self_vote = match self.role {
            Role::PreCandidate => true,
            Role::Candidate => self.hard_state_durable(),
            _ => return,
        };
        let me = self.config.id;
        let votes = &self.votes;
        let won = self.membership.has_quorum(|id| if id == me { self_vote } else { votes.contains(&(id, true)) });
        let lost = self.membership.quorum_impossible(|id| id != me && votes.contains(&(id, false)));
        if won {
            if self.role == Role::PreCandidate {
                self.campaign(false, false);
            } else if self.hard_state_durable() {
                self.become_leader();
            }
            // Otherwise the others' votes suffice but our own term and vote
            // are not yet on disk: wait for them (`after_persisted` tallies
            // again). A leader that crashed before then would restart in the
            // previous term, could win this term a second time with the same
            // votes, and append a different entry at an index it already used
            // in this term (found by the simulator: seed 3384 of
            // `run --seeds 0..10000 --profile lease`, a Log Matching violation).
        } else if lost {
            let term = self.hard_state.term;
            self.become_follower(term, None);
        }
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        let next = self.log.last_index() + 1;
        self.progress.clear();
        self.sync_progress();
        // The no-op lets the new leader commit entries of earlier terms,
        // which it may never do by counting replicas (§5.4.2, Figure 8).
        let noop = Entry { term: self.hard_state.term, index: next, kind: EntryKind::Noop, data: bytes::Bytes::new() };
        self.reads_begin_term(next);
        self.push_to_log(noop);
        self.broadcast_append();
    }
}
