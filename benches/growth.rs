//! Stalls while a fingerprint-keyed table grows: inserts 1M fresh keys with 120-byte values
//! (the size of the engine's `AlertState`) into incidentd's `FingerprintMap`, whose shards
//! take staggered shares of the keys, and into the same 64 shards taking equal shares (the
//! baseline, in the same run), timing every 1,024 inserts. Equal shards all double within a
//! few thousand inserts of each other, so their rehashes (and the page faults of the new
//! tables) land together; the worst span of 16k inserts (~160 ms of traffic at 100k alerts/s)
//! is what a storm's tail latency sees. Run with `cargo bench --bench growth [-- N]`.

use std::hint::black_box;
use std::time::Instant;

use incidentd::model::{Fingerprint, FingerprintMap, SHARDS};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Value = [u64; 15];

/// Per 1,024 inserts: how long they took (µs).
fn grow(n: u64, mut insert: impl FnMut(Fingerprint, Value)) -> Vec<u128> {
    let mut spans = Vec::with_capacity((n / 1024) as usize);
    let mut h = 0u64;
    let mut t = Instant::now();
    for i in 1..=n {
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        insert(Fingerprint(h ^ (h >> 29)), [i; 15]);
        if i % 1024 == 0 {
            spans.push(t.elapsed().as_micros());
            t = Instant::now();
        }
    }
    spans
}

fn report(what: &str, spans: &[u128]) -> u128 {
    let mut sorted = spans.to_vec();
    sorted.sort_unstable();
    let worst_16k = spans.windows(16).map(|w| w.iter().sum()).max().unwrap_or(0);
    println!(
        "{what:15} total {:7.1} ms  median 1k-insert span {:5} µs  worst {:6} µs  worst 16k-insert span {:7} µs",
        spans.iter().sum::<u128>() as f64 / 1e3,
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        worst_16k,
    );
    worst_16k
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000u64);
    println!("{n} inserts of 120-byte values, 3 rounds, alternating");
    let mut ratios = Vec::new();
    for _ in 0..3 {
        let mut equal: Vec<foldhash::HashMap<Fingerprint, Value>> =
            (0..SHARDS).map(|_| Default::default()).collect();
        let base = report(
            "equal shards",
            &grow(n, |fp, v| {
                let shard = (fp.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
                equal[shard].insert(fp, v);
            }),
        );
        black_box(&equal);
        drop(equal);
        let mut map = FingerprintMap::new();
        let ours = report(
            "FingerprintMap",
            &grow(n, |fp, v| {
                map.insert(fp, v);
            }),
        );
        black_box(&map);
        ratios.push(ours as f64 / base as f64);
    }
    println!("worst 16k-insert span, FingerprintMap / equal shards: {ratios:.3?}");
}
