//! Start and stop: `Daemon::start` opens the state, takes the listener, reconciles what a
//! previous daemon left, and starts every task; `Daemon::shutdown` stops them in order
//! (no new work, runs finish or are cancelled and re-queued, last reports sent); `serve`
//! wraps both with signal handling.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cc_ci_harness::hostenv::HostEnv;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::DaemonError;
use crate::forge::GiteaClient;
use crate::secrets::Secrets;
use crate::state::{Cancel, Settings, State, Tuning, database_path, state_dir};
use crate::store::Store;
use crate::systemd::{self, StdListener};
use crate::{http, intake, poll, reconcile, reporter, runner, scheduler};

/// How `cc-ci serve` was started (everything else comes from the config file).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The config file, passed on to every `cc-ci run` / `cc-ci gc` child.
    pub config_path: Option<PathBuf>,
    /// `--listen`: overrides `daemon.listen` (ignored under socket activation).
    pub listen: Option<String>,
    /// The program run as `<exe> run ...` and `<exe> gc ...`; default: this executable
    /// (`host.current_exe`).
    pub run_exe: Option<PathBuf>,
    pub tuning: Tuning,
    /// The process environment, read once by the edge (`HostEnv::from_process` in the `cc-ci`
    /// binary): `STATE_DIRECTORY`, `HOME`, `CREDENTIALS_DIRECTORY`, `JOURNAL_STREAM`,
    /// `CC_CI_LOG`, and what a run's inputs are resolved with.
    pub host: HostEnv,
}

/// A running daemon. `serve` wraps it with signal handling; tests drive it directly.
pub struct Daemon {
    state: Arc<State>,
    local_addr: Option<SocketAddr>,
    /// The daemon's own tasks (not the runs: `state.runs.tasks`).
    tasks: TaskTracker,
    /// Cancelled last, once the runs have stopped and the last reports went out: ends the
    /// tasks that outlive `state.shutdown` (the watchdog keeps pinging while runs finish).
    stopped: CancellationToken,
}

/// Run `task` on `tracker` until it ends or `until` is cancelled.
fn spawn_until(
    tracker: &TaskTracker,
    until: &CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) {
    let until = until.clone();
    tracker.spawn(async move {
        until.run_until_cancelled(task).await;
    });
}

/// The forge token and the webhook secret, with the errors that say which is missing.
fn secrets_for(config: &Config, host: &HostEnv) -> Result<(Secrets, String, bool), DaemonError> {
    let secrets = Secrets::for_config(&config.forge, host.credentials_directory.as_deref())?;
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
        tracing::warn!("no webhook secret: POST /hooks/gitea rejects every delivery; polling only");
    }
    Ok((secrets, token, polling))
}

/// The program run as `<exe> run ...` and `<exe> gc ...`: `run_exe` (tests), else this
/// program as the edge found it.
fn run_exe(opts: &ServeOptions) -> Result<PathBuf, DaemonError> {
    opts.run_exe
        .clone()
        .or_else(|| opts.host.current_exe.clone())
        .ok_or_else(|| {
            DaemonError::io(
                "finding the cc-ci executable",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "/proc/self/exe cannot be read; is /proc mounted?",
                ),
            )
        })
}

impl Daemon {
    /// Open the state, take the listener (socket activation, else `--listen`/`daemon.listen`),
    /// reconcile runs a previous daemon left `running`, start every task and tell systemd
    /// READY=1.
    pub async fn start(config: Config, opts: ServeOptions) -> Result<Self, DaemonError> {
        let state_dir = state_dir(&config, &opts.host);
        std::fs::create_dir_all(state_dir.join("runs")).map_err(|source| {
            DaemonError::StateDir {
                path: state_dir.clone(),
                source,
            }
        })?;
        let (secrets, token, polling) = secrets_for(&config, &opts.host)?;
        for w in crate::cli::config_warnings(&config) {
            tracing::warn!("{w}");
        }
        let exe = run_exe(&opts)?;
        let store = Store::open(&database_path(&state_dir))?;
        let forge = GiteaClient::new(
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

        let settings = Settings {
            config,
            config_path: opts.config_path.clone(),
            state_dir,
            exe,
            redactor: secrets.redactor(),
            secrets,
            host: opts.host.clone(),
            tuning: opts.tuning.clone(),
        };
        let state = Arc::new(State::new(settings, store, Arc::new(forge)));

        reconcile::reconcile_interrupted(&state)?;

        let tasks = TaskTracker::new();
        let stopped = CancellationToken::new();
        let (local_addr, accept) = http::start(state.clone(), listener)?;
        spawn_until(&tasks, &stopped, accept);
        spawn_until(&tasks, &stopped, scheduler::scheduler_loop(state.clone()));
        spawn_until(&tasks, &stopped, intake::intake_loop(state.clone()));
        spawn_until(&tasks, &stopped, reporter::reporter_loop(state.clone()));
        if polling {
            spawn_until(&tasks, &stopped, poll::poll_loop(state.clone()));
        }
        spawn_until(&tasks, &stopped, learn_own_login(state.clone()));
        spawn_until(&tasks, &stopped, crate::fresh::drift_loop(state.clone()));
        if let Some(every) = systemd::watchdog_interval() {
            spawn_until(&tasks, &stopped, watchdog_loop(state.clone(), every));
        }
        // The host checks of `cc-ci doctor`, logged when they fail (the daemon starts anyway).
        let doctor_config = state.config().harness.clone();
        let host = opts.host.clone();
        spawn_until(&tasks, &stopped, async move {
            for c in cc_ci_harness::doctor::run(&doctor_config, None, &host).await {
                if !c.ok {
                    tracing::warn!(check = %c.name, "host check failed: {}", c.line());
                }
            }
        });
        let gc_state = state.clone();
        spawn_until(&tasks, &stopped, async move {
            runner::run_gc(&gc_state, None).await;
            gc_state.runs.gc_done.store(true, Ordering::SeqCst);
            gc_state.wake.scheduler.notify_one();
        });
        let (running, queued) = state.store.counts()?;
        systemd::ready(&scheduler::status_text(running, queued));
        tracing::info!(
            state_dir = %state.state_dir().display(),
            addr = ?local_addr,
            queued,
            "cc-ci daemon ready"
        );
        Ok(Self {
            state,
            local_addr,
            tasks,
            stopped,
        })
    }

    /// The bound TCP address (None for a unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn state_dir(&self) -> &Path {
        self.state.state_dir()
    }

    /// Graceful stop: no new runs or requests; running runs get `cancel_grace_secs` to finish,
    /// then are cancelled (SIGTERM, grace, SIGKILL + gc) and re-queued; last reports are sent.
    pub async fn shutdown(self) {
        let state = self.state.clone();
        state.shutdown.cancel();
        let running = state.runs.count();
        systemd::stopping(&format!("stopping: {running} run(s) still running"));
        tracing::info!(running, "stopping");
        let grace = Duration::from_secs(state.config().daemon.cancel_grace_secs);
        // The scheduler starts no run once `shutdown` is cancelled.
        state.runs.tasks.close();
        if tokio::time::timeout(grace, state.runs.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!("grace period over: cancelling the running runs");
            state.runs.cancel_all(&Cancel::Shutdown);
            state.runs.tasks.wait().await;
        }
        let _ = tokio::time::timeout(
            state.tuning().final_report_timeout,
            reporter::sync_due(&state),
        )
        .await;
        self.stopped.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!("stopped");
    }
}

/// Learn cc-ci's own forge login (its comments are never triggers), retrying until the
/// forge answers.
async fn learn_own_login(state: Arc<State>) {
    let mut delay = state.tuning().tick;
    loop {
        match state.ensure_own_login().await {
            Ok(login) => {
                tracing::info!(login = %login, "forge account of cc-ci");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read cc-ci's own forge account yet; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = state.shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(300));
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

async fn watchdog_loop(state: Arc<State>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        // Only a daemon whose state store answers is alive.
        if state.store.ping().is_ok() {
            systemd::watchdog();
        } else {
            tracing::error!("state store does not answer: withholding the watchdog ping");
        }
    }
}

/// `serve`: start, wait for SIGTERM/SIGINT, stop gracefully.
pub async fn serve(config: Config, opts: ServeOptions) -> Result<(), DaemonError> {
    crate::logging::init(&opts.host);
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
