//! `resp_parse`: the bytes a client sends, split across reads in any way. The parser must give
//! the same requests (and the same error, at the same point) however the bytes arrive; every
//! request that parses re-encodes (as a RESP array) to bytes that parse back to the same
//! arguments; and the command parser takes any arguments without panicking, every command it turns
//! into a log operation encoding and decoding to the same request.

use bytes::{Bytes, BytesMut};
use raft_driver_std::raftkv::command::{ParsedCommand, parse_command};
use raft_driver_std::raftkv::resp::{RequestParser, encode_request};
use raft_driver_std::raftkv::store::KvRequest;

/// Runs one input: the first byte seeds the split points, the rest is the stream. Returns the
/// requests parsed.
pub fn run(data: &[u8]) -> u64 {
    let Some((&split, stream)) = data.split_first() else { return 0 };
    let whole = parse_all(stream, &[stream.len().max(1)]);
    // Chunk sizes 1..=16 in a pattern the first byte picks; 0 keeps one byte per read.
    let sizes: Vec<usize> = (0..8).map(|i| 1 + usize::from(split.rotate_left(i) % 16)).collect();
    let sizes = if split == 0 { vec![1] } else { sizes };
    let split_up = parse_all(stream, &sizes);
    assert_eq!(whole, split_up, "the requests depend on how the bytes were split ({sizes:?})");
    let parsed = whole.0.len() as u64;
    for args in whole.0 {
        round_trip(&args);
        if let Ok(ParsedCommand::Replicate(op)) = parse_command(&args) {
            let request = KvRequest { session: 1, seq: 1, now_ms: 0, op };
            let decoded = KvRequest::decode(&request.encode()).expect("an encoded request decodes");
            assert_eq!(decoded, request);
        }
    }
    parsed
}

/// Every request parsed from `stream` fed in chunks of the given sizes (cycled), and the error
/// that stopped parsing, if any.
fn parse_all(stream: &[u8], sizes: &[usize]) -> (Vec<Vec<Bytes>>, Option<String>) {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < stream.len() {
        let end = (at + sizes[i % sizes.len()]).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        (at, i) = (end, i + 1);
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(args)) => requests.push(args),
                Ok(None) => break,
                Err(e) => return (requests, Some(e.to_string())),
            }
        }
    }
    (requests, None)
}

fn round_trip(args: &[Bytes]) {
    assert!(!args.is_empty(), "a parsed request has a command name");
    let mut out = BytesMut::new();
    encode_request(args, &mut out);
    let mut parser = RequestParser::default();
    let again = parser.parse(&mut out).expect("a re-encoded request parses").expect("complete");
    assert_eq!(again, args, "a request does not survive re-encoding");
    assert!(out.is_empty(), "re-encoding left {} bytes unparsed", out.len());
}
