//! Recording what a run's result is made of (run.json `inputs`), with the same resolver reuse and
//! drift use later (crate::inputs), so recorded and current inputs only differ when the world did.

use super::job::Job;
use crate::inputs::{self, Request};
use crate::recipe::Checkout;

impl Job {
    /// The inputs of this run, read from its clone (left checked out at the head). `None`, with a
    /// note, when they cannot be resolved: such a result is never reused.
    pub(super) async fn record_inputs(&mut self, checkout: &Checkout) -> Option<inputs::Inputs> {
        let req = Request {
            source: &self.opts.recipe_source,
            head: &self.head_sha,
            base: self.base.as_deref().filter(|_| self.opts.base.is_some()),
            stages: &self.opts.stages,
            config: &self.opts.config,
            shipped_overlays: self.opts.shipped_overlays.as_deref(),
            abra_version: self.abra_version.clone(),
        };
        match inputs::resolve_at(checkout, &req, &*self.swarm).await {
            Ok(i) => {
                if i.base_release != self.base {
                    self.notes.push(format!(
                        "inputs: the recorded base release {:?} is not the run's {:?}",
                        i.base_release, self.base
                    ));
                }
                Some(i)
            }
            Err(e) => {
                self.notes.push(format!(
                    "inputs not recorded (this result is never reused): {e}"
                ));
                None
            }
        }
    }
}
