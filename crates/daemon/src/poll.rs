//! Polling fallback for forges that cannot reach the daemon: the open pull requests of each
//! configured repository and their comments, on an interval. The first poll of a repository
//! only marks what exists as seen; later polls feed new `!testme` comments into the same
//! intake (and the same dedup) as the webhook. A changed head supersedes older runs.

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::{IngestOutcome, Shared, ingest, process_trigger};
use crate::error::DaemonError;
use crate::trigger::{self, CommentTrigger};

pub(crate) async fn poll_loop(shared: Arc<Shared>) {
    let every = Duration::from_secs(shared.config.daemon.poll_interval_secs.max(1));
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if shared.shutting_down() {
            return;
        }
        for repo in shared.config.forge.poll_repos.clone() {
            if let Err(e) = poll_repo(&shared, &repo).await {
                tracing::warn!(repo = %repo, error = %e, "poll failed; trying again next interval");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// One poll of one repository. The comment watermark only advances when every pull request
/// was read, so a failed read cannot skip a trigger.
pub(crate) async fn poll_repo(shared: &Arc<Shared>, repo: &str) -> Result<(), DaemonError> {
    let watermark = shared.store.poll_watermark(repo)?;
    let first = watermark.is_none();
    let mut high = watermark.unwrap_or(0);
    let prs = shared.forge.open_pull_requests(repo).await?;
    for pr in prs {
        if let Some(old) = shared.store.update_pr_head(repo, pr.number, &pr.head.sha)?
            && trigger::is_valid_sha(&pr.head.sha)
        {
            let reason = format!(
                "new commits were pushed (head {} → {})",
                old.get(..10).unwrap_or(&old),
                pr.head.sha.get(..10).unwrap_or(&pr.head.sha)
            );
            if shared
                .store
                .supersede_pr(repo, pr.number, Some(&pr.head.sha), &reason)?
                > 0
            {
                shared.wake_scheduler.notify_one();
                shared.wake_reporter.notify_one();
            }
        }
        let comments = shared.forge.comments(repo, pr.number).await?;
        for c in comments {
            high = high.max(c.id);
            if first {
                shared.store.mark_comment_seen(repo, c.id)?;
                continue;
            }
            if c.id <= watermark.unwrap_or(0) {
                continue;
            }
            let Some(command) = trigger::parse_command(&c.body) else {
                continue;
            };
            if !trigger::is_valid_login(&c.user.login) {
                continue;
            }
            let t = CommentTrigger {
                repo: repo.to_string(),
                pr: pr.number,
                comment_id: c.id,
                user: c.user.login.clone(),
                command,
            };
            match ingest(shared, "poll", None, &t)? {
                IngestOutcome::Stored(id) => {
                    process_trigger(shared, id).await?;
                }
                IngestOutcome::RepoNotAllowed => {
                    tracing::warn!(repo = %repo, "polled repository is not on forge.repo_allowlist: trigger ignored");
                }
                IngestOutcome::Duplicate(_) => {}
            }
        }
    }
    shared.store.set_poll_watermark(repo, high)?;
    if first {
        tracing::info!(repo = %repo, watermark = high, "first poll: existing comments marked as seen");
    }
    Ok(())
}
