//! One test's sandbox for `cc-ci run` on the real swarm: a temporary directory, a domain suffix
//! no other test uses, the config file, and an abra wrapper (the stand-in) with a gate:
//! `<dir>/gate-<command>` makes `abra app <command>` wait for `<dir>/go` after creating
//! `<dir>/at-<command>`, so a test can act while that call runs. Optionally a `docker` shim in
//! front of the stand-in records every generated secret value (`docker secret create` reads it
//! on stdin), independent of what abra prints, so texts can be scanned for them. Dropping the
//! sandbox runs `cc-ci gc` with its config until nothing of it is alive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use cc_ci_daemon::config::Config;

use crate::cmd::{sh, write_exe};
use crate::fixtures::make_fixture_repo;
use crate::serve::{gc, gc_until_clean};

/// See the module: a `cc-ci run` sandbox, cleaned up by `cc-ci gc` on drop.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub suffix: String,
    pub config_path: PathBuf,
    pub config: Config,
    cc_ci: PathBuf,
}

impl Sandbox {
    /// A sandbox for runs of `cc_ci` with the stand-in built beside it. The domain suffix is
    /// `<tag><hex>.<zone>` (one zone per test suite); `record_secrets` puts the `docker` shim
    /// in front of the stand-in; `tweak` changes the config (given the sandbox's directory)
    /// before it is written.
    pub fn new(
        cc_ci: &Path,
        tag: &str,
        zone: &str,
        record_secrets: bool,
        tweak: impl FnOnce(&Path, &mut Config),
    ) -> Self {
        let standin = crate::standin_beside(cc_ci);
        let dir = tempfile::tempdir().expect("tempdir");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let suffix = format!("{tag}{:x}.{zone}", std::process::id() ^ nanos);
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = if record_secrets {
            let shim = dir.path().join("shim");
            let secrets = dir.path().join("generated-secrets");
            for d in [&shim, &secrets] {
                std::fs::create_dir_all(d).unwrap();
            }
            let docker = sh("command -v docker");
            write_exe(
                &shim.join("docker"),
                &format!(
                    "#!/bin/sh\n# Records the value of every secret the stand-in creates, then is docker.\n\
                     if [ \"$1\" = secret ] && [ \"$2\" = create ]; then\n\
                     \x20 f=$(mktemp '{secrets}/value.XXXXXX')\n\
                     \x20 tee \"$f\" | '{docker}' \"$@\"\n\
                     \x20 exit $?\n\
                     fi\n\
                     exec '{docker}' \"$@\"\n",
                    secrets = secrets.display(),
                ),
            );
            format!("PATH='{}':\"$PATH\" ", shim.display())
        } else {
            String::new()
        };
        write_exe(
            &bin.join("abra"),
            &format!(
                "#!/bin/sh\nif [ \"$1\" = app ] && [ -e '{dir}/gate-'\"$2\" ]; then\n\
                 \x20 touch '{dir}/at-'\"$2\"\n\
                 \x20 while [ ! -e '{dir}/go' ]; do sleep 0.05; done\n\
                 fi\n\
                 {path}exec '{}' \"$@\"\n",
                standin.display(),
                dir = dir.path().display(),
            ),
        );
        let mut config = Config::default();
        config.harness.abra = Some(bin.join("abra").display().to_string());
        config.harness.domain_suffix = suffix.clone();
        config.harness.work_dir = Some(dir.path().join("work"));
        config.harness.stability_window_secs = 0;
        tweak(dir.path(), &mut config);
        let config_path = dir.path().join("config.toml");
        let s = Sandbox {
            dir,
            suffix,
            config_path,
            config,
            cc_ci: cc_ci.to_path_buf(),
        };
        s.save_config();
        s
    }

    /// Writes [`Sandbox::config`] to the config file (after a test changed it).
    pub fn save_config(&self) {
        std::fs::write(&self.config_path, toml::to_string(&self.config).unwrap()).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A fixture recipe of tests/fixtures as a git repository `<dir>/recipes/<name>`.
    pub fn fixture(&self, name: &str) -> PathBuf {
        let out = self.path("recipes").join(name);
        make_fixture_repo(&crate::fixtures::recipe_dir(name), &out);
        out
    }

    /// The `web` fixture's head as a one-commit repository `<case>/web` (so its repository is
    /// `<case>/web`), after `edit` changed its files. Symlinks are committed as symlinks.
    pub fn recipe(&self, case: &str, edit: impl FnOnce(&Path)) -> PathBuf {
        let out = self.path(&format!("recipes/{case}/web"));
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        sh(&format!(
            "cp -a '{}' '{}'",
            crate::fixtures::recipe_dir("web/03-head").display(),
            out.display()
        ));
        edit(&out);
        sh(&format!(
            "cd '{}' && git init -q -b main && git add -A && \
             git -c user.name=t -c user.email=t@localhost -c commit.gpgsign=false commit -qm hostile",
            out.display()
        ));
        out
    }

    /// `cc-ci run` of `recipe` with this sandbox's config (stdin closed).
    pub fn command(&self, recipe: &Path, report: &Path, stages: &str) -> Command {
        let mut c = Command::new(&self.cc_ci);
        c.arg("run")
            .arg("--recipe")
            .arg(recipe)
            .arg("--report-dir")
            .arg(report)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--stages")
            .arg(stages)
            .env_remove("CC_CI_ABRA")
            .stdin(Stdio::null());
        c
    }

    /// [`Sandbox::command`] to its end.
    pub fn run(&self, recipe: &Path, report: &Path, stages: &str) -> Output {
        self.command(recipe, report, stages)
            .output()
            .expect("run cc-ci run")
    }

    /// [`Sandbox::command`] started, its stderr (the progress lines) to the file `stderr`.
    pub fn spawn_run(&self, recipe: &Path, report: &Path, stderr: &Path, stages: &str) -> Child {
        Self::spawn(self.command(recipe, report, stages), stderr)
    }

    /// [`Sandbox::spawn_run`] with the Docker engine at the unix socket `engine` (a
    /// [`crate::proxy`]).
    pub fn spawn_run_behind(
        &self,
        engine: &Path,
        recipe: &Path,
        report: &Path,
        stderr: &Path,
        stages: &str,
    ) -> Child {
        let mut c = self.command(recipe, report, stages);
        c.env("DOCKER_HOST", format!("unix://{}", engine.display()));
        Self::spawn(c, stderr)
    }

    fn spawn(mut c: Command, stderr: &Path) -> Child {
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("start cc-ci run")
    }

    /// Swarm objects named after this sandbox's stacks (`<app>_<suffix with _>`), by the docker
    /// CLI: independent of the harness's own listing.
    pub fn leftovers(&self) -> Vec<String> {
        let needle = format!("_{}", self.suffix.replace('.', "_"));
        let mut out = Vec::new();
        for (kind, args) in [
            ("service", &["service", "ls", "--format", "{{.Name}}"][..]),
            ("network", &["network", "ls", "--format", "{{.Name}}"]),
            ("secret", &["secret", "ls", "--format", "{{.Name}}"]),
            ("config", &["config", "ls", "--format", "{{.Name}}"]),
            ("volume", &["volume", "ls", "--format", "{{.Name}}"]),
            ("container", &["ps", "-a", "--format", "{{.Names}}"]),
        ] {
            let o = Command::new("docker").args(args).output().expect("docker");
            assert!(o.status.success(), "docker {args:?} failed");
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(&needle))
                    .map(|l| format!("{kind} {l}")),
            );
        }
        out
    }

    /// Run directories still in the work dir.
    pub fn run_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.path("work/runs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// `cc-ci gc` with this sandbox's config: (exit code, stderr).
    pub fn gc(&self) -> (i32, String) {
        gc(&self.cc_ci, &self.config_path)
    }

    /// gc, then nothing of this sandbox may be on the swarm or in the work dir.
    pub fn assert_clean(&self, what: &str) {
        let (code, out) = self.gc();
        assert_eq!(code, 0, "{what}: cc-ci gc failed:\n{out}");
        let left = self.leftovers();
        assert!(left.is_empty(), "{what}: objects remain: {left:?}\n{out}");
        assert!(
            self.run_dirs().is_empty(),
            "{what}: run directories remain: {:?}",
            self.run_dirs()
        );
    }

    /// The secret values generated in this sandbox (with `record_secrets`).
    pub fn secrets(&self) -> Vec<String> {
        std::fs::read_dir(self.path("generated-secrets"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        gc_until_clean(&self.cc_ci, &self.config_path);
    }
}
