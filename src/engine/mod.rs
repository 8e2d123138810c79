//! The correlation engine: a deterministic state machine owned by one thread.
//!
//! `decide(&self, ..)` holds all the logic and only appends facts; `apply(&mut self, ..)` holds
//! none and only mutates state. Live ingest calls `handle`, which decides and then applies;
//! replay of the event log calls `apply` alone, so the log reproduces the state exactly even
//! after the rules changed. The engine never reads the clock and never does I/O: time arrives
//! as data, in each alert's `received_at` and in `Tick`s. Hash maps are only looked up, never
//! iterated where the order could reach a fact.

pub mod facts;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use facts::{Fact, IncidentId, IncidentState, Priority};

use crate::model::{Alert, Fingerprint, Millis, Severity, Status, format_duration};
use crate::rules::Rules;

/// Impact used until the topology says which business services an incident hits: medium.
const DEFAULT_IMPACT: u8 = 1;

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
    /// Time passes: alerts time out, quiet incidents auto-resolve.
    Tick {
        now: Millis,
    },
}

/// Why an operator command was refused. Alerts are never refused by the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("incident {0} not found")]
    NotFound(IncidentId),
    #[error("incident {0} is resolved")]
    AlreadyResolved(IncidentId),
}

/// What the engine remembers about one alert (its current life).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertState {
    pub incident: Option<IncidentId>,
    pub status: Status,
    pub severity: Severity,
    pub count: u64,
    pub first_seen: Millis,
    pub last_seen: Millis,
    pub ends_at: Option<Millis>,
    pub name: String,
}

/// What the engine remembers about one incident.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub id: IncidentId,
    pub state: IncidentState,
    pub rule: String,
    pub group_key: String,
    pub opened_at: Millis,
    pub last_activity: Millis,
    pub resolved_at: Option<Millis>,
    pub members: Vec<Fingerprint>,
    /// Members currently firing.
    pub firing: u32,
    /// Since when no member has fired (only while not resolved); drives auto-resolve.
    pub quiet_since: Option<Millis>,
    pub root: Option<Fingerprint>,
    pub priority: Priority,
    pub max_severity: Severity,
}

/// Everything `apply` builds. Comparable, so tests can assert replay equals live.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub now: Millis,
    pub alerts: HashMap<Fingerprint, AlertState>,
    pub incidents: BTreeMap<IncidentId, Incident>,
    /// Newest incident per group key.
    groups: HashMap<String, IncidentId>,
    last_incident: u64,
    /// Unresolved incidents with no firing member, by the time they went quiet.
    quiet: BTreeSet<(Millis, IncidentId)>,
    /// Firing alerts that time out unless re-sent, by `ends_at`.
    expiries: BTreeSet<(Millis, Fingerprint)>,
    pub rules_version: u64,
    pub rules_hash: String,
}

/// The engine: current rules plus the state they act on.
pub struct Engine {
    rules: Rules,
    state: State,
    scratch: Vec<Fact>,
    /// Index in the caller's batch of the coalescable `AlertRepeated` per alert.
    repeat_slots: HashMap<Fingerprint, usize>,
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
        } else if let Some(fp) = fact.fingerprint() {
            self.repeat_slots.remove(&fp);
        }
        out.push(fact);
    }

    /// All the logic: reads state, appends facts, changes nothing.
    pub fn decide(&self, input: Input<'_>, out: &mut Vec<Fact>) -> Result<(), CommandError> {
        match input {
            Input::Alert(alert) => {
                self.decide_alert(alert, out);
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
            Input::Tick { now } => {
                self.decide_tick(now.max(self.state.now), out);
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

    fn decide_alert(&self, alert: &Alert, out: &mut Vec<Fact>) {
        let now = alert.received_at.max(self.state.now);
        let fp = alert.fingerprint;
        let Some(current) = self.state.alerts.get(&fp) else {
            out.push(Fact::AlertReceived {
                at: now,
                alert: alert.clone(),
            });
            if alert.status == Status::Firing {
                self.correlate(alert, now, out);
            }
            return;
        };
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
                if let Some(inc) = incident {
                    self.escalate(inc, alert, now, out);
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
                match incident {
                    Some(inc) if inc.state != IncidentState::Resolved => {
                        out.push(refire);
                        self.escalate(inc, alert, now, out);
                    }
                    Some(inc)
                        if inc
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
                        self.escalate(inc, alert, now, out);
                    }
                    _ => {
                        out.push(Fact::AlertReceived {
                            at: now,
                            alert: alert.clone(),
                        });
                        self.correlate(alert, now, out);
                    }
                }
            }
        }
    }

    /// Finds the incident a new firing alert belongs to, or opens one.
    fn correlate(&self, alert: &Alert, now: Millis, out: &mut Vec<Fact>) {
        let fp = alert.fingerprint;
        let rule = self.rules.first_match(alert);
        let (rule_name, group_key, window) = match rule {
            Some(r) => (r.name.as_str(), r.group_key(alert), r.window),
            None => ("", format!("alert {fp}"), 0),
        };
        if let Some(&id) = self.state.groups.get(&group_key)
            && let Some(inc) = self.state.incidents.get(&id)
            && inc.state != IncidentState::Resolved
            && now - inc.last_activity <= window
        {
            out.push(Fact::AlertAttached {
                at: now,
                incident: id,
                fingerprint: fp,
                reason: format!(
                    "rule {rule_name}: same group {group_key}, last activity {} ago (window {})",
                    format_duration(now - inc.last_activity),
                    format_duration(window)
                ),
            });
            self.escalate(inc, alert, now, out);
            return;
        }
        let incident = IncidentId(self.state.last_incident + 1);
        let reason = match rule {
            Some(_) => format!("rule {rule_name}: first alert of group {group_key}"),
            None => "no rule matched: an incident of its own".to_string(),
        };
        out.push(Fact::IncidentOpened {
            at: now,
            incident,
            rule: rule_name.to_string(),
            group_key,
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
        out.push(Fact::PriorityChanged {
            at: now,
            incident,
            priority: Priority::from_matrix(DEFAULT_IMPACT, alert.severity),
            reason: format!(
                "impact medium (no business service known) x urgency of a {} alert",
                alert.severity.as_str()
            ),
        });
    }

    /// Raises an incident's priority when a more severe alert joins it. Priority never drops
    /// by itself: an operator who saw P1 should not find P3 without an explanation.
    fn escalate(&self, inc: &Incident, alert: &Alert, now: Millis, out: &mut Vec<Fact>) {
        let priority = Priority::from_matrix(DEFAULT_IMPACT, alert.severity.max(inc.max_severity));
        if priority < inc.priority {
            out.push(Fact::PriorityChanged {
                at: now,
                incident: inc.id,
                priority,
                reason: format!(
                    "{} alert {} raised the urgency",
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
                    status: alert.status,
                    severity: alert.severity,
                    count: 1,
                    first_seen: *at,
                    last_seen: *at,
                    ends_at: alert.ends_at,
                    name: alert.name.clone(),
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
            Fact::IncidentOpened {
                at,
                incident,
                rule,
                group_key,
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
                        members: Vec::new(),
                        firing: 0,
                        quiet_since: None,
                        root: None,
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
                inc.members.push(*fingerprint);
                inc.last_activity = inc.last_activity.max(*at);
                inc.max_severity = inc.max_severity.max(a.severity);
                if a.status == Status::Firing {
                    inc.firing += 1;
                    if let Some(since) = inc.quiet_since.take() {
                        s.quiet.remove(&(since, inc.id));
                    }
                }
            }
            Fact::RootCauseChanged {
                incident,
                fingerprint,
                ..
            } => {
                if let Some(inc) = s.incidents.get_mut(incident) {
                    inc.root = Some(*fingerprint);
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
                }
            }
            Fact::RulesLoaded { version, hash, .. } => {
                s.rules_version = *version;
                s.rules_hash = hash.clone();
            }
        }
    }
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
