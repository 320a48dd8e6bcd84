//! The recipe under test: its git checkout (I/O through the `git` CLI), and the pure parsing of
//! what the harness reads from it (`.env.sample`, compose files, release tags).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

pub use cc_ci_envfile::EnvFile;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot run git: {0} (install git)")]
    GitMissing(String),
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("recipe source `{0}` is neither an existing directory nor an http(s)/ssh/git URL")]
    BadSource(String),
    #[error("ref `{git_ref}` does not exist in the recipe repository {repo}")]
    UnknownRef { git_ref: String, repo: String },
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error("{file} is missing: {why}")]
    Missing { file: String, why: String },
}

/// Accepts a local directory or a remote URL; refuses anything git could read as an option.
pub fn validate_source(source: &str) -> Result<(), RecipeError> {
    let remote = ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|p| source.starts_with(p))
        || (source.starts_with("git@") && source.contains(':'));
    let bad_chars = source.chars().any(|c| c.is_whitespace() || c.is_control());
    if source.starts_with('-') || bad_chars || !(remote || Path::new(source).is_dir()) {
        return Err(RecipeError::BadSource(source.into()));
    }
    Ok(())
}

async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, RecipeError> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    // Never prompt for credentials: a run has no one to answer.
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| RecipeError::GitMissing(e.to_string()))?;
    if !out.status.success() {
        return Err(RecipeError::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A clone of the recipe repository inside the run's `ABRA_DIR/recipes/<recipe>`.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub dir: PathBuf,
    pub source: String,
}

impl Checkout {
    pub async fn clone_from(source: &str, dir: &Path) -> Result<Self, RecipeError> {
        validate_source(source)?;
        let dest = dir.to_string_lossy().to_string();
        git(
            None,
            &["clone", "--quiet", "--no-checkout", "--", source, &dest],
        )
        .await?;
        Ok(Self {
            dir: dir.to_path_buf(),
            source: source.into(),
        })
    }

    /// Resolves a ref (commit, branch, tag, or a forge ref such as `refs/pull/3/head`, fetched on
    /// demand) to a full commit hash.
    pub async fn resolve(&self, git_ref: &str) -> Result<String, RecipeError> {
        let local = [git_ref.to_string(), format!("origin/{git_ref}")];
        for candidate in &local {
            if let Ok(sha) = git(
                Some(&self.dir),
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{candidate}^{{commit}}"),
                ],
            )
            .await
            {
                return Ok(sha);
            }
        }
        if git(Some(&self.dir), &["fetch", "--quiet", "origin", git_ref])
            .await
            .is_ok()
            && let Ok(sha) = git(
                Some(&self.dir),
                &["rev-parse", "--verify", "--quiet", "FETCH_HEAD^{commit}"],
            )
            .await
        {
            return Ok(sha);
        }
        Err(RecipeError::UnknownRef {
            git_ref: git_ref.into(),
            repo: self.source.clone(),
        })
    }

    /// Checks out a commit or tag (detached) and removes anything not tracked, so a deploy sees
    /// exactly that tree.
    pub async fn checkout(&self, rev: &str) -> Result<(), RecipeError> {
        git(
            Some(&self.dir),
            &["checkout", "--quiet", "--force", "--detach", rev],
        )
        .await?;
        git(Some(&self.dir), &["clean", "-qfdx"]).await?;
        // abra deploys the checkout as it finds it and marks a dirty one `+U`: make sure it is
        // exactly `rev`.
        let dirty = git(Some(&self.dir), &["status", "--porcelain", "--ignored"]).await?;
        if !dirty.is_empty() {
            return Err(RecipeError::Git {
                args: format!("checkout {rev}"),
                stderr: format!("the checkout still differs from {rev} after cleaning it: {dirty}"),
            });
        }
        Ok(())
    }

    /// Release tags of the repository with the commit each points at.
    pub async fn tags(&self) -> Result<Vec<(String, String)>, RecipeError> {
        let out = git(
            Some(&self.dir),
            &[
                "for-each-ref",
                "--format=%(refname:short) %(objectname) %(*objectname)",
                "refs/tags",
            ],
        )
        .await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let tag = parts.next()?;
                let obj = parts.next()?;
                // Annotated tags carry the commit in %(*objectname).
                let commit = parts.next().unwrap_or(obj);
                Some((tag.to_string(), commit.to_string()))
            })
            .collect())
    }

    pub async fn is_ancestor(&self, ancestor: &str, of: &str) -> Result<bool, RecipeError> {
        match git(
            Some(&self.dir),
            &["merge-base", "--is-ancestor", ancestor, of],
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(RecipeError::Git { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The upgrade base: the newest release tag on a commit strictly older than `head`.
    pub async fn base_release(&self, head: &str) -> Result<Option<String>, RecipeError> {
        let mut older = Vec::new();
        for (tag, commit) in self.tags().await? {
            if parse_version(&tag).is_some()
                && commit != head
                && self.is_ancestor(&commit, head).await?
            {
                older.push(tag);
            }
        }
        Ok(newest_release(&older).map(String::from))
    }

    /// Moves the clone to `dir` (same filesystem).
    pub fn rename(&mut self, dir: &Path) -> Result<(), RecipeError> {
        std::fs::rename(&self.dir, dir).map_err(|e| RecipeError::Invalid {
            file: dir.display().to_string(),
            problem: format!("cannot move the recipe clone there: {e}"),
        })?;
        self.dir = dir.to_path_buf();
        Ok(())
    }

    /// Reads a file of the checkout: only a regular file inside it, reached without a symlink,
    /// of at most [`crate::safefs::RECIPE_FILE_CAP`] bytes; `None` when it does not exist.
    pub fn read_file(&self, name: &str) -> Result<Option<String>, RecipeError> {
        crate::safefs::read_inside(&self.dir, name, crate::safefs::RECIPE_FILE_CAP).map_err(|e| {
            RecipeError::Invalid {
                file: name.into(),
                problem: match e {
                    crate::safefs::SafeError::Refused { problem, .. } => problem,
                    other => other.to_string(),
                },
            }
        })
    }
}

/// A release version `MAJOR.MINOR.PATCH[+upstream]` (Co-op Cloud tags), ordered by the recipe
/// semver; the upstream part only breaks ties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub upstream: String,
}

impl Ord for ReleaseVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| self.upstream.cmp(&other.upstream))
    }
}

impl PartialOrd for ReleaseVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub fn parse_version(tag: &str) -> Option<ReleaseVersion> {
    let (semver, upstream) = tag.split_once('+').unwrap_or((tag, ""));
    let semver = semver.strip_prefix('v').unwrap_or(semver);
    let mut nums = semver.split('.').map(|p| p.parse::<u64>().ok());
    let (major, minor, patch) = (nums.next()??, nums.next()??, nums.next()??);
    if nums.next().is_some() {
        return None;
    }
    Some(ReleaseVersion {
        major,
        minor,
        patch,
        upstream: upstream.into(),
    })
}

pub fn newest_release(tags: &[String]) -> Option<&str> {
    tags.iter()
        .filter_map(|t| parse_version(t).map(|v| (v, t)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t.as_str())
}

/// The compose files a deploy of this env uses: `COMPOSE_FILE` (expanded as abra expands it),
/// else `compose.yml`.
pub fn compose_files(env: &EnvFile) -> Vec<String> {
    env.compose_files()
        .unwrap_or_else(|| vec![DEFAULT_COMPOSE_FILE.to_string()])
}

/// What abra deploys when the env sets no `COMPOSE_FILE`.
pub const DEFAULT_COMPOSE_FILE: &str = "compose.yml";

/// What the harness needs from a compose file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComposeInfo {
    pub services: Vec<String>,
    pub volumes: Vec<String>,
    /// Host ports the services publish (after interpolation with the env).
    pub published: Vec<PublishedPort>,
}

/// A host port a service publishes (`ports:`); two deployments publishing the same one cannot
/// coexist on one swarm.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub service: String,
}

impl PublishedPort {
    pub fn key(&self) -> String {
        format!("{}/{}", self.port, self.protocol)
    }
}

/// Ranges wider than this (`8000-9000:…`) are refused rather than leased port by port.
const MAX_PORT_RANGE: u32 = 256;

/// Host ports of one `ports:` entry: short syntax `[ip:]host:container[/proto]` (ranges
/// allowed; a bare container port publishes nothing fixed) or long syntax with `published:`.
fn published_ports_of(
    entry: &serde_norway::Value,
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(u16, String)>, String> {
    let scalar = |v: &serde_norway::Value| -> Option<String> {
        match v {
            serde_norway::Value::String(s) => Some(cc_ci_envfile::interpolate(s, vars)),
            serde_norway::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let (host, protocol) = match entry {
        serde_norway::Value::Mapping(m) => {
            let Some(published) = m.get("published").and_then(scalar) else {
                return Ok(vec![]);
            };
            let proto = m
                .get("protocol")
                .and_then(scalar)
                .unwrap_or_else(|| "tcp".into());
            (published, proto)
        }
        other => {
            let Some(text) = scalar(other) else {
                return Err(format!("`{other:?}` is not a port mapping"));
            };
            let (spec, proto) = match text.split_once('/') {
                Some((s, p)) => (s.to_string(), p.to_string()),
                None => (text.clone(), "tcp".to_string()),
            };
            let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            match parts.as_slice() {
                // `80`: the swarm picks a free host port.
                [_] => return Ok(vec![]),
                [_, host] | [_, host, _] => (host.to_string(), proto),
                _ => return Err(format!("`{text}` is not a port mapping")),
            }
        }
    };
    let host = host.trim();
    if host.is_empty() {
        return Ok(vec![]);
    }
    let protocol = protocol.trim().to_ascii_lowercase();
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("protocol `{protocol}` is not tcp, udp or sctp"));
    }
    let num = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("host port `{p}` is not a port number"))
    };
    let (lo, hi) = match host.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(host)?, num(host)?),
    };
    if hi < lo || u32::from(hi - lo) >= MAX_PORT_RANGE {
        return Err(format!(
            "host port range `{host}` is empty or wider than {MAX_PORT_RANGE} ports"
        ));
    }
    Ok((lo..=hi).map(|p| (p, protocol.clone())).collect())
}

/// Parses and sanity-checks one compose file, so a broken recipe is refused before anything is
/// deployed (exit 2) with the file and line.
pub fn parse_compose(file: &str, text: &str) -> Result<ComposeInfo, RecipeError> {
    parse_compose_with(file, text, &Default::default())
}

/// [`parse_compose`] with the variables the deploy interpolates (`${PORT:-80}` in `ports:`).
pub fn parse_compose_with(
    file: &str,
    text: &str,
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<ComposeInfo, RecipeError> {
    let invalid = |problem: String| RecipeError::Invalid {
        file: file.into(),
        problem,
    };
    let doc: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        invalid(format!("{at}not valid YAML: {e}"))
    })?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| invalid("the top level must be a mapping with a `services` key".into()))?;
    let mut info = ComposeInfo::default();
    match map.get("services") {
        None => {}
        Some(serde_norway::Value::Mapping(services)) => {
            for (name, svc) in services {
                let name = name
                    .as_str()
                    .ok_or_else(|| invalid("service names must be strings".into()))?;
                if !svc.is_mapping() {
                    return Err(invalid(format!("service `{name}` must be a mapping")));
                }
                info.services.push(name.to_string());
                match svc.get("ports") {
                    None | Some(serde_norway::Value::Null) => {}
                    Some(serde_norway::Value::Sequence(ports)) => {
                        for p in ports {
                            let found = published_ports_of(p, vars)
                                .map_err(|e| invalid(format!("service `{name}`, ports: {e}")))?;
                            info.published
                                .extend(found.into_iter().map(|(port, protocol)| PublishedPort {
                                    port,
                                    protocol,
                                    service: name.to_string(),
                                }));
                        }
                    }
                    Some(_) => {
                        return Err(invalid(format!("service `{name}`: `ports` must be a list")));
                    }
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                "`services` must be a mapping of service names".into(),
            ));
        }
    }
    match map.get("volumes") {
        None | Some(serde_norway::Value::Null) => {}
        Some(serde_norway::Value::Mapping(vols)) => {
            info.volumes = vols
                .keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect();
        }
        Some(_) => {
            return Err(invalid(
                "`volumes` must be a mapping of volume names".into(),
            ));
        }
    }
    Ok(info)
}

/// What a recipe's tree at one commit holds, as far as a run needs it before deploying.
#[derive(Debug, Clone)]
pub struct RecipeTree {
    /// The recipe's name: `TYPE=` of `.env.sample` (the repository may be named otherwise).
    pub recipe: String,
    pub env: EnvFile,
    pub compose_files: Vec<String>,
    pub compose: ComposeInfo,
}

/// Reads and validates `.env.sample` and every compose file of the recipe at its current checkout.
pub fn validate_recipe_tree(checkout: &Checkout) -> Result<RecipeTree, RecipeError> {
    let sample = checkout
        .read_file(".env.sample")?
        .ok_or_else(|| RecipeError::Invalid {
            file: ".env.sample".into(),
            problem: "missing: a recipe needs an .env.sample (first line TYPE=<recipe>)".into(),
        })?;
    let env = EnvFile::parse(&sample);
    let recipe = env
        .recipe_type()
        .map_err(|e| RecipeError::Invalid {
            file: ".env.sample".into(),
            problem: e.to_string(),
        })?
        .name;
    let mut vars = env.vars();
    // What abra adds when it deploys; ports rarely use them, but an unset one would read empty.
    vars.entry("STACK_NAME".into())
        .or_insert_with(|| recipe.clone());
    let listed = env.compose_files();
    let files = compose_files(&env);
    let mut all = ComposeInfo::default();
    for file in &files {
        if file.contains("..") || file.starts_with('/') {
            return Err(RecipeError::Invalid {
                file: ".env.sample".into(),
                problem: format!("COMPOSE_FILE entry `{file}` points outside the recipe"),
            });
        }
        let text = checkout.read_file(file)?.ok_or_else(|| match &listed {
            Some(_) => RecipeError::Invalid {
                file: file.clone(),
                problem: format!(
                    "listed in COMPOSE_FILE (`{}` after expansion) but missing",
                    files.join(":")
                ),
            },
            None => RecipeError::Missing {
                file: file.clone(),
                why: format!(
                    ".env.sample sets no COMPOSE_FILE, so abra deploys {DEFAULT_COMPOSE_FILE}"
                ),
            },
        })?;
        let info = parse_compose_with(file, &text, &vars)?;
        all.services.extend(info.services);
        all.volumes.extend(info.volumes);
        all.published.extend(info.published);
    }
    all.services.sort();
    all.services.dedup();
    all.volumes.sort();
    all.volumes.dedup();
    all.published.sort();
    all.published.dedup();
    if all.services.is_empty() {
        return Err(RecipeError::Invalid {
            file: files.join(":"),
            problem: "no services defined".into(),
        });
    }
    Ok(RecipeTree {
        recipe,
        env,
        compose_files: files,
        compose: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_semver() {
        let tags: Vec<String> = ["1.0.0+1.2", "1.10.0+1.0", "1.9.3+2.0", "latest", "v2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(newest_release(&tags), Some("1.10.0+1.0"));
        assert!(parse_version("1.2").is_none());
        assert!(parse_version("1.2.3.4").is_none());
        assert_eq!(newest_release(&[]), None);
    }

    #[test]
    fn compose_files_default_and_expansion() {
        let env = EnvFile::parse("TYPE=web\nDOMAIN=web.example\n");
        assert_eq!(compose_files(&env), vec!["compose.yml"]);
        let env = EnvFile::parse(
            "COMPOSE_FILE=\"compose.yml\"\nCOMPOSE_FILE=\"$COMPOSE_FILE:compose.smtp.yml\"\n",
        );
        assert_eq!(compose_files(&env), vec!["compose.yml", "compose.smtp.yml"]);
    }

    #[test]
    fn compose_validation_names_file_and_line() {
        let ok = parse_compose(
            "compose.yml",
            "version: '3.8'\nservices:\n  app:\n    image: x\nvolumes:\n  data:\n",
        )
        .unwrap();
        assert_eq!(ok.services, vec!["app"]);
        assert_eq!(ok.volumes, vec!["data"]);
        let err = parse_compose("compose.yml", "services:\n  app:\n    image: [x\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("compose.yml: line"), "{err}");
        assert!(parse_compose("c.yml", "- a\n- b\n").is_err());
        assert!(parse_compose("c.yml", "services: [a]\n").is_err());
        assert!(parse_compose("c.yml", "services:\n  app: 3\n").is_err());
    }

    #[test]
    fn published_ports_short_long_ranges_and_interpolation() {
        let vars = EnvFile::parse("SSH_PORT=2222\n").vars();
        let info = parse_compose_with(
            "compose.yml",
            "services:\n  app:\n    image: x\n    ports:\n      - \"80:80\"\n      - 443:443\n      - \"127.0.0.1:8080:80/udp\"\n      - \"9000\"\n      - 53\n      - \"${SSH_PORT:-22}:22\"\n      - \"${NOPE:-7000}-7001:7000-7001\"\n  proxy:\n    image: y\n    ports:\n      - target: 80\n        published: \"8443\"\n        protocol: TCP\n        mode: host\n      - target: 81\n",
            &vars,
        )
        .unwrap();
        let got: Vec<String> = info
            .published
            .iter()
            .map(|p| format!("{}:{}", p.service, p.key()))
            .collect();
        assert_eq!(
            got,
            [
                "app:80/tcp",
                "app:443/tcp",
                "app:8080/udp",
                "app:2222/tcp",
                "app:7000/tcp",
                "app:7001/tcp",
                "proxy:8443/tcp"
            ]
        );
        for bad in [
            "\"x:80\"",
            "\"0:80\"",
            "\"80:80/icmp\"",
            "\"1-2000:1-2000\"",
            "[a]",
        ] {
            let text = format!("services:\n  app:\n    ports:\n      - {bad}\n");
            let e = parse_compose("c.yml", &text).unwrap_err().to_string();
            assert!(e.contains("service `app`, ports"), "{bad}: {e}");
        }
        assert!(parse_compose("c.yml", "services:\n  app:\n    ports: 80\n").is_err());
    }

    #[test]
    fn recipe_tree_names_type_and_missing_compose_files() {
        let dir = tempfile::tempdir().unwrap();
        let checkout = Checkout {
            dir: dir.path().to_path_buf(),
            source: "x".into(),
        };
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let err = |c: &Checkout| validate_recipe_tree(c).unwrap_err().to_string();
        let svc = "services:\n  app:\n    image: x\n    ports: [\"${PORT:-8080}:80\"]\n";

        write(".env.sample", "DOMAIN=x\n");
        let e = err(&checkout);
        assert!(e.starts_with(".env.sample: no `TYPE=<recipe>` line"), "{e}");
        write(".env.sample", "TYPE=Bad Name\n");
        assert!(err(&checkout).contains("TYPE=Bad Name"));

        write(".env.sample", "TYPE=traefik\n");
        write("docker-compose.yml", svc);
        assert_eq!(
            err(&checkout),
            "compose.yml is missing: .env.sample sets no COMPOSE_FILE, so abra deploys compose.yml"
        );

        write(
            ".env.sample",
            "TYPE=traefik:v1.2.0+2.0\nPORT=8443\nCOMPOSE_FILE=\"compose.yml\"\nCOMPOSE_FILE=\"$COMPOSE_FILE:compose.x.yml\"\n",
        );
        write("compose.yml", svc);
        let e = err(&checkout);
        assert!(
            e.starts_with("compose.x.yml: listed in COMPOSE_FILE (`compose.yml:compose.x.yml`"),
            "{e}"
        );
        write(
            "compose.x.yml",
            "services:\n  app:\n    environment: [A=1]\n",
        );
        let tree = validate_recipe_tree(&checkout).unwrap();
        assert_eq!(tree.recipe, "traefik");
        assert_eq!(tree.compose_files, ["compose.yml", "compose.x.yml"]);
        assert_eq!(tree.compose.services, ["app"]);
        assert_eq!(tree.compose.published[0].key(), "8443/tcp");
    }

    #[test]
    fn sources() {
        assert!(validate_source("https://git.example/a/b.git").is_ok());
        assert!(validate_source("git@host:a/b").is_ok());
        assert!(validate_source("--upload-pack=evil").is_err());
        assert!(validate_source("/nonexistent/dir").is_err());
        assert!(validate_source("https://x/a b").is_err());
        assert!(validate_source("/tmp").is_ok());
    }
}
