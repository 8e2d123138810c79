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
        f.write_str(self.hex().as_str())
    }
}

/// A fingerprint's 16 lowercase hex digits, on the stack: every outbound fact and rendered
/// alert carries one, and `format!("{:016x}")` costs several times more.
pub struct Hex([u8; 16]);

impl Hex {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Fingerprint {
    /// The fingerprint as written in JSON and the API.
    pub fn hex(self) -> Hex {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, d) in out.iter_mut().enumerate() {
            *d = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        Hex(out)
    }

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
        s.serialize_str(self.hex().as_str())
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

    /// Four bytes a round: the hash is one serial chain either way, but the loop's own
    /// counting and branching then cost a quarter as often.
    fn field(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(4);
        for c in &mut chunks {
            self.byte(c[0]);
            self.byte(c[1]);
            self.byte(c[2]);
            self.byte(c[3]);
        }
        for &b in chunks.remainder() {
            self.byte(b);
        }
        self.byte(0xff);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Shards of a [`FingerprintMap`] (and of the interner's table).
pub const SHARDS: usize = 64;

/// The shard of a uniformly spread 64-bit hash, for tables that grow by doubling shard by
/// shard. Equal shards fill alike and so all double within a few thousand inserts of each
/// other, which stalls their thread as long as one big table would (seen at 458k alerts:
/// the engine spent ~0.5 s in 64 rehashes and the page faults of their new tables). Here
/// shard `i` gets a share of the keys proportional to 2^(i/64), so at any size the shards'
/// loads are spread evenly over one doubling, and they double one at a time, each at its own
/// size. Average load (so memory) stays as with equal shards.
pub fn staggered_shard(hash: u64) -> usize {
    STAGGER[(hash >> (64 - STAGGER_BITS)) as usize] as usize
}

const STAGGER_BITS: u32 = 12;

/// `STAGGER[j]` = ⌊64 · log2(1 + j / 4096)⌋: shard `i` takes the fractions from 2^(i/64) − 1
/// to 2^((i+1)/64) − 1. Built with 32.32 fixed point (powers of 2^(1/64)).
static STAGGER: [u8; 1 << STAGGER_BITS] = {
    const ROOT: u64 = 4_341_736_423; // 2^(1/64) · 2^32, rounded
    let mut bounds = [0usize; SHARDS];
    let mut r: u64 = 1 << 32;
    let mut i = 0;
    while i < SHARDS {
        bounds[i] = (((r - (1 << 32)) << STAGGER_BITS) >> 32) as usize;
        r = ((r as u128 * ROOT as u128) >> 32) as u64;
        i += 1;
    }
    let mut table = [0u8; 1 << STAGGER_BITS];
    let (mut j, mut shard) = (0, 0);
    while j < table.len() {
        while shard + 1 < SHARDS && bounds[shard + 1] <= j {
            shard += 1;
        }
        table[j] = shard as u8;
        j += 1;
    }
    table
};

/// A hash map keyed by fingerprint, split into [`SHARDS`] shards so that growing it rehashes
/// one shard at a time. A single table that doubles at 460k alerts stalls its thread for
/// ~100 ms while it moves every entry, which is every request's latency for that long; a
/// shard doubles with 1/64 to 1/32 of the entries, and never together with the others
/// ([`staggered_shard`]). Lookups cost one table read more.
#[derive(Clone)]
pub struct FingerprintMap<V> {
    shards: Box<[foldhash::HashMap<Fingerprint, V>]>,
    len: usize,
}

impl<V> FingerprintMap<V> {
    pub fn new() -> Self {
        FingerprintMap {
            shards: (0..SHARDS).map(|_| Default::default()).collect(),
            len: 0,
        }
    }

    /// Fingerprints are hashes already; the multiply spreads the ones that are not (tests).
    fn shard(fp: &Fingerprint) -> usize {
        staggered_shard(fp.0.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, fp: &Fingerprint) -> Option<&V> {
        self.shards[Self::shard(fp)].get(fp)
    }

    /// Looks `fp` up and drops the answer. A few of these in a row, ahead of the changes
    /// that need the entries, overlap their cache misses (the lookups do not depend on each
    /// other), where the changes one by one would wait for each miss in turn.
    pub fn touch(&self, fp: &Fingerprint) {
        std::hint::black_box(self.get(fp));
    }

    pub fn get_mut(&mut self, fp: &Fingerprint) -> Option<&mut V> {
        self.shards[Self::shard(fp)].get_mut(fp)
    }

    pub fn insert(&mut self, fp: Fingerprint, value: V) -> Option<V> {
        let old = self.shards[Self::shard(&fp)].insert(fp, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, fp: &Fingerprint) -> Option<V> {
        let old = self.shards[Self::shard(fp)].remove(fp);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Entries in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Fingerprint, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Values in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

impl<V> Default for FingerprintMap<V> {
    fn default() -> Self {
        FingerprintMap::new()
    }
}

impl<V: PartialEq> PartialEq for FingerprintMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<V: fmt::Debug> fmt::Debug for FingerprintMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> FromIterator<(Fingerprint, V)> for FingerprintMap<V> {
    fn from_iter<I: IntoIterator<Item = (Fingerprint, V)>>(iter: I) -> Self {
        let mut map = FingerprintMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

/// Serialized as one map, as a `HashMap` was (snapshots written before stay readable).
impl<V: Serialize> Serialize for FingerprintMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The length up front: the snapshot codec writes it before the entries.
        let mut map = s.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for FingerprintMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
            type Value = FingerprintMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map keyed by fingerprint")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut entries: A,
            ) -> Result<Self::Value, A::Error> {
                let mut map = FingerprintMap::new();
                while let Some((k, v)) = entries.next_entry()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }

        d.deserialize_map(Entries(std::marker::PhantomData))
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

/// An alert with its texts borrowed (from a log record, say): replay interns them into the
/// alert's view straight from the record's bytes, where owned copies would be allocated
/// only to be freed again, since most texts repeat.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRef<'a> {
    pub fingerprint: Fingerprint,
    pub source: &'a str,
    pub name: &'a str,
    pub ci: Option<&'a str>,
    pub severity: Severity,
    pub status: Status,
    pub summary: Option<&'a str>,
    /// Sorted by key, each key once, as in [`Alert::labels`].
    pub labels: Vec<(&'a str, &'a str)>,
    /// Sorted by key, each key once.
    pub annotations: Vec<(&'a str, &'a str)>,
    pub starts_at: Millis,
    pub ends_at: Option<Millis>,
    pub dedup_key: Option<&'a str>,
    pub received_at: Millis,
}

impl<'a> From<&'a Alert> for AlertRef<'a> {
    fn from(a: &'a Alert) -> AlertRef<'a> {
        let pairs = |m: &'a BTreeMap<String, String>| {
            m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
        };
        AlertRef {
            fingerprint: a.fingerprint,
            source: &a.source,
            name: &a.name,
            ci: a.ci.as_deref(),
            severity: a.severity,
            status: a.status,
            summary: a.summary.as_deref(),
            labels: pairs(&a.labels),
            annotations: pairs(&a.annotations),
            starts_at: a.starts_at,
            ends_at: a.ends_at,
            dedup_key: a.dedup_key.as_deref(),
            received_at: a.received_at,
        }
    }
}

impl AlertRef<'_> {
    /// The owned alert with only the texts the engine reads when it applies the alert's
    /// fact (name and CI); the rest are left empty, as after `PreparedAlert::take`.
    pub fn skeleton(&self) -> Alert {
        Alert {
            fingerprint: self.fingerprint,
            source: String::new(),
            name: self.name.to_owned(),
            ci: self.ci.map(str::to_owned),
            severity: self.severity,
            status: self.status,
            summary: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            dedup_key: None,
            received_at: self.received_at,
        }
    }

    /// The owned alert.
    pub fn to_alert(&self) -> Alert {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        Alert {
            source: self.source.to_owned(),
            summary: self.summary.map(str::to_owned),
            labels: map(&self.labels),
            annotations: map(&self.annotations),
            dedup_key: self.dedup_key.map(str::to_owned),
            ..self.skeleton()
        }
    }
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
    fn fingerprint_hex_is_sixteen_lowercase_digits() {
        for n in [0, 1, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX, 1 << 63] {
            let fp = Fingerprint(n);
            assert_eq!(fp.hex().as_str(), format!("{n:016x}"));
            assert_eq!(fp.to_string(), format!("{n:016x}"));
            assert_eq!(serde_json::to_string(&fp).unwrap(), format!("\"{n:016x}\""));
        }
    }

    #[test]
    fn fnv_field_hashes_byte_by_byte() {
        let text: Vec<u8> = (0u8..=40).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..text.len() {
            let mut reference = Fnv1a::OFFSET;
            for &b in text[..len].iter().chain(&[0xff]) {
                reference = (reference ^ u64::from(b)).wrapping_mul(Fnv1a::PRIME);
            }
            let mut h = Fnv1a::new();
            h.field(&text[..len]);
            assert_eq!(h.finish(), reference, "{len} bytes");
        }
        // No labels: nothing hashed, the offset basis.
        assert_eq!(Fingerprint::alertmanager(&BTreeMap::new()).0, Fnv1a::OFFSET);
    }

    #[test]
    fn fingerprint_map_counts_compares_and_round_trips() {
        let mut a = FingerprintMap::new();
        for i in 0..1_000u64 {
            assert_eq!(a.insert(Fingerprint(i), i), None);
        }
        assert_eq!(
            a.insert(Fingerprint(7), 70),
            Some(7),
            "replacing keeps the count"
        );
        assert_eq!(a.remove(&Fingerprint(8)), Some(8));
        assert_eq!(a.remove(&Fingerprint(8)), None);
        assert_eq!(
            (a.len(), a.iter().count(), a.values().count()),
            (999, 999, 999)
        );
        assert_eq!(a.get(&Fingerprint(7)), Some(&70));
        // Spread over the shards, not piled into one.
        let used = a.shards.iter().filter(|s| !s.is_empty()).count();
        assert!(used > SHARDS / 2, "{used} shards used");

        let b: FingerprintMap<u64> = a.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(a, b);
        let json = serde_json::to_string(&a).expect("encode");
        let back: FingerprintMap<u64> = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, a);
        let mut c = b.clone();
        c.insert(Fingerprint(7), 71);
        assert_ne!(a, c);
    }

    #[test]
    fn staggered_shards_take_growing_shares() {
        let mut counts = [0usize; SHARDS];
        for j in 0..1u64 << STAGGER_BITS {
            counts[staggered_shard(j << (64 - STAGGER_BITS))] += 1;
        }
        assert!(
            counts.iter().all(|&n| n > 0),
            "every shard used: {counts:?}"
        );
        // Shard i's share is 2^(i/64) times the first's: the last has about twice the first.
        let ratio = counts[SHARDS - 1] as f64 / counts[0] as f64;
        assert!(
            (1.9..2.1).contains(&ratio),
            "last/first {ratio}: {counts:?}"
        );
        assert!(counts.windows(2).all(|w| w[1] + 2 >= w[0]), "{counts:?}");
    }

    /// The point of [`staggered_shard`]: while a map grows, its shards double one at a time,
    /// spread over each doubling, instead of all within a few thousand inserts.
    #[test]
    fn fingerprint_map_shards_grow_one_at_a_time() {
        let mut map = FingerprintMap::new();
        let caps = |m: &FingerprintMap<()>| m.shards.iter().map(|s| s.capacity()).collect();
        let mut before: Vec<usize> = caps(&map);
        let mut growths = Vec::new();
        let mut h = 0u64;
        for n in 1..=400_000u64 {
            h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
            map.insert(Fingerprint(h ^ (h >> 29)), ());
            if n.is_power_of_two() || n % 64 == 0 {
                let now: Vec<usize> = caps(&map);
                let grew = now.iter().zip(&before).filter(|(a, b)| a != b).count();
                growths.extend(std::iter::repeat_n(n, grew));
                before = now;
            }
        }
        // From 100k to 400k entries every shard doubles twice: 128 growths in all. Equal
        // shards would do each round within ~5k inserts; these may not bunch up.
        let late: Vec<u64> = growths.into_iter().filter(|&n| n > 100_000).collect();
        assert!((120..=136).contains(&late.len()), "{} growths", late.len());
        let most_in_5k = late
            .iter()
            .map(|&n| late.iter().filter(|&&m| m >= n && m < n + 5_000).count())
            .max()
            .unwrap_or(0);
        assert!(
            most_in_5k <= 8,
            "{most_in_5k} shards grew within 5k inserts"
        );
    }

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
