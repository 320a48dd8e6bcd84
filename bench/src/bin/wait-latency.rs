//! Wait latency: how long after the swarm reaches the awaited state does the harness notice it?
//!
//! Each round creates a one-service stack (fixture image `cc-ci-fixture/web:1`) whose healthcheck
//! starts passing at a known moment (the container creates `/tmp/ready` after a delay), and
//! waits for convergence exactly as a run does: `wait::wait_for` polling `Engine::snapshot` +
//! `checks::convergence` every `poll_interval_ms`. The moment the state was reached is the
//! engine's own `health_status: healthy` event (`timeNano`); the moment it was noticed is when
//! the wait returned. Both are the same machine's real-time clock.
//!
//!   wait-latency [--rounds N] [--poll-ms MS]...
//!
//! Prints one line per round and a summary per poll interval (median, p90, max), and removes
//! every service it created (stack names `ccbench-wl-<pid>-<n>`), also when a round fails.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cc_ci_harness::checks::{self, Convergence};
use cc_ci_harness::engine::{Engine, EngineError};
use cc_ci_harness::wait::{Probe, wait_for};

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Removes the round's service even when the round fails half-way.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["service", "rm", &self.0]);
    }
}

/// The `health_status: healthy` event time of the stack's container, in ns since the epoch.
fn healthy_at(stack: &str, since_ns: i128) -> Result<i128, String> {
    let since = format!(
        "{}.{:09}",
        since_ns / 1_000_000_000,
        since_ns % 1_000_000_000
    );
    let until = format!("{}", now_ns() / 1_000_000_000 + 1);
    let out = docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        "event=health_status",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
        "--format",
        "{{.TimeNano}} {{.Action}}",
    ])?;
    out.lines()
        .filter(|l| l.ends_with("health_status: healthy"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<i128>().ok())
        .min()
        .ok_or_else(|| format!("no health_status: healthy event for {stack}: {out:?}"))
}

async fn round(engine: &Engine, stack: &str, poll: Duration) -> Result<f64, String> {
    let start = now_ns();
    let service = format!("{stack}_app");
    docker(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &service,
        "--label",
        &format!("com.docker.stack.namespace={stack}"),
        "--container-label",
        &format!("com.docker.stack.namespace={stack}"),
        "--health-cmd",
        "test -f /tmp/ready",
        "--health-interval",
        "1s",
        // Failures before the file exists must not count (an unhealthy task is replaced).
        "--health-start-period",
        "60s",
        "--network",
        "proxy",
        "--restart-condition",
        "none",
        "cc-ci-fixture/web:1",
        "sh",
        "-c",
        "sleep 2; touch /tmp/ready; exec httpd -f -p 80 -h /www",
    ])?;
    let _cleanup = Cleanup(service.clone());
    wait_for(
        &format!("stack {stack} to converge"),
        Duration::from_secs(60),
        poll,
        || async {
            let snap = engine.snapshot(stack).await?;
            Ok::<_, EngineError>(match checks::convergence(&snap) {
                Convergence::Converged => Probe::Done(()),
                Convergence::Pending(w) => Probe::Pending(w),
                Convergence::Failed(w) => Probe::Failed(w),
            })
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let noticed = now_ns();
    let reached = healthy_at(stack, start)?;
    Ok((noticed - reached) as f64 / 1e9)
}

/// Services of earlier rounds whose bench process was killed before it could clean up.
fn remove_stale() {
    let Ok(names) = docker(&["service", "ls", "--format", "{{.Name}}"]) else {
        return;
    };
    for name in names.lines() {
        let Some(pid) = name
            .strip_prefix("ccbench-wl-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = docker(&["service", "rm", name]);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let mut rounds = 10usize;
    let mut polls: Vec<u64> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), v) {
            ("--rounds", Some(n)) => rounds = n as usize,
            ("--poll-ms", Some(ms)) => polls.push(ms),
            _ => {
                eprintln!("usage: wait-latency [--rounds N] [--poll-ms MS]...");
                std::process::exit(2);
            }
        }
    }
    if polls.is_empty() {
        polls.push(250);
    }
    // This binary is its own edge: it reads DOCKER_HOST once, as cc-ci's command line does.
    let host = cc_ci_harness::hostenv::HostEnv::from_process();
    let engine = match Engine::connect(host.docker_host.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("wait-latency: {e}");
            std::process::exit(3);
        }
    };
    remove_stale();
    let mut failed = false;
    let mut n = 0;
    for poll in polls {
        let mut lat = Vec::new();
        for _ in 0..rounds {
            n += 1;
            let stack = format!("ccbench-wl-{}-{n}", std::process::id());
            match round(&engine, &stack, Duration::from_millis(poll)).await {
                Ok(s) => {
                    println!("poll {poll} ms round {n}: noticed {:.3} s after healthy", s);
                    lat.push(s);
                }
                Err(e) => {
                    eprintln!("poll {poll} ms round {n}: {e}");
                    failed = true;
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        if !lat.is_empty() {
            println!(
                "SUMMARY poll_interval_ms={poll} rounds={} median={:.3}s p90={:.3}s max={:.3}s min={:.3}s",
                lat.len(),
                percentile(&lat, 0.5),
                percentile(&lat, 0.9),
                lat[lat.len() - 1],
                lat[0]
            );
        }
    }
    std::process::exit(if failed { 1 } else { 0 });
}
