//! Gitea and Forgejo as they really behave (docs/daemon.md, issue 11): renamed repositories
//! answer writes with redirects, list pages are capped, deliveries arrive out of order and are
//! replayed, the bot's own comments come back to the hook, membership redirects to
//! `public_members`, hooks may use the form content type, descriptions are large. And the
//! daemon-side defences of issue 12: the approved commit is the commit that runs; connection
//! and log-follower limits.

use std::time::Duration;

use cc_ci_testkit::cmd::read;
use cc_ci_testkit::daemon::Env;
use cc_ci_testkit::forge::{BOT, SHA, SHA2, TOKEN};
use cc_ci_testkit::hooks::{
    Flavour, SECRET, comment, comment_payload, deliver_comment, deliver_form, push, testme,
};
use cc_ci_testkit::wait::{eventually, eventually_async, get_status};

/// Send a fixture delivery (crates/daemon/tests/fixtures/payloads) with its exact headers.
async fn deliver_fixture(addr: std::net::SocketAddr, name: &str, delivery: &str) -> (u16, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/payloads")
        .join(format!("{name}.json"));
    let fixture: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    // Gitea sends the payload indented by two spaces.
    let body = serde_json::to_vec_pretty(&fixture["payload"]).unwrap();
    let sig = cc_ci_daemon::trigger::sign(SECRET.as_bytes(), &body);
    let mut req = reqwest::Client::new().post(format!("http://{addr}/hooks/gitea"));
    for (k, v) in fixture["headers"].as_object().unwrap() {
        let v = v
            .as_str()
            .unwrap()
            .replace("{delivery}", delivery)
            .replace("{sig}", &sig)
            // cc-ci does not read the SHA-1 header; any value shows it is ignored.
            .replace("{sha1}", "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        req = req.header(k.as_str(), v);
    }
    let r = req.body(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_of_every_supported_forge_version_trigger_runs() {
    let (env, d, addr) = Env::started(None).await;
    for (i, name) in ["gitea-1.20", "gitea-1.23", "forgejo-7", "forgejo-10"]
        .iter()
        .enumerate()
    {
        let (code, body) = deliver_fixture(addr, name, &format!("fixture-{i}")).await;
        assert_eq!(code, 202, "{name}: {body}");
        let id = env.run_of_comment(9001 + i as i64).await;
        env.wait_status(SHA, "success", &format!("run #{id}")).await;
        // A replay from the settings page: the same payload, a new delivery id.
        let (code, body) = deliver_fixture(addr, name, &format!("fixture-{i}-replay")).await;
        assert_eq!(code, 200, "{name} replay: {body}");
        assert!(body.contains("already processed"), "{body}");
    }
    let runs = read(&env.marks().join("runs.log"));
    assert_eq!(runs.lines().count(), 4, "{runs}");
    d.shutdown().await;
}

/// A repository renamed while its run was going: Gitea answers every API write under the old
/// name with a redirect. The final status and the comment edit must land at the new place.
async fn rename_mid_run(redirect: u16) {
    let env = Env::new().await;
    env.set_mode(None, "gated");
    env.gate();
    env.gitea.state.lock().unwrap().redirect_status = redirect;
    let d = env.start().await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 200).await;
    env.wait_comment(1, "⏳ running").await;
    env.gitea.rename("coop/web", "coop-renamed/web");
    env.release().await;
    let st = env.wait_status(SHA, "success", "passed").await;
    assert_eq!(st.repo, "coop-renamed/web", "{}", env.state());
    let c = env.wait_comment(1, "✅ pass").await;
    assert_eq!(c.repo, "coop-renamed/web");
    // The comment was edited in place, not written anew.
    assert_eq!(env.gitea.bot_comments().len(), 1, "{}", env.state());
    // The run remembers where its repository lives now.
    let one: serde_json::Value = reqwest::get(format!("http://{addr}/runs/1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["forge_repo"], "coop-renamed/web", "{one}");
    // Writes after the first redirect go straight to the new place.
    let requests = env.gitea.state.lock().unwrap().requests.clone();
    let first_new = requests
        .iter()
        .position(|(_, p)| p.contains("/repos/coop-renamed/web/"))
        .unwrap();
    assert!(
        requests[first_new..]
            .iter()
            .all(|(_, p)| !p.contains("/repos/coop/web/")),
        "{requests:?}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_repository_301_reports_land_at_the_new_place() {
    rename_mid_run(301).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_repository_307_reports_land_at_the_new_place() {
    rename_mid_run(307).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_the_forge_keeps_refusing_are_given_up_visibly() {
    let env = Env::new().await;
    env.set_mode(None, "gated");
    env.gate();
    let mut opts = env.options();
    opts.tuning.report_attempts = 2;
    let d = cc_ci_daemon::Daemon::start(env.config.clone(), opts)
        .await
        .unwrap();
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 210).await;
    env.wait_comment(1, "⏳ running").await;
    env.gitea.state.lock().unwrap().down = true;
    env.release().await;
    let q = eventually(
        "cc-ci queue to show the undelivered report",
        30,
        || {
            let mut out = Vec::new();
            cc_ci_daemon::queue(&env.config, &Default::default(), false, &mut out).ok()?;
            let q = String::from_utf8(out).ok()?;
            q.contains("undelivered (given up)").then_some(q)
        },
        || env.state(),
    )
    .await;
    assert!(q.contains("coop/web#1") && q.contains("HTTP 500"), "{q}");
    assert!(!q.contains(TOKEN), "{q}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_events_are_checked_against_the_current_head() {
    let (env, d, addr) = Env::started(Some("hang")).await;
    testme(addr, "coop/web", 1, 220).await;
    env.wait_hanging(1).await;
    let pr_reads = || {
        env.gitea
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(m, p)| m == "GET" && p.starts_with("/api/v1/repos/coop/web/pulls/1?"))
            .count()
    };
    // A replayed or late `synchronized` for a head the pull request no longer has: the API
    // still says SHA, which run 1 tests, so nothing is cancelled.
    let before = pr_reads();
    let (code, body) = push(addr, Flavour::Gitea, "stale-1", "coop/web", 1, SHA2).await;
    assert_eq!(code, 202, "{body}");
    eventually(
        "the pull request to be read",
        10,
        || (pr_reads() > before).then_some(()),
        || env.state(),
    )
    .await;
    let cancelled =
        tokio::time::timeout(Duration::from_secs(2), env.wait_comment(1, "🛑 cancelled")).await;
    assert!(
        cancelled.is_err(),
        "a stale push event cancelled the run: {}",
        env.state()
    );

    // Out of order the other way: the push really happened (the API says SHA2) but the
    // delivery that arrives carries the old head. The API decides: run 1 is superseded.
    env.gitea.set_head("coop/web", 1, SHA2);
    let (code, body) = push(addr, Flavour::Forgejo, "late-2", "coop/web", 1, SHA).await;
    assert_eq!(code, 202, "{body}");
    let c = env.wait_comment(1, "🛑 cancelled").await;
    assert!(c.body.contains("fedcba9876"), "{}", c.body);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_pages_through_capped_lists_and_never_skips_a_comment() {
    let env = Env::new().await;
    {
        let mut st = env.gitea.state.lock().unwrap();
        // The admin's MAX_RESPONSE_ITEMS below what cc-ci asks for.
        st.max_items = 2;
    }
    for n in 2..=5 {
        env.gitea.add_pr("coop/web", n, SHA);
    }
    let mut config = env.config.clone();
    config.forge.webhook_secret_file = None;
    config.forge.poll_repos = vec!["coop/web".into()];
    config.daemon.poll_interval_secs = 1;
    config.daemon.concurrency = 4;
    let d = env.daemon(config.clone()).await;
    let db = env.wait_first_poll("coop/web").await;

    // The trigger is on the last pull request (page 3) and after four other comments there
    // (its own page 3).
    for i in 0..4 {
        env.gitea
            .add_comment("coop/web", 5, "bob", &format!("comment {i}"));
    }
    let c5 = env.gitea.add_comment("coop/web", 5, "alice", "!testme");
    let id = env.run_of_comment(c5).await;
    env.wait_comment(id, "✅ pass").await;

    // A comment written on pull request 2 while a poll is reading pull request 4 (after it
    // read 2), followed by a newer comment on 4: the next poll still finds it.
    env.gitea
        .state
        .lock()
        .unwrap()
        .inject_when_listing
        .push((4, ("coop/web".into(), 2, "alice".into(), "!testme".into())));
    env.gitea
        .state
        .lock()
        .unwrap()
        .inject_when_listing
        .push((4, ("coop/web".into(), 4, "bob".into(), "later".into())));
    let run2 = eventually(
        "a run for pull request 2",
        20,
        || {
            db.list_runs(100)
                .ok()?
                .into_iter()
                .find(|r| r.pr == 2)
                .map(|r| r.id)
        },
        || env.state(),
    )
    .await;
    env.wait_comment(run2, "✅ pass").await;
    let runs = read(&env.marks().join("runs.log"));
    assert_eq!(runs.lines().count(), 2, "{runs}");
    // Lists were read page by page.
    let requests = env.gitea.state.lock().unwrap().requests.clone();
    assert!(
        requests
            .iter()
            .any(|(_, p)| p.contains("/pulls?") && p.contains("page=3")),
        "{requests:?}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_comments_public_members_and_one_refusal_an_hour() {
    let env = Env::new().await;
    {
        let mut st = env.gitea.state.lock().unwrap();
        st.hidden_orgs.insert("friends".into());
        st.public_members.insert(("friends".into(), "dave".into()));
    }
    let mut config = env.config.clone();
    config.forge.org_allowlist.push("friends".into());
    let d = env.daemon(config).await;
    env.gitea.state.lock().unwrap().hook = d.local_addr();
    let addr = d.local_addr().unwrap();

    // cc-ci's own account saying `!testme` (say, quoting someone): never a trigger, and
    // acknowledged with a 2xx.
    eventually(
        "the daemon to read its own login",
        10,
        || {
            env.gitea
                .state
                .lock()
                .unwrap()
                .requests
                .iter()
                .any(|(_, p)| p.starts_with("/api/v1/user?"))
                .then_some(())
        },
        || env.state(),
    )
    .await;
    let (code, body) = comment(addr, "coop/web", 1, 230, BOT, "!testme").await;
    assert!((200..300).contains(&code), "{code} {body}");

    // A public member of an org the bot is not in (303 to public_members, 204 there).
    let (code, body) = comment(addr, "coop/web", 1, 231, "dave", "!testme").await;
    assert_eq!(code, 202, "{body}");
    let id = env.run_of_comment(231).await;
    env.wait_comment(id, "✅ pass").await;

    // A refused user repeating the command gets one reply, not one per comment.
    for (i, cid) in [232, 233, 234].into_iter().enumerate() {
        let (code, body) = comment(addr, "coop/web", 1, cid, "mallory", "!testme").await;
        assert_eq!(code, 202, "{i}: {body}");
    }
    env.wait_reply("@mallory").await;
    // The last of mallory's triggers is decided once the intake has gone through all three.
    let db = env.store();
    eventually(
        "mallory's triggers to be decided",
        10,
        || {
            db.due_triggers(i64::MAX)
                .ok()
                .filter(|t| t.is_empty())
                .map(|_| ())
        },
        || env.state(),
    )
    .await;
    let replies = env
        .gitea
        .bot_comments()
        .iter()
        .filter(|c| c.body.contains("@mallory"))
        .count();
    assert_eq!(replies, 1, "{}", env.state());
    let runs = read(&env.marks().join("runs.log"));
    assert_eq!(runs.lines().count(), 1, "{runs}");
    // Every delivery of the bot's own comments was acknowledged.
    let answers = env.hook_answers();
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|(c, _)| (200..300).contains(c)),
        "{answers:?}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_content_type_and_large_descriptions_are_accepted() {
    let (env, d, addr) = Env::started(None).await;
    let json = comment_payload("created", "coop/web", 1, 240, "alice", "!testme", true);
    let (code, body) = deliver_form(addr, "form-1", &json).await;
    assert_eq!(code, 202, "{body}");
    env.wait_comment(env.run_of_comment(240).await, "✅ pass")
        .await;

    // A 1 MiB description, twice (issue.body and pull_request.body, Gitea 1.23+), escaped
    // as Go's JSON encoder does (`<` becomes `\u003c`).
    let mut v: serde_json::Value = serde_json::from_slice(&comment_payload(
        "created", "coop/web", 1, 241, "alice", "!testme", true,
    ))
    .unwrap();
    let desc = "<b>".repeat((1 << 20) / 3);
    v["issue"]["body"] = desc.clone().into();
    v["pull_request"] = serde_json::json!({"number": 1, "body": desc, "head": {"sha": SHA}});
    let big = serde_json::to_string_pretty(&v)
        .unwrap()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e");
    assert!(big.len() > 8 << 20, "{}", big.len());
    let (code, body) = deliver_comment(addr, Flavour::Forgejo, "big-1", big.as_bytes(), None).await;
    assert_eq!(code, 202, "{body}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_goes_only_on_the_commit_that_was_tested() {
    // The run reports another commit than the approved one it was given.
    let (env, d, addr) = Env::started(Some("othersha")).await;
    testme(addr, "coop/web", 1, 250).await;
    let st = env.wait_status(SHA, "error", "").await;
    let c = env.wait_comment(1, "⚠️ error").await;
    assert!(c.body.contains("approved for"), "{}", c.body);
    assert!(
        env.gitea
            .statuses()
            .iter()
            .all(|s| s.sha == SHA && s.state != "success"),
        "{st:?}"
    );
    let runs = read(&env.marks().join("runs.log"));
    assert!(runs.contains(&format!("ref={SHA} ")), "{runs}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_log_follower_limits_answer_503() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new().await;
    env.set_mode(None, "gated");
    env.gate();
    let mut config = env.config.clone();
    config.daemon.max_connections = 3;
    config.daemon.max_log_followers = 1;
    let d = env.daemon(config).await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 260).await;
    env.wait_comment(1, "⏳ running").await;

    // One follower is allowed; a second is refused while the first streams.
    let first = reqwest::get(format!("http://{addr}/runs/1/log?follow=1"))
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = reqwest::get(format!("http://{addr}/runs/1/log?follow=1"))
        .await
        .unwrap();
    assert_eq!(second.status().as_u16(), 503);
    drop(second);
    // The run page's live events are a follower too.
    let events = reqwest::get(format!("http://{addr}/runs/1/events"))
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 503);
    drop(events);
    drop(first);
    let follow = format!("http://{addr}/runs/1/log?follow=1");
    eventually_async(
        "the follower slot to be free again",
        10,
        || async { get_status(follow.clone()).await.filter(|c| *c == 200) },
        || env.state(),
    )
    .await;

    // Idle connections hold every slot: the next one gets a 503 at once. The follower stream
    // dropped above may still hold a slot until the daemon notices its client left, and free
    // it at any moment: fill slots with idle connections until /healthz is refused.
    let health = format!("http://{addr}/healthz");
    let mut idle = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        while idle.len() < 3 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            idle.push(s);
        }
        let got = get_status(health.clone()).await;
        if got == Some(503) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && idle.len() < 20,
            "no 503 for a connection over the limit with {} idle connections (last answer {got:?}); state:\n{}",
            idle.len(),
            env.state()
        );
        // A slot was free: one more idle connection takes it.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
    }
    drop(idle);
    eventually_async(
        "the connection slots to be free again",
        10,
        || async { get_status(health.clone()).await.filter(|c| *c == 200) },
        || env.state(),
    )
    .await;
    env.release().await;
    env.wait_comment(1, "✅ pass").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_forge_delays_the_pending_status_but_not_the_answer() {
    let (env, d, addr) = Env::started(None).await;
    eventually(
        "the daemon to read its own login",
        10,
        || (env.gitea.state.lock().unwrap().answered >= 1).then_some(()),
        || env.state(),
    )
    .await;
    // From now on every API call takes longer than Gitea waits for a delivery's answer.
    let before = {
        let mut st = env.gitea.state.lock().unwrap();
        st.delay = Duration::from_secs(6);
        st.answered
    };
    let (code, body) = comment(addr, "coop/web", 1, 270, "alice", "!testme").await;
    assert_eq!(code, 202, "{body}");
    // The answer did not wait for any forge call.
    assert_eq!(
        env.gitea.state.lock().unwrap().answered,
        before,
        "{}",
        env.state()
    );
    // The forge gets its answers later; nothing is lost.
    env.gitea.state.lock().unwrap().delay = Duration::ZERO;
    env.wait_status(SHA, "success", "run #1").await;
    d.shutdown().await;
}
