//! The `triggers` table: `!testme` comments, from arrival to a run or a reply.

use rusqlite::types::{FromSql, FromSqlResult, ValueRef};
use rusqlite::{OptionalExtension, Row, params};

use super::runs::{request_cancel_running_in, supersede_in};
use super::{Store, now, split_list, unknown};
use crate::error::DaemonError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerState {
    /// Waiting for authorisation and the pull request's head.
    New,
    Accepted,
    Rejected,
    /// Valid but moot (the pull request was closed).
    Dropped,
}

impl TriggerState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            TriggerState::New => "new",
            TriggerState::Accepted => "accepted",
            TriggerState::Rejected => "rejected",
            TriggerState::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TriggerRow {
    pub id: i64,
    pub repo: String,
    pub pr: i64,
    pub comment_id: i64,
    pub user: String,
    pub stages: Vec<String>,
    pub unknown_stages: Vec<String>,
    pub state: TriggerState,
    /// None = not decided yet.
    pub authorised: Option<bool>,
    pub reply: Option<String>,
    pub replied: bool,
    pub run_id: Option<i64>,
    pub attempts: i64,
}

const TRIGGER_COLS: &str = "id, repo, pr, comment_id, user, stages, unknown_stages, state, \
     authorised, reply, replied, run_id, attempts";

fn trigger_from_row(r: &Row<'_>) -> rusqlite::Result<TriggerRow> {
    Ok(TriggerRow {
        id: r.get("id")?,
        repo: r.get("repo")?,
        pr: r.get("pr")?,
        comment_id: r.get("comment_id")?,
        user: r.get("user")?,
        stages: split_list(r.get("stages")?),
        unknown_stages: split_list(r.get("unknown_stages")?),
        state: r.get("state")?,
        authorised: r.get("authorised")?,
        reply: r.get("reply")?,
        replied: r.get("replied")?,
        run_id: r.get("run_id")?,
        attempts: r.get("attempts")?,
    })
}

impl FromSql for TriggerState {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(match v.as_str()? {
            "new" => TriggerState::New,
            "accepted" => TriggerState::Accepted,
            "rejected" => TriggerState::Rejected,
            "dropped" => TriggerState::Dropped,
            other => return Err(unknown("trigger state", other)),
        })
    }
}

/// A trigger comment as it arrives (webhook or poll).
#[derive(Debug, Clone)]
pub struct NewTrigger<'a> {
    pub source: &'a str,
    pub delivery_id: Option<&'a str>,
    pub repo: &'a str,
    pub pr: i64,
    pub comment_id: i64,
    pub user: &'a str,
    pub stages: &'a [String],
    pub unknown_stages: &'a [String],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    DuplicateDelivery,
    DuplicateComment,
    Stored(i64),
}

/// A new run created from an accepted trigger, and what it superseded.
#[derive(Debug, Clone, Default)]
pub struct Enqueued {
    pub run_id: i64,
    /// Queued runs of the same pull request, now cancelled.
    pub cancelled_queued: Vec<i64>,
    /// Running runs of the same pull request that must be stopped.
    pub cancel_running: Vec<i64>,
}

impl Store {
    /// Record a trigger comment unless its delivery or its comment was seen before, in one
    /// transaction (a crash cannot mark a comment seen without keeping its trigger).
    pub fn ingest_trigger(&self, t: &NewTrigger<'_>) -> Result<Ingested, DaemonError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let ts = now();
            if let Some(d) = t.delivery_id
                && tx.execute(
                    "INSERT OR IGNORE INTO deliveries (id, received_at) VALUES (?1, ?2)",
                    params![d, ts],
                )? == 0
            {
                return Ok(Ingested::DuplicateDelivery);
            }
            if tx.execute(
                "INSERT OR IGNORE INTO seen_comments (repo, comment_id, seen_at) VALUES (?1, ?2, ?3)",
                params![t.repo.to_ascii_lowercase(), t.comment_id, ts],
            )? == 0
            {
                tx.commit()?;
                return Ok(Ingested::DuplicateComment);
            }
            tx.execute(
                "INSERT INTO triggers (source, delivery_id, repo, pr, comment_id, user, stages, \
                 unknown_stages, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'new', ?9)",
                params![
                    t.source,
                    t.delivery_id,
                    t.repo,
                    t.pr,
                    t.comment_id,
                    t.user,
                    t.stages.join(","),
                    t.unknown_stages.join(","),
                    ts
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Ingested::Stored(id))
        })
    }
    pub fn get_trigger(&self, id: i64) -> Result<Option<TriggerRow>, DaemonError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {TRIGGER_COLS} FROM triggers WHERE id = ?1"),
                [id],
                trigger_from_row,
            )
            .optional()
        })
    }
    /// Triggers with work left (a decision, or a reply to post) whose retry time has come.
    pub fn due_triggers(&self, at: i64) -> Result<Vec<TriggerRow>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {TRIGGER_COLS} FROM triggers WHERE next_attempt_at <= ?1 AND \
                 (state = 'new' OR (state = 'rejected' AND reply IS NOT NULL AND replied = 0)) \
                 ORDER BY id"
            ))?;
            st.query_map([at], trigger_from_row)?.collect()
        })
    }
    pub fn set_trigger_authorised(&self, id: i64, allowed: bool) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE triggers SET authorised = ?2 WHERE id = ?1",
                params![id, allowed],
            )
            .map(|_| ())
        })
    }
    pub fn reject_trigger(&self, id: i64, reply: Option<&str>) -> Result<(), DaemonError> {
        self.set_trigger_state(id, TriggerState::Rejected, reply)
    }
    pub fn drop_trigger(&self, id: i64, why: &str) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE triggers SET state = 'dropped', error = ?2 WHERE id = ?1",
                params![id, why],
            )
            .map(|_| ())
        })
    }
    fn set_trigger_state(
        &self,
        id: i64,
        state: TriggerState,
        reply: Option<&str>,
    ) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE triggers SET state = ?2, reply = ?3 WHERE id = ?1",
                params![id, state.as_str(), reply],
            )
            .map(|_| ())
        })
    }
    /// A forge call failed: try again at `next_at`.
    pub fn trigger_retry_later(
        &self,
        id: i64,
        error: &str,
        next_at: i64,
    ) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE triggers SET attempts = attempts + 1, error = ?2, next_attempt_at = ?3 WHERE id = ?1",
                params![id, error, next_at],
            )
            .map(|_| ())
        })
    }
    /// Accept a trigger: create its run and supersede older runs of the same pull request, in
    /// one transaction so a crash cannot leave a trigger accepted without its run.
    pub fn accept_trigger(&self, t: &TriggerRow, head_sha: &str) -> Result<Enqueued, DaemonError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let ts = now();
            tx.execute(
                "INSERT INTO runs (trigger_id, repo, pr, head_sha, user, stages, state, created_at, \
                 trigger_comment_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8)",
                params![
                    t.id,
                    t.repo,
                    t.pr,
                    head_sha,
                    t.user,
                    t.stages.join(","),
                    ts,
                    t.comment_id
                ],
            )?;
            let run_id = tx.last_insert_rowid();
            let reason = format!("superseded by run #{run_id}");
            let cancelled_queued = supersede_in(&tx, &t.repo, t.pr, run_id, None, &reason)?;
            let cancel_running = request_cancel_running_in(&tx, &t.repo, t.pr, run_id, None, &reason)?;
            tx.execute(
                "UPDATE triggers SET state = 'accepted', run_id = ?2 WHERE id = ?1",
                params![t.id, run_id],
            )?;
            tx.commit()?;
            Ok(Enqueued {
                run_id,
                cancelled_queued,
                cancel_running,
            })
        })
    }
    /// Triggers stored (every accepted `!testme`, whatever became of it).
    pub fn trigger_count(&self) -> Result<u64, DaemonError> {
        self.with(|c| c.query_row("SELECT count(*) AS n FROM triggers", [], |r| r.get("n")))
    }
}
