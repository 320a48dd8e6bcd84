//! Pure decisions about webhook deliveries and comments: signature verification, which
//! deliveries are triggers, and the `!testme` command. Nothing here does I/O.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The stages a `!testme` line may name, in the order a run executes them (the run
/// contract's spelling).
pub const STAGES: [&str; 4] = cc_ci_harness::contract::Stage::NAMES;

/// The trigger word: a comment line must be exactly this, optionally followed by stage names.
pub const TRIGGER: &str = "!testme";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run these stages (empty = the harness default, all of them).
    Run { stages: Vec<String> },
    /// A `!testme` line naming stages that do not exist.
    BadStages { unknown: Vec<String> },
}

/// A code fence opening or closing line (after up to three spaces of indentation): the fence
/// character and its length, and whether text follows it (an info string).
fn fence(line: &str) -> Option<(char, usize, bool)> {
    let c = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = line.chars().take_while(|x| *x == c).count();
    (n >= 3).then(|| (c, n, !line[n..].trim().is_empty()))
}

/// Columns of leading whitespace (a tab counts as four, as in Markdown).
fn indent(line: &str) -> usize {
    line.chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

/// The first line of `body` that is a `!testme` command, if any. The line must be the
/// command alone (surrounding whitespace aside): `!testmexyz` and lines with text before the
/// trigger are not commands, and neither is a line inside a fenced or indented code block or
/// inside a quote (including the lines a quote's paragraph runs on to), since those show
/// someone else's words or an example rather than a request.
pub fn parse_command(body: &str) -> Option<Command> {
    let mut open_fence: Option<(char, usize)> = None;
    let mut in_quote = false;
    for line in body.lines() {
        let cols = indent(line);
        let t = line.trim_start();
        if cols < 4
            && let Some((c, n, info)) = fence(t)
        {
            match open_fence {
                None => {
                    open_fence = Some((c, n));
                    continue;
                }
                Some((oc, on)) if oc == c && n >= on && !info => {
                    open_fence = None;
                    continue;
                }
                Some(_) => {}
            }
        }
        if open_fence.is_some() {
            continue;
        }
        if t.is_empty() {
            in_quote = false;
            continue;
        }
        if cols < 4 && t.starts_with('>') {
            in_quote = true;
            continue;
        }
        if in_quote || cols >= 4 {
            continue;
        }
        let mut words = t.split_whitespace();
        if words.next() != Some(TRIGGER) {
            continue;
        }
        let mut stages: Vec<String> = Vec::new();
        let mut unknown = Vec::new();
        for w in words.flat_map(|w| w.split(',')).filter(|w| !w.is_empty()) {
            // `!testme fresh`: run even when the last result still holds (crate::fresh).
            if STAGES.contains(&w) || w == FORCE_WORD {
                if !stages.iter().any(|s| s == w) {
                    stages.push(w.to_string());
                }
            } else {
                unknown.push(w.to_string());
            }
        }
        return Some(if unknown.is_empty() {
            Command::Run { stages }
        } else {
            Command::BadStages { unknown }
        });
    }
    None
}

/// The JSON of a delivery sent with the hook's *form* content type
/// (`application/x-www-form-urlencoded`, body `payload=<urlencoded JSON>`). Gitea signs the
/// JSON, not the form, so the signature is checked against what this returns.
pub fn form_payload(body: &[u8]) -> Result<Vec<u8>, String> {
    for pair in body.split(|b| *b == b'&') {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        if key == b"payload" {
            return percent_decode(value)
                .ok_or_else(|| "form body: the `payload` field is not valid URL encoding".into());
        }
    }
    Err(
        "form body without a `payload` field (hook content type application/x-www-form-urlencoded)"
            .into(),
    )
}

fn percent_decode(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = v.get(i + 1..i + 3)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature header (X-Gitea-Signature / X-Forgejo-Signature)")]
    Missing,
    #[error("signature does not match the body")]
    Mismatch,
}

/// Verify the hex HMAC-SHA256 signatures of a delivery. Every non-empty signature header that
/// was sent must match (Forgejo sends the same value under several names); at least one must be
/// present. The comparison is constant-time (`Mac::verify_slice`).
pub fn verify_signature(secret: &[u8], body: &[u8], sent: &[&str]) -> Result<(), SignatureError> {
    let present: Vec<&str> = sent
        .iter()
        .map(|s| s.trim())
        .map(|s| s.strip_prefix("sha256=").unwrap_or(s))
        .filter(|s| !s.is_empty())
        .collect();
    if present.is_empty() {
        return Err(SignatureError::Missing);
    }
    for sig in present {
        let Ok(raw) = hex::decode(sig) else {
            return Err(SignatureError::Mismatch);
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return Err(SignatureError::Mismatch);
        };
        mac.update(body);
        mac.verify_slice(&raw)
            .map_err(|_| SignatureError::Mismatch)?;
    }
    Ok(())
}

/// Hex HMAC-SHA256, as Gitea computes it (used by tests and the docs' curl example).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // new_from_slice accepts keys of any length for HMAC.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A comment that asks for a run (not yet authorised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentTrigger {
    /// `owner/name`
    pub repo: String,
    pub pr: i64,
    pub comment_id: i64,
    pub user: String,
    pub command: Command,
}

/// What a verified delivery means to cc-ci.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Trigger(CommentTrigger),
    /// New commits were pushed to the pull request, or it was closed: active runs for an older
    /// head are superseded.
    PullUpdate {
        repo: String,
        pr: i64,
        head_sha: String,
        closed: bool,
    },
    /// A comment or pull-request event that does not concern cc-ci (answered with a 2xx that
    /// gives the reason: Gitea marks any other answer as a failed delivery).
    Ignored(String),
    /// An event cc-ci does not use at all, e.g. the `push` of the forge's "Test delivery"
    /// button: acknowledged with a 2xx so that a working hook looks working.
    Unhandled(String),
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct Issue {
    number: i64,
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Comment {
    id: i64,
    #[serde(default)]
    body: String,
    user: User,
}

#[derive(Deserialize)]
struct IssueCommentPayload {
    action: String,
    #[serde(default)]
    is_pull: bool,
    issue: Issue,
    comment: Comment,
    repository: Repository,
}

#[derive(Deserialize)]
struct Head {
    sha: String,
}

#[derive(Deserialize)]
struct PullRequest {
    number: i64,
    head: Head,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    pull_request: PullRequest,
    repository: Repository,
}

/// A forge login as Gitea allows them; anything else is refused before it reaches a URL.
pub fn is_valid_login(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !s.starts_with('.')
}

pub fn is_valid_sha(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Classify a delivery whose signature was verified. `event` is `X-Gitea-Event` (or
/// `X-Forgejo-Event`); `own_login` is cc-ci's own forge account, when known, whose comments
/// (which Gitea delivers back to the hook) are never triggers. `Err` = the body is not the
/// payload the event names.
pub fn classify(event: &str, body: &[u8], own_login: Option<&str>) -> Result<Delivery, String> {
    match event {
        "issue_comment" => {
            let p: IssueCommentPayload = serde_json::from_slice(body)
                .map_err(|e| format!("not an issue_comment payload: {e}"))?;
            check_names(&p.repository.full_name, &p.comment.user.login)?;
            if own_login.is_some_and(|o| o.eq_ignore_ascii_case(&p.comment.user.login)) {
                return Ok(Delivery::Ignored("a comment by cc-ci itself".into()));
            }
            if p.action != "created" {
                return Ok(Delivery::Ignored(format!(
                    "comment action `{}` (only `created` triggers)",
                    p.action
                )));
            }
            let is_pull = p.is_pull || p.issue.pull_request.as_ref().is_some_and(|v| !v.is_null());
            if !is_pull {
                return Ok(Delivery::Ignored(
                    "comment on an issue, not a pull request".into(),
                ));
            }
            match parse_command(&p.comment.body) {
                None => Ok(Delivery::Ignored(format!(
                    "comment has no `{TRIGGER}` line"
                ))),
                Some(command) => Ok(Delivery::Trigger(CommentTrigger {
                    repo: p.repository.full_name,
                    pr: p.issue.number,
                    comment_id: p.comment.id,
                    user: p.comment.user.login,
                    command,
                })),
            }
        }
        "pull_request" => {
            let p: PullRequestPayload = serde_json::from_slice(body)
                .map_err(|e| format!("not a pull_request payload: {e}"))?;
            if !cc_ci_harness::names::is_owner_slash_repo(&p.repository.full_name) {
                return Err(format!(
                    "repository `{}` is not owner/name",
                    p.repository.full_name
                ));
            }
            let closed = p.action == "closed";
            if p.action != "synchronized" && !closed {
                return Ok(Delivery::Ignored(format!(
                    "pull request action `{}` does not affect runs",
                    p.action
                )));
            }
            if !is_valid_sha(&p.pull_request.head.sha) {
                return Err("pull_request.head.sha is not a commit hash".into());
            }
            Ok(Delivery::PullUpdate {
                repo: p.repository.full_name,
                pr: p.pull_request.number,
                head_sha: p.pull_request.head.sha,
                closed,
            })
        }
        other => Ok(Delivery::Unhandled(format!(
            "event `{other}` is not used by cc-ci (it needs pull request comments and pull request synchronisation)"
        ))),
    }
}

fn check_names(repo: &str, login: &str) -> Result<(), String> {
    if !cc_ci_harness::names::is_owner_slash_repo(repo) {
        return Err(format!("repository `{repo}` is not owner/name"));
    }
    if !is_valid_login(login) {
        return Err(format!("user `{login}` is not a valid login"));
    }
    Ok(())
}

/// The repository allowlist compares case-insensitively, as Gitea treats names.
pub fn repo_allowed(allowlist: &[String], repo: &str) -> bool {
    allowlist.iter().any(|r| r.eq_ignore_ascii_case(repo))
}

pub fn user_allowed(allowlist: &[String], user: &str) -> bool {
    allowlist.iter().any(|u| u.eq_ignore_ascii_case(user))
}

/// `!testme fresh`: run even when the last result still holds. Carried among the stage words of
/// the trigger and the run (never passed on to `cc-ci run`).
pub const FORCE_WORD: &str = "fresh";

/// The stages of a run without the force word.
pub fn run_stages(stages: &[String]) -> Vec<String> {
    stages
        .iter()
        .filter(|s| *s != FORCE_WORD)
        .cloned()
        .collect()
}

/// Was the run asked for with `!testme fresh`?
pub fn forced(stages: &[String]) -> bool {
    stages.iter().any(|s| s == FORCE_WORD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_lines() {
        assert_eq!(
            parse_command("!testme"),
            Some(Command::Run { stages: vec![] })
        );
        assert_eq!(
            parse_command("please\r\n  !testme upgrade backup  \r\nthanks"),
            Some(Command::Run {
                stages: vec!["upgrade".into(), "backup".into()]
            })
        );
        assert_eq!(
            parse_command("!testme install,restore install"),
            Some(Command::Run {
                stages: vec!["install".into(), "restore".into()]
            })
        );
        assert_eq!(
            parse_command("!testme deploy"),
            Some(Command::BadStages {
                unknown: vec!["deploy".into()]
            })
        );
        for no in [
            "!testmexyz",
            "> !testme",
            "please !testme",
            "`!testme`",
            "!TESTME",
            "",
            "testme",
            "```\n!testme\n```",
            "~~~~ sh\n!testme\n~~~~",
            "```\nnever closed\n!testme",
            "> said:\n!testme",
            ">> !testme",
            "    !testme",
            "\t!testme",
        ] {
            assert_eq!(parse_command(no), None, "{no:?}");
        }
        // After a fence closes, or after a quote ends with a blank line, lines count again.
        for yes in [
            "```\ncode\n```\n!testme",
            "> quoted\n\n!testme",
            "~~~\n```\n~~~\n  !testme",
        ] {
            assert_eq!(
                parse_command(yes),
                Some(Command::Run { stages: vec![] }),
                "{yes:?}"
            );
        }
    }

    #[test]
    fn form_bodies() {
        let json = br#"{"a":"b c&d=e%"}"#;
        let form = b"payload=%7B%22a%22%3A%22b+c%26d%3De%25%22%7D";
        assert_eq!(form_payload(form).unwrap(), json.to_vec());
        assert_eq!(form_payload(b"x=1&payload=%7B%7D").unwrap(), b"{}".to_vec());
        assert!(form_payload(b"x=1").is_err());
        assert!(form_payload(b"payload=%zz").is_err());
        assert!(form_payload(b"payload=%4").is_err());
    }

    #[test]
    fn signatures() {
        let body = br#"{"a":1}"#;
        let good = sign(b"s3cret-value", body);
        assert!(verify_signature(b"s3cret-value", body, &[&good]).is_ok());
        let hub = format!("sha256={good}");
        assert!(verify_signature(b"s3cret-value", body, &[&good, &hub, ""]).is_ok());
        assert_eq!(
            verify_signature(b"s3cret-value", body, &[]),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"s3cret-value", body, &["", " "]),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"other-secret", body, &[&good]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s3cret-value", b"{\"a\":2}", &[&good]),
            Err(SignatureError::Mismatch)
        );
        // One good and one forged header is still a forgery.
        assert_eq!(
            verify_signature(b"s3cret-value", body, &[&good, "00ff"]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s3cret-value", body, &["not-hex"]),
            Err(SignatureError::Mismatch)
        );
    }

    fn comment_payload(action: &str, is_pull: bool, body: &str) -> Vec<u8> {
        serde_json::to_vec_pretty(&json!({
            "action": action,
            "issue": {"id": 9, "number": 4, "title": "t",
                      "pull_request": if is_pull { json!({"merged": false}) } else { json!(null) }},
            "comment": {"id": 77, "body": body, "user": {"id": 1, "login": "alice"},
                        "html_url": "http://forge/o/r/pulls/4#issuecomment-77"},
            "repository": {"id": 3, "name": "r", "full_name": "o/r", "owner": {"login": "o"}},
            "sender": {"login": "alice"},
            "is_pull": is_pull
        }))
        .unwrap()
    }

    #[test]
    fn classify_comments() {
        let d = classify(
            "issue_comment",
            &comment_payload("created", true, "!testme"),
            None,
        )
        .unwrap();
        assert_eq!(
            d,
            Delivery::Trigger(CommentTrigger {
                repo: "o/r".into(),
                pr: 4,
                comment_id: 77,
                user: "alice".into(),
                command: Command::Run { stages: vec![] }
            })
        );
        for (action, pull, body) in [
            ("edited", true, "!testme"),
            ("deleted", true, "!testme"),
            ("created", false, "!testme"),
            ("created", true, "!testmexyz"),
        ] {
            let d = classify("issue_comment", &comment_payload(action, pull, body), None).unwrap();
            assert!(
                matches!(d, Delivery::Ignored(_)),
                "{action} {pull} {body}: {d:?}"
            );
        }
        // cc-ci's own comments never trigger, whatever they say.
        assert!(matches!(
            classify(
                "issue_comment",
                &comment_payload("created", true, "!testme"),
                Some("Alice")
            )
            .unwrap(),
            Delivery::Ignored(_)
        ));
        assert!(classify("issue_comment", b"{}", None).is_err());
        assert!(classify("issue_comment", b"not json", None).is_err());
        assert!(matches!(
            classify("push", b"{}", None).unwrap(),
            Delivery::Unhandled(_)
        ));
    }

    #[test]
    fn classify_pull_request_updates() {
        let p = |action: &str| {
            serde_json::to_vec(&json!({
                "action": action, "number": 4,
                "pull_request": {"number": 4, "state": "open", "head": {"sha": "abcdef1234567", "ref": "f"}},
                "repository": {"full_name": "o/r"}
            }))
            .unwrap()
        };
        assert_eq!(
            classify("pull_request", &p("synchronized"), None).unwrap(),
            Delivery::PullUpdate {
                repo: "o/r".into(),
                pr: 4,
                head_sha: "abcdef1234567".into(),
                closed: false
            }
        );
        assert!(matches!(
            classify("pull_request", &p("closed"), None).unwrap(),
            Delivery::PullUpdate { closed: true, .. }
        ));
        assert!(matches!(
            classify("pull_request", &p("opened"), None).unwrap(),
            Delivery::Ignored(_)
        ));
    }

    #[test]
    fn logins_and_allowlists() {
        assert!(is_valid_login("a.b-c_d"));
        assert!(!is_valid_login("a/b"));
        assert!(!is_valid_login("../x"));
        assert!(repo_allowed(&["Coop/Web".into()], "coop/web"));
        assert!(!repo_allowed(&[], "coop/web"));
        assert!(user_allowed(&["Alice".into()], "alice"));
    }
}
