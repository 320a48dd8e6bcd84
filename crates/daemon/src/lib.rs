//! cc-ci's daemon (`cc-ci serve`): takes `!testme` comments from a Gitea/Forgejo webhook or by
//! polling, keeps a durable queue in SQLite, runs each trigger as a supervised `cc-ci run`
//! child process and reports commit statuses and one comment per run back to the forge.
//! See docs/daemon.md.

mod cli;
/// The configuration file: the whole file, `[daemon]` and `[forge]` (the harness owns
/// `[harness]`).
pub mod config;
mod error;
mod forge;
/// Reuse of results whose inputs still hold, and the drift sweep (issue 15).
pub mod fresh;
mod http;
mod intake;
mod logging;
mod metrics;
mod pages;
mod poll;
mod reconcile;
pub mod render;
mod reporter;
mod runner;
mod scheduler;
mod secrets;
mod start;
mod state;
pub mod store;
mod systemd;
#[cfg(test)]
mod testing;
pub mod trigger;
mod webhook;

pub use cli::{cancel, config_warnings, logs, queue};
pub use error::DaemonError;
pub use forge::ForgeError;
pub use logging::init as init_logging;
pub use start::{Daemon, ServeOptions, serve};
pub use state::{Tuning, database_path, state_dir};
