//! Polling fallback for forges that cannot reach the daemon: the open pull requests of each
//! configured repository and their comments, on an interval. The first poll of a repository
//! only marks what exists as seen; later polls feed new `!testme` comments into the same
//! intake (and the same dedup by comment id) as the webhook. A changed head supersedes older
//! runs.

use cc_ci_harness::contract::short_sha;
use std::sync::Arc;
use std::time::Duration;

use crate::error::DaemonError;
use crate::intake::{IngestOutcome, ingest, process_trigger};
use crate::state::State;
use crate::store::now;
use crate::trigger::{self, CommentTrigger};

pub(crate) async fn poll_loop(shared: Arc<State>) {
    let every = Duration::from_secs(shared.settings.config.daemon.poll_interval_secs.max(1));
    loop {
        if shared.shutting_down() {
            return;
        }
        for repo in shared.settings.config.forge.poll_repos.clone() {
            if let Err(e) = poll_repo(&shared, &repo).await {
                tracing::warn!(repo = %repo, error = %e, "poll failed; trying again next interval");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
}

/// How far back each poll looks beyond the start of the last complete one: comments written
/// while that poll was running, and any clock difference between cc-ci and the forge, fall
/// inside the window; comment ids deduplicate what is seen twice.
const SINCE_OVERLAP_SECS: i64 = 600;

/// One poll of one repository: every open pull request (all pages) and its comments since the
/// last complete poll began (minus an overlap). A comment is a candidate once: its id is
/// recorded as seen, whether it was a trigger or not, so a later edit cannot turn it into one.
/// The window only advances when every pull request was read, so a failed read cannot skip a
/// trigger.
pub(crate) async fn poll_repo(shared: &Arc<State>, repo: &str) -> Result<(), DaemonError> {
    let started = now();
    let last = shared.store.poll_since(repo)?;
    let first = last.is_none();
    let since = last
        .filter(|t| *t > 0)
        .map(|t| rfc3339(t - SINCE_OVERLAP_SECS));
    let own = shared.own_login();
    let prs = shared.forge.open_pull_requests(repo).await?;
    for pr in prs {
        if let Some(old) = shared.store.update_pr_head(repo, pr.number, &pr.head.sha)?
            && trigger::is_valid_sha(&pr.head.sha)
        {
            let reason = format!(
                "new commits were pushed (head {} → {})",
                short_sha(&old),
                short_sha(&pr.head.sha)
            );
            if shared
                .store
                .supersede_pr(repo, pr.number, Some(&pr.head.sha), &reason)?
                > 0
            {
                shared.wake.scheduler.notify_one();
                shared.wake.reporter.notify_one();
            }
        }
        let comments = shared
            .forge
            .comments(repo, pr.number, since.as_deref())
            .await?;
        for c in comments {
            if first {
                shared.store.mark_comment_seen(repo, c.id)?;
                continue;
            }
            if shared.store.comment_seen(repo, c.id)? {
                continue;
            }
            let command = trigger::parse_command(&c.body);
            let own_comment = own
                .as_deref()
                .is_some_and(|o| o.eq_ignore_ascii_case(&c.user.login));
            let Some(command) = command.filter(|_| !own_comment) else {
                shared.store.mark_comment_seen(repo, c.id)?;
                continue;
            };
            if !trigger::is_valid_login(&c.user.login) {
                shared.store.mark_comment_seen(repo, c.id)?;
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
                    shared.store.mark_comment_seen(repo, c.id)?;
                    tracing::warn!(repo = %repo, "polled repository is not on forge.repo_allowlist: trigger ignored");
                }
                IngestOutcome::Duplicate(_) => {}
            }
        }
    }
    shared.store.set_poll_since(repo, started)?;
    if first {
        tracing::info!(repo = %repo, "first poll: existing comments marked as seen");
    }
    Ok(())
}

/// RFC 3339 (UTC, seconds) of Unix seconds, as the forge's `since` parameter wants it.
pub(crate) fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
