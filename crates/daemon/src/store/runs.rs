//! The `runs` table: one row per run, its state, verdict and what was reported of it.

use rusqlite::types::{FromSql, FromSqlResult, ValueRef};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, now, split_list, unknown};
use crate::error::DaemonError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Running,
    Done,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Done => "done",
        }
    }
}

/// The result of a finished run as the daemon sees it (stricter than run.json: a run that did
/// not end normally is never `pass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunVerdict {
    Pass,
    Fail,
    Error,
    Cancelled,
}

impl RunVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            RunVerdict::Pass => "pass",
            RunVerdict::Fail => "fail",
            RunVerdict::Error => "error",
            RunVerdict::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub repo: String,
    pub pr: i64,
    pub head_sha: String,
    pub user: String,
    pub stages: Vec<String>,
    pub state: RunState,
    pub verdict: Option<RunVerdict>,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub requeues: u32,
    pub cancel_requested: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub trigger_comment_id: Option<i64>,
    /// The bot's comment for this run on the pull request.
    pub comment_id: Option<i64>,
    #[serde(skip)]
    pub version: i64,
    #[serde(skip)]
    pub synced_version: i64,
    #[serde(skip)]
    pub sync_failures: i64,
    #[serde(skip)]
    pub posted_status: Option<String>,
    #[serde(skip)]
    pub posted_comment_hash: Option<String>,
    /// The repository's name on the forge now, when it moved (renamed or transferred) since
    /// the trigger: reports go there.
    pub forge_repo: Option<String>,
    /// The last reason reporting to the forge failed, while it is failing.
    pub report_error: Option<String>,
    /// Reporting was given up after too many failures (shown by `cc-ci queue`).
    pub report_given_up: bool,
}

const RUN_COLS: &str = "id, repo, pr, head_sha, user, stages, state, verdict, reason, exit_code, \
     requeues, cancel_requested, created_at, started_at, finished_at, trigger_comment_id, \
     comment_id, version, synced_version, sync_failures, posted_status, posted_comment_hash, \
     forge_repo, sync_error, sync_gave_up";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get("id")?,
        repo: r.get("repo")?,
        pr: r.get("pr")?,
        head_sha: r.get("head_sha")?,
        user: r.get("user")?,
        stages: split_list(r.get("stages")?),
        state: r.get("state")?,
        verdict: r.get("verdict")?,
        reason: r.get("reason")?,
        exit_code: r.get("exit_code")?,
        requeues: r.get("requeues")?,
        cancel_requested: r.get("cancel_requested")?,
        created_at: r.get("created_at")?,
        started_at: r.get("started_at")?,
        finished_at: r.get("finished_at")?,
        trigger_comment_id: r.get("trigger_comment_id")?,
        comment_id: r.get("comment_id")?,
        version: r.get("version")?,
        synced_version: r.get("synced_version")?,
        sync_failures: r.get("sync_failures")?,
        posted_status: r.get("posted_status")?,
        posted_comment_hash: r.get("posted_comment_hash")?,
        forge_repo: r.get("forge_repo")?,
        report_error: r.get("sync_error")?,
        report_given_up: r.get("sync_gave_up")?,
    })
}

impl FromSql for RunState {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(match v.as_str()? {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "done" => RunState::Done,
            other => return Err(unknown("run state", other)),
        })
    }
}

impl FromSql for RunVerdict {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(match v.as_str()? {
            "pass" => RunVerdict::Pass,
            "fail" => RunVerdict::Fail,
            "error" => RunVerdict::Error,
            "cancelled" => RunVerdict::Cancelled,
            other => return Err(unknown("run verdict", other)),
        })
    }
}

impl Store {
    /// The oldest queued run, now marked running.
    pub fn claim_next_queued(&self) -> Result<Option<RunRow>, DaemonError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "UPDATE runs SET state = 'running', started_at = ?1, version = version + 1 \
                     WHERE id = (SELECT min(id) FROM runs WHERE state = 'queued' AND cancel_requested IS NULL) \
                     RETURNING {RUN_COLS}"
                ),
                [now()],
                run_from_row,
            )
            .optional()
        })
    }
    pub fn finish_run(
        &self,
        id: i64,
        verdict: RunVerdict,
        reason: Option<&str>,
        exit_code: Option<i32>,
    ) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET state = 'done', verdict = ?2, reason = ?3, exit_code = ?4, \
                 finished_at = ?5, version = version + 1 WHERE id = ?1",
                params![id, verdict.as_str(), reason, exit_code, now()],
            )
            .map(|_| ())
        })
    }
    /// Put an interrupted run back in the queue (counts against `max_requeues`).
    pub fn requeue_run(&self, id: i64) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET state = 'queued', requeues = requeues + 1, started_at = NULL, \
                 version = version + 1 WHERE id = ?1",
                [id],
            )
            .map(|_| ())
        })
    }
    /// Ask for a run to be cancelled (the scheduler acts on it). Finished runs cannot be.
    pub fn request_cancel(&self, id: i64, reason: &str) -> Result<RunState, DaemonError> {
        let run = self.get_run(id)?.ok_or(DaemonError::NoSuchRun(id))?;
        if run.state == RunState::Done {
            return Err(DaemonError::RunFinished {
                id,
                state: run.verdict.map(|v| v.as_str()).unwrap_or("done").into(),
            });
        }
        self.with(|c| {
            c.execute(
                "UPDATE runs SET cancel_requested = COALESCE(cancel_requested, ?2) \
                 WHERE id = ?1 AND state != 'done'",
                params![id, reason],
            )
            .map(|_| ())
        })?;
        Ok(run.state)
    }
    /// Runs with a pending cancel request: (id, state, reason).
    pub fn cancel_requests(&self) -> Result<Vec<(i64, RunState, String)>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, state, cancel_requested FROM runs \
                 WHERE state != 'done' AND cancel_requested IS NOT NULL ORDER BY id",
            )?;
            st.query_map([], |r| {
                Ok((r.get("id")?, r.get("state")?, r.get("cancel_requested")?))
            })?
            .collect()
        })
    }
    pub fn runs_in_state(&self, state: RunState) -> Result<Vec<RunRow>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE state = ?1 ORDER BY id"
            ))?;
            st.query_map([state.as_str()], run_from_row)?.collect()
        })
    }
    /// (running, queued)
    pub fn counts(&self) -> Result<(usize, usize), DaemonError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(state = 'running'), 0) AS running, \
                 COALESCE(SUM(state = 'queued'), 0) AS queued FROM runs",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>("running")? as usize,
                        r.get::<_, i64>("queued")? as usize,
                    ))
                },
            )
        })
    }
    /// (state, verdict or "", number of runs): the `cc_ci_runs` gauge of `/metrics`.
    pub fn count_by_state_verdict(&self) -> Result<Vec<(String, String, i64)>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT state, COALESCE(verdict, '') AS verdict, COUNT(*) AS n FROM runs \
                 GROUP BY state, verdict",
            )?;
            st.query_map([], |r| {
                Ok((r.get("state")?, r.get("verdict")?, r.get("n")?))
            })?
            .collect()
        })
    }
    pub fn get_run(&self, id: i64) -> Result<Option<RunRow>, DaemonError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
                [id],
                run_from_row,
            )
            .optional()
        })
    }
    /// Newest first.
    pub fn list_runs(&self, limit: usize) -> Result<Vec<RunRow>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT ?1"
            ))?;
            st.query_map([limit as i64], run_from_row)?.collect()
        })
    }
    /// The run's forge view changed (progress): the reporter will sync it.
    pub fn bump_version(&self, id: i64) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute("UPDATE runs SET version = version + 1 WHERE id = ?1", [id])
                .map(|_| ())
        })
    }
    /// Runs whose forge view is behind their state and due for a (re)try.
    pub fn unsynced_runs(&self, at: i64) -> Result<Vec<RunRow>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE version > synced_version AND next_sync_at <= ?1 \
                 AND sync_gave_up = 0 ORDER BY id"
            ))?;
            st.query_map([at], run_from_row)?.collect()
        })
    }
    /// Runs whose report has not reached the forge (failing, or given up), oldest first.
    pub fn undelivered_runs(&self) -> Result<Vec<RunRow>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE version > synced_version \
                 AND (sync_failures > 0 OR sync_gave_up = 1) ORDER BY id"
            ))?;
            st.query_map([], run_from_row)?.collect()
        })
    }
    /// One column of one run; `column` is always one of this file's literals, never input.
    fn set_run_column(
        &self,
        id: i64,
        column: &'static str,
        value: impl rusqlite::ToSql,
    ) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                &format!("UPDATE runs SET {column} = ?2 WHERE id = ?1"),
                params![id, value],
            )
            .map(|_| ())
        })
    }
    pub fn set_forge_repo(&self, id: i64, repo: &str) -> Result<(), DaemonError> {
        self.set_run_column(id, "forge_repo", repo)
    }
    pub fn set_comment_id(&self, id: i64, comment_id: i64) -> Result<(), DaemonError> {
        self.set_run_column(id, "comment_id", comment_id)
    }
    pub fn set_posted_status(&self, id: i64, status: &str) -> Result<(), DaemonError> {
        self.set_run_column(id, "posted_status", status)
    }
    pub fn set_posted_comment(&self, id: i64, hash: &str) -> Result<(), DaemonError> {
        self.set_run_column(id, "posted_comment_hash", hash)
    }
    pub fn sync_succeeded(&self, id: i64, version: i64) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET synced_version = MAX(synced_version, ?2), sync_failures = 0, \
                 next_sync_at = 0, sync_error = NULL, sync_gave_up = 0 WHERE id = ?1",
                params![id, version],
            )
            .map(|_| ())
        })
    }
    /// A report failed: retry at `next_at`, or give up (`give_up`) and keep the error visible.
    pub fn sync_failed(
        &self,
        id: i64,
        next_at: i64,
        error: &str,
        give_up: bool,
    ) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET sync_failures = sync_failures + 1, next_sync_at = ?2, \
                 sync_error = ?3, sync_gave_up = ?4 WHERE id = ?1",
                params![id, next_at, error, give_up],
            )
            .map(|_| ())
        })
    }
    /// Whether a newer run exists for the same commit (it owns the commit status then).
    pub fn newer_run_for_sha(&self, run: &RunRow) -> Result<Option<i64>, DaemonError> {
        self.with(|c| {
            c.query_row(
                "SELECT max(id) AS newer FROM runs WHERE repo = ?1 AND head_sha = ?2 AND id > ?3",
                params![run.repo, run.head_sha, run.id],
                |r| r.get("newer"),
            )
        })
    }
    /// New commits on (or closing of) a pull request: queued runs for another head are
    /// cancelled, running ones get a cancel request. Returns how many runs were affected.
    pub fn supersede_pr(
        &self,
        repo: &str,
        pr: i64,
        keep_sha: Option<&str>,
        reason: &str,
    ) -> Result<usize, DaemonError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let a = supersede_in(&tx, repo, pr, i64::MAX, keep_sha, reason)?;
            let b = request_cancel_running_in(&tx, repo, pr, i64::MAX, keep_sha, reason)?;
            tx.commit()?;
            Ok(a.len() + b.len())
        })
    }
}

pub(super) fn supersede_in(
    tx: &rusqlite::Transaction<'_>,
    repo: &str,
    pr: i64,
    below_id: i64,
    keep_sha: Option<&str>,
    reason: &str,
) -> rusqlite::Result<Vec<i64>> {
    let mut st = tx.prepare(
        "UPDATE runs SET state = 'done', verdict = 'cancelled', reason = ?4, finished_at = ?5, \
         version = version + 1 \
         WHERE repo = ?1 AND pr = ?2 AND id < ?3 AND state = 'queued' \
         AND (?6 IS NULL OR head_sha != ?6) RETURNING id",
    )?;
    st.query_map(params![repo, pr, below_id, reason, now(), keep_sha], |r| {
        r.get("id")
    })?
    .collect()
}

pub(super) fn request_cancel_running_in(
    tx: &rusqlite::Transaction<'_>,
    repo: &str,
    pr: i64,
    below_id: i64,
    keep_sha: Option<&str>,
    reason: &str,
) -> rusqlite::Result<Vec<i64>> {
    let mut st = tx.prepare(
        "UPDATE runs SET cancel_requested = ?4 \
         WHERE repo = ?1 AND pr = ?2 AND id < ?3 AND state = 'running' AND cancel_requested IS NULL \
         AND (?5 IS NULL OR head_sha != ?5) RETURNING id",
    )?;
    st.query_map(params![repo, pr, below_id, reason, keep_sha], |r| {
        r.get("id")
    })?
    .collect()
}
