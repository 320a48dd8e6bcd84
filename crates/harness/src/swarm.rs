//! The swarm as a run sees it: the [`Swarm`] trait holds every Docker Engine call the lifecycle
//! and the teardown make, implemented here for the real [`Engine`] by delegation, and in memory
//! by `fakes::FakeSwarm` (feature `fakes`) for the tier unit tests.
//!
//! The futures are boxed (like the daemon's `Forge`) so a run holds `Arc<dyn Swarm>`: a generic
//! parameter would have to be repeated on every `impl Job` block of the lifecycle, and the head's
//! image pulls run as tokio tasks that need an owned, `'static` handle. One allocation per call
//! costs nothing next to a request to dockerd.
//!
//! Canaries and backed-up paths are read and written through three semantic calls
//! ([`Swarm::write_file`], [`Swarm::read_file`], [`Swarm::has_data`]) whose real implementation
//! is the shell command in the container it always was, so a fake does not interpret shell.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::checks::StackSnapshot;
use crate::engine::{Engine, EngineError, ExecOutput, PortHolder, PullError, StackObjects};

/// What a swarm call returns.
pub type SwarmFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// An image pull: its failure names image and registry.
pub type PullFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PullError>> + Send + 'a>>;

/// How long a canary write or read, or a look at a backed-up path, may take.
pub const FILE_DEADLINE: Duration = Duration::from_secs(30);

/// Kinds of stack objects the teardown removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Service,
    Network,
    Secret,
    Config,
    Volume,
    Container,
}

/// The Docker Engine calls of a run.
pub trait Swarm: Send + Sync {
    /// The engine answers and is an active swarm manager (`EngineError::NotSwarm` otherwise).
    fn check_swarm(&self) -> SwarmFuture<'_, ()>;
    /// Services, tasks and the tasks' containers of `stack`.
    fn snapshot<'a>(&'a self, stack: &'a str) -> SwarmFuture<'a, StackSnapshot>;
    /// Health status and last healthcheck output of a container; `None` without a healthcheck.
    fn health_log<'a>(&'a self, container: &'a str) -> SwarmFuture<'a, Option<String>>;
    /// The last `tail` lines of a service's logs.
    fn service_logs<'a>(&'a self, service_id: &'a str, tail: u32) -> SwarmFuture<'a, String>;
    /// Runs `cmd` in a running container.
    fn exec<'a>(
        &'a self,
        container: &'a str,
        cmd: &'a [&'a str],
        timeout: Duration,
    ) -> SwarmFuture<'a, ExecOutput>;
    /// Writes `content` to the file `path` inside a running container (exit code 0: written).
    fn write_file<'a>(
        &'a self,
        container: &'a str,
        path: &'a str,
        content: &'a str,
    ) -> SwarmFuture<'a, ExecOutput>;
    /// Reads the file `path` inside a running container (exit code 0: stdout is its content).
    fn read_file<'a>(&'a self, container: &'a str, path: &'a str) -> SwarmFuture<'a, ExecOutput>;
    /// Whether `path` inside a running container holds a non-empty regular file (itself or below).
    fn has_data<'a>(&'a self, container: &'a str, path: &'a str) -> SwarmFuture<'a, bool>;
    /// Runs `cmd` in a fresh container of `image` on the network of `container`, then removes it.
    fn run_probe<'a>(
        &'a self,
        image: &'a str,
        container: &'a str,
        cmd: &'a [&'a str],
        labels: &'a BTreeMap<String, String>,
        timeout: Duration,
    ) -> SwarmFuture<'a, ExecOutput>;
    /// Everything on the host that publishes a host port.
    fn port_holders(&self) -> SwarmFuture<'_, Vec<PortHolder>>;
    /// Names of services labelled `key=value` with a running task.
    fn running_services_labelled<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> SwarmFuture<'a, Vec<String>>;
    /// Pulls `image` onto the node within `deadline`.
    fn pull_image<'a>(&'a self, image: &'a str, deadline: Duration) -> PullFuture<'a>;
    /// The digest the registry serves for `image` now.
    fn distribution_digest<'a>(&'a self, image: &'a str) -> SwarmFuture<'a, String>;
    /// Every object belonging to `stack`.
    fn stack_objects<'a>(&'a self, stack: &'a str) -> SwarmFuture<'a, StackObjects>;
    /// Removes one object (already gone counts as removed).
    fn remove<'a>(&'a self, kind: ObjectKind, id: &'a str) -> SwarmFuture<'a, ()>;
}

/// The shell command that writes a canary (the real [`Swarm::write_file`]).
fn write_command(path: &str, content: &str) -> String {
    format!("printf %s '{content}' > '{path}'")
}

impl Swarm for Engine {
    fn check_swarm(&self) -> SwarmFuture<'_, ()> {
        Box::pin(Engine::check_swarm(self))
    }
    fn snapshot<'a>(&'a self, stack: &'a str) -> SwarmFuture<'a, StackSnapshot> {
        Box::pin(Engine::snapshot(self, stack))
    }
    fn health_log<'a>(&'a self, container: &'a str) -> SwarmFuture<'a, Option<String>> {
        Box::pin(Engine::health_log(self, container))
    }
    fn service_logs<'a>(&'a self, service_id: &'a str, tail: u32) -> SwarmFuture<'a, String> {
        Box::pin(Engine::service_logs(self, service_id, tail))
    }
    fn exec<'a>(
        &'a self,
        container: &'a str,
        cmd: &'a [&'a str],
        timeout: Duration,
    ) -> SwarmFuture<'a, ExecOutput> {
        Box::pin(Engine::exec(self, container, cmd, timeout))
    }
    fn write_file<'a>(
        &'a self,
        container: &'a str,
        path: &'a str,
        content: &'a str,
    ) -> SwarmFuture<'a, ExecOutput> {
        Box::pin(async move {
            let cmd = write_command(path, content);
            Engine::exec(self, container, &["sh", "-c", &cmd], FILE_DEADLINE).await
        })
    }
    fn read_file<'a>(&'a self, container: &'a str, path: &'a str) -> SwarmFuture<'a, ExecOutput> {
        Box::pin(async move {
            let cmd = format!("cat '{path}'");
            Engine::exec(self, container, &["sh", "-c", &cmd], FILE_DEADLINE).await
        })
    }
    fn has_data<'a>(&'a self, container: &'a str, path: &'a str) -> SwarmFuture<'a, bool> {
        Box::pin(async move {
            let cmd = format!("find '{path}' -type f -size +0c | head -n 1");
            let o = Engine::exec(self, container, &["sh", "-c", &cmd], FILE_DEADLINE).await?;
            Ok(!o.stdout.trim().is_empty())
        })
    }
    fn run_probe<'a>(
        &'a self,
        image: &'a str,
        container: &'a str,
        cmd: &'a [&'a str],
        labels: &'a BTreeMap<String, String>,
        timeout: Duration,
    ) -> SwarmFuture<'a, ExecOutput> {
        Box::pin(Engine::run_probe(
            self, image, container, cmd, labels, timeout,
        ))
    }
    fn port_holders(&self) -> SwarmFuture<'_, Vec<PortHolder>> {
        Box::pin(Engine::port_holders(self))
    }
    fn running_services_labelled<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> SwarmFuture<'a, Vec<String>> {
        Box::pin(Engine::running_services_labelled(self, key, value))
    }
    fn pull_image<'a>(&'a self, image: &'a str, deadline: Duration) -> PullFuture<'a> {
        Box::pin(Engine::pull_image(self, image, deadline))
    }
    fn distribution_digest<'a>(&'a self, image: &'a str) -> SwarmFuture<'a, String> {
        Box::pin(Engine::distribution_digest(self, image))
    }
    fn stack_objects<'a>(&'a self, stack: &'a str) -> SwarmFuture<'a, StackObjects> {
        Box::pin(Engine::stack_objects(self, stack))
    }
    fn remove<'a>(&'a self, kind: ObjectKind, id: &'a str) -> SwarmFuture<'a, ()> {
        Box::pin(async move {
            match kind {
                ObjectKind::Service => self.remove_service(id).await,
                ObjectKind::Network => self.remove_network(id).await,
                ObjectKind::Secret => self.remove_secret(id).await,
                ObjectKind::Config => self.remove_config(id).await,
                ObjectKind::Volume => self.remove_volume(id).await,
                ObjectKind::Container => self.remove_container(id).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_is_written_by_printf_without_a_newline() {
        assert_eq!(
            write_command("/data/.cc-ci-canary", "cc-ci-00ff"),
            "printf %s 'cc-ci-00ff' > '/data/.cc-ci-canary'"
        );
    }
}
