//! When a deployed stack has converged, as a pure judgement over a snapshot of its services.
//!
//! Converged = every service has exactly its desired number of running tasks, each healthy when
//! its container has a healthcheck, and its update settled (none, `completed` or
//! `rollback_completed`). An update this deploy started that ended in a rollback or a pause is a
//! failure at once: the version that was asked for is not what runs.

/// One task as the judgement needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub id: String,
    pub desired_state: String,
    pub state: String,
    pub error: Option<String>,
    pub message: String,
    /// Health of its container: `None` without a healthcheck (or no container yet).
    pub health: Option<String>,
    pub timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    /// Desired running tasks.
    pub desired: u64,
    pub update_state: Option<String>,
    pub update_message: Option<String>,
    /// The update status was (re)started after this deploy began.
    pub update_is_new: bool,
    pub tasks: Vec<TaskView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Converged,
    /// Not yet; says what the first unsettled service is stuck on.
    Waiting(String),
    Failed(String),
}

fn settled(state: Option<&str>) -> bool {
    matches!(
        state,
        None | Some("") | Some("completed") | Some("rollback_completed")
    )
}

pub fn judge(services: &[ServiceView]) -> Verdict {
    if services.is_empty() {
        return Verdict::Waiting("the stack has no services yet".into());
    }
    for s in services {
        let state = s.update_state.as_deref();
        if s.update_is_new
            && matches!(
                state,
                Some("rollback_completed" | "paused" | "rollback_paused")
            )
        {
            return Verdict::Failed(format!(
                "service {}: the update was {} by swarm ({}); {}",
                s.name,
                if state == Some("paused") {
                    "paused"
                } else {
                    "rolled back"
                },
                s.update_message.as_deref().unwrap_or("no message"),
                describe_latest(s)
            ));
        }
    }
    for s in services {
        let running: Vec<&TaskView> = s
            .tasks
            .iter()
            .filter(|t| t.desired_state == "running" && t.state == "running")
            .collect();
        let healthy = running
            .iter()
            .filter(|t| t.health.as_deref().is_none_or(|h| h == "healthy"))
            .count();
        let update_ok = settled(s.update_state.as_deref());
        if running.len() as u64 != s.desired || healthy as u64 != s.desired || !update_ok {
            return Verdict::Waiting(format!(
                "service {}: {}/{} tasks running, {} healthy, update {}; {}",
                s.name,
                running.len(),
                s.desired,
                healthy,
                s.update_state
                    .as_deref()
                    .filter(|x| !x.is_empty())
                    .unwrap_or("none"),
                describe_latest(s)
            ));
        }
    }
    Verdict::Converged
}

/// What abra's own convergence monitor concludes (the journals of the earlier cc-ci): it gives up
/// on a task still inside its healthcheck `start_period` (health `starting`), and it is content as
/// soon as every service runs its desired number of tasks, healthy or not yet, even while the
/// update is still `updating` (a rollback may follow). A rollback or pause it sees fails it.
pub fn judge_like_abra(services: &[ServiceView]) -> Verdict {
    if let v @ Verdict::Failed(_) = judge(services) {
        return v;
    }
    if services.is_empty() {
        return Verdict::Waiting("the stack has no services yet".into());
    }
    for s in services {
        // Swarm keeps a task with a healthcheck in state `starting` until its first healthy check.
        if let Some(t) = s.tasks.iter().find(|t| {
            t.desired_state == "running"
                && (t.state == "starting"
                    || (t.state == "running" && t.health.as_deref() == Some("starting")))
        }) {
            return Verdict::Failed(format!(
                "service {}: task {} is still starting (inside its healthcheck start_period); the convergence monitor gave up",
                s.name,
                t.id.chars().take(12).collect::<String>()
            ));
        }
    }
    for s in services {
        let running = s
            .tasks
            .iter()
            .filter(|t| t.desired_state == "running" && t.state == "running")
            .count() as u64;
        if running < s.desired {
            return Verdict::Waiting(format!(
                "service {}: {running}/{} tasks running; {}",
                s.name,
                s.desired,
                describe_latest(s)
            ));
        }
    }
    Verdict::Converged
}

/// The newest task of a service and, when an older one ended in an error (a restart), the newest
/// such error, described for a human.
pub fn describe_latest(s: &ServiceView) -> String {
    let mut by_time: Vec<&TaskView> = s.tasks.iter().collect();
    by_time.sort_by_key(|t| time_key(&t.timestamp));
    let Some(latest) = by_time.pop() else {
        return "no tasks yet".into();
    };
    let mut d = format!("latest task {}", describe_task(latest));
    if let Some(failed) = by_time
        .iter()
        .rev()
        .find(|t| t.error.as_deref().is_some_and(|e| !e.is_empty()))
    {
        d.push_str(&format!("; previous task {}", describe_task(failed)));
    }
    d
}

fn describe_task(t: &TaskView) -> String {
    let mut d = format!(
        "{}: state {} (desired {})",
        t.id.chars().take(12).collect::<String>(),
        t.state,
        t.desired_state
    );
    if let Some(h) = &t.health {
        d.push_str(&format!(", health {h}"));
    }
    if !t.message.is_empty() && t.message != t.state {
        d.push_str(&format!(", message \"{}\"", t.message));
    }
    if let Some(e) = t.error.as_deref().filter(|e| !e.is_empty()) {
        d.push_str(&format!(", error \"{e}\""));
    }
    d
}

/// An RFC 3339 timestamp as a key that orders correctly: docker trims trailing zeros of the
/// fraction, so the plain strings do not compare within one second.
fn time_key(ts: &str) -> (String, String) {
    let ts = ts.trim_end_matches('Z');
    match ts.split_once('.') {
        Some((secs, frac)) => (secs.to_string(), format!("{frac:0<9}")),
        None => (ts.to_string(), "0".repeat(9)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, desired: &str, state: &str, health: Option<&str>, ts: &str) -> TaskView {
        TaskView {
            id: id.into(),
            desired_state: desired.into(),
            state: state.into(),
            error: None,
            message: String::new(),
            health: health.map(String::from),
            timestamp: ts.into(),
        }
    }

    fn svc(tasks: Vec<TaskView>) -> ServiceView {
        ServiceView {
            name: "s_app".into(),
            desired: 1,
            update_state: None,
            update_message: None,
            update_is_new: false,
            tasks,
        }
    }

    #[test]
    fn converged_needs_running_healthy_and_settled() {
        let ok = svc(vec![
            task("old", "shutdown", "failed", None, "1"),
            task("new", "running", "running", Some("healthy"), "2"),
        ]);
        assert_eq!(judge(std::slice::from_ref(&ok)), Verdict::Converged);

        let starting = svc(vec![task("t", "running", "running", Some("starting"), "1")]);
        assert!(
            matches!(judge(&[starting]), Verdict::Waiting(w) if w.contains("0 healthy") && w.contains("health starting"))
        );

        // start-first update: old and new both running is not converged yet.
        let both = svc(vec![
            task("a", "running", "running", None, "1"),
            task("b", "running", "running", None, "2"),
        ]);
        assert!(matches!(judge(&[both]), Verdict::Waiting(_)));

        let mut updating = ok.clone();
        updating.update_state = Some("updating".into());
        assert!(matches!(judge(&[updating]), Verdict::Waiting(w) if w.contains("update updating")));

        let mut old_rollback = ok.clone();
        old_rollback.update_state = Some("rollback_completed".into());
        assert_eq!(judge(&[old_rollback]), Verdict::Converged);

        assert!(matches!(judge(&[]), Verdict::Waiting(_)));
    }

    #[test]
    fn a_new_rollback_or_pause_fails_at_once_naming_the_service() {
        let mut rolled = svc(vec![task("t", "running", "running", None, "1")]);
        rolled.update_state = Some("rollback_completed".into());
        rolled.update_is_new = true;
        rolled.update_message = Some("update rolled back due to failure".into());
        match judge(&[rolled]) {
            Verdict::Failed(m) => assert!(m.contains("s_app") && m.contains("rolled back"), "{m}"),
            v => panic!("{v:?}"),
        }
        let mut paused = svc(vec![]);
        paused.update_state = Some("paused".into());
        paused.update_is_new = true;
        assert!(matches!(judge(&[paused]), Verdict::Failed(m) if m.contains("paused")));
    }

    #[test]
    fn abra_monitor_gives_up_inside_start_period_and_returns_mid_update() {
        let starting = svc(vec![task("t", "running", "running", Some("starting"), "1")]);
        assert!(
            matches!(judge_like_abra(&[starting]), Verdict::Failed(m) if m.contains("start_period"))
        );
        let starting = svc(vec![task(
            "t",
            "running",
            "starting",
            Some("starting"),
            "1",
        )]);
        assert!(
            matches!(judge_like_abra(&[starting]), Verdict::Failed(m) if m.contains("start_period"))
        );
        let mut updating = svc(vec![
            task("a", "running", "running", Some("healthy"), "1"),
            task("b", "running", "running", Some("healthy"), "2"),
        ]);
        updating.update_state = Some("updating".into());
        assert_eq!(judge_like_abra(&[updating]), Verdict::Converged);
        let pending = svc(vec![task("t", "running", "preparing", None, "1")]);
        assert!(matches!(judge_like_abra(&[pending]), Verdict::Waiting(_)));
    }

    #[test]
    fn waiting_names_latest_task_error() {
        let mut t = task(
            "abcdef0123456789",
            "running",
            "rejected",
            None,
            "2026-01-01T00:00:01.51Z",
        );
        t.error = Some("No such image: nope".into());
        let s = svc(vec![
            task("x", "shutdown", "failed", None, "2026-01-01T00:00:01.5Z"),
            t,
        ]);
        match judge(&[s]) {
            Verdict::Waiting(w) => {
                assert!(
                    w.contains("abcdef012345") && w.contains("No such image"),
                    "{w}"
                )
            }
            v => panic!("{v:?}"),
        }
    }
}
