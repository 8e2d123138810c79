//! Engine step cost: a duplicate of a known alert, and a new alert that joins or opens an
//! incident by rule. Run with `cargo bench --bench engine`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use incidentd::engine::{Engine, Input};
use incidentd::model::{Alert, Fingerprint, Severity, Status};
use incidentd::rules::Rules;

const T0: i64 = 1_795_000_000_000;

fn alert(i: usize, at: i64) -> Alert {
    let mut labels = BTreeMap::new();
    labels.insert("service".to_string(), format!("svc-{}", i % 500));
    let name = format!("Check{}", i % 37);
    Alert {
        fingerprint: Fingerprint::native("bench", &name, None, &labels, None),
        source: "bench".into(),
        name,
        ci: None,
        severity: Severity::Major,
        status: Status::Firing,
        summary: Some("benchmark alert".into()),
        labels,
        annotations: BTreeMap::new(),
        starts_at: at,
        ends_at: None,
        dedup_key: None,
        received_at: at,
    }
}

fn engine_step(c: &mut Criterion) {
    let rules = Rules::embedded().expect("built-in rules compile");
    let mut group = c.benchmark_group("engine");

    // 10k distinct alerts already known; each iteration is one more copy of one of them.
    let mut engine = Engine::new(rules.clone());
    let known: Vec<Alert> = (0..10_000).map(|i| alert(i, T0)).collect();
    let mut out = Vec::new();
    for a in &known {
        let _ = engine.handle(Input::Alert(a), &mut out);
    }
    let mut i = 0;
    group.bench_function("duplicate", |b| {
        b.iter(|| {
            if out.len() > 4096 {
                out.clear();
                engine.begin_batch();
            }
            i = (i + 1) % known.len();
            let _ = engine.handle(Input::Alert(black_box(&known[i])), &mut out);
        })
    });

    // New distinct alerts, grouped into 500 service incidents by rule.
    group.bench_function("new_alert_by_rule", |b| {
        b.iter_batched(
            || {
                let fresh: Vec<Alert> = (0..1_000).map(|i| alert(i, T0)).collect();
                (Engine::new(rules.clone()), fresh, Vec::with_capacity(4096))
            },
            |(mut engine, fresh, mut out)| {
                for a in &fresh {
                    let _ = engine.handle(Input::Alert(a), &mut out);
                }
                black_box(out.len())
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, engine_step);
criterion_main!(benches);
