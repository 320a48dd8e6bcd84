//! End-to-end tests of `cc-ci serve`: the real `cc-ci` binary as the daemon, its real
//! `cc-ci run` children on the real swarm with the stand-in abra, and an in-process
//! Gitea/Forgejo double (`cc_ci_testkit::forge`) that also serves the recipe repositories
//! over git's "dumb" HTTP protocol, so a run clones `<forge>/<owner>/<repo>.git` at
//! `refs/pull/<n>/head` exactly as it would from a real forge.
//!
//! Needs `scripts/setup-swarm` (Docker, swarm, fixture images, `systemd-socket-activate`) and
//! `cargo build -p abra-standin`. Every test has its own `harness.domain_suffix`, work and
//! state directories and port, so the tests run concurrently with each other and with other
//! suites on the same swarm; each removes what it deployed even when it fails (a guard that
//! kills its daemon and runs `cc-ci gc` with its config).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cc_ci_daemon::config::Config;
use cc_ci_harness::engine::Engine;
use cc_ci_harness::names;
use cc_ci_testkit::cmd::{alive, free_port, git, random_hex, read};
use cc_ci_testkit::fixtures::{ForgeRepo, make_fixture_repo, recipe_dir};
use cc_ci_testkit::forge::{CommentRec, Gitea, StatusRec, TOKEN};
use cc_ci_testkit::hooks::{Comment, Flavour, SECRET, comment_payload, deliver};
use cc_ci_testkit::serve::{Notifications, Serve, gc_until_clean, logged_run_pid, logs};
use cc_ci_testkit::wait::eventually;
use serde_json::Value;

/// Longest a real run may take here (all four tiers, on a busy two-core machine).
const RUN_SECS: u64 = 300;

fn cc_ci() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cc-ci"))
}

/// A pull request on the double: repository `repo` (its name is the recipe name) built from
/// fixture `fixture`, whose `refs/pull/<pr>/head` is revision `rev` of that fixture.
struct Pr {
    repo: &'static str,
    fixture: &'static str,
    pr: i64,
    rev: &'static str,
}

/// One test's world: forge double with the recipe repositories, config, daemon process.
struct Suite {
    dir: tempfile::TempDir,
    suffix: String,
    gitea: Gitea,
    config: Config,
    config_path: PathBuf,
    addr: SocketAddr,
    daemon: Option<Serve>,
    /// (repo, pr) → head commit.
    heads: BTreeMap<(String, i64), String>,
    engine: Engine,
}

impl Suite {
    async fn new(prs: &[Pr], tweak: impl FnOnce(&mut Config)) -> Self {
        let standin = cc_ci_testkit::standin_beside(&cc_ci());
        let dir = tempfile::tempdir().expect("tempdir");
        let suffix = format!("t{}.ci.local", random_hex());
        let gitea = Gitea::start().await;
        let git_root = dir.path().join("git");
        gitea.serve_git(&git_root);

        let mut heads = BTreeMap::new();
        let mut repos: BTreeMap<&str, ForgeRepo> = BTreeMap::new();
        for p in prs {
            let repo = repos.entry(p.repo).or_insert_with(|| {
                let (_, name) = p.repo.split_once('/').unwrap();
                assert_eq!(name, p.fixture, "the repository name is the recipe name");
                let src = dir.path().join("src").join(p.repo);
                make_fixture_repo(&recipe_dir(p.fixture), &src);
                ForgeRepo::publish(&git_root, p.repo, &src)
            });
            let sha = repo.pull_request(&gitea, p.repo, p.pr, p.rev);
            heads.insert((p.repo.to_string(), p.pr), sha);
        }
        for repo in repos.values() {
            repo.update_server_info();
        }

        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = Config::default();
        config.harness.abra = Some(standin.display().to_string());
        config.harness.domain_suffix = suffix.clone();
        config.harness.work_dir = Some(dir.path().join("work"));
        config.harness.stability_window_secs = 3;
        config.daemon.state_dir = Some(dir.path().join("state"));
        config.daemon.listen = addr.to_string();
        config.daemon.public_url = format!("http://{addr}");
        config.daemon.cancel_grace_secs = 20;
        config.forge.url = gitea.url();
        config.forge.token_file = Some(dir.path().join("token"));
        config.forge.webhook_secret_file = Some(dir.path().join("secret"));
        config.forge.repo_allowlist = prs.iter().map(|p| p.repo.to_string()).collect();
        config.forge.org_allowlist = vec!["coop".into()];
        config.forge.user_allowlist = vec!["alice".into()];
        tweak(&mut config);
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let engine = Engine::connect(std::env::var("DOCKER_HOST").ok().as_deref())
            .expect("the Docker engine (run scripts/setup-swarm)");
        Suite {
            dir,
            suffix,
            gitea,
            config,
            config_path,
            addr,
            daemon: None,
            heads,
            engine,
        }
    }

    fn head(&self, repo: &str, pr: i64) -> String {
        self.heads[&(repo.to_string(), pr)].clone()
    }

    fn daemon_log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `cc-ci serve` binding `daemon.listen` itself.
    fn start_plain(&mut self) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        self.daemon = Some(Serve::plain(
            &cc_ci(),
            &self.config_path,
            &self.daemon_log(),
        ));
    }

    /// `cc-ci serve` under `systemd-socket-activate` on `daemon.listen`'s address.
    fn start_socket_activated(&mut self, notify: &Path) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        self.daemon = Some(Serve::socket_activated(
            &cc_ci(),
            &self.config_path,
            self.addr,
            notify,
            &self.dir.path().join("unused.sock"),
            &self.daemon_log(),
        ));
    }

    fn kill9(&mut self) {
        self.daemon.take().expect("no daemon running").kill9();
    }

    /// SIGTERM, then wait for a clean exit.
    async fn stop(&mut self) {
        let mut d = self.daemon.take().expect("no daemon running");
        d.stop(|| self.state()).await;
    }

    async fn wait_healthy(&mut self) {
        let mut d = self.daemon.take().expect("no daemon running");
        d.wait_healthy(self.addr, || self.state()).await;
        self.daemon = Some(d);
    }

    /// A comment delivery signed with the webhook secret.
    async fn comment(&self, flavour: Flavour, c: Comment<'_>) -> (u16, String) {
        let delivery = format!("{}-{}", random_hex(), c.id);
        c.deliver(self.addr, flavour, &delivery).await
    }

    /// Deliver a comment and assert the daemon accepted it (HTTP 202), naming the comment, the
    /// answer and the daemon's state when it did not.
    async fn comment_accepted(&self, flavour: Flavour, c: Comment<'_>) {
        let what = format!("{} #{} comment {}", c.repo, c.pr, c.id);
        let (code, body) = self.comment(flavour, c).await;
        assert_eq!(code, 202, "{what}: {body}\n{}", self.state());
    }

    fn statuses(&self, repo: &str, sha: &str) -> Vec<StatusRec> {
        self.gitea
            .statuses()
            .into_iter()
            .filter(|s| s.repo == repo && s.sha == sha)
            .collect()
    }

    /// Wait for a status on `repo`'s commit `sha` that satisfies `ok`.
    async fn wait_status(
        &self,
        repo: &str,
        sha: &str,
        secs: u64,
        ok: impl Fn(&StatusRec) -> bool,
    ) -> StatusRec {
        eventually(
            &format!("a matching commit status on {repo}@{sha}"),
            secs,
            || self.statuses(repo, sha).into_iter().find(|s| ok(s)),
            || self.state(),
        )
        .await
    }

    async fn wait_final(&self, repo: &str, sha: &str) -> StatusRec {
        self.wait_status(repo, sha, RUN_SECS, |s| s.state != "pending")
            .await
    }

    /// The run a status links to (`<public_url>/runs/<id>`).
    async fn run_json(&self, status: &StatusRec) -> Value {
        let r = reqwest::get(&status.target_url)
            .await
            .unwrap_or_else(|e| panic!("GET {}: {e}", status.target_url));
        assert_eq!(r.status().as_u16(), 200, "GET {}", status.target_url);
        r.json().await.unwrap()
    }

    fn bot_comments_on(&self, repo: &str, pr: i64) -> Vec<CommentRec> {
        self.gitea
            .bot_comments()
            .into_iter()
            .filter(|c| c.repo == repo && c.pr == pr)
            .collect()
    }

    /// Swarm objects of this test's stacks (`domain_suffix`), plus those of `known` stacks.
    async fn leftovers(&self, known: &[String]) -> Vec<String> {
        let mut stacks: Vec<String> = known.to_vec();
        stacks.extend(
            self.engine
                .stack_namespaces()
                .await
                .unwrap()
                .into_iter()
                .filter(|ns| names::is_ci_stack(ns, &self.suffix)),
        );
        stacks.sort();
        stacks.dedup();
        let mut out = Vec::new();
        for s in &stacks {
            out.extend(self.engine.stack_objects(s).await.unwrap().describe());
        }
        // Secrets and volumes abra creates without the namespace label.
        out.extend(
            self.engine
                .object_names()
                .await
                .unwrap()
                .into_iter()
                .filter(|n| names::ci_stack_of_object(n, &self.suffix).is_some())
                .map(|n| format!("by name: {n}")),
        );
        out.sort();
        out.dedup();
        out
    }

    async fn stacks(&self) -> Vec<String> {
        self.engine
            .stack_namespaces()
            .await
            .unwrap()
            .into_iter()
            .filter(|ns| names::is_ci_stack(ns, &self.suffix))
            .collect()
    }

    /// Wait until a stack of this test other than `known` exists (a run is deploying); returns
    /// its name.
    async fn wait_stack(&self, what: &str, known: &[String]) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(stack) = self.stacks().await.into_iter().find(|s| !known.contains(s)) {
                return stack;
            }
            assert!(
                Instant::now() < deadline,
                "{what} deployed nothing within 120 s\n{}",
                self.state()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `cc-ci <args> --config <this test's config>`; returns (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(cc_ci())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run cc-ci");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn assert_no_leftovers(&self, known: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = self.leftovers(known).await;
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "swarm objects of this test remain after 120 s: {left:?}\n{}",
                self.state()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Everything that helps understand a failure.
    fn state(&self) -> String {
        format!(
            "suffix {}\n{}git requests: {}\n{}",
            self.suffix,
            self.gitea.describe(),
            self.gitea.state.lock().unwrap().git_requests.len(),
            logs(&self.daemon_log(), &self.state_dir())
        )
    }

    /// Neither secret may appear in anything the daemon or its runs wrote.
    fn assert_no_secrets_written(&self) {
        let mut files = vec![self.daemon_log()];
        let mut dirs = vec![self.state_dir()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_none_or(|x| x != "sqlite") {
                    files.push(p);
                }
            }
        }
        for f in files {
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
            assert!(
                !text.contains(TOKEN) && !text.contains(SECRET),
                "{} contains a secret",
                f.display()
            );
        }
        for c in self.gitea.bot_comments() {
            assert!(!c.body.contains(TOKEN) && !c.body.contains(SECRET));
        }
    }
}

impl Drop for Suite {
    /// Kill the daemon (its runs die with it) and tear down whatever this test deployed.
    fn drop(&mut self) {
        drop(self.daemon.take());
        gc_until_clean(&cc_ci(), &self.config_path);
    }
}

/// The id in a run link `<public_url>/runs/<id>`.
fn run_id(status: &StatusRec) -> i64 {
    status
        .target_url
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no run id in {status:?}"))
}

/// Socket activation and sd_notify; a Gitea-shaped and a Forgejo-shaped trigger that pass, one
/// that fails a check and one the harness refuses, all at once: pending then the final status,
/// one comment each with the per-tier table, nothing left on the swarm, no secret written
/// anywhere, a clean SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_path_socket_activated_pass_and_fail() {
    let mut s = Suite::new(
        &[
            Pr {
                repo: "coop/web",
                fixture: "web",
                pr: 1,
                rev: "HEAD",
            },
            Pr {
                repo: "forgejo/web",
                fixture: "web",
                pr: 3,
                rev: "HEAD",
            },
            Pr {
                repo: "coop/web-nolabel",
                fixture: "web-nolabel",
                pr: 2,
                rev: "HEAD",
            },
            Pr {
                repo: "coop/web-badcompose",
                fixture: "web-badcompose",
                pr: 4,
                rev: "HEAD",
            },
        ],
        |c| c.daemon.concurrency = 4,
    )
    .await;
    // Carol may trigger as a member of an allowlisted organisation.
    s.gitea.add_member("coop", "carol");
    let notify = Notifications::bind(s.dir.path());
    s.start_socket_activated(&notify.path);
    s.wait_healthy().await;
    eventually(
        "READY=1",
        10,
        || notify.has("READY=1").then_some(()),
        || s.state(),
    )
    .await;
    assert!(
        !s.dir.path().join("unused.sock").exists(),
        "the daemon bound --listen despite socket activation"
    );

    let web = s.head("coop/web", 1);
    let forgejo_web = s.head("forgejo/web", 3);
    let nolabel = s.head("coop/web-nolabel", 2);
    let badcompose = s.head("coop/web-badcompose", 4);
    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web", 1, 501, "alice", "!testme install"),
    )
    .await;
    s.comment_accepted(
        Flavour::Forgejo,
        Comment::new(
            "forgejo/web",
            3,
            502,
            "carol",
            "Looks good.\n\n!testme install\n",
        ),
    )
    .await;
    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web-nolabel", 2, 503, "alice", "!testme install"),
    )
    .await;

    s.comment_accepted(
        Flavour::Forgejo,
        Comment::new("coop/web-badcompose", 4, 504, "alice", "!testme"),
    )
    .await;

    // A recipe the harness refuses (exit 2, nothing deployed): an error, never a pass, and the
    // comment shows the cause from the end of the log.
    let fin = s.wait_final("coop/web-badcompose", &badcompose).await;
    assert!(
        fin.state == "error" && fin.description.contains("bad input"),
        "{fin:?}\n{}",
        s.state()
    );
    eventually(
        "the error comment of coop/web-badcompose#4",
        30,
        || {
            s.bot_comments_on("coop/web-badcompose", 4)
                .into_iter()
                .find(|c| c.body.contains("⚠️ error") && c.body.contains("not valid YAML"))
        },
        || s.state(),
    )
    .await;

    let mut domains = Vec::new();
    for (repo, pr, sha, want) in [
        ("coop/web", 1, &web, "success"),
        ("forgejo/web", 3, &forgejo_web, "success"),
        ("coop/web-nolabel", 2, &nolabel, "failure"),
    ] {
        let fin = s.wait_final(repo, sha).await;
        assert_eq!(fin.state, want, "{repo}#{pr}: {fin:?}\n{}", s.state());
        let all = s.statuses(repo, sha);
        assert_eq!(all[0].state, "pending", "{repo}#{pr}: {all:?}");
        assert!(all.iter().all(|st| st.context == "cc-ci/testme"), "{all:?}");
        assert_eq!(
            all.iter().filter(|st| st.state != "pending").count(),
            1,
            "{repo}#{pr}: exactly one final status: {all:?}"
        );
        let id = run_id(&fin);
        assert!(
            fin.target_url
                .starts_with(&format!("{}/runs/", s.config.daemon.public_url)),
            "{fin:?}"
        );

        // The comment is edited to the final table right after the final status.
        let (tier_line, needle) = if want == "success" {
            ("| install | ✅ pass |", "cc-ci: ✅ pass")
        } else {
            ("| install | ❌ fail |", "version-label")
        };
        eventually(
            &format!("the final comment of {repo}#{pr}"),
            30,
            || {
                s.bot_comments_on(repo, pr)
                    .into_iter()
                    .find(|c| c.body.contains(tier_line) && c.body.contains(needle))
            },
            || s.state(),
        )
        .await;
        let comments = s.bot_comments_on(repo, pr);
        assert_eq!(comments.len(), 1, "one comment per run: {comments:?}");
        let c = &comments[0];
        assert!(
            c.body.contains("| tier | verdict | duration |")
                && c.body.contains(&format!("<!-- cc-ci run {id} -->")),
            "{}",
            c.body
        );
        if want == "failure" {
            assert!(
                fin.description.contains("install"),
                "the failure status names the tier: {fin:?}"
            );
        }

        let run = s.run_json(&fin).await;
        let report = &run["report"];
        assert_eq!(report["head_sha"], sha.as_str(), "{run:#}");
        assert_eq!(report["deploy_count"], 1, "{run:#}");
        assert_eq!(
            report["teardown"]["leftovers"].as_array().map(Vec::len),
            Some(0),
            "{run:#}"
        );
        let domain = report["app_domain"].as_str().unwrap().to_string();
        assert!(
            domain.ends_with(&format!(".{}", s.suffix)),
            "{domain} is not under {}",
            s.suffix
        );
        domains.push(names::stack_name(&domain));
    }
    // A real run's page in a real browser (crates/daemon/tests/pages.rs covers the pages in
    // depth with made-up runs), and /metrics counting the real runs.
    let fin = s.wait_final("coop/web", &web).await;
    let b = cc_ci_testkit::browser::Browser::start().await;
    b.goto(&fin.target_url).await;
    assert_eq!(
        b.js("return document.querySelector('#state').dataset.state + ' ' + Array.from(document.querySelectorAll('#timeline tr.tier')).map(r => r.dataset.tier + ':' + r.cells[1].textContent).join(' ')").await,
        "pass install:pass"
    );
    let checks = b.text("#checks").await;
    assert!(
        checks.contains("converged") && checks.contains("stable"),
        "{checks}"
    );
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#steps tr.wait')).map(r => r.cells[2].textContent).join(' | ')").await.as_str().map(|w| w.contains("waiting for convergence") && w.contains("stability window")),
        Some(true),
        "the waits are not among the steps"
    );
    assert!(!b.text("body").await.contains(TOKEN));
    b.close().await;
    let metrics = reqwest::get(format!("{}/metrics", s.config.daemon.public_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cc_ci_runs{state=\"done\",verdict=\"pass\"} 2"),
        "{metrics}"
    );

    // The runs cloned the recipes from the forge, at the pull requests' refs.
    assert!(
        s.gitea
            .state
            .lock()
            .unwrap()
            .git_requests
            .iter()
            .any(|p| p == "/coop/web-nolabel.git/info/refs"),
        "{}",
        s.state()
    );
    s.assert_no_leftovers(&domains).await;
    s.assert_no_secrets_written();
    let log = read(&s.daemon_log());
    assert!(
        log.contains("cc-ci daemon ready") && !log.contains('\x1b'),
        "the daemon log is plain text (no terminal colours in a file):\n{log}"
    );

    s.stop().await;
    assert!(notify.has("STOPPING=1"), "{:?}", notify.all());
}

/// kill -9 of the daemon while a run deploys, with a second trigger queued: after a restart
/// nothing of the killed run is left on the swarm, the queued trigger still runs, and the
/// interrupted run is re-queued once (daemon.max_requeues = 1) and runs to a final status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_restart_leaves_nothing_and_loses_nothing() {
    let mut s = Suite::new(
        &[
            Pr {
                repo: "coop/web",
                fixture: "web",
                pr: 1,
                rev: "HEAD",
            },
            // Another commit: one commit's status context belongs to its newest run.
            Pr {
                repo: "coop/web",
                fixture: "web",
                pr: 2,
                rev: "1.1.0+1.1",
            },
        ],
        |c| {
            c.daemon.concurrency = 1;
            c.daemon.max_requeues = 1;
        },
    )
    .await;
    let sha1 = s.head("coop/web", 1);
    let sha2 = s.head("coop/web", 2);
    s.start_plain();
    s.wait_healthy().await;

    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web", 1, 601, "alice", "!testme"),
    )
    .await;
    s.wait_status("coop/web", &sha1, 60, |st| {
        st.state == "pending" && st.description.starts_with("running")
    })
    .await;
    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web", 2, 602, "alice", "!testme install"),
    )
    .await;
    s.wait_status("coop/web", &sha2, 30, |st| {
        st.state == "pending" && st.description.starts_with("queued")
    })
    .await;
    // Mid-deploy: the stack exists.
    let killed_stack = s.wait_stack("run 1", &[]).await;
    let run_pid = logged_run_pid(&read(&s.daemon_log()), 1)
        .unwrap_or_else(|| panic!("no `run started` line for run 1\n{}", s.state()));
    assert!(alive(run_pid), "run 1 ({run_pid}) is not running");
    s.kill9();
    assert!(
        s.statuses("coop/web", &sha1)
            .iter()
            .all(|st| st.state == "pending"),
        "run 1 finished before the kill: {:?}",
        s.statuses("coop/web", &sha1)
    );

    // Restarted at once, as systemd's Restart= would: the start-up gc must not find the killed
    // run alive. Its process died with the daemon (PR_SET_PDEATHSIG).
    s.start_plain();
    eventually(
        &format!("the run process {run_pid} to die with the daemon"),
        20,
        || (!alive(run_pid)).then_some(()),
        || s.state(),
    )
    .await;
    s.wait_healthy().await;
    // Start-up gc removes the killed run's deployment.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = s.engine.stack_objects(&killed_stack).await.unwrap();
        let by_name: Vec<String> = s
            .engine
            .object_names()
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{killed_stack}_")))
            .collect();
        if left.is_empty() && by_name.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed run's objects remain 120 s after the restart: {:?} {by_name:?}\n{}",
            left.describe(),
            s.state()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The re-run's comment shows the finished tiers while the next one runs (edited in place).
    eventually(
        "run 1's comment to show install passed while a later tier runs",
        RUN_SECS,
        || {
            s.bot_comments_on("coop/web", 1).into_iter().find(|c| {
                c.body.contains("cc-ci: ⏳ running")
                    && c.body.contains("| install | ✅ pass |")
                    && c.body.contains("| ⏳ running |")
            })
        },
        || s.state(),
    )
    .await;
    let gc_log = read(&s.state_dir().join("gc.log"));
    assert!(
        gc_log.contains(&format!("collected {}", killed_stack.replace('_', "."))),
        "the start-up gc collected the killed run:\n{gc_log}"
    );
    // The queued trigger was not lost.
    let fin2 = s.wait_final("coop/web", &sha2).await;
    assert_eq!(fin2.state, "success", "{fin2:?}\n{}", s.state());
    // The interrupted run was re-queued and ran again from the start.
    let fin1 = s.wait_final("coop/web", &sha1).await;
    assert_eq!(fin1.state, "success", "{fin1:?}\n{}", s.state());
    let log = read(&s.state_dir().join("runs/1/log.txt"));
    assert!(
        log.contains("re-queued") && log.contains("attempt 2"),
        "run 1 log:\n{log}"
    );
    let run1 = s.run_json(&fin1).await;
    assert_eq!(run1["requeues"], 1, "{run1:#}");
    let domain = run1["report"]["app_domain"].as_str().unwrap();
    assert_ne!(names::stack_name(domain), killed_stack);
    assert_eq!(s.bot_comments_on("coop/web", 1).len(), 1, "{}", s.state());
    assert_eq!(s.bot_comments_on("coop/web", 2).len(), 1, "{}", s.state());

    s.assert_no_leftovers(std::slice::from_ref(&killed_stack))
        .await;
    s.stop().await;
}

/// The approved commit is the commit that runs (issue 12.1): the pull request's hidden ref
/// moved to another commit after the approval (the API still names the approved one) — the run
/// deploys and reports the approved commit, never the moved ref; an approved commit the forge
/// cannot serve is an error, with nothing deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approved_commit_is_the_commit_that_runs() {
    let mut s = Suite::new(
        &[Pr {
            repo: "coop/web",
            fixture: "web",
            pr: 1,
            rev: "HEAD",
        }],
        |c| c.daemon.concurrency = 2,
    )
    .await;
    let approved = s.head("coop/web", 1);
    let bare = s.dir.path().join("git/coop/web.git");
    let pushed = git(&bare, &["rev-parse", "HEAD~1^{commit}"]);
    assert_ne!(approved, pushed);
    git(&bare, &["update-ref", "refs/pull/1/head", &pushed]);
    git(&bare, &["update-server-info"]);
    // A pull request whose head (per the API) is a commit the repository does not have.
    let missing = "0badc0de0badc0de0badc0de0badc0de0badc0de";
    s.gitea.add_pr("coop/web", 9, missing);
    s.start_plain();
    s.wait_healthy().await;

    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web", 1, 901, "alice", "!testme install"),
    )
    .await;
    s.comment_accepted(
        Flavour::Forgejo,
        Comment::new("coop/web", 9, 902, "alice", "!testme install"),
    )
    .await;

    let fin = s.wait_final("coop/web", &approved).await;
    assert_eq!(fin.state, "success", "{fin:?}\n{}", s.state());
    let run = s.run_json(&fin).await;
    assert_eq!(run["report"]["head_sha"], approved.as_str(), "{run:#}");
    let report_domain = run["report"]["app_domain"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(s.statuses("coop/web", &pushed).is_empty(), "{}", s.state());

    let fin = s.wait_final("coop/web", missing).await;
    assert_eq!(fin.state, "error", "{fin:?}\n{}", s.state());
    let run = s.run_json(&fin).await;
    assert_eq!(run["exit_code"], 2, "{run:#}");
    s.assert_no_leftovers(&[names::stack_name(&report_domain)])
        .await;
}

/// Deliveries that must not start anything: each gets its 4xx and leaves no run, no status
/// and no comment (except the one short reply an unauthorised commenter gets), nothing on the
/// swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_deliveries_get_4xx_and_start_nothing() {
    let mut s = Suite::new(
        &[Pr {
            repo: "coop/web",
            fixture: "web",
            pr: 1,
            rev: "HEAD",
        }],
        |_| {},
    )
    .await;
    s.start_plain();
    s.wait_healthy().await;
    let payload = |action: &str, id: i64, user: &str, body: &str, is_pull: bool| {
        comment_payload(action, "coop/web", 1, id, user, body, is_pull)
    };
    let send = |flavour, body: Vec<u8>, sig: Option<String>| {
        let addr = s.addr;
        async move {
            deliver(
                addr,
                flavour,
                "issue_comment",
                "pull_request_comment",
                &random_hex(),
                &body,
                sig.as_deref(),
            )
            .await
        }
    };
    let good = payload("created", 701, "alice", "!testme", true);
    let bad_sig = cc_ci_daemon::trigger::sign(b"not the secret", &good);
    for (what, flavour, body, sig, want) in [
        (
            "wrong signature",
            Flavour::Gitea,
            good.clone(),
            Some(bad_sig.clone()),
            401,
        ),
        (
            "wrong signature (Forgejo)",
            Flavour::Forgejo,
            good.clone(),
            Some(bad_sig),
            401,
        ),
        (
            "empty signature",
            Flavour::Forgejo,
            good.clone(),
            Some(String::new()),
            401,
        ),
        (
            "signature of another body",
            Flavour::Gitea,
            good.clone(),
            Some(cc_ci_daemon::trigger::sign(SECRET.as_bytes(), b"{}")),
            401,
        ),
        (
            "!testmexyz",
            Flavour::Gitea,
            payload("created", 702, "alice", "!testmexyz", true),
            None,
            200,
        ),
        (
            "a quoted !testme",
            Flavour::Forgejo,
            payload("created", 703, "alice", "> !testme", true),
            None,
            200,
        ),
        (
            "an edited comment",
            Flavour::Gitea,
            payload("edited", 704, "alice", "!testme", true),
            None,
            200,
        ),
        (
            "a deleted comment",
            Flavour::Forgejo,
            payload("deleted", 705, "alice", "!testme", true),
            None,
            200,
        ),
        (
            "a comment on a plain issue",
            Flavour::Gitea,
            payload("created", 706, "alice", "!testme", false),
            None,
            200,
        ),
    ] {
        let (code, text) = send(flavour, body, sig).await;
        assert_eq!(code, want, "{what}: {text}\n{}", s.state());
    }

    // A Forgejo delivery whose Gitea signature is right but whose Forgejo signature is not.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{}/hooks/gitea", s.addr))
        .header("Content-Type", "application/json")
        .header("X-Forgejo-Event", "issue_comment")
        .header("X-Gitea-Event", "issue_comment")
        .header("X-Forgejo-Delivery", random_hex())
        .header(
            "X-Gitea-Signature",
            cc_ci_daemon::trigger::sign(SECRET.as_bytes(), &good),
        )
        .header(
            "X-Forgejo-Signature",
            cc_ci_daemon::trigger::sign(b"other", &good),
        )
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "mixed signatures");
    // No signature header at all.
    let r = client
        .post(format!("http://{}/hooks/gitea", s.addr))
        .header("X-Gitea-Event", "issue_comment")
        .header("X-Gitea-Delivery", random_hex())
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "no signature");

    // An unauthorised commenter: accepted (membership is asked of the forge after the
    // answer), then one short reply and no run.
    let (code, text) = send(
        Flavour::Gitea,
        payload("created", 707, "mallory", "!testme", true),
        None,
    )
    .await;
    assert_eq!(code, 202, "{text}\n{}", s.state());
    let reply = eventually(
        "the reply to mallory",
        20,
        || s.bot_comments_on("coop/web", 1).into_iter().next(),
        || s.state(),
    )
    .await;
    assert!(reply.body.contains("mallory"), "{}", reply.body);

    let runs: Value = reqwest::get(format!("http://{}/runs", s.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runs, serde_json::json!([]), "{}", s.state());
    assert!(s.gitea.statuses().is_empty(), "{}", s.state());
    assert_eq!(s.gitea.bot_comments().len(), 1, "{}", s.state());
    assert!(
        s.gitea.state.lock().unwrap().git_requests.is_empty(),
        "nothing was cloned"
    );
    assert!(s.stacks().await.is_empty());
    s.assert_no_secrets_written();
    s.stop().await;
}

/// Stopping real runs. A new `!testme` on the same pull request supersedes the deploying run
/// (stopped and torn down; the newer run owns the commit status and passes); `cc-ci cancel`
/// stops a deploying run (reported as cancelled); SIGTERM to the daemon stops a deploying run
/// and puts it back in the queue. Stopping = SIGTERM, then after `daemon.cancel_grace_secs`
/// SIGKILL and gc: nothing is left on the swarm either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersede_cancel_and_graceful_stop_tear_real_runs_down() {
    let mut s = Suite::new(
        &[
            Pr {
                repo: "coop/web",
                fixture: "web",
                pr: 1,
                rev: "HEAD",
            },
            Pr {
                repo: "coop/web",
                fixture: "web",
                pr: 2,
                rev: "1.1.0+1.1",
            },
            Pr {
                repo: "coop/web",
                fixture: "web",
                pr: 3,
                rev: "1.0.0+1.0",
            },
        ],
        |c| c.daemon.cancel_grace_secs = 2,
    )
    .await;
    let sha1 = s.head("coop/web", 1);
    let sha2 = s.head("coop/web", 2);
    let sha3 = s.head("coop/web", 3);
    s.start_plain();
    s.wait_healthy().await;
    let mut stacks = Vec::new();

    // Supersede: run 1 deploys, a second comment queues run 2, which stops run 1.
    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web", 1, 801, "alice", "!testme install"),
    )
    .await;
    stacks.push(s.wait_stack("run 1", &stacks).await);
    let (code, body) = s
        .comment(
            Flavour::Gitea,
            Comment::new("coop/web", 1, 802, "carol", "!testme install"),
        )
        .await;
    // Accepted at once; refused after the answer (carol is no member yet): she gets a reply.
    assert_eq!(code, 202, "carol is no member yet: {body}");
    eventually(
        "the reply to carol",
        30,
        || {
            s.bot_comments_on("coop/web", 1)
                .into_iter()
                .find(|c| c.body.contains("@carol"))
        },
        || s.state(),
    )
    .await;
    s.gitea.add_member("coop", "carol");
    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web", 1, 803, "carol", "!testme install"),
    )
    .await;
    let fin = s.wait_final("coop/web", &sha1).await;
    assert!(
        fin.state == "success" && run_id(&fin) == 2,
        "{fin:?}\n{}",
        s.state()
    );
    let all = s.statuses("coop/web", &sha1);
    assert!(
        all.iter()
            .all(|st| st.state == "pending" || st.state == "success"),
        "the superseded run's status must not override the newer run's: {all:?}"
    );
    eventually(
        "the comment of run 1 to say cancelled",
        30,
        || {
            s.bot_comments_on("coop/web", 1).into_iter().find(|c| {
                c.body.contains("🛑 cancelled") && c.body.contains("<!-- cc-ci run 1 -->")
            })
        },
        || s.state(),
    )
    .await;
    let run1 = read(&s.state_dir().join("runs/1/log.txt"));
    assert!(run1.contains("SIGTERM"), "run 1 was stopped:\n{run1}");

    // `cc-ci cancel` of a deploying run.
    s.comment_accepted(
        Flavour::Forgejo,
        Comment::new("coop/web", 2, 804, "alice", "!testme install"),
    )
    .await;
    stacks.push(s.wait_stack("run 3", &stacks).await);
    let (code, out, err) = s.cli(&["cancel", "3"]);
    assert_eq!(code, 0, "cc-ci cancel 3: {out}{err}");
    let fin = s.wait_final("coop/web", &sha2).await;
    assert!(
        fin.state == "error" && fin.description.starts_with("cancelled"),
        "{fin:?}\n{}",
        s.state()
    );
    eventually(
        "the comment of run 3 to say cancelled",
        30,
        || {
            s.bot_comments_on("coop/web", 2)
                .into_iter()
                .find(|c| c.body.contains("🛑 cancelled"))
        },
        || s.state(),
    )
    .await;
    s.assert_no_leftovers(&stacks).await;
    let (code, _, err) = s.cli(&["cancel", "3"]);
    assert_eq!(code, 2, "cancelling a finished run is an error: {err}");

    // SIGTERM to the daemon while run 4 deploys.
    s.comment_accepted(
        Flavour::Gitea,
        Comment::new("coop/web", 3, 805, "alice", "!testme install"),
    )
    .await;
    stacks.push(s.wait_stack("run 4", &stacks).await);
    s.stop().await;
    s.assert_no_leftovers(&stacks).await;
    let (code, out, err) = s.cli(&["queue"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("4 ") && l.contains("queued") && l.contains("coop/web#3")),
        "run 4 is back in the queue:\n{out}"
    );
    assert!(
        s.statuses("coop/web", &sha3)
            .iter()
            .all(|st| st.state == "pending"),
        "a run stopped by a shutdown is not reported as finished: {:?}",
        s.statuses("coop/web", &sha3)
    );
}
