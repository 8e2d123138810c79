//! Golden correlation scenarios: each `fixtures/scenarios/<name>/` holds replay input
//! (`alerts.jsonl`), optional extra rules (`rules.toml`) and the expected incidents
//! (`expected.json`: member dedup keys, root cause CI, impacted services; suppressed and
//! flapping alerts). The default rules and the example CMDB must produce exactly those.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::repo_path;
use incidentd::cmdb::{CmdbSpec, Topology};
use incidentd::model::Fingerprint;
use incidentd::rules::Rules;
use serde_json::Value;

fn rules_for(dir: &Path) -> Rules {
    let mut files = vec![(
        "default.toml".to_string(),
        std::fs::read_to_string(repo_path("rules/default.toml")).expect("default rules"),
    )];
    let extra = dir.join("rules.toml");
    if extra.is_file() {
        files.push((
            extra.display().to_string(),
            std::fs::read_to_string(&extra).expect("scenario rules"),
        ));
    }
    Rules::parse_files(&files).expect("rules compile")
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks one scenario; returns every mismatch found.
fn check(dir: &Path, cmdb: &CmdbSpec) -> Vec<String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let input = std::fs::read_to_string(dir.join("alerts.jsonl")).expect("alerts.jsonl");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("expected json");
    let mut out = Vec::new();
    let engine = incidentd::replay::run(rules_for(dir), cmdb, input.as_bytes(), &mut out, false)
        .unwrap_or_else(|e| panic!("{name}: replay failed: {e}"))
        .engine;

    // dedup key -> fingerprint, from the input (dedup keys are scoped by source).
    let mut fingerprints = BTreeMap::new();
    for line in input.lines().filter(|l| !l.contains("\"cmdb_change\"")) {
        let a: Value = serde_json::from_str(line).expect("input line");
        if let (Some(source), Some(key)) = (a["source"].as_str(), a["dedup_key"].as_str()) {
            let fp = Fingerprint::native(source, "", None, &BTreeMap::new(), Some(key));
            fingerprints.insert(key.to_string(), fp);
        }
    }

    let mut problems = Vec::new();
    let actual: Vec<Value> = String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("incident json"))
        .collect();
    let members = |inc: &Value| -> BTreeSet<String> {
        inc["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["dedup_key"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let expected_incidents = expected["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for exp in &expected_incidents {
        let want = strings(&exp["alerts"]);
        let Some(got) = actual.iter().find(|inc| members(inc) == want) else {
            let overlapping: Vec<String> = actual
                .iter()
                .filter(|inc| !members(inc).is_disjoint(&want))
                .map(|inc| format!("{} {:?}", inc["id"], members(inc)))
                .collect();
            problems.push(format!(
                "{name}: no incident with exactly {want:?}; overlapping: {overlapping:?}"
            ));
            continue;
        };
        if got["root_cause"]["ci"] != exp["root_cause"] {
            problems.push(format!(
                "{name}: {} root cause {} (expected {})",
                got["id"], got["root_cause"]["ci"], exp["root_cause"]
            ));
        }
        if strings(&got["impacted_services"]) != strings(&exp["impacted_services"]) {
            problems.push(format!(
                "{name}: {} impacted services {} (expected {})",
                got["id"], got["impacted_services"], exp["impacted_services"]
            ));
        }
        if let Some(p) = exp["priority"].as_str()
            && got["priority"] != p
        {
            problems.push(format!(
                "{name}: {} priority {} (expected {p})",
                got["id"], got["priority"]
            ));
        }
    }
    if actual.len() != expected_incidents.len() {
        problems.push(format!(
            "{name}: {} incidents, expected {}: {:?}",
            actual.len(),
            expected_incidents.len(),
            actual.iter().map(members).collect::<Vec<_>>()
        ));
    }
    let state = engine.state();
    for key in strings(&expected["suppressed"]) {
        let a = fingerprints.get(&key).and_then(|fp| state.alerts.get(fp));
        if !a.is_some_and(|a| a.suppressed && a.incident.is_none()) {
            problems.push(format!("{name}: {key} should be suppressed"));
        }
    }
    for key in strings(&expected["flapping"]) {
        let a = fingerprints.get(&key).and_then(|fp| state.alerts.get(fp));
        if !a.is_some_and(|a| a.flapping) {
            problems.push(format!("{name}: {key} should be flagged flapping"));
        }
    }
    problems
}

#[test]
fn golden_scenarios_correlate_as_expected() {
    let cmdb = CmdbSpec::load(&repo_path("fixtures/cmdb/example.json")).expect("example cmdb");
    let mut dirs: Vec<_> = std::fs::read_dir(repo_path("fixtures/scenarios"))
        .expect("scenarios dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("alerts.jsonl").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "scenarios missing: {dirs:?}");
    let problems: Vec<String> = dirs.iter().flat_map(|d| check(d, &cmdb)).collect();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn json_and_csv_cmdb_load_the_same_graph() {
    let json = CmdbSpec::load(&repo_path("fixtures/cmdb/example.json")).expect("json cmdb");
    let csv = CmdbSpec::load(&repo_path("fixtures/cmdb/csv")).expect("csv cmdb");
    assert!(
        json.cis.len() > 2_000,
        "a few thousand CIs: {}",
        json.cis.len()
    );
    assert_eq!(json, csv);
    let (a, b) = (
        Topology::from_spec(&json).expect("json graph"),
        Topology::from_spec(&csv).expect("csv graph"),
    );
    assert_eq!(a.to_spec(), b.to_spec());
    assert!(json.check().is_empty(), "{:?}", json.check());
}
