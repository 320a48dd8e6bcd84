//! The app's configuration from the commit under test (env file and secrets), the images pulled
//! before each deploy, and backup-bot-two's presence: what a run sets up around abra.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::job::{Job, Stop, abra_infra, first_line};
use crate::abra::AbraError;
use crate::appconfig::parse_env;
use crate::appconfig::{self, SecretSpec};
use crate::engine::PullError;
use crate::recipe::{self, Checkout};
use crate::report::{CheckResult, Verdict};
use crate::swarm::Swarm;
use cc_ci_engine_api::labels::backupbot::{BACKUPBOT_HOW_TO, backupbot_label};

/// Longest time one image pull may take before it counts as failed.
const PULL_DEADLINE: Duration = Duration::from_secs(600);

impl Job {
    fn env_path(&self) -> PathBuf {
        self.abra
            .abra_dir()
            .join("servers")
            .join(&self.opts.config.server)
            .join(format!("{}.env", self.domain))
    }

    fn read_env(&self) -> Result<String, Stop> {
        let p = self.env_path();
        std::fs::read_to_string(&p).map_err(|e| {
            Stop::Infra(format!(
                "cannot read the app env file {} that `abra app new` should have written: {e}",
                p.display()
            ))
        })
    }

    fn write_env(&self, text: &str) -> Result<(), Stop> {
        let p = self.env_path();
        std::fs::write(&p, text).map_err(|e| {
            Stop::Infra(format!(
                "cannot write the app env file {}: {e}",
                p.display()
            ))
        })
    }

    fn sample(checkout: &Checkout) -> Result<String, Stop> {
        checkout
            .read_file(".env.sample")
            .map_err(|e| Stop::BadInput(e.to_string()))?
            .ok_or_else(|| Stop::BadInput(".env.sample is missing".into()))
    }

    /// Makes a value for each secret (the overlay's, else random of its length) and inserts it.
    /// Returns the inserted names, `generate=false` ones marked.
    async fn insert_secrets(&self, specs: &[SecretSpec]) -> Result<Vec<String>, AbraError> {
        let mut done = Vec::new();
        for s in specs {
            let value = self
                .overlay
                .secrets
                .get(&s.name)
                .cloned()
                .unwrap_or_else(|| appconfig::random_value(s.length));
            self.abra
                .secret_insert(&self.domain, &s.name, &s.version, &value)
                .await?;
            done.push(if s.generate {
                format!("{} {}", s.name, s.version)
            } else {
                format!(
                    "{} {} (generate=false: cc-ci made a value)",
                    s.name, s.version
                )
            });
        }
        Ok(done)
    }

    /// Install: the env file of the version being deployed (now checked out) and its secrets,
    /// not those of the latest release `abra app new` chose.
    pub(super) async fn configure_app(&mut self, checkout: &Checkout) -> Result<(), Stop> {
        let written = self.read_env()?;
        let type_line = written
            .lines()
            .find(|l| l.trim_start().starts_with("TYPE="))
            .map(str::to_string);
        let env = appconfig::env_from_sample(
            &Self::sample(checkout)?,
            &self.domain,
            type_line.as_deref(),
        );
        self.write_env(&env)?;
        let specs = appconfig::secrets(&parse_env(&env));
        let done = self.insert_secrets(&specs).await.map_err(abra_infra)?;
        if !done.is_empty() {
            self.notes.push(format!(
                "secrets made and inserted by cc-ci: {}",
                done.join(", ")
            ));
        }
        Ok(())
    }

    /// Upgrade, before the `--chaos` deploy: what an operator adds for the head's version (new
    /// env keys, new secrets and secret versions). Records what was added as a check.
    pub(super) async fn configure_head(
        &mut self,
        checkout: &Checkout,
    ) -> Result<CheckResult, Stop> {
        let current = self.read_env()?;
        let (env, changed) = appconfig::upgrade_env(&current, &Self::sample(checkout)?);
        let new = appconfig::new_secrets(&parse_env(&current), &parse_env(&env));
        self.write_env(&env)?;
        let inserted = match self.insert_secrets(&new).await {
            Ok(d) => d,
            Err(e @ (AbraError::NotFound(_) | AbraError::Spawn { .. })) => {
                return Err(abra_infra(e));
            }
            Err(e) => {
                return Ok(CheckResult::generic(
                    "config-added",
                    Verdict::Fail,
                    format!(
                        "cannot insert a secret new in the head: {}",
                        first_line(&e.to_string())
                    ),
                ));
            }
        };
        let detail = if changed.is_empty() && inserted.is_empty() {
            "the head adds no env keys and no secrets".to_string()
        } else {
            let mut parts = Vec::new();
            if !changed.is_empty() {
                parts.push(format!("env keys added or changed: {}", changed.join(", ")));
            }
            if !inserted.is_empty() {
                parts.push(format!("secrets inserted: {}", inserted.join(", ")));
            }
            parts.join("; ")
        };
        Ok(CheckResult::generic("config-added", Verdict::Pass, detail))
    }

    /// Images the compose files of the current checkout name, with the app env interpolated as
    /// it will be when this checkout is deployed (the checkout's new keys added).
    pub(super) fn images_of(&self, checkout: &Checkout) -> Vec<String> {
        let Ok(env_text) = std::fs::read_to_string(self.env_path()) else {
            return Vec::new();
        };
        let env_text = match checkout.read_file(".env.sample") {
            Ok(Some(sample)) => appconfig::upgrade_env(&env_text, &sample).0,
            _ => env_text,
        };
        let mut vars = parse_env(&env_text).vars();
        if let Ok(Some(sh)) = checkout.read_file("abra.sh") {
            vars.extend(parse_env(&sh).vars());
        }
        vars.insert("STACK_NAME".into(), self.stack.clone());
        vars.insert("DOMAIN".into(), self.domain.clone());
        let env = parse_env(&env_text);
        let mut images = Vec::new();
        for file in recipe::compose_files(&env) {
            let Ok(Some(text)) = checkout.read_file(&file) else {
                continue;
            };
            images.extend(appconfig::compose_images(&text, &vars));
        }
        images.sort();
        images.dedup();
        images
    }

    /// Why backup-bot-two is missing from the swarm (the message for the backup and restore
    /// tiers), `None` when one of its services runs.
    pub(super) async fn backupbot_missing(&self) -> Result<Option<String>, Stop> {
        let (key, value) = backupbot_label(self.opts.host.backupbot_label.as_deref());
        let found = self.swarm.running_services_labelled(&key, &value).await?;
        Ok(if found.is_empty() {
            Some(format!(
                "no backup-bot-two service runs on this swarm (none labelled {key}={value}), so abra cannot back up or restore; this is the server's set-up, not the recipe: {BACKUPBOT_HOW_TO}"
            ))
        } else {
            None
        })
    }
}

/// Pulls every image, all at once; the failures, each naming image and registry. Nothing when
/// the pre-pull is turned off (`CC_CI_NO_PREPULL=1`, for bench/prepull only).
pub(super) async fn pull_all(
    swarm: Arc<dyn Swarm>,
    images: Vec<String>,
    off: bool,
) -> Vec<PullError> {
    if off {
        return Vec::new();
    }
    let pulls = images.into_iter().map(|i| {
        let swarm = swarm.clone();
        async move { swarm.pull_image(&i, PULL_DEADLINE).await }
    });
    let mut failed = Vec::new();
    for r in futures_join_all(pulls).await {
        if let Err(e) = r {
            failed.push(e);
        }
    }
    failed
}

/// Runs the futures concurrently (as tokio tasks: each owns its data).
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
