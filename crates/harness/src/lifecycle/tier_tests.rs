//! Unit tests of the install, upgrade, backup and restore tiers and of `execute` over the plan,
//! on the in-memory swarm and abra (crate::fakes): no Docker, no abra binary. The recipe is a
//! real git repository built from a fixture (tests/fixtures/recipes) by scripts/make-fixture-repo.

use std::path::Path;
use std::sync::Arc;

use super::job::{Job, Progress, RunOptions, Stop};
use crate::config::HarnessConfig;
use crate::contract::{Stage, exit};
use crate::fakes::{FakeAbra, FakeSwarm, Outage, Script};
use crate::hostenv::HostEnv;
use crate::redact::Redactor;
use crate::report::{CheckResult, TeardownReport, TierReport, Verdict};

const DOMAIN: &str = "web-abc123.ci.local";
const STACK: &str = "web-abc123_ci_local";
const HEAD_IMAGE: &str = "127.0.0.1:5000/cc-ci-fixture/web:2";

struct World {
    dir: tempfile::TempDir,
    swarm: Arc<FakeSwarm>,
    abra: Arc<FakeAbra>,
    job: Job,
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A job on `fixture` for `stages`, over a fresh fake swarm (backup-bot-two running) and abra.
fn world(fixture: &str, stages: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join(fixture);
    let root = repo_root();
    let made = std::process::Command::new("bash")
        .arg(root.join("scripts/make-fixture-repo"))
        .arg(root.join("tests/fixtures/recipes").join(fixture))
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = HarnessConfig {
        converge_timeout_secs: 1,
        stability_window_secs: 0,
        poll_interval_ms: 10,
        ..HarnessConfig::default()
    };
    let report_dir = dir.path().join("report");
    std::fs::create_dir_all(&report_dir).unwrap();
    let opts = RunOptions {
        recipe_source: repo.display().to_string(),
        git_ref: None,
        stages: Stage::parse_list(stages).unwrap(),
        report_dir,
        abra: None,
        config,
        keep_on_failure: false,
        skip_generic: false,
        base: None,
        shipped_overlays: None,
        host: HostEnv::default(),
        forge_secret_files: Vec::new(),
    };
    let swarm = Arc::new(FakeSwarm::new());
    let abra = Arc::new(FakeAbra::new(swarm.clone(), &dir.path().join("abra")));
    let redactor = Redactor::new();
    let job = Job::new(
        opts,
        DOMAIN.into(),
        fixture.into(),
        swarm.clone(),
        abra.clone(),
        redactor.clone(),
        Progress::new(redactor).quiet(),
    );
    // The web app writes its page into the volume at first start.
    swarm
        .state()
        .volumes
        .entry(format!("{STACK}_data"))
        .or_default()
        .insert("site.txt".into(), "site created by web 1".into());
    World {
        dir,
        swarm,
        abra,
        job,
    }
}

fn stop_text(s: Stop) -> String {
    match s {
        Stop::BadInput(m) => format!("bad input: {m}"),
        Stop::Infra(m) => format!("infrastructure: {m}"),
    }
}

impl World {
    async fn execute(&mut self) -> Result<(), String> {
        self.job.execute().await.map_err(stop_text)
    }

    fn tier(&self, name: &str) -> &TierReport {
        self.job
            .tiers
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tier {name} in {:#?}", self.job.tiers))
    }

    fn check(&self, tier: &str, name: &str) -> &CheckResult {
        let t = self.tier(tier);
        t.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name} in tier {tier}: {:#?}", t.checks))
    }

    fn deploys(&self) -> Vec<String> {
        self.abra
            .state()
            .calls
            .iter()
            .filter(|c| c.starts_with("app deploy"))
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn a_healthy_recipe_passes_every_tier_with_its_data_kept() {
    let mut w = world("web", "install,upgrade,backup,restore");
    w.execute().await.unwrap();
    for t in ["install", "upgrade", "backup", "restore"] {
        assert_eq!(w.tier(t).verdict, Verdict::Pass, "{:#?}", w.tier(t));
    }
    assert_eq!(w.job.base.as_deref(), Some("1.1.0+1.1"));
    assert_eq!(w.job.deploy_count, 1);
    let deploys = w.deploys();
    assert_eq!(deploys.len(), 2, "{deploys:?}");
    assert!(deploys[0].ends_with(" 1.1.0+1.1"), "{deploys:?}");
    assert!(deploys[1].ends_with(" --chaos"), "{deploys:?}");
    for (tier, check) in [
        ("upgrade", "no-rollback"),
        ("upgrade", "data-continuity"),
        ("upgrade", "version-label"),
        ("backup", "backup-labels"),
        ("backup", "snapshot-exists"),
        ("backup", "snapshot-content"),
        ("restore", "data-restored"),
    ] {
        assert_eq!(
            w.check(tier, check).verdict,
            Verdict::Pass,
            "{tier}/{check}"
        );
    }
    // The head's image was pulled and runs.
    let snap = w.swarm.state().services[0].spec.image.clone();
    assert_eq!(snap, HEAD_IMAGE);
    assert!(w.swarm.state().pulled.iter().any(|i| i == HEAD_IMAGE));
}

#[tokio::test]
async fn an_update_swarm_rolled_back_fails_no_rollback() {
    let mut w = world("web", "install,upgrade");
    w.swarm.state().rolls_back.insert("app".into());
    w.execute().await.unwrap();
    assert_eq!(w.tier("install").verdict, Verdict::Pass);
    assert_eq!(w.tier("upgrade").verdict, Verdict::Fail);
    let c = w.check("upgrade", "no-rollback");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail.contains("service app: update rolled back"),
        "{}",
        c.detail
    );
    // The old task kept serving: the head's chaos-version label never appeared.
    assert_eq!(w.check("upgrade", "version-label").verdict, Verdict::Fail);
}

#[tokio::test]
async fn a_canary_lost_on_upgrade_fails_data_continuity() {
    let mut w = world("web", "install,upgrade");
    w.swarm.state().wipes_on_start.insert("app".into());
    w.execute().await.unwrap();
    assert_eq!(w.check("upgrade", "no-rollback").verdict, Verdict::Pass);
    let c = w.check("upgrade", "data-continuity");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail.contains("volume data: the canary file is gone"),
        "{}",
        c.detail
    );
}

#[tokio::test]
async fn a_head_image_that_cannot_be_pulled_fails_the_upgrade_before_deploying() {
    let mut w = world("web", "install,upgrade");
    w.swarm
        .state()
        .unpullable
        .insert(HEAD_IMAGE.into(), "manifest unknown".into());
    w.execute().await.unwrap();
    assert_eq!(w.tier("install").verdict, Verdict::Pass);
    let c = w.check("upgrade", "pull");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail.contains(HEAD_IMAGE) && c.detail.contains("registry 127.0.0.1:5000"),
        "{}",
        c.detail
    );
    assert_eq!(w.deploys().len(), 1, "no chaos deploy after a failed pull");
}

#[tokio::test]
async fn abra_failing_to_deploy_fails_install_with_its_words_and_skips_the_rest() {
    let mut w = world("web", "install,upgrade,backup,restore");
    w.abra.script(
        "deploy",
        Script::Fail {
            code: 1,
            output: "pulling images\nFATA unable to deploy: secret not found: web-abc123_ci_local_api_key_v1\n"
                .into(),
        },
    );
    w.execute().await.unwrap();
    let c = w.check("install", "deploy");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail.contains("failed with exit code 1; abra said: pulling images | FATA unable to deploy: secret not found"),
        "{}",
        c.detail
    );
    assert_eq!(w.tier("install").verdict, Verdict::Fail);
    assert_eq!(w.tier("upgrade").verdict, Verdict::Error);
    assert_eq!(w.check("upgrade", "base-installs").verdict, Verdict::Error);
    for t in ["backup", "restore"] {
        assert_eq!(w.tier(t).verdict, Verdict::Skipped, "{t}");
    }
    assert_eq!(w.deploys().len(), 1);
    assert!(w.abra.state().snapshots.is_empty());
}

#[tokio::test]
async fn abra_failing_while_the_engine_is_gone_is_an_infrastructure_stop() {
    let mut w = world("web", "install,backup");
    w.abra.script("backup create", Script::EngineDies);
    let stop = w.execute().await.unwrap_err();
    assert!(
        stop.starts_with("infrastructure: ")
            && stop.contains("while the Docker engine was unreachable"),
        "{stop}"
    );
    // As `run` records it: an infrastructure error of the tier, exit 3, not a recipe failure.
    w.job
        .record_infra_error(stop.trim_start_matches("infrastructure: "));
    let report = w.job.report(TeardownReport::default());
    assert_eq!(super::exit_code(&report), exit::INFRA);
}

#[tokio::test]
async fn abra_deploy_failing_while_the_engine_is_gone_stops_the_run() {
    let mut w = world("web", "install");
    w.abra.script("deploy", Script::EngineDies);
    let stop = w.execute().await.unwrap_err();
    assert!(stop.starts_with("infrastructure: "), "{stop}");
    assert!(w.job.tiers.is_empty(), "{:#?}", w.job.tiers);
}

#[tokio::test]
async fn a_task_that_never_gets_healthy_fails_install_and_the_plan_skips_the_rest() {
    let mut w = world("web", "install,upgrade,backup,restore");
    w.swarm.state().never_healthy.insert("app".into());
    w.execute().await.unwrap();
    let c = w.check("install", "converged");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.detail.contains("not healthy"), "{}", c.detail);
    assert!(c.detail.contains("health unhealthy"), "{}", c.detail);
    assert_eq!(w.tier("upgrade").verdict, Verdict::Error);
    assert_eq!(w.tier("backup").verdict, Verdict::Skipped);
    assert_eq!(w.tier("restore").verdict, Verdict::Skipped);
    assert_eq!(w.deploys().len(), 1);
}

#[tokio::test]
async fn without_backup_bot_the_backup_tiers_are_an_error_of_the_server() {
    let mut w = world("web", "install,backup,restore");
    w.swarm.state().others.clear();
    w.execute().await.unwrap();
    assert_eq!(w.tier("install").verdict, Verdict::Pass);
    for t in ["backup", "restore"] {
        assert_eq!(w.tier(t).verdict, Verdict::Error, "{t}");
        let detail = &w.tier(t).checks[0].detail;
        assert!(
            detail.contains("no backup-bot-two service runs"),
            "{detail}"
        );
    }
    assert!(w.abra.state().snapshots.is_empty());
}

#[tokio::test]
async fn a_backup_abra_does_not_list_fails_snapshot_exists() {
    let mut w = world("web", "install,backup");
    w.abra.script("backup create", Script::NoOp);
    w.execute().await.unwrap();
    assert_eq!(w.check("backup", "backup-create").verdict, Verdict::Pass);
    let c = w.check("backup", "snapshot-exists");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.detail.contains("lists no snapshot"), "{}", c.detail);
}

#[tokio::test]
async fn a_snapshot_without_the_canary_fails_snapshot_content() {
    let mut w = world("web", "install,backup");
    w.abra
        .state()
        .leaves_out
        .insert(format!("data/{}", super::data::CANARY_FILE));
    w.execute().await.unwrap();
    assert_eq!(w.check("backup", "snapshot-exists").verdict, Verdict::Pass);
    let c = w.check("backup", "snapshot-content");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail
            .contains("the canary of volume data is not in the snapshot"),
        "{}",
        c.detail
    );
}

#[tokio::test]
async fn a_backupbot_label_naming_an_unknown_volume_fails_backup_labels() {
    let mut w = world("web-backup-missing-volume", "install,backup");
    w.execute().await.unwrap();
    let c = w.check("backup", "backup-labels");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.detail.contains("uploads"), "{}", c.detail);
    // backup-bot-two refuses the same labels: abra's words name the volume.
    let create = w.check("backup", "backup-create");
    assert_eq!(create.verdict, Verdict::Fail);
    assert!(
        create.detail.contains("volume uploads"),
        "{}",
        create.detail
    );
}

#[tokio::test]
async fn a_restore_that_does_nothing_fails_data_restored() {
    let mut w = world("web", "install,backup,restore");
    w.abra.script("restore", Script::NoOp);
    w.execute().await.unwrap();
    assert_eq!(w.tier("backup").verdict, Verdict::Pass);
    assert_eq!(w.check("restore", "restore").verdict, Verdict::Pass);
    let c = w.check("restore", "data-restored");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.detail.contains("canary changed"), "{}", c.detail);
}

#[tokio::test]
async fn abra_failing_to_restore_fails_restore_with_its_words() {
    let mut w = world("web", "install,backup,restore");
    w.abra.script(
        "restore",
        Script::Fail {
            code: 1,
            output: "FATA restic: repository does not exist\n".into(),
        },
    );
    w.execute().await.unwrap();
    let c = w.check("restore", "restore");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail
            .contains("abra said: FATA restic: repository does not exist"),
        "{}",
        c.detail
    );
    assert_eq!(w.tier("restore").verdict, Verdict::Fail);
    assert!(
        w.tier("restore")
            .checks
            .iter()
            .all(|c| c.name != "data-restored")
    );
}

#[tokio::test]
async fn restore_without_a_passing_backup_is_skipped_by_the_plan() {
    let mut w = world("web", "install,backup,restore");
    w.abra.script(
        "backup create",
        Script::Fail {
            code: 1,
            output: "FATA backup-bot-two: pre-hook failed\n".into(),
        },
    );
    w.execute().await.unwrap();
    assert_eq!(w.check("backup", "backup-create").verdict, Verdict::Fail);
    assert_eq!(w.tier("restore").verdict, Verdict::Skipped);
    assert!(
        !w.abra
            .state()
            .calls
            .iter()
            .any(|c| c.starts_with("app restore"))
    );
}

#[tokio::test]
async fn teardown_leaves_nothing_of_the_stack() {
    let mut w = world("web", "install");
    w.execute().await.unwrap();
    assert!(!w.swarm.state().services.is_empty());
    let run_dir = crate::teardown::RunDir::create(&w.dir.path().join("work"), DOMAIN).unwrap();
    let report = w.job.teardown(run_dir).await;
    assert_eq!(
        report.verdict,
        Some(Verdict::Pass),
        "{:?}",
        report.leftovers
    );
    let st = w.swarm.state();
    assert!(st.services.is_empty() && st.volumes.keys().all(|v| !v.starts_with(STACK)));
    drop(st);
    assert!(
        w.abra
            .state()
            .calls
            .iter()
            .any(|c| c == &format!("app undeploy {DOMAIN}"))
    );
}

#[tokio::test]
async fn teardown_with_a_hung_engine_reports_what_to_do() {
    let mut w = world("web", "install");
    w.execute().await.unwrap();
    w.swarm.state().down = Some(Outage::Hung);
    let run_dir = crate::teardown::RunDir::create(&w.dir.path().join("work"), DOMAIN).unwrap();
    let report = w.job.teardown(run_dir).await;
    assert_eq!(report.verdict, Some(Verdict::Error));
    assert!(
        report.leftovers[0].contains("cc-ci gc"),
        "{:?}",
        report.leftovers
    );
    // Neither abra nor the removals were tried: each would only hang on the same engine.
    assert!(
        !w.abra
            .state()
            .calls
            .iter()
            .any(|c| c.starts_with("app undeploy"))
    );
    let calls = w.swarm.state().calls.clone();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("check_swarm"),
        "{calls:?}"
    );
}

#[tokio::test]
async fn the_upgrade_inserts_the_heads_new_secrets_before_its_deploy() {
    let mut w = world("web-newsecret", "install,upgrade");
    w.execute().await.unwrap();
    assert_eq!(
        w.tier("upgrade").verdict,
        Verdict::Pass,
        "{:#?}",
        w.tier("upgrade")
    );
    let c = w.check("upgrade", "config-added");
    assert!(
        c.detail.contains("upload_key v1") && c.detail.contains("api_key v2"),
        "{}",
        c.detail
    );
    assert!(c.detail.contains("UPLOAD_LIMIT"), "{}", c.detail);
}

#[tokio::test]
async fn a_deploy_without_its_secrets_fails_as_the_swarm_refuses_it() {
    let mut w = world("web", "install");
    // As if cc-ci had not inserted the secret the compose file names.
    w.abra.script("app secret insert", Script::NoOp);
    w.execute().await.unwrap();
    let c = w.check("install", "deploy");
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail
            .contains("secret not found: web-abc123_ci_local_api_key_v1"),
        "{}",
        c.detail
    );
}

#[tokio::test]
async fn without_an_older_release_the_upgrade_is_skipped_and_the_head_installed() {
    let mut w = world("typed", "install,upgrade");
    w.execute().await.unwrap();
    assert_eq!(w.job.base, None);
    assert_eq!(w.tier("install").verdict, Verdict::Pass);
    let up = w.tier("upgrade");
    assert_eq!(up.verdict, Verdict::Skipped);
    assert!(
        up.checks[0]
            .detail
            .contains("no release older than the head"),
        "{up:#?}"
    );
    let deploys = w.deploys();
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    assert!(deploys[0].ends_with(" --chaos"), "{deploys:?}");
}
