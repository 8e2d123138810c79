//! `incidentd export-alerts`: turns the alerts recorded in an event log back into replay input,
//! so SREs backtest rule changes on their own history.
//!
//! Every arrival the log recorded becomes a line, in log order: a new alert, each repeat (a
//! coalesced `alert_repeated` of count N becomes N lines at its time), each resolution and each
//! refire, with `received_at` set to when the engine saw it. Live CMDB changes (HTTP, NATS)
//! become `cmdb_change` lines; the CMDB file loaded at start is not exported — pass the same
//! file to `replay --cmdb`. The log is only read, so exporting beside a running service is safe.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::engine::Fact;
use crate::engine::facts::RecordError;
use crate::engine::record::{DecodePipeline, FactBatch, REPLAY_DEPTH};
use crate::eventlog::{EventLog, LogConfig, OpenError};
use crate::model::{Alert, Fingerprint, Millis, Status, format_time};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Log(#[from] crate::eventlog::LogError),
    #[error("reading the event log: {0}")]
    Record(#[from] RecordError),
    #[error("writing alerts: {0}")]
    Write(#[from] std::io::Error),
}

/// How much was exported.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Exported {
    pub facts: u64,
    pub lines: u64,
    pub cmdb_changes: u64,
}

/// A native alert line as `replay` reads it.
#[derive(Serialize)]
struct Line<'a> {
    source: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ci: Option<&'a str>,
    severity: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<&'a str>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    labels: &'a std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: &'a std::collections::BTreeMap<String, String>,
    starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup_key: Option<&'a str>,
    received_at: String,
}

fn write_line(out: &mut impl Write, alert: &Alert, at: Millis) -> std::io::Result<()> {
    let line = Line {
        source: &alert.source,
        name: &alert.name,
        ci: alert.ci.as_deref(),
        severity: alert.severity.as_str(),
        status: alert.status.as_str(),
        summary: alert.summary.as_deref(),
        labels: &alert.labels,
        annotations: &alert.annotations,
        starts_at: format_time(alert.starts_at),
        ends_at: alert.ends_at.map(format_time),
        dedup_key: alert.dedup_key.as_deref(),
        received_at: format_time(at),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Writes the replay input recorded in the event log under `data_dir`. Records are decoded on
/// a second thread while this one reads the log and a third writes the lines.
pub fn export(data_dir: &Path, out: impl Write + Send) -> Result<Exported, ExportError> {
    let cfg = LogConfig::new(data_dir.join("log"));
    let (tx, rx) = std::sync::mpsc::sync_channel::<FactBatch>(REPLAY_DEPTH);
    std::thread::scope(|s| {
        let writer = std::thread::Builder::new()
            .name("incidentd-export-write".into())
            .spawn_scoped(s, move || write_lines(&rx, out))
            .map_err(|e| RecordError::Thread(e.to_string()))?;
        let mut decode = DecodePipeline::start(tx)?;
        let read = EventLog::read(&cfg, |seq, bytes| decode.push(seq, bytes));
        let decoded = decode.finish();
        let written = writer
            .join()
            .map_err(|_| RecordError::Thread("the export writer panicked".into()))?;
        // The writer's own failure explains why the others stopped, so it comes first.
        let done = written?;
        read.map_err(|e| match e {
            OpenError::Log(e) => ExportError::Log(e),
            OpenError::Visit(e) => ExportError::Record(e),
        })?;
        decoded?;
        Ok(done)
    })
}

/// Turns the decoded facts into replay lines, in log order.
fn write_lines(
    rx: &std::sync::mpsc::Receiver<FactBatch>,
    mut out: impl Write,
) -> Result<Exported, ExportError> {
    let mut alerts: HashMap<Fingerprint, Alert> = HashMap::new();
    let mut done = Exported::default();
    for batch in rx {
        for (_seq, fact) in batch {
            done.facts += 1;
            write_fact(&mut out, &mut alerts, &mut done, fact)?;
        }
    }
    out.flush()?;
    Ok(done)
}

fn write_fact(
    out: &mut impl Write,
    alerts: &mut HashMap<Fingerprint, Alert>,
    done: &mut Exported,
    fact: Fact,
) -> Result<(), ExportError> {
    match fact {
        Fact::AlertReceived { at, alert } => {
            write_line(out, &alert, at)?;
            done.lines += 1;
            alerts.insert(alert.fingerprint, alert);
        }
        Fact::AlertRepeated {
            at,
            fingerprint,
            count,
            severity,
            ends_at,
        } => {
            if let Some(a) = alerts.get_mut(&fingerprint) {
                a.severity = severity;
                a.ends_at = ends_at;
                a.status = Status::Firing;
                for _ in 0..count {
                    write_line(out, a, at)?;
                }
                done.lines += count;
            }
        }
        Fact::AlertResolved {
            at,
            fingerprint,
            ends_at,
            ..
        } => {
            if let Some(a) = alerts.get_mut(&fingerprint) {
                a.status = Status::Resolved;
                a.ends_at = Some(ends_at);
                write_line(out, a, at)?;
                done.lines += 1;
            }
        }
        Fact::AlertRefired {
            at,
            fingerprint,
            severity,
            ends_at,
        } => {
            if let Some(a) = alerts.get_mut(&fingerprint) {
                a.status = Status::Firing;
                a.severity = severity;
                a.ends_at = ends_at;
                write_line(out, a, at)?;
                done.lines += 1;
            }
        }
        Fact::CmdbChanged { at, source, ops } if is_live(&source) => {
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({"cmdb_change": ops, "received_at": format_time(at)}),
            )
            .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            done.cmdb_changes += 1;
        }
        _ => {}
    }
    Ok(())
}

/// Changes made while running (not the file loaded at start).
fn is_live(source: &str) -> bool {
    source == "http api" || source.starts_with("nats ") || source == "replay input"
}
