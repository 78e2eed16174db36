//! PostgreSQL startup packets (SSLRequest, GSSENCRequest, CancelRequest,
//! StartupMessage) from a hostile client, decoded the way the gateway does.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proxy_protocols::postgres::decode_startup;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_startup(&mut buf) {}
});
