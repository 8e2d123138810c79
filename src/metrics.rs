//! Prometheus metrics. Handles are registered once at start and bumped on the hot path;
//! nothing is registered per alert.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric incidentd exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Alerts accepted into the engine on any path, counted after their facts are durable.
    pub alerts_received: IntCounter,
    /// Alerts (or whole payloads) rejected at decode, by reason code and format.
    pub alerts_rejected: IntCounterVec,
    pub incidents_open: IntGauge,
    /// Incidents the read model holds (any state): closing keeps it to what is live.
    pub incidents_held: IntGauge,
    pub facts_appended: IntCounter,
    /// Time to write and fsync one group-commit batch.
    pub log_append_seconds: Histogram,
    pub log_batch_facts: Histogram,
    /// Time each pipeline thread holds one batch or group, by stage (`engine`, `publish`,
    /// `snapshot_copy`, `snapshot_encode`): where a slow alert waited.
    pub stage_seconds: HistogramVec,
    /// 1 while the event log accepts writes; 0 after a failed write or fsync (fail-stop).
    pub log_writable: IntGauge,
    /// Retryable event log write failures (a full disk); the batch is retried.
    pub log_write_failures: IntCounter,
    /// 1 while connected to NATS.
    pub nats_connected: IntGauge,
    /// NATS client events (connected, disconnected, slow_consumer, ...).
    pub nats_events: IntCounterVec,
    pub deadletter_published: IntCounter,
    /// Outbound incident facts not published because the publish queue was full.
    pub outbound_dropped: IntCounter,
    /// Alerts refused because the engine's queue stayed full (HTTP 429), by transport.
    pub alerts_shed: IntCounterVec,
    /// Core NATS messages dropped undecoded because the engine's queue stayed full.
    pub nats_messages_shed: IntCounter,
    /// Rule reloads refused because a file was broken (the old rules stayed in force).
    pub rules_reload_failures: IntCounter,
    /// Distinct texts the read model has interned since start (never freed).
    pub interned_strings: IntGauge,
    /// HTTP connections being served.
    pub http_connections: IntGauge,
    /// HTTP connections answered 503 and closed because `http.max_connections` were open.
    pub http_connections_refused: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
                let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        Ok(Metrics {
            alerts_received: counter(
                "incidentd_alerts_received_total",
                "Alerts accepted into the engine (all paths), counted after durable append.",
            )?,
            alerts_rejected: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "incidentd_alerts_rejected_total",
                        "Alerts or payloads rejected at decode, by reason and format.",
                    ),
                    &["reason", "format"],
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            incidents_open: gauge(
                "incidentd_incidents_open",
                "Incidents open or acknowledged.",
            )?,
            incidents_held: gauge(
                "incidentd_incidents_held",
                "Incidents in memory, in any state; resolved ones leave when closed (lifecycle.close_after).",
            )?,
            facts_appended: counter(
                "incidentd_facts_appended_total",
                "Facts appended to the event log.",
            )?,
            log_append_seconds: histogram(
                "incidentd_log_append_seconds",
                "Write plus fsync time of one group-commit batch.",
                prometheus::exponential_buckets(0.000_05, 2.0, 16)?,
            )?,
            log_batch_facts: histogram(
                "incidentd_log_batch_facts",
                "Facts per group-commit batch.",
                prometheus::exponential_buckets(1.0, 4.0, 10)?,
            )?,
            stage_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "incidentd_stage_seconds",
                        "Time a pipeline stage spends on one batch (engine) or commit group (publish), and the stop-the-world parts of a snapshot.",
                    )
                    .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 16)?),
                    &["stage"],
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            log_writable: gauge(
                "incidentd_log_writable",
                "1 while the event log accepts writes, 0 after a failed write or fsync.",
            )?,
            log_write_failures: counter(
                "incidentd_log_write_failures_total",
                "Retryable event log write failures (e.g. a full disk); the batch is retried.",
            )?,
            nats_connected: gauge("incidentd_nats_connected", "1 while connected to NATS.")?,
            nats_events: counter_vec(
                "incidentd_nats_events_total",
                "NATS client events by kind.",
                "event",
            )?,
            deadletter_published: counter(
                "incidentd_deadletter_published_total",
                "Rejected NATS messages republished to the dead-letter subject.",
            )?,
            outbound_dropped: counter(
                "incidentd_outbound_dropped_total",
                "Incident facts not published on NATS because the publish queue was full.",
            )?,
            alerts_shed: counter_vec(
                "incidentd_alerts_shed_total",
                "Alerts refused because the engine queue stayed full (HTTP 429 with Retry-After), by transport.",
                "transport",
            )?,
            nats_messages_shed: counter(
                "incidentd_nats_messages_shed_total",
                "Core NATS messages dropped undecoded because the engine queue stayed full.",
            )?,
            rules_reload_failures: counter(
                "incidentd_rules_reload_failures_total",
                "Rule reloads refused because a rule file was broken.",
            )?,
            interned_strings: gauge(
                "incidentd_interned_strings",
                "Distinct texts (labels, reasons, summaries) interned since start; freed only by a restart, at most 2^28.",
            )?,
            http_connections: gauge(
                "incidentd_http_connections",
                "HTTP connections being served.",
            )?,
            http_connections_refused: counter(
                "incidentd_http_connections_refused_total",
                "HTTP connections answered 503 with Retry-After and closed because http.max_connections were open.",
            )?,
            registry,
        })
    }

    /// Counts `n` rejections for `reason` in `format` (label values from a fixed set).
    pub fn rejected(&self, reason: &str, format: &str, n: u64) {
        self.alerts_rejected
            .with_label_values(&[reason, format])
            .inc_by(n);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
