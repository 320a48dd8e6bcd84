//! The daemon under test as a process of its own: `cc-ci serve` started plainly or under
//! `systemd-socket-activate`, its output appended to a log file, stopped with SIGTERM or killed;
//! a stand-in for systemd's notify socket; and `cc-ci gc` until nothing of a test is left.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cmd::read;
use crate::wait::eventually;

/// A running `cc-ci serve`; killed when dropped.
pub struct Serve {
    child: Option<Child>,
    /// Where its stdout and stderr go (appended: one file across restarts).
    pub log: PathBuf,
}

fn append(log: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()))
}

impl Serve {
    /// `cc-ci serve --config <config>` binding `daemon.listen` itself, with none of systemd's
    /// variables (nor `CC_CI_ABRA`) inherited from the test's environment.
    pub fn plain(cc_ci: &Path, config: &Path, log: &Path) -> Self {
        writeln!(append(log), "---- test: starting cc-ci serve").unwrap();
        let mut cmd = Command::new(cc_ci);
        cmd.arg("serve").arg("--config").arg(config);
        for var in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "CC_CI_ABRA",
        ] {
            cmd.env_remove(var);
        }
        Self::spawn(cmd, log, "start cc-ci serve")
    }

    /// `cc-ci serve` under `systemd-socket-activate`, which binds `addr` and execs the daemon
    /// (same pid) with the socket as fd 3. `--listen <unused>` is given too: proof that the
    /// socket came from systemd is that `unused` is never bound.
    pub fn socket_activated(
        cc_ci: &Path,
        config: &Path,
        addr: SocketAddr,
        notify: &Path,
        unused: &Path,
        log: &Path,
    ) -> Self {
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.arg("-l")
            .arg(addr.to_string())
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", notify.display()))
            .args(["-E", "PATH", "-E", "HOME"]);
        for var in ["DOCKER_HOST", "CC_CI_LOG"] {
            if std::env::var_os(var).is_some() {
                cmd.arg("-E").arg(var);
            }
        }
        cmd.arg(cc_ci)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(unused);
        Self::spawn(
            cmd,
            log,
            "systemd-socket-activate (Debian package `systemd`; scripts/setup-swarm installs it)",
        )
    }

    fn spawn(mut cmd: Command, log: &Path, what: &str) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(append(log))
            .stderr(append(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Serve {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGKILL (its runs die with it: they watch their parent).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then a clean exit within 60 s; `state` explains a failure.
    pub async fn stop(&mut self, state: impl Fn() -> String) {
        let mut c = self.child.take().expect("no daemon running");
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&c),
            rustix::process::Signal::TERM,
        )
        .expect("SIGTERM to our own child");
        let status = eventually(
            "the daemon to exit after SIGTERM",
            60,
            || c.try_wait().unwrap(),
            &state,
        )
        .await;
        assert!(
            status.success(),
            "the daemon exited with {status:?}\n{}",
            state()
        );
    }

    /// Until `GET /healthz` on `addr` answers 200 (30 s at most); fails at once when the daemon
    /// exits.
    pub async fn wait_healthy(&mut self, addr: SocketAddr, state: impl Fn() -> String) {
        let url = format!("http://{addr}/healthz");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait().unwrap()
            {
                panic!("the daemon exited with {status:?}\n{}", state());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer {url} within 30 s\n{}",
                state()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The daemon's log (tail) and each run's log (tail) under `<state_dir>/runs`: what explains a
/// failure of a test that runs `cc-ci serve`.
pub fn logs(daemon_log: &Path, state_dir: &Path) -> String {
    let mut out = format!("daemon log (tail):\n{}\n", tail(&read(daemon_log), 60));
    if let Ok(entries) = std::fs::read_dir(state_dir.join("runs")) {
        for e in entries.flatten() {
            out.push_str(&format!(
                "run {} log (tail):\n{}\n",
                e.file_name().to_string_lossy(),
                tail(&read(&e.path().join("log.txt")), 40)
            ));
        }
    }
    out
}

/// The process id the daemon logged for run `id` (`run started run_id=1 ... pid=Some(123)`).
pub fn logged_run_pid(daemon_log: &str, id: i64) -> Option<i32> {
    daemon_log
        .lines()
        .filter(|l| l.contains("run started") && l.contains(&format!("run_id={id} ")))
        .filter_map(|l| l.split("pid=Some(").nth(1)?.split(')').next()?.parse().ok())
        .next_back()
}

/// A unix datagram socket standing in for systemd's `NOTIFY_SOCKET`; keeps every message.
pub struct Notifications {
    pub path: PathBuf,
    msgs: Arc<Mutex<Vec<String>>>,
}

impl Notifications {
    /// Binds `<dir>/notify.sock`.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                m.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Notifications { path, msgs }
    }

    /// Whether a message had the line `line` (`READY=1`, `STATUS=idle`, ...).
    pub fn has(&self, line: &str) -> bool {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.lines().any(|l| l == line))
    }

    /// Every message so far.
    pub fn all(&self) -> Vec<String> {
        self.msgs.lock().unwrap().clone()
    }
}

/// `cc-ci gc --config <config>`: (exit code, stderr).
pub fn gc(cc_ci: &Path, config: &Path) -> (i32, String) {
    let o = Command::new(cc_ci)
        .args(["gc", "--config"])
        .arg(config)
        .output()
        .expect("run cc-ci gc");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A test's guard on the way out, pass or fail: `cc-ci gc` with its config until nothing of it
/// is alive (a killed run releases its lock as it dies; until then gc leaves it alone), for
/// 120 s at most; says so when it gives up.
pub fn gc_until_clean(cc_ci: &Path, config: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, stderr) = gc(cc_ci, config);
        if code == 0 && stderr.contains(" 0 alive") {
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "cleanup: `cc-ci gc --config {}` did not finish the job: {stderr}",
                config.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
