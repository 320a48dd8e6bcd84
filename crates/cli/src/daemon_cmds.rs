//! The daemon's subcommands (`serve`, `queue`, `logs`, `cancel`). Wiring only: the work is in
//! the `cc-ci-daemon` crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cc_ci_daemon::config::Config;
use cc_ci_harness::hostenv::HostEnv;
// A bad config or argument exits as `cc-ci run` does.
use cc_ci_harness::contract::exit;

#[derive(clap::Subcommand)]
pub enum DaemonCommand {
    /// Run the daemon: `!testme` webhook and polling, durable queue, runs, forge reports.
    /// Takes its socket from systemd socket activation when given one.
    Serve {
        /// Configuration file (TOML); see docs/config.md.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen here when systemd passes no socket: HOST:PORT or a unix socket path
        /// (default: `daemon.listen`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// List the daemon's running and queued runs.
    Queue {
        /// The daemon's configuration file (to find its state directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also list the 20 most recent finished runs.
        #[arg(long)]
        all: bool,
    },
    /// Print the log of a run.
    Logs {
        /// The daemon's configuration file (to find its state directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keep printing until the run has finished.
        #[arg(short, long)]
        follow: bool,
        /// Run number, as `cc-ci queue` shows it.
        run: i64,
    },
    /// Cancel a queued or running run: it is stopped, torn down and reported as cancelled.
    Cancel {
        /// The daemon's configuration file (to find its state directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run number, as `cc-ci queue` shows it.
        run: i64,
    },
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    match path {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("cc-ci: {e}");
            exit::process(exit::BAD_INPUT)
        }),
    }
}

/// `host`: the process environment, read once by `main`.
pub async fn run(cmd: DaemonCommand, host: HostEnv) -> anyhow::Result<ExitCode> {
    match cmd {
        DaemonCommand::Serve { config, listen } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            // The flag gets the same check as `daemon.listen` in the config file.
            if let Some(l) = &listen
                && let Err(problem) = cc_ci_daemon::config::listen::check(l)
            {
                eprintln!("cc-ci serve: --listen: {problem}");
                return Ok(exit::process(exit::BAD_INPUT));
            }
            // Children get an absolute path: they may run with another working directory.
            let config_path = config.map(|p| std::path::absolute(&p).unwrap_or(p));
            let opts = cc_ci_daemon::ServeOptions {
                config_path,
                listen,
                host,
                ..Default::default()
            };
            cc_ci_daemon::serve(cfg, opts)
                .await
                .context("cc-ci serve")?;
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Queue { config, all } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            cc_ci_daemon::queue(&cfg, &host, all, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Logs {
            config,
            follow,
            run,
        } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            // Following polls files: keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                cc_ci_daemon::logs(&cfg, &host, run, follow, &mut std::io::stdout().lock())
            })
            .await
            .context("cc-ci logs")??;
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Cancel { config, run } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            match cc_ci_daemon::cancel(&cfg, &host, run) {
                Ok(msg) => {
                    println!("{msg}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(
                    e @ (cc_ci_daemon::DaemonError::NoSuchRun(_)
                    | cc_ci_daemon::DaemonError::RunFinished { .. }),
                ) => {
                    eprintln!("cc-ci: {e}");
                    Ok(exit::process(exit::BAD_INPUT))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
