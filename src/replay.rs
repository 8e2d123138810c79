//! `incidentd replay`: the live engine, offline, over recorded alerts.
//!
//! Input is one native alert JSON per line in arrival order; each line's `received_at`
//! (else `starts_at`, or `ends_at` for a resolved alert) is the engine's time, which never
//! moves backwards. Between alerts the engine gets a `Tick` at each moment something falls
//! due (a timeout, a hold-down ending), so time-driven decisions happen as they would have
//! live. Output is one incident JSON per line in incident order: identical input gives
//! byte-identical output. A line `{"cmdb_change": [ops], "received_at": "..."}` changes the
//! CMDB at that time, as a live change over the API or NATS would.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cmdb::{CmdbOp, CmdbSpec};
use crate::engine::{Engine, Input};
use crate::ingest::{self, Format, Limits, Stamp};
use crate::model::parse_time;
use crate::rules::Rules;
use crate::view::ReadModel;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading alerts: {0}")]
    Read(std::io::Error),
    #[error("writing incidents: {0}")]
    Write(std::io::Error),
    #[error("alerts line {line}: {message}")]
    Line { line: usize, message: String },
}

/// What a replay did, printed for the SRE.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub alerts: u64,
    pub distinct_alerts: u64,
    pub incidents: u64,
    pub suppressed: u64,
    pub compression: f64,
    /// Per rule: incidents it opened and distinct alerts in them.
    pub rules: BTreeMap<String, RuleHits>,
    /// The ten CIs and sources with the most alert messages.
    pub noisiest_cis: Vec<(String, u64)>,
    pub noisiest_sources: Vec<(String, u64)>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct RuleHits {
    pub incidents: u64,
    pub alerts: u64,
}

impl Summary {
    fn tally(&mut self, view: &ReadModel) {
        let mut cis: BTreeMap<&str, u64> = BTreeMap::new();
        let mut sources: BTreeMap<&str, u64> = BTreeMap::new();
        for inc in view.surviving() {
            self.incidents += 1;
            let rule = if inc.rule().is_empty() {
                "(no rule)"
            } else {
                inc.rule()
            };
            let hits = self.rules.entry(rule.to_string()).or_default();
            hits.incidents += 1;
            hits.alerts += inc.alerts.len() as u64;
            for a in &inc.alerts {
                *cis.entry(a.ci().unwrap_or("(no CI)")).or_default() += a.count;
                *sources.entry(a.source()).or_default() += a.count;
            }
        }
        let top = |m: BTreeMap<&str, u64>| {
            let mut v: Vec<(String, u64)> =
                m.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.truncate(10);
            v
        };
        self.noisiest_cis = top(cis);
        self.noisiest_sources = top(sources);
        self.compression = if self.distinct_alerts == 0 {
            0.0
        } else {
            1.0 - self.incidents as f64 / self.distinct_alerts as f64
        };
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "alerts:          {}", self.alerts)?;
        writeln!(f, "distinct alerts: {}", self.distinct_alerts)?;
        writeln!(f, "incidents:       {}", self.incidents)?;
        writeln!(f, "suppressed:      {}", self.suppressed)?;
        writeln!(f, "compression:     {:.3}", self.compression)?;
        writeln!(f, "rules (incidents / alerts):")?;
        for (rule, hits) in &self.rules {
            writeln!(f, "  {rule:<24} {:>7} / {}", hits.incidents, hits.alerts)?;
        }
        let list = |v: &[(String, u64)]| {
            v.iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "noisiest CIs:    {}", list(&self.noisiest_cis))?;
        write!(f, "noisiest sources: {}", list(&self.noisiest_sources))
    }
}

/// The outcome of a replay: the summary, and the engine and read model for scoring and diffs.
pub struct Replayed {
    pub summary: Summary,
    pub engine: Engine,
    pub view: ReadModel,
}

/// A replay input line that changes the CMDB instead of carrying an alert.
#[derive(serde::Deserialize)]
struct CmdbLine {
    cmdb_change: Vec<CmdbOp>,
    received_at: String,
}

/// Replays `input` through an engine with `rules` and the CMDB `cmdb`, writing incidents to
/// `out`. With `progress`, a status line on stderr shows how far it got (for terminals).
pub fn run(
    mut rules: Rules,
    cmdb: &CmdbSpec,
    input: impl BufRead,
    mut out: impl Write,
    progress: bool,
) -> Result<Replayed, ReplayError> {
    let started = Instant::now();
    let mut shown = started;
    let limits = Limits::default();
    // Closing only frees the live service's memory (it changes no correlation): the output
    // lists every incident of the recorded history.
    rules.lifecycle.close_after = None;
    let mut engine = Engine::new(rules);
    let mut view = ReadModel::default();
    let mut facts = Vec::new();
    let mut seq = 0u64;
    let mut summary = Summary::default();
    engine.load_cmdb(cmdb, "replay --cmdb", 0, &mut facts);
    for fact in &facts {
        seq += 1;
        view.apply(seq, fact);
    }
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(ReplayError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let at_line = |message: String| ReplayError::Line {
            line: i + 1,
            message,
        };
        if line.contains("\"cmdb_change\"") {
            let change: CmdbLine =
                serde_json::from_str(&line).map_err(|e| at_line(e.to_string()))?;
            let now = parse_time(&change.received_at).ok_or_else(|| {
                at_line(format!(
                    "received_at {:?} is not RFC 3339",
                    change.received_at
                ))
            })?;
            engine.begin_batch();
            facts.clear();
            let input = Input::Cmdb {
                now,
                source: "replay input",
                ops: &change.cmdb_change,
            };
            engine
                .handle(input, &mut facts)
                .map_err(|e| at_line(e.to_string()))?;
            for fact in &facts {
                seq += 1;
                view.apply(seq, fact);
            }
            continue;
        }
        let decoded = ingest::decode(Format::Native, line.as_bytes(), Stamp::Replay, &limits)
            .map_err(|e| at_line(e.message))?;
        if let Some(e) = decoded.errors.first() {
            return Err(at_line(format!("{}: {}", e.field, e.message)));
        }
        for alert in &decoded.alerts {
            engine.begin_batch();
            facts.clear();
            // Time-driven decisions happen when they fall due, as the live ticker would make
            // them. Neither input can be refused: only operator commands can.
            while let Some(due) = engine.next_deadline().filter(|&d| d <= alert.received_at) {
                let _ = engine.handle(Input::Tick { now: due }, &mut facts);
            }
            let _ = engine.handle(Input::Alert(alert), &mut facts);
            for fact in &facts {
                seq += 1;
                view.apply(seq, fact);
            }
            summary.alerts += 1;
        }
        if progress && shown.elapsed() >= Duration::from_millis(250) {
            shown = Instant::now();
            let rate = summary.alerts as f64 / started.elapsed().as_secs_f64();
            eprint!(
                "\r{} lines, {} alerts, {rate:.0} alerts/s",
                i + 1,
                summary.alerts
            );
        }
    }
    if progress {
        eprintln!();
    }
    for incident in view.surviving() {
        serde_json::to_writer(&mut out, &incident.doc(&view.topology, false))
            .map_err(|e| ReplayError::Write(e.into()))?;
        out.write_all(b"\n").map_err(ReplayError::Write)?;
    }
    out.flush().map_err(ReplayError::Write)?;
    summary.distinct_alerts = engine.state().alerts.len() as u64;
    summary.suppressed = view.suppressed_keys().len() as u64;
    summary.tally(&view);
    Ok(Replayed {
        summary,
        engine,
        view,
    })
}
