//! Host-port leases of a run (see `crate::ports`): taken before the first deploy, held until
//! the run ends, waited for when another cc-ci run holds them, refused when something that is
//! not a cc-ci run publishes them.

use std::time::{Duration, Instant};

use super::job::{Job, Stop};
use super::output::write_json;
use crate::contract::files;
use crate::hostenv::work_dir;
use crate::names;
use crate::ports;
use crate::recipe::PublishedPort;
use crate::report::TeardownReport;
use crate::wait::{Probe, WaitError, wait_for};

impl Job {
    pub(super) async fn lease_host_ports(
        &mut self,
        published: &[PublishedPort],
    ) -> Result<(), Stop> {
        let keys = ports::keys(published);
        if keys.is_empty() {
            return Ok(());
        }
        let work = work_dir(&self.opts.config, &self.opts.host);
        let h = &self.opts.config;
        let wanted = keys
            .iter()
            .map(|(p, proto)| format!("{p}/{proto}"))
            .collect::<Vec<_>>()
            .join(", ");
        let start = Instant::now();
        let last_shown = std::sync::Mutex::new(String::new());
        let waited = wait_for(
            &format!("host ports {wanted} held by other cc-ci runs"),
            Duration::from_secs(h.port_lease_timeout_secs),
            Duration::from_millis(h.poll_interval_ms),
            || async {
                let got = ports::try_lease(&work, &keys, &self.domain)?;
                Ok::<_, ports::LeaseError>(match got {
                    ports::Lease::Got(lease) => Probe::Done(lease),
                    ports::Lease::Taken(taken) => {
                        let who = ports::describe_taken(&taken);
                        let mut shown = last_shown.lock().unwrap_or_else(|e| e.into_inner());
                        if *shown != who {
                            self.progress.step(&format!(
                                "waiting for host ports held by other cc-ci runs: {who}"
                            ));
                            // Visible to whoever reads progress.json while we wait; progress is
                            // best effort, the final report files decide the exit code.
                            let mut partial = self.report(TeardownReport::default());
                            partial.notes.push(format!(
                                "waiting for host ports held by other cc-ci runs: {who}"
                            ));
                            let _ = write_json(
                                &self.opts.report_dir.join(files::PROGRESS_JSON),
                                &partial,
                                &self.redactor,
                            );
                            *shown = who.clone();
                        }
                        Probe::Pending(who)
                    }
                })
            },
        )
        .await;
        let lease = match waited {
            Ok(l) => l,
            Err(WaitError::Probe(e)) => return Err(Stop::Infra(e.to_string())),
            Err(e) => {
                return Err(Stop::Infra(format!(
                    "{e}; raise harness.port_lease_timeout_secs or run fewer port-publishing recipes at once"
                )));
            }
        };
        let waited_for = last_shown.into_inner().unwrap_or_else(|e| e.into_inner());
        self.notes.push(if waited_for.is_empty() {
            format!("host ports {wanted} leased for the deployment's life")
        } else {
            format!(
                "host ports {wanted} leased for the deployment's life after waiting {:.1} s for {waited_for}",
                start.elapsed().as_secs_f64()
            )
        });
        self.port_lease = Some(lease);
        // With the lease ours, anything else publishing these ports is not a cc-ci run of this
        // host (or one kept or left behind): the infrastructure's problem, never the recipe's.
        let holders = self.swarm.port_holders().await?;
        let problems = foreign_holders(
            &keys,
            &holders,
            &self.stack,
            &self.opts.config.domain_suffix,
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Stop::Infra(problems.join("; ")))
        }
    }
}

/// What, besides this run's own stack, publishes one of `keys`: each as a sentence saying what to
/// do about it. A cc-ci stack there holds no lease (a lease is exclusive and this run has it).
pub(super) fn foreign_holders(
    keys: &[(u16, String)],
    holders: &[crate::engine::PortHolder],
    own_stack: &str,
    domain_suffix: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (port, proto) in keys {
        for h in holders
            .iter()
            .filter(|h| h.port == *port && h.protocol == *proto)
            .filter(|h| h.stack.as_deref() != Some(own_stack))
        {
            problems.push(match h.stack.as_deref() {
                Some(st) if names::is_ci_stack(st, domain_suffix) => {
                    // Stack = domain with `.` → `_`; cc-ci domains have no `_`.
                    let domain = st.replace('_', ".");
                    format!(
                        "host port {port}/{proto} is published by {} {} of the cc-ci deployment {domain} that no run holds (kept with --keep-on-failure, or left by a run that died): remove it with `cc-ci teardown {domain}` or `cc-ci gc`",
                        h.kind, h.name
                    )
                }
                _ => format!(
                    "host port {port}/{proto} is held by {} {}, which is not a cc-ci run: free the port, or test this recipe on a swarm without it",
                    h.kind, h.name
                ),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::PortHolder;

    #[test]
    fn foreign_holders_are_named_with_what_to_do() {
        let holder = |port, name: &str, stack: Option<&str>| PortHolder {
            port,
            protocol: "tcp".into(),
            name: name.into(),
            stack: stack.map(String::from),
            kind: "service",
        };
        let holders = [
            holder(80, "traefik_app", Some("traefik")),
            holder(
                443,
                "webp-abc123_ci_local_app",
                Some("webp-abc123_ci_local"),
            ),
            holder(8080, "mine_app", Some("webp-000001_ci_local")),
            holder(9999, "elsewhere", None),
        ];
        let keys: Vec<(u16, String)> = [80, 443, 8080, 53]
            .into_iter()
            .map(|p| (p, "tcp".to_string()))
            .collect();
        let p = foreign_holders(&keys, &holders, "webp-000001_ci_local", "ci.local");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("80/tcp is held by service traefik_app, which is not a cc-ci run"));
        assert!(
            p[1].contains("cc-ci deployment webp-abc123.ci.local")
                && p[1].contains("cc-ci teardown webp-abc123.ci.local"),
            "{}",
            p[1]
        );
        // Another protocol on the same number is another port.
        let udp = [(80, "udp".to_string())];
        assert!(foreign_holders(&udp, &holders, "x", "ci.local").is_empty());
    }
}
