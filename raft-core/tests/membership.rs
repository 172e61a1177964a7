//! Membership changes and leadership transfer, through the public API, on a
//! small in-memory cluster: a perfect network (with links that can be
//! cut), disks that sync at once, and every node's actions carried out.
//! The simulator covers the same rules under faults; these tests pin each
//! rule on its own, including every refusal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft_core::{
    Action, Bytes, Config, EntryKind, Event, Membership, MembershipChange, MembershipError, Node, NodeId,
    PersistedState, ProposeError, Role, SnapshotMeta,
};

struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    /// What each node's disk holds.
    disks: BTreeMap<NodeId, PersistedState>,
    inbox: VecDeque<(NodeId, NodeId, raft_core::Message)>,
    /// Cut links, both directions.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that are down (their messages and ticks are dropped).
    down: BTreeSet<NodeId>,
    /// Everything each node applied: (index, kind).
    applied: BTreeMap<NodeId, Vec<(u64, EntryKind)>>,
    /// Actions other than sends, persists and applies, by node.
    seen: Vec<(NodeId, Action)>,
}

fn config(id: NodeId, voters: &[NodeId]) -> Config {
    Config { election_ticks: 10, heartbeat_ticks: 2, ..Config::new(id, voters.to_vec()) }
}

impl Cluster {
    fn new(voters: &[NodeId]) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            inbox: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            applied: BTreeMap::new(),
            seen: Vec::new(),
        };
        for &id in voters {
            c.nodes.insert(id, Node::new(config(id, voters), id).unwrap());
            c.disks.insert(id, PersistedState::default());
        }
        c
    }

    /// Starts a node that joins: no configuration of its own.
    fn join(&mut self, id: NodeId) {
        self.nodes.insert(id, Node::new(config(id, &[]), id).unwrap());
        self.disks.insert(id, PersistedState::default());
    }

    fn step(&mut self, id: NodeId, event: Event) -> Vec<Action> {
        if self.down.contains(&id) {
            return Vec::new();
        }
        let actions = self.nodes.get_mut(&id).unwrap().step(event);
        let mut followups = Vec::new();
        for a in &actions {
            match a {
                Action::Send { to, message } => self.inbox.push_back((id, *to, message.clone())),
                Action::Persist(p) => {
                    self.disks.get_mut(&id).unwrap().apply(p);
                    followups.push(Event::Persisted { seq: p.seq });
                }
                Action::Apply { entries } => {
                    self.applied.entry(id).or_default().extend(entries.iter().map(|e| (e.index, e.kind)))
                }
                other => self.seen.push((id, other.clone())),
            }
        }
        for e in followups {
            self.step(id, e);
        }
        actions
    }

    fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while let Some((from, to, message)) = self.inbox.pop_front() {
            budget -= 1;
            assert!(budget > 0, "messages never stop");
            let blocked = self.cut.contains(&(from, to)) || self.down.contains(&to) || self.down.contains(&from);
            if blocked || !self.nodes.contains_key(&to) {
                continue;
            }
            self.step(to, Event::Message { from, message });
        }
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.step(id, Event::Tick);
            }
            self.deliver_all();
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, n)| !self.down.contains(id) && n.role() == Role::Leader)
            .max_by_key(|(_, n)| n.term())
            .map(|(id, _)| *id)
    }

    fn elect(&mut self, id: NodeId) {
        self.step(id, Event::Campaign);
        self.deliver_all();
        assert_eq!(self.leader(), Some(id));
        // Commit the no-op so the leader may change the membership.
        self.tick(2);
    }

    fn propose(&mut self, id: NodeId, data: &'static [u8]) -> Vec<Action> {
        let out = self.step(id, Event::Propose { data: Bytes::from_static(data) });
        self.deliver_all();
        out
    }

    fn change(&mut self, id: NodeId, change: MembershipChange) -> Result<u64, MembershipError> {
        let out = self.step(id, Event::ChangeMembership { change, context: None });
        self.deliver_all();
        for a in out {
            match a {
                Action::ChangeProposed { index, .. } => return Ok(index),
                Action::ChangeRejected { error } => return Err(error),
                _ => {}
            }
        }
        panic!("a change is answered");
    }

    fn transfer(&mut self, id: NodeId, to: NodeId) -> Option<MembershipError> {
        let out = self.step(id, Event::TransferLeadership { to });
        let error = out.iter().find_map(|a| match a {
            Action::TransferRejected { error } => Some(*error),
            _ => None,
        });
        self.deliver_all();
        error
    }

    fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn membership(&self, id: NodeId) -> &Membership {
        self.nodes[&id].membership()
    }
}

fn voters(m: &Membership) -> (Vec<NodeId>, Vec<NodeId>, Vec<NodeId>) {
    (m.voters.clone(), m.outgoing.clone(), m.learners.clone())
}

#[test]
fn a_learner_catches_up_never_votes_and_never_counts() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"a");
    c.join(4);
    let at = c.change(1, MembershipChange::AddLearner(4)).unwrap();
    c.tick(4);
    assert_eq!(voters(c.membership(4)), (vec![1, 2, 3], vec![], vec![4]), "the learner learned its configuration");
    assert_eq!(c.nodes[&4].commit_index(), c.nodes[&1].commit_index());
    assert!(c.nodes[&1].commit_index() >= at);

    // With 2 and 3 cut off, the leader and the learner are no quorum.
    c.isolate(2);
    c.isolate(3);
    c.cut.remove(&(1, 4));
    c.cut.remove(&(4, 1));
    let before = c.nodes[&1].commit_index();
    c.propose(1, b"b");
    c.tick(3);
    assert_eq!(c.nodes[&1].commit_index(), before, "a learner's ack never commits");
    assert!(c.nodes[&4].last_index() > before, "though it receives the entry");

    // A learner never campaigns, however long it hears nothing.
    c.isolate(4);
    c.tick(60);
    assert_ne!(c.nodes[&4].role(), Role::Candidate);
    assert_ne!(c.nodes[&4].role(), Role::PreCandidate);
    assert_eq!(c.nodes[&4].term(), c.nodes[&1].term().min(c.nodes[&4].term()));
}

#[test]
fn a_joining_node_never_campaigns_before_it_is_added() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.join(4);
    c.tick(80);
    assert_eq!(c.nodes[&4].term(), 0, "no election from a node in no configuration");
    let out = c.step(4, Event::Campaign);
    assert!(out.iter().all(|a| !matches!(a, Action::Send { .. })), "not even when asked");
}

#[test]
fn promotion_needs_a_caught_up_learner() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.join(4);
    c.isolate(4);
    c.change(1, MembershipChange::AddLearner(4)).unwrap();
    for _ in 0..5 {
        c.propose(1, b"x");
    }
    c.tick(2);
    match c.change(1, MembershipChange::Promote(4)) {
        Err(MembershipError::LearnerBehind { id: 4, matched: 0, last }) => assert_eq!(last, c.nodes[&1].last_index()),
        other => panic!("expected LearnerBehind, got {other:?}"),
    }
    assert_eq!(voters(c.membership(1)).2, vec![4], "nothing changed");
    c.heal();
    c.tick(6);
    let at = c.change(1, MembershipChange::Promote(4)).unwrap();
    c.tick(2);
    assert!(c.nodes[&1].commit_index() >= at);
    for id in 1..=4 {
        assert_eq!(voters(c.membership(id)), (vec![1, 2, 3, 4], vec![], vec![]), "node {id}");
    }
}

#[test]
fn every_refusal_changes_nothing() {
    let mut c = Cluster::new(&[1, 2, 3]);
    // Not the leader.
    assert_eq!(c.change(2, MembershipChange::AddLearner(4)), Err(MembershipError::NotLeader { leader: None }));
    c.elect(1);
    c.tick(2);
    let before = c.membership(1).clone();
    let cases = [
        (MembershipChange::Remove(7), MembershipError::UnknownNode { id: 7 }),
        (MembershipChange::Promote(7), MembershipError::UnknownNode { id: 7 }),
        (MembershipChange::Promote(2), MembershipError::NotALearner { id: 2 }),
        (MembershipChange::AddLearner(2), MembershipError::AlreadyMember { id: 2 }),
        (MembershipChange::AddLearner(0), MembershipError::InvalidId),
        (MembershipChange::Set { voters: vec![], learners: vec![] }, MembershipError::NoVoters),
        (MembershipChange::Set { voters: vec![1, 2, 3], learners: vec![] }, MembershipError::NoChange),
        (MembershipChange::Set { voters: vec![1, 2], learners: vec![3] }, MembershipError::Demotion { id: 3 }),
        (MembershipChange::Set { voters: vec![1, 2, 3, 5], learners: vec![] }, MembershipError::UnknownNode { id: 5 }),
    ];
    for (change, error) in cases {
        assert_eq!(c.change(1, change.clone()), Err(error), "{change:?}");
        assert_eq!(c.membership(1), &before, "{change:?} changed nothing");
    }
    // One change at a time: the second waits for the first to commit.
    c.isolate(2);
    c.isolate(3);
    c.change(1, MembershipChange::AddLearner(4)).unwrap();
    assert_eq!(c.change(1, MembershipChange::AddLearner(5)), Err(MembershipError::ChangeInProgress));
    assert!(MembershipError::ChangeInProgress.is_retryable());
    c.heal();
    c.tick(10);
    assert_eq!(c.change(1, MembershipChange::AddLearner(5)).map(|_| ()), Ok(()));
    // The last voter cannot go.
    let mut solo = Cluster::new(&[1]);
    solo.elect(1);
    assert_eq!(solo.change(1, MembershipChange::Remove(1)), Err(MembershipError::NoVoters));
    // Transfers: to a non-voter, to itself, by a follower.
    assert_eq!(c.transfer(1, 4), Some(MembershipError::NotAVoter { id: 4 }));
    assert_eq!(c.transfer(1, 1), Some(MembershipError::NotAVoter { id: 1 }));
    assert_eq!(c.transfer(2, 3), Some(MembershipError::NotLeader { leader: Some(1) }));
    assert_eq!(c.leader(), Some(1));
}

#[test]
fn a_new_leader_changes_nothing_before_its_own_entry_commits() {
    use raft_core::{Message, MessageBody, RequestVoteResponse};
    let mut node = Node::new(config(1, &[1, 2, 3]), 1).unwrap();
    node.step(Event::Campaign);
    node.step(Event::Persisted { seq: 1 });
    let term = node.term();
    let granted = RequestVoteResponse { pre_vote: false, granted: true };
    let vote = Message { term, body: MessageBody::RequestVoteResponse(granted) };
    node.step(Event::Message { from: 2, message: vote });
    assert_eq!(node.role(), Role::Leader);
    // Its no-op is appended but not yet acknowledged by anyone.
    let out = node.step(Event::ChangeMembership { change: MembershipChange::AddLearner(4), context: None });
    assert!(
        out.iter().any(|a| matches!(a, Action::ChangeRejected { error: MembershipError::LeaderNotReady })),
        "{out:?}"
    );
    assert_eq!(node.membership(), &Membership::new(vec![1, 2, 3]));
}

#[test]
fn a_joint_change_needs_both_majorities_then_leaves_the_joint_phase() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for id in [4, 5] {
        c.join(id);
        c.change(1, MembershipChange::AddLearner(id)).unwrap();
        c.tick(4);
    }
    // Replace 2 and 3 by 4 and 5 at once: joint consensus.
    c.isolate(4);
    c.isolate(5);
    let joint = c.change(1, MembershipChange::Set { voters: vec![1, 4, 5], learners: vec![] });
    // 4 and 5 stopped answering only now, and are caught up: accepted.
    let at = joint.unwrap();
    assert_eq!(voters(c.membership(1)), (vec![1, 4, 5], vec![1, 2, 3], vec![]), "joint at once, on append");
    c.tick(4);
    // C_old (1, 2, 3) has a majority, C_new (1, 4, 5) does not: no commit.
    assert!(c.nodes[&1].commit_index() < at, "a joint entry needs a majority of C_new too");
    c.heal();
    c.tick(6);
    // Committed, then C_new was appended and committed in turn.
    assert!(c.nodes[&1].commit_index() > at);
    for id in [1, 4, 5] {
        assert_eq!(voters(c.membership(id)), (vec![1, 4, 5], vec![], vec![]), "node {id}");
    }
    // 2 and 3 are out: a majority of the new voters commits without them.
    c.isolate(2);
    c.isolate(3);
    let before = c.nodes[&1].commit_index();
    c.propose(1, b"after");
    c.tick(2);
    assert!(c.nodes[&1].commit_index() > before);
}

#[test]
fn a_leader_removing_itself_steps_down_once_committed_and_hands_over() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let at = c.change(1, MembershipChange::Remove(1)).unwrap();
    assert_eq!(c.nodes[&1].membership().voters, vec![2, 3]);
    // Committed by 2 and 3 alone, the leader not counting itself; then it
    // steps down and tells an up-to-date voter to campaign at once.
    assert!(c.nodes[&2].commit_index() >= at || c.nodes[&1].commit_index() >= at);
    c.tick(1);
    let leader = c.leader().expect("a new leader without an election timeout");
    assert!(leader == 2 || leader == 3, "leader {leader}");
    assert_ne!(c.nodes[&1].role(), Role::Leader);
    // The removed node never campaigns again.
    let term = c.nodes[&leader].term();
    c.isolate(1);
    c.tick(60);
    assert!(c.nodes[&1].term() <= term);
    // A proposal by the removed leader is refused.
    let out = c.propose(1, b"x");
    assert!(out.iter().any(|a| matches!(a, Action::ProposeRejected { .. })));
}

#[test]
fn leadership_transfer_pauses_proposals_and_hands_over() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.propose(1, b"a");
    c.heal();
    assert_eq!(c.transfer(1, 3), None);
    // 3 is brought up to date (its lost entries are resent once the leader
    // notices, within a few heartbeats), told to campaign, and wins at once
    // (its vote requests override the leader's lease).
    let mut ticks = 0;
    while c.leader() == Some(1) {
        assert_eq!(c.nodes[&1].transfer_target(), Some(3));
        c.tick(1);
        ticks += 1;
        assert!(ticks < 10, "transfer did not finish within an election timeout");
    }
    assert_eq!(c.leader(), Some(3));
    assert!(c.nodes[&3].hard_state().term == c.nodes[&1].term());
    assert_eq!(c.nodes[&3].last_index(), c.nodes[&1].last_index());
    c.tick(2);
    assert_eq!(c.leader(), Some(3));
}

#[test]
fn a_transfer_to_an_unreachable_node_times_out_and_proposals_resume() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    assert_eq!(c.transfer(1, 3), None);
    assert_eq!(c.nodes[&1].transfer_target(), Some(3));
    let out = c.propose(1, b"paused");
    assert!(out.iter().any(|a| matches!(a, Action::ProposeRejected { error: ProposeError::TransferInProgress })));
    assert_eq!(c.change(1, MembershipChange::AddLearner(4)), Err(MembershipError::TransferInProgress));
    c.tick(10);
    assert_eq!(c.nodes[&1].transfer_target(), None, "abandoned after an election timeout");
    assert_eq!(c.leader(), Some(1));
    let out = c.propose(1, b"resumed");
    assert!(out.iter().any(|a| matches!(a, Action::Proposed { .. })));
}

#[test]
fn truncating_a_configuration_entry_falls_back_to_the_previous_one() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    // 1 appends a change that only it holds, then loses leadership.
    c.isolate(1);
    c.change(1, MembershipChange::AddLearner(4)).unwrap();
    assert_eq!(voters(c.membership(1)).2, vec![4]);
    c.tick(40);
    let leader = c.leader().unwrap();
    assert_ne!(leader, 1);
    c.propose(leader, b"overwrite");
    c.heal();
    c.tick(6);
    assert_eq!(c.membership(1), &Membership::new(vec![1, 2, 3]), "the uncommitted change was rolled back");
    let changed = c.seen.iter().filter(|(id, a)| *id == 1 && matches!(a, Action::MembershipChanged { .. })).count();
    assert_eq!(changed, 2, "reported on append and on truncation");
}

#[test]
fn restore_recovers_the_configuration_from_snapshot_and_tail() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.join(4);
    c.change(1, MembershipChange::AddLearner(4)).unwrap();
    c.tick(4);
    // From the log alone.
    let disk = c.disks[&2].clone();
    let node = Node::restore(config(2, &[1, 2, 3]), disk.clone(), 2).unwrap();
    assert_eq!(voters(node.membership()), (vec![1, 2, 3], vec![], vec![4]));
    assert!(node.membership_index() > 0);
    // From a snapshot past the change (the configuration is in its
    // metadata), with the bootstrap voters not even given.
    let meta = c.nodes[&2].snapshot_meta_at(c.nodes[&2].applied_index()).unwrap();
    assert_eq!(voters(&meta.membership), (vec![1, 2, 3], vec![], vec![4]));
    let mut state = disk;
    state.follow_snapshot(meta.clone());
    let node = Node::restore(config(2, &[]), state, 2).unwrap();
    assert_eq!(node.membership(), &meta.membership);
    // A snapshot whose configuration is malformed is refused.
    let bad = SnapshotMeta { membership: Membership::default(), ..meta };
    let state = PersistedState { snapshot: Some(bad), hard_state: c.disks[&2].hard_state, entries: vec![] };
    assert!(Node::restore(config(2, &[]), state, 2).is_err());
}

#[test]
fn a_single_voter_adds_a_learner_and_promotes_it() {
    let mut c = Cluster::new(&[1]);
    c.elect(1);
    c.propose(1, b"a");
    c.join(2);
    c.change(1, MembershipChange::AddLearner(2)).unwrap();
    c.tick(4);
    assert_eq!(c.nodes[&2].commit_index(), c.nodes[&1].commit_index());
    assert_eq!(c.nodes[&1].progress(2).map(|p| p.match_index), Some(c.nodes[&1].last_index()));
    c.change(1, MembershipChange::Promote(2)).unwrap();
    c.tick(2);
    assert_eq!(c.membership(2).voters, vec![1, 2]);
}

/// With PreVote and CheckQuorum both off, a follower that hears from its
/// leader still ignores a vote request from a node outside its
/// configuration (a removed node that missed its removal), but not one
/// from a voter.
#[test]
fn a_strangers_vote_request_is_ignored_while_a_leader_is_heard() {
    use raft_core::{Message, MessageBody, RequestVote};
    let mut c = Cluster::new(&[1, 2, 3]);
    for n in c.nodes.values_mut() {
        *n = Node::new(Config { pre_vote: false, check_quorum: false, ..config(n.id(), &[1, 2, 3]) }, n.id()).unwrap();
    }
    c.elect(1);
    let term = c.nodes[&2].term();
    let vote = |t| Message {
        term: t,
        body: MessageBody::RequestVote(RequestVote {
            pre_vote: false,
            last_log_index: 100,
            last_log_term: t,
            transfer: false,
        }),
    };
    c.step(2, Event::Message { from: 9, message: vote(term + 1) });
    assert_eq!(c.nodes[&2].term(), term, "a stranger's request changes nothing");
    assert_eq!(c.nodes[&2].leader(), Some(1));
    c.step(2, Event::Message { from: 3, message: vote(term + 1) });
    assert_eq!(c.nodes[&2].term(), term + 1, "a voter's is considered (no lease without CheckQuorum)");
}

/// A joining node that applies entries from before the configuration that added it cannot say which
/// configuration was in force there: it refuses to snapshot those indexes (a snapshot naming no voters
/// would not restore; found by the simulator, `run --seeds 0..3000 --profile lease`, seed 876) and
/// snapshots normally once it holds the entry that added it.
#[test]
fn a_joining_node_snapshots_only_where_it_knows_the_configuration() {
    use raft_core::{AppendEntries, Entry, Message, MessageBody};
    let mut node = Node::new(config(4, &[]), 4).unwrap();
    let entry = |index, kind, data: Bytes| Entry { term: 1, index, kind, data };
    let learner = Membership { learners: vec![4], ..Membership::new(vec![1, 2, 3]) };
    let entries = [
        entry(1, EntryKind::Noop, Bytes::new()),
        entry(2, EntryKind::Normal, Bytes::from_static(b"x")),
        entry(3, EntryKind::Config, learner.encode()),
    ];
    let append = |entries: Vec<Entry>, prev: u64, commit| Event::Message {
        from: 1,
        message: Message {
            term: 1,
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: prev,
                prev_log_term: if prev == 0 { 0 } else { 1 },
                entries,
                leader_commit: commit,
            }),
        },
    };
    let persist_all = |node: &mut Node, actions: Vec<Action>| {
        for a in actions {
            if let Action::Persist(p) = a {
                node.step(Event::Persisted { seq: p.seq });
            }
        }
    };
    let actions = node.step(append(entries[..2].to_vec(), 0, 2));
    persist_all(&mut node, actions);
    assert_eq!(node.applied_index(), 2);
    assert_eq!(node.snapshot_meta_at(2), None, "no configuration known at index 2");
    node.step(Event::SnapshotTaken { index: 2 });
    assert_eq!(node.snapshot(), None);
    assert_eq!(node.stats().dropped_bad_snapshot, 1);

    let actions = node.step(append(entries[2..].to_vec(), 2, 3));
    persist_all(&mut node, actions);
    assert_eq!(node.applied_index(), 3);
    let meta = node.snapshot_meta_at(3).expect("the configuration that added it");
    assert_eq!(meta.membership, learner);
    node.step(Event::SnapshotTaken { index: 3 });
    assert_eq!(node.snapshot().map(|m| m.last_included_index), Some(3));
}
