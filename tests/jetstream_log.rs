//! The event log in a JetStream stream (clustered mode): facts go to the stream, not to local
//! files; after `kill -9` a restart replays the stream to the same incidents.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_live_in_jetstream_and_replay_after_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let _nats = NatsServer::start_js(port, &dir.path().join("js"));
    let config = dir.path().join("incidentd.toml");
    std::fs::write(
        &config,
        "[storage]\nbackend = \"jetstream\"\n[log]\nsnapshot_every = 0\n",
    )
    .expect("config");
    let data = dir.path().join("data");
    let c = client();

    let mut d = Incidentd::start_with(&data, &url, Some(&config));
    for batch in 0..5 {
        let alerts: Vec<Value> = (0..20)
            .map(|i| json!({"source": "jslog", "name": format!("Check{}", i % 3), "ci": format!("host-{}", (batch + i) % 5)}))
            .collect();
        let (status, body) = post_json(&c, &d.url("/api/v1/alerts"), &json!(alerts)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/incidents/INC-000002/ack"),
        &json!({"by": "ana"}),
    )
    .await;
    assert_eq!(status, 200);
    let before = incidents(&c, &d).await;
    assert_eq!(before.len(), 5);
    d.kill9();
    assert!(
        !data.join("log").exists(),
        "no local event log with the jetstream backend"
    );

    let nc = async_nats::connect(&url).await.expect("connect");
    let js = async_nats::jetstream::new(nc);
    let mut stream = js.get_stream("INCIDENTD_FACTS").await.expect("stream");
    let stored = stream.info().await.expect("info").state.messages;
    assert!(stored > 100, "facts stored in the stream: {stored}");

    let d = Incidentd::start_with(&data, &url, Some(&config));
    assert_eq!(incidents(&c, &d).await, before, "replayed from the stream");
    // And it goes on appending where the stream ends.
    let (status, body) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &json!({"source": "jslog", "name": "Late", "ci": "host-1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = stream.info().await.expect("info").state.messages;
    assert!(after > stored);
}
