//! The SSH identification exchange as jitgate runs it between the two legs
//! (RFC 4253 §4.2), and what a refused SSH client is sent.
//!
//! jitgate reads the client's version line, dials the backend and reads the
//! server's version line (and any lines the server sends before it), all
//! before admission; it forwards nothing to either side until the session
//! is admitted. Bytes that follow a version line in the same read (the
//! peer's first binary packet, KEXINIT) are kept and forwarded after it.
//!
//! What a refused client sees (checked against OpenSSH 9.2): lines of text
//! before a server's version line are shown only with `ssh -v`
//! (`debug1: kex_exchange_identification: banner line 0: ...`), while an
//! SSH_MSG_DISCONNECT sent in the clear after a version line is printed by
//! default: `Received disconnect from HOST port N:1: jitgate: ...`. So a
//! refusal is the reason as text lines, `SSH-2.0-jitgate`, then the
//! reason again as a disconnect message.

use bytes::{Bytes, BytesMut};
use proxy_protocols::ssh::{
    self as codec, DisconnectReason, IdentDecoder, IdentError, IdentLine, Identification, Sender,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::relay::FINISH_BUDGET;
use crate::socket;

/// The software version jitgate names in its own version line.
const SOFTWARE: &str = "jitgate";

/// One side's identification, read.
#[derive(Debug)]
pub struct Ident {
    /// Lines the server sent before its version line (never for a client).
    pub before: Vec<Bytes>,
    /// The version line.
    pub version: Identification,
    /// Bytes read after the version line: the start of the binary packets.
    pub rest: BytesMut,
}

impl Ident {
    /// Everything to forward to the other side, as it was received.
    pub fn wire_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        for l in &self.before {
            out.extend_from_slice(l);
        }
        self.version.encode(&mut out);
        out.extend_from_slice(&self.rest);
        out
    }
}

/// Why an identification could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer broke RFC 4253 §4.2.
    #[error("{0}")]
    Protocol(#[from] IdentError),
    /// The peer closed before its version line.
    #[error("connection closed before the version line")]
    Closed,
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Read `sender`'s identification from `stream`. Bounded by the codec's
/// limits; the caller bounds the time.
pub async fn read_ident(stream: &mut TcpStream, sender: Sender) -> Result<Ident, ReadError> {
    let mut decoder = IdentDecoder::new(sender);
    let mut buf = BytesMut::with_capacity(1024);
    let mut before = Vec::new();
    loop {
        match decoder.decode(&mut buf)? {
            Some(IdentLine::Version(version)) => {
                return Ok(Ident {
                    before,
                    version,
                    rest: buf,
                })
            }
            Some(IdentLine::Other(line)) => before.push(line),
            None => {
                // The codec refuses a line before it outgrows its limit, so
                // the buffer stays within MAX_PRE_VERSION_LINE plus a read.
                buf.reserve(1024);
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(ReadError::Closed);
                }
            }
        }
    }
}

/// Tell a client why it is refused, the SSH way (see the module header),
/// then close its socket without a reset.
pub async fn refuse(
    mut client: TcpStream,
    reason: DisconnectReason,
    text: &str,
    hint: Option<&str>,
) {
    let mut out = BytesMut::new();
    codec::encode_text_line(text, &mut out);
    if let Some(h) = hint {
        codec::encode_text_line(h, &mut out);
    }
    codec::encode_identification(SOFTWARE, &mut out);
    codec::encode_disconnect(reason, text, &mut out);
    let _ = tokio::time::timeout(FINISH_BUDGET, client.write_all(&out)).await;
    socket::close_refused(client).await;
}
