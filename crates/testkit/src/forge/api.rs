//! The double's answers to the API calls cc-ci makes, shaped as Gitea/Forgejo shape them.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::time::{parse_rfc3339, rfc3339, unix_now};
use super::{BOT, CommentRec, ForgeState, Gitea, StatusRec};

pub(super) fn resp(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

pub(super) fn empty(status: StatusCode) -> Response<Full<Bytes>> {
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
    pub(super) fn answer(
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
        let seg: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
        if let Some(refused) = gate(&mut st, auth_ok, method, &seg, query) {
            return (refused, None);
        }
        let url = self.url();
        if method == Method::GET {
            (read(&mut st, &url, &seg, path, query), None)
        } else {
            write(&mut st, &url, method, &seg, body)
        }
    }
}

/// What Gitea answers before it routes: no token, an outage of writes, a renamed repository.
fn gate(
    st: &mut ForgeState,
    auth_ok: bool,
    method: &Method,
    seg: &[&str],
    query: &str,
) -> Option<Response<Full<Bytes>>> {
    if !auth_ok {
        st.unauthenticated += 1;
        return Some(resp(
            StatusCode::UNAUTHORIZED,
            json!({"message": "token is required"}),
        ));
    }
    if method != Method::GET && st.down {
        return Some(resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"message": "down"}),
        ));
    }
    // A renamed repository: every call under its old name is redirected to the new one.
    if let ["repos", o, r, rest @ ..] = seg
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
        return Some(r);
    }
    None
}

/// The read calls: user, pull requests, comments, organisation membership.
fn read(
    st: &mut ForgeState,
    url: &str,
    seg: &[&str],
    path: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    let url = url.to_string();
    match (Method::GET, seg) {
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
                st.add_comment(&crepo, cpr, &user, &body);
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
    }
}

/// The write calls: comments created and edited, commit statuses; the comment written, for the
/// double's own webhook.
fn write(
    st: &mut ForgeState,
    url: &str,
    method: &Method,
    seg: &[&str],
    body: &[u8],
) -> (Response<Full<Bytes>>, Option<(&'static str, CommentRec)>) {
    let url = url.to_string();
    let mut echo = None;
    let answer = match (method.clone(), seg) {
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
        _ => resp(StatusCode::NOT_FOUND, json!({"message": "no route"})),
    };
    (answer, echo)
}
