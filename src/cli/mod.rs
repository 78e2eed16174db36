//! The command line: `serve`, `check-config`, and the client commands that
//! talk to the admin API. Errors are one clear line on stderr and a
//! non-zero exit code; tables for people, `--json` for scripts.

mod audit;
mod client;
mod serve;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::HumanDuration;

/// jitgate: just-in-time access to databases and servers.
#[derive(Debug, Parser)]
#[command(name = "jitgate", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options of the client commands.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Admin API address.
    #[arg(
        long,
        global = true,
        env = "JITGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    admin_url: String,
    /// API token (printed by `jitgate token new`).
    #[arg(long, global = true, env = "JITGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// PEM CA certificate that signed the admin API's certificate (for an
    /// https:// admin URL).
    #[arg(long, global = true, env = "JITGATE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, short, default_value = "jitgate.toml")]
        config: PathBuf,
        /// Log format (RUST_LOG filters what is logged, default "info").
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a configuration file; print each error with file:line:column.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Create a break-glass grant (admin), audited as such.
    Grant {
        /// The user the grant is for.
        principal: String,
        /// The resource it opens.
        resource: String,
        /// How long, e.g. 30m or 2h.
        #[arg(long = "for", value_name = "DURATION")]
        duration: HumanDuration,
        /// Database login to admit (repeatable); default: all of the user's logins.
        #[arg(long = "login", value_name = "NAME")]
        logins: Vec<String>,
        /// Client network (CIDR or address) to admit (repeatable). ssh/tcp
        /// resources: who is admitted, by default the address the admin API
        /// sees this command come from. postgres: an optional restriction.
        #[arg(long = "source", value_name = "CIDR")]
        sources: Vec<String>,
        /// Why (required, recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Ask for access; prints the request id and its state.
    Request {
        /// The resource.
        resource: String,
        /// How long, e.g. 30m or 2h (capped by policy).
        #[arg(long = "for", value_name = "DURATION")]
        duration: HumanDuration,
        /// Why (most policies require one).
        #[arg(long, default_value = "")]
        reason: String,
        /// Database login (repeatable); default: all the policy allows you.
        #[arg(long = "login", value_name = "NAME")]
        logins: Vec<String>,
        /// Client network (CIDR or address) to admit (repeatable). ssh/tcp
        /// resources: who is admitted, by default the address the admin API
        /// sees this command come from. postgres/mysql: an optional restriction.
        #[arg(long = "source", value_name = "CIDR")]
        sources: Vec<String>,
    },
    /// List access requests (approvers see all, requesters their own).
    Requests {
        /// Only pending requests.
        #[arg(long)]
        pending: bool,
    },
    /// Approve a request (you cannot approve your own).
    Approve {
        /// The request's id.
        request_id: String,
        /// A comment for the audit log.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a request.
    Deny {
        /// The request's id.
        request_id: String,
        /// Why (required, shown to the requester).
        #[arg(long)]
        reason: String,
    },
    /// Ask for more time on your grant (goes through the same policy).
    Extend {
        /// The grant's id.
        grant_id: String,
        /// How much longer, e.g. 30m.
        #[arg(long, value_name = "DURATION")]
        by: HumanDuration,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// End your own access now (its sessions are closed before this returns).
    Release {
        /// The grant's id.
        grant_id: String,
    },
    /// Policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// List grants.
    Grants,
    /// Revoke a grant: every session on it is closed before this returns.
    Revoke {
        /// The grant's id.
        grant_id: String,
        /// Why (shown to the client and audited).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List live sessions.
    Sessions,
    /// Kill one session.
    Kill {
        /// The session's id.
        session_id: String,
        /// Why (shown to the client and audited).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The audit log (offline: no gateway needed).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain across FILEs in order (rotated files oldest
    /// first, then audit.jsonl; a directory stands for all of its audit
    /// files). Prints `OK: N records` (exit 0) or the first broken line as
    /// FILE:LINE (exit 1); exit 2 if a file cannot be read.
    Verify {
        /// Audit files, or state directories.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The hash the first record must follow, when the files do not
        /// start at the beginning of the log (the last hash printed when
        /// the earlier files were verified). Default: 64 zeros.
        #[arg(long, value_name = "HASH")]
        after: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Which policy applies to PRINCIPAL asking for RESOURCE, what duration
    /// and approvals it would demand, and why.
    Explain {
        /// The user.
        principal: String,
        /// The resource.
        resource: String,
        /// Evaluate at this time (RFC 3339, e.g. 2026-12-01T22:00:00Z); default now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new token and the `token_sha256` line for the config.
    New {
        /// The user the token is for.
        name: String,
    },
}

/// Run the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let api = cli.api;
    match cli.command {
        Command::Serve { config, log_format } => return serve::run(&config, log_format),
        Command::CheckConfig { file } => return Ok(check_config(&file)),
        Command::Audit {
            command: AuditCommand::Verify { files, after },
        } => return Ok(audit::verify(&files, after.as_deref())),
        Command::Token {
            command: TokenCommand::New { name },
        } => {
            token_new(&name, api.json);
            Ok(())
        }
        Command::Grant {
            principal,
            resource,
            duration,
            logins,
            sources,
            reason,
        } => {
            let body = crate::api::CreateGrant {
                principal,
                resource,
                duration,
                logins: (!logins.is_empty()).then_some(logins),
                sources,
                reason,
            };
            runtime()?.block_on(client::grant(&api, body))
        }
        Command::Request {
            resource,
            duration,
            reason,
            logins,
            sources,
        } => {
            let body = crate::api::CreateRequest {
                resource,
                duration,
                reason,
                logins: (!logins.is_empty()).then_some(logins),
                sources,
            };
            runtime()?.block_on(client::request(&api, body))
        }
        Command::Requests { pending } => runtime()?.block_on(client::requests(&api, pending)),
        Command::Approve {
            request_id,
            comment,
        } => runtime()?.block_on(client::approve(&api, &request_id, comment)),
        Command::Deny { request_id, reason } => {
            runtime()?.block_on(client::deny(&api, &request_id, reason))
        }
        Command::Extend {
            grant_id,
            by,
            reason,
        } => runtime()?.block_on(client::extend(&api, &grant_id, by, reason)),
        Command::Release { grant_id } => runtime()?.block_on(client::release(&api, &grant_id)),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    principal,
                    resource,
                    at,
                },
        } => runtime()?.block_on(client::explain(&api, &principal, &resource, at.as_deref())),
        Command::Grants => runtime()?.block_on(client::grants(&api)),
        Command::Revoke { grant_id, reason } => {
            runtime()?.block_on(client::revoke(&api, &grant_id, &reason))
        }
        Command::Sessions => runtime()?.block_on(client::sessions(&api)),
        Command::Kill { session_id, reason } => {
            runtime()?.block_on(client::kill(&api, &session_id, &reason))
        }
    }
    .map(|()| ExitCode::SUCCESS)
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match crate::config::load_file(file) {
        Ok(c) => {
            println!(
                "{}: ok ({} resources, {} users)",
                file.display(),
                c.resources.len(),
                c.users.len()
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn token_new(name: &str, json: bool) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("jgt_{}", hex::encode(bytes));
    let hash = crate::config::TokenHash::of_token(&token).to_hex();
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "token": token, "token_sha256": hash})
        );
    } else {
        println!("token for {name}: {token}");
        println!(
            "give the token to {name} (export JITGATE_TOKEN=...); paste into their [[user]] entry:"
        );
        println!("token_sha256 = \"{hash}\"");
    }
}
