//! `core_events`: a cluster of real cores (three voters and up to two spares) under any order of
//! deliveries, drops, duplicates, ticks, fsyncs, crashes that keep any prefix of the unsynced
//! writes, restarts, proposals, campaigns, reads, snapshots and their transfers, membership changes
//! and leadership transfers, each picked by the fuzzer's bytes. After every step the simulator's
//! safety checks run ([`raft_sim::cluster`]); the target panics on the first violation.

use arbitrary::{Result, Unstructured};
use raft_core::{Config, MembershipChange, NodeId};
use raft_sim::cluster::{Choice, Cluster};

/// The most steps one input may take (keeps one execution around a millisecond).
const MAX_STEPS: u64 = 4_000;

/// Runs one input; returns the entries the cluster committed (how deep the input reached).
pub fn run(data: &[u8]) -> u64 {
    let mut u = Unstructured::new(data);
    let Ok((template, spares)) = settings(&mut u) else { return 0 };
    let mut cluster = Cluster::new(&template, 3, spares, 0x5eed);
    let last = 3 + spares;
    while !u.is_empty() && cluster.steps() < MAX_STEPS {
        let Ok(choice) = choice(&mut u, &cluster, last) else { break };
        if let Err(v) = cluster.apply(choice.clone()) {
            panic!("{} after {choice:?} (step {}): {}", v.property, cluster.steps(), v.detail);
        }
    }
    cluster.committed()
}

/// The protocol settings the input runs with: the same ranges the seed sweep varies, with short
/// timeouts so that few ticks reach an election.
fn settings(u: &mut Unstructured<'_>) -> Result<(Config, u64)> {
    let mut c = Config::new(1, vec![1]);
    let [flags, more]: [u8; 2] = u.arbitrary()?;
    c.pre_vote = flags & 1 == 0;
    c.check_quorum = flags & 2 == 0;
    c.max_entries_per_msg = [1, 2, 8, 64][usize::from(flags >> 2 & 3)];
    c.max_inflight_msgs = [1, 2, 16, 16][usize::from(flags >> 4 & 3)];
    c.election_ticks = 3 + u32::from(more & 3);
    c.heartbeat_ticks = 1;
    c.snapshot_trailing_entries = u64::from(more >> 2 & 3);
    Ok((c, u64::from(flags >> 6 & 1) + u64::from(flags >> 7)))
}

/// One choice from two bytes (an opcode and its argument; a membership change reads two more), so
/// that inputs are easy to write by hand and a mutated byte changes one choice.
fn choice(u: &mut Unstructured<'_>, cluster: &Cluster, last: NodeId) -> Result<Choice> {
    let [op, arg]: [u8; 2] = u.arbitrary()?;
    let node = 1 + NodeId::from(arg) % last;
    let message = usize::from(arg) % cluster.in_flight().len().max(1);
    Ok(match op % 24 {
        // Deliveries dominate, as on a real network.
        0..=6 => Choice::Deliver(message),
        7 => Choice::Drop(message),
        8 => Choice::Duplicate(message),
        9..=11 => Choice::Tick(node),
        12..=13 => Choice::Sync(node),
        14..=15 => Choice::Propose(node),
        16 => Choice::Campaign(node),
        17 => Choice::Crash { node, survive: usize::from(arg >> 4 & 3) },
        18 => Choice::Restart(node),
        19 => Choice::Read(node),
        20 => Choice::TakeSnapshot(node),
        21 => Choice::FinishInstall { node, ok: arg & 0x80 == 0 },
        22 => Choice::Change(node, change(u, last)?),
        _ => Choice::Transfer { node, to: 1 + NodeId::from(arg >> 4) % last },
    })
}

/// Any change, sensible or not (the core must refuse the ones it cannot make), over ids `0..=last`.
fn change(u: &mut Unstructured<'_>, last: NodeId) -> Result<MembershipChange> {
    let [kind, id]: [u8; 2] = u.arbitrary()?;
    let id = NodeId::from(id) % (last + 1);
    Ok(match kind % 4 {
        0 => MembershipChange::AddLearner(id),
        1 => MembershipChange::Promote(id),
        2 => MembershipChange::Remove(id),
        _ => {
            let set = |u: &mut Unstructured<'_>| -> Result<Vec<NodeId>> {
                let bits: u8 = u.arbitrary()?;
                Ok((1..=last).filter(|i| bits >> i & 1 == 1).collect())
            };
            MembershipChange::Set { voters: set(u)?, learners: set(u)? }
        }
    })
}
