//! What the forge shows for a run: the commit status and the pull-request comment, derived
//! from the run's row and its report files. Pure: the same inputs always give the same text,
//! which is what lets the reporter post only what changed.

use cc_ci_harness::report::{RunReport, TierReport, Verdict, excerpt};

use crate::forge::StatusState;
use crate::store::{RunRow, RunState, RunVerdict};
use crate::trigger::STAGES;
use cc_ci_harness::contract::short_sha;

/// Where the forge should link to.
#[derive(Debug, Clone)]
pub struct Links {
    pub run_url: String,
    pub log_url: String,
}

impl Links {
    pub fn for_run(public_url: &str, id: i64) -> Self {
        let base = public_url.trim_end_matches('/');
        Self {
            run_url: format!("{base}/runs/{id}"),
            log_url: format!("{base}/runs/{id}/log"),
        }
    }
}

/// The recipe a pull request tests is the repository's name.
pub fn recipe_of(repo: &str) -> &str {
    repo.rsplit('/').next().unwrap_or(repo)
}

fn requested_stages(run: &RunRow) -> Vec<String> {
    let stages = crate::trigger::run_stages(&run.stages);
    if stages.is_empty() {
        STAGES.iter().map(|s| s.to_string()).collect()
    } else {
        stages
    }
}

/// Commit status state and description (kept short: Gitea shows it in one line).
pub fn status(run: &RunRow) -> (StatusState, String) {
    let (state, text) = match (run.state, run.verdict) {
        (RunState::Queued, _) => (StatusState::Pending, format!("queued (run #{})", run.id)),
        (RunState::Running, _) => (StatusState::Pending, format!("running (run #{})", run.id)),
        (RunState::Done, Some(RunVerdict::Pass)) => (
            StatusState::Success,
            match &run.reason {
                // A reused result says so (crate::fresh).
                Some(r) => format!("passed: {r} (run #{})", run.id),
                None => format!("passed (run #{})", run.id),
            },
        ),
        (RunState::Done, Some(RunVerdict::Fail)) => (
            StatusState::Failure,
            format!(
                "{} (run #{})",
                run.reason.as_deref().unwrap_or("failed"),
                run.id
            ),
        ),
        (RunState::Done, Some(RunVerdict::Cancelled)) => (
            StatusState::Error,
            format!(
                "cancelled: {} (run #{})",
                run.reason.as_deref().unwrap_or("cancelled"),
                run.id
            ),
        ),
        (RunState::Done, _) => (
            StatusState::Error,
            format!(
                "error: {} (run #{})",
                run.reason.as_deref().unwrap_or("the run did not finish"),
                run.id
            ),
        ),
    };
    (state, excerpt(&text, 120))
}

/// Whether the harness's own report tells the same story as the daemon's verdict; only then
/// is its summary used as the comment (an aborted run never shows a harness "pass").
fn report_agrees(run: &RunRow, report: &RunReport) -> bool {
    matches!(
        (run.verdict, report.verdict),
        (Some(RunVerdict::Pass), Verdict::Pass)
            | (Some(RunVerdict::Fail), Verdict::Fail)
            | (Some(RunVerdict::Error), Verdict::Error)
    )
}

fn icon(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "✅ pass",
        Verdict::Fail => "❌ fail",
        Verdict::Skipped => "⏭️ skipped",
        Verdict::Error => "⚠️ error",
    }
}

fn tier_table(
    done: &[TierReport],
    requested: &[String],
    pending_label: &str,
    first_label: &str,
) -> String {
    let mut out = String::from("| tier | verdict | duration |\n|---|---|---|\n");
    for t in done {
        out.push_str(&format!(
            "| {} | {} | {:.1} s |\n",
            t.name,
            icon(t.verdict),
            t.duration_ms as f64 / 1000.0
        ));
    }
    let mut first = true;
    for s in requested
        .iter()
        .filter(|s| !done.iter().any(|t| &t.name == *s))
    {
        let label = if first { first_label } else { pending_label };
        first = false;
        out.push_str(&format!("| {s} | {label} | |\n"));
    }
    out
}

/// `log_word`: None when the text above already links the log.
fn footer(run: &RunRow, links: &Links, log_word: Option<&str>) -> String {
    let log = log_word
        .map(|w| format!(" · [{w}]({})", links.log_url))
        .unwrap_or_default();
    format!(
        "\nRun [#{}]({}) · requested by @{}{log}\n<!-- cc-ci run {} -->\n",
        run.id, links.run_url, run.user, run.id
    )
}

/// The pull-request comment for a run in its current state.
///
/// `report` is `run.json` when the run wrote one, `progress` the tiers of `progress.json`,
/// `log_tail` the last lines of the run log (shown for errors without a report).
pub fn comment(
    run: &RunRow,
    report: Option<&RunReport>,
    progress: Option<&[TierReport]>,
    log_tail: Option<&str>,
    links: &Links,
) -> String {
    let recipe = recipe_of(&run.repo);
    let requested = requested_stages(run);
    let stages_text = if crate::trigger::run_stages(&run.stages).is_empty() {
        "all stages".to_string()
    } else {
        crate::trigger::run_stages(&run.stages).join(", ")
    };
    match run.state {
        RunState::Queued => {
            let mut out = format!(
                "### cc-ci: ⏳ queued — `{recipe}` at `{}`\n\nStages: {stages_text}.\n",
                short_sha(&run.head_sha)
            );
            if run.requeues > 0 {
                out.push_str("\nRe-queued after the daemon was interrupted.\n");
            }
            out.push_str(&footer(run, links, Some("log")));
            out
        }
        RunState::Running => {
            let done = progress.unwrap_or(&[]);
            format!(
                "### cc-ci: ⏳ running — `{recipe}` at `{}`\n\n{}{}",
                short_sha(&run.head_sha),
                tier_table(done, &requested, "⏸️ waiting", "⏳ running"),
                footer(run, links, Some("live log"))
            )
        }
        RunState::Done => {
            if let Some(r) = report
                && report_agrees(run, r)
            {
                let mut out = r.summary_markdown(Some(&links.log_url));
                out.push_str(&footer(run, links, None));
                return out;
            }
            let headline = match run.verdict {
                Some(RunVerdict::Cancelled) => "🛑 cancelled",
                Some(RunVerdict::Fail) => "❌ fail",
                // A pass without an agreeing report cannot be shown as a pass.
                _ => "⚠️ error",
            };
            let mut out = format!(
                "### cc-ci: {headline} — `{recipe}` at `{}`\n\n",
                short_sha(&run.head_sha)
            );
            if let Some(reason) = &run.reason {
                out.push_str(&format!("**Reason:** {}\n\n", excerpt(reason, 500)));
            }
            let done: &[TierReport] = match (report, progress) {
                (Some(r), _) => &r.tiers,
                (None, Some(p)) => p,
                (None, None) => &[],
            };
            if !done.is_empty() || run.started_at.is_some() {
                out.push_str(&tier_table(done, &requested, "— not run", "— not run"));
            }
            if let (Some(tail), Some(RunVerdict::Error) | Some(RunVerdict::Pass)) =
                (log_tail, run.verdict)
                && report.is_none()
                && !tail.trim().is_empty()
            {
                out.push_str("\n<details><summary>End of the log</summary>\n\n```text\n");
                out.push_str(&tail.replace("```", "'''"));
                if !tail.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("```\n</details>\n");
            }
            out.push_str(&footer(run, links, Some("log")));
            out
        }
    }
}

/// The reply to a trigger that will not run.
pub fn unauthorised_reply(user: &str) -> String {
    format!(
        "@{user}: cc-ci runs are started only by members of the allowed organisations or \
         allowlisted users. Ask a maintainer to comment `!testme`."
    )
}

pub fn bad_stages_reply(user: &str, unknown: &[String]) -> String {
    format!(
        "@{user}: unknown stage(s) {} — use `!testme` alone or followed by some of: {}.",
        unknown
            .iter()
            // The commenter's text, quoted so that it cannot mention or embed anything.
            .map(|s| cc_ci_harness::report::code_span(&excerpt(s, 40)))
            .collect::<Vec<_>>()
            .join(", "),
        STAGES.join(", ")
    )
}

/// The last `n` lines of `text`, each cut to a sane width.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| excerpt(l, 200))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `2026-11-30 12:05:09 UTC` from unix seconds.
pub(crate) fn time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cc_ci_harness::report::{CheckResult, TeardownReport};

    fn run(state: RunState, verdict: Option<RunVerdict>) -> RunRow {
        RunRow {
            id: 7,
            repo: "coop/web".into(),
            pr: 3,
            head_sha: "0123456789abcdef".into(),
            user: "alice".into(),
            stages: vec![],
            state,
            verdict,
            reason: None,
            exit_code: None,
            requeues: 0,
            cancel_requested: None,
            created_at: 0,
            started_at: Some(1),
            finished_at: None,
            trigger_comment_id: Some(1),
            comment_id: None,
            version: 1,
            synced_version: 0,
            sync_failures: 0,
            posted_status: None,
            posted_comment_hash: None,
            forge_repo: None,
            report_error: None,
            report_given_up: false,
        }
    }

    fn tier(name: &str, v: Verdict) -> TierReport {
        TierReport {
            name: name.into(),
            verdict: v,
            duration_ms: 1500,
            checks: vec![CheckResult::generic("c", v, "detail")],
        }
    }

    fn report(v: Verdict) -> RunReport {
        RunReport {
            recipe: "web".into(),
            git_ref: "refs/pull/3/head".into(),
            head_sha: "0123456789abcdef".into(),
            base_version: None,
            app_domain: "web-abcdef.ci.local".into(),
            verdict: v,
            deploy_count: 1,
            tiers: vec![tier("install", Verdict::Pass)],
            teardown: TeardownReport {
                verdict: Some(Verdict::Pass),
                leftovers: vec![],
            },
            notes: vec![],
            abra_version: None,
            inputs: None,
            reused: None,
        }
    }

    fn links() -> Links {
        Links::for_run("http://ci.example/", 7)
    }

    #[test]
    fn statuses() {
        assert_eq!(status(&run(RunState::Queued, None)).0, StatusState::Pending);
        assert_eq!(
            status(&run(RunState::Running, None)).0,
            StatusState::Pending
        );
        assert_eq!(
            status(&run(RunState::Done, Some(RunVerdict::Pass))).0,
            StatusState::Success
        );
        assert_eq!(
            status(&run(RunState::Done, Some(RunVerdict::Fail))).0,
            StatusState::Failure
        );
        let mut c = run(RunState::Done, Some(RunVerdict::Cancelled));
        c.reason = Some("superseded by run #9".into());
        let (s, d) = status(&c);
        assert_eq!(s, StatusState::Error);
        assert!(d.contains("superseded by run #9"), "{d}");
        assert_eq!(links().log_url, "http://ci.example/runs/7/log");
    }

    #[test]
    fn running_comment_shows_progress_and_waiting_tiers() {
        let r = run(RunState::Running, None);
        let body = comment(
            &r,
            None,
            Some(&[tier("install", Verdict::Pass)]),
            None,
            &links(),
        );
        assert!(body.contains("⏳ running"), "{body}");
        assert!(body.contains("| install | ✅ pass | 1.5 s |"), "{body}");
        assert!(body.contains("| upgrade | ⏳ running | |"), "{body}");
        assert!(body.contains("| restore | ⏸️ waiting | |"), "{body}");
        assert!(body.contains("http://ci.example/runs/7/log"), "{body}");
    }

    #[test]
    fn finished_comment_uses_the_harness_summary_only_when_it_agrees() {
        let r = run(RunState::Done, Some(RunVerdict::Pass));
        let body = comment(&r, Some(&report(Verdict::Pass)), None, None, &links());
        assert!(body.contains("### cc-ci: ✅ pass"), "{body}");
        // Cancelled, but the harness wrote a passing report for the tiers it finished.
        let mut c = run(RunState::Done, Some(RunVerdict::Cancelled));
        c.reason = Some("superseded by run #8".into());
        let body = comment(&c, Some(&report(Verdict::Pass)), None, None, &links());
        assert!(body.contains("🛑 cancelled"), "{body}");
        assert!(!body.contains("cc-ci: ✅"), "{body}");
        assert!(body.contains("superseded by run #8"), "{body}");
        assert!(body.contains("| upgrade | — not run | |"), "{body}");
        // Exit 0 without run.json: never a pass.
        let p = run(RunState::Done, Some(RunVerdict::Pass));
        let body = comment(&p, None, None, Some("last line"), &links());
        assert!(body.contains("⚠️ error"), "{body}");
        assert!(!body.contains("✅"), "{body}");
    }

    #[test]
    fn error_comment_shows_the_log_tail() {
        let mut e = run(RunState::Done, Some(RunVerdict::Error));
        e.reason = Some("infrastructure error (exit 3)".into());
        let body = comment(&e, None, None, Some("docker: ```boom```"), &links());
        assert!(body.contains("exit 3"), "{body}");
        assert!(body.contains("'''boom'''"), "{body}");
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
    }

    #[test]
    fn replies_never_contain_a_trigger_line() {
        for text in [
            unauthorised_reply("bob"),
            bad_stages_reply("bob", &["!testme".into()]),
        ] {
            assert_eq!(crate::trigger::parse_command(&text), None, "{text}");
        }
    }
}
