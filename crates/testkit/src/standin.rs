//! The stand-in's test scaffolding: a per-test `ABRA_DIR` with a fixture recipe checked out, the
//! stand-in run under a pseudo-terminal (`script` from util-linux), and removal of every swarm
//! object of the test's stack on drop, pass or fail. Needs `scripts/setup-swarm` to have run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::docker;
use crate::fixtures::{make_fixture_repo, recipe_dir};

/// Single-quotes `s` for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a stand-in command did.
pub struct Out {
    pub code: i32,
    /// stdout and stderr as the terminal showed them, without carriage returns.
    pub text: String,
}

/// An app of a fixture recipe in its own `ABRA_DIR`; its stack is removed on drop.
pub struct App {
    /// The stand-in binary (`CARGO_BIN_EXE_abra-standin` of the stand-in's tests).
    pub bin: PathBuf,
    pub abra_dir: tempfile::TempDir,
    pub recipe: String,
    pub domain: String,
    pub stack: String,
}

impl App {
    /// A fresh `ABRA_DIR` with server `default` and the fixture recipe `fixture` cloned into
    /// `recipes/`; `prefix` starts the app's unique domain; `bin` is the stand-in.
    pub fn new(bin: &Path, fixture: &str, prefix: &str) -> App {
        let abra_dir = tempfile::tempdir().expect("tempdir");
        make_fixture_repo(
            &recipe_dir(fixture),
            &abra_dir.path().join("recipes").join(fixture),
        );
        let domain = format!(
            "{prefix}-{:06x}.standin.test",
            rand::random::<u32>() & 0xff_ffff
        );
        let app = App {
            bin: bin.to_path_buf(),
            abra_dir,
            recipe: fixture.to_string(),
            stack: domain.replace('.', "_"),
            domain,
        };
        app.ok(&["server", "add", "--local", "-n"]);
        app
    }

    pub fn recipe_dir(&self) -> PathBuf {
        self.abra_dir.path().join("recipes").join(&self.recipe)
    }

    pub fn env_file(&self) -> PathBuf {
        self.abra_dir
            .path()
            .join("servers/default")
            .join(format!("{}.env", self.domain))
    }

    pub fn env_text(&self) -> String {
        std::fs::read_to_string(self.env_file()).expect("env file")
    }

    /// Runs the stand-in under a pseudo-terminal, as cc-ci does.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    /// `app deploy <domain> -D -c <extra> -n` (as cc-ci deploys), then waits until the stack has
    /// converged the way cc-ci checks it.
    pub fn deploy(&self, extra: &[&str]) -> String {
        let mut args = vec!["app", "deploy", self.domain.as_str(), "-D", "-c"];
        args.extend_from_slice(extra);
        args.push("-n");
        let out = self.ok(&args);
        self.wait_converged();
        out
    }

    /// Until every service of the stack runs its replicas, healthy, with no update going on.
    pub fn wait_converged(&self) {
        let label = format!("label=com.docker.stack.namespace={}", self.stack);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let replicas = docker(&[
                "service",
                "ls",
                "--filter",
                &label,
                "--format",
                "{{.Replicas}}",
            ]);
            let services_ok = !replicas.trim().is_empty()
                && replicas.lines().all(|r| {
                    let r = r.split_whitespace().next().unwrap_or("");
                    r.split_once('/').is_some_and(|(a, b)| a == b)
                });
            let statuses = docker(&["ps", "--filter", &label, "--format", "{{.Status}}"]);
            let health_ok = !statuses.contains("starting") && !statuses.contains("unhealthy");
            let ids = docker(&["service", "ls", "-q", "--filter", &label]);
            let updating = ids.lines().any(|id| {
                docker(&[
                    "service",
                    "inspect",
                    "--format",
                    "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                    id.trim(),
                ])
                .trim()
                    == "updating"
            });
            if services_ok && health_ok && !updating {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not converge within 120s: replicas {replicas:?}, containers {statuses:?}",
                self.stack
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Like [`App::run`], with extra environment for the stand-in.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = sh_quote(&self.bin.to_string_lossy());
        for a in args {
            cmd.push(' ');
            cmd.push_str(&sh_quote(a));
        }
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("ABRA_DIR", self.abra_dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run script(1): install util-linux");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .replace('\r', "");
        Out {
            code: out.status.code().unwrap_or(-1),
            text,
        }
    }

    /// Runs the stand-in and requires success; returns what it printed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "abra {} failed:\n{}", args.join(" "), o.text);
        o.text
    }

    /// Runs the stand-in and requires failure; returns what it printed.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.code,
            1,
            "abra {} should have failed:\n{}",
            args.join(" "),
            o.text
        );
        o.text
    }

    /// `app new -S`; returns the generated secrets (name, value) from its table.
    pub fn new_app(&self) -> Vec<(String, String)> {
        let out = self.ok(&[
            "app",
            "new",
            &self.recipe,
            "--server",
            "default",
            "--domain",
            &self.domain,
            "-S",
            "-n",
        ]);
        let mut rows = Vec::new();
        let mut in_table = false;
        for line in out.lines() {
            let cells: Vec<&str> = line.split('│').map(str::trim).collect();
            if cells.len() != 4 {
                continue;
            }
            if cells[1] == "NAME" && cells[2] == "VALUE" {
                in_table = true;
            } else if in_table {
                rows.push((cells[1].to_string(), cells[2].to_string()));
            }
        }
        rows
    }

    pub fn service_labels(&self, service: &str) -> serde_json::Value {
        let out = docker(&[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.Labels}}",
            &format!("{}_{service}", self.stack),
        ]);
        serde_json::from_str(out.trim()).expect("labels json")
    }

    pub fn label(&self, service: &str, key: &str) -> Option<String> {
        self.service_labels(service)
            .get(format!("coop-cloud.{}.{key}", self.stack))
            .and_then(|v| v.as_str().map(String::from))
    }

    /// `sh -c <script>` in the running container of a service of the app.
    pub fn exec(&self, service: &str, script: &str) -> String {
        let id = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!(
                "label=com.docker.swarm.service.name={}_{service}",
                self.stack
            ),
            "--filter",
            "status=running",
        ]);
        let id = id.lines().next().expect("a running container").to_string();
        docker(&["exec", &id, "sh", "-c", script])
    }

    fn objects(&self) -> Vec<String> {
        let label = format!("label=com.docker.stack.namespace={}", self.stack);
        let mut left = Vec::new();
        for (what, args) in [
            ("service", vec!["service", "ls", "-q", "--filter", &label]),
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("config", vec!["config", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            let out = Command::new("docker").args(&args).output();
            if let Ok(o) = out {
                for l in String::from_utf8_lossy(&o.stdout).lines() {
                    left.push(format!("{what} {}", l.trim()));
                }
            }
        }
        let prefix = format!("{}_", self.stack);
        if let Ok(o) = Command::new("docker")
            .args(["secret", "ls", "--format", "{{.Name}}"])
            .output()
        {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                if l.starts_with(&prefix) {
                    left.push(format!("secret {l}"));
                }
            }
        }
        left
    }

    /// Everything of this app that exists on the swarm.
    pub fn leftovers(&self) -> Vec<String> {
        self.objects()
    }
}

impl Drop for App {
    /// Removes every object of the stack with plain docker commands (not the stand-in, which may
    /// be what failed), waiting until they are gone.
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["stack", "rm", &self.stack]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = self.objects();
            if left.is_empty() {
                return;
            }
            for o in &left {
                let (what, id) = o.split_once(' ').unwrap_or((o, ""));
                match what {
                    "network" | "config" | "secret" | "volume" => quiet(&[what, "rm", id]),
                    "container" => quiet(&["rm", "-f", id]),
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                eprintln!("cleanup of {} gave up; still there: {left:?}", self.stack);
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
