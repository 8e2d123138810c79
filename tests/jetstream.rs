//! Durable ingest through JetStream: the NATS server is killed with SIGKILL in the middle of
//! the stream and restarted on the same store; nothing acknowledged by the stream is lost, and
//! nothing is doubled (re-publishes carry the same `Nats-Msg-Id`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use common::*;
use serde_json::{Value, json};

const ALERTS: usize = 3_000;

/// Publishes through JetStream until the stream acknowledges (retrying across an outage).
async fn publish(js: &async_nats::jetstream::Context, key: &str) {
    let payload = json!({"source": "js-test", "name": "DiskFull", "ci": format!("ci-{}", key.len() % 7), "dedup_key": key});
    for _ in 0..600 {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", key);
        match js
            .publish_with_headers("alerts.native.js", headers, payload.to_string().into())
            .await
        {
            Ok(ack) => match ack.await {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("could not publish {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_ingest_survives_a_nats_crash_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("js");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let nats = NatsServer::start_js(port, &store);
    let config = dir.path().join("incidentd.toml");
    std::fs::write(
        &config,
        "[nats.jetstream]\nenabled = true\nack_wait = \"2s\"\n",
    )
    .expect("config");
    let d = Incidentd::start_with(&dir.path().join("data"), &url, Some(&config));
    let c = client();
    d.wait_ready(&c, 30).await;

    let nc = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(&url)
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(nc);
    for i in 0..ALERTS / 2 {
        publish(&js, &format!("k{i:05}")).await;
    }
    // The server dies hard and comes back on the same store.
    drop(nats);
    let _nats = NatsServer::start_js(port, &store);
    for i in ALERTS / 2..ALERTS {
        publish(&js, &format!("k{i:05}")).await;
    }
    // Re-publishes of the first 500 (a sender retrying after a lost ack) are dropped by the
    // stream's duplicate window.
    for i in 0..500 {
        publish(&js, &format!("k{i:05}")).await;
    }

    eventually(60, "every alert durable", || async {
        (metric(&c, &d, "incidentd_alerts_received_total").await >= ALERTS as f64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // any redelivery would land by now
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for inc in incidents(&c, &d).await {
        for a in inc["alerts"].as_array().into_iter().flatten() {
            let key = a["dedup_key"].as_str().unwrap_or_default().to_string();
            *counts.entry(key).or_default() += a["count"].as_u64().unwrap_or(0);
        }
    }
    let received = metric(&c, &d, "incidentd_alerts_received_total").await;
    if received != ALERTS as f64 {
        // Say whether the stream itself holds more (a server that lost acknowledged
        // messages and their ids stores a re-publish again) or incidentd doubled something.
        let mut stream = js.get_stream("INCIDENTD_ALERTS").await.expect("stream");
        let state = stream.info().await.expect("stream info").state.clone();
        let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).take(10).collect();
        panic!(
            "received {received} alerts, want {ALERTS}; the stream holds {} messages \
             (seqs {}..={}); keys not counted once: {doubled:?}",
            state.messages, state.first_sequence, state.last_sequence
        );
    }
    assert_eq!(counts.len(), ALERTS, "nothing lost");
    let doubled: Vec<(&String, &u64)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "doubled: {:?}",
        &doubled[..doubled.len().min(5)]
    );

    // A poison message is dead-lettered with the reason and not redelivered.
    let nc = async_nats::connect(&url).await.expect("connect");
    let mut dead = nc.subscribe("alerts.deadletter").await.expect("subscribe");
    nc.flush().await.expect("flush");
    publish_raw(&js, "{ not json").await;
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut dead),
    )
    .await
    .expect("dead letter")
    .expect("open");
    let headers = msg.headers.expect("headers");
    let reason = headers
        .get("Incidentd-Reject-Reason")
        .map(|v| v.as_str().to_string());
    assert!(reason.is_some_and(|r| r.starts_with("malformed_json")));
    let _: Value = Value::Null;
}

async fn publish_raw(js: &async_nats::jetstream::Context, body: &'static str) {
    js.publish("alerts.native.js", body.into())
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

/// The `dedup_key`s of every alert in the API's incidents.
async fn keys(c: &reqwest::Client, d: &Incidentd) -> Vec<String> {
    let mut keys: Vec<String> = incidents(c, d)
        .await
        .iter()
        .flat_map(|inc| inc["alerts"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["dedup_key"].as_str().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

async fn wait_keys(c: &reqwest::Client, d: &Incidentd, want: &[&str]) {
    let mut seen = Vec::new();
    for _ in 0..300 {
        seen = keys(c, d).await;
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(d.data_dir.with_extension("log")).unwrap_or_default();
    panic!("alerts in incidents: {seen:?}, want {want:?}; incidentd's log:\n{log}");
}

/// Stream sequences name messages only within one stream: after the stream is deleted and
/// created again, its messages 1, 2, ... are new alerts, not redeliveries of the ones
/// consumed before. Checked while running (the consumer vanishes with its stream) and across
/// a restart (the stream was recreated meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_reusing_sequences_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let _nats = NatsServer::start_js(port, &dir.path().join("js"));
    let config = dir.path().join("incidentd.toml");
    std::fs::write(&config, "[nats.jetstream]\nenabled = true\n").expect("config");
    let data = dir.path().join("data");
    let mut d = Incidentd::start_with(&data, &url, Some(&config));
    let c = client();
    d.wait_ready(&c, 30).await;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("connect"));

    for key in ["a1", "a2", "a3"] {
        publish(&js, key).await;
    }
    wait_keys(&c, &d, &["a1", "a2", "a3"]).await;

    // Deleted under a running incidentd, which sets stream and consumer up again.
    js.delete_stream("INCIDENTD_ALERTS").await.expect("delete");
    for key in ["b1", "b2"] {
        publish(&js, key).await;
    }
    wait_keys(&c, &d, &["a1", "a2", "a3", "b1", "b2"]).await;

    // Deleted and recreated while incidentd is down.
    assert!(d.terminate().success());
    js.delete_stream("INCIDENTD_ALERTS").await.expect("delete");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "INCIDENTD_ALERTS".into(),
        subjects: vec!["alerts.>".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    publish(&js, "c1").await;
    let d = Incidentd::start_with(&data, &url, Some(&config));
    d.wait_ready(&c, 30).await;
    wait_keys(&c, &d, &["a1", "a2", "a3", "b1", "b2", "c1"]).await;
}
