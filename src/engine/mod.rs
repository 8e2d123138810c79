//! The correlation engine: a deterministic state machine owned by one thread.
//!
//! `decide(&self, ..)` holds all the logic and only appends facts; `apply(&mut self, ..)` holds
//! none and only mutates state. Live ingest calls `handle`, which decides and then applies;
//! replay of the event log calls `apply` alone, so the log reproduces the state exactly even
//! after the rules changed. The engine never reads the clock and never does I/O: time arrives
//! as data, in each alert's `received_at` and in `Tick`s. Hash maps are only looked up, never
//! iterated where the order could reach a fact.
//!
//! Correlation (the first matching rule decides):
//! - maintenance windows suppress an alert (recorded, not correlated);
//! - `group_by` rules join the open incident of the same group within the window;
//! - `topology` rules search the CMDB neighbourhood of the alert's CI for open incidents with
//!   alerting CIs: incidents whose root is downstream of the new CI merge (a common cause
//!   arrived, often last); otherwise the alert joins the most specific upstream cause, else a
//!   sibling's incident, else it opens its own. Hubs are never walked through.

pub mod facts;
pub mod record;
pub mod snapshot_codec;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use facts::{Fact, IncidentId, IncidentState, Priority};

use serde::{Deserialize, Serialize};

use crate::cmdb::{CiIdx, CmdbOp, CmdbSpec, Criticality, Direction, Reach, Topology};
use crate::model::{Alert, Fingerprint, Millis, Severity, Status, format_duration};
use crate::rules::{Level, Policy, Rule, Rules, TopologyPolicy};

/// State changes within `FLAP_WINDOW` that mark an alert as flapping.
const FLAP_CHANGES: usize = 4;
const FLAP_WINDOW: Millis = 10 * 60_000;
/// Transition times remembered per alert, for flap detection.
const FLAP_MEMORY: usize = 8;
/// Safety valve on one neighbourhood search.
const MAX_NODES: usize = 20_000;
/// CMDB operations per `CmdbChanged` fact, so a large initial load stays under the log's
/// record size limit.
const CMDB_OPS_PER_FACT: usize = 2_000;

/// Something the engine is asked to do.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Alert(&'a Alert),
    Acknowledge {
        now: Millis,
        incident: IncidentId,
        by: &'a str,
        comment: Option<&'a str>,
    },
    Resolve {
        now: Millis,
        incident: IncidentId,
        by: &'a str,
        comment: Option<&'a str>,
    },
    /// An operator's comment; refused only for an unknown incident.
    Comment {
        now: Millis,
        incident: IncidentId,
        actor: &'a str,
        text: &'a str,
    },
    /// Live topology changes (HTTP API, NATS `cmdb.>`, replay input).
    Cmdb {
        now: Millis,
        source: &'a str,
        ops: &'a [CmdbOp],
    },
    /// Time passes: alerts time out, quiet incidents auto-resolve.
    Tick {
        now: Millis,
    },
    /// These JetStream messages are now ingested (their alerts were handled before).
    Consumed {
        now: Millis,
        seqs: &'a [u64],
    },
    /// Create a silence (replacing `replaces`, as Alertmanager's update does).
    Silence {
        now: Millis,
        replaces: Option<&'a str>,
        matchers: &'a [crate::silence::Matcher],
        starts_at: Millis,
        ends_at: Millis,
        created_by: &'a str,
        comment: &'a str,
    },
    ExpireSilence {
        now: Millis,
        id: &'a str,
    },
}

/// Why an operator command was refused. Alerts are never refused by the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("incident {0} not found")]
    NotFound(IncidentId),
    #[error("incident {0} is resolved")]
    AlreadyResolved(IncidentId),
    #[error("CMDB change refused: {0}")]
    InvalidCmdb(String),
    #[error("silence refused: {0}")]
    InvalidSilence(String),
    #[error("silence {0} not found")]
    SilenceNotFound(String),
}

/// What the engine remembers about one alert (its current life).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub incident: Option<IncidentId>,
    pub ci: Option<CiIdx>,
    pub status: Status,
    pub severity: Severity,
    pub count: u64,
    pub first_seen: Millis,
    pub last_seen: Millis,
    pub ends_at: Option<Millis>,
    pub name: String,
    pub suppressed: bool,
    pub flapping: bool,
    /// Times of the latest state changes (at most `FLAP_MEMORY`).
    transitions: Vec<Millis>,
}

/// What the engine remembers about one incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub state: IncidentState,
    pub rule: String,
    pub group_key: String,
    pub opened_at: Millis,
    pub last_activity: Millis,
    pub resolved_at: Option<Millis>,
    pub merged_into: Option<IncidentId>,
    /// Opened by a topology rule, so indexed by CI for neighbourhood search.
    pub topology: bool,
    pub members: Vec<Fingerprint>,
    /// Distinct CIs of the members.
    pub cis: Vec<CiIdx>,
    /// Members currently firing.
    pub firing: u32,
    /// Since when no member has fired (only while not resolved); drives auto-resolve.
    pub quiet_since: Option<Millis>,
    pub root: Option<Fingerprint>,
    pub root_ci: Option<CiIdx>,
    pub services: BTreeSet<CiIdx>,
    pub priority: Priority,
    pub max_severity: Severity,
}

/// Everything `apply` builds. Comparable, so tests can assert replay equals live; and
/// serializable, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub now: Millis,
    pub topology: Topology,
    pub alerts: HashMap<Fingerprint, AlertState>,
    pub incidents: BTreeMap<IncidentId, Incident>,
    /// Newest incident per group key.
    groups: HashMap<String, IncidentId>,
    /// Unresolved incidents with a member on each CI: topology search never scans incidents.
    by_ci: HashMap<CiIdx, Vec<IncidentId>>,
    last_incident: u64,
    /// Unresolved incidents with no firing member, by the time they went quiet.
    quiet: BTreeSet<(Millis, IncidentId)>,
    /// Firing alerts that time out unless re-sent, by `ends_at`.
    expiries: BTreeSet<(Millis, Fingerprint)>,
    pub rules_version: u64,
    pub rules_hash: String,
    consumed: Consumed,
    /// Every silence ever created, by id (expired ones stay, as in Alertmanager's list).
    pub silences: BTreeMap<String, crate::silence::Silence>,
    last_silence: u64,
}

/// JetStream stream sequences already ingested: everything up to `floor`, plus `above`.
/// Kept compact because delivery is mostly in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Consumed {
    floor: u64,
    above: BTreeSet<u64>,
}

impl Consumed {
    fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    fn insert(&mut self, seq: u64) {
        if seq <= self.floor {
            return;
        }
        self.above.insert(seq);
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
    }
}

impl State {
    /// Entries held (alerts and incidents): what copying or writing the state costs.
    pub fn size(&self) -> u64 {
        (self.alerts.len() + self.incidents.len()) as u64
    }

    /// Whether the alerts of this JetStream message are already in the log.
    pub fn consumed(&self, seq: u64) -> bool {
        self.consumed.contains(seq)
    }
}

/// The engine: current rules plus the state they act on.
pub struct Engine {
    rules: Rules,
    state: State,
    scratch: Vec<Fact>,
    /// Index in the caller's batch of the coalescable `AlertRepeated` per alert.
    repeat_slots: HashMap<Fingerprint, usize>,
}

/// Where a new firing alert goes.
enum Target {
    Open {
        rule: String,
        group_key: String,
        reason: String,
        topology: bool,
    },
    Join {
        incident: IncidentId,
        reason: String,
        /// Incidents to merge into `incident` first, with the reason for each.
        merge: Vec<(IncidentId, String)>,
        /// Why this alert becomes the root cause, if it does.
        new_root: Option<String>,
    },
}

/// How an open incident relates to a new alert's CI.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Link {
    /// A member on the same CI or upstream of it: the incident may be the alert's cause.
    Cause,
    /// The incident's root is downstream: the alert may be the incident's cause.
    Effect,
    /// A member downstream (root elsewhere) or a sibling: related, not causal.
    Related,
}

struct Candidate {
    incident: IncidentId,
    relation: Link,
    hops: u8,
    via: CiIdx,
    last_activity: Millis,
}

impl Engine {
    pub fn new(rules: Rules) -> Engine {
        Engine {
            rules,
            state: State::default(),
            scratch: Vec::new(),
            repeat_slots: HashMap::new(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// An engine resuming from a snapshot's state.
    pub fn restore(rules: Rules, state: State) -> Engine {
        Engine {
            state,
            ..Engine::new(rules)
        }
    }

    /// The earliest engine time at which a `Tick` would decide something (an alert timing
    /// out, an incident's hold-down ending). Replay ticks exactly there.
    pub fn next_deadline(&self) -> Option<Millis> {
        let expiry = self.state.expiries.first().map(|&(t, _)| t);
        let quiet = self
            .state
            .quiet
            .first()
            .map(|&(since, _)| since.saturating_add(self.rules.lifecycle.hold_down));
        match (expiry, quiet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts a batch: facts that `handle` appends to `out` from now on may be coalesced.
    /// Call it whenever `out` is handed off and cleared.
    pub fn begin_batch(&mut self) {
        self.repeat_slots.clear();
    }

    /// Decides what `input` means, applies it, and appends the facts to `out`. Repeats of one
    /// alert within a batch are coalesced into one `AlertRepeated`, so the log grows with
    /// state changes rather than with the raw duplicate rate.
    pub fn handle(&mut self, input: Input<'_>, out: &mut Vec<Fact>) -> Result<(), CommandError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let result = self.decide(input, &mut scratch);
        for fact in scratch.drain(..) {
            self.apply(&fact);
            self.push_coalesced(fact, out);
        }
        self.scratch = scratch;
        result
    }

    /// [`handle`](Self::handle) for an alert the caller gives up: a new alert moves into
    /// its `AlertReceived` fact instead of being copied. Same facts, same state.
    pub fn handle_alert(&mut self, alert: Alert, out: &mut Vec<Fact>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.decide_alert(Cow::Owned(alert), &mut scratch);
        for fact in scratch.drain(..) {
            self.apply(&fact);
            self.push_coalesced(fact, out);
        }
        self.scratch = scratch;
    }

    /// Swaps in a new rule set; records it as a fact when its content differs.
    pub fn load_rules(&mut self, rules: Rules, now: Millis, out: &mut Vec<Fact>) {
        if rules.hash != self.state.rules_hash {
            let fact = Fact::RulesLoaded {
                at: now.max(self.state.now),
                version: self.state.rules_version + 1,
                hash: rules.hash.clone(),
            };
            self.apply(&fact);
            self.push_coalesced(fact, out);
        }
        self.rules = rules;
    }

    /// Brings the topology to `spec` (the CMDB file), recording only the differences.
    pub fn load_cmdb(&mut self, spec: &CmdbSpec, source: &str, now: Millis, out: &mut Vec<Fact>) {
        let ops = self.state.topology.diff(spec);
        for chunk in ops.chunks(CMDB_OPS_PER_FACT) {
            let fact = Fact::CmdbChanged {
                at: now.max(self.state.now),
                source: source.to_string(),
                ops: chunk.to_vec(),
            };
            self.apply(&fact);
            self.push_coalesced(fact, out);
        }
    }

    fn push_coalesced(&mut self, fact: Fact, out: &mut Vec<Fact>) {
        if let Fact::AlertRepeated {
            at,
            fingerprint,
            count,
            severity,
            ends_at,
        } = &fact
        {
            if let Some(&slot) = self.repeat_slots.get(fingerprint)
                && let Some(Fact::AlertRepeated {
                    at: prev_at,
                    fingerprint: prev_fp,
                    count: prev_count,
                    severity: prev_severity,
                    ends_at: prev_ends,
                }) = out.get_mut(slot)
                // A change of severity stays its own fact: the incident's worst severity
                // depends on every value seen, not only the last.
                && prev_fp == fingerprint
                && prev_severity == severity
            {
                *prev_at = (*prev_at).max(*at);
                *prev_count += count;
                *prev_ends = *ends_at;
                return;
            }
            self.repeat_slots.insert(*fingerprint, out.len());
        } else if matches!(fact, Fact::IncidentsMerged { .. }) {
            // A merge moves alerts between incidents: a repeat after it must not be folded
            // into one before it, or replay would credit the wrong incident.
            self.repeat_slots.clear();
        } else if let Some(fp) = fact.fingerprint() {
            self.repeat_slots.remove(&fp);
        }
        out.push(fact);
    }

    /// All the logic: reads state, appends facts, changes nothing.
    pub fn decide(&self, input: Input<'_>, out: &mut Vec<Fact>) -> Result<(), CommandError> {
        match input {
            Input::Alert(alert) => {
                self.decide_alert(Cow::Borrowed(alert), out);
                Ok(())
            }
            Input::Acknowledge {
                now,
                incident,
                by,
                comment,
            } => {
                let inc = self.incident(incident)?;
                match inc.state {
                    IncidentState::Resolved => Err(CommandError::AlreadyResolved(incident)),
                    IncidentState::Acknowledged => Ok(()),
                    IncidentState::Open => {
                        out.push(Fact::IncidentAcknowledged {
                            at: now.max(self.state.now),
                            incident,
                            by: by.to_string(),
                            comment: comment.map(str::to_string),
                        });
                        Ok(())
                    }
                }
            }
            Input::Resolve {
                now,
                incident,
                by,
                comment,
            } => {
                let inc = self.incident(incident)?;
                if inc.state == IncidentState::Resolved {
                    return Err(CommandError::AlreadyResolved(incident));
                }
                out.push(Fact::IncidentResolved {
                    at: now.max(self.state.now),
                    incident,
                    by: by.to_string(),
                    comment: comment.map(str::to_string),
                });
                Ok(())
            }
            Input::Comment {
                now,
                incident,
                actor,
                text,
            } => {
                self.incident(incident)?;
                out.push(Fact::IncidentCommented {
                    at: now.max(self.state.now),
                    incident,
                    actor: actor.to_string(),
                    text: text.to_string(),
                });
                Ok(())
            }
            Input::Cmdb { now, source, ops } => {
                self.state.topology.validate(ops).map_err(|problems| {
                    let text: Vec<String> = problems
                        .iter()
                        .map(|p| format!("{}: {}", p.location, p.message))
                        .collect();
                    CommandError::InvalidCmdb(text.join("; "))
                })?;
                if !ops.is_empty() {
                    out.push(Fact::CmdbChanged {
                        at: now.max(self.state.now),
                        source: source.to_string(),
                        ops: ops.to_vec(),
                    });
                }
                Ok(())
            }
            Input::Tick { now } => {
                self.decide_tick(now.max(self.state.now), out);
                Ok(())
            }
            Input::Silence {
                now,
                replaces,
                matchers,
                starts_at,
                ends_at,
                created_by,
                comment,
            } => {
                let now = now.max(self.state.now);
                crate::silence::validate(matchers, starts_at, ends_at)
                    .map_err(CommandError::InvalidSilence)?;
                if let Some(old) = replaces {
                    if !self.state.silences.contains_key(old) {
                        return Err(CommandError::SilenceNotFound(old.to_string()));
                    }
                    out.push(Fact::SilenceExpired {
                        at: now,
                        id: old.to_string(),
                    });
                }
                let n = self.state.last_silence + 1;
                out.push(Fact::SilenceCreated {
                    at: now,
                    silence: crate::silence::Silence {
                        id: format!("00000000-0000-4000-8000-{n:012x}"),
                        matchers: matchers.to_vec(),
                        starts_at,
                        ends_at,
                        created_by: created_by.to_string(),
                        comment: comment.to_string(),
                        updated_at: now,
                    },
                });
                Ok(())
            }
            Input::ExpireSilence { now, id } => {
                let silence = self
                    .state
                    .silences
                    .get(id)
                    .ok_or_else(|| CommandError::SilenceNotFound(id.to_string()))?;
                let now = now.max(self.state.now);
                if silence.ends_at > now {
                    out.push(Fact::SilenceExpired {
                        at: now,
                        id: id.to_string(),
                    });
                }
                Ok(())
            }
            Input::Consumed { now, seqs } => {
                let fresh: Vec<u64> = seqs
                    .iter()
                    .copied()
                    .filter(|&s| !self.state.consumed.contains(s))
                    .collect();
                if !fresh.is_empty() {
                    out.push(Fact::StreamConsumed {
                        at: now.max(self.state.now),
                        seqs: fresh,
                    });
                }
                Ok(())
            }
        }
    }

    fn incident(&self, id: IncidentId) -> Result<&Incident, CommandError> {
        self.state
            .incidents
            .get(&id)
            .ok_or(CommandError::NotFound(id))
    }

    /// The alert's CI: its `ci` if the CMDB knows it, else found by lookup keys.
    fn resolve_ci(&self, alert: &Alert) -> Option<CiIdx> {
        self.state
            .topology
            .resolve(alert.ci.as_deref(), &alert.labels)
    }

    /// `alert` is owned when the caller gives it up ([`Engine::handle_alert`]): a new alert
    /// then moves into its `AlertReceived` fact instead of being copied.
    fn decide_alert(&self, alert: Cow<'_, Alert>, out: &mut Vec<Fact>) {
        let now = alert.received_at.max(self.state.now);
        let fp = alert.fingerprint;
        let Some(current) = self.state.alerts.get(&fp) else {
            self.receive(alert, now, out);
            return;
        };
        let alert = alert.as_ref();
        let incident = current
            .incident
            .and_then(|id| self.state.incidents.get(&id));
        match (current.status, alert.status) {
            (Status::Firing, Status::Firing) => {
                out.push(Fact::AlertRepeated {
                    at: now,
                    fingerprint: fp,
                    count: 1,
                    severity: alert.severity,
                    ends_at: alert.ends_at,
                });
                match incident {
                    Some(inc) => self.escalate(inc, alert, now, out),
                    // Suppressed until now: once no window covers it, it correlates.
                    None if current.suppressed
                        && self.suppression(alert, current.ci, now).is_none() =>
                    {
                        self.correlate(alert, current.ci, now, out);
                    }
                    None => {}
                }
            }
            (Status::Firing, Status::Resolved) => out.push(Fact::AlertResolved {
                at: now,
                fingerprint: fp,
                ends_at: alert.ends_at.unwrap_or(now),
                reason: "resolved by its sender".into(),
            }),
            (Status::Resolved, Status::Resolved) => {}
            (Status::Resolved, Status::Firing) => {
                let refire = Fact::AlertRefired {
                    at: now,
                    fingerprint: fp,
                    severity: alert.severity,
                    ends_at: alert.ends_at,
                };
                let recent = current
                    .transitions
                    .iter()
                    .filter(|&&t| now - t <= FLAP_WINDOW)
                    .count()
                    + 1;
                let flapping =
                    (!current.flapping && recent >= FLAP_CHANGES).then(|| Fact::AlertFlapping {
                        at: now,
                        fingerprint: fp,
                        reason: format!(
                            "{recent} state changes within {}",
                            format_duration(FLAP_WINDOW)
                        ),
                    });
                match incident {
                    Some(inc) if inc.state != IncidentState::Resolved => {
                        out.push(refire);
                        out.extend(flapping);
                        self.escalate(inc, alert, now, out);
                    }
                    Some(inc)
                        if inc.merged_into.is_none()
                            && inc
                                .resolved_at
                                .is_some_and(|r| now - r <= self.rules.lifecycle.reopen_window) =>
                    {
                        let ago = now - inc.resolved_at.unwrap_or(now);
                        out.push(Fact::IncidentReopened {
                            at: now,
                            incident: inc.id,
                            reason: format!(
                                "{} fired again {} after the incident resolved (reopen window {})",
                                alert.name,
                                format_duration(ago),
                                format_duration(self.rules.lifecycle.reopen_window)
                            ),
                        });
                        out.push(refire);
                        out.extend(flapping);
                        self.escalate(inc, alert, now, out);
                    }
                    _ => self.receive(Cow::Borrowed(alert), now, out),
                }
            }
        }
    }

    /// A new alert, or a new life of an old one: record it, then correlate it if it fires.
    fn receive(&self, alert: Cow<'_, Alert>, now: Millis, out: &mut Vec<Fact>) {
        let ci = self.resolve_ci(&alert);
        // Record the CI the lookup found, so the log says where the alert was placed. Most
        // senders name the CI id itself: then the alert is recorded as it came.
        let found = ci
            .and_then(|idx| self.state.topology.ci(idx))
            .map(|c| c.id.as_str())
            .filter(|id| alert.ci.as_deref() != Some(*id));
        let recorded = match found {
            Some(id) => Cow::Owned(Alert {
                ci: Some(id.to_string()),
                ..alert.into_owned()
            }),
            None => alert,
        };
        // `AlertReceived` comes first; correlating first lets the alert move into it after.
        let start = out.len();
        if recorded.status == Status::Firing {
            // Rules see the resolved CI too: `ci` matchers and group keys work for alerts that
            // named their host only by a lookup key.
            self.correlate(&recorded, ci, now, out);
        }
        let fact = Fact::AlertReceived {
            at: now,
            alert: recorded.into_owned(),
        };
        out.insert(start, fact);
    }

    /// Why the alert is suppressed now, if it is: an active silence matching it (by its
    /// id), else a maintenance window covering it.
    fn suppression(
        &self,
        alert: &Alert,
        ci: Option<CiIdx>,
        now: Millis,
    ) -> Option<(String, String)> {
        if let Some(s) = self
            .state
            .silences
            .values()
            .find(|s| s.active(now) && s.matches(alert))
        {
            return Some((
                format!("silence {}", s.id),
                format!("silenced by {} ({}): {}", s.id, s.created_by, s.comment),
            ));
        }
        self.maintenance(alert, ci, now)
            .map(|by| (by.clone(), format!("suppressed by {by}")))
    }

    /// The first active maintenance window covering the alert.
    fn maintenance(&self, alert: &Alert, ci: Option<CiIdx>, now: Millis) -> Option<String> {
        let topo = &self.state.topology;
        self.rules.maintenance.iter().find_map(|m| {
            if !m.active(now) || !m.matches(alert) {
                return None;
            }
            if m.cis.is_empty() {
                return Some(format!("maintenance {:?}: matchers", m.name));
            }
            let ci = ci?;
            m.cis.iter().find_map(|id| {
                let under = topo.index(id)?;
                if under == ci {
                    Some(format!(
                        "maintenance {:?}: {id} is under maintenance",
                        m.name
                    ))
                } else if m.include_dependents
                    && topo.is_upstream(under, ci, crate::cmdb::RelationSet::ALL, 8)
                {
                    Some(format!("maintenance {:?}: depends on {id}", m.name))
                } else {
                    None
                }
            })
        })
    }

    /// Finds the incident a new firing alert belongs to, or opens one.
    fn correlate(&self, alert: &Alert, ci: Option<CiIdx>, now: Millis, out: &mut Vec<Fact>) {
        if let Some((by, reason)) = self.suppression(alert, ci, now) {
            out.push(Fact::AlertSuppressed {
                at: now,
                fingerprint: alert.fingerprint,
                by,
                reason,
            });
            return;
        }
        let rule = self.rules.first_match(alert, ci.is_some());
        let target = match (rule, ci) {
            (Some(rule), Some(ci)) if let Policy::Topology(policy) = &rule.policy => {
                self.topology_target(alert, ci, rule, policy, now)
            }
            (Some(rule), _) => self.group_target(alert, rule, now),
            (None, _) => Target::Open {
                rule: String::new(),
                group_key: format!("alert {}", alert.fingerprint),
                reason: "no rule matched: an incident of its own".into(),
                topology: false,
            },
        };
        self.emit(alert, ci, rule, target, now, out);
    }

    fn group_target(&self, alert: &Alert, rule: &Rule, now: Millis) -> Target {
        let group_key = rule.group_key(alert);
        if let Some(&id) = self.state.groups.get(&group_key)
            && let Some(inc) = self.state.incidents.get(&id)
            && inc.state != IncidentState::Resolved
            && now - inc.last_activity <= rule.window
        {
            return Target::Join {
                incident: id,
                reason: format!(
                    "rule {}: same group {group_key}, last activity {} ago (window {})",
                    rule.name,
                    format_duration(now - inc.last_activity),
                    format_duration(rule.window)
                ),
                merge: Vec::new(),
                new_root: None,
            };
        }
        Target::Open {
            rule: rule.name.clone(),
            reason: format!("rule {}: first alert of group {group_key}", rule.name),
            group_key,
            topology: false,
        }
    }

    /// Searches the CMDB neighbourhood of `ci` for open incidents and decides how the alert
    /// relates to them (see the module docs).
    fn topology_target(
        &self,
        alert: &Alert,
        ci: CiIdx,
        rule: &Rule,
        policy: &TopologyPolicy,
        now: Millis,
    ) -> Target {
        let topo = &self.state.topology;
        let mut reach = Vec::new();
        topo.neighborhood(
            ci,
            policy.relations,
            policy.max_hops,
            policy.max_fan_in,
            MAX_NODES,
            &mut reach,
        );
        let downstream = |c: CiIdx| {
            reach
                .iter()
                .any(|r| r.ci == c && r.direction == Direction::Downstream)
        };
        // Best relation per incident, in deterministic (reach) order.
        let mut candidates: Vec<Candidate> = Vec::new();
        let start = Reach {
            ci,
            hops: 0,
            direction: Direction::Upstream,
        };
        for r in std::iter::once(&start).chain(&reach) {
            if r.direction == Direction::Sibling && !policy.siblings {
                continue;
            }
            for &id in self
                .state
                .by_ci
                .get(&r.ci)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let Some(inc) = self.state.incidents.get(&id) else {
                    continue;
                };
                if inc.state == IncidentState::Resolved || now - inc.last_activity > rule.window {
                    continue;
                }
                let relation = match r.direction {
                    Direction::Upstream => Link::Cause,
                    _ if inc.root_ci.is_some_and(downstream) => Link::Effect,
                    _ => Link::Related,
                };
                match candidates.iter_mut().find(|c| c.incident == id) {
                    Some(c) if (relation, r.hops) < (c.relation, c.hops) => {
                        (c.relation, c.hops, c.via) = (relation, r.hops, r.ci);
                    }
                    Some(_) => {}
                    None => candidates.push(Candidate {
                        incident: id,
                        relation,
                        hops: r.hops,
                        via: r.ci,
                        last_activity: inc.last_activity,
                    }),
                }
            }
        }
        let name = |c: CiIdx| topo.ci(c).map_or("?", |c| c.id.as_str()).to_string();
        let path = |to: CiIdx| {
            // Every candidate was reached within max_hops (siblings within 2), so this bound
            // keeps the search as small as the neighbourhood walk.
            topo.path(ci, to, policy.relations, policy.max_hops.max(2))
                .unwrap_or_else(|| name(to))
        };
        // Most specific first: fewest hops, then most recent activity, then oldest incident.
        let best = |relation: Link| {
            candidates
                .iter()
                .filter(|c| c.relation == relation)
                .min_by_key(|c| (c.hops, std::cmp::Reverse(c.last_activity), c.incident))
        };
        let (cause, related) = (best(Link::Cause), best(Link::Related));
        let effects: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.relation == Link::Effect)
            .collect();
        let others = |chosen: IncidentId| {
            let rest: Vec<String> = candidates
                .iter()
                .filter(|c| c.incident != chosen && c.relation != Link::Effect)
                .map(|c| c.incident.to_string())
                .collect();
            if rest.is_empty() {
                String::new()
            } else {
                format!("; preferred over {} (less specific)", rest.join(", "))
            }
        };
        let root_of = |id: IncidentId| self.state.incidents.get(&id).and_then(|i| i.root_ci);
        let becomes_root = |id: IncidentId| {
            root_of(id).filter(|&r| r != ci && downstream(r)).map(|r| {
                format!(
                    "{} is upstream of the previous root {}: {}",
                    name(ci),
                    name(r),
                    path(r)
                )
            })
        };

        let chosen = cause.or_else(|| effects.iter().copied().min_by_key(|c| c.incident));
        if let Some(into) = chosen {
            let merge: Vec<(IncidentId, String)> = effects
                .iter()
                .filter(|e| e.incident != into.incident)
                .map(|e| {
                    let root = root_of(e.incident).map(name).unwrap_or_default();
                    (
                        e.incident,
                        format!(
                            "rule {}: {} ({}) is upstream of this incident's root {root}: {}",
                            rule.name,
                            name(ci),
                            alert.name,
                            root_of(e.incident).map(path).unwrap_or_default()
                        ),
                    )
                })
                .collect();
            let reason = match into.relation {
                Link::Cause if into.via == ci => format!(
                    "rule {}: same CI {} alerting in {}{}",
                    rule.name,
                    name(ci),
                    into.incident,
                    others(into.incident)
                ),
                Link::Cause => format!(
                    "rule {}: {} (alerting in {}, {} hop{}){}",
                    rule.name,
                    path(into.via),
                    into.incident,
                    into.hops,
                    if into.hops == 1 { "" } else { "s" },
                    others(into.incident)
                ),
                _ => format!(
                    "rule {}: {} is upstream of {}'s root: {}",
                    rule.name,
                    name(ci),
                    into.incident,
                    root_of(into.incident).map(path).unwrap_or_default()
                ),
            };
            return Target::Join {
                incident: into.incident,
                reason,
                new_root: becomes_root(into.incident),
                merge,
            };
        }
        if let Some(rel) = related {
            return Target::Join {
                incident: rel.incident,
                reason: format!(
                    "rule {}: {} (related: alerting in {}, {} hops){}",
                    rule.name,
                    path(rel.via),
                    rel.incident,
                    rel.hops,
                    others(rel.incident)
                ),
                new_root: becomes_root(rel.incident),
                merge: Vec::new(),
            };
        }
        Target::Open {
            rule: rule.name.clone(),
            group_key: rule.group_key(alert),
            reason: format!(
                "rule {}: no open incident within {} hops of {}",
                rule.name,
                policy.max_hops,
                name(ci)
            ),
            topology: true,
        }
    }

    /// Emits the facts that put a new firing alert where `target` says.
    fn emit(
        &self,
        alert: &Alert,
        ci: Option<CiIdx>,
        rule: Option<&Rule>,
        target: Target,
        now: Millis,
        out: &mut Vec<Fact>,
    ) {
        let fp = alert.fingerprint;
        let alert_services = ci.map_or(&[][..], |c| self.state.topology.services(c));
        match target {
            Target::Open {
                rule: rule_name,
                group_key,
                reason,
                topology,
            } => {
                let incident = IncidentId(self.state.last_incident + 1);
                out.push(Fact::IncidentOpened {
                    at: now,
                    incident,
                    rule: rule_name,
                    group_key,
                    topology,
                });
                out.push(Fact::AlertAttached {
                    at: now,
                    incident,
                    fingerprint: fp,
                    reason,
                });
                out.push(Fact::RootCauseChanged {
                    at: now,
                    incident,
                    fingerprint: fp,
                    reason: "first alert of the incident".into(),
                });
                let services: BTreeSet<CiIdx> = alert_services.iter().copied().collect();
                if !services.is_empty() {
                    out.push(self.impact_fact(incident, &services, alert, now));
                }
                let (priority, why) = self.priority(rule, &services, alert.severity);
                out.push(Fact::PriorityChanged {
                    at: now,
                    incident,
                    priority,
                    reason: why,
                });
            }
            Target::Join {
                incident,
                reason,
                merge,
                new_root,
            } => {
                let Some(inc) = self.state.incidents.get(&incident) else {
                    return;
                };
                let mut services = inc.services.clone();
                let mut severity = inc.max_severity.max(alert.severity);
                let mut priority = inc.priority;
                for (from, why) in merge {
                    if let Some(other) = self.state.incidents.get(&from) {
                        services.extend(other.services.iter().copied());
                        severity = severity.max(other.max_severity);
                        priority = priority.min(other.priority);
                    }
                    out.push(Fact::IncidentsMerged {
                        at: now,
                        into: incident,
                        from,
                        reason: why,
                    });
                }
                out.push(Fact::AlertAttached {
                    at: now,
                    incident,
                    fingerprint: fp,
                    reason,
                });
                if let Some(why) = new_root {
                    out.push(Fact::RootCauseChanged {
                        at: now,
                        incident,
                        fingerprint: fp,
                        reason: why,
                    });
                }
                services.extend(alert_services.iter().copied());
                if services != inc.services {
                    out.push(self.impact_fact(incident, &services, alert, now));
                }
                let (computed, why) = self.priority(rule, &services, severity);
                let priority = computed.min(priority);
                if priority < inc.priority {
                    out.push(Fact::PriorityChanged {
                        at: now,
                        incident,
                        priority,
                        reason: why,
                    });
                }
            }
        }
    }

    fn impact_fact(
        &self,
        incident: IncidentId,
        services: &BTreeSet<CiIdx>,
        alert: &Alert,
        now: Millis,
    ) -> Fact {
        let topo = &self.state.topology;
        let mut ids: Vec<String> = services
            .iter()
            .filter_map(|&s| topo.ci(s).map(|c| c.id.clone()))
            .collect();
        ids.sort();
        Fact::ImpactChanged {
            at: now,
            incident,
            reason: format!(
                "{} on {} hits {}",
                alert.name,
                alert.ci.as_deref().unwrap_or("?"),
                ids.join(", ")
            ),
            services: ids,
        }
    }

    /// ITIL priority from the services hit (impact) and the worst severity (urgency), with
    /// the rule's overrides; and the reason, in words.
    fn priority(
        &self,
        rule: Option<&Rule>,
        services: &BTreeSet<CiIdx>,
        severity: Severity,
    ) -> (Priority, String) {
        let matrix = &self.rules.priority;
        let topo = &self.state.topology;
        let worst = services
            .iter()
            .filter_map(|&s| topo.ci(s).and_then(|c| c.criticality))
            .min();
        let (impact, impact_why) = match (rule.and_then(|r| r.impact), worst) {
            (Some(level), _) => (level, "set by the rule".to_string()),
            (None, Some(c)) => (
                match c {
                    Criticality::Critical | Criticality::High => Level::High,
                    Criticality::Medium => Level::Medium,
                    Criticality::Low => Level::Low,
                },
                format!("a {} business service is hit", c.as_str()),
            ),
            (None, None) => (
                matrix.default_impact,
                "no business service known".to_string(),
            ),
        };
        let urgency = rule
            .and_then(|r| r.urgency)
            .unwrap_or_else(|| matrix.urgency(severity));
        (
            matrix.priority(impact, urgency),
            format!(
                "impact {} ({impact_why}) x urgency {} (worst severity {})",
                impact.as_str(),
                urgency.as_str(),
                severity.as_str()
            ),
        )
    }

    /// Raises an incident's priority when a more severe alert joins it. Priority never drops
    /// by itself: an operator who saw P1 should not find P3 without an explanation.
    fn escalate(&self, inc: &Incident, alert: &Alert, now: Millis, out: &mut Vec<Fact>) {
        let rule = self.rules.rules.iter().find(|r| r.name == inc.rule);
        let (priority, why) =
            self.priority(rule, &inc.services, alert.severity.max(inc.max_severity));
        if priority < inc.priority {
            out.push(Fact::PriorityChanged {
                at: now,
                incident: inc.id,
                priority,
                reason: format!(
                    "{} alert {} raised the urgency: {why}",
                    alert.severity.as_str(),
                    alert.name
                ),
            });
        }
    }

    fn decide_tick(&self, now: Millis, out: &mut Vec<Fact>) {
        for &(ends_at, fingerprint) in self.state.expiries.range(..=(now, Fingerprint(u64::MAX))) {
            out.push(Fact::AlertResolved {
                at: now,
                fingerprint,
                ends_at,
                reason: "timed out: not re-sent before its ends_at".into(),
            });
        }
        let hold_down = self.rules.lifecycle.hold_down;
        for &(since, incident) in self
            .state
            .quiet
            .range(..=(now - hold_down, IncidentId(u64::MAX)))
        {
            out.push(Fact::IncidentResolved {
                at: now,
                incident,
                by: "incidentd".into(),
                comment: Some(format!(
                    "all alerts resolved for {} (hold-down {})",
                    format_duration(now - since),
                    format_duration(hold_down)
                )),
            });
        }
    }

    /// No logic: mutates state exactly as the fact says. Replay calls only this.
    pub fn apply(&mut self, fact: &Fact) {
        let s = &mut self.state;
        s.now = s.now.max(fact.at());
        match fact {
            Fact::AlertReceived { at, alert } => {
                if let Some(old) = s.alerts.remove(&alert.fingerprint) {
                    forget_expiry(&mut s.expiries, &old, alert.fingerprint);
                }
                let state = AlertState {
                    incident: None,
                    ci: alert.ci.as_deref().and_then(|id| s.topology.index(id)),
                    status: alert.status,
                    severity: alert.severity,
                    count: 1,
                    first_seen: *at,
                    last_seen: *at,
                    ends_at: alert.ends_at,
                    name: alert.name.clone(),
                    suppressed: false,
                    flapping: false,
                    transitions: Vec::new(),
                };
                track_expiry(&mut s.expiries, &state, alert.fingerprint);
                s.alerts.insert(alert.fingerprint, state);
            }
            Fact::AlertRepeated {
                at,
                fingerprint,
                count,
                severity,
                ends_at,
            } => {
                let Some(a) = s.alerts.get_mut(fingerprint) else {
                    return;
                };
                forget_expiry(&mut s.expiries, a, *fingerprint);
                a.count += count;
                a.last_seen = a.last_seen.max(*at);
                a.severity = *severity;
                a.ends_at = *ends_at;
                track_expiry(&mut s.expiries, a, *fingerprint);
                if let Some(inc) = a.incident.and_then(|id| s.incidents.get_mut(&id)) {
                    inc.last_activity = inc.last_activity.max(*at);
                    inc.max_severity = inc.max_severity.max(*severity);
                }
            }
            Fact::AlertResolved {
                at,
                fingerprint,
                ends_at,
                ..
            } => {
                let Some(a) = s.alerts.get_mut(fingerprint) else {
                    return;
                };
                forget_expiry(&mut s.expiries, a, *fingerprint);
                a.status = Status::Resolved;
                a.ends_at = Some(*ends_at);
                remember_transition(a, *at);
                if let Some(inc) = a.incident.and_then(|id| s.incidents.get_mut(&id)) {
                    inc.firing = inc.firing.saturating_sub(1);
                    inc.last_activity = inc.last_activity.max(*at);
                    if inc.firing == 0 && inc.state != IncidentState::Resolved {
                        inc.quiet_since = Some(*at);
                        s.quiet.insert((*at, inc.id));
                    }
                }
            }
            Fact::AlertRefired {
                at,
                fingerprint,
                severity,
                ends_at,
            } => {
                let Some(a) = s.alerts.get_mut(fingerprint) else {
                    return;
                };
                a.status = Status::Firing;
                a.count += 1;
                a.last_seen = a.last_seen.max(*at);
                a.severity = *severity;
                a.ends_at = *ends_at;
                remember_transition(a, *at);
                track_expiry(&mut s.expiries, a, *fingerprint);
                if let Some(inc) = a.incident.and_then(|id| s.incidents.get_mut(&id)) {
                    inc.firing += 1;
                    inc.last_activity = inc.last_activity.max(*at);
                    inc.max_severity = inc.max_severity.max(*severity);
                    if let Some(since) = inc.quiet_since.take() {
                        s.quiet.remove(&(since, inc.id));
                    }
                }
            }
            Fact::AlertSuppressed { fingerprint, .. } => {
                if let Some(a) = s.alerts.get_mut(fingerprint) {
                    a.suppressed = true;
                }
            }
            Fact::AlertFlapping { fingerprint, .. } => {
                if let Some(a) = s.alerts.get_mut(fingerprint) {
                    a.flapping = true;
                }
            }
            Fact::IncidentOpened {
                at,
                incident,
                rule,
                group_key,
                topology,
            } => {
                s.incidents.insert(
                    *incident,
                    Incident {
                        id: *incident,
                        state: IncidentState::Open,
                        rule: rule.clone(),
                        group_key: group_key.clone(),
                        opened_at: *at,
                        last_activity: *at,
                        resolved_at: None,
                        merged_into: None,
                        topology: *topology,
                        members: Vec::new(),
                        cis: Vec::new(),
                        firing: 0,
                        quiet_since: None,
                        root: None,
                        root_ci: None,
                        services: BTreeSet::new(),
                        priority: Priority::P5,
                        max_severity: Severity::Info,
                    },
                );
                s.groups.insert(group_key.clone(), *incident);
                s.last_incident = s.last_incident.max(incident.0);
            }
            Fact::AlertAttached {
                at,
                incident,
                fingerprint,
                ..
            } => {
                let (Some(a), Some(inc)) =
                    (s.alerts.get_mut(fingerprint), s.incidents.get_mut(incident))
                else {
                    return;
                };
                a.incident = Some(*incident);
                a.suppressed = false;
                inc.members.push(*fingerprint);
                inc.last_activity = inc.last_activity.max(*at);
                inc.max_severity = inc.max_severity.max(a.severity);
                if let Some(ci) = a.ci
                    && !inc.cis.contains(&ci)
                {
                    inc.cis.push(ci);
                    if inc.topology && inc.state != IncidentState::Resolved {
                        index_ci(&mut s.by_ci, ci, inc.id);
                    }
                }
                if a.status == Status::Firing {
                    inc.firing += 1;
                    if let Some(since) = inc.quiet_since.take() {
                        s.quiet.remove(&(since, inc.id));
                    }
                }
            }
            Fact::IncidentsMerged { at, into, from, .. } => {
                let Some(mut gone) = s.incidents.remove(from) else {
                    return;
                };
                for ci in &gone.cis {
                    unindex_ci(&mut s.by_ci, *ci, gone.id);
                }
                if let Some(since) = gone.quiet_since.take() {
                    s.quiet.remove(&(since, gone.id));
                }
                if let Some(target) = s.incidents.get_mut(into) {
                    for fp in &gone.members {
                        if let Some(a) = s.alerts.get_mut(fp) {
                            a.incident = Some(*into);
                        }
                    }
                    target.members.append(&mut gone.members);
                    for ci in &gone.cis {
                        if !target.cis.contains(ci) {
                            target.cis.push(*ci);
                            if target.topology && target.state != IncidentState::Resolved {
                                index_ci(&mut s.by_ci, *ci, target.id);
                            }
                        }
                    }
                    target.firing += gone.firing;
                    target.max_severity = target.max_severity.max(gone.max_severity);
                    target.services.extend(gone.services.iter().copied());
                    target.last_activity = target.last_activity.max(gone.last_activity).max(*at);
                    if target.firing > 0
                        && let Some(since) = target.quiet_since.take()
                    {
                        s.quiet.remove(&(since, target.id));
                    }
                }
                gone.state = IncidentState::Resolved;
                gone.resolved_at = Some(*at);
                gone.merged_into = Some(*into);
                gone.firing = 0;
                s.incidents.insert(gone.id, gone);
            }
            Fact::RootCauseChanged {
                incident,
                fingerprint,
                ..
            } => {
                let ci = s.alerts.get(fingerprint).and_then(|a| a.ci);
                if let Some(inc) = s.incidents.get_mut(incident) {
                    inc.root = Some(*fingerprint);
                    inc.root_ci = ci;
                }
            }
            Fact::ImpactChanged {
                incident, services, ..
            } => {
                let topo = &s.topology;
                if let Some(inc) = s.incidents.get_mut(incident) {
                    inc.services = services.iter().filter_map(|id| topo.index(id)).collect();
                }
            }
            Fact::PriorityChanged {
                incident, priority, ..
            } => {
                if let Some(inc) = s.incidents.get_mut(incident) {
                    inc.priority = *priority;
                }
            }
            Fact::IncidentAcknowledged { incident, .. } => {
                if let Some(inc) = s.incidents.get_mut(incident) {
                    inc.state = IncidentState::Acknowledged;
                }
            }
            Fact::IncidentResolved { at, incident, .. } => {
                if let Some(inc) = s.incidents.get_mut(incident) {
                    inc.state = IncidentState::Resolved;
                    inc.resolved_at = Some(*at);
                    if let Some(since) = inc.quiet_since.take() {
                        s.quiet.remove(&(since, inc.id));
                    }
                    for ci in &inc.cis {
                        unindex_ci(&mut s.by_ci, *ci, inc.id);
                    }
                }
            }
            Fact::IncidentReopened { at, incident, .. } => {
                if let Some(inc) = s.incidents.get_mut(incident) {
                    inc.state = IncidentState::Open;
                    inc.resolved_at = None;
                    inc.last_activity = inc.last_activity.max(*at);
                    if inc.firing == 0 {
                        inc.quiet_since = Some(*at);
                        s.quiet.insert((*at, inc.id));
                    }
                    if inc.topology {
                        for ci in &inc.cis {
                            index_ci(&mut s.by_ci, *ci, inc.id);
                        }
                    }
                }
            }
            // History only: the read model shows it; the engine's state does not change.
            Fact::IncidentCommented { .. } => {}
            Fact::RulesLoaded { version, hash, .. } => {
                s.rules_version = *version;
                s.rules_hash = hash.clone();
            }
            Fact::CmdbChanged { ops, .. } => s.topology.apply(ops),
            Fact::SilenceCreated { silence, .. } => {
                s.last_silence += 1;
                s.silences.insert(silence.id.clone(), silence.clone());
            }
            Fact::SilenceExpired { at, id } => {
                if let Some(silence) = s.silences.get_mut(id) {
                    silence.ends_at = silence.ends_at.min(*at);
                    silence.starts_at = silence.starts_at.min(silence.ends_at);
                    silence.updated_at = *at;
                }
            }
            Fact::StreamConsumed { seqs, .. } => {
                for &seq in seqs {
                    s.consumed.insert(seq);
                }
            }
        }
    }
}

fn index_ci(by_ci: &mut HashMap<CiIdx, Vec<IncidentId>>, ci: CiIdx, id: IncidentId) {
    let list = by_ci.entry(ci).or_default();
    if !list.contains(&id) {
        list.push(id);
    }
}

fn unindex_ci(by_ci: &mut HashMap<CiIdx, Vec<IncidentId>>, ci: CiIdx, id: IncidentId) {
    if let Some(list) = by_ci.get_mut(&ci) {
        list.retain(|&x| x != id);
        if list.is_empty() {
            by_ci.remove(&ci);
        }
    }
}

fn remember_transition(a: &mut AlertState, at: Millis) {
    if a.transitions.len() == FLAP_MEMORY {
        a.transitions.remove(0);
    }
    a.transitions.push(at);
}

fn track_expiry(expiries: &mut BTreeSet<(Millis, Fingerprint)>, a: &AlertState, fp: Fingerprint) {
    if a.status == Status::Firing
        && let Some(t) = a.ends_at
    {
        expiries.insert((t, fp));
    }
}

fn forget_expiry(expiries: &mut BTreeSet<(Millis, Fingerprint)>, a: &AlertState, fp: Fingerprint) {
    if let Some(t) = a.ends_at {
        expiries.remove(&(t, fp));
    }
}

#[cfg(test)]
mod tests;
