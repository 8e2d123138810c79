//! Service configuration: a TOML file (every key optional), command-line flags on top, and
//! defaults that run on a fresh machine with no file at all.
//!
//! ```toml
//! listen = "127.0.0.1:9080"
//! data_dir = "./data"
//! rules = "rules"          # directory of rule files; the built-in rules when absent
//! cmdb = "fixtures/cmdb/example.json"  # JSON, or a directory with cis.csv + relations.csv
//!
//! [nats]
//! url = "nats://127.0.0.1:4222"
//! enabled = true
//! subject = "alerts.>"
//! deadletter_subject = "alerts.deadletter"
//! cmdb_subject = "cmdb.>"                # live CMDB changes: JSON arrays of operations
//! cmdb_deadletter_subject = "cmdb.deadletter"
//! outbound_prefix = "incidents"
//!
//! [nats.jetstream]         # durable ingest: acked only after the append is on disk
//! enabled = false
//! stream = "INCIDENTD_ALERTS"   # created on `subject` if absent
//! consumer = "incidentd"        # durable pull consumer
//! max_deliver = 5               # then dead-lettered
//! ack_wait = "30s"
//! duplicate_window = "2m"       # re-publishes with the same Nats-Msg-Id are dropped
//!
//! [http]
//! max_body_bytes = 10485760
//! request_timeout = "30s"       # a whole request, body included; 408 after it
//! header_timeout = "10s"        # request headers; a client slower than this is dropped
//! shutdown_grace = "10s"
//! max_connections = 4096   # beyond it a new connection gets 503 + Retry-After and is closed
//! stream_buffer = 65536    # incident changes held for console clients that reconnect
//!
//! [log]
//! segment_bytes = 67108864
//! snapshot_every = 100000        # facts between snapshots (and one at shutdown); 0 = never
//! prune_after_snapshot = false   # delete segments a snapshot covers (export sees the tail)
//!
//! [storage]
//! backend = "file"          # or "jetstream": facts in a stream (clustered mode; needs NATS
//!                           # servers with sync_interval: always, replicas 3)
//! [storage.jetstream]
//! stream = "INCIDENTD_FACTS"
//! subject = "incidentd.facts"
//! replicas = 1
//!
//! [engine]
//! tick_interval = "1s"
//! queue = 4096                  # commands queued for the engine
//! max_queued_alerts = 16384     # alerts queued for the engine; beyond it ingest sheds:
//! shed_after = "100ms"          # HTTP 429 + Retry-After, core NATS messages counted as shed
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::jetstream::JetStreamConfig;
use crate::jslog::JsLogConfig;
use crate::model::parse_duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// The file's shape. Durations are strings such as `30s`; they are checked in `validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub rules: Option<PathBuf>,
    pub cmdb: Option<PathBuf>,
    pub nats: NatsFile,
    pub http: HttpFile,
    pub log: LogFile,
    pub storage: StorageFile,
    pub engine: EngineFile,
    /// Decoder limits (`[limits]`, field names as in [`crate::ingest::Limits`]).
    pub limits: crate::ingest::Limits,
}

/// Where facts are stored: the local segmented log (default) or a JetStream stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageFile {
    pub backend: String,
    pub jetstream: JsLogFile,
}

impl Default for StorageFile {
    fn default() -> Self {
        StorageFile {
            backend: "file".into(),
            jetstream: JsLogFile::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsLogFile {
    pub stream: String,
    pub subject: String,
    pub replicas: usize,
}

impl Default for JsLogFile {
    fn default() -> Self {
        JsLogFile {
            stream: "INCIDENTD_FACTS".into(),
            subject: "incidentd.facts".into(),
            replicas: 1,
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            listen: "127.0.0.1:9080".into(),
            data_dir: PathBuf::from("./data"),
            rules: None,
            cmdb: None,
            nats: NatsFile::default(),
            http: HttpFile::default(),
            log: LogFile::default(),
            storage: StorageFile::default(),
            engine: EngineFile::default(),
            limits: crate::ingest::Limits::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsFile {
    pub url: String,
    pub enabled: bool,
    pub subject: String,
    pub deadletter_subject: String,
    pub cmdb_subject: String,
    pub cmdb_deadletter_subject: String,
    pub outbound_prefix: String,
    pub jetstream: JetStreamFile,
}

/// Durable ingest through a JetStream stream and pull consumer (instead of the core
/// subscription on `alerts.>`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamFile {
    pub enabled: bool,
    pub stream: String,
    pub consumer: String,
    pub max_deliver: i64,
    pub ack_wait: String,
    pub duplicate_window: String,
}

impl Default for JetStreamFile {
    fn default() -> Self {
        JetStreamFile {
            enabled: false,
            stream: "INCIDENTD_ALERTS".into(),
            consumer: "incidentd".into(),
            max_deliver: 5,
            ack_wait: "30s".into(),
            duplicate_window: "2m".into(),
        }
    }
}

impl Default for NatsFile {
    fn default() -> Self {
        NatsFile {
            url: "nats://127.0.0.1:4222".into(),
            enabled: true,
            subject: "alerts.>".into(),
            deadletter_subject: "alerts.deadletter".into(),
            cmdb_subject: "cmdb.>".into(),
            cmdb_deadletter_subject: "cmdb.deadletter".into(),
            outbound_prefix: "incidents".into(),
            jetstream: JetStreamFile::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpFile {
    pub max_body_bytes: usize,
    pub request_timeout: String,
    pub header_timeout: String,
    pub shutdown_grace: String,
    pub stream_buffer: usize,
    pub max_connections: usize,
}

impl Default for HttpFile {
    fn default() -> Self {
        HttpFile {
            max_body_bytes: 10 * 1024 * 1024,
            request_timeout: "30s".into(),
            header_timeout: "10s".into(),
            shutdown_grace: "10s".into(),
            stream_buffer: crate::stream::DEFAULT_RING,
            max_connections: 4096,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    pub segment_bytes: u64,
    /// Facts between snapshots (and one at shutdown); 0 disables them.
    pub snapshot_every: u64,
    /// Delete log segments a snapshot fully covers.
    pub prune_after_snapshot: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            segment_bytes: 64 * 1024 * 1024,
            snapshot_every: 100_000,
            prune_after_snapshot: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineFile {
    pub tick_interval: String,
    pub queue: usize,
    pub max_queued_alerts: usize,
    pub shed_after: String,
}

impl Default for EngineFile {
    fn default() -> Self {
        EngineFile {
            tick_interval: "1s".into(),
            queue: 4096,
            max_queued_alerts: crate::pipeline::QueueConfig::DEFAULT_ALERTS,
            shed_after: "100ms".into(),
        }
    }
}

/// Overrides from the command line; `None` keeps the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub nats_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub cmdb: Option<PathBuf>,
}

/// Validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: the `rules/` directory if present, else the rules built into the binary.
    pub rules: Option<PathBuf>,
    /// `None`: the example CMDB shipped in the repository if present, else an empty one.
    pub cmdb: Option<PathBuf>,
    pub nats_url: String,
    pub nats_enabled: bool,
    pub nats_subject: String,
    pub deadletter_subject: String,
    pub cmdb_subject: String,
    pub cmdb_deadletter_subject: String,
    pub outbound_prefix: String,
    /// Durable JetStream ingest instead of the core subscription, when set.
    pub jetstream: Option<JetStreamConfig>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Open HTTP connections served at once; each holds buffers, a task and a descriptor.
    pub max_connections: usize,
    /// Incident changes the live stream holds for reconnecting clients.
    pub stream_buffer: usize,
    pub segment_bytes: u64,
    /// Facts in a JetStream stream instead of the local log, when set.
    pub jetstream_log: Option<JsLogConfig>,
    pub snapshot_every: u64,
    pub prune_log: bool,
    pub tick_interval: Duration,
    /// Bounds between ingest and the engine, and how long ingest waits before shedding.
    pub engine_queue: crate::pipeline::QueueConfig,
    pub limits: crate::ingest::Limits,
}

impl Config {
    /// Reads `path` (if given), applies `overrides`, validates.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        Config::validate(file, overrides)
    }

    pub fn validate(mut file: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        if let Some(v) = o.listen {
            file.listen = v;
        }
        if let Some(v) = o.nats_url {
            file.nats.url = v;
        }
        if let Some(v) = o.data_dir {
            file.data_dir = v;
        }
        if o.rules.is_some() {
            file.rules = o.rules;
        }
        if o.cmdb.is_some() {
            file.cmdb = o.cmdb;
        }
        let duration = |field: &'static str, s: &str| {
            parse_duration(s)
                .map(|ms| Duration::from_millis(ms.unsigned_abs()))
                .ok_or_else(|| ConfigError::Invalid {
                    field,
                    message: format!("invalid duration {s:?} (use e.g. 500ms, 30s, 5m)"),
                })
        };
        let tick_interval = duration("engine.tick_interval", &file.engine.tick_interval)?;
        if tick_interval.is_zero() {
            return Err(ConfigError::Invalid {
                field: "engine.tick_interval",
                message: "must be greater than zero".into(),
            });
        }
        let js = &file.nats.jetstream;
        let jetstream = if js.enabled {
            Some(JetStreamConfig {
                stream: js.stream.clone(),
                subjects: vec![file.nats.subject.clone()],
                consumer: js.consumer.clone(),
                max_deliver: js.max_deliver.max(1),
                ack_wait: duration("nats.jetstream.ack_wait", &js.ack_wait)?,
                duplicate_window: duration(
                    "nats.jetstream.duplicate_window",
                    &js.duplicate_window,
                )?,
            })
        } else {
            None
        };
        let jetstream_log = match file.storage.backend.as_str() {
            "file" => None,
            "jetstream" if file.nats.enabled => Some(JsLogConfig {
                stream: file.storage.jetstream.stream.clone(),
                subject: file.storage.jetstream.subject.clone(),
                replicas: file.storage.jetstream.replicas.max(1),
            }),
            "jetstream" => {
                return Err(ConfigError::Invalid {
                    field: "storage.backend",
                    message: "\"jetstream\" needs NATS (nats.enabled = true)".into(),
                });
            }
            other => {
                return Err(ConfigError::Invalid {
                    field: "storage.backend",
                    message: format!("{other:?} is not a backend (use \"file\" or \"jetstream\")"),
                });
            }
        };
        Ok(Config {
            jetstream_log,
            jetstream,
            listen: file.listen.parse().map_err(|e| ConfigError::Invalid {
                field: "listen",
                message: format!(
                    "{:?} is not an address like 127.0.0.1:9080: {e}",
                    file.listen
                ),
            })?,
            data_dir: file.data_dir,
            rules: file.rules,
            cmdb: file.cmdb,
            nats_url: file.nats.url,
            nats_enabled: file.nats.enabled,
            nats_subject: file.nats.subject,
            deadletter_subject: file.nats.deadletter_subject,
            cmdb_subject: file.nats.cmdb_subject,
            cmdb_deadletter_subject: file.nats.cmdb_deadletter_subject,
            outbound_prefix: file.nats.outbound_prefix,
            max_body_bytes: file.http.max_body_bytes,
            request_timeout: duration("http.request_timeout", &file.http.request_timeout)?,
            header_timeout: duration("http.header_timeout", &file.http.header_timeout)?,
            shutdown_grace: duration("http.shutdown_grace", &file.http.shutdown_grace)?,
            max_connections: file.http.max_connections.max(1),
            stream_buffer: file.http.stream_buffer.max(1),
            segment_bytes: file.log.segment_bytes.max(4096),
            snapshot_every: file.log.snapshot_every,
            prune_log: file.log.prune_after_snapshot && file.storage.backend == "file",
            tick_interval,
            engine_queue: crate::pipeline::QueueConfig {
                commands: file.engine.queue.max(16),
                alerts: file.engine.max_queued_alerts.max(1),
                shed_after: duration("engine.shed_after", &file.engine.shed_after)?,
            },
            limits: file.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_valid_and_says_the_defaults() {
        let shipped: FileConfig = toml::from_str(include_str!("../deploy/incidentd.toml"))
            .expect("deploy/incidentd.toml parses");
        assert_eq!(shipped.limits, crate::ingest::Limits::default());
    }

    #[test]
    fn limits_are_set_one_by_one() {
        let file: FileConfig =
            toml::from_str("[limits]\nmax_labels = 16\nmax_future_secs = 60\n").expect("ok");
        assert_eq!(file.limits.max_labels, 16);
        assert_eq!(file.limits.max_future_secs, 60);
        assert_eq!(
            file.limits.max_depth,
            crate::ingest::Limits::default().max_depth
        );
        assert!(toml::from_str::<FileConfig>("[limits]\nmax_lables = 1\n").is_err());
    }

    #[test]
    fn defaults_run_without_a_file() {
        let c = Config::load(None, Overrides::default()).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9080");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.tick_interval, Duration::from_secs(1));
    }

    #[test]
    fn flags_override_the_file_and_typos_are_refused() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\n[nats]\nurl = \"nats://h:1\"\n").expect("ok");
        let c = Config::validate(
            file,
            Overrides {
                listen: Some("127.0.0.1:2".into()),
                ..Overrides::default()
            },
        )
        .expect("valid");
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.nats_url, "nats://h:1");
        let err = toml::from_str::<FileConfig>("lisen = \"x\"").expect_err("typo");
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
        let file: FileConfig =
            toml::from_str("[engine]\ntick_interval = \"soon\"\n").expect("parses");
        let err = Config::validate(file, Overrides::default()).expect_err("bad duration");
        assert_eq!(
            err.to_string(),
            "engine.tick_interval: invalid duration \"soon\" (use e.g. 500ms, 30s, 5m)"
        );
    }
}
