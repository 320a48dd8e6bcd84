//! The process environment cc-ci depends on, as values. The edge reads it once
//! ([`HostEnv::from_process`], called by `crates/cli`'s `main` and handed to the harness and the
//! daemon) and passes it in; no library code of the harness or the daemon reads the
//! environment.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::HarnessConfig;

/// `CC_CI_ABRA`: the abra binary (after `--abra`, before `harness.abra`).
pub const ABRA_ENV: &str = "CC_CI_ABRA";
/// `CC_CI_WORK_DIR`: where per-run state lives (after `harness.work_dir`).
pub const WORK_DIR_ENV: &str = "CC_CI_WORK_DIR";
/// `CC_CI_NO_PREPULL=1` turns the pre-pull off, only so that bench/prepull can measure what it
/// saves; a run without it lets the convergence wait include the swarm's own pull.
pub const NO_PREPULL_ENV: &str = "CC_CI_NO_PREPULL";
/// `CC_CI_OVERLAYS`: the folder of the overlays shipped with cc-ci (see
/// [`crate::inputs::shipped_overlays`]).
pub const OVERLAYS_ENV: &str = "CC_CI_OVERLAYS";
/// `CC_CI_LOG`: the daemon's log filter (tracing `EnvFilter` syntax).
pub const LOG_ENV: &str = "CC_CI_LOG";

#[derive(Debug, Clone, Default)]
pub struct HostEnv {
    /// [`ABRA_ENV`].
    pub abra: Option<String>,
    /// `PATH`, searched for `abra`.
    pub path: Option<OsString>,
    /// `DOCKER_HOST` (unix sockets only).
    pub docker_host: Option<String>,
    /// [`WORK_DIR_ENV`].
    pub work_dir: Option<PathBuf>,
    /// systemd's `STATE_DIRECTORY` (possibly several, colon-separated).
    pub state_directory: Option<OsString>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// systemd's `CREDENTIALS_DIRECTORY`.
    pub credentials_directory: Option<PathBuf>,
    /// [`crate::redact::SECRETS_FD_ENV`]: the pipe the daemon hands a run its secrets on.
    pub secrets_fd: Option<String>,
    /// [`NO_PREPULL_ENV`] is `1`.
    pub no_prepull: bool,
    /// [`cc_ci_engine_api::labels::backupbot::BACKUPBOT_LABEL_ENV`]: `key=value` overriding the label.
    pub backupbot_label: Option<String>,
    /// [`OVERLAYS_ENV`].
    pub overlays: Option<PathBuf>,
    /// This program (`/proc/self/exe`): the packaged overlays are found beside it, and the
    /// daemon runs it as `cc-ci run` / `cc-ci gc`.
    pub current_exe: Option<PathBuf>,
    /// systemd's `JOURNAL_STREAM` (`dev:inode` of the journal stream on stderr).
    pub journal_stream: Option<OsString>,
    /// [`LOG_ENV`].
    pub log_filter: Option<String>,
}

impl HostEnv {
    /// Reads the environment of this process. Empty values of cc-ci's own variables (but
    /// `CC_CI_LOG`, which `EnvFilter` judges), of `DOCKER_HOST` and of `STATE_DIRECTORY` count
    /// as unset; `PATH`, `HOME`, `CREDENTIALS_DIRECTORY` and `JOURNAL_STREAM` are taken as they
    /// are.
    pub fn from_process() -> Self {
        let os = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let text = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            abra: text(ABRA_ENV),
            path: std::env::var_os("PATH"),
            docker_host: text("DOCKER_HOST"),
            work_dir: os(WORK_DIR_ENV).map(PathBuf::from),
            state_directory: os("STATE_DIRECTORY"),
            home: std::env::var_os("HOME").map(PathBuf::from),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            secrets_fd: text(crate::redact::SECRETS_FD_ENV),
            no_prepull: std::env::var_os(NO_PREPULL_ENV).is_some_and(|v| v == "1"),
            backupbot_label: text(cc_ci_engine_api::labels::backupbot::BACKUPBOT_LABEL_ENV),
            overlays: os(OVERLAYS_ENV).map(PathBuf::from),
            current_exe: std::env::current_exe().ok(),
            journal_stream: std::env::var_os("JOURNAL_STREAM"),
            log_filter: std::env::var(LOG_ENV).ok(),
        }
    }
}

/// Where per-run state lives: config, then `CC_CI_WORK_DIR`, then systemd's state directory,
/// then the user's cache.
pub fn work_dir(config: &HarnessConfig, host: &HostEnv) -> PathBuf {
    if let Some(d) = &config.work_dir {
        return d.clone();
    }
    if let Some(d) = &host.work_dir {
        return d.clone();
    }
    if let Some(d) = &host.state_directory {
        // systemd may pass several, colon-separated; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first).join("work");
    }
    let home = host.home.clone().unwrap_or_else(|| "/tmp".into());
    home.join(".cache/cc-ci")
}
