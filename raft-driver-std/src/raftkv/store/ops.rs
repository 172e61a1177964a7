//! What each [`KvOp`] does: reads in one place ([`KvStore::read`], shared by the log path and by
//! ReadIndex/lease reads through [`KvStore::query`], so the two can never answer differently), writes
//! in [`KvStore::execute`].
//!
//! Time is the store's clock (the largest `now_ms` of any applied entry) for everything that changes
//! state; reads outside the log may use a later reader's clock so an idle cluster does not serve keys
//! past their deadline. Replies and errors follow Redis 7.

use bytes::Bytes;
use imbl::OrdMap;

use super::pattern::glob_match;
use super::{
    Data, ExpireCondition, KeyType, KvError, KvOp, KvResult, KvStore, MAX_STRING_BYTES, SetCondition, SetExpiry,
    scan_hash,
};
use crate::raftkv::int::parse_i64;

/// Keys a `SCAN` step looks at when the client gives no `COUNT` (Redis' default).
pub const DEFAULT_SCAN_COUNT: u32 = 10;

/// Parses a float the way Redis' `INCRBYFLOAT` accepts one: decimal or exponent notation, no
/// surrounding space, not NaN.
pub fn parse_float(text: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(text).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// A float as Redis prints the result of `INCRBYFLOAT`: plain decimal, shortest exact form, no
/// exponent (`10.5`, `3`, `0.30000000000000004`).
fn format_float(v: f64) -> Bytes {
    Bytes::from(format!("{v}"))
}

/// `start..=end` of a `len`-byte string with Redis' negative-index and clamping rules, or `None` if
/// the range is empty.
fn byte_range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    let len = len as i64;
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (fix(start), fix(end).min(len - 1));
    (len > 0 && start <= end).then_some((start as usize, end as usize))
}

impl KvStore {
    /// Answers a read-only op from the current state without changing it: what a linearizable read
    /// served by ReadIndex runs once this replica has applied the read index (no log entry, no apply).
    /// `None` for an op that writes.
    ///
    /// `now_ms` is the reader's clock: a key whose TTL has passed by then reads as absent even though
    /// no write has yet moved the store's own clock (which only advances with applied entries, so an
    /// idle cluster would otherwise serve expired keys forever). The store's clock still wins when it
    /// is ahead, so a key never reads as alive after a write saw it expire.
    pub fn query(&self, op: &KvOp, now_ms: u64) -> Option<KvResult> {
        self.read(op, self.clock_ms.max(now_ms))
    }

    /// [`query`](Self::query) in database `db` (0 to 15; a database that holds no keys reads as
    /// empty), so that reads after `SELECT` need no log entry either.
    pub fn query_in(&self, db: u8, op: &KvOp, now_ms: u64) -> Option<KvResult> {
        let now = self.clock_ms.max(now_ms);
        if db == 0 {
            return self.read(op, now);
        }
        let empty = super::Keyspace::default();
        let ks = self.other_dbs.get(&db).unwrap_or(&empty);
        View { data: &ks.data, expires: &ks.expires, scan_order: &ks.scan_order, last_applied: self.last_applied }
            .read(op, now)
    }

    /// The current database as reads see it.
    fn view(&self) -> View<'_> {
        View { data: &self.data, expires: &self.expires, scan_order: &self.scan_order, last_applied: self.last_applied }
    }

    /// Every read-only op, at time `now`, in the current database.
    fn read(&self, op: &KvOp, now: u64) -> Option<KvResult> {
        self.view().read(op, now)
    }
}

/// One database's maps as reads see them (the current one, or another for [`KvStore::query_in`]),
/// and the applied index (`RANDOMKEY`'s seed).
struct View<'a> {
    data: &'a imbl::OrdMap<Bytes, super::Value>,
    expires: &'a std::collections::BTreeSet<(u64, Bytes)>,
    scan_order: &'a std::collections::BTreeSet<(u64, Bytes)>,
    last_applied: u64,
}

impl View<'_> {
    /// The one implementation of every read-only op, at time `now`.
    fn read(&self, op: &KvOp, now: u64) -> Option<KvResult> {
        let live = |key: &[u8]| self.data.get(key).filter(|v| v.alive_at(now));
        let string = |key: &[u8]| match live(key) {
            None => Ok(None),
            Some(v) => match &v.data {
                Data::Str(s) => Ok(Some(s)),
                _ => Err(KvError::WrongType),
            },
        };
        let hash = |key: &[u8]| match live(key) {
            None => Ok(None),
            Some(v) => match &v.data {
                Data::Hash(h) => Ok(Some(h)),
                _ => Err(KvError::WrongType),
            },
        };
        let result = |r: Result<KvResult, KvError>| r.unwrap_or_else(KvResult::Error);
        Some(match op {
            KvOp::Get { key } => result(string(key).map(|v| v.map_or(KvResult::Nil, |v| KvResult::Value(v.clone())))),
            KvOp::Exists { keys } => KvResult::Integer(keys.iter().filter(|k| live(k).is_some()).count() as i64),
            KvOp::Strlen { key } => result(string(key).map(|v| KvResult::Integer(v.map_or(0, |v| v.len() as i64)))),
            KvOp::MGet { keys } => KvResult::Values(
                keys.iter()
                    .map(|k| match live(k).map(|v| &v.data) {
                        Some(Data::Str(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            KvOp::DbSize => {
                let expired = self.expires.iter().take_while(|(at, _)| now > *at).count();
                KvResult::Integer((self.data.len() - expired) as i64)
            }
            KvOp::GetRange { key, start, end } => result(string(key).map(|v| {
                let v = v.cloned().unwrap_or_default();
                KvResult::Value(byte_range(v.len(), *start, *end).map_or_else(Bytes::new, |(a, b)| v.slice(a..=b)))
            })),
            KvOp::Ttl { key, millis, absolute } => KvResult::Integer(match live(key) {
                None => -2,
                Some(v) => match v.expire_at {
                    None => -1,
                    Some(at) => {
                        let ms = if *absolute { at } else { at - now };
                        let ms = ms as i64;
                        match (*millis, *absolute) {
                            (true, _) => ms,
                            (false, true) => ms / 1000,
                            // TTL rounds to the nearest second, as Redis does.
                            (false, false) => (ms + 500) / 1000,
                        }
                    }
                },
            }),
            KvOp::Type { key } => KvResult::Type(live(key).map(|v| v.data.kind())),
            KvOp::Keys { pattern } => KvResult::Values(
                self.data
                    .iter()
                    .filter(|(k, v)| v.alive_at(now) && glob_match(pattern, k))
                    .map(|(k, _)| Some(k.clone()))
                    .collect(),
            ),
            KvOp::RandomKey => self.random_key(now),
            KvOp::Versions { keys } => {
                KvResult::Versions(keys.iter().map(|k| live(k).map_or(0, |v| v.version)).collect())
            }
            KvOp::HGet { key, field } => result(
                hash(key).map(|h| h.and_then(|h| h.get(field)).map_or(KvResult::Nil, |v| KvResult::Value(v.clone()))),
            ),
            KvOp::HMGet { key, fields } => result(
                hash(key).map(|h| KvResult::Values(fields.iter().map(|f| h.and_then(|h| h.get(f)).cloned()).collect())),
            ),
            KvOp::HGetAll { key } => result(hash(key).map(|h| {
                KvResult::Pairs(h.map_or_else(Vec::new, |h| h.iter().map(|(f, v)| (f.clone(), v.clone())).collect()))
            })),
            KvOp::HLen { key } => result(hash(key).map(|h| KvResult::Integer(h.map_or(0, |h| h.len() as i64)))),
            KvOp::HExists { key, field } => {
                result(hash(key).map(|h| KvResult::Integer(h.is_some_and(|h| h.contains_key(field)).into())))
            }
            KvOp::HKeys { key } => result(
                hash(key).map(|h| KvResult::Values(h.map_or_else(Vec::new, |h| h.keys().cloned().map(Some).collect()))),
            ),
            KvOp::HVals { key } => result(
                hash(key)
                    .map(|h| KvResult::Values(h.map_or_else(Vec::new, |h| h.values().cloned().map(Some).collect()))),
            ),
            KvOp::HStrlen { key, field } => {
                result(hash(key).map(|h| KvResult::Integer(h.and_then(|h| h.get(field)).map_or(0, |v| v.len() as i64))))
            }
            KvOp::Scan { cursor, pattern, count, kind } => self.scan(now, *cursor, pattern.as_deref(), *count, *kind),
            KvOp::HScan { key, cursor: _, pattern, count: _ } => result(hash(key).map(|h| {
                // One page holds the whole hash (Redis does the same for small hashes): the cursor
                // contract holds trivially and the reply is bounded by the hash, itself bounded by
                // the log entries that built it.
                let mut items = Vec::new();
                for (f, v) in h.into_iter().flatten() {
                    if pattern.as_ref().is_none_or(|p| glob_match(p, f)) {
                        items.push(f.clone());
                        items.push(v.clone());
                    }
                }
                KvResult::Scan { cursor: 0, items }
            })),
            KvOp::Set { .. }
            | KvOp::Del { .. }
            | KvOp::IncrBy { .. }
            | KvOp::Append { .. }
            | KvOp::MSet { .. }
            | KvOp::FlushAll
            | KvOp::SetNx { .. }
            | KvOp::GetDel { .. }
            | KvOp::GetEx { .. }
            | KvOp::SetRange { .. }
            | KvOp::IncrByFloat { .. }
            | KvOp::MSetNx { .. }
            | KvOp::Expire { .. }
            | KvOp::Persist { .. }
            | KvOp::Rename { .. }
            | KvOp::Exec { .. }
            | KvOp::HSet { .. }
            | KvOp::HSetNx { .. }
            | KvOp::HDel { .. }
            | KvOp::HIncrBy { .. }
            | KvOp::HIncrByFloat { .. }
            | KvOp::InDb { .. }
            | KvOp::Eval { .. }
            | KvOp::FlushDb => return None,
        })
    }

    /// One `SCAN` step: keys in `scan_hash` order from `cursor`, about `count` of them (never splitting
    /// keys of equal hash across pages, so the next cursor, the hash where the page stopped, loses none).
    fn scan(&self, now: u64, cursor: u64, pattern: Option<&[u8]>, count: u32, kind: Option<KeyType>) -> KvResult {
        let mut items = Vec::new();
        let mut last_hash = None;
        let start = (cursor, Bytes::new());
        for (looked, (h, key)) in self.scan_order.range(start..).enumerate() {
            if looked >= count.max(1) as usize && last_hash != Some(*h) {
                return KvResult::Scan { cursor: *h, items };
            }
            last_hash = Some(*h);
            let Some(v) = self.data.get(key).filter(|v| v.alive_at(now)) else { continue };
            if pattern.is_some_and(|p| !glob_match(p, key)) || kind.is_some_and(|t| v.data.kind() != t) {
                continue;
            }
            items.push(key.clone());
        }
        KvResult::Scan { cursor: 0, items }
    }

    /// `RANDOMKEY`: the first live key at or after a point derived from `now` and the applied index in
    /// `SCAN` order (deterministic in the log, spread over the key space).
    fn random_key(&self, now: u64) -> KvResult {
        let probe = scan_hash(&(now ^ self.last_applied.rotate_left(32)).to_le_bytes());
        let after = self.scan_order.range((probe, Bytes::new())..);
        for (_, key) in after.chain(self.scan_order.iter()).take(self.scan_order.len()) {
            if self.data.get(key).is_some_and(|v| v.alive_at(now)) {
                return KvResult::Value(key.clone());
            }
        }
        KvResult::Nil
    }
}

impl KvStore {
    /// Executes one operation at the current clock.
    pub(in crate::raftkv) fn execute(&mut self, op: KvOp) -> KvResult {
        if op.is_read_only() {
            return self.read(&op, self.clock_ms).expect("read-only ops are answered by read");
        }
        self.write(op).unwrap_or_else(KvResult::Error)
    }

    fn write(&mut self, op: KvOp) -> Result<KvResult, KvError> {
        Ok(match op {
            KvOp::Set { key, value, condition, expiry, get } => self.set(key, value, condition, expiry, get)?,
            KvOp::Del { keys } => {
                let removed = keys.iter().filter(|key| self.live(key).is_some() && self.remove(key).is_some()).count();
                KvResult::Integer(removed as i64)
            }
            KvOp::IncrBy { key, delta } => self.incr_by(key, delta)?,
            KvOp::Append { key, value } => self.append(key, &value)?,
            KvOp::MSet { pairs } => {
                for (key, value) in pairs {
                    self.insert(key, Data::Str(value), None);
                }
                KvResult::Ok
            }
            KvOp::FlushAll => {
                self.clear_all();
                KvResult::Ok
            }
            KvOp::FlushDb => {
                self.clear();
                KvResult::Ok
            }
            KvOp::InDb { db, op } => match postcard::from_bytes::<KvOp>(&op) {
                Ok(KvOp::InDb { .. }) => return Err(KvError::BadDatabase),
                _ if db == 0 || db >= super::DATABASES => return Err(KvError::BadDatabase),
                Ok(op) => self.with_db(db, |kv| kv.execute(op)),
                Err(_) => return Err(KvError::MalformedCommand),
            },
            KvOp::SetNx { key, value } => {
                if self.live(&key).is_some() {
                    KvResult::Integer(0)
                } else {
                    self.insert(key, Data::Str(value), None);
                    KvResult::Integer(1)
                }
            }
            KvOp::GetDel { key } => {
                let old = self.string(&key)?.cloned();
                if old.is_some() {
                    self.remove(&key);
                }
                old.map_or(KvResult::Nil, KvResult::Value)
            }
            KvOp::GetEx { key, expiry } => self.get_ex(key, expiry)?,
            KvOp::SetRange { key, offset, value } => self.set_range(key, offset, &value)?,
            KvOp::IncrByFloat { key, delta } => {
                let delta = parse_float(&delta).ok_or(KvError::NotAFloat)?;
                let (current, expire_at) = match self.string(&key)? {
                    None => (0.0, None),
                    Some(v) => (parse_float(v).ok_or(KvError::NotAFloat)?, self.data[&key].expire_at),
                };
                let new = current + delta;
                if !new.is_finite() {
                    return Err(KvError::FloatOverflow);
                }
                let text = format_float(new);
                self.insert(key, Data::Str(text.clone()), expire_at);
                KvResult::Value(text)
            }
            KvOp::MSetNx { pairs } => {
                if pairs.iter().any(|(k, _)| self.live(k).is_some()) {
                    KvResult::Integer(0)
                } else {
                    for (key, value) in pairs {
                        self.insert(key, Data::Str(value), None);
                    }
                    KvResult::Integer(1)
                }
            }
            KvOp::Expire { key, at, condition } => self.expire(key, at, condition)?,
            KvOp::Persist { key } => {
                let version = self.last_applied;
                let Some(v) = self.live_mut(&key) else { return Ok(KvResult::Integer(0)) };
                let Some(old) = v.expire_at.take() else { return Ok(KvResult::Integer(0)) };
                v.version = version;
                self.reindex_expiry(&key, Some(old), None);
                KvResult::Integer(1)
            }
            KvOp::Rename { from, to, nx } => {
                if self.live(&from).is_none() {
                    return Err(KvError::NoSuchKey);
                }
                if nx && self.live(&to).is_some() {
                    return Ok(KvResult::Integer(0));
                }
                if from != to {
                    let v = self.remove(&from).expect("checked live above");
                    self.insert(to, v.data, v.expire_at);
                }
                if nx { KvResult::Integer(1) } else { KvResult::Ok }
            }
            KvOp::Exec { watched, ops } => self.exec(&watched, ops),
            KvOp::Eval { script, keys, args, read_only } => {
                super::super::script::run(self, &script, keys, args, read_only)
            }
            KvOp::HSet { key, pairs, ok_reply } => {
                let mut added = 0;
                self.hash_mut(key, |h| {
                    for (f, v) in pairs {
                        added += i64::from(h.insert(f, v).is_none());
                    }
                    Ok(())
                })?;
                if ok_reply { KvResult::Ok } else { KvResult::Integer(added) }
            }
            KvOp::HSetNx { key, field, value } => {
                if self.hash(&key)?.is_some_and(|h| h.contains_key(&field)) {
                    return Ok(KvResult::Integer(0));
                }
                self.hash_mut(key, |h| {
                    h.insert(field, value);
                    Ok(())
                })?;
                KvResult::Integer(1)
            }
            KvOp::HDel { key, fields } => {
                if self.hash(&key)?.is_none() {
                    return Ok(KvResult::Integer(0));
                }
                let version = self.last_applied;
                let v = self.live_mut(&key).expect("checked live above");
                let Data::Hash(h) = &mut v.data else { unreachable!("checked the type above") };
                let removed = fields.iter().filter(|f| h.remove(*f).is_some()).count();
                let empty = h.is_empty();
                if removed > 0 {
                    v.version = version;
                }
                if empty {
                    self.remove(&key);
                }
                KvResult::Integer(removed as i64)
            }
            KvOp::HIncrBy { key, field, delta } => {
                let mut new = 0;
                self.hash_mut(key, |h| {
                    let current = match h.get(&field) {
                        None => 0,
                        Some(v) => parse_i64(v).ok_or(KvError::HashNotAnInteger)?,
                    };
                    new = current.checked_add(delta).ok_or(KvError::IncrementOverflow)?;
                    h.insert(field, Bytes::from(new.to_string()));
                    Ok(())
                })?;
                KvResult::Integer(new)
            }
            KvOp::HIncrByFloat { key, field, delta } => {
                let delta = parse_float(&delta).ok_or(KvError::NotAFloat)?;
                let mut text = Bytes::new();
                self.hash_mut(key, |h| {
                    let current = match h.get(&field) {
                        None => 0.0,
                        Some(v) => parse_float(v).ok_or(KvError::HashNotAFloat)?,
                    };
                    let new = current + delta;
                    if !new.is_finite() {
                        return Err(KvError::FloatOverflow);
                    }
                    text = format_float(new);
                    h.insert(field, text.clone());
                    Ok(())
                })?;
                KvResult::Value(text)
            }
            read => unreachable!("read-only op {read:?} reached write"),
        })
    }

    /// The live string at `key` (`None` if absent), or `WrongType`.
    fn string(&mut self, key: &[u8]) -> Result<Option<&Bytes>, KvError> {
        match self.live(key).map(|v| &v.data) {
            None => Ok(None),
            Some(Data::Str(s)) => Ok(Some(s)),
            Some(_) => Err(KvError::WrongType),
        }
    }

    /// The live hash at `key` (`None` if absent), or `WrongType`.
    fn hash(&mut self, key: &[u8]) -> Result<Option<&OrdMap<Bytes, Bytes>>, KvError> {
        match self.live(key).map(|v| &v.data) {
            None => Ok(None),
            Some(Data::Hash(h)) => Ok(Some(h)),
            Some(_) => Err(KvError::WrongType),
        }
    }

    /// Runs `change` on the hash at `key`, created empty if absent (and dropped again if `change` fails
    /// or leaves it empty). A failed `change` leaves the store as it was: it runs on a copy (O(1): the
    /// map is persistent) that replaces the original only on success.
    fn hash_mut(
        &mut self,
        key: Bytes,
        change: impl FnOnce(&mut OrdMap<Bytes, Bytes>) -> Result<(), KvError>,
    ) -> Result<(), KvError> {
        let (mut h, expire_at) = match self.live(&key) {
            None => (OrdMap::new(), None),
            Some(v) => match &v.data {
                Data::Hash(h) => (h.clone(), v.expire_at),
                _ => return Err(KvError::WrongType),
            },
        };
        change(&mut h)?;
        if h.is_empty() {
            self.remove(&key);
        } else {
            self.insert(key, Data::Hash(h), expire_at);
        }
        Ok(())
    }

    /// The deadline `expiry` sets, as of the store's clock (`Err` if it overflows).
    fn deadline(&self, expiry: SetExpiry, keep: Option<u64>, overflow: KvError) -> Result<Option<u64>, KvError> {
        Ok(match expiry {
            SetExpiry::Clear => None,
            SetExpiry::Keep => keep,
            SetExpiry::AtMs(at) => Some(at),
            SetExpiry::AfterMs(ms) => match self.clock_ms.checked_add(ms) {
                Some(at) if at <= i64::MAX as u64 => Some(at),
                _ => return Err(overflow),
            },
        })
    }

    /// `SET` with its condition, expiry and `GET` options.
    fn set(
        &mut self,
        key: Bytes,
        value: Bytes,
        condition: SetCondition,
        expiry: SetExpiry,
        get: bool,
    ) -> Result<KvResult, KvError> {
        let now = self.clock_ms;
        // The old value's data is copied out only when `GET` asks for it (`GET` on another type is
        // an error, as in Redis; a plain `SET` overwrites any type).
        let (exists, old_expire_at, old_data) = match self.live(&key) {
            Some(v) => match (&v.data, get) {
                (Data::Str(s), true) => (true, v.expire_at, Some(s.clone())),
                (_, true) => return Err(KvError::WrongType),
                (_, false) => (true, v.expire_at, None),
            },
            None => (false, None, None),
        };
        // Redis validates the expiry before looking at NX/XX, so an invalid one is always an error.
        let expire_at = self.deadline(expiry, old_expire_at, KvError::InvalidExpireTime)?;
        let old_result = || old_data.map_or(KvResult::Nil, KvResult::Value);
        let proceed = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => !exists,
            SetCondition::IfPresent => exists,
        };
        if !proceed {
            return Ok(if get { old_result() } else { KvResult::Nil });
        }
        if expire_at.is_some_and(|at| at <= now) {
            // An expiry already in the past deletes the key, as in Redis.
            self.remove(&key);
        } else {
            self.insert(key, Data::Str(value), expire_at);
        }
        Ok(if get { old_result() } else { KvResult::Ok })
    }

    /// `INCRBY` (and `INCR`, `DECR`, `DECRBY`): keeps the TTL.
    fn incr_by(&mut self, key: Bytes, delta: i64) -> Result<KvResult, KvError> {
        let (current, expire_at) = match self.string(&key)? {
            None => (0, None),
            Some(v) => (parse_i64(v).ok_or(KvError::NotAnInteger)?, self.data[&key].expire_at),
        };
        let new = current.checked_add(delta).ok_or(KvError::IncrementOverflow)?;
        self.insert(key, Data::Str(Bytes::from(new.to_string())), expire_at);
        Ok(KvResult::Integer(new))
    }

    /// `APPEND`: keeps the TTL; refuses to grow a value beyond [`MAX_STRING_BYTES`].
    fn append(&mut self, key: Bytes, value: &[u8]) -> Result<KvResult, KvError> {
        let (mut data, expire_at) = match self.string(&key)? {
            None => (Vec::new(), None),
            Some(v) => (v.to_vec(), self.data[&key].expire_at),
        };
        if data.len() + value.len() > MAX_STRING_BYTES {
            return Err(KvError::StringTooLong);
        }
        data.extend_from_slice(value);
        let len = data.len() as i64;
        self.insert(key, Data::Str(Bytes::from(data)), expire_at);
        Ok(KvResult::Integer(len))
    }

    /// `SETRANGE`: zero-pads up to `offset`; keeps the TTL. Writing nothing creates nothing.
    fn set_range(&mut self, key: Bytes, offset: u64, value: &[u8]) -> Result<KvResult, KvError> {
        let (mut data, expire_at) = match self.string(&key)? {
            None if value.is_empty() => return Ok(KvResult::Integer(0)),
            None => (Vec::new(), None),
            Some(v) if value.is_empty() => return Ok(KvResult::Integer(v.len() as i64)),
            Some(v) => (v.to_vec(), self.data[&key].expire_at),
        };
        let end = offset.checked_add(value.len() as u64).filter(|&e| e <= MAX_STRING_BYTES as u64);
        let Some(end) = end else { return Err(KvError::StringTooLong) };
        let (offset, end) = (offset as usize, end as usize);
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset..end].copy_from_slice(value);
        let len = data.len() as i64;
        self.insert(key, Data::Str(Bytes::from(data)), expire_at);
        Ok(KvResult::Integer(len))
    }

    /// `GETEX`: the value, and a new TTL if one is given (a deadline already past deletes the key).
    fn get_ex(&mut self, key: Bytes, expiry: Option<SetExpiry>) -> Result<KvResult, KvError> {
        let Some(value) = self.string(&key)?.cloned() else { return Ok(KvResult::Nil) };
        if let Some(expiry) = expiry {
            let old = self.data[&key].expire_at;
            let new = self.deadline(expiry, old, KvError::InvalidExpireTimeGetEx)?;
            if new.is_some_and(|at| at <= self.clock_ms) {
                self.remove(&key);
            } else if new != old {
                let version = self.last_applied;
                let v = self.data.get_mut(&key).expect("live above");
                v.expire_at = new;
                v.version = version;
                self.reindex_expiry(&key, old, new);
            }
        }
        Ok(KvResult::Value(value))
    }

    /// `EXPIRE` and its variants.
    fn expire(&mut self, key: Bytes, at: SetExpiry, condition: ExpireCondition) -> Result<KvResult, KvError> {
        let Some(old) = self.live(&key).map(|v| v.expire_at) else { return Ok(KvResult::Integer(0)) };
        let new = self.deadline(at, old, KvError::InvalidExpireTimeExpire)?.unwrap_or(u64::MAX);
        let allowed = match condition {
            ExpireCondition::Always => true,
            ExpireCondition::IfNone => old.is_none(),
            ExpireCondition::IfSome => old.is_some(),
            // No TTL counts as an infinite one.
            ExpireCondition::Later => old.is_some_and(|old| new > old),
            ExpireCondition::Earlier => old.is_none_or(|old| new < old),
        };
        if !allowed {
            return Ok(KvResult::Integer(0));
        }
        if new <= self.clock_ms {
            self.remove(&key);
            return Ok(KvResult::Integer(1));
        }
        let version = self.last_applied;
        let v = self.data.get_mut(&key).expect("live above");
        v.expire_at = Some(new);
        v.version = version;
        self.reindex_expiry(&key, old, Some(new));
        Ok(KvResult::Integer(1))
    }

    /// `EXEC`: every watched key must still have the version `WATCH` read (0: still absent), then the
    /// ops run in order, each answering for itself (an error in one does not undo the others, as in
    /// Redis).
    fn exec(&mut self, watched: &[(Bytes, u64)], ops: Vec<Bytes>) -> KvResult {
        let now = self.clock_ms;
        let changed = watched
            .iter()
            .any(|(k, version)| self.data.get(k).filter(|v| v.alive_at(now)).map_or(0, |v| v.version) != *version);
        if changed {
            return KvResult::Aborted;
        }
        let results = ops
            .iter()
            .map(|encoded| match postcard::from_bytes::<KvOp>(encoded) {
                Ok(KvOp::Exec { .. }) => KvResult::Error(KvError::NestedExec),
                Ok(op) => self.execute(op),
                Err(_) => KvResult::Error(KvError::MalformedCommand),
            })
            .collect();
        KvResult::Multi(results)
    }
}
