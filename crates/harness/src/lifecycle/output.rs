//! What a run leaves for people: report files, diagnostics of a failed deployment, the final
//! table on stderr.

use super::*;

impl Job {
    pub(super) async fn write_diagnostics(&self) {
        let dir = self.opts.report_dir.join("diagnostics");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let Ok(snap) = self.engine.snapshot(&self.stack).await else {
            return;
        };
        for s in &snap.services {
            if let Ok(logs) = self.engine.service_logs(&s.id, 200).await {
                let _ = std::fs::write(
                    dir.join(format!("{}.log", s.short_name)),
                    self.redactor.redact(&logs),
                );
            }
        }
        let _ = std::fs::write(
            dir.join("tasks.txt"),
            self.redactor.redact(&tasks_text(&snap)),
        );
    }
}

/// `diagnostics/tasks.txt`: every service and task of the stack, in plain words.
pub(super) fn tasks_text(snap: &StackSnapshot) -> String {
    let mut out = String::new();
    for s in &snap.services {
        let replicas = match s.desired_replicas {
            Some(n) => format!("{n} replicas wanted"),
            None => "global (one task per node)".to_string(),
        };
        let update = match s.update_state.as_deref() {
            None | Some("") => "no update in progress".to_string(),
            Some(st) if s.update_message.is_empty() => format!("update {st}"),
            Some(st) => format!("update {st}: {}", s.update_message),
        };
        out.push_str(&format!("service {}: {replicas}, {update}\n", s.name));
        if s.tasks.is_empty() {
            out.push_str("  no tasks\n");
        }
        for t in &s.tasks {
            let mut line = format!("  task {}", t.id);
            if let Some(slot) = t.slot {
                line.push_str(&format!(" (slot {slot})"));
            }
            line.push_str(&format!(
                ": {}, the swarm wants it {}",
                t.state, t.desired_state
            ));
            match t.health {
                checks::Health::Healthy => line.push_str(", healthy"),
                checks::Health::Unhealthy => line.push_str(", unhealthy"),
                checks::Health::Starting => line.push_str(", health check starting"),
                checks::Health::Unknown => {}
            }
            if let Some(code) = t.exit_code {
                line.push_str(&format!(", exit code {code}"));
            }
            if !t.err.is_empty() {
                line.push_str(&format!(", error: {}", t.err));
            }
            if !t.message.is_empty() {
                line.push_str(&format!(" ({})", t.message));
            }
            if !t.created_at.is_empty() {
                line.push_str(&format!(", created {}", t.created_at));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

pub(super) fn write_json(path: &Path, report: &RunReport, redactor: &Redactor) {
    if let Ok(text) = serde_json::to_string_pretty(report) {
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, redactor.redact(&text)).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

pub(super) fn write_reports(dir: &Path, report: &RunReport, redactor: &Redactor) {
    write_json(&dir.join("run.json"), report, redactor);
    let _ = std::fs::write(
        dir.join("summary.md"),
        redactor.redact(&report.summary_markdown(None)),
    );
    let _ = std::fs::write(dir.join("junit.xml"), redactor.redact(&report.junit_xml()));
    let _ = std::fs::remove_file(dir.join("progress.json"));
}

pub(super) fn print_table(report: &RunReport) {
    eprintln!("\n{:<10} {:<8} {:>9}", "tier", "verdict", "duration");
    for t in &report.tiers {
        eprintln!(
            "{:<10} {:<8} {:>8.1}s",
            t.name,
            t.verdict.as_str(),
            t.duration_ms as f64 / 1000.0
        );
        for c in t
            .checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail | Verdict::Error))
        {
            eprintln!("  ✗ {}: {}", c.name, crate::report::excerpt(&c.detail, 300));
        }
    }
    if let Some(v) = report.teardown.verdict {
        eprintln!("{:<10} {:<8}", "teardown", v.as_str());
    }
    eprintln!(
        "verdict: {} (deploys: {})",
        report.verdict.as_str(),
        report.deploy_count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::{service, task};

    #[test]
    fn tasks_text_is_plain_words() {
        let mut t = task("abc", "failed", checks::Health::Unknown);
        t.exit_code = Some(1);
        t.err = "task: non-zero exit (1)".into();
        let mut s = service(
            "app",
            vec![t, task("def", "running", checks::Health::Healthy)],
        );
        s.update_state = Some("rollback_completed".into());
        let mut g = service("db", vec![]);
        g.desired_replicas = None;
        let text = tasks_text(&StackSnapshot {
            services: vec![s, g],
        });
        for debug in ["Some(", "None", "Unknown", "Healthy"] {
            assert!(!text.contains(debug), "{debug} in:\n{text}");
        }
        assert!(
            text.contains("exit code 1, error: task: non-zero exit (1)"),
            "{text}"
        );
        assert!(text.contains("update rollback_completed"), "{text}");
        assert!(text.contains("global (one task per node)"), "{text}");
        assert!(
            text.contains("running, the swarm wants it running, healthy"),
            "{text}"
        );
    }
}
