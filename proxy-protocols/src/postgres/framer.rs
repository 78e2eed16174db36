//! Message boundaries in the backend→client stream after authentication.
//!
//! Responsibility: tell the relay where backend messages end in the chunks it
//! forwards, so the gateway can inject a NoticeResponse or a final
//! ErrorResponse between two messages instead of inside one. It does not
//! decode messages and never buffers or allocates: the relay forwards its
//! chunks unchanged.
//!
//! State machine, one message at a time (a message is a tag byte, a 4-byte
//! big-endian length that counts itself, then `length - 4` body bytes):
//! - *header*: collecting the 5 header bytes; they may arrive split across
//!   any number of chunks, so the bytes seen so far are kept (at most 5);
//! - *body*: skipping `remaining` body bytes. Skipping is arithmetic: a chunk
//!   that lies wholly inside a body costs O(1), however large the body. A
//!   message with an empty body ends as soon as its header is complete.
//!
//! Invariants: the framer is at a boundary exactly when no header bytes are
//! pending and no body bytes remain; chunks must be fed in stream order, each
//! exactly once. There is no maximum length here (COPY and large rows are
//! legitimate); a length below 4 is a [`FrameError::BadLength`], after which
//! the state is unspecified and the caller must end the session.

use super::backend::FrameError;

/// Tag byte + length word.
const HEADER_LEN: usize = 5;
/// The length word counts itself.
const LEN_WORD: u32 = 4;

/// Tracks message boundaries across the chunks of the backend→client stream.
#[derive(Debug, Default, Clone)]
pub struct MessageFramer {
    /// Body bytes of the current message not yet seen. Zero while a header is
    /// being collected or at a boundary.
    remaining: usize,
    /// Header bytes of the next message collected so far.
    header: [u8; HEADER_LEN],
    /// How many bytes of `header` are valid; 0 unless a header is split
    /// across chunks. Non-zero only when `remaining` is zero.
    header_len: usize,
    /// Tag of the message whose body is being skipped.
    tag: u8,
}

/// Where messages ended in one chunk passed to [`MessageFramer::feed`].
///
/// Offsets are relative to the chunk and point just after a message's last
/// byte, so `&chunk[..offset]` ends on a message boundary. An offset equals
/// the chunk length when a message ends exactly at the end of the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedResult {
    /// Offset in the chunk just after the last complete message that ends
    /// inside it (None if no message ended in this chunk).
    pub last_boundary: Option<usize>,
    /// Offset just after the FIRST complete message that ends inside the
    /// chunk (None if none).
    pub first_boundary: Option<usize>,
    /// Tag of the last message that ended in this chunk (e.g. b'Z'
    /// ReadyForQuery).
    pub last_tag: Option<u8>,
}

impl FeedResult {
    fn record(&mut self, end: usize, tag: u8) {
        if self.first_boundary.is_none() {
            self.first_boundary = Some(end);
        }
        self.last_boundary = Some(end);
        self.last_tag = Some(tag);
    }
}

impl MessageFramer {
    /// A framer positioned at the start of a message (a boundary).
    pub fn new() -> Self {
        Self::default()
    }

    /// Advances over `chunk`, the next bytes of the stream, and reports where
    /// messages ended in it. An empty chunk changes nothing.
    ///
    /// Returns [`FrameError::BadLength`] for a length word below 4; the
    /// framer's state is then unspecified. Lengths are not otherwise bounded.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<FeedResult, FrameError> {
        let mut result = FeedResult::default();
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len().saturating_sub(pos));
                pos += skip;
                self.remaining -= skip;
                if self.remaining > 0 {
                    // The chunk ends inside this body.
                    break;
                }
                result.record(pos, self.tag);
            }

            let rest = chunk.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let header = match rest.first_chunk::<HEADER_LEN>() {
                // Common case: the whole header is in this chunk.
                Some(header) if self.header_len == 0 => {
                    pos += HEADER_LEN;
                    *header
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
                        // The chunk ends inside this header.
                        break;
                    }
                    self.header_len = 0;
                    self.header
                }
            };

            let [tag, a, b, c, d] = header;
            let len = u32::from_be_bytes([a, b, c, d]);
            let body = len
                .checked_sub(LEN_WORD)
                .ok_or(FrameError::BadLength(len))?;
            self.tag = tag;
            // u32 fits in usize on every target this crate supports.
            self.remaining = usize::try_from(body).map_err(|_| FrameError::TooLong {
                len,
                max: usize::MAX,
            })?;
            if self.remaining == 0 {
                result.record(pos, tag);
            }
        }
        Ok(result)
    }

    /// True when the bytes fed so far end exactly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header_len == 0
    }
}

#[cfg(test)]
mod tests;
