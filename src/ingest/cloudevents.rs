//! Decoder for CloudEvents 1.0 whose `data` is a native alert.
//!
//! Structured mode (one event, or a JSON array of them as in the batch mode):
//!
//! ```json
//! {"specversion":"1.0","id":"evt-1","source":"/probes/dc1","type":"com.example.alert",
//!  "subject":"sw-core-01","time":"2026-11-23T10:00:00Z","datacontenttype":"application/json",
//!  "data":{"name":"LinkDown","severity":"critical","summary":"Gi0/1 down"}}
//! ```
//!
//! Binary mode (HTTP and NATS): the attributes travel as `ce-<name>` headers, `Content-Type` is
//! `datacontenttype`, and the body is `data`.
//!
//! The required attributes are checked as the spec says (`specversion` 1.0, non-empty `id`,
//! `source` and `type`). `data` is a native alert object (see [`super::native`]); what it
//! leaves out comes from the envelope: `source` from `source`, `name` from `type`, `ci` from
//! `subject`, `starts_at` from `time`. The event's `id`, `type` and `source`, and any extension
//! attributes, go to annotations (`cloudevents_<name>`), never to labels, because they change
//! per event and labels are alert identity. `data_base64` is refused: binary data is no alert.

use super::json::{Map, Value};

use super::{
    Decoded, ItemError, Limits, PayloadError, Stamp, decode_each, item_error, native, opt_time,
    parse_json, put_entry, quote, required_name, take, wrong_type,
};
use crate::model::Alert;

/// Attributes the spec defines; every other top-level member is an extension.
const CONTEXT: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
];

/// Decodes a structured-mode payload: one event object or an array of them.
pub(super) fn decode_value(
    value: Value<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    decode_each(value, stamp, limits, decode_object)
}

/// The attributes of a binary-mode event, taken from transport headers: `ce-<name>` becomes
/// `<name>` and `content-type` becomes `datacontenttype`. `None` when `ce-specversion` is
/// absent, which is what tells binary mode from structured (the spec's own rule).
pub fn binary_attributes<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<Map<'static>> {
    let mut attrs = Map::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let key = match name.strip_prefix("ce-") {
            Some(attr) => attr.to_string(),
            None if name == "content-type" => "datacontenttype".to_string(),
            None => continue,
        };
        attrs.insert(key, Value::String(value.to_string().into()));
    }
    attrs.contains_key("specversion").then_some(attrs)
}

/// Decodes a binary-mode event: `attrs` from [`binary_attributes`], `body` the data. Errors
/// name the header (`ce-id`) rather than the attribute, since that is what the sender set.
pub(super) fn decode_binary(
    attrs: Map<'_>,
    body: &[u8],
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    // Covariance: the headers' map may hold values borrowed from the body.
    let mut attrs: Map<'_> = attrs;
    attrs.insert("data", parse_json(body, limits)?);
    let mut out = Decoded::default();
    out.push(decode_object(0, attrs, stamp, limits).map_err(|mut e| {
        let attr = e.field.split('.').next().unwrap_or_default();
        if attr != "data" && attr != "$" {
            let header = match e.field.as_str() {
                "datacontenttype" => "content-type".to_string(),
                field => format!("ce-{field}"),
            };
            e.message = e.message.replacen(
                &format!("field `{}`", e.field),
                &format!("header `{header}`"),
                1,
            );
            e.field = header;
        }
        e
    }));
    Ok(out)
}

fn decode_object(
    index: usize,
    mut obj: Map<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Alert, ItemError> {
    let specversion = required_name(index, &mut obj, "specversion", 16)?;
    if specversion != "1.0" {
        return Err(item_error(
            index,
            "specversion",
            "invalid_value",
            format!(
                "field `specversion` must be \"1.0\", got {}",
                quote(&specversion)
            ),
        ));
    }
    let id = required_name(index, &mut obj, "id", limits.max_name_bytes)?;
    let source = required_name(index, &mut obj, "source", limits.max_name_bytes)?;
    let kind = required_name(index, &mut obj, "type", limits.max_name_bytes)?;
    let subject = super::opt_string(index, &mut obj, "subject", limits.max_name_bytes)?;
    // Checked here so a bad `time` is named as the envelope's, not as `data.starts_at`.
    let time = opt_time(index, &mut obj, "time")?;
    if let Some(ct) = super::opt_string(index, &mut obj, "datacontenttype", 256)?
        && !is_json(&ct)
    {
        return Err(item_error(
            index,
            "datacontenttype",
            "invalid_value",
            format!(
                "field `datacontenttype` must be JSON (application/json or a +json type), got {}",
                quote(&ct)
            ),
        ));
    }
    if obj.contains_key("data_base64") {
        return Err(item_error(
            index,
            "data_base64",
            "invalid_value",
            "field `data_base64` carries binary data; send the alert as JSON in `data`".to_string(),
        ));
    }
    let mut data = match take(&mut obj, "data") {
        None => return Err(super::missing(index, "data")),
        Some(Value::Object(data)) => data,
        Some(other) => return Err(wrong_type(index, "data", "an alert object", &other)),
    };

    for (key, value) in [
        ("source", Some(&source)),
        ("name", Some(&kind)),
        ("ci", subject.as_ref()),
    ] {
        if let Some(value) = value
            && data.get(key).is_none_or(Value::is_null)
        {
            data.insert(key.to_string(), Value::String(value.clone().into()));
        }
    }
    if let Some(time) = time
        && data.get("starts_at").is_none_or(Value::is_null)
    {
        data.insert(
            "starts_at".to_string(),
            Value::String(crate::model::format_time(time).into()),
        );
    }
    let mut alert =
        native::decode_object(index, data, stamp, limits).map_err(|e| e.under("data"))?;

    let mut extra = vec![
        ("id".to_string(), id),
        ("source".to_string(), source),
        ("type".to_string(), kind),
    ];
    for (name, value) in obj {
        if !CONTEXT.contains(&name.as_ref()) && !value.is_null() {
            extra.push((name.into_owned(), super::json_text(value)));
        }
    }
    for (name, value) in extra {
        let key = format!("cloudevents_{name}");
        put_entry(
            index,
            &name,
            ("annotations", &mut alert.annotations),
            key,
            value,
            limits,
        )?;
    }
    Ok(alert)
}

/// `application/json`, `text/json` or any `+json` type, parameters (`; charset=utf-8`) aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::super::{Format, decode, decode_with_headers};
    use super::*;
    use crate::ingest::testing::{now, t};
    use crate::model::{Severity, Status};

    fn live(body: &str) -> Decoded {
        decode(
            Format::CloudEvents,
            body.as_bytes(),
            Stamp::Live(now()),
            &Limits::default(),
        )
        .unwrap()
    }

    fn reject(body: &str) -> ItemError {
        let d = live(body);
        assert!(d.alerts.is_empty(), "{body} was accepted");
        d.errors[0].clone()
    }

    const EVENT: &str = r#"{
      "specversion": "1.0",
      "id": "A234-1234-1234",
      "source": "/probes/dc1",
      "type": "com.example.alert",
      "subject": "sw-core-01",
      "time": "2026-11-23T10:00:00Z",
      "datacontenttype": "application/json",
      "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "data": {"name": "LinkDown", "severity": "critical", "summary": "Gi0/1 down",
               "labels": {"ifname": "Gi0/1"}}
    }"#;

    #[test]
    fn structured_event_fills_the_alert_from_the_envelope() {
        let d = live(EVENT);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let a = &d.alerts[0];
        assert_eq!(a.source, "/probes/dc1");
        assert_eq!(a.name, "LinkDown");
        assert_eq!(a.ci.as_deref(), Some("sw-core-01"));
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.status, Status::Firing);
        assert_eq!(a.starts_at, t("2026-11-23T10:00:00Z"));
        assert_eq!(a.received_at, now());
        assert_eq!(a.labels.len(), 1);
        assert_eq!(a.annotations["cloudevents_id"], "A234-1234-1234");
        assert_eq!(a.annotations["cloudevents_type"], "com.example.alert");
        assert_eq!(
            a.annotations["cloudevents_traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn event_ids_do_not_split_an_alert() {
        let again = EVENT.replace("A234-1234-1234", "A234-9999");
        assert_eq!(
            live(EVENT).alerts[0].fingerprint,
            live(&again).alerts[0].fingerprint
        );
    }

    #[test]
    fn data_overrides_the_envelope_and_type_names_the_alert() {
        let d = live(
            r#"[{"specversion":"1.0","id":"1","source":"s","type":"disk.full","data":{}},
                {"specversion":"1.0","id":"2","source":"s","type":"t","subject":"x",
                 "data":{"source":"zabbix","name":"N","ci":"db1","status":"resolved"}}]"#,
        );
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(
            (d.alerts[0].name.as_str(), d.alerts[0].ci.as_deref()),
            ("disk.full", None)
        );
        let b = &d.alerts[1];
        assert_eq!(
            (b.source.as_str(), b.name.as_str(), b.ci.as_deref()),
            ("zabbix", "N", Some("db1"))
        );
        assert_eq!(b.status, Status::Resolved);
    }

    #[test]
    fn envelope_errors_are_precise() {
        let base = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{}}"#;
        for (from, to, field, code, message) in [
            (
                r#""specversion":"1.0","#,
                r#""specversion":"0.3","#,
                "specversion",
                "invalid_value",
                "field `specversion` must be \"1.0\", got \"0.3\"",
            ),
            (
                r#""id":"1","#,
                "",
                "id",
                "missing_field",
                "missing required field `id`",
            ),
            (
                r#""type":"t","#,
                r#""type":"","#,
                "type",
                "invalid_value",
                "field `type` must not be empty",
            ),
            (
                r#""data":{}"#,
                r#""data":"text""#,
                "data",
                "wrong_type",
                "field `data` must be an alert object, got string",
            ),
            (
                r#""data":{}"#,
                r#""data_base64":"AAA=""#,
                "data_base64",
                "invalid_value",
                "field `data_base64` carries binary data; send the alert as JSON in `data`",
            ),
            (
                r#""data":{}"#,
                r#""data":{"severity":"urgent"}"#,
                "data.severity",
                "invalid_value",
                "field `data.severity` must be one of critical, major, minor, warning, info, got \"urgent\"",
            ),
            (
                r#""id":"1","#,
                r#""id":"1","time":"noon","#,
                "time",
                "invalid_value",
                "field `time` must be an RFC 3339 timestamp, got \"noon\"",
            ),
            (
                r#""id":"1","#,
                r#""id":"1","datacontenttype":"text/xml","#,
                "datacontenttype",
                "invalid_value",
                "field `datacontenttype` must be JSON (application/json or a +json type), got \"text/xml\"",
            ),
        ] {
            let body = base.replacen(from, to, 1);
            let e = reject(&body);
            assert_eq!(
                (e.field.as_str(), e.code, e.message.as_str()),
                (field, code, message),
                "{body}"
            );
        }
    }

    fn binary(headers: &[(&str, &str)], body: &str) -> Decoded {
        decode_with_headers(
            Format::CloudEvents,
            body.as_bytes(),
            headers.iter().copied(),
            Stamp::Live(now()),
            &Limits::default(),
        )
        .unwrap()
    }

    #[test]
    fn binary_mode_reads_the_headers() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("Ce-Id", "evt-7"),
            ("ce-source", "inspector"),
            ("ce-type", "PortDown"),
            ("ce-subject", "sw-tor-a1"),
            ("ce-time", "2026-11-23T10:01:00Z"),
            ("Content-Type", "application/json; charset=utf-8"),
            ("Nats-Msg-Id", "ignored"),
        ];
        let d = binary(&headers, r#"{"severity":"major"}"#);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let a = &d.alerts[0];
        assert_eq!(
            (a.source.as_str(), a.name.as_str(), a.ci.as_deref()),
            ("inspector", "PortDown", Some("sw-tor-a1"))
        );
        assert_eq!(a.severity, Severity::Major);
        assert_eq!(a.starts_at, t("2026-11-23T10:01:00Z"));
        assert_eq!(a.annotations["cloudevents_id"], "evt-7");

        let e = binary(&headers[..3], "{}").errors[0].clone();
        assert_eq!(e.field, "ce-type");
        assert_eq!(e.message, "missing required header `ce-type`");
        let e = binary(&headers, r#"{"status":"maybe"}"#).errors[0].clone();
        assert_eq!(e.field, "data.status");
        let mut form = headers;
        form[6].1 = "application/x-www-form-urlencoded";
        let e = binary(&form, "{}").errors[0].clone();
        assert_eq!(e.field, "content-type");
        assert!(
            e.message.starts_with("header `content-type` must be JSON"),
            "{}",
            e.message
        );
    }

    #[test]
    fn without_ce_specversion_the_body_is_structured() {
        let d = binary(
            &[("ce-id", "x"), ("content-type", "application/json")],
            EVENT,
        );
        assert_eq!(d.alerts.len(), 1);
        assert_eq!(d.alerts[0].annotations["cloudevents_id"], "A234-1234-1234");
    }

    #[test]
    fn binary_body_must_be_json() {
        let err = decode_with_headers(
            Format::CloudEvents,
            b"not json",
            [("ce-specversion", "1.0")],
            Stamp::Live(now()),
            &Limits::default(),
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(err.code, "malformed_json");
    }
}
