//! The `seen_comments` table: comment ids already considered (each comment is a candidate
//! trigger once, from the webhook or a poll).

use rusqlite::{OptionalExtension, params};

use super::{Store, now};
use crate::error::DaemonError;

impl Store {
    /// True when this comment was not seen before (and records it).
    pub fn mark_comment_seen(&self, repo: &str, comment_id: i64) -> Result<bool, DaemonError> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO seen_comments (repo, comment_id, seen_at) VALUES (?1, ?2, ?3)",
                params![repo.to_ascii_lowercase(), comment_id, now()],
            )? == 1)
        })
    }
    pub fn comment_seen(&self, repo: &str, comment_id: i64) -> Result<bool, DaemonError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM seen_comments WHERE repo = ?1 AND comment_id = ?2",
                params![repo.to_ascii_lowercase(), comment_id],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
        })
    }
}
