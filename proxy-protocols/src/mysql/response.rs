//! The client's answer to the greeting: SSLRequest, HandshakeResponse41, or
//! the pre-4.1 HandshakeResponse320 ("Protocol::HandshakeResponse" and
//! "Protocol::SSLRequest" in the client/server protocol documentation).
//!
//! Responsibility: tell the three apart, parse a HandshakeResponse41 (the
//! login jitgate admits is its user name), and write the HandshakeResponse41
//! jitgate sends to a backend on the client's behalf.
//!
//! Layout of a HandshakeResponse41: capabilities (u32), max packet size
//! (u32), collation (u8), 19 filler bytes, 4 bytes of MariaDB extended
//! capabilities, then the user name (NUL-terminated), the auth response
//! (length-encoded with `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`, else one
//! length byte with `CLIENT_SECURE_CONNECTION`, else NUL-terminated), the
//! database (NUL-terminated, with `CLIENT_CONNECT_WITH_DB`), the auth plugin
//! name (with `CLIENT_PLUGIN_AUTH`) and the connection attributes (with
//! `CLIENT_CONNECT_ATTRS`: a length-encoded block of length-encoded
//! key/value strings). An SSLRequest is the first 32 bytes alone, with
//! `CLIENT_SSL` set.
//!
//! Invariants: every length is checked against the bytes present before it
//! is used (the payload itself was bounded by [`super::decode_packet`]); the
//! attribute block is checked to be a sequence of whole key/value pairs;
//! the user name must be NUL-terminated, as the server requires.

use super::packet::{put_lenenc_int, read_lenenc_bytes, split_nul};
use super::{caps, HandshakeError};

/// The fixed part: capabilities, max packet, collation, filler, MariaDB caps.
pub const FIXED_LEN: usize = 32;

/// Length of an SSLRequest payload: the fixed part alone.
pub const SSL_REQUEST_LEN: usize = FIXED_LEN;

/// What a client sent in answer to the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFirst {
    /// An SSLRequest: the client wants TLS now (or set `CLIENT_SSL` in a
    /// full response, which the server also takes as a TLS request).
    SslRequest {
        /// The client's capabilities.
        capabilities: u32,
    },
    /// A HandshakeResponse41.
    Response(HandshakeResponse),
    /// A pre-4.1 HandshakeResponse320 (no `CLIENT_PROTOCOL_41`).
    Pre41 {
        /// The client's 16 capability bits.
        capabilities: u16,
    },
}

/// A HandshakeResponse41.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    /// Capabilities the client chose. [`encode_handshake_response`] sets
    /// `CLIENT_CONNECT_WITH_DB`, `CLIENT_PLUGIN_AUTH` and
    /// `CLIENT_CONNECT_ATTRS` from the optional fields below.
    pub capabilities: u32,
    /// Largest packet the client will send.
    pub max_packet: u32,
    /// The connection's collation id.
    pub collation: u8,
    /// MariaDB extended capabilities (meaningful only without `CLIENT_LONG_PASSWORD`).
    pub mariadb_ext: u32,
    /// The login.
    pub user: Vec<u8>,
    /// The auth plugin's first answer (bound to the greeting's scramble).
    pub auth_response: Vec<u8>,
    /// The initial database.
    pub database: Option<Vec<u8>>,
    /// The auth plugin the client used.
    pub auth_plugin: Option<Vec<u8>>,
    /// The connection attributes block, as sent (without its length).
    pub connect_attrs: Option<Vec<u8>>,
}

impl HandshakeResponse {
    /// The login as text, if it is UTF-8.
    pub fn user_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.user).ok()
    }
}

/// Tells what the client's first packet is and parses it.
pub fn parse_client_first(payload: &[u8]) -> Result<ClientFirst, HandshakeError> {
    parse(payload, false)
}

/// Parses the HandshakeResponse41 a client sends inside TLS, after its
/// SSLRequest: it has `CLIENT_SSL` set too. Anything else (a pre-4.1
/// response, a second SSLRequest) is malformed.
pub fn parse_response_over_tls(payload: &[u8]) -> Result<HandshakeResponse, HandshakeError> {
    match parse(payload, true)? {
        ClientFirst::Response(r) => Ok(r),
        _ => Err(HandshakeError::Malformed(
            "expected a handshake response inside TLS",
        )),
    }
}

fn parse(payload: &[u8], over_tls: bool) -> Result<ClientFirst, HandshakeError> {
    let Some(&[l0, l1]) = payload.first_chunk::<2>() else {
        return Err(HandshakeError::Malformed("truncated handshake response"));
    };
    let low = u16::from_le_bytes([l0, l1]);
    if u32::from(low) & caps::CLIENT_PROTOCOL_41 == 0 {
        return Ok(ClientFirst::Pre41 { capabilities: low });
    }
    let Some((fixed, rest)) = payload.split_first_chunk::<FIXED_LEN>() else {
        return Err(HandshakeError::Malformed("truncated handshake response"));
    };
    let [c0, c1, c2, c3, p0, p1, p2, p3, collation, ..] = *fixed;
    let [.., m0, m1, m2, m3] = *fixed;
    let capabilities = u32::from_le_bytes([c0, c1, c2, c3]);
    if capabilities & caps::CLIENT_SSL != 0 && !over_tls {
        return Ok(ClientFirst::SslRequest { capabilities });
    }
    let (user, rest) = split_nul(rest).ok_or(HandshakeError::Malformed(
        "handshake response without a NUL-terminated user name",
    ))?;
    let (auth_response, rest) = if capabilities & caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let (data, used) =
            read_lenenc_bytes(rest).ok_or(HandshakeError::Malformed("truncated auth response"))?;
        (data, rest.get(used..).unwrap_or_default())
    } else if capabilities & caps::CLIENT_SECURE_CONNECTION != 0 {
        let (&len, tail) = rest
            .split_first()
            .ok_or(HandshakeError::Malformed("truncated auth response"))?;
        let len = usize::from(len);
        let data = tail
            .get(..len)
            .ok_or(HandshakeError::Malformed("truncated auth response"))?;
        (data, tail.get(len..).unwrap_or_default())
    } else {
        split_nul(rest).ok_or(HandshakeError::Malformed("truncated auth response"))?
    };
    let mut rest = rest;
    // Trailing fields may be missing at the end of the payload; a field that
    // is present must be whole.
    let mut database = None;
    if capabilities & caps::CLIENT_CONNECT_WITH_DB != 0 && !rest.is_empty() {
        let (db, tail) =
            split_nul(rest).ok_or(HandshakeError::Malformed("unterminated database name"))?;
        database = Some(db.to_vec());
        rest = tail;
    }
    let mut auth_plugin = None;
    if capabilities & caps::CLIENT_PLUGIN_AUTH != 0 && !rest.is_empty() {
        match split_nul(rest) {
            Some((name, tail)) => {
                auth_plugin = Some(name.to_vec());
                rest = tail;
            }
            // Servers accept a plugin name that runs to the end unterminated.
            None if capabilities & caps::CLIENT_CONNECT_ATTRS == 0 => {
                auth_plugin = Some(rest.to_vec());
                rest = &[];
            }
            None => return Err(HandshakeError::Malformed("unterminated auth plugin name")),
        }
    }
    let mut connect_attrs = None;
    if capabilities & caps::CLIENT_CONNECT_ATTRS != 0 && !rest.is_empty() {
        let (block, _) = read_lenenc_bytes(rest)
            .ok_or(HandshakeError::Malformed("truncated connection attributes"))?;
        if !attrs_well_formed(block) {
            return Err(HandshakeError::Malformed("malformed connection attributes"));
        }
        connect_attrs = Some(block.to_vec());
    }
    Ok(ClientFirst::Response(HandshakeResponse {
        capabilities,
        max_packet: u32::from_le_bytes([p0, p1, p2, p3]),
        collation,
        mariadb_ext: u32::from_le_bytes([m0, m1, m2, m3]),
        user: user.to_vec(),
        auth_response: auth_response.to_vec(),
        database,
        auth_plugin,
        connect_attrs,
    }))
}

/// Whether `block` is a sequence of whole length-encoded strings in pairs.
fn attrs_well_formed(mut block: &[u8]) -> bool {
    let mut strings = 0usize;
    while !block.is_empty() {
        let Some((_, used)) = read_lenenc_bytes(block) else {
            return false;
        };
        block = block.get(used..).unwrap_or_default();
        strings += 1;
    }
    strings % 2 == 0
}

/// The connection attributes in `block` as (key, value) pairs; malformed
/// tails are ignored.
pub fn connect_attr_pairs(block: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = block;
    while let Some((k, used)) = read_lenenc_bytes(rest) {
        let after = rest.get(used..).unwrap_or_default();
        let Some((v, used2)) = read_lenenc_bytes(after) else {
            break;
        };
        out.push((k, v));
        rest = after.get(used2..).unwrap_or_default();
    }
    out
}

/// Appends the payload of an SSLRequest: the fixed part of `r` (its
/// capabilities with `CLIENT_SSL`, max packet, collation), nothing else.
/// The client's next packet, inside TLS, is the whole response with
/// sequence id 2 ([`encode_handshake_response_over_tls`]).
pub fn encode_ssl_request(r: &HandshakeResponse, out: &mut Vec<u8>) {
    out.extend_from_slice(&(r.capabilities | caps::CLIENT_SSL).to_le_bytes());
    out.extend_from_slice(&r.max_packet.to_le_bytes());
    out.push(r.collation);
    out.extend_from_slice(&[0; 23]);
}

/// Appends the payload of `r` as sent inside TLS after an SSLRequest: as
/// [`encode_handshake_response`], with `CLIENT_SSL` set (servers read the
/// capabilities again from this packet).
pub fn encode_handshake_response_over_tls(r: &HandshakeResponse, out: &mut Vec<u8>) {
    let start = out.len();
    encode_handshake_response(r, out);
    let ssl = caps::CLIENT_SSL.to_le_bytes();
    if let Some(c) = out.get_mut(start..start + 4) {
        for (b, s) in c.iter_mut().zip(ssl) {
            *b |= s;
        }
    }
}

/// Appends the payload of `r`. `CLIENT_CONNECT_WITH_DB`, `CLIENT_PLUGIN_AUTH`
/// and `CLIENT_CONNECT_ATTRS` are set exactly when the matching field is
/// present; the auth response is encoded as the capabilities say (an auth
/// response over 255 bytes needs `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`;
/// without it the response is cut to 255 bytes).
pub fn encode_handshake_response(r: &HandshakeResponse, out: &mut Vec<u8>) {
    let mut capabilities = r.capabilities & !caps::CLIENT_SSL;
    let set = |c: &mut u32, flag: u32, on: bool| {
        if on {
            *c |= flag;
        } else {
            *c &= !flag;
        }
    };
    set(
        &mut capabilities,
        caps::CLIENT_CONNECT_WITH_DB,
        r.database.is_some(),
    );
    set(
        &mut capabilities,
        caps::CLIENT_PLUGIN_AUTH,
        r.auth_plugin.is_some(),
    );
    set(
        &mut capabilities,
        caps::CLIENT_CONNECT_ATTRS,
        r.connect_attrs.is_some(),
    );
    out.extend_from_slice(&capabilities.to_le_bytes());
    out.extend_from_slice(&r.max_packet.to_le_bytes());
    out.push(r.collation);
    out.extend_from_slice(&[0; 19]);
    if capabilities & caps::CLIENT_LONG_PASSWORD == 0 {
        out.extend_from_slice(&r.mariadb_ext.to_le_bytes());
    } else {
        out.extend_from_slice(&[0; 4]);
    }
    out.extend_from_slice(&r.user);
    out.push(0);
    if capabilities & caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        put_lenenc_int(r.auth_response.len() as u64, out);
        out.extend_from_slice(&r.auth_response);
    } else if capabilities & caps::CLIENT_SECURE_CONNECTION != 0 {
        let data = r.auth_response.get(..255).unwrap_or(&r.auth_response);
        out.push(u8::try_from(data.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(data);
    } else {
        out.extend_from_slice(&r.auth_response);
        out.push(0);
    }
    if let Some(db) = &r.database {
        out.extend_from_slice(db);
        out.push(0);
    }
    if let Some(plugin) = &r.auth_plugin {
        out.extend_from_slice(plugin);
        out.push(0);
    }
    if let Some(attrs) = &r.connect_attrs {
        put_lenenc_int(attrs.len() as u64, out);
        out.extend_from_slice(attrs);
    }
}

#[cfg(test)]
mod tests;
