//! App env files (`$ABRA_DIR/servers/<server>/<domain>.env`) and `.env.sample`: dotenv lines,
//! the `TYPE=<recipe>[:<version>]` first line, and the `SECRET_<NAME>_VERSION` declarations.

use std::collections::BTreeMap;

pub use cc_ci_envfile::{EnvFile, SecretDecl, parse_line};

/// Every key's final value, expanded as abra expands it (the one parser cc-ci uses too).
pub fn vars(text: &str) -> BTreeMap<String, String> {
    EnvFile::parse(text).vars()
}

/// The recipe and pinned version of an env file's `TYPE=` (or older `RECIPE=`) line.
pub fn recipe_of(text: &str) -> Option<(String, Option<String>)> {
    EnvFile::parse(text)
        .recipe_type()
        .ok()
        .map(|t| (t.name, t.version))
}

/// The env file for a new app: `.env.sample` with `DOMAIN=` set (added when the sample has none).
pub fn from_sample(sample: &str, domain: &str) -> String {
    let mut out = Vec::new();
    let mut seen = false;
    for line in sample.lines() {
        match parse_line(line) {
            Some(a) if a.key == "DOMAIN" && !seen => {
                out.push(format!("DOMAIN={domain}"));
                seen = true;
            }
            _ => out.push(line.to_string()),
        }
    }
    if !seen {
        out.push(format!("DOMAIN={domain}"));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// `text` with its first line replaced by `TYPE=<type_value>` when that line is a `TYPE=`/`RECIPE=`
/// line, else with such a line put first.
pub fn with_type_line(text: &str, type_value: &str) -> String {
    let new_first = format!("TYPE={type_value}");
    let mut lines: Vec<&str> = text.lines().collect();
    let first_is_type = lines
        .first()
        .and_then(|l| parse_line(l))
        .is_some_and(|a| a.key == "TYPE" || a.key == "RECIPE");
    if first_is_type {
        lines[0] = &new_first;
    } else {
        lines.insert(0, &new_first);
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// abra's length for a generated secret whose line gives none.
pub const DEFAULT_SECRET_LENGTH: usize = 32;

pub fn secret_decls(text: &str) -> Vec<SecretDecl> {
    EnvFile::parse(text).secrets()
}

/// `export NAME=VALUE` lines of a recipe's `abra.sh` (abra reads these, it does not run the file).
pub fn abra_sh_exports(text: &str) -> BTreeMap<String, String> {
    EnvFile::parse(text)
        .entries()
        .iter()
        .filter(|e| e.exported)
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "TYPE=web\n\nDOMAIN=web.example.com\n## Domain aliases\n#EXTRA_DOMAINS=x\n\
        LETS_ENCRYPT_ENV=production\nSECRET_API_KEY_VERSION=v1 # length=24\nSECRET_DB_PASSWORD_VERSION=v2\n\
        #SECRET_OFF_VERSION=v1\nQUOTED=\"a # b\" # trailing\n";

    #[test]
    fn parses_values_comments_and_quotes() {
        let v = vars(SAMPLE);
        assert_eq!(v["DOMAIN"], "web.example.com");
        assert_eq!(v["SECRET_API_KEY_VERSION"], "v1");
        assert_eq!(v["QUOTED"], "a # b");
        assert!(!v.contains_key("EXTRA_DOMAINS"));
        assert_eq!(
            parse_line("export X_VERSION='v3'").map(|a| a.written),
            Some("v3".into())
        );
        assert_eq!(parse_line("not an assignment"), None);
    }

    #[test]
    fn secrets_honour_length_and_default() {
        let got: Vec<_> = secret_decls(SAMPLE)
            .into_iter()
            .map(|d| (d.name, d.version, d.length))
            .collect();
        assert_eq!(
            got,
            vec![
                ("api_key".into(), "v1".into(), Some(24)),
                ("db_password".into(), "v2".into(), None),
            ]
        );
    }

    #[test]
    fn new_env_sets_domain_and_type_line_is_replaced() {
        let env = from_sample(SAMPLE, "web-abc123.ci.test");
        assert_eq!(vars(&env)["DOMAIN"], "web-abc123.ci.test");
        assert_eq!(recipe_of(&env), Some(("web".into(), None)));
        let deployed = with_type_line(&env, "web:1.0.0+1.0");
        assert!(deployed.starts_with("TYPE=web:1.0.0+1.0\n\nDOMAIN=web-abc123.ci.test\n"));
        assert_eq!(
            recipe_of(&deployed),
            Some(("web".into(), Some("1.0.0+1.0".into())))
        );
        assert_eq!(
            with_type_line("DOMAIN=x\n", "web:1"),
            "TYPE=web:1\nDOMAIN=x\n"
        );
        assert_eq!(
            from_sample("TYPE=web\n", "d.test"),
            "TYPE=web\nDOMAIN=d.test\n"
        );
    }

    #[test]
    fn abra_sh_exports_only() {
        let sh = "#!/bin/sh\nexport PAGE_VERSION=v2\nFOO=bar\n  export ENTRY_VERSION=\"v9\"\n";
        let e = abra_sh_exports(sh);
        assert_eq!(e.len(), 2);
        assert_eq!(e["PAGE_VERSION"], "v2");
        assert_eq!(e["ENTRY_VERSION"], "v9");
    }
}
