//! Tests for the PROXY protocol codec: headers captured from HAProxy 2.6
//! (`send-proxy`, `send-proxy-v2`), every split point, exact reads, hostile
//! headers and property tests.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

/// HAProxy `send-proxy` for a client 127.0.0.1:46528 → 127.0.0.1:17101,
/// followed by the client's first bytes.
const HAPROXY_V1: &[u8] = b"PROXY TCP4 127.0.0.1 127.0.0.1 46528 17101\r\nhello";

/// HAProxy `send-proxy-v2` for a client 127.0.0.1:54244 → 127.0.0.1:17102,
/// followed by the client's first bytes.
const HAPROXY_V2: &[u8] = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x11\x00\x0c\
\x7f\x00\x00\x01\x7f\x00\x00\x01\xd3\xe4\x42\xce\x68\x65\x6c\x6c\x6f";

fn tcp(src: &str, dst: &str) -> ProxyHeader {
    ProxyHeader::Tcp {
        source: src.parse().unwrap(),
        destination: dst.parse().unwrap(),
    }
}

fn decode_bytes(bytes: &[u8]) -> (Result<Option<ProxyHeader>, ProxyError>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let r = decode(&mut buf);
    (r, buf)
}

/// Read `stream` the way the gateway does: only `bytes_wanted` at a time.
/// Returns the header and how many bytes were read.
fn read_exactly(stream: &[u8]) -> (Result<ProxyHeader, ProxyError>, usize) {
    let mut buf = BytesMut::new();
    let mut pos = 0;
    loop {
        match decode(&mut buf) {
            Ok(Some(h)) => {
                assert!(buf.is_empty(), "read past the header");
                return (Ok(h), pos);
            }
            Err(e) => return (Err(e), pos),
            Ok(None) => {}
        }
        let want = bytes_wanted(&buf);
        assert!(want > 0, "decode wants more but bytes_wanted is 0");
        let end = (pos + want).min(stream.len());
        if end == pos {
            return (Err(ProxyError::Malformed("stream ended")), pos);
        }
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
    }
}

#[test]
fn haproxy_headers_decode_and_leave_the_stream() {
    let (h, rest) = decode_bytes(HAPROXY_V1);
    assert_eq!(h, Ok(Some(tcp("127.0.0.1:46528", "127.0.0.1:17101"))));
    assert_eq!(&rest[..], b"hello");
    let (h, rest) = decode_bytes(HAPROXY_V2);
    assert_eq!(h, Ok(Some(tcp("127.0.0.1:54244", "127.0.0.1:17102"))));
    assert_eq!(&rest[..], b"hello");
}

#[test]
fn exact_reads_stop_at_the_header_end() {
    for (stream, len) in [(HAPROXY_V1, HAPROXY_V1.len() - 5), (HAPROXY_V2, 28)] {
        let (h, read) = read_exactly(stream);
        assert!(h.is_ok());
        assert_eq!(read, len);
    }
    let (h, read) = read_exactly(b"PROXY UNKNOWN\r\nhello");
    assert_eq!(h, Ok(ProxyHeader::Local));
    assert_eq!(read, 15);
}

#[test]
fn every_split_point_waits_without_consuming() {
    for stream in [HAPROXY_V1, HAPROXY_V2] {
        let header_len = stream.len() - 5;
        for cut in 0..header_len {
            let (h, rest) = decode_bytes(&stream[..cut]);
            assert_eq!(h, Ok(None), "cut {cut}");
            assert_eq!(rest.len(), cut);
        }
    }
}

#[test]
fn encode_v2_round_trips_and_matches_haproxy() {
    let mut out = BytesMut::new();
    encode_v2(
        "127.0.0.1:54244".parse().unwrap(),
        "127.0.0.1:17102".parse().unwrap(),
        &mut out,
    );
    assert_eq!(&out[..], &HAPROXY_V2[..28]);

    let src: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.1:22".parse().unwrap();
    let mut out = BytesMut::new();
    encode_v2(src, dst, &mut out);
    assert_eq!(out.len(), 16 + 36);
    let (h, rest) = decode_bytes(&out);
    assert!(rest.is_empty());
    assert_eq!(
        h,
        Ok(Some(tcp("[2001:db8::7]:40000", "[::ffff:10.0.0.1]:22")))
    );
    // IPv4-mapped addresses are sent as IPv4.
    let mut out = BytesMut::new();
    encode_v2(
        "[::ffff:192.0.2.1]:1".parse().unwrap(),
        "192.0.2.2:2".parse().unwrap(),
        &mut out,
    );
    assert_eq!(out[13], 0x11);
}

#[test]
fn v1_variants() {
    let (h, _) = decode_bytes(b"PROXY TCP6 2001:db8::1 ::1 65535 22\r\n");
    assert_eq!(h, Ok(Some(tcp("[2001:db8::1]:65535", "[::1]:22"))));
    let (h, _) = decode_bytes(b"PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n");
    assert_eq!(h, Ok(Some(ProxyHeader::Local)));
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ] {
        let (h, rest) = decode_bytes(bad);
        assert!(
            matches!(h, Err(ProxyError::Malformed(_))),
            "{:?}: {h:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(rest.len(), bad.len());
    }
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(MAX_V1_LEN, b'1');
    assert_eq!(decode_bytes(&long).0, Err(ProxyError::TooLong));
}

#[test]
fn v2_variants() {
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(decode_bytes(&local).0, Ok(Some(ProxyHeader::Local)));
    // TLVs after the addresses are skipped.
    let mut tlv = HAPROXY_V2[..28].to_vec();
    tlv[15] = 12 + 7;
    tlv.extend_from_slice(&[0x04, 0x00, 0x04, b'a', b'b', b'c', b'd']);
    let (h, rest) = decode_bytes(&tlv);
    assert_eq!(h, Ok(Some(tcp("127.0.0.1:54244", "127.0.0.1:17102"))));
    assert!(rest.is_empty());
    // Unix family: the real endpoints are used.
    let mut unix = V2_SIGNATURE.to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0x00, 0xd8]);
    unix.extend_from_slice(&[0u8; 216]);
    assert_eq!(decode_bytes(&unix).0, Ok(Some(ProxyHeader::Local)));
    // Bad version, bad command, short address block, oversized body.
    for (byte, val) in [(12, 0x11), (12, 0x22)] {
        let mut b = HAPROXY_V2[..28].to_vec();
        b[byte] = val;
        assert!(matches!(decode_bytes(&b).0, Err(ProxyError::Malformed(_))));
    }
    let mut short = HAPROXY_V2[..16].to_vec();
    short[15] = 4;
    short.extend_from_slice(&[1, 2, 3, 4]);
    assert!(matches!(
        decode_bytes(&short).0,
        Err(ProxyError::Malformed(_))
    ));
    let mut huge = HAPROXY_V2[..16].to_vec();
    huge[14] = 0xff;
    assert_eq!(decode_bytes(&huge).0, Err(ProxyError::TooLong));
    assert_eq!(bytes_wanted(&huge), 0);
}

#[test]
fn anything_else_is_not_proxy_at_its_first_byte() {
    assert_eq!(decode_bytes(b"S").0, Err(ProxyError::NotProxy));
    assert_eq!(
        decode_bytes(b"SSH-2.0-OpenSSH_9.2p1\r\n").0,
        Err(ProxyError::NotProxy)
    );
    assert_eq!(decode_bytes(b"\r\n\r\nX").0, Err(ProxyError::NotProxy));
    assert_eq!(decode_bytes(b"PROX").0, Ok(None));
}

proptest! {
    #[test]
    fn decode_never_panics_and_consumes_all_or_nothing(input in prop::collection::vec(any::<u8>(), 0..300)) {
        let (r, rest) = decode_bytes(&input);
        match r {
            Ok(Some(_)) => prop_assert!(rest.len() < input.len()),
            _ => prop_assert_eq!(rest.len(), input.len()),
        }
        let _ = bytes_wanted(&input);
    }

    #[test]
    fn prefixed_garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..300), v2 in any::<bool>()) {
        let mut input = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
        input.extend_from_slice(&tail);
        let (r, rest) = decode_bytes(&input);
        if !matches!(r, Ok(Some(_))) {
            prop_assert_eq!(rest.len(), input.len());
        }
        let _ = read_exactly(&input);
    }

    #[test]
    fn v2_round_trips(a in any::<[u8; 16]>(), b in any::<[u8; 4]>(), p in any::<u16>(), q in any::<u16>()) {
        let src = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p);
        let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b)), q);
        let mut out = BytesMut::new();
        encode_v2(src, dst, &mut out);
        let (h, read) = read_exactly(&out);
        prop_assert_eq!(read, out.len());
        match h {
            Ok(ProxyHeader::Tcp { source, destination }) => {
                prop_assert_eq!(source.ip().to_canonical(), src.ip().to_canonical());
                prop_assert_eq!(source.port(), p);
                prop_assert_eq!(destination.ip().to_canonical(), dst.ip().to_canonical());
                prop_assert_eq!(destination.port(), q);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
