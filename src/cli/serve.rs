//! `jitgate serve`: logging set-up, the runtime, signals.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use super::LogFormat;
use crate::config::TokenHash;

/// The token of the demo admin in `config.example.toml`. Never valid in
/// production: serving a config that accepts it logs a warning.
pub const DEMO_ADMIN_TOKEN: &str = "jitgate-demo-admin-token-DO-NOT-USE-IN-PRODUCTION";

/// How long shutdown waits for sessions to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Run the gateway until SIGINT or SIGTERM.
pub fn run(config_path: &Path, format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(format);
    let config = match crate::config::load_file(config_path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                tracing::error!("{e}");
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    // One TLS provider for the whole process (ring): installed before any
    // TLS configuration is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let demo = TokenHash::of_token(DEMO_ADMIN_TOKEN);
    for u in &config.users {
        if u.token_sha256.get_ref().ct_eq(&demo) {
            tracing::warn!(user = u.name(), "this user has the public demo token from config.example.toml; replace it (jitgate token new) before real use");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = crate::server::start(config).await?;
        tracing::info!(config = %config_path.display(), "jitgate started");
        wait_for_signal().await;
        tracing::info!("shutting down: ending every session");
        running.shutdown(SHUTDOWN_GRACE).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                tracing::warn!("SIGHUP: live configuration reload is not available in this version; restart to apply changes");
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
