//! The daemon's pages in a real browser (headless Chromium over WebDriver): a finished run with
//! a hostile recipe's output, a running run whose log and timeline grow without a reload, the
//! runs list with its filters, the board, and `/metrics` parsed. The same test writes the
//! screenshots in docs/screenshots/, so they show the pages as they are.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cc_ci_testkit::browser::Browser;
use cc_ci_testkit::cmd::{mkfifo, write_exe};
use cc_ci_testkit::daemon::Env;
use cc_ci_testkit::forge::{SHA, SHA2, TOKEN};
use cc_ci_testkit::hooks::{Flavour, comment, push, testme};

/// What the hostile recipe prints into its health check and its logs.
const HOSTILE: &str =
    "<script>document.title='pwned';window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

/// A fake `cc-ci` for the page tests. `run` behaves as `<marks>/mode.<id>` says:
/// `hostile`: a failed run whose check detail, diagnostics and log hold markup and the token;
/// `live`: install passes, then upgrade and the end each wait for a line on `<marks>/step`.
fn pages_exe(marks: &Path) -> PathBuf {
    let tier = |name: &str, verdict: &str, detail: &str| {
        serde_json::json!({"name": name, "verdict": verdict, "duration_ms": 12500,
        "checks": [
            {"name": "converged", "source": "generic", "verdict": "pass", "detail": "1/1 tasks running"},
            {"name": "healthy", "source": "generic", "verdict": verdict, "detail": detail}
        ]})
    };
    let report = |verdict: &str, tiers: Vec<serde_json::Value>| {
        serde_json::json!({"recipe": "web", "ref": "refs/pull/1/head", "head_sha": "@HEAD@",
            "base_version": "1.0.0+1.27", "app_domain": "web-abcdef.ci.local", "verdict": verdict,
            "deploy_count": 1, "tiers": tiers, "teardown": {"verdict": "pass", "leftovers": []},
            "notes": []})
        .to_string()
    };
    let hostile_detail = format!("health check output: {HOSTILE} (token {TOKEN})");
    let script = format!(
        r#"#!/bin/bash
MARK='{marks}'
cmd=$1; shift
if [ "$cmd" = gc ]; then echo "gc: 0 collected, 0 alive, 0 leftovers"; exit 0; fi
[ "$cmd" = run ] || exit 2
dir=""
ref=""
while [ $# -gt 0 ]; do
  case "$1" in
    --report-dir) dir=$2; shift 2;;
    --ref) ref=$2; shift 2;;
    *) shift;;
  esac
done
id=$(basename "$dir")
mode=$(cat "$MARK/mode.$id")
echo "[0.0s] cloning the recipe"
echo "[   1.0s] install: deploying head 0123456789"
echo "[   3.0s] waiting for convergence"
echo "[   9.0s] stability window: no restarts for 3 s"
echo "[  12.0s] install: checks done"
case "$mode" in
  hostile)
    mkdir -p "$dir/diagnostics"
    echo 'service web (replicas Some(1)) task 1 state running health unhealthy' > "$dir/diagnostics/tasks.txt"
    cat > "$dir/diagnostics/web.log" <<'LOG'
{hostile}
LOG
    sed "s/@HEAD@/$ref/" > "$dir/run.json" <<'JSON'
{hostile_report}
JSON
    echo "summary" > "$dir/summary.md"
    echo "<testsuites/>" > "$dir/junit.xml"
    printf 'install: fail '; cat "$dir/diagnostics/web.log"
    exit 1;;
  live)
    sed "s/@HEAD@/$ref/" > "$dir/progress.json" <<'JSON'
{progress1}
JSON
    echo "[12.5s] install: pass"
    read -r line < "$MARK/step"
    sed "s/@HEAD@/$ref/" > "$dir/progress.json" <<'JSON'
{progress2}
JSON
    echo "[25.0s] upgrade: pass"
    read -r line < "$MARK/step"
    sed "s/@HEAD@/$ref/" > "$dir/run.json" <<'JSON'
{final_report}
JSON
    echo "[30.0s] all tiers passed"
    exit 0;;
esac
exit 2
"#,
        marks = marks.display(),
        hostile = HOSTILE,
        hostile_report = report("fail", vec![tier("install", "fail", &hostile_detail)]),
        progress1 = report("error", vec![tier("install", "pass", "healthy")]),
        progress2 = report(
            "error",
            vec![
                tier("install", "pass", "healthy"),
                tier("upgrade", "pass", "healthy")
            ]
        ),
        final_report = report(
            "pass",
            vec![
                tier("install", "pass", "healthy"),
                tier("upgrade", "pass", "healthy")
            ]
        ),
    );
    let path = marks.join("pages-cc-ci");
    write_exe(&path, &script);
    path
}

async fn get(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    req.send().await.unwrap()
}

async fn wait_state(addr: std::net::SocketAddr, id: i64, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = get(addr, &format!("/runs/{id}"), None)
            .await
            .json()
            .await
            .unwrap_or_default();
        if v["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for run {id} to be {state}; it is: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/screenshots")
        .join(name)
}

/// Let the live run take its next step (blocks until the run reads it).
async fn step(marks: &Path) {
    let fifo = marks.join("step");
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
        .await
        .unwrap()
        .unwrap();
}

/// Parse Prometheus' text format: every sample line is `name{labels} value`.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("metrics line without a value: {l}"));
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("metrics value is not a number: {l}"));
            (name.to_string(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pages_in_a_real_browser() {
    let mut env = Env::new().await;
    env.exe = pages_exe(&env.marks());
    mkfifo(&env.marks().join("step"));
    std::fs::write(env.marks().join("mode.1"), "hostile").unwrap();
    std::fs::write(env.marks().join("mode.2"), "live").unwrap();
    env.gitea.add_pr("coop/web", 2, SHA2);
    // The first status post fails once (HTTP 500): retried, and counted in /metrics.
    env.gitea.state.lock().unwrap().fail_statuses = 1;
    let d = env.start().await;
    let addr = d.local_addr().unwrap();
    let base = format!("http://{addr}");

    // A finished, failed run whose recipe printed markup.
    testme(addr, "coop/web", 1, 301).await;
    wait_state(addr, 1, "done").await;
    // A running one.
    assert_eq!(
        comment(addr, "coop/web", 2, 302, "alice", "!testme install,upgrade")
            .await
            .0,
        202
    );
    wait_state(addr, 2, "running").await;

    // API clients still get JSON; browsers get the page.
    let r = get(addr, "/runs/1", None).await;
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let r = get(
        addr,
        "/runs/1",
        Some("text/html,application/xhtml+xml,*/*;q=0.8"),
    )
    .await;
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.headers().contains_key("content-security-policy"));
    let page = r.text().await.unwrap();
    assert!(!page.contains(TOKEN), "the forge token is on the run page");
    assert!(
        !page.contains("<script>document"),
        "hostile markup reached the page unescaped"
    );
    // Downloads are the run's files, redacted.
    let r = get(addr, "/runs/1/run.json", None).await;
    assert_eq!(r.status().as_u16(), 200);
    let dl = r.text().await.unwrap();
    assert!(
        dl.contains("\"verdict\": \"fail\"") || dl.contains("\"verdict\":\"fail\""),
        "{dl}"
    );
    assert!(!dl.contains(TOKEN));
    assert_eq!(
        get(addr, "/runs/2/run.json", None).await.status().as_u16(),
        404
    );

    let b = Browser::start().await;

    // The finished run.
    b.goto(&format!("{base}/runs/1")).await;
    assert!(b.text("h1").await.contains("Run #1"));
    assert_eq!(
        b.js("return document.querySelector('#state').dataset.state")
            .await,
        "fail"
    );
    // The hostile string is shown as text and ran nothing.
    let checks = b.text("#checks").await;
    assert!(
        checks.contains(HOSTILE),
        "the check detail is not shown as text: {checks}"
    );
    assert_eq!(
        b.js("return window.pwned === undefined && document.title.indexOf('pwned') < 0")
            .await,
        true
    );
    assert_eq!(
        b.js(
            "return document.querySelectorAll('main script, main img, #checks *[onerror]').length"
        )
        .await,
        0
    );
    // Failing checks first and open, passing ones folded.
    assert_eq!(
        b.js("var d = document.querySelectorAll('#checks details'); return [d[0].className, d[0].open, d[d.length-1].className, d[d.length-1].open].join(' ')").await,
        "check fail true check pass false"
    );
    // Diagnostics folded open, the task table first.
    assert_eq!(
        b.js("var d = document.querySelectorAll('#diagnostics details'); return d.length + ' ' + d[0].open + ' ' + d[0].querySelector('summary').textContent").await,
        "2 true tasks.txt"
    );
    assert!(b.text("#diagnostics").await.contains(HOSTILE));
    // Timeline: install failed, upgrade/backup/restore never ran.
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#timeline tr.tier')).map(r => r.dataset.tier + ':' + r.cells[1].textContent).join(' ')").await,
        "install:fail upgrade:not run backup:not run restore:not run"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#timeline svg g.bar').length")
            .await,
        4
    );
    // The waits (convergence, stability window) are visible as steps of their own.
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#steps svg rect.wait')).map(r => r.textContent).join(' | ')").await,
        "waiting for convergence (6.0 s) | stability window: no restarts for 3 s (3.0 s)"
    );
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#downloads a')).map(a => a.getAttribute('href')).join(' ')").await,
        "/runs/1/summary.md /runs/1/run.json /runs/1/junit.xml"
    );
    let repro = b.text("#reproduce pre").await;
    assert_eq!(
        repro,
        format!(
            "cc-ci run --recipe {}/coop/web.git --ref {SHA} --stages install,upgrade,backup,restore",
            env.gitea.url()
        )
    );
    let log = b.text("#log").await;
    assert!(log.contains("install: fail <script>"), "{log}");
    assert!(
        !b.text("body").await.contains(TOKEN),
        "the forge token is on the page"
    );
    // A finished run's page does not follow anything.
    assert_eq!(
        b.js("return document.querySelector('script[src]') === null")
            .await,
        true
    );
    std::fs::create_dir_all(screenshot_path("")).unwrap();
    b.fit_height(2400).await;
    std::fs::write(screenshot_path("run-page.png"), b.screenshot().await).unwrap();

    // The running run: the log and the timeline grow, and the end shows, without a reload.
    b.goto(&format!("{base}/runs/2")).await;
    assert_eq!(
        b.js("window.sameLoad = 42; return document.querySelector('#state').dataset.state")
            .await,
        "running"
    );
    b.wait_for(
        "install to be done and upgrade running",
        20,
        "var r = document.querySelectorAll('#timeline tr.tier'); return r.length == 2 && r[0].cells[1].textContent == 'pass' && r[1].cells[1].textContent == 'running'",
    )
    .await;
    assert!(!b.text("#log").await.contains("upgrade: pass"));
    step(&env.marks()).await;
    b.wait_for(
        "the upgrade line in the log",
        20,
        "return document.querySelector('#log').textContent.indexOf('upgrade: pass') >= 0",
    )
    .await;
    b.wait_for(
        "the upgrade tier in the timeline",
        20,
        "var r = document.querySelectorAll('#timeline tr.tier'); return r[1].cells[1].textContent == 'pass'",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#state').dataset.state")
            .await,
        "running"
    );
    step(&env.marks()).await;
    b.wait_for(
        "the final state",
        20,
        "return document.querySelector('#state').dataset.state == 'pass' && document.body.dataset.finished == '1'",
    )
    .await;
    assert!(b.text("#log").await.contains("all tiers passed"));
    assert_eq!(
        b.js("return window.sameLoad").await,
        42,
        "the page was reloaded"
    );
    assert!(b.text("#downloads").await.contains("run.json"));

    // The runs list and its filters.
    b.goto(&format!("{base}/")).await;
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.dataset.run + ':' + r.dataset.state).join(' ')").await,
        "2:pass 1:fail"
    );
    b.goto(&format!("{base}/?state=fail")).await;
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.dataset.run).join(' ')").await,
        "1"
    );
    b.goto(&format!("{base}/?repo=coop%2Fother")).await;
    assert!(b.text("#no-runs").await.contains("No runs match"));

    // The board: the latest run of each pull request; PR 1 got new commits since its run.
    env.gitea.set_head("coop/web", 1, SHA2);
    let (code, body) = push(addr, Flavour::Gitea, "sync-1", "coop/web", 1, SHA2).await;
    assert_eq!(code, 202, "{body}");
    // The push is answered at once and the pull request's head read from the forge after the
    // answer: reload the board until it shows the new head, or fail saying what it showed.
    let want = "web#1:fail:stale: now fedcba9876 web#2:pass:current";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        b.goto(&format!("{base}/board")).await;
        let shown = b.js("return Array.from(document.querySelectorAll('#board tbody tr')).map(r => r.dataset.recipe + '#' + r.dataset.pr + ':' + r.cells[2].textContent + ':' + r.querySelector('.head').textContent).join(' ')").await;
        if shown == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the board never showed `{want}` within 20 s after the push; it showed `{shown}`"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    b.fit_height(2400).await;
    std::fs::write(screenshot_path("board.png"), b.screenshot().await).unwrap();
    b.close().await;

    // Statuses and the pull-request comment link to the run page.
    env.wait_comment(1, "(http://ci.test/runs/1)").await;
    env.wait_comment(2, "(http://ci.test/runs/2)").await;
    let statuses = env.gitea.statuses();
    assert!(!statuses.is_empty());
    for s in &statuses {
        assert!(s.target_url.starts_with("http://ci.test/runs/"), "{s:?}");
    }

    // /metrics: Prometheus text, every sample a number, the runs counted.
    let r = get(addr, "/metrics", None).await;
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let s = samples(&text);
    let value = |name: &str| {
        s.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
    };
    assert_eq!(value("cc_ci_runs{state=\"done\",verdict=\"fail\"}"), 1.0);
    assert_eq!(value("cc_ci_runs{state=\"done\",verdict=\"pass\"}"), 1.0);
    assert_eq!(value("cc_ci_queue_length"), 0.0);
    assert_eq!(value("cc_ci_active_runs"), 0.0);
    assert_eq!(value("cc_ci_runs_finished_total{verdict=\"fail\"}"), 1.0);
    assert_eq!(
        value("cc_ci_run_duration_seconds_count{verdict=\"pass\"}"),
        1.0
    );
    assert_eq!(
        value("cc_ci_tier_duration_seconds_sum{tier=\"upgrade\",verdict=\"pass\"}"),
        12.5
    );
    assert_eq!(
        value("cc_ci_webhook_deliveries_total{outcome=\"accepted\"}"),
        3.0
    );
    assert!(value("cc_ci_gc_runs_total") >= 1.0);
    assert_eq!(value("cc_ci_forge_api_errors_total{kind=\"status\"}"), 1.0);
    assert_eq!(value("cc_ci_forge_api_retries_total"), 1.0);
    assert!(value("cc_ci_report_latency_seconds_count") >= 1.0);
    d.shutdown().await;
}
