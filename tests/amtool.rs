//! The real `amtool` (Debian `prometheus-alertmanager`, installed by `.ci/run`) against
//! incidentd: it adds and queries alerts, and adds, queries and expires a silence, which
//! suppresses matching alerts in the engine.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn amtool(base: &str, args: &[&str]) -> String {
    let out = Command::new("amtool")
        .arg(format!("--alertmanager.url={base}"))
        .args(args)
        .output()
        .expect("amtool must be installed (.ci/run installs prometheus-alertmanager)");
    assert!(
        out.status.success(),
        "amtool {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amtool_adds_queries_and_silences_against_incidentd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), NOWHERE);
    let c = client();
    let base = d.base.clone();

    amtool(
        &base,
        &[
            "alert",
            "add",
            "alertname=DiskFull",
            "instance=db-7:9100",
            "severity=critical",
            "--annotation=summary=disk 97% full",
        ],
    );
    let alerts: Value =
        serde_json::from_str(&amtool(&base, &["alert", "query", "-o", "json"])).expect("json");
    let names: Vec<&str> = alerts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert_eq!(names, ["DiskFull"], "{alerts}");
    let first = incidents(&c, &d).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["alerts"][0]["name"], "DiskFull");

    // A silence: created, listed, honoured, expired.
    let id = amtool(
        &base,
        &[
            "silence",
            "add",
            "alertname=Noisy",
            "--comment=known flapping probe",
            "--author=ana",
        ],
    );
    let id = id.trim().to_string();
    assert!(!id.is_empty());
    let listed = amtool(&base, &["silence", "query", "-o", "json"]);
    assert!(
        listed.contains(&id) && listed.contains("known flapping probe"),
        "{listed}"
    );

    amtool(
        &base,
        &["alert", "add", "alertname=Noisy", "instance=web-1:9100"],
    );
    let incidents_now = incidents(&c, &d).await;
    assert_eq!(
        incidents_now.len(),
        1,
        "the silenced alert opened no incident: {incidents_now:?}"
    );
    let silenced: Value = serde_json::from_str(&amtool(
        &base,
        &["alert", "query", "--silenced", "-o", "json"],
    ))
    .expect("json");
    let noisy = silenced
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "Noisy")
        .unwrap_or_else(|| panic!("silenced alert listed: {silenced}"));
    assert_eq!(noisy["status"]["state"], "suppressed");
    assert_eq!(noisy["status"]["silencedBy"][0], id.as_str());

    amtool(&base, &["silence", "expire", &id]);
    let after = amtool(&base, &["silence", "query", "--expired", "-o", "json"]);
    assert!(
        after.contains(&id),
        "expired silence listed with --expired: {after}"
    );
    let active = amtool(&base, &["silence", "query", "-o", "json"]);
    assert!(!active.contains(&id), "no longer active: {active}");
}
