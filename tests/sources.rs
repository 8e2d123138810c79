//! Per-source visibility: `GET /api/v1/sources` and per-source metrics show a noisy sender at
//! once; rejections are counted by reason and format.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_summarised_and_rejections_carry_the_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), NOWHERE);
    let c = client();
    // A noisy sender: one alert 30 times. A quiet one: two alerts once each.
    for _ in 0..30 {
        let (status, _) = post_json(
            &c,
            &d.url("/api/v1/alerts"),
            &json!({"source": "noisy-probe", "name": "PingLoss", "ci": "edge-1"}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &json!([{"source": "zabbix", "name": "DiskFull", "ci": "db-1"}, {"source": "zabbix", "name": "CPUHigh", "ci": "db-1"}]),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_json(&c, &d.url("/api/v2/alerts"), &json!([{"labels": {}}])).await;
    assert_eq!(status, 400);

    let (status, sources) = get_json(&c, &d.url("/api/v1/sources")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sources[0]["source"], "noisy-probe",
        "busiest first: {sources}"
    );
    assert_eq!(sources[0]["messages"], 30);
    assert_eq!(sources[0]["distinct"], 1);
    assert_eq!(sources[0]["duplicates"], 29);
    assert_eq!(sources[1]["source"], "zabbix");
    assert_eq!(sources[1]["distinct"], 2);

    let text = c
        .get(d.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("incidentd_source_alerts_total{source=\"noisy-probe\"} 30"),
        "{text}"
    );
    assert!(text.contains("incidentd_source_duplicates_total{source=\"noisy-probe\"} 29"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("incidentd_alerts_rejected_total{")
                && l.contains("format=\"alertmanager\"")),
        "{text}"
    );
}
