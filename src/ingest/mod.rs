//! Alert decoders: turn one raw payload (an HTTP body or a NATS message) into normalized
//! [`Alert`]s.
//!
//! A payload is rejected whole only when nothing in it can be read (not JSON, wrong top-level
//! shape, too many items, too deep); otherwise each item stands alone, so one broken alert never
//! drops its neighbours. Decoders parse into a [`json::Value`] tree that borrows from the
//! payload and pick fields by hand rather than deriving `Deserialize`: that way every rejection
//! names its exact field and reason, and each string an alert keeps is copied once.

pub mod alerta;
pub mod alertmanager;
pub mod cloudevents;
pub mod grafana;
pub mod inspection;
pub mod jetstream;
pub mod json;
pub mod native;
pub mod nats;
pub mod pagerduty;

use std::collections::BTreeMap;
use std::fmt;

use json::{Map, Value};

use crate::model::{Alert, Millis, Status};

/// Which decoder a payload needs; NATS subject token `alerts.<format>.>` and HTTP routes map to this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// incidentd's own JSON: one alert object or an array of them.
    Native,
    /// Prometheus `postableAlerts` (`/api/v2/alerts`) or an Alertmanager webhook (version 4).
    Alertmanager,
    /// Grafana unified-alerting webhook: the Alertmanager webhook plus Grafana's fields.
    Grafana,
    /// PagerDuty Events API v2 (`trigger` and `resolve` events).
    PagerDuty,
    /// Alerta `POST /alert` body.
    Alerta,
    /// Results of automated inspection systems (one check on one target).
    Inspection,
    /// CloudEvents 1.0 carrying a native alert as `data`, structured or binary (`ce-` headers).
    CloudEvents,
}

impl Format {
    /// Maps the `<format>` token of a subject such as `alerts.native.zabbix` to a decoder.
    pub fn from_subject_token(s: &str) -> Option<Format> {
        match s {
            "native" => Some(Format::Native),
            "alertmanager" => Some(Format::Alertmanager),
            "grafana" => Some(Format::Grafana),
            "pagerduty" => Some(Format::PagerDuty),
            "alerta" => Some(Format::Alerta),
            "inspection" => Some(Format::Inspection),
            "cloudevents" => Some(Format::CloudEvents),
            _ => None,
        }
    }

    /// The subject token and metric label for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Alertmanager => "alertmanager",
            Format::Grafana => "grafana",
            Format::PagerDuty => "pagerduty",
            Format::Alerta => "alerta",
            Format::Inspection => "inspection",
            Format::CloudEvents => "cloudevents",
        }
    }
}

/// Limits checked while decoding, so one hostile or buggy sender cannot make the engine hold
/// unbounded state. Deserializable so the service config can override single values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Alerts per payload.
    pub max_items: usize,
    /// Entries in `labels`, and separately in `annotations`.
    pub max_labels: usize,
    /// Bytes in one label or annotation key.
    pub max_key_bytes: usize,
    /// Bytes in one label or annotation value.
    pub max_value_bytes: usize,
    /// Bytes in `source`, `name`, `ci` and `dedup_key`.
    pub max_name_bytes: usize,
    /// Bytes in `summary`.
    pub max_summary_bytes: usize,
    /// Nesting of JSON arrays and objects, counting the top level as 1.
    pub max_depth: usize,
    /// How long before receipt an alert's start or resolve time may lie. Generous, because a
    /// rule such as Prometheus's Watchdog fires for months; what it catches is a sender whose
    /// clock sits at the epoch or whose year is mistyped.
    pub max_past_secs: u64,
    /// How far after receipt a start or resolve time may lie: clock skew, not prophecy.
    pub max_future_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items: 10_000,
            max_labels: 64,
            max_key_bytes: 256,
            max_value_bytes: 8192,
            max_name_bytes: 256,
            max_summary_bytes: 8192,
            max_depth: 32,
            max_past_secs: 5 * 365 * 86_400,
            max_future_secs: 3_600,
        }
    }
}

/// How the decoder stamps time. Live ingest stamps `received_at` with the receive time and
/// ignores any sender-supplied value; replay uses the line's `received_at`, else `starts_at`,
/// else `ends_at` (for a resolved alert) — an item with none of them is rejected there.
#[derive(Clone, Copy, Debug)]
pub enum Stamp {
    Live(Millis),
    Replay,
}

/// Why an item or a payload was rejected. `code` is a short stable label for the metric
/// `incidentd_alerts_rejected_total{reason}`: one of "malformed_json", "wrong_shape",
/// "missing_field", "wrong_type", "invalid_value", "too_large", "inconsistent".
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ItemError {
    /// Position in the payload's array (0 for a single object).
    pub index: usize,
    /// JSON-path-like name of the offending field (`labels.ifname`); `$` for the item itself.
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl ItemError {
    /// Re-roots an error raised by a helper on a nested object, so `source` reads
    /// `payload.source` in both `field` and `message`.
    fn under(mut self, parent: &str) -> ItemError {
        let old = format!("`{}`", self.field);
        self.field = format!("{parent}.{}", self.field);
        self.message = self.message.replacen(&old, &format!("`{}`", self.field), 1);
        self
    }
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "alert {}: {}", self.index, self.message)
    }
}

/// Whole-payload failure: nothing in it could be read (not JSON, wrong top-level shape, too many items, too deep).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PayloadError {
    pub code: &'static str,
    pub message: String,
}

/// Decoded payload: valid alerts in input order, and one error per rejected item.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    pub alerts: Vec<Alert>,
    pub errors: Vec<ItemError>,
}

impl Decoded {
    fn with_capacity(n: usize) -> Self {
        Decoded {
            alerts: Vec::with_capacity(n),
            errors: Vec::new(),
        }
    }

    fn push(&mut self, item: Result<Alert, ItemError>) {
        match item {
            Ok(alert) => self.alerts.push(alert),
            Err(e) => self.errors.push(e),
        }
    }
}

/// Decodes one payload in `format`. `Err` only when the payload as a whole is unreadable;
/// per-item rejections are in [`Decoded::errors`].
pub fn decode(
    format: Format,
    body: &[u8],
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    let value = parse_json(body, limits)?;
    match format {
        Format::Native => native::decode_value(value, stamp, limits),
        Format::Alertmanager => alertmanager::decode_value(value, stamp, limits),
        Format::Grafana => grafana::decode_value(value, stamp, limits),
        Format::PagerDuty => decode_each(value, stamp, limits, pagerduty::decode_object),
        Format::Alerta => decode_each(value, stamp, limits, alerta::decode_object),
        Format::Inspection => decode_each(value, stamp, limits, inspection::decode_object),
        Format::CloudEvents => cloudevents::decode_value(value, stamp, limits),
    }
}

/// Like [`decode`], for a transport that has headers: a CloudEvent in binary mode carries its
/// attributes in `ce-` headers and only its data in the body. Other formats ignore headers.
pub fn decode_with_headers<'h>(
    format: Format,
    body: &[u8],
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    if format == Format::CloudEvents
        && let Some(attrs) = cloudevents::binary_attributes(headers)
    {
        return cloudevents::decode_binary(attrs, body, stamp, limits);
    }
    decode(format, body, stamp, limits)
}

/// Decodes one item object at `index`; the per-item half of a format that takes one object
/// or an array of them.
type DecodeObject = fn(usize, Map<'_>, Stamp, &Limits) -> Result<Alert, ItemError>;

/// One object (item 0) or an array of them, each decoded on its own by `decode_object`.
fn decode_each(
    value: Value<'_>,
    stamp: Stamp,
    limits: &Limits,
    decode_object: DecodeObject,
) -> Result<Decoded, PayloadError> {
    match value {
        Value::Array(items) => {
            check_item_count(items.len(), limits)?;
            let mut out = Decoded::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                out.push(match item {
                    Value::Object(obj) => decode_object(index, obj, stamp, limits),
                    other => Err(not_an_object(index, &other)),
                });
            }
            Ok(out)
        }
        Value::Object(obj) => {
            check_item_count(1, limits)?;
            let mut out = Decoded::with_capacity(1);
            out.push(decode_object(0, obj, stamp, limits));
            Ok(out)
        }
        other => Err(wrong_shape(format!(
            "expected an alert object or an array of them, got {}",
            other.type_name()
        ))),
    }
}

/// Parses a payload into the tree the decoders read.
fn parse_json<'a>(body: &'a [u8], limits: &Limits) -> Result<Value<'a>, PayloadError> {
    json::parse(body, limits.max_depth).map_err(|e| match e {
        json::ParseError::DuplicateKey(e) => PayloadError {
            // Senders and parsers disagree on which copy of a repeated key wins (serde_json
            // keeps the last, others the first), so guessing could store an alert its sender
            // never meant.
            code: "duplicate_key",
            message: format!("ambiguous JSON: {e}"),
        },
        json::ParseError::TooDeep => PayloadError {
            code: "too_large",
            message: format!("JSON nesting is deeper than {} levels", limits.max_depth),
        },
        json::ParseError::Malformed(e) => PayloadError {
            code: "malformed_json",
            message: format!("malformed JSON: {e}"),
        },
    })
}

fn check_item_count(n: usize, limits: &Limits) -> Result<(), PayloadError> {
    if n > limits.max_items {
        return Err(PayloadError {
            code: "too_large",
            message: format!("payload has {n} alerts, limit {}", limits.max_items),
        });
    }
    Ok(())
}

fn wrong_shape(message: String) -> PayloadError {
    PayloadError {
        code: "wrong_shape",
        message,
    }
}

/// Quotes a sender's value for a message, cut short so an 8 KiB value cannot bloat logs.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &s[..end])
}

/// RFC 3339 with only as many fractional digits as needed, so messages echo what was sent.
fn show_time(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

fn item_error(index: usize, field: &str, code: &'static str, message: String) -> ItemError {
    ItemError {
        index,
        field: field.to_string(),
        code,
        message,
    }
}

fn not_an_object(index: usize, item: &Value<'_>) -> ItemError {
    item_error(
        index,
        "$",
        "wrong_type",
        format!("alert must be an object, got {}", item.type_name()),
    )
}

fn missing(index: usize, field: &str) -> ItemError {
    item_error(
        index,
        field,
        "missing_field",
        format!("missing required field `{field}`"),
    )
}

fn wrong_type(index: usize, field: &str, expected: &str, got: &Value<'_>) -> ItemError {
    item_error(
        index,
        field,
        "wrong_type",
        format!(
            "field `{field}` must be {expected}, got {}",
            got.type_name()
        ),
    )
}

/// `field` is formatted only when the check fails: callers name nested fields
/// (`format_args!("labels.{key}")`) without a string built for every value that passes.
fn check_len(
    index: usize,
    field: impl std::fmt::Display,
    s: &str,
    limit: usize,
) -> Result<(), ItemError> {
    if s.len() > limit {
        let field = field.to_string();
        let message = format!("field `{field}` is {} bytes, limit {limit}", s.len());
        return Err(item_error(index, &field, "too_large", message));
    }
    Ok(())
}

/// Removes `key` from the item; JSON `null` counts as absent.
fn take<'a>(obj: &mut Map<'a>, key: &str) -> Option<Value<'a>> {
    obj.remove(key).filter(|v| !v.is_null())
}

/// An optional string field of at most `limit` bytes.
fn opt_string(
    index: usize,
    obj: &mut Map<'_>,
    field: &str,
    limit: usize,
) -> Result<Option<String>, ItemError> {
    match take(obj, field) {
        None => Ok(None),
        Some(Value::String(s)) => {
            check_len(index, field, &s, limit)?;
            Ok(Some(s.into_owned()))
        }
        Some(other) => Err(wrong_type(index, field, "a string", &other)),
    }
}

/// A required string field: present, a string, non-empty, at most `limit` bytes.
fn required_name(
    index: usize,
    obj: &mut Map<'_>,
    field: &str,
    limit: usize,
) -> Result<String, ItemError> {
    match opt_string(index, obj, field, limit)? {
        None => Err(missing(index, field)),
        Some(s) if s.is_empty() => Err(item_error(
            index,
            field,
            "invalid_value",
            format!("field `{field}` must not be empty"),
        )),
        Some(s) => Ok(s),
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// A JSON value as label or annotation text: a string as is, anything else as compact JSON.
fn json_text(value: Value<'_>) -> String {
    match value {
        Value::String(s) => s.into_owned(),
        other => other.to_json(),
    }
}

/// Adds one label or annotation that a decoder derived from field `field` into `map` (named
/// `target` in messages), under the same key, value and count limits as [`string_map`].
fn put_entry(
    index: usize,
    field: &str,
    (target, map): (&str, &mut BTreeMap<String, String>),
    key: String,
    value: String,
    limits: &Limits,
) -> Result<(), ItemError> {
    if key.len() > limits.max_key_bytes {
        return Err(item_error(
            index,
            field,
            "too_large",
            format!(
                "field `{field}` gives a key of {} bytes for {target}, limit {}",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    check_len(index, field, &value, limits.max_value_bytes)?;
    if map.len() >= limits.max_labels && !map.contains_key(&key) {
        return Err(item_error(
            index,
            field,
            "too_large",
            format!(
                "field `{field}` brings {target} over the limit of {}",
                limits.max_labels
            ),
        ));
    }
    map.insert(key, value);
    Ok(())
}

/// `received_at` for a format whose only time is the event's own (`at`, from `field`): live
/// ingest stamps the receive time, replay needs the event time.
fn event_received_at(
    index: usize,
    stamp: Stamp,
    at: Option<Millis>,
    field: &str,
) -> Result<Millis, ItemError> {
    match (stamp, at) {
        (Stamp::Live(now), _) => Ok(now),
        (Stamp::Replay, Some(at)) => Ok(at),
        (Stamp::Replay, None) => Err(item_error(
            index,
            field,
            "missing_field",
            format!("replay needs `{field}`"),
        )),
    }
}

/// `starts_at` and `ends_at` of an event that happened at `at` (else on receipt): a firing
/// event starts then, a resolving one ends then (and starts no later, as in [`default_start`]).
fn event_times(
    status: Status,
    at: Option<Millis>,
    received_at: Millis,
) -> (Millis, Option<Millis>) {
    let at = at.unwrap_or(received_at);
    match status {
        Status::Firing => (at, None),
        Status::Resolved => (default_start(received_at, Some(at)), Some(at)),
    }
}

/// An optional RFC 3339 timestamp field.
fn opt_time(index: usize, obj: &mut Map<'_>, field: &str) -> Result<Option<Millis>, ItemError> {
    match take(obj, field) {
        None => Ok(None),
        Some(Value::String(s)) => match crate::model::parse_time(&s) {
            Some(ms) => Ok(Some(ms)),
            None => Err(item_error(
                index,
                field,
                "invalid_value",
                format!(
                    "field `{field}` must be an RFC 3339 timestamp, got {}",
                    quote(&s)
                ),
            )),
        },
        Some(other) => Err(wrong_type(
            index,
            field,
            "an RFC 3339 timestamp string",
            &other,
        )),
    }
}

/// A `labels`/`annotations` object of string to string, within the key, value and count
/// limits. `drop_empty` removes empty values, as Alertmanager does before fingerprinting.
fn string_map(
    index: usize,
    field: &str,
    value: Value<'_>,
    limits: &Limits,
    drop_empty: bool,
) -> Result<BTreeMap<String, String>, ItemError> {
    let obj = match value {
        Value::Object(obj) => obj,
        other => return Err(wrong_type(index, field, "an object", &other)),
    };
    if obj.len() > limits.max_labels {
        return Err(item_error(
            index,
            field,
            "too_large",
            format!(
                "field `{field}` has {} entries, limit {}",
                obj.len(),
                limits.max_labels
            ),
        ));
    }
    // Document order spares sorting the entries: the B-tree sorts them anyway. Only when an
    // entry is refused is the object walked again in key order, so the error reported is the
    // first in key order, whatever order the sender wrote.
    let mut out = BTreeMap::new();
    for (key, value) in obj.iter_unordered() {
        match map_entry(index, field, key, value, limits) {
            Ok(value) if drop_empty && value.is_empty() => {}
            Ok(value) => {
                out.insert(key.to_string(), value.to_string());
            }
            Err(error) => {
                let first = obj
                    .iter()
                    .find_map(|(key, value)| map_entry(index, field, key, value, limits).err());
                return Err(first.unwrap_or(error));
            }
        }
    }
    Ok(out)
}

/// Checks one `labels`/`annotations` entry for [`string_map`], returning its string value.
fn map_entry<'v>(
    index: usize,
    field: &str,
    key: &str,
    value: &'v Value<'_>,
    limits: &Limits,
) -> Result<&'v str, ItemError> {
    if key.is_empty() {
        return Err(item_error(
            index,
            field,
            "invalid_value",
            format!("field `{field}` has an empty key"),
        ));
    }
    if key.len() > limits.max_key_bytes {
        return Err(item_error(
            index,
            field,
            "too_large",
            format!(
                "field `{field}` has a key of {} bytes, limit {}",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    let value = match value {
        Value::String(s) => s,
        other => {
            return Err(wrong_type(
                index,
                &format!("{field}.{key}"),
                "a string",
                other,
            ));
        }
    };
    if value.len() > limits.max_value_bytes {
        let path = format!("{field}.{key}");
        let message = format!(
            "field `{path}` value is {} bytes, limit {}",
            value.len(),
            limits.max_value_bytes
        );
        return Err(ItemError {
            index,
            field: path,
            code: "too_large",
            message,
        });
    }
    Ok(value)
}

/// When the alert started if the sender did not say: receipt, or the end if that came first,
/// so a late resolve that omits its start is not rejected as ending before it began.
fn default_start(received_at: Millis, ends_at: Option<Millis>) -> Millis {
    match ends_at {
        Some(end) => end.min(received_at),
        None => received_at,
    }
}

fn ends_before_starts(
    index: usize,
    (start_field, starts_at): (&str, Millis),
    (end_field, ends_at): (&str, Millis),
) -> ItemError {
    item_error(
        index,
        end_field,
        "inconsistent",
        format!(
            "{end_field} ({}) is before {start_field} ({})",
            show_time(ends_at),
            show_time(starts_at)
        ),
    )
}

/// Refuses times no sane clock produced: more than `max_past_secs` before receipt or more than
/// `max_future_secs` after it. `fields` name the sender's start and end fields for messages.
/// A firing alert's end is a timeout the sender asks for, not a time it saw, so only a
/// resolve time is bounded; a timeout far ahead merely never fires.
fn check_times(
    index: usize,
    alert: &Alert,
    (start_field, end_field): (&str, &str),
    limits: &Limits,
) -> Result<(), ItemError> {
    let past = Millis::try_from(limits.max_past_secs.saturating_mul(1_000)).unwrap_or(Millis::MAX);
    let future =
        Millis::try_from(limits.max_future_secs.saturating_mul(1_000)).unwrap_or(Millis::MAX);
    let check = |field: &str, at: Millis| {
        let before = alert.received_at.saturating_sub(at);
        let after = at.saturating_sub(alert.received_at);
        let (gap, side, limit) = if before > past {
            (before, "before", past)
        } else if after > future {
            (after, "after", future)
        } else {
            return Ok(());
        };
        Err(item_error(
            index,
            field,
            "invalid_value",
            format!(
                "field `{field}` ({}) is {} {side} receipt, limit {}",
                show_time(at),
                crate::model::format_duration(gap),
                crate::model::format_duration(limit)
            ),
        ))
    };
    check(start_field, alert.starts_at)?;
    match (alert.status, alert.ends_at) {
        (Status::Resolved, Some(end)) => check(end_field, end),
        _ => Ok(()),
    }
}

/// Helpers every decoder's tests share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::model::{Millis, parse_time};

    /// An RFC 3339 time in milliseconds.
    pub fn t(s: &str) -> Millis {
        parse_time(s).unwrap()
    }

    /// The receive time the decoder tests stamp with.
    pub fn now() -> Millis {
        t("2026-11-23T10:05:00Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_tokens_round_trip() {
        for f in [
            Format::Native,
            Format::Alertmanager,
            Format::Grafana,
            Format::PagerDuty,
            Format::Alerta,
            Format::Inspection,
            Format::CloudEvents,
        ] {
            assert_eq!(Format::from_subject_token(f.as_str()), Some(f));
        }
        assert_eq!(Format::from_subject_token("zabbix"), None);
    }

    #[test]
    fn nesting_beyond_the_limit_is_too_large() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let parse = |body: &str| parse_json(body.as_bytes(), &limits).map(|_| ());
        assert!(parse(r#"[["]]]]]]]\"[[[[[[[[[["]]"#).is_ok());
        let err = parse(r#"[{"a":[{}]}]"#).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            ("too_large", "JSON nesting is deeper than 3 levels")
        );
        assert!(parse("[[[]]]").is_ok());
    }

    #[test]
    fn non_utf8_body_is_malformed_json() {
        let err = decode(
            Format::Native,
            b"{\"source\":\"a\xff\"}",
            Stamp::Live(0),
            &Limits::default(),
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(err.code, "malformed_json");
        assert!(err.message.contains("line 1 column"), "{}", err.message);
    }

    fn native(body: &str) -> Result<Decoded, PayloadError> {
        decode(
            Format::Native,
            body.as_bytes(),
            Stamp::Live(testing::now()),
            &Limits::default(),
        )
    }

    #[test]
    fn duplicate_keys_refuse_the_payload() {
        for (body, key) in [
            (r#"{"source":"a","name":"n","source":"b"}"#, "source"),
            (
                r#"[{"source":"a","name":"n","labels":{"x":"1","x":"2"}}]"#,
                "x",
            ),
            (
                r#"{"source":"a","name":"n","annotations":{"d":{"k":1,"k":2}}}"#,
                "k",
            ),
        ] {
            let err = native(body).map(|_| ()).unwrap_err();
            assert_eq!(err.code, "duplicate_key", "{body}");
            assert!(
                err.message
                    .contains(&format!("duplicate key \"{key}\" at line 1")),
                "{}",
                err.message
            );
        }
        // Same key in different objects is fine, and so is every JSON value kind.
        let ok = native(
            r#"[{"source":"a","name":"n","labels":{"x":"1"}},{"source":"a","name":"m","labels":{"x":"1"},"extra":[1,-2,3.5,true,null,{"x":"y"}]}]"#,
        )
        .unwrap();
        assert_eq!((ok.alerts.len(), ok.errors.len()), (2, 0));
    }

    #[test]
    fn map_errors_name_the_first_bad_entry_in_key_order() {
        let d =
            native(r#"{"source":"a","name":"n","labels":{"z":1,"ok":"x","b":"","a":[]}}"#).unwrap();
        assert_eq!(d.errors[0].field, "labels.a");
        assert_eq!(
            d.errors[0].message,
            "field `labels.a` must be a string, got array"
        );
    }

    #[test]
    fn numbers_out_of_range_stay_malformed() {
        let err = native(r#"{"source":"a","name":"n","x":1e400}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.code, "malformed_json");
    }

    #[test]
    fn times_far_from_receipt_are_refused() {
        let reject = |body: &str| {
            let d = native(body).unwrap();
            assert!(d.alerts.is_empty(), "{body}");
            d.errors[0].clone()
        };
        let e = reject(r#"{"source":"a","name":"n","starts_at":"1970-01-01T00:00:00Z"}"#);
        assert_eq!((e.field.as_str(), e.code), ("starts_at", "invalid_value"));
        assert!(
            e.message.starts_with("field `starts_at` (1970-01-01T00:00:00Z) is 20780d10h5m before receipt, limit 1825d"),
            "{}",
            e.message
        );
        let e = reject(r#"{"source":"a","name":"n","starts_at":"2026-11-23T12:00:00Z"}"#);
        assert_eq!(
            e.message,
            "field `starts_at` (2026-11-23T12:00:00Z) is 1h55m after receipt, limit 1h"
        );
        let e = reject(
            r#"{"source":"a","name":"n","status":"resolved","starts_at":"2026-11-23T10:00:00Z","ends_at":"2099-01-01T00:00:00Z"}"#,
        );
        assert_eq!(e.field, "ends_at");
        // Clock skew within the limit, a long-firing alert and a far timeout are accepted.
        for body in [
            r#"{"source":"a","name":"n","starts_at":"2026-11-23T10:30:00Z"}"#,
            r#"{"source":"a","name":"n","starts_at":"2023-01-01T00:00:00Z"}"#,
            r#"{"source":"a","name":"n","starts_at":"2026-11-23T10:00:00Z","ends_at":"2099-01-01T00:00:00Z"}"#,
        ] {
            assert_eq!(native(body).unwrap().alerts.len(), 1, "{body}");
        }
    }

    #[test]
    fn quote_cuts_long_values_on_a_char_boundary() {
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.ends_with('…'));
        assert!(q.len() < 80);
        assert_eq!(quote("urgent"), "\"urgent\"");
    }

    #[test]
    fn limits_deserialize_partially() {
        let l: Limits = serde_json::from_str(r#"{"max_items":5}"#).unwrap();
        assert_eq!(l.max_items, 5);
        assert_eq!(l.max_depth, 32);
    }
}
