#![no_main]
//! Arbitrary bytes as an event log record (binary version 2, JSON version 1, anything else):
//! decoding never panics, and a record that decodes re-encodes to one that decodes to the
//! same fact (what replay reads is what the writer meant).

use incidentd::engine::facts::{decode_record, encode_record};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(fact) = decode_record(data) else {
        return;
    };
    let mut again = Vec::new();
    encode_record(&fact, &mut again).expect("a decoded fact encodes");
    assert_eq!(decode_record(&again).expect("a re-encoded fact decodes"), fact);
});
