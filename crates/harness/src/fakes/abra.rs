//! abra in memory, over a [`FakeSwarm`]: apps and their env files under a real `ABRA_DIR`
//! directory, deploys of the recipe checked out there (its compose files read as abra reads
//! them), backups of the stack's volumes as backup-bot-two selects them, restores; failures
//! with abra's exit code 1 and a `FATA` line, as the real adapter sees them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_norway::Value;

use super::swarm::{FakeSwarm, ServiceSpec};
use crate::abra::{AbraError, AbraOutput, spelling};
use crate::abra_cli::{AbraCli, AbraFuture};
use crate::appconfig::{interpolate, parse_env};
use crate::names::stack_name;
use crate::recipe::{self, Checkout};
use cc_ci_engine_api::labels::backupbot::backupbot_label;

/// What the next call of a command does instead of its work.
#[derive(Debug, Clone)]
pub enum Script {
    /// abra fails with this exit code and output.
    Fail { code: i32, output: String },
    /// abra says it succeeded and does nothing.
    NoOp,
    /// The Docker engine goes away while abra runs; abra fails as it does then.
    EngineDies,
}

/// One backup-bot-two snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    /// `<volume>/<path>` → content.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct AbraState {
    pub servers: BTreeSet<String>,
    /// domain → (recipe, server).
    pub apps: BTreeMap<String, (String, String)>,
    /// (domain, secret name, version) inserted; values are not kept.
    pub secrets: BTreeSet<(String, String, String)>,
    /// domain → snapshots, oldest first.
    pub snapshots: BTreeMap<String, Vec<Snapshot>>,
    /// Files (`<volume>/<path>`) backup-bot-two leaves out of a snapshot (it cannot read them).
    pub leaves_out: BTreeSet<String>,
    /// Command (`deploy`, `backup create`, `restore`, ...) → what its next calls do.
    pub scripts: BTreeMap<String, VecDeque<Script>>,
    /// Every call made, as abra's arguments.
    pub calls: Vec<String>,
}

pub struct FakeAbra {
    swarm: Arc<FakeSwarm>,
    abra_dir: PathBuf,
    state: Mutex<AbraState>,
}

fn fatal(args: &str, line: String) -> AbraError {
    AbraError::Failed {
        args: args.into(),
        code: 1,
        output: format!("FATA {line}\n"),
    }
}

fn ok(args: &str, output: String) -> AbraOutput {
    AbraOutput {
        args: args.into(),
        output,
        duration: Duration::from_millis(1),
    }
}

impl FakeAbra {
    pub fn new(swarm: Arc<FakeSwarm>, abra_dir: &Path) -> Self {
        Self {
            swarm,
            abra_dir: abra_dir.to_path_buf(),
            state: Mutex::new(AbraState::default()),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, AbraState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next call of `command` does `script`.
    pub fn script(&self, command: &str, script: Script) {
        self.state()
            .scripts
            .entry(command.into())
            .or_default()
            .push_back(script);
    }

    /// Records the call and plays its script, if any: `Some` is the call's whole result.
    fn begin(&self, command: &str, args: &str) -> Option<Result<AbraOutput, AbraError>> {
        let script = {
            let mut s = self.state();
            s.calls.push(args.to_string());
            s.scripts.get_mut(command).and_then(VecDeque::pop_front)
        };
        match script? {
            Script::Fail { code, output } => Some(Err(AbraError::Failed {
                args: args.into(),
                code,
                output,
            })),
            Script::NoOp => Some(Ok(ok(args, String::new()))),
            Script::EngineDies => {
                self.swarm.state().down = Some(super::Outage::Unreachable);
                Some(Err(self.no_engine(args)))
            }
        }
    }

    fn no_engine(&self, args: &str) -> AbraError {
        fatal(
            args,
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?".into(),
        )
    }

    /// abra talks to the same engine: while it is away, every command that needs it fails.
    fn engine_up(&self, args: &str) -> Result<(), AbraError> {
        match self.swarm.state().down {
            Some(_) => Err(self.no_engine(args)),
            None => Ok(()),
        }
    }

    fn app(&self, args: &str, domain: &str) -> Result<(String, String), AbraError> {
        self.state()
            .apps
            .get(domain)
            .cloned()
            .ok_or_else(|| fatal(args, format!("cannot find app with name {domain}")))
    }

    fn env_path(&self, server: &str, domain: &str) -> PathBuf {
        self.abra_dir
            .join("servers")
            .join(server)
            .join(format!("{domain}.env"))
    }

    fn checkout(&self, recipe: &str) -> Checkout {
        Checkout {
            dir: self.abra_dir.join("recipes").join(recipe),
            source: recipe.into(),
        }
    }

    async fn app_new_inner(
        &self,
        args: &str,
        recipe: &str,
        server: &str,
        domain: &str,
    ) -> Result<AbraOutput, AbraError> {
        if !self.state().servers.contains(server) {
            return Err(fatal(args, format!("server {server} does not exist")));
        }
        if self.state().apps.contains_key(domain) {
            return Err(fatal(args, format!("{domain} already exists")));
        }
        let checkout = self.checkout(recipe);
        if !checkout.dir.is_dir() {
            return Err(fatal(args, format!("unable to find recipe {recipe}")));
        }
        let io = |e: &dyn std::fmt::Display| fatal(args, e.to_string());
        // Like abra: the env file of the latest release, which is left checked out.
        let tags: Vec<String> = checkout
            .tags()
            .await
            .map_err(|e| io(&e))?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let latest = recipe::newest_release(&tags).map(str::to_string);
        if let Some(v) = &latest {
            checkout.checkout(v).await.map_err(|e| io(&e))?;
        }
        let sample = std::fs::read_to_string(checkout.dir.join(".env.sample"))
            .map_err(|e| fatal(args, format!("{recipe}: .env.sample: {e}")))?;
        let type_value = match &latest {
            Some(v) => format!("{recipe}:{v}"),
            None => recipe.to_string(),
        };
        let env = with_domain_and_type(&sample, domain, &type_value);
        let path = self.env_path(server, domain);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.abra_dir))
            .and_then(|()| std::fs::write(&path, env))
            .map_err(|e| io(&e))?;
        self.state()
            .apps
            .insert(domain.into(), (recipe.into(), server.into()));
        Ok(ok(args, format!("{domain} created from {type_value}\n")))
    }

    async fn deploy_inner(
        &self,
        args: &str,
        domain: &str,
        version: Option<&str>,
        chaos: bool,
    ) -> Result<AbraOutput, AbraError> {
        let (recipe, server) = self.app(args, domain)?;
        self.engine_up(args)?;
        let stack = stack_name(domain);
        let checkout = self.checkout(&recipe);
        let io = |e: &dyn std::fmt::Display| fatal(args, e.to_string());
        let chaos_version = if chaos {
            if let Some(v) = version {
                return Err(fatal(args, format!("cannot use {v} and --chaos together")));
            }
            let head = checkout.resolve("HEAD").await.map_err(|e| io(&e))?;
            Some(head.get(..8).unwrap_or(&head).to_string())
        } else {
            let deployed = self.swarm.state().services.iter().any(|s| s.stack == stack);
            if deployed {
                return Err(fatal(
                    args,
                    format!("{domain} is already deployed: pass --force to redeploy"),
                ));
            }
            let Some(v) = version else {
                return Err(fatal(args, "no version given and none pinned".into()));
            };
            checkout.checkout(v).await.map_err(|e| io(&e))?;
            None
        };
        let env_path = self.env_path(&server, domain);
        let env = std::fs::read_to_string(&env_path).map_err(|e| io(&e))?;
        let compose =
            read_compose(&checkout.dir, &env, &stack, domain).map_err(|e| fatal(args, e))?;
        // `docker stack deploy` refuses services whose external secrets do not exist.
        let inserted: BTreeSet<String> = self
            .state()
            .secrets
            .iter()
            .filter(|(d, _, _)| d == domain)
            .map(|(_, n, v)| format!("{stack}_{n}_{v}"))
            .collect();
        if let Some(missing) = compose.secrets.iter().find(|s| !inserted.contains(*s)) {
            return Err(fatal(
                args,
                format!("failed to create services of {stack}: secret not found: {missing}"),
            ));
        }
        let mut services = compose.services;
        let app = services
            .get_mut("app")
            .ok_or_else(|| fatal(args, "the recipe has no service `app`".into()))?;
        let label = |k: &str| format!("coop-cloud.{stack}.{k}");
        app.labels.insert(label("chaos"), chaos.to_string());
        app.labels.insert(label("recipe"), recipe.clone());
        if let Some(cv) = &chaos_version {
            app.labels.insert(label("chaos-version"), cv.clone());
        }
        self.swarm.deploy_stack(&stack, &services);
        let recorded = chaos_version
            .or(version.map(str::to_string))
            .unwrap_or_default();
        let env = with_domain_and_type(&env, "", &format!("{recipe}:{recorded}"));
        std::fs::write(&env_path, env).map_err(|e| io(&e))?;
        Ok(ok(
            args,
            format!("deployed {domain} ({recipe} {recorded})\n"),
        ))
    }

    fn backup_inner(&self, args: &str, domain: &str) -> Result<AbraOutput, AbraError> {
        self.app(args, domain)?;
        self.engine_up(args)?;
        self.require_backupbot(args)?;
        let stack = stack_name(domain);
        let plan = backup_plan(&self.swarm, &stack).map_err(|e| fatal(args, e))?;
        let sw = self.swarm.state();
        let mut files = BTreeMap::new();
        for (vol, paths) in &plan {
            let full = format!("{stack}_{vol}");
            for (p, content) in sw.volumes.get(&full).into_iter().flatten() {
                let selected = match paths {
                    None => true,
                    Some(ps) => ps.iter().any(|x| p == x || p.starts_with(&format!("{x}/"))),
                };
                let key = format!("{vol}/{p}");
                if selected && !self.state().leaves_out.contains(&key) {
                    files.insert(key, content.clone());
                }
            }
        }
        drop(sw);
        let mut st = self.state();
        let list = st.snapshots.entry(domain.into()).or_default();
        let id = format!("{:08x}", list.len() + 1);
        let n = files.len();
        list.push(Snapshot {
            id: id.clone(),
            files,
        });
        Ok(ok(
            args,
            format!("snapshot {id} created: {n} files\n{id}\n"),
        ))
    }

    fn require_backupbot(&self, args: &str) -> Result<(), AbraError> {
        let (key, value) = backupbot_label(None);
        let sw = &self.swarm;
        let found = sw
            .state()
            .others
            .iter()
            .any(|(_, l, running)| *running && l.get(&key) == Some(&value));
        if found {
            Ok(())
        } else {
            Err(fatal(
                args,
                format!(
                    "no backup-bot-two service is running on this server (none labelled {key}={value})"
                ),
            ))
        }
    }

    fn restore_inner(&self, args: &str, domain: &str) -> Result<AbraOutput, AbraError> {
        self.app(args, domain)?;
        self.engine_up(args)?;
        self.require_backupbot(args)?;
        let Some(Snapshot { id, files }) = self
            .state()
            .snapshots
            .get(domain)
            .and_then(|l| l.last().cloned())
        else {
            return Err(fatal(args, format!("{domain} has no snapshots")));
        };
        let stack = stack_name(domain);
        let mut sw = self.swarm.state();
        for (key, content) in &files {
            let Some((vol, p)) = key.split_once('/') else {
                continue;
            };
            sw.volumes
                .entry(format!("{stack}_{vol}"))
                .or_default()
                .insert(p.into(), content.clone());
        }
        Ok(ok(
            args,
            format!("snapshot {id} restored: {} files\n", files.len()),
        ))
    }
}

/// The env file with `DOMAIN=` set (unless `domain` is empty) and `TYPE=` first.
fn with_domain_and_type(text: &str, domain: &str, type_value: &str) -> String {
    let mut out = vec![format!("TYPE={type_value}")];
    for line in text.lines() {
        if line.starts_with("TYPE=") {
            continue;
        }
        if !domain.is_empty() && line.starts_with("DOMAIN=") {
            out.push(format!("DOMAIN={domain}"));
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\n") + "\n"
}

/// What `docker stack deploy` makes of the checked-out recipe.
#[derive(Default)]
struct Compose {
    services: BTreeMap<String, ServiceSpec>,
    /// Names of the external swarm secrets the services use (they must exist).
    secrets: BTreeSet<String>,
}

/// The services of the checked-out recipe as `docker stack deploy` would create them.
fn read_compose(dir: &Path, env_text: &str, stack: &str, domain: &str) -> Result<Compose, String> {
    let env = parse_env(env_text);
    let mut vars = env.vars();
    if let Ok(sh) = std::fs::read_to_string(dir.join("abra.sh")) {
        vars.extend(parse_env(&sh.replace("export ", "")).vars());
    }
    vars.insert("STACK_NAME".into(), stack.into());
    vars.insert("DOMAIN".into(), domain.into());
    let mut out = Compose::default();
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    for file in recipe::compose_files(&env) {
        let text = std::fs::read_to_string(dir.join(&file)).map_err(|e| format!("{file}: {e}"))?;
        let doc: Value = serde_norway::from_str(&interpolate(&text, &vars))
            .map_err(|e| format!("{file}: {e}"))?;
        for (key, secret) in doc
            .get("secrets")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            if let (Some(key), Some(name)) =
                (key.as_str(), secret.get("name").and_then(Value::as_str))
            {
                declared.insert(key.into(), name.into());
            }
        }
        let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
            continue;
        };
        for (name, svc) in services {
            let Some(name) = name.as_str() else { continue };
            let spec = out.services.entry(name.into()).or_default();
            merge_service(spec, svc);
            for r in svc
                .get("secrets")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let source = r
                    .as_str()
                    .or_else(|| r.get("source").and_then(Value::as_str));
                used.extend(source.map(String::from));
            }
        }
    }
    out.secrets = used
        .iter()
        .filter_map(|k| declared.get(k).cloned())
        .collect();
    Ok(out)
}

/// A later compose file overrides an earlier one, key by key.
fn merge_service(spec: &mut ServiceSpec, svc: &Value) {
    if let Some(i) = svc.get("image").and_then(Value::as_str) {
        spec.image = i.into();
    }
    if let Some(h) = svc.get("healthcheck") {
        let disabled = h.get("disable").and_then(Value::as_bool) == Some(true)
            || h.get("test")
                .and_then(Value::as_sequence)
                .and_then(|t| t.first())
                .and_then(Value::as_str)
                == Some("NONE");
        spec.healthcheck = !disabled;
    }
    let deploy = svc.get("deploy");
    spec.replicas = match deploy.and_then(|d| d.get("mode")).and_then(Value::as_str) {
        Some("global") => None,
        _ => Some(
            deploy
                .and_then(|d| d.get("replicas"))
                .and_then(Value::as_u64)
                .unwrap_or(1),
        ),
    };
    match deploy.and_then(|d| d.get("labels")) {
        Some(Value::Sequence(l)) => {
            for item in l.iter().filter_map(Value::as_str) {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                spec.labels.insert(k.into(), v.into());
            }
        }
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                    spec.labels.insert(k.into(), v.into());
                }
            }
        }
        _ => {}
    }
    for v in svc
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let Some((source, target)) = v.as_str().and_then(|s| s.split_once(':')) else {
            continue;
        };
        // Only named volumes (a bind mount starts with `/` or `.`).
        if !source.starts_with('/') && !source.starts_with('.') {
            let target = target.split(':').next().unwrap_or(target);
            spec.volumes.push((source.into(), target.into()));
        }
    }
}

/// What backup-bot-two backs up for `stack`: volume name → `None` (whole) or paths. Errors as
/// backup-bot-two does: backups not enabled, a label naming a volume the stack does not have.
fn backup_plan(
    swarm: &FakeSwarm,
    stack: &str,
) -> Result<BTreeMap<String, Option<Vec<String>>>, String> {
    let st = swarm.state();
    let services: Vec<&ServiceSpec> = st
        .services
        .iter()
        .filter(|s| s.stack == stack)
        .map(|s| &s.spec)
        .collect();
    let labels: BTreeMap<&String, &String> =
        services.iter().flat_map(|s| s.labels.iter()).collect();
    if labels
        .get(&"backupbot.backup".to_string())
        .map(|v| v.as_str())
        != Some("true")
    {
        return Err(format!(
            "backups are not enabled for {stack}: no service has the label backupbot.backup=true"
        ));
    }
    let volumes: BTreeSet<&String> = services
        .iter()
        .flat_map(|s| s.volumes.iter().map(|(v, _)| v))
        .collect();
    let mut plan: BTreeMap<String, Option<Vec<String>>> =
        volumes.iter().map(|v| (v.to_string(), None)).collect();
    for (k, v) in &labels {
        let Some(rest) = k.strip_prefix("backupbot.backup.volumes.") else {
            continue;
        };
        let (vol, is_path) = match rest.strip_suffix(".path") {
            Some(vol) => (vol, true),
            None => (rest, false),
        };
        if !volumes.iter().any(|x| x.as_str() == vol) {
            return Err(format!(
                "label {k} names volume {vol}, which {stack} does not have"
            ));
        }
        if is_path {
            let paths = v
                .split(',')
                .map(|p| p.trim().trim_matches('/').to_string())
                .filter(|p| !p.is_empty())
                .collect();
            plan.insert(vol.into(), Some(paths));
        } else if v.as_str() == "false" {
            plan.remove(vol);
        }
    }
    Ok(plan)
}

impl AbraCli for FakeAbra {
    fn abra_dir(&self) -> &Path {
        &self.abra_dir
    }
    fn log_error(&self) -> Option<String> {
        None
    }
    fn version(&self) -> AbraFuture<'_, String> {
        Box::pin(async move {
            match self.begin("version", "--version") {
                Some(r) => r.map(|o| o.output),
                None => Ok("abra version 0.11.0-beta (fake)".into()),
            }
        })
    }
    fn server_add_local(&self) -> AbraFuture<'_, AbraOutput> {
        Box::pin(async move {
            let args = "server add --local";
            if let Some(r) = self.begin("server add", args) {
                return r;
            }
            self.engine_up(args)?;
            self.state().servers.insert("default".into());
            let _ = std::fs::create_dir_all(self.abra_dir.join("servers/default"));
            Ok(ok(args, "server default added\n".into()))
        })
    }
    fn app_new<'a>(
        &'a self,
        recipe: &'a str,
        server: &'a str,
        domain: &'a str,
    ) -> AbraFuture<'a, AbraOutput> {
        Box::pin(async move {
            let args = format!("app new {recipe} --server {server} --domain {domain}");
            match self.begin("app new", &args) {
                Some(r) => r,
                None => self.app_new_inner(&args, recipe, server, domain).await,
            }
        })
    }
    fn secret_insert<'a>(
        &'a self,
        domain: &'a str,
        name: &'a str,
        version: &'a str,
        _value: &'a str,
    ) -> AbraFuture<'a, AbraOutput> {
        Box::pin(async move {
            // The value never shows, as in the real adapter's redacted arguments.
            let args = format!("app secret insert {domain} {name} {version} [REDACTED]");
            if let Some(r) = self.begin("app secret insert", &args) {
                return r;
            }
            self.app(&args, domain)?;
            self.engine_up(&args)?;
            let key = (domain.to_string(), name.to_string(), version.to_string());
            if !self.state().secrets.insert(key) {
                return Err(fatal(
                    &args,
                    format!("secret {name} {version} already exists"),
                ));
            }
            Ok(ok(&args, String::new()))
        })
    }
    fn deploy<'a>(
        &'a self,
        domain: &'a str,
        version: Option<&'a str>,
        chaos: bool,
    ) -> AbraFuture<'a, AbraOutput> {
        Box::pin(async move {
            let mut args = format!(
                "app deploy {domain} {} {}",
                spelling::NO_DOMAIN_CHECKS,
                spelling::NO_CONVERGE_CHECKS
            );
            if let Some(v) = version {
                args.push_str(&format!(" {v}"));
            }
            if chaos {
                args.push_str(" --chaos");
            }
            match self.begin("deploy", &args) {
                Some(r) => r,
                None => self.deploy_inner(&args, domain, version, chaos).await,
            }
        })
    }
    fn undeploy<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput> {
        Box::pin(async move {
            let args = format!("app undeploy {domain}");
            if let Some(r) = self.begin("undeploy", &args) {
                return r;
            }
            self.app(&args, domain)?;
            self.engine_up(&args)?;
            let stack = stack_name(domain);
            // Stops the stack and keeps the volumes.
            self.swarm.state().services.retain(|s| s.stack != stack);
            Ok(ok(&args, format!("{domain} undeployed\n")))
        })
    }
    fn backup_create<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput> {
        Box::pin(async move {
            let args = format!("{} {domain}", spelling::BACKUP_CREATE.join(" "));
            match self.begin("backup create", &args) {
                Some(r) => r,
                None => self.backup_inner(&args, domain),
            }
        })
    }
    fn backup_list<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, Vec<String>> {
        Box::pin(async move {
            let args = format!("{} {domain}", spelling::BACKUP_LIST.join(" "));
            if let Some(r) = self.begin("backup list", &args) {
                return r.map(|o| lines(&o.output));
            }
            self.app(&args, domain)?;
            Ok(self
                .state()
                .snapshots
                .get(domain)
                .map(|l| l.iter().map(|s| s.id.clone()).collect())
                .unwrap_or_default())
        })
    }
    fn backup_files<'a>(
        &'a self,
        domain: &'a str,
        snapshot: &'a str,
    ) -> AbraFuture<'a, Vec<String>> {
        Box::pin(async move {
            let args = format!(
                "{} {domain} {} {snapshot}",
                spelling::BACKUP_LS.join(" "),
                spelling::BACKUP_SNAPSHOT_FLAG
            );
            if let Some(r) = self.begin("backup ls", &args) {
                return r.map(|o| lines(&o.output));
            }
            self.app(&args, domain)?;
            let st = self.state();
            let found = st
                .snapshots
                .get(domain)
                .and_then(|l| l.iter().find(|s| s.id == snapshot));
            match found {
                Some(s) => Ok(s.files.keys().cloned().collect()),
                None => Err(fatal(&args, format!("{domain} has no snapshot {snapshot}"))),
            }
        })
    }
    fn restore<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput> {
        Box::pin(async move {
            let args = format!("{} {domain}", spelling::RESTORE.join(" "));
            match self.begin("restore", &args) {
                Some(r) => r,
                None => self.restore_inner(&args, domain),
            }
        })
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}
