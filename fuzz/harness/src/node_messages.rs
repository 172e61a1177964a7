//! `node_messages`: one node fed whatever a hostile or broken peer could send (messages decoded
//! from the fuzzer's bytes, from any sender id) mixed with the driver's events (ticks, proposals,
//! fsync reports, campaigns, snapshot reports for any index, membership changes and transfers for
//! any id, reads). It must never panic, its own invariants hold after every step, and every read
//! is answered at most once, released only at an applied index. (Forged messages break the
//! cluster-wide guarantees by design: Raft trusts its peers; `core_events` checks those.)

use std::collections::BTreeSet;

use raft_core::{Action, Bytes, Config, Event, MembershipChange, Message, Node};

/// Runs one input; returns the peer messages it decoded and stepped.
pub fn run(data: &[u8]) -> u64 {
    let mut decoded = 0;
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), 7).expect("config");
    let mut last_seq = 0;
    let mut install = None;
    let mut reads_open = BTreeSet::new();
    let mut next_read = 0u64;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let event = match op % 12 {
            0 => Event::Tick,
            1 => Event::Propose { data: Bytes::from_static(b"x") },
            2 => Event::Persisted { seq: last_seq },
            3 => Event::Campaign,
            // The driver's snapshot reports, at any time, for any index: the
            // core must refuse the ones that do not fit.
            4 => Event::SnapshotTaken { index: u64::from(op / 9) },
            5 => match install.take() {
                Some(meta) => Event::SnapshotInstalled { meta },
                None => Event::SnapshotAborted,
            },
            // Any change or transfer, for any id (0 included).
            6 => {
                let id = u64::from(op / 11 % 6);
                let change = match op / 66 {
                    0 => MembershipChange::AddLearner(id),
                    1 => MembershipChange::Promote(id),
                    2 => MembershipChange::Remove(id),
                    _ => MembershipChange::Set { voters: vec![1, id, id + 1], learners: vec![id + 2] },
                };
                Event::ChangeMembership { change, context: None }
            }
            7 => Event::TransferLeadership { to: u64::from(op / 11 % 6) },
            8 => {
                next_read += 1;
                reads_open.insert(next_read);
                Event::ReadIndex { ctx: next_read }
            }
            _ => {
                let Some((&len, tail)) = rest.split_first() else { break };
                let len = (len as usize).min(tail.len());
                let (chunk, tail) = tail.split_at(len);
                rest = tail;
                let Ok(message) = postcard::from_bytes::<Message>(chunk) else { continue };
                decoded += 1;
                Event::Message { from: u64::from(op % 4), message }
            }
        };
        let term = node.term();
        for action in node.step(event) {
            match action {
                Action::Persist(p) => last_seq = p.seq,
                Action::InstallSnapshot { meta, .. } => install = Some(meta),
                Action::ReadReady { ctx, index } => {
                    assert!(reads_open.remove(&ctx), "read {ctx} answered twice or never asked");
                    assert!(index <= node.applied_index(), "read released before its index was applied");
                }
                Action::ReadRejected { ctx, .. } => assert!(reads_open.remove(&ctx), "read {ctx} answered twice"),
                _ => {}
            }
        }
        assert!(node.term() >= term);
        assert!(node.commit_index() <= node.last_index());
        // Applied entries are durable, in the log or in the snapshot the
        // driver stored before reporting it.
        let snapshot = node.snapshot().map_or(0, |m| m.last_included_index);
        assert!(node.applied_index() <= node.persisted_index().max(snapshot));
        assert!(node.first_index() <= node.last_index() + 1);
    }
    decoded
}
