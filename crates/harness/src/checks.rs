//! What the generic checks mean, decided from a snapshot of the swarm. Pure: every function here
//! takes data and returns a decision, so each rule is unit-tested without Docker.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No healthcheck, or the container is gone.
    Unknown,
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// Docker's container list shows health in the status text: `Up 3 seconds (healthy)`.
    pub fn from_status_text(status: &str) -> Health {
        if status.contains("(healthy)") {
            Health::Healthy
        } else if status.contains("(unhealthy)") {
            Health::Unhealthy
        } else if status.contains("(health: starting)") {
            Health::Starting
        } else {
            Health::Unknown
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MountInfo {
    pub kind: String,
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskState {
    pub id: String,
    pub slot: Option<u64>,
    pub desired_state: String,
    pub state: String,
    pub message: String,
    pub err: String,
    pub exit_code: Option<i64>,
    pub health: Health,
    pub container_id: Option<String>,
    pub created_at: String,
}

impl TaskState {
    pub fn is_running(&self) -> bool {
        self.state == "running" && self.desired_state == "running"
    }
    /// An attempt that ended on its own: failed, rejected, or exited (`complete`) — for a
    /// long-running service every one of them is a restart. (A container killed because it was
    /// unhealthy often exits 0 and shows as `complete`.)
    fn is_failed(&self) -> bool {
        matches!(self.state.as_str(), "failed" | "rejected" | "complete")
    }
    fn describe(&self) -> String {
        let mut s = format!("task {} is {}", short(&self.id), self.state);
        if matches!(self.state.as_str(), "running" | "starting") {
            match self.health {
                Health::Starting => s.push_str(" (health: starting)"),
                Health::Unhealthy => s.push_str(" (unhealthy)"),
                _ => {}
            }
        }
        if !self.err.is_empty() {
            s.push_str(&format!(": {}", self.err));
        } else if let Some(code) = self.exit_code.filter(|c| *c != 0) {
            s.push_str(&format!(" (exit code {code})"));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceState {
    pub id: String,
    /// Full swarm name, `<stack>_<service>`.
    pub name: String,
    /// The compose service name.
    pub short_name: String,
    /// None for global services.
    pub desired_replicas: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub has_healthcheck: bool,
    pub restart: RestartPolicy,
    pub update_state: Option<String>,
    pub update_message: String,
    pub mounts: Vec<MountInfo>,
    /// Oldest first.
    pub tasks: Vec<TaskState>,
}

/// A service's `deploy.restart_policy`, as far as it decides whether the swarm restarts a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// `any` (the default), `on-failure` or `none`.
    pub condition: String,
    /// `None` = unlimited (the swarm's 0).
    pub max_attempts: Option<u64>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            condition: "any".into(),
            max_attempts: None,
        }
    }
}

/// Desired states of a task the swarm still means to run (`ready`: a restart waiting out its delay).
fn is_live(t: &TaskState) -> bool {
    !matches!(
        t.desired_state.as_str(),
        "shutdown" | "remove" | "complete" | "failed" | "rejected" | "orphaned"
    )
}

/// Why the swarm will not start another task for `s`, when its restart policy says it has given
/// up: fewer live tasks than wanted, tasks that ended, and a policy that does not replace them.
pub fn restarts_given_up(s: &ServiceState) -> Option<String> {
    let want = s.desired_replicas.unwrap_or(1);
    let live = s.tasks.iter().filter(|t| is_live(t)).count() as u64;
    if want == 0 || live >= want {
        return None;
    }
    let ended: Vec<&TaskState> = s.tasks.iter().filter(|t| t.is_failed()).collect();
    let last = ended.last()?;
    let p = &s.restart;
    let why = if p.condition == "none" {
        "its restart_policy condition is `none`, so the swarm does not restart it".to_string()
    } else if p.condition == "on-failure" && last.state == "complete" {
        "it exited successfully and its restart_policy condition `on-failure` restarts only failures"
            .to_string()
    } else if let Some(n) = p.max_attempts {
        format!(
            "its restart_policy max_attempts ({n}) is used up after {} attempts",
            ended.len()
        )
    } else {
        return None;
    };
    Some(format!(
        "service {}: the swarm stopped restarting it: {why}; last: {}",
        s.short_name,
        last.describe()
    ))
}

impl ServiceState {
    pub fn running_tasks(&self) -> impl Iterator<Item = &TaskState> {
        self.tasks.iter().filter(|t| t.is_running())
    }

    /// Named volumes mounted by this service: (volume name, mount target).
    pub fn volume_mounts(&self) -> impl Iterator<Item = &MountInfo> {
        self.mounts
            .iter()
            .filter(|m| m.kind == "volume" && !m.source.is_empty())
    }

    fn update_settled(&self) -> bool {
        matches!(
            self.update_state.as_deref(),
            None | Some("") | Some("completed") | Some("rollback_completed")
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackSnapshot {
    pub services: Vec<ServiceState>,
}

impl StackSnapshot {
    pub fn service(&self, short_name: &str) -> Option<&ServiceState> {
        self.services.iter().find(|s| s.short_name == short_name)
    }

    /// Ids of the running tasks of every service, for stability comparisons.
    pub fn running_task_ids(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.services
            .iter()
            .map(|s| {
                (
                    s.short_name.clone(),
                    s.running_tasks().map(|t| t.id.clone()).collect(),
                )
            })
            .collect()
    }
}

/// Where a deployment stands on its way to convergence.
#[derive(Debug, Clone, PartialEq)]
pub enum Convergence {
    /// Every service at its desired replicas, running, healthy where checked, update settled.
    Converged,
    /// Not there yet; the text names what is pending (reported if the deadline passes).
    Pending(String),
    /// It will not get there: the text names the service and the cause.
    Failed(String),
}

/// Failed task attempts of one service after which waiting longer is pointless. Not lower:
/// apps commonly exit a few times while their database starts.
pub const FAILED_TASKS_LIMIT: usize = 5;

pub fn convergence(snapshot: &StackSnapshot) -> Convergence {
    if snapshot.services.is_empty() {
        return Convergence::Pending("the stack has no services yet".into());
    }
    let mut pending = Vec::new();
    for s in &snapshot.services {
        if matches!(
            s.update_state.as_deref(),
            Some("paused") | Some("rollback_paused")
        ) {
            return Convergence::Failed(format!(
                "service {}: update {} ({})",
                s.short_name,
                s.update_state.as_deref().unwrap_or_default(),
                s.update_message
            ));
        }
        let running: Vec<&TaskState> = s.running_tasks().collect();
        let desired = s.desired_replicas;
        let enough = match desired {
            Some(n) => running.len() as u64 == n,
            None => !running.is_empty(),
        };
        let healthy = !s.has_healthcheck || running.iter().all(|t| t.health == Health::Healthy);
        if enough && healthy && s.update_settled() {
            continue;
        }
        if !(enough && healthy)
            && let Some(why) = restarts_given_up(s)
        {
            return Convergence::Failed(why);
        }
        let failed: Vec<&TaskState> = s.tasks.iter().filter(|t| t.is_failed()).collect();
        if failed.len() >= FAILED_TASKS_LIMIT && !(enough && healthy) {
            let last = failed.last().map(|t| t.describe()).unwrap_or_default();
            return Convergence::Failed(format!(
                "service {}: {} task attempts failed; last: {}",
                s.short_name,
                failed.len(),
                last
            ));
        }
        let want = desired
            .map(|n| n.to_string())
            .unwrap_or_else(|| "global".into());
        let mut why = format!(
            "service {}: {}/{} running",
            s.short_name,
            running.len(),
            want
        );
        if !healthy {
            why.push_str(", not healthy");
        }
        if !s.update_settled() {
            why.push_str(&format!(
                ", update {}",
                s.update_state.as_deref().unwrap_or_default()
            ));
        }
        if let Some(t) = s
            .tasks
            .iter()
            .rev()
            .find(|t| !t.is_running() || t.health != Health::Healthy)
        {
            why.push_str(&format!("; latest {}", t.describe()));
        }
        pending.push(why);
    }
    if pending.is_empty() {
        Convergence::Converged
    } else {
        Convergence::Pending(pending.join("; "))
    }
}

/// Services whose running tasks changed between two snapshots taken over the stability window
/// (a restart replaces the task), with what happened to the old task.
pub fn stability_violations(before: &StackSnapshot, after: &StackSnapshot) -> Vec<String> {
    let b = before.running_task_ids();
    let mut out = Vec::new();
    for s in &after.services {
        let now: BTreeSet<String> = s.running_tasks().map(|t| t.id.clone()).collect();
        let was = b.get(&s.short_name).cloned().unwrap_or_default();
        if now != was {
            let gone: Vec<String> = s
                .tasks
                .iter()
                .filter(|t| was.contains(&t.id) && !t.is_running())
                .map(|t| t.describe())
                .collect();
            let detail = if gone.is_empty() {
                "its running tasks were replaced".to_string()
            } else {
                gone.join("; ")
            };
            out.push(format!(
                "service {} restarted during the stability window: {detail}",
                s.short_name
            ));
        }
        if s.has_healthcheck && s.running_tasks().any(|t| t.health == Health::Unhealthy) {
            out.push(format!(
                "service {} became unhealthy during the stability window",
                s.short_name
            ));
        }
    }
    out
}

/// The labels abra writes on the `app` service.
pub struct AbraLabels<'a> {
    pub version: Option<&'a str>,
    pub chaos: Option<&'a str>,
    pub chaos_version: Option<&'a str>,
}

pub fn abra_labels<'a>(snapshot: &'a StackSnapshot, stack: &str) -> Result<AbraLabels<'a>, String> {
    let app = snapshot.service("app").ok_or_else(|| {
        format!(
            "the stack has no service named `app`, so abra's labels (coop-cloud.{stack}.version) are missing; services: {}",
            snapshot
                .services
                .iter()
                .map(|s| s.short_name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let get = |k: &str| {
        app.labels
            .get(&format!("coop-cloud.{stack}.{k}"))
            .map(String::as_str)
    };
    Ok(AbraLabels {
        version: get("version"),
        chaos: get("chaos"),
        chaos_version: get("chaos-version"),
    })
}

/// What a deployment is expected to be running.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected<'a> {
    /// A release deployed by tag.
    Release(&'a str),
    /// A chaos deploy of this commit.
    Commit(&'a str),
}

/// The version-label check: present, and equal to what was deployed. For a chaos deploy the
/// `chaos-version` label must name the commit (abra writes a short hash, so a prefix of the full one).
pub fn check_version_labels(
    snapshot: &StackSnapshot,
    stack: &str,
    expected: &Expected,
) -> Result<String, String> {
    let labels = abra_labels(snapshot, stack)?;
    let version = labels
        .version
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("label coop-cloud.{stack}.version is missing on service app"))?;
    match expected {
        Expected::Release(tag) => {
            if version == *tag {
                Ok(format!("coop-cloud.{stack}.version={version}"))
            } else {
                Err(format!(
                    "label coop-cloud.{stack}.version is `{version}` but `{tag}` was deployed"
                ))
            }
        }
        Expected::Commit(sha) => {
            let cv = labels
                .chaos_version
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!(
                        "label coop-cloud.{stack}.chaos-version is missing after a chaos deploy"
                    )
                })?;
            if labels.chaos != Some("true") {
                return Err(format!(
                    "label coop-cloud.{stack}.chaos is `{}`, expected `true` after a chaos deploy",
                    labels.chaos.unwrap_or("")
                ));
            }
            if let Some(hash) = cv.strip_suffix("+U") {
                return Err(format!(
                    "label coop-cloud.{stack}.chaos-version is `{cv}`: abra saw uncommitted changes in the checkout of {hash}, so what runs is not exactly commit {}",
                    short(sha)
                ));
            }
            if cv.len() >= 7 && sha.starts_with(cv) {
                Ok(format!(
                    "version={version}, chaos-version={cv} (commit {})",
                    short(sha)
                ))
            } else {
                Err(format!(
                    "label coop-cloud.{stack}.chaos-version is `{cv}`, which is not commit {}: the commit under test is not what runs",
                    short(sha)
                ))
            }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn task(id: &str, state: &str, health: Health) -> TaskState {
        TaskState {
            id: id.into(),
            slot: Some(1),
            desired_state: if state == "running" {
                "running".into()
            } else {
                "shutdown".into()
            },
            state: state.into(),
            message: String::new(),
            err: String::new(),
            exit_code: None,
            health,
            container_id: Some(format!("c{id}")),
            created_at: id.into(),
        }
    }

    pub fn service(name: &str, tasks: Vec<TaskState>) -> ServiceState {
        ServiceState {
            id: format!("id-{name}"),
            name: format!("st_{name}"),
            short_name: name.into(),
            desired_replicas: Some(1),
            labels: BTreeMap::new(),
            has_healthcheck: true,
            restart: RestartPolicy::default(),
            update_state: None,
            update_message: String::new(),
            mounts: vec![],
            tasks,
        }
    }

    fn snap(services: Vec<ServiceState>) -> StackSnapshot {
        StackSnapshot { services }
    }

    #[test]
    fn a_service_the_swarm_gave_up_on_fails_at_once() {
        let ended = |id: &str, state: &str, code: i64| {
            let mut t = task(id, state, Health::Unknown);
            t.exit_code = Some(code);
            t
        };
        // condition none: one ended task and nothing live.
        let mut s = service("app", vec![ended("1", "failed", 1)]);
        s.restart.condition = "none".into();
        match convergence(&snap(vec![s.clone()])) {
            Convergence::Failed(w) => assert!(
                w.contains("service app") && w.contains("`none`") && w.contains("exit code 1"),
                "{w}"
            ),
            other => panic!("{other:?}"),
        }
        // Still live (a restart waiting out its delay): not given up.
        let mut waiting = task("2", "new", Health::Unknown);
        waiting.desired_state = "ready".into();
        s.tasks.push(waiting);
        assert!(restarts_given_up(&s).is_none());
        // on-failure: a failure is restarted, a success is not.
        let mut s = service("app", vec![ended("1", "failed", 1)]);
        s.restart.condition = "on-failure".into();
        assert!(restarts_given_up(&s).is_none());
        s.tasks.push(ended("2", "complete", 0));
        assert!(restarts_given_up(&s).unwrap().contains("on-failure"));
        // max_attempts used up.
        let mut s = service(
            "app",
            vec![
                ended("1", "failed", 1),
                ended("2", "failed", 1),
                ended("3", "failed", 1),
            ],
        );
        s.restart.max_attempts = Some(2);
        let w = restarts_given_up(&s).unwrap();
        assert!(
            w.contains("max_attempts (2)") && w.contains("3 attempts"),
            "{w}"
        );
        // The default policy always restarts: never judged given up here.
        s.restart = RestartPolicy::default();
        assert!(restarts_given_up(&s).is_none());
        // Scaled to 0: nothing is wanted.
        let mut s = service("app", vec![ended("1", "failed", 1)]);
        s.restart.condition = "none".into();
        s.desired_replicas = Some(0);
        assert!(restarts_given_up(&s).is_none());
    }

    #[test]
    fn converged_needs_running_healthy_settled() {
        let ok = snap(vec![service(
            "app",
            vec![task("1", "running", Health::Healthy)],
        )]);
        assert_eq!(convergence(&ok), Convergence::Converged);

        let starting = snap(vec![service(
            "app",
            vec![task("1", "running", Health::Starting)],
        )]);
        match convergence(&starting) {
            Convergence::Pending(why) => assert!(
                why.contains("app") && why.contains("health: starting"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }

        let mut updating = ok.clone();
        updating.services[0].update_state = Some("updating".into());
        assert!(
            matches!(convergence(&updating), Convergence::Pending(w) if w.contains("update updating"))
        );

        let mut no_hc = snap(vec![service(
            "app",
            vec![task("1", "running", Health::Unknown)],
        )]);
        no_hc.services[0].has_healthcheck = false;
        assert_eq!(convergence(&no_hc), Convergence::Converged);
        assert!(matches!(
            convergence(&snap(vec![])),
            Convergence::Pending(_)
        ));
    }

    #[test]
    fn repeated_failures_fail_fast_naming_the_error() {
        let mut tasks: Vec<TaskState> = (0..FAILED_TASKS_LIMIT)
            .map(|i| {
                let mut t = task(&i.to_string(), "failed", Health::Unknown);
                t.err = "task: non-zero exit (1)".into();
                t
            })
            .collect();
        tasks.push(task("9", "starting", Health::Unknown));
        match convergence(&snap(vec![service("db", tasks)])) {
            Convergence::Failed(why) => {
                assert!(why.contains("db") && why.contains("non-zero exit"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let mut paused = snap(vec![service(
            "app",
            vec![task("1", "running", Health::Healthy)],
        )]);
        paused.services[0].update_state = Some("paused".into());
        assert!(matches!(convergence(&paused), Convergence::Failed(_)));
    }

    #[test]
    fn stability_detects_replaced_tasks_and_unhealthy() {
        let before = snap(vec![service(
            "app",
            vec![task("1", "running", Health::Healthy)],
        )]);
        assert!(stability_violations(&before, &before).is_empty());
        let mut old = task("1", "failed", Health::Unknown);
        old.exit_code = Some(137);
        let after = snap(vec![service(
            "app",
            vec![old, task("2", "running", Health::Healthy)],
        )]);
        let v = stability_violations(&before, &after);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("exit code 137"), "{v:?}");
        let sick = snap(vec![service(
            "app",
            vec![task("1", "running", Health::Unhealthy)],
        )]);
        assert_eq!(stability_violations(&before, &sick).len(), 1);
    }

    #[test]
    fn version_labels() {
        let mut app = service("app", vec![task("1", "running", Health::Healthy)]);
        app.labels
            .insert("coop-cloud.st.version".into(), "1.0.0+1".into());
        let s = snap(vec![app.clone()]);
        assert!(check_version_labels(&s, "st", &Expected::Release("1.0.0+1")).is_ok());
        assert!(check_version_labels(&s, "st", &Expected::Release("1.1.0+1")).is_err());
        // Chaos without chaos labels fails.
        assert!(check_version_labels(&s, "st", &Expected::Commit("abcdef0123")).is_err());
        app.labels
            .insert("coop-cloud.st.chaos".into(), "true".into());
        app.labels
            .insert("coop-cloud.st.chaos-version".into(), "abcdef01".into());
        let s = snap(vec![app.clone()]);
        assert!(check_version_labels(&s, "st", &Expected::Commit("abcdef0123456")).is_ok());
        assert!(check_version_labels(&s, "st", &Expected::Commit("1234567890")).is_err());
        app.labels
            .insert("coop-cloud.st.chaos-version".into(), "abcdef01+U".into());
        let dirty = snap(vec![app.clone()]);
        let err =
            check_version_labels(&dirty, "st", &Expected::Commit("abcdef0123456")).unwrap_err();
        assert!(
            err.contains("abra saw uncommitted changes in the checkout"),
            "{err}"
        );
        let other = snap(vec![service("web", vec![])]);
        let err = check_version_labels(&other, "st", &Expected::Release("1")).unwrap_err();
        assert!(
            err.contains("no service named `app`") && err.contains("web"),
            "{err}"
        );
    }

    #[test]
    fn health_from_status() {
        assert_eq!(
            Health::from_status_text("Up 2 seconds (healthy)"),
            Health::Healthy
        );
        assert_eq!(
            Health::from_status_text("Up 2 seconds (health: starting)"),
            Health::Starting
        );
        assert_eq!(
            Health::from_status_text("Up 1 second (unhealthy)"),
            Health::Unhealthy
        );
        assert_eq!(Health::from_status_text("Exited (1)"), Health::Unknown);
    }
}
