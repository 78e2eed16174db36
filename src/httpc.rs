//! A minimal HTTP/1.1 client (hyper) for jitgate's own outbound calls: the
//! CLI talking to the admin API and webhook deliveries. One request per
//! connection, bounded answer size, caller-chosen timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("invalid URL {0:?}: expected http://host[:port][/path]")]
    Url(String),
    /// Connecting or talking to the server failed.
    #[error("{0}")]
    Io(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// TLS set-up or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
}

/// The parts of an `http://` or `https://` URL a call needs.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// Parse `http://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Target, HttpError> {
        Self::parse_with_ca(url, None)
    }

    /// Parse `http://…` or `https://…`; HTTPS verifies the server against
    /// the PEM CA certificates in `ca` (required for HTTPS).
    pub fn parse_with_ca(url: &str, ca: Option<&Path>) -> Result<Target, HttpError> {
        let uri: Uri = url.parse().map_err(|_| HttpError::Url(url.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(HttpError::Url(url.to_string())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::Url(url.to_string()))?;
        let tls = if https {
            let ca = ca.ok_or_else(|| {
                HttpError::Tls(
                    "https:// needs the CA certificate that signed the server's (--ca FILE)".into(),
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::tls::load_certs(ca).map_err(|e| HttpError::Tls(e.to_string()))? {
                roots.add(c).map_err(|e| HttpError::Tls(e.to_string()))?;
            }
            let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| HttpError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(cfg))
        } else {
            None
        };
        Ok(Target {
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            tls,
        })
    }

    /// The URL's path (and query).
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Send one request to `target` with `path` (absolute, replacing the URL's
/// own), extra headers and a body; return the status and at most `max_body`
/// bytes of the answer.
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), HttpError> {
    let io = |e: &dyn std::fmt::Display| HttpError::Io(e.to_string());
    let fut = async {
        let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| HttpError::Io(format!("connecting to {}: {e}", target.authority)))?;
        let mut sender = match &target.tls {
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| io(&e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
            Some(cfg) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| HttpError::Tls(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| HttpError::Tls(e.to_string()))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| io(&e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, target.authority.as_str());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| io(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| io(&e))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| HttpError::Io(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}
