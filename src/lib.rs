//! incidentd: turns alert storms into incidents.
//!
//! Module map, in the order data flows:
//! - [`model`]: the normalized `Alert` every format decodes into, fingerprints, time helpers.
//! - [`rules`]: correlation rules from TOML files, compiled once.
//! - [`engine`]: the deterministic state machine (`decide` → facts → `apply`).
//! - [`view`]: the read model (incident views with reasons and timelines) fed by durable facts.
pub mod engine;
pub mod model;
pub mod rules;
pub mod view;
