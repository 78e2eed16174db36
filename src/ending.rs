//! Why access ended: one vocabulary for grants, sessions, metrics labels,
//! audit lines and the text a client is shown.

use std::fmt;
use std::time::Duration;

use crate::config::HumanDuration;

/// Why a session (or the grant under it) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed its side.
    Client,
    /// The backend closed its side or failed.
    Backend,
    /// The grant's deadline passed.
    Expired,
    /// An operator revoked the grant.
    Revoked {
        /// Who revoked it.
        by: String,
        /// Their reason.
        reason: String,
    },
    /// An operator killed this one session.
    Killed {
        /// Who killed it.
        by: String,
        /// Their reason.
        reason: String,
    },
    /// No bytes in either direction for this long.
    Idle(Duration),
    /// The resource's `max_session` cap was reached.
    MaxSession(Duration),
    /// The gateway is shutting down.
    Shutdown,
    /// A configuration reload removed what the access depended on (the
    /// resource, the user, the policy).
    Config(String),
    /// The client asked to act as a login its grant does not admit (MySQL
    /// COM_CHANGE_USER): the session is closed rather than switched.
    LoginDenied {
        /// The login asked for.
        login: String,
    },
    /// The client asked for something jitgate never passes on, whatever
    /// the grant (MySQL replication: a binary log stream would carry every
    /// change on the server out): the command is not forwarded and the
    /// session is closed.
    Refused(&'static str),
    /// A protocol or I/O error on the gateway's side.
    Error,
}

impl EndReason {
    /// Bounded label for `jitgate_sessions_closed_total{reason}` and the
    /// audit `outcome` field.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::Client => "client",
            EndReason::Backend => "backend",
            EndReason::Expired => "expired",
            EndReason::Revoked { .. } => "revoked",
            EndReason::Killed { .. } => "killed",
            EndReason::Idle(_) => "idle",
            EndReason::MaxSession(_) => "max_session",
            EndReason::Shutdown => "shutdown",
            EndReason::Config(_) => "config",
            EndReason::LoginDenied { .. } | EndReason::Refused(_) => "denied",
            EndReason::Error => "error",
        }
    }

    /// Whether jitgate ended the session (rather than one of its peers): the
    /// client is then told why and a running query is cancelled.
    pub fn is_enforced(&self) -> bool {
        !matches!(
            self,
            EndReason::Client | EndReason::Backend | EndReason::Error
        )
    }

    /// The operator's free text, where there is one (audit `reason`).
    pub fn detail(&self) -> Option<&str> {
        match self {
            EndReason::Revoked { reason, .. } | EndReason::Killed { reason, .. } => Some(reason),
            EndReason::Config(why) => Some(why),
            EndReason::Refused(what) => Some(what),
            _ => None,
        }
    }

    /// Who caused it, where someone did (audit `actor`).
    pub fn actor(&self) -> Option<&str> {
        match self {
            EndReason::Revoked { by, .. } | EndReason::Killed { by, .. } => Some(by),
            _ => None,
        }
    }
}

/// The sentence a client is shown, e.g. "access to prod-pg expired".
pub struct ClientText<'a> {
    /// Why.
    pub reason: &'a EndReason,
    /// The resource's name.
    pub resource: &'a str,
}

impl fmt::Display for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.resource;
        match self.reason {
            EndReason::Expired => write!(f, "jitgate: access to {r} expired"),
            EndReason::Revoked { by, reason } => {
                write!(f, "jitgate: access to {r} was revoked by {by}")?;
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            EndReason::Killed { by, reason } => {
                write!(f, "jitgate: session on {r} was killed by {by}")?;
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            EndReason::Idle(d) => write!(
                f,
                "jitgate: session on {r} closed after being idle for {}",
                HumanDuration(*d)
            ),
            EndReason::MaxSession(d) => write!(
                f,
                "jitgate: session on {r} reached its session cap of {}",
                HumanDuration(*d)
            ),
            EndReason::Shutdown => write!(f, "jitgate: gateway is shutting down"),
            EndReason::Config(why) => {
                write!(
                    f,
                    "jitgate: access to {r} ended by a configuration change: {why}"
                )
            }
            EndReason::LoginDenied { login } => write!(
                f,
                "{}; the session is closed",
                crate::admission::no_grant_message(login, r)
            ),
            EndReason::Backend => write!(
                f,
                "jitgate: lost the connection to the backend of {r}; the session is closed"
            ),
            EndReason::Refused(what) => write!(
                f,
                "jitgate: {what} is not allowed through jitgate; the session is closed"
            ),
            EndReason::Client | EndReason::Error => {
                write!(f, "jitgate: session on {r} ended")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_texts_say_why() {
        let t = |reason: EndReason| {
            ClientText {
                reason: &reason,
                resource: "prod-pg",
            }
            .to_string()
        };
        assert_eq!(t(EndReason::Expired), "jitgate: access to prod-pg expired");
        assert_eq!(
            t(EndReason::Refused("replication (binary log streaming)")),
            "jitgate: replication (binary log streaming) is not allowed through jitgate; the session is closed"
        );
        assert_eq!(
            t(EndReason::Revoked {
                by: "carol".into(),
                reason: "incident closed".into()
            }),
            "jitgate: access to prod-pg was revoked by carol: incident closed"
        );
        assert_eq!(
            t(EndReason::Idle(Duration::from_secs(900))),
            "jitgate: session on prod-pg closed after being idle for 15m"
        );
        assert_eq!(
            t(EndReason::MaxSession(Duration::from_secs(8 * 3600))),
            "jitgate: session on prod-pg reached its session cap of 8h"
        );
        let denied = EndReason::LoginDenied {
            login: "root".into(),
        };
        assert_eq!(
            t(denied.clone()),
            "jitgate: no active access grant for \"root\" on \"prod-pg\"; the session is closed"
        );
        assert_eq!(denied.label(), "denied");
        assert_eq!(
            t(EndReason::Backend),
            "jitgate: lost the connection to the backend of prod-pg; the session is closed"
        );
        assert!(!EndReason::Backend.is_enforced());
        assert!(denied.is_enforced());
    }
}
