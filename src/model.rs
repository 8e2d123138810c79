//! The normalized alert every ingest format decodes into, and the small value types around it.
//!
//! Time is plain data here (`Millis`, milliseconds since the Unix epoch) so that the engine can
//! stay deterministic: nothing below reads the clock.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// Alert severity, ordered from least to most severe so `max()` picks the worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Minor,
    Major,
    Critical,
}

impl Severity {
    /// Every accepted spelling in the native format, for error messages.
    pub const NAMES: &'static str = "critical, major, minor, warning, info";

    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "critical" => Severity::Critical,
            "major" => Severity::Major,
            "minor" => Severity::Minor,
            "warning" => Severity::Warning,
            "info" => Severity::Info,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// ITIL priority, P1 (most urgent) to P5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    P1,
    P2,
    P3,
    P4,
    P5,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
            Priority::P4 => "P4",
            Priority::P5 => "P5",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Some(match s {
            "P1" => Priority::P1,
            "P2" => Priority::P2,
            "P3" => Priority::P3,
            "P4" => Priority::P4,
            "P5" => Priority::P5,
            _ => return None,
        })
    }
}

/// Whether the condition an alert reports is still present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "firing" => Some(Status::Firing),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// Identity of an alert for deduplication: 64-bit FNV-1a, printed as 16 hex digits like
/// Alertmanager's fingerprints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Fingerprint {
    pub fn parse(s: &str) -> Option<Fingerprint> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Fingerprint)
    }

    /// Native fingerprint: `dedup_key` scoped by source when given, else source, name, ci and
    /// the labels in sorted order (a `BTreeMap` iterates sorted).
    pub fn native(
        source: &str,
        name: &str,
        ci: Option<&str>,
        labels: &BTreeMap<String, String>,
        dedup_key: Option<&str>,
    ) -> Fingerprint {
        let mut h = Fnv1a::new();
        if let Some(key) = dedup_key {
            h.field(b"dedup_key");
            h.field(source.as_bytes());
            h.field(key.as_bytes());
            return Fingerprint(h.finish());
        }
        h.field(source.as_bytes());
        h.field(name.as_bytes());
        h.field(ci.unwrap_or("").as_bytes());
        for (k, v) in labels {
            h.field(k.as_bytes());
            h.field(v.as_bytes());
        }
        Fingerprint(h.finish())
    }

    /// Alertmanager's fingerprint: FNV-1a 64 over label names in sorted order, feeding name,
    /// 0xFF, value, 0xFF for each label. Matches what Prometheus and amtool show.
    pub fn alertmanager(labels: &BTreeMap<String, String>) -> Fingerprint {
        let mut h = Fnv1a::new();
        for (k, v) in labels {
            h.field(k.as_bytes());
            h.field(v.as_bytes());
        }
        Fingerprint(h.finish())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Fingerprint::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("fingerprint must be 16 hex digits"))
    }
}

/// Names a secret without revealing it: 48 bits of FNV-1a as 12 hex digits, enough to tell
/// senders apart, far too few to recover a 128-bit key from.
pub fn secret_tag(secret: &str) -> String {
    let mut h = Fnv1a::new();
    h.field(secret.as_bytes());
    format!("{:012x}", h.0 >> 16)
}

/// 64-bit FNV-1a with a 0xFF separator after each field (0xFF never occurs in UTF-8).
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv1a(Self::OFFSET)
    }

    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(Self::PRIME);
    }

    fn field(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
        self.byte(0xff);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One alert after decoding, whatever format it arrived in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: Fingerprint,
    pub source: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
    pub severity: Severity,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: Millis,
    /// For a firing alert: when it times out unless re-sent (Alertmanager semantics).
    /// For a resolved alert: when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    pub received_at: Millis,
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn parse_time(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with millisecond precision.
pub fn format_time(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => String::from("invalid-time"),
    }
}

/// Parses a duration such as `90s`, `10m`, `1h30m`, `250ms` or `2d` into milliseconds.
pub fn parse_duration(s: &str) -> Option<Millis> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: Millis = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: Millis = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Formats milliseconds as a short human duration (`90s` → `1m30s`), for reasons and logs.
pub fn format_duration(ms: Millis) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1_000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_fingerprint_matches_go_implementation() {
        // Empty label set: FNV-1a offset basis, as in prometheus/common model.Fingerprint.
        assert_eq!(
            Fingerprint::alertmanager(&BTreeMap::new()).0,
            0xcbf2_9ce4_8422_2325
        );
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), "Up".to_string());
        let a = Fingerprint::alertmanager(&labels);
        labels.insert("job".to_string(), "node".to_string());
        assert_ne!(a, Fingerprint::alertmanager(&labels));
    }

    #[test]
    fn native_fingerprint_scopes_dedup_key_by_source() {
        let labels = BTreeMap::new();
        let a = Fingerprint::native("a", "x", None, &labels, Some("k"));
        let b = Fingerprint::native("b", "x", None, &labels, Some("k"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            Fingerprint::native("a", "other", Some("ci"), &labels, Some("k"))
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Some(90_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5 minutes"), None);
        assert_eq!(format_duration(5_400_000), "1h30m");
        assert_eq!(format_duration(90_500), "1m30s");
        assert_eq!(format_duration(20), "20ms");
    }

    #[test]
    fn time_round_trips() {
        let ms = parse_time("2026-11-23T10:00:00Z").expect("valid");
        assert_eq!(format_time(ms), "2026-11-23T10:00:00.000Z");
        assert!(parse_time("yesterday").is_none());
    }
}
