//! Overload is shed explicitly (issue 6): with a tiny engine queue, a flood of concurrent
//! HTTP batches gets either 2xx — and then every alert of it is in the API — or 429 with
//! `Retry-After`, and nothing of a 429 was stored. No timing is asserted.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Incidentd, NatsServer, client, metric};
use serde_json::{Value, json};

const CONCURRENT: usize = 48;
const BATCH: usize = 50;

fn batch(round: usize, request: usize) -> (Value, Vec<String>) {
    let mut keys = Vec::new();
    let alerts: Vec<Value> = (0..BATCH)
        .map(|i| {
            let key = format!("flood-{round}-{request}-{i}");
            keys.push(key.clone());
            json!({"source": "flood", "name": "CPUHigh", "ci": format!("node-{}", i % 7),
                   "severity": "major", "labels": {"key": key}})
        })
        .collect();
    (Value::Array(alerts), keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_2xx_or_429_with_retry_after_and_nothing_2xx_is_missing() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("incidentd.toml");
    // A queue of 60 alerts (a batch of 50 fits, two do not) and a 1 ms shed wait.
    std::fs::write(
        &config,
        "[engine]\nqueue = 16\nmax_queued_alerts = 60\nshed_after = \"1ms\"\n",
    )
    .expect("config");
    let d = Incidentd::start_with(&dir.path().join("data"), &nats.url(), Some(&config));
    let c = client();
    d.wait_ready(&c, 20).await;

    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let (mut shed_requests, mut ok_requests) = (0usize, 0usize);
    // Flood until the queue overflowed at least once (it does at once on any machine; the
    // loop only keeps the test independent of speed).
    for round in 0..20 {
        let mut tasks = Vec::new();
        for request in 0..CONCURRENT {
            let (body, keys) = batch(round, request);
            let (c, url) = (c.clone(), d.url("/api/v1/alerts"));
            tasks.push(tokio::spawn(async move {
                let r = c.post(url).json(&body).send().await.expect("POST");
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                (status, retry_after, keys)
            }));
        }
        for t in tasks {
            let (status, retry_after, keys) = t.await.expect("task");
            match status {
                200 => {
                    ok_requests += 1;
                    accepted.extend(keys);
                }
                429 => {
                    shed_requests += 1;
                    let secs: u64 = retry_after
                        .as_deref()
                        .and_then(|s| s.parse().ok())
                        .expect("429 carries Retry-After in seconds");
                    assert!(secs >= 1);
                }
                other => panic!("unexpected status {other}"),
            }
        }
        if shed_requests > 0 && ok_requests > 0 {
            break;
        }
    }
    assert!(shed_requests > 0, "the tiny queue never overflowed");
    assert!(ok_requests > 0, "nothing was accepted");

    // Every acknowledged alert is in the read model; nothing shed was stored.
    let (status, alerts) = common::get_json(&c, &d.url("/api/v2/alerts")).await;
    assert_eq!(status, 200);
    let shown: BTreeSet<String> = alerts
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["labels"]["key"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = accepted.difference(&shown).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not shown: {missing:?}"
    );
    let extra: Vec<&String> = shown.difference(&accepted).take(5).collect();
    assert!(extra.is_empty(), "shed (429) but stored: {extra:?}");

    tokio::time::sleep(Duration::from_millis(100)).await;
    let received = metric(&c, &d, "incidentd_alerts_received_total").await as usize;
    let shed = metric(&c, &d, "incidentd_alerts_shed_total").await as usize;
    assert_eq!(
        received,
        accepted.len(),
        "received counter = alerts acknowledged"
    );
    assert_eq!(
        shed,
        shed_requests * BATCH,
        "shed counter = alerts answered 429"
    );
}
