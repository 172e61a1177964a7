//! Raft's safety properties, checked incrementally after every simulated
//! event (Raft paper Figure 3, plus the durability rules of the core's
//! contract). Each check looks only at what the event changed, so checking
//! stays cheap enough to run on every event of every seed.

use std::collections::{BTreeMap, HashMap};

use raft_core::{Action, AppendEntriesResponse, Entry, HardState, Index, MessageBody, Node, NodeId, Role, Term};

use crate::disk::SimDisk;
use crate::hash::{FixedState, hash_bytes};
use crate::idmap::IdMap;

/// Deterministic hashing: no per-process random seed.
type FixedMap<K, V> = HashMap<K, V, FixedState>;

/// A broken safety property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property (`election safety`, `log matching`, ...).
    pub property: &'static str,
    /// What exactly was seen.
    pub detail: String,
}

#[cold]
#[inline(never)]
fn violation(property: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { property, detail })
}

/// Content fingerprint of an entry (kind and payload).
pub fn fingerprint(e: &Entry) -> u64 {
    // Deterministic and good enough to tell payloads apart; a word at a time, since every entry is
    // fingerprinted on every node that writes, commits and applies it.
    hash_bytes(e.kind as u64, &e.data)
}

#[derive(Clone, Copy, Debug, Default)]
struct NodeWatch {
    incarnation: u64,
    commit: Index,
    applied: Index,
    durable: HardState,
}

/// (index, term) -> (fingerprint, term of the previous entry) of the first copy of every entry any
/// node wrote. Indexes are dense and nearly always hold one term, so the first term at each index
/// sits in a vector slot and only the other terms of contested indexes go to a map: every entry
/// every node writes is looked up here.
#[derive(Clone, Default)]
struct EntryCopies {
    /// By index - 1: the first term seen there, with its (fingerprint, previous term).
    first: Vec<(Term, (u64, Term))>,
    /// Every other (index, term).
    other: FixedMap<(Index, Term), (u64, Term)>,
}

impl EntryCopies {
    /// What the first copy of entry (index, term) was, recording `this` as it if there is none.
    fn first_copy(&mut self, index: Index, term: Term, this: (u64, Term)) -> (u64, Term) {
        let pos = (index - 1) as usize;
        if pos == self.first.len() {
            let seen = if self.other.is_empty() { this } else { self.other.remove(&(index, term)).unwrap_or(this) };
            self.first.push((term, seen));
            return seen;
        }
        match self.first.get(pos) {
            Some(&(t, seen)) if t == term => seen,
            // Written before any copy of an earlier index (impossible for a log, kept exact anyway).
            None => *self.other.entry((index, term)).or_insert(this),
            Some(_) => *self.other.entry((index, term)).or_insert(this),
        }
    }
}

/// Global knowledge the checks compare every node against.
#[derive(Clone, Default)]
pub struct Safety {
    /// term -> the node that led it.
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) -> (fingerprint, term of the previous entry).
    entries: EntryCopies,
    /// Committed entries by index - 1: (term, fingerprint).
    committed: Vec<(Term, u64)>,
    /// By index - 1: the term of the node that first reported each entry
    /// committed (at least the term it was committed in).
    commit_terms: Vec<Term>,
    nodes: IdMap<NodeWatch>,
    /// Each node's log, as terms by index - 1, mirrored from its writes.
    shadow: IdMap<Vec<Term>>,
}

impl Safety {
    /// A checker that has seen nothing yet.
    pub fn new() -> Safety {
        Safety::default()
    }

    /// Number of entries known committed.
    pub fn committed_len(&self) -> Index {
        self.committed.len() as Index
    }

    /// The committed entry at `index` as (term, fingerprint).
    pub fn committed_at(&self, index: Index) -> Option<(Term, u64)> {
        self.committed.get(index.checked_sub(1)? as usize).copied()
    }

    /// Checks a node after it stepped, given the actions it produced.
    pub fn after_step(
        &mut self,
        id: NodeId,
        incarnation: u64,
        node: &Node,
        disk: &SimDisk,
        actions: &[Action],
    ) -> Result<(), Violation> {
        let w = self.nodes.get_or_default(id);
        let mut applied = if w.incarnation == incarnation { w.applied } else { 0 };
        // Installing (or restarting from) a snapshot moves the applied index
        // without an Apply: applying resumes after the snapshot.
        applied = applied.max(node.snapshot().map_or(0, |m| m.last_included_index));
        for a in actions {
            match a {
                Action::Persist(p) => {
                    if let Some(m) = &p.snapshot {
                        // Entries the snapshot covers stay in the mirror as
                        // placeholders: no truncation ever reaches them.
                        let shadow = self.shadow.get_or_default(id);
                        let n = m.last_included_index as usize;
                        if shadow.len() < n {
                            shadow.resize(n, 0);
                        }
                    }
                    if let Some(from) = p.truncate_from {
                        self.check_truncation(id, from)?;
                    }
                    let shadow = self.shadow.get_or_default(id);
                    shadow.extend(p.entries.iter().map(|e| e.term));
                    self.check_new_entries(id, node, &p.entries)?
                }
                Action::Send { to, message } => self.check_send(id, *to, message, node, disk)?,
                Action::Apply { entries } => {
                    self.check_apply_durable(id, applied, entries, disk)?;
                    applied = entries.last().map_or(applied, |e| e.index);
                    self.check_apply(id, node.term(), entries)?
                }
                Action::RoleChanged { role: Role::Leader, term, .. } => self.check_new_leader(id, *term, node)?,
                _ => {}
            }
        }
        self.check_progress(id, incarnation, node)
    }

    /// No node ever removes a committed entry it holds (a follower may drop
    /// its own divergent entries at committed indexes, never the committed
    /// ones themselves).
    fn check_truncation(&mut self, id: NodeId, from: Index) -> Result<(), Violation> {
        let shadow = self.shadow.get_or_default(id);
        let keep = (from - 1) as usize;
        for (pos, &term) in shadow.iter().enumerate().skip(keep) {
            if let Some(&(t, _)) = self.committed.get(pos) {
                if t == term {
                    let index = pos + 1;
                    return violation(
                        "committed entry truncated",
                        format!("node {id} truncates from {from}, removing committed entry {index}/{term}"),
                    );
                }
            }
        }
        shadow.truncate(keep);
        Ok(())
    }

    /// A restarted node's log is what its disk held (after its snapshot).
    pub fn on_restart(&mut self, id: NodeId, durable: &raft_core::PersistedState) {
        let base = durable.snapshot.as_ref().map_or(0, |m| m.last_included_index) as usize;
        let mut shadow = vec![0; base];
        shadow.extend(durable.entries.iter().map(|e| e.term));
        self.shadow.insert(id, shadow);
    }

    /// Log matching: an (index, term) pair names one entry everywhere, with
    /// one predecessor term. By induction this is Figure 3's Log Matching.
    fn check_new_entries(&mut self, id: NodeId, node: &Node, entries: &[Entry]) -> Result<(), Violation> {
        let mut prev_term = entries.first().and_then(|e| node.term_at(e.index - 1)).unwrap_or(0);
        for e in entries {
            let this = (fingerprint(e), prev_term);
            let seen = self.entries.first_copy(e.index, e.term, this);
            if seen != this {
                return violation(
                    "log matching",
                    format!(
                        "node {id} holds entry {}/{} differing from another copy (content or predecessor term {} vs {})",
                        e.index, e.term, prev_term, seen.1
                    ),
                );
            }
            prev_term = e.term;
        }
        Ok(())
    }

    /// Durability: nothing is acknowledged or voted for before it is on disk.
    fn check_send(
        &self,
        id: NodeId,
        to: NodeId,
        m: &raft_core::Message,
        node: &Node,
        disk: &SimDisk,
    ) -> Result<(), Violation> {
        let durable = disk.durable();
        match &m.body {
            MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index }) => {
                if durable.hard_state.term != m.term {
                    return violation(
                        "ack before persist",
                        format!("node {id} acked in term {} with durable term {}", m.term, durable.hard_state.term),
                    );
                }
                let m = *match_index;
                let in_log = node.term_at(m);
                // The acked entry must be on disk (or in the durable
                // snapshot), and be the same entry the node holds (not an
                // older one a truncation is replacing). An entry the node's
                // snapshot covers is committed: it must be durable as that.
                let covered = node.snapshot().is_some_and(|s| m <= s.last_included_index);
                let term = in_log.or_else(|| covered.then(|| self.committed_at(m).map(|(t, _)| t)).flatten());
                let durable = term.is_some_and(|t| disk.durably_holds(m, t));
                if m > 0 && !durable {
                    return violation(
                        "ack before persist",
                        format!(
                            "node {id} acked index {match_index} (term {in_log:?}) with {:?} durable there",
                            disk.durable_term(*match_index)
                        ),
                    );
                }
            }
            MessageBody::RequestVoteResponse(r) if r.granted && !r.pre_vote => {
                let want = HardState { term: m.term, vote: Some(to) };
                if durable.hard_state != want {
                    return violation(
                        "vote before persist",
                        format!(
                            "node {id} granted {to} a vote in term {} with durable {:?}",
                            m.term, durable.hard_state
                        ),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Apply hands over entries in order, right after the last applied one,
    /// and never beyond what is durable on this node's disk.
    fn check_apply_durable(
        &self,
        id: NodeId,
        applied: Index,
        entries: &[Entry],
        disk: &SimDisk,
    ) -> Result<(), Violation> {
        for (k, e) in entries.iter().enumerate() {
            if e.index != applied + 1 + k as Index {
                return violation(
                    "apply order",
                    format!("node {id} applied {} after {}", e.index, applied + k as Index),
                );
            }
            if !disk.durably_holds(e.index, e.term) {
                let on_disk = disk.durable_term(e.index);
                return violation(
                    "apply before persist",
                    format!("node {id} applied {}/{} while its disk holds {on_disk:?} there", e.index, e.term),
                );
            }
        }
        Ok(())
    }

    /// State machine safety: no two nodes apply different entries at an index.
    fn check_apply(&mut self, id: NodeId, node_term: Term, entries: &[Entry]) -> Result<(), Violation> {
        for e in entries {
            self.record_committed(id, node_term, e.index, e.term, fingerprint(e))?;
        }
        Ok(())
    }

    fn record_committed(
        &mut self,
        id: NodeId,
        at_term: Term,
        index: Index,
        term: Term,
        fp: u64,
    ) -> Result<(), Violation> {
        let pos = (index - 1) as usize;
        if pos < self.committed.len() {
            if self.committed[pos] != (term, fp) {
                let (t, _) = self.committed[pos];
                return violation(
                    "state machine safety",
                    format!("node {id} committed {index}/{term} but {index}/{t} was committed before"),
                );
            }
        } else if pos == self.committed.len() {
            self.committed.push((term, fp));
            self.commit_terms.push(at_term);
        } else {
            return violation(
                "commit gap",
                format!("node {id} committed {index} with only {} known", self.committed.len()),
            );
        }
        Ok(())
    }

    /// Election safety and leader completeness.
    fn check_new_leader(&mut self, id: NodeId, term: Term, node: &Node) -> Result<(), Violation> {
        if let Some(&other) = self.leaders.get(&term) {
            if other != id {
                return violation("election safety", format!("nodes {other} and {id} both lead term {term}"));
            }
        }
        self.leaders.insert(term, id);
        // Entries compacted into the leader's snapshot are judged by the
        // snapshot checks; the rest must be in its log. Only entries
        // committed in a lower term count (§5.4.3: "present in the logs of
        // the leaders for all higher-numbered terms"): a candidate of an old
        // term whose own vote became durable late can still win that term
        // after a newer leader committed entries (seed 9672 of
        // `--profile lease-drift`), and it can never commit anything.
        let compacted = node.first_index() - 1;
        let entries = self.committed.iter().zip(&self.commit_terms).enumerate().skip(compacted as usize);
        for (i, (&(t, _), &at)) in entries {
            let index = i as Index + 1;
            if at < term && node.term_at(index) != Some(t) {
                return violation(
                    "leader completeness",
                    format!("leader {id} of term {term} lacks committed entry {index}/{t}"),
                );
            }
        }
        Ok(())
    }

    /// Commit and applied never go back (within one incarnation), and what
    /// a node commits agrees with what everyone committed.
    fn check_progress(&mut self, id: NodeId, incarnation: u64, node: &Node) -> Result<(), Violation> {
        let w = self.nodes.get_or_default(id);
        if w.incarnation != incarnation {
            *w = NodeWatch { incarnation, durable: w.durable, ..NodeWatch::default() };
        }
        let (old_commit, old_applied) = (w.commit, w.applied);
        if node.commit_index() < old_commit || node.applied_index() < old_applied {
            return violation(
                "monotonic progress",
                format!(
                    "node {id} commit {}->{} applied {}->{}",
                    old_commit,
                    node.commit_index(),
                    old_applied,
                    node.applied_index()
                ),
            );
        }
        let w = self.nodes.get_mut(&id).expect("watch");
        w.commit = node.commit_index();
        w.applied = node.applied_index();
        let snapshot = node.snapshot().map_or((0, 0), |m| (m.last_included_index, m.last_included_term));
        for index in old_commit + 1..=node.commit_index() {
            if let Some(e) = node.entry(index) {
                let fp = fingerprint(e);
                self.record_committed(id, node.term(), index, e.term, fp)?;
                continue;
            }
            if index > snapshot.0 {
                return violation("commit beyond log", format!("node {id} commits {index} it does not hold"));
            }
            // Committed by installing a snapshot: it must hold only entries
            // known committed, ending in the committed entry at its index.
            let known = self.committed.get((index - 1) as usize).map(|&(t, _)| t);
            if known.is_none() || (index == snapshot.0 && known != Some(snapshot.1)) {
                return violation(
                    "snapshot of uncommitted entries",
                    format!(
                        "node {id} installed a snapshot through {}/{}, but entry {index} is committed as {known:?}",
                        snapshot.0, snapshot.1
                    ),
                );
            }
        }
        Ok(())
    }

    /// Persisted term and vote never go back.
    pub fn after_sync(&mut self, id: NodeId, disk: &SimDisk) -> Result<(), Violation> {
        let now = disk.durable().hard_state;
        let w = self.nodes.get_or_default(id);
        let before = w.durable;
        let ok =
            now.term > before.term || (now.term == before.term && (before.vote.is_none() || now.vote == before.vote));
        if !ok {
            return violation("durable hard state", format!("node {id} durable hard state went {before:?} -> {now:?}"));
        }
        w.durable = now;
        Ok(())
    }
}
