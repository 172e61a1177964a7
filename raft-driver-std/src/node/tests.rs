//! The driver on real threads, disks and sockets: one-node clusters commit, recover, refuse.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{ProposeError, Role};

use super::*;
use crate::state_machine::RestoreError;
use crate::timing::Timing;

/// Waits until `cond` holds or `timeout` passes, polling every few milliseconds; returns whether it held.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
/// Appends every command to a list and replies with the list's length.
#[derive(Default)]
struct Log(Vec<Bytes>);

impl StateMachine for Log {
    type Response = Bytes;
    type Snapshot = Vec<u8>;

    fn apply(&mut self, _index: u64, command: &[u8]) -> Bytes {
        self.0.push(Bytes::copy_from_slice(command));
        Bytes::from(self.0.len().to_string())
    }

    /// Each command as a big-endian u32 length and its bytes.
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.0 {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    fn restore(&mut self, mut image: &[u8]) -> Result<(), RestoreError> {
        let mut commands = Vec::new();
        while !image.is_empty() {
            let bad = || RestoreError("truncated image".into());
            let (len, rest) = image.split_first_chunk::<4>().ok_or_else(bad)?;
            let len = u32::from_be_bytes(*len) as usize;
            let command = rest.get(..len).ok_or_else(bad)?;
            commands.push(Bytes::copy_from_slice(command));
            image = &rest[len..];
        }
        self.0 = commands;
        Ok(())
    }
}

fn options(dir: &std::path::Path, fsync: bool) -> NodeOptions {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut options = NodeOptions::new(1, 9, listen, Vec::new(), dir.join("wal"));
    options.timing = Timing { tick_ms: 5, heartbeat_ticks: 1, election_ticks: 4 };
    options.fsync = fsync;
    options.seed = Some(7);
    options
}

fn wait_leader(handle: &RaftHandle<Log>) {
    assert!(wait_until(Duration::from_secs(5), || handle.status().role == Role::Leader), "no leader");
}

#[test]
fn single_node_commits_applies_and_recovers() {
    for fsync in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = RaftNode::start(options(dir.path(), fsync), Log::default()).expect("start");
        let handle = node.handle();
        wait_leader(&handle);
        // Many concurrent proposals exercise batching; each gets its own reply.
        let receivers: Vec<_> = (0..100).map(|i| handle.propose(Bytes::from(format!("c{i}")))).collect();
        let mut replies: Vec<u64> = receivers
            .into_iter()
            .map(|rx| {
                let reply = rx.recv_timeout(Duration::from_secs(5)).expect("reply").expect("applied");
                std::str::from_utf8(&reply).expect("utf8").parse().expect("number")
            })
            .collect();
        replies.sort_unstable();
        assert_eq!(replies, (1..=100).collect::<Vec<u64>>());
        // The status is published after the step that answered the proposals: wait for it.
        let caught_up = || {
            let status = handle.status();
            status.applied_index >= 101 && status.commit_index == status.applied_index
        };
        assert!(wait_until(Duration::from_secs(5), caught_up), "{:?}", handle.status());
        assert_eq!(handle.inspect(|log: &Log| log.0.len(), Duration::from_secs(1)), Some(100));
        node.shutdown().expect("clean shutdown");
        assert_eq!(
            handle.propose_wait(Bytes::from_static(b"late"), Duration::from_secs(1)),
            Err(ProposalError::StoppedBeforeProposing),
            "a proposal after the stop never reaches the core: certainly not applied"
        );

        // Restart: the log is replayed into a fresh state machine once committed again.
        let node = RaftNode::start(options(dir.path(), fsync), Log::default()).expect("restart");
        assert_eq!(node.recovery().last_index, 101);
        let handle = node.handle();
        wait_leader(&handle);
        let reply = handle.propose_wait(Bytes::from_static(b"again"), Duration::from_secs(5)).expect("applied");
        assert_eq!(&reply[..], b"101");
    }
}

#[test]
fn follower_rejects_proposals_as_retryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Peer 2 never answers, so node 1 can never win an election.
    let mut opts = options(dir.path(), true);
    opts.peers = vec![(2, SocketAddr::from(([127, 0, 0, 1], 9)))];
    opts.voters = vec![1, 2];
    let node = RaftNode::start(opts, Log::default()).expect("start");
    let result = node.handle().propose_wait(Bytes::from_static(b"x"), Duration::from_secs(5));
    let error = result.expect_err("not leader");
    assert!(matches!(error, ProposalError::Refused(ProposeError::NotLeader { leader: None })), "{error:?}");
    assert!(error.is_retryable());
}

#[test]
fn corrupt_wal_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = RaftNode::start(options(dir.path(), true), Log::default()).expect("start");
    let handle = node.handle();
    wait_leader(&handle);
    for _ in 0..3 {
        handle.propose_wait(Bytes::from_static(b"x"), Duration::from_secs(5)).expect("applied");
    }
    node.shutdown().expect("shutdown");
    let segment = dir.path().join("wal").join("wal-0000000000000001.log");
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[16 + 8] ^= 0xFF;
    std::fs::write(&segment, &bytes).expect("write");
    let error = RaftNode::start(options(dir.path(), true), Log::default()).expect_err("corrupt");
    let text = error.to_string();
    assert!(text.contains("wal-0000000000000001.log") && text.contains("offset 16"), "{text}");
}

#[test]
fn oversized_commands_are_refused_at_once_and_do_not_fail_their_neighbours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), true);
    opts.limits.max_entry_bytes = 100;
    let node = RaftNode::start(opts, Log::default()).expect("start");
    let handle = node.handle();
    wait_leader(&handle);
    assert_eq!(handle.max_entry_bytes(), 100);
    // Interleave fitting and oversized commands so that they would share a batch in the node thread.
    let receivers: Vec<_> = (0..40).map(|i| handle.propose(Bytes::from(vec![b'x'; 90 + i % 20]))).collect();
    for (i, rx) in receivers.into_iter().enumerate() {
        let result = rx.recv_timeout(Duration::from_secs(5)).expect("answered");
        if 90 + i % 20 <= 100 {
            assert!(result.is_ok(), "command {i} of {} bytes: {result:?}", 90 + i % 20);
        } else {
            let error = result.expect_err("too large");
            assert_eq!(error, ProposalError::Refused(ProposeError::EntryTooLarge { size: 90 + i % 20, max: 100 }));
            assert!(!error.is_retryable() && !error.may_have_taken_effect());
        }
    }
    assert_eq!(handle.inspect(|log: &Log| log.0.len(), Duration::from_secs(1)), Some(22));
}

#[test]
fn inconsistent_options_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), true);
    opts.limits.max_batch_entries = 0;
    let error = RaftNode::start(opts, Log::default()).expect_err("refused");
    assert!(error.to_string().contains("max_batch_entries"), "{error}");
    let mut opts = options(dir.path(), true);
    opts.timing.heartbeat_ticks = opts.timing.election_ticks;
    assert!(matches!(RaftNode::start(opts, Log::default()), Err(DriverError::Timing(_))));
    assert!(!dir.path().join("wal").exists(), "no WAL was created for refused options");
}

/// The snapshot files in `dir` (complete ones only).
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.ends_with(".snap"));
    names.sort();
    names
}

fn commands(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("c{i}"))).collect()
}

#[test]
fn snapshots_compact_the_log_and_a_restart_starts_from_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), true);
    opts.snapshot = SnapshotPolicy { every_entries: 50, every_bytes: 0, trailing_entries: 10 };
    // Small segments, so that compaction has whole segments to delete.
    opts.wal = opts.wal.clone().with_segment_size(4096);
    let node = RaftNode::start(opts.clone(), Log::default()).expect("start");
    let handle = node.handle();
    wait_leader(&handle);
    for c in commands(300) {
        handle.propose_wait(c, Duration::from_secs(5)).expect("applied");
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            let s = handle.status();
            s.snapshot.taken >= 5 && s.snapshot.index >= 250 && snapshot_files(&opts.snapshot_dir).len() == 1
        }),
        "{:?} files {:?}",
        handle.status(),
        snapshot_files(&opts.snapshot_dir)
    );
    let status = handle.status();
    // The in-memory log keeps only the trailing window before the snapshot.
    assert!(status.first_index > 200 && status.first_index <= status.snapshot.index - 9, "{status:?}");
    let segments = std::fs::read_dir(&opts.wal_dir).unwrap().filter(|e| e.as_ref().unwrap().path().is_file()).count();
    node.shutdown().expect("shutdown");

    let node = RaftNode::start(opts.clone(), Log::default()).expect("restart");
    let snapshot_index = node.recovery().snapshot_index;
    assert!(snapshot_index >= 250, "{:?}", node.recovery());
    let handle = node.handle();
    // The state machine is restored from the file before any entry is applied again.
    let restored = handle.inspect(|log: &Log| log.0.clone(), Duration::from_secs(1)).expect("inspect");
    assert!(restored.len() as u64 >= snapshot_index - 1, "{} commands for snapshot {snapshot_index}", restored.len());
    assert_eq!(restored[..], commands(300)[..restored.len()]);
    wait_leader(&handle);
    assert!(wait_until(Duration::from_secs(5), || handle
        .inspect(|log: &Log| log.0 == commands(300), Duration::from_secs(1))
        .unwrap_or(false)));
    // A WAL compacted to a handful of segments, not one per 4 KiB of history.
    assert!(segments < 10, "{segments} segments left");
}

#[test]
fn a_missing_snapshot_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), true);
    opts.snapshot = SnapshotPolicy { every_entries: 20, every_bytes: 0, trailing_entries: 0 };
    let node = RaftNode::start(opts.clone(), Log::default()).expect("start");
    let handle = node.handle();
    wait_leader(&handle);
    for c in commands(30) {
        handle.propose_wait(c, Duration::from_secs(5)).expect("applied");
    }
    assert!(wait_until(Duration::from_secs(5), || handle.status().snapshot.taken >= 1));
    node.shutdown().expect("shutdown");
    let files = snapshot_files(&opts.snapshot_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let path = opts.snapshot_dir.join(&files[0]);
    // A flipped byte: refused naming the file, not started from a partial state.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let error = RaftNode::start(opts.clone(), Log::default()).expect_err("corrupt snapshot");
    assert!(matches!(error, DriverError::Snapshot(_)) && error.to_string().contains(&files[0]), "{error}");
    std::fs::remove_file(&path).unwrap();
    let error = RaftNode::start(opts, Log::default()).expect_err("missing snapshot");
    assert!(error.to_string().contains(&files[0]), "{error}");
}

/// Free loopback addresses for `n` nodes (bound, then released).
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

#[test]
fn a_follower_that_missed_compacted_entries_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs = free_addrs(3);
    let opts = |id: u64| {
        let peers = (1..=3).filter(|&p| p != id).map(|p| (p, addrs[p as usize - 1])).collect();
        let mut o = NodeOptions::new(id, 9, addrs[id as usize - 1], peers, dir.path().join(format!("n{id}")));
        o.timing = Timing { tick_ms: 10, heartbeat_ticks: 1, election_ticks: 10 };
        o.snapshot = SnapshotPolicy { every_entries: 100, every_bytes: 0, trailing_entries: 5 };
        o.seed = Some(id);
        o
    };
    let mut nodes: Vec<Option<RaftNode<Log>>> =
        (1..=3).map(|id| Some(RaftNode::start(opts(id), Log::default()).expect("start"))).collect();
    let leader = || -> Option<usize> {
        (0..3).find(|&i| nodes[i].as_ref().is_some_and(|n| n.handle().status().role == Role::Leader))
    };
    assert!(wait_until(Duration::from_secs(10), || leader().is_some()), "no leader");
    let l = leader().unwrap();
    let down = (l + 1) % 3;
    nodes[down].take().unwrap().shutdown().expect("shutdown");
    let handle = nodes[l].as_ref().unwrap().handle();
    for c in commands(1000) {
        handle.propose_wait(c, Duration::from_secs(5)).expect("applied");
    }
    assert!(wait_until(Duration::from_secs(5), || handle.status().first_index > 500), "{:?}", handle.status());
    let node = RaftNode::start(opts(down as u64 + 1), Log::default()).expect("restart");
    let follower = node.handle();
    assert!(
        wait_until(Duration::from_secs(10), || follower
            .inspect(|log: &Log| log.0 == commands(1000), Duration::from_secs(1))
            .unwrap_or(false)),
        "follower {:?}",
        follower.status()
    );
    let status = follower.status();
    assert_eq!(status.snapshot.installed, 1, "{status:?}");
    assert!(handle.transport_stats().snapshots_served >= 1);
    // It follows on from the snapshot with the log.
    handle.propose_wait(Bytes::from_static(b"after"), Duration::from_secs(5)).expect("applied");
    assert!(wait_until(Duration::from_secs(5), || follower
        .inspect(|log: &Log| log.0.len() == 1001, Duration::from_secs(1))
        .unwrap_or(false)));
    drop(node);
}

#[test]
fn snapshot_policy_is_due_at_either_bound_and_never_when_off() {
    let p = SnapshotPolicy { every_entries: 10, every_bytes: 1000, trailing_entries: 0 };
    assert!(!p.is_due(9, 999));
    assert!(p.is_due(10, 0));
    assert!(p.is_due(0, 1000));
    let off = SnapshotPolicy { every_entries: 0, every_bytes: 0, trailing_entries: 0 };
    assert!(!off.is_due(u64::MAX, u64::MAX));
    let by_bytes = SnapshotPolicy { every_entries: 0, every_bytes: 5, trailing_entries: 0 };
    assert!(!by_bytes.is_due(1_000_000, 4) && by_bytes.is_due(1, 5));
}

/// Membership changes on real threads and sockets: a node that starts empty
/// joins a one-node cluster as a learner (its address travels with the
/// change), catches up, is promoted; leadership is handed to it; the first
/// node removes itself and is refused by the handshake from then on.
#[test]
fn a_cluster_grows_hands_over_and_shrinks() {
    use crate::members::MemberAddr;
    use raft_core::MembershipChange;
    let wait = Duration::from_secs(10);
    let dir1 = tempfile::tempdir().expect("tempdir");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let n1 = RaftNode::start(options(dir1.path(), true), Log::default()).expect("start 1");
    let h1 = n1.handle();
    wait_leader(&h1);
    for i in 0..20 {
        h1.propose_wait(Bytes::from(format!("a{i}")), wait).expect("applied");
    }
    // Node 2 joins: no configuration of its own, it knows where node 1 is.
    let mut o2 = options(dir2.path(), true);
    o2.id = 2;
    o2.voters = Vec::new();
    o2.peers = vec![(1, h1.peer_addr())];
    let n2 = RaftNode::start(o2, Log::default()).expect("start 2");
    let h2 = n2.handle();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h2.status().term, 0, "a joining node never campaigns");
    // Promoting a node that is not a learner yet is refused, and says so.
    let err = h1.change_membership(MembershipChange::Promote(2), None, wait).unwrap_err();
    assert_eq!(err, AdminError::Refused(raft_core::MembershipError::UnknownNode { id: 2 }));
    assert!(!err.may_have_taken_effect());

    let addr = MemberAddr { peer: h2.peer_addr(), service: None };
    let m = h1.change_membership(MembershipChange::AddLearner(2), Some((2, addr)), wait).expect("learner added");
    assert_eq!((m.voters.clone(), m.learners.clone()), (vec![1], vec![2]));
    assert!(wait_until(wait, || h2.status().applied_index == h1.status().applied_index), "learner caught up");
    assert_eq!(h2.inspect(|log: &Log| log.0.len(), wait), Some(20));
    assert_eq!(h2.status().membership.learners, vec![2]);
    // The learner's ack may still be on its way: promotion is retryable until it lands.
    let mut promoted = h1.change_membership(MembershipChange::Promote(2), None, wait);
    let deadline = Instant::now() + wait;
    while let Err(e) = &promoted {
        assert!(matches!(e, AdminError::Refused(raft_core::MembershipError::LearnerBehind { .. })), "{e}");
        assert!(e.is_retryable() && Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
        promoted = h1.change_membership(MembershipChange::Promote(2), None, wait);
    }
    let m = promoted.expect("promoted");
    assert_eq!(m.voters, vec![1, 2]);
    assert!(wait_until(wait, || h2.status().membership.voters == vec![1, 2]));

    h1.transfer_leadership(2, wait).expect("transferred");
    assert!(wait_until(wait, || h2.status().role == Role::Leader));
    h2.propose_wait(Bytes::from_static(b"under 2"), wait).expect("applied under the new leader");

    // 2 removes 1; 1 is disconnected and refused from then on.
    let m = h2.change_membership(MembershipChange::Remove(1), None, wait).expect("removed");
    assert_eq!(m.voters, vec![2]);
    assert!(wait_until(wait, || h2.transport_stats().handshake_rejected > 0), "node 1 refused by the handshake");
    h2.propose_wait(Bytes::from_static(b"alone"), wait).expect("a one-voter cluster commits");
    assert_eq!(h2.inspect(|log: &Log| log.0.len(), wait), Some(22));
    // A restart keeps the configuration (it is in the log).
    drop(n1);
    n2.shutdown().expect("shutdown");
    let mut o2 = options(dir2.path(), true);
    o2.id = 2;
    o2.voters = Vec::new();
    let n2 = RaftNode::start(o2, Log::default()).expect("restart 2");
    let h2 = n2.handle();
    wait_leader(&h2);
    assert_eq!(h2.status().membership.voters, vec![2]);
}
