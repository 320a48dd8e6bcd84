//! The reporter: brings the forge up to date with the store. Per run, the commit status and
//! one comment, each sent only when it changed; failures are kept in the store and retried
//! with backoff, so a forge outage delays reports but loses none.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::DaemonError;
use crate::forge::CommitStatus;
use crate::render;
use crate::runner;
use crate::state::State;
use crate::store::{RunState, now};

pub(crate) async fn reporter_loop(state: Arc<State>) {
    loop {
        sync_due(&state).await;
        if state.shutting_down() {
            // Shutdown does the final flush itself once the runs have stopped.
            return;
        }
        state.wait_tick(&state.wake.reporter).await;
    }
}

/// Bring the forge up to date for every run whose view changed and whose retry is due.
pub(crate) async fn sync_due(state: &Arc<State>) {
    let due = match state.store.unsynced_runs(now()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "reporter");
            return;
        }
    };
    for run in due {
        let _g = state.sync_lock.lock().await;
        sync_one(state, run.id).await;
    }
}

/// Sync one run (caller holds `sync_lock`); failures are recorded for a later retry.
pub(crate) async fn sync_one(state: &Arc<State>, id: i64) {
    let run = match state.store.get_run(id) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(run_id = id, error = %e, "reporter");
            return;
        }
    };
    if run.version <= run.synced_version {
        return;
    }
    match sync_run(state, &run).await {
        Ok(()) => {
            let _ = state.store.sync_succeeded(id, run.version);
        }
        Err(e) => {
            let give_up =
                run.sync_failures + 1 >= i64::from(state.settings.tuning.report_attempts.max(1));
            let error = e.to_string();
            if give_up {
                tracing::error!(run_id = id, recipe = %render::recipe_of(&run.repo), pr = run.pr, error = %error,
                    failures = run.sync_failures + 1,
                    "reporting to the forge failed too often: given up; `cc-ci queue` lists the run as undelivered");
            } else {
                tracing::warn!(run_id = id, recipe = %render::recipe_of(&run.repo), pr = run.pr, error = %error,
                    "reporting to the forge failed; the result is kept and will be reported later");
            }
            let _ =
                state
                    .store
                    .sync_failed(id, state.backoff_at(run.sync_failures), &error, give_up);
        }
    }
}

fn body_hash(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// Post the commit status and create or edit the run's comment, each only when it changed.
async fn sync_run(state: &Arc<State>, run: &crate::store::RunRow) -> Result<(), DaemonError> {
    // Where the repository lives now: a redirect the forge answered for this run (or any
    // other) moved it; the run keeps reporting there, also after a restart.
    let known = run.forge_repo.as_deref().unwrap_or(&run.repo);
    let result = sync_run_at(state, run, known).await;
    let now_at = state.forge.current_name(known);
    if now_at != known {
        state.store.set_forge_repo(run.id, &now_at)?;
    }
    result
}

async fn sync_run_at(
    state: &Arc<State>,
    run: &crate::store::RunRow,
    repo: &str,
) -> Result<(), DaemonError> {
    let links = state.links(run.id);
    let (status_state, description) = render::status(run);
    let key = format!("{}|{description}", status_state.as_str());
    if run.posted_status.as_deref() != Some(&key) {
        // A newer run on the same commit owns the status context; an older run's late report
        // must not overwrite it.
        if state.store.newer_run_for_sha(run)?.is_none() {
            state
                .forge
                .post_status(
                    repo,
                    &run.head_sha,
                    &CommitStatus {
                        state: status_state,
                        target_url: links.run_url.clone(),
                        description,
                        context: state.settings.config.forge.status_context.clone(),
                    },
                )
                .await?;
        }
        state.store.set_posted_status(run.id, &key)?;
        if let (RunState::Done, Some(end)) = (run.state, run.finished_at) {
            crate::metrics::report_posted(end);
        }
    }
    let dir = runner::run_dir(&state.settings.state_dir, run.id);
    let report = runner::read_report(&dir);
    let progress = runner::read_progress(&dir);
    let tail = if run.state == RunState::Done && report.is_none() {
        std::fs::read(dir.join(crate::state::RUN_LOG))
            .ok()
            .map(|b| render::tail_lines(&String::from_utf8_lossy(&b), 15))
    } else {
        None
    };
    let body = render::comment(
        run,
        report.as_ref(),
        progress.as_deref(),
        tail.as_deref(),
        &links,
    );
    let hash = body_hash(&body);
    if run.posted_comment_hash.as_deref() != Some(&hash) {
        match run.comment_id {
            Some(cid) => match state.forge.edit_comment(repo, cid, &body).await {
                Ok(()) => {}
                // Someone deleted the comment: write a new one.
                Err(e) if e.status() == Some(404) => {
                    let cid = state.forge.create_comment(repo, run.pr, &body).await?;
                    state.store.set_comment_id(run.id, cid)?;
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let cid = state.forge.create_comment(repo, run.pr, &body).await?;
                state.store.set_comment_id(run.id, cid)?;
            }
        }
        state.store.set_posted_comment(run.id, &hash)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::StatusState;
    use crate::store::RunVerdict;
    use crate::testing::{self, HEAD, REPO};

    /// A queued run (`testing::queued_run`), reported.
    async fn queued(state: &Arc<State>, comment: i64) -> i64 {
        let run = testing::queued_run(state, comment);
        sync_due(state).await;
        run
    }

    #[tokio::test]
    async fn a_result_is_reported_once_in_the_same_comment() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        let id = queued(&state, 10).await;
        state
            .store
            .finish_run(id, RunVerdict::Fail, Some("install failed"), Some(1))
            .unwrap();
        sync_due(&state).await;
        let run = state.store.get_run(id).unwrap().unwrap();
        let calls = {
            let f = fake.state();
            assert_eq!(f.statuses.len(), 2, "{:?}", f.calls);
            assert_eq!(f.statuses[1].2.state, render::status(&run).0);
            assert_eq!(f.statuses[1].2.state, StatusState::Failure);
            assert_eq!(f.comments.len(), 1, "edited, not a second comment");
            assert_eq!(f.comments[0].edits, 1);
            assert_eq!(Some(f.comments[0].id), run.comment_id);
            f.calls.len()
        };
        assert_eq!(run.synced_version, run.version);
        // Nothing changed: nothing is sent.
        sync_due(&state).await;
        assert_eq!(fake.state().calls.len(), calls);
    }

    #[tokio::test]
    async fn a_deleted_comment_is_written_again() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        let id = queued(&state, 10).await;
        let first = state
            .store
            .get_run(id)
            .unwrap()
            .unwrap()
            .comment_id
            .unwrap();
        fake.delete_comment(first);
        state
            .store
            .finish_run(id, RunVerdict::Cancelled, Some("by hand"), None)
            .unwrap();
        sync_due(&state).await;
        let run = state.store.get_run(id).unwrap().unwrap();
        let f = fake.state();
        assert_eq!(f.comments.len(), 1);
        assert_ne!(Some(first), run.comment_id);
        assert_eq!(Some(f.comments[0].id), run.comment_id);
    }

    #[tokio::test]
    async fn an_outage_keeps_the_result_and_a_later_sync_delivers_it() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        let id = queued(&state, 10).await;
        fake.state().down = true;
        state
            .store
            .finish_run(id, RunVerdict::Error, Some("x"), None)
            .unwrap();
        sync_due(&state).await;
        let run = state.store.get_run(id).unwrap().unwrap();
        assert_eq!(run.sync_failures, 1);
        assert!(
            run.report_error
                .as_deref()
                .is_some_and(|e| e.contains("fake forge down"))
        );
        assert!(run.synced_version < run.version);
        assert_eq!(state.store.undelivered_runs().unwrap().len(), 1);
        fake.state().down = false;
        {
            let _g = state.sync_lock.lock().await;
            sync_one(&state, id).await;
        }
        let run = state.store.get_run(id).unwrap().unwrap();
        assert_eq!((run.sync_failures, run.report_error), (0, None));
        assert_eq!(
            fake.state().statuses.last().map(|s| s.2.state),
            Some(StatusState::Error)
        );
    }

    #[tokio::test]
    async fn an_older_run_leaves_the_status_of_a_newer_run_on_the_same_commit() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        let old = queued(&state, 10).await;
        let new = queued(&state, 11).await;
        // The old run was superseded (cancelled) by the new one: its comment says so, but
        // the commit status stays the new run's.
        sync_due(&state).await;
        let f = fake.state();
        assert_eq!(f.statuses.len(), 2, "{:?}", f.calls);
        assert_eq!(
            f.statuses[1].2.target_url,
            format!("https://ci.example/runs/{new}")
        );
        let old_comment = state.store.get_run(old).unwrap().unwrap().comment_id;
        let c = f
            .comments
            .iter()
            .find(|c| Some(c.id) == old_comment)
            .unwrap();
        assert!(c.edits >= 1 && c.body.contains("superseded"), "{c:?}");
    }
}
