//! `cc-ci doctor`: checks the host the way a run needs it, one line per check with what to do
//! when it fails. The daemon runs the same checks at start-up and logs what fails.

use std::path::Path;
use std::time::Duration;

use crate::abra::{self, Abra, spelling};
use crate::config::HarnessConfig;
use crate::engine::{Engine, EngineError, registry_of};
use crate::hostenv::{HostEnv, work_dir};
use crate::redact::Redactor;
use cc_ci_engine_api::labels::backupbot::{BACKUPBOT_HOW_TO, backupbot_label};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it failed (empty when it passed).
    pub fix: String,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: String::new(),
        }
    }
    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    /// `ok   <name>: <detail>` or `FAIL <name>: <detail> -> <fix>`.
    pub fn line(&self) -> String {
        if self.ok {
            format!("ok   {}: {}", self.name, self.detail)
        } else {
            format!("FAIL {}: {} -> {}", self.name, self.detail, self.fix)
        }
    }
}

/// Every abra command cc-ci runs, with the flags it passes: each must appear in
/// `abra <command> --help`.
pub fn spellings_in_use() -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (vec!["server", "add"], vec!["--local"]),
        (vec!["app", "new"], vec!["--server", "--domain"]),
        (
            vec!["app", "deploy"],
            vec![
                "--chaos",
                spelling::NO_DOMAIN_CHECKS,
                spelling::NO_CONVERGE_CHECKS,
            ],
        ),
        (vec!["app", "undeploy"], vec![]),
        (spelling::SECRET_INSERT.to_vec(), vec![]),
        (spelling::BACKUP_CREATE.to_vec(), vec![]),
        (spelling::BACKUP_LIST.to_vec(), vec![]),
        (
            spelling::BACKUP_LS.to_vec(),
            vec![spelling::BACKUP_SNAPSHOT_FLAG],
        ),
        (spelling::RESTORE.to_vec(), vec![]),
    ]
}

/// Runs every check. `abra_flag` is `--abra` (it wins over `CC_CI_ABRA` and the config).
pub async fn run(config: &HarnessConfig, abra_flag: Option<&str>, host: &HostEnv) -> Vec<Check> {
    let (engine, mut out) = engine_check(host).await;
    match &engine {
        Some(e) => out.extend(swarm_checks(e, host).await),
        None => out.push(Check::fail(
            "proxy network, backup-bot-two, registries",
            "not checked: the engine does not answer",
            "fix the engine first",
        )),
    }
    out.push(match abra::terminal_available() {
        Ok(()) => Check::pass(
            "terminal",
            "a pseudo-terminal can be opened (abra needs one)",
        ),
        Err(why) => Check::fail(
            "terminal",
            why,
            "mount devpts (/dev/pts) and allow /dev/ptmx, e.g. PrivateDevices=no",
        ),
    });
    let work = work_dir(config, host);
    out.push(match writable(&work) {
        Ok(()) => Check::pass("work directory", format!("{} is writable", work.display())),
        Err(why) => Check::fail(
            "work directory",
            why,
            "create it writable for cc-ci's user, or set harness.work_dir",
        ),
    });
    out.extend(abra_checks(config, abra_flag, &work, host).await);
    out
}

/// The engine answers and is a swarm manager: the engine when it is, and the check.
async fn engine_check(host: &HostEnv) -> (Option<Engine>, Vec<Check>) {
    let e = match Engine::connect(host.docker_host.as_deref()) {
        Ok(e) => e,
        Err(err) => {
            let check = Check::fail(
                "engine",
                err.to_string(),
                "set DOCKER_HOST=unix:///path/to/docker.sock",
            );
            return (None, vec![check]);
        }
    };
    match e.check_swarm().await {
        Ok(()) => (
            Some(e),
            vec![Check::pass(
                "engine",
                "the Docker engine answers and this node is a swarm manager",
            )],
        ),
        Err(EngineError::NotSwarm(msg)) => (
            None,
            vec![Check::fail(
                "engine",
                msg,
                "run `docker swarm init` (or scripts/setup-swarm), on a manager node",
            )],
        ),
        Err(err) => (
            None,
            vec![Check::fail(
                "engine",
                err.to_string(),
                "start dockerd, or point DOCKER_HOST at its unix socket",
            )],
        ),
    }
}

/// What the swarm must provide: the `proxy` network, backup-bot-two, reachable registries.
async fn swarm_checks(e: &Engine, host: &HostEnv) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match e.network_driver("proxy").await {
        Ok(Some((driver, scope))) if driver == "overlay" && scope == "swarm" => {
            Check::pass("proxy network", "overlay network `proxy` exists")
        }
        Ok(Some((driver, scope))) => Check::fail(
            "proxy network",
            format!("`proxy` is a {driver}/{scope} network, not a swarm overlay"),
            "remove it and run `docker network create -d overlay --attachable proxy`",
        ),
        Ok(None) => Check::fail(
            "proxy network",
            "no network `proxy` (recipes attach to it)",
            "run `docker network create -d overlay --attachable proxy`",
        ),
        Err(err) => Check::fail("proxy network", err.to_string(), "check dockerd"),
    });
    let (key, value) = backupbot_label(host.backupbot_label.as_deref());
    out.push(match e.running_services_labelled(&key, &value).await {
        Ok(s) if !s.is_empty() => {
            Check::pass("backup-bot-two", format!("running: {}", s.join(", ")))
        }
        Ok(_) => Check::fail(
            "backup-bot-two",
            format!(
                "no running service labelled {key}={value}: backup and restore tiers will be errors"
            ),
            BACKUPBOT_HOW_TO,
        ),
        Err(err) => Check::fail("backup-bot-two", err.to_string(), "check dockerd"),
    });
    match e.registry_images().await {
        Ok(images) => {
            let mut registries: Vec<String> = images.iter().map(|i| registry_of(i)).collect();
            registries.sort();
            registries.dedup();
            for r in registries {
                out.push(match registry_reachable(&r).await {
                    Ok(addr) => {
                        Check::pass(&format!("registry {r}"), format!("reachable at {addr}"))
                    }
                    Err(why) => Check::fail(
                        &format!("registry {r}"),
                        why,
                        "fix the network or DNS to it; deploys resolve every image there",
                    ),
                });
            }
        }
        Err(err) => out.push(Check::fail("registries", err.to_string(), "check dockerd")),
    }
    out
}

async fn abra_checks(
    config: &HarnessConfig,
    flag: Option<&str>,
    work: &Path,
    host: &HostEnv,
) -> Vec<Check> {
    let mut out = Vec::new();
    let bin = match abra::resolve_binary(flag, config.abra.as_deref(), host) {
        Ok(b) => b,
        Err(e) => {
            out.push(Check::fail(
                "abra",
                e.to_string(),
                "install abra (nixpkgs `abra`), or set harness.abra / CC_CI_ABRA",
            ));
            return out;
        }
    };
    let scratch = work.join("doctor-abra");
    let abra = Abra::new(
        bin.clone(),
        scratch.clone(),
        Duration::from_secs(60),
        Redactor::new(),
    );
    match abra.version().await {
        Ok(v) => out.push(Check::pass("abra", format!("{} ({v})", bin.display()))),
        Err(e) => out.push(Check::fail(
            "abra",
            format!(
                "{} --version failed: {}",
                bin.display(),
                first_line(&e.to_string())
            ),
            "check that it is Co-op Cloud's abra and runs",
        )),
    }
    for (cmd, flags) in spellings_in_use() {
        let mut args = cmd.clone();
        args.push("--help");
        let shown = cmd.join(" ");
        out.push(match abra.run_info(&args).await {
            Ok(o) => {
                let missing: Vec<&str> = flags
                    .iter()
                    .copied()
                    .filter(|f| !o.output.contains(f))
                    .collect();
                if missing.is_empty() {
                    Check::pass(&format!("abra {shown}"), "present")
                } else {
                    Check::fail(
                        &format!("abra {shown}"),
                        format!("`abra {shown} --help` does not mention {}", missing.join(", ")),
                        "use the abra version cc-ci expects, or update the spellings in crates/harness/src/abra.rs",
                    )
                }
            }
            Err(e) => Check::fail(
                &format!("abra {shown}"),
                format!("`abra {shown} --help` failed: {}", first_line(&e.to_string())),
                "use the abra version cc-ci expects, or update the spellings in crates/harness/src/abra.rs",
            ),
        });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A TCP connection to the registry's host (Docker Hub: registry-1.docker.io:443; a host without
/// a port: 443), within a few seconds.
async fn registry_reachable(registry: &str) -> Result<String, String> {
    let addr = match registry {
        "docker.io" => "registry-1.docker.io:443".to_string(),
        r if r.contains(':') => r.to_string(),
        r => format!("{r}:443"),
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr.clone()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(addr),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("no answer from {addr} within 5 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_what_to_do() {
        assert_eq!(Check::pass("x", "fine").line(), "ok   x: fine");
        assert_eq!(
            Check::fail("x", "broken", "mend it").line(),
            "FAIL x: broken -> mend it"
        );
        // Every spelling cc-ci uses is checked, the deploy flags included.
        let all = spellings_in_use();
        assert!(all.iter().any(|(c, f)| c == &["app", "deploy"]
            && f.contains(&"--no-converge-checks")
            && f.contains(&"--no-domain-checks")));
        assert!(all.iter().any(|(c, _)| c == &["app", "secret", "insert"]));
    }
}
