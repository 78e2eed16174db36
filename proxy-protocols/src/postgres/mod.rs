//! PostgreSQL frontend/backend protocol (version 3) codecs used by the gateway.
//!
//! Responsibility: the few parts of the protocol the gateway must understand
//! itself, and nothing more:
//! - [`decode_startup`]: the client's first packet (SSLRequest, GSSENCRequest,
//!   CancelRequest or StartupMessage), plus the encoders the gateway needs to
//!   replay a startup or a cancel towards the backend;
//! - [`decode_backend_message`]: whole backend messages during the startup and
//!   authentication phase, where messages are small;
//! - [`MessageFramer`]: message boundaries in the backend→client byte stream
//!   after authentication, without buffering, so the gateway can inject a
//!   notice or an error between two messages;
//! - encoders for the messages the gateway writes to clients itself
//!   (ErrorResponse, NoticeResponse, NegotiateProtocolVersion, BackendKeyData).
//!
//! Everything is re-exported flat from this module; the submodules are split
//! by message family only to keep each file small.
//!
//! Reference: PostgreSQL documentation, chapter "Frontend/Backend Protocol",
//! sections "Message Flow" and "Message Formats".

mod backend;
mod framer;
mod messages;
mod startup;

#[cfg(test)]
mod fixtures;

pub use backend::{decode_backend_message, parse_backend_key_data, BackendMessage, FrameError};
pub use framer::{FeedResult, MessageFramer};
pub use messages::{
    encode_backend_key_data, encode_error_response, encode_negotiate_protocol_version,
    encode_notice_response, ErrorFields, SSL_NOT_SUPPORTED,
};
pub use startup::{
    decode_startup, encode_cancel_request, encode_ssl_request, encode_startup, ProtocolVersion,
    StartupError, StartupMessage, StartupRequest, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET_LEN, SSL_REQUEST_CODE,
};
