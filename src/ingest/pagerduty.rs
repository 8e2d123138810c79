//! Decoder for PagerDuty Events API v2 events, one object or an array of them:
//!
//! ```json
//! {"routing_key":"R0UT1NGKEY","event_action":"trigger","dedup_key":"db1/disk",
//!  "payload":{"summary":"Disk full on db1","source":"db1.example","severity":"critical",
//!             "timestamp":"2026-11-23T10:00:00Z","component":"postgres","group":"prod-db",
//!             "class":"disk","custom_details":{"free_gb":0.4}},
//!  "links":[...],"images":[...]}
//! ```
//!
//! `trigger` fires and `resolve` resolves; `acknowledge` is refused, because incidentd
//! acknowledges incidents, not alerts. A resolve needs `dedup_key` and may omit `payload`.
//!
//! Identity: PagerDuty scopes `dedup_key` per `routing_key`, and a resolve usually carries no
//! `payload`, so `source` is `pagerduty:<tag>` for every event, where the tag is a short hash of
//! the routing key (a send credential, which must not show in `/api/v1/sources`, metrics or
//! the log), and `payload.source` goes to the label `pd_source`. The fingerprint is the native one, which for a `dedup_key` hashes
//! only source and key, so a resolve matches its trigger whatever else it carries. A trigger
//! without `dedup_key` is fingerprinted from source, name, ci and labels (PagerDuty would
//! make up a key and return it; we cannot), so only a timeout or a person can close it.
//! `links`, `images` and `client` are ignored.

use std::collections::BTreeMap;

use super::json::{Map, Value};

use super::{
    ItemError, Limits, Stamp, check_times, event_received_at, event_times, item_error, json_text,
    missing, non_empty, opt_string, opt_time, put_entry, quote, required_name, take, wrong_type,
};
use crate::model::{Alert, Fingerprint, Millis, Severity, Status};

/// The fields read from `payload`.
#[derive(Default)]
struct Payload {
    summary: Option<String>,
    source: Option<String>,
    severity: Option<Severity>,
    timestamp: Option<Millis>,
    component: Option<String>,
    group: Option<String>,
    class: Option<String>,
    details: BTreeMap<String, String>,
}

pub(super) fn decode_object(
    index: usize,
    mut obj: Map<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Alert, ItemError> {
    let routing_key = required_name(index, &mut obj, "routing_key", limits.max_name_bytes)?;
    let status = match required_name(index, &mut obj, "event_action", usize::MAX)?.as_str() {
        "trigger" => Status::Firing,
        "resolve" => Status::Resolved,
        "acknowledge" => {
            return Err(item_error(
                index,
                "event_action",
                "invalid_value",
                "event_action \"acknowledge\" is not accepted: incidentd acknowledges incidents, \
                 not alerts (POST /api/v1/incidents/{id}/ack)"
                    .to_string(),
            ));
        }
        other => {
            return Err(item_error(
                index,
                "event_action",
                "invalid_value",
                format!(
                    "field `event_action` must be one of trigger, resolve, got {}",
                    quote(other)
                ),
            ));
        }
    };
    let dedup_key = non_empty(opt_string(
        index,
        &mut obj,
        "dedup_key",
        limits.max_name_bytes,
    )?);
    if status == Status::Resolved && dedup_key.is_none() {
        return Err(missing(index, "dedup_key"));
    }
    let firing = status == Status::Firing;
    let p = match take(&mut obj, "payload") {
        None if firing => return Err(missing(index, "payload")),
        None => Payload::default(),
        Some(Value::Object(mut p)) => {
            payload(index, &mut p, firing, limits).map_err(|e| e.under("payload"))?
        }
        Some(other) => return Err(wrong_type(index, "payload", "an object", &other)),
    };

    let source = format!("pagerduty:{}", crate::model::secret_tag(&routing_key));
    let name = p
        .class
        .clone()
        .or_else(|| p.component.clone())
        .unwrap_or_else(|| "PagerDutyEvent".to_string());
    let labels: BTreeMap<String, String> = [
        ("pd_source", p.source),
        ("group", p.group),
        ("class", p.class),
        ("component", p.component.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect();
    let ci = p.component;

    let received_at = event_received_at(index, stamp, p.timestamp, "payload.timestamp")?;
    let (starts_at, ends_at) = event_times(status, p.timestamp, received_at);
    let fingerprint =
        Fingerprint::native(&source, &name, ci.as_deref(), &labels, dedup_key.as_deref());
    let alert = Alert {
        fingerprint,
        source,
        name,
        ci,
        // A bare resolve says nothing about severity; it no longer matters then.
        severity: p.severity.unwrap_or(Severity::Info),
        status,
        summary: p.summary,
        labels,
        annotations: p.details,
        starts_at,
        ends_at,
        dedup_key,
        received_at,
    };
    check_times(
        index,
        &alert,
        ("payload.timestamp", "payload.timestamp"),
        limits,
    )?;
    Ok(alert)
}

/// Reads `payload`; field names in errors are relative to it. `summary`, `source` and
/// `severity` are required on a trigger, as PagerDuty requires them.
fn payload(
    index: usize,
    p: &mut Map<'_>,
    firing: bool,
    limits: &Limits,
) -> Result<Payload, ItemError> {
    let summary = if firing {
        Some(required_name(
            index,
            p,
            "summary",
            limits.max_summary_bytes,
        )?)
    } else {
        non_empty(opt_string(index, p, "summary", limits.max_summary_bytes)?)
    };
    let source = if firing {
        Some(required_name(index, p, "source", limits.max_value_bytes)?)
    } else {
        non_empty(opt_string(index, p, "source", limits.max_value_bytes)?)
    };
    let severity = match opt_string(index, p, "severity", usize::MAX)? {
        None if firing => return Err(missing(index, "severity")),
        None => None,
        Some(s) => Some(match s.as_str() {
            "critical" => Severity::Critical,
            "error" => Severity::Major,
            "warning" => Severity::Warning,
            "info" => Severity::Info,
            _ => {
                return Err(item_error(
                    index,
                    "severity",
                    "invalid_value",
                    format!(
                        "field `severity` must be one of critical, error, warning, info, got {}",
                        quote(&s)
                    ),
                ));
            }
        }),
    };
    let timestamp = opt_time(index, p, "timestamp")?;
    // component and class become ci and name, so they share the name limit.
    let component = non_empty(opt_string(index, p, "component", limits.max_name_bytes)?);
    let group = non_empty(opt_string(index, p, "group", limits.max_value_bytes)?);
    let class = non_empty(opt_string(index, p, "class", limits.max_name_bytes)?);

    let mut details = BTreeMap::new();
    match take(p, "custom_details") {
        None => {}
        Some(Value::Object(fields)) => {
            for (k, v) in fields {
                let field = format!("custom_details.{k}");
                let target = ("annotations", &mut details);
                put_entry(
                    index,
                    &field,
                    target,
                    format!("detail.{k}"),
                    json_text(v),
                    limits,
                )?;
            }
        }
        // PagerDuty also takes a bare string (or any JSON) here.
        Some(other) => {
            let target = ("annotations", &mut details);
            put_entry(
                index,
                "custom_details",
                target,
                "detail".to_string(),
                json_text(other),
                limits,
            )?;
        }
    }
    Ok(Payload {
        summary,
        source,
        severity,
        timestamp,
        component,
        group,
        class,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Decoded, Format, decode};
    use super::*;
    use crate::ingest::testing::{now, t};

    fn live(body: &str) -> Decoded {
        decode(
            Format::PagerDuty,
            body.as_bytes(),
            Stamp::Live(now()),
            &Limits::default(),
        )
        .unwrap()
    }

    fn reject(body: &str) -> ItemError {
        let d = live(body);
        assert!(d.alerts.is_empty(), "unexpectedly decoded: {:?}", d.alerts);
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        d.errors[0].clone()
    }

    /// Shaped like the trigger example in PagerDuty's Events API v2 reference.
    const KEY: &str = "e93facc04764012d7bfb002500d5d1a6";

    const TRIGGER: &str = r#"{
      "payload": {
        "summary": "DISK at 99% on machine prod-datapipe03.example.com",
        "timestamp": "2026-11-23T09:59:30.123+00:00",
        "severity": "critical",
        "source": "prod-datapipe03.example.com",
        "component": "mysql",
        "group": "prod-datapipe",
        "class": "disk",
        "custom_details": {
          "free space": "1%",
          "ping time": "1500ms",
          "load avg": 0.75,
          "mounts": ["/", "/var"]
        }
      },
      "routing_key": "e93facc04764012d7bfb002500d5d1a6",
      "dedup_key": "srv01/mysql",
      "event_action": "trigger",
      "client": "Sample Monitoring Service",
      "client_url": "https://monitoring.service.com",
      "links": [{"href": "http://pagerduty.example.com", "text": "An example link."}],
      "images": [{"src": "https://chart.googleapis.com/chart?chs=600x400", "alt": "chart"}]
    }"#;

    const RESOLVE: &str = r#"{
      "routing_key": "e93facc04764012d7bfb002500d5d1a6",
      "event_action": "resolve",
      "dedup_key": "srv01/mysql"
    }"#;

    #[test]
    fn golden_trigger() {
        let d = live(TRIGGER);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let a = &d.alerts[0];
        assert_eq!(
            a.source,
            format!("pagerduty:{}", crate::model::secret_tag(KEY))
        );
        assert!(
            !format!("{a:?}").contains(KEY),
            "the routing key must not be stored"
        );
        assert_eq!(a.name, "disk");
        assert_eq!(a.ci.as_deref(), Some("mysql"));
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.status, Status::Firing);
        assert_eq!(
            a.summary.as_deref(),
            Some("DISK at 99% on machine prod-datapipe03.example.com")
        );
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&a.labels),
            [
                "class=disk",
                "component=mysql",
                "group=prod-datapipe",
                "pd_source=prod-datapipe03.example.com"
            ]
        );
        assert_eq!(
            pairs(&a.annotations),
            [
                "detail.free space=1%",
                "detail.load avg=0.75",
                r#"detail.mounts=["/","/var"]"#,
                "detail.ping time=1500ms"
            ]
        );
        assert_eq!(a.starts_at, t("2026-11-23T09:59:30.123Z"));
        assert_eq!(a.ends_at, None);
        assert_eq!(a.dedup_key.as_deref(), Some("srv01/mysql"));
        assert_eq!(a.received_at, now());
        assert_eq!(
            a.fingerprint,
            Fingerprint::native(
                &a.source,
                "disk",
                Some("mysql"),
                &a.labels,
                Some("srv01/mysql")
            )
        );
    }

    #[test]
    fn resolve_matches_trigger() {
        let d = live(&format!("[{TRIGGER},{RESOLVE}]"));
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let [trigger, resolve] = &d.alerts[..] else {
            panic!("expected two alerts, got {:?}", d.alerts)
        };
        assert_eq!(resolve.status, Status::Resolved);
        assert_eq!(resolve.name, "PagerDutyEvent");
        assert_eq!(resolve.ends_at, Some(now()));
        assert_eq!(resolve.starts_at, now());
        assert_eq!(resolve.source, trigger.source);
        assert_eq!(resolve.fingerprint, trigger.fingerprint);

        // Without a dedup_key the trigger is fingerprinted from its fields.
        let keyless = TRIGGER.replace(r#""dedup_key": "srv01/mysql","#, "");
        let a = &live(&keyless).alerts[0];
        assert_eq!(a.dedup_key, None);
        assert_eq!(
            a.fingerprint,
            Fingerprint::native(&a.source, "disk", Some("mysql"), &a.labels, None)
        );
    }

    #[test]
    fn rejects() {
        let e = reject(&RESOLVE.replace("resolve", "acknowledge"));
        assert_eq!(
            (e.field.as_str(), e.code),
            ("event_action", "invalid_value")
        );
        assert!(
            e.message
                .contains("incidentd acknowledges incidents, not alerts")
        );
        assert!(e.message.contains("POST /api/v1/incidents/{id}/ack"));

        let e = reject(&TRIGGER.replace(r#""critical""#, r#""high""#));
        assert_eq!(
            (e.field.as_str(), e.code),
            ("payload.severity", "invalid_value")
        );
        assert_eq!(
            e.message,
            "field `payload.severity` must be one of critical, error, warning, info, got \"high\""
        );

        let e = reject(&RESOLVE.replace(r#""dedup_key": "srv01/mysql""#, r#""dedup_key": """#));
        assert_eq!((e.field.as_str(), e.code), ("dedup_key", "missing_field"));

        let e = reject(&TRIGGER.replace(r#""source": "prod-datapipe03.example.com","#, ""));
        assert_eq!(
            (e.field.as_str(), e.code),
            ("payload.source", "missing_field")
        );
        assert_eq!(e.message, "missing required field `payload.source`");
    }
}
