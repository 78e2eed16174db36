//! Prometheus metrics through the `metrics` facade.
//!
//! Invariant: labels come from bounded sets only — resource names (from the
//! config), protocol, outcome and reason enums — never a user name, a login
//! or an address. Every metric name lives in this file.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Upper bounds of the latency histograms, in seconds: from 100 µs (a
/// revocation seen on an idle socket) to 10 s (a handshake that nearly timed out).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder once per process and return its handle
/// (`None` if another recorder was installed first, e.g. by an embedding
/// program; metrics then go there).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "jitgate_connections_total",
        "Client connections by resource, protocol and outcome (accepted | denied | error)."
    );
    describe_gauge!("jitgate_sessions_active", "Live sessions by resource.");
    describe_counter!(
        "jitgate_sessions_closed_total",
        "Sessions ended, by resource and reason."
    );
    describe_counter!(
        "jitgate_bytes_total",
        "Bytes relayed by resource and direction (up = client to backend)."
    );
    describe_gauge!("jitgate_grants_active", "Grants in the grant table.");
    describe_counter!("jitgate_requests_total", "Access requests by outcome.");
    describe_counter!(
        "jitgate_limited_total",
        "Connections and API requests refused by a limit, by limit."
    );
    describe_gauge!(
        "jitgate_requests_pending",
        "Access requests waiting for approval."
    );
    describe_counter!(
        "jitgate_notify_dropped_total",
        "Webhook notifications dropped, by reason (queue_full | failed)."
    );
    describe_histogram!(
        "jitgate_enforcement_lag_seconds",
        "Time from a deadline or a revoke/kill to both sockets being closed."
    );
    describe_histogram!(
        "jitgate_handshake_seconds",
        "Time from accept to the end of the protocol startup (admitted or denied)."
    );
    describe_counter!(
        "jitgate_config_reloads_total",
        "Configuration reloads by result (ok | error)."
    );
    describe_gauge!(
        "jitgate_audit_healthy",
        "1 while the audit log can be written; 0 while writes fail (new sessions and grants are refused)."
    );
    describe_counter!(
        "jitgate_audit_write_errors_total",
        "Audit records that could not be written (each refused the action it recorded, or was lost if the action happened anyway)."
    );
}

/// Connection outcome label.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Admitted and relayed.
    Accepted,
    /// Refused by policy (no grant).
    Denied,
    /// Failed: bad input, timeout, backend unreachable.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// Count one client connection.
pub fn connection(resource: &str, protocol: &'static str, outcome: Outcome) {
    counter!("jitgate_connections_total", "resource" => resource.to_string(), "protocol" => protocol, "outcome" => outcome.label())
        .increment(1);
}

/// A session was registered.
pub fn session_opened(resource: &str) {
    gauge!("jitgate_sessions_active", "resource" => resource.to_string()).increment(1.0);
}

/// A session was unregistered.
pub fn session_closed(resource: &str) {
    gauge!("jitgate_sessions_active", "resource" => resource.to_string()).decrement(1.0);
}

/// A session ended for `reason` (an [`crate::ending::EndReason::label`]).
pub fn session_ended(resource: &str, reason: &'static str) {
    counter!("jitgate_sessions_closed_total", "resource" => resource.to_string(), "reason" => reason)
        .increment(1);
}

/// Handles for one session's byte counters, fetched once so the relay pays
/// one atomic add per chunk.
pub fn byte_counters(resource: &str) -> (metrics::Counter, metrics::Counter) {
    (
        counter!("jitgate_bytes_total", "resource" => resource.to_string(), "direction" => "up"),
        counter!("jitgate_bytes_total", "resource" => resource.to_string(), "direction" => "down"),
    )
}

/// The number of grants in the table.
pub fn grants_active(n: usize) {
    gauge!("jitgate_grants_active").set(n as f64);
}

/// Deadline or revoke → sockets closed.
pub fn enforcement_lag(d: Duration) {
    histogram!("jitgate_enforcement_lag_seconds").record(d.as_secs_f64());
}

/// Accept → handshake decided.
pub fn handshake(d: Duration) {
    histogram!("jitgate_handshake_seconds").record(d.as_secs_f64());
}

/// An access request reached `outcome` (pending | auto_approved |
/// approved | denied | expired).
pub fn request(outcome: &'static str) {
    counter!("jitgate_requests_total", "outcome" => outcome).increment(1);
}

/// Requests waiting for approval.
pub fn requests_pending(n: usize) {
    gauge!("jitgate_requests_pending").set(n as f64);
}

/// A webhook notification was dropped (queue_full | failed).
pub fn notify_dropped(reason: &'static str) {
    counter!("jitgate_notify_dropped_total", "reason" => reason).increment(1);
}

/// A connection or request refused by a limit (a [`crate::limits::Limit`] label).
pub fn limited(limit: &'static str) {
    counter!("jitgate_limited_total", "limit" => limit).increment(1);
}

/// A config reload attempt.
pub fn config_reload(ok: bool) {
    counter!("jitgate_config_reloads_total", "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

/// Whether the audit log can be written.
pub fn audit_healthy(ok: bool) {
    gauge!("jitgate_audit_healthy").set(if ok { 1.0 } else { 0.0 });
}

/// An audit record could not be written.
pub fn audit_write_error() {
    counter!("jitgate_audit_write_errors_total").increment(1);
}
