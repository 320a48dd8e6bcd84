//! The models decode what this machine's engine (docker.io 20.10, API 1.41) answers; the
//! fixtures are its answers, captured from a small stack (a service with a healthcheck, a
//! volume, a published port and a restart policy; a secret and a config) and backup-bot-two's
//! task history. And a newer engine's unknown values are left out instead of failing.

use cc_ci_engine_api::{
    Config, ContainerInspectResponse, ContainerSummary, Decoded, DistributionInspectResponse,
    ExecInspectResponse, HealthStatusEnum, LocalNodeState, MountTypeEnum, Network, Secret, Service,
    SystemInfo, Task, TaskSpecRestartPolicyConditionEnum, TaskState, Volume, VolumeListResponse,
    decode, decode_list, labels::NAMESPACE_LABEL,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every answer decodes without leaving anything out: the models are this engine's.
fn strict<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let d: Decoded<T> = decode(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(d.skipped.is_empty(), "{name}: {:?}", d.skipped);
    d.value
}

#[test]
fn services() {
    let s: Vec<Service> = strict("services.json");
    let spec = s[0].spec.as_ref().unwrap();
    assert_eq!(spec.name.as_deref(), Some("ccmodelsfx_app"));
    let labels = spec.labels.as_ref().unwrap();
    assert_eq!(labels[NAMESPACE_LABEL], "ccmodelsfx");
    let task = spec.task_template.as_ref().unwrap();
    let c = task.container_spec.as_ref().unwrap();
    let test = c.health_check.as_ref().unwrap().test.as_ref().unwrap();
    assert_eq!(test[0], "CMD");
    let m = &c.mounts.as_ref().unwrap()[0];
    assert_eq!(m.typ, Some(MountTypeEnum::VOLUME));
    assert_eq!(m.source.as_deref(), Some("ccmodelsfx_data"));
    let r = task.restart_policy.as_ref().unwrap();
    assert_eq!(
        r.condition,
        Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE)
    );
    assert_eq!(r.max_attempts, Some(3));
    let mode = spec.mode.as_ref().unwrap();
    assert_eq!(mode.replicated.as_ref().unwrap().replicas, Some(1));
    let ports = s[0].endpoint.as_ref().unwrap().ports.as_ref().unwrap();
    assert_eq!(ports[0].published_port, Some(18099));
}

#[test]
fn tasks_and_their_history() {
    let t: Vec<Task> = strict("tasks.json");
    let status = t[0].status.as_ref().unwrap();
    assert_eq!(status.state, Some(TaskState::RUNNING));
    assert!(
        status
            .container_status
            .as_ref()
            .unwrap()
            .container_id
            .is_some()
    );
    assert!(t[0].created_at.is_some());
    let h: Vec<Task> = strict("tasks_history.json");
    let failed: Vec<&Task> = h
        .iter()
        .filter(|t| t.status.as_ref().unwrap().state == Some(TaskState::FAILED))
        .collect();
    assert!(!failed.is_empty());
    let s = failed[0].status.as_ref().unwrap();
    assert_eq!(s.container_status.as_ref().unwrap().exit_code, Some(255));
    assert_eq!(s.err.as_deref(), Some("task: non-zero exit (255)"));
    assert_eq!(failed[0].desired_state, Some(TaskState::SHUTDOWN));
}

#[test]
fn containers_networks_secrets_configs_volumes() {
    let c: Vec<ContainerSummary> = strict("containers.json");
    assert!(c[0].status.as_deref().unwrap().contains("(healthy)"));
    assert_eq!(c[0].labels.as_ref().unwrap()[NAMESPACE_LABEL], "ccmodelsfx");
    let n: Vec<Network> = strict("networks.json");
    assert_eq!(n[0].name.as_deref(), Some("ccmodelsfx_default"));
    let s: Vec<Secret> = strict("secrets.json");
    assert_eq!(
        s[0].spec.as_ref().unwrap().name.as_deref(),
        Some("ccmodelsfx_secret_v1")
    );
    let c: Vec<Config> = strict("configs.json");
    assert_eq!(
        c[0].spec.as_ref().unwrap().name.as_deref(),
        Some("ccmodelsfx_conf_v1")
    );
    let v: VolumeListResponse = strict("volumes.json");
    assert_eq!(v.volumes[0].name, "ccmodelsfx_data");
    assert_eq!(v.volumes[0].labels[NAMESPACE_LABEL], "ccmodelsfx");
    // `docker inspect --type volume`, as the stand-in reads it.
    let v: Vec<Volume> = strict("volume_inspect_cli.json");
    assert!(v[0].mountpoint.ends_with("/ccmodelsfx_data/_data"));
    let n: Network = strict("network_proxy.json");
    assert_eq!(
        (n.driver.as_deref(), n.scope.as_deref()),
        (Some("overlay"), Some("swarm"))
    );
}

#[test]
fn info_container_exec_distribution() {
    let i: SystemInfo = strict("info.json");
    let swarm = i.swarm.unwrap();
    assert_eq!(swarm.local_node_state, Some(LocalNodeState::ACTIVE));
    assert_eq!(swarm.control_available, Some(true));
    let c: ContainerInspectResponse = strict("container_inspect.json");
    let health = c.state.unwrap().health.unwrap();
    assert_eq!(health.status, Some(HealthStatusEnum::HEALTHY));
    assert_eq!(health.log.unwrap().last().unwrap().exit_code, Some(0));
    let e: ExecInspectResponse = strict("exec_inspect.json");
    assert_eq!(e.exit_code, Some(3));
    let d: DistributionInspectResponse = strict("distribution.json");
    assert!(d.descriptor.digest.unwrap().starts_with("sha256:"));
}

/// The captured answers with values a newer engine could send (new task states, a new mount
/// type, a new update state, new fields, an optional field gone): still decoded, the unknown
/// text kept by path, nothing else lost.
#[test]
fn a_newer_engines_values_are_left_out_not_fatal() {
    let mut tasks: serde_json::Value =
        serde_json::from_slice(&fixture("tasks_history.json")).unwrap();
    tasks[0]["Status"]["State"] = "hibernating".into();
    tasks[0]["DesiredState"] = "parked".into();
    tasks[0]["Status"]["NewField"] = serde_json::json!({"x": 1});
    tasks[1]
        .as_object_mut()
        .unwrap()
        .remove("CreatedAt")
        .unwrap();
    let t: Vec<Decoded<Task>> = decode_list(tasks.to_string().as_bytes()).unwrap();
    let status = t[0].value.status.as_ref().unwrap();
    assert_eq!(status.state, None);
    assert_eq!(
        t[0].text(status.state, "Status.State").as_deref(),
        Some("hibernating")
    );
    assert_eq!(
        t[0].text(t[0].value.desired_state, "DesiredState")
            .as_deref(),
        Some("parked")
    );
    assert_eq!(t[0].skipped.len(), 2);
    assert!(status.container_status.is_some());
    assert!(t[1].skipped.is_empty());
    assert_eq!(t[1].value.created_at, None);

    let mut services: serde_json::Value =
        serde_json::from_slice(&fixture("services.json")).unwrap();
    let spec = &mut services[0]["Spec"];
    spec["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Type"] = "image".into();
    spec["TaskTemplate"]["RestartPolicy"]["Condition"] = "sometimes".into();
    services[0]["UpdateStatus"] = serde_json::json!({"State": "reticulating", "Message": "m"});
    let s: Vec<Decoded<Service>> = decode_list(services.to_string().as_bytes()).unwrap();
    let s = &s[0];
    assert_eq!(
        s.raw("Spec.TaskTemplate.ContainerSpec.Mounts[0].Type"),
        Some("image")
    );
    assert_eq!(
        s.raw("Spec.TaskTemplate.RestartPolicy.Condition"),
        Some("sometimes")
    );
    assert_eq!(s.raw("UpdateStatus.State"), Some("reticulating"));
    let spec = s.value.spec.as_ref().unwrap();
    let mount = &spec
        .task_template
        .as_ref()
        .unwrap()
        .container_spec
        .as_ref()
        .unwrap()
        .mounts
        .as_ref()
        .unwrap()[0];
    assert_eq!(mount.source.as_deref(), Some("ccmodelsfx_data"));

    let mut info: serde_json::Value = serde_json::from_slice(&fixture("info.json")).unwrap();
    info["Swarm"]["LocalNodeState"] = "degraded".into();
    info["CgroupDriver"] = "somethingnew".into();
    let i: Decoded<SystemInfo> = decode(info.to_string().as_bytes()).unwrap();
    let swarm = i.value.swarm.as_ref().unwrap();
    assert_eq!(swarm.local_node_state, None);
    assert_eq!(swarm.control_available, Some(true));
    assert_eq!(i.raw("Swarm.LocalNodeState"), Some("degraded"));

    let mut c: serde_json::Value =
        serde_json::from_slice(&fixture("container_inspect.json")).unwrap();
    c["State"]["Health"]["Status"] = "wobbly".into();
    let c: Decoded<ContainerInspectResponse> = decode(c.to_string().as_bytes()).unwrap();
    assert_eq!(c.raw("State.Health.Status"), Some("wobbly"));
    assert!(c.value.state.unwrap().health.unwrap().log.is_some());
}
