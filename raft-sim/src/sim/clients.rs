//! The client workload driver: concurrent clients, each with at most one operation outstanding, issuing
//! Redis commands ([`crate::workload::Op`]) over a small key space, retrying on timeouts and errors with
//! the same session and sequence number (as the raftkv server does), and recording every operation in
//! the history the linearizability checker reads.
//!
//! Some clients are impatient: after a few timeouts they give up, leaving the operation's outcome
//! unknown in the history (it may still take effect later, which the checker must allow), and move on,
//! sometimes on a fresh session as a reconnecting Redis client would.
//!
//! This is a seam. The driver keeps its own state (`Clients`) and reaches the rest of the world only
//! through `Sim::send` (a request to a node), `Sim::push` (its own wake-ups and timeouts),
//! `Sim::note`/`Sim::fail`, the run's RNG and clock, and `SimConfig::{clients, keys, nodes}`. The world
//! reaches it only through `Sim::start_clients`, the events `client_wake` and `client_timeout`,
//! `client_reply` (a node's answer), and at the end `Clients::max_acked_index`, `Clients::overdue` and
//! `Clients::finish`.

use raft_core::{Index, NodeId, ProposeError, ReadError};
use raft_driver_std::proposals::ProposalError;
use raft_driver_std::raftkv::store::{KvOp, KvResult};
use raft_driver_std::reads::ReadFailure;
use rand::Rng;

use super::network::{CLIENT_BASE, ClientError, NetMsg};
use super::node::{Request, Waiter};
use super::queue::Ev;
use super::{LIVENESS_BOUND_US, Sim, TICK_US};
use crate::history::{Operation, Outcome};
use crate::workload::Op;

/// How long a client first waits for an answer before it retries (twice this after the first timeout).
const TIMEOUT_US: u64 = 8 * TICK_US;

/// The operation a client is waiting for.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// Its position in the history.
    pos: usize,
    op: Op,
    /// The session and sequence number it was first sent with; every retry reuses them.
    session: u64,
    seq: u64,
    /// Attempts so far (a timeout or an answer of an earlier attempt is ignored).
    attempt: u64,
    /// Attempts that timed out.
    timeouts: u32,
}

/// One client.
struct Client {
    id: u64,
    /// Its current session id (unique across clients and their reconnections).
    session: u64,
    /// Sessions it has had (the next one's number).
    generation: u64,
    seq: u64,
    current: Option<Outstanding>,
    /// The outstanding operation as the server's parser read it (parsed once, encoded per attempt).
    command: Option<KvOp>,
    /// The node it sends to (its guess at the leader).
    target: NodeId,
    /// Timeouts after which it gives up on an operation; `None`: it never does.
    patience: Option<u32>,
}

impl Client {
    fn session_id(id: u64, generation: u64) -> u64 {
        ((id - CLIENT_BASE + 1) << 32) | generation
    }
}

/// Every client and the history they record.
pub(super) struct Clients {
    list: Vec<Client>,
    history: Vec<Operation>,
    /// The value of the next write: every written value is unique.
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

    /// The first patient client (id, history position) whose outstanding operation was invoked more
    /// than 30 ticks before `ops_end_us`.
    pub(super) fn overdue(&self, ops_end_us: u64) -> Option<(u64, usize)> {
        self.list.iter().find_map(|c| {
            let pos = c.current?.pos;
            (self.history[pos].invoke_time + 30 * TICK_US < ops_end_us).then_some((c.id, pos))
        })
    }

    /// Ends the run: operations still outstanding have an unknown outcome.
    /// Returns the history.
    pub(super) fn finish(&mut self) -> Vec<Operation> {
        for c in &self.list {
            if let Some(o) = c.current {
                self.history[o.pos].outcome = Outcome::Unknown;
                self.history[o.pos].complete_time = None;
            }
        }
        std::mem::take(&mut self.history)
    }

    /// Records the invocation of `op` by `client` at `now`; returns its
    /// position in the history.
    fn invoke(&mut self, client: u64, op: Op, now: u64) -> usize {
        let pos = self.history.len();
        self.history.push(Operation {
            id: pos as u64,
            client,
            key: op.key(),
            kind: op.kind(),
            invoke_time: now,
            complete_time: None,
            outcome: Outcome::Unknown,
        });
        pos
    }
}

impl Sim {
    /// Creates the clients, each aimed at a random one of `n` nodes, and
    /// queues their first wake-ups. About a third of them are impatient.
    pub(super) fn start_clients(&mut self, n: u64) {
        for c in 0..self.cfg.clients as u64 {
            let id = CLIENT_BASE + c;
            let target = self.rng.gen_range(1..=n);
            let patience = self.rng.gen_bool(0.35).then(|| self.rng.gen_range(1..=3));
            let session = Client::session_id(id, 0);
            let client = Client { id, session, generation: 1, seq: 0, current: None, command: None, target, patience };
            self.clients.list.push(client);
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
        let op = Op::random(&mut self.rng, self.cfg.keys, &mut self.clients.next_value);
        let command = match op.parse() {
            Ok(command) => command,
            Err(e) => return self.fail("client", e),
        };
        let pos = self.clients.invoke(client, op, self.now);
        let cl = &mut self.clients.list[c];
        cl.seq += 1;
        cl.current = Some(Outstanding { pos, op, session: cl.session, seq: cl.seq, attempt: 0, timeouts: 0 });
        cl.command = Some(command);
        self.client_send(c);
    }

    /// Sends the outstanding operation of client `c` and arms its timeout.
    fn client_send(&mut self, c: usize) {
        let client = &self.clients.list[c];
        let (Some(o), Some(command)) = (client.current, client.command.clone()) else { return };
        let (id, target) = (client.id, client.target);
        let data = Op::request(command.clone(), o.session, o.seq, self.now / 1000);
        self.note(|| format!("client {id} -> {target} {:?} seq {} attempt {}", o.op, o.seq, o.attempt));
        let request = Request { waiter: Waiter { client: id, seq: o.seq }, op: command, data };
        self.send(id, target, NetMsg::Request(request));
        // The timeout doubles with each one that passed, as a real client's does: a fixed timeout
        // shorter than a slow leader's commit latency would add a copy of the command to its log on
        // every expiry, faster than the log commits.
        let timeout = TIMEOUT_US << o.timeouts.min(1);
        self.push(self.now + timeout, Ev::ClientTimeout { client: id, seq: o.seq, attempt: o.attempt });
    }

    /// A node's answer reaches a client: the store's result, or the driver's error.
    pub(super) fn client_reply(&mut self, client: u64, seq: u64, result: Result<(KvResult, Index), ClientError>) {
        let c = (client - CLIENT_BASE) as usize;
        let Some(o) = self.clients.list[c].current.filter(|o| o.seq == seq) else { return };
        match result {
            Ok((r, index)) => self.client_done(c, o, &r, index),
            Err(error) => self.client_retry(c, o, &error),
        }
    }

    /// The outstanding operation completed with `r`, applied at `index`.
    fn client_done(&mut self, c: usize, o: Outstanding, r: &KvResult, index: Index) {
        let client = self.clients.list[c].id;
        let outcome = match o.op.outcome(r) {
            Ok(outcome) => outcome,
            Err(e) => return self.fail("client", format!("client {client} seq {}: {e}", o.seq)),
        };
        self.clients.history[o.pos].outcome = outcome;
        self.clients.history[o.pos].complete_time = Some(self.now);
        // Acks in the last stretch of the run may not have reached every
        // node yet; the liveness bound covers the others.
        if self.now + LIVENESS_BOUND_US <= self.end_us() {
            self.clients.max_acked_index = self.clients.max_acked_index.max(index);
        }
        self.next_op(c);
    }

    /// Idle, then the next operation after a short think time.
    fn next_op(&mut self, c: usize) {
        self.clients.list[c].current = None;
        self.clients.list[c].command = None;
        let think = self.rng.gen_range(0..20_000);
        let client = self.clients.list[c].id;
        self.push(self.now + think, Ev::ClientWake { client });
    }

    /// The node could not answer: retry shortly, at the leader it named if it named a different one,
    /// else at a random node. Every error of the driver is retryable for these commands (none is over
    /// the size limit, and a simulated node never stops while it answers).
    fn client_retry(&mut self, c: usize, o: Outstanding, error: &ClientError) {
        let retryable = match error {
            ClientError::Proposal(e) => e.is_retryable(),
            ClientError::Read(e) => e.is_retryable(),
        };
        if !retryable {
            let client = self.clients.list[c].id;
            return self.fail("client", format!("client {client} seq {}: final error {error:?}", o.seq));
        }
        let hint = match error {
            ClientError::Proposal(ProposalError::Refused(ProposeError::NotLeader { leader }))
            | ClientError::Read(ReadFailure::Refused(ReadError::NotLeader { leader })) => *leader,
            _ => None,
        };
        let n = self.node_count();
        let target = match hint {
            Some(h) if h != self.clients.list[c].target => h,
            _ => self.rng.gen_range(1..=n),
        };
        let cl = &mut self.clients.list[c];
        cl.target = target;
        cl.current = Some(Outstanding { attempt: o.attempt + 1, ..o });
        let id = cl.id;
        // Exponential backoff, as the raftkv server's retry loop does (5 ms doubling to 50 ms there):
        // a client that retried at a fixed short interval would flood a slow leader's log with copies
        // of its command.
        let cap = (1_000u64 << o.attempt.min(6)).min(50_000);
        let backoff = self.rng.gen_range(cap / 2..=cap);
        self.push(self.now + backoff, Ev::ClientTimeout { client: id, seq: o.seq, attempt: u64::MAX });
    }

    /// A client's timer fires: the retry after an error, or a timeout of
    /// the current attempt (retry at a random node, or give up).
    pub(super) fn client_timeout(&mut self, client: u64, seq: u64, attempt: u64) {
        let c = (client - CLIENT_BASE) as usize;
        let Some(o) = self.clients.list[c].current.filter(|o| o.seq == seq) else { return };
        if attempt == u64::MAX {
            // Retry after an error answer (already redirected).
            return self.client_send(c);
        }
        if attempt != o.attempt {
            return;
        }
        let timeouts = o.timeouts + 1;
        if self.clients.list[c].patience.is_some_and(|p| timeouts >= p) {
            return self.give_up(c);
        }
        let n = self.node_count();
        self.clients.list[c].target = self.rng.gen_range(1..=n);
        self.clients.list[c].current = Some(Outstanding { attempt: o.attempt + 1, timeouts, ..o });
        self.client_send(c);
    }

    /// An impatient client stops waiting: the operation's outcome stays unknown (it may still take
    /// effect). Half the time the client also starts a fresh session, as a Redis client that
    /// reconnects gets a new connection and so a new session on the server.
    fn give_up(&mut self, c: usize) {
        let new_session = self.rng.gen_bool(0.5);
        let cl = &mut self.clients.list[c];
        if new_session {
            cl.session = Client::session_id(cl.id, cl.generation);
            cl.generation += 1;
        }
        let id = cl.id;
        self.note(|| format!("client {id} gives up{}", if new_session { " and reconnects" } else { "" }));
        self.next_op(c);
    }
}
