//! Engine calls for host-port leases (who publishes a port) and the HTTP probe container.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use super::{Engine, EngineError, ExecOutput, NAMESPACE_LABEL, api_error, demux, encode};

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
/// `/containers/json` answers.
pub fn port_holders_of(services: &[Value], containers: &[Value]) -> Vec<PortHolder> {
    let mut out = Vec::new();
    for s in services {
        let name = s["Spec"]["Name"].as_str().unwrap_or_default().to_string();
        let stack = s["Spec"]["Labels"][NAMESPACE_LABEL]
            .as_str()
            .map(String::from);
        // The endpoint's actual ports, else what the spec asks for (not yet allocated).
        let ports = s["Endpoint"]["Ports"]
            .as_array()
            .filter(|p| !p.is_empty())
            .or_else(|| s["Spec"]["EndpointSpec"]["Ports"].as_array());
        for p in ports.into_iter().flatten() {
            if let Some(port) = p["PublishedPort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                && port > 0
            {
                out.push(PortHolder {
                    port,
                    protocol: p["Protocol"].as_str().unwrap_or("tcp").to_string(),
                    name: name.clone(),
                    stack: stack.clone(),
                    kind: "service",
                });
            }
        }
    }
    for c in containers {
        // Tasks of swarm services are covered by their service above.
        if c["Labels"]["com.docker.swarm.service.id"].is_string() {
            continue;
        }
        let name = c["Names"][0]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        for p in c["Ports"].as_array().into_iter().flatten() {
            if let Some(port) = p["PublicPort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                out.push(PortHolder {
                    port,
                    protocol: p["Type"].as_str().unwrap_or("tcp").to_string(),
                    name: name.clone(),
                    stack: c["Labels"][NAMESPACE_LABEL].as_str().map(String::from),
                    kind: "container",
                });
            }
        }
    }
    out.sort_by(|a, b| (a.port, &a.protocol, &a.name).cmp(&(b.port, &b.protocol, &b.name)));
    out.dedup();
    out
}

impl Engine {
    /// Everything on this host that publishes a host port.
    pub async fn port_holders(&self) -> Result<Vec<PortHolder>, EngineError> {
        let services: Vec<Value> = self.get_json("/services").await?;
        let containers: Vec<Value> = self.get_json("/containers/json").await?;
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
        let body = serde_json::json!({
            "Image": image,
            "Cmd": cmd,
            "Labels": labels,
            "HostConfig": { "NetworkMode": format!("container:{container}") },
        });
        let (status, bytes) = self.request(Method::POST, path, Some(body)).await?;
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
        let created: Value = serde_json::from_slice(&bytes).map_err(|e| EngineError::Decode {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let id = created["Id"].as_str().unwrap_or_default().to_string();
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
        let exit_code = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["StatusCode"].as_i64())
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

    #[test]
    fn holders_from_services_and_plain_containers() {
        let services: Vec<Value> = serde_json::from_str(
            r#"[
              {"Spec": {"Name": "traefik_app", "Labels": {"com.docker.stack.namespace": "traefik"},
                        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80}]}},
               "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80},
                                      {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353}]}},
              {"Spec": {"Name": "pending", "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 1, "PublishedPort": 8443}]}}},
              {"Spec": {"Name": "quiet", "Labels": {}}}
            ]"#,
        )
        .unwrap();
        let containers: Vec<Value> = serde_json::from_str(
            r#"[
              {"Names": ["/web"], "Labels": {}, "Ports": [{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}, {"PrivatePort": 9}]},
              {"Names": ["/traefik_app.1.x"], "Labels": {"com.docker.swarm.service.id": "s"}, "Ports": [{"PublicPort": 1, "Type": "tcp"}]}
            ]"#,
        )
        .unwrap();
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
            ]
        );
    }
}
