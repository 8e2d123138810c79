//! Edge costs per alert: decoding each format (one alert per payload, and batches of 100),
//! building a received alert's read-model view (interning its texts), fingerprints, and rule
//! matching. Run with `cargo bench --bench ingest`; `DECODE_PROFILE=N` and
//! `PREPARE_PROFILE=N` run fixed workloads without criterion, for callgrind, and
//! `INTERN_SCALE=N` times interning the texts of N alerts at a replay's scale.
//!
//! Payloads are realistic single alerts of about 350 bytes; the throughput is per alert.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use incidentd::ingest::{Format, Limits, Stamp, decode};
use incidentd::model::{Alert, Fingerprint, Severity, Status};
use incidentd::rules::Rules;
use incidentd::view::{PreparedAlert, Sym};

/// As in the service, so allocation costs match what it pays.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: i64 = 1_795_000_000_000;

fn native(i: usize) -> String {
    format!(
        r#"{{"source":"zabbix-dc1","name":"InstanceDown","ci":"dc1-h{i:04}","severity":"critical","status":"firing","summary":"Host dc1-h{i:04} does not answer ping for 5 minutes, see runbook","labels":{{"check":"c{i}","dc":"dc1","team":"network","env":"prod"}},"annotations":{{"runbook":"https://wiki.example/rb/instance-down"}},"starts_at":"2026-11-18T11:00:00Z","ends_at":null}}"#
    )
}

fn alertmanager(i: usize) -> String {
    format!(
        r#"{{"labels":{{"alertname":"InstanceDown","source":"prometheus-dc1","ci":"dc1-h{i:04}","severity":"critical","instance":"dc1-h{i:04}:9100","job":"node","team":"network"}},"annotations":{{"summary":"Host dc1-h{i:04} does not answer for 5 minutes, see runbook"}},"startsAt":"2026-11-18T11:00:00Z","generatorURL":"http://prometheus.example/graph?g0.expr=up"}}"#
    )
}

fn grafana(i: usize) -> String {
    format!(
        r#"{{"version":"1","status":"firing","receiver":"incidentd","orgId":1,"title":"[FIRING:1] HighCPU","alerts":[{{"status":"firing","labels":{{"alertname":"HighCPU","instance":"app-{i}"}},"annotations":{{"summary":"cpu above 95% for 10m"}},"startsAt":"2026-11-18T11:00:00Z","endsAt":"0001-01-01T00:00:00Z","dashboardURL":"http://grafana.example/d/1","valueString":"[ var='B' value=97.2 ]"}}]}}"#
    )
}

fn pagerduty(i: usize) -> String {
    format!(
        r#"{{"routing_key":"R0UTINGKEY000000000000000000000","event_action":"trigger","dedup_key":"disk-db-{i}","payload":{{"summary":"Disk /var on db-{i} is 97% full","source":"db-{i}","severity":"critical","timestamp":"2026-11-18T11:00:00Z","component":"postgres","group":"prod-db","class":"disk","custom_details":{{"free_gb":"3"}}}}}}"#
    )
}

fn alerta(i: usize) -> String {
    format!(
        r#"{{"resource":"web-{i}","event":"HTTPDown","environment":"Production","severity":"major","service":["web"],"group":"Web","value":"503","text":"web-{i} answers 503 on /health for 3 checks","tags":["dc1","prod"],"attributes":{{"region":"eu"}},"origin":"alerta-checker"}}"#
    )
}

fn inspection(i: usize) -> String {
    format!(
        r#"{{"check":"disk-smart","target":"srv-db-{i:02}","status":"failed","values":{{"reallocated":12,"temp_c":71}},"run_id":"run-8812","message":"SMART reallocated sectors rising on /dev/sda","system":"inspector-1","checked_at":"2026-11-18T11:00:00Z"}}"#
    )
}

fn cloudevents(i: usize) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"evt-{i}","source":"/probes/dc1","type":"InstanceDown","subject":"dc1-h{i:04}","time":"2026-11-18T11:00:00Z","datacontenttype":"application/json","data":{{"severity":"critical","summary":"Host dc1-h{i:04} does not answer ping for 5 minutes, see runbook","labels":{{"check":"c{i}","dc":"dc1"}}}}}}"#
    )
}

fn batch(one: fn(usize) -> String, n: usize) -> String {
    let items: Vec<String> = (0..n).map(one).collect();
    format!("[{}]", items.join(","))
}

#[inline(never)]
fn profile_decode(bodies: &[(Format, String)], limits: &Limits) -> usize {
    let mut n = 0;
    for (format, body) in bodies {
        let decoded = decode(*format, body.as_bytes(), Stamp::Live(NOW), limits).expect("decodes");
        n += decoded.alerts.len();
        black_box(decoded);
    }
    n
}

/// `DECODE_PROFILE=N`: N native and N Alertmanager batches of 100 through `profile_decode`,
/// no criterion, for `valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect='*profile_decode*'`. `DECODE_PROFILE_FORMAT=native` (or `alertmanager`)
/// keeps only that format, for a per-format count.
fn profile_decoders(n: usize) {
    let limits = Limits::default();
    let only = std::env::var("DECODE_PROFILE_FORMAT").ok();
    let wanted = |f: Format| only.as_deref().is_none_or(|o| o == f.as_str());
    let mut bodies = Vec::with_capacity(2 * n);
    for _ in 0..n {
        for (format, one) in [
            (Format::Native, native as fn(usize) -> String),
            (Format::Alertmanager, alertmanager),
        ] {
            if wanted(format) {
                bodies.push((format, batch(one, 100)));
            }
        }
    }
    eprintln!(
        "profile: {} alerts decoded",
        profile_decode(&bodies, &limits)
    );
}

fn decoders(c: &mut Criterion) {
    if let Ok(n) = std::env::var("DECODE_PROFILE") {
        profile_decoders(n.parse().unwrap_or(100));
        return;
    }
    let limits = Limits::default();
    let mut group = c.benchmark_group("decode");
    /// (name, format, one sample alert, whether to bench batches of 100 too)
    type Case = (&'static str, Format, fn(usize) -> String, bool);
    let formats: [Case; 7] = [
        ("native", Format::Native, native, true),
        ("alertmanager", Format::Alertmanager, alertmanager, true),
        // The Grafana webhook is an object holding its alerts: no top-level array.
        ("grafana", Format::Grafana, grafana, false),
        ("pagerduty", Format::PagerDuty, pagerduty, true),
        ("alerta", Format::Alerta, alerta, true),
        ("inspection", Format::Inspection, inspection, true),
        ("cloudevents", Format::CloudEvents, cloudevents, true),
    ];
    for (name, format, one, batches) in formats {
        // postableAlerts is always an array, even of one.
        let body = if format == Format::Alertmanager {
            batch(one, 1)
        } else {
            one(7)
        };
        assert_eq!(
            decode(format, body.as_bytes(), Stamp::Live(NOW), &limits)
                .map(|d| (d.alerts.len(), d.errors.len())),
            Ok((1, 0)),
            "{name} sample must decode"
        );
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}/single"), |b| {
            b.iter(|| {
                decode(
                    format,
                    black_box(body.as_bytes()),
                    Stamp::Live(NOW),
                    &limits,
                )
            })
        });
        if batches {
            let body = batch(one, 100);
            group.throughput(Throughput::Elements(100));
            group.bench_function(format!("{name}/batch100"), |b| {
                b.iter(|| {
                    decode(
                        format,
                        black_box(body.as_bytes()),
                        Stamp::Live(NOW),
                        &limits,
                    )
                })
            });
        }
    }
    group.finish();
}

/// Storm-like alerts, 100 per call, never seen before: label keys and most values repeat
/// (as they do across real alerts), each alert's `check` value and summary are its own.
fn fresh_alerts() -> impl FnMut() -> Vec<Alert> {
    let limits = Limits::default();
    let body = batch(native, 100);
    let mut round = 0usize;
    move || {
        round += 1;
        let mut alerts = decode(Format::Native, body.as_bytes(), Stamp::Live(NOW), &limits)
            .expect("decodes")
            .alerts;
        for (k, a) in alerts.iter_mut().enumerate() {
            a.labels.insert("check".into(), format!("c{round}-{k}"));
            a.summary = Some(format!("Host {k} does not answer ping, round {round}"));
        }
        alerts
    }
}

/// An interner already holding a million texts, as a long-running service's does.
fn fill_interner() {
    for i in 0..1_000_000 {
        black_box(Sym::from_string(format!("prefill-{i}")));
    }
}

#[inline(never)]
fn profile_prepare(batches: &[Vec<Alert>]) -> usize {
    let mut n = 0;
    for alert in batches.iter().flatten() {
        black_box(PreparedAlert::new(alert, NOW));
        n += 1;
    }
    n
}

/// `PREPARE_PROFILE=N`: N batches of 100 through `profile_prepare`, no criterion, for
/// `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profile_prepare*'`.
fn profile(n: usize) {
    fill_interner();
    let mut next = fresh_alerts();
    let batches: Vec<Vec<Alert>> = (0..n).map(|_| next()).collect();
    eprintln!("profile: {} alerts prepared", profile_prepare(&batches));
}

/// `INTERN_SCALE=N`: the texts of N storm alerts (12 each: label keys and values that
/// repeat, 2,560 CIs and their summaries, one `check` value of its own) interned once, in
/// log order, an alert's texts together as a replay of N received alerts does
/// (`INTERN_ONE=1`: one by one); prints the time per text. At millions
/// of alerts the interner's table outgrows the caches, which criterion's small batches on a
/// warm table never show.
fn intern_scale(n: usize) {
    let mut texts: Vec<String> = Vec::with_capacity(n * 12);
    for k in 0..n {
        let ci = format!("scale-host-{:04}", (k * 7919) % 2560);
        let name = format!("Check{}", k % 50);
        let summary = format!("{ci}: {name} is failing on the storm host with a longer text");
        texts.extend([
            "check".to_string(),
            format!("scale-c{k}"),
            "dc".into(),
            "dc1".into(),
            "team".into(),
            format!("team-{}", k % 7),
            "env".into(),
            "prod".into(),
            "storm".into(),
            name,
            ci,
            summary,
        ]);
    }
    let count = texts.len();
    let one_by_one = std::env::var("INTERN_ONE").is_ok_and(|v| v == "1");
    let started = std::time::Instant::now();
    if one_by_one {
        for t in texts {
            black_box(Sym::from_string(t));
        }
    } else {
        let mut syms = Vec::with_capacity(12);
        for texts in texts.chunks(12) {
            syms.clear();
            // A vector per alert, as the read model's views build.
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            Sym::many(&texts, &mut syms);
            black_box(&syms);
        }
    }
    let took = started.elapsed();
    eprintln!(
        "intern_scale ({}): {count} texts of {n} alerts in {:.3} s = {:.1} ns per text",
        if one_by_one {
            "one by one"
        } else {
            "per alert"
        },
        took.as_secs_f64(),
        took.as_nanos() as f64 / count as f64
    );
}

/// Building a received alert's read-model view (interning its strings), as the pipeline does
/// for every new alert.
fn prepare(c: &mut Criterion) {
    if let Ok(n) = std::env::var("PREPARE_PROFILE") {
        profile(n.parse().unwrap_or(100));
        return;
    }
    if let Ok(n) = std::env::var("INTERN_SCALE") {
        intern_scale(n.parse().unwrap_or(3_000_000));
        return;
    }
    fill_interner();
    let mut group = c.benchmark_group("prepare");
    group.throughput(Throughput::Elements(100));
    group.bench_function("storm_alert/batch100", |b| {
        b.iter_batched(
            fresh_alerts(),
            |alerts| {
                alerts
                    .iter()
                    .map(|a| PreparedAlert::new(a, NOW))
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn labels() -> BTreeMap<String, String> {
    [
        ("check", "c42"),
        ("dc", "dc1"),
        ("env", "prod"),
        ("instance", "dc1-h0042:9100"),
        ("job", "node"),
        ("team", "network"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn fingerprints(c: &mut Criterion) {
    let labels = labels();
    let mut group = c.benchmark_group("fingerprint");
    group.throughput(Throughput::Elements(1));
    group.bench_function("native", |b| {
        b.iter(|| {
            Fingerprint::native(
                black_box("zabbix-dc1"),
                black_box("InstanceDown"),
                Some("dc1-h0042"),
                black_box(&labels),
                None,
            )
        })
    });
    group.bench_function("native_dedup_key", |b| {
        b.iter(|| {
            Fingerprint::native(
                "zabbix-dc1",
                "InstanceDown",
                None,
                &labels,
                Some(black_box("disk-db-9")),
            )
        })
    });
    group.bench_function("alertmanager", |b| {
        b.iter(|| Fingerprint::alertmanager(black_box(&labels)))
    });
    group.finish();
}

fn alert(name: &str, ci: Option<&str>, labels: BTreeMap<String, String>) -> Alert {
    Alert {
        fingerprint: Fingerprint::native("bench", name, ci, &labels, None),
        source: "bench".into(),
        name: name.into(),
        ci: ci.map(str::to_string),
        severity: Severity::Major,
        status: Status::Firing,
        summary: Some("benchmark alert".into()),
        labels,
        annotations: BTreeMap::new(),
        starts_at: NOW,
        ends_at: None,
        dedup_key: None,
        received_at: NOW,
    }
}

/// The shipped rules (`rules/default.toml`): the first rule whose matchers hold decides.
fn rule_matching(c: &mut Criterion) {
    let rules = Rules::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules"
    )))
    .expect("shipped rules load");
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(1));
    let cases = [
        // The first rule (a regex on the name) matches.
        (
            "first_rule",
            alert("InstanceDown", Some("dc1-h0042"), labels()),
        ),
        // Falls through the three topology regexes to `same-ci`.
        ("fifth_rule", alert("CPUHigh", Some("dc1-h0042"), labels())),
        // Nothing specific: the catch-all at the end.
        ("catch_all", alert("Weird", None, BTreeMap::new())),
    ];
    for (name, a) in &cases {
        assert!(rules.first_match(a, a.ci.is_some()).is_some());
        group.bench_function(*name, |b| {
            b.iter(|| {
                rules
                    .first_match(black_box(a), a.ci.is_some())
                    .map(|r| r.name.len())
            })
        });
    }
    let (_, a) = &cases[1];
    let rule = rules.first_match(a, true).expect("same-ci");
    group.bench_function("group_key", |b| b.iter(|| rule.group_key(black_box(a))));
    group.finish();
}

criterion_group!(benches, decoders, prepare, fingerprints, rule_matching);
criterion_main!(benches);
