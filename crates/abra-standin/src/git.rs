//! The recipe checkout: release tags in semver order, checkouts, cleanliness.

use std::cmp::Ordering;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("cannot run git: is it installed and on PATH?")?;
    if !out.status.success() {
        bail!(
            "`git {}` in {} failed: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A release version `MAJOR.MINOR.PATCH[-PRE][+BUILD]` (Co-op Cloud tags are
/// `<recipe semver>+<upstream version>`). Build metadata does not order versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    core: [u64; 3],
    pre: Option<String>,
}

impl Version {
    pub fn parse(tag: &str) -> Option<Version> {
        // Some recipes tag `v1.2.3`; abra takes those as releases too.
        let tag = tag.strip_prefix('v').unwrap_or(tag);
        let no_build = tag.split_once('+').map_or(tag, |(v, _)| v);
        let (core, pre) = match no_build.split_once('-') {
            Some((c, p)) if !p.is_empty() => (c, Some(p.to_string())),
            Some(_) => return None,
            None => (no_build, None),
        };
        let mut nums = core.split('.');
        let mut parsed = [0u64; 3];
        for slot in &mut parsed {
            let n = nums.next()?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *slot = n.parse().ok()?;
        }
        if nums.next().is_some() {
            return None;
        }
        Some(Version { core: parsed, pre })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Release tags among `tags` (those that parse as versions), oldest first.
pub fn sort_releases<'a>(tags: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<(Version, &str)> = tags
        .into_iter()
        .filter_map(|t| Version::parse(t).map(|v| (v, t)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    v.into_iter().map(|(_, t)| t.to_string()).collect()
}

/// Release tags of the checkout, oldest first.
pub fn releases(dir: &Path) -> Result<Vec<String>> {
    let out = git(dir, &["tag", "--list"])?;
    Ok(sort_releases(out.lines().map(str::trim)))
}

pub fn latest_release(dir: &Path) -> Result<Option<String>> {
    Ok(releases(dir)?.pop())
}

/// Checks out `rev` (detached), like abra does before a release deploy.
pub fn checkout(dir: &Path, rev: &str) -> Result<()> {
    git(dir, &["checkout", "--quiet", "--detach", rev])
        .map(|_| ())
        .with_context(|| format!("cannot check out `{rev}` in the recipe checkout"))
}

pub fn head_short(dir: &Path) -> Result<String> {
    let full = git(dir, &["rev-parse", "HEAD"])?;
    Ok(full.trim().chars().take(8).collect())
}

/// `git status --porcelain` lines: untracked, modified or staged files.
pub fn dirty_files(dir: &Path) -> Result<Vec<String>> {
    Ok(git(dir, &["status", "--porcelain"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

pub fn is_repo(dir: &Path) -> bool {
    git(dir, &["rev-parse", "--git-dir"]).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_release_tags_by_semver_ignoring_build() {
        let tags = [
            "1.10.0+2.0",
            "1.2.0+1.9",
            "not-a-version",
            "1.2.0-rc1+1.9",
            "0.9.1+x",
            "v1.0.0",
            "2.0.0",
        ];
        assert_eq!(
            sort_releases(tags),
            vec![
                "0.9.1+x",
                "v1.0.0",
                "1.2.0-rc1+1.9",
                "1.2.0+1.9",
                "1.10.0+2.0",
                "2.0.0"
            ]
        );
        assert!(Version::parse("1.2").is_none());
        assert!(Version::parse("1.2.3.4").is_none());
        assert!(Version::parse("1.2.3-").is_none());
    }
}
