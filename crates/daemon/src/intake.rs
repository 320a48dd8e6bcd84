//! The intake: a comment becomes a stored trigger (`ingest`, deduplicated by delivery and
//! comment), and a stored trigger becomes a queued run or a reply (`process_trigger`:
//! cc-ci's own comments dropped, the user authorised, the pull request's head read). Also the
//! check of a pull request after a push or close (`verify_pull_update`).

use cc_ci_harness::contract::short_sha;
use std::sync::Arc;
use std::time::Duration;

use crate::error::DaemonError;
use crate::forge::ForgeError;
use crate::render;
use crate::reporter;
use crate::state::State;
use crate::store::{Ingested, NewTrigger, TriggerRow, TriggerState, now};
use crate::trigger::{self, Command, CommentTrigger};

/// The outcome of deciding on one trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TriggerOutcome {
    Queued(i64),
    Unauthorised,
    BadStages,
    Dropped(String),
    /// The forge could not be asked; the trigger stays and is retried.
    Later(String),
}

/// Turn a comment into a stored trigger (dedup by delivery and comment), or say why not.
pub(crate) enum IngestOutcome {
    RepoNotAllowed,
    Duplicate(&'static str),
    Stored(i64),
}

pub(crate) fn ingest(
    state: &State,
    source: &str,
    delivery_id: Option<&str>,
    t: &CommentTrigger,
) -> Result<IngestOutcome, DaemonError> {
    if !trigger::repo_allowed(&state.settings.config.forge.repo_allowlist, &t.repo) {
        return Ok(IngestOutcome::RepoNotAllowed);
    }
    let (stages, unknown) = match &t.command {
        Command::Run { stages } => (stages.clone(), vec![]),
        Command::BadStages { unknown } => (vec![], unknown.clone()),
    };
    let r = state.store.ingest_trigger(&NewTrigger {
        source,
        delivery_id,
        repo: &t.repo,
        pr: t.pr,
        comment_id: t.comment_id,
        user: &t.user,
        stages: &stages,
        unknown_stages: &unknown,
    })?;
    Ok(match r {
        Ingested::DuplicateDelivery => IngestOutcome::Duplicate("delivery already processed"),
        Ingested::DuplicateComment => IngestOutcome::Duplicate("comment already processed"),
        Ingested::Stored(id) => {
            tracing::info!(trigger = id, repo = %t.repo, pr = t.pr, user = %t.user, source, "trigger received");
            IngestOutcome::Stored(id)
        }
    })
}

async fn authorise(state: &State, user: &str) -> Result<bool, ForgeError> {
    let f = &state.settings.config.forge;
    if trigger::user_allowed(&f.user_allowlist, user) {
        return Ok(true);
    }
    for org in &f.org_allowlist {
        if !trigger::is_valid_login(org) {
            continue;
        }
        match state.forge.is_org_member(org, user).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) if matches!(e.status(), Some(s) if s < 500 && s != 429) => {
                tracing::warn!(org = %org, error = %e, "membership check refused; treating as not a member");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Refusal replies to one user on one pull request: at most one per this many seconds.
const REPLY_QUIET_SECS: i64 = 3600;

/// Decide on one trigger: authorise, read the pull request's head, queue the run (or reply).
/// Each phase either settles the trigger (an outcome) or lets the next one go on.
pub(crate) async fn process_trigger(
    state: &Arc<State>,
    id: i64,
) -> Result<TriggerOutcome, DaemonError> {
    let _guard = state.intake_lock.lock().await;
    let Some(mut t) = state.store.get_trigger(id)? else {
        return Ok(TriggerOutcome::Dropped("unknown trigger".into()));
    };
    if let Some(done) = settled(&t) {
        return Ok(done);
    }
    if t.state == TriggerState::New
        && let Some(done) = drop_own_comment(state, &t).await?
    {
        return Ok(done);
    }
    if t.authorised.is_none() {
        match authorise(state, &t.user).await {
            Ok(ok) => {
                state.store.set_trigger_authorised(t.id, ok)?;
                t.authorised = Some(ok);
            }
            Err(e) => return Ok(later(state, &e, &t)),
        }
    }
    if t.state == TriggerState::New {
        reject_if_refused(state, &t)?;
    }
    let Some(t) = state.store.get_trigger(id)? else {
        return Ok(TriggerOutcome::Dropped("unknown trigger".into()));
    };
    if t.state == TriggerState::Rejected {
        post_reply(state, &t).await?;
        return Ok(refusal(&t));
    }
    queue_at_head(state, &t).await
}

/// Unauthorised or bad stages, for a rejected trigger.
fn refusal(t: &TriggerRow) -> TriggerOutcome {
    if t.unknown_stages.is_empty() {
        TriggerOutcome::Unauthorised
    } else {
        TriggerOutcome::BadStages
    }
}

/// The outcome of a trigger with nothing left to do.
fn settled(t: &TriggerRow) -> Option<TriggerOutcome> {
    match t.state {
        TriggerState::Accepted => Some(TriggerOutcome::Queued(t.run_id.unwrap_or(0))),
        TriggerState::Dropped => Some(TriggerOutcome::Dropped("dropped earlier".into())),
        TriggerState::Rejected if t.replied || t.reply.is_none() => Some(refusal(t)),
        _ => None,
    }
}

/// The forge could not be asked: the trigger stays and is retried with backoff.
fn later(state: &State, e: &dyn std::fmt::Display, t: &TriggerRow) -> TriggerOutcome {
    let msg = e.to_string();
    tracing::warn!(trigger = t.id, repo = %t.repo, pr = t.pr, error = %msg, "trigger: forge unavailable, will retry");
    let _ = state
        .store
        .trigger_retry_later(t.id, &msg, state.backoff_at(t.attempts));
    TriggerOutcome::Later(msg)
}

/// cc-ci's own comments never start anything (a reply quoting a `!testme` included).
async fn drop_own_comment(
    state: &State,
    t: &TriggerRow,
) -> Result<Option<TriggerOutcome>, DaemonError> {
    match state.ensure_own_login().await {
        Ok(own) if own.eq_ignore_ascii_case(&t.user) => {
            state
                .store
                .drop_trigger(t.id, "a comment by cc-ci itself")?;
            Ok(Some(TriggerOutcome::Dropped(
                "a comment by cc-ci itself".into(),
            )))
        }
        Ok(_) => Ok(None),
        // A token without the `read:user` scope cannot read its own account: go on
        // without (the bot's replies never hold a `!testme` line), rather than hold every
        // trigger back.
        Err(e)
            if e.status()
                .is_some_and(|s| (400..500).contains(&s) && s != 429) =>
        {
            tracing::warn!(error = %e, "cannot read cc-ci's own forge account (give the token the read:user scope); its own comments are recognised by their content only");
            Ok(None)
        }
        Err(e) => Ok(Some(later(state, &e, t))),
    }
}

/// Reject an unauthorised user's trigger, or one naming unknown stages, with the reply to
/// post. One refusal reply per user and pull request an hour: a refused user repeating the
/// command must not make cc-ci fill the pull request with replies.
fn reject_if_refused(state: &State, t: &TriggerRow) -> Result<(), DaemonError> {
    let reply = |text: String| -> Result<Option<String>, DaemonError> {
        let recent = state
            .store
            .replied_since(&t.repo, t.pr, &t.user, now() - REPLY_QUIET_SECS)?;
        Ok((!recent).then_some(text))
    };
    if t.authorised == Some(false) {
        tracing::info!(trigger = t.id, repo = %t.repo, pr = t.pr, user = %t.user, "trigger refused: user not authorised");
        let text = reply(render::unauthorised_reply(&t.user))?;
        state.store.reject_trigger(t.id, text.as_deref())?;
    } else if !t.unknown_stages.is_empty() {
        let text = reply(render::bad_stages_reply(&t.user, &t.unknown_stages))?;
        state.store.reject_trigger(t.id, text.as_deref())?;
    }
    Ok(())
}

/// Post a rejected trigger's reply, once (a failure is retried later).
async fn post_reply(state: &State, t: &TriggerRow) -> Result<(), DaemonError> {
    if let Some(reply) = &t.reply
        && !t.replied
    {
        match state.forge.create_comment(&t.repo, t.pr, reply).await {
            Ok(_) => state.store.trigger_replied(t)?,
            Err(e) => {
                later(state, &e, t);
            }
        }
    }
    Ok(())
}

/// Read the pull request and queue a run of its current head (or drop the trigger when the
/// pull request is gone or closed); the pending status goes out before the run can start.
async fn queue_at_head(state: &Arc<State>, t: &TriggerRow) -> Result<TriggerOutcome, DaemonError> {
    let dropped = |why: &str| -> Result<TriggerOutcome, DaemonError> {
        state.store.drop_trigger(t.id, why)?;
        Ok(TriggerOutcome::Dropped(why.into()))
    };
    let pr = match state.forge.pull_request(&t.repo, t.pr).await {
        Ok(pr) => pr,
        Err(e) if e.status() == Some(404) => return dropped("pull request not found"),
        Err(e) => return Ok(later(state, &e, t)),
    };
    if pr.state != "open" {
        return dropped("pull request is not open");
    }
    if !trigger::is_valid_sha(&pr.head.sha) {
        return dropped("pull request head is not a commit hash");
    }
    let enq = state.store.accept_trigger(t, &pr.head.sha)?;
    let _ = state.store.update_pr_head(&t.repo, t.pr, &pr.head.sha);
    tracing::info!(run_id = enq.run_id, recipe = %render::recipe_of(&t.repo), pr = t.pr, user = %t.user,
        superseded = enq.cancelled_queued.len() + enq.cancel_running.len(), "run queued");
    // The pending status goes out before the run can start, so the forge sees pending first.
    {
        let _g = state.sync_lock.lock().await;
        reporter::sync_one(state, enq.run_id).await;
    }
    state.wake.scheduler.notify_one();
    state.wake.reporter.notify_one();
    Ok(TriggerOutcome::Queued(enq.run_id))
}

/// A `pull_request` `synchronized` or `closed` delivery. Deliveries arrive out of order and
/// replays resend old payloads, so the payload's head is not believed: the pull request is
/// read from the API, and only runs testing another head than its current one are superseded
/// (all of them when it is no longer open). Retried with backoff while the forge fails; a
/// run whose pull request moved on is also stopped before it starts (runner), so a lost check
/// costs at most one run of an outdated commit.
pub(crate) async fn verify_pull_update(state: Arc<State>, repo: String, pr: i64) {
    let mut delay = state.settings.tuning.retry_base;
    for _ in 0..8 {
        match state.forge.pull_request(&repo, pr).await {
            Ok(p) => {
                let open = p.state == "open";
                if open && !trigger::is_valid_sha(&p.head.sha) {
                    return;
                }
                let _ = state.store.update_pr_head(&repo, pr, &p.head.sha);
                let (keep, reason) = if open {
                    (
                        Some(p.head.sha.as_str()),
                        format!(
                            "new commits were pushed (head is now {})",
                            short_sha(&p.head.sha)
                        ),
                    )
                } else {
                    (None, "the pull request was closed".to_string())
                };
                match state.store.supersede_pr(&repo, pr, keep, &reason) {
                    Ok(n) if n > 0 => {
                        tracing::info!(repo = %repo, pr, superseded = n, "{reason}");
                        state.wake.scheduler.notify_one();
                        state.wake.reporter.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(repo = %repo, pr, error = %e, "superseding runs"),
                }
                return;
            }
            Err(e) if e.status() == Some(404) => return,
            Err(e) => {
                tracing::warn!(repo = %repo, pr, error = %e, "cannot read the pull request after a push event; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = state.shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(300));
    }
}

pub(crate) async fn intake_loop(state: Arc<State>) {
    loop {
        if state.shutting_down() {
            return;
        }
        match state.store.due_triggers(now()) {
            Ok(due) => {
                for t in due {
                    if let Err(e) = process_trigger(&state, t.id).await {
                        tracing::error!(trigger = t.id, error = %e, "trigger");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "intake"),
        }
        state.wait_tick(&state.wake.intake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::StatusState;
    use crate::store::{RunState, RunVerdict};
    use crate::testing::{self, BOT, REPO};

    const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";
    const NEXT: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn comment(user: &str, id: i64, command: Command) -> CommentTrigger {
        CommentTrigger {
            repo: REPO.into(),
            pr: 4,
            comment_id: id,
            user: user.into(),
            command,
        }
    }

    fn testme(user: &str, id: i64) -> CommentTrigger {
        comment(user, id, Command::Run { stages: vec![] })
    }

    /// Store `t` as the webhook would, then decide on it.
    async fn take(state: &Arc<State>, t: &CommentTrigger) -> TriggerOutcome {
        match ingest(state, "webhook", None, t) {
            Ok(IngestOutcome::Stored(id)) => process_trigger(state, id)
                .await
                .unwrap_or_else(|e| panic!("process_trigger: {e}")),
            Ok(IngestOutcome::Duplicate(why)) => panic!("duplicate: {why}"),
            Ok(IngestOutcome::RepoNotAllowed) => panic!("repository not allowed"),
            Err(e) => panic!("ingest: {e}"),
        }
    }

    #[tokio::test]
    async fn an_allowed_user_queues_a_run_at_the_pull_requests_head_and_pending_goes_out() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        let TriggerOutcome::Queued(id) = take(&state, &testme("alice", 10)).await else {
            panic!("not queued")
        };
        let run = state.store.get_run(id).unwrap().unwrap();
        assert_eq!((run.state, run.head_sha.as_str()), (RunState::Queued, HEAD));
        let f = fake.state();
        assert_eq!(f.statuses.len(), 1, "{:?}", f.calls);
        let (repo, sha, status) = &f.statuses[0];
        assert_eq!((repo.as_str(), sha.as_str()), (REPO, HEAD));
        assert_eq!(status.state, StatusState::Pending);
        assert_eq!(status.target_url, format!("https://ci.example/runs/{id}"));
        assert_eq!(f.comments.len(), 1);
        assert_eq!(run.comment_id, Some(f.comments[0].id));
        drop(f);
        // The same comment again (a replayed delivery or a poll) is not a second trigger.
        assert!(matches!(
            ingest(&state, "poll", None, &testme("alice", 10)),
            Ok(IngestOutcome::Duplicate(_))
        ));
    }

    #[tokio::test]
    async fn a_refused_user_gets_one_reply_an_hour_and_no_run() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        assert_eq!(
            take(&state, &testme("mallory", 10)).await,
            TriggerOutcome::Unauthorised
        );
        assert_eq!(
            take(&state, &testme("mallory", 11)).await,
            TriggerOutcome::Unauthorised
        );
        let f = fake.state();
        assert_eq!(f.comments.len(), 1, "one reply: {:?}", f.comments);
        assert!(
            f.comments[0].body.contains("@mallory"),
            "{}",
            f.comments[0].body
        );
        assert!(f.statuses.is_empty());
        assert!(
            !f.calls.iter().any(|c| c.starts_with("pull_request")),
            "{:?}",
            f.calls
        );
        drop(f);
        assert_eq!(state.store.counts().unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn unknown_stages_are_answered_not_run() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        let bad = comment(
            "alice",
            10,
            Command::BadStages {
                unknown: vec!["nope".into()],
            },
        );
        assert_eq!(take(&state, &bad).await, TriggerOutcome::BadStages);
        assert!(fake.state().comments[0].body.contains("nope"));
        assert_eq!(state.store.counts().unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn cc_ci_own_comment_starts_nothing() {
        let (state, fake, _dir) = testing::state(|c| c.forge.user_allowlist.push(BOT.into()));
        fake.open_pull(REPO, 4, HEAD);
        assert!(matches!(
            take(&state, &testme(BOT, 10)).await,
            TriggerOutcome::Dropped(_)
        ));
        assert!(fake.state().comments.is_empty());
    }

    #[tokio::test]
    async fn an_org_member_is_allowed_and_a_non_member_is_not() {
        let (state, fake, _dir) = testing::state(|c| c.forge.org_allowlist = vec!["team".into()]);
        fake.open_pull(REPO, 4, HEAD);
        fake.state().members.insert(("team".into(), "bob".into()));
        assert!(matches!(
            take(&state, &testme("bob", 10)).await,
            TriggerOutcome::Queued(_)
        ));
        assert_eq!(
            take(&state, &testme("eve", 11)).await,
            TriggerOutcome::Unauthorised
        );
    }

    #[tokio::test]
    async fn a_missing_or_closed_pull_request_drops_the_trigger() {
        let (state, fake, _dir) = testing::state(|_| {});
        assert_eq!(
            take(&state, &testme("alice", 10)).await,
            TriggerOutcome::Dropped("pull request not found".into())
        );
        fake.open_pull(REPO, 4, HEAD);
        fake.close_pull(REPO, 4);
        assert_eq!(
            take(&state, &testme("alice", 11)).await,
            TriggerOutcome::Dropped("pull request is not open".into())
        );
        assert_eq!(state.store.counts().unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn a_forge_outage_keeps_the_trigger_for_a_later_try() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        fake.state().down = true;
        let outcome = take(&state, &testme("alice", 10)).await;
        assert!(matches!(outcome, TriggerOutcome::Later(_)), "{outcome:?}");
        assert!(
            state.store.due_triggers(now()).unwrap().is_empty(),
            "backed off"
        );
        let due = state.store.due_triggers(now() + 3600).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].attempts, 1);
        fake.state().down = false;
        assert!(matches!(
            process_trigger(&state, due[0].id).await.unwrap(),
            TriggerOutcome::Queued(_)
        ));
    }

    #[tokio::test]
    async fn a_push_supersedes_runs_of_the_old_head_and_a_close_all_of_them() {
        let (state, fake, _dir) = testing::state(|_| {});
        fake.open_pull(REPO, 4, HEAD);
        let TriggerOutcome::Queued(old) = take(&state, &testme("alice", 10)).await else {
            panic!("not queued")
        };
        fake.open_pull(REPO, 4, NEXT);
        let TriggerOutcome::Queued(new) = take(&state, &testme("alice", 11)).await else {
            panic!("not queued")
        };
        // The second trigger superseded the first already; a push check keeps the new head.
        verify_pull_update(state.clone(), REPO.into(), 4).await;
        let run = |id| state.store.get_run(id).unwrap().unwrap();
        assert_eq!(run(old).verdict, Some(RunVerdict::Cancelled));
        assert_eq!(run(new).state, RunState::Queued);
        fake.close_pull(REPO, 4);
        verify_pull_update(state.clone(), REPO.into(), 4).await;
        assert_eq!(run(new).verdict, Some(RunVerdict::Cancelled));
        assert_eq!(
            run(new).reason.as_deref(),
            Some("the pull request was closed")
        );
    }
}
