//! The RESP parser takes bytes straight from clients.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raft_driver_std::raftkv::resp::RequestParser;

fuzz_target!(|data: &[u8]| {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(args)) = parser.parse(&mut buf) {
        let _ = raft_driver_std::raftkv::command::parse_command(&args);
    }
});
