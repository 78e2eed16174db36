//! Configuration model: the TOML file an operator writes, as typed structs.
//!
//! Invariants: every table denies unknown keys (a typo must never silently
//! weaken a policy); every field documents its default; secrets are held in
//! redacted newtypes so they never reach a log line or `Debug` output. Parsing
//! and semantic checks live in [`load`]; errors carry file:line:column.

mod load;
mod types;

pub use load::{load_file, parse_str, ConfigError, ConfigErrors};
pub use types::{HumanDuration, Secret, TokenHash};

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
        matches!(self, Protocol::Postgres | Protocol::Mysql)
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
    /// `[resource.kill_account]`, MySQL/MariaDB only: the backend account
    /// jitgate logs in with, on a side connection, to run `KILL CONNECTION`
    /// on a session's backend thread when jitgate ends the session, so the
    /// statement it was running stops at once. Default: none (the backend
    /// socket is still closed, but a running statement may go on until the
    /// server notices).
    #[serde(default)]
    pub kill_account: Option<Spanned<KillAccount>>,
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
}
