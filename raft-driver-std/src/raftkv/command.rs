//! Redis command parsing: a request's arguments become a replicated [`KvOp`], a reply to send at once,
//! or a command on the connection's own state.
//!
//! Only validation happens here; anything depending on data is decided when the op is applied by the
//! [`KvStore`](super::store::KvStore). Errors use Redis' wording, because clients and people match on it.

use bytes::Bytes;

use super::int::parse_i64;
use super::resp::{Protocol, Reply};
use super::store::{DEFAULT_SCAN_COUNT, ExpireCondition, KeyType, KvOp, SetCondition, SetExpiry, parse_float};

/// What the server should do with a parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedCommand {
    /// Propose this operation through the Raft log and reply with the result of applying it.
    Replicate(KvOp),
    /// Send this reply right away; nothing else to do.
    Reply(Reply),
    /// A command that reads or changes the connection's own state, handled by the server.
    Connection(ConnCommand),
    /// A script command that needs the node's script cache, resolved by the server.
    Script(ScriptCommand),
}

/// The script commands the server answers from its script cache (scripts are cached per node, as
/// in Redis; the log carries a script's body, so replicas need no cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptCommand {
    /// `EVALSHA sha1 numkeys key... arg...` (`EVALSHA_RO` with `read_only`): becomes
    /// [`KvOp::Eval`] with the cached body, or `-NOSCRIPT`.
    EvalSha {
        /// The script's SHA-1 in lowercase hex.
        sha: String,
        /// `KEYS`.
        keys: Vec<Bytes>,
        /// `ARGV`.
        args: Vec<Bytes>,
        /// Commands that write are refused.
        read_only: bool,
    },
    /// `SCRIPT LOAD body`: checks that it compiles, caches it, replies its SHA-1.
    Load(Bytes),
    /// `SCRIPT EXISTS sha1...`: 1 or 0 per script.
    Exists(Vec<Bytes>),
    /// `SCRIPT FLUSH [ASYNC|SYNC]`: empties the cache.
    Flush,
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
    /// `SELECT db`: later data commands of the connection work on database `db` (0 to 15).
    Select(u8),
    /// `CLIENT LIST [TYPE normal] [ID id ...]`: one line per connection.
    ClientList {
        /// Only these connection ids (all if empty).
        ids: Vec<u64>,
    },
    /// `CLIENT INFO`: this connection's line.
    ClientInfo,
    /// `CLIENT KILL addr` (old form: `+OK` or an error) or `CLIENT KILL <filter> <value> ...` (the
    /// number of connections closed).
    ClientKill {
        /// The filters, all of which a connection must match.
        filter: KillFilter,
        /// The old one-argument form.
        old_form: bool,
    },
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`: shown in `CLIENT LIST`.
    ClientSetInfo {
        /// `true` for `LIB-NAME`, `false` for `LIB-VER`.
        name: bool,
        /// The value.
        value: Bytes,
    },
}

/// Which connections `CLIENT KILL` closes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillFilter {
    /// `ID`.
    pub id: Option<u64>,
    /// `ADDR` (the client's address, `ip:port`).
    pub addr: Option<String>,
    /// `LADDR` (the server's address the client connected to).
    pub laddr: Option<String>,
    /// `SKIPME yes|no` (default yes: the calling connection survives).
    pub skip_me: bool,
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
    if let Some(op) = parse_string_command(cmd, rest)? {
        return Ok(ParsedCommand::Replicate(op));
    }
    if let Some(op) = parse_keyspace_command(cmd, rest)? {
        return Ok(ParsedCommand::Replicate(op));
    }
    if let Some(op) = parse_hash_command(cmd, rest)? {
        return Ok(ParsedCommand::Replicate(op));
    }
    parse_server_command(cmd, rest).unwrap_or_else(|| Err(unknown_command(name, rest)))
}

/// Checks a command's argument count, with Redis' message.
fn arity(cmd: &str, ok: bool) -> Result<(), Reply> {
    if ok { Ok(()) } else { Err(wrong_args(cmd)) }
}

/// The string commands on one key or a few: `Ok(None)` if `cmd` is not one of them.
fn parse_string_command(cmd: &str, rest: &[Bytes]) -> Result<Option<KvOp>, Reply> {
    let n = rest.len();
    let key = || rest[0].clone();
    let op = match cmd {
        "get" => arity(cmd, n == 1).map(|()| KvOp::Get { key: key() })?,
        "set" => arity(cmd, n >= 2).and_then(|()| parse_set(rest))?,
        "incr" | "decr" => {
            arity(cmd, n == 1)?;
            KvOp::IncrBy { key: key(), delta: if cmd == "incr" { 1 } else { -1 } }
        }
        "incrby" => {
            arity(cmd, n == 2)?;
            KvOp::IncrBy { key: key(), delta: int_arg(&rest[1])? }
        }
        "decrby" => {
            arity(cmd, n == 2)?;
            let delta = int_arg(&rest[1])?.checked_neg().ok_or_else(|| Reply::error("ERR decrement would overflow"))?;
            KvOp::IncrBy { key: key(), delta }
        }
        "append" => arity(cmd, n == 2).map(|()| KvOp::Append { key: key(), value: rest[1].clone() })?,
        "strlen" => arity(cmd, n == 1).map(|()| KvOp::Strlen { key: key() })?,
        "mset" => {
            arity(cmd, n >= 2 && n % 2 == 0)?;
            KvOp::MSet { pairs: rest.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect() }
        }
        "mget" => arity(cmd, n >= 1).map(|()| KvOp::MGet { keys: rest.to_vec() })?,
        "setnx" => arity(cmd, n == 2).map(|()| KvOp::SetNx { key: key(), value: rest[1].clone() })?,
        "getset" => {
            arity(cmd, n == 2)?;
            KvOp::Set {
                key: key(),
                value: rest[1].clone(),
                condition: SetCondition::Always,
                expiry: SetExpiry::Clear,
                get: true,
            }
        }
        "getdel" => arity(cmd, n == 1).map(|()| KvOp::GetDel { key: key() })?,
        "getex" => arity(cmd, n >= 1).and_then(|()| parse_getex(rest))?,
        "setex" | "psetex" => {
            arity(cmd, n == 3)?;
            let v = int_arg(&rest[1])?;
            let invalid = || Reply::error(format!("ERR invalid expire time in '{cmd}' command"));
            let ms = if cmd == "setex" { v.checked_mul(1000).ok_or_else(invalid)? } else { v };
            if v <= 0 {
                return Err(invalid());
            }
            KvOp::Set {
                key: key(),
                value: rest[2].clone(),
                condition: SetCondition::Always,
                expiry: SetExpiry::AfterMs(ms as u64),
                get: false,
            }
        }
        "getrange" | "substr" => {
            arity(cmd, n == 3)?;
            KvOp::GetRange { key: key(), start: int_arg(&rest[1])?, end: int_arg(&rest[2])? }
        }
        "setrange" => {
            arity(cmd, n == 3)?;
            let offset = int_arg(&rest[1])?;
            let offset = u64::try_from(offset).map_err(|_| Reply::error("ERR offset is out of range"))?;
            KvOp::SetRange { key: key(), offset, value: rest[2].clone() }
        }
        "incrbyfloat" => {
            arity(cmd, n == 2)?;
            float_arg(&rest[1])?;
            KvOp::IncrByFloat { key: key(), delta: rest[1].clone() }
        }
        "msetnx" => {
            arity(cmd, n >= 2 && n % 2 == 0)?;
            KvOp::MSetNx { pairs: rest.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect() }
        }
        _ => return Ok(None),
    };
    Ok(Some(op))
}

fn float_arg(arg: &[u8]) -> Result<f64, Reply> {
    parse_float(arg).ok_or_else(|| Reply::error("ERR value is not a valid float"))
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
fn parse_getex(rest: &[Bytes]) -> Result<KvOp, Reply> {
    let key = rest[0].clone();
    let opts = &rest[1..];
    let invalid = || Reply::error("ERR invalid expire time in 'getex' command");
    let expiry = match opts {
        [] => None,
        [p] if p.eq_ignore_ascii_case(b"persist") => Some(SetExpiry::Clear),
        [opt, v] => {
            let opt = opt.to_ascii_uppercase();
            let v = int_arg(v)?;
            if v <= 0 {
                return Err(invalid());
            }
            let ms = |secs: bool| if secs { v.checked_mul(1000).ok_or_else(invalid) } else { Ok(v) };
            Some(match opt.as_slice() {
                b"EX" => SetExpiry::AfterMs(ms(true)? as u64),
                b"PX" => SetExpiry::AfterMs(ms(false)? as u64),
                b"EXAT" => SetExpiry::AtMs(ms(true)? as u64),
                b"PXAT" => SetExpiry::AtMs(ms(false)? as u64),
                _ => return Err(syntax_error()),
            })
        }
        _ => return Err(syntax_error()),
    };
    Ok(KvOp::GetEx { key, expiry })
}

/// `EXPIRE`/`PEXPIRE`/`EXPIREAT`/`PEXPIREAT key time [NX|XX|GT|LT]`.
fn parse_expire(cmd: &str, rest: &[Bytes]) -> Result<KvOp, Reply> {
    let v = int_arg(&rest[1])?;
    let seconds = matches!(cmd, "expire" | "expireat");
    let absolute = matches!(cmd, "expireat" | "pexpireat");
    let ms = if seconds {
        v.checked_mul(1000).ok_or_else(|| Reply::error(format!("ERR invalid expire time in '{cmd}' command")))?
    } else {
        v
    };
    // A deadline at or before now deletes the key; negative ones are simply "long ago".
    let at = match (absolute, u64::try_from(ms)) {
        (_, Err(_)) => SetExpiry::AtMs(0),
        (true, Ok(ms)) => SetExpiry::AtMs(ms),
        (false, Ok(ms)) => SetExpiry::AfterMs(ms),
    };
    let mut condition = ExpireCondition::Always;
    for opt in &rest[2..] {
        let opt = opt.to_ascii_uppercase();
        let next = match opt.as_slice() {
            b"NX" => ExpireCondition::IfNone,
            b"XX" => ExpireCondition::IfSome,
            b"GT" => ExpireCondition::Later,
            b"LT" => ExpireCondition::Earlier,
            _ => {
                let opt = String::from_utf8_lossy(&opt);
                return Err(Reply::error(format!("ERR Unsupported option {opt}")));
            }
        };
        use ExpireCondition::*;
        condition = match (condition, next) {
            (Always, c) => c,
            (a, b) if a == b => a,
            (IfNone, _) | (_, IfNone) => {
                return Err(Reply::error("ERR NX and XX, GT or LT options at the same time are not compatible"));
            }
            (Later, Earlier) | (Earlier, Later) => {
                return Err(Reply::error("ERR GT and LT options at the same time are not compatible"));
            }
            // XX combines with GT or LT: the TTL must exist and satisfy the comparison, which GT
            // already requires and LT, on an existing TTL, adds.
            (IfSome, c) | (c, IfSome) => c,
            (a, _) => a,
        };
    }
    Ok(KvOp::Expire { key: rest[0].clone(), at, condition })
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]` (and `HSCAN key cursor ...`, without TYPE).
fn parse_scan(rest: &[Bytes], with_type: bool) -> Result<(u64, Option<Bytes>, u32, Option<KeyType>), Reply> {
    let cursor = std::str::from_utf8(&rest[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut kind) = (None, DEFAULT_SCAN_COUNT, None);
    let mut opts = rest[1..].chunks(2);
    for pair in &mut opts {
        let [opt, value] = pair else { return Err(syntax_error()) };
        let opt = opt.to_ascii_uppercase();
        match opt.as_slice() {
            b"MATCH" => pattern = Some(value.clone()),
            b"COUNT" => {
                let n = int_arg(value)?;
                if n < 1 {
                    return Err(syntax_error());
                }
                count = u32::try_from(n).unwrap_or(u32::MAX);
            }
            b"TYPE" if with_type => {
                kind = Some(match value.to_ascii_lowercase().as_slice() {
                    b"string" => KeyType::String,
                    b"hash" => KeyType::Hash,
                    b"list" => KeyType::List,
                    b"set" => KeyType::Set,
                    b"zset" => KeyType::ZSet,
                    b"stream" => KeyType::Stream,
                    _ => {
                        let t = String::from_utf8_lossy(value);
                        return Err(Reply::error(format!("ERR unknown type name '{t}'")));
                    }
                });
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok((cursor, pattern, count, kind))
}

/// The commands on the key space as a whole: `Ok(None)` if `cmd` is not one of them.
fn parse_keyspace_command(cmd: &str, rest: &[Bytes]) -> Result<Option<KvOp>, Reply> {
    let n = rest.len();
    let op = match cmd {
        "del" | "unlink" => arity(cmd, n >= 1).map(|()| KvOp::Del { keys: rest.to_vec() })?,
        "exists" => arity(cmd, n >= 1).map(|()| KvOp::Exists { keys: rest.to_vec() })?,
        "dbsize" => arity(cmd, n == 0).map(|()| KvOp::DbSize)?,
        "expire" | "pexpire" | "expireat" | "pexpireat" => arity(cmd, n >= 2).and_then(|()| parse_expire(cmd, rest))?,
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
            arity(cmd, n == 1)?;
            KvOp::Ttl { key: rest[0].clone(), millis: cmd.starts_with('p'), absolute: cmd.ends_with("expiretime") }
        }
        "persist" => arity(cmd, n == 1).map(|()| KvOp::Persist { key: rest[0].clone() })?,
        "type" => arity(cmd, n == 1).map(|()| KvOp::Type { key: rest[0].clone() })?,
        "rename" | "renamenx" => {
            arity(cmd, n == 2)?;
            KvOp::Rename { from: rest[0].clone(), to: rest[1].clone(), nx: cmd == "renamenx" }
        }
        "keys" => arity(cmd, n == 1).map(|()| KvOp::Keys { pattern: rest[0].clone() })?,
        "randomkey" => arity(cmd, n == 0).map(|()| KvOp::RandomKey)?,
        "scan" => {
            arity(cmd, n >= 1)?;
            let (cursor, pattern, count, kind) = parse_scan(rest, true)?;
            KvOp::Scan { cursor, pattern, count, kind }
        }
        "flushall" | "flushdb" => {
            arity(cmd, n <= 1)?;
            if let Some(mode) = rest.first() {
                if !mode.eq_ignore_ascii_case(b"async") && !mode.eq_ignore_ascii_case(b"sync") {
                    return Err(syntax_error());
                }
            }
            if cmd == "flushall" { KvOp::FlushAll } else { KvOp::FlushDb }
        }
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// The hash commands: `Ok(None)` if `cmd` is not one of them.
fn parse_hash_command(cmd: &str, rest: &[Bytes]) -> Result<Option<KvOp>, Reply> {
    let n = rest.len();
    let key = || rest[0].clone();
    let op = match cmd {
        "hset" | "hmset" => {
            arity(cmd, n >= 3 && n % 2 == 1)?;
            let pairs = rest[1..].chunks_exact(2).map(|fv| (fv[0].clone(), fv[1].clone())).collect();
            KvOp::HSet { key: key(), pairs, ok_reply: cmd == "hmset" }
        }
        "hsetnx" => {
            arity(cmd, n == 3)?;
            KvOp::HSetNx { key: key(), field: rest[1].clone(), value: rest[2].clone() }
        }
        "hget" => arity(cmd, n == 2).map(|()| KvOp::HGet { key: key(), field: rest[1].clone() })?,
        "hmget" => arity(cmd, n >= 2).map(|()| KvOp::HMGet { key: key(), fields: rest[1..].to_vec() })?,
        "hdel" => arity(cmd, n >= 2).map(|()| KvOp::HDel { key: key(), fields: rest[1..].to_vec() })?,
        "hgetall" => arity(cmd, n == 1).map(|()| KvOp::HGetAll { key: key() })?,
        "hincrby" => {
            arity(cmd, n == 3)?;
            KvOp::HIncrBy { key: key(), field: rest[1].clone(), delta: int_arg(&rest[2])? }
        }
        "hincrbyfloat" => {
            arity(cmd, n == 3)?;
            float_arg(&rest[2])?;
            KvOp::HIncrByFloat { key: key(), field: rest[1].clone(), delta: rest[2].clone() }
        }
        "hlen" => arity(cmd, n == 1).map(|()| KvOp::HLen { key: key() })?,
        "hexists" => arity(cmd, n == 2).map(|()| KvOp::HExists { key: key(), field: rest[1].clone() })?,
        "hkeys" => arity(cmd, n == 1).map(|()| KvOp::HKeys { key: key() })?,
        "hvals" => arity(cmd, n == 1).map(|()| KvOp::HVals { key: key() })?,
        "hstrlen" => arity(cmd, n == 2).map(|()| KvOp::HStrlen { key: key(), field: rest[1].clone() })?,
        "hscan" => {
            arity(cmd, n >= 2)?;
            let (cursor, pattern, count, _) = parse_scan(&rest[1..], false)?;
            KvOp::HScan { key: key(), cursor, pattern, count }
        }
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// The commands the server answers itself (`None` if `cmd` is not one of them).
fn parse_server_command(cmd: &str, rest: &[Bytes]) -> Option<Result<ParsedCommand, Reply>> {
    let n = rest.len();
    let reply = |r| Ok(ParsedCommand::Reply(r));
    let connection = |c| Ok(ParsedCommand::Connection(c));
    Some(match cmd {
        "ping" => arity(cmd, n <= 1).and_then(|()| {
            reply(rest.first().map_or_else(|| Reply::Simple("PONG".to_owned()), |msg| Reply::Bulk(msg.clone())))
        }),
        // Outside MULTI the server handles UNWATCH itself; inside, it is queued and answers +OK.
        "unwatch" => arity(cmd, n == 0).and_then(|()| reply(Reply::ok())),
        "echo" => arity(cmd, n == 1).and_then(|()| reply(Reply::Bulk(rest[0].clone()))),
        "time" => arity(cmd, n == 0).and_then(|()| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let text = |v: u64| Reply::Bulk(Bytes::from(v.to_string()));
            reply(Reply::Array(vec![text(now.as_secs()), text(u64::from(now.subsec_micros()))]))
        }),
        "hello" => parse_hello(rest).map(ParsedCommand::Connection),
        "client" => parse_client(rest),
        "info" => connection(ConnCommand::Info { sections: rest.to_vec() }),
        "quit" => connection(ConnCommand::Quit),
        "command" => match super::command_table::command_reply(rest) {
            Reply::Error(e) => Err(Reply::Error(e)),
            r => reply(r),
        },
        "config" => arity(cmd, n >= 1).and_then(|()| parse_config(rest)),
        "eval" | "eval_ro" | "evalsha" | "evalsha_ro" => parse_eval(cmd, rest),
        "script" => parse_script(rest),
        "select" => arity(cmd, n == 1).and_then(|()| match int_arg(&rest[0])? {
            db @ 0..16 => connection(ConnCommand::Select(db as u8)),
            _ => Err(Reply::error("ERR DB index is out of range")),
        }),
        _ => return None,
    })
}

/// `EVAL script numkeys key... arg...` and its `_RO` and `EVALSHA` forms.
fn parse_eval(cmd: &str, rest: &[Bytes]) -> Result<ParsedCommand, Reply> {
    arity(cmd, rest.len() >= 2)?;
    let numkeys = int_arg(&rest[1])?;
    if numkeys < 0 {
        return Err(Reply::error("ERR Number of keys can't be negative"));
    }
    let rest_len = rest.len() - 2;
    if numkeys as u64 > rest_len as u64 {
        return Err(Reply::error("ERR Number of keys can't be greater than number of args"));
    }
    let split = 2 + numkeys as usize;
    let (keys, args) = (rest[2..split].to_vec(), rest[split..].to_vec());
    let read_only = cmd.ends_with("_ro");
    if cmd.starts_with("evalsha") {
        let sha = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
        return Ok(ParsedCommand::Script(ScriptCommand::EvalSha { sha, keys, args, read_only }));
    }
    Ok(ParsedCommand::Replicate(KvOp::Eval { script: rest[0].clone(), keys, args, read_only }))
}

/// `SCRIPT LOAD|EXISTS|FLUSH`.
fn parse_script(rest: &[Bytes]) -> Result<ParsedCommand, Reply> {
    let Some((sub, args)) = rest.split_first() else { return Err(wrong_args("script")) };
    let lower = sub.to_ascii_lowercase();
    let script = |c| Ok(ParsedCommand::Script(c));
    match lower.as_slice() {
        b"load" if args.len() == 1 => script(ScriptCommand::Load(args[0].clone())),
        b"load" => Err(wrong_args("script|load")),
        b"exists" if !args.is_empty() => script(ScriptCommand::Exists(args.to_vec())),
        b"exists" => Err(wrong_args("script|exists")),
        b"flush" if args.len() <= 1 => match args.first().map(|a| a.to_ascii_lowercase()) {
            None => script(ScriptCommand::Flush),
            Some(mode) if mode == b"async" || mode == b"sync" => script(ScriptCommand::Flush),
            Some(_) => Err(syntax_error()),
        },
        b"flush" => Err(wrong_args("script|flush")),
        _ => Err(unknown_subcommand(sub, "SCRIPT")),
    }
}

/// `CONFIG GET` answers that nothing matches (no parameters are exposed: an empty map, which is what
/// Redis returns for a pattern that matches nothing); `CONFIG SET` is refused.
fn parse_config(rest: &[Bytes]) -> Result<ParsedCommand, Reply> {
    let sub = &rest[0];
    if sub.eq_ignore_ascii_case(b"get") {
        if rest.len() < 2 {
            return Err(wrong_args("config|get"));
        }
        Ok(ParsedCommand::Reply(Reply::Map(Vec::new())))
    } else if sub.eq_ignore_ascii_case(b"set") {
        Err(Reply::error("ERR CONFIG SET is not supported"))
    } else {
        Err(unknown_subcommand(sub, "CONFIG"))
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
        // redis-py sends `CLIENT SETINFO LIB-NAME/LIB-VER` on connect.
        b"setinfo" if n == 2 => {
            let name = args[0].eq_ignore_ascii_case(b"lib-name");
            if name || args[0].eq_ignore_ascii_case(b"lib-ver") {
                conn(ConnCommand::ClientSetInfo { name, value: validate_client_name(&args[1])?.clone() })
            } else {
                let opt = String::from_utf8_lossy(&args[0]);
                Err(Reply::error(format!("ERR Unrecognized option '{opt}'")))
            }
        }
        b"setinfo" => Err(wrong_args("client|setinfo")),
        b"info" if n == 0 => conn(ConnCommand::ClientInfo),
        b"info" => Err(wrong_args("client|info")),
        b"list" => {
            let mut ids = Vec::new();
            let mut i = 0;
            while i < n {
                if args[i].eq_ignore_ascii_case(b"type") && i + 1 < n {
                    let t = args[i + 1].to_ascii_lowercase();
                    if !matches!(t.as_slice(), b"normal" | b"master" | b"replica" | b"slave" | b"pubsub") {
                        let t = String::from_utf8_lossy(&args[i + 1]);
                        return Err(Reply::error(format!("ERR Unknown client type '{t}'")));
                    }
                    i += 2;
                } else if args[i].eq_ignore_ascii_case(b"id") && i + 1 < n {
                    for id in &args[i + 1..] {
                        let id =
                            parse_i64(id).filter(|&v| v > 0).ok_or_else(|| Reply::error("ERR Invalid client ID"))?;
                        ids.push(id as u64);
                    }
                    i = n;
                } else {
                    return Err(syntax_error());
                }
            }
            conn(ConnCommand::ClientList { ids })
        }
        b"kill" if n == 1 => conn(ConnCommand::ClientKill {
            filter: KillFilter {
                addr: Some(String::from_utf8_lossy(&args[0]).into_owned()),
                skip_me: false,
                ..Default::default()
            },
            old_form: true,
        }),
        b"kill" if n >= 2 && n % 2 == 0 => {
            let mut filter = KillFilter { skip_me: true, ..Default::default() };
            for pair in args.chunks_exact(2) {
                let value = String::from_utf8_lossy(&pair[1]).into_owned();
                match pair[0].to_ascii_lowercase().as_slice() {
                    b"id" => {
                        let id = parse_i64(&pair[1])
                            .filter(|&v| v > 0)
                            .ok_or_else(|| Reply::error("ERR client-id should be greater than 0"))?;
                        filter.id = Some(id as u64);
                    }
                    b"addr" => filter.addr = Some(value),
                    b"laddr" => filter.laddr = Some(value),
                    b"skipme" => {
                        filter.skip_me = match value.to_ascii_lowercase().as_str() {
                            "yes" => true,
                            "no" => false,
                            _ => return Err(syntax_error()),
                        }
                    }
                    // TYPE normal (every client here is one), USER default (the only user).
                    b"type" | b"user" => {}
                    _ => return Err(syntax_error()),
                }
            }
            conn(ConnCommand::ClientKill { filter, old_form: false })
        }
        b"kill" => Err(syntax_error()),
        _ => Err(unknown_subcommand(sub, "CLIENT")),
    }
}
