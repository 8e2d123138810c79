//! The engine thread and the log writer thread, and the handle the rest of the service uses
//! to reach them.
//!
//! ```text
//! ingest tasks ─► mpsc ─► engine thread ─► writer thread ─► publisher thread ─► read model, metrics,
//!                          decide+apply     append+fsync     (durable groups)    stream, NATS out, replies
//! ```
//!
//! The engine is single-owner and never blocks on I/O; the writer commits whole batches with
//! one fsync (group commit) while the engine already works on the next one, and the publisher
//! shows a committed group while the writer already syncs the next. Nothing is acknowledged,
//! counted or shown before the facts it caused are on disk. A failed write or fsync stops the
//! writer for good (fail-stop): every later request gets an error.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, HistogramVec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::cmdb::{CmdbOp, CmdbSpec};
use crate::engine::facts::{RecordError, encode_record};
use crate::engine::{CommandError, Engine, Fact, IncidentId, Input, State, TOUCH_AHEAD};
use crate::eventlog::LogError;
use crate::jslog::FactLog;
use crate::metrics::Metrics;
use crate::model::{Alert, Millis};
use crate::rules::Rules;
use crate::snapshot::ViewPart;
use crate::view::{PreparedAlert, ReadModel};

/// Most commands the engine takes into one batch.
const MAX_COMMANDS: usize = 512;
/// Most alerts the engine takes into one batch, so a batch's latency stays bounded.
const MAX_ALERTS: usize = 8192;
/// Engine batches the writer may have queued before the engine waits (backpressure). Two
/// keep the engine and the writer both busy; more only add latency under overload.
const WRITER_QUEUE: usize = 2;
/// Facts per state entry (alert or incident) between two snapshots. A new alert makes about
/// four facts, so with 4 the state roughly doubles between snapshots during a storm of new
/// alerts and all snapshots together copy about twice the final state.
const SNAPSHOT_GROWTH: u64 = 4;
/// Below this many state entries a snapshot is cheap: `snapshot_every` alone decides.
const SNAPSHOT_SMALL_STATE: u64 = 10_000;
/// Most engine batches the writer commits with one fsync.
const MAX_GROUP: usize = 64;
/// Committed groups that may wait for the publisher before the writer waits. Two keep the
/// writer syncing one group while the publisher shows the previous one.
const PUBLISH_QUEUE: usize = 2;
/// Commit groups of at most this many facts the writer shows itself when the publisher
/// thread is idle (see [`Publishing`]).
const SHOW_INLINE: usize = 64;
/// Emptied fact vectors kept for the engine's next batches. A batch's vector otherwise
/// starts empty and grows by doubling (a storm's batch reaches ~20k facts of 224 bytes):
/// a dozen copies per batch into fresh memory, which with their page faults took 2.5-7.4 %
/// of the engine thread in 80-90k alerts/s storms. A few cover the batches in flight.
const SPARE_FACT_VECS: usize = 4;
/// Larger fact vectors (a CMDB load's, say) are not kept: at most ~4 × 3.7 MB stay idle.
const SPARE_FACTS_MAX: usize = 16_384;
/// Written snapshot body pieces (16 MB each) kept for the publisher to fill again while it
/// encodes the rest: each fresh one costs its page faults, while the publisher holds ingest.
const SPARE_PIECES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("event log stopped after a write failure: {0}")]
    LogStopped(String),
    /// Retryable: the log could not write (a full disk); nothing was stored for this request.
    #[error("event log cannot write right now (disk full?); nothing was stored, retry later")]
    LogFull,
    #[error("incidentd is shutting down")]
    Closed,
    /// Retryable: the engine's queue stayed full for the whole shed wait; nothing was
    /// queued, so nothing of this request will be stored.
    #[error("ingest queue full; nothing was queued, retry later")]
    Busy,
}

/// Bounds between ingest and the engine. Ingest that finds them full waits at most
/// `shed_after` and is then refused ([`PipelineError::Busy`]), so overload sheds load
/// explicitly instead of queueing without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Commands (requests, NATS chunks, operator actions) queued for the engine.
    pub commands: usize,
    /// Alerts queued for the engine and not yet taken by it.
    pub alerts: usize,
    /// How long an alert submission waits for room before it is shed.
    pub shed_after: Duration,
}

impl QueueConfig {
    /// Enough for several engine batches in flight, small enough that a queue worked off
    /// at the engine's pace stays well under a second of latency.
    pub const DEFAULT_ALERTS: usize = 16_384;
    pub const DEFAULT_SHED_AFTER: Duration = Duration::from_millis(100);
}

impl From<usize> for QueueConfig {
    /// `commands` queued commands with the default alert bound and shed wait.
    fn from(commands: usize) -> Self {
        QueueConfig {
            commands,
            alerts: QueueConfig::DEFAULT_ALERTS,
            shed_after: QueueConfig::DEFAULT_SHED_AFTER,
        }
    }
}

/// An operator's action on an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Acknowledge,
    Resolve,
    /// A note in the incident's history; the text travels as the command's comment.
    Comment,
}

type Reply<T> = oneshot::Sender<Result<T, PipelineError>>;

enum Command {
    Alerts {
        alerts: Vec<Alert>,
        done: Option<Reply<usize>>,
        /// For JetStream ingest: (stream sequence, number of alerts) per message, in the
        /// order of `alerts`. Messages already in the log are skipped, new ones recorded.
        messages: Option<Vec<(u64, usize)>>,
        /// Room taken in the alert bound; given back once the engine has handled them.
        room: Option<OwnedSemaphorePermit>,
    },
    Operator {
        action: Action,
        now: Millis,
        incident: IncidentId,
        by: String,
        comment: Option<String>,
        done: Reply<()>,
    },
    Rules {
        rules: Box<Rules>,
        now: Millis,
        done: Reply<()>,
    },
    /// Live topology changes, validated by the engine.
    Cmdb {
        ops: Vec<CmdbOp>,
        source: String,
        now: Millis,
        done: Reply<()>,
    },
    /// The CMDB file at start: the engine records only the differences.
    LoadCmdb {
        spec: Box<CmdbSpec>,
        source: String,
        now: Millis,
        done: Reply<()>,
    },
    Tick {
        now: Millis,
    },
    Silence {
        spec: Box<SilenceRequest>,
        now: Millis,
        done: Reply<String>,
    },
    ExpireSilence {
        id: String,
        now: Millis,
        done: Reply<()>,
    },
    /// JetStream ingest is about to consume this stream; see [`Pipeline::attach_stream`].
    AttachStream {
        stream: String,
        created: u64,
        last: u64,
        now: Millis,
        done: Reply<()>,
    },
}

/// A silence to create (or to replace `replaces` with), as the Alertmanager API posts it.
#[derive(Clone, Debug)]
pub struct SilenceRequest {
    pub replaces: Option<String>,
    pub matchers: Vec<crate::silence::Matcher>,
    pub starts_at: Millis,
    pub ends_at: Millis,
    pub created_by: String,
    pub comment: String,
}

/// State shared between the pipeline threads and the HTTP handlers.
pub struct Shared {
    pub view: RwLock<ReadModel>,
    pub metrics: Metrics,
    pub log_writable: AtomicBool,
    /// The last write failed retryably (a full disk): ingest is refused until it succeeds.
    pub log_full: AtomicBool,
    pub nats_connected: AtomicBool,
    pub nats_subscribed: AtomicBool,
    /// Signalled on every NATS (re)connect, so ingest can re-prove its subscription.
    pub nats_reconnected: tokio::sync::Notify,
    /// Live incident changes for the console (`GET /api/v1/stream`).
    pub stream: crate::stream::Hub,
}

impl Shared {
    pub fn new(view: ReadModel, metrics: Metrics) -> Shared {
        metrics.incidents_open.set(view.open_count() as i64);
        metrics.incidents_held.set(view.held_count() as i64);
        metrics.log_writable.set(1);
        Shared {
            view: RwLock::new(view),
            metrics,
            log_writable: AtomicBool::new(true),
            log_full: AtomicBool::new(false),
            nats_connected: AtomicBool::new(false),
            nats_subscribed: AtomicBool::new(false),
            nats_reconnected: tokio::sync::Notify::new(),
            stream: crate::stream::Hub::default(),
        }
    }

    /// Read access to the read model; a panicked writer cannot poison readers.
    pub fn view(&self) -> RwLockReadGuard<'_, ReadModel> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where durable incident facts are published (NATS `incidents.<fact>.<id>`).
pub struct Outbound {
    pub prefix: String,
    pub tx: mpsc::Sender<(String, Bytes)>,
}

/// Cheap, cloneable handle to the engine.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Command>,
    /// One permit per alert that may wait for the engine.
    room: Arc<Semaphore>,
    max_room: u32,
    shed_after: Duration,
}

/// Room for alerts in the engine's queue, reserved before the work of decoding them.
pub struct Room(OwnedSemaphorePermit);

impl Room {
    /// Room for as many alerts as both hold.
    pub fn merge(&mut self, other: Room) {
        self.0.merge(other.0);
    }
}

impl Pipeline {
    /// Submits alerts and waits until the facts they caused are durable. Waits as long as
    /// the queue is full (for callers that must not lose alerts: start-up, tests).
    pub async fn submit(&self, alerts: Vec<Alert>) -> Result<usize, PipelineError> {
        let room = self.room(alerts.len(), None).await?;
        self.request(|done| Command::Alerts {
            alerts,
            done: Some(done),
            messages: None,
            room: Some(room.0),
        })
        .await
    }

    /// Like [`submit`](Self::submit), but refused with [`PipelineError::Busy`] when the
    /// queue stays full for the shed wait: then nothing was queued. HTTP ingest uses this.
    pub async fn offer(&self, alerts: Vec<Alert>) -> Result<usize, PipelineError> {
        let room = self.room(alerts.len(), Some(self.shed_after)).await?;
        self.offer_with(alerts, room).await
    }

    /// Submits alerts for which room was already reserved and waits for durability; shed
    /// (`Busy`) if even the command queue stays full for the shed wait.
    pub async fn offer_with(&self, alerts: Vec<Alert>, room: Room) -> Result<usize, PipelineError> {
        let (done, rx) = oneshot::channel();
        let cmd = Command::Alerts {
            alerts,
            done: Some(done),
            messages: None,
            room: Some(room.0),
        };
        self.tx
            .send_timeout(cmd, self.shed_after)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => PipelineError::Busy,
                mpsc::error::SendTimeoutError::Closed(_) => PipelineError::Closed,
            })?;
        rx.await.map_err(|_| PipelineError::Closed)?
    }

    /// Reserves room for `n` alerts, waiting at most `wait` (forever when `None`). A batch
    /// larger than the whole bound takes all of it.
    pub async fn room(&self, n: usize, wait: Option<Duration>) -> Result<Room, PipelineError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX).clamp(1, self.max_room);
        let acquire = self.room.clone().acquire_many_owned(n);
        let permit = match wait {
            None => acquire.await,
            Some(wait) => match self.room.clone().try_acquire_many_owned(n) {
                Ok(p) => Ok(p),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(PipelineError::Closed),
                Err(tokio::sync::TryAcquireError::NoPermits) => tokio::time::timeout(wait, acquire)
                    .await
                    .map_err(|_| PipelineError::Busy)?,
            },
        };
        permit.map(Room).map_err(|_| PipelineError::Closed)
    }

    /// Reserves room for `n` more alerts without waiting.
    pub fn try_room(&self, n: usize) -> Option<Room> {
        let n = u32::try_from(n).unwrap_or(u32::MAX).clamp(1, self.max_room);
        self.room.clone().try_acquire_many_owned(n).ok().map(Room)
    }

    /// Queues alerts without waiting for durability, in room reserved before (core NATS
    /// has nothing to acknowledge). Waits only while the command queue itself is full.
    pub async fn enqueue_with(&self, alerts: Vec<Alert>, room: Room) -> Result<(), PipelineError> {
        self.send(Command::Alerts {
            alerts,
            done: None,
            messages: None,
            room: Some(room.0),
        })
        .await
    }

    /// Submits the alerts of JetStream messages `(stream sequence, alert count)`, skipping
    /// messages already in the log, and waits until they are durable (then the caller acks).
    pub async fn submit_messages(
        &self,
        alerts: Vec<Alert>,
        messages: Vec<(u64, usize)>,
    ) -> Result<usize, PipelineError> {
        // JetStream keeps the backlog: the pull consumer fetches only what fits, so this
        // waits for room instead of shedding.
        let room = self.room(alerts.len(), None).await?;
        self.request(|done| Command::Alerts {
            alerts,
            done: Some(done),
            messages: Some(messages),
            room: Some(room.0),
        })
        .await
    }

    /// Queues alerts without waiting for durability (core NATS has nothing to acknowledge).
    /// Waits while the queue is full.
    pub async fn enqueue(&self, alerts: Vec<Alert>) -> Result<(), PipelineError> {
        let room = self.room(alerts.len(), None).await?;
        self.enqueue_with(alerts, room).await
    }

    /// How long ingest waits for room before shedding.
    pub fn shed_after(&self) -> Duration {
        self.shed_after
    }

    /// Acknowledges or resolves an incident; returns once the fact is durable.
    pub async fn operator(
        &self,
        action: Action,
        now: Millis,
        incident: IncidentId,
        by: String,
        comment: Option<String>,
    ) -> Result<(), PipelineError> {
        self.request(|done| Command::Operator {
            action,
            now,
            incident,
            by,
            comment,
            done,
        })
        .await
    }

    /// Loads a rule set through the engine (recorded as `RulesLoaded` when it changed).
    pub async fn load_rules(&self, rules: Rules, now: Millis) -> Result<(), PipelineError> {
        self.request(|done| Command::Rules {
            rules: Box::new(rules),
            now,
            done,
        })
        .await
    }

    /// Applies live CMDB changes through the engine; returns once they are durable.
    pub async fn cmdb_change(
        &self,
        ops: Vec<CmdbOp>,
        source: String,
        now: Millis,
    ) -> Result<(), PipelineError> {
        self.request(|done| Command::Cmdb {
            ops,
            source,
            now,
            done,
        })
        .await
    }

    /// Brings the engine's topology to the CMDB file's content.
    pub async fn load_cmdb(
        &self,
        spec: CmdbSpec,
        source: String,
        now: Millis,
    ) -> Result<(), PipelineError> {
        self.request(|done| Command::LoadCmdb {
            spec: Box::new(spec),
            source,
            now,
            done,
        })
        .await
    }

    /// Creates a silence; returns its id once it is durable.
    pub async fn silence(
        &self,
        spec: SilenceRequest,
        now: Millis,
    ) -> Result<String, PipelineError> {
        self.request(|done| Command::Silence {
            spec: Box::new(spec),
            now,
            done,
        })
        .await
    }

    pub async fn expire_silence(&self, id: String, now: Millis) -> Result<(), PipelineError> {
        self.request(|done| Command::ExpireSilence { id, now, done })
            .await
    }

    /// Records which JetStream stream ingest consumes (name, creation time in ns, last
    /// sequence) and waits until that is durable, so consumed sequences of a recreated
    /// stream, or above a tail the server lost, never make new messages look ingested.
    pub async fn attach_stream(
        &self,
        stream: String,
        created: u64,
        last: u64,
        now: Millis,
    ) -> Result<(), PipelineError> {
        self.request(|done| Command::AttachStream {
            stream,
            created,
            last,
            now,
            done,
        })
        .await
    }

    pub async fn tick(&self, now: Millis) -> Result<(), PipelineError> {
        self.send(Command::Tick { now }).await
    }

    /// Sends a command carrying a reply slot and waits for the (post-durability) answer.
    async fn request<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, PipelineError> {
        let (done, rx) = oneshot::channel();
        self.send(command(done)).await?;
        rx.await.map_err(|_| PipelineError::Closed)?
    }

    async fn send(&self, cmd: Command) -> Result<(), PipelineError> {
        self.tx.send(cmd).await.map_err(|_| PipelineError::Closed)
    }
}

/// The running threads; `join` returns once every queued command is durable or refused.
pub struct Running {
    engine: JoinHandle<()>,
    writer: JoinHandle<()>,
    publisher: JoinHandle<()>,
}

impl Running {
    /// Blocks until the threads finish (after every `Pipeline` handle was dropped).
    pub fn join(self) {
        let threads = [
            ("engine", self.engine),
            ("writer", self.writer),
            ("publisher", self.publisher),
        ];
        for (name, handle) in threads {
            if handle.join().is_err() {
                tracing::error!(thread = name, "pipeline thread panicked");
            }
        }
    }
}

/// Starts the pipeline's threads over an opened log and a replayed engine.
pub fn start(
    engine: Engine,
    log: Box<dyn FactLog>,
    shared: Arc<Shared>,
    outbound: Option<Outbound>,
    queue: impl Into<QueueConfig>,
    snapshots: Option<SnapshotConfig>,
) -> std::io::Result<(Pipeline, Running)> {
    let queue = queue.into();
    let (tx, rx) = mpsc::channel(queue.commands.max(1));
    let max_room = u32::try_from(queue.alerts)
        .unwrap_or(u32::MAX)
        .clamp(1, Semaphore::MAX_PERMITS as u32);
    let (batch_tx, batch_rx) = std_mpsc::sync_channel(WRITER_QUEUE);
    shared.stream.start_at(log.next_seq().saturating_sub(1));
    let every = snapshots.as_ref().map_or(0, |s| s.every_facts);
    let stages = shared.metrics.stage_seconds.clone();
    let (spare_tx, spare_rx) = std_mpsc::sync_channel(SPARE_FACT_VECS);
    let engine = std::thread::Builder::new()
        .name("incidentd-engine".into())
        .spawn(move || engine_loop(engine, rx, batch_tx, spare_rx, every, &stages))?;
    let (group_tx, group_rx) = std_mpsc::sync_channel(PUBLISH_QUEUE);
    let publishing = Arc::new(Publishing {
        publisher: Mutex::new(Publisher {
            publish_seconds: shared.metrics.stage_seconds.with_label_values(&["publish"]),
            shared: shared.clone(),
            outbound,
            snapshots,
            writing: None,
            spare_facts: spare_tx,
        }),
        queued: AtomicUsize::new(0),
    });
    let writer = Writer {
        log,
        shared,
        buf: Vec::new(),
    };
    let to_publisher = publishing.clone();
    let writer = std::thread::Builder::new()
        .name("incidentd-writer".into())
        .spawn(move || writer.run(batch_rx, group_tx, &to_publisher))?;
    let publisher = std::thread::Builder::new()
        .name("incidentd-publish".into())
        .spawn(move || publishing.run(group_rx))?;
    let pipeline = Pipeline {
        tx,
        room: Arc::new(Semaphore::new(max_room as usize)),
        max_room,
        shed_after: queue.shed_after,
    };
    Ok((
        pipeline,
        Running {
            engine,
            writer,
            publisher,
        },
    ))
}

/// One engine batch on its way to disk.
#[derive(Default)]
struct Batch {
    facts: Vec<Fact>,
    /// The views of the batch's `AlertReceived` facts, in order, built by the writer once
    /// the facts are durable (interning their strings is the largest part of showing a new
    /// alert, and neither the engine thread nor the read model's owner should pay it).
    received: Vec<PreparedAlert>,
    alerts: usize,
    replies: Vec<Done>,
    /// The engine's state right after this batch: once the batch is durable it pairs with
    /// the read model at the same sequence to make a snapshot.
    snapshot: Option<Box<State>>,
}

/// When and where to write snapshots.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    pub dir: PathBuf,
    /// Facts between snapshots (and one at shutdown); 0 disables them.
    pub every_facts: u64,
    pub log_dir: PathBuf,
    /// Delete log segments a snapshot fully covers (then `export-alerts` sees only the tail).
    pub prune_log: bool,
}

enum Done {
    Alerts(Reply<usize>, usize),
    Unit(Reply<()>),
    Id(Reply<String>, String),
}

impl Done {
    fn send(self, result: Result<(), PipelineError>) {
        // A requester that went away (client disconnected) is no error of ours.
        match self {
            Done::Alerts(tx, n) => {
                let _ = tx.send(result.map(|()| n));
            }
            Done::Unit(tx) => {
                let _ = tx.send(result);
            }
            Done::Id(tx, id) => {
                let _ = tx.send(result.map(|()| id));
            }
        }
    }
}

fn engine_loop(
    mut engine: Engine,
    mut rx: mpsc::Receiver<Command>,
    writer: std_mpsc::SyncSender<Batch>,
    spare_facts: std_mpsc::Receiver<Vec<Fact>>,
    snapshot_every: u64,
    stages: &HistogramVec,
) {
    let engine_seconds = stages.with_label_values(&["engine"]);
    let copy_seconds = stages.with_label_values(&["snapshot_copy"]);
    let mut cmds = Vec::with_capacity(MAX_COMMANDS);
    let mut since_snapshot = 0u64;
    while let Some(first) = rx.blocking_recv() {
        let started = Instant::now();
        let mut alerts = command_alerts(&first);
        cmds.push(first);
        while cmds.len() < MAX_COMMANDS && alerts < MAX_ALERTS {
            let Ok(cmd) = rx.try_recv() else { break };
            alerts += command_alerts(&cmd);
            cmds.push(cmd);
        }
        let mut batch = Batch {
            facts: spare_facts.try_recv().unwrap_or_default(),
            ..Batch::default()
        };
        engine.begin_batch();
        for cmd in cmds.drain(..) {
            run_command(&mut engine, cmd, &mut batch);
        }
        if batch.facts.is_empty() && batch.replies.is_empty() {
            continue;
        }
        since_snapshot += batch.facts.len() as u64;
        // A snapshot copies the whole state, so at least SNAPSHOT_GROWTH facts per state
        // entry pass between two: its cost per fact stays constant as the state grows (a
        // fixed interval made it quadratic: measured 28 µs per alert at 200k alerts), and
        // the tail a restart replays stays a small multiple of the state.
        let size = engine.state().size();
        let due = if size > SNAPSHOT_SMALL_STATE {
            snapshot_every.max(SNAPSHOT_GROWTH * size)
        } else {
            snapshot_every
        };
        if snapshot_every > 0 && since_snapshot >= due {
            let copying = Instant::now();
            batch.snapshot = Some(Box::new(engine.state().clone()));
            copy_seconds.observe(copying.elapsed().as_secs_f64());
            since_snapshot = 0;
        }
        engine_seconds.observe(started.elapsed().as_secs_f64());
        if writer.send(batch).is_err() {
            tracing::error!("log writer is gone; engine stops");
            return;
        }
    }
    // Shutting down: a last snapshot, so the next start replays nothing. The engine is done,
    // so its state moves there (a copy took 2.5 s at 10M facts, into fresh memory).
    if snapshot_every > 0 && since_snapshot > 0 {
        let _ = writer.send(Batch {
            snapshot: Some(Box::new(engine.into_state())),
            ..Batch::default()
        });
    }
}

fn command_alerts(cmd: &Command) -> usize {
    match cmd {
        Command::Alerts { alerts, .. } => alerts.len().max(1),
        _ => 1,
    }
}

fn run_command(engine: &mut Engine, cmd: Command, batch: &mut Batch) {
    match cmd {
        Command::Alerts {
            alerts,
            done,
            messages: None,
            room: _room,
        } => {
            let n = alerts.len();
            let mut alerts = alerts.into_iter();
            while alerts.len() > 0 {
                let ahead = alerts.as_slice().iter().take(TOUCH_AHEAD);
                ahead.for_each(|a| engine.touch(&a.fingerprint));
                for alert in alerts.by_ref().take(TOUCH_AHEAD) {
                    // Alerts are never refused by the engine; given up, they move into facts.
                    engine.handle_alert(alert, &mut batch.facts);
                }
            }
            batch.alerts += n;
            if let Some(done) = done {
                batch.replies.push(Done::Alerts(done, n));
            }
        }
        Command::Alerts {
            alerts,
            done,
            messages: Some(messages),
            room: _room,
        } => {
            let handled = engine.handle_messages(alerts, &messages, &mut batch.facts);
            batch.alerts += handled;
            if let Some(done) = done {
                batch.replies.push(Done::Alerts(done, handled));
            }
        }
        Command::Operator {
            action,
            now,
            incident,
            by,
            comment,
            done,
        } => {
            let comment = comment.as_deref();
            let input = match action {
                Action::Acknowledge => Input::Acknowledge {
                    now,
                    incident,
                    by: &by,
                    comment,
                },
                Action::Resolve => Input::Resolve {
                    now,
                    incident,
                    by: &by,
                    comment,
                },
                Action::Comment => Input::Comment {
                    now,
                    incident,
                    actor: &by,
                    text: comment.unwrap_or_default(),
                },
            };
            unit_reply(engine.handle(input, &mut batch.facts), done, batch);
        }
        Command::Rules { rules, now, done } => {
            engine.load_rules(*rules, now, &mut batch.facts);
            batch.replies.push(Done::Unit(done));
        }
        Command::Cmdb {
            ops,
            source,
            now,
            done,
        } => {
            let input = Input::Cmdb {
                now,
                source: &source,
                ops: &ops,
            };
            unit_reply(engine.handle(input, &mut batch.facts), done, batch);
        }
        Command::LoadCmdb {
            spec,
            source,
            now,
            done,
        } => {
            engine.load_cmdb(&spec, &source, now, &mut batch.facts);
            batch.replies.push(Done::Unit(done));
        }
        Command::Tick { now } => {
            let _ = engine.handle(Input::Tick { now }, &mut batch.facts);
        }
        Command::Silence { spec, now, done } => {
            let start = batch.facts.len();
            let input = Input::Silence {
                now,
                replaces: spec.replaces.as_deref(),
                matchers: &spec.matchers,
                starts_at: spec.starts_at,
                ends_at: spec.ends_at,
                created_by: &spec.created_by,
                comment: &spec.comment,
            };
            match engine.handle(input, &mut batch.facts) {
                Ok(()) => {
                    let id = batch.facts[start..]
                        .iter()
                        .find_map(|f| match f {
                            Fact::SilenceCreated { silence, .. } => Some(silence.id.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    batch.replies.push(Done::Id(done, id));
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                }
            }
        }
        Command::ExpireSilence { id, now, done } => {
            let input = Input::ExpireSilence { now, id: &id };
            unit_reply(engine.handle(input, &mut batch.facts), done, batch);
        }
        Command::AttachStream {
            stream,
            created,
            last,
            now,
            done,
        } => {
            let input = Input::AttachStream {
                now,
                stream: &stream,
                created,
                last,
            };
            unit_reply(engine.handle(input, &mut batch.facts), done, batch);
        }
    }
}

/// Answers a command once its facts are durable, or at once with the engine's refusal.
fn unit_reply(decided: Result<(), CommandError>, done: Reply<()>, batch: &mut Batch) {
    match decided {
        Ok(()) => batch.replies.push(Done::Unit(done)),
        Err(e) => {
            let _ = done.send(Err(e.into()));
        }
    }
}

/// Why a group could not be committed. Either way nothing in it is acknowledged.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// Facts are plain data, so this is a bug; it must still never be acknowledged as stored.
    #[error("encoding a fact: {0}")]
    Encode(#[from] RecordError),
}

/// Appends and syncs engine batches, then hands them to the publisher.
struct Writer {
    log: Box<dyn FactLog>,
    shared: Arc<Shared>,
    buf: Vec<u8>,
}

/// A group of batches whose facts are durable, on its way to be shown and acknowledged.
struct Committed {
    group: Vec<Batch>,
    /// Each fact's log sequence, in the group's order.
    seqs: Vec<u64>,
    /// The log's last sequence after the commit: a snapshot taken with it is as of here.
    head: u64,
}

impl Writer {
    fn run(
        mut self,
        rx: std_mpsc::Receiver<Batch>,
        publisher: std_mpsc::SyncSender<Committed>,
        publishing: &Publishing,
    ) {
        while let Ok(first) = rx.recv() {
            let mut group = Vec::with_capacity(MAX_GROUP);
            group.push(first);
            // A batch carrying a snapshot ends its group: the snapshot's engine state is as
            // of that batch, so the read model and the log head it pairs with must be too.
            while group.len() < MAX_GROUP && group.last().is_some_and(|b| b.snapshot.is_none()) {
                let Ok(batch) = rx.try_recv() else { break };
                group.push(batch);
            }
            let Some(committed) = self.commit_or_retry(group) else {
                continue;
            };
            if publishing.hand_over(committed, &publisher).is_err() {
                tracing::error!("publisher is gone; writer stops");
                return;
            }
        }
    }

    /// Commits the group. A retryable failure (a full disk) answers the waiting callers 503
    /// at once but keeps the facts — the engine already applied them, so the log must get
    /// them too — and retries until they are written; meanwhile ingest is refused. Any other
    /// failure stops the writer for good (fail-stop).
    /// Returns the committed group, or `None` after a fatal failure (callers answered).
    fn commit_or_retry(&mut self, mut group: Vec<Batch>) -> Option<Committed> {
        let mut delay = Duration::from_millis(100);
        let mut seqs = Vec::new();
        loop {
            seqs.clear();
            match self.commit(&group, &mut seqs) {
                Ok(()) => {
                    if self.shared.log_full.swap(false, Ordering::SeqCst) {
                        tracing::info!("event log writable again");
                    }
                    for batch in &mut group {
                        prepare_received(batch);
                    }
                    let head = self.log.next_seq().saturating_sub(1);
                    return Some(Committed { group, seqs, head });
                }
                Err(WriteError::Log(e)) if e.is_retryable() => {
                    if !self.shared.log_full.swap(true, Ordering::SeqCst) {
                        tracing::error!(error = %e, "event log write failed; retrying, refusing ingest meanwhile");
                    }
                    self.shared.metrics.log_write_failures.inc();
                    for batch in group.iter_mut() {
                        for done in batch.replies.drain(..) {
                            done.send(Err(PipelineError::LogFull));
                        }
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, "event log write failed; refusing all further writes");
                    self.shared.log_writable.store(false, Ordering::SeqCst);
                    self.shared.metrics.log_writable.set(0);
                    for batch in group {
                        for done in batch.replies {
                            done.send(Err(PipelineError::LogStopped(e.to_string())));
                        }
                    }
                    return None;
                }
            }
        }
    }

    /// Appends every fact of the group and fsyncs once.
    fn commit(&mut self, group: &[Batch], seqs: &mut Vec<u64>) -> Result<(), WriteError> {
        let started = Instant::now();
        let mut facts = 0;
        for fact in group.iter().flat_map(|b| &b.facts) {
            encode_record(fact, &mut self.buf)?;
            seqs.push(self.log.append(&self.buf)?);
            facts += 1;
        }
        if facts > 0 {
            self.log.sync()?;
            let m = &self.shared.metrics;
            m.log_append_seconds
                .observe(started.elapsed().as_secs_f64());
            m.log_batch_facts.observe(facts as f64);
            m.facts_appended.inc_by(facts as u64);
        }
        Ok(())
    }
}

/// Builds the views of a durable batch's new alerts, moving the alerts' strings into them
/// (the records are written; nothing downstream reads a received alert's texts again).
/// The writer does it: of the pipeline's three threads it is the least busy, and the
/// engine thread, which did it before, is the busiest.
fn prepare_received(batch: &mut Batch) {
    // Sized once: a batch's alerts bound its received facts.
    let mut received = Vec::with_capacity(batch.alerts);
    received.extend(batch.facts.iter_mut().filter_map(|fact| match fact {
        Fact::AlertReceived { at, alert } => Some(PreparedAlert::take(alert, *at)),
        _ => None,
    }));
    batch.received = received;
}

/// Shows committed groups in the read model, counts them, streams and publishes their facts,
/// answers their callers, and writes the snapshots they carry.
struct Publisher {
    shared: Arc<Shared>,
    outbound: Option<Outbound>,
    snapshots: Option<SnapshotConfig>,
    /// The snapshot being written in the background, if any.
    writing: Option<JoinHandle<()>>,
    publish_seconds: Histogram,
    /// Shown batches' fact vectors, emptied, back to the engine thread (see
    /// [`SPARE_FACT_VECS`]).
    spare_facts: std_mpsc::SyncSender<Vec<Fact>>,
}

/// The publisher, shared by its thread and the writer. A commit group of a few requests
/// (one alert per HTTP request, say) costs more in thread wake-ups than in showing it: on
/// the project's VMs a request cost ~140 µs of CPU, a quarter of it in the scheduler. So
/// when nothing waits for the publisher thread the writer shows a small group itself, and
/// hands large ones over, which keeps writing the next group in parallel with showing this.
struct Publishing {
    publisher: Mutex<Publisher>,
    /// Groups sent to the publisher thread and not yet shown: the writer shows a group
    /// itself only when this is 0, so groups are shown in commit order.
    queued: AtomicUsize,
}

impl Publishing {
    fn run(&self, rx: std_mpsc::Receiver<Committed>) {
        while let Ok(committed) = rx.recv() {
            let mut publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
            publisher.show(committed);
            // Under the lock: a writer that then takes it sees every sent group shown.
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        let mut publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(writing) = publisher.writing.take() {
            let _ = writing.join();
        }
    }

    /// Shows `committed` on the calling thread if it is small, carries no snapshot and the
    /// publisher thread is idle; otherwise sends it to that thread. Fails only when the
    /// publisher thread is gone.
    fn hand_over(
        &self,
        committed: Committed,
        to_thread: &std_mpsc::SyncSender<Committed>,
    ) -> Result<(), std_mpsc::SendError<Committed>> {
        let small = committed.seqs.len() <= SHOW_INLINE
            && committed.group.iter().all(|b| b.snapshot.is_none());
        if small
            && let Ok(mut publisher) = self.publisher.try_lock()
            && self.queued.load(Ordering::Acquire) == 0
        {
            publisher.show(committed);
            return Ok(());
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        to_thread.send(committed)
    }
}

impl Publisher {
    fn show(&mut self, committed: Committed) {
        let Committed {
            mut group,
            seqs,
            head,
        } = committed;
        // Only a group's last batch carries a snapshot (see `Writer::run`).
        let snapshot = group.last_mut().and_then(|b| b.snapshot.take());
        let started = Instant::now();
        self.publish(&mut group, &seqs);
        self.publish_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Some(state) = snapshot {
            self.snapshot(state, head);
        }
    }

    /// Writes a snapshot of `state` and the read model (both as of the last durable fact) in
    /// the background, so ingest does not wait for it; one at a time. The read model's
    /// incidents and alerts are encoded here, into buffers, rather than cloned: encoding
    /// is a single pass with no per-alert allocations, and the buffers go back to the
    /// system when written, where a clone's many small blocks would stay with the allocator
    /// (RSS that never comes back). Meanwhile the snapshot's own thread encodes the engine
    /// state, then writes the read model's part (its strings and CMDB, then the buffers
    /// as they are encoded) and the state.
    fn snapshot(&mut self, state: Box<State>, seq: u64) {
        let Some(cfg) = self.snapshots.clone() else {
            return;
        };
        if let Some(previous) = self.writing.take() {
            let _ = previous.join();
        }
        // Unbounded: the publisher never waits for the disk; the thread writes the pieces as
        // they come, so they do not all pile up.
        let (view_tx, view_rx) = std_mpsc::channel();
        // Written pieces come back to be filled again.
        let (spent_tx, spent_rx) = std_mpsc::sync_channel(SPARE_PIECES);
        let spawned = std::thread::Builder::new()
            .name("incidentd-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                let spent = |piece| {
                    let _ = spent_tx.try_send(piece);
                };
                match crate::snapshot::write(&cfg.dir, seq, state, view_rx, spent) {
                    Ok(path) => {
                        tracing::info!(seq, path = %path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "snapshot written");
                        if cfg.prune_log {
                            let through = crate::snapshot::prune_through(&cfg.dir).unwrap_or(0);
                            match crate::eventlog::remove_segments_through(&cfg.log_dir, through) {
                                Ok(n) if n > 0 => tracing::info!(segments = n, "log segments covered by the snapshot removed"),
                                Ok(_) => {}
                                Err(e) => tracing::warn!(error = %e, "removing covered log segments failed"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "snapshot failed; the log still holds everything"),
                }
            });
        match spawned {
            Ok(handle) => self.writing = Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the snapshot thread");
                return;
            }
        }
        let started = Instant::now();
        let view = self.shared.view();
        // A send fails only if the snapshot thread already gave up (it logged why).
        let _ = view_tx.send(ViewPart::Head(view.snapshot_head()));
        let mut bytes = 0;
        let encoded = view.snapshot_body(|piece| {
            bytes += piece.len();
            let _ = view_tx.send(ViewPart::Body(piece));
            spent_rx.try_recv().unwrap_or_default()
        });
        drop(view);
        if let Err(e) = encoded {
            // The snapshot thread sees the channel close without `End` and drops the file.
            tracing::warn!(error = %e, "snapshot skipped: read model does not encode");
            return;
        }
        let _ = view_tx.send(ViewPart::End);
        // The publisher (and so ingest) waits for this: worth seeing next to "snapshot written".
        self.shared
            .metrics
            .stage_seconds
            .with_label_values(&["snapshot_encode"])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read model encoded for a snapshot"
        );
    }

    /// After durability: show, count, publish, acknowledge, in that order.
    fn publish(&mut self, group: &mut Vec<Batch>, seqs: &[u64]) {
        let mut touched = Vec::with_capacity(seqs.len());
        {
            let mut view = self.shared.view.write().unwrap_or_else(|e| e.into_inner());
            let mut seqs = seqs.iter();
            for batch in group.iter_mut() {
                show_batch(&mut view, batch, &mut seqs, &mut touched);
            }
            self.shared
                .metrics
                .incidents_open
                .set(view.open_count() as i64);
            self.shared
                .metrics
                .incidents_held
                .set(view.held_count() as i64);
            self.shared
                .metrics
                .interned_strings
                .set(i64::from(crate::view::interned_strings()));
        }
        let facts = || group.iter().flat_map(|b| &b.facts).zip(seqs);
        // Rendered under a read lock (this thread is the only writer, so nothing changes in
        // between), so HTTP readers are not held up by the serialization.
        let events = stream_events(&self.shared.view(), facts().zip(touched.iter().copied()));
        if let Some(&head) = seqs.last() {
            self.shared.stream.publish(events, head);
        }
        let alerts: usize = group.iter().map(|b| b.alerts).sum();
        self.shared.metrics.alerts_received.inc_by(alerts as u64);
        if let Some(out) = &self.outbound {
            /// The outbound message, serialized straight from the fact (no `Value` tree).
            #[derive(serde::Serialize)]
            struct Outgoing<'a> {
                seq: u64,
                incident: &'a str,
                fact: &'a Fact,
            }
            let mut buf = Vec::with_capacity(256);
            for ((fact, &seq), incident) in facts().zip(touched) {
                let Some(incident) = incident.or_else(|| fact.incident()) else {
                    continue;
                };
                let incident = incident.text();
                let incident = incident.as_str();
                let kind = fact.kind();
                let mut subject =
                    String::with_capacity(out.prefix.len() + kind.len() + incident.len() + 2);
                for part in [&out.prefix, ".", kind, ".", incident] {
                    subject.push_str(part);
                }
                buf.clear();
                let message = Outgoing {
                    seq,
                    incident,
                    fact,
                };
                if serde_json::to_writer(&mut buf, &message).is_err() {
                    continue; // plain data: cannot fail
                }
                if out
                    .tx
                    .try_send((subject, Bytes::copy_from_slice(&buf)))
                    .is_err()
                {
                    self.shared.metrics.outbound_dropped.inc();
                }
            }
        }
        // Replies last: a caller that sees 2xx finds its alerts in the read model.
        for batch in group.drain(..) {
            for done in batch.replies {
                done.send(Ok(()));
            }
            let mut facts = batch.facts;
            if facts.capacity() <= SPARE_FACTS_MAX {
                facts.clear();
                // Full (or the engine gone): dropped, as before recycling.
                let _ = self.spare_facts.try_send(facts);
            }
        }
    }
}

/// Applies a durable batch's facts (sequences from `seqs`) to the read model, taking the
/// views the writer prepared, and notes the incident each changed. The alerts' entries are
/// looked up a window ahead ([`TOUCH_AHEAD`]).
fn show_batch(
    view: &mut ReadModel,
    batch: &mut Batch,
    seqs: &mut std::slice::Iter<'_, u64>,
    touched: &mut Vec<Option<IncidentId>>,
) {
    let mut received = batch.received.drain(..).peekable();
    for window in batch.facts.chunks_mut(TOUCH_AHEAD) {
        let fps = window.iter().filter_map(Fact::fingerprint);
        fps.for_each(|fp| view.touch(&fp));
        for (fact, &seq) in window.iter_mut().zip(&mut *seqs) {
            let touched_by = match fact {
                Fact::AlertReceived { at, alert }
                    if received
                        .peek()
                        .is_some_and(|r| r.fingerprint() == alert.fingerprint) =>
                {
                    if let Some(prepared) = received.next() {
                        view.apply_received(seq, *at, prepared);
                    }
                    None
                }
                // Not prepared (cannot happen: the writer prepares every received alert, in
                // order, before the group gets here).
                _ => view.apply_owned(seq, fact),
            };
            touched.push(touched_by);
        }
    }
}

/// One stream event per fact that changed an incident, each carrying the incident's summary
/// as of the end of the group (rendered once per incident, however many facts touched it).
fn stream_events<'a>(
    view: &ReadModel,
    facts: impl Iterator<Item = ((&'a Fact, &'a u64), Option<IncidentId>)>,
) -> Vec<crate::stream::Event> {
    let mut rendered: std::collections::HashMap<IncidentId, Option<Arc<str>>> =
        std::collections::HashMap::new();
    let mut summary = |id: IncidentId| {
        rendered
            .entry(id)
            .or_insert_with(|| {
                let inc = view.get(id)?;
                serde_json::to_string(&inc.summary(&view.topology))
                    .ok()
                    .map(Arc::from)
            })
            .clone()
    };
    let mut events = Vec::new();
    for ((fact, &seq), touched) in facts {
        let Some(incident) = touched.or_else(|| fact.incident()) else {
            continue;
        };
        let text = match fact {
            // The incident is gone from the read model: its last word is that it closed, so
            // a console drops it without waiting for a refresh.
            Fact::IncidentClosed { .. } => {
                Arc::from(format!(r#"{{"id":"{incident}","state":"closed"}}"#))
            }
            _ => match summary(incident) {
                Some(text) => text,
                None => continue,
            },
        };
        let merged = match fact {
            Fact::IncidentsMerged { from, .. } => summary(*from),
            _ => None,
        };
        events.push(crate::stream::Event {
            seq,
            kind: fact.kind(),
            incident,
            summary: text,
            merged,
        });
    }
    events
}
