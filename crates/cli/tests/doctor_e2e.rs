//! `cc-ci doctor` on the real test host (scripts/setup-swarm: swarm, proxy network, registry,
//! backup-bot-two stand-in) with the stand-in abra: it passes there, and fails naming the cause
//! when abra, backup-bot-two or an abra spelling is missing.

use std::path::PathBuf;
use std::process::Command;

fn cc_ci() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cc-ci"))
}

fn standin() -> PathBuf {
    cc_ci().with_file_name("abra-standin")
}

fn doctor(abra: &str, env: &[(&str, &str)]) -> (i32, String) {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("cc-ci.toml");
    std::fs::write(
        &config,
        format!(
            "[harness]\nwork_dir = \"{}\"\n",
            work.path().join("w").display()
        ),
    )
    .unwrap();
    let out = Command::new(cc_ci())
        .args(["doctor", "--abra", abra, "--config"])
        .arg(&config)
        .env_remove("CC_CI_ABRA")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_passes_on_the_test_host() {
    let (code, out) = doctor(standin().to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{out}");
    for check in [
        "ok   engine:",
        "ok   proxy network:",
        "ok   backup-bot-two:",
        "ok   registry 127.0.0.1:5000:",
        "ok   terminal:",
        "ok   work directory:",
        "ok   abra:",
        "ok   abra app deploy:",
        "ok   abra app secret insert:",
    ] {
        assert!(out.contains(check), "{check} missing:\n{out}");
    }
}

#[test]
fn doctor_fails_naming_a_missing_abra_or_backup_bot_two() {
    let (code, out) = doctor("/nonexistent/abra", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL abra:") && out.contains("install abra"),
        "{out}"
    );

    let (code, out) = doctor(
        standin().to_str().unwrap(),
        &[("CC_CI_BACKUPBOT_LABEL", "cc-ci.test.no-such-backupbot=true")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL backup-bot-two:") && out.contains("deploy backup-bot-two"),
        "{out}"
    );
}

#[test]
fn doctor_fails_when_abra_lacks_a_spelling_cc_ci_uses() {
    // An abra whose `app deploy --help` has no --no-converge-checks (an older release, say).
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("abra");
    let real = standin();
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n'{}' \"$@\" | sed 's/--no-converge-checks/--no-something-else/'\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, out) = doctor(fake.to_str().unwrap(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL abra app deploy:") && out.contains("--no-converge-checks"),
        "{out}"
    );
    assert!(out.contains("ok   abra app new:"), "{out}");
}
