//! Tests for startup packet decoding and encoding: real-client fixtures,
//! every split point, hostile lengths and layouts, and property tests.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::postgres::fixtures::{
    PG15_NO_USER_ERROR, PSQL_CANCEL_REQUEST, PSQL_GSSENC_REQUEST, PSQL_SSL_REQUEST, PSQL_STARTUP,
};

fn decode(bytes: &[u8]) -> (Result<Option<StartupRequest>, StartupError>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let res = decode_startup(&mut buf);
    (res, buf)
}

/// A packet with the given length word, code and body (no consistency checks).
fn raw_packet(len: u32, code: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A packet with a correct length word for `code` and `body`.
fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(8 + body.len()).unwrap();
    raw_packet(len, code, body)
}

fn v3(minor: u16) -> u32 {
    ProtocolVersion { major: 3, minor }.code()
}

fn malformed(bytes: &[u8]) -> &'static str {
    match decode(bytes).0 {
        Err(StartupError::Malformed(msg)) => msg,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn psql_startup_message() {
    let (res, buf) = decode(PSQL_STARTUP);
    let Ok(Some(StartupRequest::Startup(msg))) = res else {
        panic!("unexpected {res:?}");
    };
    assert!(buf.is_empty());
    assert_eq!(msg.version, ProtocolVersion { major: 3, minor: 0 });
    let params: Vec<(&str, &str)> = msg
        .params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        params,
        [
            ("user", "alice"),
            ("database", "test"),
            ("application_name", "psql")
        ]
    );
    assert_eq!(msg.user(), Some("alice"));
    assert_eq!(msg.database(), Some("test"));
    assert_eq!(msg.get("application_name"), Some("psql"));
    assert_eq!(msg.get("options"), None);
    assert_eq!(msg.protocol_options().count(), 0);
}

#[test]
fn psql_special_requests() {
    assert_eq!(decode(PSQL_SSL_REQUEST).0, Ok(Some(StartupRequest::Ssl)));
    assert_eq!(
        decode(PSQL_GSSENC_REQUEST).0,
        Ok(Some(StartupRequest::GssEnc))
    );
    assert_eq!(
        decode(PSQL_CANCEL_REQUEST).0,
        Ok(Some(StartupRequest::Cancel {
            process_id: 4242,
            secret_key: 0x1234_abcd
        }))
    );
}

#[test]
fn every_split_point_needs_more_and_leaves_buf_untouched() {
    for fixture in [
        PSQL_STARTUP,
        PSQL_SSL_REQUEST,
        PSQL_GSSENC_REQUEST,
        PSQL_CANCEL_REQUEST,
    ] {
        for cut in 0..fixture.len() {
            let prefix = &fixture[..cut];
            let (res, buf) = decode(prefix);
            assert_eq!(res, Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], prefix, "cut at {cut}");
        }
    }
}

#[test]
fn bytes_pipelined_after_ssl_request_stay_in_buf() {
    // CVE-2021-23214: whatever follows the SSLRequest must not be consumed,
    // so the caller can see it arrived before the TLS handshake.
    let mut stream = PSQL_SSL_REQUEST.to_vec();
    stream.extend_from_slice(PSQL_STARTUP);
    let (res, buf) = decode(&stream);
    assert_eq!(res, Ok(Some(StartupRequest::Ssl)));
    assert_eq!(&buf[..], PSQL_STARTUP);

    let mut stream = PSQL_GSSENC_REQUEST.to_vec();
    stream.push(0x16);
    let (res, buf) = decode(&stream);
    assert_eq!(res, Ok(Some(StartupRequest::GssEnc)));
    assert_eq!(&buf[..], [0x16]);
}

#[test]
fn startup_then_next_message_consumes_only_the_startup() {
    let mut stream = PSQL_STARTUP.to_vec();
    stream.extend_from_slice(b"p\x00\x00\x00\x09pw\x00\x00");
    let (res, buf) = decode(&stream);
    assert!(matches!(res, Ok(Some(StartupRequest::Startup(_)))));
    assert_eq!(&buf[..], b"p\x00\x00\x00\x09pw\x00\x00");
}

#[test]
fn short_lengths_are_refused_from_the_length_word_alone() {
    for len in 0..8u32 {
        let (res, _) = decode(&len.to_be_bytes());
        assert_eq!(res, Err(StartupError::TooShort(len)), "len {len}");
    }
}

#[test]
fn long_lengths_are_refused_from_the_length_word_alone() {
    for len in [10_001, 65_536, 0x0403_0201, u32::MAX] {
        let (res, _) = decode(&len.to_be_bytes());
        assert_eq!(res, Err(StartupError::TooLong(len)), "len {len}");
    }
    // A direct TLS ClientHello (no SSLRequest) reads as a huge length.
    let (res, _) = decode(b"\x16\x03\x01\x02\x00\x01\x00\x01");
    assert_eq!(res, Err(StartupError::TooLong(0x1603_0102)));
}

#[test]
fn exactly_max_len_is_accepted() {
    let mut body = b"user\x00alice\x00x\x00".to_vec();
    let value_len = MAX_STARTUP_PACKET_LEN - 8 - body.len() - 2;
    body.extend(std::iter::repeat_n(b'v', value_len));
    body.extend_from_slice(b"\x00\x00");
    let bytes = packet(v3(0), &body);
    assert_eq!(bytes.len(), MAX_STARTUP_PACKET_LEN);
    let (res, buf) = decode(&bytes);
    let Ok(Some(StartupRequest::Startup(msg))) = res else {
        panic!("unexpected {res:?}");
    };
    assert_eq!(msg.get("x").map(str::len), Some(value_len));
    assert!(buf.is_empty());
}

#[test]
fn unknown_versions_are_refused() {
    // 1234.5678/5679/5680 are the cancel/SSL/GSSENC codes; neighbours are not.
    for (major, minor) in [
        (2, 0),
        (1, 0),
        (4, 0),
        (0, 0),
        (1234, 5681),
        (1234, 5677),
        (1234, 0),
    ] {
        let code = ProtocolVersion { major, minor }.code();
        let (res, _) = decode(&packet(code, b"user\x00alice\x00\x00"));
        assert_eq!(
            res,
            Err(StartupError::UnsupportedVersion { major, minor }),
            "{major}.{minor}"
        );
    }
}

#[test]
fn unsupported_version_text_matches_postgres() {
    // Captured from PostgreSQL 15.20 for a 2.0 StartupMessage:
    // "EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n".
    let err = StartupError::UnsupportedVersion { major: 2, minor: 0 };
    assert_eq!(
        err.to_string(),
        "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"
    );
    assert_eq!(err.sqlstate(), "0A000");
}

#[test]
fn newer_minor_versions_are_decoded_for_negotiation() {
    let (res, _) = decode(&packet(
        v3(2),
        b"user\x00a\x00_pq_.x\x001\x00_pq_.y\x00\x00\x00",
    ));
    let Ok(Some(StartupRequest::Startup(msg))) = res else {
        panic!("unexpected {res:?}");
    };
    assert_eq!(msg.version, ProtocolVersion { major: 3, minor: 2 });
    assert_eq!(
        msg.protocol_options().collect::<Vec<_>>(),
        ["_pq_.x", "_pq_.y"]
    );
}

#[test]
fn missing_or_empty_user_is_refused_with_postgres_text() {
    let msg = malformed(&packet(v3(0), b"database\x00test\x00\x00"));
    assert_eq!(msg, MSG_NO_USER);
    assert_eq!(malformed(&packet(v3(0), b"\x00")), MSG_NO_USER);
    assert_eq!(malformed(&packet(v3(0), b"user\x00\x00\x00")), MSG_NO_USER);

    // Same text as PostgreSQL's own ErrorResponse (its 'M' field).
    let pg_text = b"Mno PostgreSQL user name specified in startup packet\x00";
    assert!(PG15_NO_USER_ERROR
        .windows(pg_text.len())
        .any(|w| w == pg_text));
    let err = StartupError::Malformed(MSG_NO_USER);
    assert_eq!(err.to_string().as_bytes(), &pg_text[1..pg_text.len() - 1]);
    assert_eq!(err.sqlstate(), "28000");
}

#[test]
fn layout_errors() {
    let cases: &[&[u8]] = &[
        b"",                                    // no terminator at all (length 8)
        b"user\x00alice\x00",                   // list not terminated
        b"user\x00alice",                       // value not terminated
        b"user\x00alice\x00db\x00\x00",         // name without value
        b"user\x00alice\x00\x00x\x00y\x00\x00", // terminator before the end
        b"user\x00alice\x00\x00\x00",           // two terminators
        b"user",                                // no NUL anywhere
    ];
    for body in cases {
        assert_eq!(
            malformed(&packet(v3(0), body)),
            MSG_NO_TERMINATOR,
            "{body:?}"
        );
    }
    let err = StartupError::Malformed(MSG_NO_TERMINATOR);
    assert_eq!(err.sqlstate(), "08P01");
}

#[test]
fn invalid_utf8_is_refused() {
    assert_eq!(
        malformed(&packet(v3(0), b"user\x00al\xffce\x00\x00")),
        MSG_NOT_UTF8
    );
    assert_eq!(
        malformed(&packet(v3(0), b"us\xc3er\x00alice\x00\x00")),
        MSG_NOT_UTF8
    );
}

#[test]
fn duplicate_parameters_are_refused() {
    let body = b"user\x00alice\x00database\x00a\x00user\x00postgres\x00\x00";
    assert_eq!(malformed(&packet(v3(0), body)), MSG_DUPLICATE_PARAM);
    let body = b"user\x00alice\x00x\x001\x00x\x002\x00\x00";
    assert_eq!(malformed(&packet(v3(0), body)), MSG_DUPLICATE_PARAM);
}

#[test]
fn special_requests_must_have_their_exact_length() {
    for (code, msg) in [
        (SSL_REQUEST_CODE, MSG_BAD_SSL_LEN),
        (GSSENC_REQUEST_CODE, MSG_BAD_GSSENC_LEN),
    ] {
        // Refused as soon as the code is visible, before the body arrives.
        assert_eq!(malformed(&raw_packet(12, code, b"")), msg);
        assert_eq!(malformed(&packet(code, b"\x00\x00\x00\x00")), msg);
    }
    for body_len in [0, 4, 7, 9, 100] {
        let body = vec![0; body_len];
        assert_eq!(
            malformed(&packet(CANCEL_REQUEST_CODE, &body)),
            MSG_BAD_CANCEL_LEN
        );
    }
}

#[test]
fn error_texts_are_lowercase_and_clear() {
    assert_eq!(
        StartupError::TooShort(3).to_string(),
        "invalid length of startup packet: 3 bytes, the minimum is 8"
    );
    assert_eq!(
        StartupError::TooLong(u32::MAX).to_string(),
        "invalid length of startup packet: 4294967295 bytes, the maximum is 10000"
    );
    for msg in [
        MSG_NO_TERMINATOR,
        MSG_NO_USER,
        MSG_NOT_UTF8,
        MSG_DUPLICATE_PARAM,
        MSG_BAD_SSL_LEN,
        MSG_BAD_GSSENC_LEN,
        MSG_BAD_CANCEL_LEN,
    ] {
        assert_eq!(StartupError::Malformed(msg).to_string(), msg);
        assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
    }
}

#[test]
fn encode_startup_reproduces_psql_bytes() {
    let msg = StartupMessage {
        version: ProtocolVersion { major: 3, minor: 0 },
        params: vec![
            ("user".into(), "alice".into()),
            ("database".into(), "test".into()),
            ("application_name".into(), "psql".into()),
        ],
    };
    let mut out = BytesMut::new();
    encode_startup(&msg, &mut out);
    assert_eq!(&out[..], PSQL_STARTUP);
}

#[test]
fn encode_startup_keeps_framing_with_nul_bytes() {
    let msg = StartupMessage {
        version: ProtocolVersion { major: 3, minor: 0 },
        params: vec![
            ("\0".into(), "dropped".into()),
            ("user".into(), "al\0ice".into()),
            ("".into(), "dropped".into()),
        ],
    };
    let mut out = BytesMut::new();
    encode_startup(&msg, &mut out);
    assert_eq!(&out[..], packet(v3(0), b"user\x00alice\x00\x00"));
}

#[test]
fn encode_cancel_request_reproduces_psql_bytes() {
    let mut out = BytesMut::new();
    encode_cancel_request(4242, 0x1234_abcd, &mut out);
    assert_eq!(&out[..], PSQL_CANCEL_REQUEST);
}

#[test]
fn get_prefers_the_last_duplicate_like_the_server() {
    let msg = StartupMessage {
        version: ProtocolVersion { major: 3, minor: 0 },
        params: vec![("user".into(), "a".into()), ("user".into(), "b".into())],
    };
    assert_eq!(msg.user(), Some("b"));
}

#[test]
fn protocol_version_code_round_trip() {
    assert_eq!(
        ProtocolVersion::from_code(SSL_REQUEST_CODE).to_string(),
        "1234.5679"
    );
    assert_eq!(
        ProtocolVersion::from_code(GSSENC_REQUEST_CODE).to_string(),
        "1234.5680"
    );
    assert_eq!(
        ProtocolVersion::from_code(CANCEL_REQUEST_CODE).to_string(),
        "1234.5678"
    );
    assert_eq!(v3(0), 0x0003_0000);
}

/// Bytes that look enough like a startup packet to reach the parameter parser.
fn startup_like() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(prop_oneof![Just(0u8), Just(b'u'), any::<u8>()], 0..64);
    (0u32..80, prop_oneof![Just(v3(0)), any::<u32>()], body).prop_map(|(extra, code, body)| {
        let mut bytes = raw_packet(8 + extra, code, &body);
        if extra == 0 {
            // Sometimes a well-framed length.
            let len = u32::try_from(bytes.len()).unwrap();
            bytes[..4].copy_from_slice(&len.to_be_bytes());
        }
        bytes
    })
}

fn check_decoder_contract(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    match decode_startup(&mut buf) {
        Ok(None) => assert_eq!(&buf[..], input),
        Ok(Some(_)) => {
            let consumed = input.len() - buf.len();
            assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&consumed));
            assert_eq!(&buf[..], &input[consumed..]);
        }
        Err(_) => {}
    }
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..256)) {
        check_decoder_contract(&input);
    }

    #[test]
    fn decode_never_panics_on_startup_like_bytes(input in startup_like()) {
        check_decoder_contract(&input);
    }

    #[test]
    fn encode_then_decode_round_trips(
        minor in any::<u16>(),
        user in "[^\u{0}]{1,16}",
        others in prop::collection::btree_map("[^\u{0}]{1,12}", "[^\u{0}]{0,16}", 0..8),
        trailing in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut params = vec![("user".to_owned(), user)];
        params.extend(others.into_iter().filter(|(n, _)| n != "user"));
        let msg = StartupMessage { version: ProtocolVersion { major: 3, minor }, params };
        let mut buf = BytesMut::new();
        encode_startup(&msg, &mut buf);
        buf.put_slice(&trailing);
        prop_assert_eq!(decode_startup(&mut buf), Ok(Some(StartupRequest::Startup(msg))));
        prop_assert_eq!(&buf[..], &trailing[..]);
    }

    #[test]
    fn cancel_round_trips(process_id in any::<u32>(), secret_key in any::<u32>()) {
        let mut buf = BytesMut::new();
        encode_cancel_request(process_id, secret_key, &mut buf);
        prop_assert_eq!(
            decode_startup(&mut buf),
            Ok(Some(StartupRequest::Cancel { process_id, secret_key }))
        );
        prop_assert!(buf.is_empty());
    }
}

#[test]
fn encoded_ssl_request_decodes_as_one() {
    let mut b = BytesMut::new();
    super::encode_ssl_request(&mut b);
    assert_eq!(b.as_ref(), &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    assert_eq!(
        super::decode_startup(&mut b),
        Ok(Some(super::StartupRequest::Ssl))
    );
    assert!(b.is_empty());
}
