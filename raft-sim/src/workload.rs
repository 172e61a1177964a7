//! The key-value client workload and the replicated state machine the
//! simulated nodes apply it to.
//!
//! Commands are 33-byte records (client, seq, kind, key, value). The state
//! machine keeps a session per client (last seq and its result) so a retried
//! command applies exactly once, as a production KV server must.

use std::collections::BTreeMap;

use raft_core::Bytes;

/// A client operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `value` to `key`.
    Put {
        /// The register.
        key: u64,
        /// The value, unique per write.
        value: u64,
    },
    /// Read `key`.
    Get {
        /// The register.
        key: u64,
    },
}

impl Op {
    /// The register the operation touches.
    pub fn key(&self) -> u64 {
        match *self {
            Op::Put { key, .. } | Op::Get { key } => key,
        }
    }
}

/// The state machine's answer to an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A write took effect.
    Written,
    /// A read returned this value (`None`: never written).
    Read(Option<u64>),
}

/// A client command as it travels in a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The issuing client (its session id).
    pub client: u64,
    /// The client's sequence number for this operation.
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

impl Command {
    /// Encodes into an entry payload.
    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(33);
        b.extend_from_slice(&self.client.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        let (kind, key, value) = match self.op {
            Op::Put { key, value } => (1u8, key, value),
            Op::Get { key } => (2u8, key, 0),
        };
        b.push(kind);
        b.extend_from_slice(&key.to_le_bytes());
        b.extend_from_slice(&value.to_le_bytes());
        Bytes::from(b)
    }

    /// Decodes an entry payload; `None` if it is not a command.
    pub fn decode(b: &[u8]) -> Option<Command> {
        if b.len() != 33 {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let op = match b[16] {
            1 => Op::Put { key: u(17), value: u(25) },
            2 => Op::Get { key: u(17) },
            _ => return None,
        };
        Some(Command { client: u(0), seq: u(8), op })
    }
}

/// The replicated key-value state machine of one simulated node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvMachine {
    data: BTreeMap<u64, u64>,
    /// client -> (last applied seq, its result).
    sessions: BTreeMap<u64, (u64, OpResult)>,
    /// Commands that took effect (not deduplicated retries).
    pub effects: u64,
}

impl KvMachine {
    /// Applies one command, exactly once per (client, seq). Returns the
    /// result, or `None` for a stale command older than the session's last
    /// (its client has long moved on and will not read the answer).
    pub fn apply(&mut self, c: &Command) -> Option<OpResult> {
        if let Some(&(seq, result)) = self.sessions.get(&c.client) {
            if c.seq == seq {
                return Some(result);
            }
            if c.seq < seq {
                return None;
            }
        }
        let result = match c.op {
            Op::Put { key, value } => {
                self.data.insert(key, value);
                OpResult::Written
            }
            Op::Get { key } => OpResult::Read(self.data.get(&key).copied()),
        };
        self.effects += 1;
        self.sessions.insert(c.client, (c.seq, result));
        Some(result)
    }

    /// The current contents.
    pub fn data(&self) -> &BTreeMap<u64, u64> {
        &self.data
    }
}
