//! Running a program under a fresh pseudo-terminal, as abra needs (it refuses to run without
//! one), with a deadline, an output cap and the whole process group killed at the end. The
//! terminal calls go through `rustix`; the one `unsafe` left is `pre_exec`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};
use rustix::pty::OpenptFlags;
use tokio::io::unix::AsyncFd;

pub(crate) enum PtyError {
    Spawn(String),
    /// Output collected before the deadline.
    Timeout(String),
    /// Output collected up to the cap.
    TooMuch(String),
}

/// Whether a pseudo-terminal can be opened here (`cc-ci doctor`).
pub fn terminal_available() -> Result<(), String> {
    open_pty()
        .map(|_| ())
        .map_err(|e| format!("cannot open a pseudo-terminal: {e}"))
}

/// Runs a program with a new pseudo-terminal as its controlling terminal and stdin/stdout/stderr,
/// collecting what it prints (at most `cap` bytes). The deadline covers the program's exit *and*
/// the end of its terminal: a leftover process holding the terminal cannot hang the run. On the
/// deadline, on too much output, or when the future is dropped the program's whole process
/// group is killed.
pub(crate) async fn run_in_pty(
    bin: &Path,
    args: &[String],
    abra_dir: &Path,
    timeout: Duration,
    cap: usize,
) -> Result<(i32, String), PtyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (master, slave) =
        open_pty().map_err(|e| PtyError::Spawn(format!("cannot open a pseudo-terminal: {e}")))?;
    // The master is read without blocking a thread.
    rustix::io::ioctl_fionbio(&master, true)
        .map_err(|e| PtyError::Spawn(format!("cannot watch the pseudo-terminal: {e}")))?;
    // SAFETY: `register` is unsafe because tokio cannot check that the descriptor stays open
    // while registered; `master` is an OwnedFd moved into the AsyncFd, so nothing else closes
    // or replaces it.
    #[allow(unsafe_code)]
    let master = unsafe { AsyncFd::register(master) }
        .map_err(|e| PtyError::Spawn(format!("cannot watch the pseudo-terminal: {e}")))?;
    let mut child = spawn_on(&slave, bin, args, abra_dir).map_err(PtyError::Spawn)?;
    // This process's copy of the slave side must go, or reading the master never sees the end.
    drop(slave);
    let mut group = GroupGuard(child.id().and_then(|p| Pid::from_raw(p as i32)));
    let mut buf = Vec::new();
    let run = async {
        let reading = read_terminal(&master, &mut buf, cap);
        tokio::pin!(reading);
        let status = tokio::select! {
            st = child.wait() => st,
            end = &mut reading => {
                if end == TerminalEnd::Full {
                    return Err(TerminalEnd::Full);
                }
                // Every holder closed the terminal; the program itself is ending.
                return Ok(child.wait().await);
            }
        };
        // Grandchildren may still hold the terminal; they belong to the finished call.
        group.kill();
        match reading.await {
            TerminalEnd::Full => Err(TerminalEnd::Full),
            TerminalEnd::Closed => Ok(status),
        }
    };
    let outcome = tokio::time::timeout_at(deadline, run).await;
    drop(group);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match outcome {
        Ok(Ok(Ok(st))) => {
            let code = st.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
            });
            Ok((code, text(&buf)))
        }
        Ok(Ok(Err(e))) => Err(PtyError::Spawn(e.to_string())),
        Ok(Err(_)) => {
            let _ = child.kill().await;
            Err(PtyError::TooMuch(text(&buf)))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(PtyError::Timeout(text(&buf)))
        }
    }
}

/// Starts `bin` in its own session with `slave` as its controlling terminal and stdio.
fn spawn_on(
    slave: &OwnedFd,
    bin: &Path,
    args: &[String],
    abra_dir: &Path,
) -> Result<tokio::process::Child, String> {
    let stdio = || {
        slave
            .try_clone()
            .map(Stdio::from)
            .map_err(|e| e.to_string())
    };
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env("ABRA_DIR", abra_dir)
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .env("COLUMNS", "250")
        .stdin(stdio()?)
        .stdout(stdio()?)
        .stderr(stdio()?)
        .kill_on_drop(true);
    // SAFETY: `pre_exec` is unsafe because the closure runs between fork and exec; it makes only
    // async-signal-safe system calls (prctl, setsid, ioctl) and allocates nothing. There is no
    // safe way to give a child a controlling terminal.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            // abra gets its own session (for the terminal), so a signal to the run's process group
            // misses it: make it die with the run instead of deploying on as an orphan.
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| e.to_string())
}

#[derive(Debug, PartialEq, Eq)]
enum TerminalEnd {
    /// Every holder of the terminal's slave side is gone.
    Closed,
    /// The cap was reached.
    Full,
}

/// Reads the master side until the terminal closes (EIO/EOF) or `cap` bytes were read.
async fn read_terminal(master: &AsyncFd<OwnedFd>, buf: &mut Vec<u8>, cap: usize) -> TerminalEnd {
    let mut chunk = [0u8; 8192];
    loop {
        let Ok(mut ready) = master.readable().await else {
            return TerminalEnd::Closed;
        };
        match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut chunk))) {
            Ok(Ok(Ok(0))) => return TerminalEnd::Closed,
            Ok(Ok(Ok(n))) => {
                let room = cap.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if n > room {
                    return TerminalEnd::Full;
                }
            }
            Ok(Ok(Err(rustix::io::Errno::INTR))) => {}
            // Not ready after all: clear the readiness and wait again.
            Ok(Ok(Err(rustix::io::Errno::AGAIN))) => ready.clear_ready(),
            // EIO: the last holder of the slave side closed it.
            Ok(Ok(Err(_))) | Ok(Err(_)) => return TerminalEnd::Closed,
            Err(_would_block) => {}
        }
    }
}

/// Kills a process group when dropped (deadline, cancellation, or normal end).
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0 {
            // A group that is already gone gives ESRCH, which is fine.
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new terminal: the master and the slave side, neither inherited by children.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Wide enough that abra's tables never wrap.
    rustix::termios::tcsetwinsize(
        slave.as_fd(),
        rustix::termios::Winsize {
            ws_row: 50,
            ws_col: 250,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok((master, slave))
}
