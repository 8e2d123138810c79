//! End-to-end alert-storm harness (issue 6): starts its own `nats-server`, the release
//! `incidentd` and, for the baseline, Debian's `prometheus-alertmanager`; offers a storm of
//! realistic alerts over NATS or HTTP, flat out or at a fixed rate; and reports sustained
//! accepted alerts/s, latency (hdrhistogram), CPU and RSS. Every offered alert must end up
//! accepted, rejected or explicitly shed, or the run fails loudly.
//!
//! ```text
//! cargo bench --bench storm -- all                      # the comparable pairs, with ratios
//! cargo bench --bench storm -- nats --alerts 1000000 --rate flat
//! cargo bench --bench storm -- nats --alerts 1000000 --rate 100000
//! cargo bench --bench storm -- http-batch --batch 100 --conns 8
//! cargo bench --bench storm -- http-single --conns 8
//! cargo bench --bench storm -- raw-nats | alertmanager --batch 100
//! cargo bench --bench storm -- memory --alerts 1000000
//! cargo bench --bench storm -- churn --alerts 200000 --rounds 5   # needs close_after
//! cargo bench --bench storm -- restart --facts 10000000 --restart-snapshot false
//! cargo bench --bench storm -- restart --facts 10000000 --repeat 5 --compare /tmp/old-incidentd
//! STORM_LOG=info STORM_KEEP=1 cargo bench --bench storm -- nats ...   # keep incidentd's log
//! STORM_INCIDENTD=/tmp/old-incidentd cargo bench --bench storm -- nats ...   # another build
//! ```
//!
//! Latency: over HTTP, a 2xx answer is sent only after the alerts' facts are durable and the
//! read model shows them, so request latency is publish → visible. Over NATS, one alert in
//! `--sample` is a probe with a unique `dedup_key`; its latency runs from just before the
//! publish to the arrival of the `incidents.alert_attached.<id>` fact that incidentd
//! publishes after the read model was updated.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use incidentd::model::Fingerprint;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Alerts published on `alerts.native.storm`, taken by incidentd's core subscription.
    Nats,
    /// Baseline: the same payloads publisher → nats-server → a plain counting subscriber.
    RawNats,
    /// POST `--batch` alerts per request over `--conns` connections.
    HttpBatch,
    /// One alert per request over `--conns` connections.
    HttpSingle,
    /// Baseline: Alertmanager 0.25 ingesting the same alerts on `/api/v2/alerts`.
    Alertmanager,
    /// The comparable pairs back to back, then the ratios.
    All,
    /// Resident memory per active alert: `--alerts` distinct alerts over HTTP batches.
    Memory,
    /// Replay speed and restart time with `--facts` facts in the log.
    Restart,
    /// Offered load at a multiple of capacity over HTTP: 429s with Retry-After, nothing lost.
    Overload,
    /// Resident memory under churn: `--rounds` rounds of `--alerts` new alerts that fire,
    /// resolve and (lifecycle `close_after = "2s"`) close, against a run that never closes.
    Churn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Api {
    /// Alertmanager `postableAlerts` on `/api/v2/alerts`: the same bytes Alertmanager gets.
    V2,
    /// incidentd's native JSON array on `/api/v1/alerts`.
    V1,
}

#[derive(Parser, Clone, Debug)]
#[command(about = "incidentd end-to-end storm harness")]
struct Args {
    /// What to run; without one (plain `cargo bench`) the harness prints how to run it and
    /// skips, since a storm takes minutes and starts servers.
    mode: Option<Mode>,
    /// Alerts offered.
    #[arg(long, default_value_t = 200_000)]
    alerts: usize,
    /// Offered alerts per second, or `flat` for as fast as the sender goes.
    #[arg(long, default_value = "flat")]
    rate: String,
    /// Alerts per HTTP request (http-batch, alertmanager).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Rounds of `--alerts` new alerts fired, resolved and closed (churn).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Distinct alert identities; alerts beyond them are duplicates. 0: every alert is new.
    #[arg(long, default_value_t = 0)]
    distinct: usize,
    /// One alert in this many is a latency probe (a new alert with a unique dedup_key).
    #[arg(long, default_value_t = 100)]
    sample: usize,
    /// Alerts name CIs of the shipped CMDB (fixtures/cmdb/example.json), so topology
    /// correlation runs; otherwise CIs are unknown and rules group them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cmdb: bool,
    /// HTTP API for incidentd's HTTP modes.
    #[arg(long, value_enum, default_value_t = Api::V2)]
    api: Api,
    /// incidentd `[engine] queue` (commands).
    #[arg(long)]
    queue: Option<usize>,
    /// incidentd `[engine] max_queued_alerts`.
    #[arg(long)]
    queued_alerts: Option<usize>,
    /// incidentd `[log] snapshot_every` (facts; 0 = never).
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    /// Facts to generate for `restart`.
    #[arg(long, default_value_t = 1_000_000)]
    facts: u64,
    /// Overload factor for `overload` (offered = factor × measured capacity).
    #[arg(long, default_value_t = 2.0)]
    factor: f64,
    /// Run the baseline where a mode has one (memory: Alertmanager; churn: never closing).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    baseline: bool,
    /// `restart`: time the full replay this many times (with `--compare`, each build that
    /// many times, interleaved) and report the medians: one run says little on a noisy host.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// `restart`: another `incidentd` binary timed on the same log, its runs interleaved with
    /// this build's, for an A/B of a change (the ratio of the medians is reported).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// The binary `start_incidentd` runs, when not [`incidentd_binary`].
    #[arg(skip)]
    binary: Option<PathBuf>,
    /// `restart`: also restart from a snapshot (written at shutdown; needs about twice the
    /// state's memory while it is written).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    restart_snapshot: bool,
    /// `nats`: first offer this many distinct alerts (no probes, same rate) and wait until
    /// they are in, then measure: a service that has been running, not one touching its
    /// memory for the first time during the measured storm (on some hosts first touch is
    /// slow, and a 3 s run's p99 is then its first 200 ms).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// `nats`: write each probe's send time (ms from the first probe) and latency (µs) to
    /// this file, one probe per line, to see when a tail happens, not only how long it is.
    #[arg(long)]
    latency_trace: Option<PathBuf>,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn rate(&self) -> Option<f64> {
        match self.rate.as_str() {
            "flat" | "max" | "0" => None,
            r => r.parse().ok().filter(|r: &f64| *r > 0.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn find_binary(name: &str, extra: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// A child process killed (and reaped) on drop.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_port(port: u16, what: &str) -> Res<()> {
    // incidentd replays its log before it listens: allow for a long log.
    let deadline = Instant::now() + Duration::from_secs(900);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not open port {port}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn start_nats(tmp: &Path) -> Res<(Proc, u16)> {
    let bin = find_binary(
        "nats-server",
        &["/usr/sbin/nats-server", "/usr/local/bin/nats-server"],
    )
    .ok_or("nats-server not found (apt-get install nats-server)")?;
    let port = free_port()?;
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.join("nats.log"))?)
        .spawn()?;
    let proc = Proc {
        child,
        name: "nats-server",
    };
    wait_port(port, "nats-server").await?;
    Ok((proc, port))
}

struct Incidentd {
    proc: Proc,
    base: Http,
}

impl Incidentd {
    /// Stops incidentd as an operator does (SIGTERM: drain, final fsync and snapshot, exit)
    /// and returns how long that took (at most 300 s; then it is killed).
    async fn stop(mut self) -> Res<Duration> {
        let started = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.proc.pid().to_string()])
            .status()?;
        let deadline = started + Duration::from_secs(300);
        while self.proc.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                return Err("incidentd did not stop within 300 s of SIGTERM".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(started.elapsed())
    }
}

/// The crate's release binary, or `STORM_INCIDENTD` (a saved build, to compare two versions
/// back to back without rebuilding).
fn incidentd_binary() -> PathBuf {
    std::env::var_os("STORM_INCIDENTD").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_incidentd")),
        PathBuf::from,
    )
}

/// Writes the config and starts `incidentd serve` (with `--rules DIR` when `rules` is given,
/// else the repository's `rules/`); returns once `/readyz` answers 200.
async fn start_incidentd(
    args: &Args,
    tmp: &Path,
    data: &Path,
    nats_port: Option<u16>,
    rules: Option<&Path>,
) -> Res<(Incidentd, Duration)> {
    let port = free_port()?;
    let cmdb = if args.cmdb {
        repo("fixtures/cmdb/example.json")
    } else {
        let empty = tmp.join("empty-cmdb.json");
        std::fs::write(&empty, r#"{"cis":[],"relations":[]}"#)?;
        empty
    };
    let mut engine = String::new();
    if let Some(q) = args.queue {
        engine.push_str(&format!("queue = {q}\n"));
    }
    if let Some(q) = args.queued_alerts {
        engine.push_str(&format!("max_queued_alerts = {q}\n"));
    }
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\nrules = {rules:?}\ncmdb = {cmdb:?}\n\
         [nats]\nurl = \"nats://127.0.0.1:{nats}\"\nenabled = {enabled}\n\
         [log]\nsnapshot_every = {snap}\n[engine]\n{engine}",
        data = data.display().to_string(),
        rules = repo("rules").display().to_string(),
        cmdb = cmdb.display().to_string(),
        nats = nats_port.unwrap_or(4222),
        enabled = nats_port.is_some(),
        snap = args.snapshot_every,
    );
    let path = tmp.join("incidentd.toml");
    std::fs::write(&path, config)?;
    let started = Instant::now();
    let mut cmd = Command::new(args.binary.clone().unwrap_or_else(incidentd_binary));
    cmd.arg("serve").arg("--config").arg(&path);
    if let Some(rules) = rules {
        cmd.arg("--rules").arg(rules);
    }
    let child = cmd
        .env(
            "RUST_LOG",
            std::env::var("STORM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.join("incidentd.log"))?)
        .spawn()?;
    let proc = Proc {
        child,
        name: "incidentd",
    };
    // For profilers: `perf record -p <pid>`.
    println!(
        "incidentd pid {} (log {})",
        proc.pid(),
        tmp.join("incidentd.log").display()
    );
    wait_port(port, "incidentd").await?;
    let base = Http::new(port);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(r) = base.get("/readyz").await
            && r.status == 200
        {
            break;
        }
        if Instant::now() > deadline {
            return Err("incidentd never became ready".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((Incidentd { proc, base }, started.elapsed()))
}

async fn start_alertmanager(tmp: &Path) -> Res<(Proc, Http)> {
    let bin = find_binary(
        "prometheus-alertmanager",
        &["/usr/bin/prometheus-alertmanager"],
    )
    .ok_or("prometheus-alertmanager not installed (apt-get install prometheus-alertmanager)")?;
    let port = free_port()?;
    let config = tmp.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )?;
    let storage = tmp.join("am-data");
    std::fs::create_dir_all(&storage)?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", storage.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.join("alertmanager.log"))?)
        .spawn()?;
    let proc = Proc {
        child,
        name: "alertmanager",
    };
    wait_port(port, "alertmanager").await?;
    let http = Http::new(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get("/-/ready").await.map(|r| r.status).unwrap_or(0) != 200 {
        if Instant::now() > deadline {
            return Err("alertmanager never became ready".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((proc, http))
}

/// CPU seconds (user + system) and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcStat {
    cpu_s: f64,
    rss_kb: u64,
    hwm_kb: u64,
}

fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn proc_stat(pid: u32) -> ProcStat {
    let mut s = ProcStat::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            s.cpu_s = (ticks(11) + ticks(12)) / clk_tck();
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                s.rss_kb = kb();
            } else if line.starts_with("VmHWM:") {
                s.hwm_kb = kb();
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 keep-alive client: cheap enough that the load generator takes little of
// the two cores from the servers under test.

#[derive(Clone)]
struct Http {
    port: u16,
}

struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    port: u16,
}

impl Http {
    fn new(port: u16) -> Http {
        Http { port }
    }

    async fn connect(&self) -> Res<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            port: self.port,
        })
    }

    async fn get(&self, path: &str) -> Res<Reply> {
        self.connect().await?.request("GET", path, b"").await
    }
}

impl Conn {
    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Res<Reply> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        if body.len() < 64 * 1024 {
            let mut whole = Vec::with_capacity(head.len() + body.len());
            whole.extend_from_slice(head.as_bytes());
            whole.extend_from_slice(body);
            self.stream.write_all(&whole).await?;
        } else {
            self.stream.write_all(head.as_bytes()).await?;
            self.stream.write_all(body).await?;
        }
        self.read_reply().await
    }

    async fn fill(&mut self) -> Res<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_reply(&mut self) -> Res<Reply> {
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let (mut length, mut chunked, mut retry_after) = (0usize, false, None);
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "retry-after" => retry_after = Some(v.to_string()),
                _ => {}
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf, b"\r\n") {
                        break p;
                    }
                    self.fill().await?;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("0")
                        .trim(),
                    16,
                )?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        };
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Alerts

const NAMES: [&str; 4] = ["InstanceDown", "HighLatency", "DiskLatencyHigh", "CPUHigh"];
const SEVERITIES: [&str; 4] = ["critical", "major", "warning", "minor"];
const TEAMS: [&str; 4] = ["network", "platform", "storage", "payments"];

/// One alert of the storm: identity `key`, or a probe with a unique dedup key.
struct Gen {
    cis: Vec<String>,
    /// A minute ago: alerts must not start in the future, or Alertmanager refuses them.
    starts: String,
}

impl Gen {
    fn new(cmdb: bool) -> Res<Gen> {
        let cis = if cmdb {
            let spec: Value =
                serde_json::from_slice(&std::fs::read(repo("fixtures/cmdb/example.json"))?)?;
            spec["cis"]
                .as_array()
                .ok_or("cmdb without cis")?
                .iter()
                .filter(|c| matches!(c["type"].as_str(), Some("host" | "vm")))
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect()
        } else {
            (0..5000).map(|i| format!("node-{i:04}")).collect()
        };
        let starts = incidentd::model::format_time(incidentd::clock::now() - 60_000);
        Ok(Gen { cis, starts })
    }

    fn parts(&self, key: usize) -> (&str, &str, &str, &str) {
        let ci = &self.cis[key % self.cis.len()];
        let rest = key / self.cis.len();
        (
            ci,
            NAMES[rest % NAMES.len()],
            SEVERITIES[(key / 7) % SEVERITIES.len()],
            TEAMS[(key / 3) % TEAMS.len()],
        )
    }

    fn summary(ci: &str, name: &str, target: usize, used: usize) -> String {
        let mut s = format!("{name} on {ci}: threshold exceeded for 5m, see runbook");
        while used + s.len() < target {
            s.push('.');
        }
        s
    }

    /// Native JSON (~358 bytes); `probe` gives it a unique dedup key.
    fn native(&self, key: usize, probe: Option<usize>) -> String {
        let (ci, name, sev, team) = self.parts(key);
        let dedup = probe.map_or(String::new(), |p| format!(",\"dedup_key\":\"probe-{p}\""));
        let head = format!(
            "{{\"source\":\"storm\",\"name\":\"{name}\",\"ci\":\"{ci}\",\"severity\":\"{sev}\",\"status\":\"firing\",\"summary\":\""
        );
        let tail = format!(
            "\",\"labels\":{{\"check\":\"c{key}\",\"dc\":\"dc1\",\"team\":\"{team}\",\"env\":\"prod\"}},\"starts_at\":\"{starts}\"{dedup}}}",
            starts = self.starts
        );
        let summary = Self::summary(ci, name, 358, head.len() + tail.len());
        format!("{head}{summary}{tail}")
    }

    /// Alertmanager `postableAlert` JSON carrying the same information.
    fn alertmanager(&self, key: usize, probe: Option<usize>) -> String {
        self.alertmanager_until(key, probe, None)
    }

    /// [`Gen::alertmanager`] with an `endsAt`: one in the past resolves the alert.
    fn alertmanager_until(&self, key: usize, probe: Option<usize>, ends: Option<&str>) -> String {
        let (ci, name, sev, team) = self.parts(key);
        let probe = probe.map_or(String::new(), |p| format!(",\"probe\":\"{p}\""));
        let head = format!(
            "{{\"labels\":{{\"alertname\":\"{name}\",\"source\":\"storm\",\"ci\":\"{ci}\",\"severity\":\"{sev}\",\"check\":\"c{key}\",\"dc\":\"dc1\",\"team\":\"{team}\",\"env\":\"prod\"{probe}}},\"annotations\":{{\"summary\":\""
        );
        let ends = ends.map_or(String::new(), |e| format!(",\"endsAt\":\"{e}\""));
        let tail = format!(
            "\"}},\"startsAt\":\"{}\"{ends},\"generatorURL\":\"http://storm.example/graph\"}}",
            self.starts
        );
        let summary = Self::summary(ci, name, 358, head.len() + tail.len());
        format!("{head}{summary}{tail}")
    }

    /// The key of alert `i` and whether it is a probe.
    fn key(args: &Args, i: usize) -> (usize, Option<usize>) {
        let key = if args.distinct == 0 {
            i
        } else {
            i % args.distinct
        };
        let probe = (args.sample > 0 && i % args.sample == args.sample - 1).then_some(i);
        (key, probe)
    }

    fn probe_fingerprint(p: usize) -> Fingerprint {
        Fingerprint::native(
            "storm",
            "",
            None,
            &Default::default(),
            Some(&format!("probe-{p}")),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Default)]
struct Outcome {
    label: String,
    offered: u64,
    accepted: u64,
    rejected: u64,
    shed: u64,
    /// In requests that failed (e.g. connection reset) and that the server's counters show
    /// were not stored.
    failed: u64,
    /// Offered but neither accepted, rejected, shed nor proven not stored.
    unaccounted: u64,
    elapsed: Duration,
    /// Rate the sender achieved (offered / send time).
    offered_rate: f64,
    latency: Option<Histogram<u64>>,
    latency_what: &'static str,
    probes_missing: u64,
    /// (name, cpu seconds during the run, rss kB at end, peak rss kB)
    procs: Vec<(String, ProcStat)>,
    notes: Vec<String>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn print(&self) {
        println!("\n== {} ==", self.label);
        println!(
            "offered {} ({:.0}/s offered), accepted {}, rejected {}, shed {}, failed {}, unaccounted {}",
            self.offered,
            self.offered_rate,
            self.accepted,
            self.rejected,
            self.shed,
            self.failed,
            self.unaccounted
        );
        println!(
            "sustained {:.0} accepted alerts/s over {:.3} s",
            self.rate(),
            self.elapsed.as_secs_f64()
        );
        if let Some(h) = &self.latency {
            println!(
                "latency {} (n={}): p50 {:.3} ms  p99 {:.3} ms  p999 {:.3} ms  max {:.3} ms{}",
                self.latency_what,
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
                if self.probes_missing > 0 {
                    format!(" ({} probes never seen)", self.probes_missing)
                } else {
                    String::new()
                }
            );
        }
        for (name, s) in &self.procs {
            println!(
                "{name:<14} cpu {:.2} s ({:.2} cores, {:.2} µs/alert)  rss {:.1} MB  peak {:.1} MB",
                s.cpu_s,
                s.cpu_s / self.elapsed.as_secs_f64().max(1e-9),
                s.cpu_s * 1e6 / self.accepted.max(1) as f64,
                s.rss_kb as f64 / 1024.0,
                s.hwm_kb as f64 / 1024.0
            );
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    fn to_json(&self) -> Value {
        let lat = self.latency.as_ref().map(|h| {
            json!({
                "what": self.latency_what,
                "n": h.len(),
                "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
                "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
                "p999_ms": h.value_at_quantile(0.999) as f64 / 1000.0,
                "max_ms": h.max() as f64 / 1000.0,
                "probes_missing": self.probes_missing,
            })
        });
        let procs: Vec<Value> = self
            .procs
            .iter()
            .map(|(n, s)| json!({"name": n, "cpu_s": s.cpu_s, "rss_kb": s.rss_kb, "peak_rss_kb": s.hwm_kb}))
            .collect();
        json!({
            "label": self.label,
            "offered": self.offered,
            "offered_rate": self.offered_rate,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "shed": self.shed,
            "failed": self.failed,
            "unaccounted": self.unaccounted,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "accepted_per_s": self.rate(),
            "latency": lat,
            "procs": procs,
            "notes": self.notes,
        })
    }

    /// Offered must equal accepted + rejected + shed; anything else is a silent loss.
    fn check(&self) -> Res<()> {
        if self.offered
            != self.accepted + self.rejected + self.shed + self.failed + self.unaccounted
        {
            return Err(format!(
                "{}: counts do not add up: offered {} != accepted {} + rejected {} + shed {} + unaccounted {}",
                self.label, self.offered, self.accepted, self.rejected, self.shed, self.unaccounted
            )
            .into());
        }
        if self.unaccounted > 0 {
            return Err(format!(
                "{}: {} offered alerts were neither accepted, rejected nor counted as shed",
                self.label, self.unaccounted
            )
            .into());
        }
        Ok(())
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("hdr"))
}

/// incidentd's counters from /metrics (sums over labels).
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    received: u64,
    rejected: u64,
    shed_alerts: u64,
    shed_nats_messages: u64,
    slow_consumer: u64,
    outbound_dropped: u64,
}

/// Sum of metric `name` over its series (those whose line contains `filter`) in a /metrics
/// text.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A note when the alerts the 2xx answers acknowledged differ from what /metrics counted.
fn mismatch(acknowledged: u64, counted: u64) -> Option<String> {
    (acknowledged != counted).then(|| {
        format!(
            "MISMATCH: 2xx answers acknowledged {acknowledged} alerts but /metrics counts {counted}"
        )
    })
}

/// One metric (summed over its labels) from incidentd's /metrics.
async fn metric(http: &Http, name: &str) -> Res<f64> {
    let r = http.get("/metrics").await?;
    Ok(metric_sum(&String::from_utf8_lossy(&r.body), name, ""))
}

async fn counters(http: &Http) -> Res<Counters> {
    let r = http.get("/metrics").await?;
    let text = String::from_utf8_lossy(&r.body);
    let sum = |name: &str, filter: &str| metric_sum(&text, name, filter) as u64;
    Ok(Counters {
        received: sum("incidentd_alerts_received_total", ""),
        rejected: sum("incidentd_alerts_rejected_total", ""),
        shed_alerts: sum("incidentd_alerts_shed_total", ""),
        shed_nats_messages: sum("incidentd_nats_messages_shed_total", ""),
        slow_consumer: sum("incidentd_nats_events_total", "slow_consumer"),
        outbound_dropped: sum("incidentd_outbound_dropped_total", ""),
    })
}

/// Cumulative bucket counts of incidentd's per-stage time histograms (`stage_seconds` by
/// stage, plus `log_append` for the writer's write + fsync), keyed by stage then `le`.
type StageBuckets = std::collections::BTreeMap<String, Vec<(f64, u64)>>;

async fn stage_buckets(http: &Http) -> Res<StageBuckets> {
    let r = http.get("/metrics").await?;
    let text = String::from_utf8_lossy(&r.body);
    let mut out = StageBuckets::new();
    for line in text.lines() {
        let (stage, rest) = if let Some(rest) = line.strip_prefix("incidentd_stage_seconds_bucket{")
        {
            let Some((stage, rest)) = rest
                .strip_prefix("stage=\"")
                .and_then(|r| r.split_once("\","))
            else {
                continue;
            };
            (stage.to_string(), rest)
        } else if let Some(rest) = line.strip_prefix("incidentd_log_append_seconds_bucket{") {
            ("log_append".to_string(), rest)
        } else {
            continue;
        };
        let Some((le, count)) = rest
            .strip_prefix("le=\"")
            .and_then(|r| r.split_once("\"} "))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        out.entry(stage)
            .or_default()
            .push((le, count.trim().parse::<f64>()? as u64));
    }
    Ok(out)
}

/// One line per stage that ran between the two scrapes: how many batches, how many took
/// over 3.2 and 12.8 ms, and the bucket of the slowest, so a latency tail can be laid at
/// the door of the stage (or snapshot) that caused it.
fn stage_note(before: &StageBuckets, after: &StageBuckets) -> Vec<String> {
    let mut lines = Vec::new();
    for (stage, buckets) in after {
        let base = |le: f64| {
            before
                .get(stage)
                .and_then(|b| b.iter().find(|(l, _)| *l == le))
                .map_or(0, |(_, c)| *c)
        };
        let delta: Vec<(f64, u64)> = buckets.iter().map(|&(le, c)| (le, c - base(le))).collect();
        let total = delta.last().map_or(0, |&(_, c)| c);
        if total == 0 {
            continue;
        }
        let over = |ms: f64| {
            total
                - delta
                    .iter()
                    .find(|(le, _)| *le >= ms / 1e3)
                    .map_or(total, |&(_, c)| c)
        };
        let max = delta
            .iter()
            .find(|&&(_, c)| c == total)
            .map_or(f64::INFINITY, |&(le, _)| le * 1e3);
        lines.push(format!(
            "stage {stage}: {total} runs, {} over 3.2 ms, {} over 12.8 ms, slowest ≤ {max} ms",
            over(3.2),
            over(12.8)
        ));
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Pacing

/// Token bucket: `take(n)` waits until `n` more sends fit the rate; none when flat out.
struct Pacer {
    rate: Option<f64>,
    start: Instant,
    granted: AtomicU64,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            rate,
            start: Instant::now(),
            granted: AtomicU64::new(0),
        }
    }

    async fn take(&self, n: u64) {
        let Some(rate) = self.rate else { return };
        let due = self.granted.fetch_add(n, Ordering::Relaxed) + n;
        let at = self.start + Duration::from_secs_f64(due as f64 / rate);
        let now = Instant::now();
        if at > now + Duration::from_micros(200) {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NATS modes

fn nats_payloads(args: &Args, gen_: &Gen) -> Vec<Bytes> {
    (0..args.alerts)
        .map(|i| {
            let (key, probe) = Gen::key(args, i);
            Bytes::from(gen_.native(key, probe))
        })
        .collect()
}

/// Publishes every payload (paced); `on_probe(i)` is called just before a probe is sent.
async fn publish_all(
    client: &async_nats::Client,
    subject: &str,
    payloads: &[Bytes],
    pacer: &Pacer,
    mut on_probe: impl FnMut(usize),
    sample: usize,
) -> Res<Duration> {
    let subject = async_nats::Subject::from(subject);
    let started = Instant::now();
    const STEP: usize = 64;
    for (c, chunk) in payloads.chunks(STEP).enumerate() {
        pacer.take(chunk.len() as u64).await;
        for (j, p) in chunk.iter().enumerate() {
            let i = c * STEP + j;
            if sample > 0 && i % sample == sample - 1 {
                on_probe(i);
            }
            client.publish(subject.clone(), p.clone()).await?;
        }
    }
    client.flush().await?;
    Ok(started.elapsed())
}

async fn run_raw_nats(args: &Args, tmp: &Path, payloads: &[Bytes]) -> Res<Outcome> {
    let (server, port) = start_nats(tmp).await?;
    let url = format!("nats://127.0.0.1:{port}");
    let sub_client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(&url)
        .await?;
    let mut sub = sub_client.subscribe("alerts.>").await?;
    sub_client.flush().await?;
    let pub_client = async_nats::connect(&url).await?;
    let expected = payloads.len() as u64;
    let got = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let counter = {
        let (got, last) = (got.clone(), last.clone());
        tokio::spawn(async move {
            while let Some(_m) = sub.next().await {
                let n = got.fetch_add(1, Ordering::Relaxed) + 1;
                if n == expected {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    break;
                }
            }
        })
    };
    let before = proc_stat(server.pid());
    let pacer = Pacer::new(args.rate());
    let t0 = Instant::now();
    let send = publish_all(
        &pub_client,
        "alerts.native.storm",
        payloads,
        &pacer,
        |_| {},
        0,
    )
    .await?;
    // Wait for the subscriber; stop when nothing arrives for 3 s.
    let mut seen = 0;
    let mut idle_since = Instant::now();
    while got.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = got.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            idle_since = Instant::now();
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    counter.abort();
    let end = *last.lock().unwrap_or_else(|e| e.into_inner());
    let after = proc_stat(server.pid());
    let received = got.load(Ordering::Relaxed);
    Ok(Outcome {
        label: format!(
            "raw NATS delivery ({} msgs, rate {})",
            payloads.len(),
            args.rate
        ),
        offered: expected,
        accepted: received,
        unaccounted: expected - received,
        elapsed: end.saturating_duration_since(t0),
        offered_rate: expected as f64 / send.as_secs_f64().max(1e-9),
        procs: vec![(
            server.name.to_string(),
            ProcStat {
                cpu_s: after.cpu_s - before.cpu_s,
                ..after
            },
        )],
        notes: vec![format!(
            "payload {} bytes; publisher and subscriber are async-nats clients in the harness",
            payloads.first().map_or(0, Bytes::len)
        )],
        ..Outcome::default()
    })
}

/// Alerts incidentd has settled from NATS: taken in, rejected, or shed undecoded.
fn nats_settled(c: &Counters) -> u64 {
    c.received + c.rejected + c.shed_nats_messages
}

async fn run_nats(args: &Args, tmp: &Path, payloads: &[Bytes]) -> Res<Outcome> {
    let (nats, port) = start_nats(tmp).await?;
    let data = tmp.join("data-nats");
    let (d, _) = start_incidentd(args, tmp, &data, Some(port), None).await?;
    let url = format!("nats://127.0.0.1:{port}");
    let probe_client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(&url)
        .await?;
    let mut facts = probe_client.subscribe("incidents.alert_attached.>").await?;
    probe_client.flush().await?;
    let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(histogram()));
    let trace: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let watcher = {
        let (pending, hist, trace) = (pending.clone(), hist.clone(), trace.clone());
        tokio::spawn(async move {
            while let Some(m) = facts.next().await {
                // Every new alert's attach fact arrives here: a byte search, not a JSON parse,
                // so the harness does not take CPU from incidentd on the same two cores.
                let Some(fp) = fact_fingerprint(&m.payload) else {
                    continue;
                };
                let sent = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&fp.0);
                if let Some(sent) = sent {
                    let us = sent.elapsed().as_micros() as u64;
                    let _ = hist
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(us.max(1));
                    trace
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((sent, us));
                }
            }
        })
    };
    let pub_client = async_nats::connect(&url).await?;
    if args.warmup > 0 {
        let gen_ = Gen::new(args.cmdb)?;
        let warm: Vec<Bytes> = (args.alerts..args.alerts + args.warmup)
            .map(|key| Bytes::from(gen_.native(key, None)))
            .collect();
        let before = counters(&d.base).await?;
        let pacer = Pacer::new(args.rate());
        publish_all(&pub_client, "alerts.native.storm", &warm, &pacer, |_| {}, 0).await?;
        wait_settled(&d.base, before, warm.len() as u64, nats_settled).await?;
    }
    let base = counters(&d.base).await?;
    let stages_before = stage_buckets(&d.base).await?;
    let before = (proc_stat(d.proc.pid()), proc_stat(nats.pid()));
    let pacer = Pacer::new(args.rate());
    let t0 = Instant::now();
    let probes = pending.clone();
    let send = publish_all(
        &pub_client,
        "alerts.native.storm",
        payloads,
        &pacer,
        |i| {
            probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(Gen::probe_fingerprint(i).0, Instant::now());
        },
        args.sample,
    )
    .await?;
    let offered = payloads.len() as u64;
    let (end, c) = wait_settled(&d.base, base, offered, nats_settled).await?;
    let after = (proc_stat(d.proc.pid()), proc_stat(nats.pid()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.abort();
    let missing = pending.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    let hist = hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(path) = &args.latency_trace {
        let mut trace = std::mem::take(&mut *trace.lock().unwrap_or_else(|e| e.into_inner()));
        trace.sort_unstable();
        let start = trace.first().map_or(t0, |&(sent, _)| sent);
        let lines: String = trace
            .iter()
            .map(|&(sent, us)| format!("{:.3} {us}\n", (sent - start).as_secs_f64() * 1e3))
            .collect();
        std::fs::write(path, lines)?;
    }
    let accepted = c.received - base.received;
    let rejected = c.rejected - base.rejected;
    let shed = c.shed_nats_messages - base.shed_nats_messages;
    let lost = offered.saturating_sub(accepted + rejected + shed);
    let slow = c.slow_consumer - base.slow_consumer;
    let mut notes = vec![format!(
        "payload ~{} bytes; {} distinct; probes 1 in {}",
        payloads.first().map_or(0, Bytes::len),
        if args.distinct == 0 {
            "all".to_string()
        } else {
            args.distinct.to_string()
        },
        args.sample
    )];
    if args.warmup > 0 {
        notes.push(format!(
            "{} distinct warm-up alerts were in before the measured storm",
            args.warmup
        ));
    }
    notes.extend(stage_note(&stages_before, &stage_buckets(&d.base).await?));
    if c.outbound_dropped > base.outbound_dropped {
        notes.push(format!(
            "incidentd dropped {} outbound facts (publish queue full): probes may be missing",
            c.outbound_dropped - base.outbound_dropped
        ));
    }
    // Core NATS has no acknowledgement: messages the client library dropped as a slow
    // consumer are loss the server *counted* (slow_consumer events), not silent loss.
    let (shed, unaccounted) = if lost > 0 && slow > 0 {
        notes.push(format!(
            "{lost} messages dropped by the NATS client as a slow consumer ({slow} slow-consumer events counted by incidentd)"
        ));
        (shed + lost, 0)
    } else {
        (shed, lost)
    };
    Ok(Outcome {
        label: format!(
            "incidentd NATS ingest ({} alerts, {}, rate {}, cmdb {})",
            offered,
            match args.distinct {
                0 => "all distinct".to_string(),
                d => format!("{d} distinct re-sent"),
            },
            args.rate,
            args.cmdb
        ),
        offered,
        accepted,
        rejected,
        shed,
        failed: 0,
        unaccounted,
        elapsed: end.saturating_duration_since(t0),
        offered_rate: offered as f64 / send.as_secs_f64().max(1e-9),
        latency: Some(hist),
        latency_what: "publish → incident visible (probe's alert_attached fact)",
        probes_missing: missing,
        procs: vec![
            ("incidentd".into(), delta(before.0, after.0)),
            ("nats-server".into(), delta(before.1, after.1)),
        ],
        notes,
    })
}

fn delta(before: ProcStat, after: ProcStat) -> ProcStat {
    ProcStat {
        cpu_s: after.cpu_s - before.cpu_s,
        ..after
    }
}

/// Polls incidentd's counters until `done(counters)` reaches `offered`, or nothing moved
/// for 5 s; returns when the last progress happened and the final counters.
async fn wait_settled(
    http: &Http,
    base: Counters,
    offered: u64,
    done: impl Fn(&Counters) -> u64,
) -> Res<(Instant, Counters)> {
    let target = done(&base) + offered;
    let mut last = counters(http).await?;
    let mut last_change = Instant::now();
    loop {
        let value = done(&last);
        if value >= target {
            return Ok((last_change, last));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = counters(http).await?;
        if done(&now) != value {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(5) {
            return Ok((last_change, now));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP modes

/// Request bodies of `batch` alerts each, in the given format.
fn http_bodies(args: &Args, gen_: &Gen, am: bool, batch: usize) -> Vec<Bytes> {
    json_batches(args.alerts, batch, |i| {
        let (key, probe) = Gen::key(args, i);
        if am {
            gen_.alertmanager(key, probe)
        } else {
            gen_.native(key, probe)
        }
    })
}

/// JSON arrays of `batch` items each (the last may be short) of items `alert(0..total)`.
fn json_batches(total: usize, batch: usize, alert: impl Fn(usize) -> String) -> Vec<Bytes> {
    let mut bodies = Vec::with_capacity(total.div_ceil(batch));
    let mut i = 0;
    while i < total {
        let n = batch.min(total - i);
        let mut body = String::with_capacity(n * 380 + 2);
        body.push('[');
        for j in 0..n {
            if j > 0 {
                body.push(',');
            }
            body.push_str(&alert(i + j));
        }
        body.push(']');
        bodies.push(Bytes::from(body));
        i += n;
    }
    bodies
}

#[derive(Default)]
struct HttpTally {
    ok_alerts: AtomicU64,
    shed_alerts: AtomicU64,
    rejected_alerts: AtomicU64,
    errors: AtomicU64,
    without_retry_after: AtomicU64,
    /// What the errors were (status or I/O error), for the report.
    error_kinds: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl HttpTally {
    fn error(&self, kind: String, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        *self
            .error_kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += n;
    }

    fn error_note(&self) -> Option<String> {
        let kinds = self.error_kinds.lock().unwrap_or_else(|e| e.into_inner());
        (!kinds.is_empty()).then(|| format!("alerts in failed requests, by cause: {kinds:?}"))
    }
}

/// Sends every body over `conns` keep-alive connections (paced by alerts); returns the
/// tally, the request latency histogram and the send duration.
async fn post_all(
    http: &Http,
    path: &'static str,
    bodies: Arc<Vec<Bytes>>,
    batch: usize,
    total: usize,
    conns: usize,
    rate: Option<f64>,
) -> Res<(Arc<HttpTally>, Histogram<u64>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(HttpTally::default());
    let pacer = Arc::new(Pacer::new(rate));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, tally, pacer, bodies) =
            (next.clone(), tally.clone(), pacer.clone(), bodies.clone());
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut conn = http.connect().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let n = batch.min(total - i * batch) as u64;
                pacer.take(n).await;
                let sent = Instant::now();
                let reply = match conn.request("POST", path, body).await {
                    Ok(r) => r,
                    Err(e) => {
                        // Reconnect; the request's alerts count as errors.
                        tally.error(format!("io: {e}"), n);
                        conn = http.connect().await?;
                        continue;
                    }
                };
                let _ = hist.record((sent.elapsed().as_micros() as u64).max(1));
                match reply.status {
                    200..=299 => {
                        tally.ok_alerts.fetch_add(n, Ordering::Relaxed);
                    }
                    429 | 503 => {
                        tally.shed_alerts.fetch_add(n, Ordering::Relaxed);
                        if reply.retry_after.is_none() {
                            tally.without_retry_after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    400 => {
                        // Partial acceptance: the body says how many were accepted.
                        let accepted = serde_json::from_slice::<Value>(&reply.body)
                            .ok()
                            .and_then(|v| v["accepted"].as_u64())
                            .unwrap_or(0);
                        tally.ok_alerts.fetch_add(accepted, Ordering::Relaxed);
                        tally
                            .rejected_alerts
                            .fetch_add(n - accepted, Ordering::Relaxed);
                    }
                    other => tally.error(format!("HTTP {other}"), n),
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hist)
        }));
    }
    let mut hist = histogram();
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok((tally, hist, started.elapsed()))
}

async fn run_http_incidentd(
    args: &Args,
    tmp: &Path,
    batch: usize,
    bodies: Arc<Vec<Bytes>>,
) -> Res<Outcome> {
    let data = tmp.join(format!("data-http-{batch}"));
    let (d, _) = start_incidentd(args, tmp, &data, None, None).await?;
    let path = match args.api {
        Api::V2 => "/api/v2/alerts",
        Api::V1 => "/api/v1/alerts",
    };
    let base = counters(&d.base).await?;
    let stages_before = stage_buckets(&d.base).await?;
    let before = proc_stat(d.proc.pid());
    let me_before = proc_stat(std::process::id());
    let (tally, hist, elapsed) = post_all(
        &d.base,
        path,
        bodies,
        batch,
        args.alerts,
        args.conns,
        args.rate(),
    )
    .await?;
    let after = proc_stat(d.proc.pid());
    let me_after = proc_stat(std::process::id());
    let c = counters(&d.base).await?;
    let ok = tally.ok_alerts.load(Ordering::Relaxed);
    let mut notes = vec![format!(
        "{} on {path}, batch {batch}, {} connections; server counted {} received, {} rejected, {} shed",
        match args.api {
            Api::V2 => "Alertmanager postableAlerts",
            Api::V1 => "native JSON",
        },
        args.conns,
        c.received - base.received,
        c.rejected - base.rejected,
        c.shed_alerts - base.shed_alerts
    )];
    notes.extend(mismatch(ok, c.received - base.received));
    notes.extend(stage_note(&stages_before, &stage_buckets(&d.base).await?));
    notes.extend(tally.error_note());
    let without = tally.without_retry_after.load(Ordering::Relaxed);
    if without > 0 {
        notes.push(format!("{without} 429/503 answers without Retry-After"));
    }
    let offered = args.alerts as u64;
    let errors = tally.errors.load(Ordering::Relaxed);
    // A failed request (connection reset) is fine when the server stored none of it: its
    // received counter then equals what the 2xx answers acknowledged.
    let (failed, errors) = if c.received - base.received == ok {
        (errors, 0)
    } else {
        (0, errors)
    };
    Ok(Outcome {
        label: format!(
            "incidentd HTTP ingest ({} alerts, batch {batch}, {} conns, rate {})",
            args.alerts, args.conns, args.rate
        ),
        offered,
        accepted: ok,
        rejected: tally.rejected_alerts.load(Ordering::Relaxed),
        shed: tally.shed_alerts.load(Ordering::Relaxed),
        failed,
        unaccounted: errors,
        elapsed,
        offered_rate: offered as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: Some(hist),
        latency_what: "request → 2xx (durable and visible)",
        procs: vec![
            ("incidentd".into(), delta(before, after)),
            ("harness".into(), delta(me_before, me_after)),
        ],
        notes,
        ..Outcome::default()
    })
}

async fn run_alertmanager(
    args: &Args,
    tmp: &Path,
    batch: usize,
    bodies: Arc<Vec<Bytes>>,
) -> Res<Outcome> {
    let (am, http) = start_alertmanager(tmp).await?;
    let before = proc_stat(am.pid());
    let me_before = proc_stat(std::process::id());
    let (tally, hist, elapsed) = post_all(
        &http,
        "/api/v2/alerts",
        bodies,
        batch,
        args.alerts,
        args.conns,
        args.rate(),
    )
    .await?;
    let after = proc_stat(am.pid());
    let me_after = proc_stat(std::process::id());
    let offered = args.alerts as u64;
    Ok(Outcome {
        label: format!(
            "Alertmanager /api/v2/alerts ({} alerts, batch {batch}, {} conns, rate {})",
            args.alerts, args.conns, args.rate
        ),
        offered,
        accepted: tally.ok_alerts.load(Ordering::Relaxed),
        rejected: tally.rejected_alerts.load(Ordering::Relaxed),
        shed: tally.shed_alerts.load(Ordering::Relaxed),
        unaccounted: tally.errors.load(Ordering::Relaxed),
        elapsed,
        offered_rate: offered as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: Some(hist),
        latency_what: "request → 200 (in memory)",
        procs: vec![
            (am.name.to_string(), delta(before, after)),
            ("harness".into(), delta(me_before, me_after)),
        ],
        notes: std::iter::once("Alertmanager keeps alerts in memory only (no fsync)".into())
            .chain(tally.error_note())
            .collect(),
        ..Outcome::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Memory, restart, overload

async fn run_memory(args: &Args, tmp: &Path) -> Res<Vec<Outcome>> {
    let gen_ = Gen::new(args.cmdb)?;
    let mut args = args.clone();
    args.distinct = 0;
    args.sample = 0;
    let bodies = Arc::new(http_bodies(&args, &gen_, true, args.batch));
    let mut out = Vec::new();
    let data = tmp.join("data-mem");
    let (d, _) = start_incidentd(&args, tmp, &data, None, None).await?;
    out.push(memory_growth(&args, "incidentd", d.proc.pid(), &d.base, bodies.clone()).await?);
    drop(d); // measured alone, as Alertmanager is
    if args.baseline
        && find_binary(
            "prometheus-alertmanager",
            &["/usr/bin/prometheus-alertmanager"],
        )
        .is_some()
    {
        let (am, http) = start_alertmanager(tmp).await?;
        out.push(memory_growth(&args, "alertmanager", am.pid(), &http, bodies).await?);
    }
    Ok(out)
}

/// Posts every body to `/api/v2/alerts` of the server at `http` (process `pid`) and reports
/// its RSS growth per accepted alert.
async fn memory_growth(
    args: &Args,
    name: &str,
    pid: u32,
    http: &Http,
    bodies: Arc<Vec<Bytes>>,
) -> Res<Outcome> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_stat(pid);
    let (tally, _, elapsed) = post_all(
        http,
        "/api/v2/alerts",
        bodies,
        args.batch,
        args.alerts,
        args.conns,
        None,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc_stat(pid);
    let ok = tally.ok_alerts.load(Ordering::Relaxed);
    let per = (after.rss_kb.saturating_sub(before.rss_kb)) as f64 * 1024.0 / ok.max(1) as f64;
    let mut o = Outcome {
        label: format!("{name} memory with {ok} active alerts"),
        offered: args.alerts as u64,
        accepted: ok,
        shed: tally.shed_alerts.load(Ordering::Relaxed),
        rejected: tally.rejected_alerts.load(Ordering::Relaxed),
        unaccounted: tally.errors.load(Ordering::Relaxed),
        elapsed,
        procs: vec![(name.into(), after)],
        ..Outcome::default()
    };
    o.notes.push(format!(
        "RSS before {:.1} MB, after {:.1} MB (peak {:.1} MB): {:.0} bytes per active alert (RSS growth / alerts)",
        before.rss_kb as f64 / 1024.0,
        after.rss_kb as f64 / 1024.0,
        after.hwm_kb as f64 / 1024.0,
        per
    ));
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Churn

/// One round of a churn run, as measured once its incidents resolved (and closed).
struct ChurnRound {
    round: usize,
    /// Distinct alerts posted since start (each fired once and resolved once).
    posted: u64,
    /// Incidents in the read model (any state) after the round's alerts fired.
    incidents: u64,
    /// Time from the last resolving answer until no incident was active (and, when closing,
    /// none was left at all).
    settle: Duration,
    stat: ProcStat,
    interned: u64,
}

/// One churn run: its rounds, RSS before the first, and the totals for its [`Outcome`].
struct ChurnRun {
    close_after: &'static str,
    start: ProcStat,
    rounds: Vec<ChurnRound>,
    outcome: Outcome,
}

impl ChurnRun {
    fn print_round(&self, r: &ChurnRound) {
        let grown = r.stat.rss_kb as f64 - self.start.rss_kb as f64;
        println!(
            "round {:>2}  alerts posted {:>9}  incidents {:>7}  settled in {:>5.1} s  rss {:>8.1} MB  {:>6.0} B/alert posted (growth since start {:>6.0} B/alert)  interned strings {:>9}",
            r.round,
            r.posted,
            r.incidents,
            r.settle.as_secs_f64(),
            r.stat.rss_kb as f64 / 1024.0,
            r.stat.rss_kb as f64 * 1024.0 / r.posted.max(1) as f64,
            grown * 1024.0 / r.posted.max(1) as f64,
            r.interned
        );
    }

    /// RSS growth from round 1 to the last, in total and per alert posted after round 1.
    fn growth(&self) -> String {
        let (Some(first), Some(last)) = (self.rounds.first(), self.rounds.last()) else {
            return "no rounds".into();
        };
        let grown_kb = last.stat.rss_kb as f64 - first.stat.rss_kb as f64;
        let after = last.posted - first.posted;
        let per = if after > 0 {
            format!("{:.0} B", grown_kb * 1024.0 / after as f64)
        } else {
            "n/a".into()
        };
        format!(
            "close_after {}: RSS round 1 → {} {:+.1} MB ({:.1} → {:.1} MB), {per} per alert posted after round 1 ({after} alerts); interned strings {} → {}; peak RSS (VmHWM) {:.1} MB",
            self.close_after,
            last.round,
            grown_kb / 1024.0,
            first.stat.rss_kb as f64 / 1024.0,
            last.stat.rss_kb as f64 / 1024.0,
            first.interned,
            last.interned,
            last.stat.hwm_kb as f64 / 1024.0
        )
    }
}

/// A rules directory holding `rules/default.toml` with a churn lifecycle: incidents resolve
/// 1 s after their alerts and close `close_after` later ("0s": never).
fn churn_rules(tmp: &Path, close_after: &str) -> Res<PathBuf> {
    let mut text = std::fs::read_to_string(repo("rules/default.toml"))?;
    for (key, from, to) in [
        ("hold_down", "5m", "1s"),
        ("reopen_window", "30m", "1s"),
        ("close_after", "7d", close_after),
    ] {
        let old = format!("{key} = \"{from}\"");
        if text.matches(&old).count() != 1 {
            return Err(format!(
                "rules/default.toml: expected exactly one `{old}` (in [lifecycle]) to replace with {key} = \"{to}\""
            )
            .into());
        }
        text = text.replace(&old, &format!("{key} = \"{to}\""));
    }
    let dir = tmp.join(format!("rules-churn-close-{close_after}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("default.toml"), text)?;
    Ok(dir)
}

/// `total` of `GET /api/v1/incidents?{query}limit=1`.
async fn incident_total(http: &Http, query: &str) -> Res<u64> {
    let path = format!("/api/v1/incidents?{query}limit=1");
    let r = http.get(&path).await?;
    if r.status != 200 {
        return Err(format!(
            "GET {path}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
        .into());
    }
    serde_json::from_slice::<Value>(&r.body)?["total"]
        .as_u64()
        .ok_or_else(|| format!("GET {path}: no `total` in the answer").into())
}

/// Polls until every query's total is 0; fails after `timeout`.
async fn wait_no_incidents(
    http: &Http,
    queries: &[&str],
    timeout: Duration,
    what: &str,
) -> Res<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = Vec::new();
        for q in queries {
            let n = incident_total(http, q).await?;
            if n > 0 {
                left.push(format!("{n} for ?{q}"));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: incidents still listed after {:.0} s: {}",
                timeout.as_secs_f64(),
                left.join(", ")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts the bodies (`n` alerts) to `/api/v2/alerts`; fails unless every alert got a 2xx.
async fn churn_post(
    args: &Args,
    http: &Http,
    bodies: Vec<Bytes>,
    n: usize,
    what: &str,
) -> Res<Duration> {
    let (tally, _, elapsed) = post_all(
        http,
        "/api/v2/alerts",
        Arc::new(bodies),
        args.batch,
        n,
        args.conns,
        None,
    )
    .await?;
    let ok = tally.ok_alerts.load(Ordering::Relaxed);
    if ok != n as u64 {
        return Err(format!(
            "churn {what}: {ok} of {n} alerts accepted (rejected {}, shed {}, in failed requests {}){}",
            tally.rejected_alerts.load(Ordering::Relaxed),
            tally.shed_alerts.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
            tally
                .error_note()
                .map_or(String::new(), |n| format!("; {n}"))
        )
        .into());
    }
    Ok(elapsed)
}

/// `--rounds` rounds against a fresh incidentd whose lifecycle closes resolved incidents
/// `close_after` after they resolved ("0s": never). Each round fires `--alerts` new alerts
/// (Alertmanager postableAlerts, as `memory` posts), resolves them (`endsAt` in the past),
/// waits until no incident is active (and, when closing, none is left), then reads RSS.
async fn churn_run(args: &Args, tmp: &Path, close_after: &'static str) -> Res<ChurnRun> {
    let closes = close_after != "0s";
    let rules = churn_rules(tmp, close_after)?;
    let data = tmp.join(format!("data-churn-close-{close_after}"));
    let (d, _) = start_incidentd(args, tmp, &data, None, Some(&rules)).await?;
    let pid = d.proc.pid();
    println!(
        "\n== churn: close_after {close_after}{} (hold_down 1s, reopen_window 1s), {} rounds × {} new alerts fired then resolved ==",
        if closes { "" } else { " = never close" },
        args.rounds,
        args.alerts
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = counters(&d.base).await?;
    let start = proc_stat(pid);
    println!(
        "before round 1: rss {:.1} MB, interned strings {}",
        start.rss_kb as f64 / 1024.0,
        metric(&d.base, "incidentd_interned_strings").await?
    );
    let n = args.alerts;
    // Closing is due 3 s after the last resolve (plus ticks); allow for a slow engine.
    let timeout = Duration::from_secs(60 + (n / 10_000) as u64);
    let mut run = ChurnRun {
        close_after,
        start,
        rounds: Vec::new(),
        outcome: Outcome::default(),
    };
    let mut sending = Duration::ZERO;
    for round in 1..=args.rounds {
        // A fresh generator per round: startsAt a minute before this round's firing.
        let gen_ = Gen::new(args.cmdb)?;
        let first = (round - 1) * n;
        let firing = json_batches(n, args.batch, |i| gen_.alertmanager(first + i, None));
        sending += churn_post(args, &d.base, firing, n, &format!("round {round} firing")).await?;
        let incidents = incident_total(&d.base, "").await?;
        // In the past (so resolved) and after startsAt.
        let ends = incidentd::model::format_time(incidentd::clock::now() - 1_000);
        let resolved = json_batches(n, args.batch, |i| {
            gen_.alertmanager_until(first + i, None, Some(&ends))
        });
        sending += churn_post(
            args,
            &d.base,
            resolved,
            n,
            &format!("round {round} resolved"),
        )
        .await?;
        let settling = Instant::now();
        let what = format!("churn close_after {close_after} round {round}");
        wait_no_incidents(&d.base, &["state=active&"], timeout, &what).await?;
        if closes {
            wait_no_incidents(&d.base, &["state=resolved&", ""], timeout, &what).await?;
        }
        let settle = settling.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = ChurnRound {
            round,
            posted: (round * n) as u64,
            incidents,
            settle,
            stat: proc_stat(pid),
            interned: metric(&d.base, "incidentd_interned_strings").await? as u64,
        };
        run.print_round(&r);
        run.rounds.push(r);
    }
    let end = proc_stat(pid);
    let c = counters(&d.base).await?;
    let posted = 2 * (args.rounds * n) as u64;
    let mut notes = vec![
        run.growth(),
        format!(
            "Alertmanager postableAlerts on /api/v2/alerts, batch {}, {} connections; each alert posted twice (firing, then resolved with endsAt in the past); server counted {} received, {} rejected, {} shed",
            args.batch,
            args.conns,
            c.received - base.received,
            c.rejected - base.rejected,
            c.shed_alerts - base.shed_alerts
        ),
    ];
    notes.extend(mismatch(posted, c.received - base.received));
    run.outcome = Outcome {
        label: format!(
            "incidentd churn, close_after {close_after}: {} rounds × {n} alerts fired + resolved",
            args.rounds
        ),
        offered: posted,
        accepted: posted,
        elapsed: sending,
        offered_rate: posted as f64 / sending.as_secs_f64().max(1e-9),
        procs: vec![("incidentd".into(), delta(start, end))],
        notes,
        ..Outcome::default()
    };
    Ok(run)
}

/// Churn with closing (`close_after = "2s"`), then the same rounds never closing, then the
/// two side by side: RSS should stay flat with closing and grow without it.
async fn run_churn(args: &Args, tmp: &Path) -> Res<()> {
    let mut runs = vec![churn_run(args, tmp, "2s").await?];
    if args.baseline {
        runs.push(churn_run(args, tmp, "0s").await?);
    }
    for r in &runs {
        r.outcome.print();
    }
    println!("\n== churn: RSS after each round (MB), closing vs never closing ==");
    println!(
        "{:>5} {:>13} {}",
        "round",
        "alerts posted",
        runs.iter()
            .map(|r| format!(
                "{:>16} {:>18}",
                format!("rss close {}", r.close_after),
                format!("interned close {}", r.close_after)
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for i in 0..args.rounds {
        let Some(first) = runs[0].rounds.get(i) else {
            break;
        };
        println!(
            "{:>5} {:>13} {}",
            first.round,
            first.posted,
            runs.iter()
                .filter_map(|r| r.rounds.get(i))
                .map(|r| format!("{:>16.1} {:>18}", r.stat.rss_kb as f64 / 1024.0, r.interned))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    for r in &runs {
        println!("{}", r.growth());
    }
    if args.json {
        let all: Vec<Value> = runs.iter().map(|r| r.outcome.to_json()).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    let _ = std::io::stdout().flush();
    for r in &runs {
        r.outcome.check()?;
    }
    Ok(())
}

/// The `"fingerprint":"…"` of an outbound fact, found without parsing the JSON.
fn fact_fingerprint(payload: &[u8]) -> Option<Fingerprint> {
    const KEY: &[u8] = b"\"fingerprint\":\"";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let hex = payload.get(at..at + 16)?;
    Fingerprint::parse(std::str::from_utf8(hex).ok()?)
}

/// Starts incidentd on `data` and stops it once ready: start → `/readyz` and its CPU.
async fn time_start(a: &Args, tmp: &Path, data: &Path, label: String) -> Res<Outcome> {
    let (d, ready) = start_incidentd(a, tmp, data, None, None).await?;
    let stat = proc_stat(d.proc.pid());
    let stop = d.stop().await?;
    Ok(Outcome {
        label,
        elapsed: ready,
        procs: vec![("incidentd".into(), stat)],
        notes: vec![format!(
            "then SIGTERM → exit in {:.3} s",
            stop.as_secs_f64()
        )],
        ..Outcome::default()
    })
}

/// Writes `facts` facts into a fresh log by running the engine over a storm of alerts (a
/// mix of new alerts and coalesced repeats), then times incidentd's start until `/readyz`.
async fn run_restart(args: &Args, tmp: &Path) -> Res<Vec<Outcome>> {
    use incidentd::engine::facts::encode_record;
    use incidentd::engine::{Engine, Input};
    use incidentd::eventlog::{EventLog, LogConfig};
    use incidentd::ingest::{self, Format, Limits, Stamp};

    let data = tmp.join("data-restart");
    let log_dir = data.join("log");
    let gen_ = Gen::new(args.cmdb)?;
    let (rules, _) = incidentd::app::load_rules(Some(&repo("rules"))).map_err(|e| e.to_string())?;
    let cmdb_path = repo("fixtures/cmdb/example.json");
    let (cmdb, from) = incidentd::app::load_cmdb(Some(&cmdb_path)).map_err(|e| e.to_string())?;
    let mut engine = Engine::new(rules.clone());
    let (mut log, _) = EventLog::open(LogConfig::new(&log_dir), |_, _| Ok::<(), String>(()))
        .map_err(|e| format!("{e:?}"))?;
    let mut facts = Vec::new();
    let mut buf = Vec::new();
    // The generator stamps alerts with the wall clock; engine time must be near it, or the
    // decoder's time bounds refuse every alert and no fact is ever written.
    let t0 = incidentd::clock::now();
    engine.load_rules(rules, t0, &mut facts);
    if args.cmdb {
        engine.load_cmdb(&cmdb, &from, t0, &mut facts);
    }
    let limits = Limits::default();
    let started = Instant::now();
    let mut written = 0u64;
    let mut i = 0usize;
    // Half the alerts are new; the other half repeat a recent one (coalesced per batch).
    while written < args.facts {
        engine.begin_batch();
        let mut body = String::from("[");
        for j in 0..256 {
            if j > 0 {
                body.push(',');
            }
            let key = if (i + j).is_multiple_of(2) {
                i + j
            } else {
                (i + j) / 2
            };
            body.push_str(&gen_.native(key, None));
        }
        body.push(']');
        let now = t0 + (i as i64 / 256) * 10;
        let decoded = ingest::decode(Format::Native, body.as_bytes(), Stamp::Live(now), &limits)
            .map_err(|e| e.message)?;
        if let Some(e) = decoded.errors.first() {
            return Err(format!("the generator's alerts are refused: {e}").into());
        }
        for a in &decoded.alerts {
            let _ = engine.handle(Input::Alert(a), &mut facts);
        }
        i += 256;
        for f in facts.drain(..) {
            encode_record(&f, &mut buf)?;
            log.append(&buf)?;
            written += 1;
        }
        log.sync()?;
    }
    drop(log);
    let gen_time = started.elapsed();
    // The generator's engine holds every alert (gigabytes): not beside the measured process.
    drop(engine);
    let log_bytes: u64 = std::fs::read_dir(&log_dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mut out = Vec::new();
    let mut a = args.clone();
    a.snapshot_every = 0; // replay everything: no snapshot written at shutdown either
    let mut builds = vec![("this build".to_string(), a.clone(), Vec::new())];
    if let Some(other) = &args.compare {
        let mut b = a.clone();
        b.binary = Some(other.clone());
        builds.push((other.display().to_string(), b, Vec::new()));
    }
    for round in 0..args.repeat.max(1) {
        // Alternate which build goes first, so neither always follows the other.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..builds.len()).collect()
        } else {
            (0..builds.len()).rev().collect()
        };
        for k in order {
            let (name, a, times) = &mut builds[k];
            let label = format!(
                "restart with {written} facts in the log, no snapshot (full replay), {name}"
            );
            let mut o = time_start(a, tmp, &data, label).await?;
            let ready = o.elapsed;
            times.push((ready.as_secs_f64(), o.procs[0].1.cpu_s));
            o.notes.push(format!(
                "log {:.1} MB, {} alerts offered to the generator in {:.1} s; start → /readyz 200 in {:.3} s = {:.0} facts/s replayed (includes process start, rules and CMDB load)",
                log_bytes as f64 / 1e6,
                i,
                gen_time.as_secs_f64(),
                ready.as_secs_f64(),
                written as f64 / ready.as_secs_f64()
            ));
            out.push(o);
        }
    }
    if args.repeat > 1 || builds.len() > 1 {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut medians = Vec::new();
        for (name, _, times) in &builds {
            let wall = median(times.iter().map(|t| t.0).collect());
            let cpu = median(times.iter().map(|t| t.1).collect());
            println!(
                "full replay, {name}: median {wall:.3} s = {:.0} facts/s, CPU median {cpu:.2} s ({} runs)",
                written as f64 / wall,
                times.len()
            );
            medians.push((wall, cpu));
        }
        if let [(wall_a, cpu_a), (wall_b, cpu_b), ..] = medians[..] {
            println!(
                "full replay, this build / compared: wall {:.3}, CPU {:.3}",
                wall_a / wall_b,
                cpu_a / cpu_b
            );
        }
    }

    if !args.restart_snapshot {
        return Ok(out);
    }
    // With snapshots: incidentd writes one at shutdown; the next start loads it + the tail.
    let mut a = args.clone();
    a.snapshot_every = 1_000_000_000;
    let stop = {
        let (d, _) = start_incidentd(&a, tmp, &data, None, None).await?;
        // One new fact, so the engine has something to snapshot; SIGTERM then writes the
        // last snapshot before exit.
        let one = format!("[{}]", gen_.native(usize::MAX / 2, None));
        let r = d
            .base
            .connect()
            .await?
            .request("POST", "/api/v1/alerts", one.as_bytes())
            .await?;
        if r.status != 200 {
            return Err(format!("posting the last alert: HTTP {}", r.status).into());
        }
        d.stop().await?
    };
    let snap_bytes: u64 = std::fs::read_dir(data.join("snapshots"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let label = format!("restart with {written} facts in the log, from a snapshot");
    let mut o = time_start(&a, tmp, &data, label).await?;
    o.notes.push(format!(
        "snapshot {:.1} MB, written by a SIGTERM → exit in {:.3} s; start → /readyz 200 in {:.3} s",
        snap_bytes as f64 / 1e6,
        stop.as_secs_f64(),
        o.elapsed.as_secs_f64()
    ));
    out.push(o);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

/// Distinct alerts in the `all` mode's storm of repeats.
const REPEAT_DISTINCT: usize = 2_000;
/// Connections in the `all` mode's second one-alert-per-request pair.
const MANY_CONNS: usize = 64;

fn print_ratio(what: &str, a: &Outcome, b: &Outcome, target: f64) {
    let ratio = a.rate() / b.rate().max(1e-9);
    println!(
        "{what:<44} {:>10.0}/s vs {:>10.0}/s  ratio {:>6.2}  target ≥ {target:<4} {}",
        a.rate(),
        b.rate(),
        ratio,
        if ratio >= target { "MET" } else { "NOT MET" }
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}, loadavg {}", load.trim())
}

async fn run(args: Args, mode: Mode) -> Res<()> {
    let tmp = tempfile::tempdir()?;
    // `STORM_KEEP=1` keeps the data dirs and logs (with `STORM_LOG=info`, incidentd's
    // snapshot timings) for a look after the run.
    let tmp = if std::env::var_os("STORM_KEEP").is_some() {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    let tmp = tmp.as_path();
    println!("machine: {}", machine());
    println!("args: {args:?}");
    let gen_ = Gen::new(args.cmdb)?;
    let mut results: Vec<Outcome> = Vec::new();
    match mode {
        Mode::RawNats => {
            let p = nats_payloads(&args, &gen_);
            results.push(run_raw_nats(&args, tmp, &p).await?);
        }
        Mode::Nats => {
            let p = nats_payloads(&args, &gen_);
            results.push(run_nats(&args, tmp, &p).await?);
        }
        Mode::HttpBatch | Mode::HttpSingle => {
            let batch = if mode == Mode::HttpSingle {
                1
            } else {
                args.batch
            };
            let bodies = Arc::new(http_bodies(&args, &gen_, args.api == Api::V2, batch));
            results.push(run_http_incidentd(&args, tmp, batch, bodies).await?);
        }
        Mode::Alertmanager => {
            let bodies = Arc::new(http_bodies(&args, &gen_, true, args.batch));
            results.push(run_alertmanager(&args, tmp, args.batch, bodies).await?);
        }
        Mode::All => {
            let p = nats_payloads(&args, &gen_);
            let raw = run_raw_nats(&args, tmp, &p).await?;
            raw.print();
            let nats = run_nats(&args, tmp, &p).await?;
            nats.print();
            drop(p);
            // What a real storm looks like: the same alerts re-sent (Prometheus re-sends every
            // evaluation), so most are repeats that the engine coalesces.
            let mut r = args.clone();
            r.distinct = REPEAT_DISTINCT;
            let p = nats_payloads(&r, &gen_);
            let nats_repeats = run_nats(&r, tmp, &p).await?;
            nats_repeats.print();
            drop(p);
            let mut a = args.clone();
            a.api = Api::V2;
            let bodies = Arc::new(http_bodies(&a, &gen_, true, a.batch));
            let am_batch = run_alertmanager(&a, tmp, a.batch, bodies.clone()).await?;
            am_batch.print();
            let inc_batch = run_http_incidentd(&a, tmp, a.batch, bodies).await?;
            inc_batch.print();
            // One alert per request: fewer alerts, the rates are lower.
            a.alerts = (args.alerts / 4).max(10_000);
            let bodies = Arc::new(http_bodies(&a, &gen_, true, 1));
            let am_single = run_alertmanager(&a, tmp, 1, bodies.clone()).await?;
            am_single.print();
            let inc_single = run_http_incidentd(&a, tmp, 1, bodies.clone()).await?;
            inc_single.print();
            // A durable acknowledgement waits for an fsync, so 8 closed-loop connections cap
            // the rate at 8 per fsync; with more clients in flight, group commit shares one.
            a.conns = MANY_CONNS;
            let am_single_many = run_alertmanager(&a, tmp, 1, bodies.clone()).await?;
            am_single_many.print();
            let inc_single_many = run_http_incidentd(&a, tmp, 1, bodies).await?;
            inc_single_many.print();
            println!("\n== ratios (same run) ==");
            print_ratio("NATS ingest / raw NATS delivery", &nats, &raw, 0.7);
            print_ratio(
                &format!("NATS, {REPEAT_DISTINCT} distinct re-sent / raw NATS"),
                &nats_repeats,
                &raw,
                0.7,
            );
            print_ratio(
                "HTTP batch 100: incidentd / Alertmanager",
                &inc_batch,
                &am_batch,
                8.0,
            );
            print_ratio(
                "HTTP single: incidentd / Alertmanager",
                &inc_single,
                &am_single,
                3.0,
            );
            print_ratio(
                &format!("HTTP single, {MANY_CONNS} conns: incidentd / AM"),
                &inc_single_many,
                &am_single_many,
                3.0,
            );
            results = vec![
                raw,
                nats,
                nats_repeats,
                am_batch,
                inc_batch,
                am_single,
                inc_single,
                am_single_many,
                inc_single_many,
            ];
            if args.json {
                let all: Vec<Value> = results.iter().map(Outcome::to_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            }
            let mut failed = Vec::new();
            for r in &results[1..] {
                if let Err(e) = r.check() {
                    failed.push(e.to_string());
                }
            }
            if !failed.is_empty() {
                return Err(failed.join("\n").into());
            }
            return Ok(());
        }
        Mode::Memory => results = run_memory(&args, tmp).await?,
        Mode::Churn => return run_churn(&args, tmp).await,
        Mode::Restart => results = run_restart(&args, tmp).await?,
        Mode::Overload => results = run_overload(&args, tmp, &gen_).await?,
    }
    for r in &results {
        r.print();
    }
    if args.json {
        let all: Vec<Value> = results.iter().map(Outcome::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    let _ = std::io::stdout().flush();
    for r in &results {
        if mode != Mode::RawNats {
            r.check()?;
        }
    }
    Ok(())
}

/// Measures HTTP batch capacity flat out, then offers `--factor` × that rate: every alert
/// must be accepted (2xx) or shed with 429/503 and Retry-After, and the server's counters
/// must agree with the answers.
async fn run_overload(args: &Args, tmp: &Path, gen_: &Gen) -> Res<Vec<Outcome>> {
    let mut a = args.clone();
    let bodies = Arc::new(http_bodies(&a, gen_, a.api == Api::V2, a.batch));
    a.rate = "flat".into();
    let cap = run_http_incidentd(&a, tmp, a.batch, bodies.clone()).await?;
    cap.print();
    let rate = cap.rate() * args.factor;
    a.rate = format!("{rate:.0}");
    let mut over = run_http_incidentd(&a, tmp, a.batch, bodies).await?;
    over.label = format!(
        "overload: {:.1} × capacity ({rate:.0} alerts/s offered) — {}",
        args.factor, over.label
    );
    Ok(vec![over])
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let Some(mode) = args.mode else {
        println!(
            "storm: skipped (no mode); run e.g. `cargo bench --bench storm -- all`, see BENCHMARKS.md"
        );
        return std::process::ExitCode::SUCCESS;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, mode)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storm: FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
