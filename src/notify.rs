//! Webhook notifications of workflow events (`[[notify]]`).
//!
//! Invariants: delivery is off the data path. [`Notifier::send`] never
//! blocks and never fails an access decision: it offers the event to each
//! sink's bounded queue and drops it (counted in
//! `jitgate_notify_dropped_total{reason="queue_full"}` and logged) when the
//! queue is full. One task per sink delivers in order, with a timeout per
//! attempt and exponential backoff between attempts; an event that fails
//! every attempt is dropped and counted (`reason="failed"`). The body is
//! JSON with a Slack-compatible `text` field; with a `secret`, the header
//! `X-Jitgate-Signature: sha256=HEX` carries HMAC-SHA256 of the body.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use hyper::body::Bytes;
use hyper::Method;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NotifyConfig;
use crate::httpc::{self, Target};

/// First backoff between attempts; doubles each time.
const BACKOFF: Duration = Duration::from_millis(200);

struct Sink {
    events: Vec<String>,
    tx: mpsc::Sender<Arc<Bytes>>,
}

/// The webhook sinks.
#[derive(Default)]
pub struct Notifier {
    sinks: Vec<Sink>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

/// HMAC-SHA256 of `body` under `key`, lowercase hex.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

impl Notifier {
    /// Start one delivery task per sink on `tracker`; they stop on `stop`.
    pub fn start(
        configs: &[NotifyConfig],
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Notifier {
        let mut sinks = Vec::new();
        for cfg in configs {
            let Ok(target) = Target::parse(cfg.url.get_ref()) else {
                // Validated at load; an unparsable URL cannot get here.
                continue;
            };
            let (tx, rx) = mpsc::channel(cfg.queue);
            sinks.push(Sink {
                events: cfg.events.iter().map(|e| e.get_ref().clone()).collect(),
                tx,
            });
            tracker.spawn(deliver(target, cfg.clone(), rx, stop.clone()));
        }
        Notifier { sinks }
    }

    /// Offer an event to every sink that wants it. Never blocks.
    pub fn send(&self, event: &str, text: &str, mut fields: serde_json::Value) {
        if self.sinks.is_empty() {
            return;
        }
        if let Some(obj) = fields.as_object_mut() {
            obj.insert("event".into(), event.into());
            obj.insert("text".into(), text.into());
            obj.insert(
                "ts".into(),
                crate::timefmt::rfc3339(std::time::SystemTime::now()).into(),
            );
        }
        let body = Arc::new(Bytes::from(fields.to_string()));
        for s in &self.sinks {
            if !s.events.is_empty() && !s.events.iter().any(|e| e == event) {
                continue;
            }
            if s.tx.try_send(body.clone()).is_err() {
                crate::metrics::notify_dropped("queue_full");
                tracing::warn!(event, "webhook queue full: notification dropped");
            }
        }
    }
}

async fn deliver(
    target: Target,
    cfg: NotifyConfig,
    mut rx: mpsc::Receiver<Arc<Bytes>>,
    stop: CancellationToken,
) {
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(secret) = &cfg.secret {
            headers.push((
                "x-jitgate-signature",
                format!("sha256={}", signature(secret.expose().as_bytes(), &body)),
            ));
        }
        let mut delivered = false;
        for attempt in 0..cfg.attempts {
            if attempt > 0 {
                let wait = BACKOFF.saturating_mul(1 << (attempt - 1).min(10));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let r = httpc::call(
                &target,
                Method::POST,
                target.path(),
                &headers,
                (*body).clone(),
                cfg.timeout.0,
                64 * 1024,
            )
            .await;
            match r {
                Ok((status, _)) if (200..300).contains(&status) => {
                    delivered = true;
                    break;
                }
                Ok((status, _)) => tracing::debug!(
                    status,
                    url = cfg.url.get_ref().as_str(),
                    "webhook refused a notification"
                ),
                Err(e) => {
                    tracing::debug!(error = %e, url = cfg.url.get_ref().as_str(), "webhook delivery failed")
                }
            }
        }
        if !delivered {
            crate::metrics::notify_dropped("failed");
            tracing::warn!(
                url = cfg.url.get_ref().as_str(),
                attempts = cfg.attempts,
                "webhook notification dropped after every attempt failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
