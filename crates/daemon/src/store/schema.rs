//! The database's schema and its migrations. `PRAGMA user_version` holds the version a
//! database is at; `migrate` brings it up to `VERSION` one step at a time, each step in one
//! transaction, keeping the data. A database from a newer cc-ci is refused, not touched.

use rusqlite::{Connection, Transaction};

/// One step: brings a database at version `i` (its index) to `i + 1`.
type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// Every step, in order. Append only: a released step never changes.
const MIGRATIONS: [Migration; 1] = [v1_tables];

/// The version this cc-ci writes and reads.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    #[error(
        "it is at schema version {found}, newer than this cc-ci knows ({VERSION}): \
         run the cc-ci that wrote it, or a newer one"
    )]
    Newer { found: i64 },
    #[error(
        "it is at schema version {found}, this cc-ci needs {VERSION}: start `cc-ci serve` \
         once to migrate it"
    )]
    Older { found: i64 },
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
}

pub(crate) fn version(c: &Connection) -> rusqlite::Result<i64> {
    c.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Bring the database to `VERSION`.
pub(crate) fn migrate(c: &mut Connection) -> Result<(), SchemaError> {
    let found = version(c)?;
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }
    for (at, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = c.transaction()?;
        step(&tx)?;
        tx.pragma_update(None, "user_version", at as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// For readers that must not change the schema (the CLI): the database is at `VERSION`.
pub(crate) fn check(c: &Connection) -> Result<(), SchemaError> {
    match version(c)? {
        VERSION => Ok(()),
        found if found > VERSION => Err(SchemaError::Newer { found }),
        found => Err(SchemaError::Older { found }),
    }
}

/// The tables of the first release (version 1 adds the columns of later releases to them).
const TABLES_V1: &str = "
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

/// Version 1: the tables, and the columns added after the first release (databases made
/// before there was a schema version have the tables but may lack those columns).
fn v1_tables(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(TABLES_V1)?;
    for (table, column, decl) in [
        ("runs", "forge_repo", "TEXT"),
        ("runs", "sync_error", "TEXT"),
        ("runs", "sync_gave_up", "INTEGER NOT NULL DEFAULT 0"),
        ("poll_state", "since", "INTEGER"),
    ] {
        let exists: bool = tx
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !exists {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}
