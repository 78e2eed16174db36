//! TLS on MySQL resources with real clients: mysql_async (rustls) and the
//! `mysql` CLI through the gateway to the real MariaDB; `require`; client
//! certificates as identity (also for COM_CHANGE_USER); a ClientHello in the
//! same segment as the SSLRequest; garbage after it; a TLS session revoked
//! with the reason; rotation. The backend leg: `prefer` falls back on the
//! local MariaDB (it has `have_ssl = DISABLED` and is shared, so it is not
//! reconfigured here), `require` refuses it, and small in-process TLS
//! backends show the SSLRequest, the login inside TLS, `verify-full`'s name
//! check and the kill account over TLS. Certificates are made with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use common::mysql::*;
use common::*;
use mysql_async::prelude::Queryable;
use mysql_async::{ClientIdentity, OptsBuilder, SslOpts};
use proxy_protocols::mysql::{self as my, caps};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server certificate for 127.0.0.1 / localhost from a new CA in `dir`.
fn server_cert(dir: &Path) -> (pki::Ca, PathBuf, PathBuf) {
    let root = pki::ca(dir, "root");
    let (cert, key) = pki::leaf(
        dir,
        &root,
        "server",
        "localhost",
        &["localhost", "127.0.0.1"],
    );
    (root, cert, key)
}

/// mysql_async options through the gateway over TLS, trusting `ca`.
fn tls_opts(gw: &TestGateway, login: (&str, &str), ssl: SslOpts) -> mysql_async::Opts {
    OptsBuilder::from_opts(gw.my_opts(login))
        .ssl_opts(ssl)
        .into()
}

fn trusting(ca: &Path) -> SslOpts {
    SslOpts::default()
        .with_root_certs(vec![ca.to_path_buf().into()])
        .with_disable_built_in_roots(true)
}

async fn my_conn(opts: mysql_async::Opts) -> mysql_async::Result<mysql_async::Conn> {
    tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts))
        .await
        .expect("connect did not finish in time")
}

/// The `mysql` CLI against the gateway with extra TLS arguments.
async fn cli_tls(gw: &TestGateway, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("mysql")
        .args(["--protocol=TCP", "-h", "localhost", "-P"])
        .arg(gw.addr().port().to_string())
        .args(["-u", ALICE.0, &format!("-p{}", ALICE.1)])
        .args(["--skip-reconnect", "--batch", "--skip-column-names"])
        .args(args)
        .args(["test", "-e", "SELECT 6 * 7"])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(15), out)
        .await
        .expect("the mysql CLI did not exit in time")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn mysql_async_and_the_cli_over_tls_and_plaintext_refused_when_required() {
    setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_cert(dir.path());
    let mut o = Opts::mysql("my-tls");
    o.resource_extra = pki::tls_block(&cert, &key, "require = true");
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));

    // mysql_async with rustls, verifying the gateway's certificate: the
    // backend's auth exchange goes through with renumbered sequence ids.
    let mut c = my_conn(tls_opts(&gw, ALICE, trusting(&root.pem)))
        .await
        .unwrap();
    let n: i64 = c.query_first("SELECT 40 + 2").await.unwrap().unwrap();
    assert_eq!(n, 42);
    let who: String = c
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "jg_alice@%");
    c.disconnect().await.unwrap();

    // The mysql CLI, verifying the certificate and its name.
    let root_pem = root.pem.display().to_string();
    let ca_arg = format!("--ssl-ca={root_pem}");
    let (ok, out) = cli_tls(&gw, &["--ssl", &ca_arg, "--ssl-verify-server-cert"]).await;
    assert!(ok, "{out}");
    assert_eq!(out, "42\n");

    // A CLI that trusts another CA refuses the gateway's certificate.
    let other = pki::ca(dir.path(), "other");
    let other_arg = format!("--ssl-ca={}", other.pem.display());
    let (ok, out) = cli_tls(&gw, &["--ssl", &other_arg, "--ssl-verify-server-cert"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("ERROR 2026"), "{out}");

    // Plaintext when TLS is required: a clear ERR, from both clients.
    let e = gw.my_connect(ALICE).await.expect_err("plaintext refused");
    let (code, state, message) = server_error(&e);
    assert_eq!((code, state.as_str()), (3159, "HY000"));
    assert!(
        message.contains("Connections using insecure transport are prohibited")
            && message.contains("my-tls requires TLS"),
        "{message}"
    );
    let (ok, out) = cli_tls(&gw, &["--skip-ssl"]).await;
    assert!(!ok);
    assert!(out.contains("ERROR 3159"), "{out}");
    assert!(out.contains("insecure transport"), "{out}");
    // Both refusals are audited.
    gw.wait_audit("session.denied", |e| e["outcome"] == "tls_required")
        .await;
    let denied: Vec<_> = gw
        .audit_events("session.denied")
        .into_iter()
        .filter(|e| e["outcome"] == "tls_required")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(
        denied.iter().all(|e| e["protocol"] == "mysql"),
        "{denied:?}"
    );

    // The gateway keeps serving TLS clients.
    let mut c = my_conn(tls_opts(&gw, ALICE, trusting(&root.pem)))
        .await
        .unwrap();
    c.query_drop("DO 1").await.unwrap();
    c.disconnect().await.unwrap();
}

/// A grant for alice with both her logins.
fn alice_grant_with_both_logins(
    gw: &TestGateway,
    duration: Duration,
) -> std::sync::Arc<jitgate::grants::Grant> {
    gw.running
        .gateway
        .create_grant(jitgate::grants::NewGrant {
            principal: "alice".into(),
            resource: gw.resource.clone(),
            logins: vec![ALICE.0.into(), ALICE_RO.0.into()],
            sources: vec![],
            duration,
            reason: "test".into(),
            actor: "admin".into(),
            kind: jitgate::grants::GrantKind::BreakGlass,
        })
        .unwrap()
}

#[tokio::test]
async fn a_client_certificate_must_name_the_login() {
    setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_cert(dir.path());
    let clients = pki::ca(dir.path(), "clients");
    let more = format!(
        "client_ca = \"{}\"\nidentity = \"certificate\"",
        clients.pem.display()
    );
    let mut o = Opts::mysql("my-tls-cert");
    o.resource_extra = pki::tls_block(&cert, &key, &more);
    let gw = start(o).await;
    alice_grant_with_both_logins(&gw, Duration::from_secs(120));

    let with_cert = |cn: &str, file: &str| {
        let (c, k) = pki::leaf(dir.path(), &clients, file, cn, &[]);
        trusting(&root.pem).with_client_identity(Some(ClientIdentity::new(c.into(), k.into())))
    };
    // The certificate names the login: admitted.
    let mut c = my_conn(tls_opts(&gw, ALICE, with_cert(ALICE.0, "alice")))
        .await
        .unwrap();
    let n: i64 = c.query_first("SELECT 6 * 7").await.unwrap().unwrap();
    assert_eq!(n, 42);
    // The grant admits jg_alice_ro too, but the certificate does not name
    // it: a COM_CHANGE_USER to it ends the session.
    let e = c
        .change_user(
            mysql_async::ChangeUserOpts::default()
                .with_user(Some(ALICE_RO.0.into()))
                .with_pass(Some(ALICE_RO.1.into())),
        )
        .await
        .expect_err("the certificate does not name jg_alice_ro");
    assert_eq!(server_error(&e).0, 1045);
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");

    // A certificate from another CA fails the TLS handshake itself.
    let strangers = pki::ca(dir.path(), "strangers");
    let (c, k) = pki::leaf(dir.path(), &strangers, "mallory", ALICE.0, &[]);
    let ssl =
        trusting(&root.pem).with_client_identity(Some(ClientIdentity::new(c.into(), k.into())));
    let e = my_conn(tls_opts(&gw, ALICE, ssl))
        .await
        .expect_err("a foreign certificate");
    assert!(!matches!(e, mysql_async::Error::Server(_)), "{e:?}");

    // Someone else's certificate with alice's password: refused.
    let e = my_conn(tls_opts(&gw, ALICE, with_cert(BOB.0, "bob")))
        .await
        .expect_err("the certificate names another login");
    let (code, state, message) = server_error(&e);
    assert_eq!((code, state.as_str()), (1045, "28000"));
    assert!(
        message.contains("client certificate does not name login \"jg_alice\""),
        "{message}"
    );
}

#[tokio::test]
async fn a_tls_session_changes_user_and_is_revoked_with_the_reason() {
    setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_cert(dir.path());
    let mut o = Opts::mysql("my-tls-revoke");
    o.resource_extra = pki::tls_block(&cert, &key, "require = true");
    let gw = start(o).await;
    let g = alice_grant_with_both_logins(&gw, Duration::from_secs(120));
    let mut c = my_conn(tls_opts(&gw, ALICE, trusting(&root.pem)))
        .await
        .unwrap();
    // A COM_CHANGE_USER after authentication: sequence ids are no longer
    // renumbered, the command starts at 0 on both legs.
    c.change_user(
        mysql_async::ChangeUserOpts::default()
            .with_user(Some(ALICE_RO.0.into()))
            .with_pass(Some(ALICE_RO.1.into())),
    )
    .await
    .unwrap();
    let who: String = c
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "jg_alice_ro@%");

    let path = format!("/v1/grants/{}?reason=tls%20test", g.id);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    let e = c.query_drop("SELECT 1").await.expect_err("revoked");
    let (code, state, message) = server_error(&e);
    assert_eq!((code, state.as_str()), (1927, "70100"));
    assert_eq!(
        message,
        "jitgate: access to my-tls-revoke was revoked by admin: tls test"
    );
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");
}

/// Read one packet: (sequence id, payload).
async fn read_packet(s: &mut (impl AsyncReadExt + Unpin)) -> (u8, Vec<u8>) {
    let mut head = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("a packet in time")
        .unwrap();
    let (len, seq) = my::parse_header(head);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (seq, payload)
}

/// Everything until the peer closes (a reset counts as a close).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(buf.get(..n).unwrap()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the gateway did not close the connection");
    out
}

/// An SSLRequest packet (sequence id 1) with the usual client capabilities.
fn ssl_request() -> Vec<u8> {
    let r = response(b"jg_alice");
    let mut payload = Vec::new();
    my::encode_ssl_request(&r, &mut payload);
    let mut out = BytesMut::new();
    my::encode_packet(1, &payload, &mut out);
    out.to_vec()
}

fn response(user: &[u8]) -> my::HandshakeResponse {
    my::HandshakeResponse {
        capabilities: caps::CLIENT_LONG_PASSWORD
            | caps::CLIENT_PROTOCOL_41
            | caps::CLIENT_SECURE_CONNECTION
            | caps::CLIENT_PLUGIN_AUTH
            | caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
        max_packet: 1 << 24,
        collation: 45,
        user: user.to_vec(),
        auth_plugin: Some(b"mysql_native_password".to_vec()),
        ..Default::default()
    }
}

#[tokio::test]
async fn garbage_after_an_ssl_request_or_a_plaintext_response_claiming_tls_is_refused() {
    setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_cert(dir.path());
    let mut o = Opts::mysql("my-tls-bad");
    o.resource_extra = pki::tls_block(&cert, &key, "");
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));

    // The greeting offers TLS.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let (seq, payload) = read_packet(&mut s).await;
    assert_eq!(seq, 0);
    let g = my::parse_greeting(&payload).unwrap();
    assert_ne!(g.capabilities & caps::CLIENT_SSL, 0);
    // SSLRequest, then garbage where the ClientHello belongs, in one write:
    // the TLS handshake fails and the socket is closed.
    let mut bytes = ssl_request();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    s.write_all(&bytes).await.unwrap();
    let out = read_until_closed(&mut s).await;
    assert!(
        !out.starts_with(b"\x16"),
        "no TLS answer to garbage: {out:?}"
    );

    // A full response with CLIENT_SSL, in plaintext: the login would travel
    // in the clear; refused with an ERR.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    read_packet(&mut s).await;
    let mut r = response(b"jg_alice");
    r.auth_response = vec![7; 20];
    let mut payload = Vec::new();
    my::encode_handshake_response_over_tls(&r, &mut payload);
    let mut pkt = BytesMut::new();
    my::encode_packet(1, &payload, &mut pkt);
    s.write_all(&pkt).await.unwrap();
    let out = read_until_closed(&mut s).await;
    let mut buf = BytesMut::from(&out[..]);
    let p = my::decode_packet(&mut buf, 1 << 16).unwrap().unwrap();
    assert_eq!(p.seq, 2);
    let e = my::parse_err(&p.payload).unwrap();
    assert_eq!(e.code, 1043);
    let text = String::from_utf8(e.message).unwrap();
    assert!(text.contains("claims TLS"), "{text}");

    assert!(gw.audit_events("session.started").is_empty());
    // The gateway keeps serving, TLS and plaintext (not required here).
    let mut c = my_conn(tls_opts(&gw, ALICE, trusting(&root.pem)))
        .await
        .unwrap();
    c.query_drop("DO 1").await.unwrap();
    c.disconnect().await.unwrap();
    let mut c = gw.my_connect(ALICE).await.unwrap();
    c.query_drop("DO 1").await.unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_client_hello_in_the_same_segment_as_the_ssl_request_is_served() {
    setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_cert(dir.path());
    let mut o = Opts::mysql("my-tls-segment");
    o.resource_extra = pki::tls_block(&cert, &key, "");
    let gw = start(o).await;
    let addr = gw.addr();
    let root_pem = root.pem.clone();
    // Blocking rustls over a std socket: the ClientHello is taken out of the
    // connection and written together with the SSLRequest in one write.
    let (seq, payload) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut roots = rustls::RootCertStore::empty();
        for c in jitgate::tls::load_certs(&root_pem).unwrap() {
            roots.add(c).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(jitgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; 4];
        tcp.read_exact(&mut head).unwrap();
        let mut greeting = vec![0u8; my::parse_header(head).0];
        tcp.read_exact(&mut greeting).unwrap();
        let mut tls = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let mut first = ssl_request();
        tls.write_tls(&mut first).unwrap();
        tcp.write_all(&first).unwrap();
        let mut s = rustls::StreamOwned::new(tls, tcp);
        // bob's login: no grant, so jitgate answers inside TLS with seq 3.
        let mut payload = Vec::new();
        my::encode_handshake_response_over_tls(&response(BOB.0.as_bytes()), &mut payload);
        let mut pkt = BytesMut::new();
        my::encode_packet(2, &payload, &mut pkt);
        s.write_all(&pkt).unwrap();
        s.read_exact(&mut head).unwrap();
        let mut payload = vec![0u8; my::parse_header(head).0];
        s.read_exact(&mut payload).unwrap();
        (head[3], payload)
    })
    .await
    .unwrap();
    assert_eq!(seq, 3);
    let e = my::parse_err(&payload).unwrap();
    assert_eq!(e.code, 1045);
    let text = String::from_utf8(e.message).unwrap();
    assert_eq!(
        text,
        "jitgate: no active access grant for \"jg_bob\" on \"my-tls-segment\""
    );
}

/// The local MariaDB has TLS switched off (`have_ssl = DISABLED`), as this
/// test expects: with it on, `require` would succeed.
async fn backend_has_tls() -> bool {
    let mut c = my_direct().await;
    let v: Option<(String, String)> = c
        .query_first("SHOW VARIABLES LIKE 'have_ssl'")
        .await
        .unwrap();
    v.is_some_and(|(_, v)| v == "YES")
}

#[tokio::test]
async fn backend_tls_prefer_falls_back_and_require_refuses_a_backend_without_tls() {
    setup().await;
    if backend_has_tls().await {
        eprintln!("skipped: the local MariaDB has TLS on");
        return;
    }
    let mut o = Opts::mysql("my-btls-prefer");
    o.resource_extra = "[resource.backend_tls]\nmode = \"prefer\"\n".into();
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    let n: i64 = c.query_first("SELECT 6 * 7").await.unwrap().unwrap();
    assert_eq!(n, 42);
    c.disconnect().await.unwrap();

    let mut o = Opts::mysql("my-btls-require");
    o.resource_extra = "[resource.backend_tls]\nmode = \"require\"\n".into();
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));
    let e = gw
        .my_connect(ALICE)
        .await
        .expect_err("no TLS on the backend");
    let (code, _, message) = server_error(&e);
    assert_eq!(code, 2003);
    assert_eq!(
        message,
        "jitgate: cannot reach the backend of my-btls-require over TLS"
    );
}

/// A backend that offers TLS, takes the SSLRequest, runs TLS and reads the
/// HandshakeResponse inside it, then answers with an ERR (sequence id 3)
/// naming the user it saw, so the client shows what happened inside TLS.
async fn tls_backend(cert: &Path, key: &Path) -> std::net::SocketAddr {
    let certs = jitgate::tls::load_certs(cert).unwrap();
    let key = jitgate::tls::load_key(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(jitgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let g = my::Greeting {
                    server_version: b"5.5.5-10.11.0-FakeTLS".to_vec(),
                    connection_id: 7,
                    scramble: vec![b'x'; 20],
                    capabilities: 0x81ff_f7fe | caps::CLIENT_SSL,
                    collation: 45,
                    status: 2,
                    mariadb_ext: 0,
                    auth_plugin: b"mysql_native_password".to_vec(),
                };
                let mut payload = Vec::new();
                my::encode_greeting(&g, &mut payload);
                let mut out = BytesMut::new();
                my::encode_packet(0, &payload, &mut out);
                s.write_all(&out).await.unwrap();
                let (seq, req) = read_packet(&mut s).await;
                assert_eq!((seq, req.len()), (1, 32), "an SSLRequest");
                let caps_seen = u32::from_le_bytes(req[..4].try_into().unwrap());
                assert_ne!(caps_seen & caps::CLIENT_SSL, 0);
                let mut tls = acceptor.accept(s).await.unwrap();
                let (seq, resp) = read_packet(&mut tls).await;
                assert_eq!(seq, 2);
                let r = my::parse_response_over_tls(&resp).unwrap();
                let text = format!(
                    "fake backend: {} over TLS, plugin {}",
                    r.user_str().unwrap(),
                    String::from_utf8_lossy(r.auth_plugin.as_deref().unwrap_or_default())
                );
                let mut payload = Vec::new();
                my::encode_err(1045, Some("28000"), &text, &mut payload);
                let mut out = BytesMut::new();
                my::encode_packet(3, &payload, &mut out);
                tls.write_all(&out).await.unwrap();
                tls.shutdown().await.ok();
            });
        }
    });
    addr
}

#[tokio::test]
async fn backend_tls_verify_full_sends_the_login_inside_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_cert(dir.path());
    let backend = tls_backend(&cert, &key).await;
    let mut o = Opts::mysql("my-btls-fake");
    o.backend = backend.to_string();
    o.kill_account = None;
    o.resource_extra = format!(
        "{}[resource.backend_tls]\nmode = \"verify-full\"\nca = \"{}\"\nserver_name = \"localhost\"\n",
        pki::tls_block(&cert, &key, ""),
        root.pem.display()
    );
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));
    // A plaintext client: the backend's ERR (sequence id 3 inside TLS)
    // reaches it renumbered to 2, which mysql_async checks; a TLS client
    // expects 3 and gets it unchanged.
    let want = "fake backend: jg_alice over TLS, plugin jitgate_passthrough";
    let e = gw.my_connect(ALICE).await.expect_err("the fake refuses");
    let (code, _, message) = server_error(&e);
    assert_eq!((code, message.as_str()), (1045, want));
    let e = my_conn(tls_opts(&gw, ALICE, trusting(&root.pem)))
        .await
        .expect_err("the fake refuses");
    let (code, _, message) = server_error(&e);
    assert_eq!((code, message.as_str()), (1045, want));

    // verify-full with a name the certificate does not carry: refused.
    let mut o = Opts::mysql("my-btls-badname");
    o.backend = backend.to_string();
    o.kill_account = None;
    o.resource_extra = format!(
        "[resource.backend_tls]\nmode = \"verify-full\"\nca = \"{}\"\nserver_name = \"db.example\"\n",
        root.pem.display()
    );
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));
    let e = gw.my_connect(ALICE).await.expect_err("wrong name");
    let (code, _, message) = server_error(&e);
    assert_eq!(code, 2003);
    assert!(message.contains("over TLS"), "{message}");
}

/// A TLS backend for the kill account: after TLS and a login as
/// `jg_killer`, it answers OK and reports the one query it is sent.
async fn tls_kill_backend(
    cert: &Path,
    key: &Path,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let certs = jitgate::tls::load_certs(cert).unwrap();
    let key = jitgate::tls::load_key(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(jitgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let g = my::Greeting {
            server_version: b"5.5.5-10.11.0-FakeTLS".to_vec(),
            connection_id: 8,
            scramble: vec![b'y'; 20],
            capabilities: 0x81ff_f7fe | caps::CLIENT_SSL,
            collation: 45,
            status: 2,
            mariadb_ext: 0,
            auth_plugin: b"mysql_native_password".to_vec(),
        };
        let mut payload = Vec::new();
        my::encode_greeting(&g, &mut payload);
        let mut out = BytesMut::new();
        my::encode_packet(0, &payload, &mut out);
        s.write_all(&out).await.unwrap();
        let (seq, req) = read_packet(&mut s).await;
        assert_eq!((seq, req.len()), (1, 32), "an SSLRequest");
        let mut tls = acceptor.accept(s).await.unwrap();
        let (seq, resp) = read_packet(&mut tls).await;
        assert_eq!(seq, 2);
        let r = my::parse_response_over_tls(&resp).unwrap();
        assert_eq!(r.user, KILLER.0.as_bytes());
        let want = my::scramble_native(&[b'y'; 20], KILLER.1.as_bytes()).unwrap();
        assert_eq!(r.auth_response, want.to_vec(), "the kill account's answer");
        let ok = b"\x00\x00\x00\x02\x00\x00\x00";
        let mut out = BytesMut::new();
        my::encode_packet(3, ok, &mut out);
        tls.write_all(&out).await.unwrap();
        tls.flush().await.unwrap();
        let (seq, query) = read_packet(&mut tls).await;
        assert_eq!((seq, query.first()), (0, Some(&0x03)));
        tx.send(String::from_utf8_lossy(&query[1..]).into_owned())
            .unwrap();
        let mut out = BytesMut::new();
        my::encode_packet(1, ok, &mut out);
        tls.write_all(&out).await.unwrap();
        tls.flush().await.unwrap();
    });
    (addr, rx)
}

#[tokio::test]
async fn the_kill_account_logs_in_over_backend_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_cert(dir.path());
    let (addr, mut queries) = tls_kill_backend(&cert, &key).await;
    let cfg: jitgate::config::BackendTlsConfig = toml::from_str(&format!(
        "mode = \"verify-full\"\nca = \"{}\"\nserver_name = \"localhost\"\n",
        root.pem.display()
    ))
    .unwrap();
    let tls = jitgate::tls::backend_tls(Some(&cfg), &addr.to_string()).unwrap();
    let target = jitgate::mysql::kill::KillTarget {
        backend: addr.to_string(),
        account: jitgate::config::KillAccount {
            user: KILLER.0.into(),
            password: KILLER.1.into(),
        },
        connection_id: 77,
        timeout: Duration::from_secs(5),
        tls: Some(std::sync::Arc::new(tls)),
        tracker: tokio_util::task::TaskTracker::new(),
    };
    jitgate::mysql::kill::kill_connection(&target)
        .await
        .unwrap();
    assert_eq!(queries.recv().await.unwrap(), "KILL CONNECTION 77");
}

#[tokio::test]
async fn certificates_rotate_without_dropping_mysql_sessions() {
    setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (old_root, cert, key) = server_cert(dir.path());
    let mut o = Opts::mysql("my-tls-rotate");
    o.resource_extra = pki::tls_block(&cert, &key, "");
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));
    let mut live = my_conn(tls_opts(&gw, ALICE, trusting(&old_root.pem)))
        .await
        .unwrap();

    // Replace the files in place with a certificate from a new CA: a client
    // that trusts only the new CA gets in once jitgate has noticed.
    let new_root = pki::ca(dir.path(), "new-root");
    let (c2, k2) = pki::leaf(
        dir.path(),
        &new_root,
        "server2",
        "localhost",
        &["localhost", "127.0.0.1"],
    );
    std::fs::copy(&c2, &cert).unwrap();
    std::fs::copy(&k2, &key).unwrap();
    wait_until(
        "new handshakes present the new certificate",
        Duration::from_secs(10),
        || async {
            my_conn(tls_opts(&gw, ALICE, trusting(&new_root.pem)))
                .await
                .is_ok()
        },
    )
    .await;
    // Clients of the old CA no longer get in; the old session keeps running.
    assert!(my_conn(tls_opts(&gw, ALICE, trusting(&old_root.pem)))
        .await
        .is_err());
    let n: i64 = live.query_first("SELECT 6 * 7").await.unwrap().unwrap();
    assert_eq!(n, 42);
    live.disconnect().await.unwrap();
}
