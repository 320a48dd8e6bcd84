//! What more than one bench binary needs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Serves HTTP/1.1 on a fresh port of 127.0.0.1, answering every request with `handle(state,
/// request)`; the address it listens on.
pub async fn serve<S, H, Fut>(state: Arc<S>, handle: H) -> SocketAddr
where
    S: Send + Sync + 'static,
    H: Fn(Arc<S>, Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the forge double on 127.0.0.1");
    let addr = listener.local_addr().expect("forge double address");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (state, handle) = (state.clone(), handle.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handle(state.clone(), req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}
