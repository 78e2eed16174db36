//! Tests for whole-message decoding: a real PostgreSQL 15 stream, every split
//! point, hostile lengths, BackendKeyData bodies, and a no-panic property.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::postgres::fixtures::PG15_BACKEND_STREAM;

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
