//! Decoder for results of automated inspection systems, one object or an array of them:
//!
//! ```json
//! {"check":"disk-smart","target":"srv-db-01","status":"failed","values":{"temp_c":71},
//!  "run_id":"run-8812","message":"SMART reallocated sectors rising","system":"inspector-1",
//!  "checked_at":"2026-11-23T10:00:00Z"}
//! ```
//!
//! One result is one check on one target: `check` is the name, `target` the ci, `system`
//! (else `inspection`) the source. `failed` fires a major alert, `warning` a warning, `ok`
//! resolves. The fingerprint is the native one over source, check and target only, so the
//! next `ok` resolves an earlier `failed` whatever its values. `values` become annotations
//! `value.<key>` (strings as is, anything else as JSON), `run_id` the annotation `run_id`;
//! `checked_at` is when a failure started or when the `ok` ended it.

use std::collections::BTreeMap;

use super::json::{Map, Value};

use super::{
    ItemError, Limits, Stamp, check_times, event_received_at, event_times, item_error, json_text,
    non_empty, opt_string, opt_time, put_entry, quote, required_name, take, wrong_type,
};
use crate::model::{Alert, Fingerprint, Severity, Status};

pub(super) fn decode_object(
    index: usize,
    mut obj: Map<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Alert, ItemError> {
    let name = required_name(index, &mut obj, "check", limits.max_name_bytes)?;
    let ci = required_name(index, &mut obj, "target", limits.max_name_bytes)?;
    let (severity, status) = match required_name(index, &mut obj, "status", usize::MAX)?.as_str() {
        "failed" => (Severity::Major, Status::Firing),
        "warning" => (Severity::Warning, Status::Firing),
        "ok" => (Severity::Info, Status::Resolved),
        other => {
            return Err(item_error(
                index,
                "status",
                "invalid_value",
                format!(
                    "field `status` must be one of ok, warning, failed, got {}",
                    quote(other)
                ),
            ));
        }
    };
    let source = non_empty(opt_string(
        index,
        &mut obj,
        "system",
        limits.max_name_bytes,
    )?)
    .unwrap_or_else(|| "inspection".to_string());
    let summary = non_empty(opt_string(
        index,
        &mut obj,
        "message",
        limits.max_summary_bytes,
    )?);

    let mut annotations = BTreeMap::new();
    match take(&mut obj, "values") {
        None => {}
        Some(Value::Object(values)) => {
            for (k, v) in values {
                let (field, key) = (format!("values.{k}"), format!("value.{k}"));
                let target = ("annotations", &mut annotations);
                put_entry(index, &field, target, key, json_text(v), limits)?;
            }
        }
        Some(other) => return Err(wrong_type(index, "values", "an object", &other)),
    }
    if let Some(run_id) = non_empty(opt_string(
        index,
        &mut obj,
        "run_id",
        limits.max_value_bytes,
    )?) {
        let target = ("annotations", &mut annotations);
        put_entry(
            index,
            "run_id",
            target,
            "run_id".to_string(),
            run_id,
            limits,
        )?;
    }

    let checked_at = opt_time(index, &mut obj, "checked_at")?;
    let received_at = event_received_at(index, stamp, checked_at, "checked_at")?;
    let (starts_at, ends_at) = event_times(status, checked_at, received_at);
    let fingerprint = Fingerprint::native(&source, &name, Some(&ci), &BTreeMap::new(), None);
    let alert = Alert {
        fingerprint,
        source,
        name,
        ci: Some(ci),
        severity,
        status,
        summary,
        labels: BTreeMap::new(),
        annotations,
        starts_at,
        ends_at,
        dedup_key: None,
        received_at,
    };
    check_times(index, &alert, ("checked_at", "checked_at"), limits)?;
    Ok(alert)
}

#[cfg(test)]
mod tests {
    use super::super::{Decoded, Format, PayloadError, decode};
    use super::*;
    use crate::ingest::testing::{now, t};

    fn run(body: &str, stamp: Stamp) -> Result<Decoded, PayloadError> {
        decode(
            Format::Inspection,
            body.as_bytes(),
            stamp,
            &Limits::default(),
        )
    }

    fn live(body: &str) -> Decoded {
        run(body, Stamp::Live(now())).unwrap()
    }

    const FAILED: &str = r#"{
      "check": "disk-smart",
      "target": "srv-db-01",
      "status": "failed",
      "values": {"temp_c": 71, "reallocated_sectors": 412, "model": "ST4000NM0035",
                 "passed": false, "ratio": 0.25},
      "run_id": "run-2026-11-23T10:00-8812",
      "message": "SMART: 412 reallocated sectors on /dev/sdb",
      "system": "inspector-1",
      "checked_at": "2026-11-23T10:00:00Z"
    }"#;

    const OK: &str = r#"{"check":"disk-smart","target":"srv-db-01","status":"ok",
        "values":{"temp_c":44},"run_id":"run-2026-11-23T11:00-8813","system":"inspector-1",
        "checked_at":"2026-11-23T10:04:00Z"}"#;

    #[test]
    fn golden_failed() {
        let d = live(FAILED);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let a = &d.alerts[0];
        assert_eq!(a.source, "inspector-1");
        assert_eq!(a.name, "disk-smart");
        assert_eq!(a.ci.as_deref(), Some("srv-db-01"));
        assert_eq!((a.severity, a.status), (Severity::Major, Status::Firing));
        assert_eq!(
            a.summary.as_deref(),
            Some("SMART: 412 reallocated sectors on /dev/sdb")
        );
        let ann: Vec<_> = a
            .annotations
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            ann,
            [
                "run_id=run-2026-11-23T10:00-8812",
                "value.model=ST4000NM0035",
                "value.passed=false",
                "value.ratio=0.25",
                "value.reallocated_sectors=412",
                "value.temp_c=71",
            ]
        );
        assert!(a.labels.is_empty());
        assert_eq!(a.starts_at, t("2026-11-23T10:00:00Z"));
        assert_eq!(a.ends_at, None);
        assert_eq!(a.received_at, now());

        let w = live(&FAILED.replace(r#""failed""#, r#""warning""#));
        assert_eq!(
            (w.alerts[0].severity, w.alerts[0].status),
            (Severity::Warning, Status::Firing)
        );
    }

    #[test]
    fn ok_resolves_failed() {
        let d = live(&format!("[{FAILED},{OK}]"));
        let [failed, ok] = &d.alerts[..] else {
            panic!("expected two alerts, got {:?}", d)
        };
        assert_eq!((ok.severity, ok.status), (Severity::Info, Status::Resolved));
        assert_eq!(ok.ends_at, Some(t("2026-11-23T10:04:00Z")));
        assert_eq!(ok.starts_at, t("2026-11-23T10:04:00Z"));
        assert_eq!(ok.fingerprint, failed.fingerprint);
        assert_eq!(
            ok.fingerprint,
            Fingerprint::native(
                "inspector-1",
                "disk-smart",
                Some("srv-db-01"),
                &BTreeMap::new(),
                None
            )
        );
    }

    #[test]
    fn rejects() {
        let d = live(
            r#"[{"check":"c","status":"ok"},{"check":"c","target":"t","status":"passed"},
                {"check":"c","target":"t","status":"ok","values":[1]}]"#,
        );
        let errs: Vec<_> = d
            .errors
            .iter()
            .map(|e| (e.index, e.field.as_str(), e.code))
            .collect();
        assert_eq!(
            errs,
            [
                (0, "target", "missing_field"),
                (1, "status", "invalid_value"),
                (2, "values", "wrong_type"),
            ]
        );
        assert_eq!(
            d.errors[1].message,
            "field `status` must be one of ok, warning, failed, got \"passed\""
        );
        // Replay has no receive time but the result's own.
        let d = run(r#"{"check":"c","target":"t","status":"ok"}"#, Stamp::Replay).unwrap();
        assert_eq!(
            (d.errors[0].field.as_str(), d.errors[0].code),
            ("checked_at", "missing_field")
        );
    }
}
