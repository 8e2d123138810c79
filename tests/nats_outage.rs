//! NATS away: incidentd serves HTTP, reports itself degraded, reconnects in the background
//! when the server comes (back), and NATS ingest resumes.

mod common;

use common::*;
use serde_json::json;

async fn ready(c: &reqwest::Client, d: &Incidentd) -> (u16, String) {
    let (status, body) = get_json(c, &d.url("/readyz")).await;
    (
        status,
        body["nats"].as_str().unwrap_or_default().to_string(),
    )
}

async fn publish_and_see(c: &reqwest::Client, d: &Incidentd, url: &str, name: &str) {
    let nc = async_nats::connect(url).await.expect("connect");
    let alert = json!({"source": "outage-test", "name": name, "ci": format!("ci-{name}")});
    nc.publish("alerts.native.t", alert.to_string().into())
        .await
        .expect("publish");
    nc.flush().await.expect("flush");
    eventually(20, name, || async {
        incidents(c, d)
            .await
            .iter()
            .any(|i| i["alerts"][0]["name"] == name)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outages_degrade_readiness_but_not_http_ingest() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &url);
    let c = client();
    assert_eq!(ready(&c, &d).await, (503, "disconnected".to_string()));

    // The server appears after incidentd started: it connects and subscribes by itself.
    let nats = NatsServer::start_on(port);
    eventually(30, "ready after nats started", || async {
        (ready(&c, &d).await.0 == 200).then_some(())
    })
    .await;
    publish_and_see(&c, &d, &url, "BeforeOutage").await;

    // The server dies: degraded, but HTTP ingest goes on.
    drop(nats);
    eventually(30, "degraded while nats is down", || async {
        (ready(&c, &d).await == (503, "disconnected".to_string())).then_some(())
    })
    .await;
    let (status, body) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &json!({"source": "outage-test", "name": "DuringOutage", "ci": "ci-x"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(&c, &d, "incidentd_nats_connected").await, 0.0);

    // It comes back on the same port: reconnected and subscribed again.
    let _nats = NatsServer::start_on(port);
    eventually(30, "ready after nats came back", || async {
        (ready(&c, &d).await.0 == 200).then_some(())
    })
    .await;
    publish_and_see(&c, &d, &url, "AfterOutage").await;
    assert!(metric(&c, &d, "incidentd_nats_events_total").await >= 3.0);
}
