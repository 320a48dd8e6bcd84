//! Keeps the NixOS module (`nixos/module.nix`), its documentation (`docs/nixos.md`), the config
//! documentation (`docs/config.md`) and the keys `cc-ci check-config` accepts
//! (`config::known_keys()`) in agreement. Reads the files as text; the module keeps its options
//! and config keys one per line so that plain line matching is enough (see its header).

use std::collections::BTreeSet;
use std::path::PathBuf;

use cc_ci_daemon::config::known_keys;

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The text of the attribute set that starts at the first line containing `opening` (which
/// must end with `{`), up to its matching `}`.
fn block<'a>(text: &'a str, opening: &str) -> &'a str {
    let start = text
        .find(opening)
        .unwrap_or_else(|| panic!("nixos/module.nix has no `{opening}`"));
    let body_start = start + opening.len();
    let mut depth = 1usize;
    for (i, c) in text[body_start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[body_start..body_start + i];
                }
            }
            _ => {}
        }
    }
    panic!("`{opening}` in nixos/module.nix is never closed");
}

/// `name = lib.mkOption ...` (also `mkOption`, `mkEnableOption`, `mkPackageOption`) lines.
fn declared_options(options_block: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in options_block.lines() {
        let Some((name, rhs)) = line.trim().split_once(" = ") else {
            continue;
        };
        let rhs = rhs.strip_prefix("lib.").unwrap_or(rhs);
        let is_option = ["mkOption", "mkEnableOption", "mkPackageOption"]
            .iter()
            .any(|f| rhs.starts_with(f));
        let is_name =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
        if is_option && is_name {
            out.insert(name.to_string());
        }
    }
    out
}

/// `"section.key" = ...` lines.
fn declared_keys(settings_block: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in settings_block.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        if let Some((key, after)) = rest.split_once('"')
            && after.trim_start().starts_with('=')
        {
            out.insert(key.to_string());
        }
    }
    out
}

fn module() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = repo_file("nixos/module.nix");
    let options = declared_options(block(&text, "options.services.cc-ci = {"));
    let keys = declared_keys(block(&text, "settingsOptions = {"));
    (options, keys)
}

fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn module_settings_are_exactly_the_config_keys() {
    let (_, module_keys) = module();
    let known: BTreeSet<String> = known_keys().into_iter().collect();
    assert!(
        !known.is_empty(),
        "known_keys() returned nothing: nothing to compare"
    );
    let missing = difference(&known, &module_keys);
    let extra = difference(&module_keys, &known);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "nixos/module.nix `settingsOptions` disagrees with config::known_keys():\n  \
         keys check-config accepts but the module does not declare: {missing:?}\n  \
         keys the module declares but check-config rejects: {extra:?}"
    );
}

/// Every documented option: the module's options and `settings.<key>` for every config key.
fn all_module_options() -> BTreeSet<String> {
    let (options, keys) = module();
    assert!(
        options.contains("enable") && options.contains("settings"),
        "parsing nixos/module.nix found no `enable`/`settings` options: {options:?}"
    );
    options
        .into_iter()
        .chain(keys.into_iter().map(|k| format!("settings.{k}")))
        .map(|o| format!("services.cc-ci.{o}"))
        .collect()
}

/// `docs/nixos.md` entries: headings of the form ``### `services.cc-ci.<name>` ``, each with
/// the text up to the next heading.
fn documented_options() -> Vec<(String, String)> {
    let text = repo_file("docs/nixos.md");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            let heading = line.trim_start_matches('#').trim();
            if let Some(name) = heading
                .strip_prefix('`')
                .and_then(|h| h.strip_suffix('`'))
                .filter(|h| h.starts_with("services.cc-ci."))
            {
                out.push((name.to_string(), String::new()));
                continue;
            }
            // Any other heading ends the entry before it.
            out.push((String::new(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out.retain(|(name, _)| !name.is_empty());
    out
}

#[test]
fn every_module_option_is_documented_with_type_default_and_example() {
    let options = all_module_options();
    let documented = documented_options();
    let names: BTreeSet<String> = documented.iter().map(|(n, _)| n.clone()).collect();
    let undocumented = difference(&options, &names);
    let stale = difference(&names, &options);
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/nixos.md disagrees with nixos/module.nix:\n  \
         options without a `### \\`services.cc-ci.<name>\\`` entry: {undocumented:?}\n  \
         entries for options the module does not have: {stale:?}"
    );
    let mut incomplete = Vec::new();
    for (name, body) in &documented {
        for field in ["*Type:*", "*Default:*", "*Example:*"] {
            if !body.contains(field) {
                incomplete.push(format!("{name} lacks {field}"));
            }
        }
    }
    assert!(
        incomplete.is_empty(),
        "docs/nixos.md entries are incomplete: {incomplete:#?}"
    );
}

#[test]
fn every_config_key_is_in_the_config_documentation() {
    let text = repo_file("docs/config.md");
    // A key counts as documented when its dotted name appears, or when `key` appears in a part
    // of the document whose heading names its `[section]`.
    let mut sections: Vec<(String, String)> = vec![(String::new(), String::new())];
    for line in text.lines() {
        if line.starts_with('#') {
            sections.push((line.to_string(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let mut missing = Vec::new();
    for key in known_keys() {
        let Some((section, name)) = key.split_once('.') else {
            panic!("known_keys() returned `{key}`, which has no section");
        };
        let in_section = sections.iter().any(|(heading, body)| {
            heading.contains(&format!("[{section}]"))
                && (body.contains(&format!("`{name}`")) || body.contains(&format!("`{name} =")))
        });
        if !(text.contains(&key) || in_section) {
            missing.push(key);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/config.md does not document these keys check-config accepts: {missing:?}"
    );
}

#[test]
fn the_parsers_see_what_they_should() {
    // Guards the line matching above against a module layout change that would make every
    // comparison vacuous.
    let nix = r#"
options.services.cc-ci = {
  enable = lib.mkEnableOption "x";
  forge.tokenFile = mkOption { type = types.path; description = "a { b } c"; };
  note = "not an option";
};
settingsOptions = {
  "harness.abra" = mkOption { };
  "daemon.listen" = ownedBy "listen" types.str cfg.listen;
};
"#;
    let options = declared_options(block(nix, "options.services.cc-ci = {"));
    assert_eq!(
        options.into_iter().collect::<Vec<_>>(),
        vec!["enable".to_string(), "forge.tokenFile".to_string()]
    );
    let keys = declared_keys(block(nix, "settingsOptions = {"));
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        vec!["daemon.listen".to_string(), "harness.abra".to_string()]
    );
}

/// The listen rule of `check-config` (crates/daemon/src/config/listen.rs) against the shared cases
/// that scripts/check-nix also runs through the module's rule (nixos/listen.nix).
#[test]
fn listen_rule_agrees_with_the_shared_cases() {
    let cases: serde_json::Value = serde_json::from_str(&repo_file("tests/listen-cases.json"))
        .expect("tests/listen-cases.json is JSON");
    let list = |name: &str| -> Vec<String> {
        cases[name]
            .as_array()
            .unwrap_or_else(|| panic!("tests/listen-cases.json has no `{name}` list"))
            .iter()
            .map(|v| v.as_str().expect("listen cases are strings").to_string())
            .collect()
    };
    let (valid, invalid) = (list("valid"), list("invalid"));
    assert!(
        valid.len() > 5 && invalid.len() > 5,
        "too few listen cases to mean anything"
    );
    let refused: Vec<_> = valid
        .iter()
        .filter(|s| cc_ci_daemon::config::listen::check(s).is_err())
        .collect();
    let accepted: Vec<_> = invalid
        .iter()
        .filter(|s| cc_ci_daemon::config::listen::check(s).is_ok())
        .collect();
    assert!(
        refused.is_empty() && accepted.is_empty(),
        "listen::check disagrees with tests/listen-cases.json:\n  valid but refused: {refused:?}\n  invalid but accepted: {accepted:?}"
    );
}

/// The module's `listen` option and its `daemon.listen` key are typed by nixos/listen.nix, the
/// rule scripts/check-nix holds to the shared cases.
#[test]
fn module_types_listen_with_the_shared_rule() {
    let text = repo_file("nixos/module.nix");
    assert!(
        text.contains("import ./listen.nix"),
        "nixos/module.nix does not use nixos/listen.nix for its listen type"
    );
    let options = block(&text, "options.services.cc-ci = {");
    let listen = block(options, "listen = mkOption {");
    assert!(
        listen.contains("type = listenType;"),
        "services.cc-ci.listen is not typed by listenType:\n{listen}"
    );
    let settings = block(&text, "settingsOptions = {");
    assert!(
        settings.contains("\"daemon.listen\" = ownedBy \"listen\" listenType"),
        "settings.daemon.listen is not typed by listenType"
    );
}
