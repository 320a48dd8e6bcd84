//! The stand-in's behaviour on the real swarm (run `scripts/setup-swarm` first). Each test uses its
//! own `ABRA_DIR` and a unique domain, and removes what it created even when it fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cc_ci_testkit::cmd::{docker, git};
use cc_ci_testkit::standin::App;

const BIN: &str = env!("CARGO_BIN_EXE_abra-standin");

/// An app of fixture `fixture` in a fresh `ABRA_DIR`, run by this build's stand-in.
fn fixture_app(fixture: &str, prefix: &str) -> App {
    App::new(Path::new(BIN), fixture, prefix)
}

#[test]
fn refuses_to_run_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["recipe", "versions", "web"][..],
        &["-n", "server", "add", "--local"],
        &[
            "app", "new", "web", "--server", "default", "--domain", "x.test", "-n",
        ],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env("ABRA_DIR", dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("inappropriate ioctl for device"), "{err}");
        assert!(out.stdout.is_empty());
    }
    // Nothing was created: the refusal comes before any work.
    assert!(!dir.path().join("servers").exists());
    // --help explains what it is, terminal or not.
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("TEST SUPPORT ONLY"));
}

#[test]
fn app_new_env_secrets_versions_and_removal() {
    let app = fixture_app("web", "new");
    // `-n` is accepted anywhere.
    let versions = app.ok(&["-n", "recipe", "versions", "web"]);
    assert_eq!(
        versions.lines().collect::<Vec<_>>(),
        vec!["1.0.0+1.0", "1.1.0+1.1"]
    );

    let secrets = app.new_app();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let (name, value) = &secrets[0];
    assert_eq!(name, "api_key");
    assert_eq!(value.len(), 24, "length= comment honoured");
    assert!(value.chars().all(|c| c.is_ascii_alphanumeric()));
    docker(&["secret", "inspect", &format!("{}_api_key_v1", app.stack)]);

    let env = app.env_text();
    // Pinned to the release `app new` chose, from that release's .env.sample.
    assert!(env.starts_with("TYPE=web:1.1.0+1.1\n"), "{env}");
    assert!(env.contains(&format!("\nDOMAIN={}\n", app.domain)), "{env}");
    assert!(env.contains("SECRET_API_KEY_VERSION=v1"), "{env}");
    // The checkout moved to the latest release, detached.
    assert_eq!(
        git(&app.recipe_dir(), &["rev-parse", "HEAD"]),
        git(&app.recipe_dir(), &["rev-parse", "1.1.0+1.1^{commit}"])
    );

    let again = app.fails(&[
        "app",
        "new",
        "web",
        "--server",
        "default",
        "--domain",
        &app.domain,
    ]);
    assert!(again.contains("already exists"), "{again}");
    let missing = app.fails(&[
        "app", "new", "nope", "--server", "default", "--domain", "x.test",
    ]);
    assert!(missing.contains("not checked out"), "{missing}");

    // COMPOSE_FILE is honoured: a file it names must exist.
    std::fs::write(
        app.env_file(),
        format!("{env}COMPOSE_FILE=\"compose.yml:compose.missing.yml\"\n"),
    )
    .unwrap();
    let bad = app.fails(&["app", "deploy", &app.domain, "-D", "-n"]);
    assert!(bad.contains("compose.missing.yml"), "{bad}");
}

#[test]
fn deploy_release_then_chaos_labels_type_line_and_teardown() {
    let app = fixture_app("web", "dep");
    app.new_app();
    let d = app.domain.as_str();

    app.deploy(&["1.0.0+1.0"]);
    assert_eq!(app.label("app", "version").as_deref(), Some("1.0.0+1.0"));
    assert_eq!(app.label("app", "chaos").as_deref(), Some("false"));
    assert_eq!(app.label("app", "recipe").as_deref(), Some("web"));
    assert_eq!(app.label("app", "chaos-version"), None);
    assert_eq!(app.label("app", "timeout").as_deref(), Some("60"));
    assert!(app.env_text().starts_with("TYPE=web:1.0.0+1.0\n"));
    assert!(
        app.exec("app", "wget -q -O- http://127.0.0.1/")
            .contains("version 1")
    );
    // abra.sh's PAGE_VERSION named the config.
    docker(&["config", "inspect", &format!("{}_page_v1", app.stack)]);

    // Untracked files stop a release deploy, not a chaos one.
    let repo = app.recipe_dir();
    git(&repo, &["checkout", "-q", "main"]);
    let head = git(&repo, &["rev-parse", "--short=8", "HEAD"]);
    std::fs::write(
        repo.join("compose.extra.yml"),
        "version: \"3.8\"\nservices:\n  app:\n    deploy:\n      labels:\n        - \"extra=from-compose-file\"\n",
    )
    .unwrap();
    let refused = app.fails(&["app", "deploy", d, "1.1.0+1.1", "-D", "-f", "-n"]);
    assert!(
        refused.contains("compose.extra.yml") && refused.contains("--chaos"),
        "{refused}"
    );
    assert_eq!(app.label("app", "version").as_deref(), Some("1.0.0+1.0"));

    let env = app.env_text();
    std::fs::write(
        app.env_file(),
        format!("{env}COMPOSE_FILE=compose.yml:compose.extra.yml\n"),
    )
    .unwrap();
    app.deploy(&["--chaos"]);
    let labels = app.service_labels("app");
    assert_eq!(labels["extra"], "from-compose-file", "{labels}");
    assert_eq!(app.label("app", "chaos").as_deref(), Some("true"));
    // The untracked compose.extra.yml makes the tree dirty: `+U`, as abra's git library says.
    assert_eq!(app.label("app", "chaos-version"), Some(format!("{head}+U")));
    // The version label is what the deployed compose file declares.
    assert_eq!(app.label("app", "version").as_deref(), Some("1.1.0+1.1"));
    assert!(
        app.env_text().starts_with(&format!("TYPE=web:{head}+U\n")),
        "{}",
        app.env_text()
    );
    assert!(
        app.exec("app", "wget -q -O- http://127.0.0.1/")
            .contains("version 2")
    );
    docker(&["config", "inspect", &format!("{}_page_v3", app.stack)]);

    let started = Instant::now();
    app.ok(&["app", "undeploy", d, "-n"]);
    let left = app.leftovers();
    assert!(
        left.iter()
            .all(|o| o.starts_with("volume ") || o.starts_with("secret ")),
        "undeploy keeps only volumes and secrets: {left:?}"
    );
    assert!(left.iter().any(|o| o.starts_with("volume ")), "{left:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let again = app.fails(&["app", "undeploy", d, "-n"]);
    assert!(again.contains("not deployed"), "{again}");
}

#[test]
fn convergence_monitor_gives_up_inside_start_period_unless_c() {
    let app = fixture_app("web-unhealthy", "unh");
    app.new_app();
    git(&app.recipe_dir(), &["checkout", "-q", "main"]);
    let started = Instant::now();
    let out = app.fails(&["app", "deploy", &app.domain, "--chaos", "-D", "-n"]);
    // abra's monitor gives up while the task is still starting, long before the timeout label.
    assert!(started.elapsed() < Duration::from_secs(15), "{out}");
    assert!(
        out.contains("start_period") && out.contains(&format!("{}_app", app.stack)),
        "{out}"
    );
    // A failed deploy records no version: the pin `app new` wrote stays.
    assert!(app.env_text().starts_with("TYPE=web-unhealthy:1.0.0+1.0\n"));
    // With -c it returns right after the stack deploy, converged or not.
    let out = app.ok(&["app", "deploy", &app.domain, "--chaos", "-D", "-c", "-n"]);
    assert!(out.contains("--no-converge-checks"), "{out}");
}

#[test]
fn domain_checks_and_redeploys_need_flags() {
    let app = fixture_app("web", "dom");
    app.new_app();
    let d = app.domain.as_str();
    let out = app.fails(&["app", "deploy", d, "-c", "-n"]);
    assert!(
        out.contains("does not resolve to this server") && out.contains("--no-domain-checks"),
        "{out}"
    );
    app.deploy(&[]);
    let out = app.fails(&["app", "deploy", d, "-D", "-c", "-n"]);
    assert!(
        out.contains("already deployed") && out.contains("--force"),
        "{out}"
    );
    app.deploy(&["-f"]);
    // abra asks the registry for every image's digest: swarm records it.
    let image = docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &format!("{}_app", app.stack),
    ]);
    assert!(
        image
            .trim()
            .starts_with("127.0.0.1:5000/cc-ci-fixture/web:1@sha256:"),
        "{image}"
    );
}

#[test]
fn real_shaped_recipe_v_tags_compose_versions_generate_false_and_secret_insert() {
    let app = fixture_app("web-newsecret", "wns");
    let versions = app.ok(&["recipe", "versions", "web-newsecret", "-n"]);
    assert_eq!(versions.trim(), "v1.0.0");
    let generated = app.new_app();
    // `# generate=false` is left to the operator.
    assert_eq!(
        generated
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec!["api_key"]
    );
    assert!(app.env_text().starts_with("TYPE=web-newsecret:v1.0.0\n"));
    let d = app.domain.as_str();
    let out = app.fails(&["app", "deploy", d, "-D", "-c", "-n"]);
    assert!(out.contains("smtp_password"), "missing secret: {out}");
    app.ok(&[
        "app",
        "secret",
        "insert",
        d,
        "smtp_password",
        "v1",
        "s3cr3t-smtp-pw",
        "-n",
    ]);
    docker(&[
        "secret",
        "inspect",
        &format!("{}_smtp_password_v1", app.stack),
    ]);
    // compose `version: "3.7"`.
    app.deploy(&[]);
    assert_eq!(app.label("app", "version").as_deref(), Some("v1.0.0"));

    // The head: no `version:` in compose.yml, "3.13" in its overlay, a new secret and key.
    let repo = app.recipe_dir();
    git(&repo, &["checkout", "-q", "main"]);
    let head = git(&repo, &["rev-parse", "--short=8", "HEAD"]);
    let env = app
        .env_text()
        .replace("SECRET_API_KEY_VERSION=v1", "SECRET_API_KEY_VERSION=v2");
    std::fs::write(
        app.env_file(),
        format!("{env}SECRET_UPLOAD_KEY_VERSION=v1\nUPLOAD_LIMIT=10M\nCOMPOSE_FILE=\"compose.yml:compose.limits.yml\"\n"),
    )
    .unwrap();
    for (name, v) in [("upload_key", "v1"), ("api_key", "v2")] {
        app.ok(&[
            "app",
            "secret",
            "insert",
            d,
            name,
            v,
            "another-value-1",
            "-n",
        ]);
    }
    app.deploy(&["--chaos"]);
    assert_eq!(app.label("app", "chaos-version"), Some(head));
    assert_eq!(app.label("app", "version").as_deref(), Some("v1.1.0"));
    assert!(app.exec("app", "echo $UPLOAD_LIMIT").contains("10M"));
}

#[test]
fn backups_need_backup_bot_two_on_the_server() {
    let app = fixture_app("web", "bbt");
    app.new_app();
    app.deploy(&[]);
    let d = app.domain.as_str();
    // A label no service carries stands for a server without backup-bot-two.
    let o = app.run_env(
        &["app", "backup", "create", d, "-n"],
        &[("CC_CI_BACKUPBOT_LABEL", "cc-ci.test.no-such-backupbot=true")],
    );
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(o.text.contains("no backup-bot-two service"), "{}", o.text);
    let o = app.run_env(
        &["app", "restore", d, "-n"],
        &[("CC_CI_BACKUPBOT_LABEL", "cc-ci.test.no-such-backupbot=true")],
    );
    assert!(
        o.code == 1 && o.text.contains("no backup-bot-two service"),
        "{}",
        o.text
    );
    // With the one scripts/setup-swarm deploys, it works.
    app.ok(&["app", "backup", "create", d, "-n"]);
}

#[test]
fn monitor_may_return_mid_update_and_swarm_rolls_back_afterwards() {
    let app = fixture_app("web-upgrade-broken", "ubr");
    app.new_app();
    app.deploy(&["1.0.0+1.0"]);
    assert_eq!(app.label("app", "version").as_deref(), Some("1.0.0+1.0"));
    git(&app.recipe_dir(), &["checkout", "-q", "main"]);
    // Like abra's monitor: it either gives up on the new task while it is starting, or returns
    // while the old task still runs and the update is still going; either way the swarm then
    // rolls the update back, so only a wait of one's own tells what really runs.
    let o = app.run(&["app", "deploy", &app.domain, "--chaos", "-D", "-n"]);
    assert!(
        (o.code == 1 && o.text.contains("start_period"))
            || (o.code == 0 && o.text.contains("converged")),
        "{}",
        o.text
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let state = docker(&[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            &format!("{}_app", app.stack),
        ]);
        if state.trim() == "rollback_completed" {
            break;
        }
        assert!(Instant::now() < deadline, "no rollback: {state}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(app.label("app", "chaos-version"), None);
    assert_eq!(app.label("app", "version").as_deref(), Some("1.0.0+1.0"));
}

#[test]
fn main_service_not_called_app_gets_no_labels() {
    let app = fixture_app("web-nolabel", "nol");
    app.new_app();
    let out = app.deploy(&[]);
    assert!(out.contains("no `app` service"), "{out}");
    let labels = app.service_labels("web");
    let keys: Vec<&String> = labels.as_object().unwrap().keys().collect();
    assert!(
        !keys.iter().any(|k| k.starts_with("coop-cloud.")),
        "{keys:?}"
    );
    let bad = fixture_app("web-badcompose", "bad");
    bad.new_app();
    let out = bad.fails(&["app", "deploy", &bad.domain, "-D", "-n"]);
    assert!(out.contains("compose.yml is not valid YAML"), "{out}");
    assert_eq!(
        bad.leftovers()
            .iter()
            .filter(|o| !o.starts_with("secret "))
            .count(),
        0
    );
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn backup_and_restore_run_hooks_and_bring_data_back() {
    let app = fixture_app("two-service", "two");
    app.new_app();
    let d = app.domain.as_str();
    app.deploy(&[]);
    app.exec(
        "db",
        "echo 'row 2' >> /var/lib/db/data/rows; echo one > /var/lib/db/canary",
    );
    app.exec("app", "echo one > /data/canary");

    let first = app.ok(&["app", "backup", "create", d, "-n"]);
    assert!(
        first.contains(&format!("backupbot.backup.pre-hook in {}_db", app.stack)),
        "{first}"
    );
    let first = last_line(&first);
    let files = app.ok(&["app", "backup", "ls", d, "--snapshot", &first, "-n"]);
    let files: Vec<&str> = files
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for want in [
        "data/canary",
        "data/site.txt",
        "db/canary",
        "db/data/rows",
        "db/dump/rows.dump",
    ] {
        assert!(files.contains(&want), "{want} missing from {files:?}");
    }
    let snap = app.abra_dir.path().join("backups").join(d).join(&first);
    let dump = std::fs::read_to_string(snap.join("db/dump/rows.dump")).unwrap();
    assert!(dump.contains("row 2"), "pre-hook dumped the rows: {dump}");

    app.exec("app", "echo two > /data/canary");
    let second = last_line(&app.ok(&["app", "backup", "create", d, "-n"]));
    let list = app.ok(&["app", "backup", "list", d, "-n"]);
    assert_eq!(
        list.split_whitespace().collect::<Vec<_>>(),
        vec![first.as_str(), second.as_str()]
    );

    app.exec("app", "echo three > /data/canary; rm /data/site.txt");
    app.exec(
        "db",
        "echo corrupt > /var/lib/db/data/rows; echo three > /var/lib/db/canary",
    );
    let out = app.ok(&["app", "restore", d, "--snapshot", &first, "-n"]);
    assert!(
        out.contains(&format!("backupbot.restore.post-hook in {}_db", app.stack)),
        "{out}"
    );
    assert_eq!(app.exec("app", "cat /data/canary").trim(), "one");
    assert!(
        app.exec("app", "cat /data/site.txt")
            .contains("site created")
    );
    assert_eq!(app.exec("db", "cat /var/lib/db/canary").trim(), "one");
    assert!(
        app.exec("db", "cat /var/lib/db/data/rows")
            .contains("row 2")
    );

    app.ok(&["app", "restore", d, "-n"]);
    assert_eq!(app.exec("app", "cat /data/canary").trim(), "two");
}

#[test]
fn backup_label_errors_and_empty_snapshots() {
    let missing = fixture_app("web-backup-missing-volume", "bmv");
    missing.new_app();
    missing.deploy(&[]);
    let out = missing.fails(&["app", "backup", "create", &missing.domain, "-n"]);
    assert!(out.contains("`uploads`") && out.contains("data"), "{out}");
    assert_eq!(
        missing
            .ok(&["app", "backup", "list", &missing.domain])
            .trim(),
        ""
    );

    let empty = fixture_app("web-backup-empty", "bem");
    empty.new_app();
    empty.deploy(&[]);
    let out = empty.ok(&["app", "backup", "create", &empty.domain, "-n"]);
    assert!(out.contains("holds no files"), "{out}");
    let id = last_line(&out);
    assert_eq!(
        empty
            .ok(&["app", "backup", "ls", &empty.domain, "--snapshot", &id])
            .trim(),
        ""
    );
    let none = empty.fails(&["app", "backup", "ls", &empty.domain, "--snapshot", "nope"]);
    assert!(none.contains("no snapshot"), "{none}");

    // No stack, no backup.
    let web = fixture_app("web", "nob");
    web.new_app();
    let out = web.fails(&["app", "backup", "create", &web.domain, "-n"]);
    assert!(out.contains("not deployed"), "{out}");
}

#[test]
fn an_image_only_on_the_node_still_deploys_unpinned() {
    let app = fixture_app("web", "loc");
    app.new_app();
    let repo = app.recipe_dir();
    git(&repo, &["checkout", "-q", "main"]);
    // The local tag of the same image, which no registry has.
    let compose = repo.join("compose.yml");
    let text = std::fs::read_to_string(&compose)
        .unwrap()
        .replace("127.0.0.1:5000/cc-ci-fixture/web:2", "cc-ci-fixture/web:2");
    std::fs::write(&compose, text).unwrap();
    app.deploy(&["--chaos"]);
    let image = docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &format!("{}_app", app.stack),
    ]);
    // No registry answered for it: no digest, each node uses what it has.
    assert_eq!(image.trim(), "cc-ci-fixture/web:2");
}
