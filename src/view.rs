//! Read model: the incident views the HTTP API and `replay` render (CONTRACTS §4).
//!
//! It is a second projection of the same facts the engine applies, fed only after they are
//! durable, so nothing an operator saw can vanish on restart. Unlike the engine's state it
//! keeps what people read: alert details, reasons, the timeline. An alert that starts a new
//! life in another incident leaves its old copy behind, so history stays as it was shown.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cmdb::Topology;
use crate::engine::{Fact, IncidentId, IncidentState, Priority};
use crate::model::{Alert, Fingerprint, Millis, Severity, Status, format_time, parse_time};
use crate::silence::Silence;

/// One alert as shown inside an incident.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlertView {
    pub fingerprint: Fingerprint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    pub source: String,
    pub name: String,
    pub ci: Option<String>,
    pub severity: Severity,
    pub status: Status,
    pub count: u64,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(serialize_with = "time", deserialize_with = "de_time")]
    pub first_seen: Millis,
    #[serde(serialize_with = "time", deserialize_with = "de_time")]
    pub last_seen: Millis,
    #[serde(serialize_with = "opt_time", deserialize_with = "de_opt_time")]
    pub ends_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
    /// Why the alert is suppressed, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
    /// What suppresses it: `silence <id>` or the maintenance window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl AlertView {
    fn new(alert: &Alert, at: Millis) -> AlertView {
        AlertView {
            fingerprint: alert.fingerprint,
            dedup_key: alert.dedup_key.clone(),
            source: alert.source.clone(),
            name: alert.name.clone(),
            ci: alert.ci.clone(),
            severity: alert.severity,
            status: alert.status,
            count: 1,
            reason: String::new(),
            summary: alert.summary.clone(),
            labels: alert.labels.clone(),
            first_seen: at,
            last_seen: at,
            ends_at: alert.ends_at,
            flapping: false,
            suppressed: None,
            suppressed_by: None,
            annotations: alert.annotations.clone(),
        }
    }

    /// Like [`new`](Self::new), taking the strings out of `alert` (left empty).
    fn from_alert(alert: &mut Alert, at: Millis) -> AlertView {
        AlertView {
            fingerprint: alert.fingerprint,
            dedup_key: alert.dedup_key.take(),
            source: std::mem::take(&mut alert.source),
            name: std::mem::take(&mut alert.name),
            ci: alert.ci.take(),
            severity: alert.severity,
            status: alert.status,
            count: 1,
            reason: String::new(),
            summary: alert.summary.take(),
            labels: std::mem::take(&mut alert.labels),
            first_seen: at,
            last_seen: at,
            ends_at: alert.ends_at,
            flapping: false,
            suppressed: None,
            suppressed_by: None,
            annotations: std::mem::take(&mut alert.annotations),
        }
    }

    /// How the alert is named in titles and timelines: `sw-core-01: LinkDown`.
    fn label(&self) -> String {
        format!(
            "{}: {}",
            self.ci.as_deref().unwrap_or(&self.source),
            self.name
        )
    }
}

/// One entry of an incident's timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub seq: u64,
    #[serde(serialize_with = "time", deserialize_with = "de_time")]
    pub at: Millis,
    pub event: Cow<'static, str>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// An incident as operators see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncidentView {
    pub id: IncidentId,
    pub state: IncidentState,
    pub priority: Priority,
    pub rule: String,
    pub group_key: String,
    pub root: Option<Fingerprint>,
    pub services: Vec<String>,
    pub merged_into: Option<IncidentId>,
    pub alerts: Vec<AlertView>,
    index: HashMap<Fingerprint, usize>,
    pub opened_at: Millis,
    pub updated_at: Millis,
    pub resolved_at: Option<Millis>,
    pub acknowledged_by: Option<String>,
    pub resolved_by: Option<String>,
    pub timeline: Vec<TimelineEntry>,
}

impl IncidentView {
    fn root_alert(&self) -> Option<&AlertView> {
        self.root
            .and_then(|fp| self.index.get(&fp))
            .and_then(|&i| self.alerts.get(i))
    }

    /// The root cause's CI id, if the root alert names one.
    pub fn root_ci(&self) -> Option<&str> {
        self.root_alert().and_then(|a| a.ci.as_deref())
    }

    pub fn title(&self) -> String {
        let Some(root) = self.root_alert() else {
            return self.group_key.clone();
        };
        match self.alerts.len() {
            0 | 1 => root.label(),
            2 => format!("{} (+1 related alert)", root.label()),
            n => format!("{} (+{} related alerts)", root.label(), n - 1),
        }
    }

    /// The contract's incident document; `timeline` adds the history (detail view).
    /// `topology` supplies the root CI's owner group.
    pub fn doc<'a>(&'a self, topology: &'a Topology, timeline: bool) -> IncidentDoc<'a> {
        IncidentDoc {
            head: self.head(topology),
            alerts: &self.alerts,
            tail: self.tail(),
            timeline: timeline.then_some(&self.timeline[..]),
        }
    }

    /// An incident without its alerts and timeline: what the console board and the live
    /// stream carry, so a 10k-alert incident costs the same as a small one.
    pub fn summary<'a>(&'a self, topology: &'a Topology) -> IncidentSummary<'a> {
        IncidentSummary {
            head: self.head(topology),
            firing_count: self
                .alerts
                .iter()
                .filter(|a| a.status == Status::Firing)
                .count(),
            severity: self.alerts.iter().map(|a| a.severity).max(),
            tail: self.tail(),
            timeline_count: self.timeline.len(),
        }
    }

    fn head<'a>(&'a self, topology: &'a Topology) -> IncidentHead<'a> {
        IncidentHead {
            id: self.id.to_string(),
            state: self.state.as_str(),
            priority: self.priority.as_str(),
            title: self.title(),
            root_cause: self.root_alert().map(|a| RootCause {
                ci: a.ci.as_deref(),
                fingerprint: a.fingerprint,
                name: &a.name,
            }),
            impacted_services: &self.services,
            owner_group: self.owner_group(topology),
            merged_into: self.merged_into.map(|id| id.to_string()),
            alert_count: self.alerts.len(),
        }
    }

    fn tail(&self) -> IncidentTail<'_> {
        IncidentTail {
            rule: &self.rule,
            group_key: &self.group_key,
            opened_at: format_time(self.opened_at),
            updated_at: format_time(self.updated_at),
            resolved_at: self.resolved_at.map(format_time),
            acknowledged_by: self.acknowledged_by.as_deref(),
            resolved_by: self.resolved_by.as_deref(),
        }
    }

    /// The root CI's owner group, from the topology.
    pub fn owner_group<'a>(&'a self, topology: &'a Topology) -> Option<&'a str> {
        self.root_ci()
            .and_then(|id| topology.index(id))
            .and_then(|i| topology.ci(i))
            .and_then(|c| c.owner_group.as_deref())
    }
}

/// Serialized form of an incident (CONTRACTS §4, plus a few extra fields). The flattened parts
/// keep the field order of the contract's examples, which `incidentd replay` output relies on.
#[derive(Serialize)]
pub struct IncidentDoc<'a> {
    #[serde(flatten)]
    pub head: IncidentHead<'a>,
    pub alerts: &'a [AlertView],
    #[serde(flatten)]
    pub tail: IncidentTail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<&'a [TimelineEntry]>,
}

/// [`IncidentDoc`] with counts in place of the alerts and the timeline.
#[derive(Serialize)]
pub struct IncidentSummary<'a> {
    #[serde(flatten)]
    pub head: IncidentHead<'a>,
    /// Member alerts still firing.
    pub firing_count: usize,
    /// The worst severity among the member alerts.
    pub severity: Option<Severity>,
    #[serde(flatten)]
    pub tail: IncidentTail<'a>,
    pub timeline_count: usize,
}

/// What every rendering of an incident starts with.
#[derive(Serialize)]
pub struct IncidentHead<'a> {
    pub id: String,
    pub state: &'static str,
    pub priority: &'static str,
    pub title: String,
    pub root_cause: Option<RootCause<'a>>,
    pub impacted_services: &'a [String],
    pub owner_group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    pub alert_count: usize,
}

/// What every rendering of an incident carries after its alerts.
#[derive(Serialize)]
pub struct IncidentTail<'a> {
    pub rule: &'a str,
    pub group_key: &'a str,
    pub opened_at: String,
    pub updated_at: String,
    pub resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<&'a str>,
}

#[derive(Serialize)]
pub struct RootCause<'a> {
    pub ci: Option<&'a str>,
    pub fingerprint: Fingerprint,
    pub name: &'a str,
}

/// What one sender has sent, from durable facts (`GET /api/v1/sources`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    /// Alert messages accepted (first sightings, repeats and refires).
    pub messages: u64,
    /// Distinct alerts (new fingerprints, or new lives of old ones).
    pub distinct: u64,
    pub resolved: u64,
    pub suppressed: u64,
    pub last_seen: Millis,
}

/// Where an alert's current life is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Home {
    /// Received but in no incident (a resolve for an alert never seen firing).
    Loose(Box<AlertView>),
    Attached(IncidentId, usize),
}

/// All incident views, plus the bookkeeping to route alert facts to them. Cloneable and
/// serializable, for snapshots.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReadModel {
    incidents: BTreeMap<IncidentId, IncidentView>,
    /// The CMDB as the durable facts describe it (owner groups, the CMDB API).
    pub topology: Topology,
    /// Silences by id, for the Alertmanager API.
    pub silences: BTreeMap<String, Silence>,
    /// Per sender, so a NOC sees a noisy or broken one at once.
    pub sources: BTreeMap<String, SourceStats>,
    homes: HashMap<Fingerprint, Home>,
    open: usize,
    /// Sequence of the last fact applied: a client that read the model resumes the live
    /// stream after it (`GET /api/v1/stream?after=`).
    #[serde(default)]
    pub last_seq: u64,
}

impl ReadModel {
    pub fn get(&self, id: IncidentId) -> Option<&IncidentView> {
        self.incidents.get(&id)
    }

    /// Incidents in `state` (all when `None`), newest first, `offset`/`limit` paginated;
    /// also returns how many matched in total.
    pub fn list(
        &self,
        state: Option<IncidentState>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<&IncidentView>) {
        let filter = Filter {
            states: state.into_iter().collect(),
            ..Filter::default()
        };
        self.query(&filter, Sort::Newest, offset, limit)
    }

    /// Every incident that was not merged into another, oldest first (`replay` output).
    pub fn surviving(&self) -> impl Iterator<Item = &IncidentView> {
        self.incidents.values().filter(|i| i.merged_into.is_none())
    }

    /// Every alert's current life (in an incident or not), in fingerprint order, with the
    /// incident holding it.
    pub fn current_alerts(&self) -> Vec<(&AlertView, Option<IncidentId>)> {
        let mut out: Vec<(&AlertView, Option<IncidentId>)> = self
            .homes
            .values()
            .filter_map(|h| match h {
                Home::Loose(v) => Some((&**v, None)),
                Home::Attached(id, idx) => self
                    .incidents
                    .get(id)
                    .and_then(|i| i.alerts.get(*idx))
                    .map(|v| (v, Some(*id))),
            })
            .collect();
        out.sort_by_key(|(v, _)| v.fingerprint);
        out
    }

    /// Dedup keys (else fingerprints) of the alerts held back by a maintenance window, sorted.
    pub fn suppressed_keys(&self) -> BTreeSet<String> {
        self.homes
            .values()
            .filter_map(|h| match h {
                Home::Loose(v) if v.suppressed.is_some() => Some(
                    v.dedup_key
                        .clone()
                        .unwrap_or_else(|| v.fingerprint.to_string()),
                ),
                _ => None,
            })
            .collect()
    }

    pub fn open_count(&self) -> usize {
        self.open
    }

    fn count_source(&mut self, fact: &Fact, at: Millis) {
        let (fingerprint, messages, distinct, resolved, suppressed) = match fact {
            Fact::AlertReceived { alert, .. } => {
                let source = alert.source.as_str();
                return bump_source(&mut self.sources, source, at, (1, 1, 0, 0));
            }
            Fact::AlertRepeated {
                fingerprint, count, ..
            } => (fingerprint, *count, 0, 0, 0),
            Fact::AlertRefired { fingerprint, .. } => (fingerprint, 1, 0, 0, 0),
            Fact::AlertResolved { fingerprint, .. } => (fingerprint, 0, 0, 1, 0),
            Fact::AlertSuppressed { fingerprint, .. } => (fingerprint, 0, 0, 0, 1),
            _ => return,
        };
        // Borrow the view's source (no copy per fact): fields are borrowed disjointly.
        let view = match self.homes.get(fingerprint) {
            Some(Home::Loose(view)) => Some(&**view),
            Some(Home::Attached(id, idx)) => {
                self.incidents.get(id).and_then(|i| i.alerts.get(*idx))
            }
            None => None,
        };
        if let Some(view) = view {
            let counts = (messages, distinct, resolved, suppressed);
            bump_source(&mut self.sources, &view.source, at, counts);
        }
    }

    /// Applies a durable fact the caller no longer needs, moving a received alert's strings
    /// into the view instead of copying them. Otherwise the same as [`apply`](Self::apply).
    pub fn apply_owned(&mut self, seq: u64, fact: &mut Fact) -> Option<IncidentId> {
        let Fact::AlertReceived { at, alert } = fact else {
            return self.apply(seq, fact);
        };
        let at = *at;
        bump_source(&mut self.sources, &alert.source, at, (1, 1, 0, 0));
        let view = AlertView::from_alert(alert, at);
        self.homes
            .insert(view.fingerprint, Home::Loose(Box::new(view)));
        None
    }

    fn alert_mut(&mut self, fp: &Fingerprint) -> Option<(&mut AlertView, Option<IncidentId>)> {
        match self.homes.get_mut(fp)? {
            Home::Loose(view) => Some((view, None)),
            Home::Attached(id, idx) => {
                let inc = self.incidents.get_mut(id)?;
                let id = inc.id;
                inc.alerts.get_mut(*idx).map(|v| (v, Some(id)))
            }
        }
    }

    /// Applies one durable fact. Returns the incident it changed, if any.
    pub fn apply(&mut self, seq: u64, fact: &Fact) -> Option<IncidentId> {
        self.last_seq = self.last_seq.max(seq);
        let at = fact.at();
        self.count_source(fact, at);
        let mut note: Option<(&'static str, String)> = None;
        let touched = match fact {
            Fact::AlertReceived { alert, .. } => {
                self.homes.insert(
                    alert.fingerprint,
                    Home::Loose(Box::new(AlertView::new(alert, at))),
                );
                None
            }
            Fact::AlertRepeated {
                fingerprint,
                count,
                severity,
                ends_at,
                ..
            } => {
                let (view, id) = self.alert_mut(fingerprint)?;
                view.count += count;
                view.last_seen = view.last_seen.max(at);
                view.severity = *severity;
                view.ends_at = *ends_at;
                id
            }
            Fact::AlertResolved {
                fingerprint,
                ends_at,
                reason,
                ..
            } => {
                let (view, id) = self.alert_mut(fingerprint)?;
                view.status = Status::Resolved;
                view.ends_at = Some(*ends_at);
                note = Some((
                    "alert_resolved",
                    format!("{} resolved: {reason}", view.label()),
                ));
                id
            }
            Fact::AlertRefired {
                fingerprint,
                severity,
                ends_at,
                ..
            } => {
                let (view, id) = self.alert_mut(fingerprint)?;
                view.status = Status::Firing;
                view.count += 1;
                view.last_seen = view.last_seen.max(at);
                view.severity = *severity;
                view.ends_at = *ends_at;
                note = Some(("alert_refired", format!("{} fired again", view.label())));
                id
            }
            Fact::IncidentOpened {
                incident,
                rule,
                group_key,
                ..
            } => {
                self.incidents.insert(
                    *incident,
                    IncidentView {
                        id: *incident,
                        state: IncidentState::Open,
                        priority: Priority::P5,
                        rule: rule.clone(),
                        group_key: group_key.clone(),
                        root: None,
                        services: Vec::new(),
                        merged_into: None,
                        alerts: Vec::new(),
                        index: HashMap::new(),
                        opened_at: at,
                        updated_at: at,
                        resolved_at: None,
                        acknowledged_by: None,
                        resolved_by: None,
                        timeline: Vec::new(),
                    },
                );
                self.open += 1;
                note = Some(("incident_opened", format!("opened: {group_key}")));
                Some(*incident)
            }
            Fact::AlertAttached {
                incident,
                fingerprint,
                reason,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                let Some(Home::Loose(mut view)) = self.homes.remove(fingerprint) else {
                    return None;
                };
                view.reason = reason.clone();
                note = Some((
                    "alert_attached",
                    format!("{} joined: {reason}", view.label()),
                ));
                inc.index.insert(*fingerprint, inc.alerts.len());
                self.homes
                    .insert(*fingerprint, Home::Attached(*incident, inc.alerts.len()));
                inc.alerts.push(*view);
                Some(*incident)
            }
            Fact::RootCauseChanged {
                incident,
                fingerprint,
                reason,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                inc.root = Some(*fingerprint);
                let name = inc.root_alert().map(AlertView::label).unwrap_or_default();
                note = Some(("root_cause_changed", format!("root cause {name}: {reason}")));
                Some(*incident)
            }
            Fact::PriorityChanged {
                incident,
                priority,
                reason,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                inc.priority = *priority;
                note = Some((
                    "priority_changed",
                    format!("priority {}: {reason}", priority.as_str()),
                ));
                Some(*incident)
            }
            Fact::IncidentAcknowledged {
                incident,
                by,
                comment,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                inc.state = IncidentState::Acknowledged;
                inc.acknowledged_by = Some(by.clone());
                note = Some(("incident_acknowledged", comment.clone().unwrap_or_default()));
                Some(*incident)
            }
            Fact::IncidentResolved {
                incident,
                by,
                comment,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                if inc.state != IncidentState::Resolved {
                    self.open -= 1;
                }
                inc.state = IncidentState::Resolved;
                inc.resolved_at = Some(at);
                inc.resolved_by = Some(by.clone());
                note = Some(("incident_resolved", comment.clone().unwrap_or_default()));
                Some(*incident)
            }
            Fact::IncidentReopened {
                incident, reason, ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                if inc.state == IncidentState::Resolved {
                    self.open += 1;
                }
                inc.state = IncidentState::Open;
                inc.resolved_at = None;
                inc.resolved_by = None;
                note = Some(("incident_reopened", reason.clone()));
                Some(*incident)
            }
            Fact::IncidentCommented { incident, text, .. } => {
                self.incidents.get(incident)?;
                note = Some(("incident_commented", text.clone()));
                Some(*incident)
            }
            Fact::AlertSuppressed {
                fingerprint,
                by,
                reason,
                ..
            } => {
                let (view, id) = self.alert_mut(fingerprint)?;
                view.suppressed = Some(reason.clone());
                view.suppressed_by = Some(by.clone());
                id
            }
            Fact::AlertFlapping {
                fingerprint,
                reason,
                ..
            } => {
                let (view, id) = self.alert_mut(fingerprint)?;
                view.flapping = true;
                note = Some((
                    "alert_flapping",
                    format!("{} is flapping: {reason}", view.label()),
                ));
                id
            }
            Fact::ImpactChanged {
                incident,
                services,
                reason,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                inc.services = services.clone();
                note = Some(("impact_changed", reason.clone()));
                Some(*incident)
            }
            Fact::IncidentsMerged {
                into, from, reason, ..
            } => {
                let mut gone = std::mem::take(&mut self.incidents.get_mut(from)?.alerts);
                let target = self.incidents.get_mut(into)?;
                for view in gone.drain(..) {
                    let idx = target.alerts.len();
                    target.index.insert(view.fingerprint, idx);
                    self.homes
                        .insert(view.fingerprint, Home::Attached(*into, idx));
                    target.alerts.push(view);
                }
                target.timeline.push(TimelineEntry {
                    seq,
                    at,
                    event: Cow::Borrowed("incidents_merged"),
                    text: format!("{from} merged in: {reason}"),
                    by: None,
                });
                let merged = self.incidents.get_mut(from)?;
                merged.index.clear();
                if merged.state != IncidentState::Resolved {
                    self.open -= 1;
                }
                merged.state = IncidentState::Resolved;
                merged.resolved_at = Some(at);
                merged.merged_into = Some(*into);
                merged.updated_at = at;
                merged.timeline.push(TimelineEntry {
                    seq,
                    at,
                    event: Cow::Borrowed("incidents_merged"),
                    text: format!("merged into {into}: {reason}"),
                    by: None,
                });
                Some(*into)
            }
            Fact::CmdbChanged { ops, .. } => {
                self.topology.apply(ops);
                None
            }
            Fact::SilenceCreated { silence, .. } => {
                self.silences.insert(silence.id.clone(), silence.clone());
                None
            }
            Fact::SilenceExpired { id, .. } => {
                if let Some(s) = self.silences.get_mut(id) {
                    s.ends_at = s.ends_at.min(at);
                    s.starts_at = s.starts_at.min(s.ends_at);
                    s.updated_at = at;
                }
                None
            }
            Fact::RulesLoaded { .. } | Fact::StreamConsumed { .. } => None,
        };
        let id = touched?;
        let inc = self.incidents.get_mut(&id)?;
        inc.updated_at = inc.updated_at.max(at);
        if let Some((event, text)) = note {
            let by = match fact {
                Fact::IncidentAcknowledged { by, .. }
                | Fact::IncidentResolved { by, .. }
                | Fact::IncidentCommented { actor: by, .. } => Some(by.clone()),
                _ => None,
            };
            inc.timeline.push(TimelineEntry {
                seq,
                at,
                event: Cow::Borrowed(event),
                text,
                by,
            });
        }
        Some(id)
    }
}

/// Which incidents a console list shows (`GET /api/v1/incidents` filters). Empty sets and
/// `None` mean "any".
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub states: Vec<IncidentState>,
    pub priorities: Vec<Priority>,
    /// A business service CI id among the impacted services.
    pub service: Option<String>,
    /// The root CI's owner group.
    pub owner_group: Option<String>,
    /// Case-insensitive words that must all occur in the id, title, root CI, rule, group key,
    /// services or owner group.
    pub words: Vec<String>,
}

impl Filter {
    fn matches(&self, inc: &IncidentView, topology: &Topology) -> bool {
        if !self.states.is_empty() && !self.states.contains(&inc.state) {
            return false;
        }
        if !self.priorities.is_empty() && !self.priorities.contains(&inc.priority) {
            return false;
        }
        if let Some(svc) = &self.service
            && !inc.services.iter().any(|s| s == svc)
        {
            return false;
        }
        let owner = || inc.owner_group(topology).unwrap_or("");
        if let Some(group) = &self.owner_group
            && owner() != group
        {
            return false;
        }
        if self.words.is_empty() {
            return true;
        }
        let mut hay = format!(
            "{} {} {} {} {} {}",
            inc.id,
            inc.title(),
            inc.root_ci().unwrap_or(""),
            inc.rule,
            inc.group_key,
            owner()
        );
        for svc in &inc.services {
            hay.push(' ');
            hay.push_str(svc);
        }
        let hay = hay.to_lowercase();
        self.words.iter().all(|w| hay.contains(w.as_str()))
    }
}

/// Order of a console list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// Newest first (the contract's default).
    #[default]
    Newest,
    /// Most urgent first, then newest.
    Priority,
    /// Oldest first: what has been burning longest.
    Age,
    /// Most recently changed first.
    Updated,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "newest" => Sort::Newest,
            "priority" => Sort::Priority,
            "age" | "oldest" => Sort::Age,
            "updated" => Sort::Updated,
            _ => return None,
        })
    }
}

/// Active incidents per state and priority (`GET /api/v1/incidents/summary`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub seq: u64,
    pub total: usize,
    pub by_state: BTreeMap<&'static str, usize>,
    /// Per state, per priority: `{"open": {"P1": 2, ...}, ...}`; every key present.
    pub by_state_priority: BTreeMap<&'static str, BTreeMap<&'static str, usize>>,
    /// Business services and owner groups seen on open or acknowledged incidents, for the
    /// console's filter lists.
    pub services: BTreeSet<String>,
    pub owner_groups: BTreeSet<String>,
}

impl ReadModel {
    /// Incidents matching `filter`, in `sort` order, `offset`/`limit` paginated; also how many
    /// matched in total.
    pub fn query(
        &self,
        filter: &Filter,
        sort: Sort,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<&IncidentView>) {
        let matching = self
            .incidents
            .values()
            .rev()
            .filter(|i| filter.matches(i, &self.topology));
        if sort == Sort::Newest {
            let mut total = 0;
            let mut page = Vec::with_capacity(limit.min(1024));
            for (n, inc) in matching.enumerate() {
                total += 1;
                if n >= offset && page.len() < limit {
                    page.push(inc);
                }
            }
            return (total, page);
        }
        let mut all: Vec<&IncidentView> = matching.collect();
        // Stable sorts over newest-first input: ties stay newest first.
        match sort {
            Sort::Priority => all.sort_by_key(|i| i.priority),
            Sort::Age => all.sort_by_key(|i| (i.opened_at, i.id)),
            Sort::Updated => all.sort_by_key(|i| std::cmp::Reverse(i.updated_at)),
            Sort::Newest => {}
        }
        let total = all.len();
        let page = all.into_iter().skip(offset).take(limit).collect();
        (total, page)
    }

    /// Counts per state and priority, and the filter choices, over all incidents.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            seq: self.last_seq,
            ..Counts::default()
        };
        for state in [
            IncidentState::Open,
            IncidentState::Acknowledged,
            IncidentState::Resolved,
        ] {
            c.by_state.insert(state.as_str(), 0);
            let per = c.by_state_priority.entry(state.as_str()).or_default();
            for p in [
                Priority::P1,
                Priority::P2,
                Priority::P3,
                Priority::P4,
                Priority::P5,
            ] {
                per.insert(p.as_str(), 0);
            }
        }
        for inc in self.incidents.values() {
            c.total += 1;
            *c.by_state.entry(inc.state.as_str()).or_default() += 1;
            *c.by_state_priority
                .entry(inc.state.as_str())
                .or_default()
                .entry(inc.priority.as_str())
                .or_default() += 1;
            if inc.state != IncidentState::Resolved {
                c.services.extend(inc.services.iter().cloned());
                if let Some(g) = inc.owner_group(&self.topology) {
                    c.owner_groups.insert(g.to_string());
                }
            }
        }
        c
    }
}

/// Adds (messages, distinct, resolved, suppressed) to `source`'s stats; allocates the key
/// only for a source seen for the first time.
fn bump_source(
    sources: &mut BTreeMap<String, SourceStats>,
    source: &str,
    at: Millis,
    (messages, distinct, resolved, suppressed): (u64, u64, u64, u64),
) {
    let s = match sources.get_mut(source) {
        Some(s) => s,
        None => sources.entry(source.to_string()).or_default(),
    };
    s.messages += messages;
    s.distinct += distinct;
    s.resolved += resolved;
    s.suppressed += suppressed;
    s.last_seen = s.last_seen.max(at);
}

/// A read-model snapshot section that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("read model snapshot: {0}")]
pub struct ViewSnapshotError(String);

impl ReadModel {
    /// Appends this read model's snapshot encoding to `out`. The encoding is this module's
    /// own; the snapshot file around it carries the version.
    pub fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), ViewSnapshotError> {
        serde_json::to_writer(out, self).map_err(|e| ViewSnapshotError(e.to_string()))
    }

    /// Reads what [`ReadModel::write_snapshot`] wrote.
    pub fn read_snapshot(bytes: &[u8]) -> Result<ReadModel, ViewSnapshotError> {
        serde_json::from_slice(bytes).map_err(|e| ViewSnapshotError(e.to_string()))
    }
}

fn time<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_time(*ms))
}

fn opt_time<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => time(ms, s),
        None => s.serialize_none(),
    }
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    let s = Cow::<'de, str>::deserialize(d)?;
    parse_time(&s).ok_or_else(|| serde::de::Error::custom(format!("bad time {s:?}")))
}

fn de_opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    match Option::<Cow<'de, str>>::deserialize(d)? {
        Some(s) => parse_time(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("bad time {s:?}"))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Input};
    use crate::rules::Rules;

    fn alert(name: &str, ci: &str, at: Millis) -> Alert {
        let labels = BTreeMap::new();
        Alert {
            fingerprint: Fingerprint::native("mon", name, Some(ci), &labels, None),
            source: "mon".into(),
            name: name.into(),
            ci: Some(ci.into()),
            severity: Severity::Critical,
            status: Status::Firing,
            summary: Some("down".into()),
            labels,
            annotations: BTreeMap::new(),
            starts_at: at,
            ends_at: None,
            dedup_key: None,
            received_at: at,
        }
    }

    #[test]
    fn renders_the_contract_shape_with_reasons_and_timeline() {
        let mut engine = Engine::new(Rules::embedded().expect("rules"));
        let mut facts = Vec::new();
        let t = 1_795_000_000_000;
        for a in [
            alert("LinkDown", "sw-1", t),
            alert("LinkDown", "sw-1", t + 1),
            alert("PortFlap", "sw-1", t + 2),
            alert("DiskFull", "host-9", t + 3),
        ] {
            engine.handle(Input::Alert(&a), &mut facts).expect("alert");
        }
        let mut model = ReadModel::default();
        for (seq, f) in facts.iter().enumerate() {
            model.apply(seq as u64 + 1, f);
        }
        assert_eq!(model.open_count(), 2);
        let (total, page) = model.list(Some(IncidentState::Open), 0, 1);
        assert_eq!((total, page.len()), (2, 1));
        assert_eq!(page[0].id, IncidentId(2), "newest first");

        let inc = model.get(IncidentId(1)).expect("incident 1");
        let doc = serde_json::to_value(inc.doc(&model.topology, true)).expect("json");
        assert_eq!(doc["id"], "INC-000001");
        assert_eq!(doc["state"], "open");
        assert_eq!(doc["priority"], "P2");
        assert_eq!(doc["title"], "sw-1: LinkDown (+1 related alert)");
        assert_eq!(doc["root_cause"]["ci"], "sw-1");
        assert_eq!(doc["alerts"][0]["count"], 2);
        assert_eq!(doc["alerts"][1]["name"], "PortFlap");
        assert!(
            doc["alerts"][1]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("rule same-ci: same group same-ci{ci=\"sw-1\"}")),
            "{}",
            doc["alerts"][1]["reason"]
        );
        assert_eq!(doc["opened_at"], "2026-11-18T11:06:40.000Z");
        assert!(doc["resolved_at"].is_null());
        assert_eq!(doc["timeline"][0]["event"], "incident_opened");
        let list_doc = serde_json::to_value(inc.doc(&model.topology, false)).expect("json");
        assert!(list_doc.get("timeline").is_none());
    }
}
