//! Teardown of a stack and garbage collection of runs that died.
//!
//! Teardown works on the engine directly (not through abra) so it also works when a run died
//! half-way and its `ABRA_DIR` is incomplete. Liveness of a run is its exclusive lock on
//! `<work_dir>/runs/<domain>/lock`: the kernel drops it when the process dies, however it dies.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::{Engine, EngineError, StackObjects};
use crate::names;
use crate::swarm::{ObjectKind, Swarm};
use crate::wait::{Probe, WaitError, wait_for};

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Stuck(String),
    #[error("cannot use run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` is not a cc-ci app domain for this configuration; refusing to touch it")]
    NotOurs(String),
}

/// How long containers may outlive their (removed) services before teardown removes them by
/// force: longer than swarm's default stop grace period (10 s).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// How long a dead run's stack must stay empty before gc calls it collected: a run killed during
/// `abra app deploy` can leave a task whose container (and so its named volume) the node creates
/// a moment after the teardown found nothing left.
pub const GC_QUIET: Duration = Duration::from_secs(3);

/// Removes every object of `stack` and returns what is still there afterwards (empty = clean).
pub async fn teardown_stack(
    engine: &dyn Swarm,
    stack: &str,
    timeout: Duration,
) -> Result<Vec<String>, TeardownError> {
    let objects = engine.stack_objects(stack).await?;
    for (id, _) in &objects.services {
        engine.remove(ObjectKind::Service, id).await?;
    }
    // Networks, secrets and volumes stay busy until the services' containers are gone. Once no
    // service is left, containers that remain are given ORPHAN_GRACE, then removed by force
    // below: a container whose service vanished while dockerd restarted is never removed by the
    // swarm, and waiting the whole timeout for it made gc take minutes.
    let services_gone_at = std::sync::Mutex::new(None::<std::time::Instant>);
    let gone = wait_for(
        "the stack's containers to stop",
        timeout,
        Duration::from_millis(200),
        || async {
            let o = engine.stack_objects(stack).await?;
            let orphans_waited = o.services.is_empty() && {
                let mut at = services_gone_at.lock().unwrap_or_else(|e| e.into_inner());
                at.get_or_insert_with(std::time::Instant::now).elapsed() >= ORPHAN_GRACE
            };
            Ok::<_, EngineError>(
                if o.services.is_empty() && (o.containers.is_empty() || orphans_waited) {
                    Probe::Done(())
                } else {
                    Probe::Pending(o.describe().join(", "))
                },
            )
        },
    )
    .await;
    if let Err(WaitError::Probe(e)) = gone {
        return Err(e.into());
    }
    // Containers that outlived their service (a stuck shutdown) are removed by force.
    let objects = engine.stack_objects(stack).await?;
    for c in &objects.containers {
        engine.remove(ObjectKind::Container, c).await?;
    }
    remove_rest(engine, &objects).await?;
    // A volume can be released a moment after its container is removed; retry until the deadline.
    let result = wait_for(
        "the stack's objects to be removed",
        timeout,
        Duration::from_millis(200),
        || async {
            let o = engine.stack_objects(stack).await?;
            if o.is_empty() {
                return Ok::<_, EngineError>(Probe::Done(()));
            }
            for c in &o.containers {
                engine.remove(ObjectKind::Container, c).await?;
            }
            // Removal errors (in use) are expected while things wind down; the wait reports what is left.
            let _ = remove_rest(engine, &o).await;
            Ok(Probe::Pending(o.describe().join(", ")))
        },
    )
    .await;
    match result {
        Ok(()) => Ok(Vec::new()),
        Err(WaitError::Probe(e)) => Err(e.into()),
        Err(_) => Ok(engine.stack_objects(stack).await?.describe()),
    }
}

/// [`teardown_stack`] for gc: the stack must then stay empty for [`GC_QUIET`]; an object that
/// appears meanwhile (a deploy in flight when its run died) is torn down too, until `timeout`.
async fn teardown_settled(
    engine: &dyn Swarm,
    stack: &str,
    timeout: Duration,
) -> Result<Vec<String>, TeardownError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = teardown_stack(engine, stack, timeout).await?;
        if !left.is_empty() {
            return Ok(left);
        }
        // The wait succeeds when something reappears; timing out empty is the pass.
        let reappeared = wait_for(
            "a leftover of the dead run to appear",
            GC_QUIET,
            Duration::from_millis(200),
            || async {
                let o = engine.stack_objects(stack).await?;
                Ok::<_, EngineError>(if o.is_empty() {
                    Probe::Pending(String::new())
                } else {
                    Probe::Done(())
                })
            },
        )
        .await;
        match reappeared {
            Err(WaitError::TimedOut { .. }) => return Ok(Vec::new()),
            Err(WaitError::Probe(e)) => return Err(e.into()),
            Ok(()) | Err(WaitError::Failed { .. }) => {
                if std::time::Instant::now() >= deadline {
                    return Ok(engine.stack_objects(stack).await?.describe());
                }
            }
        }
    }
}

async fn remove_rest(engine: &dyn Swarm, o: &StackObjects) -> Result<(), EngineError> {
    for (id, _) in &o.networks {
        engine.remove(ObjectKind::Network, id).await?;
    }
    for (id, _) in &o.secrets {
        engine.remove(ObjectKind::Secret, id).await?;
    }
    for (id, _) in &o.configs {
        engine.remove(ObjectKind::Config, id).await?;
    }
    for v in &o.volumes {
        engine.remove(ObjectKind::Volume, v).await?;
    }
    Ok(())
}

/// A run's directory under the work dir, locked for the life of the run.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    pub domain: String,
    _lock: File,
}

impl RunDir {
    pub fn runs_root(work_dir: &Path) -> PathBuf {
        work_dir.join("runs")
    }

    /// Creates and locks `<work_dir>/runs/<domain>`; fails if another live run holds it.
    pub fn create(work_dir: &Path, domain: &str) -> Result<Self, TeardownError> {
        let path = Self::runs_root(work_dir).join(domain);
        let err = |source| TeardownError::RunDir {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(err)?;
        let lock = File::create(path.join("lock")).map_err(err)?;
        lock.try_lock().map_err(|e| {
            err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("another run holds this directory: {e:?}"),
            ))
        })?;
        Ok(Self {
            path,
            domain: domain.into(),
            _lock: lock,
        })
    }

    pub fn abra_dir(&self) -> PathBuf {
        self.path.join("abra")
    }
}

/// What `gc` did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GcReport {
    /// App domains whose stack was torn down.
    pub collected: Vec<String>,
    /// Runs still alive (left alone).
    pub alive: Vec<String>,
    /// Objects that could not be removed.
    pub leftovers: Vec<String>,
}

/// Removes what dead runs left: stacks of run directories whose lock is free, and cc-ci stacks
/// (matching `domain_suffix`) that have no run directory at all.
pub async fn gc(
    engine: &Engine,
    work_dir: &Path,
    domain_suffix: &str,
    timeout: Duration,
) -> Result<GcReport, TeardownError> {
    let mut report = GcReport::default();
    let root = RunDir::runs_root(work_dir);
    let mut known = std::collections::BTreeSet::new();
    // What to collect: its name in the report, its run directory (if it has one), its stack.
    let mut dead: Vec<(String, Option<PathBuf>, String)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let domain = entry.file_name().to_string_lossy().to_string();
            let stack = names::stack_name(&domain);
            known.insert(stack.clone());
            if !names::is_ci_stack(&stack, domain_suffix) {
                continue;
            }
            let lock_path = entry.path().join("lock");
            let is_dead = match File::options().write(true).open(&lock_path) {
                Ok(f) => f.try_lock().is_ok(),
                // No lock file: the run died before taking it, or the dir is a remnant.
                Err(_) => true,
            };
            if is_dead {
                dead.push((domain, Some(entry.path()), stack));
            } else {
                report.alive.push(domain);
            }
        }
    }
    let mut stacks = engine.stack_namespaces().await?;
    stacks.extend(
        engine
            .object_names()
            .await?
            .iter()
            .filter_map(|n| names::ci_stack_of_object(n, domain_suffix)),
    );
    stacks.sort();
    stacks.dedup();
    for stack in stacks {
        if !known.contains(&stack) && names::is_ci_stack(&stack, domain_suffix) {
            dead.push((stack.clone(), None, stack));
        }
    }
    for (name, dir, left) in teardown_all(engine, dead, timeout).await? {
        if left.is_empty()
            && let Some(dir) = dir
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        report.leftovers.extend(left);
        report.collected.push(name);
    }
    Ok(report)
}

/// Every stack of `dead` torn down at once (each waits out its own [`GC_QUIET`]: one after
/// another, gc, and with it the daemon's start-up, would take that long per dead run); the
/// results in the order of `dead`.
async fn teardown_all(
    engine: &Engine,
    dead: Vec<(String, Option<PathBuf>, String)>,
    timeout: Duration,
) -> Result<Vec<(String, Option<PathBuf>, Vec<String>)>, TeardownError> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (name, dir, stack)) in dead.into_iter().enumerate() {
        let engine = engine.clone();
        set.spawn(async move {
            let left = teardown_settled(&engine, &stack, timeout).await;
            (i, name, dir, left)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (i, name, dir, left) =
            joined.map_err(|e| TeardownError::Stuck(format!("a teardown task ended: {e}")))?;
        done.push((i, name, dir, left?));
    }
    done.sort_by_key(|d| d.0);
    Ok(done.into_iter().map(|(_, n, d, l)| (n, d, l)).collect())
}

/// `cc-ci teardown <domain>`: removes a kept (or stranded) deployment and its run directory.
pub async fn teardown_domain(
    engine: &Engine,
    work_dir: &Path,
    domain: &str,
    domain_suffix: &str,
    timeout: Duration,
) -> Result<Vec<String>, TeardownError> {
    let stack = names::stack_name(domain);
    if !names::is_ci_stack(&stack, domain_suffix) {
        return Err(TeardownError::NotOurs(domain.into()));
    }
    let dir = RunDir::runs_root(work_dir).join(domain);
    if let Ok(f) = File::options().write(true).open(dir.join("lock"))
        && f.try_lock().is_err()
    {
        return Err(TeardownError::Stuck(format!(
            "run {domain} is still running (its lock is held); stop it first"
        )));
    }
    let left = teardown_stack(engine, &stack, timeout).await?;
    if left.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_lock_is_exclusive_and_released_on_drop() {
        let work = tempfile::tempdir().unwrap();
        let a = RunDir::create(work.path(), "web-abcdef.ci.local").unwrap();
        assert!(RunDir::create(work.path(), "web-abcdef.ci.local").is_err());
        let f = File::options()
            .write(true)
            .open(a.path.join("lock"))
            .unwrap();
        assert!(
            f.try_lock().is_err(),
            "a live run's lock must not be takeable"
        );
        drop(a);
        assert!(f.try_lock().is_ok());
    }
}
