//! The daemon end to end in-process: signed deliveries from a Gitea/Forgejo double, runs as a
//! fake `cc-ci run` child, statuses and comments back on the double.

use cc_ci_testkit::cmd::{exists, mkfifo, read};
use cc_ci_testkit::daemon::{Env, run_pid};
use cc_ci_testkit::forge::{SHA, SHA2, TOKEN};
use cc_ci_testkit::hooks::{
    Flavour, SECRET, comment, comment_payload, deliver, deliver_comment, pull_request_payload,
    push, testme,
};
use cc_ci_testkit::wait::eventually;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_gitea_trigger_yields_pending_then_success_and_one_comment() {
    let (env, d, addr) = Env::started(None).await;
    let (code, body) = comment(addr, "coop/web", 1, 77, "alice", "Looks good.\n!testme\n").await;
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("accepted"), "{body}");

    let ok = env.wait_status(SHA, "success", "passed").await;
    assert_eq!(ok.context, "cc-ci/testme");
    assert_eq!(ok.target_url, "http://ci.test/runs/1");
    let statuses = env.gitea.statuses();
    assert_eq!(statuses[0].state, "pending", "{}", env.state());
    assert!(
        statuses
            .iter()
            .all(|s| s.repo == "coop/web" && s.sha == SHA)
    );
    let c = env.wait_comment(1, "✅ pass").await;
    assert!(c.body.contains("| install | ✅ pass |"), "{}", c.body);
    assert!(c.body.contains("http://ci.test/runs/1/log"), "{}", c.body);
    assert_eq!(env.gitea.bot_comments().len(), 1, "{}", env.state());
    assert_eq!(c.pr, 1);

    // The child got the PR's clone URL and the exact commit that was approved (never the
    // moving `refs/pull/1/head`), and the config file.
    let runs = read(&env.marks().join("runs.log"));
    assert!(
        runs.contains(&format!(
            "recipe={}/coop/web.git ref={SHA} stages= ",
            env.gitea.url()
        )),
        "{runs}"
    );
    // Gitea delivers every comment cc-ci writes or edits back to the hook: each of those
    // deliveries was answered 2xx (anything else turns the hook red in Gitea).
    let answers = eventually(
        "the bot's own comments delivered back",
        10,
        || Some(env.hook_answers()).filter(|a| a.len() >= 2),
        || env.state(),
    )
    .await;
    assert!(
        answers.iter().all(|(code, _)| (200..300).contains(code)),
        "{answers:?}"
    );
    assert!(runs.contains("config.toml"), "{runs}");

    // Read side.
    let (code, health) = get(addr, "/healthz").await;
    assert_eq!((code, health.trim()), (200, "ok"));
    let (code, list) = get(addr, "/runs").await;
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["id"], 1);
    assert_eq!(list[0]["verdict"], "pass");
    let (code, one) = get(addr, "/runs/1").await;
    assert_eq!(code, 200);
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["report"]["verdict"], "pass");
    assert_eq!(one["repo"], "coop/web");
    let (code, log) = get(addr, "/runs/1/log").await;
    assert_eq!(code, 200);
    assert!(log.contains("install: pass"), "{log}");
    assert!(!log.contains(TOKEN), "token leaked into the log: {log}");
    assert!(log.contains("[REDACTED]"), "{log}");
    assert_eq!(get(addr, "/runs/99").await.0, 404);
    assert_eq!(get(addr, "/runs/99/log").await.0, 404);
    assert_eq!(get(addr, "/nope").await.0, 404);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgejo_delivery_with_stages_runs_those_stages() {
    let (env, d, addr) = Env::started(None).await;
    let payload = comment_payload(
        "created",
        "coop/web",
        1,
        78,
        "alice",
        "!testme upgrade backup",
        true,
    );
    let (code, body) = deliver_comment(addr, Flavour::Forgejo, "f-1", &payload, None).await;
    assert_eq!(code, 202, "{body}");
    env.wait_status(SHA, "success", "passed").await;
    let runs = read(&env.marks().join("runs.log"));
    assert!(runs.contains("stages=upgrade,backup "), "{runs}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_get_401_and_nothing_else() {
    let (env, d, addr) = Env::started(None).await;
    let payload = comment_payload("created", "coop/web", 1, 80, "alice", "!testme", true);
    let wrong = cc_ci_daemon::trigger::sign(b"not-the-secret", &payload);
    for (i, sig) in [Some(wrong.as_str()), Some(""), Some("zz"), Some("00")]
        .into_iter()
        .enumerate()
    {
        for flavour in [Flavour::Gitea, Flavour::Forgejo] {
            let (code, body) =
                deliver_comment(addr, flavour, &format!("bad-{i}"), &payload, sig).await;
            assert_eq!(code, 401, "{sig:?} {flavour:?}: {body}");
        }
    }
    // A body changed after signing.
    let good = cc_ci_daemon::trigger::sign(SECRET.as_bytes(), &payload);
    let mut tampered = payload.clone();
    tampered.extend_from_slice(b" ");
    let (code, _) = deliver_comment(addr, Flavour::Gitea, "t", &tampered, Some(&good)).await;
    assert_eq!(code, 401);
    // No signature header at all.
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/hooks/gitea"))
        .header("X-Gitea-Event", "issue_comment")
        .header("X-Gitea-Delivery", "nosig")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Too large: one byte over the default limit, answered 413 after the sender sent it all.
    let big = vec![b' '; (16 << 20) + 1];
    let (code, _) = deliver_comment(addr, Flavour::Gitea, "big", &big, None).await;
    assert_eq!(code, 413);
    // A correctly signed delivery of this very comment still works afterwards: the rejected
    // ones were not recorded as seen.
    let (code, body) = deliver_comment(addr, Flavour::Gitea, "good", &payload, None).await;
    assert_eq!(code, 202, "{body}");
    env.wait_status(SHA, "success", "passed").await;
    assert_eq!(env.gitea.bot_comments().len(), 1, "{}", env.state());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_non_triggers_are_acknowledged_and_start_nothing() {
    let (env, d, addr) = Env::started(Some("hang")).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "issue_comment",
            comment_payload("created", "coop/web", 1, 90, "alice", "!testmexyz", true),
            200,
        ),
        (
            "issue_comment",
            comment_payload(
                "created",
                "coop/web",
                1,
                91,
                "alice",
                "please > !testme",
                true,
            ),
            200,
        ),
        (
            "issue_comment",
            comment_payload("edited", "coop/web", 1, 92, "alice", "!testme", true),
            200,
        ),
        (
            "issue_comment",
            comment_payload("deleted", "coop/web", 1, 93, "alice", "!testme", true),
            200,
        ),
        (
            "issue_comment",
            comment_payload("created", "coop/web", 1, 94, "alice", "!testme", false),
            200,
        ),
        (
            "pull_request",
            pull_request_payload("opened", "coop/web", 1, SHA),
            200,
        ),
        // The forge's "Test delivery" button sends a push: acknowledged, nothing done.
        ("push", b"{\"ref\":\"refs/heads/main\"}".to_vec(), 200),
        ("issue_comment", b"{\"action\":\"created\"}".to_vec(), 400),
        (
            "issue_comment",
            comment_payload("created", "evil/repo", 1, 95, "alice", "!testme", true),
            403,
        ),
    ];
    for (i, (event, payload, want)) in cases.iter().enumerate() {
        let (code, body) = deliver(
            addr,
            Flavour::Gitea,
            event,
            event,
            &format!("n-{i}"),
            payload,
            None,
        )
        .await;
        assert_eq!(code, *want, "case {i}: {body}");
    }
    assert!(env.gitea.statuses().is_empty(), "{}", env.state());
    assert!(env.gitea.bot_comments().is_empty(), "{}", env.state());

    let payload = comment_payload("created", "coop/web", 1, 96, "alice", "!testme", true);
    let (code, body) = deliver_comment(addr, Flavour::Gitea, "r-1", &payload, None).await;
    assert_eq!(code, 202, "{body}");
    // A replay from the hook's settings page resends the old payload under a NEW delivery id
    // (r-2 below): the comment id deduplicates it. The same delivery id twice (r-1) is not
    // something Gitea sends, but is deduplicated too. Both are acknowledged (2xx: nothing is
    // wrong with them) and start nothing.
    let (code, _) = deliver_comment(addr, Flavour::Gitea, "r-1", &payload, None).await;
    assert_eq!(code, 200);
    let (code, _) = deliver_comment(addr, Flavour::Forgejo, "r-2", &payload, None).await;
    assert_eq!(code, 200);
    env.wait_comment(1, "running").await;
    let runs = eventually(
        "the run process to start",
        10,
        || Some(read(&env.marks().join("runs.log"))).filter(|r| !r.is_empty()),
        || env.state(),
    )
    .await;
    assert_eq!(runs.lines().count(), 1, "{runs}");
    let (code, list) = get(addr, "/runs").await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorisation_by_user_allowlist_and_org_membership() {
    let env = Env::new().await;
    env.gitea.add_member("coop", "carol");
    env.gitea
        .state
        .lock()
        .unwrap()
        .hidden_orgs
        .insert("secret-org".into());
    let mut config = env.config.clone();
    config.forge.org_allowlist.push("secret-org".into());
    let d = env.daemon(config).await;
    let addr = d.local_addr().unwrap();

    // Org membership needs the forge, asked after the answer: accepted, then refused.
    let (code, body) = comment(addr, "coop/web", 1, 100, "mallory", "!testme").await;
    assert_eq!(code, 202, "{body}");
    let reply = env.wait_reply("@mallory").await;
    assert!(
        reply.body.contains("not") || reply.body.contains("only"),
        "{}",
        reply.body
    );
    assert!(cc_ci_daemon::trigger::parse_command(&reply.body).is_none());

    // An org member may.
    let (code, body) = comment(addr, "coop/web", 1, 101, "carol", "!testme").await;
    assert_eq!(code, 202, "{body}");
    env.wait_status(SHA, "success", "passed").await;

    // Bad stage names: a reply, no run.
    let (code, _) = comment(addr, "coop/web", 1, 102, "alice", "!testme deploy").await;
    assert_eq!(code, 202);
    eventually(
        "a reply about the unknown stage",
        10,
        || {
            env.gitea
                .bot_comments()
                .into_iter()
                .find(|c| c.body.contains("`deploy`"))
        },
        || env.state(),
    )
    .await;

    let runs = read(&env.marks().join("runs.log"));
    assert_eq!(runs.lines().count(), 1, "{runs}");
    let replies = env
        .gitea
        .bot_comments()
        .iter()
        .filter(|c| c.body.contains("@mallory"))
        .count();
    assert_eq!(replies, 1, "{}", env.state());
    assert!(
        env.gitea
            .statuses()
            .iter()
            .all(|s| s.state == "pending" || s.state == "success")
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_broken_runs_never_report_success() {
    let env = Env::new().await;
    env.gitea.add_pr("coop/web", 2, SHA2);
    env.set_mode(Some(1), "fail");
    env.set_mode(Some(2), "infra");
    let d = env.start().await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 110).await;
    let st = env.wait_status(SHA, "failure", "failed: install").await;
    assert!(st.description.contains("run #1"), "{st:?}");
    let c = env.wait_comment(1, "❌ fail").await;
    assert!(c.body.contains("never became healthy"), "{}", c.body);

    testme(addr, "coop/web", 2, 111).await;
    env.wait_status(SHA2, "error", "infrastructure").await;
    let c = env.wait_comment(2, "⚠️ error").await;
    assert!(
        c.body.contains("docker engine unreachable"),
        "log tail missing: {}",
        c.body
    );
    assert!(!c.body.contains(TOKEN), "{}", c.body);
    assert!(
        env.gitea.statuses().iter().all(|s| s.state != "success"),
        "{}",
        env.state()
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_trigger_supersedes_the_running_run() {
    let env = Env::new().await;
    env.set_mode(Some(1), "hang");
    let d = env.start().await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 120).await;
    env.wait_comment(1, "⏳ running").await;
    env.wait_hanging(1).await;
    testme(addr, "coop/web", 1, 121).await;
    let c1 = env.wait_comment(1, "🛑 cancelled").await;
    assert!(c1.body.contains("superseded by run #2"), "{}", c1.body);
    assert!(!c1.body.contains("cc-ci: ✅"), "{}", c1.body);
    // The tier that did pass before the cancel is shown as such, the rest as not run.
    assert!(c1.body.contains("| upgrade | — not run |"), "{}", c1.body);
    // (The running comment already shows the passed install tier: wait for the final status.)
    env.wait_status(SHA, "success", "run #2").await;
    let term = read(&env.marks().join("term.log"));
    assert!(term.contains("term 1"), "run 1 did not get SIGTERM: {term}");
    // The last status on the commit is run 2's success; run 1 never claimed anything else.
    let statuses = env.gitea.statuses();
    let last = statuses.last().unwrap();
    assert_eq!(
        (last.state.as_str(), last.description.contains("run #2")),
        ("success", true),
        "{}",
        env.state()
    );
    assert!(
        statuses
            .iter()
            .all(|s| !(s.description.contains("run #1") && s.state == "success"))
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_commits_cancel_the_running_run() {
    let (env, d, addr) = Env::started(Some("hang")).await;
    testme(addr, "coop/web", 1, 130).await;
    env.wait_comment(1, "⏳ running").await;
    // The child must be running: a head moved before it starts stops the run with another
    // reason (the runner's own check), which is not what this test is about.
    env.wait_hanging(1).await;
    env.gitea.set_head("coop/web", 1, SHA2);
    let (code, body) = push(addr, Flavour::Gitea, "sync-1", "coop/web", 1, SHA2).await;
    assert_eq!(code, 202, "{body}");
    let c = env.wait_comment(1, "🛑 cancelled").await;
    assert!(c.body.contains("new commits"), "{}", c.body);
    env.wait_status(SHA, "error", "cancelled").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_and_operator_cancel_tear_the_run_down() {
    let env = Env::new().await;
    env.gitea.add_pr("coop/web", 2, SHA2);
    env.set_mode(Some(1), "stubborn");
    env.set_mode(Some(2), "hang");
    let mut config = env.config.clone();
    config.daemon.cancel_grace_secs = 1;
    config.daemon.concurrency = 2;
    let d = env.daemon(config.clone()).await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 140).await;
    testme(addr, "coop/web", 2, 141).await;
    env.wait_hanging(1).await;
    env.wait_hanging(2).await;

    let mut out = Vec::new();
    cc_ci_daemon::queue(&config, &Default::default(), false, &mut out).unwrap();
    let q = String::from_utf8(out).unwrap();
    assert!(q.contains("coop/web#1") && q.contains("coop/web#2"), "{q}");

    // Run 1 ignores SIGTERM: after the grace period it is killed and gc runs.
    let gc_before = read(&env.marks().join("gc.log")).lines().count();
    let msg = cc_ci_daemon::cancel(&config, &Default::default(), 1).unwrap();
    assert!(msg.contains("run 1"), "{msg}");
    let c = env.wait_comment(1, "🛑 cancelled").await;
    assert!(c.body.contains("operator"), "{}", c.body);
    let gc_after = read(&env.marks().join("gc.log")).lines().count();
    assert_eq!(gc_after, gc_before + 1, "gc did not run after SIGKILL");
    // Run 1's own process (runs 1 and 2 start together, in either order).
    let pid: i32 = run_pid(&env.marks(), 1).unwrap();
    assert!(!exists(pid), "the stubborn run process {pid} survived");
    assert!(matches!(
        cc_ci_daemon::cancel(&config, &Default::default(), 1),
        Err(cc_ci_daemon::DaemonError::RunFinished { .. })
    ));

    let mut log = Vec::new();
    cc_ci_daemon::logs(&config, &Default::default(), 1, true, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(
        log.contains("SIGKILL") && log.contains("gc finished"),
        "{log}"
    );
    d.shutdown().await;

    // A run that outlives its deadline is an error, not a pass.
    config.daemon.run_timeout_secs = 1;
    std::fs::write(env.marks().join("mode"), "hang").unwrap();
    let d = env.daemon(config.clone()).await;
    let addr = d.local_addr().unwrap();
    env.gitea.add_pr("coop/web", 3, SHA2);
    let (code, body) = comment(addr, "coop/web", 3, 142, "alice", "!testme").await;
    assert_eq!(code, 202, "{body}");
    let id = env.run_of_comment(142).await;
    let c = env.wait_comment(id, "deadline").await;
    assert!(c.body.contains("⚠️ error"), "{}", c.body);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_trigger_and_interrupted_run_survive_a_restart() {
    let env = Env::new().await;
    env.gitea.add_pr("coop/other", 5, SHA2);
    env.set_mode(None, "hang");
    let mut config = env.config.clone();
    config.daemon.cancel_grace_secs = 1;
    let d = env.daemon(config.clone()).await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 150).await;
    let before = env.wait_comment(1, "⏳ running").await;
    env.wait_hanging(1).await;
    testme(addr, "coop/other", 5, 151).await;
    env.wait_comment(2, "⏳ queued").await;
    d.shutdown().await;
    assert!(read(&env.marks().join("term.log")).contains("term 1"));

    // Restart: run 1 (interrupted, re-queued) and run 2 (still queued) both run.
    env.set_mode(None, "pass");
    let d = env.daemon(config.clone()).await;
    env.wait_status(SHA, "success", "run #1").await;
    env.wait_status(SHA2, "success", "run #2").await;
    let c = env.wait_comment(1, "✅ pass").await;
    assert_eq!(c.id, before.id, "run 1 got a second comment");
    let log = read(&d.state_dir().join("runs/1/log.txt"));
    assert!(
        log.contains("interrupted, re-queued") && log.contains("attempt 2"),
        "{log}"
    );
    // One comment per run, edited in place across the restart.
    assert_eq!(env.gitea.bot_comments().len(), 2, "{}", env.state());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_outage_delays_reports_but_loses_none() {
    let (env, d, addr) = Env::started(Some("gated")).await;
    env.gate();
    // One failed status post is retried within the call.
    env.gitea.state.lock().unwrap().fail_statuses = 1;
    testme(addr, "coop/web", 1, 160).await;
    env.wait_status(SHA, "pending", "").await;
    env.wait_comment(1, "⏳ running").await;
    // While the forge is down the run finishes; the result waits in the store.
    env.gitea.state.lock().unwrap().down = true;
    env.release().await;
    eventually(
        "run 1 to finish",
        20,
        || {
            let mut out = Vec::new();
            cc_ci_daemon::queue(&env.config, &Default::default(), false, &mut out).ok()?;
            String::from_utf8(out)
                .ok()?
                .contains("no runs")
                .then_some(())
        },
        || env.state(),
    )
    .await;
    assert!(
        env.gitea.statuses().iter().all(|s| s.state == "pending"),
        "{}",
        env.state()
    );
    env.gitea.state.lock().unwrap().down = false;
    env.wait_status(SHA, "success", "passed").await;
    env.wait_comment(1, "✅ pass").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_log_follow_streams_until_the_run_ends() {
    let (env, d, addr) = Env::started(Some("gated")).await;
    let fifo = env.marks().join("go");
    mkfifo(&fifo);
    testme(addr, "coop/web", 1, 170).await;
    // The running comment shows the tiers done so far from progress.json.
    let c = env.wait_comment(1, "| install | ✅ pass |").await;
    assert!(c.body.contains("⏳ running"), "{}", c.body);
    let mut resp = reqwest::get(format!("http://{addr}/runs/1/log?follow=1"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut got = String::new();
    while !got.contains("install: pass") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk())
            .await
            .expect("no log chunk within 10 s")
            .unwrap()
            .expect("log stream ended early");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    let writer = tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"));
    let rest = tokio::time::timeout(std::time::Duration::from_secs(20), resp.text())
        .await
        .expect("follow did not end with the run")
        .unwrap();
    writer.await.unwrap().unwrap();
    assert!(rest.contains("run finished: pass"), "{got}{rest}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_and_slow_senders() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let sock = env.dir.path().join("cc-ci.sock");
    // A stale socket file from an earlier daemon is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut config = env.config.clone();
    config.daemon.listen = sock.display().to_string();
    config.daemon.request_timeout_secs = 1;
    let d = env.daemon(config).await;
    assert!(d.local_addr().is_none());
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // A body that never completes is cut off after request_timeout_secs with 408.
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(
        b"POST /hooks/gitea HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Gitea-Event: issue_comment\r\n\r\n{\"a\"",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    d.shutdown().await;
}
