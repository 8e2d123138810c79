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
    eventually(20, "ready", || async {
        (get_json(&c, &d.url("/readyz")).await.0 == 200).then_some(())
    })
    .await;

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

    let all = eventually(20, "four incidents", || async {
        let all = incidents(&c, &d).await;
        (all.len() == 4).then_some(all)
    })
    .await;
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
