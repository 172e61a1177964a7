//! A cluster of real `raft_core::Node`s driven by explicit choices instead of a clock and a random
//! number generator: which message to deliver, drop or duplicate, which node ticks, which disk
//! completes its fsync, who crashes (and how much of its unsynced writes survive), who restarts,
//! proposes, campaigns, reads, snapshots or changes the membership.
//!
//! The seeded simulator ([`crate::sim`]) samples timed runs; this model makes every choice a
//! caller's, so a fuzzer (`fuzz/`, target `core_events`) can steer it byte by byte and a search
//! can enumerate it. Every step runs the simulator's [`Safety`] checks on the stepped node, so
//! both judge a run by the same invariants; on top of them it checks what only the caller's view
//! can: a read is answered once and only at an applied index, and every image of the state at
//! an index is the same, whether built entry by entry or installed from a snapshot.
//!
//! The state machine is a fold of the applied entries' fingerprints (no store): what matters here
//! is the order the core applies entries in, not what they do.

use std::collections::{BTreeMap, BTreeSet};

use raft_core::{
    Action, Bytes, Config, Entry, EntryKind, Event, Index, MembershipChange, Message, Node, NodeId, SnapshotMeta,
};

use crate::disk::SimDisk;
use crate::invariants::{Safety, Violation, fingerprint};

/// One thing that happens next. Indexes into the network name a message in flight
/// ([`Cluster::in_flight`]); node ids outside the cluster and indexes past the end are no-ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Deliver (and remove) the `i`-th message in flight.
    Deliver(usize),
    /// Lose the `i`-th message in flight.
    Drop(usize),
    /// Deliver a copy of the `i`-th message in flight, keeping it in flight.
    Duplicate(usize),
    /// A node's clock ticks.
    Tick(NodeId),
    /// A node's clock ticks until a tick makes it send or write something: its next election or
    /// heartbeat timeout fires (at most 64 ticks). The ticks before it change only the node's own
    /// counters, so a search can take this one choice instead of every way of spreading them.
    Timeout(NodeId),
    /// A node's fsync of every write issued so far completes.
    Sync(NodeId),
    /// A client proposes a fresh command to a node.
    Propose(NodeId),
    /// A node campaigns (as an operator's or a transfer's `Campaign`).
    Campaign(NodeId),
    /// A node crashes; the first `survive` of its unsynced writes reached the disk anyway.
    Crash {
        /// Which node.
        node: NodeId,
        /// How many of its unsynced writes (oldest first) survive.
        survive: usize,
    },
    /// A crashed node restarts from its disk.
    Restart(NodeId),
    /// A client asks a node for a linearizable read.
    Read(NodeId),
    /// A node's driver snapshots its state machine at its applied index.
    TakeSnapshot(NodeId),
    /// A node's pending snapshot transfer ends: installed if `ok` and the source still holds the
    /// image, aborted otherwise.
    FinishInstall {
        /// Which node.
        node: NodeId,
        /// Whether the transfer succeeded.
        ok: bool,
    },
    /// An operator asks a node for a membership change.
    Change(NodeId, MembershipChange),
    /// An operator asks a node to transfer its leadership.
    Transfer {
        /// The node asked.
        node: NodeId,
        /// The intended leader.
        to: NodeId,
    },
}

/// A message on the network: sender, receiver and the message.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// One member: a core (or none while crashed), its disk and its driver's state.
#[derive(Clone, Debug)]
struct Member {
    config: Config,
    node: Option<Node>,
    disk: SimDisk,
    /// Bumped by every crash.
    incarnation: u64,
    /// The state machine: (applied index, fold of the applied entries' fingerprints).
    state: (Index, u64),
    /// The snapshot transfer the core asked for: source and snapshot.
    installing: Option<(NodeId, SnapshotMeta)>,
    /// Reads asked of this node and not yet answered.
    reads: BTreeSet<u64>,
}

/// The cluster and everything a checker needs to judge it.
#[derive(Clone)]
pub struct Cluster {
    members: BTreeMap<NodeId, Member>,
    /// Node ids are `1..=last_id`.
    last_id: NodeId,
    net: Vec<InFlight>,
    safety: Safety,
    /// The state image at each index anyone built one, and who built it first.
    images: BTreeMap<Index, (u64, NodeId)>,
    /// Commands proposed so far (each one's data is unique).
    proposed: u64,
    /// Reads asked so far (their contexts are unique).
    reads: u64,
    /// Seeds each start and restart's node differently but deterministically.
    seed: u64,
    /// Steps taken.
    steps: u64,
}

impl Cluster {
    /// Nodes `1..=voters` form the first configuration; `voters + 1..=voters + spares` start empty
    /// (they join when a membership change adds them). Every node gets `template`'s settings.
    pub fn new(template: &Config, voters: u64, spares: u64, seed: u64) -> Cluster {
        let ids: Vec<NodeId> = (1..=voters).collect();
        let mut c = Cluster {
            members: BTreeMap::new(),
            last_id: voters + spares,
            net: Vec::new(),
            safety: Safety::new(),
            images: BTreeMap::new(),
            proposed: 0,
            reads: 0,
            seed,
            steps: 0,
        };
        for id in 1..=voters + spares {
            let voters = if id <= voters { ids.clone() } else { Vec::new() };
            let config = Config { id, voters, ..template.clone() };
            let node = Node::new(config.clone(), c.next_seed()).expect("a valid template");
            let member = Member {
                config,
                node: Some(node),
                disk: SimDisk::new(),
                incarnation: 0,
                state: (0, 0),
                installing: None,
                reads: BTreeSet::new(),
            };
            c.members.insert(id, member);
        }
        c
    }

    fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.seed
    }

    /// The messages in flight, in the order [`Choice`] indexes them.
    pub fn in_flight(&self) -> &[InFlight] {
        &self.net
    }

    /// Every node id, spares included.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// The running core of `id` (`None` while it is crashed or not a member).
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.members.get(&id)?.node.as_ref()
    }

    /// Writes node `id` issued that its disk has not synced (0 for an unknown node).
    pub fn pending_writes(&self, id: NodeId) -> usize {
        self.members.get(&id).map_or(0, |m| m.disk.pending_writes())
    }

    /// Everything that determines what the cluster does next, as text: each member (core, disk,
    /// state machine, pending install, open reads) and the counters that shape later commands and
    /// restarts. Not the messages in flight (see [`Cluster::in_flight`]) nor the checker's
    /// knowledge. Used by exhaustive exploration to fingerprint states.
    pub fn state_text(&self) -> String {
        format!("{:?} {} {} {}", self.members, self.proposed, self.reads, self.seed)
    }

    /// Reverses the order of the messages in flight (for tests of order-blind fingerprints).
    #[cfg(test)]
    pub(crate) fn reverse_in_flight(&mut self) {
        self.net.reverse();
    }

    /// Entries known committed so far.
    pub fn committed(&self) -> Index {
        self.safety.committed_len()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Takes one choice; a violated invariant ends the run with the violation.
    pub fn apply(&mut self, choice: Choice) -> Result<(), Violation> {
        match choice {
            Choice::Deliver(i) | Choice::Duplicate(i) if i < self.net.len() => {
                let m = if matches!(choice, Choice::Deliver(_)) { self.net.remove(i) } else { self.net[i].clone() };
                self.step(m.to, Event::Message { from: m.from, message: m.message })
            }
            Choice::Drop(i) if i < self.net.len() => {
                self.net.remove(i);
                Ok(())
            }
            Choice::Deliver(_) | Choice::Duplicate(_) | Choice::Drop(_) => Ok(()),
            Choice::Tick(id) => self.step(id, Event::Tick),
            Choice::Timeout(id) => {
                for _ in 0..64 {
                    let before = (self.net.len(), self.pending_writes(id));
                    self.step(id, Event::Tick)?;
                    if self.node(id).is_none() || (self.net.len(), self.pending_writes(id)) != before {
                        break;
                    }
                }
                Ok(())
            }
            Choice::Sync(id) => self.sync(id),
            Choice::Propose(id) => {
                self.proposed += 1;
                let data = Bytes::from(self.proposed.to_le_bytes().to_vec());
                self.step(id, Event::Propose { data })
            }
            Choice::Campaign(id) => self.step(id, Event::Campaign),
            Choice::Crash { node, survive } => self.crash(node, survive),
            Choice::Restart(id) => self.restart(id),
            Choice::Read(id) => {
                let Some(m) = self.members.get_mut(&id).filter(|m| m.node.is_some()) else { return Ok(()) };
                self.reads += 1;
                m.reads.insert(self.reads);
                let ctx = self.reads;
                self.step(id, Event::ReadIndex { ctx })
            }
            Choice::TakeSnapshot(id) => self.take_snapshot(id),
            Choice::FinishInstall { node, ok } => self.finish_install(node, ok),
            Choice::Change(id, change) => self.step(id, Event::ChangeMembership { change, context: None }),
            Choice::Transfer { node, to } => self.step(node, Event::TransferLeadership { to }),
        }
    }

    /// Steps node `id` (if it runs) and carries out its actions as a driver would.
    fn step(&mut self, id: NodeId, event: Event) -> Result<(), Violation> {
        let last_id = self.last_id;
        let Some(m) = self.members.get_mut(&id) else { return Ok(()) };
        let Some(node) = m.node.as_mut() else { return Ok(()) };
        self.steps += 1;
        let actions = node.step(event);
        self.safety.after_step(id, m.incarnation, node, &m.disk, &actions)?;
        for action in actions {
            match action {
                Action::Send { to, message } if (1..=last_id).contains(&to) => {
                    self.net.push(InFlight { from: id, to, message });
                }
                Action::Persist(p) => m.disk.write(p),
                Action::Apply { entries } => apply(id, &mut m.state, &entries)?,
                Action::InstallSnapshot { from, meta } => m.installing = Some((from, meta)),
                Action::ReadReady { ctx, index } => {
                    let applied = m.node.as_ref().map_or(0, Node::applied_index);
                    if !m.reads.remove(&ctx) {
                        return fail("read", format!("node {id} released read {ctx}, not open"));
                    }
                    if index > applied || m.state.0 < index {
                        let detail = format!("node {id} released read {ctx} at {index} with only {applied} applied");
                        return fail("read", detail);
                    }
                }
                Action::ReadRejected { ctx, .. } if !m.reads.remove(&ctx) => {
                    return fail("read", format!("node {id} rejected read {ctx}, not open"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn sync(&mut self, id: NodeId) -> Result<(), Violation> {
        let Some(m) = self.members.get_mut(&id).filter(|m| m.node.is_some()) else { return Ok(()) };
        let Some(seq) = m.disk.sync(None) else { return Ok(()) };
        self.safety.after_sync(id, &m.disk)?;
        self.step(id, Event::Persisted { seq })
    }

    fn crash(&mut self, id: NodeId, survive: usize) -> Result<(), Violation> {
        let Some(m) = self.members.get_mut(&id).filter(|m| m.node.is_some()) else { return Ok(()) };
        m.disk.sync(Some(survive));
        m.disk.crash();
        m.node = None;
        m.incarnation += 1;
        m.installing = None;
        m.reads.clear();
        self.safety.after_sync(id, &m.disk)
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        if self.members.get(&id).is_none_or(|m| m.node.is_some()) {
            return Ok(());
        }
        let seed = self.next_seed();
        let m = self.members.get_mut(&id).expect("member");
        self.safety.on_restart(id, m.disk.durable());
        let node = match Node::restore(m.config.clone(), m.disk.durable().clone(), seed) {
            Ok(node) => node,
            Err(e) => return fail("restart", format!("node {id} cannot restore from its disk: {e}")),
        };
        // The state machine restarts from the snapshot the durable log follows.
        let base = m.disk.durable().snapshot.as_ref().map_or(0, |s| s.last_included_index);
        m.state = match m.disk.image(base) {
            Some(image) => decode_image(image),
            None if base == 0 => (0, 0),
            None => return fail("restart", format!("node {id}'s disk lost the image of snapshot {base}")),
        };
        m.node = Some(node);
        Ok(())
    }

    fn take_snapshot(&mut self, id: NodeId) -> Result<(), Violation> {
        let Some(m) = self.members.get_mut(&id) else { return Ok(()) };
        let Some(node) = m.node.as_ref() else { return Ok(()) };
        let applied = node.applied_index();
        if node.installing_snapshot().is_some() || node.snapshot_meta_at(applied).is_none() || applied == 0 {
            return Ok(());
        }
        let image = encode_image(m.state);
        m.disk.store_image(applied, image);
        let state = m.state;
        self.same_state(id, state)?;
        self.step(id, Event::SnapshotTaken { index: applied })
    }

    fn finish_install(&mut self, id: NodeId, ok: bool) -> Result<(), Violation> {
        let Some(m) = self.members.get(&id).filter(|m| m.node.is_some()) else { return Ok(()) };
        let Some((from, meta)) = m.installing.clone() else { return Ok(()) };
        let index = meta.last_included_index;
        let image = self.members.get(&from).and_then(|f| f.disk.image(index).cloned()).filter(|_| ok);
        let m = self.members.get_mut(&id).expect("member");
        m.installing = None;
        let Some(image) = image else { return self.step(id, Event::SnapshotAborted) };
        let state = decode_image(&image);
        if state.0 != index {
            return fail("snapshot", format!("node {id} fetched snapshot {index} holding state {}", state.0));
        }
        m.disk.store_image(index, image);
        m.state = state;
        self.same_state(id, state)?;
        self.step(id, Event::SnapshotInstalled { meta })
    }

    /// Every image of the state at an index is the same.
    fn same_state(&mut self, id: NodeId, (index, hash): (Index, u64)) -> Result<(), Violation> {
        let first = *self.images.entry(index).or_insert((hash, id));
        if first.0 != hash {
            return fail(
                "state machine divergence",
                format!("node {id}'s state at {index} differs from {}'s", first.1),
            );
        }
        Ok(())
    }
}

/// Applies entries to a fingerprint-fold state machine, which must see them in order.
fn apply(id: NodeId, state: &mut (Index, u64), entries: &[Entry]) -> Result<(), Violation> {
    for e in entries {
        if e.index != state.0 + 1 {
            return fail("apply order", format!("node {id} applies {} after {}", e.index, state.0));
        }
        state.0 = e.index;
        if e.kind == EntryKind::Normal {
            state.1 = state.1.rotate_left(5) ^ fingerprint(e);
        }
    }
    Ok(())
}

fn encode_image((index, hash): (Index, u64)) -> Bytes {
    let mut v = index.to_le_bytes().to_vec();
    v.extend_from_slice(&hash.to_le_bytes());
    Bytes::from(v)
}

fn decode_image(image: &[u8]) -> (Index, u64) {
    let word = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().expect("16-byte image"));
    (word(0), word(8))
}

fn fail<T>(rule: &'static str, detail: String) -> Result<T, Violation> {
    Err(Violation { property: rule, detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the cluster until it commits, choosing only by a simple round robin: ticks until an
    /// election, then deliveries and fsyncs in order.
    fn settle(c: &mut Cluster, rounds: usize) {
        for _ in 0..rounds {
            for id in c.ids() {
                c.apply(Choice::Tick(id)).expect("tick");
                c.apply(Choice::Sync(id)).expect("sync");
            }
            while !c.in_flight().is_empty() {
                c.apply(Choice::Deliver(0)).expect("deliver");
                for id in c.ids() {
                    c.apply(Choice::Sync(id)).expect("sync");
                }
            }
        }
    }

    #[test]
    fn commits_snapshots_installs_and_survives_a_crash() {
        let mut template = Config::new(1, vec![1]);
        template.election_ticks = 4;
        template.heartbeat_ticks = 1;
        template.snapshot_trailing_entries = 0;
        let mut c = Cluster::new(&template, 3, 0, 1);
        settle(&mut c, 20);
        let leader = c
            .ids()
            .into_iter()
            .find(|&id| c.node(id).is_some_and(|n| n.role() == raft_core::Role::Leader))
            .expect("a leader");
        for _ in 0..5 {
            c.apply(Choice::Propose(leader)).expect("propose");
        }
        c.apply(Choice::Crash { node: 3, survive: 0 }).expect("crash");
        settle(&mut c, 3);
        assert!(c.committed() >= 6, "a no-op and five commands commit: {}", c.committed());
        c.apply(Choice::TakeSnapshot(leader)).expect("snapshot");
        assert!(c.node(leader).and_then(Node::snapshot).is_some(), "the leader took its snapshot");
        c.apply(Choice::Restart(3)).expect("restart");
        settle(&mut c, 3);
        // Node 3 missed entries the leader compacted: it must install the snapshot.
        c.apply(Choice::FinishInstall { node: 3, ok: true }).expect("install");
        settle(&mut c, 3);
        assert!(c.node(3).and_then(Node::snapshot).is_some(), "node 3 caught up by the snapshot");
        assert_eq!(c.node(3).map(Node::applied_index), c.node(leader).map(Node::applied_index));
    }

    #[test]
    fn a_divergent_state_image_is_caught() {
        let template = Config::new(1, vec![1]);
        let mut c = Cluster::new(&template, 1, 0, 1);
        c.same_state(1, (5, 7)).expect("first image");
        let v = c.same_state(2, (5, 8)).expect_err("a different image at the same index");
        assert_eq!(v.property, "state machine divergence");
    }
}
