//! The `raftkv` RESP server: Redis clients on the client port, every data command through the Raft log.
//!
//! One event-loop thread holds every connection between requests and hands a connection with bytes
//! to answer to a worker thread (the `event_loop` module says why); the worker parses them with the
//! incremental [`RequestParser`], so pipelined requests are answered in order and replies to a
//! pipeline are written together. Connection-local
//! commands (`PING`, `HELLO`, `CLIENT`, `INFO`, ...) are answered on the spot; everything in
//! [`KvOp`] (reads included, which makes them linearizable) becomes a [`KvRequest`] that is
//! committed through Raft and applied by the [`KvStore`]. The store answers with a
//! [`KvResult`]; [`result_reply`] is the one place that turns it into RESP.
//!
//! # Exactly-once writes across leader changes
//!
//! Each connection is a client *session* with an id unique across nodes and restarts (see
//! [`SessionIds`]) and a sequence number incremented per command (read-only commands carry no session:
//! running them twice is harmless). A command is retried with the same
//! `(session, seq)` until it succeeds or the retry bound (default 2 s) passes, whichever node ends up
//! leading; the store applies each `(session, seq)` once and answers retries from its reply cache. The
//! store caches only the last reply per session, which is why a connection keeps at most one command in
//! flight (a pipeline is one command: one entry, one sequence number).
//!
//! A session outlives its connection: [`SESSION_COMMAND`] makes a new connection (to any node) continue
//! it, so that a write answered `-UNCERTAIN` (which names its session and sequence number) can be
//! resent and still applies at most once.
//!
//! # Any node accepts any command
//!
//! The leader proposes commands itself. A follower forwards them to the leader's client address as
//! `RAFTKV.FORWARD <postcard KvRequest> <timeout ms>`, over a few connections per leader that all its
//! client connections share (`links.rs`), many requests in flight on each. The leader proposes every
//! forwarded request it has read from a connection at once, each as-is, and answers with a bulk string holding the postcard-encoded
//! [`KvResult`] (relayed to the client in the client's own protocol), or with an
//! error saying whether the attempt may have taken effect; the follower then retries. With no leader
//! known, the server waits and retries.
//!
//! # What an error tells the client
//!
//! Every error says whether the command may have taken effect:
//! - `-TRYAGAIN ...`: it certainly did not (no attempt was appended to any log, or every attempt was
//!   overwritten); sending it again is safe.
//! - `-UNCERTAIN ...`: an attempt may have been appended but no leader confirmed it within the retry
//!   bound (or the node stopped); it may still be applied. Resend it after `RAFTKV.SESSION <id> <seq>`
//!   (named in the message) to apply it exactly once, or read the state before retrying.
//! - `-ERR ...`: the command was refused for what it is (syntax, type, a value over
//!   [`Limits::max_entry_bytes`]); it did not take effect.
//!
//! Malformed or oversized requests get the `-ERR Protocol error...` reply and that connection is closed;
//! nothing a client sends reaches the node thread except well-formed, size-checked commands.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use raft_core::NodeId;
use raft_core::Role;

pub mod admin;
mod clients;
mod event_loop;
mod forward;
mod info;
mod links;
mod scripts;
#[cfg(test)]
mod tests;

use super::command::{self, ConnCommand, ParsedCommand};
use super::command_table::CommandCounts;
use super::config::{ClusterConfig, ReadMode};
use super::resp::{self, ParserLimits, Protocol, Reply, RequestParser, RespError};
use super::store::{KvOp, KvRequest, KvResult, KvStore};
use super::unix_ms;
use crate::limits::Limits;
use crate::node::RaftHandle;
use crate::state_machine::{SnapshotImage, StateMachine};
use forward::execute;

/// The internal command a follower uses to hand a client's request to the leader.
pub const FORWARD_COMMAND: &str = "RAFTKV.FORWARD";
/// Replies `[applied index, digest]` of this node's local state machine, without going through the log:
/// replicas that applied the same log must report the same digest (used by tests to detect divergence).
pub const DIGEST_COMMAND: &str = "RAFTKV.DIGEST";
/// `RAFTKV.SESSION` replies this connection's `[session id, next sequence number]`;
/// `RAFTKV.SESSION <id> <seq>` makes this connection continue session `id`, its next write carrying
/// sequence number `seq`. Sent before resending a write answered `-UNCERTAIN` (whose message names both
/// numbers), it makes the retry apply at most once in all: the store answers an already applied
/// `(session, seq)` from its cache.
pub const SESSION_COMMAND: &str = "RAFTKV.SESSION";
/// The reply when no leader could take the command within the retry bound and no attempt was appended
/// anywhere: the command certainly did not take effect.
pub const TRYAGAIN_NO_LEADER: &str = "TRYAGAIN no leader available";
/// The error code when an attempt was appended but its outcome is unknown: the command may or may not
/// have taken effect.
pub const UNCERTAIN: &str = "UNCERTAIN";

/// How a [`Server`] behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How long a command is retried (no leader, leader change) before `-TRYAGAIN` or `-UNCERTAIN`.
    pub retry_bound: Duration,
    /// The size limits; the RESP parser's bounds and the largest command derive from them, so that a
    /// value that could never fit a log entry is refused while it is parsed, naming the limit.
    pub limits: Limits,
    /// Most concurrent client connections (`ERR max number of clients reached` beyond). An idle
    /// connection costs about a kilobyte and no thread.
    pub max_clients: usize,
    /// Most worker threads, i.e. connections whose commands run at the same time (more wait for a
    /// free worker). Workers start while commands wait for one and leave after a few idle seconds.
    pub max_workers: usize,
    /// Redis' `requirepass`: when set, a connection must `AUTH` (or `HELLO ... AUTH default <pass>`)
    /// before any other command. Every node of a cluster needs the same one: followers authenticate
    /// with it when they forward to the leader.
    pub requirepass: Option<Bytes>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            retry_bound: Duration::from_secs(2),
            limits: Limits::default(),
            max_clients: 10_000,
            max_workers: event_loop::DEFAULT_MAX_WORKERS,
            requirepass: None,
        }
    }
}

/// Redis 7's reply to a command before `AUTH`.
const NOAUTH: &str = "NOAUTH Authentication required.";
/// Redis 7's reply to a wrong password.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Bytes a RESP request may need beyond the encoded command: a multibulk header and `$<len>\r\n` and
/// `\r\n` per argument (RESP spends ~6 bytes per argument where postcard spends 1 to 5).
const RESP_OVERHEAD_PER_ARG: usize = 16;

/// Most arguments in one request (an `MSET` of half a million pairs).
pub const MAX_ARGS: usize = 1 << 20;

impl ServerOptions {
    /// The RESP parser's bounds: no bulk larger than a log entry may be, at most [`MAX_ARGS`] arguments,
    /// and inline commands (telnet-style) up to 64 KiB.
    pub fn parser_limits(&self) -> ParserLimits {
        let max_entry_bytes = self.limits.max_entry_bytes;
        ParserLimits { max_bulk_bytes: max_entry_bytes, max_args: MAX_ARGS, max_inline_bytes: 64 * 1024 }
    }

    /// Most bytes one request may occupy while it is received (all its arguments with their RESP
    /// framing); a connection exceeding it gets a protocol error and is closed.
    pub fn max_request_bytes(&self) -> usize {
        let limits = self.parser_limits();
        limits.max_bulk_bytes.saturating_add(limits.max_args.saturating_mul(RESP_OVERHEAD_PER_ARG))
    }
}

/// Connections the kernel queues for the client port before `accept` (Redis' `tcp-backlog`
/// default). std's `TcpListener::bind` asks for 128, which a burst of connects overflows: the
/// kernel then drops SYNs and the client retries a second later.
pub const CLIENT_BACKLOG: i32 = 511;

/// Binds the client port: address reuse (a restarted node rebinds at once) and [`CLIENT_BACKLOG`].
pub fn bind_client_port(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(CLIENT_BACKLOG)?;
    Ok(socket.into())
}

/// Allocates client session ids that are unique across the nodes of a cluster and across restarts.
///
/// An id is `node_id` (low 8 bits) in the top byte, then a 56-bit counter that starts at the process
/// start time in milliseconds shifted left by 20. A later process of the same node therefore starts above
/// every id an earlier one handed out unless that one opened more than 2^20 (a million) connections per
/// millisecond it ran. The millisecond field wraps after ~2.2 years, and node ids are unique only modulo
/// 256; both are far beyond what the store's LRU session table remembers.
#[derive(Debug)]
pub struct SessionIds {
    node_byte: u64,
    start: u64,
    next: AtomicU64,
}

impl SessionIds {
    /// Ids for `node_id`, for a process that started at `start_ms` (Unix milliseconds).
    pub fn new(node_id: NodeId, start_ms: u64) -> SessionIds {
        SessionIds { node_byte: (node_id & 0xFF) << 56, start: start_ms << 20, next: AtomicU64::new(0) }
    }

    /// The first id of this process: unique per node and process start (`INFO`'s `run_id`).
    pub fn start_id(&self) -> u64 {
        self.node_byte | (self.start & ((1 << 56) - 1))
    }

    /// A fresh session id (never 0, which means "no session").
    pub fn next(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = self.node_byte | (self.start.wrapping_add(n) & ((1 << 56) - 1));
        id.max(1)
    }
}

/// What every connection thread shares.
struct Shared {
    node: RaftHandle<KvStore>,
    cluster: ClusterConfig,
    node_id: NodeId,
    options: ServerOptions,
    sessions: SessionIds,
    next_client_id: AtomicU64,
    clients: AtomicUsize,
    started: Instant,
    local_addr: SocketAddr,
    stopping: AtomicBool,
    /// Open connections, for `CLIENT LIST`/`KILL`.
    registry: clients::Registry,
    /// Connections accepted since the start (`INFO stats`).
    connections_received: AtomicU64,
    /// Commands received since the start (`INFO stats`).
    commands_processed: AtomicU64,
    /// Requests by command name, for metrics.
    commands: CommandCounts,
    /// This node's forwarding connections to the leader.
    links: links::Links,
    /// The scripts `EVALSHA` can name on this node.
    scripts: scripts::ScriptCache,
}

/// A running RESP server (an event-loop thread, and workers while commands run).
pub struct Server {
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
    waker: Arc<mio::Waker>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.shared.local_addr).finish_non_exhaustive()
    }
}

impl Server {
    /// Serves clients on `listener` for the node behind `node`. `cluster` maps leader ids to client
    /// addresses for forwarding.
    pub fn start(
        listener: TcpListener,
        node: RaftHandle<KvStore>,
        cluster: ClusterConfig,
        node_id: NodeId,
        options: ServerOptions,
    ) -> io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            node,
            cluster,
            node_id,
            options,
            sessions: SessionIds::new(node_id, unix_ms()),
            next_client_id: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            started: Instant::now(),
            local_addr,
            stopping: AtomicBool::new(false),
            registry: clients::Registry::default(),
            connections_received: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
            commands: CommandCounts::default(),
            links: links::Links::default(),
            scripts: scripts::ScriptCache::default(),
        });
        let (poller, waker) = event_loop::start(Arc::clone(&shared), listener)?;
        Ok(Server { shared, poller: Some(poller), waker })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Serves this node's metrics in the Prometheus text format at `http://ADDR/metrics` (the
    /// driver's `raft_*` families and raftkv's `raftkv_*`; docs/operating.md lists them) until the
    /// returned server is dropped.
    pub fn serve_metrics(&self, addr: SocketAddr) -> io::Result<crate::metrics::MetricsServer> {
        let shared = Arc::clone(&self.shared);
        crate::metrics::MetricsServer::start(addr, move || info::metrics_text(&shared))
    }

    /// Stops serving: the listener and the idle connections close at once, a connection whose
    /// commands are running closes once they are answered.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

/// Per-connection state.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    session: u64,
    seq: u64,
    protocol: Protocol,
    name: Option<Bytes>,
    /// The `MULTI` block being queued, if any.
    tx: Option<Tx>,
    /// `(key, version)` for every key `WATCH`ed since the last `EXEC`/`DISCARD`/`UNWATCH`.
    watched: Vec<(Bytes, u64)>,
    /// This connection in the client table.
    entry: Arc<clients::ClientEntry>,
    /// Whether the connection may run commands (always, without `requirepass`).
    authenticated: bool,
    /// The `SELECT`ed database.
    db: u8,
}

/// Pipelined commands waiting to run together (see [`Conn::flush`]).
#[derive(Default)]
struct Batch {
    items: Vec<Queued>,
    /// About how many bytes the ops will take in the log entry.
    bytes: usize,
}

/// Most commands in one batch: bounds the latency of the first reply of a long pipeline.
const MAX_BATCH_COMMANDS: usize = 512;

impl Batch {
    /// Whether a command whose op encodes to `len` bytes (0 for a local reply) may join: at most
    /// [`MAX_BATCH_COMMANDS`], and the ops' bytes within half the entry limit (the rest is headroom
    /// for the entry's own framing), so that a batch is never refused as too large where its
    /// commands one by one would not be. An empty batch takes anything.
    fn has_room_for(&self, len: usize, options: &ServerOptions) -> bool {
        self.items.is_empty()
            || (self.items.len() < MAX_BATCH_COMMANDS && self.bytes + len <= options.limits.max_entry_bytes / 2)
    }

    fn push(&mut self, item: Queued, len: usize) {
        self.bytes += len;
        self.items.push(item);
    }
}

/// The requests of one read, for the client table and `INFO`.
#[derive(Default)]
struct Seen {
    count: u64,
    /// The last request's name.
    last: Option<Bytes>,
    /// Whether one was a follower's forwarded command.
    forwarded: bool,
}

impl Seen {
    fn saw(&mut self, args: &[Bytes], counts: &CommandCounts) {
        self.count += 1;
        counts.count(args.first().map_or(&[][..], |n| &n[..]));
        self.last = args.first().cloned();
        self.forwarded |= self.last.as_ref().is_some_and(|n| n.eq_ignore_ascii_case(FORWARD_COMMAND.as_bytes()));
    }
}

/// A transaction being queued between `MULTI` and `EXEC`.
#[derive(Default)]
struct Tx {
    items: Vec<Queued>,
    /// A command failed to queue (syntax, arity, unknown): `EXEC` answers `-EXECABORT`.
    failed: bool,
}

/// A command waiting in a pipelined batch or a `MULTI` block.
enum Queued {
    /// Through the log, inside the batch's or transaction's entry.
    Op(KvOp),
    /// Its reply is known already (a parse error, `PING`, `ECHO`, ...).
    Reply(Reply),
    /// On the connection's own state (only in a transaction: a batch dispatches these on their own).
    Conn(ConnCommand),
}

impl Queued {
    /// The bytes this command adds to a log entry.
    fn encoded_len(&self) -> usize {
        if let Queued::Op(op) = self { op.encoded_len() } else { 0 }
    }
}

/// A connection's buffers: what was received and not yet parsed, and replies not yet written.
#[derive(Default)]
struct Buffers {
    input: BytesMut,
    /// Requests the event loop parsed already and left to a worker, in order, before `input`.
    pending: std::collections::VecDeque<Result<Vec<Bytes>, RespError>>,
    out: BytesMut,
    /// Bytes received since the last complete request: bounds what one request can make us buffer.
    request_bytes: usize,
    /// A write the event loop proposed that its first attempt did not settle, answered first.
    resume: Option<Resume>,
}

/// A write the event loop proposed whose first attempt did not settle it (no longer the leader,
/// a leader change, ...): a worker retries it with the same `(session, seq)` until the retry
/// bound, as [`forward::execute`] would have, and answers the requests of its turn.
struct Resume {
    items: Vec<Queued>,
    request: KvRequest,
    deadline: Instant,
    first: forward::Attempt,
    /// Whether `request` is the turn's ops as one [`KvOp::Exec`] (else its only op).
    batched: bool,
}

impl Buffers {
    /// Gives the buffers back once they are empty: an idle connection holds none (the next burst
    /// allocates again, which costs far less than a commit).
    fn release_if_empty(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
    }
}

impl Conn {
    /// A new connection's state, entered in the client table (it leaves it when dropped).
    fn new(shared: Arc<Shared>, id: u64, stream: &TcpStream) -> Conn {
        shared.connections_received.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(clients::ClientEntry::new(id, stream));
        shared.registry.add(Arc::clone(&entry));
        Conn {
            session: shared.sessions.next(),
            seq: 0,
            protocol: Protocol::Resp2,
            name: None,
            tx: None,
            watched: Vec::new(),
            entry,
            authenticated: shared.options.requirepass.is_none(),
            db: 0,
            id,
            shared,
        }
    }
}

impl Drop for Conn {
    /// However the connection ends: out of the table, and its client slot back (a forwarding
    /// connection gave its slot back when it showed what it is).
    fn drop(&mut self) {
        self.shared.registry.remove(self.id);
        if !self.entry.is_forwarder() {
            self.shared.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Most bytes and time a closing connection is drained for.
const LINGER_BYTES_MAX: usize = 64 << 20;
const LINGER_TIME_MAX: Duration = Duration::from_secs(2);

/// Closes a connection whose client may still be sending (an oversized value, a pipeline behind a
/// protocol error): stop writing, then read and discard what arrives, bounded in bytes and time. Closing
/// at once would answer the client's remaining bytes with a TCP reset, which can destroy our error reply
/// before the client reads it.
fn lingering_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let started = Instant::now();
    let mut sink = [0u8; 64 * 1024];
    let mut drained = 0usize;
    while drained < LINGER_BYTES_MAX && started.elapsed() < LINGER_TIME_MAX {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

impl Conn {
    /// Answers every complete request in `buf.input`, writing replies in batches (a pipeline's replies
    /// go out together). Returns `Close` (with the last reply still in `buf.out`) after `QUIT`, a
    /// protocol error or an oversized request.
    fn answer_parsed(
        &mut self,
        parser: &mut RequestParser,
        buf: &mut Buffers,
        stream: &mut TcpStream,
    ) -> io::Result<Next> {
        let mut batch = Batch::default();
        // Forwarded requests proposed and not yet answered (a follower's link carries many).
        let mut forwards = Vec::new();
        // What the client table shows is updated once per batch, not per command.
        let mut seen = Seen::default();
        if let Some(mut resume) = buf.resume.take() {
            let reply = forward::execute_after(&self.shared, &mut resume.request, resume.deadline, resume.first);
            for reply in self.entry_replies(resume.items, reply, resume.batched) {
                resp::encode(&reply, self.protocol, &mut buf.out);
            }
        }
        // Replies the event loop could not finish writing go first.
        if !buf.out.is_empty() {
            stream.write_all(&buf.out)?;
            buf.out.clear();
        }
        loop {
            let parsed = match buf.pending.pop_front() {
                Some(request) => request.map(Some),
                None => parser.parse(&mut buf.input),
            };
            match parsed {
                Ok(Some(args)) => {
                    buf.request_bytes = buf.input.len();
                    seen.saw(&args, &self.shared.commands);
                    if self.authenticated && args[0].eq_ignore_ascii_case(FORWARD_COMMAND.as_bytes()) {
                        self.flush(&mut batch, &mut buf.out);
                        forwards.push(forward::start_forwarded(&self.shared, &args[1..]));
                        continue;
                    }
                    self.finish_forwards(&mut forwards, &mut buf.out);
                    if let Some(item) = self.batchable(&args) {
                        let len = item.encoded_len();
                        if !batch.has_room_for(len, &self.shared.options) {
                            self.flush(&mut batch, &mut buf.out);
                        }
                        batch.push(item, len);
                        continue;
                    }
                    self.flush(&mut batch, &mut buf.out);
                    // Shown before it runs, so that `CLIENT INFO`/`LIST` name themselves as Redis does.
                    self.note(&std::mem::take(&mut seen));
                    if let Next::Close = self.dispatch(&args, &mut buf.out) {
                        return Ok(Next::Close);
                    }
                    if buf.out.len() >= 64 * 1024 {
                        stream.write_all(&buf.out)?;
                        buf.out.clear();
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.finish_forwards(&mut forwards, &mut buf.out);
                    self.flush(&mut batch, &mut buf.out);
                    self.note(&seen);
                    tracing::debug!(client = self.id, %error, "protocol error; closing connection");
                    resp::encode(&self.protocol_error_reply(&error), self.protocol, &mut buf.out);
                    return Ok(Next::Close);
                }
            }
        }
        self.finish_forwards(&mut forwards, &mut buf.out);
        self.flush(&mut batch, &mut buf.out);
        self.note(&seen);
        if !buf.out.is_empty() {
            stream.write_all(&buf.out)?;
            buf.out.clear();
        }
        let max = self.shared.options.max_request_bytes();
        if buf.request_bytes > max {
            let reply = Reply::error(format!("ERR Protocol error: request exceeds {max} bytes"));
            resp::encode(&reply, self.protocol, &mut buf.out);
            return Ok(Next::Close);
        }
        Ok(Next::Continue)
    }

    /// Answers the forwarded requests proposed so far, in order.
    fn finish_forwards(&self, forwards: &mut Vec<forward::Forwarded>, out: &mut BytesMut) {
        for forwarded in forwards.drain(..) {
            resp::encode(&forward::finish_forwarded(&self.shared, forwarded), self.protocol, out);
        }
    }

    /// Counts the requests of a read and shows the last one in the client table.
    fn note(&self, seen: &Seen) {
        let Some(name) = &seen.last else { return };
        self.shared.commands_processed.fetch_add(seen.count, Ordering::Relaxed);
        let multi = self.tx.as_ref().map_or(-1, |tx| tx.items.len() as i64);
        let resp = self.protocol.version();
        let mut became_forwarder = false;
        self.entry.update(|s| {
            became_forwarder = seen.forwarded && !s.forwarder;
            s.last_cmd.clear();
            s.last_cmd
                .extend(String::from_utf8_lossy(&name[..name.len().min(32)]).chars().map(|c| c.to_ascii_lowercase()));
            s.last_active = Instant::now();
            s.forwarder |= seen.forwarded;
            s.multi = multi;
            s.resp = resp;
        });
        if became_forwarder {
            // A follower forwarding its clients' commands: the cluster's own connection, which must
            // not take a slot of the leader's client limit (the follower's clients hold theirs there).
            self.shared.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A pipelined request that can join a batch: a data command (or a reply known at once, such as an
    /// error or `PING`) outside `MULTI`. Anything else (connection state, transactions, internal
    /// commands) is dispatched on its own, after the batch before it.
    fn batchable(&self, args: &[Bytes]) -> Option<Queued> {
        let name = args.first()?;
        if !self.authenticated || self.tx.is_some() || handled_by_dispatch(name) {
            return None;
        }
        match self.parse(args) {
            Err(reply) | Ok(ParsedCommand::Reply(reply)) => Some(Queued::Reply(reply)),
            Ok(ParsedCommand::Replicate(op)) => Some(Queued::Op(op)),
            Ok(ParsedCommand::Connection(_) | ParsedCommand::Script(_)) => None,
        }
    }

    /// [`command::parse_command`], with the script commands resolved against this node's script
    /// cache ([`scripts::ScriptCache`]): `EVALSHA` becomes the `EVAL` of the cached body (or
    /// `-NOSCRIPT`), `SCRIPT ...` is answered, and the body of an `EVAL` is cached for `EVALSHA`.
    fn parse(&self, args: &[Bytes]) -> Result<ParsedCommand, Reply> {
        let parsed = command::parse_command(args)?;
        Ok(match parsed {
            ParsedCommand::Replicate(KvOp::Eval { ref script, .. }) => {
                self.shared.scripts.insert(script.clone());
                parsed
            }
            ParsedCommand::Script(command) => self.shared.scripts.resolve(command),
            other => other,
        })
    }

    /// Runs a batch of pipelined commands and encodes their replies in order. Several data commands
    /// become one log entry (one proposal, one fsync round, one sequence number of the session: a
    /// retried batch applies once, as a whole); several reads become one read round.
    fn flush(&mut self, batch: &mut Batch, out: &mut BytesMut) {
        let items = std::mem::take(&mut batch.items);
        batch.bytes = 0;
        let ops = items.iter().filter(|item| matches!(item, Queued::Op(_))).count();
        let replies = if ops <= 1 {
            // Nothing to gain from a batch: each command on its own (a single read keeps its read path).
            let results = Vec::new().into_iter();
            self.in_order(items, results, |conn, op| conn.replicate(op))
        } else {
            let reads_only = items.iter().all(|item| match item {
                Queued::Op(op) => op.is_read_only(),
                _ => true,
            });
            let results = if reads_only && self.shared.cluster.reads.mode != ReadMode::Log {
                let reads =
                    items.iter().filter_map(|item| if let Queued::Op(op) = item { Some(op.clone()) } else { None });
                forward::read_many(&self.shared, self.db, reads.collect())
            } else {
                // The entry as a whole failed (`-TRYAGAIN`, `-UNCERTAIN`, ...): so did each command.
                self.one_entry(&items, Vec::new()).unwrap_or_else(|failed| vec![failed; ops])
            };
            self.in_order(items, results.into_iter(), |_, _| Reply::error("ERR internal error: missing result"))
        };
        for reply in replies {
            resp::encode(&reply, self.protocol, out);
        }
    }

    /// The ops of `items` as one log entry (`KvOp::Exec`, checked against `watched` in the apply):
    /// one result per op, or the reply that stands for the entry as a whole (its failure, or the
    /// null array of a transaction a watched key aborted).
    fn one_entry(&mut self, items: &[Queued], watched: Vec<(Bytes, u64)>) -> Result<Vec<Reply>, Reply> {
        let (op, count) = entry_op(items, watched);
        split_results(self.replicate(op), count)
    }

    /// The replies to `items` once the ops among them ran through the log as one request whose
    /// answer is `reply`: one [`KvOp::Exec`] entry when `batched` (see [`entry_op`]), else the
    /// only op itself.
    fn entry_replies(&mut self, items: Vec<Queued>, reply: Reply, batched: bool) -> Vec<Reply> {
        let missing = |_: &mut Self, _| Reply::error("ERR internal error: missing result");
        if !batched {
            return self.in_order(items, vec![reply].into_iter(), missing);
        }
        let count = items.iter().filter(|item| matches!(item, Queued::Op(_))).count();
        // The entry as a whole failed (`-TRYAGAIN`, `-UNCERTAIN`, ...): so did each command.
        let results = split_results(reply, count).unwrap_or_else(|failed| vec![failed; count]);
        self.in_order(items, results.into_iter(), missing)
    }

    /// Each queued command's reply in order: an op's from `results` (or, once they run out,
    /// `missing(op)`), a local reply as it is, a connection command run now.
    fn in_order(
        &mut self,
        items: Vec<Queued>,
        mut results: std::vec::IntoIter<Reply>,
        mut missing: impl FnMut(&mut Self, KvOp) -> Reply,
    ) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(items.len());
        for item in items {
            replies.push(match item {
                Queued::Op(op) => match results.next() {
                    Some(reply) => reply,
                    None => missing(self, op),
                },
                Queued::Reply(reply) => reply,
                Queued::Conn(command) => self.connection_command(command),
            });
        }
        replies
    }

    /// A value too large for any log entry is named as such: the limit to raise is `max_entry_bytes`.
    fn protocol_error_reply(&self, error: &RespError) -> Reply {
        match error {
            RespError::BulkTooLarge { len, max } => Reply::error(format!(
                "ERR Protocol error: invalid bulk length (a bulk of {len} bytes exceeds the max_entry_bytes limit of {max} bytes); \
                 nothing was applied"
            )),
            other => other.to_reply(),
        }
    }

    fn dispatch(&mut self, args: &[Bytes], out: &mut BytesMut) -> Next {
        let mut next = Next::Continue;
        // The parser never yields an empty request; an empty name matches nothing below anyway.
        let name = args.first().map_or(&b""[..], |n| &n[..]);
        let reply = if name.eq_ignore_ascii_case(b"auth") {
            self.auth(&args[1..])
        } else if !self.authenticated && !name.eq_ignore_ascii_case(b"hello") && !name.eq_ignore_ascii_case(b"quit") {
            Reply::error(NOAUTH)
        } else if name.eq_ignore_ascii_case(FORWARD_COMMAND.as_bytes()) {
            forward::finish_forwarded(&self.shared, forward::start_forwarded(&self.shared, &args[1..]))
        } else if name.eq_ignore_ascii_case(admin::ADMIN_COMMAND.as_bytes()) {
            admin::command(&self.shared, &args[1..], true)
        } else if name.eq_ignore_ascii_case(admin::FORWARDED_ADMIN_COMMAND.as_bytes()) {
            admin::command(&self.shared, &args[1..], false)
        } else if name.eq_ignore_ascii_case(DIGEST_COMMAND.as_bytes()) {
            self.digest()
        } else if name.eq_ignore_ascii_case(SESSION_COMMAND.as_bytes()) {
            match parse_session_command(&args[1..]) {
                Ok(None) => Reply::Array(vec![
                    Reply::Bulk(Bytes::from(self.session.to_string())),
                    Reply::Bulk(Bytes::from((self.seq + 1).to_string())),
                ]),
                Ok(Some((session, next_seq))) => {
                    self.session = session;
                    self.seq = next_seq - 1;
                    Reply::ok()
                }
                Err(reply) => reply,
            }
        } else if let Some(reply) = self.transaction_command(name, &args[1..]) {
            reply
        } else if self.tx.is_some() {
            self.queue(args, &mut next)
        } else {
            match self.parse(args) {
                Err(reply) => reply,
                Ok(ParsedCommand::Reply(reply)) => reply,
                Ok(ParsedCommand::Script(_)) => Reply::error("ERR internal error: an unresolved script command"),
                Ok(ParsedCommand::Replicate(op)) => self.replicate(op),
                Ok(ParsedCommand::Connection(command)) => {
                    if matches!(command, ConnCommand::Quit) {
                        next = Next::Close;
                    }
                    self.connection_command(command)
                }
            }
        };
        resp::encode(&reply, self.protocol, out);
        next
    }

    /// `AUTH [user] password`: the only user is `default`, with the configured `requirepass`.
    fn auth(&mut self, args: &[Bytes]) -> Reply {
        let (user, password) = match args {
            [password] => (&b"default"[..], password),
            [user, password] => (&user[..], password),
            _ => return Reply::error("ERR wrong number of arguments for 'auth' command"),
        };
        let Some(expected) = &self.shared.options.requirepass else {
            return Reply::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure \
                 your configuration is correct?",
            );
        };
        if user == b"default" && constant_time_eq(password, expected) {
            self.authenticated = true;
            Reply::ok()
        } else {
            Reply::error(WRONGPASS)
        }
    }

    /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH` (`None` for any other command). They act at
    /// once, inside a `MULTI` block too (except `UNWATCH`, which is queued there, as in Redis).
    fn transaction_command(&mut self, name: &[u8], rest: &[Bytes]) -> Option<Reply> {
        let lower = name.to_ascii_lowercase();
        let wrong_args = |cmd: &str| Reply::error(format!("ERR wrong number of arguments for '{cmd}' command"));
        Some(match lower.as_slice() {
            b"multi" if !rest.is_empty() => wrong_args("multi"),
            b"multi" if self.tx.is_some() => Reply::error("ERR MULTI calls can not be nested"),
            b"multi" => {
                self.tx = Some(Tx::default());
                Reply::ok()
            }
            b"exec" if !rest.is_empty() => wrong_args("exec"),
            b"exec" => match self.tx.take() {
                None => Reply::error("ERR EXEC without MULTI"),
                Some(tx) => {
                    let watched = std::mem::take(&mut self.watched);
                    if tx.failed {
                        Reply::error("EXECABORT Transaction discarded because of previous errors.")
                    } else {
                        self.exec(tx, watched)
                    }
                }
            },
            b"discard" if !rest.is_empty() => wrong_args("discard"),
            b"discard" => match self.tx.take() {
                None => Reply::error("ERR DISCARD without MULTI"),
                Some(_) => {
                    self.watched.clear();
                    Reply::ok()
                }
            },
            b"watch" if self.tx.is_some() => {
                // Refused but not a queuing error: the transaction goes on (Redis does the same).
                Reply::error("ERR WATCH inside MULTI is not allowed")
            }
            b"watch" if rest.is_empty() => wrong_args("watch"),
            b"watch" => self.watch(rest),
            b"unwatch" if self.tx.is_none() => {
                self.watched.clear();
                Reply::ok()
            }
            _ => return None,
        })
    }

    /// `WATCH`: reads the keys' versions (a linearizable read, like any other) and remembers them.
    fn watch(&mut self, keys: &[Bytes]) -> Reply {
        let reply = self.replicate(KvOp::Versions { keys: keys.to_vec() });
        let Reply::Array(items) = &reply else { return reply };
        let versions: Option<Vec<u64>> =
            items.iter().map(|r| if let Reply::Integer(v) = r { u64::try_from(*v).ok() } else { None }).collect();
        match versions {
            Some(versions) if versions.len() == keys.len() => {
                self.watched.extend(keys.iter().cloned().zip(versions));
                Reply::ok()
            }
            _ => Reply::error("ERR internal error: unexpected WATCH reply; nothing was applied"),
        }
    }

    /// Queues a command of a `MULTI` block (`+QUEUED`), or answers its error and dooms the block.
    fn queue(&mut self, args: &[Bytes], next: &mut Next) -> Reply {
        let parsed = self.parse(args);
        let tx = self.tx.as_mut().expect("queue is called inside MULTI");
        let item = match parsed {
            Err(reply) => {
                tx.failed = true;
                return reply;
            }
            Ok(ParsedCommand::Script(_)) => {
                Queued::Reply(Reply::error("ERR internal error: an unresolved script command"))
            }
            Ok(ParsedCommand::Replicate(op)) => Queued::Op(op),
            Ok(ParsedCommand::Reply(reply)) => Queued::Reply(reply),
            Ok(ParsedCommand::Connection(ConnCommand::Quit)) => {
                *next = Next::Close;
                return Reply::ok();
            }
            Ok(ParsedCommand::Connection(ConnCommand::Select(_))) => {
                tx.failed = true;
                return Reply::error("ERR SELECT inside MULTI is not supported (SELECT before MULTI)");
            }
            Ok(ParsedCommand::Connection(command)) => Queued::Conn(command),
        };
        tx.items.push(item);
        Reply::Simple("QUEUED".to_owned())
    }

    /// `EXEC`: the queued ops as one log entry (atomic on every replica, checked against the watched
    /// versions inside the apply), then each queued command's reply in order.
    fn exec(&mut self, tx: Tx, watched: Vec<(Bytes, u64)>) -> Reply {
        let nothing_to_log = watched.is_empty() && !tx.items.iter().any(|item| matches!(item, Queued::Op(_)));
        let results = if nothing_to_log {
            Vec::new()
        } else {
            match self.one_entry(&tx.items, watched) {
                Ok(results) => results,
                Err(whole) => return whole,
            }
        };
        let missing = |_: &mut Self, _| Reply::error("ERR internal error: missing result");
        Reply::Array(self.in_order(tx.items, results.into_iter(), missing))
    }

    fn connection_command(&mut self, command: ConnCommand) -> Reply {
        match command {
            ConnCommand::Hello { protocol, auth, setname } => {
                // Without `requirepass`, like Redis' default user, any credentials pass.
                if let (Some((user, password)), Some(expected)) = (&auth, &self.shared.options.requirepass) {
                    if user.as_ref() != b"default" || !constant_time_eq(password, expected) {
                        return Reply::error(WRONGPASS);
                    }
                    self.authenticated = true;
                }
                if !self.authenticated {
                    return Reply::error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO \
                         <proto> AUTH <user> <pass> option can be used to authenticate the client and select the \
                         RESP protocol version at the same time",
                    );
                }
                if let Some(protocol) = protocol {
                    self.protocol = protocol;
                }
                if let Some(name) = setname {
                    self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(&name));
                    let shown = self.name.clone();
                    self.entry.update(|s| s.name = shown);
                }
                let role = if self.shared.node.status().role == Role::Leader { "master" } else { "replica" };
                command::hello_reply(self.protocol, self.id, role)
            }
            ConnCommand::ClientSetName(name) => {
                self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(&name));
                let shown = self.name.clone();
                self.entry.update(|s| s.name = shown);
                Reply::ok()
            }
            ConnCommand::ClientGetName => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            ConnCommand::ClientId => Reply::Integer(self.id as i64),
            ConnCommand::ClientList { ids } => {
                Reply::Verbatim { format: *b"txt", text: Bytes::from(self.shared.registry.list(&ids)) }
            }
            ConnCommand::ClientInfo => Reply::Verbatim { format: *b"txt", text: Bytes::from(self.entry.line() + "\n") },
            ConnCommand::ClientKill { filter, old_form } => {
                let killed = self.shared.registry.kill(&filter, self.id);
                match (old_form, killed) {
                    (true, 0) => Reply::error("ERR No such client"),
                    (true, _) => Reply::ok(),
                    (false, n) => Reply::Integer(n as i64),
                }
            }
            ConnCommand::ClientSetInfo { name, value } => {
                self.entry.update(|s| if name { s.lib_name = Some(value) } else { s.lib_ver = Some(value) });
                Reply::ok()
            }
            ConnCommand::Info { sections } => {
                Reply::Verbatim { format: *b"txt", text: Bytes::from(info::info_text(&self.shared, &sections)) }
            }
            ConnCommand::Quit => Reply::ok(),
            ConnCommand::Select(db) => {
                self.db = db;
                self.entry.update(|s| s.db = db);
                Reply::ok()
            }
        }
    }

    /// A data command from this connection's client: a read served without the log (unless reads
    /// are configured to go through it), anything else with the next sequence number through the
    /// log.
    ///
    /// Read-only commands go without a session: applying a read twice is harmless, and the store then
    /// does not cache (possibly large) read replies in the session table.
    fn replicate(&mut self, op: KvOp) -> Reply {
        if op.is_read_only() && self.shared.cluster.reads.mode != ReadMode::Log {
            return forward::read_many(&self.shared, self.db, vec![op]).pop().expect("one reply per read");
        }
        let mut request = self.log_request(op);
        execute(&self.shared, &mut request)
    }

    /// The request that runs `op` through the log for this connection: in its database, with the
    /// next sequence number of its session unless it only reads.
    fn log_request(&mut self, op: KvOp) -> KvRequest {
        let op = if self.db == 0 { op } else { KvOp::InDb { db: self.db, op: op.encode() } };
        let (session, seq) = if op.is_read_only() {
            (0, 0)
        } else {
            self.seq += 1;
            (self.session, self.seq)
        };
        KvRequest { session, seq, now_ms: 0, op }
    }

    fn digest(&self) -> Reply {
        // Only the O(1) snapshot is taken on the node thread; the encoding happens here.
        let result = self
            .shared
            .node
            .inspect(|kv: &KvStore| (kv.last_applied(), StateMachine::snapshot(kv)), Duration::from_secs(5))
            .map(|(applied, snapshot)| {
                let image = snapshot.encode();
                (applied, crc32c::crc32c(&image), image.len())
            });
        match result {
            Some((applied, crc, len)) => {
                Reply::Array(vec![Reply::Integer(applied as i64), Reply::Bulk(Bytes::from(format!("{crc:08x}-{len}")))])
            }
            None => Reply::error("ERR node stopped"),
        }
    }
}

/// The commands [`Conn::dispatch`] handles itself before the parser: internal ones, `AUTH` and the
/// transaction commands. They never join a pipelined batch.
fn handled_by_dispatch(name: &[u8]) -> bool {
    [
        FORWARD_COMMAND,
        admin::ADMIN_COMMAND,
        admin::FORWARDED_ADMIN_COMMAND,
        DIGEST_COMMAND,
        SESSION_COMMAND,
        "auth",
        "multi",
        "exec",
        "discard",
        "watch",
        "unwatch",
    ]
    .iter()
    .any(|special| name.eq_ignore_ascii_case(special.as_bytes()))
}

/// Compares a password without an early exit, so response times do not reveal how much of a guess
/// was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The arguments of [`SESSION_COMMAND`]: none (`Ok(None)`), or a session id (not 0) and the next
/// sequence number (at least 1).
fn parse_session_command(args: &[Bytes]) -> Result<Option<(u64, u64)>, Reply> {
    let number = |raw: &Bytes| std::str::from_utf8(raw).ok().and_then(|s| s.parse::<u64>().ok());
    match args {
        [] => Ok(None),
        [session, seq] => match (number(session), number(seq)) {
            (Some(session), Some(seq)) if session != 0 && seq != 0 => Ok(Some((session, seq))),
            _ => Err(Reply::error(format!(
                "ERR {SESSION_COMMAND}: the session id and the sequence number must be positive integers"
            ))),
        },
        _ => Err(Reply::error(format!("ERR wrong number of arguments for '{SESSION_COMMAND}' command"))),
    }
}

/// The ops of `items` as one log entry, checked against `watched` in the apply, and how many
/// there are.
fn entry_op(items: &[Queued], watched: Vec<(Bytes, u64)>) -> (KvOp, usize) {
    let ops: Vec<Bytes> =
        items.iter().filter_map(|item| if let Queued::Op(op) = item { Some(op.encode()) } else { None }).collect();
    let count = ops.len();
    (KvOp::Exec { watched, ops }, count)
}

/// One reply per op of an entry of `count` ops from the entry's answer, or the reply that stands
/// for the entry as a whole (its failure, or the null array of a transaction a watched key aborted).
fn split_results(reply: Reply, count: usize) -> Result<Vec<Reply>, Reply> {
    match reply {
        Reply::Array(results) if results.len() == count => Ok(results),
        Reply::Array(_) => Err(Reply::error("ERR internal error: a result per command was expected")),
        other => Err(other),
    }
}

/// The RESP form of a store result: the one place where the store's answers meet the wire.
pub fn result_reply(result: KvResult) -> Reply {
    match result {
        KvResult::Ok => Reply::ok(),
        KvResult::Nil => Reply::Null,
        KvResult::Value(v) => Reply::Bulk(v),
        KvResult::Integer(n) => Reply::Integer(n),
        KvResult::Values(values) => {
            Reply::Array(values.into_iter().map(|v| v.map_or(Reply::Null, Reply::Bulk)).collect())
        }
        KvResult::Error(e) => Reply::error(e.to_string()),
        KvResult::Type(kind) => Reply::Simple(kind.map_or("none", |k| k.name()).to_owned()),
        KvResult::Pairs(pairs) => {
            Reply::Map(pairs.into_iter().map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v))).collect())
        }
        KvResult::Scan { cursor, items } => Reply::Array(vec![
            Reply::Bulk(Bytes::from(cursor.to_string())),
            Reply::Array(items.into_iter().map(Reply::Bulk).collect()),
        ]),
        KvResult::Multi(results) => Reply::Array(results.into_iter().map(result_reply).collect()),
        KvResult::Aborted => Reply::NullArray,
        KvResult::Script(items) => super::script::reply_of(&items),
        KvResult::Versions(versions) => {
            Reply::Array(versions.into_iter().map(|v| Reply::Integer(v.min(i64::MAX as u64) as i64)).collect())
        }
    }
}
