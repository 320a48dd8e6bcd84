//! The daemon as a real process: socket activation (`systemd-socket-activate`), sd_notify
//! messages, SIGTERM, and `kill -9` in the middle of a run followed by restarts.
//!
//! This file has its own `main` (harness = false): started with `CC_CI_TEST_DAEMON_CONFIG`
//! set, the test binary *is* the daemon (`serve` with the fake run command), so these tests
//! need no `cc-ci` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cc_ci_daemon::config::Config;
use cc_ci_daemon::{ServeOptions, Tuning};
use cc_ci_testkit::cmd::{alive, free_port, read, sigterm};
use cc_ci_testkit::daemon::{Env, run_pid};
use cc_ci_testkit::forge::{SHA, SHA2};
use cc_ci_testkit::hooks::{comment, testme};
use cc_ci_testkit::serve::Notifications;
use cc_ci_testkit::wait::eventually;

const CHILD_CONFIG: &str = "CC_CI_TEST_DAEMON_CONFIG";
const CHILD_EXE: &str = "CC_CI_TEST_DAEMON_EXE";

fn child_main(config_path: String) -> ! {
    let config = match Config::load(Path::new(&config_path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("test daemon: {e}");
            std::process::exit(2);
        }
    };
    let opts = ServeOptions {
        config_path: Some(config_path.into()),
        listen: None,
        run_exe: std::env::var_os(CHILD_EXE).map(PathBuf::from),
        tuning: Tuning {
            tick: Duration::from_millis(100),
            progress_interval: Duration::from_millis(100),
            ..Tuning::default()
        },
        // This test binary is the process's edge here: it reads the environment once.
        host: cc_ci_harness::hostenv::HostEnv::from_process(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(cc_ci_daemon::serve(config, opts)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("test daemon: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    if let Ok(cfg) = std::env::var(CHILD_CONFIG) {
        child_main(cfg);
    }
    // Filters are the bare arguments; options such as `--test-threads N` (passed to every test
    // binary by `cargo test -- ...`) and their values are not.
    let mut filters: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--test-threads" || a == "--skip" || a == "--format" || a == "-Z" {
            args.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    let tests: &[(&str, fn())] = &[
        (
            "socket_activated_daemon_notifies_systemd_and_answers_triggers",
            socket_activation,
        ),
        (
            "sigkill_mid_run_then_restart_loses_nothing",
            sigkill_and_restart,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    std::process::exit(if failed == 0 { 0 } else { 101 });
}

fn write_config(env: &Env, config: &Config) -> PathBuf {
    let path = env.dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    path
}

fn daemon_log(env: &Env) -> PathBuf {
    env.dir.path().join("daemon.log")
}

fn log_file(env: &Env) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(daemon_log(env))
        .unwrap()
}

/// The daemon with `--listen`-style config (no socket activation).
fn spawn_plain(env: &Env, config_path: &Path) -> Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_CONFIG, config_path)
        .env(CHILD_EXE, &env.exe)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log_file(env))
        .stderr(log_file(env))
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the daemon did not exit within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(env: &Env, notify: Option<&Notifications>) -> String {
    format!(
        "{}notifications: {:?}\ndaemon log:\n{}",
        env.state(),
        notify.map(Notifications::all).unwrap_or_default(),
        read(&daemon_log(env))
    )
}

async fn wait_http(port: u16, env: &Env) {
    eventually(
        "the daemon to answer /healthz",
        20,
        || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).ok()?;
            out.starts_with("HTTP/1.1 200").then_some(())
        },
        || state(env, None),
    )
    .await
}

fn socket_activation() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let env = Env::new().await;
        env.gitea.add_pr("coop/web", 2, SHA2);
        env.set_mode(Some(2), "hang");
        let mut config = env.config.clone();
        // Under socket activation the configured address must not be used.
        let unused = env.dir.path().join("unused.sock");
        config.daemon.listen = unused.display().to_string();
        config.daemon.cancel_grace_secs = 1;
        let cfg = write_config(&env, &config);
        let notify = Notifications::bind(env.dir.path());
        let port = free_port();
        let me = std::env::current_exe().unwrap();
        // `exec` keeps one pid from sh to the daemon, so WATCHDOG_PID can name it.
        let script = format!(
            "exec systemd-socket-activate -l 127.0.0.1:{port} -E {CHILD_CONFIG}='{}' -E {CHILD_EXE}='{}' \
             -E NOTIFY_SOCKET='{}' -E WATCHDOG_USEC=400000 -E WATCHDOG_PID=$$ -E HOME -E PATH '{}'",
            cfg.display(),
            env.exe.display(),
            notify.path.display(),
            me.display()
        );
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log_file(&env))
            .stderr(log_file(&env))
            .spawn()
            .expect("systemd-socket-activate (Debian package `systemd`; scripts/setup-swarm installs it)");
        wait_http(port, &env).await;
        let has = |m: &str| notify.has(m);
        eventually("READY=1, STATUS=idle and WATCHDOG=1", 10, || {
            (has("READY=1") && has("STATUS=idle") && has("WATCHDOG=1")).then_some(())
        }, || state(&env, Some(&notify))).await;
        assert!(!unused.exists(), "the daemon bound daemon.listen despite socket activation");

        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (code, body) = comment(addr, "coop/web", 1, 300, "alice", "!testme").await;
        assert_eq!(code, 202, "{body}\n{}", state(&env, Some(&notify)));
        env.wait_status(SHA, "success", "passed").await;
        assert_eq!(env.gitea.statuses()[0].state, "pending");
        env.wait_comment(1, "✅ pass").await;

        let (code, body) = comment(addr, "coop/web", 2, 301, "alice", "!testme").await;
        assert_eq!(code, 202, "{body}");
        eventually("STATUS=running 1, queued 0", 10, || has("STATUS=running 1, queued 0").then_some(()), || state(&env, Some(&notify))).await;
        env.wait_hanging(2).await;
        let run_pid = run_pid(&env.marks(), 2).unwrap();

        sigterm(child.id());
        eventually("STOPPING=1", 10, || has("STOPPING=1").then_some(()), || state(&env, Some(&notify))).await;
        let status = wait_exit(&mut child, 30, "after SIGTERM");
        assert!(status.success(), "{status:?}\n{}", state(&env, Some(&notify)));
        assert!(read(&env.marks().join("term.log")).contains("term 2"), "{}", state(&env, Some(&notify)));
        assert!(!alive(run_pid), "run process {run_pid} outlived the daemon");
        // The interrupted run is back in the queue for the next start.
        let db = env.store();
        let r = db.get_run(2).unwrap().unwrap();
        assert_eq!(r.state, cc_ci_daemon::store::RunState::Queued, "{r:?}");
    });
}

fn sigkill_and_restart() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let env = Env::new().await;
        env.gitea.add_pr("coop/other", 5, SHA2);
        env.set_mode(Some(1), "hang");
        env.set_mode(Some(2), "pass");
        let mut config = env.config.clone();
        let port = free_port();
        config.daemon.listen = format!("127.0.0.1:{port}");
        let cfg = write_config(&env, &config);
        let addr: std::net::SocketAddr = config.daemon.listen.parse().unwrap();

        // Life 1: run 1 running, run 2 queued behind it; then kill -9.
        let mut d = spawn_plain(&env, &cfg);
        wait_http(port, &env).await;
        testme(addr, "coop/web", 1, 400).await;
        env.wait_comment(1, "⏳ running").await;
        testme(addr, "coop/other", 5, 401).await;
        env.wait_comment(2, "⏳ queued").await;
        let pid1 = eventually(
            "run 1 to start",
            10,
            || run_pid(&env.marks(), 1),
            || state(&env, None),
        )
        .await;
        d.kill().unwrap();
        d.wait().unwrap();
        eventually(
            "the run process to die with the daemon",
            10,
            || (!alive(pid1)).then_some(()),
            || state(&env, None),
        )
        .await;
        assert_eq!(
            read(&env.marks().join("gc.log")).lines().count(),
            1,
            "{}",
            state(&env, None)
        );

        // Life 2: gc first, run 1 re-queued (attempt 2) and hangs again; kill -9 once more.
        let mut d = spawn_plain(&env, &cfg);
        wait_http(port, &env).await;
        eventually(
            "gc at start-up",
            10,
            || (read(&env.marks().join("gc.log")).lines().count() == 2).then_some(()),
            || state(&env, None),
        )
        .await;
        let pid1b = eventually(
            "run 1 to be re-run",
            10,
            || run_pid(&env.marks(), 1).filter(|p| *p != pid1),
            || state(&env, None),
        )
        .await;
        let log = read(&env.dir.path().join("state/runs/1/log.txt"));
        assert!(
            log.contains("re-queued") && log.contains("attempt 2"),
            "{log}"
        );
        d.kill().unwrap();
        d.wait().unwrap();
        eventually(
            "the re-run process to die with the daemon",
            10,
            || (!alive(pid1b)).then_some(()),
            || state(&env, None),
        )
        .await;

        // Life 3: run 1 was interrupted twice: error, never pass. Run 2 still runs.
        let mut d = spawn_plain(&env, &cfg);
        wait_http(port, &env).await;
        let st = env.wait_status(SHA, "error", "daemon stopped").await;
        assert!(st.description.contains("run #1"), "{st:?}");
        let c = env.wait_comment(1, "⚠️ error").await;
        assert!(!c.body.contains("cc-ci: ✅"), "{}", c.body);
        env.wait_status(SHA2, "success", "run #2").await;
        assert_eq!(read(&env.marks().join("gc.log")).lines().count(), 3);
        assert_eq!(env.gitea.bot_comments().len(), 2, "{}", state(&env, None));
        sigterm(d.id());
        let status = wait_exit(&mut d, 30, "after SIGTERM");
        assert!(status.success(), "{status:?}\n{}", state(&env, None));
    });
}
