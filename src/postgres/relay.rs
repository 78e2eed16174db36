//! The PostgreSQL relay: bytes both ways between an admitted client and its
//! backend, from the backend's first authentication message to the end.
//!
//! Directions:
//! - client → backend is a plain copy: no decoding at all.
//! - backend → client is *framed* (never decoded after authentication): a
//!   [`MessageFramer`] tracks where messages end, so jitgate can inject a
//!   NoticeResponse (expiry warning) or the final FATAL at a message
//!   boundary without ever splitting a message.
//! - During authentication (until the first ReadyForQuery) backend messages
//!   are decoded whole, because BackendKeyData must be replaced by
//!   jitgate's own cancel key.
//!
//! Invariants: one `select!` drives both directions, the enforcement clock
//! and the kill switch, and every branch is a single cancel-safe read or
//! write whose progress lives in [`Relay`], so a slow reader on either side
//! never delays a kill. Reads into a buffer happen only when it is fully
//! written, so memory per session is fixed (two buffers).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use proxy_protocols::postgres as pg;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::ending::{ClientText, EndReason};
use crate::enforce::{Enforcement, Enforcer};
use crate::postgres::cancel::{send_cancel, CancelKeyGuard, CancelKeys, CancelTarget};
use crate::sessions::Session;
use crate::timefmt;

/// Largest backend message accepted whole during authentication (SASL,
/// ParameterStatus and error messages are far smaller).
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// How long the end of a session may spend bringing the client stream to a
/// message boundary, writing the FATAL and cancelling the backend query.
const FINISH_BUDGET: Duration = Duration::from_secs(1);

/// What the relay needs besides the sockets.
pub struct RelayParams {
    /// The session being relayed.
    pub session: Arc<Session>,
    /// The resource's idle timeout.
    pub idle: Option<Duration>,
    /// Expiry warning lead times.
    pub warnings: Vec<Duration>,
    /// Bytes per read, each direction.
    pub buffer_size: usize,
    /// Cancel key map, to replace the backend's key.
    pub cancel_keys: Arc<CancelKeys>,
    /// The backend address, for cancel requests.
    pub backend_addr: String,
    /// Authentication must be done by then.
    pub auth_deadline: tokio::time::Instant,
}

/// Backend → client bytes read but not yet all written, with what is known
/// of message boundaries inside them.
struct Down {
    buf: Vec<u8>,
    len: usize,
    pos: usize,
    first_b: Option<usize>,
    last_b: Option<usize>,
    start_boundary: bool,
    tail_boundary: bool,
}

impl Down {
    fn pending(&self) -> bool {
        self.pos < self.len
    }

    /// Whether everything written so far ends at a message boundary.
    fn at_boundary(&self) -> bool {
        if self.pos == self.len {
            self.tail_boundary
        } else if self.pos == 0 {
            self.start_boundary
        } else {
            self.first_b == Some(self.pos) || self.last_b == Some(self.pos)
        }
    }

    fn next_boundary(&self) -> Option<usize> {
        [self.first_b, self.last_b]
            .into_iter()
            .flatten()
            .find(|&b| b > self.pos)
    }

    /// Take a chunk of raw stream bytes already copied to `buf[..len]`.
    fn loaded(&mut self, len: usize, fed: pg::FeedResult, tail_boundary: bool) {
        self.start_boundary = self.tail_boundary;
        self.len = len;
        self.pos = 0;
        self.first_b = fed.first_boundary;
        self.last_b = fed.last_boundary;
        self.tail_boundary = tail_boundary;
    }

    /// Take whole messages (authentication phase).
    fn load_messages(&mut self, msgs: &[u8]) {
        if self.buf.len() < msgs.len() {
            self.buf.resize(msgs.len(), 0);
        }
        if let Some(dst) = self.buf.get_mut(..msgs.len()) {
            dst.copy_from_slice(msgs);
        }
        self.start_boundary = true;
        self.len = msgs.len();
        self.pos = 0;
        self.first_b = None;
        self.last_b = Some(msgs.len());
        self.tail_boundary = true;
    }
}

enum Phase {
    /// Decoding whole messages until ReadyForQuery.
    Auth,
    /// Framing only.
    Ready,
}

/// Client → backend bytes read but not yet all written.
struct Up {
    buf: Vec<u8>,
    len: usize,
    pos: usize,
}

/// What one step of a direction did.
enum Step {
    /// Bytes moved; the relay goes on.
    Moved,
    /// The client's side closed or failed.
    ClientGone,
    /// The backend's side closed, failed or broke the protocol.
    BackendGone,
}

/// Backend → client state beyond the buffer.
struct DownState {
    down: Down,
    framer: pg::MessageFramer,
    phase: Phase,
    auth_in: BytesMut,
    auth_out: BytesMut,
    inject: Vec<u8>,
    inject_pos: usize,
    cancel_guard: Option<CancelKeyGuard>,
    cancel_target: Option<CancelTarget>,
}

/// One cancel-safe step of the client → backend copy: write what is
/// pending, else read more. State changes only after the I/O completes.
async fn up_step(
    up: &mut Up,
    client: &mut ReadHalf<'_>,
    backend: &mut WriteHalf<'_>,
    session: &Session,
    counter: &metrics::Counter,
) -> Step {
    if up.pos < up.len {
        match backend
            .write(up.buf.get(up.pos..up.len).unwrap_or_default())
            .await
        {
            Ok(0) | Err(_) => Step::BackendGone,
            Ok(n) => {
                up.pos += n;
                Step::Moved
            }
        }
    } else {
        match client.read(&mut up.buf).await {
            Ok(0) | Err(_) => Step::ClientGone,
            Ok(n) => {
                up.len = n;
                up.pos = 0;
                session.touch();
                session.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                counter.increment(n as u64);
                Step::Moved
            }
        }
    }
}

/// One cancel-safe step of the backend → client direction: an injected
/// message at a boundary, pending bytes, or a new read.
async fn down_step(
    st: &mut DownState,
    backend: &mut ReadHalf<'_>,
    client: &mut WriteHalf<'_>,
    p: &RelayParams,
    counter: &metrics::Counter,
) -> Step {
    let injecting = st.inject_pos < st.inject.len();
    if injecting && st.down.at_boundary() {
        return match client
            .write(st.inject.get(st.inject_pos..).unwrap_or_default())
            .await
        {
            Ok(0) | Err(_) => Step::ClientGone,
            Ok(n) => {
                st.inject_pos += n;
                if st.inject_pos >= st.inject.len() {
                    st.inject.clear();
                    st.inject_pos = 0;
                }
                Step::Moved
            }
        };
    }
    if st.down.pending() {
        let end = if injecting {
            st.down.next_boundary().unwrap_or(st.down.len)
        } else {
            st.down.len
        };
        return match client
            .write(st.down.buf.get(st.down.pos..end).unwrap_or_default())
            .await
        {
            Ok(0) | Err(_) => Step::ClientGone,
            Ok(n) => {
                st.down.pos += n;
                Step::Moved
            }
        };
    }
    let n = match read_backend(backend, &mut st.phase, &mut st.down, &mut st.auth_in).await {
        Ok(0) | Err(_) => return Step::BackendGone,
        Ok(n) => n,
    };
    p.session.touch();
    p.session.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
    counter.increment(n as u64);
    match st.phase {
        Phase::Ready => match st
            .framer
            .feed(st.down.buf.get(..st.down.len).unwrap_or_default())
        {
            Ok(fed) => {
                let tail = st.framer.at_boundary();
                let len = st.down.len;
                st.down.loaded(len, fed, tail);
                Step::Moved
            }
            Err(e) => {
                tracing::warn!(session = %p.session.id, error = %e, "backend sent a malformed message");
                Step::BackendGone
            }
        },
        Phase::Auth => {
            match auth_messages(
                &mut st.auth_in,
                &mut st.auth_out,
                p,
                &mut st.cancel_guard,
                &mut st.cancel_target,
            ) {
                Ok(ready) => {
                    st.down.load_messages(&st.auth_out);
                    st.auth_out.clear();
                    if ready {
                        // Bytes after ReadyForQuery are raw stream: the read
                        // path takes them from `auth_in` first.
                        st.phase = Phase::Ready;
                    }
                    Step::Moved
                }
                Err(e) => {
                    tracing::warn!(session = %p.session.id, error = %e, "backend sent a malformed message during authentication");
                    Step::BackendGone
                }
            }
        }
    }
}

/// Relay until the session ends; returns why and when the cause happened.
pub async fn run(
    p: RelayParams,
    mut client: TcpStream,
    mut backend: TcpStream,
) -> (EndReason, Option<std::time::Instant>) {
    let session = p.session.clone();
    let mut enforcer = Enforcer::new(session.clone(), p.idle, &p.warnings);
    let (bytes_up, bytes_down) = crate::metrics::byte_counters(&session.resource);
    let mut up = Up {
        buf: vec![0u8; p.buffer_size],
        len: 0,
        pos: 0,
    };
    let mut st = DownState {
        down: Down {
            buf: vec![0u8; p.buffer_size],
            len: 0,
            pos: 0,
            first_b: None,
            last_b: None,
            start_boundary: true,
            tail_boundary: true,
        },
        framer: pg::MessageFramer::new(),
        phase: Phase::Auth,
        auth_in: BytesMut::with_capacity(1024),
        auth_out: BytesMut::new(),
        inject: Vec::new(),
        inject_pos: 0,
        cancel_guard: None,
        cancel_target: None,
    };
    let auth_timer = tokio::time::sleep_until(p.auth_deadline);
    tokio::pin!(auth_timer);

    let (reason, since) = {
        let (mut client_r, mut client_w) = client.split();
        let (mut backend_r, mut backend_w) = backend.split();
        loop {
            let in_auth = matches!(st.phase, Phase::Auth);
            tokio::select! {
                biased;
                e = enforcer.next() => match e {
                    Enforcement::End { reason, since } => break (reason, Some(since)),
                    Enforcement::Warn { remaining, at } => {
                        if !in_auth {
                            st.inject = warning_notice(&session, remaining, at);
                            st.inject_pos = 0;
                        }
                    }
                },
                _ = &mut auth_timer, if in_auth => break (EndReason::Error, None),
                s = up_step(&mut up, &mut client_r, &mut backend_w, &session, &bytes_up) => match s {
                    Step::Moved => {}
                    Step::ClientGone => break (EndReason::Client, None),
                    Step::BackendGone => break (EndReason::Backend, None),
                },
                s = down_step(&mut st, &mut backend_r, &mut client_w, &p, &bytes_down) => match s {
                    Step::Moved => {}
                    Step::ClientGone => break (EndReason::Client, None),
                    Step::BackendGone => break (EndReason::Backend, None),
                },
            }
        }
    };

    if reason.is_enforced() {
        let text = ClientText {
            reason: &reason,
            resource: &session.resource,
        }
        .to_string();
        let mut fatal = BytesMut::new();
        pg::encode_error_response(
            &pg::ErrorFields {
                severity: "FATAL",
                code: "57P01",
                message: &text,
                detail: None,
                hint: hint_for(&reason),
            },
            &mut fatal,
        );
        let target = st.cancel_target.clone();
        let finish_client = async {
            if drain_to_boundary(&mut client, &mut backend, &mut st).await {
                let _ = client.write_all(&fatal).await;
            }
            let _ = client.shutdown().await;
        };
        let cancel = async {
            if let Some(t) = &target {
                if let Err(e) = send_cancel(t, FINISH_BUDGET).await {
                    tracing::warn!(session = %session.id, error = %e, "could not cancel the backend query");
                }
            }
        };
        let _ = tokio::time::timeout(FINISH_BUDGET, async { tokio::join!(finish_client, cancel) })
            .await;
    } else {
        let _ = tokio::time::timeout(FINISH_BUDGET, client.shutdown()).await;
    }
    drop(st);
    drop(backend);
    drop(client);
    (reason, since)
}

/// Read the next chunk from the backend. In the ready phase the bytes land
/// in `down.buf[..n]` (leftovers from authentication first); during
/// authentication they are appended to `auth_in`.
async fn read_backend(
    backend: &mut ReadHalf<'_>,
    phase: &mut Phase,
    down: &mut Down,
    auth_in: &mut BytesMut,
) -> std::io::Result<usize> {
    match phase {
        Phase::Ready => {
            if !auth_in.is_empty() {
                let n = auth_in.len().min(down.buf.len());
                let chunk = auth_in.split_to(n);
                if let Some(dst) = down.buf.get_mut(..n) {
                    dst.copy_from_slice(&chunk);
                }
                down.len = n;
                return Ok(n);
            }
            let n = backend.read(&mut down.buf).await?;
            down.len = n;
            Ok(n)
        }
        Phase::Auth => {
            if auth_in.len() >= MAX_AUTH_MESSAGE + 5 {
                return Err(std::io::Error::other("authentication message too long"));
            }
            auth_in.reserve(4096);
            backend.read_buf(auth_in).await
        }
    }
}

/// Move whole authentication-phase messages from `input` to `out`,
/// replacing BackendKeyData. Returns true once ReadyForQuery was moved.
fn auth_messages(
    input: &mut BytesMut,
    out: &mut BytesMut,
    p: &RelayParams,
    guard: &mut Option<CancelKeyGuard>,
    target: &mut Option<CancelTarget>,
) -> Result<bool, pg::FrameError> {
    while let Some(msg) = pg::decode_backend_message(input, MAX_AUTH_MESSAGE)? {
        if msg.tag == b'K' {
            if let Some((process_id, secret_key)) = pg::parse_backend_key_data(&msg.body) {
                let t = CancelTarget {
                    backend: p.backend_addr.clone(),
                    process_id,
                    secret_key,
                };
                let g = p.cancel_keys.issue(t.clone());
                pg::encode_backend_key_data(g.process_id, g.secret_key, out);
                *guard = Some(g);
                *target = Some(t);
                continue;
            }
        }
        out.extend_from_slice(&[msg.tag]);
        let len = u32::try_from(msg.body.len() + 4).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&msg.body);
        if msg.tag == b'Z' {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Bring the client stream to a message boundary: write what is pending up
/// to the next boundary, reading more from the backend if the current
/// message is not complete yet. False if that is not possible.
async fn drain_to_boundary(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    st: &mut DownState,
) -> bool {
    let down = &mut st.down;
    loop {
        if down.at_boundary() {
            return true;
        }
        if down.pending() {
            let end = down.next_boundary().unwrap_or(down.len);
            let Some(slice) = down.buf.get(down.pos..end) else {
                return false;
            };
            match client.write(slice).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => down.pos += n,
            }
            continue;
        }
        if matches!(st.phase, Phase::Auth) {
            // Whole messages only in this phase: always at a boundary.
            return true;
        }
        match backend.read(&mut down.buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => match st.framer.feed(down.buf.get(..n).unwrap_or_default()) {
                Ok(fed) => {
                    let tail = st.framer.at_boundary();
                    down.loaded(n, fed, tail);
                }
                Err(_) => return false,
            },
        }
    }
}

fn hint_for(reason: &EndReason) -> Option<&'static str> {
    match reason {
        EndReason::Expired | EndReason::Revoked { .. } | EndReason::MaxSession(_) => {
            Some("request access again with: jitgate request RESOURCE --for DURATION --reason TEXT")
        }
        _ => None,
    }
}

fn warning_notice(session: &Session, remaining: Duration, at: SystemTime) -> Vec<u8> {
    let secs = remaining.as_secs_f64().round() as u64;
    let left = crate::config::HumanDuration(Duration::from_secs(secs.max(1)));
    let stamp = timefmt::rfc3339_seconds(at);
    let clock = stamp.split_once('T').map_or(stamp.as_str(), |(_, t)| t);
    let text = format!(
        "jitgate: access to {} ends in {left} (at {clock}); extend with: jitgate extend {} --by 30m",
        session.resource, session.grant.id
    );
    let mut out = BytesMut::new();
    pg::encode_notice_response(
        &pg::ErrorFields {
            severity: "WARNING",
            code: "01000",
            message: &text,
            detail: None,
            hint: None,
        },
        &mut out,
    );
    out.to_vec()
}
