//! The `deliveries` table: webhook delivery ids already processed (a replayed delivery is
//! answered, not acted on again).

use rusqlite::params;

use super::{Store, now};
use crate::error::DaemonError;

impl Store {
    /// True when this delivery id was not seen before (and records it).
    pub fn record_delivery(&self, id: &str) -> Result<bool, DaemonError> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO deliveries (id, received_at) VALUES (?1, ?2)",
                params![id, now()],
            )? == 1)
        })
    }
}
