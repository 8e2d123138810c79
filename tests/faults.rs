//! Storage faults injected under a real pipeline and real files: a full disk answers 503,
//! keeps the log intact and resumes when space returns; a failed fsync stops the writer for
//! good. After either, the log replays to exactly what was shown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use incidentd::engine::Engine;
use incidentd::engine::facts::decode_record;
use incidentd::eventlog::{EventLog, FaultyStorage, LogConfig};
use incidentd::metrics::Metrics;
use incidentd::model::{Alert, Fingerprint, Severity, Status};
use incidentd::pipeline::{self, Pipeline, PipelineError, Shared};
use incidentd::rules::Rules;
use incidentd::view::ReadModel;

fn alert(i: usize) -> Alert {
    let labels = BTreeMap::new();
    let name = format!("Check{}", i % 3);
    let ci = format!("host-{}", i % 4);
    Alert {
        fingerprint: Fingerprint::native("faults", &name, Some(&ci), &labels, None),
        source: "faults".into(),
        name,
        ci: Some(ci),
        severity: Severity::Major,
        status: Status::Firing,
        summary: None,
        labels,
        annotations: BTreeMap::new(),
        starts_at: 1_795_000_000_000 + i as i64,
        ends_at: None,
        dedup_key: None,
        received_at: 1_795_000_000_000 + i as i64,
    }
}

fn start(
    dir: &std::path::Path,
    faults: &Arc<FaultyStorage>,
) -> (Pipeline, pipeline::Running, Arc<Shared>) {
    let cfg = LogConfig {
        storage: faults.clone(),
        ..LogConfig::new(dir)
    };
    let (log, _) = EventLog::open(cfg, |_, _| Ok::<(), ()>(())).expect("open log");
    let shared = Arc::new(Shared::new(
        ReadModel::default(),
        Metrics::new().expect("metrics"),
    ));
    let engine = Engine::new(Rules::embedded().expect("rules"));
    let (p, running) =
        pipeline::start(engine, Box::new(log), shared.clone(), None, 64, None).expect("start");
    (p, running, shared)
}

/// Every incident document, as the API would render it.
fn docs(view: &ReadModel) -> Vec<String> {
    view.surviving()
        .map(|i| serde_json::to_string(&i.doc(&view.topology, true)).expect("json"))
        .collect()
}

fn replay(dir: &std::path::Path) -> ReadModel {
    let mut view = ReadModel::default();
    EventLog::read(&LogConfig::new(dir), |seq, bytes| {
        view.apply(seq, &decode_record(bytes).expect("record"));
        Ok::<(), ()>(())
    })
    .expect("read log");
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_keeps_the_log_intact_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = FaultyStorage::new();
    let (p, running, shared) = start(dir.path(), &faults);
    assert_eq!(p.submit((0..10).map(alert).collect()).await, Ok(10));

    faults.fail_writes(FaultyStorage::ENOSPC);
    assert_eq!(
        p.submit((10..20).map(alert).collect()).await,
        Err(PipelineError::LogFull)
    );
    assert!(shared.log_full.load(Ordering::SeqCst));
    assert!(
        shared.log_writable.load(Ordering::SeqCst),
        "not stopped: retryable"
    );

    faults.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.log_full.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.submit((20..30).map(alert).collect()).await, Ok(10));
    let shown = docs(&shared.view());
    drop(p);
    tokio::task::spawn_blocking(move || running.join())
        .await
        .expect("join");
    // The refused batch's facts were kept and written once space returned (the engine had
    // applied them), so the log holds all 30 and replays to exactly what was shown.
    assert_eq!(docs(&replay(dir.path())), shown);
    let total: u64 = shared
        .view()
        .surviving()
        .flat_map(|i| i.alerts.iter().map(|a| a.count))
        .sum();
    assert_eq!(total, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_writer_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = FaultyStorage::new();
    let (p, running, shared) = start(dir.path(), &faults);
    assert_eq!(p.submit((0..5).map(alert).collect()).await, Ok(5));
    let shown = docs(&shared.view());

    faults.fail_syncs(FaultyStorage::EIO);
    assert!(matches!(
        p.submit((5..10).map(alert).collect()).await,
        Err(PipelineError::LogStopped(_))
    ));
    assert!(!shared.log_writable.load(Ordering::SeqCst));
    faults.clear();
    assert!(
        matches!(
            p.submit((10..15).map(alert).collect()).await,
            Err(PipelineError::LogStopped(_))
        ),
        "no acknowledgement after a failed fsync, even once the disk is back"
    );
    assert_eq!(
        docs(&shared.view()),
        shown,
        "nothing unacknowledged was shown"
    );
    drop(p);
    tokio::task::spawn_blocking(move || running.join())
        .await
        .expect("join");
    // What was acknowledged is on disk; the failed batch may be too (it was written, its
    // fsync failed), but never anything after it.
    let replayed = replay(dir.path());
    let alerts: u64 = replayed
        .surviving()
        .flat_map(|i| i.alerts.iter().map(|a| a.count))
        .sum();
    assert!((5..=10).contains(&alerts), "{alerts}");
}
