//! The relay: bytes both ways between an admitted client and its backend,
//! until the session ends, for every protocol.
//!
//! What a protocol knows is behind the [`Wire`] trait: how the backend →
//! client stream is framed (so jitgate can inject a warning or the final
//! error at a message boundary without splitting a message), what the
//! handshake's remaining messages need (PostgreSQL replaces BackendKeyData),
//! what to check in client bytes (MySQL's COM_CHANGE_USER), what to say when
//! access ends and what to do to the backend then (cancel a running query).
//! Opaque streams (SSH, TCP) use [`Opaque`]: no boundaries, no messages.
//!
//! Half-close: for a wire whose [`Wire::half_close`] is true (opaque
//! streams), an end of stream from one side is passed on as a shutdown of
//! the other socket's write side, and the other direction keeps flowing
//! until it ends too; the session ends when both have (or at any enforced
//! end, reset or write error). For a database protocol, one side closing
//! ends the session at once: a PostgreSQL client that closes is gone.
//!
//! A backend that fails mid-session (reset, write error, bytes that break
//! the wire's framing) ends the session with [`EndReason::Backend`]; the
//! complete messages it sent are delivered and then the wire's farewell,
//! only if the client stream is then at a boundary (never inside a
//! message). A backend that stalls is not timed out per read: the idle
//! timeout and every enforced end (expiry, revoke, kill) still end the
//! session, since the kill switch is a branch of the same `select!`.
//!
//! Invariants: one `select!` drives both directions, the enforcement clock
//! and the kill switch. A direction's branch runs cancel-safe reads and
//! writes whose progress lives in the relay's state, one after another
//! until it would block or the clock's waker fires (then the `select!`
//! polls the clock before anything more is relayed), so a slow reader on
//! either side never delays a kill, and a fast stream delays it by at most
//! one step. A buffer is read into only when it has
//! been fully written, so memory per session is bounded (two buffers). On a
//! plaintext leg the buffer is taken from [`crate::bufpool`] only for a
//! read and handed back when the socket has nothing more to read, so an
//! idle session holds no relay buffer at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::bufpool;

use crate::conn::{Conn, ConnRead, ConnWrite};

use crate::ending::EndReason;
use crate::enforce::{Enforcement, Enforcer};
use crate::sessions::Session;

/// How long the end of a session may spend bringing the client stream to a
/// message boundary, writing the farewell and running the end action.
pub const FINISH_BUDGET: Duration = Duration::from_secs(1);

/// Longest an enforced end's teardown (closing the sockets, after the
/// client has been told) waits behind the other sessions ended in the same
/// wave ([`crate::workers::after_others`]).
pub const CLOSE_DEFER: Duration = Duration::from_millis(250);

/// Largest amount of handshake bytes held while a whole message arrives.
const MAX_HANDSHAKE_BUFFER: usize = 256 * 1024;

/// Where messages end inside a chunk of backend bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Boundaries {
    /// Offset just after the first message that ends in the chunk.
    pub first: Option<usize>,
    /// Offset just after the last message that ends in the chunk.
    pub last: Option<usize>,
}

/// What to do with client bytes, as a [`Wire`] judges them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpVerdict {
    /// Forward everything read so far.
    Pass,
    /// Keep the bytes and read more before deciding (a message is split).
    Hold,
    /// End the session.
    End(EndReason),
}

/// A future run at an enforced end (e.g. cancelling the backend query).
pub type EndAction = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A protocol error from the backend's side, as a wire reports it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// What the relay needs to know of a protocol.
pub trait Wire: Send {
    /// True while backend bytes must go through [`Wire::handshake_down`]
    /// as whole messages.
    fn in_handshake(&self) -> bool {
        false
    }

    /// Move whole handshake messages from `input` to `out` (possibly
    /// rewritten); leave a partial message in `input`.
    fn handshake_down(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        out.extend_from_slice(input);
        input.clear();
        Ok(())
    }

    /// Track message boundaries in a chunk of backend → client bytes.
    fn feed_down(&mut self, chunk: &[u8]) -> Result<Boundaries, WireError>;

    /// Whether all bytes fed so far end at a message boundary.
    fn down_at_boundary(&self) -> bool;

    /// Judge client → backend bytes: `pending` is everything read and not
    /// yet forwarded, `new` its tail read just now.
    fn inspect_up(&mut self, _pending: &[u8], _new: usize) -> UpVerdict {
        UpVerdict::Pass
    }

    /// Rewrite, in place and at the same length, the client → backend
    /// bytes just read (`new`), after [`Wire::inspect_up`] passed or held
    /// them. MySQL renumbers sequence ids during authentication when one
    /// leg alone uses TLS. Default: unchanged.
    fn rewrite_up(&mut self, _new: &mut [u8]) {}

    /// The message that warns the user that access ends soon, if the
    /// protocol has one.
    fn warning(
        &mut self,
        _session: &Session,
        _remaining: Duration,
        _at: SystemTime,
    ) -> Option<Vec<u8>> {
        None
    }

    /// The message that tells the client why the session ended, if the
    /// protocol has one: on an enforced end, and with
    /// [`EndReason::Backend`] when the backend failed (reset, write error,
    /// protocol violation). The relay asks once to learn whether there is
    /// one, then again once the client stream is at a boundary, and writes
    /// the second answer: it may depend on what the client has received
    /// (MySQL sequence ids), so it must not change the wire's state.
    fn farewell(&mut self, _session: &Session, _reason: &EndReason) -> Option<Vec<u8>> {
        None
    }

    /// Work to run on an enforced end, concurrently with the farewell.
    fn end_action(&mut self) -> Option<EndAction> {
        None
    }

    /// Whether the client has said goodbye in the protocol (PostgreSQL's
    /// Terminate, MySQL's COM_QUIT). The backend then closes because the
    /// client asked it to, and that close may reach the relay before the
    /// client's own: the session still ends for reason `client`.
    fn client_ended(&self) -> bool {
        false
    }

    /// Whether an end of stream from one side only half-closes the session
    /// (see the module header). Default: it ends the session.
    fn half_close(&self) -> bool {
        false
    }
}

/// An opaque stream (SSH, TCP): no boundaries, nothing injected.
#[derive(Debug, Default)]
pub struct Opaque;

impl Wire for Opaque {
    fn feed_down(&mut self, _chunk: &[u8]) -> Result<Boundaries, WireError> {
        Ok(Boundaries::default())
    }
    fn down_at_boundary(&self) -> bool {
        false
    }
    fn half_close(&self) -> bool {
        true
    }
}

/// What the relay needs besides the sockets.
pub struct RelayParams {
    /// The session being relayed.
    pub session: Arc<Session>,
    /// The resource's idle timeout.
    pub idle: Option<Duration>,
    /// Expiry warning lead times (ignored by wires without warnings).
    pub warnings: Vec<Duration>,
    /// Bytes per read, each direction.
    pub buffer_size: usize,
    /// The handshake must be done by then.
    pub handshake_deadline: Option<tokio::time::Instant>,
}

/// Backend → client bytes read but not yet all written, with what is known
/// of message boundaries inside them.
struct Down {
    /// Empty while idle on a plaintext leg (see [`read_lazy`]).
    buf: Vec<u8>,
    /// The size `buf` has when next taken (see [`read_lazy`]).
    size: usize,
    /// `relay_buffer_size`: what `size` returns to when idle.
    base: usize,
    len: usize,
    pos: usize,
    b: Boundaries,
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
            self.b.first == Some(self.pos) || self.b.last == Some(self.pos)
        }
    }

    fn next_boundary(&self) -> Option<usize> {
        [self.b.first, self.b.last]
            .into_iter()
            .flatten()
            .find(|&b| b > self.pos)
    }

    /// Take a chunk of raw stream bytes already in `buf[..len]`.
    fn loaded(&mut self, len: usize, b: Boundaries, tail_boundary: bool) {
        self.start_boundary = self.tail_boundary;
        self.len = len;
        self.pos = 0;
        self.b = b;
        self.tail_boundary = tail_boundary;
    }

    /// Drop the chunk just read (the wire refused it): the client has
    /// everything before it, which ended at a boundary or not.
    fn discard(&mut self) {
        let tail = self.tail_boundary;
        self.loaded(0, Boundaries::default(), tail);
    }

    /// Take whole handshake messages.
    fn load_messages(&mut self, msgs: &[u8]) {
        if self.buf.len() < msgs.len() {
            self.buf.resize(msgs.len().max(self.size), 0);
        }
        if let Some(dst) = self.buf.get_mut(..msgs.len()) {
            dst.copy_from_slice(msgs);
        }
        self.start_boundary = true;
        self.len = msgs.len();
        self.pos = 0;
        self.b = Boundaries {
            first: None,
            last: Some(msgs.len()),
        };
        self.tail_boundary = true;
    }
}

/// Client → backend bytes read but not yet all written.
struct Up {
    /// Empty while idle on a plaintext leg (see [`read_lazy`]).
    buf: Vec<u8>,
    /// The size `buf` has when next taken (see [`read_lazy`]).
    size: usize,
    /// `relay_buffer_size`: what `size` returns to when idle.
    base: usize,
    len: usize,
    pos: usize,
    /// Bytes in `buf[..len]` the wire has not passed yet.
    held: bool,
    /// Written since the last flush (TLS buffers records until flushed).
    dirty: bool,
}

/// What one step of a direction did.
enum Step {
    Moved,
    /// The client sent end of stream (FIN), with everything it sent written.
    ClientEof,
    /// The backend sent end of stream (FIN), with everything it sent written.
    BackendEof,
    /// The client socket failed (reset, write error).
    ClientGone,
    /// The backend socket failed (reset, write error, protocol error).
    BackendGone,
    End(EndReason),
}

/// Backend → client state beyond the buffer.
struct DownState {
    down: Down,
    /// Written to the client since the last flush.
    dirty: bool,
    hs_in: BytesMut,
    hs_out: BytesMut,
    inject: Vec<u8>,
    inject_pos: usize,
}

async fn up_step<W: Wire>(
    up: &mut Up,
    wire: &std::sync::Mutex<&mut W>,
    client: &mut ConnRead<'_>,
    backend: &mut ConnWrite<'_>,
    session: &Session,
    counter: &metrics::Counter,
) -> Step {
    if !up.held && up.pos < up.len {
        return match backend
            .write(up.buf.get(up.pos..up.len).unwrap_or_default())
            .await
        {
            Ok(0) | Err(_) => Step::BackendGone,
            Ok(n) => {
                up.pos += n;
                // Plain TCP has nothing to flush: skip the extra step.
                up.dirty = backend.is_tls();
                Step::Moved
            }
        };
    }
    if up.dirty {
        // Everything is written: push what TLS may still hold.
        return match backend.flush().await {
            Ok(()) => {
                up.dirty = false;
                Step::Moved
            }
            Err(_) => Step::BackendGone,
        };
    }
    if !up.held {
        up.len = 0;
        up.pos = 0;
    } else if up.len >= up.buf.len() {
        // The wire held a message larger than the buffer.
        return Step::End(EndReason::Error);
    }
    let n = match read_lazy(client, &mut up.buf, up.len, &mut up.size, up.base).await {
        Ok(0) => return Step::ClientEof,
        Err(_) => return Step::ClientGone,
        Ok(n) => n,
    };
    up.len += n;
    session.touch();
    session.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
    counter.increment(n as u64);
    let verdict = {
        let mut w = wire.lock().unwrap_or_else(|p| p.into_inner());
        let v = w.inspect_up(up.buf.get(..up.len).unwrap_or_default(), n);
        if !matches!(v, UpVerdict::End(_)) {
            if let Some(new) = up.buf.get_mut(up.len.saturating_sub(n)..up.len) {
                w.rewrite_up(new);
            }
        }
        v
    };
    match verdict {
        UpVerdict::Pass => {
            up.held = false;
            Step::Moved
        }
        UpVerdict::Hold => {
            up.held = true;
            Step::Moved
        }
        UpVerdict::End(r) => Step::End(r),
    }
}

async fn down_step<W: Wire>(
    st: &mut DownState,
    wire: &std::sync::Mutex<&mut W>,
    backend: &mut ConnRead<'_>,
    client: &mut ConnWrite<'_>,
    session: &Session,
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
                st.dirty = client.is_tls();
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
                st.dirty = client.is_tls();
                Step::Moved
            }
        };
    }
    if st.dirty {
        return match client.flush().await {
            Ok(()) => {
                st.dirty = false;
                Step::Moved
            }
            Err(_) => Step::ClientGone,
        };
    }
    let in_handshake = wire
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .in_handshake();
    let n = if in_handshake {
        if st.hs_in.len() >= MAX_HANDSHAKE_BUFFER {
            tracing::warn!(session = %session.id, "backend handshake message too long");
            return Step::BackendGone;
        }
        st.hs_in.reserve(4096);
        match backend.read_buf(&mut st.hs_in).await {
            Ok(0) | Err(_) => return Step::BackendGone,
            Ok(n) => n,
        }
    } else if !st.hs_in.is_empty() {
        // Bytes that followed the end of the handshake in the same read.
        if st.down.buf.is_empty() {
            st.down.buf = bufpool::take(st.down.size);
        }
        let n = st.hs_in.len().min(st.down.buf.len());
        let chunk = st.hs_in.split_to(n);
        if let Some(dst) = st.down.buf.get_mut(..n) {
            dst.copy_from_slice(&chunk);
        }
        st.down.len = n;
        0
    } else {
        if st.hs_in.capacity() > 0 || st.hs_out.capacity() > 0 {
            // The handshake is over: its buffers are not needed again.
            st.hs_in = BytesMut::new();
            st.hs_out = BytesMut::new();
        }
        match read_lazy(
            backend,
            &mut st.down.buf,
            0,
            &mut st.down.size,
            st.down.base,
        )
        .await
        {
            Ok(0) => return Step::BackendEof,
            Err(_) => return Step::BackendGone,
            Ok(n) => {
                st.down.len = n;
                n
            }
        }
    };
    session.touch();
    session.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
    counter.increment(n as u64);
    let mut w = wire.lock().unwrap_or_else(|p| p.into_inner());
    if in_handshake {
        if let Err(e) = w.handshake_down(&mut st.hs_in, &mut st.hs_out) {
            tracing::warn!(session = %session.id, error = %e, "backend broke the protocol during the handshake");
            return Step::BackendGone;
        }
        st.down.load_messages(&st.hs_out);
        st.hs_out.clear();
        return Step::Moved;
    }
    match w.feed_down(st.down.buf.get(..st.down.len).unwrap_or_default()) {
        Ok(b) => {
            let tail = w.down_at_boundary();
            let len = st.down.len;
            st.down.loaded(len, b, tail);
            Step::Moved
        }
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "backend broke the protocol");
            // None of these bytes reach the client.
            st.down.discard();
            Step::BackendGone
        }
    }
}

/// Polls a future only when one of its own wakers has fired.
///
/// The relay's task wakes for every chunk; its enforcement clock (kill
/// switch, deadline timer, extension notice) wakes it a handful of times in
/// a session's life. Without the gate every chunk would poll the clock's
/// three futures too (each takes a lock); with it a chunk costs a
/// `will_wake` check and one atomic swap.
struct Gate {
    shared: Arc<GateWaker>,
    /// The gate's waker, handed to the inner future.
    waker: std::task::Waker,
    /// The task waker last stored in `shared`.
    last: Option<std::task::Waker>,
}

struct GateWaker {
    woken: std::sync::atomic::AtomicBool,
    task: std::sync::Mutex<Option<std::task::Waker>>,
    /// The inbox of the worker the task runs on: a kill or a grant's end
    /// fires from the main runtime, for thousands of sessions at once.
    inbox: Option<Arc<crate::workers::Inbox>>,
}

impl GateWaker {
    /// Whether the gated future's waker fired since it was last polled.
    fn fired(&self) -> bool {
        self.woken.load(Ordering::Relaxed)
    }
}

impl std::task::Wake for GateWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before waking the task: the gate clears it before polling,
        // so a wake during that poll is never lost.
        self.woken.store(true, Ordering::SeqCst);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        match (task.as_ref(), &self.inbox) {
            (Some(w), Some(inbox)) => inbox.wake(w),
            (Some(w), None) => w.wake_by_ref(),
            (None, _) => {}
        }
    }
}

impl Gate {
    fn new() -> Gate {
        let shared = Arc::new(GateWaker {
            woken: std::sync::atomic::AtomicBool::new(true),
            task: std::sync::Mutex::new(None),
            inbox: crate::workers::inbox(),
        });
        Gate {
            waker: std::task::Waker::from(shared.clone()),
            shared,
            last: None,
        }
    }

    /// Drive `fut` through the gate. A new future is always polled once
    /// (to register its wakers), then only after one of them fired.
    async fn run<F: Future>(&mut self, fut: F) -> F::Output {
        self.shared.woken.store(true, Ordering::SeqCst);
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if !self.last.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *self.shared.task.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(cx.waker().clone());
                self.last = Some(cx.waker().clone());
            }
            if !self.shared.woken.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
            fut.as_mut()
                .poll(&mut std::task::Context::from_waker(&self.waker))
        })
        .await
    }
}

/// Why the session ends after a step that ended a direction (anything but
/// `Moved`, and an end of stream that half-close passes on), when the cause
/// happened if jitgate ended it, and whether the backend failed (rather
/// than closing in order).
fn session_end<W: Wire>(
    s: Step,
    wire: &std::sync::Mutex<&mut W>,
) -> (EndReason, Option<std::time::Instant>, bool) {
    match s {
        // `Moved` never gets here (the callers match it first); it sits in
        // this arm only to keep the match exhaustive without a panic.
        Step::Moved | Step::ClientEof | Step::ClientGone => (EndReason::Client, None, false),
        Step::BackendEof | Step::BackendGone if client_ended(wire) => {
            (EndReason::Client, None, false)
        }
        Step::BackendEof => (EndReason::Backend, None, false),
        Step::BackendGone => (EndReason::Backend, None, true),
        Step::End(r) => (r, Some(std::time::Instant::now()), false),
    }
}

/// After one step of a direction: whether it goes back to the select loop
/// (the step did not move bytes, the handshake is under way, or the
/// enforcement clock's waker fired) rather than step again. A step that
/// moved bytes is also reported to the worker's busy poller.
fn back_to_select(s: &Step, in_handshake: bool, clock: &GateWaker) -> bool {
    let moved = matches!(s, Step::Moved);
    if moved {
        crate::workers::moved();
    }
    in_handshake || !moved || clock.fired()
}

/// Whether the client said goodbye (see [`Wire::client_ended`]).
fn client_ended<W: Wire>(wire: &std::sync::Mutex<&mut W>) -> bool {
    wire.lock()
        .unwrap_or_else(|p| p.into_inner())
        .client_ended()
}

/// Largest a relay buffer grows to while a direction streams (unless
/// `relay_buffer_size` is larger still).
pub const GROWN_MAX: usize = 64 * 1024;

/// Read into `buf[at..]`, taking `buf` from the pool if it is empty.
///
/// Idle: on a plaintext leg with nothing held (`at == 0`), a read that would
/// block hands the buffer back before waiting (tokio's read does no system
/// call while the socket is known not to be readable), so an idle session
/// holds no buffer, and `size` returns to `base`.
///
/// Streaming: a read that fills the whole buffer means more was waiting, so
/// the next buffer is twice as large, up to [`GROWN_MAX`]: bulk transfers
/// take fewer, larger reads (and fewer trips through epoll) while
/// request/response traffic keeps small buffers. The larger buffer is
/// taken once the current one has been written out.
///
/// Cancel-safe: `buf` is either empty or a whole buffer at every await.
async fn read_lazy(
    r: &mut ConnRead<'_>,
    buf: &mut Vec<u8>,
    at: usize,
    size: &mut usize,
    base: usize,
) -> std::io::Result<usize> {
    let lazy = at == 0 && r.is_plain();
    std::future::poll_fn(|cx| {
        if buf.is_empty() || (at == 0 && buf.len() < *size) {
            bufpool::give(std::mem::take(buf));
            *buf = bufpool::take(*size);
        }
        let Some(space) = buf.get_mut(at..) else {
            return Poll::Ready(Err(std::io::ErrorKind::InvalidInput.into()));
        };
        let room = space.len();
        let mut rb = ReadBuf::new(space);
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if at == 0 && n == room {
                    *size = (*size * 2).min(GROWN_MAX.max(base));
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if lazy {
                    bufpool::give(std::mem::take(buf));
                    *size = base;
                }
                Poll::Pending
            }
        }
    })
    .await
}

/// Relay until the session ends; returns why and when the cause happened.
/// On an enforced end the client is told why at a message boundary (where
/// the wire has a farewell), the wire's end action runs and the client's
/// stream is ended, all within [`FINISH_BUDGET`]; both sockets are closed
/// then, or within [`CLOSE_DEFER`] more when many sessions on this worker
/// ended at once (the others' clients are told first). When the backend failed
/// (reset, write error, protocol violation) the client is told too, if the
/// messages already received leave it at a boundary; an orderly close by
/// the backend (end of stream) is passed on as a close, since a server that
/// closes in order has said why itself (PostgreSQL sends its own FATAL).
pub async fn run<W: Wire>(
    p: RelayParams,
    mut wire: W,
    client: impl Into<Conn>,
    backend: impl Into<Conn>,
) -> (EndReason, Option<std::time::Instant>) {
    let mut client: Conn = client.into();
    let mut backend: Conn = backend.into();
    let session = p.session.clone();
    let mut enforcer = Enforcer::new(session.clone(), p.idle, &p.warnings);
    let mut gate = Gate::new();
    // The directions stop at the next step once the clock's waker fired.
    let clock = gate.shared.clone();
    let (bytes_up, bytes_down) = crate::metrics::byte_counters(&session.resource);
    let mut up = Up {
        buf: Vec::new(),
        size: p.buffer_size,
        base: p.buffer_size,
        len: 0,
        pos: 0,
        held: false,
        dirty: false,
    };
    let mut st = DownState {
        down: Down {
            buf: Vec::new(),
            size: p.buffer_size,
            base: p.buffer_size,
            len: 0,
            pos: 0,
            b: Boundaries::default(),
            start_boundary: true,
            tail_boundary: true,
        },
        dirty: false,
        hs_in: BytesMut::new(),
        hs_out: BytesMut::new(),
        inject: Vec::new(),
        inject_pos: 0,
    };
    let handshake_timer = tokio::time::sleep_until(
        p.handshake_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(handshake_timer);

    let half_close = wire.half_close();
    // The backend failed (rather than closing in order): the client is
    // told, where its protocol and the stream position allow.
    let mut backend_failed = false;
    let (reason, since) = {
        // Both directions consult the wire; they never hold the lock
        // across an await, so it is never contended for long.
        let wire_ref = std::sync::Mutex::new(&mut wire);
        let (mut client_r, mut client_w) = client.split();
        let (mut backend_r, mut backend_w) = backend.split();
        // With half-close, a direction whose source sent end of stream
        // stops, and the first end of stream names the session's end.
        let mut up_open = true;
        let mut down_open = true;
        let mut first_eof = None;
        loop {
            let in_handshake = wire_ref
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .in_handshake();
            tokio::select! {
                biased;
                e = gate.run(enforcer.next()) => match e {
                    Enforcement::End { reason, since } => break (reason, Some(since)),
                    Enforcement::Warn { remaining, at } => {
                        if !in_handshake {
                            let msg = wire_ref
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .warning(&session, remaining, at);
                            if let Some(msg) = msg {
                                st.inject = msg;
                                st.inject_pos = 0;
                            }
                        }
                    }
                },
                _ = &mut handshake_timer, if in_handshake && p.handshake_deadline.is_some() => {
                    break (EndReason::Error, None);
                }
                s = async {
                    // Past the handshake a direction keeps going (read, then
                    // write at once) until it would block, without a trip
                    // round this loop per step; during the handshake each
                    // step comes back here, so the timer branch sees its end.
                    loop {
                        let s = up_step(&mut up, &wire_ref, &mut client_r, &mut backend_w, &session, &bytes_up).await;
                        if back_to_select(&s, in_handshake, &clock) {
                            break s;
                        }
                    }
                }, if up_open => match s {
                    Step::Moved => {}
                    Step::ClientEof if half_close => {
                        // Pass the end of stream on; the backend may still answer.
                        let _ = backend_w.shutdown().await;
                        up_open = false;
                        let first = first_eof.get_or_insert(EndReason::Client).clone();
                        if !down_open {
                            break (first, None);
                        }
                    }
                    ended => {
                        let (reason, since, failed) = session_end(ended, &wire_ref);
                        backend_failed |= failed;
                        break (reason, since);
                    }
                },
                s = async {
                    loop {
                        let s = down_step(&mut st, &wire_ref, &mut backend_r, &mut client_w, &session, &bytes_down).await;
                        if back_to_select(&s, in_handshake, &clock) {
                            break s;
                        }
                    }
                }, if down_open => match s {
                    Step::Moved => {}
                    Step::BackendEof if half_close => {
                        let _ = client_w.shutdown().await;
                        down_open = false;
                        let first = first_eof.get_or_insert(EndReason::Backend).clone();
                        if !up_open {
                            break (first, None);
                        }
                    }
                    ended => {
                        let (reason, since, failed) = session_end(ended, &wire_ref);
                        backend_failed |= failed;
                        break (reason, since);
                    }
                },
            }
        }
    };

    if reason.is_enforced() {
        let has_farewell = wire.farewell(&session, &reason).is_some();
        let action = wire.end_action();
        let finish_client = async {
            if has_farewell
                && drain_to_boundary(&mut client, Some(&mut backend), &mut st.down, &mut wire).await
            {
                // Built after the drain: its bytes may depend on what the
                // client has received by now (MySQL sequence ids).
                if let Some(msg) = wire.farewell(&session, &reason) {
                    let _ = client.write_all(&msg).await;
                    let _ = client.flush().await;
                }
            }
            let _ = client.shutdown().await;
        };
        let run_action = async {
            if let Some(a) = action {
                a.await;
            }
        };
        let _ = tokio::time::timeout(FINISH_BUDGET, async {
            tokio::join!(finish_client, run_action)
        })
        .await;
    } else if backend_failed && wire.farewell(&session, &reason).is_some() {
        // The backend is gone: deliver the complete messages it sent, then
        // the farewell, only if that leaves the client at a boundary (a
        // message is never split, nothing more is read from the backend).
        let finish_client = async {
            if drain_to_boundary(&mut client, None, &mut st.down, &mut wire).await {
                if let Some(msg) = wire.farewell(&session, &reason) {
                    let _ = client.write_all(&msg).await;
                    let _ = client.flush().await;
                }
            }
            let _ = client.shutdown().await;
        };
        let _ = tokio::time::timeout(FINISH_BUDGET, finish_client).await;
    } else {
        let _ = tokio::time::timeout(FINISH_BUDGET, client.shutdown()).await;
    }
    if reason.is_enforced() {
        // The client has been told and its stream ended. When a revoke
        // woke many sessions on this worker at once, the teardown (closing
        // both sockets, which sends the backend its FIN; then the caller's
        // audit record) waits behind the others' farewells, at most
        // CLOSE_DEFER; a lone end is torn down at once.
        crate::workers::after_others(CLOSE_DEFER).await;
    }
    drop(backend);
    drop(client);
    bufpool::give(up.buf);
    bufpool::give(st.down.buf);
    (reason, since)
}

/// Bring the client stream to a message boundary: write what is pending up
/// to the *last* boundary of the chunk read (so the client has received
/// every message the wire has seen complete), reading more from the backend
/// if the chunk ends inside a message and there is a `backend` to read.
/// False if that is not possible.
async fn drain_to_boundary<W: Wire>(
    client: &mut Conn,
    mut backend: Option<&mut Conn>,
    down: &mut Down,
    wire: &mut W,
) -> bool {
    loop {
        let target = if down.tail_boundary {
            Some(down.len)
        } else {
            down.b.last.filter(|&l| l >= down.pos)
        };
        let end = match target {
            Some(t) if t > down.pos => t,
            Some(_) => return true,
            // Nothing complete ahead and already at a boundary (the chunk
            // starts a message that has not ended yet).
            None if down.at_boundary() => return true,
            // The message under way cannot be finished.
            None if backend.is_none() => return false,
            None if down.pending() => down.len,
            None => {
                if wire.in_handshake() {
                    // Whole messages only in this phase: always at a boundary.
                    return true;
                }
                let Some(backend) = backend.as_deref_mut() else {
                    return false;
                };
                if down.buf.is_empty() {
                    down.buf = bufpool::take(down.size);
                }
                match backend.read(&mut down.buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => match wire.feed_down(down.buf.get(..n).unwrap_or_default()) {
                        Ok(b) => {
                            let tail = wire.down_at_boundary();
                            down.loaded(n, b, tail);
                        }
                        Err(_) => return false,
                    },
                }
                continue;
            }
        };
        let Some(slice) = down.buf.get(down.pos..end) else {
            return false;
        };
        match client.write(slice).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => down.pos += n,
        }
    }
}

#[cfg(test)]
mod gate {
    use super::Gate;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    /// Counts its polls; ready once `open` is notified.
    async fn clock(polls: Arc<AtomicUsize>, open: Arc<tokio::sync::Notify>) -> &'static str {
        let mut notified = std::pin::pin!(open.notified());
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            notified.as_mut().poll(cx).map(|()| "fired")
        })
        .await
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_only_when_its_own_waker_fires() {
        let polls = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(tokio::sync::Notify::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut gate = Gate::new();
        let mut gated = std::pin::pin!(gate.run(clock(polls.clone(), open.clone())));
        let mut others = 0;
        // The task wakes 50 times for something else (as for each chunk):
        // the inner future is polled once, to register its waker.
        for _ in 0..50 {
            tx.send(()).unwrap();
            let r = std::future::poll_fn(|cx| {
                if let Poll::Ready(v) = gated.as_mut().poll(cx) {
                    return Poll::Ready(Some(v));
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(_) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            assert!(r.is_none());
            others += 1;
        }
        assert_eq!(others, 50);
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own waker fires (from another thread): it is polled and ends.
        let o = open.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            o.notify_one();
        });
        let v = tokio::time::timeout(Duration::from_secs(5), gated.as_mut())
            .await
            .expect("the gate passes the inner wake on");
        assert_eq!(v, "fired");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
