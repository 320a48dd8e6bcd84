//! The Docker engine, through the `docker` CLI (stack deploy/rm exist only there). What
//! `docker inspect` prints is the Engine API's objects: they are decoded into the same models,
//! as leniently, as the harness decodes them (`cc_ci_engine_api`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use cc_ci_engine_api::Decoded;
use cc_ci_engine_api::labels::{NAMESPACE_LABEL, SERVICE_NAME_LABEL};
use serde::de::DeserializeOwned;

/// A service as `docker inspect --type service` prints it.
pub type Service = Decoded<cc_ci_engine_api::Service>;
/// A task as `docker inspect --type task` prints it.
pub type Task = Decoded<cc_ci_engine_api::Task>;
/// A container as `docker inspect --type container` prints it (the model: `inspect` decodes it).
pub use cc_ci_engine_api::ContainerInspectResponse as Container;

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
pub fn inspect<T: DeserializeOwned>(kind: &str, ids: &[String]) -> Result<Vec<Decoded<T>>> {
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
    cc_ci_engine_api::decode_list(text.as_bytes())
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
        &format!("label={SERVICE_NAME_LABEL}={service}"),
        "--filter",
        "status=running",
    ])
    .run()?;
    Ok(lines(&out).into_iter().next())
}

pub fn volume_mountpoint(name: &str) -> Result<Option<String>> {
    let vols: Vec<Decoded<cc_ci_engine_api::Volume>> = inspect("volume", &[name.to_string()])?;
    Ok(vols.into_iter().next().map(|v| v.value.mountpoint))
}

/// Runs `sh -c <script>` in a container; returns (success, combined output).
pub fn exec_sh(container: &str, script: &str) -> Result<(bool, String)> {
    let out = docker(["exec", container, "sh", "-c", script]).output()?;
    Ok((out.success, format!("{}{}", out.stdout, out.stderr)))
}

/// What the stand-in reads of a service.
pub trait ServiceExt {
    fn name(&self) -> String;
    fn labels(&self) -> HashMap<String, String>;
    /// Named volumes the service mounts (full names, `<stack>_<volume>`).
    fn volume_sources(&self) -> Vec<String>;
    /// Replicas wanted; `None` for global services (one per node).
    fn replicas(&self) -> Option<u64>;
    /// When its current update status began (RFC 3339), if it has one.
    fn update_started_at(&self) -> Option<String>;
    fn update_message(&self) -> Option<String>;
}

impl ServiceExt for Service {
    fn name(&self) -> String {
        self.value
            .spec
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_default()
    }
    fn labels(&self) -> HashMap<String, String> {
        self.value
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default()
    }
    fn volume_sources(&self) -> Vec<String> {
        self.mounts()
            .iter()
            .enumerate()
            .filter(|(i, _)| self.mount_type(*i).as_deref() == Some("volume"))
            .filter_map(|(_, m)| m.source.clone().filter(|s| !s.is_empty()))
            .collect()
    }
    fn replicas(&self) -> Option<u64> {
        let replicated = self
            .value
            .spec
            .as_ref()?
            .mode
            .as_ref()?
            .replicated
            .as_ref()?;
        Some(
            replicated
                .replicas
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(1),
        )
    }
    fn update_started_at(&self) -> Option<String> {
        let u = self.value.update_status.as_ref()?;
        u.started_at.as_ref().map(cc_ci_engine_api::timestamp_text)
    }
    fn update_message(&self) -> Option<String> {
        self.value.update_status.as_ref()?.message.clone()
    }
}

/// What the stand-in reads of a task.
pub trait TaskExt {
    fn id(&self) -> String;
    fn service_id(&self) -> String;
    fn container_id(&self) -> Option<String>;
    fn err(&self) -> Option<String>;
    fn message(&self) -> String;
    /// When its status last changed (RFC 3339), empty when unknown.
    fn timestamp(&self) -> String;
}

impl TaskExt for Task {
    fn id(&self) -> String {
        self.value.id.clone().unwrap_or_default()
    }
    fn service_id(&self) -> String {
        self.value.service_id.clone().unwrap_or_default()
    }
    fn container_id(&self) -> Option<String> {
        let status = self.value.status.as_ref()?;
        status.container_status.as_ref()?.container_id.clone()
    }
    fn err(&self) -> Option<String> {
        self.value.status.as_ref()?.err.clone()
    }
    fn message(&self) -> String {
        let status = self.value.status.as_ref();
        status.and_then(|s| s.message.clone()).unwrap_or_default()
    }
    fn timestamp(&self) -> String {
        let status = self.value.status.as_ref();
        status
            .and_then(|s| s.timestamp.as_ref())
            .map(cc_ci_engine_api::timestamp_text)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `docker inspect` prints the Engine API's objects; these are this machine's engine's
    // (crates/engine-api/tests/fixtures): a service with a volume, healthcheck and update status.
    const SERVICES: &[u8] = include_bytes!("../../engine-api/tests/fixtures/services.json");
    const TASKS: &[u8] = include_bytes!("../../engine-api/tests/fixtures/tasks_history.json");

    #[test]
    fn reads_services_and_tasks_as_inspect_prints_them() {
        let s: Vec<Service> = cc_ci_engine_api::decode_list(SERVICES).unwrap();
        assert_eq!(s[0].name(), "ccmodelsfx_app");
        assert_eq!(s[0].volume_sources(), ["ccmodelsfx_data"]);
        assert_eq!(s[0].replicas(), Some(1));
        assert_eq!(s[0].labels()["backupbot.backup"], "true");
        let t: Vec<Task> = cc_ci_engine_api::decode_list(TASKS).unwrap();
        let failed = t.iter().find(|t| t.state() == "failed").unwrap();
        assert_eq!(failed.desired_state(), "shutdown");
        assert_eq!(failed.err().as_deref(), Some("task: non-zero exit (255)"));
        assert!(failed.timestamp().ends_with('Z'));
        assert!(
            t.iter()
                .any(|t| t.state() == "running" && t.container_id().is_some())
        );
    }

    /// A task state a newer engine added: the stand-in sees it as spelled, not a failed inspect.
    #[test]
    fn an_unknown_task_state_is_read_as_spelled() {
        let mut v: serde_json::Value = serde_json::from_slice(TASKS).unwrap();
        v[0]["Status"]["State"] = "hibernating".into();
        let t: Vec<Task> = cc_ci_engine_api::decode_list(v.to_string().as_bytes()).unwrap();
        assert_eq!(t[0].state(), "hibernating");
    }
}
