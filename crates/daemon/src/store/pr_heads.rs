//! The `pr_heads` table: each pull request's last known head commit.

use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::error::DaemonError;

impl Store {
    /// Every pull request's last known head (repo lower-cased, pr, sha): the board's
    /// "current or stale".
    pub fn pr_heads(&self) -> Result<Vec<(String, i64, String)>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT repo, pr, head_sha FROM pr_heads")?;
            st.query_map([], |r| {
                Ok((r.get("repo")?, r.get("pr")?, r.get("head_sha")?))
            })?
            .collect()
        })
    }
    /// Record a pull request's head; returns the previous one when it changed.
    pub fn update_pr_head(
        &self,
        repo: &str,
        pr: i64,
        sha: &str,
    ) -> Result<Option<String>, DaemonError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let old: Option<String> = tx
                .query_row(
                    "SELECT head_sha FROM pr_heads WHERE repo = ?1 AND pr = ?2",
                    params![repo.to_ascii_lowercase(), pr],
                    |r| r.get("head_sha"),
                )
                .optional()?;
            tx.execute(
                "INSERT INTO pr_heads (repo, pr, head_sha) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (repo, pr) DO UPDATE SET head_sha = excluded.head_sha",
                params![repo.to_ascii_lowercase(), pr, sha],
            )?;
            tx.commit()?;
            Ok(old.filter(|o| o != sha))
        })
    }
}
