//! Tables by incident id, read and written several times for every alert: the engine's
//! incidents and the read model's incident views.

use std::collections::{BTreeMap, VecDeque, btree_map, vec_deque};
use std::fmt;
use std::iter::{Enumerate, Peekable};
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Incident, IncidentId};

/// The engine's incidents.
pub type Incidents = IdTable<Incident>;

/// How far past the end of the vector an id may land and still grow it.
const SLACK: u64 = 4_096;

/// Values by incident id, in id order. The engine hands ids out from a counter and drops an
/// incident only when it closes, oldest first by and large, so a vector indexed by id (from
/// a moving base) holds them and a lookup is an index, where a B-tree of 10k incidents took
/// ~100 instructions of search. An id far past the end, which only a damaged or hand-made
/// log could carry, or one before the base, goes to an ordered map instead. Serialized as
/// the map it replaced (entries in id order), so snapshots do not change.
#[derive(Clone)]
pub struct IdTable<T> {
    /// `dense[id - base]`: nearly every slot is full.
    dense: VecDeque<Option<T>>,
    /// The id of `dense[0]`.
    base: u64,
    /// Ids that did not fit `dense` when inserted, or were moved out when closing emptied
    /// the slots around them; each id is in one of the two only.
    sparse: BTreeMap<IncidentId, T>,
    len: usize,
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        IdTable {
            dense: VecDeque::new(),
            base: 0,
            sparse: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T> IdTable<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where `id` would sit in `dense`, if at or past the base.
    fn slot(&self, id: &IncidentId) -> usize {
        id.0.checked_sub(self.base)
            .map_or(usize::MAX, |i| i as usize)
    }

    pub fn get(&self, id: &IncidentId) -> Option<&T> {
        match self.dense.get(self.slot(id)) {
            Some(Some(inc)) => Some(inc),
            _ if self.sparse.is_empty() => None,
            _ => self.sparse.get(id),
        }
    }

    pub fn get_mut(&mut self, id: &IncidentId) -> Option<&mut T> {
        let slot = self.slot(id);
        match self.dense.get_mut(slot) {
            Some(Some(inc)) => Some(inc),
            _ if self.sparse.is_empty() => None,
            _ => self.sparse.get_mut(id),
        }
    }

    pub fn contains_key(&self, id: &IncidentId) -> bool {
        self.get(id).is_some()
    }

    /// Stores `inc` under `id`, returning what was there.
    pub fn insert(&mut self, id: IncidentId, inc: T) -> Option<T> {
        if self.dense.is_empty() {
            // Nothing to keep in place: start at this id (a snapshot whose oldest incidents
            // closed starts far from 0).
            self.base = id.0;
        }
        let i = self.slot(&id);
        let old = if let Some(slot) = self.sparse.get_mut(&id) {
            Some(std::mem::replace(slot, inc))
        } else if i < self.dense.len() {
            self.dense[i].replace(inc)
        } else if id.0 >= self.base && (i as u64) < self.dense.len() as u64 + SLACK {
            self.dense.resize_with(i + 1, || None);
            self.dense[i] = Some(inc);
            None
        } else {
            self.sparse.insert(id, inc)
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, id: &IncidentId) -> Option<T> {
        let slot = self.slot(id);
        let old = match self.dense.get_mut(slot).and_then(Option::take) {
            Some(inc) => Some(inc),
            None if self.sparse.is_empty() => None,
            None => self.sparse.remove(id),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Removes `id` for good (an incident closing: its id never comes back), releasing
    /// the empty slots before the oldest id still held. An old incident that outlives most
    /// of its successors moves to the map rather than pin every slot after it.
    pub fn retire(&mut self, id: &IncidentId) -> Option<T> {
        let old = self.remove(id);
        loop {
            let held = self.len - self.sparse.len();
            let mostly_empty = self.dense.len() - held > held + SLACK as usize;
            match self.dense.front() {
                Some(None) => {}
                Some(Some(_)) if mostly_empty => {}
                _ => break,
            }
            if let Some(Some(inc)) = self.dense.pop_front() {
                self.sparse.insert(IncidentId(self.base), inc);
            }
            self.base += 1;
        }
        old
    }

    /// A table holding `entries`: the vector starts where the ids become dense, so that an
    /// old incident that outlived its neighbours (a snapshot after closings) does not push
    /// every later id into the map.
    pub fn from_entries(mut entries: Vec<(IncidentId, T)>) -> IdTable<T> {
        entries.sort_by_key(|(id, _)| *id);
        let last = entries.last().map_or(0, |(id, _)| id.0);
        let n = entries.len();
        let start = (0..n)
            .find(|&k| last - entries[k].0.0 < 2 * (n - k) as u64 + SLACK)
            .unwrap_or(n);
        let mut table = IdTable::default();
        let mut rest = entries.split_off(start);
        if let Some((first, _)) = rest.first() {
            table.base = first.0;
        }
        for (id, inc) in rest.drain(..).chain(entries) {
            table.insert(id, inc);
        }
        table
    }

    /// Every value with its id, in id order.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            base: self.base,
            dense: self.dense.iter().enumerate(),
            sparse: self.sparse.iter().peekable(),
            pending: None,
            left: self.len,
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, inc)| inc)
    }

    /// Values in descending id order (newest first): the vector backwards, merged with the
    /// map's (rare) entries, with nothing collected, so a page of the newest incidents costs
    /// a page.
    pub fn values_rev(&self) -> impl Iterator<Item = &T> {
        let base = self.base;
        let mut dense = self
            .dense
            .iter()
            .enumerate()
            .rev()
            .filter_map(move |(i, slot)| Some((base + i as u64, slot.as_ref()?)))
            .peekable();
        let mut sparse = self.sparse.iter().rev().map(|(id, v)| (id.0, v)).peekable();
        std::iter::from_fn(move || {
            let next = match (dense.peek(), sparse.peek()) {
                (Some(&(d, _)), Some(&(s, _))) if s > d => sparse.next(),
                (Some(_), _) => dense.next(),
                (None, _) => sparse.next(),
            };
            next.map(|(_, v)| v)
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = IncidentId> + '_ {
        self.iter().map(|(id, _)| id)
    }
}

/// [`IdTable::iter`]: the vector's entries merged with the map's, by id.
pub struct Iter<'a, T> {
    base: u64,
    dense: Enumerate<vec_deque::Iter<'a, Option<T>>>,
    sparse: Peekable<btree_map::Iter<'a, IncidentId, T>>,
    /// The vector's next entry, taken but not yet handed out.
    pending: Option<(IncidentId, &'a T)>,
    left: usize,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = (IncidentId, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pending.is_none() {
            let base = self.base;
            self.pending = self
                .dense
                .find_map(|(i, slot)| slot.as_ref().map(|inc| (IncidentId(base + i as u64), inc)));
        }
        let item = match (self.pending, self.sparse.peek()) {
            (Some((d, _)), Some(&(&s, inc))) if s < d => {
                self.sparse.next();
                Some((s, inc))
            }
            (Some(_), _) => self.pending.take(),
            (None, Some(&(&s, inc))) => {
                self.sparse.next();
                Some((s, inc))
            }
            (None, None) => None,
        };
        self.left = self.left.saturating_sub(usize::from(item.is_some()));
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

impl<'a, T> IntoIterator for &'a IdTable<T> {
    type Item = (IncidentId, &'a T);
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> std::ops::Index<&IncidentId> for IdTable<T> {
    type Output = T;
    fn index(&self, id: &IncidentId) -> &T {
        match self.get(id) {
            Some(inc) => inc,
            None => panic!("no incident {id}"),
        }
    }
}

/// Equal when they hold the same values under the same ids, however stored.
impl<T: PartialEq> PartialEq for IdTable<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: fmt::Debug> fmt::Debug for IdTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<T: Serialize> Serialize for IdTable<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len))?;
        for (id, inc) in self {
            map.serialize_entry(&id, inc)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for IdTable<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = IdTable<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of incidents by id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdTable<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<IncidentId, T>()? {
                    entries.push(entry);
                }
                Ok(IdTable::from_entries(entries))
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::snapshot_codec::{from_slice, to_vec};
    use crate::engine::{IncidentState, Priority, SharedStr};
    use crate::model::Severity;

    fn incident(id: u64) -> Incident {
        Incident {
            id: IncidentId(id),
            state: IncidentState::Open,
            rule: SharedStr::from("r"),
            group_key: SharedStr::from(format!("g{id}")),
            opened_at: id as i64,
            last_activity: id as i64,
            resolved_at: None,
            merged_into: None,
            topology: id.is_multiple_of(2),
            members: Vec::new(),
            cis: vec![id as u32],
            firing: 1,
            quiet_since: None,
            root: None,
            root_ci: None,
            services: Default::default(),
            priority: Priority::P3,
            max_severity: Severity::Major,
        }
    }

    /// Newest first without far ids (the vector alone) and with them (merged).
    #[test]
    fn values_rev_is_descending_id_order() {
        let mut table = Incidents::default();
        for id in [3, 1, 2, 7] {
            table.insert(IncidentId(id), incident(id));
        }
        let ids = |t: &Incidents| t.values_rev().map(|i| i.id.0).collect::<Vec<_>>();
        assert_eq!(ids(&table), [7, 3, 2, 1]);
        table.insert(IncidentId(1 << 40), incident(1 << 40));
        assert_eq!(ids(&table), [1 << 40, 7, 3, 2, 1]);
    }

    /// Closing incidents oldest first releases the vector's front; one that lives on moves
    /// to the map instead of pinning every slot after it. Contents stay those of a map.
    #[test]
    fn retiring_releases_the_front_of_the_vector() {
        let mut table = Incidents::default();
        let mut map = BTreeMap::new();
        for id in 1..=20_000 {
            table.insert(IncidentId(id), incident(id));
            map.insert(IncidentId(id), incident(id));
        }
        for id in 2..=19_000 {
            let id = IncidentId(id);
            assert_eq!(table.retire(&id), map.remove(&id));
        }
        assert!(
            table.dense.len() <= 1_000 + SLACK as usize,
            "{}",
            table.dense.len()
        );
        assert_eq!(
            table.sparse.keys().copied().collect::<Vec<_>>(),
            [IncidentId(1)]
        );
        for id in 20_001..=20_100 {
            table.insert(IncidentId(id), incident(id));
            map.insert(IncidentId(id), incident(id));
        }
        assert_eq!(table.sparse.len(), 1, "new ids still go to the vector");
        for id in [0, 1, 2, 19_000, 19_001, 20_000, 20_100, 20_101] {
            let id = IncidentId(id);
            assert_eq!(table.get(&id), map.get(&id), "{id}");
        }
        assert!(table.iter().eq(map.iter().map(|(k, v)| (*k, v))));
        assert!(table.values_rev().eq(map.values().rev()));
        assert_eq!(to_vec(&table).expect("bin"), to_vec(&map).expect("bin"));
        // Decoding a table whose first ids closed starts the vector at its first id.
        let back: Incidents = from_slice(&to_vec(&table).expect("bin")).expect("decode");
        assert_eq!(back, table);
        assert_eq!(back.sparse.len(), 1, "only the old incident in the map");
    }

    /// Inserts, replacements and removals, ids dense and far apart, against a `BTreeMap`
    /// doing the same: same contents, same order, same encodings.
    #[test]
    fn behaves_and_encodes_as_the_map_it_replaced() {
        let mut table = Incidents::default();
        let mut map = BTreeMap::new();
        let far = 1_000_000_000_000;
        let ops: Vec<(bool, u64)> = (1..300)
            .map(|i| (true, i))
            .chain([(true, far), (true, far + 7), (true, 5_000), (true, 0)])
            .chain((300..700).map(|i| (true, i)))
            .chain([
                (false, 17),
                (false, far),
                (true, 17),
                (false, 999),
                (true, far),
            ])
            .chain([(true, 4_600), (true, 4_700), (false, 4_600), (true, 4_650)])
            .collect();
        for (insert, id) in ops {
            let id = IncidentId(id);
            if insert {
                let mut inc = incident(id.0);
                inc.firing = table.len() as u32;
                assert_eq!(table.insert(id, inc.clone()), map.insert(id, inc));
            } else {
                assert_eq!(table.remove(&id), map.remove(&id));
            }
            assert_eq!(table.len(), map.len());
        }
        assert!(!table.sparse.is_empty(), "far ids went to the map");
        for id in [
            0,
            1,
            17,
            299,
            999,
            5_000,
            4_600,
            4_650,
            far,
            far + 7,
            far + 8,
        ] {
            let id = IncidentId(id);
            assert_eq!(table.get(&id), map.get(&id), "{id}");
            assert_eq!(table.contains_key(&id), map.contains_key(&id));
        }
        let pairs: Vec<(IncidentId, &Incident)> = table.iter().collect();
        let want: Vec<(IncidentId, &Incident)> = map.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(pairs, want);
        assert!(table.values_rev().eq(map.values().rev()));
        assert_eq!(table.iter().len(), map.len());
        assert_eq!(to_vec(&table).expect("bin"), to_vec(&map).expect("bin"));
        let json = serde_json::to_string(&table).expect("json");
        assert_eq!(json, serde_json::to_string(&map).expect("json"));
        let back: Incidents = from_slice(&to_vec(&map).expect("bin")).expect("decode");
        assert_eq!(back, table);
        let back: Incidents = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, table);
        assert_eq!(format!("{table:?}"), format!("{:?}", map));
    }
}
