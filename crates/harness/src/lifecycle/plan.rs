//! Which tiers run, are skipped or are an error: a pure function of what was asked for, what the
//! recipe's overlay says, what the recipe and the swarm provide, and the verdicts of the tiers
//! before. The orchestration asks it before each tier; no I/O here, so every branch has a unit
//! test.

use crate::contract::Stage;
use crate::report::Verdict;

const OVERLAY_SKIPS: &str = "skipped by the recipe's overlay";
const NO_BASE: &str = "no release older than the head exists, so there is nothing to upgrade from";
const UNHEALTHY: &str =
    "an earlier tier did not pass, so the deployment is not in a state worth backing up";
const BACKUP_DID_NOT_PASS: &str = "the backup tier did not pass, so there is nothing to restore";
const RESTORE_NEEDS_BACKUP: &str =
    "restore needs the backup tier: request both (--stages backup,restore)";

/// What is known when a tier is about to start.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// The stages asked for (`--stages`, `!testme`).
    pub requested: &'a [Stage],
    /// The tiers the recipe's overlay skips.
    pub overlay_skips: &'a [Stage],
    /// The release the upgrade starts from (`None`: the head has no older release).
    pub base: Option<&'a str>,
    /// Whether the fresh deployment converged in the install tier.
    pub installed: bool,
    /// Why the backup tiers have nothing to do (the recipe declares no backups).
    pub no_backups: Option<&'a str>,
    /// Why backup-bot-two cannot be used (only looked for when [`needs_backupbot`] says so).
    pub backupbot_missing: Option<&'a str>,
    /// The verdicts of the tiers that already ran, in order.
    pub earlier: &'a [(Stage, Verdict)],
}

/// What to do with one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not asked for: no tier report at all.
    NotRequested,
    Run,
    Skip(String),
    /// The tier cannot be tested: one erroring check named `check`.
    Error {
        check: &'static str,
        detail: String,
    },
}

impl Facts<'_> {
    fn wants(&self, s: Stage) -> bool {
        self.requested.contains(&s)
    }

    fn overlay_skips(&self, s: Stage) -> bool {
        self.overlay_skips.contains(&s)
    }

    fn verdict_of(&self, s: Stage) -> Option<Verdict> {
        self.earlier.iter().find(|(t, _)| *t == s).map(|(_, v)| *v)
    }

    /// Install and upgrade passed or were skipped: the deployment is worth backing up.
    fn healthy(&self) -> bool {
        self.earlier
            .iter()
            .filter(|(s, _)| matches!(s, Stage::Install | Stage::Upgrade))
            .all(|(_, v)| matches!(v, Verdict::Pass | Verdict::Skipped))
    }
}

/// Whether the recipe's backup labels need a look (before the backup tiers).
pub fn needs_backup_review(f: &Facts) -> bool {
    f.wants(Stage::Backup) || f.wants(Stage::Restore)
}

/// Whether backup-bot-two must be looked for: a backup tier will run on a healthy deployment of
/// a recipe that declares backups.
pub fn needs_backupbot(f: &Facts) -> bool {
    f.no_backups.is_none()
        && f.healthy()
        && [Stage::Backup, Stage::Restore]
            .iter()
            .any(|s| f.wants(*s) && !f.overlay_skips(*s))
}

/// The decision for `stage`. The install tier always runs: it is the one deploy every other tier
/// works on.
pub fn decide(stage: Stage, f: &Facts) -> Decision {
    match stage {
        Stage::Install => Decision::Run,
        Stage::Upgrade => upgrade(f),
        Stage::Backup | Stage::Restore => backup_or_restore(stage, f),
    }
}

fn upgrade(f: &Facts) -> Decision {
    if !f.wants(Stage::Upgrade) {
        return Decision::NotRequested;
    }
    if f.overlay_skips(Stage::Upgrade) {
        return Decision::Skip(OVERLAY_SKIPS.into());
    }
    let Some(base) = f.base else {
        return Decision::Skip(NO_BASE.into());
    };
    if f.installed && f.verdict_of(Stage::Install) == Some(Verdict::Pass) {
        Decision::Run
    } else {
        Decision::Error {
            check: "base-installs",
            detail: format!(
                "the base release {base} did not install (see the install tier), so the upgrade could not be tested"
            ),
        }
    }
}

fn backup_or_restore(stage: Stage, f: &Facts) -> Decision {
    if !f.wants(stage) {
        return Decision::NotRequested;
    }
    if f.overlay_skips(stage) {
        return Decision::Skip(OVERLAY_SKIPS.into());
    }
    if let Some(why) = f.backupbot_missing {
        return Decision::Error {
            check: "infrastructure",
            detail: why.into(),
        };
    }
    if let Some(why) = f.no_backups {
        return Decision::Skip(why.into());
    }
    if !f.healthy() {
        return Decision::Skip(UNHEALTHY.into());
    }
    if stage == Stage::Restore && f.verdict_of(Stage::Backup) != Some(Verdict::Pass) {
        return Decision::Skip(
            if f.wants(Stage::Backup) {
                BACKUP_DID_NOT_PASS
            } else {
                RESTORE_NEEDS_BACKUP
            }
            .into(),
        );
    }
    Decision::Run
}

#[cfg(test)]
mod tests {
    use super::*;
    use Stage::*;
    use Verdict::*;

    const ALL: &[Stage] = &Stage::ALL;

    fn facts<'a>(earlier: &'a [(Stage, Verdict)]) -> Facts<'a> {
        Facts {
            requested: ALL,
            base: Some("1.0.0+1"),
            installed: true,
            earlier,
            ..Facts::default()
        }
    }

    fn skipped(d: Decision) -> String {
        match d {
            Decision::Skip(why) => why,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn install_always_runs_and_unrequested_tiers_leave_no_report() {
        let only_install = Facts {
            requested: &[Install],
            ..facts(&[])
        };
        assert_eq!(decide(Install, &only_install), Decision::Run);
        for s in [Upgrade, Backup, Restore] {
            assert_eq!(decide(s, &only_install), Decision::NotRequested, "{s}");
        }
        assert!(!needs_backup_review(&only_install));
        assert!(!needs_backupbot(&only_install));
    }

    #[test]
    fn upgrade_runs_after_a_passing_install_of_the_base() {
        assert_eq!(decide(Upgrade, &facts(&[(Install, Pass)])), Decision::Run);
    }

    #[test]
    fn upgrade_without_an_older_release_is_skipped() {
        let f = Facts {
            base: None,
            ..facts(&[(Install, Pass)])
        };
        assert!(skipped(decide(Upgrade, &f)).contains("nothing to upgrade from"));
    }

    #[test]
    fn the_overlay_skip_wins_over_everything_else() {
        let f = Facts {
            overlay_skips: &[Upgrade, Restore],
            base: None,
            backupbot_missing: Some("no backup-bot-two"),
            ..facts(&[(Install, Fail)])
        };
        assert_eq!(skipped(decide(Upgrade, &f)), OVERLAY_SKIPS);
        assert_eq!(skipped(decide(Restore, &f)), OVERLAY_SKIPS);
    }

    #[test]
    fn a_base_that_did_not_install_makes_the_upgrade_an_error() {
        for (installed, verdict) in [(false, Pass), (true, Fail), (true, Error)] {
            let earlier = [(Install, verdict)];
            let f = Facts {
                installed,
                ..facts(&earlier)
            };
            match decide(Upgrade, &f) {
                Decision::Error { check, detail } => {
                    assert_eq!(check, "base-installs");
                    assert!(detail.contains("1.0.0+1"), "{detail}");
                }
                other => panic!("{installed} {verdict:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn backup_bot_is_looked_for_only_when_a_backup_tier_would_run() {
        let healthy = [(Install, Pass), (Upgrade, Skipped)];
        assert!(needs_backupbot(&facts(&healthy)));
        assert!(!needs_backupbot(&facts(&[
            (Install, Pass),
            (Upgrade, Fail)
        ])));
        let no_backups = Facts {
            no_backups: Some("declares no backups"),
            ..facts(&healthy)
        };
        assert!(!needs_backupbot(&no_backups));
        let both_skipped = Facts {
            overlay_skips: &[Backup, Restore],
            ..facts(&healthy)
        };
        assert!(!needs_backupbot(&both_skipped));
        assert!(needs_backup_review(&both_skipped));
    }

    #[test]
    fn missing_backup_bot_is_an_infrastructure_error_of_each_requested_tier() {
        let f = Facts {
            backupbot_missing: Some("backup-bot-two is not deployed"),
            ..facts(&[(Install, Pass), (Upgrade, Pass)])
        };
        for s in [Backup, Restore] {
            assert_eq!(
                decide(s, &f),
                Decision::Error {
                    check: "infrastructure",
                    detail: "backup-bot-two is not deployed".into()
                }
            );
        }
    }

    #[test]
    fn a_recipe_without_backups_skips_both_with_the_reason() {
        let f = Facts {
            no_backups: Some("no service sets backupbot.backup=true"),
            ..facts(&[(Install, Pass)])
        };
        assert_eq!(
            skipped(decide(Backup, &f)),
            "no service sets backupbot.backup=true"
        );
        assert_eq!(
            skipped(decide(Restore, &f)),
            "no service sets backupbot.backup=true"
        );
    }

    #[test]
    fn an_unhealthy_deployment_is_not_backed_up() {
        let f = facts(&[(Install, Pass), (Upgrade, Fail)]);
        assert_eq!(skipped(decide(Backup, &f)), UNHEALTHY);
        assert_eq!(skipped(decide(Restore, &f)), UNHEALTHY);
    }

    #[test]
    fn restore_needs_a_passing_backup() {
        let ran = [(Install, Pass), (Upgrade, Pass), (Backup, Pass)];
        assert_eq!(decide(Backup, &facts(&ran[..2])), Decision::Run);
        assert_eq!(decide(Restore, &facts(&ran)), Decision::Run);
        // A failed backup does not make the deployment "unhealthy": the reason names the backup.
        let failed = [(Install, Pass), (Upgrade, Pass), (Backup, Fail)];
        assert_eq!(
            skipped(decide(Restore, &facts(&failed))),
            BACKUP_DID_NOT_PASS
        );
        let restore_only = Facts {
            requested: &[Install, Restore],
            ..facts(&[(Install, Pass)])
        };
        assert_eq!(
            skipped(decide(Restore, &restore_only)),
            RESTORE_NEEDS_BACKUP
        );
    }
}
