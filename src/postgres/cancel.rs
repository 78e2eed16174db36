//! PostgreSQL cancel keys: clients get jitgate's own key, never the
//! backend's.
//!
//! A client cancels a running query by opening a *new* connection and
//! sending CancelRequest with the (process id, secret) pair it got in
//! BackendKeyData. jitgate hands out its own random pair per session and
//! keeps a map to the backend's pair, so a cancel request can only reach a
//! backend through a live session's key, and a backend's key never leaves the
//! gateway. Invariants: an entry lives exactly as long as its session (the
//! [`CancelKeyGuard`] removes it); secrets are compared in constant time;
//! unknown keys are dropped silently, as PostgreSQL itself does.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where a cancel request for one session goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The backend address (as configured).
    pub backend: String,
    /// The backend's process id.
    pub process_id: u32,
    /// The backend's secret key.
    pub secret_key: u32,
}

#[derive(Debug)]
struct Entry_ {
    secret: u32,
    target: CancelTarget,
}

/// The map from jitgate's keys to backends' keys.
#[derive(Debug, Default)]
pub struct CancelKeys {
    map: DashMap<u32, Entry_>,
}

impl CancelKeys {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issue a fresh random key for `target`; the guard removes it.
    pub fn issue(self: &Arc<Self>, target: CancelTarget) -> CancelKeyGuard {
        loop {
            let pid: u32 = rand::random();
            if pid == 0 {
                continue;
            }
            if let Entry::Vacant(v) = self.map.entry(pid) {
                let secret: u32 = rand::random();
                v.insert(Entry_ { secret, target });
                return CancelKeyGuard {
                    keys: self.clone(),
                    process_id: pid,
                    secret_key: secret,
                };
            }
        }
    }

    /// The backend target for a presented key, if it matches a live session.
    pub fn lookup(&self, process_id: u32, secret_key: u32) -> Option<CancelTarget> {
        let e = self.map.get(&process_id)?;
        let ok: bool = e.secret.ct_eq(&secret_key).into();
        ok.then(|| e.target.clone())
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Owns one issued key.
#[derive(Debug)]
pub struct CancelKeyGuard {
    keys: Arc<CancelKeys>,
    /// The process id handed to the client.
    pub process_id: u32,
    /// The secret handed to the client.
    pub secret_key: u32,
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        self.keys.map.remove(&self.process_id);
    }
}

/// Send a CancelRequest for `target` to its backend, giving up after
/// `timeout`. The backend never answers a cancel request; it closes.
pub async fn send_cancel(target: &CancelTarget, timeout: Duration) -> std::io::Result<()> {
    let mut msg = BytesMut::with_capacity(16);
    proxy_protocols::postgres::encode_cancel_request(
        target.process_id,
        target.secret_key,
        &mut msg,
    );
    let fut = async {
        let mut s = TcpStream::connect(target.backend.as_str()).await?;
        s.write_all(&msg).await?;
        s.shutdown().await
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel request timed out")
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            backend: "127.0.0.1:1".into(),
            process_id: 42,
            secret_key: 7,
        }
    }

    #[test]
    fn keys_match_only_with_the_right_secret_and_die_with_the_guard() {
        let keys = Arc::new(CancelKeys::new());
        let g = keys.issue(target());
        let t = keys.lookup(g.process_id, g.secret_key).unwrap();
        assert_eq!((t.process_id, t.secret_key), (42, 7));
        assert!(keys.lookup(g.process_id, g.secret_key ^ 1).is_none());
        assert!(keys.lookup(g.process_id ^ 1, g.secret_key).is_none());
        let (pid, secret) = (g.process_id, g.secret_key);
        drop(g);
        assert!(keys.lookup(pid, secret).is_none());
        assert!(keys.is_empty());
    }
}
