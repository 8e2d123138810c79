//! The topology picture of one incident (`GET /api/v1/incidents/{id}/topology`): its root
//! cause CI, the CIs its alerts are about, the business services it hits, and just enough of
//! the CMDB between them to show how they connect.
//!
//! Bounded, because a storm incident can hold thousands of CIs and a wall screen can show a
//! few dozen: at most `max_nodes` nodes, each connecting search walks a bounded number of CIs,
//! and the answer says what it left out. The layout is the console's job; this only chooses
//! the nodes and edges, deterministically (alert order, then CMDB load order).

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::Serialize;

use crate::cmdb::{CiIdx, Topology};
use crate::view::IncidentView;

/// Hops a connecting search follows from a CI towards what it depends on.
const MAX_HOPS: u8 = 6;
/// CIs one connecting search may visit.
const MAX_VISITS: usize = 512;

/// Why a node is in the picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The incident's root cause CI.
    Root,
    /// A CI one of the incident's alerts is about.
    Affected,
    /// An impacted business service.
    Service,
    /// A CI on the way between them, not alerting itself.
    Context,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub name: Option<String>,
    pub kind: String,
    pub role: Role,
    /// Member alerts about this CI.
    pub alerts: usize,
}

/// `from` depends on `to` along `relation`, as in the CMDB.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub relation: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Picture {
    pub incident: String,
    pub root: Option<String>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Distinct CMDB CIs the incident's alerts are about (the picture may show fewer).
    pub affected_total: usize,
    pub services_total: usize,
    /// Something was left out to stay within `max_nodes`.
    pub truncated: bool,
}

/// Chooses the nodes and edges of `incident`'s picture, at most `max_nodes` nodes.
pub fn build(incident: &IncidentView, topology: &Topology, max_nodes: usize) -> Picture {
    let max_nodes = max_nodes.max(1);
    let root = incident.root_ci().and_then(|id| topology.index(id));
    // Affected CIs in alert order, with their alert counts.
    let mut alert_counts: HashMap<CiIdx, usize> = HashMap::new();
    let mut affected: Vec<CiIdx> = Vec::new();
    for alert in &incident.alerts {
        let Some(idx) = alert.ci().and_then(|id| topology.index(id)) else {
            continue;
        };
        let n = alert_counts.entry(idx).or_insert(0);
        if *n == 0 && Some(idx) != root {
            affected.push(idx);
        }
        *n += 1;
    }
    let services: Vec<CiIdx> = incident
        .services()
        .filter_map(|id| topology.index(id))
        .collect();
    let (affected_total, services_total) = (affected.len(), services.len());

    // Room for the services and some context; affected CIs take at most two thirds.
    let mut chosen: Vec<(CiIdx, Role)> = Vec::new();
    let mut index: HashMap<CiIdx, usize> = HashMap::new();
    let mut truncated = false;
    let mut add = |ci: CiIdx, role: Role, chosen: &mut Vec<(CiIdx, Role)>| {
        if index.contains_key(&ci) {
            return true;
        }
        if chosen.len() >= max_nodes {
            return false;
        }
        index.insert(ci, chosen.len());
        chosen.push((ci, role));
        true
    };
    if let Some(r) = root {
        add(r, Role::Root, &mut chosen);
    }
    let service_room = services.len().min(max_nodes / 4);
    let affected_room = (max_nodes * 2 / 3).saturating_sub(chosen.len());
    for &ci in affected.iter().take(affected_room) {
        add(ci, Role::Affected, &mut chosen);
    }
    for &ci in services.iter().take(service_room) {
        add(ci, Role::Service, &mut chosen);
    }
    truncated |= affected.len() > affected_room || services.len() > service_room;

    // Connect every chosen CI to the nearest other chosen CI it depends on (shortest path
    // along dependencies), adding the CIs on the way as context while there is room.
    let mut edges: BTreeSet<(CiIdx, CiIdx, &'static str)> = BTreeSet::new();
    let members: Vec<CiIdx> = chosen.iter().map(|&(ci, _)| ci).collect();
    let is_member = |ci: CiIdx| members.contains(&ci);
    for &start in &members {
        for (rel, to) in topology.depends_on(start) {
            if is_member(to) {
                edges.insert((start, to, rel.as_str()));
            }
        }
        let Some(path) = path_to_member(topology, start, &is_member) else {
            continue;
        };
        let mut room = true;
        for &(_, to, _) in &path[..path.len().saturating_sub(1)] {
            room &= add(to, Role::Context, &mut chosen);
        }
        if room {
            edges.extend(path);
        } else {
            truncated = true;
        }
    }

    let nodes = chosen
        .iter()
        .filter_map(|&(ci, role)| {
            let c = topology.ci(ci)?;
            Some(Node {
                id: c.id.clone(),
                name: c.name.clone(),
                kind: c.kind.clone(),
                role,
                alerts: alert_counts.get(&ci).copied().unwrap_or(0),
            })
        })
        .collect();
    let id_of = |ci: CiIdx| topology.ci(ci).map(|c| c.id.clone()).unwrap_or_default();
    let edges = edges
        .into_iter()
        .map(|(from, to, relation)| Edge {
            from: id_of(from),
            to: id_of(to),
            relation,
        })
        .collect();
    Picture {
        incident: incident.id.to_string(),
        root: root.and_then(|r| topology.ci(r)).map(|c| c.id.clone()),
        nodes,
        edges,
        affected_total,
        services_total,
        truncated,
    }
}

/// Shortest dependency path from `start` to another member: its edges `(from, to, relation)`
/// in order, the last one ending at the member. Bounded by `MAX_HOPS` and `MAX_VISITS`.
fn path_to_member(
    topology: &Topology,
    start: CiIdx,
    is_member: &dyn Fn(CiIdx) -> bool,
) -> Option<Vec<(CiIdx, CiIdx, &'static str)>> {
    let mut parent: HashMap<CiIdx, (CiIdx, &'static str)> = HashMap::new();
    let mut queue = VecDeque::from([(start, 0u8)]);
    let mut visits = 0;
    while let Some((v, hops)) = queue.pop_front() {
        if hops >= MAX_HOPS {
            continue;
        }
        for (rel, to) in topology.depends_on(v) {
            if to == start || parent.contains_key(&to) {
                continue;
            }
            parent.insert(to, (v, rel.as_str()));
            if is_member(to) {
                let mut path = Vec::new();
                let mut at = to;
                while let Some(&(from, rel)) = parent.get(&at) {
                    path.push((from, at, rel));
                    if from == start {
                        break;
                    }
                    at = from;
                }
                path.reverse();
                return Some(path);
            }
            visits += 1;
            if visits >= MAX_VISITS {
                return None;
            }
            queue.push_back((to, hops + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdb::CmdbSpec;
    use crate::engine::{Engine, Input};
    use crate::model::{Alert, Fingerprint, Severity, Status};
    use crate::rules::Rules;
    use crate::view::ReadModel;
    use std::collections::BTreeMap;

    fn alert(name: &str, ci: &str, at: i64) -> Alert {
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

    #[test]
    fn a_tor_failure_pictures_root_hosts_context_and_services() {
        let spec = CmdbSpec::from_json(
            r#"{"cis": [
                {"id": "svc-pay", "type": "service", "name": "Payments", "criticality": "high"},
                {"id": "app-pay", "type": "application"},
                {"id": "vm-1", "type": "vm"},
                {"id": "h1", "type": "host"}, {"id": "h2", "type": "host"},
                {"id": "tor-1", "type": "switch", "owner_group": "network"}],
               "relations": [
                {"from": "svc-pay", "type": "depends_on", "to": "app-pay"},
                {"from": "app-pay", "type": "runs_on", "to": "vm-1"},
                {"from": "vm-1", "type": "hosted_on", "to": "h1"},
                {"from": "h1", "type": "connected_to", "to": "tor-1"},
                {"from": "h2", "type": "connected_to", "to": "tor-1"}]}"#,
        )
        .expect("cmdb");
        let mut engine = Engine::new(Rules::embedded().expect("rules"));
        let mut facts = Vec::new();
        engine.load_cmdb(&spec, "test", 1_000, &mut facts);
        let t = 1_795_000_000_000;
        for a in [
            alert("HostUnreachable", "h2", t),
            alert("ErrorRate", "app-pay", t + 1),
            alert("SwitchDown", "tor-1", t + 2),
        ] {
            engine.handle(Input::Alert(&a), &mut facts).expect("alert");
        }
        let mut model = ReadModel::default();
        for (seq, f) in facts.iter().enumerate() {
            model.apply(seq as u64 + 1, f);
        }
        let inc = model
            .surviving()
            .find(|i| i.root_ci() == Some("tor-1"))
            .expect("an incident rooted at the switch");
        let p = build(inc, &model.topology, 200);
        let role = |id: &str| p.nodes.iter().find(|n| n.id == id).map(|n| n.role);
        assert_eq!(p.root.as_deref(), Some("tor-1"));
        assert_eq!(role("tor-1"), Some(Role::Root));
        assert_eq!(role("h2"), Some(Role::Affected));
        assert_eq!(role("app-pay"), Some(Role::Affected));
        assert_eq!(role("svc-pay"), Some(Role::Service));
        // The app reaches the switch through its VM and host, which are not alerting.
        assert_eq!(role("vm-1"), Some(Role::Context));
        assert_eq!(role("h1"), Some(Role::Context));
        assert!(p.edges.contains(&Edge {
            from: "h1".into(),
            to: "tor-1".into(),
            relation: "connected_to"
        }));
        assert!(
            p.edges
                .iter()
                .any(|e| e.from == "svc-pay" && e.to == "app-pay")
        );
        assert!(!p.truncated);

        let small = build(inc, &model.topology, 3);
        assert!(small.nodes.len() <= 3 && small.truncated, "{small:?}");
    }
}
