//! One deploy and the generic checks after it: converged, stable for the window, labelled with
//! the version deployed; and the waits behind them.

use std::collections::BTreeSet;
use std::time::Duration;

use super::job::{Job, Stop, Target, abra_failure, abra_infra};
use crate::abra::{AbraError, AbraOutput};
use crate::checks::{self, Convergence, Expected};
use crate::engine::EngineError;
use crate::report::{CheckResult, Verdict};
use crate::wait::{Probe, WaitError, wait_for};

/// The checks of one deploy, and whether the deployment converged.
pub(super) struct Deployed {
    pub checks: Vec<CheckResult>,
    pub converged: bool,
}

impl Job {
    /// Deploys `target` (counting the deploy) and runs the generic deploy checks: converged,
    /// stable, labelled.
    pub(super) async fn deploy_and_check(&mut self, target: &Target) -> Result<Deployed, Stop> {
        let mut checks = Vec::new();
        let deploy_err = match self.deploy(target).await? {
            AbraDeploy::Done(o) => {
                checks.push(CheckResult::generic(
                    "deploy",
                    Verdict::Pass,
                    format!("abra {} ({:.1} s)", o.args, o.duration.as_secs_f64()),
                ));
                None
            }
            AbraDeploy::Failing(check) => {
                checks.push(check);
                return Ok(Deployed {
                    checks,
                    converged: false,
                });
            }
            AbraDeploy::Failed(e) => Some(e),
        };
        self.progress.step("waiting for convergence");
        let converge = match &deploy_err {
            Some(e) => {
                let (check, why) = self.why_abra_gave_up(e).await?;
                checks.push(check);
                Settled::Not(why)
            }
            None => self.wait_converged().await?,
        };
        if !self.generic_enabled() {
            return Ok(Deployed {
                checks,
                converged: matches!(converge, Settled::Converged),
            });
        }
        if let Settled::Not(why) = converge {
            if deploy_err.is_none() {
                let health = self.health_hint().await;
                checks.push(CheckResult::generic(
                    "converged",
                    Verdict::Fail,
                    format!("{why}{health}"),
                ));
            }
            return Ok(Deployed {
                checks,
                converged: false,
            });
        }
        checks.push(CheckResult::generic(
            "converged",
            Verdict::Pass,
            "every service at its desired replicas, running, healthy, update settled",
        ));
        checks.extend(self.stable_and_labelled(target).await?);
        Ok(Deployed {
            checks,
            converged: true,
        })
    }

    /// Runs abra's deploy, given up on as soon as the stack is failing for certain.
    async fn deploy(&mut self, target: &Target) -> Result<AbraDeploy, Stop> {
        let is_fresh = self.deploy_count == 0;
        let before: BTreeSet<String> = self
            .swarm
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
        match deploy {
            Ok(Ok(o)) => Ok(AbraDeploy::Done(o)),
            Ok(Err(e @ (AbraError::NotFound(_) | AbraError::Spawn { .. }))) => Err(abra_infra(e)),
            Ok(Err(e)) => Ok(AbraDeploy::Failed(e)),
            Err(Err(hung)) => Err(hung.into()),
            Err(Ok(why)) => {
                let health = self.health_hint().await;
                Ok(AbraDeploy::Failing(CheckResult::generic(
                    "deploy",
                    Verdict::Fail,
                    format!("the deployment is failing, abra was stopped: {why}{health}"),
                )))
            }
        }
    }

    /// abra gave up; one look tells which service is the cause. The failed `deploy` check and
    /// the reason.
    async fn why_abra_gave_up(&self, e: &AbraError) -> Result<(CheckResult, String), Stop> {
        let snap = self.swarm.snapshot(&self.stack).await?;
        let why = match checks::convergence(&snap) {
            Convergence::Converged => "the stack looks converged now".to_string(),
            Convergence::Pending(w) | Convergence::Failed(w) => w,
        };
        let why = format!("{why}{}", self.health_hint().await);
        let check = CheckResult::generic(
            "deploy",
            Verdict::Fail,
            format!("{}; swarm state: {why}", abra_failure(e)),
        );
        Ok((check, why))
    }

    /// Stability window (no task may be replaced and none may turn unhealthy), then the version
    /// labels.
    async fn stable_and_labelled(&self, target: &Target) -> Result<Vec<CheckResult>, Stop> {
        let window = self.opts.config.stability_window_secs;
        self.progress
            .step(&format!("stability window: no restarts for {window} s"));
        let stable = match self.stability().await? {
            Settled::Converged => CheckResult::generic(
                "stable",
                Verdict::Pass,
                format!("no restarts for {window} s"),
            ),
            Settled::Not(v) => CheckResult::generic("stable", Verdict::Fail, v),
        };
        let snap = self.swarm.snapshot(&self.stack).await?;
        let expected = match target {
            Target::Release(b) => Expected::Release(b),
            Target::Head => Expected::Commit(&self.head_sha),
        };
        let labelled = match checks::check_version_labels(&snap, &self.stack, &expected) {
            Ok(d) => CheckResult::generic("version-label", Verdict::Pass, d),
            Err(d) => CheckResult::generic("version-label", Verdict::Fail, d),
        };
        Ok(vec![stable, labelled])
    }

    /// `; <service>: health unhealthy, last healthcheck exit 1: ...` for the newest task of each
    /// service that has a healthcheck and is not healthy; empty when there is nothing to add.
    async fn health_hint(&self) -> String {
        let Ok(snap) = self.swarm.snapshot(&self.stack).await else {
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
                && let Ok(Some(h)) = self.swarm.health_log(cid).await
            {
                out.push_str(&format!(
                    "; {}: {}",
                    s.short_name,
                    crate::report::excerpt(&self.redactor.redact(&h), 300)
                ));
            }
        }
        self.redactor.redact(&out)
    }

    /// Resolves only when the stack is failing for certain, counting only tasks created after
    /// `before` (an upgrade must not be judged by the base's history).
    /// A hung engine ends the watch too (`Err`): abra talks to the same engine and would only
    /// hang until its own, much longer, deadline.
    async fn watch_for_failure(&self, before: &BTreeSet<String>) -> Result<String, EngineError> {
        let interval = Duration::from_millis(self.opts.config.poll_interval_ms);
        loop {
            tokio::time::sleep(interval).await;
            let mut snap = match self.swarm.snapshot(&self.stack).await {
                Ok(s) => s,
                Err(e) if e.is_hung() => return Err(e),
                // A restarting engine refuses connections for a moment; abra notices for itself.
                Err(_) => continue,
            };
            for s in &mut snap.services {
                s.tasks.retain(|t| !before.contains(&t.id));
            }
            if let Convergence::Failed(why) = checks::convergence(&snap) {
                return Ok(why);
            }
        }
    }

    /// `Err` only when the engine is gone or hangs: that is no verdict on the recipe.
    pub(super) async fn wait_converged(&self) -> Result<Settled, Stop> {
        let h = &self.opts.config;
        let r = wait_for(
            &format!("stack {} to converge", self.stack),
            Duration::from_secs(h.converge_timeout_secs),
            Duration::from_millis(h.poll_interval_ms),
            || async {
                let snap = self.swarm.snapshot(&self.stack).await?;
                Ok::<_, EngineError>(match checks::convergence(&snap) {
                    Convergence::Converged => Probe::Done(()),
                    Convergence::Pending(w) => Probe::Pending(w),
                    Convergence::Failed(w) => Probe::Failed(w),
                })
            },
        )
        .await;
        match r {
            Ok(()) => Ok(Settled::Converged),
            Err(WaitError::Probe(e)) if e.is_unreachable() => Err(e.into()),
            Err(WaitError::Failed { reason, .. }) => Ok(Settled::Not(reason)),
            Err(other) => Ok(Settled::Not(other.to_string())),
        }
    }

    /// The stability window: [`Settled::Converged`] when no task was replaced and none turned
    /// unhealthy, else what happened.
    async fn stability(&self) -> Result<Settled, Stop> {
        let h = &self.opts.config;
        let before = self.swarm.snapshot(&self.stack).await?;
        let window = Duration::from_secs(h.stability_window_secs);
        // The window is a wait for a violation that must *not* come: a timeout is the pass.
        let r = wait_for(
            "a restart",
            window,
            Duration::from_millis(h.poll_interval_ms),
            || async {
                let now = self.swarm.snapshot(&self.stack).await?;
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
            Ok(violation) => Ok(Settled::Not(violation)),
            Err(WaitError::TimedOut { .. }) => Ok(Settled::Converged),
            Err(WaitError::Probe(e)) => Err(e.into()),
            Err(WaitError::Failed { reason, .. }) => Ok(Settled::Not(reason)),
        }
    }
}

/// How abra's deploy ended, short of the infrastructure failing.
enum AbraDeploy {
    /// abra finished.
    Done(AbraOutput),
    /// The stack was failing for certain and abra was stopped: the failed `deploy` check.
    Failing(CheckResult),
    /// abra itself reported a failure.
    Failed(AbraError),
}

/// Whether the stack settled (converged, or stayed stable over the window), and if not why.
pub(super) enum Settled {
    Converged,
    Not(String),
}
