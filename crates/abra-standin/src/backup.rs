//! `app backup create|list|ls` and `app restore` with backup-bot-two's label semantics. Snapshots
//! are plain copies under `$ABRA_DIR/backups/<domain>/<snapshot-id>/<volume>/...` (no restic): the
//! stand-in runs as root on the single swarm node, so volumes are read at their mountpoints.
//!
//! Labels (read from every service of the stack, merged):
//! - `backupbot.backup=true` on a service enables backups for the stack (none → error);
//! - every named volume the stack's services mount is backed up, unless
//!   `backupbot.backup.volumes.<volume>=false`;
//! - `backupbot.backup.volumes.<volume>.path=a,b` limits a volume to those paths (relative to its
//!   root); a label naming a volume the stack does not have is an error;
//! - `backupbot.backup.pre-hook`/`post-hook` and `backupbot.restore.pre-hook`/`post-hook` run as
//!   `sh -c <hook>` in a running container of the service that carries them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use cc_ci_engine_api::labels::backupbot::{BACKUPBOT_LABEL_ENV, backupbot_label};

use crate::docker::{self, ServiceExt, docker};
use crate::state::{AbraDir, stack_name};

/// Like abra: backups go through backup-bot-two, found as a running service labelled
/// `backupbot_label()`; without one there is nothing to back up with.
fn require_backupbot() -> Result<()> {
    // Like abra, the stand-in inherits the override from cc-ci.
    let (key, value) = backupbot_label(std::env::var(BACKUPBOT_LABEL_ENV).ok().as_deref());
    let ids = docker::lines(
        &docker([
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("label={key}={value}"),
        ])
        .run()?,
    );
    let tasks = docker::service_tasks(&ids)?;
    if !tasks
        .iter()
        .any(|t| t.desired_state() == "running" && t.state() == "running")
    {
        bail!(
            "no backup-bot-two service is running on this server (none labelled {key}={value}): deploy backup-bot-two first"
        );
    }
    Ok(())
}

const ENABLE: &str = "backupbot.backup";
const VOLUMES_PREFIX: &str = "backupbot.backup.volumes.";
pub const BACKUP_PRE: &str = "backupbot.backup.pre-hook";
pub const BACKUP_POST: &str = "backupbot.backup.post-hook";
pub const RESTORE_PRE: &str = "backupbot.restore.pre-hook";
pub const RESTORE_POST: &str = "backupbot.restore.post-hook";

/// A service as the backup plan needs it.
#[derive(Debug, Clone)]
pub struct ServiceLabels {
    /// Full service name, `<stack>_<service>`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Short names of the named volumes it mounts.
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlan {
    pub name: String,
    /// `None`: the whole volume.
    pub paths: Option<Vec<PathBuf>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub volumes: Vec<VolumePlan>,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

/// A path from a label, relative to the volume root; `..` and empty paths are refused.
fn relative_path(raw: &str) -> Result<Option<PathBuf>> {
    let p = Path::new(raw.trim().trim_start_matches('/'));
    if p.as_os_str().is_empty() || p == Path::new(".") {
        return Ok(None);
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("path `{raw}` must stay inside the volume (no `..`)");
    }
    Ok(Some(p.to_path_buf()))
}

/// What a backup of the stack covers, from its services' labels.
pub fn plan(stack: &str, services: &[ServiceLabels]) -> Result<Plan> {
    if !services
        .iter()
        .any(|s| s.labels.get(ENABLE).is_some_and(|v| truthy(v)))
    {
        bail!("backups are not enabled for {stack}: no service has the label {ENABLE}=true");
    }
    let all: BTreeSet<&str> = services
        .iter()
        .flat_map(|s| s.volumes.iter().map(String::as_str))
        .collect();
    let mut excluded = BTreeSet::new();
    let mut paths: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for s in services {
        for (key, value) in &s.labels {
            let Some(rest) = key.strip_prefix(VOLUMES_PREFIX) else {
                continue;
            };
            let (volume, is_path) = match rest.strip_suffix(".path") {
                Some(v) => (v, true),
                None => (rest, false),
            };
            if !all.contains(volume) {
                bail!(
                    "label {key} on service {} names volume `{volume}`, which {stack} does not have (its volumes: {})",
                    s.name,
                    if all.is_empty() {
                        "none".to_string()
                    } else {
                        all.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                );
            }
            if is_path {
                let list = paths.entry(volume.to_string()).or_default();
                for raw in value.split(',') {
                    let p = relative_path(raw).with_context(|| format!("label {key}"))?;
                    if let Some(p) = p.filter(|p| !list.contains(p)) {
                        list.push(p);
                    }
                }
            } else if !truthy(value) {
                excluded.insert(volume.to_string());
            }
        }
    }
    Ok(Plan {
        volumes: all
            .into_iter()
            .filter(|v| !excluded.contains(*v))
            .map(|v| VolumePlan {
                name: v.to_string(),
                paths: paths.get(v).cloned().filter(|p| !p.is_empty()),
            })
            .collect(),
    })
}

fn stack_services(stack: &str) -> Result<Vec<ServiceLabels>> {
    let prefix = format!("{stack}_");
    let services = docker::stack_services(stack)?;
    if services.is_empty() {
        bail!("{stack} is not deployed: deploy it before backing up or restoring");
    }
    let mut out: Vec<ServiceLabels> = services
        .iter()
        .map(|s| ServiceLabels {
            name: s.name(),
            labels: s.labels().into_iter().collect(),
            volumes: s
                .volume_sources()
                .into_iter()
                .map(|v| v.strip_prefix(&prefix).map(String::from).unwrap_or(v))
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn volume_root(stack: &str, volume: &str) -> Result<PathBuf> {
    let full = format!("{stack}_{volume}");
    let mp = docker::volume_mountpoint(&full)?
        .with_context(|| format!("volume {full} does not exist"))?;
    Ok(PathBuf::from(mp))
}

/// Runs the hooks named `key` of every service that carries one, in its running container.
fn run_hooks(services: &[ServiceLabels], key: &str) -> Result<()> {
    for s in services {
        let Some(hook) = s.labels.get(key).filter(|h| !h.trim().is_empty()) else {
            continue;
        };
        let container = docker::running_container(&s.name)?.with_context(|| {
            format!(
                "{key} of service {} cannot run: the service has no running container",
                s.name
            )
        })?;
        println!("running {key} in {}: {hook}", s.name);
        let (ok, output) = docker::exec_sh(&container, hook)?;
        for line in output.lines() {
            println!("  {line}");
        }
        if !ok {
            bail!("{key} of service {} failed: `{hook}`", s.name);
        }
    }
    Ok(())
}

pub fn create(dir: &AbraDir, domain: &str) -> Result<()> {
    dir.env_file(domain)?;
    require_backupbot()?;
    let stack = stack_name(domain);
    let services = stack_services(&stack)?;
    let plan = plan(&stack, &services)?;
    run_hooks(&services, BACKUP_PRE)?;

    let base = dir.backups(domain)?;
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let (id, snap) = new_snapshot_dir(&base)?;
    let copied = copy_plan(&stack, &plan, &snap);
    let copied = match copied.and_then(|n| run_hooks(&services, BACKUP_POST).map(|_| n)) {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_dir_all(&snap);
            return Err(e);
        }
    };
    if copied.files == 0 {
        println!("warning: snapshot {id} holds no files");
    }
    println!(
        "snapshot {id} created: {} files, {} bytes, volumes: {}",
        copied.files,
        copied.bytes,
        plan.volumes
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{id}");
    Ok(())
}

fn copy_plan(stack: &str, plan: &Plan, snap: &Path) -> Result<Counts> {
    let mut counts = Counts::default();
    for v in &plan.volumes {
        let root = volume_root(stack, &v.name)?;
        let dest = snap.join(&v.name);
        fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
        match &v.paths {
            None => copy_children(&root, &dest, &mut counts)?,
            Some(paths) => {
                for p in paths {
                    let src = root.join(p);
                    if fs::symlink_metadata(&src).is_err() {
                        println!(
                            "warning: path {} is not in volume {stack}_{}",
                            p.display(),
                            v.name
                        );
                        continue;
                    }
                    check_inside(&root, &src)?;
                    let to = dest.join(p);
                    if let Some(parent) = to.parent() {
                        fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    copy_entry(&src, &to, &mut counts)?;
                }
            }
        }
    }
    Ok(counts)
}

/// Refuses a source whose parent directories leave the volume through symlinks.
fn check_inside(root: &Path, src: &Path) -> Result<()> {
    let parent = src.parent().unwrap_or(src);
    let real_root =
        fs::canonicalize(root).with_context(|| format!("cannot resolve {}", root.display()))?;
    let real_parent =
        fs::canonicalize(parent).with_context(|| format!("cannot resolve {}", parent.display()))?;
    if !real_parent.starts_with(&real_root) {
        bail!(
            "{} leads out of its volume through a symlink",
            src.display()
        );
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Counts {
    files: u64,
    bytes: u64,
}

fn copy_children(from: &Path, to: &Path, counts: &mut Counts) -> Result<()> {
    let entries = fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", from.display()))?;
        copy_entry(&e.path(), &to.join(e.file_name()), counts)?;
    }
    Ok(())
}

/// Copies a file, symlink or directory tree, replacing whatever is at `to` (without following
/// symlinks found there), keeping modes and owners.
fn copy_entry(from: &Path, to: &Path, counts: &mut Counts) -> Result<()> {
    let meta =
        fs::symlink_metadata(from).with_context(|| format!("cannot stat {}", from.display()))?;
    let existing = fs::symlink_metadata(to).ok();
    let ft = meta.file_type();
    if ft.is_dir() {
        if existing.as_ref().is_some_and(|m| !m.file_type().is_dir()) {
            fs::remove_file(to).with_context(|| format!("cannot replace {}", to.display()))?;
        }
        if !to.is_dir() {
            fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
        }
        copy_children(from, to, counts)?;
    } else {
        if let Some(m) = existing {
            let r = if m.file_type().is_dir() {
                fs::remove_dir_all(to)
            } else {
                fs::remove_file(to)
            };
            r.with_context(|| format!("cannot replace {}", to.display()))?;
        }
        if ft.is_symlink() {
            let target =
                fs::read_link(from).with_context(|| format!("cannot read {}", from.display()))?;
            symlink(&target, to).with_context(|| format!("cannot create {}", to.display()))?;
        } else if ft.is_file() {
            counts.bytes += fs::copy(from, to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        } else {
            println!(
                "warning: skipped {} (not a file, directory or symlink)",
                from.display()
            );
            return Ok(());
        }
        counts.files += 1;
    }
    lchown(to, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("cannot set the owner of {}", to.display()))?;
    if !ft.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .with_context(|| format!("cannot set the mode of {}", to.display()))?;
    }
    Ok(())
}

/// A new snapshot directory named by the current UTC time, so ids sort oldest first.
fn new_snapshot_dir(base: &Path) -> Result<(String, PathBuf)> {
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?;
        let id = snapshot_id(now.as_secs(), now.subsec_nanos());
        let p = base.join(&id);
        match fs::create_dir(&p) {
            Ok(()) => return Ok((id, p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
        }
    }
}

/// `YYYYMMDDTHHMMSSZ-<nanoseconds>`.
fn snapshot_id(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{nanos:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn snapshot_ids(dir: &AbraDir, domain: &str) -> Result<Vec<String>> {
    let base = dir.backups(domain)?;
    let mut ids: Vec<String> = match fs::read_dir(&base) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", base.display())),
    };
    ids.sort();
    Ok(ids)
}

pub fn list(dir: &AbraDir, domain: &str) -> Result<()> {
    dir.env_file(domain)?;
    for id in snapshot_ids(dir, domain)? {
        println!("{id}");
    }
    Ok(())
}

fn snapshot_path(dir: &AbraDir, domain: &str, id: &str) -> Result<PathBuf> {
    if !snapshot_ids(dir, domain)?.iter().any(|s| s == id) {
        bail!("`{domain}` has no snapshot `{id}`: see `abra app backup list {domain}`");
    }
    Ok(dir.backups(domain)?.join(id))
}

pub fn ls(dir: &AbraDir, domain: &str, id: &str) -> Result<()> {
    dir.env_file(domain)?;
    let snap = snapshot_path(dir, domain, id)?;
    let mut files = Vec::new();
    walk_files(&snap, Path::new(""), &mut files)?;
    files.sort();
    for f in files {
        println!("{f}");
    }
    Ok(())
}

fn walk_files(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let here = root.join(rel);
    for e in fs::read_dir(&here).with_context(|| format!("cannot read {}", here.display()))? {
        let e = e.with_context(|| format!("cannot read {}", here.display()))?;
        let r = rel.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_files(root, &r, out)?;
        } else {
            out.push(r.display().to_string());
        }
    }
    Ok(())
}

pub fn restore(dir: &AbraDir, domain: &str, snapshot: Option<&str>) -> Result<()> {
    dir.env_file(domain)?;
    require_backupbot()?;
    let stack = stack_name(domain);
    let id = match snapshot {
        Some(id) => id.to_string(),
        None => snapshot_ids(dir, domain)?.pop().with_context(|| {
            format!("`{domain}` has no snapshots: run `abra app backup create {domain}` first")
        })?,
    };
    let snap = snapshot_path(dir, domain, &id)?;
    let services = stack_services(&stack)?;
    // Every volume of the snapshot must exist before anything is touched.
    let mut targets = Vec::new();
    for e in fs::read_dir(&snap).with_context(|| format!("cannot read {}", snap.display()))? {
        let e = e.with_context(|| format!("cannot read {}", snap.display()))?;
        let volume = e.file_name().to_string_lossy().into_owned();
        targets.push((e.path(), volume_root(&stack, &volume)?, volume));
    }
    targets.sort();
    run_hooks(&services, RESTORE_PRE)?;
    let mut counts = Counts::default();
    for (from, root, _) in &targets {
        copy_children(from, root, &mut counts)?;
    }
    run_hooks(&services, RESTORE_POST)?;
    println!(
        "snapshot {id} restored: {} files, {} bytes into volumes: {}",
        counts.files,
        counts.bytes,
        targets
            .iter()
            .map(|t| t.2.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, labels: &[(&str, &str)], volumes: &[&str]) -> ServiceLabels {
        ServiceLabels {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn all_volumes_unless_excluded_paths_limit() {
        let services = [
            svc("s_app", &[("backupbot.backup", "true")], &["data", "cache"]),
            svc(
                "s_db",
                &[
                    ("backupbot.backup.volumes.cache", "false"),
                    (
                        "backupbot.backup.volumes.db.path",
                        "dump.sql, /extra/dir,dump.sql",
                    ),
                ],
                &["db"],
            ),
        ];
        let p = plan("s", &services).unwrap();
        assert_eq!(
            p.volumes,
            vec![
                VolumePlan {
                    name: "data".into(),
                    paths: None
                },
                VolumePlan {
                    name: "db".into(),
                    paths: Some(vec!["dump.sql".into(), "extra/dir".into()])
                },
            ]
        );
    }

    #[test]
    fn not_enabled_or_unknown_volume_or_escape_is_an_error() {
        let e = plan("s", &[svc("s_app", &[], &["data"])]).unwrap_err();
        assert!(e.to_string().contains("backupbot.backup=true"), "{e}");
        let e = plan(
            "s",
            &[svc(
                "s_app",
                &[
                    ("backupbot.backup", "true"),
                    ("backupbot.backup.volumes.uploads.path", "files"),
                ],
                &["data"],
            )],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("`uploads`") && e.to_string().contains("data"),
            "{e}"
        );
        let e = plan(
            "s",
            &[svc(
                "s_app",
                &[
                    ("backupbot.backup", "true"),
                    ("backupbot.backup.volumes.data.path", "../etc"),
                ],
                &["data"],
            )],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("inside the volume"), "{e:#}");
    }

    #[test]
    fn snapshot_ids_are_utc_and_sort_by_time() {
        assert_eq!(snapshot_id(0, 5), "19700101T000000Z-000000005");
        assert_eq!(snapshot_id(1_700_000_000, 0), "20231114T221320Z-000000000");
        assert_eq!(snapshot_id(951_782_400, 0), "20000229T000000Z-000000000");
        assert!(snapshot_id(1_700_000_000, 999) < snapshot_id(1_700_000_001, 0));
    }

    #[test]
    fn copy_replaces_without_following_symlinks() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/f"), "new").unwrap();
        fs::write(src.path().join("top"), "t").unwrap();
        // In the destination `d` is a symlink leading elsewhere: it must be replaced, not followed.
        symlink(outside.path(), dst.path().join("d")).unwrap();
        fs::write(dst.path().join("keep"), "k").unwrap();
        let mut c = Counts::default();
        copy_children(src.path(), dst.path(), &mut c).unwrap();
        assert_eq!((c.files, c.bytes), (2, 4));
        assert_eq!(fs::read_to_string(dst.path().join("d/f")).unwrap(), "new");
        assert!(!outside.path().join("f").exists());
        assert_eq!(fs::read_to_string(dst.path().join("keep")).unwrap(), "k");
    }
}
