//! Bad input on HTTP and NATS gets a precise error, is counted by reason, never reaches the
//! engine, and does not disturb the good alerts around it.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

fn details(body: &Value) -> Vec<(u64, String, String)> {
    body["details"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            (
                d["index"].as_u64().unwrap_or(u64::MAX),
                d["field"].as_str().unwrap_or_default().to_string(),
                d["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_is_rejected_precisely_and_good_alerts_still_flow() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &nats.url());
    let c = client();
    let url = d.url("/api/v1/alerts");

    let (status, body) = post_raw(&c, &url, "{\"source\": \"x\", ".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("line 1")),
        "{body}"
    );

    let cases = [
        (json!({"name": "NoSource"}), "source", "missing_field"),
        (json!({"source": "s"}), "name", "missing_field"),
        (json!({"source": "s", "name": 5}), "name", "wrong_type"),
        (
            json!({"source": "s", "name": "n", "labels": "x"}),
            "labels",
            "wrong_type",
        ),
        (
            json!({"source": "s", "name": "n", "severity": "urgent"}),
            "severity",
            "invalid_value",
        ),
        (
            json!({"source": "s", "name": "n", "starts_at": "2026-11-23T10:00:00Z", "ends_at": "2026-11-23T09:00:00Z"}),
            "ends_at",
            "inconsistent",
        ),
    ];
    for (alert, field, code) in &cases {
        let (status, body) = post_json(&c, &url, alert).await;
        assert_eq!(status, 400, "{alert} -> {body}");
        assert_eq!(
            details(&body),
            [(0, field.to_string(), code.to_string())],
            "{body}"
        );
        assert_eq!(body["accepted"], 0);
        assert!(
            body["details"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // A batch with good and bad items: the good ones are accepted, the bad ones named.
    let batch = json!([
        {"source": "s", "name": "Good", "ci": "host-1"},
        {"source": "s", "name": "Bad", "severity": "meh"},
        {"source": "s", "name": "AlsoGood", "ci": "host-1"},
        7,
    ]);
    let (status, body) = post_json(&c, &url, &batch).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["accepted"], 2);
    let got = details(&body);
    assert_eq!(got.len(), 2, "{body}");
    assert_eq!(
        (got[0].0, got[0].1.as_str(), got[0].2.as_str()),
        (1, "severity", "invalid_value")
    );
    assert_eq!((got[1].0, got[1].2.as_str()), (3, "wrong_type"), "{body}");

    // Alertmanager endpoint: missing alertname and empty labels are named too.
    let (status, body) = post_json(
        &c,
        &d.url("/api/v2/alerts"),
        &json!([{"labels": {"job": "x"}}, {"labels": {}}]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(details(&body).len(), 2, "{body}");

    let incidents = incidents(&c, &d).await;
    assert_eq!(
        incidents.len(),
        1,
        "only the good alerts reached the engine: {incidents:?}"
    );
    assert_eq!(incidents[0]["alert_count"], 2);
    assert_eq!(metric(&c, &d, "incidentd_alerts_received_total").await, 2.0);
    // 1 malformed + 6 single + 2 in the mixed batch + 2 Alertmanager items.
    assert_eq!(
        metric(&c, &d, "incidentd_alerts_rejected_total").await,
        11.0
    );

    let (status, body) = post_json(
        &c,
        &d.url("/api/v1/incidents/INC-999999/ack"),
        &json!({"by": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        post_json(&c, &d.url("/api/v1/incidents/INC-000001/ack"), &json!({})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get_json(&c, &d.url("/api/v1/incidents?state=bogus")).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nats_messages_go_to_the_dead_letter_with_the_reason() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &nats.url());
    let c = client();
    d.wait_ready(&c, 20).await;
    let nc = async_nats::connect(nats.url()).await.expect("connect");
    let mut dead = nc.subscribe("alerts.deadletter").await.expect("subscribe");
    nc.flush().await.expect("flush");

    let bad: [(&str, &str, &str); 5] = [
        ("alerts.native.a", "not json", "malformed_json"),
        ("alerts.native.a", r#"{"name": "x"}"#, "missing_field"),
        (
            "alerts.native.a",
            r#"{"source": "s", "name": "n", "severity": 3}"#,
            "wrong_type",
        ),
        (
            "alerts.native.a",
            r#"{"source": "s", "name": "n", "starts_at": "2026-11-23T10:00:00Z", "ends_at": "2026-11-20T10:00:00Z"}"#,
            "inconsistent",
        ),
        (
            "alerts.bogus.a",
            r#"{"source": "s", "name": "n"}"#,
            "unknown_format",
        ),
    ];
    for (subject, payload, _) in &bad {
        nc.publish(subject.to_string(), payload.as_bytes().to_vec().into())
            .await
            .expect("publish");
    }
    nc.publish(
        "alerts.native.a",
        json!({"source": "s", "name": "AfterTheBadOnes", "ci": "db-1"})
            .to_string()
            .into(),
    )
    .await
    .expect("publish");
    nc.flush().await.expect("flush");

    for (subject, payload, code) in &bad {
        let msg = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("dead letter arrives")
            .expect("subscription open");
        assert_eq!(
            msg.payload.as_ref(),
            payload.as_bytes(),
            "payload is republished untouched"
        );
        let headers = msg.headers.expect("headers");
        let reason = headers
            .get("Incidentd-Reject-Reason")
            .expect("reason header")
            .as_str();
        assert!(reason.starts_with(code), "{subject}: {reason}");
        assert_eq!(
            headers
                .get("Incidentd-Original-Subject")
                .map(|v| v.as_str()),
            Some(*subject)
        );
    }

    let incidents = eventually(20, "the good alert", || async {
        let all = incidents(&c, &d).await;
        (!all.is_empty()).then_some(all)
    })
    .await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["alerts"][0]["name"], "AfterTheBadOnes");
    assert_eq!(metric(&c, &d, "incidentd_alerts_rejected_total").await, 5.0);
    assert_eq!(
        metric(&c, &d, "incidentd_deadletter_published_total").await,
        5.0
    );
}
