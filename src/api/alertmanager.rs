//! The Alertmanager API v2 beyond `POST /api/v2/alerts`: what `amtool` and Prometheus-side
//! tooling read (alerts with `filter` matchers and state flags, groups, status, receivers) and
//! silences (create, list, get, expire — through the engine, as facts).
//!
//! Every incidentd incident is an alert group; the one receiver is `incidentd`.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, bad_request};
use crate::clock;
use crate::model::{Status, format_time, parse_time};
use crate::pipeline::SilenceRequest;
use crate::silence::{Matcher, Silence};
use crate::view::AlertView;

const RECEIVER: &str = "incidentd";

/// Decodes `application/x-www-form-urlencoded` text (`+` and `%XX`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query pairs, with repeated keys kept (axum's `Query` would refuse `filter` twice).
fn pairs(query: Option<String>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn flag(pairs: &[(String, String)], name: &str) -> Result<bool, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == name) {
        None => Ok(true),
        Some((_, v)) => v
            .parse()
            .map_err(|_| bad_request(format!("{name} must be true or false, got {v:?}"))),
    }
}

fn filters(pairs: &[(String, String)]) -> Result<Vec<Matcher>, ApiError> {
    pairs
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| {
            Matcher::parse(v).ok_or_else(|| bad_request(format!("bad filter matcher {v:?}")))
        })
        .collect()
}

/// The labels Alertmanager shows: the alert's own, plus `alertname` when absent.
fn labels(a: &AlertView) -> serde_json::Map<String, Value> {
    let mut labels: serde_json::Map<String, Value> =
        a.labels().map(|(k, v)| (k.to_string(), json!(v))).collect();
    labels.entry("alertname").or_insert_with(|| json!(a.name()));
    labels
}

fn matches(a: &AlertView, filter: &[Matcher]) -> bool {
    let labels = labels(a);
    filter
        .iter()
        .all(|m| m.matches(labels.get(&m.name).and_then(Value::as_str)))
}

fn gettable(a: &AlertView) -> Value {
    let silenced_by: Vec<&str> = a
        .suppressed_by()
        .and_then(|by| by.strip_prefix("silence "))
        .into_iter()
        .collect();
    let mut annotations: std::collections::BTreeMap<&str, &str> = a.annotations().collect();
    if let Some(summary) = a.summary() {
        annotations.entry("summary").or_insert(summary);
    }
    json!({
        "labels": labels(a),
        "annotations": annotations,
        "receivers": [{"name": RECEIVER}],
        "fingerprint": a.fingerprint.to_string(),
        "startsAt": format_time(a.first_seen),
        "updatedAt": format_time(a.last_seen),
        "endsAt": a.ends_at.map(format_time).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        "generatorURL": a.annotation("generator_url").unwrap_or_default(),
        "status": {
            "state": if a.suppressed().is_some() { "suppressed" } else { "active" },
            "silencedBy": silenced_by,
            "inhibitedBy": [],
            "mutedBy": [],
        },
    })
}

/// `GET /api/v2/alerts`: firing alerts, filtered like Alertmanager.
pub async fn get_alerts(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = pairs(query);
    let (active, silenced) = (flag(&pairs, "active")?, flag(&pairs, "silenced")?);
    let filter = filters(&pairs)?;
    let view = state.shared.view();
    let alerts: Vec<Value> = view
        .current_alerts()
        .into_iter()
        .map(|(a, _)| a)
        .filter(|a| a.status == Status::Firing)
        .filter(|a| {
            if a.suppressed().is_some() {
                silenced
            } else {
                active
            }
        })
        .filter(|a| matches(a, &filter))
        .map(gettable)
        .collect();
    Ok(Json(alerts).into_response())
}

/// `GET /api/v2/alerts/groups`: one group per open incident.
pub async fn get_groups(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = filters(&pairs(query))?;
    let view = state.shared.view();
    let (_, open) = view.list(None, 0, usize::MAX);
    let groups: Vec<Value> = open
        .iter()
        .filter(|i| i.state != crate::engine::IncidentState::Resolved)
        .filter_map(|i| {
            let alerts: Vec<Value> = i
                .alerts
                .iter()
                .filter(|a| a.status == Status::Firing && matches(a, &filter))
                .map(|a| gettable(a))
                .collect();
            (!alerts.is_empty()).then(|| {
                json!({
                    "labels": {"incident": i.id.to_string(), "priority": i.priority.as_str()},
                    "receiver": {"name": RECEIVER},
                    "alerts": alerts,
                })
            })
        })
        .collect();
    Ok(Json(groups).into_response())
}

pub async fn get_status(State(state): State<AppState>) -> Response {
    Json(json!({
        "cluster": {"name": "incidentd", "status": "ready", "peers": []},
        "versionInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "revision": "", "branch": "", "buildUser": "", "buildDate": "",
            "goVersion": "none (incidentd is written in Rust)",
        },
        "config": {"original": "# incidentd: see its rules directory\n"},
        "uptime": format_time(state.started_at),
    }))
    .into_response()
}

pub async fn get_receivers() -> Response {
    Json(json!([{"name": RECEIVER}])).into_response()
}

fn gettable_silence(s: &Silence) -> Value {
    json!({
        "id": s.id,
        "status": {"state": s.state(clock::now())},
        "updatedAt": format_time(s.updated_at),
        "matchers": s.matchers,
        "startsAt": format_time(s.starts_at),
        "endsAt": format_time(s.ends_at),
        "createdBy": s.created_by,
        "comment": s.comment,
    })
}

pub async fn get_silences(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = filters(&pairs(query))?;
    let view = state.shared.view();
    // A filter keeps silences having a matcher equal to each filter matcher, as amtool
    // queries them.
    let list: Vec<Value> = view
        .silences
        .values()
        .filter(|s| filter.iter().all(|f| s.matchers.contains(f)))
        .map(gettable_silence)
        .collect();
    Ok(Json(list).into_response())
}

pub async fn get_silence(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = state.shared.view();
    let s = view
        .silences
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("silence {id} not found")))?;
    Ok(Json(gettable_silence(s)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableSilence {
    id: Option<String>,
    matchers: Vec<Matcher>,
    starts_at: String,
    ends_at: String,
    created_by: String,
    comment: String,
}

pub async fn post_silence(
    State(state): State<AppState>,
    body: Result<Json<PostableSilence>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    let time = |field: &str, v: &str| {
        parse_time(v).ok_or_else(|| bad_request(format!("{field} {v:?} is not an RFC 3339 time")))
    };
    let spec = SilenceRequest {
        replaces: body.id.filter(|id| !id.is_empty()),
        matchers: body.matchers,
        starts_at: time("startsAt", &body.starts_at)?,
        ends_at: time("endsAt", &body.ends_at)?,
        created_by: body.created_by,
        comment: body.comment,
    };
    let id = state.pipeline.silence(spec, clock::now()).await?;
    Ok(Json(json!({ "silenceID": id })).into_response())
}

pub async fn delete_silence(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.pipeline.expire_silence(id, clock::now()).await?;
    Ok(StatusCode::OK.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_filters_and_percent_encoding() {
        let p = pairs(Some(
            "filter=alertname%3D%22Disk+Full%22&filter=job%3D~%22n.*%22&active=false".into(),
        ));
        assert_eq!(p.len(), 3);
        let f = filters(&p).expect("filters");
        assert_eq!(f[0].value, "Disk Full");
        assert!(f[1].is_regex);
        assert!(!flag(&p, "active").expect("flag"));
        assert!(flag(&p, "silenced").expect("default true"));
    }
}
