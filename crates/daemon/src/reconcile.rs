//! Reconciliation at start-up: runs a previous daemon left `running` died with it.

use std::sync::Arc;

use crate::error::DaemonError;
use crate::render;
use crate::runner;
use crate::state::State;
use crate::store::{RunState, RunVerdict};

/// Runs a previous daemon left `running` died with it: re-queue once, else report an error.
/// Their deployments are removed by the start-up gc, which runs before any run starts.
pub(crate) fn reconcile_interrupted(state: &Arc<State>) -> Result<(), DaemonError> {
    for run in state.store.runs_in_state(RunState::Running)? {
        let dir = runner::run_dir(&state.settings.state_dir, run.id);
        // Through the run's own log sink: redacted, and followers of the log see the note.
        let note = |text: &str| {
            if let Ok(sink) = runner::LogSink::open(state.clone(), &dir.join(crate::state::RUN_LOG))
            {
                sink.line(&format!("cc-ci: {text}"));
            }
        };
        if run.requeues < state.settings.config.daemon.max_requeues {
            note("the daemon stopped during this run; it was torn down and re-queued");
            state.store.requeue_run(run.id)?;
            tracing::warn!(run_id = run.id, recipe = %render::recipe_of(&run.repo), pr = run.pr, "run interrupted by a daemon stop: re-queued");
        } else {
            let reason =
                "the daemon stopped during this run (it was torn down; re-queued too often)";
            note(reason);
            state
                .store
                .finish_run(run.id, RunVerdict::Error, Some(reason), None)?;
            tracing::error!(run_id = run.id, recipe = %render::recipe_of(&run.repo), pr = run.pr, "run interrupted by a daemon stop: reported as error");
        }
    }
    Ok(())
}
