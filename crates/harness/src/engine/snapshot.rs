//! The engine's models (services, tasks, containers) turned into the checks' picture of a stack.
//! Pure, so it is tested with answers captured from a real engine.
//!
//! Enum fields are read as text (`cc_ci_engine_api`'s `Decoded<Task>::state` and the like): a value a newer engine added (and the
//! 1.41 models do not know) reaches the checks as the engine spelled it, as it did before the
//! models, so a task in an unknown state is "not running" rather than a failed run.

use std::collections::BTreeMap;

use cc_ci_engine_api::{ContainerSummary, Decoded, Service, Task, timestamp_text};

use crate::checks::{Health, MountInfo, RestartPolicy, ServiceState, StackSnapshot, TaskState};

pub(super) fn stack_snapshot(
    stack: &str,
    services: &[Decoded<Service>],
    tasks: &[Decoded<Task>],
    containers: &[ContainerSummary],
) -> StackSnapshot {
    let health: BTreeMap<&str, Health> = containers
        .iter()
        .filter_map(|c| {
            let status = c.status.as_deref().unwrap_or_default();
            Some((c.id.as_deref()?, Health::from_status_text(status)))
        })
        .collect();
    let prefix = format!("{stack}_");
    let mut out = StackSnapshot::default();
    for s in services {
        let id = s.value.id.clone().unwrap_or_default();
        let mut svc_tasks: Vec<TaskState> = tasks
            .iter()
            .filter(|t| t.value.service_id.as_deref() == Some(id.as_str()))
            .map(|t| task_state(t, &health))
            .collect();
        svc_tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        out.services.push(service_state(s, id, &prefix, svc_tasks));
    }
    out.services.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn service_state(
    s: &Decoded<Service>,
    id: String,
    prefix: &str,
    tasks: Vec<TaskState>,
) -> ServiceState {
    let spec = s.value.spec.clone().unwrap_or_default();
    let name = spec.name.unwrap_or_default();
    let template = spec.task_template.unwrap_or_default();
    let container = template.container_spec.unwrap_or_default();
    let has_healthcheck = container
        .health_check
        .and_then(|h| h.test)
        .is_some_and(|t| t.first().is_some_and(|f| f != "NONE"));
    let restart = template
        .restart_policy
        .map(|r| RestartPolicy {
            condition: s.restart_condition().unwrap_or_else(|| "any".into()),
            max_attempts: r
                .max_attempts
                .and_then(|n| u64::try_from(n).ok())
                .filter(|n| *n > 0),
        })
        .unwrap_or_default();
    let update = s.value.update_status.as_ref();
    ServiceState {
        short_name: name.strip_prefix(prefix).unwrap_or(&name).to_string(),
        id,
        desired_replicas: spec
            .mode
            .and_then(|m| m.replicated)
            .map(|r| r.replicas.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)),
        labels: spec.labels.unwrap_or_default().into_iter().collect(),
        has_healthcheck,
        restart,
        update_state: s.update_state(),
        update_message: update.and_then(|u| u.message.clone()).unwrap_or_default(),
        mounts: container
            .mounts
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, m)| MountInfo {
                kind: s.mount_type(i).unwrap_or_default(),
                source: m.source.clone().unwrap_or_default(),
                target: m.target.clone().unwrap_or_default(),
            })
            .collect(),
        name,
        tasks,
    }
}

fn task_state(t: &Decoded<Task>, health: &BTreeMap<&str, Health>) -> TaskState {
    let status = t.value.status.clone().unwrap_or_default();
    let container = status.container_status.unwrap_or_default();
    let cid = container.container_id;
    TaskState {
        id: t.value.id.clone().unwrap_or_default(),
        slot: t.value.slot.and_then(|n| u64::try_from(n).ok()),
        desired_state: t.desired_state(),
        state: t.state(),
        message: status.message.unwrap_or_default(),
        err: status.err.unwrap_or_default(),
        exit_code: container.exit_code,
        health: cid
            .as_deref()
            .and_then(|c| health.get(c).copied())
            .unwrap_or(Health::Unknown),
        container_id: cid,
        created_at: t
            .value
            .created_at
            .as_ref()
            .map(timestamp_text)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Convergence, convergence};

    // Answers captured from this machine's engine (crates/engine-api/tests/fixtures): a stack
    // `ccmodelsfx` whose one service has a healthcheck, a volume and `on-failure` × 3.
    const SERVICES: &[u8] = include_bytes!("../../../engine-api/tests/fixtures/services.json");
    const TASKS: &[u8] = include_bytes!("../../../engine-api/tests/fixtures/tasks.json");
    const CONTAINERS: &[u8] = include_bytes!("../../../engine-api/tests/fixtures/containers.json");

    fn snapshot_of(services: &[u8], tasks: &[u8]) -> StackSnapshot {
        let services = cc_ci_engine_api::decode_list(services).unwrap();
        let tasks = cc_ci_engine_api::decode_list(tasks).unwrap();
        let containers: Vec<ContainerSummary> = cc_ci_engine_api::decode_list(CONTAINERS)
            .unwrap()
            .into_iter()
            .map(|d| d.value)
            .collect();
        stack_snapshot("ccmodelsfx", &services, &tasks, &containers)
    }

    #[test]
    fn a_real_engines_answers_make_a_converged_snapshot() {
        let snap = snapshot_of(SERVICES, TASKS);
        let s = snap.service("app").unwrap();
        assert_eq!(s.name, "ccmodelsfx_app");
        assert_eq!(s.desired_replicas, Some(1));
        assert!(s.has_healthcheck);
        assert_eq!(s.restart.condition, "on-failure");
        assert_eq!(s.restart.max_attempts, Some(3));
        assert_eq!(s.labels["backupbot.backup"], "true");
        let m: Vec<_> = s.volume_mounts().collect();
        assert_eq!(
            (m[0].source.as_str(), m[0].target.as_str()),
            ("ccmodelsfx_data", "/data")
        );
        let t = &s.tasks[0];
        assert_eq!(
            (t.state.as_str(), t.desired_state.as_str()),
            ("running", "running")
        );
        assert_eq!(t.health, Health::Healthy);
        assert_eq!(t.slot, Some(1));
        assert!(t.created_at.ends_with('Z') && t.created_at.len() == 30);
        assert_eq!(convergence(&snap), Convergence::Converged);
    }

    /// A newer engine's values the 1.41 models do not know: the snapshot still comes, with the
    /// engine's text, and the checks judge it as they did before (not running, not settled).
    #[test]
    fn unknown_states_reach_the_checks_as_the_engine_spelled_them() {
        let mut tasks: serde_json::Value = serde_json::from_slice(TASKS).unwrap();
        tasks[0]["Status"]["State"] = "hibernating".into();
        let mut services: serde_json::Value = serde_json::from_slice(SERVICES).unwrap();
        services[0]["UpdateStatus"] = serde_json::json!({"State": "reticulating"});
        services[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Type"] = "image".into();
        let snap = snapshot_of(
            services.to_string().as_bytes(),
            tasks.to_string().as_bytes(),
        );
        let s = snap.service("app").unwrap();
        assert_eq!(s.tasks[0].state, "hibernating");
        assert_eq!(s.update_state.as_deref(), Some("reticulating"));
        assert_eq!(s.mounts[0].kind, "image");
        assert_eq!(s.volume_mounts().count(), 0);
        match convergence(&snap) {
            Convergence::Pending(why) => assert!(why.contains("app"), "{why}"),
            other => panic!("expected pending, got {other:?}"),
        }
    }
}
