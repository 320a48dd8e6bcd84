//! The tiers after the install: upgrade in place, backup, restore; and what backup-bot-two's
//! labels select.

use super::*;

impl Job {
    pub(super) async fn upgrade(
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
        // The head's images were pulled while the install tier ran.
        if let Some(pull) = self.head_pull.take() {
            self.progress.step("upgrade: waiting for the head's images");
            let failed = pull.await.unwrap_or_default();
            if !failed.is_empty() {
                out.push(pull_failed(&failed));
                return Ok(());
            }
        }
        // What an operator adds for the new version: env keys, secrets.
        if !self.configure_head(checkout, out).await? {
            return Ok(());
        }
        self.progress.step(&format!(
            "upgrade: chaos deploy of head {}",
            short_sha(&self.head_sha)
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

    /// Looks at the deployed stack's backupbot labels before the backup tiers: the reason to
    /// skip both when the recipe declares no backups, and a note for labels backup-bot-two ignores.
    pub(super) async fn backup_labels_review(&mut self) -> Result<Option<String>, Stop> {
        let snap = self.engine.snapshot(&self.stack).await?;
        let (skip, notes) = backup_labels_review(&snap);
        self.notes.extend(notes);
        Ok(skip)
    }

    pub(super) async fn backup(&mut self, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
        // A hook in a dying container loses data silently: wait until every update has settled.
        if let Err(why) = self.wait_converged().await? {
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
        let result = self.abra.backup_create(&self.domain).await;
        let check = self
            .abra_step("backup-create", result, |o| tail(&o.output, 1))
            .await?;
        let created = check.verdict == Verdict::Pass;
        out.push(check);
        if !created {
            return Ok(());
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
                                Err(e) if e.is_unreachable() => return Err(e.into()),
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

    pub(super) async fn restore(&mut self, out: &mut Vec<CheckResult>) -> Result<(), Stop> {
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
        let result = self.abra.restore(&self.domain).await;
        let check = self
            .abra_step("restore", result, |_| "abra app restore succeeded".into())
            .await?;
        let restored = check.verdict == Verdict::Pass;
        out.push(check);
        if !restored {
            return Ok(());
        }
        if self.generic_enabled() {
            match self.wait_converged().await? {
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
    if labels.get(BACKUP_ENABLE_LABEL) != Some(&"true") {
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

/// The label that enables backup-bot-two for a stack.
pub const BACKUP_ENABLE_LABEL: &str = "backupbot.backup";
/// backup-bot-1.x's path label; 2.x backs up whole volumes and ignores it.
pub const OLD_BACKUP_PATH_LABEL: &str = "backupbot.backup.path";

/// (why backup and restore are skipped, notes for the report) from a deployed stack's labels:
/// skipped when no service sets `backupbot.backup=true` (the recipe declares no backups); a note
/// for each service still using the old `backupbot.backup.path` label.
pub fn backup_labels_review(snap: &StackSnapshot) -> (Option<String>, Vec<String>) {
    if snap.services.is_empty() {
        // Nothing deployed: the tiers report that themselves.
        return (None, Vec::new());
    }
    let notes: Vec<String> = snap
        .services
        .iter()
        .filter_map(|s| {
            s.labels.get(OLD_BACKUP_PATH_LABEL).map(|p| {
                format!(
                    "service {} uses the old label {OLD_BACKUP_PATH_LABEL}={p}: backup-bot-two 2.x ignores it and backs up whole volumes; \
                     limit a volume with backupbot.backup.volumes.<volume>.path instead",
                    s.short_name
                )
            })
        })
        .collect();
    let enabled = snap
        .services
        .iter()
        .any(|s| s.labels.get(BACKUP_ENABLE_LABEL).map(String::as_str) == Some("true"));
    let skip = (!enabled).then(|| {
        format!(
            "the recipe declares no backups: no service has the label {BACKUP_ENABLE_LABEL}=true, so backup-bot-two would back up nothing"
        )
    });
    (skip, notes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::{service, task};
    use crate::checks::{Health, MountInfo};

    #[test]
    fn no_backupbot_labels_skip_backups_and_old_labels_get_a_note() {
        let mut app = service("app", vec![task("1", "running", Health::Healthy)]);
        let snap = |app: &crate::checks::ServiceState| StackSnapshot {
            services: vec![app.clone()],
        };
        let (skip, notes) = backup_labels_review(&snap(&app));
        assert!(skip.unwrap().contains("backupbot.backup=true"));
        assert!(notes.is_empty());
        app.labels
            .insert(OLD_BACKUP_PATH_LABEL.into(), "/var/lib/app".into());
        app.labels.insert(BACKUP_ENABLE_LABEL.into(), "true".into());
        let (skip, notes) = backup_labels_review(&snap(&app));
        assert_eq!(skip, None);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("service app") && notes[0].contains("/var/lib/app"),
            "{notes:?}"
        );
        app.labels
            .insert(BACKUP_ENABLE_LABEL.into(), "false".into());
        assert!(backup_labels_review(&snap(&app)).0.is_some());
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
}
