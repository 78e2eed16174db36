//! Backend messages the gateway writes to clients itself.
//!
//! Responsibility: encode ErrorResponse, NoticeResponse,
//! NegotiateProtocolVersion and BackendKeyData ("Message Formats" in the
//! protocol documentation), and name the one-byte refusal of SSLRequest and
//! GSSENCRequest.
//!
//! Invariants: every encoder appends exactly one well-framed message whose
//! length word equals the bytes written after the tag. Text fields are
//! NUL-terminated on the wire, so a NUL inside a text is replaced by U+FFFD
//! rather than allowed to end the field early and desynchronise the client;
//! each text is first cut to at most `MAX_TEXT_LEN` bytes, so a message
//! length always fits the 32-bit length word.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::startup::ProtocolVersion;

/// The single byte that answers an SSLRequest or a GSSENCRequest with "not
/// supported"; the client may then continue in plain text on the same
/// connection (or give up, if it requires encryption).
pub const SSL_NOT_SUPPORTED: u8 = b'N';

/// Longest text, in bytes, written for one field; longer texts are cut at a
/// character boundary. Far above any message the gateway writes.
const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most option names listed in a NegotiateProtocolVersion. A startup packet
/// (at most 10,000 bytes) cannot carry more.
const MAX_LISTED_OPTIONS: usize = 5_000;
/// The protocol major version the gateway speaks.
const PROTOCOL_MAJOR: u16 = 3;

/// The fields of an ErrorResponse or NoticeResponse the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// `ERROR`, `FATAL` or `PANIC` for errors; `WARNING`, `NOTICE`, `DEBUG`,
    /// `INFO` or `LOG` for notices. Written both as the localized (`S`) and
    /// the non-localized (`V`) severity.
    pub severity: &'a str,
    /// SQLSTATE code (five characters), e.g. `57P01` (admin_shutdown).
    pub code: &'a str,
    /// Primary message: short, lowercase, no trailing period.
    pub message: &'a str,
    /// Optional secondary message with more detail.
    pub detail: Option<&'a str>,
    /// Optional suggestion of what to do about the problem.
    pub hint: Option<&'a str>,
}

/// Appends an ErrorResponse (`'E'`) with fields S, V, C, M, then D and H when
/// present.
pub fn encode_error_response(f: &ErrorFields<'_>, out: &mut BytesMut) {
    encode_fields(b'E', f, out);
}

/// Appends a NoticeResponse (`'N'`), laid out like an ErrorResponse.
pub fn encode_notice_response(f: &ErrorFields<'_>, out: &mut BytesMut) {
    encode_fields(b'N', f, out);
}

/// Appends a NegotiateProtocolVersion (`'v'`): the newest protocol 3 minor
/// version supported, and the protocol options (`_pq_.*`) not recognized.
///
/// The version field is written as the full version number (`3 << 16 |
/// newest_minor`), as PostgreSQL itself sends it and libpq reads it, although
/// older documentation describes it as a bare minor number. A `newest_minor`
/// above `u16::MAX` is clamped.
pub fn encode_negotiate_protocol_version(
    newest_minor: u32,
    unrecognized_options: &[&str],
    out: &mut BytesMut,
) {
    let version = ProtocolVersion {
        major: PROTOCOL_MAJOR,
        minor: u16::try_from(newest_minor).unwrap_or(u16::MAX),
    };
    let options: Vec<Cow<'_, str>> = unrecognized_options
        .iter()
        .take(MAX_LISTED_OPTIONS)
        .map(|o| text(o))
        .collect();
    // At most MAX_LISTED_OPTIONS * (3 * MAX_TEXT_LEN + 1) bytes (a NUL becomes
    // the 3-byte U+FFFD): about 1 GB, so the count and length fit in u32.
    let count = u32::try_from(options.len()).unwrap_or(u32::MAX);
    let body_len = 8 + options.iter().map(|o| o.len() + 1).sum::<usize>();
    put_message(out, b'v', body_len, |out| {
        out.put_u32(version.code());
        out.put_u32(count);
        for option in &options {
            put_cstr(out, option);
        }
    });
}

/// Appends a BackendKeyData (`'K'`) in the protocol 3.0 layout.
pub fn encode_backend_key_data(process_id: u32, secret_key: u32, out: &mut BytesMut) {
    put_message(out, b'K', 8, |out| {
        out.put_u32(process_id);
        out.put_u32(secret_key);
    });
}

fn encode_fields(tag: u8, f: &ErrorFields<'_>, out: &mut BytesMut) {
    let severity = text(f.severity);
    let fields = [
        (b'S', Some(severity.clone())),
        (b'V', Some(severity)),
        (b'C', Some(text(f.code))),
        (b'M', Some(text(f.message))),
        (b'D', f.detail.map(text)),
        (b'H', f.hint.map(text)),
    ];
    let present = || fields.iter().filter_map(|(t, v)| Some((*t, v.as_ref()?)));
    // Field type byte + text + NUL per field, then the terminating zero byte.
    // At most 6 * (3 * MAX_TEXT_LEN + 2) + 1 bytes: fits in u32.
    let body_len = present().map(|(_, v)| v.len() + 2).sum::<usize>() + 1;
    put_message(out, tag, body_len, |out| {
        for (field_type, value) in present() {
            out.put_u8(field_type);
            put_cstr(out, value);
        }
        out.put_u8(0);
    });
}

/// Writes tag, length word and a body of exactly `body_len` bytes.
fn put_message(out: &mut BytesMut, tag: u8, body_len: usize, body: impl FnOnce(&mut BytesMut)) {
    let len = body_len.saturating_add(4);
    out.reserve(len.saturating_add(1));
    out.put_u8(tag);
    // Callers bound their texts so this never saturates.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    let start = out.len();
    body(out);
    debug_assert_eq!(out.len() - start, body_len, "length word mismatch");
}

/// A text made safe for a NUL-terminated field: capped at MAX_TEXT_LEN bytes
/// on a character boundary, each NUL replaced by U+FFFD.
fn text(s: &str) -> Cow<'_, str> {
    let mut end = s.len().min(MAX_TEXT_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = s.get(..end).unwrap_or_default();
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests;
