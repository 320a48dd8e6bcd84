//! Per-recipe overlays: declarative TOML that adds checks to the generic ones (format in
//! docs/overlays.md). Parsing and validation are pure; running the checks is the lifecycle's job.
//!
//! Overlays come from the folder shipped with cc-ci, the operator's folders (later wins per file)
//! and, only for allowlisted recipes, the recipe's own `.cc-ci/overlay.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::contract::Stage;
use crate::report::CheckSource;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct OverlayError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

/// One overlay file as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlayFile {
    /// Tiers this recipe opts out of (reported as skipped with the reason).
    #[serde(default)]
    pub skip_tiers: Vec<Stage>,
    /// Data-continuity canaries (upgrade, backup/restore). Turn off for recipes whose volumes
    /// must not receive foreign files.
    #[serde(default = "yes")]
    pub canaries: bool,
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckSpec>,
    #[serde(default, rename = "data")]
    pub data: Vec<DataSpec>,
    /// Values for secrets (lower-case name → value), e.g. one marked `# generate=false` that must
    /// have a particular form; every other secret gets a random value.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// (`deny_unknown_fields` lives on [`CheckKind`]: serde cannot combine it with `flatten` here,
/// and the kind sees every field the outer struct does not take.)
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CheckSpec {
    pub name: String,
    /// Tiers after which the check runs.
    pub tiers: Vec<Stage>,
    /// Service (compose name) the check runs in.
    pub service: String,
    #[serde(flatten)]
    pub kind: CheckKind,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum CheckKind {
    /// An HTTP request made from inside the service's container (busybox/GNU `wget`) to
    /// `http://127.0.0.1:<port><path>`.
    Http {
        port: u16,
        #[serde(default = "root_path")]
        path: String,
        #[serde(default = "ok_status")]
        status: u16,
        body_contains: Option<String>,
    },
    /// A script file beside the overlay (e.g. a recipe's `.cc-ci/check.sh`), run with `sh -c` in
    /// the service's container. Loading turns it into an `Exec` of the script's text.
    Script {
        script: String,
        #[serde(default)]
        exit_code: i64,
        stdout_contains: Option<String>,
    },
    /// A command run in the service's container.
    Exec {
        command: Vec<String>,
        #[serde(default)]
        exit_code: i64,
        stdout_contains: Option<String>,
    },
}

fn root_path() -> String {
    "/".into()
}
fn ok_status() -> u16 {
    200
}

/// A seed/verify pair: `seed` runs before the upgrade (and before the backup); `verify` must
/// print `expect` after the upgrade and after the restore. Before the restore `mutate` (if given)
/// changes the data, so a restore that does nothing is caught.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub name: String,
    pub service: String,
    pub seed: Vec<String>,
    pub verify: Vec<String>,
    pub expect: String,
    #[serde(default)]
    pub mutate: Option<Vec<String>>,
}

/// The overlay in force for one run, with where each part came from.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub skip_tiers: Vec<Stage>,
    pub canaries: bool,
    pub checks: Vec<(CheckSource, CheckSpec)>,
    pub data: Vec<(CheckSource, DataSpec)>,
    pub secrets: std::collections::BTreeMap<String, String>,
    pub files: Vec<PathBuf>,
}

impl Overlay {
    fn empty() -> Self {
        Self {
            canaries: true,
            ..Self::default()
        }
    }
}

pub fn parse(text: &str, file: &Path) -> Result<OverlayFile, OverlayError> {
    let parsed: OverlayFile = toml::from_str(text).map_err(|e| OverlayError {
        file: file.to_path_buf(),
        line: crate::config::toml_error_line(text, &e),
        message: e.message().to_string(),
    })?;
    let err = |message: String| OverlayError {
        file: file.to_path_buf(),
        line: 0,
        message,
    };
    for c in &parsed.checks {
        if c.tiers.is_empty() {
            return Err(err(format!(
                "check `{}`: field `tiers` must name at least one tier",
                c.name
            )));
        }
        if let CheckKind::Exec { command, .. } = &c.kind
            && command.is_empty()
        {
            return Err(err(format!(
                "check `{}`: field `command` must not be empty",
                c.name
            )));
        }
        if let CheckKind::Http { path, .. } = &c.kind
            && !path.starts_with('/')
        {
            return Err(err(format!(
                "check `{}`: field `path` must start with `/`",
                c.name
            )));
        }
    }
    for d in &parsed.data {
        if d.seed.is_empty() || d.verify.is_empty() {
            return Err(err(format!(
                "data `{}`: fields `seed` and `verify` must not be empty",
                d.name
            )));
        }
    }
    Ok(parsed)
}

/// Loads the overlay of `recipe`: `<dir>/<recipe>.toml` from each folder in order, then the
/// repo-local file when allowed. A later file adds checks and overrides `skip_tiers`/`canaries`.
pub fn load(
    recipe: &str,
    dirs: &[PathBuf],
    repo_local: Option<&Path>,
) -> Result<Overlay, OverlayError> {
    let mut overlay = Overlay::empty();
    let mut sources: Vec<(CheckSource, PathBuf)> = dirs
        .iter()
        .map(|d| (CheckSource::Overlay, d.join(format!("{recipe}.toml"))))
        .collect();
    if let Some(p) = repo_local {
        sources.push((CheckSource::RepoLocal, p.to_path_buf()));
    }
    for (source, path) in sources {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // The repository's own files are read like any file of the checkout (regular files
        // only, no symlinks); the operator's may be symlinks (e.g. into the Nix store).
        let repo_local = source == CheckSource::RepoLocal;
        let text = match read_overlay_file(&base, &path, repo_local) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(message) => {
                return Err(OverlayError {
                    file: path,
                    line: 0,
                    message,
                });
            }
        };
        let mut f = parse(&text, &path)?;
        for c in &mut f.checks {
            inline_script(c, &base, &path, repo_local)?;
        }
        overlay.skip_tiers = f.skip_tiers;
        overlay.canaries = f.canaries;
        overlay
            .checks
            .extend(f.checks.into_iter().map(|c| (source, c)));
        overlay.data.extend(f.data.into_iter().map(|d| (source, d)));
        overlay.secrets.extend(f.secrets);
        overlay.files.push(path);
    }
    Ok(overlay)
}

/// Replaces a `script` check by an `exec` of the script's text. The script must be a plain file
/// inside the overlay's folder: no absolute paths, no `..`.
/// Reads an overlay file or script, capped; `None` when it does not exist.
fn read_overlay_file(base: &Path, path: &Path, repo_local: bool) -> Result<Option<String>, String> {
    use crate::safefs::{RECIPE_FILE_CAP, SafeError, read_inside, read_regular};
    let name = path
        .strip_prefix(base)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.display().to_string());
    let r = if repo_local {
        read_inside(base, &name, RECIPE_FILE_CAP)
    } else {
        match read_regular(path, &name, RECIPE_FILE_CAP, true) {
            Err(SafeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            other => other.map(Some),
        }
    };
    r.map_err(|e| match e {
        SafeError::Refused { problem, .. } => problem,
        SafeError::Io { source, .. } => format!("cannot read: {source}"),
    })
}

fn inline_script(
    c: &mut CheckSpec,
    base: &Path,
    file: &Path,
    repo_local: bool,
) -> Result<(), OverlayError> {
    let CheckKind::Script {
        script,
        exit_code,
        stdout_contains,
    } = &c.kind
    else {
        return Ok(());
    };
    let err = |message: String| OverlayError {
        file: file.to_path_buf(),
        line: 0,
        message,
    };
    let rel = Path::new(script);
    if script.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|p| !matches!(p, std::path::Component::Normal(_)))
    {
        return Err(err(format!(
            "check `{}`: field `script` must be a file inside the overlay's folder, got `{script}`",
            c.name
        )));
    }
    let text = read_overlay_file(base, &base.join(rel), repo_local)
        .and_then(|t| t.ok_or_else(|| "no such file".to_string()))
        .map_err(|e| {
            err(format!(
                "check `{}`: field `script`: cannot read `{script}`: {e}",
                c.name
            ))
        })?;
    c.kind = CheckKind::Exec {
        command: vec!["sh".into(), "-c".into(), text, script.clone()],
        exit_code: *exit_code,
        stdout_contains: stdout_contains.clone(),
    };
    Ok(())
}

/// Judges an HTTP check from the output of `wget -S -O- URL` (headers on stderr, body on stdout).
pub fn judge_http(
    expected_status: u16,
    body_contains: Option<&str>,
    exit_code: i64,
    stdout: &str,
    stderr: &str,
) -> Result<String, String> {
    let status = stderr
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("HTTP/")
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u16>().ok())
        })
        .next_back();
    let Some(status) = status else {
        return Err(format!(
            "no HTTP response (wget exit {exit_code}): {}",
            crate::report::excerpt(stderr.trim(), 200)
        ));
    };
    if status != expected_status {
        return Err(format!("HTTP status {status}, expected {expected_status}"));
    }
    if let Some(needle) = body_contains
        && !stdout.contains(needle)
    {
        return Err(format!(
            "body does not contain `{needle}`; body starts: {}",
            crate::report::excerpt(stdout.trim(), 200)
        ));
    }
    Ok(format!("HTTP {status}"))
}

/// Judges an exec check.
pub fn judge_exec(
    expected_code: i64,
    stdout_contains: Option<&str>,
    code: i64,
    stdout: &str,
    stderr: &str,
) -> Result<String, String> {
    if code != expected_code {
        return Err(format!(
            "exit code {code}, expected {expected_code}; output: {}",
            crate::report::excerpt(format!("{}{}", stdout.trim(), stderr.trim()).as_str(), 200)
        ));
    }
    if let Some(needle) = stdout_contains
        && !stdout.contains(needle)
    {
        return Err(format!(
            "stdout does not contain `{needle}`; stdout: {}",
            crate::report::excerpt(stdout.trim(), 200)
        ));
    }
    Ok(format!("exit code {code}"))
}

/// The repository (`owner/name`) a recipe source names: the last two components of its URL
/// or path, without `.git`. `None` when there are not two.
pub fn repo_of_source(source: &str) -> Option<String> {
    let trimmed = source.trim_end_matches('/');
    let mut parts = trimmed.rsplit(['/', ':']);
    let name = parts.next()?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    let owner = parts.next()?;
    let repo = format!("{owner}/{name}");
    crate::names::is_owner_slash_repo(&repo).then_some(repo)
}

/// Whether the repository `source` points at may run its own `.cc-ci/` tests: the operator's
/// allowlist names full repositories (`owner/name`, compared case-insensitively as the forge
/// does), never recipe names, so a fork or a same-named repository of another owner is not
/// trusted by accident.
pub fn repo_local_allowed(allowlist: &[String], source: &str) -> bool {
    repo_of_source(source)
        .is_some_and(|repo| allowlist.iter().any(|a| a.eq_ignore_ascii_case(&repo)))
}

#[cfg(test)]
mod repo_local_tests {
    use super::*;

    #[test]
    fn allowlist_is_keyed_by_owner_and_name() {
        let list = vec!["coop-cloud/traefik".to_string()];
        for yes in [
            "https://git.coopcloud.tech/coop-cloud/traefik.git",
            "https://git.coopcloud.tech/Coop-Cloud/traefik",
            "git@git.coopcloud.tech:coop-cloud/traefik.git",
            "/srv/recipes/coop-cloud/traefik/",
        ] {
            assert!(repo_local_allowed(&list, yes), "{yes}");
        }
        for no in [
            "https://git.coopcloud.tech/mallory/traefik.git",
            "https://git.coopcloud.tech/coop-cloud/traefik-evil.git",
            "traefik",
            "/traefik",
        ] {
            assert!(!repo_local_allowed(&list, no), "{no}");
        }
        assert!(!repo_local_allowed(
            &["traefik".into()],
            "https://f/coop-cloud/traefik.git"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
skip_tiers = ["backup"]
canaries = false

[[check]]
name = "home"
tiers = ["install", "upgrade"]
service = "app"
kind = "http"
port = 80
body_contains = "Welcome"

[[check]]
name = "db-up"
tiers = ["restore"]
service = "db"
kind = "exec"
command = ["sh", "-c", "test -f /data/db"]

[[data]]
name = "row"
service = "db"
seed = ["sh", "-c", "echo hi > /data/row"]
verify = ["cat", "/data/row"]
expect = "hi"
"#;

    #[test]
    fn parses_the_documented_format() {
        let f = parse(GOOD, Path::new("web.toml")).unwrap();
        assert_eq!(f.skip_tiers, vec![Stage::Backup]);
        assert!(!f.canaries);
        assert_eq!(f.checks.len(), 2);
        assert!(
            matches!(&f.checks[0].kind, CheckKind::Http { port: 80, status: 200, path, .. } if path == "/")
        );
        assert_eq!(f.data[0].expect, "hi");
    }

    #[test]
    fn typos_name_file_line_and_field() {
        let bad = GOOD.replace("body_contains", "body_contain");
        let e = parse(&bad, Path::new("web.toml")).unwrap_err();
        assert_eq!(e.file, Path::new("web.toml"));
        assert!(e.line > 0);
        assert!(e.message.contains("body_contain"), "{e}");
        let bad = GOOD.replace("tiers = [\"restore\"]", "tiers = [\"restor\"]");
        let e = parse(&bad, Path::new("web.toml")).unwrap_err().to_string();
        assert!(e.contains("restor"), "{e}");
        let bad = GOOD.replace("kind = \"exec\"", "kind = \"shell\"");
        assert!(parse(&bad, Path::new("w.toml")).is_err());
        let e = parse(
            "[[check]]\nname='x'\ntiers=[]\nservice='a'\nkind='exec'\ncommand=['true']\n",
            Path::new("w.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tiers"), "{e}");
    }

    #[test]
    fn load_merges_folders_and_repo_local() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("web.toml"), GOOD).unwrap();
        std::fs::write(b.path().join("web.toml"), "canaries = true\n").unwrap();
        let local = b.path().join("local.toml");
        std::fs::write(&local, "[[check]]\nname='l'\ntiers=['install']\nservice='app'\nkind='exec'\ncommand=['true']\n").unwrap();
        let o = load("web", &[a.path().into(), b.path().into()], Some(&local)).unwrap();
        // Scripts beside an overlay are inlined; paths out of its folder are refused.
        std::fs::write(b.path().join("check.sh"), "echo ok\n").unwrap();
        let script = b.path().join("script.toml");
        std::fs::write(&script, "[[check]]\nname='s'\ntiers=['install']\nservice='app'\nkind='script'\nscript='check.sh'\n").unwrap();
        let s = load("web", &[], Some(&script)).unwrap();
        assert!(
            matches!(&s.checks[0].1.kind, CheckKind::Exec { command, .. } if command[2] == "echo ok\n")
        );
        std::fs::write(&script, "[[check]]\nname='s'\ntiers=['install']\nservice='app'\nkind='script'\nscript='../x.sh'\n").unwrap();
        assert!(
            load("web", &[], Some(&script))
                .unwrap_err()
                .message
                .contains("script")
        );
        assert!(o.canaries);
        assert_eq!(o.checks.len(), 3);
        assert_eq!(o.checks[2].0, CheckSource::RepoLocal);
        assert_eq!(o.files.len(), 3);
        let none = load("other", &[a.path().into()], None).unwrap();
        assert!(none.checks.is_empty() && none.canaries);
    }

    #[test]
    fn repo_local_files_must_be_regular_files_inside_the_folder() {
        let d = tempfile::tempdir().unwrap();
        let cc = d.path().join(".cc-ci");
        std::fs::create_dir_all(&cc).unwrap();
        std::fs::write(d.path().join("outside.sh"), "cat /etc/shadow\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside.sh"), cc.join("check.sh")).unwrap();
        let overlay = cc.join("overlay.toml");
        std::fs::write(
            &overlay,
            "[[check]]\nname='s'\ntiers=['install']\nservice='app'\nkind='script'\nscript='check.sh'\n",
        )
        .unwrap();
        let e = load("web", &[], Some(&overlay)).unwrap_err().message;
        assert!(e.contains("symbolic link"), "{e}");
        // The same file in an operator's folder may be a symlink (the Nix store is made of them).
        let op = load("overlay", std::slice::from_ref(&cc), None).unwrap();
        assert!(
            matches!(&op.checks[0].1.kind, CheckKind::Exec { command, .. } if command[2].contains("shadow"))
        );
        // The overlay file itself a symlink out of the checkout, or a FIFO: refused.
        std::fs::remove_file(&overlay).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &overlay).unwrap();
        let e = load("web", &[], Some(&overlay)).unwrap_err().message;
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(&overlay).unwrap();
        crate::safefs::tests::mkfifo(&overlay);
        let e = load("web", &[], Some(&overlay)).unwrap_err().message;
        assert!(e.contains("FIFO"), "{e}");
    }

    #[test]
    fn judges() {
        let hdr = "  HTTP/1.1 200 OK\n  Content-Type: text/html\n";
        assert!(judge_http(200, Some("Welcome"), 0, "<h1>Welcome</h1>", hdr).is_ok());
        assert!(
            judge_http(200, Some("Bye"), 0, "<h1>Welcome</h1>", hdr)
                .unwrap_err()
                .contains("Bye")
        );
        assert!(
            judge_http(200, None, 1, "", "  HTTP/1.1 404 Not Found\n")
                .unwrap_err()
                .contains("404")
        );
        assert!(judge_http(200, None, 1, "", "wget: can't connect").is_err());
        assert!(judge_exec(0, Some("ok"), 0, "all ok", "").is_ok());
        assert!(
            judge_exec(0, None, 2, "", "boom")
                .unwrap_err()
                .contains("exit code 2")
        );
    }
}

#[cfg(test)]
mod shipped_overlays {
    use super::*;

    /// Every overlay shipped in the repository's `overlays/` parses.
    #[test]
    fn shipped_overlays_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../overlays");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                parse(&text, &p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n > 0, "no overlays found in {}", dir.display());
    }
}
