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

use super::int::parse_i64;
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
}

impl KvOp {
    /// Whether the op only reads: such ops carry no session (applying a read twice is harmless, and
    /// the session table then does not cache possibly large read results).
    pub fn is_read_only(&self) -> bool {
        matches!(self, KvOp::Get { .. } | KvOp::Exists { .. } | KvOp::Strlen { .. } | KvOp::MGet { .. } | KvOp::DbSize)
    }
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
    /// The result of `last_seq`, returned again if that request is retried.
    last_reply: KvResult,
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
    data: OrdMap<Bytes, Value>,
    /// `(expire_at, key)` for every key with a TTL, ordered by expiry for the eager sweep. Derived from
    /// `data`, so not part of the snapshot.
    expires: BTreeSet<(u64, Bytes)>,
    sessions: OrdMap<u64, Session>,
    /// `last_used -> session id`, to find the least recently used session. Derived from `sessions`.
    lru: BTreeMap<u64, u64>,
    /// The state machine's clock: the largest `now_ms` applied so far. Taking the maximum keeps time
    /// monotonic when leadership moves to a node whose clock is behind, so a key that has expired never
    /// comes back to life.
    clock_ms: u64,
    last_applied: u64,
    /// Configuration, not state: every replica must use the same value.
    max_sessions: usize,
    /// Counters since this store was created (not replicated state, not in the snapshot).
    stats: StoreStats,
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
/// and an image of an unknown one is refused, never misread. Pinned by `tests/golden/kv-image-v1.bin`.
pub const KV_IMAGE_VERSION: u8 = 1;

/// The serialized form of a [`KvStore`], after the version byte: postcard of these fields in this order
/// (maps as a varint length and their pairs in key order). Field order is the byte order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageV1 {
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

/// A frozen view of a [`KvStore`] taken by [`StateMachine::snapshot`]: O(1) to take (the maps are shared
/// with the store, copy-on-write), encoded later with [`SnapshotImage::encode`], on any thread.
#[derive(Debug, Clone)]
pub struct KvSnapshot(ImageV1);

impl SnapshotImage for KvSnapshot {
    fn encode(&self) -> Vec<u8> {
        postcard::to_extend(&self.0, vec![KV_IMAGE_VERSION]).expect("serializing into a Vec cannot fail")
    }
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
    fn live(&mut self, key: &[u8]) -> Option<&Value> {
        let expired = self.data.get(key)?.expire_at.is_some_and(|at| self.clock_ms > at);
        if expired {
            self.remove(key);
            return None;
        }
        self.data.get(key)
    }

    fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let (key, old) = self.data.remove_with_key(key)?;
        if let Some(at) = old.expire_at {
            self.expires.remove(&(at, key));
        }
        Some(old)
    }

    fn insert(&mut self, key: Bytes, value: Value) {
        // One map lookup; the expiry index changes only when the key's expiry does.
        let new_at = value.expire_at;
        match self.data.entry(key) {
            MapEntry::Occupied(mut slot) => {
                let old_at = std::mem::replace(slot.get_mut(), value).expire_at;
                if old_at != new_at {
                    let key = slot.key().clone();
                    if let Some(at) = old_at {
                        self.expires.remove(&(at, key.clone()));
                    }
                    if let Some(at) = new_at {
                        self.expires.insert((at, key));
                    }
                }
            }
            MapEntry::Vacant(slot) => {
                if let Some(at) = new_at {
                    self.expires.insert((at, slot.key().clone()));
                }
                slot.insert(value);
            }
        }
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

    /// Answers a read-only op from the current state without changing it: what a linearizable read
    /// served by ReadIndex runs once this replica has applied the read index (no log entry, no apply).
    /// `None` for an op that writes.
    ///
    /// `now_ms` is the reader's clock: a key whose TTL has passed by then reads as absent even though
    /// no write has yet moved the store's own clock (which only advances with applied entries, so an
    /// idle cluster would otherwise serve expired keys forever). The store's clock still wins when it
    /// is ahead, so a key never reads as alive after a write saw it expire.
    pub fn query(&self, op: &KvOp, now_ms: u64) -> Option<KvResult> {
        let now = self.clock_ms.max(now_ms);
        let live = |key: &[u8]| self.data.get(key).filter(|v| v.expire_at.is_none_or(|at| now <= at));
        Some(match op {
            KvOp::Get { key } => live(key).map_or(KvResult::Nil, |v| KvResult::Value(v.data.clone())),
            KvOp::Exists { keys } => KvResult::Integer(keys.iter().filter(|k| live(k).is_some()).count() as i64),
            KvOp::Strlen { key } => KvResult::Integer(live(key).map_or(0, |v| v.data.len() as i64)),
            KvOp::MGet { keys } => KvResult::Values(keys.iter().map(|k| live(k).map(|v| v.data.clone())).collect()),
            KvOp::DbSize => {
                let expired = self.expires.iter().take_while(|(at, _)| now > *at).count();
                KvResult::Integer((self.data.len() - expired) as i64)
            }
            KvOp::Set { .. }
            | KvOp::Del { .. }
            | KvOp::IncrBy { .. }
            | KvOp::Append { .. }
            | KvOp::MSet { .. }
            | KvOp::FlushAll => return None,
        })
    }

    /// Executes one operation at the current clock.
    fn execute(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Set { key, value, condition, expiry, get } => self.set(key, value, condition, expiry, get),
            KvOp::Get { key } => self.live(&key).map_or(KvResult::Nil, |v| KvResult::Value(v.data.clone())),
            KvOp::Del { keys } => {
                let removed = keys.iter().filter(|key| self.live(key).is_some() && self.remove(key).is_some()).count();
                KvResult::Integer(removed as i64)
            }
            KvOp::Exists { keys } => KvResult::Integer(keys.iter().filter(|k| self.live(k).is_some()).count() as i64),
            KvOp::IncrBy { key, delta } => self.incr_by(key, delta),
            KvOp::Append { key, value } => self.append(key, &value),
            KvOp::Strlen { key } => KvResult::Integer(self.live(&key).map_or(0, |v| v.data.len() as i64)),
            KvOp::MSet { pairs } => {
                for (key, value) in pairs {
                    self.insert(key, Value { data: value, expire_at: None });
                }
                KvResult::Ok
            }
            KvOp::MGet { keys } => {
                KvResult::Values(keys.iter().map(|k| self.live(k).map(|v| v.data.clone())).collect())
            }
            KvOp::DbSize => {
                // Reclaim every expired key so the count is exact (each key is reclaimed once, so this is
                // amortised over the SETs that created them).
                self.sweep_expired(usize::MAX);
                KvResult::Integer(self.data.len() as i64)
            }
            KvOp::FlushAll => {
                self.data.clear();
                self.expires.clear();
                KvResult::Ok
            }
        }
    }

    /// `SET` with its condition, expiry and `GET` options.
    fn set(&mut self, key: Bytes, value: Bytes, condition: SetCondition, expiry: SetExpiry, get: bool) -> KvResult {
        let now = self.clock_ms;
        // The old value's data is copied out only when `GET` asks for it.
        let (exists, old_expire_at, old_data) = match self.live(&key) {
            Some(v) => (true, v.expire_at, get.then(|| v.data.clone())),
            None => (false, None, None),
        };
        // Redis validates the expiry before looking at NX/XX, so an invalid one is always an error.
        let expire_at = match expiry {
            SetExpiry::Clear => None,
            SetExpiry::Keep => old_expire_at,
            SetExpiry::AtMs(at) => Some(at),
            SetExpiry::AfterMs(ms) => match now.checked_add(ms) {
                Some(at) if at <= i64::MAX as u64 => Some(at),
                _ => return KvResult::Error(KvError::InvalidExpireTime),
            },
        };
        let old_result = || old_data.map_or(KvResult::Nil, KvResult::Value);
        let proceed = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => !exists,
            SetCondition::IfPresent => exists,
        };
        if !proceed {
            return if get { old_result() } else { KvResult::Nil };
        }
        if expire_at.is_some_and(|at| at <= now) {
            // An expiry already in the past deletes the key, as in Redis.
            self.remove(&key);
        } else {
            self.insert(key, Value { data: value, expire_at });
        }
        if get { old_result() } else { KvResult::Ok }
    }

    /// `INCRBY` (and `INCR`, `DECR`, `DECRBY`): keeps the TTL.
    fn incr_by(&mut self, key: Bytes, delta: i64) -> KvResult {
        let (current, expire_at) = match self.live(&key) {
            None => (0, None),
            Some(v) => match parse_i64(&v.data) {
                Some(n) => (n, v.expire_at),
                None => return KvResult::Error(KvError::NotAnInteger),
            },
        };
        let Some(new) = current.checked_add(delta) else {
            return KvResult::Error(KvError::IncrementOverflow);
        };
        self.insert(key, Value { data: Bytes::from(new.to_string()), expire_at });
        KvResult::Integer(new)
    }

    /// `APPEND`: keeps the TTL; refuses to grow a value beyond [`MAX_STRING_BYTES`].
    fn append(&mut self, key: Bytes, value: &[u8]) -> KvResult {
        let (mut data, expire_at) = match self.live(&key) {
            None => (Vec::new(), None),
            Some(v) => (v.data.to_vec(), v.expire_at),
        };
        if data.len() + value.len() > MAX_STRING_BYTES {
            return KvResult::Error(KvError::StringTooLong);
        }
        data.extend_from_slice(value);
        let len = data.len() as i64;
        self.insert(key, Value { data: Bytes::from(data), expire_at });
        KvResult::Integer(len)
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
}

impl StateMachine for KvStore {
    type Response = KvResult;
    type Snapshot = KvSnapshot;

    /// O(1): shares the store's trees (see [the module docs](self#snapshots-without-stalling-writes)).
    fn snapshot(&self) -> KvSnapshot {
        KvSnapshot(ImageV1 {
            last_applied: self.last_applied,
            clock_ms: self.clock_ms,
            data: self.data.clone(),
            sessions: self.sessions.clone(),
        })
    }

    /// Keeps this store's configuration (`max_sessions`, evicting down to it). On error the store is
    /// unchanged.
    fn restore(&mut self, image: &[u8]) -> Result<(), RestoreError> {
        let (&version, rest) = image.split_first().ok_or_else(|| RestoreError("empty image".into()))?;
        if version != KV_IMAGE_VERSION {
            return Err(RestoreError(format!(
                "raftkv image format version {version}, but this build reads only version {KV_IMAGE_VERSION}"
            )));
        }
        let image: ImageV1 = postcard::from_bytes(rest).map_err(|e| RestoreError(format!("raftkv image: {e}")))?;
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
        })
    }
}

impl std::error::Error for KvError {}
