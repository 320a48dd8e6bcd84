//! The job of one run: what it was asked to do, what it has learnt so far, and the helpers
//! every tier shares (progress lines, abra steps, teardown, the report).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::abra::AbraError;
use crate::abra_cli::AbraCli;
use crate::config::HarnessConfig;
use crate::contract::Stage;
use crate::engine::EngineError;
use crate::hostenv::HostEnv;
use crate::names;
use crate::overlay::Overlay;
use crate::redact::Redactor;
use crate::report::{CheckResult, RunReport, TeardownReport, TierReport, Verdict};
use crate::swarm::Swarm;
use crate::teardown::{self, RunDir};

/// Everything `cc-ci run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub recipe_source: String,
    pub git_ref: Option<String>,
    pub stages: Vec<Stage>,
    pub report_dir: PathBuf,
    pub abra: Option<String>,
    /// `[harness]` of the config file.
    pub config: HarnessConfig,
    /// The files holding the forge token and the webhook secret (`forge.token_file`,
    /// `forge.webhook_secret_file`): their values are masked in everything the run writes.
    pub forge_secret_files: Vec<PathBuf>,
    pub keep_on_failure: bool,
    pub skip_generic: bool,
    pub base: Option<String>,
    /// The folder of overlays shipped with cc-ci (searched before the operator's).
    pub shipped_overlays: Option<PathBuf>,
    /// The process environment, read by the caller.
    pub host: HostEnv,
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

/// Why a run stopped early.
pub(super) enum Stop {
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

/// One run's state. The swarm and abra are trait objects (crate::swarm, crate::abra_cli): the
/// real engine and abra adapter in a run, the in-memory fakes in the tier unit tests.
pub(super) struct Job {
    pub(super) stack: String,
    pub(super) domain: String,
    pub(super) recipe: String,
    pub(super) opts: RunOptions,
    pub(super) swarm: Arc<dyn Swarm>,
    pub(super) abra: Arc<dyn AbraCli>,
    pub(super) progress: Progress,
    pub(super) redactor: Redactor,
    pub(super) head_sha: String,
    pub(super) base: Option<String>,
    pub(super) deploy_count: u32,
    pub(super) tiers: Vec<TierReport>,
    pub(super) notes: Vec<String>,
    /// Canary values per volume (full volume name → value) last written.
    pub(super) canaries: BTreeMap<String, String>,
    pub(super) overlay: Overlay,
    /// Canary values as they were at backup time.
    pub(super) backed_up: BTreeMap<String, String>,
    /// Host ports this run's deployment publishes, leased until the run ends (after teardown).
    pub(super) port_lease: Option<crate::ports::PortLease>,
    /// What `abra --version` said.
    pub(super) abra_version: Option<String>,
    /// What the result is made of (recorded in run.json).
    pub(super) inputs: Option<crate::inputs::Inputs>,
    /// The pull of the head's images, started while the install tier runs.
    pub(super) head_pull: Option<tokio::task::JoinHandle<Vec<crate::engine::PullError>>>,
}

impl Job {
    /// A job that has learnt nothing yet. `recipe` stands in until the clone names it.
    pub(super) fn new(
        opts: RunOptions,
        domain: String,
        recipe: String,
        swarm: Arc<dyn Swarm>,
        abra: Arc<dyn AbraCli>,
        redactor: Redactor,
        progress: Progress,
    ) -> Self {
        Job {
            stack: names::stack_name(&domain),
            domain,
            recipe,
            opts,
            swarm,
            abra,
            progress,
            redactor,
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
            inputs: None,
            head_pull: None,
        }
    }

    pub(super) fn wants(&self, s: Stage) -> bool {
        self.opts.stages.contains(&s)
    }

    pub(super) fn generic_enabled(&self) -> bool {
        !(self.opts.skip_generic || self.opts.config.skip_generic.contains(&self.recipe))
    }

    pub(super) async fn teardown(&mut self, run_dir: RunDir) -> TeardownReport {
        // abra first (it may clean more than the engine knows about), then the engine makes sure.
        // An engine that does not answer would only make abra wait for its own deadline, and
        // every removal wait for the engine's.
        let result = match self.swarm.check_swarm().await {
            Err(e) if e.is_hung() => Err(teardown::TeardownError::Engine(e)),
            answered => {
                // An engine that answers, swarm manager or not, lets abra try.
                if matches!(answered, Ok(()) | Err(EngineError::NotSwarm(_))) {
                    let _ = self.abra.undeploy(&self.domain).await;
                }
                let timeout = Duration::from_secs(self.opts.config.converge_timeout_secs.max(60));
                teardown::teardown_stack(&*self.swarm, &self.stack, timeout).await
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

    pub(super) fn report(&self, teardown: TeardownReport) -> RunReport {
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
            inputs: self.inputs.clone(),
            reused: None,
        }
    }
}

pub(super) enum Target {
    Release(String),
    Head,
}

/// The check for pulls that failed, each naming image and registry.
pub(super) fn pull_failed(failed: &[crate::engine::PullError]) -> CheckResult {
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

pub(super) fn abra_infra(e: AbraError) -> Stop {
    Stop::Infra(e.to_string())
}

impl Job {
    /// After abra failed: when the engine does not answer now, the failure is the
    /// infrastructure's (dockerd restarting, bench/drill-dockerd-restart), not the recipe's.
    pub(super) async fn engine_lost(&self, e: &AbraError) -> Option<Stop> {
        match self.swarm.check_swarm().await {
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
    pub(super) async fn abra_step(
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

pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// One line for a failed abra call: what failed, then abra's last meaningful lines (where it
/// prints the cause), without the `:` of the error's first line doubling up.
pub(super) fn abra_failure(e: &AbraError) -> String {
    let headline = first_line(&e.to_string());
    let headline = headline.trim_end().trim_end_matches(':');
    match tail(e.output(), 6) {
        t if t.is_empty() => format!("{headline} (abra printed nothing)"),
        t => format!("{headline}; abra said: {t}"),
    }
}

pub(super) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
