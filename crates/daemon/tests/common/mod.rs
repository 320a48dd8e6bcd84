//! Test support: an in-process Gitea/Forgejo double, a fake `cc-ci` run command, signed
//! webhook deliveries shaped like the real ones, and waits with deadlines.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cc_ci_daemon::config::Config;
use cc_ci_daemon::{Daemon, ServeOptions, Tuning};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const TOKEN: &str = "forge-token-0123456789";
pub const SECRET: &str = "webhook-secret-abcdef";
pub const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
pub const SHA2: &str = "fedcba9876543210fedcba9876543210fedcba98";

#[derive(Debug, Clone)]
pub struct StatusRec {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub description: String,
    pub target_url: String,
    pub context: String,
}

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

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// RFC 3339 UTC of Unix seconds (what Gitea writes in `created_at`/`updated_at`).
pub fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Unix seconds of an RFC 3339 UTC time as [`rfc3339`] writes it (for `since`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+', '.']).next()?;
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

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

#[derive(Clone)]
pub struct Gitea {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ForgeState>>,
}

fn resp(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn pr_json(url: &str, repo: &str, n: i64, sha: &str, state: &str) -> Value {
    json!({
        "id": n + 100, "number": n, "state": state, "title": "change",
        "html_url": format!("{url}/{repo}/pulls/{n}"),
        "head": {"ref": "feature", "sha": sha, "repo": {"full_name": repo}},
        "base": {"ref": "main", "sha": "1111111111111111111111111111111111111111"},
        "user": {"login": "alice"}
    })
}

fn comment_json(url: &str, c: &CommentRec) -> Value {
    json!({
        "id": c.id, "body": c.body,
        "user": {"id": 5, "login": c.user, "username": c.user},
        "html_url": format!("{url}/{}/pulls/{}#issuecomment-{}", c.repo, c.pr, c.id),
        "pull_request_url": format!("{url}/{}/pulls/{}", c.repo, c.pr),
        "issue_url": "",
        "original_author": "", "original_author_id": 0, "assets": [],
        "created_at": rfc3339(c.updated), "updated_at": rfc3339(c.updated)
    })
}

/// Query parameter `name` of `query`.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// One page of `items` as Gitea answers a list call: `limit` capped at `max_items`,
/// `X-Total-Count` and a `Link` header with `next`/`last` while more pages exist.
fn paged(
    url: &str,
    path: &str,
    query: &str,
    items: Vec<Value>,
    max_items: usize,
) -> Response<Full<Bytes>> {
    let page: usize = query_param(query, "page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let limit: usize = query_param(query, "limit")
        .and_then(|p| p.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(max_items)
        .min(max_items);
    let total = items.len();
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .collect();
    let mut r = resp(StatusCode::OK, Value::Array(slice));
    r.headers_mut()
        .insert("x-total-count", total.to_string().parse().unwrap());
    let pages = total.div_ceil(limit);
    let keep: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("page=") && !kv.starts_with("limit=") && !kv.is_empty())
        .collect();
    let link = |p: usize, rel: &str| {
        let mut q = keep.clone().join("&");
        if !q.is_empty() {
            q.push('&');
        }
        format!("<{url}{path}?{q}page={p}&limit={limit}>; rel=\"{rel}\"")
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(link(page + 1, "next"));
        links.push(link(pages, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
        links.push(link(page - 1, "prev"));
    }
    if !links.is_empty() {
        r.headers_mut()
            .insert("link", links.join(",").parse().unwrap());
    }
    r
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
        let mut st = self.state.lock().unwrap();
        st.next_comment += 1;
        let id = st.next_comment;
        st.comments.insert(
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
            let answer = deliver(
                hook,
                Flavour::Gitea,
                "issue_comment",
                "pull_request_comment",
                &delivery,
                &payload,
                None,
            )
            .await;
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

    fn answer(
        &self,
        auth_ok: bool,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> (Response<Full<Bytes>>, Option<(&'static str, CommentRec)>) {
        let mut st = self.state.lock().unwrap();
        st.requests
            .push((method.to_string(), format!("{path}?{query}")));
        if !auth_ok {
            st.unauthenticated += 1;
            return (
                resp(
                    StatusCode::UNAUTHORIZED,
                    json!({"message": "token is required"}),
                ),
                None,
            );
        }
        let seg: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
        let url = self.url();
        let write = method != Method::GET;
        if write && st.down {
            return (
                resp(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"message": "down"}),
                ),
                None,
            );
        }
        // A renamed repository: every call under its old name is redirected to the new one.
        if let ["repos", o, r, rest @ ..] = seg.as_slice()
            && let Some(new) = st.renamed.get(&format!("{o}/{r}"))
        {
            let mut location = format!("/api/v1/repos/{new}");
            for part in rest {
                location.push('/');
                location.push_str(part);
            }
            if !query.is_empty() {
                location.push('?');
                location.push_str(query);
            }
            let mut r = empty(StatusCode::from_u16(st.redirect_status).unwrap());
            r.headers_mut()
                .insert("location", location.parse().unwrap());
            return (r, None);
        }
        let mut echo = None;
        let answer = match (method.clone(), seg.as_slice()) {
            (Method::GET, ["user"]) => resp(
                StatusCode::OK,
                json!({"id": 5, "login": BOT, "username": BOT, "full_name": "", "email": "bot@example.org"}),
            ),
            (Method::GET, ["repos", o, r, "pulls", n]) => {
                let repo = format!("{o}/{r}");
                match st.prs.get(&(repo.clone(), n.parse().unwrap_or(-1))) {
                    Some((sha, state)) => resp(
                        StatusCode::OK,
                        pr_json(&url, &repo, n.parse().unwrap(), sha, state),
                    ),
                    None => resp(StatusCode::NOT_FOUND, json!({"message": "not found"})),
                }
            }
            (Method::GET, ["repos", o, r, "pulls"]) => {
                let repo = format!("{o}/{r}");
                let list: Vec<Value> = st
                    .prs
                    .iter()
                    .filter(|((rp, _), (_, state))| rp == &repo && state == "open")
                    .map(|((rp, n), (sha, state))| pr_json(&url, rp, *n, sha, state))
                    .collect();
                paged(&url, path, query, list, st.max_items)
            }
            (Method::GET, ["repos", o, r, "issues", n, "comments"]) => {
                let repo = format!("{o}/{r}");
                let n: i64 = n.parse().unwrap_or(-1);
                let inject: Vec<_> = st
                    .inject_when_listing
                    .iter()
                    .filter(|(when, _)| *when == n)
                    .map(|(_, c)| c.clone())
                    .collect();
                st.inject_when_listing.retain(|(when, _)| *when != n);
                for (crepo, cpr, user, body) in inject {
                    st.next_comment += 1;
                    let id = st.next_comment;
                    st.comments.insert(
                        id,
                        CommentRec {
                            id,
                            repo: crepo,
                            pr: cpr,
                            user,
                            body,
                            edits: 0,
                            updated: unix_now(),
                        },
                    );
                }
                // `since`: only comments updated at or after it (RFC 3339).
                let since = query_param(query, "since")
                    .map(|s| s.replace("%3A", ":").replace("%2B", "+"))
                    .and_then(|s| parse_rfc3339(&s))
                    .unwrap_or(i64::MIN);
                let list: Vec<Value> = st
                    .comments
                    .values()
                    .filter(|c| c.repo == repo && c.pr == n && c.updated >= since)
                    .map(|c| comment_json(&url, c))
                    .collect();
                paged(&url, path, query, list, st.max_items)
            }
            (Method::POST, ["repos", o, r, "issues", n, "comments"]) => {
                let v: Value = serde_json::from_slice(body).unwrap();
                st.next_comment += 1;
                let id = st.next_comment;
                let c = CommentRec {
                    id,
                    repo: format!("{o}/{r}"),
                    pr: n.parse().unwrap(),
                    user: BOT.into(),
                    body: v["body"].as_str().unwrap().to_string(),
                    edits: 0,
                    updated: unix_now(),
                };
                let j = comment_json(&url, &c);
                st.comments.insert(id, c.clone());
                echo = Some(("created", c));
                resp(StatusCode::CREATED, j)
            }
            (Method::PATCH, ["repos", _o, _r, "issues", "comments", id]) => {
                let v: Value = serde_json::from_slice(body).unwrap();
                let id: i64 = id.parse().unwrap();
                match st.comments.get_mut(&id) {
                    Some(c) => {
                        c.body = v["body"].as_str().unwrap().to_string();
                        c.edits += 1;
                        c.updated = unix_now();
                        let j = comment_json(&url, c);
                        echo = Some(("edited", c.clone()));
                        resp(StatusCode::OK, j)
                    }
                    None => resp(StatusCode::NOT_FOUND, json!({"message": "not found"})),
                }
            }
            (Method::POST, ["repos", o, r, "statuses", sha]) => {
                if st.fail_statuses > 0 {
                    st.fail_statuses -= 1;
                    return (
                        resp(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            json!({"message": "boom"}),
                        ),
                        None,
                    );
                }
                let v: Value = serde_json::from_slice(body).unwrap();
                st.statuses.push(StatusRec {
                    repo: format!("{o}/{r}"),
                    sha: sha.to_string(),
                    state: v["state"].as_str().unwrap().into(),
                    description: v["description"].as_str().unwrap_or("").into(),
                    target_url: v["target_url"].as_str().unwrap_or("").into(),
                    context: v["context"].as_str().unwrap_or("").into(),
                });
                resp(StatusCode::CREATED, v)
            }
            (Method::GET, ["orgs", org, "members", user]) => {
                if st.hidden_orgs.contains(*org) {
                    let mut r = empty(StatusCode::SEE_OTHER);
                    r.headers_mut().insert(
                        "location",
                        format!("/api/v1/orgs/{org}/public_members/{user}")
                            .parse()
                            .unwrap(),
                    );
                    r
                } else if st.members.contains(&(org.to_string(), user.to_string())) {
                    empty(StatusCode::NO_CONTENT)
                } else {
                    empty(StatusCode::NOT_FOUND)
                }
            }
            (Method::GET, ["orgs", org, "public_members", user]) => {
                if st
                    .public_members
                    .contains(&(org.to_string(), user.to_string()))
                {
                    empty(StatusCode::NO_CONTENT)
                } else {
                    empty(StatusCode::NOT_FOUND)
                }
            }
            _ => resp(StatusCode::NOT_FOUND, json!({"message": "no route"})),
        };
        (answer, echo)
    }
}

/// Which header family a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Gitea,
    Forgejo,
}

pub fn comment_payload(
    action: &str,
    repo: &str,
    pr: i64,
    comment_id: i64,
    user: &str,
    body: &str,
    is_pull: bool,
) -> Vec<u8> {
    let (owner, name) = repo.split_once('/').unwrap();
    let v = json!({
        "action": action,
        "issue": {
            "id": pr + 500, "url": format!("http://forge/api/v1/repos/{repo}/issues/{pr}"),
            "html_url": format!("http://forge/{repo}/pulls/{pr}"), "number": pr,
            "user": {"id": 2, "login": "bob", "full_name": "", "email": "bob@example.org"},
            "title": "Bump the image", "body": "", "labels": [], "state": "open", "comments": 1,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "pull_request": if is_pull { json!({"merged": false, "merged_at": null, "html_url": format!("http://forge/{repo}/pulls/{pr}")}) } else { Value::Null },
            "repository": {"id": 3, "name": name, "owner": owner, "full_name": repo}
        },
        "comment": {
            "id": comment_id, "html_url": format!("http://forge/{repo}/pulls/{pr}#issuecomment-{comment_id}"),
            "pull_request_url": if is_pull { format!("http://forge/{repo}/pulls/{pr}") } else { String::new() },
            "issue_url": "",
            "user": {"id": 1, "login": user, "full_name": "", "email": format!("{user}@example.org"), "username": user},
            "original_author": "", "original_author_id": 0,
            "body": body, "assets": [],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        },
        "repository": {
            "id": 3, "owner": {"id": 9, "login": owner, "username": owner}, "name": name,
            "full_name": repo, "private": false, "fork": false,
            "html_url": format!("http://forge/{repo}"), "clone_url": format!("http://forge/{repo}.git"),
            "default_branch": "main"
        },
        "sender": {"id": 1, "login": user, "username": user},
        "is_pull": is_pull
    });
    serde_json::to_vec_pretty(&v).unwrap()
}

pub fn pull_request_payload(action: &str, repo: &str, pr: i64, sha: &str) -> Vec<u8> {
    let (owner, name) = repo.split_once('/').unwrap();
    serde_json::to_vec_pretty(&json!({
        "action": action, "number": pr,
        "pull_request": {"id": pr + 100, "number": pr, "state": if action == "closed" { "closed" } else { "open" },
            "head": {"label": "feature", "ref": "feature", "sha": sha, "repo_id": 3},
            "base": {"label": "main", "ref": "main", "sha": "1111111111111111111111111111111111111111", "repo_id": 3}},
        "repository": {"id": 3, "owner": {"login": owner}, "name": name, "full_name": repo},
        "sender": {"login": "alice"},
        "commit_id": ""
    }))
    .unwrap()
}

/// Send a delivery; `signature`: None = correct signature, Some(s) = send s verbatim.
pub async fn deliver(
    daemon: SocketAddr,
    flavour: Flavour,
    event: &str,
    event_type: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (u16, String) {
    let sig = signature
        .map(str::to_string)
        .unwrap_or_else(|| cc_ci_daemon::trigger::sign(SECRET.as_bytes(), body));
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("http://{daemon}/hooks/gitea"))
        .header("Content-Type", "application/json")
        .header("X-Gitea-Event", event)
        .header("X-Gitea-Event-Type", event_type)
        .header("X-Gitea-Delivery", delivery)
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Gitea-Signature", &sig)
        .header("X-Hub-Signature-256", format!("sha256={sig}"))
        .body(body.to_vec());
    if flavour == Flavour::Forgejo {
        req = req
            .header("X-Forgejo-Event", event)
            .header("X-Forgejo-Event-Type", event_type)
            .header("X-Forgejo-Delivery", delivery)
            .header("X-Forgejo-Signature", &sig);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A delivery of a hook configured with the *form* content type: the body is
/// `payload=<urlencoded JSON>`, the signature is over the JSON.
pub async fn deliver_form(daemon: SocketAddr, delivery: &str, json: &[u8]) -> (u16, String) {
    let sig = cc_ci_daemon::trigger::sign(SECRET.as_bytes(), json);
    let mut form = String::from("payload=");
    for b in json {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                form.push(*b as char)
            }
            b' ' => form.push('+'),
            _ => form.push_str(&format!("%{b:02X}")),
        }
    }
    let r = reqwest::Client::new()
        .post(format!("http://{daemon}/hooks/gitea"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Gitea-Event", "issue_comment")
        .header("X-Gitea-Event-Type", "pull_request_comment")
        .header("X-Gitea-Delivery", delivery)
        .header("X-Gitea-Signature", &sig)
        .header("X-Hub-Signature-256", format!("sha256={sig}"))
        .body(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn comment(
    daemon: SocketAddr,
    repo: &str,
    pr: i64,
    comment_id: i64,
    user: &str,
    body: &str,
) -> (u16, String) {
    let payload = comment_payload("created", repo, pr, comment_id, user, body, true);
    deliver(
        daemon,
        Flavour::Gitea,
        "issue_comment",
        "pull_request_comment",
        &format!("delivery-{comment_id}"),
        &payload,
        None,
    )
    .await
}

/// Poll `cond` every 20 ms until it yields, or fail after `secs` naming what was awaited and
/// the state it was stuck in.
pub async fn eventually<T>(
    what: &str,
    secs: u64,
    mut cond: impl FnMut() -> Option<T>,
    state: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {secs} s waiting for {what}; state:\n{}",
                state()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a condition that needs to await (an HTTP request).
pub async fn eventually_async<T, F, Fut>(
    what: &str,
    secs: u64,
    mut cond: F,
    state: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {secs} s waiting for {what}; state:\n{}",
                state()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status code of a GET, or None when the request failed.
pub async fn get_status(url: String) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

/// The fake `cc-ci`: `run` behaves as `<marks>/mode.<run id>` (else `<marks>/mode`) says:
/// pass | fail | infra | hang | stubborn (ignores SIGTERM) | gated (waits for `<marks>/go`) |
/// othersha (passes, but reports another commit than it was given).
/// `gc` appends to `<marks>/gc.log`. Every run appends its arguments to `<marks>/runs.log`.
pub fn fake_exe(marks: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/bash
MARK='{marks}'
cmd=$1; shift
if [ "$cmd" = gc ]; then echo "gc $*" >> "$MARK/gc.log"; echo "gc: 0 collected"; exit 0; fi
[ "$cmd" = run ] || exit 2
dir=""; stages=""; recipe=""; ref=""; config=""
while [ $# -gt 0 ]; do
  case "$1" in
    --report-dir) dir=$2; shift 2;;
    --stages) stages=$2; shift 2;;
    --recipe) recipe=$2; shift 2;;
    --ref) ref=$2; shift 2;;
    --config) config=$2; shift 2;;
    *) shift;;
  esac
done
id=$(basename "$dir")
echo "$id $$" >> "$MARK/pids"
echo "run id=$id recipe=$recipe ref=$ref stages=$stages config=$config" >> "$MARK/runs.log"
mode=$(cat "$MARK/mode.$id" 2>/dev/null || cat "$MARK/mode" 2>/dev/null || echo pass)
# The commit the run tests: the ref when it is one (the daemon passes the approved commit).
head=$ref
case "$ref" in *[!0-9a-f]*|"") head={sha};; esac
[ "$mode" = othersha ] && head={sha2}
echo "[0.0s] cloning $recipe at $ref (leaky: {token})" >&2
tier() {{ echo "{{\"name\":\"$1\",\"verdict\":\"$2\",\"duration_ms\":1500,\"checks\":[{{\"name\":\"converged\",\"source\":\"generic\",\"verdict\":\"$2\",\"detail\":\"$3\"}}]}}"; }}
report() {{
  echo "{{\"recipe\":\"web\",\"ref\":\"$ref\",\"head_sha\":\"$head\",\"base_version\":null,\"app_domain\":\"web-abcdef.ci.local\",\"verdict\":\"$1\",\"deploy_count\":1,\"tiers\":[$2],\"teardown\":{{\"verdict\":\"pass\",\"leftovers\":[]}},\"notes\":[]}}" > "$dir/$3"
}}
report error "$(tier install pass)" progress.json
echo "[1.5s] install: pass"
case "$mode" in
  pass|othersha) report pass "$(tier install pass)" run.json; echo "| install | pass |"; exit 0;;
  fail) report fail "$(tier install fail 'service web never became healthy')" run.json; exit 1;;
  infra) echo "docker engine unreachable at /var/run/docker.sock" >&2; exit 3;;
  hang) trap 'echo "term $id" >> "$MARK/term.log"; exit 143' TERM; echo "$id" >> "$MARK/hanging"; sleep 1000 & wait $!;;
  stubborn) trap 'echo "ignored term $id" >> "$MARK/term.log"' TERM; echo "$id" >> "$MARK/hanging"; while :; do sleep 1000 & wait $!; done;;
  gated) trap 'echo "term $id" >> "$MARK/term.log"; exit 143' TERM; read -r line < "$MARK/go"; report pass "$(tier install pass)" run.json; exit 0;;
esac
exit 2
"#,
        marks = marks.display(),
        token = TOKEN,
        sha = SHA,
        sha2 = SHA2,
    );
    let path = marks.join("fake-cc-ci");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The process id of the fake run process of run `id` (its last attempt).
pub fn run_pid(marks: &Path, id: i64) -> Option<i32> {
    read(&marks.join("pids"))
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(i, _)| *i == id.to_string())
        .filter_map(|(_, p)| p.trim().parse().ok())
        .next_back()
}

pub fn alive(pid: i32) -> bool {
    // Zombies count as dead: signal 0 succeeds on them, /proc status says Z.
    let status = read(Path::new(&format!("/proc/{pid}/stat")));
    !status.is_empty()
        && !status
            .split(") ")
            .nth(1)
            .is_some_and(|s| s.starts_with('Z'))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A test environment: forge double, config, state dir and fake run command.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub gitea: Gitea,
    pub config: Config,
    pub exe: PathBuf,
}

impl Env {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let gitea = Gitea::start().await;
        let marks = dir.path().join("marks");
        std::fs::create_dir_all(&marks).unwrap();
        let exe = fake_exe(&marks);
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let mut config = Config::default();
        config.daemon.state_dir = Some(dir.path().join("state"));
        config.daemon.listen = "127.0.0.1:0".into();
        config.daemon.public_url = "http://ci.test".into();
        config.daemon.cancel_grace_secs = 2;
        config.forge.url = gitea.url();
        config.forge.token_file = Some(dir.path().join("token"));
        config.forge.webhook_secret_file = Some(dir.path().join("secret"));
        config.forge.repo_allowlist = vec!["coop/web".into(), "coop/other".into()];
        config.forge.org_allowlist = vec!["coop".into()];
        config.forge.user_allowlist = vec!["alice".into()];
        gitea.add_pr("coop/web", 1, SHA);
        Env {
            dir,
            gitea,
            config,
            exe,
        }
    }

    pub fn marks(&self) -> PathBuf {
        self.dir.path().join("marks")
    }

    pub fn set_mode(&self, run: Option<i64>, mode: &str) {
        let name = match run {
            Some(id) => format!("mode.{id}"),
            None => "mode".into(),
        };
        std::fs::write(self.marks().join(name), mode).unwrap();
    }

    /// Wait until run `id` hangs with its SIGTERM handler in place (`hang`, `stubborn`).
    pub async fn wait_hanging(&self, id: i64) {
        let file = self.marks().join("hanging");
        eventually(
            &format!("run {id} to hang"),
            20,
            || {
                read(&file)
                    .lines()
                    .any(|l| l == id.to_string())
                    .then_some(())
            },
            || self.state(),
        )
        .await
    }

    /// Make `gated` runs wait until [`Env::release`].
    pub fn gate(&self) {
        let fifo = self.marks().join("go");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// Let one waiting `gated` run finish (blocks until it reads).
    pub async fn release(&self) {
        let fifo = self.marks().join("go");
        tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
            .await
            .unwrap()
            .unwrap();
    }

    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            config_path: Some(self.dir.path().join("config.toml")),
            listen: None,
            run_exe: Some(self.exe.clone()),
            tuning: Tuning {
                tick: Duration::from_millis(100),
                forge_attempts: 2,
                forge_backoff: Duration::from_millis(50),
                retry_base: Duration::from_secs(1),
                progress_interval: Duration::from_millis(100),
                report_attempts: 16,
                gc_timeout: Duration::from_secs(30),
                final_report_timeout: Duration::from_secs(5),
            },
            host: cc_ci_harness::hostenv::HostEnv::from_process(),
        }
    }

    /// Start the daemon with the env's config; the forge double delivers the bot's own
    /// comments back to it, as Gitea does.
    pub async fn start(&self) -> Daemon {
        let d = Daemon::start(self.config.clone(), self.options())
            .await
            .unwrap();
        self.gitea.state.lock().unwrap().hook = d.local_addr();
        d
    }

    /// The run a trigger comment became, once it has.
    pub async fn run_of_comment(&self, comment_id: i64) -> i64 {
        let db = self
            .config
            .daemon
            .state_dir
            .clone()
            .unwrap()
            .join("cc-ci.sqlite");
        eventually(
            &format!("a run for comment {comment_id}"),
            20,
            || {
                let store = cc_ci_daemon::store::Store::open_existing(&db).ok()?;
                store
                    .list_runs(1000)
                    .ok()?
                    .into_iter()
                    .find(|r| r.trigger_comment_id == Some(comment_id))
                    .map(|r| r.id)
            },
            || self.state(),
        )
        .await
    }

    /// Every answer the daemon gave to the deliveries of its own comments.
    pub fn hook_answers(&self) -> Vec<(u16, String)> {
        self.gitea.state.lock().unwrap().hook_answers.clone()
    }

    pub fn state(&self) -> String {
        format!(
            "{}runs.log:\n{}term.log:\n{}",
            self.gitea.describe(),
            read(&self.marks().join("runs.log")),
            read(&self.marks().join("term.log"))
        )
    }

    /// Wait until the forge shows a final (non-pending) status with `description` containing
    /// `needle` for commit `sha`.
    pub async fn wait_status(&self, sha: &str, state: &str, needle: &str) -> StatusRec {
        eventually(
            &format!("a `{state}` status containing `{needle}` on {sha}"),
            20,
            || {
                self.gitea
                    .statuses()
                    .into_iter()
                    .find(|s| s.sha == sha && s.state == state && s.description.contains(needle))
            },
            || self.state(),
        )
        .await
    }

    /// Wait until the bot comment for run `id` contains `needle`.
    pub async fn wait_comment(&self, id: i64, needle: &str) -> CommentRec {
        let marker = format!("<!-- cc-ci run {id} -->");
        eventually(
            &format!("the comment of run {id} to contain `{needle}`"),
            20,
            || {
                self.gitea
                    .bot_comments()
                    .into_iter()
                    .find(|c| c.body.contains(&marker) && c.body.contains(needle))
            },
            || self.state(),
        )
        .await
    }
}
