//! Topology correlation cost on a 100k-CI CMDB with 10k open incidents.
//! Run with `cargo bench --bench topology`.
//!
//! The CMDB: 1,000 racks (ToR switch under 10 aggregation switches), 40 hosts per rack,
//! 50k VMs, 8k applications, 600 business services — 100k CIs. Open incidents: `InstanceDown`
//! on 10k VMs, each on a different host, so each is its own incident.
//!
//! `TOPOLOGY_PROFILE=N` skips criterion and runs N new alerts (default 1,000) through one
//! loaded engine inside `profile_new_alerts`, for instruction counts that machine load does
//! not blur: `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*profile_new_alerts*' target/release/deps/topology-* --bench`, then
//! divide the total by N.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use incidentd::cmdb::{CiSpec, CmdbSpec, Criticality, Relation, RelationSpec};
use incidentd::engine::{Engine, Input};
use incidentd::model::{Alert, Fingerprint, Severity, Status};
use incidentd::rules::Rules;

const T0: i64 = 1_795_000_000_000;
const RACKS: usize = 1_000;
const HOSTS_PER_RACK: usize = 40;
const VMS: usize = 50_000;
const APPS: usize = 8_000;
const SERVICES: usize = 600;

fn ci(id: String, kind: &str) -> CiSpec {
    CiSpec {
        id,
        kind: kind.into(),
        name: None,
        criticality: None,
        owner_group: None,
        attrs: BTreeMap::new(),
    }
}

fn rel(from: &str, kind: Relation, to: &str) -> RelationSpec {
    RelationSpec {
        from: from.into(),
        kind,
        to: to.into(),
    }
}

fn host(i: usize) -> String {
    format!("h{i}")
}

fn cmdb() -> CmdbSpec {
    let mut s = CmdbSpec::default();
    for a in 0..10 {
        s.cis.push(ci(format!("agg{a}"), "switch"));
    }
    for r in 0..RACKS {
        let tor = format!("tor{r}");
        s.cis.push(ci(tor.clone(), "switch"));
        s.relations
            .push(rel(&tor, Relation::ConnectedTo, &format!("agg{}", r % 10)));
        for h in 0..HOSTS_PER_RACK {
            let id = host(r * HOSTS_PER_RACK + h);
            s.cis.push(ci(id.clone(), "host"));
            s.relations.push(rel(&id, Relation::ConnectedTo, &tor));
        }
    }
    for v in 0..VMS {
        let id = format!("vm{v}");
        s.cis.push(ci(id.clone(), "vm"));
        s.relations.push(rel(
            &id,
            Relation::HostedOn,
            &host(v % (RACKS * HOSTS_PER_RACK)),
        ));
    }
    for a in 0..APPS {
        let id = format!("app{a}");
        s.cis.push(ci(id.clone(), "application"));
        s.relations
            .push(rel(&id, Relation::RunsOn, &format!("vm{}", (a * 7) % VMS)));
    }
    for v in 0..SERVICES {
        let id = format!("svc{v}");
        let mut svc = ci(id.clone(), "service");
        svc.criticality = Some(Criticality::High);
        s.cis.push(svc);
        for k in 0..3 {
            s.relations.push(rel(
                &id,
                Relation::DependsOn,
                &format!("app{}", (v * 13 + k) % APPS),
            ));
        }
    }
    s
}

fn alert(name: &str, ci: String, at: i64) -> Alert {
    let labels = BTreeMap::new();
    Alert {
        fingerprint: Fingerprint::native("bench", name, Some(&ci), &labels, None),
        source: "bench".into(),
        name: name.into(),
        ci: Some(ci),
        severity: Severity::Critical,
        status: Status::Firing,
        summary: None,
        labels,
        annotations: BTreeMap::new(),
        starts_at: at,
        ends_at: None,
        dedup_key: None,
        received_at: at,
    }
}

/// The `i`th new alert of the handle benchmarks: hosts and VMs in turn.
fn fresh_alert(i: usize) -> Alert {
    let ci = if i.is_multiple_of(2) {
        host((i * 7) % (RACKS * HOSTS_PER_RACK))
    } else {
        format!("vm{}", 10_000 + i % (VMS - 10_000))
    };
    alert(
        if i.is_multiple_of(2) {
            "HostUnreachable"
        } else {
            "InstanceDown"
        },
        ci,
        T0 + 1,
    )
}

/// An engine with the 100k-CI CMDB and 10k open incidents.
fn loaded_engine(spec: &CmdbSpec) -> Engine {
    let mut engine = Engine::new(Rules::embedded().expect("built-in rules"));
    let mut out = Vec::new();
    engine.load_cmdb(spec, "bench", T0, &mut out);
    // VM v sits on host v: 10k VMs on 10k different hosts.
    for v in 0..10_000 {
        out.clear();
        engine.begin_batch();
        let _ = engine.handle(
            Input::Alert(&alert("InstanceDown", format!("vm{v}"), T0)),
            &mut out,
        );
    }
    assert_eq!(engine.state().incidents.len(), 10_000);
    engine
}

/// The measured part of a profile run: `handle` for each new alert, batches as in the
/// benchmarks. Not inlined, so a profiler can collect exactly this function.
#[inline(never)]
fn profile_new_alerts(
    engine: &mut Engine,
    fresh: &[Alert],
    out: &mut Vec<incidentd::engine::Fact>,
) {
    for a in fresh {
        if out.len() > 4096 {
            out.clear();
            engine.begin_batch();
        }
        let _ = engine.handle(Input::Alert(a), out);
    }
}

/// `TOPOLOGY_PROFILE=N`: N new alerts through one engine, no criterion.
fn profile(n: usize) {
    let spec = cmdb();
    let mut engine = loaded_engine(&spec);
    let fresh: Vec<Alert> = (0..n).map(fresh_alert).collect();
    let mut out = Vec::with_capacity(8192);
    profile_new_alerts(&mut engine, black_box(&fresh), &mut out);
    eprintln!(
        "profile: {n} new alerts, {} incidents",
        engine.state().incidents.len()
    );
}

fn topology(c: &mut Criterion) {
    if let Ok(n) = std::env::var("TOPOLOGY_PROFILE") {
        profile(n.parse().unwrap_or(1_000));
        return;
    }
    let spec = cmdb();
    let started = Instant::now();
    let engine = loaded_engine(&spec);
    eprintln!(
        "setup: {} CIs, {} open incidents in {:?}",
        engine.state().topology.len(),
        engine.state().incidents.len(),
        started.elapsed()
    );
    let mut group = c.benchmark_group("topology");
    group.measurement_time(Duration::from_secs(5));

    // Decide only (the neighbourhood search and the choice), repeatable on the same state.
    // A host alert whose VM is alerting (joins as its cause) ...
    let related: Vec<Alert> = (0..1_000)
        .map(|i| alert("HostUnreachable", host(i * 7), T0 + 1))
        .collect();
    // ... and a host alert in a quiet corner (opens a new incident).
    let quiet: Vec<Alert> = (0..1_000)
        .map(|i| alert("HostUnreachable", host(20_000 + i * 11), T0 + 1))
        .collect();
    let mut out = Vec::with_capacity(16);
    for (name, pool) in [
        ("decide_joins_incident", &related),
        ("decide_opens_incident", &quiet),
    ] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                i = (i + 1) % pool.len();
                let _ = engine.decide(Input::Alert(black_box(&pool[i])), &mut out);
                black_box(out.len())
            })
        });
    }

    // Decide and apply: every iteration a new alert changes the state.
    group.bench_function("handle_new_alert", |b| {
        b.iter_custom(|iters| {
            let mut engine = loaded_engine(&spec);
            let fresh: Vec<Alert> = (0..iters as usize).map(fresh_alert).collect();
            let mut out = Vec::with_capacity(4096);
            let started = Instant::now();
            for a in &fresh {
                if out.len() > 4096 {
                    out.clear();
                    engine.begin_batch();
                }
                let _ = engine.handle(Input::Alert(a), &mut out);
            }
            started.elapsed()
        })
    });

    // The same alerts, timed 1,000 at a time on each fresh engine: `handle_new_alert` gets
    // only ~10 alerts per sample (its setup takes a second), so cold caches right after the
    // setup weigh heavily there. The figure is per 1,000 alerts.
    group.bench_function("handle_1000_new_alerts", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut engine = loaded_engine(&spec);
                let fresh: Vec<Alert> = (0..1_000).map(fresh_alert).collect();
                let mut out = Vec::with_capacity(4096);
                let started = Instant::now();
                for a in &fresh {
                    if out.len() > 4096 {
                        out.clear();
                        engine.begin_batch();
                    }
                    let _ = engine.handle(Input::Alert(a), &mut out);
                }
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = topology
}
criterion_main!(benches);
