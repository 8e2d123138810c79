#![no_main]
//! The rule parser: any text either parses or is refused with a located error; parsed rules
//! then match an alert without panicking (regex matchers included).

use std::collections::BTreeMap;

use incidentd::model::{Alert, Fingerprint, Severity, Status};
use incidentd::rules::Rules;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = [("fuzz.toml".to_string(), text.to_string())];
    let rules = match Rules::parse_files(&files) {
        Ok(rules) => rules,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let labels = BTreeMap::from([("instance".to_string(), "db-1:9100".to_string())]);
    let alert = Alert {
        fingerprint: Fingerprint::native("zabbix", "LinkDown", Some("sw-1"), &labels, None),
        source: "zabbix".into(),
        name: "LinkDown".into(),
        ci: Some("sw-1".into()),
        severity: Severity::Critical,
        status: Status::Firing,
        summary: Some("down".into()),
        labels,
        annotations: BTreeMap::new(),
        starts_at: 0,
        ends_at: None,
        dedup_key: None,
        received_at: 0,
    };
    for has_ci in [true, false] {
        if let Some(rule) = rules.first_match(&alert, has_ci) {
            let _ = rule.group_key(&alert);
        }
    }
    let urgency = rules.priority.urgency(Severity::Major);
    let _ = rules.priority.priority(rules.priority.default_impact, urgency);
});
