//! Server pieces that need no sockets: session ids, the RESP form of store results, the limits.

use super::*;
use crate::raftkv::store::KvError;

#[test]
fn session_ids_are_unique_and_nonzero() {
    let a = SessionIds::new(1, 1_700_000_000_000);
    let b = SessionIds::new(2, 1_700_000_000_000);
    let later = SessionIds::new(1, 1_700_000_000_001);
    let ids_a: Vec<u64> = (0..1000).map(|_| a.next()).collect();
    let first_later = later.next();
    assert!(ids_a.iter().all(|&id| id != 0 && id < first_later));
    assert_ne!(a.next() >> 56, b.next() >> 56);
}

#[test]
fn store_results_become_redis_replies() {
    let v = || Bytes::from_static(b"v");
    assert_eq!(result_reply(KvResult::Ok), Reply::Simple("OK".into()));
    assert_eq!(result_reply(KvResult::Nil), Reply::Null);
    assert_eq!(result_reply(KvResult::Value(v())), Reply::Bulk(v()));
    assert_eq!(result_reply(KvResult::Integer(-3)), Reply::Integer(-3));
    assert_eq!(
        result_reply(KvResult::Values(vec![Some(v()), None])),
        Reply::Array(vec![Reply::Bulk(v()), Reply::Null])
    );
    assert_eq!(
        result_reply(KvResult::Error(KvError::NotAnInteger)),
        Reply::error("ERR value is not an integer or out of range")
    );
}

#[test]
fn parser_bounds_follow_the_entry_limit() {
    let mut options = ServerOptions::default();
    options.limits.max_entry_bytes = 1000;
    let parser = options.parser_limits();
    assert_eq!(parser.max_bulk_bytes, 1000);
    assert!(options.max_request_bytes() >= 1000 + MAX_ARGS);
    let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1001\r\n"[..]);
    let error = RequestParser::new(parser).parse(&mut buf).expect_err("too large");
    let conn_reply = match &error {
        RespError::BulkTooLarge { len, max } => (*len, *max),
        other => panic!("{other:?}"),
    };
    assert_eq!(conn_reply, (1001, 1000));
}

#[test]
fn session_command_arguments() {
    let args = |words: &[&str]| words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect::<Vec<_>>();
    assert_eq!(parse_session_command(&[]), Ok(None));
    assert_eq!(parse_session_command(&args(&["72057594037927937", "5"])), Ok(Some((72_057_594_037_927_937, 5))));
    assert_eq!(parse_session_command(&args(&["18446744073709551615", "1"])), Ok(Some((u64::MAX, 1))));
    for bad in [&["0", "1"][..], &["1", "0"], &["-1", "2"], &["x", "1"], &["1", ""]] {
        let Err(Reply::Error(text)) = parse_session_command(&args(bad)) else { panic!("{bad:?} accepted") };
        assert!(text.starts_with("ERR RAFTKV.SESSION"), "{text}");
    }
    let Err(Reply::Error(text)) = parse_session_command(&args(&["1"])) else { panic!("one argument accepted") };
    assert!(text.starts_with("ERR wrong number of arguments"), "{text}");
}

/// What `RAFTKV.SESSION <id> <seq>` on a new connection relies on: resending a write with the
/// `(session, seq)` of one already applied answers the original reply and applies nothing.
#[test]
fn a_resumed_session_applies_a_resent_write_once() {
    use crate::raftkv::store::KvOp;
    let mut store = KvStore::new();
    let incr =
        |session, seq| KvRequest { session, seq, now_ms: 1, op: KvOp::IncrBy { key: "n".into(), delta: 1 } }.encode();
    let applied = |store: &mut KvStore, index, bytes: &Bytes| StateMachine::apply(store, index, bytes);
    assert_eq!(applied(&mut store, 1, &incr(9, 1)), KvResult::Integer(1));
    assert_eq!(applied(&mut store, 2, &incr(9, 2)), KvResult::Integer(2));
    // The reply to seq 2 was lost ("-UNCERTAIN ... RAFTKV.SESSION 9 2"); the new connection resends it.
    assert_eq!(applied(&mut store, 3, &incr(9, 2)), KvResult::Integer(2), "answered from the session cache");
    assert_eq!(applied(&mut store, 4, &incr(9, 3)), KvResult::Integer(3), "the next write applies");
    // A fresh session (what a reconnect without RAFTKV.SESSION gets) would have applied it again.
    assert_eq!(applied(&mut store, 5, &incr(10, 1)), KvResult::Integer(4));
}
