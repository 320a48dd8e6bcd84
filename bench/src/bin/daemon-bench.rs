//! Daemon benchmark: signed webhook deliveries on loopback (throughput and accept latency), idle
//! memory, and socket activation to `READY=1`. See docs/benchmarks.md.
//!
//!   daemon-bench --cc-ci PATH [--requests N] [--secs S] [--activations N]
//!
//! A small Gitea double runs in this process (127.0.0.1 only). It answers the API calls the
//! daemon makes and never answers a git request, so the first queued run hangs in its clone and
//! every later trigger stays queued: the benchmark measures the daemon's webhook path, not runs.
//! Every request goes to 127.0.0.1; everything lives in a temporary directory removed at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "bench-webhook-secret-0123456789";
const TOKEN: &str = "bench-forge-token-0123456789";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "bench/web";

#[derive(Default)]
struct ForgeCounts {
    requests: AtomicU64,
    statuses: AtomicU64,
    comments: AtomicU64,
    git: AtomicU64,
    next_comment: AtomicI64,
    /// Every API answer waits this long (a slow forge), in milliseconds.
    delay_ms: AtomicU64,
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn forge_handle(
    c: Arc<ForgeCounts>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    c.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path.contains(".git") {
        // Hold the clone of the first run forever: it keeps the one run slot busy.
        c.git.fetch_add(1, Ordering::Relaxed);
        std::future::pending::<()>().await;
    }
    let _ = req.into_body().collect().await;
    let delay = c.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let seg: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    match (method, seg.as_slice()) {
        (Method::GET, ["user"]) => reply(StatusCode::OK, json!({"id": 1, "login": "cc-ci-bot"})),
        (Method::GET, ["repos", o, r, "pulls", n]) => reply(
            StatusCode::OK,
            json!({"number": n.parse::<i64>().unwrap_or(0), "state": "open",
                   "head": {"sha": SHA, "ref": "feature", "repo": {"full_name": format!("{o}/{r}")}}}),
        ),
        (Method::POST, ["repos", _, _, "statuses", _]) => {
            c.statuses.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::CREATED, json!({"state": "pending"}))
        }
        (Method::POST, ["repos", _, _, "issues", _, "comments"]) => {
            c.comments.fetch_add(1, Ordering::Relaxed);
            let id = c.next_comment.fetch_add(1, Ordering::Relaxed) + 1_000_000;
            reply(
                StatusCode::CREATED,
                json!({"id": id, "body": "", "user": {"login": "cc-ci-bot"}}),
            )
        }
        (Method::PATCH, ["repos", _, _, "issues", "comments", id]) => reply(
            StatusCode::OK,
            json!({"id": id.parse::<i64>().unwrap_or(0), "body": "", "user": {"login": "cc-ci-bot"}}),
        ),
        (Method::GET, ["repos", _, _, "issues", _, "comments"]) => reply(StatusCode::OK, json!([])),
        _ => reply(StatusCode::NOT_FOUND, json!({"message": "not found"})),
    }
}

async fn start_forge() -> (SocketAddr, Arc<ForgeCounts>) {
    let counts = Arc::new(ForgeCounts::default());
    (
        cc_ci_bench::serve(counts.clone(), forge_handle).await,
        counts,
    )
}

fn comment_payload(pr: i64, comment_id: i64, body: &str) -> Vec<u8> {
    let (owner, name) = REPO.split_once('/').unwrap_or(("bench", "web"));
    json!({
        "action": "created",
        "issue": {"id": pr + 500, "number": pr, "title": "Bump", "state": "open",
                  "user": {"id": 2, "login": "bob"},
                  "pull_request": {"merged": false, "merged_at": null}},
        "comment": {"id": comment_id, "body": body, "user": {"id": 1, "login": "alice"},
                    "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"},
        "repository": {"id": 3, "name": name, "owner": {"id": 9, "login": owner}, "full_name": REPO},
        "sender": {"id": 1, "login": "alice"},
        "is_pull": true
    })
    .to_string()
    .into_bytes()
}

/// One delivery on a fresh connection (as a forge sends them): status code and the time from
/// connecting to the last byte of the answer.
async fn deliver(
    addr: SocketAddr,
    delivery: &str,
    body: &[u8],
    signature: &str,
) -> std::io::Result<(u16, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /hooks/gitea HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Gitea-Event: issue_comment\r\nX-Gitea-Event-Type: pull_request_comment\r\n\
         X-Gitea-Delivery: {delivery}\r\nX-Gitea-Signature: {signature}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let status = std::str::from_utf8(&out)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, start.elapsed()))
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

#[derive(Clone, Copy)]
enum Kind {
    /// `!testme` from an allowlisted user on a new pull request each time: queued (202).
    Trigger,
    /// A signed comment without `!testme`: verified, parsed, acknowledged as ignored (200).
    NotATrigger,
    /// A wrong signature (401).
    BadSignature,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Trigger => "trigger (202)",
            Kind::NotATrigger => "signed non-trigger (200)",
            Kind::BadSignature => "bad signature (401)",
        }
    }
    fn expected(self) -> u16 {
        match self {
            Kind::Trigger => 202,
            Kind::NotATrigger => 200,
            Kind::BadSignature => 401,
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Sends up to `requests` deliveries of `kind` from `clients` concurrent senders, for at most
/// `secs`; returns how many were accepted as expected.
async fn phase(
    addr: SocketAddr,
    kind: Kind,
    clients: usize,
    requests: u64,
    secs: u64,
    ids: Arc<AtomicI64>,
) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (sent, ids) = (sent.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut codes = std::collections::BTreeMap::<u16, u64>::new();
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < requests {
                let n = ids.fetch_add(1, Ordering::Relaxed);
                let body = match kind {
                    Kind::Trigger => comment_payload(n, n, "!testme"),
                    Kind::NotATrigger | Kind::BadSignature => {
                        comment_payload(n, n, "looks good to me")
                    }
                };
                let sig = match kind {
                    Kind::BadSignature => cc_ci_daemon::trigger::sign(b"not-the-secret", &body),
                    _ => cc_ci_daemon::trigger::sign(SECRET.as_bytes(), &body),
                };
                match deliver(addr, &format!("bench-{n}"), &body, &sig).await {
                    Ok((code, d)) => {
                        *codes.entry(code).or_default() += 1;
                        lat.push(d);
                    }
                    Err(_) => *codes.entry(0).or_default() += 1,
                }
            }
            (lat, codes)
        }));
    }
    let mut lat = Vec::new();
    let mut codes = std::collections::BTreeMap::<u16, u64>::new();
    for t in tasks {
        if let Ok((l, c)) = t.await {
            lat.extend(l);
            for (k, v) in c {
                *codes.entry(k).or_default() += v;
            }
        }
    }
    let el = start.elapsed().as_secs_f64();
    lat.sort();
    let ok = codes.get(&kind.expected()).copied().unwrap_or(0);
    println!(
        "RESULT webhook {:<26} clients {clients}: {} requests in {el:.2} s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; answers {codes:?}",
        kind.name(),
        lat.len(),
        lat.len() as f64 / el,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
    if ok as usize != lat.len() || codes.contains_key(&0) {
        println!("UNEXPECTED answers for {}: {codes:?}", kind.name());
    }
    ok
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn write_config(dir: &Path, forge: SocketAddr, state: &Path) -> PathBuf {
    std::fs::write(dir.join("token"), TOKEN).expect("write token");
    std::fs::write(dir.join("secret"), SECRET).expect("write secret");
    let cfg = dir.join("config.toml");
    let suffix = format!("dbench{}.local", std::process::id());
    std::fs::write(
        &cfg,
        format!(
            "[harness]\ndomain_suffix = \"{suffix}\"\nwork_dir = \"{work}\"\nabra = \"/bin/true\"\n\
             [daemon]\nstate_dir = \"{state}\"\nconcurrency = 1\ncancel_grace_secs = 1\npublic_url = \"http://127.0.0.1:1\"\n\
             [forge]\nurl = \"http://{forge}\"\ntoken_file = \"{dir}/token\"\nwebhook_secret_file = \"{dir}/secret\"\n\
             repo_allowlist = [\"{REPO}\"]\nuser_allowlist = [\"alice\"]\n",
            work = dir.join("work").display(),
            state = state.display(),
            dir = dir.display(),
        ),
    )
    .expect("write config");
    cfg
}

async fn wait_healthz(
    addr: SocketAddr,
    child: &mut tokio::process::Child,
) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = get(addr, "/healthz").await {
            return Ok(Instant::now());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("the daemon exited before answering /healthz: {st}"));
        }
        if Instant::now() > deadline {
            return Err("the daemon did not answer /healthz within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn stop(child: &mut tokio::process::Child) -> Result<Duration, String> {
    let t = Instant::now();
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(Ok(st)) if st.success() => Ok(t.elapsed()),
        Ok(Ok(st)) => Err(format!("the daemon exited with {st} after SIGTERM")),
        _ => {
            let _ = child.kill().await;
            Err("the daemon did not stop within 60 s of SIGTERM".into())
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

#[tokio::main]
async fn main() {
    let mut cc_ci: Option<PathBuf> = None;
    let mut requests = 2000u64;
    let mut secs = 20u64;
    let mut activations = 10usize;
    let mut slow_ms = 500u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--cc-ci", Some(p)) => cc_ci = Some(p.into()),
            ("--requests", Some(n)) if n.parse::<u64>().is_ok() => {
                requests = n.parse().unwrap_or(2000)
            }
            ("--secs", Some(n)) if n.parse::<u64>().is_ok() => secs = n.parse().unwrap_or(20),
            ("--activations", Some(n)) if n.parse::<usize>().is_ok() => {
                activations = n.parse().unwrap_or(10)
            }
            ("--slow-ms", Some(n)) if n.parse::<u64>().is_ok() => {
                slow_ms = n.parse().unwrap_or(500)
            }
            _ => {
                eprintln!(
                    "usage: daemon-bench --cc-ci PATH [--requests N] [--secs S] [--activations N] [--slow-ms MS]"
                );
                std::process::exit(2);
            }
        }
    }
    let Some(cc_ci) = cc_ci else {
        eprintln!("daemon-bench: --cc-ci PATH is required");
        std::process::exit(2);
    };
    let tmp = std::env::temp_dir().join(format!("cc-ci-daemon-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("create the temporary directory");
    let result = bench(&cc_ci, &tmp, requests, secs, activations, slow_ms).await;
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = result {
        eprintln!("daemon-bench: {e}");
        std::process::exit(1);
    }
}

async fn bench(
    cc_ci: &Path,
    tmp: &Path,
    requests: u64,
    secs: u64,
    activations: usize,
    slow_ms: u64,
) -> Result<(), String> {
    let (forge, counts) = start_forge().await;

    // --- Webhook throughput and latency on a daemon started by hand.
    let cfg = write_config(tmp, forge, &tmp.join("state"));
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let log = std::fs::File::create(tmp.join("daemon.log")).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(cc_ci)
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", &addr.to_string()])
        .env("CC_CI_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cc_ci.display()))?;
    let pid = child.id().unwrap_or(0);
    let t0 = Instant::now();
    let ready = wait_healthz(addr, &mut child).await?;
    println!(
        "daemon started by hand answers /healthz after {:.0} ms",
        (ready - t0).as_secs_f64() * 1000.0
    );
    let (rss_idle, _) = rss_kib(pid);

    let ids = Arc::new(AtomicI64::new(1));
    let mut accepted = 0;
    // Accept latency of a trigger with a forge that answers at once beside one that answers
    // every call after `slow_ms`, alternating blocks in one run: the trigger is stored and
    // answered before the forge is asked anything, so the two should be the same.
    for round in 0..2 {
        for delay in [0, slow_ms] {
            counts.delay_ms.store(delay, Ordering::Relaxed);
            print!("forge answers after {delay} ms (round {}): ", round + 1);
            accepted += phase(addr, Kind::Trigger, 1, requests / 4, secs, ids.clone()).await;
        }
    }
    counts.delay_ms.store(0, Ordering::Relaxed);
    for (kind, clients) in [
        (Kind::Trigger, 1),
        (Kind::Trigger, 8),
        (Kind::NotATrigger, 1),
        (Kind::NotATrigger, 8),
        (Kind::BadSignature, 8),
    ] {
        let ok = phase(addr, kind, clients, requests, secs, ids.clone()).await;
        if matches!(kind, Kind::Trigger) {
            accepted += ok;
        }
    }
    let (rss_after, hwm) = rss_kib(pid);
    // Nothing accepted may be lost: every 202 is a trigger in the store (runs follow once the
    // forge has been asked).
    let db =
        cc_ci_daemon::store::Store::open_existing(&cc_ci_daemon::database_path(&tmp.join("state")))
            .map_err(|e| e.to_string())?;
    let stored = db.trigger_count().map_err(|e| e.to_string())?;
    let (running, queued) = db.counts().map_err(|e| e.to_string())?;
    println!(
        "RESULT store after the load: {accepted} triggers accepted, {stored} stored{}; {running} running + {queued} queued runs so far",
        if stored == accepted {
            " (none lost)"
        } else {
            " (MISMATCH)"
        }
    );
    println!(
        "RESULT daemon RSS: idle {:.1} MiB after start, {:.1} MiB after the load (peak {:.1} MiB)",
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "forge double saw {} requests ({} statuses, {} comments, {} held git requests)",
        counts.requests.load(Ordering::Relaxed),
        counts.statuses.load(Ordering::Relaxed),
        counts.comments.load(Ordering::Relaxed),
        counts.git.load(Ordering::Relaxed)
    );
    let stopped = stop(&mut child).await?;
    println!(
        "daemon stopped {:.2} s after SIGTERM (one run cancelled)",
        stopped.as_secs_f64()
    );
    if stored != accepted {
        return Err("accepted triggers are missing from the store".into());
    }

    // --- Socket activation to READY=1.
    let sa_state = tmp.join("sa-state");
    let sa_cfg_dir = tmp.join("sa");
    std::fs::create_dir_all(&sa_cfg_dir).map_err(|e| e.to_string())?;
    let sa_cfg = write_config(&sa_cfg_dir, forge, &sa_state);
    let (mut to_ready, mut to_http, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..activations {
        let sock = tmp.join(format!("notify-{i}.sock"));
        let notify = tokio::net::UnixDatagram::bind(&sock).map_err(|e| e.to_string())?;
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let log =
            std::fs::File::create(tmp.join(format!("sa-{i}.log"))).map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new("systemd-socket-activate")
            .args(["-l", &addr.to_string()])
            .arg(format!("--setenv=NOTIFY_SOCKET={}", sock.display()))
            .args(["-E", "HOME", "-E", "PATH", "-E", "CC_CI_LOG=warn"])
            .arg(cc_ci)
            .args(["serve", "--config"])
            .arg(&sa_cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start systemd-socket-activate: {e}"))?;
        // systemd-socket-activate starts the daemon on the first connection: time from there.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (t0, mut conn) = loop {
            let t = Instant::now();
            match TcpStream::connect(addr).await {
                Ok(s) => break (t, s),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => {
                    return Err(format!(
                        "systemd-socket-activate did not listen on {addr}: {e}"
                    ));
                }
            }
        };
        conn.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let http = async {
            let mut out = Vec::new();
            let _ = conn.read_to_end(&mut out).await;
            (Instant::now(), String::from_utf8_lossy(&out).to_string())
        };
        let ready = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = notify.recv(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return Instant::now();
                }
            }
        };
        let both = async { tokio::join!(ready, http) };
        let (t_ready, (t_http, answer)) = tokio::time::timeout(Duration::from_secs(60), both)
            .await
            .map_err(|_| "no READY=1 and /healthz answer within 60 s of activation".to_string())?;
        if !answer.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "/healthz under socket activation answered {answer:?}"
            ));
        }
        to_ready.push((t_ready - t0).as_secs_f64() * 1000.0);
        to_http.push((t_http - t0).as_secs_f64() * 1000.0);
        rss.push(rss_kib(child.id().unwrap_or(0)).0 as f64 / 1024.0);
        stop(&mut child).await?;
        let _ = std::fs::remove_file(&sock);
    }
    println!(
        "RESULT socket activation ({activations} starts, state kept between them): first connection to READY=1 median {:.0} ms (min {:.0}, max {:.0}); to the /healthz answer median {:.0} ms; idle RSS median {:.1} MiB",
        median(to_ready.clone()),
        to_ready.iter().copied().fold(f64::INFINITY, f64::min),
        to_ready.iter().copied().fold(0.0, f64::max),
        median(to_http),
        median(rss)
    );
    Ok(())
}
