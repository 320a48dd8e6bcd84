//! The Docker engine, through the `docker` CLI (stack deploy/rm exist only there), and the JSON
//! shapes of `docker inspect` that the stand-in reads.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Label swarm puts on every object of a stack.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A docker CLI call.
pub struct Docker<'a> {
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<&'a Path>,
    stdin: Option<&'a [u8]>,
}

pub fn docker<I, S>(args: I) -> Docker<'static>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Docker {
        args: args.into_iter().map(Into::into).collect(),
        env: Vec::new(),
        dir: None,
        stdin: None,
    }
}

impl<'a> Docker<'a> {
    pub fn env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }
    pub fn dir(mut self, dir: &'a Path) -> Docker<'a> {
        self.dir = Some(dir);
        self
    }
    pub fn stdin(mut self, data: &'a [u8]) -> Docker<'a> {
        self.stdin = Some(data);
        self
    }

    fn shown(&self) -> String {
        format!("docker {}", self.args.join(" "))
    }

    /// Runs the call and returns what it printed, whatever its exit status.
    pub fn output(self) -> Result<Output> {
        let mut cmd = Command::new("docker");
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = self.dir {
            cmd.current_dir(d);
        }
        let mut child = cmd
            .spawn()
            .context("cannot run `docker`: is the Docker CLI installed and on PATH?")?;
        if let (Some(data), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            pipe.write_all(data)
                .with_context(|| format!("cannot write to `{}`", self.shown()))?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("`{}` did not finish", self.shown()))?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs the call; a non-zero exit is an error carrying docker's message.
    pub fn run(self) -> Result<String> {
        let shown = self.shown();
        let out = self.output()?;
        if !out.success {
            bail!("`{shown}` failed: {}", out.stderr.trim());
        }
        Ok(out.stdout)
    }
}

/// Non-empty trimmed lines.
pub fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `docker inspect --type <kind>` of `ids`. Objects that vanished meanwhile are left out.
pub fn inspect<T: DeserializeOwned>(kind: &str, ids: &[String]) -> Result<Vec<T>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["inspect".to_string(), "--type".into(), kind.into()];
    args.extend(ids.iter().cloned());
    let out = docker(args).output()?;
    // With some ids gone docker exits 1 but still prints the others.
    let text = out.stdout.trim();
    if text.is_empty() || text == "[]" {
        if out.success || out.stderr.contains("No such") {
            return Ok(Vec::new());
        }
        bail!(
            "`docker inspect --type {kind}` failed: {}",
            out.stderr.trim()
        );
    }
    serde_json::from_str(text)
        .with_context(|| format!("unexpected output of `docker inspect --type {kind}`"))
}

fn filtered_ids(object: &[&str], stack: &str, extra: &[&str]) -> Result<Vec<String>> {
    let mut args: Vec<String> = object.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--filter".into(),
        format!("label={NAMESPACE_LABEL}={stack}"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(lines(&docker(args).run()?))
}

pub fn stack_service_ids(stack: &str) -> Result<Vec<String>> {
    filtered_ids(&["service", "ls", "-q"], stack, &[])
}

pub fn stack_services(stack: &str) -> Result<Vec<Service>> {
    inspect("service", &stack_service_ids(stack)?)
}

/// Containers of the stack, in any state (they outlive their services for a moment).
pub fn stack_container_ids(stack: &str) -> Result<Vec<String>> {
    filtered_ids(&["ps", "-a", "-q"], stack, &[])
}

pub fn stack_network_names(stack: &str) -> Result<Vec<String>> {
    filtered_ids(&["network", "ls", "--format", "{{.Name}}"], stack, &[])
}

pub fn stack_config_names(stack: &str) -> Result<Vec<String>> {
    filtered_ids(&["config", "ls", "--format", "{{.Name}}"], stack, &[])
}

pub fn stack_volume_names(stack: &str) -> Result<Vec<String>> {
    filtered_ids(&["volume", "ls", "-q"], stack, &[])
}

/// Tasks of the given services, history included.
pub fn service_tasks(service_ids: &[String]) -> Result<Vec<Task>> {
    if service_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![
        "service".to_string(),
        "ps".into(),
        "-q".into(),
        "--no-trunc".into(),
    ];
    args.extend(service_ids.iter().cloned());
    let out = docker(args).output()?;
    if !out.success && !out.stderr.contains("no such service") {
        bail!("`docker service ps` failed: {}", out.stderr.trim());
    }
    inspect("task", &lines(&out.stdout))
}

/// Newest running container of a service (`<stack>_<name>`), if any.
pub fn running_container(service: &str) -> Result<Option<String>> {
    let out = docker([
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
        "--filter",
        "status=running",
    ])
    .run()?;
    Ok(lines(&out).into_iter().next())
}

pub fn volume_mountpoint(name: &str) -> Result<Option<String>> {
    let vols: Vec<Volume> = inspect("volume", &[name.to_string()])?;
    Ok(vols.into_iter().next().map(|v| v.mountpoint))
}

/// Runs `sh -c <script>` in a container; returns (success, combined output).
pub fn exec_sh(container: &str, script: &str) -> Result<(bool, String)> {
    let out = docker(["exec", container, "sh", "-c", script]).output()?;
    Ok((out.success, format!("{}{}", out.stdout, out.stderr)))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: ServiceSpec,
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
}

impl Service {
    pub fn labels(&self) -> HashMap<String, String> {
        self.spec.labels.clone().unwrap_or_default()
    }
    /// Named volumes the service mounts (full names, `<stack>_<volume>`).
    pub fn volume_sources(&self) -> Vec<String> {
        self.spec
            .task_template
            .container_spec
            .mounts
            .iter()
            .flatten()
            .filter(|m| m.kind == "volume" && !m.source.is_empty())
            .map(|m| m.source.clone())
            .collect()
    }
    /// Replicas wanted; `None` for global services (one per node).
    pub fn replicas(&self) -> Option<u64> {
        self.spec
            .mode
            .replicated
            .as_ref()
            .map(|r| r.replicas.unwrap_or(1))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub task_template: TaskTemplate,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mode {
    #[serde(default)]
    pub replicated: Option<Replicated>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Replicated {
    #[serde(default)]
    pub replicas: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskTemplate {
    #[serde(default)]
    pub container_spec: ContainerSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpec {
    #[serde(default)]
    pub mounts: Option<Vec<Mount>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mount {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatus {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(default)]
    pub desired_state: String,
    #[serde(default)]
    pub status: TaskStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub err: Option<String>,
    #[serde(default)]
    pub container_status: Option<TaskContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskContainerStatus {
    #[serde(rename = "ContainerID", default)]
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Container {
    pub id: String,
    #[serde(default)]
    pub state: ContainerState,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub mountpoint: String,
}
