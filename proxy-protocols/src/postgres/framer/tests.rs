//! Tests for the boundary tracker: a real PostgreSQL 15 stream cut at every
//! one and two points, byte-at-a-time feeding, bad lengths, huge bodies, and
//! property tests against a straightforward reference parser.

use proptest::prelude::*;

use super::*;
use crate::postgres::fixtures::PG15_BACKEND_STREAM;

/// Reference: (end offset, tag) of every complete message in `stream`.
fn true_ends(stream: &[u8]) -> Vec<(usize, u8)> {
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos + 5 <= stream.len() {
        let tag = stream[pos];
        let len = u32::from_be_bytes(stream[pos + 1..pos + 5].try_into().unwrap());
        let end = pos + 1 + len as usize;
        if end > stream.len() {
            break;
        }
        ends.push((end, tag));
        pos = end;
    }
    ends
}

/// Feeds `stream` cut at `cuts` (sorted offsets) and checks every chunk's
/// result and the boundary state against the reference parser.
fn check_chunking(stream: &[u8], cuts: &[usize]) {
    let ends = true_ends(stream);
    let mut framer = MessageFramer::new();
    let mut start = 0;
    for &stop in cuts.iter().chain(std::iter::once(&stream.len())) {
        let chunk = &stream[start..stop];
        let got = framer.feed(chunk).unwrap();
        let inside: Vec<(usize, u8)> = ends
            .iter()
            .filter(|(e, _)| *e > start && *e <= stop)
            .map(|&(e, t)| (e - start, t))
            .collect();
        let expected = FeedResult {
            first_boundary: inside.first().map(|&(e, _)| e),
            last_boundary: inside.last().map(|&(e, _)| e),
            last_tag: inside.last().map(|&(_, t)| t),
        };
        assert_eq!(got, expected, "chunk {start}..{stop} of cuts {cuts:?}");
        let at_end = stop == 0 || ends.iter().any(|&(e, _)| e == stop);
        assert_eq!(
            framer.at_boundary(),
            at_end,
            "after {stop} of cuts {cuts:?}"
        );
        start = stop;
    }
}

#[test]
fn whole_real_stream() {
    let mut framer = MessageFramer::new();
    assert!(framer.at_boundary());
    let got = framer.feed(PG15_BACKEND_STREAM).unwrap();
    assert_eq!(
        got,
        FeedResult {
            first_boundary: Some(9), // AuthenticationOk
            last_boundary: Some(PG15_BACKEND_STREAM.len()),
            last_tag: Some(b'Z'),
        }
    );
    assert!(framer.at_boundary());
    assert_eq!(true_ends(PG15_BACKEND_STREAM).len(), 25);
}

#[test]
fn real_stream_cut_at_every_offset() {
    for cut in 0..=PG15_BACKEND_STREAM.len() {
        check_chunking(PG15_BACKEND_STREAM, &[cut]);
    }
}

#[test]
fn real_stream_cut_at_every_pair_of_offsets() {
    // Covers headers split in three pieces and chunks wholly inside a header.
    let stream = &PG15_BACKEND_STREAM[..200];
    for a in 0..=stream.len() {
        for b in a..=stream.len() {
            check_chunking(stream, &[a, b]);
        }
    }
}

#[test]
fn real_stream_one_byte_at_a_time() {
    let cuts: Vec<usize> = (1..PG15_BACKEND_STREAM.len()).collect();
    check_chunking(PG15_BACKEND_STREAM, &cuts);
}

#[test]
fn empty_chunk_changes_nothing() {
    let mut framer = MessageFramer::new();
    assert_eq!(framer.feed(b"").unwrap(), FeedResult::default());
    assert!(framer.at_boundary());
    framer.feed(b"D\x00\x00").unwrap();
    assert_eq!(framer.feed(b"").unwrap(), FeedResult::default());
    assert!(!framer.at_boundary());
    assert_eq!(
        framer.feed(b"\x00\x04").unwrap(),
        FeedResult {
            first_boundary: Some(2),
            last_boundary: Some(2),
            last_tag: Some(b'D'),
        }
    );
}

#[test]
fn bad_lengths_are_refused_even_when_split() {
    for len in 0..4u32 {
        let mut header = vec![b'D'];
        header.extend_from_slice(&len.to_be_bytes());
        assert_eq!(
            MessageFramer::new().feed(&header),
            Err(FrameError::BadLength(len))
        );
        let mut framer = MessageFramer::new();
        assert!(framer.feed(&header[..2]).is_ok());
        assert_eq!(framer.feed(&header[2..]), Err(FrameError::BadLength(len)));
        // After a good message too.
        let mut stream = b"C\x00\x00\x00\x05x".to_vec();
        stream.extend_from_slice(&header);
        assert_eq!(
            MessageFramer::new().feed(&stream),
            Err(FrameError::BadLength(len))
        );
    }
}

#[test]
fn huge_bodies_are_skipped_without_limits() {
    // A CopyData with the largest possible length (4 GiB) fed in 64 KiB
    // chunks: each chunk inside the body reports nothing and costs O(1), so
    // the whole 4 GiB goes through in well under a second even unoptimized.
    let mut framer = MessageFramer::new();
    assert_eq!(
        framer.feed(b"d\xff\xff\xff\xff").unwrap(),
        FeedResult::default()
    );
    let chunk = vec![0u8; 1 << 16];
    let body = usize::try_from(u32::MAX - 4).unwrap();
    let mut fed = 0;
    while body - fed > chunk.len() {
        assert_eq!(framer.feed(&chunk).unwrap(), FeedResult::default());
        assert!(!framer.at_boundary());
        fed += chunk.len();
    }
    let mut last = vec![0u8; body - fed];
    last.extend_from_slice(b"Z\x00\x00\x00\x05I");
    assert_eq!(
        framer.feed(&last).unwrap(),
        FeedResult {
            first_boundary: Some(body - fed),
            last_boundary: Some(last.len()),
            last_tag: Some(b'Z'),
        }
    );
    assert!(framer.at_boundary());
}

/// Serializes messages given as (tag, body length).
fn stream_of(messages: &[(u8, usize)]) -> Vec<u8> {
    let mut stream = Vec::new();
    for &(tag, body_len) in messages {
        stream.push(tag);
        stream.extend_from_slice(&u32::try_from(body_len + 4).unwrap().to_be_bytes());
        stream.extend((0..body_len).map(|i| i as u8));
    }
    stream
}

proptest! {
    #[test]
    fn random_messages_random_chunking(
        messages in prop::collection::vec((any::<u8>(), prop_oneof![Just(0usize), 0usize..8, 0usize..300]), 0..40),
        cut_seeds in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let stream = stream_of(&messages);
        let mut cuts: Vec<usize> = cut_seeds.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        check_chunking(&stream, &cuts);
        let ends = true_ends(&stream);
        prop_assert_eq!(ends.len(), messages.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..10),
    ) {
        let mut framer = MessageFramer::new();
        for chunk in &chunks {
            match framer.feed(chunk) {
                Ok(r) => {
                    prop_assert!(r.first_boundary <= r.last_boundary);
                    prop_assert!(r.last_boundary.is_none_or(|b| (1..=chunk.len()).contains(&b)));
                    prop_assert_eq!(r.last_boundary.is_some(), r.last_tag.is_some());
                }
                Err(FrameError::BadLength(len)) => {
                    prop_assert!(len < 4);
                    break;
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }
}
