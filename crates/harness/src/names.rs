//! Validation of every name that comes from outside (recipe names, git refs, domains) and the
//! derivation of per-run names. Pure functions: nothing here touches the system.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "recipe name `{0}` is invalid: use lower-case letters, digits, `-` and `_` only (at most 64 characters, no `/` or `..`)"
    )]
    Recipe(String),
    #[error(
        "git ref `{0}` is invalid: use a commit hash, branch or tag name of letters, digits and `._/+-` (no `..`, no leading `-`)"
    )]
    Ref(String),
}

/// Recipe names become directory names under `ABRA_DIR/recipes` and prefixes of swarm object
/// names, so only a conservative alphabet is accepted.
pub fn validate_recipe_name(name: &str) -> Result<(), NameError> {
    if cc_ci_envfile::is_valid_recipe_name(name) {
        Ok(())
    } else {
        Err(NameError::Recipe(name.into()))
    }
}

/// A git ref as given on the command line or by a pull request. Shell characters, option-like
/// values and path traversal are refused before anything runs.
pub fn validate_ref(r: &str) -> Result<(), NameError> {
    let ok = !r.is_empty()
        && r.len() <= 200
        && !r.starts_with('-')
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NameError::Ref(r.into()))
    }
}

pub fn is_valid_domain_suffix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

pub fn is_owner_slash_repo(s: &str) -> bool {
    let mut parts = s.split('/');
    let valid = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
    };
    valid(parts.next()) && valid(parts.next()) && parts.next().is_none()
}

/// True for paths inside the Nix store. A few lines of our own instead of a crate: the published
/// `nix-compat` is an empty placeholder, and all we need is the prefix test.
pub fn is_nix_store_path(p: &Path) -> bool {
    p.starts_with("/nix/store")
}

/// Per-run app domain: `<recipe[:4]>-<6 hex>.<suffix>`. Short, because swarm secret names
/// (`<stack>_<secret>_<version>`) must stay within 64 characters.
pub fn app_domain(recipe: &str, suffix: &str, random: u32) -> String {
    let prefix: String = recipe
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(4)
        .collect();
    let prefix = if prefix.is_empty() {
        "app".to_string()
    } else {
        prefix
    };
    format!("{prefix}-{:06x}.{suffix}", random & 0xff_ffff)
}

/// Stack name = app domain with `.` replaced by `_` (abra's rule).
pub fn stack_name(domain: &str) -> String {
    domain.replace('.', "_")
}

/// True when `stack` looks like a stack cc-ci created with this suffix (used by gc, which must never
/// touch stacks that are not ours).
pub fn is_ci_stack(stack: &str, suffix: &str) -> bool {
    let tail = format!("_{}", stack_name(suffix));
    let Some(head) = stack.strip_suffix(&tail) else {
        return false;
    };
    let Some((prefix, hex)) = head.rsplit_once('-') else {
        return false;
    };
    !prefix.is_empty()
        && prefix.len() <= 4
        && prefix.chars().all(|c| c.is_ascii_alphanumeric())
        && hex.len() == 6
        && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// The cc-ci stack an object name (`<stack>_<rest>`) belongs to, if any: objects abra creates
/// without the namespace label (secrets) are found this way.
pub fn ci_stack_of_object(name: &str, suffix: &str) -> Option<String> {
    let tail = format!("_{}_", stack_name(suffix));
    let idx = name.find(&tail)?;
    let stack = &name[..idx + tail.len() - 1];
    is_ci_stack(stack, suffix).then(|| stack.to_string())
}

/// The last path segment of a repository path or URL without `.git`: it prefixes the app domain
/// (the recipe's name, `TYPE=`, is only known once the repository is cloned).
pub fn recipe_name_from_source(source: &str) -> String {
    let trimmed = source.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    last.strip_suffix(".git").unwrap_or(last).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_names() {
        assert!(validate_recipe_name("gitea").is_ok());
        assert!(validate_recipe_name("my-app_2").is_ok());
        for bad in [
            "",
            "../etc",
            "a/b",
            "Gitea",
            "-x",
            "a b",
            "x;rm",
            &"a".repeat(65),
        ] {
            assert!(validate_recipe_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refs() {
        for good in [
            "main",
            "1.2.0+1.21",
            "feature/x",
            "a1b2c3d",
            "refs/pull/3/head",
        ] {
            assert!(validate_ref(good).is_ok(), "{good}");
        }
        for bad in [
            "", "-x", "$(id)", "a;b", "a..b", "a b", "x`y`", "/abs", "a@{1}", "x.lock",
        ] {
            assert!(validate_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_and_stacks() {
        let d = app_domain("gitea", "ci.local", 0xabc123);
        assert_eq!(d, "gite-abc123.ci.local");
        assert_eq!(stack_name(&d), "gite-abc123_ci_local");
        assert!(is_ci_stack("gite-abc123_ci_local", "ci.local"));
        assert!(!is_ci_stack("gite-abc123_ci_local", "other.org"));
        assert!(!is_ci_stack("traefik_example_org", "ci.local"));
        assert!(!is_ci_stack("gite-zzz123_ci_local", "ci.local"));
        assert_eq!(app_domain("--", "x", 1), "app-000001.x");
        assert_eq!(
            ci_stack_of_object("gite-abc123_ci_local_db_password_v1", "ci.local").as_deref(),
            Some("gite-abc123_ci_local")
        );
        assert_eq!(ci_stack_of_object("other_db_password_v1", "ci.local"), None);
    }

    #[test]
    fn owner_repo_and_sources() {
        assert!(is_owner_slash_repo("coop-cloud/gitea"));
        assert!(!is_owner_slash_repo("coop-cloud"));
        assert!(!is_owner_slash_repo("a/../b"));
        assert!(!is_owner_slash_repo("a/.."));
        assert_eq!(
            recipe_name_from_source("https://git.example/coop-cloud/gitea.git"),
            "gitea"
        );
        assert_eq!(recipe_name_from_source("/tmp/x/web/"), "web");
        assert_eq!(recipe_name_from_source("git@host:o/keycloak"), "keycloak");
    }

    #[test]
    fn suffixes() {
        assert!(is_valid_domain_suffix("ci.local"));
        assert!(!is_valid_domain_suffix("CI.local"));
        assert!(!is_valid_domain_suffix("a..b"));
        assert!(is_nix_store_path(Path::new("/nix/store/x")));
        assert!(!is_nix_store_path(Path::new("/run/credentials/x")));
    }
}
