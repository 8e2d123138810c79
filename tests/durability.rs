//! `kill -9` during a 100k-alert HTTP ingest burst: after restart every acknowledged alert is
//! there, and the state equals an oracle replay of the history exported from the log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const SENDERS: usize = 8;
const BATCH: usize = 100;
const BATCHES_PER_SENDER: usize = 125; // 8 x 125 x 100 = 100,000 alerts offered

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_ingest_burst_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut d = Incidentd::start(&data, NOWHERE);
    let base = d.base.clone();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let (base, acked, stop) = (base.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            for b in 0..BATCHES_PER_SENDER {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let keys: Vec<String> =
                    (0..BATCH).map(|i| format!("s{sender}-b{b}-a{i}")).collect();
                let alerts: Vec<Value> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| {
                        json!({"source": "burst", "name": format!("Check{}", i % 10),
                               "ci": format!("host-{}", (b + i) % 50), "dedup_key": key})
                    })
                    .collect();
                let sent = c
                    .post(format!("{base}/api/v1/alerts"))
                    .json(&alerts)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acked.lock().await.extend(keys),
                    _ => return, // the server died under us: this batch was not acknowledged
                }
            }
        }));
    }
    // Let the burst run, then kill -9 in the middle of it.
    let c = client();
    eventually(120, "a good part of the burst acknowledged", || async {
        (acked.lock().await.len() >= 30_000).then_some(())
    })
    .await;
    d.kill9();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() < SENDERS * BATCHES_PER_SENDER * BATCH,
        "killed mid-burst"
    );

    let d = Incidentd::start(&data, NOWHERE);
    let shown = all_incidents(&c, &d).await;
    let mut present: BTreeMap<String, u64> = BTreeMap::new();
    for inc in &shown {
        for a in inc["alerts"].as_array().into_iter().flatten() {
            if let Some(k) = a["dedup_key"].as_str() {
                present.insert(k.to_string(), a["count"].as_u64().unwrap_or(0));
            }
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|k| !present.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged alerts lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // Oracle: the history exported from the log, replayed offline, gives the same incidents.
    let exported = dir.path().join("history.jsonl");
    export_history(&data, &exported);
    let oracle = replay_incidents(&exported, &dir.path().join("replayed.jsonl"));
    let members = |incs: &[Value]| -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = incs
            .iter()
            .map(|i| {
                let mut keys: Vec<String> = i["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["dedup_key"].as_str().map(str::to_string))
                    .collect();
                keys.sort();
                keys
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        members(&oracle),
        members(&shown),
        "state equals the oracle replay"
    );
}

/// Every incident, following pagination.
async fn all_incidents(c: &reqwest::Client, d: &Incidentd) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let (status, page) = get_json(
            c,
            &d.url(&format!(
                "/api/v1/incidents?state=all&limit=500&offset={}",
                out.len()
            )),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return out;
        }
        out.extend(items);
    }
}
