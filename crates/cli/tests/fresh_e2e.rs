//! Results that know their inputs (issue 15), end to end on the real swarm and the real registry
//! of the test setup (127.0.0.1:5000): `cc-ci serve` with its real `cc-ci run` children and the
//! stand-in abra, the in-process forge double serving the recipe over git.
//!
//! A recipe whose image has a name of this test alone is tested; `!testme` repeated unchanged is
//! answered from the result without a deploy; the image is then re-pushed under the same tag (a
//! tiny variant built on it), and the result goes stale: `cc-ci inputs --against` and `cc-ci
//! drift` say which image moved between which digests, and the daemon's drift sweep queues a
//! re-run and says the same on the pull request. The shared fixture tags are never re-pushed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use cc_ci_daemon::config::Config;
use cc_ci_harness::engine::Engine;
use cc_ci_testkit::cmd::{docker, free_port, git, random_hex, read};
use cc_ci_testkit::fixtures::{ForgeRepo, make_fixture_repo, recipe_dir};
use cc_ci_testkit::forge::{Gitea, StatusRec, TOKEN};
use cc_ci_testkit::hooks::{Comment, Flavour, SECRET};
use cc_ci_testkit::serve::{Serve, gc_until_clean, logs};
use cc_ci_testkit::wait::eventually;

const RUN_SECS: u64 = 300;
const FIXTURE_IMAGE: &str = "127.0.0.1:5000/cc-ci-fixture/web:2";

fn cc_ci() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cc-ci"))
}

/// The digest the registry serves for `image` (what the freshness check compares).
async fn registry_digest(engine: &Engine, image: &str) -> String {
    engine
        .distribution_digest(image)
        .await
        .unwrap_or_else(|e| panic!("the registry's digest of {image}: {e}"))
}

/// Builds a variant of `image` (one label more: another digest, same content) and pushes it under
/// the same tag.
fn repush_variant(image: &str, label: &str) {
    let mut child = Command::new("docker")
        .args(["build", "--quiet", "-t", image, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("FROM {image}\nLABEL cc-ci-fresh-test={label}\n").as_bytes())
        .expect("write the Dockerfile");
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "docker build of a variant of {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    docker(&["push", "--quiet", image]);
}

struct World {
    dir: tempfile::TempDir,
    gitea: Gitea,
    config_path: PathBuf,
    addr: SocketAddr,
    daemon: Option<Serve>,
    image: String,
    sha: String,
    engine: Engine,
}

impl World {
    fn state(&self) -> String {
        format!(
            "{}\n{}",
            self.gitea.describe(),
            logs(&self.daemon_log(), &self.dir.path().join("state"))
        )
    }

    fn daemon_log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// `cc-ci serve`, answering `/healthz`.
    async fn start(&mut self) {
        let mut d = Serve::plain(&cc_ci(), &self.config_path, &self.daemon_log());
        d.wait_healthy(self.addr, || self.state()).await;
        self.daemon = Some(d);
    }

    fn statuses(&self) -> Vec<StatusRec> {
        self.gitea
            .statuses()
            .into_iter()
            .filter(|s| s.sha == self.sha)
            .collect()
    }

    async fn final_status_of_run(&self, id: i64) -> StatusRec {
        let suffix = format!("/runs/{id}");
        eventually(
            &format!("the final status of run #{id}"),
            RUN_SECS,
            || {
                self.statuses()
                    .into_iter()
                    .find(|s| s.state != "pending" && s.target_url.ends_with(&suffix))
            },
            || self.state(),
        )
        .await
    }

    async fn testme(&self, comment_id: i64, body: &str) {
        let c = Comment::new("coop/web", 1, comment_id, "alice", body);
        let delivery = format!("{}-{comment_id}", random_hex());
        let (code, answer) = c.deliver(self.addr, Flavour::Gitea, &delivery).await;
        assert_eq!(code, 202, "{answer}\n{}", self.state());
    }

    fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(cc_ci())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("CC_CI_ABRA")
            .output()
            .expect("run cc-ci");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.daemon.take());
        gc_until_clean(&cc_ci(), &self.config_path);
        // The test's own image tag; the registry keeps its blobs (no delete API is enabled).
        let _ = Command::new("docker").args(["rmi", &self.image]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_pr_is_answered_from_the_result_and_a_repushed_image_makes_it_stale() {
    let standin = cc_ci().with_file_name("abra-standin");
    assert!(
        standin.is_file(),
        "{} is missing: run `cargo build -p abra-standin` first",
        standin.display()
    );
    let hex = random_hex();
    let engine = Engine::connect(std::env::var("DOCKER_HOST").ok().as_deref())
        .expect("the Docker engine (run scripts/setup-swarm)");
    // The test's own repository on the registry, from the fixture image.
    let image = format!("127.0.0.1:5000/cc-ci-fresh-{hex}/web:2");
    docker(&["pull", "--quiet", FIXTURE_IMAGE]);
    docker(&["tag", FIXTURE_IMAGE, &image]);
    docker(&["push", "--quiet", &image]);

    // The recipe: the `web` fixture whose head names that image.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src/web");
    make_fixture_repo(&recipe_dir("web"), &src);
    let compose = src.join("compose.yml");
    let text = std::fs::read_to_string(&compose).expect("compose.yml");
    assert!(text.contains(FIXTURE_IMAGE), "{text}");
    std::fs::write(&compose, text.replace(FIXTURE_IMAGE, &image)).expect("write compose.yml");
    git(&src, &["add", "compose.yml"]);
    git(
        &src,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "--quiet",
            "-m",
            "this test's image",
        ],
    );
    let gitea = Gitea::start().await;
    let git_root = dir.path().join("git");
    gitea.serve_git(&git_root);
    let web = ForgeRepo::publish(&git_root, "coop/web", &src);
    let sha = web.pull_request(&gitea, "coop/web", 1, "HEAD");
    web.update_server_info();

    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    std::fs::write(dir.path().join("secret"), SECRET).expect("secret");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let mut config = Config::default();
    config.harness.abra = Some(standin.display().to_string());
    config.harness.domain_suffix = format!("f{hex}.ci.local");
    config.harness.work_dir = Some(dir.path().join("work"));
    config.harness.stability_window_secs = 3;
    config.daemon.state_dir = Some(dir.path().join("state"));
    config.daemon.listen = addr.to_string();
    config.daemon.public_url = format!("http://{addr}");
    // Off for now: the sweep is turned on once the first results are in (daemon restarted).
    config.daemon.drift_interval_secs = 0;
    config.forge.url = gitea.url();
    config.forge.token_file = Some(dir.path().join("token"));
    config.forge.webhook_secret_file = Some(dir.path().join("secret"));
    config.forge.repo_allowlist = vec!["coop/web".into()];
    config.forge.user_allowlist = vec!["alice".into()];
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("config");

    let mut w = World {
        dir,
        gitea,
        config_path,
        addr,
        daemon: None,
        image: image.clone(),
        sha: sha.clone(),
        engine,
    };
    w.start().await;

    // 1. A full run records its inputs: this test's image at the digest the registry serves.
    let first_digest = registry_digest(&w.engine, &image).await;
    w.testme(701, "!testme install").await;
    let first = w.final_status_of_run(1).await;
    assert_eq!(first.state, "success", "{first:?}\n{}", w.state());
    let run1 = w.dir.path().join("state/runs/1");
    let report: serde_json::Value =
        serde_json::from_str(&read(&run1.join("run.json"))).expect("run.json");
    let head_images = &report["inputs"]["head_images"];
    assert_eq!(head_images[0]["image"], image.as_str(), "{report:#}");
    assert_eq!(
        head_images[0]["digest"],
        first_digest.as_str(),
        "{report:#}"
    );
    assert_eq!(report["inputs"]["head_commit"], sha.as_str());
    assert!(
        report["inputs"]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("sha256:"))
    );

    // 2. The same `!testme` again: answered from run #1, nothing deployed.
    let asked = Instant::now();
    w.testme(702, "!testme install").await;
    let second = w.final_status_of_run(2).await;
    let answered_in = asked.elapsed();
    assert_eq!(second.state, "success", "{second:?}\n{}", w.state());
    assert!(
        second.description.contains("unchanged since run #1"),
        "{second:?}"
    );
    let daemon_log = read(&w.dir.path().join("daemon.log"));
    assert!(
        !daemon_log
            .lines()
            .any(|l| l.contains("run started") && l.contains("run_id=2 ")),
        "run #2 started a `cc-ci run`:\n{}",
        w.state()
    );
    let reused: serde_json::Value =
        serde_json::from_str(&read(&w.dir.path().join("state/runs/2/run.json")))
            .expect("run #2's run.json");
    assert_eq!(reused["reused"]["run"], 1, "{reused:#}");
    let comment = eventually(
        "run #2's comment",
        30,
        || {
            w.gitea
                .bot_comments()
                .into_iter()
                .find(|c| c.body.contains("unchanged since [run #1]"))
        },
        || w.state(),
    )
    .await;
    assert!(
        comment.body.contains("same commit, images, abra and cc-ci"),
        "{}",
        comment.body
    );
    eprintln!("a reused result was reported {answered_in:?} after its `!testme`");

    // 3. `!testme fresh` always runs.
    w.testme(703, "!testme install fresh").await;
    let forced = w.final_status_of_run(3).await;
    assert_eq!(forced.state, "success", "{forced:?}\n{}", w.state());
    assert!(!forced.description.contains("unchanged"), "{forced:?}");
    let daemon_log = read(&w.dir.path().join("daemon.log"));
    assert!(
        daemon_log
            .lines()
            .any(|l| l.contains("run started") && l.contains("run_id=3 ")),
        "`!testme fresh` did not run:\n{}",
        w.state()
    );

    // 4. The image is re-pushed under its tag: the result goes stale, naming it and both digests.
    let (code, out) = w.cli(&["drift"]);
    assert_eq!(code, 0, "before the re-push every result is fresh:\n{out}");
    repush_variant(&image, &hex);
    let second_digest = registry_digest(&w.engine, &image).await;
    assert_ne!(first_digest, second_digest);
    let moved = format!("app: {image} moved from {first_digest} to {second_digest}");
    let (code, out) = w.cli(&["drift"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&moved),
        "cc-ci drift does not name the move:\n{out}"
    );
    let (code, out) = w.cli(&[
        "inputs",
        "--recipe",
        &format!("{}/coop/web.git", w.gitea.url()),
        "--ref",
        &sha,
        "--stages",
        "install",
        "--against",
        run1.to_str().expect("utf-8"),
        "--abra",
        standin.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&moved), "{out}");

    // 5. The daemon's sweep sees it too: a re-run is queued and the pull request told what moved.
    if let Some(mut d) = w.daemon.take() {
        d.stop(|| w.state()).await;
    }
    let mut config = Config::load(&w.config_path).expect("config");
    config.daemon.drift_interval_secs = 1;
    std::fs::write(&w.config_path, toml::to_string(&config).expect("toml")).expect("config");
    w.start().await;
    let told = eventually(
        "a comment saying the image moved",
        120,
        || {
            w.gitea
                .bot_comments()
                .into_iter()
                .find(|c| c.body.contains("went stale"))
        },
        || w.state(),
    )
    .await;
    assert!(told.body.contains(&moved), "{}", told.body);
    let rerun = w.final_status_of_run(4).await;
    assert_eq!(rerun.state, "success", "{rerun:?}\n{}", w.state());
    let rerun_report: serde_json::Value =
        serde_json::from_str(&read(&w.dir.path().join("state/runs/4/run.json")))
            .expect("run #4's run.json");
    assert_eq!(
        rerun_report["inputs"]["head_images"][0]["digest"],
        second_digest.as_str(),
        "{rerun_report:#}"
    );
    assert!(rerun_report.get("reused").is_none(), "{rerun_report:#}");
}

/// `cc-ci run` into a report folder holding a result whose inputs still hold: that result stands,
/// nothing is deployed; `--no-reuse` runs anyway.
#[test]
fn cc_ci_run_reuses_a_fresh_result_unless_told_not_to() {
    let standin = cc_ci().with_file_name("abra-standin");
    assert!(standin.is_file(), "{} is missing", standin.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("web");
    make_fixture_repo(&recipe_dir("web"), &repo);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[harness]\ndomain_suffix = \"r{}.ci.local\"\nwork_dir = \"{}\"\nstability_window_secs = 3\n",
            random_hex(),
            dir.path().join("work").display()
        ),
    )
    .expect("config");
    let report = dir.path().join("report");
    let cc_ci_run = |extra: &[&str]| {
        let out = Command::new(cc_ci())
            .arg("run")
            .arg("--recipe")
            .arg(&repo)
            .arg("--abra")
            .arg(&standin)
            .arg("--report-dir")
            .arg(&report)
            .arg("--config")
            .arg(&config)
            .args(["--stages", "install"])
            .args(extra)
            .env_remove("CC_CI_ABRA")
            .output()
            .expect("run cc-ci");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = cc_ci_run(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("deploy"), "{stderr}");
    let written = std::fs::metadata(report.join("run.json"))
        .and_then(|m| m.modified())
        .expect("run.json");
    let (code, stderr) = cc_ci_run(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("nothing deployed"), "{stderr}");
    assert_eq!(
        std::fs::metadata(report.join("run.json"))
            .and_then(|m| m.modified())
            .expect("run.json"),
        written,
        "a reused result was rewritten"
    );
    let (code, stderr) = cc_ci_run(&["--no-reuse"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("nothing deployed"), "{stderr}");
    assert_ne!(
        std::fs::metadata(report.join("run.json"))
            .and_then(|m| m.modified())
            .expect("run.json"),
        written,
        "--no-reuse did not run"
    );
}
