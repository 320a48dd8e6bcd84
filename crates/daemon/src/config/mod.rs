//! The one cc-ci configuration file (TOML), shared by `cc-ci run`, `cc-ci serve`, `cc-ci gc`
//! and `cc-ci check-config`: `[harness]` (owned by the harness, `cc_ci_harness::config`),
//! `[daemon]` and `[forge]` (owned here). Every key has a default so an empty file is valid;
//! unknown keys are errors in every section (a typo must never silently fall back to a
//! default). The daemon owns the whole file because it is the one component that needs every
//! section; `cc-ci run` gets its `[harness]` and the forge secret *file names* from it.
//!
//! Security-relevant settings (allowlists, secrets) come only from here, never from a recipe
//! or a pull request.

pub mod listen;

use std::path::{Path, PathBuf};

use cc_ci_harness::config::{HarnessConfig, Invalid, keys_of};
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

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub harness: HarnessConfig,
    pub daemon: DaemonConfig,
    pub forge: ForgeConfig,
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

impl ForgeConfig {
    /// The files holding the forge token and the webhook secret, as configured (the systemd
    /// credentials come first when present; see `secrets`). A run learns their values only to
    /// mask them.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        self.token_file
            .iter()
            .chain(&self.webhook_secret_file)
            .cloned()
            .collect()
    }
}

/// Every accepted key, dotted (`harness.abra`, ...), of every section: what `cc-ci check-config
/// --keys` prints and what the NixOS module is held to (tests/nix_agreement.rs).
pub fn known_keys() -> Vec<String> {
    let mut out = keys_of::<HarnessConfig>("harness");
    out.extend(keys_of::<DaemonConfig>("daemon"));
    out.extend(keys_of::<ForgeConfig>("forge"));
    out.sort();
    out
}

impl Config {
    /// Parse and validate TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: cc_ci_harness::config::toml_error_line(text, &e),
            message: e.message().to_string(),
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
        self.harness
            .validate()
            .and_then(|()| self.validate_daemon())
            .and_then(|()| self.validate_forge())
            .map_err(|Invalid { key, problem }| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                problem,
            })
    }

    fn validate_daemon(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, problem: String| Invalid {
            key: key.to_string(),
            problem,
        };
        let d = &self.daemon;
        for (key, v) in [
            ("daemon.run_timeout_secs", d.run_timeout_secs),
            ("daemon.request_timeout_secs", d.request_timeout_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
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
        if let Err(problem) = listen::check(&d.listen) {
            return Err(invalid("daemon.listen", problem));
        }
        Ok(())
    }

    fn validate_forge(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, problem: String| Invalid {
            key: key.to_string(),
            problem,
        };
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
            if let Some(bad) = list
                .iter()
                .find(|r| !cc_ci_harness::names::is_owner_slash_repo(r))
            {
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
                && cc_ci_harness::names::is_nix_store_path(p)
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
    fn a_section_missing_is_defaults_and_harness_values_reach_the_run() {
        let c = Config::parse("[harness]\nserver = \"swarm-1\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.harness.server, "swarm-1");
        assert_eq!(c.daemon, DaemonConfig::default());
        assert_eq!(c.forge, ForgeConfig::default());
        // A typo in any section is an error naming it, never its value.
        for (text, key) in [
            ("[daemon]\nconcurency = 2\n", "concurency"),
            ("[forge]\ntoken = \"s3cret-token\"\n", "token"),
            ("[harnes]\nabra = \"x\"\n", "harnes"),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("c.toml:") && err.contains(key), "{err}");
            assert!(!err.contains("s3cret-token"), "{err}");
        }
        let err = Config::parse("[daemon]\nrun_timeout_secs = 0\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.run_timeout_secs"), "{err}");
    }

    #[test]
    fn forge_secret_files_are_the_configured_ones() {
        let f = ForgeConfig {
            token_file: Some("/run/t".into()),
            webhook_secret_file: Some("/run/w".into()),
            ..Default::default()
        };
        assert_eq!(
            f.secret_files(),
            vec![PathBuf::from("/run/t"), PathBuf::from("/run/w")]
        );
        assert!(ForgeConfig::default().secret_files().is_empty());
    }

    #[test]
    fn known_keys_cover_every_section() {
        let keys = known_keys();
        assert!(keys.contains(&"harness.abra".to_string()));
        assert!(keys.contains(&"daemon.listen".to_string()));
        assert!(keys.contains(&"forge.webhook_secret_file".to_string()));
    }
}
