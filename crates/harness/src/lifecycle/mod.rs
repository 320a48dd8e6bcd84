//! One run: deploy once, carry the deployment through the requested tiers, report, tear down.
//!
//! Order (docs/tiers.md): with `upgrade` requested the fresh deploy is the *base* release and
//! the install tier checks it; the upgrade tier redeploys the head in place with `--chaos`;
//! backup and restore then run on the head. Without `upgrade` the fresh deploy is the head.

use std::sync::Arc;
use std::time::Duration;

use crate::abra::Abra;
use crate::contract::files;
use crate::engine::Engine;
use crate::names;
use crate::recipe;
use crate::redact::Redactor;
use crate::report::{CheckResult, RunReport, TeardownReport, TierReport, Verdict};
use crate::teardown::RunDir;

mod appcfg;
mod backup;
pub mod backup_labels;
mod data;
mod deploy;
mod execute;
mod guard;
mod job;
mod leases;
mod output;
pub mod plan;
mod record;
mod restore;
#[cfg(test)]
mod tier_tests;
mod upgrade;

use job::{Job, Stop};
use output::{print_table, write_reports};

pub use crate::contract::{Stage, exit};
pub use crate::hostenv::work_dir;
pub use backup_labels::{backup_selection, unknown_backup_volumes};
pub use job::{Progress, RunOptions};

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

/// Runs the whole job. `cancel` resolving (SIGINT/SIGTERM) stops the current step; teardown
/// still runs.
pub async fn run<C>(opts: RunOptions, cancel: C) -> RunOutcome
where
    C: std::future::Future<Output = &'static str>,
{
    let redactor = Redactor::new();
    redactor.learn_forge_secrets(
        &opts.forge_secret_files,
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
        .with_timeout(Duration::from_secs(opts.config.engine_timeout_secs));
    engine
        .check_swarm()
        .await
        .map_err(|e| infra(e.to_string()))?;
    let abra_bin = crate::abra::resolve_binary(
        opts.abra.as_deref(),
        opts.config.abra.as_deref(),
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
    let h = &opts.config;
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
    let job = Job::new(
        opts.clone(),
        domain,
        recipe,
        Arc::new(engine),
        Arc::new(abra),
        redactor.clone(),
        progress.clone(),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abra::AbraError;
    use job::{abra_failure, tail};

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
                inputs: None,
                reused: None,
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
