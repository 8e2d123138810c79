//! Acknowledged HTTP ingest survives `kill -9`: a restart on the same data dir shows the same
//! incidents, counts and states. A SIGTERM stops cleanly and loses nothing either.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_alerts_survive_kill_9_and_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // No NATS server on this port: HTTP must keep working, /readyz says degraded.
    let mut d = Incidentd::start(&data, NOWHERE);
    let c = client();
    let (status, ready) = get_json(&c, &d.url("/readyz")).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["nats"], "disconnected");
    assert_eq!(ready["log"], "writable");
    assert_eq!(get_json(&c, &d.url("/healthz")).await.0, 200);

    let mut acknowledged = 0;
    for batch in 0..40 {
        let alerts: Vec<Value> = (0..25)
            .map(|i| {
                json!({
                    "source": "crash-test",
                    "name": format!("Check{}", i % 5),
                    "ci": format!("host-{}", (batch + i) % 7),
                    "severity": if i % 3 == 0 { "major" } else { "minor" },
                    "labels": {"batch": (batch % 4).to_string()},
                })
            })
            .collect();
        let (status, body) = post_json(&c, &d.url("/api/v1/alerts"), &json!(alerts)).await;
        assert_eq!(status, 200, "{body}");
        acknowledged += body["accepted"].as_u64().expect("accepted count");
    }
    assert_eq!(acknowledged, 1_000);
    let before = incidents(&c, &d).await;
    assert_eq!(before.len(), 7, "one incident per host (rule same-ci)");
    let total: u64 = before
        .iter()
        .flat_map(|i| i["alerts"].as_array().cloned().unwrap_or_default())
        .map(|a| a["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 1_000, "every acknowledged alert is counted");

    let first = before[0]["id"].as_str().expect("id").to_string();
    let (status, acked) = post_json(
        &c,
        &d.url(&format!("/api/v1/incidents/{first}/ack")),
        &json!({"by": "ana", "comment": "on it"}),
    )
    .await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    let second = before[1]["id"].as_str().expect("id").to_string();
    let (status, resolved) = post_json(
        &c,
        &d.url(&format!("/api/v1/incidents/{second}/resolve")),
        &json!({"by": "bo"}),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    let before = incidents(&c, &d).await;
    let detail_before = get_json(&c, &d.url(&format!("/api/v1/incidents/{first}")))
        .await
        .1;

    d.kill9();
    let mut d = Incidentd::start(&data, NOWHERE);
    let after = incidents(&c, &d).await;
    assert_eq!(
        after, before,
        "same incidents, counts and states after kill -9"
    );
    let detail_after = get_json(&c, &d.url(&format!("/api/v1/incidents/{first}")))
        .await
        .1;
    assert_eq!(detail_after, detail_before, "same timeline after kill -9");
    assert_eq!(detail_after["acknowledged_by"], "ana");

    // More ingest, then a clean stop: nothing acknowledged is lost on SIGTERM either.
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &json!({"source": "crash-test", "name": "Late", "ci": "host-99"}),
    )
    .await;
    assert_eq!(status, 200);
    let before = incidents(&c, &d).await;
    assert!(d.terminate().success(), "clean exit on SIGTERM");
    let d = Incidentd::start(&data, NOWHERE);
    assert_eq!(incidents(&c, &d).await, before);
}
