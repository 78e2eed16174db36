//! The server's first packet: the initial handshake, protocol version 10
//! ("Protocol::HandshakeV10" in the client/server protocol documentation).
//!
//! Responsibility: parse the greeting a backend sends (jitgate needs its
//! capabilities, its version and the connection id of the session's backend
//! thread) and write the greeting jitgate sends to clients itself.
//!
//! Layout: protocol version (10), server version (NUL-terminated), connection
//! id (u32), 8 bytes of scramble, a filler byte, the low 16 capability bits,
//! then (when present) the default collation, the status flags, the high 16
//! capability bits, the length of the auth plugin data, 6 reserved bytes and
//! 4 bytes that MariaDB uses for its extended capabilities (when it clears
//! `CLIENT_LONG_PASSWORD`, which it calls `CLIENT_MYSQL`), the rest of the
//! scramble (at least 13 bytes, NUL-terminated) and the auth plugin name.
//!
//! Invariants: parsing works on a payload that [`super::decode_packet`]
//! already bounded; every field is read through checked slicing, so no input
//! can make it panic; the scramble is at most 255 bytes by construction.

use super::packet::split_nul;
use super::{caps, HandshakeError};

/// The only handshake version this module speaks (MySQL ≥ 3.21, MariaDB).
pub const PROTOCOL_VERSION_10: u8 = 10;

/// Length of the first part of the scramble.
const SCRAMBLE_1_LEN: usize = 8;
/// Fixed-size fields after the first scramble part: filler, low capabilities,
/// collation, status, high capabilities, auth data length, 10 reserved bytes.
const FIXED_TAIL_LEN: usize = 1 + 2 + 1 + 2 + 2 + 1 + 10;
/// The second scramble part is at least this long (12 bytes + NUL).
const SCRAMBLE_2_MIN: usize = 13;

/// An initial handshake packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Server version text, e.g. `5.5.5-10.11.19-MariaDB-0+deb12u1`.
    pub server_version: Vec<u8>,
    /// The server's id for this connection (its thread id).
    pub connection_id: u32,
    /// The auth plugin data ("scramble", 20 bytes for the usual plugins),
    /// both parts joined, without the trailing NUL.
    pub scramble: Vec<u8>,
    /// All 32 capability bits.
    pub capabilities: u32,
    /// Default collation id.
    pub collation: u8,
    /// Server status flags.
    pub status: u16,
    /// MariaDB's extended capabilities (0 unless the server is MariaDB and
    /// cleared `CLIENT_LONG_PASSWORD`).
    pub mariadb_ext: u32,
    /// The default auth plugin name (empty if the server sent none).
    pub auth_plugin: Vec<u8>,
}

/// Parses a greeting payload.
pub fn parse_greeting(payload: &[u8]) -> Result<Greeting, HandshakeError> {
    let (&version, rest) = payload
        .split_first()
        .ok_or(HandshakeError::Malformed("empty greeting"))?;
    if version != PROTOCOL_VERSION_10 {
        return Err(HandshakeError::UnsupportedProtocol(version));
    }
    let (server_version, rest) =
        split_nul(rest).ok_or(HandshakeError::Malformed("greeting: no server version"))?;
    let (id, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(HandshakeError::Malformed("greeting: truncated"))?;
    let (scramble_1, rest) = rest
        .split_first_chunk::<SCRAMBLE_1_LEN>()
        .ok_or(HandshakeError::Malformed("greeting: truncated"))?;
    let Some((fixed, rest)) = rest.split_first_chunk::<FIXED_TAIL_LEN>() else {
        return Err(HandshakeError::Malformed(
            "greeting: server without protocol 4.1 support",
        ));
    };
    let [_filler, c0, c1, collation, s0, s1, c2, c3, data_len, _r0, _r1, _r2, _r3, _r4, _r5, m0, m1, m2, m3] =
        *fixed;
    let capabilities = u32::from_le_bytes([c0, c1, c2, c3]);
    let mariadb_ext = if capabilities & caps::CLIENT_LONG_PASSWORD == 0 {
        u32::from_le_bytes([m0, m1, m2, m3])
    } else {
        0
    };
    let mut scramble = scramble_1.to_vec();
    let mut rest = rest;
    if capabilities & caps::CLIENT_SECURE_CONNECTION != 0 {
        // "$len = MAX(13, length of auth-plugin-data - 8)".
        let len = usize::from(data_len)
            .saturating_sub(SCRAMBLE_1_LEN)
            .max(SCRAMBLE_2_MIN);
        let part = rest
            .get(..len)
            .ok_or(HandshakeError::Malformed("greeting: truncated scramble"))?;
        scramble.extend_from_slice(part.strip_suffix(&[0]).unwrap_or(part));
        rest = rest.get(len..).unwrap_or_default();
    }
    let auth_plugin = if capabilities & caps::CLIENT_PLUGIN_AUTH != 0 {
        // Some servers omit the final NUL.
        split_nul(rest).map_or(rest, |(name, _)| name).to_vec()
    } else {
        Vec::new()
    };
    Ok(Greeting {
        server_version: server_version.to_vec(),
        connection_id: u32::from_le_bytes(*id),
        scramble,
        capabilities,
        collation,
        status: u16::from_le_bytes([s0, s1]),
        mariadb_ext,
        auth_plugin,
    })
}

/// Appends the payload of `g`. The scramble must be 20 bytes (or at least
/// 8) without NUL bytes, the server version and plugin name without NUL;
/// `CLIENT_SECURE_CONNECTION` and `CLIENT_PLUGIN_AUTH` are expected to be
/// set. MariaDB extended capabilities are written only when
/// `CLIENT_LONG_PASSWORD` is clear, as MariaDB itself does.
pub fn encode_greeting(g: &Greeting, out: &mut Vec<u8>) {
    out.push(PROTOCOL_VERSION_10);
    out.extend_from_slice(&g.server_version);
    out.push(0);
    out.extend_from_slice(&g.connection_id.to_le_bytes());
    let (s1, s2) = g.scramble.split_at(g.scramble.len().min(SCRAMBLE_1_LEN));
    let mut first = [0u8; SCRAMBLE_1_LEN];
    if let Some(dst) = first.get_mut(..s1.len()) {
        dst.copy_from_slice(s1);
    }
    out.extend_from_slice(&first);
    out.push(0);
    let [c0, c1, c2, c3] = g.capabilities.to_le_bytes();
    out.extend_from_slice(&[c0, c1, g.collation]);
    out.extend_from_slice(&g.status.to_le_bytes());
    out.extend_from_slice(&[c2, c3]);
    // The data length counts both parts (the second padded to its minimum)
    // and the NUL.
    let data_len =
        u8::try_from(SCRAMBLE_1_LEN + s2.len().max(SCRAMBLE_2_MIN - 1) + 1).unwrap_or(u8::MAX);
    out.push(data_len);
    out.extend_from_slice(&[0; 6]);
    if g.capabilities & caps::CLIENT_LONG_PASSWORD == 0 {
        out.extend_from_slice(&g.mariadb_ext.to_le_bytes());
    } else {
        out.extend_from_slice(&[0; 4]);
    }
    out.extend_from_slice(s2);
    // Pad the second part to its 12-byte minimum, then NUL.
    out.extend(std::iter::repeat_n(
        0u8,
        (SCRAMBLE_2_MIN - 1).saturating_sub(s2.len()),
    ));
    out.push(0);
    out.extend_from_slice(&g.auth_plugin);
    out.push(0);
}

#[cfg(test)]
mod tests;
