//! The Docker Engine API over its unix socket: the only place the harness talks to Docker.
//!
//! Talking HTTP to the socket (instead of running the `docker` CLI) keeps a poll of a whole
//! stack to three cheap requests, which is what lets waits notice a state change quickly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::checks::{Health, MountInfo, RestartPolicy, ServiceState, StackSnapshot, TaskState};

mod images;
pub use images::{PullError, registry_of};

/// Label swarm puts on every object of a stack.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

mod extra;
// The digest a registry serves (inputs of a result, crates/harness/src/inputs.rs).
mod distribution;
pub use extra::PortHolder;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot reach the Docker engine at {socket}: {reason} (is dockerd running? run scripts/setup-swarm or set DOCKER_HOST=unix:///path)"
    )]
    Unreachable { socket: String, reason: String },
    #[error(
        "the Docker engine at {socket} did not answer {what} within {timeout:?}: it hangs (check dockerd; harness.engine_timeout_secs sets this deadline)"
    )]
    Hung {
        socket: String,
        what: String,
        timeout: Duration,
    },
    #[error("Docker engine answered {status} to {method} {path}: {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from the Docker engine to {path}: {reason}")]
    Decode { path: String, reason: String },
    /// The engine answers but cannot run stacks (not in swarm mode, or not a manager).
    #[error("{0}")]
    NotSwarm(String),
    #[error(
        "DOCKER_HOST={0} is not supported: cc-ci talks to a local engine over a unix socket (unix:///...)"
    )]
    UnsupportedHost(String),
}

impl EngineError {
    /// True when the engine itself is gone (an infrastructure error, not a recipe failure).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            EngineError::Unreachable { .. } | EngineError::Hung { .. }
        )
    }

    /// True when the engine accepted the request but did not answer in time.
    pub fn is_hung(&self) -> bool {
        matches!(self, EngineError::Hung { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    /// Deadline of one request (connect, send, whole answer): a hung engine must not hang a run.
    timeout: Duration,
}

/// Default deadline of one Engine API request (`harness.engine_timeout_secs`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the engine for a listing (services, tasks, containers, ...).
pub const ANSWER_CAP: usize = 64 << 20;
/// Largest output read back from a command run in a container, or from a service's logs: what
/// a recipe's container prints is the recipe's to choose.
pub const OUTPUT_CAP: usize = 4 << 20;

/// Everything a stack owns in the swarm, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackObjects {
    pub services: Vec<(String, String)>,
    pub networks: Vec<(String, String)>,
    pub secrets: Vec<(String, String)>,
    pub configs: Vec<(String, String)>,
    pub volumes: Vec<String>,
    /// Containers of the stack still present (they keep networks and volumes busy).
    pub containers: Vec<String>,
}

impl StackObjects {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.networks.is_empty()
            && self.secrets.is_empty()
            && self.configs.is_empty()
            && self.volumes.is_empty()
            && self.containers.is_empty()
    }

    /// Human-readable names, `kind:name`, for reports.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, list) in [
            ("service", &self.services),
            ("network", &self.networks),
            ("secret", &self.secrets),
            ("config", &self.configs),
        ] {
            out.extend(list.iter().map(|(_, name)| format!("{kind}:{name}")));
        }
        out.extend(self.volumes.iter().map(|v| format!("volume:{v}")));
        out.extend(self.containers.iter().map(|c| format!("container:{c}")));
        out
    }
}

/// Result of running a command in a container.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Engine {
    /// The engine named by `docker_host` (`DOCKER_HOST`; unix sockets only), else
    /// `/var/run/docker.sock`.
    pub fn connect(docker_host: Option<&str>) -> Result<Self, EngineError> {
        match docker_host {
            Some(h) if !h.is_empty() => match h.strip_prefix("unix://") {
                Some(path) => Ok(Self {
                    socket: path.into(),
                    timeout: DEFAULT_TIMEOUT,
                }),
                None => Err(EngineError::UnsupportedHost(h.to_string())),
            },
            _ => Ok(Self {
                socket: "/var/run/docker.sock".into(),
                timeout: DEFAULT_TIMEOUT,
            }),
        }
    }

    /// Sets the deadline of every request (`harness.engine_timeout_secs`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        self.request_within(method, path, body, self.timeout, ANSWER_CAP)
            .await
    }

    /// One request under a deadline and a cap on the answer's size. A deadline passed is the
    /// engine being unreachable (exit 3); an answer over the cap is an error naming the cap.
    async fn request_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
        cap: usize,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        match tokio::time::timeout(timeout, self.request_once(method.clone(), path, body, cap))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(EngineError::Hung {
                socket: self.socket.display().to_string(),
                what: format!("{method} {}", path.split('?').next().unwrap_or(path)),
                timeout,
            }),
        }
    }

    async fn request_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        cap: usize,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        let unreachable = |reason: String| EngineError::Unreachable {
            socket: self.socket.display().to_string(),
            reason,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let conn_task = tokio::spawn(conn);
        let body_bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("Host", "docker")
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body_bytes)))
            .map_err(|e| EngineError::Decode {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let collected = http_body_util::Limited::new(resp.into_body(), cap)
            .collect()
            .await;
        conn_task.abort();
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(EngineError::Api {
                    method: method.to_string(),
                    path: path.into(),
                    status: status.as_u16(),
                    message: format!(
                        "the answer is larger than cc-ci's limit of {}",
                        crate::safefs::human(cap as u64)
                    ),
                });
            }
            Err(e) => return Err(unreachable(e.to_string())),
        };
        Ok((status, bytes))
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, EngineError> {
        let (status, bytes) = self.request(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(api_error("GET", path, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| EngineError::Decode {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// Checks that the engine answers and is an active swarm manager
    /// ([`EngineError::NotSwarm`] when it answers but is not).
    pub async fn check_swarm(&self) -> Result<(), EngineError> {
        let info: Value = self.get_json("/info").await?;
        let state = info["Swarm"]["LocalNodeState"].as_str().unwrap_or("");
        let manager = info["Swarm"]["ControlAvailable"].as_bool().unwrap_or(false);
        if state != "active" {
            return Err(EngineError::NotSwarm(format!(
                "this Docker engine is not in swarm mode (state `{state}`): run scripts/setup-swarm or `docker swarm init`"
            )));
        }
        if !manager {
            return Err(EngineError::NotSwarm(
                "this Docker node is not a swarm manager: run cc-ci on a manager node".into(),
            ));
        }
        Ok(())
    }

    /// One consistent-enough picture of a stack: services, their tasks and the tasks' containers.
    pub async fn snapshot(&self, stack: &str) -> Result<StackSnapshot, EngineError> {
        let services: Vec<ApiService> = self
            .get_json(&format!("/services?filters={}", ns_filter(stack)))
            .await?;
        if services.is_empty() {
            return Ok(StackSnapshot::default());
        }
        let ids: Vec<&str> = services.iter().map(|s| s.id.as_str()).collect();
        let task_filter = encode(&serde_json::json!({ "service": ids }).to_string());
        let tasks: Vec<ApiTask> = self
            .get_json(&format!("/tasks?filters={task_filter}"))
            .await?;
        let containers: Vec<ApiContainer> = self
            .get_json(&format!(
                "/containers/json?all=1&filters={}",
                ns_filter(stack)
            ))
            .await?;
        let health: BTreeMap<&str, Health> = containers
            .iter()
            .map(|c| (c.id.as_str(), Health::from_status_text(&c.status)))
            .collect();
        let prefix = format!("{stack}_");
        let mut out = StackSnapshot::default();
        for s in &services {
            let spec = &s.spec;
            let name = spec.name.clone();
            let container = &spec.task_template.container_spec;
            let has_healthcheck = container
                .healthcheck
                .as_ref()
                .and_then(|h| h.test.as_ref())
                .is_some_and(|t| t.first().is_some_and(|f| f != "NONE"));
            let mut svc_tasks: Vec<TaskState> = tasks
                .iter()
                .filter(|t| t.service_id == s.id)
                .map(|t| {
                    let cid = t
                        .status
                        .container_status
                        .as_ref()
                        .and_then(|c| c.container_id.clone());
                    TaskState {
                        id: t.id.clone(),
                        slot: t.slot,
                        desired_state: t.desired_state.clone(),
                        state: t.status.state.clone(),
                        message: t.status.message.clone().unwrap_or_default(),
                        err: t.status.err.clone().unwrap_or_default(),
                        exit_code: t.status.container_status.as_ref().and_then(|c| c.exit_code),
                        health: cid
                            .as_deref()
                            .and_then(|c| health.get(c).copied())
                            .unwrap_or(Health::Unknown),
                        container_id: cid,
                        created_at: t.created_at.clone(),
                    }
                })
                .collect();
            svc_tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at));
            out.services.push(ServiceState {
                id: s.id.clone(),
                short_name: name.strip_prefix(&prefix).unwrap_or(&name).to_string(),
                name,
                desired_replicas: spec.mode.replicated.as_ref().map(|r| r.replicas),
                labels: spec.labels.clone(),
                has_healthcheck,
                restart: spec
                    .task_template
                    .restart_policy
                    .as_ref()
                    .map(|r| RestartPolicy {
                        condition: r.condition.clone().unwrap_or_else(|| "any".into()),
                        max_attempts: r.max_attempts.filter(|n| *n > 0),
                    })
                    .unwrap_or_default(),
                update_state: s.update_status.as_ref().and_then(|u| u.state.clone()),
                update_message: s
                    .update_status
                    .as_ref()
                    .and_then(|u| u.message.clone())
                    .unwrap_or_default(),
                mounts: container
                    .mounts
                    .iter()
                    .map(|m| MountInfo {
                        kind: m.kind.clone(),
                        source: m.source.clone().unwrap_or_default(),
                        target: m.target.clone(),
                    })
                    .collect(),
                tasks: svc_tasks,
            });
        }
        out.services.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every object belonging to `stack` (by the namespace label, and volumes also by name prefix).
    pub async fn stack_objects(&self, stack: &str) -> Result<StackObjects, EngineError> {
        let f = ns_filter(stack);
        let named = |v: Vec<Value>, name_ptr: &str| -> Vec<(String, String)> {
            v.iter()
                .map(|o| {
                    (
                        o["ID"]
                            .as_str()
                            .or_else(|| o["Id"].as_str())
                            .unwrap_or_default()
                            .to_string(),
                        o.pointer(name_ptr)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        };
        let services = named(
            self.get_json(&format!("/services?filters={f}")).await?,
            "/Spec/Name",
        );
        let networks = named(
            self.get_json(&format!("/networks?filters={f}")).await?,
            "/Name",
        );
        let prefix = format!("{stack}_");
        // abra creates secrets itself, without the namespace label: match by name prefix too.
        // (Listing all and filtering here covers both: labelled objects carry the prefix as well.)
        let by_label_or_prefix = |v: Vec<Value>| -> Vec<(String, String)> {
            v.iter()
                .filter(|o| {
                    o["Spec"]["Name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&prefix))
                        || o["Spec"]["Labels"][NAMESPACE_LABEL].as_str() == Some(stack)
                })
                .map(|o| {
                    (
                        o["ID"].as_str().unwrap_or_default().to_string(),
                        o["Spec"]["Name"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let secrets = by_label_or_prefix(self.get_json("/secrets").await?);
        let configs = by_label_or_prefix(self.get_json("/configs").await?);
        let vols: Value = self.get_json("/volumes").await?;
        let volumes = vols["Volumes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|v| {
                        v["Name"].as_str().is_some_and(|n| n.starts_with(&prefix))
                            || v["Labels"][NAMESPACE_LABEL].as_str() == Some(stack)
                    })
                    .filter_map(|v| v["Name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let containers: Vec<ApiContainer> = self
            .get_json(&format!("/containers/json?all=1&filters={f}"))
            .await?;
        Ok(StackObjects {
            services,
            networks,
            secrets,
            configs,
            volumes,
            containers: containers.into_iter().map(|c| c.id).collect(),
        })
    }

    /// Names of every stack namespace present on the node (services, networks, secrets, configs, volumes).
    pub async fn stack_namespaces(&self) -> Result<Vec<String>, EngineError> {
        let mut out = std::collections::BTreeSet::new();
        let f = encode(&serde_json::json!({ "label": [NAMESPACE_LABEL] }).to_string());
        for (path, ptr) in [
            (format!("/services?filters={f}"), "/Spec/Labels"),
            (format!("/networks?filters={f}"), "/Labels"),
            (format!("/secrets?filters={f}"), "/Spec/Labels"),
            (format!("/configs?filters={f}"), "/Spec/Labels"),
        ] {
            let list: Vec<Value> = self.get_json(&path).await?;
            for o in list {
                if let Some(ns) = o.pointer(ptr).and_then(|l| l[NAMESPACE_LABEL].as_str()) {
                    out.insert(ns.to_string());
                }
            }
        }
        let vols: Value = self.get_json(&format!("/volumes?filters={f}")).await?;
        for v in vols["Volumes"].as_array().into_iter().flatten() {
            if let Some(ns) = v["Labels"][NAMESPACE_LABEL].as_str() {
                out.insert(ns.to_string());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Names of every secret, config and volume on the node (gc finds unlabelled leftovers by name).
    pub async fn object_names(&self) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        for path in ["/secrets", "/configs"] {
            let list: Vec<Value> = self.get_json(path).await?;
            out.extend(
                list.iter()
                    .filter_map(|o| o["Spec"]["Name"].as_str().map(String::from)),
            );
        }
        let vols: Value = self.get_json("/volumes").await?;
        out.extend(
            vols["Volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["Name"].as_str().map(String::from)),
        );
        Ok(out)
    }

    /// The health status and last healthcheck output of a container (also of an exited one),
    /// for failure details: "unhealthy" alone does not say why.
    pub async fn health_log(&self, container: &str) -> Result<Option<String>, EngineError> {
        let v: Value = self
            .get_json(&format!("/containers/{}/json", encode(container)))
            .await?;
        let health = &v["State"]["Health"];
        let Some(status) = health["Status"].as_str() else {
            return Ok(None);
        };
        let last = health["Log"]
            .as_array()
            .and_then(|l| l.last())
            .map(|e| {
                let code = e["ExitCode"].as_i64().unwrap_or(-1);
                match e["Output"].as_str().map(str::trim).unwrap_or("") {
                    "" => format!("exited {code} with no output"),
                    out => format!("exited {code}: {out}"),
                }
            })
            .unwrap_or_default();
        Ok(Some(format!("health {status}, last healthcheck {last}")))
    }

    async fn delete(&self, path: &str) -> Result<(), EngineError> {
        let (status, bytes) = self.request(Method::DELETE, path, None).await?;
        // 404: already gone, which is what we wanted.
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(api_error("DELETE", path, status, &bytes))
        }
    }

    pub async fn remove_service(&self, id: &str) -> Result<(), EngineError> {
        self.delete(&format!("/services/{}", encode(id))).await
    }
    pub async fn remove_network(&self, id: &str) -> Result<(), EngineError> {
        self.delete(&format!("/networks/{}", encode(id))).await
    }
    pub async fn remove_secret(&self, id: &str) -> Result<(), EngineError> {
        self.delete(&format!("/secrets/{}", encode(id))).await
    }
    pub async fn remove_config(&self, id: &str) -> Result<(), EngineError> {
        self.delete(&format!("/configs/{}", encode(id))).await
    }
    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        self.delete(&format!("/volumes/{}?force=1", encode(name)))
            .await
    }
    pub async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        self.delete(&format!("/containers/{}?force=1&v=0", encode(id)))
            .await
    }

    /// The last `tail` lines of a service's logs (stdout and stderr interleaved).
    pub async fn service_logs(&self, service_id: &str, tail: u32) -> Result<String, EngineError> {
        let path = format!(
            "/services/{}/logs?stdout=1&stderr=1&timestamps=1&tail={tail}",
            encode(service_id)
        );
        let (status, bytes) = self
            .request_within(Method::GET, &path, None, self.timeout, OUTPUT_CAP)
            .await?;
        if !status.is_success() {
            return Err(api_error("GET", &path, status, &bytes));
        }
        let (out, err) = demux(&bytes);
        Ok(format!("{out}{err}"))
    }

    /// Runs `cmd` in a running container and collects its output and exit code.
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let create_path = format!("/containers/{}/exec", encode(container));
        let (status, bytes) = self
            .request(
                Method::POST,
                &create_path,
                Some(serde_json::json!({ "Cmd": cmd, "AttachStdout": true, "AttachStderr": true })),
            )
            .await?;
        if !status.is_success() {
            return Err(api_error("POST", &create_path, status, &bytes));
        }
        let created: Value = serde_json::from_slice(&bytes).map_err(|e| EngineError::Decode {
            path: create_path.clone(),
            reason: e.to_string(),
        })?;
        let id = created["Id"].as_str().unwrap_or_default().to_string();
        let start_path = format!("/exec/{}/start", encode(&id));
        let started = tokio::time::timeout(
            timeout,
            self.request_once(
                Method::POST,
                &start_path,
                Some(serde_json::json!({ "Detach": false, "Tty": false })),
                OUTPUT_CAP,
            ),
        )
        .await
        .map_err(|_| EngineError::Api {
            method: "POST".into(),
            path: start_path.clone(),
            status: 0,
            message: format!("command {cmd:?} did not finish within {timeout:?}"),
        })??;
        if !started.0.is_success() {
            return Err(api_error("POST", &start_path, started.0, &started.1));
        }
        let (stdout, stderr) = demux(&started.1);
        let inspect: Value = self
            .get_json(&format!("/exec/{}/json", encode(&id)))
            .await?;
        Ok(ExecOutput {
            exit_code: inspect["ExitCode"].as_i64().unwrap_or(-1),
            stdout,
            stderr,
        })
    }
}

fn api_error(method: &str, path: &str, status: StatusCode, body: &[u8]) -> EngineError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    EngineError::Api {
        method: method.into(),
        path: path.into(),
        status: status.as_u16(),
        message,
    }
}

fn ns_filter(stack: &str) -> String {
    encode(&serde_json::json!({ "label": [format!("{NAMESPACE_LABEL}={stack}")] }).to_string())
}

/// Percent-encoding for a query value or path segment (RFC 3986 unreserved characters kept).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits Docker's multiplexed stream (8-byte frame headers: stream, 0, 0, 0, big-endian length)
/// into stdout and stderr. Text that is not framed (a TTY stream) is returned as stdout.
pub(crate) fn demux(bytes: &[u8]) -> (String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 8 && matches!(rest[0], 0..=2) && rest[1..4] == [0, 0, 0] {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len).min(rest.len());
        let chunk = &rest[8..end];
        if rest[0] == 2 {
            err.extend_from_slice(chunk)
        } else {
            out.extend_from_slice(chunk)
        }
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

// The subset of the Engine API's JSON that the harness reads.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiService {
    #[serde(rename = "ID")]
    id: String,
    spec: ApiServiceSpec,
    update_status: Option<ApiUpdateStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiServiceSpec {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    mode: ApiMode,
    task_template: ApiTaskTemplate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiMode {
    replicated: Option<ApiReplicated>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiReplicated {
    #[serde(default)]
    replicas: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiTaskTemplate {
    #[serde(default)]
    container_spec: ApiContainerSpec,
    restart_policy: Option<ApiRestartPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiRestartPolicy {
    condition: Option<String>,
    max_attempts: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiContainerSpec {
    healthcheck: Option<ApiHealthcheck>,
    #[serde(default)]
    mounts: Vec<ApiMount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiHealthcheck {
    test: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiMount {
    #[serde(rename = "Type", default)]
    kind: String,
    source: Option<String>,
    #[serde(default)]
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiUpdateStatus {
    state: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiTask {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    #[serde(default)]
    slot: Option<u64>,
    #[serde(default)]
    desired_state: String,
    #[serde(default)]
    created_at: String,
    status: ApiTaskStatus,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiTaskStatus {
    #[serde(default)]
    state: String,
    message: Option<String>,
    err: Option<String>,
    container_status: Option<ApiContainerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiContainerStatus {
    #[serde(rename = "ContainerID")]
    container_id: Option<String>,
    exit_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(default)]
    status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_filters() {
        assert_eq!(encode("a=b_c"), "a%3Db_c");
        assert_eq!(encode("{\"x\"}"), "%7B%22x%22%7D");
    }

    #[test]
    fn demuxes_frames() {
        let mut b = vec![1, 0, 0, 0, 0, 0, 0, 3];
        b.extend_from_slice(b"out");
        b.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 3]);
        b.extend_from_slice(b"err");
        assert_eq!(demux(&b), ("out".to_string(), "err".to_string()));
        assert_eq!(demux(b"plain text").0, "plain text");
        // A truncated frame keeps what is there instead of panicking.
        assert_eq!(demux(&[1, 0, 0, 0, 0, 0, 0, 9, b'x']).0, "x");
    }

    #[test]
    fn parses_service_json() {
        let json = r#"[{"ID":"s1","Spec":{"Name":"st_app","Labels":{"a":"b"},
            "Mode":{"Replicated":{"Replicas":2}},
            "TaskTemplate":{"ContainerSpec":{"Healthcheck":{"Test":["CMD","true"]},
            "Mounts":[{"Type":"volume","Source":"st_data","Target":"/data"}]}}},
            "UpdateStatus":{"State":"completed"}}]"#;
        let v: Vec<ApiService> = serde_json::from_str(json).unwrap();
        assert_eq!(v[0].spec.mode.replicated.as_ref().unwrap().replicas, 2);
        assert_eq!(
            v[0].spec.task_template.container_spec.mounts[0].target,
            "/data"
        );
    }
}
