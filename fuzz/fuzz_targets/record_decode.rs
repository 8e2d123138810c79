#![no_main]
//! Arbitrary bytes as an event log record (binary version 2, JSON version 1, anything else):
//! decoding never panics, a record that decodes re-encodes to one that decodes to the
//! same fact (what replay reads is what the writer meant), and replay's borrowed decoding
//! accepts and refuses exactly what the owned decoding does, reading the same fact.

use incidentd::engine::facts::{decode_record, encode_record};
use incidentd::engine::record::{Record, decode_record_ref};
use incidentd::engine::Fact;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let owned = decode_record(data);
    let borrowed = decode_record_ref(data).map(|r| match r {
        Record::Received { at, alert } => Fact::AlertReceived {
            at,
            alert: alert.to_alert(),
        },
        Record::Fact(fact) => fact,
    });
    assert_eq!(
        borrowed.as_ref().map_err(ToString::to_string),
        owned.as_ref().map_err(ToString::to_string)
    );
    let Ok(fact) = owned else {
        return;
    };
    let mut again = Vec::new();
    encode_record(&fact, &mut again).expect("a decoded fact encodes");
    assert_eq!(decode_record(&again).expect("a re-encoded fact decodes"), fact);
});
