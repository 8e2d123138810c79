//! Hostile input over HTTP, as a table: each case gets its precise status and reason code,
//! nothing of it reaches the engine, and the service keeps working.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_refused_precisely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(
        &dir.path().join("data"),
        &format!("nats://127.0.0.1:{}", free_port()),
    );
    let c = client();
    let url = d.url("/api/v1/alerts");

    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..100).map(|i| (format!("l{i}"), json!("v"))).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not json", b"{{{".to_vec(), 400, "malformed_json"),
        (
            "not utf-8",
            vec![b'"', 0xff, 0xfe, b'"'],
            400,
            "malformed_json",
        ),
        ("a scalar", b"42".to_vec(), 400, "wrong_shape"),
        ("nested 100 deep", deep.into_bytes(), 400, "too_large"),
        (
            "100 labels",
            json!({"source": "s", "name": "n", "labels": labels})
                .to_string()
                .into_bytes(),
            400,
            "too_large",
        ),
        (
            "a 20 kB label value",
            json!({"source": "s", "name": "n", "labels": {"k": "x".repeat(20_000)}})
                .to_string()
                .into_bytes(),
            400,
            "too_large",
        ),
        (
            "a huge number as name",
            br#"{"source": "s", "name": 1e400}"#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            "a number as severity",
            br#"{"source": "s", "name": "n", "severity": 3}"#.to_vec(),
            400,
            "wrong_type",
        ),
        (
            "a timestamp that is no time",
            br#"{"source": "s", "name": "n", "starts_at": "tomorrow"}"#.to_vec(),
            400,
            "invalid_value",
        ),
    ];
    let mut rejected = 0.0;
    for (what, body, status, code) in cases {
        let before = reason_count(&c, &d, code).await;
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), status, "{what}");
        let body: serde_json::Value = r.json().await.expect("JSON error body");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
        assert_eq!(
            reason_count(&c, &d, code).await,
            before + 1.0,
            "{what}: counted as {code}: {body}"
        );
        rejected += 1.0;
    }
    // Larger than the body limit (10 MiB): 413 before the body is buffered. On a client of
    // its own: the server closes that connection (the body was never read), and a pooled
    // connection reused right after would race with the close.
    let r = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 11 * 1024 * 1024])
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 413);
    rejected += 1.0;

    assert!(
        incidents(&c, &d).await.is_empty(),
        "nothing reached the engine"
    );
    assert_eq!(
        metric(&c, &d, "incidentd_alerts_rejected_total").await,
        rejected
    );
    let (status, _) = post_json(&c, &url, &json!({"source": "s", "name": "StillWorks"})).await;
    assert_eq!(status, 200);
}

/// Rejections counted for one reason, over all formats.
async fn reason_count(c: &reqwest::Client, d: &Incidentd, reason: &str) -> f64 {
    let text = c
        .get(d.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let needle = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("incidentd_alerts_rejected_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
