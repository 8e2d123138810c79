//! Wiring and shutdown order for `incidentd serve`.
//!
//! Start: load rules → open the event log and replay it into the engine and the read model →
//! start the pipeline threads → record the rules → NATS (background reconnect) → HTTP.
//! Stop (SIGINT/SIGTERM): NATS ingest drains → HTTP finishes in-flight requests within the
//! grace period → the engine works off its queue → the writer's last fsync → exit. A second
//! signal exits at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::api::{self, AppState};
use crate::clock;
use crate::cmdb::CmdbSpec;
use crate::config::Config;
use crate::engine::record::{DecodePipeline, REPLAY_DEPTH, Record, RecordError, decode_record_ref};
use crate::engine::{Engine, Fact, TOUCH_AHEAD};
use crate::eventlog::{EventLog, LogConfig, OpenError};
use crate::ingest::jetstream::JetStreamIngest;
use crate::ingest::nats::NatsIngest;
use crate::jslog::{FactLog, JetStreamLog, JsLogError};
use crate::metrics::Metrics;
use crate::pipeline::{self, Outbound, Shared};
use crate::rules::Rules;
use crate::view::{PreparedAlert, ReadModel};

/// Queued outbound incident facts before new ones are dropped (and counted).
const OUTBOUND_QUEUE: usize = 65_536;

/// Loads rules from `dir`, else `./rules` when it exists, else the built-in set.
pub fn load_rules(dir: Option<&Path>) -> anyhow::Result<(Rules, String)> {
    let default_dir = PathBuf::from("rules");
    match dir {
        Some(dir) => Ok((Rules::load_dir(dir)?, dir.display().to_string())),
        None if default_dir.is_dir() => Ok((
            Rules::load_dir(&default_dir)?,
            default_dir.display().to_string(),
        )),
        None => Ok((Rules::embedded()?, "built-in rules".to_string())),
    }
}

/// The example CMDB shipped in the repository, used when no CMDB is named.
const EXAMPLE_CMDB: &str = "fixtures/cmdb/example.json";

/// Loads the CMDB from `path`, else the example CMDB when present, else an empty one.
pub fn load_cmdb(path: Option<&Path>) -> anyhow::Result<(CmdbSpec, String)> {
    let example = PathBuf::from(EXAMPLE_CMDB);
    let path = match path {
        Some(p) => p.to_path_buf(),
        None if example.is_file() => example,
        None => return Ok((CmdbSpec::default(), "no CMDB".to_string())),
    };
    let spec = CmdbSpec::load(&path)?;
    let problems = spec.check();
    if let Some(first) = problems.first() {
        anyhow::bail!(
            "{}: {} problem(s), first: {}: {} (run `incidentd cmdb check {}`)",
            path.display(),
            problems.len(),
            first.location,
            first.message,
            path.display()
        );
    }
    Ok((spec, path.display().to_string()))
}

/// Runs the service until a shutdown signal.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let (rules, rules_from) = load_rules(cfg.rules.as_deref())?;
    tracing::info!(rules = rules.rules.len(), from = %rules_from, hash = %rules.hash, "rules loaded");
    let (cmdb, cmdb_from) = load_cmdb(cfg.cmdb.as_deref())?;
    tracing::info!(cis = cmdb.cis.len(), relations = cmdb.relations.len(), from = %cmdb_from, "cmdb loaded");

    // NATS first: with the JetStream backend the facts are there. The read model is
    // installed in `shared` once replayed.
    let shared = Arc::new(Shared::new(ReadModel::default(), metrics));
    shared.stream.set_capacity(cfg.stream_buffer);
    let nats = if cfg.nats_enabled {
        Some(connect_nats(&cfg.nats_url, shared.clone()).await?)
    } else {
        None
    };
    let log_dir = cfg.data_dir.join("log");
    let snapshot_dir = cfg.data_dir.join("snapshots");
    let (engine, view, log) = restore(&cfg, &rules, nats.as_ref(), &log_dir, &snapshot_dir).await?;
    shared.metrics.incidents_open.set(view.open_count() as i64);
    shared.metrics.incidents_held.set(view.held_count() as i64);
    *shared.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    let (outbound, publisher) = match &nats {
        Some(client) => {
            let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
            let publisher = tokio::spawn(publish_outbound(client.clone(), rx));
            (
                Some(Outbound {
                    prefix: cfg.outbound_prefix.clone(),
                    tx,
                }),
                Some(publisher),
            )
        }
        None => (None, None),
    };
    let (pipeline, running) = pipeline::start(
        engine,
        log,
        shared.clone(),
        outbound,
        cfg.engine_queue,
        Some(pipeline::SnapshotConfig {
            dir: snapshot_dir,
            every_facts: cfg.snapshot_every,
            log_dir: log_dir.clone(),
            prune_log: cfg.prune_log,
        }),
    )?;
    pipeline
        .load_rules(rules, clock::now())
        .await
        .context("recording the rules in the event log")?;
    pipeline
        .load_cmdb(cmdb, cmdb_from, clock::now())
        .await
        .context("recording the CMDB in the event log")?;
    let reloader = Arc::new(Reloader {
        rules: cfg.rules.clone(),
        pipeline: pipeline.clone(),
        shared: shared.clone(),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let hangup = tokio::spawn(reload_on_sighup(reloader.clone(), shutdown_rx.clone()));
    let limits = Arc::new(cfg.limits);
    let ingest = nats.clone().map(|client| {
        let ingest = NatsIngest {
            client,
            subject: cfg.jetstream.is_none().then(|| cfg.nats_subject.clone()),
            deadletter_subject: cfg.deadletter_subject.clone(),
            cmdb_subject: cfg.cmdb_subject.clone(),
            cmdb_deadletter_subject: cfg.cmdb_deadletter_subject.clone(),
            pipeline: pipeline.clone(),
            shared: shared.clone(),
            limits: limits.clone(),
        };
        tokio::spawn(ingest.run(shutdown_rx.clone()))
    });
    let durable = match (&nats, &cfg.jetstream) {
        (Some(client), Some(config)) => {
            let ingest = JetStreamIngest {
                client: client.clone(),
                config: config.clone(),
                deadletter_subject: cfg.deadletter_subject.clone(),
                pipeline: pipeline.clone(),
                shared: shared.clone(),
                limits: limits.clone(),
            };
            Some(tokio::spawn(ingest.run(shutdown_rx.clone())))
        }
        _ => None,
    };
    let ticker = tokio::spawn(tick(
        pipeline.clone(),
        cfg.tick_interval,
        shutdown_rx.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding HTTP listener on {}", cfg.listen))?;
    // The bound address, not the configured one: with port 0 the kernel picks it.
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    tracing::info!(%addr, "http listening");
    let router = api::router(AppState {
        pipeline,
        shared: shared.clone(),
        limits,
        nats_enabled: cfg.nats_enabled,
        max_body_bytes: cfg.max_body_bytes,
        reloader,
        started_at: clock::now(),
    })
    .layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        cfg.request_timeout,
    ));
    let server = tokio::spawn(serve_http(
        listener,
        router,
        Connections {
            header_timeout: cfg.header_timeout,
            max: cfg.max_connections,
            open: shared.metrics.http_connections.clone(),
            refused: shared.metrics.http_connections_refused.clone(),
        },
        shutdown_rx.clone(),
    ));

    wait_for_signal().await;
    tracing::info!("shutting down: draining ingest");
    let _ = shutdown_tx.send(true);
    // Live streams never end by themselves; graceful shutdown would wait for them.
    shared.stream.close();
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });

    if let Some(ingest) = ingest {
        match ingest.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "nats ingest ended with an error"),
            Err(e) => tracing::warn!(error = %e, "nats ingest task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(durable) = durable {
        match durable.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "jetstream ingest ended with an error"),
            Err(e) => tracing::warn!(error = %e, "jetstream ingest task failed"),
            Ok(Ok(())) => {}
        }
    }
    let _ = ticker.await;
    let _ = hangup.await;
    if tokio::time::timeout(cfg.shutdown_grace, server)
        .await
        .is_err()
    {
        tracing::warn!("http requests still running after the grace period; dropped");
    }
    // Every pipeline handle is gone now: the engine works off its queue, the writer commits
    // the rest with a final fsync, and both threads end.
    tokio::task::spawn_blocking(move || running.join()).await?;
    if let Some(publisher) = publisher {
        let _ = tokio::time::timeout(Duration::from_secs(5), publisher).await;
    }
    if let Some(client) = nats {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    }
    tracing::info!("stopped; event log synced");
    // The read model is millions of small blocks at scale: freeing them one by one took
    // 0.8 s of a stop at 10M facts, and the process exits next, which returns its memory
    // at once. Everything durable is written by now.
    std::mem::forget(shared);
    Ok(())
}

/// Reloads the rule files through the engine (SIGHUP, `POST /api/v1/rules/reload`). A broken
/// file keeps the old rules running and says why.
pub struct Reloader {
    rules: Option<PathBuf>,
    pipeline: pipeline::Pipeline,
    shared: Arc<Shared>,
}

/// What a successful reload loaded.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub from: String,
    pub rules: usize,
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Rules(#[from] crate::rules::RulesError),
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
}

impl Reloader {
    pub async fn reload_rules(&self) -> Result<Reloaded, ReloadError> {
        let loaded = match &self.rules {
            Some(dir) => Rules::load_dir(dir).map(|r| (r, dir.display().to_string())),
            None if Path::new("rules").is_dir() => {
                Rules::load_dir(Path::new("rules")).map(|r| (r, "rules".to_string()))
            }
            None => Rules::embedded().map(|r| (r, "built-in rules".to_string())),
        };
        let (rules, from) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                self.shared.metrics.rules_reload_failures.inc();
                tracing::error!(error = %e, "rules reload failed; the previous rules stay in force");
                return Err(e.into());
            }
        };
        let reloaded = Reloaded {
            from,
            rules: rules.rules.len(),
            hash: rules.hash.clone(),
        };
        self.pipeline.load_rules(rules, clock::now()).await?;
        tracing::info!(rules = reloaded.rules, from = %reloaded.from, hash = %reloaded.hash, "rules reloaded");
        Ok(reloaded)
    }
}

async fn reload_on_sighup(reloader: Arc<Reloader>, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload rules over HTTP instead");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = hup.recv() => {
                // Errors are logged and counted inside; the old rules keep running.
                let _ = reloader.reload_rules().await;
            }
        }
    }
}

/// Rebuilds the engine and the read model: the newest snapshot, then the facts after it from
/// the local log or the JetStream stream. Returns them with the log, positioned at its end.
/// Replays log records into an engine and a read model on three threads besides the caller's
/// (which reads the log): one decodes, one applies to the engine and hands each batch on to
/// one that applies it to the read model (each needs every fact, in order). A restart then
/// runs at the pace of its slowest stage instead of the sum of all. The decode thread also
/// builds each received alert's view (interning its texts): that is most of the read model's
/// work, and measured at 10M facts it made the engine thread, where it ran before, the one
/// every restart waited for.
pub struct Replay {
    decode: DecodePipeline,
    engine: std::thread::JoinHandle<Engine>,
    view: std::thread::JoinHandle<ReadModel>,
}

/// A replayed fact on its way through the engine to the read model.
// Facts travel inline in their batches, as in `FactBatch`; a box each would cost an
// allocation per fact.
#[allow(clippy::large_enum_variant)]
enum Shown {
    /// An `AlertReceived` fact and its view, built from the strings the engine does not read
    /// (taken by the read model, which hands the rest back to be freed).
    Received(u64, Fact, Option<PreparedAlert>),
    Fact(u64, Fact),
}

impl Shown {
    fn fact(&self) -> &Fact {
        let (Shown::Received(_, fact, _) | Shown::Fact(_, fact)) = self;
        fact
    }

    /// Applies the fact to the read model, taking a received alert's view.
    fn show(&mut self, view: &mut ReadModel) {
        match self {
            Shown::Received(seq, fact, alert) => {
                if let Some(alert) = alert.take() {
                    view.apply_received(*seq, fact.at(), alert);
                }
            }
            Shown::Fact(seq, fact) => {
                view.apply(*seq, fact);
            }
        }
    }

    /// On the decode thread: decodes a record, building a received alert's view straight
    /// from the record's texts (the facts are durable and the views are their last use but
    /// for the engine's, which reads only the name and CI).
    fn decode(seq: u64, record: &[u8]) -> Result<Shown, RecordError> {
        Ok(match decode_record_ref(record)? {
            Record::Received { at, alert } => {
                let view = PreparedAlert::borrowed(&alert, at);
                let alert = alert.skeleton();
                Shown::Received(seq, Fact::AlertReceived { at, alert }, Some(view))
            }
            Record::Fact(Fact::AlertReceived { at, mut alert }) => {
                let view = PreparedAlert::take(&mut alert, at);
                Shown::Received(seq, Fact::AlertReceived { at, alert }, Some(view))
            }
            Record::Fact(fact) => Shown::Fact(seq, fact),
        })
    }
}

/// How often (in records) the replay's decode thread frees the facts applied since.
const SPENT_EVERY: u64 = 256;

impl Replay {
    pub fn start(mut engine: Engine, mut view: ReadModel) -> anyhow::Result<Replay> {
        let (engine_tx, engine_rx) = std::sync::mpsc::sync_channel::<Vec<Shown>>(REPLAY_DEPTH);
        let (view_tx, view_rx) = std::sync::mpsc::sync_channel::<Vec<Shown>>(REPLAY_DEPTH);
        let engine = std::thread::Builder::new()
            .name("incidentd-replay-engine".into())
            .spawn(move || {
                for batch in engine_rx {
                    for window in batch.chunks(TOUCH_AHEAD) {
                        for fp in window.iter().filter_map(|s| s.fact().fingerprint()) {
                            engine.touch(&fp);
                        }
                        window.iter().for_each(|shown| engine.apply(shown.fact()));
                    }
                    if view_tx.send(batch).is_err() {
                        break;
                    }
                }
                engine
            })?;
        // Applied facts go back to the decode thread to be freed: their strings were
        // allocated there, and mimalloc frees another thread's block through an atomic list
        // that both threads then pay for (a quarter of the read-model thread's time).
        let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<Vec<Shown>>(4 * REPLAY_DEPTH);
        let view = std::thread::Builder::new()
            .name("incidentd-replay-view".into())
            .spawn(move || {
                for mut batch in view_rx {
                    for window in batch.chunks_mut(TOUCH_AHEAD) {
                        for fp in window.iter().filter_map(|s| s.fact().fingerprint()) {
                            view.touch(&fp);
                        }
                        window.iter_mut().for_each(|shown| shown.show(&mut view));
                    }
                    // Full (the decoder is behind) or gone (it is done): freed here then.
                    let _ = spent_tx.try_send(batch);
                }
                view
            })?;
        let decode = move |seq: u64, record: &[u8]| {
            if seq.is_multiple_of(SPENT_EVERY) {
                spent_rx.try_iter().for_each(drop);
            }
            Shown::decode(seq, record)
        };
        Ok(Replay {
            decode: DecodePipeline::start_with(engine_tx, decode)?,
            engine,
            view,
        })
    }

    /// Queues the record with log sequence `seq`; records must come in log order.
    pub fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), RecordError> {
        self.decode.push(seq, record)
    }

    /// Waits until every queued record is applied; the first bad record is the error.
    pub fn finish(self) -> anyhow::Result<(Engine, ReadModel)> {
        self.decode.finish()?;
        let engine = self
            .engine
            .join()
            .map_err(|_| anyhow::anyhow!("the replay engine thread panicked"))?;
        let view = self
            .view
            .join()
            .map_err(|_| anyhow::anyhow!("the replay read-model thread panicked"))?;
        Ok((engine, view))
    }
}

async fn restore(
    cfg: &Config,
    rules: &Rules,
    nats: Option<&async_nats::Client>,
    log_dir: &Path,
    snapshot_dir: &Path,
) -> anyhow::Result<(Engine, ReadModel, Box<dyn FactLog>)> {
    let started = std::time::Instant::now();
    let (engine, view, snapshot_seq) = match crate::snapshot::load_latest(snapshot_dir)? {
        Some(s) => {
            tracing::info!(seq = s.seq, path = %s.path.display(), "snapshot loaded");
            (Engine::restore(rules.clone(), s.state), s.view, s.seq)
        }
        None => (Engine::new(rules.clone()), ReadModel::default(), 0),
    };
    let mut replay = Replay::start(engine, view)?;
    let mut first_seq = None;
    let mut visit = |seq: u64, bytes: &[u8]| -> anyhow::Result<()> {
        // Segments a snapshot covered may have been pruned: the log must continue right
        // where the snapshot ends, or history is missing.
        if first_seq.is_none() {
            first_seq = Some(seq);
            if seq > snapshot_seq + 1 {
                anyhow::bail!(
                    "the log starts at fact {seq} but no usable snapshot covers facts before it"
                );
            }
        }
        if seq <= snapshot_seq {
            return Ok(());
        }
        replay.push(seq, bytes)?;
        Ok(())
    };
    let (log, next_seq, records): (Box<dyn FactLog>, u64, u64) = match (&cfg.jetstream_log, nats) {
        (Some(js), Some(client)) => loop {
            match JetStreamLog::open(client.clone(), js, &mut visit).await {
                Ok((log, records)) => {
                    let next = log.next_seq();
                    break (Box::new(log), next, records);
                }
                // Setup fails before anything was replayed, so retrying is safe.
                Err(e @ JsLogError::Setup { .. }) => {
                    tracing::warn!(error = %e, "waiting for NATS to open the event log");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        },
        _ => {
            let mut log_config = LogConfig::new(log_dir);
            log_config.segment_bytes = cfg.segment_bytes;
            let (log, recovery) = EventLog::open(log_config, &mut visit).map_err(|e| match e {
                OpenError::Log(e) => anyhow::anyhow!(e),
                OpenError::Visit(e) => anyhow::anyhow!("replaying {}: {e}", log_dir.display()),
            })?;
            if recovery.truncated_bytes > 0 {
                tracing::warn!(
                    bytes = recovery.truncated_bytes,
                    "torn tail of the event log truncated"
                );
            }
            (Box::new(log), recovery.next_seq, recovery.records)
        }
    };
    let (engine, view) = replay
        .finish()
        .map_err(|e| anyhow::anyhow!("replaying {}: {e}", log_dir.display()))?;
    if next_seq <= snapshot_seq {
        anyhow::bail!(
            "the event log ends at fact {} but the snapshot covers up to {snapshot_seq}: the log is missing or was replaced",
            next_seq.saturating_sub(1)
        );
    }
    tracing::info!(
        snapshot_seq,
        facts = records,
        incidents = engine.state().incidents.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "event log replayed"
    );

    Ok((engine, view, log))
}

/// Connects in the background: the service serves HTTP while NATS is away and reports
/// itself degraded on /readyz.
async fn connect_nats(url: &str, shared: Arc<Shared>) -> anyhow::Result<async_nats::Client> {
    let events = shared.clone();
    async_nats::ConnectOptions::new()
        .name("incidentd")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let shared = events.clone();
            async move {
                let m = &shared.metrics;
                let kind = match &event {
                    async_nats::Event::Connected => {
                        shared.nats_connected.store(true, Ordering::SeqCst);
                        shared.nats_reconnected.notify_one();
                        m.nats_connected.set(1);
                        tracing::info!("nats connected");
                        "connected"
                    }
                    async_nats::Event::Disconnected => {
                        shared.nats_connected.store(false, Ordering::SeqCst);
                        shared.nats_subscribed.store(false, Ordering::SeqCst);
                        m.nats_connected.set(0);
                        tracing::warn!("nats disconnected; reconnecting in the background");
                        "disconnected"
                    }
                    async_nats::Event::SlowConsumer(_) => "slow_consumer",
                    async_nats::Event::LameDuckMode => "lame_duck",
                    async_nats::Event::Draining => "draining",
                    async_nats::Event::Closed => "closed",
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "nats server error");
                        "server_error"
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::warn!(error = %e, "nats client error");
                        "client_error"
                    }
                };
                m.nats_events.with_label_values(&[kind]).inc();
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("nats url {url}"))
}

async fn publish_outbound(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<(String, bytes::Bytes)>,
) {
    while let Some((subject, payload)) = rx.recv().await {
        if let Err(e) = client.publish(subject, payload).await {
            tracing::warn!(error = %e, "publishing incident fact failed");
        }
    }
}

/// Sends the engine the time at a fixed interval: alerts time out, incidents auto-resolve.
async fn tick(pipeline: pipeline::Pipeline, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = interval.tick() => {
                if pipeline.tick(clock::now()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// How the HTTP server treats connections.
struct Connections {
    header_timeout: Duration,
    /// Served at once; each holds a task, buffers and a file descriptor.
    max: usize,
    open: prometheus::IntGauge,
    refused: prometheus::IntCounter,
}

/// What a connection beyond `http.max_connections` gets before it is closed: an explicit,
/// retryable refusal rather than a silent reset or a wait in the kernel's backlog.
fn too_many_connections() -> String {
    let body = r#"{"error":"too many open connections; retry later","details":[]}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves HTTP/1.1 until `shutdown`, then waits for requests in flight. This is axum::serve's
/// loop plus hyper's header read timeout, which axum::serve leaves unset: without it a client
/// that never finishes its headers holds a connection and a task forever (slowloris). The body
/// is bounded separately by the request timeout layer, and the number of connections by
/// `http.max_connections`.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    connections: Connections,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(connections.header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(connections.max));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, usually: back off rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            connections.refused.inc();
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        let open = connections.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers [`too_many_connections`] and closes: after the request head, so a client sees
/// a response to its request rather than an answer to nothing; then drains what else it sent,
/// since closing with unread bytes resets the connection and could lose the answer. The
/// whole exchange is bounded in time, and only the head is held in memory.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX_HEAD: usize = 16 * 1024;
    let answer = async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 4096];
        while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        stream.write_all(too_many_connections().as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Input;
    use crate::engine::record::encode_record;
    use crate::ingest::{Format, Limits, Stamp};

    /// The pipelined replay a restart runs (views built on the decode thread, before the
    /// engine applies their facts) ends where the live engine was, and with the read model a
    /// one-thread replay builds.
    #[test]
    fn a_pipelined_replay_rebuilds_the_live_engine_and_read_model() {
        let rules = Rules::embedded().expect("rules");
        let mut live = Engine::new(rules.clone());
        let mut facts = Vec::new();
        let t = 1_795_000_000_000;
        for i in 0..3000 {
            let status = if i % 7 == 6 { "resolved" } else { "firing" };
            let body = format!(
                r#"{{"source":"mon","name":"N{}","ci":"host-{}","status":"{status}","summary":"s{i}","dedup_key":"k{}","labels":{{"check":"c{i}","team":"t{}"}}}}"#,
                i % 3,
                i % 50,
                i % 1000,
                i % 5
            );
            let now = t + i * 100;
            let decoded = crate::ingest::decode(
                Format::Native,
                body.as_bytes(),
                Stamp::Live(now),
                &Limits::default(),
            )
            .expect("decode");
            for a in &decoded.alerts {
                live.handle(Input::Alert(a), &mut facts).expect("alert");
            }
        }
        assert!(
            facts.len() > 2 * crate::engine::record::REPLAY_BATCH,
            "{}",
            facts.len()
        );

        let mut serial = ReadModel::default();
        let mut replay = Replay::start(Engine::new(rules), ReadModel::default()).expect("start");
        let mut buf = Vec::new();
        for (i, fact) in facts.iter().enumerate() {
            serial.apply(i as u64 + 1, fact);
            encode_record(fact, &mut buf).expect("encode");
            replay.push(i as u64 + 1, &buf).expect("push");
        }
        let (engine, view) = replay.finish().expect("finish");
        assert_eq!(engine.state(), live.state());
        let docs = |m: &ReadModel| {
            let docs: Vec<_> = m.surviving().map(|i| i.doc(&m.topology, true)).collect();
            serde_json::to_string(&docs).expect("json")
        };
        assert_eq!(docs(&view), docs(&serial));
    }
}
