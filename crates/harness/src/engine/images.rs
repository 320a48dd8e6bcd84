//! Images and server-wide services: pulling an image before a deploy (so a convergence wait never
//! includes a pull), and finding services by label (backup-bot-two).

use std::time::Duration;

use cc_ci_engine_api::{CreateImageInfo, Decoded, Network, Service, Task};
use hyper::Method;

use super::{Engine, EngineError, api_error, decoded, encode};

/// A pull that did not bring the image onto the node.
#[derive(Debug, thiserror::Error)]
#[error("cannot pull image `{image}` from registry {registry}: {reason}")]
pub struct PullError {
    pub image: String,
    pub registry: String,
    pub reason: String,
}

/// The registry an image reference names: its first path segment when that looks like a host
/// (has a `.` or `:`, or is `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

/// `image` with `:latest` added when it names neither a tag nor a digest (the API would otherwise
/// pull every tag of the repository).
fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The first error in the progress stream `POST /images/create` answers with (it says 200 and
/// reports failures inside the stream).
fn stream_error(body: &str) -> Option<String> {
    body.lines()
        .filter_map(|l| cc_ci_engine_api::decode::<CreateImageInfo>(l.trim().as_bytes()).ok())
        .find_map(|i| i.value.error)
}

impl Engine {
    /// Pulls `image` onto this node, within `deadline`.
    pub async fn pull_image(&self, image: &str, deadline: Duration) -> Result<(), PullError> {
        let fail = |reason: String| PullError {
            image: image.to_string(),
            registry: registry_of(image),
            reason,
        };
        let path = format!("/images/create?fromImage={}", encode(&with_tag(image)));
        let answer = tokio::time::timeout(deadline, self.request(Method::POST, &path, None))
            .await
            .map_err(|_| fail(format!("the pull did not finish within {deadline:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let (status, bytes) = answer;
        if !status.is_success() {
            return Err(fail(api_error("POST", &path, status, &bytes).to_string()));
        }
        match stream_error(&String::from_utf8_lossy(&bytes)) {
            Some(e) => Err(fail(e)),
            None => Ok(()),
        }
    }

    /// Whether the image is on this node.
    pub async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        let path = format!("/images/{}/json", encode(image));
        let (status, bytes) = self.request(Method::GET, &path, None).await?;
        match status.as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(api_error("GET", &path, status, &bytes)),
        }
    }

    /// Names of services labelled `key=value` that have a running task.
    pub async fn running_services_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>, EngineError> {
        let f = encode(&serde_json::json!({ "label": [format!("{key}={value}")] }).to_string());
        let services: Vec<Service> = self.get_values(&format!("/services?filters={f}")).await?;
        let mut out = Vec::new();
        for s in services {
            let (Some(id), Some(name)) = (s.id, s.spec.and_then(|s| s.name)) else {
                continue;
            };
            let tf = encode(
                &serde_json::json!({ "service": [id], "desired-state": ["running"] }).to_string(),
            );
            let tasks: Vec<Decoded<Task>> = self.get_list(&format!("/tasks?filters={tf}")).await?;
            if tasks.iter().any(|t| t.state() == "running") {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Driver and scope of a network, `None` when there is no such network.
    pub async fn network_driver(
        &self,
        name: &str,
    ) -> Result<Option<(String, String)>, EngineError> {
        let path = format!("/networks/{}", encode(name));
        let (status, bytes) = self.request(Method::GET, &path, None).await?;
        match status.as_u16() {
            404 => Ok(None),
            200 => {
                let n = decoded::<Decoded<Network>>(&path, cc_ci_engine_api::decode(&bytes))?.value;
                Ok(Some((
                    n.driver.unwrap_or_default(),
                    n.scope.unwrap_or_default(),
                )))
            }
            _ => Err(api_error("GET", &path, status, &bytes)),
        }
    }

    /// Images of the services on the swarm that were resolved from a registry (pinned by digest;
    /// an image that exists only on the node has none), for `cc-ci doctor`'s registry check.
    pub async fn registry_images(&self) -> Result<Vec<String>, EngineError> {
        let services: Vec<Service> = self.get_values("/services").await?;
        let mut out: Vec<String> = services
            .into_iter()
            .filter_map(|s| s.spec?.task_template?.container_spec?.image)
            .filter_map(|i| i.split_once('@').map(|(name, _)| name.to_string()))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_tag_of_image_references() {
        assert_eq!(
            registry_of("127.0.0.1:5000/cc-ci-fixture/web:1"),
            "127.0.0.1:5000"
        );
        assert_eq!(
            registry_of("git.coopcloud.tech/coop-cloud/x:1"),
            "git.coopcloud.tech"
        );
        assert_eq!(registry_of("nginx:1.27"), "docker.io");
        assert_eq!(registry_of("library/nginx"), "docker.io");
        assert_eq!(with_tag("nginx"), "nginx:latest");
        assert_eq!(with_tag("127.0.0.1:5000/web"), "127.0.0.1:5000/web:latest");
        assert_eq!(with_tag("127.0.0.1:5000/web:2"), "127.0.0.1:5000/web:2");
        assert_eq!(with_tag("web@sha256:ab"), "web@sha256:ab");
    }

    #[test]
    fn finds_the_error_inside_a_pull_stream() {
        let ok = "{\"status\":\"Pulling from x\"}\n{\"status\":\"Digest: sha256:1\"}\n";
        assert_eq!(stream_error(ok), None);
        let bad = "{\"status\":\"Pulling\"}\n{\"errorDetail\":{\"message\":\"manifest unknown\"},\"error\":\"manifest unknown\"}\n";
        assert_eq!(stream_error(bad).as_deref(), Some("manifest unknown"));
    }
}
