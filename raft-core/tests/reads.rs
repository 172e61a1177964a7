//! Reads without log writes, through the public API: the rules a scripted scenario cannot reach
//! (`raft-sim/tests/testdata/29_*` to `34_*` pin the rest as golden traces).

use raft_core::{
    Action, AppendEntries, Config, Event, HardState, Message, MessageBody, Node, PersistedState, ReadIndexResponse,
};

/// A follower of leader 1 in term 2 (3 voters), started with `seed`.
fn follower(seed: u64) -> Node {
    let state = PersistedState { hard_state: HardState { term: 2, vote: Some(1) }, ..PersistedState::default() };
    let mut node = Node::restore(Config::new(3, vec![1, 2, 3]), state, seed).expect("valid");
    let heartbeat = AppendEntries { prev_log_index: 0, prev_log_term: 0, entries: Vec::new(), leader_commit: 0 };
    node.step(from_leader(MessageBody::AppendEntries(heartbeat)));
    assert_eq!(node.leader(), Some(1));
    node
}

fn from_leader(body: MessageBody) -> Event {
    Event::Message { from: 1, message: Message { term: 2, body } }
}

/// The request number of the `ReadIndex` among `actions`.
fn request(actions: &[Action]) -> u64 {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send { to: 1, message: Message { body: MessageBody::ReadIndex(r), .. } } => Some(r.ctx),
            _ => None,
        })
        .expect("a read request to the leader")
}

fn released(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ReadReady { ctx, .. } => Some(*ctx),
            _ => None,
        })
        .collect()
}

/// An answer to a read request of an earlier incarnation (delayed across a crash, in the same term)
/// must not release a read of this one: it was confirmed before this read existed. Request numbers
/// start at a nonce drawn from the node's seed, which differs per incarnation.
#[test]
fn an_answer_meant_for_an_earlier_incarnation_releases_nothing() {
    let mut before = follower(11);
    let old = request(&before.step(Event::ReadIndex { ctx: 1 }));
    let mut after = follower(12);
    let new = request(&after.step(Event::ReadIndex { ctx: 1 }));
    assert_ne!(old, new);
    let answer = |ctx| from_leader(MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index: Some(0) }));
    assert!(released(&after.step(answer(old))).is_empty(), "the old incarnation's answer was accepted");
    assert_eq!(released(&after.step(answer(new))), vec![1]);
    assert_eq!(released(&after.step(answer(new))), Vec::<u64>::new(), "answered once");
}

/// Reads that arrive while a request is in flight go together in the next one: one message for the
/// whole batch, answered together.
#[test]
fn a_follower_batches_reads_into_one_request() {
    let mut node = follower(5);
    let first = request(&node.step(Event::ReadIndex { ctx: 10 }));
    for ctx in 11..20 {
        let sent = node.step(Event::ReadIndex { ctx });
        assert!(sent.iter().all(|a| !matches!(a, Action::Send { .. })), "a request per read");
    }
    let answer = |ctx| from_leader(MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index: Some(0) }));
    let actions = node.step(answer(first));
    assert_eq!(released(&actions), vec![10]);
    let second = request(&actions);
    assert_eq!(second, first + 1);
    assert_eq!(released(&node.step(answer(second))), (11..20).collect::<Vec<_>>());
    assert_eq!(node.pending_reads(), 0);
}
