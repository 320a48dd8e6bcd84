//! The host under a test: commands that must succeed (`sh`, `git`, `docker`), files read
//! leniently, executables written, processes looked at and signalled, free ports, names.

use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Runs `cmd` (stdin closed) and returns its stdout, failing the test with both outputs when it
/// cannot start or exits non-zero.
pub fn stdout(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sh -c <script>`, which must succeed; its stdout, trimmed.
pub fn sh(script: &str) -> String {
    stdout(Command::new("sh").arg("-c").arg(script))
        .trim()
        .to_string()
}

/// `git -C <dir> <args>`, which must succeed; its stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    stdout(Command::new("git").arg("-C").arg(dir).args(args))
        .trim()
        .to_string()
}

/// `docker <args>`, which must succeed; its stdout as it is.
pub fn docker(args: &[&str]) -> String {
    stdout(Command::new("docker").args(args))
}

/// The text of a file, or "" when it cannot be read (not written yet, say).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Writes an executable script.
pub fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A named pipe at `path` (a gate a fake run blocks on until the test writes to it).
pub fn mkfifo(path: &Path) {
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// Alive and not a zombie (signal 0 succeeds on zombies; `/proc/<pid>/stat` says Z).
pub fn alive(pid: i32) -> bool {
    let status = read(Path::new(&format!("/proc/{pid}/stat")));
    !status.is_empty()
        && !status
            .split(") ")
            .nth(1)
            .is_some_and(|s| s.starts_with('Z'))
}

/// Whether `kill(pid, 0)` succeeds: the process exists, zombies included.
pub fn exists(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// SIGTERM to process `pid`, which must exist.
pub fn sigterm(pid: u32) {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap_or_else(|| panic!("{pid} is not a process id"));
    rustix::process::kill_process(p, rustix::process::Signal::TERM)
        .unwrap_or_else(|e| panic!("SIGTERM to {pid}: {e}"));
}

/// A local TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

/// Eight hex digits, different in every call and process: names no other test uses.
pub fn random_hex() -> String {
    let n = RandomState::new().hash_one((std::process::id(), Instant::now()));
    format!("{:08x}", n as u32)
}
