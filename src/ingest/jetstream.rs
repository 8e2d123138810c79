//! Durable ingest from JetStream: a stream captures `alerts.>`, and a durable pull consumer
//! feeds the engine. A message is acknowledged only after the facts it caused are fsynced, so
//! a crash of incidentd or of a NATS server loses nothing: unacknowledged messages are
//! redelivered, and the stream's duplicate window drops re-publishes carrying the same
//! `Nats-Msg-Id`. A redelivery of a message already in the log (its acknowledgement was lost
//! with a server) is recognised by its stream sequence, recorded in `stream_consumed` facts,
//! and acknowledged without being ingested twice. Sequences name messages only within one
//! stream, so before consuming, ingest records the stream's identity and last sequence
//! (`stream_attached`): a deleted and recreated stream, or one whose server lost its tail,
//! assigns those sequences again, and the engine forgets the ones it can no longer trust.
//! A message that cannot be decoded is poison: it goes to the dead letter with the reason
//! and is terminated at once; one the engine could not store is redelivered, and
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
    /// If the consumer disappears (its stream was deleted), both are set up again.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), JetStreamError> {
        let js = jetstream::new(self.client.clone());
        loop {
            let mut messages = loop {
                match self.attach(&js).await {
                    Ok(m) => break m.ready_chunks(CHUNK),
                    Err(e) => {
                        tracing::warn!(error = %e, "jetstream not ready; retrying");
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
                    chunk = messages.next() => {
                        let Some(chunk) = chunk else { break };
                        if !self.handle(chunk).await {
                            break;
                        }
                    }
                }
            }
            self.shared.nats_subscribed.store(false, Ordering::SeqCst);
            tracing::warn!(
                stream = %self.config.stream,
                "jetstream consumer gone; setting up stream and consumer again"
            );
            // Not at once: nats-server 2.9.10 let a consumer recreated within milliseconds of
            // its namesake's deletion accept pull requests and never deliver (seen in
            // tests/jetstream.rs: 2 pending, 1 waiting, nothing delivered for 80 s).
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Creates (or finds) the stream and the durable consumer, records the stream's identity
    /// in the log, and starts pulling. Recording comes first: sequences consumed from a
    /// deleted and recreated stream, or above a tail the server lost, must not make new
    /// messages with the same sequences look ingested.
    async fn attach(&self, js: &jetstream::Context) -> Result<pull::Stream, JetStreamError> {
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
        let consumer = stream
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
            .map_err(|e| err(&e))?;
        let info = stream.cached_info();
        let created = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
        self.pipeline
            .attach_stream(
                info.config.name.clone(),
                created,
                info.state.last_sequence,
                clock::now(),
            )
            .await
            .map_err(|e| err(&e))?;
        tracing::info!(
            stream = %info.config.name,
            created,
            last = info.state.last_sequence,
            "jetstream stream attached"
        );
        consumer.messages().await.map_err(|e| err(&e))
    }

    /// Ingests one chunk of deliveries; false once the consumer is gone.
    async fn handle(
        &self,
        chunk: Vec<Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>,
    ) -> bool {
        let now = clock::now();
        let mut alerts = Vec::new();
        let mut accepted = Vec::new();
        let mut messages = Vec::new();
        let metrics = &self.shared.metrics;
        let mut consumer_gone = false;
        for msg in chunk {
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) if e.kind() == pull::MessagesErrorKind::ConsumerDeleted => {
                    consumer_gone = true;
                    continue;
                }
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
        if !accepted.is_empty() {
            self.store(alerts, messages, accepted).await;
        }
        !consumer_gone
    }

    /// Stores the accepted messages' alerts, then acknowledges them (or asks for redelivery).
    async fn store(
        &self,
        alerts: Vec<crate::model::Alert>,
        messages: Vec<(u64, usize)>,
        accepted: Vec<jetstream::Message>,
    ) {
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
