//! The app's configuration from the commit under test: the env file abra deploys with and the
//! secrets it needs, derived from the `.env.sample` of the version being deployed (pure).
//!
//! cc-ci never asks abra to generate secrets (`app new -S` prints a table nobody documents):
//! it makes every value itself, so the redactor knows each one before anything is printed, and
//! inserts it with `abra app secret insert`.

use rand::Rng;
use rand::distributions::Alphanumeric;

use cc_ci_envfile::{EnvFile, parse_line};

/// Parses an env file with abra's expansion (the one shared parser).
pub fn parse_env(text: &str) -> EnvFile {
    EnvFile::parse(text)
}

/// Length of a generated secret without a `# length=` option.
pub const DEFAULT_SECRET_LENGTH: usize = 32;

/// A secret an env file declares: `SECRET_<NAME>_VERSION=<version> [# length=<n>] [generate=false]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// Lower-case, as in compose and in the swarm secret's name.
    pub name: String,
    pub version: String,
    pub length: usize,
    /// `false` for `# generate=false` (an operator inserts it by hand; cc-ci still makes one).
    pub generate: bool,
}

pub fn secrets(env: &EnvFile) -> Vec<SecretSpec> {
    env.secrets()
        .into_iter()
        .filter(|d| !d.version.is_empty())
        .map(|d| SecretSpec {
            name: d.name,
            version: d.version,
            length: d.length.filter(|n| *n > 0).unwrap_or(DEFAULT_SECRET_LENGTH),
            generate: d.generate,
        })
        .collect()
}

/// A random value of `length` letters and digits.
pub fn random_value(length: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

fn key_of(line: &str) -> Option<String> {
    parse_line(line).map(|a| a.key)
}

/// The env file of a new app from the `.env.sample` of the version deployed: the sample's lines
/// with `DOMAIN=` set (added when missing) and the first `TYPE=` line replaced by `type_line`
/// (abra's `TYPE=<recipe>:<version>`, kept from the file `app new` wrote).
pub fn env_from_sample(sample: &str, domain: &str, type_line: Option<&str>) -> String {
    let mut out = Vec::new();
    let (mut domain_done, mut type_done) = (false, false);
    for line in sample.lines() {
        match key_of(line).as_deref() {
            Some("DOMAIN") if !domain_done => {
                out.push(format!("DOMAIN={domain}"));
                domain_done = true;
            }
            Some("TYPE") if !type_done => {
                out.push(type_line.unwrap_or(line).to_string());
                type_done = true;
            }
            _ => out.push(line.to_string()),
        }
    }
    if !domain_done {
        out.push(format!("DOMAIN={domain}"));
    }
    if !type_done && let Some(t) = type_line {
        out.insert(0, t.to_string());
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// What an operator does to the app's env file before upgrading to `head_sample`'s version: keys
/// new in the head are appended as the head writes them, and secret versions the head changed
/// are set to the head's. Returns the new env text and the keys added or changed.
pub fn upgrade_env(current: &str, head_sample: &str) -> (String, Vec<String>) {
    let cur = parse_env(current);
    let head = parse_env(head_sample);
    let mut changed = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    for line in current.lines() {
        // Secret versions, and COMPOSE_FILE (validated from the head, so deployed from it too).
        if let Some(k) = key_of(line)
            && ((k.starts_with("SECRET_") && k.ends_with("_VERSION")) || k == "COMPOSE_FILE")
            && let (Some(old), Some(new)) = (cur.get(&k), head.get(&k))
            && old != new
        {
            let comment = head
                .entry(&k)
                .and_then(|e| e.comment.as_deref())
                .map(|c| format!(" # {c}"))
                .unwrap_or_default();
            lines.push(format!("{k}=\"{new}\"{comment}"));
            changed.push(format!("{k}={new} (was {old})"));
            continue;
        }
        lines.push(line.to_string());
    }
    let mut added_header = false;
    for line in head_sample.lines() {
        let Some(k) = key_of(line) else { continue };
        if cur.get(&k).is_some() || k == "TYPE" {
            continue;
        }
        if !added_header {
            lines.push("# added by cc-ci: new in the version under test".into());
            added_header = true;
        }
        lines.push(line.to_string());
        changed.push(k);
    }
    let mut s = lines.join("\n");
    s.push('\n');
    (s, changed)
}

/// Secrets of `after` that `before` does not have at that version (new ones and new versions).
pub fn new_secrets(before: &EnvFile, after: &EnvFile) -> Vec<SecretSpec> {
    let old = secrets(before);
    secrets(after)
        .into_iter()
        .filter(|s| {
            !old.iter()
                .any(|o| o.name == s.name && o.version == s.version)
        })
        .collect()
}

/// `$VAR`, `${VAR}` and `${VAR:-default}`/`${VAR-default}` of a compose value, as compose
/// interpolates them (`$$` is a literal `$`; unset is empty).
pub fn interpolate(text: &str, vars: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                out.push_str("${");
                rest = r;
                continue;
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            let (name, default) = match inner.split_once(":-").or_else(|| inner.split_once('-')) {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match vars.get(name).filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(v),
                None => out.push_str(default.unwrap_or("")),
            }
        } else {
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if n == 0 {
                out.push('$');
                continue;
            }
            out.push_str(vars.get(&rest[..n]).map(String::as_str).unwrap_or(""));
            rest = &rest[n..];
        }
    }
    out.push_str(rest);
    out
}

/// Images the services of a compose file name, interpolated with `vars`.
pub fn compose_images(
    text: &str,
    vars: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(text) else {
        return Vec::new();
    };
    doc.get("services")
        .and_then(|s| s.as_mapping())
        .map(|m| {
            m.values()
                .filter_map(|svc| svc.get("image")?.as_str())
                .map(|i| interpolate(i, vars).trim().to_string())
                .filter(|i| !i.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "TYPE=web\nDOMAIN=web.example.com\nLETS_ENCRYPT_ENV=production\n\
SECRET_API_KEY_VERSION=v1 # length=24\nSECRET_SMTP_VERSION=v1 # generate=false length=12\n";
    const HEAD: &str = "TYPE=web\nDOMAIN=web.example.com\nLETS_ENCRYPT_ENV=production\n\
SECRET_API_KEY_VERSION=v2 # length=24\nSECRET_SMTP_VERSION=v1 # generate=false length=12\n\
SECRET_UPLOAD_KEY_VERSION=v1\nUPLOAD_LIMIT=10M\n";

    #[test]
    fn images_are_interpolated() {
        let vars: std::collections::BTreeMap<String, String> =
            [("TAG".to_string(), "2".to_string())].into_iter().collect();
        let c = "services:\n  app:\n    image: reg:5000/web:${TAG}\n  db:\n    image: pg:${PG:-16}\n  x:\n    build: .\n";
        let mut imgs = compose_images(c, &vars);
        imgs.sort();
        assert_eq!(imgs, vec!["pg:16", "reg:5000/web:2"]);
        assert_eq!(interpolate("a$$b $TAG-$NOPE", &vars), "a$b 2-");
    }

    #[test]
    fn secrets_read_length_and_generate() {
        let s = secrets(&parse_env(BASE));
        assert_eq!(s.len(), 2);
        let api = s.iter().find(|x| x.name == "api_key").unwrap();
        assert_eq!(
            (api.version.as_str(), api.length, api.generate),
            ("v1", 24, true)
        );
        let smtp = s.iter().find(|x| x.name == "smtp").unwrap();
        assert_eq!((smtp.length, smtp.generate), (12, false));
        let none = secrets(&parse_env("SECRET_X_VERSION=v1\n"));
        assert_eq!(none[0].length, DEFAULT_SECRET_LENGTH);
        assert_eq!(random_value(24).len(), 24);
        assert_ne!(random_value(32), random_value(32));
    }

    #[test]
    fn env_from_the_sample_of_the_deployed_version() {
        let env = env_from_sample(BASE, "web-1.ci.local", Some("TYPE=web:1.1.0+1.1"));
        assert!(
            env.starts_with("TYPE=web:1.1.0+1.1\nDOMAIN=web-1.ci.local\n"),
            "{env}"
        );
        assert!(env.contains("SECRET_API_KEY_VERSION=v1 # length=24"));
        assert_eq!(
            env_from_sample("X=1\n", "d.test", None),
            "X=1\nDOMAIN=d.test\n"
        );
    }

    #[test]
    fn upgrade_adds_new_keys_and_secret_versions() {
        let env = env_from_sample(BASE, "web-1.ci.local", Some("TYPE=web:1.0.0"));
        let (up, changed) = upgrade_env(&env, HEAD);
        let parsed = parse_env(&up);
        assert_eq!(parsed.get("SECRET_API_KEY_VERSION"), Some("v2"));
        assert_eq!(parsed.get("SECRET_UPLOAD_KEY_VERSION"), Some("v1"));
        assert_eq!(parsed.get("UPLOAD_LIMIT"), Some("10M"));
        assert_eq!(parsed.get("DOMAIN"), Some("web-1.ci.local"));
        assert!(up.starts_with("TYPE=web:1.0.0\n"));
        assert_eq!(
            changed,
            vec![
                "SECRET_API_KEY_VERSION=v2 (was v1)".to_string(),
                "SECRET_UPLOAD_KEY_VERSION".into(),
                "UPLOAD_LIMIT".into()
            ]
        );
        let new: Vec<(String, String)> = new_secrets(&parse_env(&env), &parsed)
            .into_iter()
            .map(|s| (s.name, s.version))
            .collect();
        assert_eq!(
            new,
            vec![
                ("api_key".to_string(), "v2".to_string()),
                ("upload_key".into(), "v1".into())
            ]
        );
        // A COMPOSE_FILE the head changed is the head's.
        let (cf, what) = upgrade_env(
            "COMPOSE_FILE=compose.yml\n",
            "COMPOSE_FILE=\"compose.yml:compose.pg.yml\"\n",
        );
        assert_eq!(
            parse_env(&cf).get("COMPOSE_FILE"),
            Some("compose.yml:compose.pg.yml")
        );
        assert_eq!(
            what,
            vec!["COMPOSE_FILE=compose.yml:compose.pg.yml (was compose.yml)"]
        );
        // Nothing new: nothing changes.
        let (same, none) = upgrade_env(&up, HEAD);
        assert_eq!(same, up);
        assert!(none.is_empty());
    }
}
