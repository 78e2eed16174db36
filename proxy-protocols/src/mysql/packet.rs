//! The MySQL packet: a 3-byte little-endian payload length, a 1-byte
//! sequence id, then the payload ("MySQL Packets" in the client/server
//! protocol documentation).
//!
//! Responsibility: cut one whole packet off the front of a buffer during the
//! handshake, where every packet is small, and write the packets jitgate
//! sends itself. After the handshake the relay uses
//! [`super::PacketFramer`], which tracks boundaries without buffering.
//!
//! Invariants:
//! - the payload length is checked against the caller's `max_payload` as
//!   soon as the 4 header bytes are present, before anything is reserved for
//!   the payload;
//! - a payload of `0xFF_FFFF` bytes means "continued in the next packet";
//!   [`decode_packet`] never reassembles continuations, so it refuses such a
//!   packet as too long (handshake packets are never that large);
//! - `Ok(None)` leaves the buffer's contents untouched; `Ok(Some(_))`
//!   consumes exactly one packet and nothing after it.

use bytes::{Buf, BytesMut};

/// Length word + sequence id.
pub const HEADER_LEN: usize = 4;

/// Largest payload of one packet; a payload this long continues in the next
/// packet (a payload of 16 MiB or more is split).
pub const MAX_PACKET_PAYLOAD: usize = 0xFF_FFFF;

/// One whole packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id.
    pub seq: u8,
    /// The payload, without the header.
    pub payload: BytesMut,
}

/// A packet the caller will not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The announced payload length exceeds the caller's limit.
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The announced payload length.
        len: usize,
        /// The caller's limit.
        max: usize,
    },
}

/// The payload length and sequence id of a packet header.
pub fn parse_header(header: [u8; HEADER_LEN]) -> (usize, u8) {
    let [a, b, c, seq] = header;
    (
        usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16,
        seq,
    )
}

/// Decodes one packet from the front of `buf`.
///
/// Check-then-parse: `Ok(None)` means more bytes are needed and leaves the
/// contents of `buf` untouched (once the length is known and bounded,
/// capacity for the rest of the packet is reserved). `max_payload` bounds
/// the payload; it is clamped below [`MAX_PACKET_PAYLOAD`], so a packet that
/// announces a continuation is always [`PacketError::TooLong`].
pub fn decode_packet(
    buf: &mut BytesMut,
    max_payload: usize,
) -> Result<Option<Packet>, PacketError> {
    let Some(&header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (len, seq) = parse_header(header);
    let max = max_payload.min(MAX_PACKET_PAYLOAD - 1);
    if len > max {
        return Err(PacketError::TooLong { len, max });
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        buf.reserve(total.saturating_sub(buf.len()));
        return Ok(None);
    }
    let mut payload = buf.split_to(total);
    payload.advance(HEADER_LEN);
    Ok(Some(Packet { seq, payload }))
}

/// Appends one packet with sequence id `seq` around `payload`. Payloads of
/// [`MAX_PACKET_PAYLOAD`] bytes or more are split into continuation packets
/// with consecutive sequence ids, as the protocol requires.
pub fn encode_packet(seq: u8, payload: &[u8], out: &mut BytesMut) {
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PACKET_PAYLOAD);
        let (chunk, tail) = rest.split_at(n);
        // n <= 0xFF_FFFF, so the low three bytes hold it exactly.
        let [a, b, c, _] = u32::try_from(n).unwrap_or(0).to_le_bytes();
        out.reserve(HEADER_LEN + n);
        out.extend_from_slice(&[a, b, c, seq]);
        out.extend_from_slice(chunk);
        rest = tail;
        seq = seq.wrapping_add(1);
        // A payload that is an exact multiple of the maximum ends with an
        // empty packet, so continue once more in that case.
        if n < MAX_PACKET_PAYLOAD {
            break;
        }
    }
}

/// Reads a length-encoded integer at the front of `input`: its value and how
/// many bytes it took. `None` if `input` is too short or starts with `0xFB`
/// (NULL in a row) or `0xFF` (not a valid integer prefix).
pub fn read_lenenc_int(input: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = input.split_first()?;
    let width = match first {
        0..=0xFA => return Some((u64::from(first), 1)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    let bytes = rest.get(..width)?;
    let mut v = [0u8; 8];
    v.get_mut(..width)?.copy_from_slice(bytes);
    Some((u64::from_le_bytes(v), 1 + width))
}

/// Appends `v` as a length-encoded integer.
pub fn put_lenenc_int(v: u64, out: &mut Vec<u8>) {
    let b = v.to_le_bytes();
    let [b0, b1, b2, ..] = b;
    match v {
        0..=0xFA => out.push(b0),
        0xFB..=0xFFFF => out.extend_from_slice(&[0xFC, b0, b1]),
        0x1_0000..=0xFF_FFFF => out.extend_from_slice(&[0xFD, b0, b1, b2]),
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&b);
        }
    }
}

/// Reads a length-encoded string at the front of `input`: its bytes and how
/// many bytes it took in all. The announced length is checked against what
/// is there before anything is sliced.
pub fn read_lenenc_bytes(input: &[u8]) -> Option<(&[u8], usize)> {
    let (len, used) = read_lenenc_int(input)?;
    let len = usize::try_from(len).ok()?;
    let end = used.checked_add(len)?;
    Some((input.get(used..end)?, end))
}

/// Splits `input` at its first NUL: the bytes before it and the rest after
/// it. `None` if there is no NUL.
pub fn split_nul(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = input.iter().position(|&b| b == 0)?;
    Some((input.get(..at)?, input.get(at + 1..)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_whole_packet_is_cut_and_the_rest_kept() {
        let mut buf = BytesMut::from(&b"\x01\x00\x00\x00\x01\x05\x00\x00"[..]);
        let p = decode_packet(&mut buf, 100).unwrap().unwrap();
        assert_eq!((p.seq, &p.payload[..]), (0, &b"\x01"[..]));
        assert_eq!(&buf[..], b"\x05\x00\x00");
        // Header only: need more, untouched.
        assert_eq!(decode_packet(&mut buf, 100), Ok(None));
        assert_eq!(&buf[..], b"\x05\x00\x00");
    }

    #[test]
    fn lengths_are_bounded_before_the_payload_arrives() {
        let mut buf = BytesMut::from(&b"\xff\xff\xff\x01"[..]);
        assert_eq!(
            decode_packet(&mut buf, 1 << 30),
            Err(PacketError::TooLong {
                len: 0xFF_FFFF,
                max: 0xFF_FFFE
            })
        );
        let mut buf = BytesMut::from(&b"\x01\x01\x00\x01"[..]);
        assert_eq!(
            decode_packet(&mut buf, 256),
            Err(PacketError::TooLong { len: 257, max: 256 })
        );
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn large_payloads_are_split_with_consecutive_ids() {
        let payload = vec![7u8; MAX_PACKET_PAYLOAD + 10];
        let mut out = BytesMut::new();
        encode_packet(3, &payload, &mut out);
        assert_eq!(&out[..4], &[0xFF, 0xFF, 0xFF, 3]);
        let second = HEADER_LEN + MAX_PACKET_PAYLOAD;
        assert_eq!(&out[second..second + 4], &[10, 0, 0, 4]);
        assert_eq!(out.len(), 2 * HEADER_LEN + payload.len());

        let exact = vec![1u8; MAX_PACKET_PAYLOAD];
        let mut out = BytesMut::new();
        encode_packet(255, &exact, &mut out);
        assert_eq!(
            &out[out.len() - 4..],
            &[0, 0, 0, 0],
            "empty trailer, id wraps"
        );
    }

    #[test]
    fn lenenc_ints() {
        for v in [
            0u64,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_lenenc_int(v, &mut out);
            assert_eq!(read_lenenc_int(&out), Some((v, out.len())), "{v}");
        }
        assert_eq!(read_lenenc_int(&[0xFB]), None);
        assert_eq!(read_lenenc_int(&[0xFF]), None);
        assert_eq!(read_lenenc_int(&[0xFC, 1]), None);
        assert_eq!(read_lenenc_bytes(&[3, b'a', b'b']), None);
        assert_eq!(
            read_lenenc_bytes(&[2, b'a', b'b', b'c']),
            Some((&b"ab"[..], 3))
        );
        assert_eq!(
            read_lenenc_bytes(&[0xFE, 255, 255, 255, 255, 255, 255, 255, 255]),
            None
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_consumes_exactly_one_packet(
            input in prop::collection::vec(any::<u8>(), 0..64),
            max in 0usize..80,
        ) {
            let mut buf = BytesMut::from(&input[..]);
            match decode_packet(&mut buf, max) {
                Ok(None) => prop_assert_eq!(&buf[..], &input[..]),
                Ok(Some(p)) => {
                    prop_assert_eq!(HEADER_LEN + p.payload.len() + buf.len(), input.len());
                    prop_assert_eq!(&p.payload[..], &input[HEADER_LEN..HEADER_LEN + p.payload.len()]);
                }
                Err(_) => prop_assert_eq!(&buf[..], &input[..]),
            }
        }

        #[test]
        fn a_packet_stream_cut_anywhere_decodes_to_the_same_packets(
            packets in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..100)), 1..10),
            cuts in prop::collection::vec(1usize..30, 1..20),
        ) {
            let mut stream = BytesMut::new();
            for (seq, payload) in &packets {
                encode_packet(*seq, payload, &mut stream);
            }
            let (mut buf, mut got, mut at) = (BytesMut::new(), Vec::new(), 0);
            for n in cuts.iter().cycle() {
                if at >= stream.len() {
                    break;
                }
                let end = (at + n).min(stream.len());
                buf.extend_from_slice(&stream[at..end]);
                at = end;
                while let Some(p) = decode_packet(&mut buf, 1 << 20).unwrap() {
                    got.push((p.seq, p.payload.to_vec()));
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, packets);
        }

        #[test]
        fn encode_then_decode_round_trips(seq: u8, payload in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut out = BytesMut::new();
            encode_packet(seq, &payload, &mut out);
            let p = decode_packet(&mut out, 1000).unwrap().unwrap();
            prop_assert_eq!(p.seq, seq);
            prop_assert_eq!(&p.payload[..], &payload[..]);
            prop_assert!(out.is_empty());
        }

        #[test]
        fn lenenc_round_trips(v: u64) {
            let mut out = Vec::new();
            put_lenenc_int(v, &mut out);
            prop_assert_eq!(read_lenenc_int(&out), Some((v, out.len())));
        }

        #[test]
        fn lenenc_readers_never_panic(input in prop::collection::vec(any::<u8>(), 0..20)) {
            let _ = read_lenenc_int(&input);
            if let Some((s, used)) = read_lenenc_bytes(&input) {
                prop_assert!(used <= input.len() && s.len() < used + 1);
            }
        }
    }
}
