//! Snapshots: restart from a snapshot plus the log's tail gives exactly the state a full
//! replay gives, also when covered segments were pruned; a damaged snapshot falls back to the
//! log.

mod common;

use common::*;
use serde_json::{Value, json};

async fn post_some(c: &reqwest::Client, d: &Incidentd, round: usize) {
    for batch in 0..10 {
        let alerts: Vec<Value> = (0..20)
            .map(|i| {
                json!({"source": "snap", "name": format!("Check{}", i % 4),
                       "ci": format!("host-{}", (batch + i + round) % 9),
                       "dedup_key": format!("r{round}-b{batch}-{}", i % 7)})
            })
            .collect();
        let (status, body) = post_json(c, &d.url("/api/v1/alerts"), &json!(alerts)).await;
        assert_eq!(status, 200, "{body}");
    }
}

fn snapshots(data: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("snapshots"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn segments(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("log"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_tail_equals_full_replay_even_after_pruning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("incidentd.toml");
    std::fs::write(
        &config,
        "[log]\nsegment_bytes = 4096\nsnapshot_every = 100\nprune_after_snapshot = true\n",
    )
    .expect("config");
    let c = client();

    let mut d = Incidentd::start_with(&data, NOWHERE, Some(&config));
    post_some(&c, &d, 0).await;
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/incidents/INC-000001/ack"),
        &json!({"by": "ana"}),
    )
    .await;
    assert_eq!(status, 200);
    eventually(20, "a snapshot written", || async {
        (!snapshots(&data).is_empty()).then_some(())
    })
    .await;
    post_some(&c, &d, 1).await; // a tail after the snapshot
    eventually(20, "covered segments pruned", || async {
        (!data.join("log/00000000000000000001.seg").exists()).then_some(())
    })
    .await;
    let before = incidents(&c, &d).await;
    d.kill9();
    assert!(segments(&data) >= 1);

    // Restart from snapshot + tail (segments before the snapshot are gone).
    let mut d = Incidentd::start_with(&data, NOWHERE, Some(&config));
    assert_eq!(
        incidents(&c, &d).await,
        before,
        "snapshot + tail after kill -9"
    );

    // A clean stop writes a final snapshot; restart replays nothing and shows the same.
    assert!(d.terminate().success());
    let d = Incidentd::start_with(&data, NOWHERE, Some(&config));
    assert_eq!(
        incidents(&c, &d).await,
        before,
        "after the shutdown snapshot"
    );
    drop(d);

    // With the newest snapshot damaged, the older one plus the log still rebuilds it all.
    let names = snapshots(&data);
    let newest = data.join("snapshots").join(names.last().expect("snapshot"));
    std::fs::write(&newest, b"{\"v\":1,\"seq\":").expect("damage");
    let d = Incidentd::start_with(&data, NOWHERE, Some(&config));
    assert_eq!(incidents(&c, &d).await, before, "older snapshot + log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_tail_equals_a_full_replay_of_the_same_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("incidentd.toml");
    std::fs::write(&config, "[log]\nsnapshot_every = 150\n").expect("config");
    let c = client();
    let mut d = Incidentd::start_with(&data, NOWHERE, Some(&config));
    for round in 0..3 {
        post_some(&c, &d, round).await;
    }
    eventually(20, "a snapshot written", || async {
        (!snapshots(&data).is_empty()).then_some(())
    })
    .await;
    post_some(&c, &d, 9).await;
    d.kill9();
    let from_snapshot = {
        let d = Incidentd::start_with(&data, NOWHERE, Some(&config));
        incidents(&c, &d).await
    };
    // The same log without snapshots: a full replay.
    std::fs::remove_dir_all(data.join("snapshots")).expect("remove snapshots");
    let full = {
        let d = Incidentd::start_with(&data, NOWHERE, None);
        incidents(&c, &d).await
    };
    assert_eq!(from_snapshot, full);
}
