//! The scripts `EVALSHA` can name on this node: `SCRIPT LOAD` and `EVAL` add to it, `SCRIPT FLUSH`
//! empties it. As in Redis, the cache is the node's own and is lost on restart (a client answered
//! `-NOSCRIPT` loads the script again, which redis-py's `Script` does by itself); the log carries
//! every script's body, so replicas never need it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use crate::raftkv::command::{ParsedCommand, ScriptCommand};
use crate::raftkv::resp::Reply;
use crate::raftkv::script;
use crate::raftkv::store::KvOp;

/// Most bytes of script bodies cached; past it the cache starts over (clients reload on
/// `-NOSCRIPT`), so a client loading ever new scripts cannot grow the node without bound.
const MAX_CACHED_BYTES: usize = 64 << 20;

/// Redis' reply to `EVALSHA` of a script it does not have.
pub(super) const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

/// Script bodies by SHA-1 (lowercase hex).
#[derive(Default)]
pub(super) struct ScriptCache {
    scripts: Mutex<(HashMap<String, Bytes>, usize)>,
}

impl ScriptCache {
    /// Caches `body` (an `EVAL`'s) and returns its SHA-1.
    pub(super) fn insert(&self, body: Bytes) -> String {
        let sha = script::sha1_hex(&body);
        let mut guard = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, bytes) = &mut *guard;
        if !map.contains_key(&sha) {
            if *bytes + body.len() > MAX_CACHED_BYTES {
                map.clear();
                *bytes = 0;
            }
            *bytes += body.len();
            map.insert(sha.clone(), body);
        }
        sha
    }

    fn get(&self, sha: &str) -> Option<Bytes> {
        self.scripts.lock().unwrap_or_else(PoisonError::into_inner).0.get(sha).cloned()
    }

    /// A script command as what the server does with it: `EVALSHA` as the `EVAL` of the cached
    /// body (or `-NOSCRIPT`, a reply rather than an error, so that inside `MULTI` it fails alone
    /// at `EXEC`, as in Redis); `SCRIPT ...` answered at once.
    pub(super) fn resolve(&self, command: ScriptCommand) -> ParsedCommand {
        let reply = ParsedCommand::Reply;
        match command {
            ScriptCommand::EvalSha { sha, keys, args, read_only } => match self.get(&sha) {
                Some(script) => ParsedCommand::Replicate(KvOp::Eval { script, keys, args, read_only }),
                None => reply(Reply::error(NOSCRIPT)),
            },
            ScriptCommand::Load(body) => match script::check_compiles(&body) {
                Ok(()) => reply(Reply::Bulk(Bytes::from(self.insert(body)))),
                Err(error) => reply(Reply::Error(error)),
            },
            ScriptCommand::Exists(shas) => {
                let known = |sha: &Bytes| self.get(&String::from_utf8_lossy(sha).to_ascii_lowercase()).is_some();
                reply(Reply::Array(shas.iter().map(|sha| Reply::Integer(i64::from(known(sha)))).collect()))
            }
            ScriptCommand::Flush => {
                *self.scripts.lock().unwrap_or_else(PoisonError::into_inner) = Default::default();
                reply(Reply::ok())
            }
        }
    }
}
