//! Log output: the systemd journal (structured fields) when stderr is connected to it, else
//! human-readable lines on stderr. Filter with `CC_CI_LOG` (tracing `EnvFilter` syntax).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether stderr is the journal stream systemd announced in `JOURNAL_STREAM` (`dev:inode`).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let value = value.to_string_lossy();
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    st.st_dev == dev && st.st_ino == ino
}

/// Install the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter = || EnvFilter::try_from_env("CC_CI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(journald.with_syslog_identifier("cc-ci".into()))
            .try_init();
        return;
    }
    // Colours only for a person at a terminal: a log file or pipe must stay plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
