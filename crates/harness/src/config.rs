//! `[harness]` of the cc-ci configuration file: how a run deploys and checks a recipe. The
//! harness owns these keys, their defaults and their validation; the whole file (with the
//! daemon's `[daemon]` and `[forge]`) is read by `cc_ci_daemon::config`, which hands
//! `cc-ci run` this section. Unknown keys are errors (a typo must never silently fall back to
//! a default).
//!
//! Security-relevant settings (allowlists, compose allowances) come only from here, never from
//! a recipe or a pull request.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A value the config must not hold: its dotted key (`harness.server`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub problem: String,
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

impl HarnessConfig {
    /// The first bad value, as the dotted key (`harness.…`) and the problem.
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, problem: String| Invalid {
            key: key.to_string(),
            problem,
        };
        if !crate::names::is_valid_domain_suffix(&self.domain_suffix) {
            return Err(invalid(
                "harness.domain_suffix",
                format!(
                    "`{}` is not a DNS name of lower-case letters, digits, `-` and `.` (at most 40 characters)",
                    self.domain_suffix
                ),
            ));
        }
        if self.server.is_empty()
            || !self
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
            ("harness.abra_timeout_secs", self.abra_timeout_secs),
            ("harness.converge_timeout_secs", self.converge_timeout_secs),
            ("harness.poll_interval_ms", self.poll_interval_ms),
            ("harness.engine_timeout_secs", self.engine_timeout_secs),
            (
                "harness.port_lease_timeout_secs",
                self.port_lease_timeout_secs,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        // Keyed by the full repository: a recipe name would trust every fork of that name.
        if let Some(bad) = self
            .repo_local_allowlist
            .iter()
            .find(|r| !crate::names::is_owner_slash_repo(r))
        {
            return Err(invalid(
                "harness.repo_local_allowlist",
                format!("`{bad}` is not of the form owner/name (list repositories, not recipes)"),
            ));
        }
        if let Some(img) = &self.http_probe_image
            && (img.is_empty()
                || img.starts_with('-')
                || img.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "harness.http_probe_image",
                format!("`{img}` is not an image reference"),
            ));
        }
        for (key, list) in [("harness.skip_generic", &self.skip_generic)] {
            if let Some(bad) = list
                .iter()
                .find(|r| crate::names::validate_recipe_name(r).is_err())
            {
                return Err(invalid(key, format!("`{bad}` is not a recipe name")));
            }
        }
        for (repo, rules) in &self.compose_allow {
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
}

/// The 1-based line a TOML error points at (0 when it points nowhere), for messages naming
/// file and line. Shared by every TOML file cc-ci reads (the config, overlays).
pub fn toml_error_line(text: &str, error: &toml::de::Error) -> usize {
    error
        .span()
        .map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        })
        .unwrap_or(0)
}

/// The dotted keys (`<section>.<field>`) of a config section, from its defaults. Kept beside
/// the structs so the NixOS module, the docs and check-config can be tested for agreement.
pub fn keys_of<T: Serialize + Default>(section: &str) -> Vec<String> {
    // Serialising the default gives every field; Option fields serialise as absent in TOML,
    // so go through JSON where `None` stays visible as null.
    match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(map)) => {
            map.keys().map(|k| format!("{section}.{k}")).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(HarnessConfig::default().validate(), Ok(()));
    }

    #[test]
    fn invalid_value_names_key() {
        let bad = |edit: fn(&mut HarnessConfig)| {
            let mut h = HarnessConfig::default();
            edit(&mut h);
            h.validate().unwrap_err()
        };
        // The repo-local allowlist names repositories, never bare recipe names.
        let e = bad(|h| h.repo_local_allowlist = vec!["traefik".into()]);
        assert_eq!(e.key, "harness.repo_local_allowlist");
        assert!(e.problem.contains("owner/name"), "{e:?}");
        let e = bad(|h| h.converge_timeout_secs = 0);
        assert_eq!(e.key, "harness.converge_timeout_secs");
        let e = bad(|h| h.domain_suffix = "Not A Domain".into());
        assert_eq!(e.key, "harness.domain_suffix");
        let ok = HarnessConfig {
            repo_local_allowlist: vec!["coop-cloud/traefik".into()],
            ..HarnessConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn compose_allowances_name_repositories_and_rules() {
        let mut h = HarnessConfig::default();
        h.compose_allow
            .insert("traefik".into(), vec!["docker-socket".into()]);
        let e = h.validate().unwrap_err();
        assert!(
            e.key == "harness.compose_allow" && e.problem.contains("owner/name"),
            "{e:?}"
        );
        let mut h = HarnessConfig::default();
        h.compose_allow
            .insert("a/b".into(), vec!["everything".into()]);
        let e = h.validate().unwrap_err();
        assert!(
            e.problem.contains("everything") && e.problem.contains("docker-socket"),
            "{e:?}"
        );
    }

    #[test]
    fn keys_of_lists_every_field_even_unset_options() {
        let keys = keys_of::<HarnessConfig>("harness");
        assert!(keys.contains(&"harness.abra".to_string()), "{keys:?}");
        assert!(keys.contains(&"harness.http_probe_image".to_string()));
        assert!(keys.contains(&"harness.compose_allow".to_string()));
    }
}
