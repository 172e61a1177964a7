//! A small scenario language for driving a cluster by hand, in the style of
//! etcd-io/raft's `testdata/*.txt`. Each script line is a command; running a
//! script returns a readable trace (commands, messages, persists, applies)
//! that tests pin with insta snapshots, so a protocol change shows up as a
//! trace diff.
//!
//! Commands (`ID` is a node id, `[..]` optional):
//!
//! | command | effect |
//! |---|---|
//! | `add-nodes N [pre-vote=B] [check-quorum=B] [election=T] [heartbeat=T] [max-entries=N] [inflight=N] [trailing=N] [lease=B] [drift=T]` | create voters 1..=N |
//! | `join ID` | create node ID with no configuration (it waits to be added), with the last `add-nodes` settings |
//! | `add-learner LEADER ID` | ask LEADER to add ID as a learner |
//! | `promote LEADER ID` | ask LEADER to make learner ID a voter |
//! | `remove LEADER ID` | ask LEADER to remove voter or learner ID |
//! | `set-voters LEADER A,B,.. [learners=C,..]` | ask LEADER for that configuration (joint when more than one voter changes) |
//! | `transfer LEADER ID` | ask LEADER to hand leadership to ID |
//! | `campaign ID` | start a real election now |
//! | `tick ID [N]` | N clock ticks on one node |
//! | `tick-all [N]` | N ticks on every node, in id order |
//! | `propose ID DATA` | propose a command |
//! | `read ID CTX` | a linearizable read (`Event::ReadIndex`) on node ID |
//! | `expect-read CTX OUTCOME` | fail unless read CTX is `pending`, `rejected`, `fresh` (served at an index covering every write committed anywhere when it was issued) or `stale` (served without one) |
//! | `deliver [ID]` | deliver messages queued for ID (or everyone) once |
//! | `drop [ID]` | discard messages queued for ID (or everyone) |
//! | `duplicate [ID]` | queue a second copy of every message queued for ID (or everyone) |
//! | `persist [ID]` | complete all pending disk writes of ID (or everyone) |
//! | `stabilize` | persist and deliver until nothing is left in flight |
//! | `partition A B / C` | cut every link between the groups (replacing earlier cuts) |
//! | `isolate ID` | cut every link of ID |
//! | `heal` | restore all links |
//! | `deliver-one ID K` | deliver only the `K`-th message (from 0) queued for ID |
//! | `drop-one ID K` | discard only the `K`-th message queued for ID |
//! | `duplicate-one ID K` | deliver a copy of the `K`-th message queued for ID, keeping it queued |
//! | `crash ID` | lose unsynced writes (and any install under way), restart from disk; messages queued for ID are lost |
//! | `restart ID` | as `crash`, but messages queued for ID stay on the network and reach the restarted node |
//! | `lose-synced ID KEEP` | crash ID, and its disk loses every synced entry after the first KEEP following its snapshot; the restarted node is repaired (`Node::begin_repair`) |
//! | `snapshot ID [INDEX]` | the driver took a snapshot at INDEX (default: the applied index) |
//! | `install ID` | the driver finished the snapshot install the node asked for |
//! | `abort-install ID` | the driver gave the install up |
//! | `status` | one line per node |
//! | `log ID` | the node's log |
//! | `expect ID key=value...` | fail unless `role`, `term`, `vote`, `leader`, `commit`, `applied`, `last`, `first` (first index in memory), `snapshot` (its last index, 0 for none), `installing` (true/false), `voters`, `outgoing`, `learners` (comma-separated ids, `-` for none), `transfer` (target or `none`), `repairing` (true/false), `regressions` (followers found holding less than they acknowledged), `refused-in-repair` (votes refused for the lost log), `matchN` (the leader's match index for node N) match |
//! | `expect-count KIND [<=]N` | fail unless N messages of KIND were sent since `reset-count` |
//! | `reset-count` | zero the message counters |
//! | `# ...` | comment, echoed |

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;

use raft_core::{Action, Bytes, Config, Event, MembershipChange, Message, Node, NodeId, Role};

use crate::cluster::node_seed;
use crate::disk::SimDisk;
use crate::fmt as tfmt;

/// An error in a scenario: a bad command or a failed expectation.
#[derive(Debug)]
pub struct ScenarioError {
    /// 1-based line number in the script.
    pub line: usize,
    /// What went wrong.
    pub message: String,
    /// The trace up to the failure.
    pub trace: String,
}

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}\n--- trace so far ---\n{}", self.line, self.message, self.trace)
    }
}

impl std::error::Error for ScenarioError {}

struct Member {
    node: Node,
    disk: SimDisk,
    config: Config,
    restarts: u64,
    /// The driver's durable repair mark, after `lose-synced`.
    repair: Option<raft_core::Repair>,
}

/// A hand-driven cluster.
#[derive(Default)]
pub struct Scenario {
    members: BTreeMap<NodeId, Member>,
    /// Messages in flight, per destination, in send order.
    inbox: BTreeMap<NodeId, VecDeque<(NodeId, Message)>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    counts: BTreeMap<&'static str, usize>,
    trace: String,
    safety: crate::invariants::Safety,
    /// Snapshot installs a node asked its driver for (`Action::InstallSnapshot`).
    installs: BTreeMap<NodeId, raft_core::SnapshotMeta>,
    /// The settings of the last `add-nodes`, for `join`.
    template: Option<Config>,
    /// Reads issued: the newest write committed anywhere when each was
    /// issued, and how it ended.
    reads: BTreeMap<u64, (u64, Option<ReadEnd>)>,
}

/// How a scripted read ended.
#[derive(Clone, Copy, Debug)]
enum ReadEnd {
    Served { index: u64 },
    Rejected,
}

/// Runs a whole script and returns its trace.
pub fn run(script: &str) -> Result<String, ScenarioError> {
    let mut s = Scenario::default();
    for (i, raw) in script.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            s.trace.push('\n');
            continue;
        }
        if line.starts_with('#') {
            let _ = writeln!(s.trace, "{line}");
            continue;
        }
        let _ = writeln!(s.trace, "> {line}");
        if let Err(message) = s.command(line) {
            return Err(ScenarioError { line: i + 1, message, trace: s.trace });
        }
    }
    Ok(s.trace)
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what}: {s:?}"))
}

/// `1,2,3` (or `-` for none).
fn parse_ids(list: &str) -> Result<Vec<NodeId>, String> {
    if list == "-" {
        return Ok(Vec::new());
    }
    list.split(',').map(|s| parse(s, "node id")).collect()
}

/// The settings `add-nodes N OPTIONS..` gives its nodes (`key=value` options, see the table
/// above), for node 1 of voters `1..=n`; [`crate::cluster::script`] writes the options back.
pub(crate) fn template(n: u64, options: &[&str]) -> Result<Config, String> {
    let mut template = Config::new(1, (1..=n).collect());
    for kv in options {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("expected key=value, got {kv:?}"))?;
        match k {
            "pre-vote" => template.pre_vote = parse(v, k)?,
            "check-quorum" => template.check_quorum = parse(v, k)?,
            "election" => template.election_ticks = parse(v, k)?,
            "heartbeat" => template.heartbeat_ticks = parse(v, k)?,
            "max-entries" => template.max_entries_per_msg = parse(v, k)?,
            "inflight" => template.max_inflight_msgs = parse(v, k)?,
            "trailing" => template.snapshot_trailing_entries = parse(v, k)?,
            "lease" => template.lease_reads = parse(v, k)?,
            "drift" => template.max_clock_drift_ticks = parse(v, k)?,
            _ => return Err(format!("unknown option {k:?}")),
        }
    }
    Ok(template)
}

/// The inverse of [`parse_ids`].
pub(crate) fn ids_text(ids: &[NodeId]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

impl Scenario {
    fn command(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let args = &words[1..];
        match words[0] {
            "add-nodes" => self.add_nodes(args),
            "join" => self.join(args),
            "add-learner" | "promote" | "remove" => {
                let leader = self.id(args, 0)?;
                let id: NodeId = parse(args.get(1).ok_or("missing node id")?, "node id")?;
                let change = match words[0] {
                    "add-learner" => MembershipChange::AddLearner(id),
                    "promote" => MembershipChange::Promote(id),
                    _ => MembershipChange::Remove(id),
                };
                self.step(leader, Event::ChangeMembership { change, context: None })
            }
            "set-voters" => {
                let leader = self.id(args, 0)?;
                let voters = parse_ids(args.get(1).ok_or("set-voters needs voters")?)?;
                let learners = match args.get(2).and_then(|a| a.strip_prefix("learners=")) {
                    Some(list) => parse_ids(list)?,
                    None => Vec::new(),
                };
                let change = MembershipChange::Set { voters, learners };
                self.step(leader, Event::ChangeMembership { change, context: None })
            }
            "transfer" => {
                let leader = self.id(args, 0)?;
                let to: NodeId = parse(args.get(1).ok_or("missing node id")?, "node id")?;
                self.step(leader, Event::TransferLeadership { to })
            }
            "campaign" => self.step(self.id(args, 0)?, Event::Campaign),
            "tick" => {
                let id = self.id(args, 0)?;
                let n: usize = args.get(1).map_or(Ok(1), |s| parse(s, "count"))?;
                for _ in 0..n {
                    self.step(id, Event::Tick)?;
                }
                Ok(())
            }
            "tick-all" => {
                let n: usize = args.first().map_or(Ok(1), |s| parse(s, "count"))?;
                for _ in 0..n {
                    for id in self.ids() {
                        self.step(id, Event::Tick)?;
                    }
                }
                Ok(())
            }
            "propose" => {
                let id = self.id(args, 0)?;
                let data = args.get(1..).ok_or("propose needs data")?.join(" ");
                self.step(id, Event::Propose { data: Bytes::from(data) })
            }
            "deliver" => self.deliver(self.targets(args)?),
            "duplicate" => {
                for id in self.targets(args)? {
                    let q = self.inbox.entry(id).or_default();
                    let copies: Vec<_> = q.iter().cloned().collect();
                    let n = copies.len();
                    q.extend(copies);
                    let _ = writeln!(self.trace, "duplicated {n} message(s) to {id}");
                }
                Ok(())
            }
            "drop" => {
                for id in self.targets(args)? {
                    let n = self.inbox.get_mut(&id).map_or(0, |q| q.drain(..).count());
                    let _ = writeln!(self.trace, "dropped {n} message(s) to {id}");
                }
                Ok(())
            }
            "deliver-one" | "drop-one" | "duplicate-one" => self.one_message(words[0], args),
            "persist" => self.persist(self.targets(args)?),
            "stabilize" => self.stabilize(),
            "partition" => self.partition(args),
            "isolate" => {
                let id = self.id(args, 0)?;
                for other in self.ids() {
                    if other != id {
                        self.cut.insert((id, other));
                        self.cut.insert((other, id));
                    }
                }
                Ok(())
            }
            "heal" => {
                self.cut.clear();
                Ok(())
            }
            "crash" => self.crash(self.id(args, 0)?, None, false),
            "restart" => self.crash(self.id(args, 0)?, None, true),
            "lose-synced" => {
                let keep = parse::<usize>(args.get(1).ok_or("lose-synced needs a count")?, "count")?;
                self.crash(self.id(args, 0)?, Some(keep), false)
            }
            "snapshot" => {
                let id = self.id(args, 0)?;
                let index = match args.get(1) {
                    Some(i) => parse(i, "index")?,
                    None => self.members[&id].node.applied_index(),
                };
                self.step(id, Event::SnapshotTaken { index })
            }
            "install" => {
                let id = self.id(args, 0)?;
                let meta = self.installs.remove(&id).ok_or_else(|| format!("node {id} is not installing"))?;
                self.step(id, Event::SnapshotInstalled { meta })
            }
            "abort-install" => {
                let id = self.id(args, 0)?;
                self.installs.remove(&id).ok_or_else(|| format!("node {id} is not installing"))?;
                self.step(id, Event::SnapshotAborted)
            }
            "status" => {
                for id in self.ids() {
                    let line = self.status_line(id);
                    let _ = writeln!(self.trace, "{line}");
                }
                Ok(())
            }
            "log" => {
                let id = self.id(args, 0)?;
                let log = tfmt::entries(self.members[&id].node.entries());
                let _ = writeln!(self.trace, "{id} log {log}");
                Ok(())
            }
            "expect" => self.expect(args),
            "expect-count" => self.expect_count(args),
            "read" => self.read(args),
            "expect-read" => self.expect_read(args),
            "reset-count" => {
                self.counts.clear();
                Ok(())
            }
            other => Err(format!("unknown command {other:?}")),
        }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    fn id(&self, args: &[&str], i: usize) -> Result<NodeId, String> {
        let id: NodeId = parse(args.get(i).ok_or("missing node id")?, "node id")?;
        if !self.members.contains_key(&id) {
            return Err(format!("no node {id}"));
        }
        Ok(id)
    }

    fn targets(&self, args: &[&str]) -> Result<Vec<NodeId>, String> {
        if args.is_empty() { Ok(self.ids()) } else { args.iter().map(|a| self.id(&[a], 0)).collect() }
    }

    fn add_nodes(&mut self, args: &[&str]) -> Result<(), String> {
        let n: u64 = parse(args.first().ok_or("add-nodes needs a count")?, "count")?;
        let template = template(n, &args[1..])?;
        for id in 1..=n {
            let config = Config { id, ..template.clone() };
            let node = Node::new(config.clone(), node_seed(0, id, 0)).map_err(|e| e.to_string())?;
            self.members.insert(id, Member { node, disk: SimDisk::new(), config, restarts: 0, repair: None });
        }
        self.template = Some(template);
        Ok(())
    }

    /// A node that starts with no configuration and waits to be added.
    fn join(&mut self, args: &[&str]) -> Result<(), String> {
        let id: NodeId = parse(args.first().ok_or("join needs a node id")?, "node id")?;
        let template = self.template.clone().ok_or("join needs an earlier add-nodes")?;
        let config = Config { id, voters: Vec::new(), ..template };
        let node = Node::new(config.clone(), node_seed(0, id, 0)).map_err(|e| e.to_string())?;
        self.members.insert(id, Member { node, disk: SimDisk::new(), config, restarts: 0, repair: None });
        Ok(())
    }

    /// Steps one node and routes its actions.
    fn step(&mut self, id: NodeId, event: Event) -> Result<(), String> {
        let m = self.members.get_mut(&id).ok_or("no such node")?;
        let actions = m.node.step(event);
        // The simulator's safety checks run on scripted clusters too.
        let checked = self.safety.after_step(id, m.restarts, &m.node, &m.disk, &actions);
        for a in actions {
            let _ = writeln!(self.trace, "{}", tfmt::action(id, &a));
            match a {
                Action::Send { to, message } => {
                    *self.counts.entry(tfmt::kind(&message)).or_default() += 1;
                    if self.cut.contains(&(id, to)) {
                        let _ = writeln!(self.trace, "  (lost: link {id}->{to} is cut)");
                    } else {
                        self.inbox.entry(to).or_default().push_back((id, message));
                    }
                }
                Action::Persist(p) => self.members.get_mut(&id).expect("member").disk.write(p),
                Action::InstallSnapshot { meta, .. } => {
                    self.installs.insert(id, meta);
                }
                Action::ReadReady { ctx, index } => self.read_ended(ctx, ReadEnd::Served { index })?,
                Action::ReadRejected { ctx, .. } => self.read_ended(ctx, ReadEnd::Rejected)?,
                _ => {}
            }
        }
        checked.map_err(|v| format!("{} violated: {}", v.property, v.detail))
    }

    /// The newest committed write (normal entry) any node knows of.
    fn newest_committed_write(&self) -> u64 {
        let mut newest = 0;
        for m in self.members.values() {
            let n = &m.node;
            let upto = n.commit_index().min(n.last_index());
            if let Some(e) =
                n.entries().iter().rev().find(|e| e.index <= upto && e.kind == raft_core::EntryKind::Normal)
            {
                newest = newest.max(e.index);
            }
        }
        newest
    }

    fn read(&mut self, args: &[&str]) -> Result<(), String> {
        let id = self.id(args, 0)?;
        let ctx: u64 = parse(args.get(1).ok_or("read needs a ctx")?, "ctx")?;
        if self.reads.contains_key(&ctx) {
            return Err(format!("read {ctx} was already issued"));
        }
        let required = self.newest_committed_write();
        self.reads.insert(ctx, (required, None));
        self.step(id, Event::ReadIndex { ctx })
    }

    fn read_ended(&mut self, ctx: u64, end: ReadEnd) -> Result<(), String> {
        let entry = self.reads.get_mut(&ctx).ok_or_else(|| format!("read {ctx} ended but was never issued"))?;
        if entry.1.is_some() {
            return Err(format!("read {ctx} answered twice"));
        }
        entry.1 = Some(end);
        if let ReadEnd::Served { index } = end {
            let required = entry.0;
            let verdict = if index >= required { "fresh" } else { "STALE" };
            let _ = writeln!(self.trace, "  (read {ctx}: {verdict}; newest write committed when issued: {required})");
        }
        Ok(())
    }

    fn expect_read(&mut self, args: &[&str]) -> Result<(), String> {
        let ctx: u64 = parse(args.first().ok_or("expect-read needs a ctx")?, "ctx")?;
        let want = *args.get(1).ok_or("expect-read needs an outcome")?;
        let (required, end) = *self.reads.get(&ctx).ok_or_else(|| format!("read {ctx} was never issued"))?;
        let got = match end {
            None => "pending",
            Some(ReadEnd::Rejected) => "rejected",
            Some(ReadEnd::Served { index }) if index >= required => "fresh",
            Some(ReadEnd::Served { .. }) => "stale",
        };
        if got != want {
            return Err(format!("expected read {ctx} {want}, got {got}"));
        }
        Ok(())
    }

    fn deliver(&mut self, ids: Vec<NodeId>) -> Result<(), String> {
        for id in ids {
            let msgs: Vec<_> = self.inbox.get_mut(&id).map(|q| q.drain(..).collect()).unwrap_or_default();
            for (from, message) in msgs {
                self.step(id, Event::Message { from, message })?;
            }
        }
        Ok(())
    }

    /// `deliver-one`, `drop-one` or `duplicate-one ID K`: the `K`-th message (from 0) queued for
    /// `ID` is delivered, lost, or delivered as a copy that stays queued.
    fn one_message(&mut self, what: &str, args: &[&str]) -> Result<(), String> {
        let id = self.id(args, 0)?;
        let k: usize = parse(args.get(1).ok_or("missing the message's position")?, "position")?;
        let q = self.inbox.entry(id).or_default();
        if k >= q.len() {
            return Err(format!("only {} message(s) queued for {id}", q.len()));
        }
        let (from, message) = match what {
            "duplicate-one" => q[k].clone(),
            _ => q.remove(k).expect("checked position"),
        };
        if what == "drop-one" {
            let _ = writeln!(self.trace, "dropped {from}->{id} {}", tfmt::kind(&message));
            return Ok(());
        }
        self.step(id, Event::Message { from, message })
    }

    fn persist(&mut self, ids: Vec<NodeId>) -> Result<(), String> {
        for id in ids {
            let m = self.members.get_mut(&id).expect("member");
            let synced = m.disk.sync(None);
            self.safety.after_sync(id, &m.disk).map_err(|v| format!("{} violated: {}", v.property, v.detail))?;
            if let Some(seq) = synced {
                self.step(id, Event::Persisted { seq })?;
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> bool {
        self.inbox.values().any(|q| !q.is_empty())
            || self.members.values().any(|m| m.disk.pending_writes() > 0)
            || !self.installs.is_empty()
    }

    fn stabilize(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            if !self.in_flight() {
                return Ok(());
            }
            self.persist(self.ids())?;
            self.deliver(self.ids())?;
            // Installs under way complete (the transfer is the driver's).
            let installs: Vec<_> = std::mem::take(&mut self.installs).into_iter().collect();
            for (id, meta) in installs {
                self.step(id, Event::SnapshotInstalled { meta })?;
            }
        }
        Err("stabilize did not converge in 10000 rounds".into())
    }

    /// Replaces any earlier partition with this one.
    fn partition(&mut self, args: &[&str]) -> Result<(), String> {
        self.cut.clear();
        let mut groups: Vec<Vec<NodeId>> = vec![Vec::new()];
        for a in args {
            if *a == "/" {
                groups.push(Vec::new());
            } else {
                groups.last_mut().expect("group").push(self.id(&[a], 0)?);
            }
        }
        for (i, g) in groups.iter().enumerate() {
            for h in groups.iter().skip(i + 1) {
                for &a in g {
                    for &b in h {
                        self.cut.insert((a, b));
                        self.cut.insert((b, a));
                    }
                }
            }
        }
        Ok(())
    }

    /// Crashes and restarts `id`; with `keep`, its disk also loses the synced entries after the
    /// first `keep`, and the driver (which notices) repairs the node. Messages queued for it are
    /// lost, unless `keep_inbox` (they were still on the network and reach the new incarnation).
    fn crash(&mut self, id: NodeId, keep: Option<usize>, keep_inbox: bool) -> Result<(), String> {
        let m = self.members.get_mut(&id).expect("member");
        if m.node.repairing().is_none() {
            m.repair = None;
        }
        m.disk.crash();
        self.safety.after_sync(id, &m.disk).map_err(|v| format!("{} violated: {}", v.property, v.detail))?;
        if let Some(keep) = keep {
            let last_term = m.disk.durable().entries.last().map_or(0, |e| e.term);
            if let Some(lost_through) = m.disk.lose_synced(keep) {
                let lost = raft_core::Repair { lost_through, last_term };
                m.repair = Some(m.repair.map_or(lost, |r| r.max(lost)));
            }
        }
        m.restarts += 1;
        self.installs.remove(&id);
        let seed = node_seed(0, id, m.restarts);
        self.safety.on_restart(id, m.disk.durable());
        m.node = Node::restore(m.config.clone(), m.disk.durable().clone(), seed).map_err(|e| e.to_string())?;
        if let Some(mark) = m.repair {
            m.node.begin_repair(mark);
            let _ = writeln!(
                self.trace,
                "{id} lost synced entries after {} of them: repairing {mark:?}",
                keep.unwrap_or(0)
            );
        }
        if !keep_inbox {
            self.inbox.remove(&id);
        }
        let line = self.status_line(id);
        let _ = writeln!(self.trace, "{id} crashed and restarted: {line}");
        Ok(())
    }

    fn status_line(&self, id: NodeId) -> String {
        let n = &self.members[&id].node;
        let hs = n.hard_state();
        let vote = hs.vote.map_or("-".into(), |v| v.to_string());
        let leader = n.leader().map_or("-".into(), |v| v.to_string());
        format!(
            "{id}: {} term={} vote={vote} leader={leader} last={}/{} commit={} applied={}",
            n.role(),
            hs.term,
            n.last_index(),
            n.last_term(),
            n.commit_index(),
            n.applied_index()
        )
    }

    fn expect(&mut self, args: &[&str]) -> Result<(), String> {
        let id = self.id(args, 0)?;
        let n = &self.members[&id].node;
        for kv in &args[1..] {
            let (k, want) = kv.split_once('=').ok_or_else(|| format!("expected key=value, got {kv:?}"))?;
            let got = match k {
                "role" => n.role().to_string(),
                "term" => n.term().to_string(),
                "vote" => n.hard_state().vote.map_or("none".into(), |v| v.to_string()),
                "leader" => n.leader().map_or("none".into(), |v| v.to_string()),
                "commit" => n.commit_index().to_string(),
                "applied" => n.applied_index().to_string(),
                "last" => n.last_index().to_string(),
                "first" => n.first_index().to_string(),
                "snapshot" => n.snapshot().map_or(0, |m| m.last_included_index).to_string(),
                "installing" => n.installing_snapshot().is_some().to_string(),
                "voters" => ids_text(&n.membership().voters),
                "outgoing" => ids_text(&n.membership().outgoing),
                "learners" => ids_text(&n.membership().learners),
                "transfer" => n.transfer_target().map_or("none".into(), |v| v.to_string()),
                "repairing" => n.repairing().is_some().to_string(),
                "regressions" => n.stats().follower_regressions.to_string(),
                "refused-in-repair" => n.stats().votes_refused_in_repair.to_string(),
                k if k.starts_with("match") => {
                    let peer = parse::<NodeId>(&k[5..], "match peer")?;
                    n.progress(peer).map_or("none".into(), |p| p.match_index.to_string())
                }
                _ => return Err(format!("unknown expectation {k:?}")),
            };
            if got != want {
                return Err(format!("node {id}: expected {k}={want}, got {k}={got}"));
            }
        }
        Ok(())
    }

    fn expect_count(&mut self, args: &[&str]) -> Result<(), String> {
        let kind = *args.first().ok_or("expect-count needs a kind")?;
        let spec = *args.get(1).ok_or("expect-count needs a count")?;
        let got = self.counts.iter().find(|(k, _)| **k == kind).map_or(0, |(_, v)| *v);
        let ok = match spec.strip_prefix("<=") {
            Some(max) => got <= parse::<usize>(max, "count")?,
            None => got == parse::<usize>(spec, "count")?,
        };
        let _ = writeln!(self.trace, "{kind} sent: {got}");
        if !ok {
            return Err(format!("expected {kind} count {spec}, got {got}"));
        }
        Ok(())
    }

    /// The node with `id` (for tests that inspect state directly).
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.members.get(&id).map(|m| &m.node)
    }

    /// Whether any node currently believes it leads `term`.
    pub fn leaders(&self) -> Vec<NodeId> {
        self.members.iter().filter(|(_, m)| m.node.role() == Role::Leader).map(|(id, _)| *id).collect()
    }
}
