//! The replicated key-value state machine: Redis string commands with exactly-once client sessions.
//!
//! The data path is:
//!
//! 1. The server parses a RESP request and calls [`parse_command`]. Connection-local commands (`PING`,
//!    `HELLO`, `CLIENT ...`) are answered on the spot; data commands yield a [`KvOp`].
//! 2. The leader wraps the op in a [`KvRequest`], stamping the client's session/sequence number and its
//!    wall clock (`now_ms`), encodes it with postcard and proposes it to Raft.
//! 3. Once committed, every replica calls [`StateMachine::apply`] on its [`KvStore`] with the same bytes
//!    in the same order. The store returns the reply as a postcard-serialized [`Reply`], and the leader
//!    encodes that as RESP2 or RESP3 for the waiting client.
//!
//! Everything that influences state is inside the log entry (including time, for key expiry), and all
//! containers are `BTreeMap`s, so replicas stay byte-identical: there is no hidden input such as the
//! local clock, a random hash seed, or iteration order.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::resp::{Protocol, Reply, parse_i64};

/// An application state machine replicated by the driver: implement this to run your own service on
/// Raft.
///
/// The driver calls [`apply`](StateMachine::apply) once for every committed log entry carrying an
/// application command, in log order, on every replica. For replicas to agree, `apply` must be
/// **deterministic**: its effect and its return value may depend only on the current state, `index` and
/// `command`, never on the local clock, randomness, thread scheduling, environment, or the iteration order
/// of a randomly seeded `HashMap`. If you need time, have the proposer put a timestamp in the command
/// (as [`KvRequest::now_ms`] does).
///
/// `apply` must not panic on any input, including malformed commands (for example bytes written by an
/// older or newer version of your application): a panic would stop the replica, and the same entry would
/// stop every other replica too. Return an error reply instead.
///
/// Snapshot and restore methods will be added to this trait so that logs can be compacted; keep your state
/// serializable.
pub trait StateMachine: Send + 'static {
    /// Applies the committed command at log `index` and returns its reply.
    ///
    /// `index` strictly increases from call to call. The returned bytes are opaque to the driver: on the
    /// leader they are handed to the client that proposed the command (if it is still waiting), and on
    /// followers they are dropped. They should therefore be cheap to produce.
    fn apply(&mut self, index: u64, command: &[u8]) -> Bytes;
}

/// Default bound on the number of client sessions a [`KvStore`] remembers.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// Largest string value `APPEND` may build, like Redis' default `proto-max-bulk-len` (512 MiB).
pub const MAX_STRING_BYTES: usize = 512 * 1024 * 1024;

/// How many already-expired keys each `apply` reclaims eagerly. Expired keys are invisible anyway (reads
/// check the expiry), so this only bounds memory; a small constant keeps every apply's latency bounded
/// even when a million keys expire at the same millisecond.
const EXPIRE_SWEEP_PER_APPLY: usize = 32;

/// Error text returned for a retried request whose sequence number is older than the session's last one.
pub const STALE_SEQUENCE_ERROR: &str = "ERR stale sequence number: request was already applied";

/// A command as it is stored in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRequest {
    /// The client session id, or 0 for no session (the command is applied every time it appears in the
    /// log, which is fine for reads).
    pub session: u64,
    /// Per-session sequence number, increasing with each new request of the session; 0 means no session.
    /// A retry of a request reuses its sequence number so the store can recognise it.
    pub seq: u64,
    /// The leader's wall-clock time (Unix milliseconds) when it proposed this command. Expiry is computed
    /// from this logged value, never from a replica's own clock, so all replicas expire keys identically.
    pub now_ms: u64,
    /// The operation.
    pub op: KvOp,
}

impl KvRequest {
    /// Serializes the request for the log (postcard).
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("serializing into a Vec cannot fail"))
    }

    /// Inverse of [`KvRequest::encode`].
    pub fn decode(bytes: &[u8]) -> Result<KvRequest, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// `SET`'s `NX`/`XX` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    /// Set unconditionally.
    Always,
    /// `NX`: only if the key does not exist.
    IfAbsent,
    /// `XX`: only if the key already exists.
    IfPresent,
}

/// What `SET` does with the key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetExpiry {
    /// No option: the key becomes persistent (any previous TTL is cleared).
    Clear,
    /// `KEEPTTL`: keep the existing TTL.
    Keep,
    /// `EX`/`PX`: expire this many milliseconds after the request's `now_ms`.
    AfterMs(u64),
    /// `EXAT`/`PXAT`: expire at this Unix time in milliseconds.
    AtMs(u64),
}

/// A replicated key-value operation.
///
/// The postcard encoding identifies variants by position, and logs outlive binaries: only ever append new
/// variants at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
    /// Replies `+OK`, or Null if the condition failed; with `GET`, the old value or Null.
    Set {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// `NX`/`XX`.
        condition: SetCondition,
        /// TTL handling.
        expiry: SetExpiry,
        /// `GET`: reply with the previous value.
        get: bool,
    },
    /// `GET key`: the value or Null.
    Get {
        /// The key.
        key: Bytes,
    },
    /// `DEL key...`: the number of keys removed.
    Del {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// `EXISTS key...`: how many of the keys exist (repeated keys count repeatedly).
    Exists {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// `INCR`/`DECR`/`INCRBY`/`DECRBY`: the new value. The TTL is kept.
    IncrBy {
        /// The key.
        key: Bytes,
        /// Amount to add (negative for decrements).
        delta: i64,
    },
    /// `APPEND key value`: the new length. The TTL is kept.
    Append {
        /// The key.
        key: Bytes,
        /// Bytes to append.
        value: Bytes,
    },
    /// `STRLEN key`: the value's length, 0 if absent.
    Strlen {
        /// The key.
        key: Bytes,
    },
    /// `MSET key value [key value ...]`: `+OK`. Clears the TTLs of the keys.
    MSet {
        /// The pairs, applied in order (a repeated key ends with its last value).
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `MGET key...`: an array of values, Null for missing keys.
    MGet {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// `DBSIZE`: the number of live keys.
    DbSize,
    /// `FLUSHALL`/`FLUSHDB`: removes every key (sessions are kept). `+OK`.
    FlushAll,
}

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Value {
    data: Bytes,
    /// Unix milliseconds after which the key no longer exists.
    expire_at: Option<u64>,
}

/// What the store remembers about a client session to make its requests exactly-once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    /// The serialized reply to `last_seq`, returned again if that request is retried.
    last_reply: Bytes,
    /// Log index at which the session was last used: the LRU clock. Using the index rather than time
    /// makes eviction deterministic and the key unique.
    last_used: u64,
}

/// The replicated key-value store (Redis strings). See the [module docs](self).
///
/// Sessions: each request carries `(session, seq)`. The store keeps, per session, the highest applied
/// `seq` and its reply; a retried request (same `seq`) gets the cached reply without being re-applied,
/// and an older `seq` gets [`STALE_SEQUENCE_ERROR`]. Only the last reply is cached, so a client that wants
/// retries answered with the original reply must keep at most one request per session in flight. When more
/// than `max_sessions` sessions exist, the least recently used is forgotten; a retry arriving after its
/// session was evicted is applied again, so keep the bound well above the number of live clients.
#[derive(Debug, Clone)]
pub struct KvStore {
    data: BTreeMap<Bytes, Value>,
    /// `(expire_at, key)` for every key with a TTL, ordered by expiry for the eager sweep. Derived from
    /// `data`, so not part of the snapshot.
    expires: BTreeSet<(u64, Bytes)>,
    sessions: BTreeMap<u64, Session>,
    /// `last_used -> session id`, to find the least recently used session. Derived from `sessions`.
    lru: BTreeMap<u64, u64>,
    /// The state machine's clock: the largest `now_ms` applied so far. Taking the maximum keeps time
    /// monotonic when leadership moves to a node whose clock is behind, so a key that has expired never
    /// comes back to life.
    clock_ms: u64,
    last_applied: u64,
    /// Configuration, not state: every replica must use the same value.
    max_sessions: usize,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new()
    }
}

/// The serialized form of a [`KvStore`] (borrowed for writing, owned for reading; same layout).
#[derive(Serialize)]
struct ImageRef<'a> {
    last_applied: u64,
    clock_ms: u64,
    data: &'a BTreeMap<Bytes, Value>,
    sessions: &'a BTreeMap<u64, Session>,
}

#[derive(Deserialize)]
struct Image {
    last_applied: u64,
    clock_ms: u64,
    data: BTreeMap<Bytes, Value>,
    sessions: BTreeMap<u64, Session>,
}

impl KvStore {
    /// An empty store remembering at most [`DEFAULT_MAX_SESSIONS`] sessions.
    pub fn new() -> Self {
        KvStore::with_max_sessions(DEFAULT_MAX_SESSIONS)
    }

    /// An empty store remembering at most `max_sessions` sessions (at least 1). All replicas must be
    /// configured identically, since eviction changes replies to retries.
    pub fn with_max_sessions(max_sessions: usize) -> Self {
        KvStore {
            data: BTreeMap::new(),
            expires: BTreeSet::new(),
            sessions: BTreeMap::new(),
            lru: BTreeMap::new(),
            clock_ms: 0,
            last_applied: 0,
            max_sessions: max_sessions.max(1),
        }
    }

    /// The index of the last applied command (0 if none).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// The number of sessions currently remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Serializes the complete replicated state (keys, values, TTLs, sessions, clock, last applied index)
    /// deterministically: replicas that applied the same log produce identical bytes.
    pub fn snapshot(&self) -> Bytes {
        let image = ImageRef {
            last_applied: self.last_applied,
            clock_ms: self.clock_ms,
            data: &self.data,
            sessions: &self.sessions,
        };
        Bytes::from(postcard::to_allocvec(&image).expect("serializing into a Vec cannot fail"))
    }

    /// Replaces the state with one produced by [`KvStore::snapshot`], keeping this store's configuration.
    /// On error the store is unchanged.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), postcard::Error> {
        let image: Image = postcard::from_bytes(snapshot)?;
        self.expires = image.data.iter().filter_map(|(k, v)| v.expire_at.map(|at| (at, k.clone()))).collect();
        self.lru = image.sessions.iter().map(|(&id, s)| (s.last_used, id)).collect();
        self.data = image.data;
        self.sessions = image.sessions;
        self.clock_ms = image.clock_ms;
        self.last_applied = image.last_applied;
        // A smaller configured bound than the snapshot's producer: evict down to it.
        self.evict_sessions();
        Ok(())
    }

    /// Looks up a key as of the store's clock, deleting it if it has expired.
    fn live(&mut self, key: &[u8]) -> Option<&Value> {
        let expired = self.data.get(key)?.expire_at.is_some_and(|at| self.clock_ms > at);
        if expired {
            self.remove(key);
            return None;
        }
        self.data.get(key)
    }

    fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let (key, old) = self.data.remove_entry(key)?;
        if let Some(at) = old.expire_at {
            self.expires.remove(&(at, key));
        }
        Some(old)
    }

    fn insert(&mut self, key: Bytes, value: Value) {
        if let Some(at) = self.data.get(&key).and_then(|old| old.expire_at) {
            self.expires.remove(&(at, key.clone()));
        }
        if let Some(at) = value.expire_at {
            self.expires.insert((at, key.clone()));
        }
        self.data.insert(key, value);
    }

    /// Removes up to `limit` expired keys (all of them if `limit` is `usize::MAX`).
    fn sweep_expired(&mut self, limit: usize) {
        for _ in 0..limit {
            match self.expires.first() {
                Some((at, _)) if self.clock_ms > *at => {
                    let (_, key) = self.expires.pop_first().expect("first() was Some");
                    self.data.remove(&key);
                }
                _ => break,
            }
        }
    }

    fn evict_sessions(&mut self) {
        while self.sessions.len() > self.max_sessions {
            let (_, id) = self.lru.pop_first().expect("lru indexes every session");
            self.sessions.remove(&id);
        }
    }

    /// Executes one operation at the current clock.
    fn execute(&mut self, op: KvOp) -> Reply {
        let now = self.clock_ms;
        match op {
            KvOp::Set { key, value, condition, expiry, get } => {
                let old = self.live(&key).cloned();
                // Redis validates the expiry before looking at NX/XX, so an invalid one is always an error.
                let expire_at = match expiry {
                    SetExpiry::Clear => None,
                    SetExpiry::Keep => old.as_ref().and_then(|v| v.expire_at),
                    SetExpiry::AtMs(at) => Some(at),
                    SetExpiry::AfterMs(ms) => match now.checked_add(ms) {
                        Some(at) if at <= i64::MAX as u64 => Some(at),
                        _ => return Reply::error("ERR invalid expire time in 'set' command"),
                    },
                };
                let old_reply = || match &old {
                    Some(v) => Reply::Bulk(v.data.clone()),
                    None => Reply::Null,
                };
                let proceed = match condition {
                    SetCondition::Always => true,
                    SetCondition::IfAbsent => old.is_none(),
                    SetCondition::IfPresent => old.is_some(),
                };
                if !proceed {
                    return if get { old_reply() } else { Reply::Null };
                }
                if expire_at.is_some_and(|at| at <= now) {
                    // An expiry already in the past deletes the key, as in Redis.
                    self.remove(&key);
                } else {
                    self.insert(key, Value { data: value, expire_at });
                }
                if get { old_reply() } else { Reply::ok() }
            }
            KvOp::Get { key } => match self.live(&key) {
                Some(v) => Reply::Bulk(v.data.clone()),
                None => Reply::Null,
            },
            KvOp::Del { keys } => {
                let mut removed = 0;
                for key in keys {
                    if self.live(&key).is_some() {
                        self.remove(&key);
                        removed += 1;
                    }
                }
                Reply::Integer(removed)
            }
            KvOp::Exists { keys } => Reply::Integer(keys.iter().filter(|k| self.live(k).is_some()).count() as i64),
            KvOp::IncrBy { key, delta } => {
                let (current, expire_at) = match self.live(&key) {
                    None => (0, None),
                    Some(v) => match parse_i64(&v.data) {
                        Some(n) => (n, v.expire_at),
                        None => return Reply::error("ERR value is not an integer or out of range"),
                    },
                };
                let Some(new) = current.checked_add(delta) else {
                    return Reply::error("ERR increment or decrement would overflow");
                };
                self.insert(key, Value { data: Bytes::from(new.to_string()), expire_at });
                Reply::Integer(new)
            }
            KvOp::Append { key, value } => {
                let (mut data, expire_at) = match self.live(&key) {
                    None => (Vec::new(), None),
                    Some(v) => (v.data.to_vec(), v.expire_at),
                };
                if data.len() + value.len() > MAX_STRING_BYTES {
                    return Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
                }
                data.extend_from_slice(&value);
                let len = data.len() as i64;
                self.insert(key, Value { data: Bytes::from(data), expire_at });
                Reply::Integer(len)
            }
            KvOp::Strlen { key } => Reply::Integer(self.live(&key).map_or(0, |v| v.data.len() as i64)),
            KvOp::MSet { pairs } => {
                for (key, value) in pairs {
                    self.insert(key, Value { data: value, expire_at: None });
                }
                Reply::ok()
            }
            KvOp::MGet { keys } => Reply::Array(
                keys.iter()
                    .map(|k| match self.live(k) {
                        Some(v) => Reply::Bulk(v.data.clone()),
                        None => Reply::Null,
                    })
                    .collect(),
            ),
            KvOp::DbSize => {
                // Reclaim every expired key so the count is exact (each key is reclaimed once, so this is
                // amortised over the SETs that created them).
                self.sweep_expired(usize::MAX);
                Reply::Integer(self.data.len() as i64)
            }
            KvOp::FlushAll => {
                self.data.clear();
                self.expires.clear();
                Reply::ok()
            }
        }
    }
}

impl StateMachine for KvStore {
    /// Decodes a [`KvRequest`], applies it at most once per `(session, seq)`, and returns the reply as
    /// [`Reply::to_postcard`] bytes. Undecodable commands get an error reply and change nothing but
    /// `last_applied`.
    fn apply(&mut self, index: u64, command: &[u8]) -> Bytes {
        debug_assert!(index > self.last_applied, "apply index {index} after {}", self.last_applied);
        self.last_applied = index;
        let Ok(req) = KvRequest::decode(command) else {
            return Reply::error("ERR malformed command in log").to_postcard();
        };
        self.clock_ms = self.clock_ms.max(req.now_ms);
        self.sweep_expired(EXPIRE_SWEEP_PER_APPLY);

        if req.session == 0 || req.seq == 0 {
            return self.execute(req.op).to_postcard();
        }
        if let Some(session) = self.sessions.get_mut(&req.session) {
            // A retry or a new request both count as use for LRU purposes.
            self.lru.remove(&session.last_used);
            session.last_used = index;
            self.lru.insert(index, req.session);
            if req.seq == session.last_seq {
                return session.last_reply.clone();
            }
            if req.seq < session.last_seq {
                return Reply::error(STALE_SEQUENCE_ERROR).to_postcard();
            }
        }
        let reply = self.execute(req.op).to_postcard();
        let session = Session { last_seq: req.seq, last_reply: reply.clone(), last_used: index };
        if let Some(old) = self.sessions.insert(req.session, session) {
            self.lru.remove(&old.last_used);
        }
        self.lru.insert(index, req.session);
        self.evict_sessions();
        reply
    }
}

/// What the server should do with a parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedCommand {
    /// Propose this operation through the Raft log and reply with the result of applying it.
    Replicate(KvOp),
    /// Send this reply right away; nothing else to do.
    Reply(Reply),
    /// A command that reads or changes the connection's own state, handled by the server.
    Connection(ConnCommand),
}

/// Commands that act on the client connection rather than on the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnCommand {
    /// `HELLO [protover [AUTH username password] [SETNAME name]]`: switch protocol if `protocol` is given,
    /// then reply with [`hello_reply`] (encoded in the new protocol).
    Hello {
        /// The requested protocol, or `None` to keep the current one.
        protocol: Option<Protocol>,
        /// `AUTH username password`.
        auth: Option<(Bytes, Bytes)>,
        /// `SETNAME name`.
        setname: Option<Bytes>,
    },
    /// `CLIENT SETNAME name` (already validated; empty clears the name). Reply `+OK`.
    ClientSetName(Bytes),
    /// `CLIENT GETNAME`: the name as a bulk string, or Null.
    ClientGetName,
    /// `CLIENT ID`: the connection id as an integer.
    ClientId,
    /// `INFO [section ...]`: server-built text, replied as `Reply::Verbatim` with format `txt` (what Redis
    /// sends; RESP2 clients see a bulk string).
    Info {
        /// Requested sections, as given.
        sections: Vec<Bytes>,
    },
    /// `QUIT`: reply `+OK` and close the connection.
    Quit,
}

/// The reply to `HELLO`, shaped like Redis' (a map; RESP2 clients receive it flattened into an array).
/// We claim Redis 7.2.0 because some clients enable features based on the server version.
pub fn hello_reply(protocol: Protocol, client_id: u64, role: &str) -> Reply {
    let s = |text: &str| Reply::Bulk(Bytes::copy_from_slice(text.as_bytes()));
    Reply::Map(vec![
        (s("server"), s("redis")),
        (s("version"), s("7.2.0")),
        (s("proto"), Reply::Integer(protocol.version().into())),
        (s("id"), Reply::Integer(client_id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s(role)),
        (s("modules"), Reply::Array(Vec::new())),
    ])
}

/// `ERR wrong number of arguments for 'name' command` (Redis names subcommands `client|setname`).
fn wrong_args(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

fn not_an_integer() -> Reply {
    Reply::error("ERR value is not an integer or out of range")
}

fn int_arg(arg: &[u8]) -> Result<i64, Reply> {
    parse_i64(arg).ok_or_else(not_an_integer)
}

/// Redis' message for an unknown command, quoting the first arguments (at most ~128 bytes of them).
fn unknown_command(name: &[u8], args: &[Bytes]) -> Reply {
    let mut listed = String::new();
    for arg in args {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push('\'');
        listed.push_str(&String::from_utf8_lossy(&arg[..arg.len().min(room)]));
        listed.push_str("' ");
    }
    let name = String::from_utf8_lossy(&name[..name.len().min(128)]);
    Reply::error(format!("ERR unknown command '{name}', with args beginning with: {listed}"))
}

fn unknown_subcommand(sub: &[u8], command: &str) -> Reply {
    let sub = String::from_utf8_lossy(sub);
    Reply::error(format!("ERR unknown subcommand '{sub}'. Try {command} HELP."))
}

/// Turns a request's arguments into a [`ParsedCommand`], or an error reply with Redis' wording.
///
/// Command names and options are case-insensitive. Only validation happens here; anything depending on
/// data is decided when the op is applied.
pub fn parse_command(args: &[Bytes]) -> Result<ParsedCommand, Reply> {
    let Some((name, rest)) = args.split_first() else {
        return Err(Reply::error("ERR empty command"));
    };
    let lower = name.to_ascii_lowercase();
    // Non-UTF-8 names match nothing and fall through to "unknown command".
    let cmd = std::str::from_utf8(&lower).unwrap_or("");
    let n = rest.len();
    let arity = |ok: bool| if ok { Ok(()) } else { Err(wrong_args(cmd)) };
    let replicate = |op| Ok(ParsedCommand::Replicate(op));
    match cmd {
        "get" => {
            arity(n == 1)?;
            replicate(KvOp::Get { key: rest[0].clone() })
        }
        "set" => {
            arity(n >= 2)?;
            replicate(parse_set(rest)?)
        }
        "del" | "unlink" => {
            arity(n >= 1)?;
            replicate(KvOp::Del { keys: rest.to_vec() })
        }
        "exists" => {
            arity(n >= 1)?;
            replicate(KvOp::Exists { keys: rest.to_vec() })
        }
        "incr" | "decr" => {
            arity(n == 1)?;
            replicate(KvOp::IncrBy { key: rest[0].clone(), delta: if cmd == "incr" { 1 } else { -1 } })
        }
        "incrby" => {
            arity(n == 2)?;
            replicate(KvOp::IncrBy { key: rest[0].clone(), delta: int_arg(&rest[1])? })
        }
        "decrby" => {
            arity(n == 2)?;
            let delta = int_arg(&rest[1])?.checked_neg().ok_or_else(|| Reply::error("ERR decrement would overflow"))?;
            replicate(KvOp::IncrBy { key: rest[0].clone(), delta })
        }
        "append" => {
            arity(n == 2)?;
            replicate(KvOp::Append { key: rest[0].clone(), value: rest[1].clone() })
        }
        "strlen" => {
            arity(n == 1)?;
            replicate(KvOp::Strlen { key: rest[0].clone() })
        }
        "mset" => {
            arity(n >= 2 && n % 2 == 0)?;
            let pairs = rest.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
            replicate(KvOp::MSet { pairs })
        }
        "mget" => {
            arity(n >= 1)?;
            replicate(KvOp::MGet { keys: rest.to_vec() })
        }
        "dbsize" => {
            arity(n == 0)?;
            replicate(KvOp::DbSize)
        }
        "flushall" | "flushdb" => {
            arity(n <= 1)?;
            if let Some(mode) = rest.first() {
                if !mode.eq_ignore_ascii_case(b"async") && !mode.eq_ignore_ascii_case(b"sync") {
                    return Err(syntax_error());
                }
            }
            replicate(KvOp::FlushAll)
        }
        "ping" => {
            arity(n <= 1)?;
            Ok(ParsedCommand::Reply(match rest.first() {
                Some(msg) => Reply::Bulk(msg.clone()),
                None => Reply::Simple("PONG".to_owned()),
            }))
        }
        "echo" => {
            arity(n == 1)?;
            Ok(ParsedCommand::Reply(Reply::Bulk(rest[0].clone())))
        }
        "hello" => parse_hello(rest).map(ParsedCommand::Connection),
        "client" => parse_client(rest),
        "info" => Ok(ParsedCommand::Connection(ConnCommand::Info { sections: rest.to_vec() })),
        "quit" => Ok(ParsedCommand::Connection(ConnCommand::Quit)),
        // We publish no command table; an empty one keeps redis-cli's hints and redis-benchmark happy.
        "command" => Ok(ParsedCommand::Reply(match rest.first() {
            Some(sub) if sub.eq_ignore_ascii_case(b"count") => Reply::Integer(0),
            _ => Reply::Array(Vec::new()),
        })),
        "config" => {
            arity(n >= 1)?;
            let sub = &rest[0];
            if sub.eq_ignore_ascii_case(b"get") {
                if n < 2 {
                    return Err(wrong_args("config|get"));
                }
                // No configuration parameters are exposed: an empty map, which is what Redis returns for
                // a pattern that matches nothing.
                Ok(ParsedCommand::Reply(Reply::Map(Vec::new())))
            } else if sub.eq_ignore_ascii_case(b"set") {
                Err(Reply::error("ERR CONFIG SET is not supported"))
            } else {
                Err(unknown_subcommand(sub, "CONFIG"))
            }
        }
        "select" => {
            arity(n == 1)?;
            // Only database 0 exists; a replicated multi-database keyspace is not worth the complexity.
            match int_arg(&rest[0])? {
                0 => Ok(ParsedCommand::Reply(Reply::ok())),
                _ => Err(Reply::error("ERR DB index is out of range")),
            }
        }
        _ => Err(unknown_command(name, rest)),
    }
}

/// Parses `SET`'s options (everything after the key and value). Like Redis, syntax is checked for all
/// options before any expiry value is validated.
fn parse_set(rest: &[Bytes]) -> Result<KvOp, Reply> {
    #[derive(PartialEq, Clone, Copy)]
    enum Ttl {
        None,
        Keep,
        Ex,
        Px,
        ExAt,
        PxAt,
    }
    let mut condition = SetCondition::Always;
    let mut get = false;
    let mut ttl = Ttl::None;
    let mut ttl_arg: Option<&Bytes> = None;
    let mut i = 2;
    while i < rest.len() {
        let opt = rest[i].to_ascii_uppercase();
        match opt.as_slice() {
            b"NX" if condition != SetCondition::IfPresent => condition = SetCondition::IfAbsent,
            b"XX" if condition != SetCondition::IfAbsent => condition = SetCondition::IfPresent,
            b"GET" => get = true,
            b"KEEPTTL" if matches!(ttl, Ttl::None | Ttl::Keep) => ttl = Ttl::Keep,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                let kind = match opt.as_slice() {
                    b"EX" => Ttl::Ex,
                    b"PX" => Ttl::Px,
                    b"EXAT" => Ttl::ExAt,
                    _ => Ttl::PxAt,
                };
                // Repeating the same option is allowed (the last wins); mixing kinds is not.
                if !(ttl == Ttl::None || ttl == kind) || i + 1 >= rest.len() {
                    return Err(syntax_error());
                }
                ttl = kind;
                i += 1;
                ttl_arg = Some(&rest[i]);
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    let invalid_expire = || Reply::error("ERR invalid expire time in 'set' command");
    let ms = |seconds: bool| -> Result<u64, Reply> {
        let v = int_arg(ttl_arg.expect("expiry options always record their argument"))?;
        if v <= 0 {
            return Err(invalid_expire());
        }
        let ms = if seconds { v.checked_mul(1000).ok_or_else(invalid_expire)? } else { v };
        Ok(ms as u64)
    };
    let expiry = match ttl {
        Ttl::None => SetExpiry::Clear,
        Ttl::Keep => SetExpiry::Keep,
        Ttl::Ex => SetExpiry::AfterMs(ms(true)?),
        Ttl::Px => SetExpiry::AfterMs(ms(false)?),
        Ttl::ExAt => SetExpiry::AtMs(ms(true)?),
        Ttl::PxAt => SetExpiry::AtMs(ms(false)?),
    };
    Ok(KvOp::Set { key: rest[0].clone(), value: rest[1].clone(), condition, expiry, get })
}

fn parse_hello(rest: &[Bytes]) -> Result<ConnCommand, Reply> {
    let Some((ver, opts)) = rest.split_first() else {
        return Ok(ConnCommand::Hello { protocol: None, auth: None, setname: None });
    };
    let protocol = match parse_i64(ver) {
        Some(2) => Protocol::Resp2,
        Some(3) => Protocol::Resp3,
        Some(_) => return Err(Reply::error("NOPROTO unsupported protocol version")),
        None => return Err(Reply::error("ERR Protocol version is not an integer or out of range")),
    };
    let (mut auth, mut setname) = (None, None);
    let mut i = 0;
    while i < opts.len() {
        let more = opts.len() - i - 1;
        if opts[i].eq_ignore_ascii_case(b"auth") && more >= 2 {
            auth = Some((opts[i + 1].clone(), opts[i + 2].clone()));
            i += 3;
        } else if opts[i].eq_ignore_ascii_case(b"setname") && more >= 1 {
            setname = Some(validate_client_name(&opts[i + 1])?.clone());
            i += 2;
        } else {
            let opt = String::from_utf8_lossy(&opts[i]);
            return Err(Reply::error(format!("ERR Syntax error in HELLO option '{opt}'")));
        }
    }
    Ok(ConnCommand::Hello { protocol: Some(protocol), auth, setname })
}

/// Client names are printed in `CLIENT LIST`-style output, so like Redis we allow only printable ASCII
/// without spaces.
fn validate_client_name(name: &Bytes) -> Result<&Bytes, Reply> {
    if name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(name)
    } else {
        Err(Reply::error("ERR Client names cannot contain spaces, newlines or special characters."))
    }
}

fn parse_client(rest: &[Bytes]) -> Result<ParsedCommand, Reply> {
    let Some((sub, args)) = rest.split_first() else { return Err(wrong_args("client")) };
    let lower = sub.to_ascii_lowercase();
    let n = args.len();
    let conn = |c| Ok(ParsedCommand::Connection(c));
    match lower.as_slice() {
        b"setname" if n == 1 => conn(ConnCommand::ClientSetName(validate_client_name(&args[0])?.clone())),
        b"setname" => Err(wrong_args("client|setname")),
        b"getname" if n == 0 => conn(ConnCommand::ClientGetName),
        b"getname" => Err(wrong_args("client|getname")),
        b"id" if n == 0 => conn(ConnCommand::ClientId),
        b"id" => Err(wrong_args("client|id")),
        // redis-py sends `CLIENT SETINFO LIB-NAME/LIB-VER` on connect; accept and ignore it.
        b"setinfo" if n == 2 => {
            if args[0].eq_ignore_ascii_case(b"lib-name") || args[0].eq_ignore_ascii_case(b"lib-ver") {
                Ok(ParsedCommand::Reply(Reply::ok()))
            } else {
                let opt = String::from_utf8_lossy(&args[0]);
                Err(Reply::error(format!("ERR Unrecognized option '{opt}'")))
            }
        }
        b"setinfo" => Err(wrong_args("client|setinfo")),
        _ => Err(unknown_subcommand(sub, "CLIENT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn err(s: &str) -> Reply {
        Reply::error(s)
    }

    /// Drives a store the way the server would: parse, wrap, encode, apply, decode.
    struct Harness {
        kv: KvStore,
        index: u64,
        now_ms: u64,
    }

    impl Harness {
        fn new() -> Self {
            Harness { kv: KvStore::new(), index: 0, now_ms: 1_000_000 }
        }

        fn apply_raw(&mut self, command: &[u8]) -> Reply {
            self.index += 1;
            Reply::from_postcard(&self.kv.apply(self.index, command)).unwrap()
        }

        fn request(&mut self, session: u64, seq: u64, words: &[&str]) -> Result<KvRequest, Reply> {
            match parse_command(&args(words))? {
                ParsedCommand::Replicate(op) => Ok(KvRequest { session, seq, now_ms: self.now_ms, op }),
                other => panic!("{words:?} is not replicated: {other:?}"),
            }
        }

        /// Runs a command without a session; parse errors are returned as the reply.
        fn run(&mut self, words: &[&str]) -> Reply {
            self.run_session(0, 0, words)
        }

        fn run_session(&mut self, session: u64, seq: u64, words: &[&str]) -> Reply {
            match self.request(session, seq, words) {
                Ok(req) => self.apply_raw(&req.encode()),
                Err(e) => e,
            }
        }
    }

    #[test]
    fn set_get_basic() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["GET", "k"]), Reply::Null);
        assert_eq!(h.run(&["SET", "k", "v"]), Reply::ok());
        assert_eq!(h.run(&["get", "k"]), bulk("v"));
        assert_eq!(h.run(&["SeT", "k", "w"]), Reply::ok());
        assert_eq!(h.run(&["GET", "k"]), bulk("w"));
        // Binary-safe keys and values.
        let key = Bytes::from_static(b"\0\xff\r\n");
        let op = KvOp::Set {
            key: key.clone(),
            value: key.clone(),
            condition: SetCondition::Always,
            expiry: SetExpiry::Clear,
            get: false,
        };
        h.apply_raw(&KvRequest { session: 0, seq: 0, now_ms: 0, op }.encode());
        let get = KvRequest { session: 0, seq: 0, now_ms: 0, op: KvOp::Get { key: key.clone() } };
        assert_eq!(h.apply_raw(&get.encode()), Reply::Bulk(key));
    }

    #[test]
    fn set_nx_xx_get() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["SET", "k", "1", "XX"]), Reply::Null);
        assert_eq!(h.run(&["GET", "k"]), Reply::Null);
        assert_eq!(h.run(&["SET", "k", "1", "nx"]), Reply::ok());
        assert_eq!(h.run(&["SET", "k", "2", "NX"]), Reply::Null);
        assert_eq!(h.run(&["GET", "k"]), bulk("1"));
        assert_eq!(h.run(&["SET", "k", "3", "XX"]), Reply::ok());
        assert_eq!(h.run(&["GET", "k"]), bulk("3"));
        // GET returns the old value whether or not the write happened.
        assert_eq!(h.run(&["SET", "k", "4", "GET"]), bulk("3"));
        assert_eq!(h.run(&["SET", "k", "5", "NX", "GET"]), bulk("4"));
        assert_eq!(h.run(&["SET", "new", "x", "GET"]), Reply::Null);
        assert_eq!(h.run(&["SET", "absent", "x", "XX", "GET"]), Reply::Null);
        assert_eq!(h.run(&["GET", "absent"]), Reply::Null);
        assert_eq!(h.run(&["GET", "k"]), bulk("4"));
    }

    #[test]
    fn set_expiry_follows_logged_time() {
        let mut h = Harness::new();
        let t0 = h.now_ms;
        assert_eq!(h.run(&["SET", "ex", "v", "EX", "10"]), Reply::ok());
        assert_eq!(h.run(&["SET", "px", "v", "px", "500"]), Reply::ok());
        assert_eq!(h.run(&["SET", "exat", "v", "EXAT", &((t0 / 1000) + 20).to_string()]), Reply::ok());
        assert_eq!(h.run(&["SET", "pxat", "v", "PXAT", &(t0 + 700).to_string()]), Reply::ok());
        assert_eq!(h.run(&["DBSIZE"]), Reply::Integer(4));

        h.now_ms = t0 + 500; // exactly at the expiry instant the key still exists (as in Redis)
        assert_eq!(h.run(&["GET", "px"]), bulk("v"));
        h.now_ms = t0 + 501;
        assert_eq!(h.run(&["GET", "px"]), Reply::Null);
        assert_eq!(h.run(&["EXISTS", "pxat", "ex"]), Reply::Integer(2));
        h.now_ms = t0 + 701;
        assert_eq!(h.run(&["DBSIZE"]), Reply::Integer(2));
        h.now_ms = t0 + 10_001;
        assert_eq!(h.run(&["MGET", "ex", "exat"]), Reply::Array(vec![Reply::Null, bulk("v")]));
        h.now_ms = t0 + 20_001;
        assert_eq!(h.run(&["DBSIZE"]), Reply::Integer(0));

        // A plain SET or MSET clears the TTL; KEEPTTL, INCR and APPEND keep it. (A fresh store, because the
        // logged clock is monotonic.)
        let mut h2 = Harness::new();
        h2.run(&["SET", "a", "1", "PX", "100"]);
        h2.run(&["SET", "a", "2", "KEEPTTL"]);
        h2.run(&["INCR", "a"]);
        assert_eq!(h2.run(&["APPEND", "a", "0"]), Reply::Integer(2));
        h2.run(&["SET", "b", "1", "PX", "100"]);
        h2.run(&["SET", "b", "2"]);
        h2.run(&["SET", "c", "1", "PX", "100"]);
        h2.run(&["MSET", "c", "2"]);
        h2.now_ms += 101;
        assert_eq!(h2.run(&["MGET", "a", "b", "c"]), Reply::Array(vec![Reply::Null, bulk("2"), bulk("2")]));

        // An absolute expiry in the past deletes the key.
        let mut h3 = Harness::new();
        h3.run(&["SET", "k", "v"]);
        assert_eq!(h3.run(&["SET", "k", "w", "PXAT", "5", "GET"]), bulk("v"));
        assert_eq!(h3.run(&["EXISTS", "k"]), Reply::Integer(0));
    }

    #[test]
    fn clock_never_goes_backwards() {
        let mut h = Harness::new();
        h.run(&["SET", "k", "v", "PX", "100"]);
        h.now_ms += 200;
        h.run(&["DBSIZE"]);
        // A new leader with a clock 10 s behind must not resurrect the key.
        h.now_ms -= 10_000;
        assert_eq!(h.run(&["GET", "k"]), Reply::Null);
        assert_eq!(h.run(&["SET", "k2", "v", "PX", "100"]), Reply::ok());
        assert_eq!(h.run(&["GET", "k2"]), bulk("v"));
    }

    #[test]
    fn set_option_errors() {
        let mut h = Harness::new();
        let syntax = err("ERR syntax error");
        let invalid = err("ERR invalid expire time in 'set' command");
        for bad in [
            &["SET", "k", "v", "NX", "XX"][..],
            &["SET", "k", "v", "EX", "1", "PX", "1"],
            &["SET", "k", "v", "EX", "1", "KEEPTTL"],
            &["SET", "k", "v", "KEEPTTL", "PXAT", "1"],
            &["SET", "k", "v", "EX"],
            &["SET", "k", "v", "FOO"],
            &["SET", "k", "v", "EX", "x", "BAR"],
        ] {
            assert_eq!(h.run(bad), syntax, "{bad:?}");
        }
        assert_eq!(h.run(&["SET", "k", "v", "EX", "x"]), err("ERR value is not an integer or out of range"));
        assert_eq!(h.run(&["SET", "k", "v", "EX", "1.5"]), err("ERR value is not an integer or out of range"));
        assert_eq!(h.run(&["SET", "k", "v", "EX", "0"]), invalid);
        assert_eq!(h.run(&["SET", "k", "v", "PX", "-1"]), invalid);
        assert_eq!(h.run(&["SET", "k", "v", "EX", "9223372036854775807"]), invalid);
        // Overflow only detectable once now_ms is known: an error at apply time, key untouched.
        assert_eq!(h.run(&["SET", "k", "v", "PX", "9223372036854775807"]), invalid);
        assert_eq!(h.run(&["EXISTS", "k"]), Reply::Integer(0));
        // Repeating an option is fine.
        assert_eq!(h.run(&["SET", "k", "v", "NX", "nx", "EX", "5", "ex", "10", "GET", "get"]), Reply::Null);
        assert_eq!(h.run(&["SET", "k", "v", "KEEPTTL", "keepttl"]), Reply::ok());
    }

    #[test]
    fn del_exists() {
        let mut h = Harness::new();
        h.run(&["MSET", "a", "1", "b", "2", "c", "3"]);
        assert_eq!(h.run(&["EXISTS", "a", "a", "b", "zz"]), Reply::Integer(3));
        assert_eq!(h.run(&["DEL", "a", "a", "zz", "b"]), Reply::Integer(2));
        assert_eq!(h.run(&["EXISTS", "a", "b", "c"]), Reply::Integer(1));
        assert_eq!(h.run(&["DBSIZE"]), Reply::Integer(1));
        assert_eq!(h.run(&["DEL", "a"]), Reply::Integer(0));
        assert_eq!(h.run(&["FLUSHALL"]), Reply::ok());
        assert_eq!(h.run(&["DBSIZE"]), Reply::Integer(0));
    }

    #[test]
    fn incr_decr() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["INCR", "n"]), Reply::Integer(1));
        assert_eq!(h.run(&["INCRBY", "n", "41"]), Reply::Integer(42));
        assert_eq!(h.run(&["DECR", "n"]), Reply::Integer(41));
        assert_eq!(h.run(&["DECRBY", "n", "-9"]), Reply::Integer(50));
        assert_eq!(h.run(&["DECRBY", "m", "5"]), Reply::Integer(-5));
        assert_eq!(h.run(&["GET", "n"]), bulk("50"));

        let not_int = err("ERR value is not an integer or out of range");
        h.run(&["MSET", "s", "abc", "sp", " 1", "plus", "+1", "zero", "01", "big", "9223372036854775808"]);
        for key in ["s", "sp", "plus", "zero", "big"] {
            assert_eq!(h.run(&["INCR", key]), not_int, "{key}");
        }
        assert_eq!(h.run(&["INCRBY", "n", "x"]), not_int);
        assert_eq!(h.run(&["INCRBY", "n", "1.0"]), not_int);

        let overflow = err("ERR increment or decrement would overflow");
        h.run(&["SET", "max", "9223372036854775807"]);
        assert_eq!(h.run(&["INCR", "max"]), overflow);
        assert_eq!(h.run(&["GET", "max"]), bulk("9223372036854775807"));
        h.run(&["SET", "min", "-9223372036854775808"]);
        assert_eq!(h.run(&["DECR", "min"]), overflow);
        assert_eq!(h.run(&["INCRBY", "min", "-1"]), overflow);
        assert_eq!(h.run(&["DECRBY", "n", "-9223372036854775808"]), err("ERR decrement would overflow"));
        assert_eq!(h.run(&["INCRBY", "min", "9223372036854775807"]), Reply::Integer(-1));
    }

    #[test]
    fn mset_mget_append_strlen() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["MSET", "a", "1", "b", "2", "a", "3"]), Reply::ok());
        assert_eq!(h.run(&["MGET", "a", "x", "b"]), Reply::Array(vec![bulk("3"), Reply::Null, bulk("2")]));
        assert_eq!(h.run(&["APPEND", "a", "45"]), Reply::Integer(3));
        assert_eq!(h.run(&["APPEND", "new", "xy"]), Reply::Integer(2));
        assert_eq!(h.run(&["GET", "a"]), bulk("345"));
        assert_eq!(h.run(&["STRLEN", "a"]), Reply::Integer(3));
        assert_eq!(h.run(&["STRLEN", "nope"]), Reply::Integer(0));
    }

    #[test]
    fn duplicate_request_applies_once() {
        let mut h = Harness::new();
        let incr = h.request(7, 1, &["INCR", "n"]).unwrap().encode();
        assert_eq!(h.apply_raw(&incr), Reply::Integer(1));
        // The client retried (e.g. after a leader change) and the command was logged twice.
        assert_eq!(h.apply_raw(&incr), Reply::Integer(1));
        assert_eq!(h.run(&["GET", "n"]), bulk("1"));

        assert_eq!(h.run_session(7, 2, &["INCR", "n"]), Reply::Integer(2));
        assert_eq!(h.run_session(7, 2, &["INCR", "n"]), Reply::Integer(2));
        // An older sequence number is refused, never re-applied.
        assert_eq!(h.apply_raw(&incr), err(STALE_SEQUENCE_ERROR));
        assert_eq!(h.run(&["GET", "n"]), bulk("2"));
        // Sequence numbers may skip (a request whose proposal was lost).
        assert_eq!(h.run_session(7, 5, &["INCR", "n"]), Reply::Integer(3));
        assert_eq!(h.run_session(7, 4, &["INCR", "n"]), err(STALE_SEQUENCE_ERROR));
        // Error replies are cached too; another session is independent.
        h.run(&["SET", "s", "x"]);
        assert_eq!(h.run_session(7, 6, &["INCR", "s"]), err("ERR value is not an integer or out of range"));
        h.run(&["SET", "s", "1"]);
        assert_eq!(h.run_session(7, 6, &["INCR", "s"]), err("ERR value is not an integer or out of range"));
        assert_eq!(h.run_session(8, 6, &["INCR", "s"]), Reply::Integer(2));
        // Session 0 / seq 0 always applies.
        assert_eq!(h.run_session(0, 9, &["INCR", "n"]), Reply::Integer(4));
        assert_eq!(h.run_session(0, 9, &["INCR", "n"]), Reply::Integer(5));
        assert_eq!(h.run_session(9, 0, &["INCR", "n"]), Reply::Integer(6));
        assert_eq!(h.run_session(9, 0, &["INCR", "n"]), Reply::Integer(7));
        assert_eq!(h.kv.session_count(), 2);
    }

    #[test]
    fn sessions_evicted_least_recently_used() {
        let mut h = Harness { kv: KvStore::with_max_sessions(2), ..Harness::new() };
        h.run_session(1, 1, &["INCR", "n"]);
        h.run_session(2, 1, &["INCR", "n"]);
        h.run_session(1, 1, &["INCR", "n"]); // retry touches session 1
        h.run_session(3, 1, &["INCR", "n"]); // evicts session 2
        assert_eq!(h.kv.session_count(), 2);
        assert_eq!(h.run(&["GET", "n"]), bulk("3"));
        assert_eq!(h.run_session(1, 1, &["INCR", "n"]), Reply::Integer(1)); // still deduplicated
        // Session 2 was forgotten, so its retry is applied again (documented limitation).
        assert_eq!(h.run_session(2, 1, &["INCR", "n"]), Reply::Integer(4));
        assert_eq!(h.kv.session_count(), 2);
    }

    #[test]
    fn malformed_log_entry_is_an_error_reply() {
        let mut h = Harness::new();
        assert_eq!(h.apply_raw(b"\xff\xff\xff"), err("ERR malformed command in log"));
        assert_eq!(h.apply_raw(b""), err("ERR malformed command in log"));
        assert_eq!(h.kv.last_applied(), 2);
    }

    #[test]
    fn snapshot_restore_round_trip() {
        let mut h = Harness::new();
        h.run(&["SET", "a", "1", "PX", "1000"]);
        h.run_session(4, 1, &["MSET", "b", "2", "c", "3"]);
        let snap = h.kv.snapshot();
        let mut copy = KvStore::new();
        copy.restore(&snap).unwrap();
        assert_eq!(copy.snapshot(), snap);
        assert_eq!(copy.last_applied(), h.kv.last_applied());
        assert!(copy.restore(b"\xff").is_err());
        assert_eq!(copy.snapshot(), snap);
        // The restored copy behaves identically, including expiry and dedup.
        let mut h2 = Harness { kv: copy, index: h.index, now_ms: h.now_ms };
        for hh in [&mut h, &mut h2] {
            assert_eq!(hh.run_session(4, 1, &["MSET", "b", "x"]), Reply::ok());
            hh.now_ms += 1001;
            assert_eq!(hh.run(&["MGET", "a", "b"]), Reply::Array(vec![Reply::Null, bulk("2")]));
        }
        assert_eq!(h.kv.snapshot(), h2.kv.snapshot());
    }

    #[test]
    fn parse_arity_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["GET"], "get"),
            (&["get", "a", "b"], "get"),
            (&["SET", "k"], "set"),
            (&["DEL"], "del"),
            (&["EXISTS"], "exists"),
            (&["INCR"], "incr"),
            (&["DECR", "a", "b"], "decr"),
            (&["INCRBY", "a"], "incrby"),
            (&["DECRBY", "a", "1", "2"], "decrby"),
            (&["MSET"], "mset"),
            (&["MSET", "a"], "mset"),
            (&["MSET", "a", "1", "b"], "mset"),
            (&["MGET"], "mget"),
            (&["DBSIZE", "x"], "dbsize"),
            (&["APPEND", "a"], "append"),
            (&["STRLEN"], "strlen"),
            (&["PING", "a", "b"], "ping"),
            (&["ECHO"], "echo"),
            (&["SELECT"], "select"),
            (&["CLIENT"], "client"),
            (&["CLIENT", "SETNAME"], "client|setname"),
            (&["client", "getname", "x"], "client|getname"),
            (&["CLIENT", "ID", "x"], "client|id"),
            (&["CONFIG"], "config"),
            (&["CONFIG", "GET"], "config|get"),
            (&["FLUSHALL", "ASYNC", "x"], "flushall"),
        ];
        for (words, name) in cases {
            let expected = err(&format!("ERR wrong number of arguments for '{name}' command"));
            assert_eq!(parse_command(&args(words)), Err(expected), "{words:?}");
        }
    }

    #[test]
    fn parse_other_errors() {
        assert_eq!(
            parse_command(&args(&["FOO", "a", "b"])),
            Err(err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' "))
        );
        assert_eq!(parse_command(&args(&["foo"])), Err(err("ERR unknown command 'foo', with args beginning with: ")));
        let long = "x".repeat(300);
        let Err(Reply::Error(msg)) = parse_command(&args(&["nope", &long, "more"])) else { panic!() };
        assert!(msg.len() < 200 && !msg.contains("more"), "{msg}");
        assert_eq!(parse_command(&[]), Err(err("ERR empty command")));
        assert_eq!(
            parse_command(&args(&["INCRBY", "k", "1x"])),
            Err(err("ERR value is not an integer or out of range"))
        );
        assert_eq!(parse_command(&args(&["SELECT", "1"])), Err(err("ERR DB index is out of range")));
        assert_eq!(parse_command(&args(&["SELECT", "x"])), Err(err("ERR value is not an integer or out of range")));
        assert_eq!(parse_command(&args(&["FLUSHDB", "now"])), Err(err("ERR syntax error")));
        assert_eq!(
            parse_command(&args(&["CLIENT", "KILL"])),
            Err(err("ERR unknown subcommand 'KILL'. Try CLIENT HELP."))
        );
        assert_eq!(
            parse_command(&args(&["CONFIG", "REWRITE"])),
            Err(err("ERR unknown subcommand 'REWRITE'. Try CONFIG HELP."))
        );
        assert_eq!(
            parse_command(&args(&["CLIENT", "SETNAME", "a b"])),
            Err(err("ERR Client names cannot contain spaces, newlines or special characters."))
        );
        assert_eq!(parse_command(&args(&["HELLO", "4"])), Err(err("NOPROTO unsupported protocol version")));
        assert_eq!(
            parse_command(&args(&["HELLO", "three"])),
            Err(err("ERR Protocol version is not an integer or out of range"))
        );
        assert_eq!(
            parse_command(&args(&["HELLO", "3", "AUTH", "u"])),
            Err(err("ERR Syntax error in HELLO option 'AUTH'"))
        );
        assert_eq!(parse_command(&args(&["CLIENT", "SETINFO", "x", "y"])), Err(err("ERR Unrecognized option 'x'")));
    }

    #[test]
    fn parse_local_commands() {
        let reply = |words: &[&str]| match parse_command(&args(words)) {
            Ok(ParsedCommand::Reply(r)) => r,
            other => panic!("{words:?}: {other:?}"),
        };
        let conn = |words: &[&str]| match parse_command(&args(words)) {
            Ok(ParsedCommand::Connection(c)) => c,
            other => panic!("{words:?}: {other:?}"),
        };
        assert_eq!(reply(&["PING"]), Reply::Simple("PONG".into()));
        assert_eq!(reply(&["ping", "hi"]), bulk("hi"));
        assert_eq!(reply(&["EcHo", "x"]), bulk("x"));
        assert_eq!(reply(&["COMMAND"]), Reply::Array(vec![]));
        assert_eq!(reply(&["COMMAND", "DOCS"]), Reply::Array(vec![]));
        assert_eq!(reply(&["COMMAND", "COUNT"]), Reply::Integer(0));
        assert_eq!(reply(&["CONFIG", "GET", "save"]), Reply::Map(vec![]));
        assert_eq!(reply(&["SELECT", "0"]), Reply::ok());
        assert_eq!(reply(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]), Reply::ok());
        assert_eq!(conn(&["QUIT"]), ConnCommand::Quit);
        assert_eq!(conn(&["CLIENT", "ID"]), ConnCommand::ClientId);
        assert_eq!(conn(&["client", "GetName"]), ConnCommand::ClientGetName);
        assert_eq!(
            conn(&["CLIENT", "SETNAME", "worker-1"]),
            ConnCommand::ClientSetName(Bytes::from_static(b"worker-1"))
        );
        assert_eq!(conn(&["CLIENT", "SETNAME", ""]), ConnCommand::ClientSetName(Bytes::new()));
        assert_eq!(conn(&["INFO", "server"]), ConnCommand::Info { sections: args(&["server"]) });
        assert_eq!(conn(&["HELLO"]), ConnCommand::Hello { protocol: None, auth: None, setname: None });
        assert_eq!(
            conn(&["hello", "3", "auth", "default", "pw", "SETNAME", "me"]),
            ConnCommand::Hello {
                protocol: Some(Protocol::Resp3),
                auth: Some((Bytes::from_static(b"default"), Bytes::from_static(b"pw"))),
                setname: Some(Bytes::from_static(b"me")),
            }
        );
        assert_eq!(
            conn(&["HELLO", "2"]),
            ConnCommand::Hello { protocol: Some(Protocol::Resp2), auth: None, setname: None }
        );
        let Reply::Map(fields) = hello_reply(Protocol::Resp3, 7, "master") else { panic!() };
        assert!(fields.contains(&(bulk("proto"), Reply::Integer(3))));
        assert!(fields.contains(&(bulk("id"), Reply::Integer(7))));
        // Replicated commands parse case-insensitively into ops.
        assert_eq!(
            parse_command(&args(&["set", "k", "v", "px", "5", "xx"])),
            Ok(ParsedCommand::Replicate(KvOp::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                condition: SetCondition::IfPresent,
                expiry: SetExpiry::AfterMs(5),
                get: false,
            }))
        );
    }

    /// Random command scripts over a small key space, so commands collide and expiries trigger.
    fn command_strategy() -> impl Strategy<Value = (u64, u64, u64, Vec<String>)> {
        let key = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned);
        let val = prop_oneof![Just("1".to_owned()), Just("x".to_owned()), (-5i64..5).prop_map(|n| n.to_string())];
        let cmd = prop_oneof![
            (key.clone(), val.clone()).prop_map(|(k, v)| vec!["SET".into(), k, v]),
            (key.clone(), val.clone(), 1u64..50).prop_map(|(k, v, ms)| vec![
                "SET".into(),
                k,
                v,
                "PX".into(),
                ms.to_string()
            ]),
            (key.clone(), val.clone()).prop_map(|(k, v)| vec!["SET".into(), k, v, "NX".into(), "GET".into()]),
            key.clone().prop_map(|k| vec!["INCR".into(), k]),
            key.clone().prop_map(|k| vec!["GET".into(), k]),
            (key.clone(), key.clone()).prop_map(|(a, b)| vec!["DEL".into(), a, b]),
            (key.clone(), val.clone()).prop_map(|(k, v)| vec!["APPEND".into(), k, v]),
            (key.clone(), val).prop_map(|(k, v)| vec!["MSET".into(), k, v]),
            Just(vec!["DBSIZE".to_owned()]),
        ];
        // (session, seq, time step, command): few sessions and seqs so duplicates and stale ones happen.
        (0u64..4, 0u64..6, 0u64..20, cmd)
    }

    proptest! {
        #[test]
        fn replicas_stay_identical(script in prop::collection::vec(command_strategy(), 1..80)) {
            let mut log = Vec::new();
            let mut now = 1_000u64;
            for (session, seq, step, words) in &script {
                now += step;
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                let ParsedCommand::Replicate(op) = parse_command(&args(&words)).unwrap() else { unreachable!() };
                log.push(KvRequest { session: *session, seq: *seq, now_ms: now, op }.encode());
            }
            let mut a = KvStore::with_max_sessions(3);
            let mut b = KvStore::with_max_sessions(3);
            let mut restored = KvStore::with_max_sessions(3);
            let half = log.len() / 2;
            for (i, cmd) in log.iter().enumerate() {
                let index = i as u64 + 1;
                let ra = a.apply(index, cmd);
                prop_assert_eq!(&ra, &b.apply(index, cmd));
                if i == half {
                    // A replica catching up from a snapshot converges too.
                    restored.restore(&a.snapshot()).unwrap();
                } else if i > half {
                    prop_assert_eq!(&ra, &restored.apply(index, cmd));
                }
                prop_assert_eq!(a.snapshot(), b.snapshot());
            }
            if log.len() > 1 {
                prop_assert_eq!(a.snapshot(), restored.snapshot());
            }
        }
    }
}
