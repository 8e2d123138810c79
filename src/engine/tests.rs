//! Given/when/then scenarios for the engine, with explicit timestamps.

use std::collections::BTreeMap;

use super::*;
use crate::engine::facts::{decode_record, encode_record};

const T0: Millis = 1_795_000_000_000;
const MIN: Millis = 60_000;

fn rules() -> Rules {
    Rules::parse_files(&[(
        "test.toml".to_string(),
        r#"
[lifecycle]
hold_down = "5m"
reopen_window = "30m"

[[rule]]
name = "by-service"
match = [{ field = "labels.service", exists = true }]
group_by = ["labels.service"]
window = "10m"

[[rule]]
name = "catch-all"
group_by = ["source", "name"]
window = "10m"
"#
        .to_string(),
    )])
    .expect("test rules compile")
}

/// A firing alert named `name` about `service`, received at `at`.
fn alert(name: &str, service: &str, at: Millis) -> Alert {
    let mut labels = BTreeMap::new();
    labels.insert("service".to_string(), service.to_string());
    let fingerprint = Fingerprint::native("mon", name, None, &labels, None);
    Alert {
        fingerprint,
        source: "mon".into(),
        name: name.into(),
        ci: None,
        severity: Severity::Warning,
        status: Status::Firing,
        summary: None,
        labels,
        annotations: BTreeMap::new(),
        starts_at: at,
        ends_at: None,
        dedup_key: None,
        received_at: at,
    }
}

fn resolved(mut a: Alert, at: Millis) -> Alert {
    a.status = Status::Resolved;
    a.ends_at = Some(at);
    a.received_at = at;
    a
}

fn severe(mut a: Alert, severity: Severity) -> Alert {
    a.severity = severity;
    a
}

/// Drives an engine and keeps every fact, so tests can also replay them.
struct Scenario {
    engine: Engine,
    log: Vec<Fact>,
}

impl Scenario {
    fn given() -> Scenario {
        Scenario {
            engine: Engine::new(rules()),
            log: Vec::new(),
        }
    }

    /// One engine batch holding all `inputs`; returns the facts it produced.
    fn when(&mut self, inputs: &[Input<'_>]) -> Vec<Fact> {
        let mut out = Vec::new();
        self.engine.begin_batch();
        for input in inputs {
            let _ = self.engine.handle(*input, &mut out);
        }
        self.log.extend(out.iter().cloned());
        out
    }

    fn alert(&mut self, a: &Alert) -> Vec<Fact> {
        self.when(&[Input::Alert(a)])
    }

    fn tick(&mut self, now: Millis) -> Vec<Fact> {
        self.when(&[Input::Tick { now }])
    }

    fn incident(&self, id: u64) -> &Incident {
        self.engine
            .state()
            .incidents
            .get(&IncidentId(id))
            .expect("incident exists")
    }

    fn count(&self, a: &Alert) -> u64 {
        self.engine.state().alerts[&a.fingerprint].count
    }

    /// Replays the recorded facts (through the on-disk encoding) into a fresh engine.
    fn replayed(&self) -> State {
        let mut fresh = Engine::new(rules());
        let mut buf = Vec::new();
        for fact in &self.log {
            encode_record(fact, &mut buf).expect("encode");
            fresh.apply(&decode_record(&buf).expect("decode"));
        }
        fresh.state().clone()
    }
}

fn kinds(facts: &[Fact]) -> Vec<&'static str> {
    facts.iter().map(Fact::kind).collect()
}

#[test]
fn duplicates_bump_the_count_and_coalesce_within_a_batch() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    let a2 = alert("HighLatency", "payments", T0 + 1_000);
    let a3 = alert("HighLatency", "payments", T0 + 2_000);
    let facts = s.when(&[Input::Alert(&a), Input::Alert(&a2), Input::Alert(&a3)]);
    assert_eq!(
        kinds(&facts),
        [
            "alert_received",
            "incident_opened",
            "alert_attached",
            "root_cause_changed",
            "priority_changed",
            "alert_repeated"
        ]
    );
    assert!(matches!(
        facts[5],
        Fact::AlertRepeated { count: 2, at, .. } if at == T0 + 2_000
    ));
    assert_eq!(s.count(&a), 3);
    assert_eq!(s.engine.state().incidents.len(), 1);

    // A later batch records its own repeat.
    let facts = s.alert(&alert("HighLatency", "payments", T0 + 3_000));
    assert_eq!(kinds(&facts), ["alert_repeated"]);
    assert_eq!(s.count(&a), 4);
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn alerts_of_one_group_share_an_incident_and_say_why() {
    let mut s = Scenario::given();
    s.alert(&alert("HighLatency", "payments", T0));
    let facts = s.alert(&alert("ErrorRate", "payments", T0 + 2 * MIN));
    assert_eq!(kinds(&facts), ["alert_received", "alert_attached"]);
    let Fact::AlertAttached {
        incident, reason, ..
    } = &facts[1]
    else {
        panic!("expected an attach, got {facts:?}");
    };
    assert_eq!(*incident, IncidentId(1));
    assert_eq!(
        reason,
        r#"rule by-service: same group by-service{labels.service="payments"}, last activity 2m ago (window 10m)"#
    );
    s.alert(&alert("HighLatency", "search", T0 + 2 * MIN));
    assert_eq!(
        s.engine.state().incidents.len(),
        2,
        "other service, other incident"
    );
    assert_eq!(s.incident(1).members.len(), 2);
}

#[test]
fn a_group_window_expires_without_activity() {
    let mut s = Scenario::given();
    s.alert(&alert("HighLatency", "payments", T0));
    // Exactly at the window edge still joins ...
    s.alert(&alert("ErrorRate", "payments", T0 + 10 * MIN));
    assert_eq!(s.engine.state().incidents.len(), 1);
    // ... and activity extends the window; past it a new incident opens.
    let facts = s.alert(&alert("DiskFull", "payments", T0 + 20 * MIN + 1));
    assert_eq!(facts[1].kind(), "incident_opened");
    assert_eq!(s.engine.state().incidents.len(), 2);
}

#[test]
fn incidents_auto_resolve_after_the_hold_down() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    let b = alert("ErrorRate", "payments", T0);
    s.when(&[Input::Alert(&a), Input::Alert(&b)]);
    s.alert(&resolved(a.clone(), T0 + MIN));
    assert!(s.tick(T0 + 20 * MIN).is_empty(), "one member still fires");
    s.alert(&resolved(b.clone(), T0 + 2 * MIN));
    assert!(s.tick(T0 + 7 * MIN - 1).is_empty(), "hold-down not over");
    assert_eq!(s.engine.next_deadline(), Some(T0 + 7 * MIN));
    let facts = s.tick(T0 + 7 * MIN);
    assert_eq!(kinds(&facts), ["incident_resolved"]);
    assert_eq!(s.engine.next_deadline(), None);
    assert!(matches!(&facts[0], Fact::IncidentResolved { by, .. } if by == "incidentd"));
    assert_eq!(s.incident(1).state, IncidentState::Resolved);
    assert!(s.tick(T0 + 60 * MIN).is_empty(), "resolves once");
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn a_member_refiring_within_the_reopen_window_reopens() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    s.alert(&a);
    s.alert(&resolved(a.clone(), T0 + MIN));
    s.tick(T0 + 6 * MIN);
    assert_eq!(s.incident(1).state, IncidentState::Resolved);

    let facts = s.alert(&alert("HighLatency", "payments", T0 + 20 * MIN));
    assert_eq!(kinds(&facts), ["incident_reopened", "alert_refired"]);
    assert_eq!(s.incident(1).state, IncidentState::Open);
    assert_eq!(s.count(&a), 2);

    // Resolved again, then refiring long after: a fresh incident, the old one stays closed.
    s.alert(&resolved(a.clone(), T0 + 21 * MIN));
    s.tick(T0 + 26 * MIN);
    assert_eq!(s.incident(1).state, IncidentState::Resolved);
    let facts = s.alert(&alert("HighLatency", "payments", T0 + 90 * MIN));
    assert_eq!(facts[0].kind(), "alert_received");
    assert_eq!(facts[1].kind(), "incident_opened");
    assert_eq!(s.incident(1).state, IncidentState::Resolved);
    assert_eq!(s.incident(2).state, IncidentState::Open);
    assert_eq!(s.count(&a), 1, "a new life starts counting again");
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn firing_alerts_time_out_at_ends_at_unless_resent() {
    let mut s = Scenario::given();
    let mut a = alert("TargetDown", "payments", T0);
    a.ends_at = Some(T0 + 5 * MIN);
    s.alert(&a);
    // A re-send extends the timeout.
    let mut again = alert("TargetDown", "payments", T0 + 4 * MIN);
    again.ends_at = Some(T0 + 9 * MIN);
    s.alert(&again);
    assert!(s.tick(T0 + 6 * MIN).is_empty());
    let facts = s.tick(T0 + 9 * MIN);
    assert_eq!(kinds(&facts), ["alert_resolved"]);
    assert_eq!(
        s.engine.state().alerts[&a.fingerprint].status,
        Status::Resolved
    );
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn operators_acknowledge_and_resolve() {
    let mut s = Scenario::given();
    s.alert(&alert("HighLatency", "payments", T0));
    let mut out = Vec::new();
    let ack = |id| Input::Acknowledge {
        now: T0 + MIN,
        incident: IncidentId(id),
        by: "ana",
        comment: Some("looking"),
    };
    assert_eq!(
        s.engine.handle(ack(9), &mut out),
        Err(CommandError::NotFound(IncidentId(9)))
    );
    s.engine.handle(ack(1), &mut out).expect("ack");
    assert_eq!(kinds(&out), ["incident_acknowledged"]);
    s.engine
        .handle(ack(1), &mut out)
        .expect("second ack is a no-op");
    assert_eq!(out.len(), 1);
    assert_eq!(s.incident(1).state, IncidentState::Acknowledged);

    let resolve = Input::Resolve {
        now: T0 + 2 * MIN,
        incident: IncidentId(1),
        by: "ana",
        comment: None,
    };
    s.engine.handle(resolve, &mut out).expect("resolve");
    assert_eq!(
        s.engine.handle(resolve, &mut out),
        Err(CommandError::AlreadyResolved(IncidentId(1)))
    );
    assert_eq!(
        s.engine.handle(ack(1), &mut out),
        Err(CommandError::AlreadyResolved(IncidentId(1)))
    );
    // A still-firing member re-sent does not reopen a manually resolved incident.
    assert_eq!(
        kinds(&s.alert(&alert("HighLatency", "payments", T0 + 3 * MIN))),
        ["alert_repeated"]
    );
    assert_eq!(s.incident(1).state, IncidentState::Resolved);
}

#[test]
fn a_more_severe_alert_raises_the_priority() {
    let mut s = Scenario::given();
    s.alert(&alert("HighLatency", "payments", T0));
    assert_eq!(s.incident(1).priority, Priority::P4);
    let facts = s.alert(&severe(
        alert("ErrorRate", "payments", T0),
        Severity::Critical,
    ));
    assert_eq!(facts.last().map(Fact::kind), Some("priority_changed"));
    assert_eq!(s.incident(1).priority, Priority::P2);
    // A milder alert later does not lower it.
    s.alert(&alert("QueueDepth", "payments", T0));
    assert_eq!(s.incident(1).priority, Priority::P2);
}

#[test]
fn severity_changes_are_not_coalesced_away() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    s.alert(&a);
    let crit = severe(alert("HighLatency", "payments", T0 + 1), Severity::Critical);
    let warn = alert("HighLatency", "payments", T0 + 2);
    s.when(&[
        Input::Alert(&crit),
        Input::Alert(&warn),
        Input::Alert(&warn),
    ]);
    assert_eq!(s.incident(1).max_severity, Severity::Critical);
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn rules_are_recorded_when_they_change() {
    let mut engine = Engine::new(rules());
    let mut out = Vec::new();
    engine.load_rules(rules(), T0, &mut out);
    assert_eq!(kinds(&out), ["rules_loaded"]);
    engine.load_rules(rules(), T0, &mut out);
    assert_eq!(out.len(), 1, "same content, no new fact");
    assert_eq!(engine.state().rules_version, 1);
}

#[test]
fn resolved_alerts_never_seen_firing_are_kept_but_open_nothing() {
    let mut s = Scenario::given();
    let facts = s.alert(&resolved(alert("HighLatency", "payments", T0), T0));
    assert_eq!(kinds(&facts), ["alert_received"]);
    assert!(s.engine.state().incidents.is_empty());
}
