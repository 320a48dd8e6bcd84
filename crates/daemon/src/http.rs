//! The HTTP side: `POST /hooks/gitea` (the webhook) and the read side (`/healthz`, `/runs`,
//! `/runs/{id}`, `/runs/{id}/log[?follow=1]`). hyper 1, HTTP/1.1, TCP or a unix socket.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::daemon::{IngestOutcome, Shared, TriggerOutcome, ingest, process_trigger};
use crate::error::DaemonError;
use crate::render::Links;
use crate::runner;
use crate::store::RunState;
use crate::systemd::StdListener;
use crate::trigger::{self, Delivery};

type Body = BoxBody<Bytes, Infallible>;

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Start accepting connections; returns the bound TCP address (if TCP) and the accept task.
pub(crate) fn start(
    shared: Arc<Shared>,
    listener: StdListener,
) -> Result<(Option<SocketAddr>, JoinHandle<()>), DaemonError> {
    let err = |e| DaemonError::io("preparing the listening socket", e);
    let (listener, addr) = match listener {
        StdListener::Tcp(l) => {
            l.set_nonblocking(true).map_err(err)?;
            let addr = l.local_addr().ok();
            (
                Listener::Tcp(tokio::net::TcpListener::from_std(l).map_err(err)?),
                addr,
            )
        }
        StdListener::Unix(l) => {
            l.set_nonblocking(true).map_err(err)?;
            (
                Listener::Unix(tokio::net::UnixListener::from_std(l).map_err(err)?),
                None,
            )
        }
    };
    Ok((addr, tokio::spawn(accept_loop(shared, listener))))
}

async fn accept_loop(shared: Arc<Shared>, listener: Listener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(AcceptedConn::Tcp(s)) => {
                tokio::spawn(serve_conn(shared.clone(), s));
            }
            Ok(AcceptedConn::Unix(s)) => {
                tokio::spawn(serve_conn(shared.clone(), s));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of file descriptors and similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum AcceptedConn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<AcceptedConn> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| AcceptedConn::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| AcceptedConn::Unix(s)),
    }
}

async fn serve_conn<I>(shared: Arc<Shared>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = Duration::from_secs(shared.config.daemon.request_timeout_secs);
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut m = msg.into();
    m.push('\n');
    full(status, "text/plain; charset=utf-8", m)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    full(status, "application/json", body)
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    // The HTML pages, their assets, downloads, live events and /metrics (crate::pages).
    if let Some(r) = crate::pages::route(&shared, &req) {
        return r;
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["hooks", "gitea"], &Method::POST) => webhook(shared, req).await,
        (["healthz"], &Method::GET) => healthz(&shared),
        (["runs"], &Method::GET) => list_runs(&shared),
        (["runs", id], &Method::GET) => match id.parse() {
            Ok(id) => show_run(&shared, id),
            Err(_) => text(StatusCode::NOT_FOUND, "no such run"),
        },
        (["runs", id, "log"], &Method::GET) => match id.parse() {
            Ok(id) => {
                let follow = req.uri().query().is_some_and(|q| {
                    q.split('&').any(|kv| {
                        kv == "follow"
                            || (kv.starts_with("follow=")
                                && !matches!(kv, "follow=0" | "follow=false"))
                    })
                });
                log(shared, id, follow)
            }
            Err(_) => text(StatusCode::NOT_FOUND, "no such run"),
        },
        (["hooks", "gitea"], _)
        | (["healthz"], _)
        | (["runs"], _)
        | (["runs", _], _)
        | (["runs", _, "log"], _) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn healthz(shared: &Shared) -> Response<Body> {
    match shared.store.ping() {
        Ok(()) => text(StatusCode::OK, "ok"),
        Err(e) => {
            tracing::error!(error = %e, "health check: state store");
            text(StatusCode::SERVICE_UNAVAILABLE, "state store unavailable")
        }
    }
}

fn run_json(shared: &Shared, run: &crate::store::RunRow) -> serde_json::Value {
    let mut v = serde_json::to_value(run).unwrap_or(serde_json::Value::Null);
    let links = Links::for_run(&shared.config.daemon.public_url, run.id);
    if let Some(o) = v.as_object_mut() {
        o.insert("url".into(), links.run_url.into());
        o.insert("log_url".into(), links.log_url.into());
    }
    v
}

fn list_runs(shared: &Shared) -> Response<Body> {
    match shared.store.list_runs(100) {
        Ok(runs) => json(
            StatusCode::OK,
            &serde_json::Value::Array(runs.iter().map(|r| run_json(shared, r)).collect()),
        ),
        Err(e) => {
            tracing::error!(error = %e, "listing runs");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the run list",
            )
        }
    }
}

fn show_run(shared: &Shared, id: i64) -> Response<Body> {
    match shared.store.get_run(id) {
        Ok(Some(run)) => {
            let dir = runner::run_dir(&shared.state_dir, id);
            let mut v = run_json(shared, &run);
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "report".into(),
                    runner::read_report(&dir)
                        .and_then(|r| serde_json::to_value(r).ok())
                        .unwrap_or(serde_json::Value::Null),
                );
                o.insert(
                    "progress".into(),
                    runner::read_progress(&dir)
                        .and_then(|p| serde_json::to_value(p).ok())
                        .unwrap_or(serde_json::Value::Null),
                );
            }
            json(StatusCode::OK, &v)
        }
        Ok(None) => text(StatusCode::NOT_FOUND, format!("no run {id}")),
        Err(e) => {
            tracing::error!(error = %e, "reading run");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the run")
        }
    }
}

/// Read what `path` holds beyond `pos` (at most 64 KiB).
fn read_from(path: &std::path::Path, pos: u64) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(pos)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    buf
}

/// A response body fed by a channel (the live log).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn log(shared: Arc<Shared>, id: i64, follow: bool) -> Response<Body> {
    match shared.store.get_run(id) {
        Ok(Some(_)) => {}
        Ok(None) => return text(StatusCode::NOT_FOUND, format!("no run {id}")),
        Err(e) => {
            tracing::error!(error = %e, "reading run");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the run");
        }
    }
    let path = runner::run_dir(&shared.state_dir, id).join("log.txt");
    if !follow {
        let body = std::fs::read(&path).unwrap_or_default();
        return full(StatusCode::OK, "text/plain; charset=utf-8", body);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut epoch = shared.log_epoch.subscribe();
        let mut pos = 0u64;
        loop {
            // Look at the state before reading, so the last bytes of a finished run are sent.
            let done = !matches!(
                shared.store.get_run(id),
                Ok(Some(r)) if r.state != RunState::Done
            );
            loop {
                let chunk = read_from(&path, pos);
                if chunk.is_empty() {
                    break;
                }
                pos += chunk.len() as u64;
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                _ = epoch.changed() => {}
                // Also written by processes outside the daemon (gc) and by a previous daemon.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let mut r = Response::new(BoxBody::new(ChannelBody(rx)));
    if let Ok(v) = "text/plain; charset=utf-8".parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// Read a body of at most `max` bytes. A larger one is read on and discarded up to 16 × `max`
/// so that the sender, still sending, gets the 413 instead of a reset connection.
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, StatusCode> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= max {
                buf.extend_from_slice(&data);
            } else if seen > max.saturating_mul(16) {
                break;
            }
        }
    }
    if seen > max {
        Err(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        Ok(buf.freeze())
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn webhook(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let max = shared.config.daemon.max_body_bytes;
    let headers = req.headers().clone();
    let timeout = Duration::from_secs(shared.config.daemon.request_timeout_secs);
    let body = match tokio::time::timeout(timeout, read_body(req.into_body(), max)).await {
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
        Ok(Err(status)) if status == StatusCode::PAYLOAD_TOO_LARGE => {
            return text(status, format!("body larger than {max} bytes"));
        }
        Ok(Err(status)) => return text(status, "cannot read the body"),
        Ok(Ok(b)) => b,
    };
    let delivery =
        header(&headers, "x-forgejo-delivery").or_else(|| header(&headers, "x-gitea-delivery"));
    let (status, msg) = decide(&shared, &headers, &body, delivery.as_deref()).await;
    crate::metrics::webhook(status.as_u16());
    tracing::info!(
        delivery = delivery.as_deref().unwrap_or("-"),
        event = header(&headers, "x-gitea-event").as_deref().unwrap_or("-"),
        status = status.as_u16(),
        "webhook: {msg}"
    );
    text(status, msg)
}

async fn decide(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: &[u8],
    delivery: Option<&str>,
) -> (StatusCode, String) {
    let Some(secret) = &shared.secrets.webhook_secret else {
        return (
            StatusCode::UNAUTHORIZED,
            "webhooks are disabled: no webhook secret is configured".into(),
        );
    };
    let sent: Vec<String> = [
        "x-forgejo-signature",
        "x-gitea-signature",
        "x-hub-signature-256",
    ]
    .iter()
    .filter_map(|h| {
        headers
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
    .collect();
    let sent_refs: Vec<&str> = sent.iter().map(String::as_str).collect();
    if let Err(e) = trigger::verify_signature(secret.as_bytes(), body, &sent_refs) {
        return (StatusCode::UNAUTHORIZED, format!("rejected: {e}"));
    }
    let Some(event) =
        header(headers, "x-forgejo-event").or_else(|| header(headers, "x-gitea-event"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-Gitea-Event header".into(),
        );
    };
    let delivery_kind = match trigger::classify(&event, body) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, e),
    };
    match delivery_kind {
        Delivery::Unhandled(reason) => (StatusCode::OK, format!("ignored: {reason}")),
        Delivery::Ignored(reason) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("ignored: {reason}"),
        ),
        Delivery::PullUpdate {
            repo,
            pr,
            head_sha,
            closed,
        } => {
            if !trigger::repo_allowed(&shared.config.forge.repo_allowlist, &repo) {
                return (
                    StatusCode::FORBIDDEN,
                    format!("repository {repo} is not on the allowlist"),
                );
            }
            if let Some(d) = delivery {
                match shared.store.record_delivery(d) {
                    Ok(true) => {}
                    Ok(false) => {
                        return (StatusCode::CONFLICT, "delivery already processed".into());
                    }
                    Err(e) => return internal(e),
                }
            }
            let (keep, reason) = if closed {
                (None, "the pull request was closed".to_string())
            } else {
                (
                    Some(head_sha.as_str()),
                    format!(
                        "new commits were pushed (head is now {})",
                        head_sha.get(..10).unwrap_or(&head_sha)
                    ),
                )
            };
            let _ = shared.store.update_pr_head(&repo, pr, &head_sha);
            match shared.store.supersede_pr(&repo, pr, keep, &reason) {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(repo = %repo, pr, superseded = n, "{reason}");
                        shared.wake_scheduler.notify_one();
                        shared.wake_reporter.notify_one();
                    }
                    (StatusCode::ACCEPTED, format!("{n} run(s) superseded"))
                }
                Err(e) => internal(e),
            }
        }
        Delivery::Trigger(t) => match ingest(shared, "webhook", delivery, &t) {
            Err(e) => internal(e),
            Ok(IngestOutcome::RepoNotAllowed) => (
                StatusCode::FORBIDDEN,
                format!("repository {} is not on the allowlist", t.repo),
            ),
            Ok(IngestOutcome::Duplicate(why)) => (StatusCode::CONFLICT, why.into()),
            Ok(IngestOutcome::Stored(id)) => {
                // Decided in a task of its own: if the forge is slow, the answer goes out
                // (202) and the decision finishes in the background.
                let s = shared.clone();
                let task = tokio::spawn(async move { process_trigger(&s, id).await });
                match tokio::time::timeout(shared.tuning.inline_intake_timeout, task).await {
                    Ok(Ok(Ok(TriggerOutcome::Queued(run)))) => (
                        StatusCode::ACCEPTED,
                        format!("queued as run #{run}: {}", Links::for_run(&shared.config.daemon.public_url, run).run_url),
                    ),
                    Ok(Ok(Ok(TriggerOutcome::Unauthorised))) => (
                        StatusCode::FORBIDDEN,
                        format!("{} may not start runs", t.user),
                    ),
                    Ok(Ok(Ok(TriggerOutcome::BadStages))) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "unknown stage names".into())
                    }
                    Ok(Ok(Ok(TriggerOutcome::Dropped(why)))) => (StatusCode::UNPROCESSABLE_ENTITY, why),
                    Ok(Ok(Ok(TriggerOutcome::Later(_)))) | Err(_) => (
                        StatusCode::ACCEPTED,
                        "accepted: the forge is slow to answer, the trigger will be processed shortly".into(),
                    ),
                    Ok(Ok(Err(e))) => {
                        tracing::error!(trigger = id, error = %e, "trigger");
                        (StatusCode::ACCEPTED, "accepted: the trigger is stored and will be retried".into())
                    }
                    Ok(Err(e)) => {
                        tracing::error!(trigger = id, error = %e, "trigger task failed");
                        (StatusCode::ACCEPTED, "accepted: the trigger is stored and will be retried".into())
                    }
                }
            }
        },
    }
}

fn internal(e: DaemonError) -> (StatusCode, String) {
    tracing::error!(error = %e, "webhook");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: see the daemon log".into(),
    )
}
