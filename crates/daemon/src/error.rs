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
    Forge(#[from] ForgeError),
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

/// A forge API call that failed (the token never appears in it).
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{what}: cannot reach the forge: {message}")]
    Transport { what: String, message: String },
    #[error("{what}: the forge answered HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: unexpected answer: {message}")]
    Decode { what: String, message: String },
}

impl ForgeError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub(crate) fn transient(&self) -> bool {
        match self {
            ForgeError::Transport { .. } => true,
            ForgeError::Status { status, .. } => *status >= 500 || *status == 429,
            ForgeError::Decode { .. } => false,
        }
    }
}
