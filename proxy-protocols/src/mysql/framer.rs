//! Payload boundaries in a relayed MySQL byte stream, in either direction.
//!
//! Responsibility: tell the relay where payloads end in the chunks it
//! forwards, so jitgate can place an ERR packet between two payloads and
//! never inside one, and report each payload's sequence ids and first bytes
//! (enough to recognise OK/ERR/EOF packets, a command byte, or the user name
//! of a COM_CHANGE_USER). It never buffers a payload: the relay forwards its
//! chunks unchanged.
//!
//! A *payload* is one or more packets: a packet whose length is `0xFF_FFFF`
//! is continued by the next one, so a result row of 20 MB arrives as two
//! packets. The boundary is after the last packet of a payload; a point
//! between a full packet and its continuation is *not* a boundary (an ERR
//! placed there would be read as the rest of the row).
//!
//! State machine: *header* (collecting the 4 header bytes, which may be split
//! across chunks) and *body* (skipping `remaining` bytes, copying at most
//! `head_cap` of the payload's first bytes). A chunk that lies inside a body
//! costs O(1) beyond the head copy, however large the payload.
//!
//! Invariants: the framer is at a boundary exactly when no header bytes are
//! pending, no body bytes remain and the last packet was not a full one;
//! chunks must be fed in stream order, each exactly once. Every header is
//! valid (lengths 0 to `0xFF_FFFF`), so feeding cannot fail.

use super::packet::{parse_header, HEADER_LEN, MAX_PACKET_PAYLOAD};

/// The most payload bytes a framer keeps per payload.
pub const MAX_HEAD: usize = 512;

/// What the framer knows of one payload.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadHead {
    /// Sequence id of the payload's first packet.
    pub seq: u8,
    /// Sequence id of its last packet so far.
    pub last_seq: u8,
    /// Payload bytes seen so far (the whole length once complete).
    pub len: u64,
    head: [u8; MAX_HEAD],
    head_len: usize,
}

impl std::fmt::Debug for PayloadHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadHead")
            .field("seq", &self.seq)
            .field("last_seq", &self.last_seq)
            .field("len", &self.len)
            .field("head", &self.head())
            .finish()
    }
}

impl PayloadHead {
    fn new(seq: u8) -> Self {
        PayloadHead {
            seq,
            last_seq: seq,
            len: 0,
            head: [0; MAX_HEAD],
            head_len: 0,
        }
    }

    /// A payload head built from whole bytes (for tests and callers that
    /// hold a packet).
    pub fn from_payload(seq: u8, payload: &[u8]) -> Self {
        let mut h = PayloadHead::new(seq);
        let n = payload.len().min(MAX_HEAD);
        if let (Some(dst), Some(src)) = (h.head.get_mut(..n), payload.get(..n)) {
            dst.copy_from_slice(src);
        }
        h.head_len = n;
        h.len = payload.len() as u64;
        h
    }

    /// The payload's first bytes (at most the framer's head capacity).
    pub fn head(&self) -> &[u8] {
        self.head.get(..self.head_len).unwrap_or_default()
    }

    /// The payload's first byte (the packet type or command byte).
    pub fn first_byte(&self) -> Option<u8> {
        self.head().first().copied()
    }

    /// Whether [`PayloadHead::head`] holds the whole payload.
    pub fn head_is_whole(&self) -> bool {
        self.head_len as u64 == self.len
    }
}

/// Where payloads ended in one chunk passed to [`PacketFramer::feed`]:
/// offsets relative to the chunk, just after a payload's last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameBoundaries {
    /// After the first payload that ended in the chunk.
    pub first: Option<usize>,
    /// After the last payload that ended in the chunk.
    pub last: Option<usize>,
}

/// Tracks payload boundaries across the chunks of one direction.
#[derive(Debug, Clone)]
pub struct PacketFramer {
    head_cap: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Body bytes of the current packet not yet seen.
    remaining: usize,
    /// The current packet is a full one: its payload continues.
    continued: bool,
    /// A payload has started and not ended.
    in_payload: bool,
    cur: PayloadHead,
}

impl PacketFramer {
    /// A framer at a boundary that keeps up to `head_cap` (at most
    /// [`MAX_HEAD`]) first bytes of each payload.
    pub fn new(head_cap: usize) -> Self {
        PacketFramer {
            head_cap: head_cap.min(MAX_HEAD),
            header: [0; HEADER_LEN],
            header_len: 0,
            remaining: 0,
            continued: false,
            in_payload: false,
            cur: PayloadHead::new(0),
        }
    }

    /// True when the bytes fed so far end exactly at a payload boundary.
    pub fn at_boundary(&self) -> bool {
        !self.in_payload && self.header_len == 0
    }

    /// The payload in progress, once its first header has been seen.
    pub fn current(&self) -> Option<&PayloadHead> {
        self.in_payload.then_some(&self.cur)
    }

    /// Advances over `chunk`, the next bytes of the stream, calling
    /// `on_payload` for each payload that ends in it (in order) and
    /// reporting where they ended.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_payload: impl FnMut(&PayloadHead),
    ) -> FrameBoundaries {
        let mut b = FrameBoundaries::default();
        let mut pos = 0usize;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min(chunk.len().saturating_sub(pos));
                let room = self.head_cap.saturating_sub(self.cur.head_len);
                let copy = take.min(room);
                if copy > 0 {
                    let at = self.cur.head_len;
                    if let (Some(dst), Some(src)) = (
                        self.cur.head.get_mut(at..at + copy),
                        chunk.get(pos..pos + copy),
                    ) {
                        dst.copy_from_slice(src);
                        self.cur.head_len += copy;
                    }
                }
                pos += take;
                self.remaining -= take;
                self.cur.len += take as u64;
                if self.remaining > 0 {
                    break;
                }
                if !self.continued {
                    self.end_payload(pos, &mut b, &mut on_payload);
                }
            }
            let rest = chunk.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let header = match rest.first_chunk::<HEADER_LEN>() {
                Some(h) if self.header_len == 0 => {
                    pos += HEADER_LEN;
                    *h
                }
                _ => {
                    let filled = self.header_len;
                    let take = (HEADER_LEN - filled).min(rest.len());
                    if let (Some(dst), Some(src)) =
                        (self.header.get_mut(filled..filled + take), rest.get(..take))
                    {
                        dst.copy_from_slice(src);
                    }
                    self.header_len = filled + take;
                    pos += take;
                    if self.header_len < HEADER_LEN {
                        break;
                    }
                    self.header_len = 0;
                    self.header
                }
            };
            let (len, seq) = parse_header(header);
            if self.in_payload {
                self.cur.last_seq = seq;
            } else {
                self.cur = PayloadHead::new(seq);
                self.in_payload = true;
            }
            self.continued = len == MAX_PACKET_PAYLOAD;
            self.remaining = len;
            if len == 0 {
                // An empty packet ends its payload at once.
                self.end_payload(pos, &mut b, &mut on_payload);
            }
        }
        b
    }

    fn end_payload(
        &mut self,
        pos: usize,
        b: &mut FrameBoundaries,
        on_payload: &mut impl FnMut(&PayloadHead),
    ) {
        self.in_payload = false;
        self.continued = false;
        on_payload(&self.cur);
        if b.first.is_none() {
            b.first = Some(pos);
        }
        b.last = Some(pos);
    }
}

#[cfg(test)]
mod tests;
