//! Host-port leases: two deployments publishing the same host port cannot coexist on one swarm,
//! so a run whose compose files publish host ports holds a lease on each of them for its
//! deployment's life.
//!
//! A lease is an exclusive `flock` on `<work_dir>/ports/<port>-<protocol>.lock`, like the run
//! lock: the kernel drops it when the process dies however it dies, so a crashed run never
//! leaves a port leased, and gc has nothing to clean. The file holds the app domain of the run
//! holding it, so a waiting run can say whom it waits for. Lock files are never removed: removing
//! one another run is about to lock would let two runs hold "the same" port.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::recipe::PublishedPort;

#[derive(Debug, thiserror::Error)]
#[error("cannot use the port lease file {path}: {source} (check that the work dir is writable)")]
pub struct LeaseError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Held leases; dropping it releases them.
#[derive(Debug)]
pub struct PortLease {
    _files: Vec<File>,
    /// `80/tcp`, … in port order.
    pub ports: Vec<String>,
}

/// Where the lease files live.
pub fn lease_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("ports")
}

/// The distinct `port/protocol` keys of `ports`, sorted.
pub fn keys(ports: &[PublishedPort]) -> Vec<(u16, String)> {
    let mut k: Vec<(u16, String)> = ports.iter().map(|p| (p.port, p.protocol.clone())).collect();
    k.sort();
    k.dedup();
    k
}

/// Takes every lease at once or none (so two runs each holding one port of the other's pair
/// can never wait on each other). [`Lease::Taken`] names the ports that are taken and the
/// domain of the run holding each (empty when it has not written it yet).
pub fn try_lease(
    work_dir: &Path,
    ports: &[(u16, String)],
    holder: &str,
) -> Result<Lease, LeaseError> {
    let dir = lease_dir(work_dir);
    std::fs::create_dir_all(&dir).map_err(|source| LeaseError {
        path: dir.clone(),
        source,
    })?;
    let mut held = Vec::new();
    let mut taken = Vec::new();
    for (port, proto) in ports {
        let path = dir.join(format!("{port}-{proto}.lock"));
        let err = |source| LeaseError {
            path: path.clone(),
            source,
        };
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        if f.try_lock().is_ok() {
            held.push(f);
        } else {
            let mut who = String::new();
            let _ = f.read_to_string(&mut who);
            taken.push((format!("{port}/{proto}"), who.trim().to_string()));
        }
    }
    if !taken.is_empty() {
        return Ok(Lease::Taken(taken));
    }
    for (f, (port, proto)) in held.iter_mut().zip(ports) {
        let path = dir.join(format!("{port}-{proto}.lock"));
        let write = f
            .set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| f.write_all(holder.as_bytes()));
        write.map_err(|source| LeaseError { path, source })?;
    }
    Ok(Lease::Got(PortLease {
        _files: held,
        ports: ports
            .iter()
            .map(|(p, proto)| format!("{p}/{proto}"))
            .collect(),
    }))
}

/// What one attempt at leasing a set of ports got.
#[derive(Debug)]
pub enum Lease {
    /// Every port, held until the lease is dropped.
    Got(PortLease),
    /// None: these ports (`port/protocol`, holder's domain) are held by other runs.
    Taken(Vec<(String, String)>),
}

impl Lease {
    /// The lease, or the ports taken by others.
    pub fn got(self) -> Result<PortLease, Vec<(String, String)>> {
        match self {
            Lease::Got(l) => Ok(l),
            Lease::Taken(t) => Err(t),
        }
    }
}

/// `80/tcp (run web-abc123.ci.local)`, … for messages.
pub fn describe_taken(taken: &[(String, String)]) -> String {
    taken
        .iter()
        .map(|(port, who)| {
            if who.is_empty() {
                format!("{port} (another cc-ci run)")
            } else {
                format!("{port} (run {who})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_all_or_nothing_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let both = vec![(80, "tcp".to_string()), (443, "tcp".to_string())];
        let a = try_lease(dir.path(), &both, "a.ci.local")
            .unwrap()
            .got()
            .unwrap();
        assert_eq!(a.ports, ["80/tcp", "443/tcp"]);
        // Another run wanting 443 and 53 gets neither, and learns who holds 443.
        let other = vec![(53, "udp".to_string()), (443, "tcp".to_string())];
        let taken = try_lease(dir.path(), &other, "b.ci.local")
            .unwrap()
            .got()
            .unwrap_err();
        assert_eq!(taken, [("443/tcp".to_string(), "a.ci.local".to_string())]);
        assert_eq!(describe_taken(&taken), "443/tcp (run a.ci.local)");
        // 53/udp was not kept by the failed attempt.
        let c = try_lease(dir.path(), &[(53, "udp".to_string())], "c")
            .unwrap()
            .got()
            .unwrap();
        drop(c);
        drop(a);
        let b = try_lease(dir.path(), &other, "b.ci.local")
            .unwrap()
            .got()
            .unwrap();
        assert_eq!(b.ports, ["53/udp", "443/tcp"]);
        let f = std::fs::read_to_string(lease_dir(dir.path()).join("443-tcp.lock")).unwrap();
        assert_eq!(f, "b.ci.local");
    }

    #[test]
    fn keys_are_distinct_and_sorted() {
        let p = |port, proto: &str, svc: &str| PublishedPort {
            port,
            protocol: proto.into(),
            service: svc.into(),
        };
        assert_eq!(
            keys(&[p(443, "tcp", "a"), p(80, "tcp", "a"), p(80, "tcp", "b")]),
            [(80, "tcp".to_string()), (443, "tcp".to_string())]
        );
    }
}
