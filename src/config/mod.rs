//! Configuration model: the TOML file an operator writes, as typed structs.
//!
//! Invariants: every table denies unknown keys (a typo must never silently
//! weaken a policy); every field documents its default; secrets are held in
//! redacted newtypes so they never reach a log line or `Debug` output. Parsing
//! and semantic checks live in [`load`]; errors carry file:line:column.

mod load;
mod policy;
mod types;

pub use load::{load_file, parse_str, ConfigError, ConfigErrors};
pub use policy::{
    GroupConfig, NotifyConfig, PolicyConfig, PolicyRule, SensitivityConfig, TimeWindow, Weekday,
};
pub use types::{Cidr, HumanDuration, Secret, TokenHash};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: process-wide settings. Default: all defaults.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// `[[resource]]`: the backends jitgate guards. Default: none.
    #[serde(default, rename = "resource")]
    pub resources: Vec<ResourceConfig>,
    /// `[[user]]`: people and scripts that talk to the admin API. Default: none.
    #[serde(default, rename = "user")]
    pub users: Vec<UserConfig>,
    /// `[[group]]`: named sets of users for policies. Default: none.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupConfig>,
    /// `[[policy]]`: who may request what, for how long, approved by whom.
    /// The first policy (in file order) that matches a principal and a
    /// resource applies. Default: none (nobody can request access).
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
    /// `[sensitivity.NAME]`: defaults that tighten every policy on a
    /// resource with `sensitivity = "NAME"`. Default: none.
    #[serde(default)]
    pub sensitivity: std::collections::BTreeMap<String, SensitivityConfig>,
    /// `[[notify]]`: webhook sinks for workflow events. Default: none.
    #[serde(default, rename = "notify")]
    pub notify: Vec<NotifyConfig>,
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Directory for the grant journal and the audit log. Default `./data`.
    pub state_dir: PathBuf,
    /// Admin API, `/metrics` and `/healthz`. Default `127.0.0.1:8080`.
    pub admin_listen: SocketAddr,
    /// Optional separate listener that serves only `/metrics` (and `/healthz`). Default: none.
    pub metrics_listen: Option<SocketAddr>,
    /// A client that has not finished its protocol startup by then is dropped. Default `10s`.
    pub handshake_timeout: HumanDuration,
    /// Connecting to a backend gives up after this long. Default `5s`.
    pub backend_connect_timeout: HumanDuration,
    /// Lead times before a grant ends at which an in-band notice is sent
    /// (protocols that have one). Default `["5m", "1m"]`.
    pub expiry_warnings: Vec<HumanDuration>,
    /// Bytes read at once in each direction of a relayed session. Default `8192`
    /// (1024 to 1048576).
    pub relay_buffer_size: usize,
    /// Peers (load balancers) in these networks must start every connection
    /// to a resource with a PROXY protocol header (version 1 or 2), whose
    /// client address then stands for the peer's: it is what ssh/tcp grants
    /// are matched against and what the audit log records. Nobody else's
    /// header is read. A resource's own list replaces this one. Default: none.
    pub accept_proxy_protocol_from: Vec<Cidr>,
    /// Peers of the admin API (reverse proxies, load balancers) whose
    /// `X-Forwarded-For` header is believed when the API needs the caller's
    /// address (the default source of an ssh/tcp grant). Default: none (the
    /// TCP peer's address is used, and the header is ignored).
    pub trusted_proxies: Vec<Cidr>,
    /// Open client connections at most, all resources together; more are
    /// refused at accept (`0` = no limit). Default `10000`.
    pub max_connections: usize,
    /// Connections still in their handshake (no session yet) at most; more
    /// are refused at accept (`0` = no limit). Default `1000`.
    pub max_handshakes: usize,
    /// Connections still in their handshake from one source address at
    /// most, so that one address cannot hold all of `max_handshakes`; more
    /// are refused at accept (`0` = no limit). Admitted sessions do not
    /// count, nor do trusted PROXY-protocol peers. Default `0`: an
    /// application's connection pool behind one address may open more
    /// than any fixed number at once; set it where clients are people.
    pub max_handshakes_per_source: usize,
    /// New connections per second from one source address (`0` = no
    /// limit). Default `1000`.
    pub handshake_rate: u32,
    /// Burst allowed above `handshake_rate` from one address. Default `2000`.
    pub handshake_burst: u32,
    /// A pending access request not fully approved by then expires. Default `1h`.
    pub request_ttl: HumanDuration,
    /// Rotate `audit.jsonl` before a record would take it past this many
    /// bytes: it is renamed `audit-YYYYMMDDTHHMMSSmmmZ.jsonl` and the hash
    /// chain continues in a new `audit.jsonl`. `0` = never. Default
    /// `104857600` (100 MiB); at least 4096 unless 0.
    pub audit_rotate_bytes: u64,
    /// On SIGTERM/SIGINT, live sessions are told and closed; the process
    /// exits after at most this long. Default `10s`.
    pub shutdown_timeout: HumanDuration,
    /// How often the config file is checked for changes (a change is
    /// reloaded); `0s` = only on SIGHUP and `POST /v1/reload`. Default `2s`.
    pub watch_interval: HumanDuration,
    /// `[gateway.admin_tls]`: serve the admin API over HTTPS. Default: none.
    pub admin_tls: Option<TlsConfig>,
    /// An admin API client must send a request's headers within this long
    /// (also the longest an idle keep-alive connection is held), and then its
    /// body within this long again; otherwise 408 and the connection is
    /// closed. Applies to connections accepted after a reload. Default `10s`.
    pub admin_request_timeout: HumanDuration,
    /// Admin API connections served at once (each listener); more are
    /// closed at accept and counted as `limited_total{limit="admin_connections"}`,
    /// so a flood on the admin port cannot take the file descriptors the
    /// resources need. Read at start. Default `512`.
    pub admin_max_connections: usize,
    /// Threads that run the connections, each with its own event loop; a
    /// connection stays on one for its whole life. `0` (the default): one
    /// per CPU core the process may use. Read at start.
    pub worker_threads: usize,
    /// Busy polling: after a relay step moves bytes, a worker keeps polling
    /// its sockets for this long (yielding the core to any other runnable
    /// thread) instead of sleeping until the kernel wakes it. Cuts the
    /// wake-up from each round trip at the price of CPU; for a host whose
    /// cores jitgate does not share with busy neighbours (see
    /// docs/operations.md). `0s` (the default) is off; at most `10ms`.
    /// Read at start.
    pub busy_poll: HumanDuration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            state_dir: PathBuf::from("./data"),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            backend_connect_timeout: HumanDuration(Duration::from_secs(5)),
            expiry_warnings: vec![
                HumanDuration(Duration::from_secs(300)),
                HumanDuration(Duration::from_secs(60)),
            ],
            relay_buffer_size: 8192,
            accept_proxy_protocol_from: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            max_handshakes: 1000,
            max_handshakes_per_source: 0,
            handshake_rate: 1000,
            handshake_burst: 2000,
            request_ttl: HumanDuration(Duration::from_secs(3600)),
            audit_rotate_bytes: 100 << 20,
            shutdown_timeout: HumanDuration(Duration::from_secs(10)),
            watch_interval: HumanDuration(Duration::from_secs(2)),
            admin_tls: None,
            admin_request_timeout: HumanDuration(Duration::from_secs(10)),
            admin_max_connections: crate::admin::MAX_ADMIN_CONNECTIONS,
            worker_threads: 0,
            busy_poll: HumanDuration(Duration::ZERO),
        }
    }
}

/// The wire protocol of a resource, which decides how identity is read and
/// how an end of access is shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// PostgreSQL frontend/backend protocol 3.0.
    Postgres,
    /// MySQL / MariaDB client/server protocol.
    Mysql,
    /// SSH, identified by the client's source address.
    Ssh,
    /// Any TCP stream, identified by the client's source address.
    Tcp,
}

impl Protocol {
    /// The lowercase name used in config, metrics labels and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Ssh => "ssh",
            Protocol::Tcp => "tcp",
        }
    }

    /// Whether this build can serve the protocol.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            Protocol::Postgres | Protocol::Mysql | Protocol::Ssh | Protocol::Tcp
        )
    }

    /// Whether a client is identified by its source address (ssh, tcp)
    /// rather than by a login the protocol carries (postgres, mysql).
    pub fn identifies_by_source(self) -> bool {
        matches!(self, Protocol::Ssh | Protocol::Tcp)
    }

    /// Every protocol, in config order.
    pub const ALL: [Protocol; 4] = [
        Protocol::Postgres,
        Protocol::Mysql,
        Protocol::Ssh,
        Protocol::Tcp,
    ];
}

/// `[[resource]]`: one guarded backend and the address clients use for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// Unique name (letters, digits, `-`, `_`, `.`). Required.
    pub name: Spanned<String>,
    /// `postgres` | `mysql` | `ssh` | `tcp`. Required.
    pub protocol: Spanned<Protocol>,
    /// Address jitgate listens on for this resource. Required.
    pub listen: Spanned<SocketAddr>,
    /// Backend address, `host:port`. Required.
    pub backend: Spanned<String>,
    /// A session with no bytes in either direction for this long is closed;
    /// `0s` = never. Default `15m`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Hard cap on one session's length, whatever the grant says. Default `8h`.
    #[serde(default = "default_max_session")]
    pub max_session: Spanned<HumanDuration>,
    /// Open client connections on this resource at most; more are refused
    /// at accept (`0` = no limit beyond the gateway's). Default `0`.
    #[serde(default)]
    pub max_connections: usize,
    /// Names a `[sensitivity.NAME]` table whose limits tighten every policy
    /// on this resource. Default: none.
    #[serde(default)]
    pub sensitivity: Option<Spanned<String>>,
    /// `[resource.tls]`: TLS on the client leg. Default: none (plaintext).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `[resource.backend_tls]`: TLS towards the backend. Default: `disable`.
    #[serde(default)]
    pub backend_tls: Option<BackendTlsConfig>,
    /// `[resource.kill_account]`, MySQL/MariaDB only: the backend account
    /// jitgate logs in with, on a side connection, to run `KILL CONNECTION`
    /// on a session's backend thread when jitgate ends the session, so the
    /// statement it was running stops at once. Default: none (the backend
    /// socket is still closed, but a running statement may go on until the
    /// server notices).
    #[serde(default)]
    pub kill_account: Option<Spanned<KillAccount>>,
    /// Start each backend connection with a PROXY protocol version 2 header
    /// carrying the client's address, so the backend's logs show the real
    /// client (ssh and tcp resources; the backend must expect the header:
    /// HAProxy `accept-proxy`, nginx `proxy_protocol`; OpenSSH's sshd does
    /// not read one). Default `false`.
    #[serde(default = "default_false")]
    pub send_proxy_protocol: Spanned<bool>,
    /// This resource's own `accept_proxy_protocol_from` (see `[gateway]`),
    /// replacing the gateway's list; `[]` turns it off here. Default: the
    /// gateway's list.
    #[serde(default)]
    pub accept_proxy_protocol_from: Option<Vec<Cidr>>,
}

/// `[resource.tls]` / `[gateway.admin_tls]`: a certificate jitgate presents.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Required.
    pub cert: Spanned<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: Spanned<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate
    /// signed by one of them. Default: none (no client certificates).
    #[serde(default)]
    pub client_ca: Option<Spanned<PathBuf>>,
    /// Refuse clients that do not use TLS. Default `false`.
    #[serde(default)]
    pub require: bool,
    /// `login`: the protocol's user name is the identity (the backend
    /// authenticates it). `certificate`: the client certificate's subject CN
    /// or a SAN must also equal the login (needs `client_ca`). Default `login`.
    #[serde(default)]
    pub identity: TlsIdentity,
}

/// Which identity a TLS client must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsIdentity {
    /// The protocol user name only.
    #[default]
    Login,
    /// The certificate must name the login too.
    Certificate,
}

/// `[resource.backend_tls]`: TLS from jitgate to the backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// `disable` | `prefer` (TLS if the backend offers it, unverified) |
    /// `require` (TLS, unverified) | `verify-full` (TLS, certificate
    /// verified against `ca` and `server_name`). Default `disable`.
    #[serde(default)]
    pub mode: BackendTlsMode,
    /// PEM CA certificates for `verify-full`. Required for `verify-full`.
    #[serde(default)]
    pub ca: Option<Spanned<PathBuf>>,
    /// Name to verify the backend's certificate against. Default: the host
    /// part of `backend`.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// How jitgate uses TLS towards a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plaintext.
    #[default]
    Disable,
    /// TLS when offered, certificate not verified.
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate and name verified.
    VerifyFull,
}

/// `[resource.kill_account]`: a backend login for `KILL CONNECTION`. It needs
/// the right to kill other users' threads (MariaDB ≥ 10.5: `CONNECTION
/// ADMIN`; older MariaDB and MySQL 5.7: `SUPER`; MySQL 8: `CONNECTION_ADMIN`)
/// and `mysql_native_password` (or a cached `caching_sha2_password`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillAccount {
    /// The backend login. Required.
    pub user: String,
    /// Its password (redacted in logs and `Debug`). Default: empty.
    #[serde(default)]
    pub password: Secret,
}

fn default_false() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}

fn default_max_session() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration(Duration::from_secs(8 * 3600)))
}

impl ResourceConfig {
    /// The resource's name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
    /// The resource's protocol.
    pub fn protocol(&self) -> Protocol {
        *self.protocol.get_ref()
    }
    /// The configured listen address.
    pub fn listen(&self) -> SocketAddr {
        *self.listen.get_ref()
    }
    /// The backend address.
    pub fn backend(&self) -> &str {
        self.backend.get_ref()
    }
    /// Idle timeout, `None` when disabled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        Some(self.idle_timeout.0).filter(|d| !d.is_zero())
    }
    /// Session cap.
    pub fn max_session(&self) -> Duration {
        self.max_session.get_ref().0
    }
    /// Whether backend connections start with a PROXY protocol v2 header.
    pub fn send_proxy_protocol(&self) -> bool {
        *self.send_proxy_protocol.get_ref()
    }
    /// The peers that must send a PROXY protocol header: this resource's
    /// list, else the gateway's.
    pub fn accept_proxy_protocol_from<'a>(&'a self, gateway: &'a GatewayConfig) -> &'a [Cidr] {
        self.accept_proxy_protocol_from
            .as_deref()
            .unwrap_or(&gateway.accept_proxy_protocol_from)
    }
    /// The MySQL kill account, if configured.
    pub fn kill_account(&self) -> Option<&KillAccount> {
        self.kill_account.as_ref().map(|k| k.get_ref())
    }
}

/// A role on the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May ask for access and see their own grants and sessions.
    Requester,
    /// May review requests and see all grants and sessions.
    Approver,
    /// May do everything: break-glass grants, revoke, kill.
    Admin,
}

/// `[[user]]`: a person or script known to the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Unique name; the principal on grants and in the audit log. Required.
    pub name: Spanned<String>,
    /// Hex SHA-256 of the user's API token (`jitgate token new NAME` prints
    /// both). Required.
    pub token_sha256: Spanned<TokenHash>,
    /// Roles on the admin API. Default: `["requester"]`.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// Database logins this person may be granted. Default: none.
    #[serde(default)]
    pub logins: Vec<String>,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Requester]
}

impl UserConfig {
    /// The user's name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
    /// Whether the user holds `role` (admin implies every role).
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

impl Config {
    /// The resource called `name`.
    pub fn resource(&self, name: &str) -> Option<&ResourceConfig> {
        self.resources.iter().find(|r| r.name() == name)
    }
    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name() == name)
    }
    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name.get_ref() == name)
    }
    /// Expand user names and `group:NAME` references to user names.
    pub fn expand_members<'a>(
        &'a self,
        refs: impl IntoIterator<Item = &'a str>,
    ) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for r in refs {
            match r.strip_prefix("group:") {
                Some(g) => {
                    if let Some(g) = self.group(g) {
                        out.extend(g.member_names().map(str::to_string));
                    }
                }
                None => {
                    out.insert(r.to_string());
                }
            }
        }
        out
    }
}
