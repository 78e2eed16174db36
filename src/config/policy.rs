//! Configuration of the access workflow: groups, policies with their
//! adaptive rules, resource sensitivity defaults and webhook sinks.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

use super::{Cidr, HumanDuration, Secret};

/// `[[group]]`: a named set of users, referred to as `group:NAME`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Unique name. Required.
    pub name: Spanned<String>,
    /// User names. Default: none.
    #[serde(default)]
    pub members: Vec<Spanned<String>>,
}

impl GroupConfig {
    /// Member names.
    pub fn member_names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.get_ref().as_str())
    }
}

/// `[[policy]]`: who may request which resources, for how long, approved
/// by whom.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name, shown to requesters and in the audit log. Required.
    pub name: Spanned<String>,
    /// Users or `group:NAME` who may request under this policy. Required.
    pub principals: Vec<Spanned<String>>,
    /// Resource names this policy covers. Required.
    pub resources: Vec<Spanned<String>>,
    /// Longest grant (and extension) this policy allows; longer requests
    /// are capped. Required.
    pub max_duration: Spanned<HumanDuration>,
    /// Distinct approvals needed; `0` = auto-approve. Default `1`.
    #[serde(default = "one")]
    pub approvals: Spanned<u32>,
    /// Users or `group:NAME` who may approve. Required when `approvals > 0`.
    #[serde(default)]
    pub approvers: Vec<Spanned<String>>,
    /// Whether a request must carry a reason. Default `true`.
    #[serde(default = "yes")]
    pub require_reason: bool,
    /// Logins a grant under this policy may carry (each must also be one of
    /// the requester's `logins`). Default: any of the requester's logins.
    #[serde(default)]
    pub logins: Option<Vec<String>>,
    /// Networks every source of a grant under this policy must lie within
    /// (on ssh/tcp resources the source address is the identity, and the
    /// requester names it). Default: any network the requester names.
    #[serde(default)]
    pub sources: Option<Vec<Cidr>>,
    /// `[[policy.when]]`: rules that tighten this policy in some contexts.
    /// Default: none.
    #[serde(default)]
    pub when: Vec<PolicyRule>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn yes() -> bool {
    true
}

impl PolicyConfig {
    /// The policy's name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
}

/// `[[policy.when]]`: a rule that applies when all its conditions hold
/// (a rule without conditions always applies). A rule can only tighten:
/// the shorter `max_duration` and the larger `approvals` win.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Applies inside this UTC window, `"HH:MM-HH:MM"` (may wrap midnight).
    /// Default: any time.
    #[serde(default)]
    pub hours: Option<Spanned<TimeWindow>>,
    /// Applies outside this UTC window. Default: not used.
    #[serde(default)]
    pub outside_hours: Option<Spanned<TimeWindow>>,
    /// Applies on these UTC weekdays (`mon` … `sun`). Default: every day.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Tightened duration cap. Default: the policy's.
    #[serde(default)]
    pub max_duration: Option<HumanDuration>,
    /// Tightened number of approvals. Default: the policy's.
    #[serde(default)]
    pub approvals: Option<u32>,
}

/// `[sensitivity.NAME]`: limits every policy on a resource of that
/// sensitivity is tightened to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitivityConfig {
    /// Duration cap. Default: none.
    #[serde(default)]
    pub max_duration: Option<HumanDuration>,
    /// Minimum number of approvals. Default: none.
    #[serde(default)]
    pub approvals: Option<u32>,
}

/// `[[notify]]`: a webhook that receives workflow events as JSON with a
/// Slack-compatible `text` field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `http://host:port/path`. Required.
    pub url: Spanned<String>,
    /// Events to send (`request.created`, `request.approved`,
    /// `request.denied`, `request.expired`, `grant.expiring`,
    /// `grant.expired`, `grant.revoked`). Default: all of them.
    #[serde(default)]
    pub events: Vec<Spanned<String>>,
    /// Key for an `X-Jitgate-Signature: sha256=HEX` HMAC-SHA256 header over
    /// the body. Default: unsigned.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Give up one delivery attempt after this long. Default `5s`.
    #[serde(default = "five_seconds")]
    pub timeout: HumanDuration,
    /// Events waiting for delivery beyond this are dropped (and counted).
    /// Default `1000`.
    #[serde(default = "thousand")]
    pub queue: usize,
    /// Attempts per event, with exponential backoff. Default `3`.
    #[serde(default = "three")]
    pub attempts: u32,
}

fn five_seconds() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}
fn thousand() -> usize {
    1000
}
fn three() -> u32 {
    3
}

/// The event names a `[[notify]]` sink may select.
pub const NOTIFY_EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "request.expired",
    "grant.expiring",
    "grant.expired",
    "grant.revoked",
];

/// A daily UTC window, minutes since midnight; `start > end` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Start, inclusive.
    pub start: u16,
    /// End, exclusive.
    pub end: u16,
}

impl TimeWindow {
    /// Whether `minute` (of the UTC day) falls in the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    if h == 24 && m == 0 {
        return Some(24 * 60);
    }
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl std::str::FromStr for TimeWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("invalid time window {s:?}: expected \"HH:MM-HH:MM\" (UTC)");
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let (start, end) = (
            parse_hhmm(a).ok_or_else(err)?,
            parse_hhmm(b).ok_or_else(err)?,
        );
        if start == end {
            return Err(format!("time window {s:?} is empty"));
        }
        Ok(TimeWindow { start, end })
    }
}

impl<'de> Deserialize<'de> for TimeWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// The weekday of a UNIX day number (1970-01-01 was a Thursday).
    pub fn of_unix_day(day: u64) -> Weekday {
        const DAYS: [Weekday; 7] = [
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
        ];
        // `day % 7` is below 7, so the index is in bounds.
        #[allow(clippy::indexing_slicing)]
        DAYS[(day % 7) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap() {
        let w: TimeWindow = "08:00-18:00".parse().unwrap();
        assert!(w.contains(8 * 60));
        assert!(!w.contains(18 * 60));
        assert!(!w.contains(7 * 60 + 59));
        let night: TimeWindow = "22:00-06:00".parse().unwrap();
        assert!(night.contains(23 * 60));
        assert!(night.contains(60));
        assert!(!night.contains(12 * 60));
        assert!("8-18".parse::<TimeWindow>().is_err());
        assert!("25:00-01:00".parse::<TimeWindow>().is_err());
        assert!("10:00-10:00".parse::<TimeWindow>().is_err());
        assert_eq!(w.to_string(), "08:00-18:00");
    }

    #[test]
    fn weekday_of_known_dates() {
        // 2026-11-29 is a Sunday: 20_786 days after 1970-01-01.
        assert_eq!(Weekday::of_unix_day(20_786), Weekday::Sun);
        assert_eq!(Weekday::of_unix_day(0), Weekday::Thu);
    }
}
