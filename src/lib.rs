//! incidentd: turns alert storms into incidents.
//!
//! Module map, in the order data flows:
//! - [`ingest`]: format decoders (native, Alertmanager) and the NATS subscriber; bad input is
//!   rejected here with a precise error and never reaches the engine.
//! - [`model`]: the normalized `Alert` every format decodes into, fingerprints, time helpers.
//! - [`rules`]: correlation rules from TOML files, compiled once.
//! - [`silence`]: Alertmanager-style silences, created and expired through the engine.
//! - [`cmdb`]: the CMDB topology graph (JSON/CSV load, lookup keys, bounded neighbourhoods).
//! - [`engine`]: the deterministic state machine (`decide` → facts → `apply`).
//! - [`pipeline`]: the engine thread and the group-commit writer thread between ingest and disk.
//! - [`eventlog`]: the segmented, checksummed, fsync'd append-only log of facts; [`snapshot`]:
//!   engine state and read model at a log sequence, so restarts replay only the tail.
//! - [`jslog`]: the same facts in a JetStream stream (clustered mode), behind one `FactLog` trait.
//! - [`view`]: the read model (incident views with reasons and timelines) fed by durable facts.
//! - [`api`]: the HTTP API and the NOC web console; [`stream`]: the live stream of incident
//!   changes the console follows; [`picture`]: an incident's topology neighbourhood to draw;
//!   [`metrics`]: Prometheus metrics.
//! - [`replay`]: the engine offline over recorded alerts (`incidentd replay`); [`backtest`]:
//!   quality against ground truth, baselines, rule diffs; [`export`]: log back to replay input.
//! - [`config`], [`clock`], [`app`]: configuration, the one wall clock, wiring and shutdown.

pub mod api;
pub mod app;
pub mod backtest;
pub mod clock;
pub mod cmdb;
pub mod config;
pub mod engine;
pub mod eventlog;
pub mod export;
pub mod ingest;
pub mod jslog;
pub mod metrics;
pub mod model;
pub mod picture;
pub mod pipeline;
pub mod replay;
pub mod rules;
pub mod silence;
pub mod snapshot;
pub mod stream;
pub mod view;
