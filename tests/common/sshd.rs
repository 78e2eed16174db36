//! A throwaway OpenSSH server for the tests: its own host key, config and
//! authorized key (a fresh ed25519 keypair) in a temporary directory, on a
//! free loopback port, in the foreground (`sshd -D -e -f`), killed on drop.
//! No system sshd is needed; `.ci/run` installs `openssh-server` and
//! `openssh-client` when they are missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd.
pub struct Sshd {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its directory: keys, config, log.
    pub dir: tempfile::TempDir,
    /// The user the client logs in as (whoever runs the tests).
    pub user: String,
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_binary() -> &'static str {
    if Path::new("/usr/sbin/sshd").exists() {
        "/usr/sbin/sshd"
    } else {
        "sshd"
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "jitgate-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs (install openssh-client)");
    assert!(st.success(), "ssh-keygen failed");
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something on `addr` answers with an SSH version line.
fn answers(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-"
}

impl Sshd {
    /// Start one; panics with its log if it does not answer within 10 s.
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd running as root needs its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let user = current_user();
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     PidFile none\n\
                     AuthorizedKeysFile {auth}\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\n\
                     AllowUsers {user}\n\
                     Subsystem sftp internal-sftp\n\
                     MaxStartups 200\n\
                     MaxSessions 100\n\
                     LogLevel VERBOSE\n",
                    host_key = d.join("host_key").display(),
                    auth = d.join("authorized_keys").display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = Command::new(sshd_binary())
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("sshd runs (install openssh-server)");
            let begun = Instant::now();
            while begun.elapsed() < Duration::from_secs(10) {
                if answers(addr) {
                    return Sshd {
                        addr,
                        dir,
                        user,
                        child,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
        }
        panic!("sshd did not start; its log:\n{last_log}");
    }

    /// The client's private key.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// Connections sshd has accepted so far (its readiness probe included).
    pub fn connections(&self) -> usize {
        self.log().matches("Connection from").count()
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn client_options(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.key().display().to_string()])
        .collect()
    }

    /// `ssh` to `port` on 127.0.0.1 as the test user, then `args`.
    pub fn ssh(&self, port: u16) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.args(self.client_options())
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// `scp` of `from` to `port` on 127.0.0.1, at remote path `to`.
    pub fn scp(&self, port: u16, from: &Path, to: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("scp");
        c.args(self.client_options())
            .arg("-P")
            .arg(port.to_string())
            .arg(from)
            .arg(format!("{}@127.0.0.1:{}", self.user, to.display()))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }
}
