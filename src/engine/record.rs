//! Fact records: how one [`Fact`] is stored in the event log (local segments and JetStream).
//!
//! Version 2, written by this build, is a hand-written binary encoding: a varint version, a
//! one-byte fact tag, then the fields in declaration order (varints, zigzag varints for times,
//! length-prefixed UTF-8 strings, fingerprints as 8 little-endian bytes). It is deterministic
//! (maps are `BTreeMap`s, encoded in order) and about a third of the JSON size, and decoding it
//! costs a fraction of parsing JSON, which is what replay and the writer thread pay per fact.
//!
//! Version 1 records are JSON objects (`{"v":1,"fact":{...}}`); they are still read, so data
//! directories written before version 2 keep working. A JSON record starts with `{` (0x7b),
//! which no binary version uses. Any other version is refused loudly, never guessed at.
//!
//! Decoding never trusts a length: every count and string length is checked against the bytes
//! that remain before anything is allocated, and every malformed input is a [`RecordError`].
//! Outbound NATS facts stay JSON (that is a contract); only the log uses this encoding.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::Deserialize;

use super::facts::{Fact, IncidentId};
use crate::cmdb::{CiSpec, CmdbOp, Criticality, Relation, RelationSpec};
use crate::model::{Alert, AlertRef, Fingerprint, Millis, Priority, Severity, Status};
use crate::silence::{Matcher, Silence};

/// Current on-disk format version of a fact record.
pub const FACT_VERSION: u32 = 2;
/// The JSON record version, still read.
const JSON_VERSION: u32 = 1;
/// Most items preallocated for a decoded list: a count is checked against the bytes left, but
/// an item in memory can be far bigger than its smallest encoding.
const PREALLOC: usize = 1024;
/// First byte of every JSON (version 1) record.
const JSON_START: u8 = b'{';

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("unsupported fact record version {0} (this build reads versions 1 and {FACT_VERSION})")]
    UnsupportedVersion(u64),
    #[error("unreadable version 1 (JSON) fact record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("empty fact record")]
    Empty,
    #[error("fact record ends inside {field} (offset {offset})")]
    Truncated { field: &'static str, offset: usize },
    #[error("fact record: varint too long in {field} (offset {offset})")]
    Varint { field: &'static str, offset: usize },
    #[error(
        "fact record: {field} claims {len} items or bytes but only {remaining} bytes remain (offset {offset})"
    )]
    Length {
        field: &'static str,
        len: u64,
        remaining: usize,
        offset: usize,
    },
    #[error("fact record: {field} is not UTF-8 (offset {offset})")]
    Utf8 { field: &'static str, offset: usize },
    #[error("fact record: unknown {field} tag {tag} (offset {offset})")]
    Tag {
        field: &'static str,
        tag: u64,
        offset: usize,
    },
    #[error("fact record: {field} out of range (offset {offset})")]
    Range { field: &'static str, offset: usize },
    #[error("fact record: {0} bytes after the fact")]
    Trailing(usize),
    /// A record that failed to decode during a replay, named by its log sequence.
    #[error("fact {seq}: {source}")]
    AtSeq { seq: u64, source: Box<RecordError> },
    #[error("replay decode thread: {0}")]
    Thread(String),
}

/// Serializes a fact as a current-version log record into `buf` (cleared first). Cannot fail
/// today; the `Result` keeps call sites ready for encodings that can.
pub fn encode_record(fact: &Fact, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    buf.clear();
    put_uvar(buf, u64::from(FACT_VERSION));
    put_fact(buf, fact);
    Ok(())
}

/// Reads a log record of any supported version; unknown versions are refused.
pub fn decode_record(bytes: &[u8]) -> Result<Fact, RecordError> {
    match bytes.first() {
        None => Err(RecordError::Empty),
        Some(&JSON_START) => decode_json(bytes),
        Some(_) => {
            let mut r = Reader { bytes, pos: 0 };
            let version = r.uvar("version")?;
            if version != u64::from(FACT_VERSION) {
                return Err(RecordError::UnsupportedVersion(version));
            }
            let fact = r.fact()?;
            match bytes.len() - r.pos {
                0 => Ok(fact),
                n => Err(RecordError::Trailing(n)),
            }
        }
    }
}

/// A decoded record whose received alert, if it holds one, borrows its texts from the record.
pub enum Record<'a> {
    /// An `AlertReceived` fact in the binary format.
    Received { at: Millis, alert: AlertRef<'a> },
    /// Any other fact, and an `AlertReceived` in the JSON format.
    Fact(Fact),
}

/// Like [`decode_record`], leaving a binary `AlertReceived` record's texts in `bytes`: replay
/// interns them from there into the alert's view. Accepts and refuses exactly what
/// `decode_record` does.
pub fn decode_record_ref(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    let mut r = Reader { bytes, pos: 0 };
    if bytes.first() == Some(&JSON_START)
        || r.uvar("version").ok() != Some(u64::from(FACT_VERSION))
        || r.bytes.get(r.pos) != Some(&T_ALERT_RECEIVED)
    {
        return decode_record(bytes).map(Record::Fact);
    }
    r.pos += 1;
    let at = r.ivar("at")?;
    let alert = r.alert_ref()?;
    match bytes.len() - r.pos {
        0 => Ok(Record::Received { at, alert }),
        n => Err(RecordError::Trailing(n)),
    }
}

#[derive(Deserialize)]
struct RecordIn {
    v: u64,
    fact: Fact,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

/// Version 1: `{"v":1,"fact":{...}}`, upcast by decoding into today's `Fact`.
fn decode_json(bytes: &[u8]) -> Result<Fact, RecordError> {
    match serde_json::from_slice::<RecordIn>(bytes) {
        Ok(r) if r.v == u64::from(JSON_VERSION) => Ok(r.fact),
        Ok(r) => Err(RecordError::UnsupportedVersion(r.v)),
        Err(e) => match serde_json::from_slice::<VersionProbe>(bytes) {
            Ok(p) if p.v != u64::from(JSON_VERSION) => Err(RecordError::UnsupportedVersion(p.v)),
            _ => Err(RecordError::Json(e)),
        },
    }
}

/// The version 1 (JSON) encoder, kept for tests that prove old logs still load.
#[cfg(test)]
pub fn encode_record_v1(fact: &Fact, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    #[derive(serde::Serialize)]
    struct RecordOut<'a> {
        v: u32,
        fact: &'a Fact,
    }
    buf.clear();
    serde_json::to_writer(
        &mut *buf,
        &RecordOut {
            v: JSON_VERSION,
            fact,
        },
    )?;
    Ok(())
}

// Fact tags: stable forever (they are on disk). Append new ones; never renumber.
const T_ALERT_RECEIVED: u8 = 0;
const T_ALERT_REPEATED: u8 = 1;
const T_ALERT_RESOLVED: u8 = 2;
const T_ALERT_REFIRED: u8 = 3;
const T_INCIDENT_OPENED: u8 = 4;
const T_ALERT_ATTACHED: u8 = 5;
const T_ROOT_CAUSE_CHANGED: u8 = 6;
const T_PRIORITY_CHANGED: u8 = 7;
const T_INCIDENT_ACKNOWLEDGED: u8 = 8;
const T_INCIDENT_RESOLVED: u8 = 9;
const T_INCIDENT_REOPENED: u8 = 10;
const T_INCIDENT_COMMENTED: u8 = 11;
const T_RULES_LOADED: u8 = 12;
const T_CMDB_CHANGED: u8 = 13;
const T_ALERT_SUPPRESSED: u8 = 14;
const T_ALERT_FLAPPING: u8 = 15;
const T_INCIDENTS_MERGED: u8 = 16;
const T_SILENCE_CREATED: u8 = 17;
const T_SILENCE_EXPIRED: u8 = 18;
const T_STREAM_CONSUMED: u8 = 19;
const T_IMPACT_CHANGED: u8 = 20;
const T_INCIDENT_CLOSED: u8 = 21;
const T_ALERT_FORGOTTEN: u8 = 22;
const T_STREAM_ATTACHED: u8 = 23;

const OP_UPSERT_CI: u8 = 0;
const OP_REMOVE_CI: u8 = 1;
const OP_ADD_RELATION: u8 = 2;
const OP_REMOVE_RELATION: u8 = 3;

fn put_uvar(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_ivar(buf: &mut Vec<u8>, v: i64) {
    put_uvar(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_len(buf: &mut Vec<u8>, n: usize) {
    put_uvar(buf, n as u64);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_len(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

fn put_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_str(buf, s);
        }
    }
}

fn put_opt_time(buf: &mut Vec<u8>, t: Option<Millis>) {
    match t {
        None => buf.push(0),
        Some(t) => {
            buf.push(1);
            put_ivar(buf, t);
        }
    }
}

fn put_fp(buf: &mut Vec<u8>, fp: Fingerprint) {
    buf.extend_from_slice(&fp.0.to_le_bytes());
}

fn put_map(buf: &mut Vec<u8>, m: &BTreeMap<String, String>) {
    put_len(buf, m.len());
    for (k, v) in m {
        put_str(buf, k);
        put_str(buf, v);
    }
}

fn severity_tag(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Minor => 2,
        Severity::Major => 3,
        Severity::Critical => 4,
    }
}

fn status_tag(s: Status) -> u8 {
    match s {
        Status::Firing => 0,
        Status::Resolved => 1,
    }
}

fn priority_tag(p: Priority) -> u8 {
    match p {
        Priority::P1 => 1,
        Priority::P2 => 2,
        Priority::P3 => 3,
        Priority::P4 => 4,
        Priority::P5 => 5,
    }
}

fn relation_tag(r: Relation) -> u8 {
    match r {
        Relation::RunsOn => 0,
        Relation::HostedOn => 1,
        Relation::ConnectedTo => 2,
        Relation::DependsOn => 3,
        Relation::PoweredBy => 4,
        Relation::LocatedIn => 5,
        Relation::MemberOf => 6,
    }
}

fn criticality_tag(c: Criticality) -> u8 {
    match c {
        Criticality::Critical => 0,
        Criticality::High => 1,
        Criticality::Medium => 2,
        Criticality::Low => 3,
    }
}

fn put_alert(buf: &mut Vec<u8>, a: &Alert) {
    put_fp(buf, a.fingerprint);
    put_str(buf, &a.source);
    put_str(buf, &a.name);
    put_opt_str(buf, a.ci.as_deref());
    buf.push(severity_tag(a.severity));
    buf.push(status_tag(a.status));
    put_opt_str(buf, a.summary.as_deref());
    put_map(buf, &a.labels);
    put_map(buf, &a.annotations);
    put_ivar(buf, a.starts_at);
    put_opt_time(buf, a.ends_at);
    put_opt_str(buf, a.dedup_key.as_deref());
    put_ivar(buf, a.received_at);
}

fn put_relation(buf: &mut Vec<u8>, r: &RelationSpec) {
    put_str(buf, &r.from);
    buf.push(relation_tag(r.kind));
    put_str(buf, &r.to);
}

fn put_op(buf: &mut Vec<u8>, op: &CmdbOp) {
    match op {
        CmdbOp::UpsertCi { ci } => {
            buf.push(OP_UPSERT_CI);
            put_str(buf, &ci.id);
            put_str(buf, &ci.kind);
            put_opt_str(buf, ci.name.as_deref());
            match ci.criticality {
                None => buf.push(0),
                Some(c) => buf.push(1 + criticality_tag(c)),
            }
            put_opt_str(buf, ci.owner_group.as_deref());
            put_map(buf, &ci.attrs);
        }
        CmdbOp::RemoveCi { id } => {
            buf.push(OP_REMOVE_CI);
            put_str(buf, id);
        }
        CmdbOp::AddRelation { relation } => {
            buf.push(OP_ADD_RELATION);
            put_relation(buf, relation);
        }
        CmdbOp::RemoveRelation { relation } => {
            buf.push(OP_REMOVE_RELATION);
            put_relation(buf, relation);
        }
    }
}

fn put_silence(buf: &mut Vec<u8>, s: &Silence) {
    put_str(buf, &s.id);
    put_len(buf, s.matchers.len());
    for m in &s.matchers {
        put_str(buf, &m.name);
        put_str(buf, &m.value);
        buf.push(u8::from(m.is_regex) | (u8::from(m.is_equal) << 1));
    }
    put_ivar(buf, s.starts_at);
    put_ivar(buf, s.ends_at);
    put_str(buf, &s.created_by);
    put_str(buf, &s.comment);
    put_ivar(buf, s.updated_at);
}

/// Tag, `at`, then the variant's fields in declaration order.
fn put_fact(buf: &mut Vec<u8>, fact: &Fact) {
    let head = |buf: &mut Vec<u8>, tag: u8, at: Millis| {
        buf.push(tag);
        put_ivar(buf, at);
    };
    match fact {
        Fact::AlertReceived { at, alert } => {
            head(buf, T_ALERT_RECEIVED, *at);
            put_alert(buf, alert);
        }
        Fact::AlertRepeated {
            at,
            fingerprint,
            count,
            severity,
            ends_at,
        } => {
            head(buf, T_ALERT_REPEATED, *at);
            put_fp(buf, *fingerprint);
            put_uvar(buf, *count);
            buf.push(severity_tag(*severity));
            put_opt_time(buf, *ends_at);
        }
        Fact::AlertResolved {
            at,
            fingerprint,
            ends_at,
            reason,
        } => {
            head(buf, T_ALERT_RESOLVED, *at);
            put_fp(buf, *fingerprint);
            put_ivar(buf, *ends_at);
            put_str(buf, reason);
        }
        Fact::AlertRefired {
            at,
            fingerprint,
            severity,
            ends_at,
        } => {
            head(buf, T_ALERT_REFIRED, *at);
            put_fp(buf, *fingerprint);
            buf.push(severity_tag(*severity));
            put_opt_time(buf, *ends_at);
        }
        Fact::IncidentOpened {
            at,
            incident,
            rule,
            group_key,
            topology,
        } => {
            head(buf, T_INCIDENT_OPENED, *at);
            put_uvar(buf, incident.0);
            put_str(buf, rule);
            put_str(buf, group_key);
            buf.push(u8::from(*topology));
        }
        Fact::AlertAttached {
            at,
            incident,
            fingerprint,
            reason,
        } => {
            head(buf, T_ALERT_ATTACHED, *at);
            put_uvar(buf, incident.0);
            put_fp(buf, *fingerprint);
            put_str(buf, reason);
        }
        Fact::RootCauseChanged {
            at,
            incident,
            fingerprint,
            reason,
        } => {
            head(buf, T_ROOT_CAUSE_CHANGED, *at);
            put_uvar(buf, incident.0);
            put_fp(buf, *fingerprint);
            put_str(buf, reason);
        }
        Fact::PriorityChanged {
            at,
            incident,
            priority,
            reason,
        } => {
            head(buf, T_PRIORITY_CHANGED, *at);
            put_uvar(buf, incident.0);
            buf.push(priority_tag(*priority));
            put_str(buf, reason);
        }
        Fact::IncidentAcknowledged {
            at,
            incident,
            by,
            comment,
        } => {
            head(buf, T_INCIDENT_ACKNOWLEDGED, *at);
            put_uvar(buf, incident.0);
            put_str(buf, by);
            put_opt_str(buf, comment.as_deref());
        }
        Fact::IncidentResolved {
            at,
            incident,
            by,
            comment,
        } => {
            head(buf, T_INCIDENT_RESOLVED, *at);
            put_uvar(buf, incident.0);
            put_str(buf, by);
            put_opt_str(buf, comment.as_deref());
        }
        Fact::IncidentReopened {
            at,
            incident,
            reason,
        } => {
            head(buf, T_INCIDENT_REOPENED, *at);
            put_uvar(buf, incident.0);
            put_str(buf, reason);
        }
        Fact::IncidentClosed {
            at,
            incident,
            reason,
        } => {
            head(buf, T_INCIDENT_CLOSED, *at);
            put_uvar(buf, incident.0);
            put_str(buf, reason);
        }
        Fact::AlertForgotten {
            at,
            fingerprint,
            reason,
        } => {
            head(buf, T_ALERT_FORGOTTEN, *at);
            put_fp(buf, *fingerprint);
            put_str(buf, reason);
        }
        Fact::IncidentCommented {
            at,
            incident,
            actor,
            text,
        } => {
            head(buf, T_INCIDENT_COMMENTED, *at);
            put_uvar(buf, incident.0);
            put_str(buf, actor);
            put_str(buf, text);
        }
        Fact::RulesLoaded { at, version, hash } => {
            head(buf, T_RULES_LOADED, *at);
            put_uvar(buf, *version);
            put_str(buf, hash);
        }
        Fact::CmdbChanged { at, source, ops } => {
            head(buf, T_CMDB_CHANGED, *at);
            put_str(buf, source);
            put_len(buf, ops.len());
            for op in ops {
                put_op(buf, op);
            }
        }
        Fact::AlertSuppressed {
            at,
            fingerprint,
            by,
            reason,
        } => {
            head(buf, T_ALERT_SUPPRESSED, *at);
            put_fp(buf, *fingerprint);
            put_str(buf, by);
            put_str(buf, reason);
        }
        Fact::AlertFlapping {
            at,
            fingerprint,
            reason,
        } => {
            head(buf, T_ALERT_FLAPPING, *at);
            put_fp(buf, *fingerprint);
            put_str(buf, reason);
        }
        Fact::IncidentsMerged {
            at,
            into,
            from,
            reason,
        } => {
            head(buf, T_INCIDENTS_MERGED, *at);
            put_uvar(buf, into.0);
            put_uvar(buf, from.0);
            put_str(buf, reason);
        }
        Fact::SilenceCreated { at, silence } => {
            head(buf, T_SILENCE_CREATED, *at);
            put_silence(buf, silence);
        }
        Fact::SilenceExpired { at, id } => {
            head(buf, T_SILENCE_EXPIRED, *at);
            put_str(buf, id);
        }
        Fact::StreamConsumed { at, seqs } => {
            head(buf, T_STREAM_CONSUMED, *at);
            put_len(buf, seqs.len());
            for s in seqs {
                put_uvar(buf, *s);
            }
        }
        Fact::StreamAttached {
            at,
            stream,
            created,
            last,
        } => {
            head(buf, T_STREAM_ATTACHED, *at);
            put_str(buf, stream);
            put_uvar(buf, *created);
            put_uvar(buf, *last);
        }
        Fact::ImpactChanged {
            at,
            incident,
            services,
            reason,
        } => {
            head(buf, T_IMPACT_CHANGED, *at);
            put_uvar(buf, incident.0);
            put_len(buf, services.len());
            for s in services {
                put_str(buf, s);
            }
            put_str(buf, reason);
        }
    }
}

/// A cursor over one binary record. Every read names the field it was after, so an error says
/// where the record went wrong.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, RecordError>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn u8(&mut self, field: &'static str) -> R<u8> {
        // Not `ok_or`: an eagerly built error is dropped again (drop glue: the enum holds a
        // `serde_json::Error`) for every byte read.
        let Some(&b) = self.bytes.get(self.pos) else {
            return Err(RecordError::Truncated {
                field,
                offset: self.pos,
            });
        };
        self.pos += 1;
        Ok(b)
    }

    fn uvar(&mut self, field: &'static str) -> R<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(field)?;
            // The tenth byte may only carry the top bit of a u64.
            if shift == 63 && b > 1 {
                return Err(RecordError::Varint {
                    field,
                    offset: start,
                });
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError::Varint {
            field,
            offset: start,
        })
    }

    fn ivar(&mut self, field: &'static str) -> R<i64> {
        let u = self.uvar(field)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn bool(&mut self, field: &'static str) -> R<bool> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(RecordError::Tag {
                field,
                tag: tag.into(),
                offset,
            }),
        }
    }

    /// A count of items each at least `min_bytes` long, checked against what remains.
    fn count(&mut self, field: &'static str, min_bytes: usize) -> R<usize> {
        let offset = self.pos;
        let n = self.uvar(field)?;
        let remaining = self.remaining();
        match usize::try_from(n) {
            Ok(len) if len.saturating_mul(min_bytes) <= remaining => Ok(len),
            _ => Err(RecordError::Length {
                field,
                len: n,
                remaining,
                offset,
            }),
        }
    }

    fn str(&mut self, field: &'static str) -> R<&'a str> {
        let len = self.count(field, 1)?;
        let start = self.pos;
        let raw = &self.bytes[start..start + len];
        self.pos += len;
        std::str::from_utf8(raw).map_err(|_| RecordError::Utf8 {
            field,
            offset: start,
        })
    }

    fn string(&mut self, field: &'static str) -> R<String> {
        self.str(field).map(str::to_owned)
    }

    fn opt_str(&mut self, field: &'static str) -> R<Option<&'a str>> {
        Ok(if self.bool(field)? {
            Some(self.str(field)?)
        } else {
            None
        })
    }

    fn opt_string(&mut self, field: &'static str) -> R<Option<String>> {
        Ok(self.opt_str(field)?.map(str::to_owned))
    }

    fn opt_time(&mut self, field: &'static str) -> R<Option<Millis>> {
        Ok(if self.bool(field)? {
            Some(self.ivar(field)?)
        } else {
            None
        })
    }

    fn fp(&mut self, field: &'static str) -> R<Fingerprint> {
        let offset = self.pos;
        let Some(raw) = self.bytes.get(offset..offset + 8) else {
            return Err(RecordError::Truncated { field, offset });
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(raw);
        self.pos += 8;
        Ok(Fingerprint(u64::from_le_bytes(b)))
    }

    fn incident(&mut self, field: &'static str) -> R<IncidentId> {
        self.uvar(field).map(IncidentId)
    }

    fn map(&mut self, field: &'static str) -> R<BTreeMap<String, String>> {
        let pairs = self.pairs(field)?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// A map's entries borrowed: sorted by key, a repeated key's last value kept.
    fn pairs(&mut self, field: &'static str) -> R<Vec<(&'a str, &'a str)>> {
        let n = self.count(field, 2)?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((self.str(field)?, self.str(field)?));
        }
        if !pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            // Not as this encoder writes maps (sorted, unique): sort, the last value wins.
            let mut m = BTreeMap::new();
            for (k, v) in pairs {
                m.insert(k, v);
            }
            pairs = m.into_iter().collect();
        }
        Ok(pairs)
    }

    fn tag_err<T>(&self, field: &'static str, tag: u8) -> R<T> {
        Err(RecordError::Tag {
            field,
            tag: tag.into(),
            offset: self.pos - 1,
        })
    }

    fn severity(&mut self) -> R<Severity> {
        Ok(match self.u8("severity")? {
            0 => Severity::Info,
            1 => Severity::Warning,
            2 => Severity::Minor,
            3 => Severity::Major,
            4 => Severity::Critical,
            t => return self.tag_err("severity", t),
        })
    }

    fn status(&mut self) -> R<Status> {
        Ok(match self.u8("status")? {
            0 => Status::Firing,
            1 => Status::Resolved,
            t => return self.tag_err("status", t),
        })
    }

    fn priority(&mut self) -> R<Priority> {
        Ok(match self.u8("priority")? {
            1 => Priority::P1,
            2 => Priority::P2,
            3 => Priority::P3,
            4 => Priority::P4,
            5 => Priority::P5,
            t => return self.tag_err("priority", t),
        })
    }

    fn relation(&mut self) -> R<Relation> {
        Ok(match self.u8("relation type")? {
            0 => Relation::RunsOn,
            1 => Relation::HostedOn,
            2 => Relation::ConnectedTo,
            3 => Relation::DependsOn,
            4 => Relation::PoweredBy,
            5 => Relation::LocatedIn,
            6 => Relation::MemberOf,
            t => return self.tag_err("relation type", t),
        })
    }

    fn criticality(&mut self) -> R<Option<Criticality>> {
        Ok(match self.u8("criticality")? {
            0 => None,
            1 => Some(Criticality::Critical),
            2 => Some(Criticality::High),
            3 => Some(Criticality::Medium),
            4 => Some(Criticality::Low),
            t => return self.tag_err("criticality", t),
        })
    }

    fn alert(&mut self) -> R<Alert> {
        Ok(self.alert_ref()?.to_alert())
    }

    /// An alert with its texts borrowed from the record (replay interns them from there).
    fn alert_ref(&mut self) -> R<AlertRef<'a>> {
        Ok(AlertRef {
            fingerprint: self.fp("alert fingerprint")?,
            source: self.str("alert source")?,
            name: self.str("alert name")?,
            ci: self.opt_str("alert ci")?,
            severity: self.severity()?,
            status: self.status()?,
            summary: self.opt_str("alert summary")?,
            labels: self.pairs("alert labels")?,
            annotations: self.pairs("alert annotations")?,
            starts_at: self.ivar("alert starts_at")?,
            ends_at: self.opt_time("alert ends_at")?,
            dedup_key: self.opt_str("alert dedup_key")?,
            received_at: self.ivar("alert received_at")?,
        })
    }

    fn relation_spec(&mut self) -> R<RelationSpec> {
        Ok(RelationSpec {
            from: self.string("relation from")?,
            kind: self.relation()?,
            to: self.string("relation to")?,
        })
    }

    fn op(&mut self) -> R<CmdbOp> {
        Ok(match self.u8("cmdb op")? {
            OP_UPSERT_CI => CmdbOp::UpsertCi {
                ci: CiSpec {
                    id: self.string("ci id")?,
                    kind: self.string("ci type")?,
                    name: self.opt_string("ci name")?,
                    criticality: self.criticality()?,
                    owner_group: self.opt_string("ci owner_group")?,
                    attrs: self.map("ci attrs")?,
                },
            },
            OP_REMOVE_CI => CmdbOp::RemoveCi {
                id: self.string("ci id")?,
            },
            OP_ADD_RELATION => CmdbOp::AddRelation {
                relation: self.relation_spec()?,
            },
            OP_REMOVE_RELATION => CmdbOp::RemoveRelation {
                relation: self.relation_spec()?,
            },
            t => return self.tag_err("cmdb op", t),
        })
    }

    fn silence(&mut self) -> R<Silence> {
        let id = self.string("silence id")?;
        // A matcher is at least two empty strings and a flags byte.
        let n = self.count("silence matchers", 3)?;
        let mut matchers = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            let name = self.string("matcher name")?;
            let value = self.string("matcher value")?;
            let offset = self.pos;
            let flags = self.u8("matcher flags")?;
            if flags > 3 {
                return Err(RecordError::Tag {
                    field: "matcher flags",
                    tag: flags.into(),
                    offset,
                });
            }
            matchers.push(Matcher {
                name,
                value,
                is_regex: flags & 1 != 0,
                is_equal: flags & 2 != 0,
            });
        }
        Ok(Silence {
            id,
            matchers,
            starts_at: self.ivar("silence starts_at")?,
            ends_at: self.ivar("silence ends_at")?,
            created_by: self.string("silence created_by")?,
            comment: self.string("silence comment")?,
            updated_at: self.ivar("silence updated_at")?,
        })
    }

    fn fact(&mut self) -> R<Fact> {
        let tag_offset = self.pos;
        let tag = self.u8("fact type")?;
        if tag > T_STREAM_ATTACHED {
            return Err(RecordError::Tag {
                field: "fact type",
                tag: tag.into(),
                offset: tag_offset,
            });
        }
        let at = self.ivar("at")?;
        Ok(match tag {
            T_ALERT_RECEIVED => Fact::AlertReceived {
                at,
                alert: self.alert()?,
            },
            T_ALERT_REPEATED => Fact::AlertRepeated {
                at,
                fingerprint: self.fp("fingerprint")?,
                count: self.uvar("count")?,
                severity: self.severity()?,
                ends_at: self.opt_time("ends_at")?,
            },
            T_ALERT_RESOLVED => Fact::AlertResolved {
                at,
                fingerprint: self.fp("fingerprint")?,
                ends_at: self.ivar("ends_at")?,
                reason: self.string("reason")?,
            },
            T_ALERT_REFIRED => Fact::AlertRefired {
                at,
                fingerprint: self.fp("fingerprint")?,
                severity: self.severity()?,
                ends_at: self.opt_time("ends_at")?,
            },
            T_INCIDENT_OPENED => Fact::IncidentOpened {
                at,
                incident: self.incident("incident")?,
                rule: self.string("rule")?,
                group_key: self.string("group_key")?,
                topology: self.bool("topology")?,
            },
            T_ALERT_ATTACHED => Fact::AlertAttached {
                at,
                incident: self.incident("incident")?,
                fingerprint: self.fp("fingerprint")?,
                reason: self.string("reason")?,
            },
            T_ROOT_CAUSE_CHANGED => Fact::RootCauseChanged {
                at,
                incident: self.incident("incident")?,
                fingerprint: self.fp("fingerprint")?,
                reason: self.string("reason")?,
            },
            T_PRIORITY_CHANGED => Fact::PriorityChanged {
                at,
                incident: self.incident("incident")?,
                priority: self.priority()?,
                reason: self.string("reason")?,
            },
            T_INCIDENT_ACKNOWLEDGED => Fact::IncidentAcknowledged {
                at,
                incident: self.incident("incident")?,
                by: self.string("by")?,
                comment: self.opt_string("comment")?,
            },
            T_INCIDENT_RESOLVED => Fact::IncidentResolved {
                at,
                incident: self.incident("incident")?,
                by: self.string("by")?,
                comment: self.opt_string("comment")?,
            },
            T_INCIDENT_REOPENED => Fact::IncidentReopened {
                at,
                incident: self.incident("incident")?,
                reason: self.string("reason")?,
            },
            T_INCIDENT_CLOSED => Fact::IncidentClosed {
                at,
                incident: self.incident("incident")?,
                reason: self.string("reason")?,
            },
            T_ALERT_FORGOTTEN => Fact::AlertForgotten {
                at,
                fingerprint: self.fp("fingerprint")?,
                reason: self.string("reason")?,
            },
            T_INCIDENT_COMMENTED => Fact::IncidentCommented {
                at,
                incident: self.incident("incident")?,
                actor: self.string("actor")?,
                text: self.string("text")?,
            },
            T_RULES_LOADED => Fact::RulesLoaded {
                at,
                version: self.uvar("version")?,
                hash: self.string("hash")?,
            },
            T_CMDB_CHANGED => {
                let source = self.string("source")?;
                // The smallest op (remove an empty id) is two bytes.
                let n = self.count("cmdb ops", 2)?;
                let mut ops = Vec::with_capacity(n.min(PREALLOC));
                for _ in 0..n {
                    ops.push(self.op()?);
                }
                Fact::CmdbChanged { at, source, ops }
            }
            T_ALERT_SUPPRESSED => Fact::AlertSuppressed {
                at,
                fingerprint: self.fp("fingerprint")?,
                by: self.string("by")?,
                reason: self.string("reason")?,
            },
            T_ALERT_FLAPPING => Fact::AlertFlapping {
                at,
                fingerprint: self.fp("fingerprint")?,
                reason: self.string("reason")?,
            },
            T_INCIDENTS_MERGED => Fact::IncidentsMerged {
                at,
                into: self.incident("into")?,
                from: self.incident("from")?,
                reason: self.string("reason")?,
            },
            T_SILENCE_CREATED => Fact::SilenceCreated {
                at,
                silence: self.silence()?,
            },
            T_SILENCE_EXPIRED => Fact::SilenceExpired {
                at,
                id: self.string("id")?,
            },
            T_STREAM_CONSUMED => {
                let n = self.count("seqs", 1)?;
                let mut seqs = Vec::with_capacity(n.min(PREALLOC));
                for _ in 0..n {
                    seqs.push(self.uvar("seqs")?);
                }
                Fact::StreamConsumed { at, seqs }
            }
            T_STREAM_ATTACHED => Fact::StreamAttached {
                at,
                stream: self.string("stream")?,
                created: self.uvar("created")?,
                last: self.uvar("last")?,
            },
            T_IMPACT_CHANGED => {
                let incident = self.incident("incident")?;
                let n = self.count("services", 1)?;
                let mut services = Vec::with_capacity(n.min(PREALLOC));
                for _ in 0..n {
                    services.push(self.string("services")?);
                }
                Fact::ImpactChanged {
                    at,
                    incident,
                    services,
                    reason: self.string("reason")?,
                }
            }
            t => {
                return Err(RecordError::Tag {
                    field: "fact type",
                    tag: t.into(),
                    offset: tag_offset,
                });
            }
        })
    }
}

/// Records per batch handed between replay threads: large enough that channel traffic is
/// noise, small enough that the queued batches stay a few MB.
pub const REPLAY_BATCH: usize = 1024;
/// Batches queued between two replay stages.
pub const REPLAY_DEPTH: usize = 4;

/// Facts decoded in log order, each with its sequence.
pub type FactBatch = Vec<(u64, Fact)>;

/// Raw records copied out of the log reader, decoded on the other side.
#[derive(Default)]
struct RawBatch {
    seqs: Vec<u64>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

/// Decodes log records on a second thread while the caller's consumer applies them, so a
/// replay costs max(read + decode, apply) instead of the sum. Feed records in order with
/// [`DecodePipeline::push`]; decoded batches arrive in order on the sink given to
/// [`DecodePipeline::start`] (or, decoded the caller's way, to
/// [`DecodePipeline::start_with`]); [`DecodePipeline::finish`] flushes and reports the first
/// decode error, named by its sequence. Dropping the pipeline stops the thread.
pub struct DecodePipeline {
    raw: RawBatch,
    tx: Option<SyncSender<RawBatch>>,
    decoder: Option<JoinHandle<Result<(), RecordError>>>,
}

impl DecodePipeline {
    pub fn start(sink: SyncSender<FactBatch>) -> Result<DecodePipeline, RecordError> {
        DecodePipeline::start_with(sink, |seq, record| Ok((seq, decode_record(record)?)))
    }

    /// Like [`start`](Self::start), with the caller's decoding of each record (given its
    /// sequence) on the decode thread: work that needs only the record can run there,
    /// beside the decoding, instead of on the consumer's thread.
    pub fn start_with<T: Send + 'static>(
        sink: SyncSender<Vec<T>>,
        decode: impl FnMut(u64, &[u8]) -> Result<T, RecordError> + Send + 'static,
    ) -> Result<DecodePipeline, RecordError> {
        let (tx, rx) = sync_channel::<RawBatch>(REPLAY_DEPTH);
        let decoder = std::thread::Builder::new()
            .name("incidentd-replay-decode".into())
            .spawn(move || decode_batches(&rx, &sink, decode))
            .map_err(|e| RecordError::Thread(e.to_string()))?;
        Ok(DecodePipeline {
            raw: RawBatch::default(),
            tx: Some(tx),
            decoder: Some(decoder),
        })
    }

    /// Queues one record; when the decoder stopped (a bad record, the consumer gone) this
    /// returns its error.
    pub fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), RecordError> {
        self.raw.seqs.push(seq);
        self.raw.bytes.extend_from_slice(record);
        self.raw.ends.push(self.raw.bytes.len());
        if self.raw.seqs.len() >= REPLAY_BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), RecordError> {
        let batch = std::mem::take(&mut self.raw);
        let sent = match &self.tx {
            Some(tx) => tx.send(batch).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(self.join()) }
    }

    /// Why the decoder stopped early.
    fn join(&mut self) -> RecordError {
        self.tx = None;
        match self.decoder.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(()))) => RecordError::Thread("the replay consumer stopped".into()),
            Some(Err(_)) => RecordError::Thread("the decode thread panicked".into()),
            None => RecordError::Thread("the decode thread already stopped".into()),
        }
    }

    /// Sends the last records and waits until all are decoded and handed to the sink.
    pub fn finish(mut self) -> Result<(), RecordError> {
        if !self.raw.seqs.is_empty() {
            self.send()?;
        }
        self.tx = None;
        match self.decoder.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(RecordError::Thread("the decode thread panicked".into())),
            None => Ok(()),
        }
    }
}

fn decode_batches<T>(
    rx: &Receiver<RawBatch>,
    sink: &SyncSender<Vec<T>>,
    mut decode: impl FnMut(u64, &[u8]) -> Result<T, RecordError>,
) -> Result<(), RecordError> {
    for raw in rx {
        let mut decoded = Vec::with_capacity(raw.seqs.len());
        let mut start = 0;
        for (&seq, &end) in raw.seqs.iter().zip(&raw.ends) {
            let item = decode(seq, &raw.bytes[start..end]).map_err(|e| RecordError::AtSeq {
                seq,
                source: Box::new(e),
            })?;
            decoded.push(item);
            start = end;
        }
        if sink.send(decoded).is_err() {
            // The consumer stopped; it knows why.
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9 ._-]{0,12}",
            any::<String>().prop_map(|s| s.chars().take(8).collect()),
        ]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(text(), text(), 0..4)
    }

    fn severity() -> impl Strategy<Value = Severity> {
        prop_oneof![
            Just(Severity::Info),
            Just(Severity::Warning),
            Just(Severity::Minor),
            Just(Severity::Major),
            Just(Severity::Critical),
        ]
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::P1),
            Just(Priority::P2),
            Just(Priority::P3),
            Just(Priority::P4),
            Just(Priority::P5),
        ]
    }

    fn fp() -> impl Strategy<Value = Fingerprint> {
        any::<u64>().prop_map(Fingerprint)
    }

    fn inc() -> impl Strategy<Value = IncidentId> {
        any::<u64>().prop_map(IncidentId)
    }

    fn alert() -> impl Strategy<Value = Alert> {
        (
            (fp(), text(), text(), opt_text(), severity(), any::<bool>()),
            (opt_text(), map(), map(), any::<i64>()),
            (proptest::option::of(any::<i64>()), opt_text(), any::<i64>()),
        )
            .prop_map(
                |(
                    (fingerprint, source, name, ci, severity, resolved),
                    (summary, labels, annotations, starts_at),
                    (ends_at, dedup_key, received_at),
                )| Alert {
                    fingerprint,
                    source,
                    name,
                    ci,
                    severity,
                    status: if resolved {
                        Status::Resolved
                    } else {
                        Status::Firing
                    },
                    summary,
                    labels,
                    annotations,
                    starts_at,
                    ends_at,
                    dedup_key,
                    received_at,
                },
            )
    }

    fn relation_spec() -> impl Strategy<Value = RelationSpec> {
        (text(), 0usize..7, text()).prop_map(|(from, k, to)| RelationSpec {
            from,
            kind: Relation::ALL[k],
            to,
        })
    }

    fn op() -> impl Strategy<Value = CmdbOp> {
        let crit = prop_oneof![
            Just(None),
            Just(Some(Criticality::Critical)),
            Just(Some(Criticality::High)),
            Just(Some(Criticality::Medium)),
            Just(Some(Criticality::Low)),
        ];
        prop_oneof![
            (text(), text(), opt_text(), crit, opt_text(), map()).prop_map(
                |(id, kind, name, criticality, owner_group, attrs)| CmdbOp::UpsertCi {
                    ci: CiSpec {
                        id,
                        kind,
                        name,
                        criticality,
                        owner_group,
                        attrs,
                    }
                }
            ),
            text().prop_map(|id| CmdbOp::RemoveCi { id }),
            relation_spec().prop_map(|relation| CmdbOp::AddRelation { relation }),
            relation_spec().prop_map(|relation| CmdbOp::RemoveRelation { relation }),
        ]
    }

    fn silence() -> impl Strategy<Value = Silence> {
        let matcher = (text(), text(), any::<bool>(), any::<bool>()).prop_map(
            |(name, value, is_regex, is_equal)| Matcher {
                name,
                value,
                is_regex,
                is_equal,
            },
        );
        (
            text(),
            proptest::collection::vec(matcher, 0..3),
            any::<i64>(),
            any::<i64>(),
            text(),
            text(),
            any::<i64>(),
        )
            .prop_map(
                |(id, matchers, starts_at, ends_at, created_by, comment, updated_at)| Silence {
                    id,
                    matchers,
                    starts_at,
                    ends_at,
                    created_by,
                    comment,
                    updated_at,
                },
            )
    }

    /// Every `Fact` variant (the encoder's exhaustive match keeps this list honest).
    fn fact() -> impl Strategy<Value = Fact> {
        let at = any::<i64>();
        prop_oneof![
            (at, alert()).prop_map(|(at, alert)| Fact::AlertReceived { at, alert }),
            (
                at,
                fp(),
                any::<u64>(),
                severity(),
                proptest::option::of(any::<i64>())
            )
                .prop_map(|(at, fingerprint, count, severity, ends_at)| {
                    Fact::AlertRepeated {
                        at,
                        fingerprint,
                        count,
                        severity,
                        ends_at,
                    }
                }),
            (at, fp(), any::<i64>(), text()).prop_map(|(at, fingerprint, ends_at, reason)| {
                Fact::AlertResolved {
                    at,
                    fingerprint,
                    ends_at,
                    reason,
                }
            }),
            (at, fp(), severity(), proptest::option::of(any::<i64>())).prop_map(
                |(at, fingerprint, severity, ends_at)| Fact::AlertRefired {
                    at,
                    fingerprint,
                    severity,
                    ends_at
                }
            ),
            (at, inc(), text(), text(), any::<bool>()).prop_map(
                |(at, incident, rule, group_key, topology)| Fact::IncidentOpened {
                    at,
                    incident,
                    rule,
                    group_key,
                    topology
                }
            ),
            (at, inc(), fp(), text()).prop_map(|(at, incident, fingerprint, reason)| {
                Fact::AlertAttached {
                    at,
                    incident,
                    fingerprint,
                    reason,
                }
            }),
            (at, inc(), fp(), text()).prop_map(|(at, incident, fingerprint, reason)| {
                Fact::RootCauseChanged {
                    at,
                    incident,
                    fingerprint,
                    reason,
                }
            }),
            (at, inc(), priority(), text()).prop_map(|(at, incident, priority, reason)| {
                Fact::PriorityChanged {
                    at,
                    incident,
                    priority,
                    reason,
                }
            }),
            (at, inc(), text(), opt_text()).prop_map(|(at, incident, by, comment)| {
                Fact::IncidentAcknowledged {
                    at,
                    incident,
                    by,
                    comment,
                }
            }),
            (at, inc(), text(), opt_text()).prop_map(|(at, incident, by, comment)| {
                Fact::IncidentResolved {
                    at,
                    incident,
                    by,
                    comment,
                }
            }),
            (at, inc(), text()).prop_map(|(at, incident, reason)| {
                Fact::IncidentReopened {
                    at,
                    incident,
                    reason,
                }
            }),
            (at, inc(), text()).prop_map(|(at, incident, reason)| {
                Fact::IncidentClosed {
                    at,
                    incident,
                    reason,
                }
            }),
            (at, fp(), text()).prop_map(|(at, fingerprint, reason)| {
                Fact::AlertForgotten {
                    at,
                    fingerprint,
                    reason,
                }
            }),
            (at, inc(), text(), text()).prop_map(|(at, incident, actor, text)| {
                Fact::IncidentCommented {
                    at,
                    incident,
                    actor,
                    text,
                }
            }),
            (at, any::<u64>(), text()).prop_map(|(at, version, hash)| Fact::RulesLoaded {
                at,
                version,
                hash
            }),
            (at, text(), proptest::collection::vec(op(), 0..4))
                .prop_map(|(at, source, ops)| Fact::CmdbChanged { at, source, ops }),
            (at, fp(), text(), text()).prop_map(|(at, fingerprint, by, reason)| {
                Fact::AlertSuppressed {
                    at,
                    fingerprint,
                    by,
                    reason,
                }
            }),
            (at, fp(), text()).prop_map(|(at, fingerprint, reason)| {
                Fact::AlertFlapping {
                    at,
                    fingerprint,
                    reason,
                }
            }),
            (at, inc(), inc(), text()).prop_map(|(at, into, from, reason)| {
                Fact::IncidentsMerged {
                    at,
                    into,
                    from,
                    reason,
                }
            }),
            (at, silence()).prop_map(|(at, silence)| Fact::SilenceCreated { at, silence }),
            (at, text()).prop_map(|(at, id)| Fact::SilenceExpired { at, id }),
            (at, proptest::collection::vec(any::<u64>(), 0..5))
                .prop_map(|(at, seqs)| Fact::StreamConsumed { at, seqs }),
            (at, text(), any::<u64>(), any::<u64>()).prop_map(|(at, stream, created, last)| {
                Fact::StreamAttached {
                    at,
                    stream,
                    created,
                    last,
                }
            }),
            (at, inc(), proptest::collection::vec(text(), 0..4), text()).prop_map(
                |(at, incident, services, reason)| Fact::ImpactChanged {
                    at,
                    incident,
                    services,
                    reason
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn binary_records_round_trip(f in fact()) {
            let mut buf = Vec::new();
            encode_record(&f, &mut buf).expect("encode");
            prop_assert_eq!(decode_record(&buf).expect("decode"), f.clone());
            // Deterministic: the same fact always encodes to the same bytes.
            let mut again = Vec::new();
            encode_record(&f, &mut again).expect("encode");
            prop_assert_eq!(&buf, &again);
        }

        #[test]
        fn json_records_still_read(f in fact()) {
            let mut buf = Vec::new();
            encode_record_v1(&f, &mut buf).expect("encode v1");
            prop_assert_eq!(decode_record(&buf).expect("decode v1"), f);
        }

        /// Damage gives an error or some other valid fact, never a panic.
        #[test]
        fn damaged_records_never_panic(f in fact(), cut in any::<prop::sample::Index>(),
                                       flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = Vec::new();
            encode_record(&f, &mut buf).expect("encode");
            let truncated = &buf[..cut.index(buf.len())];
            prop_assert!(decode_record(truncated).is_err());
            let mut flipped = buf.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= 1 << bit;
            if let Ok(other) = decode_record(&flipped) {
                prop_assert_ne!(other, f);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_record(&bytes);
            let _ = decode_record_ref(&bytes);
        }

        /// Replay's borrowed decoding reads exactly what the owned one does, damaged
        /// records included (the same facts, the same errors).
        #[test]
        fn borrowed_decoding_agrees(f in fact(), flip in any::<prop::sample::Index>(),
                                    bit in 0u8..8) {
            let mut buf = Vec::new();
            encode_record(&f, &mut buf).expect("encode");
            let mut flipped = buf.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= 1 << bit;
            for bytes in [&buf[..], &flipped[..]] {
                prop_assert_eq!(borrowed(bytes), decode_record(bytes).map_err(|e| e.to_string()));
            }
        }
    }

    fn borrowed(bytes: &[u8]) -> Result<Fact, String> {
        match decode_record_ref(bytes).map_err(|e| e.to_string())? {
            Record::Received { at, alert } => Ok(Fact::AlertReceived {
                at,
                alert: alert.to_alert(),
            }),
            Record::Fact(fact) => Ok(fact),
        }
    }

    /// A map this encoder would not write (a key twice, keys out of order) reads as the
    /// owned decoder's map does: sorted, the last value of a repeated key kept.
    #[test]
    fn borrowed_labels_read_like_the_owned_map() {
        let alert = Alert {
            fingerprint: Fingerprint(7),
            source: "s".into(),
            name: "n".into(),
            ci: None,
            severity: Severity::Major,
            status: Status::Firing,
            summary: None,
            labels: [("ka", "1"), ("kb", "2")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            annotations: BTreeMap::new(),
            starts_at: 1,
            ends_at: None,
            dedup_key: None,
            received_at: 1,
        };
        let mut buf = Vec::new();
        encode_record(&Fact::AlertReceived { at: 1, alert }, &mut buf).expect("encode");
        let at = |key: &[u8]| {
            buf.windows(2)
                .position(|w| w == key)
                .expect("key in record")
        };
        let (ka, kb) = (at(b"ka"), at(b"kb"));
        for (pos, to, want) in [
            (kb + 1, b'a', vec![("ka", "2")]),
            (ka + 1, b'c', vec![("kb", "2"), ("kc", "1")]),
        ] {
            let mut patched = buf.clone();
            patched[pos] = to;
            let Ok(Record::Received { alert, .. }) = decode_record_ref(&patched) else {
                panic!("not a received alert");
            };
            assert_eq!(alert.labels, want);
            assert_eq!(
                borrowed(&patched),
                decode_record(&patched).map_err(|e| e.to_string())
            );
        }
    }

    #[test]
    fn version_one_records_and_unknown_versions() {
        let fact = Fact::IncidentAcknowledged {
            at: 5,
            incident: IncidentId(7),
            by: "ana".into(),
            comment: None,
        };
        // Written by the JSON encoder of version 1, byte for byte.
        let v1 =
            br#"{"v":1,"fact":{"type":"incident_acknowledged","at":5,"incident":7,"by":"ana"}}"#;
        let mut buf = Vec::new();
        encode_record_v1(&fact, &mut buf).expect("encode");
        assert_eq!(buf, v1);
        assert_eq!(decode_record(v1).expect("decode"), fact);
        encode_record(&fact, &mut buf).expect("encode");
        assert_eq!(buf, [2, 8, 10, 7, 3, b'a', b'n', b'a', 0]);
        assert!(matches!(
            decode_record(br#"{"v":3,"fact":{"type":"something_new"}}"#),
            Err(RecordError::UnsupportedVersion(3))
        ));
        assert!(matches!(
            decode_record(&[3, 8]),
            Err(RecordError::UnsupportedVersion(3))
        ));
        assert!(matches!(
            decode_record(b"{\"v\":1}"),
            Err(RecordError::Json(_))
        ));
        assert!(matches!(decode_record(&[]), Err(RecordError::Empty)));
        assert!(matches!(
            decode_record(&[2, 99, 0]),
            Err(RecordError::Tag {
                field: "fact type",
                tag: 99,
                offset: 1
            })
        ));
        // A string length beyond the record is refused before allocating.
        assert!(matches!(
            decode_record(&[2, 18, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(RecordError::Length { .. })
        ));
    }

    #[test]
    fn pipeline_decodes_in_order_and_names_the_bad_record() {
        let (tx, rx) = std::sync::mpsc::sync_channel(REPLAY_DEPTH);
        let consumer = std::thread::spawn(move || rx.iter().flatten().collect::<Vec<_>>());
        let mut pipe = DecodePipeline::start(tx).expect("start");
        let mut buf = Vec::new();
        let n = 3 * REPLAY_BATCH as u64 + 5;
        for seq in 1..=n {
            let fact = Fact::SilenceExpired {
                at: seq as i64,
                id: format!("s{seq}"),
            };
            encode_record(&fact, &mut buf).expect("encode");
            pipe.push(seq, &buf).expect("push");
        }
        pipe.finish().expect("finish");
        let got = consumer.join().expect("consumer");
        assert_eq!(got.len() as u64, n);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, (seq, f))| { *seq == i as u64 + 1 && f.at() == *seq as i64 })
        );

        let (tx, rx) = std::sync::mpsc::sync_channel(REPLAY_DEPTH);
        let consumer = std::thread::spawn(move || rx.iter().count());
        let mut pipe = DecodePipeline::start(tx).expect("start");
        pipe.push(1, &buf).expect("push");
        pipe.push(2, b"\x02\x63").expect("push");
        let err = pipe.finish().expect_err("bad record");
        assert_eq!(
            err.to_string(),
            "fact 2: fact record: unknown fact type tag 99 (offset 1)"
        );
        let _ = consumer.join();
    }
}
