//! `/metrics` in Prometheus' text format (prometheus-client). Counters and histograms are
//! process-wide (a daemon is one process); the gauges that describe the queue are read from the
//! store at scrape time, so they are right even after a restart. Every metric is described in
//! docs/daemon.md. The rest of the daemon calls the small functions below at the few points
//! where the counted thing happens.

use std::sync::OnceLock;

use cc_ci_harness::report::RunReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::{RunRow, RunVerdict, Store};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateVerdict {
    state: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

struct Metrics {
    registry: Registry,
    runs: Family<StateVerdict, Gauge>,
    queue_length: Gauge,
    active_runs: Gauge,
    runs_finished: Family<VerdictLabel, Counter>,
    run_duration: Family<VerdictLabel, Histogram>,
    tier_duration: Family<TierLabel, Histogram>,
    webhook_deliveries: Family<OutcomeLabel, Counter>,
    forge_errors: Family<KindLabel, Counter>,
    forge_retries: Counter,
    report_latency: Histogram,
    gc_runs: Counter,
    gc_removals: Counter,
}

/// Runs take minutes (a full run ~10–30 min); tiers seconds to minutes.
fn run_histogram() -> Histogram {
    Histogram::new([
        30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
    ])
}

fn tier_histogram() -> Histogram {
    Histogram::new([5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0])
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("cc_ci");
        let m = Metrics {
            registry: Registry::default(),
            runs: Family::default(),
            queue_length: Gauge::default(),
            active_runs: Gauge::default(),
            runs_finished: Family::default(),
            run_duration: Family::new_with_constructor(run_histogram),
            tier_duration: Family::new_with_constructor(tier_histogram),
            webhook_deliveries: Family::default(),
            forge_errors: Family::default(),
            forge_retries: Counter::default(),
            report_latency: Histogram::new([0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            gc_runs: Counter::default(),
            gc_removals: Counter::default(),
        };
        registry.register(
            "runs",
            "Runs in the store by state (queued, running, done) and verdict (empty until done)",
            m.runs.clone(),
        );
        registry.register(
            "queue_length",
            "Runs waiting for a free slot",
            m.queue_length.clone(),
        );
        registry.register(
            "active_runs",
            "Runs being run now",
            m.active_runs.clone(),
        );
        registry.register(
            "runs_finished",
            "Runs that ran and finished since the daemon started, by verdict",
            m.runs_finished.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Wall time of a run from its start to its end, by verdict",
            m.run_duration.clone(),
        );
        registry.register(
            "tier_duration_seconds",
            "Duration of one tier as its report gives it, by tier and verdict",
            m.tier_duration.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome (accepted, ignored, duplicate, rejected, bad_request, error)",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "forge_api_errors",
            "Failed forge API attempts by kind (status, transport, decode)",
            m.forge_errors.clone(),
        );
        registry.register(
            "forge_api_retries",
            "Forge API requests sent again after a transient failure",
            m.forge_retries.clone(),
        );
        registry.register(
            "report_latency_seconds",
            "From a run's end to its final commit status being posted",
            m.report_latency.clone(),
        );
        registry.register("gc_runs", "Finished `cc-ci gc` passes", m.gc_runs.clone());
        registry.register(
            "gc_removals",
            "Dead runs' deployments removed by gc",
            m.gc_removals.clone(),
        );
        Metrics { registry, ..m }
    })
}

/// The scrape: gauges refreshed from the store, then everything encoded.
pub(crate) fn render(store: &Store) -> Result<String, String> {
    let m = metrics();
    let counts = store
        .count_by_state_verdict()
        .map_err(|e| format!("cannot read the run counts: {e}"))?;
    m.runs.clear();
    let (mut queued, mut running) = (0, 0);
    for (state, verdict, n) in counts {
        match state.as_str() {
            "queued" => queued += n,
            "running" => running += n,
            _ => {}
        }
        m.runs
            .get_or_create(&StateVerdict { state, verdict })
            .set(n);
    }
    m.queue_length.set(queued);
    m.active_runs.set(running);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry)
        .map_err(|e| format!("cannot encode the metrics: {e}"))?;
    Ok(out)
}

/// A run that ran has finished (its report, if any, gives the tier durations).
pub(crate) fn run_finished(run: &RunRow, verdict: RunVerdict, report: Option<&RunReport>) {
    let m = metrics();
    let label = VerdictLabel {
        verdict: verdict.as_str().into(),
    };
    m.runs_finished.get_or_create(&label).inc();
    if let Some(started) = run.started_at {
        let secs = (crate::store::now() - started).max(0) as f64;
        m.run_duration.get_or_create(&label).observe(secs);
    }
    for t in report.map(|r| r.tiers.as_slice()).unwrap_or_default() {
        m.tier_duration
            .get_or_create(&TierLabel {
                tier: t.name.clone(),
                verdict: t.verdict.as_str().into(),
            })
            .observe(t.duration_ms as f64 / 1000.0);
    }
}

/// What a webhook delivery's HTTP answer means.
fn outcome_of(status: u16) -> &'static str {
    match status {
        202 => "accepted",
        200 | 422 => "ignored",
        409 => "duplicate",
        401 | 403 => "rejected",
        400 | 408 | 413 => "bad_request",
        _ => "error",
    }
}

pub(crate) fn webhook(status: u16) {
    metrics()
        .webhook_deliveries
        .get_or_create(&OutcomeLabel {
            outcome: outcome_of(status).into(),
        })
        .inc();
}

/// One forge API attempt failed; `kind` is status, transport or decode.
pub(crate) fn forge_error(kind: &str) {
    metrics()
        .forge_errors
        .get_or_create(&KindLabel { kind: kind.into() })
        .inc();
}

pub(crate) fn forge_retry() {
    metrics().forge_retries.inc();
}

/// The final commit status of a run that ended at `finished_at` (unix seconds) was posted.
pub(crate) fn report_posted(finished_at: i64) {
    let secs = (crate::store::now() - finished_at).max(0) as f64;
    metrics().report_latency.observe(secs);
}

/// Called for every line a child writes to a log the daemon keeps: the closing line of
/// `cc-ci gc` ("gc: N collected, …") counts its removals.
pub(crate) fn log_line(line: &str) {
    let Some(rest) = line.trim().strip_prefix("gc: ") else {
        return;
    };
    let Some((n, tail)) = rest.split_once(" collected") else {
        return;
    };
    if !(tail.is_empty() || tail.starts_with(',')) {
        return;
    }
    if let Ok(n) = n.parse::<u64>() {
        let m = metrics();
        m.gc_runs.inc();
        m.gc_removals.inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_outcomes() {
        assert_eq!(outcome_of(202), "accepted");
        assert_eq!(outcome_of(409), "duplicate");
        assert_eq!(outcome_of(401), "rejected");
        assert_eq!(outcome_of(500), "error");
    }

    #[test]
    fn gc_lines_count_removals_and_nothing_else_does() {
        let before = metrics().gc_removals.get();
        log_line("gc: 3 collected, 1 alive, 0 leftovers\n");
        log_line("collected web-1.ci.local");
        log_line("gc: many collected");
        log_line("gc: 2 collectedsomething");
        assert_eq!(metrics().gc_removals.get() - before, 3);
    }
}
