//! The Gitea/Forgejo REST API (`/api/v1`), only the calls cc-ci needs. Transient failures
//! (transport errors, 5xx, 429) are retried with exponential backoff; the token travels only
//! in the `Authorization` header and never appears in an error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{what}: cannot reach the forge: {message}")]
    Transport { what: String, message: String },
    #[error("{what}: the forge answered HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: unexpected answer: {message}")]
    Decode { what: String, message: String },
}

impl ForgeError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    fn transient(&self) -> bool {
        match self {
            ForgeError::Transport { .. } => true,
            ForgeError::Status { status, .. } => *status >= 500 || *status == 429,
            ForgeError::Decode { .. } => false,
        }
    }
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

#[derive(Clone)]
pub struct Forge {
    http: reqwest::Client,
    api: String,
    token: String,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forge").field("api", &self.api).finish()
    }
}

impl Forge {
    /// `url` is the forge's base URL; `attempts` tries per call, waiting `backoff`, 2×, 4×, …
    /// between them.
    pub fn new(
        url: &str,
        token: &str,
        attempts: u32,
        backoff: Duration,
    ) -> Result<Self, ForgeError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("cc-ci/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // A redirect from the membership endpoint means "not known": it must be seen.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ForgeError::Transport {
                what: "building the HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            api: format!("{}/api/v1", url.trim_end_matches('/')),
            token: token.to_string(),
            attempts: attempts.max(1),
            backoff,
        })
    }

    /// Send a request built by `build`, retrying transient failures. Returns status and body.
    async fn call(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(u16, bytes::Bytes), ForgeError> {
        let mut delay = self.backoff;
        let mut last = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                crate::metrics::forge_retry();
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            let result = build(&self.http)
                .header("Authorization", format!("token {}", self.token))
                .header("Accept", "application/json")
                .send()
                .await;
            let err = match result {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(body) if status < 400 => return Ok((status, body)),
                        Ok(body) => ForgeError::Status {
                            what: what.to_string(),
                            status,
                            body: cc_ci_harness::report::excerpt(
                                &String::from_utf8_lossy(&body),
                                200,
                            ),
                        },
                        Err(e) => ForgeError::Transport {
                            what: what.to_string(),
                            message: e.without_url().to_string(),
                        },
                    }
                }
                Err(e) => ForgeError::Transport {
                    what: what.to_string(),
                    message: e.without_url().to_string(),
                },
            };
            crate::metrics::forge_error(match err {
                ForgeError::Status { .. } => "status",
                ForgeError::Transport { .. } => "transport",
                _ => "decode",
            });
            if !err.transient() {
                return Err(err);
            }
            tracing::debug!(attempt, error = %err, "forge call failed, retrying");
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| ForgeError::Transport {
            what: what.to_string(),
            message: "no attempt made".into(),
        }))
    }

    fn decode<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, ForgeError> {
        serde_json::from_slice(body).map_err(|e| ForgeError::Decode {
            what: what.to_string(),
            message: e.to_string(),
        })
    }

    pub async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequest, ForgeError> {
        let what = format!("reading pull request {repo}#{pr}");
        let url = format!("{}/repos/{repo}/pulls/{pr}", self.api);
        let (_, body) = self.call(&what, |c| c.get(&url)).await?;
        let mut p: PullRequest = Self::decode(&what, &body)?;
        p.number = pr;
        Ok(p)
    }

    pub async fn open_pull_requests(&self, repo: &str) -> Result<Vec<PullRequest>, ForgeError> {
        const LIMIT: usize = 50;
        let mut out = Vec::new();
        for page in 1..=100 {
            let what = format!("listing open pull requests of {repo}");
            let url = format!(
                "{}/repos/{repo}/pulls?state=open&page={page}&limit={LIMIT}",
                self.api
            );
            let (_, body) = self.call(&what, |c| c.get(&url)).await?;
            let batch: Vec<PullRequest> = Self::decode(&what, &body)?;
            let n = batch.len();
            out.extend(
                batch
                    .into_iter()
                    .filter(|p| p.number > 0 && p.state == "open"),
            );
            if n < LIMIT {
                break;
            }
        }
        Ok(out)
    }

    pub async fn comments(&self, repo: &str, pr: i64) -> Result<Vec<ApiComment>, ForgeError> {
        let what = format!("listing comments of {repo}#{pr}");
        let url = format!("{}/repos/{repo}/issues/{pr}/comments", self.api);
        let (_, body) = self.call(&what, |c| c.get(&url)).await?;
        Self::decode(&what, &body)
    }

    pub async fn post_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), ForgeError> {
        let what = format!("setting commit status on {repo}@{sha}");
        let url = format!("{}/repos/{repo}/statuses/{sha}", self.api);
        self.call(&what, |c| c.post(&url).json(status)).await?;
        Ok(())
    }

    /// Returns the new comment's id.
    pub async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<i64, ForgeError> {
        #[derive(Deserialize)]
        struct Created {
            id: i64,
        }
        let what = format!("commenting on {repo}#{pr}");
        let url = format!("{}/repos/{repo}/issues/{pr}/comments", self.api);
        let payload = serde_json::json!({ "body": body });
        let (_, resp) = self.call(&what, |c| c.post(&url).json(&payload)).await?;
        Ok(Self::decode::<Created>(&what, &resp)?.id)
    }

    pub async fn edit_comment(
        &self,
        repo: &str,
        comment_id: i64,
        body: &str,
    ) -> Result<(), ForgeError> {
        let what = format!("editing comment {comment_id} on {repo}");
        let url = format!("{}/repos/{repo}/issues/comments/{comment_id}", self.api);
        let payload = serde_json::json!({ "body": body });
        self.call(&what, |c| c.patch(&url).json(&payload)).await?;
        Ok(())
    }

    /// `Some(true)` member, `Some(false)` not a member, `None` the forge would not say (a
    /// redirect: the bot cannot see private membership of that org).
    pub async fn is_org_member(&self, org: &str, user: &str) -> Result<Option<bool>, ForgeError> {
        let what = format!("checking membership of {user} in {org}");
        let url = format!("{}/orgs/{org}/members/{user}", self.api);
        match self.call(&what, |c| c.get(&url)).await {
            Ok((204, _)) | Ok((200, _)) => Ok(Some(true)),
            Ok((s, _)) if (300..400).contains(&s) => Ok(None),
            Ok((s, _)) => Err(ForgeError::Decode {
                what,
                message: format!("HTTP {s}"),
            }),
            Err(e) if e.status() == Some(404) => Ok(Some(false)),
            Err(e) => Err(e),
        }
    }
}
