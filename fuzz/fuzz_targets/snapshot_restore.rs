//! Snapshot files and state machine images come from disk and from peers:
//! decoding must refuse what fails its checks with an error, never panic,
//! and a refused image must leave the store exactly as it was.
//!
//! The first byte picks the input: a whole snapshot file (decoded with its
//! checks), a raftkv image (restored into a store holding some state), or
//! an image re-framed as a valid snapshot file (so the CRC passes and the
//! image decoder is reached through the file path).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_core::SnapshotMeta;
use raft_driver_std::StateMachine;
use raft_driver_std::raftkv::store::{KvOp, KvRequest, KvStore};
use raft_driver_std::snapshot_file;

fn store_with_state() -> KvStore {
    let mut kv = KvStore::new();
    let op = KvOp::IncrBy { key: bytes::Bytes::from_static(b"n"), delta: 1 };
    let req = KvRequest { session: 3, seq: 1, now_ms: 10, op };
    kv.apply(1, &req.encode());
    kv
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let path = std::path::Path::new("fuzz.snap");
    let image = match selector % 3 {
        0 => match snapshot_file::decode(path, rest) {
            Ok((_, image)) => image.to_vec(),
            Err(_) => return,
        },
        1 => rest.to_vec(),
        _ => {
            let meta = SnapshotMeta { last_included_index: 5, last_included_term: 1, membership: raft_core::Membership::new(vec![1]) };
            let file = snapshot_file::encode(&meta, rest);
            let (decoded, image) = snapshot_file::decode(path, &file).expect("a file we framed decodes");
            assert_eq!(decoded, meta);
            assert_eq!(&image[..], rest);
            image.to_vec()
        }
    };
    let mut kv = store_with_state();
    let before = kv.image();
    match kv.restore(&image) {
        Ok(()) => {
            // What was accepted is a state: it encodes and restores to itself.
            let again = kv.image();
            let mut copy = KvStore::new();
            copy.restore(&again).expect("an image we encoded restores");
            assert_eq!(copy.image(), again);
        }
        Err(_) => assert_eq!(kv.image(), before, "a refused image leaves the store untouched"),
    }
});
