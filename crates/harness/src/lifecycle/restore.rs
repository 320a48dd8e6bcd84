//! The restore tier: change what was backed up, `abra app restore`, and see the backed-up data
//! come back on a converged stack.

use super::data::Canaries;
use super::deploy::Settled;
use super::job::{Job, Stop};
use crate::contract::Stage;
use crate::report::{CheckResult, Verdict};

impl Job {
    pub(super) async fn restore(&mut self) -> Result<Vec<CheckResult>, Stop> {
        let mut out = Vec::new();
        let canaries =
            self.generic_enabled() && self.overlay.canaries && !self.backed_up.is_empty();
        if canaries {
            // Change what was backed up, so a restore that does nothing cannot pass.
            if let Canaries::NotWritten(e) = self.write_canaries(Some(true)).await? {
                out.push(CheckResult::generic(
                    "data-restored",
                    Verdict::Error,
                    format!("could not change canaries before the restore: {e}"),
                ));
                return Ok(out);
            }
        }
        out.extend(self.mutate_data().await?);
        self.progress.step("restore: abra app restore");
        let result = self.abra.restore(&self.domain).await;
        let check = self
            .abra_step("restore", result, |_| "abra app restore succeeded".into())
            .await?;
        let restored = check.verdict == Verdict::Pass;
        out.push(check);
        if !restored {
            return Ok(out);
        }
        if self.generic_enabled() {
            match self.wait_converged().await? {
                Settled::Converged => out.push(CheckResult::generic(
                    "converged",
                    Verdict::Pass,
                    "healthy after the restore",
                )),
                Settled::Not(why) => {
                    out.push(CheckResult::generic("converged", Verdict::Fail, why));
                    return Ok(out);
                }
            }
            if canaries {
                out.push(
                    self.verify_canaries("data-restored", &self.backed_up.clone())
                        .await?,
                );
            }
        }
        out.extend(self.verify_data(Stage::Restore).await?);
        Ok(out)
    }
}
