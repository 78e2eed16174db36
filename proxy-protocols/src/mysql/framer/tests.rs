//! Tests for the payload boundary tracker: a real MariaDB result set cut at
//! every one and two points, payloads that span the 16 MiB packet limit,
//! byte-at-a-time feeding, and property tests against a reference parser.

use proptest::prelude::*;

use super::*;
use crate::mysql::encode_packet;
use crate::mysql::fixtures::MARIADB_RESULT_SET;

/// Reference: (end offset, first seq, last seq, first byte, total length) of
/// every complete payload in `stream`.
fn true_payloads(stream: &[u8]) -> Vec<(usize, u8, u8, Option<u8>, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut cur: Option<(u8, Option<u8>, u64)> = None;
    while pos + 4 <= stream.len() {
        let len = stream[pos] as usize
            | (stream[pos + 1] as usize) << 8
            | (stream[pos + 2] as usize) << 16;
        let seq = stream[pos + 3];
        let end = pos + 4 + len;
        if end > stream.len() {
            break;
        }
        let first = stream.get(pos + 4).copied().filter(|_| len > 0);
        let (s, f, total) = match cur.take() {
            Some((s, f, t)) => (s, f, t + len as u64),
            None => (seq, first, len as u64),
        };
        if len == MAX_PACKET_PAYLOAD {
            cur = Some((s, f, total));
        } else {
            out.push((end, s, seq, f, total));
        }
        pos = end;
    }
    out
}

fn check_chunking(stream: &[u8], cuts: &[usize]) {
    let ends = true_payloads(stream);
    let mut framer = PacketFramer::new(32);
    let mut seen = Vec::new();
    let mut start = 0;
    for &stop in cuts.iter().chain(std::iter::once(&stream.len())) {
        let chunk = &stream[start..stop];
        let b = framer.feed(chunk, |p| {
            seen.push((p.seq, p.last_seq, p.first_byte(), p.len))
        });
        let inside: Vec<usize> = ends
            .iter()
            .filter(|e| e.0 > start && e.0 <= stop)
            .map(|e| e.0 - start)
            .collect();
        assert_eq!(
            b.first,
            inside.first().copied(),
            "chunk {start}..{stop} of {cuts:?}"
        );
        assert_eq!(
            b.last,
            inside.last().copied(),
            "chunk {start}..{stop} of {cuts:?}"
        );
        let at_end = stop == 0 || ends.iter().any(|e| e.0 == stop);
        assert_eq!(framer.at_boundary(), at_end, "after {stop} of {cuts:?}");
        start = stop;
    }
    let expected: Vec<_> = ends.iter().map(|e| (e.1, e.2, e.3, e.4)).collect();
    assert_eq!(seen, expected, "cuts {cuts:?}");
}

#[test]
fn whole_real_result_set() {
    let mut framer = PacketFramer::new(32);
    let mut heads = Vec::new();
    let b = framer.feed(MARIADB_RESULT_SET, |p| {
        heads.push((p.seq, p.head().to_vec()))
    });
    assert_eq!(b.first, Some(6));
    assert_eq!(b.last, Some(MARIADB_RESULT_SET.len()));
    assert!(framer.at_boundary());
    let seqs: Vec<u8> = heads.iter().map(|h| h.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    // Column count 2, then MariaDB's "metadata follows" byte (the client had
    // negotiated MARIADB_CLIENT_CACHE_METADATA).
    assert_eq!(heads[0].1, [2, 1], "column count");
    assert_eq!(
        heads[3].1, b"\xfe\x00\x00\x02\x00",
        "EOF after the definitions"
    );
    assert_eq!(heads[4].1, b"\x011\xfb", "row: '1', NULL");
}

#[test]
fn real_result_set_cut_at_every_offset_and_pair() {
    let s = MARIADB_RESULT_SET;
    for a in 0..=s.len() {
        check_chunking(s, &[a]);
    }
    for a in (0..=s.len()).step_by(3) {
        for b in a..=s.len() {
            check_chunking(s, &[a, b]);
        }
    }
}

#[test]
fn byte_at_a_time() {
    let cuts: Vec<usize> = (1..MARIADB_RESULT_SET.len()).collect();
    check_chunking(MARIADB_RESULT_SET, &cuts);
}

/// A row payload of `len` bytes of `fill`, as packets from `seq`.
fn big_payload(seq: u8, len: usize, fill: u8) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    encode_packet(seq, &vec![fill; len], &mut out);
    out.to_vec()
}

#[test]
fn no_boundary_between_a_full_packet_and_its_continuation() {
    let mut stream = big_payload(2, MAX_PACKET_PAYLOAD + 100, b'x');
    let row_end = stream.len();
    stream.extend_from_slice(b"\x05\x00\x00\x04\xfe\x00\x00\x02\x00");
    let mut framer = PacketFramer::new(8);
    // Feed the first full packet alone: not a boundary.
    let first_packet = 4 + MAX_PACKET_PAYLOAD;
    let b = framer.feed(&stream[..first_packet], |_| panic!("no payload ended"));
    assert_eq!(b, FrameBoundaries::default());
    assert!(!framer.at_boundary());
    assert_eq!(framer.current().map(|p| p.seq), Some(2));
    let mut heads = Vec::new();
    let b = framer.feed(&stream[first_packet..], |p| heads.push(p.clone()));
    assert_eq!(b.first, Some(row_end - first_packet));
    assert_eq!(b.last, Some(stream.len() - first_packet));
    assert_eq!(heads[0].len, (MAX_PACKET_PAYLOAD + 100) as u64);
    assert_eq!((heads[0].seq, heads[0].last_seq), (2, 3));
    assert_eq!(heads[0].head(), b"xxxxxxxx");
    assert!(!heads[0].head_is_whole());
    assert_eq!(heads[1].first_byte(), Some(0xfe));
    check_chunking(&stream, &[first_packet - 1, first_packet + 3, row_end - 1]);
}

#[test]
fn exact_multiple_of_the_limit_ends_with_an_empty_packet() {
    let stream = big_payload(9, MAX_PACKET_PAYLOAD, 0);
    let mut framer = PacketFramer::new(4);
    let mut n = 0;
    let b = framer.feed(&stream, |p| {
        n += 1;
        assert_eq!(
            (p.seq, p.last_seq, p.len),
            (9, 10, MAX_PACKET_PAYLOAD as u64)
        );
    });
    assert_eq!((n, b.last), (1, Some(stream.len())));
    assert!(framer.at_boundary());
}

#[test]
fn head_capacity_is_honoured() {
    let mut framer = PacketFramer::new(3);
    let mut head = Vec::new();
    framer.feed(b"\x05\x00\x00\x00\x11abcd", |p| head = p.head().to_vec());
    assert_eq!(head, b"\x11ab");
    let mut framer = PacketFramer::new(10_000);
    framer.feed(&big_payload(0, 2000, 7), |p| {
        assert_eq!(p.head().len(), MAX_HEAD)
    });
}

fn packet_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<u8>(), 0usize..40), 0..12).prop_map(|packets| {
        let mut out = Vec::new();
        for (seq, len) in packets {
            out.extend_from_slice(&[len as u8, 0, 0, seq]);
            out.extend(std::iter::repeat_n(seq, len));
        }
        out
    })
}

proptest! {
    #[test]
    fn any_chunking_of_a_packet_stream_matches_the_reference(
        stream in packet_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        check_chunking(&stream, &cuts);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut framer = PacketFramer::new(32);
        let mut start = 0;
        for stop in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            let b = framer.feed(&bytes[start..stop], |_| {});
            if let Some(l) = b.last { prop_assert!(l <= stop - start); }
            start = stop;
        }
    }
}
