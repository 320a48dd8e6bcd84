//! The run page, its live events and the report files to download.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cc_ci_harness::report::{CheckSource, RunReport, TierReport, Verdict};
use http_body_util::combinators::BoxBody;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use tokio::sync::mpsc;

use super::{
    Body, badge, esc, html, layout, not_found, respond, run_label, span, store_error, time,
};
use crate::render::recipe_of;
use crate::runner;
use crate::state::State;
use crate::store::{RunRow, RunState};
use crate::trigger::STAGES;
use cc_ci_harness::contract::files;

/// The log on the page and each diagnostics file are cut to their last this many bytes.
const LOG_TAIL: u64 = 512 * 1024;
const DIAG_TAIL: u64 = 32 * 1024;

pub(super) fn page(shared: &Arc<State>, id: i64) -> hyper::Response<Body> {
    let run = match shared.store.get_run(id) {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&format!("There is no run #{id}.")),
        Err(e) => return store_error(&e),
    };
    let dir = runner::run_dir(&shared.settings.state_dir, id);
    let (log, log_end) = read_tail(&dir.join(crate::state::RUN_LOG), LOG_TAIL);
    let log = shared.settings.redactor.redact(&log);
    let live = run.state != RunState::Done;
    let body = format!(
        "<div id=\"live\">{}</div>\
         <section><h2>Log</h2><p class=\"hint\">{}<a href=\"/runs/{id}/log\">plain text</a></p>\
         <pre id=\"log\" class=\"log\"{}>{}</pre></section>",
        live_html(shared, &run),
        if live {
            "Follows the run while this page is open (needs JavaScript); "
        } else {
            ""
        },
        if live {
            format!(" data-events=\"/runs/{id}/events?from={log_end}\"")
        } else {
            String::new()
        },
        esc(&log),
    );
    html(
        StatusCode::OK,
        layout(
            &format!("run #{id} {}", recipe_of(&run.repo)),
            &body,
            live.then_some("live.js"),
        ),
    )
}

/// Everything on the run page except the log: re-rendered and sent while the run is live.
pub(super) fn live_html(shared: &State, run: &RunRow) -> String {
    let dir = runner::run_dir(&shared.settings.state_dir, run.id);
    let report = runner::read_report(&dir);
    let progress = runner::read_progress(&dir);
    let forge = shared.settings.config.forge.url.trim_end_matches('/');
    let repo_url = format!("{forge}/{}", run.repo);
    let pr_url = format!("{repo_url}/pulls/{}", run.pr);
    let mut out = String::new();

    out.push_str(&format!(
        "<h1>Run #{} <span id=\"state\" data-state=\"{}\">{}</span></h1>",
        run.id,
        run_label(run),
        badge(run_label(run))
    ));
    out.push_str(&facts_table(
        shared,
        run,
        report.as_ref(),
        &repo_url,
        &pr_url,
    ));

    let tiers: Vec<TierReport> = match (&report, &progress) {
        (Some(r), _) => r.tiers.clone(),
        (None, Some(p)) => p.clone(),
        _ => Vec::new(),
    };
    out.push_str(&timeline(run, &tiers));
    let (log, _) = read_tail(&dir.join(crate::state::RUN_LOG), LOG_TAIL);
    out.push_str(&steps_html(shared, run, &steps(&log)));
    out.push_str(&checks(shared, &tiers));
    if let Some(r) = &report {
        out.push_str(&teardown_and_notes(shared, r));
    }
    out.push_str(&diagnostics(shared, &dir, run));
    out.push_str(&downloads(run.id, &dir));
    out.push_str(&format!(
        "<section id=\"reproduce\"><h2>Reproduce</h2><p>On a machine set up as in the operator guide:</p>\
         <pre><code>{}</code></pre></section>",
        esc(&reproduce(forge, run))
    ));
    out
}

/// The run's facts (recipe, pull request, commit, trigger, stages, times, reason, exit code,
/// upgrade base) as a table.
fn facts_table(
    shared: &State,
    run: &RunRow,
    report: Option<&RunReport>,
    repo_url: &str,
    pr_url: &str,
) -> String {
    let red = |s: &str| esc(&shared.settings.redactor.redact(s));
    let mut facts = vec![
        (
            "recipe",
            format!(
                "<a href=\"{}\">{}</a>",
                esc(repo_url),
                red(recipe_of(&run.repo))
            ),
        ),
        (
            "pull request",
            format!(
                "<a href=\"{}\">{} #{}</a>",
                esc(pr_url),
                red(&run.repo),
                run.pr
            ),
        ),
        (
            "commit",
            format!(
                "<a href=\"{}/commit/{}\"><code>{}</code></a>",
                esc(repo_url),
                esc(&run.head_sha),
                esc(&run.head_sha)
            ),
        ),
        (
            "trigger",
            match run.trigger_comment_id {
                Some(c) => format!(
                    "<a href=\"{}#issuecomment-{c}\">!testme comment</a> by {}",
                    esc(pr_url),
                    red(&run.user)
                ),
                None => format!("by {}", red(&run.user)),
            },
        ),
        ("stages", esc(&stages(run).join(", "))),
        ("queued", time(run.created_at)),
    ];
    if let Some(s) = run.started_at {
        facts.push(("started", time(s)));
    }
    match (run.started_at, run.finished_at) {
        (Some(s), Some(f)) => {
            facts.push(("finished", time(f)));
            facts.push(("took", span(f - s)));
        }
        (Some(s), None) => facts.push(("running for", span(crate::store::now() - s))),
        _ => {}
    }
    if let Some(r) = &run.reason {
        facts.push(("reason", red(r)));
    }
    if let Some(c) = run.exit_code {
        facts.push(("exit code", c.to_string()));
    }
    if let Some(r) = report {
        if let Some(b) = &r.base_version {
            facts.push(("upgraded from", red(b)));
        }
        facts.push(("deploys", r.deploy_count.to_string()));
    }
    let mut out = String::from("<table class=\"facts\">");
    for (k, v) in facts {
        out.push_str(&format!("<tr><th>{k}</th><td>{v}</td></tr>"));
    }
    out.push_str("</table>");
    out
}

fn stages(run: &RunRow) -> Vec<String> {
    if run.stages.is_empty() {
        STAGES.iter().map(|s| s.to_string()).collect()
    } else {
        run.stages.clone()
    }
}

/// The command that runs the same tiers on the same commit by hand.
pub(super) fn reproduce(forge: &str, run: &RunRow) -> String {
    format!(
        "cc-ci run --recipe {forge}/{}.git --ref {} --stages {}",
        run.repo,
        run.head_sha,
        stages(run).join(",")
    )
}

/// One bar per tier, its length its duration; tiers not reached yet are drawn as pending (the
/// first of them as running while the run goes on). Drawn as SVG, so no inline style is needed.
fn timeline(run: &RunRow, tiers: &[TierReport]) -> String {
    let requested = stages(run);
    let mut rows: Vec<(String, &'static str, Option<u64>, usize)> = tiers
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.verdict.as_str(),
                Some(t.duration_ms),
                t.checks.len(),
            )
        })
        .collect();
    let mut first = true;
    for s in requested
        .iter()
        .filter(|s| !tiers.iter().any(|t| &t.name == *s))
    {
        let label = match run.state {
            RunState::Running if first => "running",
            RunState::Done => "not run",
            _ => "pending",
        };
        first = false;
        rows.push((s.clone(), label, None, 0));
    }
    let total: u64 = rows.iter().filter_map(|r| r.2).sum::<u64>().max(1);
    let (w, label_w, row_h) = (720u64, 90u64, 28u64);
    let bar_w = w - label_w - 110;
    let mut svg = format!(
        "<svg class=\"timeline\" viewBox=\"0 0 {w} {}\" width=\"{w}\" height=\"{}\" role=\"img\" \
         aria-label=\"tier timeline\">",
        rows.len() as u64 * row_h + 4,
        rows.len() as u64 * row_h + 4
    );
    let mut x = label_w;
    let mut table = String::from(
        "<table class=\"tiers\"><thead><tr><th>tier</th><th>verdict</th><th>duration</th><th>checks</th></tr></thead><tbody>",
    );
    for (i, (name, verdict, dur, n)) in rows.iter().enumerate() {
        let y = i as u64 * row_h + 2;
        let len = dur
            .map(|d| (d * bar_w / total).max(3))
            .unwrap_or(bar_w / 12);
        let class = match *verdict {
            "pass" | "fail" | "error" | "skipped" | "running" => *verdict,
            _ => "pending",
        };
        let dur_text = dur
            .map(|d| format!("{:.1} s", d as f64 / 1000.0))
            .unwrap_or_else(|| "–".into());
        svg.push_str(&format!(
            "<g class=\"bar {class}\"><title>{} — {} — {}</title>\
             <text x=\"0\" y=\"{}\">{}</text>\
             <rect x=\"{x}\" y=\"{}\" width=\"{len}\" height=\"{}\" rx=\"3\"></rect>\
             <text x=\"{}\" y=\"{}\">{} · {}</text></g>",
            esc(name),
            verdict,
            dur_text,
            y + 18,
            esc(name),
            y + 3,
            row_h - 8,
            x + len + 6,
            y + 18,
            verdict,
            dur_text,
        ));
        if dur.is_some() {
            x += len;
        }
        table.push_str(&format!(
            "<tr class=\"tier\" data-tier=\"{}\"><td>{}</td><td>{}</td><td>{dur_text}</td><td>{n}</td></tr>",
            esc(name),
            esc(name),
            badge(verdict)
        ));
    }
    svg.push_str("</svg>");
    table.push_str("</tbody></table>");
    format!("<section id=\"timeline\"><h2>Timeline</h2>{svg}{table}</section>")
}

/// The harness's progress lines (`[   12.3s] waiting for convergence`): seconds since the
/// run started and what it began doing then.
pub(super) fn steps(log: &str) -> Vec<(f64, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix('[')?;
            let (t, msg) = rest.split_once("s] ")?;
            let t: f64 = t.trim().parse().ok()?;
            (t.is_finite() && t >= 0.0).then(|| (t, msg.trim_end().to_string()))
        })
        .take(500)
        .collect()
}

/// What kind of step a progress line starts: waits (convergence, the stability window) are
/// what a maintainer looks for when a run was slow.
fn step_kind(msg: &str) -> &'static str {
    let m = msg.to_ascii_lowercase();
    if m.contains("waiting") || m.contains("stability window") {
        "wait"
    } else if m.starts_with("teardown") {
        "teardown"
    } else if m.contains("deploy") || m.contains("backup") || m.contains("restore") {
        "action"
    } else {
        "step"
    }
}

/// The steps on one time axis, each lasting until the next one starts (the last one until the
/// run ended, or now).
fn steps_html(shared: &State, run: &RunRow, steps: &[(f64, String)]) -> String {
    if steps.is_empty() {
        return String::new();
    }
    let last = steps.last().map(|s| s.0).unwrap_or(0.0);
    let end = match run.started_at {
        Some(s) => ((run.finished_at.unwrap_or_else(crate::store::now) - s) as f64).max(last),
        None => last,
    }
    .max(0.1);
    let (w, h) = (720.0, 22.0);
    let mut svg = format!(
        "<svg class=\"steps\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"steps\">"
    );
    let mut table = String::from(
        "<table class=\"steps\"><thead><tr><th>at</th><th>took</th><th>step</th></tr></thead><tbody>",
    );
    for (i, (t, msg)) in steps.iter().enumerate() {
        let next = steps.get(i + 1).map(|s| s.0).unwrap_or(end);
        let took = (next - t).max(0.0);
        let kind = step_kind(msg);
        let msg = esc(&shared.settings.redactor.redact(msg));
        let x = t / end * w;
        let len = (took / end * w).max(1.0);
        svg.push_str(&format!(
            "<rect class=\"{kind}\" x=\"{x:.1}\" y=\"2\" width=\"{len:.1}\" height=\"{}\"><title>{msg} ({took:.1} s)</title></rect>",
            h - 4.0
        ));
        table.push_str(&format!(
            "<tr class=\"step {kind}\"><td>{t:.1} s</td><td>{took:.1} s</td><td>{msg}</td></tr>"
        ));
    }
    svg.push_str("</svg>");
    table.push_str("</tbody></table>");
    format!(
        "<section id=\"steps\"><h2>Steps</h2><p class=\"hint\">From the run's progress lines; \
         waits (convergence, stability windows) in amber.</p>{svg}\
         <details class=\"steps\"><summary>{} steps</summary>{table}</details></section>",
        steps.len()
    )
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Fail | Verdict::Error => 0,
        Verdict::Pass => 1,
        Verdict::Skipped => 2,
    }
}

/// Every check of every tier; failing first and open.
fn checks(shared: &State, tiers: &[TierReport]) -> String {
    let mut all: Vec<(&str, &cc_ci_harness::report::CheckResult)> = tiers
        .iter()
        .flat_map(|t| t.checks.iter().map(move |c| (t.name.as_str(), c)))
        .collect();
    // Stable: within a rank, the order the harness ran them.
    all.sort_by_key(|(_, c)| rank(c.verdict));
    let failing = all.iter().filter(|(_, c)| rank(c.verdict) == 0).count();
    let mut out = format!(
        "<section id=\"checks\"><h2>Checks</h2><p class=\"hint\">{} checks, {failing} failing</p>",
        all.len()
    );
    for (tier, c) in all {
        let source = match c.source {
            CheckSource::Generic => "generic",
            CheckSource::Overlay => "overlay",
            CheckSource::RepoLocal => "repo-local",
        };
        out.push_str(&format!(
            "<details class=\"check {}\"{}><summary>{} <b>{}</b> <span class=\"tier\">{}</span> \
             <span class=\"source\">{source}</span></summary><pre>{}</pre></details>",
            c.verdict.as_str(),
            if rank(c.verdict) == 0 { " open" } else { "" },
            badge(c.verdict.as_str()),
            esc(&shared.settings.redactor.redact(&c.name)),
            esc(tier),
            esc(&shared.settings.redactor.redact(&c.detail)),
        ));
    }
    out.push_str("</section>");
    out
}

fn teardown_and_notes(shared: &State, r: &RunReport) -> String {
    let mut out = String::from("<section id=\"teardown\"><h2>Teardown</h2><p>");
    out.push_str(&match r.teardown.verdict {
        Some(v) => badge(v.as_str()),
        None => "not reached".into(),
    });
    out.push_str("</p>");
    if !r.teardown.leftovers.is_empty() {
        out.push_str("<p>Left behind:</p><ul>");
        for l in &r.teardown.leftovers {
            out.push_str(&format!(
                "<li><code>{}</code></li>",
                esc(&shared.settings.redactor.redact(l))
            ));
        }
        out.push_str("</ul>");
    }
    if !r.notes.is_empty() {
        out.push_str("<h3>Notes</h3><ul>");
        for n in &r.notes {
            out.push_str(&format!(
                "<li>{}</li>",
                esc(&shared.settings.redactor.redact(n))
            ));
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    out
}

/// The task table and service log tails the harness wrote for a failed deployment; open when
/// the run did not pass.
fn diagnostics(shared: &State, dir: &Path, run: &RunRow) -> String {
    let diag = dir.join(files::DIAGNOSTICS);
    let Ok(entries) = std::fs::read_dir(&diag) else {
        return String::new();
    };
    let mut files: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        // Regular files only: a symlink planted in a report directory is not followed.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .filter(|(n, _)| n.ends_with(".txt") || n.ends_with(".log"))
        .collect();
    if files.is_empty() {
        return String::new();
    }
    // The task table first, then the service logs by name.
    files.sort_by_key(|(n, _)| (n != "tasks.txt", n.clone()));
    let open = if run.verdict == Some(crate::store::RunVerdict::Pass) {
        ""
    } else {
        " open"
    };
    let mut out = String::from("<section id=\"diagnostics\"><h2>Diagnostics</h2>");
    for (name, path) in files {
        let (text, _) = read_tail(&path, DIAG_TAIL);
        out.push_str(&format!(
            "<details class=\"diag\"{open}><summary>{}</summary><pre>{}</pre></details>",
            esc(&name),
            esc(&shared.settings.redactor.redact(&text))
        ));
    }
    out.push_str("</section>");
    out
}

const FILES: [(&str, &str); 3] = files::SERVED;

fn downloads(id: i64, dir: &Path) -> String {
    let present: Vec<&str> = FILES
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| regular_file(&dir.join(f)))
        .collect();
    if present.is_empty() {
        return String::new();
    }
    let mut out = String::from("<section id=\"downloads\"><h2>Report files</h2><ul>");
    for f in present {
        out.push_str(&format!(
            "<li><a href=\"/runs/{id}/{f}\" download>{f}</a></li>"
        ));
    }
    out.push_str("</ul></section>");
    out
}

fn regular_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

pub(super) fn download(shared: &Arc<State>, id: i64, file: &str) -> hyper::Response<Body> {
    match shared.store.get_run(id) {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(&format!("There is no run #{id}.")),
        Err(e) => return store_error(&e),
    }
    let path = runner::run_dir(&shared.settings.state_dir, id).join(file);
    let ct = FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, c)| *c)
        .unwrap_or("application/octet-stream");
    if !regular_file(&path) {
        return not_found(&format!("Run #{id} has no {file} (yet)."));
    }
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = shared
                .settings
                .redactor
                .redact(&String::from_utf8_lossy(&bytes));
            let mut r = respond(StatusCode::OK, ct, text);
            if let Ok(v) =
                HeaderValue::from_str(&format!("attachment; filename=\"run-{id}-{file}\""))
            {
                r.headers_mut().insert("content-disposition", v);
            }
            r
        }
        Err(_) => not_found(&format!("Run #{id} has no {file} (yet).")),
    }
}

/// The last `max` bytes of a file (cut at a line start) and the file's length.
fn read_tail(path: &Path, max: u64) -> (String, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return (String::new(), 0);
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    let end = start + buf.len() as u64;
    let text = String::from_utf8_lossy(&buf);
    let text = if start > 0 {
        let cut = text.find('\n').map(|i| i + 1).unwrap_or(0);
        format!("[… earlier output cut …]\n{}", &text[cut..])
    } else {
        text.into_owned()
    };
    (text, end)
}

/// What the log holds from `pos` on, up to the last complete line unless `all` (at most
/// 64 KiB per call, so a long log goes out in pieces).
fn sse(event: &str, id: Option<u64>, data: &serde_json::Value) -> Bytes {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    Bytes::from(format!("event: {event}\n{id}data: {data}\n\n"))
}

/// Server-sent events for a run page: `log` (new log text from byte `from` on; the event id is
/// the byte offset, so a reconnecting browser resumes where it was), `live` (the page's upper
/// part re-rendered whenever it changed) and finally `done`.
pub(super) fn events(shared: Arc<State>, id: i64, from: u64) -> hyper::Response<Body> {
    match shared.store.get_run(id) {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(&format!("There is no run #{id}.")),
        Err(e) => return store_error(&e),
    }
    // A live page is a log follower like `/runs/{id}/log?follow`: the same limit holds.
    let Ok(permit) = shared.limits.log_followers.clone().try_acquire_owned() else {
        let mut r = respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"too many log followers, try again shortly\n"),
        );
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let path = runner::run_dir(&shared.settings.state_dir, id).join(crate::state::RUN_LOG);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let mut epoch = shared.wake.log_epoch.subscribe();
        let mut pos = from;
        let mut last_live = String::new();
        loop {
            // The state before reading, so that a finished run's last lines are sent.
            let run = match shared.store.get_run(id) {
                Ok(Some(r)) => r,
                _ => return,
            };
            let done = run.state == RunState::Done;
            loop {
                let chunk = runner::read_log_from(&path, pos, !done);
                if chunk.is_empty() {
                    break;
                }
                pos += chunk.len() as u64;
                let text = shared
                    .settings
                    .redactor
                    .redact(&String::from_utf8_lossy(&chunk));
                if tx.send(sse("log", Some(pos), &text.into())).await.is_err() {
                    return;
                }
            }
            let live = live_html(&shared, &run);
            if live != last_live {
                let msg = serde_json::json!({ "html": live });
                if tx.send(sse("live", None, &msg)).await.is_err() {
                    return;
                }
                last_live = live;
            }
            if done {
                let _ = tx
                    .send(sse(
                        "done",
                        None,
                        &serde_json::json!({"state": run_label(&run)}),
                    ))
                    .await;
                return;
            }
            tokio::select! {
                _ = epoch.changed() => {}
                // Files are also written by processes outside the daemon (the run's
                // progress.json): look again now and then even without a log line.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let mut r = respond(StatusCode::OK, "text/event-stream", Bytes::new());
    *r.body_mut() = BoxBody::new(super::ChannelBody(rx));
    // A run page stays open as long as the run goes: no connection deadline for it.
    r.extensions_mut().insert(crate::state::Streaming);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_pages_live_events_are_exempt_from_the_connection_deadline() {
        let (state, _fake, _dir) = crate::testing::state(|_| {});
        let run = crate::testing::queued_run(&state, 9);
        let r = events(state.clone(), run, 0);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.extensions().get::<crate::state::Streaming>().is_some(),
            "a live page would be cut after the connection deadline and reconnect"
        );
        // An unknown run is answered at once, and is no stream.
        let missing = events(state, run + 100, 0);
        assert!(
            missing
                .extensions()
                .get::<crate::state::Streaming>()
                .is_none()
        );
    }

    #[test]
    fn progress_lines_become_steps() {
        let log = "cc-ci: run #1\n[    0.0s] run of web\n[   12.5s] waiting for convergence\n\
                   noise [1s] no\n[   40.0s] stability window: no restarts for 30 s\n[x] bad\n";
        let s = steps(log);
        assert_eq!(
            s,
            vec![
                (0.0, "run of web".to_string()),
                (12.5, "waiting for convergence".to_string()),
                (40.0, "stability window: no restarts for 30 s".to_string()),
            ]
        );
        assert_eq!(step_kind(&s[1].1), "wait");
        assert_eq!(step_kind(&s[2].1), "wait");
        assert_eq!(step_kind("install: deploying head abc"), "action");
    }
}
