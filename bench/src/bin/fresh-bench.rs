//! Reuse benchmark (issue 15): the time from a `!testme` delivery to the final commit status, for
//! a full run (`!testme install fresh`) and for a result reported again (`!testme install` on the
//! unchanged pull request), alternating on one daemon in one bench run. See docs/benchmarks.md.
//!
//!   fresh-bench --cc-ci PATH --abra PATH --git-root DIR --sha SHA [--rounds N]
//!
//! A small Gitea double runs in this process (127.0.0.1 only): the API calls the daemon makes,
//! and the recipe repository `bench/web.git` under `--git-root` over git's dumb HTTP protocol
//! (prepared by bench/fresh with `git update-server-info`). Runs are real: the stand-in abra on the
//! swarm, the test registry's images.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "bench-webhook-secret-0123456789";
const TOKEN: &str = "bench-forge-token-0123456789";
const REPO: &str = "bench/web";

struct Forge {
    git_root: PathBuf,
    sha: String,
    /// (state, description) of every status posted, in order.
    statuses: Mutex<Vec<(String, String)>>,
    next_comment: Mutex<i64>,
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

async fn forge_handle(f: Arc<Forge>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path.contains(".git/") {
        // The dumb protocol: plain files of the bare repository (no `..`, this bench's root only).
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|s| s == ".." || s.is_empty()) {
            return reply(StatusCode::NOT_FOUND, json!({}));
        }
        return match std::fs::read(f.git_root.join(rel)) {
            Ok(bytes) => Response::new(Full::new(Bytes::from(bytes))),
            Err(_) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
    }
    let seg: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    match (method, seg.as_slice()) {
        (Method::GET, ["user"]) => reply(StatusCode::OK, json!({"id": 1, "login": "cc-ci-bot"})),
        (Method::GET, ["repos", o, r, "pulls", n]) => reply(
            StatusCode::OK,
            json!({"number": n.parse::<i64>().unwrap_or(0), "state": "open",
                   "head": {"sha": f.sha, "ref": "feature", "repo": {"full_name": format!("{o}/{r}")}}}),
        ),
        (Method::POST, ["repos", _, _, "statuses", _]) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Ok(mut s) = f.statuses.lock() {
                s.push((
                    v["state"].as_str().unwrap_or_default().to_string(),
                    v["description"].as_str().unwrap_or_default().to_string(),
                ));
            }
            reply(StatusCode::CREATED, json!({"state": v["state"]}))
        }
        (Method::POST, ["repos", _, _, "issues", _, "comments"]) => {
            let id = f
                .next_comment
                .lock()
                .map(|mut n| {
                    *n += 1;
                    *n
                })
                .unwrap_or(1);
            reply(
                StatusCode::CREATED,
                json!({"id": id + 1_000_000, "body": "", "user": {"login": "cc-ci-bot"}}),
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

async fn start_forge(f: Arc<Forge>) -> SocketAddr {
    cc_ci_bench::serve(f, forge_handle).await
}

async fn deliver(addr: SocketAddr, comment_id: i64, text: &str) -> u16 {
    let (owner, name) = REPO.split_once('/').unwrap_or(("bench", "web"));
    let body = json!({
        "action": "created",
        "issue": {"id": 501, "number": 1, "title": "Bump", "state": "open",
                  "user": {"id": 2, "login": "bob"},
                  "pull_request": {"merged": false, "merged_at": null}},
        "comment": {"id": comment_id, "body": text, "user": {"id": 1, "login": "alice"},
                    "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"},
        "repository": {"id": 3, "name": name, "owner": {"id": 9, "login": owner}, "full_name": REPO},
        "sender": {"id": 1, "login": "alice"},
        "is_pull": true
    })
    .to_string();
    let sig = cc_ci_daemon::trigger::sign(SECRET.as_bytes(), body.as_bytes());
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0;
    };
    let head = format!(
        "POST /hooks/gitea HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Gitea-Event: issue_comment\r\nX-Gitea-Event-Type: pull_request_comment\r\n\
         X-Gitea-Delivery: fresh-{comment_id}\r\nX-Gitea-Signature: {sig}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body.as_bytes()).await.is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    std::str::from_utf8(&out)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn write_config(dir: &Path, forge: SocketAddr, listen: SocketAddr, abra: &str) -> PathBuf {
    std::fs::write(dir.join("token"), TOKEN).expect("write token");
    std::fs::write(dir.join("secret"), SECRET).expect("write secret");
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[harness]\ndomain_suffix = \"fb{pid}.bench\"\nwork_dir = \"{work}\"\nabra = \"{abra}\"\n\
             stability_window_secs = 0\n\
             [daemon]\nstate_dir = \"{state}\"\nlisten = \"{listen}\"\npublic_url = \"http://{listen}\"\n\
             [forge]\nurl = \"http://{forge}\"\ntoken_file = \"{dir}/token\"\nwebhook_secret_file = \"{dir}/secret\"\n\
             repo_allowlist = [\"{REPO}\"]\nuser_allowlist = [\"alice\"]\n",
            pid = std::process::id(),
            work = dir.join("work").display(),
            state = dir.join("state").display(),
            dir = dir.display(),
        ),
    )
    .expect("write config");
    cfg
}

/// Waits for the next final (not pending) status after the first `seen` statuses.
async fn next_final(f: &Forge, seen: usize, limit: Duration) -> Result<(usize, String), String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = f.statuses.lock()
            && let Some((i, (_, d))) = s
                .iter()
                .enumerate()
                .skip(seen)
                .find(|(_, (st, _))| st != "pending")
        {
            return Ok((i + 1, d.clone()));
        }
        if Instant::now() > deadline {
            return Err(format!("no final status within {} s", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cc_ci), Some(abra), Some(git_root), Some(sha)) = (
        arg(&args, "--cc-ci"),
        arg(&args, "--abra"),
        arg(&args, "--git-root"),
        arg(&args, "--sha"),
    ) else {
        eprintln!(
            "usage: fresh-bench --cc-ci PATH --abra PATH --git-root DIR --sha SHA [--rounds N]"
        );
        std::process::exit(2);
    };
    let rounds: usize = arg(&args, "--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("cc-ci-fresh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let forge = Arc::new(Forge {
        git_root: PathBuf::from(git_root),
        sha,
        statuses: Mutex::new(Vec::new()),
        next_comment: Mutex::new(0),
    });
    let forge_addr = start_forge(forge.clone()).await;
    let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let cfg = write_config(&dir, forge_addr, listen, &abra);
    let mut daemon = tokio::process::Command::new(&cc_ci)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env_remove("CC_CI_ABRA")
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).expect("daemon.log"))
        .spawn()
        .expect("start cc-ci serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not listen within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut full = Vec::new();
    let mut reused = Vec::new();
    let mut seen = 0;
    let mut comment = 100;
    let mut failed = None;
    for round in 1..=rounds {
        for (text, into) in [
            ("!testme install fresh", &mut full),
            ("!testme install", &mut reused),
        ] {
            comment += 1;
            let t = Instant::now();
            let code = deliver(listen, comment, text).await;
            if code != 202 {
                failed = Some(format!("`{text}` was answered {code}"));
                break;
            }
            match next_final(&forge, seen, Duration::from_secs(300)).await {
                Ok((n, desc)) => {
                    seen = n;
                    let s = t.elapsed().as_secs_f64();
                    let is_reuse = desc.contains("unchanged since");
                    if is_reuse != text.ends_with("install") || !desc.starts_with("passed") {
                        failed = Some(format!("`{text}` ended with status `{desc}`"));
                        break;
                    }
                    println!("round {round}: {text:<22} → final status in {s:.3} s ({desc})");
                    into.push(s);
                }
                Err(e) => {
                    failed = Some(format!("`{text}`: {e}"));
                    break;
                }
            }
        }
        if failed.is_some() {
            break;
        }
    }
    if let Some(pid) = daemon.id() {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), daemon.wait()).await;
    let gc = tokio::process::Command::new(&cc_ci)
        .arg("gc")
        .arg("--config")
        .arg(&cfg)
        .output()
        .await;
    if let Some(f) = failed {
        eprintln!("fresh-bench: {f}; daemon log in {}", dir.display());
        std::process::exit(1);
    }
    if !matches!(gc, Ok(o) if o.status.success()) {
        eprintln!("fresh-bench: cc-ci gc failed after the bench");
    }
    let (f, r) = (median(full), median(reused));
    println!(
        "median: !testme → final status: full run {f:.3} s, reused {r:.3} s, reused / full = {:.3}",
        r / f
    );
    let _ = std::fs::remove_dir_all(&dir);
}
