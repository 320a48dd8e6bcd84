//! systemd integration: the socket-activated listener, `sd_notify` messages and the watchdog.
//!
//! Only the `sd-notify` crate is used (no libsystemd). The environment is read but never
//! modified (changing it in a multi-threaded process is unsound); the variables are instead
//! removed from the environment of every child process (see `runner`).

use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::error::DaemonError;

/// Variables that belong to this process only and must not reach children.
pub const PRIVATE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CREDENTIALS_DIRECTORY",
    "JOURNAL_STREAM",
];

/// A listening socket from systemd (fd 3) or from `--listen`.
pub enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// The first socket passed by systemd socket activation, if any.
pub fn listener_from_systemd() -> Result<Option<StdListener>, DaemonError> {
    let mut fds = sd_notify::listen_fds_with_names(false)
        .map_err(|e| DaemonError::SocketActivation(format!("LISTEN_FDS/LISTEN_PID: {e}")))?;
    let Some((fd, _name)) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!("systemd passed more than one socket; only the first (fd 3) is used");
    }
    from_fd(fd).map(Some)
}

fn from_fd(fd: RawFd) -> Result<StdListener, DaemonError> {
    // SAFETY: storage is large enough for any address family and len says so.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockname(
            fd,
            &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(DaemonError::SocketActivation(format!(
            "fd {fd} is not a socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut kind: libc::c_int = 0;
    let mut klen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut kind as *mut libc::c_int as *mut libc::c_void,
            &mut klen,
        )
    };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return Err(DaemonError::SocketActivation(format!(
            "fd {fd} is not a stream socket: use ListenStream= in the .socket unit"
        )));
    }
    let listener = match storage.ss_family as libc::c_int {
        // SAFETY: systemd hands this fd to us; nothing else in the process owns it.
        libc::AF_INET | libc::AF_INET6 => {
            StdListener::Tcp(unsafe { std::net::TcpListener::from_raw_fd(fd) })
        }
        libc::AF_UNIX => {
            StdListener::Unix(unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) })
        }
        other => {
            return Err(DaemonError::SocketActivation(format!(
                "fd {fd} has address family {other}, expected TCP or a unix socket"
            )));
        }
    };
    Ok(listener)
}

fn send(states: &[NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this is a no-op; a failing notify must never stop the daemon.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half of `WATCHDOG_USEC` when the watchdog is on for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
