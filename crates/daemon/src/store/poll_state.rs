//! The `poll_state` table: per polled repository, when its last complete poll started.

use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::error::DaemonError;

impl Store {
    /// When the last complete poll of `repo` started (Unix seconds), `None` before the
    /// first one. (A database from an older daemon that only has a watermark counts as polled
    /// long ago: its comments are deduplicated by id.)
    pub fn poll_since(&self, repo: &str) -> Result<Option<i64>, DaemonError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(since, 0) AS since FROM poll_state WHERE repo = ?1",
                [repo.to_ascii_lowercase()],
                |r| r.get("since"),
            )
            .optional()
        })
    }
    pub fn set_poll_since(&self, repo: &str, since: i64) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO poll_state (repo, watermark, since) VALUES (?1, 0, ?2) \
                 ON CONFLICT (repo) DO UPDATE SET since = MAX(COALESCE(since, 0), excluded.since)",
                params![repo.to_ascii_lowercase(), since],
            )
            .map(|_| ())
        })
    }
}
