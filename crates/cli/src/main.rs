//! The `cc-ci` command: `run` (the harness by hand), `teardown`, `gc`, `check-config`, and the
//! daemon's commands (`serve`, `queue`, `logs`, `cancel`).
//!
//! This is the edge: the process environment is read here once ([`HostEnv::from_process`]) and
//! the config file is read here (`cc_ci_daemon::config`, the whole file, every section
//! checked); the libraries get values: `cc-ci run` gets `[harness]` and the forge secret
//! files, never the daemon's types.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cc_ci_daemon::config::Config;
use cc_ci_harness::contract::{Stage, exit, files};
use cc_ci_harness::engine::Engine;
use cc_ci_harness::hostenv::HostEnv;
use cc_ci_harness::lifecycle::{self, RunOptions};
use cc_ci_harness::teardown;
use clap::{Parser, Subcommand};

mod daemon_cmds;
mod fresh_cmds;

#[derive(Parser)]
#[command(
    name = "cc-ci",
    version,
    about = "Continuous integration for Co-op Cloud recipes on Docker Swarm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy a recipe at a commit with abra and run its tiers on one deployment, then tear down.
    Run(RunArgs),
    /// Remove a deployment kept with --keep-on-failure (or stranded) and its run directory.
    Teardown {
        /// The app domain printed by the run, e.g. web-1a2b3c.ci.local
        domain: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove everything runs that died left behind (stacks, volumes, secrets, run directories).
    Gc {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; errors name the file, key and problem.
    CheckConfig {
        file: PathBuf,
        /// Print every accepted key and exit.
        #[arg(long)]
        keys: bool,
    },
    /// Check this host the way a run needs it: one line per check, with what to do when it
    /// fails. Exit 0 only when every check holds.
    Doctor {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The abra binary (else CC_CI_ABRA, the config's harness.abra, or abra on PATH).
        #[arg(long)]
        abra: Option<String>,
    },
    #[command(flatten)]
    Daemon(daemon_cmds::DaemonCommand),
    #[command(flatten)]
    Fresh(fresh_cmds::FreshCommand),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Recipe git repository: a local path or a URL. The recipe name is `TYPE=` of its `.env.sample`.
    #[arg(long)]
    recipe: String,
    /// Commit, branch or tag to test (default: the repository's HEAD).
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Comma-separated tiers: install,upgrade,backup,restore (default: all four).
    #[arg(long, default_value = "install,upgrade,backup,restore")]
    stages: String,
    /// Where run.json, summary.md, junit.xml and diagnostics/ are written.
    #[arg(long, default_value = "cc-ci-report")]
    report_dir: PathBuf,
    /// The abra binary (else CC_CI_ABRA, the config's harness.abra, or abra on PATH).
    #[arg(long)]
    abra: Option<String>,
    /// Configuration file (TOML); see docs/config.md.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep a failed deployment for debugging; prints the command that removes it.
    #[arg(long)]
    keep_on_failure: bool,
    /// Run even when the report folder holds a result whose inputs all still hold (same commit,
    /// image digests, abra, cc-ci, overlay and config); without it that result stands.
    #[arg(long)]
    no_reuse: bool,
    /// Skip the generic checks (shown in the report); overlays still run.
    #[arg(long)]
    skip_generic: bool,
    /// Upgrade from this release tag instead of the newest release older than the head.
    #[arg(long)]
    base: Option<String>,
}

fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    match path {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("cc-ci: {e}");
            exit::process(exit::BAD_INPUT)
        }),
    }
}

/// Resolves on the first SIGINT or SIGTERM, naming it.
async fn signalled() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers a run still works; it just cannot clean up on a signal.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn cmd_run(args: RunArgs, host: HostEnv) -> ExitCode {
    let stages = match Stage::parse_list(&args.stages) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cc-ci: --stages: {e}");
            return exit::process(exit::BAD_INPUT);
        }
    };
    let config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A result in the report folder whose inputs all still hold stands (issue 15).
    if !args.no_reuse
        && let Some(code) = fresh_cmds::reuse_for_run(&args, &stages, &config, &host).await
    {
        return code;
    }
    let opts = RunOptions {
        recipe_source: args.recipe,
        git_ref: args.git_ref,
        stages,
        report_dir: args.report_dir.clone(),
        abra: args.abra,
        forge_secret_files: config.forge.secret_files(),
        config: config.harness,
        keep_on_failure: args.keep_on_failure,
        skip_generic: args.skip_generic,
        base: args.base,
        shipped_overlays: cc_ci_harness::inputs::shipped_overlays(&host),
        host,
    };
    let outcome = lifecycle::run(opts, signalled()).await;
    if let Some(msg) = &outcome.message {
        eprintln!("cc-ci: {msg}");
    }
    if outcome.report.is_some() {
        eprintln!(
            "report: {}",
            args.report_dir.join(files::RUN_JSON).display()
        );
    }
    exit::process(outcome.exit_code)
}

async fn cmd_teardown(
    domain: String,
    config: Option<PathBuf>,
    host: &HostEnv,
) -> anyhow::Result<ExitCode> {
    let config = match load_config(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let engine = Engine::connect(host.docker_host.as_deref())?
        .with_timeout(Duration::from_secs(config.harness.engine_timeout_secs));
    let left = teardown::teardown_domain(
        &engine,
        &lifecycle::work_dir(&config.harness, host),
        &domain,
        &config.harness.domain_suffix,
        Duration::from_secs(config.harness.converge_timeout_secs.max(60)),
    )
    .await
    .with_context(|| format!("tearing down {domain}"))?;
    if left.is_empty() {
        eprintln!("removed {domain}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("could not remove: {}", left.join(", "));
        Ok(exit::process(exit::INFRA))
    }
}

async fn cmd_doctor(config: Option<PathBuf>, abra: Option<String>, host: &HostEnv) -> ExitCode {
    let config = match load_config(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let checks = cc_ci_harness::doctor::run(&config.harness, abra.as_deref(), host).await;
    for c in &checks {
        println!("{}", c.line());
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("doctor: all {} checks hold", checks.len());
        ExitCode::SUCCESS
    } else {
        println!("doctor: {failed} of {} checks failed", checks.len());
        ExitCode::from(1)
    }
}

async fn cmd_gc(config: Option<PathBuf>, host: &HostEnv) -> anyhow::Result<ExitCode> {
    let config = match load_config(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let engine = Engine::connect(host.docker_host.as_deref())?
        .with_timeout(Duration::from_secs(config.harness.engine_timeout_secs));
    let work = lifecycle::work_dir(&config.harness, host);
    let report = teardown::gc(
        &engine,
        &work,
        &config.harness.domain_suffix,
        Duration::from_secs(config.harness.converge_timeout_secs.max(60)),
    )
    .await
    .context("garbage collection")?;
    for d in &report.collected {
        eprintln!("collected {d}");
    }
    for d in &report.alive {
        eprintln!("alive (left alone) {d}");
    }
    eprintln!(
        "gc: {} collected, {} alive, {} leftovers",
        report.collected.len(),
        report.alive.len(),
        report.leftovers.len()
    );
    if report.leftovers.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("could not remove: {}", report.leftovers.join(", "));
        Ok(exit::process(exit::INFRA))
    }
}

fn cmd_check_config(file: &Path, keys: bool) -> ExitCode {
    if keys {
        for k in cc_ci_daemon::config::known_keys() {
            println!("{k}");
        }
        return ExitCode::SUCCESS;
    }
    match Config::load(file) {
        Ok(config) => {
            for w in cc_ci_daemon::config_warnings(&config) {
                eprintln!("warning: {}: {w}", file.display());
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cc-ci: {e}");
            exit::process(exit::BAD_INPUT)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cc-ci: cannot start the async runtime: {e}");
            return exit::process(exit::INFRA);
        }
    };
    // The one place the process environment is read; the libraries get it as values.
    let host = HostEnv::from_process();
    let result = rt.block_on(async move {
        match cli.command {
            Command::Run(args) => Ok(cmd_run(args, host).await),
            Command::Teardown { domain, config } => cmd_teardown(domain, config, &host).await,
            Command::Gc { config } => cmd_gc(config, &host).await,
            Command::Doctor { config, abra } => Ok(cmd_doctor(config, abra, &host).await),
            Command::CheckConfig { file, keys } => Ok(cmd_check_config(&file, keys)),
            Command::Daemon(cmd) => daemon_cmds::run(cmd, host).await,
            Command::Fresh(cmd) => Ok(fresh_cmds::run(cmd, &host).await),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cc-ci: {e:#}");
            exit::process(exit::INFRA)
        }
    }
}
