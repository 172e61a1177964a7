//! The peer frame decoder takes bytes straight from the network: it must
//! return a message, "incomplete" or an error, never panic. A frame that
//! decodes must re-encode to a frame that decodes to the same message (the
//! conversions between the owned wire types and raft-core's types lose
//! nothing and invent nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_driver_std::transport::{decode_frame, encode_frame};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((message, used))) = decode_frame(data, MAX) {
        assert!(used <= data.len());
        let frame = encode_frame(&message, MAX).expect("a decoded message re-encodes within the same limit");
        let (again, again_used) = decode_frame(&frame, MAX).expect("re-encoded frame decodes").expect("complete");
        assert_eq!((again, again_used), (message, frame.len()));
    }
});
