//! The NOC web console: its static files (embedded in the binary, so `incidentd serve` is all
//! a NOC needs), the live stream of incident changes, and the endpoints the console pages
//! through so an alert storm never has to fit in one response.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, AppState, JsonBody, Page, bad_request, json_body, parse_id};
use crate::clock;
use crate::pipeline::{Action, Shared};
use crate::stream::{Event, Start};
use crate::view::{AlertView, TimelineEntry};

/// Longest comment accepted, in bytes.
pub const MAX_COMMENT: usize = 4096;
/// Most nodes a topology picture may ask for.
const MAX_PICTURE: usize = 200;
/// Most alerts or timeline entries one page may hold.
const MAX_ROWS: usize = 1000;
/// Live events a stream folds together when a client is behind (latest per incident).
const COALESCE: usize = 2048;
/// How long a browser waits before reconnecting a dropped stream.
const RETRY: Duration = Duration::from_secs(2);

/// No inline script or style, nothing from elsewhere, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

/// The console's files, served from the binary.
const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        body: include_bytes!("console/index.html"),
        content_type: "text/html; charset=utf-8",
    },
    Asset {
        path: "app.js",
        body: include_bytes!("console/app.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        path: "vlist.js",
        body: include_bytes!("console/vlist.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        path: "topology.js",
        body: include_bytes!("console/topology.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        path: "style.css",
        body: include_bytes!("console/style.css"),
        content_type: "text/css; charset=utf-8",
    },
    Asset {
        path: "favicon.svg",
        body: include_bytes!("console/favicon.svg"),
        content_type: "image/svg+xml",
    },
];

pub fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { asset("index.html", &headers) }))
        .route(
            "/console/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                asset(&file, &headers)
            }),
        )
        .route(
            "/favicon.ico",
            get(|headers: HeaderMap| async move { asset("favicon.svg", &headers) }),
        )
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/incidents/summary", get(summary))
        .route("/api/v1/incidents/{id}/alerts", get(alerts))
        .route("/api/v1/incidents/{id}/timeline", get(timeline))
        .route("/api/v1/incidents/{id}/topology", get(topology))
        .route("/api/v1/incidents/{id}/comment", post(comment))
}

/// One embedded file, with a content hash as `ETag` so a reload revalidates cheaply.
fn asset(name: &str, headers: &HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.path == name) else {
        return ApiError::NotFound(format!("no console file {name:?}")).into_response();
    };
    let etag = format!("\"{:08x}-{:x}\"", crc32c::crc32c(a.body), a.body.len());
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = response.headers_mut();
    let static_headers = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in static_headers {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Resume after this sequence (what `Last-Event-ID` says on a reconnect; a page that
    /// just loaded the list passes the list's `seq`).
    after: Option<u64>,
}

/// `GET /api/v1/stream`: Server-Sent Events, one per durable fact that changed an incident.
/// `id` is the fact's log sequence; `data` is `{"seq", "kind", "incident", "summary"}` (plus
/// `merged` for a merge). Named events: `hello` first, `reset` when the client must refetch.
async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let header_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    bad_request("Last-Event-ID must be a fact sequence number".into())
                })?,
        ),
    };
    let after = header_id.or(q.after);
    let sub = state.shared.stream.subscribe(after);
    let mut pending = VecDeque::new();
    let last = match sub.start {
        Start::Reset => {
            pending.push_back(reset_event(
                sub.head,
                "the events after your last id are no longer held",
            ));
            sub.head
        }
        Start::Replay(events) => {
            let hello = SseEvent::default()
                .event("hello")
                .retry(RETRY)
                .data(json!({"head": sub.head, "replayed": events.len()}).to_string());
            // A fresh client resumes from here if it drops before any event arrives.
            pending.push_back(match after {
                None => hello.id(sub.head.to_string()),
                Some(_) => hello,
            });
            let last = events.last().map_or(after.unwrap_or(sub.head), |e| e.seq);
            pending.extend(events.iter().map(|e| sse_event(e)));
            last.max(sub.head)
        }
    };
    let cursor = Cursor {
        pending,
        live: sub.live,
        closed: sub.closed,
        last,
        shared: state.shared.clone(),
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        let event = c.next().await?;
        Some((Ok(event), c))
    });
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

fn sse_event(e: &Event) -> SseEvent {
    SseEvent::default().id(e.seq.to_string()).data(e.data())
}

fn reset_event(head: u64, reason: &str) -> SseEvent {
    SseEvent::default()
        .event("reset")
        .id(head.to_string())
        .retry(RETRY)
        .data(json!({"head": head, "reason": reason}).to_string())
}

/// One client's position in the stream.
struct Cursor {
    pending: VecDeque<SseEvent>,
    live: tokio::sync::broadcast::Receiver<Arc<Event>>,
    closed: tokio::sync::watch::Receiver<bool>,
    /// The last sequence sent (or covered by a reset).
    last: u64,
    shared: Arc<Shared>,
}

impl Cursor {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if *self.closed.borrow() {
                return None;
            }
            let received = tokio::select! {
                biased;
                _ = self.closed.changed() => return None,
                r = self.live.recv() => r,
            };
            match received {
                Ok(e) => self.take_live(e),
                Err(RecvError::Lagged(_)) => {
                    let head = self.shared.stream.head();
                    self.last = head;
                    return Some(reset_event(head, "this client fell behind the live stream"));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Queues `first` and whatever else is already waiting, keeping only the latest event per
    /// incident (merges always), so a client behind in a storm catches up with less to do.
    fn take_live(&mut self, first: Arc<Event>) {
        let mut batch = vec![first];
        while batch.len() < COALESCE {
            match self.live.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut keep = vec![true; batch.len()];
        let mut seen = std::collections::HashSet::new();
        for (i, e) in batch.iter().enumerate().rev() {
            if e.merged.is_none() && !seen.insert(e.incident) {
                keep[i] = false;
            }
        }
        for (e, keep) in batch.iter().zip(keep) {
            if keep && e.seq > self.last {
                self.last = e.seq;
                self.pending.push_back(sse_event(e));
            }
        }
    }
}

/// Counts per state and priority, and the services and owner groups to filter by.
async fn summary(State(state): State<AppState>) -> Response {
    let counts = state.shared.view().counts();
    Json(counts).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RowsQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    /// Alerts: words to match in name, CI, source, summary or reason.
    q: Option<String>,
    /// Alerts: `attached` (default), `severity`, `count`, `last_seen`. Timeline: `asc`
    /// (default) or `desc`.
    sort: Option<String>,
}

/// `GET /api/v1/incidents/{id}/alerts`: the member alerts, a page at a time.
async fn alerts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<RowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let id = parse_id(&id)?;
    let view = state.shared.view();
    let inc = view
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))?;
    let words: Vec<String> =
        q.q.as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
    let matches = |a: &AlertView| {
        if words.is_empty() {
            return true;
        }
        let hay = format!(
            "{} {} {} {} {}",
            a.name(),
            a.ci().unwrap_or(""),
            a.source(),
            a.summary().unwrap_or(""),
            a.reason()
        )
        .to_lowercase();
        words.iter().all(|w| hay.contains(w.as_str()))
    };
    let mut rows: Vec<&AlertView> = inc
        .alerts
        .iter()
        .map(|a| &**a)
        .filter(|a| matches(a))
        .collect();
    match q.sort.as_deref() {
        None | Some("") | Some("attached") => {}
        Some("severity") => rows.sort_by_key(|a| std::cmp::Reverse(a.severity)),
        Some("count") => rows.sort_by_key(|a| std::cmp::Reverse(a.count)),
        Some("last_seen") => rows.sort_by_key(|a| std::cmp::Reverse(a.last_seen)),
        Some(other) => {
            return Err(bad_request(format!(
                "sort must be attached, severity, count or last_seen, got {other:?}"
            )));
        }
    }
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(100).min(MAX_ROWS));
    let page = Page {
        total: rows.len(),
        offset,
        limit,
        seq: Some(view.last_seq),
        items: rows
            .into_iter()
            .skip(offset)
            .take(limit)
            .collect::<Vec<_>>(),
    };
    Ok(Json(page).into_response())
}

/// `GET /api/v1/incidents/{id}/timeline`: the incident's facts, a page at a time.
async fn timeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<RowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    if q.q.is_some() {
        return Err(bad_request("the timeline takes no `q`".into()));
    }
    let id = parse_id(&id)?;
    let view = state.shared.view();
    let inc = view
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))?;
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(100).min(MAX_ROWS));
    let items: Vec<&TimelineEntry> = match q.sort.as_deref() {
        None | Some("") | Some("asc") => inc.timeline.iter().skip(offset).take(limit).collect(),
        Some("desc") => inc.timeline.iter().rev().skip(offset).take(limit).collect(),
        Some(other) => {
            return Err(bad_request(format!(
                "sort must be asc or desc, got {other:?}"
            )));
        }
    };
    let page = Page {
        total: inc.timeline.len(),
        offset,
        limit,
        seq: Some(view.last_seq),
        items,
    };
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyQuery {
    max_nodes: Option<usize>,
}

/// `GET /api/v1/incidents/{id}/topology`: root cause, affected CIs, impacted services and the
/// CMDB between them, as nodes and edges for the console to draw.
async fn topology(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<TopologyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let id = parse_id(&id)?;
    let view = state.shared.view();
    let inc = view
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))?;
    let max = q.max_nodes.unwrap_or(120).clamp(1, MAX_PICTURE);
    Ok(Json(crate::picture::build(inc, &view.topology, max)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    #[serde(alias = "by")]
    actor: String,
    text: String,
}

/// `POST /api/v1/incidents/{id}/comment` `{"actor", "text"}`: a note in the incident's
/// history, recorded as an `incident_commented` fact; answers the incident's summary.
async fn comment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<CommentBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let body = json_body(body).map_err(|e| match e {
        ApiError::BadRequest { message, .. } => bad_request(format!(
            "{message} (expected {{\"actor\": \"who\", \"text\": \"what\"}})"
        )),
        other => other,
    })?;
    let actor = body.actor.trim();
    if actor.is_empty() || actor.len() > 256 {
        return Err(bad_request(
            "`actor` must name who comments (1 to 256 bytes)".into(),
        ));
    }
    let text = body.text.trim();
    if text.is_empty() {
        return Err(bad_request("`text` is empty; a comment needs words".into()));
    }
    if text.len() > MAX_COMMENT {
        return Err(bad_request(format!(
            "`text` is {} bytes; a comment may have at most {MAX_COMMENT}",
            text.len()
        )));
    }
    state
        .pipeline
        .operator(
            Action::Comment,
            clock::now(),
            id,
            actor.to_string(),
            Some(text.to_string()),
        )
        .await?;
    let view = state.shared.view();
    let inc = view
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))?;
    Ok(Json(inc.summary(&view.topology)).into_response())
}
