//! The webhook decision, without I/O: what one delivery (its headers and body) means, given
//! the secret, cc-ci's own login and the allowlists. `http` reads the request, asks `decide`,
//! and carries the action out (store the trigger, check the pull request); `answer_stored`
//! words the answer once a trigger was stored.

use hyper::StatusCode;

use crate::trigger::{self, CommentTrigger, Delivery};

/// The parts of a webhook request the decision reads (header values already trimmed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Hook<'a> {
    pub content_type: Option<&'a str>,
    /// `X-Forgejo-Event`, else `X-Gitea-Event`.
    pub event: Option<&'a str>,
    /// Every signature header sent (Forgejo, Gitea, GitHub-style).
    pub signatures: Vec<&'a str>,
    pub body: &'a [u8],
}

/// The signature headers a forge may send, in the order they are looked at.
pub(crate) const SIGNATURE_HEADERS: [&str; 3] = [
    "x-forgejo-signature",
    "x-gitea-signature",
    "x-hub-signature-256",
];

/// What the decision depends on besides the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    /// None: webhooks are disabled (polling only).
    pub secret: Option<&'a str>,
    pub own_login: Option<&'a str>,
    pub repo_allowlist: &'a [String],
    pub user_allowlist: &'a [String],
    /// Whether organisation membership can authorise a user (checked later, at the forge).
    pub has_org_allowlist: bool,
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Answer at once; nothing is stored.
    Answer(StatusCode, String),
    /// A pull request moved or closed: (after recording the delivery id) read its current
    /// head from the forge and supersede runs of other heads.
    CheckPull { repo: String, pr: i64 },
    /// A `!testme` comment on an allowed repository: store it as a trigger.
    Store(CommentTrigger),
}

fn answer(status: StatusCode, msg: impl Into<String>) -> Action {
    Action::Answer(status, msg.into())
}

/// Decide on one delivery: content type, signature, event, payload, allowlist.
pub(crate) fn decide(hook: &Hook<'_>, policy: &Policy<'_>) -> Action {
    let Some(secret) = policy.secret else {
        return answer(
            StatusCode::UNAUTHORIZED,
            "webhooks are disabled: no webhook secret is configured",
        );
    };
    // A hook with the *form* content type sends `payload=<urlencoded JSON>` and signs the
    // JSON: the signature is checked against the JSON taken out of the form.
    let content_type = hook.content_type.unwrap_or_default().to_ascii_lowercase();
    let form;
    let body = if content_type.starts_with("application/x-www-form-urlencoded") {
        form = match trigger::form_payload(hook.body) {
            Ok(json) => json,
            Err(e) => return answer(StatusCode::BAD_REQUEST, e),
        };
        &form[..]
    } else if content_type.is_empty() || content_type.starts_with("application/json") {
        hook.body
    } else {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type `{content_type}` is not supported: set the hook's content type to \
                 application/json (or application/x-www-form-urlencoded)"
            ),
        );
    };
    if let Err(e) = trigger::verify_signature(secret.as_bytes(), body, &hook.signatures) {
        return answer(StatusCode::UNAUTHORIZED, format!("rejected: {e}"));
    }
    let Some(event) = hook.event else {
        return answer(StatusCode::BAD_REQUEST, "missing X-Gitea-Event header");
    };
    let delivery = match trigger::classify(event, body, policy.own_login) {
        Ok(d) => d,
        Err(e) => return answer(StatusCode::BAD_REQUEST, e),
    };
    // Only what is really wrong gets a 4xx (Gitea marks any other answer as a failed delivery,
    // and never retries): a well-formed delivery cc-ci has no use for is acknowledged.
    match delivery {
        Delivery::Unhandled(reason) | Delivery::Ignored(reason) => {
            answer(StatusCode::OK, format!("ignored: {reason}"))
        }
        Delivery::PullUpdate { repo, pr, .. } => {
            if trigger::repo_allowed(policy.repo_allowlist, &repo) {
                Action::CheckPull { repo, pr }
            } else {
                not_allowed(&repo)
            }
        }
        Delivery::Trigger(t) => {
            if trigger::repo_allowed(policy.repo_allowlist, &t.repo) {
                Action::Store(t)
            } else {
                not_allowed(&t.repo)
            }
        }
    }
}

fn not_allowed(repo: &str) -> Action {
    answer(
        StatusCode::FORBIDDEN,
        format!("repository {repo} is not on the allowlist"),
    )
}

/// The answer to a pull-request update once its delivery id was recorded (`fresh`: not seen
/// before).
pub(crate) fn answer_pull_update(fresh: bool) -> (StatusCode, String) {
    if fresh {
        (
            StatusCode::ACCEPTED,
            "accepted: the pull request's current head is read from the forge; runs of \
             other heads are superseded"
                .into(),
        )
    } else {
        (StatusCode::OK, "ignored: delivery already processed".into())
    }
}

/// The answer once trigger `id` of `user` is durable. Everything that needs the forge
/// (authorisation, the pull request's head, the pending status) happens after this answer:
/// Gitea gives up on a delivery after 5 s and never retries it. A user who can only be
/// refused (no organisation to ask) learns it at once.
pub(crate) fn answer_stored(
    id: i64,
    user: &str,
    policy: &Policy<'_>,
    public_url: &str,
) -> (StatusCode, String) {
    if !policy.has_org_allowlist && !trigger::user_allowed(policy.user_allowlist, user) {
        (StatusCode::FORBIDDEN, format!("{user} may not start runs"))
    } else {
        (
            StatusCode::ACCEPTED,
            format!(
                "accepted: trigger #{id} stored; the run appears at {}/runs once authorised",
                public_url.trim_end_matches('/')
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::Command;
    use serde_json::json;

    const SECRET: &str = "s3cret-value";

    fn comment(user: &str, repo: &str, body: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "action": "created",
            "issue": {"id": 9, "number": 4, "title": "t", "pull_request": {"merged": false}},
            "comment": {"id": 77, "body": body, "user": {"id": 1, "login": user},
                        "html_url": "http://forge/o/r/pulls/4#issuecomment-77"},
            "repository": {"id": 3, "name": "r", "full_name": repo, "owner": {"login": "o"}},
            "sender": {"login": user},
            "is_pull": true
        }))
        .unwrap_or_default()
    }

    fn pull(action: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "action": action,
            "number": 4,
            "pull_request": {"number": 4, "head": {"sha": "a".repeat(40)}},
            "repository": {"id": 3, "name": "r", "full_name": "o/r", "owner": {"login": "o"}}
        }))
        .unwrap_or_default()
    }

    fn allow() -> Vec<String> {
        vec!["o/r".to_string()]
    }

    fn policy<'a>(repos: &'a [String], users: &'a [String]) -> Policy<'a> {
        Policy {
            secret: Some(SECRET),
            own_login: Some("cc-ci-bot"),
            repo_allowlist: repos,
            user_allowlist: users,
            has_org_allowlist: false,
        }
    }

    /// Decide on `body` sent as event `event`, signed with `secret`.
    fn decide_signed(event: &str, body: &[u8], secret: &str, p: &Policy<'_>) -> Action {
        let sig = trigger::sign(secret.as_bytes(), body);
        decide(
            &Hook {
                content_type: Some("application/json"),
                event: Some(event),
                signatures: vec![&sig],
                body,
            },
            p,
        )
    }

    fn status(a: &Action) -> Option<StatusCode> {
        match a {
            Action::Answer(s, _) => Some(*s),
            _ => None,
        }
    }

    #[test]
    fn a_signed_testme_on_an_allowed_repository_is_stored() {
        let (repos, users) = (allow(), vec![]);
        let a = decide_signed(
            "issue_comment",
            &comment("alice", "o/r", "!testme"),
            SECRET,
            &policy(&repos, &users),
        );
        assert_eq!(
            a,
            Action::Store(CommentTrigger {
                repo: "o/r".into(),
                pr: 4,
                comment_id: 77,
                user: "alice".into(),
                command: Command::Run { stages: vec![] },
            })
        );
    }

    #[test]
    fn no_secret_wrong_signature_and_no_event_are_refused() {
        let (repos, users) = (allow(), vec![]);
        let body = comment("alice", "o/r", "!testme");
        let mut p = policy(&repos, &users);
        assert_eq!(
            status(&decide_signed("issue_comment", &body, "other", &p)),
            Some(StatusCode::UNAUTHORIZED)
        );
        let sig = trigger::sign(SECRET.as_bytes(), &body);
        let no_event = Hook {
            signatures: vec![&sig],
            body: &body,
            ..Hook::default()
        };
        assert_eq!(
            status(&decide(&no_event, &p)),
            Some(StatusCode::BAD_REQUEST)
        );
        let xml = Hook {
            content_type: Some("text/xml"),
            ..no_event.clone()
        };
        assert_eq!(
            status(&decide(&xml, &p)),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        p.secret = None;
        assert_eq!(
            status(&decide_signed("issue_comment", &body, SECRET, &p)),
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn other_repositories_are_forbidden_and_unused_events_acknowledged() {
        let (repos, users) = (allow(), vec![]);
        let p = policy(&repos, &users);
        let a = decide_signed(
            "issue_comment",
            &comment("alice", "x/y", "!testme"),
            SECRET,
            &p,
        );
        assert_eq!(
            a,
            Action::Answer(
                StatusCode::FORBIDDEN,
                "repository x/y is not on the allowlist".into()
            )
        );
        for (event, body) in [
            ("push", b"{}".to_vec()),
            ("issue_comment", comment("alice", "o/r", "looks good")),
            ("issue_comment", comment("cc-ci-bot", "o/r", "!testme")),
            ("pull_request", pull("opened")),
        ] {
            let a = decide_signed(event, &body, SECRET, &p);
            assert_eq!(status(&a), Some(StatusCode::OK), "{event}: {a:?}");
        }
        let a = decide_signed("issue_comment", b"{not json", SECRET, &p);
        assert_eq!(status(&a), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn a_push_or_close_checks_the_pull_request() {
        let (repos, users) = (allow(), vec![]);
        let p = policy(&repos, &users);
        for action in ["synchronized", "closed"] {
            assert_eq!(
                decide_signed("pull_request", &pull(action), SECRET, &p),
                Action::CheckPull {
                    repo: "o/r".into(),
                    pr: 4
                }
            );
        }
        assert_eq!(answer_pull_update(false).0, StatusCode::OK);
        assert_eq!(answer_pull_update(true).0, StatusCode::ACCEPTED);
    }

    #[test]
    fn a_form_delivery_is_checked_against_its_json() {
        let (repos, users) = (allow(), vec![]);
        let json = comment("alice", "o/r", "!testme");
        let sig = trigger::sign(SECRET.as_bytes(), &json);
        let mut form = b"payload=".to_vec();
        for b in &json {
            form.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
        let hook = Hook {
            content_type: Some("application/x-www-form-urlencoded"),
            event: Some("issue_comment"),
            signatures: vec![&sig],
            body: &form,
        };
        assert!(matches!(
            decide(&hook, &policy(&repos, &users)),
            Action::Store(_)
        ));
    }

    #[test]
    fn the_answer_to_a_stored_trigger_tells_a_user_who_cannot_be_allowed() {
        let (repos, users) = (allow(), vec!["alice".to_string()]);
        let mut p = policy(&repos, &users);
        let (s, msg) = answer_stored(7, "alice", &p, "https://ci.example/");
        assert_eq!(s, StatusCode::ACCEPTED);
        assert!(
            msg.contains("trigger #7") && msg.contains("https://ci.example/runs"),
            "{msg}"
        );
        assert_eq!(answer_stored(7, "mallory", &p, "").0, StatusCode::FORBIDDEN);
        p.has_org_allowlist = true;
        assert_eq!(answer_stored(7, "mallory", &p, "").0, StatusCode::ACCEPTED);
    }
}
