//! Tests for the client's first packet: real mysql CLI responses and
//! SSLRequest, a hand-built pre-4.1 response, every truncation, hostile
//! attribute blocks, cross-checks with `mysql_common`, property tests.

use std::collections::HashMap;

use bytes::BytesMut;
use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakeResponse as CommonResponse;
use mysql_common::proto::{MyDeserialize, MySerialize};
use proptest::prelude::*;

use super::*;
use crate::mysql::decode_packet;
use crate::mysql::fixtures::{
    CLI_RESPONSE_ALICE_DB, CLI_RESPONSE_ROOT, CLI_SSL_REQUEST, MYSQL_ASYNC_RESPONSE,
};

fn payload(packet: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::from(packet);
    let p = decode_packet(&mut buf, 1 << 16).unwrap().unwrap();
    assert_eq!(p.seq, 1);
    p.payload.to_vec()
}

fn response(bytes: &[u8]) -> HandshakeResponse {
    match parse_client_first(bytes) {
        Ok(ClientFirst::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn attrs(r: &HandshakeResponse) -> HashMap<String, String> {
    connect_attr_pairs(r.connect_attrs.as_deref().unwrap_or_default())
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn mysql_cli_without_password_or_database() {
    let p = payload(CLI_RESPONSE_ROOT);
    let r = response(&p);
    assert_eq!(r.user_str(), Some("root"));
    assert!(r.auth_response.is_empty());
    assert_eq!(r.database, None);
    assert_eq!(
        r.auth_plugin.as_deref(),
        Some(&b"mysql_native_password"[..])
    );
    assert_eq!(r.capabilities, 0x00bf_a284);
    assert_eq!(r.mariadb_ext, 0x1d);
    assert_eq!(r.collation, 33);
    let a = attrs(&r);
    assert_eq!(a["_client_name"], "libmariadb");
    assert_eq!(a["program_name"], "mysql");
}

#[test]
fn mysql_cli_with_password_and_database_matches_mysql_common() {
    let p = payload(CLI_RESPONSE_ALICE_DB);
    let r = response(&p);
    assert_eq!(r.user_str(), Some("jg_alice"));
    assert_eq!(r.auth_response.len(), 20);
    assert_eq!(r.database.as_deref(), Some(&b"test"[..]));

    let c = CommonResponse::deserialize((), &mut ParseBuf(&p)).unwrap();
    assert_eq!(c.user(), &r.user[..]);
    assert_eq!(c.scramble_buf(), &r.auth_response[..]);
    assert_eq!(c.db_name(), r.database.as_deref());
    assert_eq!(
        c.auth_plugin().map(|a| a.as_bytes()),
        r.auth_plugin.as_deref()
    );
    assert_eq!(c.connect_attributes().unwrap(), attrs(&r));
    assert_eq!(c.capabilities().bits(), r.capabilities);
}

#[test]
fn mysql_async_response() {
    let p = payload(MYSQL_ASYNC_RESPONSE);
    let r = response(&p);
    assert_eq!(r.user_str(), Some("jg_alice"));
    assert_eq!(r.auth_response.len(), 20);
    assert_eq!(r.database.as_deref(), Some(&b"test"[..]));
    assert_eq!(r.connect_attrs, None);
    assert_ne!(r.capabilities & caps::CLIENT_DEPRECATE_EOF, 0);
    // It talks to MariaDB as MariaDB: CLIENT_LONG_PASSWORD clear, extended
    // capabilities in the filler.
    assert_eq!(r.capabilities & caps::CLIENT_LONG_PASSWORD, 0);
    assert_eq!(r.mariadb_ext, 0x14);
}

#[test]
fn re_encoding_real_responses_gives_the_same_bytes() {
    for fixture in [
        CLI_RESPONSE_ROOT,
        CLI_RESPONSE_ALICE_DB,
        MYSQL_ASYNC_RESPONSE,
    ] {
        let p = payload(fixture);
        let mut out = Vec::new();
        encode_handshake_response(&response(&p), &mut out);
        assert_eq!(out, p);
    }
}

#[test]
fn ssl_request_is_recognised() {
    let p = payload(CLI_SSL_REQUEST);
    assert_eq!(p.len(), FIXED_LEN);
    assert_eq!(
        parse_client_first(&p),
        Ok(ClientFirst::SslRequest {
            capabilities: 0x00bf_aa84
        })
    );
    // CLIENT_SSL in a full response is a TLS request as well.
    let mut full = payload(CLI_RESPONSE_ROOT);
    full[1] |= 0x08;
    assert!(matches!(
        parse_client_first(&full),
        Ok(ClientFirst::SslRequest { .. })
    ));
}

#[test]
fn the_response_inside_tls_keeps_client_ssl_and_parses() {
    let plain = response(&payload(CLI_RESPONSE_ROOT));
    let mut over_tls = Vec::new();
    encode_handshake_response_over_tls(&plain, &mut over_tls);
    assert_ne!(over_tls[1] & 0x08, 0, "CLIENT_SSL is set");
    // Outside TLS the same bytes are a TLS request; inside, a response.
    assert!(matches!(
        parse_client_first(&over_tls),
        Ok(ClientFirst::SslRequest { .. })
    ));
    let r = parse_response_over_tls(&over_tls).unwrap();
    assert_eq!(r.user, plain.user);
    assert_eq!(r.capabilities, plain.capabilities | caps::CLIENT_SSL);
    // An SSLRequest inside TLS is no response.
    assert!(parse_response_over_tls(&payload(CLI_SSL_REQUEST)).is_err());
    // The SSLRequest jitgate writes is the fixed part alone.
    let mut req = Vec::new();
    encode_ssl_request(&plain, &mut req);
    assert_eq!(req.len(), FIXED_LEN);
    assert_eq!(
        parse_client_first(&req),
        Ok(ClientFirst::SslRequest {
            capabilities: plain.capabilities | caps::CLIENT_SSL
        })
    );
}

#[test]
fn pre_4_1_response_is_recognised() {
    // HandshakeResponse320: capabilities (u16, no CLIENT_PROTOCOL_41),
    // max packet (3 bytes), user, NUL, 8-byte old scramble answer.
    let p = b"\x85\xa0\xff\xff\xffalice\0ABCDEFGH";
    assert_eq!(
        parse_client_first(p),
        Ok(ClientFirst::Pre41 {
            capabilities: 0xa085
        })
    );
}

#[test]
fn every_truncation_before_the_user_name_ends_is_an_error() {
    let p = payload(CLI_RESPONSE_ALICE_DB);
    let user_end = FIXED_LEN + b"jg_alice\0".len();
    for n in 0..user_end {
        assert!(
            matches!(
                parse_client_first(&p[..n]),
                Err(HandshakeError::Malformed(_))
            ),
            "cut at {n}"
        );
    }
    // Cut inside the auth answer: still an error.
    for n in user_end..user_end + 21 {
        assert!(parse_client_first(&p[..n]).is_err(), "cut at {n}");
    }
    // Any other cut never panics.
    for n in 0..=p.len() {
        let _ = parse_client_first(&p[..n]);
    }
}

#[test]
fn hostile_attribute_blocks_are_refused() {
    let p = payload(CLI_RESPONSE_ROOT);
    let attrs_at = p.iter().rposition(|&b| b == 0x7f).unwrap();
    // Block length beyond the payload.
    let mut long = p.clone();
    long[attrs_at] = 0xFC;
    long.insert(attrs_at + 1, 0xFF);
    long.insert(attrs_at + 1, 0xFF);
    assert!(parse_client_first(&long).is_err());
    // A key without its value.
    let mut odd = p[..attrs_at].to_vec();
    odd.extend_from_slice(b"\x04\x03key");
    assert_eq!(
        parse_client_first(&odd),
        Err(HandshakeError::Malformed("malformed connection attributes"))
    );
    // A string running past the block.
    let mut past = p[..attrs_at].to_vec();
    past.extend_from_slice(b"\x04\x09key");
    assert!(parse_client_first(&past).is_err());
}

#[test]
fn mysql_common_responses_parse() {
    let mut attrs_in = HashMap::new();
    attrs_in.insert("_client_name".to_string(), "mysql_async".to_string());
    let caps = mysql_common::constants::CapabilityFlags::from_bits_truncate(
        caps::CLIENT_PROTOCOL_41
            | caps::CLIENT_SECURE_CONNECTION
            | caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | caps::CLIENT_LONG_PASSWORD,
    );
    let c = CommonResponse::new(
        Some(&[9u8; 20][..]),
        (10, 11, 0),
        Some(&b"bob"[..]),
        Some(&b"db1"[..]),
        Some(mysql_common::packets::AuthPlugin::MysqlNativePassword),
        caps,
        Some(attrs_in.clone()),
        1 << 24,
    );
    let mut bytes = Vec::new();
    c.serialize(&mut bytes);
    let r = response(&bytes);
    assert_eq!(r.user, b"bob");
    assert_eq!(r.auth_response, [9u8; 20]);
    assert_eq!(r.database.as_deref(), Some(&b"db1"[..]));
    assert_eq!(attrs(&r), attrs_in);
}

fn bytes_no_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..max)
}

proptest! {
    #[test]
    fn parse_never_panics(input in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_client_first(&input);
    }

    #[test]
    fn parse_never_panics_on_mutated_real_responses(
        cut in 0usize..300,
        flip in prop::collection::vec((0usize..220, any::<u8>()), 0..4),
    ) {
        let mut p = payload(CLI_RESPONSE_ALICE_DB);
        for (at, v) in flip {
            if let Some(b) = p.get_mut(at) { *b = v; }
        }
        p.truncate(cut);
        let _ = parse_client_first(&p);
    }

    #[test]
    fn encode_then_parse_round_trips(
        low in any::<u32>(),
        max_packet: u32,
        collation: u8,
        user in bytes_no_nul(40),
        auth in prop::collection::vec(any::<u8>(), 0..300),
        database in prop::option::of(bytes_no_nul(20)),
        plugin in prop::option::of(bytes_no_nul(30)),
        attrs in prop::option::of(prop::collection::vec((bytes_no_nul(10), bytes_no_nul(300)), 0..4)),
    ) {
        let capabilities = (low & !caps::CLIENT_SSL)
            | caps::CLIENT_PROTOCOL_41
            | caps::CLIENT_SECURE_CONNECTION
            | caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        let connect_attrs = attrs.map(|pairs| {
            let mut block = Vec::new();
            for (k, v) in pairs {
                crate::mysql::packet::put_lenenc_int(k.len() as u64, &mut block);
                block.extend_from_slice(&k);
                crate::mysql::packet::put_lenenc_int(v.len() as u64, &mut block);
                block.extend_from_slice(&v);
            }
            block
        });
        let r = HandshakeResponse {
            capabilities,
            max_packet,
            collation,
            mariadb_ext: 0,
            user,
            auth_response: auth,
            database,
            auth_plugin: plugin,
            connect_attrs,
        };
        let mut out = Vec::new();
        encode_handshake_response(&r, &mut out);
        let back = response(&out);
        prop_assert_eq!(&back.user, &r.user);
        prop_assert_eq!(&back.auth_response, &r.auth_response);
        prop_assert_eq!(&back.database, &r.database);
        prop_assert_eq!(&back.connect_attrs, &r.connect_attrs);
        // An empty plugin name at the very end reads back as the empty name.
        prop_assert_eq!(back.auth_plugin.unwrap_or_default(), r.auth_plugin.clone().unwrap_or_default());
        prop_assert_eq!(back.max_packet, max_packet);
    }
}
