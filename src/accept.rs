//! Accepting connections, including when the process runs out of file
//! descriptors. Used by every resource listener and by the admin API.
//!
//! `accept(2)` fails with `EMFILE` (the process's descriptor limit) or
//! `ENFILE` (the system's) while the pending connection stays in the listen
//! backlog, so retrying at once would spin and the client would wait with
//! no answer. On such a failure jitgate:
//!
//! - closes a spare descriptor it keeps open for this moment, accepts the
//!   pending connection with it, writes the protocol's "too many
//!   connections" answer if one fits in a single non-blocking write, closes
//!   it and reopens the spare: the excess is refused at once;
//! - when that is not possible (another task took the freed descriptor),
//!   waits [`BACKOFF`] before accepting again;
//! - counts each failed accept in `jitgate_limited_total{limit="fds"}` and
//!   logs one warning when a shortage starts and one line when accepting
//!   has worked again for a second since the last failure (with the
//!   count), never a line per connection: descriptors freed one at a time
//!   let single accepts through in the middle of a shortage.
//!
//! Invariants: [`Acceptor::next`] only returns accepted connections, never
//! spins on an error, and is cancel-safe (it can be raced against a stop
//! token: a connection is never accepted and then dropped by cancellation).

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::metrics as m;

/// Pause before accepting again after an error the spare descriptor could
/// not absorb.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// The spare descriptor, shared by every listener (the limit is the
/// process's). `None` while in use or when it could not be reopened.
static SPARE: Mutex<Option<File>> = Mutex::new(None);

fn spare() -> std::sync::MutexGuard<'static, Option<File>> {
    SPARE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open the spare descriptor if it is not open (best effort).
fn restore_spare() {
    let mut s = spare();
    if s.is_none() {
        *s = File::open("/dev/null").ok();
    }
}

/// Whether an accept error means no descriptor (or socket memory) was left.
fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// An error about one connection that is already gone, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// A shortage under way on one listener.
#[derive(Debug)]
struct Shortage {
    since: Instant,
    failed: u64,
    /// The latest failed accept: the shortage is over once accepts have
    /// worked for [`QUIET`] since then (descriptors freed one at a time
    /// make single accepts succeed in the middle of a shortage).
    last_failure: Instant,
}

/// How long accepts must work after the last failure before a shortage is
/// logged as over.
const QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// A listener with the shortage handling of the module header.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    what: String,
    shortage: Option<Shortage>,
}

impl Acceptor {
    /// Wrap `listener`; `what` names it in logs ("resource prod-pg").
    pub fn new(listener: TcpListener, what: impl Into<String>) -> Acceptor {
        restore_spare();
        Acceptor {
            listener,
            what: what.into(),
            shortage: None,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection. `refusal` gives the bytes (possibly none) a
    /// connection refused for lack of descriptors is sent before it is
    /// closed.
    pub async fn next(&mut self, refusal: impl Fn() -> Vec<u8>) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if let Some(s) = self.shortage.take_if(|s| s.last_failure.elapsed() >= QUIET) {
                        tracing::info!(
                            listener = %self.what,
                            failed_accepts = s.failed,
                            lasted = ?s.since.elapsed(),
                            "file descriptors available again: accepting connections"
                        );
                    }
                    return accepted;
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) if is_shortage(&e) => {
                    m::limited(crate::limits::Limit::Fds.label());
                    match &mut self.shortage {
                        Some(s) => {
                            s.failed += 1;
                            s.last_failure = Instant::now();
                        }
                        None => {
                            tracing::warn!(
                                listener = %self.what,
                                error = %e,
                                "out of file descriptors: refusing new connections until some close"
                            );
                            self.shortage = Some(Shortage {
                                since: Instant::now(),
                                failed: 1,
                                last_failure: Instant::now(),
                            });
                        }
                    }
                    if !self.refuse_one(&refusal).await {
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(listener = %self.what, error = %e, "accept failed");
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }

    /// Free the spare descriptor, accept the pending connection with it,
    /// refuse it and take the spare back. False if nothing was refused.
    async fn refuse_one(&mut self, refusal: &impl Fn() -> Vec<u8>) -> bool {
        let Some(f) = spare().take() else {
            return false;
        };
        drop(f);
        // One attempt, without waiting: the connection that failed to be
        // accepted is still in the backlog.
        let listener = &self.listener;
        let got = std::future::poll_fn(|cx| {
            Poll::Ready(match listener.poll_accept(cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            })
        })
        .await;
        let refused = match got {
            Some(Ok((stream, _))) => {
                let bytes = refusal();
                // A fresh socket's send buffer is empty: one non-blocking
                // write of a short message goes through or is skipped.
                if let Ok(mut s) = stream.into_std() {
                    if !bytes.is_empty() {
                        let _ = s.write(&bytes);
                    }
                }
                true
            }
            _ => false,
        };
        restore_spare();
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_shortages_are_told_from_other_errors() {
        assert!(is_shortage(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_shortage(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_shortage(&io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(is_connection_error(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
