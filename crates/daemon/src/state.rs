//! The daemon's state, grouped by who owns each part: fixed settings, the store and the forge
//! client, the wake-ups between subsystems, the running runs (scheduler), the trigger and
//! report locks (intake, reporter), the HTTP limits, and the shutdown token. Behaviour lives
//! in the subsystem modules (`intake`, `scheduler`, `reporter`, `reconcile`, `start`); this
//! module only holds data and imports no subsystem, so no import circle can pass through it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, atomic::AtomicUsize};
use std::time::Duration;

use cc_ci_harness::hostenv::HostEnv;
use cc_ci_harness::redact::Redactor;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::forge::{Forge, ForgeError};
use crate::render::Links;
use crate::secrets::Secrets;
use crate::store::{Store, now};

/// Timing knobs that are not operator configuration (tests shorten them).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often the scheduler, intake and reporter look at the store without being woken
    /// (cancel requests from `cc-ci cancel`, retries that came due).
    pub tick: Duration,
    /// Tries per forge call, and the first wait between them (doubling).
    pub forge_attempts: u32,
    pub forge_backoff: Duration,
    /// After a forge call failed all its tries: first delay before the store-level retry,
    /// doubling per failure, capped at 10 minutes.
    pub retry_base: Duration,
    /// How often a running run's `progress.json` is looked at.
    pub progress_interval: Duration,
    /// Store-level report attempts of a run before reporting is given up (with a log line
    /// and the state shown by `cc-ci queue`).
    pub report_attempts: u32,
    /// Deadline of one `cc-ci gc`.
    pub gc_timeout: Duration,
    /// How long shutdown waits for the last forge reports.
    pub final_report_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            forge_attempts: 4,
            forge_backoff: Duration::from_millis(500),
            retry_base: Duration::from_secs(5),
            progress_interval: Duration::from_secs(1),
            // 5 s doubling, capped at 10 min: about two hours of trying.
            report_attempts: 16,
            gc_timeout: Duration::from_secs(900),
            final_report_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the database, run logs and reports live: `daemon.state_dir`, else systemd's
/// `STATE_DIRECTORY`, else `~/.local/state/cc-ci` (the environment as the edge read it).
pub fn state_dir(config: &Config, host: &HostEnv) -> PathBuf {
    if let Some(d) = &config.daemon.state_dir {
        return d.clone();
    }
    if let Some(d) = &host.state_directory {
        // systemd passes a colon-separated list when several StateDirectory= are set.
        let d = d.to_string_lossy();
        if let Some(first) = d.split(':').next().filter(|s| !s.is_empty()) {
            return PathBuf::from(first);
        }
    }
    let home = host.home.clone().unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/cc-ci")
}

/// The folder of run `id`: its log and the report files `cc-ci run` writes.
pub fn run_dir(state_dir: &Path, id: i64) -> PathBuf {
    state_dir.join("runs").join(id.to_string())
}

/// Marks a response that streams for as long as a run goes (`/runs/{id}/log?follow`, a run
/// page's live events): its connection is exempt from the connection deadline (followers have
/// their own limit). Here, so that `http` (which applies it) and `pages` both reach it.
#[derive(Clone, Copy, Debug)]
pub struct Streaming;

/// The name of a run's log in its folder: the child's output and the daemon's notes about it.
pub const RUN_LOG: &str = "log.txt";

pub fn database_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cc-ci.sqlite")
}

/// What does not change while the daemon runs.
pub(crate) struct Settings {
    pub config: Config,
    /// The config file, passed on to every `cc-ci run` / `cc-ci gc` child.
    pub config_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The program run as `<exe> run ...` and `<exe> gc ...`.
    pub exe: PathBuf,
    pub secrets: Secrets,
    /// Masks the secrets in every text the daemon writes or serves (run logs, pages).
    pub redactor: Redactor,
    /// The process environment, as the edge read it (the start-up doctor, reuse and drift
    /// resolve inputs as a run would).
    pub host: HostEnv,
    pub tuning: Tuning,
}

/// Wake-ups between subsystems (each loop also looks on its own every `tuning.tick`).
pub(crate) struct Wake {
    pub scheduler: Notify,
    pub reporter: Notify,
    pub intake: Notify,
    /// Bumped on every log write and run state change: wakes `/runs/{id}/log?follow`.
    pub log_epoch: watch::Sender<u64>,
}

impl Wake {
    fn new() -> Self {
        Self {
            scheduler: Notify::new(),
            reporter: Notify::new(),
            intake: Notify::new(),
            log_epoch: watch::channel(0).0,
        }
    }

    pub fn log_changed(&self) {
        self.log_epoch.send_modify(|e| *e = e.wrapping_add(1));
    }
}

/// Why a running run is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// Superseded, pull request closed, or `cc-ci cancel`: verdict `cancelled`.
    Requested(String),
    /// The run exceeded `run_timeout_secs`: verdict `error`.
    Deadline,
    /// The daemon is stopping: re-queued (or `error` once re-queued too often).
    Shutdown,
}

/// The runs this daemon supervises (owned by the scheduler).
#[derive(Default)]
pub(crate) struct Runs {
    /// Per running run, the channel that tells its supervisor to stop.
    pub active: Mutex<HashMap<i64, watch::Sender<Option<Cancel>>>>,
    /// The supervisor tasks: shutdown waits on them.
    pub tasks: TaskTracker,
    /// The start-up gc has finished: runs may start.
    pub gc_done: AtomicBool,
}

impl Runs {
    pub fn count(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(usize::MAX)
    }

    /// Ask every running run to stop (a cancel already asked for is kept).
    pub fn cancel_all(&self, why: &Cancel) {
        if let Ok(active) = self.active.lock() {
            for tx in active.values() {
                ask_to_stop(tx, why);
            }
        }
    }

    pub fn cancel(&self, id: i64, why: &Cancel) {
        if let Ok(active) = self.active.lock()
            && let Some(tx) = active.get(&id)
        {
            ask_to_stop(tx, why);
        }
    }
}

fn ask_to_stop(tx: &watch::Sender<Option<Cancel>>, why: &Cancel) {
    tx.send_if_modified(|c| {
        if c.is_none() {
            *c = Some(why.clone());
            true
        } else {
            false
        }
    });
}

/// What limits the HTTP side (owned by `http` and `pages`).
pub(crate) struct Limits {
    /// Open connections beyond this many are answered 503 at once.
    pub connections: Arc<Semaphore>,
    /// `/runs/{id}/log?follow` streams beyond this many are answered 503.
    pub log_followers: Arc<Semaphore>,
    /// Bytes of webhook bodies that may be held in memory at once, over all requests.
    pub body_budget: BodyBudget,
}

/// Webhook bodies of the largest size that fit in memory at once: beyond that budget a
/// request is answered 503 instead of growing the daemon (small bodies, the usual case, take
/// little of it; slow senders hold only what they have sent).
const BODY_BUDGET_BODIES: usize = 4;
/// ... and never less than this, so a small `max_body_bytes` does not turn many ordinary
/// deliveries at once into 503s (Gitea never retries a delivery).
const BODY_BUDGET_MIN: usize = 64 << 20;

fn body_budget_bytes(max_body_bytes: usize) -> usize {
    max_body_bytes
        .saturating_mul(BODY_BUDGET_BODIES)
        .max(BODY_BUDGET_MIN)
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(config.daemon.max_connections)),
            log_followers: Arc::new(Semaphore::new(config.daemon.max_log_followers)),
            body_budget: BodyBudget::new(body_budget_bytes(config.daemon.max_body_bytes)),
        }
    }
}

/// Bytes of request bodies the daemon holds at once, shared by all requests.
pub(crate) struct BodyBudget {
    left: AtomicUsize,
}

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            left: AtomicUsize::new(bytes),
        }
    }

    pub(crate) fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(n))
            .is_ok()
    }

    pub(crate) fn give(&self, n: usize) {
        self.left.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The daemon's state, shared by its tasks behind an `Arc`.
pub(crate) struct State {
    pub settings: Settings,
    pub store: Store,
    pub forge: Arc<dyn Forge>,
    pub wake: Wake,
    pub runs: Runs,
    pub limits: Limits,
    /// One trigger decision at a time (webhook requests and the intake loop share triggers).
    pub intake_lock: tokio::sync::Mutex<()>,
    /// One forge sync at a time (a run's comment must be created once).
    pub sync_lock: tokio::sync::Mutex<()>,
    /// The login of the token's user, once the forge has told it: its comments come back to
    /// the hook and are never triggers.
    own_login: Mutex<Option<String>>,
    /// Cancelled when the daemon starts stopping: no new runs or requests.
    pub shutdown: CancellationToken,
}

impl State {
    pub fn new(settings: Settings, store: Store, forge: Arc<dyn Forge>) -> Self {
        let limits = Limits::new(&settings.config);
        Self {
            settings,
            store,
            forge,
            wake: Wake::new(),
            runs: Runs::default(),
            limits,
            intake_lock: tokio::sync::Mutex::new(()),
            sync_lock: tokio::sync::Mutex::new(()),
            own_login: Mutex::new(None),
            shutdown: CancellationToken::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.settings.config
    }

    pub fn tuning(&self) -> &Tuning {
        &self.settings.tuning
    }

    pub fn state_dir(&self) -> &Path {
        &self.settings.state_dir
    }

    /// When the store-level retry after `failures` failed forge calls is due.
    pub fn backoff_at(&self, failures: i64) -> i64 {
        let base = self.tuning().retry_base.as_secs().max(1) as i64;
        let exp = failures.clamp(0, 10) as u32;
        now() + (base.saturating_mul(1 << exp)).min(600)
    }

    pub fn links(&self, id: i64) -> Links {
        Links::for_run(&self.config().daemon.public_url, id)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Wait for `notify`, the next tick, or shutdown, whichever comes first.
    pub async fn wait_tick(&self, notify: &Notify) {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(self.tuning().tick) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    pub fn own_login(&self) -> Option<String> {
        self.own_login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The bot's login, asked of the forge the first time it is needed.
    pub async fn ensure_own_login(&self) -> Result<String, ForgeError> {
        if let Some(l) = self.own_login() {
            return Ok(l);
        }
        let l = self.forge.own_login().await?;
        *self.own_login.lock().unwrap_or_else(|p| p.into_inner()) = Some(l.clone());
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_config_then_systemd_then_home() {
        let mut config = Config::default();
        let host = HostEnv {
            state_directory: Some("/var/lib/cc-ci:/var/lib/other".into()),
            home: Some("/home/ci".into()),
            ..HostEnv::default()
        };
        assert_eq!(state_dir(&config, &host), PathBuf::from("/var/lib/cc-ci"));
        let no_systemd = HostEnv {
            state_directory: None,
            ..host.clone()
        };
        assert_eq!(
            state_dir(&config, &no_systemd),
            PathBuf::from("/home/ci/.local/state/cc-ci")
        );
        config.daemon.state_dir = Some("/srv/ci".into());
        assert_eq!(state_dir(&config, &host), PathBuf::from("/srv/ci"));
    }

    #[test]
    fn body_budget_has_a_floor_and_scales() {
        assert_eq!(super::body_budget_bytes(4096), 64 << 20);
        assert_eq!(super::body_budget_bytes(16 << 20), 64 << 20);
        assert_eq!(super::body_budget_bytes(32 << 20), 128 << 20);
        assert_eq!(super::body_budget_bytes(usize::MAX), usize::MAX);
    }
}
