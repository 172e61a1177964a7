//! A node whose disk lost entries it had synced (`Node::begin_repair`), and the leader that
//! repairs such a follower. The simulator's `disk_loss` faults show each rule below mattering
//! (docs/testing.md lists the mutations it catches); these pin the rules one by one.

use raft_core::{
    Action, AppendEntries, AppendEntriesResponse, Bytes, Config, Entry, EntryKind, Event, HardState, Message,
    MessageBody, Node, PersistedState, Repair, RequestVote, RequestVoteResponse, Role,
};

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|index| Entry { term, index, kind: EntryKind::Normal, data: Bytes::from_static(b"x") }).collect()
}

/// Node 2 of {1,2,3} in term 3 with no vote, whose disk kept entries 1..=3 of term 1 but had synced
/// 1..=3 of term 1 and 4..=8 of term 2 before it lost them.
fn repairing() -> Node {
    let state =
        PersistedState { hard_state: HardState { term: 3, vote: None }, snapshot: None, entries: entries(1, 1..=3) };
    let mut node = Node::restore(Config::new(2, vec![1, 2, 3]), state, 7).expect("valid");
    node.begin_repair(Repair { lost_through: 8, last_term: 2 });
    node
}

fn vote_request(term: u64, last_log_index: u64, last_log_term: u64) -> Event {
    let req = RequestVote { pre_vote: false, transfer: false, last_log_index, last_log_term };
    Event::Message { from: 3, message: Message { term, body: MessageBody::RequestVote(req) } }
}

/// The vote answer sent to node 3, once every write the step asked for is durable.
fn vote_answer(node: &mut Node, event: Event) -> Option<bool> {
    let mut actions = node.step(event);
    while let Some(seq) = actions.iter().find_map(|a| match a {
        Action::Persist(p) => Some(p.seq),
        _ => None,
    }) {
        let answer = find_vote(&actions);
        if answer.is_some() {
            return answer;
        }
        actions = node.step(Event::Persisted { seq });
    }
    find_vote(&actions)
}

fn find_vote(actions: &[Action]) -> Option<bool> {
    actions.iter().find_map(|a| match a {
        Action::Send { to: 3, message: Message { body: MessageBody::RequestVoteResponse(r), .. } } => Some(r.granted),
        _ => None,
    })
}

/// A candidate as up to date as the short log that survived, but not as the log that was lost,
/// is refused: the lost log may have held entries committed with this node's acknowledgement.
/// One as up to date as the lost log gets the vote, so a majority of the others can still elect.
#[test]
fn a_repairing_node_judges_candidates_by_the_log_it_lost() {
    let mut node = repairing();
    assert_eq!(vote_answer(&mut node, vote_request(4, 3, 1)), Some(false), "voted for a log shorter than the lost one");
    assert_eq!(vote_answer(&mut node, vote_request(5, 7, 2)), Some(false), "voted for a log one entry short");
    assert_eq!(node.stats().votes_refused_in_repair, 2);
    assert_eq!(vote_answer(&mut node, vote_request(6, 8, 2)), Some(true), "refused a candidate holding all it lost");
    let mut node = repairing();
    assert_eq!(vote_answer(&mut node, vote_request(4, 2, 3)), Some(true), "a newer last term is more up to date");
}

/// Its own vote would rest on the short log: it never campaigns, however long it waits.
#[test]
fn a_repairing_node_never_campaigns() {
    let mut node = repairing();
    for _ in 0..200 {
        for a in node.step(Event::Tick) {
            if let Action::Send { message: Message { body: MessageBody::RequestVote(_), .. }, .. } = a {
                panic!("campaigned while repairing");
            }
        }
    }
    assert!(node.step(Event::Campaign).iter().all(|a| !matches!(a, Action::Send { .. })));
    assert_eq!(node.role(), Role::Follower);
    assert!(node.repairing().is_some());
}

/// The repair ends once the durable log is at least as up to date as the lost one, and not
/// before: entries appended but not yet durable do not count.
#[test]
fn the_repair_ends_when_the_durable_log_covers_the_lost_one() {
    let mut node = repairing();
    let append = AppendEntries { prev_log_index: 3, prev_log_term: 1, entries: entries(2, 4..=8), leader_commit: 3 };
    let actions =
        node.step(Event::Message { from: 1, message: Message { term: 3, body: MessageBody::AppendEntries(append) } });
    let seq = actions
        .iter()
        .find_map(|a| match a {
            Action::Persist(p) if !p.entries.is_empty() => Some(p.seq),
            _ => None,
        })
        .expect("the entries are written");
    assert!(node.repairing().is_some(), "repaired before the entries were durable");
    node.step(Event::Persisted { seq });
    assert_eq!(node.repairing(), None);
}

/// Node 1 leading {1,2,3} in term 2 after its no-op (index 4) and entries 1..=3 of term 1,
/// with node 2 acknowledging everything.
fn leader() -> Node {
    let state =
        PersistedState { hard_state: HardState { term: 1, vote: None }, snapshot: None, entries: entries(1, 1..=3) };
    let mut node = Node::restore(Config::new(1, vec![1, 2, 3]), state, 3).expect("valid");
    let persist_all = |node: &mut Node, actions: Vec<Action>| {
        for a in actions {
            if let Action::Persist(p) = a {
                node.step(Event::Persisted { seq: p.seq });
            }
        }
    };
    let actions = node.step(Event::Campaign);
    persist_all(&mut node, actions);
    let granted = MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote: false, granted: true });
    let actions = node.step(Event::Message { from: 2, message: Message { term: 2, body: granted } });
    persist_all(&mut node, actions);
    assert_eq!(node.role(), Role::Leader);
    let ack = MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index: 4 });
    node.step(Event::Message { from: 2, message: Message { term: 2, body: ack } });
    assert_eq!(node.progress(2).map(|p| p.match_index), Some(4));
    node
}

fn first_append_to_2(actions: &[Action]) -> Option<AppendEntries> {
    actions.iter().find_map(|a| match a {
        Action::Send { to: 2, message: Message { body: MessageBody::AppendEntries(ae), .. } } => Some(ae.clone()),
        _ => None,
    })
}

/// Node 2 acknowledged index 4, then its disk lost everything after index 1: it rejects the
/// heartbeat at its match index. The leader believes what it holds now and resends from there,
/// instead of clamping to the old match index forever (the follower would never catch up, while
/// its answers kept satisfying CheckQuorum).
#[test]
fn the_leader_repairs_a_follower_that_holds_less_than_it_acknowledged() {
    let mut node = leader();
    let reject = AppendEntriesResponse::Reject { rejected_index: 4, conflict_term: None, conflict_index: 2 };
    let actions = node.step(Event::Message {
        from: 2,
        message: Message { term: 2, body: MessageBody::AppendEntriesResponse(reject) },
    });
    assert_eq!(node.stats().follower_regressions, 1);
    assert_eq!(node.progress(2).map(|p| p.match_index), Some(1));
    let ae = first_append_to_2(&actions).expect("a resend");
    assert_eq!((ae.prev_log_index, ae.prev_log_term), (1, 1), "resent from what the follower holds");
    assert_eq!(ae.entries.first().map(|e| e.index), Some(2));
    // The repaired follower acknowledges again and the match index climbs back.
    let ack = MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index: 4 });
    node.step(Event::Message { from: 2, message: Message { term: 2, body: ack } });
    assert_eq!(node.progress(2).map(|p| p.match_index), Some(4));
}

/// A rejection older than an acknowledgement (of a probe sent before it) is no regression.
#[test]
fn a_stale_rejection_is_not_a_regression() {
    let mut node = leader();
    let reject = AppendEntriesResponse::Reject { rejected_index: 2, conflict_term: None, conflict_index: 2 };
    node.step(Event::Message {
        from: 2,
        message: Message { term: 2, body: MessageBody::AppendEntriesResponse(reject) },
    });
    assert_eq!(node.stats().follower_regressions, 0);
    assert_eq!(node.progress(2).map(|p| p.match_index), Some(4));
}
