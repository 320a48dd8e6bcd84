//! The daemon's error type: each variant says what failed and, where it helps, what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("secret `{name}`: {problem}")]
    Secret { name: &'static str, problem: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("socket activation: {0}")]
    SocketActivation(String),
    #[error("forge: {0}")]
    Forge(#[from] crate::forge::ForgeError),
    #[error("run {0} not found: `cc-ci queue` lists the known runs")]
    NoSuchRun(i64),
    #[error("run {id} is already finished ({state})")]
    RunFinished { id: i64, state: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
}

impl DaemonError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        DaemonError::Io {
            what: what.into(),
            source,
        }
    }
}
