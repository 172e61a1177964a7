//! The `raftkv` RESP server: Redis clients on the client port, every data command through the Raft log.
//!
//! One thread per connection reads requests with the incremental [`RequestParser`], so pipelined
//! requests are answered in order and replies to a pipeline are written together. Connection-local
//! commands (`PING`, `HELLO`, `CLIENT`, `INFO`, ...) are answered on the spot; everything in
//! [`kv::KvOp`] (reads included, which makes them linearizable) becomes a [`KvRequest`] that is
//! committed through Raft and applied by the [`KvStore`].
//!
//! # Exactly-once writes across leader changes
//!
//! Each connection is a client *session* with an id unique across nodes and restarts (see
//! [`SessionIds`]) and a sequence number incremented per command (read-only commands carry no session:
//! running them twice is harmless). A command is retried with the same
//! `(session, seq)` until it succeeds or the retry bound (default 2 s) passes, whichever node ends up
//! leading; the store applies each `(session, seq)` once and answers retries from its reply cache. The
//! store caches only the last reply per session, which is why a connection keeps at most one command in
//! flight (pipelined commands are processed one after another).
//!
//! # Any node accepts any command
//!
//! The leader proposes commands itself. A follower forwards them to the leader's client address over a
//! RESP connection it keeps per client connection, as `RAFTKV.FORWARD <postcard KvRequest> <timeout ms>`.
//! The leader proposes the request as-is and answers with a bulk string holding the postcard-encoded
//! [`Reply`] (relayed to the client in the client's own protocol), or with `-TRYAGAIN ...` when it cannot
//! (not the leader any more, leadership lost, timeout); the follower then retries. With no leader known,
//! the server waits and retries; once the bound passes it replies `-TRYAGAIN no leader available`.
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
use raft_core::{NodeId, Role};

use crate::config::ClusterConfig;
use crate::kv::{self, ConnCommand, KvOp, KvRequest, KvStore, ParsedCommand};
use crate::node::{ProposalError, RaftHandle, Status, unix_ms};
use crate::resp::{self, ParserLimits, Protocol, Reply, RequestParser};

/// The internal command a follower uses to hand a client's request to the leader.
pub const FORWARD_COMMAND: &str = "RAFTKV.FORWARD";
/// Replies `[applied index, digest]` of this node's local state machine, without going through the log:
/// replicas that applied the same log must report the same digest (used by tests to detect divergence).
pub const DIGEST_COMMAND: &str = "RAFTKV.DIGEST";
/// The reply when no leader could take the command within the retry bound.
pub const TRYAGAIN_NO_LEADER: &str = "TRYAGAIN no leader available";

/// How a [`Server`] behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How long a command is retried (no leader, leader change) before `-TRYAGAIN`.
    pub retry_bound: Duration,
    /// Request parsing limits. The bulk limit is kept well below the peer transport's frame limit, so
    /// that every accepted command fits in one AppendEntries message.
    pub limits: ParserLimits,
    /// Most bytes one request may occupy (all its arguments together); a connection exceeding it gets a
    /// protocol error and is closed.
    pub max_request_bytes: usize,
    /// Largest encoded [`KvRequest`] accepted into the log.
    pub max_entry_bytes: usize,
    /// Most concurrent client connections (each is a thread).
    pub max_clients: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            retry_bound: Duration::from_secs(2),
            limits: ParserLimits { max_bulk_bytes: 32 << 20, max_args: 1 << 20, max_inline_bytes: 64 * 1024 },
            max_request_bytes: 48 << 20,
            max_entry_bytes: 33 << 20,
            max_clients: 10_000,
        }
    }
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
}

/// A running RESP server (accept thread plus one thread per connection).
pub struct Server {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
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
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("raftkv-accept-{node_id}"))
            .spawn(move || accept_loop(&accept_shared, &listener))?;
        Ok(Server { shared, accept: Some(accept) })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Stops accepting connections (open ones are served until their clients disconnect).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.shared.local_addr, Duration::from_millis(200));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.clients.fetch_add(1, Ordering::SeqCst) >= shared.options.max_clients {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            let mut out = BytesMut::new();
            resp::encode(&Reply::error("ERR max number of clients reached"), Protocol::Resp2, &mut out);
            let _ = (&stream).write_all(&out);
            continue;
        }
        let conn_shared = Arc::clone(shared);
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new().name(format!("raftkv-client-{id}")).spawn(move || {
            let peer = stream.peer_addr().ok();
            if let Err(error) = serve_connection(&conn_shared, stream, id) {
                tracing::debug!(client = id, ?peer, %error, "client connection ended");
            }
            conn_shared.clients.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(error) = spawned {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(%error, "cannot spawn connection thread");
        }
    }
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

/// Per-connection state.
struct Conn<'a> {
    shared: &'a Shared,
    id: u64,
    session: u64,
    seq: u64,
    protocol: Protocol,
    name: Option<Bytes>,
    forwarder: Forwarder,
}

fn serve_connection(shared: &Shared, mut stream: TcpStream, id: u64) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // A client that stops reading must not pin this thread forever.
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut conn = Conn {
        shared,
        id,
        session: shared.sessions.next(),
        seq: 0,
        protocol: Protocol::Resp2,
        name: None,
        forwarder: Forwarder::default(),
    };
    let mut parser = RequestParser::new(shared.options.limits);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    // Bytes received since the last complete request: bounds what one request can make us buffer.
    let mut request_bytes = 0usize;
    loop {
        loop {
            match parser.parse(&mut input) {
                Ok(Some(args)) => {
                    request_bytes = input.len();
                    let next = conn.dispatch(&args, &mut out);
                    if matches!(next, Next::Close) {
                        stream.write_all(&out)?;
                        let _ = stream.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                    if out.len() >= 64 * 1024 {
                        stream.write_all(&out)?;
                        out.clear();
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(client = id, %error, "protocol error; closing connection");
                    resp::encode(&error.to_reply(), conn.protocol, &mut out);
                    stream.write_all(&out)?;
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if request_bytes > shared.options.max_request_bytes {
            let reply =
                Reply::error(format!("ERR Protocol error: request exceeds {} bytes", shared.options.max_request_bytes));
            resp::encode(&reply, conn.protocol, &mut out);
            stream.write_all(&out)?;
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        input.extend_from_slice(&chunk[..n]);
        request_bytes += n;
    }
}

impl Conn<'_> {
    fn dispatch(&mut self, args: &[Bytes], out: &mut BytesMut) -> Next {
        let mut next = Next::Continue;
        // The parser never yields an empty request; an empty name matches nothing below anyway.
        let name = args.first().map_or(&b""[..], |n| &n[..]);
        let reply = if name.eq_ignore_ascii_case(FORWARD_COMMAND.as_bytes()) {
            self.forwarded(&args[1..])
        } else if name.eq_ignore_ascii_case(DIGEST_COMMAND.as_bytes()) {
            self.digest()
        } else {
            match kv::parse_command(args) {
                Err(reply) => reply,
                Ok(ParsedCommand::Reply(reply)) => reply,
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

    fn connection_command(&mut self, command: ConnCommand) -> Reply {
        match command {
            ConnCommand::Hello { protocol, auth: _, setname } => {
                // No authentication is configured, so like Redis' default user any credentials pass.
                if let Some(protocol) = protocol {
                    self.protocol = protocol;
                }
                if let Some(name) = setname {
                    self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(&name));
                }
                let role = if self.shared.node.status().role == Role::Leader { "master" } else { "replica" };
                kv::hello_reply(self.protocol, self.id, role)
            }
            ConnCommand::ClientSetName(name) => {
                self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(&name));
                Reply::ok()
            }
            ConnCommand::ClientGetName => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            ConnCommand::ClientId => Reply::Integer(self.id as i64),
            ConnCommand::Info { sections } => {
                Reply::Verbatim { format: *b"txt", text: Bytes::from(info_text(self.shared, &sections)) }
            }
            ConnCommand::Quit => Reply::ok(),
        }
    }

    /// A data command from this connection's client: next sequence number, then through the log.
    ///
    /// Read-only commands go without a session: applying a read twice is harmless, and the store then
    /// does not cache (possibly large) read replies in the session table.
    fn replicate(&mut self, op: KvOp) -> Reply {
        let read_only = matches!(
            op,
            KvOp::Get { .. } | KvOp::Exists { .. } | KvOp::Strlen { .. } | KvOp::MGet { .. } | KvOp::DbSize
        );
        let (session, seq) = if read_only {
            (0, 0)
        } else {
            self.seq += 1;
            (self.session, self.seq)
        };
        let mut request = KvRequest { session, seq, now_ms: 0, op };
        execute(self.shared, &mut self.forwarder, &mut request)
    }

    /// `RAFTKV.FORWARD <request> [timeout ms]` from a follower: propose as-is, answer with the postcard
    /// reply as a bulk string, or `-TRYAGAIN` so that the follower retries.
    fn forwarded(&mut self, args: &[Bytes]) -> Reply {
        let (Some(payload), true) = (args.first(), args.len() <= 2) else {
            return Reply::error(format!("ERR wrong number of arguments for '{FORWARD_COMMAND}' command"));
        };
        let timeout = match args.get(1) {
            None => self.shared.options.retry_bound,
            Some(ms) => match resp::parse_i64(ms) {
                Some(ms) if ms >= 0 => Duration::from_millis(ms as u64).min(self.shared.options.retry_bound),
                _ => return Reply::error("ERR invalid timeout"),
            },
        };
        if payload.len() > self.shared.options.max_entry_bytes {
            return Reply::error("ERR request too large");
        }
        if KvRequest::decode(payload).is_err() {
            return Reply::error("ERR malformed forwarded request");
        }
        let status = self.shared.node.status();
        if status.role != Role::Leader {
            return Reply::error(format!("TRYAGAIN node {} is not the leader", self.shared.node_id));
        }
        // Copy: the argument shares the connection's read buffer, and log entries live long.
        match self.shared.node.propose_wait(Bytes::copy_from_slice(payload), timeout) {
            Ok(reply) => Reply::Bulk(reply),
            Err(ProposalError::Stopped) => Reply::error("ERR node stopped"),
            Err(error) => Reply::error(format!("TRYAGAIN {error}")),
        }
    }

    fn digest(&self) -> Reply {
        let result = self.shared.node.inspect(
            |kv: &KvStore| {
                let snapshot = kv.snapshot();
                (kv.last_applied(), crc32c::crc32c(&snapshot), snapshot.len())
            },
            Duration::from_secs(5),
        );
        match result {
            Some((applied, crc, len)) => {
                Reply::Array(vec![Reply::Integer(applied as i64), Reply::Bulk(Bytes::from(format!("{crc:08x}-{len}")))])
            }
            None => Reply::error("ERR node stopped"),
        }
    }
}

/// Runs `request` through the log via whichever node leads, retrying with the same `(session, seq)`
/// until it gets a reply or the retry bound passes.
fn execute(shared: &Shared, forwarder: &mut Forwarder, request: &mut KvRequest) -> Reply {
    let deadline = Instant::now() + shared.options.retry_bound;
    let mut delay = Duration::from_millis(5);
    loop {
        let status = shared.node.status();
        if !status.running {
            return Reply::error("ERR node stopped");
        }
        let attempt = if status.role == Role::Leader {
            request.now_ms = unix_ms();
            let encoded = request.encode();
            if encoded.len() > shared.options.max_entry_bytes {
                return Reply::error("ERR request too large");
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match shared.node.propose_wait(encoded, remaining) {
                Ok(bytes) => Ok(Reply::from_postcard(&bytes)
                    .unwrap_or_else(|_| Reply::error("ERR internal error: undecodable reply"))),
                Err(ProposalError::Stopped) => return Reply::error("ERR node stopped"),
                Err(error) => Err(error.to_string()),
            }
        } else if let Some(leader) = status.leader {
            match shared.cluster.node(leader) {
                Some(addrs) => {
                    request.now_ms = unix_ms();
                    let encoded = request.encode();
                    if encoded.len() > shared.options.max_entry_bytes {
                        return Reply::error("ERR request too large");
                    }
                    forwarder.forward(shared, leader, addrs.client_addr, &encoded, deadline)
                }
                None => Err(format!("leader {leader} is not in the cluster configuration")),
            }
        } else {
            Err("no leader known".to_owned())
        };
        match attempt {
            Ok(reply) => return reply,
            Err(why) => tracing::debug!(session = request.session, seq = request.seq, %why, "retrying command"),
        }
        let now = Instant::now();
        if now >= deadline {
            return Reply::error(TRYAGAIN_NO_LEADER);
        }
        std::thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// A connection to the leader's client port, kept across commands of one client connection.
#[derive(Default)]
struct Forwarder {
    conn: Option<(NodeId, TcpStream)>,
    buf: Vec<u8>,
}

/// How often a forwarded request's wait re-checks whether the leader changed.
const FORWARD_POLL: Duration = Duration::from_millis(50);

impl Forwarder {
    /// Sends `request` (encoded) to `leader` and waits for its reply. `Err` means "retry": the request
    /// may or may not have been applied, which the session makes harmless.
    fn forward(
        &mut self,
        shared: &Shared,
        leader: NodeId,
        addr: SocketAddr,
        request: &Bytes,
        deadline: Instant,
    ) -> Result<Reply, String> {
        let result = self.try_forward(shared, leader, addr, request, deadline);
        if result.is_err() {
            // After any failure the stream may hold a late reply: never reuse it.
            self.conn = None;
        }
        result
    }

    fn try_forward(
        &mut self,
        shared: &Shared,
        leader: NodeId,
        addr: SocketAddr,
        request: &Bytes,
        deadline: Instant,
    ) -> Result<Reply, String> {
        if self.conn.as_ref().is_none_or(|(id, _)| *id != leader) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = remaining.clamp(Duration::from_millis(1), Duration::from_millis(500));
            let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
            stream.set_read_timeout(Some(FORWARD_POLL)).map_err(|e| e.to_string())?;
            self.conn = Some((leader, stream));
        }
        let Some((_, stream)) = self.conn.as_mut() else { return Err("no connection".into()) };
        // Leave the leader time to answer TRYAGAIN before our own deadline.
        let budget = deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_millis(50));
        let mut out = BytesMut::with_capacity(request.len() + 64);
        resp::encode_request(
            &[FORWARD_COMMAND.as_bytes(), request.as_ref(), budget.as_millis().to_string().as_bytes()],
            &mut out,
        );
        stream.write_all(&out).map_err(|e| format!("write to leader {leader}: {e}"))?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let hard_deadline = deadline + Duration::from_millis(200);
        loop {
            if let Some((reply, _)) = parse_forward_reply(&self.buf)? {
                return reply;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Err(format!("leader {leader} closed the connection")),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > shared.options.max_entry_bytes + 1024 {
                        return Err("oversized reply from leader".into());
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if Instant::now() >= hard_deadline {
                        return Err(format!("no reply from leader {leader} in time"));
                    }
                    // A stopped or partitioned leader never answers: give up on it as soon as we learn of
                    // another one.
                    let status: Status = shared.node.status();
                    if status.leader != Some(leader) {
                        return Err(format!("leader changed from {leader} while waiting"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read from leader {leader}: {e}")),
            }
        }
    }
}

/// A reply to `RAFTKV.FORWARD` as a result: `Ok(reply)` to relay, `Err` to retry.
type ForwardOutcome = Result<Reply, String>;

/// Parses one forwarded reply from the front of `buf`: `$<len>` carrying a postcard [`Reply`], or an
/// error line. Returns `Ok(None)` while incomplete, `Err` on anything else (the connection is dropped).
fn parse_forward_reply(buf: &[u8]) -> Result<Option<(ForwardOutcome, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > 64 * 1024 { Err("unterminated reply line".into()) } else { Ok(None) };
    };
    if line_end == 0 {
        return Err("empty reply line".into());
    }
    let line = &buf[1..line_end];
    match buf.first() {
        Some(b'$') => {
            let len = resp::parse_i64(line).filter(|&n| n >= 0).ok_or("bad bulk length in forwarded reply")? as usize;
            let start = line_end + 2;
            let Some(end) = start.checked_add(len) else { return Err("bulk length overflow".into()) };
            if buf.len() < end + 2 {
                return Ok(None);
            }
            let reply =
                Reply::from_postcard(&buf[start..end]).map_err(|e| format!("undecodable forwarded reply: {e}"))?;
            Ok(Some((Ok(reply), end + 2)))
        }
        Some(b'-') => {
            let text = String::from_utf8_lossy(line).into_owned();
            let outcome = if text.starts_with("TRYAGAIN") { Err(text) } else { Ok(Reply::Error(text)) };
            Ok(Some((outcome, line_end + 2)))
        }
        _ => Err("unexpected reply to forwarded request".into()),
    }
}

/// `INFO` text: `# Server`, `# Clients`, `# Replication`, `# Persistence` and `# Stats` sections
/// (all unless specific ones are asked for).
fn info_text(shared: &Shared, sections: &[Bytes]) -> String {
    let want = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                s.eq_ignore_ascii_case(name.as_bytes())
                    || s.eq_ignore_ascii_case(b"all")
                    || s.eq_ignore_ascii_case(b"default")
                    || s.eq_ignore_ascii_case(b"everything")
            })
    };
    let status = shared.node.status();
    let mut text = String::new();
    let mut section = |name: &str, lines: Vec<(&str, String)>| {
        if !want(name) {
            return;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str(&format!("# {name}\r\n"));
        for (key, value) in lines {
            text.push_str(&format!("{key}:{value}\r\n"));
        }
    };
    section(
        "Server",
        vec![
            ("redis_version", "7.2.0".into()),
            ("raftkv_version", env!("CARGO_PKG_VERSION").into()),
            ("redis_mode", "standalone".into()),
            ("node_id", shared.node_id.to_string()),
            ("cluster_id", shared.cluster.cluster_id.to_string()),
            ("process_id", std::process::id().to_string()),
            ("tcp_port", shared.local_addr.port().to_string()),
            ("uptime_in_seconds", shared.started.elapsed().as_secs().to_string()),
        ],
    );
    section("Clients", vec![("connected_clients", shared.clients.load(Ordering::Relaxed).to_string())]);
    let leader_addr =
        status.leader.and_then(|id| shared.cluster.node(id)).map_or(String::new(), |n| n.client_addr.to_string());
    let voters: Vec<String> = shared.cluster.voters().iter().map(ToString::to_string).collect();
    section(
        "Replication",
        vec![
            ("role", status.role.to_string()),
            ("leader_id", status.leader.map_or("none".to_owned(), |id| id.to_string())),
            ("leader_addr", leader_addr),
            ("term", status.term.to_string()),
            ("commit_index", status.commit_index.to_string()),
            ("applied_index", status.applied_index.to_string()),
            ("last_log_index", status.last_log_index.to_string()),
            ("persisted_index", status.persisted_index.to_string()),
            ("pending_proposals", status.pending_proposals.to_string()),
            ("voters", voters.join(",")),
        ],
    );
    section(
        "Persistence",
        vec![
            ("wal_persists", status.wal.persists.to_string()),
            ("wal_groups", status.wal.groups.to_string()),
            ("wal_fsyncs", status.wal.fsyncs.to_string()),
            ("wal_durable_seq", status.wal.durable_seq.to_string()),
        ],
    );
    let t = shared.node.transport_stats();
    section(
        "Stats",
        vec![
            ("peer_messages_sent", t.sent.to_string()),
            ("peer_messages_received", t.received.to_string()),
            ("peer_messages_dropped", (t.dropped_full + t.dropped_unreachable + t.dropped_write).to_string()),
            ("peer_connects", t.connects.to_string()),
            ("peer_handshakes_rejected", t.handshake_rejected.to_string()),
            ("peer_bad_frames", t.bad_frames.to_string()),
        ],
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_unique_and_nonzero() {
        let a = SessionIds::new(1, 1_700_000_000_000);
        let b = SessionIds::new(2, 1_700_000_000_000);
        let later = SessionIds::new(1, 1_700_000_000_001);
        let ids_a: Vec<u64> = (0..1000).map(|_| a.next()).collect();
        let first_later = later.next();
        assert!(ids_a.iter().all(|&id| id != 0 && id < first_later));
        assert_ne!(a.next() >> 56, b.next() >> 56);
    }

    #[test]
    fn forward_replies_parse() {
        let reply = Reply::Integer(7).to_postcard();
        let mut wire = format!("${}\r\n", reply.len()).into_bytes();
        wire.extend_from_slice(&reply);
        wire.extend_from_slice(b"\r\n");
        for cut in 0..wire.len() {
            assert!(matches!(parse_forward_reply(&wire[..cut]), Ok(None)), "cut at {cut}");
        }
        let Ok(Some((Ok(r), used))) = parse_forward_reply(&wire) else { panic!("complete reply") };
        assert_eq!((r, used), (Reply::Integer(7), wire.len()));
        assert!(matches!(parse_forward_reply(b"-TRYAGAIN x\r\n"), Ok(Some((Err(_), 13)))));
        assert!(matches!(parse_forward_reply(b"-ERR x\r\n"), Ok(Some((Ok(Reply::Error(_)), 8)))));
        assert!(parse_forward_reply(b"+OK\r\n").is_err());
        assert!(parse_forward_reply(b"$-5\r\n").is_err());
        assert!(parse_forward_reply(b"\r\n").is_err());
    }
}
