//! Hostile input over HTTP, as a table: each case gets its precise status and reason code,
//! nothing of it reaches the engine, and the service keeps working.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_refused_precisely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), NOWHERE);
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
        (
            "a duplicate key",
            br#"{"source": "s", "name": "n", "name": "m"}"#.to_vec(),
            400,
            "duplicate_key",
        ),
        (
            "a start at the epoch",
            br#"{"source": "s", "name": "n", "starts_at": "1970-01-01T00:00:00Z"}"#.to_vec(),
            400,
            "invalid_value",
        ),
        (
            "a start in the year 2999",
            br#"{"source": "s", "name": "n", "starts_at": "2999-01-01T00:00:00Z"}"#.to_vec(),
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

/// Slow clients cannot hold the service: a body that trickles in is cut off with 408 at the
/// request timeout, and a request whose headers never finish is dropped, while other clients
/// are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("incidentd.toml");
    std::fs::write(
        &config,
        "[http]\nrequest_timeout = \"1s\"\nheader_timeout = \"1s\"\n",
    )
    .expect("config");
    let d = Incidentd::start_with(&dir.path().join("data"), NOWHERE, Some(&config));
    let addr = d.url("").trim_start_matches("http://").to_string();
    let c = client();

    // Headers complete, body promised 1000 bytes, 20 sent.
    let mut body_slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    body_slow
        .write_all(
            b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"source\":\"s\",\"name\"",
        )
        .await
        .expect("write");
    // Headers never finished.
    let mut head_slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    head_slow
        .write_all(b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");

    // Meanwhile the service answers others at once.
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &json!({"source": "s", "name": "Fast"}),
    )
    .await;
    assert_eq!(status, 200);

    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), body_slow.read_to_end(&mut answer))
        .await
        .expect("the trickling body was cut off")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), head_slow.read_to_end(&mut rest))
        .await
        .expect("unfinished headers were dropped");
    assert!(closed.is_err() || rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"));

    let names: Vec<String> = incidents(&c, &d)
        .await
        .iter()
        .flat_map(|i| i["alerts"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["Fast"], "nothing of the slow requests was stored");
}
