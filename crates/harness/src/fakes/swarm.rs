//! A swarm in memory: stacks of services with tasks, health and update state, named volumes
//! holding files, a registry that may refuse images, and an engine that may go away.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::checks::{Health, MountInfo, RestartPolicy, ServiceState, StackSnapshot, TaskState};
use crate::engine::{EngineError, ExecOutput, PortHolder, PullError, StackObjects, registry_of};
use crate::swarm::{ObjectKind, PullFuture, Swarm, SwarmFuture};
use cc_ci_engine_api::labels::backupbot::{BACKUPBOT_LABEL, BACKUPBOT_LABEL_VALUE};

/// How the engine is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Connections are refused (dockerd stopped or restarting).
    Unreachable,
    /// Requests are accepted and never answered.
    Hung,
}

/// What a compose service asks the swarm for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// (volume name within the stack, mount target).
    pub volumes: Vec<(String, String)>,
    pub healthcheck: bool,
    /// `None`: global.
    pub replicas: Option<u64>,
}

/// One service of a stack.
#[derive(Debug, Clone)]
pub struct FakeService {
    pub id: String,
    pub stack: String,
    pub short_name: String,
    pub spec: ServiceSpec,
    pub update_state: Option<String>,
    pub update_message: String,
    /// Oldest first.
    pub tasks: Vec<TaskState>,
}

#[derive(Debug, Default)]
pub struct SwarmState {
    pub services: Vec<FakeService>,
    /// Full volume name → (path inside the volume → content).
    pub volumes: BTreeMap<String, BTreeMap<String, String>>,
    /// Services outside the stacks under test: (name, labels, running).
    pub others: Vec<(String, BTreeMap<String, String>, bool)>,
    pub down: Option<Outage>,
    /// Not a swarm manager (the engine answers).
    pub not_manager: bool,
    /// Images the registry does not serve, with its answer.
    pub unpullable: BTreeMap<String, String>,
    pub pulled: Vec<String>,
    /// Services (short names) whose tasks never become healthy.
    pub never_healthy: BTreeSet<String>,
    /// Services (short names) whose updated tasks exit at once: swarm rolls the update back.
    pub rolls_back: BTreeSet<String>,
    /// Services (short names) whose start re-initialises their volumes (deletes every file).
    pub wipes_on_start: BTreeSet<String>,
    /// Replies to `exec` by command (`cmd.join(" ")`).
    pub exec_replies: BTreeMap<String, ExecOutput>,
    pub port_holders: Vec<PortHolder>,
    /// Every call made, `name args`.
    pub calls: Vec<String>,
    next_id: u64,
}

#[derive(Debug, Default)]
pub struct FakeSwarm {
    state: Mutex<SwarmState>,
}

impl FakeSwarm {
    /// A single-node swarm with backup-bot-two running (as scripts/setup-swarm leaves it).
    pub fn new() -> Self {
        let f = Self::default();
        f.state().others.push((
            "backup-bot-two_app".into(),
            BTreeMap::from([(BACKUPBOT_LABEL.into(), BACKUPBOT_LABEL_VALUE.into())]),
            true,
        ));
        f
    }

    pub fn state(&self) -> MutexGuard<'_, SwarmState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the call; fails as the engine does while it is away.
    fn gate(&self, call: String) -> Result<MutexGuard<'_, SwarmState>, EngineError> {
        let mut s = self.state();
        s.calls.push(call);
        match s.down {
            None => Ok(s),
            Some(Outage::Unreachable) => Err(EngineError::Unreachable {
                socket: "/var/run/docker.sock".into(),
                reason: "connection refused".into(),
            }),
            Some(Outage::Hung) => Err(EngineError::Hung {
                socket: "/var/run/docker.sock".into(),
                what: "the request".into(),
                timeout: Duration::from_secs(30),
            }),
        }
    }

    /// `docker stack deploy` of `services` (compose name → spec) as abra runs it: new services
    /// are created, changed ones updated (start-first, rolled back when the new task fails),
    /// unchanged ones left alone, none removed (no `--prune`). Named volumes are created empty.
    pub fn deploy_stack(&self, stack: &str, services: &BTreeMap<String, ServiceSpec>) {
        let mut s = self.state();
        for (name, spec) in services {
            for (vol, _) in &spec.volumes {
                s.volumes.entry(format!("{stack}_{vol}")).or_default();
            }
            match s
                .services
                .iter()
                .position(|x| x.stack == stack && x.short_name == *name)
            {
                None => {
                    let id = s.next("svc");
                    let task = s.start_task(stack, name, spec, true);
                    s.services.push(FakeService {
                        id,
                        stack: stack.into(),
                        short_name: name.clone(),
                        spec: spec.clone(),
                        update_state: None,
                        update_message: String::new(),
                        tasks: vec![task],
                    });
                }
                Some(i) if s.services[i].spec == *spec => {}
                Some(i) => s.update(i, spec),
            }
        }
    }
}

impl SwarmState {
    fn next(&mut self, kind: &str) -> String {
        self.next_id += 1;
        format!("{kind}{:06}", self.next_id)
    }

    /// A new task of `spec`; running unless `starts` is false (it exits at once).
    fn start_task(
        &mut self,
        stack: &str,
        name: &str,
        spec: &ServiceSpec,
        starts: bool,
    ) -> TaskState {
        let id = self.next("task");
        if starts && self.wipes_on_start.contains(name) {
            for (vol, _) in &spec.volumes {
                if let Some(files) = self.volumes.get_mut(&format!("{stack}_{vol}")) {
                    files.clear();
                }
            }
        }
        let health = match (spec.healthcheck, starts) {
            (false, _) | (_, false) => Health::Unknown,
            (true, true) if self.never_healthy.contains(name) => Health::Unhealthy,
            (true, true) => Health::Healthy,
        };
        TaskState {
            container_id: Some(format!("ctr-{id}")),
            created_at: format!("2026-01-01T00:00:00.{:09}Z", self.next_id),
            slot: Some(1),
            desired_state: if starts { "running" } else { "shutdown" }.into(),
            state: if starts { "running" } else { "failed" }.into(),
            message: if starts { "started" } else { "failed" }.into(),
            err: if starts {
                String::new()
            } else {
                "task: non-zero exit (1)".into()
            },
            exit_code: (!starts).then_some(1),
            health,
            id,
        }
    }

    fn update(&mut self, i: usize, spec: &ServiceSpec) {
        let (stack, name) = (
            self.services[i].stack.clone(),
            self.services[i].short_name.clone(),
        );
        let starts = !self.rolls_back.contains(&name);
        let new = self.start_task(&stack, &name, spec, starts);
        if starts {
            let svc = &mut self.services[i];
            for t in svc.tasks.iter_mut().filter(|t| t.is_running()) {
                t.state = "shutdown".into();
                t.desired_state = "shutdown".into();
            }
            svc.tasks.push(new);
            svc.spec = spec.clone();
            svc.update_state = Some("completed".into());
            svc.update_message = "update completed".into();
            return;
        }
        // failure_action: rollback; start-first kept the old task serving.
        self.services[i].tasks.push(new);
        let svc = &mut self.services[i];
        svc.update_state = Some("rollback_completed".into());
        svc.update_message =
            "update rolled back due to failure or early termination of task".into();
    }

    fn container(&self, container: &str) -> Result<(&FakeService, &TaskState), EngineError> {
        self.services
            .iter()
            .find_map(|s| {
                s.tasks
                    .iter()
                    .find(|t| t.container_id.as_deref() == Some(container))
                    .map(|t| (s, t))
            })
            .filter(|(_, t)| t.is_running())
            .ok_or_else(|| EngineError::Api {
                method: "POST".into(),
                path: format!("/containers/{container}/exec"),
                status: 409,
                message: format!("container {container} is not running"),
            })
    }

    /// (full volume name, path inside it) of `path` in a running container; `None` outside
    /// every named volume.
    fn in_volume(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<(String, String)>, EngineError> {
        let (s, _) = self.container(container)?;
        Ok(s.spec.volumes.iter().find_map(|(vol, target)| {
            let rest = path.strip_prefix(target.as_str())?;
            let rel = rest.strip_prefix('/').unwrap_or(rest);
            (rest.is_empty() || rest.starts_with('/')).then(|| {
                (
                    format!("{}_{vol}", s.stack),
                    rel.trim_end_matches('/').to_string(),
                )
            })
        }))
    }

    fn snapshot(&self, stack: &str) -> StackSnapshot {
        let mut services: Vec<ServiceState> = self
            .services
            .iter()
            .filter(|s| s.stack == stack)
            .map(|s| ServiceState {
                id: s.id.clone(),
                name: format!("{stack}_{}", s.short_name),
                short_name: s.short_name.clone(),
                desired_replicas: s.spec.replicas,
                labels: s.spec.labels.clone(),
                has_healthcheck: s.spec.healthcheck,
                restart: RestartPolicy::default(),
                update_state: s.update_state.clone(),
                update_message: s.update_message.clone(),
                mounts: s
                    .spec
                    .volumes
                    .iter()
                    .map(|(v, t)| MountInfo {
                        kind: "volume".into(),
                        source: format!("{stack}_{v}"),
                        target: t.clone(),
                    })
                    .collect(),
                tasks: s.tasks.clone(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        StackSnapshot { services }
    }

    /// Files of a volume under `rel` (the whole volume when empty).
    fn files_under<'a>(
        &'a self,
        volume: &str,
        rel: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        self.volumes.get(volume).into_iter().flat_map(move |files| {
            files.iter().filter(move |(p, _)| {
                rel.is_empty() || p.as_str() == rel || p.starts_with(&format!("{rel}/"))
            })
        })
    }
}

fn no_such_file(cmd: &str, path: &str) -> ExecOutput {
    ExecOutput {
        exit_code: 1,
        stdout: String::new(),
        stderr: format!("{cmd}: can't open '{path}': No such file or directory"),
    }
}

fn done<T: Send + 'static>(r: Result<T, EngineError>) -> SwarmFuture<'static, T> {
    Box::pin(std::future::ready(r))
}

impl Swarm for FakeSwarm {
    fn check_swarm(&self) -> SwarmFuture<'_, ()> {
        done(self.gate("check_swarm".into()).and_then(|s| {
            if s.not_manager {
                Err(EngineError::NotSwarm(
                    "this Docker node is not a swarm manager: run cc-ci on a manager node".into(),
                ))
            } else {
                Ok(())
            }
        }))
    }
    fn snapshot<'a>(&'a self, stack: &'a str) -> SwarmFuture<'a, StackSnapshot> {
        done(
            self.gate(format!("snapshot {stack}"))
                .map(|s| s.snapshot(stack)),
        )
    }
    fn health_log<'a>(&'a self, container: &'a str) -> SwarmFuture<'a, Option<String>> {
        done(self.gate(format!("health_log {container}")).map(|s| {
            let (svc, t) = s.services.iter().find_map(|svc| {
                svc.tasks
                    .iter()
                    .find(|t| t.container_id.as_deref() == Some(container))
                    .map(|t| (svc, t))
            })?;
            svc.spec.healthcheck.then(|| match t.health {
                Health::Healthy => "health healthy, last healthcheck exited 0 with no output".into(),
                Health::Unhealthy => {
                    "health unhealthy, last healthcheck exited 1: wget: can't connect to remote host: Connection refused".into()
                }
                _ => "health starting, no healthcheck has finished yet".into(),
            })
        }))
    }
    fn service_logs<'a>(&'a self, service_id: &'a str, tail: u32) -> SwarmFuture<'a, String> {
        done(
            self.gate(format!("service_logs {service_id} {tail}"))
                .map(|_| String::new()),
        )
    }
    fn exec<'a>(
        &'a self,
        container: &'a str,
        cmd: &'a [&'a str],
        _timeout: Duration,
    ) -> SwarmFuture<'a, ExecOutput> {
        let line = cmd.join(" ");
        done(self.gate(format!("exec {container} {line}")).and_then(|s| {
            s.container(container)?;
            Ok(s.exec_replies.get(&line).cloned().unwrap_or_else(|| ExecOutput {
                exit_code: 126,
                stdout: String::new(),
                stderr: format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{}\": executable file not found in $PATH: unknown",
                    cmd.first().copied().unwrap_or_default()
                ),
            }))
        }))
    }
    fn write_file<'a>(
        &'a self,
        container: &'a str,
        path: &'a str,
        content: &'a str,
    ) -> SwarmFuture<'a, ExecOutput> {
        done(
            self.gate(format!("write_file {container} {path}"))
                .and_then(|mut s| {
                    match s.in_volume(container, path)? {
                        Some((vol, rel)) => {
                            s.volumes
                                .entry(vol)
                                .or_default()
                                .insert(rel, content.into());
                            Ok(ExecOutput {
                                exit_code: 0,
                                stdout: String::new(),
                                stderr: String::new(),
                            })
                        }
                        // Outside a volume the image's filesystem is read-only here, as in many images.
                        None => Ok(ExecOutput {
                            exit_code: 1,
                            stdout: String::new(),
                            stderr: format!("sh: can't create {path}: Read-only file system"),
                        }),
                    }
                }),
        )
    }
    fn read_file<'a>(&'a self, container: &'a str, path: &'a str) -> SwarmFuture<'a, ExecOutput> {
        done(
            self.gate(format!("read_file {container} {path}"))
                .and_then(|s| {
                    let found = s
                        .in_volume(container, path)?
                        .and_then(|(vol, rel)| s.volumes.get(&vol)?.get(&rel).cloned());
                    Ok(match found {
                        Some(content) => ExecOutput {
                            exit_code: 0,
                            stdout: content,
                            stderr: String::new(),
                        },
                        None => no_such_file("cat", path),
                    })
                }),
        )
    }
    fn has_data<'a>(&'a self, container: &'a str, path: &'a str) -> SwarmFuture<'a, bool> {
        done(
            self.gate(format!("has_data {container} {path}"))
                .and_then(|s| {
                    Ok(match s.in_volume(container, path)? {
                        Some((vol, rel)) => s.files_under(&vol, &rel).any(|(_, c)| !c.is_empty()),
                        None => false,
                    })
                }),
        )
    }
    fn run_probe<'a>(
        &'a self,
        _image: &'a str,
        container: &'a str,
        cmd: &'a [&'a str],
        _labels: &'a BTreeMap<String, String>,
        timeout: Duration,
    ) -> SwarmFuture<'a, ExecOutput> {
        // The probe shares the container's network: it answers what the container would.
        self.exec(container, cmd, timeout)
    }
    fn port_holders(&self) -> SwarmFuture<'_, Vec<PortHolder>> {
        done(
            self.gate("port_holders".into())
                .map(|s| s.port_holders.clone()),
        )
    }
    fn running_services_labelled<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> SwarmFuture<'a, Vec<String>> {
        done(
            self.gate(format!("running_services_labelled {key}={value}"))
                .map(|s| {
                    let mut out: Vec<String> = s
                        .others
                        .iter()
                        .filter(|(_, l, running)| {
                            *running && l.get(key).map(String::as_str) == Some(value)
                        })
                        .map(|(n, _, _)| n.clone())
                        .collect();
                    out.extend(
                        s.services
                            .iter()
                            .filter(|x| x.spec.labels.get(key).map(String::as_str) == Some(value))
                            .filter(|x| x.tasks.iter().any(TaskState::is_running))
                            .map(|x| format!("{}_{}", x.stack, x.short_name)),
                    );
                    out
                }),
        )
    }
    fn pull_image<'a>(&'a self, image: &'a str, _deadline: Duration) -> PullFuture<'a> {
        let fail = |reason: String| PullError {
            image: image.into(),
            registry: registry_of(image),
            reason,
        };
        let r = match self.gate(format!("pull_image {image}")) {
            Err(e) => Err(fail(e.to_string())),
            Ok(mut s) => match s.unpullable.get(image).cloned() {
                Some(why) => Err(fail(why)),
                None => {
                    s.pulled.push(image.into());
                    Ok(())
                }
            },
        };
        Box::pin(std::future::ready(r))
    }
    fn distribution_digest<'a>(&'a self, image: &'a str) -> SwarmFuture<'a, String> {
        done(
            self.gate(format!("distribution_digest {image}"))
                .and_then(|s| match s.unpullable.get(image) {
                    Some(why) => Err(EngineError::Api {
                        method: "GET".into(),
                        path: format!("/distribution/{image}/json"),
                        status: 404,
                        message: why.clone(),
                    }),
                    None => Ok(format!(
                        "sha256:{}",
                        hex::encode(Sha256::digest(image.as_bytes()))
                    )),
                }),
        )
    }
    fn stack_objects<'a>(&'a self, stack: &'a str) -> SwarmFuture<'a, StackObjects> {
        done(self.gate(format!("stack_objects {stack}")).map(|s| {
            let services: Vec<&FakeService> =
                s.services.iter().filter(|x| x.stack == stack).collect();
            StackObjects {
                services: services
                    .iter()
                    .map(|x| (x.id.clone(), format!("{stack}_{}", x.short_name)))
                    .collect(),
                volumes: s
                    .volumes
                    .keys()
                    .filter(|v| v.starts_with(&format!("{stack}_")))
                    .cloned()
                    .collect(),
                containers: services
                    .iter()
                    .flat_map(|x| x.tasks.iter().filter(|t| t.is_running()))
                    .filter_map(|t| t.container_id.clone())
                    .collect(),
                ..StackObjects::default()
            }
        }))
    }
    fn remove<'a>(&'a self, kind: ObjectKind, id: &'a str) -> SwarmFuture<'a, ()> {
        done(
            self.gate(format!("remove {kind:?} {id}"))
                .map(|mut s| match kind {
                    // A service's containers go with it.
                    ObjectKind::Service => s.services.retain(|x| x.id != id),
                    ObjectKind::Volume => {
                        s.volumes.remove(id);
                    }
                    ObjectKind::Container => {
                        for svc in &mut s.services {
                            for t in svc
                                .tasks
                                .iter_mut()
                                .filter(|t| t.container_id.as_deref() == Some(id))
                            {
                                t.state = "shutdown".into();
                                t.desired_state = "shutdown".into();
                            }
                        }
                    }
                    ObjectKind::Network | ObjectKind::Secret | ObjectKind::Config => {}
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Convergence, convergence};

    fn spec(image: &str) -> BTreeMap<String, ServiceSpec> {
        BTreeMap::from([(
            "app".to_string(),
            ServiceSpec {
                image: image.into(),
                volumes: vec![("data".into(), "/data".into())],
                healthcheck: true,
                replicas: Some(1),
                ..ServiceSpec::default()
            },
        )])
    }

    fn running_container(f: &FakeSwarm) -> String {
        let s = f.state();
        let t = s.services[0].tasks.iter().find(|t| t.is_running()).unwrap();
        t.container_id.clone().unwrap()
    }

    #[tokio::test]
    async fn updates_replace_the_task_and_keep_volumes_like_swarm() {
        let f = FakeSwarm::new();
        f.deploy_stack("st", &spec("img:1"));
        let c1 = running_container(&f);
        let w = f.write_file(&c1, "/data/x", "v").await.unwrap();
        assert_eq!(w.exit_code, 0);
        // The same spec again changes nothing (no new task).
        f.deploy_stack("st", &spec("img:1"));
        assert_eq!(running_container(&f), c1);
        f.deploy_stack("st", &spec("img:2"));
        let c2 = running_container(&f);
        assert_ne!(c1, c2);
        assert_eq!(f.read_file(&c2, "/data/x").await.unwrap().stdout, "v");
        assert!(f.has_data(&c2, "/data").await.unwrap());
        assert!(!f.has_data(&c2, "/data/y").await.unwrap());
        // The old container is gone: exec into it fails as the engine answers.
        assert!(f.read_file(&c1, "/data/x").await.is_err());
        let snap = Swarm::snapshot(&f, "st").await.unwrap();
        assert_eq!(convergence(&snap), Convergence::Converged);
        assert_eq!(snap.services[0].update_state.as_deref(), Some("completed"));
    }

    #[tokio::test]
    async fn a_failing_update_is_rolled_back_and_the_old_task_keeps_serving() {
        let f = FakeSwarm::new();
        f.deploy_stack("st", &spec("img:1"));
        let c1 = running_container(&f);
        f.state().rolls_back.insert("app".into());
        f.deploy_stack("st", &spec("img:2"));
        assert_eq!(running_container(&f), c1);
        let s = f.state();
        assert_eq!(s.services[0].spec.image, "img:1");
        assert_eq!(
            s.services[0].update_state.as_deref(),
            Some("rollback_completed")
        );
        assert!(s.services[0].tasks.iter().any(|t| t.state == "failed"));
    }

    #[tokio::test]
    async fn an_engine_that_is_away_fails_every_call_as_unreachable_or_hung() {
        let f = FakeSwarm::new();
        f.state().down = Some(Outage::Unreachable);
        let e = Swarm::check_swarm(&f).await.unwrap_err();
        assert!(e.is_unreachable() && !e.is_hung(), "{e}");
        f.state().down = Some(Outage::Hung);
        let e = Swarm::snapshot(&f, "st").await.unwrap_err();
        assert!(e.is_hung(), "{e}");
        let p = f.pull_image("img:1", Duration::from_secs(1)).await;
        assert!(p.is_err());
        f.state().down = None;
        f.state().not_manager = true;
        let e = Swarm::check_swarm(&f).await.unwrap_err();
        assert!(matches!(e, EngineError::NotSwarm(_)), "{e}");
    }
}
