//! Whole backend messages, for the startup and authentication phase.
//!
//! Responsibility: cut complete tagged messages (1 tag byte, a 4-byte
//! big-endian length that counts itself, then the body) off the backend byte
//! stream while the gateway still inspects every message (authentication
//! requests, ParameterStatus, BackendKeyData, ReadyForQuery), and parse the
//! one body the gateway needs to read (BackendKeyData).
//!
//! Invariants:
//! - the length is checked against `4..=max_len` as soon as the 5 header
//!   bytes are present, before anything is reserved or allocated for the
//!   body, so a hostile or broken backend cannot make the gateway buffer an
//!   unbounded message;
//! - `Ok(None)` leaves the buffer's contents untouched; `Ok(Some(_))` consumes
//!   exactly one message and nothing after it.
//!
//! After authentication the relay uses [`super::MessageFramer`] instead,
//! which tracks boundaries without buffering whole messages.

use bytes::{Buf, Bytes, BytesMut};

/// Tag byte + length word.
const HEADER_LEN: usize = 5;
/// The smallest valid length word: it counts only itself.
const MIN_LEN: u32 = 4;
/// Body length of a protocol 3.0 BackendKeyData ('K'): process id + secret key.
const BACKEND_KEY_DATA_LEN: usize = 8;

/// One complete backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendMessage {
    /// Message type byte, e.g. `b'R'` (authentication) or `b'Z'` (ReadyForQuery).
    pub tag: u8,
    /// Message contents, without the tag and the length word.
    pub body: Bytes,
}

/// A backend message's length word is invalid. Always the backend's fault
/// (or a peer that is not a PostgreSQL server); the session cannot continue
/// because message boundaries are lost.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length word is below 4 (it must count itself).
    #[error("invalid message length {0} from server: the minimum is 4")]
    BadLength(u32),
    /// The length word exceeds the maximum the caller allows in this phase.
    #[error("message length {len} from server exceeds the limit of {max} bytes")]
    TooLong {
        /// The length word received.
        len: u32,
        /// The caller's limit.
        max: usize,
    },
}

/// Decodes one backend message from the front of `buf`.
///
/// Check-then-parse: `Ok(None)` means more bytes are needed and leaves the
/// contents of `buf` untouched (once the length is known and bounded, capacity
/// for the rest of the message is reserved). `max_len` bounds the length word,
/// which includes its own 4 bytes but not the tag. On `Err` the caller should
/// end the session: the stream can no longer be framed.
pub fn decode_backend_message(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<BackendMessage>, FrameError> {
    let Some(&[tag, a, b, c, d]) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    if len < MIN_LEN {
        return Err(FrameError::BadLength(len));
    }
    // The whole message is the tag plus `len` bytes; `checked_add` only
    // matters on 32-bit targets with `max_len == usize::MAX`.
    let total = usize::try_from(len)
        .ok()
        .filter(|&n| n <= max_len)
        .and_then(|n| n.checked_add(1));
    let Some(total) = total else {
        return Err(FrameError::TooLong { len, max: max_len });
    };
    if buf.len() < total {
        buf.reserve(total.saturating_sub(buf.len()));
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    Ok(Some(BackendMessage {
        tag,
        body: frame.freeze(),
    }))
}

/// Parses the body of a BackendKeyData (`'K'`) message into
/// `(process_id, secret_key)`. `None` unless the body is exactly 8 bytes, the
/// protocol 3.0 layout (protocol 3.2 allows longer secret keys).
pub fn parse_backend_key_data(body: &[u8]) -> Option<(u32, u32)> {
    let [a, b, c, d, e, f, g, h] = <[u8; BACKEND_KEY_DATA_LEN]>::try_from(body).ok()?;
    Some((
        u32::from_be_bytes([a, b, c, d]),
        u32::from_be_bytes([e, f, g, h]),
    ))
}

#[cfg(test)]
mod tests;
