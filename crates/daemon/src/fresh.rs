//! Reuse and drift in the daemon (issue 15). Before a run deploys, the current inputs of the pull
//! request's head are resolved (no deploy, one registry request per image); when the last result
//! for the same pull request and stages still holds, it is reported again at once. A periodic
//! sweep re-resolves the inputs of the latest result of each open pull request; an image digest
//! that moved queues a re-run and says on the pull request what moved.
//!
//! Hooks: `runner::supervise` calls [`try_reuse`] once before spawning the run; `start.rs`
//! spawns [`drift_loop`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cc_ci_harness::drift;
use cc_ci_harness::fresh::{self, Freshness, Stale};
use cc_ci_harness::inputs::{self, Inputs, Want};
use cc_ci_harness::lifecycle::{Stage, work_dir};
use cc_ci_harness::report::Reused;

use crate::state::{State, run_dir};
use crate::store::{NewTrigger, RunRow, RunState, RunVerdict, now};

/// The trigger source of a re-run the drift sweep queued.
pub const DRIFT_SOURCE: &str = "drift";

// The force word and the stage list without it are trigger parsing (crate::trigger), so the
// renderers need not import this module.
pub use crate::trigger::{FORCE_WORD, forced, run_stages};

/// The repository a run clones (the forge's current name of the pull request's repository).
pub(crate) fn recipe_source(shared: &State, run: &RunRow) -> String {
    let repo_now = shared
        .forge
        .current_name(run.forge_repo.as_deref().unwrap_or(&run.repo));
    format!(
        "{}/{}.git",
        shared.settings.config.forge.url.trim_end_matches('/'),
        repo_now
    )
}

fn stage_list(stages: &[String]) -> Vec<Stage> {
    let words = run_stages(stages);
    if words.is_empty() {
        return Stage::ALL.to_vec();
    }
    Stage::parse_list(&words.join(",")).unwrap_or_else(|_| Stage::ALL.to_vec())
}

/// What `abra --version` says now (one call answers a whole sweep).
async fn current_abra_version(shared: &State) -> Option<String> {
    let host = &shared.settings.host;
    let harness = &shared.settings.config.harness;
    let scratch = work_dir(harness, host).join("inputs");
    inputs::abra_version(None, harness, &scratch, host).await
}

/// What the run would be made of now, with abra at `abra_version`.
async fn current_inputs(
    shared: &State,
    run: &RunRow,
    abra_version: Option<String>,
) -> Result<Inputs, String> {
    // The daemon's environment is a run's (its runs inherit it), read once by the edge.
    let host = &shared.settings.host;
    let harness = &shared.settings.config.harness;
    let scratch = work_dir(harness, host).join("inputs");
    let want = Want {
        source: recipe_source(shared, run),
        git_ref: run.head_sha.clone(),
        base: None,
        stages: stage_list(&run.stages),
        config: harness.clone(),
        shipped_overlays: inputs::shipped_overlays(host),
        abra_version,
    };
    let engine = cc_ci_harness::engine::Engine::connect(host.docker_host.as_deref())
        .map_err(|e| e.to_string())?
        .with_timeout(Duration::from_secs(
            shared.settings.config.harness.engine_timeout_secs,
        ));
    inputs::resolve(&want, &scratch, &engine)
        .await
        .map_err(|e| e.to_string())
}

/// The latest finished pass/fail run of the same pull request and stages (other than `run`) whose
/// report recorded its inputs, with that report.
fn last_result(shared: &State, run: &RunRow) -> Option<(RunRow, drift::Tracked)> {
    let stages = run_stages(&run.stages);
    let runs = shared.store.list_runs(2000).ok()?;
    runs.into_iter()
        .filter(|r| {
            r.id != run.id
                && r.repo.eq_ignore_ascii_case(&run.repo)
                && r.pr == run.pr
                && r.state == RunState::Done
                && matches!(r.verdict, Some(RunVerdict::Pass | RunVerdict::Fail))
                && run_stages(&r.stages) == stages
        })
        .find_map(|r| {
            let t = drift::read_result(&run_dir(&shared.settings.state_dir, r.id))?;
            Some((r, t))
        })
}

/// Before deploying: when the last result for the same pull request and stages still holds, copy
/// it into this run's folder marked as reused and return the verdict to finish with. `None`: run.
pub(crate) async fn try_reuse(
    shared: &Arc<State>,
    run: &RunRow,
    dir: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Option<(RunVerdict, Option<String>)> {
    if forced(&run.stages) {
        log("cc-ci: `!testme fresh`: running without looking for an earlier result");
        return None;
    }
    let (prev, tracked) = last_result(shared, run)?;
    let abra_version = current_abra_version(shared).await;
    let current = match current_inputs(shared, run, abra_version).await {
        Ok(i) => i,
        Err(e) => {
            log(&format!(
                "cc-ci: cannot resolve the current inputs ({e}): running"
            ));
            return None;
        }
    };
    let age = drift::age(
        prev.finished_at.unwrap_or(0).max(0) as u64,
        now().max(0) as u64,
    );
    let verdict = fresh::freshness(
        &tracked.inputs,
        &current,
        age,
        drift::max_age(shared.settings.config.daemon.reuse_max_age_secs),
    );
    if let Freshness::Stale(_) = &verdict {
        log(&format!(
            "cc-ci: the result of run #{} does not hold any more ({}): running",
            prev.id,
            verdict.describe()
        ));
        return None;
    }
    // A reused result names the run that made it, not an intermediate reuse.
    let origin = tracked.report.reused.clone().unwrap_or_else(|| Reused {
        run: prev.id,
        finished: crate::render::time(prev.finished_at.unwrap_or(0)),
        url: format!(
            "{}/runs/{}",
            shared
                .settings
                .config
                .daemon
                .public_url
                .trim_end_matches('/'),
            prev.id
        ),
    });
    let mut report = tracked.report.clone();
    report.reused = Some(origin.clone());
    let written = serde_json::to_string_pretty(&report)
        .map_err(|e| e.to_string())
        .and_then(|text| std::fs::write(dir.join("run.json"), text).map_err(|e| e.to_string()))
        .and_then(|()| {
            std::fs::write(dir.join("summary.md"), report.summary_markdown(None))
                .map_err(|e| e.to_string())
        })
        .and_then(|()| {
            std::fs::write(dir.join("junit.xml"), report.junit_xml()).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        log(&format!(
            "cc-ci: cannot copy the earlier result ({e}): running"
        ));
        for f in ["run.json", "summary.md", "junit.xml"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        return None;
    }
    let reason = format!(
        "unchanged since run #{} ({}): same commit, images, abra and cc-ci",
        origin.run, origin.finished
    );
    log(&format!(
        "cc-ci: {reason}: reported again without deploying"
    ));
    let verdict = prev.verdict.unwrap_or(RunVerdict::Pass);
    // A failure's status keeps saying what failed (it is cut to one line).
    let reason = match (verdict, &prev.reason) {
        (RunVerdict::Fail, Some(failed)) => format!(
            "{}; unchanged since run #{} ({})",
            // A reused failure's reason already says since when.
            failed
                .split("; unchanged since run #")
                .next()
                .unwrap_or(failed),
            origin.run,
            origin.finished
        ),
        _ => reason,
    };
    Some((verdict, Some(reason)))
}

/// The periodic drift sweep (`daemon.drift_interval_secs`; 0 = off).
pub(crate) async fn drift_loop(shared: Arc<State>) {
    let every = shared.settings.config.daemon.drift_interval_secs;
    if every == 0 {
        return;
    }
    // Results already re-queued by this daemon: the queued trigger becomes a run a moment later,
    // and a sweep in between must not queue a second one.
    let mut requeued = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        sweep_once(&shared, &mut requeued).await;
    }
}

/// One sweep: the latest result of each pull request the store knows, at its last known head,
/// judged again; a moved image digest of an open pull request queues a re-run, announced on the
/// pull request with what moved.
pub(crate) async fn sweep_once(
    shared: &Arc<State>,
    requeued: &mut std::collections::HashSet<i64>,
) -> Vec<(String, i64, Freshness)> {
    let mut out = Vec::new();
    let Ok(heads) = shared.store.pr_heads() else {
        return out;
    };
    // Once per sweep, not per pull request: the runs the store knows, and abra's version
    // (asked only when some result is judged).
    let Ok(all_runs) = shared.store.list_runs(2000) else {
        return out;
    };
    let mut abra_version: Option<Option<String>> = None;
    for (repo, pr, head) in heads {
        // Latest result for any stages of this pull request at its head.
        let runs = &all_runs;
        // Something queued or running for it already answers the question.
        if runs
            .iter()
            .any(|r| r.repo.eq_ignore_ascii_case(&repo) && r.pr == pr && r.state != RunState::Done)
        {
            continue;
        }
        let Some(latest) = runs.iter().find(|r| {
            r.repo.eq_ignore_ascii_case(&repo)
                && r.pr == pr
                && r.head_sha.eq_ignore_ascii_case(&head)
                && r.state == RunState::Done
                && matches!(r.verdict, Some(RunVerdict::Pass | RunVerdict::Fail))
        }) else {
            continue;
        };
        if requeued.contains(&latest.id) {
            continue;
        }
        let Some(tracked) = drift::read_result(&run_dir(&shared.settings.state_dir, latest.id))
        else {
            continue;
        };
        if abra_version.is_none() {
            abra_version = Some(current_abra_version(shared).await);
        }
        let abra = abra_version.clone().flatten();
        let current = match current_inputs(shared, latest, abra).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(repo = %repo, pr, error = %e, "drift: cannot resolve the current inputs");
                continue;
            }
        };
        let age = drift::age(
            latest.finished_at.unwrap_or(0).max(0) as u64,
            now().max(0) as u64,
        );
        let f = fresh::freshness(
            &tracked.inputs,
            &current,
            age,
            drift::max_age(shared.settings.config.daemon.reuse_max_age_secs),
        );
        let moved = f.moved_images();
        if !moved.is_empty() {
            // The store knows every pull request it ever saw: only an open one still at the
            // tested head is re-run (a closed one, or one that moved on, is not ours to test).
            match shared.forge.pull_request(&latest.repo, latest.pr).await {
                Ok(pr) if pr.state == "open" && pr.head.sha.eq_ignore_ascii_case(&head) => {
                    requeued.insert(latest.id);
                    requeue(shared, latest, &moved).await;
                }
                Ok(_) => {
                    requeued.insert(latest.id);
                }
                Err(e) => {
                    tracing::warn!(repo = %repo, pr, error = %e, "drift: cannot read the pull request; next sweep");
                }
            }
        }
        out.push((repo, pr, f));
    }
    out
}

/// Queues a re-run of `run` (same pull request, user and stages, forced) through the ordinary
/// intake, so authorisation and supersede apply as to a comment, and says on the pull request
/// what moved.
async fn requeue(shared: &Arc<State>, run: &RunRow, moved: &[&Stale]) {
    let what = moved
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n- ");
    let mut stages = run_stages(&run.stages);
    stages.push(FORCE_WORD.into());
    // A synthetic comment id, negative so it never meets a forge's: one per result and sweep time.
    let comment_id = -(run.id.saturating_mul(1_000_000) + (now() % 1_000_000));
    let stored = shared.store.ingest_trigger(&NewTrigger {
        source: DRIFT_SOURCE,
        delivery_id: None,
        repo: &run.repo,
        pr: run.pr,
        comment_id,
        user: &run.user,
        stages: &stages,
        unknown_stages: &[],
    });
    match stored {
        Ok(crate::store::Ingested::Stored(id)) => {
            tracing::info!(trigger = id, repo = %run.repo, pr = run.pr, from_run = run.id, "drift: an image moved, re-run queued");
            let body = format!(
                "### cc-ci: ♻️ the result of run #{} went stale\n\nAn image was re-pushed under the same tag since it ran:\n\n- {what}\n\nRunning again.\n",
                run.id
            );
            if let Err(e) = shared.forge.create_comment(&run.repo, run.pr, &body).await {
                tracing::warn!(repo = %run.repo, pr = run.pr, error = %e, "drift: cannot comment on the pull request");
            }
            shared.wake.intake.notify_one();
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(repo = %run.repo, pr = run.pr, error = %e, "drift: cannot queue a re-run")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_word_is_not_a_stage() {
        let s = vec!["install".to_string(), FORCE_WORD.to_string()];
        assert!(forced(&s));
        assert_eq!(run_stages(&s), vec!["install".to_string()]);
        assert_eq!(stage_list(&[FORCE_WORD.to_string()]), Stage::ALL.to_vec());
        assert!(!forced(&run_stages(&s)));
    }

    #[test]
    fn testme_fresh_is_a_trigger_that_forces() {
        use crate::trigger::{Command, parse_command};
        let Some(Command::Run { stages }) = parse_command("!testme install fresh") else {
            panic!("`!testme install fresh` is not a run");
        };
        assert!(forced(&stages));
        assert_eq!(run_stages(&stages), vec!["install".to_string()]);
        assert!(matches!(
            parse_command("!testme freshly"),
            Some(Command::BadStages { .. })
        ));
    }
}
