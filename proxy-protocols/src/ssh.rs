//! SSH protocol version exchange (RFC 4253 §4.2) and the one binary packet
//! the gateway writes itself (SSH_MSG_DISCONNECT, RFC 4253 §11.1).
//!
//! Responsibility: the identification lines each side sends when the TCP
//! connection opens, which are the only clear-text, line-oriented part of
//! SSH. Everything after them is the binary packet protocol, encrypted once
//! keys are exchanged; the gateway relays it without reading it.
//!
//! What a peer may send (RFC 4253 §4.2):
//! - a *server* may send other lines of text before its version line; they
//!   must not begin with `SSH-`. OpenSSH's client shows them only with `-v`
//!   (`debug1: kex_exchange_identification: banner line 0: ...`) and accepts
//!   at most 1024 of them, each at most 8192 bytes;
//! - a *client* sends its version line first. OpenSSH's server refuses
//!   anything else ("client sent invalid protocol identifier"), and so do we;
//! - the version line is `SSH-protoversion-softwareversion SP comments CR LF`,
//!   at most 255 bytes including CR LF, printable US-ASCII. Protocol `2.0`
//!   is SSH-2; `1.99` is a server that also speaks SSH-1 and is accepted as
//!   SSH-2. Like OpenSSH we accept a bare LF as the terminator and a `-` in
//!   the software version, which the RFC forbids but real peers send (JSch:
//!   `SSH-2.0-JSCH-0.1.54`, Cisco: `SSH-1.99-Cisco-1.25`).
//!
//! Invariants:
//! - [`IdentDecoder::decode`] consumes exactly one line or nothing, checks a
//!   line's length limit before waiting for more bytes, and leaves every byte
//!   after the version line (the peer's first binary packet) in the buffer;
//! - the number of lines and bytes before the version line is bounded.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Longest version line, CR LF included (RFC 4253 §4.2).
pub const MAX_VERSION_LINE: usize = 255;

/// Longest line a server may send before its version line (OpenSSH's
/// `SSH_MAX_BANNER_LEN`).
pub const MAX_PRE_VERSION_LINE: usize = 8192;

/// Most lines a server may send before its version line (OpenSSH's
/// `SSH_MAX_PRE_BANNER_LINES`).
pub const MAX_PRE_VERSION_LINES: usize = 1024;

/// Most bytes a server may send before its version line, all lines together.
pub const MAX_PRE_VERSION_BYTES: usize = 64 * 1024;

/// SSH_MSG_DISCONNECT.
const MSG_DISCONNECT: u8 = 1;

/// Cipher block size while no cipher is negotiated (RFC 4253 §6).
const CLEAR_BLOCK: usize = 8;

/// Smallest padding of a binary packet (RFC 4253 §6).
const MIN_PADDING: usize = 4;

/// Who sends the identification being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The client: its first line must be its version line.
    Client,
    /// The server: may send other lines before its version line.
    Server,
}

/// Disconnect reason codes (RFC 4250 §4.2.2) the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DisconnectReason {
    /// SSH_DISCONNECT_HOST_NOT_ALLOWED_TO_CONNECT: no grant for this client.
    HostNotAllowedToConnect = 1,
    /// SSH_DISCONNECT_PROTOCOL_ERROR: a malformed identification.
    ProtocolError = 2,
    /// SSH_DISCONNECT_SERVICE_NOT_AVAILABLE: the backend cannot be reached.
    ServiceNotAvailable = 7,
    /// SSH_DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED: not SSH-2.
    ProtocolVersionNotSupported = 8,
    /// SSH_DISCONNECT_BY_APPLICATION: the gateway is shutting down.
    ByApplication = 11,
}

/// A peer's version line.
#[derive(Clone, PartialEq, Eq)]
pub struct Identification {
    /// The line without its CR LF (or LF); printable US-ASCII only.
    line: String,
    /// Length of `SSH-protoversion-softwareversion`.
    software_end: usize,
    /// Whether the line ended in CR LF (else a bare LF).
    crlf: bool,
}

impl Identification {
    /// The whole line without its terminator, e.g.
    /// `SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10`.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The protocol version: `2.0` or `1.99`.
    pub fn proto_version(&self) -> &str {
        self.line
            .get(4..)
            .and_then(|s| s.split_once('-'))
            .map_or("", |(p, _)| p)
    }

    /// The software version, e.g. `OpenSSH_9.2p1`.
    pub fn software_version(&self) -> &str {
        let head = self.line.get(..self.software_end).unwrap_or_default();
        head.get(4..)
            .and_then(|s| s.split_once('-'))
            .map_or("", |(_, sw)| sw)
    }

    /// The comments after the software version, if any.
    pub fn comments(&self) -> Option<&str> {
        self.line
            .get(self.software_end..)
            .and_then(|s| s.strip_prefix(' '))
    }

    /// Append the line exactly as it was received, terminator included.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(self.line.as_bytes());
        out.put_slice(if self.crlf { b"\r\n" } else { b"\n" });
    }
}

impl fmt::Debug for Identification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identification").field(&self.line).finish()
    }
}

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentLine {
    /// A server's line before its version line, terminator included, to be
    /// forwarded as it is.
    Other(Bytes),
    /// The version line; the identification is complete.
    Version(Identification),
}

/// Why an identification was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentError {
    /// A line exceeds its limit before its end.
    LineTooLong {
        /// The limit, terminator included.
        limit: usize,
    },
    /// The server sent too many lines, or too many bytes, before its version.
    TooManyLines,
    /// The client's first line is not a version line.
    NotSsh,
    /// A protocol version other than 2.0 or 1.99.
    UnsupportedVersion(String),
    /// The line breaks the grammar.
    Malformed(&'static str),
    /// [`IdentDecoder::decode`] was called after the version line.
    Done,
}

impl IdentError {
    /// The disconnect reason that goes with this error.
    pub fn disconnect_reason(&self) -> DisconnectReason {
        match self {
            IdentError::UnsupportedVersion(_) => DisconnectReason::ProtocolVersionNotSupported,
            _ => DisconnectReason::ProtocolError,
        }
    }
}

impl fmt::Display for IdentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentError::LineTooLong { limit } => {
                write!(f, "identification line longer than {limit} bytes")
            }
            IdentError::TooManyLines => f.write_str("too many lines before the version line"),
            IdentError::NotSsh => f.write_str("invalid SSH identification string"),
            IdentError::UnsupportedVersion(v) => {
                write!(f, "protocol version {v:?} is not supported (SSH-2 only)")
            }
            IdentError::Malformed(m) => f.write_str(m),
            IdentError::Done => f.write_str("identification already complete"),
        }
    }
}

impl std::error::Error for IdentError {}

/// Reads one side's identification, line by line.
#[derive(Debug, Clone)]
pub struct IdentDecoder {
    sender: Sender,
    lines: usize,
    bytes: usize,
    done: bool,
}

impl IdentDecoder {
    /// A decoder for what `sender` sends.
    pub fn new(sender: Sender) -> Self {
        IdentDecoder {
            sender,
            lines: 0,
            bytes: 0,
            done: false,
        }
    }

    /// Whether the version line has been decoded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Decode the next line from `buf`: `Ok(None)` when it is not complete
    /// yet (nothing consumed), otherwise the line, consumed from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<IdentLine>, IdentError> {
        if self.done {
            return Err(IdentError::Done);
        }
        let version = starts_as_version(buf);
        if self.sender == Sender::Client && version == Some(false) {
            return Err(IdentError::NotSsh);
        }
        let limit = match version {
            Some(true) => MAX_VERSION_LINE,
            // Too few bytes to tell yet (at most three, so no limit is near).
            None => MAX_VERSION_LINE,
            Some(false) => MAX_PRE_VERSION_LINE,
        };
        let window = buf.get(..buf.len().min(limit)).unwrap_or_default();
        let Some(nl) = window.iter().position(|&b| b == b'\n') else {
            if buf.len() >= limit {
                return Err(IdentError::LineTooLong { limit });
            }
            return Ok(None);
        };
        let len = nl + 1;
        let raw = window.get(..nl).unwrap_or_default();
        let content = strip_terminator(raw)?;
        if version == Some(true) {
            let ident = parse_version(content, raw.len() != content.len())?;
            let _ = buf.split_to(len);
            self.done = true;
            return Ok(Some(IdentLine::Version(ident)));
        }
        // A line shorter than "SSH-" that ends early is not a version line.
        if self.sender == Sender::Client {
            return Err(IdentError::NotSsh);
        }
        if content.contains(&0) {
            return Err(IdentError::Malformed(
                "NUL byte in a line before the version",
            ));
        }
        self.lines += 1;
        self.bytes += len;
        if self.lines > MAX_PRE_VERSION_LINES || self.bytes > MAX_PRE_VERSION_BYTES {
            return Err(IdentError::TooManyLines);
        }
        Ok(Some(IdentLine::Other(buf.split_to(len).freeze())))
    }
}

/// `Some(true)` if `buf` starts with `SSH-`, `Some(false)` if it cannot,
/// `None` if too few bytes arrived to tell.
fn starts_as_version(buf: &[u8]) -> Option<bool> {
    const PREFIX: &[u8] = b"SSH-";
    let n = buf.len().min(PREFIX.len());
    let (head, prefix) = (buf.get(..n)?, PREFIX.get(..n)?);
    if head != prefix {
        Some(false)
    } else if n == PREFIX.len() {
        Some(true)
    } else {
        None
    }
}

/// The line without its CR (the LF is already cut); a CR elsewhere is an error.
fn strip_terminator(line: &[u8]) -> Result<&[u8], IdentError> {
    let content = line.strip_suffix(b"\r").unwrap_or(line);
    if content.contains(&b'\r') {
        return Err(IdentError::Malformed("CR inside an identification line"));
    }
    Ok(content)
}

fn parse_version(content: &[u8], crlf: bool) -> Result<Identification, IdentError> {
    if !content.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(IdentError::Malformed(
            "version line must be printable US-ASCII",
        ));
    }
    let line = std::str::from_utf8(content)
        .map_err(|_| IdentError::Malformed("version line must be printable US-ASCII"))?;
    let rest = line.get(4..).unwrap_or_default();
    let (proto, after) = rest.split_once('-').ok_or(IdentError::Malformed(
        "version line has no software version",
    ))?;
    if proto != "2.0" && proto != "1.99" {
        let shown: String = proto.chars().take(16).collect();
        return Err(IdentError::UnsupportedVersion(shown));
    }
    let software = after.split(' ').next().unwrap_or_default();
    if software.is_empty() {
        return Err(IdentError::Malformed(
            "version line has no software version",
        ));
    }
    let software_end = 4 + proto.len() + 1 + software.len();
    Ok(Identification {
        line: line.to_string(),
        software_end,
        crlf,
    })
}

/// Append a version line `SSH-2.0-{software}` with CR LF. `software` is
/// cleaned to what the grammar allows.
pub fn encode_identification(software: &str, out: &mut BytesMut) {
    out.put_slice(b"SSH-2.0-");
    for c in software.chars().take(MAX_VERSION_LINE - 10) {
        out.put_u8(if c.is_ascii_graphic() && c != '-' {
            c as u8
        } else {
            b'_'
        });
    }
    out.put_slice(b"\r\n");
}

/// Append one line of text a server may send before its version line:
/// control characters become spaces, a leading `SSH-` is defused, the line
/// is cut to fit, and CR LF ends it.
pub fn encode_text_line(text: &str, out: &mut BytesMut) {
    let mut line = String::with_capacity(text.len().min(512));
    if text.starts_with("SSH-") {
        line.push(' ');
    }
    for c in text.chars() {
        if line.len() + c.len_utf8() > 510 {
            break;
        }
        line.push(if c.is_control() { ' ' } else { c });
    }
    out.put_slice(line.as_bytes());
    out.put_slice(b"\r\n");
}

/// Append an SSH_MSG_DISCONNECT as a clear-text binary packet (no cipher,
/// no MAC: valid before the first key exchange completes). `description`
/// is cut to 400 bytes, as much as OpenSSH prints.
pub fn encode_disconnect(reason: DisconnectReason, description: &str, out: &mut BytesMut) {
    let mut desc = description;
    while desc.len() > 400 {
        let mut end = 400;
        while !desc.is_char_boundary(end) {
            end -= 1;
        }
        desc = desc.get(..end).unwrap_or_default();
    }
    let desc: String = desc
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    // byte type, uint32 reason, string description, string language tag.
    let payload_len = 1 + 4 + 4 + desc.len() + 4;
    // uint32 packet_length, byte padding_length, payload, padding: the whole
    // is a multiple of the block size, with at least 4 bytes of padding.
    let unpadded = 4 + 1 + payload_len;
    let mut padding = CLEAR_BLOCK - unpadded % CLEAR_BLOCK;
    if padding < MIN_PADDING {
        padding += CLEAR_BLOCK;
    }
    let packet_len = 1 + payload_len + padding;
    out.reserve(4 + packet_len);
    out.put_u32(u32::try_from(packet_len).unwrap_or(u32::MAX));
    out.put_u8(u8::try_from(padding).unwrap_or(u8::MAX));
    out.put_u8(MSG_DISCONNECT);
    out.put_u32(reason as u32);
    out.put_u32(u32::try_from(desc.len()).unwrap_or(0));
    out.put_slice(desc.as_bytes());
    out.put_u32(0);
    // Padding content is arbitrary (RFC 4253 §6); zeros reveal nothing here.
    out.put_bytes(0, padding);
}

#[cfg(test)]
mod tests;
