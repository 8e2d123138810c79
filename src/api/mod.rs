//! HTTP API (CONTRACTS §5): alert ingest, incidents, operator actions, health and metrics.
//!
//! Ingest answers 2xx only after the alerts' facts are durable. Batches follow Alertmanager's
//! partial-acceptance rule: valid items are accepted, and if any item was rejected the answer
//! is 400 listing each rejected index and field, with the accepted count. Overload is shed
//! explicitly: when the engine's queue stays full for `engine.shed_after`, the request gets
//! 429 with `Retry-After` and nothing of it was stored (counted in `incidentd_alerts_shed_total`).

mod alertmanager;
mod console;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::{ReloadError, Reloader};
use crate::clock;
use crate::cmdb::{CiSpec, CmdbOp, RelationSpec};
use crate::engine::{CommandError, IncidentId, IncidentState, Priority};
use crate::ingest::{self, Format, ItemError, Limits, Stamp};
use crate::pipeline::{Action, Pipeline, PipelineError, Shared};
use crate::view::{Filter, Sort};

/// Largest page of incidents one request may ask for.
const MAX_PAGE: usize = 500;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    pub shared: Arc<Shared>,
    pub limits: Arc<Limits>,
    pub nats_enabled: bool,
    pub max_body_bytes: usize,
    pub reloader: Arc<Reloader>,
    /// When the service started (Alertmanager's status reports it).
    pub started_at: crate::model::Millis,
}

/// Errors as JSON `{"error": ..., "details": [...]}`; 4xx for the caller, 5xx for us.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        accepted: Option<usize>,
        details: Vec<ItemError>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    /// Overload: nothing was queued; the caller retries after `Retry-After` seconds.
    #[error("{0}")]
    TooBusy(String),
}

/// Seconds a shed caller is asked to wait (`Retry-After` on 429 and 503).
const RETRY_AFTER_BUSY: &str = "1";
const RETRY_AFTER_UNAVAILABLE: &str = "5";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooBusy(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        let retry_after = match &self {
            ApiError::TooBusy(_) => Some(RETRY_AFTER_BUSY),
            ApiError::Unavailable(_) => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        };
        let mut body = json!({ "error": self.to_string(), "details": [] });
        if let ApiError::BadRequest {
            accepted, details, ..
        } = &self
        {
            body["details"] = json!(details);
            if let Some(n) = accepted {
                body["accepted"] = json!(n);
            }
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static(secs));
        }
        response
    }
}

/// An incident id the read model does not hold: never opened, or closed after
/// `lifecycle.close_after` resolved and quiet (its history is in the event log).
fn not_found(id: IncidentId) -> ApiError {
    ApiError::NotFound(format!(
        "incident {id} not found (resolved incidents are closed and leave memory after the rules' lifecycle.close_after; the event log keeps their history, see `incidentd export`)"
    ))
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Command(CommandError::NotFound(id)) => not_found(id),
            PipelineError::Command(e @ CommandError::AlreadyResolved(_)) => {
                ApiError::Conflict(e.to_string())
            }
            PipelineError::Command(e @ CommandError::SilenceNotFound(_)) => {
                ApiError::NotFound(e.to_string())
            }
            PipelineError::Command(
                e @ (CommandError::InvalidCmdb(_) | CommandError::InvalidSilence(_)),
            ) => ApiError::BadRequest {
                message: e.to_string(),
                accepted: None,
                details: Vec::new(),
            },
            // Internals stay in the server log; the caller learns it may retry later.
            PipelineError::LogStopped(_) => {
                ApiError::Unavailable("event log is not writable; alerts were not stored".into())
            }
            PipelineError::LogFull => ApiError::Unavailable(
                "event log cannot write right now; nothing was stored, retry later".into(),
            ),
            PipelineError::Closed => ApiError::Unavailable("incidentd is shutting down".into()),
            PipelineError::Busy => ApiError::TooBusy(
                "ingest queue full: nothing of this request was stored, retry later".into(),
            ),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.max_body_bytes;
    Router::new()
        .route("/api/v1/alerts", post(post_native))
        .route(
            "/api/v2/alerts",
            post(post_alertmanager).get(alertmanager::get_alerts),
        )
        .route("/api/v2/alerts/groups", get(alertmanager::get_groups))
        .route("/api/v2/status", get(alertmanager::get_status))
        .route("/api/v2/receivers", get(alertmanager::get_receivers))
        .route(
            "/api/v2/silences",
            get(alertmanager::get_silences).post(alertmanager::post_silence),
        )
        .route(
            "/api/v2/silence/{id}",
            get(alertmanager::get_silence).delete(alertmanager::delete_silence),
        )
        .route("/api/v1/ingest/{format}", post(post_format))
        .route("/v2/enqueue", post(post_pagerduty))
        .route("/alert", post(post_alerta))
        .route("/api/v1/incidents", get(list_incidents))
        .route("/api/v1/incidents/{id}", get(get_incident_query))
        .route("/api/v1/incidents/{id}/ack", post(ack_incident))
        .route("/api/v1/incidents/{id}/resolve", post(resolve_incident))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/rules/reload", post(reload_rules))
        .route("/api/v1/cmdb/changes", post(cmdb_changes))
        .route(
            "/api/v1/cmdb/cis/{id}",
            get(get_ci).put(put_ci).delete(delete_ci),
        )
        .route(
            "/api/v1/cmdb/relations",
            post(add_relation).delete(remove_relation),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(console::routes())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn post_native(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let accepted = ingest_body(&state, Format::Native, body).await?;
    Ok(Json(json!({ "accepted": accepted })).into_response())
}

/// Any format by its name (`native`, `alertmanager`, `grafana`, `pagerduty`, `alerta`,
/// `inspection`, `cloudevents`), the same tokens as the NATS subjects `alerts.<format>.>`.
/// Headers matter only to CloudEvents, whose binary mode carries attributes in `ce-` headers.
async fn post_format(
    State(state): State<AppState>,
    Path(format): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = Format::from_subject_token(&format).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no format {format:?} (use native, alertmanager, grafana, pagerduty, alerta, inspection or cloudevents)"
        ))
    })?;
    let accepted = ingest_with_headers(&state, format, &headers, body).await?;
    Ok(Json(json!({ "accepted": accepted })).into_response())
}

/// PagerDuty Events API v2 `/v2/enqueue`: 202 with `status`, as PagerDuty answers.
async fn post_pagerduty(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ingest_body(&state, Format::PagerDuty, body).await?;
    let reply = json!({"status": "success", "message": "Event processed"});
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

/// Alerta's `POST /alert`.
async fn post_alerta(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let accepted = ingest_body(&state, Format::Alerta, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "ok", "accepted": accepted})),
    )
        .into_response())
}

/// Alertmanager answers an empty 200; Prometheus and amtool expect nothing more.
async fn post_alertmanager(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ingest_body(&state, Format::Alertmanager, body).await?;
    Ok(StatusCode::OK.into_response())
}

async fn ingest_body(
    state: &AppState,
    format: Format,
    body: Result<Bytes, BytesRejection>,
) -> Result<usize, ApiError> {
    ingest_with_headers(state, format, &HeaderMap::new(), body).await
}

async fn ingest_with_headers(
    state: &AppState,
    format: Format,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<usize, ApiError> {
    let metrics = &state.shared.metrics;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            metrics.rejected("too_large", format.as_str(), 1);
            return ApiError::TooLarge(state.max_body_bytes);
        }
        metrics.rejected("unreadable_body", format.as_str(), 1);
        ApiError::BadRequest {
            message: e.body_text(),
            accepted: None,
            details: Vec::new(),
        }
    })?;
    let headers = headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let decoded = ingest::decode_with_headers(
        format,
        &body,
        headers,
        Stamp::Live(clock::now()),
        &state.limits,
    )
    .map_err(|e| {
        metrics.rejected(e.code, format.as_str(), 1);
        ApiError::BadRequest {
            message: e.message,
            accepted: Some(0),
            details: Vec::new(),
        }
    })?;
    for e in &decoded.errors {
        metrics.rejected(e.code, format.as_str(), 1);
    }
    let total = decoded.alerts.len() + decoded.errors.len();
    if state.shared.log_full.load(Ordering::SeqCst) {
        return Err(PipelineError::LogFull.into());
    }
    let offered = decoded.alerts.len();
    let accepted = if offered == 0 {
        0
    } else {
        // Overload is shed with 429 after a bounded wait, never queued without bound.
        match state.pipeline.offer(decoded.alerts).await {
            Err(PipelineError::Busy) => {
                metrics
                    .alerts_shed
                    .with_label_values(&["http"])
                    .inc_by(offered as u64);
                return Err(PipelineError::Busy.into());
            }
            other => other?,
        }
    };
    if decoded.errors.is_empty() {
        return Ok(accepted);
    }
    Err(ApiError::BadRequest {
        message: format!(
            "{} of {total} alerts rejected; {accepted} accepted",
            decoded.errors.len()
        ),
        accepted: Some(accepted),
        details: decoded.errors,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `open`, `acknowledged`, `resolved`, `active` (open or acknowledged), `all`, or a
    /// comma-separated list.
    state: Option<String>,
    /// `P1`..`P5`, or a comma-separated list.
    priority: Option<String>,
    /// A business service CI id among the impacted services.
    service: Option<String>,
    owner_group: Option<String>,
    /// Free text: every word must occur in the id, title, root CI, rule, group, services or
    /// owner group (case-insensitive).
    q: Option<String>,
    /// `newest` (default), `priority`, `age` (oldest first) or `updated`.
    sort: Option<String>,
    /// `full` (default: the contract's incident with its alerts) or `summary` (no alerts).
    view: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

#[derive(Serialize)]
struct Page<T> {
    total: usize,
    offset: usize,
    limit: usize,
    /// The read model's last fact sequence: follow `GET /api/v1/stream?after=seq` from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    items: Vec<T>,
}

fn parse_states(s: Option<&str>) -> Result<Vec<IncidentState>, ApiError> {
    let mut states = Vec::new();
    for part in s.unwrap_or("").split(',').map(str::trim) {
        match part {
            "" | "all" => {}
            "active" => states.extend([IncidentState::Open, IncidentState::Acknowledged]),
            other => states.push(IncidentState::parse(other).ok_or_else(|| {
                bad_request(format!(
                    "state must be open, acknowledged, resolved, active or all \
                     (or a comma-separated list), got {other:?}"
                ))
            })?),
        }
    }
    if s.is_some_and(|s| s.split(',').any(|p| p.trim() == "all")) {
        states.clear();
    }
    Ok(states)
}

fn parse_priorities(s: Option<&str>) -> Result<Vec<Priority>, ApiError> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            Priority::parse(&p.to_ascii_uppercase()).ok_or_else(|| {
                bad_request(format!(
                    "priority must be P1..P5 (or a comma-separated list), got {p:?}"
                ))
            })
        })
        .collect()
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

async fn list_incidents(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest {
        message: e.body_text(),
        accepted: None,
        details: Vec::new(),
    })?;
    let filter = Filter {
        states: parse_states(q.state.as_deref())?,
        priorities: parse_priorities(q.priority.as_deref())?,
        service: non_empty(q.service),
        owner_group: non_empty(q.owner_group),
        words: q
            .q
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect(),
    };
    let sort = match q.sort.as_deref() {
        None | Some("") => Sort::Newest,
        Some(s) => Sort::parse(s).ok_or_else(|| {
            bad_request(format!(
                "sort must be newest, priority, age or updated, got {s:?}"
            ))
        })?,
    };
    let summary = match q.view.as_deref() {
        None | Some("") | Some("full") => false,
        Some("summary") => true,
        Some(v) => {
            return Err(bad_request(format!(
                "view must be full or summary, got {v:?}"
            )));
        }
    };
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(50).min(MAX_PAGE);
    let view = state.shared.view();
    let (total, incidents) = view.query(&filter, sort, offset, limit);
    let seq = Some(view.last_seq);
    // Serialize under the read lock: views borrow from the model.
    if summary {
        let items = incidents
            .iter()
            .map(|i| i.summary(&view.topology))
            .collect();
        return Ok(Json(Page {
            total,
            offset,
            limit,
            seq,
            items,
        })
        .into_response());
    }
    let items = incidents
        .iter()
        .map(|i| i.doc(&view.topology, false))
        .collect();
    Ok(Json(Page {
        total,
        offset,
        limit,
        seq,
        items,
    })
    .into_response())
}

fn parse_id(id: &str) -> Result<IncidentId, ApiError> {
    IncidentId::parse(id)
        .ok_or_else(|| ApiError::NotFound(format!("no incident {id:?} (ids look like INC-000042)")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailQuery {
    /// `full` (default: alerts and timeline) or `summary` (neither; page them through
    /// `/alerts` and `/timeline`).
    view: Option<String>,
}

async fn get_incident_query(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DetailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    match q.view.as_deref() {
        None | Some("") | Some("full") => get_incident(State(state), Path(id)).await,
        Some("summary") => {
            let id = parse_id(&id)?;
            let view = state.shared.view();
            let incident = view.get(id).ok_or_else(|| not_found(id))?;
            Ok(Json(incident.summary(&view.topology)).into_response())
        }
        Some(v) => Err(bad_request(format!(
            "view must be full or summary, got {v:?}"
        ))),
    }
}

async fn get_incident(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let view = state.shared.view();
    let incident = view.get(id).ok_or_else(|| not_found(id))?;
    Ok(Json(incident.doc(&view.topology, true)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Who acts; `actor` is accepted too, as the comment endpoint names it.
    #[serde(alias = "actor")]
    by: String,
    comment: Option<String>,
}

async fn ack_incident(
    state: State<AppState>,
    id: Path<String>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    operator(state, id, body, Action::Acknowledge).await
}

async fn resolve_incident(
    state: State<AppState>,
    id: Path<String>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    operator(state, id, body, Action::Resolve).await
}

async fn operator(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
    action: Action,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest {
        message: format!(
            "{} (expected {{\"by\": \"who\", \"comment\": \"optional\"}})",
            e.body_text()
        ),
        accepted: None,
        details: Vec::new(),
    })?;
    let by = body.by.trim();
    if by.is_empty() || by.len() > 256 {
        return Err(ApiError::BadRequest {
            message: "`by` must name who acts (1 to 256 bytes)".into(),
            accepted: None,
            details: Vec::new(),
        });
    }
    state
        .pipeline
        .operator(action, clock::now(), id, by.to_string(), body.comment)
        .await?;
    get_incident(State(state), Path(id.to_string())).await
}

fn bad_request(message: String) -> ApiError {
    ApiError::BadRequest {
        message,
        accepted: None,
        details: Vec::new(),
    }
}

/// Reloads the rule files; a broken file keeps the old rules and answers 400 with file:line.
async fn reload_rules(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.reloader.reload_rules().await {
        Ok(reloaded) => Ok(Json(reloaded).into_response()),
        Err(ReloadError::Rules(e)) => Err(bad_request(format!(
            "{e} (the previous rules stay in force)"
        ))),
        Err(ReloadError::Pipeline(e)) => Err(e.into()),
    }
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn json_body<T>(body: JsonBody<T>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| bad_request(e.body_text()))
}

async fn apply_cmdb(state: &AppState, ops: Vec<CmdbOp>) -> Result<Response, ApiError> {
    let count = ops.len();
    state
        .pipeline
        .cmdb_change(ops, "http api".into(), clock::now())
        .await?;
    Ok(Json(json!({ "applied": count })).into_response())
}

/// A batch of CMDB operations: `[{"op": "upsert_ci", "ci": {...}}, {"op": "add_relation",
/// "relation": {...}}, ...]`, applied atomically through the engine.
async fn cmdb_changes(
    State(state): State<AppState>,
    body: JsonBody<Vec<CmdbOp>>,
) -> Result<Response, ApiError> {
    let ops = json_body(body)?;
    apply_cmdb(&state, ops).await
}

async fn get_ci(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = state.shared.view();
    let topo = &view.topology;
    let ci = topo
        .index(&id)
        .and_then(|i| topo.ci(i))
        .ok_or_else(|| ApiError::NotFound(format!("CI {id:?} not in the CMDB")))?;
    // An operator's lookup, not a hot path: filtering the whole spec is fine.
    let relations: Vec<RelationSpec> = topo
        .to_spec()
        .relations
        .into_iter()
        .filter(|r| r.from == id || r.to == id)
        .collect();
    Ok(Json(json!({
        "id": ci.id,
        "type": ci.kind,
        "name": ci.name,
        "criticality": ci.criticality,
        "owner_group": ci.owner_group,
        "attrs": ci.attrs,
        "relations": relations,
    }))
    .into_response())
}

async fn put_ci(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<CiSpec>,
) -> Result<Response, ApiError> {
    let ci = json_body(body)?;
    if ci.id != id {
        return Err(bad_request(format!(
            "CI id in the body ({:?}) differs from the path ({id:?})",
            ci.id
        )));
    }
    apply_cmdb(&state, vec![CmdbOp::UpsertCi { ci }]).await
}

async fn delete_ci(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    apply_cmdb(&state, vec![CmdbOp::RemoveCi { id }]).await
}

async fn add_relation(
    State(state): State<AppState>,
    body: JsonBody<RelationSpec>,
) -> Result<Response, ApiError> {
    let relation = json_body(body)?;
    apply_cmdb(&state, vec![CmdbOp::AddRelation { relation }]).await
}

async fn remove_relation(
    State(state): State<AppState>,
    body: JsonBody<RelationSpec>,
) -> Result<Response, ApiError> {
    let relation = json_body(body)?;
    apply_cmdb(&state, vec![CmdbOp::RemoveRelation { relation }]).await
}

/// Per sender: messages, distinct alerts, duplicates, resolutions, suppressions, last seen;
/// the busiest first.
async fn sources(State(state): State<AppState>) -> Response {
    let view = state.shared.view();
    let mut list: Vec<Value> = view
        .sources
        .iter()
        .map(|(source, s)| {
            json!({
                "source": source,
                "messages": s.messages,
                "distinct": s.distinct,
                "duplicates": s.messages.saturating_sub(s.distinct),
                "resolved": s.resolved,
                "suppressed": s.suppressed,
                "last_seen": crate::model::format_time(s.last_seen),
            })
        })
        .collect();
    list.sort_by_key(|v| std::cmp::Reverse(v["messages"].as_u64().unwrap_or(0)));
    Json(list).into_response()
}

/// Prometheus text: the registry, plus per-source series rendered from the read model (so
/// no label value is registered on the hot path).
async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.shared.metrics.render();
    let view = state.shared.view();
    let escape = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    for (name, help, pick) in [
        (
            "incidentd_source_alerts_total",
            "Alert messages accepted per source.",
            0,
        ),
        (
            "incidentd_source_distinct_alerts_total",
            "Distinct alerts per source.",
            1,
        ),
        (
            "incidentd_source_duplicates_total",
            "Duplicate alert messages per source.",
            2,
        ),
    ] {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for (source, s) in &view.sources {
            let value = match pick {
                0 => s.messages,
                1 => s.distinct,
                _ => s.messages.saturating_sub(s.distinct),
            };
            text.push_str(&format!(
                "{name}{{source=\"{}\"}} {value}\n",
                escape(source)
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Ready when the log is writable and, if NATS ingest is on, connected and subscribed.
/// Degraded answers 503 with the reason, so load balancers and humans both understand.
async fn readyz(State(state): State<AppState>) -> Response {
    let s = &state.shared;
    let log = s.log_writable.load(Ordering::SeqCst) && !s.log_full.load(Ordering::SeqCst);
    let nats = if !state.nats_enabled {
        "disabled"
    } else if !s.nats_connected.load(Ordering::SeqCst) {
        "disconnected"
    } else if !s.nats_subscribed.load(Ordering::SeqCst) {
        "subscribing"
    } else {
        "connected"
    };
    let ready = log && matches!(nats, "disabled" | "connected");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "degraded" },
        "log": if !s.log_writable.load(Ordering::SeqCst) {
            "stopped"
        } else if s.log_full.load(Ordering::SeqCst) {
            "full"
        } else {
            "writable"
        },
        "nats": nats,
    });
    (status, Json(body)).into_response()
}
