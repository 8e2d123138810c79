//! The event log in a JetStream stream (clustered mode): facts go to the stream, not to local
//! files; after `kill -9` a restart replays the stream to the same incidents.

mod common;

use async_nats::HeaderMap;
use common::*;
use incidentd::engine::facts::encode_record;
use incidentd::engine::{Fact, IncidentId};
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

    // A writer that died part way through a group: two of its three facts are stored. Had
    // they been replayed, INC-000001 would read acknowledged.
    let last = stream.info().await.expect("info").state.last_sequence;
    let torn = Fact::IncidentAcknowledged {
        at: incidentd::clock::now(),
        incident: IncidentId(1),
        by: "torn".into(),
        comment: None,
    };
    let mut payload = Vec::new();
    encode_record(&torn, &mut payload).expect("encode");
    for _ in 0..2 {
        let mut headers = HeaderMap::new();
        headers.insert("Incidentd-Group", format!("{}/3", last + 1).as_str());
        js.publish_with_headers("incidentd.facts", headers, payload.clone().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    let mut d = Incidentd::start_with(&data, &url, Some(&config));
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
    assert!(after > stored + 2);
    // The torn group now sits between complete ones, and is still skipped.
    let now = incidents(&c, &d).await;
    d.kill9();
    let d = Incidentd::start_with(&data, &url, Some(&config));
    assert_eq!(incidents(&c, &d).await, now, "replayed past the torn group");
    assert!(
        now.iter()
            .all(|i| i["state"] != "acknowledged" || i["id"] == "INC-000002")
    );
}
