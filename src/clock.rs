//! The only place live code reads the wall clock. The engine never does: ingest stamps
//! `received_at` and the ticker sends `Tick { now }` from here, so time reaches the engine as
//! data and replay can feed recorded time instead.

use crate::model::Millis;

/// Milliseconds since the Unix epoch, now.
pub fn now() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
