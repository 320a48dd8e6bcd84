//! The forge, as the daemon sees it: the `Forge` trait (the calls cc-ci makes), the types
//! they exchange, the HTTP client for Gitea/Forgejo (`client`), and an in-memory fake for
//! unit tests (`fake`). Intake, reporter, poller and runner only know the trait.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

mod client;
#[cfg(test)]
pub(crate) mod fake;

pub use crate::error::ForgeError;
pub use client::GiteaClient;

/// What a forge call returns (boxed, so the state can hold any forge as `dyn Forge`).
pub type ForgeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ForgeError>> + Send + 'a>>;

/// The forge operations cc-ci uses.
pub trait Forge: Send + Sync {
    /// One pull request, with its state and head.
    fn pull_request<'a>(&'a self, repo: &'a str, pr: i64) -> ForgeFuture<'a, PullRequest>;
    /// Every open pull request of `repo`.
    fn open_pull_requests<'a>(&'a self, repo: &'a str) -> ForgeFuture<'a, Vec<PullRequest>>;
    /// Comments of a pull request, all of them or those updated at or after `since` (RFC 3339).
    fn comments<'a>(
        &'a self,
        repo: &'a str,
        pr: i64,
        since: Option<&'a str>,
    ) -> ForgeFuture<'a, Vec<ApiComment>>;
    /// The login of the token's user (cc-ci's own account).
    fn own_login(&self) -> ForgeFuture<'_, String>;
    fn post_status<'a>(
        &'a self,
        repo: &'a str,
        sha: &'a str,
        status: &'a CommitStatus,
    ) -> ForgeFuture<'a, ()>;
    /// Returns the new comment's id.
    fn create_comment<'a>(&'a self, repo: &'a str, pr: i64, body: &'a str) -> ForgeFuture<'a, i64>;
    fn edit_comment<'a>(
        &'a self,
        repo: &'a str,
        comment_id: i64,
        body: &'a str,
    ) -> ForgeFuture<'a, ()>;
    /// Whether `user` is a member of `org`.
    fn is_org_member<'a>(&'a self, org: &'a str, user: &'a str) -> ForgeFuture<'a, bool>;
    /// Where `repo` lives now, as far as the forge has told (renamed or transferred).
    fn current_name(&self, repo: &str) -> String;
}

#[derive(Debug, Clone, Deserialize)]
pub struct Head {
    pub sha: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    /// Absent in some minimal API answers; the single-PR call fills it from the request.
    #[serde(default)]
    pub number: i64,
    /// `open` | `closed`; absent is taken as open.
    #[serde(default = "open")]
    pub state: String,
    pub head: Head,
}

fn open() -> String {
    "open".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiUser {
    pub login: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiComment {
    pub id: i64,
    #[serde(default)]
    pub body: String,
    pub user: ApiUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitStatus {
    pub state: StatusState,
    pub target_url: String,
    pub description: String,
    pub context: String,
}
