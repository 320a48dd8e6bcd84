//! Hostile-input drills (issue 12, docs/reliability.md "Hostile recipes"): a pull request's
//! author controls the recipe, so each defence is tried here with a recipe or a host condition
//! built to get past it, on the real swarm, and must hold with nothing left behind.
//!
//! - compose policy: host mounts, the Docker socket, privileges, host namespaces, files outside
//!   the checkout (exit 2 before anything is deployed); an operator's allowance is honoured and
//!   shown;
//! - regular files only: compose and env files that are symlinks (out of the checkout, to
//!   `/dev/zero`), a `.cc-ci` folder that is a symlink;
//! - the forge token and webhook secret never reach reports, diagnostics or stderr;
//! - a hung Docker engine ends a run with exit 3 within the engine deadline, also under SIGTERM;
//! - a report directory that is read-only or full is exit 3, never exit 0 with missing files;
//! - a run that dies of a signal under the daemon is followed by gc.
//!
//! Needs `scripts/setup-swarm` (Docker, swarm, fixture images) and `cargo build -p
//! abra-standin`. Each test has its own `harness.domain_suffix` and directories; a guard runs
//! `cc-ci gc` with the test's config when it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cc_ci_daemon::config::Config;
use cc_ci_testkit::cmd::{read, sh, sigterm, write_exe};
use cc_ci_testkit::daemon::Env;
use cc_ci_testkit::forge::{SHA, TOKEN};
use cc_ci_testkit::hooks::{SECRET, testme};
use cc_ci_testkit::proxy::HangingProxy;
use cc_ci_testkit::sandbox::Sandbox;
use cc_ci_testkit::wait::eventually;

fn cc_ci() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cc-ci"))
}

/// One test's sandbox (domain suffix `<tag><hex>.sec`); `tweak` changes its config.
fn sandbox(tag: &str, tweak: impl FnOnce(&Path, &mut Config)) -> Sandbox {
    Sandbox::new(&cc_ci(), tag, "sec", false, tweak)
}

fn edit_file(path: &Path, from: &str, to: &str) {
    let text = read(path);
    assert!(
        text.contains(from),
        "{} no longer contains {from:?}: the web fixture changed",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn symlink(target: &str, link: &Path) {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).unwrap();
}

const VOLUMES: &str = "      - data:/data\n";
const NETWORKS: &str = "    networks:\n      - proxy\n";

type Edit = Box<dyn FnOnce(&Path)>;

/// Hostile recipes, what they try, and what the refusal must name.
fn hostile_cases() -> Vec<(&'static str, Edit, Vec<&'static str>)> {
    let compose = |from: &'static str, to: &'static str| -> Edit {
        Box::new(move |d: &Path| edit_file(&d.join("compose.yml"), from, to))
    };
    vec![
        (
            "host-root",
            compose(VOLUMES, "      - data:/data\n      - /:/host\n"),
            vec!["compose.yml", "service `app`", "volumes[1]", "bind-mount"],
        ),
        (
            "docker-socket",
            compose(
                VOLUMES,
                "      - data:/data\n      - type: bind\n        source: /var/run/docker.sock\n        target: /var/run/docker.sock\n",
            ),
            vec!["service `app`", "volumes[1]", "docker-socket"],
        ),
        (
            "privileged",
            compose(
                NETWORKS,
                "    networks:\n      - proxy\n    privileged: true\n",
            ),
            vec!["service `app`", "`privileged`"],
        ),
        (
            "cap-add",
            compose(
                NETWORKS,
                "    networks:\n      - proxy\n    cap_add: [SYS_ADMIN]\n",
            ),
            vec!["`cap_add`"],
        ),
        (
            "host-pid",
            compose(NETWORKS, "    networks:\n      - proxy\n    pid: host\n"),
            vec!["`pid`", "host-namespace"],
        ),
        (
            "host-network-by-name",
            compose(
                "networks:\n  proxy:\n    external: true\n",
                "networks:\n  proxy:\n    external: true\n    name: host\n",
            ),
            vec!["networks `proxy`", "host-namespace"],
        ),
        (
            "apparmor-off",
            compose(
                NETWORKS,
                "    networks:\n      - proxy\n    security_opt: ['apparmor:unconfined']\n",
            ),
            vec!["security_opt[0]"],
        ),
        (
            "volume-driver-bind",
            compose(
                "volumes:\n  data:\n",
                "volumes:\n  data:\n    driver_opts: {type: none, o: bind, device: /etc}\n",
            ),
            vec!["volumes `data`", "driver_opts", "bind-mount"],
        ),
        (
            "config-absolute",
            compose("    file: page.txt\n", "    file: /etc/passwd\n"),
            vec!["configs `page`", "`file`", "/etc/passwd"],
        ),
        (
            "config-symlink",
            // Even a link to a file inside: what Docker reads must be what cc-ci judged.
            Box::new(|d: &Path| {
                std::fs::rename(d.join("page.txt"), d.join("real.txt")).unwrap();
                symlink("real.txt", &d.join("page.txt"))
            }),
            vec!["configs `page`", "page.txt", "symbolic link"],
        ),
        (
            "foreign-secret",
            compose(
                "    name: ${STACK_NAME}_api_key_${SECRET_API_KEY_VERSION}\n",
                "    name: someone_else_db_password_v1\n",
            ),
            vec!["secrets `api_key`", "foreign-object"],
        ),
        (
            "unused-compose-file",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join("compose.evil.yml"),
                    "services:\n  app:\n    volumes: ['/etc:/etc-host']\n",
                )
                .unwrap()
            }),
            vec!["compose.evil.yml", "bind-mount"],
        ),
        (
            "compose-dev-zero",
            Box::new(|d: &Path| symlink("/dev/zero", &d.join("compose.yml"))),
            vec!["compose.yml", "symbolic link"],
        ),
        (
            "compose-outside",
            Box::new(|d: &Path| symlink("../../../outside.yml", &d.join("compose.yml"))),
            vec!["compose.yml", "symbolic link"],
        ),
        (
            "env-symlink",
            Box::new(|d: &Path| symlink("/etc/hostname", &d.join(".env.sample"))),
            vec![".env.sample", "symbolic link"],
        ),
        (
            "abra-sh-symlink",
            Box::new(|d: &Path| symlink("/etc/shadow", &d.join("abra.sh"))),
            vec!["abra.sh", "symbolic link", "/etc/shadow"],
        ),
        (
            "cc-ci-dir-symlink",
            Box::new(|d: &Path| symlink("/etc", &d.join(".cc-ci"))),
            vec![".cc-ci"],
        ),
    ]
}

/// Every hostile recipe is refused with exit 2 before anything is deployed, the refusal names
/// what it found, and nothing reaches the swarm.
#[test]
fn hostile_recipes_are_refused_before_anything_is_deployed() {
    let s = sandbox("pol-", |_, _| {});
    // What the `compose-outside` symlink points at, should it be followed.
    std::fs::write(
        s.path("outside.yml"),
        "services:\n  app:\n    image: x\n    volumes: ['/:/host']\n",
    )
    .unwrap();
    let mut tally = Vec::new();
    for (case, edit, expected) in hostile_cases() {
        let recipe = s.recipe(case, edit);
        let report = s.path(&format!("report-{case}"));
        let o = s.run(&recipe, &report, "install");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{case}: the hostile recipe was not refused:\n{stderr}"
        );
        for e in &expected {
            assert!(
                stderr.contains(e),
                "{case}: the refusal does not name {e:?}:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains("install: deploying"),
            "{case}: something was deployed:\n{stderr}"
        );
        assert!(
            !report.join("run.json").exists(),
            "{case}: a run.json was written"
        );
        s.assert_clean(case);
        tally.push(case);
    }
    eprintln!(
        "DRILL hostile-recipes tried={} held={} cases={tally:?}",
        hostile_cases().len(),
        tally.len()
    );
}

/// The operator allows the Docker socket for one repository: that recipe deploys, and its
/// report says what was allowed; the same compose file in another repository stays refused.
#[test]
fn an_operator_allowance_is_honoured_and_shown() {
    let s = sandbox("alw-", |_, c| {
        c.harness
            .compose_allow
            .insert("trusted/web".into(), vec!["docker-socket".into()]);
    });
    let socket = "      - data:/data\n      - /var/run/docker.sock:/var/run/docker.sock:ro\n";
    let trusted = s.recipe("trusted", |d| {
        edit_file(&d.join("compose.yml"), VOLUMES, socket)
    });
    let other = s.recipe("other", |d| {
        edit_file(&d.join("compose.yml"), VOLUMES, socket)
    });

    let o = s.run(&other, &s.path("report-other"), "install");
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let report = s.path("report-trusted");
    let o = s.run(&trusted, &report, "install");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let run: serde_json::Value = serde_json::from_str(&read(&report.join("run.json"))).unwrap();
    let notes = run["notes"].to_string();
    assert!(
        notes.contains("compose policy: `docker-socket` allowed by the operator for trusted/web"),
        "{run:#}"
    );
    assert!(read(&report.join("summary.md")).contains("docker-socket"));
    s.assert_clean("allowed");
}

/// The forge token and the webhook secret (in the files the config names, as the daemon's
/// runs have them) are printed by the recipe into its logs and its failing healthcheck: no
/// report file, diagnostic or stderr line may show them.
#[test]
fn forge_secrets_never_reach_reports_diagnostics_or_stderr() {
    const TOKEN: &str = "forge-tok-5e1c9a7b3d2f";
    const HOOK: &str = "hook-sec|ret│8c4d"; // table separators inside: masked whole
    let s = sandbox("tok-", |dir, c| {
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.join("hook"), HOOK).unwrap();
        c.forge.token_file = Some(dir.join("token"));
        c.forge.webhook_secret_file = Some(dir.join("hook"));
        c.harness.converge_timeout_secs = 60;
    });
    let recipe = s.recipe("leak", |d| {
        let compose = d.join("compose.yml");
        let text = read(&compose);
        let start = text.find("    command:").expect("compose has a command");
        let end = start + text[start..].find('\n').unwrap();
        let mut leaky = text.clone();
        leaky.replace_range(
            start..end,
            &format!(
                "    command: [\"sh\", \"-c\", \"echo 'token {TOKEN} hook {HOOK}'; sleep 1; exit 3\"]"
            ),
        );
        let leaky = leaky.replace(
            "coop-cloud.${STACK_NAME}.timeout=60",
            "coop-cloud.${STACK_NAME}.timeout=12",
        );
        std::fs::write(&compose, leaky).unwrap();
    });
    let report = s.path("report");
    let o = s.run(&recipe, &report, "install");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "the recipe must fail:\n{stderr}");
    let mut texts = vec![("stderr".to_string(), stderr.clone())];
    let mut dirs = vec![report.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                texts.push((e.path().display().to_string(), read(&e.path())));
            }
        }
    }
    let pieces = [TOKEN, HOOK, "hook-sec", "ret│8c4d"];
    let hits: Vec<String> = texts
        .iter()
        .flat_map(|(n, t)| {
            pieces
                .iter()
                .filter(|p| t.contains(*p))
                .map(move |p| format!("{n} contains {p:?}"))
        })
        .collect();
    // The values really reached the texts (masked): the scan is not vacuous.
    let masked = texts
        .iter()
        .filter(|(_, t)| t.contains("token [REDACTED] hook [REDACTED]"))
        .count();
    eprintln!(
        "DRILL forge-secrets files={} masked={masked} hits={}",
        texts.len(),
        hits.len()
    );
    assert!(hits.is_empty(), "{hits:#?}");
    assert!(
        masked > 0,
        "no text shows the masked values: {:#?}",
        texts.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    s.assert_clean("forge secrets");
}

// ------------------------------------------------------------------------------------------
// A hung engine.

const ENGINE_TIMEOUT_SECS: u64 = 3;

/// Starts a run through a hanging proxy and waits until `abra app deploy` is about to run,
/// then hangs the engine and lets abra go.
async fn run_into_a_hung_engine(s: &Sandbox) -> (std::process::Child, HangingProxy, PathBuf) {
    let recipe = s.recipe("hung", |_| {});
    let proxy = HangingProxy::start(s.path("engine.sock"));
    std::fs::write(s.path("gate-deploy"), "").unwrap();
    let stderr = s.path("run.stderr");
    let child = s.spawn_run_behind(&proxy.path, &recipe, &s.path("report"), &stderr, "install");
    let at = s.path("at-deploy");
    eventually(
        "the run to call abra app deploy",
        90,
        || at.exists().then_some(()),
        || read(&stderr),
    )
    .await;
    proxy.set_hung(true);
    std::fs::write(s.path("go"), "").unwrap();
    (child, proxy, stderr)
}

fn hung_config(_: &Path, c: &mut Config) {
    c.harness.engine_timeout_secs = ENGINE_TIMEOUT_SECS;
    // Far longer than the test waits: only the engine deadline can end the run in time.
    c.harness.abra_timeout_secs = 600;
    c.harness.converge_timeout_secs = 600;
}

/// The engine hangs while abra deploys: the run ends with exit 3 within a few engine deadlines
/// (not abra's or the convergence deadline), and once the engine is back gc leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_is_an_infrastructure_error_within_the_engine_deadline() {
    let s = sandbox("hng-", hung_config);
    let (mut child, proxy, stderr) = run_into_a_hung_engine(&s).await;
    let hung_at = Instant::now();
    let status = eventually(
        "the run to end after the engine hung",
        60,
        || child.try_wait().unwrap(),
        || read(&stderr),
    )
    .await;
    let took = hung_at.elapsed();
    proxy.set_hung(false);
    let err = read(&stderr);
    eprintln!(
        "DRILL hung-engine exit={:?} secs={:.1} engine_timeout={ENGINE_TIMEOUT_SECS}",
        status.code(),
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("hangs"),
        "the error does not say the engine hangs:\n{err}"
    );
    s.assert_clean("hung engine");
}

/// SIGTERM while the engine hangs: the run still ends (it cannot tear down through a hung
/// engine, and says so) instead of waiting forever, and gc cleans up once the engine is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_hung_engine_still_ends_the_run() {
    let s = sandbox("hnt-", hung_config);
    let (mut child, proxy, stderr) = run_into_a_hung_engine(&s).await;
    sigterm(child.id());
    let status = eventually(
        "the run to end after SIGTERM",
        60,
        || child.try_wait().unwrap(),
        || read(&stderr),
    )
    .await;
    proxy.set_hung(false);
    let err = read(&stderr);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("SIGTERM"), "{err}");
    s.assert_clean("SIGTERM with a hung engine");
}

// ------------------------------------------------------------------------------------------
// Report directories that cannot be written.

/// A read-only report directory: exit 3 with a message before anything is deployed.
#[test]
fn a_read_only_report_dir_is_exit_3_before_anything_is_deployed() {
    let s = sandbox("rro-", |_, _| {});
    let recipe = s.recipe("ro", |_| {});
    let report = s.path("report");
    std::fs::create_dir_all(&report).unwrap();
    // root ignores permission bits: a read-only mount is what stops it.
    let root = sh("id -u") == "0";
    let _unmount = if root {
        sh(&format!(
            "mount -t tmpfs -o ro,size=64k tmpfs '{}'",
            report.display()
        ));
        Some(Unmount(report.clone()))
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&report, std::fs::Permissions::from_mode(0o555)).unwrap();
        None
    };
    let o = s.run(&recipe, &report, "install");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot write the report file"), "{stderr}");
    assert!(!stderr.contains("install: deploying"), "{stderr}");
    s.assert_clean("read-only report dir");
}

/// A report directory that fills up during the run (`summary.md` is `/dev/full`): the run
/// passes its tiers, but a missing report is exit 3 with a message, never exit 0.
#[test]
fn a_full_report_dir_is_exit_3_never_a_silent_pass() {
    let s = sandbox("rfu-", |_, _| {});
    let recipe = s.recipe("full", |_| {});
    let report = s.path("report");
    std::fs::create_dir_all(&report).unwrap();
    symlink("/dev/full", &report.join("summary.md"));
    let o = s.run(&recipe, &report, "install");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot write the report file") && stderr.contains("summary.md"),
        "{stderr}"
    );
    s.assert_clean("full report dir");
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

// ------------------------------------------------------------------------------------------
// The daemon: a run that dies of a signal is followed by gc.

/// The run process dies of SIGSEGV (not a cancel): the daemon reports an error naming the
/// signal and runs `cc-ci gc` after it, since the run could not tear down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_dies_of_a_signal_is_followed_by_gc() {
    let mut env = Env::new().await;
    let marks = env.marks();
    let crash = marks.join("crashing-cc-ci");
    write_exe(
        &crash,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = gc ]; then\n\
             \x20 if [ -e '{m}/died' ]; then echo after-death >> '{m}/gc.log'; else echo start-up >> '{m}/gc.log'; fi\n\
             \x20 echo 'gc: 0 collected'; exit 0\nfi\n\
             touch '{m}/died'\nkill -SEGV $$\n",
            m = marks.display()
        ),
    );
    env.exe = crash;
    let d = env.start().await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 9001).await;
    env.wait_status(SHA, "error", "signal").await;
    eventually(
        "gc after the run died",
        20,
        || {
            read(&marks.join("gc.log"))
                .contains("after-death")
                .then_some(())
        },
        || env.state(),
    )
    .await;
    d.shutdown().await;
}

/// The daemon hands a run the forge token and webhook secret on an inherited pipe (fd 3), so
/// the harness can mask them, and nowhere else: not in its environment or arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_learns_the_forge_secrets_only_through_its_pipe() {
    let mut env = Env::new().await;
    let marks = env.marks();
    let exe = marks.join("peeking-cc-ci");
    write_exe(
        &exe,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = gc ]; then echo 'gc: 0 collected'; exit 0; fi\n\
             echo \"fd=$CC_CI_SECRETS_FD\" > '{m}/seen'\n\
             cat <&3 >> '{m}/seen'\n\
             env >> '{m}/env'\necho \"$@\" >> '{m}/args'\nexit 3\n",
            m = marks.display()
        ),
    );
    env.exe = exe;
    let d = env.start().await;
    let addr = d.local_addr().unwrap();
    testme(addr, "coop/web", 1, 9002).await;
    env.wait_status(SHA, "error", "infrastructure").await;
    let seen = read(&marks.join("seen"));
    assert!(seen.starts_with("fd=3\n"), "{seen}");
    assert!(seen.contains(TOKEN) && seen.contains(SECRET), "{seen}");
    for f in ["env", "args"] {
        let text = read(&marks.join(f));
        assert!(!text.is_empty(), "the run wrote no {f}");
        assert!(
            !text.contains(TOKEN) && !text.contains(SECRET),
            "a secret reached the run's {f}: {text}"
        );
    }
    d.shutdown().await;
}
