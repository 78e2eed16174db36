//! Per-session enforcement clock: when must this session end, and when must
//! its user be warned?
//!
//! One [`Enforcer`] per session, polled by the protocol relay inside its
//! `select!`. It owns a single pinned timer, re-armed only when it fires, so
//! a busy relay pays nothing per chunk for it. Every firing re-reads the
//! grant's deadline, so a deadline that moved later (an extension) is
//! honoured without any message to the session: the timer finds time left,
//! re-arms for the new deadline, and later warnings follow the new one.
//! Invariant: [`Enforcer::next`] is cancel-safe (all state lives in `self`),
//! and it reports an end for whichever comes first: the session's token
//! (kill, shutdown), its grant's (revoke, the grant's end at its deadline),
//! the effective deadline (grant or `max_session`), or idleness.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::ending::EndReason;
use crate::sessions::Session;

/// What the enforcer asks the relay to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// End the session now; `since` is when the cause happened.
    End {
        /// Why.
        reason: EndReason,
        /// When the cause happened (deadline passed, revoke decided).
        since: std::time::Instant,
    },
    /// Tell the user access ends soon (protocols with in-band notices).
    Warn {
        /// Time left.
        remaining: Duration,
        /// The effective deadline.
        at: SystemTime,
    },
}

/// The enforcement clock of one session.
pub struct Enforcer {
    session: Arc<Session>,
    /// Lead times, longest first.
    warnings: Vec<Duration>,
    /// Index in `warnings` of the next warning to give.
    next_warning: usize,
    warn_now: bool,
    /// Created once: polling a registered waiter costs far less than
    /// registering a new one on every relay iteration.
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The grant's token (see `sessions`: not the session token's parent).
    grant_cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Woken when the limits or the grant's deadline change (reload,
    /// extension): re-arm from the new values.
    poked: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    poke: Arc<tokio::sync::Notify>,
    timer: Pin<Box<Sleep>>,
}

/// Convert a wall-clock time to a tokio instant (past times map to now).
fn instant_at(t: SystemTime) -> Instant {
    Instant::now()
        + t.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
}

/// The std instant at which wall-clock `t` happened (for lag measurement).
fn std_instant_at(t: SystemTime) -> std::time::Instant {
    let now = std::time::Instant::now();
    match SystemTime::now().duration_since(t) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(_) => now,
    }
}

impl Enforcer {
    /// A clock for `session`; `warnings` are the lead times of in-band
    /// notices (pass none for protocols that have no notices).
    pub fn new(session: Arc<Session>, idle: Option<Duration>, warnings: &[Duration]) -> Self {
        let mut w: Vec<Duration> = warnings.to_vec();
        w.sort_unstable_by(|a, b| b.cmp(a));
        w.dedup();
        let cancelled = Box::pin(session.token().clone().cancelled_owned());
        let grant_cancelled = Box::pin(session.grant.token().clone().cancelled_owned());
        let poke = session.poke_handle();
        let poked = Box::pin(poke.clone().notified_owned());
        let max = session
            .max_session_deadline()
            .duration_since(session.started_at)
            .unwrap_or(Duration::ZERO);
        session.set_limits(idle, max);
        let mut e = Enforcer {
            session,
            poked,
            poke,
            warnings: w,
            next_warning: 0,
            warn_now: false,
            cancelled,
            grant_cancelled,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        };
        // Lead times already passed at the start collapse into one notice
        // given right away: the user learns at once that little time is left.
        e.skip_passed_warnings();
        e.warn_now = e.next_warning > 0;
        e.rearm();
        e
    }

    fn remaining(&self) -> Duration {
        self.session
            .deadline()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    fn skip_passed_warnings(&mut self) {
        let left = self.remaining();
        self.next_warning = self.warnings.iter().take_while(|&&w| w >= left).count();
    }

    fn rearm(&mut self) {
        let deadline = self.session.deadline();
        let mut at = instant_at(deadline);
        if let Some(w) = self.warnings.get(self.next_warning) {
            let warn_at = deadline.checked_sub(*w).unwrap_or(deadline);
            at = at.min(instant_at(warn_at));
        }
        if let Some(idle) = self.session.idle_timeout() {
            at = at.min(Instant::from_std(self.session.last_active()) + idle);
        }
        self.timer.as_mut().reset(at);
    }

    /// Check the clock now: an end, a warning, or nothing (timer re-armed).
    fn evaluate(&mut self) -> Option<Enforcement> {
        let now = SystemTime::now();
        let grant_deadline = self.session.grant.expires_at();
        let cap = self.session.max_session_deadline();
        if now >= grant_deadline.min(cap) {
            let (reason, at) = if grant_deadline <= cap {
                (EndReason::Expired, grant_deadline)
            } else {
                let len = cap
                    .duration_since(self.session.started_at)
                    .unwrap_or(Duration::ZERO);
                (EndReason::MaxSession(len), cap)
            };
            return Some(Enforcement::End {
                reason,
                since: std_instant_at(at),
            });
        }
        if let Some(idle) = self.session.idle_timeout() {
            if self.session.idle_for() >= idle {
                return Some(Enforcement::End {
                    reason: EndReason::Idle(idle),
                    since: self.session.last_active() + idle,
                });
            }
        }
        if self.warn_now || self.warning_due() {
            self.warn_now = false;
            self.skip_passed_warnings();
            self.rearm();
            return Some(Enforcement::Warn {
                remaining: self.remaining(),
                at: self.session.deadline(),
            });
        }
        self.rearm();
        None
    }

    fn warning_due(&self) -> bool {
        self.warnings
            .get(self.next_warning)
            .is_some_and(|w| self.remaining() <= *w)
    }

    /// The end for a cancelled token: the session's own reason, else its
    /// grant's, else shutdown.
    fn cut(&self) -> Enforcement {
        let (reason, since) = self
            .session
            .end_reason()
            .unwrap_or((EndReason::Shutdown, None));
        Enforcement::End {
            reason,
            since: since.unwrap_or_else(std::time::Instant::now),
        }
    }

    /// Wait for the next thing the relay must act on. Cancel-safe.
    pub async fn next(&mut self) -> Enforcement {
        if self.warn_now {
            if let Some(e) = self.evaluate() {
                return e;
            }
        }
        loop {
            tokio::select! {
                biased;
                _ = self.cancelled.as_mut() => return self.cut(),
                _ = self.grant_cancelled.as_mut() => return self.cut(),
                _ = self.timer.as_mut() => {
                    if let Some(e) = self.evaluate() {
                        return e;
                    }
                }
                _ = self.poked.as_mut() => {
                    self.poked.set(self.poke.clone().notified_owned());
                    if let Some(e) = self.evaluate() {
                        return e;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::GrantTable;
    use crate::sessions::tests::{grant, new_session};
    use crate::sessions::SessionRegistry;
    use tokio_util::sync::CancellationToken;

    /// The clock's next step, which must come well before `max_session`.
    async fn next_end(e: &mut Enforcer) -> EndReason {
        match tokio::time::timeout(Duration::from_secs(5), e.next()).await {
            Ok(Enforcement::End { reason, .. }) => reason,
            other => panic!("expected an end, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_clock_ends_on_its_grants_token_the_sessions_own_and_shutdown() {
        // The grants have a root of their own: the shutdown below must reach
        // the session through the registry's root, not through its grant.
        let t = GrantTable::new(CancellationToken::new());
        let root = CancellationToken::new();
        let reg = std::sync::Arc::new(SessionRegistry::under(root.clone()));

        // Revoke: the grant's token, which is not the session token's parent,
        // wakes a clock that is already waiting.
        let g = grant(&t);
        let revoked = reg.register(new_session(&g));
        let mut clock = Enforcer::new(revoked.session().clone(), None, &[]);
        tokio::select! {
            biased;
            e = clock.next() => panic!("the clock moved before the revoke: {e:?}"),
            _ = tokio::task::yield_now() => {}
        }
        let by = EndReason::Revoked {
            by: "carol".into(),
            reason: "done".into(),
        };
        t.remove(&g.id, by.clone());
        assert!(!revoked.session().token().is_cancelled());
        assert_eq!(next_end(&mut clock).await, by);

        // Kill: the session's own token, its own reason.
        let g = grant(&t);
        let killed = reg.register(new_session(&g));
        let mut clock = Enforcer::new(killed.session().clone(), None, &[]);
        let why = EndReason::Killed {
            by: "carol".into(),
            reason: String::new(),
        };
        killed.session().end(why.clone(), std::time::Instant::now());
        assert_eq!(next_end(&mut clock).await, why);

        // Shutdown: the registry's root cancels the session's own token; the
        // grant lives on, so the end has no reason but the shutdown.
        let live = reg.register(new_session(&g));
        let mut clock = Enforcer::new(live.session().clone(), None, &[]);
        root.cancel();
        assert!(live.session().token().is_cancelled() && g.is_live(std::time::SystemTime::now()));
        assert_eq!(next_end(&mut clock).await, EndReason::Shutdown);
    }
}
