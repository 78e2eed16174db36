//! Tests for the gateway's own backend messages: exact bytes against known
//! fixtures (including PostgreSQL's own), framing round-trips, NUL handling.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::postgres::backend::{decode_backend_message, parse_backend_key_data, BackendMessage};
use crate::postgres::fixtures::{PG15_NEGOTIATE_PROTOCOL_VERSION, PG15_NO_USER_ERROR};

/// Decodes `bytes` as exactly one backend message.
fn single_message(bytes: &[u8]) -> BackendMessage {
    let mut buf = BytesMut::from(bytes);
    let msg = decode_backend_message(&mut buf, usize::MAX)
        .unwrap()
        .unwrap();
    assert!(buf.is_empty(), "trailing bytes after the message");
    msg
}

/// Splits an ErrorResponse/NoticeResponse body into (field type, text).
fn fields(body: &[u8]) -> Vec<(u8, String)> {
    let (last, body) = body.split_last().unwrap();
    assert_eq!(*last, 0, "missing terminator");
    if body.is_empty() {
        return Vec::new();
    }
    let (last, body) = body.split_last().unwrap();
    assert_eq!(*last, 0, "last field not NUL-terminated");
    body.split(|&b| b == 0)
        .map(|f| (f[0], String::from_utf8(f[1..].to_vec()).unwrap()))
        .collect()
}

fn encode_error(f: &ErrorFields<'_>) -> BytesMut {
    let mut out = BytesMut::new();
    encode_error_response(f, &mut out);
    out
}

#[test]
fn error_response_exact_bytes() {
    let out = encode_error(&ErrorFields {
        severity: "FATAL",
        code: "57P01",
        message: "access grant expired",
        detail: Some("grant g1 ended at 12:00"),
        hint: Some("request a new grant"),
    });
    let expected: &[u8] = b"E\x00\x00\x00\x5e\
        SFATAL\x00VFATAL\x00C57P01\x00Maccess grant expired\x00\
        Dgrant g1 ended at 12:00\x00Hrequest a new grant\x00\x00";
    assert_eq!(&out[..], expected);
}

#[test]
fn error_response_matches_postgres_fields() {
    // PostgreSQL 15's FATAL for a missing user, minus the F/L/R source
    // location fields the gateway has no reason to send.
    let pg = single_message(PG15_NO_USER_ERROR);
    let pg_fields: Vec<(u8, String)> = fields(&pg.body)
        .into_iter()
        .filter(|(t, _)| !b"FLR".contains(t))
        .collect();
    let ours = single_message(&encode_error(&ErrorFields {
        severity: "FATAL",
        code: "28000",
        message: "no PostgreSQL user name specified in startup packet",
        detail: None,
        hint: None,
    }));
    assert_eq!(ours.tag, pg.tag);
    assert_eq!(fields(&ours.body), pg_fields);
}

#[test]
fn notice_response_has_the_error_layout() {
    let f = ErrorFields {
        severity: "WARNING",
        code: "01000",
        message: "access grant ends in 5 minutes",
        detail: None,
        hint: Some("request an extension"),
    };
    let error = encode_error(&f);
    let mut notice = BytesMut::new();
    encode_notice_response(&f, &mut notice);
    assert_eq!(notice[0], b'N');
    assert_eq!(&notice[1..], &error[1..]);
    let msg = single_message(&notice);
    assert_eq!(
        fields(&msg.body),
        [
            (b'S', "WARNING".to_owned()),
            (b'V', "WARNING".to_owned()),
            (b'C', "01000".to_owned()),
            (b'M', "access grant ends in 5 minutes".to_owned()),
            (b'H', "request an extension".to_owned()),
        ]
    );
}

#[test]
fn nul_bytes_in_texts_do_not_break_framing() {
    let out = encode_error(&ErrorFields {
        severity: "ERR\0OR",
        code: "XX000",
        message: "bad\0name",
        detail: Some("\0"),
        hint: None,
    });
    let msg = single_message(&out);
    assert_eq!(
        fields(&msg.body),
        [
            (b'S', "ERR\u{FFFD}OR".to_owned()),
            (b'V', "ERR\u{FFFD}OR".to_owned()),
            (b'C', "XX000".to_owned()),
            (b'M', "bad\u{FFFD}name".to_owned()),
            (b'D', "\u{FFFD}".to_owned()),
        ]
    );
}

#[test]
fn long_texts_are_cut_at_a_char_boundary() {
    let long = "é".repeat(MAX_TEXT_LEN); // 2 bytes each
    let out = encode_error(&ErrorFields {
        severity: "ERROR",
        code: "XX000",
        message: &long,
        detail: None,
        hint: None,
    });
    let msg = single_message(&out);
    let message = &fields(&msg.body)[3].1;
    assert_eq!(message.len(), MAX_TEXT_LEN);
    assert!(long.starts_with(message.as_str()));

    let odd = format!("x{long}"); // the cut falls inside a 'é'
    assert_eq!(text(&odd).len(), MAX_TEXT_LEN - 1);
}

#[test]
fn negotiate_protocol_version_matches_postgres() {
    let mut out = BytesMut::new();
    encode_negotiate_protocol_version(0, &["_pq_.foo", "_pq_.bar"], &mut out);
    assert_eq!(&out[..], PG15_NEGOTIATE_PROTOCOL_VERSION);
}

#[test]
fn negotiate_protocol_version_layout() {
    let mut out = BytesMut::new();
    encode_negotiate_protocol_version(2, &[], &mut out);
    assert_eq!(
        &out[..],
        b"v\x00\x00\x00\x0c\x00\x03\x00\x02\x00\x00\x00\x00"
    );

    let mut out = BytesMut::new();
    encode_negotiate_protocol_version(u32::MAX, &["_pq_.a\0b"], &mut out);
    let msg = single_message(&out);
    assert_eq!(&msg.body[..8], b"\x00\x03\xff\xff\x00\x00\x00\x01");
    assert_eq!(&msg.body[8..], "_pq_.a\u{FFFD}b\0".as_bytes());
}

#[test]
fn backend_key_data_round_trip() {
    let mut out = BytesMut::new();
    encode_backend_key_data(4242, 0x1234_abcd, &mut out);
    assert_eq!(
        &out[..],
        b"K\x00\x00\x00\x0c\x00\x00\x10\x92\x12\x34\xab\xcd"
    );
    let msg = single_message(&out);
    assert_eq!(msg.tag, b'K');
    assert_eq!(parse_backend_key_data(&msg.body), Some((4242, 0x1234_abcd)));
}

#[test]
fn ssl_not_supported_byte() {
    assert_eq!(SSL_NOT_SUPPORTED, b'N');
}

proptest! {
    #[test]
    fn error_fields_round_trip(
        severity in "\\PC{0,12}",
        code in "[0-9A-Z\u{0}]{0,6}",
        message in "\\PC{0,64}|[a\u{0}é]{0,64}",
        detail in proptest::option::of("[a-z \u{0}]{0,40}"),
        hint in proptest::option::of("\\PC{0,40}"),
    ) {
        let f = ErrorFields { severity: &severity, code: &code, message: &message, detail: detail.as_deref(), hint: hint.as_deref() };
        let msg = single_message(&encode_error(&f));
        prop_assert_eq!(msg.tag, b'E');
        let clean = |s: &str| s.replace('\0', "\u{FFFD}");
        let mut expected = vec![
            (b'S', clean(&severity)),
            (b'V', clean(&severity)),
            (b'C', clean(&code)),
            (b'M', clean(&message)),
        ];
        if let Some(d) = &detail { expected.push((b'D', clean(d))); }
        if let Some(h) = &hint { expected.push((b'H', clean(h))); }
        prop_assert_eq!(fields(&msg.body), expected);
    }

    #[test]
    fn negotiate_round_trip(minor in any::<u16>(), options in prop::collection::vec("_pq_\\.[a-z_]{0,20}", 0..10)) {
        let refs: Vec<&str> = options.iter().map(String::as_str).collect();
        let mut out = BytesMut::new();
        encode_negotiate_protocol_version(u32::from(minor), &refs, &mut out);
        let msg = single_message(&out);
        prop_assert_eq!(msg.tag, b'v');
        let (head, names) = msg.body.split_at(8);
        prop_assert_eq!(&head[..4], &ProtocolVersion { major: 3, minor }.code().to_be_bytes());
        prop_assert_eq!(&head[4..], &u32::try_from(options.len()).unwrap().to_be_bytes());
        let mut expected = Vec::new();
        for o in &options {
            expected.extend_from_slice(o.as_bytes());
            expected.push(0);
        }
        prop_assert_eq!(names, &expected[..]);
    }
}
