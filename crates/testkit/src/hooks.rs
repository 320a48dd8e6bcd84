//! Webhook deliveries as Gitea and Forgejo send them: the payloads of `issue_comment` and
//! `pull_request` events, the header families of each forge, the HMAC signature, and the form
//! content type.

use std::net::SocketAddr;

use serde_json::{Value, json};

/// The webhook secret the daemon under test is configured with.
pub const SECRET: &str = "webhook-secret-abcdef";

/// Which header family a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Gitea,
    Forgejo,
}

/// The body of an `issue_comment` event (`is_pull`: on a pull request, not an issue).
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

/// The body of a `pull_request` event (`opened`, `synchronized`, `closed`, ...).
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

/// A person's new comment on a pull request, as an `issue_comment` delivery carries it.
pub struct Comment<'a> {
    pub repo: &'a str,
    pub pr: i64,
    pub id: i64,
    pub user: &'a str,
    pub body: &'a str,
}

impl<'a> Comment<'a> {
    /// Comment `id` by `user` on pull request `pr` of `repo`.
    pub fn new(repo: &'a str, pr: i64, id: i64, user: &'a str, body: &'a str) -> Self {
        Comment {
            repo,
            pr,
            id,
            user,
            body,
        }
    }

    /// Delivered to the daemon at `daemon` with `flavour`'s headers, correctly signed.
    pub async fn deliver(
        &self,
        daemon: SocketAddr,
        flavour: Flavour,
        delivery: &str,
    ) -> (u16, String) {
        let payload = comment_payload(
            "created", self.repo, self.pr, self.id, self.user, self.body, true,
        );
        deliver_comment(daemon, flavour, delivery, &payload, None).await
    }
}

/// A Gitea delivery of comment `comment_id` by `user` on pull request `pr`, correctly signed.
pub async fn comment(
    daemon: SocketAddr,
    repo: &str,
    pr: i64,
    comment_id: i64,
    user: &str,
    body: &str,
) -> (u16, String) {
    Comment::new(repo, pr, comment_id, user, body)
        .deliver(daemon, Flavour::Gitea, &format!("delivery-{comment_id}"))
        .await
}

/// A delivery of an `issue_comment` event body with the headers of `flavour`; `signature` as in
/// [`deliver`].
pub async fn deliver_comment(
    daemon: SocketAddr,
    flavour: Flavour,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (u16, String) {
    deliver(
        daemon,
        flavour,
        "issue_comment",
        "pull_request_comment",
        delivery,
        body,
        signature,
    )
    .await
}

/// `!testme` by `alice` as comment `comment_id`: the daemon must accept it (202).
pub async fn testme(daemon: SocketAddr, repo: &str, pr: i64, comment_id: i64) {
    let (code, body) = comment(daemon, repo, pr, comment_id, "alice", "!testme").await;
    assert_eq!(
        code, 202,
        "`!testme` as comment {comment_id} on {repo}#{pr}: {body}"
    );
}

/// A `synchronized` pull-request delivery (new commits pushed) saying the head is now `sha`.
pub async fn push(
    daemon: SocketAddr,
    flavour: Flavour,
    delivery: &str,
    repo: &str,
    pr: i64,
    sha: &str,
) -> (u16, String) {
    let payload = pull_request_payload("synchronized", repo, pr, sha);
    deliver(
        daemon,
        flavour,
        "pull_request",
        "pull_request_sync",
        delivery,
        &payload,
        None,
    )
    .await
}
