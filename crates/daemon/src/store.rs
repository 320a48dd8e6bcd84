//! The durable state of the daemon in one SQLite database (WAL): webhook deliveries and
//! comments already seen (dedup), triggers waiting for authorisation, runs and their state, and
//! what has been reported to the forge. Everything that must survive `kill -9` is written here
//! before it is acted on.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde::Serialize;

use crate::error::DaemonError;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
    fn parse(s: &str) -> Self {
        match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            _ => RunState::Done,
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
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pass" => RunVerdict::Pass,
            "fail" => RunVerdict::Fail,
            "error" => RunVerdict::Error,
            "cancelled" => RunVerdict::Cancelled,
            _ => return None,
        })
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

fn split_list(s: String) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        repo: r.get(1)?,
        pr: r.get(2)?,
        head_sha: r.get(3)?,
        user: r.get(4)?,
        stages: split_list(r.get(5)?),
        state: RunState::parse(&r.get::<_, String>(6)?),
        verdict: r
            .get::<_, Option<String>>(7)?
            .and_then(|v| RunVerdict::parse(&v)),
        reason: r.get(8)?,
        exit_code: r.get(9)?,
        requeues: r.get(10)?,
        cancel_requested: r.get(11)?,
        created_at: r.get(12)?,
        started_at: r.get(13)?,
        finished_at: r.get(14)?,
        trigger_comment_id: r.get(15)?,
        comment_id: r.get(16)?,
        version: r.get(17)?,
        synced_version: r.get(18)?,
        sync_failures: r.get(19)?,
        posted_status: r.get(20)?,
        posted_comment_hash: r.get(21)?,
        forge_repo: r.get(22)?,
        report_error: r.get(23)?,
        report_given_up: r.get::<_, i64>(24)? != 0,
    })
}

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
    fn as_str(self) -> &'static str {
        match self {
            TriggerState::New => "new",
            TriggerState::Accepted => "accepted",
            TriggerState::Rejected => "rejected",
            TriggerState::Dropped => "dropped",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "new" => TriggerState::New,
            "accepted" => TriggerState::Accepted,
            "rejected" => TriggerState::Rejected,
            _ => TriggerState::Dropped,
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
        id: r.get(0)?,
        repo: r.get(1)?,
        pr: r.get(2)?,
        comment_id: r.get(3)?,
        user: r.get(4)?,
        stages: split_list(r.get(5)?),
        unknown_stages: split_list(r.get(6)?),
        state: TriggerState::parse(&r.get::<_, String>(7)?),
        authorised: r.get(8)?,
        reply: r.get(9)?,
        replied: r.get(10)?,
        run_id: r.get(11)?,
        attempts: r.get(12)?,
    })
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_comments (
    repo TEXT NOT NULL,
    comment_id INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (repo, comment_id)
);
CREATE TABLE IF NOT EXISTS poll_state (
    repo TEXT PRIMARY KEY,
    watermark INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pr_heads (
    repo TEXT NOT NULL,
    pr INTEGER NOT NULL,
    head_sha TEXT NOT NULL,
    PRIMARY KEY (repo, pr)
);
CREATE TABLE IF NOT EXISTS triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    delivery_id TEXT,
    repo TEXT NOT NULL,
    pr INTEGER NOT NULL,
    comment_id INTEGER NOT NULL,
    user TEXT NOT NULL,
    stages TEXT NOT NULL,
    unknown_stages TEXT NOT NULL,
    state TEXT NOT NULL,
    authorised INTEGER,
    reply TEXT,
    replied INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger_id INTEGER,
    repo TEXT NOT NULL,
    pr INTEGER NOT NULL,
    head_sha TEXT NOT NULL,
    user TEXT NOT NULL,
    stages TEXT NOT NULL,
    state TEXT NOT NULL,
    verdict TEXT,
    reason TEXT,
    exit_code INTEGER,
    requeues INTEGER NOT NULL DEFAULT 0,
    cancel_requested TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    trigger_comment_id INTEGER,
    comment_id INTEGER,
    version INTEGER NOT NULL DEFAULT 1,
    synced_version INTEGER NOT NULL DEFAULT 0,
    sync_failures INTEGER NOT NULL DEFAULT 0,
    next_sync_at INTEGER NOT NULL DEFAULT 0,
    posted_status TEXT,
    posted_comment_hash TEXT
);
CREATE TABLE IF NOT EXISTS replies (
    repo TEXT NOT NULL,
    pr INTEGER NOT NULL,
    user TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);
CREATE INDEX IF NOT EXISTS runs_pr ON runs (repo, pr);
";

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// Open (creating if needed) the database read-write, in WAL mode.
    pub fn open(path: &Path) -> Result<Self, DaemonError> {
        let conn = Connection::open(path).map_err(|e| store_err(path, e))?;
        let store = Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        store.with(|c| {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            // WAL: readers (the CLI) never block the daemon; FULL: a committed trigger survives
            // a power cut too, at a cost that does not matter at this write rate.
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.execute_batch(SCHEMA)?;
            // Columns added after the first release: a database made by an older daemon
            // gets them here.
            for (table, column, decl) in [
                ("runs", "forge_repo", "TEXT"),
                ("runs", "sync_error", "TEXT"),
                ("runs", "sync_gave_up", "INTEGER NOT NULL DEFAULT 0"),
                ("poll_state", "since", "INTEGER"),
            ] {
                let exists: bool = c
                    .prepare(&format!(
                        "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                    ))?
                    .exists([column])?;
                if !exists {
                    c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
                }
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// Open an existing database for the CLI (`cc-ci queue`, `logs`, `cancel`).
    pub fn open_existing(path: &Path) -> Result<Self, DaemonError> {
        if !path.exists() {
            return Err(DaemonError::Store {
                path: path.to_path_buf(),
                message: "does not exist: is `daemon.state_dir` the daemon's state directory, \
                          and has `cc-ci serve` run there?"
                    .into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| store_err(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| store_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (every statement is
        // atomic), so a poisoned lock is not a reason to stop.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DaemonError> {
        let mut c = self.lock();
        f(&mut c).map_err(|e| store_err(&self.path, e))
    }

    pub fn ping(&self) -> Result<(), DaemonError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    /// True when this delivery id was not seen before (and records it).
    pub fn record_delivery(&self, id: &str) -> Result<bool, DaemonError> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO deliveries (id, received_at) VALUES (?1, ?2)",
                params![id, now()],
            )? == 1)
        })
    }

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
                Ok((
                    r.get(0)?,
                    RunState::parse(&r.get::<_, String>(1)?),
                    r.get(2)?,
                ))
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

    /// Triggers stored (every accepted `!testme`, whatever became of it).
    pub fn trigger_count(&self) -> Result<u64, DaemonError> {
        self.with(|c| c.query_row("SELECT count(*) FROM triggers", [], |r| r.get(0)))
    }

    /// (running, queued)
    pub fn counts(&self) -> Result<(usize, usize), DaemonError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(state = 'running'), 0), COALESCE(SUM(state = 'queued'), 0) FROM runs",
                [],
                |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize)),
            )
        })
    }

    /// Every pull request's last known head (repo lower-cased, pr, sha): the board's
    /// "current or stale".
    pub fn pr_heads(&self) -> Result<Vec<(String, i64, String)>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT repo, pr, head_sha FROM pr_heads")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    /// (state, verdict or "", number of runs): the `cc_ci_runs` gauge of `/metrics`.
    pub fn count_by_state_verdict(&self) -> Result<Vec<(String, String, i64)>, DaemonError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT state, COALESCE(verdict, ''), COUNT(*) FROM runs GROUP BY state, verdict",
            )?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
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

    pub fn set_forge_repo(&self, id: i64, repo: &str) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET forge_repo = ?2 WHERE id = ?1",
                params![id, repo],
            )
            .map(|_| ())
        })
    }

    pub fn set_comment_id(&self, id: i64, comment_id: i64) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET comment_id = ?2 WHERE id = ?1",
                params![id, comment_id],
            )
            .map(|_| ())
        })
    }

    pub fn set_posted_status(&self, id: i64, status: &str) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET posted_status = ?2 WHERE id = ?1",
                params![id, status],
            )
            .map(|_| ())
        })
    }

    pub fn set_posted_comment(&self, id: i64, hash: &str) -> Result<(), DaemonError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET posted_comment_hash = ?2 WHERE id = ?1",
                params![id, hash],
            )
            .map(|_| ())
        })
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
                "SELECT max(id) FROM runs WHERE repo = ?1 AND head_sha = ?2 AND id > ?3",
                params![run.repo, run.head_sha, run.id],
                |r| r.get(0),
            )
        })
    }

    /// When the last complete poll of `repo` started (Unix seconds), `None` before the
    /// first one. (A database from an older daemon that only has a watermark counts as polled
    /// long ago: its comments are deduplicated by id.)
    pub fn poll_since(&self, repo: &str) -> Result<Option<i64>, DaemonError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(since, 0) FROM poll_state WHERE repo = ?1",
                [repo.to_ascii_lowercase()],
                |r| r.get(0),
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
                    |r| r.get(0),
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

fn store_err(path: &Path, e: rusqlite::Error) -> DaemonError {
    DaemonError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn supersede_in(
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
        r.get(0)
    })?
    .collect()
}

fn request_cancel_running_in(
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
    st.query_map(params![repo, pr, below_id, reason, keep_sha], |r| r.get(0))?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trig(store: &Store, pr: i64, comment: i64) -> TriggerRow {
        let Ingested::Stored(id) = store
            .ingest_trigger(&NewTrigger {
                source: "webhook",
                delivery_id: None,
                repo: "o/r",
                pr,
                comment_id: comment,
                user: "alice",
                stages: &[],
                unknown_stages: &[],
            })
            .unwrap()
        else {
            panic!("duplicate comment {comment}")
        };
        store.get_trigger(id).unwrap().unwrap()
    }

    #[test]
    fn dedup_and_queue_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = Store::open(&path).unwrap();
            assert!(s.record_delivery("uuid-1").unwrap());
            assert!(!s.record_delivery("uuid-1").unwrap());
            assert!(s.mark_comment_seen("O/R", 4).unwrap());
            assert!(!s.mark_comment_seen("o/r", 4).unwrap());
            let t = trig(&s, 1, 5);
            let again = NewTrigger {
                source: "poll",
                delivery_id: Some("uuid-2"),
                repo: "O/R",
                pr: 1,
                comment_id: 5,
                user: "alice",
                stages: &[],
                unknown_stages: &[],
            };
            assert_eq!(
                s.ingest_trigger(&again).unwrap(),
                Ingested::DuplicateComment
            );
            assert_eq!(
                s.ingest_trigger(&again).unwrap(),
                Ingested::DuplicateDelivery
            );
            assert_eq!(s.due_triggers(now()).unwrap().len(), 1);
            s.accept_trigger(&t, "abc1234").unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(!s.record_delivery("uuid-1").unwrap());
        assert!(s.due_triggers(now()).unwrap().is_empty());
        let queued = s.runs_in_state(RunState::Queued).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].head_sha, "abc1234");
        assert_eq!(s.counts().unwrap(), (0, 1));
    }

    #[test]
    fn new_trigger_supersedes_older_runs_of_the_same_pr() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let a = s.accept_trigger(&trig(&s, 1, 1), "aaaaaaa").unwrap();
        let running = s.claim_next_queued().unwrap().unwrap();
        assert_eq!(running.id, a.run_id);
        let b = s.accept_trigger(&trig(&s, 1, 2), "aaaaaaa").unwrap();
        assert_eq!(b.cancel_running, vec![a.run_id]);
        let other_pr = s.accept_trigger(&trig(&s, 2, 3), "bbbbbbb").unwrap();
        let c = s.accept_trigger(&trig(&s, 1, 4), "ccccccc").unwrap();
        assert_eq!(c.cancelled_queued, vec![b.run_id]);
        assert!(c.cancel_running.is_empty(), "already requested");
        let rb = s.get_run(b.run_id).unwrap().unwrap();
        assert_eq!(rb.verdict, Some(RunVerdict::Cancelled));
        assert_eq!(
            rb.reason.as_deref(),
            Some(&*format!("superseded by run #{}", c.run_id))
        );
        assert_eq!(
            s.get_run(other_pr.run_id).unwrap().unwrap().state,
            RunState::Queued
        );
        assert_eq!(s.cancel_requests().unwrap().len(), 1);
        // The cancelled running run is not claimed again; the next is the other PR's.
        assert_eq!(s.claim_next_queued().unwrap().unwrap().id, other_pr.run_id);
        assert_eq!(s.newer_run_for_sha(&rb).unwrap(), None);
    }

    #[test]
    fn head_change_supersedes_only_other_heads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let a = s.accept_trigger(&trig(&s, 1, 1), "aaaaaaa").unwrap();
        assert_eq!(s.supersede_pr("o/r", 1, Some("aaaaaaa"), "x").unwrap(), 0);
        assert_eq!(
            s.supersede_pr("o/r", 1, Some("bbbbbbb"), "moved").unwrap(),
            1
        );
        let r = s.get_run(a.run_id).unwrap().unwrap();
        assert_eq!(r.verdict, Some(RunVerdict::Cancelled));
        assert_eq!(s.update_pr_head("o/r", 1, "aaa").unwrap(), None);
        assert_eq!(s.update_pr_head("o/r", 1, "aaa").unwrap(), None);
        assert_eq!(
            s.update_pr_head("o/r", 1, "bbb").unwrap().as_deref(),
            Some("aaa")
        );
    }

    #[test]
    fn cancel_request_of_finished_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let a = s.accept_trigger(&trig(&s, 1, 1), "aaaaaaa").unwrap();
        s.finish_run(a.run_id, RunVerdict::Pass, None, Some(0))
            .unwrap();
        assert!(matches!(
            s.request_cancel(a.run_id, "x"),
            Err(DaemonError::RunFinished { .. })
        ));
        assert!(matches!(
            s.request_cancel(999, "x"),
            Err(DaemonError::NoSuchRun(999))
        ));
    }
}
