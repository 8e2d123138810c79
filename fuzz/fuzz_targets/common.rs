//! What every decoder target checks beyond "does not panic": decoding is deterministic, every
//! accepted alert is within the limits and survives the event log's record encoding unchanged
//! (else replay would differ from the live run), and every error points into the payload.

use incidentd::engine::Fact;
use incidentd::engine::facts::{decode_record, encode_record};
use incidentd::ingest::{self, Decoded, Format, Limits, Stamp};
use incidentd::model::Alert;

/// 2026-11-23T10:05:00Z, the receive time of the live decode.
pub const NOW: i64 = 1_795_428_300_000;

#[allow(dead_code)] // the binary CloudEvents target builds its own call
pub fn check(format: Format, data: &[u8]) {
    check_with(|stamp, limits| ingest::decode(format, data, stamp, limits));
}

pub fn check_with(decode: impl Fn(Stamp, &Limits) -> Result<Decoded, ingest::PayloadError>) {
    let limits = Limits::default();
    for stamp in [Stamp::Live(NOW), Stamp::Replay] {
        let first = decode(stamp, &limits);
        assert_eq!(first, decode(stamp, &limits), "decoding is not deterministic");
        let Ok(decoded) = first else { continue };
        for alert in &decoded.alerts {
            check_alert(alert, &limits);
            if let Stamp::Live(now) = stamp {
                assert_eq!(alert.received_at, now);
            }
        }
        let items = decoded.alerts.len() + decoded.errors.len();
        assert!(items <= limits.max_items);
        for e in &decoded.errors {
            assert!(e.index < items.max(1), "error index {} of {items}", e.index);
            assert!(!e.message.is_empty() && !e.code.is_empty());
        }
    }
}

fn check_alert(a: &Alert, limits: &Limits) {
    assert!(!a.source.is_empty() && a.source.len() <= limits.max_name_bytes);
    assert!(!a.name.is_empty() && a.name.len() <= limits.max_name_bytes);
    assert!(a.labels.len() <= limits.max_labels);
    assert!(a.annotations.len() <= limits.max_labels);
    for (k, v) in a.labels.iter().chain(&a.annotations) {
        assert!(k.len() <= limits.max_key_bytes && v.len() <= limits.max_value_bytes);
    }
    if let Some(end) = a.ends_at {
        assert!(end >= a.starts_at, "ends {end} before it starts {}", a.starts_at);
    }
    let fact = Fact::AlertReceived {
        at: a.received_at,
        alert: a.clone(),
    };
    let mut record = Vec::new();
    encode_record(&fact, &mut record).expect("an alert encodes");
    let back = decode_record(&record).expect("an encoded alert decodes");
    assert_eq!(back, fact, "the log's encoding changes the alert");
}
