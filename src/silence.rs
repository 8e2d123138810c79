//! Alertmanager-style silences: label matchers over a time range. Created and expired through
//! the engine as facts (so replay sees them), they suppress matching new alerts, which are
//! recorded as suppressed with the silence's id rather than dropped.
//!
//! Matchers see an alert's labels plus `alertname` (the alert name), `source`, `ci` and
//! `severity` when the labels do not carry them, so silences work for native alerts too.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::model::{Alert, Millis};

/// One label matcher, in Alertmanager's API shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    #[serde(rename = "isRegex", default)]
    pub is_regex: bool,
    #[serde(rename = "isEqual", default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

/// A silence as recorded in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: Millis,
    pub ends_at: Millis,
    pub created_by: String,
    pub comment: String,
    pub updated_at: Millis,
}

/// Pattern size limit, as for rule regexes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// The value an alert has for a matcher's label name.
pub fn label<'a>(alert: &'a Alert, name: &str) -> Option<&'a str> {
    if let Some(v) = alert.labels.get(name) {
        return Some(v);
    }
    match name {
        "alertname" => Some(&alert.name),
        "source" => Some(&alert.source),
        "ci" => alert.ci.as_deref(),
        "severity" => Some(alert.severity.as_str()),
        _ => None,
    }
}

impl Matcher {
    /// Whether `value` (absent reads as "", as in Alertmanager) satisfies the matcher.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        let hit = if self.is_regex {
            compile(&self.value).is_ok_and(|r| r.is_match(v))
        } else {
            v == self.value
        };
        hit == self.is_equal
    }

    /// Parses Prometheus matcher syntax: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.
    pub fn parse(s: &str) -> Option<Matcher> {
        let s = s.trim().trim_start_matches('{').trim_end_matches('}');
        let (name, op, rest) = ["!~", "=~", "!=", "="].iter().find_map(|op| {
            let (name, rest) = s.split_once(op)?;
            Some((name.trim(), *op, rest.trim()))
        })?;
        let value = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(rest);
        (!name.is_empty()).then(|| Matcher {
            name: name.to_string(),
            value: value.to_string(),
            is_regex: op.ends_with('~'),
            is_equal: !op.starts_with('!'),
        })
    }
}

impl Silence {
    pub fn active(&self, now: Millis) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    pub fn matches(&self, alert: &Alert) -> bool {
        self.matchers
            .iter()
            .all(|m| m.matches(label(alert, &m.name)))
    }

    /// `active`, `pending` or `expired`, as Alertmanager reports it.
    pub fn state(&self, now: Millis) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }
}

/// Checks a silence before it is recorded: the reason it is refused, if it is.
pub fn validate(matchers: &[Matcher], starts_at: Millis, ends_at: Millis) -> Result<(), String> {
    if matchers.is_empty() {
        return Err("a silence needs at least one matcher".into());
    }
    for m in matchers {
        if m.name.is_empty() {
            return Err("matcher with an empty label name".into());
        }
        if m.is_regex
            && let Err(e) = compile(&m.value)
        {
            return Err(format!(
                "matcher {}: invalid regex {:?}: {e}",
                m.name, m.value
            ));
        }
    }
    if ends_at <= starts_at {
        return Err("endsAt must be after startsAt".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_matcher_syntax() {
        let m = Matcher::parse(r#"alertname=~"Kube.*""#).expect("parses");
        assert!(m.is_regex && m.is_equal && m.name == "alertname" && m.value == "Kube.*");
        assert!(m.matches(Some("KubePodCrash")));
        assert!(!m.matches(Some("NodeDown")));
        let m = Matcher::parse(r#"{severity!="info"}"#).expect("parses");
        assert!(!m.is_regex && !m.is_equal);
        assert!(m.matches(None), "absent reads as empty, which is not info");
        assert!(Matcher::parse("garbage").is_none());
    }

    #[test]
    fn validation_names_the_problem() {
        let m = |v: &str| Matcher {
            name: "alertname".into(),
            value: v.into(),
            is_regex: true,
            is_equal: true,
        };
        assert!(validate(&[], 0, 1).is_err());
        assert!(
            validate(&[m("(")], 0, 1)
                .expect_err("bad regex")
                .contains("invalid regex")
        );
        assert!(validate(&[m("x")], 5, 5).is_err());
        assert!(validate(&[m("x")], 0, 1).is_ok());
    }
}
