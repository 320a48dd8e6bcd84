//! Co-op Cloud env files — a recipe's `.env.sample` and an app's `<domain>.env` — read the way
//! abra reads them. One parser for cc-ci and its abra stand-in, so both agree on every line.
//!
//! The rules (those of the dotenv dialect abra uses):
//! - `KEY=VALUE` lines, optionally prefixed by `export `; blank lines and lines starting with `#`
//!   are skipped, as are lines that are not assignments.
//! - `'single quotes'` keep everything literally; `"double quotes"` keep `#` and spaces, know the
//!   escapes `\"`, `\\`, `\n`, `\t`, `\r`, `\$` and expand variables; an unquoted value ends at a
//!   `#` that follows whitespace and is trimmed, and expands variables too.
//! - `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty) and `${VAR-default}` (unset) refer to
//!   the lines *above* (so `COMPOSE_FILE="$COMPOSE_FILE:compose.x.yml"` extends its own earlier
//!   value); an unset variable is empty. The process environment is never consulted.
//! - Text after the `#` of a line is its comment; `key=value` words in it are options, as on
//!   secret lines: `SECRET_DB_PASSWORD_VERSION=v1 # length=32 generate=false charset=…`.
//! - A key set twice: the later line wins.

use std::collections::BTreeMap;

/// How a value was written, which decides what expansion does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    Unquoted,
    Single,
    Double,
}

/// One assignment as written, before expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    /// The text between the quotes (or the trimmed unquoted text), escapes not yet processed.
    pub written: String,
    pub quoting: Quoting,
    /// The text after the value's `#`, trimmed; `None` when there is none or it is empty.
    pub comment: Option<String>,
    pub exported: bool,
}

/// One assignment of an env file, with its value expanded against the lines above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// The value after quoting rules and expansion: what abra (and so compose) sees.
    pub value: String,
    pub comment: Option<String>,
    /// `key=value` words of the comment (`length`, `generate`, `charset`, …).
    pub options: BTreeMap<String, String>,
    pub exported: bool,
    /// 1-based line number in the file, for messages.
    pub line: usize,
}

impl Entry {
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }
}

/// Parses one line without expanding it. `None` for blank lines, comment lines and anything
/// that is not `[export ]KEY=VALUE`.
pub fn parse_line(line: &str) -> Option<Assignment> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let (exported, t) = match t.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => (true, rest.trim_start()),
        _ => (false, t),
    };
    let (key, rest) = t.split_once('=')?;
    let key = key.trim();
    if !is_name(key) {
        return None;
    }
    let raw = rest;
    let rest = raw.trim_start();
    let (written, quoting, tail) = match rest.chars().next() {
        Some('\'') => match rest[1..].find('\'') {
            Some(end) => (&rest[1..1 + end], Quoting::Single, &rest[2 + end..]),
            // An unclosed quote runs to the end of the line.
            None => (&rest[1..], Quoting::Single, ""),
        },
        Some('"') => match closing_double_quote(&rest[1..]) {
            Some(end) => (&rest[1..1 + end], Quoting::Double, &rest[2 + end..]),
            None => (&rest[1..], Quoting::Double, ""),
        },
        // `KEY= # note`: nothing but a comment.
        Some('#') if raw.len() > rest.len() => ("", Quoting::Unquoted, rest),
        _ => match comment_start(rest) {
            Some(i) => (rest[..i].trim_end(), Quoting::Unquoted, &rest[i..]),
            None => (rest.trim_end(), Quoting::Unquoted, ""),
        },
    };
    let comment = tail
        .find('#')
        .map(|i| tail[i + 1..].trim().to_string())
        .filter(|c| !c.is_empty());
    Some(Assignment {
        key: key.to_string(),
        written: written.to_string(),
        quoting,
        comment,
        exported,
    })
}

/// Byte index of the closing `"` in `s` (the text after the opening one), skipping `\"`.
fn closing_double_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Byte index of the `#` that starts an unquoted value's comment: one after whitespace.
fn comment_start(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (1..b.len()).find(|&i| b[i] == b'#' && (b[i - 1] == b' ' || b[i - 1] == b'\t'))
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_name(s: &str) -> bool {
    s.chars().next().is_some_and(is_name_start) && s.chars().all(is_name_char)
}

/// The value of `a` with escapes processed and variables expanded; `lookup` gives the values
/// defined so far (`None` = unset).
pub fn expand(a: &Assignment, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    match a.quoting {
        Quoting::Single => a.written.clone(),
        Quoting::Double => expand_text(&a.written, true, lookup),
        Quoting::Unquoted => expand_text(&a.written, false, lookup),
    }
}

fn expand_text(s: &str, double: bool, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            let next = chars[i + 1];
            let unescaped = match (double, next) {
                (_, '$') => Some('$'),
                (true, '"') => Some('"'),
                (true, '\\') => Some('\\'),
                (true, 'n') => Some('\n'),
                (true, 't') => Some('\t'),
                (true, 'r') => Some('\r'),
                _ => None,
            };
            match unescaped {
                Some(u) => {
                    out.push(u);
                    i += 2;
                }
                None => {
                    out.push('\\');
                    i += 1;
                }
            }
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        // `$NAME`
        if chars.get(i + 1).copied().is_some_and(is_name_start) {
            let end = (i + 1..chars.len())
                .find(|&j| !is_name_char(chars[j]))
                .unwrap_or(chars.len());
            let name: String = chars[i + 1..end].iter().collect();
            out.push_str(&lookup(&name).unwrap_or_default());
            i = end;
            continue;
        }
        // `${NAME}`, `${NAME:-default}`, `${NAME-default}`
        if chars.get(i + 1) == Some(&'{')
            && let Some(close) = matching_brace(&chars, i + 2)
        {
            let inner: String = chars[i + 2..close].iter().collect();
            if let Some(v) = expand_braced(&inner, lookup) {
                out.push_str(&v);
                i = close + 1;
                continue;
            }
        }
        // A `$` that starts nothing we know stays as written.
        out.push('$');
        i += 1;
    }
    out
}

/// Index of the `}` closing a `${` whose content starts at `from`, allowing nested `${…}` in
/// a default.
fn matching_brace(chars: &[char], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = from;
    while j < chars.len() {
        match chars[j] {
            '$' if chars.get(j + 1) == Some(&'{') => {
                depth += 1;
                j += 1;
            }
            '}' if depth == 0 => return Some(j),
            '}' => depth -= 1,
            _ => {}
        }
        j += 1;
    }
    None
}

fn expand_braced(inner: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let name_end = inner
        .find(|c: char| !is_name_char(c))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_end);
    if !is_name(name) {
        return None;
    }
    let value = lookup(name);
    if op.is_empty() {
        return Some(value.unwrap_or_default());
    }
    let (default, when_empty_too) = if let Some(d) = op.strip_prefix(":-") {
        (d, true)
    } else if let Some(d) = op.strip_prefix('-') {
        (d, false)
    } else {
        return None;
    };
    Some(match value {
        Some(v) if !(when_empty_too && v.is_empty()) => v,
        _ => expand_text(default, false, lookup),
    })
}

/// A parsed env file: every assignment in order, values expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile {
    entries: Vec<Entry>,
}

impl EnvFile {
    pub fn parse(text: &str) -> Self {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let Some(a) = parse_line(line) else {
                continue;
            };
            let value = expand(&a, &|name| seen.get(name).cloned());
            seen.insert(a.key.clone(), value.clone());
            entries.push(Entry {
                options: a.comment.as_deref().map(options_of).unwrap_or_default(),
                key: a.key,
                value,
                comment: a.comment,
                exported: a.exported,
                line: n + 1,
            });
        }
        Self { entries }
    }

    /// Every assignment in file order (a key set twice appears twice).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The line that sets `key` last, which is the one that counts.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|e| e.value.as_str())
    }

    /// Final value of every key.
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    /// The compose files `COMPOSE_FILE` lists, in order, empty segments dropped; `None` when it
    /// is unset or lists nothing (abra then deploys `compose.yml`).
    pub fn compose_files(&self) -> Option<Vec<String>> {
        let files: Vec<String> = self
            .get("COMPOSE_FILE")?
            .split(':')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        (!files.is_empty()).then_some(files)
    }

    /// The recipe named by `TYPE=` (older env files: `RECIPE=`): `name` in a `.env.sample`,
    /// `name:version` in an app env file abra has deployed.
    pub fn recipe_type(&self) -> Result<RecipeType, TypeError> {
        let entry = self
            .entry(TYPE_KEY)
            .or_else(|| self.entry(OLD_TYPE_KEY))
            .ok_or(TypeError::Missing)?;
        RecipeType::parse(&entry.value).map_err(|why| TypeError::Invalid {
            key: entry.key.clone(),
            value: entry.value.clone(),
            line: entry.line,
            why,
        })
    }

    /// Secrets declared by `SECRET_<NAME>_VERSION=<version>` lines, each once (the last line
    /// wins), in the order first declared.
    pub fn secrets(&self) -> Vec<SecretDecl> {
        let mut out: Vec<SecretDecl> = Vec::new();
        for e in &self.entries {
            let Some(name) = e
                .key
                .strip_prefix("SECRET_")
                .and_then(|k| k.strip_suffix("_VERSION"))
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            let decl = SecretDecl {
                name: name.to_ascii_lowercase(),
                version: e.value.clone(),
                length: e.option("length").and_then(|n| n.parse().ok()),
                generate: e.option("generate") != Some("false"),
                charset: e.option("charset").map(String::from),
                line: e.line,
            };
            match out.iter_mut().find(|d| d.name == decl.name) {
                Some(d) => *d = decl,
                None => out.push(decl),
            }
        }
        out
    }
}

/// `key=value` words of a comment; other words are prose and ignored.
fn options_of(comment: &str) -> BTreeMap<String, String> {
    comment
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| is_name(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub const TYPE_KEY: &str = "TYPE";
pub const OLD_TYPE_KEY: &str = "RECIPE";

/// The value of `TYPE=`: a recipe name and, in a deployed app's env file, its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeType {
    pub name: String,
    pub version: Option<String>,
}

impl RecipeType {
    pub fn parse(value: &str) -> Result<Self, String> {
        let (name, version) = match value.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (value, None),
        };
        if name.is_empty() {
            return Err("it names no recipe".into());
        }
        if !is_valid_recipe_name(name) {
            return Err(format!(
                "`{name}` is not a recipe name (lower-case letters, digits, `-` and `_`, at most 64 characters)"
            ));
        }
        let version = match version {
            None | Some("") => None,
            Some(v)
                if v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c)) =>
            {
                Some(v.to_string())
            }
            Some(v) => return Err(format!("`{v}` is not a version")),
        };
        Ok(Self {
            name: name.to_string(),
            version,
        })
    }
}

/// Recipe names become directory names and prefixes of swarm object names, so only a
/// conservative alphabet is accepted.
pub fn is_valid_recipe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("no `TYPE=<recipe>` line: add one naming the recipe (usually the first line)")]
    Missing,
    #[error("line {line}: `{key}={value}` is invalid: {why}")]
    Invalid {
        key: String,
        value: String,
        line: usize,
        why: String,
    },
}

/// A secret an env file declares: `SECRET_<NAME>_VERSION=<version> [# length=<n>] [generate=false] [charset=…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDecl {
    /// Lower-case, as compose and the swarm secret's name use it.
    pub name: String,
    pub version: String,
    /// `length=`; `None` when not given (abra then picks its own default).
    pub length: Option<usize>,
    /// `false` for `generate=false`: the operator inserts the value by hand.
    pub generate: bool,
    pub charset: Option<String>,
    pub line: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(text: &str, key: &str) -> Option<String> {
        EnvFile::parse(text).get(key).map(String::from)
    }

    #[test]
    fn quoting_and_comments() {
        let env = EnvFile::parse(
            "TYPE=web\n\
             # comment line\n\
             #DISABLED=x\n\
             A=plain value # trailing\n\
             B=\"a # b\" # after\n\
             C='a # $B' # single\n\
             D=no#comment\n\
             E=\n\
             F=\"\"\n\
             export G=exp\n\
             H = spaced \n\
             I=\"esc \\\"q\\\" \\\\ \\$B\"\n\
             J=\"unclosed # kept\n\
             not an assignment\n\
             =novalue\n\
             1BAD=x\n\
             K=tab\t# c\n",
        );
        let v = env.vars();
        assert_eq!(v["TYPE"], "web");
        assert!(!v.contains_key("DISABLED"));
        assert_eq!(v["A"], "plain value");
        assert_eq!(v["B"], "a # b");
        assert_eq!(v["C"], "a # $B");
        assert_eq!(v["D"], "no#comment");
        assert_eq!(v["E"], "");
        assert_eq!(v["F"], "");
        assert_eq!(v["G"], "exp");
        assert_eq!(v["H"], "spaced");
        assert_eq!(v["I"], "esc \"q\" \\ $B");
        assert_eq!(v["J"], "unclosed # kept");
        assert_eq!(v["K"], "tab");
        assert_eq!(v.len(), 12, "{v:?}");
        assert_eq!(
            env.entry("A").and_then(|e| e.comment.clone()),
            Some("trailing".into())
        );
        assert_eq!(
            env.entry("B").and_then(|e| e.comment.clone()),
            Some("after".into())
        );
        assert!(env.entry("G").is_some_and(|e| e.exported));
        assert!(env.entry("A").is_some_and(|e| !e.exported));
        assert_eq!(env.entry("B").map(|e| e.line), Some(5));
    }

    #[test]
    fn expansion_refers_to_earlier_lines() {
        let text = "A=one\n\
                    B=$A-two\n\
                    C=${A}x\n\
                    D=\"${UNSET:-fallback} ${A:-no}\"\n\
                    E=${EMPTY-dash}|${UNSET-dash}\n\
                    EMPTY=\n\
                    F=${EMPTY:-colon}|${EMPTY-dash}\n\
                    G=$LATER\n\
                    LATER=late\n\
                    H='$A'\n\
                    I=$ alone and $1 and ${bad name} and ${A:?x}\n\
                    J=${UNSET:-${A}-nested}\n\
                    K=\\$A\n";
        let env = EnvFile::parse(text);
        assert_eq!(env.get("B"), Some("one-two"));
        assert_eq!(env.get("C"), Some("onex"));
        assert_eq!(env.get("D"), Some("fallback one"));
        assert_eq!(env.get("E"), Some("dash|dash"));
        assert_eq!(env.get("F"), Some("colon|"));
        assert_eq!(env.get("G"), Some(""), "unset = empty, later lines unseen");
        assert_eq!(env.get("H"), Some("$A"));
        assert_eq!(
            env.get("I"),
            Some("$ alone and $1 and ${bad name} and ${A:?x}")
        );
        assert_eq!(env.get("J"), Some("one-nested"));
        assert_eq!(env.get("K"), Some("$A"));
    }

    #[test]
    fn compose_file_extends_its_own_earlier_value() {
        let text = "TYPE=app\n\
                    COMPOSE_FILE=\"compose.yml\"\n\
                    #COMPOSE_FILE=\"$COMPOSE_FILE:compose.smtp.yml\"\n\
                    COMPOSE_FILE=\"$COMPOSE_FILE:compose.postgres.yml\"\n";
        assert_eq!(
            EnvFile::parse(text).compose_files(),
            Some(vec!["compose.yml".into(), "compose.postgres.yml".into()])
        );
        // Unset before: the leading empty segment is dropped.
        assert_eq!(
            EnvFile::parse("COMPOSE_FILE=\"$COMPOSE_FILE:compose.x.yml\"\n").compose_files(),
            Some(vec!["compose.x.yml".into()])
        );
        assert_eq!(
            EnvFile::parse("COMPOSE_FILE=a.yml::b.yml:\n").compose_files(),
            Some(vec!["a.yml".into(), "b.yml".into()])
        );
        assert_eq!(EnvFile::parse("TYPE=x\n").compose_files(), None);
        assert_eq!(EnvFile::parse("COMPOSE_FILE=\n").compose_files(), None);
        assert_eq!(
            EnvFile::parse("COMPOSE_FILE=\"$NOPE\"\n").compose_files(),
            None
        );
    }

    #[test]
    fn later_line_wins() {
        assert_eq!(get("A=1\nA=2\n", "A"), Some("2".into()));
        assert_eq!(get("A=1\nA=$A$A\n", "A"), Some("11".into()));
    }

    #[test]
    fn recipe_type_accepts_name_and_name_version() {
        let t = |s: &str| EnvFile::parse(s).recipe_type();
        assert_eq!(
            t("TYPE=traefik\n"),
            Ok(RecipeType {
                name: "traefik".into(),
                version: None
            })
        );
        assert_eq!(
            t("TYPE=traefik:v2.1.0+3.0\n"),
            Ok(RecipeType {
                name: "traefik".into(),
                version: Some("v2.1.0+3.0".into())
            })
        );
        assert_eq!(t("TYPE=web:\n").map(|r| r.version), Ok(None));
        assert_eq!(t("RECIPE=old\n").map(|r| r.name), Ok("old".into()));
        assert_eq!(t("DOMAIN=x\n"), Err(TypeError::Missing));
        for bad in [
            "TYPE=\n",
            "TYPE=Traefik\n",
            "TYPE=../x\n",
            "TYPE=a:b c\n",
            "TYPE=-x\n",
        ] {
            let e = t(bad).unwrap_err();
            assert!(matches!(e, TypeError::Invalid { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("TYPE="), "{e}");
        }
        assert!(t(&format!("TYPE={}\n", "a".repeat(65))).is_err());
    }

    #[test]
    fn secrets_with_options() {
        let text = "SECRET_API_KEY_VERSION=v1 # length=24\n\
                    SECRET_DB_PASSWORD_VERSION=v2\n\
                    #SECRET_OFF_VERSION=v1\n\
                    SECRET_SMTP_PASSWORD_VERSION=v1 # generate=false length=40\n\
                    SECRET_TOKEN_VERSION=v1 # the token, charset=special,safespecial length=x\n\
                    SECRET_API_KEY_VERSION=v3 # length=12\n\
                    SECRET__VERSION=v1\n";
        let s = EnvFile::parse(text).secrets();
        let names: Vec<_> = s.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["api_key", "db_password", "smtp_password", "token"]);
        assert_eq!(
            (s[0].version.as_str(), s[0].length, s[0].line),
            ("v3", Some(12), 6)
        );
        assert_eq!((s[1].length, s[1].generate), (None, true));
        assert_eq!((s[2].length, s[2].generate), (Some(40), false));
        assert_eq!(s[3].charset.as_deref(), Some("special,safespecial"));
        assert_eq!(
            s[3].length, None,
            "a length that is not a number is ignored"
        );
        let e = EnvFile::parse("X=1 # generate=false length=32 note\n");
        let opts = &e.entries()[0].options;
        assert_eq!(opts.len(), 2);
        assert_eq!(e.entries()[0].option("length"), Some("32"));
    }

    #[test]
    fn parse_line_gives_the_written_form() {
        let a = parse_line("export X=\"a $B\" # c").unwrap();
        assert_eq!(
            a,
            Assignment {
                key: "X".into(),
                written: "a $B".into(),
                quoting: Quoting::Double,
                comment: Some("c".into()),
                exported: true,
            }
        );
        assert!(parse_line("exportX=1").is_none_or(|a| a.key == "exportX"));
        assert_eq!(parse_line("   # x"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn never_panics_on_odd_text() {
        for text in [
            "A=\"\\",
            "A='",
            "A=\"",
            "A=${",
            "A=${B",
            "A=$",
            "A=${:-x}",
            "A=\\",
            "é=1",
            "A=é # ü",
            "A=\"é\\é\"",
            "A=${A:-${A:-${",
            "A=#",
            "A= #x",
        ] {
            let _ = EnvFile::parse(text);
        }
        assert_eq!(get("A= #x", "A"), Some(String::new()));
        assert_eq!(get("A=${B", "A"), Some("${B".into()));
    }
}
