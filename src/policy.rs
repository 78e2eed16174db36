//! Policy evaluation: which `[[policy]]` applies to a principal asking for
//! a resource at a given time, and what it demands.
//!
//! The rule an auditor can predict: **the first policy in file order whose
//! `principals` include the principal (directly or through a group) and
//! whose `resources` include the resource applies**; later policies are not
//! consulted. Within it, every `[[policy.when]]` rule whose conditions hold
//! at that time, and the resource's `[sensitivity.NAME]` defaults, can only
//! tighten: the shortest `max_duration` and the largest `approvals` win.
//! Evaluation is a pure function of the configuration, the principal, the
//! resource and the time, so `jitgate policy explain --at` shows exactly what
//! a request at that time would get.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Config, HumanDuration, PolicyRule, Weekday};

/// What a policy demands of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The policy that applies.
    pub policy: String,
    /// The longest grant allowed.
    pub max_duration: HumanDuration,
    /// Distinct approvals needed (0 = auto-approve).
    pub approvals: u32,
    /// Users who may approve.
    pub approvers: BTreeSet<String>,
    /// Whether a reason is required.
    pub require_reason: bool,
    /// Logins a grant may carry.
    pub logins: Vec<String>,
    /// Networks a grant's sources must lie within (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<ipnet::IpNet>>,
    /// How the decision was reached, one line per step.
    pub explain: Vec<String>,
}

impl Decision {
    /// Why a grant (or request) for `principal` with these logins and
    /// sources is more than this decision allows, if it is.
    pub fn refuses(
        &self,
        principal: &str,
        logins: &[String],
        sources: &[ipnet::IpNet],
    ) -> Option<String> {
        if let Some(l) = logins.iter().find(|l| !self.logins.contains(l)) {
            return Some(format!(
                "policy {:?} does not let {principal} use login {l:?}",
                self.policy
            ));
        }
        let allowed = self.sources.as_ref()?;
        let list = || {
            allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        // No source means any address: more than a policy with sources allows.
        if sources.is_empty() {
            return Some(format!(
                "policy {:?} admits {principal} only from {}: a grant without sources would admit any address",
                self.policy,
                list()
            ));
        }
        let outside = sources
            .iter()
            .find(|s| !allowed.iter().any(|a| a.contains(*s)))?;
        Some(format!(
            "policy {:?} does not let {principal} connect from {outside} (allowed: {})",
            self.policy,
            list()
        ))
    }
}

/// No policy lets the principal request the resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoPolicy {
    /// Why each policy did not match.
    pub explain: Vec<String>,
}

fn minute_and_day(at: SystemTime) -> (u16, Weekday) {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let minute = ((secs % 86_400) / 60) as u16;
    (minute, Weekday::of_unix_day(secs / 86_400))
}

/// Whether a rule's conditions hold at `at`; the text says which.
fn rule_applies(rule: &PolicyRule, at: SystemTime) -> (bool, String) {
    let (minute, day) = minute_and_day(at);
    let mut why = Vec::new();
    let mut ok = true;
    if let Some(w) = &rule.hours {
        let inside = w.get_ref().contains(minute);
        ok &= inside;
        why.push(format!(
            "{} hours {}",
            if inside { "inside" } else { "not inside" },
            w.get_ref()
        ));
    }
    if let Some(w) = &rule.outside_hours {
        let outside = !w.get_ref().contains(minute);
        ok &= outside;
        why.push(format!(
            "{} hours {}",
            if outside { "outside" } else { "not outside" },
            w.get_ref()
        ));
    }
    if !rule.days.is_empty() {
        let on = rule.days.contains(&day);
        ok &= on;
        why.push(format!("{} {:?}", if on { "on" } else { "not on" }, day).to_lowercase());
    }
    if why.is_empty() {
        why.push("always".into());
    }
    (ok, why.join(", "))
}

/// Evaluate the policies for `principal` asking for `resource` at `at`.
pub fn evaluate(
    config: &Config,
    principal: &str,
    resource: &str,
    at: SystemTime,
) -> Result<Decision, NoPolicy> {
    let mut explain = Vec::new();
    let Some(res) = config.resource(resource) else {
        explain.push(format!("no resource named {resource:?}"));
        return Err(NoPolicy { explain });
    };
    let user = config.user(principal);
    for p in &config.policies {
        let principals = config.expand_members(p.principals.iter().map(|s| s.get_ref().as_str()));
        if !principals.contains(principal) {
            explain.push(format!(
                "policy {:?} skipped: {principal:?} is not among its principals",
                p.name()
            ));
            continue;
        }
        if !p.resources.iter().any(|r| r.get_ref() == resource) {
            explain.push(format!(
                "policy {:?} skipped: it does not cover {resource:?}",
                p.name()
            ));
            continue;
        }
        explain.push(format!(
            "policy {:?} applies (first match in file order): max_duration {}, approvals {}",
            p.name(),
            p.max_duration.get_ref(),
            p.approvals.get_ref()
        ));
        let mut max = p.max_duration.get_ref().0;
        let mut approvals = *p.approvals.get_ref();
        for (i, rule) in p.when.iter().enumerate() {
            let (applies, why) = rule_applies(rule, at);
            if !applies {
                explain.push(format!("rule {} does not apply ({why})", i + 1));
                continue;
            }
            let mut what = Vec::new();
            if let Some(d) = rule.max_duration {
                if d.0 < max {
                    max = d.0;
                }
                what.push(format!("max_duration {d}"));
            }
            if let Some(a) = rule.approvals {
                approvals = approvals.max(a);
                what.push(format!("approvals {a}"));
            }
            explain.push(format!(
                "rule {} applies ({why}): {}",
                i + 1,
                what.join(", ")
            ));
        }
        if let Some(s) = &res.sensitivity {
            if let Some(sens) = config.sensitivity.get(s.get_ref()) {
                let mut what = Vec::new();
                if let Some(d) = sens.max_duration {
                    max = max.min(d.0);
                    what.push(format!("max_duration {d}"));
                }
                if let Some(a) = sens.approvals {
                    approvals = approvals.max(a);
                    what.push(format!("approvals at least {a}"));
                }
                explain.push(format!(
                    "resource {resource:?} has sensitivity {:?}: {}",
                    s.get_ref(),
                    what.join(", ")
                ));
            }
        }
        let approvers = config.expand_members(p.approvers.iter().map(|s| s.get_ref().as_str()));
        let user_logins: Vec<String> = user.map(|u| u.logins.clone()).unwrap_or_default();
        let logins = match &p.logins {
            Some(allowed) => user_logins
                .into_iter()
                .filter(|l| allowed.contains(l))
                .collect(),
            None => user_logins,
        };
        if let Some(nets) = &p.sources {
            explain.push(format!(
                "sources must lie within {}",
                nets.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        explain.push(format!(
            "result: up to {}, {}",
            HumanDuration(max),
            if approvals == 0 {
                "auto-approved".to_string()
            } else {
                format!(
                    "{approvals} distinct approval(s) from {}",
                    approvers.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        ));
        return Ok(Decision {
            policy: p.name().to_string(),
            max_duration: HumanDuration(max),
            approvals,
            approvers,
            require_reason: p.require_reason,
            logins,
            sources: p
                .sources
                .as_ref()
                .map(|nets| nets.iter().map(|c| c.0).collect()),
            explain,
        });
    }
    explain.push(format!("no policy lets {principal:?} request {resource:?}"));
    Err(NoPolicy { explain })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[[resource]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
backend = "127.0.0.1:5432"
sensitivity = "high"

[[resource]]
name = "other"
protocol = "postgres"
listen = "127.0.0.1:0"
backend = "127.0.0.1:5432"

[sensitivity.high]
max_duration = "4h"

[[user]]
name = "alice"
token_sha256 = "{h1}"
logins = ["alice", "postgres"]

[[user]]
name = "carol"
token_sha256 = "{h2}"
roles = ["approver"]

[[user]]
name = "dave"
token_sha256 = "{h3}"
roles = ["approver"]

[[group]]
name = "leads"
members = ["carol", "dave"]
{extra}
"#,
            h1 = "1".repeat(64),
            h2 = "2".repeat(64),
            h3 = "3".repeat(64),
        );
        crate::config::parse_str(&text, "t.toml").unwrap()
    }

    fn at(h: u64, m: u64) -> SystemTime {
        // 2026-11-29 (a Sunday) at h:m UTC.
        UNIX_EPOCH + Duration::from_secs(20_786 * 86_400 + h * 3600 + m * 60)
    }

    const POLICIES: &str = r#"
[[policy]]
name = "dba"
principals = ["alice"]
resources = ["pg"]
max_duration = "8h"
approvals = 1
approvers = ["group:leads"]
logins = ["postgres"]

[[policy.when]]
outside_hours = "08:00-18:00"
max_duration = "30m"
approvals = 2

[[policy]]
name = "later"
principals = ["alice"]
resources = ["pg", "other"]
max_duration = "1h"
approvals = 0
"#;

    #[test]
    fn first_match_applies_with_sensitivity_and_window() {
        let c = config(POLICIES);
        let d = evaluate(&c, "alice", "pg", at(12, 0)).unwrap();
        assert_eq!(d.policy, "dba");
        // Inside business hours the rule does not apply; sensitivity caps 8h to 4h.
        assert_eq!(d.max_duration.0, Duration::from_secs(4 * 3600));
        assert_eq!(d.approvals, 1);
        assert_eq!(d.approvers.iter().collect::<Vec<_>>(), ["carol", "dave"]);
        assert_eq!(d.logins, ["postgres"]);
        let night = evaluate(&c, "alice", "pg", at(22, 30)).unwrap();
        assert_eq!(night.max_duration.0, Duration::from_secs(30 * 60));
        assert_eq!(night.approvals, 2);
        assert!(
            night
                .explain
                .iter()
                .any(|l| l.contains("rule 1 applies (outside hours 08:00-18:00)")),
            "{:?}",
            night.explain
        );
        // The second policy is reached only for what the first does not cover.
        let other = evaluate(&c, "alice", "other", at(12, 0)).unwrap();
        assert_eq!(other.policy, "later");
        assert_eq!(other.approvals, 0);
        assert!(other.explain[0].contains("does not cover \"other\""));
    }

    #[test]
    fn no_policy_explains_itself() {
        let c = config(POLICIES);
        let e = evaluate(&c, "carol", "pg", at(12, 0)).unwrap_err();
        assert!(e
            .explain
            .iter()
            .any(|l| l.contains("\"carol\" is not among its principals")));
        assert!(e
            .explain
            .last()
            .unwrap()
            .contains("no policy lets \"carol\" request \"pg\""));
    }

    #[test]
    fn day_rules_apply_on_their_days_only() {
        let c = config(
            r#"
[[policy]]
name = "weekend"
principals = ["alice"]
resources = ["other"]
max_duration = "2h"
approvals = 0
approvers = ["carol"]

[[policy.when]]
days = ["sat", "sun"]
approvals = 1
"#,
        );
        // Sunday: tightened to one approval.
        assert_eq!(
            evaluate(&c, "alice", "other", at(12, 0)).unwrap().approvals,
            1
        );
        // Monday.
        let monday = at(12, 0) + Duration::from_secs(86_400);
        assert_eq!(evaluate(&c, "alice", "other", monday).unwrap().approvals, 0);
    }

    #[test]
    fn impossible_approval_counts_are_config_errors() {
        let text = r#"
[[resource]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
backend = "127.0.0.1:5432"

[[user]]
name = "carol"
token_sha256 = "2222222222222222222222222222222222222222222222222222222222222222"

[[policy]]
name = "p"
principals = ["carol", "group:nobody"]
resources = ["pg", "nope"]
max_duration = "1h"
approvals = 2
approvers = ["carol"]
"#;
        let e = crate::config::parse_str(text, "f").unwrap_err().to_string();
        assert!(e.contains("no user or group named \"group:nobody\""), "{e}");
        assert!(e.contains("no resource named \"nope\""), "{e}");
        assert!(
            e.contains("needs up to 2 distinct approvals but lists 1 approver(s)"),
            "{e}"
        );
    }
}
