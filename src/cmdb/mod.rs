//! CMDB topology: configuration items (CIs) and typed relations, loaded from JSON or a CSV pair,
//! validated, and compiled into an integer-indexed graph the engine walks on the hot path
//! (alert → CI resolution, neighbourhoods for topology correlation, impacted business services).
//!
//! Direction: `from -type-> to` means `from` depends on `to`, so a failure of `to` can cause
//! symptoms on `from`. A CI's **upstream** is what it depends on (out-edges); its
//! **downstream** is its dependents (in-edges). A CI of type `service` is a business service.
//!
//! ```json
//! {"cis": [
//!    {"id": "svc-payments", "type": "service", "name": "Payments", "criticality": "high"},
//!    {"id": "host-017", "type": "host", "rack": "r12", "attrs": {"ip": "10.1.0.17"}}],
//!  "relations": [{"from": "svc-payments", "type": "depends_on", "to": "host-017"}]}
//! ```
//!
//! Fields of a CI other than `id`, `type`, `name`, `criticality`, `owner_group` and `attrs`
//! become string attributes (numbers and booleans stringified, arrays and objects as compact
//! JSON, `null` dropped); entries of the `attrs` object are merged in and win over a top-level
//! field of the same name. The CSV pair is `cis.csv` (header `id,type,name,criticality,
//! owner_group`, in any order, only `id` and `type` required; further columns are attributes,
//! empty cells are absent) and `relations.csv` (header `from,type,to`; further columns ignored,
//! as unknown relation fields are in JSON). Both formats load to the identical [`CmdbSpec`].
//!
//! Numbering in messages is 1-based in file order: `ci 3` is the third CI, `relation 12` the
//! twelfth relation, `op 2` the second op of a batch.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, TryLockError};

// Lookup maps on the alert path: foldhash (seeded per process) hashes an id in a few
// nanoseconds where SipHash takes tens; they are never iterated where order reaches output.
use foldhash::{HashMap as FastMap, HashMapExt};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Dense CI index, stable for the life of a [`Topology`] (removed CIs leave tombstones).
pub type CiIdx = u32;

/// Relation types: a closed set so rules can be checked at load time and walks can filter by
/// bitmask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    RunsOn,
    HostedOn,
    ConnectedTo,
    DependsOn,
    PoweredBy,
    LocatedIn,
    MemberOf,
}

impl Relation {
    pub const ALL: [Relation; 7] = [
        Relation::RunsOn,
        Relation::HostedOn,
        Relation::ConnectedTo,
        Relation::DependsOn,
        Relation::PoweredBy,
        Relation::LocatedIn,
        Relation::MemberOf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Relation::RunsOn => "runs_on",
            Relation::HostedOn => "hosted_on",
            Relation::ConnectedTo => "connected_to",
            Relation::DependsOn => "depends_on",
            Relation::PoweredBy => "powered_by",
            Relation::LocatedIn => "located_in",
            Relation::MemberOf => "member_of",
        }
    }

    /// Exact snake_case name, as in files and rules.
    pub fn parse(s: &str) -> Option<Relation> {
        Relation::ALL.into_iter().find(|r| r.as_str() == s)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of relation types as a bitmask, cheap to copy into hot loops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelationSet(u8);

impl RelationSet {
    pub const ALL: RelationSet = RelationSet(0x7f);

    pub fn of(rels: &[Relation]) -> Self {
        RelationSet(rels.iter().fold(0, |m, r| m | r.bit()))
    }

    pub fn contains(self, r: Relation) -> bool {
        self.0 & r.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Business criticality of a CI, most critical first (so `Ord` ranks by severity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criticality {
    Critical,
    High,
    Medium,
    Low,
}

impl Criticality {
    const ALL: [Criticality; 4] = [
        Criticality::Critical,
        Criticality::High,
        Criticality::Medium,
        Criticality::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Critical => "critical",
            Criticality::High => "high",
            Criticality::Medium => "medium",
            Criticality::Low => "low",
        }
    }

    /// Exact lowercase name, the same rule in JSON and CSV.
    pub fn parse(s: &str) -> Option<Criticality> {
        Criticality::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One CI as written in a CMDB file or an upsert op.
///
/// `Deserialize` is hand-written so an upsert over HTTP/NATS follows the file rules: unknown
/// fields become attributes instead of being dropped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CiSpec {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<Criticality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_group: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}

/// One relation: `from` depends on `to`. `Ord` is (from, type, to), the order of
/// [`Topology::to_spec`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelationSpec {
    pub from: String,
    #[serde(rename = "type")]
    pub kind: Relation,
    pub to: String,
}

/// A whole CMDB as loaded from a file, before validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CmdbSpec {
    pub cis: Vec<CiSpec>,
    pub relations: Vec<RelationSpec>,
}

/// One live change; serialized inside the engine's `CmdbChanged` fact and accepted over HTTP/NATS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CmdbOp {
    UpsertCi { ci: CiSpec },
    RemoveCi { id: String },
    AddRelation { relation: RelationSpec },
    RemoveRelation { relation: RelationSpec },
}

#[derive(Debug, thiserror::Error)]
pub enum CmdbError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Unreadable input: `file` is the path (`<json>`, `cis.csv`, `relations.csv` for text
    /// given in memory); `line` and `column` are 1-based where known.
    #[error("{file}{}: {message}", position(*.line, *.column))]
    Parse {
        file: String,
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },
    /// Readable but inconsistent: every problem found, not just the first.
    #[error("{}", summarize(.0))]
    Invalid(Vec<Problem>),
}

fn position(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn summarize(problems: &[Problem]) -> String {
    const SHOWN: usize = 10;
    let mut s = format!("invalid CMDB ({} problem(s))", problems.len());
    for (i, p) in problems.iter().take(SHOWN).enumerate() {
        s.push_str(if i == 0 { ": " } else { "; " });
        let _ = write!(s, "{p}");
    }
    if problems.len() > SHOWN {
        let _ = write!(s, "; and {} more", problems.len() - SHOWN);
    }
    s
}

/// One validation finding, e.g. `relation 12: unknown CI "host-99" in "to"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub location: String,
    pub message: String,
}

impl Problem {
    fn new(location: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

impl CmdbSpec {
    /// JSON file, or a directory holding `cis.csv` + `relations.csv`, or a path to `cis.csv` (its
    /// sibling `relations.csv` is used).
    ///
    /// Any path ending in `.csv` counts as the CI file; everything else that is not a
    /// directory is read as JSON.
    pub fn load(path: &Path) -> Result<CmdbSpec, CmdbError> {
        let (cis_path, rel_path) = if path.is_dir() {
            (path.join("cis.csv"), path.join("relations.csv"))
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            (path.to_path_buf(), path.with_file_name("relations.csv"))
        } else {
            let text = read(path)?;
            return parse_json(&text, &path.display().to_string());
        };
        let cis = read(&cis_path)?;
        let relations = read(&rel_path)?;
        parse_csv(
            &cis,
            &relations,
            &cis_path.display().to_string(),
            &rel_path.display().to_string(),
        )
    }

    pub fn from_json(text: &str) -> Result<CmdbSpec, CmdbError> {
        parse_json(text, "<json>")
    }

    pub fn from_csv(cis: &str, relations: &str) -> Result<CmdbSpec, CmdbError> {
        parse_csv(cis, relations, "cis.csv", "relations.csv")
    }

    /// Every problem, not just the first, so one run fixes a whole export: empty ids or types,
    /// duplicate ids, relations with unknown endpoints, self-loops, duplicate relations, and
    /// cycles among relations other than `connected_to` (network meshes may loop; dependency,
    /// containment and power must not). One cycle is reported per strongly connected group of
    /// CIs, as `a -runs_on-> b -hosted_on-> a`, located at the lowest-numbered relation on it.
    /// Unknown relation types and criticalities never get here: they are parse errors.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut ids: HashMap<&str, u32> = HashMap::with_capacity(self.cis.len());
        for (i, ci) in self.cis.iter().enumerate() {
            let loc = format!("ci {}", i + 1);
            if ci.id.is_empty() {
                problems.push(Problem::new(&loc, "empty id"));
            } else {
                match ids.entry(&ci.id) {
                    Entry::Occupied(o) => problems.push(Problem::new(
                        &loc,
                        format!("duplicate id {:?} (first at ci {})", ci.id, o.get() + 1),
                    )),
                    Entry::Vacant(v) => {
                        v.insert(i as u32);
                    }
                }
            }
            if ci.kind.is_empty() {
                problems.push(Problem::new(&loc, format!("{:?}: empty type", ci.id)));
            }
        }
        let mut graph = CycleGraph {
            names: self.cis.iter().map(|c| c.id.as_str()).collect(),
            adj: vec![Vec::new(); self.cis.len()],
        };
        let mut seen: HashMap<Triple<'_>, usize> = HashMap::with_capacity(self.relations.len());
        for (j, r) in self.relations.iter().enumerate() {
            let loc = format!("relation {}", j + 1);
            let from = ids.get(r.from.as_str()).copied();
            let to = ids.get(r.to.as_str()).copied();
            if from.is_none() {
                problems.push(Problem::new(
                    &loc,
                    format!("unknown CI {:?} in \"from\"", r.from),
                ));
            }
            if to.is_none() {
                problems.push(Problem::new(
                    &loc,
                    format!("unknown CI {:?} in \"to\"", r.to),
                ));
            }
            if r.from == r.to {
                problems.push(Problem::new(
                    &loc,
                    format!("self-loop: {:?} -{}-> itself", r.from, r.kind),
                ));
                continue;
            }
            match seen.entry((&r.from, r.kind, &r.to)) {
                Entry::Occupied(o) => {
                    problems.push(Problem::new(
                        &loc,
                        format!(
                            "duplicate of relation {} ({} -{}-> {})",
                            o.get() + 1,
                            r.from,
                            r.kind,
                            r.to
                        ),
                    ));
                    continue;
                }
                Entry::Vacant(v) => {
                    v.insert(j);
                }
            }
            if let (Some(a), Some(b)) = (from, to)
                && r.kind != Relation::ConnectedTo
            {
                graph.adj[a as usize].push((b, r.kind, j as u32));
            }
        }
        for (tag, text) in graph.cycles() {
            let loc = if tag == NO_TAG {
                "relations".to_string()
            } else {
                format!("relation {}", tag + 1)
            };
            problems.push(Problem::new(
                loc,
                format!("dependency cycle (only connected_to may loop): {text}"),
            ));
        }
        problems
    }
}

fn read(path: &Path) -> Result<String, CmdbError> {
    std::fs::read_to_string(path).map_err(|source| CmdbError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json(text: &str, file: &str) -> Result<CmdbSpec, CmdbError> {
    // Exports written by Windows tools often start with a byte-order mark (csv skips it too).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str::<JsonDoc>(text)
        .map(|d| d.0)
        .map_err(|e| {
            let (line, column) = (e.line(), e.column());
            let full = e.to_string();
            let suffix = format!(" at line {line} column {column}");
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
            let known = line > 0;
            CmdbError::Parse {
                file: file.to_string(),
                line: known.then_some(line as u64),
                column: known.then_some(column as u64),
                message,
            }
        })
}

/// The top-level JSON object; a private type so `CmdbSpec` keeps one way in (`from_json`).
struct JsonDoc(CmdbSpec);

impl<'de> Deserialize<'de> for JsonDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DocVisitor).map(JsonDoc)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = CmdbSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with \"cis\" and \"relations\" arrays")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CmdbSpec, A::Error> {
        let mut spec = CmdbSpec::default();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate field {key:?}")));
            }
            match key.as_str() {
                "cis" => spec.cis = map.next_value_seed(ListSeed(ItemKind::Ci))?.cis,
                "relations" => {
                    spec.relations = map.next_value_seed(ListSeed(ItemKind::Relation))?.relations
                }
                // A typo here would silently load an empty half of the CMDB.
                _ => {
                    return Err(de::Error::custom(format!(
                        "unknown top-level field {key:?} (expected \"cis\" and \"relations\")"
                    )));
                }
            }
        }
        Ok(spec)
    }
}

#[derive(Clone, Copy)]
enum ItemKind {
    Ci,
    Relation,
}

/// Reads the `cis` or `relations` array, numbering elements so messages can say which.
struct ListSeed(ItemKind);

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = CmdbSpec;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<CmdbSpec, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = CmdbSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            ItemKind::Ci => "an array of CI objects",
            ItemKind::Relation => "an array of relation objects",
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CmdbSpec, A::Error> {
        let mut out = CmdbSpec::default();
        match self.0 {
            ItemKind::Ci => {
                while let Some(ci) = seq.next_element_seed(CiVisitor {
                    ordinal: Some(out.cis.len() + 1),
                })? {
                    out.cis.push(ci);
                }
            }
            ItemKind::Relation => {
                while let Some(r) = seq.next_element_seed(RelVisitor {
                    ordinal: out.relations.len() + 1,
                })? {
                    out.relations.push(r);
                }
            }
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for CiSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CiVisitor { ordinal: None })
    }
}

struct CiVisitor {
    ordinal: Option<usize>,
}

impl CiVisitor {
    fn err<E: de::Error>(&self, msg: String) -> E {
        match self.ordinal {
            Some(n) => E::custom(format!("ci {n}: {msg}")),
            None => E::custom(msg),
        }
    }
}

impl<'de> DeserializeSeed<'de> for CiVisitor {
    type Value = CiSpec;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<CiSpec, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CiVisitor {
    type Value = CiSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CI object with \"id\" and \"type\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CiSpec, A::Error> {
        let mut id = None;
        let mut kind = None;
        let mut ci = CiSpec {
            id: String::new(),
            kind: String::new(),
            name: None,
            criticality: None,
            owner_group: None,
            attrs: BTreeMap::new(),
        };
        let mut attrs = BTreeMap::new();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(self.err(format!("duplicate field {key:?}")));
            }
            match key.as_str() {
                "id" => id = Some(map.next_value::<String>()?),
                "type" => kind = Some(map.next_value::<String>()?),
                "name" => ci.name = map.next_value()?,
                "owner_group" => ci.owner_group = map.next_value()?,
                "criticality" => {
                    if let Some(s) = map.next_value::<Option<String>>()? {
                        ci.criticality = Some(Criticality::parse(&s).ok_or_else(|| {
                            self.err::<A::Error>(format!(
                                "unknown criticality {s:?} (expected critical, high, medium or low)"
                            ))
                        })?);
                    }
                }
                "attrs" => {
                    let m: Option<BTreeMap<String, serde_json::Value>> = map.next_value()?;
                    for (k, v) in m.unwrap_or_default() {
                        if let Some(s) = attr_string(v) {
                            attrs.insert(k, s);
                        }
                    }
                }
                _ => {
                    if let Some(s) = attr_string(map.next_value()?) {
                        ci.attrs.insert(key, s);
                    }
                }
            }
        }
        ci.id = id.ok_or_else(|| self.err::<A::Error>("missing field \"id\"".into()))?;
        ci.kind = kind.ok_or_else(|| self.err::<A::Error>("missing field \"type\"".into()))?;
        ci.attrs.extend(attrs);
        Ok(ci)
    }
}

/// Attribute values are strings so CSV and JSON agree; `null` means absent.
fn attr_string(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

struct RelVisitor {
    ordinal: usize,
}

impl RelVisitor {
    fn err<E: de::Error>(&self, msg: String) -> E {
        E::custom(format!("relation {}: {msg}", self.ordinal))
    }
}

impl<'de> DeserializeSeed<'de> for RelVisitor {
    type Value = RelationSpec;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RelationSpec, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RelVisitor {
    type Value = RelationSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a relation object with \"from\", \"type\" and \"to\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RelationSpec, A::Error> {
        let (mut from, mut kind, mut to) = (None, None, None);
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(self.err(format!("duplicate field {key:?}")));
            }
            match key.as_str() {
                "from" => from = Some(map.next_value::<String>()?),
                "to" => to = Some(map.next_value::<String>()?),
                "type" => {
                    let s: String = map.next_value()?;
                    kind = Some(parse_relation(&s).map_err(|m| self.err::<A::Error>(m))?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = |f: &str| self.err::<A::Error>(format!("missing field {f:?}"));
        Ok(RelationSpec {
            from: from.ok_or_else(|| missing("from"))?,
            kind: kind.ok_or_else(|| missing("type"))?,
            to: to.ok_or_else(|| missing("to"))?,
        })
    }
}

fn parse_relation(s: &str) -> Result<Relation, String> {
    Relation::parse(s).ok_or_else(|| {
        format!(
            "unknown relation type {s:?} (expected one of {})",
            Relation::ALL.map(Relation::as_str).join(", ")
        )
    })
}

fn parse_csv(
    cis: &str,
    relations: &str,
    cis_file: &str,
    rel_file: &str,
) -> Result<CmdbSpec, CmdbError> {
    Ok(CmdbSpec {
        cis: parse_cis_csv(cis, cis_file)?,
        relations: parse_relations_csv(relations, rel_file)?,
    })
}

fn csv_reader(text: &str) -> csv::Reader<&[u8]> {
    // Headers are trimmed ("id, type" is a common hand edit); cells are kept exactly, as in JSON.
    csv::ReaderBuilder::new()
        .trim(csv::Trim::Headers)
        .from_reader(text.as_bytes())
}

fn csv_error(file: &str, e: &csv::Error) -> CmdbError {
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("record has {len} fields, the header has {expected_len}"),
        _ => e.to_string(),
    };
    CmdbError::Parse {
        file: file.to_string(),
        line: e.position().map(|p| p.line()),
        column: None,
        message,
    }
}

fn parse_error(file: &str, line: Option<u64>, message: String) -> CmdbError {
    CmdbError::Parse {
        file: file.to_string(),
        line,
        column: None,
        message,
    }
}

/// The header's column names, refusing empty and repeated names and requiring `required`.
fn csv_header(
    rdr: &mut csv::Reader<&[u8]>,
    file: &str,
    required: &[&str],
) -> Result<Vec<String>, CmdbError> {
    let header = rdr.headers().map_err(|e| csv_error(file, &e))?;
    let line = header.position().map(|p| p.line()).or(Some(1));
    let names: Vec<String> = header.iter().map(str::to_string).collect();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() && names.len() > 1 {
            return Err(parse_error(
                file,
                line,
                format!("header column {} has no name", i + 1),
            ));
        }
        if names[..i].contains(n) {
            return Err(parse_error(
                file,
                line,
                format!("header names column {n:?} twice"),
            ));
        }
    }
    for r in required {
        if !names.iter().any(|n| n == r) {
            return Err(parse_error(
                file,
                line,
                format!(
                    "header lacks column {r:?} (required: {})",
                    required.join(", ")
                ),
            ));
        }
    }
    Ok(names)
}

fn parse_cis_csv(text: &str, file: &str) -> Result<Vec<CiSpec>, CmdbError> {
    let mut rdr = csv_reader(text);
    let names = csv_header(&mut rdr, file, &["id", "type"])?;
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(file, &e))?;
        let line = rec.position().map(|p| p.line());
        let mut ci = CiSpec {
            id: String::new(),
            kind: String::new(),
            name: None,
            criticality: None,
            owner_group: None,
            attrs: BTreeMap::new(),
        };
        for (col, cell) in names.iter().zip(rec.iter()) {
            if cell.is_empty() {
                continue;
            }
            match col.as_str() {
                "id" => ci.id = cell.to_string(),
                "type" => ci.kind = cell.to_string(),
                "name" => ci.name = Some(cell.to_string()),
                "owner_group" => ci.owner_group = Some(cell.to_string()),
                "criticality" => {
                    ci.criticality = Some(Criticality::parse(cell).ok_or_else(|| {
                        parse_error(
                            file,
                            line,
                            format!(
                                "ci {}: unknown criticality {cell:?} (expected critical, high, medium or low)",
                                out.len() + 1
                            ),
                        )
                    })?);
                }
                _ => {
                    ci.attrs.insert(col.clone(), cell.to_string());
                }
            }
        }
        out.push(ci);
    }
    Ok(out)
}

fn parse_relations_csv(text: &str, file: &str) -> Result<Vec<RelationSpec>, CmdbError> {
    let mut rdr = csv_reader(text);
    let names = csv_header(&mut rdr, file, &["from", "type", "to"])?;
    let col = |n: &str| names.iter().position(|c| c == n).unwrap_or(0);
    let (from, kind, to) = (col("from"), col("type"), col("to"));
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(file, &e))?;
        let line = rec.position().map(|p| p.line());
        let cell = |i: usize| rec.get(i).unwrap_or("").to_string();
        let kind = parse_relation(&cell(kind))
            .map_err(|m| parse_error(file, line, format!("relation {}: {m}", out.len() + 1)))?;
        out.push(RelationSpec {
            from: cell(from),
            kind,
            to: cell(to),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Cycle detection, shared by `CmdbSpec::check` and `Topology::validate`.

type Triple<'a> = (&'a str, Relation, &'a str);

/// Edge tag for edges no relation number or op can be blamed for.
const NO_TAG: u32 = u32::MAX;

/// A compact directed graph of the relations that must stay acyclic; each edge carries a tag
/// (relation or op number) so a cycle can be located.
struct CycleGraph<'a> {
    names: Vec<&'a str>,
    adj: Vec<Vec<(u32, Relation, u32)>>,
}

impl CycleGraph<'_> {
    /// One cycle per strongly connected component, as (smallest tag on it, rendered path),
    /// ordered by the component's smallest node.
    fn cycles(&self) -> Vec<(u32, String)> {
        let comps = strongly_connected(&self.adj);
        let mut comp_of = vec![u32::MAX; self.adj.len()];
        let mut starts = Vec::with_capacity(comps.len());
        for (k, comp) in comps.iter().enumerate() {
            for &v in comp {
                comp_of[v as usize] = k as u32;
            }
            if let Some(&min) = comp.iter().min() {
                starts.push((min, k as u32, comp.len()));
            }
        }
        starts.sort_unstable();
        starts
            .into_iter()
            .map(|(start, k, size)| {
                self.cycle_through(start, k, &comp_of).unwrap_or_else(|| {
                    (NO_TAG, format!("{size} CIs around {:?}", self.name(start)))
                })
            })
            .collect()
    }

    fn name(&self, v: u32) -> &str {
        self.names.get(v as usize).copied().unwrap_or("?")
    }

    /// Shortest cycle through `start` inside its component (breadth-first, so deterministic).
    fn cycle_through(&self, start: u32, comp: u32, comp_of: &[u32]) -> Option<(u32, String)> {
        let mut parent: HashMap<u32, (u32, Relation, u32)> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for &(w, rel, tag) in &self.adj[v as usize] {
                if comp_of[w as usize] != comp {
                    continue;
                }
                if w == start {
                    let mut steps = vec![(rel, w, tag)];
                    let mut cur = v;
                    while cur != start {
                        let &(p, r, t) = parent.get(&cur)?;
                        steps.push((r, cur, t));
                        cur = p;
                    }
                    steps.reverse();
                    let mut text = self.name(start).to_string();
                    let mut min_tag = NO_TAG;
                    for (r, node, t) in steps {
                        let _ = write!(text, " -{r}-> {}", self.name(node));
                        min_tag = min_tag.min(t);
                    }
                    return Some((min_tag, text));
                }
                if let Entry::Vacant(e) = parent.entry(w) {
                    e.insert((v, rel, tag));
                    queue.push_back(w);
                }
            }
        }
        None
    }
}

/// Tarjan's algorithm, iterative so a 100k-deep dependency chain cannot overflow the stack.
/// Returns only components with more than one node.
fn strongly_connected(adj: &[Vec<(u32, Relation, u32)>]) -> Vec<Vec<u32>> {
    const UNSEEN: u32 = u32::MAX;
    let n = adj.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut call: Vec<(u32, usize)> = Vec::new();
    let mut next = 0u32;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root as u32);
        on_stack[root] = true;
        call.push((root as u32, 0));
        while let Some(frame) = call.last_mut() {
            let v = frame.0 as usize;
            if let Some(&(w, _, _)) = adj[v].get(frame.1) {
                frame.1 += 1;
                let wu = w as usize;
                if index[wu] == UNSEEN {
                    index[wu] = next;
                    low[wu] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[wu] = true;
                    call.push((w, 0));
                } else if on_stack[wu] {
                    low[v] = low[v].min(index[wu]);
                }
            } else {
                call.pop();
                if let Some(&(u, _)) = call.last() {
                    let u = u as usize;
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w as usize] = false;
                        comp.push(w);
                        if w as usize == v {
                            break;
                        }
                    }
                    if comp.len() > 1 {
                        out.push(comp);
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Runtime graph

/// Runtime CI data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ci {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub criticality: Option<Criticality>,
    pub owner_group: Option<String>,
    pub attrs: BTreeMap<String, String>,
}

impl Ci {
    fn from_spec(c: &CiSpec) -> Ci {
        Ci {
            id: c.id.clone(),
            kind: c.kind.clone(),
            name: c.name.clone(),
            criticality: c.criticality,
            owner_group: c.owner_group.clone(),
            attrs: c.attrs.clone(),
        }
    }

    fn to_spec(&self) -> CiSpec {
        CiSpec {
            id: self.id.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            criticality: self.criticality,
            owner_group: self.owner_group.clone(),
            attrs: self.attrs.clone(),
        }
    }

    fn same_as(&self, c: &CiSpec) -> bool {
        self.id == c.id
            && self.kind == c.kind
            && self.name == c.name
            && self.criticality == c.criticality
            && self.owner_group == c.owner_group
            && self.attrs == c.attrs
    }

    /// What stays of a removed CI: its id, so the same id can revive the same index.
    fn tombstone(id: String) -> Ci {
        Ci {
            id,
            kind: String::new(),
            name: None,
            criticality: None,
            owner_group: None,
            attrs: BTreeMap::new(),
        }
    }
}

/// How a CI reached in a neighbourhood search relates to the start CI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Start depends on it (transitively).
    Upstream,
    /// It depends on start (transitively).
    Downstream,
    /// Shares a direct upstream parent with start: `start -> p <- it`.
    Sibling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    pub ci: CiIdx,
    pub hops: u8,
    pub direction: Direction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Edge {
    other: CiIdx,
    rel: Relation,
}

/// Lookup-key precedence: a CI id beats an attribute value, whatever the load order.
const TIER_ID: u8 = 0;
const TIER_ATTR: u8 = 1;
/// Attributes whose values identify a CI in alert labels.
const KEY_ATTRS: [&str; 4] = ["hostname", "fqdn", "ip", "instance"];
/// Alert labels tried by `resolve`, in order.
const KEY_LABELS: [&str; 6] = ["instance", "hostname", "host", "node", "ip", "fqdn"];

/// The in-memory graph: integer ids, adjacency lists both ways, lookup keys, and each CI's impacted
/// business services precomputed.
///
/// Removed CIs stay as tombstones so indexes held elsewhere never point at a different CI.
/// `Sync`: the walk scratch space sits behind a mutex that is only ever `try_lock`ed.
/// Serializable (for snapshots) with its indexes intact, so CI indexes held elsewhere stay
/// valid after a restore; the walk scratch is rebuilt empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    cis: Vec<Ci>,
    live: Vec<bool>,
    live_count: usize,
    /// Out-edges (what each CI depends on), in relation load order.
    out: Vec<Vec<Edge>>,
    /// In-edges (each CI's dependents), in relation load order.
    inc: Vec<Vec<Edge>>,
    /// In-edge count per relation type, so `fan_in` is a 7-term sum.
    fan_in: Vec<[u32; 7]>,
    /// Every id ever seen, tombstones included, so a re-added id gets its old index back.
    by_id: FastMap<String, CiIdx>,
    /// Lowercased CI ids and key attribute values → CI; the smallest (tier, index) wins.
    keys: KeyIndex,
    /// Lowercased short host names (before the first dot) → CI; the smallest index wins.
    short_keys: KeyIndex,
    /// Impacted services as CSR: `svc_list[svc_start[i]..svc_start[i + 1]]`.
    svc_start: Vec<u32>,
    svc_list: Vec<CiIdx>,
    #[serde(skip)]
    scratch: ScratchCell,
}

impl Topology {
    /// Builds the graph, refusing a spec whose `check()` finds problems.
    pub fn from_spec(spec: &CmdbSpec) -> Result<Topology, CmdbError> {
        if u32::try_from(spec.cis.len()).is_err() {
            return Err(CmdbError::Invalid(vec![Problem::new(
                "cis",
                "more CIs than a 32-bit index can address",
            )]));
        }
        let problems = spec.check();
        if !problems.is_empty() {
            return Err(CmdbError::Invalid(problems));
        }
        let n = spec.cis.len();
        let mut t = Topology {
            cis: spec.cis.iter().map(Ci::from_spec).collect(),
            live: vec![true; n],
            live_count: n,
            out: vec![Vec::new(); n],
            inc: vec![Vec::new(); n],
            by_id: FastMap::with_capacity(n),
            ..Topology::default()
        };
        for (i, c) in spec.cis.iter().enumerate() {
            t.by_id.insert(c.id.clone(), i as CiIdx);
        }
        for r in &spec.relations {
            if let (Some(&a), Some(&b)) = (t.by_id.get(&r.from), t.by_id.get(&r.to)) {
                t.out[a as usize].push(Edge {
                    other: b,
                    rel: r.kind,
                });
                t.inc[b as usize].push(Edge {
                    other: a,
                    rel: r.kind,
                });
            }
        }
        t.recount_fan_in();
        for i in 0..n {
            t.index_keys(i as CiIdx, true);
        }
        t.rebuild_services();
        Ok(t)
    }

    /// Live CIs.
    pub fn len(&self) -> usize {
        self.live_count
    }

    pub fn is_empty(&self) -> bool {
        self.live_count == 0
    }

    /// The live CI with this exact id.
    pub fn index(&self, id: &str) -> Option<CiIdx> {
        self.by_id.get(id).copied().filter(|&i| self.is_live(i))
    }

    /// The CI at `idx`; `None` for an index out of range or a removed CI (tombstone).
    pub fn ci(&self, idx: CiIdx) -> Option<&Ci> {
        self.slot(idx).map(|i| &self.cis[i])
    }

    fn slot(&self, idx: CiIdx) -> Option<usize> {
        let i = idx as usize;
        self.live.get(i).copied().unwrap_or(false).then_some(i)
    }

    fn is_live(&self, idx: CiIdx) -> bool {
        self.slot(idx).is_some()
    }

    fn id_of(&self, idx: CiIdx) -> &str {
        self.cis.get(idx as usize).map_or("", |c| c.id.as_str())
    }

    /// Resolves an alert to a CI: by `ci` id first; else by lookup keys from labels, in order
    /// `instance` (with or without `:port`, also `[v6]:port`), `hostname`, `host`, `node`, `ip`,
    /// `fqdn`, matched against CI ids, and against attrs `hostname`, `fqdn`, `ip`, `instance` (and
    /// `aliases`, a comma-separated list), case-insensitively for hostnames; a hostname key also
    /// matches its short form.
    ///
    /// Precisely: the exact `ci` id, then the `ci` value treated like a label value, then each
    /// label in the order above. A value is tried whole, then (for `instance`) without scheme,
    /// path and port, then by its short form (before the first dot, never for an IP address)
    /// against CI ids and the short forms of `hostname`/`fqdn`/`aliases`. All label matching is
    /// ASCII case-insensitive. When several CIs share a key, a CI id beats an attribute and
    /// otherwise the lowest index (load order, then order of addition) wins.
    pub fn resolve(&self, ci: Option<&str>, labels: &BTreeMap<String, String>) -> Option<CiIdx> {
        if let Some(id) = ci {
            if let Some(i) = self.index(id) {
                return Some(i);
            }
            if let Some(i) = self.lookup(id, false) {
                return Some(i);
            }
        }
        KEY_LABELS.iter().find_map(|label| {
            labels
                .get(*label)
                .and_then(|v| self.lookup(v, *label == "instance"))
        })
    }

    fn lookup(&self, raw: &str, instance: bool) -> Option<CiIdx> {
        let v = raw.trim();
        if v.is_empty() {
            return None;
        }
        let v = lower(v);
        if let Some(i) = self.key(&v) {
            return Some(i);
        }
        let host = if instance { instance_host(&v) } else { &v };
        if host != v.as_ref()
            && let Some(i) = self.key(host)
        {
            return Some(i);
        }
        let short = short_form(host)?;
        self.key(short).or_else(|| self.short_keys.get(short))
    }

    fn key(&self, k: &str) -> Option<CiIdx> {
        self.keys.get(k)
    }

    /// Business services (CIs of type `service`) that depend on `idx` transitively along any
    /// relation type, including `idx` itself if it is a service; sorted by CI id; precomputed
    /// (recomputed after changes), so O(1) here.
    pub fn services(&self, idx: CiIdx) -> &[CiIdx] {
        let i = idx as usize;
        match (self.svc_start.get(i), self.svc_start.get(i + 1)) {
            (Some(&a), Some(&b)) => self.svc_list.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// What `idx` directly depends on, as `(relation, CI)` in load order (live CIs only), for
    /// pictures of a neighbourhood.
    pub fn depends_on(&self, idx: CiIdx) -> impl Iterator<Item = (Relation, CiIdx)> + '_ {
        self.out
            .get(idx as usize)
            .into_iter()
            .flatten()
            .filter(|e| self.is_live(e.other))
            .map(|e| (e.rel, e.other))
    }

    /// What directly depends on `idx`, as `(relation, CI)` in load order (live CIs only).
    pub fn dependents(&self, idx: CiIdx) -> impl Iterator<Item = (Relation, CiIdx)> + '_ {
        self.inc
            .get(idx as usize)
            .into_iter()
            .flatten()
            .filter(|e| self.is_live(e.other))
            .map(|e| (e.rel, e.other))
    }

    /// Dependents of `idx` via relations in `rels` (its direct fan-in).
    ///
    /// Counts in-edges: a dependent linked by two relation types in `rels` counts twice.
    pub fn fan_in(&self, idx: CiIdx, rels: RelationSet) -> usize {
        let Some(counts) = self.fan_in.get(idx as usize) else {
            return 0;
        };
        Relation::ALL
            .iter()
            .filter(|r| rels.contains(**r))
            .map(|r| counts[*r as usize] as usize)
            .sum()
    }

    /// Bounded neighbourhood of `start` along `rels`, breadth-first, appended to `out` (cleared
    /// first) in a deterministic order (BFS order following adjacency-list order), `start` itself
    /// excluded:
    ///  - Upstream: follow out-edges (start depends on …) up to `max_hops`;
    ///  - Downstream: follow in-edges up to `max_hops`;
    ///  - Sibling: CIs x with `start -r1-> p <-r2- x`, both r1, r2 in rels, p not a hub (hops = 2,
    ///    so only when `max_hops >= 2`);
    ///  - Hubs: a CI whose fan_in(rels) > max_fan_in is never expanded (it can be reached and
    ///    reported, but the walk does not continue through it), except `start` itself, which is
    ///    always expanded. A CI is reported once, at its first reach; Upstream is explored before
    ///    Downstream before Sibling. Each direction walks through CIs already reported by an
    ///    earlier one (a `connected_to` loop can make a CI both), so nothing behind them is missed.
    ///  - Stops adding at `max_nodes` (a safety valve) and returns true when something was left
    ///    out.
    ///
    /// Allocation-free apart from growing `out` (the visited marks are reused epoch stamps).
    pub fn neighborhood(
        &self,
        start: CiIdx,
        rels: RelationSet,
        max_hops: u8,
        max_fan_in: usize,
        max_nodes: usize,
        out: &mut Vec<Reach>,
    ) -> bool {
        self.neighborhood_where(start, rels, max_hops, max_fan_in, max_nodes, |_| true, out)
    }

    /// [`neighborhood`](Self::neighborhood) keeping only the CIs for which `keep` holds:
    /// exactly its result filtered by `keep`, in the same order, with the same truncation
    /// (every reached CI counts towards `max_nodes`, kept or not). Correlation wants only the
    /// few CIs that have open incidents out of a rack's worth of siblings; filtering during
    /// the walk saves collecting the rest only to drop them. `keep` must be a pure test: it
    /// may be asked about a CI more than once.
    #[allow(clippy::too_many_arguments)] // the walk's bounds, each a rule's setting
    pub fn neighborhood_where(
        &self,
        start: CiIdx,
        rels: RelationSet,
        max_hops: u8,
        max_fan_in: usize,
        max_nodes: usize,
        keep: impl Fn(CiIdx) -> bool,
        out: &mut Vec<Reach>,
    ) -> bool {
        out.clear();
        if !self.is_live(start) || rels.is_empty() {
            return false;
        }
        let walk = Walk {
            start,
            rels,
            max_hops,
            max_fan_in,
            max_nodes,
        };
        self.scratch.with(|s| self.walk(s, walk, keep, out))
    }

    fn is_hub(&self, v: CiIdx, rels: RelationSet, max_fan_in: usize) -> bool {
        self.fan_in(v, rels) > max_fan_in
    }

    fn walk(
        &self,
        s: &mut Scratch,
        w: Walk,
        keep: impl Fn(CiIdx) -> bool,
        out: &mut Vec<Reach>,
    ) -> bool {
        s.prepare(self.cis.len());
        let reported = s.next_epoch();
        s.mark[w.start as usize] = reported;
        // CIs reported so far, kept or not: the `max_nodes` valve counts them all.
        let mut count = 0;
        for dir in [Direction::Upstream, Direction::Downstream] {
            let seen = s.next_epoch();
            s.seen[w.start as usize] = seen;
            s.queue.clear();
            s.queue.push((w.start, 0));
            let mut head = 0;
            while let Some(&(v, h)) = s.queue.get(head) {
                head += 1;
                if h >= w.max_hops || (v != w.start && self.is_hub(v, w.rels, w.max_fan_in)) {
                    continue;
                }
                let edges = match dir {
                    Direction::Upstream => &self.out[v as usize],
                    _ => &self.inc[v as usize],
                };
                for e in edges {
                    let o = e.other as usize;
                    if !w.rels.contains(e.rel) || s.seen[o] == seen {
                        continue;
                    }
                    s.seen[o] = seen;
                    if s.mark[o] != reported {
                        if count >= w.max_nodes {
                            return true;
                        }
                        count += 1;
                        s.mark[o] = reported;
                        if keep(e.other) {
                            out.push(Reach {
                                ci: e.other,
                                hops: h + 1,
                                direction: dir,
                            });
                        }
                    }
                    s.queue.push((e.other, h + 1));
                }
            }
        }
        if w.max_hops >= 2 {
            let parents = || {
                self.out[w.start as usize].iter().filter(|up| {
                    w.rels.contains(up.rel) && !self.is_hub(up.other, w.rels, w.max_fan_in)
                })
            };
            // When even reporting every sibling could not trip the valve, a sibling that is
            // not kept needs no mark and no count: nothing about it can reach `out`. A rack's
            // worth of siblings then costs a bit test each.
            let bound: usize = parents().map(|up| self.inc[up.other as usize].len()).sum();
            let room = count + bound <= w.max_nodes;
            for up in parents() {
                for down in &self.inc[up.other as usize] {
                    if !w.rels.contains(down.rel) {
                        continue;
                    }
                    let kept = keep(down.other);
                    let x = down.other as usize;
                    if (room && !kept) || s.mark[x] == reported {
                        continue;
                    }
                    if count >= w.max_nodes {
                        return true;
                    }
                    count += 1;
                    s.mark[x] = reported;
                    if kept {
                        out.push(Reach {
                            ci: down.other,
                            hops: 2,
                            direction: Direction::Sibling,
                        });
                    }
                }
            }
        }
        false
    }

    /// Human path from `from` to `to` along `rels` within `max_hops` (shortest, BFS over both edge
    /// directions), e.g. `host-7 -connected_to-> tor-3` or `tor-3 <-connected_to- host-7` or
    /// `host-7 -connected_to-> tor-3 <-connected_to- host-9`; each step printed as `a -rel-> b`
    /// when a depends on b, `a <-rel- b` when b depends on a. None if unreachable.
    ///
    /// Hubs are not avoided (this explains, it does not decide); `from == to` gives the bare id.
    pub fn path(&self, from: CiIdx, to: CiIdx, rels: RelationSet, max_hops: u8) -> Option<String> {
        let mut text = String::new();
        self.write_path(from, to, rels, max_hops, &mut text)
            .then_some(text)
    }

    /// [`path`](Self::path) appended to `out`; false (and nothing appended) if unreachable.
    /// The engine writes paths straight into its reasons, without a string of their own.
    pub fn write_path(
        &self,
        from: CiIdx,
        to: CiIdx,
        rels: RelationSet,
        max_hops: u8,
        out: &mut String,
    ) -> bool {
        if !self.is_live(from) || !self.is_live(to) {
            return false;
        }
        if from == to {
            out.push_str(self.id_of(from));
            return true;
        }
        self.scratch.with(|s| {
            s.prepare(self.cis.len());
            let seen = s.next_epoch();
            s.seen[from as usize] = seen;
            s.queue.clear();
            s.queue.push((from, 0));
            let mut head = 0;
            while let Some(&(v, h)) = s.queue.get(head) {
                head += 1;
                if h >= max_hops {
                    continue;
                }
                for (forward, edges) in [
                    (true, &self.out[v as usize]),
                    (false, &self.inc[v as usize]),
                ] {
                    for e in edges {
                        let o = e.other as usize;
                        if !rels.contains(e.rel) || s.seen[o] == seen {
                            continue;
                        }
                        s.seen[o] = seen;
                        s.parent[o] = Step {
                            prev: v,
                            rel: e.rel,
                            forward,
                        };
                        if e.other == to {
                            self.render_path(s, from, to, max_hops, out);
                            return true;
                        }
                        s.queue.push((e.other, h + 1));
                    }
                }
            }
            false
        })
    }

    /// Writes the path the search left in `s.parent`, from `from` to `to`, into `out`:
    /// sized in one pass back along the parents, then each step found by walking back
    /// again (paths are a few hops, so that beats collecting the steps in a vector).
    fn render_path(&self, s: &Scratch, from: CiIdx, to: CiIdx, max_hops: u8, out: &mut String) {
        let (mut steps, mut len, mut cur) = (0, self.id_of(from).len(), to);
        while cur != from && steps < max_hops {
            let step = s.parent[cur as usize];
            len += step.rel.as_str().len() + self.id_of(cur).len() + 5;
            steps += 1;
            cur = step.prev;
        }
        out.reserve(len);
        out.push_str(self.id_of(from));
        for back in (0..steps).rev() {
            let mut node = to;
            for _ in 0..back {
                node = s.parent[node as usize].prev;
            }
            let step = s.parent[node as usize];
            out.push_str(if step.forward { " -" } else { " <-" });
            out.push_str(step.rel.as_str());
            out.push_str(if step.forward { "-> " } else { "- " });
            out.push_str(self.id_of(node));
        }
    }

    /// True if `up` is upstream of `down` (down depends on up transitively) within max_hops along
    /// rels.
    ///
    /// A CI is not upstream of itself; hubs are walked through.
    pub fn is_upstream(&self, up: CiIdx, down: CiIdx, rels: RelationSet, max_hops: u8) -> bool {
        if up == down || !self.is_live(up) || !self.is_live(down) {
            return false;
        }
        self.scratch.with(|s| {
            s.prepare(self.cis.len());
            let seen = s.next_epoch();
            s.seen[down as usize] = seen;
            s.queue.clear();
            s.queue.push((down, 0));
            let mut head = 0;
            while let Some(&(v, h)) = s.queue.get(head) {
                head += 1;
                if h >= max_hops {
                    continue;
                }
                for e in &self.out[v as usize] {
                    if !rels.contains(e.rel) || s.seen[e.other as usize] == seen {
                        continue;
                    }
                    if e.other == up {
                        return true;
                    }
                    s.seen[e.other as usize] = seen;
                    s.queue.push((e.other, h + 1));
                }
            }
            false
        })
    }

    fn has_edge(&self, from: &str, rel: Relation, to: &str) -> bool {
        match (self.index(from), self.index(to)) {
            (Some(a), Some(b)) => self.out[a as usize]
                .iter()
                .any(|e| e.other == b && e.rel == rel),
            _ => false,
        }
    }

    /// Ops that turn this topology into `spec`, in a deterministic order (upserts of new/changed
    /// CIs in spec order, relation additions in spec order, relation removals in sorted order, CI
    /// removals last in index order — removing a CI removes its relations, so those are not
    /// listed). Empty when equal.
    pub fn diff(&self, spec: &CmdbSpec) -> Vec<CmdbOp> {
        let mut ops = Vec::new();
        for c in &spec.cis {
            let same = self
                .index(&c.id)
                .and_then(|i| self.ci(i))
                .is_some_and(|ci| ci.same_as(c));
            if !same {
                ops.push(CmdbOp::UpsertCi { ci: c.clone() });
            }
        }
        let mut wanted: HashSet<Triple<'_>> = HashSet::with_capacity(spec.relations.len());
        for r in &spec.relations {
            if wanted.insert((&r.from, r.kind, &r.to)) && !self.has_edge(&r.from, r.kind, &r.to) {
                ops.push(CmdbOp::AddRelation {
                    relation: r.clone(),
                });
            }
        }
        let keep: HashSet<&str> = spec.cis.iter().map(|c| c.id.as_str()).collect();
        let mut unwanted = Vec::new();
        for (i, edges) in self.out.iter().enumerate() {
            let from = self.cis[i].id.as_str();
            if !self.live[i] || !keep.contains(from) {
                continue;
            }
            for e in edges {
                let to = self.id_of(e.other);
                if keep.contains(to) && !wanted.contains(&(from, e.rel, to)) {
                    unwanted.push(RelationSpec {
                        from: from.to_string(),
                        kind: e.rel,
                        to: to.to_string(),
                    });
                }
            }
        }
        unwanted.sort_unstable();
        ops.extend(
            unwanted
                .into_iter()
                .map(|relation| CmdbOp::RemoveRelation { relation }),
        );
        for (i, c) in self.cis.iter().enumerate() {
            if self.live[i] && !keep.contains(c.id.as_str()) {
                ops.push(CmdbOp::RemoveCi { id: c.id.clone() });
            }
        }
        ops
    }

    /// Checks that applying `ops` in order to this topology is valid (endpoints exist at the time
    /// of each op, no new cycles outside connected_to, ids and types non-empty, no duplicate
    /// relation, no self-loop, removals name something that exists), without changing anything.
    /// Used before ops are recorded.
    ///
    /// Cycles are judged on the state after the whole batch, and only the part of the graph
    /// upstream of added relations is searched, so a one-op change costs little on a big CMDB.
    pub fn validate(&self, ops: &[CmdbOp]) -> Result<(), Vec<Problem>> {
        let mut ov = Overlay::new(self);
        let mut problems = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            ov.step(i, op, &mut problems);
        }
        problems.extend(ov.cycles());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Applies ops (already validated). Removing a CI keeps its index stable (tombstone) so
    /// indexes held elsewhere stay meaningful; `index(id)` stops finding it; re-adding the same
    /// id later gets the same index back (so the tombstone list cannot grow under churn).
    /// Fan-in counts and lookup keys are maintained per op (a few hash operations each, and
    /// equal to a rebuild); impacted services are recomputed once after a batch that changed
    /// anything.
    ///
    /// Ops `validate` would refuse for their own sake are skipped rather than panicking (an
    /// unknown endpoint, a duplicate or self-loop relation, an empty id), so replaying a damaged
    /// log stays safe; a cycle is applied as given, since every walk here tolerates one.
    pub fn apply(&mut self, ops: &[CmdbOp]) {
        let mut batch = Batch::default();
        for op in ops {
            match op {
                CmdbOp::UpsertCi { ci } => self.upsert(ci, &mut batch),
                CmdbOp::RemoveCi { id } => self.remove_ci(id, &mut batch),
                CmdbOp::AddRelation { relation } => self.add_relation(relation, &mut batch),
                CmdbOp::RemoveRelation { relation } => self.remove_relation(relation, &mut batch),
            }
        }
        self.flush(&mut batch);
        if batch.changed {
            self.rebuild_services();
        }
    }

    fn upsert(&mut self, c: &CiSpec, batch: &mut Batch) {
        if c.id.is_empty() {
            return;
        }
        batch.changed = true;
        let i = match self.by_id.get(&c.id).copied() {
            Some(i) => {
                let iu = i as usize;
                if self.live[iu] {
                    self.index_keys(i, false);
                } else {
                    // Stale edges may still point at this index; clear them before it lives.
                    self.flush(batch);
                    self.live[iu] = true;
                    self.live_count += 1;
                }
                self.cis[iu] = Ci::from_spec(c);
                i
            }
            None => {
                let Ok(i) = CiIdx::try_from(self.cis.len()) else {
                    return;
                };
                self.by_id.insert(c.id.clone(), i);
                self.cis.push(Ci::from_spec(c));
                self.live.push(true);
                self.out.push(Vec::new());
                self.inc.push(Vec::new());
                self.fan_in.push([0; 7]);
                self.live_count += 1;
                i
            }
        };
        self.index_keys(i, true);
    }

    /// Drops the CI's own edge lists now; its neighbours' entries pointing at it are left for
    /// `flush`, so removing many CIs under one hub costs one pass over the hub, not one each.
    fn remove_ci(&mut self, id: &str, batch: &mut Batch) {
        let Some(i) = self.index(id) else {
            return;
        };
        batch.changed = true;
        self.index_keys(i, false);
        let x = i;
        let i = i as usize;
        for e in std::mem::take(&mut self.out[i]) {
            let o = e.other as usize;
            if self.live[o] && !batch.pending.contains(&(x, e.rel, e.other)) {
                let c = &mut self.fan_in[o][e.rel as usize];
                *c = c.saturating_sub(1);
            }
            batch.dirty.push(e.other);
        }
        for e in std::mem::take(&mut self.inc[i]) {
            batch.dirty.push(e.other);
        }
        self.fan_in[i] = [0; 7];
        self.live[i] = false;
        self.live_count -= 1;
        let id = std::mem::take(&mut self.cis[i].id);
        self.cis[i] = Ci::tombstone(id);
    }

    fn add_relation(&mut self, r: &RelationSpec, batch: &mut Batch) {
        let (Some(a), Some(b)) = (self.index(&r.from), self.index(&r.to)) else {
            return;
        };
        if a == b {
            return;
        }
        if self.out[a as usize]
            .iter()
            .any(|e| e.other == b && e.rel == r.kind)
        {
            // Present, or removed earlier in this batch and not yet flushed: keep it.
            if batch.pending.remove(&(a, r.kind, b)) {
                self.fan_in[b as usize][r.kind as usize] += 1;
            }
            return;
        }
        batch.changed = true;
        self.fan_in[b as usize][r.kind as usize] += 1;
        self.out[a as usize].push(Edge {
            other: b,
            rel: r.kind,
        });
        self.inc[b as usize].push(Edge {
            other: a,
            rel: r.kind,
        });
    }

    fn remove_relation(&mut self, r: &RelationSpec, batch: &mut Batch) {
        let (Some(a), Some(b)) = (self.index(&r.from), self.index(&r.to)) else {
            return;
        };
        if self.out[a as usize]
            .iter()
            .any(|e| e.other == b && e.rel == r.kind)
            && batch.pending.insert((a, r.kind, b))
        {
            batch.changed = true;
            let c = &mut self.fan_in[b as usize][r.kind as usize];
            *c = c.saturating_sub(1);
            batch.dirty.push(a);
            batch.dirty.push(b);
        }
    }

    /// Compacts the edge lists touched by removals: one `retain` per dirty CI.
    fn flush(&mut self, batch: &mut Batch) {
        batch.dirty.sort_unstable();
        batch.dirty.dedup();
        let pending = &batch.pending;
        let live = &self.live;
        for &d in &batch.dirty {
            let du = d as usize;
            self.out[du]
                .retain(|e| live[e.other as usize] && !pending.contains(&(d, e.rel, e.other)));
            self.inc[du]
                .retain(|e| live[e.other as usize] && !pending.contains(&(e.other, e.rel, d)));
        }
        batch.dirty.clear();
        batch.pending.clear();
    }

    /// Every live relation, sorted.
    fn relations(&self) -> Vec<RelationSpec> {
        let mut rels = Vec::new();
        for (i, edges) in self.out.iter().enumerate() {
            if !self.live[i] {
                continue;
            }
            for e in edges {
                rels.push(RelationSpec {
                    from: self.cis[i].id.clone(),
                    kind: e.rel,
                    to: self.id_of(e.other).to_string(),
                });
            }
        }
        rels.sort_unstable();
        rels
    }

    /// The current graph as a spec: live CIs sorted by id and relations sorted, so two
    /// topologies holding the same graph give equal specs whatever their history.
    pub fn to_spec(&self) -> CmdbSpec {
        let mut cis: Vec<CiSpec> = self
            .cis
            .iter()
            .zip(&self.live)
            .filter(|(_, live)| **live)
            .map(|(c, _)| c.to_spec())
            .collect();
        cis.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        CmdbSpec {
            cis,
            relations: self.relations(),
        }
    }

    fn recount_fan_in(&mut self) {
        self.fan_in = self
            .inc
            .iter()
            .map(|edges| {
                let mut c = [0u32; 7];
                for e in edges {
                    c[e.rel as usize] += 1;
                }
                c
            })
            .collect();
    }

    /// Adds (or removes) the lookup keys of CI `i` as its data stands.
    fn index_keys(&mut self, i: CiIdx, add: bool) {
        let (keys, short) = (&mut self.keys, &mut self.short_keys);
        let Some(ci) = self.cis.get(i as usize) else {
            return;
        };
        each_key(ci, |tier, k| {
            let k = lower(k);
            let (index, tier) = match tier {
                Some(t) => (&mut *keys, t),
                None => (&mut *short, 0),
            };
            if add {
                index.add(&k, (tier, i));
            } else {
                index.remove(&k, (tier, i));
            }
        });
    }

    /// One upstream walk per service, in id order, so each CI's list comes out sorted.
    fn rebuild_services(&mut self) {
        let n = self.cis.len();
        let mut services: Vec<CiIdx> = (0..n)
            .filter(|&i| self.live[i] && self.cis[i].kind == "service")
            .map(|i| i as CiIdx)
            .collect();
        services.sort_unstable_by(|a, b| self.id_of(*a).cmp(self.id_of(*b)));
        let mut mark = vec![u32::MAX; n];
        let mut pairs: Vec<(CiIdx, CiIdx)> = Vec::new();
        let mut queue: Vec<CiIdx> = Vec::new();
        for (k, &s) in services.iter().enumerate() {
            let k = k as u32;
            queue.clear();
            queue.push(s);
            mark[s as usize] = k;
            let mut head = 0;
            while let Some(&v) = queue.get(head) {
                head += 1;
                pairs.push((v, s));
                for e in &self.out[v as usize] {
                    if mark[e.other as usize] != k {
                        mark[e.other as usize] = k;
                        queue.push(e.other);
                    }
                }
            }
        }
        let mut start = vec![0u32; n + 1];
        for &(v, _) in &pairs {
            start[v as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut list = vec![0; pairs.len()];
        for (v, s) in pairs {
            let slot = &mut fill[v as usize];
            list[*slot as usize] = s;
            *slot += 1;
        }
        self.svc_start = start;
        self.svc_list = list;
    }
}

/// Pending removals of one `apply` batch.
#[derive(Default)]
struct Batch {
    /// Edges removed but still in the lists, as (from, rel, to).
    pending: HashSet<(CiIdx, Relation, CiIdx)>,
    /// CIs whose lists hold removed edges or edges to removed CIs.
    dirty: Vec<CiIdx>,
    /// Whether anything changed, so a no-op batch skips recomputing services.
    changed: bool,
}

#[derive(Clone, Copy)]
struct Walk {
    start: CiIdx,
    rels: RelationSet,
    max_hops: u8,
    max_fan_in: usize,
    max_nodes: usize,
}

/// Calls `f` with every lookup key of `ci`: `Some(tier)` for a full key, `None` for the short
/// form of a host name.
fn each_key(ci: &Ci, mut f: impl FnMut(Option<u8>, &str)) {
    let mut emit = |tier: u8, v: &str, with_short: bool| {
        let v = v.trim();
        if v.is_empty() {
            return;
        }
        f(Some(tier), v);
        if with_short && let Some(s) = short_form(v) {
            f(None, s);
        }
    };
    emit(TIER_ID, &ci.id, true);
    for attr in KEY_ATTRS {
        if let Some(v) = ci.attrs.get(attr) {
            emit(TIER_ATTR, v, attr == "hostname" || attr == "fqdn");
        }
    }
    if let Some(aliases) = ci.attrs.get("aliases") {
        for a in aliases.split(',') {
            emit(TIER_ATTR, a, true);
        }
    }
}

/// Key → CI, where the smallest (tier, index) claiming a key wins. Kept incrementally: the
/// full candidate list is stored only for keys claimed more than once, so a removal can hand
/// the key to the next claimant without a rebuild.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct KeyIndex {
    winner: FastMap<String, (u8, CiIdx)>,
    /// Sorted candidates (at least two) of contested keys.
    contested: FastMap<String, Vec<(u8, CiIdx)>>,
}

impl KeyIndex {
    fn get(&self, k: &str) -> Option<CiIdx> {
        self.winner.get(k).map(|&(_, i)| i)
    }

    fn add(&mut self, k: &str, cand: (u8, CiIdx)) {
        let Some(w) = self.winner.get_mut(k) else {
            self.winner.insert(k.to_string(), cand);
            return;
        };
        if *w == cand {
            return;
        }
        let list = self
            .contested
            .entry(k.to_string())
            .or_insert_with(|| vec![*w]);
        if let Err(pos) = list.binary_search(&cand) {
            list.insert(pos, cand);
        }
        if let Some(&first) = list.first() {
            *w = first;
        }
    }

    fn remove(&mut self, k: &str, cand: (u8, CiIdx)) {
        let Some(list) = self.contested.get_mut(k) else {
            if self.winner.get(k) == Some(&cand) {
                self.winner.remove(k);
            }
            return;
        };
        if let Ok(pos) = list.binary_search(&cand) {
            list.remove(pos);
        }
        let first = list.first().copied();
        if list.len() < 2 {
            self.contested.remove(k);
        }
        match first {
            Some(first) => {
                if let Some(w) = self.winner.get_mut(k) {
                    *w = first;
                }
            }
            None => {
                self.winner.remove(k);
            }
        }
    }
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The host of an `instance` label: without `scheme://`, path, and `:port` (`[v6]:port` too).
fn instance_host(v: &str) -> &str {
    let v = v.split_once("://").map_or(v, |(_, rest)| rest);
    let v = v.split_once('/').map_or(v, |(host, _)| host);
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match v.split_once(':') {
        // More than one colon without brackets is a bare IPv6 address, not host:port.
        Some((host, port)) if !port.contains(':') => host,
        _ => v,
    }
}

/// The part of a host name before the first dot; none for IP addresses and dotless names.
fn short_form(s: &str) -> Option<&str> {
    if s.parse::<IpAddr>().is_ok() {
        return None;
    }
    s.split_once('.')
        .map(|(short, _)| short)
        .filter(|short| !short.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Scratch space for walks

#[derive(Clone, Copy)]
struct Step {
    prev: CiIdx,
    rel: Relation,
    forward: bool,
}

/// Reusable per-walk bookkeeping: epoch-stamped marks, so clearing is O(1) per call.
#[derive(Default)]
struct Scratch {
    epoch: u32,
    /// Reported in this `neighborhood` call.
    mark: Vec<u32>,
    /// Visited in the current breadth-first pass.
    seen: Vec<u32>,
    queue: Vec<(CiIdx, u8)>,
    parent: Vec<Step>,
}

impl Scratch {
    fn prepare(&mut self, n: usize) {
        if self.mark.len() < n {
            self.mark.resize(n, 0);
            self.seen.resize(n, 0);
            self.parent.resize(
                n,
                Step {
                    prev: 0,
                    rel: Relation::RunsOn,
                    forward: true,
                },
            );
        }
    }

    fn next_epoch(&mut self) -> u32 {
        if self.epoch == u32::MAX {
            self.mark.fill(0);
            self.seen.fill(0);
            self.epoch = 0;
        }
        self.epoch += 1;
        self.epoch
    }
}

/// The scratch behind a mutex that is only `try_lock`ed: uncontended it costs an atomic, and a
/// concurrent caller falls back to a fresh scratch instead of waiting. It is not part of a
/// topology's value: clones start empty and it never affects equality.
#[derive(Default)]
struct ScratchCell(Mutex<Scratch>);

impl ScratchCell {
    fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        match self.0.try_lock() {
            Ok(mut guard) => f(&mut guard),
            // Stale stamps are harmless: every walk starts a new epoch.
            Err(TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
            Err(TryLockError::WouldBlock) => f(&mut Scratch::default()),
        }
    }
}

impl Clone for ScratchCell {
    fn clone(&self) -> Self {
        ScratchCell::default()
    }
}

impl PartialEq for ScratchCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for ScratchCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScratchCell")
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of op batches

/// A batch's effect on the topology, tracked beside it instead of copying the graph.
struct Overlay<'a> {
    topo: &'a Topology,
    /// Existence overrides: true for added or revived ids, false for removed ones.
    exists: HashMap<&'a str, bool>,
    /// Ids removed at some point in the batch: none of their original edges survive.
    wiped: HashSet<&'a str>,
    /// Original edges removed by the batch.
    removed: HashSet<Triple<'a>>,
    /// Edges added by the batch and still present → the op that added them.
    added: HashMap<Triple<'a>, u32>,
    /// Added edges in op order (may hold ones removed since; `added` decides).
    added_order: Vec<Triple<'a>>,
    /// Added edges by endpoint (may hold stale ones; `added` decides).
    added_by: HashMap<&'a str, Vec<Triple<'a>>>,
}

impl<'a> Overlay<'a> {
    fn new(topo: &'a Topology) -> Overlay<'a> {
        Overlay {
            topo,
            exists: HashMap::new(),
            wiped: HashSet::new(),
            removed: HashSet::new(),
            added: HashMap::new(),
            added_order: Vec::new(),
            added_by: HashMap::new(),
        }
    }

    fn ci_exists(&self, id: &str) -> bool {
        self.exists
            .get(id)
            .copied()
            .unwrap_or_else(|| self.topo.index(id).is_some())
    }

    fn original_edge(&self, t: Triple<'_>) -> bool {
        !self.wiped.contains(t.0) && !self.wiped.contains(t.2) && self.topo.has_edge(t.0, t.1, t.2)
    }

    fn edge_exists(&self, t: Triple<'_>) -> bool {
        self.added.contains_key(&t) || (self.original_edge(t) && !self.removed.contains(&t))
    }

    fn step(&mut self, i: usize, op: &'a CmdbOp, problems: &mut Vec<Problem>) {
        let loc = format!("op {}", i + 1);
        match op {
            CmdbOp::UpsertCi { ci } => {
                if ci.id.is_empty() {
                    problems.push(Problem::new(loc, "upsert_ci: empty id"));
                } else if ci.kind.is_empty() {
                    problems.push(Problem::new(
                        loc,
                        format!("upsert_ci {:?}: empty type", ci.id),
                    ));
                } else {
                    self.exists.insert(&ci.id, true);
                }
            }
            CmdbOp::RemoveCi { id } => {
                if !self.ci_exists(id) {
                    problems.push(Problem::new(loc, format!("remove_ci: unknown CI {id:?}")));
                    return;
                }
                self.exists.insert(id, false);
                self.wiped.insert(id);
                if let Some(list) = self.added_by.remove(id.as_str()) {
                    for t in list {
                        self.added.remove(&t);
                    }
                }
            }
            CmdbOp::AddRelation { relation: r } => {
                let t: Triple<'a> = (&r.from, r.kind, &r.to);
                let before = problems.len();
                for (id, end) in [(&r.from, "from"), (&r.to, "to")] {
                    if !self.ci_exists(id) {
                        problems.push(Problem::new(
                            &loc,
                            format!("add_relation: unknown CI {id:?} in {end:?}"),
                        ));
                    }
                }
                if r.from == r.to {
                    problems.push(Problem::new(
                        &loc,
                        format!("add_relation: self-loop: {:?} -{}-> itself", r.from, r.kind),
                    ));
                }
                if problems.len() > before {
                    return;
                }
                if self.edge_exists(t) {
                    problems.push(Problem::new(
                        loc,
                        format!(
                            "add_relation: {} -{}-> {} already exists",
                            r.from, r.kind, r.to
                        ),
                    ));
                } else if self.original_edge(t) {
                    self.removed.remove(&t);
                } else {
                    self.added.insert(t, i as u32);
                    self.added_order.push(t);
                    self.added_by.entry(t.0).or_default().push(t);
                    self.added_by.entry(t.2).or_default().push(t);
                }
            }
            CmdbOp::RemoveRelation { relation: r } => {
                let t: Triple<'a> = (&r.from, r.kind, &r.to);
                if !self.edge_exists(t) {
                    problems.push(Problem::new(
                        loc,
                        format!(
                            "remove_relation: no relation {} -{}-> {}",
                            r.from, r.kind, r.to
                        ),
                    ));
                } else if self.added.remove(&t).is_none() {
                    self.removed.insert(t);
                }
            }
        }
    }

    /// Final-state edges out of `id` that must stay acyclic, with the op that added each.
    fn successors(&self, id: &'a str, out: &mut Vec<(&'a str, Relation, u32)>) {
        out.clear();
        if !self.wiped.contains(id)
            && let Some(i) = self.topo.index(id)
        {
            for e in &self.topo.out[i as usize] {
                let other = self.topo.id_of(e.other);
                if e.rel != Relation::ConnectedTo
                    && !self.wiped.contains(other)
                    && !self.removed.contains(&(id, e.rel, other))
                {
                    out.push((other, e.rel, NO_TAG));
                }
            }
        }
        for t in self.added_by.get(id).into_iter().flatten() {
            if t.0 == id
                && t.1 != Relation::ConnectedTo
                && let Some(&op) = self.added.get(t)
            {
                out.push((t.2, t.1, op));
            }
        }
    }

    /// Any cycle after the batch runs through an added edge, so only what lies upstream of
    /// added edges' targets needs searching.
    fn cycles(&self) -> Vec<Problem> {
        let mut graph = CycleGraph {
            names: Vec::new(),
            adj: Vec::new(),
        };
        let mut local: HashMap<&'a str, u32> = HashMap::new();
        for t in &self.added_order {
            if t.1 != Relation::ConnectedTo
                && self.added.contains_key(t)
                && let Entry::Vacant(v) = local.entry(t.2)
            {
                v.insert(graph.names.len() as u32);
                graph.names.push(t.2);
                graph.adj.push(Vec::new());
            }
        }
        if graph.names.is_empty() {
            return Vec::new();
        }
        let mut succ = Vec::new();
        let mut head = 0;
        while let Some(&name) = graph.names.get(head) {
            self.successors(name, &mut succ);
            for &(w, rel, tag) in &succ {
                let wi = match local.entry(w) {
                    Entry::Occupied(o) => *o.get(),
                    Entry::Vacant(v) => {
                        let wi = graph.names.len() as u32;
                        v.insert(wi);
                        graph.names.push(w);
                        graph.adj.push(Vec::new());
                        wi
                    }
                };
                graph.adj[head].push((wi, rel, tag));
            }
            head += 1;
        }
        graph
            .cycles()
            .into_iter()
            .map(|(tag, text)| {
                let loc = if tag == NO_TAG {
                    "ops".to_string()
                } else {
                    format!("op {}", tag + 1)
                };
                Problem::new(
                    loc,
                    format!("would create a dependency cycle (only connected_to may loop): {text}"),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Downstream as D, Sibling as S, Upstream as U};
    use Relation::*;

    const JSON: &str = r#"{"cis": [
   {"id": "svc-payments", "type": "service", "name": "Payments", "criticality": "high"},
   {"id": "app-pay-api", "type": "application", "port": 8080, "tls": true, "tags": ["a", "b"], "gone": null},
   {"id": "host-017", "type": "host", "attrs": {"hostname": "host-017.dc1", "ip": "10.1.0.17"}},
   {"id": "sw-core-01", "type": "switch", "owner_group": "network"}],
 "relations": [
   {"from": "svc-payments", "type": "depends_on", "to": "app-pay-api"},
   {"from": "app-pay-api", "type": "runs_on", "to": "host-017"},
   {"from": "host-017", "type": "connected_to", "to": "sw-core-01"}]}"#;

    const CIS_CSV: &str = "\
id, type ,name,criticality,owner_group,port,tls,tags,hostname,ip
svc-payments,service,Payments,high,,,,,,
app-pay-api,application,,,,8080,true,\"[\"\"a\"\",\"\"b\"\"]\",,
host-017,host,,,,,,,host-017.dc1,10.1.0.17
sw-core-01,switch,,,network,,,,,
";

    const RELS_CSV: &str = "\
from,type,to
svc-payments,depends_on,app-pay-api
app-pay-api,runs_on,host-017
host-017,connected_to,sw-core-01
";

    fn ci(id: &str, kind: &str) -> CiSpec {
        CiSpec {
            id: id.into(),
            kind: kind.into(),
            name: None,
            criticality: None,
            owner_group: None,
            attrs: BTreeMap::new(),
        }
    }

    fn rel(from: &str, kind: Relation, to: &str) -> RelationSpec {
        RelationSpec {
            from: from.into(),
            kind,
            to: to.into(),
        }
    }

    fn spec(cis: &[(&str, &str)], rels: &[(&str, Relation, &str)]) -> CmdbSpec {
        CmdbSpec {
            cis: cis.iter().map(|(i, k)| ci(i, k)).collect(),
            relations: rels.iter().map(|(f, k, t)| rel(f, *k, t)).collect(),
        }
    }

    fn idx(t: &Topology, id: &str) -> CiIdx {
        t.index(id).expect(id)
    }

    fn names(t: &Topology, v: &[CiIdx]) -> Vec<String> {
        v.iter().map(|&i| t.id_of(i).to_string()).collect()
    }

    fn strings(p: &[Problem]) -> Vec<String> {
        p.iter().map(Problem::to_string).collect()
    }

    /// core-1 <- tor-1 <- host-1..3 <- VMs <- apps <- svc-a; every VM depends on san-1.
    fn rack() -> CmdbSpec {
        spec(
            &[
                ("core-1", "switch"),
                ("tor-1", "switch"),
                ("host-1", "host"),
                ("host-2", "host"),
                ("host-3", "host"),
                ("vm-1a", "vm"),
                ("vm-1b", "vm"),
                ("vm-2a", "vm"),
                ("vm-3a", "vm"),
                ("app-x", "application"),
                ("app-y", "application"),
                ("svc-a", "service"),
                ("san-1", "storage"),
                ("pdu-1", "pdu"),
            ],
            &[
                ("tor-1", ConnectedTo, "core-1"),
                ("host-1", ConnectedTo, "tor-1"),
                ("host-2", ConnectedTo, "tor-1"),
                ("host-3", ConnectedTo, "tor-1"),
                ("vm-1a", HostedOn, "host-1"),
                ("vm-1b", HostedOn, "host-1"),
                ("vm-2a", HostedOn, "host-2"),
                ("vm-3a", HostedOn, "host-3"),
                ("app-x", RunsOn, "vm-1a"),
                ("app-y", RunsOn, "vm-2a"),
                ("svc-a", DependsOn, "app-x"),
                ("vm-1a", DependsOn, "san-1"),
                ("vm-1b", DependsOn, "san-1"),
                ("vm-2a", DependsOn, "san-1"),
                ("vm-3a", DependsOn, "san-1"),
                ("san-1", PoweredBy, "pdu-1"),
            ],
        )
    }

    const NET: RelationSet = RelationSet(ConnectedTo.bit() | HostedOn.bit() | RunsOn.bit());

    fn hood(
        t: &Topology,
        start: &str,
        rels: RelationSet,
        hops: u8,
        fan_in: usize,
        max_nodes: usize,
    ) -> (Vec<(String, u8, Direction)>, bool) {
        let mut out = Vec::new();
        let truncated = t.neighborhood(idx(t, start), rels, hops, fan_in, max_nodes, &mut out);
        let v = out
            .iter()
            .map(|r| (t.id_of(r.ci).to_string(), r.hops, r.direction))
            .collect();
        (v, truncated)
    }

    fn expect(v: &[(&str, u8, Direction)]) -> Vec<(String, u8, Direction)> {
        v.iter().map(|(i, h, d)| (i.to_string(), *h, *d)).collect()
    }

    #[test]
    fn topology_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Topology>();
        let t = Topology::from_spec(&rack()).unwrap();
        let want = hood(&t, "host-1", NET, 3, 50, 100);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        assert_eq!(hood(&t, "host-1", NET, 3, 50, 100), want);
                    }
                });
            }
        });
    }

    #[test]
    fn json_and_csv_load_identically() {
        let j = CmdbSpec::from_json(JSON).unwrap();
        let c = CmdbSpec::from_csv(CIS_CSV, RELS_CSV).unwrap();
        assert_eq!(j, c);
        let app = &j.cis[1].attrs;
        assert_eq!(app.get("port").map(String::as_str), Some("8080"));
        assert_eq!(app.get("tls").map(String::as_str), Some("true"));
        assert_eq!(app.get("tags").map(String::as_str), Some(r#"["a","b"]"#));
        assert!(!app.contains_key("gone"));
        assert_eq!(j.cis[0].criticality, Some(Criticality::High));
        assert_eq!(j.cis[3].owner_group.as_deref(), Some("network"));
        let (tj, tc) = (
            Topology::from_spec(&j).unwrap(),
            Topology::from_spec(&c).unwrap(),
        );
        assert_eq!(tj, tc);
        assert_eq!(tj.len(), 4);
        // The serialized spec reads back to itself.
        let text = serde_json::to_string(&j).unwrap();
        assert_eq!(CmdbSpec::from_json(&text).unwrap(), j);
    }

    #[test]
    fn load_json_dir_and_cis_csv_path() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("cmdb.json");
        std::fs::write(&json, JSON).unwrap();
        std::fs::write(dir.path().join("cis.csv"), CIS_CSV).unwrap();
        std::fs::write(dir.path().join("relations.csv"), RELS_CSV).unwrap();
        let a = CmdbSpec::load(&json).unwrap();
        assert_eq!(CmdbSpec::load(dir.path()).unwrap(), a);
        assert_eq!(CmdbSpec::load(&dir.path().join("cis.csv")).unwrap(), a);

        let lonely = tempfile::tempdir().unwrap();
        let cis = lonely.path().join("cis.csv");
        std::fs::write(&cis, CIS_CSV).unwrap();
        match CmdbSpec::load(&cis) {
            Err(CmdbError::Io { path, .. }) => assert!(path.ends_with("relations.csv")),
            other => panic!("{other:?}"),
        }
        std::fs::write(&json, "{\"cis\": [\n{\"id\": \"a\"}]}").unwrap();
        let err = CmdbSpec::load(&json).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:2:", json.display())), "{err}");
        assert!(err.contains("ci 1: missing field \"type\""), "{err}");
    }

    #[test]
    fn unknown_relation_type_is_a_parse_error_with_location() {
        let text = "{\"cis\": [],\n \"relations\": [\n  {\"from\": \"a\", \"type\": \"depends_on\", \"to\": \"b\"},\n  {\"from\": \"a\", \"type\": \"runs_onn\", \"to\": \"b\"}]}";
        match CmdbSpec::from_json(text) {
            Err(CmdbError::Parse {
                file,
                line,
                message,
                ..
            }) => {
                assert_eq!(file, "<json>");
                assert_eq!(line, Some(4));
                assert!(
                    message.starts_with(
                        "relation 2: unknown relation type \"runs_onn\" (expected one of runs_on,"
                    ),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let err =
            CmdbSpec::from_csv(CIS_CSV, "from,type,to\na,runs_on,b\na,sits_on,b\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("relations.csv:3: relation 2: unknown relation type \"sits_on\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_criticality_is_a_parse_error_with_location() {
        let text = "{\"cis\": [\n {\"id\": \"a\", \"type\": \"host\"},\n {\"id\": \"b\", \"type\": \"host\", \"criticality\": \"urgent\"}]}";
        let err = CmdbSpec::from_json(text).unwrap_err().to_string();
        assert!(
            err.starts_with("<json>:3:") && err.contains(": ci 2: unknown criticality \"urgent\" (expected critical, high, medium or low)"),
            "{err}"
        );
        let err = CmdbSpec::from_csv(
            "id,type,criticality\na,host,low\nb,host,High\n",
            "from,type,to\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "cis.csv:3: ci 2: unknown criticality \"High\" (expected critical, high, medium or low)"
        );
    }

    #[test]
    fn malformed_files_are_refused_precisely() {
        let err = |r: Result<CmdbSpec, CmdbError>| r.unwrap_err().to_string();
        assert_eq!(
            err(CmdbSpec::from_csv("id,name\na,b\n", "from,type,to\n")),
            "cis.csv:1: header lacks column \"type\" (required: id, type)"
        );
        assert_eq!(
            err(CmdbSpec::from_csv("id,type,id\n", "from,type,to\n")),
            "cis.csv:1: header names column \"id\" twice"
        );
        assert_eq!(
            err(CmdbSpec::from_csv("id,type\na,host\nb\n", "from,type,to\n")),
            "cis.csv:3: record has 1 fields, the header has 2"
        );
        assert_eq!(
            err(CmdbSpec::from_csv("id,type\n", "from,to\n")),
            "relations.csv:1: header lacks column \"type\" (required: from, type, to)"
        );
        assert!(
            err(CmdbSpec::from_json(r#"{"cis": [], "relatons": []}"#))
                .contains("unknown top-level field \"relatons\"")
        );
        assert!(
            err(CmdbSpec::from_json(
                r#"{"cis": [{"id": "a", "type": "h", "id": "b"}]}"#
            ))
            .contains("ci 1: duplicate field \"id\"")
        );
        assert!(err(CmdbSpec::from_json("[]")).starts_with("<json>:1:"));
        // Extra relation columns and fields are ignored; empty CSV input is an empty CMDB.
        let s = CmdbSpec::from_csv("id,type\n", "from,type,to,note\na,runs_on,b,x\n").unwrap();
        assert_eq!(s.relations, vec![rel("a", RunsOn, "b")]);
        assert_eq!(CmdbSpec::from_json("{}").unwrap(), CmdbSpec::default());
        // Byte-order marks and CRLF line ends, as spreadsheet exports write them.
        assert_eq!(
            CmdbSpec::from_json("\u{feff}{}").unwrap(),
            CmdbSpec::default()
        );
        let s = CmdbSpec::from_csv("\u{feff}id,type\r\na,host\r\n", "\u{feff}from,type,to\r\n")
            .unwrap();
        assert_eq!(s.cis, vec![ci("a", "host")]);
    }

    #[test]
    fn check_reports_every_problem() {
        let s = spec(
            &[
                ("a", "app"),
                ("b", "host"),
                ("a", "dup"),
                ("", "host"),
                ("c", ""),
                ("sw1", "switch"),
                ("sw2", "switch"),
            ],
            &[
                ("a", RunsOn, "b"),
                ("b", HostedOn, "a"),
                ("a", RunsOn, "b"),
                ("a", DependsOn, "host-99"),
                ("c", PoweredBy, "c"),
                ("sw1", ConnectedTo, "sw2"),
                ("sw2", ConnectedTo, "sw1"),
            ],
        );
        assert_eq!(
            strings(&s.check()),
            vec![
                "ci 3: duplicate id \"a\" (first at ci 1)",
                "ci 4: empty id",
                "ci 5: \"c\": empty type",
                "relation 3: duplicate of relation 1 (a -runs_on-> b)",
                "relation 4: unknown CI \"host-99\" in \"to\"",
                "relation 5: self-loop: \"c\" -powered_by-> itself",
                "relation 1: dependency cycle (only connected_to may loop): a -runs_on-> b -hosted_on-> a",
            ]
        );
        match Topology::from_spec(&s) {
            Err(CmdbError::Invalid(p)) => assert_eq!(p.len(), 7),
            other => panic!("{other:?}"),
        }
        // A connected_to mesh may loop; a longer dependency cycle is reported once.
        assert!(rack().check().is_empty());
        let s = spec(
            &[("a", "x"), ("b", "x"), ("c", "x"), ("d", "x")],
            &[
                ("a", DependsOn, "b"),
                ("b", DependsOn, "c"),
                ("c", MemberOf, "a"),
                ("c", DependsOn, "d"),
                ("d", ConnectedTo, "a"),
            ],
        );
        assert_eq!(
            strings(&s.check()),
            vec![
                "relation 1: dependency cycle (only connected_to may loop): a -depends_on-> b -depends_on-> c -member_of-> a"
            ]
        );
    }

    fn resolver() -> Topology {
        let mut s = spec(
            &[
                ("app-pay-api", "application"),
                ("host-017", "host"),
                ("node-v6", "host"),
                ("srv-9", "host"),
                ("db-1", "host"),
                ("twin-a", "host"),
                ("twin-b", "host"),
                ("shared", "host"),
            ],
            &[("app-pay-api", RunsOn, "host-017")],
        );
        let set = |s: &mut CmdbSpec, i: usize, k: &str, v: &str| {
            s.cis[i].attrs.insert(k.into(), v.into());
        };
        set(&mut s, 1, "hostname", "Host-017.DC1");
        set(&mut s, 1, "ip", "10.1.0.17");
        set(&mut s, 2, "ip", "::1");
        set(&mut s, 3, "hostname", "web-9.dc2");
        set(&mut s, 4, "fqdn", "db-1.prod.example.com");
        set(&mut s, 4, "aliases", "legacy-db, DB-OLD");
        set(&mut s, 5, "aliases", "twin,shared");
        set(&mut s, 6, "aliases", "twin");
        Topology::from_spec(&s).unwrap()
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resolve_by_id_and_label_keys() {
        let t = resolver();
        let r = |ci: Option<&str>, kv: &[(&str, &str)]| {
            t.resolve(ci, &labels(kv)).map(|i| t.id_of(i).to_string())
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(r(Some("app-pay-api"), &[]), some("app-pay-api"));
        assert_eq!(r(Some("nope"), &[("hostname", "db-old")]), some("db-1"));
        assert_eq!(r(None, &[("instance", "10.1.0.17:9100")]), some("host-017"));
        assert_eq!(r(None, &[("instance", "10.1.0.17")]), some("host-017"));
        assert_eq!(r(None, &[("instance", "[::1]:9100")]), some("node-v6"));
        assert_eq!(
            r(None, &[("instance", "http://HOST-017.dc1:8080/metrics")]),
            some("host-017")
        );
        assert_eq!(r(None, &[("ip", "::1")]), some("node-v6"));
        assert_eq!(r(None, &[("hostname", "HOST-017.dc1")]), some("host-017"));
        assert_eq!(r(None, &[("fqdn", "DB-1.prod.example.com")]), some("db-1"));
        // Short forms: against CI ids, then against short host names.
        assert_eq!(
            r(None, &[("host", "host-017.elsewhere.example.com")]),
            some("host-017")
        );
        assert_eq!(r(None, &[("node", "WEB-9.dc3.example.com")]), some("srv-9"));
        assert_eq!(r(None, &[("host", "legacy-db")]), some("db-1"));
        // Label order: instance before hostname.
        assert_eq!(
            r(None, &[("hostname", "db-1"), ("instance", "[::1]:1")]),
            some("node-v6")
        );
        // Ambiguity: an id beats an attribute; otherwise the first CI wins.
        assert_eq!(r(None, &[("host", "shared")]), some("shared"));
        assert_eq!(r(None, &[("host", "twin")]), some("twin-a"));
        assert_eq!(
            r(None, &[("host", "unknown-host.dc1"), ("ip", "10.1.0.99")]),
            None
        );
        assert_eq!(r(None, &[("job", "host-017")]), None);
        assert_eq!(r(None, &[]), None);
    }

    #[test]
    fn services_are_precomputed_sorted_by_id() {
        let s = spec(
            &[
                ("svc-b", "service"),
                ("svc-a", "service"),
                ("app-2", "application"),
                ("app-1", "application"),
                ("host-h", "host"),
                ("lonely", "host"),
            ],
            &[
                ("svc-a", DependsOn, "app-1"),
                ("svc-b", DependsOn, "app-2"),
                ("app-1", RunsOn, "host-h"),
                ("app-2", RunsOn, "host-h"),
            ],
        );
        let t = Topology::from_spec(&s).unwrap();
        assert_eq!(names(&t, t.services(idx(&t, "host-h"))), ["svc-a", "svc-b"]);
        assert_eq!(names(&t, t.services(idx(&t, "app-1"))), ["svc-a"]);
        assert_eq!(names(&t, t.services(idx(&t, "svc-b"))), ["svc-b"]);
        assert!(t.services(idx(&t, "lonely")).is_empty());
        assert!(t.services(999).is_empty());
        let r = Topology::from_spec(&rack()).unwrap();
        assert_eq!(names(&r, r.services(idx(&r, "pdu-1"))), ["svc-a"]);
        assert_eq!(names(&r, r.services(idx(&r, "core-1"))), ["svc-a"]);
        assert!(r.services(idx(&r, "host-2")).is_empty());
    }

    #[test]
    fn fan_in_sums_selected_relation_types() {
        let t = Topology::from_spec(&rack()).unwrap();
        assert_eq!(t.fan_in(idx(&t, "san-1"), RelationSet::ALL), 4);
        assert_eq!(t.fan_in(idx(&t, "san-1"), NET), 0);
        assert_eq!(
            t.fan_in(idx(&t, "tor-1"), RelationSet::of(&[ConnectedTo])),
            3
        );
        assert_eq!(
            t.fan_in(idx(&t, "host-1"), RelationSet::of(&[HostedOn, DependsOn])),
            2
        );
        assert_eq!(t.fan_in(999, RelationSet::ALL), 0);
    }

    #[test]
    fn neighborhood_walks_up_down_and_to_siblings() {
        let t = Topology::from_spec(&rack()).unwrap();
        assert_eq!(
            hood(&t, "vm-1a", NET, 3, 50, 100),
            (
                expect(&[
                    ("host-1", 1, U),
                    ("tor-1", 2, U),
                    ("core-1", 3, U),
                    ("app-x", 1, D),
                    ("vm-1b", 2, S)
                ]),
                false
            )
        );
        assert_eq!(
            hood(&t, "host-1", NET, 3, 50, 100),
            (
                expect(&[
                    ("tor-1", 1, U),
                    ("core-1", 2, U),
                    ("vm-1a", 1, D),
                    ("vm-1b", 1, D),
                    ("app-x", 2, D),
                    ("host-2", 2, S),
                    ("host-3", 2, S)
                ]),
                false
            )
        );
        // max_hops bounds every direction; siblings need two hops.
        assert_eq!(
            hood(&t, "vm-1a", NET, 1, 50, 100),
            (expect(&[("host-1", 1, U), ("app-x", 1, D)]), false)
        );
        // Relation filter: connected_to only.
        assert_eq!(
            hood(&t, "host-1", RelationSet::of(&[ConnectedTo]), 3, 50, 100),
            (
                expect(&[
                    ("tor-1", 1, U),
                    ("core-1", 2, U),
                    ("host-2", 2, S),
                    ("host-3", 2, S)
                ]),
                false
            )
        );
        assert_eq!(
            hood(&t, "host-1", RelationSet::default(), 3, 50, 100),
            (vec![], false)
        );
    }

    #[test]
    fn neighborhood_reports_hubs_without_walking_through_them() {
        let t = Topology::from_spec(&rack()).unwrap();
        let all = RelationSet::ALL;
        // san-1 has 4 dependents > 3: reached, but neither its power nor its other VMs follow.
        assert_eq!(
            hood(&t, "vm-1a", all, 3, 3, 100),
            (
                expect(&[
                    ("host-1", 1, U),
                    ("san-1", 1, U),
                    ("tor-1", 2, U),
                    ("core-1", 3, U),
                    ("app-x", 1, D),
                    ("svc-a", 2, D),
                    ("vm-1b", 2, S)
                ]),
                false
            )
        );
        assert_eq!(
            hood(&t, "vm-1a", all, 3, 4, 100).0,
            expect(&[
                ("host-1", 1, U),
                ("san-1", 1, U),
                ("tor-1", 2, U),
                ("pdu-1", 2, U),
                ("core-1", 3, U),
                ("app-x", 1, D),
                ("svc-a", 2, D),
                ("vm-1b", 2, S),
                ("vm-2a", 2, S),
                ("vm-3a", 2, S),
            ])
        );
        // The start is always expanded, hub or not.
        assert_eq!(
            hood(&t, "san-1", all, 3, 3, 100).0,
            expect(&[
                ("pdu-1", 1, U),
                ("vm-1a", 1, D),
                ("vm-1b", 1, D),
                ("vm-2a", 1, D),
                ("vm-3a", 1, D),
                ("app-x", 2, D),
                ("app-y", 2, D),
                ("svc-a", 3, D),
            ])
        );
    }

    #[test]
    fn neighborhood_truncates_at_max_nodes() {
        let t = Topology::from_spec(&rack()).unwrap();
        assert_eq!(
            hood(&t, "host-1", NET, 3, 50, 3),
            (
                expect(&[("tor-1", 1, U), ("core-1", 2, U), ("vm-1a", 1, D)]),
                true
            )
        );
        let (all, truncated) = hood(&t, "host-1", NET, 3, 50, 7);
        assert_eq!((all.len(), truncated), (7, false));
        assert_eq!(hood(&t, "host-1", NET, 3, 50, 0), (vec![], true));
        // Reuse across calls and from a clone: the scratch space never leaks between walks.
        let c = t.clone();
        assert_eq!(hood(&c, "host-1", NET, 3, 50, 7).0, all);
        assert_eq!(hood(&t, "host-1", NET, 3, 50, 7).0, all);
    }

    /// The filtered walk is the plain walk filtered, order and truncation included, on random
    /// graphs with hubs, `connected_to` loops and every kind of bound.
    #[test]
    fn neighborhood_where_is_neighborhood_filtered() {
        const N: usize = 60;
        let mut rng = Rng(0x5eed_0fca_1100);
        let (mut truncated, mut kept_some) = (0, 0);
        for _ in 0..40 {
            let cis: Vec<(String, &str)> = (0..N).map(|i| (format!("n{i}"), "host")).collect();
            let mut rels = BTreeSet::new();
            for i in 0..N {
                for _ in 0..3 {
                    let j = i + 1 + rng.below(8) as usize;
                    if j >= N {
                        continue;
                    }
                    let (f, kind, t) = rng.relation(i, j);
                    rels.insert((format!("n{f}"), kind, format!("n{t}")));
                }
            }
            let cis: Vec<(&str, &str)> = cis.iter().map(|(i, k)| (i.as_str(), *k)).collect();
            let rels: Vec<(&str, Relation, &str)> = rels
                .iter()
                .map(|(f, k, t)| (f.as_str(), *k, t.as_str()))
                .collect();
            let t = Topology::from_spec(&spec(&cis, &rels)).unwrap();
            for _ in 0..50 {
                let start = rng.below(N as u64) as CiIdx;
                let rel_set = RelationSet(rng.below(128) as u8 | 1 << rng.below(7));
                let hops = 1 + rng.below(4) as u8;
                let fan_in = 1 + rng.below(6) as usize;
                let max_nodes = rng.below(40) as usize;
                let kept: Vec<bool> = (0..N).map(|_| rng.chance(30)).collect();
                let keep = |c: CiIdx| kept[c as usize];
                let (mut all, mut some) = (Vec::new(), Vec::new());
                let t_all = t.neighborhood(start, rel_set, hops, fan_in, max_nodes, &mut all);
                let t_some =
                    t.neighborhood_where(start, rel_set, hops, fan_in, max_nodes, keep, &mut some);
                all.retain(|r| keep(r.ci));
                truncated += usize::from(t_all);
                kept_some += usize::from(!all.is_empty());
                assert_eq!((some, t_some), (all, t_all));
            }
        }
        assert!(
            truncated > 100 && kept_some > 100,
            "{truncated} {kept_some}"
        );
    }

    #[test]
    fn path_prints_each_step_with_its_direction() {
        let t = Topology::from_spec(&rack()).unwrap();
        let p = |a: &str, b: &str, rels: RelationSet, hops: u8| {
            t.path(idx(&t, a), idx(&t, b), rels, hops)
        };
        assert_eq!(
            p("host-1", "tor-1", NET, 3).as_deref(),
            Some("host-1 -connected_to-> tor-1")
        );
        assert_eq!(
            p("tor-1", "host-1", NET, 3).as_deref(),
            Some("tor-1 <-connected_to- host-1")
        );
        assert_eq!(
            p("host-1", "host-2", NET, 3).as_deref(),
            Some("host-1 -connected_to-> tor-1 <-connected_to- host-2")
        );
        assert_eq!(
            p("app-x", "host-2", NET, 4).as_deref(),
            Some(
                "app-x -runs_on-> vm-1a -hosted_on-> host-1 -connected_to-> tor-1 <-connected_to- host-2"
            )
        );
        assert_eq!(p("app-x", "host-2", NET, 3), None);
        assert_eq!(
            p("vm-1a", "host-1", RelationSet::of(&[ConnectedTo]), 3),
            None
        );
        assert_eq!(p("host-1", "host-1", NET, 3).as_deref(), Some("host-1"));
    }

    /// A chain of 300 CIs whose links alternate direction (`c0 -depends_on-> c1
    /// <-runs_on- c2 -depends_on-> c3 ...`), with a shortcut from c100 to c110: paths,
    /// upstream tests and walks over many hops find exactly what lies within their bound.
    #[test]
    fn long_paths_are_found_and_bounded_hop_by_hop() {
        const N: usize = 300;
        let ids: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
        let cis: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "host")).collect();
        let mut rels: Vec<(&str, Relation, &str)> = (0..N - 1)
            .map(|i| {
                if i % 2 == 0 {
                    (ids[i].as_str(), DependsOn, ids[i + 1].as_str())
                } else {
                    (ids[i + 1].as_str(), RunsOn, ids[i].as_str())
                }
            })
            .collect();
        rels.push(("c100", ConnectedTo, "c110"));
        let t = Topology::from_spec(&spec(&cis, &rels)).unwrap();
        let chain = RelationSet::of(&[DependsOn, RunsOn]);
        let c = |i: usize| idx(&t, &ids[i]);
        // Rendered step by step, in order, each in its direction.
        let mut want = "c0".to_string();
        for (i, id) in ids.iter().enumerate().take(9).skip(1) {
            want.push_str(if i % 2 == 1 {
                " -depends_on-> "
            } else {
                " <-runs_on- "
            });
            want.push_str(id);
        }
        assert_eq!(t.path(c(0), c(8), chain, 8).as_deref(), Some(want.as_str()));
        assert_eq!(t.path(c(0), c(8), chain, 7), None, "one hop short");
        // The longest bound a caller can give, on the longest chain it can reach.
        for (to, hops, found) in [(255, 255, true), (256, 255, false), (299, 255, false)] {
            let path = t.path(c(0), c(to), chain, hops);
            assert_eq!(path.is_some(), found, "c0 to c{to} within {hops}");
            if let Some(path) = path {
                assert_eq!(path.matches("depends_on").count(), 128);
                assert_eq!(path.matches("runs_on").count(), 127);
                assert!(path.starts_with("c0 -depends_on-> c1 <-runs_on- c2"));
                assert!(path.ends_with("c253 <-runs_on- c254 -depends_on-> c255"));
            }
        }
        // Written after what the caller's string already holds.
        let mut text = "why: ".to_string();
        assert!(t.write_path(c(3), c(5), chain, 8, &mut text));
        assert_eq!(text, "why: c3 <-runs_on- c4 -depends_on-> c5");
        assert!(!t.write_path(c(3), c(50), chain, 8, &mut text));
        assert_eq!(
            text, "why: c3 <-runs_on- c4 -depends_on-> c5",
            "nothing appended"
        );
        // The shortest route wins once the shortcut's relation is allowed.
        let with_shortcut = RelationSet::of(&[DependsOn, RunsOn, ConnectedTo]);
        assert_eq!(t.path(c(100), c(111), chain, 8), None);
        assert_eq!(
            t.path(c(100), c(111), with_shortcut, 8).as_deref(),
            Some("c100 -connected_to-> c110 -depends_on-> c111")
        );
        // Dependencies alternate, so nothing is upstream or downstream past one hop, however
        // long the bound: paths explain across directions, walks decide along one.
        assert!(t.is_upstream(c(1), c(0), chain, 8));
        assert!(!t.is_upstream(c(3), c(0), chain, 8));
        let mut out = Vec::new();
        assert!(!t.neighborhood(c(0), chain, 8, 50, 1_000, &mut out));
        assert_eq!(
            out.iter().map(|r| (r.ci, r.hops)).collect::<Vec<_>>(),
            [(c(1), 1), (c(2), 2)],
            "c1 upstream, c2 a sibling through it"
        );
        // Along one direction the walk and the upstream test go exactly as far as the bound.
        let ids: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
        let cis: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "host")).collect();
        let rels: Vec<(&str, Relation, &str)> = (0..19)
            .map(|i| (ids[i].as_str(), DependsOn, ids[i + 1].as_str()))
            .collect();
        let t = Topology::from_spec(&spec(&cis, &rels)).unwrap();
        let d = |i: usize| idx(&t, &ids[i]);
        let deps = RelationSet::of(&[DependsOn]);
        assert!(!t.neighborhood(d(0), deps, 8, 50, 1_000, &mut out));
        let want: Vec<(CiIdx, u8, Direction)> = (1..=8).map(|i| (d(i), i as u8, U)).collect();
        let got: Vec<(CiIdx, u8, Direction)> =
            out.iter().map(|r| (r.ci, r.hops, r.direction)).collect();
        assert_eq!(got, want);
        assert!(t.neighborhood(d(0), deps, 8, 50, 5, &mut out), "limited");
        assert_eq!(out.len(), 5);
        assert!(t.is_upstream(d(8), d(0), deps, 8));
        assert!(!t.is_upstream(d(9), d(0), deps, 8));
        assert_eq!(
            t.path(d(19), d(11), deps, 8).as_deref(),
            Some(
                "d19 <-depends_on- d18 <-depends_on- d17 <-depends_on- d16 <-depends_on- d15 <-depends_on- d14 <-depends_on- d13 <-depends_on- d12 <-depends_on- d11"
            )
        );
    }

    #[test]
    fn is_upstream_follows_dependencies_only() {
        let t = Topology::from_spec(&rack()).unwrap();
        let up = |a: &str, b: &str, rels: RelationSet, hops: u8| {
            t.is_upstream(idx(&t, a), idx(&t, b), rels, hops)
        };
        assert!(up("tor-1", "vm-1a", NET, 3));
        assert!(up("core-1", "vm-1a", NET, 3));
        assert!(!up("core-1", "vm-1a", NET, 2));
        assert!(!up("vm-1a", "tor-1", NET, 3));
        assert!(!up("san-1", "vm-1a", NET, 3));
        assert!(up("san-1", "vm-1a", RelationSet::ALL, 1));
        assert!(!up("vm-1a", "vm-1a", RelationSet::ALL, 3));
        assert!(!up("host-2", "vm-1a", RelationSet::ALL, 8));
    }

    /// The rack after a change: host-3 gone, host-4 added, vm-2a moved, tor-1 renamed, svc-b
    /// new, one SAN link dropped.
    fn rack_b() -> CmdbSpec {
        let mut b = rack();
        b.cis.retain(|c| c.id != "host-3" && c.id != "vm-3a");
        b.relations.retain(|r| {
            let gone = ["host-3", "vm-3a"].contains(&r.from.as_str());
            let moved = r.from == "vm-2a" && r.kind == HostedOn;
            let dropped = r.from == "vm-1b" && r.to == "san-1";
            !(gone || moved || dropped)
        });
        b.cis[1].name = Some("ToR rack 1".into());
        b.cis.insert(0, ci("host-4", "host"));
        b.cis.push(ci("svc-b", "service"));
        b.relations.push(rel("host-4", ConnectedTo, "tor-1"));
        b.relations.push(rel("vm-2a", HostedOn, "host-4"));
        b.relations.push(rel("svc-b", DependsOn, "app-y"));
        b
    }

    #[test]
    fn diff_then_apply_turns_a_into_b() {
        let (a, b) = (rack(), rack_b());
        let mut t = Topology::from_spec(&a).unwrap();
        assert!(t.diff(&a).is_empty());
        let ops = t.diff(&b);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                CmdbOp::UpsertCi { .. } => "upsert",
                CmdbOp::RemoveCi { .. } => "remove_ci",
                CmdbOp::AddRelation { .. } => "add",
                CmdbOp::RemoveRelation { .. } => "remove",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "upsert",
                "upsert",
                "upsert",
                "add",
                "add",
                "add",
                "remove",
                "remove",
                "remove_ci",
                "remove_ci"
            ]
        );
        assert_eq!(
            ops[0],
            CmdbOp::UpsertCi {
                ci: ci("host-4", "host")
            }
        );
        assert_eq!(
            ops[8],
            CmdbOp::RemoveCi {
                id: "host-3".into()
            }
        );
        t.validate(&ops).unwrap();
        let host1 = idx(&t, "host-1");
        t.apply(&ops);
        assert_derived_consistent(&t);
        let fresh = Topology::from_spec(&b).unwrap();
        assert_eq!(t.to_spec(), fresh.to_spec());
        assert!(t.diff(&b).is_empty());
        assert_eq!(t.len(), b.cis.len());
        assert_eq!(t.index("host-1"), Some(host1));
        assert_eq!(names(&t, t.services(idx(&t, "host-4"))), ["svc-b"]);
        assert_eq!(t.fan_in(idx(&t, "san-1"), RelationSet::ALL), 2);
        assert_eq!(
            hood(&t, "host-4", NET, 3, 50, 100).0,
            expect(&[
                ("tor-1", 1, U),
                ("core-1", 2, U),
                ("vm-2a", 1, D),
                ("app-y", 2, D),
                ("host-1", 2, S),
                ("host-2", 2, S)
            ])
        );
    }

    #[test]
    fn ops_round_trip_through_json() {
        let mut c = ci("host-9", "host");
        c.name = Some("Host 9".into());
        c.criticality = Some(Criticality::Critical);
        c.attrs.insert("ip".into(), "10.0.0.9".into());
        let ops = vec![
            CmdbOp::UpsertCi { ci: c },
            CmdbOp::AddRelation {
                relation: rel("host-9", ConnectedTo, "tor-1"),
            },
            CmdbOp::RemoveRelation {
                relation: rel("host-9", ConnectedTo, "tor-1"),
            },
            CmdbOp::RemoveCi {
                id: "host-9".into(),
            },
        ];
        let text = serde_json::to_string(&ops).unwrap();
        assert!(text.starts_with(r#"[{"op":"upsert_ci","ci":{"id":"host-9","type":"host","name":"Host 9","criticality":"critical","attrs":{"ip":"10.0.0.9"}}}"#), "{text}");
        assert_eq!(serde_json::from_str::<Vec<CmdbOp>>(&text).unwrap(), ops);
        // Upserts follow the file rules: unknown fields become attributes.
        let op: CmdbOp =
            serde_json::from_str(r#"{"op":"upsert_ci","ci":{"id":"x","type":"host","rack":12}}"#)
                .unwrap();
        let CmdbOp::UpsertCi { ci } = op else {
            panic!()
        };
        assert_eq!(ci.attrs.get("rack").map(String::as_str), Some("12"));
        assert!(
            serde_json::from_str::<CmdbOp>(
                r#"{"op":"upsert_ci","ci":{"id":"x","type":"h","criticality":"meh"}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn validate_refuses_bad_batches_without_changing_anything() {
        let t = Topology::from_spec(&rack()).unwrap();
        let before = t.to_spec();
        let add = |f: &str, k: Relation, to: &str| CmdbOp::AddRelation {
            relation: rel(f, k, to),
        };
        let remove = |f: &str, k: Relation, to: &str| CmdbOp::RemoveRelation {
            relation: rel(f, k, to),
        };
        let err = |ops: &[CmdbOp]| strings(&t.validate(ops).unwrap_err());
        assert_eq!(
            err(&[add("vm-1a", DependsOn, "nope")]),
            ["op 1: add_relation: unknown CI \"nope\" in \"to\""]
        );
        assert_eq!(
            err(&[add("host-1", DependsOn, "vm-1a")]),
            [
                "op 1: would create a dependency cycle (only connected_to may loop): vm-1a -hosted_on-> host-1 -depends_on-> vm-1a"
            ]
        );
        // Through a longer chain, found in the final state of the batch, located at the
        // first op on it.
        assert_eq!(
            err(&[
                CmdbOp::UpsertCi {
                    ci: ci("vm-9", "vm")
                },
                add("vm-9", DependsOn, "san-1"),
                add("pdu-1", MemberOf, "vm-9"),
            ]),
            [
                "op 2: would create a dependency cycle (only connected_to may loop): san-1 -powered_by-> pdu-1 -member_of-> vm-9 -depends_on-> san-1"
            ]
        );
        assert_eq!(
            err(&[
                add("vm-1a", HostedOn, "host-1"),
                remove("vm-1a", RunsOn, "host-1"),
                CmdbOp::RemoveCi { id: "ghost".into() },
                CmdbOp::UpsertCi { ci: ci("", "host") },
                CmdbOp::UpsertCi { ci: ci("x", "") },
                add("x", RunsOn, "host-1"),
                add("host-1", RunsOn, "host-1"),
            ]),
            [
                "op 1: add_relation: vm-1a -hosted_on-> host-1 already exists",
                "op 2: remove_relation: no relation vm-1a -runs_on-> host-1",
                "op 3: remove_ci: unknown CI \"ghost\"",
                "op 4: upsert_ci: empty id",
                "op 5: upsert_ci \"x\": empty type",
                "op 6: add_relation: unknown CI \"x\" in \"from\"",
                "op 7: add_relation: self-loop: \"host-1\" -runs_on-> itself",
            ]
        );
        // Endpoints must exist at the time of each op.
        assert_eq!(
            err(&[
                add("vm-9", HostedOn, "host-2"),
                CmdbOp::UpsertCi {
                    ci: ci("vm-9", "vm")
                }
            ]),
            ["op 1: add_relation: unknown CI \"vm-9\" in \"from\""]
        );
        assert_eq!(
            err(&[
                CmdbOp::RemoveCi {
                    id: "host-2".into()
                },
                add("vm-2a", HostedOn, "host-2")
            ]),
            ["op 2: add_relation: unknown CI \"host-2\" in \"to\""]
        );
        // Allowed: a connected_to loop; a cycle edge whose partner is removed in the same
        // batch; re-adding a removed CI and its relations.
        t.validate(&[add("core-1", ConnectedTo, "host-1")]).unwrap();
        t.validate(&[
            add("host-1", DependsOn, "vm-1a"),
            remove("vm-1a", HostedOn, "host-1"),
            remove("vm-1b", HostedOn, "host-1"),
        ])
        .unwrap();
        t.validate(&[
            CmdbOp::RemoveCi {
                id: "host-2".into(),
            },
            CmdbOp::UpsertCi {
                ci: ci("host-2", "host"),
            },
            add("vm-2a", HostedOn, "host-2"),
            remove("vm-2a", HostedOn, "host-2"),
            add("vm-2a", HostedOn, "host-2"),
        ])
        .unwrap();
        // Removing a CI drops its relations, so a re-added CI's old edges cannot close a cycle.
        t.validate(&[
            CmdbOp::RemoveCi { id: "vm-1a".into() },
            CmdbOp::UpsertCi {
                ci: ci("vm-1a", "vm"),
            },
            add("host-1", DependsOn, "vm-1a"),
        ])
        .unwrap();
        assert_eq!(t.to_spec(), before);
    }

    #[test]
    fn removing_a_ci_drops_its_relations_and_keys_and_keeps_its_index() {
        let mut t = resolver();
        let host = idx(&t, "host-017");
        let app = idx(&t, "app-pay-api");
        let by_ip = labels(&[("ip", "10.1.0.17")]);
        assert_eq!(t.resolve(None, &by_ip), Some(host));
        assert_eq!(t.fan_in(host, RelationSet::ALL), 1);
        let ops = [CmdbOp::RemoveCi {
            id: "host-017".into(),
        }];
        t.validate(&ops).unwrap();
        t.apply(&ops);
        assert_eq!(t.index("host-017"), None);
        assert_eq!(t.ci(host), None);
        assert_eq!(t.resolve(None, &by_ip), None);
        assert_eq!(
            t.resolve(Some("host-017"), &labels(&[("hostname", "host-017.dc1")])),
            None
        );
        assert!(t.to_spec().relations.is_empty());
        assert_eq!(t.len(), 7);
        let mut out = Vec::new();
        assert!(!t.neighborhood(app, RelationSet::ALL, 3, 50, 100, &mut out));
        assert!(out.is_empty());
        assert!(!t.neighborhood(host, RelationSet::ALL, 3, 50, 100, &mut out));
        assert_eq!(t.path(app, host, RelationSet::ALL, 3), None);
        // The same id comes back at the same index, without its old relations or attributes.
        t.apply(&[CmdbOp::UpsertCi {
            ci: ci("host-017", "host"),
        }]);
        assert_eq!(t.index("host-017"), Some(host));
        assert_eq!(t.ci(host).map(|c| c.attrs.len()), Some(0));
        assert_eq!(t.fan_in(host, RelationSet::ALL), 0);
        assert_eq!(t.resolve(None, &by_ip), None);
        assert_eq!(t.len(), 8);
        assert_derived_consistent(&t);
    }

    #[test]
    fn apply_handles_removal_and_readdition_in_one_batch() {
        let mut t = Topology::from_spec(&rack()).unwrap();
        let ops = [
            CmdbOp::RemoveRelation {
                relation: rel("vm-1a", DependsOn, "san-1"),
            },
            CmdbOp::RemoveCi { id: "vm-1b".into() },
            CmdbOp::AddRelation {
                relation: rel("vm-1a", DependsOn, "san-1"),
            },
            CmdbOp::RemoveRelation {
                relation: rel("vm-2a", DependsOn, "san-1"),
            },
            CmdbOp::RemoveRelation {
                relation: rel("vm-3a", DependsOn, "san-1"),
            },
            CmdbOp::RemoveCi { id: "vm-3a".into() },
            CmdbOp::UpsertCi {
                ci: ci("vm-1b", "vm"),
            },
            CmdbOp::AddRelation {
                relation: rel("vm-1b", PoweredBy, "pdu-1"),
            },
        ];
        t.validate(&ops).unwrap();
        t.apply(&ops);
        assert_derived_consistent(&t);
        let mut want = rack();
        want.cis.retain(|c| c.id != "vm-3a");
        want.relations.retain(|r| {
            let gone = ["vm-1b", "vm-3a"].contains(&r.from.as_str());
            !(gone || (r.from == "vm-2a" && r.to == "san-1"))
        });
        want.relations.push(rel("vm-1b", PoweredBy, "pdu-1"));
        assert_eq!(t.to_spec(), Topology::from_spec(&want).unwrap().to_spec());
        assert_eq!(t.fan_in(idx(&t, "san-1"), RelationSet::ALL), 1);
        assert_eq!(t.fan_in(idx(&t, "pdu-1"), RelationSet::ALL), 2);
    }

    /// xorshift64*: deterministic pseudo-random numbers without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        /// A random relation between CIs `i < j`: dependencies point from the lower to the
        /// higher (acyclic), `connected_to` either way.
        fn relation(&mut self, i: usize, j: usize) -> (usize, Relation, usize) {
            let kind = Relation::ALL[self.below(7) as usize];
            if kind == ConnectedTo && self.chance(50) {
                (j, kind, i)
            } else {
                (i, kind, j)
            }
        }
    }

    /// A random valid spec over ids u0..u7: dependency edges only go from lower to higher id
    /// (acyclic), connected_to edges go either way.
    fn random_spec(rng: &mut Rng) -> CmdbSpec {
        const N: usize = 8;
        let kinds = ["service", "application", "host"];
        let present: Vec<usize> = (0..N).filter(|_| rng.chance(70)).collect();
        let mut cis: Vec<CiSpec> = present
            .iter()
            .map(|&i| {
                let mut c = ci(&format!("u{i}"), kinds[rng.below(3) as usize]);
                if rng.chance(30) {
                    c.name = Some(format!("name {}", rng.below(3)));
                }
                if rng.chance(30) {
                    c.attrs
                        .insert("hostname".into(), format!("h{}.dc", rng.below(4)));
                }
                if rng.chance(20) {
                    let aliases = format!("H{}, h{}.DC", rng.below(4), rng.below(4));
                    c.attrs.insert("aliases".into(), aliases);
                }
                c
            })
            .collect();
        for i in (1..cis.len()).rev() {
            cis.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut seen = BTreeSet::new();
        let mut relations = Vec::new();
        for (x, &i) in present.iter().enumerate() {
            for &j in &present[x + 1..] {
                for _ in 0..2 {
                    if !rng.chance(25) {
                        continue;
                    }
                    let (f, kind, t) = rng.relation(i, j);
                    let r = rel(&format!("u{f}"), kind, &format!("u{t}"));
                    if seen.insert(r.clone()) {
                        relations.push(r);
                    }
                }
            }
        }
        CmdbSpec { cis, relations }
    }

    /// Incrementally kept fan-in and lookup keys equal a rebuild from scratch.
    fn assert_derived_consistent(t: &Topology) {
        let mut r = t.clone();
        r.recount_fan_in();
        r.keys = KeyIndex::default();
        r.short_keys = KeyIndex::default();
        for i in 0..r.cis.len() {
            if r.live[i] {
                r.index_keys(i as CiIdx, true);
            }
        }
        assert_eq!(r.fan_in, t.fan_in);
        assert_eq!(r.keys, t.keys);
        assert_eq!(r.short_keys, t.short_keys);
    }

    fn sorted_hood(t: &Topology, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.neighborhood(idx(t, id), RelationSet::ALL, 3, 100, 1000, &mut out);
        let mut v: Vec<String> = out
            .iter()
            .map(|r| format!("{} {} {:?}", t.id_of(r.ci), r.hops, r.direction))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn random_diffs_apply_to_the_target() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let specs = [
                random_spec(&mut rng),
                random_spec(&mut rng),
                random_spec(&mut rng),
            ];
            let mut t = Topology::from_spec(&specs[0]).unwrap();
            for target in &specs[1..] {
                let ops = t.diff(target);
                t.validate(&ops)
                    .unwrap_or_else(|p| panic!("round {round}: {p:?}"));
                t.apply(&ops);
                assert_derived_consistent(&t);
                let fresh = Topology::from_spec(target).unwrap();
                assert_eq!(t.to_spec(), fresh.to_spec(), "round {round}");
                assert!(t.diff(target).is_empty(), "round {round}");
                assert_eq!(t.len(), fresh.len());
                for c in &target.cis {
                    let (a, b) = (idx(&t, &c.id), idx(&fresh, &c.id));
                    assert_eq!(
                        names(&t, t.services(a)),
                        names(&fresh, fresh.services(b)),
                        "round {round}"
                    );
                    assert_eq!(
                        t.fan_in(a, RelationSet::ALL),
                        fresh.fan_in(b, RelationSet::ALL)
                    );
                    assert_eq!(
                        sorted_hood(&t, &c.id),
                        sorted_hood(&fresh, &c.id),
                        "round {round}"
                    );
                    let key = labels(&[("host", &c.id)]);
                    assert_eq!(
                        t.resolve(None, &key).map(|i| t.id_of(i).to_string()),
                        Some(c.id.clone())
                    );
                }
            }
        }
    }

    fn pick<'a, T>(rng: &mut Rng, items: impl ExactSizeIterator<Item = &'a T>) -> Option<&'a T>
    where
        T: 'a,
    {
        let n = items.len() as u64;
        let mut items = items;
        if n == 0 {
            None
        } else {
            items.nth(rng.below(n) as usize)
        }
    }

    /// A random op over ids u0..u9, mostly naming things that exist.
    fn random_op(
        rng: &mut Rng,
        cis: &BTreeMap<String, CiSpec>,
        rels: &BTreeSet<RelationSpec>,
    ) -> CmdbOp {
        let any_id = |rng: &mut Rng| format!("u{}", rng.below(10));
        let some_id = |rng: &mut Rng| match pick(rng, cis.keys()) {
            Some(id) if rng.chance(90) => id.clone(),
            _ => any_id(rng),
        };
        match rng.below(100) {
            0..30 => {
                let mut c = ci(
                    &any_id(rng),
                    ["service", "host", "app"][rng.below(3) as usize],
                );
                if rng.chance(40) {
                    c.attrs
                        .insert("hostname".into(), format!("h{}.dc", rng.below(4)));
                }
                CmdbOp::UpsertCi { ci: c }
            }
            30..45 => CmdbOp::RemoveCi { id: some_id(rng) },
            45..80 => {
                let kind = Relation::ALL[rng.below(7) as usize];
                CmdbOp::AddRelation {
                    relation: rel(&some_id(rng), kind, &some_id(rng)),
                }
            }
            _ => match pick(rng, rels.iter()) {
                Some(r) if rng.chance(90) => CmdbOp::RemoveRelation {
                    relation: r.clone(),
                },
                _ => CmdbOp::RemoveRelation {
                    relation: rel(&any_id(rng), DependsOn, &any_id(rng)),
                },
            },
        }
    }

    /// The reference semantics of one op on a plain CI map and relation set; false when the
    /// op is invalid at that point.
    fn model_step(
        cis: &mut BTreeMap<String, CiSpec>,
        rels: &mut BTreeSet<RelationSpec>,
        op: &CmdbOp,
    ) -> bool {
        match op {
            CmdbOp::UpsertCi { ci } => {
                cis.insert(ci.id.clone(), ci.clone());
                true
            }
            CmdbOp::RemoveCi { id } => {
                rels.retain(|r| r.from != *id && r.to != *id);
                cis.remove(id).is_some()
            }
            CmdbOp::AddRelation { relation: r } => {
                cis.contains_key(&r.from)
                    && cis.contains_key(&r.to)
                    && r.from != r.to
                    && rels.insert(r.clone())
            }
            CmdbOp::RemoveRelation { relation } => rels.remove(relation),
        }
    }

    #[test]
    fn random_op_batches_match_a_simple_model() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut t = Topology::default();
        let mut cis = BTreeMap::new();
        let mut rels = BTreeSet::new();
        let mut accepted = 0;
        for round in 0..3000 {
            let n = 1 + rng.below(5);
            let ops: Vec<CmdbOp> = (0..n).map(|_| random_op(&mut rng, &cis, &rels)).collect();
            let (mut mc, mut mr) = (cis.clone(), rels.clone());
            let mut ok = true;
            for op in &ops {
                ok &= model_step(&mut mc, &mut mr, op);
            }
            let model = CmdbSpec {
                cis: mc.values().cloned().collect(),
                relations: mr.iter().cloned().collect(),
            };
            ok = ok && model.check().is_empty();
            assert_eq!(t.validate(&ops).is_ok(), ok, "round {round}: {ops:?}");
            if ok {
                t.apply(&ops);
                (cis, rels) = (mc, mr);
                accepted += 1;
                assert_eq!(t.to_spec(), model, "round {round}: {ops:?}");
                assert_derived_consistent(&t);
                let fresh = Topology::from_spec(&model).unwrap();
                for c in &model.cis {
                    let (a, b) = (idx(&t, &c.id), idx(&fresh, &c.id));
                    assert_eq!(names(&t, t.services(a)), names(&fresh, fresh.services(b)));
                }
            }
        }
        assert!(accepted > 1000, "{accepted}");
    }
}
