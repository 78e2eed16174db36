//! MySQL / MariaDB client/server protocol codecs used by the gateway.
//!
//! Responsibility: the parts of the protocol the gateway must understand
//! itself, and nothing more:
//! - [`decode_packet`] / [`encode_packet`]: whole packets during the
//!   handshake, where every packet is small;
//! - [`parse_greeting`] / [`encode_greeting`]: the server's initial
//!   handshake (v10), read from a backend and written by jitgate itself;
//! - [`parse_client_first`]: the client's answer (SSLRequest,
//!   HandshakeResponse41, or a pre-4.1 response to refuse), and
//!   [`encode_handshake_response`] for the backend leg;
//! - ERR/OK/EOF, AuthSwitchRequest and COM_CHANGE_USER readers and the ERR
//!   and COM_QUERY writers in [`generic`];
//! - [`PacketFramer`]: payload boundaries in a relayed stream (a payload of
//!   16 MiB or more spans several packets) without buffering;
//! - [`Conversation`]: whose turn it is, so an injected ERR carries the
//!   sequence id the client expects.
//!
//! `mysql_common` provides the capability flag values ([`caps`]) and the
//! auth plugin scrambles ([`scramble_native`], [`scramble_sha256`]); the
//! packet parsers are our own, because every length here comes from an
//! unauthenticated peer and must be bounded and checked explicitly (the
//! tests cross-check them against `mysql_common`'s).
//!
//! Reference: MySQL Source Code Documentation, "Client/Server Protocol"
//! (MariaDB's "Clients & Connectors / Client/Server Protocol" for its
//! extensions).

mod conversation;
mod framer;
pub mod generic;
mod handshake;
mod packet;
mod response;

#[cfg(test)]
mod fixtures;

pub use conversation::{Conversation, Turn};
pub use framer::{FrameBoundaries, PacketFramer, PayloadHead, MAX_HEAD};
pub use generic::{
    change_user_login, encode_err, encode_query, end_of_rows_status, ok_status, parse_auth_switch,
    parse_err, ChangeUserLogin, ServerError,
};
pub use handshake::{encode_greeting, parse_greeting, Greeting, PROTOCOL_VERSION_10};
pub use packet::{
    decode_packet, encode_packet, parse_header, read_lenenc_int, Packet, PacketError, HEADER_LEN,
    MAX_PACKET_PAYLOAD,
};
pub use response::{
    connect_attr_pairs, encode_handshake_response, encode_handshake_response_over_tls,
    encode_ssl_request, parse_client_first, parse_response_over_tls, ClientFirst,
    HandshakeResponse, SSL_REQUEST_LEN,
};

/// mysql_native_password: `SHA1(password) XOR SHA1(scramble, SHA1(SHA1(password)))`;
/// `None` for an empty password (the answer is then empty).
pub use mysql_common::auth::plugins::mysql_native_password::scramble_native;

/// caching_sha2_password's fast-path answer; `None` for an empty password.
pub use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;

/// A handshake packet jitgate cannot accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A field is missing, cut short or not terminated.
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    /// The greeting's protocol version is not 10.
    #[error("unsupported handshake protocol version {0}")]
    UnsupportedProtocol(u8),
}

/// Capability flags (the values are `mysql_common`'s), as plain `u32` bits.
pub mod caps {
    use mysql_common::constants::CapabilityFlags as F;

    /// MySQL: new passwords; MariaDB clears it to announce extended capabilities.
    pub const CLIENT_LONG_PASSWORD: u32 = F::CLIENT_LONG_PASSWORD.bits();
    /// Affected rows count found rows.
    pub const CLIENT_FOUND_ROWS: u32 = F::CLIENT_FOUND_ROWS.bits();
    /// All column flags.
    pub const CLIENT_LONG_FLAG: u32 = F::CLIENT_LONG_FLAG.bits();
    /// A database name in the handshake response.
    pub const CLIENT_CONNECT_WITH_DB: u32 = F::CLIENT_CONNECT_WITH_DB.bits();
    /// `db.table.column` is not allowed.
    pub const CLIENT_NO_SCHEMA: u32 = F::CLIENT_NO_SCHEMA.bits();
    /// Compressed protocol.
    pub const CLIENT_COMPRESS: u32 = F::CLIENT_COMPRESS.bits();
    /// ODBC client.
    pub const CLIENT_ODBC: u32 = F::CLIENT_ODBC.bits();
    /// `LOAD DATA LOCAL INFILE`.
    pub const CLIENT_LOCAL_FILES: u32 = F::CLIENT_LOCAL_FILES.bits();
    /// Spaces before `(` are ignored.
    pub const CLIENT_IGNORE_SPACE: u32 = F::CLIENT_IGNORE_SPACE.bits();
    /// The 4.1 protocol.
    pub const CLIENT_PROTOCOL_41: u32 = F::CLIENT_PROTOCOL_41.bits();
    /// `interactive_timeout` applies.
    pub const CLIENT_INTERACTIVE: u32 = F::CLIENT_INTERACTIVE.bits();
    /// TLS.
    pub const CLIENT_SSL: u32 = F::CLIENT_SSL.bits();
    /// No SIGPIPE (client side only).
    pub const CLIENT_IGNORE_SIGPIPE: u32 = F::CLIENT_IGNORE_SIGPIPE.bits();
    /// Transaction status in OK packets.
    pub const CLIENT_TRANSACTIONS: u32 = F::CLIENT_TRANSACTIONS.bits();
    /// 4.1 authentication (length-prefixed auth response).
    pub const CLIENT_SECURE_CONNECTION: u32 = F::CLIENT_SECURE_CONNECTION.bits();
    /// Several statements per COM_QUERY.
    pub const CLIENT_MULTI_STATEMENTS: u32 = F::CLIENT_MULTI_STATEMENTS.bits();
    /// Several result sets per COM_QUERY.
    pub const CLIENT_MULTI_RESULTS: u32 = F::CLIENT_MULTI_RESULTS.bits();
    /// Several result sets per COM_STMT_EXECUTE.
    pub const CLIENT_PS_MULTI_RESULTS: u32 = F::CLIENT_PS_MULTI_RESULTS.bits();
    /// Pluggable authentication (AuthSwitchRequest).
    pub const CLIENT_PLUGIN_AUTH: u32 = F::CLIENT_PLUGIN_AUTH.bits();
    /// Connection attributes.
    pub const CLIENT_CONNECT_ATTRS: u32 = F::CLIENT_CONNECT_ATTRS.bits();
    /// Length-encoded auth response.
    pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 =
        F::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits();
    /// Expired passwords can be changed.
    pub const CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS: u32 =
        F::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS.bits();
    /// Session state changes in OK packets.
    pub const CLIENT_SESSION_TRACK: u32 = F::CLIENT_SESSION_TRACK.bits();
    /// OK packets instead of EOF packets.
    pub const CLIENT_DEPRECATE_EOF: u32 = F::CLIENT_DEPRECATE_EOF.bits();
    /// MySQL 8: optional result set metadata.
    pub const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 =
        F::CLIENT_OPTIONAL_RESULTSET_METADATA.bits();
    /// MySQL 8: zstd compression.
    pub const CLIENT_ZSTD_COMPRESSION_ALGORITHM: u32 = F::CLIENT_ZSTD_COMPRESSION_ALGORITHM.bits();
    /// MySQL 8: query attributes in COM_QUERY.
    pub const CLIENT_QUERY_ATTRIBUTES: u32 = F::CLIENT_QUERY_ATTRIBUTES.bits();
}
