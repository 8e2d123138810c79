//! Decoder for Alerta's `POST /alert` body, one object or an array of them:
//!
//! ```json
//! {"resource":"web01","event":"HttpError","environment":"Production","severity":"major",
//!  "service":["Website"],"group":"Web","value":"503","text":"Site is down.",
//!  "tags":["london"],"attributes":{"region":"EU"},"origin":"curl","timeout":3600}
//! ```
//!
//! `resource` is the ci and `event` the name; `origin` (else `alerta`) is the source. Severity
//! `normal`, `ok` and `cleared` resolve; `security` counts as critical and `unknown` as
//! warning; no severity at all is a firing warning (Alerta would store `normal`, but a sender
//! that leaves it out does not mean to clear anything). Labels: `environment`, `group`,
//! `service` (joined by ","), `tag.<tag>` = "true", and string-valued `attributes` (others
//! are skipped); the fixed names win over an attribute of the same name.
//!
//! The fingerprint is Alerta's de-duplication key — environment, resource and event — plus
//! the source, so tags, attributes and services may change between sends and a `normal`
//! event still resolves the alert. `correlate` is not followed: a clearing event must use the
//! same `event` name. `createTime` is the event time; a positive `timeout` (seconds) on a firing
//! alert sets `ends_at` that far past receipt.

use std::collections::BTreeMap;

use super::json::{Map, Value};

use super::{
    ItemError, Limits, Stamp, check_times, event_received_at, event_times, item_error, non_empty,
    opt_string, opt_time, put_entry, quote, required_name, take, wrong_type,
};
use crate::model::{Alert, Fingerprint, Severity, Status};

pub(super) fn decode_object(
    index: usize,
    mut obj: Map<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Alert, ItemError> {
    let ci = required_name(index, &mut obj, "resource", limits.max_name_bytes)?;
    let name = required_name(index, &mut obj, "event", limits.max_name_bytes)?;
    let source = non_empty(opt_string(
        index,
        &mut obj,
        "origin",
        limits.max_name_bytes,
    )?)
    .unwrap_or_else(|| "alerta".to_string());
    let (severity, status) = match opt_string(index, &mut obj, "severity", usize::MAX)? {
        None => (Severity::Warning, Status::Firing),
        Some(s) => map_severity(&s).ok_or_else(|| {
            item_error(
                index,
                "severity",
                "invalid_value",
                format!(
                    "field `severity` must be one of security, critical, major, minor, \
                     warning, indeterminate, informational, debug, trace, unknown, normal, ok, \
                     cleared, got {}",
                    quote(&s)
                ),
            )
        })?,
    };

    let mut labels = BTreeMap::new();
    if let Some(attributes) = take(&mut obj, "attributes") {
        let Value::Object(attributes) = attributes else {
            return Err(wrong_type(index, "attributes", "an object", &attributes));
        };
        for (k, v) in attributes {
            if let Value::String(v) = v {
                let field = format!("attributes.{k}");
                put_entry(
                    index,
                    &field,
                    ("labels", &mut labels),
                    k.into_owned(),
                    v.into_owned(),
                    limits,
                )?;
            }
        }
    }
    let environment = non_empty(opt_string(index, &mut obj, "environment", usize::MAX)?);
    let group = non_empty(opt_string(index, &mut obj, "group", usize::MAX)?);
    let service = strings(index, &mut obj, "service")?.join(",");
    for (key, value) in [
        ("environment", environment.clone()),
        ("group", group),
        ("service", Some(service).filter(|s| !s.is_empty())),
    ] {
        if let Some(value) = value {
            let target = ("labels", &mut labels);
            put_entry(index, key, target, key.to_string(), value, limits)?;
        }
    }
    for (i, tag) in strings(index, &mut obj, "tags")?.into_iter().enumerate() {
        let (field, key) = (format!("tags[{i}]"), format!("tag.{tag}"));
        let target = ("labels", &mut labels);
        put_entry(index, &field, target, key, "true".to_string(), limits)?;
    }

    let summary = non_empty(opt_string(
        index,
        &mut obj,
        "text",
        limits.max_summary_bytes,
    )?);
    let mut annotations = BTreeMap::new();
    if let Some(value) = non_empty(opt_string(
        index,
        &mut obj,
        "value",
        limits.max_value_bytes,
    )?) {
        annotations.insert("value".to_string(), value);
    }

    let created = opt_time(index, &mut obj, "createTime")?;
    let timeout_ms = match take(&mut obj, "timeout") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(secs) => Some(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)),
            None => return Err(wrong_type(index, "timeout", "a non-negative integer", &v)),
        },
    };
    let received_at = event_received_at(index, stamp, created, "createTime")?;
    let (starts_at, mut ends_at) = event_times(status, created, received_at);
    if status == Status::Firing
        && let Some(ms) = timeout_ms.filter(|&ms| ms > 0)
    {
        ends_at = Some(received_at.saturating_add(ms));
    }

    let identity: BTreeMap<String, String> = environment
        .map(|e| ("environment".to_string(), e))
        .into_iter()
        .collect();
    let fingerprint = Fingerprint::native(&source, &name, Some(&ci), &identity, None);
    let alert = Alert {
        fingerprint,
        source,
        name,
        ci: Some(ci),
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
    check_times(index, &alert, ("createTime", "createTime"), limits)?;
    Ok(alert)
}

/// Alerta's severities, with the three clearing ones resolving the alert.
fn map_severity(s: &str) -> Option<(Severity, Status)> {
    let severity = match s {
        "normal" | "ok" | "cleared" => return Some((Severity::Info, Status::Resolved)),
        "security" | "critical" => Severity::Critical,
        "major" => Severity::Major,
        "minor" => Severity::Minor,
        "warning" | "unknown" => Severity::Warning,
        "informational" | "indeterminate" | "debug" | "trace" => Severity::Info,
        _ => return None,
    };
    Some((severity, Status::Firing))
}

/// An optional array of strings; absent is empty.
fn strings(index: usize, obj: &mut Map<'_>, field: &str) -> Result<Vec<String>, ItemError> {
    let items = match take(obj, field) {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong_type(index, field, "an array of strings", &other)),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.into_owned()),
            other => Err(wrong_type(
                index,
                &format!("{field}[{i}]"),
                "a string",
                &other,
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Decoded, Format, decode};
    use super::*;
    use crate::ingest::testing::{now, t};

    fn live(body: &str) -> Decoded {
        decode(
            Format::Alerta,
            body.as_bytes(),
            Stamp::Live(now()),
            &Limits::default(),
        )
        .unwrap()
    }

    /// Shaped like the `POST /alert` example in Alerta's API reference.
    const ALERT: &str = r#"{
      "attributes": {"region": "EU", "moreInfo": "<a href=\"http://wiki/HttpError\">wiki</a>",
                     "thresholdInfo": {"max": 500}},
      "correlate": ["HttpServerError", "HttpServerOK"],
      "environment": "Production",
      "event": "HttpServerError",
      "group": "Web",
      "origin": "curl",
      "resource": "web01",
      "service": ["example.com", "checkout"],
      "severity": "major",
      "tags": ["dc1", "london"],
      "text": "Site is down.",
      "timeout": 3600,
      "type": "exceptionAlert",
      "value": "Bad Gateway (501)"
    }"#;

    #[test]
    fn golden_alert() {
        let d = live(ALERT);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let a = &d.alerts[0];
        assert_eq!(a.source, "curl");
        assert_eq!(a.name, "HttpServerError");
        assert_eq!(a.ci.as_deref(), Some("web01"));
        assert_eq!((a.severity, a.status), (Severity::Major, Status::Firing));
        assert_eq!(a.summary.as_deref(), Some("Site is down."));
        let labels: Vec<_> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            labels,
            [
                "environment=Production",
                "group=Web",
                "moreInfo=<a href=\"http://wiki/HttpError\">wiki</a>",
                "region=EU",
                "service=example.com,checkout",
                "tag.dc1=true",
                "tag.london=true",
            ]
        );
        assert_eq!(
            a.annotations.get("value").map(String::as_str),
            Some("Bad Gateway (501)")
        );
        assert_eq!(a.starts_at, now());
        assert_eq!(a.ends_at, Some(now() + 3_600_000));
        assert_eq!(a.received_at, now());
        assert_eq!(a.dedup_key, None);
    }

    #[test]
    fn normal_resolves_despite_other_tags() {
        let clear = r#"{"resource":"web01","event":"HttpServerError","environment":"Production",
            "origin":"curl","severity":"normal","tags":["recovered"],
            "createTime":"2026-11-23T10:04:00.000Z"}"#;
        let d = live(&format!("[{ALERT},{clear}]"));
        let [fire, clear] = &d.alerts[..] else {
            panic!("expected two alerts, got {:?}", d)
        };
        assert_eq!(
            (clear.severity, clear.status),
            (Severity::Info, Status::Resolved)
        );
        assert_eq!(clear.ends_at, Some(t("2026-11-23T10:04:00Z")));
        assert_eq!(clear.fingerprint, fire.fingerprint);
        // Another environment is another alert; a missing origin is "alerta".
        let other = live(r#"{"resource":"web01","event":"HttpServerError","environment":"Dev"}"#);
        assert_eq!(other.alerts[0].source, "alerta");
        assert_ne!(other.alerts[0].fingerprint, fire.fingerprint);
    }

    #[test]
    fn rejects() {
        let d = live(
            r#"[{"event":"E"},{"resource":"r","event":"E","severity":"fatal"},
                {"resource":"r","event":"E","service":["a",1]}]"#,
        );
        let errs: Vec<_> = d
            .errors
            .iter()
            .map(|e| (e.index, e.field.as_str(), e.code))
            .collect();
        assert_eq!(
            errs,
            [
                (0, "resource", "missing_field"),
                (1, "severity", "invalid_value"),
                (2, "service[1]", "wrong_type"),
            ]
        );
    }
}
