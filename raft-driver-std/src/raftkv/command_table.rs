//! The command table `COMMAND`, `COMMAND INFO`, `COMMAND COUNT` and `COMMAND LIST` answer: every
//! command raftkv serves, with Redis 7's arity, flags and key positions, so that clients that route
//! or check commands by the table (cluster clients, proxies, redis-cli) see the truth.
//!
//! `COMMAND DOCS` is refused on purpose: redis-cli then builds its help and argument hints from its
//! own complete table of Redis commands (an answer without every argument's structure would leave
//! them blank, which is what users saw before).

use bytes::Bytes;

use super::resp::Reply;

/// One command: name, arity (negative: at least that many words), flags, first key, last key
/// (negative: counted from the end), key step.
pub struct CommandSpec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis' arity: the exact number of words including the name, or minus the minimum.
    pub arity: i64,
    /// Redis' flags.
    pub flags: &'static [&'static str],
    /// Position of the first key (0: none).
    pub first_key: i64,
    /// Position of the last key (-1: the last word).
    pub last_key: i64,
    /// Step between keys.
    pub step: i64,
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WD: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
/// Redis 7's flags of `EVAL` and `EVALSHA` (the keys come from `numkeys`: none at fixed positions).
const SCRIPT: &[&str] = &["noscript", "stale", "skip_monitor", "may_replicate", "no_mandatory_keys"];

const fn c(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first: i64,
    last: i64,
    step: i64,
) -> CommandSpec {
    CommandSpec { name, arity, flags, first_key: first, last_key: last, step }
}

/// Every command raftkv serves (`RAFTKV.*` and `RAFT` included), in name order.
pub const COMMANDS: &[CommandSpec] = &[
    c("append", 3, WF, 1, 1, 1),
    c("auth", -2, CONN, 0, 0, 0),
    c("client", -2, CONN, 0, 0, 0),
    c("command", -1, &["loading", "stale"], 0, 0, 0),
    c("config", -2, &["admin", "noscript", "loading", "stale"], 0, 0, 0),
    c("dbsize", 1, RF, 0, 0, 0),
    c("decr", 2, WF, 1, 1, 1),
    c("decrby", 3, WF, 1, 1, 1),
    c("del", -2, &["write"], 1, -1, 1),
    c("discard", 1, CONN, 0, 0, 0),
    c("echo", 2, &["fast"], 0, 0, 0),
    c("eval", -3, SCRIPT, 0, 0, 0),
    c("eval_ro", -3, &["noscript", "stale", "no_mandatory_keys", "readonly"], 0, 0, 0),
    c("evalsha", -3, SCRIPT, 0, 0, 0),
    c("evalsha_ro", -3, &["noscript", "stale", "no_mandatory_keys", "readonly"], 0, 0, 0),
    c("exec", 1, &["noscript", "loading", "stale"], 0, 0, 0),
    c("exists", -2, RF, 1, -1, 1),
    c("expire", -3, WD, 1, 1, 1),
    c("expireat", -3, WD, 1, 1, 1),
    c("expiretime", 2, RF, 1, 1, 1),
    c("flushall", -1, &["write"], 0, 0, 0),
    c("flushdb", -1, &["write"], 0, 0, 0),
    c("get", 2, RF, 1, 1, 1),
    c("getdel", 2, WD, 1, 1, 1),
    c("getex", -2, WD, 1, 1, 1),
    c("getrange", 4, R, 1, 1, 1),
    c("getset", 3, WF, 1, 1, 1),
    c("hdel", -3, WD, 1, 1, 1),
    c("hello", -1, CONN, 0, 0, 0),
    c("hexists", 3, RF, 1, 1, 1),
    c("hget", 3, RF, 1, 1, 1),
    c("hgetall", 2, R, 1, 1, 1),
    c("hincrby", 4, WF, 1, 1, 1),
    c("hincrbyfloat", 4, WF, 1, 1, 1),
    c("hkeys", 2, R, 1, 1, 1),
    c("hlen", 2, RF, 1, 1, 1),
    c("hmget", -3, RF, 1, 1, 1),
    c("hmset", -4, WF, 1, 1, 1),
    c("hscan", -3, R, 1, 1, 1),
    c("hset", -4, WF, 1, 1, 1),
    c("hsetnx", 4, WF, 1, 1, 1),
    c("hstrlen", 3, RF, 1, 1, 1),
    c("hvals", 2, R, 1, 1, 1),
    c("incr", 2, WF, 1, 1, 1),
    c("incrby", 3, WF, 1, 1, 1),
    c("incrbyfloat", 3, WF, 1, 1, 1),
    c("info", -1, &["loading", "stale"], 0, 0, 0),
    c("keys", 2, R, 0, 0, 0),
    c("mget", -2, RF, 1, -1, 1),
    c("mset", -3, W, 1, -1, 2),
    c("msetnx", -3, W, 1, -1, 2),
    c("multi", 1, CONN, 0, 0, 0),
    c("persist", 2, WD, 1, 1, 1),
    c("pexpire", -3, WD, 1, 1, 1),
    c("pexpireat", -3, WD, 1, 1, 1),
    c("pexpiretime", 2, RF, 1, 1, 1),
    c("ping", -1, &["fast"], 0, 0, 0),
    c("psetex", 4, W, 1, 1, 1),
    c("pttl", 2, RF, 1, 1, 1),
    c("quit", -1, CONN, 0, 0, 0),
    c("raft", -2, &["admin", "noscript"], 0, 0, 0),
    c("raftkv.digest", 1, &["readonly", "admin"], 0, 0, 0),
    c("raftkv.session", -1, CONN, 0, 0, 0),
    c("randomkey", 1, R, 0, 0, 0),
    c("rename", 3, &["write"], 1, 2, 1),
    c("renamenx", 3, WD, 1, 2, 1),
    c("scan", -2, R, 0, 0, 0),
    c("script", -2, &["noscript"], 0, 0, 0),
    c("select", 2, CONN, 0, 0, 0),
    c("set", -3, W, 1, 1, 1),
    c("setex", 4, W, 1, 1, 1),
    c("setnx", 3, WF, 1, 1, 1),
    c("setrange", 4, W, 1, 1, 1),
    c("strlen", 2, RF, 1, 1, 1),
    c("substr", 4, R, 1, 1, 1),
    c("time", 1, &["loading", "stale", "fast"], 0, 0, 0),
    c("ttl", 2, RF, 1, 1, 1),
    c("type", 2, RF, 1, 1, 1),
    c("unlink", -2, WD, 1, -1, 1),
    c("unwatch", 1, CONN, 0, 0, 0),
    c("watch", -2, CONN, 1, -1, 1),
];

/// The position of `name` (any case) in [`COMMANDS`], without allocating (counted per request).
pub fn index_of(name: &[u8]) -> Option<usize> {
    COMMANDS.binary_search_by(|spec| spec.name.bytes().cmp(name.iter().map(u8::to_ascii_lowercase))).ok()
}

/// Requests per command, for metrics: one counter per [`COMMANDS`] entry and one for names the
/// table does not know (so a client cannot grow the set of series).
#[derive(Debug)]
pub struct CommandCounts {
    counts: Box<[std::sync::atomic::AtomicU64]>,
}

impl Default for CommandCounts {
    fn default() -> CommandCounts {
        CommandCounts { counts: (0..=COMMANDS.len()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect() }
    }
}

impl CommandCounts {
    /// Counts one request named `name`.
    pub fn count(&self, name: &[u8]) {
        let i = index_of(name).unwrap_or(COMMANDS.len());
        self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `(name, count)` for every command seen at least once, `unknown` last.
    pub fn seen(&self) -> Vec<(&'static str, u64)> {
        let names = COMMANDS.iter().map(|c| c.name).chain(["unknown"]);
        names
            .zip(self.counts.iter())
            .map(|(n, c)| (n, c.load(std::sync::atomic::Ordering::Relaxed)))
            .filter(|&(_, c)| c > 0)
            .collect()
    }
}

/// The spec of `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let lower = name.to_ascii_lowercase();
    COMMANDS.binary_search_by(|spec| spec.name.as_bytes().cmp(&lower)).ok().map(|i| &COMMANDS[i])
}

impl CommandSpec {
    /// The command's `COMMAND` entry: Redis 7's ten fields (no ACL categories, tips, key specs or
    /// subcommands: empty).
    pub fn reply(&self) -> Reply {
        let status = |s: &str| Reply::Simple(s.to_owned());
        Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(self.name.as_bytes())),
            Reply::Integer(self.arity),
            Reply::Set(self.flags.iter().map(|f| status(f)).collect()),
            Reply::Integer(self.first_key),
            Reply::Integer(self.last_key),
            Reply::Integer(self.step),
            Reply::Set(Vec::new()),
            Reply::Set(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    }
}

/// `COMMAND [COUNT | LIST | INFO name... | DOCS ...]`.
pub fn command_reply(rest: &[Bytes]) -> Reply {
    let Some(sub) = rest.first() else { return Reply::Array(COMMANDS.iter().map(CommandSpec::reply).collect()) };
    match sub.to_ascii_lowercase().as_slice() {
        b"count" => Reply::Integer(COMMANDS.len() as i64),
        b"list" => Reply::Array(COMMANDS.iter().map(|c| Reply::Bulk(Bytes::from_static(c.name.as_bytes()))).collect()),
        b"info" if rest.len() == 1 => Reply::Array(COMMANDS.iter().map(CommandSpec::reply).collect()),
        b"info" => {
            Reply::Array(rest[1..].iter().map(|n| lookup(n).map_or(Reply::NullArray, CommandSpec::reply)).collect())
        }
        b"docs" => Reply::error(
            "ERR COMMAND DOCS is not served: clients use their own documentation (redis-cli's help and hints then work)",
        ),
        _ => {
            let sub = String::from_utf8_lossy(sub);
            Reply::error(format!("ERR unknown subcommand '{sub}'. Try COMMAND HELP."))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raftkv::command::parse_command;

    fn words(name: &str, n: usize) -> Vec<Bytes> {
        let mut w = vec![Bytes::copy_from_slice(name.as_bytes())];
        w.extend((1..n).map(|i| Bytes::from(i.to_string())));
        w
    }

    #[test]
    fn the_table_is_sorted_and_lookup_finds_every_entry() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name), "COMMANDS must stay sorted");
        for spec in COMMANDS {
            assert_eq!(lookup(spec.name.to_uppercase().as_bytes()).map(|s| s.name), Some(spec.name));
        }
        assert!(lookup(b"nosuch").is_none());
    }

    /// Every command in the table is one the parser knows, and refuses with the arity error exactly
    /// one word short of the minimum the table states (a table that lied would mislead clients).
    #[test]
    fn the_table_matches_the_parser() {
        let server_handled = ["multi", "exec", "discard", "watch", "raftkv.digest", "raftkv.session", "raft", "auth"];
        for spec in COMMANDS.iter().filter(|s| !server_handled.contains(&s.name)) {
            let min = spec.arity.unsigned_abs() as usize;
            let unknown = |r: &Result<_, Reply>| matches!(r, Err(Reply::Error(e)) if e.contains("unknown command"));
            assert!(!unknown(&parse_command(&words(spec.name, min))), "{} is in the table but unknown", spec.name);
            if min > 1 {
                let short = parse_command(&words(spec.name, min - 1));
                let arity_error = matches!(&short, Err(Reply::Error(e)) if e.contains("wrong number of arguments"));
                assert!(arity_error, "{} with {} words: {short:?}", spec.name, min - 1);
            }
        }
    }
}
