//! Facts: the past-tense records of everything the engine decided. They are the event log;
//! replaying them through `Engine::apply` rebuilds the exact state, whatever rules are loaded.
//!
//! How a fact is stored in the log (versioned records, old versions upcast) is
//! [`super::record`]; its functions are re-exported here for existing call sites.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cmdb::CmdbOp;
pub use crate::model::Priority;
use crate::model::{Alert, Fingerprint, Millis, Severity};
use crate::silence::Silence;

pub use super::record::{FACT_VERSION, RecordError, decode_record, encode_record};

/// Incident number; shown as `INC-000042`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(pub u64);

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// `INC-000042` on the stack: the publisher names an incident in every outbound subject
/// and message, and `format!` costs several times more.
pub struct IdText {
    buf: [u8; 24],
    len: usize,
}

impl IdText {
    pub fn as_str(&self) -> &str {
        // Only "INC-" and ASCII digits are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// Digits of `n`, at least `width` of them (zero-padded), at the end of `buf`.
pub(crate) fn digits(buf: &mut [u8; 20], mut n: u64, width: usize) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    while buf.len() - i < width {
        i -= 1;
        buf[i] = b'0';
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("")
}

impl IncidentId {
    /// The id as shown: `INC-` and at least six digits.
    pub fn text(self) -> IdText {
        let mut scratch = [0u8; 20];
        let digits = digits(&mut scratch, self.0, 6).as_bytes();
        let mut buf = [0u8; 24];
        buf[..4].copy_from_slice(b"INC-");
        buf[4..4 + digits.len()].copy_from_slice(digits);
        IdText {
            buf,
            len: 4 + digits.len(),
        }
    }

    /// Parses `INC-000042` (or a bare number).
    pub fn parse(s: &str) -> Option<IncidentId> {
        let digits = s.strip_prefix("INC-").unwrap_or(s);
        digits.parse().ok().map(IncidentId)
    }
}

/// Lifecycle state of an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    Open,
    Acknowledged,
    Resolved,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Acknowledged => "acknowledged",
            IncidentState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<IncidentState> {
        match s {
            "open" => Some(IncidentState::Open),
            "acknowledged" => Some(IncidentState::Acknowledged),
            "resolved" => Some(IncidentState::Resolved),
            _ => None,
        }
    }
}

/// Everything the engine can decide. `at` is engine time when it was decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Fact {
    /// A new alert, or a resolved alert firing again too late to reopen its old incident.
    AlertReceived { at: Millis, alert: Alert },
    /// `count` more copies of a known firing alert (coalesced per engine batch).
    AlertRepeated {
        at: Millis,
        fingerprint: Fingerprint,
        count: u64,
        severity: Severity,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ends_at: Option<Millis>,
    },
    AlertResolved {
        at: Millis,
        fingerprint: Fingerprint,
        ends_at: Millis,
        reason: String,
    },
    /// A resolved member alert fires again while its incident is open or being reopened.
    AlertRefired {
        at: Millis,
        fingerprint: Fingerprint,
        severity: Severity,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ends_at: Option<Millis>,
    },
    IncidentOpened {
        at: Millis,
        incident: IncidentId,
        rule: String,
        group_key: String,
        /// Opened by a topology rule: only such incidents are found by CMDB neighbourhood
        /// search (a full disk is no evidence of a network fault nearby).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        topology: bool,
    },
    AlertAttached {
        at: Millis,
        incident: IncidentId,
        fingerprint: Fingerprint,
        reason: String,
    },
    RootCauseChanged {
        at: Millis,
        incident: IncidentId,
        fingerprint: Fingerprint,
        reason: String,
    },
    PriorityChanged {
        at: Millis,
        incident: IncidentId,
        priority: Priority,
        reason: String,
    },
    IncidentAcknowledged {
        at: Millis,
        incident: IncidentId,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    IncidentResolved {
        at: Millis,
        incident: IncidentId,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    IncidentReopened {
        at: Millis,
        incident: IncidentId,
        reason: String,
    },
    /// A resolved incident quiet for `lifecycle.close_after` leaves the engine and the read
    /// model with its member alerts; its history stays in the log.
    IncidentClosed {
        at: Millis,
        incident: IncidentId,
        reason: String,
    },
    /// A resolved alert outside any incident (suppressed, or resolved before it was ever
    /// seen firing) that stayed so for `lifecycle.close_after` leaves memory.
    AlertForgotten {
        at: Millis,
        fingerprint: Fingerprint,
        reason: String,
    },
    /// An operator's note on an incident (any state): part of its history, no state change.
    IncidentCommented {
        at: Millis,
        incident: IncidentId,
        actor: String,
        text: String,
    },
    RulesLoaded {
        at: Millis,
        version: u64,
        hash: String,
    },
    /// The topology changed (file reload, API, NATS `cmdb.>`); replay sees it as it was.
    CmdbChanged {
        at: Millis,
        source: String,
        ops: Vec<CmdbOp>,
    },
    /// Recorded, not correlated: a maintenance window covers the alert.
    AlertSuppressed {
        at: Millis,
        fingerprint: Fingerprint,
        by: String,
        reason: String,
    },
    /// The alert changes state too often; shown as flapping rather than churning incidents.
    AlertFlapping {
        at: Millis,
        fingerprint: Fingerprint,
        reason: String,
    },
    /// `from` joined `into` because a new alert's CI is upstream of both roots.
    IncidentsMerged {
        at: Millis,
        into: IncidentId,
        from: IncidentId,
        reason: String,
    },
    /// An Alertmanager-style silence: matching new alerts are suppressed while it is active.
    SilenceCreated { at: Millis, silence: Silence },
    /// Expired by an operator (its end moves to `at`).
    SilenceExpired { at: Millis, id: String },
    /// JetStream messages (stream sequences) whose alerts are in the log: a redelivery of one
    /// of them is acknowledged without being ingested twice.
    StreamConsumed { at: Millis, seqs: Vec<u64> },
    /// Ingest (re)attached to JetStream stream `stream`, created at `created` (ns since the
    /// epoch), whose last sequence was then `last`. Sequences only identify messages within
    /// one stream: a recreated stream, or a server that lost its tail, reuses them for new
    /// messages, so consumed sequences of another stream or above `last` are forgotten.
    StreamAttached {
        at: Millis,
        stream: String,
        created: u64,
        last: u64,
    },
    /// The business services the incident hits (CI ids, sorted).
    ImpactChanged {
        at: Millis,
        incident: IncidentId,
        services: Vec<String>,
        reason: String,
    },
}

impl Fact {
    pub fn at(&self) -> Millis {
        match self {
            Fact::AlertReceived { at, .. }
            | Fact::AlertRepeated { at, .. }
            | Fact::AlertResolved { at, .. }
            | Fact::AlertRefired { at, .. }
            | Fact::IncidentOpened { at, .. }
            | Fact::AlertAttached { at, .. }
            | Fact::RootCauseChanged { at, .. }
            | Fact::PriorityChanged { at, .. }
            | Fact::IncidentAcknowledged { at, .. }
            | Fact::IncidentResolved { at, .. }
            | Fact::IncidentReopened { at, .. }
            | Fact::IncidentClosed { at, .. }
            | Fact::AlertForgotten { at, .. }
            | Fact::IncidentCommented { at, .. }
            | Fact::RulesLoaded { at, .. }
            | Fact::CmdbChanged { at, .. }
            | Fact::AlertSuppressed { at, .. }
            | Fact::AlertFlapping { at, .. }
            | Fact::IncidentsMerged { at, .. }
            | Fact::ImpactChanged { at, .. }
            | Fact::StreamConsumed { at, .. }
            | Fact::StreamAttached { at, .. }
            | Fact::SilenceCreated { at, .. }
            | Fact::SilenceExpired { at, .. } => *at,
        }
    }

    /// The incident a fact changes, if it names one directly.
    pub fn incident(&self) -> Option<IncidentId> {
        match self {
            Fact::IncidentOpened { incident, .. }
            | Fact::AlertAttached { incident, .. }
            | Fact::RootCauseChanged { incident, .. }
            | Fact::PriorityChanged { incident, .. }
            | Fact::IncidentAcknowledged { incident, .. }
            | Fact::IncidentResolved { incident, .. }
            | Fact::IncidentReopened { incident, .. }
            | Fact::IncidentClosed { incident, .. }
            | Fact::IncidentCommented { incident, .. }
            | Fact::ImpactChanged { incident, .. }
            | Fact::IncidentsMerged { into: incident, .. } => Some(*incident),
            _ => None,
        }
    }

    /// The alert a fact is about, if any.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Fact::AlertReceived { alert, .. } => Some(alert.fingerprint),
            Fact::AlertRepeated { fingerprint, .. }
            | Fact::AlertResolved { fingerprint, .. }
            | Fact::AlertRefired { fingerprint, .. }
            | Fact::AlertAttached { fingerprint, .. }
            | Fact::RootCauseChanged { fingerprint, .. }
            | Fact::AlertSuppressed { fingerprint, .. }
            | Fact::AlertFlapping { fingerprint, .. }
            | Fact::AlertForgotten { fingerprint, .. } => Some(*fingerprint),
            _ => None,
        }
    }

    /// Snake-case name, as in the JSON `type` tag and NATS subjects.
    pub fn kind(&self) -> &'static str {
        match self {
            Fact::AlertReceived { .. } => "alert_received",
            Fact::AlertRepeated { .. } => "alert_repeated",
            Fact::AlertResolved { .. } => "alert_resolved",
            Fact::AlertRefired { .. } => "alert_refired",
            Fact::IncidentOpened { .. } => "incident_opened",
            Fact::AlertAttached { .. } => "alert_attached",
            Fact::RootCauseChanged { .. } => "root_cause_changed",
            Fact::PriorityChanged { .. } => "priority_changed",
            Fact::IncidentAcknowledged { .. } => "incident_acknowledged",
            Fact::IncidentResolved { .. } => "incident_resolved",
            Fact::IncidentReopened { .. } => "incident_reopened",
            Fact::IncidentClosed { .. } => "incident_closed",
            Fact::AlertForgotten { .. } => "alert_forgotten",
            Fact::IncidentCommented { .. } => "incident_commented",
            Fact::RulesLoaded { .. } => "rules_loaded",
            Fact::CmdbChanged { .. } => "cmdb_changed",
            Fact::AlertSuppressed { .. } => "alert_suppressed",
            Fact::AlertFlapping { .. } => "alert_flapping",
            Fact::IncidentsMerged { .. } => "incidents_merged",
            Fact::ImpactChanged { .. } => "impact_changed",
            Fact::StreamConsumed { .. } => "stream_consumed",
            Fact::StreamAttached { .. } => "stream_attached",
            Fact::SilenceCreated { .. } => "silence_created",
            Fact::SilenceExpired { .. } => "silence_expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incident_ids() {
        assert_eq!(IncidentId(42).to_string(), "INC-000042");
        for n in [0, 7, 999_999, 1_000_000, 1_234_567, u64::MAX] {
            assert_eq!(IncidentId(n).text().as_str(), format!("INC-{n:06}"));
        }
        assert_eq!(IncidentId::parse("INC-000042"), Some(IncidentId(42)));
    }
}
