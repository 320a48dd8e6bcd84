//! abra-standin: TEST SUPPORT ONLY. A stand-in for Co-op Cloud's `abra` that implements just the
//! subset cc-ci calls, on the real Docker engine through the `docker` CLI, so cc-ci's tests can run
//! where real abra is not installed. It is never used by the product.
//!
//! Like abra it keeps state in `$ABRA_DIR` (default `~/.abra`), accepts `-n`/`--no-input` anywhere,
//! and refuses to run unless stdout is a terminal. The behaviour it copies is described in
//! `shared/reference/coop-cloud.md`; its choices where abra's are unconfirmed are documented on the
//! commands below and pinned by `tests/`.

mod app;
mod backup;
mod converge;
mod deploy;
mod docker;
mod envfile;
mod git;
mod state;

use clap::{Parser, Subcommand};

use crate::state::AbraDir;

#[derive(Parser)]
#[command(
    name = "abra-standin",
    version,
    about = "TEST SUPPORT ONLY: a stand-in for Co-op Cloud's abra (the subset cc-ci calls), on the real Docker engine",
    long_about = "TEST SUPPORT ONLY: a stand-in for Co-op Cloud's abra implementing only the subset cc-ci \
calls, on the real Docker engine through the docker CLI. Never use it to manage real apps.\n\n\
State lives in $ABRA_DIR (default ~/.abra). Like abra it needs a terminal on stdout."
)]
struct Cli {
    /// Never prompt (accepted anywhere and ignored: the stand-in never prompts).
    #[arg(short = 'n', long = "no-input", global = true)]
    no_input: bool,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Manage servers.
    Server {
        #[command(subcommand)]
        command: ServerCmd,
    },
    /// Manage apps.
    App {
        #[command(subcommand)]
        command: AppCmd,
    },
    /// Inspect recipes.
    Recipe {
        #[command(subcommand)]
        command: RecipeCmd,
    },
}

#[derive(Subcommand)]
enum ServerCmd {
    /// Register the local Docker engine as server `default` (only --local is supported).
    Add {
        #[arg(long, short = 'l')]
        local: bool,
    },
}

#[derive(Subcommand)]
enum RecipeCmd {
    /// Release tags of the recipe checkout, oldest first, one per line.
    Versions { recipe: String },
}

#[derive(Subcommand)]
enum AppCmd {
    /// Create an app env file from the recipe's .env.sample (checks out the latest release).
    New {
        recipe: String,
        #[arg(long, short = 's')]
        server: String,
        #[arg(long, short = 'D')]
        domain: String,
        /// Generate every secret the env declares (SECRET_<NAME>_VERSION, `# length=N`).
        #[arg(long = "secrets", short = 'S')]
        secrets: bool,
    },
    /// Deploy a release (argument, else the version in the env file, else the latest tag), or
    /// with --chaos the current checkout as it is; waits for the stack to converge.
    Deploy {
        domain: String,
        version: Option<String>,
        #[arg(long, short = 'C')]
        chaos: bool,
        /// Skip the check that the app's domain resolves to this server.
        #[arg(long = "no-domain-checks", short = 'D')]
        no_domain_checks: bool,
        /// Return right after `docker stack deploy`, without abra's convergence monitor.
        #[arg(long = "no-converge-checks", short = 'c')]
        no_converge_checks: bool,
        /// Redeploy onto an app that is already deployed.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Remove the stack (volumes and secrets stay) and wait until it is gone.
    Undeploy { domain: String },
    /// Manage app secrets.
    Secret {
        #[command(subcommand)]
        command: SecretCmd,
    },
    /// Snapshots of the app's volumes (backup-bot-two label semantics).
    Backup {
        #[command(subcommand)]
        command: BackupCmd,
    },
    /// Restore a snapshot (default: the latest) into the app's volumes, with restore hooks.
    Restore {
        domain: String,
        #[arg(long, short = 's')]
        snapshot: Option<String>,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Insert a secret value: `<domain> <name> <version> <value>`.
    Insert {
        domain: String,
        name: String,
        version: String,
        value: String,
    },
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Take a snapshot; its id is the last line printed.
    Create { domain: String },
    /// Snapshot ids, oldest first.
    List { domain: String },
    /// Files of a snapshot, `<volume>/<path>` per line.
    Ls {
        domain: String,
        #[arg(long, short = 's')]
        snapshot: String,
    },
}

fn main() {
    let cli = Cli::parse();
    // Real abra fails like this without a terminal, even with -n; cc-ci must give it one.
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        eprintln!(
            "FATA abra-standin: inappropriate ioctl for device (stdout is not a terminal; run it under a pseudo-terminal, as abra needs)"
        );
        std::process::exit(1);
    }
    if let Err(e) = run(cli) {
        eprintln!("FATA {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = cli.no_input;
    let dir = AbraDir::from_env()?;
    match cli.command {
        Top::Server {
            command: ServerCmd::Add { local },
        } => {
            if !local {
                anyhow::bail!("the stand-in only supports `server add --local`");
            }
            app::server_add_local(&dir)
        }
        Top::Recipe {
            command: RecipeCmd::Versions { recipe },
        } => app::recipe_versions(&dir, &recipe),
        Top::App { command } => match command {
            AppCmd::New {
                recipe,
                server,
                domain,
                secrets,
            } => app::app_new(&dir, &recipe, &server, &domain, secrets),
            AppCmd::Deploy {
                domain,
                version,
                chaos,
                no_domain_checks,
                no_converge_checks,
                force,
            } => deploy::deploy(
                &dir,
                &deploy::DeployArgs {
                    domain: &domain,
                    version: version.as_deref(),
                    chaos,
                    domain_checks: !no_domain_checks,
                    converge_checks: !no_converge_checks,
                    force,
                },
            ),
            AppCmd::Secret {
                command:
                    SecretCmd::Insert {
                        domain,
                        name,
                        version,
                        value,
                    },
            } => app::secret_insert(&dir, &domain, &name, &version, &value),
            AppCmd::Undeploy { domain } => deploy::undeploy(&dir, &domain),
            AppCmd::Backup { command } => match command {
                BackupCmd::Create { domain } => backup::create(&dir, &domain),
                BackupCmd::List { domain } => backup::list(&dir, &domain),
                BackupCmd::Ls { domain, snapshot } => backup::ls(&dir, &domain, &snapshot),
            },
            AppCmd::Restore { domain, snapshot } => {
                backup::restore(&dir, &domain, snapshot.as_deref())
            }
        },
    }
}
