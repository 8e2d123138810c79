//! 10,000 alerts over a real NATS server, heavily duplicated across several groups, in both
//! the native and the Alertmanager format: the API shows exactly the expected incidents.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

const SERVICES: [&str; 4] = ["payments", "search", "checkout", "ledger"];
const NAMES: [&str; 4] = ["HighLatency", "ErrorRate", "QueueDepth", "DiskFull"];
const NATIVE_REPEATS: usize = 500; // 4 services x 4 names x 500 = 8,000 messages
const AM_REPEATS: usize = 1_000; // 2 alertnames x 1,000 = 2,000 messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_alerts_over_nats_become_the_expected_incidents() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &nats.url());
    let c = client();
    d.wait_ready(&c, 20).await;

    let nc = async_nats::connect(nats.url()).await.expect("connect");
    let mut published = 0;
    for round in 0..NATIVE_REPEATS {
        for service in SERVICES {
            for name in NAMES {
                let alert = json!({
                    "source": "synthetic",
                    "name": name,
                    "severity": if name == "ErrorRate" { "critical" } else { "warning" },
                    "labels": {"service": service},
                    "summary": format!("{name} on {service}, round {round}"),
                });
                nc.publish(format!("alerts.native.{service}"), alert.to_string().into())
                    .await
                    .expect("publish");
                published += 1;
            }
        }
        if round % 50 == 0 {
            nc.flush().await.expect("flush");
        }
    }
    for _ in 0..AM_REPEATS {
        for alertname in ["KubePodCrashLooping", "KubeDeploymentReplicasMismatch"] {
            let body = json!([{
                "labels": {"alertname": alertname, "namespace": "shop", "severity": "critical"},
                "annotations": {"summary": "pods failing"},
            }]);
            nc.publish("alerts.alertmanager.prom1", body.to_string().into())
                .await
                .expect("publish");
            published += 1;
        }
    }
    nc.flush().await.expect("flush");
    assert_eq!(published, 10_000);

    eventually(60, "all 10,000 alerts durable", || async {
        (metric(&c, &d, "incidentd_alerts_received_total").await >= 10_000.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&c, &d, "incidentd_alerts_received_total").await,
        10_000.0
    );
    assert_eq!(metric(&c, &d, "incidentd_alerts_rejected_total").await, 0.0);

    let incidents = incidents(&c, &d).await;
    assert_eq!(
        incidents.len(),
        5,
        "one incident per service plus the namespace"
    );
    assert_eq!(metric(&c, &d, "incidentd_incidents_open").await, 5.0);
    // Repeats keep no new text: 8,000 native messages with a new summary each round intern
    // only the texts of the 18 distinct alerts and their incidents.
    let interned = metric(&c, &d, "incidentd_interned_strings").await;
    assert!(interned > 0.0 && interned < 1_000.0, "{interned}");

    // group key -> (alert name -> count)
    let mut seen: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for inc in &incidents {
        assert_eq!(inc["state"], "open");
        let counts = inc["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap_or_default().to_string(),
                    a["count"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        seen.insert(
            inc["group_key"].as_str().unwrap_or_default().to_string(),
            counts,
        );
    }
    for service in SERVICES {
        let key = format!("same-service{{labels.service=\"{service}\"}}");
        let counts = seen
            .get(&key)
            .unwrap_or_else(|| panic!("no incident {key}: {seen:?}"));
        assert_eq!(counts.len(), NAMES.len(), "{key}");
        assert!(
            counts.values().all(|&n| n == NATIVE_REPEATS as u64),
            "{key}: {counts:?}"
        );
    }
    let key = "kubernetes-namespace{source=\"prometheus\", labels.namespace=\"shop\"}";
    let counts = seen
        .get(key)
        .unwrap_or_else(|| panic!("no incident {key}: {seen:?}"));
    assert_eq!(counts.len(), 2);
    assert!(
        counts.values().all(|&n| n == AM_REPEATS as u64),
        "{counts:?}"
    );

    // The critical ErrorRate raised each service incident to P2; the warnings alone are P4.
    let payments = incidents
        .iter()
        .find(|i| {
            i["group_key"]
                .as_str()
                .is_some_and(|k| k.contains("payments"))
        })
        .expect("payments incident");
    assert_eq!(payments["priority"], "P2");
    let detail: Value = get_json(
        &c,
        &d.url(&format!(
            "/api/v1/incidents/{}",
            payments["id"].as_str().unwrap_or_default()
        )),
    )
    .await
    .1;
    assert!(
        detail["timeline"].as_array().is_some_and(|t| t.len() >= 5),
        "timeline: {detail}"
    );
}

/// Rules as shipped, but with a lifecycle measured in seconds, so closing happens in a test.
fn fast_lifecycle_rules(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(repo_path("rules/default.toml")).expect("rules");
    let fast = shipped
        .replace(r#"hold_down = "5m""#, r#"hold_down = "1s""#)
        .replace(r#"reopen_window = "30m""#, r#"reopen_window = "1s""#)
        .replace(r#"close_after = "7d""#, r#"close_after = "2s""#);
    assert_eq!(fast.matches(r#"= "1s""#).count(), 2, "lifecycle rewritten");
    assert!(fast.contains(r#"close_after = "2s""#));
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    std::fs::write(rules.join("default.toml"), fast).expect("write rules");
    rules
}

/// A resolved incident closes after `close_after`: it leaves the API (404 that says why) and
/// memory with its alerts, NATS carries the closing, and a restart replaying the log agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_incident_closes_and_leaves_memory_and_a_restart_agrees() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = fast_lifecycle_rules(dir.path());
    let data = dir.path().join("data");
    let mut d = Incidentd::start_full(&data, &nats.url(), None, &rules);
    let c = client();
    d.wait_ready(&c, 20).await;
    let nc = async_nats::connect(nats.url()).await.expect("connect");
    let mut closed = nc
        .subscribe("incidents.incident_closed.>")
        .await
        .expect("subscribe");
    nc.flush().await.expect("flush");

    let alert = |name: &str, status: &str| json!({"source": "synthetic", "name": name, "status": status, "labels": {"service": name}});
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &json!([alert("DiskFull", "firing"), alert("HighLatency", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    wait_incidents(&c, &d, 2).await;
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &json!([alert("DiskFull", "resolved")]),
    )
    .await;
    assert_eq!(status, 200);

    let msg = tokio::time::timeout(std::time::Duration::from_secs(20), closed.next())
        .await
        .expect("incident_closed published within 20 s")
        .expect("subscription open");
    let fact: Value = serde_json::from_slice(&msg.payload).expect("fact json");
    let id = fact["incident"].as_str().expect("incident id").to_string();
    assert_eq!(
        msg.subject.as_str(),
        format!("incidents.incident_closed.{id}")
    );
    assert_eq!(fact["fact"]["type"], "incident_closed");
    assert!(
        fact["fact"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("close_after 2s")),
        "{fact}"
    );

    let check = |d: &Incidentd| {
        let metrics_url = d.url("/metrics");
        let (c, url, list) = (
            c.clone(),
            d.url(&format!("/api/v1/incidents/{id}")),
            d.url("/api/v1/incidents"),
        );
        async move {
            let (status, body) = get_json(&c, &url).await;
            assert_eq!(status, 404, "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("close_after")),
                "{body}"
            );
            let (_, page) = get_json(&c, &list).await;
            assert_eq!(page["total"], 1, "{page}");
            let names: Vec<&str> = page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|i| i["alerts"][0]["name"].as_str())
                .collect();
            assert_eq!(
                names,
                ["HighLatency"],
                "only the open incident is left: {page}"
            );
            let metrics = c.get(&metrics_url).send().await.expect("metrics");
            let text = metrics.text().await.expect("metrics text");
            assert_eq!(metric_in(&text, "incidentd_incidents_held"), 1.0);
        }
    };
    check(&d).await;
    let interned = metric(&c, &d, "incidentd_interned_strings").await;

    // Shutdown writes a snapshot; the restart interns only the texts its views still use.
    assert!(d.terminate().success());
    let d = Incidentd::start_full(&data, &nats.url(), None, &rules);
    d.wait_ready(&c, 20).await;
    check(&d).await;
    let compacted = metric(&c, &d, "incidentd_interned_strings").await;
    assert!(
        0.0 < compacted && compacted < interned,
        "restart compacts the interned texts: {interned} before, {compacted} after"
    );
}
