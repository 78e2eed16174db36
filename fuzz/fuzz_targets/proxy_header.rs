//! PROXY protocol v1/v2 headers from a (supposedly) trusted load balancer.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proxy_protocols::proxy::bytes_wanted(data);
    let mut buf = BytesMut::from(data);
    let _ = proxy_protocols::proxy::decode(&mut buf);
});
