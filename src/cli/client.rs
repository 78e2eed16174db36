//! The admin API client behind the CLI's client commands: one HTTP/1.1
//! request per command (hyper), JSON in and out.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use hyper::body::Bytes;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::table;
use super::ApiArgs;
use crate::api::{
    ApproveBody, Closed, CreateGrant, CreateRequest, DenyBody, ErrorBody, ExplainView, ExtendBody,
    GrantView, RequestView, SessionView,
};
use crate::config::HumanDuration;
use crate::httpc::{self, Target};

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
    let target = Target::parse_with_ca(&api.admin_url, api.ca.as_deref()).map_err(|e| match e {
        httpc::HttpError::Url(_) => anyhow!(
            "--admin-url {:?} must be http://host[:port] or https://host[:port]",
            api.admin_url
        ),
        e => anyhow!("{e}"),
    })?;
    let token = api
        .token
        .as_deref()
        .ok_or_else(|| anyhow!("no API token: set JITGATE_TOKEN or pass --token"))?;
    let bytes = match body {
        Some(b) => Bytes::from(serde_json::to_vec(b)?),
        None => Bytes::new(),
    };
    let prefix = target.path().trim_end_matches('/');
    let headers = [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_string()),
    ];
    let (status, body) = httpc::call(
        &target,
        method,
        &format!("{prefix}{path}"),
        &headers,
        bytes,
        REQUEST_TIMEOUT,
        MAX_RESPONSE,
    )
    .await
    .map_err(|e| match e {
        httpc::HttpError::Timeout(t) => anyhow!("the admin API did not answer within {t:?}"),
        e => anyhow!("cannot reach the admin API at {}: {e}", api.admin_url),
    })?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        bail!("{msg} (HTTP {status})");
    }
    serde_json::from_slice::<T>(&body).context("the API's answer is not the expected JSON")
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
    format!("{path}?reason={}", query_value(reason))
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

fn print_request(r: &RequestView) {
    for n in &r.notes {
        println!("note: {n}");
    }
    match r.state {
        crate::requests::RequestState::Approved => {
            let grant = r.grant_id.map(|g| g.to_string()).unwrap_or_default();
            if r.approvals.is_empty() {
                println!(
                    "request {} auto-approved by policy {}: grant {grant} for {}",
                    r.id, r.policy, r.duration
                );
            } else {
                println!(
                    "request {} approved: grant {grant} for {}",
                    r.id, r.duration
                );
            }
        }
        crate::requests::RequestState::Pending => println!(
            "request {} pending: {}/{} approval(s) from {} (policy {}, expires {})",
            r.id,
            r.approvals.len(),
            r.approvals_needed,
            r.approvers.join(", "),
            r.policy,
            when(&r.expires_at)
        ),
        crate::requests::RequestState::Denied => println!(
            "request {} denied by {}: {}",
            r.id,
            r.denied_by.as_deref().unwrap_or("?"),
            r.deny_reason.as_deref().unwrap_or("")
        ),
        crate::requests::RequestState::Expired => println!("request {} expired", r.id),
    }
}

/// `jitgate request`.
pub async fn request(api: &ApiArgs, body: CreateRequest) -> anyhow::Result<()> {
    let r: RequestView = call(api, Method::POST, "/v1/requests", Some(&body)).await?;
    if api.json {
        return print_json(&r);
    }
    print_request(&r);
    Ok(())
}

/// `jitgate requests`.
pub async fn requests(api: &ApiArgs, pending: bool) -> anyhow::Result<()> {
    let path = if pending {
        "/v1/requests?state=pending"
    } else {
        "/v1/requests"
    };
    let v: Vec<RequestView> = call(api, Method::GET, path, None::<&()>).await?;
    if api.json {
        return print_json(&v);
    }
    if v.is_empty() {
        println!("no requests");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.kind.clone(),
                r.principal.clone(),
                r.resource.clone(),
                format!("{:?}", r.state).to_lowercase(),
                r.duration.to_string(),
                format!("{}/{}", r.approvals.len(), r.approvals_needed),
                r.policy.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ID",
                "KIND",
                "PRINCIPAL",
                "RESOURCE",
                "STATE",
                "FOR",
                "APPROVALS",
                "POLICY",
                "REASON"
            ],
            &rows
        )
    );
    Ok(())
}

/// `jitgate approve`.
pub async fn approve(api: &ApiArgs, id: &str, comment: String) -> anyhow::Result<()> {
    let path = format!("/v1/requests/{}/approve", path_segment(id)?);
    let r: RequestView = call(api, Method::POST, &path, Some(&ApproveBody { comment })).await?;
    if api.json {
        return print_json(&r);
    }
    print_request(&r);
    Ok(())
}

/// `jitgate deny`.
pub async fn deny(api: &ApiArgs, id: &str, reason: String) -> anyhow::Result<()> {
    let path = format!("/v1/requests/{}/deny", path_segment(id)?);
    let r: RequestView = call(api, Method::POST, &path, Some(&DenyBody { reason })).await?;
    if api.json {
        return print_json(&r);
    }
    print_request(&r);
    Ok(())
}

/// `jitgate extend`.
pub async fn extend(
    api: &ApiArgs,
    id: &str,
    by: HumanDuration,
    reason: String,
) -> anyhow::Result<()> {
    let path = format!("/v1/grants/{}/extend", path_segment(id)?);
    let r: RequestView = call(api, Method::POST, &path, Some(&ExtendBody { by, reason })).await?;
    if api.json {
        return print_json(&r);
    }
    print_request(&r);
    Ok(())
}

/// `jitgate release`.
pub async fn release(api: &ApiArgs, id: &str) -> anyhow::Result<()> {
    let path = format!("/v1/grants/{}/release", path_segment(id)?);
    let c: Closed = call(api, Method::POST, &path, None::<&()>).await?;
    if api.json {
        return print_json(&c);
    }
    println!("released {}: {} session(s) closed", c.id, c.sessions_closed);
    Ok(())
}

fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `jitgate policy explain`.
pub async fn explain(
    api: &ApiArgs,
    principal: &str,
    resource: &str,
    at: Option<&str>,
) -> anyhow::Result<()> {
    let mut path = format!(
        "/v1/policy/explain?principal={}&resource={}",
        query_value(principal),
        query_value(resource)
    );
    if let Some(at) = at {
        path.push_str(&format!("&at={}", query_value(at)));
    }
    let v: ExplainView = call(api, Method::GET, &path, None::<&()>).await?;
    if api.json {
        return print_json(&v);
    }
    println!("{} asking for {} at {}:", v.principal, v.resource, v.at);
    for line in &v.explain {
        println!("  {line}");
    }
    if !v.allowed {
        return Err(anyhow!(
            "no policy lets {} request {}",
            v.principal,
            v.resource
        ));
    }
    Ok(())
}
