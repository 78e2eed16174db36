//! The audit log: one JSON object per line in `state_dir/audit.jsonl`.
//!
//! Invariants: every event goes through [`AuditLog::write`], which returns
//! only after the line is handed to the kernel, so an action is acknowledged
//! only after its record is written; a write error is returned to the caller,
//! which then refuses the action (fail closed). Lines are written whole under
//! one lock, so concurrent events never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use uuid::Uuid;

use crate::timefmt;

/// One audit event. Only the fields that apply are set; the rest are left
/// out of the line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// When (RFC 3339 UTC, filled in by [`AuditLog::write`]).
    #[serde(serialize_with = "timefmt::ser")]
    pub ts: Option<SystemTime>,
    /// What happened, e.g. `session.started`.
    pub event: &'static str,
    /// The person the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The database login presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// Resource name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Source networks a grant admits, comma-separated (`grant.created`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<String>,
    /// Resource protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<SocketAddr>,
    /// Grant id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<Uuid>,
    /// Request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
    /// Session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// Who acted (admin, approver, or `jitgate` itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Free text: the requester's or operator's reason, or why jitgate decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A duration in milliseconds (grant length, session length).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Bytes from client to backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Bytes from backend to client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    /// A bounded outcome word (e.g. the end reason label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// The client's software version (SSH identification line), in
    /// `session.started`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// The server's software version (SSH identification line), in
    /// `session.started`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Grant deadline (grant events).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "timefmt::ser"
    )]
    pub expires_at: Option<SystemTime>,
}

impl Event {
    /// An event with only its name set.
    pub fn new(event: &'static str) -> Event {
        Event {
            event,
            ..Event::default()
        }
    }
}

/// The audit writer.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Open (create or append to) `dir/audit.jsonl`, creating `dir`.
    pub fn open(dir: &Path) -> io::Result<AuditLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one event. Returns once the line is written to the file.
    pub fn write(&self, mut event: Event) -> io::Result<()> {
        event.ts = Some(SystemTime::now());
        let mut line = serde_json::to_vec(&event).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let r = f.write_all(&line);
        if let Err(e) = &r {
            tracing::error!(error = %e, path = %self.path.display(), event = event.event, "audit log write failed");
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_without_empty_fields() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let mut e = Event::new("session.denied");
        e.login = Some("alice".into());
        e.resource = Some("pg".into());
        log.write(e).unwrap();
        log.write(Event::new("grant.expired")).unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "session.denied");
        assert_eq!(lines[0]["login"], "alice");
        assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
        assert!(lines[0].get("principal").is_none());
        assert_eq!(lines[1]["event"], "grant.expired");
    }
}
