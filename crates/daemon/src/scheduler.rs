//! The scheduler: answers cancel requests, and starts queued runs (once the start-up gc is
//! done) up to `daemon.concurrency`, each supervised by `runner` in a tracked task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tracing::Instrument;

use crate::error::DaemonError;
use crate::render;
use crate::runner;
use crate::state::{Cancel, State};
use crate::store::{RunState, RunVerdict};
use crate::systemd;

/// What systemd shows as the daemon's status.
pub(crate) fn status_text(running: usize, queued: usize) -> String {
    if running == 0 && queued == 0 {
        "idle".into()
    } else {
        format!("running {running}, queued {queued}")
    }
}

pub(crate) async fn scheduler_loop(state: Arc<State>) {
    let mut last_status = String::new();
    loop {
        if state.shutting_down() {
            return;
        }
        if let Err(e) = schedule_once(&state) {
            tracing::error!(error = %e, "scheduler");
        }
        if let Ok((running, queued)) = state.store.counts() {
            let text = status_text(running, queued);
            if text != last_status {
                systemd::status(&text);
                last_status = text;
            }
        }
        state.wait_tick(&state.wake.scheduler).await;
    }
}

fn schedule_once(state: &Arc<State>) -> Result<(), DaemonError> {
    for (id, run_state, reason) in state.store.cancel_requests()? {
        match run_state {
            RunState::Queued => {
                state
                    .store
                    .finish_run(id, RunVerdict::Cancelled, Some(&reason), None)?;
                tracing::info!(run_id = id, reason = %reason, "queued run cancelled");
                state.wake.reporter.notify_one();
                state.wake.log_changed();
            }
            RunState::Running => state.runs.cancel(id, &Cancel::Requested(reason)),
            RunState::Done => {}
        }
    }
    if !state.runs.gc_done.load(Ordering::SeqCst) {
        return Ok(());
    }
    loop {
        if state.runs.count() >= state.config().daemon.concurrency || state.shutting_down() {
            return Ok(());
        }
        let Some(run) = state.store.claim_next_queued()? else {
            return Ok(());
        };
        let (tx, rx) = watch::channel(None);
        if let Ok(mut active) = state.runs.active.lock() {
            active.insert(run.id, tx);
        }
        state.wake.reporter.notify_one();
        let span = tracing::info_span!("run", run_id = run.id, recipe = %render::recipe_of(&run.repo), pr = run.pr);
        let s = state.clone();
        let id = run.id;
        state.runs.tasks.spawn(
            async move {
                runner::supervise(s.clone(), run, rx).await;
                if let Ok(mut active) = s.runs.active.lock() {
                    active.remove(&id);
                }
                s.wake.log_changed();
                s.wake.scheduler.notify_one();
            }
            .instrument(span),
        );
    }
}
