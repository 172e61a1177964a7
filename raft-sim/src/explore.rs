//! Exhaustive exploration: every interleaving of a [`Cluster`]'s choices up to a depth, with
//! states deduplicated by a fingerprint, and the simulator's safety checks in every state reached.
//!
//! The seed sweep samples runs; this enumerates them. From the initial state every enabled choice
//! is tried (deliver, drop or duplicate any message in flight; tick any node, which is how
//! election and heartbeat timeouts fire, so every order of timeouts is covered (or jump straight
//! to a node's next timeout, `timeouts`); complete any
//! node's pending disk writes; propose on any node; crash any node, losing its unsynced writes;
//! restart a crashed one), then every choice from each state reached, and so on. Two paths
//! that reach the same state (same cores, disks and messages in flight, the latter as a
//! multiset) are explored once (again only if reached with more depth left). A violation is
//! reported with a shortest path to it, and [`ExploreReport::script`] writes that path as a
//! scenario script that `raft-sim scenario FILE` replays to the same violation.
//!
//! What bounds it: `depth` (choices per path, or none), `max_states` (distinct states kept), and
//! budgets for the choices that would otherwise never run out (proposals, crashes, drops,
//! duplicates, reads, snapshots, membership changes, clock events, reordered deliveries).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};
use std::time::Instant;

use raft_core::{Config, MembershipChange};

use crate::cluster::{Choice, Cluster};
use crate::hash::FixedHasher;
use crate::invariants::Violation;

/// What to explore.
#[derive(Clone, Debug)]
pub struct ExploreConfig {
    /// Voters (node ids `1..=nodes`).
    pub nodes: u64,
    /// Choices per path at most; 0 for no bound, when `clock` and the other budgets bound the
    /// search.
    pub depth: usize,
    /// Distinct states kept at most; the search stops (incomplete) beyond it.
    pub max_states: usize,
    /// Proposals per path at most.
    pub proposals: u32,
    /// Crashes per path at most (each followed, when chosen, by a restart).
    pub crashes: u32,
    /// Messages dropped per path at most.
    pub drops: u32,
    /// Messages duplicated per path at most.
    pub duplicates: u32,
    /// Linearizable reads (`ReadIndex`) asked per path at most.
    pub reads: u32,
    /// Snapshots taken per path at most (a node's driver snapshotting at its applied index; a
    /// follower left behind then needs the transfer, which is a choice too: install or abort).
    pub snapshots: u32,
    /// Clock choices (single ticks, or timeouts with `timeouts`) per path at most. With it, and
    /// every other budget, the space is finite without a depth bound: every message answers a
    /// clock event, a proposal or a fault, so `depth` 0 with a small `clock` explores
    /// "every run with at most this many timeouts" (how deep mistakes, which need two elections
    /// and a commit, are reached).
    pub clock: u32,
    /// Deliveries out of send order on their link (a message delivered before an older one from
    /// the same sender to the same receiver) per path at most; `u32::MAX` (the default) for any
    /// order. 0 explores FIFO links, as over the TCP transport the driver uses (where only a
    /// reconnect loses messages and none overtakes another), with far fewer states.
    pub reorders: u32,
    /// Membership changes asked per path at most (adding a spare node as a learner, promoting
    /// it, removing a member); with any, the cluster has one spare node that starts empty.
    pub changes: u32,
    /// The protocol settings every node runs with.
    pub template: Config,
    /// Jump to a node's next timeout ([`Choice::Timeout`]) instead of ticking one tick at a time
    /// ([`Choice::Tick`], the default). Each choice then does more (an election or a heartbeat
    /// round starts at once), so the same depth reaches further into a run, at a much larger
    /// state space per level (at depth 8: 475k distinct states against 12k).
    pub timeouts: bool,
}

impl ExploreConfig {
    /// A 3-node cluster with short timeouts (an election after 2–3 ticks) and PreVote off, so
    /// that elections fit in few choices; no faults beyond crashes unless asked.
    pub fn small(nodes: u64, depth: usize) -> ExploreConfig {
        let mut template = Config::new(1, vec![1]);
        template.election_ticks = 2;
        template.heartbeat_ticks = 1;
        template.pre_vote = false;
        template.check_quorum = false;
        ExploreConfig {
            nodes,
            depth,
            max_states: 2_000_000,
            proposals: 1,
            crashes: 1,
            drops: 0,
            duplicates: 0,
            reads: 0,
            snapshots: 0,
            clock: u32::MAX,
            reorders: u32::MAX,
            changes: 0,
            template,
            timeouts: false,
        }
    }
}

impl ExploreConfig {
    /// The `raft-sim explore` arguments that run this search (those that differ from the
    /// command's defaults, past `--nodes` and `--depth`).
    pub fn flags(&self) -> String {
        let mut out = format!("--nodes {} --depth {}", self.nodes, self.depth);
        let base = ExploreConfig::small(self.nodes, self.depth);
        let mut flag = |name: &str, value: u64, default: u64| {
            if value != default {
                out.push_str(&format!(" --{name} {value}"));
            }
        };
        flag("max-states", self.max_states as u64, base.max_states as u64);
        for (name, value, default) in [
            ("proposals", self.proposals, base.proposals),
            ("crashes", self.crashes, base.crashes),
            ("drops", self.drops, base.drops),
            ("duplicates", self.duplicates, base.duplicates),
            ("reads", self.reads, base.reads),
            ("snapshots", self.snapshots, base.snapshots),
            ("clock", self.clock, base.clock),
            ("reorders", self.reorders, base.reorders),
            ("changes", self.changes, base.changes),
            ("election-ticks", self.template.election_ticks, base.template.election_ticks),
        ] {
            flag(name, u64::from(value), u64::from(default));
        }
        if self.template.pre_vote {
            out.push_str(" --pre-vote");
        }
        if self.timeouts {
            out.push_str(" --timeouts");
        }
        out
    }
}

/// What a search found.
#[derive(Clone, Debug, Default)]
pub struct ExploreReport {
    /// States whose successors were generated.
    pub explored: u64,
    /// Distinct states seen (the dedup set's size).
    pub distinct: u64,
    /// Transitions taken (choices applied), duplicates included.
    pub transitions: u64,
    /// Deepest level reached.
    pub depth: usize,
    /// Whether every path up to `depth` was explored (false when `max_states` cut it short).
    pub complete: bool,
    /// Seconds spent.
    pub seconds: f64,
    /// Seconds until the first search found its violation (the rest went to shortening it).
    pub first_found: Option<f64>,
    /// The first violation, with the (shortest) path of choices that reaches it.
    pub violation: Option<(Vec<Choice>, Violation)>,
}

impl ExploreReport {
    /// The violation's path as a scenario-language script ([`crate::cluster::script`]), headed by
    /// what was explored and what broke; `None` without a violation.
    pub fn script(&self, cfg: &ExploreConfig) -> Option<String> {
        let (path, v) = self.violation.as_ref()?;
        let body = crate::cluster::script(&template(cfg), cfg.nodes, spares(cfg), path)
            .unwrap_or_else(|e| format!("# this path cannot be written as a script: {e}\n"));
        Some(format!(
            "# found by raft-sim explore {}\n# {} choices to {}: {}\n{body}",
            cfg.flags(),
            path.len(),
            v.property,
            v.detail
        ))
    }

    /// Distinct states per second.
    pub fn states_per_second(&self) -> f64 {
        self.distinct as f64 / self.seconds.max(1e-9)
    }
}

/// One state of the search: the cluster and the budgets spent on the way to it.
#[derive(Clone)]
struct State {
    cluster: Cluster,
    proposals: u32,
    crashes: u32,
    drops: u32,
    duplicates: u32,
    reads: u32,
    snapshots: u32,
    clock: u32,
    reorders: u32,
    changes: u32,
}

impl State {
    /// A state with no budget spent yet.
    fn new(cluster: Cluster) -> State {
        State {
            cluster,
            proposals: 0,
            crashes: 0,
            drops: 0,
            duplicates: 0,
            reads: 0,
            snapshots: 0,
            clock: 0,
            reorders: 0,
            changes: 0,
        }
    }

    /// The budgets spent, for the fingerprint.
    fn budgets(&self) -> [u32; 9] {
        [
            self.proposals,
            self.crashes,
            self.drops,
            self.duplicates,
            self.reads,
            self.snapshots,
            self.clock,
            self.reorders,
            self.changes,
        ]
    }
}

/// The settings every node runs with: the config's, with compaction right at the snapshot when
/// snapshots are explored, so that a follower behind it must install it.
fn template(cfg: &ExploreConfig) -> Config {
    let mut template = cfg.template.clone();
    if cfg.snapshots > 0 {
        template.snapshot_trailing_entries = 0;
    }
    template
}

/// Whether the order of messages on a link is part of the state (reorders are budgeted).
fn fifo(cfg: &ExploreConfig) -> bool {
    cfg.reorders != u32::MAX
}

/// Spare nodes in the cluster: one when membership changes are explored.
fn spares(cfg: &ExploreConfig) -> u64 {
    u64::from(cfg.changes > 0)
}

/// Explores every path up to `cfg.depth`; `progress` is called now and then with the report so far.
///
/// Depth-first, so that memory is the dedup table (24 bytes per distinct state) plus one state per
/// level, not a whole level of states (a 3-node state is about 14 KB). A state is expanded again
/// only when reached with more depth left than before, so every path up to the bound is still
/// covered (with `depth` 0 there is no bound and no re-expansion: the budgets bound the search).
/// When a violation is found, depth-bounded searches bisect for the shortest depth at which one
/// exists, so the path reported is a shortest one.
pub fn explore(cfg: &ExploreConfig, mut progress: impl FnMut(&ExploreReport)) -> ExploreReport {
    let started = Instant::now();
    let mut report = search(cfg, &mut progress);
    report.first_found = report.violation.as_ref().map(|_| started.elapsed().as_secs_f64());
    // No violation within fewer than `lo` choices; the best path so far is `report.violation`'s.
    let mut lo = 1;
    while let Some(len) = report.violation.as_ref().map(|(path, _)| path.len()).filter(|&len| lo < len) {
        let mid = lo + (len - lo) / 2;
        match search(&ExploreConfig { depth: mid, ..cfg.clone() }, &mut |_| {}).violation {
            Some(shorter) => report.violation = Some(shorter),
            None => lo = mid + 1,
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn search(cfg: &ExploreConfig, progress: &mut dyn FnMut(&ExploreReport)) -> ExploreReport {
    let started = Instant::now();
    let mut report = ExploreReport { complete: true, ..ExploreReport::default() };
    // Each distinct state and the most depth left it was expanded with.
    let mut seen: HashMap<u128, u8, BuildHasherDefault<FixedHasher>> = HashMap::default();
    // Base seed 0, as the scenario language seeds its nodes, so a counterexample replays there.
    let root = State::new(Cluster::new(&template(cfg), cfg.nodes, spares(cfg), 0));
    // Without a depth bound every state counts as reached with the same (no) depth left.
    let bound = if cfg.depth == 0 { usize::MAX } else { cfg.depth };
    seen.insert(fingerprint(&root, fifo(cfg)), depth_left(bound));
    // The path being explored: each level's state, its choices and the next one to try.
    let mut stack: Vec<(State, Vec<Choice>, usize)> = vec![(root.clone(), choices(cfg, &root), 0)];
    let mut path: Vec<Choice> = Vec::new();
    report.explored = 1;
    while let Some((state, options, next)) = stack.last_mut() {
        let Some(choice) = options.get(*next).cloned() else {
            stack.pop();
            path.pop();
            continue;
        };
        *next += 1;
        let mut child = state.clone();
        match choice {
            Choice::Propose(_) => child.proposals += 1,
            Choice::Crash { .. } => child.crashes += 1,
            Choice::Drop(_) => child.drops += 1,
            Choice::Duplicate(_) => child.duplicates += 1,
            Choice::Read(_) => child.reads += 1,
            Choice::TakeSnapshot(_) => child.snapshots += 1,
            Choice::Tick(_) | Choice::Timeout(_) => child.clock += 1,
            Choice::Deliver(i) if !head_of_link(&child.cluster, i) => child.reorders += 1,
            Choice::Change(..) => child.changes += 1,
            _ => {}
        }
        report.transitions += 1;
        if let Err(v) = child.cluster.apply(choice.clone()) {
            path.push(choice);
            report.violation = Some((path, v));
            break;
        }
        let depth = path.len() + 1;
        report.depth = report.depth.max(depth);
        let left = if cfg.depth == 0 { 0 } else { depth_left(bound - depth) };
        let key = fingerprint(&child, fifo(cfg));
        let fresh = match seen.get_mut(&key) {
            Some(best) if *best >= left => false,
            Some(best) => {
                *best = left;
                true
            }
            None => {
                if seen.len() >= cfg.max_states {
                    report.complete = false;
                    continue;
                }
                seen.insert(key, left);
                true
            }
        };
        if !fresh || depth == bound {
            continue;
        }
        report.explored += 1;
        if report.explored % 65_536 == 0 {
            report.distinct = seen.len() as u64;
            report.seconds = started.elapsed().as_secs_f64();
            progress(&report);
        }
        let options = choices(cfg, &child);
        path.push(choice);
        stack.push((child, options, 0));
    }
    report.distinct = seen.len() as u64;
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn depth_left(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// Whether the `i`-th message in flight is the oldest on its link (sender to receiver).
fn head_of_link(c: &Cluster, i: usize) -> bool {
    let net = c.in_flight();
    !net[..i].iter().any(|m| m.from == net[i].from && m.to == net[i].to)
}

/// The choices enabled in `state`, within the budgets.
fn choices(cfg: &ExploreConfig, state: &State) -> Vec<Choice> {
    let c = &state.cluster;
    let mut out = Vec::new();
    let flying = c.in_flight().len();
    for i in 0..flying {
        if state.reorders < cfg.reorders || head_of_link(c, i) {
            out.push(Choice::Deliver(i));
        }
        if state.drops < cfg.drops {
            out.push(Choice::Drop(i));
        }
        if state.duplicates < cfg.duplicates {
            out.push(Choice::Duplicate(i));
        }
    }
    for id in c.ids() {
        match c.node(id) {
            Some(node) => {
                if state.clock < cfg.clock {
                    out.push(if cfg.timeouts { Choice::Timeout(id) } else { Choice::Tick(id) });
                }
                if state.changes < cfg.changes && node.role() == raft_core::Role::Leader {
                    let m = node.membership();
                    for other in c.ids() {
                        if m.learners.contains(&other) {
                            out.push(Choice::Change(id, MembershipChange::Promote(other)));
                        }
                        if m.voters.contains(&other) || m.learners.contains(&other) {
                            out.push(Choice::Change(id, MembershipChange::Remove(other)));
                        } else {
                            out.push(Choice::Change(id, MembershipChange::AddLearner(other)));
                        }
                    }
                }
                if c.pending_writes(id) > 0 {
                    out.push(Choice::Sync(id));
                }
                if state.proposals < cfg.proposals && c.node(id).is_some_and(|n| n.role() == raft_core::Role::Leader) {
                    out.push(Choice::Propose(id));
                }
                if state.crashes < cfg.crashes {
                    out.push(Choice::Crash { node: id, survive: 0 });
                }
                if state.reads < cfg.reads {
                    out.push(Choice::Read(id));
                }
                if state.snapshots < cfg.snapshots && c.node(id).is_some_and(|n| n.applied_index() > 0) {
                    out.push(Choice::TakeSnapshot(id));
                }
                if c.node(id).is_some_and(|n| n.installing_snapshot().is_some()) {
                    out.push(Choice::FinishInstall { node: id, ok: true });
                    out.push(Choice::FinishInstall { node: id, ok: false });
                }
            }
            None => out.push(Choice::Restart(id)),
        }
    }
    out
}

/// A 128-bit fingerprint of what determines a state's future: every core (its whole state, as
/// its `Debug` form prints it, the random generator included), every disk, the messages in flight
/// as a multiset, the cluster's own seed and the budgets left. Knowledge only the checker holds
/// (what was committed, who led which term) is left out: two states that differ only there behave
/// alike, and the checks judge each path that reaches them by its own history. With `fifo` (when
/// reorders are budgeted) the order of the messages on each link is part of the state.
fn fingerprint(state: &State, fifo: bool) -> u128 {
    let c = &state.cluster;
    let mut a = FixedHasher::default();
    let mut b = DefaultHasher::new();
    let mut both = |s: &str| {
        s.hash(&mut a);
        s.hash(&mut b);
    };
    both(&c.state_text());
    let mut messages: Vec<u64> = c
        .in_flight()
        .iter()
        .map(|m| {
            let mut h = DefaultHasher::new();
            format!("{}>{}:{:?}", m.from, m.to, m.message).hash(&mut h);
            h.finish()
        })
        .collect();
    if fifo {
        // Grouped by link, each link's messages in send order.
        let mut order: Vec<usize> = (0..messages.len()).collect();
        order.sort_by_key(|&i| (c.in_flight()[i].from, c.in_flight()[i].to));
        messages = order.into_iter().map(|i| messages[i]).collect();
    } else {
        messages.sort_unstable();
    }
    both(&format!("{messages:?} {:?}", state.budgets()));
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Explores `cfg` and asserts the search was complete and found nothing.
    fn explore_safely(cfg: &ExploreConfig) -> ExploreReport {
        let report = explore(cfg, |_| {});
        assert!(report.violation.is_none() && report.complete, "{:?}", report.violation);
        report
    }

    #[test]
    fn a_small_bound_is_explored_completely_without_violations() {
        let cfg = ExploreConfig::small(3, 9);
        let report = explore(&cfg, |_| {});
        assert!(report.violation.is_none(), "{:?}", report.violation);
        assert!(report.complete);
        assert_eq!(report.depth, 9);
        // Enough interleavings to reach an election and a commit on some path.
        assert!(report.distinct > 5_000, "only {} distinct states", report.distinct);
        assert!(report.transitions > report.distinct, "dedup never merged two paths");
    }

    #[test]
    fn reads_widen_the_search_and_stay_safe() {
        // (Snapshots need an applied entry first, which single ticks reach only from depth 11 on:
        // `raft-sim explore --depth 11 --snapshots 1` adds 8 states; too slow for a unit test.)
        let base = explore(&ExploreConfig::small(3, 8), |_| {});
        let mut cfg = ExploreConfig::small(3, 8);
        (cfg.reads, cfg.snapshots) = (1, 1);
        let wider = explore_safely(&cfg);
        assert!(wider.distinct > base.distinct, "{} vs {}", wider.distinct, base.distinct);
    }

    #[test]
    fn membership_changes_are_explored_and_stay_safe() {
        let mut cfg = ExploreConfig::small(3, 7);
        (cfg.timeouts, cfg.reorders, cfg.crashes, cfg.proposals) = (true, 0, 0, 0);
        let fixed = explore(&cfg, |_| {});
        cfg.changes = 1;
        let root = State::new(Cluster::new(&cfg.template, 3, spares(&cfg), 0));
        assert_eq!(root.cluster.ids(), vec![1, 2, 3, 4], "a spare node to add");
        // Once there is a leader, it is offered the changes.
        let mut s = root.clone();
        s.cluster.apply(Choice::Timeout(1)).expect("campaign");
        for _ in 0..8 {
            for id in 1..=3 {
                s.cluster.apply(Choice::Sync(id)).expect("sync");
            }
            while !s.cluster.in_flight().is_empty() {
                s.cluster.apply(Choice::Deliver(0)).expect("deliver");
            }
        }
        assert_eq!(s.cluster.node(1).map(|n| n.role()), Some(raft_core::Role::Leader));
        let offered = choices(&cfg, &s);
        assert!(offered.contains(&Choice::Change(1, MembershipChange::AddLearner(4))), "{offered:?}");
        let changing = explore_safely(&cfg);
        assert!(changing.distinct > fixed.distinct, "{} vs {}", changing.distinct, fixed.distinct);
    }

    #[test]
    fn the_flags_name_what_differs_from_the_defaults() {
        let mut cfg = ExploreConfig::small(3, 0);
        assert_eq!(cfg.flags(), "--nodes 3 --depth 0");
        (cfg.clock, cfg.reorders, cfg.crashes, cfg.timeouts) = (2, 0, 0, true);
        assert_eq!(cfg.flags(), "--nodes 3 --depth 0 --crashes 0 --clock 2 --reorders 0 --timeouts");
    }

    #[test]
    fn fifo_links_explore_fewer_states_and_stay_safe() {
        let any = explore(&ExploreConfig::small(3, 9), |_| {});
        let mut cfg = ExploreConfig::small(3, 9);
        cfg.reorders = 0;
        let fifo = explore_safely(&cfg);
        assert!(fifo.distinct < any.distinct, "{} vs {}", fifo.distinct, any.distinct);
        assert!(fifo.distinct > 1_000, "still a search: {}", fifo.distinct);
    }

    #[test]
    fn jumping_to_timeouts_explores_more_per_level() {
        // A timeout choice starts an election or a heartbeat round at once, so each level holds
        // more distinct states than with single ticks (whose first choices only move counters).
        let mut cfg = ExploreConfig::small(3, 4);
        cfg.timeouts = true;
        let report = explore_safely(&cfg);
        let ticks = explore(&ExploreConfig::small(3, 4), |_| {});
        assert!(report.distinct > ticks.distinct, "{} vs {}", report.distinct, ticks.distinct);
    }

    #[test]
    fn the_fingerprint_ignores_the_order_of_messages_in_flight() {
        let cfg = ExploreConfig::small(3, 0);
        let mut s = State::new(Cluster::new(&cfg.template, 3, 0, 0));
        // Node 1 campaigns at least twice (timeouts of 2-3 ticks), so a link holds two messages.
        for _ in 0..6 {
            s.cluster.apply(Choice::Tick(1)).expect("tick");
        }
        let on_link = |c: &Cluster| c.in_flight().iter().filter(|m| m.from == 1 && m.to == 2).count();
        assert!(on_link(&s.cluster) >= 2, "two vote requests on one link");
        let before = fingerprint(&s, false);
        let mut t = s.clone();
        t.cluster.reverse_in_flight();
        assert!(t.cluster.in_flight().len() >= 2, "two messages to reorder");
        assert_eq!(fingerprint(&t, false), before);
        assert_ne!(fingerprint(&t, true), fingerprint(&s, true), "with FIFO links the order on a link is state");
        t.cluster.apply(Choice::Sync(1)).expect("sync");
        assert_ne!(fingerprint(&t, false), before, "a different disk is a different state");
    }
}
