//! The replicated key-value state machine: Redis string commands with exactly-once client sessions.
//!
//! The data path is:
//!
//! 1. The server parses a RESP request and calls [`parse_command`](super::command::parse_command).
//!    Connection-local commands (`PING`, `HELLO`, `CLIENT ...`) are answered on the spot; data commands
//!    yield a [`KvOp`].
//! 2. The leader wraps the op in a [`KvRequest`], stamping the client's session/sequence number and its
//!    wall clock (`now_ms`), encodes it with postcard and proposes it to Raft.
//! 3. Once committed, every replica calls [`StateMachine::apply`] on its [`KvStore`] with the same bytes
//!    in the same order. The store answers with its own [`KvResult`], which knows nothing of the wire:
//!    the server turns it into a RESP2 or RESP3 reply for the waiting client.
//!
//! The store is pure (no IO, no clock, no threads), which is what lets the simulator run this very code
//! under its seeded faults.
//!
//! Everything that influences state is inside the log entry (including time, for key expiry), and all
//! containers are ordered maps, so replicas stay byte-identical: there is no hidden input such as the
//! local clock, a random hash seed, or iteration order.
//!
//! # Snapshots without stalling writes
//!
//! The keys and the sessions live in [`imbl::OrdMap`]s: persistent B-trees whose clone shares every
//! node with the original. [`StateMachine::snapshot`] clones them, which takes a few pointer copies
//! whatever the size of the data, and the driver encodes that frozen [`KvSnapshot`] on a background thread
//! while this store keeps applying: each later write copies only the handful of tree nodes on its path
//! (copy-on-write), so the cost of a snapshot is spread over the writes that follow it instead of stopping
//! the node loop for a full serialization (which takes about 100 ms per million keys). A forked child
//! process (Redis' way) would need no such map, but a fork of a multi-threaded process is only safe for
//! code that touches nothing but async-signal-safe calls, which serializing a map is not.

use std::collections::{BTreeMap, BTreeSet};

use imbl::OrdMap;
use imbl::ordmap::Entry as MapEntry;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod ops;
mod pattern;

pub use ops::{DEFAULT_SCAN_COUNT, parse_float};
pub use pattern::glob_match;

use crate::state_machine::{RestoreError, SnapshotImage, StateMachine};

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
        encode_exact(self)
    }

    /// Inverse of [`KvRequest::encode`].
    pub fn decode(bytes: &[u8]) -> Result<KvRequest, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The `(session, seq)` of an encoded request, read without decoding (or allocating) the op: the
    /// two fields lead the encoding.
    pub fn session_of(bytes: &[u8]) -> Option<(u64, u64)> {
        postcard::take_from_bytes::<(u64, u64)>(bytes).ok().map(|(ids, _)| ids)
    }
}

/// Postcard into a buffer of exactly the encoded size: one allocation, no regrowth and no spare
/// capacity (every proposal and every forwarded reply is encoded, so this is on the hot path).
fn encode_exact<T: Serialize>(value: &T) -> Bytes {
    let size = postcard::experimental::serialized_size(value).expect("sizing a value cannot fail");
    let out = postcard::to_extend(value, Vec::with_capacity(size)).expect("serializing into a Vec cannot fail");
    Bytes::from(out)
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
    // Everything below was added after format version 1 of the log: append only.
    /// `SETNX key value`: 1 if the key was set, 0 if it existed (the value is then unchanged).
    SetNx {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// `GETDEL key`: the value (Null if absent), and the key is deleted.
    GetDel {
        /// The key.
        key: Bytes,
    },
    /// `GETEX key [EX|PX|EXAT|PXAT|PERSIST]`: the value; `expiry` `None` leaves the TTL as it is,
    /// `Some(SetExpiry::Clear)` is `PERSIST`.
    GetEx {
        /// The key.
        key: Bytes,
        /// The new TTL, if any.
        expiry: Option<SetExpiry>,
    },
    /// `GETRANGE key start end`: the substring, with Redis' negative-index rules (empty if absent).
    GetRange {
        /// The key.
        key: Bytes,
        /// First byte, negative counts from the end.
        start: i64,
        /// Last byte (inclusive), negative counts from the end.
        end: i64,
    },
    /// `SETRANGE key offset value`: overwrites from `offset`, zero-padding; the new length.
    SetRange {
        /// The key.
        key: Bytes,
        /// Where to write.
        offset: u64,
        /// What to write.
        value: Bytes,
    },
    /// `INCRBYFLOAT key increment`: the new value as a bulk string. The increment travels as the text
    /// the client sent (validated by the parser) so the op stays `Eq` and its bytes exact.
    IncrByFloat {
        /// The key.
        key: Bytes,
        /// The increment's text.
        delta: Bytes,
    },
    /// `MSETNX key value [...]`: sets all the pairs if none of the keys exists (1), else nothing (0).
    MSetNx {
        /// The pairs.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `EXPIRE`/`PEXPIRE` (`at` is [`SetExpiry::AfterMs`]) and `EXPIREAT`/`PEXPIREAT`
    /// ([`SetExpiry::AtMs`]): 1 if the TTL was set (a deadline already past deletes the key), 0 if the
    /// key is absent or the condition failed. The deadline is fixed in the log (relative ones from the
    /// logged clock), so every replica expires the key at the same index.
    Expire {
        /// The key.
        key: Bytes,
        /// The deadline.
        at: SetExpiry,
        /// `NX`/`XX`/`GT`/`LT`.
        condition: ExpireCondition,
    },
    /// `TTL`/`PTTL` (`absolute` false) and `EXPIRETIME`/`PEXPIRETIME` (true): -2 if the key is absent,
    /// -1 if it has no TTL, else the remaining time (or the deadline) in seconds or milliseconds.
    Ttl {
        /// The key.
        key: Bytes,
        /// Milliseconds rather than seconds.
        millis: bool,
        /// The deadline rather than the time left.
        absolute: bool,
    },
    /// `PERSIST key`: 1 if a TTL was removed.
    Persist {
        /// The key.
        key: Bytes,
    },
    /// `TYPE key`: `string`, `hash` or `none`.
    Type {
        /// The key.
        key: Bytes,
    },
    /// `RENAME from to` (`+OK`) and `RENAMENX` (1, or 0 if `to` exists). The TTL moves with the value;
    /// `ERR no such key` if `from` is absent.
    Rename {
        /// The key to rename.
        from: Bytes,
        /// Its new name.
        to: Bytes,
        /// `RENAMENX`.
        nx: bool,
    },
    /// `KEYS pattern`: every live key matching the glob pattern, in key order.
    Keys {
        /// The pattern (`*`, `?`, `[a-z]`, `[^a]`, `\\` escapes).
        pattern: Bytes,
    },
    /// `RANDOMKEY`: some live key, or Null. Deterministic in the log (chosen from the index).
    RandomKey,
    /// The version of each key (the log index of its last write, 0 if absent): what `WATCH` records.
    Versions {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// `EXEC`: the queued ops of a `MULTI` block, applied in one log entry (so atomically on every
    /// replica), if every watched key still has the version `WATCH` saw; else nothing (Null). The ops
    /// are encoded one by one (each a postcard [`KvOp`]), which keeps the op type non-recursive: a
    /// hostile entry cannot nest transactions deep enough to exhaust the stack while it decodes.
    Exec {
        /// `(key, version)` pairs from `WATCH`.
        watched: Vec<(Bytes, u64)>,
        /// The encoded ops.
        ops: Vec<Bytes>,
    },
    /// `HSET key field value [...]` (the number of new fields) and `HMSET` (`+OK`, `ok_reply`).
    HSet {
        /// The key.
        key: Bytes,
        /// The field/value pairs.
        pairs: Vec<(Bytes, Bytes)>,
        /// Reply `+OK` (HMSET) instead of the count.
        ok_reply: bool,
    },
    /// `HSETNX key field value`: 1 if the field was set, 0 if it existed.
    HSetNx {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// The value.
        value: Bytes,
    },
    /// `HGET key field`.
    HGet {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// `HMGET key field [...]`.
    HMGet {
        /// The key.
        key: Bytes,
        /// The fields.
        fields: Vec<Bytes>,
    },
    /// `HDEL key field [...]`: how many fields were removed (the key goes with its last field).
    HDel {
        /// The key.
        key: Bytes,
        /// The fields.
        fields: Vec<Bytes>,
    },
    /// `HGETALL key`: a map of every field (empty if absent).
    HGetAll {
        /// The key.
        key: Bytes,
    },
    /// `HINCRBY key field increment`: the new value.
    HIncrBy {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// The increment.
        delta: i64,
    },
    /// `HINCRBYFLOAT key field increment`: the new value (text, as for [`KvOp::IncrByFloat`]).
    HIncrByFloat {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// The increment's text.
        delta: Bytes,
    },
    /// `HLEN key`.
    HLen {
        /// The key.
        key: Bytes,
    },
    /// `HEXISTS key field`.
    HExists {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// `HKEYS key`.
    HKeys {
        /// The key.
        key: Bytes,
    },
    /// `HVALS key`.
    HVals {
        /// The key.
        key: Bytes,
    },
    /// `HSTRLEN key field`.
    HStrlen {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`: `[next cursor, keys]`. The cursor is a
    /// position in a fixed hash order of the keys, so a key present for the whole scan is returned at
    /// least once however the key space changes meanwhile (Redis' guarantee).
    Scan {
        /// Where to go on (0 starts).
        cursor: u64,
        /// `MATCH`.
        pattern: Option<Bytes>,
        /// `COUNT`: about how many keys to look at.
        count: u32,
        /// `TYPE`.
        kind: Option<KeyType>,
    },
    /// `HSCAN key cursor [MATCH pattern] [COUNT n]`: `[next cursor, field value ...]`.
    HScan {
        /// The key.
        key: Bytes,
        /// Where to go on (0 starts).
        cursor: u64,
        /// `MATCH`.
        pattern: Option<Bytes>,
        /// `COUNT`.
        count: u32,
    },
    /// An op of a connection that `SELECT`ed database `db` (1 to 15; database 0's ops are not
    /// wrapped). The op is encoded inside, like [`KvOp::Exec`]'s, so the type stays non-recursive.
    /// Always through the log (reads too): only database 0 is served by ReadIndex and leases.
    InDb {
        /// The database.
        db: u8,
        /// The encoded op.
        op: Bytes,
    },
    /// `FLUSHDB`: removes every key of the current database (`FLUSHALL` removes those of all).
    FlushDb,
    /// `EVAL script numkeys key... arg...` (and `EVALSHA`, resolved to the script's body by the
    /// node that received it): every replica runs the script as it applies the entry (see
    /// [`super::script`]). Replies what the script returns ([`KvResult::Script`]).
    Eval {
        /// The script's Lua source.
        script: Bytes,
        /// `KEYS`.
        keys: Vec<Bytes>,
        /// `ARGV`.
        args: Vec<Bytes>,
        /// `EVAL_RO`/`EVALSHA_RO`: commands that write are refused.
        read_only: bool,
    },
}

/// Databases a client may `SELECT` (0 to 15), as in Redis' default configuration.
pub const DATABASES: u8 = 16;

/// `EXPIRE`'s option (Redis 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCondition {
    /// No option.
    Always,
    /// `NX`: only if the key has no TTL.
    IfNone,
    /// `XX`: only if the key has a TTL.
    IfSome,
    /// `GT`: only if the new deadline is later (no TTL counts as infinite).
    Later,
    /// `LT`: only if the new deadline is earlier (no TTL counts as infinite).
    Earlier,
}

/// The type of a value, as `TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    /// `string`.
    String,
    /// `hash`.
    Hash,
    /// `list` (no key holds one yet: `SCAN ... TYPE list` finds nothing).
    List,
    /// `set` (likewise).
    Set,
    /// `zset` (likewise).
    ZSet,
    /// `stream` (likewise).
    Stream,
}

impl KeyType {
    /// Redis' name for the type.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::Hash => "hash",
            KeyType::List => "list",
            KeyType::Set => "set",
            KeyType::ZSet => "zset",
            KeyType::Stream => "stream",
        }
    }
}

impl KvOp {
    /// Whether the op only reads: such ops carry no session (applying a read twice is harmless, and
    /// the session table then does not cache possibly large read results), and may be served by a
    /// ReadIndex or lease read through [`KvStore::query`].
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            KvOp::Get { .. }
                | KvOp::Exists { .. }
                | KvOp::Strlen { .. }
                | KvOp::MGet { .. }
                | KvOp::DbSize
                | KvOp::GetRange { .. }
                | KvOp::Ttl { .. }
                | KvOp::Type { .. }
                | KvOp::Keys { .. }
                | KvOp::RandomKey
                | KvOp::Versions { .. }
                | KvOp::HGet { .. }
                | KvOp::HMGet { .. }
                | KvOp::HGetAll { .. }
                | KvOp::HLen { .. }
                | KvOp::HExists { .. }
                | KvOp::HKeys { .. }
                | KvOp::HVals { .. }
                | KvOp::HStrlen { .. }
                | KvOp::Scan { .. }
                | KvOp::HScan { .. }
        )
    }

    /// Encodes the op alone (an element of [`KvOp::Exec`]).
    pub fn encode(&self) -> Bytes {
        encode_exact(self)
    }

    /// The length of [`KvOp::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).expect("sizing a value cannot fail")
    }
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Data {
    /// A string.
    Str(Bytes),
    /// A hash: field to value, in field order.
    Hash(#[serde(deserialize_with = "ordmap")] OrdMap<Bytes, Bytes>),
}

impl Data {
    pub(super) fn kind(&self) -> KeyType {
        match self {
            Data::Str(_) => KeyType::String,
            Data::Hash(_) => KeyType::Hash,
        }
    }
}

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Value {
    pub(super) data: Data,
    /// Unix milliseconds after which the key no longer exists.
    pub(super) expire_at: Option<u64>,
    /// The log index of the key's last write: what `WATCH` compares. Always at least 1.
    pub(super) version: u64,
}

impl Value {
    pub(super) fn alive_at(&self, now: u64) -> bool {
        self.expire_at.is_none_or(|at| now <= at)
    }
}

/// What the store remembers about a client session to make its requests exactly-once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    /// The result of `last_seq`, returned again if that request is retried.
    last_reply: KvResult,
    /// Log index at which the session was last used: the LRU clock. Using the index rather than time
    /// makes eviction deterministic and the key unique.
    last_used: u64,
}

/// The replicated key-value store (Redis strings and hashes, with TTLs and transactions). See the
/// [module docs](self).
///
/// Sessions: each request carries `(session, seq)`. The store keeps, per session, the highest applied
/// `seq` and its reply; a retried request (same `seq`) gets the cached reply without being re-applied,
/// and an older `seq` gets [`STALE_SEQUENCE_ERROR`]. Only the last reply is cached, so a client that wants
/// retries answered with the original reply must keep at most one request per session in flight. When more
/// than `max_sessions` sessions exist, the least recently used is forgotten; a retry arriving after its
/// session was evicted is applied again, so keep the bound well above the number of live clients.
#[derive(Debug, Clone)]
pub struct KvStore {
    pub(super) data: OrdMap<Bytes, Value>,
    /// `(expire_at, key)` for every key with a TTL, ordered by expiry for the eager sweep. Derived from
    /// `data`, so not part of the snapshot.
    pub(super) expires: BTreeSet<(u64, Bytes)>,
    /// `(scan_hash(key), key)` for every key: the order `SCAN` walks, so that its cursor (a hash) stays
    /// meaningful while keys come and go. Derived from `data`.
    pub(super) scan_order: BTreeSet<(u64, Bytes)>,
    /// The keys of databases 1 to 15 that hold any (database 0's are the fields above). An op in
    /// database N swaps N's maps into those fields while it runs (three pointer swaps), so every
    /// command is written once, for "the current database".
    pub(super) other_dbs: BTreeMap<u8, Keyspace>,
    sessions: OrdMap<u64, Session>,
    /// `last_used -> session id`, to find the least recently used session. Derived from `sessions`.
    lru: BTreeMap<u64, u64>,
    /// The state machine's clock: the largest `now_ms` applied so far. Taking the maximum keeps time
    /// monotonic when leadership moves to a node whose clock is behind, so a key that has expired never
    /// comes back to life.
    pub(super) clock_ms: u64,
    pub(super) last_applied: u64,
    /// Configuration, not state: every replica must use the same value.
    max_sessions: usize,
    /// Counters since this store was created (not replicated state, not in the snapshot).
    stats: StoreStats,
}

/// One database's keys and their derived indexes (see [`KvStore`]'s fields of the same names).
#[derive(Debug, Clone, Default)]
pub(super) struct Keyspace {
    pub(super) data: OrdMap<Bytes, Value>,
    pub(super) expires: BTreeSet<(u64, Bytes)>,
    pub(super) scan_order: BTreeSet<(u64, Bytes)>,
}

impl Keyspace {
    fn of(data: OrdMap<Bytes, Value>) -> Keyspace {
        let expires = data.iter().filter_map(|(k, v)| v.expire_at.map(|at| (at, k.clone()))).collect();
        let scan_order = data.keys().map(|k| (scan_hash(k), k.clone())).collect();
        Keyspace { data, expires, scan_order }
    }
}

/// What the store did with the commands it was given, counted since it was created. Operators read
/// them in `INFO`; the simulator uses them to check exactly-once application against the real store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commands executed (that changed or read the data).
    pub executed: u64,
    /// Retries of a session's last request, answered from the session cache without executing.
    pub deduplicated: u64,
    /// Requests older than their session's last one, refused without executing.
    pub stale: u64,
    /// Log entries that were not decodable requests.
    pub malformed: u64,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new()
    }
}

/// The version of the store's snapshot image, its first byte: the image outlives the binary that wrote
/// it (in snapshot files, and sent to replicas of another release), so a layout change gets a new number
/// and an image of an unknown one is refused, never misread. Version 2 (typed values with versions)
/// is pinned by `tests/golden/kv-image-v2.bin`; version 1 images (strings only,
/// `tests/golden/kv-image-v1.bin`) are still read.
pub const KV_IMAGE_VERSION: u8 = 2;

/// Version 1 of the image (strings only): read, never written.
#[derive(Debug, Clone, Deserialize)]
struct ImageV1 {
    last_applied: u64,
    clock_ms: u64,
    #[serde(deserialize_with = "ordmap")]
    data: OrdMap<Bytes, ValueV1>,
    #[serde(deserialize_with = "ordmap")]
    sessions: OrdMap<u64, Session>,
}

/// A version 1 value: a string and its deadline.
#[derive(Debug, Clone, Deserialize)]
struct ValueV1 {
    data: Bytes,
    expire_at: Option<u64>,
}

/// The serialized form of a [`KvStore`], after the version byte: postcard of these fields in this order
/// (maps as a varint length and their pairs in key order). Field order is the byte order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageV2 {
    last_applied: u64,
    clock_ms: u64,
    #[serde(deserialize_with = "ordmap")]
    data: OrdMap<Bytes, Value>,
    #[serde(deserialize_with = "ordmap")]
    sessions: OrdMap<u64, Session>,
}

/// Reads a map entry by entry. imbl's own deserializer first reserves room for as many entries as the
/// image's count field claims, so an image with a forged count (it comes from a peer, or a disk) made
/// a node allocate gigabytes and abort (found by `fuzz/fuzz_targets/snapshot_restore.rs`); here the
/// map only grows with entries actually present.
fn ordmap<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Visitor<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de> + Ord + Clone, V: Deserialize<'de> + Clone> serde::de::Visitor<'de> for Visitor<K, V> {
        type Value = OrdMap<K, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<OrdMap<K, V>, A::Error> {
            let mut map = OrdMap::new();
            while let Some((k, v)) = access.next_entry()? {
                map.insert(k, v);
            }
            Ok(map)
        }
    }
    deserializer.deserialize_map(Visitor(std::marker::PhantomData))
}

/// Version 3 is version 2's fields, then the keys of every other database that holds any:
/// postcard of `(ImageV2, Vec<DbImage>)` (postcard frames neither structs nor tuples, so that is
/// version 2's bytes followed by the databases). Written only when another database holds keys,
/// so a store that uses database 0 alone keeps writing version 2, and a reader that knows only
/// version 2 refuses, never misreads, an image with other databases.
/// One database of a version 3 image.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DbImage {
    db: u8,
    #[serde(deserialize_with = "ordmap")]
    data: OrdMap<Bytes, Value>,
}

/// The version of an image that holds other databases than 0.
pub const KV_IMAGE_VERSION_DBS: u8 = 3;

/// A frozen view of a [`KvStore`] taken by [`StateMachine::snapshot`]: O(1) to take (the maps are shared
/// with the store, copy-on-write), encoded later with [`SnapshotImage::encode`], on any thread.
#[derive(Debug, Clone)]
pub struct KvSnapshot(ImageV2, Vec<DbImage>);

impl SnapshotImage for KvSnapshot {
    fn encode(&self) -> Vec<u8> {
        let out = if self.1.is_empty() {
            postcard::to_extend(&self.0, vec![KV_IMAGE_VERSION])
        } else {
            postcard::to_extend(&(&self.0, &self.1), vec![KV_IMAGE_VERSION_DBS])
        };
        out.expect("serializing into a Vec cannot fail")
    }
}

/// The hash that orders keys for `SCAN`: fixed (FNV-1a, then a 64-bit finaliser so that keys differing
/// only in their last bytes spread over the whole range), never 0 (cursor 0 means "start" and "done").
pub(super) fn scan_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h.max(1)
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
            data: OrdMap::new(),
            expires: BTreeSet::new(),
            scan_order: BTreeSet::new(),
            other_dbs: BTreeMap::new(),
            sessions: OrdMap::new(),
            lru: BTreeMap::new(),
            clock_ms: 0,
            last_applied: 0,
            max_sessions: max_sessions.max(1),
            stats: StoreStats::default(),
        }
    }

    /// The counters of what this store did with its commands.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// The index of the last applied command (0 if none).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// Every database that holds keys: `(db, keys, keys with a TTL)` (expired keys not yet reclaimed
    /// included).
    pub fn keyspace(&self) -> Vec<(u8, usize, usize)> {
        let first = (!self.data.is_empty()).then(|| (0, self.data.len(), self.expires.len()));
        first.into_iter().chain(self.other_dbs.iter().map(|(&db, ks)| (db, ks.data.len(), ks.expires.len()))).collect()
    }

    /// The number of sessions currently remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The encoded image of the complete replicated state (keys, values, TTLs, sessions, clock, last
    /// applied index), now: [`StateMachine::snapshot`] then [`SnapshotImage::encode`]. Deterministic:
    /// replicas that applied the same log produce identical bytes.
    pub fn image(&self) -> Bytes {
        Bytes::from(StateMachine::snapshot(self).encode())
    }

    /// Looks up a key as of the store's clock, deleting it if it has expired.
    pub(super) fn live(&mut self, key: &[u8]) -> Option<&Value> {
        let expired = !self.data.get(key)?.alive_at(self.clock_ms);
        if expired {
            self.remove(key);
            return None;
        }
        self.data.get(key)
    }

    /// The live value of `key` at the store's clock, mutably, or `None` (an expired key is deleted).
    /// A caller that changes it sets its `version` to the current index, and moves its deadline with
    /// [`KvStore::reindex_expiry`].
    pub(super) fn live_mut(&mut self, key: &[u8]) -> Option<&mut Value> {
        self.live(key)?;
        self.data.get_mut(key)
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let (key, old) = self.data.remove_with_key(key)?;
        if let Some(at) = old.expire_at {
            self.expires.remove(&(at, key.clone()));
        }
        self.scan_order.remove(&(scan_hash(&key), key));
        Some(old)
    }

    /// Stores `data` under `key` with deadline `expire_at`, as written now.
    pub(super) fn insert(&mut self, key: Bytes, data: Data, expire_at: Option<u64>) {
        let value = Value { data, expire_at, version: self.last_applied.max(1) };
        // One map lookup; the indexes change only when the key's expiry does or the key is new.
        match self.data.entry(key) {
            MapEntry::Occupied(mut slot) => {
                let old_at = std::mem::replace(slot.get_mut(), value).expire_at;
                if old_at != expire_at {
                    let key = slot.key().clone();
                    if let Some(at) = old_at {
                        self.expires.remove(&(at, key.clone()));
                    }
                    if let Some(at) = expire_at {
                        self.expires.insert((at, key));
                    }
                }
            }
            MapEntry::Vacant(slot) => {
                let key = slot.key().clone();
                slot.insert(value);
                if let Some(at) = expire_at {
                    self.expires.insert((at, key.clone()));
                }
                self.scan_order.insert((scan_hash(&key), key));
            }
        }
    }

    /// Moves `key`'s entry in the expiry index from `old` to `new` (after an in-place change).
    pub(super) fn reindex_expiry(&mut self, key: &Bytes, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.expires.remove(&(at, key.clone()));
        }
        if let Some(at) = new {
            self.expires.insert((at, key.clone()));
        }
    }

    /// Runs `f` with database `db` as the current one (its maps swapped into this store's fields).
    pub(super) fn with_db<R>(&mut self, db: u8, f: impl FnOnce(&mut KvStore) -> R) -> R {
        if db == 0 {
            return f(self);
        }
        let mut ks = self.other_dbs.remove(&db).unwrap_or_default();
        self.swap_keyspace(&mut ks);
        self.sweep_expired(EXPIRE_SWEEP_PER_APPLY);
        let result = f(self);
        self.swap_keyspace(&mut ks);
        if !ks.data.is_empty() {
            self.other_dbs.insert(db, ks);
        }
        result
    }

    fn swap_keyspace(&mut self, ks: &mut Keyspace) {
        std::mem::swap(&mut self.data, &mut ks.data);
        std::mem::swap(&mut self.expires, &mut ks.expires);
        std::mem::swap(&mut self.scan_order, &mut ks.scan_order);
    }

    /// Removes every key of every database.
    pub(super) fn clear_all(&mut self) {
        self.clear();
        self.other_dbs.clear();
    }

    /// Removes every key of the current database.
    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.expires.clear();
        self.scan_order.clear();
    }

    /// Removes up to `limit` expired keys (all of them if `limit` is `usize::MAX`).
    fn sweep_expired(&mut self, limit: usize) {
        for _ in 0..limit {
            match self.expires.first() {
                Some((at, _)) if self.clock_ms > *at => {
                    let (_, key) = self.expires.pop_first().expect("first() was Some");
                    self.data.remove(&key);
                    self.scan_order.remove(&(scan_hash(&key), key));
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

    /// Answers a request of a known session from its cache (a retry, or a stale request), or `None`
    /// for a new request. Either way the session counts as used for LRU purposes.
    fn cached(&mut self, index: u64, req: &KvRequest) -> Option<KvResult> {
        let session = self.sessions.get_mut(&req.session)?;
        if req.seq > session.last_seq {
            // A new request: `remember` moves the session in the LRU order once it has a result.
            return None;
        }
        self.lru.remove(&session.last_used);
        session.last_used = index;
        self.lru.insert(index, req.session);
        if req.seq == session.last_seq {
            return Some(session.last_reply.clone());
        }
        Some(KvResult::Error(KvError::StaleSequence))
    }

    /// Records the result of a session's new request and makes it the most recently used session.
    fn remember(&mut self, index: u64, (id, seq): (u64, u64), result: &KvResult) {
        match self.sessions.get_mut(&id) {
            Some(session) => {
                self.lru.remove(&session.last_used);
                *session = Session { last_seq: seq, last_reply: result.clone(), last_used: index };
            }
            None => {
                self.sessions.insert(id, Session { last_seq: seq, last_reply: result.clone(), last_used: index });
            }
        }
        self.lru.insert(index, id);
        self.evict_sessions();
    }

    /// Installs a decoded image (either version), rebuilding the derived indexes.
    fn install(&mut self, image: ImageV2) {
        self.expires = image.data.iter().filter_map(|(k, v)| v.expire_at.map(|at| (at, k.clone()))).collect();
        self.scan_order = image.data.keys().map(|k| (scan_hash(k), k.clone())).collect();
        self.lru = image.sessions.iter().map(|(&id, s)| (s.last_used, id)).collect();
        self.data = image.data;
        self.sessions = image.sessions;
        self.clock_ms = image.clock_ms;
        self.last_applied = image.last_applied;
        // A smaller configured bound than the snapshot's producer: evict down to it.
        self.evict_sessions();
    }
}

/// Decodes an image of any version this build reads.
fn decode_image(image: &[u8]) -> Result<(ImageV2, Vec<DbImage>), RestoreError> {
    let (&version, rest) = image.split_first().ok_or_else(|| RestoreError("empty image".into()))?;
    let bad = |e: postcard::Error| RestoreError(format!("raftkv image (version {version}): {e}"));
    match version {
        1 => {
            let v1: ImageV1 = postcard::from_bytes(rest).map_err(bad)?;
            // Every key of a version 1 image was written at or before its last applied index.
            let version = v1.last_applied.max(1);
            let data = v1
                .data
                .into_iter()
                .map(|(k, v)| (k, Value { data: Data::Str(v.data), expire_at: v.expire_at, version }))
                .collect();
            Ok((
                ImageV2 { last_applied: v1.last_applied, clock_ms: v1.clock_ms, data, sessions: v1.sessions },
                Vec::new(),
            ))
        }
        KV_IMAGE_VERSION => Ok((postcard::from_bytes(rest).map_err(bad)?, Vec::new())),
        KV_IMAGE_VERSION_DBS => {
            let (base, dbs): (ImageV2, Vec<DbImage>) = postcard::from_bytes(rest).map_err(bad)?;
            if dbs.iter().any(|d| d.db == 0 || d.db >= DATABASES) || !dbs.windows(2).all(|w| w[0].db < w[1].db) {
                return Err(RestoreError(format!("raftkv image (version {version}): bad database numbers")));
            }
            Ok((base, dbs))
        }
        _ => Err(RestoreError(format!(
            "raftkv image format version {version}, but this build reads only versions 1 to {KV_IMAGE_VERSION_DBS}"
        ))),
    }
}

impl StateMachine for KvStore {
    type Response = KvResult;
    type Snapshot = KvSnapshot;

    /// O(1): shares the store's trees (see [the module docs](self#snapshots-without-stalling-writes)).
    fn snapshot(&self) -> KvSnapshot {
        let dbs = self.other_dbs.iter().map(|(&db, ks)| DbImage { db, data: ks.data.clone() }).collect();
        KvSnapshot(
            ImageV2 {
                last_applied: self.last_applied,
                clock_ms: self.clock_ms,
                data: self.data.clone(),
                sessions: self.sessions.clone(),
            },
            dbs,
        )
    }

    /// Keeps this store's configuration (`max_sessions`, evicting down to it). On error the store is
    /// unchanged.
    fn restore(&mut self, image: &[u8]) -> Result<(), RestoreError> {
        let (image, dbs) = decode_image(image)?;
        self.install(image);
        self.other_dbs = dbs.into_iter().filter(|d| !d.data.is_empty()).map(|d| (d.db, Keyspace::of(d.data))).collect();
        Ok(())
    }

    /// Decodes a [`KvRequest`], applies it at most once per `(session, seq)`, and returns its result.
    /// Undecodable commands get [`KvError::MalformedCommand`] and change nothing but `last_applied`.
    fn apply(&mut self, index: u64, command: &[u8]) -> KvResult {
        debug_assert!(index > self.last_applied, "apply index {index} after {}", self.last_applied);
        self.last_applied = index;
        let Ok(req) = KvRequest::decode(command) else {
            self.stats.malformed += 1;
            return KvResult::Error(KvError::MalformedCommand);
        };
        self.clock_ms = self.clock_ms.max(req.now_ms);
        self.sweep_expired(EXPIRE_SWEEP_PER_APPLY);
        if req.session == 0 || req.seq == 0 {
            self.stats.executed += 1;
            return self.execute(req.op);
        }
        if let Some(result) = self.cached(index, &req) {
            match result {
                KvResult::Error(KvError::StaleSequence) => self.stats.stale += 1,
                _ => self.stats.deduplicated += 1,
            }
            return result;
        }
        self.stats.executed += 1;
        let ids = (req.session, req.seq);
        // The op moves into execute: no copy of its keys and values on the apply path.
        let result = self.execute(req.op);
        self.remember(index, ids, &result);
        result
    }
}

/// What the store answers to a [`KvOp`]: the store's own result type, free of any wire format (the
/// server encodes it as RESP; the simulator reads it directly). It is also what a session caches, so it
/// is part of the replicated state: only ever append variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// Done (`+OK`).
    Ok,
    /// No value: the key is absent, or a `SET` condition failed.
    Nil,
    /// A value.
    Value(Bytes),
    /// A number (a count, a length, a counter's new value).
    Integer(i64),
    /// One entry per key asked for, `None` where a key is absent (`MGET`).
    Values(Vec<Option<Bytes>>),
    /// The operation was refused; the state did not change.
    Error(KvError),
    // Added after version 1 (session caches hold results, so they are replicated state): append only.
    /// A type name (`TYPE`), a simple string on the wire; `None` is `none`.
    Type(Option<KeyType>),
    /// Field/value pairs (`HGETALL`): a map in RESP3, a flat array in RESP2.
    Pairs(Vec<(Bytes, Bytes)>),
    /// A `SCAN`/`HSCAN` page: the next cursor (0 when done) and the items.
    Scan {
        /// Where the next call goes on; 0 when the scan is complete.
        cursor: u64,
        /// Keys (`SCAN`) or field, value, field, value... (`HSCAN`).
        items: Vec<Bytes>,
    },
    /// The results of a transaction's ops, in order (`EXEC`).
    Multi(Vec<KvResult>),
    /// A transaction not run because a watched key changed (`EXEC` answers the null array).
    Aborted,
    /// Key versions (`WATCH`), one per key.
    Versions(Vec<u64>),
    /// What a script returned (`EVAL`), flattened (see [`super::script::ScriptItem`]).
    Script(Vec<super::script::ScriptItem>),
}

impl KvResult {
    /// Serializes the result (postcard) for a follower that forwarded the request.
    pub fn encode(&self) -> Bytes {
        encode_exact(self)
    }

    /// Inverse of [`KvResult::encode`].
    pub fn decode(bytes: &[u8]) -> Result<KvResult, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Why the store refused an operation. `Display` gives Redis' wording, which clients match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvError {
    /// `INCR` on a value that is not a 64-bit integer.
    NotAnInteger,
    /// `INCR` would overflow a 64-bit integer.
    IncrementOverflow,
    /// `SET ... EX/PX` with an expiry beyond what the clock can express.
    InvalidExpireTime,
    /// `APPEND` would build a value above [`MAX_STRING_BYTES`].
    StringTooLong,
    /// A request older than the session's last one: it was already applied, its reply is gone.
    StaleSequence,
    /// The log entry is not a [`KvRequest`] this version can decode.
    MalformedCommand,
    // Added after version 1: append only.
    /// The key holds another type than the command works on.
    WrongType,
    /// `INCRBYFLOAT` on a value that is not a number.
    NotAFloat,
    /// `INCRBYFLOAT` would produce NaN or an infinity.
    FloatOverflow,
    /// `RENAME` of an absent key.
    NoSuchKey,
    /// `HINCRBY` on a field that is not a 64-bit integer.
    HashNotAnInteger,
    /// `HINCRBYFLOAT` on a field that is not a number.
    HashNotAFloat,
    /// `EXPIRE` whose deadline overflows the clock.
    InvalidExpireTimeExpire,
    /// `GETEX` whose deadline overflows the clock.
    InvalidExpireTimeGetEx,
    /// A transaction inside a transaction (only a hostile or corrupt log entry can hold one).
    NestedExec,
    /// A database op naming a database that does not exist, or nested in another.
    BadDatabase,
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvError::NotAnInteger => "ERR value is not an integer or out of range",
            KvError::IncrementOverflow => "ERR increment or decrement would overflow",
            KvError::InvalidExpireTime => "ERR invalid expire time in 'set' command",
            KvError::StringTooLong => "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
            KvError::StaleSequence => STALE_SEQUENCE_ERROR,
            KvError::MalformedCommand => "ERR malformed command in log",
            KvError::WrongType => "WRONGTYPE Operation against a key holding the wrong kind of value",
            KvError::NotAFloat => "ERR value is not a valid float",
            KvError::FloatOverflow => "ERR increment would produce NaN or Infinity",
            KvError::NoSuchKey => "ERR no such key",
            KvError::HashNotAnInteger => "ERR hash value is not an integer",
            KvError::HashNotAFloat => "ERR hash value is not a float",
            KvError::InvalidExpireTimeExpire => "ERR invalid expire time in 'expire' command",
            KvError::InvalidExpireTimeGetEx => "ERR invalid expire time in 'getex' command",
            KvError::NestedExec => "ERR EXEC inside a transaction is not allowed",
            KvError::BadDatabase => "ERR DB index is out of range",
        })
    }
}

impl std::error::Error for KvError {}
