//! App env files (`$ABRA_DIR/servers/<server>/<domain>.env`) and `.env.sample`: dotenv lines,
//! the `TYPE=<recipe>[:<version>]` first line, and the `SECRET_<NAME>_VERSION` declarations.

use std::collections::BTreeMap;

/// One `KEY=VALUE` assignment of a dotenv text, with the comment that trails it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub value: String,
    pub comment: Option<String>,
}

/// Parses one dotenv line: `[export ]KEY=VALUE [# comment]`. Blank lines and comment lines give
/// `None`. Quoted values keep `#`; unquoted values end at ` #`.
pub fn parse_line(line: &str) -> Option<Assignment> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let t = t.strip_prefix("export ").map(str::trim_start).unwrap_or(t);
    let (key, rest) = t.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let rest = rest.trim_start();
    let (value, tail) = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => match rest[1..].find(q) {
            Some(end) => (rest[1..1 + end].to_string(), &rest[2 + end..]),
            None => (rest[1..].to_string(), ""),
        },
        _ => match rest.find(" #").or_else(|| rest.find("\t#")) {
            Some(i) => (rest[..i].trim_end().to_string(), &rest[i..]),
            None => (rest.trim_end().to_string(), ""),
        },
    };
    let comment = tail
        .trim()
        .strip_prefix('#')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    Some(Assignment {
        key: key.to_string(),
        value,
        comment,
    })
}

/// All assignments of a dotenv text, later ones winning.
pub fn vars(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(parse_line)
        .map(|a| (a.key, a.value))
        .collect()
}

/// The recipe and pinned version of an env file's `TYPE=` (or older `RECIPE=`) line.
pub fn recipe_of(text: &str) -> Option<(String, Option<String>)> {
    let v = vars(text);
    let ty = v.get("TYPE").or_else(|| v.get("RECIPE"))?;
    let (recipe, version) = match ty.split_once(':') {
        Some((r, ver)) => (r, Some(ver.to_string()).filter(|s| !s.is_empty())),
        None => (ty.as_str(), None),
    };
    (!recipe.is_empty()).then(|| (recipe.to_string(), version))
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

/// A secret an env file declares with `SECRET_<NAME>_VERSION=<version> [# length=<n>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDecl {
    /// Lower-case name as used in compose and in the swarm secret's name.
    pub name: String,
    pub version: String,
    pub length: usize,
    /// `false` for `# generate=false`: the operator inserts the value by hand.
    pub generate: bool,
}

pub const DEFAULT_SECRET_LENGTH: usize = 32;

pub fn secret_decls(text: &str) -> Vec<SecretDecl> {
    let mut out: Vec<SecretDecl> = Vec::new();
    for a in text.lines().filter_map(parse_line) {
        let Some(name) = a
            .key
            .strip_prefix("SECRET_")
            .and_then(|k| k.strip_suffix("_VERSION"))
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let length = a
            .comment
            .as_deref()
            .and_then(|c| c.split_whitespace().find_map(|w| w.strip_prefix("length=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(DEFAULT_SECRET_LENGTH);
        let generate = !a
            .comment
            .as_deref()
            .is_some_and(|c| c.split_whitespace().any(|w| w == "generate=false"));
        let decl = SecretDecl {
            name: name.to_ascii_lowercase(),
            version: a.value,
            length,
            generate,
        };
        out.retain(|d| d.name != decl.name);
        out.push(decl);
    }
    out
}

/// `export NAME=VALUE` lines of a recipe's `abra.sh` (abra reads these, it does not run the file).
pub fn abra_sh_exports(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("export "))
        .filter_map(parse_line)
        .map(|a| (a.key, a.value))
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
            parse_line("export X_VERSION='v3'").map(|a| a.value),
            Some("v3".into())
        );
        assert_eq!(parse_line("not an assignment"), None);
    }

    #[test]
    fn secrets_honour_length_and_default() {
        assert_eq!(
            secret_decls(SAMPLE),
            vec![
                SecretDecl {
                    name: "api_key".into(),
                    version: "v1".into(),
                    length: 24,
                    generate: true,
                },
                SecretDecl {
                    name: "db_password".into(),
                    version: "v2".into(),
                    length: DEFAULT_SECRET_LENGTH,
                    generate: true,
                },
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
