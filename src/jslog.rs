//! The event log in a NATS JetStream stream, for the clustered mode (`storage.backend =
//! "jetstream"`): the same facts, one message each, with the stream sequence as the log
//! sequence. Durability comes from the servers: run them with `sync_interval: always` and
//! replicas 3 (`deploy/nats-server.conf`), or an acknowledged fact can be lost on power loss.
//!
//! A group commit publishes every fact with `Nats-Expected-Last-Sequence` set to the sequence
//! before it and waits for all acknowledgements. That fences off a second writer (its publish
//! is refused, not interleaved) and keeps the sequence gap-free. Any failure stops the log for
//! good, as a failed fsync does for the file log: a publish whose acknowledgement was lost may
//! or may not be stored, so retrying could duplicate facts.
//!
//! A group is replayed whole or not at all, as in the file log: every message carries
//! `Incidentd-Group: <first seq>/<facts>`. A writer that dies part way through a group leaves
//! its first messages in the stream; replay skips them (with a warning) whenever the group is
//! followed by another or by the end of the stream, so every later start sees the same state.
//! Messages without the header (from older builds) are groups of one.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::eventlog::{EventLog, LogError};

/// Where the facts live.
#[derive(Clone, Debug)]
pub struct JsLogConfig {
    pub stream: String,
    pub subject: String,
    pub replicas: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum JsLogError {
    #[error("jetstream event log {stream}: {message}")]
    Setup { stream: String, message: String },
    #[error("jetstream event log {stream}: message {seq}: {message}")]
    Read {
        stream: String,
        seq: u64,
        message: String,
    },
}

/// What the writer thread needs from an event log, whichever backend holds it.
pub trait FactLog: Send {
    /// Buffers a record; returns its sequence. Not durable until `sync`.
    fn append(&mut self, payload: &[u8]) -> Result<u64, LogError>;
    /// Makes every buffered record durable (one group commit).
    fn sync(&mut self) -> Result<(), LogError>;
    fn next_seq(&self) -> u64;
}

impl FactLog for EventLog {
    fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        EventLog::append(self, payload)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        EventLog::sync(self)
    }

    fn next_seq(&self) -> u64 {
        EventLog::next_seq(self)
    }
}

/// The event log as a JetStream stream.
pub struct JetStreamLog {
    runtime: tokio::runtime::Handle,
    js: jetstream::Context,
    subject: String,
    pending: Vec<Bytes>,
    next_seq: u64,
    stopped: bool,
}

/// How long one group commit may wait for the servers before the log gives up.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Header naming a message's commit group: `<first seq>/<facts>`.
const GROUP_HEADER: &str = "Incidentd-Group";

/// The commit group of a stored message: (first seq, facts); none without a valid header.
fn group_of(msg: &jetstream::Message) -> Option<(u64, u64)> {
    let value = msg.headers.as_ref()?.get(GROUP_HEADER)?.as_str();
    let (first, facts) = value.split_once('/')?;
    Some((first.parse().ok()?, facts.parse().ok()?))
}

/// Facts of the group being read, handed on once all of them are in.
#[derive(Default)]
struct OpenGroup {
    /// (first seq, facts) from the header.
    id: (u64, u64),
    facts: Vec<(u64, Bytes)>,
}

impl OpenGroup {
    /// Logs and forgets facts of a group its writer never finished.
    fn drop_torn(&mut self, stream: &str) {
        if let (Some(first), Some(last)) = (self.facts.first(), self.facts.last()) {
            tracing::warn!(
                stream,
                first = first.0,
                last = last.0,
                of = self.id.1,
                "skipping an incomplete commit group (its writer stopped part way)"
            );
        }
        self.facts.clear();
    }
}

impl JetStreamLog {
    /// Creates the stream if needed and feeds every stored fact, in order, to `visit`
    /// (replay), then returns the log positioned after the last one.
    pub async fn open<E: std::fmt::Display>(
        client: async_nats::Client,
        cfg: &JsLogConfig,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(JetStreamLog, u64), JsLogError> {
        let setup = |message: String| JsLogError::Setup {
            stream: cfg.stream.clone(),
            message,
        };
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![cfg.subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(e.to_string()))?;
        let last = stream
            .get_info()
            .await
            .map_err(|e| setup(e.to_string()))?
            .state
            .last_sequence;
        let mut records = 0;
        if last > 0 {
            let consumer = stream
                .create_consumer(pull::OrderedConfig::default())
                .await
                .map_err(|e| setup(e.to_string()))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| setup(e.to_string()))?;
            let mut expected = 1;
            let mut group = OpenGroup::default();
            let mut apply = |seq: u64, payload: &[u8]| {
                records += 1;
                visit(seq, payload).map_err(|e| JsLogError::Read {
                    stream: cfg.stream.clone(),
                    seq,
                    message: e.to_string(),
                })
            };
            while expected <= last {
                let at = expected;
                let read = |message: String| JsLogError::Read {
                    stream: cfg.stream.clone(),
                    seq: at,
                    message,
                };
                let msg = messages
                    .next()
                    .await
                    .ok_or_else(|| read("stream ended early".into()))?
                    .map_err(|e| read(e.to_string()))?;
                let seq = msg.info().map_err(|e| read(e.to_string()))?.stream_sequence;
                if seq != expected {
                    return Err(read(format!(
                        "found {seq}: the stream has gaps (purged or limited?)"
                    )));
                }
                expected += 1;
                let Some(id) = group_of(&msg) else {
                    group.drop_torn(&cfg.stream);
                    apply(seq, &msg.payload)?;
                    continue;
                };
                if id != group.id {
                    group.drop_torn(&cfg.stream);
                    group.id = id;
                }
                group.facts.push((seq, msg.payload.clone()));
                if group.facts.len() as u64 >= id.1 {
                    for (seq, payload) in group.facts.drain(..) {
                        apply(seq, &payload)?;
                    }
                }
            }
            group.drop_torn(&cfg.stream);
        }
        Ok((
            JetStreamLog {
                runtime: tokio::runtime::Handle::current(),
                js,
                subject: cfg.subject.clone(),
                pending: Vec::new(),
                next_seq: last + 1,
                stopped: false,
            },
            records,
        ))
    }

    async fn publish_all(&self, first: u64) -> Result<(), String> {
        let mut acks = Vec::with_capacity(self.pending.len());
        let group = format!("{first}/{}", self.pending.len());
        for (i, payload) in self.pending.iter().enumerate() {
            let seq = first + i as u64;
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Expected-Last-Sequence",
                (seq - 1).to_string().as_str(),
            );
            headers.insert(GROUP_HEADER, group.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            acks.push((seq, ack));
        }
        for (seq, ack) in acks {
            let ack = ack.await.map_err(|e| format!("fact {seq}: {e}"))?;
            if ack.sequence != seq {
                return Err(format!("fact {seq} stored as {}", ack.sequence));
            }
        }
        Ok(())
    }
}

impl FactLog for JetStreamLog {
    fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        self.pending.push(Bytes::copy_from_slice(payload));
        Ok(self.next_seq + self.pending.len() as u64 - 1)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let first = self.next_seq;
        let result = self.runtime.block_on(async {
            tokio::time::timeout(COMMIT_TIMEOUT, self.publish_all(first))
                .await
                .unwrap_or_else(|_| Err("timed out waiting for the servers".into()))
        });
        match result {
            Ok(()) => {
                self.next_seq += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(message) => {
                self.stopped = true;
                tracing::error!(error = %message, "jetstream event log write failed; log stopped");
                Err(LogError::Io {
                    path: format!("jetstream:{}", self.subject).into(),
                    source: std::io::Error::other(message),
                })
            }
        }
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }
}
