//! The abra adapter: the only place cc-ci runs abra.
//!
//! Every call gets its own `ABRA_DIR` (per run), `-n` (never prompt), a pseudo-terminal (real abra
//! fails without one even with `-n`), a deadline, and its output ANSI-stripped and redacted before
//! anyone sees it. Spellings the reference marks *unconfirmed* are kept in [`spelling`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::pty::terminal_available;
use crate::pty::{PtyError, run_in_pty};
use crate::redact::{Redactor, strip_ansi};

/// Command spellings of abra that the reference does not confirm. One place to fix them.
pub mod spelling {
    // Confirmed (docs, journals), listed here so `cc-ci doctor` checks every spelling in use.
    pub const NO_DOMAIN_CHECKS: &str = "--no-domain-checks";
    pub const NO_CONVERGE_CHECKS: &str = "--no-converge-checks";
    pub const SECRET_INSERT: &[&str] = &["app", "secret", "insert"];
    pub const BACKUP_CREATE: &[&str] = &["app", "backup", "create"];
    pub const BACKUP_LIST: &[&str] = &["app", "backup", "list"];
    pub const BACKUP_LS: &[&str] = &["app", "backup", "ls"];
    pub const BACKUP_SNAPSHOT_FLAG: &str = "--snapshot";
    pub const RESTORE: &[&str] = &["app", "restore"];
}

#[derive(Debug, thiserror::Error)]
pub enum AbraError {
    #[error(
        "abra binary `{0}` not found: install abra, or pass --abra PATH, set CC_CI_ABRA, or set harness.abra in the config"
    )]
    NotFound(String),
    #[error("cannot start abra ({bin}): {reason}")]
    Spawn { bin: String, reason: String },
    #[error(
        "`abra {args}` did not finish within {timeout:?} and was killed; output so far:\n{output}"
    )]
    Timeout {
        args: String,
        timeout: Duration,
        output: String,
    },
    #[error(
        "`abra {args}` printed more than cc-ci's limit of {} and was stopped; output so far:\n{output}",
        crate::safefs::human(*cap as u64)
    )]
    TooMuchOutput {
        args: String,
        cap: usize,
        output: String,
    },
    #[error("`abra {args}` failed with exit code {code}:\n{output}")]
    Failed {
        args: String,
        code: i32,
        output: String,
    },
}

impl AbraError {
    /// The (redacted) output abra printed, when there is any.
    pub fn output(&self) -> &str {
        match self {
            AbraError::Timeout { output, .. }
            | AbraError::Failed { output, .. }
            | AbraError::TooMuchOutput { output, .. } => output,
            _ => "",
        }
    }
}

/// One finished abra call.
#[derive(Debug, Clone)]
pub struct AbraOutput {
    pub args: String,
    pub output: String,
    pub duration: Duration,
}

/// Most output one abra call may print (abra's tables and logs are kilobytes; more is runaway).
pub const OUTPUT_CAP: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct Abra {
    bin: PathBuf,
    abra_dir: PathBuf,
    timeout: Duration,
    redactor: Redactor,
    log: Option<PathBuf>,
    /// The first failure to append to the log: the run's report is then incomplete.
    log_error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// Resolves which abra to run: the flag, then `CC_CI_ABRA`, then the config, then `abra` on PATH.
pub fn resolve_binary(
    flag: Option<&str>,
    config: Option<&str>,
    host: &crate::hostenv::HostEnv,
) -> Result<PathBuf, AbraError> {
    let chosen = flag
        .map(String::from)
        .or_else(|| host.abra.clone())
        .or_else(|| config.map(String::from))
        .unwrap_or_else(|| "abra".into());
    if chosen.contains('/') {
        let p = PathBuf::from(&chosen);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(AbraError::NotFound(chosen))
        };
    }
    host.path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&chosen))
        .find(|p| is_executable(p))
        .ok_or(AbraError::NotFound(chosen))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Abra {
    pub fn new(bin: PathBuf, abra_dir: PathBuf, timeout: Duration, redactor: Redactor) -> Self {
        Self {
            bin,
            abra_dir,
            timeout,
            redactor,
            log: None,
            log_error: Default::default(),
        }
    }

    /// Why `abra.log` could not be written, if it could not.
    pub fn log_error(&self) -> Option<String> {
        self.log_error.lock().ok().and_then(|e| e.clone())
    }

    /// Appends every call and its (redacted) output to this file.
    pub fn with_log(mut self, log: PathBuf) -> Self {
        self.log = Some(log);
        self
    }

    pub fn abra_dir(&self) -> &Path {
        &self.abra_dir
    }

    /// Runs `abra <args> -n` under a pseudo-terminal and waits for it, at most the deadline.
    pub async fn run(&self, args: &[&str]) -> Result<AbraOutput, AbraError> {
        self.run_with(args, true).await
    }

    /// `abra <args>` without `-n`: for `--version` and `<command> --help`, which never prompt and
    /// where an extra flag could be refused.
    pub async fn run_info(&self, args: &[&str]) -> Result<AbraOutput, AbraError> {
        self.run_with(args, false).await
    }

    async fn run_with(&self, args: &[&str], no_input: bool) -> Result<AbraOutput, AbraError> {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if no_input {
            full.push("-n".into());
        }
        // Arguments may carry a secret value (`app secret insert`): redact them like output.
        let shown = self.redactor.redact(&args.join(" "));
        let started = Instant::now();
        // A call cc-ci drops half-way (a failing deployment, a signal) is logged all the same.
        let mut unfinished = Unfinished {
            abra: self,
            args: shown.clone(),
            started,
            armed: true,
        };
        let result = run_in_pty(&self.bin, &full, &self.abra_dir, self.timeout, OUTPUT_CAP).await;
        unfinished.armed = false;
        let (code, raw) = match result {
            Ok(v) => v,
            Err(PtyError::Spawn(reason)) => {
                return Err(AbraError::Spawn {
                    bin: self.bin.display().to_string(),
                    reason,
                });
            }
            Err(PtyError::Timeout(raw)) => {
                let output = self.clean(&raw);
                self.append_log(&shown, None, &output);
                return Err(AbraError::Timeout {
                    args: shown,
                    timeout: self.timeout,
                    output,
                });
            }
            Err(PtyError::TooMuch(raw)) => {
                let output = self.clean(&raw);
                self.append_log(&shown, None, &output);
                return Err(AbraError::TooMuchOutput {
                    args: shown,
                    cap: OUTPUT_CAP,
                    output,
                });
            }
        };
        let output = self.redactor.redact(&strip_ansi(&raw));
        self.append_log(&shown, Some(code), &output);
        if code != 0 {
            return Err(AbraError::Failed {
                args: shown,
                code,
                output,
            });
        }
        Ok(AbraOutput {
            args: shown,
            output,
            duration: started.elapsed(),
        })
    }

    /// Output of a call that did not finish, as it goes into the log and the error.
    fn clean(&self, raw: &str) -> String {
        self.redactor.redact(&strip_ansi(raw))
    }

    fn append_log(&self, args: &str, code: Option<i32>, output: &str) {
        let status = code
            .map(|c| format!("exit {c}"))
            .unwrap_or_else(|| "did not finish".into());
        self.write_log(args, &status, output);
    }

    fn write_log(&self, args: &str, status: &str, output: &str) {
        use std::io::Write;
        let Some(path) = &self.log else { return };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "$ abra {args} -n   [{status}]\n{output}"));
        if let Err(e) = written
            && let Ok(mut first) = self.log_error.lock()
            && first.is_none()
        {
            *first = Some(format!(
                "cannot write {}: {e} (is the report directory full or read-only?)",
                path.display()
            ));
        }
    }

    pub async fn server_add_local(&self) -> Result<AbraOutput, AbraError> {
        self.run(&["server", "add", "--local"]).await
    }

    pub async fn app_new(
        &self,
        recipe: &str,
        server: &str,
        domain: &str,
    ) -> Result<AbraOutput, AbraError> {
        // No `-S`: cc-ci makes and inserts every secret itself (see `secret_insert`).
        self.run(&["app", "new", recipe, "--server", server, "--domain", domain])
            .await
    }

    /// `abra app secret insert <domain> <name> <version> <value>` (a confirmed spelling). The value
    /// is added to the redactor first, so neither abra.log nor an error shows it.
    pub async fn secret_insert(
        &self,
        domain: &str,
        name: &str,
        version: &str,
        value: &str,
    ) -> Result<AbraOutput, AbraError> {
        self.redactor.add(value);
        self.run(&["app", "secret", "insert", domain, name, version, value])
            .await
    }

    /// `abra --version`, first line (recorded in run.json).
    pub async fn version(&self) -> Result<String, AbraError> {
        let out = self.run_info(&["--version"]).await?;
        Ok(out
            .output
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string())
    }

    /// Deploys a release (`version` = a tag) or, with `chaos`, whatever is checked out. Always
    /// without abra's domain check (CI domains do not resolve to the server) and without its
    /// convergence monitor (it gives up inside a healthcheck's start_period and may return
    /// mid-update): cc-ci waits for convergence itself.
    pub async fn deploy(
        &self,
        domain: &str,
        version: Option<&str>,
        chaos: bool,
    ) -> Result<AbraOutput, AbraError> {
        let mut args = vec![
            "app",
            "deploy",
            domain,
            spelling::NO_DOMAIN_CHECKS,
            spelling::NO_CONVERGE_CHECKS,
        ];
        if let Some(v) = version {
            args.push(v);
        }
        if chaos {
            args.push("--chaos");
        }
        self.run(&args).await
    }

    pub async fn undeploy(&self, domain: &str) -> Result<AbraOutput, AbraError> {
        self.run(&["app", "undeploy", domain]).await
    }

    async fn run_spelled(&self, spelled: &[&str], tail: &[&str]) -> Result<AbraOutput, AbraError> {
        let mut args: Vec<&str> = spelled.to_vec();
        args.extend_from_slice(tail);
        self.run(&args).await
    }

    pub async fn backup_create(&self, domain: &str) -> Result<AbraOutput, AbraError> {
        self.run_spelled(spelling::BACKUP_CREATE, &[domain]).await
    }
    /// Snapshot ids, oldest first.
    pub async fn backup_list(&self, domain: &str) -> Result<Vec<String>, AbraError> {
        let out = self.run_spelled(spelling::BACKUP_LIST, &[domain]).await?;
        Ok(non_empty_lines(&out.output))
    }
    /// Files of a snapshot, `<volume>/<path>` per line.
    pub async fn backup_files(
        &self,
        domain: &str,
        snapshot: &str,
    ) -> Result<Vec<String>, AbraError> {
        let out = self
            .run_spelled(
                spelling::BACKUP_LS,
                &[domain, spelling::BACKUP_SNAPSHOT_FLAG, snapshot],
            )
            .await?;
        Ok(non_empty_lines(&out.output))
    }
    pub async fn restore(&self, domain: &str) -> Result<AbraOutput, AbraError> {
        self.run_spelled(spelling::RESTORE, &[domain]).await
    }
}

fn non_empty_lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Logs an abra call that was stopped before it finished when dropped still armed.
struct Unfinished<'a> {
    abra: &'a Abra,
    args: String,
    started: Instant,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            let status = format!(
                "stopped by cc-ci after {:.1} s",
                self.started.elapsed().as_secs_f64()
            );
            self.abra
                .write_log(&self.args, &status, "(its output was not collected)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_under_a_terminal_with_deadline_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-abra");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ -t 1 ] || { echo 'inappropriate ioctl for device' >&2; exit 1; }\n\
             case \"$1\" in\n new) echo \"dir=$ABRA_DIR $*\";;\n\
             leak) echo 'the value is topsecret1'; printf '\\033[31mred\\033[0m\\n'; exit 4;;\n\
             hang) sleep 30;;\n esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let red = Redactor::new();
        let abra = Abra::new(
            script.clone(),
            dir.path().join("abra"),
            Duration::from_secs(20),
            red.clone(),
        )
        .with_log(dir.path().join("abra.log"));
        red.add("topsecret1");
        let out = abra.run(&["new", "topsecret1"]).await.unwrap();
        assert!(out.output.contains("dir="), "{}", out.output);
        assert!(!out.output.contains("topsecret1"), "{}", out.output);
        assert!(!out.args.contains("topsecret1"), "{}", out.args);
        let err = abra.run(&["leak"]).await.unwrap_err();
        match &err {
            AbraError::Failed { code, output, .. } => {
                assert_eq!(*code, 4);
                assert!(
                    !output.contains("topsecret1") && output.contains("[REDACTED]"),
                    "{output}"
                );
                assert!(
                    output.contains("red") && !output.contains('\u{1b}'),
                    "{output}"
                );
            }
            other => panic!("{other}"),
        }
        // A call dropped half-way (cc-ci gave up on the deployment) is in the log too.
        let dropped = tokio::time::timeout(Duration::from_millis(300), abra.run(&["hang"])).await;
        assert!(dropped.is_err());
        let log = std::fs::read_to_string(dir.path().join("abra.log")).unwrap();
        assert!(!log.contains("topsecret1"), "{log}");
        assert!(
            log.contains("$ abra hang -n   [stopped by cc-ci after"),
            "{log}"
        );
        let quick = Abra::new(
            script,
            dir.path().join("abra"),
            Duration::from_millis(300),
            red,
        );
        assert!(matches!(
            quick.run(&["hang"]).await,
            Err(AbraError::Timeout { .. })
        ));
    }

    #[test]
    fn values_containing_separators_are_masked_whole() {
        // An operator-given value (overlay `[secrets]`) may hold table separators.
        let r = Redactor::new();
        r.add("ab|cd│ef┃gh");
        assert_eq!(r.redact("x ab|cd│ef┃gh y"), "x [REDACTED] y");
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("fake-abra");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn a_secret_value_in_the_arguments_never_shows_even_on_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "echo \"got $*\"; exec sleep 30");
        let red = Redactor::new();
        // cc-ci learns every value it makes before abra sees it (`app secret insert`).
        red.add("late-secret-9");
        let abra = Abra::new(bin, dir.path().into(), Duration::from_millis(700), red)
            .with_log(dir.path().join("abra.log"));
        let err = abra
            .run(&["app", "secret", "insert", "d", "pw", "v1", "late-secret-9"])
            .await
            .unwrap_err();
        assert!(matches!(err, AbraError::Timeout { .. }), "{err}");
        assert!(!err.to_string().contains("late-secret-9"), "{err}");
        let log = std::fs::read_to_string(dir.path().join("abra.log")).unwrap();
        assert!(
            log.contains("[REDACTED]") && !log.contains("late-secret-9"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn one_deadline_covers_the_terminal_and_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        // The terminal closes long before the process ends: the wait for the exit that follows
        // the end of the output is under the same deadline.
        let bin = script(
            dir.path(),
            "echo done; exec sleep 30 </dev/null >/dev/null 2>&1",
        );
        let abra = Abra::new(
            bin,
            dir.path().into(),
            Duration::from_millis(800),
            Redactor::new(),
        );
        let started = Instant::now();
        let err = abra.run(&["x"]).await.unwrap_err();
        assert!(matches!(err, AbraError::Timeout { .. }), "{err}");
        assert!(err.output().contains("done"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn runaway_output_is_a_clear_failure() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "exec yes cc-ci");
        let r = run_in_pty(&bin, &[], dir.path(), Duration::from_secs(20), 64 << 10).await;
        match r {
            Err(PtyError::TooMuch(out)) => assert_eq!(out.len(), 64 << 10),
            _ => panic!("expected too much output"),
        }
        let shown = AbraError::TooMuchOutput {
            args: "x".into(),
            cap: OUTPUT_CAP,
            output: String::new(),
        }
        .to_string();
        assert!(shown.contains("16 MiB"), "{shown}");
    }

    #[test]
    fn resolves_binary_from_flag_or_fails_clearly() {
        assert_eq!(
            resolve_binary(Some("/bin/sh"), None, &Default::default()).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let err = resolve_binary(Some("/nonexistent/abra"), None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--abra"), "{err}");
    }
}
