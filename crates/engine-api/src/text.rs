//! The enum fields cc-ci compares, read as text in one place for both sides: the model's value
//! when the 1.41 models know it, else what the engine sent (`Decoded::text`), so a newer
//! engine's value is compared as it is spelled instead of failing the answer or vanishing.

use crate::{ContainerInspectResponse, Decoded, Service, SystemInfo, Task};

impl Decoded<Task> {
    /// `Status.State`: `running`, `failed`, ... (empty when absent).
    pub fn state(&self) -> String {
        let known = self.value.status.as_ref().and_then(|s| s.state);
        self.text(known, "Status.State").unwrap_or_default()
    }

    /// `DesiredState` (empty when absent).
    pub fn desired_state(&self) -> String {
        self.text(self.value.desired_state, "DesiredState")
            .unwrap_or_default()
    }
}

impl Decoded<Service> {
    /// `UpdateStatus.State`, when the service has an update status.
    pub fn update_state(&self) -> Option<String> {
        let known = self.value.update_status.as_ref().and_then(|u| u.state);
        self.text(known, "UpdateStatus.State")
    }

    /// `Spec.TaskTemplate.RestartPolicy.Condition`, when set.
    pub fn restart_condition(&self) -> Option<String> {
        let known = self
            .value
            .spec
            .as_ref()
            .and_then(|s| s.task_template.as_ref()?.restart_policy.as_ref()?.condition);
        self.text(known, "Spec.TaskTemplate.RestartPolicy.Condition")
    }

    /// The container spec's mounts (`Spec.TaskTemplate.ContainerSpec.Mounts`), empty when none.
    pub fn mounts(&self) -> &[crate::Mount] {
        self.value
            .spec
            .as_ref()
            .and_then(|s| {
                s.task_template
                    .as_ref()?
                    .container_spec
                    .as_ref()?
                    .mounts
                    .as_deref()
            })
            .unwrap_or_default()
    }

    /// The type of the `i`th mount of the container spec (`volume`, `bind`, ...).
    pub fn mount_type(&self, i: usize) -> Option<String> {
        let known = self.mounts().get(i).and_then(|m| m.typ);
        self.text(
            known,
            &format!("Spec.TaskTemplate.ContainerSpec.Mounts[{i}].Type"),
        )
    }
}

impl Decoded<SystemInfo> {
    /// `Swarm.LocalNodeState` (`active`, `inactive`, ...; empty when absent).
    pub fn local_node_state(&self) -> String {
        let known = self.value.swarm.as_ref().and_then(|s| s.local_node_state);
        self.text(known, "Swarm.LocalNodeState").unwrap_or_default()
    }
}

impl Decoded<ContainerInspectResponse> {
    /// `State.Health.Status` (`healthy`, `starting`, ...), when the container has a healthcheck.
    pub fn health_status(&self) -> Option<String> {
        let known = self
            .value
            .state
            .as_ref()
            .and_then(|s| s.health.as_ref()?.status);
        self.text(known, "State.Health.Status")
    }
}

#[cfg(test)]
mod tests {
    use crate::{Decoded, Service, Task, decode};

    #[test]
    fn known_and_unknown_values_read_alike() {
        let t: Decoded<Task> =
            decode(br#"{"DesiredState":"running","Status":{"State":"hibernating"}}"#).unwrap();
        assert_eq!(
            (t.desired_state(), t.state()),
            ("running".into(), "hibernating".into())
        );
        let t: Decoded<Task> = decode(br#"{}"#).unwrap();
        assert_eq!(
            (t.desired_state(), t.state()),
            (String::new(), String::new())
        );
        let s: Decoded<Service> = decode(
            br#"{"UpdateStatus":{"State":"completed"},"Spec":{"TaskTemplate":{
                "RestartPolicy":{"Condition":"whenever"},
                "ContainerSpec":{"Mounts":[{"Type":"bind"},{"Type":"image"}]}}}}"#,
        )
        .unwrap();
        assert_eq!(s.update_state().as_deref(), Some("completed"));
        assert_eq!(s.restart_condition().as_deref(), Some("whenever"));
        assert_eq!(s.mount_type(0).as_deref(), Some("bind"));
        assert_eq!(s.mount_type(1).as_deref(), Some("image"));
        assert_eq!(s.mount_type(2), None);
    }
}
