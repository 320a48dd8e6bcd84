//! The abra adapter: the only place cc-ci runs abra.
//!
//! Every call gets its own `ABRA_DIR` (per run), `-n` (never prompt), a pseudo-terminal (real abra
//! fails without one even with `-n`), a deadline, and its output ANSI-stripped and redacted before
//! anyone sees it. Spellings the reference marks *unconfirmed* are kept in [`spelling`].

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::redact::{Redactor, strip_ansi};

/// Command spellings of abra that the reference does not confirm. One place to fix them.
pub mod spelling {
    // Confirmed (docs, journals), listed here so `cc-ci doctor` checks every spelling in use.
    pub const NO_DOMAIN_CHECKS: &str = "--no-domain-checks";
    pub const NO_CONVERGE_CHECKS: &str = "--no-converge-checks";
    pub const SECRET_INSERT: &[&str] = &["app", "secret", "insert"];
    pub const SECRET_RM_ALL: &[&str] = &["app", "secret", "rm", "--all"];
    pub const VOLUME_RM: &[&str] = &["app", "volume", "rm", "--force"];
    pub const APP_RM: &[&str] = &["app", "rm", "--force"];
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
            AbraError::Timeout { output, .. } | AbraError::Failed { output, .. } => output,
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

#[derive(Debug, Clone)]
pub struct Abra {
    bin: PathBuf,
    abra_dir: PathBuf,
    timeout: Duration,
    redactor: Redactor,
    log: Option<PathBuf>,
}

/// Resolves which abra to run: the flag, then `CC_CI_ABRA`, then the config, then `abra` on PATH.
pub fn resolve_binary(flag: Option<&str>, config: Option<&str>) -> Result<PathBuf, AbraError> {
    let env = std::env::var("CC_CI_ABRA").ok().filter(|s| !s.is_empty());
    let chosen = flag
        .map(String::from)
        .or(env)
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
    std::env::var_os("PATH")
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
        }
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
        let result = run_in_pty(&self.bin, &full, &self.abra_dir, self.timeout).await;
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

    fn clean(&self, raw: &str) -> String {
        self.redactor.redact(&strip_ansi(raw))
    }

    fn append_log(&self, args: &str, code: Option<i32>, output: &str) {
        use std::io::Write;
        let Some(path) = &self.log else { return };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let status = code
                .map(|c| format!("exit {c}"))
                .unwrap_or_else(|| "timed out".into());
            let _ = writeln!(f, "$ abra {args} -n   [{status}]\n{output}");
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

    pub async fn secret_rm_all(&self, domain: &str) -> Result<AbraOutput, AbraError> {
        self.run_spelled(spelling::SECRET_RM_ALL, &[domain]).await
    }
    pub async fn volume_rm(&self, domain: &str) -> Result<AbraOutput, AbraError> {
        self.run_spelled(spelling::VOLUME_RM, &[domain]).await
    }
    pub async fn app_rm(&self, domain: &str) -> Result<AbraOutput, AbraError> {
        self.run_spelled(spelling::APP_RM, &[domain]).await
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

/// Whether a pseudo-terminal can be opened here (abra needs one; `cc-ci doctor` checks it).
pub fn terminal_available() -> Result<(), String> {
    open_pty()
        .map(|_| ())
        .map_err(|e| format!("cannot open a pseudo-terminal: {e}"))
}

enum PtyError {
    Spawn(String),
    /// Output collected before the deadline.
    Timeout(String),
}

/// Runs a program with a new pseudo-terminal as its controlling terminal and stdin/stdout/stderr,
/// collecting what it prints. On the deadline (or when the future is dropped) the program's whole
/// process group is killed.
async fn run_in_pty(
    bin: &Path,
    args: &[String],
    abra_dir: &Path,
    timeout: Duration,
) -> Result<(i32, String), PtyError> {
    let (master, slave) =
        open_pty().map_err(|e| PtyError::Spawn(format!("cannot open a pseudo-terminal: {e}")))?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env("ABRA_DIR", abra_dir)
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .env("COLUMNS", "250")
        .stdin(Stdio::from(
            slave
                .try_clone()
                .map_err(|e| PtyError::Spawn(e.to_string()))?,
        ))
        .stdout(Stdio::from(
            slave
                .try_clone()
                .map_err(|e| PtyError::Spawn(e.to_string()))?,
        ))
        .stderr(Stdio::from(
            slave
                .try_clone()
                .map_err(|e| PtyError::Spawn(e.to_string()))?,
        ))
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls (setsid, ioctl, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // abra gets its own session (for the terminal), so a signal to the run's process group
            // misses it: make it die with the run instead of deploying on as an orphan.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| PtyError::Spawn(e.to_string()))?;
    // The command keeps copies of the terminal's slave side: drop them, or reading the master
    // never sees the end.
    drop(cmd);
    drop(slave);
    let pgid = child.id().map(|p| p as i32);
    let group = GroupGuard(pgid);
    // The master is read on a blocking thread: it ends with EIO once every holder of the slave is gone.
    let reader = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::from(master);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let status = tokio::time::timeout(timeout, child.wait()).await;
    match status {
        Ok(Ok(st)) => {
            // Grandchildren may still hold the terminal; they belong to the finished call.
            drop(group);
            let out = reader.await.unwrap_or_default();
            let code = st.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
            });
            Ok((code, out))
        }
        Ok(Err(e)) => Err(PtyError::Spawn(e.to_string())),
        Err(_) => {
            drop(group);
            let _ = child.kill().await;
            let out = reader.await.unwrap_or_default();
            Err(PtyError::Timeout(out))
        }
    }
}

/// Kills a process group when dropped (deadline, cancellation, or normal end).
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: plain syscall; a group that is already gone gives ESRCH, which is fine.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // Wide enough that abra's tables never wrap.
    let ws = libc::winsize {
        ws_row: 50,
        ws_col: 250,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds we then own; null name/termios are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by openpty and are owned by nobody else.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // The master must not leak into children (they would keep the terminal open).
    // SAFETY: fcntl on an fd we own.
    unsafe {
        libc::fcntl(m.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(s.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
    Ok((m, s))
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
        let log = std::fs::read_to_string(dir.path().join("abra.log")).unwrap();
        assert!(!log.contains("topsecret1"), "{log}");
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
    fn resolves_binary_from_flag_or_fails_clearly() {
        assert_eq!(
            resolve_binary(Some("/bin/sh"), None).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let err = resolve_binary(Some("/nonexistent/abra"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--abra"), "{err}");
    }
}
