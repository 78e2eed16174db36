//! The client's first packet: SSLRequest, GSSENCRequest, CancelRequest or
//! StartupMessage ("Message Flow: Start-up" and "Canceling Requests in
//! Progress" in the protocol documentation).
//!
//! Responsibility: decode the untagged packets a client may send before the
//! first tagged message, and encode the two the gateway replays to a backend
//! (StartupMessage, CancelRequest).
//!
//! Invariants:
//! - the length word is validated as soon as its 4 bytes are present, before
//!   waiting for, reserving or allocating the body: it must lie in
//!   `8..=MAX_STARTUP_PACKET_LEN`;
//! - a packet is consumed from the buffer only when it decoded successfully;
//!   `Ok(None)` leaves the buffer's contents untouched, and bytes after the
//!   packet always stay in the buffer, so the caller can refuse data
//!   pipelined after an SSLRequest or GSSENCRequest (CVE-2021-23214);
//! - a decoded [`StartupMessage`] has a non-empty `user`, unique non-empty
//!   parameter names, UTF-8 names and values without NUL bytes, and a protocol
//!   major version of 3. Rejecting duplicate names removes any doubt about
//!   which `user` or `database` the backend will act on (the server keeps
//!   the last one).

use std::borrow::Cow;
use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

/// Largest startup packet accepted, length word included. PostgreSQL refuses
/// startup packets over 10,000 bytes (`MAX_STARTUP_PACKET_LENGTH`), so no
/// legitimate client sends more.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// Request code of an SSLRequest (version field 1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80877103;

/// Request code of a GSSENCRequest (version field 1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80877104;

/// Request code of a CancelRequest (version field 1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80877102;

/// Length word + protocol version (or request code): the smallest packet.
const HEADER_LEN: usize = 8;
/// Exact length of an SSLRequest or a GSSENCRequest.
const NEGOTIATION_REQUEST_LEN: usize = 8;
/// Exact length of a protocol 3.0 CancelRequest: header + process id + secret key.
const CANCEL_REQUEST_LEN: usize = 16;
/// The only protocol major version PostgreSQL (and so the gateway) speaks.
const SUPPORTED_MAJOR: u16 = 3;
/// Prefix of protocol options, which are negotiated rather than passed to the
/// server's configuration ("Protocol versions" in the documentation).
const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

// Texts of `StartupError::Malformed`; clients see them in a FATAL message.
// Where PostgreSQL has a message for the same fault we use its wording.
const MSG_NO_TERMINATOR: &str = "invalid startup packet layout: expected terminator as last byte";
const MSG_NO_USER: &str = "no PostgreSQL user name specified in startup packet";
const MSG_NOT_UTF8: &str = "invalid startup packet: parameter names and values must be valid UTF-8";
const MSG_DUPLICATE_PARAM: &str = "invalid startup packet: duplicate parameter name";
const MSG_BAD_SSL_LEN: &str = "invalid length of SSL negotiation packet";
const MSG_BAD_GSSENC_LEN: &str = "invalid length of GSSAPI encryption negotiation packet";
const MSG_BAD_CANCEL_LEN: &str = "invalid length of cancel request packet";

/// A protocol version as sent in a startup packet: major in the high 16 bits
/// of the 32-bit field, minor in the low 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    /// Major version; 3 for every current client.
    pub major: u16,
    /// Minor version; 0 for PostgreSQL up to 17, 2 for clients of protocol 3.2.
    pub minor: u16,
}

impl ProtocolVersion {
    /// Splits the 32-bit version field of a startup packet.
    pub fn from_code(code: u32) -> Self {
        let [a, b, c, d] = code.to_be_bytes();
        Self {
            major: u16::from_be_bytes([a, b]),
            minor: u16::from_be_bytes([c, d]),
        }
    }

    /// The 32-bit version field as written on the wire.
    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A StartupMessage: protocol version and the parameters in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Protocol version requested by the client (major is always 3 when decoded).
    pub version: ProtocolVersion,
    /// `(name, value)` pairs in the order the client sent them.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// Value of parameter `name`. If a hand-built message repeats a name, the
    /// last one wins, as on the server (decoded messages never repeat names).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `user` parameter (always present and non-empty in a decoded message).
    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The `database` parameter as sent. The server defaults it to the user
    /// name when absent; this accessor does not.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
    }

    /// Names of the protocol options (`_pq_.*`) the client asked for.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.starts_with(PROTOCOL_OPTION_PREFIX))
    }
}

/// One decoded client startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// SSLRequest: the client asks to upgrade to TLS before the StartupMessage.
    Ssl,
    /// GSSENCRequest: the client asks for GSSAPI encryption.
    GssEnc,
    /// CancelRequest, sent on a fresh connection to cancel a running query.
    Cancel {
        /// Process id from the BackendKeyData the client received.
        process_id: u32,
        /// Secret key from the BackendKeyData the client received.
        secret_key: u32,
    },
    /// StartupMessage: user, database and other parameters.
    Startup(StartupMessage),
}

/// Why a startup packet was refused. Always the client's fault; the text is
/// shown to the client in a FATAL ErrorResponse, so it is worded like
/// PostgreSQL's own messages. [`StartupError::sqlstate`] gives the code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    /// The length word is below 8, the size of the length word and version.
    #[error("invalid length of startup packet: {0} bytes, the minimum is 8")]
    TooShort(u32),
    /// The length word is above [`MAX_STARTUP_PACKET_LEN`].
    #[error("invalid length of startup packet: {0} bytes, the maximum is 10000")]
    TooLong(u32),
    /// A protocol major version other than 3 that is not a special request code.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// The packet's layout or content is invalid; the text says how.
    #[error("{0}")]
    Malformed(&'static str),
}

impl StartupError {
    /// The SQLSTATE PostgreSQL reports for the same fault: `0A000`
    /// (feature_not_supported) for an unsupported version, `28000`
    /// (invalid_authorization_specification) for a missing user name and
    /// `08P01` (protocol_violation) otherwise.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::UnsupportedVersion { .. } => "0A000",
            Self::Malformed(msg) if *msg == MSG_NO_USER => "28000",
            Self::TooShort(_) | Self::TooLong(_) | Self::Malformed(_) => "08P01",
        }
    }
}

/// Decodes one client startup packet from the front of `buf`.
///
/// Check-then-parse: `Ok(None)` means more bytes are needed and `buf` is left
/// untouched (capacity for the rest of the packet may be reserved, after the
/// length has been bounded). On `Ok(Some(_))` exactly the packet is consumed;
/// any bytes after it stay in `buf`, so the caller can detect data pipelined
/// after an SSLRequest or GSSENCRequest (CVE-2021-23214). On `Err` the contents
/// of `buf` are unspecified; the caller should end the connection.
///
/// The length word is validated as soon as its 4 bytes are present, and a
/// special request whose length is wrong is refused as soon as its code is
/// present. SSLRequest and GSSENCRequest must be exactly 8 bytes and a
/// CancelRequest exactly 16; a StartupMessage must carry a non-empty `user`.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupRequest>, StartupError> {
    let Some(len_word) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*len_word);
    let packet_len = bounded_packet_len(len)?;

    if let Some(code) = read_code(buf) {
        check_request_len(code, packet_len)?;
    }

    let Some(packet) = buf.get(..packet_len) else {
        // `packet_len` is at most MAX_STARTUP_PACKET_LEN, so this is bounded.
        buf.reserve(packet_len.saturating_sub(buf.len()));
        return Ok(None);
    };
    // The packet is at least HEADER_LEN long, so both always succeed.
    let code = read_code(packet).ok_or(StartupError::TooShort(len))?;
    let body = packet.get(HEADER_LEN..).unwrap_or_default();
    let request = parse_request(code, body)?;
    buf.advance(packet_len);
    Ok(Some(request))
}

/// Appends `msg` as a StartupMessage.
///
/// Names and values cannot carry NUL bytes on the wire (they are
/// NUL-terminated), so any NUL is dropped, and a parameter whose name is empty
/// after that is skipped (an empty name would end the list early). The output
/// is not limited to [`MAX_STARTUP_PACKET_LEN`]; a server refuses a larger one.
pub fn encode_startup(msg: &StartupMessage, out: &mut BytesMut) {
    let params = || {
        msg.params
            .iter()
            .map(|(n, v)| (strip_nul(n), strip_nul(v)))
            .filter(|(n, _)| !n.is_empty())
    };
    let body_len: usize = params().map(|(n, v)| n.len() + v.len() + 2).sum();
    // + 1 for the list terminator. Beyond u32::MAX the length is saturated:
    // such a packet is refused by any server anyway.
    let len = u32::try_from(HEADER_LEN + body_len + 1).unwrap_or(u32::MAX);

    out.reserve(HEADER_LEN + body_len + 1);
    out.put_u32(len);
    out.put_u32(msg.version.code());
    for (name, value) in params() {
        put_cstr(out, &name);
        put_cstr(out, &value);
    }
    out.put_u8(0);
}

/// Appends a protocol 3.0 CancelRequest (16 bytes).
pub fn encode_cancel_request(process_id: u32, secret_key: u32, out: &mut BytesMut) {
    out.reserve(CANCEL_REQUEST_LEN);
    out.put_u32(16); // CANCEL_REQUEST_LEN
    out.put_u32(CANCEL_REQUEST_CODE);
    out.put_u32(process_id);
    out.put_u32(secret_key);
}

/// Appends an SSLRequest (8 bytes), as a frontend asking the server for TLS.
pub fn encode_ssl_request(out: &mut BytesMut) {
    out.reserve(8);
    out.put_u32(8);
    out.put_u32(SSL_REQUEST_CODE);
}

/// Checks a length word and converts it to the packet size in bytes.
fn bounded_packet_len(len: u32) -> Result<usize, StartupError> {
    match usize::try_from(len) {
        Ok(n) if n < HEADER_LEN => Err(StartupError::TooShort(len)),
        Ok(n) if n <= MAX_STARTUP_PACKET_LEN => Ok(n),
        _ => Err(StartupError::TooLong(len)),
    }
}

/// The version/request code, if its 4 bytes are in `buf`.
fn read_code(buf: &[u8]) -> Option<u32> {
    let bytes = buf.get(4..HEADER_LEN)?;
    let bytes: [u8; 4] = bytes.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Special requests have a fixed size; anything else is a protocol violation.
fn check_request_len(code: u32, packet_len: usize) -> Result<(), StartupError> {
    let (expected, msg) = match code {
        SSL_REQUEST_CODE => (NEGOTIATION_REQUEST_LEN, MSG_BAD_SSL_LEN),
        GSSENC_REQUEST_CODE => (NEGOTIATION_REQUEST_LEN, MSG_BAD_GSSENC_LEN),
        CANCEL_REQUEST_CODE => (CANCEL_REQUEST_LEN, MSG_BAD_CANCEL_LEN),
        _ => return Ok(()),
    };
    if packet_len == expected {
        Ok(())
    } else {
        Err(StartupError::Malformed(msg))
    }
}

/// Parses the body of one complete packet whose length word and, for special
/// requests, exact length have been checked.
fn parse_request(code: u32, body: &[u8]) -> Result<StartupRequest, StartupError> {
    match code {
        SSL_REQUEST_CODE => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST_CODE => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST_CODE => {
            let bad_len = |_| StartupError::Malformed(MSG_BAD_CANCEL_LEN);
            let mut rest = body;
            let process_id = rest.try_get_u32().map_err(bad_len)?;
            let secret_key = rest.try_get_u32().map_err(bad_len)?;
            Ok(StartupRequest::Cancel {
                process_id,
                secret_key,
            })
        }
        _ => {
            let version = ProtocolVersion::from_code(code);
            if version.major != SUPPORTED_MAJOR {
                return Err(StartupError::UnsupportedVersion {
                    major: version.major,
                    minor: version.minor,
                });
            }
            let params = parse_params(body)?;
            let msg = StartupMessage { version, params };
            match msg.user() {
                Some(user) if !user.is_empty() => Ok(StartupRequest::Startup(msg)),
                _ => Err(StartupError::Malformed(MSG_NO_USER)),
            }
        }
    }
}

/// Parses `name\0value\0 ... \0`: pairs of NUL-terminated strings ended by an
/// empty name, which must be the packet's last byte (as the server demands).
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let malformed = || StartupError::Malformed(MSG_NO_TERMINATOR);
    let Some((0, mut rest)) = body.split_last() else {
        return Err(malformed());
    };
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (name, after_name) = split_cstr(rest).ok_or_else(malformed)?;
        if name.is_empty() {
            // A terminator before the last byte.
            return Err(malformed());
        }
        let (value, after_value) = split_cstr(after_name).ok_or_else(malformed)?;
        params.push((to_string(name)?, to_string(value)?));
        rest = after_value;
    }

    let mut names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
        return Err(StartupError::Malformed(MSG_DUPLICATE_PARAM));
    }
    Ok(params)
}

/// Splits a NUL-terminated string off the front of `bytes`: the string
/// without its NUL, and what follows the NUL. `None` if there is no NUL.
fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    let (s, rest) = bytes.split_at_checked(nul)?;
    Some((s, rest.get(1..)?))
}

fn to_string(bytes: &[u8]) -> Result<String, StartupError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| StartupError::Malformed(MSG_NOT_UTF8))
}

fn strip_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
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
