//! `EVAL`: Redis' Lua scripts, run by every replica as it applies the entry that carries them.
//!
//! # Why every replica runs the script
//!
//! A script is a small program over the keyspace (redis-py's `Lock` releases its lock with one:
//! "delete the key if it still holds my token"), and it must run atomically: nothing may happen
//! between its reads and its writes. Raft gives that for free if the script is the log entry: the
//! entry carries the script's source, keys and arguments ([`KvOp::Eval`]), and every replica runs
//! it against its own store at the same index, so they stay identical as long as the script is a
//! deterministic function of the store, its arguments and the entry's time. Redis 7 instead
//! replicates a script's effects; with one log shared by all replicas there is nothing to gain
//! from that and a second format to keep.
//!
//! # What keeps scripts deterministic
//!
//! - Only Lua's `table`, `string` and `math` libraries are loaded (no `os`, `io`, `debug`,
//!   `package`; `print`, `load*`, `dofile`, `collectgarbage` are removed).
//! - `math.random` is a fixed-seed generator, reseeded for each script, as in Redis.
//! - `tostring` of a table, function or coroutine gives its type name, not its address.
//! - `redis.call` runs data commands only; the ones whose answer depends on the node (`TIME`,
//!   `INFO`, ...) or on the connection (`SELECT`, `CLIENT`) are refused, as are transactions and
//!   scripts inside scripts.
//! - A script stops after [`MAX_INSTRUCTIONS`] Lua instructions or [`MEMORY_LIMIT`] bytes, counted
//!   the same way on every replica, so a runaway script stops at the same point everywhere instead
//!   of holding the apply of every node forever. What it wrote before stays, as after any script
//!   error in Redis (scripts are not rolled back).
//!
//! The instruction count bounds the Lua a script runs, not the work inside one library call: a
//! loop that copies large strings (`s .. s`, `string.rep`) costs more per instruction, up to the
//! heap limit per call. Like a Redis script, an `EVAL` is code its sender trusts the server with;
//! unlike Redis there is no `SCRIPT KILL` (killing it on one replica would make them differ), so
//! a node open to untrusted clients wants `requirepass`.
//!
//! Iterating with `pairs` over a table keyed by tables or functions visits them in address order,
//! which may differ between replicas; Redis documents the same caveat for scripts it replicates
//! verbatim. Keys of every other kind (strings, numbers) iterate identically.
//!
//! Lua 5.1 is what Redis embeds, so scripts written for Redis (`unpack`, `table.getn`) run as they
//! are. The interpreter is compiled from source with the crate (mlua's `vendored` feature).

use std::cell::RefCell;

use bytes::Bytes;
use mlua::{HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::command::{self, ParsedCommand};
use super::resp::Reply;
use super::store::{KvOp, KvResult, KvStore};

/// Lua instructions a script may run (about half a second of plain Lua here): beyond, it fails
/// with [`INSTRUCTION_LIMIT_ERROR`].
pub const MAX_INSTRUCTIONS: u64 = 100_000_000;
/// Bytes the Lua heap of one script may hold. Small, because it also bounds what one library call
/// (`string.rep`, a concatenation) can cost, which the instruction count does not see.
pub const MEMORY_LIMIT: usize = 16 << 20;
/// Deepest nesting of tables a script may return.
pub const MAX_REPLY_DEPTH: usize = 64;
/// Lua instructions between two checks of the instruction budget.
const HOOK_EVERY: u32 = 10_000;
/// The error of a script that ran out of instructions.
pub const INSTRUCTION_LIMIT_ERROR: &str = "ERR script exceeded the instruction limit; what it wrote before stays";

/// One element of a script's reply, flattened in pre-order: an array is its length followed by its
/// elements, so that decoding a reply (a follower reads the leader's) never recurses however deep a
/// hostile one nests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScriptItem {
    /// Lua `nil` or `false`: a null reply.
    Nil,
    /// A Lua number (truncated toward zero) or `true` (1).
    Integer(i64),
    /// A Lua string.
    Bulk(Bytes),
    /// A table `{ok = "..."}` (`redis.status_reply`).
    Status(Bytes),
    /// A table `{err = "..."}` (`redis.error_reply`), or the script's failure.
    Error(Bytes),
    /// An array of this many items (the ones that follow).
    Array(u32),
}

/// The SHA-1 of a script's body in lowercase hex: its name for `EVALSHA` and `SCRIPT EXISTS`.
pub fn sha1_hex(body: &[u8]) -> String {
    let digest = Sha1::digest(body);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `body` compiles (what `SCRIPT LOAD` checks before it caches a script); the error
/// reads as Redis words it.
pub fn check_compiles(body: &[u8]) -> Result<(), String> {
    let lua = sandbox().map_err(|e| format!("ERR Error compiling script: {e}"))?;
    lua.load(body).set_name("@user_script").into_function().map(drop).map_err(|e| compile_error(&e))
}

fn compile_error(error: &mlua::Error) -> String {
    format!("ERR Error compiling script (new function): {}", one_line(error))
}

/// An error's message without mlua's stack traceback.
fn one_line(error: &mlua::Error) -> String {
    let text = match error {
        mlua::Error::CallbackError { cause, .. } => return one_line(cause),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or("").to_owned()
}

/// A Lua state with only the deterministic libraries (see the module docs).
fn sandbox() -> mlua::Result<Lua> {
    let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::new())?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let globals = lua.globals();
    for name in ["print", "load", "loadstring", "loadfile", "dofile", "collectgarbage", "getfenv", "setfenv"] {
        globals.raw_set(name, Value::Nil)?;
    }
    lua.load(
        r#"
        local raw_tostring = tostring
        tostring = function(v)
            local t = type(v)
            if t == "table" or t == "function" or t == "thread" or t == "userdata" then return t end
            return raw_tostring(v)
        end
        "#,
    )
    .exec()?;
    Ok(lua)
}

/// A fixed-seed generator for `math.random` (splitmix64), reseeded for every script.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Lua's `math.random([m [, n]])`: a float in [0, 1), or an integer in [1, m] or [m, n].
    fn lua_random(&mut self, args: &MultiValue) -> mlua::Result<f64> {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let bound = |v: &Value| match v {
            Value::Integer(i) => Ok(*i as f64),
            Value::Number(n) => Ok(n.floor()),
            _ => Err(mlua::Error::runtime("bad argument to 'random' (number expected)")),
        };
        let (low, high) = match args.len() {
            0 => return Ok(unit),
            1 => (1.0, bound(&args[0])?),
            2 => (bound(&args[0])?, bound(&args[1])?),
            _ => return Err(mlua::Error::runtime("wrong number of arguments to 'random'")),
        };
        if low > high {
            return Err(mlua::Error::runtime("bad argument to 'random' (interval is empty)"));
        }
        Ok((low + (unit * (high - low + 1.0)).floor()).min(high))
    }
}

/// Runs `body` with `KEYS` and `ARGV` against `store` (the entry's database and clock are already
/// in force): `redis.call` runs data commands through [`KvStore::execute`](super::store::KvStore).
/// With `read_only` (`EVAL_RO`), a command that writes is refused. Every failure is part of the
/// answer, never a panic: the script's reply, or its error.
pub fn run(store: &mut KvStore, body: &[u8], keys: Vec<Bytes>, args: Vec<Bytes>, read_only: bool) -> KvResult {
    let items = match run_lua(store, body, keys, args, read_only) {
        Ok(items) => items,
        Err(message) => vec![ScriptItem::Error(Bytes::from(message))],
    };
    KvResult::Script(items)
}

fn run_lua(
    store: &mut KvStore,
    body: &[u8],
    keys: Vec<Bytes>,
    args: Vec<Bytes>,
    read_only: bool,
) -> Result<Vec<ScriptItem>, String> {
    let lua = sandbox().map_err(|e| format!("ERR cannot start the script interpreter: {e}"))?;
    let function = lua.load(body).set_name("@user_script").into_function().map_err(|e| compile_error(&e))?;
    let store = RefCell::new(store);
    let random = RefCell::new(Random(0));
    let executed = std::cell::Cell::new(0u64);
    lua.set_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_lua, _debug| {
        executed.set(executed.get() + u64::from(HOOK_EVERY));
        if executed.get() > MAX_INSTRUCTIONS {
            Err(mlua::Error::runtime(INSTRUCTION_LIMIT_ERROR))
        } else {
            Ok(VmState::Continue)
        }
    });
    let result = lua.scope(|scope| {
        let globals = lua.globals();
        globals.set(
            "KEYS",
            lua.create_sequence_from(keys.iter().map(|k| lua.create_string(k)).collect::<Result<Vec<_>, _>>()?)?,
        )?;
        globals.set(
            "ARGV",
            lua.create_sequence_from(args.iter().map(|a| lua.create_string(a)).collect::<Result<Vec<_>, _>>()?)?,
        )?;
        let redis = lua.create_table()?;
        let call = |raise: bool| {
            let store = &store;
            scope.create_function_mut(move |lua, call_args: MultiValue| {
                let outcome = redis_call(&mut store.borrow_mut(), &call_args, read_only);
                match outcome {
                    Ok(result) => to_lua(lua, result),
                    Err(message) if raise => Err(mlua::Error::runtime(message)),
                    Err(message) => error_table(lua, &message),
                }
            })
        };
        redis.set("call", call(true)?)?;
        redis.set("pcall", call(false)?)?;
        redis.set(
            "error_reply",
            lua.create_function(|lua, message: mlua::String| error_table(lua, &message.to_str()?))?,
        )?;
        redis.set(
            "status_reply",
            lua.create_function(|lua, status: mlua::String| {
                let table = lua.create_table()?;
                table.set("ok", status)?;
                Ok(Value::Table(table))
            })?,
        )?;
        redis.set("sha1hex", lua.create_function(|_, body: mlua::String| Ok(sha1_hex(&body.as_bytes())))?)?;
        // Logging would reach one node's log per replica; scripts may call it, it does nothing.
        redis.set("log", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        for (name, level) in [("LOG_DEBUG", 0), ("LOG_VERBOSE", 1), ("LOG_NOTICE", 2), ("LOG_WARNING", 3)] {
            redis.set(name, level)?;
        }
        // Replication switches: every replica runs the whole script, so there is nothing to choose.
        redis.set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        for (name, flag) in [("REPL_NONE", 0), ("REPL_AOF", 1), ("REPL_SLAVE", 2), ("REPL_REPLICA", 2), ("REPL_ALL", 3)]
        {
            redis.set(name, flag)?;
        }
        redis.set("replicate_commands", lua.create_function(|_, ()| Ok(true))?)?;
        globals.set("redis", redis)?;
        let math: Table = globals.get("math")?;
        let random_fn = {
            let random = &random;
            scope.create_function_mut(move |_, args: MultiValue| random.borrow_mut().lua_random(&args))?
        };
        math.set("random", random_fn)?;
        let seed_fn = {
            let random = &random;
            scope.create_function_mut(move |_, seed: f64| {
                *random.borrow_mut() = Random(seed as i64 as u64);
                Ok(())
            })?
        };
        math.set("randomseed", seed_fn)?;
        let value: Value = function.call(())?;
        from_lua(&value)
    });
    result.map_err(|e| {
        let message = one_line(&e);
        if message.contains(INSTRUCTION_LIMIT_ERROR) {
            INSTRUCTION_LIMIT_ERROR.to_owned()
        } else if let Some(start) = message.find("ERR ").or_else(|| message.find("WRONGTYPE ")) {
            // An error a `redis.call` raised: the command's own error, as Redis reports it.
            message[start..].to_owned()
        } else {
            format!("ERR Error running script: {message}")
        }
    })
}

/// `redis.call(name, ...)`: the arguments as a command, run on the store. `Err` is the command's
/// error text.
fn redis_call(store: &mut KvStore, call_args: &MultiValue, read_only: bool) -> Result<KvResult, String> {
    if call_args.is_empty() {
        return Err("ERR Please specify at least one argument for this redis lib call".to_owned());
    }
    let mut args = Vec::with_capacity(call_args.len());
    for value in call_args.iter() {
        args.push(match value {
            Value::String(s) => Bytes::copy_from_slice(&s.as_bytes()),
            Value::Integer(i) => Bytes::from(i.to_string()),
            Value::Number(n) => Bytes::from(lua_number_text(*n)),
            _ => return Err("ERR Lua redis lib command arguments must be strings or integers".to_owned()),
        });
    }
    let op = match command::parse_command(&args) {
        Ok(ParsedCommand::Replicate(op)) => op,
        Ok(ParsedCommand::Reply(_) | ParsedCommand::Connection(_) | ParsedCommand::Script(_)) => {
            return Err("ERR This Redis command is not allowed from script".to_owned());
        }
        Err(Reply::Error(text)) => return Err(text),
        Err(_) => return Err("ERR Unknown Redis command called from script".to_owned()),
    };
    if matches!(op, KvOp::Exec { .. } | KvOp::InDb { .. } | KvOp::Eval { .. }) {
        return Err("ERR This Redis command is not allowed from script".to_owned());
    }
    if read_only && !op.is_read_only() {
        return Err("ERR Write commands are not allowed from read-only scripts.".to_owned());
    }
    match store.execute(op) {
        KvResult::Error(error) => Err(error.to_string()),
        result => Ok(result),
    }
}

/// A Lua number as Redis passes it to a command: integral values without a fraction.
fn lua_number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e17 { format!("{}", n as i64) } else { format!("{n}") }
}

fn error_table(lua: &Lua, message: &str) -> mlua::Result<Value> {
    let table = lua.create_table()?;
    table.set("err", message)?;
    Ok(Value::Table(table))
}

/// A command's answer as the script sees it (Redis' RESP2-to-Lua conversion).
fn to_lua(lua: &Lua, result: KvResult) -> mlua::Result<Value> {
    let status = |text: &str| -> mlua::Result<Value> {
        let table = lua.create_table()?;
        table.set("ok", text)?;
        Ok(Value::Table(table))
    };
    let bulk = |b: &[u8]| lua.create_string(b).map(Value::String);
    let list = |items: Vec<Value>| lua.create_sequence_from(items).map(Value::Table);
    Ok(match result {
        KvResult::Ok => status("OK")?,
        KvResult::Nil | KvResult::Aborted => Value::Boolean(false),
        KvResult::Value(v) => bulk(&v)?,
        KvResult::Integer(n) => Value::Integer(n as _),
        KvResult::Values(values) => list(
            values
                .iter()
                .map(|v| v.as_ref().map_or(Ok(Value::Boolean(false)), |b| bulk(b)))
                .collect::<mlua::Result<_>>()?,
        )?,
        KvResult::Error(error) => error_table(lua, &error.to_string())?,
        KvResult::Type(kind) => status(kind.map_or("none", |k| k.name()))?,
        KvResult::Pairs(pairs) => {
            list(pairs.iter().flat_map(|(f, v)| [bulk(f), bulk(v)]).collect::<mlua::Result<_>>()?)?
        }
        KvResult::Scan { cursor, items } => {
            let page = list(items.iter().map(|i| bulk(i)).collect::<mlua::Result<_>>()?)?;
            list(vec![bulk(cursor.to_string().as_bytes())?, page])?
        }
        KvResult::Versions(versions) => list(versions.iter().map(|&v| Value::Integer(v as _)).collect())?,
        KvResult::Multi(_) | KvResult::Script(_) => error_table(lua, "ERR unexpected nested reply")?,
    })
}

/// The script's return value as a reply (Redis' Lua-to-RESP conversion), flattened.
fn from_lua(value: &Value) -> mlua::Result<Vec<ScriptItem>> {
    let mut items = Vec::new();
    push_value(value, 0, &mut items)?;
    Ok(items)
}

fn push_value(value: &Value, depth: usize, items: &mut Vec<ScriptItem>) -> mlua::Result<()> {
    match value {
        Value::Nil | Value::Boolean(false) => items.push(ScriptItem::Nil),
        Value::Boolean(true) => items.push(ScriptItem::Integer(1)),
        Value::Integer(i) => items.push(ScriptItem::Integer(*i)),
        Value::Number(n) => items.push(ScriptItem::Integer(if n.is_finite() { *n as i64 } else { 0 })),
        Value::String(s) => items.push(ScriptItem::Bulk(Bytes::copy_from_slice(&s.as_bytes()))),
        Value::Table(table) => {
            if let Ok(Value::String(err)) = table.raw_get::<Value>("err") {
                items.push(ScriptItem::Error(Bytes::copy_from_slice(&err.as_bytes())));
            } else if let Ok(Value::String(ok)) = table.raw_get::<Value>("ok") {
                items.push(ScriptItem::Status(Bytes::copy_from_slice(&ok.as_bytes())));
            } else {
                if depth >= MAX_REPLY_DEPTH {
                    return Err(mlua::Error::runtime(format!("reached the reply nesting limit of {MAX_REPLY_DEPTH}")));
                }
                // Like Redis: the array ends at the first nil.
                let at = items.len();
                items.push(ScriptItem::Array(0));
                let mut len = 0u32;
                for i in 1.. {
                    let element: Value = table.raw_get(i)?;
                    if element.is_nil() {
                        break;
                    }
                    push_value(&element, depth + 1, items)?;
                    len += 1;
                }
                items[at] = ScriptItem::Array(len);
            }
        }
        _ => items.push(ScriptItem::Nil),
    }
    Ok(())
}

/// A script's reply for the client, built without recursion (the items may come from a peer).
pub fn reply_of(items: &[ScriptItem]) -> Reply {
    let malformed = || Reply::error("ERR malformed script reply");
    // Open arrays: the elements gathered so far and how many are still to come.
    let mut open: Vec<(Vec<Reply>, u32)> = Vec::new();
    let mut iter = items.iter();
    loop {
        let Some(item) = iter.next() else { return malformed() };
        let mut reply = match item {
            ScriptItem::Nil => Reply::Null,
            ScriptItem::Integer(n) => Reply::Integer(*n),
            ScriptItem::Bulk(b) => Reply::Bulk(b.clone()),
            ScriptItem::Status(s) => Reply::Simple(String::from_utf8_lossy(s).replace(['\r', '\n'], " ")),
            ScriptItem::Error(e) => {
                let text = String::from_utf8_lossy(e).replace(['\r', '\n'], " ");
                // A reply error needs a code; Redis adds "ERR" to one without.
                let has_code =
                    text.split(' ').next().is_some_and(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase()));
                Reply::Error(if has_code { text } else { format!("ERR {text}") })
            }
            ScriptItem::Array(0) => Reply::Array(Vec::new()),
            ScriptItem::Array(n) => {
                if open.len() >= MAX_REPLY_DEPTH {
                    return malformed();
                }
                open.push((Vec::with_capacity((*n).min(1024) as usize), *n));
                continue;
            }
        };
        // Close every array this item completes.
        loop {
            let Some((elements, left)) = open.last_mut() else {
                return if iter.next().is_none() { reply } else { malformed() };
            };
            elements.push(reply);
            *left -= 1;
            if *left > 0 {
                break;
            }
            let (elements, _) = open.pop().expect("checked above");
            reply = Reply::Array(elements);
        }
    }
}
