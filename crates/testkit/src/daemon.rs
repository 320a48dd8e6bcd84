//! The daemon under test in this process: a forge double, a config over a temporary state
//! directory, and a fake `cc-ci` as the run command whose runs pass, fail, hang or wait as a
//! test says ([`fake_exe`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cc_ci_daemon::config::Config;
use cc_ci_daemon::store::Store;
use cc_ci_daemon::{Daemon, ServeOptions, Tuning};

use crate::cmd::{mkfifo, read};
use crate::forge::{CommentRec, Gitea, SHA, SHA2, StatusRec, TOKEN};
use crate::hooks::SECRET;
use crate::wait::eventually;

/// The fake `cc-ci`: `run` behaves as `<marks>/mode.<run id>` (else `<marks>/mode`) says:
/// pass | fail | infra | hang | stubborn (ignores SIGTERM) | gated (waits for `<marks>/go`) |
/// othersha (passes, but reports another commit than it was given).
/// `gc` appends to `<marks>/gc.log`. Every run appends its arguments to `<marks>/runs.log`.
pub fn fake_exe(marks: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/bash
MARK='{marks}'
cmd=$1; shift
if [ "$cmd" = gc ]; then echo "gc $*" >> "$MARK/gc.log"; echo "gc: 0 collected"; exit 0; fi
[ "$cmd" = run ] || exit 2
dir=""; stages=""; recipe=""; ref=""; config=""
while [ $# -gt 0 ]; do
  case "$1" in
    --report-dir) dir=$2; shift 2;;
    --stages) stages=$2; shift 2;;
    --recipe) recipe=$2; shift 2;;
    --ref) ref=$2; shift 2;;
    --config) config=$2; shift 2;;
    *) shift;;
  esac
done
id=$(basename "$dir")
echo "$id $$" >> "$MARK/pids"
echo "run id=$id recipe=$recipe ref=$ref stages=$stages config=$config" >> "$MARK/runs.log"
mode=$(cat "$MARK/mode.$id" 2>/dev/null || cat "$MARK/mode" 2>/dev/null || echo pass)
# The commit the run tests: the ref when it is one (the daemon passes the approved commit).
head=$ref
case "$ref" in *[!0-9a-f]*|"") head={sha};; esac
[ "$mode" = othersha ] && head={sha2}
echo "[0.0s] cloning $recipe at $ref (leaky: {token})" >&2
tier() {{ echo "{{\"name\":\"$1\",\"verdict\":\"$2\",\"duration_ms\":1500,\"checks\":[{{\"name\":\"converged\",\"source\":\"generic\",\"verdict\":\"$2\",\"detail\":\"$3\"}}]}}"; }}
report() {{
  echo "{{\"recipe\":\"web\",\"ref\":\"$ref\",\"head_sha\":\"$head\",\"base_version\":null,\"app_domain\":\"web-abcdef.ci.local\",\"verdict\":\"$1\",\"deploy_count\":1,\"tiers\":[$2],\"teardown\":{{\"verdict\":\"pass\",\"leftovers\":[]}},\"notes\":[]}}" > "$dir/$3"
}}
report error "$(tier install pass)" progress.json
echo "[1.5s] install: pass"
case "$mode" in
  pass|othersha) report pass "$(tier install pass)" run.json; echo "| install | pass |"; exit 0;;
  fail) report fail "$(tier install fail 'service web never became healthy')" run.json; exit 1;;
  infra) echo "docker engine unreachable at /var/run/docker.sock" >&2; exit 3;;
  hang) trap 'echo "term $id" >> "$MARK/term.log"; exit 143' TERM; echo "$id" >> "$MARK/hanging"; sleep 1000 & wait $!;;
  stubborn) trap 'echo "ignored term $id" >> "$MARK/term.log"' TERM; echo "$id" >> "$MARK/hanging"; while :; do sleep 1000 & wait $!; done;;
  gated) trap 'echo "term $id" >> "$MARK/term.log"; exit 143' TERM; read -r line < "$MARK/go"; report pass "$(tier install pass)" run.json; exit 0;;
esac
exit 2
"#,
        marks = marks.display(),
        token = TOKEN,
        sha = SHA,
        sha2 = SHA2,
    );
    let path = marks.join("fake-cc-ci");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The process id of the fake run process of run `id` (its last attempt).
pub fn run_pid(marks: &Path, id: i64) -> Option<i32> {
    read(&marks.join("pids"))
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(i, _)| *i == id.to_string())
        .filter_map(|(_, p)| p.trim().parse().ok())
        .next_back()
}

/// A test environment: forge double, config, state dir and fake run command.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub gitea: Gitea,
    pub config: Config,
    pub exe: PathBuf,
}

impl Env {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let gitea = Gitea::start().await;
        let marks = dir.path().join("marks");
        std::fs::create_dir_all(&marks).unwrap();
        let exe = fake_exe(&marks);
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let mut config = Config::default();
        config.daemon.state_dir = Some(dir.path().join("state"));
        config.daemon.listen = "127.0.0.1:0".into();
        config.daemon.public_url = "http://ci.test".into();
        config.daemon.cancel_grace_secs = 2;
        config.forge.url = gitea.url();
        config.forge.token_file = Some(dir.path().join("token"));
        config.forge.webhook_secret_file = Some(dir.path().join("secret"));
        config.forge.repo_allowlist = vec!["coop/web".into(), "coop/other".into()];
        config.forge.org_allowlist = vec!["coop".into()];
        config.forge.user_allowlist = vec!["alice".into()];
        gitea.add_pr("coop/web", 1, SHA);
        Env {
            dir,
            gitea,
            config,
            exe,
        }
    }

    /// A new environment with its daemon started ([`Env::start`]) and the address it listens on;
    /// `mode`, when given, is the fake's mode for every run ([`Env::set_mode`] with no run id).
    pub async fn started(mode: Option<&str>) -> (Env, Daemon, SocketAddr) {
        let env = Env::new().await;
        if let Some(mode) = mode {
            env.set_mode(None, mode);
        }
        let d = env.start().await;
        let addr = d.local_addr().unwrap();
        (env, d, addr)
    }

    pub fn marks(&self) -> PathBuf {
        self.dir.path().join("marks")
    }

    pub fn set_mode(&self, run: Option<i64>, mode: &str) {
        let name = match run {
            Some(id) => format!("mode.{id}"),
            None => "mode".into(),
        };
        std::fs::write(self.marks().join(name), mode).unwrap();
    }

    /// Wait until run `id` hangs with its SIGTERM handler in place (`hang`, `stubborn`).
    pub async fn wait_hanging(&self, id: i64) {
        let file = self.marks().join("hanging");
        eventually(
            &format!("run {id} to hang"),
            20,
            || {
                read(&file)
                    .lines()
                    .any(|l| l == id.to_string())
                    .then_some(())
            },
            || self.state(),
        )
        .await
    }

    /// Make `gated` runs wait until [`Env::release`].
    pub fn gate(&self) {
        mkfifo(&self.marks().join("go"));
    }

    /// Let one waiting `gated` run finish (blocks until it reads).
    pub async fn release(&self) {
        let fifo = self.marks().join("go");
        tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
            .await
            .unwrap()
            .unwrap();
    }

    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            config_path: Some(self.dir.path().join("config.toml")),
            listen: None,
            run_exe: Some(self.exe.clone()),
            tuning: Tuning {
                tick: Duration::from_millis(100),
                forge_attempts: 2,
                forge_backoff: Duration::from_millis(50),
                retry_base: Duration::from_secs(1),
                progress_interval: Duration::from_millis(100),
                report_attempts: 16,
                gc_timeout: Duration::from_secs(30),
                final_report_timeout: Duration::from_secs(5),
            },
            host: cc_ci_harness::hostenv::HostEnv::from_process(),
        }
    }

    /// Start the daemon with the env's config; the forge double delivers the bot's own
    /// comments back to it, as Gitea does.
    pub async fn start(&self) -> Daemon {
        let d = self.daemon(self.config.clone()).await;
        self.gitea.state.lock().unwrap().hook = d.local_addr();
        d
    }

    /// Start the daemon with `config`; the forge double does not deliver the bot's own comments
    /// back (set `hook` for that).
    pub async fn daemon(&self, config: Config) -> Daemon {
        Daemon::start(config, self.options()).await.unwrap()
    }

    /// The daemon's store (the daemon must have created it).
    pub fn store(&self) -> Store {
        let dir = self.config.daemon.state_dir.as_ref().unwrap();
        Store::open_existing(&cc_ci_daemon::database_path(dir)).unwrap()
    }

    /// The run a trigger comment became, once it has.
    pub async fn run_of_comment(&self, comment_id: i64) -> i64 {
        let db = cc_ci_daemon::database_path(self.config.daemon.state_dir.as_ref().unwrap());
        eventually(
            &format!("a run for comment {comment_id}"),
            20,
            || {
                let store = Store::open_existing(&db).ok()?;
                store
                    .list_runs(1000)
                    .ok()?
                    .into_iter()
                    .find(|r| r.trigger_comment_id == Some(comment_id))
                    .map(|r| r.id)
            },
            || self.state(),
        )
        .await
    }

    /// Every answer the daemon gave to the deliveries of its own comments.
    pub fn hook_answers(&self) -> Vec<(u16, String)> {
        self.gitea.state.lock().unwrap().hook_answers.clone()
    }

    pub fn state(&self) -> String {
        format!(
            "{}runs.log:\n{}term.log:\n{}",
            self.gitea.describe(),
            read(&self.marks().join("runs.log")),
            read(&self.marks().join("term.log"))
        )
    }

    /// Wait until the forge shows a final (non-pending) status with `description` containing
    /// `needle` for commit `sha`.
    pub async fn wait_status(&self, sha: &str, state: &str, needle: &str) -> StatusRec {
        eventually(
            &format!("a `{state}` status containing `{needle}` on {sha}"),
            20,
            || {
                self.gitea
                    .statuses()
                    .into_iter()
                    .find(|s| s.sha == sha && s.state == state && s.description.contains(needle))
            },
            || self.state(),
        )
        .await
    }

    /// Wait until the bot comment for run `id` contains `needle`.
    pub async fn wait_comment(&self, id: i64, needle: &str) -> CommentRec {
        let marker = format!("<!-- cc-ci run {id} -->");
        eventually(
            &format!("the comment of run {id} to contain `{needle}`"),
            20,
            || {
                self.gitea
                    .bot_comments()
                    .into_iter()
                    .find(|c| c.body.contains(&marker) && c.body.contains(needle))
            },
            || self.state(),
        )
        .await
    }

    /// Wait until the daemon has polled `repo` once (it then knows where to read from); its
    /// store.
    pub async fn wait_first_poll(&self, repo: &str) -> Store {
        let db = self.store();
        eventually(
            &format!("the first poll of {repo}"),
            10,
            || db.poll_since(repo).unwrap(),
            || self.state(),
        )
        .await;
        db
    }

    /// Wait until a comment of the bot contains `needle` (a reply, not a run's comment).
    pub async fn wait_reply(&self, needle: &str) -> CommentRec {
        eventually(
            &format!("a reply containing `{needle}`"),
            10,
            || {
                self.gitea
                    .bot_comments()
                    .into_iter()
                    .find(|c| c.body.contains(needle))
            },
            || self.state(),
        )
        .await
    }
}
