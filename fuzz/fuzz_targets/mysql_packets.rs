//! MySQL packets and every payload parser the gateway applies to client and
//! server payloads, plus the relay's packet framer.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proxy_protocols::mysql::{
    change_user_login, decode_packet, parse_auth_switch, parse_client_first, parse_err,
    parse_greeting, PacketFramer,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(p)) = decode_packet(&mut buf, 1 << 20) {
        let payload = &p.payload[..];
        let _ = parse_client_first(payload);
        let _ = parse_greeting(payload);
        let _ = parse_err(payload);
        let _ = parse_auth_switch(payload);
        let _ = change_user_login(payload, true);
        let _ = change_user_login(payload, false);
    }
    let mut framer = PacketFramer::new(64);
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for c in data.chunks(chunk) {
        let _ = framer.feed(c, |_| {});
    }
});
