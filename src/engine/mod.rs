//! The correlation engine: a deterministic state machine owned by one thread.
//!
//! `decide(&self, ..)` holds all the logic and only appends facts; `apply(&mut self, ..)` holds
//! none and only mutates state. Live ingest calls `handle`, which decides and then applies;
//! replay of the event log calls `apply` alone, so the log reproduces the state exactly even
//! after the rules changed. The engine never reads the clock and never does I/O: time arrives
//! as data, in each alert's `received_at` and in `Tick`s. Hash maps are only looked up, never
//! iterated where the order could reach a fact; they use foldhash (seeded per process), which
//! costs a few nanoseconds per integer key where SipHash costs tens, on every alert.
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
mod shared;
pub mod snapshot_codec;
mod table;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use facts::digits;
pub use facts::{Fact, IncidentId, IncidentState, Priority};
pub use shared::SharedStr;
use shared::{IncidentSet, Names};
pub use table::{IdTable, Incidents};

use serde::{Deserialize, Serialize};

use crate::cmdb::{CiIdx, CmdbOp, CmdbSpec, Criticality, Direction, Reach, Topology};
use crate::model::{Alert, Fingerprint, FingerprintMap, Millis, Severity, Status, format_duration};
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
/// Most incidents one tick closes: after a long stop a backlog closes over a few ticks, not
/// in one batch that holds up ingest.
const CLOSE_PER_TICK: usize = 10_000;

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
    /// JetStream ingest is about to consume `stream` (created at `created` ns since the
    /// epoch; last sequence `last`).
    AttachStream {
        now: Millis,
        stream: &'a str,
        created: u64,
        last: u64,
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
    pub name: SharedStr,
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
    pub rule: SharedStr,
    pub group_key: SharedStr,
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
    /// Shared with snapshots being written (a 100k-CI CMDB takes ~30 ms to copy), copied
    /// only when a CMDB change meets one in flight.
    pub topology: Arc<Topology>,
    pub alerts: FingerprintMap<AlertState>,
    pub incidents: Incidents,
    /// Newest incident per group key.
    groups: HashMap<SharedStr, IncidentId>,
    /// Unresolved incidents with a member on each CI: topology search never scans incidents.
    by_ci: HashMap<CiIdx, IncidentSet>,
    last_incident: u64,
    /// Unresolved incidents with no firing member, by the time they went quiet.
    quiet: BTreeSet<(Millis, IncidentId)>,
    /// Firing alerts that time out unless re-sent, by `ends_at`.
    expiries: BTreeSet<(Millis, Fingerprint)>,
    /// Resolved incidents by `resolved_at`: the candidates for closing. Derived from
    /// `incidents`, so not in snapshots ([`State::index_closable`] rebuilds it).
    #[serde(skip)]
    resolved: BTreeSet<(Millis, IncidentId)>,
    /// Resolved alerts in no incident, by when they resolved ([`loose_since`]): the
    /// candidates for forgetting. Derived from `alerts`, so not in snapshots either.
    #[serde(skip)]
    loose: BTreeSet<(Millis, Fingerprint)>,
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
    /// The stream these sequences belong to: (name, created in ns). `None` before the first
    /// [`Fact::StreamAttached`] (logs written before it existed). Snapshots carry it after
    /// the state ([`snapshot_codec`]), so it is skipped here.
    #[serde(skip)]
    stream: Option<(String, u64)>,
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

    /// Whether the recorded stream is `stream` created at `created`; `None` when no stream
    /// is recorded yet.
    fn same_stream(&self, stream: &str, created: u64) -> Option<bool> {
        let (s, c) = self.stream.as_ref()?;
        Some(s == stream && *c == created)
    }

    /// Whether attaching to `stream` (created at `created`, last sequence `last`) would
    /// forget anything or record a new identity.
    fn attach_changes(&self, stream: &str, created: u64, last: u64) -> bool {
        self.same_stream(stream, created) != Some(true)
            || self.floor > last
            || self.above.last().is_some_and(|&s| s > last)
    }

    /// Forgets sequences that cannot name messages of this stream: all of them if it is
    /// another stream (a log from before identities were recorded is taken to be this one),
    /// and those above its last sequence, which it will assign again.
    fn attach(&mut self, stream: &str, created: u64, last: u64) {
        if self.same_stream(stream, created) == Some(false) {
            self.floor = 0;
            self.above.clear();
        }
        self.floor = self.floor.min(last);
        self.above.retain(|&s| s <= last);
        self.stream = Some((stream.to_string(), created));
    }
}

impl State {
    /// Entries held (alerts and incidents): what copying or writing the state costs.
    pub fn size(&self) -> u64 {
        (self.alerts.len() + self.incidents.len()) as u64
    }

    /// Rebuilds what snapshots leave out because the incidents and alerts imply it.
    pub(crate) fn index_closable(&mut self) {
        self.resolved = self
            .incidents
            .values()
            .filter(|inc| inc.state == IncidentState::Resolved)
            .filter_map(|inc| Some((inc.resolved_at?, inc.id)))
            .collect();
        self.loose = self
            .alerts
            .iter()
            .filter_map(|(fp, a)| Some((loose_since(a)?, *fp)))
            .collect();
    }

    /// Whether the alerts of this JetStream message are already in the log.
    pub fn consumed(&self, seq: u64) -> bool {
        self.consumed.contains(seq)
    }
}

/// Alerts (or facts) whose map entries are looked up together before they are handled or
/// applied: at a storm's scale each lookup is a cache miss, and independent lookups in a
/// row overlap their misses where handling one alert at a time waits for each in turn.
pub const TOUCH_AHEAD: usize = 16;

/// The engine: current rules plus the state they act on.
pub struct Engine {
    rules: Rules,
    state: State,
    /// Index in the caller's batch of the coalescable `AlertRepeated` per alert.
    repeat_slots: HashMap<Fingerprint, usize>,
    /// Which CIs have open topology incidents (`State::by_ci`'s keys).
    ci_bits: CiBits,
    /// Rule and alert names, shared by the incidents and alerts that carry them.
    names: Names,
    /// The neighbourhood and candidate lists of topology decisions, kept between alerts.
    lists: Reuse<(Vec<Reach>, Vec<Candidate>)>,
}

/// Working space a decision reuses instead of allocating and freeing it for every alert.
/// `decide` takes `&self`, so it sits behind a mutex that is only `try_lock`ed (the engine
/// stays `Sync`, as the topology's walk scratch does); a concurrent caller just allocates.
#[derive(Default)]
struct Reuse<T>(std::sync::Mutex<T>);

impl<T: Default> Reuse<T> {
    fn take(&self) -> T {
        self.0
            .try_lock()
            .map(|mut kept| std::mem::take(&mut *kept))
            .unwrap_or_default()
    }

    fn put_back(&self, value: T) {
        if let Ok(mut kept) = self.0.try_lock() {
            *kept = value;
        }
    }
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

/// A piece of a reason: text, an incident id (`INC-000042`), a number or a duration.
#[derive(Clone, Copy)]
enum Part<'a> {
    S(&'a str),
    Id(IncidentId),
    N(u64),
    /// As [`format_duration`] writes it.
    Dur(Millis),
}

fn push_part(out: &mut String, part: Part<'_>) {
    let mut buf = [0u8; 20];
    match part {
        Part::S(s) => out.push_str(s),
        Part::Id(id) => {
            out.push_str("INC-");
            out.push_str(digits(&mut buf, id.0, 6));
        }
        Part::N(n) => out.push_str(digits(&mut buf, n, 1)),
        Part::Dur(ms) if ms < 1_000 => {
            // Negative only if time ran backwards; the formatter's text then.
            if ms < 0 {
                out.push_str(&format_duration(ms));
            } else {
                out.push_str(digits(&mut buf, ms as u64, 1));
                out.push_str("ms");
            }
        }
        Part::Dur(ms) => {
            let mut secs = (ms / 1_000) as u64;
            for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
                if secs >= size {
                    out.push_str(digits(&mut buf, secs / size, 1));
                    out.push_str(unit);
                    secs %= size;
                }
            }
        }
    }
}

/// Writes a reason from its pieces into one string of the right size. Reasons are written
/// for every alert that opens or joins an incident; `format!` costs several times more
/// (formatter dispatch, and growing the string two or three times).
fn text(parts: &[Part<'_>]) -> String {
    let len: usize = parts
        .iter()
        .map(|p| match p {
            Part::S(s) => s.len(),
            // Typical widths: a short overestimate beats growing the string.
            Part::Id(_) => 10,
            Part::N(_) => 4,
            Part::Dur(_) => 8,
        })
        .sum();
    let mut out = String::with_capacity(len);
    write_parts(&mut out, parts);
    out
}

/// Appends a reason's pieces; text pieces, nearly all of them, without a call.
#[inline]
/// "` (alerting in INC-…, n hops)`"-style tails of topology reasons.
fn alerting_in(
    label: &'static str,
    incident: IncidentId,
    hops: u8,
    unit: &'static str,
) -> [Part<'static>; 5] {
    [
        Part::S(label),
        Part::Id(incident),
        Part::S(", "),
        Part::N(hops.into()),
        Part::S(unit),
    ]
}

fn write_parts(out: &mut String, parts: &[Part<'_>]) {
    for &part in parts {
        match part {
            Part::S(s) => out.push_str(s),
            _ => push_part(out, part),
        }
    }
}

/// A priority and what it was computed from; [`Assessment::reason`] puts it in words.
struct Assessment {
    priority: Priority,
    impact: Level,
    impact_from: ImpactFrom,
    urgency: Level,
    severity: Severity,
}

/// Where an assessment's impact came from.
#[derive(Clone, Copy)]
enum ImpactFrom {
    Rule,
    Service(Criticality),
    Unknown,
}

impl Assessment {
    /// E.g. `impact high (a critical business service is hit) x urgency high (worst
    /// severity critical)`. Written for every incident that opens: a few static pieces into
    /// one string sized exactly (joining eleven pieces cost three times as much).
    fn reason(&self) -> String {
        let impact = match self.impact {
            Level::High => "impact high (",
            Level::Medium => "impact medium (",
            Level::Low => "impact low (",
        };
        let (from, criticality) = match self.impact_from {
            ImpactFrom::Rule => ("set by the rule", ""),
            ImpactFrom::Service(c) => ("a ", c.as_str()),
            ImpactFrom::Unknown => ("no business service known", ""),
        };
        let service = match self.impact_from {
            ImpactFrom::Service(_) => " business service is hit",
            _ => "",
        };
        let urgency = match self.urgency {
            Level::High => ") x urgency high (worst severity ",
            Level::Medium => ") x urgency medium (worst severity ",
            Level::Low => ") x urgency low (worst severity ",
        };
        let parts = [
            impact,
            from,
            criticality,
            service,
            urgency,
            self.severity.as_str(),
        ];
        let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 1);
        for part in parts {
            out.push_str(part);
        }
        out.push(')');
        out
    }

    /// The reason as the pieces were first joined, to check the fast one against.
    #[cfg(test)]
    fn reason_joined(&self) -> String {
        let from: [&str; 3] = match self.impact_from {
            ImpactFrom::Rule => ["set by the rule", "", ""],
            ImpactFrom::Service(c) => ["a ", c.as_str(), " business service is hit"],
            ImpactFrom::Unknown => ["no business service known", "", ""],
        };
        [
            "impact ",
            self.impact.as_str(),
            " (",
            from[0],
            from[1],
            from[2],
            ") x urgency ",
            self.urgency.as_str(),
            " (worst severity ",
            self.severity.as_str(),
            ")",
        ]
        .concat()
    }
}

impl Engine {
    pub fn new(rules: Rules) -> Engine {
        Engine {
            rules,
            state: State::default(),
            repeat_slots: HashMap::new(),
            ci_bits: CiBits::default(),
            names: Names::default(),
            lists: Reuse::default(),
        }
    }

    /// Brings the alert's entry into the cache ahead of a fact or an alert about it
    /// ([`FingerprintMap::touch`]; see [`TOUCH_AHEAD`]).
    pub fn touch(&self, fp: &Fingerprint) {
        self.state.alerts.touch(fp);
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state, without a copy, for an engine that is done (the snapshot at shutdown).
    pub fn into_state(self) -> State {
        self.state
    }

    /// An engine resuming from a snapshot's state.
    pub fn restore(rules: Rules, mut state: State) -> Engine {
        state.index_closable();
        Engine {
            ci_bits: CiBits::from_state(&state),
            state,
            ..Engine::new(rules)
        }
    }

    /// Whether the engine's derived CI bits agree with its state (tests check it after
    /// every scenario).
    #[cfg(test)]
    fn ci_bits_consistent(&self) -> bool {
        self.ci_bits.matches(&self.state)
    }

    /// The earliest engine time at which a `Tick` would decide something (an alert timing
    /// out, an incident's hold-down ending). Replay ticks exactly there. Closing is left
    /// out: it changes no correlation, and `incidentd replay` keeps every incident.
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
        let start = out.len();
        let result = self.decide(input, out);
        self.settle(start, out);
        result
    }

    /// [`handle`](Self::handle) for an alert the caller gives up: a new alert moves into
    /// its `AlertReceived` fact instead of being copied. Same facts, same state.
    pub fn handle_alert(&mut self, alert: Alert, out: &mut Vec<Fact>) {
        let start = out.len();
        self.decide_alert(Cow::Owned(alert), out);
        self.settle(start, out);
    }

    /// Handles the alerts of JetStream messages `(stream sequence, alert count)` in order and
    /// records their sequences in one `StreamConsumed`. A message already in the log, or
    /// earlier in the same call, is skipped: after a server restart a redelivery can arrive
    /// beside its original, before either is recorded. Returns the alerts handled.
    pub fn handle_messages(
        &mut self,
        alerts: Vec<Alert>,
        messages: &[(u64, usize)],
        out: &mut Vec<Fact>,
    ) -> usize {
        let now = alerts.iter().map(|a| a.received_at).max().unwrap_or(0);
        let (mut fresh, mut handled) = (Vec::new(), 0);
        let mut alerts = alerts.into_iter();
        for &(seq, n) in messages {
            let part = alerts.by_ref().take(n);
            if self.state.consumed(seq) || fresh.contains(&seq) {
                part.for_each(drop);
                continue;
            }
            for alert in part {
                self.handle_alert(alert, out);
                handled += 1;
            }
            fresh.push(seq);
        }
        let _ = self.handle(Input::Consumed { now, seqs: &fresh }, out);
        handled
    }

    /// Applies the facts just decided into `out[start..]`, in order, and coalesces them in
    /// place: a fact moves only when an earlier one absorbed a repeat before it. (Deciding
    /// into a scratch vector and pushing each fact on cost two copies of every fact.)
    fn settle(&mut self, start: usize, out: &mut Vec<Fact>) {
        let mut kept = start;
        for i in start..out.len() {
            self.apply(&out[i]);
            if self.absorb(i, kept, out) {
                continue;
            }
            if kept != i {
                out.swap(kept, i);
            }
            kept += 1;
        }
        out.truncate(kept);
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
        out.push(fact);
        let i = out.len() - 1;
        if self.absorb(i, i, out) {
            out.pop();
        }
    }

    /// Folds `out[i]` into an earlier `AlertRepeated` of the batch if it is a repeat of the
    /// same alert (true: drop `out[i]`); else records where it will stay (`kept`), for
    /// later repeats. Only facts before `kept` are settled, so only they can absorb one.
    fn absorb(&mut self, i: usize, kept: usize, out: &mut [Fact]) -> bool {
        match out[i] {
            Fact::AlertRepeated {
                at,
                fingerprint,
                count,
                severity,
                ends_at,
            } => {
                if let Some(&slot) = self.repeat_slots.get(&fingerprint)
                    && slot < kept
                    && let Some(Fact::AlertRepeated {
                        at: prev_at,
                        fingerprint: prev_fp,
                        count: prev_count,
                        severity: prev_severity,
                        ends_at: prev_ends,
                    }) = out.get_mut(slot)
                    // A change of severity stays its own fact: the incident's worst severity
                    // depends on every value seen, not only the last.
                    && *prev_fp == fingerprint
                    && *prev_severity == severity
                {
                    *prev_at = (*prev_at).max(at);
                    *prev_count += count;
                    *prev_ends = ends_at;
                    return true;
                }
                self.repeat_slots.insert(fingerprint, kept);
            }
            // A merge moves alerts between incidents, a closing removes them: a repeat after
            // it must not be folded into one before it, or replay would credit the wrong
            // incident.
            Fact::IncidentsMerged { .. } | Fact::IncidentClosed { .. } => self.repeat_slots.clear(),
            ref fact => {
                if !self.repeat_slots.is_empty()
                    && let Some(fp) = fact.fingerprint()
                {
                    self.repeat_slots.remove(&fp);
                }
            }
        }
        false
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
            Input::AttachStream {
                now,
                stream,
                created,
                last,
            } => {
                if self.state.consumed.attach_changes(stream, created, last) {
                    out.push(Fact::StreamAttached {
                        at: now.max(self.state.now),
                        stream: stream.to_string(),
                        created,
                        last,
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
                    // Suppressed until now: once no window covers it, it correlates. So does
                    // a firing alert the log holds without its decision (a crash tore the
                    // commit group between its `alert_received` and what followed), which
                    // would otherwise never join an incident.
                    None if self.suppression(alert, current.ci, now).is_none() => {
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
        if let Some(&id) = self.state.groups.get(group_key.as_str())
            && let Some(inc) = self.state.incidents.get(&id)
            && inc.state != IncidentState::Resolved
            && now - inc.last_activity <= rule.window
        {
            return Target::Join {
                incident: id,
                reason: text(&[
                    Part::S("rule "),
                    Part::S(&rule.name),
                    Part::S(": same group "),
                    Part::S(&group_key),
                    Part::S(", last activity "),
                    Part::Dur(now - inc.last_activity),
                    Part::S(" ago (window "),
                    Part::Dur(rule.window),
                    Part::S(")"),
                ]),
                merge: Vec::new(),
                new_root: None,
            };
        }
        Target::Open {
            rule: rule.name.clone(),
            reason: text(&[
                Part::S("rule "),
                Part::S(&rule.name),
                Part::S(": first alert of group "),
                Part::S(&group_key),
            ]),
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
        let mut lists = self.lists.take();
        let target = self.topology_decision(alert, ci, rule, policy, now, &mut lists);
        self.lists.put_back(lists);
        target
    }

    /// [`topology_target`](Self::topology_target) with its working lists.
    fn topology_decision(
        &self,
        alert: &Alert,
        ci: CiIdx,
        rule: &Rule,
        policy: &TopologyPolicy,
        now: Millis,
        (reach, candidates): &mut (Vec<Reach>, Vec<Candidate>),
    ) -> Target {
        let topo = &self.state.topology;
        candidates.clear();
        // Only CIs with open topology incidents matter: a handful out of a rack of siblings.
        topo.neighborhood_where(
            ci,
            policy.relations,
            policy.max_hops,
            policy.max_fan_in,
            MAX_NODES,
            |c| self.ci_bits.get(c),
            reach,
        );
        // The CIs the decision asks about (candidates' roots) are such CIs too, as a root is
        // one of its incident's CIs; the whole neighbourhood would answer for any other.
        let everything = std::cell::OnceCell::new();
        let downstream = |c: CiIdx| {
            let reach = if self.ci_bits.get(c) {
                &*reach
            } else {
                everything.get_or_init(|| {
                    let mut all = Vec::new();
                    topo.neighborhood(
                        ci,
                        policy.relations,
                        policy.max_hops,
                        policy.max_fan_in,
                        MAX_NODES,
                        &mut all,
                    );
                    all
                })
            };
            reach
                .iter()
                .any(|r| r.ci == c && r.direction == Direction::Downstream)
        };
        // Best relation per incident, in deterministic (reach) order.
        let start = Reach {
            ci,
            hops: 0,
            direction: Direction::Upstream,
        };
        for r in std::iter::once(&start).chain(reach.iter()) {
            if (r.direction == Direction::Sibling && !policy.siblings) || !self.ci_bits.get(r.ci) {
                continue;
            }
            for &id in self
                .state
                .by_ci
                .get(&r.ci)
                .map(IncidentSet::as_slice)
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
        let name = |c: CiIdx| topo.ci(c).map_or("?", |c| c.id.as_str());
        // Paths are written straight into the reasons that quote them. Every candidate was
        // reached within max_hops (siblings within 2), so this bound keeps the search as
        // small as the neighbourhood walk.
        let write_path = |out: &mut String, to: CiIdx| {
            if !topo.write_path(ci, to, policy.relations, policy.max_hops.max(2), out) {
                out.push_str(name(to));
            }
        };
        // Most specific first: fewest hops, then most recent activity, then oldest incident.
        let best = |relation: Link| {
            candidates
                .iter()
                .filter(|c| c.relation == relation)
                .min_by_key(|c| (c.hops, std::cmp::Reverse(c.last_activity), c.incident))
        };
        let (cause, related) = (best(Link::Cause), best(Link::Related));
        let effects = || candidates.iter().filter(|c| c.relation == Link::Effect);
        // In a busy rack every sibling has an incident: one list, not one reason each.
        let write_others = |out: &mut String, chosen: IncidentId| {
            let mut any = false;
            for c in candidates
                .iter()
                .filter(|c| c.incident != chosen && c.relation != Link::Effect)
            {
                out.push_str(if any { ", " } else { "; preferred over " });
                push_part(out, Part::Id(c.incident));
                any = true;
            }
            if any {
                out.push_str(" (less specific)");
            }
        };
        let root_of = |id: IncidentId| self.state.incidents.get(&id).and_then(|i| i.root_ci);
        // The root this alert displaces, if it is upstream of it: why the alert becomes the
        // root, ending in the path between, which the join reason quotes from there.
        let displaced = |id: IncidentId| {
            let r = root_of(id).filter(|&r| r != ci && downstream(r))?;
            let mut why = String::with_capacity(128);
            write_parts(
                &mut why,
                &[
                    Part::S(name(ci)),
                    Part::S(" is upstream of the previous root "),
                    Part::S(name(r)),
                    Part::S(": "),
                ],
            );
            let path_at = why.len();
            write_path(&mut why, r);
            Some((r, why, path_at))
        };

        let chosen = cause.or_else(|| effects().min_by_key(|c| c.incident));
        if let Some(into) = chosen {
            let merge: Vec<(IncidentId, String)> = effects()
                .filter(|e| e.incident != into.incident)
                .map(|e| {
                    let root = root_of(e.incident);
                    let mut why = String::with_capacity(160);
                    write_parts(
                        &mut why,
                        &[
                            Part::S("rule "),
                            Part::S(&rule.name),
                            Part::S(": "),
                            Part::S(name(ci)),
                            Part::S(" ("),
                            Part::S(&alert.name),
                            Part::S(") is upstream of this incident's root "),
                            Part::S(root.map(name).unwrap_or_default()),
                            Part::S(": "),
                        ],
                    );
                    if let Some(r) = root {
                        write_path(&mut why, r);
                    }
                    (e.incident, why)
                })
                .collect();
            let displaced = displaced(into.incident);
            let mut reason = String::with_capacity(160);
            write_parts(
                &mut reason,
                &[Part::S("rule "), Part::S(&rule.name), Part::S(": ")],
            );
            match into.relation {
                Link::Cause if into.via == ci => {
                    write_parts(
                        &mut reason,
                        &[
                            Part::S("same CI "),
                            Part::S(name(ci)),
                            Part::S(" alerting in "),
                            Part::Id(into.incident),
                        ],
                    );
                    write_others(&mut reason, into.incident);
                }
                Link::Cause => {
                    write_path(&mut reason, into.via);
                    let unit = if into.hops == 1 { " hop)" } else { " hops)" };
                    write_parts(
                        &mut reason,
                        &alerting_in(" (alerting in ", into.incident, into.hops, unit),
                    );
                    write_others(&mut reason, into.incident);
                }
                _ => {
                    write_parts(
                        &mut reason,
                        &[
                            Part::S(name(ci)),
                            Part::S(" is upstream of "),
                            Part::Id(into.incident),
                            Part::S("'s root: "),
                        ],
                    );
                    // An effect's root is the one displaced: its path is already written.
                    match (root_of(into.incident), &displaced) {
                        (Some(r), Some((d, why, at))) if r == *d => reason.push_str(&why[*at..]),
                        (Some(r), _) => write_path(&mut reason, r),
                        (None, _) => {}
                    }
                }
            }
            return Target::Join {
                incident: into.incident,
                reason,
                new_root: displaced.map(|(_, why, _)| why),
                merge,
            };
        }
        if let Some(rel) = related {
            let mut reason = String::with_capacity(160);
            write_parts(
                &mut reason,
                &[Part::S("rule "), Part::S(&rule.name), Part::S(": ")],
            );
            write_path(&mut reason, rel.via);
            // "hops" even for one, as it has always read: reasons are recorded history.
            write_parts(
                &mut reason,
                &alerting_in(" (related: alerting in ", rel.incident, rel.hops, " hops)"),
            );
            write_others(&mut reason, rel.incident);
            return Target::Join {
                incident: rel.incident,
                reason,
                new_root: displaced(rel.incident).map(|(_, why, _)| why),
                merge: Vec::new(),
            };
        }
        Target::Open {
            rule: rule.name.clone(),
            group_key: rule.group_key(alert),
            reason: text(&[
                Part::S("rule "),
                Part::S(&rule.name),
                Part::S(": no open incident within "),
                Part::N(policy.max_hops.into()),
                Part::S(" hops of "),
                Part::S(name(ci)),
            ]),
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
                if !alert_services.is_empty() {
                    out.push(self.impact_fact(incident, alert_services, alert, now));
                }
                let assessed = self.assess(rule, alert_services.iter().copied(), alert.severity);
                out.push(Fact::PriorityChanged {
                    at: now,
                    incident,
                    priority: assessed.priority,
                    reason: assessed.reason(),
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
                // The incident's services, grown only if a merge or this alert adds one: most
                // joins add none, and then nothing is copied.
                let mut grown: Option<BTreeSet<CiIdx>> = None;
                let mut severity = inc.max_severity.max(alert.severity);
                let mut priority = inc.priority;
                for (from, why) in merge {
                    if let Some(other) = self.state.incidents.get(&from) {
                        if !other
                            .services
                            .is_subset(grown.as_ref().unwrap_or(&inc.services))
                        {
                            grown
                                .get_or_insert_with(|| inc.services.clone())
                                .extend(other.services.iter().copied());
                        }
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
                if alert_services
                    .iter()
                    .any(|s| !grown.as_ref().unwrap_or(&inc.services).contains(s))
                {
                    grown
                        .get_or_insert_with(|| inc.services.clone())
                        .extend(alert_services.iter().copied());
                }
                let services = grown.as_ref().unwrap_or(&inc.services);
                if grown.is_some() {
                    let ids: Vec<CiIdx> = services.iter().copied().collect();
                    out.push(self.impact_fact(incident, &ids, alert, now));
                }
                let assessed = self.assess(rule, services.iter().copied(), severity);
                let priority = assessed.priority.min(priority);
                if priority < inc.priority {
                    out.push(Fact::PriorityChanged {
                        at: now,
                        incident,
                        priority,
                        reason: assessed.reason(),
                    });
                }
            }
        }
    }

    fn impact_fact(
        &self,
        incident: IncidentId,
        services: &[CiIdx],
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
            reason: {
                let ci = alert.ci.as_deref().unwrap_or("?");
                let len = alert.name.len()
                    + ci.len()
                    + 10
                    + ids.iter().map(|i| i.len() + 2).sum::<usize>();
                let mut reason = String::with_capacity(len);
                for part in [alert.name.as_str(), " on ", ci, " hits "] {
                    reason.push_str(part);
                }
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        reason.push_str(", ");
                    }
                    reason.push_str(id);
                }
                reason
            },
            services: ids,
        }
    }

    /// ITIL priority from the services hit (impact) and the worst severity (urgency), with
    /// the rule's overrides. The reason is written only when a fact needs it: most alerts
    /// (duplicates above all) leave the priority as it is.
    fn assess(
        &self,
        rule: Option<&Rule>,
        services: impl IntoIterator<Item = CiIdx>,
        severity: Severity,
    ) -> Assessment {
        let matrix = &self.rules.priority;
        let (impact, impact_from) = match rule.and_then(|r| r.impact) {
            Some(level) => (level, ImpactFrom::Rule),
            None => {
                let topo = &self.state.topology;
                let worst = services
                    .into_iter()
                    .filter_map(|s| topo.ci(s).and_then(|c| c.criticality))
                    .min();
                match worst {
                    Some(c) => (
                        match c {
                            Criticality::Critical | Criticality::High => Level::High,
                            Criticality::Medium => Level::Medium,
                            Criticality::Low => Level::Low,
                        },
                        ImpactFrom::Service(c),
                    ),
                    None => (matrix.default_impact, ImpactFrom::Unknown),
                }
            }
        };
        let urgency = rule
            .and_then(|r| r.urgency)
            .unwrap_or_else(|| matrix.urgency(severity));
        Assessment {
            priority: matrix.priority(impact, urgency),
            impact,
            impact_from,
            urgency,
            severity,
        }
    }

    /// Raises an incident's priority when a more severe alert joins it. Priority never drops
    /// by itself: an operator who saw P1 should not find P3 without an explanation.
    fn escalate(&self, inc: &Incident, alert: &Alert, now: Millis, out: &mut Vec<Fact>) {
        if inc.priority == Priority::P1 {
            // Nothing is above P1: no need to look.
            return;
        }
        let rule = self
            .rules
            .rules
            .iter()
            .find(|r| r.name == inc.rule.as_str());
        let assessed = self.assess(
            rule,
            inc.services.iter().copied(),
            alert.severity.max(inc.max_severity),
        );
        if assessed.priority < inc.priority {
            out.push(Fact::PriorityChanged {
                at: now,
                incident: inc.id,
                priority: assessed.priority,
                reason: text(&[
                    Part::S(alert.severity.as_str()),
                    Part::S(" alert "),
                    Part::S(&alert.name),
                    Part::S(" raised the urgency: "),
                    Part::S(&assessed.reason()),
                ]),
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
        let Some(after) = self.rules.lifecycle.close_after else {
            return;
        };
        let due = self
            .state
            .resolved
            .range(..=(now - after, IncidentId(u64::MAX)))
            .filter_map(|(_, id)| self.state.incidents.get(id))
            // An operator may resolve an incident whose alerts still fire or repeat: it
            // closes only once quiet, so a repeat never turns into a new incident.
            .filter(|inc| inc.firing == 0 && now - inc.last_activity >= after)
            .take(CLOSE_PER_TICK);
        let start = out.len();
        for inc in due {
            out.push(Fact::IncidentClosed {
                at: now,
                incident: inc.id,
                reason: format!(
                    "resolved and quiet for {} (close_after {}): removed from memory, kept in the event log",
                    format_duration(now - inc.last_activity.max(inc.resolved_at.unwrap_or(0))),
                    format_duration(after)
                ),
            });
        }
        let room = CLOSE_PER_TICK - (out.len() - start);
        for &(since, fingerprint) in self
            .state
            .loose
            .range(..=(now - after, Fingerprint(u64::MAX)))
            .take(room)
        {
            out.push(Fact::AlertForgotten {
                at: now,
                fingerprint,
                reason: format!(
                    "resolved outside any incident for {} (close_after {}): removed from memory, kept in the event log",
                    format_duration(now - since),
                    format_duration(after)
                ),
            });
        }
    }

    /// No logic: mutates state exactly as the fact says. Replay calls only this.
    pub fn apply(&mut self, fact: &Fact) {
        let s = &mut self.state;
        let bits = &mut self.ci_bits;
        let names = &mut self.names;
        s.now = s.now.max(fact.at());
        match fact {
            Fact::AlertReceived { at, alert } => {
                if let Some(old) = s.alerts.remove(&alert.fingerprint) {
                    forget_expiry(&mut s.expiries, &old, alert.fingerprint);
                    unloose(&mut s.loose, &old, alert.fingerprint);
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
                    name: names.get(&alert.name),
                    suppressed: false,
                    flapping: false,
                    transitions: Vec::new(),
                };
                track_expiry(&mut s.expiries, &state, alert.fingerprint);
                if let Some(since) = loose_since(&state) {
                    s.loose.insert((since, alert.fingerprint));
                }
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
                unloose(&mut s.loose, a, *fingerprint);
                a.status = Status::Resolved;
                a.ends_at = Some(*ends_at);
                remember_transition(a, *at);
                if let Some(since) = loose_since(a) {
                    s.loose.insert((since, *fingerprint));
                }
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
                unloose(&mut s.loose, a, *fingerprint);
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
                let group_key = SharedStr::from(group_key.as_str());
                s.groups.insert(group_key.clone(), *incident);
                s.incidents.insert(
                    *incident,
                    Incident {
                        id: *incident,
                        state: IncidentState::Open,
                        rule: names.get(rule),
                        group_key,
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
                unloose(&mut s.loose, a, *fingerprint);
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
                        index_ci(&mut s.by_ci, bits, ci, inc.id);
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
                    unindex_ci(&mut s.by_ci, bits, *ci, gone.id);
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
                                index_ci(&mut s.by_ci, bits, *ci, target.id);
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
                unresolve(&mut s.resolved, &gone);
                gone.state = IncidentState::Resolved;
                gone.resolved_at = Some(*at);
                gone.merged_into = Some(*into);
                gone.firing = 0;
                s.resolved.insert((*at, gone.id));
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
                    unresolve(&mut s.resolved, inc);
                    inc.state = IncidentState::Acknowledged;
                }
            }
            Fact::IncidentResolved { at, incident, .. } => {
                if let Some(inc) = s.incidents.get_mut(incident) {
                    unresolve(&mut s.resolved, inc);
                    inc.state = IncidentState::Resolved;
                    inc.resolved_at = Some(*at);
                    s.resolved.insert((*at, inc.id));
                    if let Some(since) = inc.quiet_since.take() {
                        s.quiet.remove(&(since, inc.id));
                    }
                    for ci in &inc.cis {
                        unindex_ci(&mut s.by_ci, bits, *ci, inc.id);
                    }
                }
            }
            Fact::IncidentReopened { at, incident, .. } => {
                if let Some(inc) = s.incidents.get_mut(incident) {
                    unresolve(&mut s.resolved, inc);
                    inc.state = IncidentState::Open;
                    inc.resolved_at = None;
                    inc.last_activity = inc.last_activity.max(*at);
                    if inc.firing == 0 {
                        inc.quiet_since = Some(*at);
                        s.quiet.insert((*at, inc.id));
                    }
                    if inc.topology {
                        for ci in &inc.cis {
                            index_ci(&mut s.by_ci, bits, *ci, inc.id);
                        }
                    }
                }
            }
            Fact::IncidentClosed { incident, .. } => {
                let Some(inc) = s.incidents.retire(incident) else {
                    return;
                };
                if let Some(t) = inc.resolved_at {
                    s.resolved.remove(&(t, inc.id));
                }
                if let Some(since) = inc.quiet_since {
                    s.quiet.remove(&(since, inc.id));
                }
                for ci in &inc.cis {
                    unindex_ci(&mut s.by_ci, bits, *ci, inc.id);
                }
                if s.groups.get(&inc.group_key) == Some(&inc.id) {
                    s.groups.remove(&inc.group_key);
                }
                for fp in &inc.members {
                    if s.alerts.get(fp).is_some_and(|a| a.incident == Some(inc.id))
                        && let Some(a) = s.alerts.remove(fp)
                    {
                        forget_expiry(&mut s.expiries, &a, *fp);
                    }
                }
            }
            Fact::AlertForgotten { fingerprint, .. } => {
                if let Some(a) = s.alerts.remove(fingerprint) {
                    forget_expiry(&mut s.expiries, &a, *fingerprint);
                    unloose(&mut s.loose, &a, *fingerprint);
                }
            }
            // History only: the read model shows it; the engine's state does not change.
            Fact::IncidentCommented { .. } => {}
            Fact::RulesLoaded { version, hash, .. } => {
                s.rules_version = *version;
                s.rules_hash = hash.clone();
            }
            Fact::CmdbChanged { ops, .. } => Arc::make_mut(&mut s.topology).apply(ops),
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
            Fact::StreamAttached {
                stream,
                created,
                last,
                ..
            } => s.consumed.attach(stream, *created, *last),
        }
    }
}

/// Since when a resolved alert has been outside any incident, if it is: the time of its
/// latest state change (its resolution), else of its arrival (received resolved).
fn loose_since(a: &AlertState) -> Option<Millis> {
    (a.incident.is_none() && a.status == Status::Resolved)
        .then(|| a.transitions.last().copied().unwrap_or(a.first_seen))
}

fn unloose(loose: &mut BTreeSet<(Millis, Fingerprint)>, a: &AlertState, fp: Fingerprint) {
    if let Some(since) = loose_since(a) {
        loose.remove(&(since, fp));
    }
}

/// Takes a resolved incident out of the closing candidates (it is reopened, acknowledged or
/// resolved again).
fn unresolve(resolved: &mut BTreeSet<(Millis, IncidentId)>, inc: &Incident) {
    if inc.state == IncidentState::Resolved
        && let Some(t) = inc.resolved_at
    {
        resolved.remove(&(t, inc.id));
    }
}

fn index_ci(by_ci: &mut HashMap<CiIdx, IncidentSet>, bits: &mut CiBits, ci: CiIdx, id: IncidentId) {
    by_ci
        .entry(ci)
        .and_modify(|set| set.insert(id))
        .or_insert(IncidentSet::One(id));
    bits.set(ci, true);
}

fn unindex_ci(
    by_ci: &mut HashMap<CiIdx, IncidentSet>,
    bits: &mut CiBits,
    ci: CiIdx,
    id: IncidentId,
) {
    if let Some(set) = by_ci.get_mut(&ci)
        && set.remove(id)
    {
        by_ci.remove(&ci);
        bits.set(ci, false);
    }
}

/// The keys of `State::by_ci` as a bit set. A neighbourhood search tests every CI it reaches
/// (a host's 40 rack siblings, say) and most have no open incident: a bit test answers that
/// from a few kilobytes, where a hash lookup each costs more and misses the cache.
/// Derived from the state, so kept by the engine beside it and rebuilt on restore.
#[derive(Clone, Debug, Default)]
struct CiBits(Vec<u64>);

impl CiBits {
    fn from_state(state: &State) -> CiBits {
        let mut bits = CiBits::default();
        for &ci in state.by_ci.keys() {
            bits.set(ci, true);
        }
        bits
    }

    fn get(&self, ci: CiIdx) -> bool {
        self.0
            .get(ci as usize / 64)
            .is_some_and(|w| w & (1 << (ci % 64)) != 0)
    }

    fn set(&mut self, ci: CiIdx, on: bool) {
        let i = ci as usize / 64;
        if i >= self.0.len() {
            if !on {
                return;
            }
            self.0.resize(i + 1, 0);
        }
        let mask = 1u64 << (ci % 64);
        if on {
            self.0[i] |= mask;
        } else {
            self.0[i] &= !mask;
        }
    }

    /// Whether the bits name exactly the CIs in `by_ci`.
    #[cfg(test)]
    fn matches(&self, state: &State) -> bool {
        let ones: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        ones as usize == state.by_ci.len() && state.by_ci.keys().all(|&ci| self.get(ci))
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

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn reason_pieces_read_as_the_formatter_writes_them() {
        for id in [0, 7, 42, 999_999, 1_000_000, 123_456_789] {
            assert_eq!(
                text(&[Part::Id(IncidentId(id))]),
                IncidentId(id).to_string()
            );
        }
        for n in [0, 1, 9, 10, 255, u64::MAX] {
            assert_eq!(text(&[Part::N(n)]), n.to_string());
        }
        for ms in [
            -5, 0, 1, 999, 1_000, 59_999, 60_000, 61_000, 3_600_000, 3_661_000, 86_400_000,
            90_061_001, 900_000,
        ] {
            assert_eq!(text(&[Part::Dur(ms)]), format_duration(ms), "{ms}");
        }
        assert_eq!(
            text(&[Part::S("rule "), Part::S("r"), Part::S(": "), Part::N(3)]),
            "rule r: 3"
        );
    }

    #[test]
    fn priority_reasons_read_as_before_for_every_assessment() {
        let levels = [Level::High, Level::Medium, Level::Low];
        let crits = [
            Criticality::Critical,
            Criticality::High,
            Criticality::Medium,
            Criticality::Low,
        ];
        let froms = [ImpactFrom::Rule, ImpactFrom::Unknown]
            .into_iter()
            .chain(crits.map(ImpactFrom::Service));
        let mut seen = 0;
        for impact_from in froms {
            for impact in levels {
                for urgency in levels {
                    for severity in [
                        Severity::Critical,
                        Severity::Major,
                        Severity::Minor,
                        Severity::Warning,
                        Severity::Info,
                    ] {
                        let a = Assessment {
                            priority: Priority::P3,
                            impact,
                            impact_from,
                            urgency,
                            severity,
                        };
                        assert_eq!(a.reason(), a.reason_joined());
                        assert_eq!(a.reason().capacity(), a.reason().len());
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 6 * 3 * 3 * 5);
    }
}
