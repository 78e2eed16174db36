//! Tests for whole-message decoding: a real PostgreSQL 15 stream, every split
//! point, hostile lengths, BackendKeyData bodies, a no-panic property, and
//! the round trip of the messages the gateway encodes itself.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::postgres::fixtures::PG15_BACKEND_STREAM;
use crate::postgres::{
    encode_backend_key_data, encode_error_response, encode_notice_response, ErrorFields,
};

const MAX: usize = 64 * 1024;

/// Decodes every complete message at the front of `buf`.
fn drain(buf: &mut BytesMut) -> Vec<BackendMessage> {
    let mut out = Vec::new();
    while let Some(msg) = decode_backend_message(buf, MAX).unwrap() {
        out.push(msg);
    }
    out
}

#[test]
fn real_backend_stream() {
    let mut buf = BytesMut::from(PG15_BACKEND_STREAM);
    let msgs = drain(&mut buf);
    assert!(buf.is_empty());
    let tags: String = msgs.iter().map(|m| char::from(m.tag)).collect();
    assert_eq!(tags, "RSSSSSSSSSSSSSKZTDCZNCZEZ");

    // AuthenticationOk.
    assert_eq!(&msgs[0].body[..], [0, 0, 0, 0]);
    assert_eq!(&msgs[1].body[..], b"application_name\x00psql\x00");
    // BackendKeyData as sent by the server.
    let key = msgs.iter().find(|m| m.tag == b'K').unwrap();
    assert_eq!(
        parse_backend_key_data(&key.body),
        Some((0x22e0, 0xdcc8_343f))
    );
    // ReadyForQuery: idle after login and after each autocommitted -c command.
    let statuses: Vec<&[u8]> = msgs
        .iter()
        .filter(|m| m.tag == b'Z')
        .map(|m| &m.body[..])
        .collect();
    assert_eq!(statuses, [b"I", b"I", b"I", b"I"]);
}

#[test]
fn every_split_point_decodes_only_complete_messages() {
    let mut whole = BytesMut::from(PG15_BACKEND_STREAM);
    let all = drain(&mut whole);
    for cut in 0..=PG15_BACKEND_STREAM.len() {
        let (head, tail) = PG15_BACKEND_STREAM.split_at(cut);
        let mut buf = BytesMut::from(head);
        let mut got = drain(&mut buf);
        let consumed = cut - buf.len();
        // What is left is an untouched prefix of the next message.
        assert_eq!(&buf[..], &head[consumed..], "cut at {cut}");
        buf.extend_from_slice(tail);
        got.extend(drain(&mut buf));
        assert_eq!(got, all, "cut at {cut}");
    }
}

#[test]
fn lengths_below_four_are_refused() {
    for len in 0..4u32 {
        let mut buf = BytesMut::from(&b"Z"[..]);
        buf.extend_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode_backend_message(&mut buf, MAX),
            Err(FrameError::BadLength(len))
        );
    }
}

#[test]
fn lengths_above_max_are_refused_from_the_header_alone() {
    for len in [8193, 1 << 20, u32::MAX] {
        let mut buf = BytesMut::from(&b"D"[..]);
        buf.extend_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode_backend_message(&mut buf, 8192),
            Err(FrameError::TooLong { len, max: 8192 })
        );
        // Nothing was reserved for the hostile length.
        assert!(buf.capacity() < 8192);
    }
}

#[test]
fn length_equal_to_max_is_accepted() {
    let mut buf = BytesMut::from(&b"d\x00\x00\x00\x0a"[..]);
    assert_eq!(decode_backend_message(&mut buf, 10), Ok(None));
    assert_eq!(&buf[..], b"d\x00\x00\x00\x0a");
    buf.extend_from_slice(b"123456trailing");
    let msg = decode_backend_message(&mut buf, 10).unwrap().unwrap();
    assert_eq!(msg.tag, b'd');
    assert_eq!(&msg.body[..], b"123456");
    assert_eq!(&buf[..], b"trailing");
}

#[test]
fn empty_body() {
    let mut buf = BytesMut::from(&b"I\x00\x00\x00\x04"[..]);
    let msg = decode_backend_message(&mut buf, MAX).unwrap().unwrap();
    assert_eq!((msg.tag, msg.body.len()), (b'I', 0));
    assert!(buf.is_empty());
}

#[test]
fn backend_key_data_must_be_eight_bytes() {
    assert_eq!(
        parse_backend_key_data(b"\x00\x00\x10\x92\x12\x34\xab\xcd"),
        Some((4242, 0x1234_abcd))
    );
    for len in [0, 4, 7, 9, 36] {
        assert_eq!(parse_backend_key_data(&vec![1; len]), None, "len {len}");
    }
}

#[test]
fn error_texts() {
    assert_eq!(
        FrameError::BadLength(2).to_string(),
        "invalid message length 2 from server: the minimum is 4"
    );
    assert_eq!(
        FrameError::TooLong {
            len: 9000,
            max: 8192
        }
        .to_string(),
        "message length 9000 from server exceeds the limit of 8192 bytes"
    );
}

proptest! {
    #[test]
    fn decode_never_panics(input in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
        let mut buf = BytesMut::from(&input[..]);
        match decode_backend_message(&mut buf, max) {
            Ok(None) => prop_assert_eq!(&buf[..], &input[..]),
            Ok(Some(msg)) => {
                let consumed = input.len() - buf.len();
                prop_assert_eq!(consumed, msg.body.len() + 5);
                prop_assert!(consumed - 1 <= max);
                prop_assert_eq!(&buf[..], &input[consumed..]);
            }
            Err(_) => {}
        }
    }
}

/// A message the gateway writes itself, as generated input.
#[derive(Debug, Clone)]
enum Written {
    Error {
        notice: bool,
        message: String,
        detail: Option<String>,
    },
    KeyData(u32, u32),
}

fn written() -> impl Strategy<Value = Written> {
    prop_oneof![
        (
            any::<bool>(),
            "\\PC{0,80}",
            proptest::option::of("[a-z\\x00é ]{0,40}")
        )
            .prop_map(|(notice, message, detail)| Written::Error {
                notice,
                message,
                detail
            }),
        (any::<u32>(), any::<u32>()).prop_map(|(p, k)| Written::KeyData(p, k)),
    ]
}

/// The fields of an ErrorResponse/NoticeResponse body, in order.
fn fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            assert!(tail.is_empty(), "bytes after the terminator");
            break;
        }
        let end = tail.iter().position(|&b| b == 0).expect("NUL-terminated");
        out.push((t, String::from_utf8(tail[..end].to_vec()).unwrap()));
        rest = &tail[end + 1..];
    }
    out
}

proptest! {
    /// What the gateway encodes decodes back to the same messages however
    /// the stream is cut into reads.
    #[test]
    fn encoded_messages_decode_back_whatever_the_chunking(
        msgs in prop::collection::vec(written(), 1..8),
        cuts in prop::collection::vec(1usize..40, 1..20),
    ) {
        let mut stream = BytesMut::new();
        for m in &msgs {
            match m {
                Written::Error { notice, message, detail } => {
                    let f = ErrorFields {
                        severity: if *notice { "WARNING" } else { "FATAL" },
                        code: "08006",
                        message,
                        detail: detail.as_deref(),
                        hint: None,
                    };
                    if *notice {
                        encode_notice_response(&f, &mut stream);
                    } else {
                        encode_error_response(&f, &mut stream);
                    }
                }
                Written::KeyData(p, k) => encode_backend_key_data(*p, *k, &mut stream),
            }
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        for n in cuts.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + n).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            decoded.extend(drain(&mut buf));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded.len(), msgs.len());
        for (m, d) in msgs.iter().zip(&decoded) {
            match m {
                Written::Error { notice, message, detail } => {
                    prop_assert_eq!(d.tag, if *notice { b'N' } else { b'E' });
                    let f = fields(&d.body);
                    let get = |t: u8| f.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone());
                    // A NUL cannot travel inside a field: it becomes U+FFFD.
                    prop_assert_eq!(get(b'M'), Some(message.replace('\0', "\u{FFFD}")));
                    prop_assert_eq!(get(b'D'), detail.as_ref().map(|d| d.replace('\0', "\u{FFFD}")));
                    prop_assert_eq!(get(b'C'), Some("08006".to_string()));
                }
                Written::KeyData(p, k) => {
                    prop_assert_eq!(d.tag, b'K');
                    prop_assert_eq!(parse_backend_key_data(&d.body), Some((*p, *k)));
                }
            }
        }
    }
}
