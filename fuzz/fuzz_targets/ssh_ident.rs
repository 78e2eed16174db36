//! The SSH identification exchange (RFC 4253 §4.2) from both sides.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proxy_protocols::ssh::{IdentDecoder, Sender};

fuzz_target!(|data: &[u8]| {
    for sender in [Sender::Client, Sender::Server] {
        let mut d = IdentDecoder::new(sender);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(_)) = d.decode(&mut buf) {}
    }
});
