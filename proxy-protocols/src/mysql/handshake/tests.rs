//! Tests for the initial handshake: the real MariaDB greeting, truncation at
//! every length, cross-checks with `mysql_common`, property tests.

use bytes::BytesMut;
use mysql_common::packets::HandshakePacket;
use mysql_common::proto::MyDeserialize;
use proptest::prelude::*;

use super::*;
use crate::mysql::fixtures::MARIADB_GREETING;
use crate::mysql::{caps, decode_packet};

fn payload(packet: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::from(packet);
    let p = decode_packet(&mut buf, 1 << 16).unwrap().unwrap();
    assert!(buf.is_empty());
    p.payload.to_vec()
}

fn common_parse(payload: &[u8]) -> HandshakePacket<'_> {
    HandshakePacket::deserialize((), &mut mysql_common::io::ParseBuf(payload)).unwrap()
}

#[test]
fn real_mariadb_greeting() {
    let p = payload(MARIADB_GREETING);
    let g = parse_greeting(&p).unwrap();
    assert_eq!(g.server_version, b"5.5.5-10.11.19-MariaDB-0+deb12u1");
    assert_eq!(g.connection_id, 39);
    assert_eq!(g.scramble, b"K#m{D\"y]G*</u#J.EPC@");
    assert_eq!(g.capabilities, 0x81ff_f7fe);
    assert_eq!(
        g.capabilities & caps::CLIENT_SSL,
        0,
        "this server has no TLS"
    );
    assert_eq!(
        g.capabilities & caps::CLIENT_LONG_PASSWORD,
        0,
        "MariaDB clears it"
    );
    assert_eq!(g.mariadb_ext, 0x1d);
    assert_eq!((g.collation, g.status), (45, 2));
    assert_eq!(g.auth_plugin, b"mysql_native_password");

    let c = common_parse(&p);
    assert_eq!(c.connection_id(), g.connection_id);
    assert_eq!(c.nonce(), g.scramble);
    assert_eq!(c.capabilities().bits(), g.capabilities);
    assert_eq!(c.server_version_ref(), &g.server_version[..]);
}

#[test]
fn re_encoding_the_real_greeting_gives_the_same_bytes() {
    let p = payload(MARIADB_GREETING);
    let mut out = Vec::new();
    encode_greeting(&parse_greeting(&p).unwrap(), &mut out);
    assert_eq!(out, p);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let p = payload(MARIADB_GREETING);
    // Cutting inside the plugin name still parses (servers may omit its NUL).
    let plugin_start = p.len() - b"mysql_native_password\0".len();
    for n in 0..plugin_start {
        assert!(parse_greeting(&p[..n]).is_err(), "cut at {n}");
    }
    for n in plugin_start..=p.len() {
        let g = parse_greeting(&p[..n]).unwrap();
        assert!(b"mysql_native_password".starts_with(&g.auth_plugin));
    }
}

#[test]
fn other_protocol_versions_are_refused() {
    let mut p = payload(MARIADB_GREETING);
    p[0] = 9;
    assert_eq!(
        parse_greeting(&p),
        Err(HandshakeError::UnsupportedProtocol(9))
    );
    // An ERR packet in place of a greeting ("Too many connections").
    assert_eq!(
        parse_greeting(b"\xff\x10\x04Too many connections"),
        Err(HandshakeError::UnsupportedProtocol(0xff))
    );
}

fn jitgate_like() -> Greeting {
    Greeting {
        server_version: b"8.0.0-jitgate".to_vec(),
        connection_id: 0,
        scramble: b"abcdefghijklmnopqrst".to_vec(),
        capabilities: caps::CLIENT_LONG_PASSWORD
            | caps::CLIENT_PROTOCOL_41
            | caps::CLIENT_SECURE_CONNECTION
            | caps::CLIENT_PLUGIN_AUTH
            | caps::CLIENT_DEPRECATE_EOF,
        collation: 45,
        status: 2,
        mariadb_ext: 0,
        auth_plugin: b"mysql_native_password".to_vec(),
    }
}

#[test]
fn our_greeting_reads_back_in_mysql_common() {
    let g = jitgate_like();
    let mut out = Vec::new();
    encode_greeting(&g, &mut out);
    let c = common_parse(&out);
    assert_eq!(c.nonce(), g.scramble);
    assert_eq!(c.capabilities().bits(), g.capabilities);
    assert_eq!(
        c.auth_plugin_name_ref(),
        Some(&b"mysql_native_password"[..])
    );
    assert_eq!(c.connection_id(), 0);
    assert_eq!(parse_greeting(&out).unwrap(), g);
}

fn no_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..max)
}

proptest! {
    #[test]
    fn parse_never_panics(input in prop::collection::vec(any::<u8>(), 0..120)) {
        let _ = parse_greeting(&input);
    }

    #[test]
    fn parse_never_panics_on_greeting_like_input(
        cut in 0usize..200,
        flip in prop::collection::vec((0usize..120, any::<u8>()), 0..4),
    ) {
        let mut p = payload(MARIADB_GREETING);
        for (at, v) in flip {
            if let Some(b) = p.get_mut(at) { *b = v; }
        }
        p.truncate(cut);
        let _ = parse_greeting(&p);
    }

    #[test]
    fn round_trips(
        version in no_nul(40),
        id: u32,
        scramble in prop::collection::vec(1u8..=255, 20),
        high: u16,
        collation: u8,
        status: u16,
        ext: u32,
        plugin in no_nul(30),
        mysql: bool,
    ) {
        let mut capabilities = (u32::from(high) << 16)
            | caps::CLIENT_PROTOCOL_41
            | caps::CLIENT_SECURE_CONNECTION
            | caps::CLIENT_PLUGIN_AUTH;
        if mysql { capabilities |= caps::CLIENT_LONG_PASSWORD; }
        let g = Greeting {
            server_version: version,
            connection_id: id,
            scramble,
            capabilities,
            collation,
            status,
            mariadb_ext: if mysql { 0 } else { ext },
            auth_plugin: plugin,
        };
        let mut out = Vec::new();
        encode_greeting(&g, &mut out);
        prop_assert_eq!(parse_greeting(&out).unwrap(), g);
    }
}
