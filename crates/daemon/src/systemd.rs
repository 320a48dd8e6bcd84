//! systemd integration: the socket-activated listener, `sd_notify` messages and the watchdog.
//!
//! Only the `sd-notify` crate is used (no libsystemd). It reads `NOTIFY_SOCKET`, `LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES` and `WATCHDOG_*` itself, at the moment of each call: they are
//! systemd's protocol with this very process (`LISTEN_PID` is compared with our own pid), not
//! settings, so they stay out of `HostEnv` and this is the one place below the edge where the
//! environment is looked at. It is read but never modified (changing it in a multi-threaded
//! process is unsound); the variables are instead removed from the environment of every child
//! process (see `runner`).

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketType};
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
    // SAFETY: systemd passed this fd to this process for it to own (sd_notify checked
    // LISTEN_PID); nothing else in the process holds it.
    #[allow(unsafe_code)] // taking ownership of an inherited fd has no safe form
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let family = match rustix::net::getsockname(&owned) {
        Ok(addr) => addr.address_family(),
        Err(e) => {
            // Not ours after all: leave the fd open, as it was found.
            let _ = owned.into_raw_fd();
            return Err(DaemonError::SocketActivation(format!(
                "fd {fd} is not a socket: {e}"
            )));
        }
    };
    if rustix::net::sockopt::socket_type(&owned).ok() != Some(SocketType::STREAM) {
        let _ = owned.into_raw_fd();
        return Err(DaemonError::SocketActivation(format!(
            "fd {fd} is not a stream socket: use ListenStream= in the .socket unit"
        )));
    }
    Ok(
        if family == AddressFamily::INET || family == AddressFamily::INET6 {
            StdListener::Tcp(std::net::TcpListener::from(owned))
        } else if family == AddressFamily::UNIX {
            StdListener::Unix(std::os::unix::net::UnixListener::from(owned))
        } else {
            let _ = owned.into_raw_fd();
            return Err(DaemonError::SocketActivation(format!(
                "fd {fd} has address family {}, expected TCP or a unix socket",
                family.as_raw()
            )));
        },
    )
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
