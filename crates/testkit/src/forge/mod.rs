//! The forge double: an in-process Gitea/Forgejo speaking the API calls cc-ci makes, with the
//! payload shapes, redirects, paging and quirks of the real servers (/work/shared/reference).
//! `api` answers the API calls; `time` writes and reads Gitea's timestamps.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::hooks::{Flavour, comment_payload, deliver_comment};

mod api;
mod time;

pub use time::{parse_rfc3339, rfc3339, unix_now};

use api::{empty, resp};

/// The token the double accepts (`Authorization: token …`); anything else is a 401.
pub const TOKEN: &str = "forge-token-0123456789";
/// The head commit of the pull requests [`crate::daemon::Env`] opens.
pub const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
/// A second commit: another pull request's head, or a head that moved.
pub const SHA2: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// A commit status as posted (`POST /repos/{owner}/{repo}/statuses/{sha}`).
#[derive(Debug, Clone)]
pub struct StatusRec {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub description: String,
    pub target_url: String,
    pub context: String,
}

/// A comment on a pull request, the bot's or a person's.
#[derive(Debug, Clone)]
pub struct CommentRec {
    pub id: i64,
    pub repo: String,
    pub pr: i64,
    pub user: String,
    pub body: String,
    pub edits: usize,
    /// Unix seconds of the last change (Gitea's `updated_at`, which `since` filters on).
    pub updated: i64,
}

/// The login of the token's user: every comment the daemon writes is by this account.
pub const BOT: &str = "cc-ci-bot";

/// What the double knows, and the switches a test sets to make it misbehave.
#[derive(Default)]
pub struct ForgeState {
    /// (repo, number) → (head sha, state)
    pub prs: BTreeMap<(String, i64), (String, String)>,
    pub members: HashSet<(String, String)>,
    /// Orgs whose membership the bot cannot see (303 redirect).
    pub hidden_orgs: HashSet<String>,
    pub statuses: Vec<StatusRec>,
    pub comments: BTreeMap<i64, CommentRec>,
    pub next_comment: i64,
    /// Answer 500 to this many status posts.
    pub fail_statuses: usize,
    /// Answer 500 to every write while set.
    pub down: bool,
    pub unauthenticated: usize,
    /// Serve git repositories from here over git's "dumb" HTTP protocol (static files, no
    /// token), as `<url>/<owner>/<repo>.git/...`: the real `cc-ci run` clones from the forge.
    pub git_root: Option<PathBuf>,
    /// Paths of the git files served, in order.
    pub git_requests: Vec<String>,
    /// Renamed or transferred repositories: old `owner/name` → new. Every API call to the old
    /// name is answered with `redirect_status` and a `Location` at the new name, as Gitea does;
    /// a client that does not follow it has written nothing.
    pub renamed: BTreeMap<String, String>,
    /// 301 (Gitea 1.24) or 307 (Gitea 1.20, Forgejo 11).
    pub redirect_status: u16,
    /// The admin's `MAX_RESPONSE_ITEMS`: list endpoints cap `limit` here (Gitea's default 50).
    pub max_items: usize,
    /// Public members of orgs (`/orgs/{org}/public_members/{user}`).
    pub public_members: HashSet<(String, String)>,
    /// Every API answer waits this long first (a slow forge).
    pub delay: Duration,
    /// Where to deliver `issue_comment` events for comments the bot writes or edits, as Gitea
    /// does for every comment (the daemon's webhook); the answers are kept in `hook_answers`.
    pub hook: Option<SocketAddr>,
    pub hook_answers: Vec<(u16, String)>,
    /// Every API request: (method, path with query).
    pub requests: Vec<(String, String)>,
    /// Comments written while a poll is in the middle of reading: when the comments of pull
    /// request `.0` are listed, `(repo, pr, user, body)` is added first.
    pub inject_when_listing: Vec<(i64, (String, i64, String, String))>,
    pub deliveries_sent: u64,
    /// API answers given so far (after `delay`).
    pub answered: u64,
}

impl ForgeState {
    /// A comment by a person, written now; its id.
    pub fn add_comment(&mut self, repo: &str, pr: i64, user: &str, body: &str) -> i64 {
        self.next_comment += 1;
        let id = self.next_comment;
        self.comments.insert(
            id,
            CommentRec {
                id,
                repo: repo.into(),
                pr,
                user: user.into(),
                body: body.into(),
                edits: 0,
                updated: unix_now(),
            },
        );
        id
    }
}

/// The running double (127.0.0.1, a free port); clones share its state.
#[derive(Clone)]
pub struct Gitea {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ForgeState>>,
}

impl Gitea {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ForgeState {
            next_comment: 1000,
            redirect_status: 301,
            max_items: 50,
            ..Default::default()
        }));
        let g = Gitea { addr, state };
        let g2 = g.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let g = g2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let g = g.clone();
                        async move { Ok::<_, Infallible>(g.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        g
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_pr(&self, repo: &str, n: i64, sha: &str) {
        self.state
            .lock()
            .unwrap()
            .prs
            .insert((repo.into(), n), (sha.into(), "open".into()));
    }

    pub fn set_head(&self, repo: &str, n: i64, sha: &str) {
        self.add_pr(repo, n, sha);
    }

    pub fn add_member(&self, org: &str, user: &str) {
        self.state
            .lock()
            .unwrap()
            .members
            .insert((org.into(), user.into()));
    }

    /// A comment made by a person (for polling).
    pub fn add_comment(&self, repo: &str, pr: i64, user: &str, body: &str) -> i64 {
        self.state.lock().unwrap().add_comment(repo, pr, user, body)
    }

    /// Rename (or transfer) a repository: its pull requests and comments move, the old name
    /// redirects.
    pub fn rename(&self, from: &str, to: &str) {
        let mut st = self.state.lock().unwrap();
        let prs: Vec<_> = st.prs.keys().filter(|(r, _)| r == from).cloned().collect();
        for k in prs {
            if let Some(v) = st.prs.remove(&k) {
                st.prs.insert((to.to_string(), k.1), v);
            }
        }
        for c in st.comments.values_mut() {
            if c.repo == from {
                c.repo = to.to_string();
            }
        }
        st.renamed.insert(from.to_string(), to.to_string());
    }

    /// Send the bot's comment back to the hook as an `issue_comment` delivery, as Gitea does
    /// for every comment created or edited (a new delivery id each time).
    fn echo_to_hook(&self, action: &str, c: &CommentRec) {
        let mut st = self.state.lock().unwrap();
        let Some(hook) = st.hook else { return };
        st.deliveries_sent += 1;
        let delivery = format!("echo-{}-{}", c.id, st.deliveries_sent);
        drop(st);
        let payload = comment_payload(action, &c.repo, c.pr, c.id, &c.user, &c.body, true);
        let state = self.state.clone();
        tokio::spawn(async move {
            let answer = deliver_comment(hook, Flavour::Gitea, &delivery, &payload, None).await;
            state.lock().unwrap().hook_answers.push(answer);
        });
    }

    pub fn statuses(&self) -> Vec<StatusRec> {
        self.state.lock().unwrap().statuses.clone()
    }

    /// Comments written by the bot.
    pub fn bot_comments(&self) -> Vec<CommentRec> {
        self.state
            .lock()
            .unwrap()
            .comments
            .values()
            .filter(|c| c.user == BOT)
            .cloned()
            .collect()
    }

    pub fn describe(&self) -> String {
        let st = self.state.lock().unwrap();
        let mut out = String::from("statuses:\n");
        for s in &st.statuses {
            out.push_str(&format!(
                "  {} {} {} {}\n",
                s.repo,
                &s.sha[..7],
                s.state,
                s.description
            ));
        }
        out.push_str("bot comments:\n");
        for c in st.comments.values().filter(|c| c.user == BOT) {
            out.push_str(&format!(
                "  #{} on {}#{} ({} edits): {}\n",
                c.id,
                c.repo,
                c.pr,
                c.edits,
                c.body.lines().next().unwrap_or("")
            ));
        }
        out
    }

    /// Serve `<owner>/<repo>.git/...` from [`ForgeState::git_root`] (set it after
    /// `git update-server-info` in each bare repository).
    pub fn serve_git(&self, root: &Path) {
        self.state.lock().unwrap().git_root = Some(root.to_path_buf());
    }

    fn git_file(&self, path: &str) -> Response<Full<Bytes>> {
        let mut st = self.state.lock().unwrap();
        st.git_requests.push(path.to_string());
        let Some(root) = st.git_root.clone() else {
            return resp(StatusCode::NOT_FOUND, json!({"message": "no route"}));
        };
        drop(st);
        let rel = Path::new(path.trim_start_matches('/'));
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let in_repo = path.split('/').nth(2).is_some_and(|r| r.ends_with(".git"));
        match std::fs::read(root.join(rel)) {
            Ok(bytes) if plain && in_repo => {
                let mut r = Response::new(Full::new(Bytes::from(bytes)));
                // Not `application/x-git-upload-pack-advertisement`: git falls back to the
                // dumb protocol.
                r.headers_mut()
                    .insert("content-type", "text/plain".parse().unwrap());
                r
            }
            _ => empty(StatusCode::NOT_FOUND),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::GET && !req.uri().path().starts_with("/api/") {
            return self.git_file(req.uri().path());
        }
        let auth_ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&format!("token {TOKEN}"));
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let delay = self.state.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (answer, echo) = self.answer(auth_ok, &method, &path, &query, &body);
        self.state.lock().unwrap().answered += 1;
        if let Some((action, c)) = echo {
            self.echo_to_hook(action, &c);
        }
        answer
    }
}
