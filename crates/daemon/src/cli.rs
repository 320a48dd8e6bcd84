//! `cc-ci queue`, `cc-ci logs`, `cc-ci cancel`: operator commands that work on the daemon's
//! state directory directly (the database and run logs), so they need no open endpoint and
//! are authorised by file permissions. Also the daemon-specific config warnings shown by
//! `cc-ci check-config`.

use cc_ci_harness::contract::short_sha;
use std::io::Write;
use std::time::Duration;

use cc_ci_harness::hostenv::HostEnv;

use crate::config::Config;
use crate::error::DaemonError;
use crate::state::{database_path, state_dir};
use crate::store::{RunRow, RunState, Store, now};
use crate::trigger;

fn open(config: &Config, host: &HostEnv) -> Result<Store, DaemonError> {
    Store::open_existing(&database_path(&state_dir(config, host)))
}

fn age(secs: i64) -> String {
    let d = (now() - secs).max(0);
    if d < 120 {
        format!("{d}s ago")
    } else if d < 7200 {
        format!("{}m ago", d / 60)
    } else {
        format!("{}h ago", d / 3600)
    }
}

fn row(r: &RunRow) -> String {
    format!(
        "{:<6} {:<8} {:<9} {:<28} {:<10} {:<16} {}",
        r.id,
        r.state.as_str(),
        r.verdict.map(|v| v.as_str()).unwrap_or("-"),
        format!("{}#{}", r.repo, r.pr),
        short_sha(&r.head_sha),
        r.user,
        age(r.started_at.unwrap_or(r.created_at)),
    )
}

/// Print the running and queued runs (with `all`, also the 20 most recent finished ones).
pub fn queue(
    config: &Config,
    host: &HostEnv,
    all: bool,
    out: &mut dyn Write,
) -> Result<(), DaemonError> {
    let store = open(config, host)?;
    let w = |out: &mut dyn Write, s: String| {
        writeln!(out, "{s}").map_err(|e| DaemonError::io("writing the queue", e))
    };
    w(
        out,
        format!(
            "{:<6} {:<8} {:<9} {:<28} {:<10} {:<16} {}",
            "RUN", "STATE", "VERDICT", "PULL REQUEST", "COMMIT", "BY", "SINCE"
        ),
    )?;
    let mut shown = 0;
    for state in [RunState::Running, RunState::Queued] {
        for r in store.runs_in_state(state)? {
            w(out, row(&r))?;
            shown += 1;
        }
    }
    if all {
        for r in store
            .list_runs(200)?
            .into_iter()
            .filter(|r| r.state == RunState::Done)
            .take(20)
        {
            w(out, row(&r))?;
            shown += 1;
        }
    }
    if shown == 0 {
        w(out, "(no runs queued or running)".into())?;
    }
    let undelivered = store.undelivered_runs()?;
    if !undelivered.is_empty() {
        w(out, String::new())?;
        w(out, "REPORTS NOT DELIVERED TO THE FORGE".into())?;
        for r in undelivered {
            w(
                out,
                format!(
                    "{:<6} {:<28} {} after {} tries: {}",
                    r.id,
                    format!("{}#{}", r.repo, r.pr),
                    if r.report_given_up {
                        "undelivered (given up)"
                    } else {
                        "retrying"
                    },
                    r.sync_failures,
                    r.report_error.as_deref().unwrap_or("-")
                ),
            )?;
        }
    }
    Ok(())
}

/// Print a run's log; with `follow`, keep printing until the run has finished.
pub fn logs(
    config: &Config,
    host: &HostEnv,
    run: i64,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), DaemonError> {
    let dir = state_dir(config, host);
    let store = open(config, host)?;
    if store.get_run(run)?.is_none() {
        return Err(DaemonError::NoSuchRun(run));
    }
    let path = crate::runner::run_dir(&dir, run).join(crate::state::RUN_LOG);
    let mut pos = 0u64;
    loop {
        let done = !matches!(store.get_run(run)?, Some(r) if r.state != RunState::Done);
        if let Ok(mut f) = std::fs::File::open(&path) {
            use std::io::{Read, Seek, SeekFrom};
            f.seek(SeekFrom::Start(pos))
                .map_err(|e| DaemonError::io(format!("reading {}", path.display()), e))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| DaemonError::io(format!("reading {}", path.display()), e))?;
            pos += buf.len() as u64;
            out.write_all(&buf)
                .and_then(|_| out.flush())
                .map_err(|e| DaemonError::io("writing the log", e))?;
        }
        if !follow || done {
            return Ok(());
        }
        // The log is written by another process; poll it.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Ask the daemon to cancel a run (it acts within a second: SIGTERM, teardown, report).
pub fn cancel(config: &Config, host: &HostEnv, run: i64) -> Result<String, DaemonError> {
    let store = open(config, host)?;
    let state = store.request_cancel(run, "cancelled by an operator (cc-ci cancel)")?;
    Ok(match state {
        RunState::Queued => format!("run {run} will be removed from the queue"),
        _ => format!("run {run} will be stopped and torn down; `cc-ci logs -f {run}` shows it"),
    })
}

/// Problems in a config that is valid but cannot work as a daemon config.
pub fn config_warnings(config: &Config) -> Vec<String> {
    let f = &config.forge;
    let d = &config.daemon;
    let mut out = Vec::new();
    if f.repo_allowlist.is_empty() {
        out.push("forge.repo_allowlist is empty: no pull request can start a run".into());
    }
    if f.org_allowlist.is_empty() && f.user_allowlist.is_empty() {
        out.push(
            "forge.org_allowlist and forge.user_allowlist are both empty: nobody may start a run"
                .into(),
        );
    }
    for org in &f.org_allowlist {
        if !trigger::is_valid_login(org) {
            out.push(format!(
                "forge.org_allowlist: `{org}` is not an organisation name"
            ));
        }
    }
    for user in &f.user_allowlist {
        if !trigger::is_valid_login(user) {
            out.push(format!("forge.user_allowlist: `{user}` is not a user name"));
        }
    }
    for repo in &f.poll_repos {
        if !trigger::repo_allowed(&f.repo_allowlist, repo) {
            out.push(format!(
                "forge.poll_repos: `{repo}` is not on forge.repo_allowlist, its triggers are ignored"
            ));
        }
    }
    if d.poll_interval_secs > 0 && f.poll_repos.is_empty() {
        out.push(
            "daemon.poll_interval_secs is set but forge.poll_repos is empty: nothing is polled"
                .into(),
        );
    }
    if d.poll_interval_secs == 0 && !f.poll_repos.is_empty() {
        out.push(
            "forge.poll_repos is set but daemon.poll_interval_secs is 0: polling is off".into(),
        );
    }
    if !(d.public_url.starts_with("http://") || d.public_url.starts_with("https://")) {
        out.push(format!(
            "daemon.public_url `{}` is not an http(s) URL: links on the forge will not work",
            d.public_url
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_warns_that_nobody_can_trigger() {
        let w = config_warnings(&Config::default());
        assert!(
            w.iter().any(|w| w.contains("repo_allowlist is empty")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.contains("nobody may start")), "{w:?}");
        let mut c = Config::default();
        c.forge.repo_allowlist = vec!["o/r".into()];
        c.forge.user_allowlist = vec!["alice".into()];
        c.forge.poll_repos = vec!["o/other".into()];
        c.daemon.poll_interval_secs = 30;
        let w = config_warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("o/other"), "{w:?}");
    }
}
