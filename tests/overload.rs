//! Overload is shed explicitly (issue 6): with a tiny engine queue, a flood of concurrent
//! HTTP batches gets either 2xx — and then every alert of it is in the API — or 429 with
//! `Retry-After`, and nothing of a 429 was stored. No timing is asserted.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Incidentd, NatsServer, client, metric, metric_in};
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

/// Connections beyond `http.max_connections` are answered 503 with `Retry-After` and closed,
/// counted; the ones held keep working, and closing one frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("incidentd.toml");
    std::fs::write(&config, "[http]\nmax_connections = 3\n").expect("config");
    let d = Incidentd::start_with(&dir.path().join("data"), common::NOWHERE, Some(&config));
    let c = client();
    let addr = d.base.trim_start_matches("http://").to_string();

    // One round trip on a raw connection, keeping it open.
    async fn get(conn: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 8192];
        let n = conn.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    // Three held connections, each proven served (so each holds its slot).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(&addr).await.expect("connect");
        let answer = get(&mut conn, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(conn);
    }

    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let request = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    extra.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    extra
        .read_to_string(&mut answer)
        .await
        .expect("read to close");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).expect("body");
    let body: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(body["error"], "too many open connections; retry later");

    // A held connection still answers; closing one lets a newcomer in.
    let answer = get(&mut held[0], "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held.pop());
    // Until the server has seen that close, a newcomer may still be refused: count those.
    let refusals = std::cell::Cell::new(1.0);
    let text = common::eventually(10, "a freed slot", || async {
        let r = c.get(d.url("/metrics")).send().await.ok()?;
        if r.status().as_u16() == 503 {
            refusals.set(refusals.get() + 1.0);
            return None;
        }
        r.text().await.ok()
    })
    .await;
    assert_eq!(
        metric_in(&text, "incidentd_http_connections_refused_total"),
        refusals.get()
    );
    // Two held, and the one this request came on.
    assert_eq!(metric_in(&text, "incidentd_http_connections"), 3.0);
}
