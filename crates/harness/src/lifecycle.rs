//! One run: deploy once, carry the deployment through the requested tiers, report, tear down.
//!
//! Order (docs/tiers.md): with `upgrade` requested the fresh deploy is the *base* release and
//! the install tier checks it; the upgrade tier redeploys the head in place with `--chaos`;
//! backup and restore then run on the head. Without `upgrade` the fresh deploy is the head.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::abra::{Abra, AbraError};
use crate::checks::{self, Convergence, Expected, StackSnapshot};
use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::names;
use crate::overlay::{self, CheckKind, Overlay};
use crate::recipe::{self, Checkout};
use crate::redact::Redactor;
use crate::report::{CheckResult, RunReport, TeardownReport, TierReport, Verdict};
use crate::teardown::{self, RunDir};
use crate::wait::{Probe, WaitError, wait_for};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Install,
    Upgrade,
    Backup,
    Restore,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Install,
        Stage::Upgrade,
        Stage::Backup,
        Stage::Restore,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Install => "install",
            Stage::Upgrade => "upgrade",
            Stage::Backup => "backup",
            Stage::Restore => "restore",
        }
    }

    /// Parses a comma-separated list; order and duplicates do not matter (tiers always run in
    /// lifecycle order).
    pub fn parse_list(s: &str) -> Result<Vec<Stage>, String> {
        let mut out = Vec::new();
        for part in s.split([',', ' ']).map(str::trim).filter(|p| !p.is_empty()) {
            let stage = Stage::ALL
                .into_iter()
                .find(|st| st.name() == part)
                .ok_or_else(|| {
                    format!("unknown stage `{part}`: use install, upgrade, backup, restore")
                })?;
            if !out.contains(&stage) {
                out.push(stage);
            }
        }
        if out.is_empty() {
            return Err("no stages given: use install, upgrade, backup, restore".into());
        }
        out.sort();
        Ok(out)
    }
}

/// Everything `cc-ci run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub recipe_source: String,
    pub git_ref: Option<String>,
    pub stages: Vec<Stage>,
    pub report_dir: PathBuf,
    pub abra: Option<String>,
    pub config: Config,
    pub keep_on_failure: bool,
    pub skip_generic: bool,
    pub base: Option<String>,
    /// The folder of overlays shipped with cc-ci (searched before the operator's).
    pub shipped_overlays: Option<PathBuf>,
}

/// Exit codes of `cc-ci run`.
pub mod exit {
    pub const PASS: i32 = 0;
    pub const FAIL: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const INFRA: i32 = 3;
}

#[derive(Debug)]
pub struct RunOutcome {
    pub exit_code: i32,
    pub report: Option<RunReport>,
    /// Why the run could not start (bad input or infrastructure), for stderr.
    pub message: Option<String>,
}

impl RunOutcome {
    fn refused(code: i32, message: impl Into<String>) -> Self {
        Self {
            exit_code: code,
            report: None,
            message: Some(message.into()),
        }
    }
}

/// Where per-run state lives: config, then `CC_CI_WORK_DIR`, then systemd's state directory,
/// then the user's cache.
pub fn work_dir(config: &Config) -> PathBuf {
    if let Some(d) = &config.harness.work_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("CC_CI_WORK_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several, colon-separated; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first).join("work");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache/cc-ci")
}

/// Progress lines on stderr: one per step, with the time since the run started.
#[derive(Clone)]
pub struct Progress {
    start: Instant,
    redactor: Redactor,
    quiet: bool,
}

impl Progress {
    pub fn new(redactor: Redactor) -> Self {
        Self {
            start: Instant::now(),
            redactor,
            quiet: false,
        }
    }
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }
    pub fn step(&self, msg: &str) {
        if !self.quiet {
            eprintln!(
                "[{:>7.1}s] {}",
                self.start.elapsed().as_secs_f64(),
                self.redactor.redact(msg)
            );
        }
    }
}

/// Runs the whole job. `cancel` resolving (SIGINT/SIGTERM) stops the current step; teardown
/// still runs.
pub async fn run<C>(opts: RunOptions, cancel: C) -> RunOutcome
where
    C: std::future::Future<Output = &'static str>,
{
    let redactor = Redactor::new();
    let progress = Progress::new(redactor.clone());
    // --- Inputs: everything checked before anything is created (exit 2 changes nothing).
    let recipe = names::recipe_name_from_source(&opts.recipe_source);
    if let Err(e) = names::validate_recipe_name(&recipe) {
        return RunOutcome::refused(exit::BAD_INPUT, e.to_string());
    }
    if let Err(e) = recipe::validate_source(&opts.recipe_source) {
        return RunOutcome::refused(exit::BAD_INPUT, e.to_string());
    }
    let git_ref = opts.git_ref.clone().unwrap_or_else(|| "HEAD".into());
    if let Err(e) = names::validate_ref(&git_ref) {
        return RunOutcome::refused(exit::BAD_INPUT, e.to_string());
    }
    if let Some(b) = &opts.base
        && let Err(e) = names::validate_ref(b)
    {
        return RunOutcome::refused(exit::BAD_INPUT, format!("--base: {e}"));
    }
    // --- Infrastructure.
    let engine = match Engine::from_env() {
        Ok(e) => e,
        Err(e) => return RunOutcome::refused(exit::INFRA, e.to_string()),
    };
    match engine.check_swarm().await {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => return RunOutcome::refused(exit::INFRA, msg),
        Err(e) => return RunOutcome::refused(exit::INFRA, e.to_string()),
    }
    let abra_bin = match crate::abra::resolve_binary(
        opts.abra.as_deref(),
        opts.config.harness.abra.as_deref(),
    ) {
        Ok(b) => b,
        Err(e) => return RunOutcome::refused(exit::INFRA, e.to_string()),
    };
    if let Err(e) = std::fs::create_dir_all(&opts.report_dir) {
        return RunOutcome::refused(
            exit::BAD_INPUT,
            format!(
                "cannot create report dir {}: {e}",
                opts.report_dir.display()
            ),
        );
    }
    let h = &opts.config.harness;
    let domain = names::app_domain(&recipe, &h.domain_suffix, rand::random::<u32>());
    let work = work_dir(&opts.config);
    let run_dir = match RunDir::create(&work, &domain) {
        Ok(d) => d,
        Err(e) => return RunOutcome::refused(exit::INFRA, e.to_string()),
    };
    let abra = Abra::new(
        abra_bin,
        run_dir.abra_dir(),
        Duration::from_secs(h.abra_timeout_secs),
        redactor.clone(),
    )
    .with_log(opts.report_dir.join("abra.log"));
    progress.step(&format!(
        "run of {recipe} at {git_ref} as {domain} (work dir {})",
        run_dir.path.display()
    ));

    let mut job = Job {
        stack: names::stack_name(&domain),
        domain: domain.clone(),
        recipe: recipe.clone(),
        opts: opts.clone(),
        engine: engine.clone(),
        abra,
        progress: progress.clone(),
        redactor: redactor.clone(),
        head_sha: String::new(),
        base: None,
        deploy_count: 0,
        tiers: Vec::new(),
        notes: Vec::new(),
        canaries: BTreeMap::new(),
        overlay: Overlay::default(),
        backed_up: BTreeMap::new(),
    };

    let outcome = tokio::select! {
        r = job.execute() => r,
        sig = cancel => {
            progress.step(&format!("{sig} received: stopping and tearing down"));
            Err(Stop::Infra(format!("interrupted by {sig}")))
        }
    };
    let refusal = match outcome {
        Ok(()) => None,
        Err(Stop::BadInput(msg)) => Some((exit::BAD_INPUT, msg)),
        Err(Stop::Infra(msg)) => {
            job.notes.push(format!("infrastructure error: {msg}"));
            if job.tiers.len() < job.opts.stages.len()
                || job.tiers.iter().all(|t| t.verdict != Verdict::Error)
            {
                job.tiers.push(TierReport {
                    name: next_tier_name(&job),
                    verdict: Verdict::Error,
                    duration_ms: 0,
                    checks: vec![CheckResult::generic("infrastructure", Verdict::Error, &msg)],
                });
            }
            None
        }
    };

    // --- Teardown: always, unless a failed deployment is kept on request.
    let provisional = RunReport::overall(&job.tiers, &TeardownReport::default());
    let failed = refusal.is_none() && provisional != Verdict::Pass;
    if failed {
        job.write_diagnostics().await;
    }
    let teardown = if failed && opts.keep_on_failure {
        progress.step(&format!(
            "keeping the failed deployment; remove it later with: cc-ci teardown {domain}"
        ));
        std::mem::forget(run_dir);
        TeardownReport {
            verdict: None,
            leftovers: vec![],
        }
    } else {
        progress.step("teardown");
        job.teardown(run_dir).await
    };
    if let Some((code, msg)) = refusal {
        return RunOutcome {
            exit_code: code,
            report: None,
            message: Some(msg),
        };
    }
    let report = job.report(teardown);
    write_reports(&opts.report_dir, &report, &redactor);
    print_table(&report);
    let exit_code = match report.verdict {
        Verdict::Pass | Verdict::Skipped => exit::PASS,
        Verdict::Fail => exit::FAIL,
        Verdict::Error => {
            if report
                .tiers
                .iter()
                .any(|t| t.checks.iter().any(|c| c.name == "infrastructure"))
            {
                exit::INFRA
            } else {
                exit::FAIL
            }
        }
    };
    RunOutcome {
        exit_code,
        report: Some(report),
        message: None,
    }
}

fn next_tier_name(job: &Job) -> String {
    job.opts
        .stages
        .iter()
        .find(|s| !job.tiers.iter().any(|t| t.name == s.name()))
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "run".into())
}

/// Why a run stopped early.
enum Stop {
    /// Exit 2: nothing was deployed.
    BadInput(String),
    /// Exit 3: the engine, abra or git went away.
    Infra(String),
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Infra(e.to_string())
    }
}

struct Job {
    stack: String,
    domain: String,
    recipe: String,
    opts: RunOptions,
    engine: Engine,
    abra: Abra,
    progress: Progress,
    redactor: Redactor,
    head_sha: String,
    base: Option<String>,
    deploy_count: u32,
    tiers: Vec<TierReport>,
    notes: Vec<String>,
    /// Canary values per volume (full volume name → value) last written.
    canaries: BTreeMap<String, String>,
    overlay: Overlay,
    /// Canary values as they were at backup time.
    backed_up: BTreeMap<String, String>,
}

/// The canary file written into every named volume.
const CANARY_FILE: &str = ".cc-ci-canary";

impl Job {
    fn wants(&self, s: Stage) -> bool {
        self.opts.stages.contains(&s)
    }

    fn generic_enabled(&self) -> bool {
        !(self.opts.skip_generic || self.opts.config.harness.skip_generic.contains(&self.recipe))
    }

    async fn execute(&mut self) -> Result<(), Stop> {
        // --- The recipe: clone, resolve, validate (bad input → exit 2 before any deploy).
        let recipes_dir = self.abra.abra_dir().join("recipes");
        std::fs::create_dir_all(&recipes_dir)
            .map_err(|e| Stop::Infra(format!("cannot create {}: {e}", recipes_dir.display())))?;
        let checkout_dir = recipes_dir.join(&self.recipe);
        let checkout = Checkout::clone_from(&self.opts.recipe_source, &checkout_dir)
            .await
            .map_err(|e| Stop::BadInput(format!("cannot clone the recipe: {e}")))?;
        let git_ref = self.opts.git_ref.clone().unwrap_or_else(|| "HEAD".into());
        self.head_sha = checkout
            .resolve(&git_ref)
            .await
            .map_err(|e| Stop::BadInput(e.to_string()))?;
        checkout
            .checkout(&self.head_sha)
            .await
            .map_err(|e| Stop::BadInput(e.to_string()))?;
        recipe::validate_recipe_tree(&checkout).map_err(|e| {
            Stop::BadInput(format!(
                "the recipe at {} is broken: {e}",
                short(&self.head_sha)
            ))
        })?;
        self.load_overlay(&checkout)?;
        self.progress.step(&format!(
            "recipe {} head {}",
            self.recipe,
            short(&self.head_sha)
        ));

        // --- Plan the single deploy.
        if self.wants(Stage::Upgrade) {
            self.base = match &self.opts.base {
                Some(b) => {
                    let tags = checkout
                        .tags()
                        .await
                        .map_err(|e| Stop::Infra(e.to_string()))?;
                    if !tags.iter().any(|(t, _)| t == b) {
                        return Err(Stop::BadInput(format!(
                            "--base {b}: no such tag in the recipe repository"
                        )));
                    }
                    Some(b.clone())
                }
                None => checkout
                    .base_release(&self.head_sha)
                    .await
                    .map_err(|e| Stop::Infra(e.to_string()))?,
            };
        }
        for s in &self.overlay.skip_tiers {
            self.notes
                .push(format!("the overlay skips the {} tier", s.name()));
        }
        if !self.generic_enabled() {
            self.notes
                .push("generic checks are turned off for this run (explicit opt-out)".into());
        }

        // --- abra app.
        self.abra.server_add_local().await.map_err(abra_infra)?;
        let server = self.opts.config.harness.server.clone();
        if let Err(e) = self.abra.app_new(&self.recipe, &server, &self.domain).await {
            return Err(abra_infra(e));
        }

        // --- Install tier (on the base when upgrading, else on the head).
        let install_start = Instant::now();
        let mut install_checks = Vec::new();
        let target = match &self.base {
            Some(b) => {
                checkout
                    .checkout(b)
                    .await
                    .map_err(|e| Stop::Infra(e.to_string()))?;
                Target::Release(b.clone())
            }
            None => {
                checkout
                    .checkout(&self.head_sha)
                    .await
                    .map_err(|e| Stop::Infra(e.to_string()))?;
                Target::Head
            }
        };
        self.progress.step(&format!(
            "install: deploying {}",
            match &target {
                Target::Release(b) => format!("base release {b}"),
                Target::Head => format!("head {}", short(&self.head_sha)),
            }
        ));
        let installed = self
            .deploy_and_check(&target, "install", &mut install_checks)
            .await?;
        self.overlay_checks(Stage::Install, &mut install_checks)
            .await?;
        self.finish_tier(Stage::Install, install_start, install_checks);
        let install_ok = installed
            && self
                .tiers
                .last()
                .is_some_and(|t| t.verdict == Verdict::Pass);

        // --- Upgrade tier.
        if self.wants(Stage::Upgrade) {
            let start = Instant::now();
            match (&self.base, install_ok) {
                _ if self.overlay.skip_tiers.contains(&Stage::Upgrade) => self.tiers.push(
                    TierReport::skipped("upgrade", "skipped by the recipe's overlay"),
                ),
                (None, _) => self.tiers.push(TierReport::skipped(
                    "upgrade",
                    "no release older than the head exists, so there is nothing to upgrade from",
                )),
                (Some(b), false) => {
                    let b = b.clone();
                    self.tiers.push(TierReport {
                        name: "upgrade".into(),
                        verdict: Verdict::Error,
                        duration_ms: 0,
                        checks: vec![CheckResult::generic(
                            "base-installs",
                            Verdict::Error,
                            format!("the base release {b} did not install (see the install tier), so the upgrade could not be tested"),
                        )],
                    })
                }
                (Some(_), true) => {
                    let mut cks = Vec::new();
                    self.upgrade(&checkout, &mut cks).await?;
                    self.finish_tier(Stage::Upgrade, start, cks);
                }
            }
        }
        let healthy = self
            .tiers
            .iter()
            .all(|t| matches!(t.verdict, Verdict::Pass | Verdict::Skipped));

        // --- Backup and restore, on the head.
        for stage in [Stage::Backup, Stage::Restore] {
            if !self.wants(stage) {
                continue;
            }
            if self.overlay.skip_tiers.contains(&stage) {
                self.tiers.push(TierReport::skipped(
                    stage.name(),
                    "skipped by the recipe's overlay",
                ));
                continue;
            }
            if !healthy {
                self.tiers.push(TierReport::skipped(
                    stage.name(),
                    "an earlier tier did not pass, so the deployment is not in a state worth backing up",
                ));
                continue;
            }
            if stage == Stage::Restore
                && !self
                    .tiers
                    .iter()
                    .any(|t| t.name == "backup" && t.verdict == Verdict::Pass)
            {
                let why = if self.wants(Stage::Backup) {
                    "the backup tier did not pass, so there is nothing to restore"
                } else {
                    "restore needs the backup tier: request both (--stages backup,restore)"
                };
                self.tiers.push(TierReport::skipped("restore", why));
                continue;
            }
            let start = Instant::now();
            let mut cks = Vec::new();
            match stage {
                Stage::Backup => self.backup(&mut cks).await?,
                _ => self.restore(&mut cks).await?,
            }
            self.overlay_checks(stage, &mut cks).await?;
            self.finish_tier(stage, start, cks);
        }
        Ok(())
    }

    fn load_overlay(&mut self, checkout: &Checkout) -> Result<(), Stop> {
        let h = &self.opts.config.harness;
        let mut dirs: Vec<PathBuf> = self.opts.shipped_overlays.iter().cloned().collect();
        dirs.extend(h.overlay_dirs.iter().cloned());
        let local = checkout.dir.join(".cc-ci/overlay.toml");
        let local_exists = local.is_file() || checkout.dir.join(".cc-ci").is_dir();
        let allowed = h.repo_local_allowlist.contains(&self.recipe);
        let repo_local = if local_exists && allowed {
            self.notes.push(
                "repo-local tests (.cc-ci/) ran: the recipe is on the repo-local allowlist".into(),
            );
            Some(local.as_path())
        } else {
            if local_exists {
                self.notes.push(
                    "repo-local tests (.cc-ci/) were ignored: the recipe is not on the operator's repo-local allowlist".into(),
                );
            }
            None
        };
        self.overlay = overlay::load(&self.recipe, &dirs, repo_local.filter(|p| p.is_file()))
            .map_err(|e| Stop::BadInput(format!("overlay error: {e}")))?;
        Ok(())
    }

    fn finish_tier(&mut self, stage: Stage, start: Instant, checks: Vec<CheckResult>) {
        let verdict = TierReport::verdict_of(&checks);
        let t = TierReport {
            name: stage.name().into(),
            verdict,
            duration_ms: start.elapsed().as_millis() as u64,
            checks,
        };
        self.progress
            .step(&format!("{}: {}", t.name, verdict.as_str()));
        self.tiers.push(t);
        let partial = self.report(TeardownReport::default());
        write_json(
            &self.opts.report_dir.join("progress.json"),
            &partial,
            &self.redactor,
        );
    }

    /// Deploys `target` (counting the deploy) and runs the generic deploy checks: converged,
    /// stable, labelled. Returns whether the deployment converged.
    async fn deploy_and_check(
        &mut self,
        target: &Target,
        _tier: &str,
        out: &mut Vec<CheckResult>,
    ) -> Result<bool, Stop> {
        let is_fresh = self.deploy_count == 0;
        let before: BTreeSet<String> = self
            .engine
            .snapshot(&self.stack)
            .await?
            .services
            .iter()
            .flat_map(|s| s.tasks.iter().map(|t| t.id.clone()))
            .collect();
        let deploy = async {
            match target {
                Target::Release(b) => self.abra.deploy(&self.domain, Some(b), false).await,
                Target::Head => self.abra.deploy(&self.domain, None, true).await,
            }
        };
        // abra waits for convergence up to its own timeout; a stack that is failing for certain
        // (tasks failing again and again) is given up on as soon as that is clear.
        let deploy = tokio::select! {
            r = deploy => Ok(r),
            why = self.watch_for_failure(&before) => Err(why),
        };
        if is_fresh {
            self.deploy_count += 1;
        }
        let deploy = match deploy {
            Ok(r) => r,
            Err(why) => {
                let health = self.health_hint().await;
                out.push(CheckResult::generic(
                    "deploy",
                    Verdict::Fail,
                    format!("the deployment is failing, abra was stopped: {why}{health}"),
                ));
                return Ok(false);
            }
        };
        let deploy_err = match deploy {
            Ok(o) => {
                out.push(CheckResult::generic(
                    "deploy",
                    Verdict::Pass,
                    format!("abra {} ({:.1} s)", o.args, o.duration.as_secs_f64()),
                ));
                None
            }
            Err(e @ (AbraError::NotFound(_) | AbraError::Spawn { .. })) => {
                return Err(abra_infra(e));
            }
            Err(e) => Some(e),
        };
        self.progress.step("waiting for convergence");
        let converge = if let Some(e) = &deploy_err {
            // abra gave up; one look tells which service is the cause.
            let snap = self.engine.snapshot(&self.stack).await?;
            let why = match checks::convergence(&snap) {
                Convergence::Converged => "the stack looks converged now".to_string(),
                Convergence::Pending(w) | Convergence::Failed(w) => w,
            };
            let why = format!("{why}{}", self.health_hint().await);
            out.push(CheckResult::generic(
                "deploy",
                Verdict::Fail,
                format!(
                    "{}; swarm state: {why}; abra said: {}",
                    first_line(&e.to_string()),
                    tail(e.output(), 6)
                ),
            ));
            Err(why)
        } else {
            self.wait_converged().await
        };
        if !self.generic_enabled() {
            return Ok(converge.is_ok());
        }
        match &converge {
            Ok(()) => out.push(CheckResult::generic(
                "converged",
                Verdict::Pass,
                "every service at its desired replicas, running, healthy, update settled",
            )),
            Err(why) => {
                if deploy_err.is_none() {
                    let health = self.health_hint().await;
                    out.push(CheckResult::generic(
                        "converged",
                        Verdict::Fail,
                        format!("{why}{health}"),
                    ));
                }
                return Ok(false);
            }
        }
        // Stability window: no task may be replaced and none may turn unhealthy.
        let stable = self.stability().await?;
        out.push(match stable {
            Ok(()) => CheckResult::generic(
                "stable",
                Verdict::Pass,
                format!(
                    "no restarts for {} s",
                    self.opts.config.harness.stability_window_secs
                ),
            ),
            Err(v) => CheckResult::generic("stable", Verdict::Fail, v),
        });
        let snap = self.engine.snapshot(&self.stack).await?;
        let expected = match target {
            Target::Release(b) => Expected::Release(b),
            Target::Head => Expected::Commit(&self.head_sha),
        };
        out.push(
            match checks::check_version_labels(&snap, &self.stack, &expected) {
                Ok(d) => CheckResult::generic("version-label", Verdict::Pass, d),
                Err(d) => CheckResult::generic("version-label", Verdict::Fail, d),
            },
        );
        Ok(true)
    }

    /// `; <service>: health unhealthy, last healthcheck exit 1: ...` for the newest task of each
    /// service that has a healthcheck and is not healthy; empty when there is nothing to add.
    async fn health_hint(&self) -> String {
        let Ok(snap) = self.engine.snapshot(&self.stack).await else {
            return String::new();
        };
        let mut out = String::new();
        for s in snap.services.iter().filter(|s| s.has_healthcheck) {
            let Some(t) = s.tasks.iter().rev().find(|t| t.container_id.is_some()) else {
                continue;
            };
            if t.is_running() && t.health == checks::Health::Healthy {
                continue;
            }
            if let Some(cid) = &t.container_id
                && let Ok(Some(h)) = self.engine.health_log(cid).await
            {
                out.push_str(&format!(
                    "; {}: {}",
                    s.short_name,
                    crate::report::excerpt(&h, 300)
                ));
            }
        }
        self.redactor.redact(&out)
    }

    /// Resolves only when the stack is failing for certain, counting only tasks created after
    /// `before` (an upgrade must not be judged by the base's history).
    async fn watch_for_failure(&self, before: &BTreeSet<String>) -> String {
        let interval = Duration::from_millis(self.opts.config.harness.poll_interval_ms);
        loop {
            tokio::time::sleep(interval).await;
            let Ok(mut snap) = self.engine.snapshot(&self.stack).await else {
                continue;
            };
            for s in &mut snap.services {
                s.tasks.retain(|t| !before.contains(&t.id));
            }
            if let Convergence::Failed(why) = checks::convergence(&snap) {
                return why;
            }
        }
    }

    async fn wait_converged(&self) -> Result<(), String> {
        let h = &self.opts.config.harness;
        let r = wait_for(
            &format!("stack {} to converge", self.stack),
            Duration::from_secs(h.converge_timeout_secs),
            Duration::from_millis(h.poll_interval_ms),
            || async {
                let snap = self.engine.snapshot(&self.stack).await?;
                Ok::<_, EngineError>(match checks::convergence(&snap) {
                    Convergence::Converged => Probe::Done(()),
                    Convergence::Pending(w) => Probe::Pending(w),
                    Convergence::Failed(w) => Probe::Failed(w),
                })
            },
        )
        .await;
        r.map_err(|e| match e {
            WaitError::Failed { reason, .. } => reason,
            other => other.to_string(),
        })
    }

    async fn stability(&self) -> Result<Result<(), String>, Stop> {
        let h = &self.opts.config.harness;
        let before = self.engine.snapshot(&self.stack).await?;
        let window = Duration::from_secs(h.stability_window_secs);
        // The window is a wait for a violation that must *not* come: a timeout is the pass.
        let r = wait_for(
            "a restart",
            window,
            Duration::from_millis(h.poll_interval_ms),
            || async {
                let now = self.engine.snapshot(&self.stack).await?;
                let v = checks::stability_violations(&before, &now);
                Ok::<_, EngineError>(if v.is_empty() {
                    Probe::Pending(String::new())
                } else {
                    Probe::Done(v.join("; "))
                })
            },
        )
        .await;
        match r {
            Ok(violation) => Ok(Err(violation)),
            Err(WaitError::TimedOut { .. }) => Ok(Ok(())),
            Err(WaitError::Probe(e)) => Err(e.into()),
            Err(WaitError::Failed { reason, .. }) => Ok(Err(reason)),
        }
    }

    async fn upgrade(
        &mut self,
        checkout: &Checkout,
        out: &mut Vec<CheckResult>,
    ) -> Result<(), Stop> {
        let canaries = self.generic_enabled() && self.overlay.canaries;
        if canaries {
            self.progress
                .step("upgrade: writing canaries into every named volume");
            if let Err(e) = self.write_canaries(None).await? {
                out.push(CheckResult::generic(
                    "data-continuity",
                    Verdict::Error,
                    format!("could not write canaries before the upgrade: {e}"),
                ));
            }
        }
        self.seed_data(out).await?;
        checkout
            .checkout(&self.head_sha)
            .await
            .map_err(|e| Stop::Infra(e.to_string()))?;
        self.progress.step(&format!(
            "upgrade: chaos deploy of head {}",
            short(&self.head_sha)
        ));
        let converged = self.deploy_and_check(&Target::Head, "upgrade", out).await?;
        if converged && self.generic_enabled() {
            let snap = self.engine.snapshot(&self.stack).await?;
            let rolled_back: Vec<String> = snap
                .services
                .iter()
                .filter(|s| s.update_state.as_deref() == Some("rollback_completed"))
                .map(|s| {
                    format!(
                        "service {}: update rolled back ({})",
                        s.short_name, s.update_message
                    )
                })
                .collect();
            out.push(if rolled_back.is_empty() {
                CheckResult::generic("no-rollback", Verdict::Pass, "no service rolled back")
            } else {
                CheckResult::generic("no-rollback", Verdict::Fail, rolled_back.join("; "))
            });
            if canaries && out.iter().all(|c| c.name != "data-continuity") {
                out.push(
                    self.verify_canaries("data-continuity", &self.canaries.clone())
                        .await?,
                );
            }
        }
        if converged {
            self.verify_data(Stage::Upgrade, out).await?;
            self.overlay_checks(Stage::Upgrade, out).await?;
        }
        Ok(())
    }

    async fn backup(&mut self, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
        // A hook in a dying container loses data silently: wait until every update has settled.
        if let Err(why) = self.wait_converged().await {
            out.push(CheckResult::generic(
                "settled",
                Verdict::Fail,
                format!("services did not settle before the backup: {why}"),
            ));
            return Ok(());
        }
        if self.generic_enabled() {
            let snap = self.engine.snapshot(&self.stack).await?;
            let unknown = unknown_backup_volumes(&snap, &self.stack);
            out.push(if unknown.is_empty() {
                CheckResult::generic(
                    "backup-labels",
                    Verdict::Pass,
                    "every backupbot volume label names a volume of the stack",
                )
            } else {
                CheckResult::generic(
                    "backup-labels",
                    Verdict::Fail,
                    format!(
                        "backupbot labels name volumes the stack does not have: {}",
                        unknown.join(", ")
                    ),
                )
            });
        }
        let canaries = self.generic_enabled() && self.overlay.canaries;
        if canaries {
            if let Err(e) = self.write_canaries(Some(true)).await? {
                out.push(CheckResult::generic(
                    "snapshot-content",
                    Verdict::Error,
                    format!("could not write canaries before the backup: {e}"),
                ));
            }
            self.backed_up = self.canaries.clone();
        }
        if !self.wants(Stage::Upgrade) || self.base.is_none() {
            self.seed_data(out).await?;
        }
        self.progress.step("backup: abra app backup create");
        match self.abra.backup_create(&self.domain).await {
            Ok(o) => out.push(CheckResult::generic(
                "backup-create",
                Verdict::Pass,
                tail(&o.output, 1),
            )),
            Err(e @ (AbraError::NotFound(_) | AbraError::Spawn { .. })) => {
                return Err(abra_infra(e));
            }
            Err(e) => {
                out.push(CheckResult::generic(
                    "backup-create",
                    Verdict::Fail,
                    format!("{}: {}", first_line(&e.to_string()), tail(e.output(), 6)),
                ));
                return Ok(());
            }
        }
        if !self.generic_enabled() {
            return Ok(());
        }
        let snapshots = match self.abra.backup_list(&self.domain).await {
            Ok(s) => s,
            Err(e) => {
                out.push(CheckResult::generic(
                    "snapshot-exists",
                    Verdict::Fail,
                    e.to_string(),
                ));
                return Ok(());
            }
        };
        let Some(latest) = snapshots.last() else {
            out.push(CheckResult::generic(
                "snapshot-exists",
                Verdict::Fail,
                "abra reported success but lists no snapshot",
            ));
            return Ok(());
        };
        let files = match self.abra.backup_files(&self.domain, latest).await {
            Ok(f) => f,
            Err(e) => {
                out.push(CheckResult::generic(
                    "snapshot-exists",
                    Verdict::Fail,
                    e.to_string(),
                ));
                return Ok(());
            }
        };
        if files.is_empty() {
            out.push(CheckResult::generic(
                "snapshot-exists",
                Verdict::Fail,
                format!("snapshot {latest} holds no files"),
            ));
            return Ok(());
        }
        out.push(CheckResult::generic(
            "snapshot-exists",
            Verdict::Pass,
            format!("snapshot {latest}: {} files", files.len()),
        ));
        let snap = self.engine.snapshot(&self.stack).await?;
        let selection = backup_selection(&snap, &self.stack);
        let mut problems = Vec::new();
        for (vol, paths) in &selection {
            let short_vol = vol.strip_prefix(&format!("{}_", self.stack)).unwrap_or(vol);
            match paths {
                None => {
                    if !files
                        .iter()
                        .any(|f| f.starts_with(&format!("{short_vol}/")))
                    {
                        problems.push(format!("volume {short_vol} is selected for backup but the snapshot holds nothing of it"));
                    }
                    if canaries
                        && self.backed_up.contains_key(vol)
                        && !files
                            .iter()
                            .any(|f| f == &format!("{short_vol}/{CANARY_FILE}"))
                    {
                        problems.push(format!(
                            "the canary of volume {short_vol} is not in the snapshot"
                        ));
                    }
                }
                Some(paths) => {
                    for p in paths {
                        let p = p.trim_matches('/');
                        if !files.iter().any(|f| {
                            f == &format!("{short_vol}/{p}")
                                || f.starts_with(&format!("{short_vol}/{p}/"))
                        }) {
                            problems.push(format!("path {p} of volume {short_vol} (backupbot label) is not in the snapshot"));
                            continue;
                        }
                        // Non-empty at the source: a pre-hook that dumps nothing is a broken backup.
                        if let Some((container, target)) = mount_of(&snap, vol) {
                            let full = format!("{target}/{p}");
                            let r = self
                                .engine
                                .exec(
                                    &container,
                                    &[
                                        "sh",
                                        "-c",
                                        &format!("find '{full}' -type f -size +0c | head -n 1"),
                                    ],
                                    Duration::from_secs(30),
                                )
                                .await;
                            match r {
                                Ok(o) if !o.stdout.trim().is_empty() => {}
                                Ok(_) => problems.push(format!("path {p} of volume {short_vol} holds no data (empty or missing at backup time; does the pre-hook dump anything?)")),
                                Err(e) => problems.push(format!("cannot inspect {full}: {e}")),
                            }
                        }
                    }
                }
            }
        }
        out.push(if problems.is_empty() {
            CheckResult::generic(
                "snapshot-content",
                Verdict::Pass,
                format!(
                    "holds what the backupbot labels select ({} volumes)",
                    selection.len()
                ),
            )
        } else {
            CheckResult::generic("snapshot-content", Verdict::Fail, problems.join("; "))
        });
        Ok(())
    }

    async fn restore(&mut self, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
        let canaries =
            self.generic_enabled() && self.overlay.canaries && !self.backed_up.is_empty();
        if canaries {
            // Change what was backed up, so a restore that does nothing cannot pass.
            if let Err(e) = self.write_canaries(Some(true)).await? {
                out.push(CheckResult::generic(
                    "data-restored",
                    Verdict::Error,
                    format!("could not change canaries before the restore: {e}"),
                ));
                return Ok(());
            }
        }
        self.mutate_data(out).await?;
        self.progress.step("restore: abra app restore");
        match self.abra.restore(&self.domain).await {
            Ok(_) => out.push(CheckResult::generic(
                "restore",
                Verdict::Pass,
                "abra app restore succeeded",
            )),
            Err(e @ (AbraError::NotFound(_) | AbraError::Spawn { .. })) => {
                return Err(abra_infra(e));
            }
            Err(e) => {
                out.push(CheckResult::generic(
                    "restore",
                    Verdict::Fail,
                    format!("{}: {}", first_line(&e.to_string()), tail(e.output(), 6)),
                ));
                return Ok(());
            }
        }
        if self.generic_enabled() {
            match self.wait_converged().await {
                Ok(()) => out.push(CheckResult::generic(
                    "converged",
                    Verdict::Pass,
                    "healthy after the restore",
                )),
                Err(why) => {
                    out.push(CheckResult::generic("converged", Verdict::Fail, why));
                    return Ok(());
                }
            }
            if canaries {
                out.push(
                    self.verify_canaries("data-restored", &self.backed_up.clone())
                        .await?,
                );
            }
        }
        self.verify_data(Stage::Restore, out).await?;
        Ok(())
    }

    /// Writes a fresh random canary into every named volume of the stack (only into volumes
    /// backed up whole when `backed_up_only`), remembering the values.
    async fn write_canaries(
        &mut self,
        backed_up_only: Option<bool>,
    ) -> Result<Result<(), String>, Stop> {
        let snap = self.engine.snapshot(&self.stack).await?;
        let targets: Vec<(String, String, String)> = if backed_up_only.is_some() {
            backup_selection(&snap, &self.stack)
                .into_iter()
                .filter(|(_, paths)| paths.is_none())
                .filter_map(|(vol, _)| mount_of(&snap, &vol).map(|(c, t)| (vol, c, t)))
                .collect()
        } else {
            volume_mounts(&snap)
        };
        self.canaries.clear();
        for (vol, container, target) in targets {
            let value = format!("cc-ci-{:016x}", rand::random::<u64>());
            let cmd = format!("printf %s '{value}' > '{target}/{CANARY_FILE}'");
            match self
                .engine
                .exec(&container, &["sh", "-c", &cmd], Duration::from_secs(30))
                .await
            {
                Ok(o) if o.exit_code == 0 => {
                    self.canaries.insert(vol, value);
                }
                Ok(o) => {
                    return Ok(Err(format!(
                        "volume {vol}: writing the canary exited {}: {}",
                        o.exit_code,
                        o.stderr.trim()
                    )));
                }
                Err(e) => return Ok(Err(format!("volume {vol}: {e}"))),
            }
        }
        Ok(Ok(()))
    }

    async fn verify_canaries(
        &self,
        name: &str,
        expected: &BTreeMap<String, String>,
    ) -> Result<CheckResult, Stop> {
        if expected.is_empty() {
            return Ok(CheckResult::generic(
                name,
                Verdict::Skipped,
                "the stack has no named volumes to check",
            ));
        }
        let snap = self.engine.snapshot(&self.stack).await?;
        let mut problems = Vec::new();
        for (vol, value) in expected {
            let short_vol = vol.strip_prefix(&format!("{}_", self.stack)).unwrap_or(vol);
            let Some((container, target)) = mount_of(&snap, vol) else {
                problems.push(format!(
                    "volume {short_vol} is no longer mounted by any running service"
                ));
                continue;
            };
            let r = self
                .engine
                .exec(
                    &container,
                    &["sh", "-c", &format!("cat '{target}/{CANARY_FILE}'")],
                    Duration::from_secs(30),
                )
                .await;
            match r {
                Ok(o) if o.exit_code == 0 && o.stdout == *value => {}
                Ok(o) if o.exit_code == 0 => problems.push(format!(
                    "volume {short_vol}: canary changed (expected {value}, found {})",
                    o.stdout.trim()
                )),
                Ok(_) => problems.push(format!(
                    "volume {short_vol}: the canary file is gone: data was lost"
                )),
                Err(e) => problems.push(format!("volume {short_vol}: {e}")),
            }
        }
        Ok(if problems.is_empty() {
            CheckResult::generic(
                name,
                Verdict::Pass,
                format!("{} volume canaries read back unchanged", expected.len()),
            )
        } else {
            CheckResult::generic(name, Verdict::Fail, problems.join("; "))
        })
    }

    async fn container_of(&self, service: &str) -> Result<Result<String, String>, Stop> {
        let snap = self.engine.snapshot(&self.stack).await?;
        let Some(s) = snap.service(service) else {
            return Ok(Err(format!("no service `{service}` in the stack")));
        };
        Ok(s.running_tasks()
            .find_map(|t| t.container_id.clone())
            .ok_or_else(|| format!("service `{service}` has no running container")))
    }

    async fn exec_in(
        &self,
        service: &str,
        cmd: &[String],
    ) -> Result<Result<crate::engine::ExecOutput, String>, Stop> {
        let container = match self.container_of(service).await? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        match self
            .engine
            .exec(&container, &args, Duration::from_secs(120))
            .await
        {
            Ok(o) => Ok(Ok(o)),
            Err(e) if e.is_unreachable() => Err(e.into()),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    async fn seed_data(&self, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
        for (source, d) in self.overlay.data.clone() {
            if let Err(e) = self.exec_in(&d.service, &d.seed).await?.and_then(|o| {
                if o.exit_code == 0 {
                    Ok(())
                } else {
                    Err(format!("exit {}: {}", o.exit_code, o.stderr.trim()))
                }
            }) {
                out.push(CheckResult::new(
                    format!("data:{}:seed", d.name),
                    source,
                    Verdict::Error,
                    self.redactor.redact(&e),
                ));
            }
        }
        Ok(())
    }

    async fn mutate_data(&self, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
        for (source, d) in self.overlay.data.clone() {
            let Some(m) = &d.mutate else { continue };
            if let Err(e) = self.exec_in(&d.service, m).await?.and_then(|o| {
                if o.exit_code == 0 {
                    Ok(())
                } else {
                    Err(format!("exit {}: {}", o.exit_code, o.stderr.trim()))
                }
            }) {
                out.push(CheckResult::new(
                    format!("data:{}:mutate", d.name),
                    source,
                    Verdict::Error,
                    self.redactor.redact(&e),
                ));
            }
        }
        Ok(())
    }

    async fn verify_data(&self, stage: Stage, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
        for (source, d) in self.overlay.data.clone() {
            let name = format!("data:{}", d.name);
            let r = self.exec_in(&d.service, &d.verify).await?;
            out.push(match r {
                Ok(o) if o.exit_code == 0 && o.stdout.trim() == d.expect.trim() => {
                    CheckResult::new(
                        name,
                        source,
                        Verdict::Pass,
                        format!("verified after {}", stage.name()),
                    )
                }
                Ok(o) => CheckResult::new(
                    name,
                    source,
                    Verdict::Fail,
                    self.redactor.redact(&format!(
                        "after {}: expected `{}`, got `{}` (exit {})",
                        stage.name(),
                        d.expect,
                        crate::report::excerpt(o.stdout.trim(), 200),
                        o.exit_code
                    )),
                ),
                Err(e) => CheckResult::new(name, source, Verdict::Fail, self.redactor.redact(&e)),
            });
        }
        Ok(())
    }

    async fn overlay_checks(&self, stage: Stage, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
        for (source, c) in self.overlay.checks.clone() {
            if !c.tiers.contains(&stage) {
                continue;
            }
            let (cmd, judge): (Vec<String>, Judge) = match &c.kind {
                // `overlay::load` inlines scripts; one that reaches here was never loaded.
                CheckKind::Script { script, .. } => {
                    out.push(CheckResult::new(
                        &c.name,
                        source,
                        Verdict::Error,
                        format!("script `{script}` was not loaded from its overlay folder"),
                    ));
                    continue;
                }
                CheckKind::Http {
                    port,
                    path,
                    status,
                    body_contains,
                } => {
                    let url = format!("http://127.0.0.1:{port}{path}");
                    // Neither `-q` nor `-T`: Debian's static busybox wget crashes when either is combined with
                    // `-S`. The exec itself has a deadline.
                    let (status, body) = (*status, body_contains.clone());
                    (
                        vec!["wget".into(), "-S".into(), "-O-".into(), url],
                        Box::new(move |o| {
                            overlay::judge_http(
                                status,
                                body.as_deref(),
                                o.exit_code,
                                &o.stdout,
                                &o.stderr,
                            )
                        }),
                    )
                }
                CheckKind::Exec {
                    command,
                    exit_code,
                    stdout_contains,
                } => {
                    let (code, needle) = (*exit_code, stdout_contains.clone());
                    (
                        command.clone(),
                        Box::new(move |o| {
                            overlay::judge_exec(
                                code,
                                needle.as_deref(),
                                o.exit_code,
                                &o.stdout,
                                &o.stderr,
                            )
                        }),
                    )
                }
            };
            let r = self.exec_in(&c.service, &cmd).await?;
            out.push(match r.and_then(|o| judge(&o)) {
                Ok(d) => CheckResult::new(&c.name, source, Verdict::Pass, self.redactor.redact(&d)),
                Err(d) => {
                    CheckResult::new(&c.name, source, Verdict::Fail, self.redactor.redact(&d))
                }
            });
        }
        Ok(())
    }

    async fn write_diagnostics(&self) {
        let dir = self.opts.report_dir.join("diagnostics");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let Ok(snap) = self.engine.snapshot(&self.stack).await else {
            return;
        };
        let mut tasks = String::new();
        for s in &snap.services {
            tasks.push_str(&format!(
                "service {} (replicas {:?}, update {:?} {})\n",
                s.name, s.desired_replicas, s.update_state, s.update_message
            ));
            for t in &s.tasks {
                tasks.push_str(&format!(
                    "  task {} slot {:?} desired {} state {} health {:?} exit {:?} err {} msg {}\n",
                    t.id, t.slot, t.desired_state, t.state, t.health, t.exit_code, t.err, t.message
                ));
            }
            if let Ok(logs) = self.engine.service_logs(&s.id, 200).await {
                let _ = std::fs::write(
                    dir.join(format!("{}.log", s.short_name)),
                    self.redactor.redact(&logs),
                );
            }
        }
        let _ = std::fs::write(dir.join("tasks.txt"), self.redactor.redact(&tasks));
    }

    async fn teardown(&mut self, run_dir: RunDir) -> TeardownReport {
        // abra first (it may clean more than the engine knows about), then the engine makes sure.
        let _ = self.abra.undeploy(&self.domain).await;
        let timeout = Duration::from_secs(self.opts.config.harness.converge_timeout_secs.max(60));
        let result = teardown::teardown_stack(&self.engine, &self.stack, timeout).await;
        let report = match result {
            Ok(left) if left.is_empty() => TeardownReport {
                verdict: Some(Verdict::Pass),
                leftovers: vec![],
            },
            Ok(left) => TeardownReport {
                verdict: Some(Verdict::Error),
                leftovers: left,
            },
            Err(e) => TeardownReport {
                verdict: Some(Verdict::Error),
                leftovers: vec![format!(
                    "teardown failed: {e} (run `cc-ci gc` once the engine is back)"
                )],
            },
        };
        if report.leftovers.is_empty() {
            let path = run_dir.path.clone();
            drop(run_dir);
            let _ = std::fs::remove_dir_all(&path);
        }
        self.progress.step(&format!(
            "teardown: {}",
            if report.leftovers.is_empty() {
                "nothing left".to_string()
            } else {
                format!("left {}", report.leftovers.join(", "))
            }
        ));
        report
    }

    fn report(&self, teardown: TeardownReport) -> RunReport {
        RunReport {
            recipe: self.recipe.clone(),
            git_ref: self.opts.git_ref.clone().unwrap_or_else(|| "HEAD".into()),
            head_sha: self.head_sha.clone(),
            base_version: self.base.clone(),
            app_domain: self.domain.clone(),
            verdict: RunReport::overall(&self.tiers, &teardown),
            deploy_count: self.deploy_count,
            tiers: self.tiers.clone(),
            teardown,
            notes: self.notes.clone(),
        }
    }
}

/// Judges the output of an overlay check's command.
type Judge = Box<dyn Fn(&crate::engine::ExecOutput) -> Result<String, String>>;

enum Target {
    Release(String),
    Head,
}

fn abra_infra(e: AbraError) -> Stop {
    Stop::Infra(e.to_string())
}

/// (full volume name, container id, mount target) for every named volume mounted by a running task.
fn volume_mounts(snap: &StackSnapshot) -> Vec<(String, String, String)> {
    let mut seen = BTreeMap::new();
    for s in &snap.services {
        let Some(container) = s.running_tasks().find_map(|t| t.container_id.clone()) else {
            continue;
        };
        for m in s.volume_mounts() {
            seen.entry(m.source.clone())
                .or_insert((container.clone(), m.target.clone()));
        }
    }
    seen.into_iter().map(|(v, (c, t))| (v, c, t)).collect()
}

fn mount_of(snap: &StackSnapshot, volume: &str) -> Option<(String, String)> {
    volume_mounts(snap)
        .into_iter()
        .find(|(v, _, _)| v == volume)
        .map(|(_, c, t)| (c, t))
}

/// Volumes backup-bot-two would back up (reference: "Backups"): every named volume of the stack
/// unless `backupbot.backup.volumes.<vol>=false`, limited to `...<vol>.path` paths when set.
/// Empty when no service enables backups.
pub fn backup_selection(
    snap: &StackSnapshot,
    stack: &str,
) -> BTreeMap<String, Option<Vec<String>>> {
    let labels: BTreeMap<&str, &str> = snap
        .services
        .iter()
        .flat_map(|s| s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    if labels.get("backupbot.backup") != Some(&"true") {
        return BTreeMap::new();
    }
    let mut out = BTreeMap::new();
    for s in &snap.services {
        for m in s.volume_mounts() {
            let short_vol = m
                .source
                .strip_prefix(&format!("{stack}_"))
                .unwrap_or(&m.source);
            if labels.get(format!("backupbot.backup.volumes.{short_vol}").as_str())
                == Some(&"false")
            {
                continue;
            }
            let paths = labels
                .get(format!("backupbot.backup.volumes.{short_vol}.path").as_str())
                .map(|p| {
                    p.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                });
            out.insert(m.source.clone(), paths);
        }
    }
    out
}

/// Volumes named by `backupbot.backup.volumes.<vol>[.path]` labels that no service of the stack mounts.
pub fn unknown_backup_volumes(snap: &StackSnapshot, stack: &str) -> Vec<String> {
    let mounted: std::collections::BTreeSet<String> = snap
        .services
        .iter()
        .flat_map(|s| s.volume_mounts())
        .map(|m| {
            m.source
                .strip_prefix(&format!("{stack}_"))
                .unwrap_or(&m.source)
                .to_string()
        })
        .collect();
    let mut out: Vec<String> = snap
        .services
        .iter()
        .flat_map(|s| s.labels.keys())
        .filter_map(|k| k.strip_prefix("backupbot.backup.volumes."))
        .map(|rest| rest.strip_suffix(".path").unwrap_or(rest).to_string())
        .filter(|v| !mounted.contains(v))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn write_json(path: &Path, report: &RunReport, redactor: &Redactor) {
    if let Ok(text) = serde_json::to_string_pretty(report) {
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, redactor.redact(&text)).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

fn write_reports(dir: &Path, report: &RunReport, redactor: &Redactor) {
    write_json(&dir.join("run.json"), report, redactor);
    let _ = std::fs::write(
        dir.join("summary.md"),
        redactor.redact(&report.summary_markdown(None)),
    );
    let _ = std::fs::write(dir.join("junit.xml"), redactor.redact(&report.junit_xml()));
    let _ = std::fs::remove_file(dir.join("progress.json"));
}

fn print_table(report: &RunReport) {
    eprintln!("\n{:<10} {:<8} {:>9}", "tier", "verdict", "duration");
    for t in &report.tiers {
        eprintln!(
            "{:<10} {:<8} {:>8.1}s",
            t.name,
            t.verdict.as_str(),
            t.duration_ms as f64 / 1000.0
        );
        for c in t
            .checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail | Verdict::Error))
        {
            eprintln!("  ✗ {}: {}", c.name, crate::report::excerpt(&c.detail, 300));
        }
    }
    if let Some(v) = report.teardown.verdict {
        eprintln!("{:<10} {:<8}", "teardown", v.as_str());
    }
    eprintln!(
        "verdict: {} (deploys: {})",
        report.verdict.as_str(),
        report.deploy_count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::{service, task};
    use crate::checks::{Health, MountInfo};

    #[test]
    fn stages_parse_in_lifecycle_order() {
        assert_eq!(
            Stage::parse_list("restore,install").unwrap(),
            vec![Stage::Install, Stage::Restore]
        );
        assert_eq!(
            Stage::parse_list("install install").unwrap(),
            vec![Stage::Install]
        );
        assert!(Stage::parse_list("instal").unwrap_err().contains("instal"));
        assert!(Stage::parse_list("").is_err());
    }

    #[test]
    fn backup_selection_follows_backupbot_labels() {
        let mut app = service("app", vec![task("1", "running", Health::Healthy)]);
        app.labels.insert("backupbot.backup".into(), "true".into());
        app.labels
            .insert("backupbot.backup.volumes.cache".into(), "false".into());
        app.labels.insert(
            "backupbot.backup.volumes.db.path".into(),
            "dump.sql, extra".into(),
        );
        for v in ["data", "cache", "db"] {
            app.mounts.push(MountInfo {
                kind: "volume".into(),
                source: format!("st_{v}"),
                target: format!("/{v}"),
            });
        }
        app.mounts.push(MountInfo {
            kind: "bind".into(),
            source: "/etc".into(),
            target: "/etc".into(),
        });
        let snap = StackSnapshot {
            services: vec![app.clone()],
        };
        let sel = backup_selection(&snap, "st");
        assert_eq!(sel.len(), 2);
        assert_eq!(sel["st_data"], None);
        assert_eq!(
            sel["st_db"],
            Some(vec!["dump.sql".to_string(), "extra".to_string()])
        );
        assert!(unknown_backup_volumes(&snap, "st").is_empty());
        app.labels
            .insert("backupbot.backup.volumes.nope.path".into(), "x".into());
        assert_eq!(
            unknown_backup_volumes(
                &StackSnapshot {
                    services: vec![app.clone()]
                },
                "st"
            ),
            vec!["nope"]
        );
        app.labels.remove("backupbot.backup");
        assert!(
            backup_selection(
                &StackSnapshot {
                    services: vec![app]
                },
                "st"
            )
            .is_empty()
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }
}
