//! The durable state of the daemon in one SQLite database (WAL): webhook deliveries and
//! comments already seen (dedup), triggers waiting for authorisation, runs and their state, and
//! what has been reported to the forge. Everything that must survive `kill -9` is written here
//! before it is acted on.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::FromSqlError;
use rusqlite::{Connection, OpenFlags};

use crate::error::DaemonError;

mod deliveries;
mod poll_state;
mod pr_heads;
mod replies;
mod runs;
mod schema;
mod seen_comments;
mod triggers;

pub use runs::{RunRow, RunState, RunVerdict};
pub use triggers::{Enqueued, Ingested, NewTrigger, TriggerRow, TriggerState};

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
            Ok(())
        })?;
        schema::migrate(&mut store.lock()).map_err(|e| schema_err(path, e))?;
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
        schema::check(&conn).map_err(|e| schema_err(path, e))?;
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
}

fn store_err(path: &Path, e: rusqlite::Error) -> DaemonError {
    DaemonError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn schema_err(path: &Path, e: schema::SchemaError) -> DaemonError {
    DaemonError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Lists are stored comma-separated (stage names and logins never hold a comma).
fn split_list(s: String) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// A value in an enum column that this cc-ci does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} `{value}` in the database (written by a newer cc-ci, or edited by hand)")]
struct UnknownValue {
    what: &'static str,
    value: String,
}

fn unknown(what: &'static str, value: &str) -> FromSqlError {
    FromSqlError::Other(Box::new(UnknownValue {
        what,
        value: value.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

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

    /// The database of a daemon from before schema versions: its tables without the later
    /// columns, one queued run in it.
    fn unversioned_database(path: &Path) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, trigger_id INTEGER, \
             repo TEXT NOT NULL, pr INTEGER NOT NULL, head_sha TEXT NOT NULL, user TEXT NOT NULL, \
             stages TEXT NOT NULL, state TEXT NOT NULL, verdict TEXT, reason TEXT, exit_code INTEGER, \
             requeues INTEGER NOT NULL DEFAULT 0, cancel_requested TEXT, created_at INTEGER NOT NULL, \
             started_at INTEGER, finished_at INTEGER, trigger_comment_id INTEGER, comment_id INTEGER, \
             version INTEGER NOT NULL DEFAULT 1, synced_version INTEGER NOT NULL DEFAULT 0, \
             sync_failures INTEGER NOT NULL DEFAULT 0, next_sync_at INTEGER NOT NULL DEFAULT 0, \
             posted_status TEXT, posted_comment_hash TEXT);
             CREATE TABLE poll_state (repo TEXT PRIMARY KEY, watermark INTEGER NOT NULL);
             INSERT INTO runs (repo, pr, head_sha, user, stages, state, created_at) \
             VALUES ('o/r', 3, 'abc1234', 'alice', 'install', 'queued', 1);
             INSERT INTO poll_state (repo, watermark) VALUES ('o/r', 5);",
        )
        .unwrap();
    }

    #[test]
    fn an_unversioned_database_is_migrated_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        unversioned_database(&path);
        let s = Store::open(&path).unwrap();
        let runs = s.runs_in_state(RunState::Queued).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (runs[0].pr, runs[0].stages.clone()),
            (3, vec!["install".to_string()])
        );
        assert_eq!(runs[0].forge_repo, None);
        assert!(!runs[0].report_given_up);
        assert_eq!(s.poll_since("o/r").unwrap(), Some(0));
        assert_eq!(schema::version(&s.lock()).unwrap(), schema::VERSION);
        drop(s);
        // Opening again migrates nothing and loses nothing.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.runs_in_state(RunState::Queued).unwrap().len(), 1);
        assert!(Store::open_existing(&path).is_ok());
    }

    #[test]
    fn a_database_of_another_version_is_refused_by_the_cli_and_a_newer_one_by_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        unversioned_database(&path);
        let e = Store::open_existing(&path).err().unwrap().to_string();
        assert!(e.contains("start `cc-ci serve`"), "{e}");
        Store::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", schema::VERSION + 1)
            .unwrap();
        for e in [Store::open(&path).err(), Store::open_existing(&path).err()] {
            let e = e.unwrap().to_string();
            assert!(e.contains("newer than this cc-ci"), "{e}");
        }
    }

    #[test]
    fn an_unknown_state_or_verdict_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let a = s.accept_trigger(&trig(&s, 1, 1), "aaaaaaa").unwrap();
        let t = trig(&s, 1, 2);
        let set = |sql: &str| {
            s.with(|c| c.execute(sql, params![a.run_id]).map(|_| ()))
                .unwrap()
        };
        set("UPDATE runs SET state = 'exploded' WHERE id = ?1");
        let e = s.get_run(a.run_id).err().unwrap().to_string();
        assert!(e.contains("unknown run state `exploded`"), "{e}");
        assert!(s.cancel_requests().is_ok());
        set("UPDATE runs SET state = 'done', verdict = 'maybe' WHERE id = ?1");
        let e = s.list_runs(10).err().unwrap().to_string();
        assert!(e.contains("unknown run verdict `maybe`"), "{e}");
        s.with(|c| c.execute("UPDATE triggers SET state = 'lost' WHERE id = ?1", [t.id]))
            .unwrap();
        let e = s.get_trigger(t.id).err().unwrap().to_string();
        assert!(e.contains("unknown trigger state `lost`"), "{e}");
    }
}
