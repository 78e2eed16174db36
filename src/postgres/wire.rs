//! What the relay needs to know of PostgreSQL ([`Wire`] for the backend
//! protocol 3.0).
//!
//! - Until the first ReadyForQuery the backend's messages are decoded whole,
//!   because BackendKeyData must be replaced by jitgate's own cancel key.
//! - After it, the backend → client stream is only *framed* (a
//!   [`pg::MessageFramer`]), never decoded, so a NoticeResponse (expiry
//!   warning) or the final FATAL can be placed at a message boundary.
//! - Client → backend bytes are not looked at.
//! - On an enforced end, a CancelRequest with the backend's key stops a
//!   running query before the backend socket is closed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use proxy_protocols::postgres as pg;

use crate::ending::{ClientText, EndReason};
use crate::postgres::cancel::{send_cancel, CancelKeyGuard, CancelKeys, CancelTarget};
use crate::relay::{Boundaries, EndAction, Wire, WireError, FINISH_BUDGET};
use crate::sessions::Session;
use crate::timefmt;

/// Largest backend message accepted whole during authentication (SASL,
/// ParameterStatus and error messages are far smaller).
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// The Terminate message (libpq sends it alone, just before it closes).
const TERMINATE: &[u8] = b"X\0\0\0\x04";

/// PostgreSQL's [`Wire`].
pub struct PgWire {
    ready: bool,
    framer: pg::MessageFramer,
    cancel_keys: Arc<CancelKeys>,
    backend_addr: String,
    cancel_guard: Option<CancelKeyGuard>,
    cancel_target: Option<CancelTarget>,
    /// The client has sent bytes since the last ReadyForQuery: a statement
    /// may be running (pipelined statements sent before a ReadyForQuery
    /// arrives can be missed; the cost is a statement that runs to its end).
    busy: bool,
    /// A CancelRequest was already sent.
    cancelled: bool,
    /// The client sent Terminate.
    terminated: bool,
}

impl PgWire {
    /// A wire for one session whose backend is `backend_addr`.
    pub fn new(cancel_keys: Arc<CancelKeys>, backend_addr: String) -> Self {
        PgWire {
            ready: false,
            framer: pg::MessageFramer::new(),
            cancel_keys,
            backend_addr,
            cancel_guard: None,
            cancel_target: None,
            busy: false,
            terminated: false,
            cancelled: false,
        }
    }
}

impl Wire for PgWire {
    fn in_handshake(&self) -> bool {
        !self.ready
    }

    fn handshake_down(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        while !self.ready {
            let Some(msg) = pg::decode_backend_message(input, MAX_AUTH_MESSAGE)
                .map_err(|e| WireError(e.to_string()))?
            else {
                break;
            };
            if msg.tag == b'K' {
                if let Some((process_id, secret_key)) = pg::parse_backend_key_data(&msg.body) {
                    let t = CancelTarget {
                        backend: self.backend_addr.clone(),
                        process_id,
                        secret_key,
                    };
                    let g = self.cancel_keys.issue(t.clone());
                    pg::encode_backend_key_data(g.process_id, g.secret_key, out);
                    self.cancel_guard = Some(g);
                    self.cancel_target = Some(t);
                    continue;
                }
            }
            out.extend_from_slice(&[msg.tag]);
            let len = u32::try_from(msg.body.len() + 4)
                .map_err(|_| WireError("message too long".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&msg.body);
            // ReadyForQuery ends the handshake; what follows is raw stream.
            self.ready = msg.tag == b'Z';
        }
        Ok(())
    }

    fn feed_down(&mut self, chunk: &[u8]) -> Result<Boundaries, WireError> {
        let r = self
            .framer
            .feed(chunk)
            .map_err(|e| WireError(e.to_string()))?;
        if r.last_tag == Some(b'Z') && self.framer.at_boundary() {
            self.busy = false;
        }
        Ok(Boundaries {
            first: r.first_boundary,
            last: r.last_boundary,
        })
    }

    fn down_at_boundary(&self) -> bool {
        self.framer.at_boundary()
    }

    fn inspect_up(&mut self, pending: &[u8], _new: usize) -> crate::relay::UpVerdict {
        // A lone Terminate is a goodbye, not a statement.
        if pending == TERMINATE {
            self.terminated = true;
        } else {
            self.busy = true;
        }
        crate::relay::UpVerdict::Pass
    }

    fn client_ended(&self) -> bool {
        self.terminated
    }

    fn warning(
        &mut self,
        session: &Session,
        remaining: Duration,
        at: SystemTime,
    ) -> Option<Vec<u8>> {
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
        Some(out.to_vec())
    }

    fn farewell(&mut self, session: &Session, reason: &EndReason) -> Option<Vec<u8>> {
        let text = ClientText {
            reason,
            resource: &session.resource,
        }
        .to_string();
        let hint = match reason {
            EndReason::Expired | EndReason::Revoked { .. } | EndReason::MaxSession(_) => {
                Some(format!(
                    "request access again with: jitgate request {} --for DURATION --reason TEXT",
                    session.resource
                ))
            }
            _ => None,
        };
        // 08006 connection_failure when the backend failed; 57P01
        // admin_shutdown when jitgate ended access.
        let code = match reason {
            EndReason::Backend => "08006",
            _ => "57P01",
        };
        let mut out = BytesMut::new();
        pg::encode_error_response(
            &pg::ErrorFields {
                severity: "FATAL",
                code,
                message: &text,
                detail: None,
                hint: hint.as_deref(),
            },
            &mut out,
        );
        Some(out.to_vec())
    }

    fn end_action(&mut self) -> Option<EndAction> {
        // The key stays registered until the wire is dropped, after this runs.
        let t = self.cancel_target.clone()?;
        self.cancelled = true;
        Some(Box::pin(async move {
            if let Err(e) = send_cancel(&t, FINISH_BUDGET).await {
                tracing::warn!(error = %e, "could not cancel the backend query");
            }
        }))
    }
}

impl Drop for PgWire {
    /// A session that ends while a statement runs — the client vanished,
    /// the relay failed — cancels it, so nothing outlives the session (and
    /// so its grant). An enforced end has cancelled already.
    fn drop(&mut self) {
        if !self.busy || self.cancelled {
            return;
        }
        let (Some(t), Ok(rt)) = (
            self.cancel_target.clone(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        rt.spawn(async move {
            if let Err(e) = send_cancel(&t, FINISH_BUDGET).await {
                tracing::warn!(error = %e, "could not cancel the statement of a vanished client");
            }
        });
    }
}
