//! The client workload driver: concurrent clients, each with at most one
//! operation outstanding, picking random puts and gets over a small key
//! space, retrying on timeouts and redirects, and recording every operation
//! in the history the linearizability checker reads.
//!
//! This is a seam. The driver keeps its own state (`Clients`) and reaches
//! the rest of the world only through `Sim::send` (a request to a node),
//! `Sim::push` (its own wake-ups and timeouts), `Sim::note`/`Sim::fail`, the
//! run's RNG and clock, and `SimConfig::{clients, keys, nodes}`. The world
//! reaches it only through `Sim::start_clients`, the events `client_wake`
//! and `client_timeout`, `client_reply` (a node's answer), and at the end
//! `Clients::max_acked_index`, `Clients::overdue` and `Clients::finish`.

use raft_core::{Index, NodeId};
use rand::Rng;

use super::network::{CLIENT_BASE, NetMsg};
use super::queue::Ev;
use super::{LIVENESS_BOUND_US, Sim, TICK_US};
use crate::history::{OpKind, Operation, Outcome};
use crate::workload::{Command, Op, OpResult};

/// One client.
struct Client {
    id: u64,
    seq: u64,
    /// (history position, command, attempt) of the outstanding operation.
    current: Option<(usize, Command, u64)>,
    /// The node it sends to (its guess at the leader).
    target: NodeId,
}

/// Every client and the history they record.
pub(super) struct Clients {
    list: Vec<Client>,
    history: Vec<Operation>,
    /// The value of the next put: every written value is unique.
    next_value: u64,
    /// The highest log index of an acknowledged write that every live node
    /// must have applied by the end.
    max_acked_index: Index,
}

impl Clients {
    /// No clients yet, an empty history.
    pub(super) fn new() -> Clients {
        Clients { list: Vec::new(), history: Vec::new(), next_value: 1, max_acked_index: 0 }
    }

    /// The highest log index of a write acknowledged early enough that
    /// every live node must have applied it by the end.
    pub(super) fn max_acked_index(&self) -> Index {
        self.max_acked_index
    }

    /// The first client (id, history position) whose outstanding operation
    /// was invoked more than 30 ticks before `ops_end_us`.
    pub(super) fn overdue(&self, ops_end_us: u64) -> Option<(u64, usize)> {
        self.list.iter().find_map(|c| {
            let (pos, _, _) = c.current?;
            (self.history[pos].invoke_time + 30 * TICK_US < ops_end_us).then_some((c.id, pos))
        })
    }

    /// Ends the run: operations still outstanding have an unknown outcome.
    /// Returns the history.
    pub(super) fn finish(&mut self) -> Vec<Operation> {
        for c in &self.list {
            if let Some((pos, _, _)) = c.current {
                self.history[pos].outcome = Outcome::Unknown;
                self.history[pos].complete_time = None;
            }
        }
        std::mem::take(&mut self.history)
    }

    /// Records the invocation of `op` by `client` at `now`; returns its
    /// position in the history.
    fn invoke(&mut self, client: u64, op: Op, now: u64) -> usize {
        let (key, kind) = match op {
            Op::Put { key, value } => (key, OpKind::Put { value }),
            Op::Get { key } => (key, OpKind::Get),
        };
        let pos = self.history.len();
        self.history.push(Operation {
            id: pos as u64,
            client,
            key,
            kind,
            invoke_time: now,
            complete_time: None,
            outcome: Outcome::Unknown,
        });
        pos
    }
}

impl Sim {
    /// Creates the clients, each aimed at a random one of `n` nodes, and
    /// queues their first wake-ups.
    pub(super) fn start_clients(&mut self, n: u64) {
        for c in 0..self.cfg.clients as u64 {
            let id = CLIENT_BASE + c;
            let target = self.rng.gen_range(1..=n);
            self.clients.list.push(Client { id, seq: 0, current: None, target });
            let at = self.rng.gen_range(0..50_000);
            self.push(at, Ev::ClientWake { client: id });
        }
    }

    /// A client starts its next operation (if it is idle and operations
    /// have not stopped).
    pub(super) fn client_wake(&mut self, client: u64) {
        let c = (client - CLIENT_BASE) as usize;
        if self.clients.list[c].current.is_some() || self.now >= self.ops_end_us() {
            return;
        }
        let key = self.rng.gen_range(0..self.cfg.keys);
        let op = if self.rng.gen_bool(0.5) {
            let value = self.clients.next_value;
            self.clients.next_value += 1;
            Op::Put { key, value }
        } else {
            Op::Get { key }
        };
        self.clients.list[c].seq += 1;
        let cmd = Command { client, seq: self.clients.list[c].seq, op };
        let pos = self.clients.invoke(client, op, self.now);
        self.clients.list[c].current = Some((pos, cmd, 0));
        self.client_send(c);
    }

    /// Sends the outstanding operation of client `c` and arms its timeout.
    fn client_send(&mut self, c: usize) {
        let client = &self.clients.list[c];
        let Some((_, cmd, attempt)) = client.current else { return };
        let (id, target) = (client.id, client.target);
        self.note(|| format!("client {id} -> {target} {:?} seq {} attempt {attempt}", cmd.op, cmd.seq));
        self.send(id, target, NetMsg::Request(cmd));
        let timeout = self.now + 8 * TICK_US;
        self.push(timeout, Ev::ClientTimeout { client: id, seq: cmd.seq, attempt });
    }

    /// A node's answer reaches a client: the result, or a redirect.
    pub(super) fn client_reply(&mut self, client: u64, seq: u64, result: Result<(OpResult, Index), Option<NodeId>>) {
        let c = (client - CLIENT_BASE) as usize;
        let Some((pos, cmd, attempt)) = self.clients.list[c].current else { return };
        if cmd.seq != seq {
            return;
        }
        match result {
            Ok((r, index)) => self.client_done(c, pos, cmd, r, index),
            Err(hint) => self.client_redirected(c, pos, cmd, attempt, hint),
        }
    }

    /// The outstanding operation completed with `r`, applied at `index`.
    fn client_done(&mut self, c: usize, pos: usize, cmd: Command, r: OpResult, index: Index) {
        let client = cmd.client;
        let outcome = match (cmd.op, r) {
            (Op::Put { .. }, OpResult::Written) => Outcome::Ok,
            (Op::Get { .. }, OpResult::Read(value)) => Outcome::Read { value },
            _ => {
                self.fail("client", format!("client {client} got a mismatched reply {r:?} to {:?}", cmd.op));
                return;
            }
        };
        self.clients.history[pos].outcome = outcome;
        self.clients.history[pos].complete_time = Some(self.now);
        // Acks in the last stretch of the run may not have reached every
        // node yet; the liveness bound covers the others.
        if self.now + LIVENESS_BOUND_US <= self.end_us() {
            self.clients.max_acked_index = self.clients.max_acked_index.max(index);
        }
        self.clients.list[c].current = None;
        let think = self.rng.gen_range(0..20_000);
        self.push(self.now + think, Ev::ClientWake { client });
    }

    /// The node was not the leader: retry shortly, at the hinted leader if
    /// it named a different node, else at a random one.
    fn client_redirected(&mut self, c: usize, pos: usize, cmd: Command, attempt: u64, hint: Option<NodeId>) {
        let n = self.cfg.nodes as u64;
        let target = match hint {
            Some(h) if h != self.clients.list[c].target => h,
            _ => self.rng.gen_range(1..=n),
        };
        self.clients.list[c].target = target;
        self.clients.list[c].current = Some((pos, cmd, attempt + 1));
        let c_id = self.clients.list[c].id;
        let backoff = self.rng.gen_range(1_000..5_000);
        self.push(self.now + backoff, Ev::ClientTimeout { client: c_id, seq: cmd.seq, attempt: u64::MAX });
    }

    /// A client's timer fires: the retry after a redirect, or a timeout of
    /// the current attempt (retry at a random node).
    pub(super) fn client_timeout(&mut self, client: u64, seq: u64, attempt: u64) {
        let c = (client - CLIENT_BASE) as usize;
        let Some((pos, cmd, current_attempt)) = self.clients.list[c].current else { return };
        if cmd.seq != seq {
            return;
        }
        if attempt == u64::MAX {
            // Retry after a NotLeader answer (already redirected).
            self.clients.list[c].current = Some((pos, cmd, current_attempt));
            self.client_send(c);
            return;
        }
        if attempt != current_attempt {
            return;
        }
        let n = self.cfg.nodes as u64;
        self.clients.list[c].target = self.rng.gen_range(1..=n);
        self.clients.list[c].current = Some((pos, cmd, attempt + 1));
        self.client_send(c);
    }
}
