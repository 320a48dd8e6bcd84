//! Log output: the systemd journal (structured fields) when stderr is connected to it, else
//! human-readable lines on stderr. Filter with `CC_CI_LOG` (tracing `EnvFilter` syntax).

use std::ffi::OsStr;
use std::io::IsTerminal;

use cc_ci_harness::hostenv::HostEnv;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether stderr is the journal stream systemd announced in `JOURNAL_STREAM` (`dev:inode`).
fn stderr_is_journal(journal_stream: Option<&OsStr>) -> bool {
    let Some(value) = journal_stream else {
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

/// Install the global subscriber (once; later calls do nothing). `host` gives `CC_CI_LOG` and
/// `JOURNAL_STREAM`.
pub fn init(host: &HostEnv) {
    let filter = || {
        host.log_filter
            .as_deref()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new("info"))
    };
    if stderr_is_journal(host.journal_stream.as_deref())
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
