//! Read model: the incident views the HTTP API and `replay` render (CONTRACTS §4).
//!
//! It is a second projection of the same facts the engine applies, fed only after they are
//! durable, so nothing an operator saw can vanish on restart. Unlike the engine's state it
//! keeps what people read: alert details, reasons, the timeline. An alert that starts a new
//! life in another incident leaves its old copy behind, so history stays as it was shown.
//!
//! Memory: it holds every alert until its incident closes (`lifecycle.close_after`), so it is
//! kept compact. Strings are interned ([`Sym`]: source, name, CI, label keys and values,
//! reasons repeat across alerts), labels and annotations are one sorted boxed slice per alert,
//! and timeline entries keep the interned parts of their text and render it when asked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::cmdb::Topology;
use crate::engine::{Fact, IdTable, IncidentId, IncidentState, Priority};
use crate::model::{
    Alert, AlertRef, Fingerprint, FingerprintMap, Millis, Severity, Status, format_time,
};
use crate::silence::Silence;

pub use sym::Sym;

/// Distinct texts interned since start. They are not freed while running (2^28 at most; past
/// that a new text reads as empty), so this only grows: with the number of distinct label
/// values, reasons and summaries seen, not with the alerts held now. A restart from a
/// snapshot interns only the texts its views still use.
pub fn interned_strings() -> u32 {
    sym::count()
}

/// Process-wide string interning for the read model.
///
/// Global rather than held by the [`ReadModel`] so that views render (serde, the API, replay)
/// without a table handed around. Strings are never freed: readers get `&'static str`, which
/// is what makes reading lock-free; closing incidents frees everything else, and a restart
/// compacts the texts. Symbols never reach output or snapshots (snapshots write the text),
/// so their numbering does not matter.
///
/// Reading a symbol's text takes no lock: texts sit in fixed-size chunks that never move
/// once allocated, so rendering a 10k-alert incident does not take 100k lock round trips and
/// the table never stops the writer to copy itself. Most of an alert's texts repeat, so each
/// thread first looks in a small cache of the texts it interned recently (a hit takes no lock
/// and no probe into the big table). Lookup by text is split into shards by
/// hash, each behind its own mutex: a shard that doubles rehashes 1/64 of the strings (one
/// table of two million strings stalled the writer for a measurable fraction of a second
/// when it doubled).
mod sym {
    use std::cell::Cell;
    use std::fmt;
    use std::hash::BuildHasher;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
    use std::sync::{LazyLock, Mutex, OnceLock};

    use crate::model::{SHARDS, staggered_shard};

    /// An interned string: 4 bytes in place of a `String` (24 bytes plus a heap block), and
    /// one copy of the text however many alerts carry it.
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Sym(NonZeroU32);

    const CHUNK_BITS: u32 = 16;
    const CHUNK: usize = 1 << CHUNK_BITS;
    /// 2^28 strings in all; past that, new strings read as empty rather than fail.
    const CHUNKS: usize = 1 << 12;
    const MAX: u32 = (CHUNK * CHUNKS) as u32;

    /// `CHUNK` texts, each set once.
    type Chunk = Box<[OnceLock<&'static str>]>;

    /// Symbols by the low 32 bits of their text's hash, in open addressing with linear
    /// probing: a slot packs the symbol (high half; 0 = empty) and those bits, so a probe
    /// reads one cache line where a SwissTable reads its control bytes and then the entry,
    /// two misses each time at a replay's scale. Growing rehashes from the kept bits
    /// without reading any text, and a probe reads a text only when the bits match.
    #[derive(Default)]
    struct Shard {
        slots: Box<[u64]>,
        len: usize,
    }

    impl Shard {
        const MIN: usize = 1024;

        /// The slot holding `s` (filed under `lo`), or the empty slot where it belongs.
        fn find(&self, lo: u32, s: &str) -> Result<Sym, usize> {
            let mask = self.slots.len() - 1;
            let mut i = Self::home(lo, mask);
            loop {
                let slot = self.slots[i];
                let Some(sym) = NonZeroU32::new((slot >> 32) as u32).map(Sym) else {
                    return Err(i);
                };
                if slot as u32 == lo && text(sym) == Some(s) {
                    return Ok(sym);
                }
                i = (i + 1) & mask;
            }
        }

        fn home(lo: u32, mask: usize) -> usize {
            (spread(lo) >> 32) as usize & mask
        }

        /// Makes room for one more symbol, doubling (and refiling every slot) at three
        /// quarters full: a miss then probes ~8 slots of 8 bytes, one or two cache lines.
        /// (Half full measured slower at 3M alerts: the larger table misses more.) A new
        /// table is published to `home` for [`prefetch`].
        fn reserve(&mut self, home: &Home) {
            if (self.len + 1) * 4 <= self.slots.len() * 3 {
                return;
            }
            let size = (self.slots.len() * 2).max(Self::MIN);
            let old = std::mem::replace(&mut self.slots, vec![0; size].into_boxed_slice());
            let mask = size - 1;
            for slot in old.iter().copied().filter(|&s| s != 0) {
                let mut i = Self::home(slot as u32, mask);
                while self.slots[i] != 0 {
                    i = (i + 1) & mask;
                }
                self.slots[i] = slot;
            }
            home.mask.store(mask, Ordering::Relaxed);
            home.slots.store(self.slots.as_mut_ptr(), Ordering::Relaxed);
        }
    }

    /// Where a shard's slots are, readable without its lock, for prefetching only: a reader
    /// may pair a stale pointer with a fresh mask, which a prefetch (a hint that never
    /// faults) tolerates and a load would not.
    struct Home {
        slots: AtomicPtr<u64>,
        mask: AtomicUsize,
    }

    /// Asks the CPU to start loading the home slot of the text hashed `h`, so that the
    /// probes of several texts overlap their cache misses instead of taking them one by one
    /// (the shard's lock, a locked instruction, would otherwise order them).
    fn prefetch(h: u64) {
        let home = &TABLE.homes[staggered_shard(h)];
        let slots = home.slots.load(Ordering::Relaxed);
        if slots.is_null() {
            return;
        }
        let at = slots.wrapping_add(Shard::home(h as u32, home.mask.load(Ordering::Relaxed)));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch only hints at the caches: it reads nothing into the program,
        // never faults, and any address is allowed.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(at.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }

    struct Table {
        /// Texts by symbol; a chunk is allocated when the first of its symbols is.
        chunks: Box<[OnceLock<Chunk>]>,
        /// Symbols handed out so far.
        len: AtomicU32,
        /// Symbols by the hash of their text: its high half picks the shard
        /// ([`staggered_shard`], so shards double one at a time), its low half the slot.
        shards: Box<[Mutex<Shard>]>,
        /// Each shard's slots, for [`prefetch`].
        homes: Box<[Home]>,
        /// Seeded per process: label values are the pushers' choice, collisions must not be.
        hasher: foldhash::fast::RandomState,
    }

    static TABLE: LazyLock<Table> = LazyLock::new(|| Table {
        chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
        len: AtomicU32::new(0),
        shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        homes: (0..SHARDS)
            .map(|_| Home {
                slots: AtomicPtr::new(std::ptr::null_mut()),
                mask: AtomicUsize::new(0),
            })
            .collect(),
        hasher: foldhash::fast::RandomState::default(),
    });

    fn hash(s: &str) -> u64 {
        TABLE.hasher.hash_one(s)
    }

    /// The hash a shard files a text under, from the 32 bits it keeps (`h as u32`; the shard
    /// was chosen by the high half): the odd multiplier mixes them into the high half, whose
    /// low bits pick the home slot.
    fn spread(lo: u32) -> u64 {
        u64::from(lo).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn index(sym: Sym) -> usize {
        sym.0.get() as usize - 1
    }

    fn text(sym: Sym) -> Option<&'static str> {
        let i = index(sym);
        let chunk = TABLE.chunks.get(i >> CHUNK_BITS)?.get()?;
        chunk.get(i & (CHUNK - 1))?.get().copied()
    }

    /// Slots in each thread's cache of recently interned texts.
    const RECENT: usize = 4096;

    thread_local! {
        /// Direct-mapped by hash: (hash, raw symbol, 0 for none). Alerts repeat most of their
        /// texts (label keys, sources, names, team and environment values), and a hit here
        /// costs one compare against a text that is likely in cache, where the shared table
        /// costs a lock and a probe into millions of entries.
        static RECENTLY: [Cell<(u64, u32)>; RECENT] = const { [const { Cell::new((0, 0)) }; RECENT] };
    }

    /// Finds `text`, or makes it a new symbol, keeping the buffer of an owned `text`.
    fn intern<S: AsRef<str> + Into<Box<str>>>(text_in: S) -> Sym {
        let h = hash(text_in.as_ref());
        recent(text_in.as_ref(), h).unwrap_or_else(|| intern_missed(text_in, h))
    }

    /// The symbol of `s` (hashed `h`) if the thread's cache holds it.
    fn recent(s: &str, h: u64) -> Option<Sym> {
        let (seen, raw) = RECENTLY
            .try_with(|r| r[h as usize % RECENT].get())
            .unwrap_or((0, 0));
        let sym = NonZeroU32::new(raw).map(Sym)?;
        (seen == h && text(sym) == Some(s)).then_some(sym)
    }

    /// [`intern`] after the thread's cache missed: the shared table, then the cache.
    fn intern_missed<S: AsRef<str> + Into<Box<str>>>(text_in: S, h: u64) -> Sym {
        let sym = intern_shared(text_in, h);
        // Fails only while the thread exits: the next call then takes the shared path.
        let _ = RECENTLY.try_with(|r| r[h as usize % RECENT].set((h, sym.0.get())));
        sym
    }

    /// Texts interned together by [`Sym::many`]: more go one by one.
    const BATCH: usize = 32;

    /// Interns `texts` into `out` in order, as [`intern`] would one by one, but first hashes
    /// them all and prefetches the shared slots of those the thread's cache lacks, so an
    /// alert's few new or rare texts cost about one cache miss together, not one each.
    fn many(texts: &[&str], out: &mut Vec<Sym>) {
        for group in texts.chunks(BATCH) {
            let mut found = [(0u64, None::<Sym>); BATCH];
            for (f, s) in found.iter_mut().zip(group) {
                let h = hash(s);
                let sym = recent(s, h);
                if sym.is_none() {
                    prefetch(h);
                }
                *f = (h, sym);
            }
            let group = found.iter().zip(group);
            out.extend(group.map(|(&(h, sym), s)| sym.unwrap_or_else(|| intern_missed(*s, h))));
        }
    }

    /// [`intern`] past the thread's cache: the table all threads share.
    fn intern_shared<S: AsRef<str> + Into<Box<str>>>(text_in: S, h: u64) -> Sym {
        let s = text_in.as_ref();
        let shard = staggered_shard(h);
        let mut ids = TABLE.shards[shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let lo = h as u32;
        ids.reserve(&TABLE.homes[shard]);
        let free = match ids.find(lo, s) {
            Ok(sym) => return sym,
            Err(free) => free,
        };
        let Ok(n) = TABLE
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX).then_some(n + 1)
            })
        else {
            return Sym(NonZeroU32::MAX);
        };
        let sym = Sym(NonZeroU32::MIN.saturating_add(n));
        let i = n as usize;
        if let Some(chunk) = TABLE.chunks.get(i >> CHUNK_BITS) {
            let chunk = chunk.get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
            if let Some(slot) = chunk.get(i & (CHUNK - 1)) {
                let _ = slot.set(Box::leak(text_in.into()));
            }
        }
        ids.slots[free] = u64::from(sym.0.get()) << 32 | u64::from(lo);
        ids.len += 1;
        sym
    }

    impl Sym {
        /// Interns `s`, copying it only if it is new.
        pub fn new(s: &str) -> Sym {
            intern(s)
        }

        /// Interns `s`, keeping its buffer if it is new.
        pub fn from_string(s: String) -> Sym {
            intern(s)
        }

        /// Interns `texts` into `out`, in order: the same symbols as [`Sym::new`] one by
        /// one, with the cache misses of the texts seen rarely overlapped.
        pub fn many(texts: &[&str], out: &mut Vec<Sym>) {
            many(texts, out);
        }

        pub fn as_str(self) -> &'static str {
            text(self).unwrap_or("")
        }

        /// The number snapshots write for this symbol (1-based position in the table).
        pub(super) fn raw(self) -> u32 {
            self.0.get()
        }
    }

    /// Symbols handed out so far: a snapshot's views refer to none beyond.
    pub(super) fn count() -> u32 {
        TABLE.len.load(Ordering::Acquire)
    }

    /// Calls `f` with the first `count` interned strings in symbol order (position `i` is
    /// raw symbol `i + 1`). Symbols only ever get added, so these never change.
    pub(super) fn each(count: u32, mut f: impl FnMut(&str)) {
        for n in 0..count {
            f(NonZeroU32::new(n + 1)
                .and_then(|n| text(Sym(n)))
                .unwrap_or(""));
        }
    }

    impl fmt::Debug for Sym {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(self.as_str(), f)
        }
    }

    impl fmt::Display for Sym {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl serde::Serialize for Sym {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.as_str())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Sym;

        #[test]
        fn interning_finds_the_same_symbol_from_any_thread() {
            let words: Vec<String> = (0..20_000).map(|i| format!("sym-test-{i}")).collect();
            let mine: Vec<Sym> = words.iter().map(|w| Sym::new(w)).collect();
            let theirs = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            words
                                .iter()
                                .map(|w| Sym::from_string(w.clone()))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .collect::<Vec<_>>()
            });
            for t in theirs {
                assert_eq!(t, mine);
            }
            for (w, s) in words.iter().zip(&mine) {
                assert_eq!(s.as_str(), w);
            }
            assert_ne!(Sym::new("sym-test-a"), Sym::new("sym-test-b"));
        }

        /// Interning together gives what interning one by one gives, in order: texts new and
        /// known, repeated within one group, more than one group's worth.
        #[test]
        fn interning_together_matches_one_by_one() {
            let known: Vec<String> = (0..40).map(|i| format!("many-known-{i}")).collect();
            let one: Vec<Sym> = known.iter().map(|w| Sym::new(w)).collect();
            let mut texts: Vec<String> = (0..70).map(|i| format!("many-new-{}", i % 50)).collect();
            texts.extend(known.iter().cloned());
            texts.push(String::new());
            let mut together = Vec::new();
            Sym::many(
                &texts.iter().map(String::as_str).collect::<Vec<_>>(),
                &mut together,
            );
            let by_one: Vec<Sym> = texts.iter().map(|w| Sym::new(w)).collect();
            assert_eq!(together, by_one);
            assert_eq!(&by_one[70..110], &one[..]);
            assert_eq!(by_one[0], by_one[50]);
            for (w, s) in texts.iter().zip(&by_one) {
                assert_eq!(s.as_str(), w);
            }
        }

        /// Enough texts that every shard doubles several times: symbols survive the refiling
        /// (found again, by text), and texts equal in their kept hash bits stay apart.
        #[test]
        fn shards_that_grow_keep_every_symbol() {
            let words: Vec<String> = (0..300_000).map(|i| format!("grow-{i}")).collect();
            let first: Vec<Sym> = words.iter().map(|w| Sym::new(w)).collect();
            let again: Vec<Sym> = words.iter().map(|w| Sym::new(w)).collect();
            assert_eq!(first, again);
            let distinct: std::collections::HashSet<Sym> = first.iter().copied().collect();
            assert_eq!(distinct.len(), words.len());
            for (w, s) in words.iter().zip(&first) {
                assert_eq!(s.as_str(), w);
            }
        }
    }
}

fn opt_str(s: Option<Sym>) -> Option<&'static str> {
    s.map(Sym::as_str)
}

/// One alert as shown inside an incident.
#[derive(Clone, Debug)]
pub struct AlertView {
    pub fingerprint: Fingerprint,
    pub count: u64,
    pub first_seen: Millis,
    pub last_seen: Millis,
    pub ends_at: Option<Millis>,
    /// The labels sorted by key, then the annotations sorted by key.
    pairs: Box<[(Sym, Sym)]>,
    /// How many of `pairs` are labels.
    n_labels: u32,
    dedup_key: Option<Sym>,
    source: Sym,
    name: Sym,
    ci: Option<Sym>,
    reason: Sym,
    summary: Option<Sym>,
    /// Why the alert is suppressed, while it is.
    suppressed: Option<Sym>,
    /// What suppresses it: `silence <id>` or the maintenance window.
    suppressed_by: Option<Sym>,
    pub severity: Severity,
    pub status: Status,
    pub flapping: bool,
}

impl AlertView {
    /// Interns the alert's texts (copying only those seen for the first time), all together
    /// ([`Sym::many`]): a replay's table is far larger than the caches, and an alert's rare
    /// texts (its own label values, its summary) then miss in it together, not one by one.
    fn new(alert: &AlertRef<'_>, at: Millis) -> AlertView {
        let n_pairs = alert.labels.len() + alert.annotations.len();
        let mut texts = Vec::with_capacity(2 * n_pairs + 5);
        texts.extend([alert.source, alert.name]);
        texts.extend(
            [alert.ci, alert.summary, alert.dedup_key]
                .into_iter()
                .flatten(),
        );
        let pairs = alert.labels.iter().chain(&alert.annotations);
        texts.extend(pairs.flat_map(|&(k, v)| [k, v]));
        let mut syms = Vec::with_capacity(texts.len());
        Sym::many(&texts, &mut syms);
        let mut syms = syms.into_iter();
        let mut next = || syms.next().unwrap_or_else(|| Sym::new(""));
        let (source, name) = (next(), next());
        let mut opt = |text: Option<&str>| text.map(|_| next());
        let (ci, summary, dedup_key) = (opt(alert.ci), opt(alert.summary), opt(alert.dedup_key));
        AlertView {
            fingerprint: alert.fingerprint,
            count: 1,
            first_seen: at,
            last_seen: at,
            ends_at: alert.ends_at,
            pairs: (0..n_pairs).map(|_| (next(), next())).collect(),
            n_labels: u32::try_from(alert.labels.len()).unwrap_or(u32::MAX),
            dedup_key,
            source,
            name,
            ci,
            reason: Sym::new(""),
            summary,
            suppressed: None,
            suppressed_by: None,
            severity: alert.severity,
            status: alert.status,
            flapping: false,
        }
    }

    /// Like [`new`](Self::new), taking the strings out of `alert` (left empty), so a string
    /// seen for the first time is kept without a copy. The name and the CI stay: the engine
    /// reads them when it applies the alert's fact, which a replay does after this (they
    /// mostly repeat, so interning them rarely copies). One by one: live, the table is
    /// mostly cached, and the vectors [`new`](Self::new) builds would cost more than they
    /// save.
    fn from_alert(alert: &mut Alert, at: Millis) -> AlertView {
        let labels = std::mem::take(&mut alert.labels);
        let annotations = std::mem::take(&mut alert.annotations);
        let n_labels = u32::try_from(labels.len()).unwrap_or(u32::MAX);
        let pairs = labels
            .into_iter()
            .chain(annotations)
            .map(|(k, v)| (Sym::from_string(k), Sym::from_string(v)))
            .collect();
        AlertView {
            fingerprint: alert.fingerprint,
            count: 1,
            first_seen: at,
            last_seen: at,
            ends_at: alert.ends_at,
            pairs,
            n_labels,
            dedup_key: alert.dedup_key.take().map(Sym::from_string),
            source: Sym::from_string(std::mem::take(&mut alert.source)),
            name: Sym::new(&alert.name),
            ci: alert.ci.as_deref().map(Sym::new),
            reason: Sym::new(""),
            summary: alert.summary.take().map(Sym::from_string),
            suppressed: None,
            suppressed_by: None,
            severity: alert.severity,
            status: alert.status,
            flapping: false,
        }
    }

    pub fn dedup_key(&self) -> Option<&'static str> {
        opt_str(self.dedup_key)
    }

    pub fn source(&self) -> &'static str {
        self.source.as_str()
    }

    pub fn name(&self) -> &'static str {
        self.name.as_str()
    }

    pub fn ci(&self) -> Option<&'static str> {
        opt_str(self.ci)
    }

    /// Why the alert joined its incident (empty while it is in none).
    pub fn reason(&self) -> &'static str {
        self.reason.as_str()
    }

    pub fn summary(&self) -> Option<&'static str> {
        opt_str(self.summary)
    }

    pub fn suppressed(&self) -> Option<&'static str> {
        opt_str(self.suppressed)
    }

    pub fn suppressed_by(&self) -> Option<&'static str> {
        opt_str(self.suppressed_by)
    }

    fn label_pairs(&self) -> &[(Sym, Sym)] {
        let n = (self.n_labels as usize).min(self.pairs.len());
        &self.pairs[..n]
    }

    fn annotation_pairs(&self) -> &[(Sym, Sym)] {
        let n = (self.n_labels as usize).min(self.pairs.len());
        &self.pairs[n..]
    }

    /// The labels, sorted by key.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&'static str, &'static str)> + '_ {
        self.label_pairs()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The annotations, sorted by key.
    pub fn annotations(&self) -> impl ExactSizeIterator<Item = (&'static str, &'static str)> + '_ {
        self.annotation_pairs()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn annotation(&self, key: &str) -> Option<&'static str> {
        self.annotations().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// How the alert is named in titles and timelines: `sw-core-01: LinkDown`.
    fn label(&self) -> String {
        format!("{}: {}", self.who(), self.name)
    }

    /// What the alert is about in its label: the CI, else the source.
    fn who(&self) -> Sym {
        self.ci.unwrap_or(self.source)
    }
}

/// A time as the API shows it (RFC 3339, milliseconds).
struct Time(Millis);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_time(self.0))
    }
}

/// Interned pairs as a JSON object.
struct Pairs<'a>(&'a [(Sym, Sym)]);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k.as_str(), v.as_str())?;
        }
        m.end()
    }
}

/// The same fields, order and omissions the view had as a plain serde struct.
impl Serialize for AlertView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("AlertView", 18)?;
        st.serialize_field("fingerprint", &self.fingerprint)?;
        match self.dedup_key {
            Some(k) => st.serialize_field("dedup_key", &k)?,
            None => st.skip_field("dedup_key")?,
        }
        st.serialize_field("source", &self.source)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("ci", &self.ci)?;
        st.serialize_field("severity", &self.severity)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("reason", &self.reason)?;
        match self.summary {
            Some(v) => st.serialize_field("summary", &v)?,
            None => st.skip_field("summary")?,
        }
        let labels = self.label_pairs();
        if labels.is_empty() {
            st.skip_field("labels")?;
        } else {
            st.serialize_field("labels", &Pairs(labels))?;
        }
        st.serialize_field("first_seen", &Time(self.first_seen))?;
        st.serialize_field("last_seen", &Time(self.last_seen))?;
        st.serialize_field("ends_at", &self.ends_at.map(Time))?;
        if self.flapping {
            st.serialize_field("flapping", &true)?;
        } else {
            st.skip_field("flapping")?;
        }
        match self.suppressed {
            Some(v) => st.serialize_field("suppressed", &v)?,
            None => st.skip_field("suppressed")?,
        }
        match self.suppressed_by {
            Some(v) => st.serialize_field("suppressed_by", &v)?,
            None => st.skip_field("suppressed_by")?,
        }
        let annotations = self.annotation_pairs();
        if annotations.is_empty() {
            st.skip_field("annotations")?;
        } else {
            st.serialize_field("annotations", &Pairs(annotations))?;
        }
        st.end()
    }
}

/// What a timeline entry records; its text is rendered from these parts when asked, so an
/// entry costs a few words instead of a sentence per attached alert.
#[derive(Clone, Copy, Debug)]
enum Note {
    /// `opened: <group key>`
    Opened { group_key: Sym },
    /// `<who>: <name> joined: <reason>`
    Attached { who: Sym, name: Sym, reason: Sym },
    /// `<who>: <name> resolved: <reason>`
    Resolved { who: Sym, name: Sym, reason: Sym },
    /// `<who>: <name> fired again`
    Refired { who: Sym, name: Sym },
    /// `<who>: <name> is flapping: <reason>`
    Flapping { who: Sym, name: Sym, reason: Sym },
    /// `root cause <who>: <name>: <reason>` (`root cause : <reason>` without a root alert)
    Root {
        who: Option<Sym>,
        name: Sym,
        reason: Sym,
    },
    /// `priority <P>: <reason>`
    Priority { priority: Priority, reason: Sym },
    /// `<from> merged in: <reason>`
    MergedIn { from: IncidentId, reason: Sym },
    /// `merged into <into>: <reason>`
    MergedInto { into: IncidentId, reason: Sym },
    /// Text shown as is (comments, reasons), with who did it.
    Text {
        event: Event,
        text: Sym,
        by: Option<Sym>,
    },
}

/// Events whose timeline text is taken as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Acknowledged,
    Resolved,
    Reopened,
    Commented,
    Impact,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Event::Acknowledged => "incident_acknowledged",
            Event::Resolved => "incident_resolved",
            Event::Reopened => "incident_reopened",
            Event::Commented => "incident_commented",
            Event::Impact => "impact_changed",
        }
    }
}

/// One entry of an incident's timeline.
#[derive(Clone, Debug)]
pub struct TimelineEntry {
    pub seq: u64,
    pub at: Millis,
    note: Note,
}

impl TimelineEntry {
    pub fn event(&self) -> &'static str {
        match self.note {
            Note::Opened { .. } => "incident_opened",
            Note::Attached { .. } => "alert_attached",
            Note::Resolved { .. } => "alert_resolved",
            Note::Refired { .. } => "alert_refired",
            Note::Flapping { .. } => "alert_flapping",
            Note::Root { .. } => "root_cause_changed",
            Note::Priority { .. } => "priority_changed",
            Note::MergedIn { .. } | Note::MergedInto { .. } => "incidents_merged",
            Note::Text { event, .. } => event.as_str(),
        }
    }

    /// The entry's text, as it was shown when the fact was applied.
    pub fn text(&self) -> String {
        match self.note {
            Note::Opened { group_key } => format!("opened: {group_key}"),
            Note::Attached { who, name, reason } => format!("{who}: {name} joined: {reason}"),
            Note::Resolved { who, name, reason } => format!("{who}: {name} resolved: {reason}"),
            Note::Refired { who, name } => format!("{who}: {name} fired again"),
            Note::Flapping { who, name, reason } => {
                format!("{who}: {name} is flapping: {reason}")
            }
            Note::Root {
                who: Some(who),
                name,
                reason,
            } => format!("root cause {who}: {name}: {reason}"),
            Note::Root {
                who: None, reason, ..
            } => format!("root cause : {reason}"),
            Note::Priority { priority, reason } => {
                format!("priority {}: {reason}", priority.as_str())
            }
            Note::MergedIn { from, reason } => format!("{from} merged in: {reason}"),
            Note::MergedInto { into, reason } => format!("merged into {into}: {reason}"),
            Note::Text { text, .. } => text.as_str().to_string(),
        }
    }

    /// Who acknowledged, resolved or commented.
    pub fn by(&self) -> Option<&'static str> {
        match self.note {
            Note::Text { by, .. } => opt_str(by),
            _ => None,
        }
    }
}

impl Serialize for TimelineEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("TimelineEntry", 5)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("at", &Time(self.at))?;
        st.serialize_field("event", self.event())?;
        st.serialize_field("text", &self.text())?;
        match self.by() {
            Some(by) => st.serialize_field("by", by)?,
            None => st.skip_field("by")?,
        }
        st.end()
    }
}

/// Interned strings as a JSON array.
struct Syms<'a>(&'a [Sym]);

impl Serialize for Syms<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0)
    }
}

/// An incident as operators see it.
#[derive(Clone, Debug)]
pub struct IncidentView {
    pub id: IncidentId,
    pub state: IncidentState,
    pub priority: Priority,
    rule: Sym,
    group_key: Sym,
    pub root: Option<Fingerprint>,
    /// Where the root alert is in `alerts` (its latest copy), if it is there.
    root_idx: Option<u32>,
    services: Vec<Sym>,
    pub merged_into: Option<IncidentId>,
    /// Boxed: an alert joins with the box it was shown in while loose (moved, not copied),
    /// and a storm's incident of 500k members grows by copying pointers, not 104-byte views
    /// (the copies and their fresh pages took ~6.6 % of the publisher thread at 80k/s).
    pub alerts: Vec<Box<AlertView>>,
    /// Firing members and members per severity, kept as `alerts` changes: the board and the
    /// live stream show them for every touched incident after every commit group, which a
    /// scan of a 100k-alert incident would make cost 100k steps each time.
    tally: Tally,
    pub opened_at: Millis,
    pub updated_at: Millis,
    pub resolved_at: Option<Millis>,
    acknowledged_by: Option<Sym>,
    resolved_by: Option<Sym>,
    pub timeline: Vec<TimelineEntry>,
}

/// Counts over an incident's `alerts` (every copy, as the scan they replace counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    firing: u32,
    /// Members per severity, indexed by `Severity as usize` (least severe first).
    by_severity: [u32; 5],
}

impl Tally {
    /// Severities from the most severe down, matching `by_severity`'s indices reversed.
    const WORST_FIRST: [Severity; 5] = [
        Severity::Critical,
        Severity::Major,
        Severity::Minor,
        Severity::Warning,
        Severity::Info,
    ];

    fn of(alerts: &[Box<AlertView>]) -> Tally {
        let mut t = Tally::default();
        for a in alerts {
            t.add(a);
        }
        t
    }

    fn add(&mut self, a: &AlertView) {
        self.firing += u32::from(a.status == Status::Firing);
        self.by_severity[a.severity as usize] += 1;
    }

    fn remove(&mut self, a: &AlertView) {
        self.firing -= u32::from(a.status == Status::Firing);
        self.by_severity[a.severity as usize] -= 1;
    }

    fn absorb(&mut self, other: Tally) {
        self.firing += other.firing;
        for (n, m) in self.by_severity.iter_mut().zip(other.by_severity) {
            *n += m;
        }
    }

    fn worst(&self) -> Option<Severity> {
        Self::WORST_FIRST
            .into_iter()
            .find(|&s| self.by_severity[s as usize] > 0)
    }
}

impl IncidentView {
    fn root_alert(&self) -> Option<&AlertView> {
        self.root_idx
            .and_then(|i| self.alerts.get(i as usize))
            .map(|v| &**v)
    }

    /// Points `root_idx` at the latest copy of the root alert among the members.
    fn find_root(&mut self) {
        self.root_idx = self.root.and_then(|fp| {
            let i = self.alerts.iter().rposition(|a| a.fingerprint == fp)?;
            u32::try_from(i).ok()
        });
    }

    /// The root cause's CI id, if the root alert names one.
    pub fn root_ci(&self) -> Option<&'static str> {
        self.root_alert().and_then(AlertView::ci)
    }

    pub fn rule(&self) -> &'static str {
        self.rule.as_str()
    }

    pub fn group_key(&self) -> &'static str {
        self.group_key.as_str()
    }

    /// Impacted business services (CI ids).
    pub fn services(&self) -> impl ExactSizeIterator<Item = &'static str> + '_ {
        self.services.iter().map(|s| s.as_str())
    }

    pub fn acknowledged_by(&self) -> Option<&'static str> {
        opt_str(self.acknowledged_by)
    }

    pub fn resolved_by(&self) -> Option<&'static str> {
        opt_str(self.resolved_by)
    }

    pub fn title(&self) -> String {
        let Some(root) = self.root_alert() else {
            return self.group_key().to_string();
        };
        match self.alerts.len() {
            0 | 1 => root.label(),
            2 => format!("{} (+1 related alert)", root.label()),
            n => format!("{} (+{} related alerts)", root.label(), n - 1),
        }
    }

    /// The contract's incident document; `timeline` adds the history (detail view).
    /// `topology` supplies the root CI's owner group.
    pub fn doc<'a>(&'a self, topology: &'a Topology, timeline: bool) -> IncidentDoc<'a> {
        IncidentDoc {
            head: self.head(topology),
            alerts: &self.alerts,
            tail: self.tail(),
            timeline: timeline.then_some(&self.timeline[..]),
        }
    }

    /// An incident without its alerts and timeline: what the console board and the live
    /// stream carry, so a 10k-alert incident costs the same as a small one.
    pub fn summary<'a>(&'a self, topology: &'a Topology) -> IncidentSummary<'a> {
        IncidentSummary {
            head: self.head(topology),
            firing_count: self.tally.firing as usize,
            severity: self.tally.worst(),
            tail: self.tail(),
            timeline_count: self.timeline.len(),
        }
    }

    fn head<'a>(&'a self, topology: &'a Topology) -> IncidentHead<'a> {
        IncidentHead {
            id: self.id.to_string(),
            state: self.state.as_str(),
            priority: self.priority.as_str(),
            title: self.title(),
            root_cause: self.root_alert().map(|a| RootCause {
                ci: a.ci(),
                fingerprint: a.fingerprint,
                name: a.name(),
            }),
            impacted_services: ImpactedServices(&self.services),
            owner_group: self.owner_group(topology),
            merged_into: self.merged_into.map(|id| id.to_string()),
            alert_count: self.alerts.len(),
        }
    }

    fn tail(&self) -> IncidentTail<'_> {
        IncidentTail {
            rule: self.rule(),
            group_key: self.group_key(),
            opened_at: format_time(self.opened_at),
            updated_at: format_time(self.updated_at),
            resolved_at: self.resolved_at.map(format_time),
            acknowledged_by: self.acknowledged_by(),
            resolved_by: self.resolved_by(),
        }
    }

    /// The root CI's owner group, from the topology.
    pub fn owner_group<'a>(&'a self, topology: &'a Topology) -> Option<&'a str> {
        self.root_ci()
            .and_then(|id| topology.index(id))
            .and_then(|i| topology.ci(i))
            .and_then(|c| c.owner_group.as_deref())
    }
}

/// Serialized form of an incident (CONTRACTS §4, plus a few extra fields). The flattened parts
/// keep the field order of the contract's examples, which `incidentd replay` output relies on.
#[derive(Serialize)]
pub struct IncidentDoc<'a> {
    #[serde(flatten)]
    pub head: IncidentHead<'a>,
    pub alerts: &'a [Box<AlertView>],
    #[serde(flatten)]
    pub tail: IncidentTail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<&'a [TimelineEntry]>,
}

/// [`IncidentDoc`] with counts in place of the alerts and the timeline.
#[derive(Serialize)]
pub struct IncidentSummary<'a> {
    #[serde(flatten)]
    pub head: IncidentHead<'a>,
    /// Member alerts still firing.
    pub firing_count: usize,
    /// The worst severity among the member alerts.
    pub severity: Option<Severity>,
    #[serde(flatten)]
    pub tail: IncidentTail<'a>,
    pub timeline_count: usize,
}

/// An incident's impacted business services, as a JSON array of CI ids.
pub struct ImpactedServices<'a>(&'a [Sym]);

impl Serialize for ImpactedServices<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Syms(self.0).serialize(s)
    }
}

/// What every rendering of an incident starts with.
#[derive(Serialize)]
pub struct IncidentHead<'a> {
    pub id: String,
    pub state: &'static str,
    pub priority: &'static str,
    pub title: String,
    pub root_cause: Option<RootCause<'a>>,
    pub impacted_services: ImpactedServices<'a>,
    pub owner_group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    pub alert_count: usize,
}

/// What every rendering of an incident carries after its alerts.
#[derive(Serialize)]
pub struct IncidentTail<'a> {
    pub rule: &'a str,
    pub group_key: &'a str,
    pub opened_at: String,
    pub updated_at: String,
    pub resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<&'a str>,
}

#[derive(Serialize)]
pub struct RootCause<'a> {
    pub ci: Option<&'a str>,
    pub fingerprint: Fingerprint,
    pub name: &'a str,
}

/// What one sender has sent, from durable facts (`GET /api/v1/sources`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceStats {
    /// Alert messages accepted (first sightings, repeats and refires).
    pub messages: u64,
    /// Distinct alerts (new fingerprints, or new lives of old ones).
    pub distinct: u64,
    pub resolved: u64,
    pub suppressed: u64,
    pub last_seen: Millis,
}

/// Where an alert's current life is shown.
#[derive(Clone, Debug)]
enum Home {
    /// Received but in no incident (a resolve for an alert never seen firing).
    Loose(Box<AlertView>),
    /// In an incident, at this position of its `alerts`.
    Attached(IncidentId, u32),
}

/// A received alert's view, built (its strings interned) before it reaches the read model,
/// so that the thread owning the read model, the pipeline's busiest, only files it. Unboxed:
/// the read model boxes it, and the box stays with the alert (it moves into the incident
/// the alert joins), so it is freed by the read model's thread, which allocated it; mimalloc
/// frees another thread's block through an atomic list, which cost an eighth of the
/// replay's read-model thread.
pub struct PreparedAlert(AlertView);

impl PreparedAlert {
    pub fn new(alert: &Alert, at: Millis) -> PreparedAlert {
        PreparedAlert::borrowed(&AlertRef::from(alert), at)
    }

    /// From an alert whose texts are borrowed (from a log record: replay).
    pub fn borrowed(alert: &AlertRef<'_>, at: Millis) -> PreparedAlert {
        PreparedAlert(AlertView::new(alert, at))
    }

    /// Like [`new`](Self::new), taking the strings out of `alert` (left empty but for its
    /// name and CI, which the engine still reads), for a caller done with the rest: a string
    /// seen for the first time is kept without a copy.
    pub fn take(alert: &mut Alert, at: Millis) -> PreparedAlert {
        PreparedAlert(AlertView::from_alert(alert, at))
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.0.fingerprint
    }
}

/// All incident views, plus the bookkeeping to route alert facts to them. Cloneable, and
/// encoded for snapshots by [`ReadModel::write_snapshot`].
#[derive(Clone, Debug, Default)]
pub struct ReadModel {
    /// By id in a vector (ids are dense): a B-tree search here cost ~160 instructions for
    /// every fact shown.
    incidents: IdTable<IncidentView>,
    /// The CMDB as the durable facts describe it (owner groups, the CMDB API). Shared with
    /// snapshots being written, copied only when a CMDB change meets one in flight.
    pub topology: Arc<Topology>,
    /// Silences by id, for the Alertmanager API.
    pub silences: BTreeMap<String, Silence>,
    /// Per sender, so a NOC sees a noisy or broken one at once.
    pub sources: BTreeMap<String, SourceStats>,
    homes: FingerprintMap<Home>,
    open: usize,
    /// Sequence of the last fact applied: a client that read the model resumes the live
    /// stream after it (`GET /api/v1/stream?after=`).
    pub last_seq: u64,
}

impl ReadModel {
    pub fn get(&self, id: IncidentId) -> Option<&IncidentView> {
        self.incidents.get(&id)
    }

    /// Incidents in `state` (all when `None`), newest first, `offset`/`limit` paginated;
    /// also returns how many matched in total.
    pub fn list(
        &self,
        state: Option<IncidentState>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<&IncidentView>) {
        let filter = Filter {
            states: state.into_iter().collect(),
            ..Filter::default()
        };
        self.query(&filter, Sort::Newest, offset, limit)
    }

    /// Every incident that was not merged into another, oldest first (`replay` output).
    pub fn surviving(&self) -> impl Iterator<Item = &IncidentView> {
        self.incidents.values().filter(|i| i.merged_into.is_none())
    }

    /// Every alert's current life (in an incident or not), in fingerprint order, with the
    /// incident holding it.
    pub fn current_alerts(&self) -> Vec<(&AlertView, Option<IncidentId>)> {
        let mut out: Vec<(&AlertView, Option<IncidentId>)> = self
            .homes
            .values()
            .filter_map(|h| match h {
                Home::Loose(v) => Some((&**v, None)),
                Home::Attached(id, idx) => self
                    .incidents
                    .get(id)
                    .and_then(|i| i.alerts.get(*idx as usize))
                    .map(|v| (&**v, Some(*id))),
            })
            .collect();
        out.sort_by_key(|(v, _)| v.fingerprint);
        out
    }

    /// Dedup keys (else fingerprints) of the alerts held back by a maintenance window, sorted.
    pub fn suppressed_keys(&self) -> BTreeSet<String> {
        self.homes
            .values()
            .filter_map(|h| match h {
                Home::Loose(v) if v.suppressed.is_some() => Some(
                    v.dedup_key()
                        .map_or_else(|| v.fingerprint.to_string(), str::to_string),
                ),
                _ => None,
            })
            .collect()
    }

    pub fn open_count(&self) -> usize {
        self.open
    }

    /// Incidents held, in any state (closed ones are gone).
    pub fn held_count(&self) -> usize {
        self.incidents.len()
    }

    fn view(&self, fp: &Fingerprint) -> Option<&AlertView> {
        match self.homes.get(fp)? {
            Home::Loose(view) => Some(view),
            Home::Attached(id, idx) => self
                .incidents
                .get(id)
                .and_then(|i| i.alerts.get(*idx as usize))
                .map(|v| &**v),
        }
    }

    fn count_source(&mut self, fact: &Fact, at: Millis) {
        let (fingerprint, messages, distinct, resolved, suppressed) = match fact {
            Fact::AlertReceived { alert, .. } => {
                let source = alert.source.as_str();
                return bump_source(&mut self.sources, source, at, (1, 1, 0, 0));
            }
            Fact::AlertRepeated {
                fingerprint, count, ..
            } => (fingerprint, *count, 0, 0, 0),
            Fact::AlertRefired { fingerprint, .. } => (fingerprint, 1, 0, 0, 0),
            Fact::AlertResolved { fingerprint, .. } => (fingerprint, 0, 0, 1, 0),
            Fact::AlertSuppressed { fingerprint, .. } => (fingerprint, 0, 0, 0, 1),
            _ => return,
        };
        if let Some(source) = self.view(fingerprint).map(AlertView::source) {
            let counts = (messages, distinct, resolved, suppressed);
            bump_source(&mut self.sources, source, at, counts);
        }
    }

    /// Applies a durable fact the caller no longer needs, moving a received alert's strings
    /// into the view instead of copying them. Otherwise the same as [`apply`](Self::apply).
    pub fn apply_owned(&mut self, seq: u64, fact: &mut Fact) -> Option<IncidentId> {
        let Fact::AlertReceived { at, alert } = fact else {
            return self.apply(seq, fact);
        };
        let at = *at;
        self.apply_received(seq, at, PreparedAlert::take(alert, at));
        None
    }

    /// Brings the alert's entry that a fact about it will change into the cache
    /// ([`FingerprintMap::touch`]).
    pub fn touch(&self, fp: &Fingerprint) {
        self.homes.touch(fp);
    }

    /// Applies an `AlertReceived` fact (at `at`) whose view was prepared from its alert.
    pub fn apply_received(&mut self, seq: u64, at: Millis, alert: PreparedAlert) {
        self.last_seq = self.last_seq.max(seq);
        bump_source(&mut self.sources, alert.0.source.as_str(), at, (1, 1, 0, 0));
        self.homes
            .insert(alert.0.fingerprint, Home::Loose(Box::new(alert.0)));
    }

    /// Changes an alert's current copy through `f`, keeping its incident's tally true.
    fn change_alert<R>(
        &mut self,
        fp: &Fingerprint,
        f: impl FnOnce(&mut AlertView) -> R,
    ) -> Option<(R, Option<IncidentId>)> {
        match self.homes.get_mut(fp)? {
            Home::Loose(view) => Some((f(view), None)),
            Home::Attached(id, idx) => {
                let inc = self.incidents.get_mut(id)?;
                let view = inc.alerts.get_mut(*idx as usize)?;
                inc.tally.remove(view);
                let r = f(view);
                inc.tally.add(view);
                Some((r, Some(inc.id)))
            }
        }
    }

    /// Applies one durable fact. Returns the incident it changed, if any.
    pub fn apply(&mut self, seq: u64, fact: &Fact) -> Option<IncidentId> {
        self.last_seq = self.last_seq.max(seq);
        let at = fact.at();
        self.count_source(fact, at);
        let mut note: Option<Note> = None;
        let touched = match fact {
            Fact::AlertReceived { alert, .. } => {
                self.homes.insert(
                    alert.fingerprint,
                    Home::Loose(Box::new(AlertView::new(&AlertRef::from(alert), at))),
                );
                None
            }
            Fact::AlertRepeated {
                fingerprint,
                count,
                severity,
                ends_at,
                ..
            } => {
                let ((), id) = self.change_alert(fingerprint, |view| {
                    view.count += count;
                    view.last_seen = view.last_seen.max(at);
                    view.severity = *severity;
                    view.ends_at = *ends_at;
                })?;
                id
            }
            Fact::AlertResolved {
                fingerprint,
                ends_at,
                reason,
                ..
            } => {
                let (resolved, id) = self.change_alert(fingerprint, |view| {
                    view.status = Status::Resolved;
                    view.ends_at = Some(*ends_at);
                    Note::Resolved {
                        who: view.who(),
                        name: view.name,
                        reason: Sym::new(reason),
                    }
                })?;
                note = Some(resolved);
                id
            }
            Fact::AlertRefired {
                fingerprint,
                severity,
                ends_at,
                ..
            } => {
                let (refired, id) = self.change_alert(fingerprint, |view| {
                    view.status = Status::Firing;
                    view.count += 1;
                    view.last_seen = view.last_seen.max(at);
                    view.severity = *severity;
                    view.ends_at = *ends_at;
                    Note::Refired {
                        who: view.who(),
                        name: view.name,
                    }
                })?;
                note = Some(refired);
                id
            }
            Fact::IncidentOpened {
                incident,
                rule,
                group_key,
                ..
            } => {
                let group_key = Sym::new(group_key);
                self.incidents.insert(
                    *incident,
                    IncidentView {
                        id: *incident,
                        state: IncidentState::Open,
                        priority: Priority::P5,
                        rule: Sym::new(rule),
                        group_key,
                        root: None,
                        root_idx: None,
                        services: Vec::new(),
                        merged_into: None,
                        alerts: Vec::new(),
                        tally: Tally::default(),
                        opened_at: at,
                        updated_at: at,
                        resolved_at: None,
                        acknowledged_by: None,
                        resolved_by: None,
                        timeline: Vec::new(),
                    },
                );
                self.open += 1;
                note = Some(Note::Opened { group_key });
                Some(*incident)
            }
            Fact::AlertAttached {
                incident,
                fingerprint,
                reason,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                let Some(Home::Loose(mut view)) = self.homes.remove(fingerprint) else {
                    return None;
                };
                view.reason = Sym::new(reason);
                note = Some(Note::Attached {
                    who: view.who(),
                    name: view.name,
                    reason: view.reason,
                });
                let idx = u32::try_from(inc.alerts.len()).unwrap_or(u32::MAX);
                if inc.root == Some(*fingerprint) {
                    inc.root_idx = Some(idx);
                }
                self.homes
                    .insert(*fingerprint, Home::Attached(*incident, idx));
                inc.tally.add(&view);
                inc.alerts.push(view);
                Some(*incident)
            }
            Fact::RootCauseChanged {
                incident,
                fingerprint,
                reason,
                ..
            } => {
                // The alert's current life is its latest copy; else look through the members.
                let current = match self.homes.get(fingerprint) {
                    Some(Home::Attached(id, idx)) if id == incident => Some(*idx),
                    _ => None,
                };
                let inc = self.incidents.get_mut(incident)?;
                inc.root = Some(*fingerprint);
                match current {
                    Some(idx) => inc.root_idx = Some(idx),
                    None => inc.find_root(),
                }
                let root = inc.root_alert();
                note = Some(Note::Root {
                    who: root.map(AlertView::who),
                    name: root.map_or_else(|| Sym::new(""), |a| a.name),
                    reason: Sym::new(reason),
                });
                Some(*incident)
            }
            Fact::PriorityChanged {
                incident,
                priority,
                reason,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                inc.priority = *priority;
                note = Some(Note::Priority {
                    priority: *priority,
                    reason: Sym::new(reason),
                });
                Some(*incident)
            }
            Fact::IncidentAcknowledged {
                incident,
                by,
                comment,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                inc.state = IncidentState::Acknowledged;
                let by = Sym::new(by);
                inc.acknowledged_by = Some(by);
                note = Some(Note::Text {
                    event: Event::Acknowledged,
                    text: Sym::new(comment.as_deref().unwrap_or_default()),
                    by: Some(by),
                });
                Some(*incident)
            }
            Fact::IncidentResolved {
                incident,
                by,
                comment,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                if inc.state != IncidentState::Resolved {
                    self.open -= 1;
                }
                inc.state = IncidentState::Resolved;
                inc.resolved_at = Some(at);
                let by = Sym::new(by);
                inc.resolved_by = Some(by);
                note = Some(Note::Text {
                    event: Event::Resolved,
                    text: Sym::new(comment.as_deref().unwrap_or_default()),
                    by: Some(by),
                });
                Some(*incident)
            }
            Fact::IncidentReopened {
                incident, reason, ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                if inc.state == IncidentState::Resolved {
                    self.open += 1;
                }
                inc.state = IncidentState::Open;
                inc.resolved_at = None;
                inc.resolved_by = None;
                note = Some(Note::Text {
                    event: Event::Reopened,
                    text: Sym::new(reason),
                    by: None,
                });
                Some(*incident)
            }
            Fact::IncidentCommented {
                incident,
                text,
                actor,
                ..
            } => {
                self.incidents.get(incident)?;
                note = Some(Note::Text {
                    event: Event::Commented,
                    text: Sym::new(text),
                    by: Some(Sym::new(actor)),
                });
                Some(*incident)
            }
            Fact::AlertSuppressed {
                fingerprint,
                by,
                reason,
                ..
            } => {
                let ((), id) = self.change_alert(fingerprint, |view| {
                    view.suppressed = Some(Sym::new(reason));
                    view.suppressed_by = Some(Sym::new(by));
                })?;
                id
            }
            Fact::AlertFlapping {
                fingerprint,
                reason,
                ..
            } => {
                let (flapping, id) = self.change_alert(fingerprint, |view| {
                    view.flapping = true;
                    Note::Flapping {
                        who: view.who(),
                        name: view.name,
                        reason: Sym::new(reason),
                    }
                })?;
                note = Some(flapping);
                id
            }
            Fact::ImpactChanged {
                incident,
                services,
                reason,
                ..
            } => {
                let inc = self.incidents.get_mut(incident)?;
                inc.services = services.iter().map(|s| Sym::new(s)).collect();
                note = Some(Note::Text {
                    event: Event::Impact,
                    text: Sym::new(reason),
                    by: None,
                });
                Some(*incident)
            }
            Fact::IncidentsMerged {
                into, from, reason, ..
            } => {
                let reason = Sym::new(reason);
                let source = self.incidents.get_mut(from)?;
                let mut gone = std::mem::take(&mut source.alerts);
                let moved = std::mem::take(&mut source.tally);
                let target = self.incidents.get_mut(into)?;
                target.tally.absorb(moved);
                target.alerts.reserve(gone.len());
                for view in gone.drain(..) {
                    let idx = u32::try_from(target.alerts.len()).unwrap_or(u32::MAX);
                    if target.root == Some(view.fingerprint) {
                        target.root_idx = Some(idx);
                    }
                    self.homes
                        .insert(view.fingerprint, Home::Attached(*into, idx));
                    target.alerts.push(view);
                }
                target.timeline.push(TimelineEntry {
                    seq,
                    at,
                    note: Note::MergedIn {
                        from: *from,
                        reason,
                    },
                });
                let merged = self.incidents.get_mut(from)?;
                merged.root_idx = None;
                if merged.state != IncidentState::Resolved {
                    self.open -= 1;
                }
                merged.state = IncidentState::Resolved;
                merged.resolved_at = Some(at);
                merged.merged_into = Some(*into);
                merged.updated_at = at;
                merged.timeline.push(TimelineEntry {
                    seq,
                    at,
                    note: Note::MergedInto {
                        into: *into,
                        reason,
                    },
                });
                Some(*into)
            }
            Fact::IncidentClosed { incident, .. } => {
                let inc = self.incidents.retire(incident)?;
                if inc.state != IncidentState::Resolved {
                    self.open -= 1;
                }
                for view in &inc.alerts {
                    if matches!(self.homes.get(&view.fingerprint), Some(Home::Attached(id, _)) if id == incident)
                    {
                        self.homes.remove(&view.fingerprint);
                    }
                }
                // Nothing left to touch: the stream announces the closing by itself.
                None
            }
            Fact::AlertForgotten { fingerprint, .. } => {
                if matches!(self.homes.get(fingerprint), Some(Home::Loose(_))) {
                    self.homes.remove(fingerprint);
                }
                None
            }
            Fact::CmdbChanged { ops, .. } => {
                Arc::make_mut(&mut self.topology).apply(ops);
                None
            }
            Fact::SilenceCreated { silence, .. } => {
                self.silences.insert(silence.id.clone(), silence.clone());
                None
            }
            Fact::SilenceExpired { id, .. } => {
                if let Some(s) = self.silences.get_mut(id) {
                    s.ends_at = s.ends_at.min(at);
                    s.starts_at = s.starts_at.min(s.ends_at);
                    s.updated_at = at;
                }
                None
            }
            Fact::RulesLoaded { .. }
            | Fact::StreamConsumed { .. }
            | Fact::StreamAttached { .. } => None,
        };
        let id = touched?;
        let inc = self.incidents.get_mut(&id)?;
        inc.updated_at = inc.updated_at.max(at);
        if let Some(note) = note {
            inc.timeline.push(TimelineEntry { seq, at, note });
        }
        Some(id)
    }
}

/// Which incidents a console list shows (`GET /api/v1/incidents` filters). Empty sets and
/// `None` mean "any".
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub states: Vec<IncidentState>,
    pub priorities: Vec<Priority>,
    /// A business service CI id among the impacted services.
    pub service: Option<String>,
    /// The root CI's owner group.
    pub owner_group: Option<String>,
    /// Case-insensitive words that must all occur in the id, title, root CI, rule, group key,
    /// services or owner group.
    pub words: Vec<String>,
}

impl Filter {
    fn matches(&self, inc: &IncidentView, topology: &Topology) -> bool {
        if !self.states.is_empty() && !self.states.contains(&inc.state) {
            return false;
        }
        if !self.priorities.is_empty() && !self.priorities.contains(&inc.priority) {
            return false;
        }
        if let Some(svc) = &self.service
            && !inc.services().any(|s| s == svc)
        {
            return false;
        }
        let owner = || inc.owner_group(topology).unwrap_or("");
        if let Some(group) = &self.owner_group
            && owner() != group
        {
            return false;
        }
        if self.words.is_empty() {
            return true;
        }
        let mut hay = format!(
            "{} {} {} {} {} {}",
            inc.id,
            inc.title(),
            inc.root_ci().unwrap_or(""),
            inc.rule(),
            inc.group_key(),
            owner()
        );
        for svc in inc.services() {
            hay.push(' ');
            hay.push_str(svc);
        }
        let hay = hay.to_lowercase();
        self.words.iter().all(|w| hay.contains(w.as_str()))
    }
}

/// Order of a console list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// Newest first (the contract's default).
    #[default]
    Newest,
    /// Most urgent first, then newest.
    Priority,
    /// Oldest first: what has been burning longest.
    Age,
    /// Most recently changed first.
    Updated,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "newest" => Sort::Newest,
            "priority" => Sort::Priority,
            "age" | "oldest" => Sort::Age,
            "updated" => Sort::Updated,
            _ => return None,
        })
    }
}

/// Active incidents per state and priority (`GET /api/v1/incidents/summary`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub seq: u64,
    pub total: usize,
    pub by_state: BTreeMap<&'static str, usize>,
    /// Per state, per priority: `{"open": {"P1": 2, ...}, ...}`; every key present.
    pub by_state_priority: BTreeMap<&'static str, BTreeMap<&'static str, usize>>,
    /// Business services and owner groups seen on open or acknowledged incidents, for the
    /// console's filter lists.
    pub services: BTreeSet<String>,
    pub owner_groups: BTreeSet<String>,
}

impl ReadModel {
    /// Incidents matching `filter`, in `sort` order, `offset`/`limit` paginated; also how many
    /// matched in total.
    pub fn query(
        &self,
        filter: &Filter,
        sort: Sort,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<&IncidentView>) {
        let matching = self
            .incidents
            .values_rev()
            .filter(|i| filter.matches(i, &self.topology));
        if sort == Sort::Newest {
            let mut total = 0;
            let mut page = Vec::with_capacity(limit.min(1024));
            for (n, inc) in matching.enumerate() {
                total += 1;
                if n >= offset && page.len() < limit {
                    page.push(inc);
                }
            }
            return (total, page);
        }
        let mut all: Vec<&IncidentView> = matching.collect();
        // Stable sorts over newest-first input: ties stay newest first.
        match sort {
            Sort::Priority => all.sort_by_key(|i| i.priority),
            Sort::Age => all.sort_by_key(|i| (i.opened_at, i.id)),
            Sort::Updated => all.sort_by_key(|i| std::cmp::Reverse(i.updated_at)),
            Sort::Newest => {}
        }
        let total = all.len();
        let page = all.into_iter().skip(offset).take(limit).collect();
        (total, page)
    }

    /// Counts per state and priority, and the filter choices, over all incidents.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            seq: self.last_seq,
            ..Counts::default()
        };
        for state in [
            IncidentState::Open,
            IncidentState::Acknowledged,
            IncidentState::Resolved,
        ] {
            c.by_state.insert(state.as_str(), 0);
            let per = c.by_state_priority.entry(state.as_str()).or_default();
            for p in [
                Priority::P1,
                Priority::P2,
                Priority::P3,
                Priority::P4,
                Priority::P5,
            ] {
                per.insert(p.as_str(), 0);
            }
        }
        for inc in self.incidents.values() {
            c.total += 1;
            *c.by_state.entry(inc.state.as_str()).or_default() += 1;
            *c.by_state_priority
                .entry(inc.state.as_str())
                .or_default()
                .entry(inc.priority.as_str())
                .or_default() += 1;
            if inc.state != IncidentState::Resolved {
                c.services.extend(inc.services().map(str::to_string));
                if let Some(g) = inc.owner_group(&self.topology) {
                    c.owner_groups.insert(g.to_string());
                }
            }
        }
        c
    }
}

/// Adds (messages, distinct, resolved, suppressed) to `source`'s stats; allocates the key
/// only for a source seen for the first time.
fn bump_source(
    sources: &mut BTreeMap<String, SourceStats>,
    source: &str,
    at: Millis,
    (messages, distinct, resolved, suppressed): (u64, u64, u64, u64),
) {
    let s = match sources.get_mut(source) {
        Some(s) => s,
        None => sources.entry(source.to_string()).or_default(),
    };
    s.messages += messages;
    s.distinct += distinct;
    s.resolved += resolved;
    s.suppressed += suppressed;
    s.last_seen = s.last_seen.max(at);
}

/// A read-model snapshot section that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ViewSnapshotError {
    #[error("read model snapshot: truncated at byte {0}")]
    Truncated(usize),
    #[error("read model snapshot: unknown encoding version {0}")]
    Version(u8),
    #[error("read model snapshot: bad {what} at byte {at}")]
    Bad { what: &'static str, at: usize },
    #[error("read model snapshot: {0}")]
    Json(#[from] serde_json::Error),
    #[error("read model snapshot: {0}")]
    Io(#[from] std::io::Error),
}

/// Version of this module's snapshot encoding (the snapshot file has its own).
const SNAPSHOT_ENCODING: u8 = 1;

/// The small, rarely changing parts of the read model, encoded as JSON inside the binary
/// section (they are not worth a hand-written encoding).
#[derive(serde::Serialize)]
struct SmallOut<'a> {
    topology: &'a Topology,
    silences: &'a BTreeMap<String, Silence>,
    sources: &'a BTreeMap<String, SourceStats>,
}

#[derive(serde::Deserialize)]
struct SmallIn {
    topology: Topology,
    silences: BTreeMap<String, Silence>,
    sources: BTreeMap<String, SourceStats>,
}

/// Little-endian writes into the snapshot buffer.
struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) -> Result<(), ViewSnapshotError> {
        let n = u32::try_from(n).map_err(|_| ViewSnapshotError::Bad {
            what: "length over 4G",
            at: self.0.len(),
        })?;
        self.u32(n);
        Ok(())
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), ViewSnapshotError> {
        self.len(b.len())?;
        self.0.extend_from_slice(b);
        Ok(())
    }
    fn sym(&mut self, s: Sym) {
        self.u32(s.raw());
    }
    fn opt_sym(&mut self, s: Option<Sym>) {
        self.u32(s.map_or(0, Sym::raw));
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        self.opt_i64(v.map(|v| v as i64));
    }

    fn alert(&mut self, a: &AlertView) -> Result<(), ViewSnapshotError> {
        self.u64(a.fingerprint.0);
        self.u64(a.count);
        self.i64(a.first_seen);
        self.i64(a.last_seen);
        self.opt_i64(a.ends_at);
        self.len(a.pairs.len())?;
        self.u32(a.n_labels);
        for (k, v) in &a.pairs[..] {
            self.sym(*k);
            self.sym(*v);
        }
        self.opt_sym(a.dedup_key);
        self.sym(a.source);
        self.sym(a.name);
        self.opt_sym(a.ci);
        self.sym(a.reason);
        self.opt_sym(a.summary);
        self.opt_sym(a.suppressed);
        self.opt_sym(a.suppressed_by);
        self.u8(severity_code(a.severity));
        self.u8(matches!(a.status, Status::Resolved) as u8);
        self.u8(a.flapping as u8);
        Ok(())
    }

    fn entry(&mut self, e: &TimelineEntry) {
        self.u64(e.seq);
        self.i64(e.at);
        match e.note {
            Note::Opened { group_key } => {
                self.u8(0);
                self.sym(group_key);
            }
            Note::Attached { who, name, reason } => {
                self.u8(1);
                self.sym(who);
                self.sym(name);
                self.sym(reason);
            }
            Note::Resolved { who, name, reason } => {
                self.u8(2);
                self.sym(who);
                self.sym(name);
                self.sym(reason);
            }
            Note::Refired { who, name } => {
                self.u8(3);
                self.sym(who);
                self.sym(name);
            }
            Note::Flapping { who, name, reason } => {
                self.u8(4);
                self.sym(who);
                self.sym(name);
                self.sym(reason);
            }
            Note::Root { who, name, reason } => {
                self.u8(5);
                self.opt_sym(who);
                self.sym(name);
                self.sym(reason);
            }
            Note::Priority { priority, reason } => {
                self.u8(6);
                self.u8(priority_code(priority));
                self.sym(reason);
            }
            Note::MergedIn { from, reason } => {
                self.u8(7);
                self.u64(from.0);
                self.sym(reason);
            }
            Note::MergedInto { into, reason } => {
                self.u8(8);
                self.u64(into.0);
                self.sym(reason);
            }
            Note::Text { event, text, by } => {
                self.u8(9);
                self.u8(event_code(event));
                self.sym(text);
                self.opt_sym(by);
            }
        }
    }

    fn incident(&mut self, inc: &IncidentView) -> Result<(), ViewSnapshotError> {
        self.u64(inc.id.0);
        self.u8(state_code(inc.state));
        self.u8(priority_code(inc.priority));
        self.sym(inc.rule);
        self.sym(inc.group_key);
        self.opt_u64(inc.root.map(|f| f.0));
        self.opt_u64(inc.root_idx.map(u64::from));
        self.len(inc.services.len())?;
        for s in &inc.services {
            self.sym(*s);
        }
        self.opt_u64(inc.merged_into.map(|i| i.0));
        self.i64(inc.opened_at);
        self.i64(inc.updated_at);
        self.opt_i64(inc.resolved_at);
        self.opt_sym(inc.acknowledged_by);
        self.opt_sym(inc.resolved_by);
        self.len(inc.alerts.len())?;
        for a in &inc.alerts {
            self.alert(a)?;
        }
        self.len(inc.timeline.len())?;
        for e in &inc.timeline {
            self.entry(e);
        }
        Ok(())
    }
}

fn severity_code(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Minor => 2,
        Severity::Major => 3,
        Severity::Critical => 4,
    }
}

fn priority_code(p: Priority) -> u8 {
    match p {
        Priority::P1 => 1,
        Priority::P2 => 2,
        Priority::P3 => 3,
        Priority::P4 => 4,
        Priority::P5 => 5,
    }
}

fn state_code(s: IncidentState) -> u8 {
    match s {
        IncidentState::Open => 0,
        IncidentState::Acknowledged => 1,
        IncidentState::Resolved => 2,
    }
}

fn event_code(e: Event) -> u8 {
    match e {
        Event::Acknowledged => 0,
        Event::Resolved => 1,
        Event::Reopened => 2,
        Event::Commented => 3,
        Event::Impact => 4,
    }
}

/// Reads what [`Enc`] wrote; symbols map through the strings the section carries.
struct Dec<R> {
    /// The section, read as decoding goes: its bytes are never all in memory at once.
    src: R,
    /// Bytes read and not yet decoded start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// Where `buf` starts in the section, and the section's length.
    base: u64,
    len: u64,
    /// Bytes read at a time (at least).
    piece: usize,
    /// The snapshot's strings, one after another, and by raw symbol their place there,
    /// interned on first use: texts no view refers to any more (of closed incidents) are not
    /// interned again, so a restart compacts.
    strings: String,
    syms: Vec<(std::ops::Range<usize>, Option<Sym>)>,
}

/// Bytes of a section read at a time.
const READ_PIECE: usize = 4 << 20;

impl<R: std::io::Read> Dec<R> {
    fn take(&mut self, n: usize) -> Result<&[u8], ViewSnapshotError> {
        self.ready(n)?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    /// Makes sure `n` undecoded bytes are at hand, reading on if need be (and dropping the
    /// decoded ones).
    fn ready(&mut self, n: usize) -> Result<(), ViewSnapshotError> {
        if self.buf.len() - self.pos >= n {
            return Ok(());
        }
        let at = self.at();
        let left = self.len - at;
        if n as u64 > left {
            return Err(ViewSnapshotError::Truncated(at as usize));
        }
        self.buf.drain(..self.pos);
        self.base = at;
        self.pos = 0;
        let have = self.buf.len();
        let more = usize::try_from(left - have as u64)
            .unwrap_or(usize::MAX)
            .min(n.max(self.piece));
        self.buf.reserve(more);
        let mut piece = <&mut R as std::io::Read>::take(&mut self.src, more as u64);
        let read = std::io::Read::read_to_end(&mut piece, &mut self.buf)?;
        if read < more {
            return Err(ViewSnapshotError::Truncated(
                (at + (have + read) as u64) as usize,
            ));
        }
        Ok(())
    }
    /// Where decoding is in the section.
    fn at(&self) -> u64 {
        self.base + self.pos as u64
    }
    /// One of the snapshot's strings, kept for the symbol it is the next of.
    fn string(&mut self) -> Result<(), ViewSnapshotError> {
        let len = self.u32()? as usize;
        self.ready(len)?;
        let Ok(text) = std::str::from_utf8(&self.buf[self.pos..self.pos + len]) else {
            return Err(self.bad("string"));
        };
        let start = self.strings.len();
        self.strings.push_str(text);
        self.syms.push((start..start + len, None));
        self.pos += len;
        Ok(())
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], ViewSnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ViewSnapshotError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, ViewSnapshotError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, ViewSnapshotError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, ViewSnapshotError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn bad(&self, what: &'static str) -> ViewSnapshotError {
        ViewSnapshotError::Bad {
            what,
            at: self.at() as usize,
        }
    }
    /// A count of items each at least `min` bytes long, checked against what is left so a
    /// damaged length cannot ask for a huge allocation.
    fn count(&mut self, min: usize) -> Result<usize, ViewSnapshotError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) as u64 > self.len - self.at() {
            return Err(ViewSnapshotError::Truncated(self.at() as usize));
        }
        Ok(n)
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, ViewSnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            _ => Err(self.bad("option tag")),
        }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, ViewSnapshotError> {
        Ok(self.opt_i64()?.map(|v| v as u64))
    }
    fn opt_sym(&mut self) -> Result<Option<Sym>, ViewSnapshotError> {
        match self.u32()? {
            0 => Ok(None),
            raw => match self.syms.get_mut(raw as usize - 1) {
                Some((_, Some(s))) => Ok(Some(*s)),
                Some((text, sym @ None)) => {
                    let text = self.strings.get(text.clone()).unwrap_or("");
                    Ok(Some(*sym.insert(Sym::new(text))))
                }
                None => Err(self.bad("string reference")),
            },
        }
    }
    fn sym(&mut self) -> Result<Sym, ViewSnapshotError> {
        self.opt_sym()?.ok_or_else(|| self.bad("string reference"))
    }
    fn severity(&mut self) -> Result<Severity, ViewSnapshotError> {
        Ok(match self.u8()? {
            0 => Severity::Info,
            1 => Severity::Warning,
            2 => Severity::Minor,
            3 => Severity::Major,
            4 => Severity::Critical,
            _ => return Err(self.bad("severity")),
        })
    }
    fn priority(&mut self) -> Result<Priority, ViewSnapshotError> {
        Ok(match self.u8()? {
            1 => Priority::P1,
            2 => Priority::P2,
            3 => Priority::P3,
            4 => Priority::P4,
            5 => Priority::P5,
            _ => return Err(self.bad("priority")),
        })
    }
    fn state(&mut self) -> Result<IncidentState, ViewSnapshotError> {
        Ok(match self.u8()? {
            0 => IncidentState::Open,
            1 => IncidentState::Acknowledged,
            2 => IncidentState::Resolved,
            _ => return Err(self.bad("incident state")),
        })
    }
    fn flag(&mut self) -> Result<bool, ViewSnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad("flag")),
        }
    }

    fn alert(&mut self) -> Result<AlertView, ViewSnapshotError> {
        let fingerprint = Fingerprint(self.u64()?);
        let count = self.u64()?;
        let first_seen = self.i64()?;
        let last_seen = self.i64()?;
        let ends_at = self.opt_i64()?;
        let n_pairs = self.count(8)?;
        let n_labels = self.u32()?;
        if n_labels as usize > n_pairs {
            return Err(self.bad("label count"));
        }
        let mut pairs = Vec::with_capacity(n_pairs);
        for _ in 0..n_pairs {
            pairs.push((self.sym()?, self.sym()?));
        }
        Ok(AlertView {
            fingerprint,
            count,
            first_seen,
            last_seen,
            ends_at,
            pairs: pairs.into_boxed_slice(),
            n_labels,
            dedup_key: self.opt_sym()?,
            source: self.sym()?,
            name: self.sym()?,
            ci: self.opt_sym()?,
            reason: self.sym()?,
            summary: self.opt_sym()?,
            suppressed: self.opt_sym()?,
            suppressed_by: self.opt_sym()?,
            severity: self.severity()?,
            status: if self.flag()? {
                Status::Resolved
            } else {
                Status::Firing
            },
            flapping: self.flag()?,
        })
    }

    fn entry(&mut self) -> Result<TimelineEntry, ViewSnapshotError> {
        let seq = self.u64()?;
        let at = self.i64()?;
        let note = match self.u8()? {
            0 => Note::Opened {
                group_key: self.sym()?,
            },
            1 => Note::Attached {
                who: self.sym()?,
                name: self.sym()?,
                reason: self.sym()?,
            },
            2 => Note::Resolved {
                who: self.sym()?,
                name: self.sym()?,
                reason: self.sym()?,
            },
            3 => Note::Refired {
                who: self.sym()?,
                name: self.sym()?,
            },
            4 => Note::Flapping {
                who: self.sym()?,
                name: self.sym()?,
                reason: self.sym()?,
            },
            5 => Note::Root {
                who: self.opt_sym()?,
                name: self.sym()?,
                reason: self.sym()?,
            },
            6 => Note::Priority {
                priority: self.priority()?,
                reason: self.sym()?,
            },
            7 => Note::MergedIn {
                from: IncidentId(self.u64()?),
                reason: self.sym()?,
            },
            8 => Note::MergedInto {
                into: IncidentId(self.u64()?),
                reason: self.sym()?,
            },
            9 => Note::Text {
                event: match self.u8()? {
                    0 => Event::Acknowledged,
                    1 => Event::Resolved,
                    2 => Event::Reopened,
                    3 => Event::Commented,
                    4 => Event::Impact,
                    _ => return Err(self.bad("timeline event")),
                },
                text: self.sym()?,
                by: self.opt_sym()?,
            },
            _ => return Err(self.bad("timeline entry kind")),
        };
        Ok(TimelineEntry { seq, at, note })
    }

    fn incident(&mut self) -> Result<IncidentView, ViewSnapshotError> {
        let id = IncidentId(self.u64()?);
        let state = self.state()?;
        let priority = self.priority()?;
        let rule = self.sym()?;
        let group_key = self.sym()?;
        let root = self.opt_u64()?.map(Fingerprint);
        let root_idx = match self.opt_u64()? {
            Some(i) => Some(u32::try_from(i).map_err(|_| self.bad("root index"))?),
            None => None,
        };
        let n = self.count(4)?;
        let mut services = Vec::with_capacity(n);
        for _ in 0..n {
            services.push(self.sym()?);
        }
        let merged_into = self.opt_u64()?.map(IncidentId);
        let opened_at = self.i64()?;
        let updated_at = self.i64()?;
        let resolved_at = self.opt_i64()?;
        let acknowledged_by = self.opt_sym()?;
        let resolved_by = self.opt_sym()?;
        let n = self.count(64)?;
        let mut alerts = Vec::with_capacity(n);
        for _ in 0..n {
            alerts.push(Box::new(self.alert()?));
        }
        let n = self.count(17)?;
        let mut timeline = Vec::with_capacity(n);
        for _ in 0..n {
            timeline.push(self.entry()?);
        }
        Ok(IncidentView {
            id,
            state,
            priority,
            rule,
            group_key,
            root,
            root_idx,
            services,
            merged_into,
            tally: Tally::of(&alerts),
            alerts,
            opened_at,
            updated_at,
            resolved_at,
            acknowledged_by,
            resolved_by,
            timeline,
        })
    }
}

/// A read model's snapshot, split by what must be encoded while the model stands still and
/// what need not. The incidents and alert homes change with the next commit group, so
/// [`ReadModel::snapshot_body`] encodes them at once; the interned strings (append-only: the
/// first `strings` symbols never change), the CMDB (shared, copied on write) and the small
/// maps are written by [`ViewSnapshot::head`] on the snapshot thread.
pub struct ViewSnapshot {
    last_seq: u64,
    open: u64,
    strings: u32,
    topology: Arc<Topology>,
    silences: BTreeMap<String, Silence>,
    sources: BTreeMap<String, SourceStats>,
    /// The incidents and alert homes, in pieces (see [`ReadModel::snapshot_body`]).
    body: Vec<Vec<u8>>,
}

/// About how many bytes of a snapshot's body are handed on at a time: the snapshot thread
/// writes them while the rest is encoded, so the whole body is never in memory at once.
const BODY_PIECE: usize = 16 << 20;

impl ViewSnapshot {
    /// The section's bytes before [`ViewSnapshot::body`]: header, strings, small parts.
    pub fn head(&self) -> Result<Vec<u8>, ViewSnapshotError> {
        let mut out = Vec::new();
        let mut e = Enc(&mut out);
        e.u8(SNAPSHOT_ENCODING);
        e.u64(self.last_seq);
        e.u64(self.open);
        // The strings, so symbols are written as their raw numbers.
        e.u32(self.strings);
        let mut too_long = false;
        sym::each(self.strings, |s| {
            too_long |= e.bytes(s.as_bytes()).is_err();
        });
        if too_long {
            return Err(ViewSnapshotError::Bad {
                what: "string over 4G",
                at: e.0.len(),
            });
        }
        let small = serde_json::to_vec(&SmallOut {
            topology: &self.topology,
            silences: &self.silences,
            sources: &self.sources,
        })?;
        e.bytes(&small)?;
        Ok(out)
    }

    /// The incidents and alert homes, if [`ReadModel::snapshot`] encoded them.
    pub fn body(&self) -> &[Vec<u8>] {
        &self.body
    }
}

impl ReadModel {
    /// Takes a snapshot: a compact binary form of the views (the interned strings once, then
    /// fixed-size records referring to them), encoded in one pass instead of cloning the
    /// model. The encoding is this module's own; the snapshot file around it carries the
    /// file version.
    pub fn snapshot(&self) -> Result<ViewSnapshot, ViewSnapshotError> {
        let mut snap = self.snapshot_head();
        let mut body = Vec::new();
        self.snapshot_body(|piece| {
            body.push(piece);
            Vec::new()
        })?;
        snap.body = body;
        Ok(snap)
    }

    /// A snapshot's small parts, without its body: taken first, they are what the body's
    /// symbols refer to.
    pub fn snapshot_head(&self) -> ViewSnapshot {
        ViewSnapshot {
            last_seq: self.last_seq,
            open: self.open as u64,
            // Every symbol the views hold was interned before this call.
            strings: sym::count(),
            topology: self.topology.clone(),
            silences: self.silences.clone(),
            sources: self.sources.clone(),
            body: Vec::new(),
        }
    }

    /// Encodes a snapshot's body (the incidents and alert homes), handing it to `piece` in
    /// pieces of about [`BODY_PIECE`] bytes, so a writer can take each while the next is
    /// encoded. `piece` returns a buffer to fill next: a written piece's, emptied, saves
    /// faulting in fresh memory for every piece (over 40 % of the encoding's time at 10M
    /// facts).
    pub fn snapshot_body(
        &self,
        piece: impl FnMut(Vec<u8>) -> Vec<u8>,
    ) -> Result<(), ViewSnapshotError> {
        self.snapshot_body_in(BODY_PIECE, piece)
    }

    /// [`ReadModel::snapshot_body`] in pieces of about `size` bytes.
    fn snapshot_body_in(
        &self,
        size: usize,
        mut piece: impl FnMut(Vec<u8>) -> Vec<u8>,
    ) -> Result<(), ViewSnapshotError> {
        // Room for a piece's last item: growing a buffer by doubling would copy it into
        // fresh memory while the publisher waits.
        let room = |body: &mut Vec<u8>| {
            body.clear();
            body.reserve(size + size / 4);
        };
        let mut body = Vec::new();
        room(&mut body);
        let mut full = |body: &mut Vec<u8>| {
            if body.len() >= size {
                let full = std::mem::take(body);
                *body = piece(full);
                room(body);
            }
        };
        Enc(&mut body).len(self.incidents.len())?;
        for inc in self.incidents.values() {
            Enc(&mut body).incident(inc)?;
            full(&mut body);
        }
        Enc(&mut body).len(self.homes.len())?;
        for (fp, home) in self.homes.iter() {
            let mut e = Enc(&mut body);
            e.u64(fp.0);
            match home {
                Home::Loose(view) => {
                    e.u8(0);
                    e.alert(view)?;
                }
                Home::Attached(id, idx) => {
                    e.u8(1);
                    e.u64(id.0);
                    e.u32(*idx);
                }
            }
            full(&mut body);
        }
        piece(body);
        Ok(())
    }

    /// Appends this read model's whole snapshot section to `out`.
    pub fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), ViewSnapshotError> {
        let snap = self.snapshot()?;
        out.extend_from_slice(&snap.head()?);
        snap.body()
            .iter()
            .for_each(|piece| out.extend_from_slice(piece));
        Ok(())
    }

    /// Reads what [`ReadModel::write_snapshot`] wrote.
    pub fn read_snapshot(bytes: &[u8]) -> Result<ReadModel, ViewSnapshotError> {
        ReadModel::read_snapshot_from(bytes, bytes.len() as u64)
    }

    /// Reads a snapshot section of `len` bytes from `src` as it decodes, a few megabytes
    /// at a time: at 10M facts the section is ~0.9 GB, and holding it all while the model
    /// it decodes to grows had a restart peak 0.8 GB above the model.
    pub fn read_snapshot_from(
        src: impl std::io::Read,
        len: u64,
    ) -> Result<ReadModel, ViewSnapshotError> {
        ReadModel::read_snapshot_in(src, len, READ_PIECE)
    }

    /// [`ReadModel::read_snapshot_from`], reading `piece` bytes at a time.
    fn read_snapshot_in(
        src: impl std::io::Read,
        len: u64,
        piece: usize,
    ) -> Result<ReadModel, ViewSnapshotError> {
        let mut d = Dec {
            src,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            len,
            piece,
            strings: String::new(),
            syms: Vec::new(),
        };
        let version = d.u8()?;
        if version != SNAPSHOT_ENCODING {
            return Err(ViewSnapshotError::Version(version));
        }
        let last_seq = d.u64()?;
        let open = usize::try_from(d.u64()?).map_err(|_| d.bad("open count"))?;
        let n = d.count(4)?;
        d.syms.reserve_exact(n);
        // The strings take less than what is left: room never written to costs no memory.
        d.strings
            .reserve(usize::try_from(d.len - d.at()).unwrap_or(0));
        for _ in 0..n {
            d.string()?;
        }
        let len = d.u32()? as usize;
        let small: SmallIn = serde_json::from_slice(d.take(len)?)?;
        let n = d.count(8)?;
        let mut incidents = Vec::with_capacity(n);
        for _ in 0..n {
            let inc = d.incident()?;
            incidents.push((inc.id, inc));
        }
        let incidents = IdTable::from_entries(incidents);
        let n = d.count(9)?;
        let mut homes = FingerprintMap::new();
        for _ in 0..n {
            let fp = Fingerprint(d.u64()?);
            let home = match d.u8()? {
                0 => Home::Loose(Box::new(d.alert()?)),
                1 => Home::Attached(IncidentId(d.u64()?), d.u32()?),
                _ => return Err(d.bad("alert home")),
            };
            homes.insert(fp, home);
        }
        if d.at() != d.len {
            return Err(d.bad("trailing data"));
        }
        Ok(ReadModel {
            incidents,
            topology: Arc::new(small.topology),
            silences: small.silences,
            sources: small.sources,
            homes,
            open,
            last_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Input};
    use crate::rules::Rules;

    fn alert(name: &str, ci: &str, at: Millis) -> Alert {
        let labels = BTreeMap::new();
        Alert {
            fingerprint: Fingerprint::native("mon", name, Some(ci), &labels, None),
            source: "mon".into(),
            name: name.into(),
            ci: Some(ci.into()),
            severity: Severity::Critical,
            status: Status::Firing,
            summary: Some("down".into()),
            labels,
            annotations: BTreeMap::new(),
            starts_at: at,
            ends_at: None,
            dedup_key: None,
            received_at: at,
        }
    }

    #[test]
    fn renders_the_contract_shape_with_reasons_and_timeline() {
        let mut engine = Engine::new(Rules::embedded().expect("rules"));
        let mut facts = Vec::new();
        let t = 1_795_000_000_000;
        for a in [
            alert("LinkDown", "sw-1", t),
            alert("LinkDown", "sw-1", t + 1),
            alert("PortFlap", "sw-1", t + 2),
            alert("DiskFull", "host-9", t + 3),
        ] {
            engine.handle(Input::Alert(&a), &mut facts).expect("alert");
        }
        let mut model = ReadModel::default();
        for (seq, f) in facts.iter().enumerate() {
            model.apply(seq as u64 + 1, f);
        }
        assert_eq!(model.open_count(), 2);
        let (total, page) = model.list(Some(IncidentState::Open), 0, 1);
        assert_eq!((total, page.len()), (2, 1));
        assert_eq!(page[0].id, IncidentId(2), "newest first");

        let inc = model.get(IncidentId(1)).expect("incident 1");
        let doc = serde_json::to_value(inc.doc(&model.topology, true)).expect("json");
        assert_eq!(doc["id"], "INC-000001");
        assert_eq!(doc["state"], "open");
        assert_eq!(doc["priority"], "P2");
        assert_eq!(doc["title"], "sw-1: LinkDown (+1 related alert)");
        assert_eq!(doc["root_cause"]["ci"], "sw-1");
        assert_eq!(doc["alerts"][0]["count"], 2);
        assert_eq!(doc["alerts"][1]["name"], "PortFlap");
        assert!(
            doc["alerts"][1]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("rule same-ci: same group same-ci{ci=\"sw-1\"}")),
            "{}",
            doc["alerts"][1]["reason"]
        );
        assert_eq!(doc["opened_at"], "2026-11-18T11:06:40.000Z");
        assert!(doc["resolved_at"].is_null());
        assert_eq!(doc["timeline"][0]["event"], "incident_opened");
        let list_doc = serde_json::to_value(inc.doc(&model.topology, false)).expect("json");
        assert!(list_doc.get("timeline").is_none());
    }

    /// A closed incident leaves the read model with its alerts, a forgotten alert leaves on
    /// its own; the rest stays as it was.
    #[test]
    fn a_closed_incident_leaves_with_its_alerts() {
        let mut rules = Rules::embedded().expect("rules");
        rules.lifecycle.close_after = Some(rules.lifecycle.reopen_window);
        let mut engine = Engine::new(rules);
        let mut facts = Vec::new();
        let t = 1_795_000_000_000;
        let down = alert("LinkDown", "sw-1", t);
        let mut up = down.clone();
        up.status = Status::Resolved;
        up.ends_at = Some(t + 60_000);
        up.received_at = t + 60_000;
        // Resolved without ever firing: an alert in no incident, forgotten on its own.
        let mut stray = alert("FanFailure", "host-3", t);
        stray.status = Status::Resolved;
        stray.ends_at = Some(t);
        for a in [&down, &alert("DiskFull", "host-9", t), &up, &stray] {
            engine.handle(Input::Alert(a), &mut facts).expect("alert");
        }
        for now in [t + 10 * 60_000, t + 60 * 60_000] {
            engine
                .handle(Input::Tick { now }, &mut facts)
                .expect("tick");
        }
        let kinds: Vec<&str> = facts.iter().rev().take(2).map(Fact::kind).collect();
        assert_eq!(kinds, ["alert_forgotten", "incident_closed"]);
        let mut model = ReadModel::default();
        for (seq, f) in facts.iter().enumerate() {
            model.apply(seq as u64 + 1, f);
        }
        assert!(model.get(IncidentId(1)).is_none());
        assert_eq!(model.list(None, 0, 10).0, 1);
        assert_eq!(model.open_count(), 1);
        let alerts: Vec<_> = model.current_alerts().iter().map(|(a, _)| a.name).collect();
        assert_eq!(
            alerts,
            [Sym::new("DiskFull")],
            "the closed incident's alert left"
        );
    }

    /// Each incident's running tally equals a count over its members.
    fn assert_tallies(model: &ReadModel) {
        for inc in model.incidents.values() {
            assert_eq!(inc.tally, Tally::of(&inc.alerts), "tally of {}", inc.id);
        }
    }

    /// Everything a reader can see of a model, as JSON.
    fn rendered(model: &ReadModel) -> serde_json::Value {
        let incidents: Vec<serde_json::Value> = model
            .incidents
            .values()
            .map(|i| serde_json::to_value(i.doc(&model.topology, true)).expect("doc"))
            .collect();
        let summaries: Vec<serde_json::Value> = model
            .incidents
            .values()
            .map(|i| serde_json::to_value(i.summary(&model.topology)).expect("summary"))
            .collect();
        let current: Vec<serde_json::Value> = model
            .current_alerts()
            .into_iter()
            .map(|(a, id)| serde_json::json!([a, id]))
            .collect();
        serde_json::json!({
            "incidents": incidents,
            "summaries": summaries,
            "current": current,
            "sources": model.sources,
            "silences": model.silences,
            "suppressed": model.suppressed_keys(),
            "open": model.open_count(),
            "last_seq": model.last_seq,
            "counts": serde_json::to_value(model.counts()).expect("counts"),
        })
    }

    #[test]
    fn snapshot_round_trip_keeps_everything_readers_see() {
        let mut engine = Engine::new(Rules::embedded().expect("rules"));
        let mut facts = Vec::new();
        let t = 1_795_000_000_000;
        let mut labelled = alert("HighLoad", "host-1", t + 4);
        labelled.labels.insert("team".into(), "net".into());
        labelled.labels.insert("dc".into(), "dc1".into());
        labelled
            .annotations
            .insert("runbook".into(), "http://rb".into());
        labelled.dedup_key = Some("load-host-1".into());
        labelled.fingerprint =
            Fingerprint::native("mon", "HighLoad", Some("host-1"), &labelled.labels, None);
        for a in [
            alert("LinkDown", "sw-1", t),
            alert("LinkDown", "sw-1", t + 1),
            alert("PortFlap", "sw-1", t + 2),
            alert("DiskFull", "host-9", t + 3),
            labelled,
        ] {
            engine.handle(Input::Alert(&a), &mut facts).expect("alert");
        }
        let fp = |name: &str, ci: &str| {
            Fingerprint::native("mon", name, Some(ci), &BTreeMap::new(), None).to_string()
        };
        let extra = serde_json::json!([
            {"type": "alert_resolved", "at": t + 10, "fingerprint": fp("PortFlap", "sw-1"), "ends_at": t + 10, "reason": "ended"},
            {"type": "alert_refired", "at": t + 11, "fingerprint": fp("PortFlap", "sw-1"), "severity": "major"},
            {"type": "alert_flapping", "at": t + 12, "fingerprint": fp("PortFlap", "sw-1"), "reason": "3 changes in 10m"},
            {"type": "alert_suppressed", "at": t + 13, "fingerprint": fp("DiskFull", "host-9"), "by": "silence s-1", "reason": "matched"},
            {"type": "impact_changed", "at": t + 14, "incident": 1, "services": ["svc-a", "svc-b"], "reason": "depends on sw-1"},
            {"type": "priority_changed", "at": t + 15, "incident": 1, "priority": "P1", "reason": "critical service"},
            {"type": "incident_acknowledged", "at": t + 16, "incident": 1, "by": "alice", "comment": "looking"},
            {"type": "incident_commented", "at": t + 17, "incident": 1, "actor": "bob", "text": "cable"},
            {"type": "incidents_merged", "at": t + 18, "into": 1, "from": 2, "reason": "same cause"},
            {"type": "incident_resolved", "at": t + 19, "incident": 1, "by": "alice"},
            {"type": "incident_reopened", "at": t + 20, "incident": 1, "reason": "refired"},
            {"type": "alert_received", "at": t + 21, "alert": {"fingerprint": fp("Loose", "x"), "source": "mon", "name": "Loose", "severity": "info", "status": "resolved", "starts_at": t, "received_at": t + 21}},
            {"type": "alert_suppressed", "at": t + 22, "fingerprint": fp("Loose", "x"), "by": "maintenance", "reason": "window"},
        ]);
        let extra: Vec<Fact> = serde_json::from_value(extra).expect("facts");
        facts.extend(extra);
        let mut model = ReadModel::default();
        for (seq, f) in facts.iter_mut().enumerate() {
            model.apply_owned(seq as u64 + 1, f);
        }
        assert!(
            model
                .get(IncidentId(1))
                .is_some_and(|i| i.timeline.len() > 8)
        );
        assert_eq!(model.suppressed_keys().len(), 1);
        assert_tallies(&model);
        let merged = model.get(IncidentId(1)).expect("incident 1");
        let summary = serde_json::to_value(merged.summary(&model.topology)).expect("summary");
        assert_eq!(
            (&summary["firing_count"], &summary["severity"]),
            (&serde_json::json!(3), &serde_json::json!("critical")),
            "LinkDown, PortFlap resolved and refired, one merged in: {summary}"
        );

        let mut bytes = Vec::new();
        model.write_snapshot(&mut bytes).expect("encode");
        let back = ReadModel::read_snapshot(&bytes).expect("decode");
        assert_tallies(&back);
        // Read a byte at a time as it decodes: the same model.
        let bit_by_bit = ReadModel::read_snapshot_in(&bytes[..], bytes.len() as u64, 1);
        assert_eq!(rendered(&bit_by_bit.expect("decode")), rendered(&back));
        // A section shorter than it says is refused, not waited for.
        let short = ReadModel::read_snapshot_in(&bytes[..100], bytes.len() as u64, 1);
        assert!(short.is_err());
        // The body handed on in pieces (a byte each: every item ends one) is the same body.
        let whole = model.snapshot().expect("snapshot").body().concat();
        let mut pieces = Vec::new();
        model
            .snapshot_body_in(1, |p| {
                pieces.push(p);
                Vec::new()
            })
            .expect("pieces");
        assert!(pieces.len() > 5, "{} pieces", pieces.len());
        assert_eq!(pieces.concat(), whole);
        assert_eq!(rendered(&back), rendered(&model));
        assert!(
            rendered(&model)["incidents"][0]["timeline"]
                .as_array()
                .is_some_and(|t| t.iter().any(|e| e["text"] == "2 merged in: same cause"
                    || e["text"]
                        .as_str()
                        .is_some_and(|s| s.contains("merged in: same cause"))))
        );

        // Damage is refused, not misread.
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                ReadModel::read_snapshot(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut other = bytes.clone();
        other[0] = 99;
        assert!(matches!(
            ReadModel::read_snapshot(&other),
            Err(ViewSnapshotError::Version(99))
        ));
    }
}
