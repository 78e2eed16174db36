//! `jitgate serve`: logging set-up, the runtime, signals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use super::LogFormat;
use crate::config::TokenHash;
use crate::gateway::Gateway;

/// The token of the demo admin in `config.example.toml`. Never valid in
/// production: serving a config that accepts it logs a warning.
pub const DEMO_ADMIN_TOKEN: &str = "jitgate-demo-admin-token-DO-NOT-USE-IN-PRODUCTION";

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
    // Accept loops, the admin API and the clocks; connections run on the
    // worker threads (crate::workers).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("jitgate-main")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = crate::server::start(config).await?;
        let gw = running.gateway.clone();
        gw.listeners.set_path(config_path.to_path_buf());
        let watch = gw.config().gateway.watch_interval.0;
        if !watch.is_zero() {
            tokio::spawn(watch_file(gw.clone(), config_path.to_path_buf(), watch));
        }
        tracing::info!(config = %config_path.display(), "jitgate started");
        wait_for_signal(&gw).await;
        tracing::info!("shutting down: ending every session");
        running
            .shutdown(gw.config().gateway.shutdown_timeout.0)
            .await;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reload when the file's content changes (editors that replace the file
/// and symlink swaps are seen too, since the content is read each time).
async fn watch_file(gw: Arc<Gateway>, path: PathBuf, every: Duration) {
    let digest = |p: &Path| {
        std::fs::read(p)
            .ok()
            .map(|b| TokenHash::of_token(&String::from_utf8_lossy(&b)))
    };
    let mut last = digest(&path);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = digest(&path);
        if now.is_some() && now != last {
            last = now;
            tracing::info!(path = %path.display(), "configuration file changed");
            let _ = crate::reload::reload_file(&gw).await;
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal(gw: &Arc<Gateway>) {
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
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = crate::reload::reload_file(gw).await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal(_gw: &Arc<Gateway>) {
    let _ = tokio::signal::ctrl_c().await;
}
