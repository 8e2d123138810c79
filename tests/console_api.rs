//! The console's API without a browser: the live stream (ids are fact sequences, a reconnect
//! with `Last-Event-ID` gets exactly what it missed, a too-old id gets `reset`), filtered and
//! paged lists, paged alerts and timeline, the topology picture, comments and their
//! validation, and the embedded files with their security headers.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// One Server-Sent Event.
#[derive(Debug)]
struct Ev {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A streaming `GET /api/v1/stream`, parsed event by event.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn connect(d: &Incidentd, last_id: Option<u64>) -> Sse {
        // No overall timeout: the stream is meant to stay open.
        let c = reqwest::Client::new();
        let mut req = c.get(d.url("/api/v1/stream"));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("GET /api/v1/stream");
        assert_eq!(resp.status(), 200);
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (heartbeat comments skipped), or `None` after `secs` of silence.
    async fn next(&mut self, secs: u64) -> Option<Ev> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Ev {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = value.parse().ok(),
                        "event" => ev.event = value.to_string(),
                        "data" => data.push_str(value),
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue; // a comment (heartbeat) or retry-only block
                }
                ev.data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(ev);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(secs), self.resp.chunk())
                .await
                .ok()?
                .expect("stream chunk")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every fact event until `secs` of silence.
    async fn drain(&mut self, secs: u64) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(ev) = self.next(secs).await {
            out.push(ev);
        }
        out
    }
}

fn start(dir: &tempfile::TempDir, stream_buffer: usize) -> Incidentd {
    let config = dir.path().join("incidentd.toml");
    std::fs::write(
        &config,
        format!("[http]\nstream_buffer = {stream_buffer}\n"),
    )
    .expect("config");
    Incidentd::start_with(&dir.path().join("data"), NOWHERE, Some(&config))
}

fn alert(name: &str, ci: &str, severity: &str) -> Value {
    json!({"source": "mon", "name": name, "ci": ci, "severity": severity})
}

/// Sequences of every fact that changed an incident, from the timelines (every such fact
/// leaves a timeline entry when no alert repeats).
async fn timeline_seqs(c: &reqwest::Client, d: &Incidentd) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    for inc in incidents(c, d).await {
        let id = inc["id"].as_str().expect("id");
        let (_, page) = get_json(
            c,
            &d.url(&format!("/api/v1/incidents/{id}/timeline?limit=1000")),
        )
        .await;
        for e in page["items"].as_array().expect("timeline items") {
            seqs.insert(e["seq"].as_u64().expect("seq"));
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_resumes_exactly_and_resets_when_too_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = start(&dir, 64);
    let c = client();

    let mut live = Sse::connect(&d, None).await;
    let hello = live.next(5).await.expect("hello");
    assert_eq!(hello.event, "hello");
    let head = hello.id.expect("a fresh client gets the head as its id");

    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &alert("LinkDown", "edge-1", "critical"),
    )
    .await;
    assert_eq!(status, 200);
    let first = live.next(10).await.expect("an event for the new incident");
    assert_eq!(first.event, "message");
    let k = first.id.expect("fact events carry the fact sequence");
    assert!(k > head);
    assert_eq!(first.data["seq"], k);
    assert_eq!(first.data["incident"], "INC-000001");
    assert_eq!(first.data["summary"]["id"], "INC-000001");
    assert!(
        first.data["summary"].get("alerts").is_none(),
        "events carry the summary, not every alert"
    );
    let seen = live.drain(1).await;
    let mut ids: Vec<u64> = std::iter::once(k)
        .chain(seen.iter().filter_map(|e| e.id))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "increasing: {ids:?}");
    drop(live);

    // While disconnected: another alert in the same incident, an ack, a comment, a new one.
    post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &alert("PortErrors", "edge-1", "major"),
    )
    .await;
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/incidents/INC-000001/ack"),
        &json!({"actor": "ana"}),
    )
    .await;
    assert_eq!(status, 200, "ack takes `actor` as well as `by`");
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/incidents/INC-000001/comment"),
        &json!({"actor": "ana", "text": "switch team paged"}),
    )
    .await;
    assert_eq!(status, 200);
    post_json(
        &c,
        &d.url("/api/v1/alerts"),
        &alert("DiskFull", "db-9", "warning"),
    )
    .await;

    let truth: Vec<u64> = timeline_seqs(&c, &d)
        .await
        .into_iter()
        .filter(|&s| s > k)
        .collect();
    let mut resumed = Sse::connect(&d, Some(k)).await;
    let hello = resumed.next(5).await.expect("hello");
    assert_eq!(hello.event, "hello");
    assert_eq!(hello.data["replayed"], truth.len());
    let replay = resumed.drain(1).await;
    ids = replay.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, truth, "exactly the missed events, in order");
    let kinds: Vec<&str> = replay
        .iter()
        .filter_map(|e| e.data["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"incident_acknowledged"), "{kinds:?}");
    assert!(kinds.contains(&"incident_commented"), "{kinds:?}");
    let ack = replay
        .iter()
        .find(|e| e.data["kind"] == "incident_acknowledged")
        .expect("ack event");
    assert_eq!(ack.data["summary"]["acknowledged_by"], "ana");

    // The same resumption again gives the same events (the ring, not the live channel).
    let mut again = Sse::connect(&d, Some(k)).await;
    again.next(5).await.expect("hello");
    let again_ids: Vec<u64> = again.drain(1).await.iter().filter_map(|e| e.id).collect();
    assert_eq!(again_ids, truth);

    // Push the ring (64 events) past k: 30 unrelated alerts, each its own incident.
    let storm: Vec<Value> = (0..30)
        .map(|i| alert(&format!("Check{i}"), &format!("lonely-{i}"), "info"))
        .collect();
    let (status, body) = post_json(&c, &d.url("/api/v1/alerts"), &json!(storm)).await;
    assert_eq!(status, 200, "{body}");
    let mut old = Sse::connect(&d, Some(k)).await;
    let reset = old.next(5).await.expect("reset");
    assert_eq!(reset.event, "reset");
    let new_head = reset.id.expect("reset carries the head to resume from");
    assert!(new_head > k);
    assert!(reset.data["reason"].as_str().is_some());

    let mut future = Sse::connect(&d, Some(new_head + 1_000_000)).await;
    assert_eq!(
        future.next(5).await.expect("reset").event,
        "reset",
        "an id this log never gave out"
    );

    // A malformed id is the caller's mistake.
    let r = c
        .get(d.url("/api/v1/stream"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_sort_and_page_and_comments_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = start(&dir, 1024);
    let c = client();

    // Three incidents: a P-high one on the payments app (a business service), a low one,
    // and one with 30 alerts (same CI: one group).
    let mut batch = vec![
        alert("ErrorRate", "app-pay-api", "critical"),
        alert("Backup", "lonely-1", "info"),
    ];
    batch.extend((0..30).map(|i| alert(&format!("Sensor{i:02}"), "lonely-2", "warning")));
    let (status, body) = post_json(&c, &d.url("/api/v1/alerts"), &json!(batch)).await;
    assert_eq!(status, 200, "{body}");

    let (status, page) = get_json(&c, &d.url("/api/v1/incidents?limit=2")).await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert!(page["items"][0]["alerts"].is_array(), "the contract shape");
    assert!(page["seq"].as_u64().is_some_and(|s| s > 0));
    let (_, rest) = get_json(&c, &d.url("/api/v1/incidents?limit=2&offset=2")).await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));

    let (_, summary) = get_json(&c, &d.url("/api/v1/incidents?view=summary&sort=priority")).await;
    let items = summary["items"].as_array().expect("items");
    assert!(items.iter().all(|i| i.get("alerts").is_none()));
    let prios: Vec<&str> = items
        .iter()
        .filter_map(|i| i["priority"].as_str())
        .collect();
    let mut sorted = prios.clone();
    sorted.sort();
    assert_eq!(prios, sorted, "most urgent first");
    let pay = items
        .iter()
        .find(|i| i["root_cause"]["ci"] == "app-pay-api")
        .expect("payments incident");
    let pay_id = pay["id"].as_str().expect("id").to_string();
    let service = pay["impacted_services"][0]
        .as_str()
        .expect("a business service")
        .to_string();
    let big = items
        .iter()
        .find(|i| i["alert_count"] == 30)
        .expect("the 30-alert incident");
    let big_id = big["id"].as_str().expect("id").to_string();
    assert_eq!(big["firing_count"], 30);

    let (_, aged) = get_json(&c, &d.url("/api/v1/incidents?view=summary&sort=age")).await;
    assert_eq!(aged["items"][0]["id"], "INC-000001", "oldest first");

    let one = |q: &str| d.url(&format!("/api/v1/incidents?view=summary&{q}"));
    let (_, by_service) = get_json(&c, &one(&format!("service={service}"))).await;
    assert_eq!(by_service["total"], 1);
    assert_eq!(by_service["items"][0]["id"], pay_id.as_str());
    let (_, by_text) = get_json(&c, &one("q=LONELY-2")).await;
    assert_eq!(by_text["total"], 1, "free text is case-insensitive");
    let (_, by_prio) = get_json(
        &c,
        &one(&format!(
            "priority={}",
            pay["priority"].as_str().expect("p")
        )),
    )
    .await;
    assert!(
        by_prio["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["id"] == pay_id.as_str())
    );
    let (_, active) = get_json(&c, &one("state=active")).await;
    assert_eq!(active["total"], 3);
    let (_, resolved) = get_json(&c, &one("state=resolved")).await;
    assert_eq!(resolved["total"], 0);
    for (q, needle) in [
        ("sort=loudest", "sort must be"),
        ("state=burning", "state must be"),
        ("priority=P9", "priority must be"),
    ] {
        let (status, err) = get_json(&c, &one(q)).await;
        assert_eq!(status, 400, "{q}");
        assert!(
            err["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{q}: {err}"
        );
    }

    let (status, err) = get_json(&c, &d.url("/api/v1/incidents?view=everything")).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("view must be"))
    );

    let (status, counts) = get_json(&c, &d.url("/api/v1/incidents/summary")).await;
    assert_eq!(status, 200);
    assert_eq!(counts["total"], 3);
    assert_eq!(counts["by_state"]["open"], 3);
    let open_sum: u64 = counts["by_state_priority"]["open"]
        .as_object()
        .expect("per priority")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(open_sum, 3);
    assert!(
        counts["services"]
            .as_array()
            .expect("services")
            .iter()
            .any(|s| s == service.as_str())
    );

    // Member alerts, a page at a time; the timeline too.
    let (status, alerts) = get_json(
        &c,
        &d.url(&format!(
            "/api/v1/incidents/{big_id}/alerts?limit=10&offset=10"
        )),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(alerts["total"], 30);
    assert_eq!(alerts["items"].as_array().map(Vec::len), Some(10));
    assert_eq!(alerts["items"][0]["name"], "Sensor10");
    assert!(alerts["items"][0]["reason"].is_string());
    assert!(alerts["items"][0]["first_seen"].is_string());
    let (_, found) = get_json(
        &c,
        &d.url(&format!("/api/v1/incidents/{big_id}/alerts?q=sensor29")),
    )
    .await;
    assert_eq!(found["total"], 1);
    let (_, tl) = get_json(
        &c,
        &d.url(&format!(
            "/api/v1/incidents/{big_id}/timeline?limit=5&sort=desc"
        )),
    )
    .await;
    assert_eq!(tl["items"].as_array().map(Vec::len), Some(5));
    let (_, detail) = get_json(
        &c,
        &d.url(&format!("/api/v1/incidents/{big_id}?view=summary")),
    )
    .await;
    assert_eq!(detail["alert_count"], 30);
    assert!(detail.get("timeline").is_none());

    // Comments: validated, recorded as facts with the actor, shown in the timeline.
    let comment_url = d.url(&format!("/api/v1/incidents/{pay_id}/comment"));
    for (body, status, needle) in [
        (
            json!({"actor": "ana", "text": "   "}),
            400,
            "`text` is empty",
        ),
        (
            json!({"actor": "ana", "text": "x".repeat(5000)}),
            400,
            "at most 4096",
        ),
        (json!({"actor": "", "text": "hi"}), 400, "`actor` must name"),
        (json!({"text": "hi"}), 400, "expected {\"actor\""),
        (
            json!({"actor": "ana", "text": "hi", "extra": 1}),
            400,
            "unknown field",
        ),
    ] {
        let (got, err) = post_json(&c, &comment_url, &body).await;
        assert_eq!(got, status, "{body}: {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{body}: {err}"
        );
    }
    let (status, _) = post_json(
        &c,
        &d.url("/api/v1/incidents/INC-000999/comment"),
        &json!({"actor": "ana", "text": "hi"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, answer) = post_json(
        &c,
        &comment_url,
        &json!({"actor": "ana", "text": "  payments team on the bridge  "}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], pay_id.as_str());
    let (_, full) = get_json(&c, &d.url(&format!("/api/v1/incidents/{pay_id}"))).await;
    let last = full["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .expect("timeline");
    assert_eq!(last["event"], "incident_commented");
    assert_eq!(last["text"], "payments team on the bridge");
    assert_eq!(last["by"], "ana");
    assert_eq!(full["state"], "open", "a comment changes no state");

    // The topology picture of the payments incident.
    let (status, pic) = get_json(&c, &d.url(&format!("/api/v1/incidents/{pay_id}/topology"))).await;
    assert_eq!(status, 200);
    assert_eq!(pic["root"], "app-pay-api");
    let nodes = pic["nodes"].as_array().expect("nodes");
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == "app-pay-api" && n["role"] == "root")
    );
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == service.as_str() && n["role"] == "service")
    );
    assert!(!pic["edges"].as_array().expect("edges").is_empty());

    // The console's files: right types, strict CSP, revalidation by ETag.
    let r = c.get(d.url("/")).send().await.expect("GET /");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(
        h["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/html"))
    );
    let csp = h["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let body = r.text().await.expect("html");
    assert!(body.contains("/console/app.js"));
    assert!(!body.contains("<script>"), "no inline script");
    let r = c
        .get(d.url("/console/app.js"))
        .send()
        .await
        .expect("GET app.js");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/javascript"))
    );
    let etag = r.headers()["etag"].clone();
    let r = c
        .get(d.url("/console/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET app.js again");
    assert_eq!(r.status(), 304);
    let r = c.get(d.url("/console/nope.js")).send().await.expect("GET");
    assert_eq!(r.status(), 404);
}
