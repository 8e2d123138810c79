//! Decoder for incidentd's native alert JSON: one object, or an array of them.
//!
//! ```json
//! {"source":"zabbix-dc1","name":"LinkDown","ci":"sw-core-01","severity":"critical",
//!  "status":"firing","summary":"Interface Gi0/1 down","labels":{"ifname":"Gi0/1"},
//!  "annotations":{"runbook":"..."},"starts_at":"2026-11-23T10:00:00Z","ends_at":null,
//!  "dedup_key":"optional-explicit-key"}
//! ```
//!
//! Only `source` and `name` are required; `null` means absent; unknown fields are ignored so
//! senders can add fields before we read them. Empty `ci`, `summary` and `dedup_key` count as
//! absent: an empty `dedup_key` from a blank template would otherwise merge every alert of
//! the source into one.

use super::json::{Map, Value};

use super::{
    Decoded, ItemError, Limits, PayloadError, Stamp, check_times, decode_each, default_start,
    ends_before_starts, item_error, non_empty, opt_string, opt_time, quote, required_name,
    string_map, take,
};
use crate::model::{Alert, Fingerprint, Severity, Status};

/// Decodes a parsed native payload; a single object is item 0.
pub(super) fn decode_value(
    value: Value<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    decode_each(value, stamp, limits, decode_object)
}

/// Fields are checked in document order of the contract; the first problem is reported.
pub(super) fn decode_object(
    index: usize,
    mut obj: Map<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Alert, ItemError> {
    let source = required_name(index, &mut obj, "source", limits.max_name_bytes)?;
    let name = required_name(index, &mut obj, "name", limits.max_name_bytes)?;
    let ci = non_empty(opt_string(index, &mut obj, "ci", limits.max_name_bytes)?);

    let severity = match opt_string(index, &mut obj, "severity", usize::MAX)? {
        None => Severity::Warning,
        Some(s) => Severity::parse(&s).ok_or_else(|| {
            item_error(
                index,
                "severity",
                "invalid_value",
                format!(
                    "field `severity` must be one of {}, got {}",
                    Severity::NAMES,
                    quote(&s)
                ),
            )
        })?,
    };
    let status = match opt_string(index, &mut obj, "status", usize::MAX)? {
        None => Status::Firing,
        Some(s) => Status::parse(&s).ok_or_else(|| {
            item_error(
                index,
                "status",
                "invalid_value",
                format!(
                    "field `status` must be one of firing, resolved, got {}",
                    quote(&s)
                ),
            )
        })?,
    };

    let summary = non_empty(opt_string(
        index,
        &mut obj,
        "summary",
        limits.max_summary_bytes,
    )?);
    let labels = match take(&mut obj, "labels") {
        None => Default::default(),
        Some(v) => string_map(index, "labels", v, limits, false)?,
    };
    let annotations = match take(&mut obj, "annotations") {
        None => Default::default(),
        Some(v) => string_map(index, "annotations", v, limits, false)?,
    };
    let dedup_key = non_empty(opt_string(
        index,
        &mut obj,
        "dedup_key",
        limits.max_name_bytes,
    )?);

    let starts = opt_time(index, &mut obj, "starts_at")?;
    let ends_at = opt_time(index, &mut obj, "ends_at")?;
    let received_at = match stamp {
        Stamp::Live(now) => now,
        Stamp::Replay => opt_time(index, &mut obj, "received_at")?
            .or(starts)
            .or(ends_at.filter(|_| status == Status::Resolved))
            .ok_or_else(|| {
                item_error(
                    index,
                    "received_at",
                    "missing_field",
                    "replay needs `received_at`, `starts_at` or, for a resolved alert, `ends_at`"
                        .to_string(),
                )
            })?,
    };
    let starts_at = starts.unwrap_or_else(|| default_start(received_at, ends_at));
    if let Some(end) = ends_at
        && end < starts_at
    {
        return Err(ends_before_starts(
            index,
            ("starts_at", starts_at),
            ("ends_at", end),
        ));
    }

    let fingerprint =
        Fingerprint::native(&source, &name, ci.as_deref(), &labels, dedup_key.as_deref());
    let alert = Alert {
        fingerprint,
        source,
        name,
        ci,
        severity,
        status,
        summary,
        labels,
        annotations,
        starts_at,
        ends_at,
        dedup_key,
        received_at,
    };
    check_times(index, &alert, ("starts_at", "ends_at"), limits)?;
    Ok(alert)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Format, decode};
    use super::*;
    use crate::ingest::testing::{now, t};

    fn run(body: &str, stamp: Stamp, limits: &Limits) -> Result<Decoded, PayloadError> {
        decode(Format::Native, body.as_bytes(), stamp, limits)
    }

    fn live(body: &str) -> Decoded {
        run(body, Stamp::Live(now()), &Limits::default()).unwrap()
    }

    /// The single item's error, asserting nothing decoded.
    fn reject(body: &str) -> ItemError {
        let d = live(body);
        assert!(d.alerts.is_empty(), "unexpectedly decoded: {:?}", d.alerts);
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        d.errors[0].clone()
    }

    fn payload_err(body: &str, limits: &Limits) -> PayloadError {
        run(body, Stamp::Live(now()), limits)
            .map(|_| ())
            .unwrap_err()
    }

    const FULL: &str = r#"{"source":"zabbix-dc1","name":"LinkDown","ci":"sw-core-01",
        "severity":"critical","status":"firing","summary":"Interface Gi0/1 down",
        "labels":{"ifname":"Gi0/1"},"annotations":{"runbook":"https://wiki/linkdown"},
        "starts_at":"2026-11-23T10:00:00Z","ends_at":null,"dedup_key":"dc1-gi0/1",
        "received_at":"2020-01-01T00:00:00Z","extra":{"ignored":[1,2,3]}}"#;

    #[test]
    fn full_object() {
        let d = live(FULL);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let a = &d.alerts[0];
        assert_eq!(a.source, "zabbix-dc1");
        assert_eq!(a.name, "LinkDown");
        assert_eq!(a.ci.as_deref(), Some("sw-core-01"));
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.status, Status::Firing);
        assert_eq!(a.summary.as_deref(), Some("Interface Gi0/1 down"));
        assert_eq!(a.labels.get("ifname").map(String::as_str), Some("Gi0/1"));
        assert_eq!(
            a.annotations.get("runbook").map(String::as_str),
            Some("https://wiki/linkdown")
        );
        assert_eq!(a.starts_at, t("2026-11-23T10:00:00Z"));
        assert_eq!(a.ends_at, None);
        assert_eq!(a.dedup_key.as_deref(), Some("dc1-gi0/1"));
        // Live ignores the sender's received_at.
        assert_eq!(a.received_at, now());
        assert_eq!(
            a.fingerprint,
            Fingerprint::native(
                "zabbix-dc1",
                "LinkDown",
                Some("sw-core-01"),
                &a.labels,
                Some("dc1-gi0/1")
            )
        );
    }

    #[test]
    fn array_of_mixed_items() {
        let body = r#"[
            {"source":"a","name":"One"},
            {"name":"NoSource"},
            42,
            {"source":"a","name":"Two","severity":"urgent"},
            {"source":"a","name":"Three","labels":{"x":1}},
            {"source":"a","name":"Four","status":"resolved","ends_at":"2026-11-23T10:01:00Z"}
        ]"#;
        let d = live(body);
        let names: Vec<_> = d.alerts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["One", "Four"]);
        let errs: Vec<_> = d
            .errors
            .iter()
            .map(|e| (e.index, e.field.as_str(), e.code))
            .collect();
        assert_eq!(
            errs,
            [
                (1, "source", "missing_field"),
                (2, "$", "wrong_type"),
                (3, "severity", "invalid_value"),
                (4, "labels.x", "wrong_type"),
            ]
        );
        assert_eq!(d.errors[1].message, "alert must be an object, got number");
    }

    #[test]
    fn defaults() {
        let d = live(r#"{"source":"s","name":"n","ci":null,"labels":null}"#);
        let a = &d.alerts[0];
        assert_eq!(a.severity, Severity::Warning);
        assert_eq!(a.status, Status::Firing);
        assert_eq!(a.starts_at, now());
        assert_eq!(a.received_at, now());
        assert_eq!(a.ends_at, None);
        assert_eq!(a.ci, None);
        assert!(a.labels.is_empty() && a.annotations.is_empty());
    }

    #[test]
    fn late_resolve_without_start_is_accepted() {
        let d = live(
            r#"{"source":"s","name":"n","status":"resolved","ends_at":"2026-11-23T10:01:00Z"}"#,
        );
        let a = &d.alerts[0];
        assert_eq!(a.status, Status::Resolved);
        assert_eq!(a.starts_at, t("2026-11-23T10:01:00Z"));
        assert_eq!(a.ends_at, Some(t("2026-11-23T10:01:00Z")));
    }

    #[test]
    fn empty_optional_strings_are_absent() {
        let d = live(r#"{"source":"s","name":"n","ci":"","summary":"","dedup_key":""}"#);
        let a = &d.alerts[0];
        assert_eq!(
            (a.ci.as_ref(), a.summary.as_ref(), a.dedup_key.as_ref()),
            (None, None, None)
        );
        assert_eq!(
            a.fingerprint,
            Fingerprint::native("s", "n", None, &BTreeMap::new(), None)
        );
    }

    #[test]
    fn malformed_json() {
        let e = payload_err(r#"{"source":"s","name":}"#, &Limits::default());
        assert_eq!(e.code, "malformed_json");
        assert!(e.message.contains("line 1 column 22"), "{}", e.message);
        assert_eq!(payload_err("", &Limits::default()).code, "malformed_json");
    }

    #[test]
    fn top_level_scalar_is_wrong_shape() {
        let e = payload_err("\"alert\"", &Limits::default());
        assert_eq!(e.code, "wrong_shape");
        assert_eq!(
            e.message,
            "expected an alert object or an array of them, got string"
        );
    }

    #[test]
    fn missing_source() {
        let e = reject(r#"{"name":"n"}"#);
        assert_eq!(
            (e.index, e.field.as_str(), e.code),
            (0, "source", "missing_field")
        );
        assert_eq!(e.message, "missing required field `source`");
        // null is absent too.
        assert_eq!(
            reject(r#"{"source":null,"name":"n"}"#).code,
            "missing_field"
        );
    }

    #[test]
    fn missing_name() {
        let e = reject(r#"{"source":"s"}"#);
        assert_eq!((e.field.as_str(), e.code), ("name", "missing_field"));
        assert_eq!(e.message, "missing required field `name`");
    }

    #[test]
    fn empty_name() {
        let e = reject(r#"{"source":"s","name":""}"#);
        assert_eq!((e.field.as_str(), e.code), ("name", "invalid_value"));
        assert_eq!(e.message, "field `name` must not be empty");
    }

    #[test]
    fn wrong_types() {
        let e = reject(r#"{"source":"s","name":7}"#);
        assert_eq!((e.field.as_str(), e.code), ("name", "wrong_type"));
        assert_eq!(e.message, "field `name` must be a string, got number");

        let e = reject(r#"{"source":"s","name":"n","labels":"a=b"}"#);
        assert_eq!((e.field.as_str(), e.code), ("labels", "wrong_type"));
        assert_eq!(e.message, "field `labels` must be an object, got string");

        let e = reject(r#"{"source":"s","name":"n","labels":{"port":8080}}"#);
        assert_eq!((e.field.as_str(), e.code), ("labels.port", "wrong_type"));
        assert_eq!(
            e.message,
            "field `labels.port` must be a string, got number"
        );

        let e = reject(r#"{"source":"s","name":"n","starts_at":1700000000}"#);
        assert_eq!((e.field.as_str(), e.code), ("starts_at", "wrong_type"));
    }

    #[test]
    fn unknown_severity() {
        let e = reject(r#"{"source":"s","name":"n","severity":"urgent"}"#);
        assert_eq!((e.field.as_str(), e.code), ("severity", "invalid_value"));
        assert_eq!(
            e.message,
            "field `severity` must be one of critical, major, minor, warning, info, got \"urgent\""
        );
    }

    #[test]
    fn unknown_status() {
        let e = reject(r#"{"source":"s","name":"n","status":"open"}"#);
        assert_eq!((e.field.as_str(), e.code), ("status", "invalid_value"));
        assert_eq!(
            e.message,
            "field `status` must be one of firing, resolved, got \"open\""
        );
    }

    #[test]
    fn bad_timestamp() {
        let e = reject(r#"{"source":"s","name":"n","starts_at":"yesterday"}"#);
        assert_eq!((e.field.as_str(), e.code), ("starts_at", "invalid_value"));
        assert_eq!(
            e.message,
            "field `starts_at` must be an RFC 3339 timestamp, got \"yesterday\""
        );
    }

    #[test]
    fn ends_before_starts() {
        let e = reject(
            r#"{"source":"s","name":"n","starts_at":"2026-11-23T10:00:00Z","ends_at":"2026-11-23T09:00:00Z"}"#,
        );
        assert_eq!((e.field.as_str(), e.code), ("ends_at", "inconsistent"));
        assert_eq!(
            e.message,
            "ends_at (2026-11-23T09:00:00Z) is before starts_at (2026-11-23T10:00:00Z)"
        );
    }

    #[test]
    fn over_long_values() {
        let big = "x".repeat(9000);
        let e = reject(&format!(
            r#"{{"source":"s","name":"n","labels":{{"foo":"{big}"}}}}"#
        ));
        assert_eq!((e.field.as_str(), e.code), ("labels.foo", "too_large"));
        assert_eq!(
            e.message,
            "field `labels.foo` value is 9000 bytes, limit 8192"
        );

        let e = reject(&format!(r#"{{"source":"s","name":"{}"}}"#, "n".repeat(257)));
        assert_eq!((e.field.as_str(), e.code), ("name", "too_large"));
        assert_eq!(e.message, "field `name` is 257 bytes, limit 256");

        let e = reject(&format!(r#"{{"source":"s","name":"n","summary":"{big}"}}"#));
        assert_eq!((e.field.as_str(), e.code), ("summary", "too_large"));

        let key = "k".repeat(300);
        let e = reject(&format!(
            r#"{{"source":"s","name":"n","annotations":{{"{key}":"v"}}}}"#
        ));
        assert_eq!((e.field.as_str(), e.code), ("annotations", "too_large"));
        assert_eq!(
            e.message,
            "field `annotations` has a key of 300 bytes, limit 256"
        );
    }

    #[test]
    fn too_many_labels() {
        let labels: Vec<String> = (0..65).map(|i| format!(r#""l{i}":"v""#)).collect();
        let body = format!(
            r#"{{"source":"s","name":"n","labels":{{{}}}}}"#,
            labels.join(",")
        );
        let e = reject(&body);
        assert_eq!((e.field.as_str(), e.code), ("labels", "too_large"));
        assert_eq!(e.message, "field `labels` has 65 entries, limit 64");
    }

    #[test]
    fn too_many_items() {
        let limits = Limits {
            max_items: 2,
            ..Limits::default()
        };
        let one = r#"{"source":"s","name":"n"}"#;
        assert_eq!(
            run(&format!("[{one},{one}]"), Stamp::Live(0), &limits)
                .unwrap()
                .alerts
                .len(),
            2
        );
        let e = payload_err(&format!("[{one},{one},{one}]"), &limits);
        assert_eq!(e.code, "too_large");
        assert_eq!(e.message, "payload has 3 alerts, limit 2");
    }

    #[test]
    fn too_deep() {
        let deep = format!(
            r#"{{"source":"s","name":"n","extra":{}1{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        let e = payload_err(&deep, &Limits::default());
        assert_eq!(e.code, "too_large");
        assert_eq!(e.message, "JSON nesting is deeper than 32 levels");
    }

    #[test]
    fn replay_stamps() {
        let replay = |body: &str| run(body, Stamp::Replay, &Limits::default()).unwrap();

        let d = replay(
            r#"{"source":"s","name":"n","starts_at":"2026-11-23T10:00:00Z","received_at":"2026-11-23T10:00:02Z"}"#,
        );
        assert_eq!(d.alerts[0].received_at, t("2026-11-23T10:00:02Z"));
        assert_eq!(d.alerts[0].starts_at, t("2026-11-23T10:00:00Z"));

        let d = replay(r#"{"source":"s","name":"n","starts_at":"2026-11-23T10:00:00Z"}"#);
        assert_eq!(d.alerts[0].received_at, t("2026-11-23T10:00:00Z"));

        let d = replay(
            r#"{"source":"s","name":"n","status":"resolved","ends_at":"2026-11-23T11:00:00Z"}"#,
        );
        assert_eq!(d.alerts[0].received_at, t("2026-11-23T11:00:00Z"));
        assert_eq!(d.alerts[0].starts_at, t("2026-11-23T11:00:00Z"));

        // A firing alert's ends_at is a timeout, not a time it was seen.
        let d = replay(r#"{"source":"s","name":"n","ends_at":"2026-11-23T11:00:00Z"}"#);
        assert_eq!(d.errors[0].field, "received_at");
        assert_eq!(d.errors[0].code, "missing_field");

        let d = replay(r#"{"source":"s","name":"n"}"#);
        assert_eq!(d.errors[0].code, "missing_field");

        let d = replay(r#"{"source":"s","name":"n","received_at":"soon"}"#);
        assert_eq!(
            (d.errors[0].field.as_str(), d.errors[0].code),
            ("received_at", "invalid_value")
        );
    }

    #[test]
    fn live_ignores_senders_received_at() {
        let d = live(r#"{"source":"s","name":"n","received_at":"not even a time"}"#);
        assert!(d.errors.is_empty());
        assert_eq!(d.alerts[0].received_at, now());
    }

    #[test]
    fn fingerprint_dedup_key_and_label_order() {
        let fp = |body: &str| live(body).alerts[0].fingerprint;
        let a = fp(r#"{"source":"s","name":"n","labels":{"a":"1","b":"2"}}"#);
        let b = fp(r#"{"name":"n","labels":{"b":"2","a":"1"},"source":"s"}"#);
        assert_eq!(a, b);
        let c = fp(r#"{"source":"s","name":"n","labels":{"a":"1","b":"2"},"dedup_key":"k"}"#);
        assert_ne!(a, c);
        // With a dedup_key, name and labels no longer matter.
        let d = fp(r#"{"source":"s","name":"other","dedup_key":"k"}"#);
        assert_eq!(c, d);
    }
}
