//! Unix-socket proxies in front of the Docker engine that a test can cut or hang, while the
//! real engine (shared with other tests) is never touched. A run is pointed at one with
//! `DOCKER_HOST=unix://<path>`.

use std::path::PathBuf;

/// The engine's socket: `DOCKER_HOST` when it is a unix socket, else the default.
fn upstream() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

/// A unix-socket proxy in front of the Docker engine that can be cut: while it is down its
/// socket is gone and every open connection is dropped, as when dockerd restarts, but the real
/// engine (shared with other tests) is never touched. bench/drill-dockerd-restart restarts a
/// real (private) dockerd instead.
pub struct EngineProxy {
    pub path: PathBuf,
    up: tokio::sync::watch::Sender<bool>,
}

impl EngineProxy {
    pub fn start(path: PathBuf) -> Self {
        let upstream = upstream();
        let (up, mut rx) = tokio::sync::watch::channel(true);
        let p = path.clone();
        tokio::spawn(async move {
            loop {
                let _ = std::fs::remove_file(&p);
                let listener = tokio::net::UnixListener::bind(&p).expect("bind the engine proxy");
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = rx.changed() => if !*rx.borrow() { break },
                        a = listener.accept() => if let Ok((mut client, _)) = a {
                            let upstream = upstream.clone();
                            conns.spawn(async move {
                                if let Ok(mut engine) = tokio::net::UnixStream::connect(&upstream).await {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                                }
                            });
                        },
                    }
                }
                // Down: no socket, no connection survives.
                drop(listener);
                let _ = std::fs::remove_file(&p);
                conns.abort_all();
                loop {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    if *rx.borrow() {
                        break;
                    }
                }
            }
        });
        EngineProxy { path, up }
    }

    pub fn set_up(&self, up: bool) {
        let _ = self.up.send(up);
    }
}

/// A unix-socket proxy in front of the Docker engine that can hang: while hung it accepts
/// connections and holds them without a byte of answer, and requests in flight stop getting
/// answers, as an engine that is wedged. The real engine is never touched.
pub struct HangingProxy {
    pub path: PathBuf,
    hung: tokio::sync::watch::Sender<bool>,
}

impl HangingProxy {
    pub fn start(path: PathBuf) -> Self {
        let upstream = upstream();
        let (hung, rx) = tokio::sync::watch::channel(false);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the engine proxy");
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut rx = rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let hung_now = *rx.borrow();
                    if !hung_now
                        && let Ok(mut engine) = tokio::net::UnixStream::connect(&upstream).await
                    {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => return,
                            _ = rx.wait_for(|h| *h) => {}
                        }
                    }
                    // Hung: hold the client, answer nothing, until the engine recovers.
                    let _ = rx.wait_for(|h| !*h).await;
                });
            }
        });
        HangingProxy { path, hung }
    }

    pub fn set_hung(&self, hung: bool) {
        let _ = self.hung.send(hung);
    }
}
