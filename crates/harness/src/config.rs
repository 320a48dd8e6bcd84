//! The one cc-ci configuration file (TOML), shared by `cc-ci run`, `cc-ci serve` and
//! `cc-ci check-config`. Every key has a default so an empty file is valid; unknown keys
//! are errors (a typo must never silently fall back to a default).
//!
//! Security-relevant settings (allowlists, secrets) come only from here, never from a
//! recipe or a pull request.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or validating the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: key `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub harness: HarnessConfig,
    pub daemon: DaemonConfig,
    pub forge: ForgeConfig,
}

/// `[harness]`: how a run deploys and checks a recipe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HarnessConfig {
    /// abra binary (a path, or a name looked up on PATH). `--abra` and `CC_CI_ABRA` win over this.
    pub abra: Option<String>,
    /// Suffix of the per-run app domains: `<recipe[:4]>-<6 hex>.<domain_suffix>`.
    pub domain_suffix: String,
    /// Name of the abra server the apps are deployed to (`abra server add --local` makes `default`).
    pub server: String,
    /// Where per-run state (ABRA_DIR, locks, reports) lives. Default: `$CC_CI_WORK_DIR`, else
    /// `$STATE_DIRECTORY/work` under systemd, else `~/.cache/cc-ci`.
    pub work_dir: Option<PathBuf>,
    /// Operator overlay folders, searched after the overlays shipped with cc-ci (later wins per key).
    pub overlay_dirs: Vec<PathBuf>,
    /// Repositories (`owner/name`) whose own `.cc-ci/` tests may run. Empty = deny all.
    pub repo_local_allowlist: Vec<String>,
    /// Recipes whose generic checks the operator turned off (shown in every report).
    pub skip_generic: Vec<String>,
    /// Deadline for one abra call, in seconds.
    pub abra_timeout_secs: u64,
    /// Deadline for a deployment to converge (replicas running, healthy, updates settled).
    pub converge_timeout_secs: u64,
    /// How long services must run without a task restart after converging.
    pub stability_window_secs: u64,
    /// How often the swarm state is polled while waiting, in milliseconds.
    pub poll_interval_ms: u64,
    /// Compose-policy rules allowed per repository (`owner/name` → rule names); see
    /// `policy::RULES`. Everything else a recipe could use to reach the host is refused.
    pub compose_allow: std::collections::BTreeMap<String, Vec<String>>,
    /// Deadline of one Docker Engine API request, in seconds (a hung engine is exit 3).
    pub engine_timeout_secs: u64,
    /// How long a run waits for host ports another cc-ci run holds (ports.rs), in seconds.
    pub port_lease_timeout_secs: u64,
    /// Image of cc-ci's own HTTP probe container (needs `wget`): HTTP checks then run from it,
    /// sharing the service's network. Unset: they run `wget` inside the service's container.
    pub http_probe_image: Option<String>,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            abra: None,
            domain_suffix: "ci.local".into(),
            server: "default".into(),
            work_dir: None,
            overlay_dirs: Vec::new(),
            repo_local_allowlist: Vec::new(),
            skip_generic: Vec::new(),
            abra_timeout_secs: 900,
            converge_timeout_secs: 300,
            stability_window_secs: 10,
            poll_interval_ms: 250,
            compose_allow: std::collections::BTreeMap::new(),
            engine_timeout_secs: 30,
            port_lease_timeout_secs: 3600,
            http_probe_image: None,
        }
    }
}

/// `[daemon]`: `cc-ci serve`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Listen address used when systemd passes no socket: `HOST:PORT` or a unix socket path.
    pub listen: String,
    /// Database, run logs and reports. Default: `$STATE_DIRECTORY`, else `~/.local/state/cc-ci`.
    pub state_dir: Option<PathBuf>,
    /// Runs executed at once.
    pub concurrency: usize,
    /// Deadline of one run, in seconds.
    pub run_timeout_secs: u64,
    /// Grace period for a running run on shutdown or cancel before it is killed and torn down.
    pub cancel_grace_secs: u64,
    /// Base URL of this daemon as the forge should link it (run pages, logs).
    pub public_url: String,
    /// Interval of the pull-request comment poll, in seconds; 0 disables polling.
    pub poll_interval_secs: u64,
    /// Largest webhook body accepted, in bytes. Newer Gitea and Forgejo carry a pull
    /// request's description twice in a comment payload, JSON-escaped (`<` becomes `\u003c`).
    pub max_body_bytes: usize,
    /// Connections served at once; more are answered 503.
    pub max_connections: usize,
    /// `/runs/{id}/log?follow` streams at once; more are answered 503.
    pub max_log_followers: usize,
    /// Deadline to read one webhook request, in seconds.
    pub request_timeout_secs: u64,
    /// How often a run interrupted by a daemon crash is re-queued before it is reported as an error.
    pub max_requeues: u32,
    /// Interval of the drift sweep (re-resolving the inputs of tracked results; a moved image
    /// digest queues a re-run), in seconds; 0 disables it.
    pub drift_interval_secs: u64,
    /// A result older than this is never reused nor counted fresh, in seconds; 0 = no age limit.
    pub reuse_max_age_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8088".into(),
            state_dir: None,
            concurrency: 1,
            run_timeout_secs: 3600,
            cancel_grace_secs: 30,
            public_url: "http://127.0.0.1:8088".into(),
            poll_interval_secs: 0,
            // A 1 MiB description, twice, with room for escaping.
            max_body_bytes: 16 << 20,
            max_connections: 256,
            max_log_followers: 32,
            request_timeout_secs: 10,
            max_requeues: 1,
            drift_interval_secs: 0,
            reuse_max_age_secs: 0,
        }
    }
}

/// `[forge]`: the Gitea or Forgejo instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForgeConfig {
    /// Base URL, e.g. `https://git.coopcloud.tech` (the API is under `/api/v1`).
    pub url: String,
    /// File holding the API token. `$CREDENTIALS_DIRECTORY/forge-token` is read first when present.
    pub token_file: Option<PathBuf>,
    /// File holding the webhook secret. `$CREDENTIALS_DIRECTORY/webhook-secret` is read first.
    pub webhook_secret_file: Option<PathBuf>,
    /// Repositories (`owner/name`) whose pull requests may be tested. Empty = none.
    pub repo_allowlist: Vec<String>,
    /// Members of these organisations may trigger runs.
    pub org_allowlist: Vec<String>,
    /// These users may trigger runs.
    pub user_allowlist: Vec<String>,
    /// Repositories whose open pull requests are polled for `!testme` comments.
    pub poll_repos: Vec<String>,
    /// Commit status context.
    pub status_context: String,
}

impl Default for ForgeConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:3000".into(),
            token_file: None,
            webhook_secret_file: None,
            repo_allowlist: Vec::new(),
            org_allowlist: Vec::new(),
            user_allowlist: Vec::new(),
            poll_repos: Vec::new(),
            status_context: "cc-ci/testme".into(),
        }
    }
}

/// Every accepted key, dotted (`harness.abra`, ...). Kept beside the structs so the NixOS module,
/// the docs and check-config can be tested for agreement.
pub fn known_keys() -> Vec<String> {
    fn keys_of<T: Serialize + Default>(section: &str, out: &mut Vec<String>) {
        // Serialising the default gives every field; Option fields serialise as absent in TOML,
        // so go through JSON where `None` stays visible as null.
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(T::default()) {
            out.extend(map.keys().map(|k| format!("{section}.{k}")));
        }
    }
    let mut out = Vec::new();
    keys_of::<HarnessConfig>("harness", &mut out);
    keys_of::<DaemonConfig>("daemon", &mut out);
    keys_of::<ForgeConfig>("forge", &mut out);
    out.sort();
    out
}

impl Config {
    /// Parse and validate TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| {
                    text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1
                })
                .unwrap_or(0);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: e.message().to_string(),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate_harness()
            .and_then(|()| self.validate_daemon())
            .and_then(|()| self.validate_forge())
            .map_err(|(key, problem)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                problem,
            })
    }

    /// `Err((key, problem))` for the first bad `harness.` value (and the timeouts).
    fn validate_harness(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, problem: String| (key.to_string(), problem);
        let h = &self.harness;
        if !crate::names::is_valid_domain_suffix(&h.domain_suffix) {
            return Err(invalid(
                "harness.domain_suffix",
                format!(
                    "`{}` is not a DNS name of lower-case letters, digits, `-` and `.` (at most 40 characters)",
                    h.domain_suffix
                ),
            ));
        }
        if h.server.is_empty()
            || !h
                .server
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(invalid(
                "harness.server",
                "must be a plain server name".into(),
            ));
        }
        for (key, v) in [
            ("harness.abra_timeout_secs", h.abra_timeout_secs),
            ("harness.converge_timeout_secs", h.converge_timeout_secs),
            ("harness.poll_interval_ms", h.poll_interval_ms),
            ("harness.engine_timeout_secs", h.engine_timeout_secs),
            ("harness.port_lease_timeout_secs", h.port_lease_timeout_secs),
            ("daemon.run_timeout_secs", self.daemon.run_timeout_secs),
            (
                "daemon.request_timeout_secs",
                self.daemon.request_timeout_secs,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        // Keyed by the full repository: a recipe name would trust every fork of that name.
        if let Some(bad) = h
            .repo_local_allowlist
            .iter()
            .find(|r| !crate::names::is_owner_slash_repo(r))
        {
            return Err(invalid(
                "harness.repo_local_allowlist",
                format!("`{bad}` is not of the form owner/name (list repositories, not recipes)"),
            ));
        }
        if let Some(img) = &h.http_probe_image
            && (img.is_empty()
                || img.starts_with('-')
                || img.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "harness.http_probe_image",
                format!("`{img}` is not an image reference"),
            ));
        }
        for (key, list) in [("harness.skip_generic", &h.skip_generic)] {
            if let Some(bad) = list
                .iter()
                .find(|r| crate::names::validate_recipe_name(r).is_err())
            {
                return Err(invalid(key, format!("`{bad}` is not a recipe name")));
            }
        }
        for (repo, rules) in &h.compose_allow {
            if !crate::names::is_owner_slash_repo(repo) {
                return Err(invalid(
                    "harness.compose_allow",
                    format!("`{repo}` is not of the form owner/name"),
                ));
            }
            if let Some(bad) = rules.iter().find(|r| !crate::policy::is_rule(r)) {
                let known: Vec<&str> = crate::policy::RULES.iter().map(|(r, _)| *r).collect();
                return Err(invalid(
                    "harness.compose_allow",
                    format!(
                        "{repo}: `{bad}` is not a policy rule; known rules: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_daemon(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, problem: String| (key.to_string(), problem);
        let d = &self.daemon;
        if d.concurrency == 0 {
            return Err(invalid("daemon.concurrency", "must be at least 1".into()));
        }
        if d.max_body_bytes < 1024 {
            return Err(invalid(
                "daemon.max_body_bytes",
                "must be at least 1024".into(),
            ));
        }
        if d.max_connections < 2 {
            return Err(invalid(
                "daemon.max_connections",
                "must be at least 2".into(),
            ));
        }
        if d.max_log_followers == 0 {
            return Err(invalid(
                "daemon.max_log_followers",
                "must be at least 1".into(),
            ));
        }
        if let Err(problem) = crate::listen::check(&d.listen) {
            return Err(invalid("daemon.listen", problem));
        }
        Ok(())
    }

    fn validate_forge(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, problem: String| (key.to_string(), problem);
        let f = &self.forge;
        if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
            return Err(invalid(
                "forge.url",
                format!("`{}` is not an http(s) URL", f.url),
            ));
        }
        for (key, list) in [
            ("forge.repo_allowlist", &f.repo_allowlist),
            ("forge.poll_repos", &f.poll_repos),
        ] {
            if let Some(bad) = list.iter().find(|r| !crate::names::is_owner_slash_repo(r)) {
                return Err(invalid(
                    key,
                    format!("`{bad}` is not of the form owner/name"),
                ));
            }
        }
        for (key, file) in [
            ("forge.token_file", &f.token_file),
            ("forge.webhook_secret_file", &f.webhook_secret_file),
        ] {
            if let Some(p) = file
                && crate::names::is_nix_store_path(p)
            {
                return Err(invalid(
                    key,
                    format!(
                        "{} is in the Nix store, which is world-readable: keep secrets outside it",
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = Config::parse(
            "[harness]\nabra = \"x\"\nconverge_timeout = 3\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("c.toml:3:"), "{err}");
        assert!(err.contains("converge_timeout"), "{err}");
    }

    #[test]
    fn invalid_value_names_key() {
        let err = Config::parse("[daemon]\nconcurrency = 0\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.concurrency"), "{err}");
        let err = Config::parse(
            "[forge]\ntoken_file = \"/nix/store/abc-token\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Nix store"), "{err}");
        // The repo-local allowlist names repositories, never bare recipe names.
        let err = Config::parse(
            "[harness]\nrepo_local_allowlist = [\"traefik\"]\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("owner/name"), "{err}");
        assert!(
            Config::parse(
                "[harness]\nrepo_local_allowlist = [\"coop-cloud/traefik\"]\n",
                Path::new("c.toml"),
            )
            .is_ok()
        );
    }

    #[test]
    fn compose_allowances_name_repositories_and_rules() {
        let c = Config::parse(
            "[harness.compose_allow]\n\"coop-cloud/traefik\" = [\"docker-socket\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(
            c.harness.compose_allow["coop-cloud/traefik"],
            vec!["docker-socket"]
        );
        let err = Config::parse(
            "[harness.compose_allow]\ntraefik = [\"docker-socket\"]\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("harness.compose_allow") && err.contains("owner/name"),
            "{err}"
        );
        let err = Config::parse(
            "[harness.compose_allow]\n\"a/b\" = [\"everything\"]\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("everything") && err.contains("docker-socket"),
            "{err}"
        );
    }

    #[test]
    fn known_keys_cover_every_section() {
        let keys = known_keys();
        assert!(keys.contains(&"harness.abra".to_string()));
        assert!(keys.contains(&"daemon.listen".to_string()));
        assert!(keys.contains(&"forge.webhook_secret_file".to_string()));
    }
}
