//! PostgreSQL backend messages: whole-message decoding (authentication
//! phase) and the framer (after it), fed in chunks whose size the input
//! chooses.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proxy_protocols::postgres::{decode_backend_message, parse_backend_key_data, MessageFramer};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = decode_backend_message(&mut buf, 64 * 1024) {
        let _ = parse_backend_key_data(&m.body);
    }
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut framer = MessageFramer::new();
    for c in data.chunks(chunk) {
        if framer.feed(c).is_err() {
            break;
        }
    }
});
