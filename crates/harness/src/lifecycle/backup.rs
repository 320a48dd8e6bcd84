//! The backup tier: `abra app backup create` on the head, and what the snapshot must hold
//! (what backup-bot-two's labels select, non-empty, with the canaries).

use super::backup_labels::{backup_labels_review, backup_selection, unknown_backup_volumes};
use super::data::{CANARY_FILE, Canaries, mount_of};
use super::deploy::Settled;
use super::job::{Job, Stop, tail};
use crate::checks::StackSnapshot;
use crate::contract::Stage;
use crate::report::{CheckResult, Verdict};

impl Job {
    /// Looks at the deployed stack's backupbot labels before the backup tiers: the reason to
    /// skip both when the recipe declares no backups, and a note for labels backup-bot-two ignores.
    pub(super) async fn backup_labels_review(&mut self) -> Result<Option<String>, Stop> {
        let snap = self.swarm.snapshot(&self.stack).await?;
        let (skip, notes) = backup_labels_review(&snap);
        self.notes.extend(notes);
        Ok(skip)
    }

    pub(super) async fn backup(&mut self) -> Result<Vec<CheckResult>, Stop> {
        let mut out = Vec::new();
        // A hook in a dying container loses data silently: wait until every update has settled.
        if let Settled::Not(why) = self.wait_converged().await? {
            out.push(CheckResult::generic(
                "settled",
                Verdict::Fail,
                format!("services did not settle before the backup: {why}"),
            ));
            return Ok(out);
        }
        if self.generic_enabled() {
            out.push(self.backup_labels_check().await?);
        }
        let canaries = self.generic_enabled() && self.overlay.canaries;
        if canaries {
            if let Canaries::NotWritten(e) = self.write_canaries(Some(true)).await? {
                out.push(CheckResult::generic(
                    "snapshot-content",
                    Verdict::Error,
                    format!("could not write canaries before the backup: {e}"),
                ));
            }
            self.backed_up = self.canaries.clone();
        }
        if !self.wants(Stage::Upgrade) || self.base.is_none() {
            out.extend(self.seed_data().await?);
        }
        self.progress.step("backup: abra app backup create");
        let result = self.abra.backup_create(&self.domain).await;
        let check = self
            .abra_step("backup-create", result, |o| tail(&o.output, 1))
            .await?;
        let created = check.verdict == Verdict::Pass;
        out.push(check);
        if !created || !self.generic_enabled() {
            return Ok(out);
        }
        let (exists, files) = self.snapshot_exists().await;
        out.push(exists);
        if let Some(files) = files {
            out.push(self.snapshot_content(&files, canaries).await?);
        }
        Ok(out)
    }

    async fn backup_labels_check(&self) -> Result<CheckResult, Stop> {
        let snap = self.swarm.snapshot(&self.stack).await?;
        let unknown = unknown_backup_volumes(&snap, &self.stack);
        Ok(if unknown.is_empty() {
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
        })
    }

    /// The `snapshot-exists` check, and the newest snapshot's files when it passed.
    async fn snapshot_exists(&self) -> (CheckResult, Option<Vec<String>>) {
        let fail = |d: String| {
            (
                CheckResult::generic("snapshot-exists", Verdict::Fail, d),
                None,
            )
        };
        let snapshots = match self.abra.backup_list(&self.domain).await {
            Ok(s) => s,
            Err(e) => return fail(e.to_string()),
        };
        let Some(latest) = snapshots.last() else {
            return fail("abra reported success but lists no snapshot".into());
        };
        let files = match self.abra.backup_files(&self.domain, latest).await {
            Ok(f) => f,
            Err(e) => return fail(e.to_string()),
        };
        if files.is_empty() {
            return fail(format!("snapshot {latest} holds no files"));
        }
        let check = CheckResult::generic(
            "snapshot-exists",
            Verdict::Pass,
            format!("snapshot {latest}: {} files", files.len()),
        );
        (check, Some(files))
    }

    /// The snapshot holds what the backupbot labels select, non-empty at the source, with the
    /// canaries written before the backup.
    async fn snapshot_content(
        &self,
        files: &[String],
        canaries: bool,
    ) -> Result<CheckResult, Stop> {
        let snap = self.swarm.snapshot(&self.stack).await?;
        let selection = backup_selection(&snap, &self.stack);
        let mut problems = Vec::new();
        for (vol, paths) in &selection {
            let short_vol = vol.strip_prefix(&format!("{}_", self.stack)).unwrap_or(vol);
            match paths {
                None => {
                    problems.extend(self.whole_volume_problems(files, vol, short_vol, canaries))
                }
                Some(paths) => {
                    for p in paths {
                        let p = p.trim_matches('/');
                        if let Some(problem) =
                            self.path_problem(&snap, files, vol, short_vol, p).await?
                        {
                            problems.push(problem);
                        }
                    }
                }
            }
        }
        Ok(if problems.is_empty() {
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
        })
    }

    fn whole_volume_problems(
        &self,
        files: &[String],
        vol: &str,
        short_vol: &str,
        canaries: bool,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if !files
            .iter()
            .any(|f| f.starts_with(&format!("{short_vol}/")))
        {
            problems.push(format!(
                "volume {short_vol} is selected for backup but the snapshot holds nothing of it"
            ));
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
        problems
    }

    /// What is wrong with path `p` of a volume backed up by path: missing from the snapshot, or
    /// empty at the source (a pre-hook that dumps nothing is a broken backup).
    async fn path_problem(
        &self,
        snap: &StackSnapshot,
        files: &[String],
        vol: &str,
        short_vol: &str,
        p: &str,
    ) -> Result<Option<String>, Stop> {
        if !files.iter().any(|f| {
            f == &format!("{short_vol}/{p}") || f.starts_with(&format!("{short_vol}/{p}/"))
        }) {
            return Ok(Some(format!(
                "path {p} of volume {short_vol} (backupbot label) is not in the snapshot"
            )));
        }
        let Some((container, target)) = mount_of(snap, vol) else {
            return Ok(None);
        };
        let full = format!("{target}/{p}");
        match self.swarm.has_data(&container, &full).await {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(format!(
                "path {p} of volume {short_vol} holds no data (empty or missing at backup time; does the pre-hook dump anything?)"
            ))),
            Err(e) if e.is_unreachable() => Err(e.into()),
            Err(e) => Ok(Some(format!("cannot inspect {full}: {e}"))),
        }
    }
}
