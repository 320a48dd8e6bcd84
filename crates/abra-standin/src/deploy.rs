//! `app deploy` and `app undeploy`: the stack on the swarm, abra's labels, waiting for convergence.
//!
//! What real abra does (shared/reference/coop-cloud.md, "What real abra does") and the stand-in copies:
//! - the app's domain must resolve to this server unless `-D`/`--no-domain-checks`;
//! - redeploying onto a deployed app needs `-f`/`--force` (a `--chaos` deploy is an upgrade, not a
//!   redeploy);
//! - `docker stack deploy --resolve-image always` (the registry is asked for each digest; an image
//!   only on the node gets swarm's warning) and no `--prune`;
//! - the convergence monitor gives up on a task still inside its healthcheck `start_period`, and
//!   returns as soon as the desired tasks run, even while an update is still going; `-c` /
//!   `--no-converge-checks` skips it and returns right after the stack deploy.
//!
//! Choices (where real abra's are unconfirmed):
//! - version: the argument, else the version pinned in the env file's `TYPE=<recipe>:<version>`,
//!   else the latest release tag; a release deploy checks that version out and refuses a checkout
//!   with untracked or modified files. `--chaos` deploys the checkout as it is and takes no version.
//! - labels go on the `app` service only (none when the recipe has no `app`), through a generated
//!   compose file passed as the last `-c` (with the `version:` of the recipe's first compose file,
//!   or none): a release deploy sets `coop-cloud.<stack>.version` to the release; a chaos deploy
//!   leaves it as the deployed compose file declares it, and sets `.chaos-version` to the first 8
//!   hex digits of HEAD with `+U` when the checkout has uncommitted changes; `.chaos` and
//!   `.recipe` always.
//! - after the deploy the env file's first line becomes `TYPE=<recipe>:<version>`; for chaos
//!   `TYPE=<recipe>:<chaos-version>`.
//! - compose interpolation sees the process environment, the env file, the `export X=Y` lines of
//!   `abra.sh` (parsed, not run), `STACK_NAME` and `DOMAIN`.
//! - converge timeout: the deployed app's `coop-cloud.<stack>.timeout` label, else 300 s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::converge::{self, ServiceView, TaskView, Verdict};
use crate::docker::{self, Container, ServiceExt, TaskExt, docker};
use crate::envfile;
use crate::git;
use crate::state::{self, AbraDir, stack_name};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const UNDEPLOY_TIMEOUT: Duration = Duration::from_secs(120);
// Often enough to see a task inside its start_period, as abra's monitor does.
const POLL: Duration = Duration::from_millis(200);

pub struct DeployArgs<'a> {
    pub domain: &'a str,
    pub version: Option<&'a str>,
    pub chaos: bool,
    pub domain_checks: bool,
    pub converge_checks: bool,
    pub force: bool,
}

pub fn deploy(dir: &AbraDir, a: &DeployArgs) -> Result<()> {
    let env_path = dir.env_file(a.domain)?;
    let env_text = state::read(&env_path)?;
    let (recipe, pinned) = envfile::recipe_of(&env_text)
        .with_context(|| format!("{} has no `TYPE=<recipe>` line", env_path.display()))?;
    let checkout = dir.recipe(&recipe)?;
    if !git::is_repo(&checkout) {
        bail!(
            "recipe `{recipe}` is not checked out at {}",
            checkout.display()
        );
    }
    let stack = stack_name(a.domain);
    let app_service = format!("{stack}_app");
    if a.domain_checks {
        check_domain(a.domain)?;
    }
    if !a.chaos && !a.force && !docker::stack_service_ids(&stack)?.is_empty() {
        bail!(
            "app `{}` is already deployed: pass --force/-f to redeploy, or upgrade it",
            a.domain
        );
    }

    // What to deploy, and the version abra records.
    let (version, type_version, chaos_version) = choose_version(a, &checkout, &recipe, pinned)?;

    let compose_files = compose_files(&env_text, &checkout)?;
    let has_app = compose_files
        .iter()
        .map(|f| service_names(f))
        .collect::<Result<Vec<_>>>()?
        .iter()
        .any(|names| names.iter().any(|n| n == "app"));

    let env = interpolation_env(&env_text, &checkout, a.domain, &stack)?;
    let labels_file = if has_app {
        Some(labels_file(
            &stack,
            &recipe,
            a.chaos,
            version.as_deref(),
            chaos_version.as_deref(),
            &compose_files[0],
        )?)
    } else {
        println!("the recipe has no `app` service: no version labels are written");
        None
    };

    let before = update_starts(&stack)?;
    let started = Instant::now();
    let args = stack_deploy_args(&stack, &compose_files, labels_file.as_ref());
    let out = docker(args).env(env).dir(&checkout).output()?;
    print!("{}", out.stdout);
    if !out.success {
        bail!(
            "`docker stack deploy` of {stack} failed: {}",
            out.stderr.trim()
        );
    }
    drop(labels_file);

    let timeout = deployed_label(&app_service, &format!("coop-cloud.{stack}.timeout"))?
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    if a.converge_checks {
        println!(
            "waiting up to {}s for {stack} to converge",
            timeout.as_secs()
        );
        wait_converged(&stack, &before, started, timeout)?;
    } else {
        println!("not waiting for {stack} to converge (--no-converge-checks)");
    }

    state::write(
        &env_path,
        &envfile::with_type_line(&env_text, &format!("{recipe}:{type_version}")),
    )?;
    println!(
        "{} deployed and converged in {:.1}s",
        a.domain,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What to deploy, and the version abra records: `(version, TYPE= version, chaos version)`.
/// Checks out the version unless `--chaos` deploys the checkout as it is.
fn choose_version(
    a: &DeployArgs,
    checkout: &Path,
    recipe: &str,
    pinned: Option<String>,
) -> Result<(Option<String>, String, Option<String>)> {
    Ok(if a.chaos {
        if let Some(v) = a.version {
            bail!("--chaos deploys the current checkout; drop the version argument `{v}`");
        }
        let hash = git::head_short(checkout)?;
        let dirty = !git::dirty_files(checkout)?.is_empty();
        let type_version = if dirty {
            format!("{hash}+U")
        } else {
            hash.clone()
        };
        println!(
            "chaos deploy of the current checkout {hash}{}",
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        (None, type_version.clone(), Some(type_version))
    } else {
        let dirty = git::dirty_files(checkout)?;
        if !dirty.is_empty() {
            bail!(
                "the recipe checkout {} has untracked or modified files ({}): commit or remove them, or deploy with --chaos",
                checkout.display(),
                dirty.join(", ")
            );
        }
        let version = match a.version.map(str::to_string).or(pinned) {
            Some(v) => v,
            None => git::latest_release(checkout)?.with_context(|| {
                format!(
                    "recipe `{recipe}` has no release tags: name a version or deploy with --chaos"
                )
            })?,
        };
        git::checkout(checkout, &version)?;
        println!("deploying {recipe} {version}");
        (Some(version.clone()), version, None)
    })
}
/// The extra compose file with the `coop-cloud.<stack>.*` labels abra puts on the app service.
fn labels_file(
    stack: &str,
    recipe: &str,
    chaos: bool,
    version: Option<&str>,
    chaos_version: Option<&str>,
    first_compose: &Path,
) -> Result<TempFile> {
    let mut labels = BTreeMap::new();
    // After --chaos the version label is whatever the deployed compose file declares.
    if let Some(v) = version {
        labels.insert(format!("coop-cloud.{stack}.version"), v.to_string());
    }
    labels.insert(format!("coop-cloud.{stack}.chaos"), chaos.to_string());
    labels.insert(format!("coop-cloud.{stack}.recipe"), recipe.to_string());
    if let Some(h) = chaos_version {
        labels.insert(format!("coop-cloud.{stack}.chaos-version"), h.to_string());
    }
    let compose_version = compose_version(first_compose)?;
    TempFile::write(&labels_yaml(compose_version.as_deref(), &labels)?)
}

/// `docker stack deploy` of the compose files, the labels file last (it wins).
fn stack_deploy_args(
    stack: &str,
    compose_files: &[PathBuf],
    labels: Option<&TempFile>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "stack".into(),
        "deploy".into(),
        "--resolve-image".into(),
        "always".into(),
    ];
    for f in compose_files.iter().chain(labels.map(|l| &l.path)) {
        args.push("-c".into());
        args.push(f.display().to_string());
    }
    args.push(stack.to_string());
    args
}

/// Compose files named by `COMPOSE_FILE` (colon-separated) in the env file, default `compose.yml`.
fn compose_files(env_text: &str, checkout: &Path) -> Result<Vec<PathBuf>> {
    let spec = envfile::EnvFile::parse(env_text)
        .compose_files()
        .unwrap_or_else(|| vec!["compose.yml".to_string()]);
    let mut files = Vec::new();
    for name in &spec {
        let p = checkout.join(name);
        if !p.is_file() {
            bail!(
                "compose file `{name}` (from COMPOSE_FILE) does not exist in the recipe checkout {}",
                checkout.display()
            );
        }
        files.push(p);
    }
    if files.is_empty() {
        bail!("COMPOSE_FILE names no compose file");
    }
    Ok(files)
}

/// Service names a compose file declares; a file that is not valid YAML is an error naming it.
fn service_names(file: &Path) -> Result<Vec<String>> {
    let text = state::read(file)?;
    let doc: serde_norway::Value = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not valid YAML", file.display()))?;
    Ok(doc
        .get("services")
        .and_then(|s| s.as_mapping())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Variables compose interpolation sees: the env file, `abra.sh` exports, `STACK_NAME`, `DOMAIN`.
fn interpolation_env(
    env_text: &str,
    checkout: &Path,
    domain: &str,
    stack: &str,
) -> Result<Vec<(String, String)>> {
    let mut vars = envfile::vars(env_text);
    let abra_sh = checkout.join("abra.sh");
    if abra_sh.is_file() {
        vars.extend(envfile::abra_sh_exports(&state::read(&abra_sh)?));
    }
    vars.insert("STACK_NAME".into(), stack.into());
    vars.insert("DOMAIN".into(), domain.into());
    Ok(vars.into_iter().collect())
}

/// The `version:` a compose file declares (`"3.7"`, `"3.13"`, ...), if any: the labels file
/// declares the same, so the files merge as the recipe's own do.
fn compose_version(file: &Path) -> Result<Option<String>> {
    let text = state::read(file)?;
    let doc: serde_norway::Value = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not valid YAML", file.display()))?;
    Ok(match doc.get("version") {
        Some(serde_norway::Value::String(v)) => Some(v.clone()),
        Some(serde_norway::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Like abra's domain check: the domain must resolve to an address of this machine.
fn check_domain(domain: &str) -> Result<()> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let addrs: Vec<std::net::SocketAddr> = (domain, 443)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    // An address of this machine is one a socket can be bound to.
    if addrs.iter().any(|a| UdpSocket::bind((a.ip(), 0)).is_ok()) {
        return Ok(());
    }
    bail!(
        "domain `{domain}` does not resolve to this server ({}): point its DNS here, or pass --no-domain-checks/-D",
        if addrs.is_empty() {
            "it does not resolve at all".to_string()
        } else {
            format!(
                "it resolves to {}",
                addrs
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )
}

fn labels_yaml(compose_version: Option<&str>, labels: &BTreeMap<String, String>) -> Result<String> {
    let scalar = |s: &str| -> Result<String> {
        Ok(
            serde_norway::to_string(&serde_norway::Value::String(s.to_string()))
                .context("cannot render the labels file")?
                .trim_end()
                .to_string(),
        )
    };
    let mut y = String::from("# generated by abra-standin: abra's labels on the app service\n");
    if let Some(v) = compose_version {
        y.push_str(&format!("version: {}\n", scalar(v)?));
    }
    y.push_str("services:\n  app:\n    deploy:\n      labels:\n");
    for (k, v) in labels {
        y.push_str(&format!("        {}: {}\n", scalar(k)?, scalar(v)?));
    }
    Ok(y)
}

/// A temporary file removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(text: &str) -> Result<TempFile> {
        let path = std::env::temp_dir().join(format!(
            "abra-standin-labels-{}-{}.yml",
            std::process::id(),
            rand::random::<u32>()
        ));
        state::write(&path, text)?;
        Ok(TempFile { path })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A label of a deployed service, if the service and label exist.
fn deployed_label(service: &str, key: &str) -> Result<Option<String>> {
    let ids = docker::lines(
        &docker([
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("name={service}"),
        ])
        .run()?,
    );
    let services: Vec<docker::Service> = docker::inspect("service", &ids)?;
    Ok(services
        .into_iter()
        .find(|s| s.name() == service)
        .and_then(|s| s.labels().get(key).cloned()))
}

/// When each service's current update status began, to tell this deploy's updates from old ones.
fn update_starts(stack: &str) -> Result<HashMap<String, Option<String>>> {
    Ok(docker::stack_services(stack)?
        .into_iter()
        .map(|s| (s.name(), s.update_started_at()))
        .collect())
}

fn snapshot(stack: &str, before: &HashMap<String, Option<String>>) -> Result<Vec<ServiceView>> {
    let services = docker::stack_services(stack)?;
    let ids: Vec<String> = services.iter().filter_map(|s| s.value.id.clone()).collect();
    let tasks = docker::service_tasks(&ids)?;
    let container_ids: Vec<String> = tasks
        .iter()
        .filter(|t| matches!(t.state().as_str(), "starting" | "running"))
        .filter_map(|t| t.container_id())
        .filter(|c| !c.is_empty())
        .collect();
    let health: HashMap<String, String> =
        docker::inspect::<Container>("container", &container_ids)?
            .into_iter()
            .filter_map(|c| Some((c.value.id.clone()?, c.health_status()?)))
            .collect();
    let nodes = docker::lines(&docker(["node", "ls", "-q"]).run()?).len() as u64;
    Ok(services
        .into_iter()
        .map(|s| {
            let started_at = s.update_started_at();
            let name = s.name();
            let update_is_new =
                started_at.is_some() && before.get(&name).cloned().flatten() != started_at;
            let id = s.value.id.clone().unwrap_or_default();
            ServiceView {
                desired: s.replicas().unwrap_or(nodes),
                update_state: s.update_state(),
                update_message: s.update_message(),
                update_is_new,
                name,
                tasks: tasks
                    .iter()
                    .filter(|t| t.service_id() == id)
                    .map(|t| TaskView {
                        id: t.id(),
                        desired_state: t.desired_state(),
                        state: t.state(),
                        error: t.err(),
                        message: t.message(),
                        health: t.container_id().and_then(|c| health.get(&c).cloned()),
                        timestamp: t.timestamp(),
                    })
                    .collect(),
            }
        })
        .collect())
}

fn wait_converged(
    stack: &str,
    before: &HashMap<String, Option<String>>,
    started: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        let verdict = converge::judge_like_abra(&snapshot(stack, before)?);
        match verdict {
            Verdict::Converged => return Ok(()),
            Verdict::Failed(why) => bail!("deploy of {stack} failed: {why}"),
            Verdict::Waiting(why) => {
                if started.elapsed() >= timeout {
                    bail!(
                        "{stack} did not converge within {}s (timeout label coop-cloud.{stack}.timeout or the default 300s): {why}",
                        timeout.as_secs()
                    );
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

pub fn undeploy(dir: &AbraDir, domain: &str) -> Result<()> {
    dir.env_file(domain)?;
    let stack = stack_name(domain);
    let objects = remaining(&stack)?;
    if objects.is_empty() {
        bail!("app `{domain}` is not deployed");
    }
    let out = docker(["stack", "rm", &stack]).output()?;
    print!("{}", out.stdout);
    // Removing networks can race with containers still stopping; that is retried below.
    if !out.success && !out.stderr.contains("network") {
        bail!("`docker stack rm {stack}` failed: {}", out.stderr.trim());
    }
    let started = Instant::now();
    loop {
        let left = remaining(&stack)?;
        if left.is_empty() {
            println!(
                "{domain} undeployed in {:.1}s (volumes and secrets are kept)",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let only_networks = left.iter().all(|o| o.starts_with("network "));
        if only_networks {
            for o in &left {
                if let Some(n) = o.strip_prefix("network ") {
                    let _ = docker(["network", "rm", n]).output();
                }
            }
        }
        if started.elapsed() >= UNDEPLOY_TIMEOUT {
            bail!(
                "{stack} was not gone {}s after `docker stack rm`; still there: {}",
                UNDEPLOY_TIMEOUT.as_secs(),
                left.join(", ")
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Objects of a stack that `docker stack rm` removes, and its containers.
fn remaining(stack: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    left.extend(
        docker::stack_service_ids(stack)?
            .into_iter()
            .map(|s| format!("service {s}")),
    );
    left.extend(
        docker::stack_container_ids(stack)?
            .into_iter()
            .map(|c| format!("container {}", &c[..c.len().min(12)])),
    );
    left.extend(
        docker::stack_config_names(stack)?
            .into_iter()
            .map(|c| format!("config {c}")),
    );
    left.extend(
        docker::stack_network_names(stack)?
            .into_iter()
            .map(|n| format!("network {n}")),
    );
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_file_targets_app_deploy_labels() {
        let mut l = BTreeMap::new();
        l.insert("coop-cloud.s.version".to_string(), "1.0.0+1.0".to_string());
        l.insert("coop-cloud.s.chaos".to_string(), "false".to_string());
        let y = labels_yaml(Some("3.13"), &l).unwrap();
        let doc: serde_norway::Value = serde_norway::from_str(&y).unwrap();
        let labels = &doc["services"]["app"]["deploy"]["labels"];
        assert_eq!(labels["coop-cloud.s.version"].as_str(), Some("1.0.0+1.0"));
        assert_eq!(labels["coop-cloud.s.chaos"].as_str(), Some("false"));
        assert_eq!(doc["version"].as_str(), Some("3.13"));
        let none: serde_norway::Value =
            serde_norway::from_str(&labels_yaml(None, &l).unwrap()).unwrap();
        assert!(none.get("version").is_none());
    }

    #[test]
    fn compose_file_list_is_checked() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("compose.yml"), "services: {}\n").unwrap();
        std::fs::write(d.path().join("compose.x.yml"), "services: {}\n").unwrap();
        let f = compose_files("TYPE=r\n", d.path()).unwrap();
        assert_eq!(f, vec![d.path().join("compose.yml")]);
        let f = compose_files("COMPOSE_FILE=\"compose.yml:compose.x.yml\"\n", d.path()).unwrap();
        assert_eq!(f.len(), 2);
        let e = compose_files("COMPOSE_FILE=compose.yml:compose.nope.yml\n", d.path()).unwrap_err();
        assert!(e.to_string().contains("compose.nope.yml"), "{e}");
    }

    #[test]
    fn malformed_compose_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("compose.yml");
        std::fs::write(&p, "services:\n  app:\n    ports: [ \"1:2\"\n").unwrap();
        let e = service_names(&p).unwrap_err();
        assert!(
            format!("{e:#}").contains("compose.yml is not valid YAML"),
            "{e:#}"
        );
        std::fs::write(&p, "services:\n  app: {}\n  db: {}\n").unwrap();
        assert_eq!(service_names(&p).unwrap(), vec!["app", "db"]);
    }
}
