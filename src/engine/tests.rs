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
        self.engine
            .state()
            .alerts
            .get(&a.fingerprint)
            .expect("alert")
            .count
    }

    /// Replays the recorded facts (through the on-disk encoding) into a fresh engine.
    fn replayed(&self) -> State {
        let mut fresh = Engine::new(rules());
        let mut buf = Vec::new();
        for fact in &self.log {
            encode_record(fact, &mut buf).expect("encode");
            fresh.apply(&decode_record(&buf).expect("decode"));
        }
        assert!(self.engine.ci_bits_consistent() && fresh.ci_bits_consistent());
        assert!(Engine::restore(rules(), fresh.state().clone()).ci_bits_consistent());
        // A snapshot does not carry the closing candidates: restoring rebuilds them.
        let mut bytes = Vec::new();
        crate::engine::snapshot_codec::write_state(fresh.state(), &mut bytes).expect("encode");
        let decoded = crate::engine::snapshot_codec::read_state(&bytes).expect("decode");
        assert_eq!(Engine::restore(rules(), decoded).state(), fresh.state());
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

const DAY: Millis = 24 * 60 * MIN;

/// A crash can tear a commit group after an alert's `alert_received`: the log then holds the
/// alert without the incident it joined. Its next repeat correlates it, so it is not left
/// out of every incident for as long as it fires.
#[test]
fn a_firing_alert_left_without_its_incident_by_a_torn_log_joins_on_its_next_repeat() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    let received = Fact::AlertReceived {
        at: T0,
        alert: a.clone(),
    };
    s.engine.apply(&received);
    s.log.push(received);
    let facts = s.alert(&alert("HighLatency", "payments", T0 + MIN));
    assert_eq!(
        kinds(&facts)[..3],
        ["alert_repeated", "incident_opened", "alert_attached"]
    );
    assert_eq!(
        s.engine
            .state()
            .alerts
            .get(&a.fingerprint)
            .and_then(|x| x.incident),
        Some(IncidentId(1))
    );
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn resolved_incidents_close_after_a_quiet_week_and_take_their_alerts_along() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    let b = alert("ErrorRate", "checkout", T0);
    s.when(&[Input::Alert(&a), Input::Alert(&b)]);
    s.alert(&resolved(a.clone(), T0 + MIN));
    s.tick(T0 + 6 * MIN);
    assert_eq!(s.incident(1).state, IncidentState::Resolved);
    assert_eq!(
        s.engine.next_deadline(),
        None,
        "closing is no replay deadline"
    );

    assert!(
        s.tick(T0 + 6 * MIN + 7 * DAY - 1).is_empty(),
        "not a week yet"
    );
    let facts = s.tick(T0 + 6 * MIN + 7 * DAY);
    assert_eq!(kinds(&facts), ["incident_closed"]);
    assert_eq!(facts[0].incident(), Some(IncidentId(1)));
    let state = s.engine.state();
    assert!(state.incidents.get(&IncidentId(1)).is_none());
    assert!(
        state.alerts.get(&a.fingerprint).is_none(),
        "its alert left too"
    );
    assert_eq!(state.incidents.len(), 1, "the open incident stays");
    assert!(state.alerts.get(&b.fingerprint).is_some());
    assert!(
        s.tick(T0 + 30 * DAY).is_empty(),
        "closes once; open ones never"
    );

    // Long past the reopen window, so closing changed nothing: the alert is new again.
    let facts = s.alert(&alert("HighLatency", "payments", T0 + 31 * DAY));
    assert_eq!(
        kinds(&facts)[..3],
        ["alert_received", "incident_opened", "alert_attached"]
    );
    assert_eq!(facts[1].incident(), Some(IncidentId(3)));
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn an_incident_resolved_while_its_alert_fires_closes_only_a_week_after_it_went_quiet() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    s.alert(&a);
    s.when(&[Input::Resolve {
        now: T0 + MIN,
        incident: IncidentId(1),
        by: "alice",
        comment: None,
    }]);
    // The alert keeps repeating for two weeks: its incident must not close under it.
    for day in 1..=14 {
        s.alert(&alert("HighLatency", "payments", T0 + day * DAY));
        assert!(s.tick(T0 + day * DAY + MIN).is_empty(), "day {day}");
    }
    s.alert(&resolved(a.clone(), T0 + 15 * DAY));
    assert!(s.tick(T0 + 22 * DAY - 1).is_empty());
    assert_eq!(kinds(&s.tick(T0 + 22 * DAY)), ["incident_closed"]);
    assert!(s.engine.state().alerts.is_empty());
    assert_eq!(s.replayed(), *s.engine.state());
}

#[test]
fn closing_waits_for_a_reopened_incident_to_resolve_again() {
    let mut s = Scenario::given();
    let a = alert("HighLatency", "payments", T0);
    s.alert(&a);
    s.alert(&resolved(a.clone(), T0 + MIN));
    s.tick(T0 + 6 * MIN);
    s.alert(&alert("HighLatency", "payments", T0 + 20 * MIN));
    assert_eq!(s.incident(1).state, IncidentState::Open);
    assert!(s.tick(T0 + 10 * DAY).is_empty(), "open again: never closes");
    s.alert(&resolved(a.clone(), T0 + 10 * DAY));
    s.tick(T0 + 10 * DAY + 5 * MIN);
    assert!(s.tick(T0 + 17 * DAY).is_empty());
    assert_eq!(kinds(&s.tick(T0 + 17 * DAY + 5 * MIN)), ["incident_closed"]);
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
        s.engine
            .state()
            .alerts
            .get(&a.fingerprint)
            .expect("alert")
            .status,
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
fn operators_comment_in_any_state_without_changing_it() {
    let mut s = Scenario::given();
    s.alert(&alert("HighLatency", "payments", T0));
    let comment = |id, now| Input::Comment {
        now,
        incident: IncidentId(id),
        actor: "ana",
        text: "checking the switch",
    };
    let mut out = Vec::new();
    assert_eq!(
        s.engine.handle(comment(9, T0), &mut out),
        Err(CommandError::NotFound(IncidentId(9)))
    );
    assert!(out.is_empty());
    let before = s.incident(1).clone();
    // Engine time never moves backwards: a comment stamped earlier is recorded at `now`.
    let facts = s.when(&[comment(1, T0 - MIN)]);
    assert_eq!(
        facts,
        [Fact::IncidentCommented {
            at: T0,
            incident: IncidentId(1),
            actor: "ana".into(),
            text: "checking the switch".into(),
        }]
    );
    assert_eq!(
        *s.incident(1),
        before,
        "a comment changes no incident state"
    );
    s.when(&[Input::Resolve {
        now: T0 + MIN,
        incident: IncidentId(1),
        by: "ana",
        comment: None,
    }]);
    assert_eq!(
        kinds(&s.when(&[comment(1, T0 + 2 * MIN)])),
        ["incident_commented"],
        "resolved incidents still take notes"
    );
    assert_eq!(s.replayed(), *s.engine.state());
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

mod topology {
    //! Topology correlation on a small data centre:
    //! ```text
    //! svc-pay(critical) -depends_on-> app-pay -runs_on-> vm-1 -hosted_on-> h1 -connected_to-> tor-1
    //! svc-web(low)      -depends_on-> app-web -runs_on-> vm-2 -hosted_on-> h2 -connected_to-> tor-1
    //!                                                            h3 -connected_to-> tor-2
    //! h1..h3 -powered_by-> pdu-1;  vm-1, vm-2 -depends_on-> ds-1 -hosted_on-> san (hub: 60 datastores)
    //! ```
    use super::*;
    use crate::cmdb::{CmdbOp, CmdbSpec, RelationSpec};

    fn cmdb() -> CmdbSpec {
        let mut cis = vec![
            serde_json::json!({"id": "svc-pay", "type": "service", "criticality": "critical"}),
            serde_json::json!({"id": "svc-web", "type": "service", "criticality": "low"}),
            serde_json::json!({"id": "app-pay", "type": "application", "owner_group": "payments"}),
            serde_json::json!({"id": "app-web", "type": "application"}),
            serde_json::json!({"id": "vm-1", "type": "vm"}),
            serde_json::json!({"id": "vm-2", "type": "vm"}),
            serde_json::json!({"id": "h1", "type": "host", "attrs": {"hostname": "h1.dc1.example.net"}}),
            serde_json::json!({"id": "h2", "type": "host"}),
            serde_json::json!({"id": "h3", "type": "host"}),
            serde_json::json!({"id": "tor-1", "type": "switch", "owner_group": "network"}),
            serde_json::json!({"id": "tor-2", "type": "switch"}),
            serde_json::json!({"id": "pdu-1", "type": "pdu"}),
            serde_json::json!({"id": "ds-1", "type": "datastore"}),
            serde_json::json!({"id": "san", "type": "storage_array"}),
        ];
        let mut rels = vec![
            ("svc-pay", "depends_on", "app-pay"),
            ("svc-web", "depends_on", "app-web"),
            ("app-pay", "runs_on", "vm-1"),
            ("app-web", "runs_on", "vm-2"),
            ("vm-1", "hosted_on", "h1"),
            ("vm-2", "hosted_on", "h2"),
            ("h1", "connected_to", "tor-1"),
            ("h2", "connected_to", "tor-1"),
            ("h3", "connected_to", "tor-2"),
            ("h1", "powered_by", "pdu-1"),
            ("h2", "powered_by", "pdu-1"),
            ("h3", "powered_by", "pdu-1"),
            ("vm-1", "depends_on", "ds-1"),
            ("vm-2", "depends_on", "ds-1"),
            ("ds-1", "hosted_on", "san"),
        ]
        .into_iter()
        .map(|(f, t, to)| serde_json::json!({"from": f, "type": t, "to": to}))
        .collect::<Vec<_>>();
        for i in 0..60 {
            cis.push(serde_json::json!({"id": format!("ds-x{i}"), "type": "datastore"}));
            rels.push(
                serde_json::json!({"from": format!("ds-x{i}"), "type": "hosted_on", "to": "san"}),
            );
        }
        let doc = serde_json::json!({"cis": cis, "relations": rels});
        CmdbSpec::from_json(&doc.to_string()).expect("test cmdb")
    }

    pub(super) fn cmdb_for_properties() -> CmdbSpec {
        cmdb()
    }

    pub(super) fn default_rules() -> Rules {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.toml"))
                .expect("default rules");
        Rules::parse_files(&[("default.toml".to_string(), text)]).expect("rules")
    }

    pub(super) fn on_ci(name: &str, ci: &str, at: Millis) -> Alert {
        on(name, ci, at)
    }

    fn engine(extra_rules: &str) -> Scenario {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.toml"))
                .expect("default rules");
        let mut files = vec![("default.toml".to_string(), text)];
        if !extra_rules.is_empty() {
            files.push(("extra.toml".to_string(), extra_rules.to_string()));
        }
        let mut engine = Engine::new(Rules::parse_files(&files).expect("rules"));
        let mut out = Vec::new();
        engine.load_cmdb(&cmdb(), "test", T0, &mut out);
        Scenario { engine, log: out }
    }

    fn on(name: &str, ci: &str, at: Millis) -> Alert {
        let labels = BTreeMap::new();
        Alert {
            fingerprint: Fingerprint::native("mon", name, Some(ci), &labels, None),
            source: "mon".into(),
            name: name.into(),
            ci: Some(ci.into()),
            severity: Severity::Critical,
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

    fn incident_of(s: &Scenario, a: &Alert) -> IncidentId {
        s.engine
            .state()
            .alerts
            .get(&a.fingerprint)
            .expect("alert")
            .incident
            .expect("alert is in an incident")
    }

    fn root_name(s: &Scenario, id: IncidentId) -> String {
        let inc = &s.engine.state().incidents[&id];
        s.engine
            .state()
            .alerts
            .get(&inc.root.expect("root"))
            .expect("alert")
            .name
            .to_string()
    }

    fn reason_of(facts: &[Fact], a: &Alert) -> String {
        facts
            .iter()
            .find_map(|f| match f {
                Fact::AlertAttached {
                    fingerprint,
                    reason,
                    ..
                } if *fingerprint == a.fingerprint => Some(reason.clone()),
                _ => None,
            })
            .expect("attached")
    }

    #[test]
    fn a_cause_is_preferred_over_a_sibling_and_the_reason_says_so() {
        let mut s = engine("");
        let h1 = on("HostUnreachable", "h1", T0);
        s.alert(&h1);
        // INC-1 has gone quiet past the window, so the switch opens its own incident ...
        let tor = on("SwitchDown", "tor-1", T0 + 16 * MIN);
        s.alert(&tor);
        // ... then h1 repeats (INC-1 active again) and its sibling h2 fails.
        let mut again = h1.clone();
        again.received_at = T0 + 16 * MIN + 1_000;
        s.alert(&again);
        let h2 = on("HostUnreachable", "h2", T0 + 16 * MIN + 2_000);
        let facts = s.alert(&h2);
        assert_eq!(
            reason_of(&facts, &h2),
            "rule reachability: h2 -connected_to-> tor-1 (alerting in INC-000002, 1 hop); \
             preferred over INC-000001 (less specific)"
        );
        assert_eq!(s.replayed(), *s.engine.state());
    }

    #[test]
    fn symptoms_first_then_the_switch_merges_them_with_the_switch_as_root() {
        let mut s = engine("");
        let h1 = on("HostUnreachable", "h1", T0);
        let h2 = on("HostUnreachable", "h2", T0 + 1_000);
        let app = on("ErrorRate", "app-pay", T0 + 2_000);
        s.alert(&h1);
        let facts = s.alert(&h2);
        assert_eq!(
            incident_of(&s, &h2),
            incident_of(&s, &h1),
            "siblings on one switch"
        );
        assert!(
            reason_of(&facts, &h2).contains("h2 -connected_to-> tor-1 <-connected_to- h1"),
            "{}",
            reason_of(&facts, &h2)
        );
        s.alert(&app);
        assert_ne!(
            incident_of(&s, &app),
            incident_of(&s, &h1),
            "apps do not follow hosted_on"
        );

        let tor = on("SwitchDown", "tor-1", T0 + 3_000);
        let facts = s.alert(&tor);
        let merged: Vec<_> = facts
            .iter()
            .filter(|f| f.kind() == "incidents_merged")
            .collect();
        assert_eq!(merged.len(), 1, "{facts:?}");
        let id = incident_of(&s, &tor);
        for a in [&h1, &h2, &app] {
            assert_eq!(incident_of(&s, a), id);
        }
        assert_eq!(root_name(&s, id), "SwitchDown");
        let inc = &s.engine.state().incidents[&id];
        assert_eq!(inc.services.len(), 2, "svc-pay and svc-web");
        assert_eq!(
            inc.priority,
            Priority::P1,
            "critical service x critical alert"
        );
        assert_eq!(s.replayed(), *s.engine.state());
    }

    #[test]
    fn a_symptom_joins_its_upstream_cause_and_impact_is_recorded() {
        let mut s = engine("");
        let db = on("DatabaseDown", "vm-1", T0);
        let opened = s.alert(&db);
        assert!(opened.iter().any(|f| matches!(f,
            Fact::ImpactChanged { services, .. } if services == &["svc-pay".to_string()])));
        let app = on("ErrorRate", "app-pay", T0 + 1_000);
        let facts = s.alert(&app);
        assert_eq!(incident_of(&s, &app), incident_of(&s, &db));
        assert!(
            reason_of(&facts, &app)
                .contains("app-pay -runs_on-> vm-1 (alerting in INC-000001, 1 hop)"),
            "{}",
            reason_of(&facts, &app)
        );
        let inc = &s.engine.state().incidents[&incident_of(&s, &db)];
        let services: Vec<&str> = inc
            .services
            .iter()
            .filter_map(|&i| s.engine.state().topology.ci(i).map(|c| c.id.as_str()))
            .collect();
        assert_eq!(services, ["svc-pay"]);
        assert_eq!(
            inc.priority,
            Priority::P1,
            "critical service x critical alert"
        );
        assert!(
            !facts.iter().any(|f| f.kind() == "impact_changed"),
            "nothing new hit"
        );
        assert_eq!(root_name(&s, incident_of(&s, &db)), "DatabaseDown");
    }

    #[test]
    fn hubs_are_not_walked_through_unless_they_alert() {
        let mut s = engine("");
        // vm-1 and vm-2 share ds-1 (not a hub): storage symptoms correlate as siblings.
        let v1 = on("IOLatency", "vm-1", T0);
        let v2 = on("IOLatency", "vm-2", T0);
        s.alert(&v1);
        s.alert(&v2);
        assert_eq!(incident_of(&s, &v1), incident_of(&s, &v2));
        // Two datastores on the SAN (a hub with 61 dependents) do not join through it ...
        let x1 = on("DatastoreLatency", "ds-x1", T0);
        let x2 = on("DatastoreLatency", "ds-x2", T0);
        s.alert(&x1);
        s.alert(&x2);
        assert_ne!(incident_of(&s, &x1), incident_of(&s, &x2));
        // ... but the SAN alerting itself is upstream of both and merges them.
        let san = on("SANDegraded", "san", T0 + 1_000);
        s.alert(&san);
        assert_eq!(incident_of(&s, &x1), incident_of(&s, &san));
        assert_eq!(incident_of(&s, &x2), incident_of(&s, &san));
        assert_eq!(root_name(&s, incident_of(&s, &san)), "SANDegraded");
        assert_eq!(s.replayed(), *s.engine.state());
    }

    #[test]
    fn a_shared_symptom_attaches_to_one_incident_and_merges_nothing() {
        let mut s = engine("");
        // Two unrelated outages upstream of app-pay's service ...
        let vm = on("VMDown", "vm-1", T0);
        let web = on("ErrorRate", "app-web", T0);
        s.alert(&vm);
        s.alert(&web);
        // ... an SLO alert on a service that depends on only one of them joins that one.
        let slo = on("SLOBurn", "svc-pay", T0 + 1_000);
        s.alert(&slo);
        assert_eq!(incident_of(&s, &slo), incident_of(&s, &vm));
        assert_ne!(
            incident_of(&s, &web),
            incident_of(&s, &vm),
            "no merge through a symptom"
        );
    }

    #[test]
    fn unrelated_nearby_alerts_stay_apart() {
        let mut s = engine("");
        let h1 = on("HostUnreachable", "h1", T0);
        let h3 = on("HostUnreachable", "h3", T0); // other switch: only the PDU is shared
        let disk = on("DiskFull", "h2", T0); // same rack, not a topology class
        s.alert(&h1);
        s.alert(&disk);
        assert_ne!(incident_of(&s, &disk), incident_of(&s, &h1));
        // h3 shares pdu-1 with h1 as a direct parent: siblings through power.
        s.alert(&h3);
        assert_eq!(incident_of(&s, &h3), incident_of(&s, &h1));
    }

    #[test]
    fn maintenance_suppresses_and_records() {
        let mut s = engine(
            "[[maintenance]]\nname = \"h1 firmware\"\ncis = [\"h1\"]\ninclude_dependents = true\nstart = \"2026-11-18T00:00:00Z\"\nend = \"2026-11-18T12:00:00Z\"\n",
        );
        let h1 = on("HostUnreachable", "h1", T0);
        let vm = on("VMDown", "vm-1", T0);
        let h2 = on("HostUnreachable", "h2", T0);
        let facts = s.alert(&h1);
        assert_eq!(kinds(&facts), ["alert_received", "alert_suppressed"]);
        s.alert(&vm);
        assert!(
            s.engine
                .state()
                .alerts
                .get(&vm.fingerprint)
                .expect("alert")
                .suppressed,
            "dependent of h1"
        );
        s.alert(&h2);
        assert!(s.engine.state().incidents.len() == 1);
        // After the window a re-sent alert correlates.
        let later = on("HostUnreachable", "h1", 1_795_000_000_000 + 12 * 3_600_000);
        let facts = s.alert(&later);
        assert!(
            facts.iter().any(|f| f.kind() == "alert_attached"),
            "{facts:?}"
        );
        assert_eq!(s.replayed(), *s.engine.state());
    }

    /// A suppressed alert belongs to no incident: once resolved for `close_after` it is
    /// forgotten on its own, so maintenance windows do not pile up alerts forever.
    #[test]
    fn a_resolved_suppressed_alert_is_forgotten_after_close_after() {
        let mut s = engine(
            "[[maintenance]]\nname = \"h1 firmware\"\ncis = [\"h1\"]\nstart = \"2026-11-18T00:00:00Z\"\nend = \"2026-11-18T12:00:00Z\"\n",
        );
        let h1 = on("HostUnreachable", "h1", T0);
        assert_eq!(kinds(&s.alert(&h1)), ["alert_received", "alert_suppressed"]);
        s.alert(&resolved(h1.clone(), T0 + MIN));
        assert!(s.tick(T0 + MIN + 7 * DAY - 1).is_empty(), "not a week yet");
        let facts = s.tick(T0 + MIN + 7 * DAY);
        assert_eq!(kinds(&facts), ["alert_forgotten"]);
        assert_eq!(facts[0].fingerprint(), Some(h1.fingerprint));
        assert!(s.engine.state().alerts.is_empty());
        assert!(s.tick(T0 + 30 * DAY).is_empty(), "forgotten once");
        assert_eq!(s.replayed(), *s.engine.state());
    }

    #[test]
    fn a_flapping_alert_is_flagged_in_one_incident() {
        let mut s = engine("");
        let mut t = T0;
        for _ in 0..6 {
            s.alert(&on("LinkDown", "h1", t));
            s.alert(&resolved(on("LinkDown", "h1", t), t + 30_000));
            t += 60_000;
        }
        let a = on("LinkDown", "h1", t);
        s.alert(&a);
        assert!(
            s.engine
                .state()
                .alerts
                .get(&a.fingerprint)
                .expect("alert")
                .flapping
        );
        assert_eq!(s.engine.state().incidents.len(), 1);
        assert_eq!(s.count(&a), 7);
    }

    #[test]
    fn alerts_find_their_ci_by_hostname_and_cmdb_changes_apply_mid_stream() {
        let mut s = engine("");
        let mut by_host = on("HostUnreachable", "x", T0);
        by_host.ci = None;
        by_host
            .labels
            .insert("instance".into(), "h1.dc1.example.net:9100".into());
        by_host.fingerprint =
            Fingerprint::native("mon", "HostUnreachable", None, &by_host.labels, None);
        let facts = s.alert(&by_host);
        assert!(
            matches!(&facts[0], Fact::AlertReceived { alert, .. } if alert.ci.as_deref() == Some("h1"))
        );

        // h3 moves from tor-2 to tor-1: now a sibling of h1.
        let ops = [
            CmdbOp::RemoveRelation {
                relation: RelationSpec {
                    from: "h3".into(),
                    kind: crate::cmdb::Relation::ConnectedTo,
                    to: "tor-2".into(),
                },
            },
            CmdbOp::AddRelation {
                relation: RelationSpec {
                    from: "h3".into(),
                    kind: crate::cmdb::Relation::ConnectedTo,
                    to: "tor-1".into(),
                },
            },
            CmdbOp::RemoveRelation {
                relation: RelationSpec {
                    from: "h3".into(),
                    kind: crate::cmdb::Relation::PoweredBy,
                    to: "pdu-1".into(),
                },
            },
        ];
        let facts = s.when(&[Input::Cmdb {
            now: T0 + 1,
            source: "test",
            ops: &ops,
        }]);
        assert_eq!(kinds(&facts), ["cmdb_changed"]);
        let h3 = on("HostUnreachable", "h3", T0 + 2);
        let facts = s.alert(&h3);
        assert!(
            reason_of(&facts, &h3).contains("h3 -connected_to-> tor-1"),
            "{}",
            reason_of(&facts, &h3)
        );
        let bad = [CmdbOp::AddRelation {
            relation: RelationSpec {
                from: "h3".into(),
                kind: crate::cmdb::Relation::ConnectedTo,
                to: "nowhere".into(),
            },
        }];
        let mut out = Vec::new();
        assert!(matches!(
            s.engine.handle(
                Input::Cmdb {
                    now: T0 + 3,
                    source: "test",
                    ops: &bad
                },
                &mut out
            ),
            Err(CommandError::InvalidCmdb(_))
        ));
        assert!(out.is_empty());
        assert_eq!(s.replayed(), *s.engine.state());
    }

    /// The engine state's snapshot encodings (binary and JSON), piece by piece in a fixed
    /// order, equal `fixtures/engine/state.golden`, written before the state's types were
    /// made cheaper to clone: snapshots written by older builds must stay readable and new
    /// ones byte-identical. Hash maps are written sorted here (their own order is seeded per
    /// process); the whole state's encoded length is checked too.
    /// `INCIDENTD_BLESS=1` rewrites the file; review the diff.
    #[test]
    fn state_encodings_match_the_golden_file() {
        use crate::engine::snapshot_codec::{to_vec, write_state};
        let mut s = engine("");
        // Symptoms, then their switch: merges and a root change.
        for (name, ci, at) in [
            ("HostUnreachable", "h1", T0),
            ("HostUnreachable", "h2", T0 + 1_000),
            ("ErrorRate", "app-pay", T0 + 2_000),
            ("SwitchDown", "tor-1", T0 + 3_000),
            ("IOLatency", "vm-2", T0 + 4_000),
            // Past the window: a second open incident on h1, so one CI indexes two.
            ("LinkDown", "h1", T0 + 20 * MIN),
            ("DiskFull", "h3", T0 + 20 * MIN),
        ] {
            s.alert(&on(name, ci, at));
        }
        s.alert(&alert("Latency", "checkout", T0 + 20 * MIN));
        s.alert(&resolved(on("DiskFull", "h3", T0), T0 + 21 * MIN));
        let state = s.engine.state();
        assert!(
            state.by_ci.values().any(|ids| ids.as_slice().len() > 1),
            "a CI with two incidents: {:?}",
            state.by_ci
        );

        let mut text = String::new();
        let mut piece = |name: &str, bin: Vec<u8>, json: String| {
            text.push_str(name);
            text.push_str(" bin ");
            for b in bin {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
            text.push_str(name);
            text.push_str(" json ");
            text.push_str(&json);
            text.push('\n');
        };
        fn json<T: serde::Serialize>(v: &T) -> String {
            serde_json::to_string(v).expect("json")
        }
        for (id, inc) in &state.incidents {
            piece(
                &format!("incident {id}"),
                to_vec(inc).expect("bin"),
                json(inc),
            );
        }
        let mut alerts: Vec<_> = state.alerts.iter().collect();
        alerts.sort_by_key(|(fp, _)| **fp);
        for (fp, a) in alerts {
            piece(&format!("alert {fp}"), to_vec(a).expect("bin"), json(a));
        }
        let mut groups: Vec<_> = state.groups.iter().collect();
        groups.sort();
        for (key, id) in groups {
            let entry = (key, id);
            piece(
                &format!("group {key}"),
                to_vec(&entry).expect("bin"),
                json(&entry),
            );
        }
        let mut by_ci: Vec<_> = state.by_ci.iter().collect();
        by_ci.sort_by_key(|(ci, _)| **ci);
        for (ci, ids) in by_ci {
            let entry = (ci, ids);
            piece(
                &format!("by_ci {ci}"),
                to_vec(&entry).expect("bin"),
                json(&entry),
            );
        }
        let mut whole = Vec::new();
        write_state(state, &mut whole).expect("state");
        let whole_json = serde_json::to_string(state).expect("json");
        text.push_str(&format!(
            "state bin {} bytes, json {} bytes\n",
            whole.len(),
            whole_json.len()
        ));

        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/engine/state.golden");
        if std::env::var_os("INCIDENTD_BLESS").is_some() {
            std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/engine"))
                .expect("fixtures dir");
            std::fs::write(path, &text).expect("write golden");
        }
        let golden = std::fs::read_to_string(path).expect("golden file");
        for (line, (got, want)) in text.lines().zip(golden.lines()).enumerate() {
            assert_eq!(got, want, "line {}", line + 1);
        }
        assert_eq!(text.lines().count(), golden.lines().count());
        assert_eq!(
            crate::engine::snapshot_codec::read_state(&whole).expect("decode"),
            *state
        );
    }
}

mod properties {
    //! For random sequences of alerts, resolutions, ticks, operator actions and CMDB changes,
    //! in random batch sizes, replaying the recorded facts (through the on-disk encoding)
    //! rebuilds exactly the live state.
    use proptest::prelude::*;

    use super::topology::{cmdb_for_properties, on_ci};
    use super::*;
    use crate::cmdb::{CmdbOp, RelationSpec};

    // Few CIs and names, so the same alerts recur within batches (coalescing, refires).
    const CIS: [&str; 5] = ["h1", "h2", "vm-1", "tor-1", "app-pay"];
    const NAMES: [&str; 4] = ["HostUnreachable", "SwitchDown", "ErrorRate", "DiskFull"];

    #[derive(Clone, Debug)]
    enum Step {
        Fire {
            ci: usize,
            name: usize,
            severity: u8,
            timeout: bool,
        },
        Resolve {
            ci: usize,
            name: usize,
        },
        Tick,
        /// A quiet spell long enough for resolved incidents to close.
        Later,
        Ack(u64),
        Close(u64),
        Comment(u64),
        Recable {
            host: usize,
            tor: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0..CIS.len(), 0..NAMES.len(), 0..5u8, any::<bool>())
                .prop_map(|(ci, name, severity, timeout)| Step::Fire { ci, name, severity, timeout }),
            3 => (0..CIS.len(), 0..NAMES.len()).prop_map(|(ci, name)| Step::Resolve { ci, name }),
            1 => Just(Step::Tick),
            1 => Just(Step::Later),
            1 => (1..6u64).prop_map(Step::Ack),
            1 => (1..6u64).prop_map(Step::Close),
            1 => (1..6u64).prop_map(Step::Comment),
            1 => (0..3usize, any::<bool>()).prop_map(|(host, tor)| Step::Recable { host, tor }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn replay_equals_live(steps in prop::collection::vec((step(), 0..120_000i64, 1..8usize), 1..150), cut in 0.0..1.0f64) {
            // Incidents close as soon as the rules allow, so closing meets every other fact.
            let mut rules = super::topology::default_rules();
            rules.lifecycle.close_after = Some(rules.lifecycle.reopen_window);
            let mut s = Scenario {
                engine: Engine::new(rules),
                log: Vec::new(),
            };
            let mut out = Vec::new();
            s.engine.load_cmdb(&cmdb_for_properties(), "test", T0, &mut out);
            s.log.extend(out);
            let mut now = T0;
            let mut batch: Vec<Alert> = Vec::new();
            let mut pending = 0;
            for (step, gap, batch_size) in steps {
                now += gap;
                match step {
                    Step::Fire { ci, name, severity, timeout } => {
                        let mut a = on_ci(NAMES[name], CIS[ci], now);
                        a.severity = [Severity::Info, Severity::Warning, Severity::Minor, Severity::Major, Severity::Critical][severity as usize];
                        a.ends_at = timeout.then_some(now + 5 * MIN);
                        batch.push(a);
                    }
                    Step::Resolve { ci, name } => batch.push(resolved(on_ci(NAMES[name], CIS[ci], now), now)),
                    Step::Tick => { s.tick(now); }
                    Step::Later => {
                        now += 40 * MIN;
                        s.tick(now);
                    }
                    Step::Ack(id) => {
                        let input = Input::Acknowledge { now, incident: IncidentId(id), by: "p", comment: None };
                        let facts = s.when(&[input]);
                        let _ = facts;
                    }
                    Step::Close(id) => {
                        let input = Input::Resolve { now, incident: IncidentId(id), by: "p", comment: Some("done") };
                        s.when(&[input]);
                    }
                    Step::Comment(id) => {
                        let input = Input::Comment { now, incident: IncidentId(id), actor: "p", text: "note" };
                        s.when(&[input]);
                    }
                    Step::Recable { host, tor } => {
                        let h = ["h1", "h2", "h3"][host];
                        let (old, new) = if tor { ("tor-1", "tor-2") } else { ("tor-2", "tor-1") };
                        let rel = |to: &str| RelationSpec { from: h.into(), kind: crate::cmdb::Relation::ConnectedTo, to: to.into() };
                        let ops = [CmdbOp::RemoveRelation { relation: rel(old) }, CmdbOp::AddRelation { relation: rel(new) }];
                        // Refused (the relation is not there) or applied: either way replayable.
                        s.when(&[Input::Cmdb { now, source: "test", ops: &ops }]);
                    }
                }
                pending += 1;
                if pending >= batch_size && !batch.is_empty() {
                    let inputs: Vec<Input<'_>> = batch.iter().map(Input::Alert).collect();
                    s.when(&inputs);
                    batch.clear();
                    pending = 0;
                }
            }
            let inputs: Vec<Input<'_>> = batch.iter().map(Input::Alert).collect();
            s.when(&inputs);
            prop_assert_eq!(s.replayed(), s.engine.state().clone());

            // Snapshot + tail equals full replay: state up to a random cut, through the
            // snapshot encoding, then the rest of the log.
            let cut = (s.log.len() as f64 * cut) as usize;
            let mut head = Engine::new(super::topology::default_rules());
            for fact in &s.log[..cut] {
                head.apply(fact);
            }
            let json = serde_json::to_string(head.state()).expect("snapshot encodes");
            let state: State = serde_json::from_str(&json).expect("snapshot decodes");
            let mut resumed = Engine::restore(super::topology::default_rules(), state);
            for fact in &s.log[cut..] {
                resumed.apply(fact);
            }
            prop_assert_eq!(resumed.state(), s.engine.state());
        }

        /// The pipeline hands alerts over by value (`handle_alert`, no copy); that must
        /// decide exactly what `handle` decides for a borrowed alert.
        #[test]
        fn owned_alerts_decide_like_borrowed(steps in prop::collection::vec((step(), 0..120_000i64, 1..8usize), 1..150)) {
            let rules = super::topology::default_rules();
            let (mut borrowed, mut owned) = (Engine::new(rules.clone()), Engine::new(rules));
            let (mut a_out, mut b_out) = (Vec::new(), Vec::new());
            borrowed.load_cmdb(&cmdb_for_properties(), "test", T0, &mut a_out);
            owned.load_cmdb(&cmdb_for_properties(), "test", T0, &mut b_out);
            let mut now = T0;
            for (i, (step, gap, batch_size)) in steps.into_iter().enumerate() {
                now += gap;
                let alert = match step {
                    Step::Fire { ci, name, .. } => on_ci(NAMES[name], CIS[ci], now),
                    Step::Resolve { ci, name } => resolved(on_ci(NAMES[name], CIS[ci], now), now),
                    _ => continue,
                };
                if i % batch_size == 0 {
                    borrowed.begin_batch();
                    owned.begin_batch();
                }
                let _ = borrowed.handle(Input::Alert(&alert), &mut a_out);
                owned.handle_alert(alert, &mut b_out);
            }
            prop_assert_eq!(a_out, b_out);
            prop_assert_eq!(borrowed.state(), owned.state());
        }
    }
}

#[test]
fn a_redelivered_message_counts_once_even_beside_its_original() {
    let mut engine = Engine::new(rules());
    let (a, b) = (alert("Disk", "db", T0), alert("Cpu", "web", T0));
    let mut out = Vec::new();
    // Message 5 twice in one chunk (a redelivery after a server restart), then message 6.
    let alerts = vec![a.clone(), a.clone(), b.clone()];
    let handled = engine.handle_messages(alerts, &[(5, 1), (5, 1), (6, 1)], &mut out);
    assert_eq!(handled, 2);
    let received = out
        .iter()
        .filter(|f| matches!(f, Fact::AlertReceived { .. } | Fact::AlertRepeated { .. }))
        .count();
    assert_eq!(received, 2, "{out:?}");
    assert!(
        out.iter()
            .any(|f| matches!(f, Fact::StreamConsumed { seqs, .. } if seqs == &[5, 6])),
        "{out:?}"
    );
    // Later, once recorded, a redelivery is skipped whole and records nothing.
    out.clear();
    assert_eq!(engine.handle_messages(vec![a], &[(5, 1)], &mut out), 0);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn attaching_to_a_recreated_or_shortened_stream_forgets_the_sequences_it_will_reuse() {
    fn attach(engine: &mut Engine, created: u64, last: u64) -> Vec<&'static str> {
        let mut out = Vec::new();
        let input = Input::AttachStream {
            now: T0,
            stream: "ALERTS",
            created,
            last,
        };
        engine.handle(input, &mut out).expect("attach");
        kinds(&out)
    }
    let mut engine = Engine::new(rules());
    assert_eq!(attach(&mut engine, 100, 0), ["stream_attached"]);
    let alerts: Vec<Alert> = (0..11).map(|i| alert(&format!("A{i}"), "db", T0)).collect();
    let messages: Vec<(u64, usize)> = (1..=10).chain([12]).map(|s| (s, 1)).collect();
    let mut out = Vec::new();
    assert_eq!(engine.handle_messages(alerts, &messages, &mut out), 11);

    // The same stream, as long as before: nothing to record.
    assert!(attach(&mut engine, 100, 12).is_empty());
    // The server lost its tail: 9.. will be assigned again, so they are no longer consumed.
    assert_eq!(attach(&mut engine, 100, 8), ["stream_attached"]);
    let consumed = |e: &Engine| {
        (1..=12)
            .filter(|&s| e.state().consumed(s))
            .collect::<Vec<_>>()
    };
    assert_eq!(consumed(&engine), (1..=8).collect::<Vec<_>>());

    // A snapshot keeps the identity: the same stream again records nothing after a restore.
    let mut bytes = Vec::new();
    crate::engine::snapshot_codec::write_state(engine.state(), &mut bytes).expect("encode");
    let decoded = crate::engine::snapshot_codec::read_state(&bytes).expect("decode");
    assert_eq!(&decoded, engine.state());
    let mut restored = Engine::restore(rules(), decoded);
    assert!(attach(&mut restored, 100, 8).is_empty());

    // Deleted and created again: its message 1 is new.
    assert_eq!(attach(&mut restored, 200, 0), ["stream_attached"]);
    assert!(consumed(&restored).is_empty());
    let mut out = Vec::new();
    let again = vec![alert("Fresh", "db", T0)];
    assert_eq!(restored.handle_messages(again, &[(1, 1)], &mut out), 1);
}

#[test]
fn a_snapshot_section_written_before_stream_identities_still_reads() {
    let mut engine = Engine::new(rules());
    let mut out = Vec::new();
    engine.handle_messages(vec![alert("A", "db", T0)], &[(1, 1)], &mut out);
    let bytes = crate::engine::snapshot_codec::to_vec(engine.state()).expect("encode");
    let decoded = crate::engine::snapshot_codec::read_state(&bytes).expect("decode");
    assert!(decoded.consumed(1));
    // Taken to be the stream it was consumed from: its sequences stay consumed.
    let mut restored = Engine::restore(rules(), decoded);
    let input = Input::AttachStream {
        now: T0,
        stream: "ALERTS",
        created: 100,
        last: 1,
    };
    restored.handle(input, &mut out).expect("attach");
    assert!(restored.state().consumed(1));
}
