//! The real jitgate binary as a child process, for what only a separate
//! process can show: signals, resident memory, file-descriptor limits,
//! CPU time. Its config is [`super::config_text`] with fixed ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{config_text, http, http_text, wait_until, Opts, ADMIN_TOKEN};

/// The binary under test.
pub const JITGATE: &str = env!("CARGO_BIN_EXE_jitgate");

/// A loopback address no one listens on (bound, then released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running `jitgate serve`.
pub struct Process {
    /// The child (killed on drop).
    pub child: Child,
    /// The admin API.
    pub admin: SocketAddr,
    /// The resource's listener.
    pub listen: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    opts_text: String,
    /// Holds the config and the state directory.
    pub dir: tempfile::TempDir,
}

impl Process {
    /// Start the binary for `o`, run through `wrapper` (e.g. `prlimit
    /// --nofile=N:N --`) if not empty, and wait until the admin API answers.
    pub async fn start(o: &Opts, wrapper: &[&str]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let (admin, listen) = (free_addr(), free_addr());
        let opts_text = config_text(o, &dir.path().join("state"))
            .replace(
                "admin_listen = \"127.0.0.1:0\"",
                &format!("admin_listen = \"{admin}\"\nwatch_interval = \"0s\""),
            )
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{listen}\""),
            );
        let config = dir.path().join("jitgate.toml");
        std::fs::write(&config, &opts_text).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(JITGATE);
                c
            }
            None => Command::new(JITGATE),
        };
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_until("gateway up", Duration::from_secs(15), || async {
            tokio::net::TcpStream::connect(admin).await.is_ok()
        })
        .await;
        Process {
            child,
            admin,
            listen,
            config,
            opts_text,
            dir,
        }
    }

    /// The config text with `extra` appended (to rewrite the file).
    pub fn config_with(&self, extra: &str) -> String {
        format!("{}{extra}", self.opts_text)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// What the process logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// A 5-minute break-glass grant through the admin API; its id.
    pub async fn grant(&self, principal: &str, resource: &str) -> String {
        let body = serde_json::json!({"principal": principal, "resource": resource, "duration": "5m", "reason": "t"});
        let (st, body) = http(
            self.admin,
            "POST",
            "/v1/grants",
            Some(ADMIN_TOKEN),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(st, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Resident memory, KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line, in clock ticks (100 a second).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// Open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The sum of the `/metrics` lines of `name` whose labels contain all
    /// of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, _, text) = http_text(self.admin, "GET", "/metrics", None, None).await;
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
