//! The HTML side of the read-only listener: the runs list (`/`), the recipe board (`/board`),
//! the run page (`/runs/{id}` when the client asks for HTML), the run's report files to
//! download, its live events (server-sent events) and `/metrics`.
//!
//! Safety rules every page keeps: all text that comes from a recipe, a forge or a run goes
//! through [`esc`] (and the daemon's redaction) before it is put on a page; nothing is loaded
//! from anywhere but the daemon itself (enforced by the Content-Security-Policy header too);
//! no page changes anything; everything but the live parts works without JavaScript.

mod list;
mod run;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State as Shared};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::state::State;
use cc_ci_harness::contract::files;

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A response body fed by a channel: the live log and the live events.
pub(crate) struct ChannelBody(pub(crate) tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

const STYLE: &str = include_str!("../../assets/style.css");
const LIVE_JS: &str = include_str!("../../assets/live.js");

/// Scripts and styles only from the daemon, no inline code, no frames, no forms posting
/// anywhere: whatever a recipe manages to put in its output, the browser runs none of it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The pages' routes (GET only; the API router in `http` adds its own and the fallbacks).
/// `/runs/{id}` is shared with the API and lives there: [`run_page`] is its HTML side.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route(
            "/",
            get(
                |Shared(shared): Shared<Arc<State>>, RawQuery(query): RawQuery| async move {
                    list::runs_page(&shared, query.as_deref().unwrap_or(""))
                },
            ),
        )
        .route(
            "/board",
            get(|Shared(shared): Shared<Arc<State>>| async move { list::board_page(&shared) }),
        )
        .route(
            "/metrics",
            get(|Shared(shared): Shared<Arc<State>>| async move { metrics(&shared) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/assets/live.js",
            get(|| async { asset("text/javascript; charset=utf-8", LIVE_JS) }),
        )
        .route(
            "/runs/{id}/events",
            get(
                |Shared(shared): Shared<Arc<State>>,
                 Path(id): Path<String>,
                 RawQuery(query): RawQuery,
                 headers: HeaderMap| async move {
                    let from = last_event_id(&headers).or_else(|| {
                        query_param(query.as_deref().unwrap_or(""), "from")?.parse().ok()
                    });
                    with_id(&id, |id| run::events(shared.clone(), id, from.unwrap_or(0)))
                },
            ),
        )
        .route(
            "/runs/{id}/{file}",
            get(
                |Shared(shared): Shared<Arc<State>>, Path((id, file)): Path<(String, String)>| async move {
                    match file.as_str() {
                        f @ (files::SUMMARY_MD | files::RUN_JSON | files::JUNIT_XML) => {
                            Some(with_id(&id, |id| run::download(&shared, id, f)))
                        }
                        _ => None,
                    }
                    .unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found"))
                },
            ),
        )
}

/// A plain-text answer (the API's answers, and paths no route serves): only a content type,
/// none of the pages' headers.
pub(crate) fn plain(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut m = msg.into();
    m.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(m)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The HTML run page (`/runs/{id}` asked for by a browser).
pub(crate) fn run_page(shared: &Arc<State>, id: &str) -> Response<Body> {
    with_id(id, |id| run::page(shared, id))
}

fn metrics(shared: &State) -> Response<Body> {
    match crate::metrics::render(&shared.store) {
        Ok(text) => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => {
            tracing::error!(error = %e, "metrics");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            )
        }
    }
}

fn with_id(id: &str, f: impl FnOnce(i64) -> Response<Body>) -> Response<Body> {
    match id.parse() {
        Ok(id) => f(id),
        Err(_) => not_found("no such run"),
    }
}

/// Browsers ask for text/html; API clients (curl, the CLI) do not. A range with `q=0` is a
/// refusal, not a request.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("text/html") && !refused
    })
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(CONTENT_TYPE, v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

fn asset(content_type: &str, text: &'static str) -> Response<Body> {
    let mut r = respond(StatusCode::OK, content_type, text);
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("max-age=300"));
    r
}

pub(crate) fn html(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", body)
}

pub(crate) fn not_found(what: &str) -> Response<Body> {
    html(
        StatusCode::NOT_FOUND,
        layout(
            "not found",
            &format!("<h1>Not found</h1><p>{}</p>", esc(what)),
            None,
        ),
    )
}

pub(crate) fn store_error(e: &crate::error::DaemonError) -> Response<Body> {
    tracing::error!(error = %e, "pages: reading the store");
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        layout(
            "error",
            "<h1>Cannot read the run store</h1><p>See the daemon's log.</p>",
            None,
        ),
    )
}

/// Escape text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encode a query value (repository names in filter links).
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One value of an `application/x-www-form-urlencoded` query, decoded.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The page frame: header with navigation, the body, and the live script where asked.
pub(crate) fn layout(title: &str, body: &str, script: Option<&str>) -> String {
    let script = script
        .map(|s| format!("<script src=\"/assets/{s}\" defer></script>"))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · cc-ci</title><link rel=\"stylesheet\" href=\"/assets/style.css\">{script}</head>\
         <body><header><a class=\"brand\" href=\"/\">cc-ci</a><nav><a href=\"/\">Runs</a>\
         <a href=\"/board\">Board</a><a href=\"/metrics\">Metrics</a></nav></header>\
         <main>{body}</main></body></html>\n",
        esc(title)
    )
}

pub(crate) use crate::render::time;

/// `42 s`, `3 min`, `2 h 5 min`, `4 d`.
pub(crate) fn span(secs: i64) -> String {
    let s = secs.max(0);
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else {
        format!("{} d {} h", s / 86_400, s % 86_400 / 3600)
    }
}

/// The badge for a run's state or verdict (a fixed set of class names).
pub(crate) fn badge(label: &str) -> String {
    let class = match label {
        "pass" => "pass",
        "fail" => "fail",
        "error" => "error",
        "cancelled" => "cancelled",
        "skipped" => "skipped",
        "running" => "running",
        "queued" => "queued",
        _ => "other",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(label))
}

/// What a run row shows as its state: its verdict once done.
pub(crate) fn run_label(run: &crate::store::RunRow) -> &'static str {
    match (run.state, run.verdict) {
        (crate::store::RunState::Done, Some(v)) => v.as_str(),
        (s, _) => s.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    #[test]
    fn html_only_when_asked_for() {
        let ask = |a: Option<&str>| {
            let mut r = Request::builder();
            if let Some(a) = a {
                r = r.header("accept", a);
            }
            wants_html(r.body(()).unwrap().headers())
        };
        assert!(ask(Some("text/html,application/xhtml+xml,*/*;q=0.8")));
        assert!(!ask(None));
        assert!(!ask(Some("application/json")));
        assert!(!ask(Some("*/*")));
        assert!(!ask(Some("text/html;q=0, application/json")));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_param("repo=coop%2Fweb&state=done", "repo").as_deref(),
            Some("coop/web")
        );
        assert_eq!(query_param("a=x+y", "a").as_deref(), Some("x y"));
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(enc("coop/w b"), "coop/w%20b");
    }

    #[test]
    fn dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_796_040_309), "2026-11-30 12:05:09 UTC");
        assert_eq!(span(3725), "1 h 2 min");
    }
}
