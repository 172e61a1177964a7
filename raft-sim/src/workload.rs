//! The client workload: Redis commands against the real raftkv store.
//!
//! Nothing here models the store. A client operation is written as the Redis arguments a user would
//! send (`SET k3 17 NX`), parsed by raftkv's own command parser into a [`KvOp`], wrapped in the real
//! [`KvRequest`] with the client's session and sequence number, and encoded with the real log encoding.
//! Every simulated node applies the entries to a real [`KvStore`](raft_driver_std::raftkv::store::KvStore) through the driver's
//! [`StateMachine`](raft_driver_std::StateMachine) trait, and the store's own [`KvResult`] is what the
//! client observes. A bug in the store's sessions, its commands or their encoding is therefore a bug
//! the seed sweep can find.
//!
//! The operations are the ones the linearizability checker can judge per key on an integer register
//! that may be absent: `SET`, `SET NX` (a conditional write), `GET`, `INCR` and `DEL`.

use raft_core::Bytes;
use raft_driver_std::raftkv::command::{ParsedCommand, parse_command};
use raft_driver_std::raftkv::store::{KvOp, KvRequest, KvResult};
use rand::Rng;

use crate::history::{OpKind, Outcome};

/// A client operation on one key. Keys are small integers (`k0`, `k1`, ...) and values are decimal
/// integers, so that `INCR` applies to every value the workload writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `SET key value`.
    Set {
        /// The register.
        key: u64,
        /// The value, unique per write.
        value: u64,
    },
    /// `SET key value NX`: only if the key is absent.
    SetNx {
        /// The register.
        key: u64,
        /// The value, unique per write.
        value: u64,
    },
    /// `GET key`.
    Get {
        /// The register.
        key: u64,
    },
    /// `INCR key`.
    Incr {
        /// The register.
        key: u64,
    },
    /// `DEL key`.
    Del {
        /// The register.
        key: u64,
    },
}

impl Op {
    /// A random operation on one of `keys` keys; writes take fresh values from `next_value`.
    /// The mix favours reads and plain writes (which the checker decides fastest), with enough
    /// conditional writes, increments and deletes to exercise every path of the store.
    pub fn random(rng: &mut impl Rng, keys: u64, next_value: &mut u64) -> Op {
        let key = rng.gen_range(0..keys.max(1));
        let mut fresh = || {
            let value = *next_value;
            *next_value += 1;
            value
        };
        match rng.gen_range(0..100) {
            0..=34 => Op::Get { key },
            35..=64 => Op::Set { key, value: fresh() },
            65..=76 => Op::SetNx { key, value: fresh() },
            77..=90 => Op::Incr { key },
            _ => Op::Del { key },
        }
    }

    /// The register the operation touches.
    pub fn key(&self) -> u64 {
        match *self {
            Op::Set { key, .. } | Op::SetNx { key, .. } | Op::Get { key } | Op::Incr { key } | Op::Del { key } => key,
        }
    }

    /// The Redis arguments of the operation, as a client sends them.
    pub fn args(&self) -> Vec<Bytes> {
        let key = Bytes::from(format!("k{}", self.key()));
        let word = |w: &'static str| Bytes::from_static(w.as_bytes());
        let number = |v: u64| Bytes::from(v.to_string());
        match *self {
            Op::Set { value, .. } => vec![word("SET"), key, number(value)],
            Op::SetNx { value, .. } => vec![word("SET"), key, number(value), word("NX")],
            Op::Get { .. } => vec![word("GET"), key],
            Op::Incr { .. } => vec![word("INCR"), key],
            Op::Del { .. } => vec![word("DEL"), key],
        }
    }

    /// The log entry payload for this operation: raftkv's parser and request encoding. Reads carry no
    /// session, exactly as the server sends them.
    pub fn encode(&self, session: u64, seq: u64, now_ms: u64) -> Result<Bytes, String> {
        Ok(Op::request(self.parse()?, session, seq, now_ms))
    }

    /// The operation as raftkv's command parser reads its Redis arguments. A client parses once per
    /// operation and encodes each attempt with [`Op::request`].
    pub fn parse(&self) -> Result<KvOp, String> {
        match parse_command(&self.args()) {
            Ok(ParsedCommand::Replicate(op)) => Ok(op),
            other => Err(format!("{:?} does not parse to a replicated op: {other:?}", self.args())),
        }
    }

    /// The log entry payload of one attempt of a parsed operation, stamped with the proposer's clock
    /// as the server stamps it. Reads carry no session.
    pub fn request(op: KvOp, session: u64, seq: u64, now_ms: u64) -> Bytes {
        let (session, seq) = if op.is_read_only() { (0, 0) } else { (session, seq) };
        KvRequest { session, seq, now_ms, op }.encode()
    }

    /// The operation as the history records it.
    pub fn kind(&self) -> OpKind {
        match *self {
            Op::Set { value, .. } => OpKind::Put { value },
            Op::SetNx { value, .. } => OpKind::SetNx { value },
            Op::Get { .. } => OpKind::Get,
            Op::Incr { .. } => OpKind::Incr,
            Op::Del { .. } => OpKind::Del,
        }
    }

    /// What the client observed, from the store's result; an `Err` is a result this operation can
    /// never produce (a bug of the store or of the workload).
    pub fn outcome(&self, result: &KvResult) -> Result<Outcome, String> {
        let number = |b: &Bytes| std::str::from_utf8(b).ok().and_then(|s| s.parse::<u64>().ok());
        let outcome = match (self, result) {
            (Op::Set { .. }, KvResult::Ok) => Some(Outcome::Ok),
            (Op::SetNx { .. }, KvResult::Ok) => Some(Outcome::Written { applied: true }),
            (Op::SetNx { .. }, KvResult::Nil) => Some(Outcome::Written { applied: false }),
            (Op::Get { .. }, KvResult::Nil) => Some(Outcome::Read { value: None }),
            (Op::Get { .. }, KvResult::Value(v)) => number(v).map(|v| Outcome::Read { value: Some(v) }),
            (Op::Incr { .. }, KvResult::Integer(n)) => u64::try_from(*n).ok().map(|value| Outcome::Value { value }),
            (Op::Del { .. }, KvResult::Integer(n)) => u64::try_from(*n).ok().map(|count| Outcome::Deleted { count }),
            _ => None,
        };
        outcome.ok_or_else(|| format!("{:?} answered {result:?}", self.args()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_driver_std::StateMachine;
    use raft_driver_std::raftkv::store::KvStore;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(store: &mut KvStore, index: &mut u64, op: Op, session: u64, seq: u64) -> Outcome {
        *index += 1;
        let result = store.apply(*index, &op.encode(session, seq, 1_000).expect("encodes"));
        op.outcome(&result).expect("expected result")
    }

    #[test]
    fn every_op_goes_through_the_real_store_and_reads_back_as_the_history_expects() {
        let (mut store, mut i) = (KvStore::new(), 0);
        assert_eq!(run(&mut store, &mut i, Op::Get { key: 1 }, 5, 1), Outcome::Read { value: None });
        assert_eq!(run(&mut store, &mut i, Op::SetNx { key: 1, value: 7 }, 5, 2), Outcome::Written { applied: true });
        assert_eq!(run(&mut store, &mut i, Op::SetNx { key: 1, value: 8 }, 5, 3), Outcome::Written { applied: false });
        assert_eq!(run(&mut store, &mut i, Op::Incr { key: 1 }, 5, 4), Outcome::Value { value: 8 });
        assert_eq!(run(&mut store, &mut i, Op::Get { key: 1 }, 5, 5), Outcome::Read { value: Some(8) });
        assert_eq!(run(&mut store, &mut i, Op::Set { key: 1, value: 3 }, 5, 6), Outcome::Ok);
        assert_eq!(run(&mut store, &mut i, Op::Del { key: 1 }, 5, 7), Outcome::Deleted { count: 1 });
        assert_eq!(run(&mut store, &mut i, Op::Del { key: 1 }, 5, 8), Outcome::Deleted { count: 0 });
        assert_eq!(run(&mut store, &mut i, Op::Incr { key: 2 }, 5, 9), Outcome::Value { value: 1 });
        // A retry with the same session and sequence is answered from the session, not applied again.
        assert_eq!(run(&mut store, &mut i, Op::Incr { key: 2 }, 5, 9), Outcome::Value { value: 1 });
        assert_eq!(store.stats().deduplicated, 1);
    }

    #[test]
    fn reads_carry_no_session_and_writes_do() {
        let decode = |b: Bytes| KvRequest::decode(&b).expect("decodes");
        let read = decode(Op::Get { key: 0 }.encode(9, 4, 0).expect("encodes"));
        assert_eq!((read.session, read.seq), (0, 0));
        let write = decode(Op::Del { key: 0 }.encode(9, 4, 0).expect("encodes"));
        assert_eq!((write.session, write.seq), (9, 4));
    }

    #[test]
    fn the_random_mix_issues_every_kind_with_fresh_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut next = 1;
        let ops: Vec<Op> = (0..1000).map(|_| Op::random(&mut rng, 3, &mut next)).collect();
        for kind in ["SET", "NX", "GET", "INCR", "DEL"] {
            let seen = ops.iter().filter(|op| op.args().iter().any(|a| a == kind.as_bytes())).count();
            assert!(seen > 50, "{kind} issued {seen} times");
        }
        assert!(ops.iter().all(|op| op.key() < 3));
        let mut values: Vec<u64> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Set { value, .. } | Op::SetNx { value, .. } => Some(*value),
                _ => None,
            })
            .collect();
        let n = values.len();
        values.dedup();
        assert_eq!(values.len(), n, "write values are unique");
    }

    #[test]
    fn impossible_results_are_reported() {
        assert!(Op::Set { key: 0, value: 1 }.outcome(&KvResult::Nil).is_err());
        assert!(Op::Get { key: 0 }.outcome(&KvResult::Value(Bytes::from_static(b"x"))).is_err());
        assert!(Op::Incr { key: 0 }.outcome(&KvResult::Integer(-1)).is_err());
    }
}
