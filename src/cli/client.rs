//! The admin API client behind the CLI's client commands: one HTTP/1.1
//! request per command (hyper), JSON in and out.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::table;
use super::ApiArgs;
use crate::api::{Closed, CreateGrant, ErrorBody, GrantView, SessionView};

/// Give up on the API after this long (a revoke waits for sockets to close,
/// which the server bounds at 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read from the API.
const MAX_RESPONSE: usize = 64 << 20;

async fn call<T: DeserializeOwned>(
    api: &ApiArgs,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> anyhow::Result<T> {
    let base: Uri = api
        .admin_url
        .parse()
        .with_context(|| format!("invalid --admin-url {:?}", api.admin_url))?;
    if base.scheme_str() != Some("http") {
        bail!("--admin-url must start with http:// (TLS for the admin API is not available in this version)");
    }
    let authority = base
        .authority()
        .ok_or_else(|| anyhow!("--admin-url {:?} has no host", api.admin_url))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let prefix = base.path().trim_end_matches('/');
    let token = api
        .token
        .as_deref()
        .ok_or_else(|| anyhow!("no API token: set JITGATE_TOKEN or pass --token"))?;

    let fut = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot reach the admin API at {}", api.admin_url))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{prefix}{path}"))
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the API's answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        serde_json::from_slice::<T>(&body).context("the API's answer is not the expected JSON")
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("the admin API did not answer within {REQUEST_TIMEOUT:?}"))?
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// "2026-11-29T21:30:00Z (in 29m)".
fn when(rfc3339: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(rfc3339) else {
        return rfc3339.to_string();
    };
    let stamp = crate::timefmt::rfc3339_seconds(t);
    match t.duration_since(SystemTime::now()) {
        Ok(left) => format!(
            "{stamp} (in {})",
            crate::config::HumanDuration(Duration::from_secs(left.as_secs()))
        ),
        Err(_) => format!("{stamp} (passed)"),
    }
}

fn grant_rows(grants: &[GrantView]) -> String {
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            vec![
                g.id.to_string(),
                g.principal.clone(),
                g.resource.clone(),
                if g.logins.is_empty() {
                    "-".into()
                } else {
                    g.logins.join(",")
                },
                if g.sources.is_empty() {
                    "any".into()
                } else {
                    g.sources.join(",")
                },
                when(&g.expires_at),
                g.actor.clone(),
                g.reason.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "ID",
            "PRINCIPAL",
            "RESOURCE",
            "LOGINS",
            "SOURCES",
            "EXPIRES",
            "BY",
            "REASON",
        ],
        &rows,
    )
}

/// `jitgate grant`.
pub async fn grant(api: &ApiArgs, body: CreateGrant) -> anyhow::Result<()> {
    let g: GrantView = call(api, Method::POST, "/v1/grants", Some(&body)).await?;
    if api.json {
        return print_json(&g);
    }
    println!("granted {}", g.id);
    print!("{}", grant_rows(std::slice::from_ref(&g)));
    Ok(())
}

/// `jitgate grants`.
pub async fn grants(api: &ApiArgs) -> anyhow::Result<()> {
    let v: Vec<GrantView> = call(api, Method::GET, "/v1/grants", None::<&()>).await?;
    if api.json {
        return print_json(&v);
    }
    if v.is_empty() {
        println!("no active grants");
    } else {
        print!("{}", grant_rows(&v));
    }
    Ok(())
}

fn with_reason(path: String, reason: &str) -> String {
    if reason.is_empty() {
        return path;
    }
    let encoded: String = reason
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{path}?reason={encoded}")
}

/// `jitgate revoke`.
pub async fn revoke(api: &ApiArgs, id: &str, reason: &str) -> anyhow::Result<()> {
    let path = with_reason(format!("/v1/grants/{}", path_segment(id)?), reason);
    let c: Closed = call(api, Method::DELETE, &path, None::<&()>).await?;
    if api.json {
        return print_json(&c);
    }
    println!("revoked {}: {} session(s) closed", c.id, c.sessions_closed);
    Ok(())
}

/// `jitgate sessions`.
pub async fn sessions(api: &ApiArgs) -> anyhow::Result<()> {
    let v: Vec<SessionView> = call(api, Method::GET, "/v1/sessions", None::<&()>).await?;
    if api.json {
        return print_json(&v);
    }
    if v.is_empty() {
        println!("no live sessions");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.principal.clone(),
                if s.login.is_empty() {
                    "-".into()
                } else {
                    s.login.clone()
                },
                s.resource.clone(),
                s.client_addr.clone(),
                s.started_at.clone(),
                when(&s.deadline),
                crate::config::HumanDuration(Duration::from_secs(s.idle_ms / 1000)).to_string(),
                s.bytes_up.to_string(),
                s.bytes_down.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ID",
                "PRINCIPAL",
                "LOGIN",
                "RESOURCE",
                "CLIENT",
                "SINCE",
                "EXPIRES",
                "IDLE",
                "BYTES_UP",
                "BYTES_DOWN"
            ],
            &rows
        )
    );
    Ok(())
}

/// `jitgate kill`.
pub async fn kill(api: &ApiArgs, id: &str, reason: &str) -> anyhow::Result<()> {
    let path = with_reason(format!("/v1/sessions/{}", path_segment(id)?), reason);
    let c: Closed = call(api, Method::DELETE, &path, None::<&()>).await?;
    if api.json {
        return print_json(&c);
    }
    println!("killed session {}: {} closed", c.id, c.sessions_closed);
    Ok(())
}

fn path_segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("{id:?} is not a valid id");
    }
    Ok(id)
}
