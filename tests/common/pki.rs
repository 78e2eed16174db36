//! Test certificates made with rcgen: a CA, leaves signed by it, and the
//! `[resource.tls]` block that points a resource at them.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate authority and its PEM file.
pub struct Ca {
    /// Signs leaves.
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: PathBuf,
}

/// A new CA called `name`, written to `dir/NAME.pem`.
pub fn ca(dir: &Path, name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&pem, issuer.pem()).unwrap();
    Ca { issuer, pem }
}

/// A valid leaf certificate signed by `ca`; returns (cert path, key path).
pub fn leaf(dir: &Path, ca: &Ca, file: &str, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
    leaf_with(dir, ca, file, cn, sans, false)
}

/// A leaf certificate signed by `ca`, expired in 2021 when `expired`.
pub fn leaf_with(
    dir: &Path,
    ca: &Ca,
    file: &str,
    cn: &str,
    sans: &[&str],
    expired: bool,
) -> (PathBuf, PathBuf) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// The `[resource.tls]` table for `cert`/`key`, plus `more` keys.
pub fn tls_block(cert: &Path, key: &Path, more: &str) -> String {
    format!(
        "[resource.tls]\ncert = \"{}\"\nkey = \"{}\"\n{more}\n",
        cert.display(),
        key.display()
    )
}
