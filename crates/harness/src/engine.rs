//! The Docker Engine API over its unix socket: the only place the harness talks to Docker.
//!
//! Talking HTTP to the socket (instead of running the `docker` CLI) keeps a poll of a whole
//! stack to three cheap requests, which is what lets waits notice a state change quickly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use cc_ci_engine_api::{
    ContainerInspectResponse, ContainerSummary, Decoded, ErrorResponse, ExecConfig,
    ExecInspectResponse, ExecStartConfig, IdResponse, Network, Secret, Service, SystemInfo, Task,
    VolumeListResponse,
};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::checks::StackSnapshot;

mod images;
pub use images::{PullError, registry_of};

/// Label swarm puts on every object of a stack (one definition, shared with the stand-in).
pub use cc_ci_engine_api::labels::NAMESPACE_LABEL;

mod extra;
// The engine's models → the checks' domain types.
mod snapshot;
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
        body: Option<Vec<u8>>,
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
        body: Option<Vec<u8>>,
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
        body: Option<Vec<u8>>,
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
        let body_bytes = body.unwrap_or_default();
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

    /// GET one object, decoded leniently into its model (`cc_ci_engine_api::decode`).
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Decoded<T>, EngineError> {
        let bytes = self.get_ok(path).await?;
        decoded(path, cc_ci_engine_api::decode(&bytes))
    }

    /// GET a list, each element decoded leniently into its model.
    async fn get_list<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<Decoded<T>>, EngineError> {
        let bytes = self.get_ok(path).await?;
        decoded(path, cc_ci_engine_api::decode_list(&bytes))
    }

    /// GET a list, the models only (for callers that read no enum field).
    async fn get_values<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, EngineError> {
        Ok(self
            .get_list(path)
            .await?
            .into_iter()
            .map(|d| d.value)
            .collect())
    }

    async fn get_ok(&self, path: &str) -> Result<Bytes, EngineError> {
        let (status, bytes) = self.request(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(api_error("GET", path, status, &bytes));
        }
        Ok(bytes)
    }

    /// Checks that the engine answers and is an active swarm manager
    /// ([`EngineError::NotSwarm`] when it answers but is not).
    pub async fn check_swarm(&self) -> Result<(), EngineError> {
        let info: Decoded<SystemInfo> = self.get("/info").await?;
        let state = info.local_node_state();
        let manager = info
            .value
            .swarm
            .as_ref()
            .and_then(|s| s.control_available)
            .unwrap_or(false);
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
        let services: Vec<Decoded<Service>> = self
            .get_list(&format!("/services?filters={}", ns_filter(stack)))
            .await?;
        if services.is_empty() {
            return Ok(StackSnapshot::default());
        }
        let ids: Vec<&str> = services
            .iter()
            .filter_map(|s| s.value.id.as_deref())
            .collect();
        let task_filter = encode(&serde_json::json!({ "service": ids }).to_string());
        let tasks: Vec<Decoded<Task>> = self
            .get_list(&format!("/tasks?filters={task_filter}"))
            .await?;
        let containers: Vec<ContainerSummary> = self
            .get_values(&format!(
                "/containers/json?all=1&filters={}",
                ns_filter(stack)
            ))
            .await?;
        Ok(snapshot::stack_snapshot(
            stack,
            &services,
            &tasks,
            &containers,
        ))
    }

    /// Every object belonging to `stack` (by the namespace label, and volumes also by name prefix).
    pub async fn stack_objects(&self, stack: &str) -> Result<StackObjects, EngineError> {
        let f = ns_filter(stack);
        let services = self
            .get_values::<Service>(&format!("/services?filters={f}"))
            .await?
            .into_iter()
            .map(|s| {
                let name = s.spec.and_then(|s| s.name);
                (s.id.unwrap_or_default(), name.unwrap_or_default())
            })
            .collect();
        let networks = self
            .get_values::<Network>(&format!("/networks?filters={f}"))
            .await?
            .into_iter()
            .map(|n| (n.id.unwrap_or_default(), n.name.unwrap_or_default()))
            .collect();
        let prefix = format!("{stack}_");
        // abra creates secrets itself, without the namespace label: match by name prefix too.
        // (Listing all and filtering here covers both: labelled objects carry the prefix as well.)
        let ours = |name: &str, labels: Option<&HashMap<String, String>>| {
            name.starts_with(&prefix)
                || labels
                    .and_then(|l| l.get(NAMESPACE_LABEL))
                    .map(String::as_str)
                    == Some(stack)
        };
        let (secrets, configs) = self.secrets_and_configs("").await?;
        let secrets = ours_only(secrets, &ours);
        let configs = ours_only(configs, &ours);
        let volumes = self
            .get::<VolumeListResponse>("/volumes")
            .await?
            .value
            .volumes
            .into_iter()
            .filter(|v| ours(&v.name, Some(&v.labels)))
            .map(|v| v.name)
            .collect();
        let containers = self
            .get_values::<ContainerSummary>(&format!("/containers/json?all=1&filters={f}"))
            .await?;
        Ok(StackObjects {
            services,
            networks,
            secrets,
            configs,
            volumes,
            containers: containers.into_iter().filter_map(|c| c.id).collect(),
        })
    }

    /// Names of every stack namespace present on the node (services, networks, secrets, configs, volumes).
    pub async fn stack_namespaces(&self) -> Result<Vec<String>, EngineError> {
        let f = encode(&serde_json::json!({ "label": [NAMESPACE_LABEL] }).to_string());
        let mut labels: Vec<Option<HashMap<String, String>>> = Vec::new();
        let services: Vec<Service> = self.get_values(&format!("/services?filters={f}")).await?;
        labels.extend(services.into_iter().map(|s| s.spec.and_then(|s| s.labels)));
        let networks: Vec<Network> = self.get_values(&format!("/networks?filters={f}")).await?;
        labels.extend(networks.into_iter().map(|n| n.labels));
        let (secrets, configs) = self.secrets_and_configs(&format!("?filters={f}")).await?;
        labels.extend(secrets.into_iter().chain(configs).map(|o| o.labels));
        let vols: VolumeListResponse = self.get(&format!("/volumes?filters={f}")).await?.value;
        labels.extend(vols.volumes.into_iter().map(|v| Some(v.labels)));
        let out: std::collections::BTreeSet<String> = labels
            .into_iter()
            .flatten()
            .filter_map(|mut l| l.remove(NAMESPACE_LABEL))
            .collect();
        Ok(out.into_iter().collect())
    }

    /// Names of every secret, config and volume on the node (gc finds unlabelled leftovers by name).
    pub async fn object_names(&self) -> Result<Vec<String>, EngineError> {
        let (secrets, configs) = self.secrets_and_configs("").await?;
        let mut out: Vec<String> = secrets.into_iter().chain(configs).map(|o| o.name).collect();
        let vols: VolumeListResponse = self.get("/volumes").await?.value;
        out.extend(vols.volumes.into_iter().map(|v| v.name));
        Ok(out)
    }

    /// Secrets and configs (`query`: the filter part of the path, or empty), which have the
    /// same shape: an id and a spec with a name and labels.
    async fn secrets_and_configs(
        &self,
        query: &str,
    ) -> Result<(Vec<Named>, Vec<Named>), EngineError> {
        let secrets: Vec<Secret> = self.get_values(&format!("/secrets{query}")).await?;
        let configs: Vec<cc_ci_engine_api::Config> =
            self.get_values(&format!("/configs{query}")).await?;
        let secrets = secrets
            .into_iter()
            .map(|s| {
                let spec = s.spec.unwrap_or_default();
                Named::new(s.id, spec.name, spec.labels)
            })
            .collect();
        let configs = configs
            .into_iter()
            .map(|c| {
                let spec = c.spec.unwrap_or_default();
                Named::new(c.id, spec.name, spec.labels)
            })
            .collect();
        Ok((secrets, configs))
    }

    /// The health status and last healthcheck output of a container (also of an exited one),
    /// for failure details: "unhealthy" alone does not say why.
    pub async fn health_log(&self, container: &str) -> Result<Option<String>, EngineError> {
        let c: Decoded<ContainerInspectResponse> = self
            .get(&format!("/containers/{}/json", encode(container)))
            .await?;
        let health = c.value.state.as_ref().and_then(|s| s.health.as_ref());
        let Some(status) = c.health_status() else {
            return Ok(None);
        };
        let last = health
            .and_then(|h| h.log.as_ref())
            .and_then(|l| l.last())
            .map(|e| {
                let code = e.exit_code.unwrap_or(-1);
                match e.output.as_deref().map(str::trim).unwrap_or("") {
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
                json_body(&ExecConfig {
                    cmd: Some(cmd.iter().map(|c| c.to_string()).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                }),
            )
            .await?;
        if !status.is_success() {
            return Err(api_error("POST", &create_path, status, &bytes));
        }
        let id = decoded::<Decoded<IdResponse>>(&create_path, cc_ci_engine_api::decode(&bytes))?
            .value
            .id;
        let start_path = format!("/exec/{}/start", encode(&id));
        let started = tokio::time::timeout(
            timeout,
            self.request_once(
                Method::POST,
                &start_path,
                json_body(&ExecStartConfig {
                    detach: Some(false),
                    tty: Some(false),
                }),
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
        let inspect: Decoded<ExecInspectResponse> =
            self.get(&format!("/exec/{}/json", encode(&id))).await?;
        Ok(ExecOutput {
            exit_code: inspect.value.exit_code.unwrap_or(-1),
            stdout,
            stderr,
        })
    }
}

fn api_error(method: &str, path: &str, status: StatusCode, body: &[u8]) -> EngineError {
    let message = cc_ci_engine_api::decode::<ErrorResponse>(body)
        .ok()
        .map(|e| e.value.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    EngineError::Api {
        method: method.into(),
        path: path.into(),
        status: status.as_u16(),
        message,
    }
}

/// A decode result as the engine's error, naming the request.
fn decoded<T>(path: &str, r: Result<T, cc_ci_engine_api::DecodeError>) -> Result<T, EngineError> {
    r.map_err(|e| EngineError::Decode {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// A request body from a model. Serializing these plain structs cannot fail; if it ever did, the
/// request goes without a body and the engine's answer names what is missing.
fn json_body<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(v).ok()
}

/// A secret or a config as stack_objects/gc see them.
struct Named {
    id: String,
    name: String,
    labels: Option<HashMap<String, String>>,
}

impl Named {
    fn new(
        id: Option<String>,
        name: Option<String>,
        labels: Option<HashMap<String, String>>,
    ) -> Self {
        Self {
            id: id.unwrap_or_default(),
            name: name.unwrap_or_default(),
            labels,
        }
    }
}

fn ours_only(
    list: Vec<Named>,
    ours: &impl Fn(&str, Option<&HashMap<String, String>>) -> bool,
) -> Vec<(String, String)> {
    list.into_iter()
        .filter(|o| ours(&o.name, o.labels.as_ref()))
        .map(|o| (o.id, o.name))
        .collect()
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
}
