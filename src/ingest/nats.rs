//! NATS ingest: subscribes to `alerts.>`, decodes by the subject's format token, hands valid
//! alerts to the engine and republishes rejected messages to the dead-letter subject with the
//! reason in a header.
//!
//! Core NATS has no acknowledgement, so alerts are queued to the engine without waiting for
//! durability. Room in the engine's queue is reserved before a chunk is decoded; when the
//! queue stays full for `engine.shed_after`, the chunk is dropped undecoded and counted
//! (`incidentd_nats_messages_shed_total`), so overload costs little and memory stays bounded.
//! Should this task still fall behind, the client's subscription buffer overflows and the
//! client reports a slow consumer (counted in `incidentd_nats_events_total`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::clock;
use crate::cmdb::CmdbOp;
use crate::ingest::{self, Format, Limits, Stamp};
use crate::pipeline::{Pipeline, PipelineError, Shared};

/// Header naming why a dead-lettered message was rejected.
pub const REASON_HEADER: &str = "Incidentd-Reject-Reason";
/// Header carrying the subject the rejected message arrived on.
pub const SUBJECT_HEADER: &str = "Incidentd-Original-Subject";
/// Messages decoded together and handed to the engine as one command.
const CHUNK: usize = 256;
/// How long shutdown waits for the server to confirm the subscription is drained.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

pub struct NatsIngest {
    pub client: Client,
    /// The core subscription for alerts; `None` when JetStream ingest takes them.
    pub subject: Option<String>,
    pub deadletter_subject: String,
    /// Live CMDB changes: a JSON array of operations per message.
    pub cmdb_subject: String,
    pub cmdb_deadletter_subject: String,
    pub pipeline: Pipeline,
    pub shared: Arc<Shared>,
    pub limits: Arc<Limits>,
}

impl NatsIngest {
    /// Runs until `shutdown` turns true, then drains what the server already sent.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), NatsError> {
        let subscribe = |subject: String| async {
            self.client
                .subscribe(subject.clone())
                .await
                .map_err(|source| NatsError::Subscribe { subject, source })
        };
        let sub = match &self.subject {
            Some(subject) => Some(subscribe(subject.clone()).await?),
            None => None,
        };
        let cmdb = subscribe(self.cmdb_subject.clone()).await?;
        // After every (re)connect, a flush round-trip proves the server registered the
        // (re-sent) subscription; only then is the service ready, so nothing published after
        // /readyz turned green is missed.
        let client = self.client.clone();
        let shared = self.shared.clone();
        let readiness = tokio::spawn(async move {
            loop {
                shared.nats_reconnected.notified().await;
                while client.flush().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                shared.nats_subscribed.store(true, Ordering::SeqCst);
            }
        });
        let result = self.consume(sub, cmdb, &mut shutdown).await;
        readiness.abort();
        result
    }

    async fn consume(
        &self,
        sub: Option<async_nats::Subscriber>,
        mut cmdb: async_nats::Subscriber,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), NatsError> {
        let Some(sub) = sub else {
            // Alerts come through JetStream; only CMDB changes arrive here.
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return Ok(()),
                    msg = cmdb.next() => match msg {
                        Some(msg) => self.handle_cmdb(msg).await,
                        None => return Ok(()),
                    },
                }
            }
        };
        let mut chunks = sub.ready_chunks(CHUNK);
        let mut shedding = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(msg) = cmdb.next() => self.handle_cmdb(msg).await,
                chunk = chunks.next() => match chunk {
                    Some(messages) => self.handle(messages, &mut shedding).await,
                    None => return Ok(()),
                },
            }
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            // Nothing can be in flight from a server we are not connected to.
            return Ok(());
        }
        if let Err(e) = chunks.get_mut().drain().await {
            tracing::warn!(error = %e, "nats drain request failed");
        }
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(messages) = chunks.next().await {
                self.handle(messages, &mut shedding).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("nats drain timed out; undelivered messages stay with the server");
        }
        Ok(())
    }

    /// `shedding`: the previous chunk found no room. Then this one does not wait: waiting
    /// once per overload episode, not per chunk, lets shedding keep pace with the inflow.
    async fn handle(&self, messages: Vec<Message>, shedding: &mut bool) {
        // Reserve room first: under overload, shedding must cost less than decoding.
        let wait = (!*shedding).then(|| self.pipeline.shed_after());
        let room = match wait {
            Some(_) => self.pipeline.room(messages.len(), wait).await,
            None => self
                .pipeline
                .try_room(messages.len())
                .ok_or(PipelineError::Busy),
        };
        *shedding = matches!(room, Err(PipelineError::Busy));
        let mut room = match room {
            Ok(room) => room,
            Err(PipelineError::Busy) => {
                let m = &self.shared.metrics;
                m.nats_messages_shed.inc_by(messages.len() as u64);
                return;
            }
            Err(_) => {
                tracing::warn!("engine closed while nats ingest was running");
                return;
            }
        };
        let reserved = messages.len();
        let now = clock::now();
        let mut alerts = Vec::new();
        for msg in messages {
            let subject = msg.subject.as_str();
            if subject == self.deadletter_subject {
                continue; // our own output, inside `alerts.>`
            }
            let token = subject.split('.').nth(1).unwrap_or("");
            let Some(format) = Format::from_subject_token(token) else {
                let reason = format!(
                    "unknown_format: subject {subject:?} names no known format (use alerts.<native|alertmanager|grafana|pagerduty|alerta|inspection|cloudevents>.>)"
                );
                self.reject(&msg, "unknown_format", "unknown", reason).await;
                continue;
            };
            match ingest::decode_with_headers(
                format,
                &msg.payload,
                message_headers(&msg),
                Stamp::Live(now),
                &self.limits,
            ) {
                Err(e) => {
                    let reason = format!("{}: {}", e.code, e.message);
                    self.reject(&msg, e.code, format.as_str(), reason).await;
                }
                Ok(decoded) => {
                    alerts.extend(decoded.alerts);
                    if let Some(first) = decoded.errors.first() {
                        for e in &decoded.errors[1..] {
                            self.shared.metrics.rejected(e.code, format.as_str(), 1);
                        }
                        let reason = decoded
                            .errors
                            .iter()
                            .map(|e| format!("{}: alert {}: {}", e.code, e.index, e.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        self.reject(&msg, first.code, format.as_str(), reason).await;
                    }
                }
            }
        }
        if alerts.is_empty() {
            return;
        }
        if alerts.len() > reserved {
            // Messages holding arrays: room for the extra alerts, or the chunk is shed.
            let wait = Some(self.pipeline.shed_after());
            match self.pipeline.room(alerts.len() - reserved, wait).await {
                Ok(extra) => room.merge(extra),
                Err(_) => {
                    let m = &self.shared.metrics;
                    m.alerts_shed
                        .with_label_values(&["nats"])
                        .inc_by(alerts.len() as u64);
                    return;
                }
            }
        }
        if self.pipeline.enqueue_with(alerts, room).await.is_err() {
            tracing::warn!("engine closed while nats ingest was running");
        }
    }

    /// Applies one message of CMDB operations through the engine; a malformed or invalid
    /// change goes to the CMDB dead letter with the reason, and changes nothing.
    async fn handle_cmdb(&self, msg: Message) {
        if msg.subject.as_str() == self.cmdb_deadletter_subject {
            return;
        }
        let ops: Vec<CmdbOp> = match serde_json::from_slice(&msg.payload) {
            Ok(ops) => ops,
            Err(e) => {
                let reason = format!("malformed_json: expected an array of CMDB operations: {e}");
                self.dead_letter(&msg, &self.cmdb_deadletter_subject, reason)
                    .await;
                return;
            }
        };
        let source = format!("nats {}", msg.subject);
        if let Err(e) = self.pipeline.cmdb_change(ops, source, clock::now()).await {
            self.dead_letter(
                &msg,
                &self.cmdb_deadletter_subject,
                format!("rejected: {e}"),
            )
            .await;
        }
    }

    /// Counts a rejection and republishes the message, untouched, to the dead letter.
    async fn reject(&self, msg: &Message, code: &'static str, format: &str, reason: String) {
        self.shared.metrics.rejected(code, format, 1);
        self.dead_letter(msg, &self.deadletter_subject, reason)
            .await;
    }

    async fn dead_letter(&self, msg: &Message, subject: &str, reason: String) {
        let mut headers = HeaderMap::new();
        // Header values are single-line and bounded.
        let mut reason: String = reason.replace(['\r', '\n'], " ");
        if reason.len() > 1024 {
            let mut end = 1024;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        headers.insert(REASON_HEADER, reason.as_str());
        headers.insert(SUBJECT_HEADER, msg.subject.as_str());
        match self
            .client
            .publish_with_headers(subject.to_string(), headers, msg.payload.clone())
            .await
        {
            Ok(()) => self.shared.metrics.deadletter_published.inc(),
            Err(e) => tracing::warn!(error = %e, "dead-letter publish failed"),
        }
    }
}

/// A message's headers as name/value pairs, for decoders that read them (CloudEvents binary
/// mode). A header sent twice contributes its first value.
pub(crate) fn message_headers(msg: &Message) -> impl Iterator<Item = (&str, &str)> {
    msg.headers
        .iter()
        .flat_map(|headers| headers.iter())
        .filter_map(|(name, values)| Some((name.as_ref(), values.first()?.as_str())))
}
