//! One run: deploy once, carry the deployment through the requested tiers, report, tear down.
//!
//! Order (docs/tiers.md): with `upgrade` requested the fresh deploy is the *base* release and
//! the install tier checks it; the upgrade tier redeploys the head in place with `--chaos`;
//! backup and restore then run on the head. Without `upgrade` the fresh deploy is the head.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::abra::{Abra, AbraError};
use crate::config::Config;
use crate::contract::files;
use crate::engine::{Engine, EngineError};
use crate::hostenv::HostEnv;
use crate::names;
use crate::overlay::Overlay;
use crate::recipe;
use crate::redact::Redactor;
use crate::report::{CheckResult, RunReport, TeardownReport, TierReport, Verdict};
use crate::teardown::{self, RunDir};

mod appcfg;
mod backup;
pub mod backup_labels;
mod data;
mod deploy;
mod execute;
mod guard;
mod leases;
mod output;
pub mod plan;
mod restore;
mod upgrade;

use output::{print_table, write_reports};

pub use crate::contract::{Stage, exit};
pub use crate::hostenv::work_dir;
pub use backup_labels::{backup_selection, unknown_backup_volumes};

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
    /// The process environment, read by the caller.
    pub host: HostEnv,
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
    redactor.learn_forge_secrets(
        &opts.config.forge,
        opts.host.credentials_directory.as_deref(),
    );
    redactor.learn_from_fd(opts.host.secrets_fd.as_deref());
    let progress = Progress::new(redactor.clone());
    // Everything checked before anything is created (exit 2 changes nothing).
    let git_ref = match check_inputs(&opts) {
        Ok(r) => r,
        Err((code, msg)) => return RunOutcome::refused(code, msg),
    };
    let (mut job, run_dir) = match set_up(&opts, &redactor, &progress).await {
        Ok(v) => v,
        Err((code, msg)) => return RunOutcome::refused(code, msg),
    };
    progress.step(&format!(
        "run of {} at {git_ref} as {} (work dir {})",
        job.recipe,
        job.domain,
        run_dir.path.display()
    ));
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
            job.record_infra_error(&msg);
            None
        }
    };
    job.finish(run_dir, refusal).await
}

/// A run refused before it started: the exit code and why.
type Refusal = (i32, String);

/// The ref to test, once the inputs are known to be sound; a refusal (exit 2) otherwise.
fn check_inputs(opts: &RunOptions) -> Result<String, Refusal> {
    let bad = |msg: String| (exit::BAD_INPUT, msg);
    recipe::validate_source(&opts.recipe_source).map_err(|e| bad(e.to_string()))?;
    let git_ref = opts.git_ref.clone().unwrap_or_else(|| "HEAD".into());
    names::validate_ref(&git_ref).map_err(|e| bad(e.to_string()))?;
    if let Some(b) = &opts.base {
        names::validate_ref(b).map_err(|e| bad(format!("--base: {e}")))?;
    }
    Ok(git_ref)
}

/// The engine, abra, the report and run directories, and the job over them; a refusal (exit 3,
/// or 2 for a report directory that cannot be made) when the host is not ready.
async fn set_up(
    opts: &RunOptions,
    redactor: &Redactor,
    progress: &Progress,
) -> Result<(Job, RunDir), Refusal> {
    let infra = |msg: String| (exit::INFRA, msg);
    let engine = Engine::connect(opts.host.docker_host.as_deref())
        .map_err(|e| infra(e.to_string()))?
        .with_timeout(Duration::from_secs(opts.config.harness.engine_timeout_secs));
    match engine.check_swarm().await {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => return Err(infra(msg)),
        Err(e) => return Err(infra(e.to_string())),
    }
    let abra_bin = crate::abra::resolve_binary(
        opts.abra.as_deref(),
        opts.config.harness.abra.as_deref(),
        &opts.host,
    )
    .map_err(|e| infra(e.to_string()))?;
    std::fs::create_dir_all(&opts.report_dir).map_err(|e| {
        (
            exit::BAD_INPUT,
            format!(
                "cannot create report dir {}: {e}",
                opts.report_dir.display()
            ),
        )
    })?;
    output::check_writable(&opts.report_dir).map_err(infra)?;
    let h = &opts.config.harness;
    // The recipe's name is `TYPE=` of its `.env.sample`, known once it is cloned; until then the
    // repository's name stands in (it only prefixes the app domain).
    let recipe = names::recipe_name_from_source(&opts.recipe_source).to_ascii_lowercase();
    let domain = names::app_domain(&recipe, &h.domain_suffix, rand::random::<u32>());
    let run_dir = RunDir::create(&work_dir(&opts.config, &opts.host), &domain)
        .map_err(|e| infra(e.to_string()))?;
    let abra = Abra::new(
        abra_bin,
        run_dir.abra_dir(),
        Duration::from_secs(h.abra_timeout_secs),
        redactor.clone(),
    )
    .with_log(opts.report_dir.join(files::ABRA_LOG));
    let job = Job {
        stack: names::stack_name(&domain),
        domain,
        recipe,
        opts: opts.clone(),
        engine,
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
        port_lease: None,
        abra_version: None,
        head_pull: None,
    };
    Ok((job, run_dir))
}

impl Job {
    /// An infrastructure error stops the run: it is a note, and the error of the tier it hit
    /// (or of the next tier, when it came between tiers).
    fn record_infra_error(&mut self, msg: &str) {
        self.notes.push(format!("infrastructure error: {msg}"));
        if self.tiers.len() < self.opts.stages.len()
            || self.tiers.iter().all(|t| t.verdict != Verdict::Error)
        {
            self.tiers.push(TierReport {
                name: next_tier_name(self),
                verdict: Verdict::Error,
                duration_ms: 0,
                checks: vec![CheckResult::generic("infrastructure", Verdict::Error, msg)],
            });
        }
    }

    /// Teardown (always, unless a failed deployment is kept on request), then the reports and
    /// the outcome. `refusal` is a run stopped by bad input: no report, its exit code.
    async fn finish(mut self, run_dir: RunDir, refusal: Option<(i32, String)>) -> RunOutcome {
        let provisional = RunReport::overall(&self.tiers, &TeardownReport::default());
        let failed = refusal.is_none() && provisional != Verdict::Pass;
        let mut write_errors = Vec::new();
        if failed && let Err(e) = self.write_diagnostics().await {
            write_errors.push(e);
        }
        let teardown = if failed && self.opts.keep_on_failure {
            self.progress.step(&format!(
                "keeping the failed deployment; remove it later with: cc-ci teardown {}",
                self.domain
            ));
            std::mem::forget(run_dir);
            TeardownReport {
                verdict: None,
                leftovers: vec![],
            }
        } else {
            self.progress.step("teardown");
            self.teardown(run_dir).await
        };
        let redactor = self.redactor.clone();
        if let Some((code, msg)) = refusal {
            return RunOutcome {
                exit_code: code,
                report: None,
                message: Some(redactor.redact(&msg)),
            };
        }
        let report = self.report(teardown);
        print_table(&report, &redactor);
        let written = write_reports(&self.opts.report_dir, &report, &redactor)
            .and_then(|()| self.abra.log_error().map_or(Ok(()), Err));
        if let Err(e) = written.and_then(|()| write_errors.into_iter().next().map_or(Ok(()), Err)) {
            // A run whose report is missing must not look like a run that passed.
            return RunOutcome {
                exit_code: exit::INFRA,
                report: None,
                message: Some(redactor.redact(&e)),
            };
        }
        RunOutcome {
            exit_code: exit_code(&report),
            report: Some(report),
            message: None,
        }
    }
}

/// The exit code of a run that produced a report. An error is an infrastructure error (3) when
/// the engine, abra or git went away during a tier, or when every tier passed but the teardown
/// could not remove the deployment (e.g. dockerd restarted at that moment): the recipe is not
/// to blame. Otherwise a tier that did not pass makes it 1.
pub fn exit_code(report: &RunReport) -> i32 {
    match report.verdict {
        Verdict::Pass | Verdict::Skipped => exit::PASS,
        Verdict::Fail => exit::FAIL,
        Verdict::Error => {
            let infra_in_tier = report
                .tiers
                .iter()
                .any(|t| t.checks.iter().any(|c| c.name == "infrastructure"));
            let only_teardown = report.teardown.verdict == Some(Verdict::Error)
                && report
                    .tiers
                    .iter()
                    .all(|t| matches!(t.verdict, Verdict::Pass | Verdict::Skipped));
            if infra_in_tier || only_teardown {
                exit::INFRA
            } else {
                exit::FAIL
            }
        }
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
    /// Host ports this run's deployment publishes, leased until the run ends (after teardown).
    port_lease: Option<crate::ports::PortLease>,
    /// What `abra --version` said.
    abra_version: Option<String>,
    /// The pull of the head's images, started while the install tier runs.
    head_pull: Option<tokio::task::JoinHandle<Vec<crate::engine::PullError>>>,
}

impl Job {
    fn wants(&self, s: Stage) -> bool {
        self.opts.stages.contains(&s)
    }

    fn generic_enabled(&self) -> bool {
        !(self.opts.skip_generic || self.opts.config.harness.skip_generic.contains(&self.recipe))
    }

    async fn teardown(&mut self, run_dir: RunDir) -> TeardownReport {
        // abra first (it may clean more than the engine knows about), then the engine makes sure.
        // An engine that does not answer would only make abra wait for its own deadline, and
        // every removal wait for the engine's.
        let result = match self.engine.check_swarm().await {
            Err(e) if e.is_hung() => Err(teardown::TeardownError::Engine(e)),
            answered => {
                if answered.is_ok() {
                    let _ = self.abra.undeploy(&self.domain).await;
                }
                let timeout =
                    Duration::from_secs(self.opts.config.harness.converge_timeout_secs.max(60));
                teardown::teardown_stack(&self.engine, &self.stack, timeout).await
            }
        };
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
            abra_version: self.abra_version.clone(),
        }
    }
}

enum Target {
    Release(String),
    Head,
}

/// The check for pulls that failed, each naming image and registry.
fn pull_failed(failed: &[crate::engine::PullError]) -> CheckResult {
    CheckResult::generic(
        "pull",
        Verdict::Fail,
        failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

fn abra_infra(e: AbraError) -> Stop {
    Stop::Infra(e.to_string())
}

impl Job {
    /// After abra failed: when the engine does not answer now, the failure is the
    /// infrastructure's (dockerd restarting, bench/drill-dockerd-restart), not the recipe's.
    async fn engine_lost(&self, e: &AbraError) -> Option<Stop> {
        match self.engine.check_swarm().await {
            Err(err) if err.is_unreachable() => Some(Stop::Infra(format!(
                "{} while the Docker engine was unreachable: {err}",
                first_line(&e.to_string())
            ))),
            _ => None,
        }
    }

    /// The check for one abra step of a tier: pass (with `detail` of abra's output) or fail
    /// with abra's last lines. abra missing, or the engine gone, stops the run instead: that is
    /// the infrastructure's fault, not the recipe's.
    async fn abra_step(
        &self,
        name: &str,
        result: Result<crate::abra::AbraOutput, AbraError>,
        detail: impl FnOnce(&crate::abra::AbraOutput) -> String,
    ) -> Result<CheckResult, Stop> {
        match result {
            Ok(o) => Ok(CheckResult::generic(name, Verdict::Pass, detail(&o))),
            Err(e @ (AbraError::NotFound(_) | AbraError::Spawn { .. })) => Err(abra_infra(e)),
            Err(e) => match self.engine_lost(&e).await {
                Some(stop) => Err(stop),
                None => Ok(CheckResult::generic(name, Verdict::Fail, abra_failure(&e))),
            },
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// One line for a failed abra call: what failed, then abra's last meaningful lines (where it
/// prints the cause), without the `:` of the error's first line doubling up.
fn abra_failure(e: &AbraError) -> String {
    let headline = first_line(&e.to_string());
    let headline = headline.trim_end().trim_end_matches(':');
    match tail(e.output(), 6) {
        t if t.is_empty() => format!("{headline} (abra printed nothing)"),
        t => format!("{headline}; abra said: {t}"),
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_teardown_that_could_not_finish_after_passing_tiers_is_an_infrastructure_error() {
        let tier = |name: &str, verdict| TierReport {
            name: name.into(),
            verdict,
            duration_ms: 0,
            checks: vec![],
        };
        let report = |tiers: Vec<TierReport>, teardown| {
            let teardown = TeardownReport {
                verdict: Some(teardown),
                leftovers: vec![],
            };
            RunReport {
                recipe: "web".into(),
                git_ref: "HEAD".into(),
                head_sha: String::new(),
                base_version: None,
                app_domain: "web-abcdef.ci.local".into(),
                verdict: RunReport::overall(&tiers, &teardown),
                deploy_count: 1,
                tiers,
                teardown,
                notes: vec![],
                abra_version: None,
            }
        };
        let passed = vec![
            tier("install", Verdict::Pass),
            tier("backup", Verdict::Skipped),
        ];
        assert_eq!(
            exit_code(&report(passed.clone(), Verdict::Pass)),
            exit::PASS
        );
        // dockerd restarted during the teardown (bench/drill-dockerd-restart): not the recipe's fault.
        assert_eq!(exit_code(&report(passed, Verdict::Error)), exit::INFRA);
        let failed = vec![tier("install", Verdict::Fail)];
        assert_eq!(
            exit_code(&report(failed.clone(), Verdict::Pass)),
            exit::FAIL
        );
        // A failed tier stays the headline even when the teardown also had trouble.
        assert_eq!(exit_code(&report(failed, Verdict::Error)), exit::FAIL);
        let mut infra = tier("upgrade", Verdict::Error);
        infra.checks.push(CheckResult::generic(
            "infrastructure",
            Verdict::Error,
            "engine gone",
        ));
        assert_eq!(
            exit_code(&report(
                vec![tier("install", Verdict::Pass), infra],
                Verdict::Error
            )),
            exit::INFRA
        );
    }

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
    fn abra_failures_read_as_one_sentence() {
        let e = AbraError::Failed {
            args: "app deploy x".into(),
            code: 1,
            output: "pulling\n\nFATA no such image: y\n".into(),
        };
        let t = abra_failure(&e);
        assert_eq!(
            t,
            "`abra app deploy x` failed with exit code 1; abra said: pulling | FATA no such image: y"
        );
        let empty = AbraError::Failed {
            args: "app deploy x".into(),
            code: 1,
            output: String::new(),
        };
        let t = abra_failure(&empty);
        assert!(
            !t.contains("1:") && t.ends_with("(abra printed nothing)"),
            "{t}"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }
}
