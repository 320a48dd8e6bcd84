//! `cc-ci inputs` (what a run of a recipe at a commit would be made of, resolved without
//! deploying) and `cc-ci drift` (every tracked result, fresh or stale and why). Wiring only: the
//! work is in `cc_ci_harness::{inputs, fresh, drift}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cc_ci_daemon::config::Config;
use cc_ci_harness::engine::Engine;
use cc_ci_harness::fresh::Freshness;
use cc_ci_harness::hostenv::HostEnv;
use cc_ci_harness::lifecycle::{Stage, exit, work_dir};
use cc_ci_harness::{drift, fresh, inputs};

#[derive(clap::Subcommand)]
pub enum FreshCommand {
    /// Resolve the inputs a run of a recipe at a commit would record (head, base release, image
    /// digests from the registry, abra, cc-ci, overlay and config digests), without deploying.
    /// With --against, also say whether that result is still fresh.
    Inputs(InputsArgs),
    /// List every tracked result (the daemon's run folders, and any report folders given) as
    /// fresh or stale with its reason. Exit 0 when all are fresh, 1 when any is stale or cannot
    /// be resolved.
    Drift {
        #[arg(long)]
        config: Option<PathBuf>,
        /// More report folders (of `cc-ci run --report-dir`) to judge.
        #[arg(long = "dir")]
        dirs: Vec<PathBuf>,
        /// The abra binary (else CC_CI_ABRA, the config's harness.abra, or abra on PATH).
        #[arg(long)]
        abra: Option<String>,
        /// Print JSON instead of one line per result.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct InputsArgs {
    /// Recipe git repository: a local path or a URL.
    #[arg(long)]
    recipe: String,
    /// Commit, branch or tag (default: the repository's HEAD).
    #[arg(long = "ref", default_value = "HEAD")]
    git_ref: String,
    /// Comma-separated tiers: install,upgrade,backup,restore.
    #[arg(long, default_value = "install,upgrade,backup,restore")]
    stages: String,
    /// Upgrade from this release tag instead of the newest one older than the head.
    #[arg(long)]
    base: Option<String>,
    /// The abra binary (else CC_CI_ABRA, the config's harness.abra, or abra on PATH).
    #[arg(long)]
    abra: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// A report folder (or its run.json) to judge against the inputs now.
    #[arg(long)]
    against: Option<PathBuf>,
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    match path {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("cc-ci: {e}");
            ExitCode::from(exit::BAD_INPUT as u8)
        }),
    }
}

fn engine(config: &Config, host: &HostEnv) -> Result<Engine, ExitCode> {
    Engine::connect(host.docker_host.as_deref())
        .map(|e| e.with_timeout(Duration::from_secs(config.harness.engine_timeout_secs)))
        .map_err(|e| {
            eprintln!("cc-ci: {e}");
            ExitCode::from(exit::INFRA as u8)
        })
}

/// `host`: the process environment, read once by `main`.
pub async fn run(cmd: FreshCommand, host: &HostEnv) -> ExitCode {
    match cmd {
        FreshCommand::Inputs(args) => inputs_cmd(args, host).await,
        FreshCommand::Drift {
            config,
            dirs,
            abra,
            json,
        } => drift_cmd(config, dirs, abra, json, host).await,
    }
}

/// `cc-ci inputs`: resolve without deploying; with `--against`, judge a recorded result.
async fn inputs_cmd(args: InputsArgs, host: &HostEnv) -> ExitCode {
    let InputsArgs {
        recipe,
        git_ref,
        stages,
        base,
        abra,
        config,
        against,
    } = args;
    let stages = match Stage::parse_list(&stages) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cc-ci: --stages: {e}");
            return ExitCode::from(exit::BAD_INPUT as u8);
        }
    };
    let config = match load(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let recorded = match against.as_deref().map(|p| {
        let dir = if p.ends_with("run.json") {
            p.parent().unwrap_or(p)
        } else {
            p
        };
        drift::read_result(dir).ok_or_else(|| {
            format!(
                "--against {}: no run.json with recorded inputs there",
                p.display()
            )
        })
    }) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("cc-ci: {e}");
            return ExitCode::from(exit::BAD_INPUT as u8);
        }
    };
    let engine = match engine(&config, host) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let scratch = work_dir(&config.harness, host).join("inputs");
    let want = inputs::Want {
        source: recipe,
        git_ref,
        base,
        stages,
        shipped_overlays: inputs::shipped_overlays(host),
        abra_version: inputs::abra_version(abra.as_deref(), &config.harness, &scratch, host).await,
        config: config.harness.clone(),
    };
    let now = match inputs::resolve(&want, &scratch, &engine).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("cc-ci: cannot resolve the inputs: {e}");
            return ExitCode::from(exit::BAD_INPUT as u8);
        }
    };
    match recorded {
        None => {
            println!("{}", serde_json::to_string_pretty(&now).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Some(t) => {
            let f = fresh::freshness(
                &t.inputs,
                &now,
                drift::age(t.written_secs, drift::now_secs()),
                drift::max_age(config.daemon.reuse_max_age_secs),
            );
            println!("{}", f.describe());
            if f.is_fresh() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAIL as u8)
            }
        }
    }
}

/// `cc-ci drift`: every tracked result, fresh or stale.
async fn drift_cmd(
    config: Option<PathBuf>,
    dirs: Vec<PathBuf>,
    abra: Option<String>,
    json: bool,
    host: &HostEnv,
) -> ExitCode {
    let config = match load(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let engine = match engine(&config, host) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let runs = cc_ci_daemon::state_dir(&config, host).join("runs");
    let results = drift::tracked(&[runs], &dirs);
    let scratch = work_dir(&config.harness, host).join("inputs");
    let abra_version = inputs::abra_version(abra.as_deref(), &config.harness, &scratch, host).await;
    let shipped = inputs::shipped_overlays(host);
    let ctx = drift::Sweep {
        config: &config.harness,
        shipped_overlays: shipped.as_deref(),
        abra_version,
        max_age: drift::max_age(config.daemon.reuse_max_age_secs),
        now_secs: drift::now_secs(),
    };
    let judged = drift::sweep(&results, &ctx, &engine, &scratch).await;
    let all_fresh = judged
        .iter()
        .all(|j| matches!(j.freshness, Ok(Freshness::Fresh)));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&judged).unwrap_or_default()
        );
    } else if judged.is_empty() {
        println!("no tracked results (no run.json with recorded inputs)");
    } else {
        for j in &judged {
            let verdict = match &j.freshness {
                Ok(Freshness::Fresh) => "fresh".to_string(),
                Ok(f) => format!("stale: {}", f.describe()),
                Err(e) => format!("unknown: {e}"),
            };
            println!(
                "{}  {} @ {}  {}",
                j.dir.display(),
                j.recipe,
                j.git_ref.get(..10).unwrap_or(&j.git_ref),
                verdict
            );
        }
    }
    if all_fresh {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAIL as u8)
    }
}

/// `cc-ci run` into a report folder that already holds a result of the same recipe, ref and
/// stages: when every input still holds, that result stands (nothing deployed) and its exit code
/// is returned. `None`: run. `--no-reuse` skips this.
pub async fn reuse_for_run(
    args: &crate::RunArgs,
    stages: &[Stage],
    config: &Config,
    host: &HostEnv,
) -> Option<ExitCode> {
    let (recipe, git_ref, base, abra, report_dir) = (
        &args.recipe,
        args.git_ref.as_deref(),
        args.base.as_deref(),
        args.abra.as_deref(),
        args.report_dir.as_path(),
    );
    use cc_ci_harness::report::Verdict;
    let t = drift::read_result(report_dir)?;
    let code = match t.report.verdict {
        Verdict::Pass => exit::PASS,
        Verdict::Fail => exit::FAIL,
        // Errors are never reused: the next run may not meet the same trouble.
        _ => return None,
    };
    let engine = engine(config, host).ok()?;
    let scratch = work_dir(&config.harness, host).join("inputs");
    let want = inputs::Want {
        source: recipe.to_string(),
        git_ref: git_ref.unwrap_or("HEAD").to_string(),
        base: base.map(String::from),
        stages: stages.to_vec(),
        shipped_overlays: inputs::shipped_overlays(host),
        abra_version: inputs::abra_version(abra, &config.harness, &scratch, host).await,
        config: config.harness.clone(),
    };
    let now = inputs::resolve(&want, &scratch, &engine).await.ok()?;
    let f = fresh::freshness(
        &t.inputs,
        &now,
        drift::age(t.written_secs, drift::now_secs()),
        drift::max_age(config.daemon.reuse_max_age_secs),
    );
    if !f.is_fresh() {
        eprintln!(
            "cc-ci: the result in {} does not hold any more ({}): running",
            report_dir.display(),
            f.describe()
        );
        return None;
    }
    eprintln!(
        "cc-ci: unchanged since the result in {} ({}): same commit, images, abra and cc-ci; nothing deployed (--no-reuse runs anyway)",
        report_dir.display(),
        t.report.verdict.as_str()
    );
    Some(ExitCode::from(code as u8))
}
