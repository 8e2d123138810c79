//! The JSON tree the decoders read: like `serde_json::Value`, but built for one pass over an
//! alert payload. Strings borrow from the payload unless they hold escapes, objects are small
//! vectors instead of B-trees, and parsing refuses what a decoder must not guess at: a key
//! given twice, or nesting deeper than the limit (checked while parsing, so a deep payload is
//! refused after at most `max_depth` open containers, never fully built).
//!
//! Objects iterate in key order, as `serde_json::Map` does, so messages and derived labels do
//! not depend on the sender's field order.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::quote;

/// A parsed JSON value borrowing from the payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Object(Map<'a>),
}

impl Value<'_> {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// JSON type name, for "must be X, got Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Compact JSON text, as `serde_json::Value`'s `Display` prints it (object keys sorted).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A JSON object: entries in document order, keys unique (the parser refuses repeats).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map<'a> {
    entries: Vec<(Cow<'a, str>, Value<'a>)>,
}

impl<'a> Map<'a> {
    pub fn new() -> Self {
        Map::default()
    }

    /// Sets `key`, returning the value it replaces.
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: Value<'a>) -> Option<Value<'a>> {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Takes `key` out of the object. (Document order is not kept: iteration sorts.)
    pub fn remove(&mut self, key: &str) -> Option<Value<'a>> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.swap_remove(at).1)
    }

    /// Entries in document order: for a caller that does not need key order, or restores it
    /// itself, without the sort [`Map::iter`] pays.
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&str, &Value<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value<'a>)> {
        let mut refs: Vec<_> = self.entries.iter().map(|(k, v)| (k.as_ref(), v)).collect();
        refs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        refs.into_iter()
    }
}

impl<'a> IntoIterator for Map<'a> {
    type Item = (Cow<'a, str>, Value<'a>);
    type IntoIter = std::vec::IntoIter<(Cow<'a, str>, Value<'a>)>;

    /// Entries in key order.
    fn into_iter(mut self) -> Self::IntoIter {
        self.entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.entries.into_iter()
    }
}

/// Why a payload is not a JSON tree the decoders may read.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON (syntax, bad UTF-8, number out of range, trailing bytes).
    Malformed(serde_json::Error),
    /// An object names the same key twice; the message says which and where.
    DuplicateKey(serde_json::Error),
    /// Arrays and objects nest deeper than the limit.
    TooDeep,
}

/// Parses `body`, counting the top-level container as depth 1.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Value<'_>, ParseError> {
    let refused = Cell::new(Refusal::None);
    let seed = ValueSeed {
        depth: 1,
        max_depth,
        refused: &refused,
    };
    // One UTF-8 check of the whole body is much cheaper than serde_json's check of every
    // string from a byte slice. A body that fails it is parsed from the slice as before, so
    // the error (message and position) is serde_json's own, unchanged.
    let value = match std::str::from_utf8(body) {
        Ok(text) => run(seed, serde_json::Deserializer::from_str(text)),
        Err(_) => run(seed, serde_json::Deserializer::from_slice(body)),
    };
    value.map_err(|e| match refused.get() {
        Refusal::None => ParseError::Malformed(e),
        Refusal::Duplicate => ParseError::DuplicateKey(e),
        Refusal::TooDeep => ParseError::TooDeep,
    })
}

/// Parses one value that must fill the whole input.
fn run<'a, R: serde_json::de::Read<'a>>(
    seed: ValueSeed<'_>,
    mut de: serde_json::Deserializer<R>,
) -> Result<Value<'a>, serde_json::Error> {
    let value = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// What the visitors refused, since serde's error type cannot carry it.
#[derive(Clone, Copy)]
enum Refusal {
    None,
    Duplicate,
    TooDeep,
}

/// Linear key search below this many entries; a hash set above, so a hostile object with
/// thousands of keys stays linear.
const LINEAR_KEYS: usize = 32;

#[derive(Clone, Copy)]
struct ValueSeed<'r> {
    /// Depth of a container that starts here.
    depth: usize,
    max_depth: usize,
    refused: &'r Cell<Refusal>,
}

impl ValueSeed<'_> {
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        if self.depth > self.max_depth {
            self.refused.set(Refusal::TooDeep);
            return Err(E::custom("too deep"));
        }
        Ok(ValueSeed {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value<'de>, E> {
        // JSON cannot spell NaN or infinity, so `from_f64` only declines what never arrives.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let inner = self.enter()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let inner = self.enter()?;
        // An alert object has about a dozen fields; growing from empty would copy it thrice.
        let mut entries: Vec<(Cow<'de, str>, Value<'de>)> = Vec::with_capacity(12);
        let mut seen: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let repeated = match &mut seen {
                None if entries.len() < LINEAR_KEYS => entries.iter().any(|(k, _)| *k == key),
                None => {
                    let mut set: HashSet<_> = entries.iter().map(|(k, _)| k.clone()).collect();
                    let repeated = !set.insert(key.clone());
                    seen = Some(set);
                    repeated
                }
                Some(set) => !set.insert(key.clone()),
            };
            if repeated {
                self.refused.set(Refusal::Duplicate);
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    quote(&key)
                )));
            }
            let value = map.next_value_seed(inner)?;
            entries.push((key, value));
        }
        Ok(Value::Object(Map { entries }))
    }
}

/// An object key, borrowed from the payload when it holds no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => n.serialize(s),
            Value::String(v) => s.serialize_str(v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = s.serialize_map(Some(map.len()))?;
                for (k, v) in map.iter() {
                    out.serialize_entry(k, v)?;
                }
                out.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(body: &str) -> Value<'_> {
        parse(body.as_bytes(), 32).expect("parses")
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let v = parse_ok(r#"{"a":"plain","b":"esc\"aped"}"#);
        let Value::Object(map) = v else {
            panic!("object expected")
        };
        assert!(matches!(
            map.get("a"),
            Some(Value::String(Cow::Borrowed("plain")))
        ));
        assert!(matches!(map.get("b"), Some(Value::String(Cow::Owned(s))) if s == "esc\"aped"));
    }

    #[test]
    fn prints_like_serde_json() {
        for body in [
            r#"{"z":1,"a":[1.5,-2,true,null,"x\ny"],"m":{"b":{},"a":[]}}"#,
            r#"[1e3,0.1,18446744073709551615,-9223372036854775808]"#,
            r#""\u00e9\ud83d\ude00""#,
        ] {
            let ours = parse_ok(body).to_json();
            let theirs = serde_json::from_str::<serde_json::Value>(body)
                .expect("serde_json parses")
                .to_string();
            assert_eq!(ours, theirs, "{body}");
        }
    }

    #[test]
    fn objects_iterate_in_key_order() {
        let Value::Object(map) = parse_ok(r#"{"b":1,"c":2,"a":3}"#) else {
            panic!("object expected")
        };
        let keys: Vec<_> = map.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let keys: Vec<_> = map.into_iter().map(|(k, _)| k.into_owned()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn repeated_keys_are_refused_small_and_large() {
        assert!(matches!(
            parse(br#"{"a":1,"b":{"a":2},"a":3}"#, 32),
            Err(ParseError::DuplicateKey(_))
        ));
        // Past the linear search: the hash set must catch it too, also an escaped spelling.
        let mut body = String::from("{");
        for i in 0..100 {
            body.push_str(&format!("\"k{i}\":{i},"));
        }
        body.push_str("\"k\\u0037\":0}");
        match parse(body.as_bytes(), 32) {
            Err(ParseError::DuplicateKey(e)) => assert!(e.to_string().contains("\"k7\"")),
            other => panic!("expected a duplicate key, got {other:?}"),
        }
        assert!(parse(br#"[{"a":1},{"a":2}]"#, 32).is_ok());
    }

    #[test]
    fn depth_counts_containers_and_ignores_brackets_in_strings() {
        assert!(parse(br#"[["]]]]]]\"[[[[[["]]"#, 2).is_ok());
        assert!(matches!(parse(b"[[[[]]]]", 3), Err(ParseError::TooDeep)));
        assert!(parse(b"[[[]]]", 3).is_ok());
        assert!(matches!(
            parse(br#"{"a":{"b":[]}}"#, 2),
            Err(ParseError::TooDeep)
        ));
        assert!(matches!(parse(b"[1] x", 3), Err(ParseError::Malformed(_))));
        assert!(matches!(parse(b"\xff", 3), Err(ParseError::Malformed(_))));
    }
}
