//! TLS on both legs with real clients: psql and tokio-postgres (rustls)
//! through the gateway; the local PostgreSQL (ssl = on) as the TLS backend;
//! client certificates as identity; rotation; the admin API over HTTPS.
//! Certificates are made in the test with rcgen.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

fn psql(gw: &TestGateway, conninfo: &str) -> Command {
    let mut c = Command::new("psql");
    c.arg(format!(
        "host=localhost port={} user=postgres dbname=test connect_timeout=5 {conninfo}",
        gw.addr().port()
    ))
    .args(["-X", "-At", "-c", "select 1"])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("PGGSSENCMODE", "disable")
    .kill_on_drop(true);
    c
}

async fn run(c: &mut Command) -> (bool, String) {
    let out = tokio::time::timeout(Duration::from_secs(20), c.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn psql_over_tls_require_and_verify_full_and_plaintext_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = pki::ca(dir.path(), "root");
    let (cert, key) = pki::leaf_with(
        dir.path(),
        &root,
        "server",
        "localhost",
        &["localhost", "127.0.0.1"],
        false,
    );
    let mut o = Opts::new("tls-psql");
    o.resource_extra = pki::tls_block(&cert, &key, "require = true");
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));

    let (ok, out) = run(&mut psql(&gw, "sslmode=require")).await;
    assert!(ok, "{out}");
    let root_pem = root.pem.display().to_string();
    let (ok, out) = run(&mut psql(
        &gw,
        &format!("sslmode=verify-full sslrootcert={root_pem}"),
    ))
    .await;
    assert!(ok, "{out}");
    // A client that trusts another CA refuses the gateway's certificate.
    let other = pki::ca(dir.path(), "other");
    let (ok, out) = run(&mut psql(
        &gw,
        &format!("sslmode=verify-full sslrootcert={}", other.pem.display()),
    ))
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("certificate verify failed"), "{out}");
    // Plaintext when TLS is required: a clear FATAL.
    let (ok, out) = run(&mut psql(&gw, "sslmode=disable")).await;
    assert!(!ok);
    assert!(out.contains("jitgate: tls-psql requires TLS"), "{out}");
    let denied = gw
        .wait_audit("session.denied", |e| e["outcome"] == "tls_required")
        .await;
    assert_eq!(denied["resource"], "tls-psql", "{denied}");
    assert_eq!(denied["protocol"], "postgres", "{denied}");
    // The gateway keeps serving.
    assert!(run(&mut psql(&gw, "sslmode=require")).await.0);
}

/// A rustls client config for tokio-postgres that trusts `ca`.
fn client_tls(ca: &Path, cert: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in jitgate::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(jitgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        Some((c, k)) => b
            .with_client_auth_cert(
                jitgate::tls::load_certs(c).unwrap(),
                jitgate::tls::load_key(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    }
}

async fn tp_connect(
    gw: &TestGateway,
    user: &str,
    tls: rustls::ClientConfig,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    tp_connect_with(
        gw,
        user,
        tls,
        tokio_postgres::config::SslNegotiation::Postgres,
    )
    .await
}

async fn tp_connect_with(
    gw: &TestGateway,
    user: &str,
    mut tls: rustls::ClientConfig,
    negotiation: tokio_postgres::config::SslNegotiation,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    if negotiation == tokio_postgres::config::SslNegotiation::Direct {
        // PostgreSQL 17 direct TLS negotiates ALPN "postgresql".
        tls.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    let mut c = tokio_postgres::Config::new();
    c.ssl_negotiation(negotiation);
    c.host("localhost")
        .port(gw.addr().port())
        .user(user)
        .dbname("test")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = c
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test]
async fn client_certificates_are_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let root = pki::ca(dir.path(), "root");
    let (cert, key) = pki::leaf_with(
        dir.path(),
        &root,
        "server",
        "localhost",
        &["localhost"],
        false,
    );
    let (good_c, good_k) =
        pki::leaf_with(dir.path(), &root, "client-postgres", "postgres", &[], false);
    let (wrong_c, wrong_k) = pki::leaf_with(dir.path(), &root, "client-root", "root", &[], false);
    let (old_c, old_k) = pki::leaf_with(dir.path(), &root, "client-expired", "postgres", &[], true);
    let stranger = pki::ca(dir.path(), "stranger");
    let (alien_c, alien_k) = pki::leaf_with(
        dir.path(),
        &stranger,
        "client-alien",
        "postgres",
        &[],
        false,
    );
    let mut o = Opts::new("tls-mtls");
    o.resource_extra = pki::tls_block(
        &cert,
        &key,
        &format!(
            "client_ca = \"{}\"\nrequire = true\nidentity = \"certificate\"",
            root.pem.display()
        ),
    );
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));

    let c = tp_connect(
        &gw,
        "postgres",
        client_tls(&root.pem, Some((&good_c, &good_k))),
    )
    .await
    .expect("its own certificate");
    c.simple_query("SELECT 1").await.unwrap();
    // A certificate for another login does not admit "postgres".
    let e = tp_connect(
        &gw,
        "postgres",
        client_tls(&root.pem, Some((&wrong_c, &wrong_k))),
    )
    .await
    .expect_err("refused");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("does not name login \"postgres\""),
        "{e}"
    );
    let denied = gw
        .wait_audit("session.denied", |e| e["outcome"] == "certificate_login")
        .await;
    assert_eq!(denied["login"], "postgres", "{denied}");
    // Expired, foreign-CA, or no certificate: the TLS handshake fails.
    for (what, cfg) in [
        ("expired", client_tls(&root.pem, Some((&old_c, &old_k)))),
        (
            "foreign CA",
            client_tls(&root.pem, Some((&alien_c, &alien_k))),
        ),
        ("none", client_tls(&root.pem, None)),
    ] {
        let r = tp_connect(&gw, "postgres", cfg).await;
        assert!(r.is_err(), "{what} certificate must be refused");
    }
    // Still serving, and PostgreSQL 17 direct TLS works too.
    let direct = tp_connect_with(
        &gw,
        "postgres",
        client_tls(&root.pem, Some((&good_c, &good_k))),
        tokio_postgres::config::SslNegotiation::Direct,
    )
    .await
    .expect("sslnegotiation=direct");
    direct.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn tls_garbage_is_refused_and_the_gateway_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let root = pki::ca(dir.path(), "root");
    let (cert, key) = pki::leaf_with(
        dir.path(),
        &root,
        "server",
        "localhost",
        &["localhost"],
        false,
    );
    let mut o = Opts::new("tls-garbage");
    o.resource_extra = pki::tls_block(&cert, &key, "");
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    // SSLRequest → 'S', then noise instead of a ClientHello.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"S");
    s.write_all(b"\x16\x03\x01\x00\x05hello garbage that is not TLS")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(
        r.is_err() || rest.iter().all(|&x| x != b'Z'),
        "no session on garbage"
    );
    // Direct TLS with garbage, too.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"\x16\x03\x01\xff\xffjunk").await.unwrap();
    drop(s);
    let c = tp_connect(&gw, "postgres", client_tls(&root.pem, None))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    assert!(gw.metric("jitgate_connections_total", &["tls-garbage", "error"]) >= 1.0);
}

/// Records the certificate a server presents.
#[derive(Debug)]
struct Capture(
    Arc<Mutex<Option<Vec<u8>>>>,
    Arc<rustls::crypto::CryptoProvider>,
);

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        ee: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(ee.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

async fn presented_cert(gw: &TestGateway) -> Vec<u8> {
    let seen = Arc::new(Mutex::new(None));
    let cfg = rustls::ClientConfig::builder_with_provider(jitgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture(seen.clone(), jitgate::tls::provider())))
        .with_no_client_auth();
    let _ = tp_connect(gw, "postgres", cfg).await.unwrap();
    let der = seen.lock().unwrap().clone().unwrap();
    der
}

#[tokio::test]
async fn certificates_rotate_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let root = pki::ca(dir.path(), "root");
    let (cert, key) = pki::leaf_with(
        dir.path(),
        &root,
        "server",
        "localhost",
        &["localhost"],
        false,
    );
    let mut o = Opts::new("tls-rotate");
    o.resource_extra = pki::tls_block(&cert, &key, "");
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let before = presented_cert(&gw).await;
    let live = tp_connect(&gw, "postgres", client_tls(&root.pem, None))
        .await
        .unwrap();

    // Replace the files in place (a renewal).
    let (c2, k2) = pki::leaf_with(
        dir.path(),
        &root,
        "server2",
        "localhost",
        &["localhost"],
        false,
    );
    std::fs::copy(&c2, &cert).unwrap();
    std::fs::copy(&k2, &key).unwrap();
    let new_der = jitgate::tls::load_certs(&cert).unwrap()[0].to_vec();
    wait_until(
        "new handshakes present the new certificate",
        Duration::from_secs(10),
        || async { presented_cert(&gw).await == new_der },
    )
    .await;
    assert_ne!(before, new_der);
    live.simple_query("SELECT 1")
        .await
        .expect("the old session keeps running");
}

#[tokio::test]
async fn backend_tls_against_the_real_server_and_verify_full_checks_the_name() {
    // The local PostgreSQL serves TLS with Debian's snakeoil certificate.
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let direct = direct().await;
    let ssl_on: String = direct.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl_on, "on",
        "the local PostgreSQL must have ssl = on (.ci/run turns it on)"
    );
    let names =
        jitgate::tls::certificate_names(&jitgate::tls::load_certs(Path::new(snakeoil)).unwrap()[0]);
    let good_name = names.first().cloned().unwrap();

    for (mode, extra, should_work) in [
        ("require", String::new(), true),
        (
            "verify-full",
            format!("ca = \"{snakeoil}\"\nserver_name = \"{good_name}\""),
            true,
        ),
        (
            "verify-full",
            format!("ca = \"{snakeoil}\"\nserver_name = \"wrong.example\""),
            false,
        ),
    ] {
        let mut o = Opts::new(&format!("tls-backend-{mode}-{should_work}"));
        o.resource_extra = format!("[resource.backend_tls]\nmode = \"{mode}\"\n{extra}\n");
        let gw = start(o).await;
        gw.grant("alice", "postgres", Duration::from_secs(60));
        let r = connect(&gw.pg_config("postgres")).await;
        if should_work {
            let c = r.unwrap_or_else(|e| panic!("{mode}: {e}"));
            let row = c
                .client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            assert!(
                row.get::<_, bool>(0),
                "{mode}: the backend leg is encrypted"
            );
        } else {
            let e = r.err().expect("a wrong name is refused");
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            assert!(msg.contains("cannot reach the backend"), "{e}: {msg}");
        }
    }
}

#[tokio::test]
async fn the_admin_api_over_https_with_the_cli_verifying_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = pki::ca(dir.path(), "root");
    let (cert, key) = pki::leaf_with(
        dir.path(),
        &root,
        "admin",
        "localhost",
        &["localhost", "127.0.0.1"],
        false,
    );
    let o = Opts::new("tls-admin");
    let text = config_text(&o, dir.path()).replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!(
            "admin_listen = \"127.0.0.1:0\"\nadmin_tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ),
    );
    let config = jitgate::config::parse_str(&text, "t.toml").unwrap();
    let running = jitgate::server::start(config).await.unwrap();
    let url = format!("https://localhost:{}", running.admin_addr.port());
    let cli = |ca: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_jitgate"));
        c.args(["--admin-url", &url, "--token", ADMIN_TOKEN, "--ca"])
            .arg(ca)
            .args(["grants", "--json"])
            .env_remove("JITGATE_TOKEN")
            .env_remove("JITGATE_ADMIN_URL")
            .kill_on_drop(true);
        c
    };
    let out = cli(&root.pem).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let other = pki::ca(dir.path(), "other");
    let out = cli(&other.pem).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.lines().count() == 1, "{err}");
}
