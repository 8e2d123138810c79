//! Durable ingest from JetStream: a stream captures `alerts.>`, and a durable pull consumer
//! feeds the engine. A message is acknowledged only after the facts it caused are fsynced, so
//! a crash of incidentd or of a NATS server loses nothing: unacknowledged messages are
//! redelivered, and the stream's duplicate window drops re-publishes carrying the same
//! `Nats-Msg-Id`. A redelivery of a message already in the log (its acknowledgement was lost
//! with a server) is recognised by its stream sequence, recorded in `stream_consumed` facts,
//! and acknowledged without being ingested twice. A message that cannot be decoded is poison: it goes to the dead letter with
//! the reason and is terminated at once; one the engine could not store is redelivered, and
//! dead-lettered when its deliveries reach `max_deliver`.
//!
//! The servers must run with `sync_interval: always` (see `deploy/nats-server.conf`), or an
//! acknowledged publish can be lost on power failure.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::clock;
use crate::ingest::nats::{REASON_HEADER, SUBJECT_HEADER};
use crate::ingest::{self, Format, Limits, Stamp};
use crate::pipeline::{Pipeline, Shared};

/// Messages taken together into one engine command (and one group commit).
const CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("creating consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
}

/// Where the stream and consumer live and how patient redelivery is.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    pub stream: String,
    pub subjects: Vec<String>,
    pub consumer: String,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    pub duplicate_window: Duration,
}

pub struct JetStreamIngest {
    pub client: async_nats::Client,
    pub config: JetStreamConfig,
    pub deadletter_subject: String,
    pub pipeline: Pipeline,
    pub shared: Arc<Shared>,
    pub limits: Arc<Limits>,
}

impl JetStreamIngest {
    /// Sets up the stream and consumer (retrying while NATS is away), then consumes until
    /// `shutdown`. Unacknowledged messages at shutdown are redelivered after the next start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), JetStreamError> {
        let js = jetstream::new(self.client.clone());
        let consumer = loop {
            match self.setup(&js).await {
                Ok(consumer) => break consumer,
                Err(e) => {
                    tracing::warn!(error = %e, "jetstream not ready; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut messages = loop {
            match consumer.messages().await {
                Ok(m) => break m.ready_chunks(CHUNK),
                Err(e) => {
                    tracing::warn!(error = %e, "jetstream pull failed; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        self.shared.nats_subscribed.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                chunk = messages.next() => match chunk {
                    Some(chunk) => self.handle(chunk).await,
                    None => return Ok(()),
                },
            }
        }
    }

    async fn setup(
        &self,
        js: &jetstream::Context,
    ) -> Result<jetstream::consumer::PullConsumer, JetStreamError> {
        let err = |e: &dyn std::fmt::Display| JetStreamError::Consumer {
            consumer: self.config.consumer.clone(),
            message: e.to_string(),
        };
        let stream = js
            .get_or_create_stream(stream::Config {
                name: self.config.stream.clone(),
                subjects: self.config.subjects.clone(),
                duplicate_window: self.config.duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        stream
            .get_or_create_consumer(
                &self.config.consumer,
                pull::Config {
                    durable_name: Some(self.config.consumer.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_deliver: self.config.max_deliver,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err(&e))
    }

    async fn handle(
        &self,
        chunk: Vec<Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>,
    ) {
        let now = clock::now();
        let mut alerts = Vec::new();
        let mut accepted = Vec::new();
        let mut messages = Vec::new();
        let metrics = &self.shared.metrics;
        for msg in chunk {
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::warn!(error = %e, "jetstream delivery error");
                    continue;
                }
            };
            let subject = msg.subject.as_str();
            if subject == self.deadletter_subject {
                // Our own output, captured by the stream too: kept there, not ingested.
                let _ = msg.ack().await;
                continue;
            }
            let format = Format::from_subject_token(subject.split('.').nth(1).unwrap_or(""));
            let decoded = match format {
                None => Err((
                    "unknown_format",
                    format!("subject {subject:?} names no known format"),
                )),
                Some(f) => ingest::decode_with_headers(
                    f,
                    &msg.payload,
                    super::nats::message_headers(&msg),
                    Stamp::Live(now),
                    &self.limits,
                )
                .map_err(|e| (e.code, e.message)),
            };
            match decoded {
                Err((code, reason)) => {
                    metrics.rejected(code, format.map_or("unknown", Format::as_str), 1);
                    self.poison(&msg, format!("{code}: {reason}")).await;
                }
                Ok(d) => {
                    for e in &d.errors {
                        metrics.rejected(e.code, format.map_or("unknown", Format::as_str), 1);
                    }
                    if let Some(first) = d.errors.first() {
                        let reason =
                            format!("{}: alert {}: {}", first.code, first.index, first.message);
                        if d.alerts.is_empty() {
                            self.poison(&msg, reason).await;
                            continue;
                        }
                        // The valid part is stored; the message is dead-lettered for its
                        // rejected items, and acknowledged once the valid part is durable.
                        self.dead_letter(&msg, reason).await;
                    }
                    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                    messages.push((seq, d.alerts.len()));
                    alerts.extend(d.alerts);
                    accepted.push(msg);
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let stored = self.pipeline.submit_messages(alerts, messages).await;
        match stored {
            Ok(_) => {
                for msg in accepted {
                    if let Err(e) = msg.ack().await {
                        // Not acknowledged: JetStream redelivers, and the repeat is counted
                        // as a duplicate of the same alert, never lost.
                        tracing::warn!(error = %e, "jetstream ack failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "alerts not stored; asking jetstream to redeliver");
                for msg in accepted {
                    let delivered = msg.info().map(|i| i.delivered).unwrap_or(0);
                    if delivered >= self.config.max_deliver {
                        self.poison(
                            &msg,
                            format!("not stored after {delivered} deliveries: {e}"),
                        )
                        .await;
                    } else {
                        let _ = msg
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
            }
        }
    }

    /// Dead-letters a message and tells JetStream never to deliver it again.
    async fn poison(&self, msg: &jetstream::Message, reason: String) {
        self.dead_letter(msg, reason).await;
        let _ = msg.ack_with(AckKind::Term).await;
    }

    async fn dead_letter(&self, msg: &jetstream::Message, reason: String) {
        let mut headers = async_nats::HeaderMap::new();
        let reason: String = reason
            .replace(['\r', '\n'], " ")
            .chars()
            .take(1024)
            .collect();
        headers.insert(REASON_HEADER, reason.as_str());
        headers.insert(SUBJECT_HEADER, msg.subject.as_str());
        match self
            .client
            .publish_with_headers(
                self.deadletter_subject.clone(),
                headers,
                msg.payload.clone(),
            )
            .await
        {
            Ok(()) => self.shared.metrics.deadletter_published.inc(),
            Err(e) => tracing::warn!(error = %e, "dead-letter publish failed"),
        }
    }
}
