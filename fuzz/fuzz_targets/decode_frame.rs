//! The peer frame decoder takes bytes straight from the network.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = raft_driver_std::transport::decode_frame(data, 1 << 20);
});
