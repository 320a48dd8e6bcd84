//! The `replies` table: refusal replies posted, for the one-reply-per-hour rule.

use rusqlite::params;

use super::triggers::TriggerRow;
use super::{Store, now};
use crate::error::DaemonError;

impl Store {
    /// The reply to a refused trigger was posted (and counts against the one-per-hour rule).
    pub fn trigger_replied(&self, t: &TriggerRow) -> Result<(), DaemonError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("UPDATE triggers SET replied = 1 WHERE id = ?1", [t.id])?;
            tx.execute(
                "INSERT INTO replies (repo, pr, user, at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    t.repo.to_ascii_lowercase(),
                    t.pr,
                    t.user.to_ascii_lowercase(),
                    now()
                ],
            )?;
            tx.commit()
        })
    }
    /// Whether `user` got a refusal reply on this pull request at or after `since`.
    pub fn replied_since(
        &self,
        repo: &str,
        pr: i64,
        user: &str,
        since: i64,
    ) -> Result<bool, DaemonError> {
        self.with(|c| {
            c.prepare(
                "SELECT 1 FROM replies WHERE repo = ?1 AND pr = ?2 AND user = ?3 AND at >= ?4",
            )?
            .exists(params![
                repo.to_ascii_lowercase(),
                pr,
                user.to_ascii_lowercase(),
                since
            ])
        })
    }
}
