//! Correlation rules: TOML files in a directory, compiled once into matchers and policies.
//!
//! Files are read in file-name order and their `[[rule]]` tables concatenated; the first rule
//! whose matchers all hold decides how an alert correlates. Regexes are compiled here, with a
//! size limit, and never per alert. Every error names the file and line so `incidentd rules
//! check` can point at it.
//!
//! ```toml
//! [lifecycle]            # at most one file may set it
//! hold_down = "5m"       # all alerts resolved this long => incident auto-resolves
//! reopen_window = "30m"  # a member refiring this soon after resolution reopens it
//! close_after = "7d"     # resolved and quiet this long => closed: memory freed, log keeps it
//!
//! [priority]             # at most one file may set it; these are the defaults
//! default_impact = "medium"   # impact when no business service is known to be hit
//! matrix = [["P1", "P2", "P3"], ["P2", "P3", "P4"], ["P3", "P4", "P5"]]  # impact x urgency
//! urgency = { critical = "high", major = "medium", minor = "medium", warning = "low", info = "low" }
//!
//! [[maintenance]]        # alerts on these CIs (and/or matching) in the window are suppressed
//! name = "db-01 patching"
//! cis = ["db-01"]
//! include_dependents = false
//! start = "2026-11-23T10:00:00Z"
//! end = "2026-11-23T12:00:00Z"
//!
//! [[rule]]
//! name = "reachability"
//! match = [{ field = "name", regex = "(Host|Switch|Link)(Down|Unreachable)" }]
//! topology = { relations = ["connected_to", "powered_by", "hosted_on", "runs_on"], max_hops = 3 }
//! window = "15m"
//!
//! [[rule]]
//! name = "kubernetes-by-namespace"
//! match = [
//!   { field = "source", equals = "prometheus" },
//!   { field = "labels.namespace", exists = true },
//!   { field = "severity", in = ["critical", "major"] },
//!   { field = "name", regex = "Kube.*" },
//! ]
//! group_by = ["labels.namespace"]
//! window = "15m"
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use crate::cmdb::{Relation, RelationSet};
use crate::model::{Alert, Millis, Priority, Severity, parse_duration, parse_time};

/// Upper bound on a compiled regex, so a hostile rule cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Most strings a pattern may match and still be tested by set membership.
const LITERAL_SET_LIMIT: usize = 256;
/// Default fan-in above which a CI is a hub that topology walks do not pass through.
pub const DEFAULT_MAX_FAN_IN: usize = 50;
/// Longest walk a topology rule may ask for.
const MAX_HOPS_LIMIT: u8 = 8;

/// Rules that ship with the binary, used when no rules directory exists (a fresh machine
/// running `incidentd serve` outside the repository).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../rules/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{dir}: no rule files (*.toml) found")]
    Empty { dir: PathBuf },
}

/// Lifecycle timings the engine applies to every incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub hold_down: Millis,
    pub reopen_window: Millis,
    /// A resolved incident with no member firing or active for this long is closed: it and
    /// its alerts leave the engine and the read model (the log keeps them), so memory follows
    /// what is live rather than all history. `None` keeps everything.
    pub close_after: Option<Millis>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            hold_down: 5 * 60_000,
            reopen_window: 30 * 60_000,
            close_after: Some(7 * 86_400_000),
        }
    }
}

/// Impact or urgency on the ITIL three-level scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    High,
    Medium,
    Low,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "high" => Some(Level::High),
            "medium" => Some(Level::Medium),
            "low" => Some(Level::Low),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
        }
    }
}

/// The impact × urgency matrix and how severities map to urgency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityMatrix {
    pub default_impact: Level,
    /// `matrix[impact][urgency]`, each indexed High, Medium, Low.
    pub matrix: [[Priority; 3]; 3],
    /// Urgency per severity, indexed Info..Critical.
    pub urgency: [Level; 5],
}

impl Default for PriorityMatrix {
    fn default() -> Self {
        use Priority::*;
        PriorityMatrix {
            default_impact: Level::Medium,
            matrix: [[P1, P2, P3], [P2, P3, P4], [P3, P4, P5]],
            urgency: [
                Level::Low,
                Level::Low,
                Level::Medium,
                Level::Medium,
                Level::High,
            ],
        }
    }
}

impl PriorityMatrix {
    pub fn urgency(&self, severity: Severity) -> Level {
        self.urgency[severity as usize]
    }

    pub fn priority(&self, impact: Level, urgency: Level) -> Priority {
        self.matrix[impact as usize][urgency as usize]
    }
}

/// A maintenance window: matching alerts are recorded as suppressed, not correlated.
#[derive(Clone, Debug)]
pub struct Maintenance {
    pub name: String,
    /// CI ids under maintenance; empty means "any CI" (then `match` decides).
    pub cis: Vec<String>,
    /// Also suppress alerts on CIs that depend on the listed ones.
    pub include_dependents: bool,
    matchers: Vec<Matcher>,
    pub start: Millis,
    pub end: Millis,
}

impl Maintenance {
    pub fn active(&self, now: Millis) -> bool {
        self.start <= now && now < self.end
    }

    /// Whether the alert satisfies the window's matchers (the CI test is the engine's).
    pub fn matches(&self, alert: &Alert) -> bool {
        self.matchers.iter().all(|m| m.matches(alert))
    }
}

/// How a rule correlates the alerts it claims.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Same values of these fields within the window.
    GroupBy(Vec<Field>),
    /// An open incident with an alerting CI nearby in the CMDB.
    Topology(TopologyPolicy),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopologyPolicy {
    pub relations: RelationSet,
    pub max_hops: u8,
    /// CIs with more dependents than this are hubs: reached, never walked through.
    pub max_fan_in: usize,
    /// Whether CIs sharing a direct upstream parent (two hosts on one switch) correlate.
    pub siblings: bool,
}

/// A compiled, ordered rule set.
#[derive(Clone, Debug)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub lifecycle: Lifecycle,
    pub priority: PriorityMatrix,
    pub maintenance: Vec<Maintenance>,
    /// FNV-1a of every file name and content, in order: identifies the rule set in the log.
    pub hash: String,
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    matchers: Vec<Matcher>,
    pub policy: Policy,
    pub window: Millis,
    /// Fixed impact for incidents this rule opens, instead of the services hit.
    pub impact: Option<Level>,
    /// Fixed urgency for alerts this rule claims, instead of their severity's.
    pub urgency: Option<Level>,
}

/// A field of an alert that rules can match and group on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Source,
    Name,
    Ci,
    Severity,
    Status,
    Summary,
    Label(String),
}

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "source" => Field::Source,
            "name" => Field::Name,
            "ci" => Field::Ci,
            "severity" => Field::Severity,
            "status" => Field::Status,
            "summary" => Field::Summary,
            _ => match s.strip_prefix("labels.") {
                Some(label) if !label.is_empty() => Field::Label(label.to_string()),
                _ => return None,
            },
        })
    }

    /// The field's value on an alert; `None` when absent.
    pub fn get<'a>(&self, alert: &'a Alert) -> Option<&'a str> {
        match self {
            Field::Source => Some(&alert.source),
            Field::Name => Some(&alert.name),
            Field::Ci => alert.ci.as_deref(),
            Field::Severity => Some(alert.severity.as_str()),
            Field::Status => Some(alert.status.as_str()),
            Field::Summary => alert.summary.as_deref(),
            Field::Label(name) => alert.labels.get(name).map(String::as_str),
        }
    }

    /// Appends [`Field::name`] without allocating (group keys are built per alert).
    fn push_name(&self, out: &mut String) {
        match self {
            Field::Label(l) => {
                out.push_str("labels.");
                out.push_str(l);
            }
            Field::Source => out.push_str("source"),
            Field::Name => out.push_str("name"),
            Field::Ci => out.push_str("ci"),
            Field::Severity => out.push_str("severity"),
            Field::Status => out.push_str("status"),
            Field::Summary => out.push_str("summary"),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Field::Source => "source".into(),
            Field::Name => "name".into(),
            Field::Ci => "ci".into(),
            Field::Severity => "severity".into(),
            Field::Status => "status".into(),
            Field::Summary => "summary".into(),
            Field::Label(l) => format!("labels.{l}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Matcher {
    field: Field,
    op: Op,
}

/// A matcher's test. An absent field reads as the empty string, as in Prometheus matchers;
/// `exists` tells absent from empty.
#[derive(Clone, Debug)]
enum Op {
    Equals(String),
    NotEquals(String),
    Regex(Pattern),
    NotRegex(Pattern),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists(bool),
}

/// A `regex`/`not_regex` pattern, compiled anchored at both ends (`^(?:p)$`, as Prometheus
/// does). Alert-name patterns are mostly alternations of plain names, such as
/// `(Host|Node)(Down|Unreachable)|PingLoss`: their matches are a small finite set of
/// strings, and looking a value up there costs a fraction of a regex search on every alert.
#[derive(Clone, Debug)]
struct Pattern {
    regex: Regex,
    /// Exactly the strings `regex` matches, when that is a small finite set. Hashed: a
    /// lookup hashes the value once and compares one candidate, where a binary search over
    /// a few dozen names of similar length compares several.
    literals: Option<foldhash::HashSet<Box<str>>>,
}

impl Pattern {
    fn new(pattern: &str, regex: Regex) -> Pattern {
        let literals =
            literal_set(pattern).map(|set| set.into_iter().map(String::into_boxed_str).collect());
        Pattern { regex, literals }
    }

    fn is_match(&self, v: &str) -> bool {
        match &self.literals {
            Some(set) => set.contains(v),
            None => self.regex.is_match(v),
        }
    }
}

/// Every string that `pattern` matches as a whole, if the pattern is built only from plain
/// characters, groups (`(..)`, `(?:..)`) and alternation (`|`) and matches at most
/// [`LITERAL_SET_LIMIT`] strings; else `None` (the regex decides). Anything else — classes,
/// repetition, escapes, flags, anchors, `.` — is refused rather than interpreted, so the set
/// is exact: outside a class, the regex syntax gives these characters no other meaning.
fn literal_set(pattern: &str) -> Option<Vec<String>> {
    struct Parser<'a> {
        rest: std::str::Chars<'a>,
    }
    impl Parser<'_> {
        fn peek(&self) -> Option<char> {
            self.rest.clone().next()
        }
        /// alternation := concat ('|' concat)*
        fn alternation(&mut self) -> Option<Vec<String>> {
            let mut set = self.concat()?;
            while self.peek() == Some('|') {
                self.rest.next();
                set.extend(self.concat()?);
                if set.len() > LITERAL_SET_LIMIT {
                    return None;
                }
            }
            Some(set)
        }
        /// concat := (plain character | '(' ['?:'] alternation ')')*
        fn concat(&mut self) -> Option<Vec<String>> {
            let mut set = vec![String::new()];
            loop {
                let part = match self.peek() {
                    None | Some('|') | Some(')') => return Some(set),
                    Some('(') => {
                        self.rest.next();
                        if self.peek() == Some('?') {
                            self.rest.next();
                            if self.rest.next() != Some(':') {
                                return None;
                            }
                        }
                        let inner = self.alternation()?;
                        if self.rest.next() != Some(')') {
                            return None;
                        }
                        inner
                    }
                    Some(c) if c.is_ascii_alphanumeric() || "_-:/=@,% ".contains(c) => {
                        self.rest.next();
                        for s in &mut set {
                            s.push(c);
                        }
                        continue;
                    }
                    Some(_) => return None,
                };
                if set.len() * part.len() > LITERAL_SET_LIMIT {
                    return None;
                }
                set = set
                    .iter()
                    .flat_map(|head| part.iter().map(move |tail| format!("{head}{tail}")))
                    .collect();
            }
        }
    }
    let mut p = Parser {
        rest: pattern.chars(),
    };
    let set = p.alternation()?;
    // A `)` with no `(` stops the parse early: not a pattern this understands.
    p.rest.next().is_none().then_some(set)
}

impl Matcher {
    fn matches(&self, alert: &Alert) -> bool {
        let value = self.field.get(alert);
        let v = value.unwrap_or("");
        match &self.op {
            Op::Equals(x) => v == x,
            Op::NotEquals(x) => v != x,
            Op::Regex(r) => r.is_match(v),
            Op::NotRegex(r) => !r.is_match(v),
            Op::In(set) => set.iter().any(|x| x == v),
            Op::NotIn(set) => !set.iter().any(|x| x == v),
            Op::Exists(want) => value.is_some() == *want,
        }
    }
}

impl Rule {
    pub fn matches(&self, alert: &Alert) -> bool {
        self.matchers.iter().all(|m| m.matches(alert))
    }

    /// The group an alert falls in under this rule, e.g. `svc-by-ns{labels.namespace="pay"}`;
    /// for topology rules, the alert's CI. Doubles as the human explanation of the grouping.
    pub fn group_key(&self, alert: &Alert) -> String {
        let mut key = String::with_capacity(64);
        key.push_str(&self.name);
        key.push('{');
        match &self.policy {
            Policy::GroupBy(fields) => {
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        key.push_str(", ");
                    }
                    field.push_name(&mut key);
                    key.push('=');
                    push_quoted(&mut key, field.get(alert).unwrap_or(""));
                }
            }
            Policy::Topology(_) => {
                key.push_str("ci=");
                push_quoted(&mut key, alert.ci.as_deref().unwrap_or(""));
            }
        }
        key.push('}');
        key
    }
}

/// Appends `v` exactly as `{:?}` writes it, skipping the formatter for printable ASCII
/// without quotes or backslashes (nearly every group value), which needs no escaping.
fn push_quoted(out: &mut String, v: &str) {
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(v);
        out.push('"');
    } else {
        let _ = write!(out, "{v:?}");
    }
}

impl Rules {
    /// The rule that decides this alert's correlation, if any. Topology rules are skipped
    /// for alerts whose CI is not in the CMDB: there is no graph to walk.
    pub fn first_match(&self, alert: &Alert, has_ci: bool) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| (has_ci || !matches!(r.policy, Policy::Topology(_))) && r.matches(alert))
    }

    /// Loads every `*.toml` file in `dir`, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Rules, RulesError> {
        let io = |source| RulesError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        paths.sort();
        if paths.is_empty() {
            return Err(RulesError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| RulesError::Io {
                path: path.clone(),
                source,
            })?;
            files.push((path.display().to_string(), text));
        }
        Rules::parse_files(&files)
    }

    /// Compiles rule files given as `(name, content)` pairs, in order.
    pub fn parse_files(files: &[(String, String)]) -> Result<Rules, RulesError> {
        let mut rules = Vec::new();
        let mut maintenance = Vec::new();
        let mut lifecycle: Option<(String, Lifecycle)> = None;
        let mut priority: Option<(String, PriorityMatrix)> = None;
        let mut hash = Fnv::default();
        for (file, text) in files {
            hash.write(file.rsplit('/').next().unwrap_or(file).as_bytes());
            hash.write(text.as_bytes());
            let spec: FileSpec = toml::from_str(text).map_err(|e| {
                let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
                RulesError::Invalid {
                    file: file.clone(),
                    line,
                    column,
                    message: e.message().to_string(),
                }
            })?;
            let at = |offset: usize, message: String| {
                let (line, column) = line_col(text, offset);
                RulesError::Invalid {
                    file: file.clone(),
                    line,
                    column,
                    message,
                }
            };
            if let Some(l) = spec.lifecycle {
                if let Some((other, _)) = &lifecycle {
                    return Err(at(0, format!("[lifecycle] is already set in {other}")));
                }
                lifecycle = Some((file.clone(), compile_lifecycle(l, &at)?));
            }
            if let Some(p) = spec.priority {
                if let Some((other, _)) = &priority {
                    return Err(at(0, format!("[priority] is already set in {other}")));
                }
                priority = Some((file.clone(), compile_priority(p, &at)?));
            }
            for m in spec.maintenance {
                maintenance.push(compile_maintenance(m, &at)?);
            }
            for r in spec.rule {
                let rule = compile_rule(r, &at)?;
                if rules.iter().any(|x: &Rule| x.name == rule.name) {
                    return Err(at(0, format!("duplicate rule name {:?}", rule.name)));
                }
                rules.push(rule);
            }
        }
        Ok(Rules {
            rules,
            lifecycle: lifecycle.map(|(_, l)| l).unwrap_or_default(),
            priority: priority.map(|(_, p)| p).unwrap_or_default(),
            maintenance,
            hash: format!("{:016x}", hash.0),
        })
    }

    /// The rule set compiled into the binary.
    pub fn embedded() -> Result<Rules, RulesError> {
        Rules::parse_files(&[("default.toml".to_string(), EMBEDDED_DEFAULT.to_string())])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    lifecycle: Option<LifecycleSpec>,
    #[serde(default)]
    priority: Option<PrioritySpec>,
    #[serde(default)]
    maintenance: Vec<Spanned<MaintenanceSpec>>,
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrioritySpec {
    default_impact: Option<Spanned<String>>,
    matrix: Option<Spanned<Vec<Vec<String>>>>,
    #[serde(default)]
    urgency: std::collections::BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceSpec {
    name: String,
    #[serde(default)]
    cis: Vec<String>,
    #[serde(default)]
    include_dependents: bool,
    #[serde(default, rename = "match")]
    matchers: Vec<Spanned<MatcherSpec>>,
    start: Spanned<String>,
    end: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologySpec {
    relations: Vec<Spanned<String>>,
    #[serde(default = "default_max_hops")]
    max_hops: u8,
    #[serde(default = "default_max_fan_in")]
    max_fan_in: usize,
    #[serde(default = "default_true")]
    siblings: bool,
}

fn default_max_hops() -> u8 {
    3
}

fn default_max_fan_in() -> usize {
    DEFAULT_MAX_FAN_IN
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleSpec {
    hold_down: Option<Spanned<String>>,
    reopen_window: Option<Spanned<String>>,
    close_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans reading the file
    description: Option<String>,
    #[serde(default, rename = "match")]
    matchers: Vec<Spanned<MatcherSpec>>,
    group_by: Option<Vec<Spanned<String>>>,
    topology: Option<Spanned<TopologySpec>>,
    window: Spanned<String>,
    impact: Option<Spanned<String>>,
    urgency: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatcherSpec {
    field: Spanned<String>,
    equals: Option<String>,
    not_equals: Option<String>,
    regex: Option<String>,
    not_regex: Option<String>,
    #[serde(rename = "in")]
    in_set: Option<Vec<String>>,
    not_in: Option<Vec<String>>,
    exists: Option<bool>,
}

fn compile_duration(
    s: &Spanned<String>,
    what: &str,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<Millis, RulesError> {
    parse_duration(s.get_ref()).ok_or_else(|| {
        at(
            s.span().start,
            format!(
                "{what}: invalid duration {:?} (use e.g. 30s, 10m, 1h30m)",
                s.get_ref()
            ),
        )
    })
}

fn compile_lifecycle(
    spec: LifecycleSpec,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<Lifecycle, RulesError> {
    let mut l = Lifecycle::default();
    if let Some(d) = &spec.hold_down {
        l.hold_down = compile_duration(d, "hold_down", at)?;
    }
    if let Some(d) = &spec.reopen_window {
        l.reopen_window = compile_duration(d, "reopen_window", at)?;
    }
    if let Some(d) = &spec.close_after {
        let after = compile_duration(d, "close_after", at)?;
        l.close_after = (after > 0).then_some(after);
    }
    // Closing forgets the alerts' history, so it must wait until a refire could no longer
    // reopen the incident: closing then changes no correlation, only memory.
    if let Some(after) = l.close_after
        && after < l.reopen_window
    {
        let span = spec.close_after.as_ref().map_or(0, |d| d.span().start);
        return Err(at(
            span,
            format!(
                "close_after ({}) must be at least reopen_window ({}), or \"0s\" to never close",
                crate::model::format_duration(after),
                crate::model::format_duration(l.reopen_window)
            ),
        ));
    }
    Ok(l)
}

fn compile_rule(
    spec: RuleSpec,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<Rule, RulesError> {
    let name = spec.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(at(spec.name.span().start, "rule name is empty".into()));
    }
    let matchers = compile_matchers(&spec.matchers, &name, at)?;
    let policy = match (spec.group_by, spec.topology) {
        (Some(fields), None) => Policy::GroupBy(
            fields
                .iter()
                .map(|f| compile_field(f, &name, at))
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(t)) => Policy::Topology(compile_topology(&t, &name, at)?),
        _ => {
            return Err(at(
                spec.name.span().start,
                format!("rule {name:?}: needs exactly one of group_by or topology"),
            ));
        }
    };
    let window = compile_duration(&spec.window, &format!("rule {name:?}: window"), at)?;
    let level = |s: &Option<Spanned<String>>, what: &str| {
        s.as_ref()
            .map(|s| {
                Level::parse(s.get_ref()).ok_or_else(|| {
                    at(
                        s.span().start,
                        format!(
                            "rule {name:?}: {what} must be high, medium or low, got {:?}",
                            s.get_ref()
                        ),
                    )
                })
            })
            .transpose()
    };
    Ok(Rule {
        impact: level(&spec.impact, "impact")?,
        urgency: level(&spec.urgency, "urgency")?,
        name,
        matchers,
        policy,
        window,
    })
}

fn compile_field(
    s: &Spanned<String>,
    owner: &str,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<Field, RulesError> {
    Field::parse(s.get_ref()).ok_or_else(|| {
        at(
            s.span().start,
            format!(
                "rule {owner:?}: unknown field {:?} (use source, name, ci, severity, status, summary or labels.<name>)",
                s.get_ref()
            ),
        )
    })
}

fn compile_matchers(
    specs: &[Spanned<MatcherSpec>],
    name: &str,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<Vec<Matcher>, RulesError> {
    let mut matchers = Vec::with_capacity(specs.len());
    for m in specs {
        let offset = m.span().start;
        let m = m.get_ref();
        let regex = |pattern: &str| {
            RegexBuilder::new(&format!("^(?:{pattern})$"))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(|regex| Pattern::new(pattern, regex))
                .map_err(|e| {
                    at(
                        offset,
                        format!("rule {name:?}: invalid regex {pattern:?}: {e}"),
                    )
                })
        };
        let mut ops = Vec::new();
        if let Some(v) = &m.equals {
            ops.push(Op::Equals(v.clone()));
        }
        if let Some(v) = &m.not_equals {
            ops.push(Op::NotEquals(v.clone()));
        }
        if let Some(v) = &m.regex {
            ops.push(Op::Regex(regex(v)?));
        }
        if let Some(v) = &m.not_regex {
            ops.push(Op::NotRegex(regex(v)?));
        }
        if let Some(v) = &m.in_set {
            ops.push(Op::In(v.clone()));
        }
        if let Some(v) = &m.not_in {
            ops.push(Op::NotIn(v.clone()));
        }
        if let Some(v) = m.exists {
            ops.push(Op::Exists(v));
        }
        let [op] = <[Op; 1]>::try_from(ops).map_err(|ops| {
            at(
                offset,
                format!(
                    "rule {name:?}: a matcher needs exactly one of equals, not_equals, regex, not_regex, in, not_in, exists (found {})",
                    ops.len()
                ),
            )
        })?;
        matchers.push(Matcher {
            field: compile_field(&m.field, name, at)?,
            op,
        });
    }
    Ok(matchers)
}

fn compile_topology(
    t: &Spanned<TopologySpec>,
    name: &str,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<TopologyPolicy, RulesError> {
    let spec = t.get_ref();
    let mut relations = Vec::with_capacity(spec.relations.len());
    for r in &spec.relations {
        relations.push(Relation::parse(r.get_ref()).ok_or_else(|| {
            at(
                r.span().start,
                format!(
                    "rule {name:?}: unknown relation {:?} (use {})",
                    r.get_ref(),
                    Relation::ALL.map(Relation::as_str).join(", ")
                ),
            )
        })?);
    }
    if relations.is_empty() || spec.max_hops == 0 || spec.max_hops > MAX_HOPS_LIMIT {
        return Err(at(
            t.span().start,
            format!(
                "rule {name:?}: topology needs at least one relation and max_hops from 1 to {MAX_HOPS_LIMIT}"
            ),
        ));
    }
    Ok(TopologyPolicy {
        relations: RelationSet::of(&relations),
        max_hops: spec.max_hops,
        max_fan_in: spec.max_fan_in,
        siblings: spec.siblings,
    })
}

fn compile_priority(
    spec: PrioritySpec,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<PriorityMatrix, RulesError> {
    let mut p = PriorityMatrix::default();
    let level = |s: &Spanned<String>, what: &str| {
        Level::parse(s.get_ref()).ok_or_else(|| {
            at(
                s.span().start,
                format!(
                    "priority: {what} must be high, medium or low, got {:?}",
                    s.get_ref()
                ),
            )
        })
    };
    if let Some(d) = &spec.default_impact {
        p.default_impact = level(d, "default_impact")?;
    }
    if let Some(m) = &spec.matrix {
        let bad = || {
            at(
                m.span().start,
                "priority: matrix must be 3 rows (impact high, medium, low) of 3 priorities (urgency high, medium, low), each P1..P5".into(),
            )
        };
        let rows = m.get_ref();
        if rows.len() != 3 {
            return Err(bad());
        }
        for (i, row) in rows.iter().enumerate() {
            if row.len() != 3 {
                return Err(bad());
            }
            for (j, cell) in row.iter().enumerate() {
                p.matrix[i][j] = Priority::parse(cell).ok_or_else(bad)?;
            }
        }
    }
    for (severity, value) in &spec.urgency {
        let sev = Severity::parse(severity).ok_or_else(|| {
            at(
                value.span().start,
                format!(
                    "priority: unknown severity {severity:?} in urgency (use {})",
                    Severity::NAMES
                ),
            )
        })?;
        p.urgency[sev as usize] = level(value, "urgency")?;
    }
    Ok(p)
}

fn compile_maintenance(
    spec: Spanned<MaintenanceSpec>,
    at: &impl Fn(usize, String) -> RulesError,
) -> Result<Maintenance, RulesError> {
    let offset = spec.span().start;
    let spec = spec.into_inner();
    let name = spec.name;
    let time = |s: &Spanned<String>, what: &str| {
        parse_time(s.get_ref()).ok_or_else(|| {
            at(
                s.span().start,
                format!(
                    "maintenance {name:?}: {what} must be an RFC 3339 time, got {:?}",
                    s.get_ref()
                ),
            )
        })
    };
    let start = time(&spec.start, "start")?;
    let end = time(&spec.end, "end")?;
    if end <= start {
        return Err(at(
            offset,
            format!("maintenance {name:?}: end is not after start"),
        ));
    }
    if spec.cis.is_empty() && spec.matchers.is_empty() {
        return Err(at(
            offset,
            format!(
                "maintenance {name:?}: needs cis, match, or both (it would silence everything)"
            ),
        ));
    }
    Ok(Maintenance {
        matchers: compile_matchers(&spec.matchers, &name, at)?,
        name,
        cis: spec.cis,
        include_dependents: spec.include_dependents,
        start,
        end,
    })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Fingerprint, Severity, Status};
    use std::collections::BTreeMap;

    fn alert(name: &str, labels: &[(&str, &str)]) -> Alert {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Alert {
            fingerprint: Fingerprint(1),
            source: "prometheus".into(),
            name: name.into(),
            ci: None,
            severity: Severity::Critical,
            status: Status::Firing,
            summary: None,
            labels,
            annotations: BTreeMap::new(),
            starts_at: 0,
            ends_at: None,
            dedup_key: None,
            received_at: 0,
        }
    }

    fn parse(text: &str) -> Result<Rules, RulesError> {
        Rules::parse_files(&[("r.toml".into(), text.into())])
    }

    #[test]
    fn close_after_is_at_least_the_reopen_window_or_off() {
        let lifecycle = |body: &str| {
            Rules::parse_files(&[("l.toml".to_string(), format!("[lifecycle]\n{body}\n"))])
                .map(|r| r.lifecycle.close_after)
        };
        assert_eq!(lifecycle("").expect("default"), Some(7 * 86_400_000));
        assert_eq!(
            lifecycle(r#"close_after = "2d""#).expect("2d"),
            Some(2 * 86_400_000)
        );
        assert_eq!(lifecycle(r#"close_after = "0s""#).expect("off"), None);
        let e = lifecycle(r#"close_after = "10m""#).expect_err("below the reopen window");
        assert!(
            e.to_string()
                .contains("close_after (10m) must be at least reopen_window (30m)"),
            "{e}"
        );
    }

    #[test]
    fn matchers_equality_regex_sets_negation_and_existence() {
        let rules = parse(
            r#"
[[rule]]
name = "k8s"
match = [
  { field = "source", equals = "prometheus" },
  { field = "labels.namespace", exists = true },
  { field = "severity", in = ["critical", "major"] },
  { field = "name", regex = "Kube.*" },
  { field = "labels.env", not_equals = "test" },
  { field = "labels.team", not_in = ["sandbox"] },
  { field = "name", not_regex = ".*Info" },
]
group_by = ["labels.namespace"]
window = "15m"
"#,
        )
        .expect("valid rules");
        let r = &rules.rules[0];
        assert_eq!(r.window, 900_000);
        assert!(r.matches(&alert("KubePodCrash", &[("namespace", "pay")])));
        assert!(!r.matches(&alert("KubePodCrash", &[])), "exists");
        assert!(
            !r.matches(&alert("NodeDown", &[("namespace", "pay")])),
            "regex is anchored"
        );
        assert!(
            !r.matches(&alert("KubeInfo", &[("namespace", "pay")])),
            "not_regex"
        );
        assert!(!r.matches(&alert("KubeX", &[("namespace", "p"), ("env", "test")])));
        assert!(!r.matches(&alert("KubeX", &[("namespace", "p"), ("team", "sandbox")])));
        assert_eq!(
            r.group_key(&alert("KubeX", &[("namespace", "pay")])),
            r#"k8s{labels.namespace="pay"}"#
        );
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let err = parse("[[rule]]\nname = \"a\"\ngroup_by = [\"bogus\"]\nwindow = \"5m\"\n")
            .expect_err("unknown field");
        assert_eq!(
            err.to_string(),
            "r.toml:3:13: rule \"a\": unknown field \"bogus\" (use source, name, ci, severity, status, summary or labels.<name>)"
        );
        let err = parse("[[rule]]\nname = \"a\"\ngroup_by = []\nwindow = \"5 min\"\n")
            .expect_err("bad duration");
        assert!(
            err.to_string()
                .starts_with("r.toml:4:10: rule \"a\": window: invalid duration")
        );
        let err = parse("[[rule]]\nname = \"a\"\nmatch = [{ field = \"name\", regex = \"(\" }]\ngroup_by = []\nwindow = \"5m\"\n")
            .expect_err("bad regex");
        assert!(
            err.to_string()
                .starts_with("r.toml:3:10: rule \"a\": invalid regex"),
            "{err}"
        );
        let err = parse("[[rule]]\nname = \"a\"\nmatch = [{ field = \"name\" }]\ngroup_by = []\nwindow = \"5m\"\n")
            .expect_err("no operator");
        assert!(err.to_string().contains("exactly one of"), "{err}");
        let err = parse("[[rule]]\nname = \"a\"\ngroupby = []\n").expect_err("typo");
        assert!(
            err.to_string()
                .starts_with("r.toml:3:1: unknown field `groupby`"),
            "{err}"
        );
        let err = parse("[[rule]]\nname = \"a\"\ngroup_by = []\nwindow = \"1m\"\n[[rule]]\nname = \"a\"\ngroup_by = []\nwindow = \"1m\"\n")
            .expect_err("duplicate");
        assert!(err.to_string().contains("duplicate rule name"), "{err}");
    }

    /// A pattern compiled the way rules compile them.
    fn pattern(p: &str) -> Pattern {
        let regex = RegexBuilder::new(&format!("^(?:{p})$"))
            .build()
            .expect("valid regex");
        Pattern::new(p, regex)
    }

    /// Values near the pattern's own strings: each one, cut short, extended, case-flipped,
    /// doubled, with a newline (`$` must not match before a trailing newline), and empty.
    fn probes(p: &Pattern) -> Vec<String> {
        let mut out = vec![String::new(), "\n".into(), " ".into(), "x".into()];
        for s in p.literals.iter().flatten() {
            let s = s.to_string();
            out.push(s.clone());
            out.push(format!("{s}\n"));
            out.push(format!("\n{s}"));
            out.push(format!("{s}x"));
            out.push(format!("x{s}"));
            out.push(format!("{s}{s}"));
            out.push(s.to_lowercase());
            out.push(s.to_uppercase());
            let mut chars = s.chars();
            chars.next_back();
            out.push(chars.as_str().to_string());
            let mut chars = s.chars();
            chars.next();
            out.push(chars.as_str().to_string());
        }
        out
    }

    #[test]
    fn literal_patterns_match_by_set_exactly_as_the_regex_does() {
        let shipped = Rules::embedded().expect("embedded rules");
        let mut patterns: Vec<String> = Vec::new();
        for rule in &shipped.rules {
            for m in &rule.matchers {
                if let Op::Regex(p) | Op::NotRegex(p) = &m.op {
                    assert!(p.literals.is_some(), "{}: {:?}", rule.name, p.regex);
                    let text = p.regex.as_str();
                    patterns.push(text["^(?:".len()..text.len() - ")$".len()].to_string());
                }
            }
        }
        assert!(patterns.len() >= 3, "{patterns:?}");
        patterns.extend(
            [
                "HostDown",
                "HostDown|NodeDown",
                "^?",
                "",
                "|",
                "a|",
                "()",
                "(?:)",
                "(a|b)(c|d)|e",
                "((a|b)c)?",
                "x-y:z/w=1@h,2% ok",
                "(Host|Node)(Down|Unreachable)(|Again)",
            ]
            .map(String::from),
        );
        let mut compared = 0;
        for text in &patterns {
            let Ok(regex) = RegexBuilder::new(&format!("^(?:{text})$")).build() else {
                continue;
            };
            let p = Pattern::new(text, regex);
            let Some(set) = &p.literals else {
                continue;
            };
            for v in probes(&p) {
                assert_eq!(p.is_match(&v), p.regex.is_match(&v), "{text:?} on {v:?}");
                compared += 1;
            }
            for s in set.iter() {
                assert!(p.regex.is_match(s), "{text:?}: {s:?} is in the set");
            }
        }
        assert!(compared > 1_000, "{compared}");
    }

    #[test]
    fn patterns_with_any_other_syntax_keep_the_regex() {
        for text in [
            "Kube.*",
            "(?i)hostdown",
            "(?i:a)",
            "a+",
            "a?",
            "a{2}",
            "[ab]",
            "a\\|b",
            "\\d",
            "^a",
            "a$",
            "(?P<x>a)",
            "(?<x>a)",
            "a.b",
            "café",
            "a#b",
        ] {
            assert!(pattern(text).literals.is_none(), "{text:?}");
        }
        // Unbalanced groups are not literal sets (and not valid patterns either).
        for text in ["a)", "(a", "a)|(b"] {
            assert!(literal_set(text).is_none(), "{text:?}");
        }
        // Too many strings: the regex is cheaper than a huge set.
        let wide = "(a|b|c|d)(a|b|c|d)(a|b|c|d)(a|b|c|d)(a|b)";
        assert!(literal_set(wide).is_none());
        assert_eq!(
            literal_set("(a|b|c|d)(a|b|c|d)(a|b|c|d)(a|b|c|d)").map(|s| s.len()),
            Some(256)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// Random patterns from plain letters, groups, alternation and a few other pieces of
        /// syntax: whenever a set is used, it holds exactly the strings the regex matches.
        #[test]
        fn literal_sets_equal_the_regex(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    9 => proptest::sample::select(vec!["a", "b", "ab", "|", "(", ")", "(?:"]),
                    1 => proptest::sample::select(vec!["*", "?", ".", "\\n", "^", "$"]),
                ],
                0..12,
            ),
        ) {
            let text: String = pieces.concat();
            let Ok(regex) = RegexBuilder::new(&format!("^(?:{text})$")).build() else {
                return Ok(());
            };
            let p = Pattern::new(&text, regex);
            if let Some(set) = &p.literals {
                for s in set.iter() {
                    proptest::prop_assert!(p.regex.is_match(s), "{:?}: {:?}", text, s);
                }
            }
            // Every string over {a, b, newline} up to length 6.
            let mut values = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..6 {
                last = last
                    .iter()
                    .flat_map(|s| ["a", "b", "\n"].map(|c| format!("{s}{c}")))
                    .collect();
                values.extend(last.iter().cloned());
            }
            for v in &values {
                proptest::prop_assert_eq!(p.is_match(v), p.regex.is_match(v), "{:?} on {:?}", text, v);
            }
        }
    }

    #[test]
    fn regex_size_is_limited() {
        let err = parse("[[rule]]\nname = \"a\"\nmatch = [{ field = \"name\", regex = \"(\\\\w{1000}){1000}\" }]\ngroup_by = []\nwindow = \"5m\"\n")
            .expect_err("too big");
        assert!(err.to_string().contains("size limit"), "{err}");
    }

    #[test]
    fn group_values_are_quoted_as_debug_does() {
        for v in [
            "",
            "h-17.dc1",
            "say \"hi\"",
            "back\\slash",
            "tab\there",
            "new\nline",
            "it's",
            "café",
            "\u{7f}",
            "\u{301}accent",
        ] {
            let mut out = String::new();
            push_quoted(&mut out, v);
            assert_eq!(out, format!("{v:?}"), "{v}");
        }
    }

    #[test]
    fn embedded_and_shipped_defaults_compile() {
        let rules = Rules::embedded().expect("embedded rules compile");
        assert!(!rules.rules.is_empty());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        Rules::load_dir(&dir).expect("shipped rules compile");
    }

    #[test]
    fn hash_changes_with_content() {
        let a = parse("[[rule]]\nname = \"a\"\ngroup_by = []\nwindow = \"1m\"\n").expect("ok");
        let b = parse("[[rule]]\nname = \"a\"\ngroup_by = []\nwindow = \"2m\"\n").expect("ok");
        assert_ne!(a.hash, b.hash);
    }
}
