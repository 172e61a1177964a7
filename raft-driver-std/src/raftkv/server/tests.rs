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
