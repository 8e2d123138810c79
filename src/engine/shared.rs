//! Compact pieces of the engine's tables: text shared between entries, and the list of
//! incidents indexed on one CI. Both serialize exactly as the `String` and `Vec` they
//! replace, so snapshots do not change.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use foldhash::{HashSet, HashSetExt};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::IncidentId;

/// Text held by many table entries: a rule name by every incident it opened, an alert name
/// by every alert of that name, a group key by its incident and the group index. A copy is
/// a reference count, where a `String` copy is an allocation on every new alert.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Arc::from(s))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(Arc::from(s))
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// As a `String` prints, so state dumps read as before.
impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SharedStr::from)
    }
}

/// Names seen so far (rules, alerts), so that entries with the same name share one copy.
/// A cache beside the state, never part of it. Bounded: past the limit (a sender inventing
/// alert names) a new name is simply allocated.
#[derive(Clone, Debug, Default)]
pub(super) struct Names(HashSet<SharedStr>);

impl Names {
    const LIMIT: usize = 4_096;

    pub(super) fn get(&mut self, name: &str) -> SharedStr {
        if let Some(known) = self.0.get(name) {
            return known.clone();
        }
        let new = SharedStr::from(name);
        if self.0.len() < Self::LIMIT {
            if self.0.capacity() == 0 {
                self.0 = HashSet::with_capacity(64);
            }
            self.0.insert(new.clone());
        }
        new
    }
}

/// The unresolved topology incidents with a member on one CI, in the order they arrived
/// there. Nearly always one, held inline; a second spills to a vector. Serialized as the
/// list it stands for; equal when the lists are.
#[derive(Clone, Debug)]
pub(super) enum IncidentSet {
    One(IncidentId),
    Many(Vec<IncidentId>),
}

impl IncidentSet {
    pub(super) fn as_slice(&self) -> &[IncidentId] {
        match self {
            IncidentSet::One(id) => std::slice::from_ref(id),
            IncidentSet::Many(ids) => ids,
        }
    }

    /// Adds `id` at the end unless it is there.
    pub(super) fn insert(&mut self, id: IncidentId) {
        match self {
            IncidentSet::One(first) if *first == id => {}
            IncidentSet::One(first) => *self = IncidentSet::Many(vec![*first, id]),
            IncidentSet::Many(ids) => {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }

    /// Removes `id`; true when nothing is left (the caller drops the entry).
    pub(super) fn remove(&mut self, id: IncidentId) -> bool {
        match self {
            IncidentSet::One(only) => *only == id,
            IncidentSet::Many(ids) => {
                ids.retain(|&x| x != id);
                match ids[..] {
                    [] => true,
                    [only] => {
                        *self = IncidentSet::One(only);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

impl PartialEq for IncidentSet {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Serialize for IncidentSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de> Deserialize<'de> for IncidentSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut ids = Vec::<IncidentId>::deserialize(d)?;
        Ok(match ids[..] {
            [only] => IncidentSet::One(only),
            _ => {
                ids.shrink_to_fit();
                IncidentSet::Many(ids)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::snapshot_codec::{from_slice, to_vec};

    #[test]
    fn shared_text_encodes_as_a_string() {
        for text in ["", "reachability", "same-ci{ci=\"h1\"}", "café \u{1f600}\n"] {
            let shared = SharedStr::from(text);
            let owned = text.to_string();
            assert_eq!(to_vec(&shared).expect("bin"), to_vec(&owned).expect("bin"));
            assert_eq!(
                serde_json::to_string(&shared).expect("json"),
                serde_json::to_string(&owned).expect("json")
            );
            assert_eq!(format!("{shared:?}"), format!("{owned:?}"));
            let back: SharedStr = from_slice(&to_vec(&owned).expect("bin")).expect("decode");
            assert_eq!(back, shared);
            let back: SharedStr =
                serde_json::from_str(&serde_json::to_string(&owned).expect("json"))
                    .expect("decode");
            assert_eq!(back, shared);
        }
    }

    #[test]
    fn an_incident_set_encodes_as_its_list_and_keeps_arrival_order() {
        let ids = |v: &[u64]| v.iter().map(|&i| IncidentId(i)).collect::<Vec<_>>();
        let mut set = IncidentSet::One(IncidentId(7));
        for (step, want) in [(3, vec![7, 3]), (7, vec![7, 3]), (9, vec![7, 3, 9])] {
            set.insert(IncidentId(step));
            assert_eq!(set.as_slice(), ids(&want));
        }
        for list in [ids(&[5]), ids(&[7, 3, 9]), ids(&[])] {
            let set = match list[..] {
                [only] => IncidentSet::One(only),
                _ => IncidentSet::Many(list.clone()),
            };
            let bin = to_vec(&set).expect("bin");
            assert_eq!(bin, to_vec(&list).expect("bin"));
            assert_eq!(
                serde_json::to_string(&set).expect("json"),
                serde_json::to_string(&list).expect("json")
            );
            let back: IncidentSet = from_slice(&bin).expect("decode");
            assert_eq!(back.as_slice(), list);
        }
        assert!(!set.remove(IncidentId(3)));
        assert_eq!(set.as_slice(), ids(&[7, 9]));
        assert!(!set.remove(IncidentId(7)));
        assert!(matches!(set, IncidentSet::One(IncidentId(9))));
        assert!(!set.remove(IncidentId(1)), "absent: nothing changes");
        assert!(set.remove(IncidentId(9)));
        assert_eq!(
            IncidentSet::One(IncidentId(4)),
            IncidentSet::Many(ids(&[4]))
        );
    }

    #[test]
    fn names_are_shared_up_to_the_limit() {
        let mut names = Names::default();
        let a = names.get("HostDown");
        let b = names.get("HostDown");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        for i in 0..Names::LIMIT {
            names.get(&format!("n{i}"));
        }
        let c = names.get("past the limit");
        let d = names.get("past the limit");
        assert_eq!(c, d);
        assert!(!Arc::ptr_eq(&c.0, &d.0));
        assert!(Arc::ptr_eq(&names.get("HostDown").0, &a.0));
    }
}
