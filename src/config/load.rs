//! Reading a configuration file: TOML parsing, then the semantic checks that
//! types alone cannot express (unique names, supported protocols, sane
//! bounds). Every error names file, line and column so `check-config` output
//! can be clicked in an editor. A file with any error is rejected whole.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use super::{Config, Protocol};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given.
    pub file: String,
    /// 1-based line (0 when the error has no position, e.g. an unreadable file).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in a file (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read and validate the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse_str(&src, &file)
}

/// Parse and validate `src`; `file` is only used in error messages.
pub fn parse_str(src: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut errs = Errors {
        src,
        file,
        list: Vec::new(),
    };
    let config: Config = match toml::from_str(src) {
        Ok(c) => c,
        Err(e) => {
            // toml's message is multi-line with a snippet; the first line
            // after the location header is the useful part.
            errs.push(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return Err(ConfigErrors(errs.list));
        }
    };
    validate(&config, &mut errs);
    validate_workflow(&config, &mut errs);
    validate_tls(&config, &mut errs);
    if errs.list.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errs.list))
    }
}

struct Errors<'a> {
    src: &'a str,
    file: &'a str,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    /// An error about `[gateway] key`, placed at its value in the file.
    /// The checks run on the parsed values, which keep no positions; the
    /// key is found again in the text (it is there: defaults are valid).
    fn gateway(&mut self, key: &str, message: String) {
        let span = value_span(self.src, "gateway", key).unwrap_or(0..0);
        self.push(span, message);
    }

    fn push(&mut self, span: Range<usize>, message: String) {
        let (line, column) = if span.start == 0 && span.end == 0 {
            (0, 0)
        } else {
            line_col(self.src, span.start)
        };
        self.list.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message,
        });
    }
}

/// Where the value of `table.key` is in `src`, if it is there.
fn value_span(src: &str, table: &str, key: &str) -> Option<Range<usize>> {
    let doc = toml::de::DeTable::parse(src).ok()?;
    let (_, t) = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == table)?;
    let toml::de::DeValue::Table(t) = t.get_ref() else {
        return None;
    };
    t.iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v.span())
}

/// `span`, or `fallback` where `span` points nowhere (a value that took its
/// default has no place in the file).
fn or_span(span: Range<usize>, fallback: Range<usize>) -> Range<usize> {
    if span == (0..0) {
        fallback
    } else {
        span
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(src: &str, at: usize) -> (usize, usize) {
    let before = src.get(..at.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate(c: &Config, errs: &mut Errors<'_>) {
    let g = &c.gateway;
    if g.handshake_timeout.0.is_zero() {
        errs.gateway(
            "handshake_timeout",
            "gateway.handshake_timeout must be greater than 0s".into(),
        );
    }
    if g.worker_threads > 1024 {
        errs.gateway(
            "worker_threads",
            "gateway.worker_threads must be at most 1024 (0 = one per CPU core)".into(),
        );
    }
    if g.busy_poll.0 > std::time::Duration::from_millis(10) {
        errs.gateway(
            "busy_poll",
            "gateway.busy_poll must be at most 10ms (0s = off)".into(),
        );
    }
    if g.admin_max_connections == 0 {
        errs.gateway(
            "admin_max_connections",
            "gateway.admin_max_connections must be at least 1".into(),
        );
    }
    if g.admin_request_timeout.0.is_zero() {
        errs.gateway(
            "admin_request_timeout",
            "gateway.admin_request_timeout must be greater than 0s".into(),
        );
    }
    if g.backend_connect_timeout.0.is_zero() {
        errs.gateway(
            "backend_connect_timeout",
            "gateway.backend_connect_timeout must be greater than 0s".into(),
        );
    }
    if g.expiry_warnings.iter().any(|d| d.0.is_zero()) {
        errs.gateway(
            "expiry_warnings",
            "gateway.expiry_warnings: every lead time must be greater than 0s".into(),
        );
    }
    if !(1024..=1 << 20).contains(&g.relay_buffer_size) {
        errs.gateway(
            "relay_buffer_size",
            "gateway.relay_buffer_size must be between 1024 and 1048576".into(),
        );
    }
    if g.audit_rotate_bytes != 0 && g.audit_rotate_bytes < 4096 {
        errs.gateway(
            "audit_rotate_bytes",
            "gateway.audit_rotate_bytes must be 0 (never rotate) or at least 4096".into(),
        );
    }

    let mut names = HashSet::new();
    let mut listens = HashSet::new();
    for r in &c.resources {
        if !valid_name(r.name()) {
            errs.push(
                r.name.span(),
                format!(
                    "resource name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                    r.name()
                ),
            );
        }
        if !names.insert(r.name()) {
            errs.push(
                r.name.span(),
                format!("duplicate resource name {:?}", r.name()),
            );
        }
        if !r.protocol().is_supported() {
            let supported: Vec<&str> = Protocol::ALL
                .iter()
                .filter(|p| p.is_supported())
                .map(|p| p.as_str())
                .collect();
            errs.push(
                r.protocol.span(),
                format!(
                    "protocol {:?} is not supported by this build yet (supported: {})",
                    r.protocol().as_str(),
                    supported.join(", ")
                ),
            );
        }
        if r.send_proxy_protocol() && !r.protocol().identifies_by_source() {
            errs.push(
                r.send_proxy_protocol.span(),
                format!(
                    "send_proxy_protocol is only available on ssh and tcp resources, not {}",
                    r.protocol().as_str()
                ),
            );
        }
        if let Some(k) = &r.kill_account {
            if r.protocol() != Protocol::Mysql {
                errs.push(
                    k.span(),
                    "kill_account applies to protocol \"mysql\" only".into(),
                );
            } else if k.get_ref().user.is_empty() || k.get_ref().user.contains('\0') {
                errs.push(k.span(), "kill_account.user must be non-empty text".into());
            }
        }
        let listen = r.listen();
        if listen.port() != 0 && !listens.insert(listen) {
            errs.push(
                r.listen.span(),
                format!("listen address {listen} is used twice"),
            );
        }
        if listen.port() != 0 && (listen == g.admin_listen || Some(listen) == g.metrics_listen) {
            errs.push(
                r.listen.span(),
                format!("listen address {listen} is also the admin or metrics address"),
            );
        }
        if !backend_looks_valid(r.backend()) {
            errs.push(
                r.backend.span(),
                format!("backend {:?} must be host:port", r.backend()),
            );
        }
        if r.max_session().is_zero() {
            errs.push(
                r.max_session.span(),
                "max_session must be greater than 0s".into(),
            );
        }
        if r.protocol() == Protocol::Postgres && r.backend().is_empty() {
            errs.push(r.backend.span(), "backend must not be empty".into());
        }
    }

    let mut users = HashSet::new();
    let mut hashes: Vec<&super::TokenHash> = Vec::new();
    // A database session is known only by its login: a login two users
    // list would let either use the other's grant, recorded in the other's
    // name. Each login belongs to one user.
    let mut login_owner: std::collections::HashMap<&str, &str> = Default::default();
    for u in &c.users {
        for l in &u.logins {
            match login_owner.get(l.as_str()) {
                Some(&other) if other != u.name() => errs.push(
                    u.name.span(),
                    format!(
                        "user {:?}: login {l:?} is also listed by user {other:?}; a session is known only by its login, so each login belongs to one user",
                        u.name()
                    ),
                ),
                _ => {
                    login_owner.insert(l.as_str(), u.name());
                }
            }
        }
    }
    for u in &c.users {
        if !valid_name(u.name()) {
            errs.push(
                u.name.span(),
                format!(
                    "user name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                    u.name()
                ),
            );
        }
        if !users.insert(u.name()) {
            errs.push(u.name.span(), format!("duplicate user name {:?}", u.name()));
        }
        let h = u.token_sha256.get_ref();
        if hashes.iter().any(|o| o.ct_eq(h)) {
            errs.push(
                u.token_sha256.span(),
                format!("user {:?} shares its token with another user", u.name()),
            );
        }
        hashes.push(h);
        if u.logins.iter().any(|l| l.is_empty() || l.contains('\0')) {
            errs.push(
                u.name.span(),
                format!("user {:?}: logins must be non-empty text", u.name()),
            );
        }
    }
}

fn validate_workflow(c: &Config, errs: &mut Errors<'_>) {
    if c.gateway.request_ttl.0.is_zero() {
        errs.gateway(
            "request_ttl",
            "gateway.request_ttl must be greater than 0s".into(),
        );
    }
    let mut groups = HashSet::new();
    for g in &c.groups {
        if !valid_name(g.name.get_ref()) {
            errs.push(
                g.name.span(),
                format!(
                    "group name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                    g.name.get_ref()
                ),
            );
        }
        if !groups.insert(g.name.get_ref().as_str()) {
            errs.push(
                g.name.span(),
                format!("duplicate group name {:?}", g.name.get_ref()),
            );
        }
        for m in &g.members {
            if c.user(m.get_ref()).is_none() {
                errs.push(
                    m.span(),
                    format!(
                        "group {:?}: no user named {:?}",
                        g.name.get_ref(),
                        m.get_ref()
                    ),
                );
            }
        }
    }
    let member_ref = |r: &toml::Spanned<String>, what: &str, errs: &mut Errors<'_>| {
        let name = r.get_ref();
        let known = match name.strip_prefix("group:") {
            Some(g) => c.group(g).is_some(),
            None => c.user(name).is_some(),
        };
        if !known {
            errs.push(r.span(), format!("{what}: no user or group named {name:?}"));
        }
    };
    let mut policies = HashSet::new();
    for p in &c.policies {
        let pn = p.name();
        if !valid_name(pn) {
            errs.push(
                p.name.span(),
                format!("policy name {pn:?} must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        if !policies.insert(pn) {
            errs.push(p.name.span(), format!("duplicate policy name {pn:?}"));
        }
        if p.principals.is_empty() {
            errs.push(
                p.name.span(),
                format!("policy {pn:?}: principals must not be empty"),
            );
        }
        for r in &p.principals {
            member_ref(r, &format!("policy {pn:?} principals"), errs);
        }
        if p.resources.is_empty() {
            errs.push(
                p.name.span(),
                format!("policy {pn:?}: resources must not be empty"),
            );
        }
        for r in &p.resources {
            if c.resource(r.get_ref()).is_none() {
                errs.push(
                    r.span(),
                    format!("policy {pn:?}: no resource named {:?}", r.get_ref()),
                );
            }
        }
        for r in &p.approvers {
            member_ref(r, &format!("policy {pn:?} approvers"), errs);
        }
        if p.max_duration.get_ref().0.is_zero() {
            errs.push(
                p.max_duration.span(),
                format!("policy {pn:?}: max_duration must be greater than 0s"),
            );
        }
        let needed = *p.approvals.get_ref() as usize;
        let approvers = c.expand_members(p.approvers.iter().map(|a| a.get_ref().as_str()));
        let most = p.when.iter().filter_map(|w| w.approvals).max().unwrap_or(0) as usize;
        if needed.max(most) > approvers.len() {
            errs.push(
                or_span(p.approvals.span(), p.name.span()),
                format!(
                    "policy {pn:?}: needs up to {} distinct approvals but lists {} approver(s)",
                    needed.max(most),
                    approvers.len()
                ),
            );
        }
        for w in &p.when {
            if w.hours.is_some() && w.outside_hours.is_some() {
                let span = w.hours.as_ref().map(|h| h.span()).unwrap_or(0..0);
                errs.push(
                    span,
                    format!("policy {pn:?}: a rule takes hours or outside_hours, not both"),
                );
            }
            if w.max_duration.is_some_and(|d| d.0.is_zero()) {
                errs.push(
                    p.name.span(),
                    format!("policy {pn:?}: a rule's max_duration must be greater than 0s"),
                );
            }
        }
    }
    for r in &c.resources {
        if let Some(s) = &r.sensitivity {
            if !c.sensitivity.contains_key(s.get_ref()) {
                errs.push(s.span(), format!("no [sensitivity.{}] table", s.get_ref()));
            }
        }
    }
    for n in &c.notify {
        let url = n.url.get_ref();
        if !url.starts_with("http://")
            || url
                .parse::<axum::http::Uri>()
                .map_or(true, |u| u.host().is_none())
        {
            errs.push(n.url.span(), format!("notify url {url:?} must be http://host[:port]/path (https is not supported yet)"));
        }
        for e in &n.events {
            if !super::policy::NOTIFY_EVENTS.contains(&e.get_ref().as_str()) {
                errs.push(
                    e.span(),
                    format!(
                        "unknown notify event {:?} (known: {})",
                        e.get_ref(),
                        super::policy::NOTIFY_EVENTS.join(", ")
                    ),
                );
            }
        }
        if n.queue == 0 || n.attempts == 0 || n.timeout.0.is_zero() {
            errs.push(
                n.url.span(),
                "notify: queue, attempts and timeout must be greater than 0".into(),
            );
        }
    }
}

fn validate_tls(c: &Config, errs: &mut Errors<'_>) {
    use super::{BackendTlsMode, TlsIdentity};
    let check = |t: &super::TlsConfig, what: &str, errs: &mut Errors<'_>| {
        if let Err(e) = crate::tls::server_config(t, &[]) {
            errs.push(t.cert.span(), format!("{what}: {e}"));
        }
        if t.identity == TlsIdentity::Certificate && t.client_ca.is_none() {
            errs.push(
                t.cert.span(),
                format!("{what}: identity = \"certificate\" needs client_ca"),
            );
        }
    };
    if let Some(t) = &c.gateway.admin_tls {
        check(t, "gateway.admin_tls", errs);
    }
    for r in &c.resources {
        if r.protocol().identifies_by_source() {
            // ssh and tcp streams are passed through as they are; a TLS
            // table there would be silently ignored, so it is an error.
            let what = r.protocol().as_str();
            if let Some(t) = &r.tls {
                errs.push(
                    t.cert.span(),
                    format!(
                        "resource {:?}: [resource.tls] is not available on {what} resources",
                        r.name()
                    ),
                );
            }
            if r.backend_tls.is_some() {
                errs.push(
                    r.backend.span(),
                    format!("resource {:?}: [resource.backend_tls] is not available on {what} resources", r.name()),
                );
            }
            continue;
        }
        if let Some(t) = &r.tls {
            check(t, &format!("resource {:?} tls", r.name()), errs);
        }
        if let Some(b) = &r.backend_tls {
            if b.mode == BackendTlsMode::VerifyFull && b.ca.is_none() {
                errs.push(
                    r.backend.span(),
                    format!(
                        "resource {:?}: backend_tls mode verify-full needs `ca`",
                        r.name()
                    ),
                );
            } else if let Err(e) = crate::tls::backend_tls(Some(b), r.backend()) {
                let span = b.ca.as_ref().map_or_else(|| r.backend.span(), |c| c.span());
                errs.push(span, format!("resource {:?} backend_tls: {e}", r.name()));
            }
        }
    }
}

fn backend_looks_valid(b: &str) -> bool {
    match b.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(src, 9), (2, 3));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str("", "x.toml").unwrap();
        assert_eq!(c.gateway.handshake_timeout.0.as_secs(), 10);
        assert_eq!(c.gateway.expiry_warnings.len(), 2);
        assert!(c.resources.is_empty());
    }

    #[test]
    fn busy_poll_is_off_by_default_and_bounded() {
        let c = parse_str("", "x.toml").unwrap();
        assert!(c.gateway.busy_poll.0.is_zero());
        let c = parse_str("[gateway]\nbusy_poll = \"50us\"\n", "x.toml").unwrap();
        assert_eq!(c.gateway.busy_poll.0, std::time::Duration::from_micros(50));
        let e = parse_str("[gateway]\nbusy_poll = \"1s\"\n", "x.toml").unwrap_err();
        assert!(
            e.0.iter()
                .any(|e| e.message.contains("busy_poll must be at most 10ms")),
            "{e:?}"
        );
    }

    #[test]
    fn worker_threads_defaults_to_one_per_core_and_is_bounded() {
        let c = parse_str("", "x.toml").unwrap();
        assert_eq!(c.gateway.worker_threads, 0);
        let c = parse_str("[gateway]\nworker_threads = 3\n", "x.toml").unwrap();
        assert_eq!(c.gateway.worker_threads, 3);
        let e = parse_str("[gateway]\nworker_threads = 5000\n", "x.toml").unwrap_err();
        assert!(
            e.0.iter()
                .any(|e| e.message.contains("worker_threads must be at most 1024")),
            "{e:?}"
        );
    }

    #[test]
    fn gateway_and_defaulted_values_are_reported_with_a_position() {
        // A gateway setting: at its value.
        let src =
            "[gateway]\nstate_dir = \"x\"\nhandshake_timeout = \"0s\"\nrequest_ttl = \"0s\"\n";
        let e = parse_str(src, "gw.toml").unwrap_err();
        let at: Vec<_> = e.0.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(3, 21), (4, 15)], "{e}");
        assert!(
            e.to_string()
                .starts_with("gw.toml:3:21: gateway.handshake_timeout must be greater than 0s"),
            "{e}"
        );
        // A policy whose approvals took the default (1) but that lists no
        // approver: at the policy's name, since `approvals` is not written.
        let src = "\n[[policy]]\nname = \"p\"\nprincipals = [\"alice\"]\nresources = [\"pg\"]\nmax_duration = \"1h\"\n";
        let e = parse_str(src, "p.toml").unwrap_err();
        let e =
            e.0.iter()
                .find(|e| e.message.contains("distinct approvals"))
                .unwrap_or_else(|| panic!("{e:?}"));
        assert_eq!((e.line, e.column), (3, 8), "{e}");
    }

    #[test]
    fn a_login_belongs_to_one_user() {
        let user = |name: &str, token: &str, logins: &str| {
            format!(
                "[[user]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nlogins = {logins}\n",
                token.repeat(64)
            )
        };
        let src =
            user("alice", "a", r#"["alice", "app"]"#) + &user("bob", "b", r#"["bob", "app"]"#);
        let e = parse_str(&src, "u.toml").unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(
            e.0[0]
                .message
                .contains("login \"app\" is also listed by user \"alice\""),
            "{e}"
        );
        assert_eq!(e.0[0].line, 6, "at bob's name: {e}");
        let src = user("alice", "a", r#"["alice", "app"]"#) + &user("bob", "b", r#"["bob"]"#);
        parse_str(&src, "u.toml").unwrap();
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let src = "[gateway]\nstate_dir = \"x\"\nhandshake_timeuot = \"5s\"\n";
        let e = parse_str(src, "bad.toml").unwrap_err();
        assert_eq!(e.0.len(), 1);
        let e = &e.0[0];
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("handshake_timeuot"), "{e}");
        assert!(e.to_string().starts_with("bad.toml:3:1: "), "{e}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let src = r#"
[[resource]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:7000"
backend = "127.0.0.1:5432"

[[resource]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:7000"
backend = "nowhere"

[resource.kill_account]
user = "k"
"#;
        let e = parse_str(src, "f.toml").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("f.toml:9:8: duplicate resource name \"pg\""),
            "{text}"
        );
        assert!(
            text.contains("f.toml:14:1: kill_account applies to protocol \"mysql\" only"),
            "{text}"
        );
        assert!(
            text.contains("f.toml:11:10: listen address 127.0.0.1:7000 is used twice"),
            "{text}"
        );
        assert!(
            text.contains("f.toml:12:11: backend \"nowhere\" must be host:port"),
            "{text}"
        );
    }

    #[test]
    fn proxy_protocol_settings_parse_and_are_checked() {
        let src = r#"
[gateway]
accept_proxy_protocol_from = ["10.0.0.0/8"]
trusted_proxies = ["192.0.2.1"]

[[resource]]
name = "bastion"
protocol = "ssh"
listen = "127.0.0.1:2222"
backend = "127.0.0.1:22"
send_proxy_protocol = true
accept_proxy_protocol_from = []

[[resource]]
name = "raw"
protocol = "tcp"
listen = "127.0.0.1:7001"
backend = "127.0.0.1:7000"
"#;
        let c = parse_str(src, "f.toml").unwrap();
        let (ssh, tcp) = (&c.resources[0], &c.resources[1]);
        assert!(ssh.send_proxy_protocol());
        assert!(ssh.accept_proxy_protocol_from(&c.gateway).is_empty());
        assert!(!tcp.send_proxy_protocol());
        assert_eq!(tcp.accept_proxy_protocol_from(&c.gateway).len(), 1);
        assert_eq!(c.gateway.trusted_proxies[0].to_string(), "192.0.2.1/32");

        let bad = r#"
[gateway]
trusted_proxies = ["10.0.0.0/40"]

[[resource]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:7000"
backend = "127.0.0.1:5432"
send_proxy_protocol = true
"#;
        let e = parse_str(bad, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains("f.toml:3:19: \"10.0.0.0/40\" is not a CIDR"),
            "{e}"
        );
        let tls = "[[resource]]\nname = \"t\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:7003\"\nbackend = \"h:1\"\n[resource.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let e = parse_str(tls, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "f.toml:7:8: resource \"t\": [resource.tls] is not available on tcp resources"
            ),
            "{e}"
        );
        let bad = bad.replace("[\"10.0.0.0/40\"]", "[]");
        let e = parse_str(&bad, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "f.toml:10:23: send_proxy_protocol is only available on ssh and tcp resources"
            ),
            "{e}"
        );
    }

    #[test]
    fn unsupported_protocols_are_named_with_the_supported_ones() {
        let Some(p) = Protocol::ALL.iter().find(|p| !p.is_supported()) else {
            return; // every protocol is supported: nothing to refuse
        };
        let src = format!(
            "[[resource]]\nname = \"x\"\nprotocol = \"{}\"\nlisten = \"127.0.0.1:7001\"\nbackend = \"h:1\"\n",
            p.as_str()
        );
        let text = parse_str(&src, "f.toml").unwrap_err().to_string();
        assert!(text.contains("f.toml:3:12: protocol"), "{text}");
        assert!(text.contains("(supported: postgres, mysql"), "{text}");
    }

    #[test]
    fn a_mysql_kill_account_is_accepted_and_its_password_redacted() {
        let src = "[[resource]]\nname = \"m\"\nprotocol = \"mysql\"\nlisten = \"127.0.0.1:7002\"\nbackend = \"h:3306\"\n[resource.kill_account]\nuser = \"jitgate_kill\"\npassword = \"s3cret\"\n";
        let c = parse_str(src, "f.toml").unwrap();
        let k = c.resources[0].kill_account().unwrap();
        assert_eq!(
            (k.user.as_str(), k.password.expose()),
            ("jitgate_kill", "s3cret")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = parse_str(
            include_str!("../../config.example.toml"),
            "config.example.toml",
        )
        .unwrap();
        let maria = c.resource("prod-maria").unwrap();
        assert_eq!(maria.protocol(), Protocol::Mysql);
        assert_eq!(maria.backend(), "127.0.0.1:3306");
        assert!(maria.kill_account().is_some());
        let alice = c.user("alice").unwrap();
        assert!(alice.logins.iter().any(|l| l == "root"));
    }

    #[test]
    fn bad_duration_and_hash_are_errors() {
        let e = parse_str("[gateway]\nhandshake_timeout = \"soon\"\n", "f").unwrap_err();
        assert!(e.to_string().contains("f:2:21: invalid duration"), "{e}");
        let e = parse_str("[[user]]\nname = \"a\"\ntoken_sha256 = \"abc\"\n", "f").unwrap_err();
        assert!(
            e.to_string()
                .contains("f:3:16: token_sha256 must be 64 hex digits"),
            "{e}"
        );
    }
}
