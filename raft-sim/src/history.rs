//! Client-observed operation histories of the simulated key-value workload.
//!
//! A history is a flat list of [`Operation`]s as seen by the clients: when each request was
//! invoked, when (if ever) its response arrived and what the response said. It is the input of
//! the linearizability checker ([`crate::linearizability::check`]) and can be exported as JSON
//! ([`to_json`]) so a failing run can be inspected or re-checked with external tools; the format
//! is documented in `docs/history-format.md`.
//!
//! Each key is a register whose state is either absent (`None`) or an integer. The operations
//! mirror the Redis-like store's commands: `SET` ([`OpKind::Put`]), `GET` ([`OpKind::Get`]),
//! `SET NX` ([`OpKind::SetNx`]), `INCR` ([`OpKind::Incr`]), `DEL` ([`OpKind::Del`]) and a
//! compare-and-set ([`OpKind::Cas`]). Values are `u64`: the workload only uses non-negative
//! integers (at most `i64::MAX`, where Redis' signed 64-bit counters and this model agree).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One client request against the key-value store and what the client observed of it.
///
/// Times are the simulator's virtual clock, in microseconds (one Raft tick is `sim::TICK_US`
/// = 10,000 of them), not ticks. An operation whose response never arrived (the client timed
/// out, crashed, or the run ended first) has [`Outcome::Unknown`]: it may or may not have taken
/// effect, at any time after `invoke_time`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// Unique identifier of the operation within its history (used in reports only).
    pub id: u64,
    /// The client that issued the operation (informational; the checker does not use it).
    pub client: u64,
    /// The key (register) the operation addresses.
    pub key: u64,
    /// What was requested.
    pub kind: OpKind,
    /// Virtual time (microseconds) at which the client sent the request.
    pub invoke_time: u64,
    /// Virtual time (microseconds) at which the client received the response; `None` if it
    /// never did.
    ///
    /// Only meaningful together with a known [`Outcome`]: for [`Outcome::Unknown`] it is ignored
    /// (a timeout observed at some time does not bound when the request takes effect).
    #[serde(default)]
    pub complete_time: Option<u64>,
    /// The response the client observed.
    pub outcome: Outcome,
}

/// The request an [`Operation`] made.
///
/// Each kind has exactly one matching known [`Outcome`] (listed per variant); any kind may also
/// end [`Outcome::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    /// `SET key value`: unconditionally set the key to `value`. Outcome [`Outcome::Ok`].
    Put {
        /// The value written; workloads keep values unique per write so histories check fast.
        value: u64,
    },
    /// `GET key`: read the key. Outcome [`Outcome::Read`].
    Get,
    /// Compare-and-set: if the key currently holds `expected` (`None` = absent: never written
    /// or deleted), set it to `new`. Outcome [`Outcome::Cas`].
    Cas {
        /// The value the key must hold for the swap to happen.
        expected: Option<u64>,
        /// The value written on success.
        new: u64,
    },
    /// `SET key value NX`: set the key to `value` only if it is absent (never written, or
    /// deleted since). Outcome [`Outcome::Written`].
    SetNx {
        /// The value written if the key was absent.
        value: u64,
    },
    /// `INCR key`: add one to the key's value, an absent key counting as 0. Outcome
    /// [`Outcome::Value`] with the new value.
    Incr,
    /// `DEL key`: make the key absent. Outcome [`Outcome::Deleted`].
    Del,
}

/// The response a client observed for an [`Operation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// A [`OpKind::Put`] was acknowledged.
    Ok,
    /// A [`OpKind::Get`] returned `value` (`None` = the key was absent: never written or
    /// deleted).
    Read {
        /// The value read.
        value: Option<u64>,
    },
    /// A [`OpKind::Cas`] reported whether the swap happened.
    Cas {
        /// `true` if the key held `expected` and now holds `new`.
        success: bool,
    },
    /// A [`OpKind::SetNx`] reported whether it wrote.
    Written {
        /// `true` iff the key was absent and now holds the value; `false` if it held a value,
        /// which is left unchanged.
        applied: bool,
    },
    /// A [`OpKind::Incr`] returned the key's new value (at least 1).
    Value {
        /// The value after the increment: the old value plus one, or 1 if the key was absent.
        value: u64,
    },
    /// A [`OpKind::Del`] reported how many keys it removed.
    Deleted {
        /// 1 if the key existed (it is now absent), 0 if it was already absent.
        count: u64,
    },
    /// No response: the operation may or may not have taken effect.
    Unknown,
}

impl Operation {
    /// Whether the client received a definite response.
    pub fn is_complete(&self) -> bool {
        self.outcome != Outcome::Unknown
    }
}

/// Formats a value of the register; `nil` stands for "absent".
struct Val(Option<u64>);

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("nil"),
        }
    }
}

/// Compact human-readable form used in checker reports, e.g.
/// `#7 c2 k0 cas(nil -> 4) -> true @10..20`, `#8 c2 k0 incr() -> 3 @21..40` or
/// `#9 c1 k0 put(5) -> ? @12..` (no response). Times are microseconds.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} c{} k{} ", self.id, self.client, self.key)?;
        match self.kind {
            OpKind::Put { value } => write!(f, "put({value})")?,
            OpKind::Get => f.write_str("get()")?,
            OpKind::Cas { expected, new } => write!(f, "cas({} -> {new})", Val(expected))?,
            OpKind::SetNx { value } => write!(f, "set_nx({value})")?,
            OpKind::Incr => f.write_str("incr()")?,
            OpKind::Del => f.write_str("del()")?,
        }
        match self.outcome {
            Outcome::Ok => f.write_str(" -> ok")?,
            Outcome::Read { value } => write!(f, " -> {}", Val(value))?,
            Outcome::Cas { success } => write!(f, " -> {success}")?,
            Outcome::Written { applied } => write!(f, " -> {}", if applied { "applied" } else { "not applied" })?,
            Outcome::Value { value } => write!(f, " -> {value}")?,
            Outcome::Deleted { count } => write!(f, " -> {count}")?,
            Outcome::Unknown => f.write_str(" -> ?")?,
        }
        match (self.is_complete(), self.complete_time) {
            (true, Some(t)) => write!(f, " @{}..{t}", self.invoke_time),
            _ => write!(f, " @{}..", self.invoke_time),
        }
    }
}

/// Serialises a history as a JSON array with one operation object per line.
///
/// One element per line (rather than one compact blob) keeps exported histories diffable and
/// greppable. See `docs/history-format.md` for the schema.
pub fn to_json(history: &[Operation]) -> String {
    let mut out = String::from("[");
    for (i, op) in history.iter().enumerate() {
        out.push_str(if i == 0 { "\n  " } else { ",\n  " });
        // Serialising plain structs of integers into a String cannot fail.
        out.push_str(&serde_json::to_string(op).expect("operation serialises to JSON"));
    }
    out.push_str(if history.is_empty() { "]" } else { "\n]" });
    out
}

/// Parses a history produced by [`to_json`] (or written by hand in the same format).
pub fn from_json(json: &str) -> Result<Vec<Operation>, serde_json::Error> {
    serde_json::from_str(json)
}
