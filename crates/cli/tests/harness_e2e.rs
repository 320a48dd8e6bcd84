//! End-to-end tests of `cc-ci run` on the real swarm with the stand-in abra and the fixture
//! recipes of tests/fixtures. Every harness assertion has a fixture here proving it can fail.
//!
//! Needs `scripts/setup-swarm` (Docker, swarm, fixture images) and `cargo build -p abra-standin`;
//! `.ci/run` and the README's test command do both. The cases are independent and mostly wait
//! on the swarm, so run them with many test threads (`-- --test-threads 16`).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use cc_ci_testkit::repo_root;

fn cc_ci() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cc-ci"))
}

fn standin() -> PathBuf {
    cc_ci_testkit::standin_beside(&cc_ci())
}

/// A fixture recipe built as a git repository in a temporary directory.
struct Fixture {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    work: PathBuf,
    report: PathBuf,
    config: PathBuf,
}

fn fixture(name: &str) -> Fixture {
    fixture_with_config(name, "")
}

fn fixture_with_config(name: &str, extra_config: &str) -> Fixture {
    fixture_named(name, name, extra_config)
}

/// A fixture built into a repository directory called `repo_name` (real recipe repositories
/// are often named otherwise than the recipe, e.g. `coop-cloud-traefik`).
fn fixture_named(name: &str, repo_name: &str, extra_config: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join(repo_name);
    let out = Command::new(repo_root().join("scripts/make-fixture-repo"))
        .arg(repo_root().join("tests/fixtures/recipes").join(name))
        .arg(&repo)
        .output()
        .expect("run make-fixture-repo");
    assert!(
        out.status.success(),
        "make-fixture-repo {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = dir.path().join("work");
    let report = dir.path().join("report");
    let config = dir.path().join("cc-ci.toml");
    std::fs::write(
        &config,
        format!(
            "[harness]\nwork_dir = \"{}\"\n{}",
            work.display(),
            // `{owner}`: the directory holding the fixture repository (its "owner").
            extra_config.replace(
                "{owner}",
                &dir.path().file_name().unwrap().to_string_lossy()
            )
        ),
    )
    .expect("write config");
    Fixture {
        _dir: dir,
        repo,
        work,
        report,
        config,
    }
}

struct RunResult {
    code: i32,
    report: Option<Value>,
    stderr: String,
}

impl Fixture {
    fn run(&self, args: &[&str]) -> RunResult {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> RunResult {
        let out: Output = Command::new(cc_ci())
            .envs(env.iter().copied())
            .arg("run")
            .arg("--recipe")
            .arg(&self.repo)
            .arg("--abra")
            .arg(standin())
            .arg("--report-dir")
            .arg(&self.report)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("CC_CI_ABRA")
            .output()
            .expect("run cc-ci");
        let report = std::fs::read_to_string(self.report.join("run.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let r = RunResult {
            code: out.status.code().unwrap_or(-1),
            report,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if let Some(rep) = &r.report {
            let domain = rep["app_domain"].as_str().unwrap_or_default();
            assert_no_leftovers(domain, rep["teardown"]["verdict"].is_null());
        }
        r
    }
}

impl RunResult {
    fn tier(&self, name: &str) -> &Value {
        let report = self
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("no run.json; stderr:\n{}", self.stderr));
        report["tiers"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == name))
            .unwrap_or_else(|| panic!("no tier {name} in {report:#}"))
    }

    fn verdict(&self, tier: &str) -> String {
        self.tier(tier)["verdict"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The detail of a check that did not pass, for assertions on what it names.
    fn failing_detail(&self, tier: &str) -> String {
        self.tier(tier)["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["verdict"] == "fail" || c["verdict"] == "error")
            .map(|c| {
                format!(
                    "{}: {}",
                    c["name"].as_str().unwrap_or(""),
                    c["detail"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asserts the exit code, showing stderr when it differs.
    #[track_caller]
    fn expect_exit(&self, code: i32) {
        assert_eq!(self.code, code, "stderr:\n{}", self.stderr);
    }

    /// Asserts a tier's verdict, showing its failing checks when it differs.
    #[track_caller]
    fn expect_verdict(&self, tier: &str, verdict: &str) {
        assert_eq!(
            self.verdict(tier),
            verdict,
            "{tier}: {}",
            self.failing_detail(tier)
        );
    }

    /// Asserts that the failing checks of a tier name every needle, showing them and stderr when
    /// one is missing.
    #[track_caller]
    fn expect_detail(&self, tier: &str, needles: &[&str]) {
        let d = self.failing_detail(tier);
        for n in needles {
            assert!(
                d.contains(n),
                "{tier}: `{n}` not in:\n{d}\nstderr:\n{}",
                self.stderr
            );
        }
    }

    fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no run.json; stderr:\n{}", self.stderr))
    }
}

/// Swarm objects whose names start with the stack of `domain`.
fn objects_of(domain: &str) -> Vec<String> {
    let stack = domain.replace('.', "_");
    let mut out = Vec::new();
    for kind in ["service", "network", "secret", "config", "volume"] {
        let o = Command::new("docker")
            .args([kind, "ls", "--format", "{{.Name}}"])
            .output()
            .expect("docker ls");
        assert!(
            o.status.success(),
            "docker {kind} ls failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|n| n.starts_with(&format!("{stack}_")))
                .map(|n| format!("{kind}:{n}")),
        );
    }
    out
}

fn assert_no_leftovers(domain: &str, kept: bool) {
    if domain.is_empty() || kept {
        return;
    }
    let left = objects_of(domain);
    assert!(
        left.is_empty(),
        "run {domain} left swarm objects behind: {left:?}"
    );
}

#[test]
fn web_passes_all_four_tiers_with_one_deploy() {
    let f = fixture("web");
    let r = f.run(&[]);
    r.expect_exit(0);
    let rep = r.report();
    assert_eq!(rep["verdict"], "pass");
    assert_eq!(rep["deploy_count"], 1);
    assert_eq!(rep["base_version"], "1.1.0+1.1");
    assert_eq!(rep["teardown"]["leftovers"], serde_json::json!([]));
    for t in ["install", "upgrade", "backup", "restore"] {
        r.expect_verdict(t, "pass");
    }
    let names: Vec<&str> = r.tier("upgrade")["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"data-continuity") && names.contains(&"version-label"),
        "{names:?}"
    );
    // Reports for people and other CI systems.
    let summary = std::fs::read_to_string(f.report.join("summary.md")).unwrap();
    assert!(summary.contains("| upgrade |") && summary.contains(rep["head_sha"].as_str().unwrap()));
    let junit = std::fs::read_to_string(f.report.join("junit.xml")).unwrap();
    assert!(junit.contains("<testsuite name=\"restore\""));
    // Progress: a line per step with the elapsed time, and the final table.
    assert!(
        r.stderr
            .contains("s] install: deploying base release 1.1.0+1.1"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("verdict: pass"));
    // The run directory (ABRA_DIR, env file) is gone.
    let runs: Vec<_> = std::fs::read_dir(f.work.join("runs"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(runs.is_empty(), "run directories left: {runs:?}");
}

#[test]
fn two_service_with_dump_and_load_hooks_passes() {
    let f = fixture("two-service");
    let r = f.run(&[]);
    r.expect_exit(0);
    for t in ["install", "upgrade", "backup", "restore"] {
        r.expect_verdict(t, "pass");
    }
}

#[test]
fn install_only_deploys_the_head_with_chaos() {
    let f = fixture("web");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(0);
    assert_eq!(r.report()["deploy_count"], 1);
    assert_eq!(r.report()["tiers"].as_array().unwrap().len(), 1);
    let detail = r.tier("install")["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "version-label")
        .map(|c| c["detail"].as_str().unwrap_or("").to_string())
        .unwrap();
    assert!(detail.contains("chaos-version"), "{detail}");
}

#[test]
fn upgrade_is_skipped_with_a_reason_when_no_older_release_exists() {
    let f = fixture("web");
    let r = f.run(&["--ref", "1.0.0+1.0", "--stages", "install,upgrade"]);
    r.expect_exit(0);
    r.expect_verdict("install", "pass");
    r.expect_verdict("upgrade", "skipped");
    let why = r.tier("upgrade")["checks"][0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("no release older"), "{why}");
}

#[test]
fn never_healthy_fails_install_naming_the_service() {
    let f = fixture("web-unhealthy");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(1);
    r.expect_verdict("install", "fail");
    r.expect_detail("install", &["service app", "health"]);
    assert!(
        f.report.join("diagnostics/tasks.txt").is_file(),
        "diagnostics missing"
    );
}

#[test]
fn unhealthy_base_is_an_upgrade_error_never_a_silent_pass() {
    let f = fixture("web-unhealthy");
    let r = f.run(&["--stages", "install,upgrade"]);
    r.expect_exit(1);
    r.expect_verdict("install", "fail");
    r.expect_verdict("upgrade", "error");
    r.expect_detail("upgrade", &["did not install"]);
}

#[test]
fn missing_version_label_fails_install() {
    let f = fixture("web-nolabel");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(1);
    r.expect_verdict("install", "fail");
    r.expect_detail("install", &["version-label", "no service named `app`"]);
}

#[test]
fn crash_loop_after_looking_healthy_fails_stability() {
    let f = fixture("web-crashloop");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(1);
    r.expect_detail("install", &["stable", "restarted"]);
}

#[test]
fn malformed_compose_is_exit_2_and_deploys_nothing() {
    let f = fixture("web-badcompose");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(2);
    assert!(r.stderr.contains("compose.yml: line"), "{}", r.stderr);
    assert!(r.report.is_none());
    let runs: Vec<_> = std::fs::read_dir(f.work.join("runs"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    for r in runs {
        let domain = r.file_name().to_string_lossy().to_string();
        assert!(objects_of(&domain).is_empty());
    }
}

#[test]
fn upgrade_that_loses_data_fails_the_upgrade_tier() {
    let f = fixture("web-upgrade-loses-data");
    let r = f.run(&["--stages", "install,upgrade"]);
    r.expect_exit(1);
    r.expect_verdict("install", "pass");
    r.expect_verdict("upgrade", "fail");
    r.expect_detail("upgrade", &["data-continuity", "data"]);
}

#[test]
fn upgrade_whose_head_does_not_start_fails_the_upgrade_tier() {
    let f = fixture("web-upgrade-broken");
    let r = f.run(&["--stages", "install,upgrade,backup"]);
    r.expect_exit(1);
    r.expect_verdict("install", "pass");
    r.expect_verdict("upgrade", "fail");
    r.expect_detail("upgrade", &["app"]);
    r.expect_verdict("backup", "skipped");
}

#[test]
fn backup_whose_pre_hook_dumps_nothing_fails_the_backup_tier() {
    let f = fixture("web-backup-empty");
    let r = f.run(&[]);
    r.expect_exit(1);
    r.expect_verdict("install", "pass");
    r.expect_verdict("upgrade", "pass");
    r.expect_verdict("backup", "fail");
    r.expect_detail("backup", &["snapshot"]);
    r.expect_verdict("restore", "skipped");
}

#[test]
fn backup_label_on_a_missing_volume_fails_the_backup_tier() {
    let f = fixture("web-backup-missing-volume");
    let r = f.run(&[]);
    r.expect_exit(1);
    r.expect_verdict("upgrade", "pass");
    r.expect_verdict("backup", "fail");
    r.expect_detail("backup", &["uploads"]);
}

#[test]
fn restore_that_does_not_bring_data_back_fails_the_restore_tier() {
    let f = fixture("web-restore-broken");
    let r = f.run(&[]);
    r.expect_exit(1);
    r.expect_verdict("backup", "pass");
    r.expect_verdict("restore", "fail");
    r.expect_detail("restore", &["data-restored"]);
}

#[test]
fn repo_local_tests_are_ignored_unless_allowlisted() {
    // A repository of the same name under another owner is not trusted.
    let f = fixture_with_config(
        "web-repolocal",
        "repo_local_allowlist = [\"someone-else/web-repolocal\"]\n",
    );
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(0);
    let notes = r.report()["notes"].to_string();
    assert!(notes.contains("ignored"), "{notes}");
    assert!(
        !r.tier("install").to_string().contains("repo-local\""),
        "a repo-local check ran"
    );

    // The same recipe on the allowlist: its failing repo-local check runs and fails the tier.
    // The allowlist names the repository (`owner/name`: here the fixture's parent directory
    // and name), not the recipe.
    let f = fixture_with_config(
        "web-repolocal",
        "repo_local_allowlist = [\"{owner}/web-repolocal\"]\n",
    );
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(1);
    let failing: Vec<Value> = r.tier("install")["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .cloned()
        .collect();
    assert!(
        failing.iter().any(|c| c["source"] == "repo-local"),
        "{failing:?}"
    );
    // The recipe's own script (.cc-ci/check.sh) ran inside the app's container.
    assert!(
        failing.iter().any(|c| c["detail"]
            .as_str()
            .unwrap_or("")
            .contains("repo-local script of web-repolocal ran")),
        "{failing:?}"
    );
}

#[test]
fn overlays_add_checks_and_can_fail_a_tier() {
    let overlays = tempfile::tempdir().unwrap();
    std::fs::write(
        overlays.path().join("web.toml"),
        r#"
[[check]]
name = "homepage"
tiers = ["install"]
service = "app"
kind = "http"
port = 80
body_contains = "cc-ci fixture web"

[[check]]
name = "wrong-page"
tiers = ["install"]
service = "app"
kind = "http"
port = 80
body_contains = "this text is not on the page"

[[check]]
name = "has-shell"
tiers = ["install"]
service = "app"
kind = "exec"
command = ["sh", "-c", "echo ready"]
stdout_contains = "ready"
"#,
    )
    .unwrap();
    let f = fixture_with_config(
        "web",
        &format!("overlay_dirs = [\"{}\"]\n", overlays.path().display()),
    );
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(1);
    let checks = r.tier("install")["checks"].as_array().unwrap().clone();
    let by = |n: &str| {
        checks
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no check {n}"))
    };
    assert_eq!(by("homepage")["verdict"], "pass", "{:?}", by("homepage"));
    assert_eq!(by("homepage")["source"], "overlay");
    assert_eq!(by("has-shell")["verdict"], "pass", "{:?}", by("has-shell"));
    assert_eq!(by("wrong-page")["verdict"], "fail");
    assert!(
        by("wrong-page")["detail"]
            .as_str()
            .unwrap()
            .contains("this text is not on the page")
    );
    // Generic checks ran alongside.
    assert_eq!(by("converged")["verdict"], "pass");
}

#[test]
fn bad_input_is_exit_2_and_changes_nothing() {
    let f = fixture("web");
    for args in [
        vec!["--ref", "$(touch /tmp/pwned)"],
        vec!["--ref", "--upload-pack=x"],
        vec!["--stages", "install,upgrad"],
        vec!["--ref", "no-such-branch"],
    ] {
        let r = f.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.report.is_none());
    }
    // A source that is not a recipe repository (its directory's name does not matter: the
    // recipe's name is TYPE= of its .env.sample).
    let bad = tempfile::tempdir().unwrap();
    let odd = bad.path().join("Not..A_Recipe");
    std::fs::create_dir(&odd).unwrap();
    let out = Command::new(cc_ci())
        .args(["run", "--recipe"])
        .arg(&odd)
        .arg("--abra")
        .arg(standin())
        .arg("--report-dir")
        .arg(bad.path().join("r"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot clone the recipe"));
    // A typo in an overlay names file, line and field.
    let overlays = tempfile::tempdir().unwrap();
    std::fs::write(
        overlays.path().join("web.toml"),
        "[[check]]\nname = \"x\"\ntiers = [\"install\"]\nservice = \"app\"\nkind = \"exec\"\ncommand = [\"true\"]\nexit_cod = 0\n",
    )
    .unwrap();
    let f = fixture_with_config(
        "web",
        &format!("overlay_dirs = [\"{}\"]\n", overlays.path().display()),
    );
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(2);
    assert!(
        r.stderr.contains("web.toml:") && r.stderr.contains("exit_cod"),
        "{}",
        r.stderr
    );
    // A config typo too.
    let cfg = bad.path().join("bad.toml");
    std::fs::write(&cfg, "[harness]\nstability_window = 3\n").unwrap();
    let out = Command::new(cc_ci())
        .args(["check-config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stability_window"));
}

#[test]
fn keep_on_failure_keeps_the_stack_until_cc_ci_teardown() {
    let f = fixture("web-nolabel");
    let r = f.run(&["--stages", "install", "--keep-on-failure"]);
    r.expect_exit(1);
    let domain = r.report()["app_domain"].as_str().unwrap().to_string();
    assert!(
        r.stderr.contains(&format!("cc-ci teardown {domain}")),
        "{}",
        r.stderr
    );
    assert!(
        !objects_of(&domain).is_empty(),
        "the failed deployment was not kept"
    );
    let out = Command::new(cc_ci())
        .args(["teardown", &domain, "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_leftovers(&domain, false);
}

#[test]
fn sigterm_mid_run_tears_everything_down() {
    let f = fixture("web");
    let child = Command::new(cc_ci())
        .arg("run")
        .arg("--recipe")
        .arg(&f.repo)
        .arg("--abra")
        .arg(standin())
        .arg("--report-dir")
        .arg(&f.report)
        .arg("--config")
        .arg(&f.config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (with a deadline) until the stack exists, then interrupt.
    let runs = f.work.join("runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let domain = loop {
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|d| d.flatten().next())
            .map(|e| e.file_name().to_string_lossy().to_string());
        if let Some(d) = found
            && objects_of(&d).iter().any(|o| o.starts_with("service:"))
        {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never deployed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM to our own child");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert_ne!(out.status.code(), Some(0));
    assert_no_leftovers(&domain, false);
}

// --- Shapes of real recipes (issue 9): one fixture per shape, see tests/fixtures/README.md.

fn read_report_file(f: &Fixture, name: &str) -> String {
    std::fs::read_to_string(f.report.join(name))
        .unwrap_or_else(|e| panic!("{name} in {}: {e}", f.report.display()))
}

#[test]
fn env_sample_values_are_expanded_as_abra_expands_them() {
    let f = fixture("envexpand");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(0);
    r.expect_verdict("install", "pass");
}

#[test]
fn the_recipe_name_is_type_not_the_repository_name() {
    let f = fixture_named("typed", "coop-cloud-typed", "");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(0);
    assert_eq!(r.report()["recipe"], "typed");

    let f = fixture("typeless");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(2);
    assert!(
        r.stderr.contains(".env.sample") && r.stderr.contains("TYPE="),
        "{}",
        r.stderr
    );
    assert!(r.report.is_none());
}

#[test]
fn a_service_the_swarm_stopped_restarting_fails_at_once_and_is_reported_plainly() {
    for (git_ref, cause) in [("1.0.0+1.0", "max_attempts (2)"), ("HEAD", "`none`")] {
        let f = fixture("web-gives-up");
        let r = f.run(&["--ref", git_ref, "--stages", "install"]);
        assert_eq!(r.code, 1, "{git_ref}: stderr:\n{}", r.stderr);
        let d = r.failing_detail("install");
        assert!(
            d.contains("stopped restarting") && d.contains(cause),
            "{git_ref}: {d}"
        );
        // abra's own timeout is 240 s: cc-ci did not wait for it.
        let ms = r.tier("install")["duration_ms"]
            .as_u64()
            .unwrap_or(u64::MAX);
        assert!(ms < 60_000, "{git_ref}: the install tier took {ms} ms");
        // The cause stays in summary.md; no stray `1::` / `1:;`.
        let summary = read_report_file(&f, "summary.md");
        assert!(summary.contains("non-zero exit (3)"), "{summary}");
        assert!(
            !summary.contains("1::") && !summary.contains("1:;"),
            "{summary}"
        );
        // tasks.txt in plain words.
        let tasks = read_report_file(&f, "diagnostics/tasks.txt");
        assert!(
            !tasks.contains("Some(") && !tasks.contains("None") && tasks.contains("exit code 3"),
            "{tasks}"
        );
        // abra's deploy returns at once (`--no-converge-checks`): the failure is cc-ci's own
        // wait's, and abra.log holds the deploy. (A call cc-ci stops half-way is logged too:
        // abra::tests::runs_under_a_terminal_with_deadline_and_redaction.)
        let log = read_report_file(&f, "abra.log");
        assert!(
            log.contains("$ abra app deploy") && log.contains("--no-converge-checks"),
            "{log}"
        );
    }
}

#[test]
fn two_runs_publishing_the_same_host_port_take_turns() {
    let a = fixture("web-ports");
    let b = fixture("web-ports");
    // One work dir for both, as under one daemon: the leases live there.
    std::fs::write(
        &b.config,
        format!("[harness]\nwork_dir = \"{}\"\n", a.work.display()),
    )
    .unwrap();
    let lock = a.work.join("ports/18080-tcp.lock");
    let first = std::thread::spawn(move || {
        let r = a.run(&["--stages", "install"]);
        (a, r)
    });
    // Start the second run once the first holds the lease, so it must wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_to_string(&lock).map_or(true, |s| s.is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never leased 18080/tcp"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rb = b.run(&["--stages", "install"]);
    let (_a, ra) = first.join().unwrap();
    assert_eq!(ra.code, 0, "first run stderr:\n{}", ra.stderr);
    assert_eq!(rb.code, 0, "second run stderr:\n{}", rb.stderr);
    assert!(
        rb.stderr
            .contains("waiting for host ports held by other cc-ci runs: 18080/tcp (run "),
        "{}",
        rb.stderr
    );
    let notes = rb.report()["notes"].to_string();
    assert!(
        notes.contains("host ports 18080/tcp leased") && notes.contains("after waiting"),
        "{notes}"
    );
}

/// A swarm service of the test's own, removed when dropped.
struct ForeignService(String);

impl Drop for ForeignService {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["service", "rm", &self.0])
            .output();
    }
}

#[test]
fn a_host_port_held_by_something_else_is_an_infrastructure_error_naming_it() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!("cc-ci-test-porthog-{:x}{nanos:x}", std::process::id());
    let out = Command::new("docker")
        .args(["service", "create", "--detach", "--name", &name])
        .args(["--publish", "18081:80", "--restart-condition", "none"])
        .args(["cc-ci-fixture/busybox:base", "sleep", "600"])
        .output()
        .expect("docker service create");
    let _hog = ForeignService(name.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = fixture("web-ports");
    let r = f.run(&["--ref", "1.0.0+1.0", "--stages", "install"]);
    r.expect_exit(3);
    r.expect_detail("install", &[&name, "18081/tcp", "not a cc-ci run"]);
    assert_eq!(r.report()["deploy_count"], 0);
}

#[test]
fn no_backupbot_labels_skip_backup_and_restore_and_old_labels_get_a_note() {
    let f = fixture("web-nobackup");
    let r = f.run(&["--stages", "install,backup,restore"]);
    r.expect_exit(0);
    for t in ["backup", "restore"] {
        r.expect_verdict(t, "skipped");
        let why = r.tier(t)["checks"][0]["detail"].as_str().unwrap_or("");
        assert!(why.contains("declares no backups"), "{t}: {why}");
    }

    let f = fixture("web-oldbackup");
    let r = f.run(&["--stages", "install,backup,restore"]);
    r.expect_exit(0);
    r.expect_verdict("backup", "pass");
    let notes = r.report()["notes"].to_string();
    assert!(
        notes.contains("backupbot.backup.path=/data") && notes.contains("whole volumes"),
        "{notes}"
    );
}

#[test]
fn http_checks_name_a_missing_wget_and_run_from_the_probe_container() {
    let overlays = tempfile::tempdir().unwrap();
    std::fs::write(
        overlays.path().join("web-nowget.toml"),
        "[[check]]\nname = \"homepage\"\ntiers = [\"install\"]\nservice = \"app\"\nkind = \"http\"\nport = 80\nbody_contains = \"cc-ci fixture web version 1\"\n",
    )
    .unwrap();
    let dirs = format!("overlay_dirs = [\"{}\"]\n", overlays.path().display());
    let f = fixture_with_config("web-nowget", &dirs);
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(1);
    r.expect_detail("install", &["homepage", "has no `wget`"]);

    let f = fixture_with_config(
        "web-nowget",
        &format!("{dirs}http_probe_image = \"cc-ci/http-probe:1\"\n"),
    );
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(0);
}

#[test]
fn a_missing_compose_yml_is_named_when_compose_file_is_unset() {
    let f = fixture("web-nocompose");
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(2);
    assert!(
        r.stderr.contains("compose.yml is missing") && !r.stderr.contains("listed in COMPOSE_FILE"),
        "{}",
        r.stderr
    );
}

/// A recipe shaped like real ones (issue 9 items 2 and 8, issue 10): lightweight `v` tags, compose
/// versions 3.7 / none / 3.13, a slow starter inside its start_period, a `generate=false` secret,
/// and a head that adds a secret, bumps one and adds env keys. cc-ci drives abra as on a real host:
/// no domain checks, its own convergence wait, every secret made and inserted by cc-ci.
#[test]
fn pull_request_adding_a_secret_passes_on_a_real_shaped_recipe() {
    let f = fixture("web-newsecret");
    let r = f.run(&[]);
    r.expect_exit(0);
    let rep = r.report();
    assert_eq!(rep["base_version"], "v1.0.0");
    for t in ["install", "upgrade", "backup", "restore"] {
        r.expect_verdict(t, "pass");
    }
    let added = r.tier("upgrade")["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "config-added")
        .map(|c| c["detail"].as_str().unwrap_or_default().to_string())
        .expect("a config-added check");
    for what in [
        "UPLOAD_LIMIT",
        "COMPOSE_FILE",
        "SECRET_API_KEY_VERSION=v2 (was v1)",
        "upload_key v1",
        "api_key v2",
    ] {
        assert!(added.contains(what), "{what} not in: {added}");
    }
    assert!(rep["abra_version"].is_string(), "{rep:#}");
    let log = std::fs::read_to_string(f.report.join("abra.log")).unwrap();
    let deploys: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("$ abra app deploy"))
        .collect();
    assert_eq!(deploys.len(), 2, "{log}");
    for d in &deploys {
        assert!(
            d.contains("--no-domain-checks") && d.contains("--no-converge-checks"),
            "{d}"
        );
    }
    assert!(!log.contains(" -S"), "{log}");
    let inserts: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("$ abra app secret insert"))
        .collect();
    // api_key v1, smtp_password v1 (generate=false) at install; upload_key v1, api_key v2 before the upgrade.
    assert_eq!(inserts.len(), 4, "{log}");
    assert!(
        inserts.iter().all(|l| l.contains("[REDACTED]")),
        "{inserts:?}"
    );
}

/// Without a backup-bot-two service on the swarm, backup and restore cannot run: an
/// infrastructure error (exit 3) saying how to deploy it, never a failed recipe. The service is
/// looked up by the label in crates/engine-api/src/labels.rs; a run whose override
/// (`CC_CI_BACKUPBOT_LABEL`) names a label no service carries stands for a swarm without
/// backup-bot-two (other tests share this swarm's one, so it cannot be removed).
#[test]
fn backup_without_backup_bot_two_is_an_infrastructure_error() {
    let f = fixture("web");
    let r = f.run_env(
        &["--stages", "install,backup,restore"],
        &[("CC_CI_BACKUPBOT_LABEL", "cc-ci.test.no-such-backupbot=true")],
    );
    r.expect_exit(3);
    r.expect_verdict("install", "pass");
    for t in ["backup", "restore"] {
        r.expect_verdict(t, "error");
        r.expect_detail(t, &["backup-bot-two", "deploy backup-bot-two"]);
    }
}

/// The head's images are pulled while the install tier runs; one its registry does not have fails
/// the upgrade tier at once, naming the image and the registry (not a convergence timeout).
#[test]
fn an_image_the_registry_lacks_fails_the_upgrade_naming_image_and_registry() {
    let f = fixture("web-badimage");
    let r = f.run(&["--stages", "install,upgrade"]);
    r.expect_exit(1);
    r.expect_verdict("install", "pass");
    r.expect_verdict("upgrade", "fail");
    r.expect_detail(
        "upgrade",
        &[
            "`127.0.0.1:5000/cc-ci-fixture/no-such-image:1`",
            "registry 127.0.0.1:5000",
        ],
    );
    let d = r.failing_detail("upgrade");
    assert!(d.starts_with("pull: "), "{d}");
    assert_eq!(r.report()["deploy_count"], 1);
}

/// A `# generate=false` secret gets a value cc-ci makes, unless an overlay gives one: the app then
/// sees exactly the overlay's value. The app prints its secrets into its log (as careless recipes
/// do); the diagnostics of the failed run (an overlay check fails on purpose) show them redacted.
#[test]
fn an_overlay_gives_the_value_of_a_secret_and_leaked_secrets_are_redacted() {
    let overlays = tempfile::tempdir().unwrap();
    std::fs::write(
        overlays.path().join("web-newsecret.toml"),
        r#"
[secrets]
smtp_password = "from-the-overlay-7Qx"

[[check]]
name = "smtp-password-from-overlay"
tiers = ["install"]
service = "app"
kind = "exec"
command = ["sh", "-c", "test \"$(cat /run/secrets/smtp_password)\" = from-the-overlay-7Qx"]

[[check]]
name = "fails-on-purpose"
tiers = ["install"]
service = "app"
kind = "exec"
command = ["false"]
"#,
    )
    .unwrap();
    let f = fixture_with_config(
        "web-newsecret",
        &format!("overlay_dirs = [\"{}\"]\n", overlays.path().display()),
    );
    let r = f.run(&["--stages", "install"]);
    r.expect_exit(1);
    let failing = r.failing_detail("install");
    assert!(
        failing.contains("fails-on-purpose") && !failing.contains("smtp-password-from-overlay"),
        "{failing}"
    );
    let log = std::fs::read_to_string(f.report.join("abra.log")).unwrap();
    assert!(!log.contains("from-the-overlay-7Qx"), "{log}");
    let app_log = std::fs::read_to_string(f.report.join("diagnostics/app.log")).unwrap();
    assert!(
        app_log.contains("loaded secret /run/secrets/smtp_password: [REDACTED]")
            && !app_log.contains("from-the-overlay-7Qx"),
        "{app_log}"
    );
}
