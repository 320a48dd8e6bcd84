//! Tracked results and their freshness now: the latest `run.json` with recorded inputs per recipe
//! repository, ref and stages, found under report folders (the daemon's `<state>/runs/*`, or
//! folders of hand runs), each re-resolved without deploying (`cc-ci drift`, the daemon's sweep).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::HarnessConfig;
use crate::engine::Engine;
use crate::fresh::{self, Freshness};
use crate::inputs::{self, Inputs, Want};
use crate::report::RunReport;

/// One result whose inputs are known.
#[derive(Debug, Clone, Serialize)]
pub struct Tracked {
    /// The report folder holding its `run.json`.
    pub dir: PathBuf,
    pub report: RunReport,
    pub inputs: Inputs,
    /// When `run.json` was written (seconds since the epoch).
    pub written_secs: u64,
}

/// Reads `<dir>/run.json` when it holds inputs.
pub fn read_result(dir: &Path) -> Option<Tracked> {
    let path = dir.join("run.json");
    let text = crate::safefs::read_regular(&path, "run.json", 16 << 20, false).ok()?;
    let report: RunReport = serde_json::from_str(&text).ok()?;
    let inputs = report.inputs.clone()?;
    let written_secs = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Some(Tracked {
        dir: dir.to_path_buf(),
        report,
        inputs,
        written_secs,
    })
}

/// The latest result per (repository, ref, stages) among the report folders directly under each
/// of `parents` and the folders in `dirs` themselves.
pub fn tracked(parents: &[PathBuf], dirs: &[PathBuf]) -> Vec<Tracked> {
    let mut all: Vec<Tracked> = dirs.iter().filter_map(|d| read_result(d)).collect();
    for p in parents {
        let Ok(entries) = std::fs::read_dir(p) else {
            continue;
        };
        all.extend(entries.flatten().filter_map(|e| read_result(&e.path())));
    }
    let mut latest: BTreeMap<(String, String, String), Tracked> = BTreeMap::new();
    for t in all {
        let stages: Vec<&str> = t.inputs.stages.iter().map(|s| s.name()).collect();
        let k = (
            t.inputs.source.clone(),
            t.report.git_ref.clone(),
            stages.join(","),
        );
        match latest.get(&k) {
            Some(old) if old.written_secs >= t.written_secs => {}
            _ => {
                latest.insert(k, t);
            }
        }
    }
    latest.into_values().collect()
}

/// What a result's inputs are now, read the way its run read them.
pub fn want_of(t: &Tracked, ctx: &Sweep<'_>) -> Want {
    Want {
        source: t.inputs.source.clone(),
        git_ref: t.report.git_ref.clone(),
        base: None,
        stages: t.inputs.stages.clone(),
        config: ctx.config.clone(),
        shipped_overlays: ctx.shipped_overlays.map(Path::to_path_buf),
        abra_version: ctx.abra_version.clone(),
    }
}

/// `None` = no age limit (`daemon.reuse_max_age_secs = 0`).
pub fn max_age(reuse_max_age_secs: u64) -> Option<Duration> {
    (reuse_max_age_secs > 0).then(|| Duration::from_secs(reuse_max_age_secs))
}

/// The age of a result written at `written_secs`, at `now_secs`.
pub fn age(written_secs: u64, now_secs: u64) -> Duration {
    Duration::from_secs(now_secs.saturating_sub(written_secs))
}

/// One tracked result judged now.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub dir: PathBuf,
    pub recipe: String,
    pub git_ref: String,
    pub key: String,
    /// `Err`: the current inputs could not be resolved (the reason).
    pub freshness: Result<Freshness, String>,
    /// How long re-resolving took.
    pub resolve_ms: u64,
}

/// What a sweep judges results with.
pub struct Sweep<'a> {
    /// `[harness]` of the config.
    pub config: &'a HarnessConfig,
    /// [`inputs::shipped_overlays`].
    pub shipped_overlays: Option<&'a Path>,
    pub abra_version: Option<String>,
    /// [`max_age`] of `daemon.reuse_max_age_secs`.
    pub max_age: Option<Duration>,
    pub now_secs: u64,
}

/// Re-resolves every tracked result and judges it.
pub async fn sweep(
    results: &[Tracked],
    ctx: &Sweep<'_>,
    engine: &Engine,
    scratch: &Path,
) -> Vec<Judged> {
    let mut out = Vec::new();
    for t in results {
        let start = std::time::Instant::now();
        let want = want_of(t, ctx);
        let freshness = inputs::resolve(&want, scratch, engine)
            .await
            .map(|now| {
                fresh::freshness(
                    &t.inputs,
                    &now,
                    age(t.written_secs, ctx.now_secs),
                    ctx.max_age,
                )
            })
            .map_err(|e| e.to_string());
        out.push(Judged {
            dir: t.dir.clone(),
            recipe: t.inputs.recipe.clone(),
            git_ref: t.report.git_ref.clone(),
            key: t.inputs.key.clone(),
            freshness,
            resolve_ms: start.elapsed().as_millis() as u64,
        });
    }
    out
}

/// Seconds since the epoch now (for callers at the edge: nothing above reads the clock).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_never_underflows() {
        assert_eq!(age(10, 5), Duration::ZERO);
        assert_eq!(age(5, 10), Duration::from_secs(5));
    }

    #[test]
    fn results_without_inputs_are_not_tracked() {
        let d = tempfile::tempdir().expect("tempdir");
        let run = d.path().join("1");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::write(run.join("run.json"), "{\"not\": \"a report\"}").expect("write");
        assert!(tracked(&[d.path().to_path_buf()], &[]).is_empty());
    }
}
