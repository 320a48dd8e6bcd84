//! What a run leaves for people: report files, diagnostics of a failed deployment, the final
//! table on stderr.

use std::path::Path;

use super::job::Job;
use crate::checks::{self, StackSnapshot};
use crate::contract::files;
use crate::redact::Redactor;
use crate::report::{RunReport, Verdict};

impl Job {
    /// Writes `diagnostics/`; a file that cannot be written is an error (the caller makes the
    /// run exit 3). A engine that does not answer leaves nothing to write, which is no error.
    pub(super) async fn write_diagnostics(&self) -> Result<(), String> {
        let dir = self.opts.report_dir.join(files::DIAGNOSTICS);
        std::fs::create_dir_all(&dir).map_err(|e| cannot_write(&dir, &e))?;
        let Ok(snap) = self.swarm.snapshot(&self.stack).await else {
            return Ok(());
        };
        for s in &snap.services {
            if let Ok(logs) = self.swarm.service_logs(&s.id, 200).await {
                write_file(
                    &dir.join(format!("{}.log", s.short_name)),
                    &self.redactor.redact(&logs),
                )?;
            }
        }
        write_file(
            &dir.join("tasks.txt"),
            &self.redactor.redact(&tasks_text(&snap)),
        )
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

fn cannot_write(path: &Path, e: &std::io::Error) -> String {
    format!(
        "cannot write the report file {}: {e} (is the report directory full or read-only?)",
        path.display()
    )
}

/// Writes a whole file and makes sure it reached the disk's page cache in full (a full disk
/// can otherwise show up only at close).
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| cannot_write(path, &e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| cannot_write(path, &e))
}

/// Fails when nothing can be written in the report directory (read-only, not a directory),
/// before anything is deployed.
pub(super) fn check_writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(".cc-ci-write-check");
    write_file(&probe, "ok\n")?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub(super) fn write_json(
    path: &Path,
    report: &RunReport,
    redactor: &Redactor,
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&redacted(report, redactor))
        .map_err(|e| format!("cannot serialise {}: {e}", path.display()))?;
    let tmp = path.with_extension("json.tmp");
    let written = write_file(&tmp, &redactor.redact(&text))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| cannot_write(path, &e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The report with every text redacted field by field, before anything cuts excerpts out of it
/// (a secret cut in two by an excerpt would no longer be recognised).
fn redacted(report: &RunReport, redactor: &Redactor) -> RunReport {
    let mut r = report.clone();
    for t in &mut r.tiers {
        for c in &mut t.checks {
            c.name = redactor.redact(&c.name);
            c.detail = redactor.redact(&c.detail);
        }
    }
    for n in r.notes.iter_mut().chain(r.teardown.leftovers.iter_mut()) {
        *n = redactor.redact(n);
    }
    r.git_ref = redactor.redact(&r.git_ref);
    r
}

/// `run.json`, `summary.md`, `junit.xml`; the first that cannot be written is the error.
pub(super) fn write_reports(
    dir: &Path,
    report: &RunReport,
    redactor: &Redactor,
) -> Result<(), String> {
    let report = &redacted(report, redactor);
    write_json(&dir.join(files::RUN_JSON), report, redactor)?;
    write_file(
        &dir.join(files::SUMMARY_MD),
        &redactor.redact(&report.summary_markdown(None)),
    )?;
    write_file(
        &dir.join(files::JUNIT_XML),
        &redactor.redact(&report.junit_xml()),
    )?;
    let _ = std::fs::remove_file(dir.join(files::PROGRESS_JSON));
    Ok(())
}

/// The final table on stderr (the daemon serves it as the run's log): redacted like every
/// other text that leaves the process.
pub(super) fn print_table(report: &RunReport, redactor: &Redactor) {
    eprint!("{}", redactor.redact(&table(&redacted(report, redactor))));
}

fn table(report: &RunReport) -> String {
    let mut out = format!("\n{:<10} {:<8} {:>9}\n", "tier", "verdict", "duration");
    for t in &report.tiers {
        out.push_str(&format!(
            "{:<10} {:<8} {:>8.1}s\n",
            t.name,
            t.verdict.as_str(),
            t.duration_ms as f64 / 1000.0
        ));
        for c in t
            .checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail | Verdict::Error))
        {
            out.push_str(&format!(
                "  ✗ {}: {}\n",
                c.name,
                crate::report::excerpt(&c.detail, 300)
            ));
        }
    }
    if let Some(v) = report.teardown.verdict {
        out.push_str(&format!("{:<10} {:<8}\n", "teardown", v.as_str()));
    }
    out.push_str(&format!(
        "verdict: {} (deploys: {})\n",
        report.verdict.as_str(),
        report.deploy_count
    ));
    out
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
