//! The order of one run: prepare the recipe and the app, the install tier (the one fresh
//! deploy), then every later tier as [`plan::decide`] says.

use std::path::PathBuf;
use std::time::Instant;

use super::job::{Job, Stop, Target, abra_infra, pull_failed};
use super::output::write_json;
use super::plan::{self, Decision, Facts};
use crate::contract::{Stage, files, short_sha};
use crate::overlay;
use crate::recipe::{self, Checkout, PublishedPort};
use crate::report::{CheckResult, TeardownReport, TierReport, Verdict};

impl Job {
    pub(super) async fn execute(&mut self) -> Result<(), Stop> {
        let (mut checkout, published) = self.prepare_recipe().await?;
        self.choose_base(&checkout).await?;
        self.note_opt_outs();
        self.create_app(&checkout).await?;
        let installed = self.install(&mut checkout, published).await?;
        self.planned(Stage::Upgrade, installed, None, None, &checkout)
            .await?;

        // --- Backup and restore, on the head.
        let earlier = self.verdicts();
        let stages = self.opts.stages.clone();
        let overlay_skips = self.overlay.skip_tiers.clone();
        let facts = Facts {
            requested: &stages,
            overlay_skips: &overlay_skips,
            earlier: &earlier,
            ..Facts::default()
        };
        let no_backups = if plan::needs_backup_review(&facts) {
            self.backup_labels_review().await?
        } else {
            None
        };
        let facts = Facts {
            no_backups: no_backups.as_deref(),
            ..facts
        };
        // Only with backup-bot-two on the swarm (a recipe that declares backups needs it).
        let backupbot_missing = if plan::needs_backupbot(&facts) {
            self.backupbot_missing().await?
        } else {
            None
        };
        for stage in [Stage::Backup, Stage::Restore] {
            self.planned(
                stage,
                installed,
                no_backups.as_deref(),
                backupbot_missing.as_deref(),
                &checkout,
            )
            .await?;
        }
        if let Some(why) = &backupbot_missing {
            self.progress.step(why);
        }
        Ok(())
    }

    /// The verdicts of the tiers run so far.
    fn verdicts(&self) -> Vec<(Stage, Verdict)> {
        self.tiers
            .iter()
            .filter_map(|t| Stage::from_name(&t.name).map(|s| (s, t.verdict)))
            .collect()
    }

    /// Runs, skips or errors one tier after the install, as the plan decides.
    async fn planned(
        &mut self,
        stage: Stage,
        installed: bool,
        no_backups: Option<&str>,
        backupbot_missing: Option<&str>,
        checkout: &Checkout,
    ) -> Result<(), Stop> {
        let earlier = self.verdicts();
        let decision = plan::decide(
            stage,
            &Facts {
                requested: &self.opts.stages,
                overlay_skips: &self.overlay.skip_tiers,
                base: self.base.as_deref(),
                installed,
                no_backups,
                backupbot_missing,
                earlier: &earlier,
            },
        );
        match decision {
            Decision::NotRequested => {}
            Decision::Skip(why) => self.tiers.push(TierReport::skipped(stage.name(), why)),
            Decision::Error { check, detail } => self.tiers.push(TierReport {
                name: stage.name().into(),
                verdict: Verdict::Error,
                duration_ms: 0,
                checks: vec![CheckResult::generic(check, Verdict::Error, detail)],
            }),
            Decision::Run => {
                let start = Instant::now();
                let checks = match stage {
                    Stage::Install => unreachable!("the install tier is not planned"),
                    Stage::Upgrade => self.upgrade(checkout).await?,
                    Stage::Backup => self.backup().await?,
                    Stage::Restore => self.restore().await?,
                };
                let mut checks = checks;
                if stage != Stage::Upgrade {
                    // The upgrade runs its overlay checks only on a converged deployment.
                    checks.extend(self.overlay_checks(stage).await?);
                }
                self.finish_tier(stage, start, checks);
            }
        }
        Ok(())
    }

    /// The recipe: clone, resolve, validate (bad input → exit 2 before any deploy). Returns the
    /// checkout and the host ports the head publishes.
    async fn prepare_recipe(&mut self) -> Result<(Checkout, Vec<PublishedPort>), Stop> {
        let recipes_dir = self.abra.abra_dir().join("recipes");
        std::fs::create_dir_all(&recipes_dir)
            .map_err(|e| Stop::Infra(format!("cannot create {}: {e}", recipes_dir.display())))?;
        // Cloned aside first: abra finds a recipe under its `TYPE=` name, read from the clone.
        let checkout_dir = recipes_dir.join(".incoming");
        let mut checkout = Checkout::clone_from(&self.opts.recipe_source, &checkout_dir)
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
        let tree = recipe::validate_recipe_tree(&checkout).map_err(|e| {
            Stop::BadInput(format!(
                "the recipe at {} is broken: {e}",
                short_sha(&self.head_sha)
            ))
        })?;
        self.recipe = tree.recipe.clone();
        checkout
            .rename(&recipes_dir.join(&self.recipe))
            .map_err(|e| Stop::Infra(e.to_string()))?;
        self.compose_policy(&checkout, &format!("head {}", short_sha(&self.head_sha)))?;
        self.load_overlay(&checkout)?;
        self.progress.step(&format!(
            "recipe {} head {}",
            self.recipe,
            short_sha(&self.head_sha)
        ));
        Ok((checkout, tree.compose.published))
    }

    /// The release the upgrade starts from: `--base`, else the newest release older than the
    /// head (none: the upgrade tier is skipped).
    async fn choose_base(&mut self, checkout: &Checkout) -> Result<(), Stop> {
        if !self.wants(Stage::Upgrade) {
            return Ok(());
        }
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
        Ok(())
    }

    fn note_opt_outs(&mut self) {
        for s in &self.overlay.skip_tiers {
            self.notes
                .push(format!("the overlay skips the {} tier", s.name()));
        }
        if !self.generic_enabled() {
            self.notes
                .push("generic checks are turned off for this run (explicit opt-out)".into());
        }
    }

    async fn create_app(&mut self, checkout: &Checkout) -> Result<(), Stop> {
        self.abra_version = self.abra.version().await.ok().filter(|v| !v.is_empty());
        self.inputs = self.record_inputs(checkout).await;
        self.abra.server_add_local().await.map_err(abra_infra)?;
        let server = self.opts.config.server.clone();
        self.abra
            .app_new(&self.recipe, &server, &self.domain)
            .await
            .map(drop)
            .map_err(abra_infra)
    }

    /// The install tier: the one fresh deploy, of the base when upgrading, else of the head.
    /// Returns whether the deployment converged.
    async fn install(
        &mut self,
        checkout: &mut Checkout,
        mut published: Vec<PublishedPort>,
    ) -> Result<bool, Stop> {
        // The head's images, known before the base is checked out.
        let head_images = if self.base.is_some() {
            checkout
                .checkout(&self.head_sha)
                .await
                .map_err(|e| Stop::Infra(e.to_string()))?;
            self.images_of(checkout)
        } else {
            Vec::new()
        };
        let start = Instant::now();
        let target = self.check_out_install_target(checkout).await?;
        if let Target::Release(_) = &target
            && let Ok(base_tree) = recipe::validate_recipe_tree(checkout)
        {
            published.extend(base_tree.compose.published);
        }
        self.lease_host_ports(&published).await?;
        // The env file and secrets of the version being deployed.
        self.configure_app(checkout).await?;
        let images = self.images_of(checkout);
        self.progress
            .step(&format!("install: pulling {} image(s)", images.len()));
        let failed =
            super::appcfg::pull_all(self.swarm.clone(), images, self.opts.host.no_prepull).await;
        // The head's pull runs while the install tier does.
        if !head_images.is_empty() {
            self.head_pull = Some(tokio::spawn(super::appcfg::pull_all(
                self.swarm.clone(),
                head_images,
                self.opts.host.no_prepull,
            )));
        }
        self.progress.step(&format!(
            "install: deploying {}",
            match &target {
                Target::Release(b) => format!("base release {b}"),
                Target::Head => format!("head {}", short_sha(&self.head_sha)),
            }
        ));
        let (mut checks, installed) = if failed.is_empty() {
            let deployed = self.deploy_and_check(&target).await?;
            (deployed.checks, deployed.converged)
        } else {
            (vec![pull_failed(&failed)], false)
        };
        checks.extend(self.overlay_checks(Stage::Install).await?);
        self.finish_tier(Stage::Install, start, checks);
        Ok(installed)
    }

    async fn check_out_install_target(&mut self, checkout: &Checkout) -> Result<Target, Stop> {
        Ok(match self.base.clone() {
            Some(b) => {
                checkout
                    .checkout(&b)
                    .await
                    .map_err(|e| Stop::Infra(e.to_string()))?;
                self.compose_policy(checkout, &format!("base release {b}"))?;
                Target::Release(b)
            }
            None => {
                checkout
                    .checkout(&self.head_sha)
                    .await
                    .map_err(|e| Stop::Infra(e.to_string()))?;
                Target::Head
            }
        })
    }

    fn load_overlay(&mut self, checkout: &Checkout) -> Result<(), Stop> {
        let h = &self.opts.config;
        let mut dirs: Vec<PathBuf> = self.opts.shipped_overlays.iter().cloned().collect();
        dirs.extend(h.overlay_dirs.iter().cloned());
        let local = checkout.dir.join(".cc-ci/overlay.toml");
        let local_exists = local.is_file() || checkout.dir.join(".cc-ci").is_dir();
        let allowed =
            overlay::repo_local_allowed(&h.repo_local_allowlist, &self.opts.recipe_source);
        let repo_local = if local_exists && allowed {
            self.notes.push(
                "repo-local tests (.cc-ci/) ran: the repository is on the repo-local allowlist"
                    .into(),
            );
            Some(local.as_path())
        } else {
            if local_exists {
                self.notes.push(
                    "repo-local tests (.cc-ci/) were ignored: the repository (owner/name) is not on the operator's repo-local allowlist".into(),
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
        // Progress is a courtesy to the daemon; the final report files decide the exit code.
        let _ = write_json(
            &self.opts.report_dir.join(files::PROGRESS_JSON),
            &partial,
            &self.redactor,
        );
    }
}
