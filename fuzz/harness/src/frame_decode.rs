//! `frame_decode`: the bytes a peer connection carries, before anything is trusted. The first
//! byte picks the boundary:
//! - even: peer frames, decoded one after another as from a stream. Each is a message,
//!   "incomplete" or an error, never a panic; a frame that decodes re-encodes to a frame that
//!   decodes to the same message (the owned wire types and raft-core's lose and invent nothing).
//! - odd: the accepting side of the cluster-secret handshake, fed a stranger's hello and replies.
//!   It answers with one well-formed challenge or refusal and at most one status byte, never
//!   accepts a connector that lacks the secret (the fuzzer cannot forge HMAC-SHA256 without it).

use std::io::{Cursor, Read, Write};

use raft_driver_std::transport::auth::{self, CHALLENGE_LEN, HELLO_LEN, Secret};
use raft_driver_std::transport::{decode_frame, encode_frame};

/// The frame size limit the target decodes under.
const MAX: usize = 1 << 20;

/// Runs one input; returns the frames decoded (a handshake counts as one).
pub fn run(data: &[u8]) -> u64 {
    let Some((&selector, rest)) = data.split_first() else { return 0 };
    if selector & 1 == 0 {
        frames(rest)
    } else {
        handshake(selector, rest);
        1
    }
}

fn frames(mut data: &[u8]) -> u64 {
    let mut decoded = 0;
    while let Ok(Some((message, used))) = decode_frame(data, MAX) {
        assert!(used > 0 && used <= data.len(), "a frame of {used} bytes out of {}", data.len());
        let frame = encode_frame(&message, MAX).expect("a decoded message re-encodes within the same limit");
        let (again, again_used) = decode_frame(&frame, MAX).expect("re-encoded frame decodes").expect("complete");
        assert_eq!((again, again_used), (message, frame.len()));
        data = &data[used..];
        decoded += 1;
    }
    decoded
}

/// The connector's side of the socket: what it sends, and what it is sent.
struct Peer {
    incoming: Cursor<Vec<u8>>,
    written: Vec<u8>,
}

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.incoming.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn handshake(selector: u8, data: &[u8]) {
    let mut hello = [0u8; HELLO_LEN];
    let n = data.len().min(HELLO_LEN);
    hello[..n].copy_from_slice(&data[..n]);
    let secret = (selector & 2 == 2).then(|| Secret::new("fuzz secret"));
    let mut peer = Peer { incoming: Cursor::new(data[n..].to_vec()), written: Vec::new() };
    let result = auth::accept(&mut peer, secret.as_ref(), &hello);
    assert!(result.is_err(), "a connector without the secret was accepted");
    let len = peer.written.len();
    assert!(len == CHALLENGE_LEN || len == CHALLENGE_LEN + 1, "answered with {len} bytes");
    assert_eq!(&peer.written[..4], b"RFTa");
}
