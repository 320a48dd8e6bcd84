//! An in-memory forge for unit tests: pull requests, comments, statuses and org members held
//! in maps, every call recorded, and switches for an outage and for a token that may not read
//! its own account. It answers like Gitea where the daemon cares (404 for what does not exist,
//! a new id per created comment).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use super::{ApiComment, ApiUser, CommitStatus, Forge, ForgeFuture, Head, PullRequest};
use crate::error::ForgeError;

/// A comment as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FakeComment {
    pub repo: String,
    pub pr: i64,
    pub id: i64,
    pub body: String,
    pub user: String,
    /// How many times it was edited.
    pub edits: usize,
}

#[derive(Debug, Default)]
pub(crate) struct FakeState {
    /// (repo lowercased, number) → the pull request.
    pub pulls: BTreeMap<(String, i64), PullRequest>,
    pub comments: Vec<FakeComment>,
    /// (repo, sha, status), in the order posted.
    pub statuses: Vec<(String, String, CommitStatus)>,
    /// (org, user)
    pub members: BTreeSet<(String, String)>,
    /// cc-ci's own login; None: the token may not read it (403).
    pub own_login: Option<String>,
    /// Every call fails as unreachable.
    pub down: bool,
    /// Every call made, as `name args`.
    pub calls: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct FakeForge {
    state: Mutex<FakeState>,
}

fn not_found(what: String) -> ForgeError {
    ForgeError::Status {
        what,
        status: 404,
        body: "not found".into(),
    }
}

impl FakeForge {
    pub fn new(own_login: &str) -> Self {
        let f = Self::default();
        f.state().own_login = Some(own_login.to_string());
        f
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open (or update) pull request `pr` of `repo` at `head`.
    pub fn open_pull(&self, repo: &str, pr: i64, head: &str) {
        self.state().pulls.insert(
            (repo.to_ascii_lowercase(), pr),
            PullRequest {
                number: pr,
                state: "open".into(),
                head: Head { sha: head.into() },
            },
        );
    }

    pub fn close_pull(&self, repo: &str, pr: i64) {
        if let Some(p) = self.state().pulls.get_mut(&(repo.to_ascii_lowercase(), pr)) {
            p.state = "closed".into();
        }
    }

    /// Someone deletes a comment on the forge.
    pub fn delete_comment(&self, id: i64) {
        self.state().comments.retain(|c| c.id != id);
    }

    /// Record the call; the outage answer when the forge is down.
    fn enter(&self, call: String) -> Result<MutexGuard<'_, FakeState>, ForgeError> {
        let mut s = self.state();
        s.calls.push(call.clone());
        if s.down {
            return Err(ForgeError::Transport {
                what: call,
                message: "connection refused (fake forge down)".into(),
            });
        }
        Ok(s)
    }
}

impl Forge for FakeForge {
    fn pull_request<'a>(&'a self, repo: &'a str, pr: i64) -> ForgeFuture<'a, PullRequest> {
        let r = self
            .enter(format!("pull_request {repo}#{pr}"))
            .and_then(|s| {
                s.pulls
                    .get(&(repo.to_ascii_lowercase(), pr))
                    .cloned()
                    .ok_or_else(|| not_found(format!("reading pull request {repo}#{pr}")))
            });
        Box::pin(async move { r })
    }

    fn open_pull_requests<'a>(&'a self, repo: &'a str) -> ForgeFuture<'a, Vec<PullRequest>> {
        let r = self.enter(format!("open_pull_requests {repo}")).map(|s| {
            s.pulls
                .iter()
                .filter(|((r, _), p)| r.eq_ignore_ascii_case(repo) && p.state == "open")
                .map(|(_, p)| p.clone())
                .collect()
        });
        Box::pin(async move { r })
    }

    fn comments<'a>(
        &'a self,
        repo: &'a str,
        pr: i64,
        _since: Option<&'a str>,
    ) -> ForgeFuture<'a, Vec<ApiComment>> {
        let r = self.enter(format!("comments {repo}#{pr}")).map(|s| {
            s.comments
                .iter()
                .filter(|c| c.repo.eq_ignore_ascii_case(repo) && c.pr == pr)
                .map(|c| ApiComment {
                    id: c.id,
                    body: c.body.clone(),
                    user: ApiUser {
                        login: c.user.clone(),
                    },
                })
                .collect()
        });
        Box::pin(async move { r })
    }

    fn own_login(&self) -> ForgeFuture<'_, String> {
        let r = self.enter("own_login".into()).and_then(|s| {
            s.own_login.clone().ok_or_else(|| ForgeError::Status {
                what: "reading the bot account (GET /user)".into(),
                status: 403,
                body: "token does not have the read:user scope".into(),
            })
        });
        Box::pin(async move { r })
    }

    fn post_status<'a>(
        &'a self,
        repo: &'a str,
        sha: &'a str,
        status: &'a CommitStatus,
    ) -> ForgeFuture<'a, ()> {
        let r = self
            .enter(format!(
                "post_status {repo}@{sha} {}",
                status.state.as_str()
            ))
            .map(|mut s| {
                s.statuses
                    .push((repo.to_string(), sha.to_string(), status.clone()))
            });
        Box::pin(async move { r })
    }

    fn create_comment<'a>(&'a self, repo: &'a str, pr: i64, body: &'a str) -> ForgeFuture<'a, i64> {
        let r = self
            .enter(format!("create_comment {repo}#{pr}"))
            .map(|mut s| {
                let id = 1000 + s.calls.len() as i64;
                let user = s.own_login.clone().unwrap_or_else(|| "cc-ci".into());
                s.comments.push(FakeComment {
                    repo: repo.to_string(),
                    pr,
                    id,
                    body: body.to_string(),
                    user,
                    edits: 0,
                });
                id
            });
        Box::pin(async move { r })
    }

    fn edit_comment<'a>(
        &'a self,
        repo: &'a str,
        comment_id: i64,
        body: &'a str,
    ) -> ForgeFuture<'a, ()> {
        let r = self
            .enter(format!("edit_comment {repo} {comment_id}"))
            .and_then(|mut s| {
                let c = s
                    .comments
                    .iter_mut()
                    .find(|c| c.id == comment_id)
                    .ok_or_else(|| not_found(format!("editing comment {comment_id} on {repo}")))?;
                c.body = body.to_string();
                c.edits += 1;
                Ok(())
            });
        Box::pin(async move { r })
    }

    fn is_org_member<'a>(&'a self, org: &'a str, user: &'a str) -> ForgeFuture<'a, bool> {
        let r = self
            .enter(format!("is_org_member {org} {user}"))
            .map(|s| s.members.contains(&(org.to_string(), user.to_string())));
        Box::pin(async move { r })
    }

    fn current_name(&self, repo: &str) -> String {
        repo.to_string()
    }
}
