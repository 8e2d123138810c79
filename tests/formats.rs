//! The further alert formats end to end: PagerDuty on `/v2/enqueue` (trigger then resolve by
//! dedup_key), Alerta on `/alert`, an inspection result over NATS, and a Grafana webhook.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_alerta_grafana_and_inspection_are_ingested() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &nats.url());
    let c = client();
    d.wait_ready(&c, 20).await;

    let trigger = json!({"routing_key": "R0UTING", "event_action": "trigger", "dedup_key": "disk-db-9",
        "payload": {"summary": "disk full on db-9", "source": "db-9", "severity": "error", "component": "db-9", "class": "DiskFull"}});
    let r = c
        .post(d.url("/v2/enqueue"))
        .json(&trigger)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 202);
    let resolve =
        json!({"routing_key": "R0UTING", "event_action": "resolve", "dedup_key": "disk-db-9"});
    let r = c
        .post(d.url("/v2/enqueue"))
        .json(&resolve)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 202);

    let alerta = json!({"resource": "web-3", "event": "HTTPDown", "environment": "Production", "severity": "major", "text": "no answer"});
    let r = c
        .post(d.url("/alert"))
        .json(&alerta)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 201);

    let grafana = json!({"version": "1", "status": "firing", "receiver": "incidentd", "orgId": 1, "title": "t",
        "alerts": [{"status": "firing", "labels": {"alertname": "HighCPU", "instance": "app-1"}, "annotations": {"summary": "cpu"},
                    "startsAt": "2026-11-23T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "dashboardURL": "http://g/d/1"}]});
    let (status, body) = post_json(&c, &d.url("/api/v1/ingest/grafana"), &grafana).await;
    assert_eq!(status, 200, "{body}");

    let nc = async_nats::connect(nats.url()).await.expect("connect");
    let inspection = json!({"check": "disk-smart", "target": "san-2", "status": "failed", "values": {"reallocated": 12}, "run_id": "r1", "system": "inspector-1"});
    nc.publish("alerts.inspection.nightly", inspection.to_string().into())
        .await
        .expect("publish");
    nc.flush().await.expect("flush");

    let all = wait_incidents(&c, &d, 4).await;
    let by_name = |n: &str| {
        all.iter()
            .flat_map(|i| i["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {all:?}"))
    };
    let disk = by_name("DiskFull");
    assert_eq!(
        disk["status"], "resolved",
        "the resolve matched the trigger by dedup_key"
    );
    assert_eq!(disk["count"], 1);
    assert_eq!(by_name("HTTPDown")["ci"], "web-3");
    assert_eq!(by_name("HighCPU")["source"], "grafana");
    assert_eq!(by_name("disk-smart")["ci"], "san-2");
    let (status, _) = post_json(&c, &d.url("/api/v1/ingest/bogus"), &json!({})).await;
    assert_eq!(status, 404);
}

/// CloudEvents on both transports: structured, batched and binary over HTTP; structured and
/// binary (`ce-` headers) over NATS; a broken binary event goes to the dead letter with the
/// header it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_over_http_and_nats() {
    use futures_util::StreamExt;

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &nats.url());
    let c = client();
    d.wait_ready(&c, 20).await;
    let url = d.url("/api/v1/ingest/cloudevents");
    let event = |id: &str, kind: &str, subject: &str| {
        json!({"specversion": "1.0", "id": id, "source": "/probes/dc1", "type": kind,
               "subject": subject, "datacontenttype": "application/json",
               "data": {"severity": "major", "summary": format!("{kind} on {subject}")}})
    };

    let r = c
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(event("e1", "PortDown", "sw-a").to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    let batch = json!([
        event("e2", "FanFail", "sw-b"),
        event("e3", "PsuFail", "sw-c")
    ]);
    let r = c
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "e4")
        .header("ce-source", "/probes/dc2")
        .header("ce-type", "TempHigh")
        .header("ce-subject", "sw-d")
        .header("content-type", "application/json")
        .body(r#"{"severity":"critical"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-source", "/probes/dc2")
        .header("ce-type", "TempHigh")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["details"][0]["field"], "ce-id", "{body}");

    let nc = async_nats::connect(nats.url()).await.expect("connect");
    let mut dead = nc.subscribe("alerts.deadletter").await.expect("sub");
    nc.flush().await.expect("flush");
    nc.publish(
        "alerts.cloudevents.dc1",
        event("e5", "LinkDown", "sw-e").to_string().into(),
    )
    .await
    .expect("publish");
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "e6"),
        ("ce-source", "/probes/dc1"),
        ("ce-type", "BgpDown"),
        ("ce-subject", "rt-1"),
        ("content-type", "application/json"),
    ] {
        headers.insert(k, v);
    }
    nc.publish_with_headers(
        "alerts.cloudevents.dc1",
        headers,
        r#"{"severity":"critical"}"#.into(),
    )
    .await
    .expect("publish");
    let mut broken = async_nats::HeaderMap::new();
    broken.insert("ce-specversion", "1.0");
    broken.insert("ce-id", "e7");
    nc.publish_with_headers("alerts.cloudevents.dc1", broken, "{}".into())
        .await
        .expect("publish");
    nc.flush().await.expect("flush");

    let all = wait_incidents(&c, &d, 6).await;
    let mut seen: Vec<(String, String, String)> = all
        .iter()
        .flat_map(|i| i["alerts"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("ci"), s("severity"))
        })
        .collect();
    seen.sort();
    let want = [
        ("BgpDown", "rt-1", "critical"),
        ("FanFail", "sw-b", "major"),
        ("LinkDown", "sw-e", "major"),
        ("PortDown", "sw-a", "major"),
        ("PsuFail", "sw-c", "major"),
        ("TempHigh", "sw-d", "critical"),
    ]
    .map(|(n, c, s)| (n.to_string(), c.to_string(), s.to_string()));
    assert_eq!(seen, want);

    let msg = tokio::time::timeout(std::time::Duration::from_secs(10), dead.next())
        .await
        .expect("dead letter in time")
        .expect("message");
    let reason = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Incidentd-Reject-Reason"))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    assert!(
        reason.starts_with("missing_field: alert 0: missing required header `ce-source`"),
        "{reason}"
    );
}
