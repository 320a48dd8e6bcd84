//! Engine calls for host-port leases (who publishes a port) and the HTTP probe container.

use std::collections::BTreeMap;
use std::time::Duration;

use cc_ci_engine_api::labels::SERVICE_ID_LABEL;
use cc_ci_engine_api::{
    ContainerConfig, ContainerCreateResponse, ContainerSummary, ContainerWaitResponse, Decoded,
    EndpointPortConfig, HostConfig, Service,
};
use hyper::Method;
use serde::Serialize;

use super::{
    Engine, EngineError, ExecOutput, NAMESPACE_LABEL, api_error, decoded, demux, encode, json_body,
};

/// Something on this Docker host that publishes a host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub port: u16,
    pub protocol: String,
    /// Service or container name.
    pub name: String,
    /// The stack it belongs to (`com.docker.stack.namespace`), if any.
    pub stack: Option<String>,
    /// `service` or `container`.
    pub kind: &'static str,
}

/// Host ports published by the services and plain containers of `/services` and
/// `/containers/json` answers. Protocols are read as text, so one a newer engine added (and the
/// 1.41 models do not know) is still told apart.
pub fn port_holders_of(
    services: &[Decoded<Service>],
    containers: &[Decoded<ContainerSummary>],
) -> Vec<PortHolder> {
    let mut out = Vec::new();
    for d in services {
        let s = &d.value;
        let spec = s.spec.as_ref();
        let name = spec.and_then(|s| s.name.clone()).unwrap_or_default();
        let stack = spec
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(NAMESPACE_LABEL).cloned());
        // The endpoint's actual ports, else what the spec asks for (not yet allocated).
        let (ports, at): (&[EndpointPortConfig], _) = match s
            .endpoint
            .as_ref()
            .and_then(|e| e.ports.as_deref())
            .filter(|p| !p.is_empty())
        {
            Some(p) => (p, "Endpoint.Ports"),
            None => (
                spec.and_then(|s| s.endpoint_spec.as_ref()?.ports.as_deref())
                    .unwrap_or_default(),
                "Spec.EndpointSpec.Ports",
            ),
        };
        for (i, p) in ports.iter().enumerate() {
            if let Some(port) = p.published_port.and_then(|n| u16::try_from(n).ok())
                && port > 0
            {
                out.push(PortHolder {
                    port,
                    protocol: protocol(d.text(p.protocol, &format!("{at}[{i}].Protocol"))),
                    name: name.clone(),
                    stack: stack.clone(),
                    kind: "service",
                });
            }
        }
    }
    for d in containers {
        let c = &d.value;
        let labels = c.labels.clone().unwrap_or_default();
        // Tasks of swarm services are covered by their service above.
        if labels.contains_key(SERVICE_ID_LABEL) {
            continue;
        }
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        for (i, p) in c.ports.iter().flatten().enumerate() {
            if let Some(port) = p.public_port.and_then(|n| u16::try_from(n).ok()) {
                out.push(PortHolder {
                    port,
                    protocol: protocol(d.text(p.typ, &format!("Ports[{i}].Type"))),
                    name: name.clone(),
                    stack: labels.get(NAMESPACE_LABEL).cloned(),
                    kind: "container",
                });
            }
        }
    }
    out.sort_by(|a, b| (a.port, &a.protocol, &a.name).cmp(&(b.port, &b.protocol, &b.name)));
    out.dedup();
    out
}

/// A port's protocol; absent or empty is the engine's default, `tcp`.
fn protocol(p: Option<String>) -> String {
    match p {
        Some(p) if !p.is_empty() => p,
        _ => "tcp".to_string(),
    }
}

/// The container-create body: the container's config with its host config beside it.
#[derive(Serialize)]
struct CreateBody {
    #[serde(flatten)]
    config: ContainerConfig,
    #[serde(rename = "HostConfig")]
    host_config: HostConfig,
}

impl Engine {
    /// Everything on this host that publishes a host port.
    pub async fn port_holders(&self) -> Result<Vec<PortHolder>, EngineError> {
        let services = self.get_list("/services").await?;
        let containers = self.get_list("/containers/json").await?;
        Ok(port_holders_of(&services, &containers))
    }

    /// Runs `cmd` in a fresh container of `image` that shares the network of `container` (so
    /// `127.0.0.1` is the app's own address), collects its output and removes it. The container
    /// carries `labels` (the stack's namespace), so a teardown after a crash removes it too.
    pub async fn run_probe(
        &self,
        image: &str,
        container: &str,
        cmd: &[&str],
        labels: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let path = "/containers/create";
        let body = CreateBody {
            config: ContainerConfig {
                image: Some(image.to_string()),
                cmd: Some(cmd.iter().map(|c| c.to_string()).collect()),
                labels: Some(labels.clone().into_iter().collect()),
                ..Default::default()
            },
            host_config: HostConfig {
                network_mode: Some(format!("container:{container}")),
                ..Default::default()
            },
        };
        let (status, bytes) = self.request(Method::POST, path, json_body(&body)).await?;
        if status.as_u16() == 404 {
            return Err(EngineError::Api {
                method: "POST".into(),
                path: path.into(),
                status: 404,
                message: format!(
                    "the HTTP probe image `{image}` is not on this host: pull or build it (harness.http_probe_image)"
                ),
            });
        }
        if !status.is_success() {
            return Err(api_error("POST", path, status, &bytes));
        }
        let id =
            decoded::<Decoded<ContainerCreateResponse>>(path, cc_ci_engine_api::decode(&bytes))?
                .value
                .id;
        let result = self.probe_run_created(&id, cmd, timeout).await;
        // Removed whatever happened; a failure here leaves it to the stack's teardown.
        let _ = self.remove_container(&id).await;
        result
    }

    async fn probe_run_created(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let start = format!("/containers/{}/start", encode(id));
        let (status, bytes) = self.request(Method::POST, &start, None).await?;
        if !status.is_success() {
            return Err(api_error("POST", &start, status, &bytes));
        }
        let wait = format!("/containers/{}/wait", encode(id));
        let (status, bytes) =
            tokio::time::timeout(timeout, self.request(Method::POST, &wait, None))
                .await
                .map_err(|_| EngineError::Api {
                    method: "POST".into(),
                    path: wait.clone(),
                    status: 0,
                    message: format!("the probe {cmd:?} did not finish within {timeout:?}"),
                })??;
        if !status.is_success() {
            return Err(api_error("POST", &wait, status, &bytes));
        }
        let exit_code = cc_ci_engine_api::decode::<ContainerWaitResponse>(&bytes)
            .map(|w| w.value.status_code)
            .unwrap_or(-1);
        let logs = format!("/containers/{}/logs?stdout=1&stderr=1", encode(id));
        let (status, bytes) = self.request(Method::GET, &logs, None).await?;
        if !status.is_success() {
            return Err(api_error("GET", &logs, status, &bytes));
        }
        let (stdout, stderr) = demux(&bytes);
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers decoded as the engine decodes them (leniently).
    fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Vec<Decoded<T>> {
        cc_ci_engine_api::decode_list(json.as_bytes()).unwrap()
    }

    #[test]
    fn holders_from_services_and_plain_containers() {
        let services: Vec<Decoded<Service>> = decode(
            r#"[
              {"Spec": {"Name": "traefik_app", "Labels": {"com.docker.stack.namespace": "traefik"},
                        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80}]}},
               "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80},
                                      {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353}]}},
              {"Spec": {"Name": "pending", "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 1, "PublishedPort": 8443}]}}},
              {"Spec": {"Name": "quiet", "Labels": {}}},
              {"Spec": {"Name": "newer", "EndpointSpec": {"Ports": [{"Protocol": "quic", "PublishedPort": 9443}]}}}
            ]"#,
        );
        let containers: Vec<Decoded<ContainerSummary>> = decode(
            r#"[
              {"Names": ["/web"], "Labels": {}, "Ports": [{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}, {"PrivatePort": 9}]},
              {"Names": ["/traefik_app.1.x"], "Labels": {"com.docker.swarm.service.id": "s"}, "Ports": [{"PrivatePort": 1, "PublicPort": 1, "Type": "tcp"}]}
            ]"#,
        );
        let h = port_holders_of(&services, &containers);
        let got: Vec<String> = h
            .iter()
            .map(|p| {
                format!(
                    "{}/{} {} {} {:?}",
                    p.port, p.protocol, p.kind, p.name, p.stack
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                "80/tcp service traefik_app Some(\"traefik\")",
                "5353/udp service traefik_app Some(\"traefik\")",
                "8080/tcp container web None",
                "8443/tcp service pending None",
                // A protocol the 1.41 models do not know: the port is still held, by name.
                "9443/quic service newer None",
            ]
        );
    }
}
