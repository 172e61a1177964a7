//! Redis command parsing: a request's arguments become a replicated [`KvOp`], a reply to send at once,
//! or a command on the connection's own state.
//!
//! Only validation happens here; anything depending on data is decided when the op is applied by the
//! [`KvStore`](super::store::KvStore). Errors use Redis' wording, because clients and people match on it.

use bytes::Bytes;

use super::int::parse_i64;
use super::resp::{Protocol, Reply};
use super::store::{KvOp, SetCondition, SetExpiry};

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
    if let Some(op) = parse_string_command(cmd, rest)? {
        return Ok(ParsedCommand::Replicate(op));
    }
    if let Some(op) = parse_keyspace_command(cmd, rest)? {
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
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// The commands on the key space as a whole: `Ok(None)` if `cmd` is not one of them.
fn parse_keyspace_command(cmd: &str, rest: &[Bytes]) -> Result<Option<KvOp>, Reply> {
    let n = rest.len();
    let op = match cmd {
        "del" | "unlink" => arity(cmd, n >= 1).map(|()| KvOp::Del { keys: rest.to_vec() })?,
        "exists" => arity(cmd, n >= 1).map(|()| KvOp::Exists { keys: rest.to_vec() })?,
        "dbsize" => arity(cmd, n == 0).map(|()| KvOp::DbSize)?,
        "flushall" | "flushdb" => {
            arity(cmd, n <= 1)?;
            if let Some(mode) = rest.first() {
                if !mode.eq_ignore_ascii_case(b"async") && !mode.eq_ignore_ascii_case(b"sync") {
                    return Err(syntax_error());
                }
            }
            KvOp::FlushAll
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
        "echo" => arity(cmd, n == 1).and_then(|()| reply(Reply::Bulk(rest[0].clone()))),
        "hello" => parse_hello(rest).map(ParsedCommand::Connection),
        "client" => parse_client(rest),
        "info" => connection(ConnCommand::Info { sections: rest.to_vec() }),
        "quit" => connection(ConnCommand::Quit),
        // We publish no command table; an empty one keeps redis-cli's hints and redis-benchmark happy.
        "command" => reply(match rest.first() {
            Some(sub) if sub.eq_ignore_ascii_case(b"count") => Reply::Integer(0),
            _ => Reply::Array(Vec::new()),
        }),
        "config" => arity(cmd, n >= 1).and_then(|()| parse_config(rest)),
        "select" => arity(cmd, n == 1).and_then(|()| match int_arg(&rest[0])? {
            // Only database 0 exists; a replicated multi-database keyspace is not worth the complexity.
            0 => reply(Reply::ok()),
            _ => Err(Reply::error("ERR DB index is out of range")),
        }),
        _ => return None,
    })
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
