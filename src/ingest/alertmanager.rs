//! Decoder for the Alertmanager family of formats, told apart by top-level shape:
//! - a JSON array is `postableAlerts`, what Prometheus POSTs to `/api/v2/alerts`;
//! - an object with `alerts` is an Alertmanager webhook notification, version 4.
//!
//! Semantics follow Alertmanager's own API so alerts behave as they would there: empty label
//! values are dropped before fingerprinting (as `removeEmptyLabels` does), a missing `endsAt`
//! means "firing until 5 minutes from now unless re-sent" (`resolve_timeout`), and a missing
//! `startsAt` on an alert that already ended is its end. `0001-01-01T00:00:00Z`, Go's zero
//! time, and any time before 1970 mean "not set". The fingerprint is Alertmanager's, over labels
//! only, so it matches what Prometheus and amtool show.

use std::collections::BTreeMap;

use super::json::{Map, Value};

use super::{
    Decoded, ItemError, Limits, PayloadError, Stamp, check_item_count, check_len, check_times,
    default_start, ends_before_starts, item_error, missing, not_an_object, opt_string, quote,
    show_time, string_map, take, wrong_shape,
};
use crate::model::{Alert, Fingerprint, Millis, Severity, Status};

/// Alertmanager's default `resolve_timeout`: how long a firing alert without `endsAt` lives
/// unless the sender repeats it.
const RESOLVE_TIMEOUT_MS: Millis = 5 * 60 * 1000;

/// Where an item came from; it decides how status and `endsAt` are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Status follows from `endsAt` against the receive time.
    Postable,
    /// Status is given by Alertmanager; `endsAt` is informational.
    Webhook,
}

/// What differs between senders of the Alertmanager webhook shape.
pub(super) struct Dialect {
    /// Sender's name in messages ("Alertmanager", "Grafana").
    pub name: &'static str,
    /// `name` with its article, for "field `alerts` of {} webhook".
    pub a_name: &'static str,
    /// What a top-level object was expected to be, for shape errors.
    pub expected: &'static str,
    /// Accepted webhook `version` values, and how messages list them.
    pub versions: &'static [&'static str],
    pub versions_text: &'static str,
    /// `source` when the alert has no `source` label.
    pub default_source: &'static str,
    /// Per-alert string fields copied into annotations, as (field, annotation key).
    pub annotations: &'static [(&'static str, &'static str)],
}

const ALERTMANAGER: Dialect = Dialect {
    name: "Alertmanager",
    a_name: "an Alertmanager",
    expected: "a postableAlerts array or an Alertmanager webhook object",
    versions: &["4"],
    versions_text: "\"4\"",
    default_source: "prometheus",
    annotations: &[("generatorURL", "generator_url")],
};

/// Decodes a parsed payload in either Alertmanager shape.
pub(super) fn decode_value(
    value: Value<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    match value {
        Value::Array(items) => decode_items(items, Kind::Postable, &ALERTMANAGER, stamp, limits),
        Value::Object(obj) => decode_webhook(obj, &ALERTMANAGER, stamp, limits),
        other => Err(wrong_shape(format!(
            "expected {}, got {}",
            ALERTMANAGER.expected,
            other.type_name()
        ))),
    }
}

/// Decodes a webhook notification object as sent by `dialect`.
pub(super) fn decode_webhook(
    obj: Map<'_>,
    dialect: &Dialect,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    let items = webhook_alerts(obj, dialect)?;
    decode_items(items, Kind::Webhook, dialect, stamp, limits)
}

fn decode_items(
    items: Vec<Value<'_>>,
    kind: Kind,
    dialect: &Dialect,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    check_item_count(items.len(), limits)?;
    let mut out = Decoded::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        out.push(match item {
            Value::Object(obj) => decode_object(index, obj, kind, dialect, stamp, limits),
            other => Err(not_an_object(index, &other)),
        });
    }
    Ok(out)
}

/// Checks the webhook envelope and returns its alerts. Group-level fields (`groupKey`,
/// `commonLabels`, …) are ignored: every alert carries its own full label set.
fn webhook_alerts<'a>(mut obj: Map<'a>, dialect: &Dialect) -> Result<Vec<Value<'a>>, PayloadError> {
    let alerts = match obj.remove("alerts") {
        Some(Value::Array(alerts)) => alerts,
        Some(other) => {
            return Err(wrong_shape(format!(
                "field `alerts` of {} webhook must be an array, got {}",
                dialect.a_name,
                other.type_name()
            )));
        }
        None => {
            return Err(wrong_shape(format!(
                "expected {} with `alerts`, got an object without `alerts`",
                dialect.expected
            )));
        }
    };
    match obj.get("version") {
        Some(Value::String(v)) if dialect.versions.contains(&v.as_ref()) => Ok(alerts),
        Some(Value::String(v)) => Err(PayloadError {
            code: "invalid_value",
            message: format!(
                "unsupported {} webhook version {}, only {} is supported",
                dialect.name,
                quote(v),
                dialect.versions_text
            ),
        }),
        None | Some(Value::Null) => Err(PayloadError {
            code: "missing_field",
            message: format!(
                "missing required field `version` of the {} webhook (expected {})",
                dialect.name, dialect.versions_text
            ),
        }),
        Some(other) => Err(PayloadError {
            code: "wrong_type",
            message: format!(
                "field `version` of the {} webhook must be a string, got {}",
                dialect.name,
                other.type_name()
            ),
        }),
    }
}

fn decode_object(
    index: usize,
    mut obj: Map<'_>,
    kind: Kind,
    dialect: &Dialect,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Alert, ItemError> {
    let labels = match take(&mut obj, "labels") {
        None => return Err(missing(index, "labels")),
        Some(v) => string_map(index, "labels", v, limits, true)?,
    };
    if labels.is_empty() {
        return Err(item_error(
            index,
            "labels",
            "invalid_value",
            "field `labels` must contain at least one non-empty label".to_string(),
        ));
    }
    let name = label(index, &labels, "alertname", limits.max_name_bytes)?
        .ok_or_else(|| missing(index, "labels.alertname"))?
        .to_string();
    let source = label(index, &labels, "source", limits.max_name_bytes)?
        .unwrap_or(dialect.default_source)
        .to_string();
    let ci = label(index, &labels, "ci", limits.max_name_bytes)?.map(str::to_string);
    let severity = labels
        .get("severity")
        .map_or(Severity::Warning, |s| map_severity(s));

    let mut annotations = match take(&mut obj, "annotations") {
        None => BTreeMap::new(),
        Some(v) => string_map(index, "annotations", v, limits, false)?,
    };
    let summary = summary(index, &annotations, limits)?;
    for &(field, key) in dialect.annotations {
        if let Some(text) = opt_string(index, &mut obj, field, limits.max_value_bytes)?
            && !text.is_empty()
        {
            annotations.insert(key.to_string(), text);
        }
    }

    let status = match kind {
        Kind::Postable => None,
        Kind::Webhook => Some(webhook_status(index, &mut obj)?),
    };
    let starts = am_time(index, &mut obj, "startsAt")?;
    let ends = am_time(index, &mut obj, "endsAt")?;
    if let (Some(start), Some(end)) = (starts, ends)
        && end < start
    {
        return Err(ends_before_starts(
            index,
            ("startsAt", start),
            ("endsAt", end),
        ));
    }

    let received_at = match stamp {
        Stamp::Live(now) => now,
        // A postable alert's endsAt alone says when it was resolved; a firing webhook alert's
        // endsAt is only a timeout, so it cannot stand in for when the alert was seen.
        Stamp::Replay => starts
            .or(ends.filter(|_| status != Some(Status::Firing)))
            .ok_or_else(|| {
                item_error(
                    index,
                    "startsAt",
                    "missing_field",
                    "replay needs a non-zero `startsAt`, or `endsAt` for a resolved alert"
                        .to_string(),
                )
            })?,
    };

    let (status, ends_at) = match status {
        None => match ends {
            None => (
                Status::Firing,
                Some(received_at.saturating_add(RESOLVE_TIMEOUT_MS)),
            ),
            Some(end) if end <= received_at => (Status::Resolved, Some(end)),
            Some(end) => (Status::Firing, Some(end)),
        },
        Some(Status::Firing) => (Status::Firing, ends),
        Some(Status::Resolved) => (Status::Resolved, Some(ends.unwrap_or(received_at))),
    };
    // Only a past end pulls a missing start back; otherwise the alert starts on receipt.
    let starts_at = starts.unwrap_or_else(|| default_start(received_at, ends));
    // A start in the future can still pass the end we filled in; Alertmanager rejects that
    // too, after applying its defaults.
    if let Some(end) = ends_at
        && end < starts_at
    {
        return Err(item_error(
            index,
            "startsAt",
            "inconsistent",
            format!(
                "startsAt ({}) is after the end implied by a missing `endsAt` ({})",
                show_time(starts_at),
                show_time(end)
            ),
        ));
    }

    let alert = Alert {
        fingerprint: Fingerprint::alertmanager(&labels),
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
        dedup_key: None,
        received_at,
    };
    check_times(index, &alert, ("startsAt", "endsAt"), limits)?;
    Ok(alert)
}

/// A label that becomes a top-level field, held to that field's size limit.
fn label<'a>(
    index: usize,
    labels: &'a BTreeMap<String, String>,
    key: &str,
    limit: usize,
) -> Result<Option<&'a str>, ItemError> {
    match labels.get(key) {
        None => Ok(None),
        Some(v) => {
            check_len(index, format_args!("labels.{key}"), v, limit)?;
            Ok(Some(v))
        }
    }
}

/// First non-empty of the `summary`, `description` and `message` annotations: the names
/// Prometheus rules, Grafana and most exporters' mixins use for the one-line text.
fn summary(
    index: usize,
    annotations: &BTreeMap<String, String>,
    limits: &Limits,
) -> Result<Option<String>, ItemError> {
    for key in ["summary", "description", "message"] {
        if let Some(text) = annotations.get(key).filter(|s| !s.is_empty()) {
            check_len(
                index,
                format_args!("annotations.{key}"),
                text,
                limits.max_summary_bytes,
            )?;
            return Ok(Some(text.clone()));
        }
    }
    Ok(None)
}

/// Maps the free-form `severity` label. Never fails: Prometheus rules put arbitrary values
/// there, and the original value stays in the labels anyway.
fn map_severity(value: &str) -> Severity {
    const TABLE: &[(&str, Severity)] = &[
        ("critical", Severity::Critical),
        ("page", Severity::Critical),
        ("p1", Severity::Critical),
        ("emergency", Severity::Critical),
        ("fatal", Severity::Critical),
        ("major", Severity::Major),
        ("error", Severity::Major),
        ("high", Severity::Major),
        ("p2", Severity::Major),
        ("minor", Severity::Minor),
        ("medium", Severity::Minor),
        ("p3", Severity::Minor),
        ("warning", Severity::Warning),
        ("warn", Severity::Warning),
        ("p4", Severity::Warning),
        ("info", Severity::Info),
        ("informational", Severity::Info),
        ("low", Severity::Info),
        ("none", Severity::Info),
        ("p5", Severity::Info),
        ("ok", Severity::Info),
    ];
    TABLE
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
        .map_or(Severity::Warning, |&(_, severity)| severity)
}

fn webhook_status(index: usize, obj: &mut Map<'_>) -> Result<Status, ItemError> {
    match opt_string(index, obj, "status", usize::MAX)? {
        None => Err(missing(index, "status")),
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
        }),
    }
}

/// An RFC 3339 time where Go's zero time (and anything before 1970) means "not set".
fn am_time(index: usize, obj: &mut Map<'_>, field: &str) -> Result<Option<Millis>, ItemError> {
    Ok(super::opt_time(index, obj, field)?.filter(|&ms| ms >= 0))
}

#[cfg(test)]
mod tests {
    use super::super::{Format, decode};
    use super::*;
    use crate::ingest::testing::{now, t};

    fn run(body: &str, stamp: Stamp) -> Result<Decoded, PayloadError> {
        decode(
            Format::Alertmanager,
            body.as_bytes(),
            stamp,
            &Limits::default(),
        )
    }

    fn live(body: &str) -> Decoded {
        run(body, Stamp::Live(now())).unwrap()
    }

    fn reject(body: &str) -> ItemError {
        let d = live(body);
        assert!(d.alerts.is_empty(), "unexpectedly decoded: {:?}", d.alerts);
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        d.errors[0].clone()
    }

    /// Shaped like Prometheus's notifier output (`[]*Alert` as JSON), plus one alert from a
    /// sender that leaves `endsAt` out, as the Alertmanager API allows.
    const POSTABLE: &str = r#"[
      {
        "labels": {"alertname": "InstanceDown", "instance": "node1:9100", "job": "node",
                   "severity": "page", "ci": "node1"},
        "annotations": {"summary": "Instance node1:9100 down",
                        "description": "node1:9100 of job node has been down for more than 5 minutes."},
        "startsAt": "2026-11-23T09:50:00.123Z",
        "endsAt": "2026-11-23T10:04:00.123Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1"
      },
      {
        "labels": {"alertname": "HighLatency", "service": "checkout", "severity": "warning",
                   "source": "prometheus-eu", "team": ""},
        "annotations": {"description": "p99 latency above 2s"},
        "startsAt": "2026-11-23T10:00:00Z"
      }
    ]"#;

    /// Shaped like the webhook example in the Alertmanager configuration docs.
    const WEBHOOK: &str = r#"{
      "version": "4",
      "groupKey": "{}:{alertname=\"DiskFull\"}",
      "truncatedAlerts": 0,
      "status": "firing",
      "receiver": "incidentd",
      "groupLabels": {"alertname": "DiskFull"},
      "commonLabels": {"alertname": "DiskFull", "severity": "critical"},
      "commonAnnotations": {},
      "externalURL": "http://alertmanager:9093",
      "alerts": [
        {
          "status": "firing",
          "labels": {"alertname": "DiskFull", "instance": "db1:9100", "severity": "critical",
                     "mountpoint": "/var"},
          "annotations": {"message": "/var on db1 is 97% full"},
          "startsAt": "2026-11-23T09:30:00Z",
          "endsAt": "0001-01-01T00:00:00Z",
          "generatorURL": "http://prometheus:9090/graph?g0.expr=disk",
          "fingerprint": "0f9c5a1c2b3d4e5f"
        },
        {
          "status": "resolved",
          "labels": {"alertname": "DiskFull", "instance": "db2:9100", "severity": "critical",
                     "mountpoint": "/var"},
          "annotations": {},
          "startsAt": "2026-11-23T08:00:00Z",
          "endsAt": "2026-11-23T09:45:00Z",
          "generatorURL": "http://prometheus:9090/graph?g0.expr=disk",
          "fingerprint": "1a2b3c4d5e6f7081"
        }
      ]
    }"#;

    #[test]
    fn prometheus_postable_alerts() {
        let d = live(POSTABLE);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let [down, latency] = &d.alerts[..] else {
            panic!("expected two alerts, got {:?}", d.alerts)
        };

        assert_eq!(down.name, "InstanceDown");
        assert_eq!(down.source, "prometheus");
        assert_eq!(down.ci.as_deref(), Some("node1"));
        assert_eq!(down.severity, Severity::Critical);
        assert_eq!(down.status, Status::Resolved);
        assert_eq!(down.starts_at, t("2026-11-23T09:50:00.123Z"));
        assert_eq!(down.ends_at, Some(t("2026-11-23T10:04:00.123Z")));
        assert_eq!(down.summary.as_deref(), Some("Instance node1:9100 down"));
        assert_eq!(
            down.annotations.get("generator_url").map(String::as_str),
            Some("http://prometheus:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1")
        );
        assert_eq!(down.labels.len(), 5);
        assert_eq!(down.received_at, now());
        assert_eq!(down.dedup_key, None);

        assert_eq!(latency.name, "HighLatency");
        assert_eq!(latency.source, "prometheus-eu");
        assert_eq!(latency.ci, None);
        assert_eq!(latency.severity, Severity::Warning);
        assert_eq!(latency.status, Status::Firing);
        assert_eq!(latency.ends_at, Some(now() + 5 * 60 * 1000));
        assert_eq!(latency.summary.as_deref(), Some("p99 latency above 2s"));
        // Empty label values are dropped, as Alertmanager does.
        assert!(!latency.labels.contains_key("team"));
    }

    #[test]
    fn postable_end_in_future_is_firing() {
        let d = live(
            r#"[{"labels":{"alertname":"A"},"startsAt":"2026-11-23T10:00:00Z","endsAt":"2026-11-23T10:09:00Z"}]"#,
        );
        assert_eq!(d.alerts[0].status, Status::Firing);
        assert_eq!(d.alerts[0].ends_at, Some(t("2026-11-23T10:09:00Z")));
    }

    #[test]
    fn postable_zero_times_are_absent() {
        let d = live(
            r#"[{"labels":{"alertname":"A"},"startsAt":"0001-01-01T00:00:00Z","endsAt":"1969-12-31T00:00:00Z"}]"#,
        );
        let a = &d.alerts[0];
        assert_eq!(a.starts_at, now());
        assert_eq!(
            (a.status, a.ends_at),
            (Status::Firing, Some(now() + 300_000))
        );
    }

    #[test]
    fn start_after_implied_end_rejected() {
        let e = reject(r#"[{"labels":{"alertname":"A"},"startsAt":"2026-11-23T11:00:00Z"}]"#);
        assert_eq!((e.field.as_str(), e.code), ("startsAt", "inconsistent"));
        assert_eq!(
            e.message,
            "startsAt (2026-11-23T11:00:00Z) is after the end implied by a missing `endsAt` \
             (2026-11-23T10:10:00Z)"
        );
    }

    #[test]
    fn postable_resolve_without_start_starts_at_its_end() {
        let d = live(r#"[{"labels":{"alertname":"A"},"endsAt":"2026-11-23T10:01:00Z"}]"#);
        let a = &d.alerts[0];
        assert_eq!(a.status, Status::Resolved);
        assert_eq!(a.starts_at, t("2026-11-23T10:01:00Z"));
    }

    #[test]
    fn webhook_v4() {
        let d = live(WEBHOOK);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let [firing, resolved] = &d.alerts[..] else {
            panic!("expected two alerts, got {:?}", d.alerts)
        };
        assert_eq!(firing.status, Status::Firing);
        assert_eq!(firing.ends_at, None);
        assert_eq!(firing.starts_at, t("2026-11-23T09:30:00Z"));
        assert_eq!(firing.severity, Severity::Critical);
        assert_eq!(firing.summary.as_deref(), Some("/var on db1 is 97% full"));
        assert_eq!(firing.received_at, now());

        assert_eq!(resolved.status, Status::Resolved);
        assert_eq!(resolved.ends_at, Some(t("2026-11-23T09:45:00Z")));
        assert_eq!(resolved.summary, None);
        assert_ne!(firing.fingerprint, resolved.fingerprint);
    }

    #[test]
    fn webhook_resolved_without_end_ends_on_receipt() {
        let d = live(
            r#"{"version":"4","alerts":[{"status":"resolved","labels":{"alertname":"A"},
                "startsAt":"2026-11-23T10:00:00Z","endsAt":"0001-01-01T00:00:00Z"}]}"#,
        );
        assert_eq!(d.alerts[0].ends_at, Some(now()));
    }

    #[test]
    fn webhook_item_status_is_checked() {
        let e =
            reject(r#"{"version":"4","alerts":[{"status":"pending","labels":{"alertname":"A"}}]}"#);
        assert_eq!((e.field.as_str(), e.code), ("status", "invalid_value"));
        let e = reject(r#"{"version":"4","alerts":[{"labels":{"alertname":"A"}}]}"#);
        assert_eq!((e.field.as_str(), e.code), ("status", "missing_field"));
    }

    #[test]
    fn fingerprint_is_alertmanagers() {
        for a in live(POSTABLE).alerts.iter().chain(&live(WEBHOOK).alerts) {
            assert_eq!(a.fingerprint, Fingerprint::alertmanager(&a.labels));
        }
        // Test vector from prometheus/common model.TestMetricToFingerprint.
        let labels: BTreeMap<String, String> =
            [("name", "garland, briggs"), ("fear", "love is not enough")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(
            Fingerprint::alertmanager(&labels).0,
            5_799_056_148_416_392_346
        );
    }

    #[test]
    fn missing_alertname_rejected() {
        let e = reject(r#"[{"labels":{"job":"node"}}]"#);
        assert_eq!(
            (e.index, e.field.as_str(), e.code),
            (0, "labels.alertname", "missing_field")
        );
        assert_eq!(e.message, "missing required field `labels.alertname`");
    }

    #[test]
    fn empty_labels_rejected() {
        for body in [r#"[{"labels":{}}]"#, r#"[{"labels":{"alertname":""}}]"#] {
            let e = reject(body);
            assert_eq!((e.field.as_str(), e.code), ("labels", "invalid_value"));
        }
        let e = reject(r#"[{"annotations":{"summary":"x"}}]"#);
        assert_eq!((e.field.as_str(), e.code), ("labels", "missing_field"));
    }

    #[test]
    fn mixed_items_decode_independently() {
        let d = live(
            r#"[{"labels":{"alertname":"A"}}, "oops", {"labels":{"alertname":"B","x":1}},
                {"labels":{"alertname":"C"},"startsAt":"2026-11-23T10:00:00Z","endsAt":"2026-11-23T09:00:00Z"}]"#,
        );
        assert_eq!(d.alerts.len(), 1);
        let errs: Vec<_> = d
            .errors
            .iter()
            .map(|e| (e.index, e.field.as_str(), e.code))
            .collect();
        assert_eq!(
            errs,
            [
                (1, "$", "wrong_type"),
                (2, "labels.x", "wrong_type"),
                (3, "endsAt", "inconsistent")
            ]
        );
        assert_eq!(
            d.errors[2].message,
            "endsAt (2026-11-23T09:00:00Z) is before startsAt (2026-11-23T10:00:00Z)"
        );
    }

    #[test]
    fn unknown_webhook_version_rejected() {
        let e = run(r#"{"version":"3","alerts":[]}"#, Stamp::Live(0))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code, "invalid_value");
        assert_eq!(
            e.message,
            "unsupported Alertmanager webhook version \"3\", only \"4\" is supported"
        );
        let e = run(r#"{"alerts":[]}"#, Stamp::Live(0))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code, "missing_field");
        let e = run(r#"{"version":4,"alerts":[]}"#, Stamp::Live(0))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code, "wrong_type");
    }

    #[test]
    fn wrong_shapes_rejected() {
        for body in [
            r#"{"labels":{"alertname":"A"}}"#,
            r#"{"version":"4","alerts":{}}"#,
            "7",
        ] {
            let e = run(body, Stamp::Live(0)).map(|_| ()).unwrap_err();
            assert_eq!(e.code, "wrong_shape", "{body}");
        }
    }

    #[test]
    fn severity_mapping_table() {
        let cases = [
            ("critical", Severity::Critical),
            ("PAGE", Severity::Critical),
            ("P1", Severity::Critical),
            ("emergency", Severity::Critical),
            ("Fatal", Severity::Critical),
            ("major", Severity::Major),
            ("Error", Severity::Major),
            ("high", Severity::Major),
            ("p2", Severity::Major),
            ("minor", Severity::Minor),
            ("medium", Severity::Minor),
            ("p3", Severity::Minor),
            ("WARNING", Severity::Warning),
            ("warn", Severity::Warning),
            ("p4", Severity::Warning),
            ("info", Severity::Info),
            ("informational", Severity::Info),
            ("low", Severity::Info),
            ("none", Severity::Info),
            ("p5", Severity::Info),
            ("OK", Severity::Info),
            ("sev-banana", Severity::Warning),
            ("", Severity::Warning),
        ];
        for (value, want) in cases {
            assert_eq!(map_severity(value), want, "{value:?}");
        }
        let d = live(
            r#"[{"labels":{"alertname":"A","severity":"urgent!!"}},{"labels":{"alertname":"B"}}]"#,
        );
        assert_eq!(d.alerts[0].severity, Severity::Warning);
        assert_eq!(d.alerts[0].labels["severity"], "urgent!!");
        assert_eq!(d.alerts[1].severity, Severity::Warning);
    }

    #[test]
    fn summary_fallback_order() {
        let summary = |annotations: &str| {
            let body = format!(r#"[{{"labels":{{"alertname":"A"}},"annotations":{annotations}}}]"#);
            live(&body).alerts[0].summary.clone()
        };
        assert_eq!(
            summary(r#"{"message":"m","description":"d","summary":"s"}"#).as_deref(),
            Some("s")
        );
        assert_eq!(
            summary(r#"{"message":"m","description":"d"}"#).as_deref(),
            Some("d")
        );
        assert_eq!(
            summary(r#"{"message":"m","summary":""}"#).as_deref(),
            Some("m")
        );
        assert_eq!(summary(r#"{"runbook_url":"r"}"#), None);
    }

    #[test]
    fn replay_uses_recorded_times() {
        let d = run(
            r#"[{"labels":{"alertname":"A"},"startsAt":"2026-11-23T10:00:00Z"}]"#,
            Stamp::Replay,
        )
        .unwrap();
        assert_eq!(d.alerts[0].received_at, t("2026-11-23T10:00:00Z"));
        assert_eq!(d.alerts[0].ends_at, Some(t("2026-11-23T10:05:00Z")));

        let d = run(r#"[{"labels":{"alertname":"A"}}]"#, Stamp::Replay).unwrap();
        assert_eq!(
            (d.errors[0].field.as_str(), d.errors[0].code),
            ("startsAt", "missing_field")
        );
    }

    #[test]
    fn name_labels_respect_name_limit() {
        let body = format!(r#"[{{"labels":{{"alertname":"{}"}}}}]"#, "a".repeat(300));
        let e = reject(&body);
        assert_eq!(
            (e.field.as_str(), e.code),
            ("labels.alertname", "too_large")
        );
    }
}
