//! Data and overlay checks inside the stack's containers: canaries in named volumes, overlay
//! seed/verify pairs, HTTP/exec checks.

use std::collections::BTreeMap;
use std::time::Duration;

use super::backup_labels::backup_selection;
use super::job::{Job, Stop};
use crate::checks::StackSnapshot;
use crate::contract::Stage;
use crate::overlay::{self, CheckKind};
use crate::report::{CheckResult, Verdict};

/// The canary file written into every named volume.
pub(super) const CANARY_FILE: &str = ".cc-ci-canary";

/// Judges the output of an overlay check's command.
type Judge = Box<dyn Fn(&crate::engine::ExecOutput) -> Result<String, String>>;

impl Job {
    /// Writes a fresh random canary into every named volume of the stack (only into volumes
    /// backed up whole when `backed_up_only`), remembering the values.
    pub(super) async fn write_canaries(
        &mut self,
        backed_up_only: Option<bool>,
    ) -> Result<Canaries, Stop> {
        let snap = self.swarm.snapshot(&self.stack).await?;
        let targets: Vec<(String, String, String)> = if backed_up_only.is_some() {
            backup_selection(&snap, &self.stack)
                .into_iter()
                .filter(|(_, paths)| paths.is_none())
                .filter_map(|(vol, _)| mount_of(&snap, &vol).map(|(c, t)| (vol, c, t)))
                .collect()
        } else {
            volume_mounts(&snap)
        };
        self.canaries.clear();
        for (vol, container, target) in targets {
            let value = format!("cc-ci-{:016x}", rand::random::<u64>());
            let path = format!("{target}/{CANARY_FILE}");
            match self.swarm.write_file(&container, &path, &value).await {
                Ok(o) if o.exit_code == 0 => {
                    self.canaries.insert(vol, value);
                }
                Ok(o) => {
                    return Ok(Canaries::NotWritten(format!(
                        "volume {vol}: writing the canary exited {}: {}",
                        o.exit_code,
                        o.stderr.trim()
                    )));
                }
                Err(e) if e.is_unreachable() => return Err(e.into()),
                Err(e) => return Ok(Canaries::NotWritten(format!("volume {vol}: {e}"))),
            }
        }
        Ok(Canaries::Written)
    }

    pub(super) async fn verify_canaries(
        &self,
        name: &str,
        expected: &BTreeMap<String, String>,
    ) -> Result<CheckResult, Stop> {
        if expected.is_empty() {
            return Ok(CheckResult::generic(
                name,
                Verdict::Skipped,
                "the stack has no named volumes to check",
            ));
        }
        let snap = self.swarm.snapshot(&self.stack).await?;
        let mut problems = Vec::new();
        for (vol, value) in expected {
            let short_vol = vol.strip_prefix(&format!("{}_", self.stack)).unwrap_or(vol);
            let Some((container, target)) = mount_of(&snap, vol) else {
                problems.push(format!(
                    "volume {short_vol} is no longer mounted by any running service"
                ));
                continue;
            };
            let r = self
                .swarm
                .read_file(&container, &format!("{target}/{CANARY_FILE}"))
                .await;
            match r {
                Ok(o) if o.exit_code == 0 && o.stdout == *value => {}
                Ok(o) if o.exit_code == 0 => problems.push(format!(
                    "volume {short_vol}: canary changed (expected {value}, found {})",
                    o.stdout.trim()
                )),
                Ok(_) => problems.push(format!(
                    "volume {short_vol}: the canary file is gone: data was lost"
                )),
                Err(e) if e.is_unreachable() => return Err(e.into()),
                Err(e) => problems.push(format!("volume {short_vol}: {e}")),
            }
        }
        Ok(if problems.is_empty() {
            CheckResult::generic(
                name,
                Verdict::Pass,
                format!("{} volume canaries read back unchanged", expected.len()),
            )
        } else {
            CheckResult::generic(name, Verdict::Fail, problems.join("; "))
        })
    }

    /// The running container of `service`: `Ran::NotRun` says why there is none.
    pub(super) async fn container_of(&self, service: &str) -> Result<Container, Stop> {
        let snap = self.swarm.snapshot(&self.stack).await?;
        let Some(s) = snap.service(service) else {
            return Ok(Container::None(format!(
                "no service `{service}` in the stack"
            )));
        };
        Ok(
            match s.running_tasks().find_map(|t| t.container_id.clone()) {
                Some(c) => Container::Running(c),
                None => Container::None(format!("service `{service}` has no running container")),
            },
        )
    }

    pub(super) async fn exec_in(&self, service: &str, cmd: &[String]) -> Result<Ran, Stop> {
        let container = match self.container_of(service).await? {
            Container::Running(c) => c,
            Container::None(why) => return Ok(Ran::NotRun(why)),
        };
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        match self
            .swarm
            .exec(&container, &args, Duration::from_secs(120))
            .await
        {
            // Redacted before anything judges or quotes it: an excerpt could cut a secret in two.
            Ok(o) => Ok(Ran::Output(crate::engine::ExecOutput {
                exit_code: o.exit_code,
                stdout: self.redactor.redact(&o.stdout),
                stderr: self.redactor.redact(&o.stderr),
            })),
            Err(e) if e.is_unreachable() => Err(e.into()),
            Err(e) => Ok(Ran::NotRun(self.redactor.redact(&e.to_string()))),
        }
    }

    pub(super) async fn seed_data(&self) -> Result<Vec<CheckResult>, Stop> {
        let mut out = Vec::new();
        for (source, d) in self.overlay.data.clone() {
            if let Err(e) = self
                .exec_in(&d.service, &d.seed)
                .await?
                .output()
                .and_then(|o| {
                    if o.exit_code == 0 {
                        Ok(())
                    } else {
                        Err(format!("exit {}: {}", o.exit_code, o.stderr.trim()))
                    }
                })
            {
                out.push(CheckResult::new(
                    format!("data:{}:seed", d.name),
                    source,
                    Verdict::Error,
                    self.redactor.redact(&e),
                ));
            }
        }
        Ok(out)
    }

    pub(super) async fn mutate_data(&self) -> Result<Vec<CheckResult>, Stop> {
        let mut out = Vec::new();
        for (source, d) in self.overlay.data.clone() {
            let Some(m) = &d.mutate else { continue };
            if let Err(e) = self.exec_in(&d.service, m).await?.output().and_then(|o| {
                if o.exit_code == 0 {
                    Ok(())
                } else {
                    Err(format!("exit {}: {}", o.exit_code, o.stderr.trim()))
                }
            }) {
                out.push(CheckResult::new(
                    format!("data:{}:mutate", d.name),
                    source,
                    Verdict::Error,
                    self.redactor.redact(&e),
                ));
            }
        }
        Ok(out)
    }

    pub(super) async fn verify_data(&self, stage: Stage) -> Result<Vec<CheckResult>, Stop> {
        let mut out = Vec::new();
        for (source, d) in self.overlay.data.clone() {
            let name = format!("data:{}", d.name);
            let r = self.exec_in(&d.service, &d.verify).await?.output();
            out.push(match r {
                Ok(o) if o.exit_code == 0 && o.stdout.trim() == d.expect.trim() => {
                    CheckResult::new(
                        name,
                        source,
                        Verdict::Pass,
                        format!("verified after {}", stage.name()),
                    )
                }
                Ok(o) => CheckResult::new(
                    name,
                    source,
                    Verdict::Fail,
                    self.redactor.redact(&format!(
                        "after {}: expected `{}`, got `{}` (exit {})",
                        stage.name(),
                        d.expect,
                        crate::report::excerpt(o.stdout.trim(), 200),
                        o.exit_code
                    )),
                ),
                Err(e) => CheckResult::new(name, source, Verdict::Fail, self.redactor.redact(&e)),
            });
        }
        Ok(out)
    }

    pub(super) async fn overlay_checks(&self, stage: Stage) -> Result<Vec<CheckResult>, Stop> {
        let mut out = Vec::new();
        for (source, c) in self.overlay.checks.clone() {
            if !c.tiers.contains(&stage) {
                continue;
            }
            let (cmd, judge): (Vec<String>, Judge) = match &c.kind {
                // `overlay::load` inlines scripts; one that reaches here was never loaded.
                CheckKind::Script { script, .. } => {
                    out.push(CheckResult::new(
                        &c.name,
                        source,
                        Verdict::Error,
                        format!("script `{script}` was not loaded from its overlay folder"),
                    ));
                    continue;
                }
                CheckKind::Http {
                    port,
                    path,
                    status,
                    body_contains,
                } => {
                    let url = format!("http://127.0.0.1:{port}{path}");
                    // Neither `-q` nor `-T`: Debian's static busybox wget crashes when either is combined with
                    // `-S`. The exec itself has a deadline.
                    let (status, body) = (*status, body_contains.clone());
                    (
                        vec!["wget".into(), "-S".into(), "-O-".into(), url],
                        Box::new(move |o| {
                            overlay::judge_http(
                                status,
                                body.as_deref(),
                                o.exit_code,
                                &o.stdout,
                                &o.stderr,
                            )
                        }),
                    )
                }
                CheckKind::Exec {
                    command,
                    exit_code,
                    stdout_contains,
                } => {
                    let (code, needle) = (*exit_code, stdout_contains.clone());
                    (
                        command.clone(),
                        Box::new(move |o| {
                            overlay::judge_exec(
                                code,
                                needle.as_deref(),
                                o.exit_code,
                                &o.stdout,
                                &o.stderr,
                            )
                        }),
                    )
                }
            };
            let r = match &c.kind {
                CheckKind::Http { .. } => self.http_probe(&c.service, &cmd).await?,
                _ => self.exec_in(&c.service, &cmd).await?,
            };
            out.push(match r.output().and_then(|o| judge(&o)) {
                Ok(d) => CheckResult::new(&c.name, source, Verdict::Pass, self.redactor.redact(&d)),
                Err(d) => {
                    CheckResult::new(&c.name, source, Verdict::Fail, self.redactor.redact(&d))
                }
            });
        }
        Ok(out)
    }
}

impl Job {
    /// Runs an HTTP check's `wget`: from cc-ci's probe container on the service's network when
    /// `harness.http_probe_image` is set, else inside the service's own container, saying so
    /// plainly when that has no `wget`.
    async fn http_probe(&self, service: &str, cmd: &[String]) -> Result<Ran, Stop> {
        let Some(image) = self.opts.config.http_probe_image.clone() else {
            let r = self.exec_in(service, cmd).await?;
            return Ok(match r {
                Ran::Output(o) if lacks_program(&o, "wget") => Ran::NotRun(format!(
                    "the container of service `{service}` has no `wget`, which this HTTP check runs inside it: \
                     set harness.http_probe_image to run HTTP checks from cc-ci's own probe container instead"
                )),
                other => other,
            });
        };
        let container = match self.container_of(service).await? {
            Container::Running(c) => c,
            Container::None(why) => return Ok(Ran::NotRun(why)),
        };
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let labels = BTreeMap::from([(
            crate::engine::NAMESPACE_LABEL.to_string(),
            self.stack.clone(),
        )]);
        match self
            .swarm
            .run_probe(&image, &container, &args, &labels, Duration::from_secs(120))
            .await
        {
            Ok(o) if lacks_program(&o, "wget") => Ok(Ran::NotRun(format!(
                "the HTTP probe image `{image}` (harness.http_probe_image) has no `wget`"
            ))),
            Ok(o) => Ok(Ran::Output(o)),
            Err(e) if e.is_unreachable() => Err(e.into()),
            Err(e) => Ok(Ran::NotRun(format!(
                "the HTTP probe container could not run: {e}"
            ))),
        }
    }
}

/// Whether the canaries were written; if not, why.
pub(super) enum Canaries {
    Written,
    NotWritten(String),
}

/// The running container of a service, or why there is none.
pub(super) enum Container {
    Running(String),
    None(String),
}

/// A command run in a service's container (or the HTTP probe): its output, or why it could not run.
pub(super) enum Ran {
    Output(crate::engine::ExecOutput),
    NotRun(String),
}

impl Ran {
    /// The output, or why there is none, for judging with `and_then`.
    fn output(self) -> Result<crate::engine::ExecOutput, String> {
        match self {
            Ran::Output(o) => Ok(o),
            Ran::NotRun(why) => Err(why),
        }
    }
}

/// True when a command failed because `program` does not exist in the container (exec's 126/127
/// with the runtime's or the shell's "not found").
pub(super) fn lacks_program(o: &crate::engine::ExecOutput, program: &str) -> bool {
    let text = format!("{}\n{}", o.stdout, o.stderr);
    matches!(o.exit_code, 126 | 127)
        && (text.contains("executable file not found")
            || text.contains("no such file or directory")
            || text.contains(&format!("{program}: not found"))
            || text.trim().is_empty())
}

/// (full volume name, container id, mount target) for every named volume mounted by a running task.
pub(super) fn volume_mounts(snap: &StackSnapshot) -> Vec<(String, String, String)> {
    let mut seen = BTreeMap::new();
    for s in &snap.services {
        let Some(container) = s.running_tasks().find_map(|t| t.container_id.clone()) else {
            continue;
        };
        for m in s.volume_mounts() {
            seen.entry(m.source.clone())
                .or_insert((container.clone(), m.target.clone()));
        }
    }
    seen.into_iter().map(|(v, (c, t))| (v, c, t)).collect()
}

pub(super) fn mount_of(snap: &StackSnapshot, volume: &str) -> Option<(String, String)> {
    volume_mounts(snap)
        .into_iter()
        .find(|(v, _, _)| v == volume)
        .map(|(_, c, t)| (c, t))
}

#[cfg(test)]
mod tests {
    use super::lacks_program;
    use crate::engine::ExecOutput;

    #[test]
    fn a_missing_program_is_recognised() {
        let o = |code, out: &str| ExecOutput {
            exit_code: code,
            stdout: out.into(),
            stderr: String::new(),
        };
        assert!(lacks_program(
            &o(
                126,
                "OCI runtime exec failed: exec failed: unable to start container process: exec: \"wget\": executable file not found in $PATH: unknown"
            ),
            "wget"
        ));
        assert!(lacks_program(&o(127, "sh: wget: not found"), "wget"));
        assert!(lacks_program(&o(127, ""), "wget"));
        assert!(!lacks_program(
            &o(1, "wget: server returned error: HTTP/1.1 404"),
            "wget"
        ));
        assert!(!lacks_program(&o(0, ""), "wget"));
    }
}
