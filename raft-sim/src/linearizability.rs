//! Linearizability checker for key-value client histories.
//!
//! The store is modelled as one independent register per key, each initially absent (`None`),
//! holding either nothing or an integer: `SET` writes it, `GET` reads it, a CAS and `SET NX`
//! (a CAS from absent) write it conditionally, `INCR` adds one (absent counts as 0) and `DEL`
//! makes it absent (see `docs/history-format.md` for the exact semantics).
//!
//! Linearizability is *local* (P-compositional, Herlihy & Wing): a history is linearizable iff
//! its restriction to every key is, so [`check`] partitions the history by key and searches each
//! key separately. That turns one search exponential in the whole history into many small ones.
//!
//! Per key we run the Wing & Gong search with Lowe's memoisation (the "WGL" algorithm also used
//! by Porcupine): invocation and response events sit in a doubly linked list ordered by time;
//! the search repeatedly picks an operation whose invocation precedes every outstanding response,
//! applies it to the register model, and removes it from the list, backtracking when a response
//! is reached that no pending candidate can satisfy. Configurations already explored — the set of
//! linearized operations plus the register value — are cached, so each is explored at most once.
//!
//! Operations without a response ([`Outcome::Unknown`]) get a response time of +infinity, so they
//! can be linearized anywhere after their invocation, and the search succeeds as soon as every
//! *completed* operation is linearized: left-over unknown operations are taken never to have
//! happened.
//!
//! On top of plain WGL the search uses exact reductions (each preserves the verdict; proptests
//! compare against brute force): reads of never-written values are rejected up front; written
//! values nobody observes are merged into one model state; a legal read is taken without
//! branching; among identical candidates only the one with the earliest deadline is tried; and a
//! write with unknown outcome is only placed directly before an operation that needs it. The
//! last two keep timed-out writes, which otherwise double the search space each, cheap.
//!
//! None of this relies on unique values: the memo key is the linearized set plus the register
//! state, whatever produced it, so `INCR` results that repeat (after a `DEL`, or equal to a
//! `SET` value) are fine. An unknown `INCR` makes "observed" transitive: a value is observed if
//! some read or condition looks at it or at a value up to that many increments above it.
//!
//! Semantics worth knowing when producing histories:
//! - Times are virtual microseconds. Intervals are closed: an operation completing at `t` and
//!   one invoked at `t` are treated as concurrent. Simulator events can share an instant, so
//!   this avoids reporting violations that merely reflect same-instant ordering; it can only
//!   hide, never invent, a bug.
//! - The search is bounded by a [`Budget`]; when exhausted the key is reported
//!   [`CheckResult::Undecided`] instead of hanging.
//! - Everything is deterministic: no randomly seeded hashing, keys are checked in ascending order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use crate::hash::FixedState;

use serde::{Deserialize, Serialize};

pub use crate::history::{OpKind, Operation, Outcome, from_json, to_json};

/// Limits on the work [`check`] may do, so pathological histories cannot hang a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Budget {
    /// Maximum search states explored per key: every configuration (set of linearized
    /// operations plus register value) the search enters counts, including re-entries after
    /// backtracking. Exceeding it makes the key (and the whole check, unless another key is a
    /// definite violation) [`CheckResult::Undecided`]. Work per state is bounded by the number
    /// of concurrent candidates, so this bounds time too.
    pub max_states_per_key: u64,
}

impl Budget {
    /// Default per-key state budget: seconds at worst, far above what realistic histories need.
    pub const DEFAULT_STATES_PER_KEY: u64 = 1_000_000;

    /// A budget of `max_states_per_key` explored states per key.
    pub const fn new(max_states_per_key: u64) -> Self {
        Self { max_states_per_key }
    }

    /// No limit. Only for tests of small, known histories: the search is exponential in the
    /// worst case.
    pub const fn unlimited() -> Self {
        Self { max_states_per_key: u64::MAX }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(Self::DEFAULT_STATES_PER_KEY)
    }
}

/// Verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckResult {
    /// Some total order of the operations respects real time and the register semantics.
    Linearizable,
    /// No such order exists for the operations on `key` (the first such key in ascending order).
    NotLinearizable {
        /// The key whose sub-history is not linearizable.
        key: u64,
        /// Ids of the operations at the point where the search got stuck deepest: the operation
        /// that had to take effect by its response time plus the other candidates that could have
        /// gone next (or the single offending operation for the fast-path checks).
        ops: Vec<u64>,
        /// Human-readable account of the failure, including the longest linearizable prefix.
        explanation: String,
    },
    /// The [`Budget`] ran out on `key` before a verdict (and no other key was a violation).
    Undecided {
        /// The first key, in ascending order, whose search exceeded the budget.
        key: u64,
    },
}

impl CheckResult {
    /// `true` only for [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Self::Linearizable)
    }

    /// `true` only for [`CheckResult::NotLinearizable`]: a definite consistency violation.
    pub fn is_violation(&self) -> bool {
        matches!(self, Self::NotLinearizable { .. })
    }
}

/// Checks `history` for linearizability against a map of independent registers (initially
/// `None`), key by key.
///
/// Malformed operations (a known outcome without a `complete_time`, a response before the
/// invocation, or an outcome that does not fit the operation kind) make the history
/// [`CheckResult::NotLinearizable`] with an explanation starting with "malformed": they indicate a
/// recording bug, which must not pass silently.
///
/// Returns the first violating key if any; otherwise the first key that exhausted `budget`;
/// otherwise [`CheckResult::Linearizable`].
pub fn check(history: &[Operation], budget: Budget) -> CheckResult {
    // BTreeMap: keys are checked (and reported) in a deterministic order.
    let mut by_key: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(op);
    }
    let mut undecided = None;
    for (key, ops) in by_key {
        match check_key(&ops, budget) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation { ops, explanation } => {
                return CheckResult::NotLinearizable { key, ops, explanation: format!("key {key}: {explanation}") };
            }
            KeyVerdict::Undecided => {
                undecided.get_or_insert(key);
            }
        }
    }
    match undecided {
        Some(key) => CheckResult::Undecided { key },
        None => CheckResult::Linearizable,
    }
}

/// Per-key verdict; the key is added by [`check`].
enum KeyVerdict {
    Linearizable,
    Violation { ops: Vec<u64>, explanation: String },
    Undecided,
}

/// A register value as seen by [`Step`]: `Option<u64>` as recorded, or an interned `u32` during
/// the search. Both have a distinguished "absent" value.
trait Value: Copy + Eq + Hash {
    /// The key does not exist (never written, or deleted).
    const ABSENT: Self;
}

impl Value for Option<u64> {
    const ABSENT: Self = None;
}

impl Value for u32 {
    const ABSENT: Self = NIL;
}

/// The effect of one operation on the register model, with the observed result folded in so the
/// search only has to ask "is this legal here, and what is the new value?".
///
/// Several recorded kinds share a step: `SET NX` is a CAS expecting [`Value::ABSENT`], `DEL`
/// returning 0 is a read of `ABSENT`, and a `DEL` with unknown outcome is a put of `ABSENT`
/// (if it happened, the key is absent afterwards whatever it held).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step<V> {
    Put(V),
    Read(V),
    /// `success: None` means the response is unknown. Only the successful branch is worth
    /// exploring then: a failed CAS has no effect, exactly like never linearizing it.
    Cas {
        expected: V,
        new: V,
        success: Option<bool>,
    },
    /// A `DEL` that removed the key: legal iff it is present; leaves it absent.
    Del,
    /// An `INCR` that returned `to`: legal iff the register holds `from` (`to - 1`), or is absent
    /// and `or_absent` (`to` = 1: absent counts as 0).
    Incr {
        from: V,
        to: V,
        or_absent: bool,
    },
    /// An `INCR` with unknown outcome: adds one to whatever the register holds (absent counts as
    /// 0). The only step whose written value depends on the state, so it is the only user of
    /// the successor function passed to [`Step::apply`].
    IncrUnknown,
}

impl<V: Value> Step<V> {
    /// Applies the operation to register value `state`: the new value, or `None` if the observed
    /// result is impossible from `state`. `succ` is the successor function of `INCR` (`None` on
    /// overflow).
    #[inline]
    fn apply(self, state: V, succ: impl FnOnce(V) -> Option<V>) -> Option<V> {
        match self {
            Step::Put(v) => Some(v),
            Step::Read(v) => (state == v).then_some(state),
            Step::Cas { expected, new, success: Some(true) | None } => (state == expected).then_some(new),
            Step::Cas { expected, success: Some(false), .. } => (state != expected).then_some(state),
            Step::Del => (state != V::ABSENT).then_some(V::ABSENT),
            Step::Incr { from, to, or_absent } => (state == from || (or_absent && state == V::ABSENT)).then_some(to),
            Step::IncrUnknown => succ(state),
        }
    }

    /// Whether this operation, if legal, leaves the register unchanged (a read or a failed CAS).
    fn is_observer(self) -> bool {
        matches!(self, Step::Read(_) | Step::Cas { success: Some(false), .. })
    }

    /// Whether this operation is legal when the register holds *some* value no other operation
    /// looks at: a failed CAS (the register differs from `expected`) or a `DEL` that found the
    /// key. An unknown write of an unobserved value can explain such an operation.
    fn accepts_any_value(self) -> bool {
        matches!(self, Step::Cas { success: Some(false), .. } | Step::Del)
    }
}

/// `INCR` on recorded values: absent counts as 0; `None` on overflow (the model does not wrap).
fn incr(v: Option<u64>) -> Option<Option<u64>> {
    match v {
        None => Some(Some(1)),
        Some(v) => v.checked_add(1).map(Some),
    }
}

/// An operation of one key, prepared for the search.
struct KeyOp<'a> {
    op: &'a Operation,
    step: Step<Option<u64>>,
    /// `false` for unknown outcomes: response at +infinity, may be left out entirely.
    complete: bool,
}

/// Validates `op` and converts it; `Ok(None)` for operations that cannot affect the verdict.
#[inline]
fn prepare(op: &Operation) -> Result<Option<KeyOp<'_>>, String> {
    let complete = op.is_complete();
    if complete {
        match op.complete_time {
            None => return Err(format!("malformed operation {op}: a known outcome needs a complete_time")),
            Some(t) if t < op.invoke_time => {
                return Err(format!("malformed operation {op}: completes before it is invoked"));
            }
            Some(_) => {}
        }
    }
    let step = match (op.kind, op.outcome) {
        // A read without a response constrains nothing and changes nothing.
        (OpKind::Get, Outcome::Unknown) => return Ok(None),
        (OpKind::Get, Outcome::Read { value }) => Step::Read(value),
        (OpKind::Put { value }, Outcome::Ok | Outcome::Unknown) => Step::Put(Some(value)),
        (OpKind::Cas { expected, new }, Outcome::Cas { success }) => {
            Step::Cas { expected, new: Some(new), success: Some(success) }
        }
        (OpKind::Cas { expected, new }, Outcome::Unknown) => Step::Cas { expected, new: Some(new), success: None },
        (OpKind::SetNx { value }, Outcome::Written { applied }) => {
            Step::Cas { expected: None, new: Some(value), success: Some(applied) }
        }
        (OpKind::SetNx { value }, Outcome::Unknown) => Step::Cas { expected: None, new: Some(value), success: None },
        (OpKind::Incr, Outcome::Value { value: 0 }) => {
            // Not a recording error but a wrong answer: no state of the model produces it.
            return Err(format!("{op} returns 0, but INCR of an absent key or a non-negative value is at least 1"));
        }
        (OpKind::Incr, Outcome::Value { value }) => {
            Step::Incr { from: Some(value - 1), to: Some(value), or_absent: value == 1 }
        }
        (OpKind::Incr, Outcome::Unknown) => Step::IncrUnknown,
        (OpKind::Del, Outcome::Deleted { count: 0 }) => Step::Read(None),
        (OpKind::Del, Outcome::Deleted { count: 1 }) => Step::Del,
        (OpKind::Del, Outcome::Deleted { .. }) => {
            return Err(format!("malformed operation {op}: DEL of one key removes at most 1"));
        }
        (OpKind::Del, Outcome::Unknown) => Step::Put(None),
        _ => return Err(format!("malformed operation {op}: outcome does not match the operation kind")),
    };
    Ok(Some(KeyOp { op, step, complete }))
}

/// Checks the operations of one key.
fn check_key(raw: &[&Operation], budget: Budget) -> KeyVerdict {
    let mut ops = Vec::with_capacity(raw.len());
    for op in raw {
        match prepare(op) {
            Ok(Some(k)) => ops.push(k),
            Ok(None) => {}
            Err(explanation) => return KeyVerdict::Violation { ops: vec![op.id], explanation },
        }
    }
    if let Some(v) = precheck_reads(&ops) {
        return v;
    }
    let mut observed = Observed::new(&ops);
    if drop_unobservable_writes(&mut ops, &observed) {
        observed = Observed::new(&ops);
    }
    if !ops.iter().any(|o| o.complete) {
        // Only unknown-outcome operations: "none of them happened" is a valid linearization.
        return KeyVerdict::Linearizable;
    }
    // Stable sort by invocation; ties keep a deterministic order via the id.
    ops.sort_by_key(|o| (o.op.invoke_time, o.op.id));
    // Monomorphise on the bitset width: a u128 is copied, hashed and compared far faster than a
    // heap-allocated word vector, and most per-key histories have at most 128 operations.
    if ops.len() <= 128 {
        Search::<u128>::new(&ops, observed).run(budget)
    } else {
        Search::<Box<[u64]>>::new(&ops, observed).run(budget)
    }
}

/// Cheap necessary conditions on reads, checked before the (exponential worst-case) search: a
/// value that was never written, or whose every writer was invoked after the read returned,
/// cannot be read. They also yield much clearer explanations than a failed search.
///
/// An `INCR` with unknown outcome may write any value, so it counts as a writer of every value
/// from its invocation on.
fn precheck_reads(ops: &[KeyOp<'_>]) -> Option<KeyVerdict> {
    // Earliest invocation of a potential writer per value.
    let mut first_write: HashMap<u64, u64, FixedState> = HashMap::default();
    let mut first_incr_unknown: Option<u64> = None;
    for o in ops {
        let written = match o.step {
            Step::Put(Some(v)) | Step::Incr { to: Some(v), .. } => v,
            Step::Cas { new: Some(v), success: Some(true) | None, .. } => v,
            Step::IncrUnknown => {
                let t = o.op.invoke_time;
                first_incr_unknown = Some(first_incr_unknown.map_or(t, |u| u.min(t)));
                continue;
            }
            _ => continue,
        };
        let t = first_write.entry(written).or_insert(u64::MAX);
        *t = (*t).min(o.op.invoke_time);
    }
    for o in ops {
        let (Step::Read(Some(v)), true) = (o.step, o.complete) else { continue };
        let returned = o.op.complete_time.unwrap_or(u64::MAX);
        let first = match (first_write.get(&v), first_incr_unknown) {
            (Some(&t), Some(u)) => Some(t.min(u)),
            (t, u) => t.copied().or(u),
        };
        match first {
            None => {
                return Some(KeyVerdict::Violation {
                    ops: vec![o.op.id],
                    explanation: format!("{} reads value {v}, which no operation ever wrote", o.op),
                });
            }
            Some(t) if t > returned => {
                return Some(KeyVerdict::Violation {
                    ops: vec![o.op.id],
                    explanation: format!(
                        "{} reads value {v}, but the first operation that could write it was invoked at {t}us, after the read returned",
                        o.op
                    ),
                });
            }
            Some(_) => {}
        }
    }
    None
}

/// The values some operation can tell apart from others.
///
/// Directly observed (`direct`): values returned by a completed read, expected by a CAS, or
/// incremented by a completed `INCR` (which returned that value plus one). With `reach` unknown
/// `INCR`s on the key, a value `v` is observed if some directly observed value lies in
/// `v..=v + reach`: up to `reach` increments can carry `v` to it. Every other value is
/// indistinguishable from any other: no operation's legality or effect depends on which of them
/// the register holds (unknown `INCR`s keep it among them, see [`Interner`]).
///
/// Each directly observed value already gets its interned search state here (from 2 on, in
/// order of first appearance), so interning a value costs one lookup.
struct Observed {
    direct: HashMap<u64, u32, FixedState>,
    /// The keys of `direct`, sorted; only built when `reach > 0`.
    sorted: Vec<u64>,
    reach: u64,
}

impl Observed {
    fn new(ops: &[KeyOp<'_>]) -> Self {
        let mut direct: HashMap<u64, u32, FixedState> = HashMap::default();
        let mut reach = 0;
        for o in ops {
            let v = match o.step {
                Step::Read(Some(v)) if o.complete => v,
                Step::Cas { expected: Some(v), .. } | Step::Incr { from: Some(v), .. } => v,
                Step::IncrUnknown => {
                    reach += 1;
                    continue;
                }
                _ => continue,
            };
            let fresh = fresh_id(direct.len());
            direct.entry(v).or_insert(fresh);
        }
        let mut sorted = Vec::new();
        if reach > 0 {
            sorted.extend(direct.keys().copied());
            sorted.sort_unstable();
        }
        Observed { direct, sorted, reach }
    }

    #[inline]
    fn contains(&self, v: u64) -> bool {
        if self.reach == 0 {
            return self.direct.contains_key(&v);
        }
        // The smallest directly observed value >= v, if within reach.
        let i = self.sorted.partition_point(|&o| o < v);
        self.sorted.get(i).is_some_and(|&o| o - v <= self.reach)
    }
}

/// The interned id of the `n`-th distinct observed value.
#[inline]
fn fresh_id(n: usize) -> u32 {
    u32::try_from(n + 2).ok().filter(|&i| i != NO_SUCC).expect("fewer than 2^32 - 3 values per key")
}

/// Removes unknown-outcome writes of a value nobody can observe (see [`Observed`]).
///
/// Timed-out writes are common under partitions and are the main source of search blow-up: each
/// may be linearized anywhere after its invocation. Take a linearization that includes such a
/// write `W` of `v`. Until the next operation that sets the register regardless of its value (a
/// put, an unknown `DEL`), the register holds `v` plus the unknown `INCR`s applied since, none of
/// them observed. The only operations legal there are those unknown `INCR`s (which can be
/// dropped with `W`) and ones that accept any value ([`Step::accepts_any_value`]: a failed CAS,
/// a `DEL` that found the key), which `W` might be the only explanation for. So `W` may be
/// dropped, preserving the verdict, unless such an operation can be linearized after it, that
/// is, unless one completes at or after `W`'s invocation.
///
/// Writes of an absent value (unknown `DEL`s) and unknown `INCR`s are always kept.
///
/// `observed` must be computed from `ops`. Returns whether it may be stale now: a dropped CAS
/// may have been the only one to expect some value.
fn drop_unobservable_writes(ops: &mut Vec<KeyOp<'_>>, observed: &Observed) -> bool {
    // One pass: the last completion of a blocker, and the last invocation of a candidate.
    let (mut last_blocker, mut last_candidate) = (None, None);
    for o in ops.iter() {
        if o.step.accepts_any_value() {
            last_blocker = last_blocker.max(o.op.complete_time);
        } else if !o.complete && matches!(o.step, Step::Put(Some(_)) | Step::Cas { new: Some(_), .. }) {
            last_candidate = last_candidate.max(Some(o.op.invoke_time));
        }
    }
    if last_candidate.is_none() || last_candidate <= last_blocker {
        return false;
    }
    let mut stale = false;
    ops.retain(|o| {
        if o.complete || last_blocker.is_some_and(|t| t >= o.op.invoke_time) {
            return true;
        }
        let keep = match o.step {
            Step::Put(Some(v)) | Step::Cas { new: Some(v), .. } => observed.contains(v),
            _ => true,
        };
        stale |= !keep && matches!(o.step, Step::Cas { expected: Some(_), .. });
        keep
    });
    stale
}

/// Interned register value "absent".
const NIL: u32 = 0;
/// Interned register value standing for every value nobody observes.
const UNOBSERVED: u32 = 1;
/// Successor table entry of a value whose increment overflows.
const NO_SUCC: u32 = u32::MAX;

/// Maps register values to dense `u32` states for the search.
///
/// All unobserved values (see [`Observed`]) collapse into [`UNOBSERVED`]: no operation's
/// legality or effect can tell them apart, so the collapse is exact, and it lets the memo merge
/// the many orders of concurrent writes whose values are never read.
///
/// An unknown `INCR` maps an interned value to the interned successor; [`UNOBSERVED`] maps to
/// itself. That is exact too: an unobserved `u` has no directly observed value within
/// `u..=u + reach`, so after `j` unknown increments (`reach - j` left) none is within reach of
/// `u + j` either, and it still behaves like any unobserved value.
struct Interner {
    observed: Observed,
    /// Observed values that are not directly observed (within reach of one), interned on first
    /// use, continuing the numbering of [`Observed::direct`].
    extra: HashMap<u64, u32, FixedState>,
}

impl Interner {
    #[inline]
    fn id(&mut self, v: Option<u64>) -> u32 {
        let Some(v) = v else { return NIL };
        if let Some(&id) = self.observed.direct.get(&v) {
            return id;
        }
        if self.observed.reach == 0 || !self.observed.contains(v) {
            return UNOBSERVED;
        }
        let fresh = fresh_id(self.observed.direct.len() + self.extra.len());
        *self.extra.entry(v).or_insert(fresh)
    }
}

/// Interns the steps of `ops`, given what is observed in them; also returns the successor table
/// of unknown `INCR`s (indexed by interned value, [`NO_SUCC`] on overflow), empty when the key
/// has none.
fn intern(ops: &[KeyOp<'_>], observed: Observed) -> (Vec<Step<u32>>, Vec<u32>) {
    let mut interner = Interner { observed, extra: HashMap::default() };
    let steps = ops
        .iter()
        .map(|o| match o.step {
            Step::Put(v) => Step::Put(interner.id(v)),
            Step::Read(v) => Step::Read(interner.id(v)),
            Step::Cas { expected, new, success } => {
                Step::Cas { expected: interner.id(expected), new: interner.id(new), success }
            }
            Step::Del => Step::Del,
            Step::Incr { from, to, or_absent } => {
                Step::Incr { from: interner.id(from), to: interner.id(to), or_absent }
            }
            Step::IncrUnknown => Step::IncrUnknown,
        })
        .collect();
    let mut succ = Vec::new();
    if interner.observed.reach > 0 {
        // The value of every id so far, then a worklist: interning a successor may add a value,
        // whose successor is then needed too. Every value added is observed, and those are
        // finite, so the chains end (at an unobserved value or an overflow).
        let mut values = vec![0; interner.observed.direct.len() + interner.extra.len()];
        for (&v, &id) in interner.observed.direct.iter().chain(&interner.extra) {
            values[id as usize - 2] = v;
        }
        let mut id_of = |w: Option<u64>, values: &mut Vec<u64>| {
            let Some(w) = w else { return NO_SUCC };
            let id = interner.id(Some(w));
            if id as usize == values.len() + 2 {
                values.push(w);
            }
            id
        };
        succ.push(id_of(Some(1), &mut values));
        succ.push(UNOBSERVED);
        let mut i = 0;
        while i < values.len() {
            succ.push(id_of(values[i].checked_add(1), &mut values));
            i += 1;
        }
    }
    (steps, succ)
}

/// The set of linearized operations, indexed by position in the sorted per-key op list.
trait Bits: Clone + Eq + Hash {
    fn empty(n: usize) -> Self;
    fn set(&mut self, i: usize);
    fn clear(&mut self, i: usize);
}

impl Bits for u128 {
    fn empty(n: usize) -> Self {
        debug_assert!(n <= 128);
        0
    }
    #[inline]
    fn set(&mut self, i: usize) {
        *self |= 1 << i;
    }
    #[inline]
    fn clear(&mut self, i: usize) {
        *self &= !(1 << i);
    }
}

impl Bits for Box<[u64]> {
    fn empty(n: usize) -> Self {
        vec![0; n.div_ceil(64)].into_boxed_slice()
    }
    #[inline]
    fn set(&mut self, i: usize) {
        self[i / 64] |= 1 << (i % 64);
    }
    #[inline]
    fn clear(&mut self, i: usize) {
        self[i / 64] &= !(1 << (i % 64));
    }
}

/// Sentinel list node in front of the first event.
const HEAD: usize = 0;

/// WGL search state for one key. Events live in arrays indexed by node: node 0 is the head
/// sentinel, node `2n + 1` the tail sentinel, and every operation has a call and a return node.
/// Removing ("lifting") an operation unlinks both nodes; because lifts are undone in strict LIFO
/// order, relinking them in reverse restores the list exactly (dancing links), with no
/// allocation on the hot path.
struct Search<'a, B> {
    ops: &'a [KeyOp<'a>],
    steps: Vec<Step<u32>>,
    /// Successor of each interned value under an unknown `INCR` (see [`intern`]).
    succ: Vec<u32>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each event node: the operation index and whether it is the call (vs return) event.
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    /// Return node of each operation.
    ret_node: Vec<usize>,
    /// Symmetry class of each operation (operations with identical interned steps) and the
    /// number of members of each class.
    class: Vec<u32>,
    class_size: Vec<u32>,
    /// Lifted operations, innermost last.
    stack: Vec<Frame>,
    /// Register state after the lifted operations.
    state: u32,
    /// Completed operations not lifted yet; the search succeeds when this reaches zero.
    remaining: usize,
    /// Configurations entered so far, checked against the [`Budget`].
    explored: u64,
    _bits: std::marker::PhantomData<B>,
}

/// How an operation came to be lifted, which decides what backtracking over it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lift {
    /// One of several alternatives at its depth; the next one is tried on backtracking.
    Branch,
    /// Taken by the observer rule ([`Search::forced_candidate`]): the configuration before it
    /// fails iff the one after it does, so backtracking continues past it.
    Forced,
    /// A write with unknown outcome. The configuration after it is *constrained*: the next lift
    /// must be enabled by the write (see [`Search::run`]), and it is not memoised.
    Pending,
}

/// A lifted operation on the search stack.
struct Frame {
    call: usize,
    /// Register state before the operation.
    state: u32,
    kind: Lift,
}

/// Where the search got stuck with the most operations linearized, for the report.
struct Stuck {
    prefix: Vec<usize>,
    blocking: usize,
    candidates: Vec<usize>,
}

impl<'a, B: Bits> Search<'a, B> {
    /// `observed` must be computed from `ops`.
    fn new(ops: &'a [KeyOp<'a>], observed: Observed) -> Self {
        let n = ops.len();
        // (time, rank, op): at equal times calls come first (closed intervals: touching
        // operations are concurrent), then finite returns; returns of unknown-outcome operations
        // come last of all, so once the cursor reaches one, only unknown operations remain.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
        for (i, o) in ops.iter().enumerate() {
            events.push((o.op.invoke_time, 0, i));
            match (o.complete, o.op.complete_time) {
                (true, Some(t)) => events.push((t, 1, i)),
                _ => events.push((u64::MAX, 2, i)),
            }
        }
        events.sort_unstable();
        let nodes = 2 * n + 2;
        let (steps, succ) = intern(ops, observed);
        let mut classes: HashMap<Step<u32>, u32, FixedState> = HashMap::default();
        let mut class_size = Vec::new();
        let class = steps
            .iter()
            .map(|&step| {
                let c = *classes.entry(step).or_insert_with(|| {
                    class_size.push(0);
                    u32::try_from(class_size.len() - 1).expect("fewer than 2^32 classes")
                });
                class_size[c as usize] += 1;
                c
            })
            .collect();
        let mut s = Search {
            ops,
            steps,
            succ,
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|i| i.wrapping_sub(1)).collect(),
            node_op: vec![usize::MAX; nodes],
            node_is_call: vec![false; nodes],
            ret_node: vec![0; n],
            class,
            class_size,
            stack: Vec::new(),
            state: NIL,
            remaining: ops.iter().filter(|o| o.complete).count(),
            explored: 0,
            _bits: std::marker::PhantomData,
        };
        for (k, &(_, rank, i)) in events.iter().enumerate() {
            let node = k + 1;
            s.node_op[node] = i;
            s.node_is_call[node] = rank == 0;
            if rank != 0 {
                s.ret_node[i] = node;
            }
        }
        s
    }

    #[inline]
    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    #[inline]
    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    /// Applies `step` to interned register value `state` (see [`Step::apply`]).
    #[inline(always)]
    fn apply(&self, step: Step<u32>, state: u32) -> Option<u32> {
        step.apply(state, |s| Some(self.succ[s as usize]).filter(|&t| t != NO_SUCC))
    }

    /// Whether operation `i` may be lifted next in register state `state`, given the state
    /// `before` the pending write that constrains this level, if any: it must be legal now and,
    /// when constrained, *enabled* by the write (see [`Search::run`]): illegal without it, or
    /// legal without it but with a different result, other than an observer legal either way.
    /// Only an unknown `INCR` has the middle case: its result depends on the state.
    #[inline(always)]
    fn allowed(&self, i: usize, state: u32, before: Option<u32>) -> Option<u32> {
        let step = self.steps[i];
        let next = self.apply(step, state)?;
        let Some(before) = before else { return Some(next) };
        match self.apply(step, before) {
            None => Some(next),
            Some(without) => (without != next && !(without == before && next == state)).then_some(next),
        }
    }

    /// A completed observer (read or failed CAS) among the current candidates (the calls
    /// before the first outstanding return) that is allowed in `state` (see [`Search::allowed`]).
    ///
    /// Such an operation can always be linearized right now: it leaves the register unchanged,
    /// and every operation that must precede it in real time is already linearized (its return
    /// would otherwise come first in the list). Any linearization of the rest can therefore be
    /// rearranged to put it first, so the configuration succeeds iff the one after lifting it
    /// does. Taking it without branching removes the factorial interleavings of concurrent
    /// reads, which otherwise dominate refuting a violation.
    fn forced_candidate(&self, state: u32, before: Option<u32>) -> Option<usize> {
        let mut node = self.next[HEAD];
        while self.node_is_call[node] {
            let i = self.node_op[node];
            if self.ops[i].complete && self.steps[i].is_observer() && self.allowed(i, state, before).is_some() {
                return Some(node);
            }
            node = self.next[node];
        }
        None
    }

    /// Whether candidate `i` is the representative of its symmetry class among the current
    /// candidates: the one whose return comes first (returns are ordered by node index).
    ///
    /// Operations with identical interned steps differ only in their intervals. If a
    /// linearization from here takes a same-class candidate `x` now and the representative `y`
    /// later (or never, which implies `y` has an unknown outcome and so does `x`), swapping
    /// them is also valid: `y` is invoked already, and `x` is invoked and its deadline is no
    /// earlier than `y`'s. So only the representative needs trying. This collapses, e.g., the
    /// 2^k subsets of k timed-out writes of never-read values into k + 1 choices.
    fn is_representative(&self, i: usize) -> bool {
        if self.class_size[self.class[i] as usize] == 1 {
            return true;
        }
        let mut node = self.next[HEAD];
        while self.node_is_call[node] {
            let j = self.node_op[node];
            if j != i && self.class[j] == self.class[i] && self.ret_node[j] < self.ret_node[i] {
                return false;
            }
            node = self.next[node];
        }
        true
    }

    /// The WGL depth-first search with three exact reductions on top of memoisation:
    ///
    /// - observer rule ([`Search::forced_candidate`]): legal reads are taken without branching;
    /// - symmetry ([`Search::is_representative`]): one representative per class of identical
    ///   candidates;
    /// - lazy unknown writes: a write with unknown outcome is only placed directly before an
    ///   operation it *enables*: legal after the write and either illegal before it (a read of
    ///   its value, a CAS or `INCR` expecting it, a failed CAS expecting the value it replaced,
    ///   a `DEL` or failed `SET NX` needing the key present, ...) or legal before it with a
    ///   different result other than "unchanged" (an unknown `INCR`, which increments whatever
    ///   it finds). In any valid linearization, an unknown write followed by an operation it
    ///   does not enable can be swapped past that operation (if the latter leaves the register
    ///   unchanged either way) or dropped (if the latter yields the same value either way, or if
    ///   nothing follows), so some valid linearization has this shape. Without the rule every
    ///   timed-out write doubles the configurations between its invocation and the end of the
    ///   history. The pair (write, enabled op) acts as one move: only the configuration after
    ///   both is memoised, since the constrained one in between has fewer options than its
    ///   unconstrained namesake.
    fn run(mut self, budget: Budget) -> KeyVerdict {
        let ops = self.ops;
        // Configurations (linearized set, register state) already entered. The search is still
        // running when it meets one again, so that configuration is known to fail. `key` holds
        // the current bitset so probing needs no clone; only insertions copy it.
        let mut memo: HashSet<(B, u32), FixedState> = HashSet::default();
        let mut key: (B, u32) = (B::empty(ops.len()), NIL);
        let mut stuck: Option<Stuck> = None;
        // `fresh`: a new configuration was just entered, so look for a forced move first.
        let mut fresh = true;
        let mut cursor = HEAD;
        loop {
            if self.explored > budget.max_states_per_key {
                return KeyVerdict::Undecided;
            }
            // State before the unknown write that constrains this level, if the last lift was one.
            let before = match self.stack.last() {
                Some(f) if f.kind == Lift::Pending => Some(f.state),
                _ => None,
            };
            let mut backtrack = false;
            if fresh {
                fresh = false;
                cursor = self.next[HEAD];
                if let Some(node) = self.forced_candidate(self.state, before) {
                    let i = self.node_op[node];
                    key.0.set(i);
                    key.1 = self.state;
                    if memo.insert(key.clone()) {
                        if self.lift(node, i, self.state, Lift::Forced) {
                            return KeyVerdict::Linearizable;
                        }
                        fresh = true;
                        continue;
                    }
                    // The forced successor already failed, so this configuration fails too.
                    key.0.clear(i);
                    backtrack = true;
                }
            }
            if !backtrack && self.node_is_call[cursor] {
                let i = self.node_op[cursor];
                if let Some(new_state) = self.allowed(i, self.state, before)
                    && self.is_representative(i)
                {
                    if !ops[i].complete && before.is_none() {
                        // An unknown write opening a (write, enabled op) move; one that does not
                        // change the register enables nothing.
                        if new_state != self.state {
                            key.0.set(i);
                            self.lift(cursor, i, new_state, Lift::Pending);
                            fresh = true;
                            continue;
                        }
                    } else {
                        key.0.set(i);
                        key.1 = new_state;
                        if !memo.contains(&key) {
                            memo.insert(key.clone());
                            if self.lift(cursor, i, new_state, Lift::Branch) {
                                return KeyVerdict::Linearizable;
                            }
                            fresh = true;
                            continue;
                        }
                        key.0.clear(i);
                    }
                }
                cursor = self.next[cursor];
                continue;
            }
            if !backtrack && before.is_none() {
                // A response is due and no candidate before it can go next.
                // Unknown-outcome returns sort after every finite one, and a finite one remains
                // while `remaining > 0`, so the cursor always stops at a completed operation.
                debug_assert!(ops[self.node_op[cursor]].complete);
                if stuck.as_ref().is_none_or(|s| self.stack.len() > s.prefix.len()) {
                    stuck = Some(self.snapshot(cursor));
                }
            }
            // Undo lifts until one that has untried alternatives (forced lifts have none).
            loop {
                let Some(frame) = self.stack.pop() else {
                    return self.violation(stuck.expect("a failed search gets stuck at least once"));
                };
                let i = self.node_op[frame.call];
                self.state = frame.state;
                key.0.clear(i);
                self.relink(self.ret_node[i]);
                self.relink(frame.call);
                if ops[i].complete {
                    self.remaining += 1;
                }
                if frame.kind != Lift::Forced {
                    cursor = self.next[frame.call];
                    break;
                }
            }
        }
    }

    /// Lifts operation `i` (call node `call`) into the linearization with resulting register
    /// value `new_state`. Returns `true` once every completed operation is linearized: the
    /// unknown-outcome ones left over are deemed never to have happened.
    #[inline]
    fn lift(&mut self, call: usize, i: usize, new_state: u32, kind: Lift) -> bool {
        self.explored += 1;
        self.stack.push(Frame { call, state: self.state, kind });
        self.state = new_state;
        self.unlink(call);
        self.unlink(self.ret_node[i]);
        if self.ops[i].complete {
            self.remaining -= 1;
        }
        self.remaining == 0
    }

    fn snapshot(&self, cursor: usize) -> Stuck {
        let mut candidates = Vec::new();
        let mut node = self.next[HEAD];
        while node != cursor {
            candidates.push(self.node_op[node]);
            node = self.next[node];
        }
        Stuck {
            prefix: self.stack.iter().map(|f| self.node_op[f.call]).collect(),
            blocking: self.node_op[cursor],
            candidates,
        }
    }

    fn violation(&self, stuck: Stuck) -> KeyVerdict {
        const TAIL: usize = 4;
        let ops = self.ops;
        let tail_start = stuck.prefix.len().saturating_sub(TAIL);
        let tail: Vec<String> = stuck.prefix[tail_start..].iter().map(|&i| ops[i].op.to_string()).collect();
        let others: Vec<String> =
            stuck.candidates.iter().filter(|&&i| i != stuck.blocking).map(|&i| ops[i].op.to_string()).collect();
        let blocking = ops[stuck.blocking].op;
        // Replay the prefix on recorded values: interned states cannot name values nobody reads.
        let register = stuck.prefix.iter().fold(None, |reg, &i| {
            let next = ops[i].step.apply(reg, incr);
            debug_assert!(next.is_some(), "the linearized prefix is legal");
            next.unwrap_or(reg)
        });
        let register = register.map_or_else(|| "nil".to_string(), |v| v.to_string());
        let mut explanation = format!(
            "not linearizable. Longest linearizable prefix: {} of {} ops, leaving the register at {}",
            stuck.prefix.len(),
            ops.len(),
            register
        );
        if !tail.is_empty() {
            let ellipsis = if tail_start > 0 { "..., " } else { "" };
            explanation.push_str(&format!(" (ending {ellipsis}{})", tail.join(", ")));
        }
        let others = if others.is_empty() { String::new() } else { format!(" [{}]", others.join(", ")) };
        explanation.push_str(&format!(
            ". Then {blocking} must take effect by {}us, but neither it nor any other candidate{others} fits",
            blocking.complete_time.unwrap_or(u64::MAX),
        ));
        let mut ids: Vec<u64> = stuck.candidates.iter().map(|&i| ops[i].op.id).collect();
        if !ids.contains(&blocking.id) {
            ids.push(blocking.id);
        }
        KeyVerdict::Violation { ops: ids, explanation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn op(id: u64, key: u64, kind: OpKind, invoke: u64, complete: Option<u64>, outcome: Outcome) -> Operation {
        Operation { id, client: id, key, kind, invoke_time: invoke, complete_time: complete, outcome }
    }
    fn put(id: u64, key: u64, value: u64, inv: u64, ret: u64) -> Operation {
        op(id, key, OpKind::Put { value }, inv, Some(ret), Outcome::Ok)
    }
    fn get(id: u64, key: u64, value: Option<u64>, inv: u64, ret: u64) -> Operation {
        op(id, key, OpKind::Get, inv, Some(ret), Outcome::Read { value })
    }
    fn put_unknown(id: u64, key: u64, value: u64, inv: u64) -> Operation {
        op(id, key, OpKind::Put { value }, inv, None, Outcome::Unknown)
    }
    fn cas(id: u64, key: u64, expected: Option<u64>, new: u64, inv: u64, ret: u64, success: bool) -> Operation {
        op(id, key, OpKind::Cas { expected, new }, inv, Some(ret), Outcome::Cas { success })
    }
    fn setnx(id: u64, key: u64, value: u64, inv: u64, ret: u64, applied: bool) -> Operation {
        op(id, key, OpKind::SetNx { value }, inv, Some(ret), Outcome::Written { applied })
    }
    fn incr(id: u64, key: u64, value: u64, inv: u64, ret: u64) -> Operation {
        op(id, key, OpKind::Incr, inv, Some(ret), Outcome::Value { value })
    }
    fn del(id: u64, key: u64, count: u64, inv: u64, ret: u64) -> Operation {
        op(id, key, OpKind::Del, inv, Some(ret), Outcome::Deleted { count })
    }
    /// An operation without a response: no `complete_time`.
    fn unknown(id: u64, key: u64, kind: OpKind, inv: u64) -> Operation {
        op(id, key, kind, inv, None, Outcome::Unknown)
    }
    /// An operation that timed out at `timeout`: the recorded time must not bound it.
    fn timed_out(id: u64, key: u64, kind: OpKind, inv: u64, timeout: u64) -> Operation {
        op(id, key, kind, inv, Some(timeout), Outcome::Unknown)
    }
    /// Asserts the checker's verdict on a small history is `linearizable`, decided, and that the
    /// brute-force reference agrees (so the expectation itself is checked too).
    #[track_caller]
    fn expect(h: &[Operation], linearizable: bool) {
        let r = check(h, Budget::unlimited());
        assert!(!matches!(r, CheckResult::Undecided { .. }), "undecided:\n{}", to_json(h));
        assert_eq!(brute_force(h), linearizable, "brute force disagrees with the test:\n{}", to_json(h));
        assert_eq!(r.is_linearizable(), linearizable, "{r:?}\n{}", to_json(h));
    }
    fn ok(h: &[Operation]) -> bool {
        check(h, Budget::default()).is_linearizable()
    }
    fn bad(h: &[Operation]) -> bool {
        check(h, Budget::default()).is_violation()
    }

    #[test]
    fn linearizability_sequential_history() {
        let h = [
            get(0, 0, None, 0, 1),
            put(1, 0, 10, 2, 3),
            get(2, 0, Some(10), 4, 5),
            cas(3, 0, Some(10), 11, 6, 7, true),
            cas(4, 0, Some(10), 12, 8, 9, false),
            get(5, 0, Some(11), 10, 11),
        ];
        assert_eq!(check(&h, Budget::default()), CheckResult::Linearizable);
    }

    #[test]
    fn linearizability_concurrent_get_sees_either_value() {
        for seen in [Some(1), Some(2)] {
            let h = [put(0, 0, 1, 0, 5), put(1, 0, 2, 10, 20), get(2, 0, seen, 12, 18)];
            assert!(ok(&h), "{seen:?}");
        }
        // Overlapping the first put as well: the initial value is also possible.
        let h = [put(0, 0, 1, 0, 10), get(1, 0, None, 2, 4), get(2, 0, Some(1), 3, 5)];
        assert!(ok(&h));
    }

    #[test]
    fn linearizability_stale_read_detected() {
        let h = [put(0, 0, 1, 0, 5), put(1, 0, 2, 6, 10), get(2, 0, Some(1), 11, 12)];
        let r = check(&h, Budget::default());
        let CheckResult::NotLinearizable { key, ops, explanation } = &r else { panic!("{r:?}") };
        assert_eq!(*key, 0);
        assert!(ops.contains(&2), "{r:?}");
        assert!(explanation.contains("#2"), "{explanation}");
        // Reading the initial value after a completed write is stale too.
        assert!(bad(&[put(0, 0, 1, 0, 5), get(1, 0, None, 6, 7)]));
    }

    #[test]
    fn linearizability_read_of_unwritten_value() {
        let h = [put(0, 0, 1, 0, 5), get(1, 0, Some(99), 1, 6)];
        let r = check(&h, Budget::default());
        assert!(matches!(&r, CheckResult::NotLinearizable { ops, .. } if ops == &[1]), "{r:?}");
        // A value written only after the read returned cannot be read either.
        assert!(bad(&[get(0, 0, Some(1), 0, 3), put(1, 0, 1, 4, 5)]));
    }

    #[test]
    fn linearizability_lost_write_detected() {
        // Acknowledged write of 2 lost: readers after it still see 1, and even a later CAS on 2
        // fails.
        let h = [put(0, 0, 1, 0, 2), put(1, 0, 2, 3, 4), get(2, 0, Some(1), 5, 6)];
        assert!(bad(&h));
        let h = [put(0, 0, 1, 0, 2), put(1, 0, 2, 3, 4), cas(2, 0, Some(2), 3, 5, 6, false)];
        assert!(bad(&h));
        // Two readers disagreeing on order: 1 then 2 vs 2 then 1 (each read after the other).
        let h = [
            put(0, 0, 1, 0, 100),
            put(1, 0, 2, 0, 100),
            get(2, 0, Some(1), 10, 20),
            get(3, 0, Some(2), 30, 40),
            get(4, 0, Some(1), 50, 60),
        ];
        assert!(bad(&h));
    }

    #[test]
    fn linearizability_unknown_outcome_put_both_readings() {
        let base = [put(0, 0, 1, 0, 1), put_unknown(1, 0, 2, 2)];
        // Took effect.
        assert!(ok(&[base[0].clone(), base[1].clone(), get(2, 0, Some(2), 10, 11)]));
        // Never took effect.
        assert!(ok(&[base[0].clone(), base[1].clone(), get(2, 0, Some(1), 10, 11)]));
        // Took effect late: old value first, then the new one.
        assert!(ok(&[base[0].clone(), base[1].clone(), get(2, 0, Some(1), 10, 11), get(3, 0, Some(2), 12, 13)]));
        // But it cannot take effect and then be undone.
        assert!(bad(&[base[0].clone(), base[1].clone(), get(2, 0, Some(2), 10, 11), get(3, 0, Some(1), 12, 13)]));
        // Nor before it was invoked.
        assert!(bad(&[get(0, 0, Some(2), 0, 1), put_unknown(1, 0, 2, 2)]));
        // A timed-out put with a recorded complete_time is still unknown; unknown CAS too.
        let timed_out = op(1, 0, OpKind::Put { value: 2 }, 2, Some(3), Outcome::Unknown);
        assert!(ok(&[timed_out, get(2, 0, Some(2), 10, 11)]));
        let cas_unknown = op(1, 0, OpKind::Cas { expected: Some(1), new: 3 }, 2, None, Outcome::Unknown);
        assert!(ok(&[put(0, 0, 1, 0, 1), cas_unknown.clone(), get(2, 0, Some(3), 10, 11)]));
        assert!(ok(&[put(0, 0, 1, 0, 1), cas_unknown, get(2, 0, Some(1), 10, 11)]));
        // Unobserved unknown write next to a failed CAS must not be dropped: it explains the failure.
        assert!(ok(&[put_unknown(0, 0, 5, 0), cas(1, 0, None, 6, 10, 11, false)]));
        assert!(bad(&[cas(1, 0, None, 6, 10, 11, false)]));
    }

    #[test]
    fn linearizability_keys_are_independent() {
        // Each key alone is fine; interleaved they would be a stale read if keys were shared.
        let h = [put(0, 1, 1, 0, 1), put(1, 2, 2, 2, 3), get(2, 1, Some(1), 4, 5), get(3, 2, Some(2), 4, 5)];
        assert!(ok(&h));
        let h = [put(0, 1, 1, 0, 1), get(1, 2, None, 4, 5), put(2, 3, 3, 0, 1), get(3, 3, Some(1), 4, 5)];
        let r = check(&h, Budget::default());
        assert!(matches!(r, CheckResult::NotLinearizable { key: 3, .. }), "{r:?}");
    }

    #[test]
    fn linearizability_malformed_ops_are_reported() {
        assert!(bad(&[op(0, 0, OpKind::Get, 0, None, Outcome::Read { value: None })]));
        assert!(bad(&[op(0, 0, OpKind::Get, 5, Some(4), Outcome::Read { value: None })]));
        assert!(bad(&[op(0, 0, OpKind::Get, 0, Some(1), Outcome::Ok)]));
    }

    #[test]
    fn linearizability_empty_and_pending_only() {
        assert!(ok(&[]));
        assert!(ok(&[put_unknown(0, 0, 1, 0), op(1, 0, OpKind::Get, 0, None, Outcome::Unknown)]));
    }

    #[test]
    fn linearizability_incr() {
        // Counting from absent (= 0) and from a SET value.
        expect(&[incr(0, 0, 1, 0, 1), incr(1, 0, 2, 2, 3), get(2, 0, Some(2), 4, 5)], true);
        expect(&[put(0, 0, 5, 0, 1), incr(1, 0, 6, 2, 3), get(2, 0, Some(6), 4, 5)], true);
        expect(&[put(0, 0, 0, 0, 1), incr(1, 0, 1, 2, 3)], true);
        // Concurrent INCRs may respond in either order.
        expect(&[incr(0, 0, 2, 0, 10), incr(1, 0, 1, 0, 12), get(2, 0, Some(2), 13, 14)], true);
        // Two INCRs both returning 1, in sequence or even concurrently, with nothing resetting
        // the key: one of them must have seen the other.
        expect(&[incr(0, 0, 1, 0, 1), incr(1, 0, 1, 2, 3)], false);
        expect(&[incr(0, 0, 1, 0, 10), incr(1, 0, 1, 0, 10)], false);
        // A concurrent DEL (or SET 0) in between explains it.
        expect(&[incr(0, 0, 1, 0, 10), incr(1, 0, 1, 0, 10), del(2, 0, 1, 0, 10)], true);
        expect(&[incr(0, 0, 1, 0, 10), incr(1, 0, 1, 0, 10), put(2, 0, 0, 0, 10)], true);
        // Wrong base: skipping a value, or ignoring the SET value.
        expect(&[incr(0, 0, 2, 0, 1)], false);
        expect(&[put(0, 0, 5, 0, 1), incr(1, 0, 1, 2, 3)], false);
        // The written 50 is never read; collapsing it with other unread values must not let an
        // INCR that needs 6 run on it.
        expect(&[put(0, 0, 50, 0, 1), incr(1, 0, 7, 2, 3)], false);
        // Later reads see the increment.
        expect(&[incr(0, 0, 1, 0, 1), get(1, 0, None, 2, 3)], false);
        expect(&[put(0, 0, 5, 0, 1), incr(1, 0, 6, 2, 3), get(2, 0, Some(5), 4, 5)], false);
        // Values need not be unique: a SET may write what an INCR returned.
        expect(&[incr(0, 0, 1, 0, 1), put(1, 0, 1, 2, 3), incr(2, 0, 2, 4, 5), get(3, 0, Some(2), 6, 7)], true);
        expect(&[incr(0, 0, 1, 0, 1), put(1, 0, 1, 2, 3), incr(2, 0, 3, 4, 5)], false);
        // INCR never returns 0, and does not wrap.
        let r = check(&[incr(0, 0, 0, 0, 1)], Budget::default());
        assert!(matches!(&r, CheckResult::NotLinearizable { ops, .. } if ops == &[0]), "{r:?}");
        assert!(bad(&[put(0, 0, u64::MAX, 0, 1), incr(1, 0, 0, 2, 3)]));
        assert!(ok(&[put(0, 0, u64::MAX, 0, 1), unknown(1, 0, OpKind::Incr, 2), get(2, 0, Some(u64::MAX), 4, 5)]));
        assert!(bad(&[put(0, 0, u64::MAX, 0, 1), unknown(1, 0, OpKind::Incr, 2), get(2, 0, None, 4, 5)]));
    }

    #[test]
    fn linearizability_unknown_incr() {
        let maybe = |id, inv| unknown(id, 0, OpKind::Incr, inv);
        // Linearizable only if it took effect.
        expect(&[maybe(0, 0), incr(1, 0, 2, 10, 11)], true);
        expect(&[maybe(0, 0), get(1, 0, Some(1), 10, 11)], true);
        expect(&[maybe(0, 0), setnx(1, 0, 5, 10, 11, false)], true);
        expect(&[incr(1, 0, 2, 10, 11)], false);
        // Linearizable only if it did not take effect before the last operation; the recorded
        // timeout at 1 does not bound it.
        let h = [
            timed_out(0, 0, OpKind::Incr, 0, 1),
            get(1, 0, None, 10, 11),
            incr(2, 0, 1, 20, 21),
            get(3, 0, Some(1), 30, 31),
        ];
        expect(&h, true);
        // At most once, never before its invocation, never undone.
        expect(&[maybe(0, 0), get(1, 0, Some(2), 10, 11)], false);
        expect(&[maybe(0, 0), incr(1, 0, 3, 10, 11)], false);
        expect(&[get(0, 0, Some(1), 0, 1), maybe(1, 5)], false);
        // Array order carries no meaning: the earliest invocation counts.
        expect(&[maybe(0, 20), maybe(1, 0), get(2, 0, Some(1), 10, 11)], true);
        expect(&[maybe(0, 0), get(1, 0, Some(1), 10, 11), get(2, 0, None, 12, 13)], false);
        // Two of them: zero, one or both took effect, in any order relative to the reads.
        for (v, linearizable) in [(None, true), (Some(1), true), (Some(2), true), (Some(3), false)] {
            expect(&[maybe(0, 0), maybe(1, 0), get(2, 0, v, 10, 11)], linearizable);
        }
        expect(&[maybe(0, 0), maybe(1, 0), get(2, 0, Some(1), 10, 11), get(3, 0, Some(2), 12, 13)], true);
        expect(&[maybe(0, 0), maybe(1, 0), get(2, 0, Some(2), 10, 11), get(3, 0, Some(1), 12, 13)], false);
        // On top of a write with unknown outcome whose value nobody reads: the write must be
        // kept, and placed right before the INCR (an INCR is legal without it, with another
        // result).
        let put5 = || put_unknown(0, 0, 5, 0);
        expect(&[put5(), maybe(1, 0), get(2, 0, Some(6), 10, 11)], true);
        expect(&[put5(), maybe(1, 0), maybe(2, 0), get(3, 0, Some(7), 10, 11)], true);
        expect(&[put5(), maybe(1, 0), maybe(2, 0), get(3, 0, Some(8), 10, 11)], false);
        expect(&[put5(), maybe(1, 0), incr(2, 0, 7, 10, 11)], true);
        expect(&[put5(), put_unknown(1, 0, 9, 0), maybe(2, 0), incr(3, 0, 11, 10, 11)], true);
        expect(&[put5(), put_unknown(1, 0, 9, 0), maybe(2, 0), incr(3, 0, 8, 10, 11)], false);
        // A known SET whose value is out of the INCRs' reach of every read stays collapsed.
        expect(&[put(0, 0, 5, 0, 1), maybe(1, 2), maybe(2, 2), get(3, 0, Some(7), 10, 11)], true);
        expect(&[put(0, 0, 4, 0, 1), maybe(1, 2), maybe(2, 2), get(3, 0, Some(7), 10, 11)], false);
        expect(&[put(0, 0, 4, 0, 1), maybe(1, 2), maybe(2, 2), get(3, 0, Some(6), 10, 11)], true);
        // After an unknown DEL: DEL then INCR gives 1, INCR alone 2.
        let h = |v| [put(0, 0, 1, 0, 1), unknown(1, 0, OpKind::Del, 2), maybe(2, 2), get(3, 0, v, 10, 11)];
        for (v, linearizable) in [(Some(1), true), (Some(2), true), (None, true), (Some(3), false)] {
            expect(&h(v), linearizable);
        }
    }

    #[test]
    fn linearizability_set_nx() {
        expect(&[setnx(0, 0, 1, 0, 1, true), setnx(1, 0, 2, 2, 3, false), get(2, 0, Some(1), 4, 5)], true);
        // After a DEL the key is absent again and SET NX succeeds.
        let h = [setnx(0, 0, 1, 0, 1, true), del(1, 0, 1, 2, 3), setnx(2, 0, 2, 4, 5, true), get(3, 0, Some(2), 6, 7)];
        expect(&h, true);
        // Applied twice without a DEL between, in sequence or concurrently.
        expect(&[setnx(0, 0, 1, 0, 1, true), setnx(1, 0, 2, 2, 3, true)], false);
        expect(&[setnx(0, 0, 1, 0, 10, true), setnx(1, 0, 2, 0, 10, true)], false);
        expect(&[setnx(0, 0, 1, 0, 10, true), setnx(1, 0, 2, 0, 10, true), del(2, 0, 1, 0, 10)], true);
        // Concurrent: the loser is not applied.
        expect(&[setnx(0, 0, 1, 0, 10, false), setnx(1, 0, 2, 0, 10, true)], true);
        // Not applied although the key is absent (never written, or deleted).
        expect(&[setnx(0, 0, 1, 0, 1, false)], false);
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 3), setnx(2, 0, 2, 4, 5, false)], false);
        // Applied although the key holds a value.
        expect(&[put(0, 0, 1, 0, 1), setnx(1, 0, 2, 2, 3, true)], false);
        // A SET NX that was not applied writes nothing; one that was is seen.
        expect(&[put(0, 0, 1, 0, 1), setnx(1, 0, 2, 2, 3, false), get(2, 0, Some(2), 4, 5)], false);
        expect(&[put(0, 0, 1, 0, 1), setnx(1, 0, 2, 2, 3, false), get(2, 0, Some(1), 4, 5)], true);
        expect(&[setnx(0, 0, 1, 0, 1, true), get(1, 0, None, 2, 3)], false);
        // SET NX is CAS(nil -> v): after one succeeded the other cannot.
        expect(&[setnx(0, 0, 1, 0, 1, true), cas(1, 0, None, 2, 2, 3, true)], false);
        expect(&[cas(0, 0, None, 2, 0, 1, true), setnx(1, 0, 1, 2, 3, false), get(2, 0, Some(2), 4, 5)], true);
    }

    #[test]
    fn linearizability_unknown_set_nx() {
        let maybe = |id, value, inv| unknown(id, 0, OpKind::SetNx { value }, inv);
        // Linearizable only if it took effect.
        expect(&[maybe(0, 1, 0), get(1, 0, Some(1), 10, 11)], true);
        expect(&[maybe(0, 1, 0), setnx(1, 0, 2, 10, 11, false)], true);
        expect(&[maybe(0, 1, 0), del(1, 0, 1, 10, 11)], true);
        expect(&[maybe(0, 1, 0), incr(1, 0, 2, 10, 11)], true);
        expect(&[setnx(1, 0, 2, 10, 11, false)], false);
        // Linearizable only if it did not take effect (or took effect after the key was set,
        // when it changes nothing).
        let h = [
            timed_out(0, 0, OpKind::SetNx { value: 1 }, 0, 1),
            get(1, 0, None, 10, 11),
            setnx(2, 0, 2, 20, 21, true),
            get(3, 0, Some(2), 30, 31),
        ];
        expect(&h, true);
        // It is conditional even with an unknown outcome: it cannot overwrite a value...
        expect(&[put(0, 0, 5, 0, 1), maybe(1, 1, 2), get(2, 0, Some(1), 10, 11)], false);
        // ... unless the key was deleted first.
        expect(&[put(0, 0, 5, 0, 1), del(1, 0, 1, 2, 3), maybe(2, 1, 4), get(3, 0, Some(1), 10, 11)], true);
        expect(&[put(0, 0, 5, 0, 1), unknown(1, 0, OpKind::Del, 2), maybe(2, 1, 4), get(3, 0, Some(1), 10, 11)], true);
        // At most once.
        expect(&[maybe(0, 1, 0), get(1, 0, Some(1), 10, 11), del(2, 0, 1, 12, 13), get(3, 0, Some(1), 14, 15)], false);
    }

    #[test]
    fn linearizability_del() {
        let h = [
            put(0, 0, 1, 0, 1),
            del(1, 0, 1, 2, 3),
            get(2, 0, None, 4, 5),
            del(3, 0, 0, 6, 7),
            incr(4, 0, 1, 8, 9),
            del(5, 0, 1, 10, 11),
            setnx(6, 0, 7, 12, 13, true),
        ];
        expect(&h, true);
        // DEL of a key never written.
        expect(&[del(0, 0, 0, 0, 1)], true);
        expect(&[del(0, 0, 1, 0, 1)], false);
        // DEL finding nothing although the key was set.
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 0, 2, 3)], false);
        // Reading the old value after a non-overlapping DEL completed, with no write since...
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 3), get(2, 0, Some(1), 4, 5)], false);
        // ... but fine if the read overlaps the DEL.
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 5), get(2, 0, Some(1), 4, 6)], true);
        // Two DELs removing one write, in sequence or concurrently.
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 3), del(2, 0, 1, 4, 5)], false);
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 10), del(2, 0, 1, 2, 10)], false);
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 10), del(2, 0, 0, 2, 10)], true);
        expect(&[put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 10), del(2, 0, 1, 2, 10), put(3, 0, 2, 2, 10)], true);
        // A DEL that found the key can be explained by an unknown write nobody reads, but only
        // one it can follow.
        expect(&[put_unknown(0, 0, 5, 0), del(1, 0, 1, 10, 11)], true);
        expect(&[del(0, 0, 1, 0, 1), put_unknown(1, 0, 5, 2)], false);
        expect(&[put_unknown(0, 0, 5, 0), setnx(1, 0, 6, 10, 11, false)], true);
        expect(&[unknown(0, 0, OpKind::SetNx { value: 5 }, 0), setnx(1, 0, 6, 10, 11, false)], true);
        expect(&[cas(0, 0, None, 6, 0, 1, false), put_unknown(1, 0, 5, 2)], false);
        // A DEL of one key removes at most one.
        let r = check(&[put(0, 0, 1, 0, 1), del(1, 0, 2, 2, 3)], Budget::default());
        assert!(
            matches!(&r, CheckResult::NotLinearizable { explanation, .. } if explanation.contains("malformed")),
            "{r:?}"
        );
    }

    #[test]
    fn linearizability_unknown_del() {
        let maybe = |id, inv| unknown(id, 0, OpKind::Del, inv);
        let set = || put(0, 0, 1, 0, 1);
        // Linearizable only if it took effect.
        expect(&[set(), maybe(1, 2), get(2, 0, None, 10, 11)], true);
        expect(&[set(), maybe(1, 2), setnx(2, 0, 2, 10, 11, true)], true);
        expect(&[set(), maybe(1, 2), incr(2, 0, 1, 10, 11)], true);
        expect(&[set(), maybe(1, 2), del(2, 0, 0, 10, 11)], true);
        expect(&[set(), maybe(1, 2), cas(2, 0, None, 3, 10, 11, true)], true);
        expect(&[set(), get(2, 0, None, 10, 11)], false);
        // Linearizable only if it did not take effect before the last operation.
        let h = [set(), timed_out(1, 0, OpKind::Del, 2, 3), get(2, 0, Some(1), 10, 11), incr(3, 0, 2, 20, 21)];
        expect(&h, true);
        // It takes effect at most once and cannot be undone.
        expect(&[set(), maybe(1, 2), get(2, 0, None, 10, 11), get(3, 0, Some(1), 12, 13)], false);
        let h = [set(), maybe(1, 2), get(2, 0, None, 10, 11), put(3, 0, 2, 12, 13), get(4, 0, None, 14, 15)];
        expect(&h, false);
        // Harmless on an absent key.
        expect(&[maybe(0, 0), get(1, 0, None, 10, 11), del(2, 0, 0, 12, 13)], true);
    }

    /// White-box: the reduction is exact either way, so only its effect on the op list shows.
    #[test]
    fn linearizability_drops_only_unobservable_writes() {
        let h = [
            del(0, 0, 1, 0, 1),
            // Could explain the DEL (which needs the key present): kept.
            put_unknown(1, 0, 5, 0),
            // Invoked after the DEL returned and never observed: dropped.
            put_unknown(2, 0, 20, 2),
            unknown(3, 0, OpKind::SetNx { value: 9 }, 2),
            // Read directly, or one unknown INCR below a read: kept.
            put_unknown(4, 0, 7, 2),
            put_unknown(5, 0, 3, 2),
            get(6, 0, Some(7), 10, 11),
            get(7, 0, Some(4), 12, 13),
            // Two below the read of 4, but there is only one unknown INCR: dropped.
            put_unknown(8, 0, 2, 2),
            // Writes of "absent" and unknown INCRs are always kept.
            unknown(9, 0, OpKind::Del, 2),
            unknown(10, 0, OpKind::Incr, 2),
        ];
        let mut ops: Vec<KeyOp<'_>> = h.iter().map(|o| prepare(o).unwrap().unwrap()).collect();
        let observed = Observed::new(&ops);
        drop_unobservable_writes(&mut ops, &observed);
        let kept: Vec<u64> = ops.iter().map(|o| o.op.id).collect();
        assert_eq!(kept, [0, 1, 4, 5, 6, 7, 9, 10]);
        expect(&h, true);
    }

    #[test]
    fn linearizability_cas_sees_deleted_key_as_absent() {
        let set_del = || [put(0, 0, 1, 0, 1), del(1, 0, 1, 2, 3)];
        let with = |o: Operation| [set_del()[0].clone(), set_del()[1].clone(), o];
        expect(&with(cas(2, 0, None, 5, 4, 5, true)), true);
        expect(&with(cas(2, 0, None, 5, 4, 5, false)), false);
        expect(&with(cas(2, 0, Some(1), 5, 4, 5, true)), false);
        expect(&with(cas(2, 0, Some(1), 5, 4, 5, false)), true);
        let mut h = with(cas(2, 0, None, 5, 4, 5, true)).to_vec();
        h.push(get(3, 0, Some(5), 6, 7));
        expect(&h, true);
    }

    #[test]
    fn linearizability_violation_report_names_the_register() {
        let r = check(&[incr(0, 0, 1, 0, 1), incr(1, 0, 2, 2, 3), incr(2, 0, 2, 4, 5)], Budget::default());
        let CheckResult::NotLinearizable { ops, explanation, .. } = &r else { panic!("{r:?}") };
        assert!(ops.contains(&2), "{r:?}");
        assert!(explanation.contains("2 of 3 ops, leaving the register at 2"), "{explanation}");
        assert!(explanation.contains("#2 c2 k0 incr() -> 2 @4..5"), "{explanation}");
        let r = check(&[put(0, 0, 7, 0, 1), del(1, 0, 1, 2, 3), del(2, 0, 1, 4, 5)], Budget::default());
        let CheckResult::NotLinearizable { explanation, .. } = &r else { panic!("{r:?}") };
        assert!(explanation.contains("leaving the register at nil"), "{explanation}");
        // Unknown INCRs in the prefix are replayed on the real values.
        let h =
            [put(0, 0, 7, 0, 1), unknown(1, 0, OpKind::Incr, 2), get(2, 0, Some(8), 4, 5), get(3, 0, Some(7), 6, 7)];
        let r = check(&h, Budget::default());
        let CheckResult::NotLinearizable { explanation, .. } = &r else { panic!("{r:?}") };
        assert!(explanation.contains("leaving the register at 8"), "{explanation}");
    }

    /// One generated operation: everything random about it, so proptest can shrink.
    #[derive(Debug, Clone, Copy)]
    struct Spec {
        key: u64,
        /// 0 = put, 1 = get, 2 = cas expecting the current value, 3 = cas expecting an older one,
        /// 4 = set nx, 5 = incr, 6 = del.
        kind: u8,
        before: u64,
        after: u64,
        pending: bool,
        takes_effect: bool,
    }

    /// Builds a linearizable history: op `i` takes effect at time `100 + 10 i` on a simulated
    /// register, and its interval is drawn around that point. Unknown-outcome ops take effect or
    /// not according to the spec. Put, CAS and SET NX values are unique per write; INCR results
    /// are not (they repeat after a DEL and may equal a put value).
    fn generate(specs: &[Spec]) -> Vec<Operation> {
        let mut regs: BTreeMap<u64, (Option<u64>, Vec<u64>)> = BTreeMap::new();
        let mut next_value = 1;
        let mut out = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let at = 100 + 10 * i as u64;
            let (state, written) = regs.entry(s.key).or_default();
            let applies = !s.pending || s.takes_effect;
            let (kind, outcome) = match s.kind {
                0 => {
                    next_value += 1;
                    if applies {
                        *state = Some(next_value);
                        written.push(next_value);
                    }
                    (OpKind::Put { value: next_value }, Outcome::Ok)
                }
                1 => (OpKind::Get, Outcome::Read { value: *state }),
                2 | 3 => {
                    next_value += 1;
                    let expected = if s.kind == 2 { *state } else { written.first().copied() };
                    let success = *state == expected;
                    if applies && success {
                        *state = Some(next_value);
                        written.push(next_value);
                    }
                    (OpKind::Cas { expected, new: next_value }, Outcome::Cas { success })
                }
                4 => {
                    next_value += 1;
                    let applied = state.is_none();
                    if applies && applied {
                        *state = Some(next_value);
                        written.push(next_value);
                    }
                    (OpKind::SetNx { value: next_value }, Outcome::Written { applied })
                }
                5 => {
                    let value = state.unwrap_or(0) + 1;
                    if applies {
                        *state = Some(value);
                        written.push(value);
                    }
                    (OpKind::Incr, Outcome::Value { value })
                }
                _ => {
                    let count = u64::from(state.is_some());
                    if applies {
                        *state = None;
                    }
                    (OpKind::Del, Outcome::Deleted { count })
                }
            };
            let invoke = at - s.before;
            let (complete, outcome) = if s.pending { (None, Outcome::Unknown) } else { (Some(at + s.after), outcome) };
            out.push(op(i as u64, s.key, kind, invoke, complete, outcome));
        }
        // Histories are recorded by invocation, not by linearization point.
        out.sort_by_key(|o| (o.invoke_time, o.id));
        out
    }

    /// The register workload: puts, gets and CASes.
    const REGISTER_MIX: &[u8] = &[0, 0, 1, 1, 1, 2, 3];
    /// The KvStore workload: every kind, INCR-heavy.
    const KV_MIX: &[u8] = &[0, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6];

    fn random_specs(rng: &mut ChaCha8Rng, n: usize, keys: u64, spread: u64, pending_pct: u32) -> Vec<Spec> {
        random_specs_of(rng, REGISTER_MIX, n, keys, spread, pending_pct)
    }

    fn random_specs_of(
        rng: &mut ChaCha8Rng,
        mix: &[u8],
        n: usize,
        keys: u64,
        spread: u64,
        pending_pct: u32,
    ) -> Vec<Spec> {
        (0..n)
            .map(|_| Spec {
                key: rng.gen_range(0..keys),
                kind: mix[rng.gen_range(0..mix.len())],
                before: rng.gen_range(0..spread),
                after: rng.gen_range(0..spread),
                pending: rng.gen_range(0..100) < pending_pct,
                takes_effect: rng.gen_bool(0.5),
            })
            .collect()
    }

    /// Mutates a completed get to return a value that was overwritten, by a write completed
    /// before the get was invoked, and whose own write completed before that overwrite began.
    fn mutate_to_stale(h: &mut [Operation]) -> u64 {
        let puts: Vec<&Operation> =
            h.iter().filter(|o| matches!((o.kind, o.outcome), (OpKind::Put { .. }, Outcome::Ok))).collect();
        let mut choice = None;
        'search: for g in h.iter().rev() {
            let (OpKind::Get, Outcome::Read { value }) = (g.kind, g.outcome) else { continue };
            for p in &puts {
                let OpKind::Put { value: old } = p.kind else { unreachable!() };
                if p.key != g.key || Some(old) == value {
                    continue;
                }
                let overwritten = puts.iter().any(|q| {
                    q.key == g.key
                        && q.invoke_time > p.complete_time.unwrap()
                        && q.complete_time.unwrap() < g.invoke_time
                });
                if overwritten {
                    choice = Some((g.id, old));
                    break 'search;
                }
            }
        }
        let (gid, old) = choice.expect("history has a stale candidate");
        let g = h.iter_mut().find(|o| o.id == gid).unwrap();
        g.outcome = Outcome::Read { value: Some(old) };
        gid
    }

    /// The register value right after a completed operation, when its outcome determines it.
    fn value_after(o: &Operation) -> Option<Option<u64>> {
        match (o.kind, o.outcome) {
            (OpKind::Put { value }, Outcome::Ok) => Some(Some(value)),
            (OpKind::Get, Outcome::Read { value }) => Some(value),
            (OpKind::Cas { new, .. }, Outcome::Cas { success: true }) => Some(Some(new)),
            (OpKind::SetNx { value }, Outcome::Written { applied: true }) => Some(Some(value)),
            (OpKind::Incr, Outcome::Value { value }) => Some(Some(value)),
            (OpKind::Del, Outcome::Deleted { .. }) => Some(None),
            _ => None,
        }
    }

    /// Pairs `(b, x)`: a completed non-put operation `h[b]` that must observe the register value
    /// `x` left by an earlier completed operation `a` (`a` returned before `b` was invoked and no
    /// operation other than reads overlaps `a.invoke..=b.complete`, so nothing can take effect
    /// between them).
    fn isolated_pairs(h: &[Operation]) -> Vec<(usize, Option<u64>)> {
        let mut pairs = Vec::new();
        for (bi, b) in h.iter().enumerate() {
            if !b.is_complete() || matches!(b.kind, OpKind::Put { .. }) {
                continue;
            }
            let hi = b.complete_time.unwrap();
            // The latest few operations that returned before `b` began.
            let mut earlier: Vec<usize> = (0..h.len())
                .filter(|&ai| {
                    let a = &h[ai];
                    a.key == b.key && a.is_complete() && a.complete_time.unwrap() < b.invoke_time
                })
                .collect();
            earlier.sort_by_key(|&ai| std::cmp::Reverse(h[ai].complete_time));
            for &ai in earlier.iter().take(3) {
                let Some(x) = value_after(&h[ai]) else { continue };
                let lo = h[ai].invoke_time;
                let isolated = h.iter().enumerate().all(|(ci, c)| {
                    ci == ai
                        || ci == bi
                        || c.key != b.key
                        || c.kind == OpKind::Get
                        || c.invoke_time > hi
                        || (c.is_complete() && c.complete_time.unwrap() < lo)
                });
                if isolated {
                    pairs.push((bi, x));
                    break;
                }
            }
        }
        pairs
    }

    /// Changes the outcome of `h[b]`, which must observe `x` (see [`isolated_pairs`]), to one
    /// that contradicts `x`, so no order can explain it.
    fn contradict(h: &mut [Operation], b: usize, x: Option<u64>) {
        // Some value written on the key, so a wrong read is not refuted by the precheck alone.
        let other = h.iter().find_map(|o| match o.kind {
            OpKind::Put { value } if o.key == h[b].key && Some(value) != x => Some(value),
            _ => None,
        });
        let b = &mut h[b];
        b.outcome = match b.kind {
            OpKind::Get => Outcome::Read { value: if x.is_some() { None } else { Some(other.unwrap_or(1 << 40)) } },
            OpKind::Incr => Outcome::Value { value: x.unwrap_or(0) + 2 },
            OpKind::SetNx { .. } => Outcome::Written { applied: x.is_some() },
            OpKind::Del => Outcome::Deleted { count: u64::from(x.is_none()) },
            OpKind::Cas { expected, .. } => Outcome::Cas { success: x != expected },
            OpKind::Put { .. } => unreachable!(),
        };
    }

    #[test]
    fn linearizability_large_generated_history() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for round in 0..20 {
            let specs = random_specs(&mut rng, 600, 3, 60, 3);
            let mut h = generate(&specs);
            assert_eq!(check(&h, Budget::default()), CheckResult::Linearizable, "round {round}");
            let gid = mutate_to_stale(&mut h);
            let r = check(&h, Budget::default());
            assert!(r.is_violation(), "round {round}: {r:?}");
            let CheckResult::NotLinearizable { ops, .. } = r else { unreachable!() };
            assert!(ops.contains(&gid), "round {round}: stale read #{gid} not among {ops:?}");
        }
        // One key with more than 128 ops exercises the heap bitset.
        let specs = random_specs(&mut rng, 2000, 1, 80, 2);
        let mut h = generate(&specs);
        assert!(ok(&h));
        mutate_to_stale(&mut h);
        let r = check(&h, Budget::default());
        assert!(r.is_violation(), "{r:?}");
    }

    #[test]
    fn linearizability_large_generated_kv_history() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let kinds: [fn(&OpKind) -> bool; 5] = [
            |k| *k == OpKind::Get,
            |k| matches!(k, OpKind::Cas { .. }),
            |k| matches!(k, OpKind::SetNx { .. }),
            |k| *k == OpKind::Incr,
            |k| *k == OpKind::Del,
        ];
        let mut mutated = [0usize; 5];
        for round in 0..40 {
            let keys = [1, 3, 6][round % 3];
            let specs = random_specs_of(&mut rng, KV_MIX, 400, keys, 25, 8);
            let h = generate(&specs);
            assert_eq!(check(&h, Budget::default()), CheckResult::Linearizable, "round {round}");
            let pairs = isolated_pairs(&h);
            // One contradicted outcome per observing kind.
            for (k, is_kind) in kinds.iter().enumerate() {
                let of_kind: Vec<_> = pairs.iter().filter(|&&(b, _)| is_kind(&h[b].kind)).collect();
                let Some(&&(b, x)) = of_kind.get(rng.gen_range(0..of_kind.len().max(1))) else { continue };
                let mut bad_h = h.clone();
                contradict(&mut bad_h, b, x);
                let r = check(&bad_h, Budget::default());
                let key = h[b].key;
                assert!(
                    matches!(r, CheckResult::NotLinearizable { key: k, .. } if k == key),
                    "round {round}: {} {r:?}",
                    bad_h[b]
                );
                assert_eq!(r, check(&bad_h, Budget::default()), "deterministic");
                mutated[k] += 1;
            }
        }
        assert!(mutated.iter().all(|&m| m >= 10), "{mutated:?}");
        // One key with more than 128 ops, then many timed out ones. (An unknown outcome overlaps
        // everything after its invocation, so isolated pairs only exist before the first one.)
        let mut specs = random_specs_of(&mut rng, KV_MIX, 1500, 1, 15, 10);
        specs[..300].iter_mut().for_each(|s| s.pending = false);
        let mut h = generate(&specs);
        assert!(ok(&h));
        let pairs = isolated_pairs(&h);
        let (b, x) = pairs[rng.gen_range(0..pairs.len())];
        contradict(&mut h, b, x);
        assert!(bad(&h));
    }

    /// The simulator checks thousands of few-hundred-op histories per run; keep that cheap.
    #[test]
    fn linearizability_many_small_histories() {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            let h = generate(&random_specs(&mut rng, 300, 4, 40, 5));
            assert!(ok(&h));
        }
        eprintln!("1000 register histories of 300 ops checked in {:?}", start.elapsed());
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            let h = generate(&random_specs_of(&mut rng, KV_MIX, 300, 4, 40, 5));
            assert!(ok(&h));
        }
        eprintln!("1000 KV histories of 300 ops checked in {:?}", start.elapsed());
    }

    /// A hot counter under a partition: most INCRs time out, so their results are unknown.
    #[test]
    fn linearizability_counter_with_many_unknown_incrs() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for round in 0..20 {
            let specs = random_specs_of(&mut rng, &[1, 5, 5, 5], 120, 1, 60, 40);
            let h = generate(&specs);
            let r = check(&h, Budget::default());
            assert_eq!(r, CheckResult::Linearizable, "round {round}");
        }
    }

    #[test]
    fn linearizability_pathological_history_is_undecided() {
        // 12 concurrent writes, each observed by a concurrent read (so no write is redundant),
        // then two later reads that contradict each other: every order of the writes must be
        // refuted, exponentially many configurations.
        let n = 12;
        let mut h: Vec<Operation> = (0..n).map(|i| put(i, 0, i + 1, 0, 100)).collect();
        h.extend((0..n).map(|i| get(n + i, 0, Some(i + 1), 0, 100)));
        h.push(get(100, 0, Some(1), 200, 210));
        h.push(get(101, 0, Some(2), 220, 230));
        assert!(matches!(check(&h, Budget::new(1000)), CheckResult::Undecided { key: 0 }));
        // Given enough budget it is decided.
        assert!(check(&h, Budget::unlimited()).is_violation());
        // A violation on another key still wins over an undecided one.
        h.push(get(102, 1, Some(5), 0, 1));
        assert!(check(&h, Budget::new(1000)).is_violation());
    }

    #[test]
    fn linearizability_json_round_trip() {
        let h = [
            put(0, 0, 1, 0, 1),
            get(1, 0, Some(1), 2, 3),
            cas(2, 0, None, 4, 4, 5, false),
            put_unknown(3, 1, 7, 6),
            op(4, 1, OpKind::Get, 6, None, Outcome::Unknown),
            setnx(5, 2, 9, 7, 8, true),
            incr(6, 2, 3, 9, 10),
            del(7, 2, 1, 11, 12),
            timed_out(8, 2, OpKind::Incr, 13, 14),
        ];
        let json = to_json(&h);
        assert_eq!(json.lines().count(), h.len() + 2, "{json}");
        for line in [
            // The shapes of the original kinds are unchanged.
            r#"{"id":0,"client":0,"key":0,"kind":{"type":"put","value":1},"invoke_time":0,"complete_time":1,"outcome":{"type":"ok"}}"#,
            r#"{"id":1,"client":1,"key":0,"kind":{"type":"get"},"invoke_time":2,"complete_time":3,"outcome":{"type":"read","value":1}}"#,
            r#"{"id":2,"client":2,"key":0,"kind":{"type":"cas","expected":null,"new":4},"invoke_time":4,"complete_time":5,"outcome":{"type":"cas","success":false}}"#,
            r#"{"id":3,"client":3,"key":1,"kind":{"type":"put","value":7},"invoke_time":6,"complete_time":null,"outcome":{"type":"unknown"}}"#,
            r#"{"id":5,"client":5,"key":2,"kind":{"type":"set_nx","value":9},"invoke_time":7,"complete_time":8,"outcome":{"type":"written","applied":true}}"#,
            r#"{"id":6,"client":6,"key":2,"kind":{"type":"incr"},"invoke_time":9,"complete_time":10,"outcome":{"type":"value","value":3}}"#,
            r#"{"id":7,"client":7,"key":2,"kind":{"type":"del"},"invoke_time":11,"complete_time":12,"outcome":{"type":"deleted","count":1}}"#,
        ] {
            assert!(json.contains(line), "{line} missing from\n{json}");
        }
        assert_eq!(from_json(&json).unwrap(), h);
        assert_eq!(from_json(&to_json(&[])).unwrap(), vec![]);
        // Hand-written: `complete_time` may be left out.
        let parsed = from_json(
            r#"[{"id":0,"client":1,"key":2,"kind":{"type":"incr"},"invoke_time":5,"outcome":{"type":"unknown"}}]"#,
        );
        let expected = Operation {
            id: 0,
            client: 1,
            key: 2,
            kind: OpKind::Incr,
            invoke_time: 5,
            complete_time: None,
            outcome: Outcome::Unknown,
        };
        assert_eq!(parsed.unwrap(), vec![expected]);
    }

    /// The example in `docs/history-format.md` parses, round-trips and is linearizable.
    #[test]
    fn linearizability_documented_example() {
        let doc = include_str!("../../docs/history-format.md");
        let start = doc.find("```json\n").expect("a JSON example") + "```json\n".len();
        let json = &doc[start..start + doc[start..].find("```").unwrap()];
        let h = from_json(json).expect("the documented example parses");
        assert_eq!(to_json(&h), json.trim_end(), "the example is in to_json's format");
        let kinds: HashSet<_> = h.iter().map(|o| std::mem::discriminant(&o.kind)).collect();
        assert_eq!(kinds.len(), 6, "every kind appears");
        assert_eq!(check(&h, Budget::default()), CheckResult::Linearizable);
    }

    #[test]
    fn linearizability_display() {
        assert_eq!(setnx(1, 0, 5, 2, 3, true).to_string(), "#1 c1 k0 set_nx(5) -> applied @2..3");
        assert_eq!(setnx(1, 0, 5, 2, 3, false).to_string(), "#1 c1 k0 set_nx(5) -> not applied @2..3");
        assert_eq!(incr(2, 1, 4, 5, 6).to_string(), "#2 c2 k1 incr() -> 4 @5..6");
        assert_eq!(del(3, 0, 0, 7, 8).to_string(), "#3 c3 k0 del() -> 0 @7..8");
        assert_eq!(timed_out(4, 0, OpKind::Del, 9, 10).to_string(), "#4 c4 k0 del() -> ? @9..");
    }

    #[test]
    fn linearizability_is_deterministic() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut h = generate(&random_specs(&mut rng, 300, 2, 50, 5));
        mutate_to_stale(&mut h);
        assert_eq!(check(&h, Budget::default()), check(&h, Budget::default()));
    }

    fn spec_strategy(kinds: u8) -> impl Strategy<Value = Spec> {
        (0..3u64, 0..kinds, 0..40u64, 0..40u64, prop::bool::weighted(0.05), any::<bool>()).prop_map(
            |(key, kind, before, after, pending, takes_effect)| Spec {
                key,
                kind,
                before,
                after,
                pending,
                takes_effect,
            },
        )
    }

    /// Reference checker: plain backtracking over every real-time-respecting order, with
    /// unknown-outcome operations optional. Exponential; only for tiny histories. Written
    /// straight from the command semantics, independently of [`prepare`]'s [`Step`] encoding.
    fn brute_force(h: &[Operation]) -> bool {
        /// The register after `op` in `state`, or `None` if its outcome is impossible there.
        fn step(op: &Operation, state: Option<u64>) -> Option<Option<u64>> {
            let incremented = state.unwrap_or(0).checked_add(1);
            match (op.kind, op.outcome) {
                (OpKind::Put { value }, Outcome::Ok | Outcome::Unknown) => Some(Some(value)),
                (OpKind::Get, Outcome::Read { value }) => (state == value).then_some(state),
                (OpKind::Get, Outcome::Unknown) => Some(state),
                (OpKind::Cas { expected, new }, Outcome::Cas { success }) => {
                    (success == (state == expected)).then_some(if success { Some(new) } else { state })
                }
                // Either branch; the failed one changes nothing.
                (OpKind::Cas { expected, new }, Outcome::Unknown) => {
                    Some(if state == expected { Some(new) } else { state })
                }
                (OpKind::SetNx { value }, Outcome::Written { applied }) => {
                    (applied == state.is_none()).then_some(if applied { Some(value) } else { state })
                }
                (OpKind::SetNx { value }, Outcome::Unknown) => Some(state.or(Some(value))),
                (OpKind::Incr, Outcome::Value { value }) => (incremented == Some(value)).then_some(incremented),
                (OpKind::Incr, Outcome::Unknown) => incremented.map(Some),
                (OpKind::Del, Outcome::Deleted { count }) => (count == u64::from(state.is_some())).then_some(None),
                (OpKind::Del, Outcome::Unknown) => Some(None),
                _ => None,
            }
        }
        fn rec(h: &[Operation], done: &mut Vec<bool>, state: Option<u64>) -> bool {
            if h.iter().zip(done.iter()).all(|(o, &d)| d || !o.is_complete()) {
                return true;
            }
            for i in 0..h.len() {
                // `i` may go next iff no other open completed op returned before `i` was invoked.
                let blocked = (0..h.len()).any(|j| {
                    !done[j] && j != i && h[j].is_complete() && h[j].complete_time.unwrap() < h[i].invoke_time
                });
                if done[i] || blocked {
                    continue;
                }
                if let Some(next) = step(&h[i], state) {
                    done[i] = true;
                    let ok = rec(h, done, next);
                    done[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        let mut keys: Vec<u64> = h.iter().map(|o| o.key).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter().all(|k| {
            let sub: Vec<Operation> = h.iter().filter(|o| o.key == k).cloned().collect();
            rec(&sub, &mut vec![false; sub.len()], None)
        })
    }

    /// Arbitrary small histories (often not linearizable): values from a tiny range so they
    /// repeat (INCR results collide with written values), random intervals and outcomes, some
    /// unknown.
    fn arbitrary_history() -> impl Strategy<Value = Vec<Operation>> {
        let value = 0..4u64;
        let maybe = prop::option::of(value.clone());
        let kind = prop_oneof![
            value.clone().prop_map(|value| OpKind::Put { value }),
            Just(OpKind::Get),
            (maybe.clone(), value.clone()).prop_map(|(expected, new)| OpKind::Cas { expected, new }),
            value.clone().prop_map(|value| OpKind::SetNx { value }),
            Just(OpKind::Incr),
            Just(OpKind::Del),
        ];
        let one = (0..2u64, kind, 0..12u64, 0..6u64, prop::bool::weighted(0.2), maybe, any::<bool>());
        prop::collection::vec(one, 0..10).prop_map(|ops| {
            ops.into_iter()
                .enumerate()
                .map(|(i, (key, kind, invoke, len, pending, read, flag))| {
                    let outcome = match kind {
                        _ if pending => Outcome::Unknown,
                        OpKind::Put { .. } => Outcome::Ok,
                        OpKind::Get => Outcome::Read { value: read },
                        OpKind::Cas { .. } => Outcome::Cas { success: flag },
                        OpKind::SetNx { .. } => Outcome::Written { applied: flag },
                        OpKind::Incr => Outcome::Value { value: read.unwrap_or(0) },
                        OpKind::Del => Outcome::Deleted { count: u64::from(flag) },
                    };
                    let complete = (!pending).then_some(invoke + len);
                    op(i as u64, key, kind, invoke, complete, outcome)
                })
                .collect()
        })
    }

    /// Changes the outcome of `h[i % len]` to another one of the same kind (a value from a small
    /// range, or the flipped flag). The result may or may not be linearizable.
    fn perturb(h: &mut [Operation], i: usize, value: u64) {
        if h.is_empty() {
            return;
        }
        let n = h.len();
        let o = &mut h[i % n];
        o.outcome = match (o.kind, o.outcome) {
            (_, Outcome::Unknown) => return,
            (OpKind::Get, Outcome::Read { value: v }) => {
                Outcome::Read { value: if v == Some(value) { None } else { Some(value) } }
            }
            (OpKind::Cas { .. }, Outcome::Cas { success }) => Outcome::Cas { success: !success },
            (OpKind::SetNx { .. }, Outcome::Written { applied }) => Outcome::Written { applied: !applied },
            (OpKind::Incr, Outcome::Value { value: v }) => {
                Outcome::Value { value: if v == value { v + 1 } else { value } }
            }
            (OpKind::Del, Outcome::Deleted { count }) => Outcome::Deleted { count: 1 - count },
            // A put has one possible outcome; make it unknown instead (still linearizable).
            (_, outcome) => {
                debug_assert_eq!(outcome, Outcome::Ok);
                Outcome::Unknown
            }
        };
    }

    /// Small histories from a sequential execution (see [`generate`]), intervals overlapping
    /// heavily and a quarter of the outcomes unknown, then one outcome perturbed or not.
    fn near_linearizable_history() -> impl Strategy<Value = (Vec<Operation>, bool)> {
        let spec = (0..2u64, 0..7u8, 0..30u64, 0..30u64, prop::bool::weighted(0.25), any::<bool>()).prop_map(
            |(key, kind, before, after, pending, takes_effect)| Spec {
                key,
                kind,
                before,
                after,
                pending,
                takes_effect,
            },
        );
        (prop::collection::vec(spec, 0..9), any::<bool>(), any::<usize>(), 0..6u64).prop_map(
            |(specs, mutate, i, value)| {
                let mut h = generate(&specs);
                if mutate {
                    perturb(&mut h, i, value);
                }
                (h, mutate)
            },
        )
    }

    /// The same cross-check with a fixed seed, also making sure the reference is not vacuous:
    /// both verdicts must come up often.
    #[test]
    fn linearizability_perturbed_histories_agree_with_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let mut verdicts = [0u32; 2];
        for round in 0..3000 {
            let n = rng.gen_range(1..9);
            let mut specs = random_specs_of(&mut rng, &[0, 1, 2, 3, 4, 5, 5, 6], n, 2, 30, 25);
            for s in &mut specs {
                s.pending = rng.gen_range(0..100) < 25;
            }
            let mut h = generate(&specs);
            let linearizable = brute_force(&h);
            assert!(linearizable, "round {round}: generated history rejected by brute force\n{}", to_json(&h));
            perturb(&mut h, rng.gen_range(0..n), rng.gen_range(0..6));
            let expected = brute_force(&h);
            verdicts[usize::from(expected)] += 1;
            let r = check(&h, Budget::unlimited());
            assert_eq!(r.is_linearizable(), expected, "round {round}: {r:?}\n{}", to_json(&h));
            assert_eq!(r.is_violation(), !expected, "round {round}: {r:?}");
        }
        assert!(verdicts.iter().all(|&v| v > 300), "{verdicts:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any history derived from real linearization points is linearizable: the register
        /// workload, and every kind.
        #[test]
        fn linearizability_generated_histories_pass(specs in prop::collection::vec(spec_strategy(4), 0..200)) {
            let h = generate(&specs);
            prop_assert_eq!(check(&h, Budget::default()), CheckResult::Linearizable);
        }

        #[test]
        fn linearizability_generated_kv_histories_pass(specs in prop::collection::vec(spec_strategy(7), 0..200)) {
            let h = generate(&specs);
            prop_assert_eq!(check(&h, Budget::default()), CheckResult::Linearizable);
        }

        /// The optimised search agrees with brute force on arbitrary small histories.
        #[test]
        fn linearizability_agrees_with_brute_force(h in arbitrary_history()) {
            let r = check(&h, Budget::unlimited());
            prop_assert!(!matches!(r, CheckResult::Undecided { .. }), "undecided");
            prop_assert_eq!(r.is_linearizable(), brute_force(&h), "{:?}\n{}", r, to_json(&h));
        }

        /// ... and on generated histories with one outcome perturbed, which are linearizable
        /// unless the perturbation broke them.
        #[test]
        fn linearizability_perturbed_agrees_with_brute_force((h, mutated) in near_linearizable_history()) {
            let r = check(&h, Budget::unlimited());
            let expected = brute_force(&h);
            prop_assert!(mutated || expected, "unperturbed history rejected by brute force\n{}", to_json(&h));
            prop_assert_eq!(r.is_linearizable(), expected, "{:?}\n{}", r, to_json(&h));
            prop_assert_eq!(r, check(&h, Budget::unlimited()), "deterministic");
        }
    }
}
