//! TLS material: the server side of the client leg (per resource and for the
//! admin API), the client side of the backend leg, and certificate
//! identities.
//!
//! Invariants: one crypto provider throughout (ring), passed explicitly so
//! no process default is relied on; rustls defaults for versions (TLS 1.2
//! and 1.3) and cipher suites. Certificates rotate without a restart: a
//! [`ServerTls`] re-reads its files when their size or modification time
//! changes (checked at most once a second, on the next handshake), and a
//! reload that fails keeps the old material; live sessions keep the
//! connection they have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{BackendTlsConfig, BackendTlsMode, TlsConfig};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(String),
}

/// The crypto provider jitgate uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |what: String| TlsError::File {
        path: path.display().to_string(),
        what,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Read a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        what: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(path)? {
        store.add(c).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
    }
    Ok(store)
}

/// Build a server configuration; `alpn` lists the protocols offered
/// (empty: no ALPN).
pub fn server_config(cfg: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cfg.cert.get_ref())?;
    let key = load_key(cfg.key.get_ref())?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca.get_ref())?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", cfg.key.get_ref().display())))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok();
            Stamp {
                path: p.clone(),
                modified: m.as_ref().and_then(|m| m.modified().ok()),
                len: m.map_or(0, |m| m.len()),
            }
        })
        .collect()
}

/// A rotating server TLS configuration.
pub struct ServerTls {
    /// The settings it was built from.
    pub settings: TlsConfig,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
    check: Mutex<(Instant, Vec<Stamp>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.settings.cert.get_ref())
            .finish_non_exhaustive()
    }
}

/// How often certificate files are checked for changes.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

impl ServerTls {
    /// Load the material for `settings`.
    pub fn new(settings: TlsConfig, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let config = server_config(&settings, alpn)?;
        let paths = Self::paths(&settings);
        Ok(ServerTls {
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current: ArcSwap::new(config),
            check: Mutex::new((Instant::now(), stamps(&paths))),
            settings,
        })
    }

    fn paths(s: &TlsConfig) -> Vec<PathBuf> {
        let mut p = vec![s.cert.get_ref().clone(), s.key.get_ref().clone()];
        if let Some(ca) = &s.client_ca {
            p.push(ca.get_ref().clone());
        }
        p
    }

    /// The configuration for a new handshake, re-read from the files if
    /// they changed.
    pub fn config(&self) -> Arc<ServerConfig> {
        let changed = {
            let mut c = self.check.lock().unwrap_or_else(|p| p.into_inner());
            if c.0.elapsed() < ROTATION_CHECK {
                false
            } else {
                c.0 = Instant::now();
                let now = stamps(&Self::paths(&self.settings));
                let changed = now != c.1;
                c.1 = now;
                changed
            }
        };
        if changed {
            let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
            match server_config(&self.settings, &alpn) {
                Ok(cfg) => {
                    tracing::info!(cert = %self.settings.cert.get_ref().display(), "TLS certificate files changed: new handshakes use the new material");
                    self.current.store(cfg);
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate files changed but cannot be used; keeping the previous material")
                }
            }
        }
        self.current.load_full()
    }
}

/// Names a client certificate proves: its subject CNs and its SANs (DNS
/// names, e-mail addresses, URIs).
pub fn certificate_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(s)
                | x509_parser::extensions::GeneralName::RFC822Name(s)
                | x509_parser::extensions::GeneralName::URI(s) => names.push((*s).to_string()),
                _ => {}
            }
        }
    }
    names
}

/// How to reach a backend over TLS.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The mode.
    pub mode: BackendTlsMode,
    /// The client configuration (`None` for `disable`).
    pub config: Option<Arc<ClientConfig>>,
    /// The name sent (SNI) and verified.
    pub server_name: ServerName<'static>,
}

/// Build the backend TLS settings of a resource whose backend is `backend`
/// (`host:port`).
pub fn backend_tls(cfg: Option<&BackendTlsConfig>, backend: &str) -> Result<BackendTls, TlsError> {
    let mode = cfg.map_or(BackendTlsMode::Disable, |c| c.mode);
    let host = cfg.and_then(|c| c.server_name.clone()).unwrap_or_else(|| {
        backend
            .rsplit_once(':')
            .map_or(backend, |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_string()
    });
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| TlsError::Rustls(format!("server name {host:?}: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let config = match mode {
        BackendTlsMode::Disable => None,
        BackendTlsMode::Prefer | BackendTlsMode::Require => Some(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
                .with_no_client_auth(),
        )),
        BackendTlsMode::VerifyFull => {
            let ca = cfg.and_then(|c| c.ca.as_ref()).ok_or_else(|| {
                TlsError::Rustls("backend_tls mode verify-full needs `ca`".into())
            })?;
            Some(Arc::new(
                builder
                    .with_root_certificates(roots(ca.get_ref())?)
                    .with_no_client_auth(),
            ))
        }
    };
    Ok(BackendTls {
        mode,
        config,
        server_name,
    })
}

/// `prefer`/`require`: encrypt without verifying the certificate (libpq's
/// `sslmode=require` without a root certificate). Handshake signatures are
/// still checked, so the session keys belong to whoever holds the key of
/// the certificate presented.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
