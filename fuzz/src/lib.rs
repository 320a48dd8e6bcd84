//! Bodies of cc-ci's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`) and the
//! stable-toolchain smoke runner (`src/bin/fuzz-smoke.rs`).
//!
//! Every target feeds untrusted bytes to one parser of outside input and then checks properties
//! that must hold for any input (a panic is a finding): the parsers must never panic, and what they
//! accept must be what the rest of cc-ci relies on.

use std::path::Path;

use cc_ci_daemon::config::Config;
use cc_ci_daemon::trigger::{self, Command, Delivery, STAGES, TRIGGER};
use cc_ci_harness::{names, overlay, recipe};

/// Names of the targets, as the binaries in `fuzz_targets/` and the seed folders are named.
pub const TARGETS: [&str; 5] = [
    "webhook",
    "trigger_command",
    "overlay",
    "config",
    "compose_env",
];

/// Runs the target called `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "webhook" => webhook(data),
        "trigger_command" => trigger_command(data),
        "overlay" => overlay(data),
        "config" => config(data),
        "compose_env" => compose_env(data),
        other => panic!("unknown fuzz target `{other}`"),
    }
}

const SECRET: &[u8] = b"fuzz-webhook-secret";

/// A webhook delivery: the first byte picks the event header, the rest is the body. The
/// signature check must accept exactly the body's own HMAC, and `classify` must never panic and
/// only hand on names and hashes the daemon may put into URLs and commands.
pub fn webhook(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let event = match selector % 4 {
        0 => "issue_comment",
        1 => "pull_request",
        2 => "push",
        _ => std::str::from_utf8(body)
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or(""),
    };

    let good = trigger::sign(SECRET, body);
    assert!(trigger::verify_signature(SECRET, body, &[&good]).is_ok());
    assert!(trigger::verify_signature(SECRET, body, &[&format!("sha256={good}")]).is_ok());
    assert!(trigger::verify_signature(SECRET, body, &[""]).is_err());
    assert!(trigger::verify_signature(SECRET, body, &[]).is_err());
    assert!(trigger::verify_signature(b"another-secret", body, &[&good]).is_err());
    // Attacker-chosen signature headers (the body read as one) must never verify.
    let forged = String::from_utf8_lossy(body);
    let core = forged.trim();
    let core = core.strip_prefix("sha256=").unwrap_or(core);
    if core != good {
        assert!(trigger::verify_signature(SECRET, body, &[&forged]).is_err());
        if !core.is_empty() {
            // One bad header spoils a good one (every signature sent must match).
            assert!(trigger::verify_signature(SECRET, body, &[&good, &forged]).is_err());
        }
    }

    // cc-ci's own login decides whether a comment is its own; half the inputs give one.
    let own_login = (selector & 4 == 0).then_some("cc-ci-bot");
    match trigger::classify(event, body, own_login) {
        Err(msg) => assert!(!msg.is_empty()),
        Ok(Delivery::Trigger(t)) => {
            assert!(names::is_owner_slash_repo(&t.repo), "repo {:?}", t.repo);
            assert!(trigger::is_valid_login(&t.user), "user {:?}", t.user);
            check_command(&t.command);
        }
        Ok(Delivery::PullUpdate { repo, head_sha, .. }) => {
            assert!(names::is_owner_slash_repo(&repo), "repo {repo:?}");
            assert!(trigger::is_valid_sha(&head_sha), "sha {head_sha:?}");
        }
        Ok(Delivery::Ignored(why)) | Ok(Delivery::Unhandled(why)) => assert!(!why.is_empty()),
    }
}

/// The `!testme` line parser on arbitrary comment text.
pub fn trigger_command(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = trigger::parse_command(&text);
    let has_line = text
        .lines()
        .any(|l| l.split_whitespace().next() == Some(TRIGGER));
    // A command is always a line of its own; and without quotes, fences or indented code
    // (where a `!testme` line is someone else's words or an example, by design) every such
    // line is one.
    if parsed.is_some() {
        assert!(has_line, "{text:?}");
    }
    let plain = !text.lines().any(|l| {
        let t = l.trim_start();
        let cols: usize = l[..l.len() - t.len()]
            .chars()
            .map(|c| if c == '\t' { 4 } else { 1 })
            .sum();
        cols >= 4 || t.starts_with('>') || t.starts_with("```") || t.starts_with("~~~")
    });
    if plain {
        assert_eq!(parsed.is_some(), has_line, "{text:?}");
    }
    if let Some(c) = parsed {
        check_command(&c);
    }
}

fn check_command(c: &Command) {
    match c {
        Command::Run { stages } => {
            for (i, s) in stages.iter().enumerate() {
                assert!(STAGES.contains(&s.as_str()), "stage {s:?}");
                assert!(!stages[..i].contains(s), "duplicate stage {s:?}");
            }
        }
        Command::BadStages { unknown } => {
            assert!(!unknown.is_empty());
            for u in unknown {
                assert!(
                    !u.is_empty() && !STAGES.contains(&u.as_str()),
                    "unknown {u:?}"
                );
                assert!(
                    !u.contains(',') && !u.contains(char::is_whitespace),
                    "{u:?}"
                );
            }
        }
    }
}

/// Overlay TOML: never panics; an error names a line within the text; what is accepted has
/// non-empty tiers, commands and data steps, and HTTP paths that start with `/`.
pub fn overlay(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match overlay::parse(text, Path::new("fuzz.toml")) {
        Err(e) => assert!(
            e.line <= text.lines().count() + 1,
            "line {} of {text:?}",
            e.line
        ),
        Ok(o) => {
            for c in &o.checks {
                assert!(!c.tiers.is_empty());
                match &c.kind {
                    overlay::CheckKind::Exec { command, .. } => assert!(!command.is_empty()),
                    overlay::CheckKind::Http { path, .. } => assert!(path.starts_with('/')),
                    _ => {}
                }
            }
            for d in &o.data {
                assert!(!d.seed.is_empty() && !d.verify.is_empty());
            }
        }
    }
}

/// The configuration file: never panics; an accepted config survives a round trip through
/// TOML unchanged (what `cc-ci check-config` accepts is what `run` and `serve` get) and holds
/// the validated invariants.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(c) => {
            assert!(names::is_valid_domain_suffix(&c.harness.domain_suffix));
            assert!(c.daemon.concurrency >= 1);
            assert!(c.harness.poll_interval_ms > 0);
            let again = toml_roundtrip(&c);
            assert_eq!(again.as_ref(), Ok(&c), "round trip of {text:?}");
        }
    }
}

fn toml_roundtrip(c: &Config) -> Result<Config, String> {
    let text = toml::to_string(c).map_err(|e| e.to_string())?;
    Config::parse(&text, Path::new("roundtrip.toml")).map_err(|e| format!("{e}\n{text}"))
}

/// Compose YAML and env files as a recipe ships them: never panics; env keys are what
/// `KEY=VALUE` allows; compose files named by `COMPOSE_FILE` are never empty names.
pub fn compose_env(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let env = recipe::EnvFile::parse(&text);
    for e in env.entries() {
        let k = &e.key;
        assert!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "key {k:?}"
        );
        assert!(env.get(k).is_some());
    }
    if let Ok(t) = env.recipe_type() {
        assert!(!t.name.is_empty());
    }
    for s in env.secrets() {
        assert!(!s.name.is_empty());
    }
    let files = recipe::compose_files(&env);
    assert!(!files.is_empty() && files.iter().all(|f| !f.is_empty()));
    match recipe::parse_compose("compose.yml", &text) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(info) => {
            let mut s = info.services.clone();
            s.sort();
            s.dedup();
            assert_eq!(
                s.len(),
                info.services.len(),
                "duplicate services in {text:?}"
            );
        }
    }
}
