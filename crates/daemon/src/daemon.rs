//! The daemon's moving parts: start-up (state, secrets, listener, reconciliation), the
//! scheduler that starts and cancels runs, the intake that turns triggers into runs, the
//! reporter that brings the forge up to date with the store, the poller, and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cc_ci_harness::config::Config;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::DaemonError;
use crate::forge::{CommitStatus, Forge, ForgeError};
use crate::render::{self, Links};
use crate::runner::{self, Cancel};
use crate::secrets::Secrets;
use crate::store::{Ingested, NewTrigger, RunState, RunVerdict, Store, TriggerState, now};
use crate::systemd::{self, StdListener};
use crate::trigger::{self, Command, CommentTrigger};

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

/// How `cc-ci serve` was started (everything else comes from the config file).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The config file, passed on to every `cc-ci run` / `cc-ci gc` child.
    pub config_path: Option<PathBuf>,
    /// `--listen`: overrides `daemon.listen` (ignored under socket activation).
    pub listen: Option<String>,
    /// The program run as `<exe> run ...` and `<exe> gc ...`; default: this executable.
    pub run_exe: Option<PathBuf>,
    pub tuning: Tuning,
}

/// Where the database, run logs and reports live.
pub fn state_dir(config: &Config) -> PathBuf {
    if let Some(d) = &config.daemon.state_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd passes a colon-separated list when several StateDirectory= are set.
        let d = d.to_string_lossy();
        if let Some(first) = d.split(':').next().filter(|s| !s.is_empty()) {
            return PathBuf::from(first);
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/cc-ci")
}

pub fn database_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cc-ci.sqlite")
}

pub(crate) struct Shared {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub exe: PathBuf,
    pub store: Store,
    pub forge: Forge,
    pub secrets: Secrets,
    pub tuning: Tuning,
    pub wake_scheduler: Notify,
    pub wake_reporter: Notify,
    pub wake_intake: Notify,
    /// Bumped on every log write and run state change: wakes `/runs/{id}/log?follow`.
    pub log_epoch: watch::Sender<u64>,
    pub active: Mutex<HashMap<i64, watch::Sender<Option<Cancel>>>>,
    pub active_count: watch::Sender<usize>,
    pub shutdown: watch::Sender<bool>,
    pub gc_done: AtomicBool,
    /// One trigger decision at a time (webhook requests and the intake loop share triggers).
    pub intake_lock: tokio::sync::Mutex<()>,
    /// One forge sync at a time (a run's comment must be created once).
    pub sync_lock: tokio::sync::Mutex<()>,
    /// The login of the token's user, once the forge has told it: its comments come back to
    /// the hook and are never triggers.
    pub own_login: Mutex<Option<String>>,
    /// Open connections beyond this many are answered 503 at once.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// `/runs/{id}/log?follow` streams beyond this many are answered 503.
    pub log_followers: Arc<tokio::sync::Semaphore>,
    /// Bytes of webhook bodies that may be held in memory at once, over all requests.
    pub body_budget: crate::http::BodyBudget,
}

impl Shared {
    fn backoff_at(&self, failures: i64) -> i64 {
        let base = self.tuning.retry_base.as_secs().max(1) as i64;
        let exp = failures.clamp(0, 10) as u32;
        now() + (base.saturating_mul(1 << exp)).min(600)
    }

    fn links(&self, id: i64) -> Links {
        Links::for_run(&self.config.daemon.public_url, id)
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
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

#[cfg(test)]
mod budget_tests {
    #[test]
    fn body_budget_has_a_floor_and_scales() {
        assert_eq!(super::body_budget_bytes(4096), 64 << 20);
        assert_eq!(super::body_budget_bytes(16 << 20), 64 << 20);
        assert_eq!(super::body_budget_bytes(32 << 20), 128 << 20);
        assert_eq!(super::body_budget_bytes(usize::MAX), usize::MAX);
    }
}

/// A running daemon. `serve` wraps it with signal handling; tests drive it directly.
pub struct Daemon {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Open the state, take the listener (socket activation, else `--listen`/`daemon.listen`),
    /// reconcile runs a previous daemon left `running`, start every task and tell systemd
    /// READY=1.
    pub async fn start(config: Config, opts: ServeOptions) -> Result<Self, DaemonError> {
        let state_dir = state_dir(&config);
        std::fs::create_dir_all(state_dir.join("runs")).map_err(|source| {
            DaemonError::StateDir {
                path: state_dir.clone(),
                source,
            }
        })?;
        let secrets = Secrets::from_env(&config.forge)?;
        let Some(token) = secrets.token.clone() else {
            return Err(DaemonError::Secret {
                name: crate::secrets::TOKEN_CREDENTIAL,
                problem: "no forge token: provide it as the systemd credential `forge-token` \
                          or set `forge.token_file`"
                    .into(),
            });
        };
        let polling = config.daemon.poll_interval_secs > 0 && !config.forge.poll_repos.is_empty();
        if secrets.webhook_secret.is_none() {
            if !polling {
                return Err(DaemonError::Config(
                    "no way to receive triggers: set a webhook secret (systemd credential \
                     `webhook-secret` or `forge.webhook_secret_file`) or enable polling \
                     (`daemon.poll_interval_secs` and `forge.poll_repos`)"
                        .into(),
                ));
            }
            tracing::warn!(
                "no webhook secret: POST /hooks/gitea rejects every delivery; polling only"
            );
        }
        for w in crate::cli::config_warnings(&config) {
            tracing::warn!("{w}");
        }
        let exe = match opts.run_exe.clone() {
            Some(p) => p,
            None => std::env::current_exe()
                .map_err(|e| DaemonError::io("finding the cc-ci executable", e))?,
        };
        let store = Store::open(&database_path(&state_dir))?;
        let forge = Forge::new(
            &config.forge.url,
            &token,
            opts.tuning.forge_attempts,
            opts.tuning.forge_backoff,
        )?;

        let listener = match systemd::listener_from_systemd()? {
            Some(l) => {
                tracing::info!("listening on the socket passed by systemd");
                l
            }
            None => bind(opts.listen.as_deref().unwrap_or(&config.daemon.listen))?,
        };

        let (log_epoch, _) = watch::channel(0u64);
        let (active_count, _) = watch::channel(0usize);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config_path: opts.config_path.clone(),
            state_dir,
            exe,
            store,
            forge,
            secrets,
            tuning: opts.tuning.clone(),
            wake_scheduler: Notify::new(),
            wake_reporter: Notify::new(),
            wake_intake: Notify::new(),
            log_epoch,
            active: Mutex::new(HashMap::new()),
            active_count,
            shutdown,
            gc_done: AtomicBool::new(false),
            intake_lock: tokio::sync::Mutex::new(()),
            sync_lock: tokio::sync::Mutex::new(()),
            own_login: Mutex::new(None),
            connections: Arc::new(tokio::sync::Semaphore::new(config.daemon.max_connections)),
            log_followers: Arc::new(tokio::sync::Semaphore::new(config.daemon.max_log_followers)),
            body_budget: crate::http::BodyBudget::new(body_budget_bytes(
                config.daemon.max_body_bytes,
            )),
            config,
        });

        reconcile_interrupted(&shared)?;

        let (local_addr, http) = crate::http::start(shared.clone(), listener)?;
        let mut tasks = vec![http];
        tasks.push(tokio::spawn(scheduler(shared.clone())));
        tasks.push(tokio::spawn(intake_loop(shared.clone())));
        tasks.push(tokio::spawn(reporter_loop(shared.clone())));
        if polling {
            tasks.push(tokio::spawn(crate::poll::poll_loop(shared.clone())));
        }
        let login_shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut shutdown = login_shared.shutdown.subscribe();
            let mut delay = login_shared.tuning.tick;
            loop {
                match login_shared.ensure_own_login().await {
                    Ok(login) => {
                        tracing::info!(login = %login, "forge account of cc-ci");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read cc-ci's own forge account yet; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(300));
            }
        }));
        if let Some(every) = systemd::watchdog_interval() {
            tasks.push(tokio::spawn(watchdog_loop(shared.clone(), every)));
        }
        // The host checks of `cc-ci doctor`, logged when they fail (the daemon starts anyway).
        let doctor_config = shared.config.clone();
        tasks.push(tokio::spawn(async move {
            for c in cc_ci_harness::doctor::run(
                &doctor_config,
                None,
                &cc_ci_harness::hostenv::HostEnv::from_process(),
            )
            .await
            {
                if !c.ok {
                    tracing::warn!(check = %c.name, "host check failed: {}", c.line());
                }
            }
        }));
        let gc_shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            runner::run_gc(&gc_shared, None).await;
            gc_shared.gc_done.store(true, Ordering::SeqCst);
            gc_shared.wake_scheduler.notify_one();
        }));
        let (running, queued) = shared.store.counts()?;
        systemd::ready(&status_text(running, queued));
        tracing::info!(
            state_dir = %shared.state_dir.display(),
            addr = ?local_addr,
            queued,
            "cc-ci daemon ready"
        );
        Ok(Self {
            shared,
            local_addr,
            tasks,
        })
    }

    /// The bound TCP address (None for a unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    /// Graceful stop: no new runs or requests; running runs get `cancel_grace_secs` to finish,
    /// then are cancelled (SIGTERM, grace, SIGKILL + gc) and re-queued; last reports are sent.
    pub async fn shutdown(self) {
        let shared = self.shared.clone();
        shared.shutdown.send_replace(true);
        let running = shared.active.lock().map(|a| a.len()).unwrap_or(0);
        systemd::stopping(&format!("stopping: {running} run(s) still running"));
        tracing::info!(running, "stopping");
        let grace = Duration::from_secs(shared.config.daemon.cancel_grace_secs);
        let mut count = shared.active_count.subscribe();
        if tokio::time::timeout(grace, count.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::info!("grace period over: cancelling the running runs");
            if let Ok(active) = shared.active.lock() {
                for tx in active.values() {
                    tx.send_if_modified(|c| {
                        if c.is_none() {
                            *c = Some(Cancel::Shutdown);
                            true
                        } else {
                            false
                        }
                    });
                }
            }
            let _ = count.wait_for(|n| *n == 0).await;
        }
        let _ = tokio::time::timeout(shared.tuning.final_report_timeout, sync_due(&shared)).await;
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("stopped");
    }
}

fn bind(addr: &str) -> Result<StdListener, DaemonError> {
    let err = |source| DaemonError::Listen {
        addr: addr.to_string(),
        source,
    };
    if addr.contains('/') {
        let path = Path::new(addr);
        // A socket file left by an earlier daemon would make bind fail.
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path).map_err(err)?;
            }
        }
        let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
        Ok(StdListener::Unix(l))
    } else {
        let l = std::net::TcpListener::bind(addr).map_err(err)?;
        Ok(StdListener::Tcp(l))
    }
}

pub(crate) fn status_text(running: usize, queued: usize) -> String {
    if running == 0 && queued == 0 {
        "idle".into()
    } else {
        format!("running {running}, queued {queued}")
    }
}

/// Runs a previous daemon left `running` died with it: re-queue once, else report an error.
/// Their deployments are removed by the start-up gc, which runs before any run starts.
fn reconcile_interrupted(shared: &Arc<Shared>) -> Result<(), DaemonError> {
    for run in shared.store.runs_in_state(RunState::Running)? {
        let dir = runner::run_dir(&shared.state_dir, run.id);
        let note = |text: &str| {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("log.txt"))
            {
                let _ = writeln!(f, "cc-ci: {text}");
            }
        };
        if run.requeues < shared.config.daemon.max_requeues {
            note("the daemon stopped during this run; it was torn down and re-queued");
            shared.store.requeue_run(run.id)?;
            tracing::warn!(run_id = run.id, recipe = %render::recipe_of(&run.repo), pr = run.pr, "run interrupted by a daemon stop: re-queued");
        } else {
            let reason =
                "the daemon stopped during this run (it was torn down; re-queued too often)";
            note(reason);
            shared
                .store
                .finish_run(run.id, RunVerdict::Error, Some(reason), None)?;
            tracing::error!(run_id = run.id, recipe = %render::recipe_of(&run.repo), pr = run.pr, "run interrupted by a daemon stop: reported as error");
        }
    }
    Ok(())
}

async fn wait_tick(shared: &Shared, notify: &Notify, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = notify.notified() => {}
        _ = tokio::time::sleep(shared.tuning.tick) => {}
        _ = shutdown.changed() => {}
    }
}

async fn scheduler(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut last_status = String::new();
    loop {
        if shared.shutting_down() {
            return;
        }
        if let Err(e) = schedule_once(&shared) {
            tracing::error!(error = %e, "scheduler");
        }
        if let Ok((running, queued)) = shared.store.counts() {
            let text = status_text(running, queued);
            if text != last_status {
                systemd::status(&text);
                last_status = text;
            }
        }
        wait_tick(&shared, &shared.wake_scheduler, &mut shutdown).await;
    }
}

fn schedule_once(shared: &Arc<Shared>) -> Result<(), DaemonError> {
    for (id, state, reason) in shared.store.cancel_requests()? {
        match state {
            RunState::Queued => {
                shared
                    .store
                    .finish_run(id, RunVerdict::Cancelled, Some(&reason), None)?;
                tracing::info!(run_id = id, reason = %reason, "queued run cancelled");
                shared.wake_reporter.notify_one();
                shared.log_epoch.send_modify(|e| *e = e.wrapping_add(1));
            }
            RunState::Running => {
                if let Ok(active) = shared.active.lock()
                    && let Some(tx) = active.get(&id)
                {
                    tx.send_if_modified(|c| {
                        if c.is_none() {
                            *c = Some(Cancel::Requested(reason.clone()));
                            true
                        } else {
                            false
                        }
                    });
                }
            }
            RunState::Done => {}
        }
    }
    if !shared.gc_done.load(Ordering::SeqCst) {
        return Ok(());
    }
    loop {
        let running = shared.active.lock().map(|a| a.len()).unwrap_or(usize::MAX);
        if running >= shared.config.daemon.concurrency || shared.shutting_down() {
            return Ok(());
        }
        let Some(run) = shared.store.claim_next_queued()? else {
            return Ok(());
        };
        let (tx, rx) = watch::channel(None);
        if let Ok(mut active) = shared.active.lock() {
            active.insert(run.id, tx);
            shared.active_count.send_replace(active.len());
        }
        shared.wake_reporter.notify_one();
        let span = tracing::info_span!("run", run_id = run.id, recipe = %render::recipe_of(&run.repo), pr = run.pr);
        let s = shared.clone();
        let id = run.id;
        tokio::spawn(
            async move {
                runner::supervise(s.clone(), run, rx).await;
                if let Ok(mut active) = s.active.lock() {
                    active.remove(&id);
                    s.active_count.send_replace(active.len());
                }
                s.log_epoch.send_modify(|e| *e = e.wrapping_add(1));
                s.wake_scheduler.notify_one();
            }
            .instrument(span),
        );
    }
}

/// The outcome of deciding on one trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TriggerOutcome {
    Queued(i64),
    Unauthorised,
    BadStages,
    Dropped(String),
    /// The forge could not be asked; the trigger stays and is retried.
    Later(String),
}

/// Turn a comment into a stored trigger (dedup by delivery and comment), or say why not.
pub(crate) enum IngestOutcome {
    RepoNotAllowed,
    Duplicate(&'static str),
    Stored(i64),
}

pub(crate) fn ingest(
    shared: &Shared,
    source: &str,
    delivery_id: Option<&str>,
    t: &CommentTrigger,
) -> Result<IngestOutcome, DaemonError> {
    if !trigger::repo_allowed(&shared.config.forge.repo_allowlist, &t.repo) {
        return Ok(IngestOutcome::RepoNotAllowed);
    }
    let (stages, unknown) = match &t.command {
        Command::Run { stages } => (stages.clone(), vec![]),
        Command::BadStages { unknown } => (vec![], unknown.clone()),
    };
    let r = shared.store.ingest_trigger(&NewTrigger {
        source,
        delivery_id,
        repo: &t.repo,
        pr: t.pr,
        comment_id: t.comment_id,
        user: &t.user,
        stages: &stages,
        unknown_stages: &unknown,
    })?;
    Ok(match r {
        Ingested::DuplicateDelivery => IngestOutcome::Duplicate("delivery already processed"),
        Ingested::DuplicateComment => IngestOutcome::Duplicate("comment already processed"),
        Ingested::Stored(id) => {
            tracing::info!(trigger = id, repo = %t.repo, pr = t.pr, user = %t.user, source, "trigger received");
            IngestOutcome::Stored(id)
        }
    })
}

async fn authorise(shared: &Shared, user: &str) -> Result<bool, ForgeError> {
    let f = &shared.config.forge;
    if trigger::user_allowed(&f.user_allowlist, user) {
        return Ok(true);
    }
    for org in &f.org_allowlist {
        if !trigger::is_valid_login(org) {
            continue;
        }
        match shared.forge.is_org_member(org, user).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) if matches!(e.status(), Some(s) if s < 500 && s != 429) => {
                tracing::warn!(org = %org, error = %e, "membership check refused; treating as not a member");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Refusal replies to one user on one pull request: at most one per this many seconds.
const REPLY_QUIET_SECS: i64 = 3600;

/// Decide on one trigger: authorise, read the pull request's head, queue the run (or reply).
pub(crate) async fn process_trigger(
    shared: &Arc<Shared>,
    id: i64,
) -> Result<TriggerOutcome, DaemonError> {
    let _guard = shared.intake_lock.lock().await;
    let Some(mut t) = shared.store.get_trigger(id)? else {
        return Ok(TriggerOutcome::Dropped("unknown trigger".into()));
    };
    match t.state {
        TriggerState::Accepted => return Ok(TriggerOutcome::Queued(t.run_id.unwrap_or(0))),
        TriggerState::Dropped => return Ok(TriggerOutcome::Dropped("dropped earlier".into())),
        TriggerState::Rejected if t.replied || t.reply.is_none() => {
            return Ok(if t.unknown_stages.is_empty() {
                TriggerOutcome::Unauthorised
            } else {
                TriggerOutcome::BadStages
            });
        }
        _ => {}
    }
    let later = |e: &dyn std::fmt::Display, t: &crate::store::TriggerRow| {
        let msg = e.to_string();
        tracing::warn!(trigger = t.id, repo = %t.repo, pr = t.pr, error = %msg, "trigger: forge unavailable, will retry");
        let _ = shared
            .store
            .trigger_retry_later(t.id, &msg, shared.backoff_at(t.attempts));
        TriggerOutcome::Later(msg)
    };
    if t.state == TriggerState::New {
        // cc-ci's own comments never start anything (a reply quoting a `!testme` included).
        match shared.ensure_own_login().await {
            Ok(own) if own.eq_ignore_ascii_case(&t.user) => {
                shared
                    .store
                    .drop_trigger(t.id, "a comment by cc-ci itself")?;
                return Ok(TriggerOutcome::Dropped("a comment by cc-ci itself".into()));
            }
            Ok(_) => {}
            // A token without the `read:user` scope cannot read its own account: go on
            // without (the bot's replies never hold a `!testme` line), rather than hold every
            // trigger back.
            Err(e)
                if e.status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 429) =>
            {
                tracing::warn!(error = %e, "cannot read cc-ci's own forge account (give the token the read:user scope); its own comments are recognised by their content only");
            }
            Err(e) => return Ok(later(&e, &t)),
        }
    }
    if t.authorised.is_none() {
        match authorise(shared, &t.user).await {
            Ok(ok) => {
                shared.store.set_trigger_authorised(t.id, ok)?;
                t.authorised = Some(ok);
            }
            Err(e) => return Ok(later(&e, &t)),
        }
    }
    if t.state == TriggerState::New {
        // One refusal reply per user and pull request an hour: a refused user repeating the
        // command must not make cc-ci fill the pull request with replies.
        let reply = |text: String| -> Result<Option<String>, DaemonError> {
            let recent =
                shared
                    .store
                    .replied_since(&t.repo, t.pr, &t.user, now() - REPLY_QUIET_SECS)?;
            Ok((!recent).then_some(text))
        };
        if t.authorised == Some(false) {
            tracing::info!(trigger = t.id, repo = %t.repo, pr = t.pr, user = %t.user, "trigger refused: user not authorised");
            let text = reply(render::unauthorised_reply(&t.user))?;
            shared.store.reject_trigger(t.id, text.as_deref())?;
        } else if !t.unknown_stages.is_empty() {
            let text = reply(render::bad_stages_reply(&t.user, &t.unknown_stages))?;
            shared.store.reject_trigger(t.id, text.as_deref())?;
        }
    }
    let Some(t) = shared.store.get_trigger(id)? else {
        return Ok(TriggerOutcome::Dropped("unknown trigger".into()));
    };
    if t.state == TriggerState::Rejected {
        let outcome = if t.unknown_stages.is_empty() {
            TriggerOutcome::Unauthorised
        } else {
            TriggerOutcome::BadStages
        };
        if let Some(reply) = &t.reply
            && !t.replied
        {
            match shared.forge.create_comment(&t.repo, t.pr, reply).await {
                Ok(_) => shared.store.trigger_replied(&t)?,
                Err(e) => {
                    later(&e, &t);
                }
            }
        }
        return Ok(outcome);
    }
    let pr = match shared.forge.pull_request(&t.repo, t.pr).await {
        Ok(pr) => pr,
        Err(e) if e.status() == Some(404) => {
            shared.store.drop_trigger(t.id, "pull request not found")?;
            return Ok(TriggerOutcome::Dropped("pull request not found".into()));
        }
        Err(e) => return Ok(later(&e, &t)),
    };
    if pr.state != "open" {
        shared
            .store
            .drop_trigger(t.id, "pull request is not open")?;
        return Ok(TriggerOutcome::Dropped("pull request is not open".into()));
    }
    if !trigger::is_valid_sha(&pr.head.sha) {
        shared
            .store
            .drop_trigger(t.id, "pull request head is not a commit hash")?;
        return Ok(TriggerOutcome::Dropped(
            "pull request head is not a commit hash".into(),
        ));
    }
    let enq = shared.store.accept_trigger(&t, &pr.head.sha)?;
    let _ = shared.store.update_pr_head(&t.repo, t.pr, &pr.head.sha);
    tracing::info!(run_id = enq.run_id, recipe = %render::recipe_of(&t.repo), pr = t.pr, user = %t.user,
        superseded = enq.cancelled_queued.len() + enq.cancel_running.len(), "run queued");
    // The pending status goes out before the run can start, so the forge sees pending first.
    {
        let _g = shared.sync_lock.lock().await;
        sync_one(shared, enq.run_id).await;
    }
    shared.wake_scheduler.notify_one();
    shared.wake_reporter.notify_one();
    Ok(TriggerOutcome::Queued(enq.run_id))
}

/// A `pull_request` `synchronized` or `closed` delivery. Deliveries arrive out of order and
/// replays resend old payloads, so the payload's head is not believed: the pull request is
/// read from the API, and only runs testing another head than its current one are superseded
/// (all of them when it is no longer open). Retried with backoff while the forge fails; a
/// run whose pull request moved on is also stopped before it starts (runner), so a lost check
/// costs at most one run of an outdated commit.
pub(crate) async fn verify_pull_update(shared: Arc<Shared>, repo: String, pr: i64) {
    let mut delay = shared.tuning.retry_base;
    let mut shutdown = shared.shutdown.subscribe();
    for _ in 0..8 {
        match shared.forge.pull_request(&repo, pr).await {
            Ok(p) => {
                let open = p.state == "open";
                if open && !trigger::is_valid_sha(&p.head.sha) {
                    return;
                }
                let _ = shared.store.update_pr_head(&repo, pr, &p.head.sha);
                let (keep, reason) = if open {
                    (
                        Some(p.head.sha.as_str()),
                        format!(
                            "new commits were pushed (head is now {})",
                            p.head.sha.get(..10).unwrap_or(&p.head.sha)
                        ),
                    )
                } else {
                    (None, "the pull request was closed".to_string())
                };
                match shared.store.supersede_pr(&repo, pr, keep, &reason) {
                    Ok(n) if n > 0 => {
                        tracing::info!(repo = %repo, pr, superseded = n, "{reason}");
                        shared.wake_scheduler.notify_one();
                        shared.wake_reporter.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(repo = %repo, pr, error = %e, "superseding runs"),
                }
                return;
            }
            Err(e) if e.status() == Some(404) => return,
            Err(e) => {
                tracing::warn!(repo = %repo, pr, error = %e, "cannot read the pull request after a push event; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(300));
    }
}

async fn intake_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if shared.shutting_down() {
            return;
        }
        match shared.store.due_triggers(now()) {
            Ok(due) => {
                for t in due {
                    if let Err(e) = process_trigger(&shared, t.id).await {
                        tracing::error!(trigger = t.id, error = %e, "trigger");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "intake"),
        }
        wait_tick(&shared, &shared.wake_intake, &mut shutdown).await;
    }
}

async fn reporter_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        sync_due(&shared).await;
        if shared.shutting_down() {
            // Shutdown does the final flush itself once the runs have stopped.
            let _ = shutdown.changed().await;
            continue;
        }
        wait_tick(&shared, &shared.wake_reporter, &mut shutdown).await;
    }
}

/// Bring the forge up to date for every run whose view changed and whose retry is due.
pub(crate) async fn sync_due(shared: &Arc<Shared>) {
    let due = match shared.store.unsynced_runs(now()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "reporter");
            return;
        }
    };
    for run in due {
        let _g = shared.sync_lock.lock().await;
        sync_one(shared, run.id).await;
    }
}

/// Sync one run (caller holds `sync_lock`); failures are recorded for a later retry.
async fn sync_one(shared: &Arc<Shared>, id: i64) {
    let run = match shared.store.get_run(id) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(run_id = id, error = %e, "reporter");
            return;
        }
    };
    if run.version <= run.synced_version {
        return;
    }
    match sync_run(shared, &run).await {
        Ok(()) => {
            let _ = shared.store.sync_succeeded(id, run.version);
        }
        Err(e) => {
            let give_up = run.sync_failures + 1 >= i64::from(shared.tuning.report_attempts.max(1));
            let error = e.to_string();
            if give_up {
                tracing::error!(run_id = id, recipe = %render::recipe_of(&run.repo), pr = run.pr, error = %error,
                    failures = run.sync_failures + 1,
                    "reporting to the forge failed too often: given up; `cc-ci queue` lists the run as undelivered");
            } else {
                tracing::warn!(run_id = id, recipe = %render::recipe_of(&run.repo), pr = run.pr, error = %error,
                    "reporting to the forge failed; the result is kept and will be reported later");
            }
            let _ =
                shared
                    .store
                    .sync_failed(id, shared.backoff_at(run.sync_failures), &error, give_up);
        }
    }
}

fn body_hash(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// Post the commit status and create or edit the run's comment, each only when it changed.
async fn sync_run(shared: &Arc<Shared>, run: &crate::store::RunRow) -> Result<(), DaemonError> {
    // Where the repository lives now: a redirect the forge answered for this run (or any
    // other) moved it; the run keeps reporting there, also after a restart.
    let known = run.forge_repo.as_deref().unwrap_or(&run.repo);
    let result = sync_run_at(shared, run, known).await;
    let now_at = shared.forge.current_name(known);
    if now_at != known {
        shared.store.set_forge_repo(run.id, &now_at)?;
    }
    result
}

async fn sync_run_at(
    shared: &Arc<Shared>,
    run: &crate::store::RunRow,
    repo: &str,
) -> Result<(), DaemonError> {
    let links = shared.links(run.id);
    let (state, description) = render::status(run);
    let key = format!("{}|{description}", state.as_str());
    if run.posted_status.as_deref() != Some(&key) {
        // A newer run on the same commit owns the status context; an older run's late report
        // must not overwrite it.
        if shared.store.newer_run_for_sha(run)?.is_none() {
            shared
                .forge
                .post_status(
                    repo,
                    &run.head_sha,
                    &CommitStatus {
                        state,
                        target_url: links.run_url.clone(),
                        description,
                        context: shared.config.forge.status_context.clone(),
                    },
                )
                .await?;
        }
        shared.store.set_posted_status(run.id, &key)?;
        if let (RunState::Done, Some(end)) = (run.state, run.finished_at) {
            crate::metrics::report_posted(end);
        }
    }
    let dir = runner::run_dir(&shared.state_dir, run.id);
    let report = runner::read_report(&dir);
    let progress = runner::read_progress(&dir);
    let tail = if run.state == RunState::Done && report.is_none() {
        std::fs::read(dir.join("log.txt"))
            .ok()
            .map(|b| render::tail_lines(&String::from_utf8_lossy(&b), 15))
    } else {
        None
    };
    let body = render::comment(
        run,
        report.as_ref(),
        progress.as_deref(),
        tail.as_deref(),
        &links,
    );
    let hash = body_hash(&body);
    if run.posted_comment_hash.as_deref() != Some(&hash) {
        match run.comment_id {
            Some(cid) => match shared.forge.edit_comment(repo, cid, &body).await {
                Ok(()) => {}
                // Someone deleted the comment: write a new one.
                Err(e) if e.status() == Some(404) => {
                    let cid = shared.forge.create_comment(repo, run.pr, &body).await?;
                    shared.store.set_comment_id(run.id, cid)?;
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let cid = shared.forge.create_comment(repo, run.pr, &body).await?;
                shared.store.set_comment_id(run.id, cid)?;
            }
        }
        shared.store.set_posted_comment(run.id, &hash)?;
    }
    Ok(())
}

async fn watchdog_loop(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        // Only a daemon whose state store answers is alive.
        if shared.store.ping().is_ok() {
            systemd::watchdog();
        } else {
            tracing::error!("state store does not answer: withholding the watchdog ping");
        }
    }
}

/// `serve`: start, wait for SIGTERM/SIGINT, stop gracefully.
pub async fn serve(config: Config, opts: ServeOptions) -> Result<(), DaemonError> {
    crate::logging::init();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::io("installing the SIGTERM handler", e))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| DaemonError::io("installing the SIGINT handler", e))?;
    let daemon = Daemon::start(config, opts).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    daemon.shutdown().await;
    Ok(())
}
