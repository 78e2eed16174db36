//! jitgate: a just-in-time access gateway.
//!
//! A tokio proxy between clients and PostgreSQL, MySQL/MariaDB, SSH or any
//! TCP service. Access is granted only for a limited time; every connection
//! is checked against the in-memory grant table, and when a grant ends the
//! live sockets are closed at once, with the reason shown in the client's
//! own protocol where it has a way to show one. Where things live:
//!
//! - [`server`]: bind listeners, accept loops (PROXY protocol from trusted
//!   load balancers), shutdown; [`accept`]: accepting when file
//!   descriptors run out; [`conn`]: a connection leg, plaintext or
//!   TLS; [`socket`]: socket chores shared by handlers;
//! - [`admission`]: where every connection is let in or refused;
//! - [`relay`]: bytes both ways and where a session is killed, for every
//!   protocol; [`postgres`] and [`mysql`]: one connection from its first
//!   byte to close, and each protocol's [`relay::Wire`]; [`ssh`] and
//!   [`tcp`]: SSH and plain TCP, identified by source address, relayed
//!   opaquely;
//! - [`grants`] and [`sessions`]: the grant table and the live-session
//!   registry with its kill switches; [`enforce`]: each session's clock;
//! - [`gateway`]: the access operations (grant, revoke, kill) and their audit;
//!   [`workflow`]: requests, approvals, extensions, release; [`policy`]:
//!   which policy applies and what it demands; [`requests`]: the request
//!   state machine; [`notify`]: webhooks;
//! - [`admin`]: the HTTP API; [`cli`]: the command line;
//! - [`config`], [`audit`], [`metrics`].
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![warn(missing_docs)]

pub mod accept;
pub mod admin;
pub mod admission;
pub mod api;
pub mod audit;
pub mod bufpool;
pub mod cli;
pub mod config;
pub mod conn;
pub mod ending;
pub mod enforce;
pub mod gateway;
pub mod grants;
pub mod httpc;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod mysql;
pub mod notify;
pub mod policy;
pub mod postgres;
pub mod relay;
pub mod reload;
pub mod requests;
pub mod server;
pub mod sessions;
pub mod socket;
pub mod ssh;
pub mod tcp;
pub mod timefmt;
pub mod tls;
pub mod workers;
pub mod workflow;
