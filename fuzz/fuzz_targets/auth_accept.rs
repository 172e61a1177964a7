//! The accepting side of the cluster secret exchange reads a stranger's bytes before it knows who
//! it is talking to: whatever arrives, it must answer with a well-formed challenge or refusal (and
//! at most one status byte), never panic, and never accept a connector that does not hold the
//! secret (a fuzzer cannot forge HMAC-SHA256 without it).
#![no_main]

use std::io::{Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use raft_driver_std::transport::auth::{self, CHALLENGE_LEN, HELLO_LEN, Secret};

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

fuzz_target!(|data: &[u8]| {
    let mut hello = [0u8; HELLO_LEN];
    let n = data.len().min(HELLO_LEN);
    hello[..n].copy_from_slice(&data[..n]);
    let secret = (data.first().is_some_and(|b| b & 1 == 1)).then(|| Secret::new("fuzz secret"));
    let mut peer = Peer { incoming: Cursor::new(data[n..].to_vec()), written: Vec::new() };
    let result = auth::accept(&mut peer, secret.as_ref(), &hello);
    assert!(result.is_err(), "a connector without the secret was accepted");
    // One challenge or refusal, then at most one status byte.
    assert!(peer.written.len() == CHALLENGE_LEN || peer.written.len() == CHALLENGE_LEN + 1, "{}", peer.written.len());
    assert_eq!(&peer.written[..4], b"RFTa");
});
