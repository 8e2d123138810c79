#![no_main]
//! Binary-mode CloudEvents: the input is header lines (`name: value`) up to a blank line,
//! then the body.

#[path = "common.rs"]
mod common;

use incidentd::ingest::{self, Format};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let headers: Vec<(&str, &str)> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    common::check_with(|stamp, limits| {
        ingest::decode_with_headers(
            Format::CloudEvents,
            body.as_bytes(),
            headers.iter().copied(),
            stamp,
            limits,
        )
    });
});
