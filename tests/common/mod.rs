//! Real processes for integration tests: a `nats-server` on a free port and the `incidentd`
//! binary, both killed on drop.

#![allow(dead_code)] // each test file uses a different part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A port free right now. Another process may take it before the caller binds it, so use it
/// only where the port must be known in advance (restarting a server on the same port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A NATS address nothing listens on: port 1 is privileged and never handed out by the
/// kernel, so unlike a "free" port no other test's server can appear there.
pub const NOWHERE: &str = "nats://127.0.0.1:1";

/// Polls `read` until it yields a port, failing early if `child` exits (it could not bind).
fn wait_for_own_port(child: &mut Child, what: &str, mut read: impl FnMut() -> Option<u16>) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(port) = read() {
            return port;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not report its port");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nats-server` from PATH, else where Debian puts it (not always on a non-login PATH).
fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"));
    on_path
        .chain(["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A real `nats-server`, on a port of its own.
pub struct NatsServer {
    child: Child,
    pub port: u16,
}

impl NatsServer {
    /// On a port the kernel picks as the server binds, so no two tests can share a server.
    pub fn start() -> NatsServer {
        NatsServer::spawn(None, &[])
    }

    /// On `port`, for tests that stop the server and start it again where clients expect it.
    pub fn start_on(port: u16) -> NatsServer {
        NatsServer::spawn(Some(port), &[])
    }

    /// With JetStream, storing in `store` (reuse it to restart with the same streams).
    pub fn start_js(port: u16, store: &Path) -> NatsServer {
        let store = store.to_string_lossy().to_string();
        NatsServer::spawn(Some(port), &["-js", "-sd", &store])
    }

    /// The server reports the port it bound in a ports file; waiting for that file (rather
    /// than for something to answer on the port) proves this very process is listening.
    fn spawn(port: Option<u16>, extra: &[&str]) -> NatsServer {
        let ports_dir = tempfile::tempdir().expect("ports dir");
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let mut child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .arg("--ports_file_dir")
            .arg(ports_dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (.ci/run installs it)");
        let ports_file = ports_dir
            .path()
            .join(format!("nats-server_{}.ports", child.id()));
        let bound = wait_for_own_port(&mut child, "nats-server", || {
            let text = std::fs::read_to_string(&ports_file).ok()?;
            let ports: Value = serde_json::from_str(&text).ok()?;
            ports["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
        });
        if let Some(port) = port {
            assert_eq!(bound, port, "nats-server bound another port");
        }
        NatsServer { child, port: bound }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `incidentd` binary, serving HTTP on a free port.
pub struct Incidentd {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
}

/// The port in the "http listening" line of an incidentd log.
pub fn listening_port(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("http listening"))?;
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

impl Incidentd {
    /// Starts incidentd with its data in `data_dir`, talking to NATS at `nats_url`.
    pub fn start(data_dir: &Path, nats_url: &str) -> Incidentd {
        Incidentd::start_with(data_dir, nats_url, None)
    }

    /// Like `start`, with a configuration file (flags still override it).
    ///
    /// HTTP listens on port 0 and the test reads the bound address from the log, so a port
    /// taken by another test between choosing and binding cannot send requests astray.
    pub fn start_with(data_dir: &Path, nats_url: &str, config: Option<&Path>) -> Incidentd {
        Incidentd::start_full(data_dir, nats_url, config, &repo_path("rules"))
    }

    /// Like `start_with`, with the rules in `rules` instead of the shipped ones.
    pub fn start_full(
        data_dir: &Path,
        nats_url: &str,
        config: Option<&Path>,
        rules: &Path,
    ) -> Incidentd {
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_incidentd"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--rules")
            .arg(rules)
            .args(["--nats-url", nats_url])
            .args(config.map(|c| format!("--config={}", c.display())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start incidentd");
        let port = wait_for_own_port(&mut child, "incidentd", || listening_port(&log_path));
        Incidentd {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Waits until `/readyz` answers 200 (NATS subscribed, log writable).
    pub async fn wait_ready(&self, c: &reqwest::Client, secs: u64) {
        eventually(secs, "incidentd ready", || async {
            (get_json(c, &self.url("/readyz")).await.0 == 200).then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "incidentd did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Incidentd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn post_json(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    post_raw(c, url, body.to_string()).await
}

pub async fn post_raw(c: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Value of an unlabelled metric (or the sum over a labelled one) from /metrics.
pub async fn metric(c: &reqwest::Client, d: &Incidentd, name: &str) -> f64 {
    let text = c
        .get(d.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    metric_in(&text, name)
}

/// [`metric`] read from a /metrics text already fetched.
pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// All incidents (any state), newest first.
pub async fn incidents(c: &reqwest::Client, d: &Incidentd) -> Vec<Value> {
    let (status, page) = get_json(c, &d.url("/api/v1/incidents?state=all&limit=500")).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

/// Waits up to 20 s for exactly `n` incidents; on timeout reports the alerts it last saw, so a
/// missing or an extra one shows in the failure.
pub async fn wait_incidents(c: &reqwest::Client, d: &Incidentd, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = incidents(c, d).await;
        if all.len() == n {
            return all;
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = all
                .iter()
                .flat_map(|i| i["alerts"].as_array().cloned().unwrap_or_default())
                .map(|a| format!("{} on {}", a["name"], a["ci"]))
                .collect();
            panic!(
                "timed out waiting for {n} incidents; {} hold {seen:?}",
                all.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the `incidentd` command line and insists it succeeds; returns its stdout.
pub fn cli_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_incidentd"))
        .args(args)
        .output()
        .expect("run incidentd");
    assert!(
        out.status.success(),
        "incidentd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exports the history recorded under `data` to `out` (`incidentd export-alerts`).
pub fn export_history(data: &Path, out: &Path) {
    cli_ok([
        "export-alerts".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
}

/// Replays `alerts` with the shipped rules and example CMDB; returns the incidents written.
pub fn replay_incidents(alerts: &Path, out: &Path) -> Vec<Value> {
    let (rules, cmdb) = (repo_path("rules"), repo_path("fixtures/cmdb/example.json"));
    cli_ok([
        "replay".as_ref(),
        "--rules".as_ref(),
        rules.as_os_str(),
        "--cmdb".as_ref(),
        cmdb.as_os_str(),
        "--alerts".as_ref(),
        alerts.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    std::fs::read_to_string(out)
        .expect("replay output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("incident json"))
        .collect()
}
