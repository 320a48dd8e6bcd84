//! One run as a supervised child process: `<exe> run ... --report-dir <state>/runs/<id>`.
//!
//! The child gets its own process group and dies with the daemon (`PR_SET_PDEATHSIG`), so a
//! run can neither take the daemon down nor outlive it unnoticed. Its stdout and stderr go,
//! with secrets removed, to `log.txt`. Cancelling = SIGTERM (the harness tears down by itself),
//! then after the grace period SIGKILL to the whole group and `<exe> gc`.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cc_ci_harness::contract::{exit, files, short_sha};
use cc_ci_harness::report::{RunReport, TierReport, Verdict};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::state::{Cancel, State};
use crate::store::{RunRow, RunVerdict, now};
use crate::systemd::PRIVATE_ENV;

/// Files of a run under `<state_dir>/runs/<id>`.
pub use crate::state::run_dir;

pub fn read_report(dir: &Path) -> Option<RunReport> {
    let text = std::fs::read(dir.join(files::RUN_JSON)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Tiers finished so far (`progress.json`; only `tiers` is meaningful there).
pub fn read_progress(dir: &Path) -> Option<Vec<TierReport>> {
    #[derive(serde::Deserialize)]
    struct Partial {
        tiers: Vec<TierReport>,
    }
    let text = std::fs::read(dir.join(files::PROGRESS_JSON)).ok()?;
    serde_json::from_slice::<Partial>(&text)
        .ok()
        .map(|p| p.tiers)
}

/// Up to 64 KiB of a run's log from byte `pos` on (empty at its end or without a log). With
/// `whole_lines`, only up to the last newline, so a line still being written goes out whole later.
pub fn read_log_from(path: &Path, pos: u64, whole_lines: bool) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(pos)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    if whole_lines {
        match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => buf.truncate(i + 1),
            None => buf.clear(),
        }
    }
    buf
}

/// The run's log, append-only, shared by the output pumps. Every write wakes log followers.
#[derive(Clone)]
pub struct LogSink {
    file: Arc<Mutex<std::fs::File>>,
    shared: Arc<State>,
}

impl LogSink {
    pub fn open(shared: Arc<State>, path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
            shared,
        })
    }

    pub fn line(&self, text: &str) {
        let clean = self.shared.settings.redactor.redact(text);
        crate::metrics::log_line(&clean);
        {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(clean.as_bytes());
            if !clean.ends_with('\n') {
                let _ = f.write_all(b"\n");
            }
        }
        self.shared.wake.log_changed();
    }
}

/// Copy a child's output stream into the log, line by line.
async fn pump(reader: impl AsyncRead + Unpin, sink: LogSink) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => sink.line(&String::from_utf8_lossy(&buf)),
        }
    }
}

fn base_command(shared: &State) -> Command {
    let mut cmd = Command::new(&shared.settings.exe);
    for var in PRIVATE_ENV {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let parent = rustix::process::getpid();
    // SAFETY: the closure makes only async-signal-safe system calls (prctl, getppid) between
    // fork and exec, and allocates nothing.
    #[allow(unsafe_code)] // pre_exec is unsafe by definition; nothing safe replaces it
    unsafe {
        cmd.pre_exec(move || {
            // The signal fires when the thread that forked exits: runs are spawned from tokio
            // worker threads, which live as long as the daemon's runtime.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The daemon may have died between fork and prctl: do not start an orphan run
            // (the error ends the child before exec).
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other(
                    "the daemon died before the run started",
                ));
            }
            Ok(())
        });
    }
    cmd
}

fn config_args(shared: &State) -> Vec<String> {
    match &shared.settings.config_path {
        Some(p) => vec!["--config".into(), p.display().to_string()],
        None => vec![],
    }
}

/// Spawn `<exe> <args>` with output into `sink`; returns the child and its output pumps.
fn spawn_logged(
    shared: &Arc<State>,
    args: &[String],
    sink: &LogSink,
) -> std::io::Result<(Child, Vec<tokio::task::JoinHandle<()>>)> {
    let mut cmd = base_command(shared);
    cmd.args(args);
    let secrets = secrets_pipe(shared)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&secrets);
    cmd.env(cc_ci_harness::redact::SECRETS_FD_ENV, "3");
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. fd 3 is not
    // owned by anything in the child, so the safe wrappers (which want an `OwnedFd` for the
    // target) do not apply: the raw calls stay.
    #[allow(unsafe_code)] // pre_exec and the raw fd 3 have no safe replacement
    unsafe {
        cmd.pre_exec(move || {
            let ok = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(secrets);
    let mut child = spawned?;
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, sink.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, sink.clone())));
    }
    Ok((child, pumps))
}

/// The forge token and webhook secret, one per line, in a pipe the child inherits as fd 3:
/// the run never has them in its environment, arguments or files, yet can mask them in what it
/// writes (a recipe that gets hold of one must not be able to publish it through a report).
fn secrets_pipe(shared: &State) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    let (read, mut write) = std::io::pipe()?;
    let mut text = String::new();
    for v in [
        &shared.settings.secrets.token,
        &shared.settings.secrets.webhook_secret,
    ]
    .into_iter()
    .flatten()
    {
        text.push_str(v);
        text.push('\n');
    }
    // A few hundred bytes: far below a pipe's buffer, so this never blocks.
    write.write_all(text.as_bytes())?;
    drop(write);
    Ok(read.into())
}

/// Wait for the output pumps; a grandchild that keeps the pipe open must not hold us forever.
async fn drain(pumps: Vec<tokio::task::JoinHandle<()>>) {
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Send `sig` to a child we spawned (and have not reaped), or to its process group.
fn signal(pid: Option<u32>, group: bool, sig: Signal) {
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw)
    else {
        return;
    };
    // Already gone is fine: there is nothing left to stop.
    let _ = if group {
        rustix::process::kill_process_group(pid, sig)
    } else {
        rustix::process::kill_process(pid, sig)
    };
}

/// `<exe> gc`: tear down what dead runs left. Output goes to `sink` when given, else the
/// daemon log. Returns whether gc succeeded.
pub async fn run_gc(shared: &Arc<State>, sink: Option<&LogSink>) -> bool {
    let mut args = vec!["gc".to_string()];
    args.extend(config_args(shared));
    let log_path = shared.settings.state_dir.join("gc.log");
    let own_sink;
    let sink = match sink {
        Some(s) => s,
        None => match LogSink::open(shared.clone(), &log_path) {
            Ok(s) => {
                own_sink = s;
                &own_sink
            }
            Err(e) => {
                tracing::error!(path = %log_path.display(), error = %e, "cannot open gc log");
                return false;
            }
        },
    };
    sink.line(&format!(
        "cc-ci: running `{} gc` at {}",
        shared.settings.exe.display(),
        now()
    ));
    let (mut child, pumps) = match spawn_logged(shared, &args, sink) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(exe = %shared.settings.exe.display(), error = %e, "cannot start gc");
            sink.line(&format!("cc-ci: cannot start gc: {e}"));
            return false;
        }
    };
    let pid = child.id();
    let status = match tokio::time::timeout(shared.settings.tuning.gc_timeout, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            signal(pid, true, Signal::KILL);
            let _ = child.wait().await;
            None
        }
    };
    drain(pumps).await;
    let ok = status.is_some_and(|s| s.success());
    if ok {
        tracing::info!("gc finished");
    } else {
        tracing::error!(status = ?status, log = %log_path.display(), "gc failed: leftovers of dead runs may remain; run `cc-ci gc` by hand");
    }
    sink.line(&format!(
        "cc-ci: gc {}",
        if ok { "finished" } else { "FAILED" }
    ));
    ok
}

/// What a finished child means.
pub fn outcome(
    code: Option<i32>,
    signal: Option<i32>,
    report: Option<&RunReport>,
) -> (RunVerdict, Option<String>) {
    let failing = |r: &RunReport| {
        r.tiers
            .iter()
            .filter(|t| matches!(t.verdict, Verdict::Fail | Verdict::Error))
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (code, report) {
        (Some(exit::PASS), Some(r)) => match r.verdict {
            Verdict::Pass | Verdict::Skipped => (RunVerdict::Pass, None),
            Verdict::Fail => (RunVerdict::Fail, Some(format!("failed: {}", failing(r)))),
            Verdict::Error => (
                RunVerdict::Error,
                Some("the run reported an error but exited 0".into()),
            ),
        },
        (Some(exit::PASS), None) => (
            RunVerdict::Error,
            Some("the run exited 0 but wrote no run.json".into()),
        ),
        (Some(exit::FAIL), Some(r)) if r.verdict == Verdict::Error => {
            (RunVerdict::Error, Some(format!("error in: {}", failing(r))))
        }
        (Some(exit::FAIL), Some(r)) => (RunVerdict::Fail, Some(format!("failed: {}", failing(r)))),
        (Some(exit::FAIL), None) => (
            RunVerdict::Fail,
            Some("a tier failed (no run.json was written)".into()),
        ),
        (Some(exit::BAD_INPUT), _) => (
            RunVerdict::Error,
            Some("bad input or configuration (exit 2): nothing was deployed, see the log".into()),
        ),
        (Some(exit::INFRA), _) => (
            RunVerdict::Error,
            Some("infrastructure error (exit 3), see the log".into()),
        ),
        (Some(c), _) => (
            RunVerdict::Error,
            Some(format!("the run process exited with code {c}")),
        ),
        (None, _) => (
            RunVerdict::Error,
            Some(format!(
                "the run process was killed by signal {}",
                signal.unwrap_or(0)
            )),
        ),
    }
}

/// Supervise one claimed run to its end and record the result. Never panics on outside input.
pub async fn supervise(
    shared: Arc<State>,
    run: RunRow,
    mut cancel: watch::Receiver<Option<Cancel>>,
) {
    let dir = run_dir(&shared.settings.state_dir, run.id);
    let Some(sink) = open_run(&shared, &run, &dir) else {
        return;
    };
    if let Some(reason) = moved_on(&shared, &run).await {
        sink.line(&format!("cc-ci: not started: {reason}"));
        finish(&shared, &run, RunVerdict::Cancelled, Some(reason), None);
        return;
    }
    // An earlier result whose inputs all still hold is reported again instead (crate::fresh).
    if let Some((verdict, reason)) =
        crate::fresh::try_reuse(&shared, &run, &dir, &|l: &str| sink.line(l)).await
    {
        finish(&shared, &run, verdict, reason, None);
        return;
    }
    let args = run_args(&shared, &run, &dir);
    let (mut child, pumps) = match spawn_logged(&shared, &args, &sink) {
        Ok(c) => c,
        Err(e) => {
            let reason = format!(
                "cannot start the run process {}: {e}",
                shared.settings.exe.display()
            );
            sink.line(&format!("cc-ci: {reason}"));
            finish(&shared, &run, RunVerdict::Error, Some(reason), None);
            return;
        }
    };
    let pid = child.id();
    tracing::info!(run_id = run.id, recipe = %crate::render::recipe_of(&run.repo), pr = run.pr, pid = ?pid, "run started");
    let (status, cancelled) =
        watch_child(&shared, &run, &dir, &mut child, &mut cancel, &sink).await;
    drain(pumps).await;
    let (code, sig) = match status {
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code(), s.signal())
        }
        None => (None, None),
    };
    // A run that died of a signal (SIGKILL after the grace period, the OOM killer, a crash)
    // did not tear down: its deployment may still be up.
    if sig.is_some() {
        run_gc(&shared, Some(&sink)).await;
    }
    conclude(&shared, &run, &sink, cancelled, code, sig, &dir);
}

/// Prepare the run's directory and open its log with a first line saying what runs; on
/// failure the run is finished as an error.
fn open_run(shared: &Arc<State>, run: &RunRow, dir: &Path) -> Option<LogSink> {
    if let Err(e) = prepare_dir(dir) {
        let reason = format!("cannot prepare {}: {e}", dir.display());
        finish(shared, run, RunVerdict::Error, Some(reason), None);
        return None;
    }
    let sink = match LogSink::open(shared.clone(), &dir.join(crate::state::RUN_LOG)) {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("cannot open the run log: {e}");
            finish(shared, run, RunVerdict::Error, Some(reason), None);
            return None;
        }
    };
    sink.line(&format!(
        "cc-ci: run #{} of {}#{} at {} (stages: {}){}",
        run.id,
        run.repo,
        run.pr,
        run.head_sha,
        if run.stages.is_empty() {
            "all".to_string()
        } else {
            run.stages.join(",")
        },
        if run.requeues > 0 {
            format!(", attempt {}", run.requeues + 1)
        } else {
            String::new()
        }
    ));
    Some(sink)
}

/// Why the run should not start any more: the queued trigger was for a head commit; if the
/// pull request moved on (or closed), this run would test, and report on, something nobody
/// asked for. A forge that does not answer in time does not stop the run.
async fn moved_on(shared: &State, run: &RunRow) -> Option<String> {
    let pr = tokio::time::timeout(
        Duration::from_secs(15),
        shared.forge.pull_request(&run.repo, run.pr),
    )
    .await
    .ok()?
    .ok()?;
    if pr.state != "open" {
        Some("the pull request was closed before the run started".to_string())
    } else if pr.head.sha != run.head_sha {
        Some(format!(
            "the pull request's head moved to {} before the run started: comment again to test it",
            short_sha(&pr.head.sha)
        ))
    } else {
        None
    }
}

/// The arguments of `cc-ci run`. The exact commit the trigger was authorised for, never
/// `refs/pull/N/head`: a commit pushed after the approval must not be what runs (nor get the
/// approved commit's status). A commit the clone cannot fetch makes the run fail with exit 2
/// (an error).
fn run_args(shared: &State, run: &RunRow, dir: &Path) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--recipe".into(),
        crate::fresh::recipe_source(shared, run),
        "--ref".into(),
        run.head_sha.clone(),
    ];
    let stages = crate::trigger::run_stages(&run.stages);
    if !stages.is_empty() {
        args.push("--stages".into());
        args.push(stages.join(","));
    }
    args.push("--report-dir".into());
    args.push(dir.display().to_string());
    args.extend(config_args(shared));
    args
}

/// Wait for the child while watching for a cancel, the deadline and progress; a cancel stops
/// the child. Returns its exit status and why it was stopped, if it was.
async fn watch_child(
    shared: &Arc<State>,
    run: &RunRow,
    dir: &Path,
    child: &mut Child,
    cancel: &mut watch::Receiver<Option<Cancel>>,
    sink: &LogSink,
) -> (Option<std::process::ExitStatus>, Option<Cancel>) {
    let pid = child.id();
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(shared.settings.config.daemon.run_timeout_secs);
    let mut progress_tick = tokio::time::interval(shared.settings.tuning.progress_interval);
    let mut last_progress = progress_stamp(dir);
    let mut cancelled: Option<Cancel> = None;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.ok(),
            changed = cancel.changed(), if cancelled.is_none() => {
                let c = if changed.is_ok() { cancel.borrow().clone() } else { Some(Cancel::Shutdown) };
                if let Some(c) = c {
                    cancelled = Some(c);
                }
            }
            _ = tokio::time::sleep_until(deadline), if cancelled.is_none() => {
                cancelled = Some(Cancel::Deadline);
            }
            _ = progress_tick.tick() => {
                let stamp = progress_stamp(dir);
                if stamp != last_progress {
                    last_progress = stamp;
                    let _ = shared.store.bump_version(run.id);
                    shared.wake.reporter.notify_one();
                }
            }
        }
        if let Some(c) = &cancelled {
            break stop_child(shared, child, pid, c, sink).await;
        }
    };
    (status, cancelled)
}

/// Record how the run ended: its verdict from the exit code and report, or why it was
/// stopped (a shutdown re-queues it while it may be).
fn conclude(
    shared: &Arc<State>,
    run: &RunRow,
    sink: &LogSink,
    cancelled: Option<Cancel>,
    code: Option<i32>,
    sig: Option<i32>,
    dir: &Path,
) {
    match cancelled {
        None => {
            let report = read_report(dir);
            let (mut verdict, mut reason) = outcome(code, sig, report.as_ref());
            // The status is posted on the approved commit: a report about any other commit
            // says nothing about it.
            if let Some(r) = &report
                && !r.head_sha.eq_ignore_ascii_case(&run.head_sha)
            {
                verdict = RunVerdict::Error;
                reason = Some(format!(
                    "the run tested commit {} but was approved for {}",
                    short_sha(&r.head_sha),
                    short_sha(&run.head_sha)
                ));
            }
            sink.line(&format!(
                "cc-ci: run finished: {}{}",
                verdict.as_str(),
                reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
            finish(shared, run, verdict, reason, code);
        }
        Some(Cancel::Requested(reason)) => {
            sink.line(&format!("cc-ci: run cancelled: {reason}"));
            finish(shared, run, RunVerdict::Cancelled, Some(reason), code);
        }
        Some(Cancel::Deadline) => {
            let reason = format!(
                "the run exceeded its deadline of {} s and was cancelled",
                shared.settings.config.daemon.run_timeout_secs
            );
            sink.line(&format!("cc-ci: {reason}"));
            finish(shared, run, RunVerdict::Error, Some(reason), code);
        }
        Some(Cancel::Shutdown) => {
            if run.requeues < shared.settings.config.daemon.max_requeues {
                sink.line("cc-ci: the daemon is stopping: run interrupted, re-queued");
                if let Err(e) = shared.store.requeue_run(run.id) {
                    tracing::error!(run_id = run.id, error = %e, "cannot re-queue run");
                }
                shared.wake.reporter.notify_one();
            } else {
                let reason =
                    "interrupted by a daemon shutdown (and re-queued too often)".to_string();
                sink.line(&format!("cc-ci: {reason}"));
                finish(shared, run, RunVerdict::Error, Some(reason), code);
            }
        }
    }
}

/// SIGTERM, wait the grace period, then SIGKILL the whole process group.
async fn stop_child(
    shared: &Arc<State>,
    child: &mut Child,
    pid: Option<u32>,
    why: &Cancel,
    sink: &LogSink,
) -> Option<std::process::ExitStatus> {
    sink.line(&format!("cc-ci: stopping the run ({why:?}): SIGTERM"));
    signal(pid, false, Signal::TERM);
    let grace = Duration::from_secs(shared.settings.config.daemon.cancel_grace_secs);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => {
            // Helpers the run left in its group (abra, docker) go too.
            signal(pid, true, Signal::KILL);
            s.ok()
        }
        Err(_) => {
            sink.line(&format!(
                "cc-ci: the run did not stop within {} s: SIGKILL",
                grace.as_secs()
            ));
            signal(pid, true, Signal::KILL);
            child.wait().await.ok()
        }
    }
}

fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // A re-queued run starts afresh; its earlier log is kept (appended to).
    for f in files::RESULTS {
        match std::fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn progress_stamp(dir: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(dir.join(files::PROGRESS_JSON)).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn finish(
    shared: &Arc<State>,
    run: &RunRow,
    verdict: RunVerdict,
    reason: Option<String>,
    code: Option<i32>,
) {
    tracing::info!(run_id = run.id, recipe = %crate::render::recipe_of(&run.repo), pr = run.pr,
        verdict = verdict.as_str(), reason = reason.as_deref().unwrap_or(""), "run finished");
    crate::metrics::run_finished(
        run,
        verdict,
        read_report(&run_dir(&shared.settings.state_dir, run.id)).as_ref(),
    );
    if let Err(e) = shared
        .store
        .finish_run(run.id, verdict, reason.as_deref(), code)
    {
        tracing::error!(run_id = run.id, error = %e, "cannot record the run's result");
    }
    shared.wake.reporter.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use cc_ci_harness::report::TeardownReport;

    fn report(v: Verdict) -> RunReport {
        RunReport {
            recipe: "web".into(),
            git_ref: "x".into(),
            head_sha: "abc".into(),
            base_version: None,
            app_domain: "d".into(),
            verdict: v,
            deploy_count: 1,
            tiers: vec![TierReport {
                name: "upgrade".into(),
                verdict: v,
                duration_ms: 1,
                checks: vec![],
            }],
            teardown: TeardownReport::default(),
            notes: vec![],
            abra_version: None,
            inputs: None,
            reused: None,
        }
    }

    #[test]
    fn exit_codes_and_reports() {
        assert_eq!(
            outcome(Some(exit::PASS), None, Some(&report(Verdict::Pass))).0,
            RunVerdict::Pass
        );
        assert_eq!(outcome(Some(exit::PASS), None, None).0, RunVerdict::Error);
        assert_eq!(
            outcome(Some(exit::PASS), None, Some(&report(Verdict::Fail))).0,
            RunVerdict::Fail
        );
        let (v, r) = outcome(Some(exit::FAIL), None, Some(&report(Verdict::Fail)));
        assert_eq!(v, RunVerdict::Fail);
        assert_eq!(r.as_deref(), Some("failed: upgrade"));
        assert_eq!(outcome(Some(exit::FAIL), None, None).0, RunVerdict::Fail);
        assert_eq!(
            outcome(Some(exit::BAD_INPUT), None, None).0,
            RunVerdict::Error
        );
        assert!(
            outcome(Some(exit::INFRA), None, None)
                .1
                .unwrap()
                .contains("infrastructure")
        );
        assert_eq!(
            outcome(Some(exit::INFRA), None, Some(&report(Verdict::Pass))).0,
            RunVerdict::Error
        );
        assert!(outcome(None, Some(9), None).1.unwrap().contains("signal 9"));
    }
}
