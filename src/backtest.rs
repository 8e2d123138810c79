//! Backtesting: how good a replay's incidents are against ground truth, what simple baselines
//! would have done, and how two rule sets (or CMDB versions) differ on the same history.
//!
//! Quality is measured the way clustering is: over pairs of distinct alerts (by dedup key),
//! *precision* is the share of pairs put together that truly belong together, *recall* the
//! share of pairs that belong together that were put together. Computed from the contingency
//! table of (true incident, predicted incident) counts, never by enumerating pairs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::IncidentId;
use crate::rules::{Rules, RulesError};
use crate::view::ReadModel;

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("truth: dedup key {0:?} appears more than once")]
    DuplicateKey(String),
    #[error("unknown baseline {0:?} (use by-name, by-ci or alertmanager)")]
    UnknownBaseline(String),
    #[error(transparent)]
    Rules(#[from] RulesError),
}

/// Ground truth for a recorded alert stream (`--truth FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    pub incidents: Vec<TruthIncident>,
    #[serde(default)]
    pub suppressed: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthIncident {
    pub label: String,
    #[serde(default)]
    pub kind: Option<String>,
    pub root_ci: Option<String>,
    /// Dedup keys of the alerts that belong to it.
    pub alerts: Vec<String>,
}

impl Truth {
    pub fn load(path: &Path) -> Result<Truth, BacktestError> {
        let text = std::fs::read_to_string(path).map_err(|source| BacktestError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let truth: Truth = serde_json::from_str(&text).map_err(|source| BacktestError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        let mut seen = BTreeSet::new();
        for key in truth
            .incidents
            .iter()
            .flat_map(|i| &i.alerts)
            .chain(&truth.suppressed)
        {
            if !seen.insert(key) {
                return Err(BacktestError::DuplicateKey(key.clone()));
            }
        }
        Ok(truth)
    }
}

/// Quality figures of one replay against the truth.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Quality {
    pub pairwise_precision: f64,
    pub pairwise_recall: f64,
    pub pairwise_f1: f64,
    /// Share of true incidents whose predicted incident (the one holding most of their
    /// alerts) names the true root CI.
    pub root_cause_accuracy: f64,
    pub true_incidents: usize,
    pub predicted_incidents: usize,
    pub suppressed_expected: usize,
    pub suppressed_correct: usize,
    /// Truth keys never seen in the replay (a broken truth file or input).
    pub missing_keys: usize,
}

/// Where each dedup key ended up in a replay: its (surviving) incident, or none.
fn placement(view: &ReadModel) -> HashMap<&str, IncidentId> {
    let mut out = HashMap::new();
    for inc in view.surviving() {
        for a in &inc.alerts {
            if let Some(key) = a.dedup_key() {
                out.insert(key, inc.id);
            }
        }
    }
    out
}

fn pairs(n: u64) -> f64 {
    (n * n.saturating_sub(1) / 2) as f64
}

/// Scores a replay's read model against the truth. `suppressed` holds the dedup keys the
/// engine suppressed.
pub fn score(truth: &Truth, view: &ReadModel, suppressed: &BTreeSet<String>) -> Quality {
    let placed = placement(view);
    let roots: HashMap<IncidentId, Option<&str>> =
        view.surviving().map(|i| (i.id, i.root_ci())).collect();
    let mut q = Quality {
        true_incidents: truth.incidents.len(),
        predicted_incidents: view.surviving().count(),
        suppressed_expected: truth.suppressed.len(),
        suppressed_correct: truth
            .suppressed
            .iter()
            .filter(|k| suppressed.contains(*k))
            .count(),
        ..Quality::default()
    };
    // Contingency table over the truth's (non-suppressed) keys. An alert in no incident is a
    // cluster of its own.
    let mut cell: HashMap<(usize, Option<IncidentId>), u64> = HashMap::new();
    let mut predicted: HashMap<Option<IncidentId>, u64> = HashMap::new();
    let mut same_truth = 0.0;
    let mut correct_roots = 0;
    for (t, inc) in truth.incidents.iter().enumerate() {
        same_truth += pairs(inc.alerts.len() as u64);
        let mut votes: BTreeMap<IncidentId, usize> = BTreeMap::new();
        for key in &inc.alerts {
            match placed.get(key.as_str()) {
                Some(&id) => {
                    *cell.entry((t, Some(id))).or_default() += 1;
                    *predicted.entry(Some(id)).or_default() += 1;
                    *votes.entry(id).or_default() += 1;
                }
                None => {
                    if !suppressed.contains(key) {
                        q.missing_keys += 1;
                    }
                }
            }
        }
        // Most alerts wins; ties go to the lower (older) incident id.
        let best = votes
            .iter()
            .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        if let Some(id) = best
            && roots.get(&id).copied().flatten() == inc.root_ci.as_deref()
        {
            correct_roots += 1;
        }
    }
    let together: f64 = predicted.values().map(|&n| pairs(n)).sum();
    let both: f64 = cell.values().map(|&n| pairs(n)).sum();
    q.pairwise_precision = if together > 0.0 { both / together } else { 1.0 };
    q.pairwise_recall = if same_truth > 0.0 {
        both / same_truth
    } else {
        1.0
    };
    let (p, r) = (q.pairwise_precision, q.pairwise_recall);
    q.pairwise_f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    q.root_cause_accuracy = if truth.incidents.is_empty() {
        1.0
    } else {
        correct_roots as f64 / truth.incidents.len() as f64
    };
    q
}

impl std::fmt::Display for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pairwise:        precision {:.3}  recall {:.3}  F1 {:.3}",
            self.pairwise_precision, self.pairwise_recall, self.pairwise_f1
        )?;
        writeln!(
            f,
            "root cause:      {:.3} of {} true incidents ({} predicted)",
            self.root_cause_accuracy, self.true_incidents, self.predicted_incidents
        )?;
        write!(
            f,
            "suppressed:      {} of {} expected",
            self.suppressed_correct, self.suppressed_expected
        )?;
        if self.missing_keys > 0 {
            write!(
                f,
                "\nmissing keys:    {} (in the truth, not in the input)",
                self.missing_keys
            )?;
        }
        Ok(())
    }
}

/// Simple correlation strategies to compare against, as rule sets the same engine runs.
pub const BASELINES: [&str; 3] = ["by-name", "by-ci", "alertmanager"];

/// The rule set of a named baseline: group by alert name; by CI (the CMDB-resolved CI, else
/// name); or Alertmanager's usual route (`group_by: [alertname, source]`, 5m interval).
pub fn baseline(name: &str) -> Result<Rules, BacktestError> {
    let text = match name {
        "by-name" => "[[rule]]\nname = \"by-name\"\ngroup_by = [\"name\"]\nwindow = \"10m\"\n",
        "by-ci" => concat!(
            "[[rule]]\nname = \"by-ci\"\nmatch = [{ field = \"ci\", exists = true }]\n",
            "group_by = [\"ci\"]\nwindow = \"10m\"\n",
            "[[rule]]\nname = \"no-ci\"\ngroup_by = [\"name\"]\nwindow = \"10m\"\n"
        ),
        "alertmanager" => {
            "[[rule]]\nname = \"alertmanager\"\ngroup_by = [\"name\", \"source\"]\nwindow = \"5m\"\n"
        }
        other => return Err(BacktestError::UnknownBaseline(other.to_string())),
    };
    Ok(Rules::parse_files(&[(
        format!("baseline-{name}.toml"),
        text.to_string(),
    )])?)
}

/// One way a rule change altered the incidents of the same history.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// One incident before became several.
    Split {
        before: String,
        title: String,
        after: Vec<String>,
    },
    /// Several incidents before became one.
    Merged {
        after: String,
        title: String,
        before: Vec<String>,
    },
    RootChanged {
        before: String,
        after: String,
        from: Option<String>,
        to: Option<String>,
    },
    PriorityChanged {
        before: String,
        after: String,
        from: String,
        to: String,
    },
}

/// What changed between two replays of the same input (`before` with the current rules or
/// CMDB, `after` with the proposed ones). Alerts are matched by dedup key, else fingerprint.
pub fn diff(before: &ReadModel, after: &ReadModel) -> Vec<Change> {
    let key = |a: &crate::view::AlertView| {
        a.dedup_key()
            .map_or_else(|| a.fingerprint.to_string(), str::to_string)
    };
    let home = |view: &ReadModel| -> HashMap<String, IncidentId> {
        view.surviving()
            .flat_map(|i| i.alerts.iter().map(move |a| (key(a), i.id)))
            .collect()
    };
    let (in_before, in_after) = (home(before), home(after));
    let mut changes = Vec::new();
    let mut one_to_one = Vec::new();
    for inc in before.surviving() {
        let targets: BTreeSet<IncidentId> = inc
            .alerts
            .iter()
            .filter_map(|a| in_after.get(&key(a)).copied())
            .collect();
        if targets.len() > 1 {
            changes.push(Change::Split {
                before: inc.id.to_string(),
                title: inc.title(),
                after: targets.iter().map(|id| id.to_string()).collect(),
            });
        } else if let Some(&target) = targets.first() {
            one_to_one.push((inc, target));
        }
    }
    for inc in after.surviving() {
        let sources: BTreeSet<IncidentId> = inc
            .alerts
            .iter()
            .filter_map(|a| in_before.get(&key(a)).copied())
            .collect();
        if sources.len() > 1 {
            changes.push(Change::Merged {
                after: inc.id.to_string(),
                title: inc.title(),
                before: sources.iter().map(|id| id.to_string()).collect(),
            });
        }
    }
    for (old, target) in one_to_one {
        let Some(new) = after.get(target) else {
            continue;
        };
        let merged = changes
            .iter()
            .any(|c| matches!(c, Change::Merged { after, .. } if *after == new.id.to_string()));
        if merged {
            continue;
        }
        if old.root_ci() != new.root_ci() {
            changes.push(Change::RootChanged {
                before: old.id.to_string(),
                after: new.id.to_string(),
                from: old.root_ci().map(str::to_string),
                to: new.root_ci().map(str::to_string),
            });
        }
        if old.priority != new.priority {
            changes.push(Change::PriorityChanged {
                before: old.id.to_string(),
                after: new.id.to_string(),
                from: old.priority.as_str().to_string(),
                to: new.priority.as_str().to_string(),
            });
        }
    }
    changes
}

/// The diff as a reviewer reads it.
pub fn describe(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no incident changed\n".to_string();
    }
    let mut out = String::new();
    for c in changes {
        let _ = match c {
            Change::Split {
                before,
                title,
                after,
            } => writeln!(out, "split:    {before} ({title}) -> {}", after.join(", ")),
            Change::Merged {
                after,
                title,
                before,
            } => writeln!(out, "merged:   {} -> {after} ({title})", before.join(", ")),
            Change::RootChanged {
                before,
                after,
                from,
                to,
            } => writeln!(
                out,
                "root:     {before} -> {after}: {} -> {}",
                from.as_deref().unwrap_or("-"),
                to.as_deref().unwrap_or("-")
            ),
            Change::PriorityChanged {
                before,
                after,
                from,
                to,
            } => writeln!(out, "priority: {before} -> {after}: {from} -> {to}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_counting() {
        assert_eq!(pairs(0), 0.0);
        assert_eq!(pairs(1), 0.0);
        assert_eq!(pairs(4), 6.0);
    }

    #[test]
    fn baselines_compile_and_unknown_ones_are_named() {
        for name in BASELINES {
            baseline(name).expect("baseline compiles");
        }
        assert!(matches!(
            baseline("magic"),
            Err(BacktestError::UnknownBaseline(_))
        ));
    }
}
