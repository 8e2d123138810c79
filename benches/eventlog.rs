//! Event log cost: encoding a fact as a record (binary version 2 beside the JSON version 1 it
//! replaced), appending with group commit (one fsync per 1, 8 or 64 batches of 64 facts), and
//! replaying (decode + engine apply + read model apply), in one thread and pipelined as
//! `incidentd serve` restores (`app::Replay`). Run with `cargo bench --bench eventlog`. The log lives in a temp dir on the data disk's
//! file system (`TMPDIR` to choose another), so fsync costs what it costs there.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use incidentd::app::Replay;
use incidentd::engine::facts::{decode_record, encode_record};
use incidentd::engine::snapshot_codec;
use incidentd::engine::{Engine, Fact, Input};
use incidentd::eventlog::{EventLog, LogConfig};
use incidentd::model::{Alert, Fingerprint, Severity, Status};
use incidentd::rules::Rules;
use incidentd::snapshot;
use incidentd::view::ReadModel;

/// As in the service, so allocation costs match what it pays.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_795_000_000_000;
const FACTS_PER_BATCH: usize = 64;

fn alert(i: usize, at: i64) -> Alert {
    let mut labels = BTreeMap::new();
    labels.insert("service".to_string(), format!("svc-{}", i % 500));
    labels.insert("check".to_string(), format!("c{i}"));
    let name = format!("Check{}", i % 37);
    Alert {
        fingerprint: Fingerprint::native("bench", &name, None, &labels, None),
        source: "bench".into(),
        name,
        ci: Some(format!("host-{}", i % 2000)),
        severity: Severity::Major,
        status: Status::Firing,
        summary: Some("benchmark alert with a realistic summary line".into()),
        labels,
        annotations: BTreeMap::new(),
        starts_at: at,
        ends_at: None,
        dedup_key: None,
        received_at: at,
    }
}

/// The facts a storm produces: new alerts (received, attached, opened...) and repeats.
fn storm_facts(n_alerts: usize) -> Vec<Fact> {
    let mut engine = Engine::new(Rules::embedded().expect("rules"));
    let mut facts = Vec::new();
    for i in 0..n_alerts {
        engine.begin_batch();
        let key = if i % 2 == 0 { i } else { i / 2 };
        let _ = engine.handle(Input::Alert(&alert(key, T0 + i as i64)), &mut facts);
    }
    facts
}

/// A version 1 record, as the JSON encoder before version 2 wrote it.
fn encode_json(fact: &Fact, buf: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    struct RecordOut<'a> {
        v: u32,
        fact: &'a Fact,
    }
    buf.clear();
    serde_json::to_writer(&mut *buf, &RecordOut { v: 1, fact }).expect("encode json");
}

fn fresh() -> (Engine, ReadModel) {
    (
        Engine::new(Rules::embedded().expect("rules")),
        ReadModel::default(),
    )
}

/// Replays `records` (numbered from 1) on one thread: decode, engine apply, read-model apply.
fn replay_serial(
    mut engine: Engine,
    mut view: ReadModel,
    records: &[Vec<u8>],
) -> (Engine, ReadModel) {
    for (seq, r) in records.iter().enumerate() {
        let mut fact = decode_record(r).expect("decode");
        engine.apply(&fact);
        view.apply_owned(seq as u64 + 1, &mut fact);
    }
    (engine, view)
}

/// Replays `records` (numbered from 1) the way `incidentd serve` restores: pipelined.
fn replay_pipelined(engine: Engine, view: ReadModel, records: &[Vec<u8>]) -> (Engine, ReadModel) {
    let mut replay = Replay::start(engine, view).expect("start");
    for (seq, r) in records.iter().enumerate() {
        replay.push(seq as u64 + 1, r).expect("push");
    }
    replay.finish().expect("finish")
}

fn records(c: &mut Criterion) {
    let facts = storm_facts(2_000);
    let mut binary = Vec::new();
    let mut json = Vec::new();
    let mut buf = Vec::new();
    for f in &facts {
        encode_record(f, &mut buf).expect("encode");
        binary.push(buf.clone());
        encode_json(f, &mut buf);
        json.push(buf.clone());
    }
    let mean = |rs: &[Vec<u8>]| rs.iter().map(Vec::len).sum::<usize>() / rs.len();
    println!(
        "{} facts from 2,000 alerts, mean record {} bytes binary, {} bytes JSON",
        facts.len(),
        mean(&binary),
        mean(&json)
    );
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(facts.len() as u64));
    group.bench_function("encode", |b| {
        b.iter(|| {
            for f in &facts {
                encode_record(black_box(f), &mut buf).expect("encode");
            }
        })
    });
    group.bench_function("encode_json", |b| {
        b.iter(|| {
            for f in &facts {
                encode_json(black_box(f), &mut buf);
            }
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            for r in &binary {
                black_box(decode_record(r).expect("decode"));
            }
        })
    });
    group.bench_function("decode_json", |b| {
        b.iter(|| {
            for r in &json {
                black_box(decode_record(r).expect("decode"));
            }
        })
    });
    // What a restart does per fact: decode, engine apply, read model apply, one thread.
    for (name, encoded) in [("replay_serial", &binary), ("replay_serial_json", &json)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                fresh,
                |(engine, view)| replay_serial(engine, view, encoded),
                BatchSize::LargeInput,
            )
        });
    }
    // The same, pipelined as `incidentd serve` restores: decode, engine and read model on
    // three threads.
    group.bench_function("replay", |b| {
        b.iter_batched(
            fresh,
            |(engine, view)| replay_pipelined(engine, view, &binary),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

#[inline(never)]
fn profile_replay(records: &[Vec<u8>]) -> (Engine, ReadModel) {
    let (engine, view) = fresh();
    replay_serial(engine, view, records)
}

/// `REPLAY_PROFILE=N`: the facts of N storm alerts replayed once on one thread inside
/// `profile_replay`, no criterion, for instruction counts that machine load does not blur:
/// `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profile_replay*'
/// target/release/deps/eventlog-* --bench replay_large`, then divide by the facts printed.
fn profile(n: usize) {
    let mut buf = Vec::new();
    let records: Vec<Vec<u8>> = storm_facts(n)
        .iter()
        .map(|f| {
            encode_record(f, &mut buf).expect("encode");
            buf.clone()
        })
        .collect();
    let (engine, _view) = profile_replay(&records);
    eprintln!(
        "profile: {} facts replayed, {} alerts",
        records.len(),
        engine.state().alerts.len()
    );
}

/// Replay at a scale where the pipeline's batches matter: 200,000 alerts (~800k facts).
fn replay_large(c: &mut Criterion) {
    if let Ok(n) = std::env::var("REPLAY_PROFILE") {
        profile(n.parse().unwrap_or(200_000));
        return;
    }
    let facts = storm_facts(200_000);
    let mut buf = Vec::new();
    let encoded: Vec<Vec<u8>> = facts
        .iter()
        .map(|f| {
            encode_record(f, &mut buf).expect("encode");
            buf.clone()
        })
        .collect();
    drop(facts);
    let mut group = c.benchmark_group("replay_large");
    group.sample_size(10);
    group.throughput(Throughput::Elements(encoded.len() as u64));
    group.bench_function("serial", |b| {
        b.iter_batched(
            fresh,
            |(engine, view)| replay_serial(engine, view, &encoded),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("pipelined", |b| {
        b.iter_batched(
            fresh,
            |(engine, view)| replay_pipelined(engine, view, &encoded),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // A snapshot of the same state must load faster than replaying the log it covers.
    let (engine, view) = replay_pipelined(fresh().0, fresh().1, &encoded);
    let dir = tempfile::tempdir().expect("tempdir");
    let seq = encoded.len() as u64;
    // The publisher hands the read model's incidents over encoded; `write` measures the rest
    // (engine state, strings, CMDB, file).
    let parts = || {
        let view = view.snapshot().expect("view");
        [snapshot::ViewPart::Head(view), snapshot::ViewPart::End]
    };
    let path = snapshot::write(dir.path(), seq, engine.state(), parts(), drop).expect("snapshot");
    let log_bytes: usize = encoded.iter().map(Vec::len).sum();
    println!(
        "snapshot of {} facts: {:.1} MB (log {:.1} MB)",
        seq,
        std::fs::metadata(&path).expect("size").len() as f64 / 1e6,
        log_bytes as f64 / 1e6
    );
    let mut group = c.benchmark_group("snapshot_large");
    group.sample_size(10);
    group.throughput(Throughput::Elements(seq));
    group.bench_function("write", |b| {
        b.iter_batched(
            parts,
            |parts| snapshot::write(dir.path(), seq, engine.state(), parts, drop).expect("write"),
            BatchSize::PerIteration,
        )
    });
    // What the publisher stops for (`view_taken`), next to encoding the whole section there
    // as before (`view_whole`), and the engine thread's copy of its state.
    group.bench_function("view_taken", |b| b.iter(|| view.snapshot().expect("view")));
    group.bench_function("view_whole", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            view.write_snapshot(&mut out).expect("view");
            out
        })
    });
    group.bench_function("state_copy", |b| b.iter(|| engine.state().clone()));
    group.bench_function("load", |b| {
        b.iter(|| {
            snapshot::load_latest(dir.path())
                .expect("load")
                .expect("a snapshot")
        })
    });
    // The two sections alone (load decodes them on two threads).
    let mut state_bytes = Vec::new();
    snapshot_codec::write_state(engine.state(), &mut state_bytes).expect("state");
    let mut view_bytes = Vec::new();
    view.write_snapshot(&mut view_bytes).expect("view");
    println!(
        "sections: engine state {:.1} MB, read model {:.1} MB",
        state_bytes.len() as f64 / 1e6,
        view_bytes.len() as f64 / 1e6
    );
    group.bench_function("state_decode", |b| {
        b.iter(|| snapshot_codec::read_state(&state_bytes).expect("state"))
    });
    group.bench_function("view_decode", |b| {
        b.iter(|| ReadModel::read_snapshot(&view_bytes).expect("view"))
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let facts = storm_facts(200);
    let mut payloads = Vec::new();
    let mut buf = Vec::new();
    for f in facts.iter().cycle().take(FACTS_PER_BATCH) {
        encode_record(f, &mut buf).expect("encode");
        payloads.push(buf.clone());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("log_append");
    group.sample_size(20);
    for batches_per_fsync in [1usize, 8, 64] {
        let path = dir.path().join(format!("g{batches_per_fsync}"));
        let (mut log, _) =
            EventLog::open(LogConfig::new(&path), |_, _| Ok::<(), ()>(())).expect("open log");
        group.throughput(Throughput::Elements(
            (batches_per_fsync * FACTS_PER_BATCH) as u64,
        ));
        group.bench_function(format!("{batches_per_fsync}_batches_per_fsync"), |b| {
            b.iter(|| {
                for _ in 0..batches_per_fsync {
                    for p in &payloads {
                        log.append(p).expect("append");
                    }
                }
                log.sync().expect("fsync");
            })
        });
    }
    group.finish();
}

/// Reading a log as a restart does before any fact is decoded: frames, checksums and commit
/// groups (a group is handed on only once its last record is read). 1M storm facts in
/// groups of 256, as the writer commits them.
fn read(c: &mut Criterion) {
    let facts = storm_facts(2_000);
    let mut buf = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) =
        EventLog::open(LogConfig::new(dir.path()), |_, _| Ok::<(), ()>(())).expect("open log");
    const RECORDS: usize = 1_000_000;
    for (i, f) in facts.iter().cycle().take(RECORDS).enumerate() {
        encode_record(f, &mut buf).expect("encode");
        log.append(&buf).expect("append");
        if i % 256 == 255 {
            log.sync().expect("fsync");
        }
    }
    log.sync().expect("fsync");
    drop(log);
    let mut group = c.benchmark_group("log_read");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("1m_records", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let n = EventLog::read(&LogConfig::new(dir.path()), |_, p| {
                bytes += p.len();
                Ok::<(), ()>(())
            })
            .expect("read");
            assert_eq!(n as usize, RECORDS);
            bytes
        })
    });
    group.finish();
}

criterion_group!(benches, records, replay_large, append, read);
criterion_main!(benches);
