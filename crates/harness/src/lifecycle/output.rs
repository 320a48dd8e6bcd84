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
        let mut tasks = String::new();
        for s in &snap.services {
            tasks.push_str(&format!(
                "service {} (replicas {:?}, update {:?} {})\n",
                s.name, s.desired_replicas, s.update_state, s.update_message
            ));
            for t in &s.tasks {
                tasks.push_str(&format!(
                    "  task {} slot {:?} desired {} state {} health {:?} exit {:?} err {} msg {}\n",
                    t.id, t.slot, t.desired_state, t.state, t.health, t.exit_code, t.err, t.message
                ));
            }
            if let Ok(logs) = self.engine.service_logs(&s.id, 200).await {
                let _ = std::fs::write(
                    dir.join(format!("{}.log", s.short_name)),
                    self.redactor.redact(&logs),
                );
            }
        }
        let _ = std::fs::write(dir.join("tasks.txt"), self.redactor.redact(&tasks));
    }
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
