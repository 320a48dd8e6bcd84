//! The forge over HTTP: the Gitea/Forgejo REST API (`/api/v1`), only the calls cc-ci needs.
//! Transient failures (transport errors, 5xx, 429) are retried with exponential backoff; the
//! token travels only in the `Authorization` header and never appears in an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::{ApiComment, ApiUser, CommitStatus, Forge, ForgeFuture, PullRequest};
use crate::error::ForgeError;

/// What identifies an item of a list endpoint (duplicates across pages are dropped).
trait Keyed {
    fn key(&self) -> i64;
}

impl Keyed for PullRequest {
    fn key(&self) -> i64 {
        self.number
    }
}

impl Keyed for ApiComment {
    fn key(&self) -> i64 {
        self.id
    }
}

#[derive(Clone)]
pub struct GiteaClient {
    http: reqwest::Client,
    /// `scheme://host[:port]` of the forge: redirects are followed only within it, so the
    /// token never travels to another host.
    origin: String,
    api: String,
    token: String,
    attempts: u32,
    backoff: Duration,
    /// Repositories the forge said have moved (lowercase old `owner/name` → new), learnt from
    /// the redirects it answered: later calls go straight to the new place.
    moved: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for GiteaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiteaClient")
            .field("api", &self.api)
            .finish()
    }
}

/// A successful (2xx) answer.
struct Answer {
    body: bytes::Bytes,
    /// `X-Total-Count`
    total: Option<usize>,
    /// The `rel="next"` URL of the `Link` header.
    next: Option<String>,
}

/// Redirects followed per call before giving up (a loop, or a chain of renames).
const MAX_REDIRECTS: usize = 5;

/// The `rel="next"` target of a `Link` header.
fn link_next(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// `owner/name` of an API path `/api/v1/repos/{owner}/{name}/...`.
fn repo_of_api_path(path: &str) -> Option<String> {
    let rest = path.split("/api/v1/repos/").nth(1)?;
    let mut parts = rest.split('/');
    let (o, n) = (parts.next()?, parts.next()?);
    let n = n.split('?').next()?;
    (!o.is_empty() && !n.is_empty()).then(|| format!("{o}/{n}"))
}

impl GiteaClient {
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
            // Redirects are followed by `call` itself: reqwest would turn a redirected POST
            // into a GET (301) and send the token to any host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ForgeError::Transport {
                what: "building the HTTP client".into(),
                message: e.to_string(),
            })?;
        let base = url.trim_end_matches('/');
        let origin = match base.find("://") {
            Some(i) => match base[i + 3..].find('/') {
                Some(j) => base[..i + 3 + j].to_string(),
                None => base.to_string(),
            },
            None => base.to_string(),
        };
        Ok(Self {
            http,
            origin,
            api: format!("{base}/api/v1"),
            token: token.to_string(),
            attempts: attempts.max(1),
            backoff,
            moved: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Where `repo` lives now, as far as the forge has told us.
    pub fn current_name(&self, repo: &str) -> String {
        let moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        let mut name = repo.to_string();
        // Follow a chain of renames, bounded.
        for _ in 0..MAX_REDIRECTS {
            match moved.get(&name.to_ascii_lowercase()) {
                Some(n) if !n.eq_ignore_ascii_case(&name) => name = n.clone(),
                _ => break,
            }
        }
        name
    }

    /// Remember that `from` lives at `to` (a moved repository found earlier, e.g. after a
    /// restart from the run's record).
    pub fn remember_move(&self, from: &str, to: &str) {
        if !from.eq_ignore_ascii_case(to) {
            self.moved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(from.to_ascii_lowercase(), to.to_string());
        }
    }

    fn repo_url(&self, repo: &str, rest: &str) -> String {
        format!("{}/repos/{}{rest}", self.api, self.current_name(repo))
    }

    /// An absolute URL for a redirect's `Location`, only within the forge's origin.
    fn follow_target(&self, location: &str) -> Option<String> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Some(format!("{}{location}", self.origin));
        }
        let same = location
            .strip_prefix(&self.origin)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        same.then(|| location.to_string())
    }

    /// Send one request, retrying transient failures (transport, 5xx, 429) with backoff and
    /// following redirects within the forge (method and body kept; 303 turns into a GET, as it
    /// means "see this other resource"). Only a 2xx answer is success.
    async fn call(
        &self,
        what: &str,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ForgeError> {
        let mut delay = self.backoff;
        let mut last = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                crate::metrics::forge_retry();
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            let err = match self.call_once(what, method.clone(), url, body).await {
                Ok(a) => return Ok(a),
                Err(e) => e,
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

    async fn call_once(
        &self,
        what: &str,
        mut method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ForgeError> {
        let transport = |e: reqwest::Error| ForgeError::Transport {
            what: what.to_string(),
            message: e.without_url().to_string(),
        };
        let mut url = url.to_string();
        let mut body = body;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("Authorization", format!("token {}", self.token))
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            if (300..400).contains(&status) {
                let location = header("location").unwrap_or_default();
                let Some(target) = self.follow_target(&location) else {
                    return Err(ForgeError::Status {
                        what: what.to_string(),
                        status,
                        body: format!(
                            "redirect to `{}`, which is not on the forge: not followed",
                            cc_ci_harness::report::excerpt(&location, 120)
                        ),
                    });
                };
                if let (Some(from), Some(to)) = (repo_of_api_path(&url), repo_of_api_path(&target))
                    && !from.eq_ignore_ascii_case(&to)
                {
                    tracing::info!(from = %from, to = %to, "the forge says the repository moved; using its new name");
                    self.remember_move(&from, &to);
                }
                if status == 303 {
                    method = reqwest::Method::GET;
                    body = None;
                }
                url = target;
                continue;
            }
            let total = header("x-total-count").and_then(|v| v.trim().parse().ok());
            let next = header("link").and_then(|l| link_next(&l));
            let bytes = resp.bytes().await.map_err(transport)?;
            if (200..300).contains(&status) {
                return Ok(Answer {
                    body: bytes,
                    total,
                    next,
                });
            }
            return Err(ForgeError::Status {
                what: what.to_string(),
                status,
                body: cc_ci_harness::report::excerpt(&String::from_utf8_lossy(&bytes), 200),
            });
        }
        Err(ForgeError::Status {
            what: what.to_string(),
            status: 310,
            body: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn decode<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, ForgeError> {
        serde_json::from_slice(body).map_err(|e| ForgeError::Decode {
            what: what.to_string(),
            message: e.to_string(),
        })
    }

    pub async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequest, ForgeError> {
        let what = format!("reading pull request {repo}#{pr}");
        let url = self.repo_url(repo, &format!("/pulls/{pr}"));
        let a = self.call(&what, reqwest::Method::GET, &url, None).await?;
        let mut p: PullRequest = Self::decode(&what, &a.body)?;
        p.number = pr;
        Ok(p)
    }

    /// Every item of a list endpoint: page by page until the forge says there are no more
    /// (`Link` without `next`, `X-Total-Count` reached, or an empty page). The admin's
    /// `MAX_RESPONSE_ITEMS` may cap pages below the `limit` asked for, so a short page alone
    /// does not mean the end.
    async fn list_all<T: for<'de> Deserialize<'de> + Keyed>(
        &self,
        what: &str,
        first_url: String,
    ) -> Result<Vec<T>, ForgeError> {
        const MAX_PAGES: usize = 1000;
        let mut out: Vec<T> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut url = first_url;
        for page in 1..=MAX_PAGES {
            let a = self.call(what, reqwest::Method::GET, &url, None).await?;
            let batch: Vec<T> = Self::decode(what, &a.body)?;
            let n = batch.len();
            let before = out.len();
            out.extend(batch.into_iter().filter(|x| seen.insert(x.key())));
            // A page with nothing new: the server ignores `page` (or the list shifted under
            // us): what it has was read.
            if n == 0 || out.len() == before || a.total.is_some_and(|t| out.len() >= t) {
                break;
            }
            url = match a.next.and_then(|n| self.follow_target(&n)) {
                Some(next) => next,
                // No Link header: ask for the next page number ourselves.
                None => {
                    let base = url.split("&page=").next().unwrap_or(&url).to_string();
                    let sep = if base.contains('?') { '&' } else { '?' };
                    format!("{base}{sep}page={}", page + 1)
                }
            };
        }
        Ok(out)
    }

    pub async fn open_pull_requests(&self, repo: &str) -> Result<Vec<PullRequest>, ForgeError> {
        let what = format!("listing open pull requests of {repo}");
        let url = self.repo_url(repo, "/pulls?state=open&limit=50&page=1");
        let all: Vec<PullRequest> = self.list_all(&what, url).await?;
        Ok(all
            .into_iter()
            .filter(|p| p.number > 0 && p.state == "open")
            .collect())
    }

    /// Comments of a pull request, all of them or those updated at or after `since` (RFC 3339).
    pub async fn comments(
        &self,
        repo: &str,
        pr: i64,
        since: Option<&str>,
    ) -> Result<Vec<ApiComment>, ForgeError> {
        let what = format!("listing comments of {repo}#{pr}");
        let since = since
            .map(|s| format!("since={}&", s.replace(':', "%3A").replace('+', "%2B")))
            .unwrap_or_default();
        let url = self.repo_url(
            repo,
            &format!("/issues/{pr}/comments?{since}limit=50&page=1"),
        );
        self.list_all(&what, url).await
    }

    /// The login of the token's user (cc-ci's own account).
    pub async fn own_login(&self) -> Result<String, ForgeError> {
        let what = "reading the bot account (GET /user)";
        let url = format!("{}/user", self.api);
        let a = self.call(what, reqwest::Method::GET, &url, None).await?;
        Ok(Self::decode::<ApiUser>(what, &a.body)?.login)
    }

    pub async fn post_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), ForgeError> {
        let what = format!("setting commit status on {repo}@{sha}");
        let url = self.repo_url(repo, &format!("/statuses/{sha}"));
        let body = serde_json::to_value(status).map_err(|e| ForgeError::Decode {
            what: what.clone(),
            message: e.to_string(),
        })?;
        self.call(&what, reqwest::Method::POST, &url, Some(&body))
            .await?;
        Ok(())
    }

    /// Returns the new comment's id.
    pub async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<i64, ForgeError> {
        #[derive(Deserialize)]
        struct Created {
            id: i64,
        }
        let what = format!("commenting on {repo}#{pr}");
        let url = self.repo_url(repo, &format!("/issues/{pr}/comments"));
        let payload = serde_json::json!({ "body": body });
        let a = self
            .call(&what, reqwest::Method::POST, &url, Some(&payload))
            .await?;
        Ok(Self::decode::<Created>(&what, &a.body)?.id)
    }

    pub async fn edit_comment(
        &self,
        repo: &str,
        comment_id: i64,
        body: &str,
    ) -> Result<(), ForgeError> {
        let what = format!("editing comment {comment_id} on {repo}");
        let url = self.repo_url(repo, &format!("/issues/comments/{comment_id}"));
        let payload = serde_json::json!({ "body": body });
        self.call(&what, reqwest::Method::PATCH, &url, Some(&payload))
            .await?;
        Ok(())
    }

    /// Whether `user` is a member of `org`. When the bot itself is not in the org, Gitea
    /// answers the members URL with a 303 to `public_members`; `call` follows it, and a 204
    /// there means a public member.
    pub async fn is_org_member(&self, org: &str, user: &str) -> Result<bool, ForgeError> {
        let what = format!("checking membership of {user} in {org}");
        let url = format!("{}/orgs/{org}/members/{user}", self.api);
        match self.call(&what, reqwest::Method::GET, &url, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The trait is the inherent methods, boxed.
impl Forge for GiteaClient {
    fn pull_request<'a>(&'a self, repo: &'a str, pr: i64) -> ForgeFuture<'a, PullRequest> {
        Box::pin(GiteaClient::pull_request(self, repo, pr))
    }
    fn open_pull_requests<'a>(&'a self, repo: &'a str) -> ForgeFuture<'a, Vec<PullRequest>> {
        Box::pin(GiteaClient::open_pull_requests(self, repo))
    }
    fn comments<'a>(
        &'a self,
        repo: &'a str,
        pr: i64,
        since: Option<&'a str>,
    ) -> ForgeFuture<'a, Vec<ApiComment>> {
        Box::pin(GiteaClient::comments(self, repo, pr, since))
    }
    fn own_login(&self) -> ForgeFuture<'_, String> {
        Box::pin(GiteaClient::own_login(self))
    }
    fn post_status<'a>(
        &'a self,
        repo: &'a str,
        sha: &'a str,
        status: &'a CommitStatus,
    ) -> ForgeFuture<'a, ()> {
        Box::pin(GiteaClient::post_status(self, repo, sha, status))
    }
    fn create_comment<'a>(&'a self, repo: &'a str, pr: i64, body: &'a str) -> ForgeFuture<'a, i64> {
        Box::pin(GiteaClient::create_comment(self, repo, pr, body))
    }
    fn edit_comment<'a>(
        &'a self,
        repo: &'a str,
        comment_id: i64,
        body: &'a str,
    ) -> ForgeFuture<'a, ()> {
        Box::pin(GiteaClient::edit_comment(self, repo, comment_id, body))
    }
    fn is_org_member<'a>(&'a self, org: &'a str, user: &'a str) -> ForgeFuture<'a, bool> {
        Box::pin(GiteaClient::is_org_member(self, org, user))
    }
    fn current_name(&self, repo: &str) -> String {
        GiteaClient::current_name(self, repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_and_api_paths() {
        let l = "<http://f/api/v1/repos/o/r/pulls?page=2&limit=2>; rel=\"next\",<http://f/api/v1/repos/o/r/pulls?page=3&limit=2>; rel=\"last\"";
        assert_eq!(
            link_next(l).as_deref(),
            Some("http://f/api/v1/repos/o/r/pulls?page=2&limit=2")
        );
        assert_eq!(link_next("<http://f/x?page=1>; rel=\"first\""), None);
        assert_eq!(
            repo_of_api_path("http://f/api/v1/repos/new/name/statuses/abc").as_deref(),
            Some("new/name")
        );
        assert_eq!(repo_of_api_path("/api/v1/orgs/x/members/y"), None);
    }

    #[test]
    fn redirects_stay_on_the_forge() {
        let f = GiteaClient::new("https://git.example.org/sub/", "t", 1, Duration::ZERO).unwrap();
        assert_eq!(
            f.follow_target("/api/v1/repos/a/b").as_deref(),
            Some("https://git.example.org/api/v1/repos/a/b")
        );
        assert!(
            f.follow_target("https://git.example.org/api/v1/x")
                .is_some()
        );
        assert!(f.follow_target("https://evil.example/api/v1/x").is_none());
        assert!(f.follow_target("https://git.example.org.evil/x").is_none());
        assert!(f.follow_target("//evil.example/x").is_none());
        f.remember_move("Old/Repo", "new/repo");
        f.remember_move("new/repo", "newer/repo");
        assert_eq!(f.current_name("old/repo"), "newer/repo");
        assert_eq!(f.current_name("other/repo"), "other/repo");
    }
}
