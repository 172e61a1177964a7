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
    /// The base of every node's seed ([`node_seed`]).
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
            let node = Node::new(config.clone(), node_seed(seed, id, 0)).expect("a valid template");
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
        let text = format!("{:?} {} {} {}", self.members, self.proposed, self.reads, self.seed);
        without_stats(&text)
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

    /// The script lines that do what `choice` will do from this state (see [`script`]); a
    /// timeout's ticks and a crash's restart are written by the caller, which sees their effect.
    fn script_lines(&self, choice: &Choice) -> String {
        let up = |id: &NodeId| self.node(*id).is_some();
        // A message in flight as the scenario language names it: its receiver and its place
        // among the messages queued for that receiver (both keep send order).
        let queued = |i: usize| {
            let to = self.net[i].to;
            (to, self.net[..i].iter().filter(|m| m.to == to).count())
        };
        let line = match choice {
            Choice::Deliver(i) | Choice::Drop(i) | Choice::Duplicate(i) if *i < self.net.len() => {
                let (to, k) = queued(*i);
                match choice {
                    // A message reaching a crashed node is lost.
                    Choice::Deliver(_) if !up(&to) => format!("drop-one {to} {k}"),
                    Choice::Deliver(_) => format!("deliver-one {to} {k}"),
                    Choice::Drop(_) => format!("drop-one {to} {k}"),
                    _ if !up(&to) => String::new(),
                    _ => format!("duplicate-one {to} {k}"),
                }
            }
            Choice::Tick(id) if up(id) => format!("tick {id}"),
            Choice::Sync(id) if up(id) => format!("persist {id}"),
            Choice::Propose(id) if up(id) => format!("propose {id} c{}", self.proposed + 1),
            Choice::Campaign(id) if up(id) => format!("campaign {id}"),
            Choice::Crash { node, .. } if up(node) => {
                format!("# {node} crashes (it restarts where the path restarts it)")
            }
            Choice::Restart(id) if self.members.contains_key(id) && !up(id) => format!("restart {id}"),
            Choice::Read(id) if up(id) => format!("read {id} {}", self.reads + 1),
            Choice::TakeSnapshot(id) => match self.node(*id) {
                Some(n)
                    if n.installing_snapshot().is_none()
                        && n.applied_index() > 0
                        && n.snapshot_meta_at(n.applied_index()).is_some() =>
                {
                    format!("snapshot {id}")
                }
                _ => String::new(),
            },
            Choice::FinishInstall { node, ok } if up(node) => match &self.members[node].installing {
                Some((from, meta)) => {
                    let held = self.members.get(from).is_some_and(|f| f.disk.image(meta.last_included_index).is_some());
                    if *ok && held { format!("install {node}") } else { format!("abort-install {node}") }
                }
                None => String::new(),
            },
            Choice::Change(id, change) if up(id) => match change {
                MembershipChange::AddLearner(to) => format!("add-learner {id} {to}"),
                MembershipChange::Promote(to) => format!("promote {id} {to}"),
                MembershipChange::Remove(to) => format!("remove {id} {to}"),
                MembershipChange::Set { voters, learners } => {
                    let list = crate::scenario::ids_text;
                    format!("set-voters {id} {} learners={}", list(voters), list(learners))
                }
            },
            Choice::Transfer { node, to } if up(node) => format!("transfer {node} {to}"),
            _ => String::new(),
        };
        if line.is_empty() { line } else { line + "\n" }
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
        let m = self.members.get_mut(&id).expect("member");
        let seed = node_seed(self.seed, id, m.incarnation);
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

/// The scenario-language script ([`crate::scenario`]) that replays `path` on a cluster of base
/// seed 0 built from `template`, `voters` and `spares` as [`Cluster::new`] builds it, so that
/// `raft-sim scenario FILE` steps the same cores through the same events. The script ends with
/// an `expect` line per running node (role, term, vote, commit, applied, last index), so a replay
/// that went elsewhere fails loudly instead of passing quietly; a path that ends in a violation
/// ends its script there, and the replay fails at that line with the same safety violation
/// (the checks only this model makes, of reads and state images, are named in a comment).
///
/// Fails if `template` has a setting the scenario language cannot set.
pub fn script(template: &Config, voters: u64, spares: u64, path: &[Choice]) -> Result<String, String> {
    let options = format!(
        "pre-vote={} check-quorum={} election={} heartbeat={} max-entries={} inflight={} trailing={} lease={} drift={}",
        template.pre_vote,
        template.check_quorum,
        template.election_ticks,
        template.heartbeat_ticks,
        template.max_entries_per_msg,
        template.max_inflight_msgs,
        template.snapshot_trailing_entries,
        template.lease_reads,
        template.max_clock_drift_ticks,
    );
    // What the scenario language builds from those options must be the template itself.
    let words: Vec<&str> = options.split_whitespace().collect();
    let parsed = crate::scenario::template(voters, &words)?;
    if parsed != (Config { id: 1, voters: (1..=voters).collect(), ..template.clone() }) {
        return Err("the template has settings the scenario language cannot set".into());
    }
    let mut c = Cluster::new(template, voters, spares, 0);
    let mut out = format!("add-nodes {voters} {options}\n");
    for id in voters + 1..=voters + spares {
        out.push_str(&format!("join {id}\n"));
    }
    for (n, choice) in path.iter().enumerate() {
        if let Choice::Crash { node, survive } = choice {
            if *survive > 0 && c.pending_writes(*node) > 0 {
                return Err(format!("choice {}: a crash that keeps some unsynced writes", n + 1));
            }
        }
        let (lines, steps) = (c.script_lines(choice), c.steps);
        out.push_str(&lines);
        let result = c.apply(choice.clone());
        if let Choice::Timeout(id) = choice {
            if c.steps > steps {
                out.push_str(&format!("tick {id} {}\n", c.steps - steps));
            }
        }
        if let Choice::Crash { node, .. } = choice {
            if !lines.is_empty() && (result.is_err() || n + 1 == path.len()) {
                out.push_str(&format!("restart {node}\n"));
            }
        }
        if let Err(v) = result {
            out.push_str(&format!("# choice {} violates {}: {}\n", n + 1, v.property, v.detail));
            return Ok(out);
        }
    }
    for (id, m) in &c.members {
        let Some(node) = &m.node else { continue };
        out.push_str(&format!(
            "expect {id} role={} term={} vote={} commit={} applied={} last={}\n",
            node.role(),
            node.term(),
            node.hard_state().vote.map_or("none".into(), |v| v.to_string()),
            node.commit_index(),
            node.applied_index(),
            node.last_index()
        ));
    }
    Ok(out)
}

/// `text` without the cores' [`raft_core::Stats`] (`stats: Stats { .. }`): counters of what a node
/// dropped or ignored, which no decision reads, so two states that differ only there behave alike.
fn without_stats(text: &str) -> String {
    const FIELD: &str = ", stats: Stats {";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(FIELD) {
        out.push_str(&rest[..at]);
        // Stats holds only numbers: its closing brace is the first one after it opens.
        let end = rest[at..].find('}').map_or(rest.len(), |e| at + e + 1);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The seed of node `id`'s random generator in its `incarnation` (0 at the first start, one more
/// after each crash), from a cluster's `base` seed. The scenario language seeds its nodes the
/// same way with base 0, so a path found on a [`Cluster`] of base 0 replays there exactly
/// (see [`script`]): a node's seed decides its randomised election timeouts.
pub fn node_seed(base: u64, id: NodeId, incarnation: u64) -> u64 {
    base.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.wrapping_add(incarnation.wrapping_mul(1000))
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
        let follower = if leader == 3 { 2 } else { 3 };
        c.apply(Choice::Crash { node: follower, survive: 0 }).expect("crash");
        settle(&mut c, 3);
        assert!(c.committed() >= 6, "a no-op and five commands commit: {}", c.committed());
        c.apply(Choice::TakeSnapshot(leader)).expect("snapshot");
        assert!(c.node(leader).and_then(Node::snapshot).is_some(), "the leader took its snapshot");
        c.apply(Choice::Restart(follower)).expect("restart");
        settle(&mut c, 3);
        // The follower missed entries the leader compacted: it must install the snapshot.
        c.apply(Choice::FinishInstall { node: follower, ok: true }).expect("install");
        settle(&mut c, 3);
        assert!(c.node(follower).and_then(Node::snapshot).is_some(), "the follower caught up by the snapshot");
        assert_eq!(c.node(follower).map(Node::applied_index), c.node(leader).map(Node::applied_index));
    }

    /// A path of `len` choices drawn from every kind, each enabled where it is taken (a
    /// xorshift generator from `seed`), on a cluster of 3 voters and one spare.
    fn random_path(template: &Config, seed: u64, len: usize) -> (Vec<Choice>, Cluster) {
        let mut c = Cluster::new(template, 3, 1, 0);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        let mut path = Vec::new();
        while path.len() < len {
            let node = 1 + next(4);
            let flying = c.in_flight().len() as u64;
            let choice = match next(24) {
                0..=9 if flying > 0 => Choice::Deliver(next(flying) as usize),
                20 if flying > 0 => Choice::Drop(next(flying) as usize),
                21 if flying > 0 => Choice::Duplicate(next(flying) as usize),
                0..=9 | 20 | 21 | 10 => Choice::Tick(node),
                11 | 12 => Choice::Sync(node),
                13 => Choice::Timeout(node),
                14 => {
                    let leader =
                        c.ids().into_iter().find(|&id| c.node(id).is_some_and(|n| n.role() == raft_core::Role::Leader));
                    Choice::Propose(leader.unwrap_or(node))
                }
                15 => match c.ids().into_iter().find(|&id| c.node(id).is_none()) {
                    Some(down) => Choice::Restart(down),
                    None if next(2) == 0 => Choice::Crash { node, survive: 0 },
                    None => Choice::Campaign(node),
                },
                16 => Choice::Read(node),
                17 => Choice::TakeSnapshot(node),
                18 => Choice::FinishInstall { node, ok: next(2) == 0 },
                _ => match next(4) {
                    0 => Choice::Change(node, MembershipChange::AddLearner(4)),
                    1 => Choice::Change(node, MembershipChange::Promote(4)),
                    2 => Choice::Change(node, MembershipChange::Remove(4)),
                    _ => Choice::Transfer { node, to: 1 + next(3) },
                },
            };
            c.apply(choice.clone()).expect("the real core stays safe");
            path.push(choice);
        }
        (path, c)
    }

    #[test]
    fn a_path_replays_exactly_as_a_scenario_script() {
        let mut template = Config::new(1, vec![1]);
        (template.election_ticks, template.heartbeat_ticks, template.snapshot_trailing_entries) = (3, 1, 0);
        let mut kinds = BTreeSet::new();
        let mut committed = 0;
        for seed in 0..64 {
            let (path, c) = random_path(&template, seed, 600);
            committed += u32::from(c.committed() > 0);
            let text = script(&template, 3, 1, &path).expect("expressible");
            kinds.extend(text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned));
            if let Err(e) = crate::scenario::run(&text) {
                panic!("seed {seed}: the script does not replay the path: {e}\n--- script ---\n{text}");
            }
        }
        assert!(committed >= 32, "only {committed} of 64 paths commit anything");
        for kind in [
            "deliver-one",
            "drop-one",
            "duplicate-one",
            "tick",
            "persist",
            "propose",
            "restart",
            "read",
            "snapshot",
            "install",
            "abort-install",
            "add-learner",
            "transfer",
            "campaign",
            "expect",
        ] {
            assert!(kinds.contains(kind), "no path used {kind}: {kinds:?}");
        }
    }

    #[test]
    fn a_replay_that_goes_elsewhere_fails() {
        let mut template = Config::new(1, vec![1]);
        (template.election_ticks, template.heartbeat_ticks) = (3, 1);
        let (path, c) = (0..)
            .map(|seed| random_path(&template, seed, 300))
            .find(|(_, c)| c.committed() > 2)
            .expect("a path that commits");
        assert!(c.committed() > 2);
        let text = script(&template, 3, 1, &path).expect("expressible");
        crate::scenario::run(&text).expect("the faithful script replays");
        // The script ends by stating each node's state: one number off and the replay fails there.
        let commit = c.node(1).map(Node::commit_index).expect("node 1 runs");
        let tampered: String = text
            .lines()
            .map(|l| match l.strip_prefix("expect 1 ") {
                Some(_) => l.replace(&format!(" commit={commit} "), &format!(" commit={} ", commit + 1)) + "\n",
                None => format!("{l}\n"),
            })
            .collect();
        assert_ne!(tampered, text, "node 1's expectation names its commit index");
        let e = crate::scenario::run(&tampered).expect_err("a wrong final state");
        assert!(e.message.contains("expected commit="), "{e}");
        // Without its fsyncs the same events lead elsewhere (nothing commits).
        let unsynced: String = text.lines().filter(|l| !l.starts_with("persist")).map(|l| format!("{l}\n")).collect();
        // (A command may fail before the expectations: a message the faithful run sent is not
        // there to deliver.)
        crate::scenario::run(&unsynced).expect_err("a different run");
    }

    #[test]
    fn the_state_text_leaves_out_only_the_stats() {
        let template = Config::new(1, vec![1]);
        let mut c = Cluster::new(&template, 3, 0, 0);
        let before = c.state_text();
        assert!(!before.contains("stats: Stats") && before.contains("hard_state"), "{before}");
        // A fsync completion never issued is dropped and counted: only a counter moves.
        c.step(1, Event::Persisted { seq: 99 }).expect("dropped");
        assert_eq!(c.node(1).map(|n| n.stats().dropped_bad_persisted), Some(1));
        assert_eq!(c.state_text(), before);
        c.apply(Choice::Tick(1)).expect("tick");
        assert_ne!(c.state_text(), before, "a tick is state");
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
