#![no_main]
//! The CMDB decoders: a JSON spec, CSV (CIs and relations split at the first NUL byte) and a
//! JSON list of live change operations. Whatever parses and validates must build a topology
//! and apply without panicking.

use incidentd::cmdb::{CmdbOp, CmdbSpec, Topology};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cis, relations) = text.split_once('\0').unwrap_or((text, ""));
    for spec in [CmdbSpec::from_json(text), CmdbSpec::from_csv(cis, relations)]
        .into_iter()
        .flatten()
    {
        let _ = spec.check();
        if let Ok(topology) = Topology::from_spec(&spec) {
            let _ = topology.to_spec();
        }
    }
    if let Ok(ops) = serde_json::from_str::<Vec<CmdbOp>>(text) {
        let base = CmdbSpec::from_json(r#"{"cis":[{"id":"sw-1","type":"switch"},{"id":"h-1","type":"host"}],"relations":[{"from":"h-1","to":"sw-1","type":"connected_to"}]}"#)
            .expect("the base CMDB parses");
        let mut topology = Topology::from_spec(&base).expect("the base CMDB builds");
        if topology.validate(&ops).is_ok() {
            topology.apply(&ops);
        }
    }
});
