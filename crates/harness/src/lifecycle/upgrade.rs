//! The upgrade tier: the head redeployed in place over the base with `--chaos`, its data kept.

use super::data::Canaries;
use super::job::{Job, Stop, Target, pull_failed};
use crate::contract::{Stage, short_sha};
use crate::recipe::Checkout;
use crate::report::{CheckResult, Verdict};

impl Job {
    pub(super) async fn upgrade(&mut self, checkout: &Checkout) -> Result<Vec<CheckResult>, Stop> {
        let mut out = Vec::new();
        let canaries = self.generic_enabled() && self.overlay.canaries;
        if canaries {
            self.progress
                .step("upgrade: writing canaries into every named volume");
            if let Canaries::NotWritten(e) = self.write_canaries(None).await? {
                out.push(CheckResult::generic(
                    "data-continuity",
                    Verdict::Error,
                    format!("could not write canaries before the upgrade: {e}"),
                ));
            }
        }
        out.extend(self.seed_data().await?);
        checkout
            .checkout(&self.head_sha)
            .await
            .map_err(|e| Stop::Infra(e.to_string()))?;
        // The head's images were pulled while the install tier ran.
        if let Some(pull) = self.head_pull.take() {
            self.progress.step("upgrade: waiting for the head's images");
            let failed = pull.await.unwrap_or_default();
            if !failed.is_empty() {
                out.push(pull_failed(&failed));
                return Ok(out);
            }
        }
        // What an operator adds for the new version: env keys, secrets.
        let configured = self.configure_head(checkout).await?;
        let added = configured.verdict == Verdict::Pass;
        out.push(configured);
        if !added {
            return Ok(out);
        }
        self.progress.step(&format!(
            "upgrade: chaos deploy of head {}",
            short_sha(&self.head_sha)
        ));
        let deployed = self.deploy_and_check(&Target::Head).await?;
        out.extend(deployed.checks);
        if deployed.converged && self.generic_enabled() {
            out.push(self.no_rollback().await?);
            if canaries && out.iter().all(|c| c.name != "data-continuity") {
                out.push(
                    self.verify_canaries("data-continuity", &self.canaries.clone())
                        .await?,
                );
            }
        }
        if deployed.converged {
            out.extend(self.verify_data(Stage::Upgrade).await?);
            out.extend(self.overlay_checks(Stage::Upgrade).await?);
        }
        Ok(out)
    }

    /// No service rolled its update back (swarm's `rollback_completed`).
    async fn no_rollback(&self) -> Result<CheckResult, Stop> {
        let snap = self.swarm.snapshot(&self.stack).await?;
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
        Ok(if rolled_back.is_empty() {
            CheckResult::generic("no-rollback", Verdict::Pass, "no service rolled back")
        } else {
            CheckResult::generic("no-rollback", Verdict::Fail, rolled_back.join("; "))
        })
    }
}
