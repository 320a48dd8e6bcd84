//! What backup-bot-two's labels select (reference: "Backups"), pure: the volumes and paths a
//! snapshot must hold, labels that name no volume, and whether the recipe declares backups at all.

use std::collections::BTreeMap;

use crate::checks::StackSnapshot;

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
