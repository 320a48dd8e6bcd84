//! The HTTP side: `POST /hooks/gitea` (the webhook) and the read side (`/healthz`, `/runs`,
//! `/runs/{id}`, `/runs/{id}/log[?follow=1]`). hyper 1, HTTP/1.1, TCP or a unix socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State as S};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderMap};
use hyper::http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::error::DaemonError;
use crate::intake::{IngestOutcome, ingest, verify_pull_update};
use crate::render::Links;
use crate::runner;
use crate::state::{BodyBudget, State};
use crate::store::RunState;
use crate::systemd::StdListener;
use crate::webhook::{self, Action};

type Body = BoxBody<Bytes, Infallible>;

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Prepare to accept connections; returns the bound TCP address (if TCP) and the accept loop
/// (which ends when the daemon starts stopping).
pub(crate) fn start(
    shared: Arc<State>,
    listener: StdListener,
) -> Result<
    (
        Option<SocketAddr>,
        impl Future<Output = ()> + Send + 'static,
    ),
    DaemonError,
> {
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
    Ok((addr, accept_loop(shared, listener)))
}

async fn accept_loop(shared: Arc<State>, listener: Listener) {
    let router = router(shared.clone());
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = accept(&listener) => a,
        };
        // Beyond `max_connections` a connection gets a 503 and is closed at once: the file
        // table and memory stay bounded however many connections a flood opens.
        let permit = shared.limits.connections.clone().try_acquire_owned().ok();
        match (accepted, permit) {
            (Ok(AcceptedConn::Tcp(s)), Some(p)) => {
                tokio::spawn(serve_conn(shared.clone(), router.clone(), s, p));
            }
            (Ok(AcceptedConn::Unix(s)), Some(p)) => {
                tokio::spawn(serve_conn(shared.clone(), router.clone(), s, p));
            }
            (Ok(AcceptedConn::Tcp(s)), None) => {
                tracing::warn!(
                    limit = shared.settings.config.daemon.max_connections,
                    "too many connections: answering 503"
                );
                tokio::spawn(refuse_conn(s));
            }
            (Ok(AcceptedConn::Unix(s)), None) => {
                tracing::warn!(
                    limit = shared.settings.config.daemon.max_connections,
                    "too many connections: answering 503"
                );
                tokio::spawn(refuse_conn(s));
            }
            (Err(e), _) => {
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

/// The answer to a connection over the limit (the request is read, never handled).
fn busy_answer() -> Vec<u8> {
    let body = "too many connections, try again shortly\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn refuse_conn<I>(mut io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        // The request head first (for at most a second): a client answered before it has sent
        // its request can take the answer for a broken connection and never see the 503.
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(n) = io.read(&mut chunk).await {
                head.extend_from_slice(&chunk[..n]);
                if n == 0 || head.len() > 1 << 16 || head.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        let _ = io.write_all(&busy_answer()).await;
        let _ = io.shutdown().await;
        // Read what the client sent until it closes: closing with unread data would reset
        // the connection and could destroy the answer before the client reads it.
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while let Ok(n) = io.read(&mut sink).await {
            total += n;
            if n == 0 || total > 1 << 16 {
                break;
            }
        }
    })
    .await;
}

use crate::state::Streaming;

async fn serve_conn<I>(
    shared: Arc<State>,
    router: Router,
    io: I,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = Duration::from_secs(shared.settings.config.daemon.request_timeout_secs);
    // A connection holds one of `max_connections` slots: one that idles or reads its answer
    // too slowly is cut after this, so idle clients cannot keep the slots.
    let deadline = (timeout * 6).max(Duration::from_secs(60));
    let streaming = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = streaming.clone();
    let svc = service_fn(move |req| {
        let router = router.clone();
        let flag = flag.clone();
        async move {
            let r = answer(router, req).await;
            if r.extensions().get::<Streaming>().is_some() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok::<_, Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        // One request per connection: an idle kept-alive connection would hold a slot.
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = &mut conn => r,
        _ = tokio::time::sleep(deadline) => {
            if streaming.load(std::sync::atomic::Ordering::SeqCst) {
                conn.await
            } else {
                tracing::debug!("connection cut: over its deadline");
                return;
            }
        }
    };
    if let Err(e) = result {
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
    crate::pages::plain(status, msg)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    full(status, "application/json", body)
}

/// The routes: the webhook and the API here, the pages from `crate::pages`. A path that
/// exists answers other methods with 405 (API) or 404 (pages); HEAD is handled before the
/// router (see [`answer`]).
fn router(shared: Arc<State>) -> Router {
    Router::new()
        .route("/hooks/gitea", post(webhook_route))
        .route(
            "/healthz",
            get(|S(s): S<Arc<State>>| async move { healthz(&s) }),
        )
        .route(
            "/runs",
            get(|S(s): S<Arc<State>>| async move { list_runs(&s) }),
        )
        .route("/runs/{id}", get(run_route))
        .route("/runs/{id}/log", get(log_route))
        .merge(crate::pages::routes())
        .method_not_allowed_fallback(unrouted)
        .fallback(unrouted)
        .with_state(shared)
}

/// Whether `path` (normalised) is one of the API's: other methods there are a 405.
fn api_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["hooks", "gitea"] | ["healthz"] | ["runs"] | ["runs", _] | ["runs", _, "log"]
    )
}

/// No route for this method and path.
async fn unrouted(uri: Uri) -> Response<Body> {
    if api_path(uri.path()) {
        text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else {
        text(StatusCode::NOT_FOUND, "not found")
    }
}

/// Answer one request: paths are taken without their leading and trailing slashes (`/runs/`
/// is `/runs`), and HEAD, which the router would answer as a GET, is refused as before.
async fn answer<B>(router: Router, mut req: Request<B>) -> axum::response::Response
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let path = req.uri().path();
    let trimmed = path.trim_matches('/');
    if trimmed.len() + 1 != path.len() || !path.starts_with('/') {
        let normal = match req.uri().query() {
            Some(q) => format!("/{trimmed}?{q}"),
            None => format!("/{trimmed}"),
        };
        if let Ok(pq) = normal.parse::<PathAndQuery>() {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    if req.method() == Method::HEAD {
        return unrouted(req.uri().clone()).await.into_response();
    }
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

async fn webhook_route(S(shared): S<Arc<State>>, req: axum::extract::Request) -> Response<Body> {
    webhook(shared, req).await
}

/// `/runs/{id}`: the HTML page for a browser, the run as JSON for anyone else.
async fn run_route(
    S(shared): S<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    if crate::pages::wants_html(&headers) {
        return crate::pages::run_page(&shared, &id);
    }
    match id.parse() {
        Ok(id) => show_run(&shared, id),
        Err(_) => text(StatusCode::NOT_FOUND, "no such run"),
    }
}

/// `/runs/{id}/log[?follow]`.
async fn log_route(
    S(shared): S<Arc<State>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    let follow = query.as_deref().is_some_and(|q| {
        q.split('&').any(|kv| {
            kv == "follow"
                || (kv.starts_with("follow=") && !matches!(kv, "follow=0" | "follow=false"))
        })
    });
    match id.parse() {
        Ok(id) => log(shared, id, follow),
        Err(_) => text(StatusCode::NOT_FOUND, "no such run"),
    }
}

fn healthz(shared: &State) -> Response<Body> {
    match shared.store.ping() {
        Ok(()) => text(StatusCode::OK, "ok"),
        Err(e) => {
            tracing::error!(error = %e, "health check: state store");
            text(StatusCode::SERVICE_UNAVAILABLE, "state store unavailable")
        }
    }
}

fn run_json(shared: &State, run: &crate::store::RunRow) -> serde_json::Value {
    let mut v = serde_json::to_value(run).unwrap_or(serde_json::Value::Null);
    let links = Links::for_run(&shared.settings.config.daemon.public_url, run.id);
    if let Some(o) = v.as_object_mut() {
        o.insert("url".into(), links.run_url.into());
        o.insert("log_url".into(), links.log_url.into());
    }
    v
}

fn list_runs(shared: &State) -> Response<Body> {
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

fn show_run(shared: &State, id: i64) -> Response<Body> {
    match shared.store.get_run(id) {
        Ok(Some(run)) => {
            let dir = runner::run_dir(&shared.settings.state_dir, id);
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
fn log(shared: Arc<State>, id: i64, follow: bool) -> Response<Body> {
    match shared.store.get_run(id) {
        Ok(Some(_)) => {}
        Ok(None) => return text(StatusCode::NOT_FOUND, format!("no run {id}")),
        Err(e) => {
            tracing::error!(error = %e, "reading run");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the run");
        }
    }
    let path = runner::run_dir(&shared.settings.state_dir, id).join(crate::state::RUN_LOG);
    if !follow {
        let body = std::fs::read(&path).unwrap_or_default();
        return full(StatusCode::OK, "text/plain; charset=utf-8", body);
    }
    let Ok(permit) = shared.limits.log_followers.clone().try_acquire_owned() else {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many log followers, try again shortly (or read the log without follow)",
        );
        if let Ok(v) = "5".parse() {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        return r;
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let mut epoch = shared.wake.log_epoch.subscribe();
        let mut pos = 0u64;
        loop {
            // Look at the state before reading, so the last bytes of a finished run are sent.
            let done = !matches!(
                shared.store.get_run(id),
                Ok(Some(r)) if r.state != RunState::Done
            );
            loop {
                let chunk = runner::read_log_from(&path, pos, false);
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
    let mut r = Response::new(BoxBody::new(crate::pages::ChannelBody(rx)));
    if let Ok(v) = "text/plain; charset=utf-8".parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r.extensions_mut().insert(Streaming);
    r
}

/// What one request took of the budget, given back when the request is done.
struct Held<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// Read a body of at most `max` bytes. A larger one is read on and discarded up to 16 × `max`
/// so that the sender, still sending, gets the 413 instead of a reset connection. When all
/// bodies in flight together would exceed the budget, 503.
async fn read_body(
    mut body: axum::body::Body,
    max: usize,
    budget: &BodyBudget,
) -> Result<(Bytes, Held<'_>), StatusCode> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let mut held = Held { budget, bytes: 0 };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= max {
                if !budget.take(data.len()) {
                    return Err(StatusCode::SERVICE_UNAVAILABLE);
                }
                held.bytes += data.len();
                buf.extend_from_slice(&data);
            } else if seen > max.saturating_mul(16) {
                break;
            }
        }
    }
    if seen > max {
        Err(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        Ok((buf.freeze(), held))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn webhook(shared: Arc<State>, req: axum::extract::Request) -> Response<Body> {
    let max = shared.settings.config.daemon.max_body_bytes;
    let headers = req.headers().clone();
    let timeout = Duration::from_secs(shared.settings.config.daemon.request_timeout_secs);
    let read = read_body(req.into_body(), max, &shared.limits.body_budget);
    let body = match tokio::time::timeout(timeout, read).await {
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
        Ok(Err(status)) if status == StatusCode::PAYLOAD_TOO_LARGE => {
            return text(status, format!("body larger than {max} bytes"));
        }
        Ok(Err(status)) if status == StatusCode::SERVICE_UNAVAILABLE => {
            return text(
                status,
                "too many large deliveries at once, try again shortly",
            );
        }
        Ok(Err(status)) => return text(status, "cannot read the body"),
        Ok(Ok(b)) => b,
    };
    // The budget stays taken while the body is being decided on.
    let (body, _held) = body;
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

/// Carry out the webhook decision (`webhook::decide`): store the trigger, or record the
/// delivery and check the pull request after answering.
async fn decide(
    shared: &Arc<State>,
    headers: &HeaderMap,
    body: &[u8],
    delivery: Option<&str>,
) -> (StatusCode, String) {
    let content_type = header(headers, "content-type");
    let event = header(headers, "x-forgejo-event").or_else(|| header(headers, "x-gitea-event"));
    let signatures: Vec<&str> = webhook::SIGNATURE_HEADERS
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .collect();
    let hook = webhook::Hook {
        content_type: content_type.as_deref(),
        event: event.as_deref(),
        signatures,
        body,
    };
    let own = shared.own_login();
    let forge = &shared.settings.config.forge;
    let policy = webhook::Policy {
        secret: shared.settings.secrets.webhook_secret.as_deref(),
        own_login: own.as_deref(),
        repo_allowlist: &forge.repo_allowlist,
        user_allowlist: &forge.user_allowlist,
        has_org_allowlist: !forge.org_allowlist.is_empty(),
    };
    match webhook::decide(&hook, &policy) {
        Action::Answer(status, msg) => (status, msg),
        Action::CheckPull { repo, pr } => {
            let fresh = match delivery.map(|d| shared.store.record_delivery(d)) {
                None => true,
                Some(Ok(fresh)) => fresh,
                Some(Err(e)) => return internal(e),
            };
            if fresh {
                // The payload may be stale (out of order, or a replay): the API's current
                // head decides, read after this answer.
                tokio::spawn(verify_pull_update(shared.clone(), repo, pr));
            }
            webhook::answer_pull_update(fresh)
        }
        Action::Store(t) => match ingest(shared, "webhook", delivery, &t) {
            Err(e) => internal(e),
            Ok(IngestOutcome::RepoNotAllowed) => (
                StatusCode::FORBIDDEN,
                format!("repository {} is not on the allowlist", t.repo),
            ),
            Ok(IngestOutcome::Duplicate(why)) => (StatusCode::OK, format!("ignored: {why}")),
            Ok(IngestOutcome::Stored(id)) => {
                shared.wake.intake.notify_one();
                webhook::answer_stored(
                    id,
                    &t.user,
                    &policy,
                    &shared.settings.config.daemon.public_url,
                )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    /// The status and body of `method path` through the router.
    async fn ask(router: &Router, method: &str, path: &str) -> (u16, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let r = answer(router.clone(), req).await;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn every_path_and_method_gets_the_answer_it_always_had() {
        let (state, _fake, _dir) = testing::state(|_| {});
        let router = router(state);
        for (method, path, status) in [
            ("GET", "/healthz", 200),
            ("GET", "/healthz/", 200),
            ("GET", "//healthz", 200),
            ("HEAD", "/healthz", 405),
            ("POST", "/healthz", 405),
            ("GET", "/hooks/gitea", 405),
            ("PUT", "/runs", 405),
            ("DELETE", "/runs/1", 405),
            ("POST", "/runs/1/log", 405),
            ("GET", "/runs", 200),
            ("GET", "/runs/", 200),
            ("GET", "/runs/1", 404),
            ("GET", "/runs/abc", 404),
            ("GET", "/runs/abc/log", 404),
            ("GET", "/runs/1/other", 404),
            ("GET", "/runs/1/summary.md", 404),
            ("POST", "/runs/1/summary.md", 404),
            ("POST", "/", 404),
            ("HEAD", "/", 404),
            ("GET", "/", 200),
            ("GET", "/board", 200),
            ("GET", "/metrics", 200),
            ("GET", "/assets/style.css", 200),
            ("GET", "/nothing/here", 404),
        ] {
            let (got, body) = ask(&router, method, path).await;
            assert_eq!(got, status, "{method} {path}: {body}");
        }
        assert_eq!(
            ask(&router, "POST", "/healthz").await.1,
            "method not allowed\n"
        );
        assert_eq!(ask(&router, "GET", "/nothing").await.1, "not found\n");
        assert_eq!(ask(&router, "GET", "/runs/abc").await.1, "no such run\n");
    }
}
