//! cc-ci's daemon (`cc-ci serve`): takes `!testme` comments from a Gitea/Forgejo webhook or by
//! polling, keeps a durable queue in SQLite, runs each trigger as a supervised `cc-ci run`
//! child process and reports commit statuses and one comment per run back to the forge.
//! See docs/daemon.md.

mod cli;
mod daemon;
mod error;
mod forge;
/// Reuse of results whose inputs still hold, and the drift sweep (issue 15).
pub mod fresh;
mod http;
mod logging;
mod metrics;
mod pages;
mod poll;
pub mod render;
mod runner;
mod secrets;
pub mod store;
mod systemd;
pub mod trigger;

pub use cli::{cancel, config_warnings, logs, queue};
pub use daemon::{Daemon, ServeOptions, Tuning, database_path, serve, state_dir};
pub use error::DaemonError;
pub use forge::ForgeError;
pub use logging::init as init_logging;
