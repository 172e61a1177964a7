//! The store through the command parser, as the server drives it: parse, wrap, encode, apply, and the
//! result in Redis terms.

use bytes::Bytes;

use super::command::{ConnCommand, ParsedCommand, hello_reply, parse_command};
use super::resp::{Protocol, Reply};
use super::server::result_reply;
use super::store::*;
use crate::state_machine::{SnapshotImage, StateMachine};
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
        result_reply(self.kv.apply(self.index, command))
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
    // What the store did, as operators see it in INFO and the simulator checks it.
    let stats = h.kv.stats();
    assert_eq!((stats.deduplicated, stats.stale, stats.malformed), (3, 2, 0), "{stats:?}");
    assert_eq!(stats.executed, 13, "{stats:?}");
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
fn a_new_request_makes_its_session_the_most_recently_used() {
    let mut h = Harness { kv: KvStore::with_max_sessions(2), ..Harness::new() };
    h.run_session(1, 1, &["INCR", "n"]);
    h.run_session(2, 1, &["INCR", "n"]);
    h.run_session(1, 2, &["INCR", "n"]); // a new request on session 1: session 2 is now the oldest
    h.run_session(3, 1, &["INCR", "n"]); // so session 2 is evicted, not 1
    assert_eq!(h.kv.session_count(), 2);
    assert_eq!(h.run_session(1, 2, &["INCR", "n"]), Reply::Integer(3), "session 1 still deduplicates");
    assert_eq!(h.run_session(2, 1, &["INCR", "n"]), Reply::Integer(5), "session 2 was forgotten");
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
    let snap = h.kv.image();
    let mut copy = KvStore::new();
    copy.restore(&snap).unwrap();
    assert_eq!(copy.image(), snap);
    assert_eq!(copy.last_applied(), h.kv.last_applied());
    assert!(copy.restore(b"\xff").is_err());
    assert_eq!(copy.image(), snap);
    // The restored copy behaves identically, including expiry and dedup.
    let mut h2 = Harness { kv: copy, index: h.index, now_ms: h.now_ms };
    for hh in [&mut h, &mut h2] {
        assert_eq!(hh.run_session(4, 1, &["MSET", "b", "x"]), Reply::ok());
        hh.now_ms += 1001;
        assert_eq!(hh.run(&["MGET", "a", "b"]), Reply::Array(vec![Reply::Null, bulk("2")]));
    }
    assert_eq!(h.kv.image(), h2.kv.image());
}

#[test]
fn snapshot_is_frozen_while_the_store_goes_on() {
    let mut h = Harness::new();
    h.run(&["SET", "a", "1"]);
    h.run_session(4, 1, &["SET", "b", "2"]);
    let before = h.kv.image();
    let frozen = StateMachine::snapshot(&h.kv);
    // Writes after the capture (overwrite, delete, new key, new session) must not reach it.
    h.run(&["SET", "a", "changed"]);
    h.run(&["DEL", "b"]);
    h.run_session(5, 1, &["SET", "c", "3"]);
    assert_eq!(frozen.encode(), before.to_vec());
    assert_ne!(h.kv.image(), before);
    let mut copy = KvStore::new();
    copy.restore(&frozen.encode()).unwrap();
    assert_eq!(copy.image(), before);
}

#[test]
fn kv_image_golden_bytes() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v", "PX", "1000"]);
    h.run_session(7, 1, &["INCR", "n"]);
    // Version 1 (strings only), written by earlier releases, is still read: the same state.
    // 01 | 02 last_applied | c0 84 3d clock_ms 1000000 | 02 keys:
    //   01 'k' -> 01 'v', 01 a8 8c 3d expires 1001000 | 01 'n' -> 01 '1', 00 no expiry
    // | 01 session: 07 id -> 01 last_seq, 03 02 last_reply Integer(1), 02 last_used
    let v1 = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/kv-image-v1.bin")).unwrap();
    assert_eq!(v1[0], 1);
    let mut from_v1 = KvStore::new();
    from_v1.restore(&v1).unwrap();
    assert_eq!(from_v1.last_applied(), 2);
    let query = |kv: &KvStore, key: &str| kv.query(&KvOp::Get { key: Bytes::copy_from_slice(key.as_bytes()) }, 0);
    assert_eq!(query(&from_v1, "k"), Some(KvResult::Value(Bytes::from_static(b"v"))));
    assert_eq!(query(&from_v1, "n"), Some(KvResult::Value(Bytes::from_static(b"1"))));
    // Version 2: each value is typed (00 string, 01 hash) and carries its version (the index of its
    // last write): 'k' -> 00 01 'v' | 01 a8 8c 3d | 01 version 1; 'n' -> 00 01 '1' | 00 | 02 version 2.
    let image = h.kv.image();
    let committed = crate::golden::check("kv-image-v2.bin", &image);
    assert_eq!(committed[0], KV_IMAGE_VERSION);
    let mut copy = KvStore::new();
    copy.restore(&committed).unwrap();
    assert_eq!(copy.image(), image);
    assert_eq!(copy.last_applied(), 2);
    // A version 1 image becomes version 2 with every key at the image's last applied index.
    let mut v1_versions = h.kv.clone();
    v1_versions.restore(&v1).unwrap();
    let versions =
        v1_versions.query(&KvOp::Versions { keys: vec![Bytes::from_static(b"k"), Bytes::from_static(b"x")] }, 0);
    assert_eq!(versions, Some(KvResult::Versions(vec![2, 0])));
    // Another version is refused by name, the store untouched.
    let mut other = committed.clone();
    other[0] = 9;
    let e = copy.restore(&other).unwrap_err();
    assert!(e.to_string().contains("format version 9"), "{e}");
    assert_eq!(copy.image(), image);
    // A version 2 body under version 3's number lacks the databases: refused, not misread.
    other[0] = KV_IMAGE_VERSION_DBS;
    assert!(copy.restore(&other).is_err());
    assert_eq!(copy.image(), image);
    assert!(copy.restore(b"").is_err());
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
    assert_eq!(parse_command(&args(&["INCRBY", "k", "1x"])), Err(err("ERR value is not an integer or out of range")));
    assert_eq!(parse_command(&args(&["SELECT", "16"])), Err(err("ERR DB index is out of range")));
    assert_eq!(parse_command(&args(&["SELECT", "-1"])), Err(err("ERR DB index is out of range")));
    assert_eq!(parse_command(&args(&["SELECT", "x"])), Err(err("ERR value is not an integer or out of range")));
    assert_eq!(parse_command(&args(&["FLUSHDB", "now"])), Err(err("ERR syntax error")));
    assert_eq!(parse_command(&args(&["CLIENT", "KILL"])), Err(err("ERR syntax error")));
    assert_eq!(parse_command(&args(&["CLIENT", "NOPE"])), Err(err("ERR unknown subcommand 'NOPE'. Try CLIENT HELP.")));
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
    assert_eq!(parse_command(&args(&["HELLO", "3", "AUTH", "u"])), Err(err("ERR Syntax error in HELLO option 'AUTH'")));
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
    let Reply::Array(table) = reply(&["COMMAND"]) else { panic!("COMMAND is an array") };
    assert_eq!(reply(&["COMMAND", "COUNT"]), Reply::Integer(table.len() as i64));
    // Refused so that redis-cli falls back to its own complete help.
    assert!(matches!(parse_command(&args(&["COMMAND", "DOCS"])), Err(Reply::Error(e)) if e.contains("not served")));
    assert_eq!(reply(&["CONFIG", "GET", "save"]), Reply::Map(vec![]));
    assert_eq!(conn(&["SELECT", "15"]), ConnCommand::Select(15));
    assert_eq!(
        conn(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
        ConnCommand::ClientSetInfo { name: true, value: Bytes::from_static(b"redis-py") }
    );
    assert_eq!(conn(&["QUIT"]), ConnCommand::Quit);
    assert_eq!(conn(&["CLIENT", "ID"]), ConnCommand::ClientId);
    assert_eq!(conn(&["client", "GetName"]), ConnCommand::ClientGetName);
    assert_eq!(conn(&["CLIENT", "SETNAME", "worker-1"]), ConnCommand::ClientSetName(Bytes::from_static(b"worker-1")));
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
        (key.clone(), val.clone()).prop_map(|(k, v)| vec!["MSET".into(), k, v]),
        Just(vec!["DBSIZE".to_owned()]),
    ];
    // The commands added with hashes, TTLs and scans: every derived index (expiry order, scan order)
    // must come out of a snapshot exactly as the live store built it.
    let more = prop_oneof![
        (key.clone(), -5i64..60).prop_map(|(k, ms)| vec!["PEXPIRE".into(), k, ms.to_string()]),
        key.clone().prop_map(|k| vec!["PERSIST".into(), k]),
        (key.clone(), key.clone(), val.clone()).prop_map(|(k, f, v)| vec!["HSET".into(), k, f, v]),
        (key.clone(), key.clone()).prop_map(|(k, f)| vec!["HDEL".into(), k, f]),
        (key.clone(), key.clone()).prop_map(|(k, f)| vec!["HINCRBY".into(), k, f, "3".into()]),
        (key.clone(), key.clone()).prop_map(|(a, b)| vec!["RENAME".into(), a, b]),
        (key.clone(), 1u64..40).prop_map(|(k, ms)| vec!["GETEX".into(), k, "PX".into(), ms.to_string()]),
        (0u64..3).prop_map(|c| vec!["SCAN".into(), c.to_string(), "COUNT".into(), "2".into()]),
        Just(vec!["RANDOMKEY".to_owned()]),
        (key.clone(), 0u64..4, val).prop_map(|(k, o, v)| vec!["SETRANGE".into(), k, o.to_string(), v]),
        key.clone().prop_map(|k| vec!["INCRBYFLOAT".into(), k, "1.5".into()]),
    ];
    let cmd = prop_oneof![3 => cmd, 2 => more];
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
                restored.restore(&a.image()).unwrap();
            } else if i > half {
                prop_assert_eq!(&ra, &restored.apply(index, cmd));
            }
            prop_assert_eq!(a.image(), b.image());
        }
        if log.len() > 1 {
            prop_assert_eq!(a.image(), restored.image());
        }
    }
}

#[test]
fn session_of_reads_the_leading_fields_of_any_request() {
    let h = Harness::new();
    for (session, seq, words) in
        [(0, 0, &["GET", "k"][..]), (7, 1, &["SET", "k", "v"]), (u64::MAX, u64::MAX - 1, &["DEL", "a", "b"])]
    {
        let req = match parse_command(&words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect::<Vec<_>>()) {
            Ok(ParsedCommand::Replicate(op)) => KvRequest { session, seq, now_ms: h.now_ms, op },
            other => panic!("{other:?}"),
        };
        assert_eq!(KvRequest::session_of(&req.encode()), Some((session, seq)));
    }
    assert_eq!(KvRequest::session_of(&[0xFF]), None);
}

#[test]
fn an_image_claiming_a_huge_map_is_refused_without_allocating_for_it() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v"]);
    let before = h.kv.image();
    // Version 1, last_applied 1, clock 0, then a key count of u64::MAX and nothing after it.
    let mut forged = vec![KV_IMAGE_VERSION, 1, 0];
    forged.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(h.kv.restore(&forged).is_err());
    assert_eq!(h.kv.image(), before);
}

/// `query` (reads served by ReadIndex, without the log) answers exactly what applying the same read
/// through the log would, at the reader's clock, and changes nothing; writes are refused.
#[test]
fn query_answers_like_apply_and_changes_nothing() {
    let mut h = Harness::new();
    let t0 = h.now_ms;
    h.run(&["SET", "a", "hello"]);
    h.run(&["SET", "ttl", "v", "PX", "100"]);
    h.run(&["SET", "later", "v", "PX", "5000"]);
    let reads: [&[&str]; 6] = [
        &["GET", "a"],
        &["GET", "ttl"],
        &["MGET", "a", "missing", "ttl", "later"],
        &["EXISTS", "a", "ttl", "a", "nope"],
        &["STRLEN", "a"],
        &["DBSIZE"],
    ];
    for now in [t0, t0 + 100, t0 + 101, t0 + 6000] {
        for words in reads {
            let mut reference = Harness { kv: h.kv.clone(), index: h.index, now_ms: now };
            let via_log = reference.run(words);
            let Ok(req) = h.request(0, 0, words) else { panic!("{words:?} parses") };
            let before = h.kv.image();
            let direct = h.kv.query(&req.op, now).map(result_reply);
            assert_eq!(direct, Some(via_log), "{words:?} at +{}ms", now - t0);
            assert_eq!(h.kv.image(), before, "query changed the store");
        }
    }
    // The store's own clock wins when it is ahead: an expired key never reads as alive again.
    h.now_ms = t0 + 200;
    h.run(&["SET", "b", "1"]);
    let Ok(req) = h.request(0, 0, &["GET", "ttl"]) else { panic!("parses") };
    assert_eq!(h.kv.query(&req.op, t0), Some(KvResult::Nil));
    for write in [
        &["SET", "a", "x"][..],
        &["DEL", "a"],
        &["INCR", "n"],
        &["APPEND", "a", "x"],
        &["MSET", "a", "b"],
        &["FLUSHALL"],
    ] {
        let Ok(req) = h.request(0, 0, write) else { panic!("{write:?} parses") };
        assert_eq!(h.kv.query(&req.op, t0), None, "{write:?} is not a read");
        assert!(!req.op.is_read_only());
    }
}

fn int(n: i64) -> Reply {
    Reply::Integer(n)
}

fn array(items: Vec<Reply>) -> Reply {
    Reply::Array(items)
}

#[test]
fn expire_ttl_persist_follow_the_logged_clock() {
    let mut h = Harness::new();
    let t0 = h.now_ms;
    h.run(&["SET", "k", "v"]);
    assert_eq!(h.run(&["TTL", "k"]), int(-1));
    assert_eq!(h.run(&["TTL", "missing"]), int(-2));
    assert_eq!(h.run(&["EXPIRE", "missing", "10"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "k", "10"]), int(1));
    assert_eq!(h.run(&["TTL", "k"]), int(10));
    assert_eq!(h.run(&["PTTL", "k"]), int(10_000));
    assert_eq!(h.run(&["PEXPIRETIME", "k"]), int((t0 + 10_000) as i64));
    assert_eq!(h.run(&["EXPIRETIME", "k"]), int(((t0 + 10_000) / 1000) as i64));
    // NX/XX/GT/LT.
    assert_eq!(h.run(&["EXPIRE", "k", "20", "NX"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "k", "5", "GT"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "k", "20", "GT"]), int(1));
    assert_eq!(h.run(&["EXPIRE", "k", "30", "LT"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "k", "15", "XX", "LT"]), int(1));
    assert_eq!(h.run(&["TTL", "k"]), int(15));
    assert_eq!(
        h.run(&["EXPIRE", "k", "1", "NX", "GT"]),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        h.run(&["EXPIRE", "k", "1", "GT", "LT"]),
        err("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(h.run(&["EXPIRE", "k", "1", "SOON"]), err("ERR Unsupported option SOON"));
    assert_eq!(h.run(&["PERSIST", "k"]), int(1));
    assert_eq!(h.run(&["PERSIST", "k"]), int(0));
    assert_eq!(h.run(&["TTL", "k"]), int(-1));
    // No TTL counts as infinite: GT never applies, LT always does.
    assert_eq!(h.run(&["EXPIRE", "k", "100", "GT"]), int(0));
    assert_eq!(h.run(&["PEXPIRE", "k", "100", "LT"]), int(1));
    // Time moves only with logged entries: 101 ms later the key is gone on every replica.
    h.now_ms = t0 + 101;
    assert_eq!(h.run(&["GET", "k"]), Reply::Null);
    assert_eq!(h.run(&["TTL", "k"]), int(-2));
    // A deadline already past deletes at once (and counts as set); absolute deadlines too.
    h.run(&["SET", "a", "1"]);
    assert_eq!(h.run(&["EXPIRE", "a", "-5"]), int(1));
    assert_eq!(h.run(&["EXISTS", "a"]), int(0));
    h.run(&["SET", "b", "1"]);
    let at = ((h.now_ms + 2000) / 1000).to_string();
    assert_eq!(h.run(&["EXPIREAT", "b", &at]), int(1));
    assert!(matches!(h.run(&["TTL", "b"]), Reply::Integer(1 | 2)));
    assert_eq!(h.run(&["PEXPIREAT", "b", "1"]), int(1));
    assert_eq!(h.run(&["EXISTS", "b"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "b", "99999999999999999"]), err("ERR invalid expire time in 'expire' command"));
}

#[test]
fn setex_getex_getdel_getset_setnx() {
    let mut h = Harness::new();
    let t0 = h.now_ms;
    assert_eq!(h.run(&["SETEX", "k", "10", "v"]), Reply::ok());
    assert_eq!(h.run(&["PTTL", "k"]), int(10_000));
    assert_eq!(h.run(&["PSETEX", "p", "500", "v"]), Reply::ok());
    assert_eq!(h.run(&["PTTL", "p"]), int(500));
    assert_eq!(h.run(&["SETEX", "k", "0", "v"]), err("ERR invalid expire time in 'setex' command"));
    assert_eq!(h.run(&["PSETEX", "k", "-1", "v"]), err("ERR invalid expire time in 'psetex' command"));
    assert_eq!(h.run(&["GETEX", "k"]), bulk("v"));
    assert_eq!(h.run(&["PTTL", "k"]), int(10_000));
    assert_eq!(h.run(&["GETEX", "k", "PERSIST"]), bulk("v"));
    assert_eq!(h.run(&["TTL", "k"]), int(-1));
    assert_eq!(h.run(&["GETEX", "k", "PX", "300"]), bulk("v"));
    assert_eq!(h.run(&["PTTL", "k"]), int(300));
    let at = (t0 + 700).to_string();
    assert_eq!(h.run(&["GETEX", "k", "PXAT", &at]), bulk("v"));
    assert_eq!(h.run(&["PTTL", "k"]), int(700));
    assert_eq!(h.run(&["GETEX", "k", "EX", "0"]), err("ERR invalid expire time in 'getex' command"));
    assert_eq!(h.run(&["GETEX", "k", "EX"]), err("ERR syntax error"));
    assert_eq!(h.run(&["GETEX", "nope", "EX", "5"]), Reply::Null);
    assert_eq!(h.run(&["GETSET", "k", "w"]), bulk("v"));
    // GETSET clears the TTL, like SET.
    assert_eq!(h.run(&["TTL", "k"]), int(-1));
    assert_eq!(h.run(&["GETSET", "fresh", "1"]), Reply::Null);
    assert_eq!(h.run(&["GETDEL", "k"]), bulk("w"));
    assert_eq!(h.run(&["GETDEL", "k"]), Reply::Null);
    assert_eq!(h.run(&["SETNX", "k", "a"]), int(1));
    assert_eq!(h.run(&["SETNX", "k", "b"]), int(0));
    assert_eq!(h.run(&["GET", "k"]), bulk("a"));
    assert_eq!(h.run(&["MSETNX", "k", "1", "other", "2"]), int(0));
    assert_eq!(h.run(&["EXISTS", "other"]), int(0));
    assert_eq!(h.run(&["MSETNX", "x", "1", "y", "2"]), int(1));
    assert_eq!(h.run(&["MGET", "x", "y"]), array(vec![bulk("1"), bulk("2")]));
}

#[test]
fn ranges_and_floats() {
    let mut h = Harness::new();
    h.run(&["SET", "s", "This is a string"]);
    assert_eq!(h.run(&["GETRANGE", "s", "0", "3"]), bulk("This"));
    assert_eq!(h.run(&["GETRANGE", "s", "-3", "-1"]), bulk("ing"));
    assert_eq!(h.run(&["GETRANGE", "s", "0", "-1"]), bulk("This is a string"));
    assert_eq!(h.run(&["GETRANGE", "s", "10", "100"]), bulk("string"));
    assert_eq!(h.run(&["GETRANGE", "s", "5", "3"]), bulk(""));
    assert_eq!(h.run(&["GETRANGE", "missing", "0", "-1"]), bulk(""));
    assert_eq!(h.run(&["SETRANGE", "s", "10", "Redis!"]), int(16));
    assert_eq!(h.run(&["GET", "s"]), bulk("This is a Redis!"));
    assert_eq!(h.run(&["SETRANGE", "pad", "3", "x"]), int(4));
    assert_eq!(h.run(&["GET", "pad"]), Reply::Bulk(Bytes::from_static(b"\0\0\0x")));
    assert_eq!(h.run(&["SETRANGE", "none", "5", ""]), int(0));
    assert_eq!(h.run(&["EXISTS", "none"]), int(0));
    assert_eq!(h.run(&["SETRANGE", "s", "-1", "x"]), err("ERR offset is out of range"));
    assert_eq!(
        h.run(&["SETRANGE", "s", "536870911", "xx"]),
        err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    );
    h.run(&["SET", "f", "10.50"]);
    assert_eq!(h.run(&["INCRBYFLOAT", "f", "0.1"]), bulk("10.6"));
    assert_eq!(h.run(&["INCRBYFLOAT", "f", "-5"]), bulk("5.6"));
    assert_eq!(h.run(&["INCRBYFLOAT", "g", "5.0e3"]), bulk("5000"));
    assert_eq!(h.run(&["INCRBYFLOAT", "s", "1"]), err("ERR value is not a valid float"));
    assert_eq!(h.run(&["INCRBYFLOAT", "f", "abc"]), err("ERR value is not a valid float"));
    assert_eq!(h.run(&["INCRBYFLOAT", "f", " 1"]), err("ERR value is not a valid float"));
    h.run(&["SET", "big", "1.7e308"]);
    assert_eq!(h.run(&["INCRBYFLOAT", "big", "1.7e308"]), err("ERR increment would produce NaN or Infinity"));
    assert_eq!(h.run(&["GET", "big"]), bulk("1.7e308"));
}

#[test]
fn keys_type_rename_randomkey_scan() {
    let mut h = Harness::new();
    for k in ["user:1", "user:2", "order:1", "x"] {
        h.run(&["SET", k, "v"]);
    }
    h.run(&["HSET", "user:3", "name", "ann"]);
    assert_eq!(h.run(&["TYPE", "user:1"]), Reply::Simple("string".into()));
    assert_eq!(h.run(&["TYPE", "user:3"]), Reply::Simple("hash".into()));
    assert_eq!(h.run(&["TYPE", "nope"]), Reply::Simple("none".into()));
    assert_eq!(h.run(&["KEYS", "user:*"]), array(vec![bulk("user:1"), bulk("user:2"), bulk("user:3")]));
    assert_eq!(h.run(&["KEYS", "?"]), array(vec![bulk("x")]));
    // RENAME moves value and TTL, replacing the target.
    h.run(&["EXPIRE", "user:1", "100"]);
    assert_eq!(h.run(&["RENAME", "user:1", "x"]), Reply::ok());
    assert_eq!(h.run(&["TTL", "x"]), int(100));
    assert_eq!(h.run(&["EXISTS", "user:1"]), int(0));
    assert_eq!(h.run(&["RENAME", "user:1", "y"]), err("ERR no such key"));
    assert_eq!(h.run(&["RENAMENX", "x", "user:2"]), int(0));
    assert_eq!(h.run(&["RENAMENX", "x", "z"]), int(1));
    assert_eq!(h.run(&["RENAME", "z", "z"]), Reply::ok());
    assert_eq!(h.run(&["GET", "z"]), bulk("v"));
    // RANDOMKEY: some live key, the same on every replica for the same log.
    let Reply::Bulk(k) = h.run(&["RANDOMKEY"]) else { panic!("a key") };
    assert_eq!(h.run(&["EXISTS", std::str::from_utf8(&k).unwrap()]), int(1));
    assert_eq!(Harness::new().run(&["RANDOMKEY"]), Reply::Null);
    // SCAN walks every key exactly once when nothing changes, in pages of about COUNT.
    let mut h = Harness::new();
    for i in 0..100 {
        h.run(&["SET", &format!("k{i}"), "v"]);
    }
    h.run(&["HSET", "h", "f", "v"]);
    let scan_all = |h: &mut Harness, extra: &[&str]| {
        let (mut cursor, mut seen, mut pages) = ("0".to_string(), Vec::new(), 0);
        loop {
            let mut words = vec!["SCAN", cursor.as_str()];
            words.extend_from_slice(extra);
            let Reply::Array(reply) = h.run(&words) else { panic!("scan reply") };
            let [Reply::Bulk(next), Reply::Array(keys)] = &reply[..] else { panic!("scan shape {reply:?}") };
            seen.extend(keys.iter().map(|k| if let Reply::Bulk(b) = k { b.clone() } else { panic!() }));
            pages += 1;
            cursor = String::from_utf8(next.to_vec()).unwrap();
            if cursor == "0" {
                return (seen, pages);
            }
        }
    };
    let (mut seen, pages) = scan_all(&mut h, &["COUNT", "7"]);
    assert!(pages >= 14, "pages of about 7 keys: {pages}");
    seen.sort();
    let mut want: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("k{i}"))).collect();
    want.push(Bytes::from_static(b"h"));
    want.sort();
    assert_eq!(seen, want);
    let (seen, _) = scan_all(&mut h, &["MATCH", "k1*", "COUNT", "1000"]);
    assert_eq!(seen.len(), 11);
    let (seen, _) = scan_all(&mut h, &["TYPE", "hash"]);
    assert_eq!(seen, vec![Bytes::from_static(b"h")]);
    let (seen, _) = scan_all(&mut h, &["TYPE", "list"]);
    assert!(seen.is_empty());
    assert_eq!(h.run(&["SCAN", "0", "TYPE", "blob"]), err("ERR unknown type name 'blob'"));
    assert_eq!(h.run(&["SCAN", "x"]), err("ERR invalid cursor"));
    assert_eq!(h.run(&["SCAN", "0", "COUNT", "0"]), err("ERR syntax error"));
}

/// Redis' guarantee: a key present for the whole scan is returned, whatever is added and removed
/// between the pages.
#[test]
fn scan_returns_every_key_that_stays_while_others_come_and_go() {
    let mut h = Harness::new();
    for i in 0..200 {
        h.run(&["SET", &format!("stay{i}"), "v"]);
        h.run(&["SET", &format!("go{i}"), "v"]);
    }
    let (mut cursor, mut seen, mut round) = ("0".to_string(), std::collections::BTreeSet::new(), 0);
    loop {
        let Reply::Array(reply) = h.run(&["SCAN", &cursor, "COUNT", "5"]) else { panic!() };
        let [Reply::Bulk(next), Reply::Array(keys)] = &reply[..] else { panic!() };
        seen.extend(keys.iter().map(|k| if let Reply::Bulk(b) = k { b.clone() } else { panic!() }));
        // Between pages: delete some keys, add new ones.
        h.run(&["DEL", &format!("go{round}")]);
        h.run(&["SET", &format!("new{round}"), "v"]);
        round += 1;
        cursor = String::from_utf8(next.to_vec()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    for i in 0..200 {
        assert!(seen.contains(format!("stay{i}").as_bytes()), "stay{i} missed");
    }
}

#[test]
fn hashes() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["HSET", "h", "a", "1", "b", "2"]), int(2));
    assert_eq!(h.run(&["HSET", "h", "a", "10", "c", "3"]), int(1));
    assert_eq!(h.run(&["HMSET", "h", "d", "4"]), Reply::ok());
    assert_eq!(h.run(&["HGET", "h", "a"]), bulk("10"));
    assert_eq!(h.run(&["HGET", "h", "zz"]), Reply::Null);
    assert_eq!(h.run(&["HGET", "nope", "a"]), Reply::Null);
    assert_eq!(h.run(&["HMGET", "h", "a", "zz", "b"]), array(vec![bulk("10"), Reply::Null, bulk("2")]));
    assert_eq!(h.run(&["HLEN", "h"]), int(4));
    assert_eq!(h.run(&["HEXISTS", "h", "c"]), int(1));
    assert_eq!(h.run(&["HEXISTS", "h", "zz"]), int(0));
    assert_eq!(h.run(&["HSTRLEN", "h", "a"]), int(2));
    assert_eq!(h.run(&["HKEYS", "h"]), array(vec![bulk("a"), bulk("b"), bulk("c"), bulk("d")]));
    assert_eq!(h.run(&["HVALS", "h"]), array(vec![bulk("10"), bulk("2"), bulk("3"), bulk("4")]));
    assert_eq!(
        h.run(&["HGETALL", "h"]),
        Reply::Map(vec![
            (bulk("a"), bulk("10")),
            (bulk("b"), bulk("2")),
            (bulk("c"), bulk("3")),
            (bulk("d"), bulk("4"))
        ])
    );
    assert_eq!(h.run(&["HGETALL", "nope"]), Reply::Map(vec![]));
    assert_eq!(h.run(&["HSETNX", "h", "a", "x"]), int(0));
    assert_eq!(h.run(&["HSETNX", "h", "e", "5"]), int(1));
    assert_eq!(h.run(&["HINCRBY", "h", "a", "5"]), int(15));
    assert_eq!(h.run(&["HINCRBY", "h", "new", "-2"]), int(-2));
    assert_eq!(h.run(&["HINCRBYFLOAT", "h", "a", "0.5"]), bulk("15.5"));
    assert_eq!(h.run(&["HINCRBY", "h", "a", "1"]), err("ERR hash value is not an integer"));
    h.run(&["HSET", "h", "word", "abc"]);
    assert_eq!(h.run(&["HINCRBYFLOAT", "h", "word", "1"]), err("ERR hash value is not a float"));
    h.run(&["HSET", "h", "max", "9223372036854775807"]);
    assert_eq!(h.run(&["HINCRBY", "h", "max", "1"]), err("ERR increment or decrement would overflow"));
    assert_eq!(h.run(&["HGET", "h", "max"]), bulk("9223372036854775807"));
    let Reply::Array(page) = h.run(&["HSCAN", "h", "0", "MATCH", "[ab]"]) else { panic!() };
    assert_eq!(page, vec![bulk("0"), array(vec![bulk("a"), bulk("15.5"), bulk("b"), bulk("2")])]);
    // HDEL removes fields; the key goes with its last one.
    assert_eq!(h.run(&["HDEL", "h", "a", "zz", "b"]), int(2));
    h.run(&["HSET", "small", "only", "1"]);
    assert_eq!(h.run(&["HDEL", "small", "only"]), int(1));
    assert_eq!(h.run(&["EXISTS", "small"]), int(0));
    assert_eq!(h.run(&["HDEL", "small", "only"]), int(0));
    // A failed HINCRBY on an absent key creates nothing.
    assert_eq!(h.run(&["HINCRBY", "ghost", "f", "x"]), err("ERR value is not an integer or out of range"));
    assert_eq!(h.run(&["EXISTS", "ghost"]), int(0));
    // Arity.
    assert_eq!(h.run(&["HSET", "h", "a"]), err("ERR wrong number of arguments for 'hset' command"));
    assert_eq!(h.run(&["HSET", "h", "a", "1", "b"]), err("ERR wrong number of arguments for 'hset' command"));
}

#[test]
fn wrong_type_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    h.run(&["HSET", "h", "f", "v"]);
    h.run(&["SET", "s", "1"]);
    let wrongtype = err("WRONGTYPE Operation against a key holding the wrong kind of value");
    let before = h.kv.image();
    for words in [
        &["GET", "h"][..],
        &["INCR", "h"],
        &["APPEND", "h", "x"],
        &["STRLEN", "h"],
        &["GETRANGE", "h", "0", "1"],
        &["SETRANGE", "h", "0", "x"],
        &["INCRBYFLOAT", "h", "1"],
        &["GETDEL", "h"],
        &["GETEX", "h", "PERSIST"],
        &["SET", "h", "x", "GET"],
        &["HGET", "s", "f"],
        &["HSET", "s", "f", "v"],
        &["HGETALL", "s"],
        &["HDEL", "s", "f"],
        &["HINCRBY", "s", "f", "1"],
        &["HLEN", "s"],
    ] {
        assert_eq!(h.run(words), wrongtype, "{words:?}");
    }
    // Only the applied index moved: the same image once it is set back.
    let mut after = KvStore::new();
    after.restore(&h.kv.image()).unwrap();
    let mut image = after.image().to_vec();
    image[1] = before[1];
    assert_eq!(image, before.to_vec());
    // MGET answers Null for a non-string; SET without GET replaces any type.
    assert_eq!(h.run(&["MGET", "h", "s"]), array(vec![Reply::Null, bulk("1")]));
    assert_eq!(h.run(&["SET", "h", "now a string"]), Reply::ok());
    assert_eq!(h.run(&["TYPE", "h"]), Reply::Simple("string".into()));
}

/// `EXEC` as the store applies it: every op in one entry, aborted as a whole if a watched key's
/// version moved, each op answering for itself otherwise.
#[test]
fn exec_applies_all_or_nothing_against_watched_versions() {
    let mut h = Harness::new();
    h.run(&["SET", "a", "1"]);
    let Reply::Array(v) = h.run_watch(&["a", "b"]) else { panic!() };
    assert_eq!(v, vec![int(1), int(0)]);
    let ops = |words: &[&[&str]]| -> Vec<Bytes> {
        words
            .iter()
            .map(|w| match parse_command(&args(w)).unwrap() {
                ParsedCommand::Replicate(op) => op.encode(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let exec = |h: &mut Harness, watched: Vec<(&str, u64)>, words: &[&[&str]]| {
        let watched = watched.into_iter().map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), v)).collect();
        let req = KvRequest { session: 0, seq: 0, now_ms: h.now_ms, op: KvOp::Exec { watched, ops: ops(words) } };
        h.apply_raw(&req.encode())
    };
    // Versions as WATCH saw them: runs, including a failing op that does not undo the others.
    let r = exec(&mut h, vec![("a", 1), ("b", 0)], &[&["INCR", "a"], &["HSET", "a", "f", "v"], &["SET", "b", "x"]]);
    let wrongtype = err("WRONGTYPE Operation against a key holding the wrong kind of value");
    assert_eq!(r, array(vec![int(2), wrongtype, Reply::ok()]));
    // `a` changed at index 2 (its version is now 2): watching version 1 aborts, and nothing runs.
    let r = exec(&mut h, vec![("a", 1)], &[&["SET", "b", "changed"]]);
    assert_eq!(r, Reply::NullArray);
    assert_eq!(h.run(&["GET", "b"]), bulk("x"));
    // A watched absent key that appeared aborts; one that expired (version back to 0) aborts too.
    let r = exec(&mut h, vec![("c", 0)], &[&["SET", "c", "1"]]);
    assert_eq!(r, array(vec![Reply::ok()]));
    h.run(&["SET", "t", "1", "PX", "10"]);
    let Reply::Array(v) = h.run_watch(&["t"]) else { panic!() };
    let Reply::Integer(t_version) = v[0] else { panic!() };
    h.now_ms += 11;
    let r = exec(&mut h, vec![("t", t_version as u64)], &[&["SET", "t", "2"]]);
    assert_eq!(r, Reply::NullArray);
    // A nested EXEC (only a hostile log holds one) is refused element-wise, without recursion.
    let inner = KvOp::Exec { watched: vec![], ops: vec![] }.encode();
    let req = KvRequest {
        session: 0,
        seq: 0,
        now_ms: h.now_ms,
        op: KvOp::Exec { watched: vec![], ops: vec![inner, Bytes::from_static(b"\xff\xff")] },
    };
    assert_eq!(
        h.apply_raw(&req.encode()),
        array(vec![err("ERR EXEC inside a transaction is not allowed"), err("ERR malformed command in log")])
    );
}

impl Harness {
    fn run_watch(&mut self, keys: &[&str]) -> Reply {
        let keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect();
        let req = KvRequest { session: 0, seq: 0, now_ms: self.now_ms, op: KvOp::Versions { keys } };
        self.apply_raw(&req.encode())
    }
}

/// `SELECT`: sixteen databases, each its own key space; FLUSHDB empties one, FLUSHALL all; a snapshot
/// of a store using other databases is version 3 and restores them all.
#[test]
fn databases_are_separate_key_spaces_and_survive_a_snapshot() {
    let mut h = Harness::new();
    let in_db = |h: &mut Harness, db: u8, words: &[&str]| {
        let Ok(req) = h.request(0, 0, words) else { panic!("{words:?} parses") };
        let op = KvOp::InDb { db, op: req.op.encode() };
        h.apply_raw(&KvRequest { op, ..req }.encode())
    };
    h.run(&["SET", "k", "zero"]);
    assert_eq!(in_db(&mut h, 1, &["GET", "k"]), Reply::Null);
    assert_eq!(in_db(&mut h, 1, &["SET", "k", "one"]), Reply::ok());
    assert_eq!(in_db(&mut h, 15, &["HSET", "h", "f", "v"]), int(1));
    assert_eq!(in_db(&mut h, 1, &["SET", "t", "v", "PX", "10"]), Reply::ok());
    assert_eq!(h.run(&["GET", "k"]), bulk("zero"));
    assert_eq!(in_db(&mut h, 1, &["GET", "k"]), bulk("one"));
    assert_eq!(in_db(&mut h, 1, &["DBSIZE"]), int(2));
    assert_eq!(h.run(&["DBSIZE"]), int(1));
    // Reads without the log (`query_in`, what ReadIndex and lease reads run) see the same.
    let get = KvOp::Get { key: "k".into() };
    let now = h.now_ms;
    assert_eq!(h.kv.query_in(0, &get, now), Some(KvResult::Value("zero".into())));
    assert_eq!(h.kv.query_in(1, &get, now), Some(KvResult::Value("one".into())));
    assert_eq!(h.kv.query_in(7, &get, now), Some(KvResult::Nil), "a database without keys reads as empty");
    assert_eq!(h.kv.query_in(1, &KvOp::DbSize, now), Some(KvResult::Integer(2)));
    assert_eq!(h.kv.query_in(15, &KvOp::Type { key: "h".into() }, now), Some(KvResult::Type(Some(KeyType::Hash))));
    assert_eq!(h.kv.query_in(1, &KvOp::Del { keys: vec!["k".into()] }, now), None, "a write is no query");
    assert_eq!(h.kv.keyspace(), vec![(0, 1, 0), (1, 2, 1), (15, 1, 0)]);
    // A snapshot holds every database (version 3), and restores them.
    let image = h.kv.image();
    assert_eq!(image[0], KV_IMAGE_VERSION_DBS);
    // Version 2's fields, then the other databases: a count, then (db, its map) each, in db order.
    crate::golden::check("kv-image-v3.bin", &image);
    let mut copy = KvStore::new();
    copy.restore(&image).unwrap();
    assert_eq!(copy.image(), image);
    assert_eq!(copy.keyspace(), h.kv.keyspace());
    // Expiry works in any database, by the logged clock.
    h.now_ms += 11;
    assert_eq!(in_db(&mut h, 1, &["EXISTS", "t"]), int(0));
    // FLUSHDB empties the current database only; FLUSHALL every one.
    assert_eq!(in_db(&mut h, 1, &["FLUSHDB"]), Reply::ok());
    assert_eq!(in_db(&mut h, 1, &["DBSIZE"]), int(0));
    assert_eq!(h.run(&["GET", "k"]), bulk("zero"));
    assert_eq!(in_db(&mut h, 15, &["HGET", "h", "f"]), bulk("v"));
    assert_eq!(h.run(&["FLUSHALL"]), Reply::ok());
    assert_eq!(in_db(&mut h, 15, &["DBSIZE"]), int(0));
    assert_eq!(h.kv.keyspace(), vec![]);
    // A store back to database 0 alone writes version 2 again.
    h.run(&["SET", "a", "1"]);
    assert_eq!(h.kv.image()[0], KV_IMAGE_VERSION);
    // Hostile entries: database 16, database 0 wrapped, or a wrapper in a wrapper.
    let get = KvOp::Get { key: Bytes::from_static(b"a") }.encode();
    for op in [
        KvOp::InDb { db: 16, op: get.clone() },
        KvOp::InDb { db: 0, op: get.clone() },
        KvOp::InDb { db: 1, op: KvOp::InDb { db: 2, op: get.clone() }.encode() },
    ] {
        let req = KvRequest { session: 0, seq: 0, now_ms: h.now_ms, op };
        assert_eq!(h.apply_raw(&req.encode()), err("ERR DB index is out of range"));
    }
    // An image naming database 0 or 16 among the others is refused.
    let mut forged = h.kv.clone();
    forged.restore(&image).unwrap();
    let mut bytes = forged.image().to_vec();
    let pos = bytes.len() - 1 - bytes.iter().rev().position(|&b| b == 15).unwrap();
    bytes[pos] = 16;
    assert!(KvStore::new().restore(&bytes).is_err());
}

/// redis-py's `Lock` scripts, verbatim in behaviour: release deletes the key only while it holds
/// the caller's token; extend and reacquire move the deadline the same way.
const LOCK_RELEASE: &str = "local token = redis.call('get', KEYS[1])\n\
    if not token or token ~= ARGV[1] then\n    return 0\nend\nredis.call('del', KEYS[1])\nreturn 1\n";
const LOCK_EXTEND: &str = "local token = redis.call('get', KEYS[1])\n\
    if not token or token ~= ARGV[1] then\n    return 0\nend\n\
    local expiration = redis.call('pttl', KEYS[1])\nif not expiration then\n    expiration = 0\nend\n\
    if expiration < 0 then\n    return 0\nend\n\
    local newttl = ARGV[2]\nif ARGV[3] == \"0\" then\n    newttl = ARGV[2] + expiration\nend\n\
    redis.call('pexpire', KEYS[1], newttl)\nreturn 1\n";

#[test]
fn scripts_run_redis_py_lock_release_and_extend() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SET", "lock", "mine", "PX", "10000"]), Reply::ok());
    assert_eq!(h.run(&["EVAL", LOCK_RELEASE, "1", "lock", "theirs"]), Reply::Integer(0));
    assert_eq!(h.run(&["GET", "lock"]), bulk("mine"), "a wrong token leaves the lock");
    assert_eq!(h.run(&["EVAL", LOCK_EXTEND, "1", "lock", "mine", "5000", "0"]), Reply::Integer(1));
    let Reply::Integer(ttl) = h.run(&["PTTL", "lock"]) else { panic!("PTTL") };
    assert_eq!(ttl, 15_000, "extended by 5 s at the entry's time");
    assert_eq!(h.run(&["EVAL", LOCK_RELEASE, "1", "lock", "mine"]), Reply::Integer(1));
    assert_eq!(h.run(&["EXISTS", "lock"]), Reply::Integer(0));
    assert_eq!(h.run(&["EVAL", LOCK_EXTEND, "1", "lock", "mine", "5000", "0"]), Reply::Integer(0));
}

#[test]
fn script_values_convert_as_in_redis() {
    let mut h = Harness::new();
    let eval = |h: &mut Harness, body: &str| h.run(&["EVAL", body, "0"]);
    assert_eq!(eval(&mut h, "return 3.9"), Reply::Integer(3), "numbers truncate");
    assert_eq!(eval(&mut h, "return 'x'"), bulk("x"));
    assert_eq!(eval(&mut h, "return nil"), Reply::Null);
    assert_eq!(eval(&mut h, "return false"), Reply::Null);
    assert_eq!(eval(&mut h, "return true"), Reply::Integer(1));
    assert_eq!(
        eval(&mut h, "return {1, 'a', {2}, nil, 5}"),
        Reply::Array(vec![Reply::Integer(1), bulk("a"), Reply::Array(vec![Reply::Integer(2)])]),
        "an array ends at its first nil"
    );
    assert_eq!(eval(&mut h, "return redis.status_reply('FINE')"), Reply::Simple("FINE".into()));
    assert_eq!(eval(&mut h, "return redis.error_reply('MYERR bad')"), err("MYERR bad"));
    assert_eq!(eval(&mut h, "return redis.call('set', 'k', 'v')"), Reply::Simple("OK".into()));
    assert_eq!(eval(&mut h, "return redis.call('get', 'missing') == false"), Reply::Integer(1));
    assert_eq!(
        h.run(&["EVAL", "return {KEYS[1], ARGV[1], #ARGV}", "1", "a", "b", "c"]),
        Reply::Array(vec![bulk("a"), bulk("b"), Reply::Integer(2)])
    );
    assert_eq!(eval(&mut h, "return redis.call('incrby', 'n', 2.0)"), Reply::Integer(2), "2.0 is passed as 2");
    assert_eq!(eval(&mut h, "return redis.sha1hex('return 1')"), bulk("e0e1f9fabfc9d4800c877a703b823ac0578ff8db"));
}

#[test]
fn script_errors_say_what_failed_and_keep_earlier_writes() {
    let mut h = Harness::new();
    let eval = |h: &mut Harness, body: &str| h.run(&["EVAL", body, "0"]);
    assert_eq!(h.run(&["SET", "s", "text"]), Reply::ok());
    // A failing redis.call raises the command's own error; the write before it stays (no rollback).
    assert_eq!(
        eval(&mut h, "redis.call('set', 'before', '1'); return redis.call('incr', 's')"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(h.run(&["GET", "before"]), bulk("1"));
    // pcall hands the error to the script instead.
    assert_eq!(
        eval(&mut h, "local r = redis.pcall('incr', 's'); return r.err"),
        bulk("ERR value is not an integer or out of range")
    );
    let Reply::Error(text) = eval(&mut h, "return undefined_function()") else { panic!("runtime error") };
    assert!(text.starts_with("ERR Error running script"), "{text}");
    let Reply::Error(text) = eval(&mut h, "return (") else { panic!("compile error") };
    assert!(text.starts_with("ERR Error compiling script"), "{text}");
    for refused in
        ["return redis.call('time')", "return redis.call('select', '1')", "return redis.call('eval', 'return 1', '0')"]
    {
        assert_eq!(eval(&mut h, refused), err("ERR This Redis command is not allowed from script"), "{refused}");
    }
    assert_eq!(
        h.run(&["EVAL_RO", "return redis.call('set', 'k', 'v')", "0"]),
        err("ERR Write commands are not allowed from read-only scripts.")
    );
    assert_eq!(h.run(&["EVAL_RO", "return redis.call('get', 's')", "0"]), bulk("text"));
    assert_eq!(h.run(&["EVAL", "return 1", "2", "a"]), err("ERR Number of keys can't be greater than number of args"));
    assert_eq!(h.run(&["EVAL", "return 1", "-1"]), err("ERR Number of keys can't be negative"));
}

#[test]
fn runaway_scripts_stop_at_the_same_point_on_every_replica() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    for h in [&mut a, &mut b] {
        let looped = h.run(&["EVAL", "redis.call('set', 'k', 'v'); while true do end", "0"]);
        assert_eq!(looped, err(crate::raftkv::script::INSTRUCTION_LIMIT_ERROR));
        let Reply::Error(text) =
            h.run(&["EVAL", "local t, s = {}, 'x' for i = 1, 1e9 do s = s .. s t[i] = s end", "0"])
        else {
            panic!("a memory bomb must fail")
        };

        assert!(text.starts_with("ERR"), "{text}");
        let Reply::Error(text) =
            h.run(&["EVAL", "local t = {} local c = t for i = 1, 100 do c[1] = {} c = c[1] end return t", "0"])
        else {
            panic!("too deep a reply must fail")
        };
        assert!(text.contains("nesting limit"), "{text}");
        assert_eq!(h.run(&["GET", "k"]), bulk("v"));
    }
    assert_eq!(a.kv.snapshot().encode(), b.kv.snapshot().encode());
}

#[test]
fn scripts_see_no_node_local_input() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    let body = "local r = {} for i = 1, 5 do r[i] = math.random(1000000) end \
        redis.call('set', 'r', table.concat(r, ',') .. tostring({}) .. tostring(print) .. tostring(os)) return r";
    let (ra, rb) = (a.run(&["EVAL", body, "0"]), b.run(&["EVAL", body, "0"]));
    assert_eq!(ra, rb, "the same random numbers on every replica");
    let value = a.run(&["GET", "r"]);
    assert_eq!(value, b.run(&["GET", "r"]));
    let Reply::Bulk(value) = value else { panic!("GET") };
    assert!(value.ends_with(b"tablenilnil"), "no address, no print, no os: {value:?}");
    assert_eq!(a.kv.snapshot().encode(), b.kv.snapshot().encode());
}

#[test]
fn a_hostile_script_reply_never_recurses_or_panics() {
    use crate::raftkv::script::{ScriptItem, reply_of};
    let deep = vec![ScriptItem::Array(1); 1_000_000];
    assert_eq!(reply_of(&deep), err("ERR malformed script reply"));
    assert_eq!(reply_of(&[ScriptItem::Array(3), ScriptItem::Nil]), err("ERR malformed script reply"));
    assert_eq!(reply_of(&[ScriptItem::Nil, ScriptItem::Nil]), err("ERR malformed script reply"));
    assert_eq!(reply_of(&[]), err("ERR malformed script reply"));
    assert_eq!(
        reply_of(&[ScriptItem::Array(2), ScriptItem::Array(0), ScriptItem::Integer(1)]),
        Reply::Array(vec![Reply::Array(vec![]), Reply::Integer(1)])
    );
    let result = KvResult::Script(vec![ScriptItem::Error(Bytes::from_static(b"no code\r\ninjected"))]);
    assert_eq!(result_reply(KvResult::decode(&result.encode()).expect("round trip")), err("ERR no code  injected"));
}

/// A log entry holding a script: the op variant appended after every earlier one (old entries
/// decode as before), pinned, and decoded back to the same request.
#[test]
fn eval_entry_golden_bytes() {
    let request = KvRequest {
        session: 9,
        seq: 4,
        now_ms: 1_700_000_000_123,
        op: KvOp::Eval {
            script: Bytes::from_static(b"return redis.call('get', KEYS[1])"),
            keys: vec![Bytes::from_static(b"k")],
            args: vec![Bytes::from_static(b"a"), Bytes::from_static(b"")],
            read_only: true,
        },
    };
    let encoded = request.encode();
    // The op's tag follows session, seq and the 6-byte varint of now_ms: one past FlushDb's, the
    // variant before it (a reordered enum would change every older entry's meaning).
    let flushdb_tag = postcard::to_allocvec(&KvOp::FlushDb).expect("encodes")[0];
    assert_eq!(encoded[8], flushdb_tag + 1, "Eval is appended after FlushDb");
    let committed = crate::golden::check("kv-request-eval-v1.bin", &encoded);
    assert_eq!(KvRequest::decode(&committed).expect("decodes"), request);
    crate::golden::assert_complete("kv-request-", &["kv-request-eval-v1.bin"]);
}
