//! Golden decode tests from real payload samples (`fixtures/payloads/*.json`, taken from each
//! sender's documentation or captured from a real sender): every sample decodes to exactly the
//! alerts and errors in its `.expected.json`. The file name's first word picks the format.
//! `INCIDENTD_BLESS=1 cargo test --test golden_payloads` rewrites the expectations; review
//! the diff before committing it.

use std::path::Path;

use incidentd::ingest::{self, Format, Limits, Stamp};
use incidentd::model::parse_time;
use serde_json::json;

fn format_of(name: &str) -> Format {
    let word = name.split('-').next().unwrap_or_default();
    match word {
        "prometheus" => Format::Alertmanager,
        other => Format::from_subject_token(other)
            .unwrap_or_else(|| panic!("{name}: no format named {other:?}")),
    }
}

#[test]
fn payload_samples_decode_as_recorded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/payloads");
    let now = parse_time("2026-11-23T10:05:00Z").expect("time");
    let bless = std::env::var_os("INCIDENTD_BLESS").is_some();
    let mut samples: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/payloads")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    samples.sort();
    assert!(samples.len() >= 9, "samples missing from {}", dir.display());
    let mut formats = std::collections::BTreeSet::new();
    for sample in samples {
        let name = sample.file_stem().and_then(|s| s.to_str()).expect("name");
        let format = format_of(name);
        formats.insert(format.as_str());
        let body = std::fs::read(&sample).expect("read sample");
        let decoded = ingest::decode(format, &body, Stamp::Live(now), &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = json!({"alerts": decoded.alerts, "errors": decoded.errors});
        let expected_path = sample.with_extension("expected.json");
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&expected_path, text).expect("write expectation");
            continue;
        }
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&expected_path)
                .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display())),
        )
        .expect("expectation is JSON");
        assert_eq!(got, expected, "{name} decodes differently");
        assert!(
            decoded.errors.is_empty(),
            "{name}: a real sample is refused: {:?}",
            decoded.errors
        );
    }
    assert_eq!(
        formats.len(),
        7,
        "a sample for every format, got {formats:?}"
    );
}
