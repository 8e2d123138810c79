//! `incidentd replay` runs the live engine offline: byte-identical output for identical input,
//! time-driven decisions (auto-resolve, reopen) at the recorded times, and the golden result.

mod common;

use std::process::Command;

use common::repo_path;
use serde_json::Value;

fn replay(out: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_incidentd"))
        .arg("replay")
        .arg("--rules")
        .arg(repo_path("rules"))
        .arg("--cmdb")
        .arg(repo_path("fixtures/cmdb/example.json"))
        .arg("--alerts")
        .arg(repo_path("fixtures/replay/storm.jsonl"))
        .arg("--out")
        .arg(out)
        .output()
        .expect("run replay");
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf8 summary")
}

#[test]
fn replay_is_deterministic_and_matches_the_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let summary = replay(&a);
    replay(&b);
    let first = std::fs::read(&a).expect("output a");
    assert_eq!(
        first,
        std::fs::read(&b).expect("output b"),
        "byte-identical"
    );
    assert!(summary.contains("alerts:          85"), "{summary}");

    let incidents: Vec<Value> = String::from_utf8(first.clone())
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("incident json"))
        .collect();
    let payments = &incidents[0];
    assert_eq!(
        payments["group_key"],
        "same-service{labels.service=\"payments\"}"
    );
    assert_eq!(
        payments["state"], "open",
        "reopened by the refire within the window"
    );
    assert_eq!(payments["priority"], "P2");
    assert_eq!(payments["alert_count"], 2);
    assert_eq!(
        payments["alerts"][0]["count"], 21,
        "20 repeats plus the refire"
    );
    let disk = incidents
        .iter()
        .find(|i| {
            i["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("db-01: DiskFull"))
        })
        .expect("dedup-key incident");
    assert_eq!(
        disk["alerts"][0]["count"], 2,
        "one alert by dedup_key despite label changes"
    );

    // Golden file: regenerate with INCIDENTD_BLESS=1 after an intended change, and review it.
    let golden = repo_path("fixtures/replay/storm.expected.jsonl");
    if std::env::var_os("INCIDENTD_BLESS").is_some() {
        std::fs::write(&golden, &first).expect("write golden");
    }
    assert_eq!(
        String::from_utf8(first).expect("utf8"),
        std::fs::read_to_string(&golden).expect("golden file"),
        "replay output changed; review and bless it if intended"
    );
}
