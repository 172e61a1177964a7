//! Snapshots and log compaction, driven through the public API: restore
//! from a snapshot plus a log tail, compaction with a trailing window, a
//! leader offering its snapshot to a follower that needs compacted entries,
//! and both of Figure 13's install outcomes on the follower.

use raft_core::{
    Action, AppendEntries, AppendEntriesResponse, Bytes, Config, Entry, EntryKind, Event, HardState, InstallSnapshot,
    Membership, Message, MessageBody, Node, PersistedState, ProgressState, SnapshotMeta,
};

fn entry(index: u64, term: u64) -> Entry {
    Entry { term, index, kind: EntryKind::Normal, data: Bytes::from(format!("e{index}")) }
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { last_included_index: index, last_included_term: term, membership: Membership::new(vec![1, 2, 3]) }
}

fn restored(id: u64, term: u64, snapshot: Option<SnapshotMeta>, entries: Vec<Entry>) -> Node {
    let state = PersistedState { hard_state: HardState { term, vote: None }, snapshot, entries };
    Node::restore(Config::new(id, vec![1, 2, 3]), state, id).expect("valid state")
}

fn sends(actions: &[Action]) -> Vec<(u64, MessageBody)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message } => Some((*to, message.body.clone())),
            _ => None,
        })
        .collect()
}

fn persists(actions: &[Action]) -> Vec<raft_core::Persist> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// Makes node `node` (of a 3-node cluster) leader of the next term with
/// `matched` peers matched through its last index, every write acknowledged.
fn lead(node: &mut Node, matched: &[u64]) {
    node.step(Event::Campaign);
    let term = node.term();
    let mut seq = 1;
    node.step(Event::Persisted { seq });
    let vote = |from| Event::Message {
        from,
        message: Message {
            term,
            body: MessageBody::RequestVoteResponse(raft_core::RequestVoteResponse { pre_vote: false, granted: true }),
        },
    };
    node.step(vote(2));
    assert_eq!(node.role(), raft_core::Role::Leader);
    seq += 1;
    node.step(Event::Persisted { seq });
    for &peer in matched {
        let last = node.last_index();
        node.step(ack(peer, term, last));
    }
}

fn ack(from: u64, term: u64, match_index: u64) -> Event {
    Event::Message {
        from,
        message: Message {
            term,
            body: MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index }),
        },
    }
}

#[test]
fn restore_from_a_snapshot_and_its_tail() {
    let node = restored(1, 3, Some(meta(10, 2)), vec![entry(11, 2), entry(12, 3)]);
    assert_eq!((node.commit_index(), node.applied_index()), (10, 10), "the snapshot is committed and applied");
    assert_eq!((node.first_index(), node.last_index(), node.last_term()), (11, 12, 3));
    assert_eq!(node.term_at(10), Some(2), "the snapshot's last entry is still named");
    assert_eq!(node.term_at(9), None, "entries before it are gone");
    assert_eq!(node.snapshot(), Some(&meta(10, 2)));
    // An empty tail: the log ends at the snapshot.
    let node = restored(1, 2, Some(meta(10, 2)), vec![]);
    assert_eq!((node.last_index(), node.last_term()), (10, 2));
}

#[test]
fn inconsistent_snapshot_states_are_refused() {
    let bad = [
        // The tail does not follow the snapshot.
        (3, Some(meta(10, 2)), vec![entry(12, 2)]),
        // The tail's terms go below the snapshot's.
        (3, Some(meta(10, 2)), vec![entry(11, 1)]),
        // A snapshot from a term after the persisted one.
        (1, Some(meta(10, 2)), vec![]),
        // Index or term 0.
        (3, Some(meta(0, 1)), vec![]),
        (3, Some(meta(5, 0)), vec![]),
    ];
    for (term, snapshot, entries) in bad {
        let state = PersistedState { hard_state: HardState { term, vote: None }, snapshot: snapshot.clone(), entries };
        assert!(Node::restore(Config::new(1, vec![1, 2, 3]), state, 1).is_err(), "{snapshot:?} accepted");
    }
}

#[test]
fn a_snapshot_compacts_up_to_the_trailing_window_and_is_persisted() {
    let log: Vec<Entry> = (1..=20).map(|i| entry(i, 1)).collect();
    let mut config = Config::new(1, vec![1, 2, 3]);
    config.snapshot_trailing_entries = 5;
    let state = PersistedState { hard_state: HardState { term: 1, vote: None }, snapshot: None, entries: log };
    let mut node = Node::restore(config, state, 1).expect("valid");
    lead(&mut node, &[2, 3]);
    let applied = node.applied_index();
    assert!(applied >= 20, "the leader applied its log ({applied})");
    // Not applied yet, or not newer: refused and counted.
    node.step(Event::SnapshotTaken { index: applied + 1 });
    assert_eq!(node.stats().dropped_bad_snapshot, 1);
    let out = node.step(Event::SnapshotTaken { index: 15 });
    assert_eq!(node.first_index(), 11, "15 minus a window of 5 is compacted");
    let marker: Vec<_> = persists(&out).into_iter().filter_map(|p| p.snapshot).collect();
    assert_eq!(marker, vec![meta(15, 1)]);
    node.step(Event::SnapshotTaken { index: 15 });
    assert_eq!(node.stats().dropped_bad_snapshot, 2, "the same index twice");
}

#[test]
fn a_follower_behind_the_compaction_point_is_offered_the_snapshot() {
    let log: Vec<Entry> = (1..=20).map(|i| entry(i, 1)).collect();
    let mut config = Config::new(1, vec![1, 2, 3]);
    config.snapshot_trailing_entries = 0;
    let state = PersistedState { hard_state: HardState { term: 1, vote: None }, snapshot: None, entries: log };
    let mut node = Node::restore(config, state, 1).expect("valid");
    lead(&mut node, &[2]);
    let term = node.term();
    node.step(Event::SnapshotTaken { index: 20 });
    // Follower 3 never answered and has an empty log: it rejects the probe,
    // and the leader has nothing older than 20 left to send but the snapshot.
    let probed = node.progress(3).expect("progress").next_index - 1;
    let reject = Event::Message {
        from: 3,
        message: Message {
            term,
            body: MessageBody::AppendEntriesResponse(AppendEntriesResponse::Reject {
                rejected_index: probed,
                conflict_term: None,
                conflict_index: 1,
            }),
        },
    };
    let out = node.step(reject);
    let offered: Vec<_> = sends(&out).into_iter().filter(|(to, _)| *to == 3).collect();
    assert_eq!(offered.len(), 1, "{offered:?}");
    let MessageBody::InstallSnapshot(InstallSnapshot { meta: m }) = &offered[0].1 else {
        panic!("expected an InstallSnapshot, got {offered:?}")
    };
    assert_eq!((m.last_included_index, m.last_included_term), (20, 1));
    assert_eq!(node.progress(3).map(|p| p.state), Some(ProgressState::Snapshot));
    // An answer below the snapshot (still installing) changes nothing.
    node.step(ack(3, term, 0));
    assert_eq!(node.progress(3).map(|p| p.state), Some(ProgressState::Snapshot));
    // The acknowledgement of the snapshot resumes normal replication.
    let out = node.step(ack(3, term, 20));
    let p = node.progress(3).expect("progress");
    assert_eq!((p.state, p.match_index), (ProgressState::Replicate, 20));
    // ... from right after the snapshot.
    assert!(
        sends(&out).iter().any(|(to, b)| *to == 3
            && matches!(b, MessageBody::AppendEntries(a) if a.prev_log_index == 20 && a.entries[0].index == 21)),
        "{:?}",
        sends(&out)
    );
}

/// Delivers an InstallSnapshot from leader 2 in term 3.
fn offer(node: &mut Node, m: SnapshotMeta) -> Vec<Action> {
    node.step(Event::Message {
        from: 2,
        message: Message { term: 3, body: MessageBody::InstallSnapshot(InstallSnapshot { meta: m }) },
    })
}

#[test]
fn a_follower_whose_log_agrees_keeps_the_entries_after_the_snapshot() {
    // Figure 13 rule 6: the follower holds 30/3; its entries after it stay.
    let mut node = restored(1, 3, None, (1..=32).map(|i| entry(i, 3)).collect());
    let out = offer(&mut node, meta(30, 3));
    assert!(out.iter().any(|a| matches!(a, Action::InstallSnapshot { from: 2, meta: m } if *m == meta(30, 3))));
    // Nothing is applied while the driver installs.
    assert!(!out.iter().any(|a| matches!(a, Action::Apply { .. })));
    let out = node.step(Event::SnapshotInstalled { meta: meta(30, 3) });
    assert_eq!((node.commit_index(), node.applied_index()), (30, 30));
    assert_eq!((node.first_index(), node.last_index()), (31, 32), "the tail is kept");
    let p = persists(&out);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].snapshot.clone(), p[0].truncate_from), (Some(meta(30, 3)), None));
    // The acknowledgement waits for that write to be durable.
    assert!(sends(&out).is_empty(), "{:?}", sends(&out));
    let out = node.step(Event::Persisted { seq: p[0].seq });
    let acks = sends(&out);
    assert!(
        acks.iter().any(|(to, b)| *to == 2
            && matches!(b, MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index })
                if *match_index >= 30)),
        "{acks:?}"
    );
}

#[test]
fn a_follower_whose_log_conflicts_discards_it() {
    // Figure 13 rule 7: the follower's entry at 30 is of another term.
    let mut node = restored(1, 3, None, (1..=35).map(|i| entry(i, if i <= 20 { 1 } else { 2 })).collect());
    offer(&mut node, meta(30, 3));
    let out = node.step(Event::SnapshotInstalled { meta: meta(30, 3) });
    assert_eq!((node.last_index(), node.last_term()), (30, 3), "the whole log is gone");
    assert_eq!(node.persisted_index(), 0, "nothing durable is known to agree with the snapshot");
    let p = persists(&out);
    assert_eq!((p[0].snapshot.clone(), p[0].truncate_from), (Some(meta(30, 3)), Some(31)));
    node.step(Event::Persisted { seq: p[0].seq });
    assert_eq!(node.persisted_index(), 30);
    // A later AppendEntries continues from the snapshot.
    let out = node.step(Event::Message {
        from: 2,
        message: Message {
            term: 3,
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: 30,
                prev_log_term: 3,
                entries: vec![entry(31, 3)],
                leader_commit: 30,
            }),
        },
    });
    assert_eq!(node.last_index(), 31);
    assert_eq!(persists(&out).len(), 1);
}

#[test]
fn an_offer_of_a_prefix_already_committed_is_answered_at_once() {
    let mut node = restored(1, 3, None, (1..=10).map(|i| entry(i, 1)).collect());
    // Learn commit 10 from leader 2 and make it durable.
    node.step(Event::Message {
        from: 2,
        message: Message {
            term: 3,
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: 10,
                prev_log_term: 1,
                entries: vec![],
                leader_commit: 10,
            }),
        },
    });
    node.step(Event::Persisted { seq: 1 });
    assert_eq!(node.commit_index(), 10);
    let out = offer(&mut node, meta(8, 1));
    assert!(!out.iter().any(|a| matches!(a, Action::InstallSnapshot { .. })), "no install for a held prefix");
    assert!(sends(&out).iter().any(|(_, b)| matches!(
        b,
        MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index: 10 })
    )));
}

#[test]
fn stray_snapshot_events_are_counted_and_ignored() {
    let mut node = restored(1, 3, None, (1..=5).map(|i| entry(i, 1)).collect());
    node.step(Event::SnapshotInstalled { meta: meta(30, 3) });
    node.step(Event::SnapshotAborted);
    assert_eq!(node.stats().dropped_bad_snapshot, 2);
    assert_eq!((node.last_index(), node.applied_index()), (5, 0), "nothing changed");
    // An aborted install resumes applying.
    offer(&mut node, meta(30, 3));
    assert!(node.installing_snapshot().is_some());
    node.step(Event::SnapshotAborted);
    assert!(node.installing_snapshot().is_none());
}

#[test]
fn malformed_offers_are_dropped() {
    let mut node = restored(1, 3, None, vec![]);
    for m in [meta(0, 1), meta(5, 0), meta(5, 4), SnapshotMeta { membership: Membership::default(), ..meta(5, 1) }] {
        let out = offer(&mut node, m.clone());
        assert!(out.iter().all(|a| !matches!(a, Action::InstallSnapshot { .. })), "{m:?} accepted");
    }
    assert_eq!(node.stats().dropped_malformed, 4);
}

#[test]
fn a_snapshot_must_be_of_applied_entries() {
    // Entries 1..=5 are in the log, none applied yet.
    let mut node = restored(1, 3, None, (1..=5).map(|i| entry(i, 1)).collect());
    for index in [0, 3, 5] {
        let out = node.step(Event::SnapshotTaken { index });
        assert!(persists(&out).is_empty(), "snapshot at {index} accepted");
    }
    assert_eq!(node.stats().dropped_bad_snapshot, 3);
    assert_eq!((node.first_index(), node.snapshot()), (1, None));
}

#[test]
fn an_install_report_with_an_impossible_term_is_refused() {
    for term in [0, 4] {
        // Current term 3: a snapshot's last entry cannot be of term 0 or 4.
        let mut node = restored(1, 3, None, (1..=5).map(|i| entry(i, 1)).collect());
        offer(&mut node, meta(30, 3));
        let out = node.step(Event::SnapshotInstalled { meta: meta(30, term) });
        assert!(persists(&out).is_empty(), "term {term} accepted");
        assert_eq!(node.stats().dropped_bad_snapshot, 1);
        assert_eq!((node.last_index(), node.snapshot()), (5, None), "term {term}");
    }
}

#[test]
fn an_append_that_starts_inside_the_snapshot_is_trimmed_not_rejected() {
    // The follower holds a snapshot through 10/3; the leader, not knowing,
    // sends entries 9..=12 after 8. The part the snapshot covers is
    // committed, so it matches: only 11 and 12 are new.
    let mut node = restored(1, 3, Some(meta(10, 3)), vec![]);
    let out = node.step(Event::Message {
        from: 2,
        message: Message {
            term: 3,
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: 8,
                prev_log_term: 3,
                entries: (9..=12).map(|i| entry(i, 3)).collect(),
                leader_commit: 10,
            }),
        },
    });
    assert!(
        !sends(&out)
            .iter()
            .any(|(_, b)| matches!(b, MessageBody::AppendEntriesResponse(AppendEntriesResponse::Reject { .. }))),
        "{:?}",
        sends(&out)
    );
    let p = persists(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].entries.iter().map(|e| e.index).collect::<Vec<_>>(), [11, 12]);
    assert_eq!((node.first_index(), node.last_index()), (11, 12));
    let out = node.step(Event::Persisted { seq: p[0].seq });
    assert!(sends(&out).iter().any(|(_, b)| matches!(
        b,
        MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index: 12 })
    )));
}
